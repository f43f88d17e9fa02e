"""How long one deadline-scanner pass takes over 100 000 open cases, on SQLite and PostgreSQL.

What it measures
    For each backend (a SQLite file in a temp dir; a fresh ``kesu_bench_<random>`` PostgreSQL
    database, dropped afterwards) the schema is migrated, then filled with ``--open`` open cases
    (default 100 000) that all owe something, plus ``--finished`` done ones (default 20 000), with
    Core ``executemany`` in transactions of ``--chunk`` rows, not one ``open_case`` per row. The rows
    look like what intake and staff leave behind: a KS number from the per-day counter (and the
    counters), the intake fields (name, phone, mall, brand, amount, dates, description,
    expectation, priority), a transcript of ~12 lines, owner, nature, solution, milestones,
    ``escalation_level`` and a ``version`` that counts the changes, and a timeline in
    ``case_events`` (opened, claimed, staff actions, earlier escalations). Only the
    ``conversation_id`` points nowhere (no conversations rows: the scanner never reads them).

    The open cases: 25 % new (first-contact due 24 h after opening, resolution 7 days), the rest
    claimed and in progress (owner on Telegram, contacted, next update due, resolution 7 days after
    opening). Their earliest deadline is spread over four buckets:
      overdue   ``--due`` (default 1 %), overdue by up to 12 h (a backlog: the scanner was down, or
                nobody acted); a quarter of the in-progress ones on the resolution, 30 % of the
                others escalated before (level 1 or 2, with the ``escalated`` events whose
                rescheduling is the due now missed again);
      warn      ``--warn`` (default 0.5 %), inside the scanner's 2 h warning lead, not warned yet;
      warned    ``--warned`` (default: lead / 24 h of the rest, ~8.2 %, what a uniform spread of the
                next day's deadlines puts inside the lead), inside the lead and already warned by an
                earlier pass (the ``deadline_warning`` event on the timeline, the ``<deadline>_warned_due``
                marker on the row): the steady state, each waiting from its warning until its due;
      later     the rest, due later within the next 24 h.
    The finished ones are closed, rejected or in follow-up with their deadlines cleared, except
    10 % of the closed, which keep stale past deadlines (the partial indexes must skip them). The
    catalog is the demo one with a Telegram staff group, a WeCom robot and an escalation group per
    mall and a store and deputy store manager each, so every warning and escalation has people to
    tell (the escalation messages name the managers).

    Then, with the clock at a fixed ``now``:
      cases_due          ``Store.cases_due(now, limit=500)`` ``--repeats`` times (p50, min, max; the
                         rows it returned), also with ``warn_until`` = ``now`` + 2 h (what the scanner
                         asks: the warning lead) and at ``now`` + 30 days (every open case is due:
                         the query must still read only ~limit rows per deadline);
      query plan         the indexes the plan of the scanner's statement names (EXPLAIN / EXPLAIN
                         QUERY PLAN), and whether it scans the cases table;
      escalating pass    one ``DeadlineScanner.scan(now)`` by a scanner without a warning lead, so
                         it only escalates (the overdue cases, and reminds those at the top level):
                         wall time, what it did (warned, escalated, reminded, cleared, conflicts),
                         outbox messages queued (staff, the managers' private chats, customers), its
                         ``cases_due`` calls (and the rows they returned), their share of the time,
                         and the cost per case acted on;
      warning pass       then a scanner built like ``bot.app.build_scanner``: the escalated cases
                         are rescheduled out of reach, so it warns the cases inside the lead that
                         were not warned yet;
      no-op pass         the same scanner again right away: it should find nothing new (OK /
                         UNEXPECTED), so this is what ``kesu serve`` pays every
                         ``deadline_scan_seconds`` (60 s) in the steady state;
      fresh scanner      a new ``DeadlineScanner`` (another ``kesu serve`` process, a cron
                         ``kesu deadlines scan``, or one after a restart) at the same ``now``: the
                         warned state is on the rows, so it should cost what the no-op pass costs.

How to read it
    One process, loopback only, one thread: the scanner runs each case in its own transaction, so
    a pass that acts costs ~ (cases acted on) x (one small write transaction + rendering 1-3
    templates) on top of what a pass that does nothing costs. That no-op cost is what ``kesu serve``
    pays every 60 s. Warned cases have left the partial indexes ``cases_due`` reads for warnings,
    and escalated ones are rescheduled past the lead, so it is one ``cases_due`` call returning
    nothing, however many cases wait inside the lead (before migration 0004 they came back in every
    pass, four times over, and a fresh process read each one's timeline). ``cases_due`` itself is
    bounded by its ``limit``, not by the open cases: compare the ``now`` and ``now + 30 d`` rows.
    "ms per case" is the whole pass divided by the cases acted on; "writing + rendering" leaves out
    the ``cases_due`` calls.

    PostgreSQL gets an ANALYZE after the load (autovacuum would run one shortly after such a
    load); SQLite gets none, as in a deployment. Loading time is printed for information only.
    The database starts with a cold connection pool; Jinja templates are warmed up on a small
    in-memory run first. Figures are printed, never asserted.

    .venv/bin/python benchmarks/deadline_scan.py [--open 100000] [--finished 20000] [--due 0.01]
        [--warn 0.005] [--warned SHARE] [--repeats 20] [--backends sqlite,postgres]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from common import machine_line, unless_postgres_unreachable
from sqlalchemy import event, func, insert, make_url, select, text
from turn_throughput import DEFAULT_PG_URL, check_loopback, fresh_database, percentile

from bot.config import Settings
from bot.deadlines import ESCALATED, STILL_OVERDUE, WARNED, DeadlinePolicy, DeadlineScanner, ScanResult
from bot.templating import Renderer
from dialogs.catalog import Catalog, demo_catalog_path
from storage.case_numbers import format_case_number
from storage.models import CASE_WARNED_DUES, NATURES, case_counters, case_events, cases, outbox
from storage.repository import Store, shanghai_day

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai, no holiday near
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
WARNING_LEAD = 2 * HOUR  # Settings.deadline_warning_hours default; the buckets below are built around it
OVERDUE_SPAN = 12 * HOUR
ESCALATION_STEP = 8 * HOUR
HQ_CHAT = -1009999000001
SHANGHAI = ZoneInfo("Asia/Shanghai")

IN_PROGRESS = ("claimed", "verifying", "proposed", "awaiting_approval", "agreed", "reopened")
IN_PROGRESS_WEIGHTS = (30, 25, 12, 5, 18, 10)
# Staff actions on the timeline before a case reaches each status (after "claimed").
ACTIONS_BEFORE = {
    "claimed": ("progress",), "verifying": ("progress", "verify"), "proposed": ("verify", "progress", "propose"),
    "awaiting_approval": ("verify", "propose"), "agreed": ("verify", "propose", "agree"),
    "reopened": ("verify", "propose", "agree", "resolve", "reopen"),
    "follow_up": ("verify", "propose", "agree", "resolve"), "closed": ("verify", "propose", "agree", "resolve"),
    "rejected": ("verify", "reject"),
}
FINISHED: tuple[str, ...] = ("closed", "rejected", "follow_up")
FINISHED_WEIGHTS: tuple[int, ...] = (70, 10, 20)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = ["丽", "伟", "娜", "静", "磊", "敏", "强", "芳", "军", "洋", "秀英", "建国", "海燕", "志强", "晓东", "雪梅"]
BRANDS = ["顾家家居", "芝华仕", "索菲亚", "欧派", "慕思", "喜临门", "林氏家居", "全友家居", "方太", "老板电器"]
PRODUCTS = ["沙发", "床垫", "衣柜", "橱柜", "餐桌", "地板", "油烟机", "热水器", "书柜", "浴室柜"]
PROBLEMS = ["扶手开裂了", "中间塌陷", "门板掉漆", "有很重的异味", "抽屉关不上", "台面裂了", "漏水", "电机有异响",
            "表面起泡", "送来就是坏的"]
WANTS = ["exchange", "refund", "repair", "compensation", "return"]
ADDRESSES = ["上海市闵行区七莘路100弄5栋1201室", "北京市朝阳区建国路88号3栋502室", "南京市鼓楼区中山北路200号2栋301室",
             "杭州市西湖区文三路90号1单元602室", "重庆市江北区观音桥步行街8号2单元1703室"]


# ------------------------------------------------------------------------------------ catalog


def bench_catalog() -> Catalog:
    """The demo catalog, each mall with a staff group, a robot, an escalation group and two managers."""
    data = yaml.safe_load(demo_catalog_path().read_text(encoding="utf-8"))
    staff: list[dict[str, Any]] = []
    for n, mall in enumerate(data["malls"]):
        mall["staff"] = {"telegram": [-1001000000000 - n], "wecom": [f"bench-robot-{mall['id']}"]}
        mall["escalation"] = {"telegram": [-1002000000000 - n]}
        staff += [
            {"id": f"telegram:{300000 + n * 10 + k}", "name": f"{SURNAMES[(n * 3 + k) % len(SURNAMES)]}专员{k + 1}",
             "role": "specialist", "malls": [mall["id"]]} for k in range(4)
        ]
        staff.append({"id": f"telegram:{300000 + n * 10 + 8}", "name": f"{SURNAMES[n]}店长", "role": "store_manager",
                      "malls": [mall["id"]]})
        staff.append({"id": f"telegram:{300000 + n * 10 + 9}", "name": f"{SURNAMES[n + 12]}副店长",
                      "role": "deputy_store_manager", "malls": [mall["id"]]})
    data["staff"] = staff
    return Catalog.model_validate(data)


def bench_settings() -> Settings:
    return Settings(_env_file=None, escalation_telegram_chat=HQ_CHAT)


# ------------------------------------------------------------------------------------ the cases


@dataclass(frozen=True, slots=True)
class Plan:
    """What decides a case's row; the row itself (text, transcript, timeline) is built when it is inserted."""

    created_at: datetime
    status: str
    bucket: str  # "overdue" | "warn" | "warned" | "later" | "done"
    due: datetime | None  # the earliest deadline (open cases)
    on_resolution: bool  # in progress, and the earliest deadline is the resolution
    seed: int


