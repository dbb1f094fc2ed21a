#!/usr/bin/env python3
"""Print criterion results (median and 95% interval) as a Markdown table.

Usage: tools/scripts/criterion_table.py [GROUP_PREFIX ...]
Reads $CARGO_TARGET_DIR/criterion/<group>/<bench>/new/{estimates,benchmark}.json
(target/ of the workspace when CARGO_TARGET_DIR is not set).
"""
import json
import os
import pathlib
import sys

workspace = pathlib.Path(__file__).resolve().parent.parent.parent
root = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or workspace / "target") / "criterion"
prefixes = sys.argv[1:]


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


rows = []
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    group = bench["group_id"]
    if prefixes and not any(group.startswith(p) for p in prefixes):
        continue
    e = json.loads(est.read_text())
    med = e["median"]
    tp = bench.get("throughput") or {}
    per = ""
    if "Elements" in tp:
        per = f"{med['point_estimate'] / tp['Elements']:.1f} ns/event"
    elif "Bytes" in tp:
        per = f"{tp['Bytes'] / med['point_estimate'] * 1e9 / 1e6:,.0f} MB/s"
    rows.append((group, bench["function_id"], med["point_estimate"],
                 med["confidence_interval"]["lower_bound"],
                 med["confidence_interval"]["upper_bound"], per))

print("| group | bench | median | 95% CI | per unit |")
print("|---|---|---|---|---|")
for g, f, m, lo, hi, per in rows:
    print(f"| {g} | {f} | {fmt_time(m)} | {fmt_time(lo)} – {fmt_time(hi)} | {per} |")
