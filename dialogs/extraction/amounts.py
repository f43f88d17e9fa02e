"""The amount paid: the total price, not a deposit, a difference, an area or a model number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from dialogs.extraction.numbers import parse_number
from dialogs.extraction.text import clause_bounds

_TOKEN = re.compile(
    r"(?P<cur>[¥$]|rmb|RMB|人民币)?\s*"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*[万千kKwW](?:[一二三四五六七八九]|\d(?!\d))?)?"
    r"|[零一二两三四五六七八九十百千万]{2,})"
    r"\s*(?P<unit>块钱|块|元|圆|rmb|RMB|人民币)?"
)
_NOT_MONEY_AFTER = re.compile(
    r"\s*(?:平|㎡|米|m(?![a-z])|厘米|cm|mm|公分|毫米|天|个|年|号|日|月|点|岁|斤|公斤|次|件|张|套|台|层|楼|室|栋|单元|%"
    r"|寸|周|小时|分钟|度|级|位|人|家|瓶|桶|箱|片|多平|折|期|公里|km|页|条|根|把|扇|组|款|w(?![a-z])|W(?![a-z]))")
_PIECES_AFTER = re.compile(r"(?:瓷砖|砖|板|地板|玻璃|木板|石材)")
_VAGUE_AFTER = re.compile(r"\s*(?:多|来|几|余|左右|出头|上下|不到|以上|以内)")
_DEPOSIT_BEFORE = re.compile(r"(?:定金|订金|首付|预付|押金|尾款|运费|安装费|搬运费|上楼费|差价)[^，,。；;]{0,3}$")
_DIFFERENCE_BEFORE = re.compile(r"(?:贵了|便宜了?|差了|多收了?|少了|多花了?|多付了?|补了|补差|赔|补偿|退我|返我|罚)[^，,。]{0,3}$")
_TOTAL_BEFORE = re.compile(r"(?:总价|一共|总共|合计|全款|总额|总计|共计)[^，,。]{0,4}$")
_MONEY_BEFORE = re.compile(
    r"(?:花了|花|价格|价钱|总价|金额|一共|总共|合计|付了|交了|成交|全款|多少钱|价值|价|买成|花费|售价|标价|消费"
    r"|付款|收了|收我)[^，,。]{0,4}$")
_MODEL_CODE = re.compile(r"[A-Za-z_#-]")
_YEAR_LIKE = re.compile(r"(?:19|20)\d{2}")
_CN_UNITS = re.compile(r"[十百千万]")


@dataclass(frozen=True)
class AmountFinding:
    value: Decimal | None
    problem: str | None  # "vague" | None
    strong: bool  # a currency word, a unit, or a price context: certainly money
    total: bool  # introduced by 总价/一共/…: wins over other amounts
    start: int
    end: int


def find_amounts(text: str, *, asked: bool) -> list[AmountFinding]:
    """Money amounts in `text` (dates, phones and order numbers already masked out with '#')."""
    found: list[AmountFinding] = []
    for match in _TOKEN.finditer(text):
        number, currency, unit = match["num"], match["cur"], match["unit"]
        start = match.start("cur") if currency else match.start("num")
        end = match.end("unit") if unit else match.end("num")
        if (start and _MODEL_CODE.match(text[start - 1])) or (end < len(text) and _MODEL_CODE.match(text[end])):
            continue
        after = text[end:]
        if not unit and _NOT_MONEY_AFTER.match(after):
            continue
        if unit == "块" and _PIECES_AFTER.match(after):
            continue
        chinese = not re.match(r"\d", number)
        if chinese and not (_CN_UNITS.search(number) or unit or currency):
            continue
        value = parse_number(number.replace(" ", ""))
        if value is None or value <= 0:
            continue
        before = text[max(0, start - 10) : start]
        if _DEPOSIT_BEFORE.search(before) or _DIFFERENCE_BEFORE.search(before):
            continue
        clause_start, clause_end = clause_bounds(text, start)
        # A number standing on its own: its own clause, or a space-separated token in terse lists
        # like "方太油烟机 3980 国庆前送的货".
        alone = (re.search(r"(?:^|\s)(?:是|就是|大概|大约|差不多|约)?\s*$", text[clause_start:start]) is not None
                 and re.match(r"\s*(?:的|吧|啊|呀|哈|左右)?(?:\s|$)", text[end:clause_end]) is not None)
        has_unit = bool(unit or currency or re.search(r"[万千kKwW]", number) or (chinese and value >= 100))
        strong = has_unit or bool(_MONEY_BEFORE.search(before))
        if not strong and (_YEAR_LIKE.fullmatch(number) or not (alone or asked) or value < (1 if asked else 100)):
            continue
        vague = _VAGUE_AFTER.match(after) is not None
        found.append(AmountFinding(
            value=None if vague else value, problem="vague" if vague else None, strong=strong or alone,
            total=bool(_TOTAL_BEFORE.search(before)), start=start, end=end,
        ))
    return found


def best_amount(findings: list[AmountFinding]) -> AmountFinding | None:
    """The total if one is named, else the first certain amount."""
    usable = [f for f in findings if f.value is not None]
    for candidates in ([f for f in usable if f.total], [f for f in usable if f.strong], usable):
        if candidates:
            return candidates[0]
    return None
