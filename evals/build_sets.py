"""Builds the evaluation JSONL files from the item sources beside this file.

    python evals/build_sets.py          # rewrites evals/*.jsonl, then runs the data check

The JSONL files are the artefact that the runner (benchmarks/eval_accuracy.py) reads; this script
exists so that relative dates ("上周六", "上个月15号") are computed with datetime, never by hand, and
so that derived labels (city from the mall, over_warranty from the purchase date, the priority
implied by the text) are checked for consistency while the items are written.

Date specs accepted wherever a date is expected (resolved against the item's `now` in Asia/Shanghai):
    "2025-12-08"   literal ISO date
    "ago:N"        N days before today
    "wd:W:D"       ISO weekday D (1 = Monday … 7 = Sunday) of the Monday-based week W weeks from now
    "md:M:D"       most recent past (or today's) M-D, the "M月D号" rule
    "tm:D"         day D of this month
    "lm:D"         day D of last month
    "ly:M:D"       M-D of last year
    "ty:M:D"       M-D of this year
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval_accuracy as runner  # noqa: E402

SHANGHAI = timezone(timedelta(hours=8))
CATALOG = runner.load_catalog_data(ROOT / "bot" / "data" / "demo_catalog.yaml")
MALL_CITY = {m["id"]: m["city"] for m in CATALOG["malls"]}
BRANDS = {b["name"] for b in CATALOG["brands"]}

PRIORITY_RANK = {"normal": 0, "important": 1, "major": 2}
# Words that, in this data set, always mean what the priority rule says; an item whose declared
# priority disagrees with them must say so explicitly (pri_note=...), so that slips are caught.
MAJOR_WORDS = ["受伤", "漏电", "起火", "着火", "冒烟", "甲醛超标", "住院", "媒体", "曝光", "记者", "电视台",
               "砸伤", "烫伤", "划伤", "割伤", "触电", "电到", "爆炸", "炸裂", "自爆", "过敏"]
IMPORTANT_WORDS = ["12315", "消协", "消费者协会", "法院", "起诉", "律师", "又", "第二次", "第三次", "第四次",
                   "第五次", "好几次", "一直没人管", "没人管", "市场监管", "工商", "多次", "三番五次"]


def today(now: str) -> date:
    return datetime.fromisoformat(now).astimezone(SHANGHAI).date()


def _safe(y: int, m: int, d: int) -> date:
    return date(y, m, d)


def resolve_date(spec: str, now: str) -> str:
    t = today(now)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec):
        return date.fromisoformat(spec).isoformat()
    kind, *args = spec.split(":")
    n = [int(a) for a in args]
    if kind == "ago":
        d = t - timedelta(days=n[0])
    elif kind == "wd":
        monday = t - timedelta(days=t.weekday())
        d = monday + timedelta(weeks=n[0], days=n[1] - 1)
    elif kind == "md":
        d = _safe(t.year, n[0], n[1])
        if d > t:
            d = _safe(t.year - 1, n[0], n[1])
    elif kind == "tm":
        d = _safe(t.year, t.month, n[0])
    elif kind == "lm":
        y, m = (t.year, t.month - 1) if t.month > 1 else (t.year - 1, 12)
        d = _safe(y, m, n[0])
    elif kind == "ly":
        d = _safe(t.year - 1, n[0], n[1])
    elif kind == "ty":
        d = _safe(t.year, n[0], n[1])
    else:
        raise ValueError(f"bad date spec {spec!r}")
    return d.isoformat()


def one_year_before(t: date) -> date:
    try:
        return t.replace(year=t.year - 1)
    except ValueError:  # 29 Feb
        return t.replace(year=t.year - 1, day=28)


def derive_over_warranty(purchase: str, now: str) -> bool:
    p = date.fromisoformat(purchase)
    limit = one_year_before(today(now))
    if p == limit:
        raise ValueError(f"purchase date {purchase} is exactly one year before now: avoid the boundary")
    return p < limit


def implied_priority(texts: list[str], amount: float | None) -> str:
    joined = "".join(texts)
    level = "normal"
    if amount is not None and amount >= 20000:
        level = "important"
    if any(w in joined for w in IMPORTANT_WORDS):
        level = "important"
    if any(w in joined for w in MAJOR_WORDS):
        level = "major"
    return level


def build_fields(now: str, texts: list[str], f: dict[str, Any], where: str) -> dict[str, Any]:
    """Turns the short keyword form used in the item files into public field values."""
    out: dict[str, Any] = {}
    short = {"pd": "purchase_date", "dd": "delivery_date", "addr": "delivery_address", "order": "order_no",
             "ow": "over_warranty", "exp": "expectation", "pri": "priority", "desc": "description"}
    f = dict(f)
    pri_note = f.pop("pri_note", None)
    for k, v in f.items():
        out[short.get(k, k)] = v
    for key in ("purchase_date", "delivery_date"):
        if isinstance(out.get(key), str):
            out[key] = resolve_date(out[key], now)
    if isinstance(out.get("expectation"), str):
        out["expectation"] = out["expectation"].split()
    if isinstance(out.get("description"), str):
        out["description"] = out["description"].split("|")
    mall = out.get("mall")
    if mall is not None:
        if mall not in MALL_CITY:
            raise ValueError(f"{where}: unknown mall {mall}")
        city = out.setdefault("city", MALL_CITY[mall])
        if city != MALL_CITY[mall]:
            raise ValueError(f"{where}: city {city} contradicts mall {mall}")
    if out.get("brand") is not None and out["brand"] not in BRANDS:
        raise ValueError(f"{where}: unknown brand {out['brand']}")
    pd = out.get("purchase_date")
    if isinstance(pd, str):
        derived = derive_over_warranty(pd, now)
        ow = out.setdefault("over_warranty", derived)
        if ow != derived:
            raise ValueError(f"{where}: over_warranty {ow} contradicts purchase date {pd}")
    amount = out.get("amount")
    implied = implied_priority(texts, amount if isinstance(amount, (int, float)) else None)
    declared = out.setdefault("priority", "normal")
    if declared != implied and not pri_note:
        raise ValueError(f"{where}: priority {declared} but the text implies {implied}: {texts}")
    for phrase in out.get("description") or []:
        if not any(phrase in t for t in texts):
            raise ValueError(f"{where}: description phrase {phrase!r} is not in the text")
    return out


ORDER = ["name", "phone", "city", "mall", "brand", "amount", "purchase_date", "delivery_date",
         "delivery_address", "order_no", "over_warranty", "expectation", "priority", "description"]


def ordered(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ORDER if k in d}


def extraction_items(prefix: str, raw: list[tuple[str, str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    items = []
    for i, (now, text, tags, fields) in enumerate(raw, 1):
        iid = f"{prefix}-{i:03d}"
        expected = ordered(build_fields(now, [text], fields, iid))
        tag_list = tags.split()
        for k in expected:
            if k == "priority":
                if expected[k] != "normal":
                    tag_list.append("priority")
            elif k != "city" or "mall" not in expected:
                tag_list.append(k)
        if list(expected) == ["priority"] and "no-facts" not in tag_list and "trap" not in tag_list:
            tag_list.append("nothing-to-extract")
        items.append({"id": iid, "now": now, "text": text, "expected": expected,
                      "tags": sorted(set(tag_list))})
    return items


ASKABLE = ["name", "phone", "mall", "brand", "amount", "purchase_date", "delivery_date", "delivery_address",
           "order_no", "over_warranty", "description", "expectation"]


def conversation_items(prefix: str, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items = []
    for i, c in enumerate(raw, 1):
        iid = f"{prefix}-{i:03d}"
        answers: dict[str, str] = c["answers"]
        missing = [k for k in ASKABLE if k not in answers]
        if missing:
            raise ValueError(f"{iid}: answers missing for {missing}")
        script = c.get("script", [])
        texts = [c["opening"], *answers.values(), *(s["text"] for s in script)]
        exp = build_fields(c["now"], texts, c["expect"], iid)
        full = {k: exp.get(k) for k in ORDER}
        items.append({"id": iid, "now": c["now"], "style": c["style"], "opening": c["opening"],
                      "answers": {k: answers[k] for k in ASKABLE}, "script": script,
                      "expected_case": full})
    return items


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {len(items)} items")


def main() -> int:
    import items_conversations as conv
    import items_conversations_holdout2 as conv2
    import items_extraction_dev as xdev
    import items_extraction_holdout as xho
    import items_extraction_holdout2 as xho2

    write_jsonl(HERE / "extraction_dev.jsonl", extraction_items("ex-dev", xdev.ITEMS))
    write_jsonl(HERE / "extraction_holdout.jsonl", extraction_items("ex-holdout", xho.ITEMS))
    write_jsonl(HERE / "conversations_dev.jsonl", conversation_items("cv-dev", conv.DEV))
    write_jsonl(HERE / "conversations_holdout.jsonl", conversation_items("cv-holdout", conv.HOLDOUT))
    write_jsonl(HERE / "extraction_holdout2.jsonl", extraction_items("ex-holdout2", xho2.ITEMS))
    write_jsonl(HERE / "conversations_holdout2.jsonl", conversation_items("cv-holdout2", conv2.HOLDOUT2))
    return runner.main(["--check-data"])


if __name__ == "__main__":
    raise SystemExit(main())
