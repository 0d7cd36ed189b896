#!/usr/bin/env bash
# Real-browser test of the chat page: headless Debian Chromium driven by
# playwright-core (no browser download). Run from the repository root:
#   bash chat-server/tests/browser/run.sh
# Installs what it needs (apt: chromium, chromium-driver, nodejs, npm;
# npm: playwright-core into target-browser/), builds and starts the server
# on a free 127.0.0.1 port, runs test.mjs, and leaves screenshots in
# ci-artifacts/chat-browser.png (and -mobile*.png at 390 px, -password.png:
# the password dialog of a registered nick). Then crowd.mjs (its own server,
# restarted twice under CROWD_PAGES pages, default 50) leaves
# ci-artifacts/chat-crowd.png and chat-crowd-server.log. Exits non-zero on
# any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
HERE="chat-server/tests/browser"
WORK="$ROOT/target-browser"
ARTIFACTS="$ROOT/ci-artifacts"
mkdir -p "$WORK" "$ARTIFACTS"
export DEBIAN_FRONTEND=noninteractive

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium chromium-driver)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# Emoji typed as text should render as emoji in the screenshot.
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_apt+=(fonts-noto-color-emoji)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "browser-test: apt-get install ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" ca-certificates >/dev/null
fi

# playwright-core 1.5x+ needs Node 20; Debian 12's own nodejs is 18, for
# which 1.49 is the last release that supports it.
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ -z "${PW_VERSION:-}" ]; then
  if [ "$NODE_MAJOR" -ge 20 ]; then PW_VERSION=1; else PW_VERSION=1.49.1; fi
fi
WORK="$WORK/pw-$PW_VERSION"
mkdir -p "$WORK"
if [ ! -d "$WORK/node_modules/playwright-core" ]; then
  echo "browser-test: npm install playwright-core@$PW_VERSION (node $NODE_MAJOR)"
  [ -f "$WORK/package.json" ] || echo '{"private":true}' > "$WORK/package.json"
  (cd "$WORK" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent "playwright-core@$PW_VERSION")
fi

echo "browser-test: building chat-server"
cargo build -q -p chat-server
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/chat-server"

# Each server keeps its data in a fresh directory (storage on, as the binary
# runs by default), so no run sees an earlier run's messages or accounts.
DATA="$(mktemp -d)"
PORT="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
LOG="$ARTIFACTS/chat-browser-server.log"
"$BIN" --addr "127.0.0.1:$PORT" --data "$DATA/main" >"$LOG" 2>&1 &
SERVER_PID=$!
PROFILE="$(mktemp -d)"
cleanup() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$PROFILE"
}
trap 'cleanup; rm -rf "$DATA"' EXIT

status=0
NODE_PATH="$WORK/node_modules" timeout 120 node "$HERE/test.mjs" \
  "http://127.0.0.1:$PORT/" "$ARTIFACTS/chat-browser.png" "$PROFILE" "$WORK/node_modules/playwright-core/index.js" \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser-test: FAILED (status $status); server log follows" >&2
  tail -n 50 "$LOG" >&2 || true
  exit "$status"
fi
echo "browser-test: ok, screenshot in ci-artifacts/chat-browser.png"
cleanup

# A crowd of pages through two server restarts: back within 15 s, no 1008,
# no `who`. crowd.mjs starts and restarts its own server on its own port.
CROWD_PROFILE="$(mktemp -d)"
CROWD_LOG="$ARTIFACTS/chat-crowd-server.log"
trap 'cleanup; rm -rf "$CROWD_PROFILE" "$DATA"' EXIT
status=0
NODE_PATH="$WORK/node_modules" timeout 150 node "$HERE/crowd.mjs" \
  "$BIN" "$ARTIFACTS/chat-crowd.png" "$CROWD_PROFILE" "$WORK/node_modules/playwright-core/index.js" \
  "$CROWD_LOG" "${CROWD_PAGES:-50}" "$DATA/crowd" \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser-test: crowd FAILED (status $status); server log follows" >&2
  tail -n 50 "$CROWD_LOG" >&2 || true
  exit "$status"
fi
echo "browser-test: crowd ok, screenshot in ci-artifacts/chat-crowd.png"

# Issue 14: the page over https:// and the chat over wss:// (tls.mjs). A
# throwaway CA and leaf made here; Chromium trusts the leaf through its SPKI
# allow-list flag (verification stays on), Node through NODE_EXTRA_CA_CERTS.
TLS_DIR="$(mktemp -d)"
trap 'cleanup; rm -rf "$CROWD_PROFILE" "$TLS_DIR" "$DATA"' EXIT
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -days 2 -subj /CN=chat-browser-test-CA -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem"
ec -subj /CN=localhost -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/leaf.csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$TLS_DIR/ext"
openssl x509 -req -days 2 -in "$TLS_DIR/leaf.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
  -CAcreateserial -extfile "$TLS_DIR/ext" -out "$TLS_DIR/leaf.pem" 2>/dev/null
cat "$TLS_DIR/leaf.pem" "$TLS_DIR/ca.pem" > "$TLS_DIR/chain.pem"
SPKI="$(openssl x509 -in "$TLS_DIR/leaf.pem" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)"
TLS_PORT="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
TLS_LOG="$ARTIFACTS/chat-tls-server.log"
"$BIN" --addr "127.0.0.1:$TLS_PORT" --data "$DATA/tls" --tls-cert "$TLS_DIR/chain.pem" --tls-key "$TLS_DIR/key.pem" >"$TLS_LOG" 2>&1 &
SERVER_PID=$!
PROFILE="$(mktemp -d)"
status=0
NODE_EXTRA_CA_CERTS="$TLS_DIR/ca.pem" NODE_PATH="$WORK/node_modules" timeout 90 node "$HERE/tls.mjs" \
  "https://localhost:$TLS_PORT/" "$ARTIFACTS/chat-tls.png" "$PROFILE" "$WORK/node_modules/playwright-core/index.js" "$SPKI" \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser-test: tls FAILED (status $status); server log follows" >&2
  tail -n 50 "$TLS_LOG" >&2 || true
  exit "$status"
fi
echo "browser-test: tls ok, screenshot in ci-artifacts/chat-tls.png"
cleanup
