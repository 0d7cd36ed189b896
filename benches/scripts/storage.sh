#!/usr/bin/env bash
# Storage cost on fan-out: chat-server with --data (a fresh temp directory per
# run) against --ephemeral, alternating, server pinned to core 0 and the
# generator to core 1; prints one line per run and the medians.
#
#   benches/scripts/storage.sh [--runs N] [--scenario fanout|saturation]
#
# Needs: cargo, taskset, python3. The writer's own throughput is a test:
#   cargo test --release -p chat-server --lib writer_throughput -- --ignored --nocapture
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=3
SCEN=fanout
PORT=${CHAT_PORT:-18555}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --scenario) SCEN=$2; shift 2 ;;
        *) echo "storage.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p chat-server -p benches --bin chat-server --bin loadgen
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RATE="--rate-burst 1000000 --rate-per-sec 1000000"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$RUNS"); do
    # Alternate which mode goes first, so a drift in the machine's load
    # biases neither.
    order="ephemeral data"; [ $((run % 2)) = 0 ] && order="data ephemeral"
    for mode in $order; do
        if [ "$mode" = ephemeral ]; then flags=--ephemeral; else flags="--data $WORK/data-$run"; fi
        # shellcheck disable=SC2086
        taskset -c 0 "$TARGET/release/chat-server" --quiet --addr "127.0.0.1:$PORT" $RATE $flags 2>>"$WORK/server.log" &
        pid=$!
        for _ in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
            sleep 0.05
        done
        line=$(taskset -c 1 "$TARGET/release/loadgen" "$SCEN" --addr "127.0.0.1:$PORT" \
            --server-pid "$pid" --label "$mode" 2>/dev/null | grep '^RESULT' || true)
        kill "$pid"; wait "$pid" || true
        echo "run=$run mode=$mode $(grep -o 'lost=[0-9]*\|p50_ms=[0-9.]*\|p99_ms=[0-9.]*\|srv_us_per_deliv=[0-9.]*\|gen_cpu_pct=[0-9]*' <<<"$line" | tr '\n' ' ')"
    done
done | tee "$WORK/results"
python3 - "$WORK/results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = dict(re.findall(r'(\w+)=([\w.]+)', line))
    if 'srv_us_per_deliv' in m:
        rows.setdefault(m['mode'], []).append((float(m['srv_us_per_deliv']), float(m['p99_ms'])))
e, d = rows.get('ephemeral', []), rows.get('data', [])
if e and d:
    me, md = statistics.median(x[0] for x in e), statistics.median(x[0] for x in d)
    pe, pd = statistics.median(x[1] for x in e), statistics.median(x[1] for x in d)
    print(f"median cpu/delivery: data {md:.3f} us, ephemeral {me:.3f} us, ratio {md/me:.2f}")
    print(f"median p99: data {pd:.2f} ms, ephemeral {pe:.2f} ms, ratio {pd/pe:.2f}")
PY