def plan_cases(open_count: int, finished: int, due_share: float, warn_share: float, warned_share: float | None,
               seed: int) -> list[Plan]:
    """``warned_share`` None: as many as a uniform spread of the not-yet-due deadlines over the next day puts
    inside the warning lead (lead / 24 h of them)."""
    rng = random.Random(seed)
    n_due, n_warn = round(open_count * due_share), round(open_count * warn_share)
    remaining = open_count - n_due - n_warn
    n_warned = round(remaining * (WARNING_LEAD / DAY) if warned_share is None else open_count * warned_share)
    n_warned = min(n_warned, remaining)
    buckets = ["overdue"] * n_due + ["warn"] * n_warn + ["warned"] * n_warned + ["later"] * (remaining - n_warned)
    rng.shuffle(buckets)
    plans: list[Plan] = []
    for bucket in buckets:
        if bucket == "overdue":
            due = NOW - MINUTE - rng.random() * (OVERDUE_SPAN - MINUTE)
        elif bucket in ("warn", "warned"):
            due = NOW + MINUTE + rng.random() * (WARNING_LEAD - 2 * MINUTE)
        else:
            due = NOW + WARNING_LEAD + MINUTE + rng.random() * (DAY - WARNING_LEAD - MINUTE)
        if rng.random() < 0.25:
            plans.append(Plan(due - DAY, "new", bucket, due, False, rng.getrandbits(48)))
            continue
        status = rng.choices(IN_PROGRESS, IN_PROGRESS_WEIGHTS)[0]
        on_resolution = bucket == "overdue" and rng.random() < 0.25
        created = due - 7 * DAY if on_resolution else NOW - DAY - rng.random() * 4.5 * DAY
        plans.append(Plan(created, status, bucket, due, on_resolution, rng.getrandbits(48)))
    for _ in range(finished):
        created = NOW - 8 * DAY - rng.random() * 82 * DAY
        status = rng.choices(FINISHED, FINISHED_WEIGHTS)[0]
        plans.append(Plan(created, status, "done", None, False, rng.getrandbits(48)))
    plans.sort(key=lambda plan: plan.created_at)  # ids (and per-day counters) in order of opening, as in real life
    return plans


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _phone(rng: random.Random) -> str:
    return f"1{rng.choice('35789')}{rng.randrange(10**9):09d}"


