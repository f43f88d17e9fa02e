"""Accuracy benchmark for Kesu: field extraction and whole simulated conversations.

    python benchmarks/eval_accuracy.py                      # everything: dev, holdout, holdout2
    python benchmarks/eval_accuracy.py --set dev --show-errors
    python benchmarks/eval_accuracy.py --part extraction    # only extract_fields()
    python benchmarks/eval_accuracy.py --check-data         # validate the evals/*.jsonl files only

Data: evals/extraction_{dev,holdout,holdout2}.jsonl and evals/conversations_{dev,holdout,holdout2}.jsonl
(format in evals/README.md). Tune on dev; the holdouts are for reporting only.

It is a benchmark, not a test: low scores still exit 0. The exit status is non-zero only when the
harness itself cannot run (modules or CLI missing, unreadable data, a bot that never answers).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "evals"
CATALOG_PATH = ROOT / "bot" / "data" / "demo_catalog.yaml"

FIELDS = ["name", "phone", "city", "mall", "brand", "amount", "purchase_date", "delivery_date",
          "delivery_address", "order_no", "over_warranty", "expectation", "priority", "description"]
ASKABLE = ["name", "phone", "mall", "brand", "amount", "purchase_date", "delivery_date", "delivery_address",
           "order_no", "over_warranty", "description", "expectation"]
EXPECTATION_CODES = {"return", "exchange", "repair", "refund", "compensation", "apology", "inspection",
                     "deliver", "other"}
PRIORITIES = {"normal", "important", "major"}
PHONE_RE = re.compile(r"1[3-9]\d{9}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_TURNS = 40
CONFIRM = "确认"
DONT_KNOW = "不知道"
NOTHING_ASKED = "没有了"
SETS = ("dev", "holdout", "holdout2")
SHANGHAI = timezone(timedelta(hours=8))


class HarnessError(Exception):
    """The benchmark itself cannot run (as opposed to the bot scoring badly)."""


# --------------------------------------------------------------------------------------------
# data loading


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise HarnessError(f"missing data file {path.relative_to(ROOT)}")
    items: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HarnessError(f"{path.name}:{n}: invalid JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise HarnessError(f"{path.name}:{n}: a line must be a JSON object")
            items.append(obj)
    return items


def _scalar(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        return text[1:-1]
    if text.startswith("["):
        inner = text[1:-1].strip()
        if not inner:
            return []
        return [_scalar(part) for part in re.findall(r'"[^"]*"|\'[^\']*\'|[^,\s][^,]*', inner)]
    return text


def _strip_comment(line: str) -> str:
    out, quote = [], ""
    for ch in line:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out).rstrip()


def _mini_yaml(text: str) -> dict[str, Any]:
    """Enough YAML for the catalog format (top-level lists of flat mappings with flow lists)."""
    data: dict[str, Any] = {}
    current: list[dict[str, Any]] | None = None
    item: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0 and body.endswith(":"):
            current = data.setdefault(body[:-1], [])
            item = None
            continue
        if current is None:
            continue
        if body.startswith("- "):
            item = {}
            current.append(item)
            body = body[2:].strip()
        if item is not None and ":" in body:
            key, _, value = body.partition(":")
            item[key.strip()] = _scalar(value)
    return data


def load_catalog_data(path: Path = CATALOG_PATH) -> dict[str, Any]:
    """The catalog as plain data (malls/brands), without the product's own loader."""
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # PyYAML is a project dependency, but the harness must not need it

        loaded = yaml.safe_load(text)
    except ImportError:
        loaded = _mini_yaml(text)
    if not isinstance(loaded, dict):
        raise HarnessError(f"{path}: not a mapping")
    loaded.setdefault("malls", [])
    loaded.setdefault("brands", [])
    return loaded


# --------------------------------------------------------------------------------------------
# comparison


def is_null(value: Any) -> bool:
    return value is None or value == "" or value == []


def _norm_text(value: str) -> str:
    return re.sub(r"\s+", "", value).strip("，。,.！!；;、 ")


