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
    /// Neo4j: drop a FAILED index and create it again (`remediate::neo4j_index`).
    Rebuild,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Cancel => "cancel",
            Signal::Terminate => "terminate",
            Signal::Rebuild => "rebuild",
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

/// What the guarded statement compares for one candidate: the backend's
/// identity, and the timestamps the policy measured (`None`: not compared).
#[derive(Debug, Clone, PartialEq)]
struct Guard<'a> {
    pid: i32,
    backend_start: i64,
    state: &'static str,
    application_name: &'a str,
    need_query: bool,
    query_start: Option<i64>,
    need_xact: bool,
    xact_start: Option<i64>,
    need_idle: bool,
    state_change: Option<i64>,
    need_blocking: bool,
}

impl<'a> Guard<'a> {
    /// `None` when the backend cannot be identified (no backend_start).
    fn of(c: &'a Candidate, cond: &Conditions) -> Option<Self> {
        let f = &c.facts;
        let backend_start = f.backend_start_us?;
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
        Some(Guard {
            pid: f.pid,
            backend_start,
            state: state_text(f.state),
            application_name: &f.application_name,
            need_query: query_start.is_some() || cond.query_running_for.is_some(),
            query_start,
            need_xact: xact_start.is_some() || cond.transaction_open_for.is_some(),
            xact_start,
            need_idle: state_change.is_some() || cond.idle_for.is_some(),
            state_change,
            need_blocking: cond.blocking().is_some(),
        })
    }
}

/// The re-checks of a row of a guarded statement's answer, and what each
/// says when it fails.
const CHECKS: [(&str, &str); 7] = [
    ("same_backend", "a different backend now has this pid"),
    ("same_state", "state"),
    ("same_app", "application_name"),
    ("same_query", "a new query started"),
    ("same_xact", "a new transaction started"),
    ("same_idle", "the session was active since"),
    ("still_blocking", "no longer blocks anyone"),
];

/// The outcome a row of a guarded statement's answer reports.
fn outcome_of_row(row: &sqlx::postgres::PgRow) -> Outcome {
    let mut changed = Vec::new();
    for (col, what) in CHECKS {
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

/// Sends `signal` to the candidate's backend if, at the moment of the
/// statement, it is still the same backend in the same situation.
pub async fn signal(
    conn: &mut PgConnection,
    signal: Signal,
    c: &Candidate,
    cond: &Conditions,
) -> Outcome {
    let Some(g) = Guard::of(c, cond) else {
        return Outcome::Changed(vec!["backend_start unknown"]);
    };
    let sql = match signal {
        Signal::Cancel => GUARD_CANCEL,
        Signal::Terminate => GUARD_TERMINATE,
        Signal::Rebuild => {
            return Outcome::Failed("rebuild is not a signal to a session".into());
        }
    };
    let row = sqlx::query(sql)
        .bind(g.pid)
        .bind(g.backend_start)
        .bind(g.state)
        .bind(g.application_name)
        .bind(g.need_query)
        .bind(g.query_start)
        .bind(g.need_xact)
        .bind(g.xact_start)
        .bind(g.need_idle)
        .bind(g.state_change)
        .bind(g.need_blocking)
        .fetch_optional(&mut *conn)
        .await;
    match row {
        Ok(Some(r)) => outcome_of_row(&r),
        Ok(None) => Outcome::Gone,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
            Outcome::Refused(db.message().to_string())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// One session of a batch: what to send it, and the policy conditions its
/// re-check compares.
#[derive(Debug, Clone, Copy)]
pub struct Batched<'a> {
    pub candidate: &'a Candidate,
    pub signal: Signal,
    pub conditions: &'a Conditions,
}

/// Sends each session of the batch its signal, in ONE statement, to those
/// that at that moment are still the same backend in the same situation:
/// the re-check of [`signal`], evaluated per row. The outcomes are in the
/// batch's order.
///
/// A signal the server would refuse is not attempted: the statement checks
/// the server's rule per row (a superuser's backend needs a superuser; any
/// other needs `pg_signal_backend` or the privileges of its role), because
/// one refused call would end the statement after earlier rows' signals
/// were already sent, with no answer saying which. Should the server still
/// refuse (a rule of a later version), the batch is sent again one session
/// at a time, each with [`signal`].
pub async fn signal_batch(conn: &mut PgConnection, batch: &[Batched<'_>]) -> Vec<Outcome> {
    let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
    // The rows the statement checks, with their place in the batch.
    let mut rows: Vec<(usize, Guard<'_>, bool)> = Vec::with_capacity(batch.len());
    for (i, b) in batch.iter().enumerate() {
        match Guard::of(b.candidate, b.conditions) {
            Some(g) => rows.push((i, g, b.signal == Signal::Terminate)),
            None => out[i] = Some(Outcome::Changed(vec!["backend_start unknown"])),
        }
    }
    if !rows.is_empty() {
        let answer = sqlx::query(GUARD_BATCH)
            .bind(rows.iter().map(|(i, _, _)| *i as i64).collect::<Vec<i64>>())
            .bind(rows.iter().map(|(_, g, _)| g.pid).collect::<Vec<i32>>())
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.backend_start)
                    .collect::<Vec<i64>>(),
            )
            .bind(rows.iter().map(|(_, g, _)| g.state).collect::<Vec<&str>>())
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.application_name)
                    .collect::<Vec<&str>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.need_query)
                    .collect::<Vec<bool>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.query_start)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.need_xact)
                    .collect::<Vec<bool>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.xact_start)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.need_idle)
                    .collect::<Vec<bool>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.state_change)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, g, _)| g.need_blocking)
                    .collect::<Vec<bool>>(),
            )
            .bind(rows.iter().map(|(_, _, t)| *t).collect::<Vec<bool>>())
            .fetch_all(&mut *conn)
            .await;
        match answer {
            Ok(answer) => {
                for row in &answer {
                    let Ok(i) = row.try_get::<i64, _>("n") else {
                        continue;
                    };
                    let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) else {
                        continue;
                    };
                    *slot = Some(outcome_of_batch_row(row));
                }
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                tracing::warn!(error = %db.message(), sessions = rows.len(), "the server refused a signal of the batch statement: sending the batch one session at a time (a session the batch statement signalled before the refusal may be reported as ended)");
                for (i, _, _) in &rows {
                    let b = batch[*i];
                    out[*i] = Some(signal(conn, b.signal, b.candidate, b.conditions).await);
                }
            }
            Err(e) => {
                let m = format!(
                    "the batch statement failed ({e}): a signal sent before the failure may have been delivered"
                );
                for (i, _, _) in &rows {
                    out[*i] = Some(Outcome::Failed(m.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Failed("the batch statement did not answer for this session".into())
            })
        })
        .collect()
}

