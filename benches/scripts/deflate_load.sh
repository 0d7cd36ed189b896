#!/usr/bin/env bash
# chat-server fan-out with permessage-deflate clients beside plain clients,
# same server binary and flags, interleaved in one run (issue 13: CPU per
# delivery with deflate within 1.5x of without). Server pinned to core 0,
# generator to core 1, each in a session (autogroup) of its own as in
# load.sh; medians over the runs, generator runs above 90% of its core left
# out.
#
#   benches/scripts/deflate_load.sh [--runs N] [--sizes 64,256,1024] [--nice N] [--out DIR]
#
# Each size runs `loadgen fanout --size S` (100 clients, 10 senders,
# 1000 msg/s, 5 s) once plain and once with `--deflate` (clients offer
# client_no_context_takeover; chat-server answers server_no_context_takeover
# too and compresses each broadcast of >= 256 B once for all of them).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
SIZES="64,256,1024"
NICE=-10
OUT=""
PORT=${CHAT_PORT:-18081}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --nice) NICE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "deflate_load.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/load/deflate-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
cargo build --release -q -p chat-server -p benches --bin chat-server --bin loadgen

# shellcheck source=benches/scripts/lib.sh
. benches/scripts/lib.sh

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/loadavg" >&2
for run in $(seq "$RUNS"); do
    for size in ${SIZES//,/ }; do
        for mode in plain deflate; do
            start_owned "$OUT/server.pid" "$OUT/servers.log" "$TARGET/release/chat-server" --quiet \
                --addr "127.0.0.1:$PORT" --rate-burst 1000000 --rate-per-sec 1000000
            wait_port "$PORT"
            sleep 0.5
            flag=""; [ "$mode" = deflate ] && flag="--deflate"
            echo "-- run $run: size $size $mode" >>"$OUT/log"
            # shellcheck disable=SC2086
            own /dev/null 1 "$TARGET/release/loadgen" fanout --size "$size" $flag \
                --addr "127.0.0.1:$PORT" --server-pid "$PID" --label "$mode" >"$OUT/one" 2>&1 || true
            cat "$OUT/one" >>"$OUT/log"
            grep '^RESULT ' "$OUT/one" | sed "s/^RESULT /RESULT key=$size run=$run /" >>"$OUT/results" || true
            stop_server
            echo "   run $run size $size $mode: $(grep -o 'srv_us_per_deliv=[0-9.]*\|lost=[0-9]*\|deflate_clients=[0-9]*\|gen_cpu_pct=[0-9]*' "$OUT/one" | tr '\n' ' ')" >&2
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg" >&2
python3 - "$OUT/results" <<'PY' | tee "$OUT/table.md"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = dict(kv.split("=", 1) for kv in line.split()[1:])
    if r.get("flagged", "0") == "0":
        rows.setdefault((int(r["key"]), r["server"]), []).append(r)
med = statistics.median
print("| message size | plain: server µs per delivery | deflate clients: µs per delivery | ratio (median of per-run ratios) | lost plain / deflate | deflate clients agreed | generator CPU plain / deflate |")
print("|---|---|---|---|---|---|---|")
for size in sorted({k for k, _ in rows}):
    p, d = rows.get((size, "plain"), []), rows.get((size, "deflate"), [])
    if not p or not d:
        continue
    pu = [float(r["srv_us_per_deliv"]) for r in p]
    du = [float(r["srv_us_per_deliv"]) for r in d]
    per_run = {}
    for r in p + d:
        per_run.setdefault(r["run"], {})[r["server"]] = float(r["srv_us_per_deliv"])
    ratios = [v["deflate"] / v["plain"] for v in per_run.values() if len(v) == 2]
    rng = lambda v: f"{med(v):.2f} ({min(v):.2f}–{max(v):.2f})"
    print(f"| {size} B | {rng(pu)} | {rng(du)} | {med(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}), {len(ratios)} runs "
          f"| {med([int(r['lost']) for r in p])} / {med([int(r['lost']) for r in d])} "
          f"| {med([int(r['deflate_clients']) for r in d])} of {d[0]['clients']} "
          f"| {med([float(r['gen_cpu_pct']) for r in p]):.0f}% / {med([float(r['gen_cpu_pct']) for r in d]):.0f}% |")
PY