def field_correct(key: str, expected: Any, got: Any) -> bool:
    """Whether `got` (what the system produced) matches `expected` (the label) for one field."""
    if is_null(expected):
        return is_null(got)
    if is_null(got):
        return False
    if key == "amount":
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        return math.isclose(float(got), float(expected), abs_tol=0.005)
    if key == "expectation":
        return isinstance(got, list) and set(got) == set(expected)
    if key == "description":
        return isinstance(got, str) and all(phrase in got for phrase in expected)
    if key == "over_warranty":
        return got is expected
    if key == "delivery_address":
        return isinstance(got, str) and _norm_text(got) == _norm_text(expected)
    return bool(got == expected)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class FieldStats:
    expected: int = 0
    output: int = 0
    correct: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.output if self.output else float("nan")

    @property
    def recall(self) -> float:
        return self.correct / self.expected if self.expected else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return float("nan") if math.isnan(p) and math.isnan(r) else 0.0
        return 2 * p * r / (p + r)


def fmt(value: float, pct: bool = True) -> str:
    if math.isnan(value):
        return "—"
    return f"{value * 100:5.1f}%" if pct else f"{value:.1f}"


# --------------------------------------------------------------------------------------------
# extraction


def _import_extraction() -> tuple[Callable[..., dict[str, Any]], Any]:
    sys.path.insert(0, str(ROOT))
    try:
        from dialogs.catalog import load_catalog  # type: ignore[import-not-found]
        from dialogs.extraction import extract_fields  # type: ignore[import-not-found]
    except ImportError as exc:
        raise HarnessError(
            f"cannot import the extractor ({exc}); expected dialogs.catalog.load_catalog and "
            "dialogs.extraction.extract_fields(text, *, now, catalog)") from exc
    catalog: Any = None
    attempts: list[Callable[[], Any]] = [lambda: load_catalog(CATALOG_PATH), lambda: load_catalog(str(CATALOG_PATH)),
                                         lambda: load_catalog()]
    errors = []
    for attempt in attempts:
        try:
            catalog = attempt()
            break
        except TypeError as exc:
            errors.append(str(exc))
    else:
        raise HarnessError(f"load_catalog could not be called: {errors}")
    return extract_fields, catalog


@dataclass
class ExtractionResult:
    name: str
    n: int = 0
    exact: int = 0
    false_positives: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stats: dict[str, FieldStats] = field(default_factory=lambda: {k: FieldStats() for k in FIELDS})
    errors: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = field(default_factory=list)
    unknown_keys: Counter[str] = field(default_factory=Counter)
    crashes: int = 0


def run_extraction(name: str, items: list[dict[str, Any]], extract: Callable[..., dict[str, Any]],
                   catalog: Any) -> ExtractionResult:
    res = ExtractionResult(name)
    for item in items:
        now = datetime.fromisoformat(item["now"])
        expected: dict[str, Any] = item["expected"]
        t0 = time.perf_counter()
        try:
            got = extract(item["text"], now=now, catalog=catalog)
            if not isinstance(got, dict):
                raise TypeError(f"extract_fields returned {type(got).__name__}, not dict")
        except Exception as exc:  # the extractor failing on one message is a scored error
            got = {"__exception__": f"{type(exc).__name__}: {exc}"}
            res.crashes += 1
        res.latencies_ms.append((time.perf_counter() - t0) * 1000)
        res.n += 1
        wrong: list[str] = []
        for key in got:
            if key not in FIELDS and key != "__exception__":
                res.unknown_keys[key] += 1
        for key in FIELDS:
            exp_v, got_v = expected.get(key), got.get(key)
            st = res.stats[key]
            if not is_null(exp_v):
                st.expected += 1
            if not is_null(got_v):
                st.output += 1
            if is_null(exp_v) and is_null(got_v):
                continue
            if field_correct(key, exp_v, got_v):
                st.correct += 1
            else:
                wrong.append(key)
                if is_null(exp_v):
                    res.false_positives += 1
        if not wrong and "__exception__" not in got:
            res.exact += 1
        else:
            res.errors.append((item, got, wrong))
    return res


