#!/usr/bin/env bash
# The cost of one Neo4j poll with 10, 100 and 1,000 running transactions
# reported by the server (the Bolt test server in a child process playing
# Neo4j 5.x). Prints a Markdown table; see docs/benchmarks.md.
#   POLLS=300 bash bench/neo4j_poll.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --example neo4j_poll_bench >&2
POLLS="${POLLS:-300}" ./target/release/examples/neo4j_poll_bench
