"""Promises and time: deadlines on the case, working days with China's holidays, warnings and escalations.

The clock is injected everywhere: the tests move it across deadlines and holidays without sleeping.
Storage is real (the `store` fixture: SQLite and PostgreSQL), and so are the intake and staff services,
so a deadline is set, kept or missed exactly as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from concurrently import run_together
from sqlalchemy import Integer, String, column, table

from bot.app import build_server, build_staff_service
from bot.config import Settings
from bot.deadlines import (
    DeadlinePolicy,
    DeadlineScanner,
    HolidayCalendar,
    load_holidays,
    parse_holidays,
    promise_outcome,
)
from bot.lifecycle import Action
from bot.notify import StaffNotifier
from bot.service import InboundMessage, IntakeService
from bot.staff import StaffMember, StaffService
from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from storage.case_numbers import format_case_number
from storage.db import alembic_config, make_engine, upgrade_schema
from storage.repository import CaseEventRecord, CaseRecord, OutboxItem, Store
from storage.sqltypes import UTCDateTime, json_type

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Friday evening before Qingming (4–6 April 2026, Saturday to Monday).
FRIDAY = datetime(2026, 4, 3, 19, 30, tzinfo=SHANGHAI)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
MALL_GROUP, MALL_ROBOT, MALL_ESCALATION, HQ = "-1001000000001", "demo-zhenbei-robot-key", "-1001000000099", "-1009999"
SPECIALIST = StaffMember("telegram:101", "李专员")
MANAGER = StaffMember("telegram:102", "王店长")
DIRECTORY = """
staff:
  - {id: "telegram:101", name: 李专员, role: specialist, malls: [sh-zhenbei]}
  - {id: "telegram:102", name: 王店长, role: store_manager, malls: [sh-zhenbei]}
  - {id: "telegram:104", name: 陈副店长, role: deputy_store_manager, malls: [sh-zhenbei]}
  - {id: "telegram:103", name: 赵店长, role: store_manager, malls: [bj-xisihuan]}
