#!/usr/bin/env bash
# chat-server RSS per idle connection, ws:// vs wss:// (issue 14), RUNS
# alternating runs of each (default 3) with COUNT clients (default 10000):
# server pinned to core 0, clients (src/bin/tls_idle.rs) to core 1. A
# throwaway CA and P-256 leaf are made with the openssl CLI. Prints each
# RESULT line, then the medians and their ratio.
#   bash benches/scripts/tls_idle.sh [COUNT] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-10000}
RUNS=${2:-3}
ulimit -n "$(ulimit -Hn)"
cargo build -q --release -p chat-server -p benches --bin chat-server --bin tls_idle
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -days 2 -subj /CN=tls-idle-CA -keyout "$DIR/ca.key" -out "$DIR/ca.pem"
ec -subj /CN=localhost -keyout "$DIR/key.pem" -out "$DIR/leaf.csr"
printf 'subjectAltName=DNS:localhost\n' > "$DIR/ext"
openssl x509 -req -days 2 -in "$DIR/leaf.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
  -CAcreateserial -extfile "$DIR/ext" -out "$DIR/leaf.pem" 2>/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # MODE
  local p tls=() ca=()
  p=$(port)
  if [ "$1" = wss ]; then
    tls=(--tls-cert "$DIR/leaf.pem" --tls-key "$DIR/key.pem"); ca=(--ca "$DIR/ca.pem")
  fi
  taskset -c 0 ./target/release/chat-server --addr "127.0.0.1:$p" --quiet \
    --max-connections $((COUNT + 100)) --ping-interval 3600 "${tls[@]}" 2>"$DIR/server.log" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
  taskset -c 1 ./target/release/tls_idle --addr "127.0.0.1:$p" --pid "$pid" --count "$COUNT" "${ca[@]}" \
    | tee -a "$DIR/results"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$RUNS"); do run ws; run wss; done
python3 - "$DIR/results" <<'PY'
import re, statistics, sys
per = {"ws": [], "wss": []}
for line in open(sys.argv[1]):
    m = re.search(r"mode=(\w+) .*per_conn_kib=([\d.]+)", line)
    if m:
        per[m[1]].append(float(m[2]))
ws, wss = statistics.median(per["ws"]), statistics.median(per["wss"])
print(f"MEDIAN ws={ws:.2f} KiB wss={wss:.2f} KiB per idle connection; wss/ws = {wss / ws:.2f}x "
      f"(runs: ws {per['ws']}, wss {per['wss']})")
PY
