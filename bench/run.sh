#!/usr/bin/env bash
# Side-by-side benchmark: dbwarden vs Debian's prometheus-postgres-exporter (Go)
# vs pg_exporter (Rust, crates.io), against one scratch PostgreSQL 15 holding
# 200 and then 1,000 client sessions (half active, half idle).
#
#   bash bench/run.sh                 # as root; prints Markdown tables
#
# Environment knobs (defaults in brackets):
#   SESSIONS ["200 1000"]   session counts, ascending; each half active, half idle
#   ROUNDS [300]            scrape rounds per session count (one scrape of each exporter per round)
#   IDLE_SECONDS [30]       no-scrape window per session count (dbwarden keeps polling)
#   SKIP_BUILD [0]          1: use target/release/dbwarden as it is
#   RESULTS [/tmp/dbwarden-bench-results-<time>]   where JSON, logs and the table are kept
#   DBWARDEN, POSTGRES_EXPORTER, PG_EXPORTER   binaries to use
#   PG_BIN [/usr/lib/postgresql/15/bin]
#
# It starts and always removes (trap on EXIT/INT/TERM): a scratch cluster in a
# temp dir owned by `postgres` (max_connections 1100, pg_stat_statements), the
# pgbench clients holding the sessions, and the three exporters. All traffic
# is on 127.0.0.1. Every exporter connects as its own superuser role, so
# pg_stat_statements and the backends' CPU can be told apart per exporter.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SESSIONS=${SESSIONS:-"200 1000"}
ROUNDS=${ROUNDS:-300}
IDLE_SECONDS=${IDLE_SECONDS:-30}
SKIP_BUILD=${SKIP_BUILD:-0}
DBWARDEN=${DBWARDEN:-$ROOT/target/release/dbwarden}
POSTGRES_EXPORTER=${POSTGRES_EXPORTER:-/usr/bin/prometheus-postgres-exporter}
PG_EXPORTER=${PG_EXPORTER:-/opt/peers/bin/pg_exporter}
RESULTS=${RESULTS:-/tmp/dbwarden-bench-results-$(date +%Y%m%d-%H%M%S)}
PY="python3 $HERE/scrape.py"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (initdb and the server run as the postgres OS user via runuser)"
for b in initdb pg_ctl pgbench; do [ -x "$PG_BIN/$b" ] || die "$PG_BIN/$b missing: apt-get install postgresql-15"; done
command -v psql >/dev/null || die "psql missing: apt-get install postgresql-client-15"
[ -x "$POSTGRES_EXPORTER" ] || die "$POSTGRES_EXPORTER missing: apt-get install prometheus-postgres-exporter"

