"""Promises and time: the deadlines on a case, the holiday calendar, and the scanner that keeps them.

The script promises contact within 24 hours (seed 000), and "信" asks for progress at the agreed
time. Three promises live on the case row (``CASE_DEADLINES``), never in process memory:

- ``first_contact_due``: set when the case opens (default 24 h). Kept by the first staff action
  that reaches the customer — ask, progress, a proposal the customer is shown, approve (the customer
  is then told), a recorded agreement (agree: they were talked to), resolve, reject. A claim is not
  contact (its automatic "someone has your case" message is not a conversation), nor are a note,
  verify or reassign. A phone call is recorded with /progress, which also gives the customer the
  written summary. The first such action sets ``first_contacted_at`` and clears the due.
- ``next_update_due``: after every message that reaches the customer, the next one is owed within
  ``next_update`` (default 24 h, the script's "24小时内告知您投诉处理进展"); a caller may pass an
  explicit promised time instead (``promised_update``), e.g. a /progress that names the next update.
- ``resolution_due``: set when the case opens (default 7 days) and again when it is reopened.
- Resolve, reject and close clear all three: nothing is owed any more (the satisfaction follow-up
  has its own flow). Reopen re-arms the next update and the resolution.

The columns are the promises still *pending*: ``Reader.cases_due`` reads them from partial indexes
in due order, so a kept promise must leave its column (or a busy deployment's overdue-but-kept cases
would fill every scan). A missed promise is recorded on the timeline instead (``escalated``, with
the due that was missed), which is what ``promise_outcome`` reads for SLA figures.

Clocks: each deadline counts ``calendar`` time (the default: the service runs on public holidays,
seed 001 §8) or ``business`` time, which runs only on working days as China's calendar has them,
with working weekends (调休), in Shanghai time. The calendar is deployer-configured YAML
(``KESU_HOLIDAYS``; the built-in ``bot/data/holidays_cn.yaml`` has the official 2026 schedule).
YAML rather than the ``chinesecalendar`` package: its 1.11 data ends with 2026 and it raises for any
later date, so a December case counting working days into January would crash until a new release
is installed; a deployer adds next year's seven holidays to a file the day the State Council
publishes them, and can add local closures too. A year the file does not have counts Monday to
Friday as working days (logged once).

The scanner (``DeadlineScanner.scan``): for each case with a deadline passed, or within the warning
lead (default 2 h) and not warned for yet, in its own transaction guarded by the case's version
(``update_case(expected_version=...)``), so several ``kesu serve`` processes or a cron ``kesu deadlines
scan`` beside them write each step once:

- before a deadline: one warning to the owner (their private Telegram chat when the owner is
  ``telegram:<id>``, otherwise the mall's staff groups; unclaimed cases go to the mall's groups).
  The ``deadline_warning`` event, keyed by the deadline and its due, records it; the row keeps the
  same fact as ``<deadline>_warned_due`` = that due (migration 0004), which ``Reader.cases_due``
  filters on through partial indexes. So a pass with nothing to do reads empty index ranges, in a
  long-lived process or a fresh one alike, however many warned cases wait for their due. Holding the
  due rather than a flag, the marker needs no upkeep elsewhere: whatever moves a deadline (a staff
  action, a reopen, a new grade) makes its warning owed again without knowing about warnings.
- after it: escalate one level (0 owner → 1 mall manager → 2 escalation group): ``escalation_level``
  +1 and an ``escalated`` event saying which deadline, which due and who was told; the messages go to
  the owner, the mall's staff groups (naming its store and deputy store managers from the staff
  directory; at level 1 those on Telegram also get it in their private chat) and, at level 2, the
  mall's and the deployment's escalation groups. The missed deadline is rescheduled
  ``escalation_step`` (default 8 h) later and marked warned (the escalation was the news, so
  rescheduled dues get no new warning): still unkept then, it escalates again. At the top level the
  escalation groups are reminded every ``escalation_repeat`` (default 24 h) with a ``still_overdue``
  event, the level staying 2.
- the customer: when the missed deadline is a promise they were given in words (first contact, next
  update; the resolution target is internal), each level's escalation also tells them, in the same
  transaction, that we are sorry for the wait and that the mall's management will contact them
  (``push_to_customer``), and the event records ``customer_told``. That message is not contact: the
  promise stays pending until staff reach them.

Everything queued goes through the outbox in the same transaction as the case change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.config import Settings
from bot.customer_push import push_to_customer
from bot.lifecycle import Action, Status
from bot.notify import VIEW, mask_mobiles
from bot.outbound import Button, OutboundMessage
from bot.templating import Renderer
from dialogs.catalog import Catalog, Mall, StaffEntry, StaffGroups
from storage.models import CASE_WARNED_DUES, PRIORITIES
from storage.repository import CaseEventRecord, CaseRecord, Store, UnitOfWork

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo("Asia/Shanghai")
ClockKind = Literal["calendar", "business"]

DEADLINES: dict[str, str] = {
    "first_contact": "first_contact_due",
    "next_update": "next_update_due",
    "resolution": "resolution_due",
}
"""Deadline name (as events and templates say it) → case column."""

WARNED = "deadline_warning"
ESCALATED = "escalated"
STILL_OVERDUE = "still_overdue"
TOP_LEVEL = 2  # 0 owner, 1 mall manager, 2 escalation group
MANAGER_ROLES = ("store_manager", "deputy_store_manager")
MAX_BATCH_GROWTH = 64  # a pass reads at most 64 batches' worth of cases that someone else changed first

# Staff actions whose message reaches the customer (or records that someone talked to them).
CONTACT_ACTIONS = frozenset({Action.ASK, Action.PROGRESS, Action.PROPOSE, Action.APPROVE, Action.AGREE,
                             Action.RESOLVE, Action.REJECT})
# Nothing more is owed to the customer in these states (the follow-up question has its own flow).
NOTHING_OWED = frozenset({Status.RESOLVED, Status.FOLLOW_UP, Status.CLOSED, Status.REJECTED})


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# --------------------------------------------------------------------------- the holiday calendar


class _Year(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None
    holidays: dict[str, tuple[date] | tuple[date, date]] = Field(default_factory=dict)
    workdays: tuple[date, ...] = ()

    @field_validator("holidays")
    @classmethod
    def _ranges(cls, value: dict[str, tuple[date, ...]]) -> dict[str, tuple[date, ...]]:
        for name, days in value.items():
            first, last = days[0], days[-1]
            if last < first:
                raise ValueError(f"{name}: the last day {last} is before the first {first}")
            if (last - first).days > 31:
                raise ValueError(f"{name}: {first} to {last} is more than a month; a typo?")
        return value

    @field_validator("workdays")
    @classmethod
    def _weekends_only(cls, value: tuple[date, ...]) -> tuple[date, ...]:
        for day in value:
            if day.weekday() < 5:
                raise ValueError(f"workday {day} is a weekday anyway: list only Saturdays and Sundays that are "
                                 "working days (调休上班)")
        return value


class _CalendarFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    years: dict[int, _Year]

    @model_validator(mode="after")
    def _no_day_both(self) -> _CalendarFile:
        for year in self.years.values():
            off = {day for days in year.holidays.values() for day in _days(days[0], days[-1])}
            clash = off & set(year.workdays)
            if clash:
                raise ValueError(f"both a holiday and a workday: {', '.join(map(str, sorted(clash)))}")
        return self


def _days(first: date, last: date) -> Iterable[date]:
    return (first + timedelta(days=offset) for offset in range((last - first).days + 1))


@dataclass(frozen=True)
class HolidayCalendar:
    """Which days are working days: Monday to Friday, less public holidays, plus working weekends."""

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    years: frozenset[int] = frozenset()
    """The years the deployer's file describes; others are guessed (weekdays work) with a warning."""

    def is_working_day(self, day: date) -> bool:
        if day.year not in self.years:
            _warn_uncovered(day.year)
        if day in self.workdays:
            return True
        return day not in self.holidays and day.weekday() < 5

    def add_working_time(self, start: datetime, amount: timedelta) -> datetime:
        """``start`` plus ``amount`` of time that only runs on working days (whole days, Shanghai time).

        Friday 19:30 + 3 days before a Monday holiday is Thursday 19:30; a start on a rest day counts
        from the next working day's 00:00.
        """
        if amount < timedelta(0):
            raise ValueError(f"amount must not be negative, got {amount!r}")
        moment = start.astimezone(SHANGHAI)
        remaining = amount
        for _ in range(3660):  # ten years of rest days in a row means the calendar is broken
            day_end = datetime.combine(moment.date() + timedelta(days=1), time(0), tzinfo=SHANGHAI)
            if self.is_working_day(moment.date()):
                available = day_end - moment
                if remaining <= available:
                    return (moment + remaining).astimezone(UTC)
                remaining -= available
            moment = day_end
        raise ValueError("the holiday calendar has no working day for ten years")


