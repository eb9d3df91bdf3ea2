#!/usr/bin/env bash
# Fails if fencelock-core depends (even transitively) on an async runtime or
# an I/O crate, or if its source reads a clock, randomness or the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
banned='^(tokio|async-std|smol|mio|madsim|futures-io|tokio-postgres|postgres|tonic|hyper|reqwest|openraft|rand|getrandom|libc|socket2)$'
deps=$(cargo tree -p fencelock-core -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad=$(echo "$deps" | grep -E "$banned" || true)
if [ -n "$bad" ]; then
  echo "fencelock-core depends on banned crates:"; echo "$bad"; exit 1
fi
if grep -rnE 'std::time|SystemTime|Instant::now|std::env|thread_rng|RandomState|std::fs|std::net' core/src; then
  echo "core/src reads a clock, the environment, randomness or does I/O"; exit 1
fi
echo "fencelock-core deps: $(echo "$deps" | tr '\n' ' ')"