def print_extraction(res: ExtractionResult, show_errors: bool) -> None:
    print(f"\n== extraction · {res.name} · {res.n} messages ==")
    print(f"{'field':<18}{'support':>8}{'output':>8}{'correct':>8}{'precision':>11}{'recall':>9}{'F1':>9}")
    total_expected = total_correct = 0
    for key in FIELDS:
        st = res.stats[key]
        total_expected += st.expected
        total_correct += st.correct
        print(f"{key:<18}{st.expected:>8}{st.output:>8}{st.correct:>8}{fmt(st.precision):>11}"
              f"{fmt(st.recall):>9}{fmt(st.f1):>9}")
    correct_present = total_correct  # a field counts as correct only where one was expected
    denom = total_expected + res.false_positives
    print(f"field-level accuracy  {fmt(correct_present / denom if denom else float('nan'))}"
          f"  (correct {correct_present} / expected {total_expected} + false positives {res.false_positives})")
    print(f"exact-message accuracy {fmt(res.exact / res.n if res.n else float('nan'))}  ({res.exact}/{res.n})")
    print(f"latency p50 {percentile(res.latencies_ms, 50):.2f} ms · p99 {percentile(res.latencies_ms, 99):.2f} ms"
          f" · max {max(res.latencies_ms, default=float('nan')):.2f} ms")
    if res.crashes:
        print(f"!! extract_fields raised on {res.crashes} messages")
    if res.unknown_keys:
        print(f"!! non-public keys in the output (ignored): {dict(res.unknown_keys)}")
    if show_errors and res.errors:
        print(f"-- {len(res.errors)} messages with errors --")
        for item, got, wrong in res.errors:
            exp = item["expected"]
            print(f"[{item['id']}] {item['text']}")
            print(f"    now      {item['now']}  wrong: {', '.join(wrong) or '(exception)'}")
            print(f"    expected {json.dumps({k: exp.get(k) for k in wrong}, ensure_ascii=False)}")
            print(f"    got      {json.dumps({k: got.get(k) for k in wrong} if wrong else got, ensure_ascii=False)}")


# --------------------------------------------------------------------------------------------
# conversations


def kesu_command() -> list[str]:
    binary = ROOT / ".venv" / "bin" / "kesu"
    if binary.exists():
        return [str(binary)]
    if (ROOT / "bot" / "cli.py").exists() or (ROOT / "bot" / "cli" / "__init__.py").exists():
        return [sys.executable, "-m", "bot.cli"]
    raise HarnessError("the Kesu CLI is missing: neither .venv/bin/kesu nor bot/cli.py exists (run `make run` "
                       "once to create the venv)")


class BotProcess:
    """One `kesu chat --jsonl` subprocess: a JSON string per line in, one JSON object per line out."""

    def __init__(self, cmd: list[str], now: str, db_dir: str, timeout: float) -> None:
        args = [*cmd, "chat", "--jsonl", "--now", now, "--catalog", str(CATALOG_PATH.relative_to(ROOT)),
                "--db", f"sqlite:///{db_dir}/c.db"]
        self.timeout = timeout
        self.stderr_path = Path(db_dir) / "stderr.txt"
        self._stderr = self.stderr_path.open("w", encoding="utf-8")
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, encoding="utf-8", bufsize=1, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(text, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BotFailure(f"bot process closed its input ({exc})") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty as exc:
                raise BotFailure(f"no answer within {self.timeout:.0f}s") from exc
            if line is None:
                raise BotFailure(f"bot process exited (code {self.proc.poll()})")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BotFailure(f"output line is not JSON: {line.strip()[:200]}") from exc
            if not isinstance(obj, dict):
                raise BotFailure(f"output line is not a JSON object: {line.strip()[:200]}")
            return obj

    def close(self) -> str:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]


class BotFailure(Exception):
    """The bot under test misbehaved during one conversation (scored, not a harness failure)."""


@dataclass
class ConversationOutcome:
    item: dict[str, Any]
    case: dict[str, Any] | None = None
    turns: int = 0
    transcript: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    stderr_tail: str = ""
    answered_first_turn: bool = False


