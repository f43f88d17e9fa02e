"""Claiming a case, on every backend: one owner, one "claimed" event, whoever taps first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from concurrently import run_together

from storage.repository import CaseDraft, CaseNotFound, CaseRecord, Store

T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
CLAIMERS = 8


def open_case(store: Store, *, unrouted: bool = False) -> CaseRecord:
    with store.unit_of_work() as uow:
        return uow.open_case(
            CaseDraft(
                channel="wechat",
                customer_id="o-1",
                conversation_id=1,
                fields={"mall": "sh-zhenbei"},
                transcript=[],
                opened_at=T0,
                unrouted=unrouted,
            )
        )


def test_first_claim_wins_and_later_ones_see_the_owner(store: Store) -> None:
    case = open_case(store)
    claimed_at = T0 + timedelta(minutes=3)
    with store.unit_of_work() as uow:
        won, claimed = uow.claim_case(case_id=case.id, owner="telegram:123456", owner_name="李经理", at=claimed_at)
    assert won
    assert (claimed.owner, claimed.owner_name, claimed.claimed_at) == ("telegram:123456", "李经理", claimed_at)
    assert claimed.status == "claimed" and claimed.updated_at == claimed_at
    assert claimed.fields == case.fields and claimed.created_at == case.created_at
    assert store.get_case_by_id(case.id) == claimed == store.get_case(case.number)

    with store.unit_of_work() as uow:
        won, current = uow.claim_case(
            case_id=case.id, owner="telegram:999", owner_name="王主管", at=claimed_at + timedelta(minutes=1)
        )
    assert not won and current == claimed
    with store.unit_of_work() as uow:  # the owner tapping again does not claim twice either
        won, _ = uow.claim_case(case_id=case.id, owner="telegram:123456", owner_name="李经理", at=claimed_at)
    assert not won

    events = store.get_case_events(case.id)
    assert [(e.kind, e.actor) for e in events] == [("opened", "customer"), ("claimed", "telegram:123456")]
    assert events[1].data == {"owner_name": "李经理"} and events[1].created_at == claimed_at
    assert claimed.public_dict()["owner_name"] == "李经理"


def test_claim_rolled_back_with_its_turn_leaves_the_case_free(store: Store) -> None:
    case = open_case(store)
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        assert uow.claim_case(case_id=case.id, owner="telegram:1", owner_name="甲", at=T0)[0]
        raise RuntimeError("notification edit failed")
    assert store.get_case_by_id(case.id) == case
    assert [e.kind for e in store.get_case_events(case.id)] == ["opened"]


def test_claiming_an_unknown_case_raises(store: Store) -> None:
    with pytest.raises(CaseNotFound), store.unit_of_work() as uow:
        uow.claim_case(case_id=4242, owner="telegram:1", owner_name="甲", at=T0)
    assert store.get_case_by_id(4242) is None


def test_unrouted_flag_round_trips(store: Store) -> None:
    routed, unrouted = open_case(store), open_case(store, unrouted=True)
    assert store.get_case_by_id(routed.id) == routed and routed.unrouted is False
    assert store.get_case_by_id(unrouted.id) == unrouted and unrouted.unrouted is True
    assert unrouted.public_dict()["unrouted"] is True


def test_simultaneous_claims_let_exactly_one_win(store: Store) -> None:
    case = open_case(store)

    def claim(worker: int) -> tuple[bool, CaseRecord]:
        with store.unit_of_work() as uow:
            return uow.claim_case(case_id=case.id, owner=f"telegram:{worker}", owner_name=f"员工{worker}", at=T0)

    results = run_together(CLAIMERS, claim)
    winners = [index for index, (won, _) in enumerate(results) if won]
    assert len(winners) == 1
    winner_name = f"员工{winners[0]}"
    assert {current.owner_name for _, current in results} == {winner_name}
    assert {current.owner for _, current in results} == {f"telegram:{winners[0]}"}
    claimed_events = [e for e in store.get_case_events(case.id) if e.kind == "claimed"]
    assert len(claimed_events) == 1 and claimed_events[0].data == {"owner_name": winner_name}
