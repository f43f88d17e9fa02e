"""Throughput and latency of full persisted turns through ``IntakeService.handle``.

What it measures
    A turn here is what a channel adapter triggers: ``IntakeService.handle`` = one transaction
    holding the inbound message (its retry check), the conversation load, extraction + dialog
    step, reply rendering, the new state, the replies, and on the last turn the case, its events
    and the transcript. N simulated customers (default 200) each run a scripted 6-8 turn
    conversation that ends with "确认" and opens a case. Scripts are generated from the demo
    catalog with a fixed seed, so every run sends the same text.

    For each backend (a SQLite file in a temp dir; a fresh ``kesu_bench_<random>`` PostgreSQL
    database, dropped afterwards) and each mode (sequential, then 4 and 16 threads; a thread runs
    whole conversations, one customer at a time), it reports turns/s (turns / wall time), p50/p99
    per-turn latency and the cases opened, then counts the stored cases with
    ``Store.list_cases`` and prints OK or MISMATCH.

    Next to each full run, in the same database, the storage floor with no Python dialog work:
      bare       one ``Store.unit_of_work()``: record_inbound + save_conversation (small state,
                 insert then compare-and-swap update) + record_outbound — the write every turn does;
      bare+read  the same plus separate read connections for ``replies_for`` and
                 ``load_conversation`` (how ``handle()`` read before it moved its reads into the
                 turn's transaction; kept as a reference point).
    ``full/bare`` near 1 means storage is the limit; a large ratio means Python (extraction,
    dialog, pydantic, Jinja) is. Compare with bare+read to see what the dialog layer adds on top
    of the same round trips.

    Finally "where the time goes": one more sequential run on a fresh database with the service's
    collaborators wrapped in timers (``step``, ``extract`` inside it, ``Renderer.render``, the
    store's reads and the ``unit_of_work`` transaction), averaged per turn in µs.

How to read it
    All numbers are from one process on loopback; with CPython's GIL, threads only overlap I/O
    waits (PostgreSQL round trips, SQLite fsync/lock waits), not Python work, so threaded
    turns/s above the sequential figure means the backend was waiting, not computing.
    Python is warmed up before timing (templates compiled, alias indexes built); each database
    starts empty with a cold connection pool.

    .venv/bin/python benchmarks/turn_throughput.py [--customers 200] [--threads 4,16]
        [--backends sqlite,postgres] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from common import machine_line, unless_postgres_unreachable
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.pool import NullPool

import bot.service
import dialogs.engine
from bot.service import InboundMessage, IntakeService
from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from storage.repository import CaseRecord, ConversationRecord, MessageRecord, Store, UnitOfWork

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
T0 = datetime.fromisoformat("2026-11-22T14:30:00+08:00")
TURN_GAP = timedelta(seconds=40)

# ------------------------------------------------------------------------------------ scripts

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = ["丽", "伟", "娜", "静", "磊", "敏", "强", "芳", "军", "洋", "秀英", "建国", "海燕", "志强", "晓东", "雪梅"]
PRODUCTS = ["沙发", "床垫", "衣柜", "橱柜", "餐桌", "地板", "油烟机", "热水器", "书柜", "浴室柜"]
PROBLEMS = ["扶手开裂了", "中间塌陷", "门板掉漆", "有很重的异味", "抽屉关不上", "台面裂了", "漏水", "电机有异响",
            "表面起泡", "送来就是坏的"]
EXPECTATIONS = ["要求换货", "要求退货", "请派人上门维修", "要求赔偿", "希望退款"]
AMOUNTS = ["12800元", "8999元", "花了一万二", "3.5万", "4500块", "总价23800元"]
ADDRESSES = ["上海市闵行区七莘路100弄5栋1201室", "北京市朝阳区建国路88号3栋502室", "南京市鼓楼区中山北路200号2栋301室",
             "杭州市西湖区文三路90号1单元602室"]


@dataclass(frozen=True)
class Customer:
    customer_id: str
    script: tuple[str, ...]


def _phone(rng: random.Random) -> str:
    return "1" + rng.choice("35789") + "".join(rng.choice("0123456789") for _ in range(9))


def build_customers(catalog: Catalog, count: int, seed: int, prefix: str) -> list[Customer]:
    """Scripted conversations of 6-8 turns, each ending in a confirmed case."""
    rng = random.Random(seed)
    customers = []
    for i in range(count):
        mall = rng.choice(catalog.malls)
        alias = rng.choice([mall.name, *mall.aliases])
        # "江北店" is both Nanjing's and Chongqing's: saying the city settles it.
        mall_text = alias if alias == mall.name else mall.city + alias
        brand = rng.choice(catalog.brands)
        brand_text = rng.choice([brand.name, *brand.aliases])
        name = rng.choice(SURNAMES) + rng.choice(GIVEN)
        phone = _phone(rng)
        product, problem = rng.choice(PRODUCTS), rng.choice(PROBLEMS)
        expectation, amount, address = rng.choice(EXPECTATIONS), rng.choice(AMOUNTS), rng.choice(ADDRESSES)
        variant = i % 4
        script: list[str]
        if variant == 0:  # 7 turns: greeting, a multi-fact opening, then the remaining questions one by one
            script = [
                "你好",
                f"我叫{name}，电话{phone}，去年12月8号在{mall_text}买的{brand_text}{product}，{amount}，{problem}",
                "上个月3号送的货",
                f"送到{address}",
                f"订单号SO2025{phone[-6:]}",
                expectation,
                "确认",
            ]
        elif variant == 1:  # 8 turns: answers one question at a time, some "don't know"
            script = [
                f"{product}{problem}，{expectation}",
                f"我叫{name}，手机{phone}",
                f"在{mall_text}买的{brand_text}",
                f"今年3月5号买的，{amount}",
                "不记得了",
                "没有地址",
                "没有",
                "确认",
            ]
        elif variant == 2:  # 8 turns: a vague date, an unanswered question, facts given out of order
            script = [
                "在吗",
                f"我是{name}，{phone}，{mall_text}，{brand_text}，{product}{problem}，订单号HT{phone[-8:]}，{expectation}",
                "前年买的",
                "不知道",
                "28000",
                "上周六送的",
                f"送到{address}",
                "确认",
            ]
        else:  # 7 turns: everything early, then a correction at the summary
            script = [
                "您好",
                f"您好，我是{name}，电话{phone}，{mall_text}{brand_text}，今年6月18号买的{product}，{amount}，"
                f"{problem}，{expectation}",
                "上周三送到的",
                f"地址是{address}",
                f"订单号XS{phone[-8:]}",
                f"电话写错了，应该是{_phone(rng)}",
                "确认",
            ]
        customers.append(Customer(f"{prefix}-{i:05d}", tuple(script)))
    return customers


# ------------------------------------------------------------------------------------ databases


def check_loopback(url: str) -> None:
    host = make_url(url).host or "localhost"
    if host not in LOOPBACK:
        raise SystemExit(f"refusing non-loopback database host {host!r}: this benchmark is loopback-only")


@contextlib.contextmanager
def fresh_database(backend: str, pg_url: str, workdir: Path) -> Iterator[str]:
    """A new empty database URL: a SQLite file, or a PostgreSQL database dropped on exit."""
    name = f"kesu_bench_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        yield f"sqlite:///{workdir / (name + '.db')}"
        return
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()


# ------------------------------------------------------------------------------------ runs


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


@dataclass
class RunResult:
    label: str
    threads: int
    wall_s: float
    latencies_ns: list[int]
    cases_opened: int = 0
    cases_stored: int | None = None
    expected_cases: int = 0

    @property
    def turns(self) -> int:
        return len(self.latencies_ns)

    @property
    def per_second(self) -> float:
        return self.turns / self.wall_s

    def row(self) -> str:
        ms = sorted(v / 1e6 for v in self.latencies_ns)
        check = ""
        if self.cases_stored is not None:
            verdict = "OK" if self.cases_stored == self.expected_cases == self.cases_opened else "MISMATCH"
            check = f"{self.cases_opened:>5} opened, {self.cases_stored:>5} stored  {verdict}"
        return (f"  {self.label:<10}{self.threads:>4} {self.turns:>7} {self.wall_s:>8.2f} {self.per_second:>9.0f} "
                f"{percentile(ms, 50):>8.2f} {percentile(ms, 99):>8.2f}  {check}")


Conversation = Callable[[Customer], tuple[list[int], int]]
"""Runs one customer's script; returns per-turn latencies (ns) and the number of cases opened."""


