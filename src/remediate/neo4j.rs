//! Terminating Neo4j transactions: the re-check, the kill statement, and
//! the per-target loop, under the same bounds as PostgreSQL remediation
//! (mode, pause switch, budgets, pacing, write-ahead audit).
//!
//! Neo4j has no way to re-check and terminate in one statement, so the
//! actor re-reads the transaction right before terminating it and
//! terminates only if it is still there and still matches: same id (ids
//! are never reused: a counter per database), same user, same query when
//! the policy conditions on the query, not ending, still meeting the
//! policy's conditions. The window between the two statements is one round
//! trip; the transaction id makes it safe (a transaction that ended in it
//! is "not found", never another one).
//!
//! Neo4j has no advisory lock: with several dbwarden replicas each may act.
//! A second TERMINATE of the same transaction answers "Transaction not
//! found." and is recorded as skipped, and not charged to the budget.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use neo4rs::Row;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::audit::{AuditRecord, Decision, Mode};
use super::neo4j_policy::{self, Neo4jCandidate, Neo4jConditions, Neo4jPolicy};
use super::policy::Gates;
use super::runner::{Remediation, gate_inputs, now_ms};
use crate::config::Neo4jTarget;
use crate::observe::PollError;
use crate::observe::neo4j::{
    Generation, Neo4jClient, Neo4jTransaction, classify, listed_query, shown_transaction,
    statements,
};
use crate::state::SharedState;
use crate::state::alerts::FiringAlerts;

/// What became of one terminate.
#[derive(Debug, Clone, PartialEq)]
pub enum Neo4jOutcome {
    /// The server said "Transaction terminated." (or "Query found" before 4.4).
    Terminated,
    /// The transaction is gone ("Transaction not found.", or the re-check found none).
    Gone,
    /// Still there but no longer matching: why.
    Changed(String),
    /// The server refused (no TERMINATE TRANSACTION privilege, ...).
    Refused(String),
    /// No answer, or an answer we could not read.
    Failed(String),
}

impl Neo4jOutcome {
    pub fn sentence(&self) -> String {
        match self {
            Neo4jOutcome::Terminated => "terminated".into(),
            Neo4jOutcome::Gone => "not terminated: the transaction had ended".into(),
            Neo4jOutcome::Changed(why) => format!("not terminated: {why}"),
            Neo4jOutcome::Refused(why) => format!("refused by the server: {why}"),
            Neo4jOutcome::Failed(why) => format!("failed: {why}"),
        }
    }

    fn label(&self) -> (Decision, &'static str) {
        match self {
            Neo4jOutcome::Terminated => (Decision::Acted, "acted"),
            Neo4jOutcome::Gone | Neo4jOutcome::Changed(_) => (Decision::Skipped, "skipped"),
            Neo4jOutcome::Refused(_) => (Decision::Refused, "refused"),
            Neo4jOutcome::Failed(_) => (Decision::Failed, "failed"),
        }
    }
}

/// Why the re-read transaction no longer qualifies, if it does not.
pub fn changed(
    before: &Neo4jTransaction,
    now: &Neo4jTransaction,
    conditions: &Neo4jConditions,
) -> Option<String> {
    if now.own {
        return Some("it is one of dbwarden's own".into());
    }
    if now.username != before.username {
        return Some(format!(
            "its user changed from {:?} to {:?}",
            before.username, now.username
        ));
    }
    let on_text = conditions.match_query.is_some() || conditions.ignore_query.is_some();
    if on_text && now.query != before.query {
        return Some("its query changed".into());
    }
    if now.status.eq_ignore_ascii_case("Terminated") || now.status.eq_ignore_ascii_case("Closing") {
        return Some(format!("it is already {}", now.status));
    }
    if neo4j_policy::matches(conditions, now).is_none() {
        return Some(format!(
            "it no longer meets the policy (status {}, running {} ms)",
            now.status, now.elapsed_ms
        ));
    }
    None
}

