//! The configuration as written: the merged TOML + environment tree read into
//! plain structs, every field optional where a default exists.
//!
//! This is a hand-written reader rather than `#[derive(Deserialize)]`: serde
//! stops at the first mistake, and the user should see *all* of them at once.
//! [`Reader`] walks the tree against the schema below, reports every unknown
//! key and every value of the wrong type with its full key path, and keeps
//! going. [`super::validate`] then checks the values and builds the typed
//! [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::ConfigIssue;
use super::secret::redact_url;

#[derive(Debug, Default)]
pub struct RawConfig {
    pub server: RawServer,
    pub log: RawLog,
    pub defaults: RawTargetSettings,
    pub thresholds: RawThresholds,
    /// PostgreSQL targets by name.
    pub postgres: BTreeMap<String, RawPostgresTarget>,
    /// Neo4j targets by name.
    pub neo4j: BTreeMap<String, RawNeo4jTarget>,
    /// `None` when there is no `[remediation]` section.
    pub remediation: Option<RawRemediation>,
    /// `None` when there is no `[kubernetes]` section.
    pub kubernetes: Option<RawKubernetes>,
}

/// `[kubernetes]` as written.
#[derive(Debug, Default)]
pub struct RawKubernetes {
    pub credentials: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub statefulsets: Option<bool>,
    pub volume_stats: Option<bool>,
    pub volume_stats_interval: Option<Duration>,
    pub interval: Option<Duration>,
    pub max_restarts_last_hour: Option<u32>,
    pub oom_window: Option<Duration>,
    pub min_volume_free_ratio: Option<f64>,
    /// `None` when there is no `[kubernetes.lease]` table (no election).
    pub lease: Option<RawLease>,
    /// `None` when there is no `[kubernetes.eviction]` table (never evicts).
    pub eviction: Option<RawEviction>,
}

/// `[kubernetes.lease]` as written.
#[derive(Debug, Default)]
pub struct RawLease {
    pub name: Option<String>,
    pub duration: Option<Duration>,
    pub renew_every: Option<Duration>,
}

/// `[kubernetes.eviction]` as written.
#[derive(Debug, Default)]
pub struct RawEviction {
    pub targets: Option<Vec<String>>,
    pub not_ready_for: Option<Duration>,
    pub cooldown: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct RawServer {
    pub listen: Option<String>,
    pub shutdown_grace: Option<Duration>,
    pub alertmanager_token_file: Option<PathBuf>,
    pub alertmanager_token_env: Option<String>,
}

#[derive(Debug, Default)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// Settings a target may override; `[defaults]` sets them for every target.
#[derive(Debug, Default, Clone)]
pub struct RawTargetSettings {
    pub poll_interval: Option<Duration>,
    pub poll_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub lock_timeout: Option<Duration>,
    pub max_connections: Option<u32>,
    pub database_sizes_interval: Option<Duration>,
    pub backoff_max: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct RawPostgresTarget {
    /// The URL as written; it may hold a password. Never print it unredacted.
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub sslmode: Option<String>,
    pub ssl_root_cert: Option<PathBuf>,
    pub paths: BTreeMap<String, PathBuf>,
    /// The label selector of the target's pods (needs `[kubernetes]`).
    pub pods: Option<String>,
    /// The per-target overrides of `[defaults]`, written at target level.
    pub settings: RawTargetSettings,
    pub thresholds: RawThresholds,
}

#[derive(Debug, Default)]
pub struct RawNeo4jTarget {
    /// `bolt://` or `neo4j://` (and their `+s` / `+ssc` TLS forms).
    pub uri: Option<String>,
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub databases: Option<Vec<String>>,
    /// The label selector of the target's pods (needs `[kubernetes]`).
    pub pods: Option<String>,
    /// The per-target overrides of `[defaults]`; the PostgreSQL-only ones
    /// are reported when written here.
    pub settings: RawTargetSettings,
    pub thresholds: RawThresholds,
}

/// A check that fails when a count leaves `min`..=`max`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCountCheck {
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub hold: Option<Duration>,
}

/// A check that fails when a ratio drops below `min_ratio`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawMinRatioCheck {
    pub min_ratio: Option<f64>,
    pub hold: Option<Duration>,
}

/// A check that fails when a ratio rises above `max_ratio`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawMaxRatioCheck {
    pub max_ratio: Option<f64>,
    pub hold: Option<Duration>,
}

/// A check that fails when an age or lag exceeds `max`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawDurationCheck {
    pub max: Option<Duration>,
    pub hold: Option<Duration>,
}

/// A check that fails when a byte count exceeds `max_bytes`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawBytesCheck {
    pub max_bytes: Option<u64>,
    pub hold: Option<Duration>,
}

