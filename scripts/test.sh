#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test.
# Tests start their own scratch PostgreSQL clusters, Prometheus and Alertmanager.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_packages
ensure_moto
ensure_local_postgres || echo "note: no PostgreSQL on 127.0.0.1:5432; tests that need it will say so" >&2
cargo test --locked --all-targets -- --test-threads=2
# The builds without Neo4j or Kubernetes support must keep compiling, and
# the PostgreSQL-only build's own unit tests (the pure core, the config, and
# its refusal of the sections it cannot serve) must pass.
for features in "" "neo4j" "kubernetes"; do
  cargo check --locked --no-default-features --features "$features" --all-targets
done
cargo test --locked --no-default-features --lib -- --test-threads=2