fn refused_or_failed(e: PollError) -> Neo4jOutcome {
    if e.kind == crate::observe::PollErrorKind::Auth || e.message.contains("Forbidden") {
        Neo4jOutcome::Refused(e.message)
    } else {
        Neo4jOutcome::Failed(e.message)
    }
}

async fn rows(
    client: &Neo4jClient,
    text: &str,
    param: (&str, neo4rs::BoltType),
) -> Result<Vec<Row>, PollError> {
    client
        .rows(None, client.query(text).param(param.0, param.1))
        .await
        .map_err(classify)
}

/// Re-checks the transaction and terminates it if it still qualifies.
pub async fn terminate(
    client: &Neo4jClient,
    generation: Generation,
    c: &Neo4jCandidate,
    conditions: &Neo4jConditions,
) -> Neo4jOutcome {
    let id = &c.transaction.id;
    // The re-check.
    let current = match generation {
        Generation::Procedures => {
            // dbms.listQueries has no filter: read them all, pick ours.
            match client
                .rows(None, client.query(statements::LIST_QUERIES))
                .await
                .map_err(classify)
            {
                Ok(rs) => rs
                    .iter()
                    .filter_map(|r| listed_query(r).ok())
                    .find(|t| &t.id == id),
                Err(e) => return refused_or_failed(e),
            }
        }
        _ => match rows(
            client,
            statements::SHOW_TRANSACTION,
            ("id", id.as_str().into()),
        )
        .await
        {
            Ok(rs) => match rs.first().map(shown_transaction) {
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => return Neo4jOutcome::Failed(e.message),
                None => None,
            },
            Err(e) => return refused_or_failed(e),
        },
    };
    let Some(current) = current else {
        return Neo4jOutcome::Gone;
    };
    if let Some(why) = changed(&c.transaction, &current, conditions) {
        return Neo4jOutcome::Changed(why);
    }
    // The kill.
    let (text, param): (&str, neo4rs::BoltType) = match generation {
        Generation::Procedures => (statements::KILL_QUERY, id.as_str().into()),
        _ => (statements::TERMINATE_TRANSACTIONS, vec![id.clone()].into()),
    };
    let name = if generation == Generation::Procedures {
        "id"
    } else {
        "ids"
    };
    match rows(client, text, (name, param)).await {
        Ok(rs) => {
            let message = rs
                .first()
                .and_then(|r| r.get::<String>("message").ok())
                .unwrap_or_default();
            match message.as_str() {
                "Transaction terminated." | "Query found" => Neo4jOutcome::Terminated,
                "Transaction not found." => Neo4jOutcome::Gone,
                m if m.starts_with("No Query found") => Neo4jOutcome::Gone,
                "" => Neo4jOutcome::Failed("the server answered no message".into()),
                other => Neo4jOutcome::Failed(format!("the server answered {other:?}")),
            }
        }
        Err(e) => refused_or_failed(e),
    }
}

pub async fn run(
    rem: Arc<Remediation>,
    target: Neo4jTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("remediation", target = %target.name, kind = "neo4j");
    run_inner(rem, target, state, alerts, cancel)
        .instrument(span)
        .await
}

