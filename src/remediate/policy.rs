//! Which sessions a policy selects, and why. Pure: a snapshot and policies
//! in, decisions out; no I/O, no clock.
//!
//! A policy's conditions combine with AND: a session is a candidate only when
//! every condition the policy sets holds. (pt-kill combines its criteria with
//! OR, a known trap; dbwarden does not.) An ignore always wins over a match.
//!
//! Some sessions are never candidates, whatever the policy says:
//! dbwarden's own sessions and every backend that is not a client backend
//! (walsenders, autovacuum, background and parallel workers, ...). Superusers
//! and roles with REPLICATION are protected too, unless the policy names them
//! in `match_users`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::evaluate::CheckName;
pub use crate::evaluate::NameSet;
use crate::evaluate::scope::{client_addr, with_scope};
use crate::observe::{APPLICATION_NAME, PgSnapshot, Session, SessionState};
use crate::settings::duration;

/// What to do to a selected session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// `pg_cancel_backend`: stop the running query, keep the session.
    Cancel,
    /// `pg_terminate_backend`: end the session.
    Terminate,
    /// Cancel, then terminate if the same query is still there after `grace`.
    CancelThenTerminate {
        #[serde(serialize_with = "crate::settings::duration::serialize")]
        grace: Duration,
    },
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Terminate => "terminate",
            Action::CancelThenTerminate { .. } => "cancel_then_terminate",
        }
    }
}

/// A policy's `action` as written; with `grace` it makes an [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Cancel,
    Terminate,
    CancelThenTerminate,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Cancel => "cancel",
            ActionKind::Terminate => "terminate",
            ActionKind::CancelThenTerminate => "cancel_then_terminate",
        }
    }
}

/// Which of the candidates to act on in one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Victims {
    /// Every candidate, oldest first, up to `max_per_cycle`.
    All,
    /// Only the oldest candidate.
    Oldest,
}

with_scope! {
/// The conditions of a policy, `[remediation.policies.<name>.when]`. Every
/// `Some` / non-empty field must hold; the session scope's lists
/// (`match_users`, `ignore_users`, ...) are the checks' own
/// ([`crate::evaluate::Scope`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// The session's state must be one of these (empty: any state).
    #[serde(rename = "state")]
    pub states: Vec<SessionState>,
    /// Idle (state idle, idle in transaction or idle in transaction (aborted))
    /// for at least this long (since `state_change`).
    #[serde(with = "duration::option")]
    pub idle_for: Option<Duration>,
    /// Active, with the current query running for at least this long.
    #[serde(with = "duration::option")]
    pub query_running_for: Option<Duration>,
    /// A transaction open for at least this long.
    #[serde(with = "duration::option")]
    pub transaction_open_for: Option<Duration>,
    /// Connected for at least this long.
    #[serde(with = "duration::option")]
    pub connected_for: Option<Duration>,
    /// The session is the root of a lock chain with at least this many
    /// sessions behind it ...
    pub blocking_waiters: Option<u32>,
    /// ... each of which has waited at least this long (default 0s).
    #[serde(with = "duration::option")]
    pub blocking_for: Option<Duration>,
}
}

impl Conditions {
    /// The lock-chain condition, when `blocking_waiters` is set.
    pub fn blocking(&self) -> Option<Blocking> {
        self.blocking_waiters.map(|n| Blocking {
            min_waiters: n,
            waited_for: self.blocking_for.unwrap_or(Duration::ZERO),
        })
    }
}

/// The session blocks at least `min_waiters` sessions (directly or through a
/// chain), each of which has waited at least `waited_for`; and it waits on
/// no lock itself (it is the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub min_waiters: u32,
    pub waited_for: Duration,
}

/// A remediation policy: `[remediation.policies.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The table's key.
    #[serde(skip)]
    pub name: String,
    /// The targets it applies to; `None` means every PostgreSQL target.
    pub targets: Option<Vec<String>>,
    /// Required (`None` is reported at load).
    #[serde(rename = "action")]
    pub kind: Option<ActionKind>,
    /// With `cancel_then_terminate`: how long after the cancel to terminate.
    #[serde(default, with = "duration::option")]
    pub grace: Option<Duration>,
    #[serde(default = "all")]
    pub victims: Victims,
    #[serde(default = "max_per_cycle")]
    pub max_per_cycle: u32,
    /// Pressure gate: act only while all of these checks fail on the target
    /// (e.g. `connections_used`, the runbook's exhaustion scenario). Empty: always.
    #[serde(default)]
    pub only_while_failing: Vec<CheckName>,
    /// Second gate, for teams that want a human-visible alert before any
    /// action: act only while all of these alerts fire for the target, as
    /// Alertmanager reports them to `POST /api/v1/alertmanager`. Empty: no gate.
    #[serde(default)]
    pub only_while_alerts: Vec<String>,
    #[serde(default, rename = "when")]
    pub conditions: Conditions,
}

