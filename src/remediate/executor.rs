//! The guarded statements that send signals, and the advisory lock that
//! makes one dbwarden among replicas the actor for a target.
//!
//! Between the poll and the signal a session may have finished, started a
//! new query, or been replaced by another backend with the same pid. The
//! statement that signals re-checks, in the same SQL statement, that the
//! backend is the same one (pid and backend_start) and that nothing the
//! policy relied on has changed (state, application_name, and the start of
//! the query / transaction / idle stretch the policy measured). If anything
//! changed, no signal is sent and the outcome says what changed.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use super::policy::{Candidate, Conditions};

/// The key of dbwarden's session-level advisory lock (the two-int form:
/// "dbwd" and "actor"). Replicas must connect to the same database, since
/// advisory locks are per database.
pub const ACTOR_LOCK: (i32, i32) = (0x6462_7764, 0x6163_746f);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Cancel,
    Terminate,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Cancel => "cancel",
            Signal::Terminate => "terminate",
        }
    }
}

/// What the guarded statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The signal was sent.
    Signalled,
    /// The backend is gone.
    Gone,
    /// The backend changed; the list says what.
    Changed(Vec<&'static str>),
    /// The server refused (insufficient privilege).
    Refused(String),
    /// The statement failed.
    Failed(String),
}

impl Outcome {
    pub fn sentence(&self, signal: Signal) -> String {
        match self {
            Outcome::Signalled => format!("{} signal sent", signal.as_str()),
            Outcome::Gone => "skipped: the session ended before the action".to_string(),
            Outcome::Changed(what) => format!(
                "skipped: the session changed since the poll ({})",
                what.join(", ")
            ),
            Outcome::Refused(m) => format!("refused by the server: {m}"),
            Outcome::Failed(m) => format!("failed: {m}"),
        }
    }
}

/// Sends `signal` to the candidate's backend if, at the moment of the
/// statement, it is still the same backend in the same situation.
pub async fn signal(
    conn: &mut PgConnection,
    signal: Signal,
    c: &Candidate,
    cond: &Conditions,
) -> Outcome {
    let f = &c.facts;
    let Some(backend_start) = f.backend_start_us else {
        return Outcome::Changed(vec!["backend_start unknown"]);
    };
    // Which timestamps must be unchanged: those the policy measured.
    let query_start = (cond.query_running_for.is_some()
        || cond.match_query.is_some()
        || cond.ignore_query.is_some())
    .then_some(f.query_start_us)
    .flatten();
    let xact_start = cond
        .transaction_open_for
        .is_some()
        .then_some(f.xact_start_us)
        .flatten();
    let state_change = cond
        .idle_for
        .is_some()
        .then_some(f.state_change_us)
        .flatten();
    let need_query = query_start.is_some() || cond.query_running_for.is_some();
    let need_xact = xact_start.is_some() || cond.transaction_open_for.is_some();
    let need_idle = state_change.is_some() || cond.idle_for.is_some();

    let sql = match signal {
        Signal::Cancel => GUARD_CANCEL,
        Signal::Terminate => GUARD_TERMINATE,
    };
    let row = sqlx::query(sql)
        .bind(f.pid)
        .bind(backend_start)
        .bind(state_text(f.state))
        .bind(&f.application_name)
        .bind(need_query)
        .bind(query_start)
        .bind(need_xact)
        .bind(xact_start)
        .bind(need_idle)
        .bind(state_change)
        .bind(cond.blocking().is_some())
        .fetch_optional(&mut *conn)
        .await;
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Gone,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
            return Outcome::Refused(db.message().to_string());
        }
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let checks = [
        ("same_backend", "a different backend now has this pid"),
        ("same_state", "state"),
        ("same_app", "application_name"),
        ("same_query", "a new query started"),
        ("same_xact", "a new transaction started"),
        ("same_idle", "the session was active since"),
        ("still_blocking", "no longer blocks anyone"),
    ];
    let mut changed = Vec::new();
    for (col, what) in checks {
        match row.try_get::<Option<bool>, _>(col) {
            Ok(Some(true)) => {}
            Ok(_) => changed.push(what),
            Err(e) => return Outcome::Failed(format!("unexpected answer in column {col:?}: {e}")),
        }
    }
    if !changed.is_empty() {
        return Outcome::Changed(changed);
    }
    match row.try_get::<Option<bool>, _>("signalled") {
        Ok(Some(true)) => Outcome::Signalled,
        Ok(_) => Outcome::Gone,
        Err(e) => Outcome::Failed(format!("unexpected answer in column \"signalled\": {e}")),
    }
}

fn state_text(s: crate::observe::SessionState) -> &'static str {
    use crate::observe::SessionState::*;
    match s {
        Active => "active",
        Idle => "idle",
        IdleInTransaction => "idle in transaction",
        IdleInTransactionAborted => "idle in transaction (aborted)",
        FastpathFunctionCall => "fastpath function call",
        Disabled => "disabled",
        Unknown => "",
    }
}

