#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
echo "setup done"