@lru_cache(maxsize=64)
def _warn_uncovered(year: int) -> None:
    log.warning("the holiday calendar has no %s: counting Monday to Friday as working days; add the official "
                "schedule to the file KESU_HOLIDAYS names (format: bot/data/holidays_cn.yaml)", year)


def default_holidays_path() -> Path:
    return Path(str(resources.files("bot").joinpath("data/holidays_cn.yaml")))


def parse_holidays(text: str, source: str = "holidays") -> HolidayCalendar:
    """A calendar from YAML in the format of ``bot/data/holidays_cn.yaml``; ValueError names what is wrong."""
    data = yaml.safe_load(text)
    try:
        parsed = _CalendarFile.model_validate(data if data is not None else {"years": {}})
    except ValidationError as problem:
        raise ValueError(f"{source}: {problem}") from problem
    off: set[date] = set()
    work: set[date] = set()
    for year in parsed.years.values():
        for days in year.holidays.values():
            off.update(_days(days[0], days[-1]))
        work.update(year.workdays)
    return HolidayCalendar(frozenset(off), frozenset(work), frozenset(parsed.years))


@lru_cache(maxsize=16)
def load_holidays(path: Path | None = None) -> HolidayCalendar:
    """Read the deployer's holiday file (None: the built-in one); cached per path."""
    source = path or default_holidays_path()
    return parse_holidays(source.read_text(encoding="utf-8"), str(source))


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class DeadlinePolicy:
    """How long each promise runs, on which clock, and when the scanner warns and escalates."""

    first_contact: timedelta = timedelta(hours=24)
    next_update: timedelta = timedelta(hours=24)
    resolution: timedelta = timedelta(days=7)
    clocks: Mapping[str, ClockKind] = field(default_factory=lambda: dict.fromkeys(DEADLINES, "calendar"))
    warning_lead: timedelta = timedelta(hours=2)
    escalation_step: timedelta = timedelta(hours=8)
    escalation_repeat: timedelta = timedelta(hours=24)
    calendar: HolidayCalendar = field(default_factory=lambda: load_holidays(None))
    by_priority: Mapping[str, Mapping[str, timedelta]] = field(default_factory=dict)
    """Per grade (normal/important/major), the deadlines that run shorter or longer than the above."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadlinePolicy:
        by_priority: dict[str, Mapping[str, timedelta]] = {
            priority: {name: amount for name, amount in (
                ("first_contact", sla.first_contact_hours and timedelta(hours=sla.first_contact_hours)),
                ("next_update", sla.next_update_hours and timedelta(hours=sla.next_update_hours)),
                ("resolution", sla.resolution_days and timedelta(days=sla.resolution_days))) if amount}
            for priority, sla in settings.sla_by_priority.items()}
        return cls(
            first_contact=timedelta(hours=settings.first_contact_hours),
            next_update=timedelta(hours=settings.next_update_hours),
            resolution=timedelta(days=settings.resolution_days),
            clocks={"first_contact": settings.first_contact_clock, "next_update": settings.next_update_clock,
                    "resolution": settings.resolution_clock},
            warning_lead=timedelta(hours=settings.deadline_warning_hours),
            escalation_step=timedelta(hours=settings.escalation_step_hours),
            escalation_repeat=timedelta(hours=settings.escalation_repeat_hours),
            calendar=load_holidays(settings.holidays),
            by_priority=by_priority,
        )

    def amount(self, deadline: str, priority: str = "normal") -> timedelta:
        """How long the promise ``deadline`` runs for a case of this grade."""
        default = {"first_contact": self.first_contact, "next_update": self.next_update,
                   "resolution": self.resolution}[deadline]
        return self.by_priority.get(priority, {}).get(deadline, default)

    def promises(self, priority: str = "normal") -> dict[str, dict[str, Any]]:
        """What templates say the customer is promised: per deadline, its hours and whether they are working days."""
        return {name: {"hours": self.amount(name, priority).total_seconds() / 3600,
                       "business": self.clocks.get(name, "calendar") == "business"} for name in DEADLINES}

    def promises_by_grade(self) -> dict[str, dict[str, Any]]:
        return {priority: self.promises(priority) for priority in PRIORITIES}

    def due(self, deadline: str, start: datetime, priority: str = "normal") -> datetime:
        """When the promise ``deadline`` made at ``start`` falls due, on that deadline's clock."""
        amount = self.amount(deadline, priority)
        if self.clocks.get(deadline, "calendar") == "business":
            return self.calendar.add_working_time(start, amount)
        return (start + amount).astimezone(UTC)

    def opened(self, at: datetime, priority: str = "normal") -> dict[str, Any]:
        """The promises a new case starts with (``update_case`` changes)."""
        return {"first_contact_due": self.due("first_contact", at, priority),
                "resolution_due": self.due("resolution", at, priority)}

    def reopened(self, at: datetime, priority: str = "normal") -> dict[str, Any]:
        """A reopened case owes the customer news and a resolution again."""
        return {"next_update_due": self.due("next_update", at, priority),
                "resolution_due": self.due("resolution", at, priority)}

    def regraded(self, case: CaseRecord, priority: str, now: datetime) -> dict[str, Any]:
        """A new grade shifts the first-contact and resolution dues still pending by the difference
        between the two grades' durations (the next update was promised to the customer in words).

        Left as they are: a due already warned for or rescheduled by an escalation (its clock has run
        in front of staff), and a shift that would put it in the past: a tighter target set late does
        not make a case overdue after the fact, least of all towards a customer promised the old one.
        """
        old = case.fields.get("priority") or "normal"
        changes: dict[str, Any] = {}
        for name in ("first_contact", "resolution"):
            column = DEADLINES[name]
            due: datetime | None = getattr(case, column)
            if due is None or getattr(case, CASE_WARNED_DUES[column]) == due:
                continue
            moved = due + self.amount(name, priority) - self.amount(name, old)
            if moved != due and moved > now:
                changes[column] = moved
        return changes

    def after_action(self, case: CaseRecord, action: Action, status: str, at: datetime, *,
                     promised_update: datetime | None = None) -> dict[str, Any]:
        """The deadline changes a staff ``action`` makes, ``status`` being where it leaves the case.

        See the module docstring for which actions count as contact; ``promised_update`` is an explicit
        time the staff member gave the customer for the next news, instead of ``next_update`` from now.
        """
        changes: dict[str, Any] = {}
        priority = case.fields.get("priority") or "normal"
        # A proposal held for approval is unseen; anything else said while it waits reaches the customer.
        reached = action in CONTACT_ACTIONS and not (action is Action.PROPOSE and status == Status.AWAITING_APPROVAL)
        if reached:
            if case.first_contacted_at is None:
                changes["first_contacted_at"] = at
            if case.first_contact_due is not None:
                changes["first_contact_due"] = None
            changes["next_update_due"] = promised_update or self.due("next_update", at, priority)
        if action is Action.REOPEN:
            changes |= self.reopened(at, priority)
        if status in NOTHING_OWED:
            changes |= dict.fromkeys(DEADLINES.values())
        return {key: value for key, value in changes.items() if key.endswith("_at") or getattr(case, key) != value}


