//! Which Neo4j transactions a policy selects, and why. Pure, like
//! [`super::policy`]: a snapshot and policies in, decisions out.
//!
//! Conditions combine with AND; an ignore always wins over a match. Never
//! selected, whatever the policy says: dbwarden's own transactions (tagged
//! with its transaction metadata), transactions already ending (status
//! Terminated or Closing), transactions on the `system` database unless the
//! policy names it in `match_databases`, and transactions whose query text
//! is not visible when the policy conditions on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::{Gates, Victims};
use crate::evaluate::CheckName;
use crate::observe::neo4j::{Neo4jSnapshot, Neo4jTransaction};
use crate::settings::{Pattern, duration, non_empty};

/// Transactions on this database administer users, roles and databases.
pub const SYSTEM_DATABASE: &str = "system";

/// The conditions of a Neo4j policy, `[remediation.neo4j_policies.<name>.when]`.
/// Every `Some` / non-empty field must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Neo4jConditions {
    /// Running (elapsed) for at least this long.
    #[serde(with = "duration::option")]
    pub running_for: Option<Duration>,
    /// The status must be one of these, as the server says it (Running,
    /// Blocked); empty: any status.
    #[serde(rename = "status")]
    pub statuses: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub match_users: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub ignore_users: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub match_databases: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub ignore_databases: Vec<String>,
    /// Searched in the current query (not anchored).
    pub match_query: Option<Pattern>,
    pub ignore_query: Option<Pattern>,
}

/// A Neo4j policy: `[remediation.neo4j_policies.<name>]`. Its only action
/// is to terminate the transaction (`TERMINATE TRANSACTIONS` on 4.4+,
/// `dbms.killQuery` before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jPolicy {
    #[serde(skip)]
    pub name: String,
    /// The Neo4j targets it applies to; `None` means every Neo4j target.
    pub targets: Option<Vec<String>>,
    /// Always "terminate" (the default).
    #[serde(default = "terminate")]
    pub action: String,
    #[serde(default = "all")]
    pub victims: Victims,
    #[serde(default = "max_per_cycle")]
    pub max_per_cycle: u32,
    /// Act only while all of these checks fail on the target.
    #[serde(default)]
    pub only_while_failing: Vec<CheckName>,
    /// Act only while all of these alerts fire for the target.
    #[serde(default)]
    pub only_while_alerts: Vec<String>,
    #[serde(default, rename = "when")]
    pub conditions: Neo4jConditions,
}

fn terminate() -> String {
    "terminate".to_string()
}

fn all() -> Victims {
    Victims::All
}

fn max_per_cycle() -> u32 {
    super::settings::DEFAULT_MAX_PER_CYCLE
}

impl Neo4jPolicy {
    pub fn applies_to(&self, target: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == target))
    }
}

/// Why a transaction that met a policy's conditions is not touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Neo4jProtection {
    /// One of dbwarden's own transactions.
    Own,
    /// Already Terminated or Closing.
    Ending,
    /// On the system database, which the policy does not name.
    SystemDatabase,
    /// The policy conditions on query text, which the server did not show.
    QueryTextHidden,
}

/// A transaction a policy selected, and the sentence that explains why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neo4jCandidate {
    pub policy: String,
    pub transaction: Neo4jTransaction,
    pub reason: String,
}

/// Everything one policy decided about one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neo4jPolicyEvaluation {
    pub policy: String,
    pub gate_open: bool,
    pub gate_reason: String,
    /// Transactions meeting every condition, longest-running first.
    pub candidates: Vec<Neo4jCandidate>,
    pub protected: Vec<(Neo4jTransaction, Neo4jProtection)>,
    /// The candidates chosen for this cycle (victim choice and cap applied).
    pub selected: Vec<Neo4jCandidate>,
}

