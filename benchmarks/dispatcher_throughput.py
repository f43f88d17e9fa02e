"""Outbox dispatcher throughput when the platform answers at once, slowly, with 429s, or targets are throttled.

What it measures
    For each backend (a SQLite file in a temp dir; a fresh ``kesu_bench_<random>`` PostgreSQL
    database, dropped afterwards) and each mode, a fresh database gets ``--items`` outbox items
    (default 2 000) spread round-robin over ``--targets`` targets (default 200) on three channels,
    as intake and case work queue them: customer updates to Telegram chats, customer replies to
    WeChat openids and staff notifications to WeCom robots, a unique text each, enqueued 100 per
    transaction (``UnitOfWork.enqueue``). Then ``Dispatcher.run``, as in ``kesu serve``, runs until
    every item is final: it sends to up to MAX_IN_FLIGHT (20) targets at once, one item at a time
    per target, and claims again whenever a target is done. Every step of an item (its share of a
    claim, ``mark_attempting``, the outcome) is its own transaction in a worker thread.

    The sender is a fake platform in this process, behind the dispatcher's ``Sender`` protocol (no
    network), registered for all three channels; it counts the successful sends of every text:
      fast       answers at once;
      slow       ``asyncio.sleep(--slow-ms)`` (default 50 ms) per send, like a platform far away;
      429        every 3rd call raises ``RetryLater(after=--retry-after)`` (default 0.01 s), at most
                 once per item (a platform's 429 with its retry_after): the item goes back to
                 pending with that backoff and is sent on a later claim;
      throttled  the sender's own limiter (``handlers.wecom.RobotRateLimiter``, the one
                 WeComRobotSender uses, with a 1 s window) allows ``--per-target`` sends (default 3)
                 per target per second; a full window raises ``Throttled``, so the dispatcher hands
                 the item back untried (``Store.defer``, at least 0.1 s later, the claim not counted);
      stragglers (not run by default) every 50th call takes ``--straggler-ms`` (default 500 ms), the
                 rest answer at once.

    Time is injected: the dispatcher and the limiter read a manual clock. When a claim finds
    nothing and no item is held (nothing sending or attempting), the clock jumps to the earliest
    moment a pending item is due and the dispatcher is woken. No waiting is slept through, so the
    wall time is the dispatcher's own work plus the real sleeps of the slow and stragglers modes.

    Per run: items/s (items / wall time), claims (``claim_due`` calls, of which empty), the clock
    time the jumps covered, the longest stall (wall time without a single delivery), the most
    sends in flight at once, and per item: claims that took it, sender calls, the ``attempts``
    column it ended with (claims, minus the ones handed back untried), then 429s and throttles
    raised. Check: every item is "sent" in the outbox, the fake received each text exactly once,
    no target was sent two messages at once and each target got its messages in the order they
    were queued (OK / MISMATCH with what differs).

How to read it
    One process, loopback only. Storage is the limit in fast mode (about three short write
    transactions per item: its share of a claim, ``mark_attempting`` and ``mark_sent``). Slow mode
    is capped by the sends in flight: about MAX_IN_FLIGHT / (--slow-ms) items/s at best, whatever
    the backend. In stragglers mode a slow answer holds one slot while the others keep going: the
    wall time is about the fast mode's plus a straggler or two at the end, where its target's last
    items wait for it (a dispatcher that claims in batches and waits for each batch stalls for every
    straggler: 2 000 / 50 x 500 ms = 20 s). A claim is a short write transaction that reads the due
    rows, and the pipeline claims whenever a target is done, so fast mode makes more, smaller
    claims than batches of 20 would. The 429 and throttled modes show what retries and hand-backs
    cost in extra claims and transactions; an item sent back to wait holds its target, so later
    items to it that are claimed meanwhile are handed back untried too. The clock
    jumps stand for the sleeps of a live dispatcher: it sleeps until the earliest item it sent
    back to wait is due (at most IDLE_POLL_SECONDS, 5 s), so a live run of the 429 and throttled
    modes takes their clock time longer. Each database starts empty with a cold connection pool.
    Figures are printed, never asserted.

    .venv/bin/python benchmarks/dispatcher_throughput.py [--items 2000] [--targets 200]
        [--modes fast,slow,429,throttled[,stragglers]] [--slow-ms 50] [--per-target 3] [--straggler-ms 500]
        [--backends sqlite,postgres] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import machine_line, unless_postgres_unreachable
from sqlalchemy import func, make_url, select
from turn_throughput import DEFAULT_PG_URL, check_loopback, fresh_database

from bot.dispatch import CLAIM_LEASE, IDLE_POLL_SECONDS, MAX_IN_FLIGHT, Dispatcher, RetryLater, Throttled
from bot.outbound import Button, OutboundMessage
from handlers.wecom import RobotRateLimiter
from storage.models import OUTBOX_ACTIVE_STATES, outbox
from storage.repository import OutboxItem, Store

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
MODES = ("fast", "slow", "429", "throttled", "stragglers")
DEFAULT_MODES = ("fast", "slow", "429", "throttled")
STRAGGLER_EVERY = 50
CHANNELS = (  # (channel, kind, target prefix): round-robin over the targets
    ("telegram", "customer_update", "71000"),
    ("wechat", "customer_reply", "oBench"),
    ("wecom", "staff_notification", "bench-robot-"),
)
ENQUEUE_BATCH = 100
DRAIN_TIMEOUT_SECONDS = 600.0


class ManualClock:
    """The dispatcher's and the limiter's clock: moves only when the drain moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakePlatform:
    """A ``Sender`` for every channel; counts each text it accepted, when, and what was in flight."""

    def __init__(self, mode: str, clock: ManualClock, *, slow_s: float, straggler_s: float, retry_after: float,
                 per_target: int) -> None:
        self.mode = mode
        self.slow_s = slow_s
        self.straggler_s = straggler_s
        self.retry_after = retry_after
        self.limiter = RobotRateLimiter(per_target, clock, window=timedelta(seconds=1))
        self.calls = 0
        self.delivered: Counter[str] = Counter()
        self.deliveries: list[tuple[float, str, str]] = []  # (perf_counter, target, text) of each accepted send
        self.refused: set[str] = set()  # texts that got their one 429
        self.too_many = 0
        self.throttled = 0
        self.sending: Counter[str] = Counter()  # sends in flight per target
        self.most_in_flight = 0
        self.at_once = 0  # sends that started while another to the same target was in flight

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        self.calls += 1
        if self.sending[target]:
            self.at_once += 1
        self.sending[target] += 1
        self.most_in_flight = max(self.most_in_flight, sum(self.sending.values()))
        try:
            return await self._answer(target, message)
        finally:
            self.sending[target] -= 1

    async def _answer(self, target: str, message: OutboundMessage) -> str:
        if self.mode == "slow":
            await asyncio.sleep(self.slow_s)
        elif self.mode == "stragglers" and self.calls % STRAGGLER_EVERY == 0:
            await asyncio.sleep(self.straggler_s)
        elif self.mode == "429" and self.calls % 3 == 0 and message.text not in self.refused:
            self.refused.add(message.text)
            self.too_many += 1
            raise RetryLater(f"429 Too Many Requests (retry after {self.retry_after} s)", after=self.retry_after)
        elif self.mode == "throttled":
            wait = self.limiter.acquire(target)
            if wait is not None:
                self.throttled += 1
                raise Throttled(f"{target}: {self.limiter.per_minute} per second window full", wait)
        self.delivered[message.text] += 1
        self.deliveries.append((time.perf_counter(), target, message.text))
        return f"ext-{self.calls}"


