"""Customers on a WeChat Official Account (公众号), through wechatpy.

Inbound, ``GET/POST /wechat``:

- Every request is signed with the account's token: ``signature`` over (token, timestamp,
  nonce) in plaintext mode, ``msg_signature`` over (token, timestamp, nonce, Encrypt) in safe
  mode (``encrypt_type=aes``, decrypted and answered with ``WeChatCrypto``). A forged or
  undecryptable request gets 403 before anything is stored.
- Text, images and videos become an ``InboundMessage`` (``message_id`` = ``MsgId``) handled by
  the shared ``IntakeService``; the turn's replies go back as ONE passive text reply, joined
  with blank lines. Images and videos are case evidence (``media_id``; ``PicUrl`` as fallback).
  A voice message with WeChat's speech recognition switched on is handled as its text.
- The passive reply has to reach WeChat within 5 s. The turn gets ``PASSIVE_REPLY_TIMEOUT``
  (3 s); when it takes longer the request answers ``success`` (WeChat shows nothing and does
  not retry) and the turn finishes in the background, its replies then queued in the outbox as
  customer-service messages. WeChat's retries of a ``MsgId`` are answered with the stored
  replies and processed once: the service de-duplicates on ``message_id``; a retry that
  arrives while the first attempt is still running in this process joins that attempt.
- A passive text reply is limited to ~2048 bytes: what does not fit goes out right after as
  customer-service messages through the outbox.
- ``subscribe`` gets the greeting (rendered, not recorded: the customer said nothing yet);
  ``unsubscribe`` is recorded on the customer's open cases and their owners are told to phone
  (nothing reaches the customer on WeChat any more); it and platform notices (location reports,
  menu links, job reports) get ``success``,
  anything else a polite reply saying what Kesu can read.

Outbound (the outbox, channel ``wechat``, target = openid): ``WeChatSender`` sends a
customer-service text message; when WeChat refuses because the 48-hour window has closed
(45015, or 45047: too many messages without an answer) it falls back to the deployer's
template message (``KESU_WECHAT_TEMPLATE_ID``). The outbox item's final state records whether
the customer was reached, its ``external_id`` how: ``kf:…`` (customer-service message) or
``tpl:<msgid>`` (template message); the dispatcher also puts a template delivery or a failure on
the case timeline and in front of staff. A request that went out but got no answer (read timeout,
connection dropped), or a long text whose first pieces went out before a later one failed, raises
``MaybeDelivered``: the customer may have it, so it is never sent again (``bot/dispatch.py``).

wechatpy is synchronous (``requests``): every call that touches the network runs in a worker
thread (``asyncio.to_thread``). The access token lives in one ``OfficialAccountClient`` per
``kesu serve`` process; fetching a new token invalidates the old one, so run one process
with WeChat enabled per account (see ``OfficialAccountClient``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from wechatpy import create_reply, parse_message
from wechatpy.client import WeChatClient
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException, WeChatClientException
from wechatpy.utils import check_signature

from bot.config import Settings
from bot.dispatch import MaybeDelivered, RetryLater, Undeliverable
from bot.outbound import OutboundMessage
from bot.server import ChannelAdapter
from bot.service import Attachment, InboundMessage, IntakeService, TurnOutcome
from bot.templating import Renderer
from storage.case_numbers import find_case_number

log = logging.getLogger(__name__)

CHANNEL = "wechat"
PATH = "/wechat"
PASSIVE_REPLY_TIMEOUT = 3.0  # seconds for the turn; WeChat gives up on the request at 5 s
MAX_BODY_BYTES = 64 * 1024  # WeChat's XML messages are a few hundred bytes
TEXT_LIMIT_BYTES = 2000  # passive replies and customer-service texts: WeChat allows 2048 bytes
TEMPLATE_VALUE_CHARS = 200
DEFERRED_MEMORY_SECONDS = 60.0  # how long a late turn's MsgId keeps answering "success" to retries
API_TIMEOUT_SECONDS = 10.0
SUCCESS = "success"  # WeChat: "no reply, and do not retry"

# errcodes (https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html)
WINDOW_CLOSED = {45015, 45047}  # 48 h since the customer's last message; too many unanswered messages
TOKEN_REJECTED = {40001, 40014, 42001}  # invalid / expired access token: fetch a new one, once
TRANSIENT = {-1, 45009, 45011, 45033}  # system busy, daily quota, frequency limits
CONFIGURATION = {40013, 40125, 40164, 41002, 41004, 61004}  # bad appid/secret, IP not whitelisted
QUOTA_RETRY_AFTER = {45009: 3600.0}

_QUOTES = ("“{}”", "「{}」", '"{}"', "‘{}’")

T = TypeVar("T")


# --------------------------------------------------------------------------- text helpers


def with_options(message: OutboundMessage, renderer: Renderer) -> str:
    """WeChat has no buttons: name the suggested answers in the text unless it already does."""
    payloads = [button.payload for row in message.buttons for button in row]
    if not payloads or all(_names_option(message.text, payload) for payload in payloads):
        return message.text
    return f"{message.text}\n{renderer.render('wechat/options', {'options': payloads})}"


def _names_option(text: str, payload: str) -> bool:
    if any(quote.format(payload) in text for quote in _QUOTES):
        return True
    if re.search(rf"^\s*{re.escape(payload)}\s*[.、．)）]", text, re.MULTILINE):  # "1. 红星美凯龙…"
        return True
    return len(payload) >= 2 and payload in text  # one character ("是") is inside too many words


def split_text(text: str, limit: int = TEXT_LIMIT_BYTES) -> list[str]:
    """Pieces of at most ``limit`` UTF-8 bytes, cut at line ends where possible."""
    pieces: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line.encode()) > limit:  # one very long line: cut it by characters
            cut = len(line.encode()[:limit].decode(errors="ignore"))
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:cut])
            line = line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode()) > limit:
            pieces.append(current)
            current = line
        else:
            current = candidate
    if current.strip():
        pieces.append(current)
    return [piece for piece in pieces if piece.strip()]


def pack_replies(texts: Sequence[str], limit: int = TEXT_LIMIT_BYTES) -> tuple[str, list[str]]:
    """The passive reply (replies joined by blank lines, within ``limit``) and what did not fit."""
    pieces = [piece for text in texts for piece in split_text(text, limit)]
    passive = ""
    for index, piece in enumerate(pieces):
        candidate = f"{passive}\n\n{piece}" if passive else piece
        if len(candidate.encode()) > limit:
            return passive, pieces[index:]
        passive = candidate
    return passive, []


# --------------------------------------------------------------------------- the access-token holder


class OfficialAccountClient(WeChatClient):  # type: ignore[misc]  # wechatpy ships no type hints
    """wechatpy's ``WeChatClient`` with one guarded access token.

    - The token URL is hard-coded in wechatpy (``https://api.weixin.qq.com/cgi-bin/token``);
      here it is ``API_BASE_URL + "token"``, which is the same URL in production
      (``KESU_WECHAT_API_URL`` defaults to ``https://api.weixin.qq.com/cgi-bin/``) and the fake's
      in tests.
    - Worker threads share the client: a lock makes sure an expired token is fetched once, not
      once per thread (each fetch invalidates the previous token).
    - wechatpy's own retry on an invalid token recurses without a bound; it is off, and
      ``refresh_after_rejection`` does one refresh per rejected token instead.
    - The token is kept in memory (wechatpy's ``MemoryStorage``): one holder per process. Run
      one ``kesu serve`` process per Official Account, or several processes would take the
      token from each other (WeChat keeps the old token valid for five minutes after a refresh,
      so that degrades to extra fetches, not to lost messages).
    """

    def __init__(self, appid: str, secret: str, *, api_base_url: str,
                 timeout: float = API_TIMEOUT_SECONDS) -> None:
        super().__init__(appid, secret, timeout=timeout, auto_retry=False)
        self.API_BASE_URL = api_base_url if api_base_url.endswith("/") else f"{api_base_url}/"
        self._token_lock = threading.Lock()

    @property
    def access_token(self) -> str:
        with self._token_lock:
            token: str | None = self.session.get(self.access_token_key)
            if token and (self.expires_at is None or self.expires_at - time.time() > 60):
                return token
            return self._fetch_locked()

    def current_token(self) -> str | None:
        token: str | None = self.session.get(self.access_token_key)
        return token

    def fetch_access_token(self) -> dict[str, Any]:
        with self._token_lock:
            self._fetch_locked()
            return {"access_token": self.current_token(), "expires_in": int(self.expires_at - time.time())}

    def refresh_after_rejection(self, rejected: str | None) -> None:
        """WeChat refused ``rejected``: fetch a new token unless another thread already did."""
        with self._token_lock:
            if self.current_token() == rejected:
                self._fetch_locked()

    def _fetch_locked(self) -> str:
        res = self._http.get(
            f"{self.API_BASE_URL}token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
            timeout=self.timeout,
        )
        try:
            res.raise_for_status()
        except requests.RequestException as problem:
            raise WeChatClientException(None, None, client=self, request=problem.request,
                                        response=problem.response) from problem
        result = res.json()
        if result.get("errcode"):
            raise WeChatClientException(result["errcode"], result.get("errmsg"), client=self,
                                        request=res.request, response=res)
        expires_in = int(result.get("expires_in", 7200))
        token: str = result["access_token"]
        self.session.set(self.access_token_key, token, expires_in)
        self.expires_at = int(time.time()) + expires_in
        return token


# --------------------------------------------------------------------------- outbound


class WeChatSender:
    """Delivers outbox items of channel ``wechat``: customer-service text, template message after 48 h."""

    def __init__(self, client: OfficialAccountClient, renderer: Renderer, template_id: str | None) -> None:
        self.client = client
        self.renderer = renderer
        self.template_id = template_id

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        return await asyncio.to_thread(self.send_blocking, target, message)

    def send_blocking(self, target: str, message: OutboundMessage) -> str:
        text = with_options(message, self.renderer)
        pieces = split_text(text)
        results: list[dict[str, Any]] = []
        try:
            for piece in pieces:
                results.append(self._call(self.client.message.send_text, target, piece))
        except WeChatClientException as problem:
            if problem.errcode in WINDOW_CLOSED and not results:
                return self._send_template(target, text, problem)
            raise _after_pieces(_classify(problem), len(results), len(pieces)) from problem
        except requests.RequestException as problem:
            raise _after_pieces(_network(problem), len(results), len(pieces)) from problem
        msgid = results[-1].get("msgid") if results else None
        return f"kf:{msgid or 'ok'}"

    def _send_template(self, target: str, text: str, refusal: WeChatClientException) -> str:
        window = f"customer-service message refused ({refusal.errcode}: {refusal.errmsg})"
        if not self.template_id:
            raise Undeliverable(f"{window}; no template message configured (KESU_WECHAT_TEMPLATE_ID)")
        try:
            result = self._call(self.client.message.send_template, target, self.template_id,
                                template_data(text, self.renderer))
        except WeChatClientException as problem:
            outcome = _classify(problem)
            if isinstance(outcome, RetryLater):
                raise RetryLater(f"{window}; template message: {outcome}", outcome.after) from problem
            raise type(outcome)(f"{window}; template message: {outcome}") from problem
        except requests.RequestException as problem:
            network = _network(problem)
            raise type(network)(f"{window}; template message: {network}") from problem
        return f"tpl:{result.get('msgid') or 'ok'}"

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        """One API call; a rejected access token is refreshed once and the call repeated."""
        token = self.client.current_token()
        try:
            return method(*args)
        except WeChatClientException as problem:
            if problem.errcode not in TOKEN_REJECTED:
                raise
            self.client.refresh_after_rejection(token)
            return method(*args)

    def close(self) -> None:
        self.client._http.close()


def template_data(text: str, renderer: Renderer) -> dict[str, dict[str, str]]:
    """The template message's fields (the deployer picks a template with these keys):

    ``first`` the message's first line, ``keyword1`` the case number it names (or "-"),
    ``keyword2`` the rest of the message, ``remark`` the line from ``wechat/template_remark``.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    first = lines[0] if lines else text
    rest = "\n".join(lines[1:]) or first
    number = find_case_number(text)

    def cut(value: str) -> str:
        return value if len(value) <= TEMPLATE_VALUE_CHARS else f"{value[:TEMPLATE_VALUE_CHARS - 1]}…"

    return {
        "first": {"value": cut(first)},
        "keyword1": {"value": number or "-"},
        "keyword2": {"value": cut(rest)},
        "remark": {"value": renderer.render("wechat/template_remark", {})},
    }


def _classify(problem: WeChatClientException) -> RetryLater | Undeliverable:
    code = problem.errcode
    detail = f"errcode {code}: {problem.errmsg}"
    if code is None:
        status = getattr(problem.response, "status_code", None)
        return RetryLater(f"HTTP {status}")
    if code in CONFIGURATION:
        log.error("WeChat refused the account's credentials (%s): check KESU_WECHAT_APP_ID/SECRET and the "
                  "IP whitelist", detail)
        return RetryLater(detail)
    if code in TRANSIENT or code in TOKEN_REJECTED:
        return RetryLater(detail, QUOTA_RETRY_AFTER.get(code))
    return Undeliverable(detail)


def _network(problem: requests.RequestException) -> RetryLater | MaybeDelivered:
    """No answer from WeChat: retry if nothing went out, else the message may have arrived."""
    if _may_have_arrived(problem):
        return MaybeDelivered(f"no answer from WeChat after sending ({type(problem).__name__}: {problem})")
    return RetryLater(f"network: {problem}")


def _may_have_arrived(problem: requests.RequestException) -> bool:
    """A POST that went out whole and got no answer (read timeout, connection dropped): WeChat may have it.

    A refused connection, a DNS failure or a connect timeout mean nothing was sent; so does a
    failed token fetch (GET), which carries no message.
    """
    if problem.response is not None or getattr(problem.request, "method", None) != "POST":
        return False
    if isinstance(problem, requests.ConnectTimeout | requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return False
    if isinstance(problem, requests.ConnectionError):
        reason = getattr(problem.args[0], "reason", None) if problem.args else None
        return not isinstance(reason, urllib3.exceptions.ConnectTimeoutError)  # includes NewConnectionError
    return isinstance(problem, requests.Timeout | requests.exceptions.ChunkedEncodingError)


def _after_pieces(outcome: Exception, delivered: int, pieces: int) -> Exception:
    """Once the first pieces of a text are on the customer's phone, it can never be sent whole again."""
    if not delivered:
        return outcome
    return MaybeDelivered(f"{delivered} of {pieces} pieces delivered, then: {outcome}")


# --------------------------------------------------------------------------- inbound


@dataclass(frozen=True)
class Answer:
    """The passive reply's text (None: answer "success") and the pieces that did not fit in it."""

    text: str | None
    overflow: list[str] = field(default_factory=list)
    case_id: int | None = None


class WeChatEndpoint:
    """``GET/POST /wechat`` for one Official Account."""

    def __init__(self, settings: Settings, service: IntakeService, *, reply_timeout: float | None = None) -> None:
        assert settings.wechat_token and settings.wechat_app_id
        self.token = settings.wechat_token
        self.crypto = (WeChatCrypto(settings.wechat_token, settings.wechat_aes_key, settings.wechat_app_id)
                       if settings.wechat_aes_key else None)
        self.service = service
        self.renderer = service.renderer
        self.reply_timeout = PASSIVE_REPLY_TIMEOUT if reply_timeout is None else reply_timeout
        self._in_flight: dict[tuple[str, str], asyncio.Future[TurnOutcome]] = {}
        self._deferred: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()

    # ---- HTTP

    async def verify(self, request: Request) -> Response:
        """URL verification when the deployer saves the server address in the WeChat console."""
        query = request.query_params
        if not self._signed(query):
            return _forbidden()
        return PlainTextResponse(query.get("echostr", ""))

    async def receive(self, request: Request) -> Response:
        query = request.query_params
        encrypted = query.get("encrypt_type", "raw").lower() == "aes"
        if not encrypted and not self._signed(query):
            return _forbidden()
        body = await _read_limited(request)
        if body is None:
            return PlainTextResponse("too large", status_code=413)
        if encrypted:
            xml = self._decrypt(body, query)
            if xml is None:
                return _forbidden()
        else:
            xml = body.decode("utf-8", errors="replace")
        try:
            message = parse_message(xml)
        except Exception:  # signed, but not a WeChat message
            log.warning("signed WeChat request with an unreadable body")
            return PlainTextResponse("bad request", status_code=400)
        if message is None:
            return PlainTextResponse("bad request", status_code=400)
        answer = await self._answer(message)
        if answer.text is None:
            return PlainTextResponse(SUCCESS)
        reply = create_reply(answer.text, message=message, render=True)
        if encrypted and self.crypto is not None:
            reply = self.crypto.encrypt_message(reply, query.get("nonce", ""), query.get("timestamp"))
        # What did not fit in the passive reply is queued after the response has left, so that it
        # does not overtake the passive reply.
        background = (BackgroundTask(self._enqueue, message.source, answer.overflow, answer.case_id)
                      if answer.overflow else None)
        return Response(reply, media_type="application/xml", background=background)

    def _signed(self, query: Any) -> bool:
        try:
            check_signature(self.token, query.get("signature", ""), query.get("timestamp", ""), query.get("nonce", ""))
        except InvalidSignatureException:
            return False
        return True

    def _decrypt(self, body: bytes, query: Any) -> str | None:
        if self.crypto is None:
            log.warning("encrypted WeChat message but no KESU_WECHAT_AES_KEY configured")
            return None
        try:
            xml: str = self.crypto.decrypt_message(body, query.get("msg_signature", ""), query.get("timestamp", ""),
                                                   query.get("nonce", ""))
        except Exception:  # forged signature, bad base64/padding/app id, bad XML
            return None
        return xml

    # ---- what to answer

    async def _answer(self, message: Any) -> Answer:
        kind = message.type
        openid: str = message.source
        if kind == "text":
            return await self._turn(InboundMessage(CHANNEL, openid, message.content or "", _message_id(message)))
        if kind == "image":
            attachment = Attachment("photo", message.media_id or message.image)
            return await self._turn(InboundMessage(CHANNEL, openid, "", _message_id(message),
                                                   attachments=(attachment,)))
        if kind in ("video", "shortvideo"):
            attachment = Attachment("video", message.media_id)
            return await self._turn(InboundMessage(CHANNEL, openid, "", _message_id(message),
                                                   attachments=(attachment,)))
        if kind == "voice" and (message.recognition or "").strip():
            return await self._turn(InboundMessage(CHANNEL, openid, message.recognition.strip(),
                                                   _message_id(message)))
        if kind == "event" or _is_event(message):
            event = str(getattr(message, "event", "") or message._data.get("Event", "")).lower()
            if event.startswith("subscribe"):  # subscribe, subscribe_scan (QR code with a scene)
                return Answer(self.renderer.render("greeting", {"has_content": False}))
            if event == "unsubscribe" and self.service.casework is not None:  # staff must phone from now on
                await asyncio.to_thread(self.service.casework.customer_left, CHANNEL, openid)
            return Answer(self._event_reply(event))
        if kind in ("voice", "location", "link"):
            return Answer(self.renderer.render("wechat/unsupported", {"kind": kind}))
        return Answer(self.renderer.render("wechat/unsupported", {"kind": "other"}))

    def _event_reply(self, kind: str) -> str | None:
        # A customer pressed something (menu click, scan): tell them what Kesu reads. Everything
        # else is the platform reporting (unsubscribe, location reports, menu links, job results).
        if kind in ("click", "scan") or kind.startswith(("scancode_", "pic_")) or kind == "location_select":
            return self.renderer.render("wechat/unsupported", {"kind": "other"})
        return None

    async def _turn(self, inbound: InboundMessage) -> Answer:
        key = (inbound.customer_id, inbound.message_id or "")
        if key in self._deferred:  # a retry of a turn already promised to the outbox
            return Answer(None)
        future = self._in_flight.get(key)
        first = future is None
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(self.service.handle, inbound))
            self._in_flight[key] = future
            future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), self.reply_timeout)
        except TimeoutError:
            self._defer(key, future)
            return Answer(None)
        passive, overflow = pack_replies([with_options(m, self.renderer) for m in outcome.messages])
        if outcome.duplicate or not first:
            overflow = []  # the attempt that processed the message queued them
        return Answer(passive or None, overflow, outcome.case.id if outcome.case else None)

    def _defer(self, key: tuple[str, str], future: asyncio.Future[TurnOutcome]) -> None:
        if key in self._deferred:
            return
        self._deferred.add(key)
        task = asyncio.create_task(self._push_late(key, future), name=f"wechat-late-{key[1]}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _push_late(self, key: tuple[str, str], future: asyncio.Future[TurnOutcome]) -> None:
        """The turn outlived the passive reply: its replies go out as customer-service messages."""
        try:
            outcome = await future
            if outcome.duplicate:
                log.info("late WeChat turn %s was a retry; its answer went out with the first attempt", key[1])
                return
            texts = [with_options(m, self.renderer) for m in outcome.messages]
            await asyncio.to_thread(self._enqueue, key[0], texts, outcome.case.id if outcome.case else None)
        except Exception:
            log.exception("late WeChat turn %s failed", key[1])
        finally:
            asyncio.get_running_loop().call_later(DEFERRED_MEMORY_SECONDS, self._deferred.discard, key)

    def _enqueue(self, openid: str, texts: Sequence[str], case_id: int | None) -> None:
        """One outbox item for all of them: one message to the customer, its pieces sent in order
        (the dispatcher sends a customer's items one at a time, in the order queued)."""
        if not texts:
            return
        with self.service.store.unit_of_work() as uow:
            uow.enqueue(kind="customer_reply", channel=CHANNEL, target=openid,
                        payload=OutboundMessage("\n\n".join(texts)).as_payload(), case_id=case_id,
                        at=self.service.clock())
        self.service.on_outbox()

    async def drain(self, timeout: float = 10.0) -> None:
        """Let late turns queue their replies before the process exits."""
        if self._background:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._background, return_exceptions=True), timeout)


