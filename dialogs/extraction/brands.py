"""The brand the customer bought, not every brand they mention."""

from __future__ import annotations

import re

from dialogs.extraction.entities import AliasIndex, Hit
from dialogs.extraction.text import clause_bounds

_PRODUCT_WORDS = (
    r"牌|品牌|家的|电器|家电|油烟机|烟机|灶|热水器|沙发|床垫|床|衣柜|橱柜|厨柜|柜|地板|瓷砖|家具|家居|家私|卫浴|马桶"
    r"|花洒|漆|冰箱|空调|洗衣机|专卖|门店|店|那里买|那买|买的|的产品|的东西|的货"
)
_CONTEXT_AFTER = re.compile(rf"^(?:的)?(?:{_PRODUCT_WORDS})")
_CONTEXT_BEFORE = re.compile(r"(?:买了?|买的|购买的?|品牌是?|牌子是?|选的|订的|定的|用的是|是)$")
# "本来想买芝华仕", "朋友说顾家挺好", "比顾家贵": mentioned, not bought.
_MENTION_ONLY_BEFORE = re.compile(
    r"想买|本来|原本|原来想|打算|准备买|朋友|听说|别人|推荐|比|不如|对比|没买|没选|看了|看过|看中|看上|考虑|隔壁|旁边|人家|而不是|不是|除了")
_BOUGHT_NEAR = re.compile(r"买|购|订|下单|签")


def _in_context(text: str, hit: Hit) -> bool:
    before = text[max(0, hit.start - 4) : hit.start]
    if re.search(r"[\d零一二两三四五六七八九十百千万]$", before):
        return False  # "两万左右" is an amount, not 左右沙发
    after = text[hit.end : hit.end + 6]
    if _CONTEXT_AFTER.match(after) or _CONTEXT_BEFORE.search(before):
        return True
    if hit.via == "pinyin" and after.startswith("的") and not hit.alias.isascii():
        return True  # "顧家的沙發": a sound-alike followed by 的 names a maker
    return before.endswith("在") and _BOUGHT_NEAR.search(text[hit.end : hit.end + 6]) is not None


def find_brands(text: str, index: AliasIndex, *, asked: bool) -> list[Hit]:
    """Candidate brand mentions (each hit's keys are catalog names), bought ones first.

    A weak alias or a short sound-alike counts only in brand context, unless Kesu just asked
    for the brand and the reply is little more than the name.
    """
    chosen: list[tuple[Hit, bool]] = []
    for hit in index.find(text):
        clause_start, _ = clause_bounds(text, hit.start)
        if _MENTION_ONLY_BEFORE.search(text[clause_start : hit.start]):
            continue
        short_reply = asked and len(text) <= hit.end - hit.start + 6
        if hit.weak and not (short_reply or _in_context(text, hit)):
            continue
        bought = _BOUGHT_NEAR.search(text[clause_start : hit.end + 8]) is not None
        if all(hit.keys != earlier.keys for earlier, _ in chosen):
            chosen.append((hit, bought))
    if any(bought for _, bought in chosen):
        # "看中芝华仕，最后在顾家买了": the brand with the purchase verb is the one bought.
        chosen = [item for item in chosen if item[1]]
    return [hit for hit, _ in chosen]
