//! `[remediation]`: the mode, the bounds every action runs under (budgets,
//! pacing, the pause switch, the audit file), and the policies, in the
//! order the file has them (the loader keeps that order: when two policies
//! select the same session, the first acts).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::audit::Mode;
use super::batch::{DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE};
use super::neo4j_index_policy::IndexRebuildSettings;
use super::neo4j_policy::Neo4jPolicy;
use super::policy::{ActionKind, Policy};
use crate::evaluate::{CheckId, CheckName};
use crate::observe::probes::settings::valid_metric_word;
use crate::observe::{PostgresTarget, SessionState};
use crate::secret::Secret;
use crate::settings::{
    Context, Issues, Trim, absolute, duration, join, q, read_secret, valid_name,
};

pub const DEFAULT_INSTANCE: &str = "dbwarden";
/// The pause state's file name in `state_dir`.
pub const PAUSE_STATE_FILE: &str = "paused.json";
const MAX_QUERY_MAX_CHARS: u32 = 10_000;
const MIN_BUDGET_WINDOW: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_PER_CYCLE: u32 = 10;
const MAX_PER_CYCLE_LIMIT: u32 = 1000;
/// A target remediation acts on needs one connection to poll and one for
/// the actor (its advisory lock and the signals).
const REMEDIATION_MIN_CONNECTIONS: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemediationSettings {
    pub mode: Mode,
    /// This dbwarden's name among replicas (audit records, actor lock
    /// holder). Unset: `$HOSTNAME`, else "dbwarden"; resolved at load.
    pub instance: Option<String>,
    pub audit_file: PathBuf,
    /// The API pause persists in `<state_dir>/paused.json`.
    pub state_dir: PathBuf,
    pub sentinel_file: Option<PathBuf>,
    /// The bearer token of the pause, resume and reload API: from a file or
    /// a variable, read at load time; never written in the file itself.
    pub api_token_file: Option<PathBuf>,
    pub api_token_env: Option<String>,
    pub query_max_chars: u32,
    pub redact_queries: bool,
    /// Wait after each batch of actions before the next.
    #[serde(with = "duration")]
    pub pacing: Duration,
    /// At most this many actions per batch: one audit `fsync` for their
    /// intents, one guarded statement (PostgreSQL) for their signals.
    pub batch_size: u32,
    /// Bring a target's next poll forward to the moment sessions will have
    /// crossed a policy's durations (`false`: polls strictly on the interval).
    pub poll_at_crossing: bool,
    pub budget: Budget,
    pub policies: IndexMap<String, Policy>,
    pub neo4j_policies: IndexMap<String, Neo4jPolicy>,
    /// `[remediation.neo4j_index_rebuild]`: present, FAILED Neo4j indexes
    /// are rebuilt (under the same mode and bounds as every action).
    pub neo4j_index_rebuild: Option<IndexRebuildSettings>,
    #[serde(skip)]
    pub api_token: Option<Secret>,
}

impl Default for RemediationSettings {
    fn default() -> Self {
        RemediationSettings {
            mode: Mode::DryRun,
            instance: None,
            audit_file: "/var/lib/dbwarden/audit.jsonl".into(),
            state_dir: "/var/lib/dbwarden".into(),
            sentinel_file: None,
            api_token_file: None,
            api_token_env: None,
            query_max_chars: 256,
            redact_queries: false,
            pacing: Duration::from_secs(1),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_at_crossing: true,
            budget: Budget::default(),
            policies: IndexMap::new(),
            neo4j_policies: IndexMap::new(),
            neo4j_index_rebuild: None,
            api_token: None,
        }
    }
}

/// `[remediation.budget]`: at most `per_target` actions in any `window` on
/// one target, and `global` over all targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    pub per_target: u32,
    pub global: u32,
    #[serde(with = "duration")]
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_target: 10,
            global: 30,
            window: Duration::from_secs(600),
        }
    }
}

