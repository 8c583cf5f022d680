//! The built-in performance statistics: `pg_stat_database`'s counters,
//! WAL (`pg_stat_wal`), checkpoints and the background writer
//! (`pg_stat_checkpointer` on 17+, `pg_stat_bgwriter`), and, opt-in, the
//! top statements of `pg_stat_statements` by total time.
//!
//! They are read at the end of the poll's read-only transaction, on their
//! own cadence (`[postgres.<name>.statistics]`), by statements chosen by
//! the server's version as Neo4j's are by its version (unit-tested for
//! PostgreSQL 12 to 18; dbwarden polls 14 and later). On 15+ the poll reads
//! the cumulative statistics from the snapshot its `pg_stat_database` read
//! already took, so these cost little more.
//!
//! A statistics source never fails the poll: a view that is missing, a
//! privilege that is lacking, an extension that is not installed or not
//! preloaded, a timeout, is recorded as a [`StatisticsError`] (a bounded
//! source and reason) and the rest is read. A privilege check comes first
//! (one round trip), so that a refusal does not abort the transaction; the
//! observer keeps its answer and asks again after `database_sizes_interval`,
//! after any statistics error and on a new connection. Should a statement
//! fail anyway, the sources after it are `skipped`. Only a broken
//! connection fails the poll, as it would anyway.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::postgres::unprepared;

use super::snapshot::*;
use super::{PollError, PollErrorKind};
use crate::settings::{Context, Issues, duration, join, q};

/// The most statements `statements.top` may ask for: each is five series.
pub const MAX_STATEMENTS_TOP: u32 = 100;

/// `[postgres.<name>.statistics]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsSettings {
    /// Read the statistics at all. Unset: true.
    pub enabled: Option<bool>,
    /// How often. Unset: every poll. Never more often than the poll.
    #[serde(default, with = "duration::option")]
    pub interval: Option<Duration>,
    /// `pg_stat_statements`, opt-in: `[postgres.<name>.statistics.statements]`.
    pub statements: Option<StatementsSettings>,
}

/// `[postgres.<name>.statistics.statements]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementsSettings {
    /// The top N statements by total execution time (1 to 100).
    pub top: u32,
}

impl StatisticsSettings {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// How often the statistics are read (`poll_interval` when unset).
    pub fn interval(&self, poll_interval: Duration) -> Duration {
        self.interval.unwrap_or(poll_interval)
    }

    /// The number of top statements asked for, if any.
    pub fn statements_top(&self) -> Option<u32> {
        self.statements.as_ref().map(|s| s.top)
    }

    /// `path` is `postgres.<name>.statistics`.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        if let Some(i) = self.interval
            && !(Duration::from_millis(100)..=Duration::from_secs(24 * 3600)).contains(&i)
        {
            let at = join(path, "interval");
            let at = ctx.written_at(&at).unwrap_or(at);
            issues.push(
                at,
                format!("{} is out of range: \"100ms\" to \"1day\"", q(i)),
            );
        }
        if let Some(s) = &self.statements
            && !(1..=MAX_STATEMENTS_TOP).contains(&s.top)
        {
            let at = join(&join(path, "statements"), "top");
            let at = ctx.written_at(&at).unwrap_or(at);
            issues.push(
                at,
                format!(
                    "{} is out of range: 1 to {MAX_STATEMENTS_TOP} (remove the statements table to read none)",
                    s.top
                ),
            );
        }
    }
}

/// What one poll reads of the statistics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The top statements of `pg_stat_statements`, when asked for.
    pub statements_top: Option<u32>,
    /// What an earlier read found readable: when given, [`AVAILABILITY_SQL`]
    /// (the dearest of the statistics statements) is not asked again.
    pub known: Option<Availability>,
}

