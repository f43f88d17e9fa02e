"""The intake conversation through the pure dialog core: state + message → replies, state, effects.

Every turn round-trips the state through JSON, exactly as the service stores it, so a test that
passes here also passes across restarts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from dialogs.engine import DialogState, OpenCase, Turn, new_state, step

NOW = datetime(2026, 11, 22, 14, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
OPENING = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"


class Customer:
    """One customer talking to Kesu; keeps the state as JSON between turns like the database does."""

    def __init__(self, catalog: Catalog, renderer: Renderer) -> None:
        self.catalog = catalog
        self.renderer = renderer
        self.state_json: dict[str, Any] = new_state(NOW).model_dump(mode="json")
        self.now = NOW
        self.last: Turn | None = None

    @property
    def state(self) -> DialogState:
        return DialogState.model_validate(self.state_json)

    def says(self, text: str) -> Turn:
        self.last = step(self.state, text, now=self.now, catalog=self.catalog)
        self.state_json = self.last.state.model_dump(mode="json")
        return self.last

    def templates(self) -> list[str]:
        assert self.last is not None
        return [reply.template for reply in self.last.replies]

    def text(self) -> str:
        """What the customer reads, rendered (the case number is filled by the service)."""
        assert self.last is not None
        return "\n".join(self.renderer.render(r.template, {**r.context, "case_number": "KS2611220019"})
                         for r in self.last.replies)

    def answer_until_confirming(self, answers: dict[str, str], limit: int = 20) -> list[str]:
        asked = []
        for _ in range(limit):
            state = self.state
            if state.phase == "confirming":
                return asked
            assert state.asking is not None, self.templates()
            asked.append(state.asking)
            self.says(answers[state.asking])
        raise AssertionError(f"never reached confirmation; asked {asked}")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture
def customer(catalog: Catalog, renderer: Renderer) -> Customer:
    return Customer(catalog, renderer)


ANSWERS = {
    "description": "沙发扶手开裂了", "name": "王丽", "phone": "13812345678", "mall": "真北店", "brand": "顾家",
    "purchase_date": "去年12月8号买的", "amount": "12800", "delivery_date": "上周六送的",
    "delivery_address": "闵行区七宝镇漕宝路1500弄3号502", "order_no": "没有", "over_warranty": "没有",
    "expectation": "换货",
}


def test_a_rich_opening_is_followed_only_by_questions_for_what_is_missing(customer: Customer) -> None:
    customer.says(OPENING)
    assert customer.templates()[0] == "greeting"
    assert "noted" in customer.templates()
    asked = customer.answer_until_confirming(ANSWERS)
    assert asked == ["delivery_date", "delivery_address", "order_no"]
    assert "王丽" in customer.text() and "13812345678" in customer.text()
    turn = customer.says("确认")
    [effect] = turn.effects
    assert isinstance(effect, OpenCase)
    assert effect.fields["name"] == "王丽"
    assert str(effect.fields["purchase_date"]) == "2025-12-08"
    assert effect.fields["order_no"] is None
    assert effect.fields["expectation"] == ["exchange"]
    assert "24小时内与您联系" in customer.text()
    assert customer.state.fields == {}, "a new intake starts after the case is opened"


def test_a_bare_greeting_gets_the_whole_script_one_question_at_a_time(customer: Customer) -> None:
    customer.says("你好")
    assert customer.state.asking == "description"
    asked = customer.answer_until_confirming(ANSWERS)
    assert asked == ["description", "name", "phone", "mall", "brand", "purchase_date", "amount", "delivery_date",
                     "delivery_address", "order_no", "expectation"]
    assert len(asked) == len(set(asked)), "no field is asked twice"


@pytest.mark.parametrize(("correction", "field", "value"), [
    ("不对，金额是4200", "amount", 4200),
    ("电话打错了，是13912345678", "phone", "13912345678"),
    ("商场是吴中路那家", "mall", "sh-wuzhonglu"),
])
def test_corrections_replace_and_are_acknowledged(customer: Customer, correction: str, field: str,
                                                  value: Any) -> None:
    customer.says(OPENING)
    asking = customer.state.asking
    customer.says(correction)
    assert customer.state.fields[field] == value
    assert "corrected" in customer.templates()
    assert "已更正" in customer.text()
    assert customer.state.asking == asking, "the conversation carries on where it was"


def test_unknown_optional_fields_are_accepted_and_never_asked_again(customer: Customer) -> None:
    customer.says("沙发坏了，我叫李强，电话13912345678，真北店买的顾家，要求退货")
    dont_know = {key: "不知道" for key in ANSWERS}
    asked = customer.answer_until_confirming(dont_know)
    assert asked == ["purchase_date", "amount", "delivery_date", "delivery_address", "order_no", "over_warranty"]
    assert set(customer.state.unknown) == set(asked)


def test_a_refused_required_field_is_explained_and_asked_again(customer: Customer) -> None:
    customer.says("沙发坏了")
    customer.says("李强")
    assert customer.state.asking == "phone"
    customer.says("凭什么告诉你")
    assert "why_needed" in customer.templates()
    assert "不会用于其他用途" in customer.text()
    assert customer.state.asking == "phone"
    customer.says("13912345678")
    assert customer.state.fields["phone"] == "13912345678"


def test_an_invalid_phone_is_explained(customer: Customer) -> None:
    customer.says("沙发坏了，我叫李强")
    customer.says("1391234567")
    assert "invalid" in customer.templates()
    assert "11位" in customer.text()
    assert customer.state.asking == "phone"


def test_an_impossible_date_is_explained_then_unknown_is_accepted(customer: Customer) -> None:
    customer.says("沙发坏了，我叫李强，电话13912345678，真北店买的顾家")
    assert customer.state.asking == "purchase_date"
    customer.says("2月30号")
    assert "2月没有30号" in customer.text()
    customer.says("记不清了")
    assert "purchase_date" in customer.state.unknown
    assert customer.state.asking == "amount"


def test_a_shared_mall_alias_is_asked_back_with_the_candidates(customer: Customer) -> None:
    customer.says("沙发坏了，我叫李强，电话13912345678")
    customer.says("江北店")
    assert "mall" not in customer.state.fields
    assert "红星美凯龙南京江北商场" in customer.text() and "红星美凯龙重庆江北商场" in customer.text()
    customer.says("2")
    assert customer.state.fields["mall"] == "cq-jiangbei"
    assert customer.state.fields["city"] == "重庆"


@pytest.mark.parametrize(("message", "template"), [
    ("你是机器人吗", "about_bot"), ("我是店长，把这个案子结了", "staff_only"), ("😡😡😡", "not_understood"),
    ("谢谢", "thanks"), ("/claim KS2611220019", "staff_only"),
])
def test_off_topic_messages_get_an_answer_and_the_question_is_asked_again(customer: Customer, message: str,
                                                                          template: str) -> None:
    customer.says(OPENING)
    asking = customer.state.asking
    fields_before = customer.state.fields
    customer.says(message)
    assert customer.templates()[0] == template
    assert customer.templates()[-1] == f"ask/{asking}"
    assert customer.state.fields == fields_before


def test_an_insult_gets_a_calm_reply_and_its_facts_are_kept(customer: Customer) -> None:
    customer.says("你们这帮骗子，沙发买回来就坏了")
    assert customer.templates()[1] == "calm_down"
    assert "坏了" in customer.state.fields["description"]


def test_cancel_needs_confirmation(customer: Customer) -> None:
    customer.says(OPENING)
    customer.says("取消")
    assert customer.templates() == ["cancel_confirm"]
    customer.says("继续")
    assert customer.state.fields["name"] == "王丽"
    customer.says("取消")
    customer.says("确定")
    assert customer.templates() == ["cancelled"]
    assert customer.state.fields == {}


def test_restart_clears_the_unsubmitted_intake(customer: Customer) -> None:
    customer.says(OPENING)
    customer.says("重新开始")
    assert customer.state.fields == {}
    assert customer.templates() == ["restarted", "ask/description"]


def test_coming_back_days_later_resumes_where_it_stopped(customer: Customer) -> None:
    customer.says(OPENING)
    asking = customer.state.asking
    customer.now = NOW + timedelta(days=3)
    customer.says("在吗")
    assert customer.templates() == ["welcome_back", f"ask/{asking}"]
    assert customer.state.fields["name"] == "王丽"


def test_warranty_is_asked_only_when_the_purchase_date_is_unknown(customer: Customer) -> None:
    customer.says(OPENING)
    asked = customer.answer_until_confirming(ANSWERS)
    assert "over_warranty" not in asked
    other = Customer(customer.catalog, customer.renderer)
    other.says("沙发坏了，我叫李强，电话13912345678，真北店买的顾家，要求退货")
    answers = {**ANSWERS, "purchase_date": "记不清了", "over_warranty": "过保了"}
    assert "over_warranty" in other.answer_until_confirming(answers)
    assert other.state.fields["over_warranty"] is True


def test_a_field_can_be_changed_from_the_summary(customer: Customer) -> None:
    customer.says(OPENING)
    customer.answer_until_confirming(ANSWERS)
    customer.says("电话改成13912345678")
    assert customer.templates()[0] == "corrected"
    assert customer.templates()[-1] == "summary"
    assert customer.state.phase == "confirming"
    assert "13912345678" in customer.text()
    customer.says("修改")
    assert customer.templates() == ["what_to_change"]


def test_safety_hazards_are_graded_major_and_the_customer_is_told(customer: Customer) -> None:
    customer.says("柜门掉下来把孩子砸伤了")
    assert customer.state.priority == "major"
    assert "优先升级处理" in customer.text()


def test_template_syntax_from_a_customer_is_kept_as_text(customer: Customer) -> None:
    customer.says("沙发坏了{{ 7*7 }}{% raw %}")
    assert "{{ 7*7 }}" in customer.state.fields["description"]
    customer.says("李强")
    customer.says("13912345678")
    assert "49" not in customer.text()


def test_a_20000_character_message_is_answered(customer: Customer) -> None:
    customer.says("沙发坏了，" + "啊" * 20000)
    assert "long_message" in customer.templates()
    assert customer.state.asking == "name"


def test_thanks_after_the_case_is_opened_gets_no_new_question(customer: Customer) -> None:
    customer.says(OPENING)
    customer.answer_until_confirming(ANSWERS)
    customer.says("确认")
    customer.says("好的谢谢")
    assert customer.templates() == ["thanks"]


def test_a_brand_the_customer_truly_does_not_know_is_recorded_as_unknown_after_one_explanation(
        customer: Customer) -> None:
    customer.says("沙发坏了，我叫李强，电话13912345678，真北店买的")
    assert customer.state.asking == "brand"
    customer.says("不记得什么牌子了")
    assert customer.templates()[0] == "required_unknown"
    customer.says("真不记得了")
    assert "brand" in customer.state.unknown
    assert customer.state.asking == "purchase_date"


def test_a_shared_mall_alias_with_a_city_in_the_reply_is_settled(customer: Customer) -> None:
    customer.says("江北店买的沙发，坐垫开线了")
    assert customer.state.choice is not None
    customer.says("重庆的江北店")
    assert customer.state.fields["mall"] == "cq-jiangbei"
    assert customer.state.choice is None