async fn run_inner(
    rem: Arc<Remediation>,
    target: Neo4jTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) {
    let Some(mut updates) = state.subscribe(&target.name) else {
        return;
    };
    let policies: Vec<Neo4jPolicy> = rem
        .settings
        .neo4j_policies
        .values()
        .filter(|p| p.applies_to(&target.name))
        .cloned()
        .collect();
    let mode = rem.settings.mode;
    let outcomes: &[&str] = match mode {
        Mode::Observe => &[],
        Mode::DryRun => &["would_act", "audit_failed", "budget_exhausted"],
        Mode::Enforce => &[
            "acted",
            "skipped",
            "refused",
            "failed",
            "audit_failed",
            "budget_exhausted",
        ],
    };
    for p in &policies {
        for o in outcomes {
            rem.metrics
                .init_action(&target.name, &p.name, "terminate", o, mode.as_str());
        }
    }
    let limit = target.settings.poll_timeout();
    let mut client: Option<Neo4jClient> = None;
    let mut was_paused = false;
    let mut exhausted = false;
    // Transactions not to decide on again while they exist (dry-run: already
    // reported; enforce: refused by the server).
    let mut settled: HashSet<(String, String)> = HashSet::new();
    rem.publish_budgets(&target.name);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = updates.changed() => if changed.is_err() { break },
        }
        let paused = rem.pause.is_paused();
        rem.metrics.set_paused(paused);
        let Some(status) = state.get(&target.name) else {
            continue;
        };
        let Some(snapshot) = status.neo4j_snapshot.clone().filter(|_| status.up) else {
            continue;
        };
        settled.retain(|k| {
            snapshot
                .transactions
                .iter()
                .any(|t| (t.database.clone(), t.id.clone()) == *k)
        });
        let (failing, firing) = gate_inputs(&status, &alerts);
        let gates = Gates {
            failing: &failing,
            firing_alerts: &firing,
        };
        let (evaluations, chosen) = neo4j_policy::select(&policies, &target.name, &snapshot, gates);
        for e in &evaluations {
            rem.metrics
                .set_candidates(&target.name, &e.policy, e.candidates.len());
        }
        rem.publish_budgets(&target.name);
        if mode == Mode::Observe || chosen.is_empty() {
            continue;
        }
        if paused {
            if !was_paused {
                tracing::warn!(
                    candidates = chosen.len(),
                    "remediation is paused: not acting"
                );
            }
            was_paused = true;
            continue;
        }
        was_paused = false;
        for c in &chosen {
            if cancel.is_cancelled() {
                break;
            }
            let key = (c.transaction.database.clone(), c.transaction.id.clone());
            if settled.contains(&key) {
                continue;
            }
            let Some(spent_at) =
                rem.spend_one(&target.name, &c.policy, "terminate", &mut exhausted)
            else {
                continue;
            };
            let id = format!(
                "{}-{}-{}",
                rem.settings.instance(),
                c.transaction.id,
                now_ms()
            );
            let conditions = policies
                .iter()
                .find(|p| p.name == c.policy)
                .map(|p| p.conditions.clone())
                .unwrap_or_default();
            let outcome = act(
                &rem,
                &target,
                &mut client,
                snapshot.generation,
                &id,
                c,
                &conditions,
                limit,
            )
            .await;
            match &outcome {
                Some(Neo4jOutcome::Terminated) => {}
                None if mode == Mode::DryRun => {
                    settled.insert(key);
                }
                Some(Neo4jOutcome::Refused(_)) => {
                    rem.refund(&target.name, spent_at);
                    settled.insert(key);
                }
                _ => rem.refund(&target.name, spent_at),
            }
            if outcome.is_none() && mode == Mode::Enforce {
                // The audit failed: act on nothing more this cycle.
                break;
            }
            if mode == Mode::Enforce && !rem.settings.pacing.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(rem.settings.pacing) => {}
                }
            }
        }
        rem.publish_budgets(&target.name);
    }
}

