"""Grading a complaint 一般 / 重要 / 重大 by explicit rules, so staff can see why.

重大 (major): someone hurt or a safety hazard, or a threat to go to the media — seed 003 sends
these to the duty manager and management at once.
重要 (important): a threat to go to authorities or court, a repeat complaint, a health concern
without injury, or a large amount.
"""

from __future__ import annotations

import re
from decimal import Decimal

PRIORITY_ORDER = ("normal", "important", "major")
LARGE_AMOUNT = Decimal(20000)

_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("major", "safety", re.compile(
        r"受伤|砸伤|烫伤|摔伤|(?:孩子|小孩|宝宝|老人|家人|我妈|我爸|老公|老婆|我|人|手|脚|腿|头|脸|眼睛)[^，。,]{0,4}"
        r"(?:划伤|割伤|夹伤|碰伤|扎伤|刮伤|划破|割破)|住院|触电|漏电|起火|着火|冒烟|爆炸|自燃|燃气泄漏|煤气泄漏|漏气|倒塌|砸到"
        r"|甲醛超标|中毒|过敏住院|流血|骨折|送医|急诊|自爆|炸裂|爆裂|玻璃.{0,4}碎")),
    ("major", "media", re.compile(r"媒体|曝光|记者|电视台|上新闻|发微博|发抖音|网上发|发到网上|小红书|热搜")),
    ("important", "authority", re.compile(r"(?<!\d)(?:12315|12345)(?!\d)|消协|消费者协会|工商|市场监管|法院|起诉|律师|打官司|报警|维权|仲裁")),
    ("important", "repeat", re.compile(
        r"又(?:坏|出|裂|漏|不|是)|再次|第[二三四五六七八九十2-9]次|好几次|多次|投诉过|一直没人|没人管|没人理|反复|三番五次|无数次")),
    ("important", "health", re.compile(r"甲醛|刺鼻|过敏|头晕|头疼|孩子咳嗽|咳嗽")),
)


def grade(text: str, amount: Decimal | None) -> tuple[str, list[str]]:
    """The priority a message implies and the rule names that fired."""
    level = "normal"
    reasons: list[str] = []
    for rule_level, name, pattern in _RULES:
        if pattern.search(text):
            reasons.append(name)
            level = max(level, rule_level, key=PRIORITY_ORDER.index)
    if amount is not None and amount >= LARGE_AMOUNT:
        reasons.append("large_amount")
        level = max(level, "important", key=PRIORITY_ORDER.index)
    return level, reasons
