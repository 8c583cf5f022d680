//! Reads one [`PgSnapshot`] from a PostgreSQL server.
//!
//! Every statement of a poll runs in one read-only transaction, so the
//! statistics views hold still (`stats_fetch_consistency = snapshot` on 15+).
//! Sessions carry `application_name = dbwarden`, a `statement_timeout`, a
//! `lock_timeout` and an `idle_in_transaction_session_timeout` set at connect
//! time (see `config::validate`), so a poll can never queue behind a lock for
//! long nor leave a transaction open.

use std::sync::Arc;

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgRow, PgTypeInfo, PgValueFormat};
use sqlx::query::Query;
use sqlx::{Column, Connection, PgConnection, Postgres, Row, TypeInfo, ValueRef};

use super::snapshot::*;
use super::{PollError, PollErrorKind, intern};

/// The newest WAL position this server knows: on a (cascading) standby
/// `pg_current_wal_lsn()` errors, so measure against what it received.
macro_rules! current_lsn {
    () => {
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"
    };
}

/// An LSN read as bytes from `0/0` (never negative).
fn lsn(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// Longest query text kept per session, in characters.
pub const QUERY_TEXT_MAX_CHARS: i32 = 1024;

/// What the slow cadence reads: database sizes, by name.
pub type DatabaseSizes = Vec<(String, i64)>;

/// The oldest PostgreSQL major version dbwarden reads (`pg_locks.waitstart` is 14+).
pub const MIN_SERVER_VERSION: i32 = 140000;

/// Everything scalar about the server in one round trip: settings, role,
/// recovery status, archiver, invalid indexes and replication slots (as
/// parallel arrays). On 15+ it also switches cumulative statistics to
/// snapshot consistency for the rest of the transaction.
const SERVER_SQL: &str = concat!(
    "SELECT current_setting('server_version_num')::int4,
            version(),
            current_setting('max_connections')::int4,
            current_setting('superuser_reserved_connections')::int4,
            pg_is_in_recovery(),
            current_setting('data_checksums') = 'on',
            current_database()::text,
            (extract(epoch FROM now()) * 1000000)::int8,
            CASE WHEN current_setting('server_version_num')::int4 >= 150000
                 THEN set_config('stats_fetch_consistency', 'snapshot', true) END,
            (SELECT count(*) FROM pg_index WHERE NOT indisvalid),
            current_setting('archive_mode') <> 'off',
            ar.archived_count,
            ar.failed_count,
            extract(epoch FROM now() - ar.last_archived_time)::float8,
            coalesce(ar.last_failed_time > coalesce(ar.last_archived_time, '-infinity'), false),
            CASE WHEN pg_is_in_recovery() THEN (SELECT status FROM pg_stat_wal_receiver LIMIT 1) END,
            CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
            CASE WHEN pg_is_in_recovery()
                 THEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() END,
            CASE WHEN pg_is_in_recovery()
                 THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
            CASE WHEN pg_is_in_recovery()
                 THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 END,
            sl.names, sl.types, sl.active, sl.retained,
            pg_backend_pid(),
            sl.wal_status, sl.safe_wal,
            CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                 THEN (SELECT system_identifier FROM pg_control_system()) END,
            CASE WHEN NOT pg_is_in_recovery()
                 THEN pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 END,
            CASE WHEN pg_is_in_recovery()
                 THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::int8 END,
            CASE WHEN pg_is_in_recovery()
                 THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8 END
     FROM pg_stat_archiver ar,
          (SELECT coalesce(array_agg(slot_name::text ORDER BY slot_name), '{}') AS names,
                  coalesce(array_agg(slot_type ORDER BY slot_name), '{}') AS types,
                  coalesce(array_agg(active ORDER BY slot_name), '{}') AS active,
                  coalesce(array_agg(pg_wal_lsn_diff(",
    current_lsn!(),
    ", restart_lsn)::float8 ORDER BY slot_name), '{}') AS retained,
                  coalesce(array_agg(wal_status ORDER BY slot_name), '{}') AS wal_status,
                  coalesce(array_agg(safe_wal_size ORDER BY slot_name), '{}') AS safe_wal
           FROM pg_replication_slots) sl"
);

/// Every backend: the heaviest statement of a poll (1,000 sessions cost the
/// server about 2 ms, most of it inside `pg_stat_get_activity` itself).
///
/// It is `pg_stat_activity` without the view: the function the view wraps,
/// joined to `pg_database` for the name and once to `pg_roles` for both the
/// user name and the role flags (the view would join `pg_authid` for the name
/// and we `pg_roles` again for the flags). Per-row work is left to the
/// client where it is cheaper there: timestamps travel as `timestamptz` and
/// are decoded from their binary form (an `extract(epoch …)` is numeric
/// arithmetic, four of them per row cost more than the rest of the
/// projection), `coalesce` of never-null text, `::text` of names, and
/// "is this our own backend" (compared with `pg_backend_pid()` read once by
/// [`SERVER_SQL`]). The columns are decoded by position, in this order.
const SESSIONS_SQL: &str = "SELECT a.pid,
            a.backend_type,
            a.state,
            r.rolname,
            d.datname,
            a.application_name,
            host(a.client_addr),
            a.backend_start,
            a.xact_start,
            a.query_start,
            a.state_change,
            a.wait_event_type,
            CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END,
            left(a.query, $1),
            r.rolsuper,
            r.rolreplication
     FROM pg_stat_get_activity(NULL) a
     LEFT JOIN pg_database d ON d.oid = a.datid
     LEFT JOIN pg_roles r ON r.oid = a.usesysid";

/// The columns of [`SESSIONS_SQL`]: their names (for errors) and types,
/// checked once per poll on the first row; every row is then decoded
/// without sqlx's per-value type check.
const SESSION_COLUMNS: [(&str, ColumnType); 16] = [
    ("pid", ColumnType::Int4),
    ("backend_type", ColumnType::Text),
    ("state", ColumnType::Text),
    ("usename", ColumnType::Text),
    ("datname", ColumnType::Text),
    ("application_name", ColumnType::Text),
    ("client_addr", ColumnType::Text),
    ("backend_start", ColumnType::Timestamptz),
    ("xact_start", ColumnType::Timestamptz),
    ("query_start", ColumnType::Timestamptz),
    ("state_change", ColumnType::Timestamptz),
    ("wait_event_type", ColumnType::Text),
    ("pg_blocking_pids", ColumnType::Int4Array),
    ("query", ColumnType::Text),
    ("rolsuper", ColumnType::Bool),
    ("rolreplication", ColumnType::Bool),
];

const STANDBYS_SQL: &str = concat!(
    "SELECT coalesce(application_name, ''),
            host(client_addr),
            coalesce(state, ''),
            coalesce(sync_state, ''),
            extract(epoch FROM write_lag)::float8,
            extract(epoch FROM flush_lag)::float8,
            extract(epoch FROM replay_lag)::float8,
            pg_wal_lsn_diff(",
    current_lsn!(),
    ", replay_lsn)::float8
     FROM pg_stat_replication
     ORDER BY 1, pid"
);

const DATABASES_SQL: &str = "SELECT d.datname::text, s.checksum_failures, coalesce(s.deadlocks, 0), age(d.datfrozenxid)::int8
     FROM pg_database d
     LEFT JOIN pg_stat_database s ON s.datid = d.oid
     ORDER BY 1";

const LOCK_WAITS_SQL: &str = "SELECT pid, (extract(epoch FROM min(waitstart)) * 1000000)::int8 FROM pg_locks WHERE NOT granted GROUP BY pid";

const SIZES_SQL: &str = "SELECT datname::text, pg_database_size(oid)
     FROM pg_database
     WHERE datallowconn AND has_database_privilege(oid, 'CONNECT')";

/// A poll's statement, not kept prepared on the connection: it is parsed
/// again at each poll, one more round trip, as postgres_exporter's are at
/// each scrape. Kept, sqlx holds per connection a copy of each statement's
/// text and its column descriptions, about 20 KiB per target, the largest
/// part of a thousand targets' memory (measured in `docs/benchmarks.md`),
/// for a saving of well under a millisecond per poll.
pub(super) fn unprepared<'q>(sql: impl sqlx::SqlSafeStr) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

/// Reads a snapshot over `conn`, in one read-only transaction and as few
/// round trips as the answers allow (typically five: BEGIN, server,
/// sessions, databases, ROLLBACK; standbys and lock waits only when the
/// sessions show walsenders or lock waiters). `with_sizes` also reads
/// database sizes, which can be slow on clusters with many databases.
/// `sessions_hint` (the number of sessions the previous poll saw) sizes the
/// session list up front. `statistics` also reads the performance
/// statistics (three or four more round trips, last, so that a refusal
/// there cannot spoil the rest), into [`PgSnapshot::statistics`]. Every
/// statement goes through [`unprepared`].
pub async fn read_snapshot(
    conn: &mut PgConnection,
    with_sizes: bool,
    sessions_hint: usize,
    statistics: Option<super::statistics::Plan>,
) -> Result<(PgSnapshot, Option<DatabaseSizes>), PollError> {
    let mut tx = conn
        .begin_with("BEGIN READ ONLY")
        .await
        .map_err(PollError::from_sqlx)?;

    let r = unprepared(SERVER_SQL)
        .fetch_one(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;
    let server = ServerInfo {
        version_num: col(&r, 0, "server_version_num")?,
        version: col(&r, 1, "version")?,
        max_connections: col(&r, 2, "max_connections")?,
        superuser_reserved_connections: col(&r, 3, "superuser_reserved_connections")?,
        in_recovery: col(&r, 4, "pg_is_in_recovery")?,
        data_checksums: col(&r, 5, "data_checksums")?,
        database: col(&r, 6, "current_database")?,
        system_identifier: col::<Option<i64>>(&r, 27, "system_identifier")?.map(|v| v as u64),
        wal_lsn: lsn(col(&r, 28, "pg_current_wal_lsn")?),
    };
    if server.version_num < MIN_SERVER_VERSION {
        return Err(PollError::new(
            PollErrorKind::Unsupported,
            format!(
                "PostgreSQL {} is not supported: dbwarden needs 14 or later",
                server.version_num
            ),
        ));
    }
    let server_now_us: i64 = col(&r, 7, "now")?;
    let invalid_indexes: i64 = col(&r, 9, "invalid indexes")?;
    let archiver = Archiver {
        archive_mode: col(&r, 10, "archive_mode")?,
        archived_count: col(&r, 11, "archived_count")?,
        failed_count: col(&r, 12, "failed_count")?,
        last_archived_age_seconds: col(&r, 13, "last_archived_time")?,
        failing: col(&r, 14, "last_failed_time")?,
    };
    let recovery = if server.in_recovery {
        let receiver_status: Option<String> = col(&r, 15, "pg_stat_wal_receiver.status")?;
        let caught_up: Option<bool> = col(&r, 17, "caught up")?;
        let replay_age: Option<f64> = col(&r, 18, "pg_last_xact_replay_timestamp")?;
        let streaming = receiver_status.as_deref() == Some("streaming");
        Some(RecoveryStatus {
            replay_delay_seconds: replay_delay(streaming, caught_up.unwrap_or(false), replay_age),
            receiver_status,
            replay_paused: col::<Option<bool>>(&r, 16, "pg_is_wal_replay_paused")?.unwrap_or(false),
            replay_pending_bytes: col(&r, 19, "replay pending bytes")?,
            receive_lsn: lsn(col(&r, 29, "pg_last_wal_receive_lsn")?),
            replay_lsn: lsn(col(&r, 30, "pg_last_wal_replay_lsn")?),
        })
    } else {
        None
    };
    let names: Vec<String> = col(&r, 20, "slot_name")?;
    let types: Vec<String> = col(&r, 21, "slot_type")?;
    let active: Vec<bool> = col(&r, 22, "active")?;
    let retained: Vec<Option<f64>> = col(&r, 23, "retained bytes")?;
    let wal_status: Vec<Option<String>> = col(&r, 25, "wal_status")?;
    let safe_wal: Vec<Option<i64>> = col(&r, 26, "safe_wal_size")?;
    let slots = names
        .into_iter()
        .zip(types)
        .zip(active)
        .zip(retained)
        .zip(wal_status.into_iter().zip(safe_wal))
        .map(
            |((((name, slot_type), active), retained_bytes), (wal_status, safe_wal_bytes))| {
                ReplicationSlot {
                    name,
                    slot_type,
                    active,
                    retained_bytes,
                    wal_status,
                    safe_wal_bytes,
                }
            },
        )
        .collect();

    let self_pid: i32 = col(&r, 24, "pg_backend_pid")?;

    let mut sessions = read_sessions(&mut tx, self_pid, sessions_hint).await?;

    // pg_locks is read only when someone waits on a lock: one scan, then matched by pid.
    if sessions.iter().any(|s| s.waits_on_lock()) {
        let waits = unprepared(LOCK_WAITS_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(PollError::from_sqlx)?;
        let mut by_pid = std::collections::HashMap::with_capacity(waits.len());
        for w in &waits {
            by_pid.insert(
                col::<i32>(w, 0, "pid")?,
                col::<Option<i64>>(w, 1, "waitstart")?,
            );
        }
        for s in sessions.iter_mut().filter(|s| s.waits_on_lock()) {
            s.lock_wait_start_us = by_pid.get(&s.pid).copied().flatten();
        }
    }

    // pg_stat_replication scans every backend: skip it when no walsender runs.
    let standbys = if sessions.iter().any(|s| &*s.backend_type == "walsender") {
        let rows = unprepared(STANDBYS_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(PollError::from_sqlx)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(Standby {
                name: col(r, 0, "application_name")?,
                client_addr: col(r, 1, "client_addr")?,
                state: col(r, 2, "state")?,
                sync_state: col(r, 3, "sync_state")?,
                write_lag_seconds: col(r, 4, "write_lag")?,
                flush_lag_seconds: col(r, 5, "flush_lag")?,
                replay_lag_seconds: col(r, 6, "replay_lag")?,
                replay_lag_bytes: col(r, 7, "replay lag bytes")?,
            });
        }
        out
    } else {
        Vec::new()
    };

    let rows = unprepared(DATABASES_SQL)
        .fetch_all(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;
    let mut databases = Vec::with_capacity(rows.len());
    for r in &rows {
        databases.push(DatabaseStats {
            name: col(r, 0, "datname")?,
            checksum_failures: col(r, 1, "checksum_failures")?,
            deadlocks: col(r, 2, "deadlocks")?,
            xid_age: col(r, 3, "age(datfrozenxid)")?,
            size_bytes: None,
        });
    }

    let sizes = if with_sizes {
        let rows = unprepared(SIZES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(PollError::from_sqlx)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((col(r, 0, "datname")?, col(r, 1, "pg_database_size")?));
        }
        Some(out)
    } else {
        None
    };

    let statistics = match statistics {
        Some(plan) => {
            Some(super::statistics::read(&mut tx, server.version_num, server_now_us, plan).await?)
        }
        None => None,
    };

    tx.rollback().await.map_err(PollError::from_sqlx)?;

    Ok((
        PgSnapshot {
            server_now_us,
            server,
            sessions,
            standbys,
            slots,
            recovery,
            databases,
            archiver,
            invalid_indexes,
            disks: Vec::new(),
            statistics,
        },
        sizes,
    ))
}

/// Reads [`SESSIONS_SQL`] over `conn` (inside the poll's transaction).
async fn read_sessions(
    conn: &mut PgConnection,
    self_pid: i32,
    sessions_hint: usize,
) -> Result<Vec<Session>, PollError> {
    // Rows are decoded as they arrive, straight into a Vec sized from the
    // previous poll (the mapper returns `()`, so sqlx collects nothing).
    let mut sessions: Vec<Session> = Vec::with_capacity(sessions_hint + sessions_hint / 16 + 8);
    let mut columns_checked = false;
    unprepared(SESSIONS_SQL)
        .bind(QUERY_TEXT_MAX_CHARS)
        .try_map(|row: PgRow| {
            if !columns_checked {
                check_columns(&row, &SESSION_COLUMNS).map_err(to_sqlx)?;
                columns_checked = true;
            }
            sessions.push(session_from_row(&row, self_pid).map_err(to_sqlx)?);
            Ok(())
        })
        .fetch_all(&mut *conn)
        .await
        .map_err(poll_error)?;
    // A snapshot lives for a poll interval (two while the next replaces it):
    // it keeps no room (one copy of the list per poll, cheaper than the
    // room kept by a thousand targets).
    sessions.shrink_to_fit();

    Ok(sessions)
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// The type a column of a hot statement must have.
#[derive(Debug, Clone, Copy)]
enum ColumnType {
    Int4,
    Text,
    Bool,
    Int4Array,
    /// Sent in binary: microseconds since 2000-01-01 UTC, big-endian.
    Timestamptz,
}

impl ColumnType {
    fn accepts(self, ty: &PgTypeInfo) -> bool {
        use sqlx::Type;
        match self {
            ColumnType::Int4 => <i32 as Type<Postgres>>::compatible(ty),
            ColumnType::Text => <String as Type<Postgres>>::compatible(ty),
            ColumnType::Bool => <bool as Type<Postgres>>::compatible(ty),
            ColumnType::Int4Array => <Vec<i32> as Type<Postgres>>::compatible(ty),
            ColumnType::Timestamptz => ty.oid() == Some(TIMESTAMPTZ_OID),
        }
    }
}

/// `pg_type.oid` of `timestamptz`, fixed in PostgreSQL's catalog.
const TIMESTAMPTZ_OID: Oid = Oid(1184);

/// Checks the shape of a result once, on its first row: the number of
/// columns, each column's type, and the binary format the timestamps are
/// decoded from. Rows are then decoded without per-value type checks.
fn check_columns(row: &PgRow, expected: &[(&str, ColumnType)]) -> Result<(), PollError> {
    let columns = row.columns();
    if columns.len() != expected.len() {
        return Err(PollError::new(
            PollErrorKind::Decode,
            format!(
                "unexpected result: {} columns, expected {}",
                columns.len(),
                expected.len()
            ),
        ));
    }
    for (i, (c, (name, ty))) in columns.iter().zip(expected).enumerate() {
        let binary = || {
            row.try_get_raw(i)
                .is_ok_and(|v| v.format() == PgValueFormat::Binary)
        };
        if !ty.accepts(c.type_info()) || (matches!(ty, ColumnType::Timestamptz) && !binary()) {
            return Err(PollError::new(
                PollErrorKind::Decode,
                format!(
                    "unexpected value in column {name:?}: SQL type {} is not {ty:?}",
                    c.type_info().name()
                ),
            ));
        }
    }
    Ok(())
}

/// One row of [`SESSIONS_SQL`], whose columns [`check_columns`] has checked.
fn session_from_row(r: &PgRow, self_pid: i32) -> Result<Session, PollError> {
    let pid: i32 = get(r, 0)?;
    // Every text is read in place and shared (`intern`): no allocation for
    // a text some snapshot already holds.
    let text = |i| -> Result<Option<Arc<str>>, PollError> {
        Ok(get::<Option<&str>>(r, i)?.map(intern::intern))
    };
    let or_empty = |t: Option<Arc<str>>| t.unwrap_or_else(intern::empty);
    Ok(Session {
        pid,
        backend_type: or_empty(text(1)?),
        state: SessionState::parse(get::<Option<&str>>(r, 2)?),
        user: text(3)?,
        database: text(4)?,
        application_name: or_empty(text(5)?),
        client_addr: text(6)?,
        backend_start_us: timestamp_us(r, 7)?,
        xact_start_us: timestamp_us(r, 8)?,
        query_start_us: timestamp_us(r, 9)?,
        state_change_us: timestamp_us(r, 10)?,
        wait_event_type: text(11)?,
        blocked_by: get::<Option<Vec<i32>>>(r, 12)?.unwrap_or_default(),
        lock_wait_start_us: None,
        query: or_empty(text(13)?),
        is_superuser: get::<Option<bool>>(r, 14)?.unwrap_or(false),
        is_replication_role: get::<Option<bool>>(r, 15)?.unwrap_or(false),
        is_self: pid == self_pid,
    })
}

/// Column `index` of a row whose column types were checked by [`check_columns`].
fn get<'r, T>(row: &'r PgRow, index: usize) -> Result<T, PollError>
where
    T: sqlx::Decode<'r, Postgres>,
{
    row.try_get_unchecked(index)
        .map_err(|e| decode_error(SESSION_COLUMNS[index].0, e))
}

/// A `timestamptz` column in binary format, as microseconds since the Unix
/// epoch: what `(extract(epoch FROM ts) * 1000000)::int8` returns on the
/// server, including its refusal of infinite timestamps.
fn timestamp_us(row: &PgRow, index: usize) -> Result<Option<i64>, PollError> {
    let name = SESSION_COLUMNS[index].0;
    let value = row.try_get_raw(index).map_err(|e| decode_error(name, e))?;
    if value.is_null() {
        return Ok(None);
    }
    let bytes: [u8; 8] = value
        .as_bytes()
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| decode_error(name, "not an 8-byte binary timestamp"))?;
    match i64::from_be_bytes(bytes) {
        i64::MIN | i64::MAX => Err(decode_error(name, "infinite timestamp")),
        t => t
            .checked_add(PG_EPOCH_UNIX_US)
            .map(Some)
            .ok_or_else(|| decode_error(name, "timestamp out of range")),
    }
}

fn decode_error(name: &str, e: impl std::fmt::Display) -> PollError {
    PollError::new(
        PollErrorKind::Decode,
        format!("unexpected value in column {name:?}: {e}"),
    )
}

/// Back from the `sqlx::Error` a row mapper had to return: our own decode
/// errors come back as they were made.
fn poll_error(e: sqlx::Error) -> PollError {
    match e {
        sqlx::Error::Decode(inner) => match inner.downcast::<PollError>() {
            Ok(ours) => *ours,
            Err(other) => PollError::from_sqlx(sqlx::Error::Decode(other)),
        },
        e => PollError::from_sqlx(e),
    }
}

/// A decode error of ours, carried through sqlx's row mapper; see [`poll_error`].
fn to_sqlx(e: PollError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

/// The standby's delay: 0 when the receiver streams and everything received
/// is replayed; otherwise the age of the last replayed transaction, so that a
/// broken WAL receiver or paused replay cannot read as "no lag".
pub fn replay_delay(streaming: bool, caught_up: bool, last_replay_age: Option<f64>) -> Option<f64> {
    if streaming && caught_up {
        Some(0.0)
    } else {
        last_replay_age.map(|a| a.max(0.0))
    }
}

/// Reads column `index`, naming it in the error when the server's answer
/// has an unexpected type or shape.
fn col<'r, T>(row: &'r PgRow, index: usize, name: &str) -> Result<T, PollError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| {
        PollError::new(
            PollErrorKind::Decode,
            format!("unexpected value in column {name:?}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement and decoding before the poll read `pg_stat_get_activity`
    /// directly (timestamps converted on the server, every value type-checked
    /// by sqlx): the reference the fast path must agree with.
    const REFERENCE_SESSIONS_SQL: &str = "SELECT a.pid,
            coalesce(a.backend_type, ''),
            a.state,
            a.usename::text,
            a.datname::text,
            coalesce(a.application_name, ''),
            host(a.client_addr),
            (extract(epoch FROM a.backend_start) * 1000000)::int8,
            (extract(epoch FROM a.xact_start) * 1000000)::int8,
            (extract(epoch FROM a.query_start) * 1000000)::int8,
            (extract(epoch FROM a.state_change) * 1000000)::int8,
            a.wait_event_type,
            CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END,
            left(a.query, $1),
            coalesce(r.rolsuper, false),
            coalesce(r.rolreplication, false),
            a.pid = pg_backend_pid()
     FROM pg_stat_activity a
     LEFT JOIN pg_roles r ON r.oid = a.usesysid";

    async fn reference_sessions(conn: &mut PgConnection) -> Vec<Session> {
        let rows = sqlx::query(REFERENCE_SESSIONS_SQL)
            .bind(QUERY_TEXT_MAX_CHARS)
            .fetch_all(conn)
            .await
            .expect("reference sessions");
        rows.iter()
            .map(|r| Session {
                pid: r.get(0),
                backend_type: r.get(1),
                state: SessionState::parse(r.get::<Option<&str>, _>(2)),
                user: r.get(3),
                database: r.get(4),
                application_name: r.get(5),
                client_addr: r.get(6),
                backend_start_us: r.get(7),
                xact_start_us: r.get(8),
                query_start_us: r.get(9),
                state_change_us: r.get(10),
                wait_event_type: r.get(11),
                blocked_by: r.get::<Option<Vec<i32>>, _>(12).unwrap_or_default(),
                lock_wait_start_us: None,
                query: r.get::<Option<String>, _>(13).unwrap_or_default().into(),
                is_superuser: r.get(14),
                is_replication_role: r.get(15),
                is_self: r.get(16),
            })
            .collect()
    }

    /// A poll keeps no statement prepared on its connection (each would
    /// hold its text and column descriptions there for as long as the
    /// connection lives): after whole reads, sizes and statistics too, the
    /// connection's statement cache is empty.
    #[tokio::test]
    async fn a_poll_leaves_no_statement_prepared_on_its_connection() {
        let mut conn = PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("the local PostgreSQL at 127.0.0.1:5432");
        let plan = super::super::statistics::Plan {
            statements_top: Some(5),
            known: None,
        };
        for _ in 0..2 {
            let (snapshot, sizes) = read_snapshot(&mut conn, true, 0, Some(plan.clone()))
                .await
                .expect("a whole read");
            assert!(snapshot.sessions.iter().any(|s| s.is_self));
            assert!(snapshot.statistics.is_some());
            assert!(sizes.is_some_and(|s| s.iter().any(|(db, _)| db == "postgres")));
            assert_eq!(conn.cached_statements_size(), 0);
        }
    }

    /// On a real server holding every kind of session the checks and
    /// policies look at (idle with an application name, idle in transaction
    /// holding a lock, waiting on that lock, active, background workers),
    /// the fast sessions read returns exactly what the reference returns in
    /// the same transaction (where `pg_stat_activity` holds still).
    #[tokio::test]
    async fn sessions_match_the_reference_statement() {
        use crate::scratch::{ClusterOptions, ScratchCluster};
        use std::time::{Duration, Instant};

        let pg = ScratchCluster::start_primary(ClusterOptions::default()).expect("scratch cluster");
        let url = pg.url("postgres");
        let connect = async || PgConnection::connect(&url).await.expect("connect");
        let run = async |c: &mut PgConnection, sql: &str| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(c)
                .await
                .expect(sql);
        };

        let mut setup = connect().await;
        run(
            &mut setup,
            "CREATE TABLE t (x int); CREATE ROLE plain LOGIN",
        )
        .await;
        let mut idle = connect().await;
        // Longer than track_activity_query_size, and multibyte: the server clips it.
        let long = format!(
            "SET application_name = 'oracle idle'; SELECT '{}'",
            "é".repeat(600)
        );
        run(&mut idle, &long).await;
        let mut holder = connect().await;
        run(&mut holder, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await;
        let mut waiter = connect().await;
        let waiting = tokio::spawn(async move {
            let _ = sqlx::raw_sql("SELECT * FROM t").execute(&mut waiter).await;
        });
        let plain_url = pg.url("postgres").replace("postgres@", "plain@");
        let mut sleeper = PgConnection::connect(&plain_url)
            .await
            .expect("connect as plain");
        let sleeping = tokio::spawn(async move {
            let _ = sqlx::raw_sql("SELECT pg_sleep(60)")
                .execute(&mut sleeper)
                .await;
        });

        let mut conn = connect().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (lock_waiters, sleepers): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
                        count(*) FILTER (WHERE query = 'SELECT pg_sleep(60)' AND state = 'active')
                 FROM pg_stat_activity",
            )
            .fetch_one(&mut conn)
            .await
            .expect("count sessions");
            if lock_waiters == 1 && sleepers == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "sessions did not show up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut tx = conn.begin_with("BEGIN READ ONLY").await.expect("begin");
        let self_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .expect("pid");
        let fast = read_sessions(&mut tx, self_pid, 0)
            .await
            .expect("fast sessions");
        let reference = reference_sessions(&mut tx).await;
        tx.rollback().await.expect("rollback");
        assert_eq!(fast, reference);

        // The cases above are really there.
        assert!(fast.iter().any(|s| s.is_self));
        assert!(fast.iter().any(|s| !s.blocked_by.is_empty()));
        assert!(
            fast.iter()
                .any(|s| s.state == SessionState::IdleInTransaction)
        );
        assert!(fast.iter().any(|s| &*s.application_name == "oracle idle"
            && s.query.starts_with("SET application_name")
            && s.query.ends_with('é')
            && s.client_addr.as_deref() == Some("127.0.0.1")));
        assert!(
            fast.iter()
                .any(|s| s.user.as_deref() == Some("plain") && !s.is_superuser)
        );
        assert!(
            fast.iter()
                .any(|s| s.user.is_none() && &*s.backend_type != "client backend")
        );
        assert!(fast.iter().all(|s| s.backend_start_us.is_some()));

        waiting.abort();
        sleeping.abort();
    }

    #[test]
    fn idle_primary_is_not_lag() {
        assert_eq!(replay_delay(true, true, Some(3600.0)), Some(0.0));
    }

    #[test]
    fn broken_receiver_does_not_hide_lag() {
        assert_eq!(replay_delay(false, true, Some(3600.0)), Some(3600.0));
        assert_eq!(replay_delay(true, false, Some(12.5)), Some(12.5));
        assert_eq!(replay_delay(false, true, None), None);
    }
}
