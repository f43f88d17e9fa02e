"""A fake Telegram Bot API on 127.0.0.1 that records every call, for offline tests.

python-telegram-bot talks to it exactly as to api.telegram.org (``base_url`` = ``fake.base_url``):
``POST /bot<token>/<method>`` with form-encoded parameters (JSON-encoded values for non-strings).
It answers like Telegram does for the methods Kesu uses, can be told to fail the next calls of a
method (429 with ``retry_after``, 400 "chat not found", 403 blocked, 5xx), and serves queued
updates to ``getUpdates`` for long-polling tests.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

BOT_USER = {"id": 123, "is_bot": True, "first_name": "Kesu", "username": "kesu_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}
# Values PTB sends as plain strings; everything else is JSON (numbers, booleans, objects).
_STRING_PARAMS = {"text", "caption", "callback_query_id", "url", "secret_token", "parse_mode"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the fake answered (e.g. the sent message with its message_id)

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str:
        return str(self.params.get("text", ""))

    @property
    def buttons(self) -> list[list[dict[str, Any]]]:
        """The inline keyboard's rows of {"text", "callback_data"}; [] without one."""
        markup = self.params.get("reply_markup") or {}
        rows: list[list[dict[str, Any]]] = markup.get("inline_keyboard", [])
        return rows

    @property
    def labels(self) -> list[str]:
        return [button["text"] for row in self.buttons for button in row]


@dataclass
class Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


class FakeBotAPI:
    def __init__(self, token: str = "123:abc") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.rejected: list[Call] = []  # calls answered with an injected failure
        self._failures: dict[str, deque[Failure]] = {}
        self._updates: deque[dict[str, Any]] = deque()
        self._lock = threading.Condition()
        self._message_id = 1000
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/bot"

    @contextmanager
    def running(self) -> Iterator[FakeBotAPI]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)

    # ------------------------------------------------------------------ test controls

    def fail(self, method: str, *, times: int = 1, status: int = 429, description: str | None = None,
             retry_after: int | None = None) -> None:
        """The next ``times`` calls of ``method`` fail the way Telegram would."""
        if status == 429:
            retry_after = 1 if retry_after is None else retry_after
            description = description or f"Too Many Requests: retry after {retry_after}"
        parameters = {"retry_after": retry_after} if retry_after is not None else None
        failure = Failure(status, description or "Bad Request", parameters)
        with self._lock:
            self._failures.setdefault(method, deque()).extend([failure] * times)

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for getUpdates (long polling)."""
        with self._lock:
            self._updates.append(update)
            self._lock.notify_all()

    def of(self, method: str, chat_id: Any = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (chat_id is None or c.chat_id == chat_id)]

    def wait_for(self, method: str, *, chat_id: Any = None, count: int = 1, timeout: float = 10.0,
                 where: Callable[[Call], bool] = lambda call: True) -> list[Call]:
        """Block until ``count`` matching calls arrived; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [c for c in self.calls
                         if c.method == method and (chat_id is None or c.chat_id == chat_id) and where(c)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(c.method, c.chat_id, c.text[:40]) for c in self.calls]
                    raise AssertionError(f"waited {timeout}s for {count}× {method} to {chat_id}; saw {seen}")
                self._lock.wait(remaining)

    def methods(self) -> list[str]:
        with self._lock:
            return [c.method for c in self.calls]

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        prefix = f"/bot{self.token}/"
        if not request.path.startswith(prefix):
            self._reply(request, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        method = request.path[len(prefix):]
        length = int(request.headers.get("Content-Length") or 0)
        params = _decode(request.rfile.read(length), request.headers.get("Content-Type", ""))
        call = Call(method, params)
        with self._lock:
            queue = self._failures.get(method)
            failure = queue.popleft() if queue else None
            if failure is not None:
                self.rejected.append(call)
            else:
                self.calls.append(call)
            self._lock.notify_all()
        if failure is not None:
            self._reply(request, failure.status, failure.body())
            return
        if method == "getUpdates":
            result: Any = self._get_updates(params)
        else:
            answer = getattr(self, f"_api_{method}", None)
            if answer is None:
                self._reply(request, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
                return
            result = answer(params)
        with self._lock:
            call.result = result
        self._reply(request, 200, {"ok": True, "result": result})

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a long poll cancelled at shutdown
            request.wfile.write(data)

    # ------------------------------------------------------------------ methods

    def _message(self, params: dict[str, Any], message_id: int | None = None) -> dict[str, Any]:
        chat_id = params["chat_id"]
        if message_id is None:
            with self._lock:
                self._message_id += 1
                message_id = self._message_id
        chat = ({"id": chat_id, "type": "private", "first_name": "顾客"} if int(chat_id) > 0
                else {"id": chat_id, "type": "supergroup", "title": "员工群"})
        message: dict[str, Any] = {"message_id": message_id, "date": int(time.time()), "chat": chat,
                                   "from": BOT_USER, "text": params.get("text", "")}
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        return message

    def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return BOT_USER

    def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message(params)

    def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message(params, int(params["message_id"]))

    def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message(params, int(params["message_id"]))

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        return True

    def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        return True

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 0.2)  # a short long poll
        with self._lock:
            while True:
                while self._updates and self._updates[0]["update_id"] < offset:
                    self._updates.popleft()  # confirmed by the offset
                if self._updates or time.monotonic() >= deadline:
                    return list(self._updates)
                self._lock.wait(max(deadline - time.monotonic(), 0))


def _decode(body: bytes, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        decoded: dict[str, Any] = json.loads(body)
        return decoded
    params: dict[str, Any] = {}
    for key, values in parse_qs(body.decode(), keep_blank_values=True).items():
        value = values[-1]
        if key in _STRING_PARAMS:
            params[key] = value
            continue
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params