"""
FIELDS: dict[str, Any] = {
    "name": "王丽", "phone": "13812345678", "city": "上海", "mall": "sh-zhenbei", "brand": "顾家家居",
    "description": "沙发扶手开裂了，电话13812345678随时打", "expectation": ["exchange"],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    routed = (Path(__file__).parent / "data" / "routed_catalog.yaml").read_text(encoding="utf-8")
    path = tmp_path / "catalog.yaml"
    path.write_text(routed + DIRECTORY, encoding="utf-8")
    return load_catalog(path)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, escalation_telegram_chat=int(HQ), **overrides)  # type: ignore[call-arg]


@pytest.fixture
def clock() -> Clock:
    return Clock(FRIDAY)


@pytest.fixture
def staff(store: Store, catalog: Catalog, clock: Clock) -> StaffService:
    return build_staff_service(settings(), store, catalog, Renderer(), clock=clock)


@pytest.fixture
def intake(store: Store, catalog: Catalog, staff: StaffService, clock: Clock) -> IntakeService:
    renderer = Renderer()
    return IntakeService(store, catalog, renderer, clock=clock, notifier=StaffNotifier(catalog, renderer, settings()),
                         casework=staff)


def scanner_for(store: Store, catalog: Catalog, clock: Clock, **overrides: Any) -> DeadlineScanner:
    return DeadlineScanner(store, catalog, settings(**overrides), Renderer(), clock=clock)


def open_case(intake: IntakeService, at: datetime = FRIDAY, customer: str = "5550001") -> CaseRecord:
    return intake.submit("telegram", customer, FIELDS, at=at)


def kinds(store: Store, case: CaseRecord) -> list[str]:
    return [event.kind for event in store.get_case_events(case.id)]


def deadline_messages(store: Store, case: CaseRecord) -> list[OutboxItem]:
    items = store.outbox_items(case_id=case.id, limit=1000)
    return sorted((item for item in items if item.kind in ("deadline_warning", "escalation")), key=lambda i: i.id)


def customer_messages(store: Store, case: CaseRecord) -> list[str]:
    """What the scanner pushed to the customer (the case was opened on Telegram, so through the outbox)."""
    items = sorted(store.outbox_items(case_id=case.id, limit=1000), key=lambda i: i.id)
    return [item.payload["text"] for item in items
            if item.kind == "customer_update" and (item.channel, item.target) == (case.channel, case.customer_id)]


def current(store: Store, case: CaseRecord) -> CaseRecord:
    found = store.get_case_by_id(case.id)
    assert found is not None
    return found


# ------------------------------------------------------------------ working days and the holiday file


@pytest.mark.parametrize(("day", "working"), [
    (date(2026, 4, 3), True),  # Friday
    (date(2026, 4, 4), False), (date(2026, 4, 6), False),  # Qingming, Saturday to Monday
    (date(2026, 4, 7), True),
    (date(2026, 2, 14), True), (date(2026, 2, 28), True),  # Saturdays worked for the Spring Festival
    (date(2026, 2, 16), False), (date(2026, 2, 23), False),  # Spring Festival, Monday to Monday
    (date(2026, 9, 19), False), (date(2026, 9, 20), True),  # an ordinary Saturday; a Sunday worked
    (date(2026, 10, 7), False), (date(2026, 10, 10), True),  # National Day; the Saturday after, worked
    (date(2026, 11, 22), False),  # an ordinary Sunday
])
def test_the_builtin_calendar_has_2026_with_its_working_weekends(day: date, working: bool) -> None:
    assert load_holidays().is_working_day(day) is working


@pytest.mark.parametrize(("start", "days", "expected"), [
    # Friday evening before Qingming: 4.5 h on Friday, the long weekend off, then Tuesday to Thursday.
    (FRIDAY, 3, datetime(2026, 4, 9, 19, 30, tzinfo=SHANGHAI)),
    # A Friday before a worked Sunday: Saturday is off, Sunday 20 September counts.
    (datetime(2026, 9, 18, 19, 30, tzinfo=SHANGHAI), 1, datetime(2026, 9, 20, 19, 30, tzinfo=SHANGHAI)),
    # The eve of National Day: the golden week is off, Saturday 10 October is worked.
    (datetime(2026, 9, 30, 19, 30, tzinfo=SHANGHAI), 3, datetime(2026, 10, 10, 19, 30, tzinfo=SHANGHAI)),
    # Opened on a holiday: the clock starts at the next working day's midnight.
    (datetime(2026, 10, 3, 11, 0, tzinfo=SHANGHAI), 1, datetime(2026, 10, 9, 0, 0, tzinfo=SHANGHAI)),
])
def test_working_time_skips_holidays_and_counts_working_weekends(start: datetime, days: int,
                                                                 expected: datetime) -> None:
    assert load_holidays().add_working_time(start, timedelta(days=days)) == expected


def test_a_year_the_file_lacks_counts_weekdays() -> None:
    calendar = load_holidays()
    assert calendar.is_working_day(date(2027, 1, 4)) and not calendar.is_working_day(date(2027, 1, 2))
    friday = datetime(2027, 3, 5, 18, 0, tzinfo=SHANGHAI)
    assert calendar.add_working_time(friday, timedelta(days=1)) == datetime(2027, 3, 8, 18, 0, tzinfo=SHANGHAI)


def test_a_deployer_file_adds_a_year_and_a_local_closure(tmp_path: Path) -> None:
    path = tmp_path / "holidays.yaml"
    path.write_text("years:\n  2027:\n    holidays:\n      元旦: [2027-01-01]\n"
                    "      商场盘点: [2027-03-08, 2027-03-09]\n    workdays: [2027-03-13]\n", encoding="utf-8")
    calendar = load_holidays(path)
    assert not calendar.is_working_day(date(2027, 1, 1)) and not calendar.is_working_day(date(2027, 3, 9))
    assert calendar.is_working_day(date(2027, 3, 13))  # a Saturday
    friday = datetime(2027, 3, 5, 18, 0, tzinfo=SHANGHAI)
    assert calendar.add_working_time(friday, timedelta(days=1)) == datetime(2027, 3, 10, 18, 0, tzinfo=SHANGHAI)


@pytest.mark.parametrize(("text", "problem"), [
    ("years:\n  2026:\n    holidays:\n      春节: [2026-02-23, 2026-02-15]\n", "before the first"),
    ("years:\n  2026:\n    workdays: [2026-05-08]\n", "weekday anyway"),
    ("years:\n  2026:\n    holidays:\n      劳动节: [2026-05-01, 2026-05-05]\n    workdays: [2026-05-02]\n",
     "both a holiday and a workday"),
    ("years:\n  2026:\n    holiday:\n      劳动节: [2026-05-01]\n", "holiday"),
])
def test_a_broken_holiday_file_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_holidays(text, "holidays.yaml")


def test_the_settings_choose_the_clocks() -> None:
    policy = DeadlinePolicy.from_settings(settings(resolution_clock="business", resolution_days=3,
                                                   first_contact_hours=12))
    assert policy.due("first_contact", FRIDAY) == FRIDAY + 12 * HOUR  # runs through the holiday
    assert policy.due("resolution", FRIDAY) == datetime(2026, 4, 9, 19, 30, tzinfo=SHANGHAI)
    assert DeadlinePolicy().due("resolution", FRIDAY) == FRIDAY + timedelta(days=7)


# ------------------------------------------------------------------ deadlines set by intake and staff


def test_a_new_case_carries_its_first_contact_and_resolution_deadlines(intake: IntakeService, store: Store) -> None:
    case = open_case(intake)
    stored = current(store, case)
    assert stored.first_contact_due == FRIDAY + 24 * HOUR  # through the Qingming Saturday: service runs
    assert stored.resolution_due == FRIDAY + timedelta(days=7)
    assert stored.next_update_due is None and stored.first_contacted_at is None
    assert kinds(store, case) == ["opened"]  # setting the deadlines is no timeline noise


def test_holiday_configuration_moves_the_resolution_deadline_when_counting_working_days(
        store: Store, catalog: Catalog, clock: Clock, tmp_path: Path) -> None:
    no_holidays = tmp_path / "holidays.yaml"
    no_holidays.write_text("years:\n  2026: {}\n", encoding="utf-8")
    dues = {}
    for label, extra in (("calendar", {}), ("business", {"resolution_clock": "business"}),
                         ("business, no holidays", {"resolution_clock": "business", "holidays": no_holidays})):
        deployment = settings(resolution_days=3, **extra)
        staff = build_staff_service(deployment, store, catalog, Renderer(), clock=clock)
        intake = IntakeService(store, catalog, Renderer(), clock=clock, casework=staff)
        dues[label] = current(store, open_case(intake, customer=f"c-{len(dues)}")).resolution_due
    assert dues == {
        "calendar": datetime(2026, 4, 6, 19, 30, tzinfo=SHANGHAI),  # the clock runs through Qingming
        "business": datetime(2026, 4, 9, 19, 30, tzinfo=SHANGHAI),  # Saturday to Monday off
        "business, no holidays": datetime(2026, 4, 8, 19, 30, tzinfo=SHANGHAI),  # only the weekend off
    }


def test_a_claim_is_not_contact_but_the_first_message_to_the_customer_is(intake: IntakeService, staff: StaffService,
                                                                       store: Store, clock: Clock) -> None:
    case = open_case(intake)
    clock.now = FRIDAY + HOUR
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    assert current(store, case).first_contact_due == FRIDAY + 24 * HOUR
    staff.act(case.number, Action.NOTE, SPECIALIST, text="顾客下午方便接电话")
    staff.act(case.number, Action.VERIFY, SPECIALIST, text="调取送货单")
    assert current(store, case).first_contacted_at is None
    clock.now = FRIDAY + 3 * HOUR
    assert staff.act(case.number, Action.ASK, SPECIALIST, text="开裂在哪一侧？").ok
    contacted = current(store, case)
    assert contacted.first_contacted_at == clock.now and contacted.first_contact_due is None
    assert contacted.next_update_due == clock.now + 24 * HOUR
    clock.now = FRIDAY + 5 * HOUR
    staff.act(case.number, Action.PROGRESS, SPECIALIST, text="品牌方明天上门")
    again = current(store, case)
    assert again.first_contacted_at == FRIDAY + 3 * HOUR  # the first contact stays the first
    assert again.next_update_due == clock.now + 24 * HOUR


def test_a_proposal_held_for_approval_has_not_reached_the_customer(intake: IntakeService, staff: StaffService,
                                                                   store: Store, clock: Clock) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    held = staff.act(case.number, Action.PROPOSE, SPECIALIST, text="补偿300元", codes=("compensation",),
                     amount=Decimal(300))
    assert held.case is not None and held.case.status == "awaiting_approval"
    assert held.case.first_contact_due is not None and held.case.first_contacted_at is None
    clock.now = FRIDAY + 2 * HOUR
    approved = staff.act(case.number, Action.APPROVE, MANAGER)
    assert approved.case is not None and approved.case.first_contacted_at == clock.now


def test_resolving_clears_the_deadlines_and_reopening_sets_them_again(intake: IntakeService, staff: StaffService,
                                                                      store: Store, clock: Clock) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    clock.now = FRIDAY + 2 * HOUR
    staff.act(case.number, Action.RESOLVE, SPECIALIST, text="扶手已更换")
    resolved = current(store, case)
    assert (resolved.first_contact_due, resolved.next_update_due, resolved.resolution_due) == (None, None, None)
    assert resolved.first_contacted_at == clock.now  # the resolution reached the customer
    clock.now = FRIDAY + timedelta(days=2)
    intake.handle(InboundMessage("telegram", "5550001", "1"))  # the satisfaction question: 1 reopens
    reopened = current(store, case)
    assert reopened.status == "reopened"
    assert reopened.next_update_due == clock.now + 24 * HOUR
    assert reopened.resolution_due == clock.now + timedelta(days=7)


# ------------------------------------------------------------------ the scanner


def test_a_friday_evening_case_before_a_holiday_warns_then_escalates_once(
        intake: IntakeService, staff: StaffService, store: Store, catalog: Catalog, clock: Clock,
        db_url: str) -> None:
    case = open_case(intake)
    clock.now = FRIDAY + 30 * MINUTE
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    scanner = scanner_for(store, catalog, clock)
    due = FRIDAY + 24 * HOUR  # Saturday 4 April 19:30, the first day of Qingming

    assert scanner.scan(due - 3 * HOUR).actions == []
    warned = scanner.scan(due - 110 * MINUTE)
    assert [(a.kind, a.deadline) for a in warned.actions] == [("deadline_warning", "first_contact")]
    [warning] = deadline_messages(store, case)
    assert (warning.kind, warning.channel, warning.target) == ("deadline_warning", "telegram", "101")
    assert warning.payload["text"].startswith(f"⏰ 临期提醒：{case.number} 需在 2026-04-04 19:30 前首次联系顾客，"
                                              "还剩1小时50分钟。")
    assert scanner.scan(due - 100 * MINUTE).actions == []
    assert scanner_for(store, catalog, clock).scan(due - 90 * MINUTE).actions == []  # a restarted scanner

    claim_news = customer_messages(store, case)  # "someone has your case"
    escalated = scanner.scan(due + MINUTE)
    assert [(a.kind, a.deadline, a.level) for a in escalated.actions] == [("escalated", "first_contact", 1)]
    after = current(store, case)
    assert after.escalation_level == 1
    # rescheduled: the next level hears it then; telling the customer was no contact
    assert after.first_contact_due == due + MINUTE + 8 * HOUR and after.first_contacted_at is None
    event = store.get_case_events(case.id)[-1]
    assert (event.kind, event.actor) == ("escalated", "kesu")
    assert event.data == {"deadline": "first_contact", "due": due.astimezone(UTC).isoformat(), "level": 1,
                          "next_due": (due + MINUTE + 8 * HOUR).astimezone(UTC).isoformat(),
                          "notified": ["mall", "manager", "owner"], "managers": ["王店长", "陈副店长"],
                          "customer_told": True}
    messages = deadline_messages(store, case)[1:]
    # the managers the group text names also hear it in their own chats (赵店长 serves another mall)
    assert [(m.channel, m.target) for m in messages] == [("telegram", "101"), ("telegram", MALL_GROUP),
                                                         ("wecom", MALL_ROBOT), ("telegram", "102"),
                                                         ("telegram", "104")]
    owner_text, group_text = messages[0].payload["text"], messages[1].payload["text"]
    assert "已升级至商场管理层" in owner_text and "您是负责人" in owner_text
    assert "@王店长（店长）、@陈副店长（副店长）" in group_text and "赵店长" not in group_text
    assert "138****5678" in group_text and "13812345678" not in group_text  # the customer's words, masked
    assert messages[1].payload["buttons"] == [[{"label": "查看详情", "payload": f"view:{case.number}"}]]
    assert messages[2].payload["buttons"] == [] and not messages[2].payload["markdown"]
    for private in messages[3:]:  # a private chat: no staff buttons (they work in groups only)
        assert private.payload["text"] == group_text and private.payload["buttons"] == []
    [apology] = customer_messages(store, case)[len(claim_news):]
    assert apology == (f"非常抱歉让您久等了。您的投诉 {case.number} 没能按约定的时间与您联系。\n"
                       "我们已将您的投诉转交红星美凯龙上海真北商场管理层督办，他们会尽快与您联系。")
    assert store.messages("telegram", "5550001")[-1].text == apology  # in the conversation too

    # The same minute again, later, and after a restart on a new connection pool: nothing repeats.
    assert scanner.scan(due + 2 * MINUTE).actions == []
    restarted = Store.from_url(db_url, migrate=False)
    try:
        assert scanner_for(restarted, catalog, clock).scan(due + 3 * HOUR).actions == []
    finally:
        restarted.close()

    # Still no contact 8 hours later: the escalation groups, the mall's and the deployment's.
    top = scanner.scan(due + 9 * HOUR)
    assert [(a.kind, a.level) for a in top.actions] == [("escalated", 2)]
    assert current(store, case).escalation_level == 2
    latest = deadline_messages(store, case)[6:]
    assert [(m.channel, m.target) for m in latest] == [("telegram", "101"), ("telegram", MALL_GROUP),
                                                       ("wecom", MALL_ROBOT), ("telegram", MALL_ESCALATION),
                                                       ("telegram", HQ)]
    assert "已升级至上级督办群" in latest[-1].payload["text"]
    assert customer_messages(store, case)[len(claim_news) + 1:] == [
        f"非常抱歉让您久等了。您的投诉 {case.number} 没能按约定的时间与您联系。\n"
        "我们已将您的投诉进一步上报督办，并已要求红星美凯龙上海真北商场管理层尽快与您联系。"]
    # Past the top level the escalation groups are reminded daily; the level stays, the customer was told.
    assert scanner.scan(due + 12 * HOUR).actions == []
    reminded = scanner.scan(due + 34 * HOUR)
    assert [(a.kind, a.level) for a in reminded.actions] == [("still_overdue", 2)]
    assert current(store, case).escalation_level == 2
    assert store.get_case_events(case.id)[-1].data["customer_told"] is False
    assert len(customer_messages(store, case)) == len(claim_news) + 2

    # Contact at last: the promise is kept late, nothing more fires for it.
    clock.now = due + 35 * HOUR
    assert staff.act(case.number, Action.PROGRESS, SPECIALIST, text="已电话联系顾客，明天上门检测").ok
    assert scanner.scan(due + 40 * HOUR).actions == []
    timeline = kinds(store, case)
    assert (timeline.count("deadline_warning"), timeline.count("escalated"), timeline.count("still_overdue")) == (
        1, 2, 1)
    assert promise_outcome(current(store, case), store.get_case_events(case.id), "first_contact",
                           due + 40 * HOUR) == "missed"


def test_an_unclaimed_case_warns_the_mall_group(intake: IntakeService, store: Store, catalog: Catalog,
                                                clock: Clock) -> None:
    case = open_case(intake)
    scanner_for(store, catalog, clock).scan(FRIDAY + 23 * HOUR)
    assert [(m.channel, m.target) for m in deadline_messages(store, case)] == [("telegram", MALL_GROUP),
                                                                              ("wecom", MALL_ROBOT)]
    assert "尚无人认领" in deadline_messages(store, case)[0].payload["text"]


def test_a_kept_promise_is_never_warned_or_escalated(intake: IntakeService, staff: StaffService, store: Store,
                                                     catalog: Catalog, clock: Clock) -> None:
    case = open_case(intake)
    clock.now = FRIDAY + 2 * HOUR
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROGRESS, SPECIALIST, text="已联系顾客")
    scanner = scanner_for(store, catalog, clock)
    assert scanner.scan(FRIDAY + 23 * HOUR).actions == []  # first contact kept; the next update not yet close
    assert scanner.scan(FRIDAY + 23 * HOUR + 50 * MINUTE).actions == []
    [warning] = scanner.scan(FRIDAY + 24 * HOUR + 30 * MINUTE).actions  # the next update, due 26 h after opening
    assert (warning.kind, warning.deadline) == ("deadline_warning", "next_update")
    assert promise_outcome(current(store, case), store.get_case_events(case.id), "first_contact",
                           FRIDAY + 30 * HOUR) == "kept"


def test_two_scanners_at_once_escalate_each_case_once(intake: IntakeService, store: Store, catalog: Catalog,
                                                      clock: Clock, db_url: str) -> None:
    cases = [open_case(intake, customer=f"555{index:04d}") for index in range(12)]
    other = Store.from_url(db_url, migrate=False)  # a second `kesu serve` process on the same database
    try:
        scanners = [scanner_for(store, catalog, clock), scanner_for(other, catalog, clock)]
        for moment in (FRIDAY + 23 * HOUR, FRIDAY + 25 * HOUR):  # warnings, then escalations
            results = run_together(2, lambda index, at=moment: scanners[index].scan(at))
            done = [action for result in results for action in result.actions]
            assert sorted(action.number for action in done) == sorted(case.number for case in cases)
    finally:
        other.close()
    for case in cases:
        assert kinds(store, case).count("deadline_warning") == 1
        assert kinds(store, case).count("escalated") == 1
        assert current(store, case).escalation_level == 1
        # one warning to the mall's two groups, one escalation to them and the two managers: none doubled
        assert len(deadline_messages(store, case)) == 6
        assert len(customer_messages(store, case)) == 1


def test_threads_sharing_one_store_escalate_once(intake: IntakeService, store: Store, catalog: Catalog,
                                                 clock: Clock) -> None:
    case = open_case(intake)
    scanners = [scanner_for(store, catalog, clock) for _ in range(4)]
    results = run_together(4, lambda index: scanners[index].scan(FRIDAY + 25 * HOUR))
    assert sum(result.count("escalated") for result in results) == 1
    assert kinds(store, case).count("escalated") == 1


def test_one_pass_reaches_every_case_however_small_its_batch(intake: IntakeService, store: Store,
                                                             catalog: Catalog, clock: Clock) -> None:
    cases = [open_case(intake, at=FRIDAY + index * MINUTE, customer=f"c-{index}") for index in range(8)]
    scanner = DeadlineScanner(store, catalog, settings(), Renderer(), clock=clock, batch=3)
    warned = scanner.scan(FRIDAY + 23 * HOUR)  # all eight inside the warning lead, none due yet
    assert sorted(a.number for a in warned.actions if a.kind == "deadline_warning") == sorted(c.number for c in cases)
    escalated = scanner.scan(FRIDAY + 25 * HOUR)
    assert sorted(a.number for a in escalated.actions if a.kind == "escalated") == sorted(c.number for c in cases)
    assert scanner.scan(FRIDAY + 25 * HOUR).actions == []


def test_closed_and_rejected_cases_never_escalate(intake: IntakeService, staff: StaffService, store: Store,
                                                  catalog: Catalog, clock: Clock) -> None:
    closed = open_case(intake, customer="5550001")
    rejected = open_case(intake, customer="5550002")
    staff.claim(closed.number, SPECIALIST, telegram_chat=None)
    staff.act(closed.number, Action.RESOLVE, SPECIALIST, text="已更换")
    staff.act(closed.number, Action.CLOSE, SPECIALIST)
    staff.act(rejected.number, Action.REJECT, SPECIALIST, text="经检测属人为损坏")
    # Even with a deadline left behind on the row (older data, a bug elsewhere), nothing fires.
    for case in (closed, rejected):
        stale = current(store, case)
        with store.unit_of_work() as uow:
            uow.update_case(case_id=case.id, expected_status=None, changes={"first_contact_due": FRIDAY,
                                                                          "resolution_due": FRIDAY}, event=None,
                            at=FRIDAY)
        assert current(store, case).status == stale.status
    result = scanner_for(store, catalog, clock).scan(FRIDAY + timedelta(days=30))
    assert result.actions == []
    for case in (closed, rejected):
        assert current(store, case).escalation_level == 0
        assert deadline_messages(store, case) == []


def test_a_deadline_left_on_a_resolved_case_is_cleared_not_escalated(intake: IntakeService, staff: StaffService,
                                                                     store: Store, catalog: Catalog,
                                                                     clock: Clock) -> None:
    case = open_case(intake)
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.RESOLVE, SPECIALIST, text="已更换")  # waiting for the satisfaction answer
    with store.unit_of_work() as uow:
        uow.update_case(case_id=case.id, expected_status=None, changes={"resolution_due": FRIDAY}, event=None,
                        at=FRIDAY)
    result = scanner_for(store, catalog, clock).scan(FRIDAY + timedelta(days=30))
    assert [(a.kind, a.deadline) for a in result.actions] == [("cleared", "resolution")]
    after = current(store, case)
    assert after.resolution_due is None and after.escalation_level == 0
    assert deadline_messages(store, case) == []


def test_two_missed_deadlines_escalate_two_levels(intake: IntakeService, store: Store, catalog: Catalog,
                                                  clock: Clock) -> None:
    """Nobody touched the case for eight days: first contact and resolution both missed, one level each."""
    case = open_case(intake)
    result = scanner_for(store, catalog, clock).scan(FRIDAY + timedelta(days=8))
    assert [(a.kind, a.deadline, a.level) for a in result.actions] == [
        ("escalated", "first_contact", 1), ("escalated", "resolution", 2)]
    assert current(store, case).escalation_level == 2
    # The customer was promised contact, not a resolution date: one apology, for the contact.
    [apology] = customer_messages(store, case)
    assert "没能按约定的时间与您联系" in apology
    assert [e.data["customer_told"] for e in store.get_case_events(case.id) if e.kind == "escalated"] == [True, False]


def test_the_warning_lead_and_escalation_step_are_the_deployers(intake: IntakeService, store: Store,
                                                                catalog: Catalog, clock: Clock) -> None:
    case = open_case(intake)
    scanner = scanner_for(store, catalog, clock, deadline_warning_hours=6, escalation_step_hours=1)
    assert scanner.scan(FRIDAY + 17 * HOUR).actions == []
    assert scanner.scan(FRIDAY + 18 * HOUR).count("deadline_warning") == 1
    assert scanner.scan(FRIDAY + 24 * HOUR).count("escalated") == 1
    assert scanner.scan(FRIDAY + 25 * HOUR).count("escalated") == 1
    assert current(store, case).escalation_level == 2


def test_a_warned_deadline_leaves_the_scan_and_a_moved_one_is_warned_again(
        intake: IntakeService, staff: StaffService, store: Store, catalog: Catalog, clock: Clock) -> None:
    case = open_case(intake)
    clock.now = FRIDAY + HOUR
    staff.claim(case.number, SPECIALIST, telegram_chat=None)
    staff.act(case.number, Action.PROGRESS, SPECIALIST, text="已联系顾客")
    first = clock.now + 24 * HOUR  # the next update
    scanner = scanner_for(store, catalog, clock)
    assert [(a.kind, a.due) for a in scanner.scan(first - HOUR).actions] == [("deadline_warning", first)]
    # Warned: no pass, in this process or another, reads the case again before its due.
    assert store.cases_due(now=first - 50 * MINUTE, warn_until=first + HOUR) == []
    # News at last, with the next promised for tomorrow: that is a new promise, warned in its turn.
    clock.now = first - 30 * MINUTE
    staff.act(case.number, Action.PROGRESS, SPECIALIST, text="品牌方明天上午上门检测")
    second = clock.now + 24 * HOUR
    assert scanner.scan(second - 3 * HOUR).actions == []
    assert [(a.kind, a.deadline, a.due) for a in scanner.scan(second - HOUR).actions] == [
        ("deadline_warning", "next_update", second)]
    assert kinds(store, case).count("deadline_warning") == 2


def test_a_manager_who_owns_the_case_hears_the_escalation_once(intake: IntakeService, staff: StaffService,
                                                               store: Store, catalog: Catalog, clock: Clock) -> None:
    case = open_case(intake)
    staff.claim(case.number, MANAGER, telegram_chat=None)
    scanner = scanner_for(store, catalog, clock)
    scanner.scan(FRIDAY + 25 * HOUR)
    messages = deadline_messages(store, case)
    assert [(m.channel, m.target) for m in messages] == [("telegram", "102"), ("telegram", MALL_GROUP),
                                                         ("wecom", MALL_ROBOT), ("telegram", "104")]
    assert "您是负责人" in messages[0].payload["text"]
    # Level 2 goes to the escalation groups; the managers' private chats heard level 1 only.
    scanner.scan(FRIDAY + 34 * HOUR)
    assert [(m.channel, m.target) for m in deadline_messages(store, case)[4:]] == [
        ("telegram", "102"), ("telegram", MALL_GROUP), ("wecom", MALL_ROBOT), ("telegram", MALL_ESCALATION),
        ("telegram", HQ)]


CASES_0003 = table(
    "cases", column("id", Integer), column("number", String), column("status", String), column("channel", String),
    column("customer_id", String), column("conversation_id", Integer), column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime), column("mall", String), column("priority", String),
    column("expectation", json_type()), column("transcript", json_type()), column("owner", String),
    column("first_contact_due", UTCDateTime), column("next_update_due", UTCDateTime),
    column("resolution_due", UTCDateTime), column("escalation_level", Integer))
EVENTS_0003 = table("case_events", column("case_id", Integer), column("kind", String), column("actor", String),
                    column("data", json_type()), column("created_at", UTCDateTime))


def test_cases_warned_before_the_upgrade_are_not_warned_again(db_url: str, catalog: Catalog, clock: Clock) -> None:
    """Migration 0004 reads the marker off the timeline, as the scanner did before it had one."""
    engine = make_engine(db_url)
    due = FRIDAY + 24 * HOUR
    stamp = due.astimezone(UTC).isoformat()
    history: dict[int, tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]] = {
        1: ({"first_contact_due": due}, [("deadline_warning", {"deadline": "first_contact", "due": stamp})]),
        2: ({"next_update_due": due, "escalation_level": 1},  # an escalation's rescheduling gets no warning
            [("escalated", {"deadline": "next_update", "due": "2026-04-04T03:30:00+00:00", "next_due": stamp})]),
        3: ({"first_contact_due": due}, [("deadline_warning", {"deadline": "first_contact",  # an older due
                                                               "due": "2026-04-03T11:30:00+00:00"})]),
        4: ({"first_contact_due": due, "resolution_due": due},  # warned for one deadline, not the other
            [("deadline_warning", {"deadline": "resolution", "due": stamp})]),
    }
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        with engine.begin() as conn:
            for case_id, (row, events) in history.items():
                conn.execute(CASES_0003.insert(), {
                    "id": case_id, "number": format_case_number(date(2026, 4, 3), case_id), "status": "new",
                    "channel": "telegram", "customer_id": f"c-{case_id}", "conversation_id": case_id,
                    "created_at": FRIDAY, "updated_at": FRIDAY, "mall": "sh-zhenbei", "priority": "normal",
                    "expectation": [], "transcript": [], "owner": None, **row})
                conn.execute(EVENTS_0003.insert(), [{"case_id": case_id, "kind": kind, "actor": "kesu", "data": data,
                                                     "created_at": FRIDAY} for kind, data in events])
        upgrade_schema(engine)
        result = scanner_for(Store(engine), catalog, clock).scan(due - HOUR)
    finally:
        engine.dispose()
    assert sorted((a.number[-4:-1], a.kind, a.deadline) for a in result.actions) == [
        ("003", "deadline_warning", "first_contact"), ("004", "deadline_warning", "first_contact")]


# ------------------------------------------------------------------ kesu serve and kesu deadlines scan


def test_kesu_serve_runs_the_scanner_beside_the_dispatcher(tmp_path: Path) -> None:
    deployment = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'kesu.db'}",  # type: ignore[call-arg]
                          rasa_actions=False)
    off = deployment.model_copy(update={"deadline_scan_seconds": 0})

    async def tasks_while_serving(app_settings: Settings) -> set[str]:
        app = build_server(app_settings, clock=lambda: FRIDAY)
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0)
            return {task.get_name() for task in asyncio.all_tasks()}

    assert {"outbox-dispatcher", "deadline-scanner"} <= asyncio.run(tasks_while_serving(deployment))
    assert "deadline-scanner" not in asyncio.run(tasks_while_serving(off))


def test_the_scanner_loop_scans_at_once_and_survives_a_failing_pass(sqlite_store: Store, catalog: Catalog) -> None:
    scanner = DeadlineScanner(sqlite_store, catalog, settings(deadline_scan_seconds=0.01), Renderer(),
                              clock=Clock(FRIDAY))
    calls: list[datetime | None] = []

    def scan(now: datetime | None = None) -> Any:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("database restarting")
        return type(scanner).scan(scanner, now)

    scanner.scan = scan  # type: ignore[method-assign]

    async def run_briefly() -> None:
        task = asyncio.create_task(scanner.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(calls) >= 2:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_briefly())
    assert len(calls) >= 2


@pytest.fixture
def cli_db(tmp_path: Path, catalog: Catalog) -> Iterator[tuple[str, CaseRecord]]:
    url = f"sqlite:///{tmp_path / 'kesu.db'}"
    store = Store.from_url(url)
    try:
        staff = build_staff_service(settings(), store, catalog, Renderer(), clock=Clock(FRIDAY))
        yield url, IntakeService(store, catalog, Renderer(), clock=Clock(FRIDAY), casework=staff).submit(
            "telegram", "5550001", FIELDS, at=FRIDAY)
    finally:
        store.close()


def test_kesu_deadlines_scan_for_cron(tmp_path: Path, cli_db: tuple[str, CaseRecord]) -> None:
    url, case = cli_db
    script = Path(sys.executable).with_name("kesu")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KESU_")}

    def scan(now: datetime) -> str:
        done = subprocess.run([*command, "deadlines", "scan", "--now", now.isoformat(), "--db", url],
                              capture_output=True, text=True, encoding="utf-8", cwd=tmp_path, env=env, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    later = FRIDAY + 25 * HOUR
    assert scan(later) == (f"2026-04-04 20:30 扫描完毕：提醒 0 件，升级 1 件，再次通报 0 件。\n"
                           f"{case.number} 超时升级：首次联系顾客，截止 2026-04-04 19:30，升至第1级")
    assert scan(later + MINUTE) == "2026-04-04 20:31 扫描完毕：没有临期或超时的案件。"


def test_holiday_calendar_is_a_plain_value() -> None:
    calendar = HolidayCalendar(frozenset({date(2026, 6, 1)}), frozenset(), frozenset({2026}))
    assert not calendar.is_working_day(date(2026, 6, 1)) and calendar.is_working_day(date(2026, 6, 2))
    with pytest.raises(ValueError):
        calendar.add_working_time(FRIDAY, -HOUR)


def test_promise_outcome_reads_the_timeline_not_only_the_columns() -> None:
    opened = FRIDAY.astimezone(UTC)
    case = CaseRecord(id=1, number="KS2604030011", status="claimed", channel="telegram", customer_id="5550001",
                      conversation_id=1, created_at=opened, updated_at=opened,
                      first_contact_due=opened + 24 * HOUR, resolution_due=opened + timedelta(days=7))
    assert promise_outcome(case, [], "first_contact", opened + HOUR) == "pending"
    assert promise_outcome(case, [], "first_contact", opened + 25 * HOUR) == "missed"  # the scanner has not run
    kept = dataclasses.replace(case, first_contact_due=None, first_contacted_at=opened + 3 * HOUR)
    assert promise_outcome(kept, [], "first_contact", opened + 25 * HOUR) == "kept"
    missed = [CaseEventRecord(kind="escalated", actor="kesu", created_at=opened + 25 * HOUR,
                              data={"deadline": "first_contact", "due": (opened + 24 * HOUR).isoformat()})]
    late = dataclasses.replace(kept, first_contacted_at=opened + 30 * HOUR)
    assert promise_outcome(late, missed, "first_contact", opened + 31 * HOUR) == "missed"
    assert promise_outcome(late, missed, "resolution", opened + 31 * HOUR) == "pending"
    rejected = dataclasses.replace(case, status="rejected", resolution_due=None)
    assert promise_outcome(rejected, [], "resolution", opened + 31 * HOUR, done=opened + 30 * HOUR) == "kept"
    assert promise_outcome(dataclasses.replace(case, resolution_due=None), [], "resolution", opened) == "none"