def _run_parallel(customers: Sequence[Customer], threads: int, work: Conversation) -> tuple[float, list[int], int]:
    """Run each customer's conversation with `work`; (wall seconds, per-turn latencies, cases opened)."""
    latencies: list[int] = []
    opened = 0
    started = time.perf_counter()
    if threads == 1:
        for customer in customers:
            lat, cases = work(customer)
            latencies += lat
            opened += cases
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for lat, cases in pool.map(work, customers):
                latencies += lat
                opened += cases
    return time.perf_counter() - started, latencies, opened


def full_conversation(service: IntakeService, channel: str, message_ids: bool) -> Conversation:
    def run(customer: Customer) -> tuple[list[int], int]:
        latencies: list[int] = []
        opened = 0
        for n, line in enumerate(customer.script):
            message = InboundMessage(channel, customer.customer_id, line,
                                     message_id=f"{customer.customer_id}-{n}" if message_ids else None,
                                     at=T0 + n * TURN_GAP)
            t0 = time.perf_counter_ns()
            outcome = service.handle(message)
            latencies.append(time.perf_counter_ns() - t0)
            opened += outcome.case is not None
        return latencies, opened

    return run


def replies_for(store: Store, channel: str, customer_id: str, message_id: str) -> list[str] | None:
    """The retry lookup handle() does; newer Stores scope it to the customer, older ones do not."""
    arguments: dict[str, Any] = {"channel": channel, "channel_message_id": message_id}
    if "customer_id" in inspect.signature(store.replies_for).parameters:
        arguments["customer_id"] = customer_id
    return store.replies_for(**arguments)


