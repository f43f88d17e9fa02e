"""What the customer expects, what went wrong, and the short answers a question gets back."""

from __future__ import annotations

import re

from dialogs.extraction.text import CJK, clauses

# Order matters only for reading; every code whose words appear (and are not negated) is kept.
_EXPECTATIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("refund", re.compile(r"退一赔[一二三四五六七八九十\d]|退款|退钱|把钱退|钱退|退费|退全款|退差价|返还|退回.{0,2}钱|退[定订]金|[定订]金退|退一部分|退部分")),
    ("compensation", re.compile(r"赔[一二三四五六七八九十\d]|赔偿|赔钱|补偿|索赔|赔付|赔我|要赔|给赔|赔点")),
    ("return", re.compile(r"^退(?:吧|了吧|掉)?$|退货|退掉|退了它|退了吧|要退(?![款钱费定订一部])|给我退(?![款钱费定订])|退回去|退给(?!我)|全退|要么退|能退吗|能不能退|可以退吗|给退吗")),
    ("exchange", re.compile(r"^换(?:吧|了吧|掉|新)?$|(?<![调更转])换(?![了过季成])[\u4e00-\u9fff]{1,3}(?=$|[，,。；;！!])|不给换|不给退换|换货|换新|直接换|要么换|给换|能换|可以换|换吗|换不换|要求换|希望换|换一[个张套台件把]|换个|换一下|换掉|调换|更换|重新换|给我换|要换")),
    ("repair", re.compile(r"^修(?:吧|一下)?$|维修|修好|修一下|修理|返工|重铺|重装|重新安装|重新装|重新铺|重新刷|重刷|补漆|修复|来修|上门修|修补|修修|要修|给我修|(?<![保])修(?![改正过])")),
    ("apology", re.compile(r"道歉|赔礼|认错|给个态度")),
    ("inspection", re.compile(r"检测|鉴定|来人看看|上门看看|派人看|派人来看|来看看|过来看|质检|检验|上门查看|现场看")),
    ("deliver", re.compile(r"尽快送|尽快安装|马上送|赶紧送|补送|尽快发货|马上给我送|马上送过来|快点送|安排送货|安排安装|尽快装|赶快送"
                           r"|快点装|马上安装|尽快配送|赶紧安装|早点送|按时送|尽快送过来|赶紧送过来|补送过来")),
)
_NEGATION = re.compile(r"(?:不要|不想|不用|别|不需要|不是要|没要求|不必|不求|不|没)(?:给我|再|你们|去)?$")

PROBLEM_WORDS = re.compile(
    r"坏|裂|断|塌|变形|掉漆|脱落|起皮|起泡|鼓包|发霉|霉|异味|味道|臭|甲醛|漏|渗|不工作|不能用|用不了|打不开|关不上|不制冷"
    r"|不加热|噪音|异响|响|声音|缝隙|裂缝|越来越|黑心|不齐|加钱|结果是|结果发现|松|晃|翘|起鼓|鼓起|陷|凹|皱|脱皮|碎|跳闸|跳|报错|吸力|忽冷忽热|没热水|不冷|等了?很久|等太久|才送到|才到|不退|贵了|太贵|刮花|划痕|划伤|色差|尺寸|不对|错|少了|缺|没送|不送|还没|没装|没人|不来|拖|延迟|延期|迟迟"
    r"|态度|骂|推诿|不理|敷衍|不管|质量|问题|毛病|故障|破|损|瑕疵|虚假|骗|假货|翻新|二手|不一样|货不对板|样品|以次充好"
    r"|乱收费|多收|加价|坑|差|烂|不平|起拱|空鼓|脱胶|开胶|生锈|锈|掉色|褪色|不亮|跳闸|漏电|起火|受伤|过敏|发黄|开线"
    r"|凹陷|塌陷|歪|堵|冒烟|失灵|不灵|没反应|不出水|不转|不合格|超标|偷工|减料|失望|气死|上当|退不了|不给退|不给换"
    r"|伤|砸|掉下|掉了|倒了|摔|爆|炸|烧|着火|触电|没用|不好用|太差|不满意|不行|不达标|不符|缩水|变色|发臭|蛀|虫"
    r"|不(?:动|热|亮|转|通|拢|干净|平|稳|牢|准|够)|[打关合拉推开调用充洗冲排放装拆]不[了开上动着通动住下]|卡住|卡死|卡顿"
)
_NOT_PROBLEM_CLAUSE = re.compile(r"^(?:哦|啊|噢|呃|嗯)?(?:不对|错了|说错了|打错了|写错了)$|(?:说|打|写|填|记)错了?$|^(?:我)?(?:要求|希望|必须|请求|请你们|麻烦你们)")
_EXPECTATION_ONLY = re.compile(r"^(?:我)?(?:要求|希望|想要|请|麻烦|必须|要|给我|我要|你们)?[^，,。]{0,2}"
                               r"(?:退货|退款|退钱|换货|换新|维修|赔偿|补偿|道歉|检测|鉴定)[^，,。]{0,6}$")


