"""A local fake of WeCom's group-robot webhook that records what it receives.

It answers like ``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…``: HTTP 200 with
``{"errcode": 0, "errmsg": "ok"}``, or WeCom's error codes for an unknown key (93000), a bad
message type (40008) or a markdown body over 4096 bytes (40058). Tests script failures with
``fail_next`` (45009, HTTP 500, …) and ``refuse_key`` (a permanently invalid key).

The same recorder serves two ways: as an ASGI app (``httpx.ASGITransport(app=robot)``) and over
real HTTP on 127.0.0.1 (``with robot.serve() as url``) for end-to-end tests of ``kesu serve``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATH = "/cgi-bin/webhook/send"
OK: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}


@dataclass(frozen=True)
class RobotPost:
    """One request the fake received (also the rejected ones: ``accepted`` says which)."""

    key: str
    body: dict[str, Any]
    status: int
    answer: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.status == 200 and self.answer.get("errcode") == 0

    @property
    def msgtype(self) -> str:
        return str(self.body.get("msgtype"))

    @property
    def content(self) -> str:
        section = self.body.get(self.msgtype)
        return str(section.get("content", "")) if isinstance(section, dict) else ""


@dataclass(frozen=True)
class _Failure:
    status: int
    answer: dict[str, Any]
    key: str | None  # None: whichever key comes next


class FakeRobot:
    def __init__(self) -> None:
        self.posts: list[RobotPost] = []
        self._failures: list[_Failure] = []
        self._refused: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()

    # ------------------------------------------------------------------ scripting

    def fail_next(self, times: int = 1, *, errcode: int | None = None, status: int = 200,
                  key: str | None = None) -> None:
        """The next ``times`` posts (to ``key``, or any key) get ``errcode`` or HTTP ``status``."""
        answer = {"errcode": errcode, "errmsg": f"fake error {errcode}"} if errcode is not None else {
            "errcode": -1, "errmsg": "internal error"}
        with self._changed:
            self._failures += [_Failure(status, answer, key)] * times

    def refuse_key(self, key: str, errcode: int = 93000, errmsg: str = "invalid webhook url") -> None:
        with self._changed:
            self._refused[key] = {"errcode": errcode, "errmsg": errmsg}

    def recover(self) -> None:
        """Scripted failures are dropped: every valid post succeeds again."""
        with self._changed:
            self._failures.clear()

    # ------------------------------------------------------------------ reading

    def accepted(self, key: str | None = None) -> list[RobotPost]:
        with self._changed:
            return [p for p in self.posts if p.accepted and (key is None or p.key == key)]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[RobotPost]:
        """Block until ``count`` posts were accepted (a background dispatcher is delivering)."""
        with self._changed:
            self._changed.wait_for(lambda: sum(p.accepted for p in self.posts) >= count, timeout)
            return [p for p in self.posts if p.accepted]

    # ------------------------------------------------------------------ the endpoint

    def handle(self, method: str, path: str, query: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        key = (parse_qs(query).get("key") or [""])[0]
        if method != "POST" or path != PATH:
            return 404, {"errcode": 404, "errmsg": "not found"}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = {}
        with self._changed:
            status, answer = self._answer(key, body)
            self.posts.append(RobotPost(key, body if isinstance(body, dict) else {}, status, answer))
            self._changed.notify_all()
        return status, answer

    def _answer(self, key: str, body: Any) -> tuple[int, dict[str, Any]]:
        for index, failure in enumerate(self._failures):
            if failure.key is None or failure.key == key:
                del self._failures[index]
                return failure.status, failure.answer
        if not key or key in self._refused:
            return 200, self._refused.get(key, {"errcode": 93000, "errmsg": "invalid webhook url"})
        msgtype = body.get("msgtype") if isinstance(body, dict) else None
        section = body.get(msgtype) if isinstance(body, dict) and isinstance(msgtype, str) else None
        if msgtype not in ("text", "markdown") or not isinstance(section, dict):
            return 200, {"errcode": 40008, "errmsg": "invalid message type"}
        content = section.get("content")
        limit = 4096 if msgtype == "markdown" else 2048
        if not isinstance(content, str) or not content:
            return 200, {"errcode": 40058, "errmsg": f"{msgtype}.content is empty"}
        if len(content.encode("utf-8")) > limit:
            return 200, {"errcode": 40058, "errmsg": f"{msgtype}.content exceed max length {limit}"}
        return 200, OK

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI: for ``httpx.ASGITransport(app=robot)``."""
        assert scope["type"] == "http"
        raw = b""
        while True:
            event = await receive()
            raw += event.get("body", b"")
            if not event.get("more_body"):
                break
        status, answer = self.handle(scope["method"], scope["path"], scope["query_string"].decode(), raw)
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve over real HTTP on 127.0.0.1 (a free port); yields the webhook URL."""
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._reply()

            def do_GET(self) -> None:
                self._reply()

            def _reply(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, answer = robot.handle(self.command, url.path, url.query, raw)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="fake-wecom", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}{PATH}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


class ManualClock:
    """An injected clock that only moves when a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
