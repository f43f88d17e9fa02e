"""Staff notification routing: which groups hear about a new case, and what they read.

Unit tests of ``StaffNotifier`` on hand-made cases, then the intake service on a real database
(SQLite and PostgreSQL): the notifications are queued in the case's own transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.notify import Delivery, StaffNotifier, markdown_literal, mask_mobiles
from bot.service import InboundMessage, IntakeService
from bot.templating import Renderer, cn_time
from dialogs.catalog import Catalog, load_catalog
from storage.repository import CaseRecord, Store

NOW = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
PHONE = "13812345678"
MASKED = "138****5678"
ZHENBEI_KEY = "demo-zhenbei-robot-key"
ZHENBEI_CHAT = "-1001000000001"
ZHENBEI_ESCALATION_CHAT = "-1001000000099"
FALLBACK_CHAT = -1009000000001
FALLBACK_KEY = "fallback-robot-key"
ESCALATION_CHAT = -1009000000002
ESCALATION_KEY = "hq-escalation-robot-key"
MINIMAL_CATALOG = Path(__file__).parent / "data" / "minimal_catalog.yaml"  # no staff groups


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"fallback_telegram_chat": FALLBACK_CHAT, "fallback_wecom_key": FALLBACK_KEY,
                              "escalation_telegram_chat": ESCALATION_CHAT, "escalation_wecom_key": ESCALATION_KEY}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(Path(__file__).parent / "data" / "routed_catalog.yaml")  # 真北 has staff groups


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def case(mall: str | None = "sh-zhenbei", *, priority: str = "normal", unrouted: bool = False,
         **fields: Any) -> CaseRecord:
    values: dict[str, Any] = {"name": "王丽", "phone": PHONE, "mall": mall, "brand": "顾家家居",
                              "description": "沙发扶手开裂了", "expectation": ["exchange"], "priority": priority,
                              "amount": None, "purchase_date": None}
    values.update(fields)
    return CaseRecord(id=1, number="KS2611220019", status="new", channel="wechat", customer_id="o-1",
                      conversation_id=1, created_at=NOW, updated_at=NOW, fields=values, unrouted=unrouted)


def targets(deliveries: list[Delivery]) -> set[tuple[str, str]]:
    return {(d.channel, d.target) for d in deliveries}


# --------------------------------------------------------------------------- routing


def test_a_routed_mall_notifies_its_own_groups_only(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    assert notifier.is_routed("sh-zhenbei")
    deliveries = notifier.new_case(case())
    assert targets(deliveries) == {("telegram", ZHENBEI_CHAT), ("wecom", ZHENBEI_KEY)}
    wecom = next(d for d in deliveries if d.channel == "wecom")
    assert wecom.message.markdown and not wecom.message.buttons  # robots are one-way
    telegram = next(d for d in deliveries if d.channel == "telegram")
    assert not telegram.message.markdown
    assert [b.payload for row in telegram.message.buttons for b in row] == ["claim:KS2611220019",
                                                                          "view:KS2611220019"]
    for delivery in deliveries:
        assert "KS2611220019" in delivery.message.text
        assert MASKED in delivery.message.text and PHONE not in delivery.message.text
        assert "未配置员工群" not in delivery.message.text


def test_a_mall_without_groups_goes_to_the_fallback_groups_flagged_unrouted(catalog: Catalog,
                                                                          renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    assert not notifier.is_routed("sh-wuzhonglu")
    deliveries = notifier.new_case(case("sh-wuzhonglu", unrouted=True))
    assert targets(deliveries) == {("telegram", str(FALLBACK_CHAT)), ("wecom", FALLBACK_KEY)}
    for delivery in deliveries:
        assert "该商场未配置员工群" in delivery.message.text
        assert "红星美凯龙上海吴中路商场" in delivery.message.text


def test_a_case_without_a_known_mall_is_unrouted_too(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    assert not notifier.is_routed(None) and not notifier.is_routed("no-such-mall")
    assert targets(notifier.new_case(case(None, unrouted=True))) == {("telegram", str(FALLBACK_CHAT)),
                                                                     ("wecom", FALLBACK_KEY)}


def test_only_the_configured_fallback_channel_is_used(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings(fallback_telegram_chat=None))
    assert targets(notifier.new_case(case("sh-wuzhonglu", unrouted=True))) == {("wecom", FALLBACK_KEY)}


def test_no_group_at_all_is_logged_not_silent(catalog: Catalog, renderer: Renderer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    notifier = StaffNotifier(catalog, renderer, Settings(_env_file=None))  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="bot.notify"):
        assert notifier.new_case(case("sh-wuzhonglu", unrouted=True)) == []
    assert "KS2611220019" in caplog.text and "no staff group" in caplog.text


def test_a_major_case_also_reaches_the_malls_and_the_deployments_escalation_groups(catalog: Catalog,
                                                                                  renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    deliveries = notifier.new_case(case(priority="major"))
    assert targets(deliveries) == {
        ("telegram", ZHENBEI_CHAT), ("wecom", ZHENBEI_KEY),  # the mall's staff
        ("telegram", ZHENBEI_ESCALATION_CHAT),  # the mall's escalation group
        ("telegram", str(ESCALATION_CHAT)), ("wecom", ESCALATION_KEY),  # the deployment's escalation groups
    }
    assert all("重大投诉" in d.message.text for d in deliveries)
    # Not fallback: the mall has its own groups.
    assert ("wecom", FALLBACK_KEY) not in targets(deliveries)


def test_a_major_case_of_an_unrouted_mall_goes_to_fallback_and_escalation(catalog: Catalog,
                                                                         renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    deliveries = notifier.new_case(case("sh-wuzhonglu", priority="major", unrouted=True))
    assert targets(deliveries) == {("telegram", str(FALLBACK_CHAT)), ("wecom", FALLBACK_KEY),
                                   ("telegram", str(ESCALATION_CHAT)), ("wecom", ESCALATION_KEY)}


def test_a_group_named_twice_gets_one_message(catalog: Catalog, renderer: Renderer) -> None:
    # The deployment's escalation robot is also the mall's own robot.
    notifier = StaffNotifier(catalog, renderer, settings(escalation_wecom_key=ZHENBEI_KEY,
                                                         escalation_telegram_chat=int(ZHENBEI_CHAT)))
    deliveries = notifier.new_case(case(priority="major"))
    assert len(deliveries) == len(targets(deliveries)) == 3


def test_an_important_case_is_not_escalated(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    deliveries = notifier.new_case(case(priority="important"))
    assert targets(deliveries) == {("telegram", ZHENBEI_CHAT), ("wecom", ZHENBEI_KEY)}
    assert all("重要投诉" in d.message.text for d in deliveries)


# --------------------------------------------------------------------------- what staff read


def test_phones_in_the_customers_own_words_are_masked_too(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    deliveries = notifier.new_case(case(description="打了138 1234 5678没人接，我老公电话+86-139-8765-4321",
                                        order_no="202611221381234567890"))
    for delivery in deliveries:
        text = delivery.message.text
        assert re.search(r"1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}", text) is None, text
        assert "138****5678" in text and "139****4321" in text


def test_mask_mobiles_leaves_other_numbers_alone() -> None:
    assert mask_mobiles("电话13812345678。") == "电话138****5678。"
    assert mask_mobiles("１３８１２３４５６７８") == "１３８****５６７８"
    assert mask_mobiles("订单号202611221381234567890") == "订单号202611221381234567890"
    assert mask_mobiles("KS2611220019 金额12800 座机021-62345678") == "KS2611220019 金额12800 座机021-62345678"
    assert mask_mobiles("0086 13812345678") == "138****5678"


def test_customer_text_cannot_forge_markdown_in_a_robot_message(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    forged = "坏了\n### 已处理完毕 [点这里退款](http://evil.example) <font color=\"info\">已结案</font> `x`"
    (wecom,) = [d for d in notifier.new_case(case(description=forged)) if d.channel == "wecom"]
    text = wecom.message.text
    assert "](http" not in text and "<font color=\"info\">" not in text and "\n###" not in text.split("\n", 1)[1]
    assert "点这里退款" in text  # the words stay readable
    assert markdown_literal(["a*b", 3]) == ["a＊b", 3]


def test_the_robot_message_says_where_to_act(catalog: Catalog, renderer: Renderer) -> None:
    notifier = StaffNotifier(catalog, renderer, settings())
    due = dataclasses.replace(case(), first_contact_due=NOW + timedelta(hours=24))
    (wecom,) = [d for d in notifier.new_case(due) if d.channel == "wecom"]
    assert "kesu cases show KS2611220019" in wecom.message.text
    assert f"请在{cn_time(NOW + timedelta(hours=24))}前联系顾客。" in wecom.message.text


# --------------------------------------------------------------------------- through the service

OPENING = "我叫王丽，电话13812345678，去年12月8号在{mall}顾家买的沙发，12800，扶手开裂了{extra}，要求换货"
FOLLOW_UPS = ("11月20号送的", "上海市普陀区真北路1号", "没有", "确认")


def open_case(service: IntakeService, customer: str, mall: str, extra: str = "") -> CaseRecord:
    for text in (OPENING.format(mall=mall, extra=extra), *FOLLOW_UPS):
        outcome = service.handle(InboundMessage("wechat", customer, text))
    assert outcome.case is not None, outcome.replies
    return outcome.case


def make_service(store: Store, catalog: Catalog, renderer: Renderer, config: Settings) -> IntakeService:
    woken: list[int] = []
    service = IntakeService(store, catalog, renderer, clock=lambda: NOW,
                            notifier=StaffNotifier(catalog, renderer, config), on_outbox=lambda: woken.append(1))
    service.woken = woken  # type: ignore[attr-defined]
    return service


def test_a_new_case_queues_its_notifications_in_its_own_transaction(store: Store, catalog: Catalog,
                                                                   renderer: Renderer) -> None:
    service = make_service(store, catalog, renderer, settings())
    opened = open_case(service, "o-routed", "真北店")
    assert service.woken  # type: ignore[attr-defined]
    stored = store.get_case(opened.number)
    assert stored is not None and not stored.unrouted
    items = store.outbox_items(case_id=opened.id)
    assert {(i.channel, i.target) for i in items} == {("telegram", ZHENBEI_CHAT), ("wecom", ZHENBEI_KEY)}
    assert all(i.kind == "staff_notification" and i.state == "pending" and i.attempts == 0 for i in items)
    wecom = next(i for i in items if i.channel == "wecom")
    assert wecom.payload["markdown"] is True
    assert opened.number in wecom.payload["text"] and MASKED in wecom.payload["text"]
    assert PHONE not in str([i.payload for i in items])


def test_a_case_of_a_mall_without_groups_is_unrouted_and_goes_to_fallback(store: Store, catalog: Catalog,
                                                                         renderer: Renderer) -> None:
    service = make_service(store, catalog, renderer, settings())
    opened = open_case(service, "o-unrouted", "吴中路店")
    stored = store.get_case(opened.number)
    assert stored is not None and stored.unrouted and stored.public_dict()["unrouted"] is True
    items = store.outbox_items(case_id=opened.id)
    assert {(i.channel, i.target) for i in items} == {("telegram", str(FALLBACK_CHAT)), ("wecom", FALLBACK_KEY)}
    assert all("该商场未配置员工群" in i.payload["text"] for i in items)


def test_a_major_case_through_the_service_reaches_escalation(store: Store, catalog: Catalog,
                                                            renderer: Renderer) -> None:
    service = make_service(store, catalog, renderer, settings())
    opened = open_case(service, "o-major", "真北店", extra="，孩子手被划伤了")
    assert opened.fields["priority"] == "major"
    items = store.outbox_items(case_id=opened.id)
    assert {(i.channel, i.target) for i in items} == {
        ("telegram", ZHENBEI_CHAT), ("wecom", ZHENBEI_KEY), ("telegram", ZHENBEI_ESCALATION_CHAT),
        ("telegram", str(ESCALATION_CHAT)), ("wecom", ESCALATION_KEY)}


def test_a_catalog_with_only_ids_names_cities_and_aliases_works(store: Store, renderer: Renderer) -> None:
    minimal = load_catalog(MINIMAL_CATALOG)
    mall = minimal.mall("xm-siming")
    assert mall is not None and not mall.staff and not mall.escalation
    service = make_service(store, minimal, renderer, settings(fallback_telegram_chat=None))
    opened = open_case(service, "o-minimal", "思明店")
    assert opened.fields["mall"] == "xm-siming" and opened.unrouted
    (item,) = store.outbox_items(case_id=opened.id)
    assert (item.channel, item.target) == ("wecom", FALLBACK_KEY)
    assert "厦门思明商场" in item.payload["text"] and "该商场未配置员工群" in item.payload["text"]
