#!/usr/bin/env python3
"""Plot bench/scaling.sh samples as SVG line charts, and tabulate medians.

    plot.py --csv scaling.csv --out DIR [--machine TEXT]

Writes DIR/scaling-files.svg, DIR/scaling-size.svg, DIR/scaling-stages.svg
(one per sweep present) and DIR/scaling.md. The SVG writer is hand-written
(stdlib only): axes with ticks, log scales where a sweep spans decades, one
polyline with point markers per (tool, kind) series.
"""

import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict
from xml.sax.saxutils import escape

UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

# sweep: (unit name, size of one unit in x's units) for the marginal cost row
MARGINAL = {"files": ("1,000 files", 1000.0), "size": ("GiB", 1024.0), "stages": ("stage", 1.0)}

SWEEPS = {
    # sweep: (title, x label, log x, log y)
    "files": ("Context of N files of 1 KiB: kiln build time", "files in context", True, True),
    "size": ("Context of 1,000 files, total size S: kiln build time", "context size (MiB)", True, True),
    "stages": ("N independent stages that each sleep 1 s, cold", "independent stages", False, False),
}


def x_value(sweep: str, text: str) -> float:
    if sweep == "size":
        t = text.strip().lower().rstrip("b").rstrip("i")
        if t and t[-1] in UNITS:
            return float(t[:-1]) * UNITS[t[-1]] / (1 << 20)
        return float(t) / (1 << 20)
    return float(text)


def nice_ticks(lo: float, hi: float, log: bool):
    if log:
        ticks = []
        e = math.floor(math.log10(lo))
        while 10**e <= hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10**e
                if lo / 1.0001 <= v <= hi * 1.0001:
                    ticks.append(v)
            e += 1
        if len(ticks) > 8:
            ticks = [t for t in ticks if math.log10(t) == int(math.log10(t))]
        return ticks or [lo, hi]
    span = hi - lo or 1.0
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=mag)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 0.001:
        if v >= lo - step * 0.001:
            ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_tick(v: float) -> str:
    if v >= 1000 and v == int(v):
        return f"{int(v):,}"
    if v == int(v):
        return str(int(v))
    if v >= 0.1:
        return f"{v:g}"
    return f"{v:.3g}"