/// Which views dbwarden's role may read, and where `pg_stat_statements`
/// is installed: the answer of [`AVAILABILITY_SQL`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// `None`: the view does not exist; `Some(false)`: no SELECT privilege.
    pub database: Option<bool>,
    pub wal: Option<bool>,
    pub bgwriter: Option<bool>,
    pub checkpointer: Option<bool>,
    /// The extension's schema and version, when installed in the connected database.
    pub statements: Option<(String, String)>,
    /// May read `pg_stat_statements` (its function), when installed.
    pub statements_readable: bool,
}

/// One round trip that tells what the statistics statements may read.
pub const AVAILABILITY_SQL: &str = "SELECT has_table_privilege(to_regclass('pg_catalog.pg_stat_database'), 'SELECT'),
            has_table_privilege(to_regclass('pg_catalog.pg_stat_wal'), 'SELECT'),
            has_table_privilege(to_regclass('pg_catalog.pg_stat_bgwriter'), 'SELECT'),
            has_table_privilege(to_regclass('pg_catalog.pg_stat_checkpointer'), 'SELECT'),
            n.nspname::text,
            e.extversion,
            coalesce(has_function_privilege(to_regprocedure(quote_ident(n.nspname) || '.pg_stat_statements(boolean)'), 'EXECUTE'), false)
     FROM (SELECT 1) one
     LEFT JOIN pg_extension e ON e.extname = 'pg_stat_statements'
     LEFT JOIN pg_namespace n ON n.oid = e.extnamespace";

/// `pg_stat_database`'s counters, per database; the session columns on 14+.
pub fn database_sql(version_num: i32) -> String {
    let mut sql = String::from(
        "SELECT datname::text, xact_commit, xact_rollback, blks_read, blks_hit,
            temp_files, temp_bytes, conflicts",
    );
    if version_num >= 140000 {
        sql.push_str(
            ",
            sessions, session_time, active_time, idle_in_transaction_time,
            sessions_abandoned, sessions_fatal, sessions_killed",
        );
    }
    sql.push_str(
        "
     FROM pg_catalog.pg_stat_database
     WHERE datname IS NOT NULL
     ORDER BY 1",
    );
    sql
}

/// The cluster-wide views the server's version has: WAL (14+), checkpoints
/// from `pg_stat_checkpointer` (17+) or `pg_stat_bgwriter` (before), and
/// the background writer. Each column is named for [`read`] to find; a view
/// `readable` leaves out is not read. `None` when there is nothing to read.
pub fn cluster_sql(version_num: i32, readable: &Availability) -> Option<String> {
    let ok = |v: Option<bool>| v == Some(true);
    let mut columns: Vec<&str> = Vec::new();
    let mut from: Vec<&str> = Vec::new();
    if version_num >= 140000 && ok(readable.wal) {
        from.push("pg_catalog.pg_stat_wal w");
        columns.extend([
            "w.wal_records AS wal_records",
            "w.wal_fpi AS wal_fpi",
            "w.wal_bytes::float8 AS wal_bytes",
            "w.wal_buffers_full AS wal_buffers_full",
        ]);
        // 18 moved the write and sync counts to pg_stat_io.
        if version_num < 180000 {
            columns.extend(["w.wal_write AS wal_write", "w.wal_sync AS wal_sync"]);
        }
    }
    let bgwriter = ok(readable.bgwriter);
    if bgwriter {
        from.push("pg_catalog.pg_stat_bgwriter b");
        columns.extend([
            "b.buffers_clean AS buffers_clean",
            "b.maxwritten_clean AS maxwritten_clean",
            "b.buffers_alloc AS buffers_alloc",
        ]);
    }
    if version_num >= 170000 {
        if ok(readable.checkpointer) {
            from.push("pg_catalog.pg_stat_checkpointer c");
            columns.extend([
                "c.num_timed AS checkpoints_timed",
                "c.num_requested AS checkpoints_requested",
                "c.write_time AS checkpoint_write_time",
                "c.sync_time AS checkpoint_sync_time",
                "c.buffers_written AS checkpoint_buffers",
            ]);
        }
    } else if bgwriter {
        columns.extend([
            "b.checkpoints_timed AS checkpoints_timed",
            "b.checkpoints_req AS checkpoints_requested",
            "b.checkpoint_write_time AS checkpoint_write_time",
            "b.checkpoint_sync_time AS checkpoint_sync_time",
            "b.buffers_checkpoint AS checkpoint_buffers",
        ]);
    }
    if from.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT {}\n     FROM {}",
        columns.join(",\n            "),
        from.join(", ")
    ))
}

