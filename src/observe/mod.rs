//! Observation: talking to the watched systems and turning what they say
//! into plain [`snapshot`] data. This is the only layer that reads from
//! databases; everything downstream works on snapshots.

pub mod disk;
pub mod postgres;
pub mod snapshot;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

pub use snapshot::*;

use crate::config::PostgresTarget;

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
                Some("57P01") | Some("57P02") => PollErrorKind::Io,
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

/// Polls one PostgreSQL target: owns its connection pool (bounded by the
/// target's budget) and the slow cadence of database sizes.
pub struct PostgresObserver {
    target: PostgresTarget,
    pool: PgPool,
    sizes: Option<(Instant, postgres::DatabaseSizes)>,
}

impl PostgresObserver {
    /// `reserved`: connections of the target's budget that something else
    /// (the remediation actor) holds, so the pool keeps below the budget.
    pub fn new(target: PostgresTarget, reserved: u32) -> Self {
        let pool = postgres::pool(&target, reserved);
        PostgresObserver {
            target,
            pool,
            sizes: None,
        }
    }

    pub fn target(&self) -> &PostgresTarget {
        &self.target
    }

    /// The pool, for other components that need a connection within the same budget.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connections this observer holds open right now.
    pub fn open_connections(&self) -> u32 {
        self.pool.size()
    }

    /// One poll, bounded by `poll_timeout`. On timeout the work is dropped
    /// (and its connection discarded); the server's own `statement_timeout`
    /// stops whatever was still running there.
    pub async fn poll(&mut self) -> Result<PgSnapshot, PollError> {
        let timeout = self.target.settings.poll_timeout;
        match tokio::time::timeout(timeout, self.poll_inner()).await {
            Ok(r) => r,
            Err(_) => Err(PollError::new(
                PollErrorKind::Timeout,
                format!(
                    "poll did not finish within poll_timeout {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }

    async fn poll_inner(&mut self) -> Result<PgSnapshot, PollError> {
        let sizes_due = self
            .sizes
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= self.target.settings.database_sizes_interval);
        let mut conn = self.pool.acquire().await.map_err(PollError::from_sqlx)?;
        let result = postgres::read_snapshot(&mut conn, sizes_due).await;
        if matches!(&result, Err(e) if e.kind == PollErrorKind::Io) {
            // A connection that broke mid-poll is not returned to the pool.
            conn.detach();
        }
        let (mut snapshot, sizes) = result?;
        if let Some(s) = sizes {
            self.sizes = Some((Instant::now(), s));
        }
        if let Some((_, sizes)) = &self.sizes {
            for db in &mut snapshot.databases {
                db.size_bytes = sizes.iter().find(|(n, _)| *n == db.name).map(|(_, s)| *s);
            }
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

    /// Closes every connection; used at shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
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
