#!/usr/bin/env bash
# Issue 17's measurement: the fan-out scenario (100 clients, clients 0-9
# send 1000 msg/s in all, 64 B, 5 s) against one chat-server node and
# against a cluster of two nodes on one redis-server, in the same run, and
# the cost per message in Redis commands and round trips.
#
#   benches/scripts/cluster_load.sh [--runs N] [--redis-core C] [--gen-core C] [--out DIR]
#                                   [--scenario fanout|saturation|storm] [--gen-args "ARGS"]
#
# `--scenario saturation` (client 0 keeps 64 messages in flight) shows the
# publisher's batching: under a burst, jobs queued during one round trip
# go in the next pipeline together. `--scenario storm --gen-args "--clients
# 4000 --ramp 2000"` is a join storm (every join a nick claim and a stream
# read on the nodes' workers).
#
# Placement (a 2-core machine has no third core):
# - single: the node on core 0 (default storage, SQLite in a temporary
#   DIR), the generator on --gen-core (default 1);
# - cluster: node A on core 0, node B on core 1, redis-server and the
#   generator on one core together (--redis-core, --gen-core; default 1,
#   so they share node B's core). The generator splits its clients
#   round-robin over the nodes (`loadgen --addr A,B`), so senders and
#   readers are on both; server CPU is summed over both nodes.
# Per run: deliveries/s, p99, lost (must be 0), server CPU per delivery
# (the cluster's ratio to the single node's of the same run), Redis
# commands per message (`INFO commandstats` calls, diff over the
# generator's run, joins included, divided by the messages sent) and the
# publishers' round trips per message (their "N jobs in M round trips"
# line at shutdown). Medians over the runs; ratios, since other tasks share
# the machine. Needs: cargo, redis-server, redis-cli, taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
REDIS_CORE=1
GEN_CORE=1
OUT=""
SCENARIO=fanout
GEN_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --redis-core) REDIS_CORE=$2; shift 2 ;;
        --gen-core) GEN_CORE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --scenario) SCENARIO=$2; shift 2 ;;
        --gen-args) GEN_ARGS=$2; shift 2 ;;
        *) echo "cluster_load.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/cluster-load/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
BASE=${CHAT_PORT:-18280}
REDIS_PORT=$((BASE + 9))

echo "== build" >&2
cargo build --release -q -p chat-server -p benches --bin chat-server --bin loadgen

# shellcheck source=benches/scripts/lib.sh
. benches/scripts/lib.sh

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

# node CORE PORT LOG FLAGS...: a chat-server pinned to CORE.
node() {
    local core=$1 port=$2 log=$3
    shift 3
    taskset -c "$core" "$TARGET/release/chat-server" --quiet --addr "127.0.0.1:$port" \
        --rate-burst 1000000 --rate-per-sec 1000000 "$@" 2>"$log" &
    PIDS+=($!)
}

calls() { # total commands Redis ran so far
    redis-cli -p "$REDIS_PORT" INFO commandstats |
        sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{s += $1} END {print s + 0}'
}

gen() { # label addrs pids
    # shellcheck disable=SC2086
    taskset -c "$GEN_CORE" "$TARGET/release/loadgen" "$SCENARIO" $GEN_ARGS --addr "$2" \
        --server-pid "$3" --label "$1" >"$OUT/one" 2>&1 || echo "cluster_load.sh: loadgen failed ($1)" >&2
    cat "$OUT/one" >>"$OUT/log"
}

