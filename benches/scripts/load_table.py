#!/usr/bin/env python3
"""Prints the side-by-side load table from loadgen's RESULT lines.

Usage: python3 benches/scripts/load_table.py RESULTS_FILE
(load.sh writes RESULTS_FILE: one `RESULT key=<scenario> run=<n> ...` line
per run of a scenario against a server.) Every number is the median over the
runs whose generator stayed at or below 90% of its core; a run above that is
flagged and left out (a cell with only flagged runs says FLAGGED).
"""
import statistics
import sys

SERVERS = ["node", "chat-server"]
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    r = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.setdefault((r["key"], r["server"]), []).append(r)


def runs(key, server):
    return rows.get((key, server), [])


def good(key, server):
    return [r for r in runs(key, server) if r.get("flagged", "0") == "0"]


def vals(key, server, field):
    return [float(r[field]) for r in good(key, server) if field in r]


def med(key, server, field):
    v = vals(key, server, field)
    return statistics.median(v) if v else None


def spread(key, server, field, unit="", digits=0):
    """The median, with the range over the runs when there is more than one."""
    v = vals(key, server, field)
    if not v:
        return "–"
    m = f"{statistics.median(v):,.{digits}f}{unit}"
    if len(v) > 1 and min(v) != max(v):
        m += f" ({min(v):,.{digits}f}–{max(v):,.{digits}f})"
    return m


def ends(key, server):
    """Median count of each way connections ended, e.g. `close 1008: 2848`."""
    rs = good(key, server)
    kinds = set()
    for r in rs:
        if r.get("ends", "-") != "-":
            kinds |= {e.rsplit(":", 1)[0] for e in r["ends"].split(",")}
    out = []
    for k in sorted(kinds):
        counts = []
        for r in rs:
            d = dict(e.rsplit(":", 1) for e in r["ends"].split(",")) if r.get("ends", "-") != "-" else {}
            counts.append(int(d.get(k, 0)))
        if statistics.median(counts) or max(counts):
            out.append(f"{k.replace('_', ' ')}: {statistics.median(counts):,.0f} ({min(counts):,}–{max(counts):,})")
    return ", ".join(out) if out else "none"


def num(x, unit="", digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}{unit}"


def cell(key, server, fmt):
    rs = runs(key, server)
    if not rs:
        return "not run"
    if not good(key, server):
        worst = max(float(r.get("gen_cpu_pct", 0)) for r in rs)
        return f"FLAGGED (generator {worst:.0f}% CPU)"
    text = fmt(key, server)
    bad = len(rs) - len(good(key, server))
    return text + (f" ({bad} of {len(rs)} runs flagged, left out)" if bad else "")


def ratio(key, field, better_low):
    a, b = med(key, "node", field), med(key, "chat-server", field)
    if a is None or b is None or a == 0:
        return "–"
    if field.endswith("_ms") and (med(key, "node", "lost") or med(key, "chat-server", "lost")):
        return "– (messages lost: latency of the delivered only)"
    return f"{b / a:.2f}×"


def lost(key, server):
    lo, ex = med(key, server, "lost"), med(key, server, "expected")
    pct = 100 * lo / ex if ex else 0
    v = vals(key, server, "lost")
    rng = f", runs {min(v):,.0f}–{max(v):,.0f}" if len(v) > 1 and min(v) != max(v) else ""
    return f"{lo:,.0f} of {ex:,.0f}" + (f" ({pct:.1f}%{rng})" if lo else rng)


def lat(key, server):
    return f"p50 {num(med(key, server, 'p50_ms'), ' ms', 2)}, p99 {spread(key, server, 'p99_ms', ' ms', 1)}"


def gen(key, server):
    vals = [float(r["gen_cpu_pct"]) for r in runs(key, server) if "gen_cpu_pct" in r]
    join = [float(r["gen_join_pct"]) for r in runs(key, server) if "gen_join_pct" in r]
    if not vals:
        return "–"
    out = f"{statistics.median(vals):.0f}% (max {max(vals):.0f}%)"
    demand = [float(r["gen_cpu_pct"]) + float(r.get("gen_wait_pct", 0)) for r in runs(key, server) if "gen_cpu_pct" in r]
    if max(demand) > 90:
        out += f", busy + waiting for its core up to {max(demand):.0f}%: near its limit"
    if key.startswith(("storm", "idle")) and join:
        out += f"; {statistics.median(join):.0f}% while joining"
    return out


