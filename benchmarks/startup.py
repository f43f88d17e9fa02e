"""Start-up cost of the ``kesu`` command and of each heavy dependency.

What it measures
    * Time to ready for ``kesu chat --jsonl``: spawn ``.venv/bin/kesu chat --jsonl --db
      sqlite:///<tmp>/s.db --now 2026-11-22T14:30:00+08:00``, write one message line at once,
      and take the wall time until the first output line arrives (process start, imports,
      settings, schema migration, catalog and templates, then one full turn). Repeated with a
      fresh database each time and with one existing, already migrated database; min and median.
      A second message is then sent to show what a warm turn costs in the same process.
    * Peak memory of the chat process: ``VmHWM`` from ``/proc/<pid>/status``, read after the
      second reply and just before stdin is closed.
    * ``kesu --help`` wall time (what every CLI invocation pays before doing anything).
    * Import cost of each heavy dependency, each in a fresh interpreter: the import statement's
      own time (``time.perf_counter`` around it, interpreter start excluded) and the RSS it adds
      (``VmRSS`` from ``/proc/self/status`` before and after), median of N runs. pypinyin is
      measured with ``PYPINYIN_NO_PHRASES=true`` (what Kesu sets before importing it) and without.
      Kesu's own entry modules are listed too; their figures include the dependencies they pull.

How to read it
    Time to ready is what a user or a supervisor restarting the bot waits; the fresh/existing
    difference is the migration. Import rows do not add up: packages share dependencies (typing,
    pydantic, sqlalchemy), and the first import pays for them. Everything runs locally; no
    network is used.

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--import-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import machine_line

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NOW = "2026-11-22T14:30:00+08:00"
FIRST_MESSAGE = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
SECOND_MESSAGE = "上个月3号送的货"
TIMEOUT_S = 60

DEPENDENCIES = ["sqlalchemy", "sqlmodel", "alembic", "typer", "jinja2", "pydantic", "pydantic_settings",
                "pypinyin", "rapidfuzz", "yaml", "psycopg"]
KESU_MODULES = ["bot.cli", "bot.app", "dialogs.extraction", "storage.repository"]

# Runs in the fresh interpreter: time one import, report RSS before/after (kB) as JSON.
IMPORT_PROBE = """
import json, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
before = rss()
t0 = time.perf_counter()
__import__(sys.argv[1])
elapsed = time.perf_counter() - t0
print(json.dumps({"ms": elapsed * 1000, "rss_kb": rss() - before}))
"""


# Runs in a fresh interpreter: the phases of `kesu chat` start-up, in the order the CLI runs them.
PHASE_PROBE = """
import json, sys, time
marks = [("start", time.perf_counter())]
import bot.cli
marks.append(("import bot.cli (typer, pydantic-settings)", time.perf_counter()))
import bot.app, handlers.console
from bot.service import InboundMessage, IntakeService
from datetime import datetime
marks.append(("import bot.app + handlers.console (storage, jinja2, ...)", time.perf_counter()))
settings = bot.cli._settings(None, sys.argv[1])
store = bot.app.build_store(settings)
marks.append(("build_store: engine + schema upgrade (alembic)", time.perf_counter()))
catalog = bot.app.load_catalog(settings.catalog)
marks.append(("load_catalog (YAML + pydantic)", time.perf_counter()))
renderer = bot.app.build_renderer(settings)
marks.append(("Renderer()", time.perf_counter()))
now = datetime.fromisoformat(sys.argv[2])
service = IntakeService(store=store, catalog=catalog, renderer=renderer, clock=lambda: now)
service.handle(InboundMessage("console", "probe-" + sys.argv[5], sys.argv[3]))
marks.append(("first turn (cold: pinyin, alias indexes, templates)", time.perf_counter()))
service.handle(InboundMessage("console", "probe-" + sys.argv[5], sys.argv[4]))
marks.append(("second turn (warm)", time.perf_counter()))
print(json.dumps([(name, (t - marks[i][1]) * 1000) for i, (name, t) in enumerate(marks[1:])]))
"""


@dataclass(frozen=True)
class ChatRun:
    ready_s: float  # spawn → first output line
    second_turn_s: float  # second message written → second output line
    hwm_kb: int


def kesu_executable() -> Path:
    path = VENV_BIN / "kesu"
    if not path.exists():
        raise SystemExit(f"{path} not found: run this with the project's virtualenv python (.venv/bin/python)")
    return path


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def chat_once(db_path: Path) -> ChatRun:
    """One `kesu chat --jsonl` process: two messages, timed, then stdin closed."""
    command = [str(kesu_executable()), "chat", "--jsonl", "--db", f"sqlite:///{db_path}", "--now", NOW]
    env = _clean_env()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=db_path.parent, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, encoding="utf-8")
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(json.dumps(FIRST_MESSAGE, ensure_ascii=False) + "\n")
        process.stdin.flush()
        first = process.stdout.readline()
        ready = time.perf_counter() - started
        if not first:
            raise RuntimeError(f"kesu chat printed nothing: {process.stderr.read() if process.stderr else ''}")
        t0 = time.perf_counter()
        process.stdin.write(json.dumps(SECOND_MESSAGE, ensure_ascii=False) + "\n")
        process.stdin.flush()
        if not process.stdout.readline():
            raise RuntimeError("kesu chat stopped after the first message")
        second = time.perf_counter() - t0
        hwm = _status_kb(process.pid, "VmHWM")
        process.stdin.close()
        process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"kesu chat exited with {process.returncode}")
    return ChatRun(ready, second, hwm)


def time_command(command: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, capture_output=True, check=True, timeout=TIMEOUT_S)
        times.append(time.perf_counter() - started)
    return times


def import_cost(module: str, repeats: int, env_overrides: dict[str, str | None]) -> tuple[float, float]:
    """(median import ms, median RSS increase MB) of `module` in fresh interpreters."""
    env = dict(os.environ)
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    ms, rss = [], []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", IMPORT_PROBE, module], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True, timeout=TIMEOUT_S)
        figures = json.loads(done.stdout)
        ms.append(figures["ms"])
        rss.append(figures["rss_kb"] / 1024)
    return statistics.median(ms), statistics.median(rss)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KESU_")}


def startup_phases(workdir: Path, repeats: int) -> tuple[list[str], list[float], list[float]]:
    """Median ms per start-up phase, for a fresh database and for an existing one."""
    fresh: list[list[float]] = []
    existing: list[list[float]] = []
    names: list[str] = []
    for n in range(repeats):
        db = workdir / f"phases{n}" / "s.db"
        db.parent.mkdir()
        for kind, into in (("fresh", fresh), ("existing", existing)):
            done = subprocess.run([sys.executable, "-c", PHASE_PROBE, f"sqlite:///{db}", NOW, FIRST_MESSAGE,
                                   SECOND_MESSAGE, f"{kind}{n}"], cwd=db.parent, env=_clean_env(),
                                  capture_output=True, text=True, check=True, timeout=TIMEOUT_S)
            phases = json.loads(done.stdout)
            names = [name for name, _ in phases]
            into.append([ms for _, ms in phases])
    return (names, [statistics.median(column) for column in zip(*fresh, strict=True)],
            [statistics.median(column) for column in zip(*existing, strict=True)])


def import_breakdown(repeats: int) -> list[tuple[str, float]]:
    """Own import time summed by top-level package for what `kesu chat` imports, median over runs."""
    per_run: list[dict[str, float]] = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                               "import bot.cli, bot.app, handlers.console"], cwd=REPO, env=_clean_env(),
                              capture_output=True, text=True, check=True, timeout=TIMEOUT_S)
        totals: dict[str, float] = {}
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) != 3 or not parts[0].startswith("import time:") or "self" in parts[0]:
                continue
            package = parts[2].strip().split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(parts[0].split(":")[1]) / 1000
        per_run.append(totals)
    packages = {name for run in per_run for name in run}
    medians = [(name, statistics.median(run.get(name, 0.0) for run in per_run)) for name in packages]
    return sorted(medians, key=lambda item: item[1], reverse=True)


def _summary(values: list[float]) -> str:
    return f"min {min(values) * 1000:7.1f} ms   median {statistics.median(values) * 1000:7.1f} ms"



def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="chat spawns per case and --help runs (default 5)")
    parser.add_argument("--import-repeats", type=int, default=3, help="fresh interpreters per import (default 3)")
    args = parser.parse_args()
    kesu = kesu_executable()

    print("Kesu start-up")
    print(machine_line())
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    with tempfile.TemporaryDirectory(prefix="kesu-startup-") as tmp:
        fresh: list[ChatRun] = []
        for n in range(args.repeats):
            run_dir = Path(tmp) / f"fresh{n}"
            run_dir.mkdir()
            fresh.append(chat_once(run_dir / "s.db"))
        existing_dir = Path(tmp) / "existing"
        existing_dir.mkdir()
        chat_once(existing_dir / "s.db")  # creates and migrates it; not timed
        existing = [chat_once(existing_dir / "s.db") for _ in range(args.repeats)]
        phase_names, phases_fresh, phases_existing = startup_phases(Path(tmp), args.import_repeats)

    print()
    print(f"kesu chat --jsonl, spawn → first reply line ({args.repeats} runs each)")
    print(f"  fresh database:     {_summary([r.ready_s for r in fresh])}")
    print(f"  existing database:  {_summary([r.ready_s for r in existing])}")
    second = [r.second_turn_s for r in (*fresh, *existing)]
    print(f"  second turn in the same process: {_summary(second)}")
    hwm = [r.hwm_kb / 1024 for r in (*fresh, *existing)]
    print(f"  peak memory of the chat process (VmHWM): min {min(hwm):.1f} MB, median {statistics.median(hwm):.1f} MB, "
          f"max {max(hwm):.1f} MB")
    print()
    print(f"where the time to ready goes (in-process phases of the same start-up, median of {args.import_repeats})")
    print(f"  {'phase':<58}{'fresh db':>10}{'existing':>10}")
    for name, fresh_ms, existing_ms in zip(phase_names, phases_fresh, phases_existing, strict=True):
        print(f"  {name:<58}{fresh_ms:>7.1f} ms{existing_ms:>7.1f} ms")
    print(f"  {'total after interpreter start':<58}{sum(phases_fresh):>7.1f} ms{sum(phases_existing):>7.1f} ms")
    breakdown = import_breakdown(args.import_repeats)
    total_import = sum(ms for _, ms in breakdown)
    print(f"  imports of `kesu chat` by top-level package (-X importtime own time, total {total_import:.0f} ms):")
    for name, ms in breakdown[:10]:
        print(f"    {name:<24}{ms:>7.1f} ms {ms / total_import:>6.1%}")
    print()
    print(f"kesu --help ({args.repeats} runs):   {_summary(time_command([str(kesu), '--help'], args.repeats))}")
    bare = time_command([sys.executable, "-c", "pass"], args.repeats)
    print(f"bare interpreter start:  {_summary(bare)}")

    print()
    print(f"import cost in a fresh interpreter (median of {args.import_repeats}; includes what each pulls in)")
    print(f"  {'module':<40}{'ms':>8}{'RSS +MB':>10}")
    rows: list[tuple[str, str, dict[str, str | None]]] = [
        (name, name, {}) for name in DEPENDENCIES if name != "pypinyin"
    ]
    position = DEPENDENCIES.index("pypinyin")
    rows[position:position] = [
        ("pypinyin (PYPINYIN_NO_PHRASES=true)", "pypinyin", {"PYPINYIN_NO_PHRASES": "true"}),
        ("pypinyin (phrase dictionaries)", "pypinyin", {"PYPINYIN_NO_PHRASES": None}),
    ]
    rows += [(f"{name} (kesu)", name, {}) for name in KESU_MODULES]
    for label, module, overrides in rows:
        ms, rss_mb = import_cost(module, args.import_repeats, overrides)
        print(f"  {label:<40}{ms:>8.1f}{rss_mb:>10.1f}")


if __name__ == "__main__":
    main()