/// The outcome a row of the batch statement's answer reports.
fn outcome_of_batch_row(row: &sqlx::postgres::PgRow) -> Outcome {
    match row.try_get::<bool, _>("present") {
        Ok(true) => {}
        Ok(false) => return Outcome::Gone,
        Err(e) => return Outcome::Failed(format!("unexpected answer in column \"present\": {e}")),
    }
    match outcome_of_row(row) {
        // Not signalled because the server would refuse it, not because it ended.
        Outcome::Gone if row.try_get::<Option<bool>, _>("permitted").ok() == Some(Some(false)) => {
            Outcome::Refused(NOT_PERMITTED.into())
        }
        other => other,
    }
}

/// Why the batch statement did not signal a session the server would refuse.
const NOT_PERMITTED: &str = "permission denied to signal this session: a superuser's session needs a superuser, any other pg_signal_backend or the privileges of its role (checked in the statement, nothing sent)";

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

/// The guarded statement of a batch: one row per session (`n` its place
/// in the batch), each re-checked like [`GUARD_CANCEL`]/[`GUARD_TERMINATE`]
/// re-check one, and signalled only if every check holds and the server
/// would allow it (`permitted`; the server's rule, so that no call in the
/// statement raises an error after others have sent their signals).
const GUARD_BATCH: &str = "WITH b AS (
       SELECT * FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::text[], $5::text[],
                            $6::bool[], $7::int8[], $8::bool[], $9::int8[], $10::bool[], $11::int8[],
                            $12::bool[], $13::bool[])
              AS b(n, pid, backend_start, state, app, need_query, query_start, need_xact, xact_start,
                   need_idle, state_change, need_blocking, terminate)
     ), s AS (
       SELECT b.n, b.pid, b.terminate,
              a.pid IS NOT NULL AS present,
              (extract(epoch FROM a.backend_start) * 1000000)::int8 = b.backend_start AS same_backend,
              coalesce(a.state, '') = b.state AS same_state,
              coalesce(a.application_name, '') = b.app AS same_app,
              (NOT b.need_query OR (extract(epoch FROM a.query_start) * 1000000)::int8 IS NOT DISTINCT FROM b.query_start) AS same_query,
              (NOT b.need_xact OR (extract(epoch FROM a.xact_start) * 1000000)::int8 IS NOT DISTINCT FROM b.xact_start) AS same_xact,
              (NOT b.need_idle OR (extract(epoch FROM a.state_change) * 1000000)::int8 IS NOT DISTINCT FROM b.state_change) AS same_idle,
              (NOT b.need_blocking OR EXISTS (SELECT 1 FROM pg_stat_activity w
                                              WHERE w.wait_event_type = 'Lock' AND a.pid = ANY (pg_blocking_pids(w.pid)))) AS still_blocking,
              CASE WHEN a.pid IS NULL THEN NULL
                   WHEN current_setting('is_superuser')::bool THEN true
                   WHEN coalesce(r.rolsuper, false) THEN false
                   WHEN pg_has_role('pg_signal_backend', 'USAGE') THEN true
                   WHEN r.oid IS NULL THEN false
                   ELSE pg_has_role(r.oid, 'USAGE')
              END AS permitted
       FROM b
       LEFT JOIN pg_stat_activity a ON a.pid = b.pid AND a.backend_type = 'client backend'
       LEFT JOIN pg_roles r ON r.oid = a.usesysid
     )
     SELECT n, present, same_backend, same_state, same_app, same_query, same_xact, same_idle, still_blocking, permitted,
            CASE WHEN present AND same_backend AND same_state AND same_app AND same_query AND same_xact
                      AND same_idle AND still_blocking AND permitted
                 THEN CASE WHEN terminate THEN pg_terminate_backend(pid) ELSE pg_cancel_backend(pid) END
            END AS signalled
     FROM s ORDER BY n";

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
