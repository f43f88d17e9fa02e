"""Staff work a case after intake: lifecycle, authorization, approval, and the customer's answers.

The service is real (storage on SQLite and PostgreSQL through the `store` fixture); the customer is
a console customer talking to the intake service, so what they read is asserted as text.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from concurrently import run_together

from bot.app import build_service, build_staff_service
from bot.config import Settings
from bot.lifecycle import DEFAULT_LIMITS, TRANSITIONS, Action, ApprovalRule, NotAllowedNow, Status, next_status
from bot.notify import StaffNotifier
from bot.service import Attachment, InboundMessage, IntakeService
from bot.staff import StaffMember, StaffService
from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from storage.repository import CaseRecord, Store

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=SHANGHAI)
OPENING = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
FOLLOW_UPS = ("上周六送的", "上海市闵行区七宝镇漕宝路1500弄3号502", "没有", "确认")
SPECIALIST = StaffMember("telegram:101", "李专员")
MANAGER = StaffMember("telegram:102", "王店长")
OUTSIDER = StaffMember("telegram:103", "赵专员")
DIRECTORY = """
staff:
  - {id: "telegram:101", name: 李专员, role: specialist, malls: [sh-zhenbei]}
  - {id: "telegram:102", name: 王店长, role: store_manager, malls: [sh-zhenbei]}
  - {id: "telegram:103", name: 赵专员, role: specialist, malls: [bj-xisihuan]}
