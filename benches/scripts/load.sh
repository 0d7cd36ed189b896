#!/usr/bin/env bash
# Runs every load scenario against chat-server and the Node `ws` anchor
# (benches/node-anchor/), each server pinned to core 0 and the generator to
# core 1, and prints one side-by-side table (medians over the runs).
#
#   benches/scripts/load.sh [--runs N] [--only fanout,saturation,storm2000,storm5000,idle]
#                           [--idle-clients N] [--storm-clients N] [--nice N] [--out DIR]
#
# On a shared machine other tasks may hold the cores. Each server and the
# generator run in a session of their own (so a scheduler autogroup of their
# own: with autogroups, a busy server on core 0 would otherwise leave its
# group almost no weight on core 1 and starve the generator), at autogroup
# nice --nice (default -10, needs root; 0 leaves priorities alone). Every
# result line says how long the server's threads and the generator waited
# for their core (run-queue time from /proc/PID/task/*/schedstat); the table
# shows it.
#
# Needs: cargo, node >= 18 and npm (`npm ci` from the committed lock file),
# taskset, python3. Root helps: the idle scenario needs more open files
# than the usual hard limit (this script raises it to 200000 when it may;
# without CAP_SYS_RESOURCE it stays where it is and the idle scenario is cut
# down to fit, which the table says). Ports: the generator binds clients to
# 127.0.0.1, 127.0.0.2, ... once there are more than 20,000 of them (one
# source address has ~28k ephemeral ports toward one server port);
# net.ipv4.ip_local_port_range is left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
ONLY="fanout,saturation,storm2000,storm5000,idle"
IDLE_CLIENTS=50000
STORM_CLIENTS=10000
OUT=""
NICE=-10
CHAT_PORT=${CHAT_PORT:-18080}
NODE_PORT=${NODE_PORT:-18091}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --idle-clients) IDLE_CLIENTS=$2; shift 2 ;;
        --storm-clients) STORM_CLIENTS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --nice) NICE=$2; shift 2 ;;
        *) echo "load.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/load/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

echo "== build" >&2
cargo build --release -q -p chat-server -p benches --bin chat-server --bin loadgen
(cd benches/node-anchor && npm ci --no-audit --no-fund --silent)

# Open files: servers and generator inherit these limits.
ulimit -Hn 200000 2>/dev/null || echo "load.sh: cannot raise the hard open-file limit (needs CAP_SYS_RESOURCE); it stays $(ulimit -Hn)" >&2
ulimit -Sn "$(ulimit -Hn)"
FD_MAX=$(( $(ulimit -Hn) - 200 ))
if [ "$IDLE_CLIENTS" -gt "$FD_MAX" ]; then
    echo "load.sh: idle cut from $IDLE_CLIENTS to $FD_MAX clients (open-file limit $(ulimit -Hn))" >&2
    IDLE_CLIENTS=$FD_MAX
fi

RATE_FLAGS="--rate-burst 1000000 --rate-per-sec 1000000"
# key | loadgen arguments | chat-server flags (storms: defaults, as issue 11 asks)
scenario() {
    case "$1" in
        fanout) echo "fanout|$RATE_FLAGS" ;;
        saturation) echo "saturation|$RATE_FLAGS" ;;
        storm2000) echo "storm --clients $STORM_CLIENTS --ramp 2000|" ;;
        storm5000) echo "storm --clients $STORM_CLIENTS --ramp 5000|" ;;
        idle) echo "idle --clients $IDLE_CLIENTS|--max-connections $((IDLE_CLIENTS + 100))" ;;
        *) echo "load.sh: unknown scenario $1" >&2; exit 2 ;;
    esac
}

# shellcheck source=benches/scripts/lib.sh
. benches/scripts/lib.sh

start_server() { # kind port chat-flags
    if [ "$1" = chat-server ]; then
        # shellcheck disable=SC2086
        start_owned "$OUT/server.pid" "$OUT/servers.log" "$TARGET/release/chat-server" --quiet --addr "127.0.0.1:$2" $3
    else
        start_owned "$OUT/server.pid" "$OUT/servers.log" node benches/node-anchor/server.js --addr "127.0.0.1:$2"
    fi
    wait_port "$2"
}

echo "== $RUNS run(s) of: $ONLY (log: $OUT/log); load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/loadavg"
for run in $(seq "$RUNS"); do
    for key in ${ONLY//,/ }; do
        IFS='|' read -r args flags <<<"$(scenario "$key")"
        for kind in chat-server node; do
            port=$CHAT_PORT; [ "$kind" = node ] && port=$NODE_PORT
            start_server "$kind" "$port" "$flags"
            sleep 0.5 # let the server settle before its baseline RSS is taken
            echo "-- run $run: $key vs $kind" >>"$OUT/log"
            # shellcheck disable=SC2086
            if own /dev/null 1 "$TARGET/release/loadgen" $args --addr "127.0.0.1:$port" \
                --server-pid "$PID" --label "$kind" >"$OUT/one" 2>&1; then :; else
                echo "load.sh: loadgen failed ($key vs $kind), see $OUT/log" >&2
            fi
            cat "$OUT/one" >>"$OUT/log"
            grep '^RESULT ' "$OUT/one" | sed "s/^RESULT /RESULT key=$key run=$run /" >>"$OUT/results" || true
            stop_server
            echo "   run $run $key $kind: $(grep -o 'lost=[0-9]*\|p99_ms=[0-9.]*\|gen_cpu_pct=[0-9]*' "$OUT/one" | tr '\n' ' ')" >&2
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg"
python3 benches/scripts/load_table.py "$OUT/results" | tee "$OUT/table.md"
cat "$OUT/loadavg"
