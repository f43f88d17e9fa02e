"""Every sentence Kesu says goes through templates/: they all render, strictly, safely, overridably."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError

from bot.app import build_renderer
from bot.config import Settings
from bot.deadlines import ScanAction
from bot.report import MonthlyReport, ReportLabels, compute_report
from bot.templating import Renderer, cn_date, cn_time, mask_phone, money
from dialogs.fields import ASK_ORDER, FIELD_KEYS
from handlers.telegram import CUSTOMER_MENU, NATURE_WORDS, PRIORITY_WORDS, STAFF_MENU
from storage.models import NATURES, PRIORITIES
from storage.repository import CaseEventRecord, CaseRecord, OutboxItem

REPO = Path(__file__).resolve().parent.parent
OPENED_UTC = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)  # 14:30 in Shanghai
ZHENBEI = "红星美凯龙上海真北商场"
INJECTIONS = ("{{ 7*7 }}", "{% for %}", "{#", "{{ config }}", "{% raw %}")

CASE_FIELDS: dict[str, Any] = {
    "name": "王丽",
    "phone": "13812345678",
    "city": "上海",
    "mall": "sh-zhenbei",
    "amount": Decimal("12800.00"),
    "purchase_date": date(2025, 12, 8),
    "brand": "顾家家居",
    "delivery_date": date(2026, 11, 20),
    "delivery_address": "上海市普陀区真北路1号3栋502",
    "order_no": None,
    "over_warranty": False,
    "priority": "important",
    "description": "沙发扶手开裂了，坐垫也塌了",
    "expectation": ["exchange", "compensation"],
}
CASE = CaseRecord(
    id=1,
    number="KS2611220019",
    status="new",
    channel="wechat",
    customer_id="o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
    conversation_id=1,
    created_at=OPENED_UTC,
    updated_at=OPENED_UTC,
    fields=CASE_FIELDS,
    transcript=[
        {"role": "customer", "text": "沙发扶手开裂了", "at": "2026-11-22T14:28:00+08:00"},
        {"role": "kesu", "text": "请问您怎么称呼？", "at": "2026-11-22T14:28:00+08:00"},
        {"role": "customer", "text": "确认", "at": "2026-11-22T14:30:00+08:00"},
    ],
)
EVENTS = [
    CaseEventRecord(kind="opened", actor="customer", data={"channel": "wechat"}, created_at=OPENED_UTC),
    CaseEventRecord(kind="graded", actor="kesu", data={"priority": "important", "rules": ["repeat"]},
                    created_at=OPENED_UTC),
    CaseEventRecord(kind="classify", actor="telegram:42", created_at=OPENED_UTC,
                    data={"by": "李经理", "nature": "delivery", "priority": "major", "from_priority": "important"}),
    CaseEventRecord(kind="classify", actor="telegram:42", data={"by": "李经理", "nature": "quality"},
                    created_at=OPENED_UTC),
]
SUMMARY_ITEMS = [
    {"field": key, "value": ZHENBEI if key == "mall" else CASE_FIELDS[key], "unknown": key == "order_no"}
    for key in FIELD_KEYS
]
DELIVERIES = [
    OutboxItem(id=1, kind="staff_notification", channel="wecom", target="3f2a9c1d-robot-key-7788", payload={},
               case_id=1, state="sent", attempts=1, next_attempt_at=datetime(2026, 11, 22, 6, 30, tzinfo=UTC),
               last_error=None, external_id=None, created_at=datetime(2026, 11, 22, 6, 30, tzinfo=UTC),
               sent_at=datetime(2026, 11, 22, 6, 30, 2, tzinfo=UTC)),
    OutboxItem(id=2, kind="customer_reply", channel="wechat", target="oUser123456789abcdef", payload={},
               case_id=1, state="failed", attempts=1, next_attempt_at=datetime(2026, 11, 22, 6, 30, tzinfo=UTC),
               last_error="45015 response out of time limit, no template configured", external_id=None,
               created_at=datetime(2026, 11, 22, 6, 30, tzinfo=UTC), sent_at=None),
]
CLAIMED = dataclasses.replace(CASE, status="claimed", owner="telegram:42", owner_name="李经理")
DUE_CASE = dataclasses.replace(CASE, first_contact_due=OPENED_UTC + timedelta(hours=24), nature="quality")
ASK_CONTEXTS = [{"again": False, "attempt": 1}, {"again": True, "attempt": 2}]


def _month(cases: list[CaseRecord]) -> MonthlyReport:
    """`kesu report --month 2026-11` as of 5 December: a new case, one closed satisfied, one missed and escalated."""
    return compute_report(cases, year=2026, month=11, now=datetime(2026, 12, 5, 2, tzinfo=UTC),
                          labels=ReportLabels.from_renderer(Renderer()), mall_names={"sh-zhenbei": ZHENBEI})


DAY = timedelta(days=1)
REPORT_CASES = [
    CASE,
    dataclasses.replace(CLAIMED, id=2, status="closed", nature="quality", first_contact_due=OPENED_UTC + DAY,
                        first_contacted_at=OPENED_UTC + DAY / 4, resolution_due=OPENED_UTC + 7 * DAY,
                        resolved_at=OPENED_UTC + 3 * DAY, closed_at=OPENED_UTC + 4 * DAY, satisfaction=5),
    dataclasses.replace(CLAIMED, id=3, fields={**CASE_FIELDS, "mall": None, "brand": None, "priority": "major"},
                        nature="delivery", first_contact_due=OPENED_UTC + DAY, resolution_due=OPENED_UTC + 2 * DAY,
                        escalation_level=2),
]

# One or more realistic contexts per template name, as the engine / CLI would pass them.
CONTEXTS: dict[str, list[dict[str, Any]]] = {
    **{f"ask/{spec.key}": ASK_CONTEXTS for spec in ASK_ORDER},
    "about_bot": [{}],
    "calm_down": [{}],
    "cancel_aborted": [{}],
    "cancel_confirm": [{}],
    "cancelled": [{}],
    "case_detail": [
        {"case": CASE, "field_keys": FIELD_KEYS, "mall_name": "红星美凯龙上海真北商场", "events": EVENTS,
         "deliveries": DELIVERIES},
        {"case": CASE, "field_keys": FIELD_KEYS, "mall_name": None, "events": [], "deliveries": []},
        # what became of messages to the customer (bot/dispatch.py CaseDeliveryReports)
        {"case": CLAIMED, "field_keys": FIELD_KEYS, "mall_name": ZHENBEI, "deliveries": DELIVERIES, "events": [
            CaseEventRecord(kind=kind, actor="kesu", created_at=OPENED_UTC, data={
                "item": 2, "message_kind": "customer_update", "channel": "wechat", **data})
            for kind, data in (("customer_reached", {"path": "template", "external_id": "tpl:200228333"}),
                               ("customer_unreachable", {"reason": "errcode 43004: require subscribe"}),
                               ("delivery_uncertain", {"reason": "interrupted"}))]},
    ],
    "outbox_list": [
        {"items": DELIVERIES, "counts": {"pending": 0, "sending": 0, "attempting": 0, "sent": 1, "failed": 1,
                                         "uncertain": 0}},
        {"items": [], "counts": {"pending": 0, "sending": 0, "attempting": 0, "sent": 0, "failed": 0, "uncertain": 0}},
        {"items": [dataclasses.replace(DELIVERIES[1], kind="customer_update", state="uncertain",
                                       last_error="interrupted while being handed to the platform")],
         "counts": {"pending": 1, "sending": 1, "attempting": 1, "sent": 9, "failed": 0, "uncertain": 1}},
    ],
    "evidence_received": [{"count": 1}, {"count": 3}],
    "report/monthly": [{"report": _month(REPORT_CASES)}, {"report": _month([])}],
    "report/written": [{"kind": "csv", "path": "/srv/kesu/reports/2026-11.csv"},
                       {"kind": "xlsx", "path": "报表/客诉月报-2026-11.xlsx"}],
    "staff/new_case": [
        {"case": CASE, "fields": CASE.fields, "mall_name": "红星美凯龙上海真北商场", "unrouted": False,
         "raised_by": None},
        {"case": DUE_CASE, "fields": {**CASE.fields, "priority": "major"}, "mall_name": None, "unrouted": True,
         "raised_by": None},
        {"case": CLAIMED, "fields": {**CASE.fields, "priority": "major"}, "mall_name": ZHENBEI, "unrouted": False,
         "raised_by": "李经理"},
    ],
    "staff/new_case_wecom": [
        {"case": CASE, "fields": CASE.fields, "mall_name": "红星美凯龙上海真北商场", "unrouted": False,
         "raised_by": None},
        {"case": DUE_CASE, "fields": {**CASE.fields, "priority": "important"}, "mall_name": None, "unrouted": True,
         "raised_by": None},
        {"case": CLAIMED, "fields": {**CASE.fields, "priority": "major"}, "mall_name": ZHENBEI, "unrouted": False,
         "raised_by": "李经理"},
    ],
    "staff/case_brief": [
        {"case": CASE, "mall_name": "红星美凯龙上海真北商场"},
        {"case": CASE, "mall_name": None},
        # what /case shows in a Telegram group: the solution waiting for approval, the latest timeline
        {"case": dataclasses.replace(CLAIMED, status="awaiting_approval", solution={
            "codes": ["compensation"], "amount": "300.00", "text": "赔偿300元，三个工作日内到账",
            "proposed_by": "李经理", "approved_by": None}), "mall_name": ZHENBEI, "approver_role": "store_manager",
         "events": [*EVENTS, CaseEventRecord(kind="ask", actor="telegram:42", created_at=OPENED_UTC,
                                             data={"by": "李经理", "text": "小票还在吗？"})]},
    ],
    "staff/help": [{}],
    "staff/command_usage": [{"command": command} for command in (
        "case", "classify", "verify", "note", "ask", "progress", "propose", "approve", "agree", "resolve", "reject",
        "reassign", "close", "reopen", "help")],
    # Telegram's "/" menu: every staff command in groups, /start in private chats.
    "telegram_menu": [{"command": command} for command in (*STAFF_MENU, *CUSTOMER_MENU)],
    "staff/claimed": [{"case": CLAIMED, "won": True}, {"case": CLAIMED, "won": False}],
    "staff/delivery_report": [
        {"case": CLAIMED, "event": event, "message_kind": "customer_update", "reason": reason,
         "excerpt": "您的投诉 KS2611220019 已由商场客服专员接手。"}
        for event, reason in (("customer_reached", ""), ("customer_unreachable", "errcode 43004: require subscribe"),
                              ("delivery_uncertain", "interrupted while being handed to the platform"))
    ] + [{"case": CLAIMED, "event": "delivery_uncertain", "message_kind": "customer_reply", "reason": "",
          "excerpt": ""}],
    "answer_relayed": [{"number": "KS2611220019"}],
    "solution_agreed": [{"number": "KS2611220019"}],
    "solution_declined": [{"number": "KS2611220019"}],
    "solution_revised": [{"number": "KS2611220019"}],
    "satisfaction_thanks": [{"number": "KS2611220019", "score": 5}],
    "satisfaction_reopened": [{"number": "KS2611220019", "score": 1}],
    "satisfaction_ask_again": [{"number": "KS2611220019"}],
    "case/claimed": [{"case": CLAIMED}],
    "case/question": [{"case": CLAIMED, "question": "扶手开裂在左边还是右边？方便拍张照片吗？"}],
    "case/progress": [{"case": CLAIMED, "progress": "已联系品牌方，明天上午十点上门检测。"},
                      {"case": dataclasses.replace(CLAIMED, next_update_due=OPENED_UTC + timedelta(days=2)),
                       "progress": "品牌方周三上门检测。"}],
    "case/solution": [
        {"case": CLAIMED, "solution": {"codes": ["exchange", "compensation"], "amount": "300",
                                       "text": "更换扶手并补偿300元", "proposed_by": "李经理",
                                       "approved_by": "王店长"}},
        {"case": CLAIMED, "solution": {"codes": ["repair"], "amount": None, "text": "",
                                       "proposed_by": "李经理", "approved_by": None}},
    ],
    "case/rejected": [{"case": CLAIMED, "reason": "经检测属于人为损坏，不在保修范围内。"}],
    "case/resolved": [{"case": CLAIMED, "summary": "扶手已更换"}, {"case": CLAIMED, "summary": ""}],
    "staff/customer_replied": [
        {"case": CLAIMED, "event": event, "text": "左边扶手，照片稍后发", "score": score}
        for event, score in (("customer_answer", None), ("customer_agreed", None), ("customer_declined", None),
                             ("satisfied", 5), ("dissatisfied", 2))
    ],
    "staff/action_done": [{"case": CLAIMED, "action": action} for action in
                          ("verify", "note", "ask", "progress", "propose", "approve", "agree", "resolve", "reject",
                           "reassign", "classify", "close", "reopen")],
    "staff/approval_limit": [{"approver_role": "store_manager"}],
    "staff/unknown_code": [{"codes": ["cash"]}],
    "staff/amount_required": [{}],
    "staff/reassigned": [{"case": CLAIMED, "by": "王店长"}],
    "staff/case_not_found": [{}],
    "staff/conflict": [{}],
    "staff/not_now": [{"action": "approve", "state": "claimed"}],
    "staff/text_required": [{"action": "ask"}],
    "staff/next_update_invalid": [{"action": "progress"}],
    "staff/customer_evidence": [{"case": CLAIMED, "count": 1, "kinds": ["photo"], "caption": ""},
                                {"case": CLAIMED, "count": 3, "kinds": ["document", "photo"],
                                 "caption": "柜门这里也开裂了"}],
    "staff/customer_left": [{"case": CLAIMED}],
    "evidence_added": [{"count": 1, "number": "KS2611220019"}, {"count": 2, "number": "KS2611220019"}],
    "staff/classify_what": [{"natures": NATURES, "priorities": PRIORITIES}],
    "staff/classify_words": [{"unknown": ["紧急"], "natures": NATURE_WORDS, "priorities": PRIORITY_WORDS},
                             {"unknown": [], "natures": NATURE_WORDS, "priorities": PRIORITY_WORDS}],
    "staff/unknown_member": [{"to": "telegram:999"}, {"to": None}],
    "staff/not_allowed": [{}],
    "staff/case_usage": [{}],
    # bot/deadlines.py: the owner warned before a deadline; a missed one escalated; `kesu deadlines scan`.
    "deadline/warning": [
        {"case": CLAIMED, "deadline": "first_contact", "due": OPENED_UTC + timedelta(hours=24), "minutes_left": 110,
         "mall_name": ZHENBEI, "level": 0},
        {"case": CASE, "deadline": "first_contact", "due": OPENED_UTC + timedelta(hours=24), "minutes_left": 0,
         "mall_name": None, "level": 0},
        {"case": CLAIMED, "deadline": "next_update", "due": OPENED_UTC + timedelta(hours=48), "minutes_left": 120,
         "mall_name": ZHENBEI, "level": 1},
        {"case": CLAIMED, "deadline": "resolution", "due": OPENED_UTC + timedelta(days=7), "minutes_left": 45,
         "mall_name": ZHENBEI, "level": 2},
    ],
    "deadline/escalated": [
        {"case": CLAIMED, "deadline": "first_contact", "due": OPENED_UTC + timedelta(hours=24), "level": 1,
         "repeat": False, "next_due": OPENED_UTC + timedelta(hours=32), "audience": audience, "mall_name": ZHENBEI,
         "managers": [{"name": "王店长", "role": "store_manager"},
                      {"name": "陈副店长", "role": "deputy_store_manager"}]}
        for audience in ("owner", "mall", "manager")
    ] + [
        {"case": CASE, "deadline": "first_contact", "due": OPENED_UTC + timedelta(hours=24), "level": 1,
         "repeat": False, "next_due": OPENED_UTC + timedelta(hours=32), "audience": "mall", "mall_name": None,
         "managers": []},
        {"case": CLAIMED, "deadline": "resolution", "due": OPENED_UTC + timedelta(days=7), "level": 2,
         "repeat": False, "next_due": None, "audience": "escalation", "mall_name": ZHENBEI, "managers": []},
        {"case": CLAIMED, "deadline": "next_update", "due": OPENED_UTC + timedelta(days=3), "level": 2,
         "repeat": True, "next_due": None, "audience": "escalation", "mall_name": ZHENBEI, "managers": []},
    ],
    # The customer, when a promise they were given (contact, news) is missed and the case escalates.
    "deadline/customer_escalated": [
        {"case": CLAIMED, "deadline": "first_contact", "level": 1, "mall_name": ZHENBEI},
        {"case": CASE, "deadline": "next_update", "level": 2, "mall_name": None},
    ],
    "deadline/scan_done": [
        {"now": OPENED_UTC, "actions": [], "conflicts": 0},
        {"now": OPENED_UTC + timedelta(hours=25), "conflicts": 1, "actions": [
            ScanAction("KS2611220019", "escalated", "first_contact", 1, OPENED_UTC + timedelta(hours=24)),
            ScanAction("KS2611220027", "deadline_warning", "next_update", 0, OPENED_UTC + timedelta(hours=26)),
            ScanAction("KS2611210012", "still_overdue", "resolution", 2, OPENED_UTC - timedelta(days=1)),
            ScanAction("KS2611200015", "cleared", "next_update", 0, OPENED_UTC)]},
    ],
    "web/chat.html": [{}],
    "wechat/options": [{"options": ["是", "不是", "不清楚"]}, {"options": ["没有"]}],
    "wechat/template_remark": [{}],
    "wechat/unsupported": [{"kind": kind} for kind in ("voice", "location", "link", "other")],
    # `kesu cases show` renders this one for a number that does not exist.
    "case_not_found": [{"number": "KS2611220027"}],
    "case_opened": [
        {"case_number": "KS2611220019", "priority": "normal", "name": "王丽"},
        {"case_number": "KS2611220027", "priority": "major", "name": None},
    ],
    "case_status": [
        {"requested": None, "requested_found": False, "cases": []},
        {"requested": "KS2611220027", "requested_found": False, "cases": []},
        {"requested": None, "requested_found": False, "cases": [
            {"number": "KS2611220019", "status": "new", "created_at": OPENED_UTC, "mall_name": ZHENBEI},
            {"number": "KS2611210012", "status": "new", "created_at": OPENED_UTC, "mall_name": "sh-unknown"},
        ]},
        {"requested": "KS2611220019", "requested_found": True, "cases": [
            {"number": "KS2611220019", "status": "new", "created_at": OPENED_UTC, "mall_name": ZHENBEI},
        ]},
    ],
    "cases_list": [
        {"cases": []},
        {"cases": [
            {"number": CASE.number, "created_at": OPENED_UTC, "fields": CASE_FIELDS, "mall_name": ZHENBEI},
            {"number": "KS2611220027", "created_at": OPENED_UTC,
             "fields": {**CASE_FIELDS, "brand": None, "name": None, "priority": "major"}, "mall_name": None},
        ]},
    ],
    "choose": [
        {"field": "mall", "options": ["红星美凯龙南京江北商场", "红星美凯龙重庆江北商场"]},
        {"field": "brand", "options": ["美的", "曲美家居"]},
    ],
    "console_banner": [{}],
    "console_prompt": [{}],
    "corrected": [
        {"changes": [{"field": "amount", "old": 12800, "new": 4200}]},
        {"changes": [{"field": "phone", "old": "13812345678", "new": "13912345678"},
                     {"field": "purchase_date", "old": "2025-12-08", "new": "2025-12-09"}]},
    ],
    "empathy": [{"priority": "normal"}, {"priority": "important"}, {"priority": "major"}],
    "greeting": [{"has_content": True}, {"has_content": False}],
    "invalid": [
        {"field": "phone", "reason": "landline"},
        {"field": "phone", "reason": "length"},
        {"field": "purchase_date", "reason": "impossible"},
        {"field": "delivery_date", "reason": "future"},
        {"field": "amount", "reason": "vague"},
        {"field": "purchase_date", "reason": "vague"},
        {"field": "mall", "reason": "other"},
    ],
    "long_message": [{"limit": 2000}],
    "not_understood": [{}],
    "not_understood_field": [{"field": key} for key in FIELD_KEYS if key != "priority"],
    "noted": [
        {"items": [{"field": "name", "value": "王丽"}, {"field": "phone", "value": "13812345678"},
                   {"field": "mall", "value": "红星美凯龙上海真北商场"}, {"field": "amount", "value": 12800},
                   {"field": "purchase_date", "value": "2025-12-08"}, {"field": "expectation", "value": ["exchange"]},
                   {"field": "over_warranty", "value": True}]},
    ],
    "required_unknown": [{"field": key} for key in ("name", "phone", "mall", "brand", "description", "expectation")],
    "restarted": [{}],
    "staff_only": [{}],
    "summary": [{"items": SUMMARY_ITEMS}],
    "thanks": [{}],
    "unknown_ok": [{"field": key} for key in ("amount", "purchase_date", "delivery_date", "delivery_address",
                                              "order_no", "over_warranty")],
    "welcome_back": [{}],
    "what_to_change": [{}],
    "why_needed": [{"field": key, "required": required}
                   for key, required in (("name", True), ("phone", True), ("mall", True), ("brand", True),
                                         ("description", True), ("expectation", True), ("order_no", False),
                                         ("amount", False))],
}

@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


# --------------------------------------------------------------------------- every template renders


def test_every_builtin_template_has_a_realistic_context(renderer: Renderer) -> None:
    """A new template without a context here fails, so no template ships untested."""
    missing = set(renderer.template_names()) - set(CONTEXTS)
    assert not missing, f"add a realistic context to CONTEXTS for: {sorted(missing)}"


def test_every_context_belongs_to_an_existing_template(renderer: Renderer) -> None:
    assert set(CONTEXTS) == set(renderer.template_names())


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_template_renders_with_realistic_context(renderer: Renderer, name: str) -> None:
    for context in CONTEXTS[name]:
        text = renderer.render(name, context)
        if name != "console_prompt":
            assert text.strip(), f"{name} rendered nothing for {context}"
        assert "None" not in text, f"{name} showed a raw None: {text!r}"
        assert not re.search(r"\{\{|\{%|\{#", text), f"{name} leaked template syntax: {text!r}"
        assert text == text.strip()


def _referenced_templates() -> list[str]:
    """Template names the code asks for: render("x"), say("x") and the ask/<field> questions."""
    names: set[str] = {f"ask/{spec.key}" for spec in ASK_ORDER}
    call = re.compile(r"""(?:\brender|\bsay)\(\s*["']([\w/]+)["']""")
    for package in ("bot", "dialogs", "handlers"):
        for source in (REPO / package).rglob("*.py"):
            names.update(call.findall(source.read_text(encoding="utf-8")))
    return sorted(names)


@pytest.mark.parametrize("name", _referenced_templates())
def test_every_template_the_code_uses_exists(renderer: Renderer, name: str) -> None:
    assert name in renderer.template_names()


def test_ask_templates_word_the_repeat_question_differently(renderer: Renderer) -> None:
    for spec in ASK_ORDER:
        first = renderer.render(f"ask/{spec.key}", {"again": False, "attempt": 1})
        again = renderer.render(f"ask/{spec.key}", {"again": True, "attempt": 2})
        assert first and again and first != again, spec.key


def test_summary_lists_every_field_with_readable_values(renderer: Renderer) -> None:
    text = renderer.render("summary", {"items": SUMMARY_ITEMS})
    for expected in ("王丽", "13812345678", "红星美凯龙上海真北商场", "12,800元", "2025年12月8日", "2026年11月20日",
                     "顾家家居", "上海市普陀区真北路1号3栋502", "换货", "赔偿", "重要", "确认"):
        assert expected in text
    assert text.count("· ") == len(FIELD_KEYS)
    assert "订单号：不清楚" in text


def test_case_opened_quotes_number_and_the_24_hour_promise(renderer: Renderer) -> None:
    text = renderer.render("case_opened", {"case_number": "KS2611220019", "priority": "normal", "name": "王丽"})
    assert "KS2611220019" in text
    assert "24小时内与您联系" in text
    major = renderer.render("case_opened", {"case_number": "KS2611220019", "priority": "major", "name": None})
    assert "重大" in major and "重大" not in text


def test_case_status_distinguishes_not_found_from_no_cases(renderer: Renderer) -> None:
    not_found = renderer.render("case_status", {"requested": "KS2611220027", "requested_found": False, "cases": []})
    none_yet = renderer.render("case_status", {"requested": None, "requested_found": False, "cases": []})
    assert "KS2611220027" in not_found and "没有查到" in not_found
    assert "还没有提交过投诉" in none_yet


def test_cases_list_masks_phones(renderer: Renderer) -> None:
    text = renderer.render("cases_list", CONTEXTS["cases_list"][1])
    assert "138****5678" in text
    assert "13812345678" not in text
    assert "KS2611220019" in text and "红星美凯龙上海真北商场" in text


# --------------------------------------------------------------------------- StrictUndefined


@pytest.mark.parametrize(("name", "context"), [
    ("noted", {}),
    ("case_opened", {"priority": "normal", "name": "王丽"}),  # no case_number
    ("greeting", {}),
    ("ask/phone", {}),
    ("invalid", {"field": "phone"}),  # no reason
    ("noted", {"items": [{"field": "name"}]}),  # an item without its value
    ("case_status", {"requested": None, "requested_found": False}),  # no cases
])
def test_missing_variable_raises_instead_of_rendering_a_blank(renderer: Renderer, name: str,
                                                              context: dict[str, Any]) -> None:
    with pytest.raises(UndefinedError):
        renderer.render(name, context)


# --------------------------------------------------------------------------- customer text is data


@pytest.mark.parametrize("injected", INJECTIONS)
def test_customer_text_in_noted_is_shown_literally(renderer: Renderer, injected: str) -> None:
    description = f"沙发{injected}坏了"
    text = renderer.render("noted", {"items": [{"field": "description", "value": description},
                                               {"field": "name", "value": injected}]})
    assert description in text
    assert "49" not in text


@pytest.mark.parametrize("injected", INJECTIONS)
def test_customer_text_in_corrected_is_shown_literally(renderer: Renderer, injected: str) -> None:
    text = renderer.render("corrected", {"changes": [
        {"field": "delivery_address", "old": f"真北路{injected}1号", "new": f"{injected}"},
        {"field": "order_no", "old": "A123", "new": f"A{injected}"},
    ]})
    assert f"真北路{injected}1号" in text
    assert f"A{injected}" in text
    assert "49" not in text


@pytest.mark.parametrize("injected", INJECTIONS)
def test_customer_text_in_summary_and_case_views_is_shown_literally(renderer: Renderer, injected: str) -> None:
    fields = {**CASE_FIELDS, "description": f"{injected} 扶手开裂", "name": injected, "delivery_address": injected}
    items = [{"field": k, "value": fields[k], "unknown": False} for k in FIELD_KEYS]
    summary = renderer.render("summary", {"items": items})
    assert f"{injected} 扶手开裂" in summary
    assert "49" not in summary
    case = CaseRecord(**{**CASE.__dict__, "fields": fields,
                         "transcript": [{"role": "customer", "text": injected, "at": "2026-11-22T14:30:00+08:00"}]})
    detail = renderer.render("case_detail", {"case": case, "field_keys": FIELD_KEYS, "mall_name": None,
                                             "events": EVENTS, "deliveries": []})
    assert f"{injected} 扶手开裂" in detail
    assert detail.count(injected) >= 3  # description, name, address, transcript
    assert "49" not in detail


# --------------------------------------------------------------------------- deployer overrides


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_override_directory_replaces_only_that_template(tmp_path: Path, renderer: Renderer) -> None:
    _write(tmp_path / "zh-CN" / "thanks.j2", "不客气！有任何问题随时找我们（本店话术）。\n")
    custom = Renderer([tmp_path])
    assert custom.render("thanks", {}) == "不客气！有任何问题随时找我们（本店话术）。"
    assert renderer.render("thanks", {}) != custom.render("thanks", {})
    for name in ("cancelled", "welcome_back", "ask/phone"):
        context = CONTEXTS[name][0]
        assert custom.render(name, context) == renderer.render(name, context)
    assert custom.template_names() == renderer.template_names()


def test_override_can_use_the_builtin_macros(tmp_path: Path) -> None:
    _write(tmp_path / "zh-CN" / "noted.j2",
           '{% from "_macros.j2" import label, show %}记下了：{% for item in items %}'
           "{{ label(item.field) }}={{ show(item.field, item.value) }}{% endfor %}")
    text = Renderer([tmp_path]).render("noted", {"items": [{"field": "amount", "value": 3500}]})
    assert text == "记下了：购买金额=3,500元"


def test_override_in_a_subfolder_replaces_one_question(tmp_path: Path, renderer: Renderer) -> None:
    _write(tmp_path / "zh-CN" / "ask" / "phone.j2", "{% if again %}手机号？{% else %}请留下手机号。{% endif %}")
    custom = Renderer([tmp_path])
    assert custom.render("ask/phone", {"again": False, "attempt": 1}) == "请留下手机号。"
    assert custom.render("ask/name", {"again": False, "attempt": 1}) == renderer.render(
        "ask/name", {"again": False, "attempt": 1})


def test_settings_templates_dir_is_honoured(tmp_path: Path) -> None:
    _write(tmp_path / "zh-CN" / "thanks.j2", "感谢您的耐心。")
    settings = Settings(_env_file=None, templates_dir=tmp_path)  # type: ignore[call-arg]
    assert build_renderer(settings).render("thanks", {}) == "感谢您的耐心。"
    assert build_renderer(Settings(_env_file=None)).render("thanks", {}) != "感谢您的耐心。"  # type: ignore[call-arg]


def test_a_new_override_only_template_is_listed(tmp_path: Path, renderer: Renderer) -> None:
    _write(tmp_path / "zh-CN" / "holiday_notice.j2", "春节期间正常受理投诉。")
    _write(tmp_path / "zh-CN" / "_partials.j2", "{% macro x() %}x{% endmacro %}")
    names = Renderer([tmp_path]).template_names()
    assert "holiday_notice" in names
    assert "_partials" not in names and "_macros" not in names
    assert set(names) - {"holiday_notice"} == set(renderer.template_names())


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(("value", "expected"), [
    ("13812345678", "138****5678"),
    ("13912340000", "139****0000"),
    ("1234567", "123****4567"),
    ("12345", "****"),
    ("", ""),
    (None, ""),
])
def test_mask_phone(value: str | None, expected: str) -> None:
    assert mask_phone(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (12800, "12,800"),
    (Decimal("12800.00"), "12,800"),
    (3500.5, "3,500.50"),
    (Decimal("99.9"), "99.90"),
    (0, "0"),
    (1234567, "1,234,567"),
    (None, ""),
])
def test_money(value: Any, expected: str) -> None:
    assert money(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (date(2025, 12, 8), "2025年12月8日"),
    ("2025-12-08", "2025年12月8日"),
    ("2026-01-01T10:00:00+08:00", "2026年1月1日"),
    (datetime(2026, 11, 22, 6, 30, tzinfo=UTC), "2026年11月22日"),
    (None, ""),
])
def test_cn_date(value: Any, expected: str) -> None:
    assert cn_date(value) == expected


def test_cn_date_of_an_aware_datetime_is_the_shanghai_day() -> None:
    # 16:30 UTC on the 22nd is 00:30 on the 23rd in Shanghai — the day in the case number KS261123….
    assert cn_date(datetime(2026, 11, 22, 16, 30, tzinfo=UTC)) == "2026年11月23日"


def test_cn_time_is_shanghai_time() -> None:
    assert cn_time(datetime(2026, 11, 22, 6, 30, tzinfo=UTC)) == "2026-11-22 14:30"
    assert cn_time(datetime(2026, 11, 22, 16, 30, tzinfo=UTC)) == "2026-11-23 00:30"


def test_filters_work_inside_templates(renderer: Renderer) -> None:
    template = renderer.env.from_string("{{ p | mask_phone }} {{ a | money }}元 {{ d | cn_date }}")
    text = template.render(p="13812345678", a=Decimal("3500"), d=date(2026, 11, 11))
    assert text == "138****5678 3,500元 2026年11月11日"