async def _read_limited(request: Request) -> bytes | None:
    """The body, or None when it is larger than any WeChat message (read before it is verified)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _message_id(message: Any) -> str:
    """WeChat's MsgId; FromUserName + CreateTime is WeChat's advice for messages without one."""
    return str(message.id) if message.id else f"{message.source}:{message.time}"


def _is_event(message: Any) -> bool:
    return str(message._data.get("MsgType", "")).lower() == "event"


def _forbidden() -> Response:
    return PlainTextResponse("forbidden", status_code=403)


# --------------------------------------------------------------------------- wiring


def wechat_adapter(settings: Settings, service: IntakeService, *,
                   reply_timeout: float | None = None) -> ChannelAdapter:
    """Routes and outbox sender for the Official Account configured in ``settings``."""
    assert settings.wechat_app_id and settings.wechat_app_secret
    endpoint = WeChatEndpoint(settings, service, reply_timeout=reply_timeout)
    client = OfficialAccountClient(settings.wechat_app_id, settings.wechat_app_secret,
                                   api_base_url=settings.wechat_api_url)
    sender = WeChatSender(client, service.renderer, settings.wechat_template_id)

    async def stop() -> None:
        await endpoint.drain()
        await asyncio.to_thread(sender.close)

    return ChannelAdapter(
        CHANNEL,
        routes=[Route(PATH, endpoint.verify, methods=["GET"]), Route(PATH, endpoint.receive, methods=["POST"])],
        sender=sender,
        stop=stop,
    )