def promise_outcome(case: CaseRecord, events: Sequence[CaseEventRecord], deadline: str, now: datetime, *,
                    done: datetime | None = None) -> str:
    """"kept", "missed", "pending" or "none" for a case's first_contact or resolution promise.

    Missed: a deadline escalation on the timeline, or still unkept past its due (the scanner may not have
    run yet). Kept: done (first contact made / resolved, or ``done`` when the caller counts another moment,
    such as a reasoned rejection) with no such escalation. The due columns alone cannot say it, because a
    kept promise leaves its column and a missed one is rescheduled.
    """
    column = DEADLINES[deadline]
    if done is None:
        done = case.first_contacted_at if deadline == "first_contact" else case.resolved_at
    due: datetime | None = getattr(case, column)
    escalated = any(event.kind in (ESCALATED, STILL_OVERDUE) and event.data.get("deadline") == deadline
                    for event in events)
    if escalated or (done is None and due is not None and due <= now):
        return "missed"
    if done is not None:
        return "kept"
    return "pending" if due is not None else "none"


# --------------------------------------------------------------------------- the scanner

# The promises the customer was given in words (the intake script: contact and news within 24 h), so
# missing one is theirs to hear about. The resolution target is internal: they were never told it.
CUSTOMER_PROMISES = frozenset({"first_contact", "next_update"})
# Audiences reached in a person's private chat, where staff buttons do not work (groups only).
PRIVATE_AUDIENCES = frozenset({"owner", "manager"})