fn all() -> Victims {
    Victims::All
}

fn max_per_cycle() -> u32 {
    super::settings::DEFAULT_MAX_PER_CYCLE
}

impl Policy {
    pub fn applies_to(&self, target: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == target))
    }

    /// What the policy does. Validation refuses a policy without an
    /// action and `cancel_then_terminate` without a grace; were one to get
    /// here, it would only cancel.
    pub fn action(&self) -> Action {
        match (self.kind, self.grace) {
            (Some(ActionKind::Terminate), _) => Action::Terminate,
            (Some(ActionKind::CancelThenTerminate), Some(grace)) => {
                Action::CancelThenTerminate { grace }
            }
            _ => Action::Cancel,
        }
    }
}

/// Why a session that met a policy's conditions is not touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// One of dbwarden's own sessions.
    Own,
    /// Not a client backend (walsender, autovacuum, worker, ...).
    NotClientBackend,
    /// A superuser not named in the policy's `match_users`.
    Superuser,
    /// A role with REPLICATION not named in the policy's `match_users`.
    ReplicationRole,
    /// The policy conditions on query text, which this role may not read.
    QueryTextHidden,
}

/// The facts a decision rests on, in seconds at the snapshot's server time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionFacts {
    pub pid: i32,
    pub backend_start_us: Option<i64>,
    pub user: Option<Arc<str>>,
    pub database: Option<Arc<str>>,
    pub application_name: Arc<str>,
    pub client_addr: Option<Arc<str>>,
    pub state: SessionState,
    pub idle_seconds: Option<f64>,
    pub query_seconds: Option<f64>,
    pub transaction_seconds: Option<f64>,
    pub connected_seconds: Option<f64>,
    /// Sessions waiting behind this one (directly or transitively), long enough for the policy.
    pub blocked_waiters: u32,
    pub query_start_us: Option<i64>,
    pub xact_start_us: Option<i64>,
    pub state_change_us: Option<i64>,
    pub query: Arc<str>,
}

/// A session a policy selected, and the sentence that explains why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub policy: String,
    pub action: Action,
    pub facts: SessionFacts,
    pub reason: String,
    /// How old the session is by the policy's own measure; victims are ordered by it.
    pub age_seconds: f64,
}

/// Everything one policy decided about one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyEvaluation {
    pub policy: String,
    /// False when the pressure gate is closed; then nothing is selected.
    pub gate_open: bool,
    pub gate_reason: String,
    /// Sessions meeting every condition, oldest first (protected ones excluded).
    pub candidates: Vec<Candidate>,
    /// Sessions meeting every condition but protected, with why.
    pub protected: Vec<(SessionFacts, Protection)>,
    /// The candidates chosen for this cycle (victim choice and cap applied).
    pub selected: Vec<Candidate>,
    /// Seconds after the snapshot's time at which each session that falls
    /// short of this policy only in its durations meets them all, if it
    /// stays as it is (the same state, query and transaction), soonest
    /// first; empty while the gate is closed. The runner may bring the next
    /// poll forward to them ([`crossings`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crossings_seconds: Vec<f64>,
}

/// What the gates of a policy look at on one target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gates<'a> {
    /// Checks whose status is Fail on this target (the pressure gate).
    pub failing: &'a [CheckName],
    /// Alert names Alertmanager reports firing for this target (the alert gate).
    pub firing_alerts: &'a [String],
}

