"""`kesu serve`: one ASGI application for every channel.

Routes are contributed by channel adapters (handlers/): each adapter turns its platform's
payload into an `InboundMessage`, calls the shared `IntakeService` off the event loop (the
storage layer is synchronous), and answers in its platform's terms. The dispatcher that
delivers the outbox runs inside the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from bot.dispatch import Dispatcher, Sender
from bot.service import IntakeService

if TYPE_CHECKING:
    from bot.deadlines import DeadlineScanner

log = logging.getLogger(__name__)


@dataclass
class ChannelAdapter:
    """What one channel brings to the server: routes, a sender for the outbox, start/stop hooks."""

    name: str
    routes: Sequence[BaseRoute] = ()
    sender: Sender | None = None
    start: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None
    senders: dict[str, Sender] = field(default_factory=dict)  # extra channels it can send to (e.g. wecom)


def create_app(service: IntakeService, dispatcher: Dispatcher, adapters: Sequence[ChannelAdapter],
               scanner: DeadlineScanner | None = None) -> Starlette:
    async def health(_: Request) -> JSONResponse:
        counts = await asyncio.to_thread(service.store.outbox_counts)
        return JSONResponse({"ok": True, "channels": [a.name for a in adapters], "outbox": counts})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        for adapter in adapters:
            if adapter.start is not None:
                await adapter.start()
        dispatching = asyncio.create_task(dispatcher.run(), name="outbox-dispatcher")
        tasks = []
        if scanner is not None:  # deadlines: warnings and escalations (bot/deadlines.py)
            tasks.append(asyncio.create_task(scanner.run(), name="deadline-scanner"))
        try:
            yield {}
        finally:
            dispatcher.stop()  # it finishes or hands back the items it holds, then run() returns
            for task in tasks:
                task.cancel()
            for task in (dispatching, *tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for adapter in reversed(adapters):
                if adapter.stop is not None:
                    await adapter.stop()

    routes: list[BaseRoute] = [Route("/healthz", health)]
    for adapter in adapters:
        routes.extend(adapter.routes)
    return Starlette(routes=routes, lifespan=lifespan)
