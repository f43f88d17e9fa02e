"""Staff work a case from their Telegram group, offline: commands and buttons against the fake Bot API.

The real `kesu serve` app and python-telegram-bot, as in test_telegram.py (whose helpers drive it):
a customer opens a case in a private chat, staff claim it in the 真北 group and work it with
/ask, /progress, /propose, /approve, /resolve …; the customer answers in their private chat. What
each side received is read from the fake's record of Bot API calls and compared with the same
templates rendered here; the case and its timeline from the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.telegram_api import Call, FakeBotAPI
from starlette.testclient import TestClient
from test_telegram import (  # noqa: F401  (the autouse fixtures apply here too)
    CUSTOMER,
    MANAGER,
    NOW,
    OPENING,
    OTHER_CUSTOMER,
    ROUTED_CATALOG,
    TOKEN,
    UNRELATED_GROUP,
    ZHENBEI_GROUP,
    Kesu,
    _cli_env,
    answers,
    clean_environment,
    group_chat,
    make_settings,
    moving_clock,
    private_chat,
    start,
    time_bound,
)
from typer.testing import CliRunner

from bot.app import build_server
from bot.staff import split_promise
from bot.templating import Renderer
from handlers.telegram import (
    NATURE_WORDS,
    PRIORITY_WORDS,
    Classification,
    command_menus,
    parse_case_command,
    parse_classification,
    parse_proposal,
    staff_button,
)
from storage.models import NATURES, PRIORITIES
from storage.repository import CaseRecord

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

SPECIALIST = {"id": 777, "is_bot": False, "first_name": "李专员"}
STORE_MANAGER = {"id": 999, "is_bot": False, "first_name": "陈店长"}
OUTSIDER = {"id": 888, "is_bot": False, "first_name": "王主管"}  # in the group, not in the staff directory
WUZHONGLU_GROUP = -1001000000002  # another mall's staff group in the directory catalog

QUESTION = "请问方便提供一下购物小票的照片吗？"
ANSWER = "小票找到了，晚上拍给你们"
PROGRESS = "品牌方已安排师傅明天上午上门检测"
SOLUTION = "赔偿300元，三个工作日内到账"
SUMMARY = "已更换新沙发并赔偿300元"

RENDER = Renderer()


def render(template: str, **context: Any) -> str:
    return RENDER.render(template, context)


# --------------------------------------------------------------------------- set-up


def directory_catalog(tmp_path: Path) -> Path:
    """The routed catalog plus a staff directory: a specialist and a store manager serving 真北."""
    data = yaml.safe_load(ROUTED_CATALOG.read_text(encoding="utf-8"))
    for mall in data["malls"]:
        if mall["id"] == "sh-wuzhonglu":
            mall["staff"] = {"telegram": [WUZHONGLU_GROUP]}
    data["staff"] = [
        {"id": "telegram:777", "name": "李专员", "role": "specialist", "malls": ["sh-zhenbei"]},
        {"id": "telegram:999", "name": "陈店长", "role": "store_manager", "malls": ["sh-zhenbei"]},
    ]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    with FakeBotAPI(TOKEN).running() as api:
        yield api


@pytest.fixture
def kesu(tmp_path: Path, fake: FakeBotAPI) -> Iterator[Kesu]:
    """Staff directory: only 李专员 (specialist) and 陈店长 (store manager) may act on 真北's cases."""
    yield from start(tmp_path, fake, directory_catalog(tmp_path))


@pytest.fixture
def open_kesu(tmp_path: Path, fake: FakeBotAPI) -> Iterator[Kesu]:
    """No staff directory: whoever is in 真北's staff group may act on its cases."""
    yield from start(tmp_path, fake, ROUTED_CATALOG)


def command(kesu: Kesu, text: str, *, user: dict[str, Any] = SPECIALIST, chat: int = ZHENBEI_GROUP) -> Call:
    """Type a command in a group; returns Kesu's answer, sent there as a reply to the command."""
    update = kesu.deliver(kesu.message({"text": text}, user=user, chat=group_chat(chat)))
    message_id = update["message"]["message_id"]
    [reply] = kesu.fake.wait_for(
        "sendMessage", chat_id=chat,
        where=lambda c: (c.params.get("reply_parameters") or {}).get("message_id") == message_id)
    return reply


def current(kesu: Kesu, number: str) -> CaseRecord:
    case = kesu.store.get_case(number)
    assert case is not None
    return case


