#!/usr/bin/env bash
# Where dbwarden's poll time goes, with measures that machine noise does not
# move much: instructions counted by callgrind (client side), CPU time of the
# polling backend and pg_stat_statements per statement (server side), and
# EXPLAIN (ANALYZE, TIMING OFF) of the sessions statement (server execution
# without sending rows). Against a scratch PostgreSQL 15 holding SESSIONS
# client sessions (half active, half idle), like bench/run.sh.
#
#   bash bench/poll_profile.sh            # as root; builds nothing
#
# Knobs: SESSIONS [1000], SECONDS_PER_WINDOW [30], CALLGRIND [1] (0 skips it),
# EXPLAINS [60], DBWARDEN [target/release/dbwarden], PG_BIN [/usr/lib/postgresql/15/bin].
# Everything it starts is removed on exit (trap), also on failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SESSIONS=${SESSIONS:-1000}
WINDOW=${SECONDS_PER_WINDOW:-30}
CALLGRIND=${CALLGRIND:-1}
EXPLAINS=${EXPLAINS:-60}
DBWARDEN=${DBWARDEN:-$ROOT/target/release/dbwarden}
PY="python3 $HERE/scrape.py"

log() { printf '[poll_profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the server runs as the postgres OS user)"
[ -x "$DBWARDEN" ] || die "$DBWARDEN missing (cargo build --release)"
[ "$CALLGRIND" = 0 ] || command -v valgrind >/dev/null || die "valgrind missing (apt-get install valgrind) or CALLGRIND=0"

WORK=$(mktemp -d /tmp/dbwarden-poll-profile.XXXXXX)
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
max_connections = $((SESSIONS + 100))
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.track_planning = on
client_connection_check_interval = '1s'
fsync = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null
PSQL=(psql -X -q -At -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION pg_stat_statements; CREATE ROLE bench_dbwarden LOGIN SUPERUSER"

printf 'SELECT pg_sleep(3600);\n' >"$WORK/active.sql"
printf 'SELECT 1;\n\\sleep 2100 s\n' >"$WORK/idle.sql"   # 3600 s would overflow pgbench's int of µs
chmod 644 "$WORK"/*.sql
half=$((SESSIONS / 2))
for kind in active idle; do
    env PGAPPNAME="bench_$kind" "$PG_BIN/pgbench" -n -c "$half" -j 2 -T 7200 -f "$WORK/$kind.sql" \
        -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$WORK/pgbench-$kind.log" 2>&1 &
    PIDS+=("$!")
done
for _ in $(seq 1 240); do
    n=$("${PSQL[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'bench_%'")
    [ "$n" -ge "$SESSIONS" ] && break
    sleep 0.5
done
[ "$n" -ge "$SESSIONS" ] || die "only $n sessions"

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
poll_metrics() { curl -sf "http://127.0.0.1:$DBW_PORT/metrics" | awk '/^dbwarden_poll_duration_seconds_(sum|count)/{printf "%s ", $2} END {print ""}'; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }

echo "## dbwarden poll profile: $SESSIONS sessions, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "    dbwarden: $("$DBWARDEN" --version) ($(cd "$ROOT" && git rev-parse --short HEAD), binary built $(date -r "$DBWARDEN" +%H:%M))"
echo "    load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# ---- window 1: wall clock, CPU of both sides, pg_stat_statements
"$DBWARDEN" run --config "$WORK/dbwarden.toml" >"$WORK/dbwarden.log" 2>&1 &
DBW=$!; PIDS+=("$DBW")
$PY wait-http "http://127.0.0.1:$DBW_PORT/readyz" 30
sleep 3
BACKEND=$("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE usename = 'bench_dbwarden' AND backend_type = 'client backend'")
"${PSQL[@]}" -c "SELECT pg_stat_statements_reset()" >/dev/null
read -r s0 c0 < <(poll_metrics); d0=$(cpu_ns "$DBW"); b0=$(cpu_ns "$BACKEND")
sleep "$WINDOW"
read -r s1 c1 < <(poll_metrics); d1=$(cpu_ns "$DBW"); b1=$(cpu_ns "$BACKEND")
polls=$(echo "$c1 - $c0" | bc)
echo "### Per poll, $polls polls in ${WINDOW} s (nothing else querying the server)"
echo
echo "| measure | ms per poll |"
echo "|---|---:|"
echo "| poll duration, mean (dbwarden_poll_duration_seconds) | $(echo "scale=2; ($s1 - $s0) * 1000 / $polls" | bc) |"
echo "| CPU of the polling backend (server side, schedstat) | $(echo "scale=2; ($b1 - $b0) / 1000000 / $polls" | bc) |"
echo "| CPU of dbwarden (client side, schedstat, all threads) | $(echo "scale=2; ($d1 - $d0) / 1000000 / $polls" | bc) |"
echo
echo "pg_stat_statements, dbwarden's role:"
echo
echo "| exec ms per call | calls | rows per call | statement |"
echo "|---:|---:|---:|---|"
"${PSQL[@]}" -F ' | ' -c "SELECT round(mean_exec_time::numeric, 3), calls, rows / greatest(calls, 1),
        left(regexp_replace(query, '\s+', ' ', 'g'), 70)
    FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
    WHERE r.rolname = 'bench_dbwarden' ORDER BY mean_exec_time DESC" | sed 's/^/| /; s/$/ |/'
echo
echo "$(grep -E 'VmRSS|VmHWM|RssAnon|RssFile|Threads' /proc/$DBW/status | tr -s ' \t' ' ' | tr '\n' ';')"
echo
kill "$DBW"; wait "$DBW" 2>/dev/null || true

# ---- the sessions statement alone, as the server executes it (no rows sent)
SQL=$(python3 - "$ROOT/src/observe/postgres.rs" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'const SESSIONS_SQL: &str = "(.*?)";', src, re.S)
print(m.group(1).replace("$1", "1024").replace("\\'", "'").replace('\\"', '"'))
EOF
)
median=$(for _ in $(seq 1 "$EXPLAINS"); do echo "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) $SQL;"; done \
    | psql -X -At -h 127.0.0.1 -p "$PGPORT" -U bench_dbwarden -d postgres | awk '/Execution Time/ {print $3}' | sort -n \
    | awk '{a[NR] = $1} END {printf "%.3f (min %.3f, n=%d)", a[int((NR + 1) / 2)], a[1], NR}')
floor=$(for _ in $(seq 1 "$EXPLAINS"); do echo "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) SELECT pid FROM pg_stat_get_activity(NULL);"; done \
    | psql -X -At -h 127.0.0.1 -p "$PGPORT" -U bench_dbwarden -d postgres | awk '/Execution Time/ {print $3}' | sort -n \
    | awk '{a[NR] = $1} END {printf "%.3f (min %.3f, n=%d)", a[int((NR + 1) / 2)], a[1], NR}')
echo "EXPLAIN (ANALYZE, TIMING OFF) execution time, median ms: sessions statement $median;"
echo "floor, \`SELECT pid FROM pg_stat_get_activity(NULL)\`: $floor."
echo

# ---- callgrind: instructions per poll on the client side
if [ "$CALLGRIND" != 0 ]; then
    "${PSQL[@]}" -c "SELECT 1" >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" "$DBWARDEN" run --config "$WORK/dbwarden.toml" \
        >"$WORK/callgrind.log" 2>&1 &
    VG=$!; PIDS+=("$VG")
    $PY wait-http "http://127.0.0.1:$DBW_PORT/readyz" 120
    sleep "$WINDOW"
    read -r _ cg_polls < <(poll_metrics)
    kill -INT "$VG"; wait "$VG" 2>/dev/null || true
    callgrind_annotate --inclusive=yes "$WORK/callgrind.out" 2>/dev/null >"$WORK/callgrind.txt" || true
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/callgrind.txt")
    fn() { awk -v f="$1" 'index($0, f) {gsub(",", "", $1); print $1; exit}' "$WORK/callgrind.txt"; }
    echo "### Client instructions (callgrind, $cg_polls polls, start-up included in the total)"
    echo
    echo "| function (inclusive) | instructions per poll |"
    echo "|---|---:|"
    for f in "PROGRAM TOTALS" "observe::postgres::read_snapshot" "observe::postgres::session_from_row" \
             "daemon::state::SharedState::publish" "evaluate::summary::summarize"; do
        if [ "$f" = "PROGRAM TOTALS" ]; then v=$total; else v=$(fn "$f"); fi
        [ -n "$v" ] && echo "| $f | $(echo "$v / $cg_polls" | bc) |"
    done
    echo
fi
