"""Field extraction from single customer messages, as PRODUCT.md's conventions define it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dialogs.catalog import Catalog, load_catalog
from dialogs.extraction import extract, extract_fields

# A Sunday afternoon in Shanghai: weekday arithmetic below depends on it.
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def fields(text: str, catalog: Catalog) -> dict[str, Any]:
    return extract_fields(text, now=NOW, catalog=catalog)


def test_opening_message_fills_every_field_it_contains(catalog: Catalog) -> None:
    found = fields("我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货", catalog)
    assert found == {
        "name": "王丽", "phone": "13812345678", "purchase_date": "2025-12-08", "mall": "sh-zhenbei", "city": "上海",
        "brand": "顾家家居", "amount": 12800, "description": "扶手开裂了", "expectation": ["exchange"],
        "over_warranty": False, "priority": "normal",
    }


@pytest.mark.parametrize(("text", "amount"), [
    ("三千五", 3500), ("花了一万二", 12000), ("3.5k", 3500), ("¥12,800", 12800), ("两万块", 20000),
    ("一共是两千八", 2800), ("花了4200元", 4200), ("1.2万买的", 12000), ("定金2000，总价15800", 15800),
    ("总价12800元，付了定金3000", 12800), ("一千零五块", 1005), ("500块", 500),
])
def test_amounts_said_colloquially(text: str, amount: int, catalog: Catalog) -> None:
    assert fields(text, catalog)["amount"] == amount


@pytest.mark.parametrize("text", [
    "两万多", "一万出头", "120平的房子", "贵了一千多", "KUKA-2023X型号", "买了三块瓷砖", "十几天了", "两三天",
    "订单号DD20251208001", "定金2000",
])
def test_things_that_are_not_the_amount(text: str, catalog: Catalog) -> None:
    assert "amount" not in fields(text, catalog)


@pytest.mark.parametrize(("text", "phone"), [
    ("电话13812345678", "13812345678"), ("138 1234 5678", "13812345678"), ("+86 138-1234-5678", "13812345678"),
    ("008613812345678", "13812345678"), ("１３８１２３４５６７８", "13812345678"),
    ("幺三八幺二三四五六七八", "13812345678"), ("手机是139-1234-5678谢谢", "13912345678"),
])
def test_phone_numbers_however_typed(text: str, phone: str, catalog: Catalog) -> None:
    assert fields(text, catalog)["phone"] == phone


@pytest.mark.parametrize(("text", "problem"), [
    ("1381234567", "length"), ("138123456789", "length"), ("021-12345678", "landline"),
])
def test_phone_like_numbers_that_are_not_mobiles_are_reported(text: str, problem: str, catalog: Catalog) -> None:
    found = extract(text, now=NOW, catalog=catalog, asking="phone")
    assert "phone" not in found.values
    assert found.problems["phone"] == problem


@pytest.mark.parametrize(("text", "key", "value"), [
    ("上个月15号买的", "purchase_date", "2026-10-15"),
    ("前天送到的", "delivery_date", "2026-11-20"),
    ("去年双十一买的", "purchase_date", "2025-11-11"),
    ("上周六送的货", "delivery_date", "2026-11-14"),
    ("12月5号买的", "purchase_date", "2025-12-05"),  # yearless and still to come: last year
    ("3月5号下的单", "purchase_date", "2026-03-05"),
    ("9号下的单", "purchase_date", "2026-11-09"),
    ("元旦买的", "purchase_date", "2026-01-01"),
    ("2025年12月8日购买", "purchase_date", "2025-12-08"),
    ("2025-12-08买的", "purchase_date", "2025-12-08"),
    ("二零二五年三月八号买的", "purchase_date", "2025-03-08"),
    ("说好下周三送", "delivery_date", "2026-11-25"),
    ("原定10号送，实际18号才送到", "delivery_date", "2026-11-18"),
    ("5天前安装的", "delivery_date", "2026-11-17"),
])
def test_dates_resolved_against_the_conversation_clock(text: str, key: str, value: str, catalog: Catalog) -> None:
    assert fields(text, catalog)[key] == value


@pytest.mark.parametrize(("text", "problem"), [
    ("去年五月份买的", "vague"), ("2月30号买的", "impossible"), ("上个月买的", "vague"),
])
def test_not_a_date(text: str, problem: str, catalog: Catalog) -> None:
    found = extract(text, now=NOW, catalog=catalog)
    assert "purchase_date" not in found.values
    assert found.problems["purchase_date"] == problem


def test_digits_inside_an_order_number_are_not_dates_or_amounts(catalog: Catalog) -> None:
    found = fields("订单号DD20251208001，沙发坏了", catalog)
    assert found["order_no"] == "DD20251208001"
    assert not {"purchase_date", "delivery_date", "amount", "phone"} & found.keys()


@pytest.mark.parametrize(("text", "brand"), [
    ("曲美的床坏了", "曲美家居"), ("我在顧家买的", "顾家家居"), ("芝华士沙发", "芝华仕"),
    ("本来想买芝华仕，后来买了顾家", "顾家家居"), ("买的老板油烟机", "老板电器"), ("左右沙发质量太差", "左右沙发"),
    ("马克波罗瓷砖掉色", "马可波罗瓷砖"), ("gujia的沙发", "顾家家居"), ("KUKA沙发", "顾家家居"),
])
def test_brands_with_typos_aliases_and_context(text: str, brand: str, catalog: Catalog) -> None:
    assert fields(text, catalog)["brand"] == brand


@pytest.mark.parametrize("text", ["朋友说顾家挺好", "你们老板呢", "两万左右", "比顾家贵多了", "没得办法"])
def test_brands_mentioned_but_not_bought(text: str, catalog: Catalog) -> None:
    assert "brand" not in fields(text, catalog)


def test_a_shared_mall_alias_is_never_guessed(catalog: Catalog) -> None:
    found = extract("江北店买的", now=NOW, catalog=catalog)
    assert "mall" not in found.values
    assert set(found.choices["mall"]) == {"nj-jiangbei", "cq-jiangbei"}


@pytest.mark.parametrize(("text", "mall", "city"), [
    ("重庆江北店买的", "cq-jiangbei", "重庆"), ("南京的江北店", "nj-jiangbei", "南京"),
    ("吴中路那家", "sh-wuzhonglu", "上海"), ("在西四环店买的", "bj-xisihuan", "北京"),
])
def test_malls_and_the_city_they_imply(text: str, mall: str, city: str, catalog: Catalog) -> None:
    found = fields(text, catalog)
    assert (found["mall"], found["city"]) == (mall, city)


def test_the_city_decides_a_shared_alias_from_earlier_in_the_conversation(catalog: Catalog) -> None:
    found = extract("江北店", now=NOW, catalog=catalog, known_city="重庆")
    assert found.values["mall"] == "cq-jiangbei"


@pytest.mark.parametrize(("text", "name"), [
    ("我叫王丽，电话13812345678", "王丽"), ("我姓张", "张"), ("免贵姓刘", "刘"), ("我是周先生", "周"),
    ("帮我妈投诉，她叫李秀英，电话13912345678", "李秀英"), ("王阿姨，沙发坏了", "王"), ("欧阳娜娜", None),
])
def test_names_with_honorifics_dropped(text: str, name: str | None, catalog: Catalog) -> None:
    assert fields(text, catalog).get("name") == name


@pytest.mark.parametrize("text", ["我是顾客", "我是真北店买的", "你们的李经理说会处理", "我是来投诉的"])
def test_phrases_that_are_not_names(text: str, catalog: Catalog) -> None:
    assert "name" not in fields(text, catalog)


def test_a_bare_name_answers_the_name_question(catalog: Catalog) -> None:
    assert extract("欧阳娜娜", now=NOW, catalog=catalog, asking="name").values["name"] == "欧阳娜娜"
    assert extract("叫我老王就行", now=NOW, catalog=catalog, asking="name").values["name"] == "王"


@pytest.mark.parametrize(("text", "codes"), [
    ("要求换货", {"exchange"}), ("退一赔三", {"refund", "compensation"}), ("不要退货只要修好", {"repair"}),
    ("换个新的", {"exchange"}), ("派人上门看看", {"inspection"}), ("尽快安装", {"deliver"}),
    ("给我道歉并赔偿", {"apology", "compensation"}), ("把钱退给我", {"refund"}),
])
def test_expectations(text: str, codes: set[str], catalog: Catalog) -> None:
    assert set(fields(text, catalog)["expectation"]) == codes


def test_address_as_typed_and_its_city(catalog: Catalog) -> None:
    found = fields("送到上海市浦东新区张江路100弄5号301", catalog)
    assert found["delivery_address"] == "上海市浦东新区张江路100弄5号301"
    assert found["city"] == "上海"


@pytest.mark.parametrize(("text", "over"), [
    ("前年买的，沙发塌了", True), ("去年12月8号买的", False), ("2024年3月1号买的", True), ("已经过保了", True),
    ("还在保修期内", False),
])
def test_warranty_said_or_derived(text: str, over: bool, catalog: Catalog) -> None:
    assert fields(text, catalog)["over_warranty"] is over


@pytest.mark.parametrize(("text", "priority"), [
    ("沙发扶手开裂了", "normal"),
    ("柜门掉下来把孩子砸伤了", "major"),
    ("再不处理我就找媒体曝光", "major"),
    ("不解决我就打12315", "important"),
    ("这是第三次投诉了", "important"),
    ("电话13812345678，沙发坏了", "normal"),  # "12345" inside a phone is not the hotline
])
def test_priority_rules(text: str, priority: str, catalog: Catalog) -> None:
    assert fields(text, catalog)["priority"] == priority


@pytest.mark.parametrize("text", ["你好", "在吗", "？？？", "😡😡😡", "{{ 7*7 }}", "\x00\x07\x1b[31m", "a" * 20000])
def test_messages_without_facts_yield_only_priority(text: str, catalog: Catalog) -> None:
    assert fields(text, catalog) == {"priority": "normal"}


@pytest.mark.parametrize(("text", "priority"), [
    ("扶手开裂了，孩子被划伤了", "major"),
    ("桌面划伤了一道", "normal"),  # a scratched table is not an injury
])
def test_injury_needs_a_person_not_a_surface(text: str, priority: str, catalog: Catalog) -> None:
    assert fields(text, catalog)["priority"] == priority


@pytest.mark.parametrize(("answer", "name"), [("孔", "孔"), ("欧阳", "欧阳"), ("姓程", "程")])
def test_a_surname_alone_answers_the_name_question(answer: str, name: str, catalog: Catalog) -> None:
    assert extract(answer, now=NOW, catalog=catalog, asking="name").values["name"] == name