/// The column of total execution time: `total_exec_time` since the
/// extension's 1.8 (PostgreSQL 13), `total_time` before. A server upgraded
/// with `pg_upgrade` keeps its older extension until `ALTER EXTENSION ...
/// UPDATE`, so this goes by the extension's version, not the server's.
pub fn statements_time_column(extversion: &str) -> &'static str {
    let mut parts = extversion.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) >= (1, 8) {
        "total_exec_time"
    } else {
        "total_time"
    }
}

/// The top `$1` statements by total execution time, summed per `queryid`
/// (over users, databases and nesting levels: `queryid` is the only label),
/// read through `pg_stat_statements(false)`, which leaves the query texts
/// where they are (the view reads them all from disk).
pub fn statements_sql(schema: &str, extversion: &str) -> String {
    let time = statements_time_column(extversion);
    format!(
        "SELECT queryid, sum(calls)::int8, sum({time})::float8, sum(rows)::int8,
            sum(shared_blks_hit)::int8, sum(shared_blks_read)::int8
     FROM {}.pg_stat_statements(false)
     WHERE queryid IS NOT NULL
     GROUP BY queryid
     ORDER BY 3 DESC, 1
     LIMIT $1",
        quote_ident(schema)
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A refused statistics statement: its bounded reason, or `Err` when the
/// poll itself must fail (the connection broke, or the poll's own timeout).
fn classify(e: sqlx::Error) -> Result<(StatisticsErrorReason, String), PollError> {
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let reason = match code.as_deref() {
        Some("57014") => StatisticsErrorReason::Timeout,
        Some("42501") => StatisticsErrorReason::Permission,
        Some("42P01") | Some("42703") | Some("42883") => StatisticsErrorReason::Missing,
        // pg_stat_statements "must be loaded via shared_preload_libraries".
        Some("55000") => StatisticsErrorReason::NotLoaded,
        Some(_) => StatisticsErrorReason::Query,
        None => {
            let p = PollError::from_sqlx(e);
            return match p.kind {
                PollErrorKind::Decode => Ok((StatisticsErrorReason::Query, p.message)),
                _ => Err(p),
            };
        }
    };
    Ok((reason, e.to_string()))
}

fn col<'r, T>(row: &'r PgRow, index: &str) -> Result<T, sqlx::Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index)
}