def next_message(item: dict[str, Any], turn: int, resp: dict[str, Any], sent_scripts: set[int]) -> str:
    script: list[dict[str, Any]] = item.get("script") or []
    for i, entry in enumerate(script):
        if i not in sent_scripts and entry.get("after_turn") is not None and turn >= int(entry["after_turn"]):
            sent_scripts.add(i)
            return str(entry["text"])
    if resp.get("state") == "confirming":
        for i, entry in enumerate(script):
            if i not in sent_scripts and entry.get("at") == "confirming":
                sent_scripts.add(i)
                return str(entry["text"])
        return CONFIRM
    asking = resp.get("asking")
    if asking is None:
        return NOTHING_ASKED
    answers: dict[str, str] = item.get("answers") or {}
    return answers.get(str(asking), DONT_KNOW)


def run_conversation(item: dict[str, Any], cmd: list[str], timeout: float) -> ConversationOutcome:
    out = ConversationOutcome(item)
    with tempfile.TemporaryDirectory(prefix="kesu-eval-") as tmp:
        try:
            bot = BotProcess(cmd, item["now"], tmp, timeout)
        except OSError as exc:
            raise HarnessError(f"cannot start {' '.join(cmd)}: {exc}") from exc
        sent_scripts: set[int] = set()
        try:
            message = item["opening"]
            while out.turns < MAX_TURNS:
                out.turns += 1
                resp = bot.send(message)
                out.answered_first_turn = True
                out.transcript.append({"customer": message, "bot": resp})
                case = resp.get("case")
                if case is not None:
                    if not isinstance(case, dict):
                        raise BotFailure(f"`case` is not an object: {case!r}")
                    out.case = case
                    break
                message = next_message(item, out.turns, resp, sent_scripts)
        except BotFailure as exc:
            out.failure = str(exc)
        finally:
            out.stderr_tail = bot.close()
    return out


@dataclass
class ConversationResult:
    name: str
    outcomes: list[ConversationOutcome]

    def field_accuracy(self, key: str) -> tuple[int, int]:
        done = [o for o in self.outcomes if o.case is not None]
        ok = sum(field_correct(key, o.item["expected_case"].get(key), o.case.get(key)) for o in done if o.case)
        return ok, len(done)


def wrong_fields(outcome: ConversationOutcome) -> list[str]:
    if outcome.case is None:
        return list(FIELDS)
    exp = outcome.item["expected_case"]
    return [k for k in FIELDS if not field_correct(k, exp.get(k), outcome.case.get(k))]


def print_conversations(res: ConversationResult, show_errors: bool) -> None:
    outs = res.outcomes
    n = len(outs)
    done = [o for o in outs if o.case is not None]
    print(f"\n== conversations · {res.name} · {n} customers ==")
    turns = [float(o.turns) for o in done]
    print(f"completed            {len(done)}/{n} ({fmt(len(done) / n if n else float('nan'))})")
    if turns:
        print(f"turns to complete    mean {statistics.fmean(turns):.1f} · median {statistics.median(turns):.1f}"
              f" · p90 {percentile(turns, 90):.0f}")
    failures = Counter(o.failure.split(" (")[0] for o in outs if o.failure)
    if failures:
        print(f"bot failures         {dict(failures)}")
    stuck = sum(1 for o in outs if o.case is None and not o.failure)
    if stuck:
        print(f"no case after {MAX_TURNS} turns: {stuck}")
    print(f"{'field':<18}{'correct':>9}{'of done':>9}{'accuracy':>10}   end-to-end (incomplete = wrong)")
    total_ok = total = 0
    for key in FIELDS:
        ok, m = res.field_accuracy(key)
        total_ok += ok
        total += m
        print(f"{key:<18}{ok:>9}{m:>9}{fmt(ok / m if m else float('nan')):>10}   {fmt(ok / n if n else float('nan'))}")
    exact = sum(1 for o in done if not wrong_fields(o))
    print(f"all fields           {fmt(total_ok / total if total else float('nan'))} of fields in completed cases;"
          f" cases entirely right {exact}/{n} ({fmt(exact / n if n else float('nan'))})")
    if show_errors:
        for o in outs:
            wrong = wrong_fields(o)
            if not wrong and not o.failure:
                continue
            item = o.item
            print(f"[{item['id']}] ({item['style']}) {item['opening']}")
            if o.failure:
                print(f"    failure: {o.failure}")
                if o.stderr_tail.strip():
                    print("    stderr: " + o.stderr_tail.strip().splitlines()[-1][:300])
            if o.case is None:
                print(f"    no case after {o.turns} turns; last asking: "
                      f"{(o.transcript[-1]['bot'].get('asking') if o.transcript else None)!r}")
            else:
                for key in wrong:
                    print(f"    {key:<17} expected {json.dumps(item['expected_case'].get(key), ensure_ascii=False)}"
                          f"  got {json.dumps(o.case.get(key), ensure_ascii=False)}")


