#!/usr/bin/env python3
"""Prints the benchmark JSON files side by side as a Markdown table."""
import json
import sys

rows = [json.load(open(p)) for p in sys.argv[1:]]
print("| what | runs | median µs | mean µs | p90 µs | p99 µs | min µs |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    what = r.get("engine") or r.get("path") or r["bench"]
    l = r["latency"]
    print(f"| {r['bench']}: {what} | {l['runs']} | {l['median_us']:.1f} | {l['mean_us']:.1f} | "
          f"{l['p90_us']:.1f} | {l['p99_us']:.1f} | {l['min_us']:.1f} |")