/// Reads the statistics over `conn`, inside the poll's read-only
/// transaction. `statements_top`: the top statements asked for. Fails only
/// when the poll must (see [`classify`]).
pub async fn read(
    conn: &mut PgConnection,
    version_num: i32,
    server_now_us: i64,
    plan: Plan,
) -> Result<Statistics, PollError> {
    let statements_top = plan.statements_top;
    let mut stats = Statistics {
        read_at_us: server_now_us,
        ..Statistics::default()
    };
    // Once a statement failed, the transaction is aborted: every later
    // source is skipped.
    let mut failed = false;
    let skipped = |source| StatisticsError {
        source,
        reason: StatisticsErrorReason::Skipped,
        message: "not read: an earlier statistics statement failed".to_string(),
    };
    let refused =
        |sources: &[StatisticsSource], e: sqlx::Error| -> Result<Vec<StatisticsError>, PollError> {
            let (reason, message) = classify(e)?;
            Ok(sources
                .iter()
                .map(|&source| StatisticsError {
                    source,
                    reason,
                    message: message.clone(),
                })
                .collect())
        };

    let answer = match plan.known {
        Some(known) => Ok(known),
        None => match unprepared(AVAILABILITY_SQL).fetch_one(&mut *conn).await {
            Ok(r) => Ok(availability(&r).map_err(PollError::from_sqlx)?),
            Err(e) => Err(e),
        },
    };
    let avail = match answer {
        Ok(a) => a,
        Err(e) => {
            let sources: Vec<StatisticsSource> = StatisticsSource::ALL
                .into_iter()
                .filter(|s| *s != StatisticsSource::Statements || statements_top.is_some())
                .collect();
            stats.errors = refused(&sources, e)?;
            return Ok(stats);
        }
    };
    let unreadable = |exists: Option<bool>, view: &str| match exists {
        None => (
            StatisticsErrorReason::Missing,
            format!("{view} does not exist on this server"),
        ),
        _ => (
            StatisticsErrorReason::Permission,
            format!(
                "dbwarden's role may not read {view}: grant it pg_monitor (or pg_read_all_stats)"
            ),
        ),
    };
    let mut expect = |source: StatisticsSource, exists: Option<bool>, view: &str| {
        if exists != Some(true) {
            let (reason, message) = unreadable(exists, view);
            stats.errors.push(StatisticsError {
                source,
                reason,
                message,
            });
        }
    };
    expect(
        StatisticsSource::Database,
        avail.database,
        "pg_stat_database",
    );
    if version_num >= 140000 {
        expect(StatisticsSource::Wal, avail.wal, "pg_stat_wal");
    }
    expect(
        StatisticsSource::Bgwriter,
        avail.bgwriter,
        "pg_stat_bgwriter",
    );
    if version_num >= 170000 {
        expect(
            StatisticsSource::Checkpointer,
            avail.checkpointer,
            "pg_stat_checkpointer",
        );
    } else if avail.bgwriter != Some(true) {
        expect(
            StatisticsSource::Checkpointer,
            avail.bgwriter,
            "pg_stat_bgwriter",
        );
    }

    if avail.database == Some(true) {
        match unprepared(sqlx::AssertSqlSafe(database_sql(version_num)))
            .fetch_all(&mut *conn)
            .await
            .and_then(|rows| rows.iter().map(|r| database_row(r, version_num)).collect())
        {
            Ok(dbs) => stats.databases = dbs,
            Err(e) => {
                failed = true;
                stats
                    .errors
                    .extend(refused(&[StatisticsSource::Database], e)?);
            }
        }
    }

    if let Some(sql) = cluster_sql(version_num, &avail) {
        let sources: Vec<StatisticsSource> = [
            (version_num >= 140000 && avail.wal == Some(true)).then_some(StatisticsSource::Wal),
            (avail.bgwriter == Some(true)).then_some(StatisticsSource::Bgwriter),
            (if version_num >= 170000 {
                avail.checkpointer
            } else {
                avail.bgwriter
            } == Some(true))
            .then_some(StatisticsSource::Checkpointer),
        ]
        .into_iter()
        .flatten()
        .collect();
        if failed {
            stats.errors.extend(sources.iter().map(|s| skipped(*s)));
        } else if let Err(e) = unprepared(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| cluster_row(&r, &mut stats, &sources))
        {
            failed = true;
            stats.errors.extend(refused(&sources, e)?);
        }
    }

    stats.availability = Some(avail.clone());
    if let Some(top) = statements_top {
        let source = StatisticsSource::Statements;
        match (&avail.statements, avail.statements_readable) {
            (None, _) => stats.errors.push(StatisticsError {
                source,
                reason: StatisticsErrorReason::NotInstalled,
                message: "pg_stat_statements is not installed in the connected database: CREATE EXTENSION pg_stat_statements (and add it to shared_preload_libraries)".into(),
            }),
            (Some(_), false) => stats.errors.push(StatisticsError {
                source,
                reason: StatisticsErrorReason::Permission,
                message: "dbwarden's role may not execute pg_stat_statements()".into(),
            }),
            (Some(_), true) if failed => stats.errors.push(skipped(source)),
            (Some((schema, version)), true) => {
                match unprepared(sqlx::AssertSqlSafe(statements_sql(schema, version)))
                    .bind(i64::from(top))
                    .fetch_all(&mut *conn)
                    .await
                    .and_then(|rows| rows.iter().map(statement_row).collect())
                {
                    Ok(top) => stats.statements = Some(top),
                    Err(e) => stats.errors.extend(refused(&[source], e)?),
                }
            }
        }
    }
    Ok(stats)
}