echo "== $RUNS run(s); load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/loadavg"
: >"$OUT/results"
for run in $(seq "$RUNS"); do
    # Single node, default storage.
    data=$(mktemp -d)
    node 0 "$BASE" "$OUT/single.log" --data "$data"
    wait_port "$BASE"
    sleep 0.5
    echo "-- run $run: single" >>"$OUT/log"
    gen single "127.0.0.1:$BASE" "${PIDS[0]}"
    grep '^RESULT ' "$OUT/one" | sed "s/^RESULT /RESULT run=$run /" >>"$OUT/results" || true
    cleanup
    rm -rf "$data"
    echo "   run $run single: $(grep -o 'lost=[0-9]*\|p99_ms=[0-9.]*\|srv_us_per_deliv=[0-9.]*' "$OUT/one" | tr '\n' ' ')" >&2

    # Two nodes on one redis-server (fresh: no data from the last run).
    taskset -c "$REDIS_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    wait_port "$REDIS_PORT"
    url="redis://127.0.0.1:$REDIS_PORT"
    # (--data: with --redis it holds only each node's media)
    data=$(mktemp -d)
    node 0 $((BASE + 1)) "$OUT/a.log" --redis "$url" --node-id a --data "$data/a"
    node 1 $((BASE + 2)) "$OUT/b.log" --redis "$url" --node-id b --data "$data/b"

    wait_port $((BASE + 1))
    wait_port $((BASE + 2))
    sleep 1 # the nodes' subscriptions are up
    before=$(calls)
    echo "-- run $run: cluster" >>"$OUT/log"
    gen cluster "127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))" "${PIDS[1]},${PIDS[2]}"
    after=$(calls)
    # The nodes log their publisher's jobs and round trips as they stop.
    kill "${PIDS[1]}" "${PIDS[2]}"
    wait "${PIDS[1]}" "${PIDS[2]}" 2>/dev/null || true
    cleanup
    rm -rf "$data"
    sent=$(grep -o '^RESULT .* sent=[0-9]*' "$OUT/one" | grep -o 'sent=[0-9]*$' | cut -d= -f2)
    read -r jobs trips < <(cat "$OUT/a.log" "$OUT/b.log" |
        sed -n 's/.*redis publisher: \([0-9]*\) jobs in \([0-9]*\) round trips.*/\1 \2/p' |
        awk '{j += $1; t += $2} END {print j + 0, t + 0}')
    cmds_per_msg=$(python3 -c "print(f'{($after - $before) / max(1, ${sent:-0}):.3f}')")
    trips_per_msg=$(python3 -c "print(f'{$trips / max(1, ${sent:-0}):.3f}')")
    grep '^RESULT ' "$OUT/one" | sed "s/^RESULT /RESULT run=$run /; s/\$/ redis_cmds_per_msg=$cmds_per_msg redis_trips_per_msg=$trips_per_msg redis_jobs=$jobs/" >>"$OUT/results" || true
    echo "   run $run cluster: $(grep -o 'lost=[0-9]*\|p99_ms=[0-9.]*\|srv_us_per_deliv=[0-9.]*' "$OUT/one" | tr '\n' ' ')redis cmds/msg $cmds_per_msg, round trips/msg $trips_per_msg" >&2
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg"

python3 - "$OUT/results" "$SCENARIO" <<'EOF' | tee "$OUT/table.md"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.setdefault(r["server"], []).append(r)
def med(server, field):
    v = [float(r[field]) for r in rows.get(server, []) if field in r]
    return statistics.median(v) if v else float("nan")
def ratio(field):
    per_run = {}
    for server in ("single", "cluster"):
        for r in rows.get(server, []):
            per_run.setdefault(r["run"], {})[server] = float(r.get(field, "nan"))
    v = [x["cluster"] / x["single"] for x in per_run.values() if len(x) == 2 and x["single"]]
    return statistics.median(v) if v else float("nan")
n = len(rows.get("cluster", []))
print(f"| {sys.argv[2]} (medians of {n} runs) | single node | 2 nodes + Redis | cluster / single |")
print("|---|---|---|---|")
for field, name in [("deliv_s", "deliveries/s"), ("p99_ms", "p99 ms"), ("lost", "lost"),
                    ("srv_us_per_deliv", "server CPU us per delivery"),
                    ("srv_cpu_pct", "server CPU % of a core"),
                    ("gen_cpu_pct", "generator CPU %"), ("srv_wait_pct", "server run-queue wait %")]:
    print(f"| {name} | {med('single', field):g} | {med('cluster', field):g} | {ratio(field):.2f}x |")
print(f"| Redis commands per message | - | {med('cluster', 'redis_cmds_per_msg'):g} | |")
print(f"| Redis round trips per message (publisher) | - | {med('cluster', 'redis_trips_per_msg'):g} | |")
EOF
cat "$OUT/loadavg"
