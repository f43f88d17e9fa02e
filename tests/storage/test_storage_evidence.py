"""Evidence, on every backend: kept per customer, joined to their case, never to anyone else's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storage.repository import CaseDraft, EvidenceRecord, Store, UnitOfWork

T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)


def add(uow: UnitOfWork, customer: str, file_ref: str, *, channel: str = "telegram", **extra: Any) -> int:
    values: dict[str, Any] = {
        "kind": "photo",
        "file_name": None,
        "mime": None,
        "caption": None,
        "channel_message_id": None,
        "at": T0,
        **extra,
    }
    return uow.add_evidence(channel=channel, customer_id=customer, file_ref=file_ref, **values)


def open_case(uow: UnitOfWork, customer: str, *, channel: str = "telegram") -> int:
    draft = CaseDraft(channel=channel, customer_id=customer, conversation_id=1, fields={}, transcript=[], opened_at=T0)
    return uow.open_case(draft).id


def test_evidence_sent_before_the_case_is_attached_when_it_opens(store: Store) -> None:
    with store.unit_of_work() as uow:
        photo = add(uow, "A", "AgACAgUAAxkBAAIB", caption="扶手开裂\x00😡", channel_message_id="17", at=T0)
        document = add(
            uow,
            "A",
            "BQACAgUAAxkBAAIC",
            kind="document",
            file_name="发票 2026.pdf",
            mime="application/pdf",
            at=T0 + timedelta(seconds=5),
        )
        other_customer = add(uow, "B", "AgACAgUAAxkBAAID")
        other_channel = add(uow, "A", "media-1", channel="wechat")
    with store.unit_of_work() as uow:
        case_id = open_case(uow, "A")
        assert uow.attach_evidence(channel="telegram", customer_id="A", case_id=case_id) == 2
        assert [e.id for e in uow.evidence_for_case(case_id)] == [photo, document]  # the turn sees its own writes

    attached = store.evidence_for_case(case_id)
    assert attached == [
        EvidenceRecord(
            id=photo,
            channel="telegram",
            customer_id="A",
            case_id=case_id,
            kind="photo",
            file_ref="AgACAgUAAxkBAAIB",
            file_name=None,
            mime=None,
            caption="扶手开裂\ufffd😡",
            created_at=T0,
        ),
        EvidenceRecord(
            id=document,
            channel="telegram",
            customer_id="A",
            case_id=case_id,
            kind="document",
            file_ref="BQACAgUAAxkBAAIC",
            file_name="发票 2026.pdf",
            mime="application/pdf",
            caption=None,
            created_at=T0 + timedelta(seconds=5),
        ),
    ]
    assert {other_customer, other_channel}.isdisjoint(e.id for e in attached)


def test_attach_never_takes_another_customers_or_an_earlier_cases_evidence(store: Store) -> None:
    with store.unit_of_work() as uow:
        first_case = open_case(uow, "A")
        add(uow, "A", "a-1")
        assert uow.attach_evidence(channel="telegram", customer_id="A", case_id=first_case) == 1
        b_file = add(uow, "B", "b-1")
        a_later = add(uow, "A", "a-2", kind="video", mime="video/mp4")
    with store.unit_of_work() as uow:
        second_case = open_case(uow, "A")
        assert uow.attach_evidence(channel="telegram", customer_id="A", case_id=second_case) == 1
        assert uow.attach_evidence(channel="telegram", customer_id="A", case_id=second_case) == 0
        b_case = open_case(uow, "B")
        assert uow.attach_evidence(channel="telegram", customer_id="B", case_id=b_case) == 1
    assert [e.file_ref for e in store.evidence_for_case(first_case)] == ["a-1"]
    assert [e.id for e in store.evidence_for_case(second_case)] == [a_later]
    assert [e.id for e in store.evidence_for_case(b_case)] == [b_file]
    assert store.evidence_for_case(second_case + 1000) == []


def test_rolled_back_evidence_is_gone_and_unknown_kinds_are_refused(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        add(uow, "A", "lost")
        raise RuntimeError("turn failed")
    with pytest.raises(ValueError, match="evidence kind"), store.unit_of_work() as uow:
        add(uow, "A", "sticker-1", kind="sticker")
    with store.unit_of_work() as uow:
        case_id = open_case(uow, "A")
        assert uow.attach_evidence(channel="telegram", customer_id="A", case_id=case_id) == 0
    with pytest.raises(ValueError), store.unit_of_work() as uow:
        add(uow, "A", "x", at=datetime(2026, 1, 1))
