"""A WeChat customer's whole case, offline: intake on the Official Account, casework from the Telegram group.

One `kesu serve` app with both channels. The customer's side is signed XML posted to /wechat, as
WeChat posts it (test_wechat.py's ``WeChatServer``), answered with passive replies; what staff
tell the customer goes out through the real dispatcher and wechatpy to the fake WeChat API
(customer-service messages; template messages once the 48-hour window has closed). Staff work
the case in the 真北 group through python-telegram-bot and the fake Bot API, with the helpers of
test_telegram_casework.py. What each side received is read from the two fakes' records, the case
and its timeline from the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_wechat import ApiCall, FakeWeChatAPI
from fakes.telegram_api import Call, FakeBotAPI
from test_telegram import TOKEN as TELEGRAM_TOKEN
from test_telegram import (  # noqa: F401  (the autouse fixtures apply here too)
    ZHENBEI_GROUP,
    Kesu,
    clean_environment,
    group_chat,
    moving_clock,
    start,
    time_bound,
)
from test_telegram_casework import (
    ANSWER,
    PROGRESS,
    QUESTION,
    SOLUTION,
    SPECIALIST,
    STORE_MANAGER,
    SUMMARY,
    command,
    current,
    directory_catalog,
    event_kinds,
    new_to,
    render,
    sent_to,
)
from test_wechat import (
    AES_KEY,
    APP_ID,
    FOLLOW_UPS,
    OPENID,
    OPENING,
    SECRET,
    TEMPLATE_ID,
    WeChatServer,
    event_xml,
    image_xml,
)
from test_wechat import TOKEN as WECHAT_TOKEN
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.dispatch import excerpt
from storage.case_numbers import find_case_number
from storage.repository import CaseRecord, OutboxItem

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

WINDOW = timedelta(hours=48)  # WeChat's customer-service window after the customer's last message
SECOND_PROGRESS = "品牌方复检安排在本周六上午，师傅出发前会先电话联系您"
OPTIONS = "可以直接回复：“5”、“4”、“3”、“2”、“1”"  # the score buttons, as WeChat text
FINAL = ("sent", "failed", "uncertain")


@dataclass
class Clock:
    """Kesu's clock: real speed from test_telegram's NOW (backoffs fall due), and days can pass at once."""

    base: Callable[[], datetime] = field(default_factory=moving_clock)
    skipped: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return self.base() + self.skipped


@dataclass
class Mall:
    """kesu serve with both channels: the customer on WeChat (`wx`), staff in Telegram (`kesu`)."""

    kesu: Kesu
    wx: WeChatServer
    wechat: FakeWeChatAPI
    clock: Clock
    database_url: str
    catalog: Path

    def pushed(self) -> list[ApiCall]:
        """Every message send the fake WeChat API received (refused ones too), in order."""
        return [c for c in self.wechat.calls if c.endpoint in ("message/custom/send", "message/template/send")]

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until the WeChat items are final, then for the Telegram ones (their delivery reports among them)."""
        deadline = time.monotonic() + timeout
        while any(i.channel == "wechat" and i.state not in FINAL for i in self.kesu.store.outbox_items(limit=1000)):
            assert time.monotonic() < deadline, f"WeChat outbox not delivered: {self.kesu.store.outbox_items()}"
            time.sleep(0.02)
        self.kesu.settle(timeout)

    def new_pushes(self, before: int) -> list[ApiCall]:
        self.settle()
        return self.pushed()[before:]

    def case(self, number: str) -> CaseRecord:
        return current(self.kesu, number)


