#!/usr/bin/env python3
"""Prints the README tables from criterion's results.

Usage: python3 benches/scripts/table.py [CARGO_TARGET_DIR]  (default: target)
GB/s = payload bytes / mean time (10^9 bytes per second).
"""
import glob
import json
import os
import sys

target = sys.argv[1] if len(sys.argv) > 1 else "target"
results = {}
for path in glob.glob(os.path.join(target, "criterion", "**", "new", "benchmark.json"), recursive=True):
    with open(path) as f:
        bench = json.load(f)
    with open(os.path.join(os.path.dirname(path), "estimates.json")) as f:
        est = json.load(f)
    nbytes = (bench.get("throughput") or {}).get("Bytes")
    if not nbytes:
        continue
    results.setdefault(bench["group_id"], {})[bench["function_id"]] = nbytes / est["mean"]["point_estimate"]


def order(group):
    parts = group.split("/")
    size = parts[-1]
    num = int(size) if size.isdigit() else 1 << 40
    return (parts[:-1], num)


def fmt(x):
    return f"{x:.2f}" if x is not None else "–"


def table(prefix, cols, peers, base, check, extra=()):
    """`extra`: (title, column, peers) ratios shown after the checked ones."""
    print("| workload | " + " | ".join(cols) + f" | ×best peer | ×memcpy | ×{base} | "
          + "".join(f"{t} | " for t, _, _ in extra) + "target |")
    print("|---" * (len(cols) + 5 + len(extra)) + "|")
    for group in sorted((g for g in results if g.startswith(prefix)), key=order):
        r = results[group]
        ws = r.get("wsproto")
        best = max((r[p] for p in peers if p in r), default=None)
        ratios = [ws / best if ws and best else None, ws / r["memcpy"] if ws else None,
                  ws / r[base] if ws and base in r else None]
        verdict = check(group[len(prefix):], *ratios)
        more = []
        for _, col, ps in extra:
            b = max((r[p] for p in ps if p in r), default=None)
            more.append(r[col] / b if col in r and b else None)
        print(f"| {group[len(prefix):]} | " + " | ".join(fmt(r.get(c)) for c in cols)
              + " | " + " | ".join(fmt(x) for x in ratios + more) + f" | {verdict} |")


def decode_check(name, vs_peer, vs_memcpy, vs_fused):
    kind, size = name.split("/")
    need = []
    if size == "16":
        need.append(("≥3× peer", vs_peer >= 3))
    elif kind == "utf8_3byte":
        need.append(("≥1× peer", vs_peer >= 1))
        if size != "16":
            need.append(("≥1.5× peer", vs_peer >= 1.5))
    else:
        need.append(("≥1.5× peer", vs_peer >= 1.5))
    if not size.isdigit() or int(size) >= 16384:
        need.append(("≥0.75× fused", vs_fused >= 0.75))
    return ", ".join(("met " if ok else "MISSED ") + what for what, ok in need)


def encode_check(name, vs_peer, vs_memcpy, vs_fused):
    role = name.split("/")[0]
    if role == "client_masked":
        return ("met" if vs_fused >= 0.8 else "MISSED") + " ≥0.8× copy+mask"
    return ("met" if vs_peer >= 1 else "MISSED") + " ≥1× peer"


print("### Decode (server role, masked client frames → messages), GB/s\n")
table("decode/", ["memcpy", "copy_unmask", "wsproto", "wsproto_owned", "tungstenite",
                  "fastwebsockets_frame", "fastwebsockets_collector"],
      ["tungstenite", "fastwebsockets_frame", "fastwebsockets_collector"], "copy_unmask", decode_check,
      extra=[("×best reassembling peer", "wsproto", ["tungstenite", "fastwebsockets_collector"]),
             ("owned ×tungstenite", "wsproto_owned", ["tungstenite"])])
print("\n### Encode (binary messages appended to a buffer), GB/s\n")
table("encode/", ["memcpy", "copy_mask", "wsproto", "wsproto_frame", "tungstenite", "fastwebsockets"],
      ["tungstenite", "fastwebsockets"], "copy_mask", encode_check)
print("\n### Pieces, GB/s (header: million headers/s is not shown here)\n")
print("| group | " + " | ".join(["function", "GB/s"]) + " |\n|---|---|---|")
for group in sorted(g for g in results if not g.startswith(("decode/", "encode/"))):
    for fn, v in sorted(results[group].items()):
        print(f"| {group} | {fn} | {fmt(v)} |")
