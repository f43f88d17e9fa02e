"""The outbox dispatcher, on SQLite and PostgreSQL: WeCom robot notifications (retries, rate limits,
leases), then crash safety: a dispatcher killed between its steps, and restarted, sends nothing twice
to a customer and loses nothing (what may have arrived is "uncertain", on the case and told to staff),
while staff messages arrive at least once; and the pipeline: a slow chat holds up no other, one
chat's messages never overtake each other, a deferred item wakes the dispatcher, a stop is graceful.

Nothing sleeps: the dispatcher and the senders share an injected clock that the tests move, and
each ``run_once`` is one pass. The robot is ``FakeRobot`` behind httpx's ASGI transport; the crash
tests use ``FakePlatform``, a sender for every channel that records what it accepted. The pipeline
tests run ``Dispatcher.run`` against ``Chats`` and wait on what it received (one waits out a real
50 ms retry, on the real clock).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from fake_wechat import FakeWeChatAPI
from fake_wecom import FakeRobot, ManualClock
from telegram.error import BadRequest, NetworkError, TelegramError, TimedOut

import bot.dispatch
from bot.config import Settings
from bot.dispatch import (
    ATTEMPT_LEASE,
    EXCERPT_CHARS,
    INTERRUPTED,
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    CaseDeliveryReports,
    Dispatcher,
    MaybeDelivered,
    RetryLater,
    Sender,
    Throttled,
    Undeliverable,
    excerpt,
)
from bot.lifecycle import Action
from bot.notify import StaffNotifier
from bot.outbound import OutboundMessage
from bot.staff import StaffMember, StaffService
from bot.templating import Renderer
from dialogs.catalog import Catalog, StaffGroups, load_catalog
from dialogs.fields import FIELD_KEYS
from handlers.telegram import TelegramSender
from handlers.wechat import OfficialAccountClient, WeChatSender
from handlers.wechat import split_text as wechat_split
from handlers.wecom import RATE_LIMITED_PAUSE, WeComRobotSender
from storage.repository import CaseDraft, CaseEventRecord, CaseRecord, OutboxItem, Store

T = TypeVar("T")
T0 = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
API = "https://qyapi.example/cgi-bin/webhook/send"  # only reached through the ASGI transport
KEY = "robot-key-zhenbei-0001"
OTHER_KEY = "robot-key-wuzhonglu-0002"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def robot() -> FakeRobot:
    return FakeRobot()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def sender_for(robot: FakeRobot, clock: ManualClock, per_minute: int = 20) -> WeComRobotSender:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=robot))
    return WeComRobotSender(API, per_minute=per_minute, clock=clock, client=client)


@pytest.fixture
def dispatcher(store: Store, robot: FakeRobot, clock: ManualClock) -> Iterator[Dispatcher]:
    yield Dispatcher(store, {"wecom": sender_for(robot, clock)}, clock=clock)


def enqueue(store: Store, n: int = 1, *, key: str | Iterator[str] = KEY, at: datetime = T0,
            channel: str = "wecom") -> list[int]:
    keys = iter(key) if not isinstance(key, str) else None
    with store.unit_of_work() as uow:
        return [uow.enqueue(kind="staff_notification", channel=channel,
                            target=next(keys) if keys is not None else str(key),
                            payload=OutboundMessage(f"### 新投诉 KS26112200{i:02d}\n> 顾客：王丽 138****5678",
                                                    markdown=True).as_payload(),
                            case_id=None, at=at)
                for i in range(n)]


def item(store: Store, item_id: int) -> OutboxItem:
    (found,) = [i for i in store.outbox_items(limit=10_000) if i.id == item_id]
    return found


def counts(store: Store) -> dict[str, int]:
    return {state: n for state, n in store.outbox_counts().items() if n}


async def drain(dispatcher: Dispatcher, clock: ManualClock, *, step: float, until: datetime) -> None:
    """One pass per ``step`` seconds of the injected clock, up to ``until`` (or until nothing is left)."""
    while clock.now <= until:
        while await dispatcher.run_once():
            pass
        if not (counts(dispatcher.store).keys() & {"pending", "sending"}):
            return
        clock.advance(step)


# --------------------------------------------------------------------------- delivered


def test_a_due_notification_is_posted_once_and_marked_sent(store: Store, robot: FakeRobot,
                                                            dispatcher: Dispatcher, clock: ManualClock) -> None:
    (item_id,) = enqueue(store)
    assert run(dispatcher.run_once()) == 1
    (post,) = robot.posts
    assert (post.key, post.msgtype) == (KEY, "markdown")
    assert post.content.startswith("### 新投诉 KS2611220000")
    sent = item(store, item_id)
    assert (sent.state, sent.attempts, sent.sent_at, sent.last_error) == ("sent", 1, T0, None)
    assert run(dispatcher.run_once()) == 0
    assert len(robot.posts) == 1


def test_an_item_for_a_channel_without_a_sender_fails_visibly(store: Store, dispatcher: Dispatcher) -> None:
    (item_id,) = enqueue(store, channel="line")
    run(dispatcher.run_once())
    failed = item(store, item_id)
    assert failed.state == "failed" and "no sender configured for channel 'line'" in (failed.last_error or "")


# --------------------------------------------------------------------------- the robot's rate limit


def test_25_notifications_to_one_robot_within_a_minute_go_out_20_per_minute(
        store: Store, robot: FakeRobot, dispatcher: Dispatcher, clock: ManualClock) -> None:
    ids = enqueue(store, 25)
    run(dispatcher.run_once())  # claims 20 (the batch size): all posted
    run(dispatcher.run_once())  # claims the other 5: the window is full, handed back untried
    assert len(robot.posts) == 20
    assert counts(store) == {"sent": 20, "pending": 5}
    waiting = [i for i in store.outbox_items(state="pending")]
    for held in waiting:
        assert held.attempts == 0  # waiting for a slot is not a failed attempt
        assert held.next_attempt_at == T0 + timedelta(seconds=60)  # when the first slot frees
        assert held.last_error is None

    clock.advance(30)
    assert run(dispatcher.run_once()) == 0  # not due yet: nothing claimed, nothing posted
    assert len(robot.posts) == 20

    clock.advance(30)
    run(dispatcher.run_once())
    assert len(robot.posts) == 25 and all(p.accepted for p in robot.posts)
    assert counts(store) == {"sent": 25}
    assert {item(store, i).attempts for i in ids} == {1}


def test_the_window_slides_and_never_holds_more_than_20(store: Store, robot: FakeRobot, dispatcher: Dispatcher,
                                                        clock: ManualClock) -> None:
    # Notifications trickle in over two minutes, faster than the robot may take them.
    for _ in range(0, 120, 3):
        enqueue(store, 2, at=clock.now)
        run(dispatcher.run_once())
        clock.advance(3)
    run(drain(dispatcher, clock, step=1, until=T0 + timedelta(minutes=10)))
    sent = sorted(i.sent_at for i in store.outbox_items(limit=1000) if i.sent_at is not None)
    assert len(sent) == 80 == len(robot.posts)
    for moment in sent:
        assert sum(1 for other in sent if moment - timedelta(seconds=60) < other <= moment) <= 20
    assert {i.attempts for i in store.outbox_items(limit=1000)} == {1}


def test_a_full_robot_does_not_hold_up_other_robots(store: Store, robot: FakeRobot, dispatcher: Dispatcher) -> None:
    enqueue(store, 25, key=KEY)
    enqueue(store, 3, key=OTHER_KEY)
    while run(dispatcher.run_once()):
        pass
    assert len(robot.accepted(KEY)) == 20
    assert len(robot.accepted(OTHER_KEY)) == 3


def test_a_throttled_item_never_fails_however_long_it_waits(store: Store, robot: FakeRobot, clock: ManualClock) -> None:
    dispatcher = Dispatcher(store, {"wecom": sender_for(robot, clock, per_minute=1)}, clock=clock)
    ids = enqueue(store, MAX_ATTEMPTS + 4)
    run(drain(dispatcher, clock, step=5, until=T0 + timedelta(hours=1)))
    assert counts(store) == {"sent": MAX_ATTEMPTS + 4}
    assert len(robot.posts) == MAX_ATTEMPTS + 4
    assert {item(store, i).attempts for i in ids} == {1}
    sent = sorted(item(store, i).sent_at or T0 for i in ids)
    assert all(later - earlier >= timedelta(seconds=60) for earlier, later in itertools.pairwise(sent))


# --------------------------------------------------------------------------- transient failures


def test_errcode_45009_is_retried_after_a_minute_then_delivered(store: Store, robot: FakeRobot,
                                                                dispatcher: Dispatcher, clock: ManualClock) -> None:
    (item_id,) = enqueue(store)
    robot.fail_next(errcode=45009)
    run(dispatcher.run_once())
    waiting = item(store, item_id)
    assert waiting.state == "pending" and waiting.attempts == 1
    assert waiting.next_attempt_at == T0 + timedelta(seconds=RATE_LIMITED_PAUSE)
    assert "45009" in (waiting.last_error or "")
    assert KEY not in (waiting.last_error or "")  # the key is the robot's password: never in full

    clock.advance(RATE_LIMITED_PAUSE - 1)
    assert run(dispatcher.run_once()) == 0
    clock.advance(1)
    run(dispatcher.run_once())
    done = item(store, item_id)
    assert (done.state, done.attempts, done.sent_at) == ("sent", 2, clock.now)
    assert [p.accepted for p in robot.posts] == [False, True]


def test_45009_pauses_the_robot_for_the_items_queued_behind(store: Store, robot: FakeRobot,
                                                            dispatcher: Dispatcher, clock: ManualClock) -> None:
    first, second = enqueue(store, 2)
    robot.fail_next(errcode=45009)
    run(dispatcher.run_once())
    assert len(robot.posts) == 1  # the second was not even tried while WeCom says "too many"
    assert item(store, first).state == item(store, second).state == "pending"
    assert item(store, second).attempts == 0
    clock.advance(RATE_LIMITED_PAUSE)
    while run(dispatcher.run_once()):
        pass
    assert counts(store) == {"sent": 2}


def test_http_500_is_retried_with_backoff_then_delivered_when_the_robot_recovers(
        store: Store, robot: FakeRobot, dispatcher: Dispatcher, clock: ManualClock) -> None:
    (item_id,) = enqueue(store)
    robot.fail_next(2, status=500)
    for attempt in (1, 2):
        run(dispatcher.run_once())
        waiting = item(store, item_id)
        assert waiting.state == "pending" and waiting.attempts == attempt
        assert "HTTP 500" in (waiting.last_error or "")
        delay = waiting.next_attempt_at - clock.now
        assert timedelta(seconds=2 ** attempt) <= delay <= timedelta(seconds=2 ** attempt + 1)
        clock.now = waiting.next_attempt_at - timedelta(milliseconds=1)
        assert run(dispatcher.run_once()) == 0  # not before its time
        clock.now = waiting.next_attempt_at
    run(dispatcher.run_once())
    done = item(store, item_id)
    assert (done.state, done.attempts) == ("sent", 3)
    assert done.last_error == "wecom robot robo…0001: HTTP 500"  # the last problem stays visible


def test_network_errors_are_retried(store: Store, clock: ManualClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sender = WeComRobotSender(API, clock=clock, client=httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    dispatcher = Dispatcher(store, {"wecom": sender}, clock=clock)
    (item_id,) = enqueue(store)
    run(dispatcher.run_once())
    waiting = item(store, item_id)
    assert waiting.state == "pending" and "ConnectError" in (waiting.last_error or "")


def test_after_max_attempts_a_notification_fails_with_its_last_error(store: Store, robot: FakeRobot,
                                                                     dispatcher: Dispatcher,
                                                                     clock: ManualClock) -> None:
    (item_id,) = enqueue(store)
    robot.fail_next(100, status=503)
    for _ in range(100):
        run(dispatcher.run_once())
        current = item(store, item_id)
        if current.state == "failed":
            break
        assert current.next_attempt_at - clock.now <= MAX_BACKOFF
        clock.now = current.next_attempt_at
    assert current.state == "failed" and current.attempts == MAX_ATTEMPTS
    assert f"gave up after {MAX_ATTEMPTS} attempts" in (current.last_error or "")
    assert "HTTP 503" in (current.last_error or "")
    assert len(robot.posts) == MAX_ATTEMPTS
    clock.advance(3600)
    assert run(dispatcher.run_once()) == 0


# --------------------------------------------------------------------------- permanent failures


@pytest.mark.parametrize(("errcode", "meaning"), [(93000, "invalid webhook url"), (40008, "invalid message type")])
def test_a_permanent_error_fails_at_once_with_the_error_visible(store: Store, robot: FakeRobot,
                                                                dispatcher: Dispatcher, clock: ManualClock,
                                                                errcode: int, meaning: str) -> None:
    robot.refuse_key(KEY, errcode, meaning)
    (item_id,) = enqueue(store)
    (other_id,) = enqueue(store, key=OTHER_KEY)
    run(dispatcher.run_once())
    failed = item(store, item_id)
    assert failed.state == "failed" and failed.attempts == 1
    assert failed.last_error == f"wecom robot robo…0001: errcode {errcode} {meaning}"
    assert item(store, other_id).state == "sent"
    assert store.outbox_items(state="failed") == [failed]
    clock.advance(3600)
    assert run(dispatcher.run_once()) == 0
    assert len(robot.posts) == 2


def test_a_sender_bug_is_retried_not_left_sending(store: Store, clock: ManualClock) -> None:
    class Broken:
        async def send(self, target: str, message: OutboundMessage) -> str | None:
            raise KeyError("errcode")

    dispatcher = Dispatcher(store, {"wecom": Broken()}, clock=clock)
    (item_id,) = enqueue(store)
    run(dispatcher.run_once())
    waiting = item(store, item_id)
    assert waiting.state == "pending" and waiting.last_error == "KeyError: 'errcode'"


# --------------------------------------------------------------------------- restarts and several dispatchers


def test_staff_notifications_left_by_a_dead_dispatcher_are_delivered_after_the_lease(
        store: Store, robot: FakeRobot, dispatcher: Dispatcher, clock: ManualClock) -> None:
    ids = enqueue(store, 3, key=iter([KEY, OTHER_KEY, "robot-key-third-0003"]))  # three robots: three sends at once

    class Hanging:
        def __init__(self) -> None:
            self.entered = 0
            self.started = asyncio.Event()

        async def send(self, target: str, message: OutboundMessage) -> str | None:
            self.entered += 1
            if self.entered == 3:
                self.started.set()
            await asyncio.Event().wait()  # the process dies while the posts are in flight
            raise AssertionError("unreachable")

    async def crash() -> None:
        hanging = Hanging()
        doomed = Dispatcher(store, {"wecom": hanging}, clock=clock)
        task = asyncio.create_task(doomed.run_once())
        await asyncio.wait_for(hanging.started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(crash())
    assert counts(store) == {"attempting": 3}  # handed to the platform: maybe posted, maybe not

    clock.advance(ATTEMPT_LEASE.total_seconds())  # the restarted process: the dead one's lease still holds
    assert run(dispatcher.run_once()) == 0
    clock.advance(1)  # lease lapsed: staff notifications are posted again (at least once)
    assert run(dispatcher.run_once()) == 3
    assert counts(store) == {"sent": 3}
    assert len(robot.posts) == 3
    assert {item(store, i).attempts for i in ids} == {2}


def test_two_dispatchers_on_one_database_never_send_an_item_twice(store: Store, db_url: str, robot: FakeRobot,
                                                                  clock: ManualClock) -> None:
    keys = [f"robot-key-{n:03d}" for n in range(120)]  # distinct robots: no rate limit in the way
    enqueue(store, len(keys), key=iter(keys))
    other_store = Store.from_url(db_url, migrate=False)  # another process: its own engine and pool
    try:
        first = Dispatcher(store, {"wecom": sender_for(robot, clock)}, clock=clock)
        second = Dispatcher(other_store, {"wecom": sender_for(robot, clock)}, clock=clock)

        async def both() -> list[int]:
            taken = [0, 0]
            while True:
                a, b = await asyncio.gather(first.run_once(), second.run_once())
                taken[0] += a
                taken[1] += b
                if a == b == 0:
                    return taken

        taken = run(both())
    finally:
        other_store.close()
    assert sum(taken) == len(keys)
    assert all(taken)  # both took part
    assert sorted(p.key for p in robot.posts) == keys  # each robot got exactly its one message
    assert counts(store) == {"sent": len(keys)}


def observe_empty_claims(store: Store, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a claim finds nothing due: the running dispatcher is about to sleep."""
    loop = asyncio.get_running_loop()
    found_nothing = asyncio.Event()
    claim_due = store.claim_due

    def observed(**kwargs: Any) -> list[OutboxItem]:
        taken = claim_due(**kwargs)
        if not taken:
            loop.call_soon_threadsafe(found_nothing.set)  # claims run in a worker thread
        return taken

    monkeypatch.setattr(store, "claim_due", observed)
    return found_nothing


