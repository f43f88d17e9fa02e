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
from dialogs.extraction.names import find_name, name_from_answer
from dialogs.extraction.numbers import as_json_number
from dialogs.extraction.phones import find_phones
from dialogs.extraction.places import find_address, find_cities, find_mall, looks_like_address, tidy_address
from dialogs.extraction.priority import grade
from dialogs.extraction.text import normalize

if TYPE_CHECKING:
    from dialogs.catalog import Catalog

SHANGHAI = ZoneInfo("Asia/Shanghai")

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
    purchase_years_ago: int | None = None
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


def over_warranty_from(purchase: date | None, years_ago: int | None, today: date) -> bool | None:
    """Derived warranty status: more than one calendar year since purchase."""
    if purchase is not None:
        return purchase < _one_year_before(today)
    if years_ago is not None and years_ago >= 2:
        return True  # "前年买的" is over a year whatever the day
    return None


def _pick_dates(findings: list[DateFinding], asking: str | None, out: Extraction) -> None:
    by_role: dict[str, list[DateFinding]] = {"purchase_date": [], "delivery_date": []}
    for finding in findings:
        role = finding.role or (asking if asking in by_role else None)
        if role is None:
            continue
        if finding.value is None:
            if role == "purchase_date" and finding.years_ago is not None:
                out.purchase_years_ago = finding.years_ago
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
    """All fields in one message. `asking` is the field Kesu just asked for: a bare answer fills it."""
    today = now.astimezone(SHANGHAI).date()
    norm = normalize(text)
    out = Extraction()
    facts: list[tuple[int, int]] = []

    order = _ORDER_LABELED.search(norm)
    if order is None and asking == "order_no":
        order = _ORDER_BARE.search(norm)
    if order is not None:
        out.values["order_no"] = order.group("no") if "no" in order.groupdict() else order.group()
        facts.append(order.span())

    for phone in find_phones(_mask(norm, facts)):
        facts.append((phone.start, phone.end))
        if phone.number and "phone" not in out.values:
            out.values["phone"] = phone.number
        elif phone.problem:
            out.problems.setdefault("phone", phone.problem)
    if "phone" in out.values:
        out.problems.pop("phone", None)

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

    cities = [c.city for c in find_cities(norm, catalog.cities)]
    city_of = {m.id: m.city for m in catalog.malls}
    mall = find_mall(norm, catalog.mall_index, city_of, cities + ([known_city] if known_city else []))
    if mall is not None:
        facts.append((mall.start, mall.end))
        if len(mall.mall_ids) == 1:
            out.values["mall"] = mall.mall_ids[0]
        else:
            out.choices["mall"] = mall.mall_ids
    if "mall" in out.values:
        out.values["city"] = city_of[out.values["mall"]]
    elif cities:
        out.values["city"] = cities[0]

    brands = find_brands(norm, catalog.brand_index, asked=asking == "brand")
    if len(brands) == 1 and len(brands[0]) == 1:
        out.values["brand"] = brands[0][0]
    elif brands:
        out.choices["brand"] = tuple(dict.fromkeys(name for keys in brands for name in keys))

    name = find_name(norm) or (name_from_answer(norm) if asking == "name" else None)
    if name:
        out.values["name"] = name

    address = find_address(norm)
    if address is None and asking == "delivery_address":
        candidate = tidy_address(norm)
        if looks_like_address(candidate) or (len(candidate) >= 4 and not wants.UNKNOWN.search(candidate)):
            address = (candidate, 0, len(norm))
    if address is not None:
        out.values["delivery_address"] = address[0]
        facts.append((address[1], address[2]))
        if "city" not in out.values:
            address_cities = [c for c in find_cities(address[0], catalog.cities) if c.start == 0]
            if address_cities:
                out.values["city"] = address_cities[0].city

    expectations = wants.find_expectations(norm)
    if expectations:
        out.values["expectation"] = expectations

    problem = wants.find_problem(norm, facts)
    if problem:
        out.values["description"] = problem

    if wants.WARRANTY_WITHIN.search(norm) or wants.WARRANTY_OVER.search(norm):
        out.values["over_warranty"] = wants.WARRANTY_WITHIN.search(norm) is None
        out.warranty_stated = True
    else:
        derived = over_warranty_from(out.values.get("purchase_date"), out.purchase_years_ago, today)
        if derived is None and wants.RECENT_PURCHASE.search(norm):
            out.recent_purchase = True
            derived = False
        if derived is not None:
            out.values["over_warranty"] = derived

    short = len(norm) <= 20
    out.refused = short and wants.REFUSAL.search(norm) is not None
    out.unknown = not out.refused and short and wants.UNKNOWN.search(norm) is not None
    # Graded on the text with phones and order numbers masked: "…12345…" inside a phone is no hotline.
    out.priority, out.priority_reasons = grade(masked, out.values.get("amount"))
    return out


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
