"""Webhook throughput and latency of complete persisted turns over HTTP on loopback (127.0.0.1).

What it measures
    One request = one customer turn, sent the way the platform sends it:
      telegram  POST /telegram/webhook, a Telegram update (JSON) with the secret-token header; the
                200 comes back once the turn is committed (message, dialog state, replies, their
                outbox items, and on "确认" the case and its staff notification). The replies are
                then sent by Kesu's dispatcher to a local fake Bot API, outside the measured request.
      wechat    POST /wechat in safe mode (encrypt_type=aes): signed query, AES-encrypted XML built
                with wechatpy's WeChatCrypto exactly as WeChat builds it; the response is the
                encrypted passive reply, so its latency IS the passive-reply time WeChat waits for
                (WeChat gives up at 5 s; Kesu answers "success" and defers a turn after 3 s).
      bare      the floor: a Starlette route (same uvicorn flags) that parses the same Telegram JSON
                and does one INSERT + COMMIT in a worker thread on an engine from
                ``storage.db.make_engine`` (webhook_servers.bare_app).
    Every request is a distinct message (own update_id / message_id / chat, or own MsgId, nonce,
    signature and encrypted body). Simulated customers run scripted 6-8 turn conversations from
    ``turn_throughput.build_customers`` (a greeting or a complaint first, follow-up answers, "确认"
    last, which opens a case); a customer's next turn is sent only after the previous reply, as a
    person would, and many customers are in flight at once.

    For each backend (a SQLite file; a fresh ``kesu_bench_<hex>`` PostgreSQL database, dropped
    afterwards) and each concurrency (default 1, 16, 128 connections, each running one customer at
    a time), every run gets a fresh database and a fresh server process: ``uvicorn --factory
    --workers 1 --loop uvloop --http httptools --no-access-log`` on 127.0.0.1 and a free port
    (webhook_servers.kesu_app = ``bot.app.build_server(Settings())`` configured by KESU_* variables,
    Telegram and WeChat both enabled, their APIs and the WeCom robot pointed at a local fake
    process). A few complete warm-up conversations go first, then requests are sent for
    ``--duration`` seconds; in-flight requests are awaited, so every request sent is counted.

    Per run: requests, errors (non-200 answers, broken or timed-out connections), requests/s
    (requests / wall time), p50/p99/max latency (from writing the request to reading the last byte
    of the answer), CPU used by the server process, by this load generator, and by the whole box
    (two cores = 200%), then checks: inbound messages stored (warm-up included) = requests sent (OK /
    MISMATCH); cases opened vs conversations completed; for WeChat every passive reply decrypted,
    addressed to its sender and non-empty, and how many were "success" (deferred). Probes in the
    server process (webhook_servers.Probes) add: peak pool checkouts and the pool's limit, the
    default thread pool that runs every turn (``asyncio.to_thread``) and how many turns queued for a
    thread, and on SQLite the wait for Store's write lock and for ``BEGIN IMMEDIATE``. Last, Kesu
    turns/s ÷ bare inserts/s for each backend and concurrency, and the WeChat passive-reply p99s.

The load generator
    An asyncio HTTP/1.1 client (a bare ``asyncio.Protocol`` on uvloop) in this process: pre-built
    request bytes written to keep-alive connections opened before the clock starts, answers read by
    Content-Length. It costs 30-40 µs of CPU per request (the "c" CPU column). Measured once on this
    2-core machine against the bare SQLite route at 16 connections: this client 3,150 req/s, wrk
    3,525 req/s, httpx.AsyncClient 640 req/s at 100% CPU (91 req/s at 128 connections). So httpx
    would have measured itself; wrk is ~10% faster on the bare route (the ratio's denominator, so
    the Kesu ÷ bare ratios here are ~10% generous) and makes no difference at Kesu's rates, but it
    cannot keep a customer's turns in order (its request() does not know which connection is free
    of that customer's previous turn) nor stop after exactly the requests it counts, which the
    stored-messages check needs; and it is not in the project's dependencies.

How to read it
    Everything shares two cores: the server process (one Python process, GIL-bound), PostgreSQL's
    backends, the fake platform APIs and the client. In "cpu% s/c/box", s near 100 means the
    server's Python is the limit, box near 200 that the machine is. Latency at concurrency c is
    mostly queueing: c requests in flight over a server that completes N/s wait ~c/N s each; the
    "to_thread pool" figures show where they wait (every turn runs in the loop's default thread
    pool, min(32, CPUs + 4) threads), the pool and lock figures whether the database is the limit.
    The Kesu ÷ bare ratio is the fraction of a bare insert-per-request server that a full turn
    reaches on the same machine, backend and concurrency (1.0 = a turn costs no more than one insert).

    Telegram: the webhook's 200 is not the customer seeing the reply. Replies leave through the
    outbox at Kesu's Telegram rate limit (30 messages/s overall), so "outbox after the run: N
    pending" is the reply backlog a run of that intake rate leaves behind. WeChat: the passive reply
    is the answer, so the wechat latency columns are what the customer waits.

    Figures vary with other load on the box: see the load average line. Times are printed, never
    asserted; the checks (OK / MISMATCH) are about what was stored, not about speed.

    .venv/bin/python benchmarks/webhook_throughput.py [--duration 5] [--concurrency 1,16,128]
        [--backends sqlite,postgres] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import http.client
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool
from turn_throughput import DEFAULT_PG_URL, T0, Customer, build_customers, check_loopback, fresh_database, percentile
from webhook_servers import BARE_PATH, BARE_TABLE, RESET_PATH, STATS_PATH
from wechatpy.crypto import WeChatCrypto

from dialogs.catalog import load_catalog
from storage.models import cases, messages, outbox

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REQUEST_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 90.0
VERIFY_TIMEOUT_S = 10.0

TELEGRAM_TOKEN = "123456:bench-token"
TELEGRAM_SECRET = "bench-webhook-secret"
TELEGRAM_PATH = "/telegram/webhook"
FALLBACK_GROUP = -1002000000000  # staff notifications of new cases go here (the fake Bot API)
WECHAT_PATH = "/wechat"
WECHAT_TOKEN = "kesuBenchToken2026"
WECHAT_APP_ID = "wx1234567890abcdef"
WECHAT_SECRET = "0123456789abcdef0123456789abcdef"
WECHAT_AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")
WECHAT_ACCOUNT = "gh_3f2a5d8c1b7e"
WECHAT_LIMIT_MS = 5000.0

# Requests built per run: more than any run can send at these rates, so the pool never runs dry.
POOL_RATE = {"bare": 6000, "telegram": 2000, "wechat": 2000}
TARGETS = ("bare", "telegram", "wechat")

T = TypeVar("T")


# ------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Turn:
    raw: bytes  # the whole HTTP request
    kind: str  # "opening" | "follow-up" | "confirm"
    openid: str = ""  # WeChat: who the passive reply must be addressed to


def _kind(index: int, count: int) -> str:
    return "opening" if index == 0 else "confirm" if index == count - 1 else "follow-up"


def _http(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class RequestFactory:
    """Distinct requests for every turn of every customer, across all runs of this process."""

    def __init__(self, scripts: Sequence[Customer]) -> None:
        self.scripts = scripts
        self.crypto = WeChatCrypto(WECHAT_TOKEN, WECHAT_AES_KEY, WECHAT_APP_ID)
        self._customer = itertools.count(1)
        self._script = itertools.cycle(scripts)
        self._update_id = itertools.count(100_001)
        self._msg_id = itertools.count(24_000_000_000_000_001)
        self._nonce = itertools.count(1_000_001)
        self._date = int(time.time())

    def conversations(self, target: str, requests: int) -> deque[list[Turn]]:
        """Whole conversations, at least ``requests`` turns in all."""
        built: deque[list[Turn]] = deque()
        total = 0
        while total < requests:
            script = next(self._script).script
            number = next(self._customer)
            if target == "wechat":
                openid = f"oKesuBench{number:018d}"
                turns = [Turn(self._wechat(openid, line), _kind(i, len(script)), openid)
                         for i, line in enumerate(script)]
            else:
                path = BARE_PATH if target == "bare" else TELEGRAM_PATH
                user_id = 6_000_000_000 + number
                turns = [Turn(self._telegram(path, user_id, i + 1, line), _kind(i, len(script)))
                         for i, line in enumerate(script)]
            built.append(turns)
            total += len(turns)
        return built

    def _telegram(self, path: str, user_id: int, message_id: int, line: str) -> bytes:
        user = {"id": user_id, "is_bot": False, "first_name": "顾客", "language_code": "zh-hans"}
        update = {"update_id": next(self._update_id),
                  "message": {"message_id": message_id, "date": self._date, "text": line, "from": user,
                              "chat": {"id": user_id, "type": "private", "first_name": "顾客"}}}
        body = json.dumps(update, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        return _http(path, body, headers)

    def _wechat(self, openid: str, line: str) -> bytes:
        timestamp, nonce = str(self._date), str(next(self._nonce))
        xml = (f"<xml><ToUserName><![CDATA[{WECHAT_ACCOUNT}]]></ToUserName>"
               f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{self._date}</CreateTime>"
               f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{line}]]></Content>"
               f"<MsgId>{next(self._msg_id)}</MsgId></xml>")
        envelope = self.crypto.encrypt_message(xml, nonce, timestamp)
        encrypted = _cdata(envelope, "Encrypt")
        signature = hashlib.sha1("".join(sorted((WECHAT_TOKEN, timestamp, nonce))).encode()).hexdigest()
        query = urlencode({"signature": signature, "timestamp": timestamp, "nonce": nonce, "openid": openid,
                           "encrypt_type": "aes", "msg_signature": _cdata(envelope, "MsgSignature")})
        body = (f"<xml><ToUserName><![CDATA[{WECHAT_ACCOUNT}]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>").encode()
        return _http(f"{WECHAT_PATH}?{query}", body, {"Content-Type": "text/xml"})


def _cdata(xml: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</{tag}>", xml, re.DOTALL)
    if found is None:
        raise ValueError(f"no <{tag}> in {xml[:200]!r}")
    return found.group(1)


def check_passive_replies(crypto: WeChatCrypto, replies: Sequence[tuple[str, bytes]]) -> tuple[int, int, list[str]]:
    """(replies that decrypt, are addressed to their sender and say something; "success" answers; problems)."""
    good = deferred = 0
    problems: list[str] = []
    for openid, body in replies:
        text_body = body.decode("utf-8", errors="replace")
        if text_body == "success":
            deferred += 1
            continue
        try:
            xml = crypto.decrypt_message(text_body, _cdata(text_body, "MsgSignature"), _cdata(text_body, "TimeStamp"),
                                         _cdata(text_body, "Nonce"))
            if _cdata(xml, "ToUserName") != openid or _cdata(xml, "MsgType") != "text" or not _cdata(xml, "Content"):
                raise ValueError(f"reply not addressed to {openid} or empty: {xml[:120]!r}")
            good += 1
        except Exception as problem:  # what WeChat would reject
            if len(problems) < 3:
                problems.append(f"{type(problem).__name__}: {problem}")
    return good, deferred, problems


# ------------------------------------------------------------------------------------ the client


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection as a bare asyncio protocol; answers are read by Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.lost = False

    @classmethod
    async def open(cls, port: int) -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(cls, HOST, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, length, close = _parse_head(bytes(self.buffer[:end]))
        except ValueError as problem:
            waiter.set_exception(problem)
            return
        total = end + 4 + length
        if len(self.buffer) >= total:
            body = bytes(self.buffer[end + 4:total])
            del self.buffer[:total]
            waiter.set_result((status, body, close))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("the server closed the connection"))

    async def roundtrip(self, raw: bytes) -> tuple[int, bytes, bool]:
        """(status, body, server closes the connection)."""
        if self.transport is None or self.lost:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, Connection: close) of a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked answer: not expected from these routes")
    return status, length, close


@dataclass
class Phase:
    """What one drive sent and got back."""

    sent: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    completed: int = 0  # conversations whose every turn got a 200
    wall_s: float = 0.0
    ran_dry: bool = False


async def drive(port: int, conversations: deque[list[Turn]], concurrency: int, duration_s: float | None,
                keep_replies: bool) -> Phase:
    """``concurrency`` connections, each running one conversation at a time, turn after answered turn,
    until the conversations run out or ``duration_s`` has passed (requests in flight then finish)."""
    phase = Phase()
    connections: list[Connection | None] = list(
        await asyncio.gather(*(Connection.open(port) for _ in range(concurrency))))
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    async def worker(slot: int) -> None:
        while conversations and time.perf_counter() < deadline:
            conversation = conversations.popleft()
            answered = 0
            for turn in conversation:
                if time.perf_counter() >= deadline:
                    break
                connection = connections[slot]
                if connection is None:
                    try:
                        connection = connections[slot] = await Connection.open(port)
                    except OSError as problem:
                        phase.errors[f"connect: {type(problem).__name__}"] += 1
                        return
                phase.sent += 1
                t0 = time.perf_counter_ns()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        status, body, close = await connection.roundtrip(turn.raw)
                except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as problem:
                    phase.errors[type(problem).__name__] += 1
                    connection.close()
                    connections[slot] = None
                    continue
                phase.latencies_ns.append(time.perf_counter_ns() - t0)
                phase.kinds.append(turn.kind)
                if status == 200:
                    answered += 1
                else:
                    phase.errors[f"HTTP {status}"] += 1
                if keep_replies:
                    phase.replies.append((turn.openid, body))
                if close:
                    connection.close()
                    connections[slot] = None
            phase.completed += answered == len(conversation)

    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    phase.wall_s = time.perf_counter() - started
    phase.ran_dry = not conversations and duration_s is not None and phase.wall_s < duration_s
    for connection in connections:
        if connection is not None:
            connection.close()
    return phase


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


# ------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def uvicorn_flags() -> list[str]:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return ["--workers", "1", "--loop", loop, "--http", parser, "--no-access-log", "--log-level", "warning"]


def clean_environment() -> dict[str, str]:
    """This process's environment without KESU_* settings or proxies: the servers talk to 127.0.0.1 only."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("KESU_") and "proxy" not in key.lower()}