def test_the_running_dispatcher_is_woken_by_a_new_notification(store: Store, robot: FakeRobot,
                                                               dispatcher: Dispatcher,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.dispatch, "IDLE_POLL_SECONDS", 3600.0)  # only a wake can explain a delivery

    class Signalling:
        def __init__(self) -> None:
            self.inner = dispatcher.senders["wecom"]
            self.delivered = asyncio.Event()

        async def send(self, target: str, message: OutboundMessage) -> str | None:
            result = await self.inner.send(target, message)
            self.delivered.set()
            return result

    async def scenario() -> None:
        signalling = Signalling()
        dispatcher.senders["wecom"] = signalling
        went_idle = observe_empty_claims(store, monkeypatch)
        task = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.wait_for(went_idle.wait(), 10)  # it found the outbox empty and went idle
            await asyncio.to_thread(enqueue, store)
            dispatcher.wake()
            await asyncio.wait_for(signalling.delivered.wait(), 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())
    assert len(robot.accepted()) == 1


# --------------------------------------------------------------------------- the exceptions


def test_throttled_is_a_retry_later_with_a_wait() -> None:
    throttled = Throttled("window full", 12.5)
    assert isinstance(throttled, RetryLater) and throttled.after == 12.5
    assert not issubclass(Undeliverable, RetryLater)