/// A check without a limit of its own: only its `for`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawHoldOnly {
    pub hold: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RawStreamingCheck {
    pub min_standbys: Option<u32>,
    pub hold: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RawThresholds {
    pub disk_free: Option<RawMinRatioCheck>,
    pub connections_used: Option<RawMaxRatioCheck>,
    pub replication_lag: Option<RawDurationCheck>,
    pub replication_streaming: Option<RawStreamingCheck>,
    pub replication_slot_retained_wal: Option<RawBytesCheck>,
    pub long_running_query: Option<RawDurationCheck>,
    pub idle_session: Option<RawDurationCheck>,
    pub idle_in_transaction: Option<RawDurationCheck>,
    pub wraparound: Option<RawMaxRatioCheck>,
    pub checksum_failures: Option<RawHoldOnly>,
    pub wal_archiving: Option<RawHoldOnly>,
    pub invalid_indexes: Option<RawHoldOnly>,
    // Neo4j checks.
    pub slow_queries: Option<RawDurationCheck>,
    pub indexes_online: Option<RawHoldOnly>,
    pub databases_online: Option<RawHoldOnly>,
    pub cluster_healthy: Option<RawHoldOnly>,
    pub node_count: Option<RawCountCheck>,
    pub relationship_count: Option<RawCountCheck>,
}

/// `[remediation]` as written.
#[derive(Debug, Default)]
pub struct RawRemediation {
    pub mode: Option<String>,
    pub instance: Option<String>,
    pub audit_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub sentinel_file: Option<PathBuf>,
    pub api_token_file: Option<PathBuf>,
    /// The *name* of the variable holding the token, never the token.
    pub api_token_env: Option<String>,
    pub query_max_chars: Option<u32>,
    pub redact_queries: Option<bool>,
    pub pacing: Option<Duration>,
    pub budget: RawBudget,
    /// Policies by name, in the order the file has them (see `policy_orders`);
    /// policies only the environment adds come last, by name.
    pub policies: Vec<(String, RawPolicy)>,
    /// `[remediation.neo4j_policies.*]`, in file order like `policies`.
    pub neo4j_policies: Vec<(String, RawNeo4jPolicy)>,
}

#[derive(Debug, Default)]
pub struct RawNeo4jPolicy {
    pub targets: Option<Vec<String>>,
    pub action: Option<String>,
    pub victims: Option<String>,
    pub max_per_cycle: Option<u32>,
    pub only_while_failing: Option<Vec<String>>,
    pub only_while_alerts: Option<Vec<String>>,
    pub when: RawNeo4jWhen,
}

/// `[remediation.neo4j_policies.<name>.when]`: the conditions, all AND-ed.
#[derive(Debug, Default)]
pub struct RawNeo4jWhen {
    pub running_for: Option<Duration>,
    pub status: Option<Vec<String>>,
    pub match_users: Option<Vec<String>>,
    pub ignore_users: Option<Vec<String>>,
    pub match_databases: Option<Vec<String>>,
    pub ignore_databases: Option<Vec<String>>,
    pub match_query: Option<String>,
    pub ignore_query: Option<String>,
    /// Every key written in the table, valid or not.
    pub written: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RawBudget {
    pub per_target: Option<u32>,
    pub global: Option<u32>,
    pub window: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct RawPolicy {
    pub targets: Option<Vec<String>>,
    pub action: Option<String>,
    pub grace: Option<Duration>,
    pub victims: Option<String>,
    pub max_per_cycle: Option<u32>,
    pub only_while_failing: Option<Vec<String>>,
    pub only_while_alerts: Option<Vec<String>>,
    pub when: RawWhen,
    /// Condition keys written in the policy's table instead of its `when`
    /// (reported as misplaced): the user did mean a condition.
    pub stray_conditions: bool,
}

/// `[remediation.policies.<name>.when]`: the conditions, all AND-ed.
#[derive(Debug, Default)]
pub struct RawWhen {
    pub state: Option<Vec<String>>,
    pub idle_for: Option<Duration>,
    pub query_running_for: Option<Duration>,
    pub transaction_open_for: Option<Duration>,
    pub connected_for: Option<Duration>,
    pub match_users: Option<Vec<String>>,
    pub ignore_users: Option<Vec<String>>,
    pub match_databases: Option<Vec<String>>,
    pub ignore_databases: Option<Vec<String>>,
    pub match_applications: Option<Vec<String>>,
    pub ignore_applications: Option<Vec<String>>,
    pub match_client_addrs: Option<Vec<String>>,
    pub ignore_client_addrs: Option<Vec<String>>,
    pub match_query: Option<String>,
    pub ignore_query: Option<String>,
    pub blocking_waiters: Option<u32>,
    pub blocking_for: Option<Duration>,
    /// Every key written in the table, valid or not: a condition whose value
    /// was rejected is still a condition the user meant to set.
    pub written: Vec<String>,
}

// The schema: the keys each table accepts. The reader below and these lists
// must agree; `every_known_key_is_read` in the tests keeps them honest.
pub(super) const ROOT_KEYS: &[&str] = &[
    "server",
    "log",
    "defaults",
    "thresholds",
    "postgres",
    "neo4j",
    "kubernetes",
    "remediation",
];
pub(super) const SERVER_KEYS: &[&str] = &[
    "listen",
    "shutdown_grace",
    "alertmanager_token_file",
    "alertmanager_token_env",
];
pub(super) const LOG_KEYS: &[&str] = &["format", "level"];
pub(super) const SETTINGS_KEYS: &[&str] = &[
    "poll_interval",
    "poll_timeout",
    "connect_timeout",
    "statement_timeout",
    "lock_timeout",
    "max_connections",
    "database_sizes_interval",
    "backoff_max",
];
pub(super) const TARGET_OWN_KEYS: &[&str] = &[
    "url",
    "password_env",
    "password_file",
    "sslmode",
    "ssl_root_cert",
    "paths",
    "pods",
    "thresholds",
];
pub(super) const NEO4J_TARGET_OWN_KEYS: &[&str] = &[
    "uri",
    "user",
    "password_env",
    "password_file",
    "databases",
    "pods",
    "thresholds",
];
/// The `[defaults]` settings that mean something for a Neo4j target.
pub(super) const NEO4J_SETTINGS_KEYS: &[&str] = &[
    "poll_interval",
    "poll_timeout",
    "connect_timeout",
    "backoff_max",
];
pub(super) const NEO4J_THRESHOLD_KEYS: &[&str] = &[
    "slow_queries",
    "indexes_online",
    "databases_online",
    "cluster_healthy",
    "node_count",
    "relationship_count",
];
pub(super) const THRESHOLD_KEYS: &[&str] = &[
    "disk_free",
    "connections_used",
    "replication_lag",
    "replication_streaming",
    "replication_slot_retained_wal",
    "long_running_query",
    "idle_session",
    "idle_in_transaction",
    "wraparound",
    "checksum_failures",
    "wal_archiving",
    "invalid_indexes",
];

pub(super) const REMEDIATION_KEYS: &[&str] = &[
    "mode",
    "instance",
    "audit_file",
    "state_dir",
    "sentinel_file",
    "api_token_file",
    "api_token_env",
    "query_max_chars",
    "redact_queries",
    "pacing",
    "budget",
    "policies",
    "neo4j_policies",
];
pub(super) const NEO4J_POLICY_KEYS: &[&str] = &[
    "targets",
    "action",
    "victims",
    "max_per_cycle",
    "only_while_failing",
    "only_while_alerts",
    "when",
];
pub(super) const NEO4J_WHEN_KEYS: &[&str] = &[
    "running_for",
    "status",
    "match_users",
    "ignore_users",
    "match_databases",
    "ignore_databases",
    "match_query",
    "ignore_query",
];
pub(super) const BUDGET_KEYS: &[&str] = &["per_target", "global", "window"];
pub(super) const KUBERNETES_KEYS: &[&str] = &[
    "credentials",
    "kubeconfig",
    "context",
    "namespace",
    "statefulsets",
    "volume_stats",
    "volume_stats_interval",
    "interval",
    "max_restarts_last_hour",
    "oom_window",
    "min_volume_free_ratio",
    "lease",
    "eviction",
];
pub(super) const LEASE_KEYS: &[&str] = &["name", "duration", "renew_every"];
pub(super) const EVICTION_KEYS: &[&str] = &["targets", "not_ready_for", "cooldown"];
pub(super) const POLICY_KEYS: &[&str] = &[
    "targets",
    "action",
    "grace",
    "victims",
    "max_per_cycle",
    "only_while_failing",
    "only_while_alerts",
    "when",
];
pub(super) const WHEN_KEYS: &[&str] = &[
    "state",
    "idle_for",
    "query_running_for",
    "transaction_open_for",
    "connected_for",
    "match_users",
    "ignore_users",
    "match_databases",
    "ignore_databases",
    "match_applications",
    "ignore_applications",
    "match_client_addrs",
    "ignore_client_addrs",
    "match_query",
    "ignore_query",
    "blocking_waiters",
    "blocking_for",
];

/// The names of `[remediation.policies.*]` in the order the document has
/// them: the position of each policy's own `[remediation.policies.<name>]`
/// header (or of its first sub-table when it has none). The `toml` crate's
/// `Table` is sorted by key (it is built without `preserve_order`), but its
/// deserializer visits keys in document order; this captures that order.
/// Empty when the text does not have that shape (the reader reports why).
/// The document order of `[remediation.policies.*]` and of
/// `[remediation.neo4j_policies.*]`.
pub(super) fn policy_orders(text: &str) -> (Vec<String>, Vec<String>) {
    use serde::Deserialize;
    use serde::de::{IgnoredAny, MapAccess, Visitor};

    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a table")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(Deserialize)]
    struct Remediation {
        policies: Option<Keys>,
        neo4j_policies: Option<Keys>,
    }
    #[derive(Deserialize)]
    struct Doc {
        remediation: Option<Remediation>,
    }
    let Some(r) = toml::from_str::<Doc>(text).ok().and_then(|d| d.remediation) else {
        return (Vec::new(), Vec::new());
    };
    (
        r.policies.map(|k| k.0).unwrap_or_default(),
        r.neo4j_policies.map(|k| k.0).unwrap_or_default(),
    )
}

/// Reads the merged tree, collecting every mistake.
pub(super) struct Reader<'a> {
    pub(super) issues: Vec<ConfigIssue>,
    /// Key paths set by environment variables, with the variable's name.
    /// Their values arrive as strings and are typed by the schema here.
    env: &'a BTreeMap<String, String>,
    /// The file's order of `[remediation.policies.*]` ([`policy_orders`]).
    pub(super) policy_order: Vec<String>,
    /// The file's order of `[remediation.neo4j_policies.*]`.
    pub(super) neo4j_policy_order: Vec<String>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a BTreeMap<String, String>) -> Self {
        Reader {
            issues: Vec::new(),
            env,
            policy_order: Vec::new(),
            neo4j_policy_order: Vec::new(),
        }
    }

    pub(super) fn read(&mut self, root: &Table) -> RawConfig {
        self.known_keys(root, "", ROOT_KEYS);
        let mut raw = RawConfig::default();
        if let Some(t) = self.table(root, "", "server") {
            self.known_keys(t, "server", SERVER_KEYS);
            raw.server = RawServer {
                listen: self.string(t, "server", "listen"),
                shutdown_grace: self.duration(t, "server", "shutdown_grace"),
                alertmanager_token_file: self
                    .string(t, "server", "alertmanager_token_file")
                    .map(PathBuf::from),
                alertmanager_token_env: self.string(t, "server", "alertmanager_token_env"),
            };
        }
        if let Some(t) = self.table(root, "", "log") {
            self.known_keys(t, "log", LOG_KEYS);
            raw.log = RawLog {
                format: self.string(t, "log", "format"),
                level: self.string(t, "log", "level"),
            };
        }
        if let Some(t) = self.table(root, "", "defaults") {
            self.known_keys(t, "defaults", SETTINGS_KEYS);
            raw.defaults = self.settings(t, "defaults");
        }
        if let Some(t) = self.table(root, "", "thresholds") {
            raw.thresholds = self.thresholds(t, "thresholds");
        }
        if let Some(targets) = self.table(root, "", "postgres") {
            for name in targets.keys() {
                let path = join("postgres", name);
                // A target that is not a table is reported here and kept
                // empty, so that validation knows it exists.
                let target = match self.table(targets, "postgres", name) {
                    Some(t) => self.target(t, &path),
                    None => RawPostgresTarget::default(),
                };
                raw.postgres.insert(name.clone(), target);
            }
        }
        if let Some(targets) = self.table(root, "", "neo4j") {
            for name in targets.keys() {
                let path = join("neo4j", name);
                let target = match self.table(targets, "neo4j", name) {
                    Some(t) => self.neo4j_target(t, &path),
                    None => RawNeo4jTarget::default(),
                };
                raw.neo4j.insert(name.clone(), target);
            }
        }
        if let Some(t) = self.table(root, "", "kubernetes") {
            raw.kubernetes = Some(self.kubernetes(t));
        }
        if let Some(t) = self.table(root, "", "remediation") {
            raw.remediation = Some(self.remediation(t));
        }
        raw
    }

    fn kubernetes(&mut self, t: &Table) -> RawKubernetes {
        let path = "kubernetes";
        self.known_keys(t, path, KUBERNETES_KEYS);
        let mut out = RawKubernetes {
            credentials: self.string(t, path, "credentials"),
            kubeconfig: self.string(t, path, "kubeconfig").map(PathBuf::from),
            context: self.string(t, path, "context"),
            namespace: self.string(t, path, "namespace"),
            statefulsets: self.bool(t, path, "statefulsets"),
            volume_stats: self.bool(t, path, "volume_stats"),
            volume_stats_interval: self.duration(t, path, "volume_stats_interval"),
            interval: self.duration(t, path, "interval"),
            max_restarts_last_hour: self.u32(t, path, "max_restarts_last_hour"),
            oom_window: self.duration(t, path, "oom_window"),
            min_volume_free_ratio: self.f64(t, path, "min_volume_free_ratio"),
            ..RawKubernetes::default()
        };
        if let Some(l) = self.table(t, path, "lease") {
            let p = join(path, "lease");
            self.known_keys(l, &p, LEASE_KEYS);
            out.lease = Some(RawLease {
                name: self.string(l, &p, "name"),
                duration: self.duration(l, &p, "duration"),
                renew_every: self.duration(l, &p, "renew_every"),
            });
        }
        if let Some(e) = self.table(t, path, "eviction") {
            let p = join(path, "eviction");
            self.known_keys(e, &p, EVICTION_KEYS);
            out.eviction = Some(RawEviction {
                targets: self.strings(e, &p, "targets"),
                not_ready_for: self.duration(e, &p, "not_ready_for"),
                cooldown: self.duration(e, &p, "cooldown"),
            });
        }
        out
    }

    fn remediation(&mut self, t: &Table) -> RawRemediation {
        let path = "remediation";
        self.known_keys(t, path, REMEDIATION_KEYS);
        let mut out = RawRemediation {
            mode: self.string(t, path, "mode"),
            instance: self.string(t, path, "instance"),
            audit_file: self.string(t, path, "audit_file").map(PathBuf::from),
            state_dir: self.string(t, path, "state_dir").map(PathBuf::from),
            sentinel_file: self.string(t, path, "sentinel_file").map(PathBuf::from),
            api_token_file: self.string(t, path, "api_token_file").map(PathBuf::from),
            api_token_env: self.string(t, path, "api_token_env"),
            query_max_chars: self.u32(t, path, "query_max_chars"),
            redact_queries: self.bool(t, path, "redact_queries"),
            pacing: self.duration(t, path, "pacing"),
            ..RawRemediation::default()
        };
        if let Some(b) = self.table(t, path, "budget") {
            let p = join(path, "budget");
            self.known_keys(b, &p, BUDGET_KEYS);
            out.budget = RawBudget {
                per_target: self.u32(b, &p, "per_target"),
                global: self.u32(b, &p, "global"),
                window: self.duration(b, &p, "window"),
            };
        }
        if let Some(policies) = self.table(t, path, "policies") {
            let pp = join(path, "policies");
            // The file's order first, then any the environment added, by name.
            let mut names: Vec<&String> = self
                .policy_order
                .iter()
                .filter_map(|n| policies.get_key_value(n).map(|(k, _)| k))
                .collect();
            for name in policies.keys() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            for name in names {
                // Like a target: one that is not a table is reported here
                // and kept empty, so that validation knows it exists.
                let policy = match self.table(policies, &pp, name) {
                    Some(p) => self.policy(p, &join(&pp, name)),
                    None => RawPolicy::default(),
                };
                out.policies.push((name.clone(), policy));
            }
        }
        if let Some(policies) = self.table(t, path, "neo4j_policies") {
            let pp = join(path, "neo4j_policies");
            let mut names: Vec<&String> = self
                .neo4j_policy_order
                .iter()
                .filter_map(|n| policies.get_key_value(n).map(|(k, _)| k))
                .collect();
            for name in policies.keys() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            for name in names {
                let policy = match self.table(policies, &pp, name) {
                    Some(p) => self.neo4j_policy(p, &join(&pp, name)),
                    None => RawNeo4jPolicy::default(),
                };
                out.neo4j_policies.push((name.clone(), policy));
            }
        }
        out
    }

    fn neo4j_policy(&mut self, t: &Table, path: &str) -> RawNeo4jPolicy {
        self.known_keys(t, path, NEO4J_POLICY_KEYS);
        let mut out = RawNeo4jPolicy {
            targets: self.strings(t, path, "targets"),
            action: self.string(t, path, "action"),
            victims: self.string(t, path, "victims"),
            max_per_cycle: self.u32(t, path, "max_per_cycle"),
            only_while_failing: self.strings(t, path, "only_while_failing"),
            only_while_alerts: self.strings(t, path, "only_while_alerts"),
            ..RawNeo4jPolicy::default()
        };
        if let Some(w) = self.table(t, path, "when") {
            let p = join(path, "when");
            self.known_keys(w, &p, NEO4J_WHEN_KEYS);
            out.when = RawNeo4jWhen {
                running_for: self.duration(w, &p, "running_for"),
                status: self.strings(w, &p, "status"),
                match_users: self.strings(w, &p, "match_users"),
                ignore_users: self.strings(w, &p, "ignore_users"),
                match_databases: self.strings(w, &p, "match_databases"),
                ignore_databases: self.strings(w, &p, "ignore_databases"),
                match_query: self.string(w, &p, "match_query"),
                ignore_query: self.string(w, &p, "ignore_query"),
                written: w.keys().cloned().collect(),
            };
        }
        out
    }

    fn policy(&mut self, t: &Table, path: &str) -> RawPolicy {
        self.known_keys(t, path, POLICY_KEYS);
        let mut out = RawPolicy {
            targets: self.strings(t, path, "targets"),
            action: self.string(t, path, "action"),
            grace: self.duration(t, path, "grace"),
            victims: self.string(t, path, "victims"),
            max_per_cycle: self.u32(t, path, "max_per_cycle"),
            only_while_failing: self.strings(t, path, "only_while_failing"),
            only_while_alerts: self.strings(t, path, "only_while_alerts"),
            stray_conditions: t.keys().any(|k| WHEN_KEYS.contains(&k.as_str())),
            ..RawPolicy::default()
        };
        if let Some(w) = self.table(t, path, "when") {
            let p = join(path, "when");
            self.known_keys(w, &p, WHEN_KEYS);
            out.when = RawWhen {
                state: self.strings(w, &p, "state"),
                idle_for: self.duration(w, &p, "idle_for"),
                query_running_for: self.duration(w, &p, "query_running_for"),
                transaction_open_for: self.duration(w, &p, "transaction_open_for"),
                connected_for: self.duration(w, &p, "connected_for"),
                match_users: self.strings(w, &p, "match_users"),
                ignore_users: self.strings(w, &p, "ignore_users"),
                match_databases: self.strings(w, &p, "match_databases"),
                ignore_databases: self.strings(w, &p, "ignore_databases"),
                match_applications: self.strings(w, &p, "match_applications"),
                ignore_applications: self.strings(w, &p, "ignore_applications"),
                match_client_addrs: self.strings(w, &p, "match_client_addrs"),
                ignore_client_addrs: self.strings(w, &p, "ignore_client_addrs"),
                match_query: self.string(w, &p, "match_query"),
                ignore_query: self.string(w, &p, "ignore_query"),
                blocking_waiters: self.u32(w, &p, "blocking_waiters"),
                blocking_for: self.duration(w, &p, "blocking_for"),
                written: w.keys().cloned().collect(),
            };
        }
        out
    }

    fn target(&mut self, t: &Table, path: &str) -> RawPostgresTarget {
        let known: Vec<&str> = TARGET_OWN_KEYS
            .iter()
            .chain(SETTINGS_KEYS)
            .copied()
            .collect();
        self.known_keys(t, path, &known);
        let mut target = RawPostgresTarget {
            url: self.string(t, path, "url"),
            password_env: self.string(t, path, "password_env"),
            password_file: self.string(t, path, "password_file").map(PathBuf::from),
            sslmode: self.string(t, path, "sslmode"),
            ssl_root_cert: self.string(t, path, "ssl_root_cert").map(PathBuf::from),
            pods: self.string(t, path, "pods"),
            settings: self.settings(t, path),
            ..RawPostgresTarget::default()
        };
        if let Some(paths) = self.table(t, path, "paths") {
            let paths_path = join(path, "paths");
            for volume in paths.keys() {
                if let Some(p) = self.string(paths, &paths_path, volume) {
                    target.paths.insert(volume.clone(), PathBuf::from(p));
                }
            }
        }
        if let Some(th) = self.table(t, path, "thresholds") {
            target.thresholds = self.thresholds(th, &join(path, "thresholds"));
        }
        target
    }

    fn neo4j_target(&mut self, t: &Table, path: &str) -> RawNeo4jTarget {
        let known: Vec<&str> = NEO4J_TARGET_OWN_KEYS
            .iter()
            .chain(NEO4J_SETTINGS_KEYS)
            .copied()
            .collect();
        for (key, _) in t {
            if SETTINGS_KEYS.contains(&key.as_str()) && !known.contains(&key.as_str()) {
                self.push(
                    join(path, key),
                    "applies to PostgreSQL targets only: remove it from this Neo4j target".into(),
                );
            }
        }
        let unknown: Table = t
            .iter()
            .filter(|(k, _)| !SETTINGS_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.known_keys(&unknown, path, &known);
        let mut target = RawNeo4jTarget {
            uri: self.string(t, path, "uri"),
            user: self.string(t, path, "user"),
            password_env: self.string(t, path, "password_env"),
            password_file: self.string(t, path, "password_file").map(PathBuf::from),
            databases: self.strings(t, path, "databases"),
            pods: self.string(t, path, "pods"),
            settings: self.settings(t, path),
            ..RawNeo4jTarget::default()
        };
        if let Some(th) = self.table(t, path, "thresholds") {
            let p = join(path, "thresholds");
            target.thresholds = self.thresholds_of(th, &p, NEO4J_THRESHOLD_KEYS);
        }
        target
    }

    fn settings(&mut self, t: &Table, path: &str) -> RawTargetSettings {
        RawTargetSettings {
            poll_interval: self.duration(t, path, "poll_interval"),
            poll_timeout: self.duration(t, path, "poll_timeout"),
            connect_timeout: self.duration(t, path, "connect_timeout"),
            statement_timeout: self.duration(t, path, "statement_timeout"),
            lock_timeout: self.duration(t, path, "lock_timeout"),
            max_connections: self.u32(t, path, "max_connections"),
            database_sizes_interval: self.duration(t, path, "database_sizes_interval"),
            backoff_max: self.duration(t, path, "backoff_max"),
        }
    }

    /// `[thresholds]` (every check of both kinds) or a PostgreSQL target's
    /// own (PostgreSQL checks only).
    fn thresholds(&mut self, t: &Table, path: &str) -> RawThresholds {
        if path == "thresholds" {
            let all: Vec<&str> = THRESHOLD_KEYS
                .iter()
                .chain(NEO4J_THRESHOLD_KEYS)
                .copied()
                .collect();
            self.thresholds_of(t, path, &all)
        } else {
            self.thresholds_of(t, path, THRESHOLD_KEYS)
        }
    }

    fn thresholds_of(&mut self, t: &Table, path: &str, allowed: &[&str]) -> RawThresholds {
        for (key, _) in t {
            let pg = THRESHOLD_KEYS.contains(&key.as_str());
            let neo = NEO4J_THRESHOLD_KEYS.contains(&key.as_str());
            if (pg || neo) && !allowed.contains(&key.as_str()) {
                let kind = if pg { "PostgreSQL" } else { "Neo4j" };
                self.push(
                    join(path, key),
                    format!("is a check of {kind} targets: it does not apply here"),
                );
            }
        }
        let unknown: Table = t
            .iter()
            .filter(|(k, _)| {
                !THRESHOLD_KEYS.contains(&k.as_str()) && !NEO4J_THRESHOLD_KEYS.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.known_keys(&unknown, path, allowed);
        let t: Table = t
            .iter()
            .filter(|(k, _)| allowed.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let t = &t;
        let mut out = RawThresholds::default();

        // Each check is a table of its limit (under the check's own key name) and `for`.
        macro_rules! check {
            ($field:ident, $ty:ident { $($key:ident: $read:ident),* }) => {
                let key = stringify!($field);
                if let Some(c) = self.table(t, path, key) {
                    let p = join(path, key);
                    self.known_keys(c, &p, &[$(stringify!($key),)* "for"]);
                    out.$field = Some($ty {
                        $($key: self.$read(c, &p, stringify!($key)),)*
                        hold: self.duration(c, &p, "for"),
                    });
                }
            };
        }
        check!(disk_free, RawMinRatioCheck { min_ratio: f64 });
        check!(connections_used, RawMaxRatioCheck { max_ratio: f64 });
        check!(replication_lag, RawDurationCheck { max: duration });
        check!(
            replication_streaming,
            RawStreamingCheck { min_standbys: u32 }
        );
        check!(
            replication_slot_retained_wal,
            RawBytesCheck { max_bytes: u64 }
        );
        check!(long_running_query, RawDurationCheck { max: duration });
        check!(idle_session, RawDurationCheck { max: duration });
        check!(idle_in_transaction, RawDurationCheck { max: duration });
        check!(wraparound, RawMaxRatioCheck { max_ratio: f64 });
        check!(checksum_failures, RawHoldOnly {});
        check!(wal_archiving, RawHoldOnly {});
        check!(invalid_indexes, RawHoldOnly {});
        check!(slow_queries, RawDurationCheck { max: duration });
        check!(indexes_online, RawHoldOnly {});
        check!(databases_online, RawHoldOnly {});
        check!(cluster_healthy, RawHoldOnly {});
        check!(node_count, RawCountCheck { min: u64, max: u64 });
        check!(relationship_count, RawCountCheck { min: u64, max: u64 });
        out
    }

    /// Reports every key of `t` not in `known`, with a suggestion when one is close.
    /// The value of an unknown key is never echoed: it might be a password.
    fn known_keys(&mut self, t: &Table, path: &str, known: &[&str]) {
        for (key, value) in t {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = match (closest(key, known), misplaced(path, key)) {
                _ if path == "remediation" && matches!(key.as_str(), "api_token" | "token") => {
                    "the token is never written in the file: name the file holding it \
                     (api_token_file) or the environment variable (api_token_env)"
                        .to_string()
                }
                (_, Some(home)) => format!("it belongs in {home}"),
                (Some(k), None) => format!("did you mean `{k}`?"),
                (None, None) => format!("expected one of: {}", known.join(", ")),
            };
            let what = if value.is_table() {
                "unknown table"
            } else {
                "unknown key"
            };
            self.push(join(path, key), format!("{what} `{key}`: {hint}"));
        }
    }

    fn push(&mut self, path: String, message: String) {
        self.issues.push(ConfigIssue { path, message });
    }

    fn type_error(&mut self, path: String, expected: &str, found: &Value) {
        let found = describe(found);
        self.push(path, format!("expected {expected}, found {found}"));
    }

    fn table<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t Table> {
        match t.get(key)? {
            Value::Table(inner) => Some(inner),
            other => {
                self.type_error(join(path, key), "a table", other);
                None
            }
        }
    }

    fn string(&mut self, t: &Table, path: &str, key: &str) -> Option<String> {
        match t.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.type_error(join(path, key), "a string", other);
                None
            }
        }
    }

    /// An array of strings. Set from the environment, a TOML array
    /// (`["a", "b"]`) or a single value (`a`, a one-element list).
    fn strings(&mut self, t: &Table, path: &str, key: &str) -> Option<Vec<String>> {
        let expected = "an array of strings, e.g. [\"a\", \"b\"]";
        let value = t.get(key)?;
        let full = join(path, key);
        let parsed;
        let array = match value {
            Value::Array(a) => a,
            Value::String(s) if self.env.contains_key(&full) => {
                let s = s.trim();
                if !s.starts_with('[') {
                    return Some(vec![s.to_string()]);
                }
                parsed = format!("v = {s}")
                    .parse::<Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"));
                match &parsed {
                    Some(Value::Array(a)) => a,
                    _ => {
                        self.type_error(full, expected, value);
                        return None;
                    }
                }
            }
            other => {
                self.type_error(full, expected, other);
                return None;
            }
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, item) in array.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    let found = describe(other);
                    self.push(
                        full,
                        format!("expected {expected}, found {found} (item {})", i + 1),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn bool(&mut self, t: &Table, path: &str, key: &str) -> Option<bool> {
        let value = t.get(key)?;
        let full = join(path, key);
        match value {
            Value::Boolean(b) => Some(*b),
            Value::String(s) if self.env.contains_key(&full) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    self.type_error(full, "true or false", value);
                    None
                }
            },
            other => {
                self.type_error(full, "true or false", other);
                None
            }
        }
    }

    fn duration(&mut self, t: &Table, path: &str, key: &str) -> Option<Duration> {
        let expected = "a duration string such as \"5s\", \"10m\" or \"1h 30m\"";
        match t.get(key)? {
            Value::String(s) => {
                match humantime::parse_duration(s.trim()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.push(
                        join(path, key),
                        format!("invalid duration {s:?}: {e}; write e.g. \"5s\", \"10m\" or \"1h 30m\""),
                    );
                        None
                    }
                }
            }
            other => {
                self.type_error(join(path, key), expected, other);
                None
            }
        }
    }

    /// An integer, or a string of one when the key was set from the environment.
    fn integer(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        expected: &str,
    ) -> Option<(i128, Value)> {
        let value = t.get(key)?;
        let full = join(path, key);
        let n = match value {
            Value::Integer(n) => Some(i128::from(*n)),
            Value::String(s) if self.env.contains_key(&full) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        match n {
            Some(n) => Some((n, value.clone())),
            None => {
                self.type_error(full, expected, value);
                None
            }
        }
    }

    fn u32(&mut self, t: &Table, path: &str, key: &str) -> Option<u32> {
        let expected = "a whole number from 0 to 4294967295";
        let (n, value) = self.integer(t, path, key, expected)?;
        u32::try_from(n).ok().or_else(|| {
            self.type_error(join(path, key), expected, &value);
            None
        })
    }

    fn u64(&mut self, t: &Table, path: &str, key: &str) -> Option<u64> {
        let expected = "a whole number of at least 0";
        let (n, value) = self.integer(t, path, key, expected)?;
        u64::try_from(n).ok().or_else(|| {
            self.type_error(join(path, key), expected, &value);
            None
        })
    }

    fn f64(&mut self, t: &Table, path: &str, key: &str) -> Option<f64> {
        let value = t.get(key)?;
        let full = join(path, key);
        match value {
            Value::Float(f) => Some(*f),
            Value::Integer(n) => Some(*n as f64),
            Value::String(s) if self.env.contains_key(&full) => {
                s.trim().parse::<f64>().ok().or_else(|| {
                    self.type_error(full, "a number", value);
                    None
                })
            }
            other => {
                self.type_error(full, "a number", other);
                None
            }
        }
    }
}

/// `path.key`, quoting a key that would not read back as one bare TOML key.
pub(super) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// A value as an error message shows it: scalars verbatim (strings with any
/// URL password redacted), tables and arrays by kind only.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", redact_url(s)),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// Where a known key written in the wrong table belongs, e.g. `listen` at
/// the top level belongs in `[server]`.
fn misplaced(path: &str, key: &str) -> Option<String> {
    let is = |keys: &[&str]| keys.contains(&key);
    let in_target = path.starts_with("postgres.") && path.matches('.').count() == 1;
    let policy = path
        .strip_prefix("remediation.policies.")
        .filter(|rest| !rest.contains('.'));
    let when = path
        .strip_prefix("remediation.policies.")
        .and_then(|rest| rest.strip_suffix(".when"))
        .filter(|name| !name.contains('.'));
    if let Some(name) = policy
        && is(WHEN_KEYS)
    {
        return Some(format!("[remediation.policies.{name}.when]"));
    }
    if let Some(name) = when
        && is(POLICY_KEYS)
    {
        return Some(format!("[remediation.policies.{name}]"));
    }
    match path {
        "" if is(SERVER_KEYS) => Some("[server]".into()),
        "" if is(LOG_KEYS) => Some("[log]".into()),
        "" if is(SETTINGS_KEYS) => Some("[defaults] or a [postgres.<name>] table".into()),
        "" if is(TARGET_OWN_KEYS) => Some("a [postgres.<name>] table".into()),
        "" if is(THRESHOLD_KEYS) => Some(format!("[thresholds.{key}]")),
        "" if is(REMEDIATION_KEYS) => Some("[remediation]".into()),
        "" | "kubernetes" if key == "pods" => {
            Some("a [postgres.<name>] or [neo4j.<name>] table".into())
        }
        "" if is(KUBERNETES_KEYS) => Some("[kubernetes]".into()),
        "" | "kubernetes" if is(EVICTION_KEYS) => Some("[kubernetes.eviction]".into()),
        "" | "kubernetes" if is(LEASE_KEYS) => Some("[kubernetes.lease]".into()),
        "remediation" if key == "eviction" => Some("[kubernetes.eviction]".into()),
        "" | "remediation" if is(BUDGET_KEYS) => Some("[remediation.budget]".into()),
        "" | "remediation" if is(POLICY_KEYS) => {
            Some("a [remediation.policies.<name>] table".into())
        }
        "" | "remediation" if is(WHEN_KEYS) => {
            Some("a [remediation.policies.<name>.when] table".into())
        }
        "defaults" if is(TARGET_OWN_KEYS) => Some("a [postgres.<name>] table".into()),
        "defaults" if is(THRESHOLD_KEYS) => Some(format!("[thresholds.{key}]")),
        _ if in_target && is(THRESHOLD_KEYS) => Some(format!("[{path}.thresholds.{key}]")),
        _ => None,
    }
}

/// The known key closest to a misspelt one, if any is close enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "server"), "server");
        assert_eq!(join("postgres", "main"), "postgres.main");
        assert_eq!(join("postgres", "a.b"), "postgres.\"a.b\"");
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            closest("pol_interval", SETTINGS_KEYS),
            Some("poll_interval")
        );
        assert_eq!(
            closest("min_ratoi", &["min_ratio", "for"]),
            Some("min_ratio")
        );
        assert_eq!(closest("zzz", SETTINGS_KEYS), None);
    }

    #[test]
    fn misplaced_keys_are_pointed_home() {
        assert_eq!(misplaced("", "listen").as_deref(), Some("[server]"));
        assert_eq!(
            misplaced("postgres.main", "disk_free").as_deref(),
            Some("[postgres.main.thresholds.disk_free]")
        );
        assert_eq!(misplaced("postgres.main.thresholds", "url"), None);
        assert_eq!(misplaced("", "mode").as_deref(), Some("[remediation]"));
        assert_eq!(
            misplaced("remediation", "window").as_deref(),
            Some("[remediation.budget]")
        );
        assert_eq!(
            misplaced("remediation.policies.p", "idle_for").as_deref(),
            Some("[remediation.policies.p.when]")
        );
        assert_eq!(
            misplaced("remediation.policies.p.when", "action").as_deref(),
            Some("[remediation.policies.p]")
        );
        assert_eq!(
            misplaced("remediation", "action").as_deref(),
            Some("a [remediation.policies.<name>] table")
        );
    }

    #[test]
    fn every_known_key_is_read() {
        // A table with every key the schema lists, each with a value of the
        // wrong type: each must be reported as a type error, none as unknown.
        let mut target = Table::new();
        for k in TARGET_OWN_KEYS.iter().chain(SETTINGS_KEYS) {
            target.insert(k.to_string(), Value::Boolean(true));
        }
        let mut thresholds = Table::new();
        for k in THRESHOLD_KEYS.iter().chain(NEO4J_THRESHOLD_KEYS) {
            thresholds.insert(k.to_string(), Value::Boolean(true));
        }
        let mut root = Table::new();
        root.insert("thresholds".into(), Value::Table(thresholds));
        let mut pg = Table::new();
        pg.insert("t".into(), Value::Table(target));
        root.insert("postgres".into(), Value::Table(pg));
        let mut graph = Table::new();
        for k in NEO4J_TARGET_OWN_KEYS.iter().chain(NEO4J_SETTINGS_KEYS) {
            graph.insert(k.to_string(), Value::Boolean(true));
        }
        let mut neo4j = Table::new();
        neo4j.insert("g".into(), Value::Table(graph));
        root.insert("neo4j".into(), Value::Table(neo4j));
        // No remediation key takes a float.
        let wrong = |keys: &[&str]| -> Table {
            keys.iter()
                .map(|k| (k.to_string(), Value::Float(1.5)))
                .collect()
        };
        let mut policy = wrong(POLICY_KEYS);
        policy.insert("when".into(), Value::Table(wrong(WHEN_KEYS)));
        let mut remediation = wrong(REMEDIATION_KEYS);
        remediation.insert("budget".into(), Value::Table(wrong(BUDGET_KEYS)));
        let mut policies = Table::new();
        policies.insert("p".into(), Value::Table(policy));
        remediation.insert("policies".into(), Value::Table(policies));
        let mut neo4j_policy = wrong(NEO4J_POLICY_KEYS);
        neo4j_policy.insert("when".into(), Value::Table(wrong(NEO4J_WHEN_KEYS)));
        let mut neo4j_policies = Table::new();
        neo4j_policies.insert("n".into(), Value::Table(neo4j_policy));
        remediation.insert("neo4j_policies".into(), Value::Table(neo4j_policies));
        root.insert("remediation".into(), Value::Table(remediation));
        // min_volume_free_ratio does take a float: give it a boolean.
        let mut kubernetes = wrong(KUBERNETES_KEYS);
        kubernetes.insert("min_volume_free_ratio".into(), Value::Boolean(true));
        kubernetes.insert("lease".into(), Value::Table(wrong(LEASE_KEYS)));
        kubernetes.insert("eviction".into(), Value::Table(wrong(EVICTION_KEYS)));
        root.insert("kubernetes".into(), Value::Table(kubernetes));
        let env = BTreeMap::new();
        let mut r = Reader::new(&env);
        let raw = r.read(&root);
        assert!(
            r.issues.iter().all(|i| i.message.starts_with("expected ")),
            "{:#?}",
            r.issues
        );
        // Tables read as tables ("budget", "policies", "when") are not type errors.
        assert_eq!(
            r.issues.len(),
            TARGET_OWN_KEYS.len()
                + SETTINGS_KEYS.len()
                + THRESHOLD_KEYS.len()
                + NEO4J_THRESHOLD_KEYS.len()
                + NEO4J_TARGET_OWN_KEYS.len()
                + NEO4J_SETTINGS_KEYS.len()
                + (REMEDIATION_KEYS.len() - 3)
                + BUDGET_KEYS.len()
                + (POLICY_KEYS.len() - 1)
                + WHEN_KEYS.len()
                + (NEO4J_POLICY_KEYS.len() - 1)
                + NEO4J_WHEN_KEYS.len()
                + (KUBERNETES_KEYS.len() - 2)
                + LEASE_KEYS.len()
                + EVICTION_KEYS.len()
        );
        let k = raw.kubernetes.unwrap();
        assert!(k.lease.is_some() && k.eviction.is_some());
        let rem = raw.remediation.unwrap();
        assert_eq!(rem.policies.len(), 1);
        assert_eq!(rem.neo4j_policies.len(), 1);
        assert_eq!(
            rem.neo4j_policies[0].1.when.written.len(),
            NEO4J_WHEN_KEYS.len()
        );
        // Every condition written counts as written, valid or not.
        assert_eq!(rem.policies[0].1.when.written.len(), WHEN_KEYS.len());
    }

    #[test]
    fn policy_order_follows_the_document() {
        let text = "\
            [remediation]\nmode = \"observe\"\npolicies.zeta.action = \"cancel\"\n\
            [remediation.policies.mid.when]\nstate = [\"idle\"]\n\
            [remediation.policies.alpha]\naction = \"cancel\"\n\
            [remediation.policies.mid]\naction = \"cancel\"\n\
            [remediation.policies.\"b.c\"]\n";
        // A policy's position is its own header's, when it has one.
        assert_eq!(policy_orders(text).0, ["zeta", "alpha", "mid", "b.c"]);
        assert!(policy_orders("[remediation]\npolicies = 5\n").0.is_empty());
        assert!(policy_orders("[server]\n").0.is_empty());
    }

    #[test]
    fn environment_values_of_lists_and_booleans_are_typed() {
        let mut t = Table::new();
        for (k, v) in [
            ("a", "[\"x\", \"y\"]"),
            ("b", "single"),
            ("c", "[1]"),
            ("d", "true"),
            ("e", "yes"),
            ("f", "[\"unclosed\""),
        ] {
            t.insert(k.into(), Value::String(v.into()));
        }
        let env: BTreeMap<String, String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|k| (join("p", k), format!("DBWARDEN_P__{}", k.to_uppercase())))
            .collect();
        let mut r = Reader::new(&env);
        assert_eq!(r.strings(&t, "p", "a").unwrap(), ["x", "y"]);
        assert_eq!(r.strings(&t, "p", "b").unwrap(), ["single"]);
        assert_eq!(r.strings(&t, "p", "c"), None);
        assert_eq!(r.bool(&t, "p", "d"), Some(true));
        assert_eq!(r.bool(&t, "p", "e"), None);
        assert_eq!(r.strings(&t, "p", "f"), None);
        let paths: Vec<_> = r.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["p.c", "p.e", "p.f"], "{:#?}", r.issues);
        assert!(r.issues[0].message.contains("(item 1)"), "{:?}", r.issues);
        // Written in the file, a string is not a list.
        let none = BTreeMap::new();
        let mut r = Reader::new(&none);
        let mut t = Table::new();
        t.insert("a".into(), Value::String("x".into()));
        assert_eq!(r.strings(&t, "p", "a"), None);
        assert!(r.issues[0].message.contains("expected an array of strings"));
    }
}
