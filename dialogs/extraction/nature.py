"""A first guess at a complaint's nature (产品质量 / 服务 / 销售 / 送货安装) from the customer's words.

Seeds 002/003 classify every complaint by nature for the monthly statistics. The intake only
suggests one when a case opens, so the figures are not left "unclassified" when staff are busy;
staff see it and change it with /classify. A wrong guess costs one command, a missing one a
hole in the report. The rules are plain word lists, easy to read and extend, like the rest of
extraction (no model): the words describe a problem ("裂", "没送"), not a topic the customer
merely mentions ("送的货", "安装师傅").

How the dominant nature is chosen:

1. Each nature has words for a problem of that kind. A word counts once per message, however
   often the customer repeats it.
2. A word the customer negates does not count: "没有异味", "不是质量问题", "质量没问题", "态度还挺好".
   For delivery, 没/没有/不/未 in front is the complaint itself ("到现在还没上门"), so only
   "不是 …" and "… 没问题" negate it.
3. The expectation adds half a point: 尽快送货/安装 → delivery, 维修 → quality, 道歉 → service.
   It breaks ties and names a nature the words leave open ("赶紧把剩下的货补送过来").
4. Most points wins. On a tie the order is quality, delivery, sales, service: a defect is the
   most common complaint and often only shows up after delivery ("安装后柜门开裂"), and staff
   attitude usually comes on top of another problem ("柜子开裂，客服还推诿").
5. Nothing counted: None, and staff classify the case themselves.
"""

from __future__ import annotations

import re

from dialogs.extraction.text import CLAUSE_SPLIT, normalize

# Tie order (rule 4); the values are storage.models.NATURES.
ORDER = ("quality", "delivery", "sales", "service")

_WORDS: dict[str, re.Pattern[str]] = {
    # A defect of the thing bought: it breaks, cracks, leaks, smells, does not work.
    "quality": re.compile(
        r"质量|做工|用料|裂|(?<![磕碰撞摔打刮弄磨])坏|故障|失灵|报错|没反应|不灵|变形|塌|陷|下沉|凹|鼓|翘|歪|弯|断|短了|碎|缝|锈|霉|虫"
        r"|掉(?:了|下来|底|渣|毛|釉|色|漆|皮)|脱(?:落|胶|皮|漆)|开(?:裂|胶|线)|起(?:皮|泡|球|毛|皱|拱|鼓|雾|翘)"
        r"|发(?:霉|黑|白|黄|花|烫)|色差|颜色[^，。]{0,6}(?:不一样|不对|差)|划痕|渍|粘|硌|(?<!假)冒(?!充|牌)|味|甲醛|黑心棉|有问题"
        r"|(?<!影)响(?!应)|吵|噪音|声音[^，。]{0,3}大|嗡嗡|咔咔|咯吱|嘶嘶|震|抖(?!音)|晃|松(?:动|了|脱)"
        r"|漏(?:水|电|气|风|油)|渗|滴水|堵|跳闸|熄火|起火|着火|爆|结(?:冰|霜)"
        r"|忽[冷高]忽[热低]|一会儿?冷一会儿?[热烫]|(?:效果|吸力|水压)[^，。]{0,3}(?:差|小)"
        r"|不(?:亮|冷|热|制冷|制热|转|吸烟|工作|出水|能用)|用不了"
        r"|(?:关|合|拉|打|点|抽|冲|冻|放|调|锁|插)不(?:上|严|紧|拢|开|着|起来|干净|住|平|动|进)"),
    # How people treated the customer: attitude, nobody answering, passing the buck.
    "service": re.compile(
        r"态度|服务|不理|不搭理|推诿|踢皮球|推脱|扯皮|敷衍|糊弄|不耐烦|不负责|事多|不收拾|不接电话|打不通|不回|说会处理"
        r"|没人(?:回|理|管|接|联系|处理)"),
    # What was sold or promised: price, claims, gifts, invoices, deposits, a different product than shown.
    "sales": re.compile(
        r"价格|价钱|差价|贵了|便宜|降价|保价|打折|九折|优惠|多收|另外收|宣传|广告|承诺|答应|说好|说是|改口|不认"
        r"|赠品|发票|定金|订金|没货|缺货|冒充|假冒|假货|以次充好|缺斤少两|货不对板|调包|翻新|骗|忽悠|(?:跟|和|与)(?:样品|样板|合同上?)"),
    # Getting it to the home and installed: late, missing, wrong items, badly fitted.
    # 送货员 / 安装师傅 are people, not a delivery problem; 上门检测/维修 is after-sales, not delivery.
    "delivery": re.compile(
        r"送货(?!员|工|师傅|的人)|配送|物流|安装(?!工|师傅|的人|的师傅)|上门(?!检测|维修|修|看|鉴定)|延误|延迟|延期|推迟|拖延"
        r"|一拖再拖|迟迟|工期|交货|交期|提货|补货|还在生产|没消息|没送|不送|才送|没到货|没来|补送|少送|漏送|送错|发错|送成|来的是"
        r"|我订的是|尺寸不对|规格错|缺件|少件|少了|缺了|没装|装得|装歪|装反|装错|重新装|没装好|装了一半|没拆|没接好|没铺|铺装|施工"
        r"|运输|(?:磕|碰|撞|摔|刮|磨)(?:坏|破|花|掉|的|了)|打坏|弄坏"),
}
_NEGATED_BEFORE = re.compile(r"(?:不是|并非|并不是|不属于|不算)(?:什么|任何)?$")
_ABSENT_BEFORE = re.compile(r"(?:没有|没|无|不|未)(?:什么|任何|啥|太|一点)?$")
_NEGATED_AFTER = re.compile(r"^(?:的问题|方面|态度)?(?:都|也|倒|还|倒是)?(?:没问题|没毛病|没什么问题|没啥问题|还行|还可以|挺好|很好|不错|没得说|无关|没关系)")
_EXPECTATION_HINTS = {"deliver": "delivery", "repair": "quality", "apology": "service"}


def suggest_nature(description: str | None, expectation: list[str] | None) -> str | None:
    """The nature the complaint most likely has (quality, service, sales, delivery), or None when unclear."""
    said: dict[str, set[str]] = {nature: set() for nature in ORDER}
    for clause in CLAUSE_SPLIT.split(normalize(description or "")):
        for nature, words in _WORDS.items():
            said[nature] |= {m.group() for m in words.finditer(clause) if not _negated(nature, clause, m)}
    points = {nature: float(len(words)) for nature, words in said.items()}
    for code in expectation or ():
        if code in _EXPECTATION_HINTS:
            points[_EXPECTATION_HINTS[code]] += 0.5
    best = max(ORDER, key=lambda nature: (points[nature], -ORDER.index(nature)))
    return best if points[best] > 0 else None


def _negated(nature: str, clause: str, match: re.Match[str]) -> bool:
    before, after = clause[:match.start()], clause[match.end():]
    if _NEGATED_BEFORE.search(before) or _NEGATED_AFTER.match(after):
        return True
    return nature != "delivery" and _ABSENT_BEFORE.search(before) is not None