@dataclass(frozen=True)
class ScanAction:
    """One thing a scan did: warned, escalated, still_overdue (reminded at the top level) or cleared."""

    number: str
    kind: str
    deadline: str
    level: int
    due: datetime


@dataclass
class ScanResult:
    actions: list[ScanAction] = field(default_factory=list)
    conflicts: int = 0
    """Cases someone else changed first (another scanner, a staff action): left for them / the next scan."""

    def count(self, kind: str) -> int:
        return sum(action.kind == kind for action in self.actions)


@dataclass(frozen=True)
class _Delivery:
    audience: str  # "owner" | "mall" | "manager" | "escalation"
    channel: str
    target: str


class DeadlineScanner:
    """Warns before and escalates after deadlines; safe to run in several processes at once."""

    def __init__(self, store: Store, catalog: Catalog, settings: Settings, renderer: Renderer | None = None, *,
                 policy: DeadlinePolicy | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_outbox: Callable[[], None] = lambda: None, batch: int = 500) -> None:
        self.store = store
        self.catalog = catalog
        self.renderer = renderer or Renderer()
        self.policy = policy or DeadlinePolicy.from_settings(settings)
        self.clock = clock
        self.on_outbox = on_outbox
        self.batch = batch
        self.interval = settings.deadline_scan_seconds
        self.fallback = _groups(settings.fallback_telegram_chat, settings.fallback_wecom_key)
        self.escalation = _groups(settings.escalation_telegram_chat, settings.escalation_wecom_key)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """`kesu serve`: scan every ``interval`` seconds until cancelled; a failing pass is logged, not fatal."""
        if self.interval <= 0:
            return
        while True:
            try:
                result = await asyncio.to_thread(self.scan)
                if result.actions:
                    log.info("deadline scan: %d warned, %d escalated, %d reminded", result.count(WARNED),
                             result.count(ESCALATED), result.count(STILL_OVERDUE))
            except Exception:
                log.exception("deadline scan failed")
            await asyncio.sleep(self.interval)

    def scan(self, now: datetime | None = None) -> ScanResult:
        """One pass over the cases with a deadline passed, or within the warning lead and not warned for."""
        now = now or self.clock()
        result = ScanResult()
        seen: set[int] = set()
        limit = self.batch
        while True:
            due = self.store.cases_due(now=now, warn_until=now + self.policy.warning_lead, limit=limit)
            fresh = [case for case in due if case.id not in seen]
            for case in fresh:
                seen.add(case.id)
                self._work(case, now, result)
            if len(due) < limit:
                break
            # A full batch may hide more cases behind it. The ones acted on leave the ranges (warned,
            # rescheduled or cleared); a case someone else changed first may stay: when a batch brought
            # nothing new, look further (bounded).
            if not fresh:
                if limit >= self.batch * MAX_BATCH_GROWTH:
                    break
                limit *= 2
        if any(action.kind != "cleared" for action in result.actions):
            self.on_outbox()
        return result

    def _work(self, case: CaseRecord, now: datetime, result: ScanResult) -> None:
        current: CaseRecord | None = case
        for _ in range(len(DEADLINES) * 2):  # each step moves a deadline out of reach, so this ends
            if current is None:
                result.conflicts += 1
                return
            step = self._next_step(current, now)
            if step is None:
                return
            kind, deadline = step
            with self.store.unit_of_work() as uow:
                if kind == "cleared":
                    current = self._clear(uow, current, deadline, now, result)
                elif kind == WARNED:
                    current = self._warn(uow, current, deadline, now, result)
                else:
                    current = self._escalate(uow, current, deadline, now, result)

    def _next_step(self, case: CaseRecord, now: datetime) -> tuple[str, str] | None:
        dues = sorted((due, name) for name, column in DEADLINES.items()
                      if (due := getattr(case, column)) is not None)
        for _due, name in dues:
            if self._stale(case, name):
                return "cleared", name
        overdue = [name for due, name in dues if due <= now]
        if overdue:
            return ESCALATED, overdue[0]
        for due, name in dues:
            warned = getattr(case, CASE_WARNED_DUES[DEADLINES[name]])
            if due <= now + self.policy.warning_lead and warned != due:
                return WARNED, name
        return None

    @staticmethod
    def _stale(case: CaseRecord, deadline: str) -> bool:
        """A deadline left on a case that owes nothing more (set by code that predates the rules)."""
        if deadline == "first_contact" and case.first_contacted_at is not None:
            return True
        return case.status in NOTHING_OWED

    # ------------------------------------------------------------------ the three steps

    def _clear(self, uow: UnitOfWork, case: CaseRecord, deadline: str, now: datetime,
               result: ScanResult) -> CaseRecord | None:
        due = getattr(case, DEADLINES[deadline])
        updated = uow.update_case(case_id=case.id, expected_status=None, expected_version=case.version,
                                  changes={DEADLINES[deadline]: None}, event=None, at=now)
        if updated is not None:
            result.actions.append(ScanAction(case.number, "cleared", deadline, case.escalation_level, due))
        return updated

    def _warn(self, uow: UnitOfWork, case: CaseRecord, deadline: str, now: datetime,
              result: ScanResult) -> CaseRecord | None:
        due: datetime = getattr(case, DEADLINES[deadline])
        mall = self.catalog.mall(case.fields.get("mall") or "")
        owner_chat = _telegram_user(case.owner)
        deliveries = ([_Delivery("owner", "telegram", owner_chat)] if owner_chat
                      else self._to_groups("mall", [self._mall_groups(mall)]))
        data = {"deadline": deadline, "due": _iso(due), "level": case.escalation_level,
                "notified": sorted({d.audience for d in deliveries})}
        updated = uow.update_case(case_id=case.id, expected_status=None, expected_version=case.version,
                                  changes={CASE_WARNED_DUES[DEADLINES[deadline]]: due}, event=(WARNED, "kesu", data),
                                  at=now)
        if updated is None:
            return None
        minutes = max(int((due - now).total_seconds() // 60), 0)
        context = {"case": updated, "deadline": deadline, "due": due, "minutes_left": minutes,
                   "mall_name": mall.name if mall else updated.fields.get("mall"), "level": updated.escalation_level}
        self._enqueue(uow, updated, WARNED, "deadline/warning", context, deliveries, now)
        result.actions.append(ScanAction(case.number, WARNED, deadline, case.escalation_level, due))
        return updated

    def _escalate(self, uow: UnitOfWork, case: CaseRecord, deadline: str, now: datetime,
                  result: ScanResult) -> CaseRecord | None:
        column = DEADLINES[deadline]
        due: datetime = getattr(case, column)
        top = case.escalation_level >= TOP_LEVEL
        level = case.escalation_level if top else case.escalation_level + 1
        next_due = now + (self.policy.escalation_repeat if top else self.policy.escalation_step)
        mall = self.catalog.mall(case.fields.get("mall") or "")
        managers = self._managers(case)
        deliveries: list[_Delivery] = []
        owner_chat = _telegram_user(case.owner)
        if owner_chat:
            deliveries.append(_Delivery("owner", "telegram", owner_chat))
        if not top:
            deliveries += self._to_groups("mall", [self._mall_groups(mall)])
        if level == 1:  # the managers named in the groups' text also hear it in their own chat
            deliveries += [_Delivery("manager", "telegram", chat) for entry in managers
                           if (chat := _telegram_user(entry.id))]
        if level >= TOP_LEVEL:
            higher = self._to_groups("escalation", [mall.escalation if mall else StaffGroups(), self.escalation])
            if not higher and top:  # no escalation group anywhere: keep reminding the mall
                higher = self._to_groups("mall", [self._mall_groups(mall)])
            deliveries += higher
        deliveries = _unique(deliveries)
        kind = STILL_OVERDUE if top else ESCALATED
        tell_customer = not top and deadline in CUSTOMER_PROMISES
        data: dict[str, Any] = {"deadline": deadline, "due": _iso(due), "level": level, "next_due": _iso(next_due),
                                "notified": sorted({d.audience for d in deliveries}),
                                "managers": [entry.name for entry in managers], "customer_told": tell_customer}
        # The rescheduled due gets no warning: the escalation was the news.
        changes: dict[str, Any] = {column: next_due, CASE_WARNED_DUES[column]: next_due}
        if not top:
            changes["escalation_level"] = level
        updated = uow.update_case(case_id=case.id, expected_status=None, expected_version=case.version,
                                  changes=changes, event=(kind, "kesu", data), at=now)
        if updated is None:
            return None
        mall_name = mall.name if mall else updated.fields.get("mall")
        context = {"case": updated, "deadline": deadline, "due": due, "level": level, "repeat": top,
                   "next_due": next_due if level < TOP_LEVEL else None,
                   "managers": [{"name": entry.name, "role": entry.role} for entry in managers],
                   "mall_name": mall_name}
        self._enqueue(uow, updated, "escalation", "deadline/escalated", context, deliveries, now)
        if tell_customer:
            message = self.renderer.message("deadline/customer_escalated",
                                            {"case": updated, "deadline": deadline, "level": level,
                                             "mall_name": mall_name})
            push_to_customer(uow, updated, message, now)
        result.actions.append(ScanAction(case.number, kind, deadline, level, due))
        return updated

    # ------------------------------------------------------------------ who hears it

    def _mall_groups(self, mall: Mall | None) -> StaffGroups:
        return mall.staff if mall and mall.staff else self.fallback

    def _managers(self, case: CaseRecord) -> list[StaffEntry]:
        mall_id = case.fields.get("mall")
        found = [entry for entry in self.catalog.staff if entry.role in MANAGER_ROLES and entry.serves(mall_id)]
        return sorted(found, key=lambda entry: (MANAGER_ROLES.index(entry.role), "*" in entry.malls, entry.name))

    @staticmethod
    def _to_groups(audience: str, groups: Sequence[StaffGroups]) -> list[_Delivery]:
        return ([_Delivery(audience, "telegram", str(chat)) for g in groups for chat in g.telegram]
                + [_Delivery(audience, "wecom", key) for g in groups for key in g.wecom])

    def _enqueue(self, uow: UnitOfWork, case: CaseRecord, kind: str, template: str, context: dict[str, Any],
                 deliveries: Sequence[_Delivery], now: datetime) -> None:
        texts: dict[str, str] = {}
        for delivery in deliveries:
            if delivery.audience not in texts:
                rendered = self.renderer.render(template, {**context, "audience": delivery.audience})
                texts[delivery.audience] = mask_mobiles(rendered)
            buttons: tuple[tuple[Button, ...], ...] = ()
            if delivery.channel == "telegram" and delivery.audience not in PRIVATE_AUDIENCES:  # /case in one tap
                buttons = ((Button(self.renderer.button_label(VIEW), f"{VIEW}:{case.number}"),),)
            message = OutboundMessage(texts[delivery.audience], buttons)
            uow.enqueue(kind=kind, channel=delivery.channel, target=delivery.target, payload=message.as_payload(),
                        case_id=case.id, at=now)
        if not deliveries:
            log.warning("case %s: %s with nobody to tell (no owner chat, no staff, fallback or escalation group)",
                        case.number, kind)


def _groups(telegram: int | None, wecom: str | None) -> StaffGroups:
    return StaffGroups(telegram=(telegram,) if telegram else (), wecom=(wecom,) if wecom else ())


def _telegram_user(owner: str | None) -> str | None:
    channel, _, user = (owner or "").partition(":")
    return user if channel == "telegram" and user else None


def _unique(deliveries: Iterable[_Delivery]) -> list[_Delivery]:
    """One message per chat: the first audience that names it wins (owner, mall, manager, escalation).

    So a manager who owns the case gets the owner's text, once.
    """
    seen: dict[tuple[str, str], _Delivery] = {}
    for delivery in deliveries:
        seen.setdefault((delivery.channel, delivery.target), delivery)
    return list(seen.values())
