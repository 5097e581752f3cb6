#!/usr/bin/env python3
"""Draws benches/chart.svg from the peer comparison's output, target/bench-results/peers-*.jsonl
(shardline and twilight measured in the same run, against the same fake gateway).

Left: flood events/s by shard count and compression (shardline per-event, batch and per-thread
handlers, twilight raw and typed). Right: memory per idle shard by shard count and compression.
Standard library only: `python3 benches/chart.py`.
"""
import glob
import json
import statistics
import sys
from collections import defaultdict

rows = []
for path in sorted(glob.glob("target/bench-results/peers-*.jsonl")):
    with open(path) as f:
        rows += [json.loads(line) for line in f if line.strip()]
if not rows:
    sys.exit("no peers-*.jsonl in target/bench-results: run the peer comparison first (see BENCHMARKS.md)")

flood = defaultdict(list)   # (shards, compression, library) -> [events/s]
memory = defaultdict(list)  # (shards, compression, library) -> [KiB/shard]
for r in rows:
    key = (r["shards"], r["compression"], r["library"])
    if r["bench"] == "flood":
        flood[key].append(r["events_per_sec"])
    elif r["bench"] == "scale":
        memory[key].append(r["kib_per_shard"])

COLORS = {"shardline": "#2b6cb0", "shardline-batch": "#63b3ed", "shardline-thread": "#1a365d", "twilight-raw": "#c05621", "twilight-typed": "#ed8936", "twilight": "#c05621"}
W, H, PAD = 1600, 430, 60
# The flood panel has five bars a group, the memory panel two: it gets the larger share.
SPLIT = W * 0.6


def panel(x0, width, title, unit, data, libraries, fmt):
    groups = sorted({(k[0], k[1]) for k in data}, key=lambda g: (g[1], g[0]))
    if not groups:
        return []
    top = max(statistics.median(v) for v in data.values()) * 1.15
    group_w = width / len(groups)
    bar_w = group_w / (len(libraries) + 1)
    base = H - 90
    scale = (base - 70) / top
    out = [f'<text x="{x0 + width / 2}" y="30" font-size="16" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<line x1="{x0}" y1="{base}" x2="{x0 + width}" y2="{base}" stroke="#333"/>',
           f'<text x="{x0 - 8}" y="{base - (base - 70) - 4}" font-size="11" text-anchor="end">{fmt(top)}</text>',
           f'<text x="{x0 - 8}" y="{base}" font-size="11" text-anchor="end">0</text>',
           f'<text x="{x0 - 45}" y="{(base + 70) / 2}" font-size="12" transform="rotate(-90 {x0 - 45} {(base + 70) / 2})" text-anchor="middle">{unit}</text>']
    for gi, (shards, compression) in enumerate(groups):
        gx = x0 + gi * group_w
        for li, lib in enumerate(libraries):
            values = data.get((shards, compression, lib))
            if not values:
                continue
            v = statistics.median(values)
            h = v * scale
            bx = gx + (li + 0.5) * bar_w
            out.append(f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" fill="{COLORS[lib]}"/>')
            if len(values) > 1:
                lo, hi = min(values) * scale, max(values) * scale
                cx = bx + bar_w * 0.45
                out.append(f'<line x1="{cx:.1f}" y1="{base - lo:.1f}" x2="{cx:.1f}" y2="{base - hi:.1f}" stroke="#222"/>')
            out.append(f'<text x="{bx + bar_w * 0.45:.1f}" y="{base - h - 4:.1f}" font-size="8" text-anchor="middle">{fmt(v)}</text>')
        out.append(f'<text x="{gx + group_w / 2:.1f}" y="{base + 16}" font-size="11" text-anchor="middle">{shards} shard{"s" if shards != 1 else ""}</text>')
        out.append(f'<text x="{gx + group_w / 2:.1f}" y="{base + 30}" font-size="10" fill="#555" text-anchor="middle">{compression}</text>')
    for li, lib in enumerate(libraries):
        lx = x0 + li * 124
        out.append(f'<rect x="{lx}" y="{H - 35}" width="12" height="12" fill="{COLORS[lib]}"/>')
        out.append(f'<text x="{lx + 18}" y="{H - 25}" font-size="12">{lib}</text>')
    return out


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
       f'<rect width="{W}" height="{H}" fill="white"/>']
svg += panel(PAD + 20, SPLIT - PAD - 20, "flood: events/s (higher is better)", "events/s", flood,
             ["shardline", "shardline-batch", "shardline-thread", "twilight-raw", "twilight-typed"], lambda v: f"{v / 1000:.0f}k")
svg += panel(SPLIT + PAD, W - SPLIT - PAD - 20, "memory per idle shard (lower is better)", "KiB per shard", memory,
             ["shardline", "twilight"], lambda v: f"{v:.1f}")
svg.append("</svg>")
with open("benches/chart.svg", "w") as f:
    f.write("\n".join(svg) + "\n")
print("wrote benches/chart.svg from", len(rows), "results")