def find_expectations(text: str) -> list[str]:
    """Expectation codes in the order the customer said them."""
    positions: dict[str, int] = {}
    for code, pattern in _EXPECTATIONS:
        for match in pattern.finditer(text):
            before = text[max(0, match.start() - 6) : match.start()]
            if _NEGATION.search(before):
                continue
            if code == "repair" and match.group() == "修" and re.search(r"[维返装]$", before):
                continue
            positions[code] = match.start()
            break
    codes = sorted(positions, key=positions.__getitem__)
    if "return" in codes and "refund" in codes and not re.search(r"退货", text):
        codes.remove("return")  # "全退了把钱还我" is one refund, not a return and a refund
    return codes


def find_problem(text: str, facts: list[tuple[int, int]]) -> str | None:
    """The clauses that say what went wrong, in the customer's words.

    Clauses that only restate facts already captured elsewhere (when/where/what was paid) or
    only state the expectation are left out; everything else about the problem is kept.
    """
    kept: list[str] = []
    position = 0
    for part in clauses(text):
        start = text.find(part, position)
        position = start + len(part)
        if _EXPECTATION_ONLY.match(part) or _NOT_PROBLEM_CLAUSE.search(part):
            continue
        covered = sum(min(e, position) - max(s, start) for s, e in facts if s < position and start < e)
        if covered >= len(part) * 0.8:
            continue
        # A statement that is none of the recorded facts, no small talk and no request is most
        # likely part of what went wrong, in words no lexicon lists.
        if (PROBLEM_WORDS.search(part) or _is_leftover_statement(part, covered)) and part not in kept:
            kept.append(part)
    return "，".join(kept) if kept else None


_SMALL_TALK = re.compile(
    r"你好|您好|在吗|喂|哈喽|说个事|跟你说|跟你们说|我想|我要|投诉|反映|能不能|可不可以|可以吗|处理一下|怎么办|怎么回事|麻烦"
    r"|谢谢|请问|帮我|帮忙|我叫|我姓|姓名|电话|手机|号码|地址|订单|单号|编号|我是|名字|你们|商场|店里|那家|吧$|吗$|呢$|[?？]")
_FACT_VERBS = re.compile(r"买|购|订|签|付|花了|交了|送到|住在|家住")
# Asides around a complaint: when to call, evidence at hand, threats, hearsay.
_ASIDES = re.compile(r"方便|白天|晚上|上午|下午|中午|打这个|接电话|查一下|查查|发票|收据|小票|合同上|朋友|听说|律师|记者|电视台"
                     r"|媒体|12315|消协|法院|看着办|不太会|不会打字|替我|代我"
                     r"|生气|气死|愤怒|火大|无语|崩溃|郁闷|烦死|过分|恶心|伤心|着急")  # feelings, not facts


def _is_leftover_statement(part: str, covered: int) -> bool:
    """A clause touching no recorded fact, and not small talk, a request, a warranty remark or "不知道"."""
    if covered or len(CJK.findall(part)) < 5:
        return False
    return not any(pattern.search(part) for pattern in (
        _SMALL_TALK, _FACT_VERBS, _ASIDES, WARRANTY_OVER, WARRANTY_WITHIN, UNKNOWN, *(p for _, p in _EXPECTATIONS)))


UNKNOWN = re.compile(
    r"不知道|不清楚|记不清|记不得|忘了|忘记了|不记得|没留|找不到|不确定|没印象|不晓得|没有|无|没|不详|想不起|搞不清|说不清|丢了"
    r"|不用送|自提|自己拉|自己提|自己搬|不需要送|不送货")
REFUSAL = re.compile(r"不告诉|不想说|不想给|凭什么|为什么要|干嘛要|关你什么事|保密|不方便|不愿意|不给你|不能告诉|隐私")
YES = re.compile(r"^(?:是|是的|对|对的|嗯+|恩|好|好的|可以|行|没错|确认|确定|正确|没问题|ok|OK|Ok|yes|提交|确认提交|对头|没毛病)[。！!~～.]*$")
NO = re.compile(r"^(?:不|不是|否|没有|不对|错了|不要|不用|算了|no|NO|No)[。！!~～.]*$")
# Said as a question ("保修期过了吗？"), a warranty phrase states nothing.
WARRANTY_QUESTION = re.compile(r"[^，,。]{0,4}(?:吗|么|没有|[?？])")
USED_FOR_YEARS = re.compile(r"用了(?:[两三四五六七八九十几\d]+|一年多|好几|多)年")
WARRANTY_OVER = re.compile(r"过保|过了保|超过了?保|超过了?一年|超保|保修期过了|保修已过|过了一年|超出保修|出了保修")
# Spans that are no date but still put the purchase within the last year ("才半年", "不到两个月").
RECENT_PURCHASE = re.compile(
    r"(?:不到|才|刚|没到|不满|还不到)(?:买了?|用了?)?(?:[一两二三四五六七八九十几半\d]+个?(?:月|星期|礼拜|周|天)|半年|一年)"
    r"|(?:[一两二三四五六七八九十几\d]+个?(?:月|星期|礼拜|天)|半年)(?:前|之前)?(?:买|才买|刚买|下单)"
    r"|刚买|新买的|前几天")
WARRANTY_WITHIN = re.compile(r"没过保|没有过保|没超|还在保|保修期内|在保修|不到一年|没到一年|保内|还没过保修|没出保")
