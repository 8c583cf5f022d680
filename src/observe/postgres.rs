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

/// Reads a snapshot over `conn`. `with_sizes` also reads database sizes,
/// which can be slow on clusters with many databases.
pub async fn read_snapshot(
    conn: &mut PgConnection,
    with_sizes: bool,
) -> Result<(PgSnapshot, Option<DatabaseSizes>), PollError> {
    let mut tx = conn.begin().await.map_err(PollError::from_sqlx)?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;

    let row = sqlx::query(
        "SELECT current_setting('server_version_num')::int4 AS version_num,
                version() AS version,
                current_setting('max_connections')::int4 AS max_connections,
                current_setting('superuser_reserved_connections')::int4 AS reserved,
                pg_is_in_recovery() AS in_recovery,
                current_setting('data_checksums') = 'on' AS data_checksums,
                current_database()::text AS database,
                (extract(epoch FROM now()) * 1000000)::int8 AS now_us",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?;
    let server = ServerInfo {
        version_num: get(&row, "version_num")?,
        version: get(&row, "version")?,
        max_connections: get(&row, "max_connections")?,
        superuser_reserved_connections: get(&row, "reserved")?,
        in_recovery: get(&row, "in_recovery")?,
        data_checksums: get(&row, "data_checksums")?,
        database: get(&row, "database")?,
    };
    let server_now_us: i64 = get(&row, "now_us")?;
    if server.version_num < 130000 {
        return Err(PollError::new(
            PollErrorKind::Unsupported,
            format!(
                "PostgreSQL {} is not supported: dbwarden needs 13 or later",
                server.version_num
            ),
        ));
    }
    if server.version_num >= 150000 {
        sqlx::query("SET LOCAL stats_fetch_consistency = snapshot")
            .execute(&mut *tx)
            .await
            .map_err(PollError::from_sqlx)?;
    }

    let sessions = sqlx::query(
        "SELECT a.pid,
                coalesce(a.backend_type, '') AS backend_type,
                a.state,
                a.usename::text AS usename,
                a.datname::text AS datname,
                coalesce(a.application_name, '') AS application_name,
                host(a.client_addr) AS client_addr,
                (extract(epoch FROM a.backend_start) * 1000000)::int8 AS backend_start_us,
                (extract(epoch FROM a.xact_start) * 1000000)::int8 AS xact_start_us,
                (extract(epoch FROM a.query_start) * 1000000)::int8 AS query_start_us,
                (extract(epoch FROM a.state_change) * 1000000)::int8 AS state_change_us,
                a.wait_event_type,
                CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocked_by,
                (extract(epoch FROM w.waitstart) * 1000000)::int8 AS lock_wait_start_us,
                left(a.query, $1) AS query,
                coalesce(r.rolsuper, false) AS rolsuper,
                coalesce(r.rolreplication, false) AS rolreplication,
                a.pid = pg_backend_pid() AS is_self
         FROM pg_stat_activity a
         LEFT JOIN pg_roles r ON r.oid = a.usesysid
         LEFT JOIN (SELECT pid, min(waitstart) AS waitstart FROM pg_locks WHERE NOT granted GROUP BY pid) w
                ON w.pid = a.pid",
    )
    .bind(QUERY_TEXT_MAX_CHARS)
    .fetch_all(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?
    .iter()
    .map(|r| {
        Ok(Session {
            pid: get(r, "pid")?,
            backend_type: get(r, "backend_type")?,
            state: SessionState::parse(get::<Option<String>>(r, "state")?.as_deref()),
            user: get(r, "usename")?,
            database: get(r, "datname")?,
            application_name: get(r, "application_name")?,
            client_addr: get(r, "client_addr")?,
            backend_start_us: get(r, "backend_start_us")?,
            xact_start_us: get(r, "xact_start_us")?,
            query_start_us: get(r, "query_start_us")?,
            state_change_us: get(r, "state_change_us")?,
            wait_event_type: get(r, "wait_event_type")?,
            blocked_by: get::<Option<Vec<i32>>>(r, "blocked_by")?.unwrap_or_default(),
            lock_wait_start_us: get(r, "lock_wait_start_us")?,
            query: get::<Option<String>>(r, "query")?.unwrap_or_default(),
            is_superuser: get(r, "rolsuper")?,
            is_replication_role: get(r, "rolreplication")?,
            is_self: get(r, "is_self")?,
        })
    })
    .collect::<Result<Vec<_>, PollError>>()?;

    let standbys = sqlx::query(concat!(
        "SELECT coalesce(application_name, '') AS name,
                host(client_addr) AS client_addr,
                coalesce(state, '') AS state,
                coalesce(sync_state, '') AS sync_state,
                extract(epoch FROM write_lag)::float8 AS write_lag,
                extract(epoch FROM flush_lag)::float8 AS flush_lag,
                extract(epoch FROM replay_lag)::float8 AS replay_lag,
                pg_wal_lsn_diff(",
        current_lsn!(),
        ", replay_lsn)::float8 AS lag_bytes
         FROM pg_stat_replication
         ORDER BY 1, pid"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?
    .iter()
    .map(|r| {
        Ok(Standby {
            name: get(r, "name")?,
            client_addr: get(r, "client_addr")?,
            state: get(r, "state")?,
            sync_state: get(r, "sync_state")?,
            write_lag_seconds: get(r, "write_lag")?,
            flush_lag_seconds: get(r, "flush_lag")?,
            replay_lag_seconds: get(r, "replay_lag")?,
            replay_lag_bytes: get(r, "lag_bytes")?,
        })
    })
    .collect::<Result<Vec<_>, PollError>>()?;

    let slots = sqlx::query(concat!(
        "SELECT slot_name::text AS name, slot_type, active,
                pg_wal_lsn_diff(",
        current_lsn!(),
        ", restart_lsn)::float8 AS retained
         FROM pg_replication_slots
         ORDER BY 1"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?
    .iter()
    .map(|r| {
        Ok(ReplicationSlot {
            name: get(r, "name")?,
            slot_type: get(r, "slot_type")?,
            active: get(r, "active")?,
            retained_bytes: get(r, "retained")?,
        })
    })
    .collect::<Result<Vec<_>, PollError>>()?;

    let recovery = if server.in_recovery {
        let r = sqlx::query(
            "SELECT (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver_status,
                    pg_is_wal_replay_paused() AS paused,
                    pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() AS caught_up,
                    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age,
                    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 AS pending",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;
        let receiver_status: Option<String> = get(&r, "receiver_status")?;
        let caught_up: bool = get(&r, "caught_up")?;
        let replay_age: Option<f64> = get(&r, "replay_age")?;
        let streaming = receiver_status.as_deref() == Some("streaming");
        Some(RecoveryStatus {
            replay_delay_seconds: replay_delay(streaming, caught_up, replay_age),
            receiver_status,
            replay_paused: get(&r, "paused")?,
            replay_pending_bytes: get(&r, "pending")?,
        })
    } else {
        None
    };

    let databases = sqlx::query(
        "SELECT d.datname::text AS name,
                s.checksum_failures,
                coalesce(s.deadlocks, 0) AS deadlocks,
                age(d.datfrozenxid)::int8 AS xid_age
         FROM pg_database d
         LEFT JOIN pg_stat_database s ON s.datid = d.oid
         ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?
    .iter()
    .map(|r| {
        Ok(DatabaseStats {
            name: get(r, "name")?,
            checksum_failures: get(r, "checksum_failures")?,
            deadlocks: get(r, "deadlocks")?,
            xid_age: get(r, "xid_age")?,
            size_bytes: None,
        })
    })
    .collect::<Result<Vec<_>, PollError>>()?;

    let r = sqlx::query(
        "SELECT current_setting('archive_mode') <> 'off' AS archive_mode,
                archived_count, failed_count,
                extract(epoch FROM now() - last_archived_time)::float8 AS last_archived_age,
                coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing
         FROM pg_stat_archiver",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(PollError::from_sqlx)?;
    let archiver = Archiver {
        archive_mode: get(&r, "archive_mode")?,
        archived_count: get(&r, "archived_count")?,
        failed_count: get(&r, "failed_count")?,
        last_archived_age_seconds: get(&r, "last_archived_age")?,
        failing: get(&r, "failing")?,
    };

    let invalid_indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            .fetch_one(&mut *tx)
            .await
            .map_err(PollError::from_sqlx)?;

    let sizes = if with_sizes {
        let rows = sqlx::query(
            "SELECT datname::text AS name, pg_database_size(oid) AS size
             FROM pg_database
             WHERE datallowconn AND has_database_privilege(oid, 'CONNECT')",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(PollError::from_sqlx)?;
        Some(
            rows.iter()
                .map(|r| Ok((get(r, "name")?, get(r, "size")?)))
                .collect::<Result<Vec<_>, PollError>>()?,
        )
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

/// Reads a column, naming it in the error when the server's answer has an
/// unexpected type or shape.
fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, PollError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(|e| {
        PollError::new(
            PollErrorKind::Decode,
            format!("unexpected value in column {column:?}: {e}"),
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