/// The gates of a policy: open when every named check fails and every
/// named alert fires; with the sentence that says why.
pub fn gate(
    only_while_failing: &[CheckName],
    only_while_alerts: &[String],
    gates: Gates<'_>,
) -> (bool, String) {
    let missing: Vec<&str> = only_while_failing
        .iter()
        .filter(|c| !gates.failing.contains(c))
        .map(|c| c.as_str())
        .collect();
    let silent: Vec<&str> = only_while_alerts
        .iter()
        .filter(|a| !gates.firing_alerts.contains(a))
        .map(String::as_str)
        .collect();
    let gate_open = missing.is_empty() && silent.is_empty();
    let mut reasons = Vec::new();
    if !only_while_failing.is_empty() {
        reasons.push(if missing.is_empty() {
            let names: Vec<&str> = only_while_failing.iter().map(|c| c.as_str()).collect();
            format!("under pressure: {} failing", names.join(", "))
        } else {
            format!("not under pressure: {} not failing", missing.join(", "))
        });
    }
    if !only_while_alerts.is_empty() {
        reasons.push(if silent.is_empty() {
            format!("alert firing: {}", only_while_alerts.join(", "))
        } else {
            format!("alert not firing: {}", silent.join(", "))
        });
    }
    let gate_reason = if reasons.is_empty() {
        "always".to_string()
    } else {
        reasons.join("; ")
    };
    (gate_open, gate_reason)
}

fn policy_gated(policy: &Policy) -> bool {
    !policy.only_while_failing.is_empty() || !policy.only_while_alerts.is_empty()
}

/// A selected session's reason, and why the gate was open when the policy
/// has one: the audit then says which checks or alerts let it act.
pub(super) fn with_gate(reason: String, gated: bool, gate_reason: &str) -> String {
    if gated {
        format!("{reason}; {gate_reason}")
    } else {
        reason
    }
}

/// Evaluates one policy on one snapshot.
pub fn evaluate_policy(
    policy: &Policy,
    snapshot: &PgSnapshot,
    gates: Gates<'_>,
) -> PolicyEvaluation {
    let (gate_open, gate_reason) =
        gate(&policy.only_while_failing, &policy.only_while_alerts, gates);

    let waiters = blocked_waiters(snapshot, policy.conditions.blocking().map(|b| b.waited_for));
    let mut candidates = Vec::new();
    let mut protected = Vec::new();
    let mut crossings_seconds = Vec::new();
    for s in &snapshot.sessions {
        let facts = facts(snapshot, s, waiters.get(&s.pid).copied().unwrap_or(0));
        let Some(reason) = matches(&policy.conditions, s, &facts) else {
            if gate_open && let Some(wait) = crossing_in(policy, s, facts) {
                crossings_seconds.push(wait);
            }
            continue;
        };
        if let Some(p) = protection(policy, s) {
            protected.push((facts, p));
            continue;
        }
        let age = policy_age(&policy.conditions, &facts);
        candidates.push(Candidate {
            policy: policy.name.clone(),
            action: policy.action(),
            facts,
            reason,
            age_seconds: age,
        });
    }
    // Oldest first; pid breaks ties so the order is total and stable.
    candidates.sort_by(|a, b| {
        b.age_seconds
            .total_cmp(&a.age_seconds)
            .then(a.facts.pid.cmp(&b.facts.pid))
    });
    let selected = if !gate_open {
        Vec::new()
    } else {
        let cap = match policy.victims {
            Victims::Oldest => 1,
            Victims::All => policy.max_per_cycle as usize,
        };
        candidates
            .iter()
            .take(cap)
            .cloned()
            .map(|mut c| {
                c.reason = with_gate(c.reason, policy_gated(policy), &gate_reason);
                c
            })
            .collect()
    };
    PolicyEvaluation {
        policy: policy.name.clone(),
        gate_open,
        gate_reason,
        candidates,
        protected,
        selected,
        crossings_seconds: {
            crossings_seconds.sort_by(f64::total_cmp);
            crossings_seconds
        },
    }
}