def bare_conversation(store: Store, channel: str, message_ids: bool, with_reads: bool) -> Conversation:
    """The same number of turns as the script, storage only: no extraction, dialog or rendering."""

    def run(customer: Customer) -> tuple[list[int], int]:
        latencies: list[int] = []
        version: int | None = None
        for n, line in enumerate(customer.script):
            at = T0 + n * TURN_GAP
            message_id = f"{customer.customer_id}-{n}" if message_ids else None
            t0 = time.perf_counter_ns()
            if with_reads:
                if message_id is not None:
                    replies_for(store, channel, customer.customer_id, message_id)
                record = store.load_conversation(channel, customer.customer_id)
                version = record.version if record else None
            with store.unit_of_work() as uow:
                inbound = uow.record_inbound(channel=channel, customer_id=customer.customer_id, text=line, at=at,
                                             channel_message_id=message_id)
                saved = uow.save_conversation(channel=channel, customer_id=customer.customer_id,
                                              state={"phase": "collecting", "asking": "phone", "turn": n},
                                              expected_version=version, at=at)
                uow.record_outbound(channel=channel, customer_id=customer.customer_id,
                                    texts=["好的，已记录。", "请问您的联系电话是多少？"], in_reply_to=inbound, at=at)
            version = saved.version
            latencies.append(time.perf_counter_ns() - t0)
        return latencies, 0

    return run


def mode_runs(url: str, customers: list[Customer], threads: int, catalog: Catalog, renderer: Renderer,
              message_ids: bool) -> list[RunResult]:
    """Full, bare and bare+read runs of one mode, in one fresh database (separate channels)."""
    store = Store.from_url(url, migrate=True)
    try:
        service = IntakeService(store, catalog, renderer, clock=lambda: T0)
        wall, lat, opened = _run_parallel(customers, threads, full_conversation(service, "bench", message_ids))
        stored = len(store.list_cases(limit=len(customers) * 2 + 10))
        full = RunResult("full", threads, wall, lat, opened, stored, len(customers))
        wall, lat, _ = _run_parallel(customers, threads, bare_conversation(store, "bare", message_ids, False))
        bare = RunResult("bare", threads, wall, lat)
        wall, lat, _ = _run_parallel(customers, threads, bare_conversation(store, "bare-read", message_ids, True))
        bare_read = RunResult("bare+read", threads, wall, lat)
        return [full, bare, bare_read]
    finally:
        store.close()


# ------------------------------------------------------------------------------------ breakdown


@dataclass
class Timers:
    ns: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, elapsed: int) -> None:
        with self.lock:
            self.ns[key] = self.ns.get(key, 0) + elapsed
            self.calls[key] = self.calls.get(key, 0) + 1

    def wrap(self, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter_ns() - t0)

        return timed


