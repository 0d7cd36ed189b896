#!/usr/bin/env bash
# wss vs ws with our own client and server: handshakes per second, and echo
# throughput for 20 B and 16 KiB messages. The server (wsproto's echo_server
# example) is pinned to core 0, the client (benches' tls_bench) to core 1;
# ws and wss alternate within each run, so each run's ratio compares like
# with like. Prints every run, then medians and the median of the per-run
# wss/ws ratios.
#
#   benches/scripts/tls.sh [--runs N] [--secs S] [--nice N]
#
# On a shared machine other tasks hold the cores: the server and each client
# run in a session of their own (their own scheduler autogroup) at autogroup
# nice --nice (default -10, needs root; 0 leaves priorities alone), as
# load.sh does, and the table gives CPU time per operation (from
# /proc/PID/stat), which moves far less with the machine's load than the
# wall-clock rates.
#
# Needs: cargo, openssl (for a throwaway CA and certificate), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
SECS=4
NICE=-10
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --nice) NICE=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cargo build --release -q -p wsproto --features rustls --example echo_server
cargo build --release -q -p benches --bin tls_bench
target=${CARGO_TARGET_DIR:-target}
server_bin=$target/release/examples/echo_server
client_bin=$target/release/tls_bench

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

# A CA and a P-256 certificate for localhost it signed (what a small site
# would use; rustls prefers X25519 and AES-256-GCM or ChaCha20 with it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/key.pem" -out "$dir/req.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$dir/ext"
openssl x509 -req -in "$dir/req.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -out "$dir/cert.pem" -days 2 -extfile "$dir/ext" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ws_port=$(port)
wss_port=$(port)
# own PIDFILE CORE CMD...: CMD in a session of its own (its own autogroup)
# at nice $NICE, pinned to CORE; its pid goes to PIDFILE.
own() {
    local pidfile=$1 core=$2
    shift 2
    setsid bash -c 'echo $$ >"$1"
        [ "$0" = 0 ] || echo "$0" >/proc/self/autogroup 2>/dev/null || true
        exec nice -n "$0" taskset -c "$2" "${@:3}"' "$NICE" "$pidfile" "$core" "$@"
}
own "$dir/ws.pid" 0 "$server_bin" --addr "127.0.0.1:$ws_port" --max-connections 100000 2>/dev/null &
own "$dir/wss.pid" 0 "$server_bin" --addr "127.0.0.1:$wss_port" --max-connections 100000 \
    --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" 2>/dev/null &
sleep 0.5
pids=("$(cat "$dir/ws.pid")" "$(cat "$dir/wss.pid")")

# CPU seconds (user + system) of a process so far, from /proc/PID/stat
# (fields after the command name; utime and stime are the 12th and 13th).
cpu() { awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }

results=$dir/results
: >"$results"
for run in $(seq "$RUNS"); do
    for scheme in ws wss; do
        if [ $scheme = ws ]; then p=$ws_port; spid=${pids[0]}; else p=$wss_port; spid=${pids[1]}; fi
        url="$scheme://localhost:$p/"
        measures="handshakes echo20 echo16k"
        # Resumed is the same as full for ws: measured for wss only.
        [ $scheme = wss ] && measures="handshakes resumed echo20 echo16k"
        for m in $measures; do
            case $m in
                handshakes) args=(handshakes) ;;
                resumed) args=(handshakes --resume) ;;
                echo20) args=(echo --size 20) ;;
                echo16k) args=(echo --size 16384) ;;
            esac
            before=$(cpu "$spid")
            out=$(own "$dir/client.pid" 1 "$client_bin" "${args[@]}" --url "$url" --ca "$dir/ca.pem" --secs "$SECS")
            after=$(cpu "$spid")
            echo "run $run $scheme: $out (server cpu +$before -> $after s)"
            # run scheme measure count wall-s client-cpu-s server-cpu-s payload-bytes
            python3 -c '
import re, sys
run, scheme, m, before, after, out = sys.argv[1:]
n = int(re.search(r"(\d+) in", out).group(1))
wall = float(re.search(r"in ([\d.]+) s", out).group(1))
ccpu = float(re.search(r"cpu ([\d.]+) s", out).group(1))
size = {"handshakes": 0, "resumed": 0, "echo20": 20, "echo16k": 16384}[m]
print(run, scheme, m, n, wall, ccpu, float(after) - float(before), size)
' "$run" "$scheme" "$m" "$before" "$after" "$out" >>"$results"
            # Let TIME_WAIT sockets and the server's threads settle.
            sleep 1
        done
    done
done

python3 -c '
import statistics, sys
med = statistics.median
data = {}
for line in open(sys.argv[1]):
    run, scheme, m, n, wall, ccpu, scpu, size = line.split()
    n, wall, ccpu, scpu, size = int(n), float(wall), float(ccpu), float(scpu), int(size)
    data.setdefault(m, {}).setdefault(run, {})[scheme] = dict(
        rate=n / wall, mbs=n * size / wall / 1e6,
        server_us=scpu / n * 1e6, client_us=ccpu / n * 1e6)
if "resumed" in data:
    for run, r in data["resumed"].items():
        r["ws"] = data["handshakes"][run]["ws"]
names = {"handshakes": "handshakes/s (full TLS handshake)",
         "resumed": "handshakes/s (TLS 1.3 resumption)", "echo20": "echo 20 B, msg/s",
         "echo16k": "echo 16 KiB, MB/s (payload one way)"}
print()
print("| measure | ws | wss | wss/ws | server CPU per op, ws -> wss | client CPU per op, ws -> wss |")
print("|---|---|---|---|---|---|")
for m in ["handshakes", "resumed", "echo20", "echo16k"]:
    runs = data[m]
    key = "mbs" if m == "echo16k" else "rate"
    ws = [r["ws"][key] for r in runs.values()]
    wss = [r["wss"][key] for r in runs.values()]
    ratios = [b / a for a, b in zip(ws, wss)]
    def cpu(side, s):
        return med([r[s][side] for r in runs.values()])
    brackets = ", ".join("%.2f" % r for r in ratios)
    print("| %s | %.0f | %.0f | %.2f (%s) | %.0f -> %.0f us | %.0f -> %.0f us |" % (
        names[m], med(ws), med(wss), med(ratios), brackets,
        cpu("server_us", "ws"), cpu("server_us", "wss"),
        cpu("client_us", "ws"), cpu("client_us", "wss")))
print()
print("medians over runs; wss/ws is the median of the per-run ratios (each run in brackets)")
' "$results"