/// How long until `s` meets every condition of `policy`, when only its
/// durations (idle, query running, transaction open, connected) fall short
/// and the session stays as it is: the largest shortfall, provided the
/// session then matches and is not protected. `f` is its facts now, which
/// the session did not match with.
fn crossing_in(policy: &Policy, s: &Session, mut f: SessionFacts) -> Option<f64> {
    let c = &policy.conditions;
    let durations = [
        (f.idle_seconds, c.idle_for),
        (f.query_seconds, c.query_running_for),
        (f.transaction_seconds, c.transaction_open_for),
        (f.connected_seconds, c.connected_for),
    ];
    let mut wait: f64 = 0.0;
    for (value, min) in durations {
        if let Some(min) = min {
            // A duration the session does not have (idle while it runs a
            // query) does not come by waiting.
            wait = wait.max(min.as_secs_f64() - value?);
        }
    }
    if wait <= 0.0 {
        // Its durations are met: something else keeps it out.
        return None;
    }
    // Every duration as it will be then (a microsecond on, against rounding).
    let later = |v: Option<f64>| v.map(|v| v + wait + 1e-6);
    f.idle_seconds = later(f.idle_seconds);
    f.query_seconds = later(f.query_seconds);
    f.transaction_seconds = later(f.transaction_seconds);
    f.connected_seconds = later(f.connected_seconds);
    (matches(c, s, &f).is_some() && protection(policy, s).is_none()).then_some(wait)
}

/// Every policy's [`PolicyEvaluation::crossings_seconds`], soonest first.
pub fn crossings(evaluations: &[PolicyEvaluation]) -> Vec<Duration> {
    let mut all: Vec<Duration> = evaluations
        .iter()
        .flat_map(|e| &e.crossings_seconds)
        .map(|&s| Duration::from_secs_f64(s))
        .collect();
    all.sort();
    all
}

/// Evaluates every policy that applies to `target`, in configuration order,
/// and returns the sessions to act on this cycle: a session selected by two
/// policies is acted on once, by the first.
pub fn select(
    policies: &[Policy],
    target: &str,
    snapshot: &PgSnapshot,
    gates: Gates<'_>,
) -> (Vec<PolicyEvaluation>, Vec<Candidate>) {
    let evaluations: Vec<PolicyEvaluation> = policies
        .iter()
        .filter(|p| p.applies_to(target))
        .map(|p| evaluate_policy(p, snapshot, gates))
        .collect();
    let mut chosen: Vec<Candidate> = Vec::new();
    for e in &evaluations {
        for c in &e.selected {
            if !chosen.iter().any(|x| x.facts.pid == c.facts.pid) {
                chosen.push(c.clone());
            }
        }
    }
    (evaluations, chosen)
}

/// True for sessions dbwarden opened (its application_name, or any name it derives from it).
pub fn is_own(s: &Session) -> bool {
    s.is_self
        || &*s.application_name == APPLICATION_NAME
        || s.application_name.starts_with("dbwarden-")
}

fn protection(policy: &Policy, s: &Session) -> Option<Protection> {
    if is_own(s) {
        return Some(Protection::Own);
    }
    if !s.is_client_backend() {
        return Some(Protection::NotClientBackend);
    }
    let named = s
        .user
        .as_ref()
        .is_some_and(|u| policy.conditions.match_users.iter().any(|m| **m == **u));
    if s.is_superuser && !named {
        return Some(Protection::Superuser);
    }
    if s.is_replication_role && !named {
        return Some(Protection::ReplicationRole);
    }
    let c = &policy.conditions;
    if (c.match_query.is_some() || c.ignore_query.is_some()) && !query_visible(&s.query) {
        return Some(Protection::QueryTextHidden);
    }
    None
}

/// pg_stat_activity shows this instead of the text to roles without pg_read_all_stats.
fn query_visible(q: &str) -> bool {
    q != "<insufficient privilege>"
}

fn facts(snap: &PgSnapshot, s: &Session, blocked_waiters: u32) -> SessionFacts {
    let idle = if matches!(
        s.state,
        SessionState::Idle
            | SessionState::IdleInTransaction
            | SessionState::IdleInTransactionAborted
    ) {
        snap.age_seconds(s.state_change_us)
    } else {
        None
    };
    let query = if s.state == SessionState::Active {
        snap.age_seconds(s.query_start_us)
    } else {
        None
    };
    SessionFacts {
        pid: s.pid,
        backend_start_us: s.backend_start_us,
        user: s.user.clone(),
        database: s.database.clone(),
        application_name: s.application_name.clone(),
        client_addr: s.client_addr.clone(),
        state: s.state,
        idle_seconds: idle,
        query_seconds: query,
        transaction_seconds: snap.age_seconds(s.xact_start_us),
        connected_seconds: snap.age_seconds(s.backend_start_us),
        blocked_waiters,
        query_start_us: s.query_start_us,
        xact_start_us: s.xact_start_us,
        state_change_us: s.state_change_us,
        query: s.query.clone(),
    }
}

