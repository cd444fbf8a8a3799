#!/usr/bin/env python3
"""Markdown table of criterion results.

    criterion_summary.py CRITERION_DIR GROUP...

For every benchmark under CRITERION_DIR/GROUP/ (criterion's
`<group>/<function>[/<param>]/new/{estimates,benchmark}.json`) prints the
median time with its 95 % confidence interval and, when the benchmark
declared a throughput, the median throughput. Stdlib only.
"""

import json
import os
import sys


def fmt_time(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_rate(per_s: float, unit: str) -> str:
    if unit == "B":
        for u, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
            if per_s >= scale:
                return f"{per_s / scale:.3g} {u}"
        return f"{per_s:.3g} B/s"
    return f"{per_s:.3g} {unit}/s"


def rows(crit_dir: str, group: str):
    base = os.path.join(crit_dir, group)
    for dirpath, _dirs, files in sorted(os.walk(base)):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "estimates.json"), encoding="utf-8") as f:
            est = json.load(f)
        bench = {}
        if "benchmark.json" in files:
            with open(os.path.join(dirpath, "benchmark.json"), encoding="utf-8") as f:
                bench = json.load(f)
        name = os.path.relpath(os.path.dirname(dirpath), crit_dir)
        med = est["median"]
        rate = ""
        tp = bench.get("throughput") or {}
        for key, unit in (("Bytes", "B"), ("BytesDecimal", "B"), ("Elements", "elem")):
            if key in tp:
                rate = fmt_rate(tp[key] / (med["point_estimate"] / 1e9), unit)
        ci = med["confidence_interval"]
        yield (bench.get("full_id", name), fmt_time(med["point_estimate"]),
               f"{fmt_time(ci['lower_bound'])} - {fmt_time(ci['upper_bound'])}", rate)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    crit_dir, groups = sys.argv[1], sys.argv[2:]
    print("| benchmark | median | 95 % CI of the median | throughput |")
    print("|---|---:|---:|---:|")
    n = 0
    for g in groups:
        for r in rows(crit_dir, g):
            print("| " + " | ".join(r) + " |")
            n += 1
    if n == 0:
        print(f"criterion_summary: no results for {groups} under {crit_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
