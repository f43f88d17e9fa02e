"""The intake service end to end on a real database (SQLite and PostgreSQL): what customers and staff see."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from concurrently import run_together

from bot.service import InboundMessage, IntakeService, TurnOutcome
from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from dialogs.fields import FIELD_KEYS
from storage.repository import Store

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=SHANGHAI)
CHANNEL = "wechat"
ZHENBEI = "红星美凯龙上海真北商场"


def opening(name: str = "王丽", phone: str = "13812345678") -> str:
    return f"我叫{name}，电话{phone}，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"


# After the opening the bot still needs: delivery date, delivery address, order number; then the summary.
FOLLOW_UPS = ("11月20号送的", "上海市普陀区真北路1号", "没有")
CONFIRM = "确认"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def make_service(store: Store, catalog: Catalog, renderer: Renderer) -> IntakeService:
    return IntakeService(store, catalog, renderer, clock=lambda: NOW)


@pytest.fixture
def service(store: Store, catalog: Catalog, renderer: Renderer) -> IntakeService:
    return make_service(store, catalog, renderer)


def send(service: IntakeService, customer: str, text: str, message_id: str | None = None, *,
         channel: str = CHANNEL, at: datetime | None = None) -> TurnOutcome:
    outcome = service.handle(InboundMessage(channel, customer, text, message_id, at))
    assert outcome.replies, f"no reply to {text[:40]!r}"
    assert all(isinstance(reply, str) and reply.strip() for reply in outcome.replies)
    return outcome


def complete_intake(service: IntakeService, customer: str, *, name: str = "王丽", phone: str = "13812345678",
                    channel: str = CHANNEL, at: Callable[[], datetime | None] = lambda: None) -> list[TurnOutcome]:
    outcomes = [send(service, customer, opening(name, phone), channel=channel, at=at())]
    outcomes += [send(service, customer, text, channel=channel, at=at()) for text in FOLLOW_UPS]
    assert outcomes[-1].state.phase == "confirming", outcomes[-1].replies
    assert outcomes[-1].case is None
    outcomes.append(send(service, customer, CONFIRM, channel=channel, at=at()))
    assert outcomes[-1].case is not None, outcomes[-1].replies
    return outcomes


def inbound_texts(store: Store, customer: str, channel: str = CHANNEL) -> list[str]:
    return [m.text for m in store.messages(channel, customer, limit=1000) if m.direction == "in"]


def version_of(store: Store, customer: str, channel: str = CHANNEL) -> int:
    record = store.load_conversation(channel, customer)
    assert record is not None
    return record.version


# --------------------------------------------------------------------------- a complete intake


def test_full_intake_opens_a_case_with_every_field_stored(service: IntakeService, store: Store) -> None:
    outcomes = complete_intake(service, "o-wangli")
    case = outcomes[-1].case
    assert case is not None
    assert case.number.startswith("KS261122")  # opened on 2026-11-22 in Shanghai
    confirmation = "\n".join(outcomes[-1].replies)
    assert case.number in confirmation
    assert "24小时内与您联系" in confirmation

    stored = store.get_case(case.number)
    assert stored is not None
    assert stored.status == "new"
    assert (stored.channel, stored.customer_id) == (CHANNEL, "o-wangli")
    assert set(stored.fields) == set(FIELD_KEYS)
    fields = dict(stored.fields)
    assert "扶手开裂" in fields.pop("description")
    assert fields == {
        "name": "王丽",
        "phone": "13812345678",
        "city": "上海",
        "mall": "sh-zhenbei",
        "amount": Decimal(12800),
        "purchase_date": date(2025, 12, 8),
        "brand": "顾家家居",
        "delivery_date": date(2026, 11, 20),
        "delivery_address": "上海市普陀区真北路1号",
        "order_no": None,
        "over_warranty": False,
        "priority": "normal",
        "expectation": ["exchange"],
    }
    # Staff and customers may type the number sloppily.
    lower_dashed = f"{case.number[:2]}-{case.number[2:8]}-{case.number[8:]}".lower()
    found = store.get_case(lower_dashed)
    assert found is not None and found.number == case.number


def test_summary_before_confirmation_shows_what_was_recorded(service: IntakeService) -> None:
    outcomes = [send(service, "o-1", opening()), *(send(service, "o-1", t) for t in FOLLOW_UPS)]
    summary = outcomes[-1].replies[-1]
    for expected in ("王丽", "13812345678", ZHENBEI, "12,800元", "2025年12月8日", "顾家家居", "2026年11月20日",
                     "上海市普陀区真北路1号", "换货", "确认"):
        assert expected in summary
    assert outcomes[-1].state.asking is None


def test_after_the_case_the_next_message_starts_a_fresh_intake(service: IntakeService, store: Store) -> None:
    complete_intake(service, "o-1")
    state = service.state_of(CHANNEL, "o-1")
    assert state.fields == {}
    assert state.phase == "collecting"
    outcome = send(service, "o-1", "还有一个问题，茶几的玻璃也裂了")
    assert outcome.case is None
    assert len(store.cases_for_customer(CHANNEL, "o-1")) == 1
    assert "茶几的玻璃也裂了" in outcome.state.fields.get("description", "")


def test_case_transcript_contains_the_customers_messages(service: IntakeService, store: Store) -> None:
    outcomes = complete_intake(service, "o-1")
    case = outcomes[-1].case
    assert case is not None
    stored = store.get_case(case.number)
    assert stored is not None
    said = [line["text"] for line in stored.transcript if line["role"] == "customer"]
    assert said == [opening(), *FOLLOW_UPS, CONFIRM]
    kesu = [line["text"] for line in stored.transcript if line["role"] == "kesu"]
    for outcome in outcomes[:-1]:
        for reply in outcome.replies:
            assert reply in kesu
    assert all(line.get("at") for line in stored.transcript)


def test_second_case_transcript_holds_only_its_own_intake(service: IntakeService, store: Store) -> None:
    clock = iter(NOW + timedelta(minutes=minute) for minute in range(100))
    first = complete_intake(service, "o-1", at=lambda: next(clock))[-1].case
    second = complete_intake(service, "o-1", name="王丽", phone="13912345678", at=lambda: next(clock))[-1].case
    assert first is not None and second is not None and first.number != second.number
    stored = store.get_case(second.number)
    assert stored is not None
    texts = [line["text"] for line in stored.transcript]
    assert not any(first.number in text for text in texts)
    said = [line["text"] for line in stored.transcript if line["role"] == "customer"]
    assert said == [opening("王丽", "13912345678"), *FOLLOW_UPS, CONFIRM]


# --------------------------------------------------------------------------- channel retries


def test_duplicate_message_id_gets_identical_replies_and_changes_nothing(service: IntakeService,
                                                                         store: Store) -> None:
    first = send(service, "o-1", "沙发扶手开裂了", "msg-1")
    second = send(service, "o-1", "我叫王丽", "msg-2")
    assert not first.duplicate and not second.duplicate
    version = version_of(store, "o-1")
    messages = store.messages(CHANNEL, "o-1", limit=1000)

    retry = send(service, "o-1", "我叫王丽", "msg-2")
    assert retry.duplicate is True
    assert retry.replies == second.replies
    assert retry.state == second.state
    # A retry of an older message, even with altered text, is not processed again either.
    old_retry = send(service, "o-1", "我叫李雷", "msg-1")
    assert old_retry.duplicate is True
    assert old_retry.replies == first.replies
    assert version_of(store, "o-1") == version
    assert store.messages(CHANNEL, "o-1", limit=1000) == messages
    assert service.state_of(CHANNEL, "o-1").fields.get("name") == "王丽"

    after = send(service, "o-1", "电话13812345678", "msg-3")
    assert not after.duplicate
    assert after.state.fields["phone"] == "13812345678"
    assert version_of(store, "o-1") == version + 1


def test_retried_confirmation_does_not_open_a_second_case(service: IntakeService, store: Store) -> None:
    for index, text in enumerate((opening(), *FOLLOW_UPS)):
        send(service, "o-1", text, f"m{index}")
    opened = send(service, "o-1", CONFIRM, "m-confirm")
    assert opened.case is not None
    retry = send(service, "o-1", CONFIRM, "m-confirm")
    assert retry.duplicate is True
    assert retry.case is None
    assert retry.replies == opened.replies
    assert [c.number for c in store.list_cases()] == [opened.case.number]


def test_the_same_message_racing_its_retry_is_processed_once(service: IntakeService, store: Store) -> None:
    send(service, "o-1", "沙发扶手开裂了", "m0")
    version = version_of(store, "o-1")
    outcomes = run_together(4, lambda _: service.handle(InboundMessage(CHANNEL, "o-1", "我叫王丽", "m1")))
    assert sum(not o.duplicate for o in outcomes) == 1
    assert len({tuple(o.replies) for o in outcomes}) == 1
    assert inbound_texts(store, "o-1") == ["沙发扶手开裂了", "我叫王丽"]
    assert version_of(store, "o-1") == version + 1


def test_same_message_id_from_two_customers_is_not_a_retry(service: IntakeService, store: Store) -> None:
    a = send(service, "chat-100", opening(), "1", channel="telegram")
    b = send(service, "chat-200", "你好", "1", channel="telegram")
    assert not b.duplicate
    assert not any("王丽" in reply or "13812345678" in reply for reply in b.replies)
    assert b.replies != a.replies
    assert inbound_texts(store, "chat-200", "telegram") == ["你好"]


# --------------------------------------------------------------------------- restarts


def test_a_restart_between_turns_loses_nothing(store: Store, db_url: str, catalog: Catalog,
                                               renderer: Renderer) -> None:
    before = make_service(store, catalog, renderer)
    send(before, "o-1", "沙发扶手开裂了，坐垫也塌了")
    send(before, "o-1", "我叫王丽")
    said = send(before, "o-1", "电话13812345678")
    store.close()  # the process dies here

    restarted_store = Store.from_url(db_url)
    try:
        after = make_service(restarted_store, catalog, renderer)
        state = after.state_of(CHANNEL, "o-1")
        assert state == said.state
        assert state.asking == "mall"
        assert state.fields["name"] == "王丽" and state.fields["phone"] == "13812345678"
        assert "坐垫也塌了" in state.fields["description"]

        outcome = send(after, "o-1", "真北店买的顾家沙发，去年12月8号买的，12800")
        assert outcome.state.fields["name"] == "王丽"
        for text in (*FOLLOW_UPS, "换货"):
            outcome = send(after, "o-1", text)
        assert outcome.state.phase == "confirming", outcome.replies
        case = send(after, "o-1", CONFIRM).case
        assert case is not None
        stored = restarted_store.get_case(case.number)
        assert stored is not None
        assert stored.fields["name"] == "王丽"
        assert stored.fields["phone"] == "13812345678"
        assert stored.fields["mall"] == "sh-zhenbei"
        assert "坐垫也塌了" in stored.fields["description"]
        said_by_customer = [line["text"] for line in stored.transcript if line["role"] == "customer"]
        assert said_by_customer[:3] == ["沙发扶手开裂了，坐垫也塌了", "我叫王丽", "电话13812345678"]
    finally:
        restarted_store.close()


# --------------------------------------------------------------------------- status and privacy


def test_status_query_after_opening_a_case_shows_its_number(service: IntakeService) -> None:
    case = complete_intake(service, "o-1")[-1].case
    assert case is not None
    outcome = send(service, "o-1", "我的投诉怎么样了")
    text = "\n".join(outcome.replies)
    assert case.number in text
    assert ZHENBEI in text
    assert outcome.case is None
    # Typing the number works too, in the sloppy forms customers use.
    typed = f"{case.number[2:8]}-{case.number[8:]}".lower()
    text = "\n".join(send(service, "o-1", f"ks{typed}怎么样了").replies)
    assert case.number in text
    assert "没有查到" not in text


def test_status_query_before_any_case(service: IntakeService) -> None:
    text = "\n".join(send(service, "o-1", "我的投诉怎么样了").replies)
    assert "还没有提交过投诉" in text


def test_status_query_in_the_middle_of_an_intake_resumes_it(service: IntakeService) -> None:
    send(service, "o-1", "沙发扶手开裂了")
    outcome = send(service, "o-1", "我的投诉怎么样了")
    assert outcome.state.asking == "name"
    assert outcome.state.fields["description"] == "沙发扶手开裂了"
    assert outcome.replies[-1].startswith("请问您怎么称呼")


def test_two_customers_are_isolated(service: IntakeService, store: Store) -> None:
    case = complete_intake(service, "o-alice")[-1].case
    assert case is not None
    send(service, "o-bob", "柜门掉了")

    status = send(service, "o-bob", "我的投诉怎么样了")
    text = "\n".join(status.replies)
    assert case.number not in text
    assert "王丽" not in text and "13812345678" not in text

    for typed in (case.number, case.number.lower(), f"{case.number}怎么样了"):
        outcome = send(service, "o-bob", typed)
        text = "\n".join(outcome.replies)
        assert "没有查到" in text
        assert "王丽" not in text and "5678" not in text and ZHENBEI not in text
        assert "name" not in outcome.state.fields and "phone" not in outcome.state.fields
    assert store.cases_for_customer(CHANNEL, "o-bob") == []
    assert service.state_of(CHANNEL, "o-bob").fields == {"description": "柜门掉了"}

    # The same customer id on another channel is another person.
    other = send(service, "o-alice", "我的投诉怎么样了", channel="telegram")
    assert case.number not in "\n".join(other.replies)


def test_status_shows_the_day_the_case_was_opened_in_shanghai(service: IntakeService) -> None:
    just_after_midnight = datetime(2026, 11, 23, 0, 30, tzinfo=SHANGHAI)
    case = complete_intake(service, "o-1", at=lambda: just_after_midnight)[-1].case
    assert case is not None and case.number.startswith("KS261123")
    text = "\n".join(send(service, "o-1", "我的投诉怎么样了", at=just_after_midnight).replies)
    assert "2026年11月23日" in text


# --------------------------------------------------------------------------- concurrency

NAMES = ("王丽", "李雷", "张伟", "刘洋", "陈静", "杨帆", "赵敏", "周杰")


def test_many_customers_at_once(service: IntakeService, store: Store) -> None:
    def customer(index: int) -> str:
        return f"o-{index}"

    def work(index: int) -> list[TurnOutcome]:
        return complete_intake(service, customer(index), name=NAMES[index], phone=f"1381234{5670 + index}")

    results = run_together(len(NAMES), work)
    numbers = [outcomes[-1].case.number for outcomes in results if outcomes[-1].case]
    assert len(set(numbers)) == len(NAMES)
    for index, outcomes in enumerate(results):
        case = outcomes[-1].case
        assert case is not None
        stored = store.get_case(case.number)
        assert stored is not None
        assert stored.customer_id == customer(index)
        assert stored.fields["name"] == NAMES[index]
        assert stored.fields["phone"] == f"1381234{5670 + index}"
        assert [line["text"] for line in stored.transcript if line["role"] == "customer"] == [
            opening(NAMES[index], f"1381234{5670 + index}"), *FOLLOW_UPS, CONFIRM]
        assert inbound_texts(store, customer(index)) == [opening(NAMES[index], f"1381234{5670 + index}"),
                                                         *FOLLOW_UPS, CONFIRM]
        assert version_of(store, customer(index)) == 1 + len(FOLLOW_UPS) + 1


FACTS = {"name": ("我叫张伟", "张伟"), "phone": ("电话13812345678", "13812345678"),
         "mall": ("在真北店买的", "sh-zhenbei"), "brand": ("牌子是顾家", "顾家家居")}


@pytest.mark.parametrize("existing", [True, False], ids=["ongoing", "first-contact"])
@pytest.mark.parametrize("racers", [2, 4])
def test_one_customer_sending_messages_at_the_same_moment(service: IntakeService, store: Store,
                                                          existing: bool, racers: int) -> None:
    if existing:
        send(service, "o-1", "沙发扶手开裂了")
    version = version_of(store, "o-1") if existing else 0
    facts = list(FACTS.items())[:racers]

    outcomes = run_together(racers, lambda i: service.handle(InboundMessage(CHANNEL, "o-1", facts[i][1][0])))

    assert all(o.replies and not o.duplicate for o in outcomes)
    assert version_of(store, "o-1") == version + racers
    said = inbound_texts(store, "o-1")
    assert sorted(said) == sorted([*(["沙发扶手开裂了"] if existing else []), *(text for _, (text, _) in facts)])
    state = service.state_of(CHANNEL, "o-1")
    for key, (_, value) in facts:
        assert state.fields.get(key) == value, (key, state.fields)
    if existing:
        assert state.fields["description"] == "沙发扶手开裂了"


# --------------------------------------------------------------------------- bad input

RANT = "我真的太生气了，" * 2500  # 20 000 characters
BAD_INPUTS = {
    "20000-chars": RANT,
    "control-chars": "\x00\x01\x07\x1b\x7f\u200b\u202e",
    "jinja": "{{ 7*7 }}",
    "jinja-block": "{% for x in range(9) %}{{ x }}{% endfor %}{#",
    "emoji-only": "😡😡😡🙄",
    "empty": "",
    "whitespace": " \n\t\u3000 ",
}


def stored_form(text: str) -> str:
    return text.replace("\x00", "\ufffd")  # PostgreSQL cannot hold NUL; both backends store U+FFFD


@pytest.mark.parametrize("text", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_mid_intake_gets_a_polite_reply_and_the_intake_carries_on(service: IntakeService, store: Store,
                                                                           text: str) -> None:
    before = send(service, "o-1", "沙发扶手开裂了")
    assert before.state.asking == "name"

    outcome = send(service, "o-1", text)
    assert outcome.case is None
    assert all("49" not in reply for reply in outcome.replies)
    assert outcome.state.asking == "name"
    assert outcome.state.fields == before.state.fields
    assert outcome.replies[-1].startswith("请问您怎么称呼")  # the same question, asked again
    assert inbound_texts(store, "o-1")[-1] == stored_form(text)

    after = send(service, "o-1", "我姓张")
    assert after.state.fields["name"] == "张"
    assert after.state.fields["description"] == "沙发扶手开裂了"
    assert after.state.asking == "phone"


@pytest.mark.parametrize("text", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_as_the_very_first_message(service: IntakeService, store: Store, text: str) -> None:
    outcome = send(service, "o-1", text)
    assert outcome.case is None
    assert all("49" not in reply for reply in outcome.replies)
    assert inbound_texts(store, "o-1") == [stored_form(text)]
    assert outcome.state.asking == "description"
    follow = send(service, "o-1", "沙发扶手开裂了")
    assert follow.state.fields["description"] == "沙发扶手开裂了"


def test_bad_input_while_confirming_opens_nothing(service: IntakeService, store: Store) -> None:
    send(service, "o-1", opening())
    for text in FOLLOW_UPS:
        confirming = send(service, "o-1", text)
    assert confirming.state.phase == "confirming"
    for text in BAD_INPUTS.values():
        outcome = send(service, "o-1", text)
        assert outcome.case is None
        assert outcome.state.phase == "confirming"
        assert outcome.state.fields == confirming.state.fields
        assert all("49" not in reply for reply in outcome.replies)
    assert store.list_cases() == []
    case = send(service, "o-1", CONFIRM).case
    assert case is not None and case.fields["name"] == "王丽"


def test_customer_template_syntax_is_echoed_literally(service: IntakeService, store: Store) -> None:
    outcome = send(service, "o-1", "沙发{{ 7*7 }}坏了 {% for %} {#")
    assert outcome.state.fields["description"] == "沙发{{ 7*7 }}坏了 {% for %} {#"
    noted = "\n".join(outcome.replies)
    assert "沙发{{ 7*7 }}坏了 {% for %} {#" in noted
    assert "49" not in noted


def test_long_message_is_stored_whole_and_its_facts_used(service: IntakeService, store: Store) -> None:
    text = opening() + "。" + RANT
    outcome = send(service, "o-1", text)
    assert outcome.state.fields["name"] == "王丽"
    assert outcome.state.fields["phone"] == "13812345678"
    assert inbound_texts(store, "o-1") == [text]
    assert any("2000" in reply for reply in outcome.replies)  # tells the customer only the start was read


def test_corrections_during_intake_are_on_the_case_timeline(service: IntakeService, store: Store) -> None:
    send(service, "o-fix", opening())
    send(service, "o-fix", "电话打错了，是13912345678")
    for text in FOLLOW_UPS:
        send(service, "o-fix", text)
    outcome = send(service, "o-fix", CONFIRM)
    assert outcome.case is not None
    events = store.get_case_events(outcome.case.id)
    changes = [e.data for e in events if e.kind == "field_changed"]
    assert changes == [{"field": "phone", "old": "13812345678", "new": "13912345678"}]
    assert outcome.case.fields["phone"] == "13912345678"
