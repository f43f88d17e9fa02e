"""WeCom (企业微信) group robots: one-way staff notifications.

A robot is a webhook key: ``POST {wecom_api_url}?key=…`` with a JSON body, markdown or text.
WeCom answers HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}`` on success and a non-zero errcode
otherwise. The outbox dispatcher calls ``WeComRobotSender.send`` for every queued item whose
channel is "wecom"; the outcome it reports decides what happens to the item:

- errcode 0 → sent;
- errcode 45009 (over the robot's frequency limit), -1 (system busy), HTTP 429/5xx, a reply that
  is not WeCom's JSON, a timeout or a network error → ``RetryLater`` (backoff; failed after the
  dispatcher's MAX_ATTEMPTS);
- any other errcode (93000 invalid webhook key, 40008 invalid message type, 40058 bad
  parameter, …) or another HTTP 4xx → ``Undeliverable``: retrying the same post cannot help.

WeCom allows about 20 messages a minute per robot. A sliding window per key inside the sender
keeps under it: when a key's window is full the sender raises ``Throttled`` with the seconds
until a slot frees, instead of waiting, so the dispatcher keeps delivering to other targets and
hands the item back without counting the attempt. The window lives in this process: several
``kesu serve`` processes sharing one robot key can still meet WeCom's limit, and its 45009 then
closes the key's window for a minute here too.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bot.config import Settings
from bot.dispatch import RetryLater, Throttled, Undeliverable
from bot.outbound import OutboundMessage
from bot.server import ChannelAdapter

log = logging.getLogger(__name__)

CHANNEL = "wecom"
WINDOW = timedelta(minutes=1)
MARKDOWN_MAX_BYTES = 4096  # WeCom: markdown.content at most 4096 bytes, UTF-8
TEXT_MAX_BYTES = 2048  # WeCom: text.content at most 2048 bytes, UTF-8
TRUNCATED_NOTE = "\n\n……（消息过长，已截断；完整内容请在 Kesu 中查看）"
RATE_LIMITED = 45009  # "api freq out of limit"
SYSTEM_BUSY = -1
TRANSIENT_ERRCODES = frozenset({RATE_LIMITED, SYSTEM_BUSY})
RATE_LIMITED_PAUSE = 60.0  # seconds: WeCom counts per minute
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # far inside the dispatcher's 60 s lease


class RobotRateLimiter:
    """Sliding one-minute window of sends per robot key; ``acquire`` takes a slot or says how long to wait."""

    def __init__(self, per_minute: int, clock: Callable[[], datetime], window: timedelta = WINDOW) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute}")
        self.per_minute = per_minute
        self.clock = clock
        self.window = window
        self._sent: dict[str, deque[datetime]] = {}
        self._blocked_until: dict[str, datetime] = {}

    def acquire(self, key: str) -> float | None:
        """Record a send now and return None, or return the seconds until a slot frees (nothing recorded).

        Synchronous on purpose: on the event loop, checking and recording cannot interleave with
        another send, so concurrent deliveries to one key never overshoot the window.
        """
        now = self.clock()
        blocked = self._blocked_until.get(key)
        if blocked is not None:
            if now < blocked:
                return (blocked - now).total_seconds()
            del self._blocked_until[key]
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0] <= now - self.window:
            sent.popleft()
        if len(sent) >= self.per_minute:
            return max((sent[0] + self.window - now).total_seconds(), 0.001)
        sent.append(now)
        return None

    def block(self, key: str, seconds: float) -> None:
        """WeCom itself said "too many": no sends to this key from here for ``seconds``."""
        until = self.clock() + timedelta(seconds=seconds)
        self._blocked_until[key] = max(until, self._blocked_until.get(key, until))

    def in_window(self, key: str) -> int:
        """Sends recorded for ``key`` in the current window (for tests and diagnostics)."""
        now = self.clock()
        return sum(1 for moment in self._sent.get(key, ()) if now - self.window < moment <= now)


def fit_bytes(text: str, limit: int, note: str = TRUNCATED_NOTE) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else cut at a character (preferably line) boundary + note."""
    if len(text.encode("utf-8")) <= limit:
        return text
    room = limit - len(note.encode("utf-8"))
    head = text.encode("utf-8")[:max(room, 0)].decode("utf-8", errors="ignore")
    # Cut at a line end when one is reasonably close: a half line of markdown can leave a tag open.
    line_end = head.rfind("\n")
    if line_end >= len(head) // 2:
        head = head[:line_end]
    return head.rstrip() + note