class TimedStore(Store):
    """A Store whose reads and write transactions are timed (the breakdown run only)."""

    def __init__(self, store: Store, timers: Timers) -> None:
        super().__init__(store.engine)
        self.timers = timers

    def _timed_read(self, started: int) -> None:
        self.timers.add("reads", time.perf_counter_ns() - started)

    # The read methods are passed through untouched (*args), so they follow Store's signatures.
    def replies_for(self, *args: Any, **kwargs: Any) -> list[str] | None:
        started = time.perf_counter_ns()
        try:
            return super().replies_for(*args, **kwargs)
        finally:
            self._timed_read(started)

    def load_conversation(self, *args: Any, **kwargs: Any) -> ConversationRecord | None:
        started = time.perf_counter_ns()
        try:
            return super().load_conversation(*args, **kwargs)
        finally:
            self._timed_read(started)

    def messages(self, *args: Any, **kwargs: Any) -> list[MessageRecord]:
        started = time.perf_counter_ns()
        try:
            return super().messages(*args, **kwargs)
        finally:
            self._timed_read(started)

    def cases_for_customer(self, *args: Any, **kwargs: Any) -> list[CaseRecord]:
        started = time.perf_counter_ns()
        try:
            return super().cases_for_customer(*args, **kwargs)
        finally:
            self._timed_read(started)

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        return self._timed_transaction()

    @contextlib.contextmanager
    def _timed_transaction(self) -> Iterator[UnitOfWork]:
        started = time.perf_counter_ns()
        try:
            with super().unit_of_work() as uow:
                yield uow
        finally:
            self.timers.add("transaction", time.perf_counter_ns() - started)


class TimedRenderer(Renderer):
    """Shares a warmed renderer's Jinja environment; times every render."""

    def __init__(self, inner: Renderer, timers: Timers) -> None:
        self.env = inner.env
        self.timers = timers

    def render(self, template: str, context: dict[str, Any]) -> str:
        started = time.perf_counter_ns()
        try:
            return super().render(template, context)
        finally:
            self.timers.add("render", time.perf_counter_ns() - started)


# Module-level functions the service and the engine call by name: wrapped for the breakdown run,
# restored afterwards (in this process only; nothing on disk changes).
PATCHED_FUNCTIONS: tuple[tuple[ModuleType, str], ...] = ((bot.service, "step"), (dialogs.engine, "extract"))


def breakdown(url: str, customers: list[Customer], catalog: Catalog, renderer: Renderer,
              message_ids: bool) -> tuple[int, dict[str, float]]:
    """Per-turn averages (µs) of each part of handle(), on an instrumented sequential run.

    Also counts SQL statements (as SQLAlchemy sends them, so COMMIT/ROLLBACK and pool pre-pings
    are not included) and connection-pool checkouts per turn.
    """
    timers = Timers()
    plain = Store.from_url(url, migrate=True)
    store = TimedStore(plain, timers)
    counts = {"statements": 0, "checkouts": 0}

    def on_execute(*_: Any) -> None:
        counts["statements"] += 1

    def on_checkout(*_: Any) -> None:
        counts["checkouts"] += 1

    event.listen(store.engine, "before_cursor_execute", on_execute)
    event.listen(store.engine.pool, "checkout", on_checkout)
    service = IntakeService(store, catalog, TimedRenderer(renderer, timers), clock=lambda: T0)
    originals = [(module, name, getattr(module, name)) for module, name in PATCHED_FUNCTIONS]
    for module, name, function in originals:
        setattr(module, name, timers.wrap(name, function))
    try:
        _, latencies, _ = _run_parallel(customers, 1, full_conversation(service, "bench", message_ids))
    finally:
        for module, name, function in originals:
            setattr(module, name, function)
        plain.close()
    turns = len(latencies)
    per_turn = {key: value / turns / 1000 for key, value in timers.ns.items()}
    per_turn["handle"] = sum(latencies) / turns / 1000
    per_turn["statements"] = counts["statements"] / turns
    per_turn["checkouts"] = counts["checkouts"] / turns
    return turns, per_turn


