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

step "simulation: madsim build, 30 seeds of the Raft cluster under faults, planted-bug tests"
# One build with its own flags and target dir (the madsim cfg changes every
# crate; tokio_unstable lets each run seed tokio's select! generator). The
# seeds and the planted-bug budget are fixed, so CI time is bounded.
SIM_ENV=(env RUSTFLAGS="--cfg madsim --cfg tokio_unstable" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/madsim")
"${SIM_ENV[@]}" cargo build -q -p fencelock-sim --release --bins --tests
"${SIM_ENV[@]}" cargo run -q -p fencelock-sim --release -- --seeds "${FENCELOCK_SIM_SEEDS:-1..31}"
"${SIM_ENV[@]}" cargo test -q -p fencelock-sim --release --test planted -- --nocapture --test-threads 2