def robot_body(message: OutboundMessage) -> dict[str, Any]:
    """The JSON WeCom expects; buttons have no place in a one-way robot message and are dropped."""
    if message.markdown:
        return {"msgtype": "markdown", "markdown": {"content": fit_bytes(message.text, MARKDOWN_MAX_BYTES)}}
    return {"msgtype": "text", "text": {"content": fit_bytes(message.text, TEXT_MAX_BYTES)}}


class _RedactRobotKeys(logging.Filter):
    """httpx logs every request URL at INFO; a robot key in a log is a password in a log."""

    _KEY = re.compile(r"([?&]key=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "key=" in message:
            record.msg, record.args = self._KEY.sub(r"\1***", message), ()
        return True


_REDACT_KEYS = _RedactRobotKeys()


def _masked_key(key: str) -> str:
    """Enough of a robot key to tell which one, never the whole key (it is the robot's password)."""
    return f"{key[:4]}…{key[-4:]}" if len(key) > 12 else "…"


class WeComRobotSender:
    """Posts outbox items to WeCom group robots; ``target`` is the robot's webhook key."""

    def __init__(self, api_url: str, *, per_minute: int = 20,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 client: httpx.AsyncClient | None = None) -> None:
        self.api_url = api_url
        self.limiter = RobotRateLimiter(per_minute, clock)
        self._client = client or httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False)
        logging.getLogger("httpx").addFilter(_REDACT_KEYS)  # the same filter object: added once

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        if not target:
            raise Undeliverable("wecom: empty robot key")
        wait = self.limiter.acquire(target)
        if wait is not None:
            raise Throttled(f"wecom robot {_masked_key(target)}: {self.limiter.per_minute}/min window full", wait)
        robot = _masked_key(target)
        try:
            response = await self._client.post(self.api_url, params={"key": target}, json=robot_body(message))
        except httpx.HTTPError as problem:  # timeouts, refused connections, broken responses
            raise RetryLater(f"wecom robot {robot}: {type(problem).__name__}: {problem}") from problem
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLater(f"wecom robot {robot}: HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise Undeliverable(f"wecom robot {robot}: HTTP {response.status_code}")
        try:
            answer = response.json()
            errcode = int(answer["errcode"])
        except (ValueError, KeyError, TypeError) as problem:
            # A proxy's error page or a truncated body: we cannot tell whether it arrived; try again.
            raise RetryLater(f"wecom robot {robot}: unexpected answer {response.text[:200]!r}") from problem
        if errcode == 0:
            return None  # robots give no message id: nothing to edit later
        errmsg = str(answer.get("errmsg", ""))[:200]
        problem_text = f"wecom robot {robot}: errcode {errcode} {errmsg}".rstrip()
        if errcode == RATE_LIMITED:
            self.limiter.block(target, RATE_LIMITED_PAUSE)
            raise RetryLater(problem_text, RATE_LIMITED_PAUSE)
        if errcode in TRANSIENT_ERRCODES:
            raise RetryLater(problem_text)
        raise Undeliverable(problem_text)

    async def close(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(float(response.headers["retry-after"]), 0.0)
    except (KeyError, ValueError):
        return None


def wecom_adapter(settings: Settings, *, clock: Callable[[], datetime] | None = None,
                  client: httpx.AsyncClient | None = None) -> ChannelAdapter:
    """WeCom needs no route and no token: the robot keys come from the catalog and the fallback settings."""
    sender = WeComRobotSender(settings.wecom_api_url, per_minute=settings.wecom_per_minute,
                              clock=clock or (lambda: datetime.now(UTC)), client=client)
    return ChannelAdapter(CHANNEL, sender=sender, stop=sender.close)