class Server:
    """A uvicorn process serving one factory of webhook_servers.py; only ever this process is signalled."""

    def __init__(self, factory: str, env: dict[str, str], log_path: Path) -> None:
        self.factory = factory
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(BENCH_DIR),
                   f"webhook_servers:{factory}", "--host", HOST, "--port", str(self.port), *uvicorn_flags()]
        started = time.perf_counter()
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, env={**clean_environment(), **env}, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_path.parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - started

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.factory} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.call("GET", STATS_PATH, timeout=1.0)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.factory} not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def call(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise http.client.HTTPException(f"{method} {path}: HTTP {response.status}")
            answer: dict[str, Any] = json.loads(body)
            return answer
        finally:
            connection.close()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_problems(self) -> tuple[int, list[str]]:
        """(warning/error lines in the server's log, the first few distinct ones)."""
        count = 0
        seen: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback")):
                count += 1
                short = re.sub(r"\d+", "N", line)[:140]
                if short not in seen and len(seen) < 3:
                    seen.append(short)
        return count, seen


@contextlib.contextmanager
def running(factory: str, env: dict[str, str], log_path: Path) -> Iterator[Server]:
    server = Server(factory, env, log_path)
    try:
        yield server
    finally:
        server.stop()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def kesu_env(database_url: str, fakes_port: int) -> dict[str, str]:
    fake = f"http://{HOST}:{fakes_port}"
    return {
        "KESU_DATABASE_URL": database_url,
        "KESU_TELEGRAM_TOKEN": TELEGRAM_TOKEN,
        "KESU_TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
        "KESU_PUBLIC_URL": "https://kesu.invalid",  # required by webhook mode; never contacted
        "KESU_TELEGRAM_API_URL": f"{fake}/bot",
        "KESU_WECHAT_TOKEN": WECHAT_TOKEN,
        "KESU_WECHAT_APP_ID": WECHAT_APP_ID,
        "KESU_WECHAT_APP_SECRET": WECHAT_SECRET,
        "KESU_WECHAT_AES_KEY": WECHAT_AES_KEY,
        "KESU_WECHAT_API_URL": f"{fake}/cgi-bin/",
        "KESU_WECOM_API_URL": f"{fake}/cgi-bin/webhook/send",
        "KESU_FALLBACK_TELEGRAM_CHAT": str(FALLBACK_GROUP),
        "BENCH_CLOCK_START": T0.isoformat(),
    }


# ------------------------------------------------------------------------------------ runs


@dataclass
class Run:
    backend: str
    target: str
    concurrency: int
    warmup_sent: int
    phase: Phase
    cpu_server: float  # % of one core
    cpu_client: float
    cpu_box: float  # % of one core, all cores (2 cores = 200%)
    stored: int
    cases: int | None
    outbox: dict[str, int]
    probes: dict[str, Any]
    fake_calls: Counter[str]
    log_count: int
    log_lines: list[str]
    ready_s: float
    warmup_completed: int = 0
    replies_checked: int = 0
    replies_ok: int = 0
    replies_deferred: int = 0
    reply_problems: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.phase.sent / self.phase.wall_s if self.phase.wall_s else 0.0

    @property
    def expected(self) -> int:
        return self.warmup_sent + self.phase.sent

    def ms(self, q: float, kind: str | None = None) -> float:
        values = sorted(ns / 1e6 for ns, k in zip(self.phase.latencies_ns, self.phase.kinds, strict=True)
                        if kind is None or k == kind)
        return percentile(values, q)

    def row(self) -> str:
        errors = sum(self.phase.errors.values())
        verdict = "OK" if self.stored == self.expected else "MISMATCH"
        cpu = f"{self.cpu_server:3.0f}/{self.cpu_client:3.0f}/{self.cpu_box:3.0f}"
        return (f"  {self.target:<9}{self.concurrency:>5} {self.phase.sent:>8} {errors:>6} {self.per_second:>8.0f} "
                f"{self.ms(50):>8.2f} {self.ms(99):>8.2f} {max(self.phase.latencies_ns, default=0) / 1e6:>8.1f}  "
                f"{cpu:>11}  {self.stored:>6}/{self.expected:<6} {verdict}")

    def details(self) -> list[str]:
        lines: list[str] = []
        pad = "      "
        if self.phase.errors:
            lines.append(pad + "errors: " + ", ".join(f"{n}× {what}" for what, n in self.phase.errors.most_common()))
        if self.phase.ran_dry:
            lines.append(pad + "note: the pre-built requests ran out before --duration; raise POOL_RATE")
        if self.target != "bare":
            kinds = "  ".join(f"{kind} {self.ms(50, kind):.1f}/{self.ms(99, kind):.1f}"
                              for kind in ("opening", "follow-up", "confirm"))
            done = self.phase.completed + self.warmup_completed
            lines.append(f"{pad}p50/p99 ms by turn: {kinds};  cases opened {self.cases} for {done} conversations "
                         f"completed (warm-up included) {'OK' if self.cases == done else 'MISMATCH'}")
        lines.append(pad + self._database_line())
        if self.target != "bare":
            sends = self.fake_calls.get("telegram.sendMessage", 0)
            kf = self.fake_calls.get("wechat.message/custom/send", 0)
            lines.append(f"{pad}outbox after the run: {self.outbox.get('pending', 0)} pending, "
                         f"{self.outbox.get('sending', 0)} sending, {self.outbox.get('sent', 0)} sent, "
                         f"{self.outbox.get('failed', 0)} failed; during the run the fakes got {sends} "
                         f"Telegram sendMessage, {kf} WeChat customer-service messages")
        if self.target == "wechat":
            p99 = self.ms(99)
            lines.append(f"{pad}WeChat passive reply p99 {p99:.1f} ms = {p99 / WECHAT_LIMIT_MS:.1%} of WeChat's 5 s "
                         f"(max {max(self.phase.latencies_ns, default=0) / 1e6:.1f} ms); "
                         f"{self.replies_ok}/{self.replies_checked} replies decrypted, addressed to the sender, "
                         f"non-empty; {self.replies_deferred} answered \"success\" (turn over 3 s, reply deferred)")
            lines.extend(f"{pad}  reply problem: {problem}" for problem in self.reply_problems)
        log = f"server ready in {self.ready_s:.1f} s; server log: {self.log_count} warning/error lines"
        lines.append(pad + log + ("" if not self.log_lines else ", e.g. " + " | ".join(self.log_lines)))
        return lines

    def _database_line(self) -> str:
        if not self.probes.get("probes"):
            return "probes off"
        pool = self.probes["pool"]
        executor = self.probes["executor"]
        text_ = (f"pool: peak {pool['peak_checked_out']} checked out at once, {pool['connects']} new connections "
                 f"({'; '.join(pool['limits'])}); to_thread pool: "
                 f"{executor['max_workers']} threads, turns queued for a thread max {executor['queue_max']} "
                 f"mean {executor['queue_mean']:.1f}")
        lock = self.probes["write_lock"]
        if lock["wait"]["n"]:
            text_ += (f"; Store write lock: wait p50 {lock['wait']['p50_ms']:.2f} p99 {lock['wait']['p99_ms']:.1f} "
                      f"max {lock['wait']['max_ms']:.0f} ms, held mean {lock['hold']['mean_ms']:.2f} ms "
                      f"({lock['hold']['total_s'] / self.phase.wall_s:.0%} of the run)")
        begin = self.probes["begin"]
        if begin["n"]:
            text_ += f"; BEGIN IMMEDIATE p99 {begin['p99_ms']:.2f} max {begin['max_ms']:.1f} ms"
        return text_


def count_rows(url: str, target: str) -> tuple[int, int | None, dict[str, int]]:
    """(inbound messages or bare rows, cases, outbox items per state) as stored now."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if target == "bare":
                rows = connection.execute(text(f"SELECT count(*) FROM {BARE_TABLE}")).scalar_one()
                return int(rows), None, {}
            inbound = connection.execute(
                select(func.count()).select_from(messages).where(messages.c.direction == "in")).scalar_one()
            opened = connection.execute(select(func.count()).select_from(cases)).scalar_one()
            rows_by_state = connection.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all()
            return int(inbound), int(opened), {str(state): int(n) for state, n in rows_by_state}
    finally:
        engine.dispose()


def one_run(backend: str, target: str, concurrency: int, args: argparse.Namespace, factory: RequestFactory,
            fakes: Server, workdir: Path) -> Run:
    warm = factory.conversations(target, 1)
    while len(warm) < args.warmup:
        warm.extend(factory.conversations(target, 1))
    pool = factory.conversations(target, int(POOL_RATE[target] * args.duration) + 100)
    with fresh_database(backend, args.pg_url, workdir) as url:
        env = {"BENCH_PROBES": "0" if args.no_probes else "1"}
        if target == "bare":
            env["BENCH_DATABASE_URL"] = url
        else:
            env.update(kesu_env(url, fakes.port))
        log_path = workdir / f"{backend}-{target}-{concurrency}.log"
        with running("bare_app" if target == "bare" else "kesu_app", env, log_path) as server:
            warmup = run_async(drive(server.port, warm, min(concurrency, args.warmup), None, False))
            server.call("POST", RESET_PATH)
            calls_before = Counter(fakes.call("GET", STATS_PATH)["calls"])
            cpu_server, cpu_client, box = server.cpu_seconds(), time.process_time(), machine_ticks()
            phase = run_async(drive(server.port, pool, concurrency, args.duration, target == "wechat"))
            cpu_server = server.cpu_seconds() - cpu_server
            cpu_client = time.process_time() - cpu_client
            busy, total = (now - before for now, before in zip(machine_ticks(), box, strict=True))
            probes = server.call("GET", STATS_PATH)
            fake_calls = Counter(fakes.call("GET", STATS_PATH)["calls"])
            fake_calls.subtract(calls_before)
            expected = warmup.sent + phase.sent
            deadline = time.monotonic() + VERIFY_TIMEOUT_S  # WeChat turns over 3 s finish in the background
            while True:
                stored, opened, states = count_rows(url, target)
                if stored >= expected or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        log_count, log_lines = server.log_problems()
    cores = os.cpu_count() or 1
    run = Run(backend, target, concurrency, warmup.sent, phase,
              cpu_server=100 * cpu_server / phase.wall_s, cpu_client=100 * cpu_client / phase.wall_s,
              cpu_box=100 * cores * busy / total if total else 0.0, stored=stored, cases=opened, outbox=states,
              probes=probes, fake_calls=fake_calls, log_count=log_count, log_lines=log_lines, ready_s=server.ready_s,
              warmup_completed=warmup.completed)
    if target == "wechat":
        run.replies_ok, run.replies_deferred, run.reply_problems = check_passive_replies(factory.crypto, phase.replies)
        run.replies_checked = len(phase.replies)
        phase.replies.clear()
    return run


# ------------------------------------------------------------------------------------ main


HEADER = (f"  {'target':<9}{'conc':>5} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  {'cpu% s/c/box':>12} {'stored/sent':>13}")


def summary(runs: list[Run], backends: list[str], levels: list[int]) -> list[str]:
    by_key = {(run.backend, run.target, run.concurrency): run for run in runs}
    lines = ["", "Kesu turns/s ÷ bare inserts/s (same backend, same concurrency, same run of this benchmark)",
             f"  {'backend':<10}{'conc':>5} {'bare/s':>8} {'telegram':>14} {'wechat':>14}"]
    for backend in backends:
        for level in levels:
            bare = by_key.get((backend, "bare", level))
            cells = []
            for target in ("telegram", "wechat"):
                run = by_key.get((backend, target, level))
                if run is None or bare is None or not bare.per_second:
                    cells.append(f"{'-':>14}")
                else:
                    cells.append(f"{run.per_second:>6.0f} = {run.per_second / bare.per_second:4.2f}")
            bare_rate = f"{bare.per_second:>8.0f}" if bare else f"{'-':>8}"
            lines.append(f"  {backend:<10}{level:>5} {bare_rate} {cells[0]} {cells[1]}")
    wechat = [run for run in runs if run.target == "wechat"]
    if wechat:
        lines += ["", "WeChat passive reply (WeChat waits 5 s; Kesu defers a turn after 3 s)",
                  f"  {'backend':<10}{'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'of 5 s':>7} "
                  f"{'deferred':>9} {'replies ok':>11}"]
        for run in wechat:
            lines.append(f"  {run.backend:<10}{run.concurrency:>5} {run.ms(50):>8.1f} {run.ms(99):>8.1f} "
                         f"{max(run.phase.latencies_ns, default=0) / 1e6:>8.1f} {run.ms(99) / WECHAT_LIMIT_MS:>7.1%} "
                         f"{run.replies_deferred:>9} {run.replies_ok:>5}/{run.phase.sent:<5}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--duration", type=float, default=5.0,
                        help="measured seconds per run (default 5; 18 runs plus start-ups stay under 5 min)")
    parser.add_argument("--concurrency", default="1,16,128", help="comma-separated connection counts")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: bare, telegram, wechat")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (loopback only); a fresh "
                        "database is created on it per run and dropped afterwards")
    parser.add_argument("--warmup", type=int, default=8,
                        help="complete conversations sent before each measured run (default 8)")
    parser.add_argument("--no-probes", action="store_true",
                        help="no pool / lock / thread-pool probes in the server processes")
    parser.add_argument("--seed", type=int, default=11, help="seed of the scripted conversations")
    args = parser.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "postgres" in backends:
        check_loopback(args.pg_url)

    catalog = load_catalog()
    factory = RequestFactory(build_customers(catalog, 400, args.seed, "c"))
    one, five, _ = os.getloadavg()
    print("Kesu webhook throughput: complete persisted turns over HTTP on 127.0.0.1")
    print(f"machine: {os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min) at start; "
          f"python {sys.version.split()[0]}")
    print(f"servers: uvicorn {' '.join(uvicorn_flags())}, a fresh process and database per run; "
          f"client: asyncio HTTP/1.1 keep-alive on uvloop in this process")
    print(f"each run: {args.warmup} warm-up conversations, then {args.duration:g} s measured; "
          f"latency = request written → answer read; cpu% of one core: server process / this client / whole box")
    started = time.perf_counter()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="kesu-webhook-bench-") as tmp:
        workdir = Path(tmp)
        with running("fakes_app", {}, workdir / "fakes.log") as fakes:
            for backend in backends:
                print()
                where = ("file in a temp dir, WAL" if backend == "sqlite"
                         else f"fresh database per run on {args.pg_url.rsplit('@', 1)[-1]}")
                print(f"{backend} ({where})")
                print(HEADER)
                try:
                    for level in levels:
                        for target in targets:
                            run = one_run(backend, target, level, args, factory, fakes, workdir)
                            runs.append(run)
                            print(run.row())
                            for line in run.details():
                                print(line)
                            sys.stdout.flush()
                except Exception as error:  # a missing PostgreSQL server should not hide the SQLite figures
                    if backend != "postgres" or "connect" not in str(error).lower():
                        raise
                    print(f"  skipped: cannot reach PostgreSQL at {args.pg_url}: {error}")
    for line in summary(runs, backends, levels):
        print(line)
    print()
    print(f"finished {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z}; "
          f"total benchmark time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
