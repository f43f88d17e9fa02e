"""Chinese and Arabic numerals as customers actually say them.

"三千五" is 3500 and "一万二" is 12000: a trailing digit after a unit means the next unit
down. General-purpose converters get these colloquial forms wrong (jionlp: "三千五" → 3005),
and they are the most common way amounts are said.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
             "六": 6, "七": 7, "八": 8, "九": 9}
_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
_BIG_UNITS = {"万": 10_000, "亿": 100_000_000}
CN_NUMERAL_CHARS = "".join(CN_DIGITS) + "".join(_SMALL_UNITS) + "".join(_BIG_UNITS)
CN_NUMERAL = re.compile(f"[{CN_NUMERAL_CHARS}]+")


def parse_cn_integer(text: str) -> int | None:
    """Value of a Chinese numeral ("一万二千五" → 12500, "十五" → 15, "三千五" → 3500)."""
    if not text or any(ch not in CN_NUMERAL_CHARS for ch in text):
        return None
    if all(ch in CN_DIGITS for ch in text):
        # Digit-by-digit reading: "一三九" is 139, "二零二五" is 2025.
        return int("".join(str(CN_DIGITS[ch]) for ch in text))
    total = 0
    section = 0
    digit: int | None = None
    last_unit = 1
    zero_after_unit = False
    for ch in text:
        if ch in CN_DIGITS:
            zero_after_unit = zero_after_unit or CN_DIGITS[ch] == 0
            digit = CN_DIGITS[ch]
        elif ch in _SMALL_UNITS:
            unit = _SMALL_UNITS[ch]
            section += (1 if digit is None else digit) * unit
            digit, last_unit, zero_after_unit = None, unit, False
        else:
            unit = _BIG_UNITS[ch]
            section += digit or 0
            total += (section or 1) * unit
            section, digit, last_unit, zero_after_unit = 0, None, unit, False
    if digit is not None:
        # A trailing digit right after a unit is shorthand for the next unit down ("三千五"),
        # unless a zero says the units were skipped ("一千零五" is 1005).
        shorthand = last_unit >= 100 and not zero_after_unit
        section += digit * (last_unit // 10 if shorthand else 1)
    return total + section


def to_decimal(digits: str) -> Decimal | None:
    try:
        return Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None


_MIXED = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[万千kKwW])(?P<rest>[一二三四五六七八九\d])?(?![\d])")


def parse_number(token: str) -> Decimal | None:
    """Any single number token: "12,800", "3.5k", "1.2万", "1万2", "三千五", "两万"."""
    token = token.strip()
    if not token:
        return None
    mixed = _MIXED.fullmatch(token)
    if mixed:
        base = Decimal(mixed["num"])
        unit = mixed["unit"].lower()
        scale = 10_000 if unit in ("万", "w") else 1000
        value = base * scale
        rest = mixed["rest"]
        if rest:
            rest_digit = int(rest) if rest.isdigit() else CN_DIGITS[rest]
            value += rest_digit * (scale // 10)
        return value
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", token):
        return to_decimal(token)
    integer = parse_cn_integer(token)
    return None if integer is None else Decimal(integer)


def as_json_number(value: Decimal) -> int | float:
    """Whole yuan print as integers; JSON consumers should not see 3500.00."""
    return int(value) if value == value.to_integral_value() else float(value)
