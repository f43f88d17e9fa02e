"""Delivering the outbox: staff notifications and pushed customer replies.

Every message to push was written to the outbox in the same transaction as the change that
caused it. The dispatcher takes due items (a lease, so several `kesu serve` processes never
send the same item at once), hands each to its channel's sender, and records the outcome:
sent, retry later with backoff, or failed for good. Its state is visible in the outbox table
and on /healthz.

Attempts: every claim counts one (``Store.claim_due``); a transient failure (``RetryLater``)
goes back with backoff until MAX_ATTEMPTS claims have been made, then fails. A sender whose own
per-target rate limit is full raises ``Throttled`` instead of waiting, so other targets keep
flowing; the item is handed back untried (``Store.defer``) and that claim does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from bot.outbound import OutboundMessage
from storage.repository import OutboxItem, Store

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_BACKOFF = timedelta(minutes=10)
IDLE_POLL_SECONDS = 5.0
MIN_DEFER_SECONDS = 0.1  # a throttled item is never due again at once (no claim-defer spinning)


class RetryLater(Exception):
    """The platform cannot take it now (429, network, 5xx); `after` seconds is its hint if any."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


class Throttled(RetryLater):
    """The sender's own rate limiter is full for this target: the item was not tried at all.

    The dispatcher hands the item back with ``Store.defer``: pending again after ``after`` seconds,
    without counting the attempt its claim took, so waiting for a slot never fails an item.
    """

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason, after)
        self.after: float = after


class Undeliverable(Exception):
    """The platform refused for good (blocked bot, unknown chat): retrying will not help."""


class Sender(Protocol):
    async def send(self, target: str, message: OutboundMessage) -> str | None:
        """Deliver; return the platform's message id if it has one."""


def backoff(attempts: int, hint: float | None) -> timedelta:
    """Exponential with jitter, or the platform's own retry_after when it gave one."""
    if hint is not None:
        return timedelta(seconds=hint)
    return min(timedelta(seconds=2 ** attempts + random.uniform(0, 1)), MAX_BACKOFF)


class Dispatcher:
    def __init__(self, store: Store, senders: dict[str, Sender],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.senders = senders
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a turn queued messages; safe from worker threads."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    _loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # Cleared before the pass, not after: a wake() while the pass runs must not be lost.
            self._wake.clear()
            try:
                delivered = await self.run_once()
            except Exception:  # the loop must survive a database hiccup; the items stay queued
                log.exception("outbox pass failed")
                delivered = 0
            if delivered == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)

    async def run_once(self) -> int:
        """One pass over due items; returns how many were taken."""
        items = await asyncio.to_thread(self.store.claim_due, now=self.clock())
        outcomes = await asyncio.gather(*(self._deliver(item) for item in items), return_exceptions=True)
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BaseException):  # recording the outcome failed: its lease lapses, it goes again
                log.error("outbox item %s: could not record the outcome", item.id, exc_info=outcome)
        return len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        sender = self.senders.get(item.channel)
        now = self.clock()
        if sender is None:
            await asyncio.to_thread(self.store.mark_failed, item.id,
                                    error=f"no sender configured for channel {item.channel!r}", at=now)
            return
        try:
            external_id = await sender.send(item.target, OutboundMessage.from_payload(item.payload))
        except Throttled as problem:
            later = self.clock() + timedelta(seconds=max(problem.after, MIN_DEFER_SECONDS))
            await asyncio.to_thread(self.store.defer, item.id, next_attempt_at=later, at=self.clock())
        except RetryLater as problem:
            await self._retry_or_fail(item, str(problem), problem.after)
        except Undeliverable as problem:
            await asyncio.to_thread(self.store.mark_failed, item.id, error=str(problem), at=self.clock())
        except Exception as problem:  # a sender bug or an unforeseen error: retried like a transient one
            log.exception("sending outbox item %s on %s failed unexpectedly", item.id, item.channel)
            await self._retry_or_fail(item, f"{type(problem).__name__}: {problem}", None)
        else:
            await asyncio.to_thread(self.store.mark_sent, item.id, external_id=external_id, at=self.clock())

    async def _retry_or_fail(self, item: OutboxItem, error: str, hint: float | None) -> None:
        """Back to pending with backoff; failed for good once MAX_ATTEMPTS tries have been made."""
        if item.attempts >= MAX_ATTEMPTS:
            await asyncio.to_thread(self.store.mark_failed, item.id,
                                    error=f"gave up after {item.attempts} attempts: {error}", at=self.clock())
            return
        later = self.clock() + backoff(item.attempts, hint)
        await asyncio.to_thread(self.store.mark_retry, item.id, error=error, next_attempt_at=later, at=self.clock())
