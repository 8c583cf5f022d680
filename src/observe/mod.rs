//! Observation: talking to the watched systems and turning what they say
//! into plain [`snapshot`] data. This is the only layer that reads from
//! databases; everything downstream works on snapshots.

pub mod backups;
pub mod disk;
pub mod intern;
pub mod neo4j;
pub mod postgres;
pub mod probes;
pub mod settings;
pub mod snapshot;
pub mod statistics;
pub mod tls;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

pub use settings::{APPLICATION_NAME, PostgresTarget, SslMode, TargetSettings};
pub use snapshot::*;

/// Why a poll failed, as a small closed set usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PollErrorKind {
    /// Could not connect (refused, DNS, TLS, or no free slot in our budget in time).
    Connect,
    /// The server rejected our credentials or role.
    Auth,
    /// The whole poll overran `poll_timeout` and was abandoned.
    Timeout,
    /// A statement hit the server-side `statement_timeout`.
    StatementTimeout,
    /// A statement waited on a lock longer than `lock_timeout`.
    LockTimeout,
    /// The server refused a statement (permissions, missing view, ...).
    Query,
    /// The server answered with something we could not read.
    Decode,
    /// The connection broke mid-poll.
    Io,
    /// The server version is not supported.
    Unsupported,
}

impl PollErrorKind {
    pub const ALL: [PollErrorKind; 9] = [
        PollErrorKind::Connect,
        PollErrorKind::Auth,
        PollErrorKind::Timeout,
        PollErrorKind::StatementTimeout,
        PollErrorKind::LockTimeout,
        PollErrorKind::Query,
        PollErrorKind::Decode,
        PollErrorKind::Io,
        PollErrorKind::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollErrorKind::Connect => "connect",
            PollErrorKind::Auth => "auth",
            PollErrorKind::Timeout => "timeout",
            PollErrorKind::StatementTimeout => "statement_timeout",
            PollErrorKind::LockTimeout => "lock_timeout",
            PollErrorKind::Query => "query",
            PollErrorKind::Decode => "decode",
            PollErrorKind::Io => "io",
            PollErrorKind::Unsupported => "unsupported",
        }
    }
}

/// A failed poll: a bounded kind for metrics, and a message for logs and the status API.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct PollError {
    pub kind: PollErrorKind,
    pub message: String,
}

impl PollError {
    pub fn new(kind: PollErrorKind, message: impl Into<String>) -> Self {
        PollError {
            kind,
            message: message.into(),
        }
    }

    pub fn from_sqlx(e: sqlx::Error) -> Self {
        let kind = match &e {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("57014") => PollErrorKind::StatementTimeout,
                Some("55P03") => PollErrorKind::LockTimeout,
                Some(c) if c.starts_with("28") => PollErrorKind::Auth,
                // 53300 too_many_connections, 57P03 cannot_connect_now, 3D000 no such database
                Some("53300") | Some("57P03") | Some("3D000") => PollErrorKind::Connect,
                // 57P01 admin_shutdown, 57P02 crash_shutdown: the server ended our session.
                Some("57P01") | Some("57P02") | Some("57P05") => PollErrorKind::Io,
                Some(c) if c.starts_with("08") => PollErrorKind::Connect,
                _ => PollErrorKind::Query,
            },
            sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => PollErrorKind::Connect,
            sqlx::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::AddrNotAvailable => PollErrorKind::Connect,
                _ => PollErrorKind::Io,
            },
            sqlx::Error::Protocol(_) => PollErrorKind::Io,
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => PollErrorKind::Decode,
            _ => PollErrorKind::Query,
        };
        PollError::new(kind, e.to_string())
    }
}