# =========================================================================== crash safety: at most once to customers
#
# The dispatcher is killed between its steps: a ``Crash`` (a BaseException, so no handler of the dispatcher's
# sees it) raised from a wrapped store method, from the platform right after it accepted a message, or right
# after the outcome was committed. Then a fresh Dispatcher, on a fresh Store (another process), runs with the
# clock past the lease. Messages to customers must have reached the platform at most once, and each one not
# known to be delivered must be "uncertain" and on its case; staff messages must have arrived at least once.

OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"
TELEGRAM_CUSTOMER = "5550001"
OWNER = "telegram:101"
OWNER_CHAT = "101"
MALL_GROUP = "-1001234567890"
MALL_ROBOT = "robot-key-zhenbei-0001"
CRASH_POINTS = ("after_claim", "after_attempting", "after_send", "after_record")


class Crash(BaseException):
    """The process dies here: nothing after this point runs."""


class FakePlatform:
    """Every channel's platform in one: keeps each message it accepted; can die right after accepting one."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []  # (channel, target, text)
        self.crash_after_accepting = False
        self.answer: Callable[[str, str], str | None] = lambda channel, n: f"{channel}:{n}"

    def senders(self) -> dict[str, PlatformSender]:
        return {channel: PlatformSender(self, channel) for channel in ("telegram", "wechat", "wecom")}

    def count(self, channel: str, target: str, text: str) -> int:
        return self.received.count((channel, target, text))

    def texts_to(self, channel: str, target: str) -> list[str]:
        return [text for c, t, text in self.received if (c, t) == (channel, target)]


class PlatformSender:
    def __init__(self, platform: FakePlatform, channel: str) -> None:
        self.platform = platform
        self.channel = channel

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        self.platform.received.append((self.channel, target, message.text))
        if self.platform.crash_after_accepting:
            raise Crash("the platform took the message; the process dies before recording it")
        return self.platform.answer(self.channel, str(len(self.platform.received)))


def zhenbei_catalog() -> Catalog:
    demo = load_catalog()
    staffed = StaffGroups(telegram=(int(MALL_GROUP),), wecom=(MALL_ROBOT,))
    return demo.model_copy(update={"malls": tuple(
        mall.model_copy(update={"staff": staffed}) if mall.id == "sh-zhenbei" else mall for mall in demo.malls)})


def reports() -> CaseDeliveryReports:
    renderer = Renderer()
    return CaseDeliveryReports(renderer, StaffNotifier(zhenbei_catalog(), renderer,
                                                       Settings(_env_file=None)))  # type: ignore[call-arg]


def open_case(store: Store, *, owner: str | None = OWNER, channel: str = "wechat",
              customer: str = OPENID) -> CaseRecord:
    with store.unit_of_work() as uow:
        case = uow.open_case(CaseDraft(channel=channel, customer_id=customer, conversation_id=1,
                                       fields={"mall": "sh-zhenbei", "name": "王丽", "phone": "13812345678"},
                                       transcript=[], opened_at=T0))
        if owner is not None:
            _, case = uow.claim_case(case_id=case.id, owner=owner, owner_name="李专员", at=T0)
        return case


def queue(store: Store, kind: str, channel: str, target: str, text: str, case_id: int | None) -> int:
    with store.unit_of_work() as uow:
        return uow.enqueue(kind=kind, channel=channel, target=target, payload=OutboundMessage(text).as_payload(),
                           case_id=case_id, at=T0)


@dataclass(frozen=True)
class Message:
    id: int
    kind: str
    channel: str
    target: str
    text: str

    @property
    def to_customer(self) -> bool:
        return self.kind.startswith("customer_")


def queue_a_mixed_batch(store: Store, case: CaseRecord) -> list[Message]:
    """What a busy minute queues: updates to customers, with and without a case, and staff notifications."""
    batch = [
        ("customer_update", "wechat", OPENID, f"您的投诉 {case.number} 已由商场客服专员接手。", case.id),
        ("customer_reply", "telegram", TELEGRAM_CUSTOMER, "请问商品是哪一天送到的？", None),
        ("staff_notification", "wecom", MALL_ROBOT, f"### 新投诉 {case.number}", case.id),
        ("staff_update", "telegram", OWNER_CHAT, f"顾客回复了 {case.number}：左边扶手", case.id),
    ]
    return [Message(queue(store, *spec), *spec[:4]) for spec in batch]


def crash_at(point: str, store: Store, doomed: Dispatcher, platform: FakePlatform,
             monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrange for ``doomed`` to die at ``point`` of every item's delivery."""
    if point == "after_claim":
        def claimed_then_dead(*args: Any, **kwargs: Any) -> bool:
            raise Crash("claimed; dies before marking it attempting")
        monkeypatch.setattr(store, "mark_attempting", claimed_then_dead)
    elif point == "after_attempting":
        mark_attempting = store.mark_attempting

        def attempting_then_dead(*args: Any, **kwargs: Any) -> bool:
            mark_attempting(*args, **kwargs)
            raise Crash("attempting committed; dies before the platform call")
        monkeypatch.setattr(store, "mark_attempting", attempting_then_dead)
    elif point == "after_send":
        platform.crash_after_accepting = True
    elif point == "after_record":
        record = doomed._record

        def recorded_then_dead(*args: Any) -> None:
            record(*args)
            raise Crash("the outcome is committed; dies right after")
        monkeypatch.setattr(doomed, "_record", recorded_then_dead)
    else:
        raise AssertionError(point)