def print_breakdown(turns: int, us: dict[str, float]) -> None:
    total = us["handle"]
    extract = us.get("extract", 0.0)
    dialog = us.get("step", 0.0) - extract
    render = us.get("render", 0.0)
    commit = us.get("transaction", 0.0) - render  # render runs inside the transaction
    reads = us.get("reads", 0.0)
    other = total - extract - dialog - render - commit - reads
    rows = [
        ("extract()  (inside step)", extract),
        ("step() without extract (dialog logic)", dialog),
        ("render (Jinja, all replies of the turn)", render),
        ("storage reads (replies_for, load_conversation, transcript)", reads),
        ("storage write transaction incl. commit (minus render)", commit),
        ("other (pydantic state load/dump, transcript build, glue)", other),
    ]
    print(f"  where the time goes, sequential, {turns} instrumented turns (avg µs per turn):")
    for label, value in rows:
        print(f"    {label:<62}{value:>9.0f} µs {value / total:>6.1%}")
    print(f"    {'handle() total':<62}{total:>9.0f} µs")
    print(f"    (step() total incl. extract: {us.get('step', 0.0):.0f} µs; per turn {us['statements']:.1f} SQL "
          f"statements over {us['checkouts']:.1f} pool checkouts)")


# ------------------------------------------------------------------------------------ main


def _warm_up(catalog: Catalog, renderer: Renderer) -> None:
    """Build alias indexes, compile every template a script reaches, import lazy modules."""
    store = Store.from_url("sqlite://", migrate=True)
    try:
        service = IntakeService(store, catalog, renderer, clock=lambda: T0)
        for customer in build_customers(catalog, 8, seed=999, prefix="warmup"):
            full_conversation(service, "warmup", True)(customer)
    finally:
        store.close()



def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--customers", type=int, default=200, help="simulated customers per run (default 200)")
    parser.add_argument("--threads", default="4,16", help="comma-separated thread counts after the sequential run")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (loopback only); a fresh "
                        "database is created on it per run and dropped afterwards")
    parser.add_argument("--breakdown-customers", type=int, default=40,
                        help="customers in the instrumented where-the-time-goes run (default 40)")
    parser.add_argument("--no-message-ids", action="store_true",
                        help="send messages without channel message ids (no retry lookup per turn)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    thread_counts = [1, *(int(t) for t in args.threads.split(",") if t.strip())]
    message_ids = not args.no_message_ids
    if "postgres" in backends:
        check_loopback(args.pg_url)

    catalog, renderer = load_catalog(), Renderer()
    customers = build_customers(catalog, args.customers, args.seed, "cust")
    breakdown_customers = customers[: args.breakdown_customers]
    turns_each = [len(c.script) for c in customers]
    _warm_up(catalog, renderer)

    print("Kesu turn throughput: IntakeService.handle, one transaction per turn")
    print(machine_line())
    print(f"python {sys.version.split()[0]}, {args.customers} customers, {sum(turns_each)} turns per run "
          f"({min(turns_each)}-{max(turns_each)} per conversation), message ids {'on' if message_ids else 'off'}, "
          f"seed {args.seed}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kesu-bench-") as tmp:
        for backend in backends:
            print()
            where = "file in a temp dir" if backend == "sqlite" else f"fresh database on {make_url(args.pg_url).host}"
            print(f"{backend} ({where})")
            with unless_postgres_unreachable(backend, args.pg_url):
                results: list[list[RunResult]] = []
                print(f"  {'run':<10}{'thr':>4} {'turns':>7} {'wall s':>8} {'turns/s':>9} {'p50 ms':>8} "
                      f"{'p99 ms':>8}  cases")
                for threads in thread_counts:
                    with fresh_database(backend, args.pg_url, Path(tmp)) as url:
                        runs = mode_runs(url, customers, threads, catalog, renderer, message_ids)
                    results.append(runs)
                    for run in runs:
                        print(run.row())
                print("  full/bare (time per turn at the same concurrency; 1.0 = storage-bound):")
                for full, bare, bare_read in results:
                    print(f"    {full.threads:>2} thread(s): full/bare {bare.per_second / full.per_second:5.1f}x, "
                          f"full/bare+read {bare_read.per_second / full.per_second:5.1f}x")
                with fresh_database(backend, args.pg_url, Path(tmp)) as url:
                    turns, us = breakdown(url, breakdown_customers, catalog, renderer, message_ids)
                print_breakdown(turns, us)
    print()
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
