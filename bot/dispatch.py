"""Delivering the outbox: staff notifications and messages to customers.

Every message to push was written to the outbox in the same transaction as the change that
caused it, so nothing is lost and nothing goes out for a change that rolled back. The dispatcher
takes due items under a lease (several `kesu serve` processes never hold the same item at once),
hands each to its channel's sender, and records the outcome. Its state is visible in the outbox
table, `kesu outbox`, `kesu cases show` and /healthz.

One item's steps, each its own committed write::

    pending ─claim─▶ sending ─mark_attempting─▶ attempting ─platform call─▶ sent
                                                   │            ├─▶ pending    RetryLater (backoff) or Throttled
                                                   │            ├─▶ failed     Undeliverable, or MAX_ATTEMPTS used up
                                                   │            └─▶ uncertain  MaybeDelivered (customer messages)
                                                   └─ crash, lease lapses ─▶ uncertain (customer) / sent again (staff)

The window that matters lies between the platform accepting a message and the row saying so. A
process can die anywhere; the state a later dispatcher finds once the lease has lapsed says how
far the dead one got:

- "sending": claimed but never handed to the platform. It is sent; nothing can be duplicated.
- "attempting": handed to the platform, or about to be. It may or may not have arrived, and none
  of the platforms Kesu uses accepts an idempotency key that would let us ask. A customer message
  is NOT sent again: it becomes "uncertain", its case gets a ``delivery_uncertain`` event and its
  owner (or the mall's staff group) a message asking them to check with the customer. A message
  to staff is sent again.
- "sent", "failed", "uncertain": final.

The same rule covers a sender that cannot tell whether the platform took the message
(``MaybeDelivered``: no answer after the request went out, or a long message split into pieces
that broke off halfway), and a sender that raised something unforeseen.

The guarantee, per kind of message:

- To customers (every kind named ``customer_…``: ``customer_reply``, pushed answers to a turn;
  ``customer_update``, what staff actions tell the customer: claim, questions, progress, solutions,
  the resolution and its satisfaction follow-up): **at most once, and never silently dropped**.
  Each one ends sent, failed or uncertain, and for a case the latter two are on its timeline
  (``customer_unreachable``, ``delivery_uncertain``) and in front of staff. Exactly once is
  impossible without idempotency keys on the platform side; at most once plus a visible
  "uncertain" is the honest promise. A WeChat message that only got through as a template message
  (the 48-hour window had closed) is recorded as ``customer_reached`` and staff are told too.
- To staff (every other kind: ``staff_notification``, ``staff_update``, ``staff_delivery_report``,
  the deadline warnings and escalations): **at least once**. A duplicate in a staff chat costs a
  glance; a lost one can cost a case. A new kind of message to customers MUST be named
  ``customer_…``, or it is treated as a staff message and may be sent twice.

Fencing: a dispatcher that stalls past its lease (rather than dying) may wake up after another one
has claimed its item. Every step after the claim passes the claim's ``attempts`` back to the store
as a fencing token, so the stale dispatcher's steps change nothing, and ``mark_attempting``
returning False stops it before the platform call.

Attempts: every claim counts one (``Store.claim_due``); a transient failure (``RetryLater``) goes
back with backoff until MAX_ATTEMPTS claims have been made, then fails. A sender whose own
per-target rate limit is full raises ``Throttled`` instead of waiting, so other targets keep
flowing; the item is handed back untried (``Store.defer``) and that claim does not count.

Flow: ``Dispatcher.run`` is a pipeline, not a series of batches. It sends to at most MAX_IN_FLIGHT
targets at once and claims again as soon as one is done, so a slow send (a 10 s timeout) takes one
slot and every other chat keeps moving. Each target (channel and chat, group or robot) is a lane:
its items go one at a time, in the order they were queued; items claimed together for one target
wait in its lane without taking slots, and a claim leaves targets being sent to alone
(``Store.claim_due(busy=…)``). An item sent back to wait (``RetryLater``, ``Throttled``, a staff
message in doubt) holds its target: a later item to it that is claimed before the waiting one is
handed back untried, once, to the waiting one's due time, and claims go by due time and then id, so
it cannot overtake. Between claims the dispatcher sleeps until a ``wake()`` (a turn or a staff
action queued messages), a lane is done, the earliest item it sent back to wait is due, or
IDLE_POLL_SECONDS have passed (items another process deferred, leases of a dead one). The order is
kept per process: two ``kesu serve`` processes never take the same item, but each may take one for
the same chat, and a restarted process knows no waits.

Stopping (``Dispatcher.stop``, or ``run`` cancelled; ``kesu serve`` shutting down) claims nothing
more. Sends under way get STOP_GRACE_SECONDS to finish, and items not yet handed to the platform go
back untried, due at once, so the next process need not wait out their leases. A send still running
after that is cancelled and in doubt: a customer message becomes "uncertain", a staff message goes
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Protocol

from bot.notify import StaffNotifier, mask_mobiles
from bot.outbound import OutboundMessage
from bot.templating import Renderer
from storage.repository import CaseRecord, OutboxItem, Store, UnitOfWork

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_BACKOFF = timedelta(minutes=10)
IDLE_POLL_SECONDS = 5.0  # the longest sleep between claims: items only the database knows are due
MIN_DEFER_SECONDS = 0.1  # a throttled item is never due again at once (no claim-defer spinning)
MAX_IN_FLIGHT = 20  # targets sent to at once; more items claimed for one of them wait in its lane, slot-free
STOP_GRACE_SECONDS = 5.0  # on stop, how long sends under way may take before they are cancelled
# claim → attempting: no platform call of its own in between. An item queued behind earlier sends to its target
# waits under this lease; should they outlast it, another process may take the item (never send it twice).
CLAIM_LEASE = timedelta(seconds=60)
# attempting → outcome: covers the platform call, so it must outlast any sender (WeChat: 10 s per API call and
# piece; Telegram: its rate limiter's retries). A live dispatcher's slow send is never taken for a crash; the
# price is that a crashed send is looked at again only this long after it started.
ATTEMPT_LEASE = timedelta(minutes=5)

CUSTOMER_KIND_PREFIX = "customer_"
REPORT_KIND = "staff_delivery_report"
INTERRUPTED = "interrupted while being handed to the platform (the dispatcher stopped): it may or may not have arrived"
EXCERPT_CHARS = 60

Target = tuple[str, str]  # (channel, target): one chat, group or robot, whose messages go out one at a time


@dataclass(frozen=True)
class Wait:
    """A target's item went back to wait until ``until``: the target's later items go after it."""

    item: int
    until: datetime


def at_most_once(kind: str) -> bool:
    """Messages to customers (kinds named ``customer_…``) are never sent again when in doubt; staff messages are."""
    return kind.startswith(CUSTOMER_KIND_PREFIX)


class RetryLater(Exception):
    """The platform cannot take it now (429, network, 5xx); `after` seconds is its hint if any.

    Only for failures where the platform certainly did not take the message; otherwise ``MaybeDelivered``.
    """

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


class MaybeDelivered(Exception):
    """The platform may have taken (part of) the message, so sending it again could repeat it.

    A request that went out without an answer (read timeout, connection dropped), or a message in
    pieces that broke off after the first ones were delivered. Customer messages become "uncertain";
    staff messages are retried like ``RetryLater``.
    """


class Sender(Protocol):
    async def send(self, target: str, message: OutboundMessage) -> str | None:
        """Deliver; return the platform's message id if it has one."""


