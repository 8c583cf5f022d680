//! PostgreSQL as a kind of remediation target: sessions selected by
//! [`policy::select`], acted on through the guarded signal of
//! [`executor::signal`] on the actor connection, which holds the advisory
//! lock that makes one dbwarden among replicas the actor.

use std::time::{Duration, SystemTime};

use super::RemediationSettings;
use super::audit::{AuditRecord, Decision};
use super::executor::{self, Actor, Batched, Holder, Outcome, Signal};
use super::policy::{self, Action, Candidate, Conditions, Gates, Policy};
use super::runner::{Context, Event, Kind, Selection};
use crate::observe::{PgSnapshot, PostgresTarget, Session};

/// One PostgreSQL target's side of the loop: its actor connection (and
/// with it the advisory lock), kept for the loop's whole life.
pub struct Postgres {
    name: String,
    actor: Actor,
    /// Bound on each statement of the actor connection, on our side.
    limit: Duration,
}

impl Postgres {
    /// `instance` names the actor connection, so other replicas can tell
    /// who holds the lock.
    pub fn new(target: &PostgresTarget, instance: &str) -> Self {
        Postgres {
            name: target.name.clone(),
            actor: Actor::new(target.connect_options(), instance),
            limit: target.settings.poll_timeout(),
        }
    }
}

/// A session's identity for the settled set: pid, backend start and query
/// start, so a new query is a new decision.
type SessionKey = (i32, Option<i64>, Option<i64>);

fn key_of_session(s: &Session) -> SessionKey {
    (s.pid, s.backend_start_us, s.query_start_us)
}

impl Kind for Postgres {
    type Snapshot = PgSnapshot;
    type Policy = Policy;
    type Candidate = Candidate;
    type Key = SessionKey;

    fn target(&self) -> &str {
        &self.name
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("remediation", target = %self.name)
    }

    fn policies(&self, settings: &RemediationSettings) -> Vec<Policy> {
        settings
            .policies
            .values()
            .filter(|p| p.applies_to(&self.name))
            .cloned()
            .collect()
    }

