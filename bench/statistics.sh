#!/usr/bin/env bash
# What the built-in performance statistics ([postgres.<name>.statistics])
# add to a poll, side by side in one run with the poll without them, and
# what Debian's prometheus-postgres-exporter costs for the same statistics.
#
#   bash bench/statistics.sh          # as root; builds nothing; prints Markdown
#
# One scratch PostgreSQL 15 (pg_stat_statements preloaded and created,
# STATEMENTS distinct statements in it, DATABASES databases, TABLES tables),
# nothing else querying it. Windows of WINDOW seconds, one after the other,
# each with a fresh process connecting as its own role:
#   off        dbwarden, statistics.enabled = false (the poll as before)
#   stats      dbwarden, statistics every poll (pg_stat_database, WAL, checkpoints, bgwriter)
#   stats+top  the same and statistics.statements.top = TOP
# (ROUNDS times, in that order), then
#   pgx-same   postgres_exporter --disable-default-metrics --disable-settings-metrics
#              --no-collector.database, its bgwriter collector and a queries file
#              with the same statistics (pg_stat_database counters, pg_stat_wal,
#              the top TOP statements per queryid, written as its users write
#              them: through the pg_stat_statements view), scraped every INTERVAL_MS
#   pgx-default postgres_exporter with its defaults (for reference), scraped every INTERVAL_MS
# Measured per poll (dbwarden_poll_duration_seconds) or per scrape (curl's
# time_total): wall time, and CPU of the role's server backends
# (/proc/<pid>/schedstat); and per statement, pg_stat_statements of the role.
#
# Knobs: WINDOW [20], ROUNDS [2], INTERVAL_MS [250], TOP [20],
# STATEMENTS [500], DATABASES [10], TABLES [200],
# DBWARDEN [target/release/dbwarden], POSTGRES_EXPORTER [prometheus-postgres-exporter],
# PG_BIN [/usr/lib/postgresql/15/bin]. Everything it starts is removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
WINDOW=${WINDOW:-20}
ROUNDS=${ROUNDS:-2}
INTERVAL_MS=${INTERVAL_MS:-250}
INTERVAL=$(echo "scale=3; $INTERVAL_MS / 1000" | bc)
TOP=${TOP:-20}
STATEMENTS=${STATEMENTS:-500}
DATABASES=${DATABASES:-10}
TABLES=${TABLES:-200}
DBWARDEN=${DBWARDEN:-$ROOT/target/release/dbwarden}
POSTGRES_EXPORTER=${POSTGRES_EXPORTER:-$(command -v prometheus-postgres-exporter || true)}
PY="python3 $HERE/scrape.py"

