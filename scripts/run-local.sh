#!/usr/bin/env bash
# Quick start: runs dbwarden's daemon against the local PostgreSQL
# (127.0.0.1:5432), or, when none is running, against a scratch cluster
# started with the same harness the tests use. Prints the checks once, then
# serves http://127.0.0.1:9641/metrics until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_packages
cargo build --quiet --bin dbwarden --example scratch-postgres
bin=target/debug/dbwarden
scratch_pid=
cleanup() { [ -n "$scratch_pid" ] && kill "$scratch_pid" 2>/dev/null && wait "$scratch_pid" 2>/dev/null; true; }
trap cleanup EXIT INT TERM

if ensure_local_postgres; then
  echo "watching the local PostgreSQL at 127.0.0.1:5432"
else
  echo "no PostgreSQL on 127.0.0.1:5432: starting a scratch cluster"
  url_file=$(mktemp)
  target/debug/examples/scratch-postgres "$url_file" &
  scratch_pid=$!
  for _ in $(seq 1 300); do [ -s "$url_file" ] && break; sleep 0.1; done
  [ -s "$url_file" ] || { echo "the scratch cluster did not start" >&2; exit 1; }
  export DBWARDEN_POSTGRES__LOCAL__URL=$(cat "$url_file")
  echo "watching the scratch cluster at $DBWARDEN_POSTGRES__LOCAL__URL"
fi

"$bin" check --config config/local.toml || true
echo
echo "dbwarden is running: http://127.0.0.1:9641/metrics  http://127.0.0.1:9641/api/v1/status  (Ctrl-C stops it)"
"$bin" run --config config/local.toml
