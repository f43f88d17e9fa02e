"""What a message is, besides facts: commands, questions about the bot, small talk, abuse.

Checked before extraction so that "取消" or "你是机器人吗" get their own answer and the
intake carries on where it was.
"""

from __future__ import annotations

import re
from enum import StrEnum

from dialogs.extraction.text import has_cjk


class Intent(StrEnum):
    CANCEL = "cancel"
    RESTART = "restart"
    STATUS = "status"
    STAFF = "staff"
    ABOUT_BOT = "about_bot"
    GREETING = "greeting"
    THANKS = "thanks"
    INSULT = "insult"
    GIBBERISH = "gibberish"


_RULES: tuple[tuple[Intent, re.Pattern[str]], ...] = (
    (Intent.RESTART, re.compile(r"^(?:请|我要|我想)?(?:重新开始|重来|从头开始|重新来|重新填|重新登记)(?:吧|一下|一遍)?[。!！]*$")),
    (Intent.CANCEL, re.compile(r"^(?:我要|我想|请|帮我)?(?:取消|撤销|撤回)(?:投诉|登记|吧|了)*[。!！]*$"
                               r"|^(?:算了|不投诉了|不想投诉了|不用了|不弄了|不登记了)(?:吧|，?不投诉了)?[。!！]*$")),
    (Intent.STAFF, re.compile(r"^\s*/(?:claim|close|assign|resolve|reject|note|case|admin)\b"
                              r"|我是(?:你们的?)?(?:客服|店长|经理|工作人员|管理员|员工|商场的人|老板|主管|值班经理|客诉专员)"
                              r"|(?:^|帮我|我来)(?:认领|结案|派单|关闭工单|关单|转派)")),
    (Intent.STATUS, re.compile(r"怎么样了|进度|进展|处理到哪|处理得怎么样|处理好了没|有结果了?吗|有回复吗|有人联系|还没人联系"
                               r"|结果呢|查一下我的投诉|查询投诉|我的投诉|投诉状态|[Kk][Ss][\s-]*\d{6}")),
    (Intent.ABOUT_BOT, re.compile(r"机器人|你是谁|你是人|真人|人工(?!费)|转人工|(?<![A-Za-z])(?:AI|ai)(?![A-Za-z])|智能客服|自动回复")),
    (Intent.INSULT, re.compile(r"傻[逼bB比]|sb|SB|垃圾|废物|滚(?![筒轮动])|去死|妈的|他妈|操你|草泥马|混蛋|王八蛋|骗子|脑残|白痴|狗屁|放屁|黑心")),
    (Intent.THANKS, re.compile(r"^(?:好的?|嗯|ok|OK)?[，,]?(?:谢谢|多谢|感谢|辛苦了?|麻烦了|谢了)(?:你|您|你们)?(?:了|啦|哈)?[。!！~]*$")),
    (Intent.GREETING, re.compile(r"^(?:你好|您好|在吗|在不在|有人吗|hello|hi|哈喽|嗨|喂|早上好|下午好|晚上好)[啊呀吗？?。!！~，, ]*$",
                                 re.IGNORECASE)),
)


def classify(text: str) -> Intent | None:
    for intent, pattern in _RULES:
        if pattern.search(text):
            return intent
    if not has_cjk(text) and not re.search(r"[A-Za-z]{2,}|\d", text):
        return Intent.GIBBERISH  # emoji, punctuation, stray symbols
    return None