WORK=""
PIDS=()
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    if [ -n "$WORK" ] && [ -f "$WORK/data/postmaster.pid" ]; then
        (cd "$WORK" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1)
    fi
    if [ -n "$WORK" ]; then
        mkdir -p "$RESULTS/logs"
        cp "$WORK"/*.log "$RESULTS/logs/" 2>/dev/null
        rm -rf "$WORK"
    fi
    [ $rc = 0 ] || log "failed (exit $rc); logs in $RESULTS/logs"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RESULTS"

# ---------------------------------------------------------------- binaries
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release (dbwarden)"
    (cd "$ROOT" && cargo build --release --bin dbwarden) >"$RESULTS/build.log" 2>&1 \
        || { tail -20 "$RESULTS/build.log" >&2; die "build failed"; }
fi
[ -x "$DBWARDEN" ] || die "$DBWARDEN missing (cargo build --release)"
if [ ! -x "$PG_EXPORTER" ]; then
    log "pg_exporter missing: cargo install --root /opt/peers pg_exporter (takes minutes)"
    # The crate's lockfile may pin versions the registry mirror lacks; fall back to a fresh resolve.
    cargo install --locked --root /opt/peers pg_exporter >"$RESULTS/pg_exporter-install.log" 2>&1 \
        || cargo install --root /opt/peers pg_exporter >>"$RESULTS/pg_exporter-install.log" 2>&1 \
        || die "cannot install pg_exporter (see $RESULTS/pg_exporter-install.log)"
    PG_EXPORTER=/opt/peers/bin/pg_exporter
fi

# A compiler on a 2-core machine distorts everything: wait (bounded) for it.
NOTES=()
for _ in $(seq 1 60); do pgrep -x rustc >/dev/null || break; sleep 10; done
if pgrep -x rustc >/dev/null; then
    NOTES+=("a rustc process was running when the measurement started")
    log "WARNING: rustc still running after 10 min of waiting; measuring anyway"
fi

# ---------------------------------------------------------------- scratch PostgreSQL
WORK=$(mktemp -d /tmp/dbwarden-bench.XXXXXX)
chown postgres: "$WORK"
chmod 700 "$WORK"
as_pg() { (cd "$WORK" && runuser -u postgres -- "$@"); }
log "initdb in $WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
PGPORT=$($PY freeport)
cat >>"$WORK/data/postgresql.conf" <<EOF

# ---- dbwarden bench
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 1100
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.track_planning = on
pg_stat_statements.max = 10000
# sessions of killed pgbench clients sitting in pg_sleep go away within 1 s
client_connection_check_interval = '1s'
fsync = off
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null \
    || { tail -20 "$WORK/server.log" >&2; die "PostgreSQL did not start"; }
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" <<'EOF'
CREATE EXTENSION pg_stat_statements;
CREATE ROLE bench_dbwarden LOGIN SUPERUSER;
CREATE ROLE bench_postgres_exporter LOGIN SUPERUSER;
CREATE ROLE bench_pg_exporter LOGIN SUPERUSER;
EOF
log "PostgreSQL $("${PSQL[@]}" -c 'SHOW server_version') on 127.0.0.1:$PGPORT, max_connections $("${PSQL[@]}" -c 'SHOW max_connections')"

# ---------------------------------------------------------------- exporters
DBW_PORT=$($PY freeport)
cat >"$WORK/dbwarden.toml" <<EOF
[server]
listen = "127.0.0.1:$DBW_PORT"

[log]
level = "warn"

[defaults]
poll_interval = "1s"
poll_timeout = "900ms"
statement_timeout = "800ms"

[postgres.bench]
url = "postgres://bench_dbwarden@127.0.0.1:$PGPORT/postgres"
sslmode = "disable"

[postgres.bench.paths]
data = "$WORK/data"
EOF
"$DBWARDEN" config --config "$WORK/dbwarden.toml" >/dev/null 2>"$WORK/dbwarden-config.log" \
    || { cat "$WORK/dbwarden-config.log" >&2; die "dbwarden rejects the generated config (see 'dbwarden config --help' and config/local.toml)"; }
"$DBWARDEN" run --config "$WORK/dbwarden.toml" >"$WORK/dbwarden.log" 2>&1 &
DBW_PID=$!; PIDS+=("$DBW_PID")

GOX_PORT=$($PY freeport)
env DATA_SOURCE_NAME="postgresql://bench_postgres_exporter@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
    "$POSTGRES_EXPORTER" --web.listen-address="127.0.0.1:$GOX_PORT" >"$WORK/postgres_exporter.log" 2>&1 &
GOX_PID=$!; PIDS+=("$GOX_PID")

RSX_PORT=$($PY freeport)
"$PG_EXPORTER" --dsn "postgresql://bench_pg_exporter@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
    --port "$RSX_PORT" --listen 127.0.0.1 >"$WORK/pg_exporter.log" 2>&1 &
RSX_PID=$!; PIDS+=("$RSX_PID")

$PY wait-http "http://127.0.0.1:$DBW_PORT/readyz" 30
$PY wait-http "http://127.0.0.1:$GOX_PORT/metrics" 30
$PY wait-http "http://127.0.0.1:$RSX_PORT/metrics" 30
log "exporters up: dbwarden :$DBW_PORT (pid $DBW_PID), postgres_exporter :$GOX_PORT (pid $GOX_PID), pg_exporter :$RSX_PORT (pid $RSX_PID)"

# ---------------------------------------------------------------- sessions
printf 'SELECT pg_sleep(3600);\n' >"$WORK/active.sql"
# pgbench keeps \sleep in an int of microseconds: 3600 s would overflow to a
# negative value and the "idle" clients would spin on SELECT 1. 2100 s fits.
printf 'SELECT 1;\n\\sleep 2100 s\n' >"$WORK/idle.sql"
chmod 644 "$WORK"/*.sql

count_sessions() { # prints "active idle" of the bench clients
    "${PSQL[@]}" -F ' ' -c "SELECT count(*) FILTER (WHERE application_name = 'bench_active' AND state = 'active'),
                                  count(*) FILTER (WHERE application_name = 'bench_idle' AND state = 'idle')
                           FROM pg_stat_activity"
}
hold_sessions() { # $1 kind (active|idle), $2 how many more
    local n=$2 j=2
    [ "$n" -gt 0 ] || return 0
    [ "$n" -ge 2 ] || j=1
    env PGAPPNAME="bench_$1" "$PG_BIN/pgbench" -n -c "$n" -j "$j" -T 7200 -f "$WORK/$1.sql" \
        -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$WORK/pgbench-$1-$n.log" 2>&1 &
    PIDS+=("$!")
}

MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
{
    echo "machine: $MACHINE"
    echo "postgres: $("${PSQL[@]}" -c 'SELECT version()')"
    echo "dbwarden: $("$DBWARDEN" --version 2>&1), binary built $(date -r "$DBWARDEN" +%H:%M:%S) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), work tree $(cd "$ROOT" && git status --porcelain 2>/dev/null | wc -l) changed paths)"
    echo "postgres_exporter: $("$POSTGRES_EXPORTER" --version 2>&1 | head -1)"
    echo "pg_exporter: $("$PG_EXPORTER" --version 2>&1 | head -1)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/env.txt"

held=0
PHASES=()
for N in $SESSIONS; do
    half=$((N / 2))
    add=$((half - held))
    [ "$add" -ge 0 ] || die "SESSIONS must be ascending"
    log "holding $N sessions ($half active + $half idle)"
    hold_sessions active "$add"
    hold_sessions idle "$add"
    held=$half
    ok=0
    for _ in $(seq 1 240); do
        read -r a i < <(count_sessions)
        if [ "$a" -ge "$half" ] && [ "$i" -ge "$half" ]; then ok=1; break; fi
        sleep 0.5
    done
    [ $ok = 1 ] || die "sessions not established: active=$a idle=$i, want $half each (see $WORK/pgbench-*.log)"
    "${PSQL[@]}" -F ' ' -c "SELECT coalesce(state, '-'), count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 1" \
        | sed "s/^/  [$N] state /" >&2
    # Guard: the idle clients must really sit idle (not loop on SELECT 1).
    c0=$("${PSQL[@]}" -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query = 'SELECT \$1' OR query = 'SELECT 1'")
    sleep 3   # also lets dbwarden poll the new population a few times
    c1=$("${PSQL[@]}" -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query = 'SELECT \$1' OR query = 'SELECT 1'")
    [ $((c1 - c0)) -lt 100 ] || die "idle pgbench clients are not idle: $((c1 - c0)) SELECT 1 in 3 s"
    # Someone else's build may have started meanwhile: wait for it (bounded).
    for _ in $(seq 1 30); do pgrep -x rustc >/dev/null || break; sleep 10; done
    note="load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    pgrep -x rustc >/dev/null && note="$note; rustc running"
    log "measuring at $N sessions: ${IDLE_SECONDS}s idle window, then $ROUNDS round-robin rounds"
    # In the background + wait, so that a signal runs the cleanup at once.
    $PY phase --pgport "$PGPORT" --sessions "$N" --rounds "$ROUNDS" --idle-seconds "$IDLE_SECONDS" \
        --exporter "dbwarden=$DBW_PORT=$DBW_PID=bench_dbwarden" \
        --exporter "postgres_exporter=$GOX_PORT=$GOX_PID=bench_postgres_exporter" \
        --exporter "pg_exporter=$RSX_PORT=$RSX_PID=bench_pg_exporter" \
        --note "$note" --out "$RESULTS/phase-$N.json" &
    phase_pid=$!
    PIDS+=("$phase_pid")
    wait "$phase_pid" || die "measurement at $N sessions failed"
    PHASES+=("$RESULTS/phase-$N.json")
    for p in "$DBW_PID" "$GOX_PID" "$RSX_PID"; do kill -0 "$p" 2>/dev/null || die "exporter pid $p died"; done
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/env.txt"
for n in "${NOTES[@]}"; do echo "note: $n" >>"$RESULTS/env.txt"; done
{
    echo "## dbwarden vs peers, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    sed 's/^/    /' "$RESULTS/env.txt"
    echo
    $PY report "${PHASES[@]}"
} | tee "$RESULTS/report.md"
log "results in $RESULTS"