@pytest.fixture
def mall(tmp_path: Path, db_url: str) -> Iterator[Mall]:
    clock, catalog = Clock(), directory_catalog(tmp_path)
    with FakeBotAPI(TELEGRAM_TOKEN).running() as bot_api, FakeWeChatAPI(APP_ID, SECRET).serve() as wechat_api:
        # No deadline scan: the days skipped here would warn and escalate, which test_deadlines.py covers.
        for kesu in start(tmp_path, bot_api, catalog, clock=clock, database_url=db_url,
                          wechat_token=WECHAT_TOKEN, wechat_app_id=APP_ID, wechat_app_secret=SECRET,
                          wechat_aes_key=AES_KEY, wechat_api_url=wechat_api.base_url, wechat_template_id=TEMPLATE_ID,
                          deadline_scan_seconds=0, rasa_actions=False):
            yield Mall(kesu, WeChatServer(kesu.client), wechat_api, clock, db_url, catalog)


def kf(text: str) -> dict[str, Any]:
    """A customer-service text message to the customer, as wechatpy posts it."""
    return {"touser": OPENID, "msgtype": "text", "text": {"content": text}}


def open_case(mall: Mall) -> tuple[CaseRecord, Call]:
    """Intake over WeChat (safe mode); returns the case and its notice in the 真北 group."""
    replies = [mall.wx.say(text, encrypted=True) for text in (OPENING, *FOLLOW_UPS, "确认")]
    number = find_case_number(replies[-1])
    assert number is not None, replies[-1]
    notice = mall.kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP, where=lambda c: number in c.text)[-1]
    return mall.case(number), notice


def latest_to_customer(mall: Mall, case: CaseRecord) -> OutboxItem:
    return next(i for i in mall.kesu.store.outbox_items(case_id=case.id) if i.channel == "wechat")


def brief_lines(mall: Mall, number: str) -> list[str]:
    """The timeline lines of /case as staff read it in the group (after the time stamp)."""
    brief = command(mall.kesu, f"/case {number}", user=STORE_MANAGER)
    return [line.split(" ", 2)[-1] for line in brief.text.splitlines()]


def deliveries_shown(mall: Mall, number: str) -> list[str]:
    """The 消息投递 section of `kesu cases show`, newest first, as staff at a terminal read it (no time stamps)."""
    result = CliRunner().invoke(cli, ["cases", "show", number, "--db", mall.database_url,
                                      "--catalog", str(mall.catalog)])
    assert result.exit_code == 0, result.output
    section = result.output.split("\n消息投递：\n", 1)[1].split("\n对话记录：\n", 1)[0]
    return [line.split(" ", 3)[-1] for line in section.splitlines()]


# --------------------------------------------------------------------------- the whole case


