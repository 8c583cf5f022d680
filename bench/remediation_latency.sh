#!/usr/bin/env bash
# Remediation latency: the time from an idle session crossing its policy
# threshold to dbwarden terminating it, over many sessions. The goal under
# test: at most poll_interval + 250 ms.
#
#   bash bench/remediation_latency.sh      # as root; prints a Markdown table
#
# Environment knobs (defaults in brackets):
#   SESSIONS [200]          sessions per run, opened in waves of random size at random times
#   RUNS [3]                runs (fresh audit file each, seeds 1..RUNS)
#   POLL_INTERVAL [1s]      the target's poll_interval
#   IDLE_FOR [2s]           the policy's idle_for
#   MAX_PER_CYCLE [1000]    the policy's max_per_cycle (empty: leave dbwarden's default, 10)
#   BATCH_SIZE []           [remediation] batch_size (empty: dbwarden's default, 100;
#                           leave it empty for a binary older than batches)
#   MIN_WAVE [1], MAX_WAVE [15]   sessions per wave, uniform in [MIN_WAVE, MAX_WAVE]
#                           (MIN_WAVE=MAX_WAVE=SESSIONS: one burst crossing at once)
#   GAP_MIN [0.1], GAP_MAX [1.9]  seconds between waves, uniform
#   SYNC_IDLE [0]           1: the sessions of a wave become idle at one instant (each runs
#                           SELECT pg_sleep_until(T) first), so a whole wave crosses together
#   SKIP_BUILD [0]          1: use target/release/dbwarden as it is
#   RUSTC_WAIT [600]        seconds to wait at most, before the runs, while a rustc runs
#                           (RUN_RUSTC_WAIT [300]: before each run); the load is noted either way
#   RESULTS [/tmp/dbwarden-remediation-latency-<time>]   JSON results, logs, audit files, report.md
#   DBWARDEN, PG_BIN [/usr/lib/postgresql/15/bin]
#
# It starts and always removes (trap on EXIT/INT/TERM) a scratch PostgreSQL
# 15 in a temp dir owned by `postgres` (like bench/run.sh), dbwarden in
# enforce mode, and the psql clients holding the sessions. All traffic is
# on 127.0.0.1. dbwarden connects as a least-privilege role (pg_monitor,
# pg_signal_backend); the sessions belong to role `app`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SESSIONS=${SESSIONS:-200}
RUNS=${RUNS:-3}
POLL_INTERVAL=${POLL_INTERVAL:-1s}
IDLE_FOR=${IDLE_FOR:-2s}
MAX_PER_CYCLE=${MAX_PER_CYCLE-1000}
BATCH_SIZE=${BATCH_SIZE:-}
MIN_WAVE=${MIN_WAVE:-1}
MAX_WAVE=${MAX_WAVE:-15}
GAP_MIN=${GAP_MIN:-0.1}
GAP_MAX=${GAP_MAX:-1.9}
SYNC_IDLE=${SYNC_IDLE:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
RUSTC_WAIT=${RUSTC_WAIT:-600}
RUN_RUSTC_WAIT=${RUN_RUSTC_WAIT:-300}
DBWARDEN=${DBWARDEN:-$ROOT/target/release/dbwarden}
RESULTS=${RESULTS:-/tmp/dbwarden-remediation-latency-$(date +%Y%m%d-%H%M%S)}
LAT="python3 $HERE/remediation_latency.py"
SCRAPE="python3 $HERE/scrape.py"   # freeport, wait-http

log() { printf '[latency %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
seconds() { # "1s" / "250ms" -> seconds as a decimal
    case "$1" in
        *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
        *s) echo "${1%s}" ;;
        *) die "durations here are NNs or NNms, got $1" ;;
    esac
}