/// Polls one PostgreSQL target over one connection of its own, and keeps
/// the slow cadence of database sizes.
///
/// Connection discipline (the budget must hold even when the server hangs):
/// there is at most one connection and at most one connection attempt at a
/// time. An attempt a poll gave up waiting for is *kept*, not dropped and
/// replaced: a backend stuck in start-up (e.g. behind a lock on
/// `pg_database`) lives on the server until the server answers, whether or
/// not our socket is still open, so starting another attempt each poll
/// would pile backends up. The next poll waits on the same attempt.
pub struct PostgresObserver {
    target: PostgresTarget,
    conn: Option<PgConnection>,
    connecting: Option<JoinHandle<Result<PgConnection, sqlx::Error>>>,
    sizes: Option<(Instant, postgres::DatabaseSizes)>,
    /// The latest statistics read, and when.
    statistics: Option<(Instant, Statistics)>,
    /// The statistics errors last logged, so each is logged once.
    statistics_errors: Vec<(StatisticsSource, StatisticsErrorReason)>,
    /// What the statistics may read, and since when: asked again after
    /// `database_sizes_interval`, after any statistics error and on a new
    /// connection.
    statistics_availability: Option<(Instant, statistics::Availability)>,
    /// Sessions the last successful poll saw, to size the next poll's list.
    last_sessions: usize,
    /// When each probe last started.
    probes: probes::Schedule,
    /// A probe's connection attempt to another database that a run gave
    /// up waiting for: kept, like the polling connection's, so that a
    /// server stuck in start-up never collects more than one.
    probe_connecting: Option<JoinHandle<Result<PgConnection, sqlx::Error>>>,
}

impl PostgresObserver {
    pub fn new(target: PostgresTarget) -> Self {
        PostgresObserver {
            target,
            conn: None,
            connecting: None,
            sizes: None,
            statistics: None,
            statistics_errors: Vec::new(),
            statistics_availability: None,
            last_sessions: 0,
            probes: Default::default(),
            probe_connecting: None,
        }
    }

    /// Takes settings a reload changed in place; the connection stays (the
    /// caller checked `same_connection`).
    pub fn update(&mut self, target: PostgresTarget) {
        self.target = target;
    }

    pub fn target(&self) -> &PostgresTarget {
        &self.target
    }

    /// Connections (open or being opened) this observer holds right now: 0 or 1.
    pub fn open_connections(&self) -> u32 {
        u32::from(self.conn.is_some() || self.connecting.is_some())
    }

    /// One poll, bounded by `poll_timeout`. A poll that overruns is abandoned
    /// (its connection is kept: the server stops the statement at its
    /// `statement_timeout`, and the next use of the connection waits for that).
    pub async fn poll(&mut self) -> Result<PgSnapshot, PollError> {
        let timeout = self.target.settings.poll_timeout();
        let result = self.poll_inner_bounded(timeout).await;
        if result.is_err() {
            // After an outage every probe runs at the first successful poll.
            self.probes.clear();
        }
        result
    }