class RowBuilder:
    """Turns plans into ``cases`` and ``case_events`` rows; ids are assigned in plan order from 1."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.specialists = {mall.id: [s for s in catalog.staff if s.role == "specialist" and s.serves(mall.id)]
                            for mall in catalog.malls}
        self.counters: Counter[str] = Counter()

    def rows(self, case_id: int, plan: Plan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rng = random.Random(plan.seed)
        mall = rng.choice(self.catalog.malls)
        created = plan.created_at
        day = shanghai_day(created)
        self.counters[f"{day:%y%m%d}"] += 1
        number = format_case_number(day, self.counters[f"{day:%y%m%d}"])
        name, phone = rng.choice(SURNAMES) + rng.choice(GIVEN), _phone(rng)
        brand, product, problem = rng.choice(BRANDS), rng.choice(PRODUCTS), rng.choice(PROBLEMS)
        wants = rng.sample(WANTS, rng.choice((1, 1, 2)))
        amount = Decimal(rng.choice((899, 3500, 4500, 8999, 12800, 23800, 35000)))
        purchased = created.date() - timedelta(days=rng.randrange(20, 400))
        address = rng.choice(ADDRESSES)
        channel = rng.choice(("telegram", "telegram", "wechat", "web"))
        customer_id = str(5_000_000_000 + plan.seed % 1_000_000_000) if channel == "telegram" else f"o{plan.seed:012x}"
        urgency = rng.choice(("希望尽快处理", "已经找过店里两次", "很着急"))
        description = f"{brand}{product}{problem}，电话{phone}，{urgency}"
        transcript = _transcript(rng, created, name, phone, mall.name, brand, product, problem, address, purchased)
        events: list[dict[str, Any]] = [
            {"case_id": case_id, "kind": "opened", "actor": "customer", "data": {"channel": channel},
             "created_at": created}]
        row: dict[str, Any] = {
            "id": case_id, "number": number, "status": plan.status, "channel": channel, "customer_id": customer_id,
            "conversation_id": case_id, "created_at": created, "updated_at": created,
            "name": name, "phone": phone, "city": mall.city, "mall": mall.id, "amount": amount,
            "purchase_date": purchased, "brand": brand,
            "delivery_date": purchased + timedelta(days=rng.randrange(3, 20)),
            "delivery_address": address, "order_no": f"SO{created:%Y}{phone[-6:]}", "over_warranty": False,
            "priority": _priority(rng.random()), "description": description,
            "expectation": wants, "transcript": transcript,
            "owner": None, "owner_name": None, "claimed_at": None, "unrouted": False, "nature": None, "solution": None,
            "first_contact_due": None, "next_update_due": None, "resolution_due": None,
            **dict.fromkeys(CASE_WARNED_DUES.values()),
            "first_contacted_at": None, "resolved_at": None, "closed_at": None, "satisfaction": None,
            "escalation_level": 0, "version": 2,  # opened, then its deadlines set (IntakeService._open_case)
        }
        if plan.status == "new":
            assert plan.due is not None
            row |= {"first_contact_due": plan.due, "resolution_due": created + 7 * DAY}
            self._warned_before(rng, row, events, "first_contact", plan)
            return row, events
        # Claimed, and worked on since.
        owner = rng.choice(self.specialists[mall.id])
        claimed_at = created + MINUTE * rng.randrange(5, 90)
        row |= {"owner": owner.id, "owner_name": owner.name, "claimed_at": claimed_at, "version": row["version"] + 1}
        events.append({"case_id": case_id, "kind": "claimed", "actor": owner.id, "data": {"owner_name": owner.name},
                       "created_at": claimed_at})
        at = claimed_at
        actions = ACTIONS_BEFORE[plan.status]
        limit = (plan.due - DAY) if plan.due is not None else NOW - DAY
        for action in actions:
            at = min(at + MINUTE * rng.randrange(20, 600), max(limit, at + MINUTE))
            data: dict[str, Any] = {"by": owner.name}
            if action in ("progress", "propose", "resolve", "reject"):
                data["text"] = rng.choice(("已联系顾客，约好周六上门查看", "厂家师傅已确认质量问题，等配件",
                                           "同意更换同款新品，三天内送货", "已与顾客电话沟通，顾客同意方案"))
            events.append({"case_id": case_id, "kind": action, "actor": owner.id, "data": data, "created_at": at})
            row["version"] += 1
        # Every status past "claimed" was reached by an action that talks to the customer (see ACTIONS_BEFORE).
        row["first_contacted_at"] = claimed_at + MINUTE * rng.randrange(10, 600)
        if "verify" in actions:
            row["nature"] = rng.choice(NATURES)
        if "propose" in actions:
            codes = [w for w in wants if w != "return"] or ["repair"]
            money = any(code in ("refund", "compensation") for code in codes)
            row["solution"] = {"codes": codes, "amount": str(amount / 10) if money else None,
                               "text": "更换同款新品，并补偿运费", "proposed_by": owner.name,
                               "approved_by": None if plan.status == "awaiting_approval" else f"{mall.city}店长"}
        row["updated_at"] = at
        if plan.bucket == "done":
            row |= self._finished(rng, plan, row, at)
            if plan.status == "closed":
                events.append({"case_id": case_id, "kind": "close", "actor": owner.id, "data": {"by": owner.name},
                               "created_at": row["closed_at"]})
                row["version"] += 1
            return row, events
        assert plan.due is not None
        if plan.on_resolution:
            row["resolution_due"] = plan.due
            row["next_update_due"] = NOW + WARNING_LEAD + MINUTE + rng.random() * (DAY - WARNING_LEAD - MINUTE)
        else:
            row["resolution_due"] = created + 7 * DAY
            row["next_update_due"] = plan.due
        if not plan.on_resolution:
            self._earlier_escalation(rng, row, events, plan)
        self._warned_before(rng, row, events, "next_update", plan)
        return row, events

    @staticmethod
    def _finished(rng: random.Random, plan: Plan, row: dict[str, Any], at: datetime) -> dict[str, Any]:
        resolved = at + HOUR * rng.randrange(1, 48)
        changes: dict[str, Any] = {"resolved_at": resolved, "updated_at": resolved,
                                   "first_contacted_at": row["first_contacted_at"] or row["claimed_at"] + HOUR}
        if plan.status == "closed":
            changes |= {"closed_at": resolved + DAY, "updated_at": resolved + DAY, "satisfaction": rng.randint(3, 5)}
            if rng.random() < 0.10:  # written by code that predates the rules: the indexes must skip these
                changes |= {"next_update_due": resolved - HOUR, "resolution_due": plan.created_at + 7 * DAY}
        elif plan.status == "rejected":
            changes |= {"resolved_at": None, "closed_at": resolved}
        return changes

    @staticmethod
    def _warned_before(rng: random.Random, row: dict[str, Any], events: list[dict[str, Any]], deadline: str,
                       plan: Plan) -> None:
        """A case inside the warning lead that an earlier pass warned about: the timeline says so."""
        if plan.bucket != "warned":
            return
        assert plan.due is not None
        at = max(plan.due - WARNING_LEAD + rng.random() * MINUTE, row["updated_at"])
        events.append({"case_id": row["id"], "kind": WARNED, "actor": "kesu",
                       "data": {"deadline": deadline, "due": _iso(plan.due), "level": row["escalation_level"],
                                "notified": ["owner"] if row["owner"] else ["mall"]},
                       "created_at": at})
        row[CASE_WARNED_DUES[f"{deadline}_due"]] = plan.due
        row["version"] += 1
        row["updated_at"] = at

    @staticmethod
    def _earlier_escalation(rng: random.Random, row: dict[str, Any], events: list[dict[str, Any]],
                            plan: Plan) -> None:
        """Some next updates were missed before: the planned due is then the last escalation's rescheduling."""
        assert plan.due is not None
        share = {"overdue": 0.3, "warn": 0.05}.get(plan.bucket, 0.0)
        if rng.random() >= share:
            return
        level = 1 if rng.random() < 0.67 or plan.bucket == "warn" else 2
        first_missed = plan.due - ESCALATION_STEP * level
        if first_missed <= row["updated_at"]:
            return
        row["escalation_level"] = level
        row["version"] += level
        for step in range(1, level + 1):
            missed = first_missed + ESCALATION_STEP * (step - 1)
            events.append({"case_id": row["id"], "kind": ESCALATED, "actor": "kesu",
                           "data": {"deadline": "next_update", "due": _iso(missed), "level": step,
                                    "next_due": _iso(missed + ESCALATION_STEP), "notified": ["mall", "owner"],
                                    "managers": [], "customer_told": True},
                           "created_at": missed})
            row["updated_at"] = missed
        row["next_update_warned_due"] = plan.due  # the last escalation's rescheduling: no warning for it


