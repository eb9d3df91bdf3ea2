#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
# PostgreSQL 15 server binaries: the Postgres backend's tests start their own
# throwaway cluster with them (initdb into a temp dir, run as the `postgres` user).
if [ -z "${FENCELOCK_PG_URL:-}" ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql-15 pgbouncer >/dev/null
  else
    echo "PostgreSQL 15 server binaries are required (or set FENCELOCK_PG_URL)"; exit 1
  fi
fi
# pgbouncer (transaction pooling): the Postgres backend is tested through it.
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
fi
# etcd 3.4 (Debian's etcd-server) runs beside the Raft backend in its bench;
# protoc builds the etcd-client crate's stubs (clippy --all-targets compiles the benches).
if command -v apt-get >/dev/null; then
  missing=()
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v etcd >/dev/null || missing+=(etcd-server)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  fi
fi
echo "setup done"