fn availability(r: &PgRow) -> Result<Availability, sqlx::Error> {
    let schema: Option<String> = r.try_get(4)?;
    let version: Option<String> = r.try_get(5)?;
    Ok(Availability {
        database: r.try_get(0)?,
        wal: r.try_get(1)?,
        bgwriter: r.try_get(2)?,
        checkpointer: r.try_get(3)?,
        statements: schema.zip(version),
        statements_readable: r.try_get(6)?,
    })
}

fn database_row(r: &PgRow, version_num: i32) -> Result<DatabaseActivity, sqlx::Error> {
    let n = |i: &str| -> Result<i64, sqlx::Error> { Ok(col::<Option<i64>>(r, i)?.unwrap_or(0)) };
    let ms = |i: &str| -> Result<f64, sqlx::Error> { Ok(col::<Option<f64>>(r, i)?.unwrap_or(0.0)) };
    Ok(DatabaseActivity {
        name: col(r, "datname")?,
        xact_commit: n("xact_commit")?,
        xact_rollback: n("xact_rollback")?,
        blks_read: n("blks_read")?,
        blks_hit: n("blks_hit")?,
        temp_files: n("temp_files")?,
        temp_bytes: n("temp_bytes")?,
        conflicts: n("conflicts")?,
        sessions: if version_num >= 140000 {
            Some(SessionTotals {
                sessions: n("sessions")?,
                session_time_ms: ms("session_time")?,
                active_time_ms: ms("active_time")?,
                idle_in_transaction_time_ms: ms("idle_in_transaction_time")?,
                abandoned: n("sessions_abandoned")?,
                fatal: n("sessions_fatal")?,
                killed: n("sessions_killed")?,
            })
        } else {
            None
        },
    })
}

fn cluster_row(
    r: &PgRow,
    stats: &mut Statistics,
    sources: &[StatisticsSource],
) -> Result<(), sqlx::Error> {
    let n = |i: &str| -> Result<i64, sqlx::Error> { Ok(col::<Option<i64>>(r, i)?.unwrap_or(0)) };
    let f = |i: &str| -> Result<f64, sqlx::Error> { Ok(col::<Option<f64>>(r, i)?.unwrap_or(0.0)) };
    let has = |name: &str| r.try_column(name).is_ok();
    if sources.contains(&StatisticsSource::Wal) {
        stats.wal = Some(WalStats {
            records: n("wal_records")?,
            fpi: n("wal_fpi")?,
            bytes: f("wal_bytes")?,
            buffers_full: n("wal_buffers_full")?,
            writes: if has("wal_write") {
                Some(n("wal_write")?)
            } else {
                None
            },
            syncs: if has("wal_sync") {
                Some(n("wal_sync")?)
            } else {
                None
            },
        });
    }
    if sources.contains(&StatisticsSource::Bgwriter) {
        stats.bgwriter = Some(BgwriterStats {
            buffers_clean: n("buffers_clean")?,
            maxwritten_clean: n("maxwritten_clean")?,
            buffers_alloc: n("buffers_alloc")?,
        });
    }
    if sources.contains(&StatisticsSource::Checkpointer) {
        stats.checkpoints = Some(CheckpointStats {
            timed: n("checkpoints_timed")?,
            requested: n("checkpoints_requested")?,
            write_time_ms: f("checkpoint_write_time")?,
            sync_time_ms: f("checkpoint_sync_time")?,
            buffers_written: n("checkpoint_buffers")?,
        });
    }
    Ok(())
}