macro_rules! guard_sql {
    ($f:literal) => {
        concat!(
            "WITH s AS (
               SELECT a.pid,
                      (extract(epoch FROM a.backend_start) * 1000000)::int8 = $2 AS same_backend,
                      coalesce(a.state, '') = $3 AS same_state,
                      coalesce(a.application_name, '') = $4 AS same_app,
                      (NOT $5 OR (extract(epoch FROM a.query_start) * 1000000)::int8 IS NOT DISTINCT FROM $6) AS same_query,
                      (NOT $7 OR (extract(epoch FROM a.xact_start) * 1000000)::int8 IS NOT DISTINCT FROM $8) AS same_xact,
                      (NOT $9 OR (extract(epoch FROM a.state_change) * 1000000)::int8 IS NOT DISTINCT FROM $10) AS same_idle,
                      (NOT $11 OR EXISTS (SELECT 1 FROM pg_stat_activity w
                                          WHERE w.wait_event_type = 'Lock' AND a.pid = ANY (pg_blocking_pids(w.pid)))) AS still_blocking
               FROM pg_stat_activity a
               WHERE a.pid = $1 AND a.backend_type = 'client backend'
             )
             SELECT same_backend, same_state, same_app, same_query, same_xact, same_idle, still_blocking,
                    CASE WHEN same_backend AND same_state AND same_app AND same_query AND same_xact
                              AND same_idle AND still_blocking
                         THEN ",
            $f,
            "(pid) END AS signalled
             FROM s"
        )
    };
}

const GUARD_CANCEL: &str = guard_sql!("pg_cancel_backend");
const GUARD_TERMINATE: &str = guard_sql!("pg_terminate_backend");

/// The dedicated connection that holds the actor lock and sends signals.
/// It counts against the target's connection budget.
pub struct Actor {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    holding: bool,
}

/// Who holds the actor lock on a target, as far as we can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Us,
    Other(String),
    Nobody,
}

impl Actor {
    /// `instance` names this dbwarden among replicas; it is part of the
    /// connection's application_name so other replicas can report the holder.
    pub fn new(options: PgConnectOptions, instance: &str) -> Self {
        let name = format!("dbwarden-actor/{instance}");
        let name: String = name.chars().take(63).collect();
        Actor {
            options: options.application_name(&name),
            conn: None,
            holding: false,
        }
    }

    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Makes sure we hold the lock if we can: connects if needed, tries the
    /// lock if we do not hold it, and verifies it if we think we do (the
    /// connection may have died with the server). Returns who holds it.
    pub async fn ensure(&mut self) -> Holder {
        if self.conn.is_none() {
            self.holding = false;
            match PgConnection::connect_with(&self.options).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "actor connection failed");
                    return Holder::Nobody;
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Holder::Nobody;
        };
        let r = if self.holding {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                                AND classid = $1::int4::oid AND objid = $2::int4::oid AND granted)",
            )
            .bind(ACTOR_LOCK.0)
            .bind(ACTOR_LOCK.1)
            .fetch_one(&mut *conn)
            .await
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                .bind(ACTOR_LOCK.0)
                .bind(ACTOR_LOCK.1)
                .fetch_one(&mut *conn)
                .await
        };
        match r {
            Ok(held) => {
                if held != self.holding {
                    if held {
                        tracing::info!("this instance is now the actor for the target");
                    } else {
                        tracing::warn!("this instance lost the actor lock");
                    }
                }
                self.holding = held;
            }
            Err(e) => {
                tracing::warn!(error = %e, "actor connection broke; the lock is lost with it");
                self.conn = None;
                self.holding = false;
                return Holder::Nobody;
            }
        }
        if self.holding {
            return Holder::Us;
        }
        let holder = sqlx::query_scalar::<_, Option<String>>(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.granted
             LIMIT 1",
        )
        .bind(ACTOR_LOCK.0)
        .bind(ACTOR_LOCK.1)
        .fetch_optional(&mut *conn)
        .await;
        match holder {
            Ok(Some(Some(name))) => Holder::Other(
                name.strip_prefix("dbwarden-actor/")
                    .unwrap_or(&name)
                    .to_string(),
            ),
            Ok(_) => Holder::Nobody,
            Err(_) => {
                self.conn = None;
                Holder::Nobody
            }
        }
    }

    /// The connection to send signals on; only while holding the lock.
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        if self.holding {
            self.conn.as_mut()
        } else {
            None
        }
    }

    /// Drops the connection after an error, releasing the lock with it.
    pub fn reset(&mut self) {
        self.conn = None;
        self.holding = false;
    }

    pub async fn close(mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.close().await;
        }
    }
}