/// The measure victims are ordered by: the duration the policy conditions
/// on (the first set of query, transaction, idle, connected), else connected time.
fn policy_age(c: &Conditions, f: &SessionFacts) -> f64 {
    let pick = if c.query_running_for.is_some() {
        f.query_seconds
    } else if c.transaction_open_for.is_some() {
        f.transaction_seconds
    } else if c.idle_for.is_some() {
        f.idle_seconds
    } else {
        f.connected_seconds
    };
    pick.or(f.connected_seconds).unwrap_or(0.0)
}

/// Returns the reason sentence when every condition holds, `None` otherwise.
fn matches(c: &Conditions, s: &Session, f: &SessionFacts) -> Option<String> {
    let mut why = Vec::new();
    if !c.states.is_empty() {
        if !c.states.contains(&s.state) {
            return None;
        }
        why.push(format!("state {}", s.state.as_str()));
    }
    let at_least =
        |value: Option<f64>, min: Option<Duration>, what: &str, why: &mut Vec<String>| -> bool {
            match min {
                None => true,
                Some(min) => match value {
                    Some(v) if v >= min.as_secs_f64() => {
                        why.push(format!("{what} {:.0}s ≥ {}s", v, min.as_secs()));
                        true
                    }
                    _ => false,
                },
            }
        };
    if !at_least(f.idle_seconds, c.idle_for, "idle", &mut why)
        || !at_least(
            f.query_seconds,
            c.query_running_for,
            "query running",
            &mut why,
        )
        || !at_least(
            f.transaction_seconds,
            c.transaction_open_for,
            "transaction open",
            &mut why,
        )
        || !at_least(f.connected_seconds, c.connected_for, "connected", &mut why)
    {
        return None;
    }
    // The scope (users, databases, applications, addresses, query): the
    // checks' own matcher; an ignore always wins over a match.
    if c.scope().excludes(s).is_some() {
        return None;
    }
    // Name each identity condition that held, so the audit says why.
    if !c.match_users.is_empty() {
        why.push(format!("user {}", s.user.as_deref().unwrap_or("")));
    }
    if !c.match_databases.is_empty() {
        why.push(format!("database {}", s.database.as_deref().unwrap_or("")));
    }
    if !c.match_applications.is_empty() {
        why.push(format!("application {}", s.application_name));
    }
    if let Some(a) = client_addr(s)
        && let Some(n) = c.match_client_addrs.iter().find(|n| n.contains(&a))
    {
        why.push(format!("client {a} in {n}"));
    }
    if let Some(r) = &c.match_query {
        why.push(format!("query matches /{}/", r.as_str()));
    }
    if let Some(b) = c.blocking() {
        if s.waits_on_lock() || f.blocked_waiters < b.min_waiters {
            return None;
        }
        why.push(format!(
            "blocks {} sessions waiting ≥ {}s (lock chain root)",
            f.blocked_waiters,
            b.waited_for.as_secs()
        ));
    }
    if why.is_empty() {
        why.push("no conditions".to_string());
    }
    Some(why.join(", "))
}

/// For each pid, how many sessions wait behind it (directly or through a
/// chain) and have waited at least `min_wait`. Computed once per snapshot.
fn blocked_waiters(
    snap: &PgSnapshot,
    min_wait: Option<Duration>,
) -> std::collections::HashMap<i32, u32> {
    use std::collections::{HashMap, HashSet};
    let mut out: HashMap<i32, u32> = HashMap::new();
    let Some(min_wait) = min_wait else {
        return out;
    };
    // Edges waiter -> blockers; walk up from every long-enough waiter.
    let edges: HashMap<i32, &[i32]> = snap
        .sessions
        .iter()
        .filter(|s| !s.blocked_by.is_empty())
        .map(|s| (s.pid, s.blocked_by.as_slice()))
        .collect();
    for w in snap.sessions.iter().filter(|s| s.waits_on_lock()) {
        let waited = snap
            .age_seconds(w.lock_wait_start_us.or(w.query_start_us))
            .unwrap_or(0.0);
        if waited < min_wait.as_secs_f64() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<i32> = w.blocked_by.clone();
        while let Some(p) = stack.pop() {
            if p == w.pid || !seen.insert(p) {
                continue;
            }
            *out.entry(p).or_default() += 1;
            if let Some(next) = edges.get(&p) {
                stack.extend_from_slice(next);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
pub(crate) mod tests;