    async fn poll_inner_bounded(&mut self, timeout: Duration) -> Result<PgSnapshot, PollError> {
        match tokio::time::timeout(timeout, self.poll_inner()).await {
            Ok(r) => r,
            // Still no connection when time ran out: the server is not reachable.
            Err(_) if self.conn.is_none() => Err(PollError::new(
                PollErrorKind::Connect,
                format!(
                    "could not connect within poll_timeout {} (the attempt continues)",
                    humantime::format_duration(timeout)
                ),
            )),
            Err(_) => Err(PollError::new(
                PollErrorKind::Timeout,
                format!(
                    "poll did not finish within poll_timeout {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }

    /// The connection, opening it if needed (waiting on an earlier attempt
    /// if one is still under way).
    async fn connection(&mut self) -> Result<&mut PgConnection, PollError> {
        if self.conn.is_none() {
            let options = self.target.connect_options();
            let attempt = self.connecting.get_or_insert_with(|| {
                tokio::spawn(async move { PgConnection::connect_with(&options).await })
            });
            let joined =
                tokio::time::timeout(self.target.settings.connect_timeout(), attempt).await;
            let joined = match joined {
                Ok(j) => j,
                Err(_) => {
                    return Err(PollError::new(
                        PollErrorKind::Connect,
                        format!(
                            "could not connect within connect_timeout {} (the attempt continues)",
                            humantime::format_duration(self.target.settings.connect_timeout())
                        ),
                    ));
                }
            };
            self.connecting = None;
            let conn = joined
                .map_err(|e| {
                    PollError::new(PollErrorKind::Connect, format!("connect task failed: {e}"))
                })?
                .map_err(PollError::from_sqlx)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    async fn poll_inner(&mut self) -> Result<PgSnapshot, PollError> {
        let sizes_due = self
            .sizes
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= self.target.settings.database_sizes_interval());
        let stats = &self.target.statistics;
        let statistics_due = (stats.enabled()
            && self.statistics.as_ref().is_none_or(|(at, _)| {
                // Half a poll of slack: due on the poll after the interval.
                let poll = self.target.settings.poll_interval();
                at.elapsed() + poll / 2 >= stats.interval(poll)
            }))
        .then(|| statistics::Plan {
            statements_top: stats.statements_top(),
            known: None,
        });
        if !stats.enabled() {
            self.statistics = None;
        }
        let sessions_hint = self.last_sessions;
        if self.conn.is_none() {
            self.statistics_availability = None;
        }
        let sizes_interval = self.target.settings.database_sizes_interval();
        let statistics_due = statistics_due.map(|mut plan| {
            plan.known = self
                .statistics_availability
                .as_ref()
                .filter(|(at, _)| at.elapsed() < sizes_interval)
                .map(|(_, a)| a.clone());
            plan
        });
        // Whether this read asks what is readable (rather than trusting the last answer).
        let asked = statistics_due.as_ref().is_some_and(|p| p.known.is_none());
        let conn = self.connection().await?;
        let result = postgres::read_snapshot(conn, sizes_due, sessions_hint, statistics_due).await;
        if matches!(&result, Err(e) if matches!(e.kind, PollErrorKind::Io | PollErrorKind::Connect))
        {
            // The connection broke: drop it; the next poll opens a new one.
            self.conn = None;
        }
        let (mut snapshot, sizes) = result?;
        self.last_sessions = snapshot.sessions.len();
        if let Some(s) = sizes {
            self.sizes = Some((Instant::now(), s));
        }
        if let Some((_, sizes)) = &self.sizes {
            for db in &mut snapshot.databases {
                db.size_bytes = sizes.iter().find(|(n, _)| *n == db.name).map(|(_, s)| *s);
            }
        }
        match snapshot.statistics.take() {
            Some(mut fresh) => {
                self.log_statistics_errors(&fresh.errors);
                let known = fresh.availability.take();
                let since = match self.statistics_availability.take() {
                    Some((at, _)) if !asked => at,
                    _ => Instant::now(),
                };
                // Trusted only while everything was read.
                self.statistics_availability = known
                    .filter(|_| fresh.errors.is_empty())
                    .map(|a| (since, a));
                snapshot.statistics = Some(fresh.clone());
                self.statistics = Some((Instant::now(), fresh));
            }
            None => snapshot.statistics = self.statistics.as_ref().map(|(_, s)| s.clone()),
        }
        let paths = self.target.paths.clone();
        if !paths.is_empty() {
            // statvfs can block (a hung network mount): keep it off the runtime threads.
            snapshot.disks = tokio::task::spawn_blocking(move || disk::usage(&paths))
                .await
                .map_err(|e| {
                    PollError::new(PollErrorKind::Io, format!("disk usage task failed: {e}"))
                })?;
        }
        Ok(snapshot)
    }

    /// Logs a statistics source's error when it first appears (and when it
    /// clears), not at every read.
    fn log_statistics_errors(&mut self, errors: &[StatisticsError]) {
        let now: Vec<(StatisticsSource, StatisticsErrorReason)> =
            errors.iter().map(|e| (e.source, e.reason)).collect();
        for e in errors {
            if !self.statistics_errors.contains(&(e.source, e.reason)) {
                tracing::warn!(
                    source = e.source.as_str(),
                    reason = e.reason.as_str(),
                    "statistics not read: {}",
                    e.message
                );
            }
        }
        for (source, _) in &self.statistics_errors {
            if !now.iter().any(|(s, _)| s == source) {
                tracing::info!(source = source.as_str(), "statistics read again");
            }
        }
        self.statistics_errors = now;
    }

    /// Runs the probes that are due, one after the other, on the polling
    /// connection, between polls: a probe starts only if its timeout (and
    /// the client's grace) ends before `deadline`, the next poll's start, so
    /// probes never delay a poll; one that does not fit waits for a later
    /// gap. `all` (`dbwarden check`) runs every probe, due or not. Without
    /// a connection (the poll failed) nothing runs. A probe whose answer
    /// did not come in time costs the connection: the next poll reopens it.
    pub async fn run_probes(&mut self, deadline: Instant, all: bool) -> Vec<probes::ProbeRun> {
        let mut runs = Vec::new();
        self.probes.retain(&self.target.active_probes);
        let poll_interval = self.target.settings.poll_interval();
        let names: Vec<String> = self.target.active_probes.keys().cloned().collect();
        for name in names {
            if self.conn.is_none() {
                break;
            }
            let p = self.target.active_probes[&name].clone();
            if !self.probes.start(&name, &p, poll_interval, deadline, all) {
                continue;
            }
            let timeout = p.timeout(poll_interval);
            let lock_timeout = p.lock_timeout(poll_interval, self.target.settings.lock_timeout());
            let own = self.own_database();
            if p.needs_other_connection(&own) {
                runs.push(
                    self.run_elsewhere(&name, &p, &own, timeout, lock_timeout)
                        .await,
                );
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            let ran = probes::run(conn, &name, &p, timeout, lock_timeout).await;
            if ran.connection_lost {
                self.conn = None;
            }
            runs.push(ran.run);
        }
        runs
    }

    /// The database the target's URL names (the polling connection's).
    fn own_database(&self) -> String {
        let o = self.target.connect_options();
        o.get_database()
            .unwrap_or_else(|| o.get_username())
            .to_string()
    }

    /// A probe that runs in other databases: in each, one after the other,
    /// the target's own on the polling connection and every other on a
    /// connection opened for the run and closed after it (the second
    /// connection of the target's budget); the rows of each carry the
    /// `database` label. Patterns are resolved against `pg_database` at each
    /// run. The whole run is bounded by the probe's timeout and its grace.
    async fn run_elsewhere(
        &mut self,
        name: &str,
        p: &probes::ProbeSettings,
        own: &str,
        timeout: Duration,
        lock_timeout: Duration,
    ) -> probes::ProbeRun {
        let at = std::time::SystemTime::now();
        let started = Instant::now();
        let bound = timeout + probes::client_grace(timeout);
        let result = match tokio::time::timeout(
            bound,
            self.elsewhere_inner(name, p, own, timeout, lock_timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                // The polling connection may be mid-statement: reopen it.
                self.conn = None;
                Err(probes::ProbeError::new(
                    probes::ProbeErrorKind::Timeout,
                    format!(
                        "its databases did not all answer within the probe's timeout {} (and {} grace)",
                        humantime::format_duration(timeout),
                        humantime::format_duration(probes::client_grace(timeout))
                    ),
                ))
            }
        };
        probes::ProbeRun {
            probe: name.to_string(),
            at,
            duration_seconds: started.elapsed().as_secs_f64(),
            result,
        }
    }

    async fn elsewhere_inner(
        &mut self,
        name: &str,
        p: &probes::ProbeSettings,
        own: &str,
        timeout: Duration,
        lock_timeout: Duration,
    ) -> Result<probes::ProbeRows, probes::ProbeError> {
        let lost = |e: sqlx::Error| {
            probes::ProbeError::new(probes::ProbeErrorKind::Connection, e.to_string())
        };
        let databases = if p.databases.iter().any(|d| probes::settings::is_pattern(d)) {
            let conn = self.conn.as_mut().ok_or_else(|| {
                probes::ProbeError::new(probes::ProbeErrorKind::Connection, "no connection")
            })?;
            let all: Vec<String> = sqlx::query_scalar(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            )
            .persistent(false)
            .fetch_all(conn)
            .await
            .map_err(lost)?;
            probes::resolve_databases(&p.databases, &all)?
        } else {
            p.databases.clone()
        };
        let mut per_db = Vec::with_capacity(databases.len());
        for db in &databases {
            let ran = if db == own {
                let conn = self.conn.as_mut().ok_or_else(|| {
                    probes::ProbeError::new(probes::ProbeErrorKind::Connection, "no connection")
                })?;
                let ran = probes::run(conn, name, p, timeout, lock_timeout).await;
                if ran.connection_lost {
                    self.conn = None;
                }
                ran
            } else {
                let mut conn = self.connect_elsewhere(db, timeout).await?;
                let ran = probes::run(&mut conn, name, p, timeout, lock_timeout).await;
                if !ran.connection_lost {
                    let _ = conn.close().await;
                }
                ran
            };
            per_db.push((db.clone(), ran.run.result?));
        }
        probes::merge_databases(per_db, p.max_series() as usize)
    }

    /// A connection to another database of the target, for one probe run:
    /// the target's options with that database, bounded by `timeout`. An
    /// attempt that does not finish in time is kept (see `probe_connecting`).
    async fn connect_elsewhere(
        &mut self,
        db: &str,
        timeout: Duration,
    ) -> Result<PgConnection, probes::ProbeError> {
        if let Some(h) = &self.probe_connecting
            && !h.is_finished()
        {
            return Err(probes::ProbeError::new(
                probes::ProbeErrorKind::Connection,
                "an earlier connection attempt for a probe is still under way",
            ));
        }
        let options = self.target.connect_options().database(db);
        let attempt = self.probe_connecting.insert(tokio::spawn(async move {
            PgConnection::connect_with(&options).await
        }));
        let joined = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
            probes::ProbeError::new(
                probes::ProbeErrorKind::Connection,
                format!(
                    "could not connect to database {db:?} within the probe's timeout {} (the attempt continues)",
                    humantime::format_duration(timeout)
                ),
            )
        })?;
        self.probe_connecting = None;
        joined
            .map_err(|e| {
                probes::ProbeError::new(
                    probes::ProbeErrorKind::Connection,
                    format!("connect task failed: {e}"),
                )
            })?
            .map_err(|e| match &e {
                sqlx::Error::Database(d) => probes::ProbeError::new(
                    probes::ProbeErrorKind::Query,
                    format!("database {db:?}: {}", d.message()),
                ),
                _ => probes::ProbeError::new(
                    probes::ProbeErrorKind::Connection,
                    format!("database {db:?}: {e}"),
                ),
            })
    }

    /// Closes the connection; used at shutdown. A pending attempt is aborted.
    pub async fn close(&mut self) {
        if let Some(h) = self.connecting.take() {
            h.abort();
        }
        if let Some(h) = self.probe_connecting.take() {
            h.abort();
        }
        if let Some(c) = self.conn.take() {
            let _ = c.close().await;
        }
    }
}

/// How long to wait before the next poll after `failures` consecutive failures.
pub fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval.saturating_mul(factor).min(max.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(60), 0), s(5));
        assert_eq!(backoff(s(5), s(60), 1), s(5));
        assert_eq!(backoff(s(5), s(60), 2), s(10));
        assert_eq!(backoff(s(5), s(60), 4), s(40));
        assert_eq!(backoff(s(5), s(60), 5), s(60));
        assert_eq!(backoff(s(5), s(60), 1000), s(60));
        // A cap below the interval never makes polls faster than the interval.
        assert_eq!(backoff(s(30), s(10), 3), s(30));
    }
}
