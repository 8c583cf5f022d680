//! Reads one [`PgSnapshot`] from a PostgreSQL server.
//!
//! Every statement of a poll runs in one read-only transaction, so the
//! statistics views hold still (`stats_fetch_consistency = snapshot` on 15+).
//! Sessions carry `application_name = dbwarden`, a `statement_timeout`, a
//! `lock_timeout` and an `idle_in_transaction_session_timeout` set at connect
//! time (see `config::validate`), so a poll can never queue behind a lock for
//! long nor leave a transaction open.

use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};

use super::snapshot::*;
use super::{PollError, PollErrorKind};

/// The newest WAL position this server knows: on a (cascading) standby
/// `pg_current_wal_lsn()` errors, so measure against what it received.
macro_rules! current_lsn {
    () => {
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"
    };
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
            sl.names, sl.types, sl.active, sl.retained
     FROM pg_stat_archiver ar,
          (SELECT coalesce(array_agg(slot_name::text ORDER BY slot_name), '{}') AS names,
                  coalesce(array_agg(slot_type ORDER BY slot_name), '{}') AS types,
                  coalesce(array_agg(active ORDER BY slot_name), '{}') AS active,
                  coalesce(array_agg(pg_wal_lsn_diff(",
    current_lsn!(),
    ", restart_lsn)::float8 ORDER BY slot_name), '{}') AS retained
           FROM pg_replication_slots) sl"
);

/// Every backend: the heaviest statement of a poll, so it reads only what
/// checks and policies use, and decodes by position.
const SESSIONS_SQL: &str = "SELECT a.pid,
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

/// Reads a snapshot over `conn`, in one read-only transaction and as few
/// round trips as the answers allow (typically five: BEGIN, server,
/// sessions, databases, ROLLBACK; standbys and lock waits only when the
/// sessions show walsenders or lock waiters). `with_sizes` also reads
/// database sizes, which can be slow on clusters with many databases.
pub async fn read_snapshot(
    conn: &mut PgConnection,
    with_sizes: bool,
) -> Result<(PgSnapshot, Option<DatabaseSizes>), PollError> {
    let mut tx = conn
        .begin_with("BEGIN READ ONLY")
        .await
        .map_err(PollError::from_sqlx)?;

    let r = sqlx::query(SERVER_SQL)
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
        })
    } else {
        None
    };
    let names: Vec<String> = col(&r, 20, "slot_name")?;
    let types: Vec<String> = col(&r, 21, "slot_type")?;
    let active: Vec<bool> = col(&r, 22, "active")?;
    let retained: Vec<Option<f64>> = col(&r, 23, "retained bytes")?;
    let slots = names
        .into_iter()
        .zip(types)
        .zip(active)
        .zip(retained)
        .map(
            |(((name, slot_type), active), retained_bytes)| ReplicationSlot {
                name,
                slot_type,
                active,
                retained_bytes,
            },
        )
        .collect();

    let rows = sqlx::query(SESSIONS_SQL)
        .bind(QUERY_TEXT_MAX_CHARS)
        .fetch_all(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;
    let mut sessions = Vec::with_capacity(rows.len());
    for r in &rows {
        sessions.push(Session {
            pid: col(r, 0, "pid")?,
            backend_type: col(r, 1, "backend_type")?,
            state: SessionState::parse(col::<Option<&str>>(r, 2, "state")?),
            user: col(r, 3, "usename")?,
            database: col(r, 4, "datname")?,
            application_name: col(r, 5, "application_name")?,
            client_addr: col(r, 6, "client_addr")?,
            backend_start_us: col(r, 7, "backend_start")?,
            xact_start_us: col(r, 8, "xact_start")?,
            query_start_us: col(r, 9, "query_start")?,
            state_change_us: col(r, 10, "state_change")?,
            wait_event_type: col(r, 11, "wait_event_type")?,
            blocked_by: col::<Option<Vec<i32>>>(r, 12, "pg_blocking_pids")?.unwrap_or_default(),
            lock_wait_start_us: None,
            query: col::<Option<String>>(r, 13, "query")?.unwrap_or_default(),
            is_superuser: col(r, 14, "rolsuper")?,
            is_replication_role: col(r, 15, "rolreplication")?,
            is_self: col(r, 16, "is_self")?,
        });
    }
    drop(rows);

    // pg_locks is read only when someone waits on a lock: one scan, then matched by pid.
    if sessions.iter().any(|s| s.waits_on_lock()) {
        let waits = sqlx::query(LOCK_WAITS_SQL)
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
    let standbys = if sessions.iter().any(|s| s.backend_type == "walsender") {
        let rows = sqlx::query(STANDBYS_SQL)
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

    let rows = sqlx::query(DATABASES_SQL)
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
        let rows = sqlx::query(SIZES_SQL)
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
        },
        sizes,
    ))
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
    use super::replay_delay;

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