def enqueue(store: Store, items: int, targets: int) -> dict[str, int]:
    """Queue the items; returns text → item id."""
    ids: dict[str, int] = {}
    for start in range(0, items, ENQUEUE_BATCH):
        with store.unit_of_work() as uow:
            for n in range(start, min(start + ENQUEUE_BATCH, items)):
                target = n % targets
                channel, kind, prefix = CHANNELS[target % len(CHANNELS)]
                case_number = f"KS261122{n:04d}"
                if kind == "staff_notification":
                    text = (f"### 新投诉 {case_number}\n> 商场：红星美凯龙上海真北商场\n> 顾客：王丽 138****5678\n"
                            f"> 沙发扶手开裂了，要求换货（第 {n} 条）")
                    message = OutboundMessage(text, markdown=True)
                else:
                    text = (f"您的投诉 {case_number} 有新进展：厂家师傅已确认质量问题，将于周六上午上门更换。"
                            f"如有疑问请直接回复本消息。（第 {n} 条）")
                    buttons = ((Button("满意", f"ok:{case_number}"), Button("有疑问", f"ask:{case_number}")),)
                    message = OutboundMessage(text, buttons if channel == "telegram" else ())
                ids[text] = uow.enqueue(kind=kind, channel=channel, target=f"{prefix}{target:05d}",
                                        payload=message.as_payload(), case_id=None, at=T0)
    return ids


