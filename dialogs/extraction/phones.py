"""Mainland mobile numbers, however they are typed or dictated."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Spoken digits ("一三九…", "幺" for 1). 两 is left out: it starts quantities ("两三天"), not numbers.
_SPOKEN = str.maketrans("零〇一幺二三四五六七八九", "001123456789")
_DIGITISH = r"[0-9零〇一幺二三四五六七八九]"
# A run of digits (written or spoken) with the separators people put inside phone numbers.
_RUN = re.compile(rf"(?:(?:\+|00)\s?86[\s-]?)?{_DIGITISH}(?:[\s-]?{_DIGITISH}){{6,15}}")
_MOBILE = re.compile(r"1[3-9]\d{9}")
_LANDLINE = re.compile(r"0\d{9,11}")


@dataclass(frozen=True)
class PhoneFinding:
    number: str | None  # a valid mobile, digits only
    problem: str | None  # "length" | "landline" | "not_mobile": something phone-like that is not a mobile
    start: int
    end: int


def _mobile_prefix(raw: str) -> tuple[str, int] | None:
    """"13611223344 9月12号": a mobile followed, after a space, by another number."""
    for match in re.finditer(r"[\s-]", raw):
        digits = re.sub(r"\D", "", raw[: match.start()].translate(_SPOKEN))
        if raw.startswith(("+", "00")):
            digits = digits[4:] if digits.startswith("0086") else digits[2:]
        if len(digits) == 11 and _MOBILE.fullmatch(digits):
            return digits, match.start()
        if len(digits) > 11:
            return None
    return None


_SPOKEN_GROUPS = re.compile(r"[零〇一幺二三四五六七八九](?:[\s,，、-]?[零〇一幺二三四五六七八九]){10}(?![零〇一幺二三四五六七八九])")


def find_phones(text: str) -> list[PhoneFinding]:
    """Every phone-like run of digits; invalid ones are reported so the bot can say what is wrong."""
    found: list[PhoneFinding] = []
    for match in _SPOKEN_GROUPS.finditer(text):
        digits = re.sub(r"\D", "", match.group().translate(_SPOKEN))
        if _MOBILE.fullmatch(digits):
            found.append(PhoneFinding(digits, None, match.start(), match.end()))
    spoken_spans = [(f.start, f.end) for f in found]
    for match in _RUN.finditer(text):
        if any(s <= match.start() < e for s, e in spoken_spans):
            continue
        start, end = match.span()
        if start and re.match(r"[A-Za-z0-9_]", text[start - 1]):
            continue  # inside an order number or model code
        if end < len(text) and re.match(r"[A-Za-z_]", text[end]):
            continue
        raw = match.group()
        spoken = any(ch in "零〇一幺二三四五六七八九" for ch in raw)
        if spoken and (re.search(r"[0-9]", raw) is None) and len(re.sub(r"[\s-]", "", raw)) < 11:
            continue  # short Chinese numerals are quantities, not phone numbers
        digits = re.sub(r"\D", "", raw.translate(_SPOKEN))
        if raw.startswith(("+86", "+ 86", "0086", "00 86")):
            digits = digits[4:] if digits.startswith("0086") else digits[2:]
        elif len(digits) == 13 and digits.startswith("86"):
            digits = digits[2:]
        if len(digits) > 11:
            prefix = _mobile_prefix(raw)
            if prefix is not None:
                digits, end = prefix[0], start + prefix[1]
        if _MOBILE.fullmatch(digits):
            found.append(PhoneFinding(digits, None, start, end))
        elif _LANDLINE.fullmatch(digits):
            found.append(PhoneFinding(None, "landline", start, end))
        elif digits.startswith("1") and 9 <= len(digits) <= 13:
            found.append(PhoneFinding(None, "length", start, end))
    return found
