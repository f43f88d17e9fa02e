"""Latency of ``dialogs.extraction.extract()`` on a varied corpus of customer messages.

What it measures
    * ``extract()`` wall time per message (``time.perf_counter_ns``) over a generated corpus of
      ~300 messages: short answers to a question, multi-fact openings, ~500-character rants and
      one 20 000-character paste. The corpus is built here, seeded, from the demo catalog's malls
      and brands, so every run times the same text.
    * The cold cost: the very first ``extract()`` call of the process (alias indexes are built
      lazily, pypinyin is imported on first use), next to a second, warm call on the same text.
    * After one unmeasured warm-up pass, several timed passes: p50/p90/p99/max in ms overall and
      per kind of message, and messages/s (messages divided by the summed extract time).
    * Peak RSS of this process (``resource.getrusage``) and the import time of
      ``dialogs.extraction`` in a fresh interpreter (wall time minus a bare interpreter start,
      plus ``-X importtime``'s own figure).

How to read it
    The target is p99 < 10 ms for the whole corpus. Short answers are what nearly every turn
    looks like; rants and the huge paste are rare but bound the worst case (``normalize()`` cuts
    input at ``MAX_EXTRACT_CHARS`` so the 20 000-character message should cost about what a
    2 000-character one does). Percentiles are nearest-rank over every timed call.
    ``--profile KIND`` adds a cProfile of the warm hot path for one kind of message.

    .venv/bin/python benchmarks/extraction_latency.py [--passes 5] [--seed 7] [--profile short]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import machine_line

REPO = Path(__file__).resolve().parent.parent
NOW = datetime.fromisoformat("2026-11-22T14:30:00+08:00")
TARGET_P99_MS = 10.0
KINDS = ("short", "multi", "rant", "huge")

# ------------------------------------------------------------------------------------ corpus

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = ["丽", "伟", "娜", "静", "磊", "敏", "强", "芳", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超",
         "秀英", "建国", "海燕", "志强", "桂兰", "晓东", "雪梅", "红霞", "子涵"]
HONORIFICS = ["先生", "女士", "阿姨", "小姐", "大哥"]
PRODUCTS = ["沙发", "床垫", "衣柜", "橱柜", "餐桌", "茶几", "地板", "瓷砖", "马桶", "油烟机", "热水器", "空调",
            "书柜", "床", "电视柜", "浴室柜", "窗帘", "灶具"]
PROBLEMS = ["扶手开裂了", "中间塌陷", "门板掉漆", "有很重的异味", "坐上去吱吱响", "抽屉关不上", "台面裂了",
            "地板起拱", "瓷砖空鼓", "漏水", "颜色和样品不一样", "尺寸不对", "送来就是坏的", "安装师傅把墙打坏了",
            "到现在还没送货", "说好的赠品没给", "用了两个月就不制冷了", "电机有异响", "表面起泡", "甲醛味刺鼻"]
EXPECTATIONS = ["要求退货", "希望换货", "请派人上门维修", "要求赔偿", "给我退款", "希望尽快安装", "要求道歉",
                "请来人看看", "退一赔三", "尽快送过来"]
DATES = ["去年12月8号", "上个月15号", "今年元旦", "上周六", "前天", "3月5号", "2026-06-18", "双十一", "今年5月20日",
         "10月3号", "昨天", "上上个月2号", "国庆节", "九月十二号"]
AMOUNTS = ["12800", "一万二", "8999元", "3.5万", "¥16,800", "花了6800块", "总价23800元", "两万八", "4500块钱",
           "一共38000", "1200元"]
FILLER = ["我真的很生气", "你们这样做生意是不行的", "打了好几次电话都没人管", "店里的导购当时说得天花乱坠",
          "现在一问三不知", "我们家老人天天坐这个沙发", "孩子还小，这个味道受不了", "我请了两天假在家等",
          "师傅来了看一眼就走了", "说要找厂家，厂家又说找商场", "我已经拍了照片和视频", "这都快一个月了",
          "再不处理我就去12315投诉", "要不就发到网上让大家评评理", "当初就是看你们商场信誉好才来买的",
          "结果售后完全是两回事", "客服电话一直占线", "微信留言也没人回", "邻居也在你们这买的，也有一样的问题"]


@dataclass(frozen=True)
class Message:
    kind: str
    text: str


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


def _phone(rng: random.Random) -> str:
    digits = rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))
    number = "1" + digits
    style = rng.randrange(4)
    if style == 0:
        return number
    if style == 1:
        return f"{number[:3]} {number[3:7]} {number[7:]}"
    if style == 2:
        return f"{number[:3]}-{number[3:7]}-{number[7:]}"
    return number.translate(str.maketrans("0123456789", "零一二三四五六七八九"))


def _order_no(rng: random.Random) -> str:
    return rng.choice(["SO", "HT", "XS", ""]) + "".join(rng.choice("0123456789") for _ in range(rng.randint(8, 14)))


def build_corpus(seed: int) -> list[Message]:
    """~300 messages: mostly short answers and openings, some rants, one 20 000-character paste."""
    from dialogs.catalog import load_catalog

    catalog = load_catalog()
    rng = random.Random(seed)
    malls = [label for m in catalog.malls for label in (m.name, *m.aliases)]
    brands = [label for b in catalog.brands for label in (b.name, *b.aliases)]
    # Sound-alike typos the pinyin matcher is there for.
    brands += ["芝华士", "顧家", "gujia", "马克波罗", "欧拍"]

    short_makers: list[Callable[[], str]] = [
        lambda: _name(rng),
        lambda: "我姓" + rng.choice(SURNAMES),
        lambda: rng.choice(SURNAMES) + rng.choice(HONORIFICS),
        lambda: _phone(rng),
        lambda: "电话是" + _phone(rng),
        lambda: rng.choice(malls),
        lambda: "在" + rng.choice(malls) + "买的",
        lambda: rng.choice(brands),
        lambda: "买的是" + rng.choice(brands) + rng.choice(PRODUCTS),
        lambda: rng.choice(DATES) + rng.choice(["买的", "送的货", "", "下的单"]),
        lambda: rng.choice(AMOUNTS),
        lambda: rng.choice(EXPECTATIONS),
        lambda: rng.choice(PROBLEMS),
        lambda: rng.choice(["没有", "不知道", "记不清了", "确认", "对", "好的", "不对", "不想说", "取消"]),
        lambda: "订单号" + _order_no(rng),
        lambda: "送到" + rng.choice(["上海市闵行区七莘路", "北京市朝阳区建国路", "南京市鼓楼区中山北路"])
        + str(rng.randint(1, 999)) + "号" + str(rng.randint(1, 30)) + "栋" + str(rng.randint(101, 2801)) + "室",
        lambda: rng.choice(["你好", "在吗", "谢谢", "我的投诉怎么样了", "你是机器人吗", "😡😡😡"]),
    ]

    def opening() -> str:
        parts = [
            rng.choice(["", "你好，", "气死了！！", "您好，"]) + rng.choice(["我叫", "我是", "本人"]) + _name(rng),
            rng.choice(["电话", "手机", "联系方式"]) + _phone(rng),
            rng.choice(DATES) + "在" + rng.choice(malls) + rng.choice(brands) + "买的" + rng.choice(PRODUCTS),
            rng.choice(AMOUNTS),
            rng.choice(PROBLEMS),
            rng.choice(EXPECTATIONS),
        ]
        if rng.random() < 0.4:
            parts.insert(rng.randrange(len(parts)), "订单号" + _order_no(rng))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts)), rng.choice(FILLER))
        keep = [p for p in parts if rng.random() < 0.9]
        return rng.choice(["，", "，", " ", "。"]).join(keep)

    def rant(size: int) -> str:
        pieces: list[str] = []
        while sum(len(p) + 1 for p in pieces) < size:
            pieces.append(rng.choice([*FILLER, *PROBLEMS, *EXPECTATIONS,
                                      rng.choice(DATES) + "在" + rng.choice(malls) + "买的" + rng.choice(PRODUCTS),
                                      rng.choice(brands) + "的" + rng.choice(PRODUCTS) + rng.choice(PROBLEMS),
                                      "花了" + rng.choice(AMOUNTS)]))
        return "，".join(pieces)[:size] + "！"

    corpus = [Message("short", rng.choice(short_makers)()) for _ in range(150)]
    corpus += [Message("multi", opening()) for _ in range(100)]
    corpus += [Message("rant", rant(rng.randint(450, 550))) for _ in range(49)]
    corpus.append(Message("huge", rant(20_000)))
    rng.shuffle(corpus)
    return corpus


# ------------------------------------------------------------------------------------ helpers


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _run_python(code: str, *extra: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *extra, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True, env=env, timeout=60)
    return (time.perf_counter() - started) * 1000, done.stderr


def import_cost(repeats: int) -> tuple[float, float, float, list[tuple[float, str]]]:
    """(bare interpreter ms, import wall ms, -X importtime cumulative ms, modules by own time) — medians."""
    bare = statistics.median(_run_python("pass")[0] for _ in range(repeats))
    wall = statistics.median(_run_python("import dialogs.extraction")[0] for _ in range(repeats))
    cumulative: list[float] = []
    own: dict[str, list[float]] = {}
    for _ in range(repeats):
        _, report = _run_python("import dialogs.extraction", "-X", "importtime")
        for line in report.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
            if match is None:
                continue
            name, self_us, total_us = match[3], int(match[1]), int(match[2])
            if name == "dialogs.extraction":
                cumulative.append(total_us / 1000)
            own.setdefault(name, []).append(self_us / 1000)
    heaviest = sorted(((statistics.median(ms), name) for name, ms in own.items()), reverse=True)[:8]
    return bare, wall - bare, statistics.median(cumulative) if cumulative else math.nan, heaviest


def _fmt_row(label: str, values_ns: list[int]) -> str:
    ms = sorted(v / 1e6 for v in values_ns)
    return (f"  {label:<8}{len(ms):>7} {percentile(ms, 50):>8.3f} {percentile(ms, 90):>8.3f} "
            f"{percentile(ms, 99):>8.3f} {ms[-1]:>8.3f} {statistics.fmean(ms):>8.3f}")


# ------------------------------------------------------------------------------------ main



def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the corpus (default 5)")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed (default 7)")
    parser.add_argument("--import-repeats", type=int, default=5, help="subprocess runs per import figure")
    parser.add_argument("--profile", choices=(*KINDS, "all"), help="also cProfile extract() on this kind")
    args = parser.parse_args()

    started = time.perf_counter()
    from dialogs.catalog import load_catalog
    from dialogs.extraction import extract
    from dialogs.extraction.text import MAX_EXTRACT_CHARS

    import_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    catalog = load_catalog()
    catalog_ms = (time.perf_counter() - started) * 1000
    corpus = build_corpus(args.seed)
    # build_corpus loads its own catalog: the timed one above keeps its lazy indexes unbuilt.

    first = next(m for m in corpus if m.kind == "multi")
    t0 = time.perf_counter_ns()
    extract(first.text, now=NOW, catalog=catalog)
    cold_ns = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    extract(first.text, now=NOW, catalog=catalog)
    second_ns = time.perf_counter_ns() - t0

    for message in corpus:  # warm-up pass: pinyin cache, regex caches
        extract(message.text, now=NOW, catalog=catalog)

    by_kind: dict[str, list[int]] = {kind: [] for kind in KINDS}
    total_ns = 0
    for _ in range(args.passes):
        for message in corpus:
            t0 = time.perf_counter_ns()
            extract(message.text, now=NOW, catalog=catalog)
            elapsed = time.perf_counter_ns() - t0
            by_kind[message.kind].append(elapsed)
            total_ns += elapsed
    everything = [v for values in by_kind.values() for v in values]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lengths = {kind: [len(m.text) for m in corpus if m.kind == kind] for kind in KINDS}
    print("Kesu extraction latency: dialogs.extraction.extract()")
    print(machine_line())
    print(f"python {sys.version.split()[0]}, clock {NOW.isoformat()}, seed {args.seed}, "
          f"MAX_EXTRACT_CHARS={MAX_EXTRACT_CHARS}")
    print(f"corpus: {len(corpus)} messages, {args.passes} timed passes after 1 warm-up pass "
          f"({len(everything)} timed calls)")
    for kind in KINDS:
        chars = lengths[kind]
        print(f"  {kind:<6} {len(chars):>4} messages, {min(chars)}–{max(chars)} chars "
              f"(median {statistics.median(chars):.0f})")
    print()
    print("per-call latency (ms)")
    print(f"  {'kind':<8}{'calls':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    for kind in KINDS:
        print(_fmt_row(kind, by_kind[kind]))
    print(_fmt_row("ALL", everything))
    p99 = percentile(sorted(v / 1e6 for v in everything), 99)
    verdict = "within" if p99 < TARGET_P99_MS else "MISSES"
    print(f"  target p99 < {TARGET_P99_MS:.0f} ms: overall p99 {p99:.3f} ms {verdict} the target")
    print(f"throughput: {len(everything) / (total_ns / 1e9):,.0f} messages/s (single thread, corpus mix)")
    print()
    print("cold start (in this process)")
    print(f"  import dialogs.catalog + dialogs.extraction: {import_ms:8.1f} ms")
    print(f"  load_catalog() (demo):                       {catalog_ms:8.1f} ms")
    print(f"  first extract() (cold, {len(first.text)} chars):          {cold_ns / 1e6:8.1f} ms")
    print(f"  second extract(), same text (warm):          {second_ns / 1e6:8.3f} ms")
    print(f"peak RSS of this process: {peak_rss_mb:.1f} MB")
    print()
    bare, wall, cumulative, slowest = import_cost(args.import_repeats)
    print(f"import dialogs.extraction in a fresh interpreter (median of {args.import_repeats})")
    print(f"  bare interpreter start:           {bare:7.1f} ms")
    print(f"  wall time minus bare start:       {wall:7.1f} ms")
    print(f"  -X importtime, cumulative:        {cumulative:7.1f} ms")
    print("  modules with the most own import time (-X importtime self, median):")
    for ms, name in slowest:
        print(f"    {ms:7.1f} ms  {name}")

    if args.profile:
        chosen = [m for m in corpus if args.profile in ("all", m.kind)]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(max(1, 200 // len(chosen))):
            for message in chosen:
                extract(message.text, now=NOW, catalog=catalog)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print()
        print(f"cProfile of warm extract() on kind={args.profile} (top 15 by own time)")
        print(out.getvalue().rstrip())


if __name__ == "__main__":
    main()
