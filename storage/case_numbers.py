"""Case numbers: what customers quote back to ask "怎么样了".

Shape: ``KS`` + YYMMDD (day of opening in Asia/Shanghai) + a per-day counter padded to
three digits (it simply grows past 999) + one Luhn check digit over every digit after
``KS``. The check digit lets us reject a mistyped number instead of showing a customer
somebody else's case.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime

PREFIX = "KS"
_DAY_DIGITS = 6
_MIN_COUNTER_DIGITS = 3
_MAX_COUNTER_DIGITS = 6
_MIN_DIGITS = _DAY_DIGITS + _MIN_COUNTER_DIGITS + 1
_MAX_DIGITS = _DAY_DIGITS + _MAX_COUNTER_DIGITS + 1

# Separators customers put inside numbers: spaces, dashes of every kind, underscores, dots.
_SEPARATORS = "\\s\\-_.·\u2010-\u2015\u2212\u30fc\uff0d"
_SEP_RUN = re.compile(f"[{_SEPARATORS}]+")
_GROUP = re.compile(f"(\\d+)([{_SEPARATORS}]*)")
_CANDIDATE = re.compile(
    f"(?<![A-Z0-9])(?:K[{_SEPARATORS}]*S[{_SEPARATORS}:#]*)?(\\d(?:[{_SEPARATORS}]*\\d)*)(?![0-9])",
    re.IGNORECASE,
)


def luhn_check_digit(digits: str) -> int:
    """The Luhn digit catches every single-digit typo and most swaps of neighbours."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # these get doubled once the check digit is appended
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def format_case_number(day: date, counter: int) -> str:
    """Canonical number for the ``counter``-th case opened on Shanghai ``day``."""
    if counter < 1:
        raise ValueError(f"case counter must be positive, got {counter}")
    payload = f"{day:%y%m%d}{counter:0{_MIN_COUNTER_DIGITS}d}"
    return f"{PREFIX}{payload}{luhn_check_digit(payload)}"


def _is_valid_digits(digits: str) -> bool:
    """Length, a real calendar day and the check digit: phone and order numbers rarely pass all three."""
    if not (_MIN_DIGITS <= len(digits) <= _MAX_DIGITS) or not digits.isascii() or not digits.isdigit():
        return False
    try:
        datetime.strptime(digits[:_DAY_DIGITS], "%y%m%d")
    except ValueError:
        return False
    if int(digits[_DAY_DIGITS:-1]) == 0:
        return False
    return luhn_check_digit(digits[:-1]) == int(digits[-1])


def normalize_case_number(text: str) -> str | None:
    """Canonical ``KS…`` string for what a customer typed, or None when it is not a valid number.

    Accepts lowercase, spaces, dashes, full-width characters and a missing ``KS`` prefix.
    """
    cleaned = _SEP_RUN.sub("", unicodedata.normalize("NFKC", text)).upper()
    cleaned = cleaned.removeprefix(PREFIX)
    return f"{PREFIX}{cleaned}" if _is_valid_digits(cleaned) else None


def find_case_number(text: str) -> str | None:
    """First valid case number inside free text such as "我的单子KS-261122-001-9怎么样了".

    Separators make the digit run ambiguous: "KS2611220019 3天了" glues a stray digit on with a
    space, while "KS-261122-1234-5" has a four-digit counter. A candidate may end wherever a
    separator is; one that ends at a space (or the end of the run) beats one that cuts a
    dash-joined group, then the shortest wins.
    """
    normalized = unicodedata.normalize("NFKC", text)
    for match in _CANDIDATE.finditer(normalized):
        run = match.group(1)
        digits = ""
        fallback: str | None = None
        for group in _GROUP.finditer(run):
            digits += group.group(1)
            if len(digits) > _MAX_DIGITS:
                break
            if _is_valid_digits(digits):
                separator = group.group(2)
                if not separator or any(ch.isspace() for ch in separator):
                    return PREFIX + digits
                fallback = fallback or PREFIX + digits
        if fallback is not None:
            return fallback
    return None
