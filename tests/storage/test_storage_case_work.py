"""The work on a case after intake, on every backend: conditional updates, deadlines, monthly and customer views."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from concurrently import run_together
from sqlalchemy import Connection, select
from sqlalchemy import event as sqla_event

from storage.models import CASE_DEADLINES, cases
from storage.repository import CaseDraft, CaseRecord, Store

T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # 10:30 in Shanghai
UPDATERS = 8
SOLUTION: dict[str, Any] = {
    "codes": ["compensation", "repair"],
    "amount": "123.45",
    "text": "上门维修，并补偿 123.45 元",
    "proposed_by": "李经理",
    "approved_by": None,
}


def open_case(
    store: Store, *, customer: str = "o-1", channel: str = "wechat", at: datetime = T0
) -> CaseRecord:
    with store.unit_of_work() as uow:
        return uow.open_case(
            CaseDraft(
                channel=channel,
                customer_id=customer,
                conversation_id=1,
                fields={"mall": "sh-zhenbei", "description": "沙发塌了"},
                transcript=[],
                opened_at=at,
            )
        )


def update(
    store: Store,
    case: CaseRecord,
    changes: dict[str, Any],
    *,
    expected_status: str | tuple[str, ...] | None = None,
    expected_version: int | None = None,
    event: tuple[str, str, dict[str, Any]] | None = None,
    at: datetime = T0,
) -> CaseRecord | None:
    with store.unit_of_work() as uow:
        return uow.update_case(
            case_id=case.id,
            expected_status=expected_status,
            expected_version=expected_version,
            changes=changes,
            event=event,
            at=at,
        )


# ----------------------------------------------------------------- update_case


def test_update_case_sets_the_changes_bumps_the_version_and_records_the_event(store: Store) -> None:
    case = open_case(store)
    assert (case.version, case.escalation_level, case.nature, case.solution) == (1, 0, None, None)
    at = T0 + timedelta(hours=1)
    changes: dict[str, Any] = {
        "status": "proposed",
        "owner": "telegram:42",
        "owner_name": "李经理",
        "claimed_at": at,
        "nature": "quality",
        "priority": "major",
        "solution": {**SOLUTION, "amount": Decimal("123.45")},
        "first_contact_due": T0 + timedelta(hours=24),
        "next_update_due": T0 + timedelta(days=2),
        "resolution_due": T0 + timedelta(days=7),
        "first_contacted_at": at,
        "satisfaction": 4,
        "escalation_level": 1,
    }
    event = ("propose", "telegram:42", {"by": "李经理", "text": "上门维修"})
    updated = update(store, case, changes, expected_status="new", expected_version=1, event=event, at=at)

    assert updated is not None
    assert store.get_case_by_id(case.id) == updated == store.get_case(case.number)
    assert (updated.version, updated.updated_at, updated.created_at) == (2, at, T0)
    assert (updated.status, updated.owner, updated.owner_name, updated.claimed_at) == (
        "proposed",
        "telegram:42",
        "李经理",
        at,
    )
    assert (updated.nature, updated.fields["priority"], updated.solution) == ("quality", "major", SOLUTION)
    assert (updated.first_contact_due, updated.next_update_due, updated.resolution_due) == (
        T0 + timedelta(hours=24),
        T0 + timedelta(days=2),
        T0 + timedelta(days=7),
    )
    assert updated.first_contact_due is not None and updated.first_contact_due.utcoffset() == timedelta(0)
    assert (updated.first_contacted_at, updated.resolved_at, updated.closed_at) == (at, None, None)
    assert (updated.satisfaction, updated.escalation_level) == (4, 1)
    assert {key: value for key, value in updated.fields.items() if key != "priority"} == {
        key: value for key, value in case.fields.items() if key != "priority"
    }
    events = store.get_case_events(case.id)
    assert [(e.kind, e.actor) for e in events] == [("opened", "customer"), ("propose", "telegram:42")]
    assert events[1].data == {"by": "李经理", "text": "上门维修"} and events[1].created_at == at


def test_update_case_accepts_several_statuses_clears_values_and_stores_a_missing_solution_as_sql_null(
    store: Store,
) -> None:
    case = open_case(store)
    first = update(store, case, {"status": "claimed", "solution": SOLUTION, "next_update_due": T0}, at=T0)
    assert first is not None and first.version == 2
    later = T0 + timedelta(minutes=5)
    second = update(
        store,
        first,
        {"status": "closed", "solution": None, "next_update_due": None, "closed_at": later},
        expected_status=("claimed", "verifying"),
        expected_version=2,
        at=later,
    )
    assert second is not None
    assert (second.status, second.solution, second.next_update_due, second.closed_at) == ("closed", None, None, later)
    assert second.version == 3 and second.updated_at == later
    with store.engine.connect() as conn:
        assert conn.execute(select(cases.c.id).where(cases.c.solution.is_(None))).scalars().all() == [case.id]
    # Empty changes still count as a change: an answer recorded against the state it answers.
    third = update(store, second, {}, expected_version=3, event=("customer_answer", "customer", {"text": "好"}))
    assert third is not None and third.version == 4 and third.status == "closed"
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened", "customer_answer"]


def test_a_failed_status_condition_returns_none_and_writes_nothing(store: Store) -> None:
    case = open_case(store)
    event = ("resolve", "telegram:1", {"by": "甲"})
    assert update(store, case, {"status": "resolved"}, expected_status="claimed", event=event) is None
    assert update(store, case, {"status": "resolved"}, expected_status=("agreed", "proposed"), event=event) is None
    assert store.get_case_by_id(case.id) == case
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened"]


def test_a_stale_version_returns_none_and_a_claim_counts_as_a_change(store: Store) -> None:
    case = open_case(store)
    event = ("note", "telegram:1", {"text": "已联系"})
    assert update(store, case, {"nature": "service"}, expected_version=2, event=event) is None
    assert store.get_case_by_id(case.id) == case
    with store.unit_of_work() as uow:
        won, claimed = uow.claim_case(case_id=case.id, owner="telegram:1", owner_name="甲", at=T0)
    assert won and claimed.version == case.version + 1
    # Someone acting on what they saw before the claim fails, with or without a status check.
    assert update(store, case, {"nature": "service"}, expected_version=case.version, event=event) is None
    stale = update(
        store, case, {"nature": "service"}, expected_status="claimed", expected_version=case.version, event=event
    )
    assert stale is None
    assert store.get_case_by_id(case.id) == claimed
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened", "claimed"]
    fresh = update(store, claimed, {"nature": "service"}, expected_version=claimed.version, event=event)
    assert fresh is not None and fresh.nature == "service" and fresh.version == claimed.version + 1


def test_an_unknown_case_returns_none(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.update_case(case_id=4242, expected_status=None, changes={}, event=("x", "y", {}), at=T0) is None
        assert uow.get_case_events(4242) == []


BAD_CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"description": "改了"}, "cannot change"),
    ({"number": "KS2611220019"}, "cannot change"),
    ({"version": 9}, "cannot change"),
    ({"updated_at": T0}, "cannot change"),
    ({"status": "closed", "transcript": []}, "cannot change"),
    ({"status": None}, "status"),
    ({"status": "x" * 33}, "status"),
    ({"nature": "price"}, "nature"),
    ({"priority": "urgent"}, "priority"),
    ({"satisfaction": 0}, "satisfaction"),
    ({"satisfaction": 6}, "satisfaction"),
    ({"satisfaction": True}, "satisfaction"),
    ({"satisfaction": "5"}, "satisfaction"),
    ({"escalation_level": -1}, "escalation_level"),
    ({"escalation_level": None}, "escalation_level"),
    ({"resolution_due": datetime(2026, 12, 1)}, "naive"),
    ({"closed_at": "2026-12-01T00:00:00Z"}, "closed_at"),
    ({"owner": 42}, "owner"),
    ({"solution": "退款"}, "solution"),
    ({"solution": {**SOLUTION, "approved_at": None}}, "unknown solution keys"),
    ({"solution": {**SOLUTION, "codes": "refund"}}, "codes"),
    ({"solution": {**SOLUTION, "amount": "很多"}}, "amount"),
    ({"solution": {**SOLUTION, "amount": "-5"}}, "amount"),
    ({"solution": {key: value for key, value in SOLUTION.items() if key != "text"}}, "text"),
]


def test_bad_changes_are_refused_and_nothing_is_written(store: Store) -> None:
    case = open_case(store)
    for changes, message in BAD_CHANGES:
        try:
            with store.unit_of_work() as uow:
                uow.update_case(
                    case_id=case.id, expected_status=None, changes=changes, event=("x", "staff", {}), at=T0
                )
        except ValueError as exc:
            assert message in str(exc), (changes, exc)
        else:
            pytest.fail(f"update_case accepted {changes!r}")
    assert store.get_case_by_id(case.id) == case
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened"]


def test_an_empty_expected_status_is_refused(store: Store) -> None:
    case = open_case(store)
    with pytest.raises(ValueError, match="expected_status"), store.unit_of_work() as uow:
        uow.update_case(case_id=case.id, expected_status=(), changes={}, event=None, at=T0)


def test_solution_amount_is_kept_as_a_string_with_cents(store: Store) -> None:
    case = open_case(store)
    solution = {"codes": ["refund"], "amount": 50, "text": "退款", "proposed_by": "甲"}  # approved_by left out
    updated = update(store, case, {"solution": solution})
    assert updated is not None and updated.solution == {
        "codes": ["refund"],
        "amount": "50.00",
        "text": "退款",
        "proposed_by": "甲",
        "approved_by": None,
    }
    assert store.get_case_by_id(case.id) == updated


def test_an_update_rolled_back_with_its_turn_leaves_the_case_and_timeline_alone(store: Store) -> None:
    case = open_case(store)
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        assert uow.update_case(
            case_id=case.id, expected_status="new", changes={"status": "claimed"}, event=("x", "y", {}), at=T0
        )
        raise RuntimeError("the customer notification could not be rendered")
    assert store.get_case_by_id(case.id) == case
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened"]


def test_simultaneous_updates_of_one_version_let_exactly_one_win(store: Store) -> None:
    case = open_case(store)

    def act(worker: int) -> CaseRecord | None:
        with store.unit_of_work() as uow:
            return uow.update_case(
                case_id=case.id,
                expected_status=None,
                expected_version=case.version,
                changes={"owner": f"telegram:{worker}", "owner_name": f"员工{worker}", "escalation_level": worker},
                event=("reassign", f"telegram:{worker}", {"worker": worker}),
                at=T0,
            )

    results = run_together(UPDATERS, act)
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    winner = winners[0]
    assert winner.version == case.version + 1 and store.get_case_by_id(case.id) == winner
    assert winner.owner == f"telegram:{winner.escalation_level}"
    reassigned = [e for e in store.get_case_events(case.id) if e.kind == "reassign"]
    assert [e.data for e in reassigned] == [{"worker": winner.escalation_level}]


# ----------------------------------------------------------------- cases_due


def set_deadlines(store: Store, case: CaseRecord, status: str = "claimed", **deadlines: datetime | None) -> CaseRecord:
    updated = update(store, case, {"status": status, **deadlines})
    assert updated is not None
    return updated


def test_cases_due_lists_only_open_cases_with_a_passed_deadline_earliest_first(store: Store) -> None:
    hour = timedelta(hours=1)
    a = set_deadlines(store, open_case(store), first_contact_due=T0 - 3 * hour)
    b = set_deadlines(store, open_case(store), next_update_due=T0 - hour, resolution_due=T0 - 5 * hour)
    c = set_deadlines(store, open_case(store), resolution_due=T0)  # due exactly now counts
    set_deadlines(store, open_case(store), first_contact_due=T0 + timedelta(seconds=1))  # not yet
    set_deadlines(store, open_case(store), "closed", first_contact_due=T0 - 9 * hour)  # finished
    set_deadlines(store, open_case(store), "rejected", resolution_due=T0 - 9 * hour)  # finished
    open_case(store)  # nothing promised
    h = set_deadlines(store, open_case(store), "new", first_contact_due=T0 - 2 * hour, next_update_due=T0 + hour)
    tie = set_deadlines(store, open_case(store), next_update_due=T0 - 3 * hour)  # same moment as a: id decides

    due = store.cases_due(now=T0)
    assert [case.id for case in due] == [b.id, a.id, tie.id, h.id, c.id]
    assert due[0] == store.get_case_by_id(b.id)
    assert [case.id for case in store.cases_due(now=T0, limit=2)] == [b.id, a.id]
    assert store.cases_due(now=T0, limit=0) == []
    assert store.cases_due(now=T0 - 10 * hour) == []
    with store.reading() as reader:  # the same on a UnitOfWork's or a reader's connection
        assert reader.cases_due(now=T0, limit=3) == due[:3]


def test_cases_due_matches_a_brute_force_scan_at_every_limit(store: Store) -> None:
    """A case whose earliest deadline is cut from its own index range still lands in its right place."""
    rnd = random.Random(20261122)
    hour = timedelta(hours=1)
    opened = []
    for _ in range(40):
        deadlines = {
            name: None if rnd.random() < 0.4 else T0 + rnd.randint(-6, 3) * hour for name in CASE_DEADLINES
        }
        status = rnd.choice(["new", "claimed", "proposed", "closed", "rejected"])
        opened.append(set_deadlines(store, open_case(store), status, **deadlines))

    def earliest(case: CaseRecord) -> datetime:
        return min(moment for moment in (getattr(case, name) for name in CASE_DEADLINES) if moment is not None)

    expected = sorted(
        (
            case
            for case in opened
            if case.status not in ("closed", "rejected")
            and any(getattr(case, name) is not None and getattr(case, name) <= T0 for name in CASE_DEADLINES)
        ),
        key=lambda case: (earliest(case), case.id),
    )
    assert len(expected) > 10
    for limit in range(1, len(expected) + 2):
        assert store.cases_due(now=T0, limit=limit) == expected[:limit], limit


def capture_plans(store: Store, plans: list[str]) -> Callable[..., None]:
    """A cursor hook that records the plan of the deadline scan (PostgreSQL: with sequential scans off)."""

    def explain(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if "due_first_contact_due" not in statement:
            return
        if conn.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plans.extend(row[-1] for row in cursor.fetchall())
        else:
            # Off for this transaction only: the plan then shows whether the indexes *can* serve
            # the query (whether their partial predicate is provable), whatever the table's size.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.extend(row[0] for row in cursor.fetchall())

    sqla_event.listen(store.engine, "before_cursor_execute", explain)
    return explain


def test_the_deadline_scan_reads_ranges_of_the_partial_indexes(store: Store) -> None:
    for index in range(12):
        status = ("claimed", "closed", "rejected")[index % 3]
        moment = T0 + timedelta(hours=index - 6)
        set_deadlines(store, open_case(store), status, first_contact_due=moment, next_update_due=moment,
                      resolution_due=moment)
    plans: list[str] = []
    hook = capture_plans(store, plans)
    try:
        assert len(store.cases_due(now=T0)) == 3
    finally:
        sqla_event.remove(store.engine, "before_cursor_execute", hook)
    plan = "\n".join(plans)
    for name in CASE_DEADLINES:
        assert f"ix_cases_{name}_open" in plan, plan
    if store.engine.dialect.name == "sqlite":
        assert not [line for line in plans if line.startswith("SCAN cases")], plan  # no full table scan
    else:
        assert "Seq Scan" not in plan, plan


# ----------------------------------------------------------------- reports and customers


def test_cases_in_month_counts_months_in_shanghai_time(store: Store) -> None:
    october_last = open_case(store, at=datetime(2026, 10, 31, 15, 59, 59, tzinfo=UTC))  # Oct 31 23:59:59 there
    november_first = open_case(store, at=datetime(2026, 10, 31, 16, 0, tzinfo=UTC))  # Nov 1 00:00
    november_early = open_case(store, at=datetime(2026, 10, 31, 16, 30, tzinfo=UTC))  # still Oct 31 in UTC
    november_last = open_case(store, at=datetime(2026, 11, 30, 15, 59, 59, 999999, tzinfo=UTC))
    december_first = open_case(store, at=datetime(2026, 11, 30, 16, 0, tzinfo=UTC))
    december_last = open_case(store, at=datetime(2026, 12, 31, 15, 59, tzinfo=UTC))
    january = open_case(store, at=datetime(2026, 12, 31, 16, 0, tzinfo=UTC))  # 2027-01-01 there

    def ids(year: int, month: int) -> list[int]:
        return [case.id for case in store.cases_in_month(year=year, month=month)]

    assert ids(2026, 10) == [october_last.id]
    assert ids(2026, 11) == [november_first.id, november_early.id, november_last.id]
    assert ids(2026, 12) == [december_first.id, december_last.id]
    assert ids(2027, 1) == [january.id]
    assert ids(2026, 9) == []
    assert store.cases_in_month(year=2026, month=11)[1] == store.get_case_by_id(november_early.id)
    with pytest.raises(ValueError):
        store.cases_in_month(year=2026, month=13)


def test_open_cases_for_customer_skips_finished_cases_and_never_shows_another_customers(store: Store) -> None:
    oldest = open_case(store, customer="A", at=T0)
    closed = set_deadlines(store, open_case(store, customer="A", at=T0 + timedelta(minutes=1)), "closed")
    rejected = set_deadlines(store, open_case(store, customer="A", at=T0 + timedelta(minutes=2)), "rejected")
    working = set_deadlines(store, open_case(store, customer="A", at=T0 + timedelta(minutes=3)), "verifying")
    b_case = open_case(store, customer="B", at=T0)
    telegram = open_case(store, customer="A", channel="telegram", at=T0)

    assert [c.id for c in store.open_cases_for_customer("wechat", "A")] == [working.id, oldest.id]
    assert store.open_cases_for_customer("wechat", "A")[0] == working
    assert [c.id for c in store.open_cases_for_customer("wechat", "B")] == [b_case.id]
    assert [c.id for c in store.open_cases_for_customer("telegram", "A")] == [telegram.id]
    assert store.open_cases_for_customer("wechat", "C") == []
    assert {c.id for c in store.cases_for_customer("wechat", "A")} == {oldest.id, closed.id, rejected.id, working.id}