def _priority(draw: float) -> str:
    return "normal" if draw < 0.85 else "important" if draw < 0.97 else "major"


def _transcript(rng: random.Random, at: datetime, name: str, phone: str, mall: str, brand: str, product: str,
                problem: str, address: str, purchased: date) -> list[dict[str, str]]:
    lines = [
        ("customer", "你好"),
        ("kesu", "您好，这里是红星美凯龙400客诉中心。请问您遇到了什么问题？"),
        ("customer", f"我叫{name}，电话{phone}，在{mall}买的{brand}{product}，{problem}"),
        ("kesu", f"好的，{name[0]}先生/女士，已记录：{brand}{product}，{problem}。请问是什么时候购买的？"),
        ("customer", f"{purchased.year}年{purchased.month}月{purchased.day}号买的"),
        ("kesu", "请问送货地址是？"),
        ("customer", f"送到{address}"),
        ("kesu", "请问您希望如何处理？"),
        ("customer", rng.choice(("要求换货", "希望退款", "请派人上门维修", "要求赔偿"))),
        ("kesu", f"请核对：{name}，{phone}，{mall}，{brand}{product}，{problem}。无误请回复“确认”。"),
        ("customer", "确认"),
        ("kesu", "已为您登记投诉，我们将在24小时内与您联系，并在24小时内告知您投诉处理进展。"),
    ]
    return [{"role": role, "text": line, "at": (at - MINUTE * (len(lines) - n)).isoformat()}
            for n, (role, line) in enumerate(lines)]


