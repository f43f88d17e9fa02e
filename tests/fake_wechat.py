"""A local fake of the WeChat Official Account API that records what it receives.

wechatpy talks ``requests`` (synchronous, real sockets), so the fake is a threaded HTTP server on
127.0.0.1 at a random port; point ``KESU_WECHAT_API_URL`` at ``fake.base_url``. It answers like
``https://api.weixin.qq.com/cgi-bin/``:

- ``GET token?grant_type=client_credential&appid=…&secret=…`` → a new access token (the previous
  one stops working, as on WeChat), or 40013 / 40125 for a wrong app id / secret;
- ``POST message/custom/send?access_token=…`` (customer-service message) → ``{"errcode": 0}``;
- ``POST message/template/send?access_token=…`` → ``{"errcode": 0, "msgid": …}``;
- 40001 for an access token it did not issue (or a superseded one).

Tests script refusals: ``kf_errcode = 45015`` (the 48-hour window has closed) makes every
customer-service send fail that way; ``template_errcode`` likewise for template messages;
``kf_script`` lists the answers to the next customer-service sends one by one (0 accepts).
``answer_delay`` holds every message send that long before answering (the message is taken
first), so a client with a shorter timeout never hears that WeChat took it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/cgi-bin/"
ERRMSG = {
    40001: "invalid credential, access_token is invalid or not latest",
    40003: "invalid openid",
    40013: "invalid appid",
    40125: "invalid appsecret",
    43004: "require subscribe",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    -1: "system error",
}


@dataclass(frozen=True)
class ApiCall:
    """One request the fake received (the refused ones too: ``answer`` says what it said)."""

    method: str
    endpoint: str  # "token", "message/custom/send", …
    query: dict[str, str]
    body: dict[str, Any]
    answer: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.answer.get("errcode", 0) == 0


class FakeWeChatAPI:
    def __init__(self, app_id: str, secret: str) -> None:
        self.app_id = app_id
        self.secret = secret
        self.calls: list[ApiCall] = []
        self.kf_errcode = 0
        self.kf_script: list[int] = []
        self.template_errcode = 0
        self.answer_delay = 0.0
        self.base_url = ""
        self._token: str | None = None
        self._issued = 0
        self._next_msgid = 200228332
        self._lock = threading.Lock()

    # ---- what tests read

    def sent(self, endpoint: str) -> list[ApiCall]:
        return [call for call in self.calls if call.endpoint == endpoint]

    @property
    def tokens_issued(self) -> int:
        return self._issued

    # ---- serving

    @contextlib.contextmanager
    def serve(self) -> Iterator[FakeWeChatAPI]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                if not parts.path.startswith(PREFIX):
                    self.send_error(404)
                    return
                query = {key: values[0] for key, values in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw.decode("utf-8")) if raw else {}
                answer = fake._handle(method, parts.path.removeprefix(PREFIX), query, body)
                if fake.answer_delay and parts.path.startswith(f"{PREFIX}message/"):
                    time.sleep(fake.answer_delay)
                data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-wechat-api", daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def _handle(self, method: str, endpoint: str, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            answer = self._answer(method, endpoint, query, body)
            self.calls.append(ApiCall(method, endpoint, query, body, answer))
            return answer

    def _answer(self, method: str, endpoint: str, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if endpoint == "token" and method == "GET":
            if query.get("grant_type") != "client_credential" or query.get("appid") != self.app_id:
                return _error(40013)
            if query.get("secret") != self.secret:
                return _error(40125)
            self._issued += 1
            self._token = f"ACCESS_TOKEN_{self._issued}"
            return {"access_token": self._token, "expires_in": 7200}
        if self._token is None or query.get("access_token") != self._token:
            return _error(40001)
        if endpoint == "message/custom/send" and method == "POST":
            scripted = self.kf_script.pop(0) if self.kf_script else self.kf_errcode
            if scripted:
                return _error(scripted)
            return {"errcode": 0, "errmsg": "ok"}
        if endpoint == "message/template/send" and method == "POST":
            if self.template_errcode:
                return _error(self.template_errcode)
            self._next_msgid += 1
            return {"errcode": 0, "errmsg": "ok", "msgid": self._next_msgid}
        return {"errcode": 40066, "errmsg": "invalid url"}


def _error(code: int) -> dict[str, Any]:
    return {"errcode": code, "errmsg": ERRMSG.get(code, "error")}
