#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15: a minute in all), from the committed
# seeds in corpus/TARGET (what a run finds is kept there locally, not committed). A crash
# stops the script with libFuzzer's report and the input in artifacts/TARGET/.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a toolchain that takes -Z flags: nightly
# where installed, else stable with RUSTC_BOOTSTRAP=1. Without cargo-fuzz the run is skipped
# with a line that says so.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame capture policy requests)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz)"
  exit 0
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  echo "fuzz: nightly toolchain"
else
  export RUSTC_BOOTSTRAP=1
  echo "fuzz: stable toolchain with RUSTC_BOOTSTRAP=1"
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${secs} s"
  log="artifacts/$t/run.log"
  if ! cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=70000 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (the input is in fuzz/artifacts/$t/, the log in $log)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | sed "s/^/fuzz: $t /" || true
done
echo "fuzz: ${#targets[@]} targets ran ${secs} s each without a crash"