@dataclass
class Rows:
    """Every row to load, built once and loaded into each backend: (cases, events) per transaction."""

    chunks: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]
    counters: dict[str, int]
    build_s: float

    @property
    def cases(self) -> int:
        return sum(len(case_rows) for case_rows, _ in self.chunks)

    @property
    def events(self) -> int:
        return sum(len(event_rows) for _, event_rows in self.chunks)


def build_rows(plans: Sequence[Plan], catalog: Catalog, chunk: int) -> Rows:
    """All rows, kept for every backend. They are a million long-lived objects: built with the collector
    off, then frozen (``gc.freeze``) so that collections during the measurements do not walk them."""
    started = time.perf_counter()
    builder = RowBuilder(catalog)
    chunks = []
    gc.disable()
    try:
        for start in range(0, len(plans), chunk):
            case_rows: list[dict[str, Any]] = []
            event_rows: list[dict[str, Any]] = []
            for offset, plan in enumerate(plans[start:start + chunk]):
                row, timeline = builder.rows(start + offset + 1, plan)
                case_rows.append(row)
                event_rows += timeline
            chunks.append((case_rows, event_rows))
    finally:
        gc.freeze()
        gc.enable()
    return Rows(chunks, dict(builder.counters), time.perf_counter() - started)


def load_cases(store: Store, rows: Rows) -> float:
    """Bulk insert: one executemany per table per transaction; the seconds it took."""
    started = time.perf_counter()
    for case_rows, event_rows in rows.chunks:
        with store.engine.begin() as conn:
            conn.execute(insert(cases), case_rows)
            conn.execute(insert(case_events), event_rows)
    with store.engine.begin() as conn:
        conn.execute(insert(case_counters), [{"day": day, "last_value": last} for day, last in rows.counters.items()])
        if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them, as inserts would have
            for table in ("cases", "case_events"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------ measuring


def time_calls(function: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Milliseconds of each call, sorted, and the last result."""
    result: Any = None
    times: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times), result


def plan_summary(store: Store, now: datetime, warn_until: datetime, limit: int) -> str:
    """The indexes the plan of the scanner's statement names, and whether it reads the whole cases table."""
    captured: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", grab)
    try:
        store.cases_due(now=now, warn_until=warn_until, limit=limit)
    finally:
        event.remove(store.engine, "before_cursor_execute", grab)
    statement, parameters = captured[-1]
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters).all()
    plan = "\n".join(str(row[-1]) if sqlite else str(row[0]) for row in rows)
    indexes = sorted(set(re.findall(r"ix_cases_\w+", plan)))
    full = ("Seq Scan on cases" in plan) if not sqlite else bool(re.search(r"SCAN cases(?! USING)", plan))
    return f"{', '.join(indexes) or 'no index'}; {'FULL SCAN of cases' if full else 'no full scan of cases'}"


@dataclass
class PassFigures:
    label: str
    wall_s: float
    result: ScanResult
    outbox_added: int
    due_calls: int
    due_rows: int
    due_s: float

    def acted_cases(self) -> int:
        return len({action.number for action in self.result.actions})


def counted_pass(label: str, scanner: DeadlineScanner, store: Store, now: datetime) -> PassFigures:
    """One scan with its ``cases_due`` calls counted and timed (wrapping this store only)."""
    calls = {"due": 0, "due_rows": 0, "due_s": 0.0}
    plain_due = store.cases_due

    def cases_due(**kwargs: Any) -> Any:
        started = time.perf_counter()
        rows = plain_due(**kwargs)
        calls["due_s"] += time.perf_counter() - started
        calls["due"] += 1
        calls["due_rows"] += len(rows)
        return rows

    before = outbox_count(store)
    store.cases_due = cases_due  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        result = scanner.scan(now)
        wall = time.perf_counter() - started
    finally:
        del store.cases_due  # back to the class's method
    return PassFigures(label, wall, result, outbox_count(store) - before, int(calls["due"]), int(calls["due_rows"]),
                       calls["due_s"])


def outbox_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())