"""


# ------------------------------------------------------------------ the lifecycle table


def test_every_status_has_a_way_out() -> None:
    """No case can get stuck: even closed and rejected cases can be reopened."""
    leavable = {status for starts, target in TRANSITIONS.values() if target is not None for status in starts}
    assert leavable == set(Status)


@pytest.mark.parametrize(("action", "current", "target"), [
    (Action.CLAIM, "new", Status.CLAIMED),
    (Action.PROPOSE, "claimed", Status.PROPOSED),
    (Action.APPROVE, "awaiting_approval", Status.PROPOSED),
    (Action.AGREE, "proposed", Status.AGREED),
    (Action.RESOLVE, "agreed", Status.RESOLVED),
    (Action.REOPEN, "closed", Status.REOPENED),
    (Action.NOTE, "closed", None),
])
def test_allowed_transitions(action: Action, current: str, target: Status | None) -> None:
    assert next_status(action, current) == target


@pytest.mark.parametrize(("action", "current"), [
    (Action.CLAIM, "claimed"), (Action.APPROVE, "claimed"), (Action.AGREE, "claimed"),
    (Action.CLOSE, "claimed"), (Action.ASK, "closed"), (Action.RESOLVE, "new"), (Action.REJECT, "resolved"),
])
def test_refused_transitions(action: Action, current: str) -> None:
    with pytest.raises(NotAllowedNow):
        next_status(action, current)


@pytest.mark.parametrize(("amount", "role"), [
    (Decimal(30), "front_desk_manager"), (Decimal(50), "front_desk_manager"), (Decimal(51), "deputy_store_manager"),
    (Decimal(2000), "store_manager"), (Decimal(2001), "operations_vp"),
])
def test_the_seeds_approval_limits(amount: Decimal, role: str) -> None:
    assert ApprovalRule(dict(DEFAULT_LIMITS)).approver_for(amount) == role


def test_money_beyond_the_proposers_limit_needs_approval() -> None:
    rule = ApprovalRule(dict(DEFAULT_LIMITS))
    assert rule.needs_approval(["compensation"], Decimal(300), "specialist")
    assert not rule.needs_approval(["compensation"], Decimal(300), "store_manager")
    assert not rule.needs_approval(["repair"], None, "specialist")


# ------------------------------------------------------------------ the service


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    demo = (Path(__file__).parent.parent / "bot" / "data" / "demo_catalog.yaml").read_text(encoding="utf-8")
    path = tmp_path / "catalog.yaml"
    path.write_text(demo + DIRECTORY, encoding="utf-8")
    return load_catalog(path)


@pytest.fixture
def staff(store: Store, catalog: Catalog) -> StaffService:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return build_staff_service(settings, store, catalog, Renderer(), clock=lambda: NOW + timedelta(hours=1))


@pytest.fixture
def intake(store: Store, catalog: Catalog, staff: StaffService) -> IntakeService:
    renderer = Renderer()
    notifier = StaffNotifier(catalog, renderer, Settings(_env_file=None))  # type: ignore[call-arg]
    return IntakeService(store, catalog, renderer, clock=lambda: NOW, notifier=notifier, casework=staff)


def say(intake: IntakeService, text: str, customer: str = "c-1", channel: str = "console") -> list[str]:
    return intake.handle(InboundMessage(channel, customer, text)).replies


def open_case(intake: IntakeService, customer: str = "c-1", channel: str = "console") -> CaseRecord:
    say(intake, OPENING, customer, channel)
    outcome = None
    for text in FOLLOW_UPS:
        outcome = intake.handle(InboundMessage(channel, customer, text))
    assert outcome is not None and outcome.case is not None, outcome
    return outcome.case


def events(store: Store, case: CaseRecord) -> list[str]:
    return [event.kind for event in store.get_case_events(case.id)]


def test_a_case_from_claim_to_a_satisfied_customer(intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    assert staff.claim(case.number, SPECIALIST, telegram_chat=None).won
    asked = staff.act(case.number, Action.ASK, SPECIALIST, text="开裂在哪一侧？")
    assert asked.ok
    assert say(intake, "左边扶手") == [f"收到，您的回复已转给投诉 {case.number} 的负责人。"]
    proposed = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="更换扶手", codes=("exchange",))
    assert proposed.ok and proposed.case is not None and proposed.case.status == "proposed"
    assert "同意" in say(intake, "同意")[0]
    assert store.get_case(case.number).status == "agreed"  # type: ignore[union-attr]
    resolved = staff.act(case.number, Action.RESOLVE, SPECIALIST, text="扶手已更换")
    assert resolved.ok and resolved.case is not None and resolved.case.status == "follow_up"
    assert "5分" in say(intake, "5")[0]
    final = store.get_case(case.number)
    assert final is not None and final.status == "closed" and final.satisfaction == 5
    assert events(store, case) == ["opened", "claimed", "ask", "customer_answer", "propose", "customer_agreed",
                                   "resolve", "satisfied"]


def test_a_low_score_reopens_the_case(intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.RESOLVE, SPECIALIST, text="已上门维修")
    assert "重新打开" in say(intake, "没解决")[0]
    assert store.get_case(case.number).status == "reopened"  # type: ignore[union-attr]


def test_compensation_beyond_the_limit_waits_for_the_manager(intake: IntakeService, staff: StaffService,
                                                             store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    proposed = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="补偿300元", codes=("compensation",),
                         amount=Decimal(300))
    assert proposed.case is not None and proposed.case.status == "awaiting_approval"
    refused = staff.act(case.number, Action.APPROVE, SPECIALIST)
    assert refused.refusal == "staff/approval_limit"
    assert refused.detail == {"approver_role": "store_manager"}
    approved = staff.act(case.number, Action.APPROVE, MANAGER)
    assert approved.ok and approved.case is not None and approved.case.status == "proposed"
    assert approved.case.solution is not None and approved.case.solution["approved_by"] == "王店长"


def test_staff_of_another_mall_cannot_act(intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    assert not staff.claim(case.number, OUTSIDER, telegram_chat=None).allowed
    assert staff.act(case.number, Action.NOTE, OUTSIDER, text="看看").refusal == "staff/not_allowed"
    assert store.get_case(case.number).owner is None  # type: ignore[union-attr]


def test_an_action_in_the_wrong_state_is_refused(intake: IntakeService, staff: StaffService) -> None:
    case = open_case(intake)
    result = staff.act(case.number, Action.APPROVE, MANAGER)
    assert result.refusal == "staff/not_now"
    assert result.detail == {"action": "approve", "state": "new"}


def test_concurrent_resolves_change_the_case_once(intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    results = run_together(6, lambda i: staff.act(case.number, Action.RESOLVE, SPECIALIST, text=f"处理{i}"))
    assert sum(result.ok for result in results) == 1
    assert {result.refusal for result in results if not result.ok} <= {"staff/conflict", "staff/not_now"}
    assert events(store, case).count("resolve") == 1


def test_progress_on_a_telegram_case_is_pushed_to_the_customer(intake: IntakeService, staff: StaffService,
                                                               store: Store) -> None:
    case = open_case(intake, customer="5550001", channel="telegram")
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROGRESS, SPECIALIST, text="明天上午十点上门检测")
    pushed = [item for item in store.outbox_items(case_id=case.id) if item.kind == "customer_update"]
    texts = [item.payload["text"] for item in pushed]
    assert any("明天上午十点上门检测" in text for text in texts)
    assert all(item.target == "5550001" and item.channel == "telegram" for item in pushed)


def test_a_customer_cannot_answer_for_another_customers_case(intake: IntakeService, staff: StaffService,
                                                             store: Store) -> None:
    case = open_case(intake, customer="c-1")
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.ASK, SPECIALIST, text="方便拍照吗？")
    with store.unit_of_work() as uow:
        assert staff.customer_reply(uow, case.number, "question", "冒充的回答", channel="console",
                                    customer_id="c-2", score=None, agrees=None, now=NOW) is None
    assert "customer_answer" not in events(store, case)


def test_a_refund_needs_an_amount_and_codes_must_be_known(intake: IntakeService, staff: StaffService) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    no_amount = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="全额退款", codes=("refund",))
    assert no_amount.refusal == "staff/amount_required"
    unknown = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="给现金", codes=("cash",))
    assert unknown.refusal == "staff/unknown_code" and unknown.detail == {"codes": ["cash"]}


def test_a_listed_member_cannot_act_from_a_chat_that_does_not_serve_the_mall(intake: IntakeService,
                                                                             staff: StaffService) -> None:
    case = open_case(intake)
    result = staff.act(case.number, Action.NOTE, SPECIALIST, telegram_chat=-1009999999999, text="x")
    assert result.refusal == "staff/not_allowed"


def test_reassigning_tells_the_new_owner_and_keeps_the_history(intake: IntakeService, staff: StaffService,
                                                              store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.NOTE, SPECIALIST, text="顾客下午方便接电话")
    moved = staff.act(case.number, Action.REASSIGN, SPECIALIST, to=MANAGER.id)
    assert moved.ok and moved.case is not None and moved.case.owner_name == "王店长"
    told = [item for item in store.outbox_items(case_id=case.id) if item.kind == "staff_update"]
    assert [item.target for item in told] == ["102"]
    assert "李专员 把投诉" in told[0].payload["text"]
    assert events(store, case)[-3:] == ["claimed", "note", "reassign"]


def test_classifying_sets_nature_and_grade_and_a_raise_to_major_reaches_the_escalation_group(
        intake: IntakeService, store: Store, catalog: Catalog) -> None:
    settings = Settings(_env_file=None, escalation_telegram_chat=-1007770001)  # type: ignore[call-arg]
    staff = build_staff_service(settings, store, catalog, Renderer(), clock=lambda: NOW + timedelta(hours=1))
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    assert case.nature == "quality"  # guessed from "扶手开裂了"
    nature_only = staff.act(case.number, Action.CLASSIFY, SPECIALIST, nature="delivery")
    assert nature_only.ok and nature_only.case is not None and nature_only.case.nature == "delivery"
    assert not [item for item in store.outbox_items(case_id=case.id) if item.target == "-1007770001"]

    raised = staff.act(case.number, Action.CLASSIFY, SPECIALIST, priority="major")
    assert raised.ok and raised.case is not None
    assert raised.case.fields["priority"] == "major" and raised.case.status == "claimed"
    told = [item for item in store.outbox_items(case_id=case.id) if item.target == "-1007770001"]
    assert len(told) == 1 and told[0].kind == "staff_notification"
    text = told[0].payload["text"]
    assert text.startswith(f"【升级为重大投诉（李专员）】{case.number}")
    assert "138****5678" in text and "13812345678" not in text
    assert "负责人：李专员" in text
    again = staff.act(case.number, Action.CLASSIFY, SPECIALIST, priority="major")
    assert again.ok  # already 重大: nothing new to announce
    assert len([item for item in store.outbox_items(case_id=case.id) if item.target == "-1007770001"]) == 1
    timeline = [(e.kind, e.data) for e in store.get_case_events(case.id) if e.kind == "classify"]
    assert timeline == [("classify", {"by": "李专员", "nature": "delivery"}),
                            ("classify", {"by": "李专员", "priority": "major", "from_priority": "normal"})]


@pytest.mark.parametrize("values", [{}, {"nature": "weather"}, {"priority": "urgent"}])
def test_classifying_needs_a_known_nature_or_grade(intake: IntakeService, staff: StaffService, store: Store,
                                                   values: dict[str, str]) -> None:
    case = open_case(intake)
    result = staff.act(case.number, Action.CLASSIFY, SPECIALIST, **values)
    assert result.refusal == "staff/classify_what"
    assert "classify" not in events(store, case)


def test_agreeing_to_a_proposal_that_was_replaced_meanwhile_is_relayed_not_taken_as_agreement(
        intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROPOSE, SPECIALIST, text="更换扶手", codes=("exchange",))
    revised = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="更换扶手并补偿300元",
                        codes=("exchange", "compensation"), amount=Decimal(300))
    assert revised.case is not None and revised.case.status == "awaiting_approval"
    assert say(intake, "同意") == [f"收到，您的回复已转给投诉 {case.number} 的负责人。商场刚刚调整了处理方案，"
                                  "正在审批，确定后会再发给您确认。"]
    assert store.get_case(case.number).status == "awaiting_approval"  # type: ignore[union-attr]
    assert events(store, case)[-1] == "customer_answer"


def test_after_staff_record_the_agreement_the_customers_next_message_is_an_ordinary_one(
        intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROPOSE, SPECIALIST, text="更换扶手", codes=("exchange",))
    staff.act(case.number, Action.AGREE, SPECIALIST, text="顾客电话里同意")
    assert say(intake, "好的，谢谢") == [Renderer().render("thanks", {})]
    assert events(store, case)[-1] == "agree"
    assert store.get_case(case.number).status == "agreed"  # type: ignore[union-attr]


def test_a_score_after_the_case_was_closed_by_staff_opens_no_question(intake: IntakeService, staff: StaffService,
                                                                     store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.RESOLVE, SPECIALIST, text="已上门维修")
    staff.act(case.number, Action.CLOSE, SPECIALIST)
    assert not any("评价" in reply for reply in say(intake, "5"))
    closed = store.get_case(case.number)
    assert closed is not None and closed.status == "closed" and closed.satisfaction is None
    assert "satisfied" not in events(store, case)


# ------------------------------------------------------------------ promises per grade


def sla_service(store: Store, catalog: Catalog, now: datetime = NOW, **settings: Any) -> IntakeService:
    return build_service(Settings(_env_file=None, **settings),  # type: ignore[call-arg]
                         store=store, catalog=catalog, clock=lambda: now)


def test_a_major_case_gets_its_grades_shorter_promise_and_the_customer_reads_it(store: Store,
                                                                                 catalog: Catalog) -> None:
    intake = sla_service(store, catalog, sla_by_priority={"major": {"first_contact_hours": 2, "resolution_days": 3}})
    say(intake, OPENING + "，再不处理我就找媒体曝光")
    for text in FOLLOW_UPS[:-1]:
        say(intake, text)
    outcome = intake.handle(InboundMessage("console", "c-1", "确认"))
    assert outcome.case is not None and outcome.case.fields["priority"] == "major"
    assert outcome.case.first_contact_due == NOW + timedelta(hours=2)
    assert outcome.case.resolution_due == NOW + timedelta(days=3)
    assert "稍后会在2小时内与您联系" in outcome.replies[-1]


def test_promises_read_as_the_deployment_configured_them(store: Store, catalog: Catalog) -> None:
    intake = sla_service(store, catalog, first_contact_hours=12)
    assert "商场会在12小时内与您联系" in say(intake, "你好")[0]
    case = open_case(intake)
    assert case.first_contact_due == NOW + timedelta(hours=12)
    working_days = sla_service(store, catalog, first_contact_hours=48, first_contact_clock="business")
    assert "商场会在2个工作日内与您联系" in say(working_days, "你好", customer="c-2")[0]


def test_raising_the_grade_moves_the_pending_promises(store: Store, catalog: Catalog) -> None:
    settings = {"sla_by_priority": {"major": {"first_contact_hours": 2}}}
    intake = sla_service(store, catalog, **settings)
    case = open_case(intake)
    assert case.first_contact_due == NOW + timedelta(hours=24)
    assert intake.casework is not None
    raised = intake.casework.act(case.number, Action.CLASSIFY, SPECIALIST, priority="major")
    assert raised.ok and raised.case is not None
    assert raised.case.first_contact_due == NOW + timedelta(hours=2)
    assert raised.case.resolution_due == case.resolution_due  # no shorter resolution for 重大 here
    lowered = intake.casework.act(case.number, Action.CLASSIFY, SPECIALIST, priority="normal")
    assert lowered.case is not None and lowered.case.first_contact_due == NOW + timedelta(hours=24)


def test_a_grade_raised_late_does_not_make_the_case_overdue_after_the_fact(store: Store, catalog: Catalog) -> None:
    settings = {"sla_by_priority": {"major": {"first_contact_hours": 2}}}
    case = open_case(sla_service(store, catalog, **settings))
    five_hours_on = sla_service(store, catalog, now=NOW + timedelta(hours=5), **settings)
    assert five_hours_on.casework is not None
    raised = five_hours_on.casework.act(case.number, Action.CLASSIFY, SPECIALIST, priority="major")
    assert raised.ok and raised.case is not None and raised.case.fields["priority"] == "major"
    assert raised.case.first_contact_due == NOW + timedelta(hours=24)  # the customer was promised 24 h


def test_a_progress_update_that_names_the_next_one_sets_that_deadline_and_tells_the_customer(
        intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake, customer="5550002", channel="telegram")
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    promised = NOW + timedelta(days=2, hours=3)  # 2026-11-24 17:30 in Shanghai
    result = staff.act(case.number, Action.PROGRESS, SPECIALIST, text="品牌方周二上门检测", next_update=promised)
    assert result.ok and result.case is not None and result.case.next_update_due == promised
    pushed = [item.payload["text"] for item in store.outbox_items(case_id=case.id) if item.kind == "customer_update"]
    assert [text for text in pushed if "新进展" in text] == [(f"您的投诉 {case.number} 有新进展：\n品牌方周二上门检测\n"
                          "我们会在2026年11月24日17:30前告诉您下一步的进展。")]


@pytest.mark.parametrize(("action", "offset"), [
    (Action.PROGRESS, timedelta(hours=-1)), (Action.PROGRESS, timedelta(days=45)), (Action.NOTE, timedelta(days=1))])
def test_a_next_update_in_the_past_too_far_ahead_or_on_an_internal_action_is_refused(
        intake: IntakeService, staff: StaffService, store: Store, action: Action, offset: timedelta) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    result = staff.act(case.number, action, SPECIALIST, text="已联系", next_update=NOW + timedelta(hours=1) + offset)
    assert result.refusal == "staff/next_update_invalid"
    assert action.value not in events(store, case)


def test_photos_sent_after_intake_join_the_open_case_and_reach_its_owner(intake: IntakeService, staff: StaffService,
                                                                        store: Store) -> None:
    case = open_case(intake, customer="5550003", channel="telegram")
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.ASK, SPECIALIST, text="方便拍一下开裂的位置吗？")
    photos = (Attachment("photo", "file-1"), Attachment("photo", "file-2"))
    outcome = intake.handle(InboundMessage("telegram", "5550003", "", attachments=photos))
    assert outcome.replies == [f"收到您发来的2个文件，已补充到投诉 {case.number} 的凭证里，负责人可以直接查看。"]
    assert [e.file_ref for e in store.evidence_for_case(case.id)] == ["file-1", "file-2"]
    told = [item.payload["text"] for item in store.outbox_items(case_id=case.id) if item.kind == "staff_update"]
    assert f"📎 顾客为 {case.number} 补充了2个凭证（图片）。发送 /case {case.number} 查看。" in told
    # the question is still open: the words that follow answer it
    assert say(intake, "左边扶手", customer="5550003", channel="telegram") == [
        f"收到，您的回复已转给投诉 {case.number} 的负责人。"]


def test_a_photo_sent_while_telling_a_new_complaint_waits_for_that_complaint(intake: IntakeService,
                                                                             store: Store) -> None:
    first = open_case(intake)
    say(intake, "还有一件事，餐桌也有问题")
    intake.handle(InboundMessage("console", "c-1", "", attachments=(Attachment("photo", "table"),)))
    assert store.evidence_for_case(first.id) == []


def test_a_caption_with_a_photo_after_intake_describes_the_photo_and_starts_nothing(
        intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake, customer="5550004", channel="telegram")
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    photo = (Attachment("photo", "door"),)
    outcome = intake.handle(InboundMessage("telegram", "5550004", "柜门这里也开裂了", attachments=photo))
    assert outcome.replies == [f"收到您发来的图片/文件，已补充到投诉 {case.number} 的凭证里，负责人可以直接查看。"]
    assert outcome.state.fields == {} and outcome.state.asking is None  # no second intake begun
    told = [item.payload["text"] for item in store.outbox_items(case_id=case.id) if item.kind == "staff_update"]
    assert (f"📎 顾客为 {case.number} 补充了1个凭证（图片），并说：柜门这里也开裂了。"
            f"发送 /case {case.number} 查看。") in told


def test_an_unsubscribed_customer_is_recorded_once_and_staff_without_an_owner_hear_it_in_the_fallback_group(
        intake: IntakeService, store: Store, catalog: Catalog) -> None:
    settings = Settings(_env_file=None, fallback_wecom_key="fallback-robot")  # type: ignore[call-arg]
    staff = build_staff_service(settings, store, catalog, Renderer(), clock=lambda: NOW + timedelta(hours=1))
    case = open_case(intake)
    assert [c.number for c in staff.customer_left("console", "c-1")] == [case.number]
    assert staff.customer_left("console", "c-1") == []  # WeChat's retry of the same notice
    told = [(item.channel, item.target, item.payload["text"]) for item in store.outbox_items(case_id=case.id)
            if item.kind == "staff_update"]
    assert told == [("wecom", "fallback-robot", Renderer().render("staff/customer_left", {"case": case}))]
    assert events(store, case).count("customer_unsubscribed") == 1


def test_classifying_an_unclaimed_case_leaves_it_for_the_first_claimer(intake: IntakeService, staff: StaffService,
                                                                       store: Store) -> None:
    case = open_case(intake)
    graded = staff.act(case.number, Action.CLASSIFY, MANAGER, priority="important")
    assert graded.ok and graded.case is not None and graded.case.owner is None
    assert staff.claim(case.number, SPECIALIST, telegram_chat=None).won


def test_news_while_a_proposal_awaits_approval_keeps_its_promise_and_none_is_taken_once_resolved(
        intake: IntakeService, staff: StaffService, store: Store) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROPOSE, SPECIALIST, text="补偿300元", codes=("compensation",), amount=Decimal(300))
    promised = NOW + timedelta(days=2)
    news = staff.act(case.number, Action.PROGRESS, SPECIALIST, text="方案在审批中", next_update=promised)
    assert news.ok and news.case is not None and news.case.status == "awaiting_approval"
    assert news.case.next_update_due == promised
    staff.act(case.number, Action.APPROVE, MANAGER)
    staff.act(case.number, Action.RESOLVE, SPECIALIST, text="已补偿")
    late = staff.act(case.number, Action.PROGRESS, SPECIALIST, text="补充说明", next_update=promised)
    assert late.refusal == "staff/next_update_invalid"