/// One decision: audit, then (in enforce mode) the re-checked terminate and
/// its outcome. `None` when nothing was sent: dry-run, or the intent could
/// not be written.
#[allow(clippy::too_many_arguments)] // one decision's whole context, passed once
async fn act(
    rem: &Remediation,
    target: &Neo4jTarget,
    client: &mut Option<Neo4jClient>,
    generation: Generation,
    id: &str,
    c: &Neo4jCandidate,
    conditions: &Neo4jConditions,
    limit: Duration,
) -> Option<Neo4jOutcome> {
    let s = &rem.settings;
    let record = |decision: Decision, outcome: String| {
        AuditRecord::for_transaction(
            SystemTime::now(),
            id,
            s.instance(),
            &target.name,
            s.mode,
            decision,
            c,
            outcome,
            s.query_max_chars as usize,
            s.redact_queries,
        )
    };
    let tx = &c.transaction.id;
    if s.mode == Mode::DryRun {
        let written = rem
            .audit(record(Decision::WouldAct, "would terminate".into()), false)
            .await;
        tracing::info!(transaction = %tx, policy = %c.policy, reason = %c.reason, "dry-run: would terminate");
        rem.metrics.action(
            &target.name,
            &c.policy,
            "terminate",
            if written { "would_act" } else { "audit_failed" },
            s.mode.as_str(),
        );
        return None;
    }
    // Write-ahead: the intent is on disk before anything is sent.
    if !rem
        .audit(record(Decision::Intent, "about to terminate".into()), true)
        .await
    {
        rem.metrics.action(
            &target.name,
            &c.policy,
            "terminate",
            "audit_failed",
            s.mode.as_str(),
        );
        return None;
    }
    let actor = match client {
        Some(c) => Ok(c.clone()),
        None => Neo4jClient::new(target, "remediate").inspect(|c| *client = Some(c.clone())),
    };
    let outcome = match actor {
        Ok(actor) => {
            match tokio::time::timeout(limit, terminate(&actor, generation, c, conditions)).await {
                Ok(o) => o,
                Err(_) => Neo4jOutcome::Failed(format!(
                    "no answer within {}: the transaction may or may not have been terminated",
                    humantime::format_duration(limit)
                )),
            }
        }
        Err(e) => Neo4jOutcome::Failed(e.message),
    };
    if matches!(outcome, Neo4jOutcome::Failed(_)) {
        // The connection may be mid-exchange: start over next time.
        *client = None;
    }
    let (decision, label) = outcome.label();
    let sentence = outcome.sentence();
    match decision {
        Decision::Acted => {
            tracing::warn!(transaction = %tx, policy = %c.policy, reason = %c.reason, "terminated a transaction")
        }
        _ => {
            tracing::info!(transaction = %tx, policy = %c.policy, outcome = %sentence, "did not terminate")
        }
    }
    rem.audit(record(decision, sentence), false).await;
    rem.metrics
        .action(&target.name, &c.policy, "terminate", label, s.mode.as_str());
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(user: &str, status: &str, ms: i64, query: Option<&str>) -> Neo4jTransaction {
        Neo4jTransaction {
            database: "neo4j".into(),
            id: "neo4j-transaction-7".into(),
            query_id: None,
            username: user.into(),
            query: query.map(String::from),
            status: status.into(),
            elapsed_ms: ms,
            own: false,
        }
    }

    #[test]
    fn the_recheck_names_what_changed() {
        let c = Neo4jConditions {
            running_for: Some(Duration::from_secs(1)),
            match_query: Some(crate::settings::Pattern(
                regex::Regex::new("MATCH").unwrap(),
            )),
            ..Neo4jConditions::default()
        };
        let before = tx("alice", "Running", 5_000, Some("MATCH (n) RETURN n"));
        assert_eq!(changed(&before, &before.clone(), &c), None);
        let later = tx("alice", "Running", 6_000, Some("MATCH (n) RETURN n"));
        assert_eq!(changed(&before, &later, &c), None, "still running: fine");
        assert_eq!(
            changed(
                &before,
                &tx("bob", "Running", 6_000, Some("MATCH (n) RETURN n")),
                &c
            )
            .as_deref(),
            Some("its user changed from \"alice\" to \"bob\"")
        );
        assert_eq!(
            changed(
                &before,
                &tx("alice", "Running", 6_000, Some("CREATE (n)")),
                &c
            )
            .as_deref(),
            Some("its query changed")
        );
        assert_eq!(
            changed(
                &before,
                &tx("alice", "Terminated", 6_000, Some("MATCH (n) RETURN n")),
                &c
            )
            .as_deref(),
            Some("it is already Terminated")
        );
        let mut own = later.clone();
        own.own = true;
        assert!(changed(&before, &own, &c).is_some());
    }
}
