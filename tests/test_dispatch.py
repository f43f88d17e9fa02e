"""The outbox dispatcher delivering WeCom robot notifications, on SQLite and PostgreSQL.

Nothing sleeps: the dispatcher and the robot sender share an injected clock that the tests move,
and each ``run_once`` is one pass. The robot is ``FakeRobot`` behind httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from fake_wecom import FakeRobot, ManualClock

import bot.dispatch
from bot.dispatch import MAX_ATTEMPTS, MAX_BACKOFF, Dispatcher, RetryLater, Throttled, Undeliverable
from bot.outbound import OutboundMessage
from handlers.wecom import RATE_LIMITED_PAUSE, WeComRobotSender
from storage.repository import OutboxItem, Store

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


def test_items_left_sending_by_a_dead_dispatcher_are_delivered_after_the_lease(
        store: Store, robot: FakeRobot, dispatcher: Dispatcher, clock: ManualClock) -> None:
    ids = enqueue(store, 3)

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
    assert counts(store) == {"sending": 3}

    clock.advance(30)  # the restarted process: the dead one's lease still holds
    assert run(dispatcher.run_once()) == 0
    clock.advance(31)  # lease lapsed
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
        first_pass = asyncio.Event()
        one_pass = dispatcher.run_once

        async def observed_pass() -> int:
            taken = await one_pass()
            first_pass.set()
            return taken

        dispatcher.run_once = observed_pass  # type: ignore[method-assign]
        task = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.wait_for(first_pass.wait(), 10)  # it found the outbox empty and went idle
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