def outbox_now(store: Store) -> tuple[int, datetime | None]:
    """(items held under a lease, when the earliest pending item is due), in one snapshot."""
    o = outbox.c
    with store.engine.connect() as conn:
        held, due = conn.execute(select(func.count().filter(o.state.in_(OUTBOX_ACTIVE_STATES)),
                                        func.min(o.next_attempt_at).filter(o.state == "pending"))).one()
    return int(held), due


@dataclass
class Drained:
    claims: int = 0
    empty: int = 0
    taken: int = 0


async def drain(dispatcher: Dispatcher, store: Store, clock: ManualClock) -> Drained:
    """``Dispatcher.run`` until every item is final, the clock jumping over the waits (see the docstring)."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    counted = Drained()
    claim_due = store.claim_due

    def claim_and_count(**kwargs: Any) -> list[OutboxItem]:  # in the dispatcher's worker thread
        taken = claim_due(**kwargs)
        counted.claims += 1
        counted.taken += len(taken)
        if taken:
            return taken
        counted.empty += 1
        held, due = outbox_now(store)
        if held:  # sends under way: the claim when they are done comes back here
            return taken
        if due is None:
            loop.call_soon_threadsafe(finished.set)
            return taken
        clock.now = max(clock.now, due)
        dispatcher.wake()
        return taken

    store.claim_due = claim_and_count  # type: ignore[method-assign]
    running = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(finished.wait(), DRAIN_TIMEOUT_SECONDS)
    finally:
        dispatcher.stop()
        await running
    return counted


def longest_stall_ms(started: float, platform: FakePlatform) -> float:
    """The longest wall time without a delivery, from the start to the last one."""
    moments = [started, *(at for at, _, _ in platform.deliveries)]
    return max((later - earlier for earlier, later in itertools.pairwise(moments)), default=0.0) * 1000


def check(store: Store, ids: dict[str, int], platform: FakePlatform) -> str:
    counts = store.outbox_counts()
    not_sent = len(ids) - counts["sent"]
    twice = sum(1 for text in ids if platform.delivered[text] > 1)
    never = sum(1 for text in ids if platform.delivered[text] == 0)
    foreign = sum(1 for text in platform.delivered if text not in ids)
    last: dict[str, int] = {}
    overtaken = 0  # deliveries of an item queued before one its target already got
    for _, target, text in platform.deliveries:
        queued = ids.get(text, 0)
        overtaken += int(queued < last.get(target, 0))
        last[target] = max(last.get(target, 0), queued)
    if not (not_sent or twice or never or foreign or overtaken or platform.at_once) and counts["sent"] == len(ids):
        return "OK"
    states = ", ".join(f"{state} {count}" for state, count in counts.items() if count and state != "sent")
    return (f"MISMATCH: {counts['sent']}/{len(ids)} sent ({states or '-'}), {twice} delivered twice or more, "
            f"{never} never delivered, {foreign} unknown, {overtaken} out of order, "
            f"{platform.at_once} sent while their target had another in flight")


@dataclass
class Run:
    mode: str
    items: int
    wall_s: float
    drained: Drained
    clock_s: float
    stall_ms: float
    most_in_flight: int
    calls: int
    too_many: int
    throttled: int
    attempts: int
    check: str

    def row(self) -> str:
        n = self.items
        return (f"  {self.mode:<10}{n:>6} {self.wall_s:>7.2f} {n / self.wall_s:>8.0f} {self.drained.claims:>6} "
                f"{self.drained.empty:>6} {self.clock_s:>7.2f} {self.stall_ms:>8.1f} {self.most_in_flight:>6} "
                f"{self.drained.taken / n:>6.2f} {self.calls / n:>6.2f} {self.attempts / n:>6.2f} "
                f"{self.too_many:>5} {self.throttled:>6}  {self.check}")


HEADER = (f"  {'mode':<10}{'items':>6} {'wall s':>7} {'items/s':>8} {'claims':>6} {'empty':>6} {'clock s':>7} "
          f"{'stall ms':>8} {'flight':>6} {'claims':>6} {'calls':>6} {'attmpt':>6} {'429s':>5} {'thrott':>6}  check")


def run_mode(url: str, mode: str, args: argparse.Namespace) -> Run:
    store = Store.from_url(url, migrate=True)
    try:
        ids = enqueue(store, args.items, args.targets)
        clock = ManualClock(T0)
        platform = FakePlatform(mode, clock, slow_s=args.slow_ms / 1000, straggler_s=args.straggler_ms / 1000,
                                retry_after=args.retry_after, per_target=args.per_target)
        dispatcher = Dispatcher(store, {channel: platform for channel, _, _ in CHANNELS}, clock=clock)
        started = time.perf_counter()
        drained = asyncio.run(drain(dispatcher, store, clock))
        wall = time.perf_counter() - started
        with store.engine.connect() as conn:
            attempts = int(conn.execute(select(func.coalesce(func.sum(outbox.c.attempts), 0))).scalar_one())
        return Run(mode, args.items, wall, drained, (clock.now - T0).total_seconds(),
                   longest_stall_ms(started, platform), platform.most_in_flight, platform.calls, platform.too_many,
                   platform.throttled, attempts, check(store, ids, platform))
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--items", type=int, default=2000, help="outbox items per run (default 2000)")
    parser.add_argument("--targets", type=int, default=200, help="distinct targets, round-robin (default 200)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated: {', '.join(MODES)} (default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--slow-ms", type=float, default=50, help="slow mode: milliseconds per send (default 50)")
    parser.add_argument("--straggler-ms", type=float, default=500,
                        help=f"stragglers mode: milliseconds of every {STRAGGLER_EVERY}th send (default 500)")
    parser.add_argument("--retry-after", type=float, default=0.01,
                        help="429 mode: the platform's retry_after in seconds (default 0.01)")
    parser.add_argument("--per-target", type=int, default=3,
                        help="throttled mode: sends per target per second (default 3)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (loopback only); a fresh "
                        "database is created on it per run and dropped afterwards")
    args = parser.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if "postgres" in backends:
        check_loopback(args.pg_url)

    print("Kesu dispatcher throughput: Dispatcher.run until the outbox is empty, fake platform in-process")
    print(machine_line())
    print(f"python {sys.version.split()[0]}, {args.items} items over {args.targets} targets "
          f"({', '.join(channel for channel, _, _ in CHANNELS)}), up to {MAX_IN_FLIGHT} targets sent to at once; "
          f"slow {args.slow_ms:g} ms/send, 429 retry_after {args.retry_after:g} s, throttled {args.per_target}/s "
          f"per target; claim lease {CLAIM_LEASE.total_seconds():g} s")
    print("columns: claims = claim_due calls (empty = took nothing; when nothing is held either, the clock jumps to "
          f"the next due item, where a live Dispatcher.run sleeps until then, at most {IDLE_POLL_SECONDS:g} s), "
          "clock s = injected time elapsed, stall ms = longest wall time without a delivery, flight = most sends "
          "at once; per item: claims, sender calls, attempts column at the end; 429s and throttles raised by "
          "the fake")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kesu-bench-") as tmp:
        for backend in backends:
            print()
            where = "file in a temp dir" if backend == "sqlite" else f"fresh database on {make_url(args.pg_url).host}"
            print(f"{backend} ({where}, a fresh one per mode)")
            print(HEADER)
            with unless_postgres_unreachable(backend, args.pg_url):
                for mode in modes:
                    with fresh_database(backend, args.pg_url, Path(tmp)) as url:
                        print(run_mode(url, mode, args).row(), flush=True)
    print()
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
