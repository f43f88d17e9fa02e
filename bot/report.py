"""The monthly statistics (seeds 001 §10, 002, 003): `kesu report --month YYYY-MM`.

Which cases: those opened in the month as Shanghai counts it (``Store.cases_in_month``), seen as
they stand when the report is made (``now``): a case opened on 30 November and resolved on
3 December counts in November's report, resolved.

What is counted, for the month and for each group of each breakdown (mall, brand, nature, grade,
outcome):

- cases, their share of the month, finished (closed or rejected) and still open;
- first-contact and resolution SLA, as ``bot.deadlines.promise_outcome`` reads them from the case and
  its timeline (the due columns alone cannot say it: a kept promise clears its column and a missed one
  is rescheduled). *Missed*: an ``escalated`` or ``still_overdue`` event for that deadline on the
  timeline, or not done while its due has passed by ``now`` (the scanner may not have run yet).
  *Kept*: done with no such event. *Pending*: not done, due still ahead. *No due*: not done and
  nothing promised. Pending and no-due cases are left out of the percentage and counted apart, so the
  report says how many it left out. A promise kept late before any scan escalated it counts as kept.
  First contact is done at ``first_contacted_at``. Resolution is done when the case got its answer:
  ``resolved_at`` while the case is resolved, in follow-up or closed (``closed_at`` if a closed case
  has no ``resolved_at``), the time of the last "reject" event for a rejected case (a reasoned
  rejection answers the complaint; its last change without one), and never for a case still being
  worked (a reopened case is not resolved, whatever its old ``resolved_at`` says; its re-armed due
  decides);
- satisfaction: how many answered the follow-up, the average score, the share of 4 and 5;
- escalations: cases whose missed deadlines escalated them at least once (level 1: the mall's
  manager; 2 and more: the escalation group).

Percentages and averages are Decimals rounded half up (percentages to 0.1, averages to 0.01);
None where nothing was measured. Every word shown (group names, column headings) comes from
templates/<locale>/report/, so deployers' overrides reach the CSV and XLSX as well as the table.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from bot.deadlines import promise_outcome
from bot.lifecycle import Status
from bot.templating import Renderer
from storage.models import NATURES, PRIORITIES
from storage.repository import CaseEventRecord, CaseRecord, Store

UNCLASSIFIED = "unclassified"
"""The nature of a case staff have not classified yet."""

SATISFIED_SCORE = 3
"""A follow-up answer of 3 or more closes the case as satisfied (bot/staff.py ``customer_reply``)."""

GOOD_SCORE = 4
"""The report's "satisfied" share counts answers of 4 and 5."""

FINISHED = (Status.CLOSED.value, Status.REJECTED.value)
RESOLVED_STATES = frozenset({Status.RESOLVED.value, Status.FOLLOW_UP.value, Status.CLOSED.value})
OUTCOMES: tuple[str, ...] = (
    "closed_satisfied",
    "closed",
    "rejected",
    *(status.value for status in Status if status.value not in FINISHED),
)
"""Outcome groups: closed with a satisfied answer, closed otherwise, rejected, then each open state."""

DIMENSIONS: tuple[str, ...] = ("mall", "brand", "nature", "grade", "outcome")
NATURE_GROUPS: tuple[str, ...] = (*NATURES, UNCLASSIFIED)

COLUMNS: tuple[str, ...] = (
    "month", "dimension", "group", "key", "cases", "share", "finished", "open",
    "first_contact_kept", "first_contact_missed", "first_contact_pending", "first_contact_no_due",
    "first_contact_rate",
    "resolution_kept", "resolution_missed", "resolution_pending", "resolution_no_due", "resolution_rate",
    "satisfaction_answered", "satisfaction_average", "satisfaction_good_rate", "escalated",
)
"""CSV columns in order; the headings are COLUMNS in templates/<locale>/report/_labels.j2."""

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_TENTH = Decimal("0.1")
_CENT = Decimal("0.01")


def parse_month(value: str) -> tuple[int, int]:
    """"2026-11" → (2026, 11); anything else is a ValueError saying what is expected."""
    match = _MONTH.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"expected YYYY-MM (e.g. 2026-11), got {value!r}")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 01..12, got {value!r}")
    if year < 2000:
        raise ValueError(f"year must be 2000 or later, got {value!r}")
    return year, month