log() { printf '[statistics %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the server runs as the postgres OS user)"
[ -x "$DBWARDEN" ] || die "$DBWARDEN missing (cargo build --release)"
[ -n "$POSTGRES_EXPORTER" ] || die "prometheus-postgres-exporter missing (apt-get install prometheus-postgres-exporter)"
[ -f "$PG_BIN/../lib/pg_stat_statements.so" ] || [ -f "/usr/lib/postgresql/15/lib/pg_stat_statements.so" ] \
    || die "pg_stat_statements missing (Debian package postgresql-15)"

WORK=$(mktemp -d /tmp/dbwarden-statistics-bench.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    [ -f "$WORK/data/postmaster.pid" ] && (cd "$WORK" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1)
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chown postgres: "$WORK"
chmod 700 "$WORK"

as_pg() { (cd "$WORK" && runuser -u postgres -- "$@"); }
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >/dev/null
PGPORT=$($PY freeport)
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
fsync = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null
PSQL=(psql -X -q -At -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION pg_stat_statements"
for role in bench_off bench_stats bench_top bench_pgx_same bench_pgx_default; do
    "${PSQL[@]}" -c "CREATE ROLE $role LOGIN SUPERUSER"
done
for i in $(seq 1 "$DATABASES"); do "${PSQL[@]}" -c "CREATE DATABASE bench_db_$i"; done
"${PSQL[@]}" -c "DO \$\$ BEGIN FOR i IN 1..$TABLES LOOP EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, v text)', i); EXECUTE format('INSERT INTO t_%s SELECT g, g::text FROM generate_series(1, 100) g', i); END LOOP; END \$\$"
# STATEMENTS distinct statements (target lists of different lengths), so
# pg_stat_statements has as many entries to aggregate and sort.
python3 - "$STATEMENTS" >"$WORK/statements.sql" <<'EOF'
import sys
for k in range(1, int(sys.argv[1]) + 1):
    print("SELECT " + ", ".join(["1"] * k) + ";")
EOF
"${PSQL[@]}" -f "$WORK/statements.sql" >/dev/null
entries=$("${PSQL[@]}" -c "SELECT count(*) FROM pg_stat_statements")

cat >"$WORK/queries.yaml" <<EOF
pg_stat_database_counters:
  query: "SELECT datname, xact_commit, xact_rollback, blks_read, blks_hit, temp_files, temp_bytes, deadlocks, conflicts, sessions, session_time, active_time, idle_in_transaction_time, sessions_abandoned, sessions_fatal, sessions_killed FROM pg_stat_database WHERE datname IS NOT NULL"
  metrics:
    - datname: {usage: "LABEL", description: "database"}
    - xact_commit: {usage: "COUNTER", description: "commits"}
    - xact_rollback: {usage: "COUNTER", description: "rollbacks"}
    - blks_read: {usage: "COUNTER", description: "blocks read"}
    - blks_hit: {usage: "COUNTER", description: "blocks hit"}
    - temp_files: {usage: "COUNTER", description: "temp files"}
    - temp_bytes: {usage: "COUNTER", description: "temp bytes"}
    - deadlocks: {usage: "COUNTER", description: "deadlocks"}
    - conflicts: {usage: "COUNTER", description: "conflicts"}
    - sessions: {usage: "COUNTER", description: "sessions"}
    - session_time: {usage: "COUNTER", description: "ms"}
    - active_time: {usage: "COUNTER", description: "ms"}
    - idle_in_transaction_time: {usage: "COUNTER", description: "ms"}
    - sessions_abandoned: {usage: "COUNTER", description: "sessions"}
    - sessions_fatal: {usage: "COUNTER", description: "sessions"}
    - sessions_killed: {usage: "COUNTER", description: "sessions"}
pg_stat_wal:
  query: "SELECT wal_records, wal_fpi, wal_bytes::float8 AS wal_bytes, wal_buffers_full, wal_write, wal_sync FROM pg_stat_wal"
  metrics:
    - wal_records: {usage: "COUNTER", description: "records"}
    - wal_fpi: {usage: "COUNTER", description: "fpi"}
    - wal_bytes: {usage: "COUNTER", description: "bytes"}
    - wal_buffers_full: {usage: "COUNTER", description: "times"}
    - wal_write: {usage: "COUNTER", description: "writes"}
    - wal_sync: {usage: "COUNTER", description: "syncs"}
pg_stat_statements_top:
  query: "SELECT queryid::text AS queryid, sum(calls) AS calls, sum(total_exec_time) / 1000 AS seconds, sum(rows) AS rows, sum(shared_blks_hit) AS shared_blks_hit, sum(shared_blks_read) AS shared_blks_read FROM pg_stat_statements WHERE queryid IS NOT NULL GROUP BY queryid ORDER BY 3 DESC LIMIT $TOP"
  metrics:
    - queryid: {usage: "LABEL", description: "queryid"}
    - calls: {usage: "COUNTER", description: "calls"}
    - seconds: {usage: "COUNTER", description: "seconds"}
    - rows: {usage: "COUNTER", description: "rows"}
    - shared_blks_hit: {usage: "COUNTER", description: "blocks"}
    - shared_blks_read: {usage: "COUNTER", description: "blocks"}
EOF
chmod 644 "$WORK/queries.yaml"

backend_cpu_ns() {  # total schedstat CPU of the role's backends now alive
    local pids
    pids=$("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE usename = '$1'")
    local s=0
    for p in $pids; do
        [ -r "/proc/$p/schedstat" ] && s=$((s + $(cut -d' ' -f1 "/proc/$p/schedstat")))
    done
    echo "$s"
}
poll_metrics() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^dbwarden_poll_duration_seconds_(sum|count)/{printf "%s ", $2} END {print ""}'; }

declare -A POLL_MS CPU_MS N
dbwarden_window() {  # name role toml-extra
    local name=$1 role=$2 extra=$3 port
    port=$($PY freeport)
    cat >"$WORK/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[log]
level = "warn"
[postgres.bench]
url = "postgres://$role@127.0.0.1:$PGPORT/postgres"
sslmode = "disable"
poll_interval = "${INTERVAL_MS}ms"
poll_timeout = "${INTERVAL_MS}ms"
statement_timeout = "200ms"
$extra
EOF
    "$DBWARDEN" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    local pid=$!; PIDS+=("$pid")
    $PY wait-http "http://127.0.0.1:$port/readyz" 30
    sleep 2
    local s0 c0 s1 c1 b0 b1
    read -r s0 c0 < <(poll_metrics "$port"); b0=$(backend_cpu_ns "$role")
    sleep "$WINDOW"
    read -r s1 c1 < <(poll_metrics "$port"); b1=$(backend_cpu_ns "$role")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local polls; polls=$(echo "$c1 - $c0" | bc)
    POLL_MS[$name]="${POLL_MS[$name]-} $(echo "scale=3; ($s1 - $s0) * 1000 / $polls" | bc)"
    CPU_MS[$name]="${CPU_MS[$name]-} $(echo "scale=3; ($b1 - $b0) / 1000000 / $polls" | bc)"
    N[$name]="${N[$name]-} $polls"
    log "$name: $polls polls"
}

exporter_window() {  # name role args...
    local name=$1 role=$2; shift 2
    local port; port=$($PY freeport)
    env DATA_SOURCE_NAME="postgresql://$role@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
        "$POSTGRES_EXPORTER" --web.listen-address="127.0.0.1:$port" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!; PIDS+=("$pid")
    $PY wait-http "http://127.0.0.1:$port/metrics" 30
    for _ in 1 2 3; do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics"; done
    local b0 b1 t=0 n=0 end
    b0=$(backend_cpu_ns "$role")
    end=$(( $(date +%s) + WINDOW ))
    while [ "$(date +%s)" -lt "$end" ]; do
        t=$(echo "$t + $(curl -sf -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/metrics")" | bc)
        n=$((n + 1))
        sleep "$INTERVAL"
    done
    b1=$(backend_cpu_ns "$role")
    grep -qi "error" "$WORK/$name.log" && log "$name log has errors: $(grep -i error "$WORK/$name.log" | head -3)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    POLL_MS[$name]=" $(echo "scale=3; $t * 1000 / $n" | bc)"
    CPU_MS[$name]=" $(echo "scale=3; ($b1 - $b0) / 1000000 / $n" | bc)"
    N[$name]=" $n"
    log "$name: $n scrapes"
}

echo "## Statistics cost: $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "    dbwarden: $("$DBWARDEN" --version) ($(cd "$ROOT" && git rev-parse --short HEAD)), $POSTGRES_EXPORTER $("$POSTGRES_EXPORTER" --version 2>&1 | head -1 | awk '{print $3}')"
echo "    PostgreSQL $("${PSQL[@]}" -c "SHOW server_version"), $entries pg_stat_statements entries, $((DATABASES + 3)) databases, $TABLES tables; poll/scrape every ${INTERVAL}s, windows of ${WINDOW}s"
echo "    load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

"${PSQL[@]}" -c "SELECT pg_stat_statements_reset()" >/dev/null
for _ in $(seq 1 "$ROUNDS"); do
    dbwarden_window off bench_off "[postgres.bench.statistics]
enabled = false"
    dbwarden_window stats bench_stats ""
    dbwarden_window stats+top bench_top "[postgres.bench.statistics.statements]
top = $TOP"
done
exporter_window pgx-same bench_pgx_same --disable-default-metrics --disable-settings-metrics \
    --no-collector.database --collector.bgwriter --extend.query-path="$WORK/queries.yaml"
exporter_window pgx-default bench_pgx_default

mean() { echo "$1" | tr ' ' '\n' | grep -v '^$' | awk '{s += $1; n++} END {printf "%.3f", s / n}'; }
echo "| run | polls or scrapes | wall ms per poll/scrape (each round) | mean | server backend CPU ms per poll/scrape (each round) | mean |"
echo "|---|---:|---|---:|---|---:|"
for k in off stats stats+top pgx-same pgx-default; do
    echo "| $k |${N[$k]} |${POLL_MS[$k]} | $(mean "${POLL_MS[$k]}") |${CPU_MS[$k]} | $(mean "${CPU_MS[$k]}") |"
done
echo
echo "pg_stat_statements per role (statements over 0.005 ms mean, or the statistics' own):"
echo
echo "| role | exec ms per call | calls | statement |"
echo "|---|---:|---:|---|"
"${PSQL[@]}" -F ' | ' -c "SELECT r.rolname, round(mean_exec_time::numeric, 4), calls,
        left(regexp_replace(query, '\s+', ' ', 'g'), 90)
    FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
    WHERE r.rolname LIKE 'bench_%' AND (mean_exec_time > 0.005 OR query ~ 'pg_stat_(wal|bgwriter|statements|database)')
    ORDER BY r.rolname, mean_exec_time DESC" | sed 's/^/| /; s/$/ |/'