fn statement_row(r: &PgRow) -> Result<StatementStats, sqlx::Error> {
    Ok(StatementStats {
        queryid: r.try_get(0)?,
        calls: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
        total_time_ms: r.try_get::<Option<f64>, _>(2)?.unwrap_or(0.0),
        rows: r.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
        shared_blks_hit: r.try_get::<Option<i64>, _>(4)?.unwrap_or(0),
        shared_blks_read: r.try_get::<Option<i64>, _>(5)?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_readable() -> Availability {
        Availability {
            database: Some(true),
            wal: Some(true),
            bgwriter: Some(true),
            checkpointer: Some(true),
            statements: Some(("public".into(), "1.10".into())),
            statements_readable: true,
        }
    }

    /// The columns each supported version has, as its release notes list
    /// them: PostgreSQL 12 and 13 (refused by the poll, which needs 14, but
    /// the choice is defined), 14 to 16, 17 (checkpoints move to
    /// `pg_stat_checkpointer`), 18 (WAL writes and syncs move to `pg_stat_io`).
    #[test]
    fn the_statements_are_chosen_by_server_version() {
        for major in 12..=18 {
            let v = major * 10000 + 2;
            let db = database_sql(v);
            assert!(
                db.contains("xact_commit") && db.contains("temp_bytes") && db.contains("conflicts"),
                "{major}: {db}"
            );
            assert_eq!(db.contains("sessions_killed"), major >= 14, "{major}: {db}");
            assert_eq!(db.contains("idle_in_transaction_time"), major >= 14);

            let cluster = cluster_sql(v, &all_readable()).expect("something to read");
            assert_eq!(
                cluster.contains("pg_stat_wal "),
                major >= 14,
                "{major}: {cluster}"
            );
            assert_eq!(cluster.contains("wal_bytes"), major >= 14);
            assert_eq!(
                cluster.contains("wal_write AS") && cluster.contains("wal_sync AS"),
                (14..18).contains(&major),
                "{major}: {cluster}"
            );
            assert_eq!(
                cluster.contains("pg_stat_checkpointer c"),
                major >= 17,
                "{major}: {cluster}"
            );
            assert_eq!(cluster.contains("b.checkpoints_timed"), major < 17);
            assert_eq!(cluster.contains("c.num_timed"), major >= 17);
            assert!(cluster.contains("b.buffers_alloc"), "{major}");
            // Every source names the same columns whichever view it reads.
            for alias in [
                "AS checkpoints_timed",
                "AS checkpoints_requested",
                "AS checkpoint_write_time",
                "AS checkpoint_sync_time",
                "AS checkpoint_buffers",
            ] {
                assert!(cluster.contains(alias), "{major}: {alias} in {cluster}");
            }
        }
    }

    #[test]
    fn a_view_that_cannot_be_read_is_left_out() {
        let mut a = all_readable();
        a.wal = Some(false);
        let sql = cluster_sql(150000, &a).unwrap();
        assert!(!sql.contains("pg_stat_wal"), "{sql}");
        assert!(sql.contains("b.checkpoints_timed"), "{sql}");
        // 17: without the checkpointer, checkpoints are not read from bgwriter.
        a.checkpointer = None;
        let sql = cluster_sql(170000, &a).unwrap();
        assert!(!sql.contains("checkpoints_timed"), "{sql}");
        a.bgwriter = Some(false);
        assert_eq!(cluster_sql(170000, &a), None);
    }

    #[test]
    fn statements_time_column_follows_the_extension_version() {
        assert_eq!(statements_time_column("1.7"), "total_time");
        assert_eq!(statements_time_column("1.8"), "total_exec_time");
        assert_eq!(statements_time_column("1.10"), "total_exec_time");
        assert_eq!(statements_time_column("1.11"), "total_exec_time");
        assert_eq!(statements_time_column("2.0"), "total_exec_time");
        let sql = statements_sql("my \"schema\"", "1.9");
        assert!(sql.contains("FROM \"my \"\"schema\"\"\".pg_stat_statements(false)"));
        assert!(sql.contains("sum(total_exec_time)"));
        assert!(sql.contains("GROUP BY queryid"));
        assert!(!sql.contains("query,") && !sql.contains(" query "));
    }
}
