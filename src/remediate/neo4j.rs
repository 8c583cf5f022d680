//! Neo4j as a kind of remediation target: transactions selected by
//! [`neo4j_policy::select`], and the re-check and kill statement that act on
//! them, run by the same loop as PostgreSQL ([`super::runner`]) under the
//! same bounds (mode, pause switch, budgets, pacing, write-ahead audit).
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

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use neo4rs::Row;

use super::RemediationSettings;
use super::audit::{AuditRecord, Decision};
use super::executor::{Holder, Signal};
use super::neo4j_policy::{self, Neo4jCandidate, Neo4jConditions, Neo4jPolicy};
use super::policy::Gates;
use super::runner::{Context, Event, Kind, Selection};
use crate::observe::PollError;
use crate::observe::neo4j::{
    Generation, Neo4jClient, Neo4jSnapshot, Neo4jTarget, Neo4jTransaction, classify, listed_query,
    shown_transaction, statements,
};

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

    /// The audit decision (and metric outcome) it records.
    fn decision(&self) -> Decision {
        match self {
            Neo4jOutcome::Terminated => Decision::Acted,
            Neo4jOutcome::Gone | Neo4jOutcome::Changed(_) => Decision::Skipped,
            Neo4jOutcome::Refused(_) => Decision::Refused,
            Neo4jOutcome::Failed(_) => Decision::Failed,
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

/// A Neo4j target's actor client (a pool of one connection), shared by
/// the target's remediation loops (transactions, index rebuild), so that a
/// target has one actor connection however many of them act: opened at
/// the first action, rebuilt after a failure.
#[derive(Clone, Default)]
pub struct ActorClient(Arc<Mutex<Option<Neo4jClient>>>);

impl ActorClient {
    /// The client kept from before, or a new one.
    pub fn get(&self, target: &Neo4jTarget) -> Result<Neo4jClient, PollError> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*kept {
            Some(c) => Ok(c.clone()),
            None => Neo4jClient::new(target, "remediate").inspect(|c| *kept = Some(c.clone())),
        }
    }

    /// Forgets the client: its connection may be mid-exchange.
    pub fn reset(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One Neo4j target's side of the loop: the target, and the client of its
/// actor connection.
pub struct Neo4j {
    target: Neo4jTarget,
    client: ActorClient,
    /// Bound on each re-check and terminate, on our side.
    limit: Duration,
}

impl Neo4j {
    pub fn new(target: Neo4jTarget) -> Self {
        let limit = target.settings.poll_timeout();
        Neo4j {
            target,
            client: ActorClient::default(),
            limit,
        }
    }

    /// The actor client, to share with the target's other loops.
    pub fn actor(&self) -> ActorClient {
        self.client.clone()
    }

    fn client(&mut self) -> Result<Neo4jClient, PollError> {
        self.client.get(&self.target)
    }
}

impl Kind for Neo4j {
    type Snapshot = Neo4jSnapshot;
    type Policy = Neo4jPolicy;
    type Candidate = Neo4jCandidate;
    /// A transaction's database and id (ids are never reused).
    type Key = (String, String);

    fn target(&self) -> &str {
        &self.target.name
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("remediation", target = %self.target.name, kind = "neo4j")
    }

    fn policies(&self, settings: &RemediationSettings) -> Vec<Neo4jPolicy> {
        settings
            .neo4j_policies
            .values()
            .filter(|p| p.applies_to(&self.target.name))
            .cloned()
            .collect()
    }

    fn series(p: &Neo4jPolicy) -> (&str, &'static [Signal]) {
        (&p.name, &[Signal::Terminate])
    }

    fn select(
        &mut self,
        policies: &[Neo4jPolicy],
        snapshot: &Neo4jSnapshot,
        gates: Gates<'_>,
    ) -> Selection<Neo4jCandidate> {
        let (evaluations, chosen) =
            neo4j_policy::select(policies, &self.target.name, snapshot, gates);
        Selection::of(
            evaluations
                .into_iter()
                .map(|e| (e.policy, e.candidates.len()))
                .collect(),
            chosen,
        )
    }

    fn key(c: &Neo4jCandidate) -> (String, String) {
        (c.transaction.database.clone(), c.transaction.id.clone())
    }

    fn exists(snapshot: &Neo4jSnapshot, (database, id): &(String, String)) -> bool {
        snapshot
            .transactions
            .iter()
            .any(|t| t.database == *database && t.id == *id)
    }

    fn policy(c: &Neo4jCandidate) -> &str {
        &c.policy
    }

    fn subject(c: &Neo4jCandidate) -> String {
        c.transaction.id.clone()
    }

    fn first_signal(_: &Neo4jCandidate) -> Signal {
        Signal::Terminate
    }

    fn record(
        cx: &Context<'_, Self>,
        id: &str,
        c: &Neo4jCandidate,
        _: Signal,
        decision: Decision,
        outcome: String,
    ) -> AuditRecord {
        let s = cx.settings;
        AuditRecord::for_transaction(
            SystemTime::now(),
            id,
            s.instance(),
            cx.target,
            s.mode,
            decision,
            c,
            outcome,
            s.query_max_chars as usize,
            s.redact_queries,
        )
    }

    fn log(c: &Neo4jCandidate, _: Signal, event: Event<'_>) {
        let (tx, policy, reason) = (&c.transaction.id, &c.policy, &c.reason);
        match event {
            // Not logged, as before the loops were one.
            Event::Settled => {}
            Event::WouldAct => {
                tracing::info!(transaction = %tx, policy = %policy, reason = %reason, "dry-run: would terminate")
            }
            Event::Acted => {
                tracing::warn!(transaction = %tx, policy = %policy, reason = %reason, "terminated a transaction")
            }
            Event::NotActed(outcome) => {
                tracing::info!(transaction = %tx, policy = %policy, outcome = %outcome, "did not terminate")
            }
        }
    }

    /// Neo4j has no actor lock: every instance may act (a second terminate
    /// of the same transaction is "not found", skipped and not charged).
    async fn contend(&mut self, _: &Context<'_, Self>) -> Holder {
        Holder::Us
    }

    /// The re-check and the terminate, bounded on our side.
    async fn act(
        &mut self,
        cx: &Context<'_, Self>,
        c: &Neo4jCandidate,
        _: Signal,
    ) -> (Decision, String) {
        let conditions = cx
            .policies
            .iter()
            .find(|p| p.name == c.policy)
            .map(|p| p.conditions.clone())
            .unwrap_or_default();
        let generation = cx.snapshot.generation;
        let outcome = match self.client() {
            Ok(client) => {
                let terminated = terminate(&client, generation, c, &conditions);
                match tokio::time::timeout(self.limit, terminated).await {
                    Ok(o) => o,
                    Err(_) => Neo4jOutcome::Failed(format!(
                        "no answer within {}: the transaction may or may not have been terminated",
                        humantime::format_duration(self.limit)
                    )),
                }
            }
            Err(e) => Neo4jOutcome::Failed(e.message),
        };
        if matches!(outcome, Neo4jOutcome::Failed(_)) {
            // The connection may be mid-exchange: start over next time.
            self.client.reset();
        }
        (outcome.decision(), outcome.sentence())
    }

    async fn close(self) {}
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
