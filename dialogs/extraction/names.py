"""The customer's (or the contact person's) name, honorifics dropped."""

from __future__ import annotations

import re

# The common surnames (百家姓 by frequency); a candidate name must start with one, which is
# what keeps "我是顾客" or "我是真北店买的" from becoming names.
_SURNAMES = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
    "常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴"
    "霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑"
    "景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
    "官封谈匡鞠惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼蔺楼盘满闻位厉伊仝区郜海阚花权强帅屠豆朴盖练廉禹井祖"
    "漆巴丰支卿国狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿薄邸雍辜羊阿乌母裘亓修邰赫杭况那宿鲜印逯隆茹"
    "诸战慕危玉银亢嵇公哈湛宾戎勾茅利於呼居揭干但尉冶斯元束檀衣信展阴昝智幸奉植衡富尧闭由傅萧黎钮龚荀鲁蔚蓝晁"
)
_COMPOUND = ("欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "夏侯", "长孙", "宇文", "司徒")
_HONORIFIC = r"(?:先生|女士|小姐|阿姨|大爷|大妈|太太|奶奶|爷爷|老师|大姐|大哥|姐|哥|叔|婶)"
_STAFF_TITLES = re.compile(r"经理|店长|主管|师傅|导购|销售|客服|老板|总|工")
_NAME_CHARS = r"[\u4e00-\u9fff]"
# Words that end a name: what customers write right after it.
_STOP = re.compile(r"电话|手机|联系|今年|住在|家住|就|在|的|了|是|呢|啊|呀|吧|哈|和|跟|给|买|要|想|说|从|去|来|我|你|他|她|这|那|，|。")
_NOT_NAMES = {"顾客", "客户", "消费者", "业主", "本人", "买家", "用户", "会员", "老顾客", "你们", "我们", "他们",
              "真北", "这个", "那个", "什么", "怎么", "投诉", "问题", "师傅", "经理", "店长", "机器人", "人工",
              "谢谢", "哈喽", "喂喂", "你好", "您好", "好的", "麻烦", "辛苦", "时间", "金额", "地址", "日期", "方便", "明白", "知道",
              "安排", "尽快", "马上", "现在", "今天", "昨天", "明天", "以前", "后来", "结果", "质量", "售后"}

_INTRO = re.compile(
    rf"(?:我叫|我的名字(?:是|叫)|名字(?:是|叫)|我名叫|本人|姓名[:：是]?|联系人(?:是|叫)?[:：]?|我是|叫我[老小]?"
    rf"|(?:她|他|我妈|我爸|我妈妈|我爸爸|我母亲|我父亲|我老婆|我老公|我爱人|我媳妇|老人家?|我婆婆|我公公|我岳母|我丈母娘)"
    rf"(?:叫|名叫|名字叫|的名字是))\s*(?P<name>{_NAME_CHARS}{{1,4}})")
_SURNAME_ONLY = re.compile(rf"(?:免贵姓|我姓|本人姓|她姓|他姓|姓)\s*(?P<name>{_NAME_CHARS}{{1,2}})")
_WITH_HONORIFIC = re.compile(rf"(?:^|我是|我|叫我|本人|[^\u4e00-\u9fff])(?P<name>{_NAME_CHARS}{{1,3}}?){_HONORIFIC}(?![\u4e00-\u9fff]{{0,2}}(?:说|讲|告诉))")


def _trim(candidate: str) -> str:
    stop = _STOP.search(candidate, 1)
    return candidate[: stop.start()] if stop else candidate


_NOT_NAME_PARTS = re.compile(
    r"^[来在要想从去给被把对不没也都就还很太有这那个]|投诉|问题|商场|沙发|电话|手机|家具|店|买|退|换|修|坏|送|装|漏|裂|的|了|吗|呢|号|门|床|柜"
    r"|地板|瓷砖|马桶|冰箱|空调|电视|热水|油烟|橱|灶|花洒|定金|订金|发票|合同|老板|先生|女士|小姐|师傅|经理|客服")


def _surname_ok(name: str) -> bool:
    if _NOT_NAME_PARTS.search(name):
        return False
    return name.startswith(_COMPOUND) or name[:1] in _SURNAMES


def _clean_surname(candidate: str) -> str | None:
    for compound in _COMPOUND:
        if candidate.startswith(compound):
            return compound
    return candidate[0] if candidate[:1] in _SURNAMES else None


def find_name(text: str) -> str | None:
    """The name the customer gives for themselves or for the relative they complain for."""
    full_names = [_trim(m["name"]) for m in _INTRO.finditer(text)]
    for name in full_names:
        honorific = re.search(_HONORIFIC + "$", name)
        if honorific:
            name = name[: honorific.start()]
            return _clean_surname(name) if name else None
        if 2 <= len(name) <= 4 and name not in _NOT_NAMES and _surname_ok(name):
            return name
        if len(name) == 1 and _surname_ok(name):
            return name  # "叫我老王" names the surname only
    for match in _SURNAME_ONLY.finditer(text):
        surname = _clean_surname(match["name"])
        if surname:
            # "我姓李，李桂兰": the full name given right after the surname wins.
            full = re.search(rf"(?<![\u4e00-\u9fff]){surname}[\u4e00-\u9fff]{{1,2}}(?![\u4e00-\u9fff])", text[match.end():])
            if full and full.group() not in _NOT_NAMES and _surname_ok(full.group()):
                return full.group()
            return surname
    for match in _WITH_HONORIFIC.finditer(text):
        candidate = match["name"]
        if _STAFF_TITLES.search(text[match.end() : match.end() + 2]):
            continue
        surname = _clean_surname(candidate[-2:] if candidate[-2:] in _COMPOUND else candidate[-1:])
        if surname:
            return surname
    return None


_TOKEN_SPLIT = re.compile(r"[，,。.!！?？;；:：\s—\-~～、]+")


def bare_name_tokens(text: str, anchors: list[tuple[int, int]]) -> str | None:
    """A name written on its own: "李娜 150…", "黄敏，手机…", "电话…，曹颖。".

    Only the first few tokens of a message, or a token right beside a phone number, are
    considered: that is where people sign, and it keeps "花洒" or "冷藏室" from being names.
    """
    tokens = [(m.start(), m.end()) for m in re.finditer(r"[^，,。.!！?？;；:：\s—\-~～、]+", text)]
    near_anchor = set()
    for index, (start, end) in enumerate(tokens):
        for anchor_start, anchor_end in anchors:
            if end <= anchor_start and index + 1 < len(tokens) and tokens[index + 1][0] >= anchor_start - 3:
                near_anchor.add(index)
            if start >= anchor_end and index > 0 and tokens[index - 1][1] <= anchor_end + 3:
                near_anchor.add(index)
    for index, (start, end) in enumerate(tokens):
        token = text[start:end]
        if index >= 3 and index not in near_anchor:
            continue
        if re.fullmatch(rf"{_NAME_CHARS}{{2,3}}", token) and token not in _NOT_NAMES and _surname_ok(token):
            return token
    return None


def name_from_answer(text: str) -> str | None:
    """A reply to "怎么称呼您": usually just the name, perhaps with 姓/先生/女士."""
    found = find_name(text)
    if found:
        return found
    bare = re.sub(r"^(?:就|叫|是|我|姓名|名字)+|(?:就行|就好|吧|啊|呀|哈|的)+$", "", text.strip(" 。，,.!！"))
    bare = re.sub(r"^[老小](?=[\u4e00-\u9fff]$)", "", bare)
    honorific = re.search(_HONORIFIC, bare)
    if honorific:
        return _clean_surname(bare[: honorific.start()]) if bare[: honorific.start()] else None
    if re.fullmatch(rf"{_NAME_CHARS}{{2,4}}", bare) and bare not in _NOT_NAMES and _surname_ok(bare):
        return bare
    if len(bare) in (1, 2) and _clean_surname(bare) == bare:
        return bare  # just the surname: "孔", "欧阳"
    if re.fullmatch(r"[A-Za-z][A-Za-z .'-]{1,30}", bare):
        return bare
    return None