def claim(kesu: Kesu, user: dict[str, Any] = SPECIALIST) -> tuple[CaseRecord, Call]:
    case, notice = kesu.open_case()
    kesu.press(f"claim:{case.number}", user=user, chat=group_chat(ZHENBEI_GROUP),
               message_id=notice.result["message_id"], text=notice.text)
    kesu.settle()
    return current(kesu, case.number), notice


def new_to(kesu: Kesu, user: dict[str, Any], before: int) -> list[Call]:
    kesu.settle()
    return kesu.fake.of("sendMessage", chat_id=user["id"])[before:]


def sent_to(kesu: Kesu, user: dict[str, Any]) -> int:
    return len(kesu.fake.of("sendMessage", chat_id=user["id"]))


def event_kinds(kesu: Kesu, case: CaseRecord) -> list[str]:
    return [event.kind for event in kesu.store.get_case_events(case.id)]


# --------------------------------------------------------------------------- the whole case


@pytest.mark.parametrize("score", [2, 5])
def test_a_case_worked_from_the_group_from_question_to_satisfaction(kesu: Kesu, score: int) -> None:
    case, _ = claim(kesu)
    number = case.number
    assert (case.status, case.owner, case.owner_name) == ("claimed", "telegram:777", "李专员")
    assert render("case/claimed", case=case) in [c.text for c in kesu.to_customer()]

    # /ask: the question reaches the customer's private chat, the group hears it was sent
    customer_before = sent_to(kesu, CUSTOMER)
    reply = command(kesu, f"/ask {number} {QUESTION}")
    assert reply.text == render("staff/action_done", case=current(kesu, number), action="ask", by="李专员",
                                text=QUESTION)
    [question] = new_to(kesu, CUSTOMER, customer_before)
    assert question.text == render("case/question", case=case, question=QUESTION)
    assert question.buttons == []

    # the customer answers in the private chat: on the timeline, and to the owner privately
    owner_before = sent_to(kesu, SPECIALIST)
    [relayed] = kesu.turn(ANSWER)
    assert relayed.text == render("answer_relayed", number=number)
    [to_owner] = new_to(kesu, SPECIALIST, owner_before)
    assert to_owner.text == render("staff/customer_replied", case=case, event="customer_answer", text=ANSWER,
                                   score=None)
    answer = kesu.store.get_case_events(case.id)[-1]
    assert (answer.kind, answer.actor, answer.data["text"]) == ("customer_answer", "customer", ANSWER)

    # /progress reaches the customer
    customer_before = sent_to(kesu, CUSTOMER)
    command(kesu, f"/progress {number} {PROGRESS}")
    [progress] = new_to(kesu, CUSTOMER, customer_before)
    assert progress.text == render("case/progress", case=current(kesu, number), progress=PROGRESS)
    assert "前告诉您下一步的进展" in progress.text

    # /propose 300 yuan compensation: beyond a specialist's limit, so it waits; the customer hears nothing
    customer_before = sent_to(kesu, CUSTOMER)
    reply = command(kesu, f"/propose {number} 赔偿 300 {SOLUTION}")
    waiting = current(kesu, number)
    assert waiting.status == "awaiting_approval"
    assert waiting.solution is not None
    assert (waiting.solution["codes"], waiting.solution["amount"], waiting.solution["text"]) == (
        ["compensation"], "300.00", SOLUTION)
    assert reply.text == render("staff/action_done", case=waiting, action="propose", by="李专员", text=SOLUTION,
                                approver_role="store_manager")
    assert "需要店长审批" in reply.text
    assert reply.buttons == [[{"text": "审批通过", "callback_data": f"approve:{number}"},
                              {"text": "查看详情", "callback_data": f"view:{number}"}]]
    assert new_to(kesu, CUSTOMER, customer_before) == []

    # the approval request is visible with /case
    brief = command(kesu, f"/case {number}", user=STORE_MANAGER)
    assert "方案：赔偿/补偿 300元 " + SOLUTION in brief.text
    assert f"待店长审批：/approve {number}" in brief.text

    # the specialist may not approve it; the store manager may, and then the customer is told
    refused = command(kesu, f"/approve {number}")
    assert refused.text == render("staff/approval_limit", approver_role="store_manager")
    assert refused.text == "这个金额超出了您的审批权限，需要店长审批。"
    assert current(kesu, number).status == "awaiting_approval"
    assert new_to(kesu, CUSTOMER, customer_before) == []

    approved = command(kesu, f"/approve {number}", user=STORE_MANAGER)
    proposed = current(kesu, number)
    assert proposed.status == "proposed"
    assert proposed.solution is not None and proposed.solution["approved_by"] == "陈店长"
    assert approved.text == render("staff/action_done", case=proposed, action="approve", by="陈店长")
    [solution] = new_to(kesu, CUSTOMER, customer_before)
    assert solution.text == render("case/solution", case=proposed, solution=proposed.solution)
    assert solution.labels == ["同意", "不同意"]

    # the customer presses 同意
    owner_before = sent_to(kesu, SPECIALIST)
    kesu.press("同意", user=CUSTOMER, chat=private_chat(CUSTOMER), message_id=solution.result["message_id"],
               text=solution.text)
    kesu.settle()
    agreed = current(kesu, number)
    assert agreed.status == "agreed"
    assert render("solution_agreed", number=number) in [c.text for c in kesu.to_customer()]
    assert [c.text for c in new_to(kesu, SPECIALIST, owner_before)] == [
        render("staff/customer_replied", case=agreed, event="customer_agreed", text="同意", score=None)]

    # /resolve: the result and the 1-5 question with buttons
    customer_before = sent_to(kesu, CUSTOMER)
    command(kesu, f"/resolve {number} {SUMMARY}")
    assert current(kesu, number).status == "follow_up"
    [resolved] = new_to(kesu, CUSTOMER, customer_before)
    assert resolved.text == render("case/resolved", case=agreed, summary=SUMMARY)
    assert resolved.labels == ["5", "4", "3", "2", "1"]

    # the customer scores it
    owner_before = sent_to(kesu, SPECIALIST)
    kesu.press(str(score), user=CUSTOMER, chat=private_chat(CUSTOMER), message_id=resolved.result["message_id"],
               text=resolved.text)
    kesu.settle()
    final = current(kesu, number)
    assert final.satisfaction == score
    notified = [c.text for c in new_to(kesu, SPECIALIST, owner_before)]
    if score < 3:
        assert final.status == "reopened" and final.closed_at is None
        assert render("satisfaction_reopened", number=number) in [c.text for c in kesu.to_customer()]
        assert notified == [render("staff/customer_replied", case=final, event="dissatisfied", text="2", score=2)]
        assert notified[0].startswith("⚠️ 顾客对")
    else:
        assert final.status == "closed" and final.closed_at is not None
        assert render("satisfaction_thanks", number=number, score=5) in [c.text for c in kesu.to_customer()]
        assert notified == [render("staff/customer_replied", case=final, event="satisfied", text="5", score=5)]

    assert event_kinds(kesu, case) == [
        "opened", "claimed", "ask", "customer_answer", "progress", "propose", "approve", "customer_agreed",
        "resolve", "dissatisfied" if score < 3 else "satisfied"]
    # nothing of the case work leaked into the customer's chat from the group, nor the other way round
    assert all(c.chat_id in (CUSTOMER["id"], SPECIALIST["id"], ZHENBEI_GROUP)
               for c in kesu.fake.of("sendMessage"))