def print_pass(figures: PassFigures, expect_nothing: bool) -> None:
    r = figures.result
    acted = figures.acted_cases()
    line = (f"  {figures.label:<16}{figures.wall_s * 1000:>10.1f} ms  warned {r.count(WARNED):>5}  escalated "
            f"{r.count(ESCALATED):>5}  reminded {r.count(STILL_OVERDUE):>4}  cleared {r.count('cleared'):>3}  "
            f"conflicts {r.conflicts}  outbox +{figures.outbox_added}")
    if expect_nothing:
        line += "  " + ("OK (nothing new)" if not r.actions and not figures.outbox_added
                        else f"UNEXPECTED: {len(r.actions)} actions")
    print(line)
    detail = f"    cases_due x{figures.due_calls} ({figures.due_rows} rows) {figures.due_s * 1000:.1f} ms"
    if acted:
        rest = figures.wall_s - figures.due_s
        detail += (f"; {acted} cases acted on: {figures.wall_s / acted * 1000:.2f} ms per case "
                   f"({rest / acted * 1000:.2f} ms of it writing + rendering)")
    print(detail)


def warm_up(catalog: Catalog, renderer: Renderer) -> None:
    """Compile the deadline templates and import what a scan touches, on a small in-memory database."""
    store = Store.from_url("sqlite://", migrate=True)
    try:
        load_cases(store, build_rows(plan_cases(400, 20, 0.05, 0.05, None, seed=999), catalog, chunk=1000))
        DeadlineScanner(store, catalog, bench_settings(), renderer, clock=lambda: NOW).scan(NOW)
    finally:
        store.close()