[ "$(id -u)" = 0 ] || die "run as root (initdb and the server run as the postgres OS user via runuser)"
for b in initdb pg_ctl; do [ -x "$PG_BIN/$b" ] || die "$PG_BIN/$b missing: apt-get install postgresql-15"; done
command -v psql >/dev/null || die "psql missing: apt-get install postgresql-client-15"

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
        cp "$WORK"/*.log "$WORK"/*.toml "$RESULTS/logs/" 2>/dev/null
        cp "$WORK"/audit-*.jsonl "$RESULTS/" 2>/dev/null
        rm -rf "$WORK"
    fi
    [ $rc = 0 ] || log "failed (exit $rc); logs in $RESULTS/logs"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RESULTS"

# ---------------------------------------------------------------- binary
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release (dbwarden)"
    (cd "$ROOT" && cargo build --release --bin dbwarden) >"$RESULTS/build.log" 2>&1 \
        || { tail -20 "$RESULTS/build.log" >&2; die "build failed"; }
fi
[ -x "$DBWARDEN" ] || die "$DBWARDEN missing (cargo build --release)"

# A compiler on a 2-core machine distorts latencies: wait (bounded) for it.
NOTES=()
for _ in $(seq 1 $((RUSTC_WAIT / 10))); do pgrep -x rustc >/dev/null || break; sleep 10; done
if pgrep -x rustc >/dev/null; then
    NOTES+=("a rustc process was running when the measurement started")
    log "WARNING: rustc still running after ${RUSTC_WAIT}s of waiting; measuring anyway"
fi

# ---------------------------------------------------------------- scratch PostgreSQL
WORK=$(mktemp -d /tmp/dbwarden-latency.XXXXXX)
chown postgres: "$WORK"
chmod 700 "$WORK"
as_pg() { (cd "$WORK" && runuser -u postgres -- "$@"); }
log "initdb in $WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
PGPORT=$($SCRAPE freeport)
cat >>"$WORK/data/postgresql.conf" <<EOF

# ---- dbwarden remediation latency bench
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = $((SESSIONS + 50))
fsync = off
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null \
    || { tail -20 "$WORK/server.log" >&2; die "PostgreSQL did not start"; }
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" <<'EOF'
CREATE ROLE app LOGIN;
CREATE ROLE bench_dbwarden LOGIN;
GRANT pg_monitor, pg_signal_backend TO bench_dbwarden;
EOF
log "PostgreSQL $("${PSQL[@]}" -c 'SHOW server_version') on 127.0.0.1:$PGPORT"

MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
{
    echo "machine: $MACHINE"
    echo "postgres: $("${PSQL[@]}" -c 'SELECT version()')"
    echo "dbwarden: $("$DBWARDEN" --version 2>&1), binary built $(date -r "$DBWARDEN" '+%Y-%m-%d %H:%M:%S') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), work tree $(cd "$ROOT" && git status --porcelain 2>/dev/null | wc -l) changed paths)"
    echo "audit file system: $(df -T "$WORK" | awk 'NR==2 {print $2}') ($WORK)"
    echo "settings: SESSIONS=$SESSIONS RUNS=$RUNS POLL_INTERVAL=$POLL_INTERVAL IDLE_FOR=$IDLE_FOR MAX_PER_CYCLE=${MAX_PER_CYCLE:-default} BATCH_SIZE=${BATCH_SIZE:-default} waves of $MIN_WAVE-$MAX_WAVE sessions $GAP_MIN-${GAP_MAX}s apart, SYNC_IDLE=$SYNC_IDLE, pacing=0s"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/env.txt"

# ---------------------------------------------------------------- runs
OUTS=()
for run in $(seq 1 "$RUNS"); do
    DBW_PORT=$($SCRAPE freeport)
    AUDIT="$WORK/audit-$run.jsonl"
    CFG="$WORK/dbwarden-$run.toml"
    cat >"$CFG" <<EOF
[server]
listen = "127.0.0.1:$DBW_PORT"

[log]
level = "warn"

[postgres.bench]
url = "postgres://bench_dbwarden@127.0.0.1:$PGPORT/postgres"
sslmode = "disable"
poll_interval = "$POLL_INTERVAL"
poll_timeout = "900ms"
statement_timeout = "800ms"
max_connections = 2

[remediation]
mode = "enforce"
instance = "bench"
audit_file = "$AUDIT"
state_dir = "$WORK/state-$run"
pacing = "0s"
${BATCH_SIZE:+batch_size = $BATCH_SIZE}

[remediation.budget]
per_target = 100000
global = 100000
window = "10m"

[remediation.policies.idle]
action = "terminate"
${MAX_PER_CYCLE:+max_per_cycle = $MAX_PER_CYCLE}

[remediation.policies.idle.when]
state = ["idle"]
idle_for = "$IDLE_FOR"
match_users = ["app"]
EOF
    "$DBWARDEN" config --config "$CFG" >/dev/null 2>"$WORK/dbwarden-config-$run.log" \
        || { cat "$WORK/dbwarden-config-$run.log" >&2; die "dbwarden rejects the generated config"; }
    "$DBWARDEN" run --config "$CFG" >"$WORK/dbwarden-$run.log" 2>&1 &
    DBW_PID=$!; PIDS+=("$DBW_PID")
    $SCRAPE wait-http "http://127.0.0.1:$DBW_PORT/readyz" 30

    # Someone else's build may have started meanwhile: wait for it (bounded).
    for _ in $(seq 1 $((RUN_RUSTC_WAIT / 10))); do pgrep -x rustc >/dev/null || break; sleep 10; done
    note="load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    pgrep -x rustc >/dev/null && note="$note; rustc running"
    log "run $run/$RUNS: $SESSIONS sessions (dbwarden pid $DBW_PID, :$DBW_PORT)"
    # In the background + wait, so that a signal runs the cleanup at once.
    $LAT run --pgport "$PGPORT" --dbw-port "$DBW_PORT" --audit "$AUDIT" --target bench \
        --sessions "$SESSIONS" --min-wave "$MIN_WAVE" --max-wave "$MAX_WAVE" --gap-min "$GAP_MIN" --gap-max "$GAP_MAX" $([ "$SYNC_IDLE" = 1 ] && echo --sync-idle) --idle-for "$(seconds "$IDLE_FOR")" --poll-interval "$(seconds "$POLL_INTERVAL")" \
        --seed "$run" --note "$note" --out "$RESULTS/run-$run.json" &
    lat_pid=$!
    PIDS+=("$lat_pid")
    wait "$lat_pid" || die "run $run failed"
    OUTS+=("$RESULTS/run-$run.json")
    echo "run $run: $note; after: $(cut -d' ' -f1-3 /proc/loadavg)$(pgrep -x rustc >/dev/null && echo '; rustc running')" >>"$RESULTS/env.txt"
    kill -0 "$DBW_PID" 2>/dev/null || die "dbwarden (pid $DBW_PID) died during run $run"
    kill "$DBW_PID"; wait "$DBW_PID" 2>/dev/null || true
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/env.txt"
for n in "${NOTES[@]}"; do echo "note: $n" >>"$RESULTS/env.txt"; done
{
    echo "## Remediation latency, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    sed 's/^/    /' "$RESULTS/env.txt"
    echo
    $LAT report "${OUTS[@]}"
} | tee "$RESULTS/report.md"
log "results in $RESULTS"