def drain_now(dispatcher: Dispatcher) -> None:
    """Passes until nothing is due at the clock's time (the staff reports queued meanwhile included)."""
    for _ in range(20):
        if not run(dispatcher.run_once()):
            return
    raise AssertionError("the outbox never settled")


def case_events(store: Store, case: CaseRecord, kind: str) -> list[CaseEventRecord]:
    return [e for e in store.get_case_events(case.id) if e.kind == kind]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_dispatcher_killed_between_steps_loses_nothing_and_repeats_nothing_to_customers(
        store: Store, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    platform = FakePlatform()
    case = open_case(store)
    batch = queue_a_mixed_batch(store, case)
    doomed = Dispatcher(store, dict(platform.senders()), clock=clock, reports=reports())
    crash_at(point, store, doomed, platform, monkeypatch)
    assert run(doomed.run_once()) == len(batch)  # ... and dies in every item's delivery at `point`
    platform.crash_after_accepting = False  # the platform itself lives on

    left = {m.id: item(store, m.id).state for m in batch}
    expected_left = {"after_claim": "sending", "after_attempting": "attempting", "after_send": "attempting",
                     "after_record": "sent"}[point]
    assert set(left.values()) == {expected_left}
    before_restart = list(platform.received)
    assert len(before_restart) == (len(batch) if point in ("after_send", "after_record") else 0)

    restarted_store = Store.from_url(db_url, migrate=False)  # the new process: its own engine and pool
    try:
        restarted = Dispatcher(restarted_store, dict(platform.senders()), clock=clock, reports=reports())
        clock.advance(30)  # the dead process's leases still hold
        assert run(restarted.run_once()) == 0
        clock.advance(ATTEMPT_LEASE.total_seconds())  # every lease has lapsed
        drain_now(restarted)
    finally:
        restarted_store.close()

    uncertain_window = point in ("after_attempting", "after_send")
    for message in batch:
        got = platform.count(message.channel, message.target, message.text)
        final = item(store, message.id)
        if not message.to_customer:  # at least once; here exactly once more after an interrupted send
            assert final.state == "sent", (point, message)
            assert got == (2 if point == "after_send" else 1), (point, message)
        elif uncertain_window:  # at most once, never again, and visibly so
            assert got == (1 if point == "after_send" else 0), (point, message)
            assert final.state == "uncertain" and final.sent_at is None, (point, message)
            assert final.last_error and "interrupted" in final.last_error
        else:  # never handed over, or recorded: exactly once
            assert (got, final.state) == (1, "sent"), (point, message)

    update = batch[0]
    uncertain_events = case_events(store, case, "delivery_uncertain")
    alerts = [text for text in platform.texts_to("telegram", OWNER_CHAT) if "无法确定顾客是否收到" in text]
    if uncertain_window:
        (event,) = uncertain_events  # the update about the case; the case-less reply is only on its row
        assert event.actor == "kesu"
        assert event.data["item"] == update.id and event.data["message_kind"] == "customer_update"
        (alert,) = alerts  # to the owner, privately: once, although staff messages are at least once
        assert case.number in alert and "已由商场客服专员接手" in alert
        (report,) = [i for i in store.outbox_items(case_id=case.id) if i.kind == "staff_delivery_report"]
        assert (report.channel, report.target, report.state) == ("telegram", OWNER_CHAT, "sent")
    else:
        assert uncertain_events == [] and alerts == []
    assert counts(store).keys() <= {"sent", "uncertain"}


def test_crashing_again_and_again_never_repeats_a_customer_message(
        store: Store, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every restart dies at another step, until the outbox settles."""
    platform = FakePlatform()
    case = open_case(store)
    batch = queue_a_mixed_batch(store, case)
    for point in ("after_claim", "after_claim", "after_attempting", "after_send", "after_claim"):
        with monkeypatch.context() as patch:
            process_store = Store.from_url(db_url, migrate=False)
            try:
                doomed = Dispatcher(process_store, dict(platform.senders()), clock=clock, reports=reports())
                crash_at(point, process_store, doomed, platform, patch)
                platform.crash_after_accepting = point == "after_send"
                run(doomed.run_once())
            finally:
                process_store.close()
        platform.crash_after_accepting = False
        clock.advance(ATTEMPT_LEASE.total_seconds() + 1)
    drain_now(Dispatcher(store, dict(platform.senders()), clock=clock, reports=reports()))
    for message in batch:
        got = platform.count(message.channel, message.target, message.text)
        assert got <= 1 if message.to_customer else got >= 1, message
        assert item(store, message.id).state in (("sent", "uncertain") if message.to_customer else ("sent",))
    assert counts(store).keys() <= {"sent", "uncertain"}


def test_a_dispatcher_that_stalls_past_its_lease_does_not_send_what_another_one_took(
        store: Store, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    platform = FakePlatform()
    case = open_case(store)
    update = queue(store, "customer_update", "wechat", OPENID, "处理方案：更换扶手。", case.id)
    other_store = Store.from_url(db_url, migrate=False)
    try:
        other = Dispatcher(other_store, dict(platform.senders()), clock=clock)
        stalled = Dispatcher(store, dict(platform.senders()), clock=clock)
        mark_attempting = store.mark_attempting

        def stall_then_attempt(*args: Any, **kwargs: Any) -> bool:
            clock.advance(61)  # a frozen VM: the claim's lease lapses...
            assert asyncio.run(other.run_once()) == 1  # ...and another process delivers the item
            return mark_attempting(*args, **kwargs)

        monkeypatch.setattr(store, "mark_attempting", stall_then_attempt)
        run(stalled.run_once())
    finally:
        other_store.close()
    assert platform.received == [("wechat", OPENID, "处理方案：更换扶手。")]
    delivered = item(store, update)
    assert (delivered.state, delivered.attempts) == ("sent", 2)


# --------------------------------------------------------------------------- a sender in doubt


class Doubtful:
    """Takes the message, then cannot say so: a read timeout, or a long text cut off after its first piece."""

    def __init__(self, platform: FakePlatform, error: Exception) -> None:
        self.platform = platform
        self.error = error

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        self.platform.received.append(("wechat", target, message.text))
        raise self.error


@pytest.mark.parametrize("error", [MaybeDelivered("no answer from WeChat after sending (ReadTimeout)"),
                                   KeyError("msgid")])
def test_a_customer_message_in_doubt_is_uncertain_not_resent(store: Store, clock: ManualClock,
                                                              error: Exception) -> None:
    platform = FakePlatform()
    case = open_case(store)
    update = queue(store, "customer_update", "wechat", OPENID, "您的投诉已处理完毕。", case.id)
    senders: dict[str, Sender] = {**platform.senders(), "wechat": Doubtful(platform, error)}
    dispatcher = Dispatcher(store, senders, clock=clock, reports=reports())
    drain_now(dispatcher)
    clock.advance(3600)
    drain_now(dispatcher)
    assert platform.count("wechat", OPENID, "您的投诉已处理完毕。") == 1
    final = item(store, update)
    assert final.state == "uncertain" and final.attempts == 1
    (event,) = case_events(store, case, "delivery_uncertain")
    assert event.data["reason"] == final.last_error
    assert type(error).__name__ in (final.last_error or "") or "ReadTimeout" in (final.last_error or "")
    assert any(case.number in text for text in platform.texts_to("telegram", OWNER_CHAT))


def test_a_staff_message_in_doubt_is_sent_again(store: Store, clock: ManualClock) -> None:
    platform = FakePlatform()
    notice = queue(store, "staff_notification", "wecom", MALL_ROBOT, "### 新投诉", None)
    doubtful = Doubtful(platform, MaybeDelivered("no answer"))
    dispatcher = Dispatcher(store, {"wecom": doubtful}, clock=clock)
    run(dispatcher.run_once())
    waiting = item(store, notice)
    assert waiting.state == "pending" and waiting.last_error == "no answer"
    dispatcher.senders["wecom"] = platform.senders()["wecom"]
    clock.now = waiting.next_attempt_at
    run(dispatcher.run_once())
    assert item(store, notice).state == "sent"
    assert len(platform.received) == 2  # at least once: it may now be in the group twice


# --------------------------------------------------------------------------- staff see whether the customer was reached


def test_a_template_delivery_and_a_failure_are_on_the_case_and_told_to_staff(store: Store,
                                                                            clock: ManualClock) -> None:
    platform = FakePlatform()
    reached, unreachable = open_case(store), open_case(store, owner=None, customer="o-unfollowed")
    via_template = queue(store, "customer_update", "wechat", OPENID, f"您的投诉 {reached.number} 有新进展。",
                         reached.id)
    refused = queue(store, "customer_update", "wechat", "o-unfollowed", f"您的投诉 {unreachable.number} 有新进展。",
                    unreachable.id)

    class WindowClosed:
        async def send(self, target: str, message: OutboundMessage) -> str | None:
            if target == OPENID:
                return "tpl:200228333"
            raise Undeliverable("customer-service message refused (45015); template message: errcode 43004")

    dispatcher = Dispatcher(store, {**platform.senders(), "wechat": WindowClosed()}, clock=clock, reports=reports())
    drain_now(dispatcher)

    assert item(store, via_template).external_id == "tpl:200228333"
    (event,) = case_events(store, reached, "customer_reached")
    assert event.data == {"item": via_template, "message_kind": "customer_update", "channel": "wechat",
                          "path": "template", "external_id": "tpl:200228333"}
    (told,) = platform.texts_to("telegram", OWNER_CHAT)  # the owner, privately
    assert reached.number in told and "模板消息" in told

    assert item(store, refused).state == "failed"
    (event,) = case_events(store, unreachable, "customer_unreachable")
    assert "43004" in event.data["reason"]
    # nobody owns that case: the mall's staff groups are told, on every channel they have
    for channel, target in (("telegram", MALL_GROUP), ("wecom", MALL_ROBOT)):
        (text,) = platform.texts_to(channel, target)
        assert unreachable.number in text and "未能送达顾客" in text and "43004" in text
        assert "13812345678" not in text
    assert case_events(store, reached, "customer_unreachable") == []


def test_plain_deliveries_and_staff_messages_are_not_reported(store: Store, clock: ManualClock) -> None:
    platform = FakePlatform()
    case = open_case(store)
    queue(store, "customer_update", "wechat", OPENID, "您好", case.id)  # "wechat:1": a customer-service message
    queue(store, "staff_notification", "telegram", MALL_GROUP, "新投诉", case.id)
    failing = queue(store, "staff_update", "telegram", "999", "提醒", case.id)

    class Mixed:
        async def send(self, target: str, message: OutboundMessage) -> str | None:
            if target == "999":
                raise Undeliverable("Forbidden: bot was blocked by the user")
            return await platform.senders()["telegram"].send(target, message)

    drain_now(Dispatcher(store, {**platform.senders(), "telegram": Mixed()}, clock=clock, reports=reports()))
    assert item(store, failing).state == "failed"
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened", "claimed"]
    assert [i.kind for i in store.outbox_items(case_id=case.id) if i.kind == "staff_delivery_report"] == []


def test_a_broken_report_does_not_leave_a_delivered_message_looking_undelivered(store: Store,
                                                                             clock: ManualClock) -> None:
    platform = FakePlatform()
    platform.answer = lambda channel, n: "tpl:1"
    case = open_case(store)
    update = queue(store, "customer_update", "wechat", OPENID, "您好", case.id)

    def broken(*args: Any) -> int:
        raise RuntimeError("template missing")

    drain_now(Dispatcher(store, dict(platform.senders()), clock=clock, reports=broken))
    assert item(store, update).state == "sent"
    assert case_events(store, case, "customer_reached") == []


# --------------------------------------------------------------------------- end to end: a staff action, a crash


def test_a_progress_update_interrupted_by_a_crash_is_shown_as_uncertain_to_staff(
        store: Store, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued by a staff action in the case change's transaction; the crash leaves it uncertain, and
    `kesu cases show` and `kesu outbox` say so."""
    platform = FakePlatform()
    renderer = Renderer()
    staff = StaffService(store, zhenbei_catalog(), Settings(_env_file=None), renderer,  # type: ignore[call-arg]
                         clock=clock)
    case = open_case(store, owner=None)
    member = StaffMember(OWNER, "李专员")
    assert staff.claim(case.number, member, telegram_chat=None).won
    drain_now(Dispatcher(store, dict(platform.senders()), clock=clock, reports=reports()))  # "已接手" goes out
    assert staff.act(case.number, Action.PROGRESS, member, text="品牌方明天上午十点上门检测。").ok
    (progress,) = [i for i in store.outbox_items(case_id=case.id, state="pending")]
    assert progress.kind == "customer_update"

    doomed = Dispatcher(store, dict(platform.senders()), clock=clock, reports=reports())
    crash_at("after_send", store, doomed, platform, monkeypatch)
    run(doomed.run_once())
    platform.crash_after_accepting = False
    clock.advance(ATTEMPT_LEASE.total_seconds() + 1)
    fresh = Store.from_url(db_url, migrate=False)
    try:
        drain_now(Dispatcher(fresh, dict(platform.senders()), clock=clock, reports=reports()))
    finally:
        fresh.close()

    progress_texts = [t for t in platform.texts_to("wechat", OPENID) if "上门检测" in t]
    assert len(progress_texts) == 1
    assert item(store, progress.id).state == "uncertain"
    record = store.get_case(case.number)
    assert record is not None
    detail = renderer.render("case_detail", {
        "case": record, "field_keys": FIELD_KEYS, "mall_name": None, "events": store.get_case_events(case.id),
        "deliveries": store.outbox_items(case_id=case.id)})
    assert "不确定顾客是否收到消息：给顾客的案件通知" in detail
    assert "给顾客的案件通知→微信公众号" in detail and "不确定是否送达（不会重发，请与顾客核实）" in detail
    listing = renderer.render("outbox_list", {"items": store.outbox_items(), "counts": store.outbox_counts()})
    assert "不确定是否送达 1（请与顾客核实）" in listing.splitlines()[0]
    (alert,) = [t for t in platform.texts_to("telegram", OWNER_CHAT) if "无法确定" in t]
    assert f"/progress {case.number}" in alert


# --------------------------------------------------------------------------- the real WeChat sender in doubt


@pytest.fixture
def wechat_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI("wx1234567890abcdef", "0123456789abcdef0123456789abcdef").serve() as fake:
        yield fake


def wechat_sender(fake: FakeWeChatAPI, *, timeout: float = 10.0) -> WeChatSender:
    client = OfficialAccountClient(fake.app_id, fake.secret, api_base_url=fake.base_url, timeout=timeout)
    return WeChatSender(client, Renderer(), "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY")


def test_wechat_text_cut_off_after_its_first_piece_is_not_sent_again(sqlite_store: Store, clock: ManualClock,
                                                                     wechat_api: FakeWeChatAPI) -> None:
    case = open_case(sqlite_store)
    long_text = "\n".join(f"第{n}条：品牌方明天上午十点上门检测，请保持电话畅通。" for n in range(40))
    assert len(wechat_split(long_text)) == 2  # WeChat takes 2000 bytes a message
    update = queue(sqlite_store, "customer_update", "wechat", OPENID, long_text, case.id)
    wechat_api.kf_script = [0, -1]  # the first piece is taken, the second refused ("system busy")
    dispatcher = Dispatcher(sqlite_store, {**FakePlatform().senders(), "wechat": wechat_sender(wechat_api)},
                            clock=clock, reports=reports())
    drain_now(dispatcher)
    clock.advance(3600)
    drain_now(dispatcher)
    sends = wechat_api.sent("message/custom/send")
    assert [call.ok for call in sends] == [True, False]  # one delivered piece, one refused, nothing more
    final = item(sqlite_store, update)
    assert final.state == "uncertain" and final.last_error
    assert final.last_error == "1 of 2 pieces delivered, then: errcode -1: system error"
    assert case_events(sqlite_store, case, "delivery_uncertain")


def test_wechat_send_without_an_answer_is_not_sent_again(sqlite_store: Store, clock: ManualClock,
                                                         wechat_api: FakeWeChatAPI) -> None:
    case = open_case(sqlite_store)
    update = queue(sqlite_store, "customer_update", "wechat", OPENID, "您的投诉已处理完毕。", case.id)
    wechat_api.answer_delay = 1.0  # WeChat takes the message; its answer comes after the client gave up
    dispatcher = Dispatcher(sqlite_store, {**FakePlatform().senders(), "wechat": wechat_sender(wechat_api,
                                                                                               timeout=0.3)},
                            clock=clock, reports=reports())
    drain_now(dispatcher)
    clock.advance(3600)
    drain_now(dispatcher)
    assert len(wechat_api.sent("message/custom/send")) == 1
    final = item(sqlite_store, update)
    assert final.state == "uncertain"
    assert (final.last_error or "").startswith("no answer from WeChat after sending (ReadTimeout: ")


def test_wechat_unreachable_is_retried_as_before(sqlite_store: Store, clock: ManualClock) -> None:
    client = OfficialAccountClient("wx1", "s", api_base_url="http://127.0.0.1:9/cgi-bin/", timeout=2)  # refused
    update = queue(sqlite_store, "customer_update", "wechat", OPENID, "您好", None)
    run(Dispatcher(sqlite_store, {"wechat": WeChatSender(client, Renderer(), None)}, clock=clock).run_once())
    assert item(sqlite_store, update).state == "pending"  # nothing went out: safe to try again


# --------------------------------------------------------------------------- the Telegram sender in doubt


class StubBot:
    """Answers send_message from a script: a message id, or an exception to raise."""

    def __init__(self, *answers: int | BaseException) -> None:
        self.answers = list(answers)
        self.texts: list[str] = []

    async def send_message(self, chat_id: int | str, text: str, reply_markup: Any = None) -> Any:
        self.texts.append(text)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return SimpleNamespace(message_id=answer)


def telegram_send(bot: StubBot, text: str) -> str | None:
    return run(TelegramSender(bot).send(TELEGRAM_CUSTOMER, OutboundMessage(text)))  # type: ignore[arg-type]


def _from(error: TelegramError, cause: Exception) -> TelegramError:
    error.__cause__ = cause
    return error


def test_telegram_text_cut_off_after_its_first_piece_may_have_been_delivered() -> None:
    bot = StubBot(41, BadRequest("Bad Request: message is too long"))
    with pytest.raises(MaybeDelivered, match=r"^1 of 2 pieces delivered, then: Telegram rejected the message"):
        telegram_send(bot, "扶手" * 1000 + "\n" + "检测" * 1500)
    assert len(bot.texts) == 2


@pytest.mark.parametrize(("error", "expected"), [
    (_from(TimedOut(), httpx.ReadTimeout("read")), MaybeDelivered),
    (_from(NetworkError("httpx.RemoteProtocolError: Server disconnected"), httpx.RemoteProtocolError("gone")),
     MaybeDelivered),
    (_from(TimedOut(), httpx.ConnectTimeout("connect")), RetryLater),
    (_from(TimedOut("Pool timeout"), httpx.PoolTimeout("pool")), RetryLater),
    (_from(NetworkError("httpx.ConnectError: refused"), httpx.ConnectError("refused")), RetryLater),
    (NetworkError("Bad Gateway"), RetryLater),
])
def test_telegram_errors_say_whether_the_message_may_have_arrived(error: TelegramError,
                                                                  expected: type[Exception]) -> None:
    with pytest.raises(expected) as raised:
        telegram_send(StubBot(error), "您好")
    assert type(raised.value) is expected


# =========================================================================== the pipeline
#
# ``Dispatcher.run`` sends to up to ``max_in_flight`` targets at once and claims again whenever one is done, so a
# slow answer holds its own chat only. One chat's messages go one at a time, in the order they were queued, also
# when one of them is sent back to wait; a stop lets the sends under way finish and hands back the rest.

CHAT = "5550001"
FIRST, SECOND = "您的投诉已由商场客服专员接手。", "品牌方明天上午十点上门检测。"
THIRD = "检测结果：扶手开裂属质量问题。"


class Chats:
    """A Telegram-like platform that records what it took, in order, and any chat sent two messages at once.

    A message in ``hold`` is taken, but the answer waits for ``release`` (forever, if never set). A message
    in ``refusals`` is refused with that error once (not taken), then taken.
    """

    def __init__(self, *hold: str, refusals: dict[str, Exception] | None = None) -> None:
        self.hold = set(hold)
        self.refusals = dict(refusals or {})
        self.release = asyncio.Event()
        self.received: list[tuple[str, str]] = []
        self.overlapping: list[str] = []
        self._sending: set[str] = set()
        self._arrived = asyncio.Event()

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        if target in self._sending:
            self.overlapping.append(target)
        if message.text in self.refusals:
            raise self.refusals.pop(message.text)
        self._sending.add(target)
        try:
            self.received.append((target, message.text))
            self._arrived.set()
            if message.text in self.hold:
                await self.release.wait()
            return str(len(self.received))
        finally:
            self._sending.discard(target)

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds after a message arrived (10 s at most: a guard against hanging)."""
        async def arrivals() -> None:
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(arrivals(), 10)


def test_a_slow_send_to_one_chat_does_not_hold_up_other_chats(store: Store, clock: ManualClock,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    queue(store, "customer_reply", "telegram", CHAT, FIRST, None)
    others = [(f"55502{n:02d}", f"您的投诉 KS2611220{n:03d} 有新进展。") for n in range(6)]
    for chat, text in others:
        queue(store, "customer_update", "telegram", chat, text, None)
    second = queue(store, "customer_reply", "telegram", CHAT, SECOND, None)
    platform = Chats(FIRST)  # Telegram takes the first reply, and its answer hangs
    dispatcher = Dispatcher(store, {"telegram": platform}, clock=clock, max_in_flight=2)

    async def scenario() -> tuple[list[tuple[str, str]], OutboxItem]:
        went_idle = observe_empty_claims(store, monkeypatch)
        task = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.wait_for(went_idle.wait(), 10)  # all it may take now is taken
            while_held = list(platform.received), item(store, second)
            platform.release.set()
            await platform.until(lambda: (CHAT, SECOND) in platform.received)
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 10)
        return while_held

    received, waiting = run(scenario())
    # Two slots: the held chat keeps one, the other takes every other chat in turn.
    assert [message for message in received if message[0] != CHAT] == others
    # The second reply to the held chat waits for the first, unclaimed (no lease ticks behind the slow send):
    # never two messages to one chat at once, never out of order.
    assert [message for message in received if message[0] == CHAT] == [(CHAT, FIRST)]
    assert (waiting.state, waiting.attempts) == ("pending", 0)
    assert platform.received[-1] == (CHAT, SECOND)
    assert platform.overlapping == []
    assert counts(store) == {"sent": 8}


@pytest.mark.parametrize(("refusal", "attempts", "last_error"), [
    (RetryLater("Telegram 429: Flood control exceeded", after=0.05), 2, "Telegram 429: Flood control exceeded"),
    (Throttled("group is at 20 messages a minute", after=0.05), 1, None),  # handed back untried: no attempt used
], ids=["retry_later", "throttled"])
def test_an_item_sent_back_to_wait_goes_out_when_due_without_a_wake(
        store: Store, monkeypatch: pytest.MonkeyPatch, refusal: RetryLater, attempts: int,
        last_error: str | None) -> None:
    monkeypatch.setattr(bot.dispatch, "IDLE_POLL_SECONDS", 3600.0)  # only the item's own due time can explain it
    (item_id,) = enqueue(store, channel="telegram", key=MALL_GROUP, at=datetime.now(UTC))
    text = item(store, item_id).payload["text"]
    platform = Chats(refusals={text: refusal})
    dispatcher = Dispatcher(store, {"telegram": platform})  # the real clock: the wait is 50 ms

    async def scenario() -> None:
        task = asyncio.create_task(dispatcher.run())
        try:
            await platform.until(lambda: bool(platform.received))  # nobody calls wake()
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 10)

    run(scenario())
    assert platform.received == [(MALL_GROUP, text)]
    sent = item(store, item_id)
    assert (sent.state, sent.attempts, sent.last_error) == ("sent", attempts, last_error)


def test_a_later_message_to_a_chat_never_overtakes_one_sent_back_to_wait(store: Store, clock: ManualClock) -> None:
    first, second = (queue(store, "customer_update", "telegram", CHAT, text, None) for text in (FIRST, SECOND))
    platform = Chats(refusals={FIRST: RetryLater("Telegram 429: retry after 30", after=30)})
    dispatcher = Dispatcher(store, {"telegram": platform}, clock=clock)
    assert run(dispatcher.run_once()) == 2
    assert platform.received == []  # the first was refused, the second not even tried
    refused, behind = item(store, first), item(store, second)
    assert (refused.state, refused.attempts, refused.next_attempt_at) == ("pending", 1, T0 + timedelta(seconds=30))
    assert (behind.state, behind.attempts, behind.next_attempt_at) == ("pending", 0, T0 + timedelta(seconds=30))

    clock.advance(10)
    third = queue(store, "customer_update", "telegram", CHAT, THIRD, None)  # queued while the chat waits
    assert run(dispatcher.run_once()) == 1
    assert platform.received == []
    assert item(store, third).next_attempt_at == T0 + timedelta(seconds=30)

    clock.advance(20)
    while run(dispatcher.run_once()):
        pass
    assert platform.received == [(CHAT, FIRST), (CHAT, SECOND), (CHAT, THIRD)]
    assert counts(store) == {"sent": 3}


def test_stopping_lets_the_send_under_way_finish_and_hands_back_what_waits_behind_it(store: Store,
                                                                                     clock: ManualClock) -> None:
    first, second = (queue(store, "customer_update", "telegram", CHAT, text, None) for text in (FIRST, SECOND))
    platform = Chats(FIRST)
    dispatcher = Dispatcher(store, {"telegram": platform}, clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(dispatcher.run())
        await platform.until(lambda: bool(platform.received))  # the first is being sent
        dispatcher.stop()  # kesu serve shuts down...
        platform.release.set()  # ...and Telegram answers after that
        await asyncio.wait_for(task, 10)

    run(scenario())
    assert platform.received == [(CHAT, FIRST)]
    assert item(store, first).state == "sent"
    untried = item(store, second)  # for the next process at once, without waiting out a lease
    assert (untried.state, untried.attempts, untried.next_attempt_at) == ("pending", 0, T0)


def test_a_send_that_outlasts_the_stop_grace_is_in_doubt(store: Store, clock: ManualClock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.dispatch, "STOP_GRACE_SECONDS", 0.01)
    case = open_case(store, channel="telegram", customer=CHAT)
    update = queue(store, "customer_update", "telegram", CHAT, FIRST, case.id)
    behind = queue(store, "customer_update", "telegram", CHAT, SECOND, case.id)
    notice = queue(store, "staff_notification", "telegram", MALL_GROUP, f"### 新投诉 {case.number}", case.id)
    platform = Chats(FIRST, f"### 新投诉 {case.number}")  # neither answer ever comes
    dispatcher = Dispatcher(store, {"telegram": platform}, clock=clock, reports=reports())

    async def scenario() -> None:
        task = asyncio.create_task(dispatcher.run())
        await platform.until(lambda: len(platform.received) == 2)
        dispatcher.stop()
        await asyncio.wait_for(task, 10)

    run(scenario())
    assert sorted(platform.received) == sorted([(CHAT, FIRST), (MALL_GROUP, f"### 新投诉 {case.number}")])
    doubtful = item(store, update)  # to the customer: at most once, and visibly so
    assert (doubtful.state, doubtful.last_error) == ("uncertain", INTERRUPTED)
    (event,) = case_events(store, case, "delivery_uncertain")
    assert event.data["item"] == update
    (report,) = [i for i in store.outbox_items(case_id=case.id) if i.kind == "staff_delivery_report"]
    assert (report.target, report.state) == (OWNER_CHAT, "pending")
    again = item(store, notice)  # to staff: at least once, so it goes again
    assert (again.state, again.attempts, again.last_error) == ("pending", 1, INTERRUPTED)
    untried = item(store, behind)
    assert (untried.state, untried.attempts) == ("pending", 0)


def test_staff_see_an_excerpt_of_the_whole_message_not_only_its_heading() -> None:
    update = ("您的投诉 KS2611220019 有新进展：\n品牌方复检安排在本周六上午，师傅出发前会先电话联系您\n"
              "我们会在11月24日前告诉您下一步的进展。")
    assert excerpt(update) == ("您的投诉 KS2611220019 有新进展： 品牌方复检安排在本周六上午，师傅出发前会先电话联系您 "
                               "我们会在11月2…")
    assert len(excerpt(update)) == EXCERPT_CHARS
    assert excerpt("  短消息  \n\n") == "短消息"
