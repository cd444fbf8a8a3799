#!/usr/bin/env python3
"""Medians, spreads and ratios of bench/run.sh samples.

    stats.py --csv latest.csv [--markdown latest.md] [--machine TEXT] [--runs N]

Reads `case,tool,run,seconds,ok` rows; failed samples (ok != 1) are left
out of the statistics and counted in the table. Prints a plain-text table
on stdout and, with --markdown, writes the same table as markdown. Stdlib
only.
"""

import argparse
import csv
import statistics
import sys
from collections import defaultdict

TOOLS = [
    ("kiln", "kiln"),
    ("kiln-rootless", "kiln rootless"),
    ("kiln-native", "kiln native"),
    ("docker", "BuildKit"),
    ("docker26", "BuildKit 0.13"),
    ("buildah", "buildah"),
    ("buildah139", "buildah 1.39"),
]
# Ratio columns after issue 7's target (kiln/BuildKit 0.8): the newer peers.
EXTRA_RATIOS = [("docker26", "kiln/BuildKit 0.13"), ("buildah139", "kiln/buildah 1.39")]
# kiln against itself: (tool, column), the tool's median over kiln's.
SELF_RATIOS = [("kiln-rootless", "rootless/root"), ("kiln-native", "native/overlayfs")]

# case id -> (description, target for kiln/BuildKit from issue 7)
CASES = [
    ("flask-cold", "Flask example, cold (base present, empty cache)", 0.7),
    ("flask-noop", "Flask example, nothing changed", 0.1),
    ("flask-edit", "Flask example, app.py edited", 0.7),
    ("run20-cold", "20 x `RUN true`, cold", 0.3),
    ("stages-cold", "two stages that each `sleep 2`, then one copying from both", 1.0),
    ("copy200-cold", "COPY of a 200 MB context of 2,000 files, cold", 0.7),
    ("copy200-noop", "the same, nothing changed", 0.1),
]


def fmt_s(x: float) -> str:
    if x < 1:
        return f"{x:.3f}"
    return f"{x:.2f}"


def summarise(samples):
    """{(case, tool): [seconds]} and {(case, tool): failures}."""
    ok = defaultdict(list)
    failed = defaultdict(int)
    for row in samples:
        key = (row["case"], row["tool"])
        if row["ok"] == "1":
            ok[key].append(float(row["seconds"]))
        else:
            failed[key] += 1
    return ok, failed


def cell(values, fails):
    if not values:
        return "failed" if fails else "-"
    med = statistics.median(values)
    text = f"{fmt_s(med)} ({fmt_s(min(values))}-{fmt_s(max(values))})"
    if fails:
        text += f" [{fails} failed]"
    return text


def build_rows(ok, failed):
    present_tools = [t for t, _ in TOOLS if any(k[1] == t for k in list(ok) + list(failed))]
    known = {c for c, _, _ in CASES}
    extra = sorted({k[0] for k in list(ok) + list(failed)} - known)
    cases = [c for c in CASES if any(k[0] == c[0] for k in list(ok) + list(failed))]
    cases += [(c, c, None) for c in extra]
    header = ["case"] + [f"{name} s, median (min-max)" for t, name in TOOLS if t in present_tools]
    header += ["kiln/BuildKit", "target", "met", "kiln/buildah"]
    header += [name for t, name in EXTRA_RATIOS if t in present_tools]
    header += [name for t, name in SELF_RATIOS if t in present_tools]
    rows = []
    for case, desc, target in cases:
        row = [desc]
        for t, _ in TOOLS:
            if t in present_tools:
                row.append(cell(ok.get((case, t), []), failed.get((case, t), 0)))
        kiln = ok.get((case, "kiln"))
        med = {t: statistics.median(v) for (c, t), v in ok.items() if c == case and v}
        r_bk = med["kiln"] / med["docker"] if kiln and "docker" in med else None
        r_ba = med["kiln"] / med["buildah"] if kiln and "buildah" in med else None
        if r_bk is None:
            row.append("-")
        elif target is not None and (round(r_bk, 2) <= target < r_bk or r_bk <= target < round(r_bk, 2)):
            # two decimals would hide which side of the target it is on
            row.append(f"{r_bk:.3f}")
        else:
            row.append(f"{r_bk:.2f}")
        row.append(f"<= {target}" if target is not None else "")
        if r_bk is None or target is None:
            row.append("")
        else:
            row.append("yes" if r_bk <= target else "NO")
        row.append(f"{r_ba:.2f}" if r_ba is not None else "-")
        for t, _ in EXTRA_RATIOS:
            if t in present_tools:
                r = med["kiln"] / med[t] if kiln and t in med else None
                row.append(f"{r:.2f}" if r is not None else "-")
        for t, _ in SELF_RATIOS:
            if t in present_tools:
                r = med[t] / med["kiln"] if kiln and t in med else None
                row.append(f"{r:.2f}" if r is not None else "-")
        rows.append(row)
    return header, rows


def text_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = []
    for j, r in enumerate([header] + rows):
        cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--markdown")
    ap.add_argument("--machine", default="")
    ap.add_argument("--runs", default="")
    args = ap.parse_args()
    with open(args.csv, newline="", encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    if not samples:
        print("stats: no samples", file=sys.stderr)
        return 1
    ok, failed = summarise(samples)
    header, rows = build_rows(ok, failed)
    print(text_table(header, rows))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("# kiln vs BuildKit vs buildah\n\n")
            if args.machine:
                f.write(f"{args.machine}\n\n")
            if args.runs:
                f.write(f"Wall-clock seconds, median and (min-max) of {args.runs} runs per tool, "
                        "tools alternating run by run. Ratios are of medians; "
                        "targets are issue 7's (kiln/BuildKit).\n\n")
            f.write(md_table(header, rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
