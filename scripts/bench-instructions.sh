#!/usr/bin/env bash
# Instructions per operation of the core benchmarks, counted by callgrind:
# unlike wall-clock time, the count does not change with the load on a shared
# machine, so it shows how cost grows with table and queue size. Each count is
# (run of 2k ops − run of k ops) / k, so building the fixture cancels out.
# Usage: scripts/bench-instructions.sh   (needs valgrind; takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }

bin=$(cargo bench -p fencelock-benches --bench core_table --no-run 2>&1 \
  | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[[ -x "$bin" ]] || { echo "could not find the core_table bench binary" >&2; exit 1; }

instructions() { # workload size iters
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --only "$@" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_op() { # workload size k
  local one two
  one=$(instructions "$1" "$2" "$3")
  two=$(instructions "$1" "$2" $(( $3 * 2 )))
  echo $(( (two - one) / $3 ))
}

echo "| operation | size | instructions per op |"
echo "|---|---|---|"
for size in 1 1000000; do
  echo "| fencelock acquire + release | $size lock(s) | $(per_op pair "$size" 100000) |"
  echo "| HashMap<String, u64> remove + insert | $size key(s) | $(per_op map "$size" 100000) |"
done
for size in 100 10000 100000; do
  echo "| handoff, steady queue (release → grant, re-queue) | $size waiters | $(per_op handoff "$size" 20000) |"
  echo "| handoff, draining (release → grant) | $size waiters | $(per_op drain "$size" $(( size < 40000 ? size / 2 : 20000 ))) |"
done
