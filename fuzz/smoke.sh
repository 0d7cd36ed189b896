#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short time from a copy of its
# committed seed corpus. A crash fails the run and leaves the reproducer in
# ci-artifacts/fuzz/. Only the stable toolchain is assumed: cargo fuzz needs
# nightly flags, which RUSTC_BOOTSTRAP=1 unlocks on stable.
#
#   bash fuzz/smoke.sh            # 30 s per target
#   FUZZ_SECONDS=600 bash fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-30}
art=$(pwd)/ci-artifacts/fuzz
mkdir -p "$art"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz build -O

failed=()
for target in $(cargo fuzz list); do
  work=$(mktemp -d)
  cp fuzz/corpus/"$target"/seed-* "$work"/
  log="$art/$target.log"
  echo "fuzz/smoke.sh: $target for ${secs}s"
  if cargo fuzz run -O "$target" "$work" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$art/$target-" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" | sed "s/^/  $target: /" || true
  else
    echo "fuzz/smoke.sh: $target FAILED (log and reproducer in $art)"
    tail -40 "$log"
    failed+=("$target")
  fi
  rm -rf "$work"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/smoke.sh: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz/smoke.sh: all targets ran ${secs}s without a crash"
