#!/usr/bin/env python3
"""Accuracy vs private online latency of the NET-C variants, as a dependency-free SVG.

Usage: scripts/netc_plot.py docs/netc-cifar.csv docs/netc-cifar.svg

Input CSV columns (header required): variant, test_acc (percent), online_ms (mean online
milliseconds per image of `polypi eval --private`). The x axis is logarithmic (ReLU's comparison
protocol is ~40x slower online than the polynomial variants).
"""
import csv
import math
import sys


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    if not rows:
        sys.exit(f"{src}: no rows")
    pts = [(r["variant"], float(r["test_acc"]), float(r["online_ms"])) for r in rows]
    W, H, L, R, T, B = 640, 420, 70, 30, 40, 60
    xs = [math.log10(p[2]) for p in pts]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    if x1 == x0:
        x1 = x0 + 1
    ys = [p[1] for p in pts]
    y0 = max(0.0, 10 * math.floor(min(ys) / 10) - 10)
    y1 = min(100.0, 10 * math.ceil(max(ys) / 10) + 10)

    def px(v):
        return L + (math.log10(v) - x0) / (x1 - x0) * (W - L - R)

    def py(a):
        return H - B - (a - y0) / (y1 - y0) * (H - T - B)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">'
        "NET-C on the CIFAR-10 subset (932 test images): accuracy vs private online latency</text>",
    ]
    for e in range(x0, x1 + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if math.log10(v) > x1 + 1e-9:
                continue
            x = px(v)
            out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#ddd"/>')
            out.append(
                f'<text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle">{v:g}</text>'
            )
    a = y0
    while a <= y1 + 1e-9:
        y = py(a)
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{a:g}</text>')
        a += 10
    out.append(
        f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="black"/>'
    )
    out.append(
        f'<text x="{(L + W - R) / 2}" y="{H - 20}" text-anchor="middle">'
        "mean online latency per image, ms (log scale; loopback, no emulated link)</text>"
    )
    out.append(
        f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {(T + H - B) / 2})">test accuracy, %</text>'
    )
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, (name, acc, ms) in enumerate(pts):
        x, y = px(ms), py(acc)
        c = colors[i % len(colors)]
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{c}"/>')
        anchor = "end" if x > W - R - 120 else "start"
        dx = -10 if anchor == "end" else 10
        # Alternate labels above / below the point so that close points stay readable.
        ly = y - 8 if i % 2 == 0 else y + 18
        out.append(
            f'<text x="{x + dx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="{c}">'
            f"{name}: {acc:.2f}%, {ms:.1f} ms</text>"
        )
    out.append("</svg>")
    open(dst, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
