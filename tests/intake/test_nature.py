"""The nature suggested when a case opens: what customers actually write, negations and mixed complaints.

Most sentences come from the evaluation sets (evals/extraction_*.jsonl), as the description
extractor keeps them; the rules are in dialogs/extraction/nature.py.
"""

from __future__ import annotations

import pytest

from dialogs.extraction.nature import ORDER, suggest_nature
from storage.models import NATURES


@pytest.mark.parametrize(("description", "expected"), [
    # one clear kind of problem
    ("扶手开裂了", "quality"),
    ("床垫中间塌陷", "quality"),
    ("冷藏室不制冷", "quality"),
    ("装好第二天就漏水", "quality"),
    ("床垫有异味", "quality"),
    ("柜子甲醛超标，家里孩子过敏住院了", "quality"),
    ("买了才半年就坏了", "quality"),
    ("柜门铰链生锈了，开关都费劲", "quality"),
    ("你们店员张伟态度很差，我要投诉他", "service"),
    ("打了好几次电话都没人回", "service"),
    ("找了店里好几次都推诿，厂家说找店，店里说找厂家", "service"),
    ("同样的床在网上比你们店里便宜，贵了一千多", "sales"),
    ("说是有乳胶层，回来拆开一看里面就一层薄海绵，这不是虚假宣传吗", "sales"),
    ("你们老板答应给我打九折，结账的时候不认了", "sales"),
    ("买的时候说送踢脚线和扣条，装的时候却要另外收钱，一共多收了860", "sales"),
    ("说好1月5号送，到今天都没送", "delivery"),
    ("本来约好上周六送货，到今天也没来，打电话问就说推迟", "delivery"),
    ("送来的砖少了三箱", "delivery"),
    ("全友 床 1.8米 送成1.5的了", "delivery"),
    ("物流显示已签收，可我根本没收到", "delivery"),
    ("说好今天上门安装，到现在人影都没有", "delivery"),
    # negated words do not count
    ("没有异味，就是柜门关不上", "quality"),
    ("质量没问题，就是送货太慢", "delivery"),
    ("不是质量问题，是安装的时候没装好", "delivery"),
    ("服务态度挺好的，就是沙发塌了", "quality"),
    ("东西没什么问题，态度太差了", "service"),
    # mixed: most words win; a tie goes quality > delivery > sales > service
    ("你们的送货员李强态度恶劣，我要投诉", "service"),  # a delivery person is not a delivery problem
    ("送货的时候把门框磕坏了", "delivery"),  # damage in transit
    ("柜门开裂了，客服还一直推诿", "quality"),  # attitude on top of a defect
    ("导购说是头层牛皮，我看根本就是PU的，骗人嘛", "sales"),
    ("约的上午十点送，硬是拖到下午四点才到，还把我家门框磕掉一块漆，送货师傅态度还很冲", "delivery"),
    ("说好五一前送到，昨天突然打电话说要延期到五月中旬", "delivery"),  # 说好 (sales) vs 延期: a tie
    ("比慕思还贵，质量却差远了", "quality"),  # tie: the defect first
    ("东西送到南京市鼓楼区中山北路200号，拆开就是坏的", "quality"),  # where it went is no delivery problem
    # nothing clear
    ("你好", None),
    ("才3k的东西都不给退？", None),
    ("", None),
    (None, None),
])
def test_suggested_nature(description: str | None, expected: str | None) -> None:
    assert suggest_nature(description, None) == expected


@pytest.mark.parametrize(("description", "expectation", "expected"), [
    ("赶紧把剩下的货补送过来", ["deliver"], "delivery"),
    ("等很久了", ["deliver"], "delivery"),  # the words say nothing; the expectation does
    ("才2k的东西你们都不给换？", ["exchange"], None),  # an exchange fits any nature
    ("态度不好，弹簧也响", ["apology"], "service"),  # a 1:1 tie the expectation breaks
    ("态度不好，弹簧也响", ["repair"], "quality"),
    ("态度恶劣，推诿扯皮，弹簧也响", ["repair", "compensation"], "service"),  # words outweigh the hint
    (None, ["repair"], "quality"),
    ("沙发异响", [], "quality"),
])
def test_expectation_breaks_ties_and_fills_gaps(description: str | None, expectation: list[str],
                                                 expected: str | None) -> None:
    assert suggest_nature(description, expectation) == expected


def test_a_repeated_word_counts_once() -> None:
    """Customers repeat themselves when angry; repetition is not a second problem."""
    assert suggest_nature("贵了贵了贵了！！柜门开裂，还生锈", None) == "quality"


def test_the_suggestions_are_the_stored_natures() -> None:
    assert sorted(ORDER) == sorted(NATURES)