# --------------------------------------------------------------------------- who may act, and when


@pytest.mark.parametrize(("user", "chat"), [(OUTSIDER, ZHENBEI_GROUP), (SPECIALIST, UNRELATED_GROUP),
                                            (SPECIALIST, WUZHONGLU_GROUP), (STORE_MANAGER, UNRELATED_GROUP)])
def test_commands_from_outside_the_directory_or_the_malls_group_are_refused(
        kesu: Kesu, user: dict[str, Any], chat: int) -> None:
    case, _ = claim(kesu)
    customer_before = sent_to(kesu, CUSTOMER)
    for text in (f"/note {case.number} 内部备注", f"/progress {case.number} 明天上门",
                 f"/resolve {case.number} 已处理", f"/reassign {case.number} telegram:{user['id']}"):
        reply = command(kesu, text, user=user, chat=chat)
        assert reply.text == render("staff/not_allowed") == "只有负责该商场的员工群成员可以操作这个案件。"
    after = current(kesu, case.number)
    assert (after.status, after.owner, after.version) == (case.status, case.owner, case.version)
    assert event_kinds(kesu, case) == ["opened", "claimed"]
    assert new_to(kesu, CUSTOMER, customer_before) == []


def test_a_message_sent_as_the_group_acts_for_no_one(open_kesu: Kesu) -> None:
    """Anonymous group admins post as the group: no person to own or answer for the action."""
    case, _ = claim(open_kesu, user=MANAGER)
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
    update = open_kesu.message({"text": f"/note {case.number} 匿名备注", "sender_chat": group_chat(ZHENBEI_GROUP)},
                               user=anonymous, chat=group_chat(ZHENBEI_GROUP))
    open_kesu.deliver(update)
    [reply] = open_kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP,
                                      where=lambda c: c.params.get("reply_parameters") is not None)
    assert reply.text == render("staff/not_allowed")
    assert event_kinds(open_kesu, case) == ["opened", "claimed"]


