"""The Store contract, run on every backend (the ``store`` fixture is SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session, select

from storage.models import PUBLIC_FIELDS, Case, Conversation
from storage.repository import CaseDraft, CaseRecord, StaleConversation, Store

T0 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # 10:30 in Shanghai

FULL_FIELDS: dict[str, Any] = {
    "name": "张",
    "phone": "13912345678",
    "city": "上海",
    "mall": "sh-zhenbei",
    "amount": Decimal("12800"),
    "purchase_date": date(2026, 10, 1),
    "brand": "顾家家居",
    "delivery_date": date(2026, 10, 15),
    "delivery_address": "上海市普陀区真北路1108号 3栋 502室",
    "order_no": "GJ-2026-0001 😀",
    "over_warranty": False,
    "priority": "important",
    "description": "沙发送来三天就塌了，扶手开裂 🛋️💢",
    "expectation": ["exchange", "compensation"],
}
TRANSCRIPT = [
    {"role": "customer", "text": "沙发坏了😡", "at": "2026-11-22T02:29:00+00:00"},
    {"role": "kesu", "text": "您好，请问您贵姓？", "at": "2026-11-22T02:29:01+00:00"},
]


def draft(
    fields: dict[str, Any] | None = None,
    *,
    customer: str = "cust-a",
    channel: str = "wechat",
    at: datetime = T0,
) -> CaseDraft:
    return CaseDraft(
        channel=channel,
        customer_id=customer,
        conversation_id=1,
        fields=dict(FULL_FIELDS if fields is None else fields),
        transcript=list(TRANSCRIPT),
        opened_at=at,
    )


def open_case(store: Store, case_draft: CaseDraft) -> CaseRecord:
    with store.unit_of_work() as uow:
        return uow.open_case(case_draft)


# ----------------------------------------------------------------- conversations


def test_conversation_round_trip_keeps_any_unicode(store: Store) -> None:
    state = {
        "step": "ask_phone",
        "fields": {"name": "周", "description": "客诉😀🎉 𠀀 é ‮rtl‬ 👨‍👩‍👧"},
        "long": "长" * 20_000,
        "list": [1, 2.5, None, True, "二"],
        "键": "值",
    }
    assert store.load_conversation("wechat", "o-1") is None
    with store.unit_of_work() as uow:
        saved = uow.save_conversation(
            channel="wechat", customer_id="o-1", state=state, expected_version=None, at=T0
        )
    loaded = store.load_conversation("wechat", "o-1")
    assert loaded == saved
    assert loaded.state == state and loaded.version == 1
    assert loaded.updated_at == T0 and loaded.updated_at.tzinfo is not None
    assert loaded.updated_at.utcoffset() == timedelta(0)


def test_conversation_is_per_channel_and_customer(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.save_conversation(channel="wechat", customer_id="x", state={"a": 1}, expected_version=None, at=T0)
        uow.save_conversation(
            channel="telegram", customer_id="x", state={"b": 2}, expected_version=None, at=T0
        )
    assert store.load_conversation("wechat", "x").state == {"a": 1}  # type: ignore[union-attr]
    assert store.load_conversation("telegram", "x").state == {"b": 2}  # type: ignore[union-attr]
    assert store.load_conversation("wechat", "y") is None


def test_optimistic_version_conflict(store: Store) -> None:
    with store.unit_of_work() as uow:
        first = uow.save_conversation(
            channel="tg", customer_id="1", state={"n": 1}, expected_version=None, at=T0
        )
    with store.unit_of_work() as uow:
        second = uow.save_conversation(
            channel="tg", customer_id="1", state={"n": 2}, expected_version=first.version, at=T0
        )
    assert second.version == first.version + 1
    with pytest.raises(StaleConversation), store.unit_of_work() as uow:
        uow.save_conversation(
            channel="tg", customer_id="1", state={"n": 3}, expected_version=first.version, at=T0
        )
    with pytest.raises(StaleConversation), store.unit_of_work() as uow:
        uow.save_conversation(channel="tg", customer_id="1", state={"n": 3}, expected_version=None, at=T0)
    with pytest.raises(StaleConversation), store.unit_of_work() as uow:
        uow.save_conversation(channel="tg", customer_id="nobody", state={}, expected_version=1, at=T0)
    assert store.load_conversation("tg", "1") == second


def test_stale_turn_rolls_back_and_retry_succeeds(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.save_conversation(channel="tg", customer_id="1", state={"n": 1}, expected_version=None, at=T0)
    with pytest.raises(StaleConversation), store.unit_of_work() as uow:
        uow.record_inbound(channel="tg", customer_id="1", text="hi", at=T0, channel_message_id="m1")
        uow.save_conversation(channel="tg", customer_id="1", state={"n": 9}, expected_version=7, at=T0)
    current = store.load_conversation("tg", "1")
    assert current is not None
    with store.unit_of_work() as uow:  # the caller reloads and retries the whole turn
        assert uow.record_inbound(channel="tg", customer_id="1", text="hi", at=T0, channel_message_id="m1")
        uow.save_conversation(
            channel="tg", customer_id="1", state={"n": 2}, expected_version=current.version, at=T0
        )
    assert store.load_conversation("tg", "1").version == 2  # type: ignore[union-attr]


# ----------------------------------------------------------------- messages


def test_duplicate_inbound_is_detected_and_first_replies_are_kept(store: Store) -> None:
    with store.unit_of_work() as uow:
        inbound = uow.record_inbound(
            channel="wechat", customer_id="o-1", text="在吗", at=T0, channel_message_id="777"
        )
        assert inbound is not None
        uow.record_outbound(
            channel="wechat", customer_id="o-1", texts=["您好", "请问您贵姓？"], in_reply_to=inbound, at=T0
        )
    with store.unit_of_work() as uow:  # the platform retried the same MsgId
        again = uow.record_inbound(
            channel="wechat", customer_id="o-1", text="在吗", at=T0, channel_message_id="777"
        )
    assert again is None
    assert store.replies_for("wechat", "o-1", "777") == ["您好", "请问您贵姓？"]
    assert store.replies_for("wechat", "o-1", "never-seen") is None
    assert store.replies_for("telegram", "o-1", "777") is None
    # Message ids are only unique per chat: another customer's "777" is a new message.
    assert store.replies_for("wechat", "o-2", "777") is None
    with store.unit_of_work() as uow:
        other = uow.record_inbound(channel="wechat", customer_id="o-2", text="你好", at=T0, channel_message_id="777")
    assert other is not None
    assert len(store.messages("wechat", "o-1")) == 3


def test_replies_only_for_their_inbound(store: Store) -> None:
    with store.unit_of_work() as uow:
        first = uow.record_inbound(channel="tg", customer_id="c", text="1", at=T0, channel_message_id="a")
        uow.record_outbound(channel="tg", customer_id="c", texts=["r1"], in_reply_to=first, at=T0)
    with store.unit_of_work() as uow:
        second = uow.record_inbound(channel="tg", customer_id="c", text="2", at=T0, channel_message_id="b")
        uow.record_outbound(channel="tg", customer_id="c", texts=["r2a", "r2b"], in_reply_to=second, at=T0)
        uow.record_outbound(channel="tg", customer_id="c", texts=["push"], in_reply_to=None, at=T0)
    with store.unit_of_work() as uow:
        uow.record_inbound(channel="tg", customer_id="c", text="3", at=T0, channel_message_id="c")
    assert store.replies_for("tg", "c", "a") == ["r1"]
    assert store.replies_for("tg", "c", "b") == ["r2a", "r2b"]
    assert store.replies_for("tg", "c", "c") == []


def test_inbound_without_platform_id_always_inserts(store: Store) -> None:
    with store.unit_of_work() as uow:
        ids = [
            uow.record_inbound(channel="cli", customer_id="me", text="same", at=T0, channel_message_id=None)
            for _ in range(3)
        ]
        same_id_other_channel = uow.record_inbound(
            channel="tg", customer_id="me", text="x", at=T0, channel_message_id="1"
        )
        uow.record_inbound(channel="wechat", customer_id="me", text="x", at=T0, channel_message_id="1")
    assert None not in ids and len(set(ids)) == 3
    assert same_id_other_channel is not None


def test_message_text_round_trip(store: Store) -> None:
    text = "".join(chr(cp) for cp in range(0x20, 0x3000) if not 0xD800 <= cp <= 0xDFFF)
    text += "客诉😀🎉𠀀👨‍👩‍👧\n\t" * 100
    text = (text * (50_000 // len(text) + 1))[:50_000]
    with store.unit_of_work() as uow:
        uow.record_inbound(channel="tg", customer_id="u", text=text, at=T0, channel_message_id="1")
        uow.record_outbound(channel="tg", customer_id="u", texts=["好的\x00了"], in_reply_to=None, at=T0)
    stored = store.messages("tg", "u")
    assert [m.direction for m in stored] == ["in", "out"]
    assert stored[0].text == text and len(stored[0].text) == 50_000
    assert stored[1].text == "好的\ufffd了"  # PostgreSQL cannot store NUL: replaced on every backend
    assert stored[0].created_at == T0


def test_messages_are_oldest_first_and_limited_to_the_newest(store: Store) -> None:
    with store.unit_of_work() as uow:
        for i in range(5):
            uow.record_inbound(
                channel="tg",
                customer_id="u",
                text=f"m{i}",
                at=T0 + timedelta(seconds=i),
                channel_message_id=None,
            )
    assert [m.text for m in store.messages("tg", "u")] == ["m0", "m1", "m2", "m3", "m4"]
    assert [m.text for m in store.messages("tg", "u", limit=2)] == ["m3", "m4"]
    assert store.messages("tg", "other") == []


def test_rollback_on_exception_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        inbound = uow.record_inbound(channel="tg", customer_id="1", text="hi", at=T0, channel_message_id="m1")
        uow.save_conversation(channel="tg", customer_id="1", state={"a": 1}, expected_version=None, at=T0)
        uow.record_outbound(channel="tg", customer_id="1", texts=["hello"], in_reply_to=inbound, at=T0)
        uow.open_case(draft(customer="1", channel="tg"))
        raise RuntimeError("handler crashed")
    assert store.load_conversation("tg", "1") is None
    assert store.replies_for("tg", "1", "m1") is None
    assert store.messages("tg", "1") == []
    assert store.list_cases() == []
    assert open_case(store, draft()).number.startswith("KS261122001")  # the counter was rolled back too


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError), store.unit_of_work() as uow:
        uow.record_inbound(
            channel="tg", customer_id="1", text="x", at=datetime(2026, 1, 1), channel_message_id=None
        )
    with pytest.raises(ValueError):
        open_case(store, draft(at=datetime(2026, 1, 1)))


# ----------------------------------------------------------------- cases


def test_open_case_round_trips_every_field(store: Store) -> None:
    opened = open_case(store, draft())
    assert opened.status == "new" and opened.channel == "wechat" and opened.customer_id == "cust-a"
    assert opened.created_at == T0 == opened.updated_at
    fetched = store.get_case(opened.number)
    assert fetched == opened
    assert fetched.fields == FULL_FIELDS
    assert set(fetched.fields) == set(PUBLIC_FIELDS)
    assert fetched.fields["amount"] == Decimal("12800") and isinstance(fetched.fields["amount"], Decimal)
    assert fetched.fields["over_warranty"] is False
    assert fetched.owner is None and fetched.owner_name is None and fetched.claimed_at is None
    assert fetched.unrouted is False
    assert fetched.fields["purchase_date"] == date(2026, 10, 1)
    assert fetched.transcript == TRANSCRIPT
    assert fetched.created_at.utcoffset() == timedelta(0)


def test_open_case_with_fractional_amount_and_missing_fields(store: Store) -> None:
    opened = open_case(store, draft({"amount": 3500.5, "description": "门板开裂", "expectation": ["repair"]}))
    fetched = store.get_case(opened.number)
    assert fetched == opened
    assert fetched.fields["amount"] == Decimal("3500.50")
    assert fetched.fields["over_warranty"] is None
    assert fetched.fields["purchase_date"] is None and fetched.fields["name"] is None
    assert fetched.fields["priority"] == "normal"  # graded, never missing
    assert fetched.public_dict()["amount"] == 3500.5


def test_public_dict_is_json_ready_with_exact_keys(store: Store) -> None:
    whole = open_case(store, draft()).public_dict()
    assert set(whole) == {"number", "status", "created_at", *PUBLIC_FIELDS, "owner_name", "unrouted"}
    assert whole["owner_name"] is None and whole["unrouted"] is False
    assert json.loads(json.dumps(whole, ensure_ascii=False)) == whole
    assert whole["amount"] == 12800 and isinstance(whole["amount"], int)
    assert whole["purchase_date"] == "2026-10-01" and whole["delivery_date"] == "2026-10-15"
    assert whole["over_warranty"] is False
    assert whole["expectation"] == ["exchange", "compensation"]
    assert whole["status"] == "new"
    assert datetime.fromisoformat(whole["created_at"]) == T0
    empty = open_case(store, draft({})).public_dict()
    assert empty["amount"] is None and empty["over_warranty"] is None and empty["expectation"] == []


def test_open_case_rejects_unknown_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown case fields"):
        open_case(store, draft({"nmae": "张"}))
    assert store.list_cases() == []


def test_opening_records_an_event_and_the_timeline_grows(store: Store) -> None:
    case = open_case(store, draft())
    with store.unit_of_work() as uow:
        uow.add_case_event(
            case_id=case.id,
            kind="field_changed",
            actor="staff:李经理",
            data={"field": "phone", "old": None, "new": "13912345678"},
            at=T0 + timedelta(minutes=5),
        )
    events = store.get_case_events(case.id)
    assert [(e.kind, e.actor) for e in events] == [("opened", "customer"), ("field_changed", "staff:李经理")]
    assert events[0].data == {"channel": "wechat"} and events[0].created_at == T0
    assert events[1].data["new"] == "13912345678"
    assert store.get_case_events(case.id + 1000) == []


def test_case_numbers_restart_every_shanghai_day(store: Store) -> None:
    before_midnight = datetime(2026, 11, 22, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    after_midnight = datetime(2026, 11, 22, 16, 0, 1, tzinfo=UTC)  # 00:00:01 next day in Shanghai
    first = open_case(store, draft(at=before_midnight))
    next_day = open_case(store, draft(at=after_midnight))
    second = open_case(store, draft(at=T0))
    next_day_2 = open_case(store, draft(at=after_midnight + timedelta(hours=3)))
    assert [first.number[:11], second.number[:11]] == ["KS261122001", "KS261122002"]
    assert [next_day.number[:11], next_day_2.number[:11]] == ["KS261123001", "KS261123002"]


def test_get_case_accepts_typed_variants(store: Store) -> None:
    number = open_case(store, draft()).number
    day, counter, check = number[2:8], number[8:-1], number[-1]
    fullwidth = "".join(chr(ord(ch) + 0xFEE0) for ch in number)
    for typed in (
        number.lower(),
        f"KS-{day}-{counter}-{check}",
        f" ks {day} {counter} {check} ",
        fullwidth,
        number[2:],
    ):
        found = store.get_case(typed)
        assert found is not None and found.number == number, typed
    typo = number[:-2] + str((int(number[-2]) + 1) % 10) + number[-1]
    assert store.get_case(typo) is None
    assert store.get_case("KS2611220029") is None  # valid shape, no such case
    assert store.get_case("你好") is None


def test_list_cases_newest_first_with_mall_filter_and_paging(store: Store) -> None:
    middle = open_case(store, draft({"mall": "sh-zhenbei"}, at=T0 + timedelta(hours=1)))
    newest = open_case(store, draft({"mall": "sh-pudong"}, at=T0 + timedelta(hours=2)))
    oldest = open_case(store, draft({"mall": "sh-zhenbei"}, at=T0))
    assert [c.number for c in store.list_cases()] == [newest.number, middle.number, oldest.number]
    assert [c.number for c in store.list_cases(mall="sh-zhenbei")] == [middle.number, oldest.number]
    assert [c.number for c in store.list_cases(limit=1, offset=1)] == [middle.number]
    assert store.list_cases(mall="nowhere") == []


def test_cases_for_customer_never_shows_another_customers_case(store: Store) -> None:
    a1 = open_case(store, draft(customer="A", at=T0))
    b1 = open_case(store, draft(customer="B", at=T0 + timedelta(minutes=1)))
    a2 = open_case(store, draft(customer="A", at=T0 + timedelta(minutes=2)))
    other_channel = open_case(store, draft(customer="A", channel="telegram", at=T0))
    assert [c.number for c in store.cases_for_customer("wechat", "A")] == [a2.number, a1.number]
    assert [c.number for c in store.cases_for_customer("wechat", "B")] == [b1.number]
    assert [c.number for c in store.cases_for_customer("telegram", "A")] == [other_channel.number]
    assert store.cases_for_customer("wechat", "C") == []


def test_models_also_work_through_an_orm_session(store: Store) -> None:
    """Staff tools may use the SQLModel classes directly; they read what the Core hot path wrote."""
    number = open_case(store, draft()).number
    with Session(store.engine) as session:
        case = session.exec(select(Case).where(Case.number == number)).one()
        assert case.amount == Decimal("12800") and case.over_warranty is False
        assert case.created_at == T0 and case.expectation == ["exchange", "compensation"]
        session.add(Conversation(channel="cli", customer_id="staff", state={"备注": "回访"}))
        session.commit()
    loaded = store.load_conversation("cli", "staff")
    assert loaded is not None and loaded.state == {"备注": "回访"} and loaded.version == 1