def percent(part: int, whole: int) -> Decimal | None:
    """part/whole in percent, to 0.1, half up; None when there is nothing to divide by."""
    if whole <= 0:
        return None
    return (Decimal(part) * 100 / Decimal(whole)).quantize(_TENTH, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Sla:
    """How one promise (first contact or resolution) was kept by a group of cases."""

    kept: int = 0
    missed: int = 0
    pending: int = 0
    """Due still ahead and not done yet: not decided, left out of the rate."""
    no_due: int = 0
    """Nothing was promised: left out of the rate."""

    @property
    def measured(self) -> int:
        return self.kept + self.missed

    @property
    def excluded(self) -> int:
        return self.pending + self.no_due

    @property
    def rate(self) -> Decimal | None:
        return percent(self.kept, self.measured)


@dataclass(frozen=True)
class Satisfaction:
    answered: int = 0
    score_sum: int = 0
    good: int = 0
    """Answers of GOOD_SCORE or more."""

    @property
    def average(self) -> Decimal | None:
        if not self.answered:
            return None
        return (Decimal(self.score_sum) / self.answered).quantize(_CENT, rounding=ROUND_HALF_UP)

    @property
    def good_rate(self) -> Decimal | None:
        return percent(self.good, self.answered)


@dataclass(frozen=True)
class GroupRow:
    """The figures of one group (a mall, a brand, …) or of the whole month."""

    key: str
    """Stable code: mall id, brand name, nature, priority, outcome; "" for cases without the field."""
    label: str
    """What people read: the mall's name, a nature's name, …"""
    cases: int
    share: Decimal | None
    finished: int
    open: int
    first_contact: Sla
    resolution: Sla
    satisfaction: Satisfaction
    escalated: int


@dataclass(frozen=True)
class Breakdown:
    dimension: str
    label: str
    rows: tuple[GroupRow, ...]


@dataclass(frozen=True)
class MonthlyReport:
    year: int
    month: int
    generated_at: datetime
    total: GroupRow
    breakdowns: tuple[Breakdown, ...]
    escalated_to_manager: int
    """Cases at escalation level 1 (the mall's manager)."""
    escalated_to_group: int
    """Cases at level 2 or more (the escalation group)."""

    @property
    def month_text(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def breakdown(self, dimension: str) -> Breakdown:
        return next(b for b in self.breakdowns if b.dimension == dimension)


@dataclass(frozen=True)
class ReportLabels:
    """The report's words, read from templates/<locale>/report/_labels.j2 (deployers may override it)."""

    total: str
    missing: str
    dimensions: Mapping[str, str]
    natures: Mapping[str, str]
    grades: Mapping[str, str]
    outcomes: Mapping[str, str]
    columns: Mapping[str, str]
    summary_sheet: str

    @classmethod
    def from_renderer(cls, renderer: Renderer) -> ReportLabels:
        module: Any = renderer.env.get_template("report/_labels.j2").module
        labels = cls(
            total=str(module.TOTAL), missing=str(module.MISSING), dimensions=dict(module.DIMENSIONS),
            natures=dict(module.NATURES), grades=dict(module.GRADES), outcomes=dict(module.OUTCOMES),
            columns=dict(module.COLUMNS), summary_sheet=str(module.SUMMARY_SHEET))
        for name, mapping, keys in (("DIMENSIONS", labels.dimensions, DIMENSIONS),
                                    ("NATURES", labels.natures, NATURE_GROUPS),
                                    ("GRADES", labels.grades, PRIORITIES),
                                    ("OUTCOMES", labels.outcomes, OUTCOMES),
                                    ("COLUMNS", labels.columns, COLUMNS)):
            missing = [key for key in keys if key not in mapping]
            if missing:
                raise ValueError(f"report/_labels.j2: {name} has no label for {missing}")
        return labels


def last_rejection(events: Sequence[CaseEventRecord]) -> datetime | None:
    """The time of the last "reject" event on a case's timeline, if any."""
    return max((event.created_at for event in events if event.kind == "reject"), default=None)


def answered_at(case: CaseRecord, rejected_at: datetime | None) -> datetime | None:
    """When the case got its answer (see the module doc), or None while it is still being worked."""
    if case.status == Status.REJECTED:
        return rejected_at or case.updated_at
    if case.status in RESOLVED_STATES:
        return case.resolved_at or case.closed_at
    return None


def sla_outcomes(case: CaseRecord, events: Sequence[CaseEventRecord], now: datetime) -> tuple[str, str]:
    """(first contact, resolution), each "kept", "missed", "pending" or "no_due" (see the module doc)."""
    first = promise_outcome(case, events, "first_contact", now)
    done = answered_at(case, last_rejection(events))
    # promise_outcome falls back to resolved_at when done is None; a reopened case keeps its old one.
    unanswered = case if done is not None or case.resolved_at is None else dataclasses.replace(case, resolved_at=None)
    resolution = promise_outcome(unanswered, events, "resolution", now, done=done)
    return ("no_due" if first == "none" else first), ("no_due" if resolution == "none" else resolution)


def outcome(case: CaseRecord) -> str:
    if case.status == Status.CLOSED:
        satisfied = case.satisfaction is not None and case.satisfaction >= SATISFIED_SCORE
        return "closed_satisfied" if satisfied else "closed"
    return case.status


def _group(key: str, label: str, cases: list[CaseRecord], month_total: int,
           outcomes: Mapping[int, tuple[str, str]]) -> GroupRow:
    first: dict[str, int] = {"kept": 0, "missed": 0, "pending": 0, "no_due": 0}
    resolution = dict(first)
    scores = [case.satisfaction for case in cases if case.satisfaction is not None]
    for case in cases:
        first_contact, resolved = outcomes[case.id]
        first[first_contact] += 1
        resolution[resolved] += 1
    finished = sum(case.status in FINISHED for case in cases)
    return GroupRow(
        key=key, label=label, cases=len(cases), share=percent(len(cases), month_total), finished=finished,
        open=len(cases) - finished, first_contact=Sla(**first), resolution=Sla(**resolution),
        satisfaction=Satisfaction(answered=len(scores), score_sum=sum(scores),
                                  good=sum(score >= GOOD_SCORE for score in scores)),
        escalated=sum(case.escalation_level > 0 for case in cases))


def _by(cases: Iterable[CaseRecord], key: Callable[[CaseRecord], str]) -> dict[str, list[CaseRecord]]:
    groups: dict[str, list[CaseRecord]] = {}
    for case in cases:
        groups.setdefault(key(case), []).append(case)
    return groups


def compute_report(cases: list[CaseRecord], *, year: int, month: int, now: datetime,
                   labels: ReportLabels, mall_names: Mapping[str, str] | None = None,
                   events: Mapping[int, Sequence[CaseEventRecord]] | None = None) -> MonthlyReport:
    """The month's figures from its cases; ``events`` maps a case's id to its timeline (none if missing).

    Mall and brand groups are those that have cases, most cases first (then by name); nature, grade
    and outcome list every group, zero or not, so months line up.
    """
    mall_names = mall_names or {}
    events = events or {}
    outcomes = {case.id: sla_outcomes(case, events.get(case.id, ()), now) for case in cases}
    total = len(cases)

    def row(key: str, label: str, members: list[CaseRecord]) -> GroupRow:
        return _group(key, label, members, total, outcomes)

    def ranked(groups: dict[str, list[CaseRecord]], label: Callable[[str], str]) -> tuple[GroupRow, ...]:
        rows = [row(key, label(key), members) for key, members in groups.items()]
        return tuple(sorted(rows, key=lambda r: (-r.cases, r.key == "", r.label)))

    def fixed(groups: dict[str, list[CaseRecord]], names: Mapping[str, str], order: Iterable[str]) -> tuple[
            GroupRow, ...]:
        keys = list(order) + [key for key in groups if key not in names]  # a status no label knows still counts
        return tuple(row(key, names.get(key, key), groups.get(key, [])) for key in keys)

    breakdowns = (
        Breakdown("mall", labels.dimensions["mall"], ranked(
            _by(cases, lambda c: c.fields.get("mall") or ""),
            lambda key: mall_names.get(key, key) if key else labels.missing)),
        Breakdown("brand", labels.dimensions["brand"], ranked(
            _by(cases, lambda c: c.fields.get("brand") or ""), lambda key: key or labels.missing)),
        Breakdown("nature", labels.dimensions["nature"], fixed(
            _by(cases, lambda c: c.nature or UNCLASSIFIED), labels.natures, NATURE_GROUPS)),
        Breakdown("grade", labels.dimensions["grade"], fixed(
            _by(cases, lambda c: c.fields.get("priority") or "normal"), labels.grades, PRIORITIES)),
        Breakdown("outcome", labels.dimensions["outcome"], fixed(
            _by(cases, outcome), labels.outcomes, OUTCOMES)),
    )
    return MonthlyReport(
        year=year, month=month, generated_at=now, total=row("", labels.total, cases), breakdowns=breakdowns,
        escalated_to_manager=sum(case.escalation_level == 1 for case in cases),
        escalated_to_group=sum(case.escalation_level >= 2 for case in cases))


def build_report(store: Store, *, year: int, month: int, now: datetime, labels: ReportLabels,
                 mall_names: Mapping[str, str] | None = None) -> MonthlyReport:
    """Read the month's cases and each one's timeline (once a case) and compute the report."""
    cases = store.cases_in_month(year=year, month=month)
    events = {case.id: store.get_case_events(case.id) for case in cases}
    return compute_report(cases, year=year, month=month, now=now, labels=labels, mall_names=mall_names,
                          events=events)


# --------------------------------------------------------------------------- exports


def _values(report: MonthlyReport, dimension: str, row: GroupRow) -> dict[str, int | str | Decimal | None]:
    return {
        "month": report.month_text, "dimension": dimension, "group": row.label, "key": row.key,
        "cases": row.cases, "share": row.share, "finished": row.finished, "open": row.open,
        "first_contact_kept": row.first_contact.kept, "first_contact_missed": row.first_contact.missed,
        "first_contact_pending": row.first_contact.pending, "first_contact_no_due": row.first_contact.no_due,
        "first_contact_rate": row.first_contact.rate,
        "resolution_kept": row.resolution.kept, "resolution_missed": row.resolution.missed,
        "resolution_pending": row.resolution.pending, "resolution_no_due": row.resolution.no_due,
        "resolution_rate": row.resolution.rate,
        "satisfaction_answered": row.satisfaction.answered, "satisfaction_average": row.satisfaction.average,
        "satisfaction_good_rate": row.satisfaction.good_rate, "escalated": row.escalated,
    }


def report_rows(report: MonthlyReport, labels: ReportLabels) -> list[dict[str, int | str | Decimal | None]]:
    """One dict per CSV line (keys: COLUMNS): the month's total first, then every breakdown's groups."""
    rows = [_values(report, labels.dimensions["total"], report.total)]
    for breakdown in report.breakdowns:
        rows.extend(_values(report, breakdown.label, row) for row in breakdown.rows)
    return rows


def write_csv(report: MonthlyReport, labels: ReportLabels, path: Path) -> None:
    """UTF-8 with a byte-order mark, so Excel opens the Chinese right; empty cells where nothing was measured."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([labels.columns[key] for key in COLUMNS])
        for values in report_rows(report, labels):
            writer.writerow(["" if values[key] is None else str(values[key]) for key in COLUMNS])


_SHEET_COLUMNS = tuple(key for key in COLUMNS if key not in ("month", "dimension"))
_RATE_COLUMNS = frozenset({"share", "first_contact_rate", "resolution_rate", "satisfaction_good_rate"})


def _cell(value: int | str | Decimal | None) -> int | str | float | None:
    return float(value) if isinstance(value, Decimal) else value


def write_xlsx(report: MonthlyReport, labels: ReportLabels, path: Path) -> None:
    """A summary sheet (the month's total, one figure a line), then one sheet per breakdown with its
    groups and a total line; numbers are numbers, percentages with one decimal, empty where not measured."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    bold = Font(bold=True)
    book = Workbook()
    summary = book.active
    assert summary is not None  # a new workbook always has its first sheet
    summary.title = labels.summary_sheet
    summary.append([labels.columns["month"], report.month_text])
    for key, value in _values(report, labels.dimensions["total"], report.total).items():
        if key not in ("month", "dimension", "group", "key", "share"):
            summary.append([labels.columns[key], _cell(value)])
    for (cell,) in summary.iter_rows(min_col=1, max_col=1):
        cell.font = bold
    summary.column_dimensions["A"].width = 28
    summary.column_dimensions["B"].width = 14

    for breakdown in report.breakdowns:
        sheet = book.create_sheet(breakdown.label[:31])
        sheet.append([labels.columns[key] for key in _SHEET_COLUMNS])
        for values in [*(_values(report, breakdown.label, row) for row in breakdown.rows),
                       _values(report, breakdown.label, report.total)]:
            sheet.append([_cell(values[key]) for key in _SHEET_COLUMNS])
        for cell in sheet[1]:
            cell.font = bold
        for cell in sheet[sheet.max_row]:
            cell.font = bold
        for index, key in enumerate(_SHEET_COLUMNS, start=1):
            letter = sheet.cell(row=1, column=index).column_letter
            sheet.column_dimensions[letter].width = 28 if key == "group" else 12
            if key in _RATE_COLUMNS or key == "satisfaction_average":
                for (cell,) in sheet.iter_rows(min_row=2, min_col=index, max_col=index):
                    cell.number_format = "0.00" if key == "satisfaction_average" else "0.0"
        sheet.freeze_panes = "B2"
    book.save(path)


__all__ = [
    "COLUMNS",
    "DIMENSIONS",
    "OUTCOMES",
    "Breakdown",
    "GroupRow",
    "MonthlyReport",
    "ReportLabels",
    "Satisfaction",
    "Sla",
    "build_report",
    "compute_report",
    "outcome",
    "parse_month",
    "percent",
    "report_rows",
    "sla_outcomes",
    "write_csv",
    "write_xlsx",
]
