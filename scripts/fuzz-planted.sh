#!/usr/bin/env bash
# Shows that the table_commands fuzz target catches real bugs: plants one bug
# at a time in a scratch copy of core/ (the checkout is not touched), fuzzes
# the copy, and fails unless every plant is caught within N seconds (default
# 120 each). Not part of the test suite: it needs minutes and builds twice.
# Usage: scripts/fuzz-planted.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-planted"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# name | perl substitution on core/src/table.rs
plants=(
  # A release that forgets to hand the lock on (caught by check_invariants: lost wake-up).
  'no-wake-up-on-release|s/(fn op_release\(.*?)grant_queue\(.*?\);/$1/s'
  # A steal that hands the thief the victim'"'"'s token again (caught by the fencing-order check).
  'steal-reuses-token|s/(fn op_steal\(.*?)(\n\s*let grant = issue\()/$1\n        if lock.last_token > 0 \&\& lock.last_token == self.last_token \&\& !lock.ended.is_empty() { self.last_token -= 1; }$2/s'
)

failed=0
for plant in "${plants[@]}"; do
  name="${plant%%|*}"
  edit="${plant#*|}"
  rm -rf "$scratch/ws" && mkdir -p "$scratch/ws"
  cp -r core fuzz "$scratch/ws/"
  rm -rf "$scratch/ws/fuzz/corpus" "$scratch/ws/fuzz/artifacts"
  sed 's/^members = .*/members = ["core"]/' Cargo.toml > "$scratch/ws/Cargo.toml"
  cp core/src/table.rs "$scratch/before.rs"
  perl -0pi -e "$edit" "$scratch/ws/core/src/table.rs"
  if cmp -s "$scratch/before.rs" "$scratch/ws/core/src/table.rs"; then
    echo "planted: $name: the plant site was not found in core/src/table.rs (update this script)" >&2
    failed=1
    continue
  fi
  echo "planted: $name: fuzzing up to ${secs}s"
  mkdir -p "$scratch/corpus-$name"
  if (cd "$scratch/ws/fuzz" && cargo fuzz run -s none table_commands "$scratch/corpus-$name" -- \
        -max_total_time="$secs" -timeout=10 >"$scratch/log" 2>&1); then
    echo "planted: $name: NOT caught" >&2
    failed=1
  else
    echo "planted: $name: caught: $(grep -m1 -A1 'panicked at' "$scratch/log" | tail -n 1 | cut -c1-160)"
  fi
done
exit "$failed"
