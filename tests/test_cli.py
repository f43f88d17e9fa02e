"""The `kesu` command line as users and evaluation tools run it: a real process, stdin and stdout."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.templating import Renderer
from dialogs.fields import FIELD_KEYS
from storage.case_numbers import format_case_number
from storage.models import NATURES, PRIORITIES
from storage.repository import CaseRecord, Store

NOW = "2026-11-22T14:30:00+08:00"
OPENING = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
CONVERSATION = [OPENING, "11月20号送的", "上海市普陀区真北路1号", "没有"]
TURN_KEYS = {"replies", "asking", "state", "fields", "case"}
ZHENBEI = "红星美凯龙上海真北商场"
TIMEOUT = 60


def _command() -> list[str]:
    script = Path(sys.executable).with_name("kesu")
    if script.exists():
        return [str(script)]
    found = shutil.which("kesu")
    return [found] if found else [sys.executable, "-m", "bot.cli"]


KESU = _command()


def _env() -> dict[str, str]:
    """The caller's environment without deployment settings, so only the flags under test apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith("KESU_")}


def kesu(*args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KESU, *args], input=stdin, capture_output=True, text=True, encoding="utf-8",
                          cwd=cwd, env=_env(), timeout=TIMEOUT, check=False)


def jsonl(*lines: str) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def turns(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kesu-cli")


@pytest.fixture(scope="module")
def conversation(workdir: Path) -> tuple[str, list[dict[str, Any]]]:
    """One complete scripted intake through `kesu chat --jsonl`; its database is shared by the cases tests."""
    db = f"sqlite:///{workdir / 'cases.db'}"
    result = kesu("chat", "--jsonl", "--now", NOW, "--db", db, "--customer", "cli-wangli",
                  stdin=jsonl(*CONVERSATION, "确认"), cwd=workdir)
    return db, turns(result)


@pytest.fixture(scope="module")
def case(conversation: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    opened: dict[str, Any] = conversation[1][-1]["case"]
    assert opened is not None
    return opened


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("args", [
    (), ("--help",), ("chat", "--help"), ("extract", "--help"), ("cases", "--help"), ("cases", "list", "--help"),
    ("cases", "show", "--help"), ("db", "--help"), ("db", "upgrade", "--help"), ("case", "classify", "--help"),
], ids=lambda args: " ".join(args) or "no-args")
def test_help(args: tuple[str, ...], tmp_path: Path) -> None:
    result = kesu(*args, cwd=tmp_path)
    if args:
        assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Usage" in output
    assert "Traceback" not in output


def test_chat_help_lists_its_options(tmp_path: Path) -> None:
    output = kesu("chat", "--help", cwd=tmp_path).stdout
    for option in ("--jsonl", "--now", "--catalog", "--db", "--customer"):
        assert option in output


# --------------------------------------------------------------------------- chat --jsonl


def test_jsonl_prints_nothing_without_input(tmp_path: Path) -> None:
    result = kesu("chat", "--jsonl", "--now", NOW, "--db", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_jsonl_answers_each_line_with_exactly_one_object(tmp_path: Path) -> None:
    stdin = jsonl("沙发扶手开裂了") + "\n" + "我叫王丽，电话13812345678\n"  # a JSON line, an empty line, a raw line
    result = kesu("chat", "--jsonl", "--now", NOW, "--db", f"sqlite:///{tmp_path / 'x.db'}", stdin=stdin,
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        assert set(obj) >= TURN_KEYS
        assert isinstance(obj["replies"], list) and obj["replies"]
        assert all(isinstance(reply, str) and reply for reply in obj["replies"])
        assert obj["case"] is None
        assert set(obj["fields"]) <= set(FIELD_KEYS)
    assert objects[0]["fields"]["description"] == "沙发扶手开裂了"
    assert objects[0]["asking"] == "name"
    assert objects[1]["asking"] == "name"  # the empty line changed nothing
    assert objects[1]["fields"] == objects[0]["fields"]
    assert objects[2]["fields"]["name"] == "王丽"  # the raw (non-JSON) line was taken as the text itself
    assert objects[2]["fields"]["phone"] == "13812345678"
    assert objects[2]["state"] == "collecting"


def test_jsonl_answers_each_line_before_the_next_is_sent(tmp_path: Path) -> None:
    """Evaluation tools hold a dialogue: the answer to a line must arrive while stdin is still open."""
    process = subprocess.Popen([*KESU, "chat", "--jsonl", "--now", NOW, "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, encoding="utf-8", cwd=tmp_path, env=_env())
    assert process.stdin is not None and process.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            for text, asking in (("沙发扶手开裂了", "name"), ("我姓张", "phone")):
                process.stdin.write(jsonl(text))
                process.stdin.flush()
                assert selector.select(timeout=TIMEOUT), f"no answer to {text!r} while stdin is open"
                answer = json.loads(process.stdout.readline())
                assert answer["asking"] == asking
        process.stdin.close()
        assert process.stdout.read() == ""
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_jsonl_conversation_reaches_confirming_then_opens_a_case(
        conversation: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = conversation
    assert len(objects) == len(CONVERSATION) + 1
    for obj in objects:
        assert set(obj) >= TURN_KEYS
    assert [obj["state"] for obj in objects[:-2]] == ["collecting"] * (len(CONVERSATION) - 1)
    assert objects[0]["fields"]["mall"] == "sh-zhenbei"
    confirming = objects[-2]
    assert confirming["state"] == "confirming"
    assert confirming["asking"] is None
    assert confirming["case"] is None
    assert confirming["fields"]["delivery_address"] == "上海市普陀区真北路1号"

    opened = objects[-1]
    case = opened["case"]
    assert isinstance(case, dict)
    assert case["number"] in "\n".join(opened["replies"])
    assert set(FIELD_KEYS) <= set(case)
    assert "扶手开裂" in case["description"]
    assert {key: case[key] for key in FIELD_KEYS if key != "description"} == {
        "name": "王丽",
        "phone": "13812345678",
        "city": "上海",
        "mall": "sh-zhenbei",
        "amount": 12800,
        "purchase_date": "2025-12-08",
        "brand": "顾家家居",
        "delivery_date": "2026-11-20",
        "delivery_address": "上海市普陀区真北路1号",
        "order_no": None,
        "over_warranty": False,
        "priority": "normal",
        "expectation": ["exchange"],
    }


def test_jsonl_same_customer_resumes_in_a_new_process(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    first = turns(kesu("chat", "--jsonl", "--now", NOW, "--db", db, "--customer", "c1", stdin=jsonl(OPENING),
                       cwd=tmp_path))
    second = turns(kesu("chat", "--jsonl", "--now", NOW, "--db", db, "--customer", "c1",
                        stdin=jsonl("11月20号送的"), cwd=tmp_path))
    assert second[0]["fields"]["name"] == "王丽"
    assert second[0]["fields"]["delivery_date"] == "2026-11-20"
    assert second[0]["asking"] != first[0]["asking"]


# --------------------------------------------------------------------------- extract


def test_extract_prints_the_public_fields_of_one_message(tmp_path: Path) -> None:
    result = kesu("extract", "--now", NOW, stdin=OPENING, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)
    assert set(fields) == {"name", "phone", "city", "mall", "amount", "purchase_date", "brand", "description",
                           "expectation", "over_warranty", "priority"}
    assert "扶手开裂" in fields.pop("description")
    assert fields.pop("priority") in ("normal", "important", "major")
    assert fields == {
        "name": "王丽",
        "phone": "13812345678",
        "city": "上海",
        "mall": "sh-zhenbei",
        "amount": 12800,
        "purchase_date": "2025-12-08",
        "brand": "顾家家居",
        "expectation": ["exchange"],
        "over_warranty": False,
    }


CUSTOM_CATALOG = """\
malls:
  - id: tj-binhai
    name: 星河天津滨海家居广场
    city: 天津
    aliases: ["滨海店", "滨海广场"]
brands:
  - name: 木语工坊
    aliases: ["木语"]
"""
CUSTOM_MESSAGE = "在滨海店买的木语餐桌，桌腿断了"


def test_custom_catalog_is_honoured(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CUSTOM_CATALOG, encoding="utf-8")

    custom = json.loads(kesu("extract", "--now", NOW, "--catalog", str(catalog), stdin=CUSTOM_MESSAGE,
                             cwd=tmp_path).stdout)
    assert custom["mall"] == "tj-binhai"
    assert custom["city"] == "天津"
    assert custom["brand"] == "木语工坊"
    demo = json.loads(kesu("extract", "--now", NOW, stdin=CUSTOM_MESSAGE, cwd=tmp_path).stdout)
    assert "mall" not in demo or demo["mall"] is None

    chat = turns(kesu("chat", "--jsonl", "--now", NOW, "--catalog", str(catalog), "--db",
                      f"sqlite:///{tmp_path / 'x.db'}", stdin=jsonl(CUSTOM_MESSAGE), cwd=tmp_path))
    assert chat[0]["fields"]["mall"] == "tj-binhai"
    assert chat[0]["fields"]["brand"] == "木语工坊"


# --------------------------------------------------------------------------- cases list / show


def test_cases_list_shows_the_case_with_a_masked_phone(conversation: tuple[str, list[dict[str, Any]]],
                                                       case: dict[str, Any], workdir: Path) -> None:
    db, _ = conversation
    result = kesu("cases", "list", "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert case["number"] in result.stdout
    assert ZHENBEI in result.stdout
    assert "138****5678" in result.stdout
    assert "13812345678" not in result.stdout
    assert "王丽" in result.stdout


def test_cases_list_json(conversation: tuple[str, list[dict[str, Any]]], case: dict[str, Any],
                         workdir: Path) -> None:
    db, _ = conversation
    result = kesu("cases", "list", "--json", "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["number"] == case["number"]
    assert set(FIELD_KEYS) <= set(rows[0])
    assert rows[0]["mall"] == "sh-zhenbei"


def test_cases_list_filters_by_mall(conversation: tuple[str, list[dict[str, Any]]], case: dict[str, Any],
                                    workdir: Path) -> None:
    db, _ = conversation
    other = kesu("cases", "list", "--db", db, "--mall", "bj-xisihuan", cwd=workdir)
    assert other.returncode == 0, other.stderr
    assert case["number"] not in other.stdout


def test_cases_show_gives_full_detail(conversation: tuple[str, list[dict[str, Any]]], case: dict[str, Any],
                                      workdir: Path) -> None:
    db, _ = conversation
    result = kesu("cases", "show", case["number"], "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    for expected in (case["number"], "王丽", "13812345678", ZHENBEI, "顾家家居", "12,800元", "2025年12月8日",
                     "2026年11月20日", "上海市普陀区真北路1号", "扶手开裂", "换货", OPENING, "确认"):
        assert expected in result.stdout, expected
    assert "2026-11-22 14:30" in result.stdout  # staff read Shanghai time


def test_cases_show_transcript_times_are_shanghai_time(conversation: tuple[str, list[dict[str, Any]]],
                                                       case: dict[str, Any], workdir: Path) -> None:
    db, _ = conversation
    output = kesu("cases", "show", case["number"], "--db", db, cwd=workdir).stdout
    stamped = [line for line in output.splitlines() if line.startswith("[")]
    assert len(stamped) >= len(CONVERSATION) + 1
    assert all(line.startswith("[2026-11-22 14:30]") for line in stamped), stamped


def test_cases_show_accepts_a_sloppily_typed_number(conversation: tuple[str, list[dict[str, Any]]],
                                                    case: dict[str, Any], workdir: Path) -> None:
    db, _ = conversation
    number = case["number"]
    typed = f"{number[:2]}-{number[2:8]}-{number[8:]}".lower()
    result = kesu("cases", "show", typed, "--json", "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["number"] == number


def test_cases_show_json_is_the_case(conversation: tuple[str, list[dict[str, Any]]], case: dict[str, Any],
                                     workdir: Path) -> None:
    db, _ = conversation
    result = kesu("cases", "show", case["number"], "--json", "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(FIELD_KEYS) <= set(shown)
    assert {key: shown[key] for key in FIELD_KEYS} == {key: case[key] for key in FIELD_KEYS}
    assert shown["number"] == case["number"]


@pytest.mark.parametrize("number", [format_case_number(date(2026, 11, 22), 2), "KS2611220010", "abc"],
                         ids=["valid-but-absent", "wrong-check-digit", "garbage"])
def test_cases_show_unknown_number_fails_with_a_message(conversation: tuple[str, list[dict[str, Any]]],
                                                        workdir: Path, number: str) -> None:
    db, _ = conversation
    result = kesu("cases", "show", number, "--db", db, cwd=workdir)
    assert_clean_error(result, number)
    assert result.stdout == ""


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("now", ["garbage", "2026-13-45T10:00:00+08:00", "2026-11-22T14:30:00"],
                         ids=["garbage", "impossible", "naive"])
def test_bad_now_is_a_clear_error(tmp_path: Path, now: str) -> None:
    result = kesu("chat", "--jsonl", "--now", now, "--db", f"sqlite:///{tmp_path / 'x.db'}", stdin=jsonl("你好"),
                  cwd=tmp_path)
    assert_clean_error(result, "--now")
    assert result.stdout == ""


def test_bad_now_in_extract_is_a_clear_error(tmp_path: Path) -> None:
    result = kesu("extract", "--now", "next tuesday", stdin="你好", cwd=tmp_path)
    assert_clean_error(result, "--now")
    assert result.stdout == ""


def test_outbox_shows_counts_by_state(conversation: tuple[str, list[dict[str, Any]]], workdir: Path) -> None:
    db, _ = conversation
    result = kesu("outbox", "--db", db, cwd=workdir)
    assert result.returncode == 0, result.stderr
    # The demo catalog routes nowhere, so nothing was queued for staff groups.
    assert result.stdout.splitlines()[0] == "待发送 0｜发送中 0｜已送达 0｜发送失败 0"


def test_outbox_rejects_an_unknown_state(workdir: Path, tmp_path: Path) -> None:
    result = kesu("outbox", "--state", "lost", "--db", f"sqlite:///{tmp_path / 'o.db'}", cwd=workdir)
    assert result.returncode != 0


# --------------------------------------------------------------------------- kesu case classify


@pytest.fixture
def own_case(conversation: tuple[str, list[dict[str, Any]]], case: dict[str, Any], tmp_path: Path) -> str:
    """A copy of the module's database, so classifying its case leaves the other tests' case alone."""
    db, _ = conversation
    copy = tmp_path / "cases.db"
    shutil.copyfile(db.removeprefix("sqlite:///"), copy)
    return f"sqlite:///{copy}"


def stored(db: str, number: str) -> CaseRecord:
    store = Store.from_url(db, migrate=False)
    try:
        found = store.get_case(number)
    finally:
        store.close()
    assert found is not None
    return found


def test_case_classify_sets_nature_and_grade(own_case: str, case: dict[str, Any], tmp_path: Path) -> None:
    number = case["number"]
    result = kesu("case", "classify", number, "--nature", "delivery", "--priority", "important", "--as", "cli:li",
                  "--name", "李经理", "--db", own_case, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    classified = stored(own_case, number)
    assert (classified.nature, classified.fields["priority"], classified.status) == ("delivery", "important", "new")
    assert result.stdout.strip() == Renderer().render("staff/action_done", {"case": classified, "action": "classify"})

    graded = kesu("case", "classify", number, "--priority", "normal", "--db", own_case, cwd=tmp_path)
    assert graded.returncode == 0, graded.stderr
    assert (stored(own_case, number).nature, stored(own_case, number).fields["priority"]) == ("delivery", "normal")


def test_case_classify_without_either_option_says_what_to_give(own_case: str, case: dict[str, Any],
                                                               tmp_path: Path) -> None:
    stored_before = stored(own_case, case["number"])
    result = kesu("case", "classify", case["number"], "--db", own_case, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == Renderer().render("staff/classify_what",
                                                      {"natures": NATURES, "priorities": PRIORITIES})
    assert stored(own_case, case["number"]).version == stored_before.version


@pytest.mark.parametrize(("option", "value"), [("--priority", "urgent"), ("--nature", "质量")])
def test_case_classify_rejects_unknown_codes(own_case: str, case: dict[str, Any], tmp_path: Path, option: str,
                                             value: str) -> None:
    before = stored(own_case, case["number"])
    result = kesu("case", "classify", case["number"], option, value, "--db", own_case, cwd=tmp_path)
    assert_clean_error(result, option)
    assert result.returncode == 2
    assert stored(own_case, case["number"]) == before


def test_case_progress_with_a_leading_time_promises_the_next_update(own_case: str, case: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    number = case["number"]
    assert kesu("case", "claim", number, "--db", own_case, cwd=tmp_path).returncode == 0
    before = datetime.now(UTC)
    result = kesu("case", "progress", number, "3天 品牌方已安排检测", "--db", own_case, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    updated = stored(own_case, number)
    assert updated.next_update_due is not None
    assert before + timedelta(days=3) <= updated.next_update_due <= datetime.now(UTC) + timedelta(days=3)
    progress = [e for e in Store.from_url(own_case, migrate=False).get_case_events(updated.id) if e.kind == "progress"]
    assert progress[0].data["text"] == "品牌方已安排检测"
