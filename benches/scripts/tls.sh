#!/usr/bin/env bash
# wss vs ws with our own client and server: handshakes per second, and echo
# throughput for 20 B and 16 KiB messages. The server (wsproto's echo_server
# example) is pinned to core 0, the client (benches' tls_bench) to core 1;
# ws and wss alternate within each run, so each run's ratio compares like
# with like. Prints every run, then medians and the median of the per-run
# wss/ws ratios.
#
#   benches/scripts/tls.sh [--runs N] [--secs S]
#
# Needs: cargo, openssl (for a throwaway CA and certificate), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
SECS=4
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
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
taskset -c 0 "$server_bin" --addr "127.0.0.1:$ws_port" --max-connections 100000 2>/dev/null &
pids+=($!)
taskset -c 0 "$server_bin" --addr "127.0.0.1:$wss_port" --max-connections 100000 \
    --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" 2>/dev/null &
pids+=($!)
sleep 0.5

results=$dir/results
: >"$results"
for run in $(seq "$RUNS"); do
    for scheme in ws wss; do
        if [ $scheme = ws ]; then p=$ws_port; else p=$wss_port; fi
        url="$scheme://localhost:$p/"
        hs=$(taskset -c 1 "$client_bin" handshakes --url "$url" --ca "$dir/ca.pem" --secs "$SECS")
        e20=$(taskset -c 1 "$client_bin" echo --url "$url" --ca "$dir/ca.pem" --size 20 --secs "$SECS")
        e16k=$(taskset -c 1 "$client_bin" echo --url "$url" --ca "$dir/ca.pem" --size 16384 --secs "$SECS")
        echo "run $run $scheme: $hs | $e20 | $e16k"
        printf '%s %s %s %s %s\n' "$run" "$scheme" \
            "$(sed -E 's/.*: ([0-9]+)\/s/\1/' <<<"$hs")" \
            "$(sed -E 's/.*: ([0-9]+) msg\/s.*/\1/' <<<"$e20")" \
            "$(sed -E 's/.*msg\/s, ([0-9.]+) MB\/s/\1/' <<<"$e16k")" >>"$results"
        # Let TIME_WAIT sockets and the server's threads settle.
        sleep 1
    done
done

python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cols = ["handshakes/s", "echo 20 B msg/s", "echo 16 KiB MB/s"]
by = {}
for run, scheme, *vals in rows:
    by.setdefault(scheme, []).append([float(v) for v in vals])
print()
print("| measure | ws (median) | wss (median) | wss/ws (median of per-run ratios) |")
print("|---|---|---|---|")
for i, name in enumerate(cols):
    ws = [r[i] for r in by["ws"]]
    wss = [r[i] for r in by["wss"]]
    ratios = [b / a for a, b in zip(ws, wss)]
    print(f"| {name} | {statistics.median(ws):.0f} | {statistics.median(wss):.0f} | "
          f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) |")
EOF