@dataclass(frozen=True)
class Outcome:
    """How an item ended: "sent" (with the platform's id), "failed" or "uncertain" (with the reason)."""

    state: str
    external_id: str | None = None
    error: str = ""


class DeliveryReports(Protocol):
    def __call__(self, uow: UnitOfWork, item: OutboxItem, outcome: Outcome, at: datetime) -> int:
        """Record what an outcome means beyond its row (case events, staff messages) in the transaction
        that records the outcome; return how many messages were queued."""


def backoff(attempts: int, hint: float | None) -> timedelta:
    """Exponential with jitter, or the platform's own retry_after when it gave one."""
    if hint is not None:
        return timedelta(seconds=hint)
    return min(timedelta(seconds=2 ** attempts + random.uniform(0, 1)), MAX_BACKOFF)


class Dispatcher:
    """Delivers the outbox: sends to at most ``max_in_flight`` targets at once, one item at a time each."""

    def __init__(self, store: Store, senders: dict[str, Sender],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 reports: DeliveryReports | None = None, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
        self.store = store
        self.senders = senders
        self.clock = clock
        self.reports = reports
        self.max_in_flight = max_in_flight
        self._wake = asyncio.Event()
        # Claimed and not finished, per target; the head is being delivered, the rest wait their turn.
        self._lanes: dict[Target, deque[OutboxItem]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._waits: dict[Target, Wait] = {}
        self._stopping = False

    def wake(self) -> None:
        """Called after a turn queued messages; safe from worker threads."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    _loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """No more claims, for good: ``run`` finishes or hands back what it holds, then returns (module docstring)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until ``stop()``, claiming whenever a slot frees up. Cancelling it also winds down."""
        self._loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                # Cleared before the claim, not after: a wake() while it runs must not be lost.
                self._wake.clear()
                try:
                    await self._fill()
                except Exception:  # the loop must survive a database hiccup; the items stay queued
                    log.exception("outbox claim failed")
                # Not wait_for: on 3.11 it swallows a cancel that comes as the event is set (a lane just ended).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._sleep_seconds()):
                        await self._wake.wait()
        finally:
            await self._wind_down()

    async def run_once(self) -> int:
        """Claim what is due into the free slots and deliver all of it; returns how many were taken.

        ``run`` without its waiting: for tests, benchmarks and draining by hand.
        """
        taken, lanes = await self._fill()
        await asyncio.gather(*lanes, return_exceptions=True)  # _lane_done logs what broke a lane
        return taken

    async def _fill(self) -> tuple[int, list[asyncio.Task[None]]]:
        """Claim until every slot sends or nothing more is due; returns the items taken and the lanes started.

        A slot is a target being sent to. The busy ones are left out of the claim, so each full
        claim starts at least one lane, and this ends after at most ``max_in_flight`` claims.
        """
        taken, started = 0, []
        while (free := self.max_in_flight - len(self._lanes)) > 0:
            items = await asyncio.to_thread(self.store.claim_due, now=self.clock(), limit=free, lease=CLAIM_LEASE,
                                            busy=list(self._lanes))
            taken += len(items)
            started += self._start(items)
            if len(items) < free:
                break
        return taken, started

    def _start(self, items: list[OutboxItem]) -> list[asyncio.Task[None]]:
        """Queue claimed items on their targets' lanes in the order they were queued; start the new lanes."""
        started: list[asyncio.Task[None]] = []
        for item in sorted(items, key=attrgetter("id")):
            target = (item.channel, item.target)
            if target not in self._lanes:
                self._lanes[target] = deque()
                started.append(asyncio.create_task(self._lane(target), name=f"outbox-lane-{item.id}"))
            self._lanes[target].append(item)
        for lane in started:
            self._lane_tasks.add(lane)
            lane.add_done_callback(self._lane_done)
        return started

    async def _lane(self, target: Target) -> None:
        """A target's items one after another: never two sends to one chat at once, nor out of order."""
        queue = self._lanes[target]
        try:
            while queue:
                try:
                    await self._deliver(queue[0])
                except Exception:  # recording a step failed: its lease lapses, it is looked at again
                    log.exception("outbox item %s: could not record the outcome", queue[0].id)
                queue.popleft()
        finally:
            del self._lanes[target]
            self._wake.set()  # a slot and a target are free

    def _lane_done(self, lane: asyncio.Task[None]) -> None:
        self._lane_tasks.discard(lane)
        if not lane.cancelled() and lane.exception() is not None:  # not an Exception: the process is going down
            log.error("%s stopped", lane.get_name(), exc_info=lane.exception())

    def _sleep_seconds(self) -> float:
        """Until the earliest item this dispatcher sent back to wait is due, at most IDLE_POLL_SECONDS."""
        now = self.clock()
        # A wait whose item never came back here (another process took it) is forgotten after a while.
        self._waits = {target: wait for target, wait in self._waits.items() if wait.until > now - ATTEMPT_LEASE}
        soonest = min((wait.until for wait in self._waits.values() if wait.until > now), default=None)
        if soonest is None:
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, (soonest - now).total_seconds())

    async def _wind_down(self) -> None:
        """What this dispatcher holds is finished, handed back or, after the grace, in doubt."""
        self._stopping = True  # (already, unless run() was cancelled) _hand_back_at now returns items untried
        if not self._lane_tasks:
            return
        _, late = await asyncio.wait(set(self._lane_tasks), timeout=STOP_GRACE_SECONDS)
        if not late:
            return
        queued = [item for queue in self._lanes.values() for item in list(queue)[1:]]
        for lane in late:  # their sends are cancelled and recorded as interrupted (_deliver)
            lane.cancel()
        await asyncio.wait(late)
        results = await asyncio.gather(*(self._hand_back(item, self.clock()) for item in queued),
                                       return_exceptions=True)
        for item, result in zip(queued, results, strict=True):
            if isinstance(result, BaseException):
                log.error("outbox item %s: could not hand it back; its lease will lapse", item.id, exc_info=result)

    def _hand_back_at(self, item: OutboxItem, now: datetime) -> datetime | None:
        """When to hand a claimed item back untried, or None to send it now.

        At once when stopping, for whichever dispatcher runs next. When an earlier item to its target
        went back to wait, at that item's due time: claims go by (due time, id), so this one then
        comes after it. Once it does and the waiting item has not come first, that item is no longer
        this dispatcher's to wait for (another process took it) and the wait is forgotten.
        """
        if self._stopping:
            return now
        target = (item.channel, item.target)
        wait = self._waits.get(target)
        if wait is None or item.id < wait.item:
            return None
        if item.id == wait.item or (item.next_attempt_at, item.id) > (wait.until, wait.item):
            del self._waits[target]
            return None
        return wait.until

    async def _hand_back(self, item: OutboxItem, due: datetime) -> None:
        """Pending again from ``due``, untried: the attempt its claim counted is given back."""
        await asyncio.to_thread(self.store.defer, item.id, attempt=item.attempts, next_attempt_at=due,
                                at=self.clock())

    async def _deliver(self, item: OutboxItem) -> None:
        interrupted = item.state == "attempting"  # its dispatcher stopped in the middle of the platform call
        if interrupted and at_most_once(item.kind):
            log.warning("outbox item %s (%s): its send was interrupted; not sending it again", item.id, item.kind)
            await self._finish(item, Outcome("uncertain", error=INTERRUPTED))
            return
        sender = self.senders.get(item.channel)
        if sender is None:
            await self._finish(item, Outcome("failed", error=f"no sender configured for channel {item.channel!r}"))
            return
        now = self.clock()
        back_at = self._hand_back_at(item, now)
        if back_at is not None:
            await self._hand_back(item, back_at)
            return
        if interrupted:
            log.warning("outbox item %s (%s): its send was interrupted; sending it again", item.id, item.kind)
        if not await asyncio.to_thread(self.store.mark_attempting, item.id, attempt=item.attempts,
                                       lease_until=now + ATTEMPT_LEASE, at=now):
            log.warning("outbox item %s: its lease lapsed and another dispatcher took it; not sending", item.id)
            return
        try:
            external_id = await sender.send(item.target, OutboundMessage.from_payload(item.payload))
        except asyncio.CancelledError:
            if self._stopping:  # the stop's grace ran out during the platform call
                await self._in_doubt(item, INTERRUPTED)
            raise
        except Throttled as problem:
            later = self.clock() + timedelta(seconds=max(problem.after, MIN_DEFER_SECONDS))
            self._waits[(item.channel, item.target)] = Wait(item.id, later)
            await self._hand_back(item, later)
        except RetryLater as problem:
            await self._retry_or_fail(item, str(problem), problem.after)
        except Undeliverable as problem:
            await self._finish(item, Outcome("failed", error=str(problem)))
        except MaybeDelivered as problem:
            await self._in_doubt(item, str(problem))
        except Exception as problem:  # a sender bug or an unforeseen error: what it did is unknown
            log.exception("sending outbox item %s on %s failed unexpectedly", item.id, item.channel)
            await self._in_doubt(item, f"{type(problem).__name__}: {problem}")
        else:
            await self._finish(item, Outcome("sent", external_id=external_id))

    async def _in_doubt(self, item: OutboxItem, error: str) -> None:
        """The platform may have the message: staff messages go again, customer messages never."""
        if at_most_once(item.kind):
            await self._finish(item, Outcome("uncertain", error=error))
        else:
            await self._retry_or_fail(item, error, None)

    async def _retry_or_fail(self, item: OutboxItem, error: str, hint: float | None) -> None:
        """Back to pending with backoff (its target waits too); failed for good once MAX_ATTEMPTS tries were made."""
        if item.attempts >= MAX_ATTEMPTS:
            await self._finish(item, Outcome("failed", error=f"gave up after {item.attempts} attempts: {error}"))
            return
        later = self.clock() + backoff(item.attempts, hint)
        self._waits[(item.channel, item.target)] = Wait(item.id, later)
        await asyncio.to_thread(self.store.mark_retry, item.id, attempt=item.attempts, error=error,
                                next_attempt_at=later, at=self.clock())

    async def _finish(self, item: OutboxItem, outcome: Outcome) -> None:
        await asyncio.to_thread(self._record, item, outcome, self.clock())

    def _record(self, item: OutboxItem, outcome: Outcome, at: datetime) -> None:
        """The final state and what it means for the case, in one transaction."""
        try:
            with self.store.unit_of_work() as uow:
                if self._mark(uow, item, outcome, at) and self.reports is not None:
                    self.reports(uow, item, outcome, at)
            return
        except Exception:
            if self.reports is None:
                raise
            log.exception("outbox item %s: reporting its outcome failed; recording the outcome alone", item.id)
        with self.store.unit_of_work() as uow:  # a broken report must not leave a sent item looking unsent
            self._mark(uow, item, outcome, at)

    @staticmethod
    def _mark(uow: UnitOfWork, item: OutboxItem, outcome: Outcome, at: datetime) -> bool:
        if outcome.state == "sent":
            return uow.mark_sent(item.id, external_id=outcome.external_id, at=at)
        if outcome.state == "failed":
            return uow.mark_failed(item.id, attempt=item.attempts, error=outcome.error, at=at)
        if outcome.state == "uncertain":
            return uow.mark_uncertain(item.id, attempt=item.attempts, error=outcome.error, at=at)
        raise ValueError(f"not a final outbox state: {outcome.state!r}")


# --------------------------------------------------------------------------- telling staff


class CaseDeliveryReports:
    """What became of a customer message about a case: on the case timeline and in front of staff.

    - delivered as a WeChat template message (external id ``tpl:…``: the 48-hour window had closed):
      event ``customer_reached`` {"path": "template"}. The customer got the short template form,
      without buttons.
    - failed for good: event ``customer_unreachable`` {"reason": …}; staff must reach the customer
      another way (the case has the phone number).
    - uncertain: event ``delivery_uncertain`` {"reason": …}; staff check with the customer, Kesu
      does not send it again.

    Each also queues a short ``staff_delivery_report`` message: privately to the case owner when
    they are on Telegram, else to the mall's staff groups (the deployment's fallback group for a
    mall without any). Messages to staff are never reported on, so reports cannot beget reports.
    """

    def __init__(self, renderer: Renderer, notifier: StaffNotifier) -> None:
        self.renderer = renderer
        self.notifier = notifier

    def __call__(self, uow: UnitOfWork, item: OutboxItem, outcome: Outcome, at: datetime) -> int:
        if not at_most_once(item.kind) or item.case_id is None:
            return 0
        event = case_event_for(outcome)
        if event is None:
            return 0
        case = uow.get_case_by_id(item.case_id)
        if case is None:
            return 0
        kind, data = event
        data = {"item": item.id, "message_kind": item.kind, "channel": item.channel, **data}
        uow.add_case_event(case_id=case.id, kind=kind, actor="kesu", data=data, at=at)
        text = mask_mobiles(self.renderer.render("staff/delivery_report", {
            "case": case, "event": kind, "message_kind": item.kind, "reason": outcome.error,
            "excerpt": excerpt(str(item.payload.get("text", "")))}))
        targets = self.staff_targets(case)
        if not targets:
            log.warning("case %s: %s, and no staff chat to tell", case.number, kind)
        for channel, target in targets:
            uow.enqueue(kind=REPORT_KIND, channel=channel, target=target, payload=OutboundMessage(text).as_payload(),
                        case_id=case.id, at=at)
        return len(targets)

    def staff_targets(self, case: CaseRecord) -> list[tuple[str, str]]:
        """(channel, target): the owner's private Telegram chat, else the mall's staff groups or the fallback."""
        channel, _, user = (case.owner or "").partition(":")
        if channel == "telegram" and user:
            return [("telegram", user)]
        mall = self.notifier.catalog.mall(case.fields.get("mall") or "")
        groups = mall.staff if mall and mall.staff else self.notifier.fallback
        return [("telegram", str(chat)) for chat in groups.telegram] + [("wecom", key) for key in groups.wecom]


def case_event_for(outcome: Outcome) -> tuple[str, dict[str, Any]] | None:
    """The case event an outcome of a customer message calls for; None for a plain delivery."""
    if outcome.state == "sent":
        if outcome.external_id and outcome.external_id.startswith("tpl:"):
            return "customer_reached", {"path": "template", "external_id": outcome.external_id}
        return None
    if outcome.state == "failed":
        return "customer_unreachable", {"reason": outcome.error}
    return "delivery_uncertain", {"reason": outcome.error}


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The message on one line, cut short: enough for staff to know which message it was (a first line
    alone is often a template's heading, "您的投诉 KS… 有新进展：", the same for every update)."""
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else f"{flat[:limit - 1]}…"
