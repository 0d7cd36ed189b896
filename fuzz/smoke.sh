#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short time from a copy of its
# committed seed corpus. A crash fails the run and leaves the reproducer in
# ci-artifacts/fuzz/. Only the stable toolchain is assumed: cargo fuzz needs
# nightly flags (-Zsanitizer=address and friends), which RUSTC_BOOTSTRAP=1
# unlocks on stable.
#
#   bash fuzz/smoke.sh                       # 30 s per target, as many at once as cores
#   FUZZ_SECONDS=600 FUZZ_JOBS=1 bash fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
secs=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
art=$(pwd)/ci-artifacts/fuzz
mkdir -p "$art"
export RUSTC_BOOTSTRAP=1

# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing a C++ compiler"
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update -qq </dev/null
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq g++ </dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked </dev/null
fi
targets=$(cargo fuzz list)
# -a: debug assertions on (-O alone turns them off), so every target also
# checks `Connection`'s receive-path invariants (`debug_check_invariants`)
# at each exit of its receive loop.
cargo fuzz build -O -a </dev/null
echo "fuzz/smoke.sh: built in $((SECONDS - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One target: fuzz from a scratch copy of the seeds, so CI never writes into
# the repository; the exit status lands in $work/<target>.rc.
smoke() {
  local target=$1
  mkdir -p "$work/$target"
  cp fuzz/corpus/"$target"/seed-* "$work/$target"/
  local rc=0
  cargo fuzz run -O -a "$target" "$work/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$art/$target-" -print_final_stats=1 \
    >"$art/$target.log" 2>&1 </dev/null || rc=$?
  echo "$rc" >"$work/$target.rc"
}

running=0
for target in $targets; do
  echo "fuzz/smoke.sh: $target for ${secs} s"
  smoke "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=()
for target in $targets; do
  rc=$(cat "$work/$target.rc" 2>/dev/null || echo missing)
  if [ "$rc" = 0 ]; then
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::average_exec_per_sec)' "$art/$target.log" |
      sed "s/^/  $target: /" || true
  else
    echo "fuzz/smoke.sh: $target FAILED (rc=$rc; log and reproducer in $art)"
    tail -40 "$art/$target.log"
    failed+=("$target")
  fi
done
echo "fuzz/smoke.sh: took $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/smoke.sh: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz/smoke.sh: all targets ran ${secs} s without a crash"
