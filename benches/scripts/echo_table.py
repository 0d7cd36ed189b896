#!/usr/bin/env python3
"""Prints the async echo table (issue 15) from echogen's RESULT lines.

Usage: python3 benches/scripts/echo_table.py RESULTS_FILE
(echo.sh writes RESULTS_FILE: one `RESULT key=<scenario> run=<n> ...` line
per run of a scenario against a server.) Numbers are medians over the good
runs, with (min–max) when they differ. A run is left out when its generator
used more than 90% of its core (flagged) or when an echo was wrong, lost or
a connection ended early (failed).

"÷ best peer" is computed per run: the server's msg/s over the fastest Rust
peer's (tokio-tungstenite in either flush mode, fastwebsockets,
tokio-websockets) in the same run of the same scenario; the cell is the median of those
ratios (min–max).
"""
import statistics
import sys

ORDER = [
    "wsproto-tokio",
    "tokio-tungstenite",
    "tokio-tungstenite-batch",
    "fastwebsockets",
    "tokio-websockets",
    "wsproto-blocking",
]
PEERS = {"tokio-tungstenite", "tokio-tungstenite-batch", "fastwebsockets", "tokio-websockets"}
TITLES = {
    "text20": "{conns} conns × 20 B text, {k} in flight",
    "bin16k": "{conns} conns × 16 KiB binary, {k} in flight",
    "text1k": "{conns} conns × 1 KiB text, {k} in flight",
    "text5": "{conns} conns × 5 B text, {k} in flight",
}

rows = []
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        rows.append(dict(kv.split("=", 1) for kv in line.split()[1:]))


def failed(r):
    return any(int(r.get(f, "0")) for f in ("bad", "lost", "early_ends"))


def good(r):
    return r.get("flagged", "0") == "0" and not failed(r)


keys = []
for r in rows:
    if r["key"] not in keys:
        keys.append(r["key"])
order = list(TITLES)
keys.sort(key=lambda k: order.index(k) if k in order else len(order))
servers = [s for s in ORDER if any(r["server"] == s for r in rows)]
servers += sorted({r["server"] for r in rows} - set(servers))


def runs(key, server):
    return [r for r in rows if r["key"] == key and r["server"] == server]


def vals(key, server, field):
    return [float(r[field]) for r in runs(key, server) if good(r) and field in r]


def spread(v, unit="", digits=0):
    if not v:
        return "–"
    m = f"{statistics.median(v):,.{digits}f}{unit}"
    if len(v) > 1 and min(v) != max(v):
        m += f" ({min(v):,.{digits}f}–{max(v):,.{digits}f})"
    return m


def best_peer(key, run):
    """(msg/s, name) of the fastest good peer run in this run, or None."""
    c = [(float(r["msg_s"]), r["server"]) for r in rows
         if r["key"] == key and r["run"] == run and r["server"] in PEERS and good(r)]
    return max(c) if c else None


def ratios(key, server):
    out = []
    for r in runs(key, server):
        b = best_peer(key, r["run"])
        if good(r) and b and b[0] > 0:
            out.append(float(r["msg_s"]) / b[0])
    return out


def cell(key, server, text):
    rs = runs(key, server)
    if not rs:
        return "not run"
    bad = [r for r in rs if not good(r)]
    if len(bad) == len(rs):
        if any(failed(r) for r in bad):
            r = next(r for r in bad if failed(r))
            return f"FAILED (bad {r.get('bad')}, lost {r.get('lost')}, ended early {r.get('early_ends')})"
        return f"FLAGGED (generator {max(float(r.get('gen_cpu_pct', 0)) for r in bad):.0f}% CPU)"
    return text + (f" ({len(bad)} of {len(rs)} runs left out)" if bad else "")


def gen(key, server):
    v = [float(r["gen_cpu_pct"]) for r in runs(key, server) if "gen_cpu_pct" in r]
    if not v:
        return "–"
    out = f"{statistics.median(v):.0f}% (max {max(v):.0f}%)"
    per = [float(r["gen_us_per_msg"]) for r in runs(key, server) if "gen_us_per_msg" in r]
    if per:
        out += f", {statistics.median(per):.2f} µs per message"
    demand = [float(r["gen_cpu_pct"]) + float(r.get("gen_wait_pct", 0)) for r in runs(key, server) if "gen_cpu_pct" in r]
    if max(demand) > 90:
        out += f", busy + waiting up to {max(demand):.0f}%"
    return out


def waits(key, server):
    w = [float(r["srv_wait_pct"]) for r in runs(key, server) if "srv_wait_pct" in r]
    g = [float(r["gen_wait_pct"]) for r in runs(key, server) if "gen_wait_pct" in r]
    if not w and not g:
        return "–"
    sw = max(w, default=0)
    # A server of many threads waits for itself: the sum can pass 100%.
    srv = f"server {sw:.0f}%" if sw <= 100 else f"server {sw:,.0f}% (sum over its threads)"
    return f"{srv}, gen {max(g, default=0):.0f}%"


def best_names(key):
    names = {}
    for run in {r["run"] for r in rows if r["key"] == key}:
        b = best_peer(key, run)
        if b:
            names[b[1]] = names.get(b[1], 0) + 1
    return ", ".join(f"{n} ({c})" for n, c in sorted(names.items(), key=lambda x: -x[1]))


METRICS = [
    ("msg/s", lambda k, s: spread(vals(k, s, "msg_s"))),
    ("÷ best peer, same run", lambda k, s: spread(ratios(k, s), "×", 2)),
    ("server CPU per message", lambda k, s: spread(vals(k, s, "srv_us_per_msg"), " µs", 2)),
    ("server CPU (kernel share)", lambda k, s: (
        f"{spread(vals(k, s, 'srv_cpu_pct'), '%')}, {statistics.median(vals(k, s, 'srv_kernel_pct')):.0f}% kernel"
        if vals(k, s, "srv_kernel_pct") else "–")),
    ("echoes per generator read", lambda k, s: spread(vals(k, s, "echoes_per_read"), "", 1)),
]
EXTRA = [("generator CPU", gen), ("waited for a core (worst run)", waits)]

nruns = max((int(r["run"]) for r in rows), default=0)
print(f"Medians of up to {nruns} run(s) per cell (min–max); ratios per run against the fastest Rust peer of that run.\n")
print("| scenario | metric | " + " | ".join(servers) + " |")
print("|---|---|" + "---|" * len(servers))
for k in keys:
    r0 = next(r for r in rows if r["key"] == k)
    title = TITLES.get(k, k).format(conns=r0.get("conns"), k=r0.get("inflight"))
    lines = [(n, lambda k, s, f=f: cell(k, s, f(k, s))) for n, f in METRICS] + EXTRA
    for i, (name, f) in enumerate(lines):
        cells = [f(k, s) if runs(k, s) else "not run" for s in servers]
        print(f"| {title if i == 0 else ''} | {name} | " + " | ".join(cells) + " |")
    print(f"|  | best peer (runs) | {best_names(k)} |" + " |" * (len(servers) - 1))