def run_backend(url: str, rows: Rows, catalog: Catalog, renderer: Renderer, args: argparse.Namespace) -> None:
    store = Store.from_url(url, migrate=True)
    try:
        load_s = load_cases(store, rows)
        print(f"  loaded in {load_s:.1f} s ({rows.cases / load_s:.0f} cases/s with their events, "
              f"{len(rows.chunks)} transactions)")

        print(f"  {'cases_due(limit=500)':<38}{'p50 ms':>8} {'min':>7} {'max':>7}  rows")
        for label, at, warn_until in (("now", NOW, NOW), ("now, warn 2 h ahead (the scanner's)", NOW,
                                                          NOW + WARNING_LEAD),
                                      ("now + 30 d (every open case)", NOW + 30 * DAY, NOW + 30 * DAY)):
            times, found = time_calls(partial(store.cases_due, now=at, warn_until=warn_until, limit=500),
                                      args.repeats)
            print(f"  {label:<38}{percentile(times, 50):>8.2f} {times[0]:>7.2f} {times[-1]:>7.2f}  {len(found)}")
        print(f"  query plan: {plan_summary(store, NOW, NOW + WARNING_LEAD, 500)}")

        # Without a warning lead a scanner only escalates: the overdue cases, and nothing else.
        overdue_only = DeadlineScanner(store, catalog, bench_settings(), renderer, clock=lambda: NOW,
                                       policy=replace(DeadlinePolicy.from_settings(bench_settings()),
                                                      warning_lead=timedelta(0)))
        print_pass(counted_pass("escalating pass", overdue_only, store, NOW), expect_nothing=False)
        scanner = DeadlineScanner(store, catalog, bench_settings(), renderer, clock=lambda: NOW)
        print_pass(counted_pass("warning pass", scanner, store, NOW), expect_nothing=False)
        print_pass(counted_pass("no-op pass", scanner, store, NOW), expect_nothing=True)
        fresh = DeadlineScanner(store, catalog, bench_settings(), renderer, clock=lambda: NOW)
        print_pass(counted_pass("fresh scanner", fresh, store, NOW), expect_nothing=True)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--open", type=int, default=100_000, help="open cases, each owing something (default 100000)")
    parser.add_argument("--finished", type=int, default=20_000,
                        help="closed, rejected and follow-up cases besides them (default 20000)")
    parser.add_argument("--due", type=float, default=0.01, help="share of open cases overdue at now (default 0.01)")
    parser.add_argument("--warn", type=float, default=0.005,
                        help="share of open cases due within the 2 h warning lead, not warned yet (default 0.005)")
    parser.add_argument("--warned", type=float, default=None,
                        help="share of open cases due within the lead and already warned by an earlier pass "
                             "(default: what a uniform spread over the next 24 h puts there, ~8.2%%)")
    parser.add_argument("--repeats", type=int, default=20, help="cases_due calls per row (default 20)")
    parser.add_argument("--chunk", type=int, default=10_000, help="cases per loading transaction (default 10000)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (loopback only); a fresh "
                        "database is created on it per backend run and dropped afterwards")
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    if args.due + args.warn > 1:
        parser.error("--due plus --warn must not exceed 1")

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "postgres" in backends:
        check_loopback(args.pg_url)
    catalog, renderer = bench_catalog(), Renderer()
    warm_up(catalog, renderer)
    plans = plan_cases(args.open, args.finished, args.due, args.warn, args.warned, args.seed)
    buckets = Counter(plan.bucket for plan in plans)
    statuses = Counter(plan.status for plan in plans if plan.bucket != "done")

    print("Kesu deadline scan: DeadlineScanner.scan over open cases, one transaction per case acted on")
    print(machine_line())
    print(f"python {sys.version.split()[0]}, {args.open} open cases: {buckets['overdue']} overdue, {buckets['warn']} "
          f"within the 2 h warning lead and not warned yet, {buckets['warned']} within it and warned by an earlier "
          f"pass, {buckets['later']} due later in the day; {args.finished} finished; now = "
          f"{NOW.isoformat()} ({NOW.astimezone(SHANGHAI):%Y-%m-%d %H:%M} Shanghai), seed {args.seed}")
    print("open statuses: " + ", ".join(f"{status} {count}" for status, count in statuses.most_common()))
    rows = build_rows(plans, catalog, args.chunk)
    print(f"rows: {rows.cases} cases and {rows.events} timeline events, built once in {rows.build_s:.1f} s and "
          "loaded into each backend")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kesu-bench-") as tmp:
        for backend in backends:
            print()
            where = "file in a temp dir" if backend == "sqlite" else f"fresh database on {make_url(args.pg_url).host}"
            print(f"{backend} ({where})")
            with unless_postgres_unreachable(backend, args.pg_url), \
                    fresh_database(backend, args.pg_url, Path(tmp)) as url:
                run_backend(url, rows, catalog, renderer, args)
    print()
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
