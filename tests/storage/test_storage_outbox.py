"""The outbox, on every backend: written with its turn, leased by dispatchers, its state visible.

A dispatcher's steps per item: claim (→ sending), ``mark_attempting`` just before the platform call
(→ attempting), then sent, back to pending, failed or uncertain. A lapsed lease makes an item due
again and tells how far its dispatcher got; the claim's ``attempts`` fences out a stale dispatcher.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from concurrently import run_together
from sqlalchemy import text

from storage.repository import CaseDraft, OutboxItem, Store

T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
LEASE = timedelta(seconds=60)
ATTEMPT_LEASE = timedelta(minutes=5)
NO_ITEMS = {"pending": 0, "sending": 0, "attempting": 0, "sent": 0, "failed": 0, "uncertain": 0}
PAYLOAD: dict[str, Any] = {
    "text": "新客诉 KS2611220019：沙发塌了 🛋️",
    "buttons": [[{"text": "认领", "data": "claim:1"}]],
    "format": "html",
}


def enqueue(
    store: Store, n: int = 1, *, at: datetime = T0, case_id: int | None = None, step: timedelta = timedelta(0)
) -> list[int]:
    with store.unit_of_work() as uow:
        return [
            uow.enqueue(
                kind="staff_notification",
                channel="telegram",
                target=f"-100{i}",
                payload={**PAYLOAD, "n": i},
                case_id=case_id,
                at=at + step * i,
            )
            for i in range(n)
        ]


def open_case(store: Store, customer: str = "c") -> int:
    with store.unit_of_work() as uow:
        return uow.open_case(
            CaseDraft(channel="wechat", customer_id=customer, conversation_id=1, fields={}, transcript=[], opened_at=T0)
        ).id


def only(items: list[OutboxItem]) -> OutboxItem:
    assert len(items) == 1, items
    return items[0]


def attempting(store: Store, *, now: datetime = T0) -> OutboxItem:
    """Claim the one due item and mark it attempting, as a dispatcher does just before the platform call."""
    claimed = only(store.claim_due(now=now, lease=LEASE))
    assert store.mark_attempting(claimed.id, attempt=claimed.attempts, lease_until=now + ATTEMPT_LEASE, at=now)
    return claimed


# ----------------------------------------------------------------- writing


def test_enqueued_item_is_pending_and_round_trips(store: Store) -> None:
    case_id = open_case(store)
    (item_id,) = enqueue(store, case_id=case_id)
    item = only(store.outbox_items())
    assert item == OutboxItem(
        id=item_id,
        kind="staff_notification",
        channel="telegram",
        target="-1000",
        payload={**PAYLOAD, "n": 0},
        case_id=case_id,
        state="pending",
        attempts=0,
        next_attempt_at=T0,
        last_error=None,
        external_id=None,
        created_at=T0,
        sent_at=None,
    )
    assert item.next_attempt_at.utcoffset() == timedelta(0)
    assert store.outbox_counts() == {**NO_ITEMS, "pending": 1}


def test_enqueue_in_a_rolled_back_turn_leaves_no_item(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        case = uow.open_case(
            CaseDraft(channel="tg", customer_id="1", conversation_id=1, fields={}, transcript=[], opened_at=T0)
        )
        uow.enqueue(
            kind="staff_notification", channel="telegram", target="-100", payload=PAYLOAD, case_id=case.id, at=T0
        )
        uow.enqueue(kind="customer_reply", channel="wechat", target="o-1", payload={"text": "好"}, case_id=None, at=T0)
        raise RuntimeError("handler crashed after queueing")
    assert store.outbox_items() == []
    assert store.outbox_counts() == NO_ITEMS
    assert store.claim_due(now=T0 + timedelta(days=1)) == []


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        enqueue(store, at=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        store.claim_due(now=datetime(2026, 1, 1))


# ----------------------------------------------------------------- claiming


def test_claim_due_takes_due_items_only_oldest_first_up_to_the_limit(store: Store) -> None:
    # Inserted out of order: the claim order is by due time, not by id.
    late, early = enqueue(store, at=T0 + timedelta(minutes=3)), enqueue(store, at=T0)
    middle = enqueue(store, 2, at=T0 + timedelta(minutes=1), step=timedelta(minutes=1))
    future = enqueue(store, at=T0 + timedelta(hours=1))
    expected_order = [*early, *middle, *late]
    long_lease = timedelta(hours=2)

    first = store.claim_due(now=T0 + timedelta(minutes=3), limit=2, lease=long_lease)
    assert [item.id for item in first] == expected_order[:2]
    assert all(item.state == "sending" and item.attempts == 1 for item in first)
    second = store.claim_due(now=T0 + timedelta(minutes=3), limit=10, lease=long_lease)
    assert [item.id for item in second] == expected_order[2:]
    assert store.claim_due(now=T0 + timedelta(minutes=3), limit=10, lease=long_lease) == []  # all leased
    assert [item.id for item in store.claim_due(now=T0 + timedelta(hours=1), lease=long_lease)] == future
    assert store.outbox_counts() == {**NO_ITEMS, "sending": 5}
    assert store.claim_due(now=T0, limit=0) == []


def test_an_expired_lease_is_taken_again_an_unexpired_one_is_not(store: Store) -> None:
    (item_id,) = enqueue(store)
    assert only(store.claim_due(now=T0, lease=LEASE)).attempts == 1
    assert store.claim_due(now=T0 + timedelta(seconds=30), lease=LEASE) == []
    assert store.claim_due(now=T0 + LEASE, lease=LEASE) == []  # lease_until < now, strictly
    retaken = only(store.claim_due(now=T0 + LEASE + timedelta(seconds=1), lease=LEASE))
    assert (retaken.id, retaken.state, retaken.attempts) == (item_id, "sending", 2)
    assert store.claim_due(now=T0 + LEASE + timedelta(seconds=30), lease=LEASE) == []


def test_mark_retry_sends_the_item_back_to_pending_until_its_next_attempt(store: Store) -> None:
    (item_id,) = enqueue(store)
    attempting(store)
    retry_at = T0 + timedelta(minutes=5)
    assert store.mark_retry(item_id, attempt=1, error="429 Too Many Requests: retry after 300",
                            next_attempt_at=retry_at, at=T0)
    item = only(store.outbox_items(state="pending"))
    assert (item.state, item.attempts, item.next_attempt_at) == ("pending", 1, retry_at)
    assert item.last_error == "429 Too Many Requests: retry after 300"
    assert store.claim_due(now=retry_at - timedelta(seconds=1), lease=LEASE) == []
    again = only(store.claim_due(now=retry_at, lease=LEASE))
    assert (again.id, again.attempts, again.last_error) == (item_id, 2, item.last_error)


def test_mark_failed_is_final(store: Store) -> None:
    (item_id,) = enqueue(store)
    attempting(store)
    assert store.mark_failed(item_id, attempt=1, error="403 Forbidden: bot was blocked by the user \x00", at=T0)
    item = only(store.outbox_items(state="failed"))
    assert item.last_error == "403 Forbidden: bot was blocked by the user \ufffd"
    assert item.sent_at is None
    assert store.claim_due(now=T0 + timedelta(days=365), lease=LEASE) == []
    assert store.outbox_counts() == {**NO_ITEMS, "failed": 1}


def test_mark_sent_records_the_platform_message_id(store: Store) -> None:
    case_id = open_case(store)
    (item_id,) = enqueue(store, case_id=case_id)
    attempting(store)
    sent_at = T0 + timedelta(seconds=2)
    assert store.mark_sent(item_id, external_id="8841", at=sent_at)
    item = only(store.outbox_items(case_id=case_id))
    assert (item.state, item.external_id, item.sent_at, item.attempts) == ("sent", "8841", sent_at, 1)
    assert store.claim_due(now=T0 + timedelta(days=1), lease=LEASE) == []  # an expired lease is irrelevant now
    assert store.outbox_counts()["sent"] == 1


def test_a_dispatcher_whose_lease_lapsed_cannot_undo_a_later_delivery(store: Store) -> None:
    (item_id,) = enqueue(store)
    store.claim_due(now=T0, lease=LEASE)  # dispatcher A, which then stalls
    later = T0 + LEASE + timedelta(seconds=5)
    attempting(store, now=later)  # dispatcher B
    assert store.mark_sent(item_id, external_id="9", at=later)
    # A wakes up: whatever it tries, the delivery B recorded stands
    assert not store.mark_attempting(item_id, attempt=1, lease_until=later + ATTEMPT_LEASE, at=later)
    assert not store.mark_retry(item_id, attempt=1, error="timeout", next_attempt_at=later, at=later)
    assert not store.mark_failed(item_id, attempt=1, error="timeout", at=later)
    assert not store.mark_uncertain(item_id, attempt=1, error="timeout", at=later)
    assert not store.defer(item_id, attempt=1, next_attempt_at=later, at=later)
    item = only(store.outbox_items())
    assert (item.state, item.external_id, item.last_error, item.attempts) == ("sent", "9", None, 2)


# ----------------------------------------------------------------- attempting, uncertain, fencing


def test_a_lapsed_claim_comes_back_sending_and_an_interrupted_send_comes_back_attempting(store: Store) -> None:
    never_tried, interrupted = enqueue(store, 2, step=timedelta(seconds=1))
    claimed = store.claim_due(now=T0 + timedelta(seconds=1), lease=LEASE)
    assert [i.id for i in claimed] == [never_tried, interrupted]
    assert store.mark_attempting(interrupted, attempt=1, lease_until=T0 + ATTEMPT_LEASE, at=T0)
    # both dispatchers die; the claim's lease lapses first, the attempt's later
    (again,) = store.claim_due(now=T0 + LEASE + timedelta(seconds=2), lease=LEASE)
    assert (again.id, again.state, again.attempts) == (never_tried, "sending", 2)
    assert store.mark_failed(never_tried, attempt=2, error="gave up", at=T0 + LEASE)
    assert store.claim_due(now=T0 + ATTEMPT_LEASE, lease=LEASE) == []
    (found,) = store.claim_due(now=T0 + ATTEMPT_LEASE + timedelta(seconds=1), lease=LEASE)
    assert (found.id, found.state, found.attempts) == (interrupted, "attempting", 2)
    assert store.outbox_counts() == {**NO_ITEMS, "failed": 1, "attempting": 1}


def test_mark_attempting_renews_the_lease_for_the_platform_call_and_is_fenced(store: Store) -> None:
    (item_id,) = enqueue(store)
    assert only(store.claim_due(now=T0, lease=LEASE)).attempts == 1
    assert not store.mark_attempting(item_id, attempt=2, lease_until=T0 + ATTEMPT_LEASE, at=T0)  # not our claim
    assert store.mark_attempting(item_id, attempt=1, lease_until=T0 + ATTEMPT_LEASE, at=T0)
    assert only(store.outbox_items()).state == "attempting"
    assert store.claim_due(now=T0 + LEASE + timedelta(seconds=1), lease=LEASE) == []  # the call is covered
    assert store.mark_attempting(item_id, attempt=1, lease_until=T0 + ATTEMPT_LEASE, at=T0)  # the holder, again


def test_an_uncertain_item_is_final_and_visible(store: Store) -> None:
    case_id = open_case(store)
    (item_id,) = enqueue(store, case_id=case_id)
    attempting(store)
    assert store.mark_uncertain(item_id, attempt=1, error="interrupted", at=T0 + timedelta(seconds=5))
    item = only(store.outbox_items(state="uncertain"))
    assert (item.id, item.last_error, item.sent_at, item.attempts) == (item_id, "interrupted", None, 1)
    assert store.outbox_items(case_id=case_id) == [item]
    assert store.claim_due(now=T0 + timedelta(days=365), lease=LEASE) == []
    assert store.outbox_counts() == {**NO_ITEMS, "uncertain": 1}
    assert not store.mark_retry(item_id, attempt=1, error="x", next_attempt_at=T0, at=T0)
    assert not store.mark_failed(item_id, attempt=1, error="x", at=T0)


def test_only_an_attempted_item_can_be_uncertain(store: Store) -> None:
    (item_id,) = enqueue(store)
    store.claim_due(now=T0, lease=LEASE)
    assert not store.mark_uncertain(item_id, attempt=1, error="never handed over", at=T0)
    assert only(store.outbox_items()).state == "sending"


def test_a_late_confirmation_turns_uncertain_into_sent_but_a_first_delivery_stands(store: Store) -> None:
    (item_id,) = enqueue(store)
    attempting(store)
    store.mark_uncertain(item_id, attempt=1, error="interrupted", at=T0)
    assert store.mark_sent(item_id, external_id="77", at=T0 + timedelta(seconds=1))  # the platform did take it
    assert not store.mark_sent(item_id, external_id="78", at=T0 + timedelta(seconds=2))
    item = only(store.outbox_items())
    assert (item.state, item.external_id, item.sent_at) == ("sent", "77", T0 + timedelta(seconds=1))


def test_a_stale_claim_stays_fenced_out_whatever_happens_to_the_item_since(store: Store) -> None:
    (item_id,) = enqueue(store)
    store.claim_due(now=T0, lease=LEASE)  # A: attempts 1, then stalls before its platform call
    later = T0 + LEASE + timedelta(seconds=1)
    assert only(store.claim_due(now=later, lease=LEASE)).attempts == 2  # B
    assert not store.mark_attempting(item_id, attempt=1, lease_until=later + ATTEMPT_LEASE, at=later)  # A
    assert store.mark_attempting(item_id, attempt=2, lease_until=later + ATTEMPT_LEASE, at=later)  # B
    assert store.defer(item_id, attempt=2, next_attempt_at=later, at=later)  # B: throttled, the attempt given back
    assert only(store.outbox_items()).attempts == 1
    # the attempts are back at A's number, but the item is pending: A still cannot send it
    assert not store.mark_attempting(item_id, attempt=1, lease_until=later + ATTEMPT_LEASE, at=later)
    assert only(store.claim_due(now=later, lease=LEASE)).attempts == 2  # C
    assert not store.mark_attempting(item_id, attempt=1, lease_until=later + ATTEMPT_LEASE, at=later)
    assert not store.mark_retry(item_id, attempt=1, error="A", next_attempt_at=later, at=later)
    assert not store.mark_failed(item_id, attempt=1, error="A", at=later)
    item = only(store.outbox_items())
    assert (item.state, item.attempts, item.last_error) == ("sending", 2, None)


def test_defer_hands_an_attempting_item_back_untried(store: Store) -> None:
    (item_id,) = enqueue(store)
    attempting(store)
    assert store.defer(item_id, attempt=1, next_attempt_at=T0 + timedelta(seconds=30), at=T0)
    item = only(store.outbox_items())
    assert (item.state, item.attempts, item.next_attempt_at) == ("pending", 0, T0 + timedelta(seconds=30))


def test_outcome_steps_and_their_case_event_commit_together(store: Store) -> None:
    case_id = open_case(store)
    (item_id,) = enqueue(store, case_id=case_id)
    attempting(store)
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        assert uow.mark_uncertain(item_id, attempt=1, error="interrupted", at=T0)
        uow.add_case_event(case_id=case_id, kind="delivery_uncertain", actor="kesu", data={}, at=T0)
        raise RuntimeError("crash before commit")
    assert only(store.outbox_items()).state == "attempting"
    assert [e.kind for e in store.get_case_events(case_id)] == ["opened"]


def test_outbox_items_filters_newest_first_with_a_limit(store: Store) -> None:
    case_a, case_b = open_case(store, "a"), open_case(store, "b")
    a_ids = enqueue(store, 3, case_id=case_a, step=timedelta(minutes=1))
    b_ids = enqueue(store, 2, case_id=case_b, at=T0 + timedelta(minutes=10), step=timedelta(minutes=1))
    (taken,) = store.claim_due(now=T0, limit=1, lease=LEASE)
    assert taken.id == a_ids[0]
    assert [i.id for i in store.outbox_items()] == [*reversed(b_ids), *reversed(a_ids)]
    assert [i.id for i in store.outbox_items(limit=2)] == list(reversed(b_ids))
    assert [i.id for i in store.outbox_items(case_id=case_a)] == list(reversed(a_ids))
    assert [i.id for i in store.outbox_items(state="sending")] == [a_ids[0]]
    assert [i.id for i in store.outbox_items(state="pending", case_id=case_a)] == list(reversed(a_ids[1:]))
    assert store.outbox_items(state="failed") == []
    assert store.outbox_counts() == {**NO_ITEMS, "pending": 4, "sending": 1}


def test_unit_of_work_reads_its_own_queued_items(store: Store) -> None:
    with store.unit_of_work() as uow:
        item_id = uow.enqueue(kind="customer_reply", channel="wechat", target="o-1", payload={}, case_id=None, at=T0)
        assert [i.id for i in uow.outbox_items()] == [item_id]
        assert uow.outbox_counts()["pending"] == 1
        assert store.outbox_items() == []  # not visible outside the turn before it commits
    assert [i.id for i in store.outbox_items()] == [item_id]


# ----------------------------------------------------------------- concurrency


def test_concurrent_dispatchers_never_take_the_same_item(store: Store) -> None:
    ids = enqueue(store, 50, step=timedelta(milliseconds=1))
    now = T0 + timedelta(seconds=1)

    def dispatcher(_worker: int) -> list[OutboxItem]:
        taken: list[OutboxItem] = []
        while batch := store.claim_due(now=now, limit=3, lease=LEASE):
            taken.extend(batch)
        return taken

    first, second = run_together(2, dispatcher)
    first_ids, second_ids = [i.id for i in first], [i.id for i in second]
    assert not set(first_ids) & set(second_ids)
    assert sorted(first_ids + second_ids) == ids
    assert all(item.attempts == 1 for item in first + second)
    assert store.outbox_counts()["sending"] == 50


@pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_claim_skips_rows_another_dispatcher_holds(store: Store) -> None:
    """SKIP LOCKED: a row locked by a dispatcher mid-claim is skipped, not waited for."""
    assert store.engine.dialect.name == "postgresql"
    first, *rest = enqueue(store, 3, step=timedelta(seconds=1))
    with store.engine.connect() as other:
        other.execute(text("SELECT id FROM outbox WHERE id = :id FOR UPDATE"), {"id": first})
        with ThreadPoolExecutor(max_workers=1) as pool:
            taken = pool.submit(store.claim_due, now=T0 + timedelta(minutes=1), lease=LEASE).result(timeout=10)
        other.rollback()
    assert [item.id for item in taken] == rest
    assert [item.id for item in store.claim_due(now=T0 + timedelta(minutes=1), lease=LEASE)] == [first]
