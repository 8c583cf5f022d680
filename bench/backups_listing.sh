#!/usr/bin/env bash
# Listing a prefix of many objects: `dbwarden check` against moto's S3
# server (PyPI moto[s3,server], installed by scripts/lib.sh's ensure_moto),
# one location with 10 objects and one with 10,000, each run measured with
# GNU time (wall time, peak RSS). The memory of a listing is bounded when
# the 10,000-object run's peak RSS is that of the 10-object run.
#
# Usage: bash bench/backups_listing.sh [N]   (N objects, default 10000)
# Uses target/release/dbwarden if present (else target/debug/dbwarden; build
# one first). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_moto
N="${1:-10000}"
BIN=target/release/dbwarden
[ -x "$BIN" ] || BIN=target/debug/dbwarden
[ -x "$BIN" ] || { echo "build dbwarden first (cargo build --release --locked)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "missing GNU time: apt-get install time" >&2; exit 1; }
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$DBWARDEN_MOTO_SERVER" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break; sleep 0.1; done
venv_python="$(dirname "$DBWARDEN_MOTO_SERVER")/python"
"$venv_python" - "$port" "$N" <<'PY'
import sys, concurrent.futures, requests
port, n = sys.argv[1], int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
s = requests.Session()
for bucket in ("small", "large"):
    s.put(f"{base}/{bucket}").raise_for_status()
def put(args):
    bucket, i = args
    requests.put(f"{base}/{bucket}/db/postgres_backup_{i:06}.sql",
                 data=b"--\n-- PostgreSQL database dump\n--\n").raise_for_status()
jobs = [("small", i) for i in range(10)] + [("large", i) for i in range(n)]
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    list(ex.map(put, jobs))
PY
echo "| objects | wall time (s) | peak RSS (KiB) | listed |"
echo "|---:|---:|---:|---|"
for bucket in small large; do
  cat >"$work/$bucket.toml" <<TOML
[postgres.main]
url = "postgres://dbwarden@127.0.0.1:1/none"
connect_timeout = "1s"
poll_timeout = "1s"
statement_timeout = "1s"

[backups.$bucket]
target = "main"
url = "s3://$bucket/db/"
endpoint = "http://127.0.0.1:$port"
pattern = "postgres_backup_*.sql"
timeout = "5m"
interval = "10m"
TOML
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
    /usr/bin/time -f "%e %M" -o "$work/time" "$BIN" check --config "$work/$bucket.toml" >"$work/out" 2>&1 || true
  read -r wall rss < <(tail -n 1 "$work/time")
  listed=$(grep -o '[0-9]* objects, [0-9]* backups' "$work/out" || echo "?")
  objects=$([ "$bucket" = small ] && echo 10 || echo "$N")
  echo "| $objects | $wall | $rss | $listed |"
done
