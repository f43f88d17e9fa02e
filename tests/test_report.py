"""`kesu report --month`: the monthly figures, exactly, on both backends; the table, the CSV, the XLSX, the CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import unicodedata
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from test_cli import _command

from bot.deadlines import ESCALATED, STILL_OVERDUE, TOP_LEVEL
from bot.report import (
    COLUMNS,
    OUTCOMES,
    GroupRow,
    MonthlyReport,
    ReportLabels,
    Sla,
    build_report,
    compute_report,
    parse_month,
    percent,
    report_rows,
    write_csv,
    write_xlsx,
)
from bot.templating import Renderer
from storage.repository import CaseDraft, CaseEventRecord, CaseRecord, Store

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 5, 10, 0, tzinfo=SH)  # the report is made on 5 December
ZHENBEI, WUZHONG, XISIHUAN = "红星美凯龙上海真北商场", "红星美凯龙上海吴中路商场", "红星美凯龙北京西四环商场"
MALL_NAMES = {"sh-zhenbei": ZHENBEI, "sh-wuzhonglu": WUZHONG, "bj-xisihuan": XISIHUAN}
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
STEP, REPEAT = 8 * HOUR, DAY  # the scanner's default escalation_step and escalation_repeat
TIMEOUT = 60


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture(scope="module")
def labels(renderer: Renderer) -> ReportLabels:
    return ReportLabels.from_renderer(renderer)


# --------------------------------------------------------------------------- the month's cases


@dataclass(frozen=True)
class Spec:
    """One case as staff and the deadline scanner left it; offsets are from its opening.

    The dues are the columns as ``bot.deadlines`` leaves them: cleared once kept (or once nothing is owed),
    rescheduled after a miss. ``escalations`` are the scanner's passes over missed dues, (deadline, offset
    of the due it found missed): each becomes an ``escalated`` event (``still_overdue`` at the top level).
    """

    name: str
    opened: datetime
    mall: str | None
    brand: str | None
    priority: str
    nature: str | None = None
    status: str = "new"
    first_due: timedelta | datetime | None = None
    contacted: timedelta | None = None
    resolution_due: timedelta | datetime | None = None
    resolved: timedelta | None = None
    closed: timedelta | None = None
    satisfaction: int | None = None
    escalations: tuple[tuple[str, timedelta], ...] = ()
    rejected: timedelta | None = None
    reopened: timedelta | None = None

    @property
    def escalation(self) -> int:
        return min(len(self.escalations), TOP_LEVEL)


def sh(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SH)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def timeline(spec: Spec) -> list[CaseEventRecord]:
    """The events the scanner and staff would have written, as bot/deadlines.py and bot/staff.py write them."""
    events: list[CaseEventRecord] = []
    level = 0
    for deadline, offset in spec.escalations:
        due = spec.opened + offset
        top = level >= TOP_LEVEL
        level = level if top else level + 1
        data = {"deadline": deadline, "due": _iso(due), "level": level,
                "next_due": _iso(due + (REPEAT if top else STEP)), "notified": ["escalation", "mall"],
                "managers": []}
        events.append(CaseEventRecord(STILL_OVERDUE if top else ESCALATED, "kesu", data, due))
    if spec.reopened:
        events.append(CaseEventRecord("dissatisfied", "customer", {"score": spec.satisfaction},
                                      spec.opened + spec.reopened))
    if spec.rejected:
        events.append(CaseEventRecord("reject", "telegram:42", {"by": "李经理", "text": "人为损坏"},
                                      spec.opened + spec.rejected))
    return sorted(events, key=lambda event: event.created_at)


NOVEMBER = [
    # first minute of November in Shanghai (still 31 October in UTC): kept both promises, closed satisfied
    Spec("N1", sh(11, 1, 0, 30), "sh-zhenbei", "顾家家居", "normal", "quality", "closed", None, 2 * HOUR,
         None, 3 * DAY, 4 * DAY, satisfaction=5),
    # contacted late, resolved late (both dues escalated, then cleared when kept): still closed satisfied
    # (3 closes as satisfied; not "4 or more")
    Spec("N2", sh(11, 5, 10), "sh-zhenbei", "芝华仕", "important", "service", "closed", None, 30 * HOUR,
         None, 8 * DAY, 9 * DAY, satisfaction=3, escalations=(("first_contact", DAY), ("resolution", 7 * DAY))),
    # nobody ever contacted the customer: escalated twice, then reminded (still_overdue) and rescheduled;
    # the scanner has not run since, and the resolution due passed unescalated
    Spec("N3", sh(11, 10, 9), "sh-wuzhonglu", "顾家家居", "major", "quality", "verifying", 3 * DAY + STEP, None,
         7 * DAY, escalations=(("first_contact", DAY), ("first_contact", DAY + STEP),
                               ("first_contact", 2 * DAY + STEP))),
    # rejected with reasons two days in: the answer came before the resolution due (cleared by the reject)
    Spec("N4", sh(11, 12, 14), "sh-wuzhonglu", "美的", "normal", "delivery", "rejected", None, HOUR, None,
         rejected=2 * DAY),
    # opened before deadlines existed: no brand, not classified, no promises at all
    Spec("N5", sh(11, 20, 11), "sh-zhenbei", None, "normal"),
    # contacted in time; resolution due on 10 December, after the report: pending; escalated once for a
    # missed progress update, which is neither promise the report counts
    Spec("N6", sh(11, 28, 16), "bj-xisihuan", "顾家家居", "important", "sales", "agreed", None, 20 * HOUR,
         sh(12, 10, 18), escalations=(("next_update", 44 * HOUR),)),
    # resolved in time, but the customer scored 2 and it reopened (resolution re-armed for 7 days, missed,
    # escalated and rescheduled): not resolved whatever its old resolved_at says → missed
    Spec("N7", sh(11, 15, 10), "sh-zhenbei", "芝华仕", "normal", "quality", "reopened", None, 5 * HOUR,
         10 * DAY + STEP, 2 * DAY, satisfaction=2, reopened=3 * DAY, escalations=(("resolution", 10 * DAY),)),
    # contacted and resolved at the last minute of the first-contact due, before any scan: both kept;
    # waiting for the customer's score
    Spec("N8", sh(11, 18, 10), None, "方太", "normal", "quality", "follow_up", None, DAY, None, DAY),
    # closed by staff without a score
    Spec("N9", sh(11, 25, 10), "bj-xisihuan", "美的", "normal", "service", "closed", None, 3 * HOUR, None,
         6 * DAY, 7 * DAY),
    # last evening of November: first contact due on 6 December, resolution on 7 December: both pending
    Spec("N10", sh(11, 30, 20), "sh-zhenbei", "顾家家居", "normal", "quality", "new", sh(12, 6, 10), None, 7 * DAY),
]
OTHER_MONTHS = [
    Spec("O1", sh(10, 31, 23, 59), "sh-zhenbei", "顾家家居", "normal", "quality", "closed", None, HOUR, None,
         DAY, 2 * DAY, satisfaction=1),
    Spec("D1", sh(12, 1, 0, 0), "bj-xisihuan", "方太", "major", "service", "claimed", None, 2 * HOUR, 7 * DAY),
]


def _moment(opened: datetime, value: timedelta | datetime | None) -> datetime | None:
    if value is None:
        return None
    return opened + value if isinstance(value, timedelta) else value


def add_case(store: Store, spec: Spec) -> int:
    fields = {"mall": spec.mall, "brand": spec.brand, "priority": spec.priority, "description": "沙发扶手开裂"}
    with store.unit_of_work() as uow:
        case = uow.open_case(CaseDraft(channel="wechat", customer_id=f"o-{spec.name}", conversation_id=1,
                                       fields=fields, transcript=[], opened_at=spec.opened))
    changes: dict[str, Any] = {
        "status": spec.status, "nature": spec.nature, "satisfaction": spec.satisfaction,
        "escalation_level": spec.escalation,
        "first_contact_due": _moment(spec.opened, spec.first_due),
        "first_contacted_at": _moment(spec.opened, spec.contacted),
        "resolution_due": _moment(spec.opened, spec.resolution_due),
        "resolved_at": _moment(spec.opened, spec.resolved),
        "closed_at": _moment(spec.opened, spec.closed),
    }
    at = spec.opened + (spec.rejected or HOUR)
    with store.unit_of_work() as uow:
        updated = uow.update_case(case_id=case.id, expected_status="new", changes=changes, event=None, at=at)
        for event in timeline(spec):
            uow.add_case_event(case_id=case.id, kind=event.kind, actor=event.actor, data=event.data,
                               at=event.created_at)
    assert updated is not None
    return case.id


@pytest.fixture
def month_store(store: Store) -> Store:
    for spec in [*NOVEMBER, *OTHER_MONTHS]:
        add_case(store, spec)
    return store


def november(store: Store, labels: ReportLabels) -> MonthlyReport:
    return build_report(store, year=2026, month=11, now=NOW, labels=labels, mall_names=MALL_NAMES)


def figures(row: GroupRow) -> tuple[Any, ...]:
    """(key, label, cases, share, finished, first-contact rate, resolution rate, satisfaction avg, escalated)"""
    return (row.key, row.label, row.cases, row.share, row.finished, row.first_contact.rate, row.resolution.rate,
            row.satisfaction.average, row.escalated)


def D(text: str) -> Decimal:
    return Decimal(text)


# --------------------------------------------------------------------------- figures, both backends


def test_month_totals_sla_satisfaction_and_escalations(month_store: Store, labels: ReportLabels) -> None:
    report = november(month_store, labels)
    total = report.total
    assert (report.year, report.month, report.month_text) == (2026, 11, "2026-11")
    assert (total.cases, total.finished, total.open, total.share) == (10, 4, 6, D("100.0"))
    # first contact: N1 N4 N6 N7 N8(at the due) N9 kept; N2 late (escalated, due cleared since), N3 never
    # (escalated); N10 not due yet; N5 no due
    assert total.first_contact == Sla(kept=6, missed=2, pending=1, no_due=1)
    assert total.first_contact.rate == D("75.0")
    # resolution: N1 N8 N9 resolved in time, N4 rejected in time; N2 late (escalated), N3 past its due,
    # N7 reopened and escalated; N6 N10 due after the report; N5 promised nothing
    assert total.resolution == Sla(kept=4, missed=3, pending=2, no_due=1)
    assert total.resolution.rate == D("57.1")
    assert (total.satisfaction.answered, total.satisfaction.average, total.satisfaction.good_rate) == (
        3, D("3.33"), D("33.3"))
    assert total.escalated == 4
    assert (report.escalated_to_manager, report.escalated_to_group) == (2, 2)


def test_breakdowns_by_mall_and_brand(month_store: Store, labels: ReportLabels) -> None:
    report = november(month_store, labels)
    assert [figures(row) for row in report.breakdown("mall").rows] == [
        ("sh-zhenbei", ZHENBEI, 5, D("50.0"), 2, D("66.7"), D("33.3"), D("3.33"), 2),
        ("sh-wuzhonglu", WUZHONG, 2, D("20.0"), 1, D("50.0"), D("50.0"), None, 1),
        ("bj-xisihuan", XISIHUAN, 2, D("20.0"), 1, D("100.0"), D("100.0"), None, 1),
        ("", "未填写", 1, D("10.0"), 0, D("100.0"), D("100.0"), None, 0),
    ]
    assert [figures(row) for row in report.breakdown("brand").rows] == [
        ("顾家家居", "顾家家居", 4, D("40.0"), 1, D("66.7"), D("50.0"), D("5.00"), 2),
        ("美的", "美的", 2, D("20.0"), 2, D("100.0"), D("100.0"), None, 0),
        ("芝华仕", "芝华仕", 2, D("20.0"), 1, D("50.0"), D("0.0"), D("2.50"), 2),
        ("方太", "方太", 1, D("10.0"), 0, D("100.0"), D("100.0"), None, 0),
        ("", "未填写", 1, D("10.0"), 0, None, None, None, 0),
    ]
    zhenbei = report.breakdown("mall").rows[0]
    assert zhenbei.first_contact == Sla(kept=2, missed=1, pending=1, no_due=1)
    assert zhenbei.resolution == Sla(kept=1, missed=2, pending=1, no_due=1)
    assert (zhenbei.satisfaction.answered, zhenbei.satisfaction.good) == (3, 1)


def test_breakdowns_by_nature_grade_and_outcome_list_every_group(month_store: Store, labels: ReportLabels) -> None:
    report = november(month_store, labels)
    assert [(r.key, r.label, r.cases) for r in report.breakdown("nature").rows] == [
        ("quality", "产品质量", 5), ("service", "服务", 2), ("sales", "销售", 1), ("delivery", "送货安装", 1),
        ("unclassified", "未分类", 1)]
    assert [(r.key, r.label, r.cases) for r in report.breakdown("grade").rows] == [
        ("normal", "一般", 7), ("important", "重要", 2), ("major", "重大", 1)]
    outcomes = {row.key: row.cases for row in report.breakdown("outcome").rows}
    assert [row.key for row in report.breakdown("outcome").rows] == list(OUTCOMES)
    assert outcomes == {"closed_satisfied": 2, "closed": 1, "rejected": 1, "new": 2, "claimed": 0, "verifying": 1,
                        "proposed": 0, "awaiting_approval": 0, "agreed": 1, "resolved": 0, "follow_up": 1,
                        "reopened": 1}
    major = report.breakdown("grade").rows[2]
    assert figures(major) == ("major", "重大", 1, D("10.0"), 0, D("0.0"), D("0.0"), None, 1)
    for breakdown in report.breakdowns:
        assert sum(row.cases for row in breakdown.rows) == 10, breakdown.dimension


def test_months_are_shanghai_months(month_store: Store, labels: ReportLabels) -> None:
    october = build_report(month_store, year=2026, month=10, now=NOW, labels=labels, mall_names=MALL_NAMES)
    december = build_report(month_store, year=2026, month=12, now=NOW, labels=labels, mall_names=MALL_NAMES)
    assert (october.total.cases, october.total.satisfaction.average) == (1, D("1.00"))
    assert [row.label for row in december.breakdown("mall").rows] == [XISIHUAN]
    assert december.total.first_contact == Sla(kept=1)
    assert december.total.resolution == Sla(pending=1)
    empty = build_report(month_store, year=2027, month=1, now=NOW, labels=labels)
    assert empty.total.cases == 0
    assert (empty.total.share, empty.total.first_contact.rate, empty.total.satisfaction.average) == (None, None, None)
    assert empty.breakdown("mall").rows == ()
    assert [row.cases for row in empty.breakdown("grade").rows] == [0, 0, 0]


# --------------------------------------------------------------------------- rules, no database


def in_memory(labels: ReportLabels, *specs: Spec, now: datetime = NOW) -> MonthlyReport:
    """The report of ``specs`` without a database, as ``build_report`` would compute it."""
    records: list[CaseRecord] = []
    events: dict[int, list[CaseEventRecord]] = {}
    for index, spec in enumerate(specs, start=1):
        records.append(CaseRecord(
            id=index, number=f"KS261110{index:04d}", status=spec.status, channel="wechat", customer_id="o",
            conversation_id=1, created_at=spec.opened, updated_at=spec.opened + (spec.rejected or 3 * DAY),
            fields={"mall": spec.mall, "brand": spec.brand, "priority": spec.priority}, nature=spec.nature,
            first_contact_due=_moment(spec.opened, spec.first_due),
            first_contacted_at=_moment(spec.opened, spec.contacted),
            resolution_due=_moment(spec.opened, spec.resolution_due),
            resolved_at=_moment(spec.opened, spec.resolved), closed_at=_moment(spec.opened, spec.closed),
            satisfaction=spec.satisfaction, escalation_level=spec.escalation))
        events[index] = timeline(spec)
    return compute_report(records, year=2026, month=11, now=now, labels=labels, mall_names=MALL_NAMES,
                          events=events)


def test_a_due_that_is_exactly_now_and_unmet_is_missed(labels: ReportLabels) -> None:
    opened = sh(11, 10, 9)
    spec = Spec("R", opened, "sh-zhenbei", "美的", "normal", first_due=DAY, resolution_due=2 * DAY)
    at_due = in_memory(labels, spec, now=opened + DAY)
    assert at_due.total.first_contact == Sla(missed=1)
    assert at_due.total.resolution == Sla(pending=1)
    before = in_memory(labels, spec, now=opened + DAY - timedelta(seconds=1))
    assert before.total.first_contact == Sla(pending=1)


def test_promises_are_judged_by_the_timeline_not_the_due_columns(labels: ReportLabels) -> None:
    opened = sh(11, 10, 9)
    now = opened + 3 * DAY
    # rejected without a reject event: answered at its last change (+3 days); nothing was escalated
    rejected = Spec("R1", opened, None, None, "normal", status="rejected")
    # closed without resolved_at: answered when closed
    closed = Spec("R2", opened, None, None, "normal", status="closed", closed=DAY)
    # resolved late: the due was escalated, then cleared by the resolve
    resolved_late = Spec("R3", opened, None, None, "normal", status="resolved", contacted=HOUR, resolved=2 * DAY,
                         escalations=(("resolution", DAY),))
    # reopened: its old resolved_at does not count, the re-armed due is still ahead
    reopened = Spec("R4", opened, None, None, "normal", status="reopened", contacted=HOUR, resolved=DAY,
                    reopened=2 * DAY, resolution_due=9 * DAY)
    # a missed progress update is not a missed first contact or resolution
    other_deadline = Spec("R5", opened, None, None, "normal", status="resolved", contacted=HOUR, resolved=2 * DAY,
                          escalations=(("next_update", DAY + HOUR),))
    # contacted after its first-contact due was escalated (then cleared): missed; resolution still ahead
    contacted_late = Spec("R6", opened, None, None, "normal", status="claimed", contacted=30 * HOUR,
                          resolution_due=7 * DAY, escalations=(("first_contact", DAY),))
    report = in_memory(labels, rejected, closed, resolved_late, reopened, other_deadline, contacted_late, now=now)
    assert report.total.first_contact == Sla(kept=3, missed=1, no_due=2)
    assert report.total.resolution == Sla(kept=3, missed=1, pending=2)
    assert [(row.key, row.cases) for row in report.breakdown("outcome").rows if row.cases] == [
        ("closed", 1), ("rejected", 1), ("claimed", 1), ("resolved", 2), ("reopened", 1)]
    assert (report.escalated_to_manager, report.escalated_to_group) == (3, 0)


@pytest.mark.parametrize(("text", "expected"), [("2026-11", (2026, 11)), ("2026-01", (2026, 1)),
                                                (" 2027-12 ", (2027, 12))])
def test_parse_month(text: str, expected: tuple[int, int]) -> None:
    assert parse_month(text) == expected


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "2026-11-01", "", "十一月",
                                  "1999-12"])
def test_parse_month_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"YYYY-MM|month must|year must"):
        parse_month(text)


def test_percent_rounds_half_up() -> None:
    assert (percent(2, 3), percent(1, 3), percent(1, 8), percent(0, 5), percent(3, 0)) == (
        D("66.7"), D("33.3"), D("12.5"), D("0.0"), None)
    assert percent(1, 16) == D("6.3")  # 6.25 → 6.3, not banker's 6.2


# --------------------------------------------------------------------------- table, CSV, XLSX


def cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def test_table_shows_the_figures_in_aligned_columns(month_store: Store, labels: ReportLabels,
                                                    renderer: Renderer) -> None:
    text = renderer.render("report/monthly", {"report": november(month_store, labels)})
    for needle in ("客诉月报 2026年11月", "统计截至 2026-12-05 10:00", "投诉总数 10 件：已完结 4 件，处理中 6 件",
                   "首次联系按时率 75.0%（按时 6 件，超时 2 件", "未到时限 1 件、未设时限 1 件",
                   "解决按时率 57.1%（按时 4 件，超时 3 件", "未到时限 2 件、未设时限 1 件",
                   "回访评价 3 件，平均 3.33 分，4分及以上 33.3%", "升级：4 件（升至商场经理 2 件，升至升级群 2 件）",
                   "【按商场】", "【按品牌】", "【按性质】", "【按等级】", "【按处理结果】", "已结案（顾客满意）"):
        assert needle in text, needle
    lines = text.splitlines()
    header = next(index for index, line in enumerate(lines) if line == "【按商场】") + 1
    zhenbei = lines[header + 1]
    assert zhenbei.startswith(ZHENBEI)
    assert zhenbei.split() == [ZHENBEI, "5", "50.0%", "2", "66.7%", "33.3%", "3.33", "2"]
    assert lines[header + 4].split() == ["未填写", "1", "10.0%", "0", "100.0%", "100.0%", "—", "0"]
    # the heading and every row start their figures in the same terminal column, whatever the label's script
    for label, line in zip(["商场", ZHENBEI, WUZHONG, XISIHUAN, "未填写"], lines[header:header + 5], strict=True):
        rest = line.removeprefix(label)
        assert cells(label) + len(rest) - len(rest.lstrip(" ")) == 29, line


def test_table_for_an_empty_month(store: Store, labels: ReportLabels, renderer: Renderer) -> None:
    report = build_report(store, year=2026, month=11, now=NOW, labels=labels)
    text = renderer.render("report/monthly", {"report": report})
    assert text.splitlines() == ["客诉月报 2026年11月（按立案时间，北京时间；统计截至 2026-12-05 10:00）",
                                 "本月没有投诉记录。"]


def test_report_without_a_database_matches_the_stored_one(month_store: Store, labels: ReportLabels) -> None:
    assert in_memory(labels, *NOVEMBER) == november(month_store, labels)


def test_csv_is_utf8_with_bom_and_has_every_group(tmp_path: Path, labels: ReportLabels) -> None:
    path = tmp_path / "2026-11.csv"
    report = in_memory(labels, *NOVEMBER)
    write_csv(report, labels, path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw[3:].decode("utf-8").startswith("月份,维度,分组,代码,投诉数,占比(%),已完结,处理中,首次联系按时,")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report_rows(report, labels)) == 1 + 4 + 5 + 5 + 3 + len(OUTCOMES)
    assert list(rows[0]) == [labels.columns[key] for key in COLUMNS]
    total = rows[0]
    assert (total["月份"], total["维度"], total["分组"], total["代码"], total["投诉数"], total["占比(%)"]) == (
        "2026-11", "总计", "合计", "", "10", "100.0")
    assert (total["首次联系按时"], total["首次联系超时"], total["首次联系未到时限"], total["首次联系无时限"],
            total["首次联系按时率(%)"]) == ("6", "2", "1", "1", "75.0")
    assert (total["解决按时"], total["解决超时"], total["解决未到时限"], total["解决无时限"],
            total["解决按时率(%)"]) == ("4", "3", "2", "1", "57.1")
    assert (total["满意度回复数"], total["满意度平均分"], total["满意度4分及以上(%)"], total["升级数"]) == (
        "3", "3.33", "33.3", "4")
    by_group = {(row["维度"], row["代码"]): row for row in rows}
    zhenbei = by_group[("商场", "sh-zhenbei")]
    assert (zhenbei["分组"], zhenbei["投诉数"], zhenbei["首次联系按时率(%)"], zhenbei["解决按时率(%)"]) == (
        ZHENBEI, "5", "66.7", "33.3")
    no_mall = by_group[("商场", "")]
    assert (no_mall["分组"], no_mall["解决按时率(%)"], no_mall["满意度平均分"]) == ("未填写", "100.0", "")
    assert by_group[("品牌", "芝华仕")]["满意度平均分"] == "2.50"
    assert by_group[("性质", "unclassified")]["分组"] == "未分类"
    assert by_group[("处理结果", "closed_satisfied")]["投诉数"] == "2"
    assert by_group[("处理结果", "awaiting_approval")]["投诉数"] == "0"
    assert by_group[("等级", "major")]["升级数"] == "1"


def test_xlsx_has_a_sheet_per_breakdown_with_numbers(tmp_path: Path, labels: ReportLabels) -> None:
    path = tmp_path / "2026-11.xlsx"
    write_xlsx(in_memory(labels, *NOVEMBER), labels, path)
    book = load_workbook(path)
    assert book.sheetnames == ["总览", "商场", "品牌", "性质", "等级", "处理结果"]
    summary = {row[0]: row[1] for row in book["总览"].iter_rows(values_only=True)}
    assert summary["月份"] == "2026-11"
    assert (summary["投诉数"], summary["已完结"], summary["处理中"]) == (10, 4, 6)
    assert (summary["首次联系按时率(%)"], summary["解决按时率(%)"]) == (75.0, 57.1)
    assert (summary["满意度平均分"], summary["满意度4分及以上(%)"], summary["升级数"]) == (3.33, 33.3, 4)
    malls = list(book["商场"].iter_rows(values_only=True))
    assert malls[0][:6] == ("分组", "代码", "投诉数", "占比(%)", "已完结", "处理中")
    assert [row[:3] for row in malls[1:]] == [
        (ZHENBEI, "sh-zhenbei", 5), (WUZHONG, "sh-wuzhonglu", 2), (XISIHUAN, "bj-xisihuan", 2), ("未填写", None, 1),
        ("合计", None, 10)]
    header = malls[0]
    zhenbei = dict(zip(header, malls[1], strict=True))
    assert (zhenbei["占比(%)"], zhenbei["首次联系按时率(%)"], zhenbei["解决按时率(%)"], zhenbei["满意度平均分"]) == (
        50.0, 66.7, 33.3, 3.33)
    assert dict(zip(header, malls[4], strict=True))["满意度平均分"] is None
    assert book["商场"]["D2"].number_format == "0.0"
    grades = [row[:3] for row in book["等级"].iter_rows(min_row=2, values_only=True)]
    assert grades == [("一般", "normal", 7), ("重要", "important", 2), ("重大", "major", 1), ("合计", None, 10)]
    # a plain zip of sheet XML too, as any spreadsheet program reads it
    with zipfile.ZipFile(path) as archive:
        assert {"xl/workbook.xml", "xl/worksheets/sheet1.xml", "xl/worksheets/sheet6.xml"} <= set(archive.namelist())
        assert "处理结果" in archive.read("xl/workbook.xml").decode("utf-8")


def test_labels_come_from_the_templates_and_deployers_can_rename(tmp_path: Path) -> None:
    override = tmp_path / "zh-CN" / "report" / "_labels.j2"
    override.parent.mkdir(parents=True)
    builtin = (Path(__file__).resolve().parent.parent / "templates" / "zh-CN" / "report" / "_labels.j2")
    override.write_text(builtin.read_text(encoding="utf-8").replace('unclassified="未分类"', 'unclassified="待分类"'),
                        encoding="utf-8")
    labels = ReportLabels.from_renderer(Renderer([tmp_path]))
    assert labels.natures["unclassified"] == "待分类"
    broken = tmp_path / "broken"
    (broken / "zh-CN" / "report").mkdir(parents=True)
    (broken / "zh-CN" / "report" / "_labels.j2").write_text(
        builtin.read_text(encoding="utf-8").replace('"escalated": "升级数"', ""), encoding="utf-8")
    with pytest.raises(ValueError, match="escalated"):
        ReportLabels.from_renderer(Renderer([broken]))


# --------------------------------------------------------------------------- CLI


def kesu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KESU_")}
    return subprocess.run([*_command(), *args], capture_output=True, text=True, encoding="utf-8", cwd=cwd, env=env,
                          timeout=TIMEOUT, check=False)


def test_cli_prints_the_table_and_writes_csv_and_xlsx(month_store: Store, db_url: str, tmp_path: Path) -> None:
    csv_path, xlsx_path = tmp_path / "nov.csv", tmp_path / "nov.xlsx"
    result = kesu("report", "--month", "2026-11", "--db", db_url, "--now", "2026-12-05T10:00:00+08:00",
                  "--csv", str(csv_path), "--xlsx", str(xlsx_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for needle in ("客诉月报 2026年11月", "投诉总数 10 件", "首次联系按时率 75.0%", "解决按时率 57.1%", "平均 3.33 分",
                   ZHENBEI, "顾家家居", "产品质量", "重大", "已结案（顾客满意）",
                   f"已导出CSV文件：{csv_path}", f"已导出Excel文件：{xlsx_path}"):
        assert needle in result.stdout, needle
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (rows[0]["投诉数"], rows[0]["首次联系按时率(%)"]) == ("10", "75.0")
    summary = {row[0]: row[1] for row in load_workbook(xlsx_path)["总览"].iter_rows(values_only=True)}
    assert (summary["投诉数"], summary["首次联系按时率(%)"]) == (10, 75.0)


def test_cli_empty_month_without_exports(store: Store, db_url: str, tmp_path: Path) -> None:
    result = kesu("report", "--month", "2026-02", "--db", db_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "客诉月报 2026年2月" in result.stdout and "本月没有投诉记录。" in result.stdout
    assert "已导出" not in result.stdout


@pytest.mark.parametrize("month", ["2026-13", "11/2026", "2026-1", "next"])
def test_cli_refuses_a_bad_month(month: str, tmp_path: Path) -> None:
    result = kesu("report", "--month", month, "--db", f"sqlite:///{tmp_path / 'k.db'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "--month" in result.stderr and ("YYYY-MM" in result.stderr or "01..12" in result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "k.db").exists()


def test_cli_requires_a_month(tmp_path: Path) -> None:
    result = kesu("report", cwd=tmp_path)
    assert result.returncode == 2
    assert "--month" in result.stderr


def test_cli_unwritable_export_path_fails_clearly(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    result = kesu("report", "--month", "2026-11", "--db", db, "--csv", str(tmp_path / "missing" / "r.csv"),
                  cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot write" in result.stderr and "r.csv" in result.stderr
    assert "Traceback" not in result.stderr
