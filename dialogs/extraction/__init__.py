"""Every field a customer message contains, in one pass.

`extract` is what the dialog uses: values plus what could not be taken (ambiguous malls,
invalid phones, impossible dates) so the bot can say why. `extract_fields` is the public,
JSON-ready view used by `kesu extract` and the evaluation set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from dialogs.extraction import wants
from dialogs.extraction.amounts import best_amount, find_amounts
from dialogs.extraction.brands import find_brands
from dialogs.extraction.dates import DateFinding, find_dates
from dialogs.extraction.names import bare_name_tokens, find_name, name_from_answer
from dialogs.extraction.numbers import as_json_number
from dialogs.extraction.phones import find_phones
from dialogs.extraction.places import (
    BUILTIN_CITIES,
    find_address,
    find_cities,
    find_mall,
    looks_like_address,
    tidy_address,
)
from dialogs.extraction.priority import grade
from dialogs.extraction.text import normalize

if TYPE_CHECKING:
    from dialogs.catalog import Catalog

SHANGHAI = ZoneInfo("Asia/Shanghai")

# Said between two values of one field, the later value replaces the earlier ("…，哦不对，是…").
CORRECTION = re.compile(r"不对|错了|有错|打错|写错|说错|改成|改为|更正|应该是|改一下|换成|不是|修改|更改")
_ORDER_LABELED = re.compile(
    r"(?:订单号|订单编号|订单|单号|合同号|合同编号|编号|销售单号|小票号|order\s*(?:no\.?|number|id)?)\s*(?:是|为|:|：|#)?\s*"
    r"(?P<no>[A-Za-z0-9][A-Za-z0-9_-]{3,39})", re.IGNORECASE)
_ORDER_BARE = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9][A-Za-z0-9_-]{3,39}(?![A-Za-z0-9])")


@dataclass
class Extraction:
    values: dict[str, Any] = field(default_factory=dict)
    # Fields the message named ambiguously: the candidates to ask back (mall ids, brand names).
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Fields the message tried to give but could not be taken, with the reason ("length", "vague", …).
    problems: dict[str, str] = field(default_factory=dict)
    unknown: bool = False  # "不知道/没有/记不清": only meaningful for the field just asked
    refused: bool = False
    priority: str = "normal"
    priority_reasons: list[str] = field(default_factory=list)
    purchase_span: tuple[date, date] | None = None  # when the day is unknown: the month or year it lies in
    warranty_stated: bool = False  # over_warranty said by the customer, not derived from a date
    recent_purchase: bool = False  # "才半年", "不到两个月": no date, but within the warranty year


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = "#" * (end - start)
    return "".join(chars)


def _one_year_before(today: date) -> date:
    return today.replace(year=today.year - 1, day=28) if (today.month, today.day) == (2, 29) else \
        today.replace(year=today.year - 1)


def over_warranty_from(purchase: date | None, span: tuple[date, date] | None, today: date) -> bool | None:
    """Derived warranty status: more than one calendar year since purchase.

    Without the day, a month or year can still settle it: all of "前年" lies more than a year
    back, all of "上个月" less.
    """
    line = _one_year_before(today)
    if purchase is not None:
        return purchase < line
    if span is not None:
        if span[1] < line:
            return True
        if span[0] >= line:
            return False
    return None


def _pick_dates(findings: list[DateFinding], asking: str | None, out: Extraction) -> None:
    by_role: dict[str, list[DateFinding]] = {"purchase_date": [], "delivery_date": []}
    for finding in findings:
        role = finding.role or (asking if asking in by_role else None)
        if role is None:
            continue
        if finding.value is None:
            if role == "purchase_date" and finding.span is not None:
                out.purchase_span = finding.span
            out.problems.setdefault(role, finding.problem or "vague")
            continue
        by_role[role].append(finding)
    purchases = by_role["purchase_date"]
    if purchases:
        out.values["purchase_date"] = purchases[0].value
        out.problems.pop("purchase_date", None)
    deliveries = by_role["delivery_date"]
    if deliveries:
        actual = [f for f in deliveries if f.actual or not f.promised]
        out.values["delivery_date"] = (actual or deliveries)[-1].value
        out.problems.pop("delivery_date", None)


def extract(text: str, *, now: datetime, catalog: Catalog, asking: str | None = None,
            known_city: str | None = None) -> Extraction:
    """All fields in one message. `asking` is the field Kesu just asked for: a bare answer fills it.

    Facts are taken most-specific first, and each one's text is masked before the next
    extractor reads: digits of an order number never become a phone, a date or an amount,
    and a mall name inside an address is not the mall.
    """
    today = now.astimezone(SHANGHAI).date()
    norm = normalize(text)
    out = Extraction()
    facts: list[tuple[int, int]] = []

    _take_order_no(norm, asking, out, facts)
    phone_spans = _take_phone(_mask(norm, facts), out, facts)
    _take_address(norm, asking, out, facts, catalog)
    dates = find_dates(_mask(norm, facts), today)
    facts.extend((d.start, d.end) for d in dates)
    _pick_dates(dates, asking, out)
    purchase = out.values.get("purchase_date")
    if purchase is not None and purchase > today:
        del out.values["purchase_date"]
        out.problems["purchase_date"] = "future"

    masked = _mask(norm, facts)
    amounts = find_amounts(masked, asked=asking == "amount")
    amount = best_amount(amounts)
    if amount is not None and amount.value is not None:
        out.values["amount"] = amount.value
        facts.append((amount.start, amount.end))
    elif any(a.problem for a in amounts):
        out.problems["amount"] = "vague"

    _take_name(norm, asking, out, facts, phone_spans, catalog)
    _take_mall(_mask(norm, facts), out, facts, catalog, known_city)
    brands = find_brands(_mask(norm, facts), catalog.brand_index, asked=asking == "brand")
    facts.extend((hit.start, hit.end) for hit in brands)
    if len(brands) == 1 and len(brands[0].keys) == 1:
        out.values["brand"] = brands[0].keys[0]
    elif brands:
        out.choices["brand"] = tuple(dict.fromkeys(name for hit in brands for name in hit.keys))

    expectations = wants.find_expectations(norm)
    if expectations:
        out.values["expectation"] = expectations
    problem = wants.find_problem(norm, facts)
    if problem:
        out.values["description"] = problem
    _take_warranty(norm, today, out)

    short = len(norm) <= 20
    out.refused = short and wants.REFUSAL.search(norm) is not None
    out.unknown = not out.refused and short and wants.UNKNOWN.search(norm) is not None
    # Graded with phones and order numbers masked: "…12345…" inside a phone is no hotline.
    out.priority, out.priority_reasons = grade(masked, out.values.get("amount"))
    return out


def _take_order_no(norm: str, asking: str | None, out: Extraction, facts: list[tuple[int, int]]) -> None:
    order = _ORDER_LABELED.search(norm)
    if order is None and asking == "order_no":
        order = _ORDER_BARE.search(norm)
    if order is not None:
        out.values["order_no"] = order.group("no") if "no" in order.groupdict() else order.group()
        facts.append(order.span())


def _take_phone(masked: str, out: Extraction, facts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The mobile number; with "哦不对，是…" between two numbers, the later one. Returns their spans."""
    valid = []
    spans = []
    for phone in find_phones(masked):
        spans.append((phone.start, phone.end))
        if phone.number:
            valid.append(phone)
        elif phone.problem:
            out.problems.setdefault("phone", phone.problem)
    if valid:
        corrected = len(valid) > 1 and CORRECTION.search(masked, valid[0].end, valid[-1].start)
        out.values["phone"] = (valid[-1] if corrected else valid[0]).number
        out.problems.pop("phone", None)
    facts.extend(spans)
    return spans


