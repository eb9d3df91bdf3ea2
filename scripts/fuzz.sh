#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ in turn, sharing N seconds between
# them (default 60 in total), and fails on the first crash, panic, timeout or
# out-of-memory. Usage: scripts/fuzz.sh [seconds]
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. The corpus grows in fuzz/corpus/<target> (ignored by
# git); committed seeds in fuzz/seeds/<target> are read as extra inputs.
# A crash is saved under fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

total="${1:-60}"
[[ "$total" =~ ^[0-9]+$ ]] || { echo "usage: $0 [seconds]" >&2; exit 2; }
targets=(table_commands restore_bytes)
per=$(( total / ${#targets[@]} ))
(( per >= 1 )) || per=1

export RUSTC_BOOTSTRAP=1
# Separate from the workspace's build: the fuzz flags would rebuild everything.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: run scripts/setup.sh" >&2; exit 1; }

# Safe Rust only: no sanitizer (several times more executions per second);
# overflow checks and debug assertions stay on (cargo-fuzz's default).
cargo fuzz build -s none

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  inputs=("$corpus")
  [[ -d "fuzz/seeds/$target" ]] && inputs+=("fuzz/seeds/$target")
  echo "fuzz: $target for ${per}s"
  log="$(mktemp)"
  if ! cargo fuzz run -s none "$target" "${inputs[@]}" -- \
      -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    rm -f "$log"
    echo "fuzz: $target FAILED (input saved under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  rm -f "$log"
  echo "fuzz: $target ok: ${runs:-?} runs, ${rate:-?} exec/s"
done