def waits(key, server):
    w = [float(r["srv_wait_pct"]) for r in runs(key, server) if "srv_wait_pct" in r]
    g = [float(r["gen_wait_pct"]) for r in runs(key, server) if "gen_wait_pct" in r]
    if not w and not g:
        return "–"
    return f"server {max(w, default=0):.0f}%, generator {max(g, default=0):.0f}%"


def clients(key):
    r = (runs(key, "chat-server") or runs(key, "node") or [{}])[0]
    return int(r.get("clients", 0))


TITLES = {
    "fanout": "fan-out: 100 clients, 10 senders, 1000 msg/s, 64 B",
    "saturation": "saturation: 1 sender, 64 in flight, 100 receivers (+ the sender)",
    "storm2000": "join storm: {n:,} clients at 2,000/s, then 2 msg/s (from 1 s after the ramp)",
    "storm5000": "join storm: {n:,} clients at 5,000/s, then 2 msg/s (from 1 s after the ramp)",
    "idle": "idle: {n:,} clients held, then 1 msg/s to all",
}

METRICS = {
    "fanout": [
        ("server CPU per delivery", lambda k, s: spread(k, s, "srv_us_per_deliv", " µs", 2), ("srv_us_per_deliv", True)),
        ("server CPU (kernel share)", lambda k, s: f"{num(med(k, s, 'srv_cpu_pct'), '%')} ({num(med(k, s, 'srv_kernel_pct'), '%')} kernel)", None),
        ("latency", lat, ("p99_ms", True)),
        ("lost", lost, None),
        ("deliveries per generator read", lambda k, s: spread(k, s, "deliv_per_read", "", 2), None),
    ],
    "saturation": [
        ("deliveries/s", lambda k, s: spread(k, s, "deliv_s"), ("deliv_s", False)),
        ("server CPU per delivery", lambda k, s: spread(k, s, "srv_us_per_deliv", " µs", 2), ("srv_us_per_deliv", True)),
        ("latency", lat, ("p99_ms", True)),
        ("lost", lost, None),
        ("deliveries per generator read", lambda k, s: spread(k, s, "deliv_per_read", "", 2), None),
    ],
    "storm": [
        ("connected / welcomed", lambda k, s: f"{num(med(k, s, 'connected'))} / {num(med(k, s, 'welcomed'))}", None),
        ("connections ended", ends, None),
        ("lost", lost, None),
        ("latency", lat, ("p99_ms", True)),
        ("server CPU in the window", lambda k, s: num(med(k, s, "srv_cpu_pct"), "%"), None),
    ],
    "idle": [
        ("welcomed", lambda k, s: num(med(k, s, "welcomed")), None),
        ("server RSS per idle connection", lambda k, s: spread(k, s, "rss_per_conn_kib", " KiB", 2), ("rss_per_conn_kib", True)),
        ("latency", lat, ("p99_ms", True)),
        ("lost", lost, None),
    ],
}

keys = []
for k, _ in rows:
    if k not in keys:
        keys.append(k)
order = ["fanout", "saturation", "storm2000", "storm5000", "idle"]
keys.sort(key=lambda k: order.index(k) if k in order else len(order))
nruns = max((len(v) for v in rows.values()), default=0)
print(f"Medians of {nruns} run(s) per cell; ratio = chat-server ÷ Node (lower is better for CPU, latency and RSS).\n")
print("| scenario | metric | Node `ws` | chat-server | ratio |")
print("|---|---|---|---|---|")
for k in keys:
    title = TITLES.get(k, k).format(n=clients(k))
    metrics = METRICS.get(k.rstrip("0123456789"), METRICS["fanout"])
    extra = [("generator CPU", gen, None), ("waited for a core, worst run (server: sum over its threads, its own included)", waits, None)]
    for i, (name, fmt, rat) in enumerate(metrics + extra):
        cells = [fmt(k, s) if (name, fmt, rat) in extra else cell(k, s, fmt) for s in SERVERS]
        r = ratio(k, rat[0], rat[1]) if rat else ""
        print(f"| {title if i == 0 else ''} | {name} | {cells[0]} | {cells[1]} | {r} |")