def test_without_a_directory_the_malls_group_is_who_may_act(open_kesu: Kesu) -> None:
    case, _ = claim(open_kesu, user=MANAGER)
    reply = command(open_kesu, f"/note {case.number} 顾客下午3点后方便接电话", user=OUTSIDER)
    assert reply.text == render("staff/action_done", case=current(open_kesu, case.number), action="note",
                                by="王主管", text="顾客下午3点后方便接电话")
    refused = command(open_kesu, f"/note {case.number} 别的群", user=MANAGER, chat=UNRELATED_GROUP)
    assert refused.text == render("staff/not_allowed")
    assert event_kinds(open_kesu, case) == ["opened", "claimed", "note"]
    note = open_kesu.store.get_case_events(case.id)[-1]
    assert (note.actor, note.data) == ("telegram:888", {"by": "王主管", "text": "顾客下午3点后方便接电话"})
    assert open_kesu.to_customer()[-1].text == render("case/claimed", case=case)  # notes stay internal


def test_a_customer_typing_staff_commands_in_private_reaches_no_staff_action(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    group_before = len(kesu.fake.of("sendMessage", chat_id=ZHENBEI_GROUP))
    for user in (CUSTOMER, OTHER_CUSTOMER):
        kesu.turn(f"/resolve {case.number} 已处理完毕", user=user)
        kesu.turn(f"/approve {case.number}", user=user)
    # …not even a staff member, in their own private chat with the bot
    kesu.turn(f"/note {case.number} 私聊里的备注", user=SPECIALIST)
    after = current(kesu, case.number)
    assert (after.status, after.version) == ("claimed", case.version)
    assert event_kinds(kesu, case) == ["opened", "claimed"]
    assert len(kesu.fake.of("sendMessage", chat_id=ZHENBEI_GROUP)) == group_before
    assert not any("已标记处理完毕" in c.text for c in kesu.fake.of("sendMessage"))


def test_an_action_the_state_does_not_allow_is_refused_with_the_state(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    for action in ("approve", "agree", "close"):
        reply = command(kesu, f"/{action} {case.number}", user=STORE_MANAGER)
        assert reply.text == render("staff/not_now", action=action, state="claimed")
    assert reply.text == "这个案件现在是“已认领”，不能执行这个操作。"
    assert current(kesu, case.number).version == case.version


def test_text_a_command_needs_is_asked_for(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    for action in ("ask", "progress", "note", "reject"):
        reply = command(kesu, f"/{action} {case.number}")
        assert reply.text == render("staff/text_required", action=action)
    assert command(kesu, "/ask").text == render("staff/command_usage", command="ask")
    assert command(kesu, f"/propose {case.number}").text == render("staff/command_usage", command="propose")
    # money without an amount would skip approval: asked for it instead
    assert command(kesu, f"/propose {case.number} 退款 全额退款").text == render("staff/command_usage",
                                                                          command="propose")
    assert command(kesu, "/note KS2611220010 备注").text == render("staff/case_not_found")  # wrong check digit
    assert current(kesu, case.number).version == case.version


def test_help_lists_the_commands_and_other_bots_commands_are_left_alone(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    reply = command(kesu, "/help@kesu_test_bot")
    assert reply.text == render("staff/help")
    for name in ("/case", "/classify", "/note", "/ask", "/progress", "/verify", "/propose", "/approve", "/agree",
                 "/resolve", "/reject", "/reassign", "/close", "/reopen"):
        assert f"\n{name} " in reply.text
    assert len(reply.text) < 1000

    before = len(kesu.fake.of("sendMessage"))
    kesu.deliver(kesu.message({"text": f"/note@other_bot {case.number} 不是给客诉机器人的"}, user=SPECIALIST,
                              chat=group_chat(ZHENBEI_GROUP)))
    kesu.deliver(kesu.message({"text": "/help"}, user=SPECIALIST, chat=group_chat(UNRELATED_GROUP)))
    kesu.deliver(kesu.message({"text": f"/stats {case.number}"}, user=SPECIALIST, chat=group_chat(ZHENBEI_GROUP)))
    time.sleep(0.2)
    assert len(kesu.fake.of("sendMessage")) == before
    assert event_kinds(kesu, case) == ["opened", "claimed"]

    addressed = command(kesu, f"/note@kesu_test_bot {case.number.lower()} 顾客要求晚上联系")
    assert addressed.text.startswith(f"{case.number}：已记录备注")


# --------------------------------------------------------------------------- buttons


def test_after_a_claim_the_notification_offers_verify_and_it_works(kesu: Kesu) -> None:
    case, notice = claim(kesu)
    edit = kesu.fake.of("editMessageText", chat_id=ZHENBEI_GROUP)[-1]
    assert edit.labels == ["查看详情", "开始核实"]
    assert all(len(b["callback_data"].encode()) <= 64 for row in edit.buttons for b in row)

    refused = kesu.press(f"verify:{case.number}", user=OUTSIDER, chat=group_chat(ZHENBEI_GROUP),
                         message_id=notice.result["message_id"], text=edit.text)
    [alert] = answers(kesu.fake, refused)
    assert alert.params["text"] == render("staff/not_allowed") and alert.params["show_alert"] is True

    pressed = kesu.press(f"verify:{case.number}", user=SPECIALIST, chat=group_chat(ZHENBEI_GROUP),
                         message_id=notice.result["message_id"], text=edit.text)
    verifying = current(kesu, case.number)
    assert verifying.status == "verifying"
    done = render("staff/action_done", case=verifying, action="verify", by="李专员")
    [answer] = answers(kesu.fake, pressed)
    assert answer.params["text"] == done
    edited = kesu.fake.of("editMessageText", chat_id=ZHENBEI_GROUP)[-1]
    assert edited.text == f"{edit.text}\n\n{done}" and edited.labels == ["查看详情"]

    command(kesu, f"/reject {case.number} 经核实不属于质量问题")
    stale = kesu.press(f"verify:{case.number}", user=SPECIALIST, chat=group_chat(ZHENBEI_GROUP),
                       message_id=notice.result["message_id"], text=edit.text)  # an old copy of the buttons
    [alert] = answers(kesu.fake, stale)
    assert alert.params["text"] == render("staff/not_now", action="verify", state="rejected")
    assert current(kesu, case.number).status == "rejected"


def test_the_approval_button_on_an_approval_request(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    request = command(kesu, f"/propose {case.number} refund,compensation ¥1500 退款1000元并补偿500元")
    waiting = current(kesu, case.number)
    assert waiting.status == "awaiting_approval" and waiting.solution is not None
    assert (waiting.solution["codes"], waiting.solution["amount"]) == (["refund", "compensation"], "1500.00")
    message_id = request.result["message_id"]

    customer_before = sent_to(kesu, CUSTOMER)
    too_low = kesu.press(f"approve:{case.number}", user=SPECIALIST, chat=group_chat(ZHENBEI_GROUP),
                         message_id=message_id, text=request.text)
    [alert] = answers(kesu.fake, too_low)
    assert alert.params["text"] == render("staff/approval_limit", approver_role="store_manager")
    assert alert.params["show_alert"] is True

    approve = kesu.press(f"approve:{case.number}", user=STORE_MANAGER, chat=group_chat(ZHENBEI_GROUP),
                         message_id=message_id, text=request.text)
    approved = current(kesu, case.number)
    assert approved.status == "proposed"
    done = render("staff/action_done", case=approved, action="approve", by="陈店长")
    assert answers(kesu.fake, approve)[0].params["text"] == done
    edited = kesu.fake.of("editMessageText", chat_id=ZHENBEI_GROUP)[-1]
    assert edited.params["message_id"] == message_id and edited.text.endswith(done)
    [solution] = new_to(kesu, CUSTOMER, customer_before)
    assert solution.text == render("case/solution", case=approved, solution=approved.solution)
    assert "退款、赔偿/补偿，金额 1,500元" in solution.text


def test_a_proposal_within_the_proposers_limit_goes_to_the_customer_at_once(kesu: Kesu) -> None:
    case, _ = claim(kesu, user=STORE_MANAGER)
    customer_before = sent_to(kesu, CUSTOMER)
    reply = command(kesu, f"/propose {case.number} 换货 维修 更换扶手，周六上门", user=STORE_MANAGER)
    proposed = current(kesu, case.number)
    assert proposed.status == "proposed" and reply.buttons == []
    assert proposed.solution is not None and proposed.solution["codes"] == ["exchange", "repair"]
    [solution] = new_to(kesu, CUSTOMER, customer_before)
    assert solution.text == render("case/solution", case=proposed, solution=proposed.solution)
    assert solution.labels == ["同意", "不同意"]


# --------------------------------------------------------------------------- hand-over, rejection, reopening


def test_reassign_hands_the_case_over_with_its_history(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    command(kesu, f"/note {case.number} 顾客下午3点后方便接电话")
    unknown = command(kesu, f"/reassign {case.number} telegram:888")
    assert unknown.text == render("staff/unknown_member", to="telegram:888")
    assert command(kesu, f"/reassign {case.number} @某人").text == render("staff/unknown_member", to="@某人")
    assert command(kesu, f"/reassign {case.number}").text == render("staff/unknown_member", to=None)

    reply = command(kesu, f"/reassign {case.number} telegram:999")
    handed = current(kesu, case.number)
    assert (handed.owner, handed.owner_name, handed.status) == ("telegram:999", "陈店长", "claimed")
    assert reply.text == render("staff/action_done", case=handed, action="reassign", by="李专员", **{
        "from": "李专员", "to": "陈店长"})
    brief = command(kesu, f"/case {case.number}", user=STORE_MANAGER)
    assert "负责人：陈店长" in brief.text
    assert "内部备注（李专员）：顾客下午3点后方便接电话" in brief.text and "转派：李专员 → 陈店长" in brief.text


def test_reassign_by_replying_to_a_colleague_without_a_directory(open_kesu: Kesu) -> None:
    case, _ = claim(open_kesu, user=MANAGER)
    said = open_kesu.deliver(open_kesu.message({"text": "这个我来跟"}, user=OUTSIDER,
                                               chat=group_chat(ZHENBEI_GROUP)))["message"]
    update = open_kesu.message({"text": f"/reassign {case.number}", "reply_to_message": said}, user=MANAGER,
                               chat=group_chat(ZHENBEI_GROUP))
    open_kesu.deliver(update)
    open_kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP, where=lambda c: "已转派" in c.text)
    assert current(open_kesu, case.number).owner == "telegram:888"


def test_reject_and_reopen(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    reason = "经品牌方检测属人为损坏，不在保修范围内"
    customer_before = sent_to(kesu, CUSTOMER)
    command(kesu, f"/reject {case.number} {reason}")
    assert current(kesu, case.number).status == "rejected"
    [rejected] = new_to(kesu, CUSTOMER, customer_before)
    assert rejected.text == render("case/rejected", case=case, reason=reason)

    assert command(kesu, f"/progress {case.number} 还在处理").text == render("staff/not_now", action="progress",
                                                                          state="rejected")
    reply = command(kesu, f"/reopen {case.number} 顾客提供了新的检测报告", user=STORE_MANAGER)
    reopened = current(kesu, case.number)
    assert reopened.status == "reopened"
    assert reply.text == render("staff/action_done", case=reopened, action="reopen", by="陈店长",
                                text="顾客提供了新的检测报告")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("argument", "expected"), [
    ("赔偿 300 赔偿300元，三个工作日内到账", (("compensation",), Decimal(300), "赔偿300元，三个工作日内到账")),
    ("refund,compensation 1500.50 退款并补偿", (("refund", "compensation"), Decimal("1500.50"), "退款并补偿")),
    ("退款、赔偿 ¥200元 多退少补", (("refund", "compensation"), Decimal(200), "多退少补")),
    ("换货 维修 更换扶手\n周六上门", (("exchange", "repair"), None, "更换扶手\n周六上门")),
    ("上门检测 师傅明天上午到", (("inspection",), None, "师傅明天上午到")),
    ("3个工作日内上门维修", ((), None, "3个工作日内上门维修")),
    ("", ((), None, "")),
])
def test_parse_proposal(argument: str, expected: tuple[tuple[str, ...], Decimal | None, str]) -> None:
    assert parse_proposal(argument) == expected


def test_parse_case_command() -> None:
    parsed = parse_case_command("/propose@kesu_test_bot ks-261122-001-9  赔偿 300\n三天内到账")
    assert parsed is not None
    assert (parsed.name, parsed.bot, parsed.number, parsed.rest) == (
        "propose", "kesu_test_bot", "KS2611220019", "赔偿 300\n三天内到账")
    bare = parse_case_command("/help")
    assert bare is not None and (bare.name, bare.number, bare.number_given, bare.rest) == ("help", None, False, "")
    typo = parse_case_command("/note KS2611220010 备注")
    assert typo is not None and typo.number is None and typo.number_given
    assert parse_case_command("这个客户我来跟进") is None
    assert parse_case_command("/ 空") is None


def test_staff_buttons_fit_telegrams_limit_and_customer_answers_are_not_staff_buttons() -> None:
    assert staff_button("approve:KS2611220019") == ("approve", "KS2611220019")
    assert staff_button("verify:KS261122123456X") == ("verify", "KS261122123456X")
    assert staff_button("同意") is None and staff_button("5") is None and staff_button("resolve:KS2611220019") is None
    assert max(len(f"{a}:KS2611221234567".encode()) for a in ("claim", "view", "verify", "approve")) <= 64


# --------------------------------------------------------------------------- classification and grading

ESCALATION_GROUP = -1001000000099  # 真北's escalation group in the routed catalog


def test_classify_sets_nature_and_grade_and_raising_to_major_alerts_the_escalation_group(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    assert (case.nature, case.fields["priority"]) == ("quality", "normal")  # guessed from the customer's words
    customer_before = sent_to(kesu, CUSTOMER)

    reply = command(kesu, f"/classify {case.number} 重大 送货")
    major = current(kesu, case.number)
    assert (major.nature, major.fields["priority"], major.status, major.owner) == (
        "delivery", "major", "claimed", "telegram:777")
    assert reply.text == render("staff/action_done", case=major, action="classify")
    assert "（性质：送货安装，等级：重大）" in reply.text
    [alert] = kesu.fake.wait_for("sendMessage", chat_id=ESCALATION_GROUP)
    assert major.number in alert.text and "李专员" in alert.text

    # grading it again, or only the nature, alerts no one again; the customer hears nothing of either;
    # what is already so is not recorded again
    command(kesu, f"/classify {case.number} 质量")
    command(kesu, f"/classify@kesu_test_bot {case.number.lower()} quality MAJOR")
    final = current(kesu, case.number)
    assert (final.nature, final.fields["priority"]) == ("quality", "major")
    kesu.settle()
    assert len(kesu.fake.of("sendMessage", chat_id=ESCALATION_GROUP)) == 1
    assert new_to(kesu, CUSTOMER, customer_before) == []
    assert event_kinds(kesu, case)[2:] == ["classify", "classify"]


def test_classify_refuses_what_it_cannot_read_and_changes_nothing(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    words = {"natures": NATURE_WORDS, "priorities": PRIORITY_WORDS}
    unknown = command(kesu, f"/classify {case.number} 紧急 质量")
    assert unknown.text == render("staff/classify_words", unknown=["紧急"], **words)
    assert "不认识：紧急" in unknown.text and "送货/安装/物流" in unknown.text and "重大/major" in unknown.text
    two = command(kesu, f"/classify {case.number} 质量 服务")
    assert two.text == render("staff/classify_words", unknown=[], **words)
    nothing = command(kesu, f"/classify {case.number}")
    assert nothing.text == render("staff/classify_what", natures=NATURES, priorities=PRIORITIES)
    assert command(kesu, "/classify").text == render("staff/command_usage", command="classify")
    outside = command(kesu, f"/classify {case.number} 重大", chat=UNRELATED_GROUP)
    assert outside.text == render("staff/not_allowed")
    after = current(kesu, case.number)
    assert (after.nature, after.fields["priority"], after.version) == ("quality", "normal", case.version)
    assert kesu.fake.of("sendMessage", chat_id=ESCALATION_GROUP) == []


@pytest.mark.parametrize(("argument", "expected"), [
    ("送货 重大", Classification("delivery", "major")),
    ("major quality", Classification("quality", "major")),
    ("产品质量，一般", Classification("quality", "normal")),
    ("送货安装重要", Classification("delivery", "important")),
    ("价格", Classification("sales", None)),
    ("Service", Classification("service", None)),
    ("重要", Classification(None, "important")),
    ("送货 安装 物流", Classification("delivery", None)),  # three words, one nature
    ("质量 服务", Classification("quality", None, conflicting=True)),
    ("一般、重大", Classification(None, "normal", conflicting=True)),
    ("紧急 质量 urgent", Classification("quality", None, unknown=("紧急", "urgent"))),
    ("质量问题", Classification(None, None, unknown=("质量问题",))),  # not a word staff were offered
    ("", Classification(None, None)),
])
def test_parse_classification(argument: str, expected: Classification) -> None:
    assert parse_classification(argument) == expected


def test_the_words_name_every_nature_and_grade() -> None:
    assert tuple(NATURE_WORDS) == NATURES and tuple(PRIORITY_WORDS) == PRIORITIES


# --------------------------------------------------------------------------- Telegram's command menu

STAFF_COMMANDS = ["case", "classify", "verify", "note", "ask", "progress", "propose", "approve", "agree", "resolve",
                  "reject", "reassign", "close", "reopen", "help"]


def menu(fake: FakeBotAPI) -> list[tuple[dict[str, Any], list[tuple[str, str]]]]:
    """What Kesu registered: (scope, [(command, description)]) per setMyCommands call."""
    return [(call.params["scope"], [(c["command"], c["description"]) for c in call.params["commands"]])
            for call in fake.of("setMyCommands")]


def expected_menu() -> list[tuple[dict[str, Any], list[tuple[str, str]]]]:
    return [({"type": "all_group_chats"}, [(name, render("telegram_menu", command=name)) for name in STAFF_COMMANDS]),
            ({"type": "all_private_chats"}, [("start", render("telegram_menu", command="start"))])]


@pytest.mark.parametrize("mode", ["webhook", "polling"])
def test_kesu_sets_the_command_menu_when_it_starts(tmp_path: Path, fake: FakeBotAPI, mode: str) -> None:
    settings = make_settings(tmp_path, fake, telegram_mode=mode)
    with TestClient(build_server(settings, clock=moving_clock())):
        fake.wait_for("setMyCommands", count=2)
    assert menu(fake) == expected_menu()
    descriptions = [text for _, commands in menu(fake) for _, text in commands]
    assert all(0 < len(text) <= 256 for text in descriptions)  # Telegram's limit
    assert "分类定级" in descriptions[1] and descriptions[-1] == "开始或继续登记投诉"


def test_a_refused_menu_does_not_keep_kesu_from_working(tmp_path: Path, fake: FakeBotAPI) -> None:
    fake.fail("setMyCommands", status=400, description="Bad Request: BOT_COMMANDS_TOO_MUCH")
    for kesu in start(tmp_path, fake, ROUTED_CATALOG):
        replies = kesu.turn(OPENING)
        assert "王丽" in "\n".join(c.text for c in replies)
    assert [c.method for c in fake.rejected] == ["setMyCommands"]


def test_set_webhook_registers_the_command_menu_too(fake: FakeBotAPI) -> None:
    from bot.cli import app

    result = CliRunner().invoke(app, ["telegram", "set-webhook"], env=_cli_env(fake))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["webhook set: https://kesu.example/telegram/webhook", "command menu set"]
    assert menu(fake) == expected_menu()


def test_set_webhook_keeps_the_webhook_when_the_menu_is_refused(fake: FakeBotAPI) -> None:
    from bot.cli import app

    fake.fail("setMyCommands", status=400, description="Bad Request: BOT_COMMAND_INVALID")
    result = CliRunner().invoke(app, ["telegram", "set-webhook"], env=_cli_env(fake))
    assert result.exit_code == 0, result.output
    assert "webhook set: https://kesu.example/telegram/webhook" in result.output
    assert "command menu not set" in result.output
    assert len(fake.of("setWebhook")) == 1


def test_a_progress_update_can_name_when_the_next_one_comes(kesu: Kesu) -> None:
    case, _ = claim(kesu)
    customer_before = sent_to(kesu, CUSTOMER)
    sent_at = NOW + timedelta(minutes=1)  # the moving clock is seconds past NOW
    command(kesu, f"/progress {case.number} 48h {PROGRESS}")
    updated = current(kesu, case.number)
    assert updated.next_update_due is not None
    assert NOW + timedelta(hours=48) <= updated.next_update_due <= sent_at + timedelta(hours=48)
    [progress] = new_to(kesu, CUSTOMER, customer_before)
    assert progress.text == render("case/progress", case=updated, progress=PROGRESS)
    assert "48h" not in progress.text


@pytest.mark.parametrize(("text", "expected"), [
    ("48h 品牌方已安排检测", (timedelta(hours=48), "品牌方已安排检测")),
    ("3天 品牌方已安排检测", (timedelta(days=3), "品牌方已安排检测")),
    ("2D 周三上门", (timedelta(days=2), "周三上门")),
    ("品牌方已安排检测", (None, "品牌方已安排检测")),
    ("48h", (timedelta(hours=48), "")),  # a time and no news: refused as text_required
    ("48小时内给您答复", (None, "48小时内给您答复")),  # the customer's own sentence, not a leading time
])
def test_split_promise(text: str, expected: tuple[timedelta | None, str]) -> None:
    assert split_promise(text) == expected


def test_a_deployers_older_command_list_leaves_new_commands_out_of_the_menu_instead_of_failing(
        tmp_path: Path) -> None:
    older = tmp_path / "zh-CN" / "staff" / "_commands.j2"
    older.parent.mkdir(parents=True)
    older.write_text('{%- set COMMANDS = {"case": {"syntax": "/case 编号", "what": "查看案件", '
                     '"example": "/case KS1"}} -%}', encoding="utf-8")
    (_, staff_commands), (_, customer_commands) = command_menus(Renderer([tmp_path]))
    assert [(c.command, c.description) for c in staff_commands] == [("case", "查看案件")]
    assert [c.command for c in customer_commands] == ["start"]
