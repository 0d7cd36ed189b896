#!/usr/bin/env bash
# Issue 15's async echo benchmark: every scenario against every echo server,
# each server pinned to core 0 and the generator (echogen) to core 1, all
# servers in every run (interleaved, the order rotated from run to run), and
# one table of medians with ratios against the best Rust peer in the same run.
#
#   benches/scripts/echo.sh [--runs N] [--only text20,bin16k,text1k,text5]
#                           [--servers NAME,...] [--inflight K] [--secs S]
#                           [--warmup S] [--nice N] [--out DIR]
#
# Servers (a row each; --servers picks some):
#   wsproto-tokio            wsproto/examples/tokio_echo_server.rs (current-thread
#                            tokio); skipped while that example does not exist
#   tokio-tungstenite        benches/examples/tungstenite_echo.rs (send per echo)
#   tokio-tungstenite-batch  the same with --batch: feed every message already
#                            read, flush when no more is ready (what
#                            `StreamExt::forward` does in the crate's own echo
#                            example)
#   fastwebsockets           benches/examples/fastwebsockets_echo.rs (FragmentCollector)
#   tokio-websockets         benches/examples/tokio_websockets_echo.rs (send per echo)
#   wsproto-blocking         wsproto/examples/echo_server.rs: a thread per
#                            connection, for reference (not async, not a peer)
# The "best Rust peer" of a run is the fastest of the four peer rows.
#
# Scenarios (the issue's; K = --inflight, default 8, messages in flight per
# connection):
#   text20  100 connections, 20 B text, K in flight
#   bin16k  10 connections, 16 KiB binary, K in flight
#   text1k  500 connections, 1 KiB text, K in flight
#   text5   1000 connections, 5 B text, 1 in flight
#
# As in load.sh, each server and the generator run in a session of their own
# (their own scheduler autogroup) at autogroup nice --nice (default -10,
# needs root; 0 leaves priorities alone), and every result says how long
# both waited for their core. Needs: cargo, taskset, setsid, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
ONLY="text20,bin16k,text1k,text5"
SERVERS="wsproto-tokio,tokio-tungstenite,tokio-tungstenite-batch,fastwebsockets,tokio-websockets,wsproto-blocking"
INFLIGHT=8
SECS=4
WARMUP=1
NICE=-10
OUT=""
BASE_PORT=${ECHO_PORT:-19200}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --inflight) INFLIGHT=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --nice) NICE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "echo.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/echo/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
EX=$TARGET/release/examples

echo "== build" >&2
cargo build --release -q -p benches --bin echogen \
    --example tungstenite_echo --example fastwebsockets_echo --example tokio_websockets_echo
cargo build --release -q -p wsproto --example echo_server
HAVE_TOKIO=0
if [ -f wsproto/examples/tokio_echo_server.rs ]; then
    # The adapter sits behind wsproto's `tokio` feature (issue 15).
    if cargo build --release -q -p wsproto --features tokio --example tokio_echo_server 2>>"$OUT/build.log" ||
        cargo build --release -q -p wsproto --example tokio_echo_server 2>>"$OUT/build.log"; then
        HAVE_TOKIO=1
    else
        echo "echo.sh: wsproto's tokio_echo_server does not build (see $OUT/build.log); its row is skipped" >&2
    fi
else
    echo "echo.sh: wsproto/examples/tokio_echo_server.rs does not exist yet; the wsproto-tokio row is skipped" >&2
fi

# Servers hold up to 1000 connections: open files.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

server_cmd() { # name addr -> the command line
    case "$1" in
        wsproto-tokio) echo "$EX/tokio_echo_server --addr $2" ;;
        tokio-tungstenite) echo "$EX/tungstenite_echo --addr $2" ;;
        tokio-tungstenite-batch) echo "$EX/tungstenite_echo --addr $2 --batch" ;;
        fastwebsockets) echo "$EX/fastwebsockets_echo --addr $2" ;;
        tokio-websockets) echo "$EX/tokio_websockets_echo --addr $2" ;;
        wsproto-blocking) echo "$EX/echo_server --addr $2 --max-connections 4096" ;;
        *) echo "echo.sh: unknown server $1" >&2; exit 2 ;;
    esac
}

scenario() {
    case "$1" in
        text20) echo "--conns 100 --size 20 --kind text --inflight $INFLIGHT" ;;
        bin16k) echo "--conns 10 --size 16384 --kind binary --inflight $INFLIGHT" ;;
        text1k) echo "--conns 500 --size 1024 --kind text --inflight $INFLIGHT" ;;
        text5) echo "--conns 1000 --size 5 --kind text --inflight 1" ;;
        *) echo "echo.sh: unknown scenario $1" >&2; exit 2 ;;
    esac
}

LIST=()
PORTS=()
i=0
for s in ${SERVERS//,/ }; do
    server_cmd "$s" x >/dev/null # validates the name
    if [ "$s" = wsproto-tokio ] && [ "$HAVE_TOKIO" = 0 ]; then
        i=$((i + 1))
        continue
    fi
    LIST+=("$s")
    PORTS+=($((BASE_PORT + i)))
    i=$((i + 1))
done
for k in ${ONLY//,/ }; do scenario "$k" >/dev/null; done

# shellcheck source=benches/scripts/lib.sh
. benches/scripts/lib.sh

start_server() { # name port; returns 1 if it did not say `listening on`
    rm -f "$OUT/server.err"
    # shellcheck disable=SC2046
    start_owned "$OUT/server.pid" "$OUT/server.err" $(server_cmd "$1" "127.0.0.1:$2")
    for _ in $(seq 200); do
        grep -q 'listening on' "$OUT/server.err" 2>/dev/null && break
        sleep 0.05
    done
    if ! grep -q 'listening on' "$OUT/server.err" 2>/dev/null; then
        echo "echo.sh: $1 did not start on port $2:" >&2
        cat "$OUT/server.err" >&2
        stop_server
        return 1
    fi
}

echo "== $RUNS run(s) of $ONLY against ${LIST[*]} (log: $OUT/log)" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/loadavg"
n=${#LIST[@]}
for run in $(seq "$RUNS"); do
    for key in ${ONLY//,/ }; do
        for j in $(seq 0 $((n - 1))); do
            idx=$(((j + run - 1) % n)) # rotated: no server always goes first
            name=${LIST[$idx]}
            port=${PORTS[$idx]}
            start_server "$name" "$port" || continue
            echo "-- run $run: $key vs $name" >>"$OUT/log"
            # shellcheck disable=SC2046
            if own /dev/null 1 "$TARGET/release/echogen" $(scenario "$key") \
                --warmup "$WARMUP" --secs "$SECS" --addr "127.0.0.1:$port" \
                --server-pid "$PID" --label "$name" --key "$key" >"$OUT/one" 2>&1; then :; else
                echo "echo.sh: echogen failed ($key vs $name), see $OUT/log" >&2
            fi
            cat "$OUT/one" "$OUT/server.err" >>"$OUT/log"
            grep '^RESULT ' "$OUT/one" | sed "s/^RESULT /RESULT key=$key run=$run /" >>"$OUT/results" || true
            stop_server
            echo "   run $run $key $name: $(grep -o 'msg_s=[0-9]*\|srv_us_per_msg=[0-9.]*\|gen_cpu_pct=[0-9]*\|bad=[0-9]*\|lost=[0-9]*' "$OUT/one" | tr '\n' ' ')" >&2
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg"
python3 benches/scripts/echo_table.py "$OUT/results" | tee "$OUT/table.md"
cat "$OUT/loadavg"