def test_a_wechat_customers_case_worked_from_the_group_through_the_48_hour_window(mall: Mall) -> None:
    kesu, wx = mall.kesu, mall.wx
    case, notice = open_case(mall)
    number = case.number
    assert (case.channel, case.customer_id, case.fields["mall"]) == ("wechat", OPENID, "sh-zhenbei")
    assert mall.pushed() == []  # the intake was answered passively

    # 李专员 claims it in the group: the customer hears it as a customer-service message
    kesu.press(f"claim:{number}", user=SPECIALIST, chat=group_chat(ZHENBEI_GROUP),
               message_id=notice.result["message_id"], text=notice.text)
    [claimed] = mall.new_pushes(0)
    case = mall.case(number)
    assert (case.status, case.owner, case.owner_name) == ("claimed", "telegram:777", "李专员")
    assert claimed.body == kf(render("case/claimed", case=case)) and claimed.ok
    assert claimed.body["text"]["content"] == f"您的投诉 {number} 已由商场客服专员李专员负责跟进，会尽快与您联系。"

    # /ask: the question goes to WeChat, the group hears it was sent
    before = len(mall.pushed())
    reply = command(kesu, f"/ask {number} {QUESTION}")
    asked = mall.case(number)
    assert reply.text == render("staff/action_done", case=asked, action="ask", by="李专员", text=QUESTION)
    [question] = mall.new_pushes(before)
    assert question.body == kf(render("case/question", case=asked, question=QUESTION))

    # the customer answers on WeChat: thanked passively, relayed to the owner's private chat
    owner_before = sent_to(kesu, SPECIALIST)
    assert wx.say(ANSWER) == render("answer_relayed", number=number)
    [to_owner] = new_to(kesu, SPECIALIST, owner_before)
    assert to_owner.text == render("staff/customer_replied", case=mall.case(number), event="customer_answer",
                                   text=ANSWER, score=None)

    # /progress
    before = len(mall.pushed())
    command(kesu, f"/progress {number} {PROGRESS}")
    [progress] = mall.new_pushes(before)
    assert progress.body == kf(render("case/progress", case=mall.case(number), progress=PROGRESS))

    # /propose 300 needs the store manager: nothing to the customer until approved
    before = len(mall.pushed())
    command(kesu, f"/propose {number} 赔偿 300 {SOLUTION}")
    assert mall.case(number).status == "awaiting_approval"
    assert mall.new_pushes(before) == []
    command(kesu, f"/approve {number}", user=STORE_MANAGER)
    proposed = mall.case(number)
    assert proposed.status == "proposed"
    [solution] = mall.new_pushes(before)
    # the text already names its answers (“同意”, 不同意), so no options line is added
    assert solution.body == kf(render("case/solution", case=proposed, solution=proposed.solution))

    owner_before = sent_to(kesu, SPECIALIST)
    assert wx.say("同意") == render("solution_agreed", number=number)
    agreed = mall.case(number)
    assert agreed.status == "agreed"
    assert [c.text for c in new_to(kesu, SPECIALIST, owner_before)] == [
        render("staff/customer_replied", case=agreed, event="customer_agreed", text="同意", score=None)]

    # two days pass without a word from the customer: WeChat refuses customer-service messages
    mall.clock.skipped += WINDOW + timedelta(hours=1)
    mall.wechat.kf_errcode = 45015

    # /resolve: the result and the 1-5 question reach the customer as a template message, scores as text
    before, owner_before = len(mall.pushed()), sent_to(kesu, SPECIALIST)
    command(kesu, f"/resolve {number} {SUMMARY}")
    refused, template = mall.new_pushes(before)
    following = mall.case(number)
    assert following.status == "follow_up"
    resolved_text = render("case/resolved", case=following, summary=SUMMARY)
    assert refused.endpoint == "message/custom/send" and refused.answer["errcode"] == 45015
    assert refused.body == kf(f"{resolved_text}\n{OPTIONS}")
    first, rest = resolved_text.split("\n")
    assert first == f"您的投诉 {number} 已处理完毕：{SUMMARY}"
    assert template.endpoint == "message/template/send" and template.ok
    assert template.body == {"touser": OPENID, "template_id": TEMPLATE_ID, "data": {
        "first": {"value": first},
        "keyword1": {"value": number},
        "keyword2": {"value": f"{rest}\n{OPTIONS}"},
        "remark": {"value": render("wechat/template_remark")},
    }}
    item = latest_to_customer(mall, case)
    assert (item.kind, item.state, item.external_id) == ("customer_update", "sent", f"tpl:{template.answer['msgid']}")

    # …and staff are told how it got there: privately to the owner, on /case and in `kesu cases show`
    [report] = new_to(kesu, SPECIALIST, owner_before)
    assert report.text == render("staff/delivery_report", case=following, event="customer_reached",
                                 message_kind="customer_update", reason="",
                                 excerpt=excerpt(f"{resolved_text}\n{OPTIONS}"))
    assert report.text.startswith(f"📨 {number}：公众号客服消息发不出去了（顾客48小时内没有互动），"
                                  "给顾客的案件通知改用模板消息送达。")
    reached = kesu.store.get_case_events(case.id)[-1]
    assert (reached.kind, reached.actor, reached.data["path"], reached.data["external_id"]) == (
        "customer_reached", "kesu", "template", item.external_id)
    assert "已联系到顾客：给顾客的案件通知经模板消息送达（客服消息窗口已关闭）" in brief_lines(mall, number)

    # the customer answers the template with a low score on WeChat: the case reopens
    owner_before = sent_to(kesu, SPECIALIST)
    assert wx.say("2") == render("satisfaction_reopened", number=number)
    reopened = mall.case(number)
    assert (reopened.status, reopened.satisfaction, reopened.closed_at) == ("reopened", 2, None)
    assert [c.text for c in new_to(kesu, SPECIALIST, owner_before)] == [
        render("staff/customer_replied", case=reopened, event="dissatisfied", text="2", score=2)]

    # two days after that score, and the customer has unfollowed the account: neither path reaches them
    mall.clock.skipped += WINDOW + timedelta(hours=1)
    owner_before = sent_to(kesu, SPECIALIST)
    assert wx.post(event_xml("unsubscribe")).text == "success"
    assert wx.post(event_xml("unsubscribe")).text == "success"  # WeChat's retry: recorded once
    assert [c.text for c in new_to(kesu, SPECIALIST, owner_before)] == [
        render("staff/customer_left", case=mall.case(number))]
    mall.wechat.template_errcode = 43004
    before, owner_before = len(mall.pushed()), sent_to(kesu, SPECIALIST)
    command(kesu, f"/progress {number} {SECOND_PROGRESS}")
    refused, template = mall.new_pushes(before)
    assert (refused.answer["errcode"], template.answer["errcode"]) == (45015, 43004)
    unreached = mall.case(number)
    assert refused.body == kf(render("case/progress", case=unreached, progress=SECOND_PROGRESS))
    item = latest_to_customer(mall, case)
    assert item.state == "failed" and item.last_error == (
        "customer-service message refused (45015: response out of time limit or subscription is canceled); "
        "template message: errcode 43004: require subscribe")
    unreachable = kesu.store.get_case_events(case.id)[-1]
    assert (unreachable.kind, unreachable.data["reason"]) == ("customer_unreachable", item.last_error)
    [report] = new_to(kesu, SPECIALIST, owner_before)
    assert report.text == render("staff/delivery_report", case=unreached, event="customer_unreachable",
                                 message_kind="customer_update", reason=item.last_error,
                                 excerpt=excerpt(render("case/progress", case=unreached, progress=SECOND_PROGRESS)))
    assert report.text.startswith(f"⚠️ {number}：给顾客的案件通知未能送达顾客（")
    assert f"请电话联系顾客，并用 /note {number} 记录。" in report.text

    assert event_kinds(kesu, case) == [
        "opened", "claimed", "ask", "customer_answer", "progress", "propose", "approve", "customer_agreed", "resolve",
        "customer_reached", "dissatisfied", "customer_unsubscribed", "progress", "customer_unreachable"]
    to_customer = [line for line in deliveries_shown(mall, number) if "→微信公众号" in line]
    assert to_customer[:2] == [
        f"给顾客的案件通知→微信公众号 o6_b…fL2M：发送失败（第1次尝试），原因：{item.last_error}",
        "给顾客的案件通知→微信公众号 o6_b…fL2M：已送达（第1次尝试），经模板消息送达"]
    # every push went to this customer; every staff message stayed with staff
    assert {c.body["touser"] for c in mall.pushed()} == {OPENID}
    assert {c.chat_id for c in kesu.fake.of("sendMessage")} <= {ZHENBEI_GROUP, SPECIALIST["id"]}


# --------------------------------------------------------------------------- evidence after intake


def test_a_photo_sent_after_intake_joins_the_cases_evidence(mall: Mall) -> None:
    case, _ = open_case(mall)
    reply = mall.wx.reply(mall.wx.post(image_xml("MEDIA_ID_armrest_crack", mall.wx.next_msg_id())))
    assert [(e.kind, e.file_ref) for e in mall.kesu.store.evidence_for_case(case.id)] == [
        ("photo", "MEDIA_ID_armrest_crack")]
    assert reply["Content"] == render("evidence_added", count=1, number=case.number)  # no new complaint begins
    assert [e.kind for e in mall.kesu.store.get_case_events(case.id)][-1] == "customer_evidence"
