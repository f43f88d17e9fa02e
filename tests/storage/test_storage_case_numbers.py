"""Case numbers: the format customers quote, and what we accept when they type it back."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.case_numbers import find_case_number, format_case_number, luhn_check_digit, normalize_case_number

NUMBER = format_case_number(date(2026, 11, 22), 1)


def test_format_is_prefix_day_counter_and_luhn_digit() -> None:
    assert NUMBER == "KS2611220019"
    assert format_case_number(date(2026, 11, 22), 15) == f"KS261122015{luhn_check_digit('261122015')}"
    assert format_case_number(date(2026, 1, 5), 999).startswith("KS260105999")


def test_counter_grows_past_999() -> None:
    number = format_case_number(date(2026, 11, 22), 1234)
    assert number.startswith("KS2611221234") and len(number) == 13
    assert normalize_case_number(number) == number


def test_luhn_known_value() -> None:
    assert luhn_check_digit("7992739871") == 3  # the textbook example


@pytest.mark.parametrize(
    "typed",
    [
        "KS2611220019",
        "ks2611220019",
        "KS-261122-001-9",
        "ks 261122 001 9",
        "  KS 2611 2200 19 ",
        "ＫＳ２６１１２２００１９",
        "ＫＳ－２６１１２２－００１－９",
        "2611220019",
        "261122-001-9",
        "Ks_261122_0019",
        "KS—261122—001—9",
    ],
)
def test_typed_variants_normalize(typed: str) -> None:
    assert normalize_case_number(typed) == NUMBER


@pytest.mark.parametrize(
    "typed",
    ["KS2611220015", "KS2611220018", "KS2611320019", "KS261122001", "KS26112200199999", "KSabc", "", "KS"],
)
def test_invalid_numbers_rejected(typed: str) -> None:
    assert normalize_case_number(typed) is None


def test_every_one_digit_typo_is_rejected() -> None:
    digits = NUMBER[2:]
    for position in range(len(digits)):
        for replacement in "0123456789":
            if replacement == digits[position]:
                continue
            typo = "KS" + digits[:position] + replacement + digits[position + 1 :]
            assert normalize_case_number(typo) is None, typo


@pytest.mark.parametrize(
    "text",
    [
        "我的单子KS-261122-001-9怎么样了",
        "单号是 ks2611220019，麻烦查一下",
        "ＫＳ２６１１２２００１９ 这个投诉怎么样了",
        "查询 KS 261122 001 9 3天了还没人联系",
        "KS-261122-001-9 我电话13912345678",
        "案件号2611220019",
    ],
)
def test_find_in_free_text(text: str) -> None:
    assert find_case_number(text) == NUMBER


@pytest.mark.parametrize(
    "text",
    [
        "我的单子KS-261122-001-5怎么样了",  # wrong check digit
        "电话13912345678",
        "订单号ABC2611220019",  # part of another code
        "怎么样了",
        "花了12800元",
    ],
)
def test_find_rejects_non_numbers(text: str) -> None:
    assert find_case_number(text) is None


@given(
    day=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
    counter=st.integers(min_value=1, max_value=99_999),
    style=st.sampled_from(["plain", "lower", "dashed", "spaced", "fullwidth", "bare"]),
    before=st.sampled_from(["", "我的单子", "请查 ", "单号：", "ks-"]),
    after=st.sampled_from(["", "怎么样了", "，谢谢", " 急", " 3天了"]),
)
def test_round_trip_through_typing(day: date, counter: int, style: str, before: str, after: str) -> None:
    number = format_case_number(day, counter)
    typed = {
        "plain": number,
        "lower": number.lower(),
        "dashed": f"{number[:2]}-{number[2:8]}-{number[8:-1]}-{number[-1]}",
        "spaced": f"{number[:2]} {number[2:8]} {number[8:]}",
        "fullwidth": "".join(chr(ord(ch) + 0xFEE0) for ch in number),
        "bare": number[2:],
    }[style]
    assert normalize_case_number(typed) == number
    assert find_case_number(f"{before}{typed}{after}") == number


def test_counter_must_be_positive() -> None:
    with pytest.raises(ValueError):
        format_case_number(date(2026, 11, 22), 0)
