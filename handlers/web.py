"""The web chat: a page at / where anyone can try the full intake in a browser.

The browser keeps a random session id in a cookie; each message is a POST to /api/chat and
the answer carries the replies with their buttons. The page's words come from templates like
everything else a customer reads.
"""

from __future__ import annotations

import asyncio
import re
import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from bot.server import ChannelAdapter
from bot.service import InboundMessage, IntakeService
from bot.templating import Renderer

CHANNEL = "web"
COOKIE = "kesu_session"
MAX_MESSAGE_CHARS = 20_000
_SESSION = re.compile(r"[A-Za-z0-9_-]{16,64}")


def web_adapter(service: IntakeService, renderer: Renderer) -> ChannelAdapter:
    async def page(request: Request) -> Response:
        response = HTMLResponse(renderer.render("web/chat.html", {}))
        if not _SESSION.fullmatch(request.cookies.get(COOKIE, "")):
            response.set_cookie(COOKIE, secrets.token_urlsafe(18), httponly=True, samesite="strict",
                                max_age=60 * 60 * 24 * 90)
        return response

    async def chat(request: Request) -> Response:
        session = request.cookies.get(COOKIE, "")
        if not _SESSION.fullmatch(session):
            return JSONResponse({"error": "no session"}, status_code=400)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "expected JSON"}, status_code=400)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return JSONResponse({"error": "expected {\"text\": \"...\"}"}, status_code=400)
        message_id = body.get("id") if isinstance(body.get("id"), str) else None
        inbound = InboundMessage(CHANNEL, session, text[:MAX_MESSAGE_CHARS], message_id=message_id)
        outcome = await asyncio.to_thread(service.handle, inbound)
        return JSONResponse({
            "replies": [{"text": m.text, "buttons": [[{"label": b.label, "payload": b.payload} for b in row]
                                                      for row in m.buttons]} for m in outcome.messages],
            "state": "opened" if outcome.case else outcome.state.phase,
            "case": outcome.case.number if outcome.case else None,
        })

    return ChannelAdapter("web", routes=[Route("/", page), Route("/api/chat", chat, methods=["POST"])])