def run_conversation_set(name: str, items: list[dict[str, Any]], workers: int, timeout: float,
                         transcripts: Path | None) -> ConversationResult:
    cmd = kesu_command()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda it: run_conversation(it, cmd, timeout), items))
    if outcomes and not any(o.answered_first_turn for o in outcomes):
        tail = outcomes[0].stderr_tail.strip()
        raise HarnessError(f"`{' '.join(cmd)} chat --jsonl` never answered a first message "
                           f"({outcomes[0].failure}); stderr:\n{tail}")
    if transcripts is not None:
        transcripts.mkdir(parents=True, exist_ok=True)
        for o in outcomes:
            (transcripts / f"{o.item['id']}.json").write_text(json.dumps(
                {"id": o.item["id"], "failure": o.failure, "turns": o.turns, "case": o.case,
                 "wrong": wrong_fields(o), "transcript": o.transcript}, ensure_ascii=False, indent=1),
                encoding="utf-8")
    return ConversationResult(name, outcomes)


# --------------------------------------------------------------------------------------------
# data check


def one_year_before(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:
        return day.replace(year=day.year - 1, day=28)


class DataChecker:
    def __init__(self) -> None:
        cat = load_catalog_data()
        self.mall_city = {str(m["id"]): str(m["city"]) for m in cat["malls"]}
        self.brands = {str(b["name"]) for b in cat["brands"]}
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def check_now(self, where: str, now: Any) -> date | None:
        try:
            dt = datetime.fromisoformat(str(now))
        except ValueError:
            self.err(where, f"now {now!r} is not ISO 8601")
            return None
        if dt.tzinfo is None:
            self.err(where, f"now {now!r} has no UTC offset")
            return None
        return dt.astimezone(SHANGHAI).date()

    def check_value(self, where: str, key: str, v: Any, texts: list[str]) -> None:
        def bad(msg: str) -> None:
            self.err(where, f"{key}={v!r}: {msg}")

        if key in ("name", "city", "delivery_address", "order_no"):
            if not isinstance(v, str) or not v.strip():
                bad("must be a non-empty string")
        elif key == "phone":
            if not isinstance(v, str) or not PHONE_RE.fullmatch(v):
                bad("must be 11 digits 1[3-9]xxxxxxxxx")
        elif key == "mall":
            if v not in self.mall_city:
                bad("unknown mall id")
        elif key == "brand":
            if v not in self.brands:
                bad("unknown brand name")
        elif key == "amount":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                bad("must be a positive number")
        elif key in ("purchase_date", "delivery_date"):
            try:
                ok = isinstance(v, str) and DATE_RE.fullmatch(v) is not None and bool(date.fromisoformat(v))
            except ValueError:
                ok = False
            if not ok:
                bad("must be a real YYYY-MM-DD date")
        elif key == "over_warranty":
            if not isinstance(v, bool):
                bad("must be true/false")
        elif key == "expectation":
            if not isinstance(v, list) or not v or len(set(v)) != len(v) or not set(v) <= EXPECTATION_CODES:
                bad(f"must be a non-empty list of distinct codes from {sorted(EXPECTATION_CODES)}")
        elif key == "priority":
            if v not in PRIORITIES:
                bad(f"must be one of {sorted(PRIORITIES)}")
        elif key == "description":
            if not isinstance(v, list) or not 1 <= len(v) <= 3 or not all(isinstance(p, str) and p for p in v):
                bad("must be a list of 1-3 key phrases")
            else:
                for phrase in v:
                    if not any(phrase in t for t in texts):
                        bad(f"key phrase {phrase!r} is not copied from the customer's text")

    def check_consistency(self, where: str, fields: dict[str, Any], today: date | None) -> None:
        mall, city = fields.get("mall"), fields.get("city")
        if mall in self.mall_city and city != self.mall_city[mall]:
            self.err(where, f"city {city!r} must be {self.mall_city[mall]!r} (implied by mall {mall})")
        pd, ow = fields.get("purchase_date"), fields.get("over_warranty")
        if today is not None and isinstance(pd, str) and DATE_RE.fullmatch(pd):
            try:
                p = date.fromisoformat(pd)
            except ValueError:
                return
            if p > today:
                self.err(where, f"purchase_date {pd} is after now")
            limit = one_year_before(today)
            if p == limit:
                self.warnings.append(f"{where}: purchase_date exactly one year before now (boundary)")
            elif ow is None:
                self.err(where, "over_warranty is derivable from purchase_date and must be labelled")
            elif ow != (p < limit):
                self.err(where, f"over_warranty {ow} contradicts purchase_date {pd}")

    def check_extraction(self, path: Path, prefix: str) -> list[dict[str, Any]]:
        items = read_jsonl(path)
        seen: set[str] = set()
        for n, it in enumerate(items, 1):
            where = f"{path.name}:{n}"
            if set(it) != {"id", "now", "text", "expected", "tags"}:
                self.err(where, f"keys must be id/now/text/expected/tags, got {sorted(it)}")
                continue
            iid = it["id"]
            if not isinstance(iid, str) or not iid.startswith(prefix) or iid in seen:
                self.err(where, f"id {iid!r} must be unique and start with {prefix!r}")
            seen.add(str(iid))
            where = f"{path.name}:{iid}"
            today = self.check_now(where, it["now"])
            text = it["text"]
            if not isinstance(text, str) or not text.strip():
                self.err(where, "text must be a non-empty string")
                continue
            exp = it["expected"]
            if not isinstance(exp, dict):
                self.err(where, "expected must be an object")
                continue
            for key in exp:
                if key not in FIELDS:
                    self.err(where, f"unknown field {key!r}")
                elif exp[key] is None:
                    self.err(where, f"{key} is null: leave absent fields out")
                else:
                    self.check_value(where, key, exp[key], [text])
            if "priority" not in exp:
                self.err(where, "priority must always be present")
            if not isinstance(it["tags"], list) or not all(isinstance(t, str) for t in it["tags"]):
                self.err(where, "tags must be a list of strings")
            self.check_consistency(where, exp, today)
        return items

    def check_conversations(self, path: Path, prefix: str) -> list[dict[str, Any]]:
        items = read_jsonl(path)
        seen: set[str] = set()
        keys = {"id", "now", "style", "opening", "answers", "script", "expected_case"}
        for n, it in enumerate(items, 1):
            where = f"{path.name}:{n}"
            if not {"id", "now", "style", "opening", "answers", "expected_case"} <= set(it) <= keys:
                self.err(where, f"keys must be {sorted(keys)} (script optional), got {sorted(it)}")
                continue
            iid = it["id"]
            if not isinstance(iid, str) or not iid.startswith(prefix) or iid in seen:
                self.err(where, f"id {iid!r} must be unique and start with {prefix!r}")
            seen.add(str(iid))
            where = f"{path.name}:{iid}"
            today = self.check_now(where, it["now"])
            answers = it["answers"]
            if not isinstance(answers, dict) or not all(isinstance(v, str) and v for v in answers.values()):
                self.err(where, "answers must map field keys to non-empty strings")
                continue
            for key in answers:
                if key not in ASKABLE:
                    self.err(where, f"answers has {key!r}, which the bot never asks")
            missing = [k for k in ASKABLE if k not in answers]
            if missing:
                self.warnings.append(f"{where}: no answer for {missing} (the customer will say {DONT_KNOW!r})")
            script = it.get("script", [])
            texts = [str(it["opening"]), *answers.values()]
            if not isinstance(script, list):
                self.err(where, "script must be a list")
                script = []
            for entry in script:
                ok = isinstance(entry, dict) and isinstance(entry.get("text"), str) and (
                    (isinstance(entry.get("after_turn"), int) and entry["after_turn"] >= 1 and "at" not in entry)
                    or (entry.get("at") == "confirming" and "after_turn" not in entry))
                if not ok:
                    self.err(where, f"bad script entry {entry!r}: needs text and after_turn>=1 or at='confirming'")
                else:
                    texts.append(entry["text"])
            case = it["expected_case"]
            if not isinstance(case, dict) or set(case) != set(FIELDS):
                self.err(where, f"expected_case must have exactly the keys {FIELDS}")
                continue
            for key, value in case.items():
                if value is not None:
                    self.check_value(where, key, value, texts)
            if case.get("priority") is None:
                self.err(where, "expected_case.priority is never null")
            self.check_consistency(where, case, today)
        return items

    def run(self) -> int:
        counts: dict[str, int] = {}
        extraction: dict[str, list[dict[str, Any]]] = {}
        for s in SETS:
            extraction[s] = self.check_extraction(EVALS / f"extraction_{s}.jsonl", f"ex-{s}-")
            counts[f"extraction_{s}.jsonl"] = len(extraction[s])
            conv = self.check_conversations(EVALS / f"conversations_{s}.jsonl", f"cv-{s}-")
            counts[f"conversations_{s}.jsonl"] = len(conv)
        for i, a in enumerate(SETS):
            for b in SETS[i + 1:]:
                overlap = {it["text"] for it in extraction[a]} & {it["text"] for it in extraction[b]}
                for text in sorted(overlap):
                    self.err("extraction", f"message in both {a} and {b}: {text!r}")
        for name, count in counts.items():
            print(f"{name:<28}{count:>5} items")
        for s in SETS:
            tags = Counter(t for it in extraction[s] for t in it.get("tags", []))
            print(f"tags ({s}): " + ", ".join(f"{t} {c}" for t, c in sorted(tags.items(), key=lambda x: (-x[1], x[0]))))
        for w in self.warnings:
            print(f"warning: {w}")
        for e in self.errors:
            print(f"ERROR: {e}")
        print(f"data check: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return 1 if self.errors else 0


# --------------------------------------------------------------------------------------------
# main


def _sets(choice: str) -> Iterable[str]:
    return SETS if choice == "all" else (choice,)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kesu accuracy benchmark (extraction + conversations)")
    ap.add_argument("--set", choices=[*SETS, "all"], default="all")
    ap.add_argument("--part", choices=["extraction", "conversations", "all"], default="all")
    ap.add_argument("--show-errors", action="store_true", help="print every wrong item")
    ap.add_argument("--check-data", action="store_true", help="only validate the evals/*.jsonl files")
    ap.add_argument("--workers", type=int, default=2, help="conversations run in parallel (default 2)")
    ap.add_argument("--turn-timeout", type=float, default=30.0, help="seconds to wait for one bot answer")
    ap.add_argument("--transcripts", type=Path, help="write one JSON transcript per conversation here")
    args = ap.parse_args(argv)

    if args.check_data:
        try:
            return DataChecker().run()
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    harness_errors: list[str] = []
    if args.part in ("extraction", "all"):
        try:
            extract, catalog = _import_extraction()
            for s in _sets(args.set):
                items = read_jsonl(EVALS / f"extraction_{s}.jsonl")
                print_extraction(run_extraction(s, items, extract, catalog), args.show_errors)
        except HarnessError as exc:
            harness_errors.append(f"extraction: {exc}")
    if args.part in ("conversations", "all"):
        try:
            for s in _sets(args.set):
                items = read_jsonl(EVALS / f"conversations_{s}.jsonl")
                t0 = time.perf_counter()
                sub = args.transcripts / s if args.transcripts else None
                res = run_conversation_set(s, items, max(1, args.workers), args.turn_timeout, sub)
                print_conversations(res, args.show_errors)
                print(f"({time.perf_counter() - t0:.1f} s wall)")
        except HarnessError as exc:
            harness_errors.append(f"conversations: {exc}")
    for msg in harness_errors:
        print(f"\nerror: {msg}", file=sys.stderr)
    return 2 if harness_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
