"""Many turns at the same moment, on every backend: numbers unique, counters contiguous, no lost update."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from concurrently import run_together

from storage.repository import CaseDraft, StaleConversation, Store

THREADS = 16
CASES_PER_THREAD = 4
T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)


def test_simultaneous_turns_opening_cases_get_unique_contiguous_numbers(store: Store) -> None:
    def turn(worker: int) -> list[str]:
        numbers = []
        for n in range(CASES_PER_THREAD):
            customer = f"c{worker}-{n}"
            with store.unit_of_work() as uow:
                inbound = uow.record_inbound(
                    channel="tg", customer_id=customer, text="开单", at=T0, channel_message_id=customer
                )
                conversation = uow.save_conversation(
                    channel="tg", customer_id=customer, state={"n": n}, expected_version=None, at=T0
                )
                case = uow.open_case(
                    CaseDraft(
                        channel="tg",
                        customer_id=customer,
                        conversation_id=conversation.id,
                        fields={"description": f"worker {worker}"},
                        transcript=[],
                        opened_at=T0,
                    )
                )
                uow.record_outbound(
                    channel="tg", customer_id=customer, texts=[case.number], in_reply_to=inbound, at=T0
                )
            numbers.append(case.number)
        return numbers

    numbers = [number for batch in run_together(THREADS, turn) for number in batch]
    total = THREADS * CASES_PER_THREAD
    assert len(set(numbers)) == total
    assert all(number.startswith("KS261122") for number in numbers)
    assert sorted(int(number[8:-1]) for number in numbers) == list(range(1, total + 1))
    assert len(store.list_cases(limit=total + 10)) == total
    assert store.replies_for("tg", "c0-0", "c0-0") == [store.cases_for_customer("tg", "c0-0")[0].number]


def test_simultaneous_saves_of_one_conversation_let_exactly_one_win(store: Store) -> None:
    with store.unit_of_work() as uow:
        base = uow.save_conversation(channel="tg", customer_id="x", state={}, expected_version=None, at=T0)

    def save(worker: int) -> bool:
        try:
            with store.unit_of_work() as uow:
                uow.save_conversation(
                    channel="tg", customer_id="x", state={"w": worker}, expected_version=base.version, at=T0
                )
        except StaleConversation:
            return False
        return True

    assert sorted(run_together(THREADS, save)) == [False] * (THREADS - 1) + [True]
    assert store.load_conversation("tg", "x").version == base.version + 1  # type: ignore[union-attr]


def test_simultaneous_platform_retries_are_recorded_once(store: Store) -> None:
    def receive(_worker: int) -> int | None:
        with store.unit_of_work() as uow:
            return uow.record_inbound(
                channel="wechat", customer_id="o", text="在吗", at=T0, channel_message_id="m"
            )

    ids = run_together(THREADS, receive)
    assert sum(i is not None for i in ids) == 1
    assert len(store.messages("wechat", "o")) == 1


def test_sqlite_turn_takes_the_write_lock_up_front_and_readers_never_wait(sqlite_store: Store) -> None:
    """BEGIN IMMEDIATE: a second writer queues (busy_timeout) instead of failing a lock upgrade later."""
    path = sqlite_store.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with sqlite_store.unit_of_work() as uow:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            uow.save_conversation(channel="tg", customer_id="1", state={}, expected_version=None, at=T0)
            assert sqlite_store.load_conversation("tg", "1") is None  # WAL snapshot, no waiting
        assert sqlite_store.load_conversation("tg", "1") is not None
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
