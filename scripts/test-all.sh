#!/usr/bin/env bash
# The whole test suite: the README's test command, and what CI runs.
# Sections are independent; each prints its name so a red run says where.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==== %s ====\n' "$*"; }

step "setup (idempotent: installs what is missing)"
bash scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "core stays pure (no async runtime, no I/O crate)"
bash scripts/check-core-purity.sh

step "unit, property, conformance and integration tests"
cargo test --workspace

# ---- further sections (fuzz, loom, postgres, simulation) are appended below ----

step "fuzz: table_commands + restore_bytes (about 60 s in total)"
bash scripts/fuzz.sh 60

step "loom: memory backend wake-up and cancel paths (LOOM_MAX_PREEMPTIONS=2)"
# A target dir of its own: the cfg flag changes every crate's build, and
# sharing the main one would rebuild it from scratch on every run.
RUSTFLAGS="--cfg fencelock_loom" LOOM_MAX_PREEMPTIONS=2 \
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/loom" \
  cargo test -p fencelock-memory --release --test loom