impl RemediationSettings {
    pub fn instance(&self) -> &str {
        self.instance.as_deref().unwrap_or(DEFAULT_INSTANCE)
    }

    pub fn pause_state_file(&self) -> PathBuf {
        self.state_dir.join(PAUSE_STATE_FILE)
    }

    /// Actions per batch (at least one, whatever the file says).
    pub fn batch_size(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.batch_size as usize).unwrap_or(NonZeroUsize::MIN)
    }

    /// At most this many actions per window on one target.
    pub fn target_budget(&self) -> (u32, Duration) {
        (self.budget.per_target, self.budget.window)
    }

    /// At most this many actions per window over all targets.
    pub fn global_budget(&self) -> (u32, Duration) {
        (self.budget.global, self.budget.window)
    }

    /// Checks the section and its policies against the configured
    /// targets, reads the API token and resolves the instance name.
    /// `probe_checks` names each target's probe checks (PostgreSQL and
    /// Neo4j), which a policy's `only_while_failing` may name.
    pub fn validate(
        &mut self,
        postgres: &[&PostgresTarget],
        probe_checks: &BTreeMap<String, Vec<String>>,
        ctx: &Context,
        issues: &mut Issues,
    ) {
        let key = |k: &str| join("remediation", k);
        self.instance = Some(match self.instance.take() {
            Some(i) => {
                if !valid_instance(&i) {
                    issues.push(
                        key("instance"),
                        format!(
                            "invalid instance name {i:?}: use 1-40 letters, digits, '.', '_' or '-'"
                        ),
                    );
                }
                i
            }
            None => match ctx.var("HOSTNAME") {
                Some(h) if valid_instance(h) => h.to_string(),
                Some(h) if !h.is_empty() => {
                    issues.push(
                        key("instance"),
                        format!(
                            "not set, and its default, the HOSTNAME {h:?}, is not a valid instance name (1-40 letters, digits, '.', '_' or '-'): set remediation.instance (or DBWARDEN_REMEDIATION__INSTANCE)"
                        ),
                    );
                    h.to_string()
                }
                _ => DEFAULT_INSTANCE.to_string(),
            },
        });
        absolute(&self.audit_file, &key("audit_file"), issues);
        absolute(&self.state_dir, &key("state_dir"), issues);
        if let Some(sentinel) = &self.sentinel_file {
            absolute(sentinel, &key("sentinel_file"), issues);
        }
        self.api_token = read_secret(
            "token",
            "remediation",
            ("api_token_env", self.api_token_env.as_deref()),
            ("api_token_file", self.api_token_file.as_deref()),
            Trim::Whitespace,
            ctx,
            issues,
        );
        if !(1..=MAX_QUERY_MAX_CHARS).contains(&self.query_max_chars) {
            issues.push(
                key("query_max_chars"),
                format!(
                    "{} is out of range: 1 to {MAX_QUERY_MAX_CHARS}",
                    self.query_max_chars
                ),
            );
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            issues.push(
                key("batch_size"),
                format!("{} is out of range: 1 to {MAX_BATCH_SIZE}", self.batch_size),
            );
        }
        if self.budget.window < MIN_BUDGET_WINDOW {
            issues.push(
                join(&key("budget"), "window"),
                format!("{} is too short: at least \"1s\"", q(self.budget.window)),
            );
        }
        for (name, p) in &mut self.policies {
            p.name = name.clone();
            p.validate(&join("remediation.policies", name), ctx, issues);
        }
        for (name, p) in &mut self.neo4j_policies {
            p.name = name.clone();
            p.validate(&join("remediation.neo4j_policies", name), ctx, issues);
        }
        if let Some(r) = &self.neo4j_index_rebuild {
            r.validate("remediation.neo4j_index_rebuild", ctx, issues);
        }
        self.check_connection_budgets(postgres, ctx, issues);
        self.check_probe_gates(probe_checks, ctx, issues);
    }

    /// A probe check in `only_while_failing` must exist on every target the
    /// policy acts on: a gate on a check that never fails would keep the
    /// policy closed forever without a word.
    fn check_probe_gates(
        &self,
        probe_checks: &BTreeMap<String, Vec<String>>,
        ctx: &Context,
        issues: &mut Issues,
    ) {
        let pg = self.policies.iter().map(|(n, p)| {
            (
                join("remediation.policies", n),
                &p.only_while_failing,
                &ctx.postgres,
                p.targets.as_deref(),
            )
        });
        let neo = self.neo4j_policies.iter().map(|(n, p)| {
            (
                join("remediation.neo4j_policies", n),
                &p.only_while_failing,
                &ctx.neo4j,
                p.targets.as_deref(),
            )
        });
        for (path, gates, all, targets) in pg.chain(neo) {
            let targets: Vec<&String> = match targets {
                Some(ts) => ts.iter().filter(|t| all.contains(t)).collect(),
                None => all.iter().collect(),
            };
            for gate in gates {
                let CheckName::Probe(name) = gate else {
                    continue;
                };
                if !well_formed_probe_check(name) {
                    continue; // reported by the policy's own validation
                }
                let lacking: Vec<String> = targets
                    .iter()
                    .filter(|t| {
                        !probe_checks
                            .get(t.as_str())
                            .is_some_and(|cs| cs.contains(name))
                    })
                    .map(|t| format!("{t:?}"))
                    .collect();
                if !lacking.is_empty() {
                    issues.push(
                        join(&path, "only_while_failing"),
                        format!(
                            "{name:?} is not a probe check of target {}: a probe check is \"probe:<probe>\" or \"probe:<probe>:<column>\" with a check on that column; define it there, or name the policy's targets",
                            lacking.join(", ")
                        ),
                    );
                }
            }
        }
    }

    /// Every target a policy acts on needs a second connection, for the actor.
    fn check_connection_budgets(
        &self,
        postgres: &[&PostgresTarget],
        ctx: &Context,
        issues: &mut Issues,
    ) {
        if self.mode == Mode::Observe {
            return;
        }
        for t in postgres {
            let acting: Vec<&str> = self
                .policies
                .values()
                .filter(|p| p.applies_to(&t.name))
                .map(|p| p.name.as_str())
                .collect();
            // A probe in another database holds a connection of its own
            // while it runs: the actor's must still be there.
            if !acting.is_empty() && t.probes_elsewhere() {
                let n = t.settings.max_connections().get();
                let needed = REMEDIATION_MIN_CONNECTIONS + 1;
                if n < needed {
                    issues.push(
                        join(&join("postgres", &t.name), "max_connections"),
                        format!(
                            "{n} is too few for target {:?}: remediation acts on it and a probe runs in another database, which needs {needed} connections (poll, actor, the probe's); set max_connections = {needed} or more",
                            t.name
                        ),
                    );
                }
                continue;
            }
            let Some(n) = t.settings.max_connections else {
                continue;
            };
            // 0 is already out of range; only 1 is too few here.
            if acting.is_empty() || n == 0 || n >= REMEDIATION_MIN_CONNECTIONS {
                continue;
            }
            let Some(at) = ctx.written_at(&join(&join("postgres", &t.name), "max_connections"))
            else {
                continue;
            };
            let by = acting
                .iter()
                .map(|p| {
                    let at = join(&join("remediation.policies", p), "targets");
                    format!("policy {p}, {at}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            issues.push(
                at,
                format!(
                    "{n} is too few for target {:?}: in mode {:?}, remediation acts on it ({by}) and needs {REMEDIATION_MIN_CONNECTIONS} connections: one to poll, one dedicated to the actor lock and the signals; set max_connections = {REMEDIATION_MIN_CONNECTIONS} or more, or leave {:?} out of the policy's targets",
                    t.name,
                    self.mode.as_str(),
                    t.name,
                ),
            );
        }
    }
}

/// `probe:<probe>` or `probe:<probe>:<column>`, each a metric word.
fn well_formed_probe_check(name: &str) -> bool {
    let mut parts = name.splitn(3, ':').skip(1);
    parts.next().is_some_and(valid_metric_word) && parts.next().is_none_or(valid_metric_word)
}

/// An instance name: it appears in audit records and as the actor lock's holder.
fn valid_instance(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What every policy, PostgreSQL or Neo4j, has besides its conditions.
pub(super) struct Common<'a> {
    pub name: &'a str,
    pub targets: Option<&'a [String]>,
    pub max_per_cycle: u32,
    pub only_while_failing: &'a [CheckName],
    pub only_while_alerts: &'a [String],
}

/// The kind of target a policy acts on: which targets and checks it may name.
pub(super) struct Kind {
    /// "PostgreSQL" or "Neo4j".
    pub name: &'static str,
    pub checks: &'static [CheckId],
    /// The other kind and its policies' section, named in messages.
    pub other: &'static str,
    pub other_section: &'static str,
}

impl Common<'_> {
    pub fn validate(&self, path: &str, kind: &Kind, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        if !valid_name(self.name) {
            issues.push(
                path,
                format!(
                    "invalid policy name {:?}: use 1-63 lowercase letters, digits, '_' or '-'",
                    self.name
                ),
            );
        }
        let (mine, other) = if kind.name == "Neo4j" {
            (&ctx.neo4j, &ctx.postgres)
        } else {
            (&ctx.postgres, &ctx.neo4j)
        };
        match self.targets {
            Some([]) => issues.push(
                key("targets"),
                "empty: name the targets, or leave targets out to apply the policy to every target of its kind",
            ),
            Some(targets) => {
                let mut unknown = Vec::new();
                for x in targets {
                    if other.contains(x) {
                        issues.push(
                            key("targets"),
                            format!(
                                "{x:?} is a {} target: {} policies act on {} targets; use {} for it",
                                kind.other, kind.name, kind.name, kind.other_section
                            ),
                        );
                    } else if !mine.contains(x) {
                        unknown.push(format!("{x:?}"));
                    }
                }
                if !unknown.is_empty() {
                    let known: Vec<String> = mine.iter().map(|k| format!("{k:?}")).collect();
                    issues.push(
                        key("targets"),
                        format!(
                            "{} {} not a configured {} target: configured are {}",
                            unknown.join(", "),
                            if unknown.len() == 1 { "is" } else { "are" },
                            kind.name,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
            None => {}
        }
        if !(1..=MAX_PER_CYCLE_LIMIT).contains(&self.max_per_cycle) {
            issues.push(
                key("max_per_cycle"),
                format!(
                    "{} is out of range: 1 to {MAX_PER_CYCLE_LIMIT}",
                    self.max_per_cycle
                ),
            );
        }
        for check in self.only_while_failing {
            let check = match check {
                CheckName::Builtin(c) => c,
                CheckName::Probe(p) => {
                    if !well_formed_probe_check(p) {
                        issues.push(
                            key("only_while_failing"),
                            format!(
                                "{p:?} is not a probe check's name: write \"probe:<probe>\" (the probe's run) or \"probe:<probe>:<column>\" (one of its checks)"
                            ),
                        );
                    }
                    continue;
                }
            };
            if !kind.checks.contains(check) {
                issues.push(
                    key("only_while_failing"),
                    format!(
                        "{:?} is not a check of {} targets: expected one of {}",
                        check.as_str(),
                        kind.name,
                        kind.checks
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for name in self.only_while_alerts {
            // Prometheus alert names: [a-zA-Z_][a-zA-Z0-9_]*.
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                issues.push(
                    key("only_while_alerts"),
                    format!("{name:?} is not an alert name (letters, digits and '_', e.g. \"DbWardenConnectionsHigh\")"),
                );
            }
        }
    }
}

/// The states a PostgreSQL policy may name.
const POLICY_STATES: [SessionState; 4] = [
    SessionState::Active,
    SessionState::Idle,
    SessionState::IdleInTransaction,
    SessionState::IdleInTransactionAborted,
];

/// The conditions that select sessions by themselves; a policy needs one.
const SELECTING_CONDITIONS: [&str; 6] = [
    "state",
    "idle_for",
    "query_running_for",
    "transaction_open_for",
    "connected_for",
    "blocking_waiters",
];

impl Policy {
    /// `path` is `remediation.policies.<name>`.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        let when_path = key("when");
        let wkey = |k: &str| join(&when_path, k);
        Common {
            name: &self.name,
            targets: self.targets.as_deref(),
            max_per_cycle: self.max_per_cycle,
            only_while_failing: &self.only_while_failing,
            only_while_alerts: &self.only_while_alerts,
        }
        .validate(
            path,
            &Kind {
                name: "PostgreSQL",
                checks: &CheckId::ALL,
                other: "Neo4j",
                other_section: "[remediation.neo4j_policies.*]",
            },
            ctx,
            issues,
        );
        if self.kind.is_none() && !ctx.rejected_under(&key("action")) {
            issues.push(
                key("action"),
                "missing: \"cancel\", \"terminate\" or \"cancel_then_terminate\" (with a grace)",
            );
        }
        match (self.kind, self.grace) {
            (Some(ActionKind::CancelThenTerminate), Some(g)) if g.is_zero() => issues.push(
                key("grace"),
                "\"0s\" leaves the query no time to end after the cancel: use a positive duration, e.g. \"10s\"",
            ),
            (Some(ActionKind::CancelThenTerminate), None) => issues.push(
                key("grace"),
                "missing: action = \"cancel_then_terminate\" needs a grace, how long to wait after the cancel before terminating, e.g. \"10s\"",
            ),
            (Some(kind @ (ActionKind::Cancel | ActionKind::Terminate)), Some(g)) => issues.push(
                key("grace"),
                format!(
                    "{} is only used with action = \"cancel_then_terminate\", not {:?}: remove it",
                    q(g),
                    kind.as_str()
                ),
            ),
            _ => {}
        }

        let w = &self.conditions;
        for s in &w.states {
            if !POLICY_STATES.contains(s) {
                issues.push(
                    wkey("state"),
                    format!(
                        "invalid state {:?}: expected {}",
                        s.as_str(),
                        POLICY_STATES.map(SessionState::as_str).join(", ")
                    ),
                );
            }
        }
        for (k, d) in [
            ("idle_for", w.idle_for),
            ("query_running_for", w.query_running_for),
            ("transaction_open_for", w.transaction_open_for),
            ("connected_for", w.connected_for),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                issues.push(
                    wkey(k),
                    "\"0s\" always holds, so it is no condition: use a positive duration (to select by state alone, use state)",
                );
            }
        }
        let written_states = || {
            let states: Vec<String> = w
                .states
                .iter()
                .map(|s| format!("{:?}", s.as_str()))
                .collect();
            format!("[{}]", states.join(", "))
        };
        if !w.states.is_empty() && w.states.iter().all(|s| POLICY_STATES.contains(s)) {
            let idle_states = [
                SessionState::Idle,
                SessionState::IdleInTransaction,
                SessionState::IdleInTransactionAborted,
            ];
            if let Some(d) = w.idle_for
                && !w.states.iter().any(|s| idle_states.contains(s))
            {
                issues.push(
                    wkey("idle_for"),
                    format!(
                        "{} can never hold with state = {}: idle_for measures idle sessions (idle, idle_in_transaction, idle_in_transaction_aborted)",
                        q(d),
                        written_states()
                    ),
                );
            }
            if let Some(d) = w.query_running_for
                && !w.states.contains(&SessionState::Active)
            {
                issues.push(
                    wkey("query_running_for"),
                    format!(
                        "{} can never hold with state = {}: query_running_for measures active sessions; add \"active\"",
                        q(d),
                        written_states()
                    ),
                );
            }
        }
        if w.idle_for.is_some() && w.query_running_for.is_some() {
            issues.push(
                &when_path,
                "idle_for and query_running_for can never hold together (a session is either idle or running a query): write two policies",
            );
        }
        let selects = !w.states.is_empty()
            || w.idle_for.is_some()
            || w.query_running_for.is_some()
            || w.transaction_open_for.is_some()
            || w.connected_for.is_some()
            || w.blocking_waiters.is_some();
        // A condition whose value was refused is still one the user meant.
        if !selects && !ctx.rejected_under(path) {
            issues.push(
                &when_path,
                format!(
                    "no condition: the policy would select every client session; set at least one of {}",
                    SELECTING_CONDITIONS.join(", ")
                ),
            );
        }
        match (w.blocking_waiters, w.blocking_for) {
            (Some(0), _) => issues.push(
                wkey("blocking_waiters"),
                "0 is out of range: at least 1 (the number of sessions the lock-chain root must block)",
            ),
            (None, Some(d)) if !ctx.rejected_under(&wkey("blocking_waiters")) => issues.push(
                wkey("blocking_for"),
                format!(
                    "{} without blocking_waiters: set blocking_waiters, how many sessions the lock-chain root must block",
                    q(d)
                ),
            ),
            _ => {}
        }
    }
}

/// The statuses a Neo4j policy may name (SHOW TRANSACTIONS' status column).
const NEO4J_STATUSES: [&str; 2] = ["Running", "Blocked"];

impl Neo4jPolicy {
    /// `path` is `remediation.neo4j_policies.<name>`.
    pub fn validate(&mut self, path: &str, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        let wkey = |k: &str| join(&key("when"), k);
        Common {
            name: &self.name,
            targets: self.targets.as_deref(),
            max_per_cycle: self.max_per_cycle,
            only_while_failing: &self.only_while_failing,
            only_while_alerts: &self.only_while_alerts,
        }
        .validate(
            path,
            &Kind {
                name: "Neo4j",
                checks: &CheckId::NEO4J,
                other: "PostgreSQL",
                other_section: "[remediation.policies.*]",
            },
            ctx,
            issues,
        );
        if self.action != "terminate" {
            issues.push(
                key("action"),
                format!(
                    "invalid value {:?}: a Neo4j policy can only \"terminate\" (TERMINATE TRANSACTIONS, or dbms.killQuery before 4.4)",
                    self.action
                ),
            );
        }
        let w = &mut self.conditions;
        if w.running_for.is_some_and(|d| d.is_zero()) {
            issues.push(
                wkey("running_for"),
                "\"0s\" selects every transaction: use a positive duration, e.g. \"5m\"",
            );
        }
        for st in &mut w.statuses {
            match NEO4J_STATUSES.iter().find(|s| s.eq_ignore_ascii_case(st)) {
                Some(s) => *st = s.to_string(),
                None => issues.push(
                    wkey("status"),
                    format!(
                        "invalid status {st:?}: expected {} (Closing and Terminated transactions are already ending)",
                        NEO4J_STATUSES.join(" or ")
                    ),
                ),
            }
        }
        if w.running_for.is_none() && w.statuses.is_empty() && !ctx.rejected_under(path) {
            let written: Vec<&str> = [
                ("match_users", !w.match_users.is_empty()),
                ("ignore_users", !w.ignore_users.is_empty()),
                ("match_databases", !w.match_databases.is_empty()),
                ("ignore_databases", !w.ignore_databases.is_empty()),
                ("match_query", w.match_query.is_some()),
                ("ignore_query", w.ignore_query.is_some()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect();
            issues.push(
                key("when"),
                if written.is_empty() {
                    "missing: a policy needs conditions; set running_for (e.g. \"5m\") and optionally status, users, databases, query".to_string()
                } else {
                    format!(
                        "{} alone would select every such transaction however young: add running_for (e.g. \"5m\") or status",
                        written.join(", ")
                    )
                },
            );
        }
    }
}
