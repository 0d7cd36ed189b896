#!/usr/bin/env python3
"""Prints the permessage-deflate tables from `cargo bench --bench deflate` runs.

Usage: python3 benches/scripts/deflate_table.py RUN_DIR...
Each RUN_DIR holds one run: criterion's `deflate_*` directories (copied from
target/criterion/ after the run) and the bench's stdout as `stdout.log`
(the ratio and memory lines). Every number is the median over the runs.
GB/s = uncompressed payload bytes / mean time (10^9 B/s); µs/msg = mean
time / messages in the workload.
"""
import glob
import json
import os
import re
import statistics
import sys

MSGS = {}  # workload -> messages per iteration
times = {}  # (workload, row) -> [seconds]
nbytes = {}
ratios = {}  # (workload, mode) -> [ratio]
memory = {}  # case -> [(held, peak)]
for run in sys.argv[1:]:
    for path in glob.glob(os.path.join(run, "**", "new", "benchmark.json"), recursive=True):
        with open(path) as f:
            b = json.load(f)
        with open(os.path.join(os.path.dirname(path), "estimates.json")) as f:
            e = json.load(f)
        w = b["group_id"].removeprefix("deflate/")
        times.setdefault((w, b["function_id"]), []).append(e["mean"]["point_estimate"] * 1e-9)
        nbytes[w] = b["throughput"]["Bytes"]
    for line in open(os.path.join(run, "stdout.log")):
        m = re.match(r"ratio deflate/(\S+)/(\w+): ([\d.]+) \((\d+) payload bytes, (\d+) on the wire, (\d+) messages", line)
        if m:
            ratios.setdefault((m[1], m[2]), []).append(float(m[3]))
            MSGS[m[1]] = int(m[6])
        m = re.match(r"memory per connection, (.*): (\d+) bytes held between messages, (\d+) bytes peak", line)
        if m:
            memory.setdefault(m[1], []).append((int(m[2]), int(m[3])))

med = statistics.median
loads = sorted({w for w, _ in times}, key=lambda w: (w.startswith("text"), int(w.split("/")[-1])))


def gbs(w, row):
    t = times.get((w, row))
    return nbytes[w] / med(t) / 1e9 if t else None


def us(w, row):
    t = times.get((w, row))
    return med(t) * 1e6 / MSGS[w] if t else None


def f(x, p=2):
    return "–" if x is None else f"{x:.{p}f}"


print(f"runs: {len(sys.argv) - 1}\n")
print("| workload | ratio takeover | ratio no takeover | encode µs/msg plain / takeover / no takeover | decode µs/msg plain / takeover / no takeover |")
print("|---|---|---|---|---|")
for w in loads:
    rt = ratios.get((w, "takeover"))
    rn = ratios.get((w, "no_takeover"))
    enc = " / ".join(f(us(w, f"encode/{m}"), 2) for m in ("plain", "takeover", "no_takeover"))
    dec = " / ".join(f(us(w, f"decode/{m}"), 2) for m in ("plain", "takeover", "no_takeover"))
    print(f"| {w} | {f(med(rt) if rt else None)} | {f(med(rn) if rn else None)} | {enc} | {dec} |")
print()
print("| workload | encode GB/s plain | takeover | no takeover | decode GB/s plain | takeover | no takeover |")
print("|---|---|---|---|---|---|---|")
for w in loads:
    cells = [f(gbs(w, f"{d}/{m}"), 3) for d in ("encode", "decode") for m in ("plain", "takeover", "no_takeover")]
    print(f"| {w} | " + " | ".join(cells) + " |")
print()
print("| connection | held between messages | peak during one message each way |")
print("|---|---|---|")
for case, v in memory.items():
    held = med([h for h, _ in v])
    peak = med([p for _, p in v])
    print(f"| {case} | {held:,.0f} B | {peak:,.0f} B |")