def svg_chart(title, xlabel, ylabel, series, logx, logy, note=""):
    """series: list of (label, [(x, y)]) -> SVG text."""
    w, h = 760, 460
    left, right, top, bottom = 80, 200, 50, 70
    pw, ph = w - left - right, h - top - bottom
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts if y > 0]
    if not xs or not ys:
        return None
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    if logy:
        ylo, yhi = 10 ** math.floor(math.log10(ylo)), 10 ** math.ceil(math.log10(yhi))
    else:
        ylo, yhi = 0.0, yhi * 1.1
    if logx:
        xlo, xhi = xlo / 1.3, xhi * 1.3
    else:
        pad = (xhi - xlo) * 0.05 or 0.5
        xlo, xhi = xlo - pad, xhi + pad

    def tx(x):
        if logx:
            return left + (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * pw
        return left + (x - xlo) / (xhi - xlo) * pw

    def ty(y):
        if logy:
            y = max(y, ylo)
            return top + ph - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * ph
        return top + ph - (y - ylo) / (yhi - ylo) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left + pw / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    if note:
        out.append(f'<text x="8" y="{h - 6}" font-size="10" fill="#555">{escape(note)}</text>')
    # grid and ticks
    for v in nice_ticks(min(xs), max(xs), logx) if logx else nice_ticks(xlo, xhi, False):
        if not (xlo <= v <= xhi):
            continue
        X = tx(v)
        out.append(f'<line x1="{X:.1f}" y1="{top}" x2="{X:.1f}" y2="{top + ph}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{X:.1f}" y="{top + ph + 18}" text-anchor="middle">{fmt_tick(v)}</text>')
    for v in nice_ticks(ylo, yhi, logy):
        Y = ty(v)
        out.append(f'<line x1="{left}" y1="{Y:.1f}" x2="{left + pw}" y2="{Y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 8}" y="{Y + 4:.1f}" text-anchor="end">{fmt_tick(v)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 25}" text-anchor="middle">{escape(xlabel)}'
               f'{" (log scale)" if logx else ""}</text>')
    out.append(f'<text transform="translate(22 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}{" (log scale)" if logy else ""}</text>')
    # series
    for i, (label, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(p for p in pts if p[1] > 0 or not logy)
        path = " ".join(f"{tx(x):.1f},{ty(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{tx(x):.1f}" cy="{ty(y):.1f}" r="3.5" fill="{colour}">'
                       f'<title>{escape(label)}: x={fmt_tick(x)}, {y:.3f} s</title></circle>')
        ly = top + 10 + i * 20
        out.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 40}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tool_name(tool: str) -> str:
    return {"docker": "BuildKit"}.get(tool, tool)


def marginal(points, unit):
    """Seconds per unit between the first and the last point."""
    pts = sorted(points)
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    return (y1 - y0) / (x1 - x0) * unit


def growth(points):
    """Exponent of a power law through the first and last point (log-log slope)."""
    pts = sorted(p for p in points if p[1] > 0)
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    return math.log(y1 / y0) / math.log(x1 / x0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="")
    args = ap.parse_args()
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["ok"] == "1"]
    if not rows:
        print("plot: no successful samples", file=sys.stderr)
        return 1
    samples = defaultdict(list)  # (sweep, tool, kind) -> [(x, s)]
    rss = defaultdict(list)  # (sweep, tool, kind) -> [(x, KiB)]
    labels = {}
    for r in rows:
        key = (r["sweep"], r["tool"], r["kind"])
        x = x_value(r["sweep"], r["x"])
        labels[(r["sweep"], x)] = r["x"]
        samples[key].append((x, float(r["seconds"])))
        if r.get("rss_kib"):
            rss[key].append((x, int(r["rss_kib"])))

    md = ["# kiln scaling curves", ""]
    if args.machine:
        md += [args.machine, ""]
    md += ["Medians of the runs per point (wall-clock seconds). `growth` is the exponent k of "
           "time ~ x^k between the first and the last point (1 = linear, 0 = flat); `s per ...` is the "
           "marginal cost, (t_last - t_first) / (x_last - x_first).", ""]
    for sweep, (title, xlabel, logx, logy) in SWEEPS.items():
        keys = sorted(k for k in samples if k[0] == sweep)
        if not keys:
            continue
        series = []
        md += [f"## {title}", "", f"| {xlabel} | " + " | ".join(f"{tool_name(t)} {k}" for _, t, k in keys) + " |",
               "|---:|" + "---:|" * len(keys)]
        med = {}
        for key in keys:
            by_x = defaultdict(list)
            for x, s in samples[key]:
                by_x[x].append(s)
            med[key] = {x: statistics.median(v) for x, v in by_x.items()}
            tool, kind = key[1], key[2]
            series.append((f"{tool_name(tool)} {kind}",
                           sorted(med[key].items())))
        for x in sorted({x for m in med.values() for x in m}):
            md.append(f"| {labels[(sweep, x)]} | " + " | ".join(
                f"{med[k][x]:.3f}" if x in med[k] else "-" for k in keys) + " |")
        md.append("| growth | " + " | ".join(
            (f"{g:.2f}" if (g := growth(sorted(med[k].items()))) is not None else "-") for k in keys) + " |")
        uname, usize = MARGINAL[sweep]
        md.append(f"| s per {uname} | " + " | ".join(
            (f"{m:.3g}" if (m := marginal(med[k].items(), usize)) is not None else "-") for k in keys) + " |")
        md.append("")
        rkeys = [k for k in keys if rss.get(k)]
        if rkeys:
            md += ["Peak RSS of the kiln process (MiB, median):", "",
                   f"| {xlabel} | " + " | ".join(f"{t} {k}" for _, t, k in rkeys) + " |",
                   "|---:|" + "---:|" * len(rkeys)]
            for x in sorted({x for k in rkeys for x, _ in rss[k]}):
                cells = []
                for k in rkeys:
                    v = [r for xx, r in rss[k] if xx == x]
                    cells.append(f"{statistics.median(v) / 1024:.0f}" if v else "-")
                md.append(f"| {labels[(sweep, x)]} | " + " | ".join(cells) + " |")
            md.append("")
        svg = svg_chart(title, xlabel, "seconds", series, logx, logy, note=args.machine)
        if svg:
            path = os.path.join(args.out, f"scaling-{sweep}.svg")
            with open(path, "w", encoding="utf-8") as f:
                f.write(svg)
            md += [f"![{title}](scaling-{sweep}.svg)", ""]
    with open(os.path.join(args.out, "scaling.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