/// The reason the conditions hold, or `None` when one does not.
pub fn matches(c: &Neo4jConditions, t: &Neo4jTransaction) -> Option<String> {
    let mut why = Vec::new();
    if let Some(min) = c.running_for {
        if t.elapsed_ms < 0 || Duration::from_millis(t.elapsed_ms as u64) < min {
            return None;
        }
        why.push(format!(
            "running {} (>= {})",
            crate::evaluate::fmt_secs(t.elapsed_ms as f64 / 1000.0),
            humantime::format_duration(min)
        ));
    }
    if !c.statuses.is_empty() {
        if !c.statuses.iter().any(|s| s.eq_ignore_ascii_case(&t.status)) {
            return None;
        }
        why.push(format!("status {}", t.status));
    }
    if !c.match_users.is_empty() {
        if !c.match_users.contains(&t.username) {
            return None;
        }
        why.push(format!("user {}", t.username));
    }
    if c.ignore_users.contains(&t.username) {
        return None;
    }
    if !c.match_databases.is_empty() {
        if !c.match_databases.contains(&t.database) {
            return None;
        }
        why.push(format!("database {}", t.database));
    }
    if c.ignore_databases.contains(&t.database) {
        return None;
    }
    if let Some(re) = &c.match_query {
        if !t.query.as_deref().is_some_and(|q| re.is_match(q)) {
            return None;
        }
        why.push(format!("query matches /{}/", re.as_str()));
    }
    if let Some(re) = &c.ignore_query
        && t.query.as_deref().is_some_and(|q| re.is_match(q))
    {
        return None;
    }
    Some(why.join(", "))
}

fn protection(p: &Neo4jPolicy, t: &Neo4jTransaction) -> Option<Neo4jProtection> {
    if t.own {
        return Some(Neo4jProtection::Own);
    }
    if t.status.eq_ignore_ascii_case("Terminated") || t.status.eq_ignore_ascii_case("Closing") {
        return Some(Neo4jProtection::Ending);
    }
    if t.database == SYSTEM_DATABASE
        && !p
            .conditions
            .match_databases
            .iter()
            .any(|d| d == SYSTEM_DATABASE)
    {
        return Some(Neo4jProtection::SystemDatabase);
    }
    let on_text = p.conditions.match_query.is_some() || p.conditions.ignore_query.is_some();
    if on_text && t.query.is_none() {
        return Some(Neo4jProtection::QueryTextHidden);
    }
    None
}

/// Evaluates one policy on one snapshot.
pub fn evaluate_policy(
    policy: &Neo4jPolicy,
    snapshot: &Neo4jSnapshot,
    gates: Gates<'_>,
) -> Neo4jPolicyEvaluation {
    let (gate_open, gate_reason) =
        super::policy::gate(&policy.only_while_failing, &policy.only_while_alerts, gates);
    let mut candidates = Vec::new();
    let mut protected = Vec::new();
    for t in &snapshot.transactions {
        // A hidden query passes `ignore_query` here and is then protected
        // (QueryTextHidden): what cannot be read is never acted on.
        let Some(reason) = matches(&policy.conditions, t) else {
            continue;
        };
        if let Some(p) = protection(policy, t) {
            protected.push((t.clone(), p));
            continue;
        }
        candidates.push(Neo4jCandidate {
            policy: policy.name.clone(),
            transaction: t.clone(),
            reason,
        });
    }
    // Longest-running first; the id breaks ties so the order is total.
    candidates.sort_by(|a, b| {
        b.transaction
            .elapsed_ms
            .cmp(&a.transaction.elapsed_ms)
            .then_with(|| a.transaction.id.cmp(&b.transaction.id))
    });
    let selected = if !gate_open {
        Vec::new()
    } else {
        let cap = match policy.victims {
            Victims::Oldest => 1,
            Victims::All => policy.max_per_cycle as usize,
        };
        let gated = !policy.only_while_failing.is_empty() || !policy.only_while_alerts.is_empty();
        candidates
            .iter()
            .take(cap)
            .cloned()
            .map(|mut c| {
                c.reason = super::policy::with_gate(c.reason, gated, &gate_reason);
                c
            })
            .collect()
    };
    Neo4jPolicyEvaluation {
        policy: policy.name.clone(),
        gate_open,
        gate_reason,
        candidates,
        protected,
        selected,
    }
}

/// Evaluates every policy that applies to `target`, in configuration order;
/// a transaction selected by two policies is acted on once, by the first.
pub fn select(
    policies: &[Neo4jPolicy],
    target: &str,
    snapshot: &Neo4jSnapshot,
    gates: Gates<'_>,
) -> (Vec<Neo4jPolicyEvaluation>, Vec<Neo4jCandidate>) {
    let evaluations: Vec<Neo4jPolicyEvaluation> = policies
        .iter()
        .filter(|p| p.applies_to(target))
        .map(|p| evaluate_policy(p, snapshot, gates))
        .collect();
    let mut chosen: Vec<Neo4jCandidate> = Vec::new();
    for e in &evaluations {
        for c in &e.selected {
            if !chosen.iter().any(|x| {
                x.transaction.id == c.transaction.id
                    && x.transaction.database == c.transaction.database
            }) {
                chosen.push(c.clone());
            }
        }
    }
    (evaluations, chosen)
}

#[cfg(test)]
#[path = "neo4j_policy_tests.rs"]
mod tests;
