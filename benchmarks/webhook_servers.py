"""Server processes for ``benchmarks/webhook_throughput.py`` (not a benchmark by itself).

Each factory below is started by the benchmark as its own uvicorn process
(``uvicorn --factory --app-dir benchmarks webhook_servers:<factory> …``), configured through
environment variables:

``kesu_app``
    The real ``kesu serve`` application, ``bot.app.build_server(Settings())``, settings from the
    ``KESU_*`` variables. The clock starts at ``BENCH_CLOCK_START`` and runs at real speed, so the
    scripted dates ("去年12月8号") mean the same on every day the benchmark runs.
``bare_app``
    The floor to compare with: one Starlette route that parses the same Telegram JSON body and
    does one INSERT + COMMIT in a worker thread (``asyncio.to_thread``, as Kesu's adapters do) on an
    engine from ``storage.db.make_engine`` (Kesu's engine settings) for ``BENCH_DATABASE_URL``.
``fakes_app``
    Local stand-ins for the platforms Kesu's dispatcher sends to: the Telegram Bot API
    (``/bot<token>/<method>``), the WeChat API (``/cgi-bin/token``, ``/cgi-bin/message/…``) and the
    WeCom group robot (``/cgi-bin/webhook/send``). They answer like the platforms do and count calls.

Both ``kesu_app`` and ``bare_app`` are wrapped in ``BenchRoutes``, which answers
``GET /__bench/stats`` and ``POST /__bench/reset`` itself and passes everything else through. With
``BENCH_PROBES=1`` they also record, without changing what the application does:

- the SQLAlchemy pool: connections checked out at once (peak), checkouts, new connections;
- SQLite only: the wait for ``Store``'s in-process write lock (Kesu; the same lock, timed) and
  how long it is held, and the time from a writing connection's checkout to the end of its
  ``BEGIN IMMEDIATE`` (run by ``storage.db``'s "begin" listener), where SQLite makes a writer
  wait for the file lock (busy_timeout);
- the event loop's default thread pool (where ``asyncio.to_thread`` runs every turn): its size
  and the number of calls queued for a free thread, sampled every 20 ms by a timer on the loop.
  To see it, the factory gives the loop the default executor it would have created itself.

They cost nothing measurable (telegram at 16 connections on SQLite, with and without
``--no-probes``, differed by less than run-to-run noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import BigInteger, Column, Connection, DateTime, Engine, Integer, MetaData, Table, Text, event, insert
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from storage.db import BEGIN_OPTION, make_engine

BARE_TABLE = "bench_bare_insert"
BARE_PATH = "/bare/insert"
STATS_PATH = "/__bench/stats"
RESET_PATH = "/__bench/reset"
SAMPLE_SECONDS = 0.02


# --------------------------------------------------------------------------- probes


def _percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile in ms of nanosecond values; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] / 1e6


def _summary(values: list[int]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99),
            "max_ms": max(values, default=0) / 1e6, "mean_ms": (sum(values) / len(values) / 1e6) if values else 0.0,
            "total_s": sum(values) / 1e9}


class Probes:
    """Counters filled by SQLAlchemy events, a timed write lock and a thread-pool sampler."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self.engines: list[Engine] = []
        self.checked_out = 0
        self.reset()
        self.executor: ThreadPoolExecutor | None = None

    def reset(self) -> None:
        with self._lock:
            self.peak_checked_out = self.checked_out
            self.checkouts = 0
            self.connects = 0
            self.lock_waits: list[int] = []
            self.lock_holds: list[int] = []
            self.begins: list[int] = []
            self.queue_samples: list[int] = []

    # ---- engines

    def watch(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.engines.append(engine)
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)
        event.listen(engine, "connect", self._connect)
        if engine.dialect.name == "sqlite":  # after storage.db's own "begin" listener, which runs BEGIN
            event.listen(engine, "engine_connect", self._before)
            event.listen(engine, "begin", self._after)

    def _checkout(self, *_: Any) -> None:
        with self._lock:
            self.checked_out += 1
            self.checkouts += 1
            self.peak_checked_out = max(self.peak_checked_out, self.checked_out)

    def _checkin(self, *_: Any) -> None:
        with self._lock:
            self.checked_out -= 1

    def _connect(self, *_: Any) -> None:
        with self._lock:
            self.connects += 1

    def _before(self, conn: Connection) -> None:
        conn.info["bench_begin"] = time.perf_counter_ns()

    def _after(self, conn: Connection) -> None:
        started = conn.info.pop("bench_begin", None)
        if started is not None and conn.get_execution_options().get(BEGIN_OPTION) != "DEFERRED":
            self.begins.append(time.perf_counter_ns() - started)

    # ---- the default thread pool

    def watch_executor(self) -> None:
        """Give the running loop a default executor this probe can see: the same one the loop would
        create itself (``ThreadPoolExecutor()``: min(32, CPUs + 4) threads), then sample its queue."""
        if not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()  # uvicorn calls the factory inside its loop
        except RuntimeError:
            return
        self.executor = ThreadPoolExecutor(thread_name_prefix="bench-default")
        loop.set_default_executor(self.executor)
        loop.call_later(SAMPLE_SECONDS, self._sample, loop, self.executor)

    def _sample(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        """On the loop's own thread (a sampling thread would make the server's threads fight it for the GIL)."""
        self.queue_samples.append(executor._work_queue.qsize())
        loop.call_later(SAMPLE_SECONDS, self._sample, loop, executor)

    # ---- report

    def stats(self) -> dict[str, Any]:
        executor = self.executor
        samples = list(self.queue_samples)
        pools = [f"{engine.dialect.name} pool_size {getattr(engine.pool, 'size', lambda: '?')()} "
                 f"max_overflow {getattr(engine.pool, '_max_overflow', '?')}" for engine in self.engines]
        return {
            "probes": self.enabled,
            "pool": {"limits": pools, "peak_checked_out": self.peak_checked_out, "checkouts": self.checkouts,
                     "connects": self.connects, "checked_out_now": self.checked_out},
            "write_lock": {"wait": _summary(self.lock_waits), "hold": _summary(self.lock_holds)},
            "begin": _summary(self.begins),
            "executor": {
                "max_workers": executor._max_workers if executor else None,
                "threads": len(executor._threads) if executor else 0,
                "queue_max": max(samples, default=0),
                "queue_mean": sum(samples) / len(samples) if samples else 0.0,
                "samples": len(samples),
            },
        }


class TimedLock:
    """A ``threading.Lock`` used as ``with lock:`` that records its wait and hold times."""

    def __init__(self, probes: Probes) -> None:
        self._lock = threading.Lock()
        self._probes = probes
        self._held_since = 0

    def __enter__(self) -> TimedLock:
        started = time.perf_counter_ns()
        self._lock.acquire()
        self._held_since = now = time.perf_counter_ns()
        self._probes.lock_waits.append(now - started)
        return self

    def __exit__(self, *_: object) -> None:
        held = time.perf_counter_ns() - self._held_since
        self._lock.release()
        self._probes.lock_holds.append(held)


class BenchRoutes:
    """ASGI wrapper: ``/__bench/stats`` and ``/__bench/reset``, everything else to the app."""

    def __init__(self, app: ASGIApp, probes: Probes, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.app = app
        self.probes = probes
        self.extra = extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == STATS_PATH:
            body = {**self.probes.stats(), **(self.extra() if self.extra else {})}
            await _send_json(send, body)
        elif path == RESET_PATH:
            self.probes.reset()
            await _send_json(send, {"ok": True})
        else:
            await self.app(scope, receive, send)


async def _send_json(send: Send, body: object, status: int = 200) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _probes() -> Probes:
    return Probes(os.environ.get("BENCH_PROBES", "1") == "1")


# --------------------------------------------------------------------------- kesu serve


def kesu_app() -> ASGIApp:
    """``kesu serve`` as ``bot.app.build_server`` builds it, settings from ``KESU_*``."""
    from bot.app import build_server
    from bot.config import Settings
    from storage.repository import Store

    probes = _probes()
    probes.watch_executor()
    if probes.enabled:
        original_init = Store.__init__

        def init(store: Store, engine: Engine) -> None:
            original_init(store, engine)
            probes.watch(engine)
            if engine.dialect.name == "sqlite":  # the same lock, timed
                setattr(store, "_write_lock", TimedLock(probes))  # noqa: B010

        setattr(Store, "__init__", init)  # noqa: B010
    start_at = datetime.fromisoformat(os.environ["BENCH_CLOCK_START"])
    started = time.monotonic()
    settings = Settings(_env_file=None)
    app = build_server(settings, clock=lambda: start_at + timedelta(seconds=time.monotonic() - started))
    return BenchRoutes(app, probes)


# --------------------------------------------------------------------------- the bare route


def bare_app() -> ASGIApp:
    """One route: parse the Telegram JSON, one INSERT + COMMIT in a worker thread, 200."""
    probes = _probes()
    probes.watch_executor()
    engine = make_engine(os.environ["BENCH_DATABASE_URL"])
    probes.watch(engine)
    metadata = MetaData()
    table = Table(BARE_TABLE, metadata,
                  Column("id", Integer, primary_key=True),
                  Column("update_id", BigInteger, nullable=False),
                  Column("chat_id", BigInteger, nullable=False),
                  Column("text", Text, nullable=False),
                  Column("created_at", DateTime(timezone=True), nullable=False))
    metadata.create_all(engine)
    statement = insert(table)

    def write(row: dict[str, Any]) -> None:
        with engine.begin() as connection:
            connection.execute(statement, row)

    async def receive(request: Request) -> Response:
        update = json.loads(await request.body())
        message = update["message"]
        row = {"update_id": update["update_id"], "chat_id": message["chat"]["id"], "text": message.get("text", ""),
               "created_at": datetime.now().astimezone()}
        await asyncio.to_thread(write, row)
        return Response(status_code=200)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()

    return BenchRoutes(Starlette(routes=[Route(BARE_PATH, receive, methods=["POST"])], lifespan=lifespan), probes)


# --------------------------------------------------------------------------- platform fakes


BOT_USER = {"id": 123, "is_bot": True, "first_name": "Kesu", "username": "kesu_bench_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


class Fakes:
    """Telegram Bot API, WeChat API and WeCom robot, answering like the platforms, counting calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._message_id = 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            chunk = await receive()
            body += chunk.get("body", b"")
            if not chunk.get("more_body"):
                break
        path: str = scope["path"]
        if path == STATS_PATH:
            await _send_json(send, {"calls": dict(self.calls)})
        elif path.startswith("/bot"):
            method = path.rsplit("/", 1)[-1]
            self.calls[f"telegram.{method}"] += 1
            await _send_json(send, {"ok": True, "result": self._telegram(method, body)})
        elif path == "/cgi-bin/webhook/send":
            self.calls["wecom.webhook/send"] += 1
            await _send_json(send, {"errcode": 0, "errmsg": "ok"})
        elif path.startswith("/cgi-bin/"):
            endpoint = path.removeprefix("/cgi-bin/")
            self.calls[f"wechat.{endpoint}"] += 1
            if endpoint == "token":
                await _send_json(send, {"access_token": "bench-access-token", "expires_in": 7200})
            else:
                self._message_id += 1
                await _send_json(send, {"errcode": 0, "errmsg": "ok", "msgid": self._message_id})
        else:
            await _send_json(send, {"ok": False}, status=404)

    def _telegram(self, method: str, body: bytes) -> Any:
        if method == "getMe":
            return BOT_USER
        if method not in ("sendMessage", "editMessageText", "editMessageReplyMarkup"):
            return True
        params = {key: values[-1] for key, values in parse_qs(body.decode(), keep_blank_values=True).items()}
        chat_id = int(params.get("chat_id", "0"))
        self._message_id += 1
        message_id = int(params.get("message_id", self._message_id))
        chat = ({"id": chat_id, "type": "private", "first_name": "顾客"} if chat_id > 0
                else {"id": chat_id, "type": "supergroup", "title": "员工群"})
        return {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": BOT_USER,
                "text": params.get("text", "")}


def fakes_app() -> ASGIApp:
    return Fakes()