def _take_address(norm: str, asking: str | None, out: Extraction, facts: list[tuple[int, int]],
                  catalog: Catalog) -> None:
    address = find_address(norm)
    if address is None and asking == "delivery_address":
        candidate = tidy_address(norm)
        if looks_like_address(candidate) or (len(candidate) >= 4 and not wants.UNKNOWN.search(candidate)):
            address = (candidate, 0, len(norm))
    if address is None:
        return
    out.values["delivery_address"] = address[0]
    facts.append((address[1], address[2]))
    address_cities = [c for c in find_cities(address[0], catalog.cities) if c.start == 0]
    if address_cities:
        out.values["city"] = address_cities[0].city


def _take_name(norm: str, asking: str | None, out: Extraction, facts: list[tuple[int, int]],
               phone_spans: list[tuple[int, int]], catalog: Catalog) -> None:
    name = find_name(norm) or bare_name_tokens(_mask(norm, facts), phone_spans)
    if name is None and asking == "name":
        name = name_from_answer(norm)
    if name is None or _is_catalog_word(name, catalog):
        return  # "我是成都的" names a city, not a person
    out.values["name"] = name
    position = norm.find(name)
    if position >= 0:
        facts.append((position, position + len(name)))  # "我叫顾家明" is no brand


def _is_catalog_word(word: str, catalog: Catalog) -> bool:
    return word in catalog.cities or word in BUILTIN_CITIES or any(
        hit.start == 0 and hit.end == len(word)
        for index in (catalog.mall_index, catalog.brand_index) for hit in index.exact(word))


def _take_mall(masked: str, out: Extraction, facts: list[tuple[int, int]], catalog: Catalog,
               known_city: str | None) -> None:
    cities = [c.city for c in find_cities(masked, catalog.cities)]
    city_of = {m.id: m.city for m in catalog.malls}
    mall = find_mall(masked, catalog.mall_index, city_of, cities + ([known_city] if known_city else []))
    if mall is not None:
        facts.append((mall.start, mall.end))
        if len(mall.mall_ids) == 1:
            out.values["mall"] = mall.mall_ids[0]
        else:
            out.choices["mall"] = mall.mall_ids
    if "mall" in out.values:
        out.values["city"] = city_of[out.values["mall"]]
    elif cities and "city" not in out.values:
        out.values["city"] = cities[0]


def _take_warranty(norm: str, today: date, out: Extraction) -> None:
    stated = wants.WARRANTY_WITHIN.search(norm) or wants.WARRANTY_OVER.search(norm)
    if stated and not wants.WARRANTY_QUESTION.match(norm, stated.end()):
        out.values["over_warranty"] = wants.WARRANTY_WITHIN.search(norm) is None
        out.warranty_stated = True
        return
    derived = over_warranty_from(out.values.get("purchase_date"), out.purchase_span, today)
    if derived is None and wants.USED_FOR_YEARS.search(norm):
        derived = True
    if derived is None and wants.RECENT_PURCHASE.search(norm):
        out.recent_purchase = True
        derived = False
    if derived is not None:
        out.values["over_warranty"] = derived


def to_public(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready values: ISO dates, whole yuan as integers."""
    public: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, date):
            public[key] = value.isoformat()
        elif isinstance(value, Decimal):
            public[key] = as_json_number(value)
        else:
            public[key] = value
    return public


def extract_fields(text: str, *, now: datetime, catalog: Catalog) -> dict[str, Any]:
    """The fields one message contains, with PRODUCT.md's public keys; `priority` always present."""
    found = extract(text, now=now, catalog=catalog)
    return to_public({**found.values, "priority": found.priority})
