"""Purchase and delivery dates, resolved the way a careful 400 agent would.

Relative phrases are resolved against the conversation's clock in Asia/Shanghai; weeks start
on Monday; a yearless date that would lie in the future is last year's; a month alone or a
span ("才半年") is not a date. Whether a date is the purchase or the delivery is read from the
verb next to it (买/下单 vs 送/到货/安装).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

from dialogs.extraction.numbers import parse_cn_integer
from dialogs.extraction.text import clause_bounds

_NUM = r"(?:\d{1,2}|[一二三四五六七八九十两]{1,3})"
_REL_YEAR = {"大前年": -3, "前年": -2, "去年": -1, "今年": 0, "明年": 1}
_REL_MONTH = {"上上个月": -2, "上上月": -2, "上个月": -1, "上月": -1, "这个月": 0, "这月": 0, "本月": 0,
              "下个月": 1, "下月": 1}
_HOLIDAYS = {"双十一": (11, 11), "双11": (11, 11), "双十二": (12, 12), "双12": (12, 12), "元旦": (1, 1),
             "国庆": (10, 1), "国庆节": (10, 1), "五一": (5, 1), "618": (6, 18)}
_REL_DAY = {"今天": 0, "今日": 0, "今儿": 0, "当天": 0, "昨天": -1, "昨日": -1, "昨儿": -1, "前天": -2,
            "前日": -2, "大前天": -3, "明天": 1, "后天": 2}
_WEEKDAY = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6, "末": 5,
            "1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5, "7": 6}
_WEEK_SHIFT = {"上上": -2, "上": -1, "这": 0, "本": 0, "下": 1, "": 0}
_REL_YEAR_RE = "|".join(_REL_YEAR)

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("numeric", re.compile(r"(?<![\dA-Za-z#])(?P<y>(?:19|20)\d{2})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?![\d])")),
    ("ymd", re.compile(
        rf"(?:(?P<y>(?:19|20)?\d{{2}}|[二〇零一两三四五六七八九]{{4}})年|(?P<ry>{_REL_YEAR_RE}))?的?\s*"
        rf"(?P<m>{_NUM})月(?:份)?(?P<d>{_NUM})(?:日|号)?(?![\d万千块元])")),
    ("month_day", re.compile(rf"(?P<rm>{'|'.join(_REL_MONTH)})的?(?P<d>{_NUM})(?:日|号)")),
    ("holiday", re.compile(rf"(?:(?P<ry>{_REL_YEAR_RE})的?)?(?P<h>双十一|双11|双十二|双12|元旦|国庆节?|五一|618)"
                           r"(?(h)(?!\d))")),
    ("days_ago", re.compile(rf"(?P<n>{_NUM})天(?:之)?前")),
    ("rel_day", re.compile("|".join(sorted(_REL_DAY, key=len, reverse=True)))),
    ("weekday", re.compile(r"(?P<shift>上上|上|这|本|下)?个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天末1-7])")),
    ("day", re.compile(rf"(?<![\d月年#A-Za-z])(?P<d>{_NUM})(?:号|日)(?!楼|线|门|床|店|位|元|以|之|内|左右|单|码|\d)")),
    ("vague", re.compile(
        rf"(?:(?:{_REL_YEAR_RE})的?)?{_NUM}月(?:份|初|中|底|末)?|(?:{_REL_YEAR_RE})(?:年初|年底|年中|上半年|下半年)?"
        r"|上上?个?月|上上?(?:周|星期|礼拜)|半年(?:前|多)?|几个月前|\d+个月前|[一两二三四五六七八九十]+个月前"
        r"|前段时间|前阵子|前些天|月初|月底")),
]

PURCHASE_WORDS = re.compile(r"买|购|下单|下的单|下的?订单|下了订单|订的|订购|定的|签|付款|付的|付了|交钱|交的钱|成交|入手|拍的|定了")
DELIVERY_WORDS = re.compile(r"送|到货|到家|到的货|配送|安装|装的|装好|装上|上门|交付|发货|收到|收货|交货|进场|施工")
_PROMISED = re.compile(r"说好|约好|约的|约定|预计|承诺|答应|保证|原定|原来说|本来说|定好|说是|要求")
_ACTUAL = re.compile(r"实际|才|终于|已经|总算")
_FUTURE_TENSE = re.compile(r"说好|约好|约的|约定|预计|承诺|答应|保证|会送|会来|要送|要来|将|下周|下个?月|还没|还未")


# "国庆前", "元旦前后": around a day is not the day. "到今天都没送": today is when it still isn't.
_NOT_A_DATE_AFTER = re.compile(r"前后|前|后|左右|期间|之前|之后|那几天|那段时间")
_UNTIL_NOW = re.compile(r"(?:到|直到|截止到?)$")
_STILL_NOT = re.compile(r"(?:为止)?[都还也]?(?:没|未|不)")


_FIELD_LABEL = re.compile(r"(购买日期|购买时间|买的日期|下单日期|下单时间|签约日期|合同日期)|送货日期|送货时间|安装日期|安装时间|到货时间")


@dataclass(frozen=True)
class DateFinding:
    value: date | None
    problem: str | None  # "impossible" | "vague" | None
    start: int
    end: int
    role: str | None  # "purchase_date" | "delivery_date" | None (no verb nearby)
    promised: bool
    actual: bool
    # The first and last day the phrase can mean: a month or a year when the day is unknown
    # ("去年五月份", "前年"), which can still settle the warranty question.
    span: tuple[date, date] | None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else parse_cn_integer(text)


def _safe_date(year: int, month: int, day: int) -> date | None:
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    return date(year, month, day)


def _shift_month(today: date, months: int) -> tuple[int, int]:
    index = today.year * 12 + today.month - 1 + months
    return index // 12, index % 12 + 1


def _year_of(match: re.Match[str], today: date) -> int | None:
    explicit = match.groupdict().get("y")
    if explicit:
        year = _int(explicit)
        if year is None:
            return None
        return year + 2000 if year < 100 else year
    relative = match.groupdict().get("ry")
    return today.year + _REL_YEAR[relative] if relative else None


def _resolve(kind: str, match: re.Match[str], today: date, future_tense: bool) -> tuple[date | None, str | None]:
    """The date a phrase means, or why it is not one."""
    if kind == "vague":
        return None, "vague"
    if kind == "rel_day":
        return today + timedelta(days=_REL_DAY[match.group()]), None
    if kind == "days_ago":
        days = _int(match["n"]) or 0
        return (today - timedelta(days=days), None) if days <= 400 else (None, "vague")
    if kind == "weekday":
        monday = today - timedelta(days=today.weekday())
        shift = _WEEK_SHIFT[match["shift"] or ""]
        value = monday + timedelta(days=7 * shift + _WEEKDAY[match["wd"]])
        if not match["shift"] and value > today and not future_tense:
            value -= timedelta(days=7)  # "周六送的" said on a Wednesday is last Saturday
        return value, None
    if kind == "holiday":
        month, day = _HOLIDAYS[match["h"]]
        year = _year_of(match, today)
        if year is None:
            year = today.year if (month, day) <= (today.month, today.day) else today.year - 1
        return date(year, month, day), None
    day_of_month = _int(match["d"])
    if day_of_month is None:
        return None, "impossible"
    if kind == "month_day":
        year, month = _shift_month(today, _REL_MONTH[match["rm"]])
    elif kind == "day":
        year, month = today.year, today.month
    else:
        month = _int(match["m"]) or 0
        explicit_year = _year_of(match, today)
        year = explicit_year if explicit_year is not None else today.year
        this_year = _safe_date(year, month, day_of_month)
        yearless_future = this_year is not None and this_year > today and not future_tense
        # A yearless date still to come this year means last year's (and 2月29 the last leap day's).
        if explicit_year is None and (yearless_future or (this_year is None and (month, day_of_month) == (2, 29))):
            year -= 1
    resolved = _safe_date(year, month, day_of_month)
    return (resolved, None) if resolved else (None, "impossible")


def _vague_span(phrase: str, today: date) -> tuple[date, date] | None:
    """The days a month- or year-level phrase covers, or None for spans like "半年前"."""
    relative_year = re.match(_REL_YEAR_RE, phrase)
    year = today.year + _REL_YEAR[relative_year.group()] if relative_year else today.year
    month_match = re.search(rf"({_NUM})月", phrase)
    relative_month = re.search("上上个?月|上个?月|这个?月|本月", phrase)
    if month_match:
        month = _int(month_match.group(1)) or 0
        if not 1 <= month <= 12:
            return None
        if not relative_year and (month, 1) > (today.month, 1):
            year -= 1
    elif relative_month:
        year, month = _shift_month(today, {"这": 0, "本": 0}.get(relative_month.group()[0],
                                                                -2 if relative_month.group().startswith("上上") else -1))
    elif relative_year:
        return date(year, 1, 1), date(year, 12, 31)
    else:
        return None
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def _role(text: str, start: int, end: int) -> str | None:
    """The field a date belongs to: the nearest purchase or delivery verb in its clause."""
    clause_start, clause_end = clause_bounds(text, start)
    after = text[end:clause_end]
    first_purchase = PURCHASE_WORDS.search(after)
    first_delivery = DELIVERY_WORDS.search(after)
    if first_purchase or first_delivery:
        if first_purchase and (not first_delivery or first_purchase.start() <= first_delivery.start()):
            return "purchase_date"
        return "delivery_date"
    before = text[clause_start:start]
    if not PURCHASE_WORDS.search(before) and not DELIVERY_WORDS.search(before):
        # "购买日期说错了，应该是12月22号": a field label may sit in the clause before.
        label = _FIELD_LABEL.search(text[max(0, clause_start - 12) : clause_start])
        return None if label is None else ("purchase_date" if label.group(1) else "delivery_date")
    last_purchase = max((m.end() for m in PURCHASE_WORDS.finditer(before)), default=-1)
    last_delivery = max((m.end() for m in DELIVERY_WORDS.finditer(before)), default=-1)
    if last_purchase < 0 and last_delivery < 0:
        return None
    return "purchase_date" if last_purchase > last_delivery else "delivery_date"


def find_dates(text: str, today: date) -> list[DateFinding]:
    """All date phrases in `text`, earliest first, without overlaps."""
    taken: list[tuple[int, int]] = []
    findings: list[DateFinding] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(s < end and start < e for s, e in taken):
                continue
            until_now = kind == "rel_day" and _UNTIL_NOW.search(text[:start]) and _STILL_NOT.match(text, end)
            if _NOT_A_DATE_AFTER.match(text, end) or until_now:
                taken.append((start, end))
                continue  # "国庆前", "到今天都没送": no date here
            clause_start, clause_end = clause_bounds(text, start)
            clause = text[clause_start:clause_end]
            value, problem = _resolve(kind, match, today, bool(_FUTURE_TENSE.search(clause)))
            taken.append((start, end))
            findings.append(DateFinding(
                value=value, problem=problem, start=start, end=end, role=_role(text, start, end),
                promised=bool(_PROMISED.search(clause)) or (value is not None and value > today),
                actual=bool(_ACTUAL.search(clause)) and not (value is not None and value > today),
                span=(value, value) if value else _vague_span(match.group(), today) if kind == "vague" else None,
            ))
    return sorted(findings, key=lambda f: f.start)