    fn series(p: &Policy) -> (&str, &'static [Signal]) {
        let signals: &'static [Signal] = match p.action() {
            Action::Cancel => &[Signal::Cancel],
            Action::Terminate => &[Signal::Terminate],
            Action::CancelThenTerminate { .. } => &[Signal::Cancel, Signal::Terminate],
        };
        (&p.name, signals)
    }

    fn select(
        &mut self,
        policies: &[Policy],
        snapshot: &PgSnapshot,
        gates: Gates<'_>,
    ) -> Selection<Candidate> {
        let (evaluations, chosen) = policy::select(policies, &self.name, snapshot, gates);
        let crossings = policy::crossings(&evaluations);
        Selection {
            crossings,
            ..Selection::of(
                evaluations
                    .into_iter()
                    .map(|e| (e.policy, e.candidates.len()))
                    .collect(),
                chosen,
            )
        }
    }

    fn key(c: &Candidate) -> SessionKey {
        (
            c.facts.pid,
            c.facts.backend_start_us,
            c.facts.query_start_us,
        )
    }

    fn exists(snapshot: &PgSnapshot, key: &SessionKey) -> bool {
        snapshot.sessions.iter().any(|s| key_of_session(s) == *key)
    }

    fn policy(c: &Candidate) -> &str {
        &c.policy
    }

    fn subject(c: &Candidate) -> String {
        c.facts.pid.to_string()
    }

    fn first_signal(c: &Candidate) -> Signal {
        match c.action {
            Action::Cancel | Action::CancelThenTerminate { .. } => Signal::Cancel,
            Action::Terminate => Signal::Terminate,
        }
    }

    fn follow_up(c: &Candidate) -> Option<Duration> {
        match c.action {
            Action::CancelThenTerminate { grace } => Some(grace),
            Action::Cancel | Action::Terminate => None,
        }
    }

    fn record(
        cx: &Context<'_, Self>,
        id: &str,
        c: &Candidate,
        signal: Signal,
        decision: Decision,
        outcome: String,
    ) -> AuditRecord {
        let s = cx.settings;
        AuditRecord::new(
            SystemTime::now(),
            id,
            s.instance(),
            cx.target,
            s.mode,
            signal.as_str(),
            decision,
            c,
            outcome,
            s.query_max_chars as usize,
            s.redact_queries,
        )
    }

    fn log(c: &Candidate, signal: Signal, event: Event<'_>) {
        let (pid, policy, action) = (c.facts.pid, &c.policy, signal.as_str());
        match event {
            Event::Settled => {
                tracing::debug!(pid, "already decided on this session: not again")
            }
            Event::WouldAct => {
                tracing::info!(pid, policy = %policy, action, reason = %c.reason, "dry-run: would act")
            }
            Event::Acted => {
                tracing::warn!(pid, policy = %policy, action, reason = %c.reason, "acted on a session")
            }
            Event::NotActed(outcome) => {
                tracing::info!(pid, policy = %policy, action, outcome = %outcome, "did not act")
            }
        }
    }

    /// Takes or verifies the advisory lock, and exports who holds it.
    async fn contend(&mut self, cx: &Context<'_, Self>) -> Holder {
        let holder = match tokio::time::timeout(self.limit, self.actor.ensure()).await {
            Ok(h) => h,
            Err(_) => {
                tracing::warn!("the actor connection did not answer in time: dropping it");
                self.actor.reset();
                Holder::Nobody
            }
        };
        cx.rem
            .note_actor(&self.name, &holder, cx.settings.instance());
        holder
    }

    /// The guarded signal: sent only if the backend is still the one the
    /// poll saw, in the situation the policy measured.
    async fn act(
        &mut self,
        cx: &Context<'_, Self>,
        c: &Candidate,
        signal: Signal,
    ) -> (Decision, String) {
        let mut answers = self.act_batch(cx, &[(c, signal)]).await;
        answers
            .pop()
            .unwrap_or((Decision::Failed, "failed: no answer".into()))
    }

    /// The guarded signals of a batch, in one statement that re-checks
    /// every session at the moment of acting and signals those that still
    /// qualify ([`executor::signal_batch`]).
    async fn act_batch(
        &mut self,
        cx: &Context<'_, Self>,
        batch: &[(&Candidate, Signal)],
    ) -> Vec<(Decision, String)> {
        let none = Conditions::default();
        let batched: Vec<Batched<'_>> = batch
            .iter()
            .map(|&(c, signal)| Batched {
                candidate: c,
                signal,
                conditions: cx
                    .policies
                    .iter()
                    .find(|p| p.name == c.policy)
                    .map_or(&none, |p| &p.conditions),
            })
            .collect();
        let outcomes = match self.actor.connection() {
            // A hung server or network must not hang remediation: bound the
            // statement on our side too (the server's statement_timeout cannot
            // fire if the server does not answer at all).
            Some(conn) => {
                let signalled = executor::signal_batch(conn, &batched);
                match tokio::time::timeout(self.limit, signalled).await {
                    Ok(o) => o,
                    Err(_) => {
                        let m = format!(
                            "no answer within {}: the signal may or may not have been delivered",
                            humantime::format_duration(self.limit)
                        );
                        vec![Outcome::Failed(m); batch.len()]
                    }
                }
            }
            None => vec![Outcome::Failed("lost the actor connection".into()); batch.len()],
        };
        if outcomes.iter().any(|o| matches!(o, Outcome::Failed(_))) {
            self.actor.reset();
        }
        outcomes
            .iter()
            .zip(batch)
            .map(|(o, &(_, signal))| (decision_of(o), o.sentence(signal)))
            .collect()
    }

    async fn close(self) {
        self.actor.close().await;
    }
}

/// The audit decision (and metric outcome) of a signal's outcome.
fn decision_of(o: &Outcome) -> Decision {
    match o {
        Outcome::Signalled => Decision::Acted,
        Outcome::Gone | Outcome::Changed(_) => Decision::Skipped,
        Outcome::Refused(_) => Decision::Refused,
        Outcome::Failed(_) => Decision::Failed,
    }
}
