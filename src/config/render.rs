//! [`Config`] back to TOML, in the config file's own shape: what
//! `dbwarden config` prints. Every default is filled in, `[defaults]` and
//! `[thresholds]` are applied to each target, and passwords never appear:
//! a URL's password is redacted, `password_env`/`password_file` show only the
//! variable's name or the file's path. So do `api_token_env`/`api_token_file`:
//! the remediation API token is never printed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::validate::{DEFAULT_STATE_DIR, PAUSE_STATE_FILE};
use super::{
    Applications, Config, CountRange, Limit, LogFormat, Neo4jTarget, PasswordSource,
    PostgresTarget, RemediationWritten, Thresholds, TokenSource,
};
use crate::kubernetes::{Credentials, KubernetesSettings};
use crate::remediate::RemediationSettings;
use crate::remediate::neo4j_policy::Neo4jPolicy;
use crate::remediate::policy::{Action, Policy, Victims};

const HEADER: &str = "\
# dbwarden effective configuration: every default filled in, [defaults],
# [thresholds] and DBWARDEN_* overrides applied to each target.
# Passwords are never printed: a password written in a url shows as <redacted>.
# Neither is the remediation API token: only its file or variable is named.
";

pub(super) fn to_toml(config: &Config) -> String {
    let file = File {
        server: Server {
            listen: config.server.listen.to_string(),
            shutdown_grace: human(config.server.shutdown_grace),
            alertmanager_token_file: match &config.server.alertmanager_token_source {
                Some(TokenSource::File(p)) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            },
            alertmanager_token_env: match &config.server.alertmanager_token_source {
                Some(TokenSource::Env(v)) => Some(v.clone()),
                _ => None,
            },
        },
        log: Log {
            format: match config.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            level: &config.log.level,
        },
        postgres: config
            .postgres
            .iter()
            .map(|t| (t.name.as_str(), target(t, pods_of(config, &t.name))))
            .collect(),
        neo4j: config
            .neo4j
            .iter()
            .map(|t| (t.name.as_str(), neo4j_target(t, pods_of(config, &t.name))))
            .collect(),
        kubernetes: config.kubernetes.as_ref().map(kubernetes),
        remediation: config
            .remediation
            .as_ref()
            .map(|r| remediation(r, &config.remediation_written)),
    };
    match toml::to_string_pretty(&file) {
        Ok(body) if body.ends_with('\n') => format!("{HEADER}\n{body}"),
        Ok(body) => format!("{HEADER}\n{body}\n"),
        // Only non-UTF-8 paths could get here, and they cannot come from TOML.
        Err(e) => format!("# cannot render the configuration: {e}\n"),
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Seconds held as `f64` back to a duration, to the nanosecond, so that
/// `"1h 30m"` prints as `"1h 30m"` again.
fn secs(v: f64) -> Duration {
    if !(v.is_finite() && v >= 0.0) {
        return Duration::ZERO;
    }
    let whole = v.trunc();
    let nanos = ((v - whole) * 1e9).round() as u64;
    Duration::from_secs(whole as u64) + Duration::from_nanos(nanos)
}

/// The target's `pods` selector, if it names one.
fn pods_of<'a>(config: &'a Config, name: &str) -> Option<&'a str> {
    config
        .kubernetes
        .as_ref()?
        .targets
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.label_selector.as_str())
}

fn kubernetes(k: &KubernetesSettings) -> KubernetesTable<'_> {
    let (credentials, kubeconfig, context) = match &k.credentials {
        Credentials::InCluster => ("in-cluster", None, None),
        Credentials::Kubeconfig { path, context } => (
            "kubeconfig",
            path.as_ref().map(|p| p.to_string_lossy().into_owned()),
            context.as_deref(),
        ),
    };
    KubernetesTable {
        credentials,
        kubeconfig,
        context,
        namespace: &k.namespace,
        statefulsets: k.statefulsets,
        volume_stats: k.volume_stats,
        volume_stats_interval: human(k.volume_stats_interval),
        interval: human(k.interval),
        max_restarts_last_hour: k.thresholds.max_restarts_last_hour,
        oom_window: human(k.thresholds.oom_window),
        min_volume_free_ratio: k.thresholds.min_volume_free_ratio,
        lease: k.lease.as_ref().map(|l| LeaseTable {
            name: &l.name,
            duration: human(l.duration),
            renew_every: human(l.renew_every),
        }),
        eviction: k.eviction.as_ref().map(|e| EvictionTable {
            targets: &e.targets,
            not_ready_for: human(e.not_ready_for),
            cooldown: human(e.cooldown),
        }),
    }
}

fn target<'a>(t: &'a PostgresTarget, pods: Option<&'a str>) -> Target<'a> {
    let s = &t.settings;
    let (password_env, password_file) = match &t.password_source {
        PasswordSource::Env(var) => (Some(var.as_str()), None),
        PasswordSource::File(path) => (None, Some(path.to_string_lossy().into_owned())),
        PasswordSource::None | PasswordSource::Url => (None, None),
    };
    Target {
        url: &t.url,
        password_env,
        password_file,
        sslmode: &t.sslmode,
        ssl_root_cert: t
            .ssl_root_cert
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        pods,
        poll_interval: human(s.poll_interval),
        poll_timeout: human(s.poll_timeout),
        connect_timeout: human(s.connect_timeout),
        statement_timeout: human(s.statement_timeout),
        lock_timeout: human(s.lock_timeout),
        max_connections: s.max_connections.get(),
        database_sizes_interval: human(s.database_sizes_interval),
        backoff_max: human(s.backoff_max),
        paths: t
            .paths
            .iter()
            .map(|p| (p.volume.as_str(), p.path.to_string_lossy().into_owned()))
            .collect(),
        thresholds: thresholds(&t.thresholds),
    }
}

fn neo4j_target<'a>(t: &'a Neo4jTarget, pods: Option<&'a str>) -> Neo4jTargetTable<'a> {
    let s = &t.settings;
    let (password_env, password_file) = match &t.password_source {
        PasswordSource::Env(var) => (Some(var.as_str()), None),
        PasswordSource::File(path) => (None, Some(path.to_string_lossy().into_owned())),
        PasswordSource::None | PasswordSource::Url => (None, None),
    };
    let th = &t.thresholds;
    let count = |c: &CountRange| CountTable {
        min: c.min,
        max: c.max,
        hold: human(c.hold),
    };
    Neo4jTargetTable {
        uri: &t.uri,
        user: &t.user,
        password_env,
        password_file,
        databases: &t.databases,
        pods,
        poll_interval: human(s.poll_interval),
        poll_timeout: human(s.poll_timeout),
        connect_timeout: human(s.connect_timeout),
        backoff_max: human(s.backoff_max),
        thresholds: Neo4jThresholdTables {
            slow_queries: MaxDuration {
                max: human(secs(th.slow_queries.value)),
                hold: human(th.slow_queries.hold),
            },
            indexes_online: HoldOnly {
                hold: human(th.indexes_online.hold),
            },
            databases_online: HoldOnly {
                hold: human(th.databases_online.hold),
            },
            cluster_healthy: HoldOnly {
                hold: human(th.cluster_healthy.hold),
            },
            node_count: count(&th.node_count),
            relationship_count: count(&th.relationship_count),
        },
    }
}

fn thresholds(t: &Thresholds) -> ThresholdTables {
    let hold = |l: &Limit| human(l.hold);
    let max = |l: &Limit| MaxDuration {
        max: human(secs(l.value)),
        hold: hold(l),
    };
    let max_ratio = |l: &Limit| MaxRatio {
        max_ratio: l.value,
        hold: hold(l),
    };
    let hold_only = |l: &Limit| HoldOnly { hold: hold(l) };
    ThresholdTables {
        disk_free: MinRatio {
            min_ratio: t.disk_free.value,
            hold: hold(&t.disk_free),
        },
        connections_used: max_ratio(&t.connections_used),
        replication_lag: max(&t.replication_lag),
        replication_streaming: MinStandbys {
            min_standbys: t.replication_streaming.value as u32,
            hold: hold(&t.replication_streaming),
        },
        replication_slot_retained_wal: MaxBytes {
            max_bytes: t.replication_slot_retained_wal.value as u64,
            hold: hold(&t.replication_slot_retained_wal),
        },
        long_running_query: max(&t.long_running_query),
        idle_session: max(&t.idle_session),
        idle_in_transaction: max(&t.idle_in_transaction),
        wraparound: max_ratio(&t.wraparound),
        checksum_failures: hold_only(&t.checksum_failures),
        wal_archiving: hold_only(&t.wal_archiving),
        invalid_indexes: hold_only(&t.invalid_indexes),
    }
}

fn remediation<'a>(r: &'a RemediationSettings, written: &'a RemediationWritten) -> Remediation<'a> {
    let state_dir = r
        .pause_state_file
        .parent()
        .filter(|_| r.pause_state_file.file_name() == Some(PAUSE_STATE_FILE.as_ref()))
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
    let (api_token_file, api_token_env) = match &written.api_token {
        Some(TokenSource::File(p)) => (Some(p.to_string_lossy().into_owned()), None),
        Some(TokenSource::Env(var)) => (None, Some(var.as_str())),
        None => (None, None),
    };
    Remediation {
        mode: r.mode.as_str(),
        instance: &r.instance,
        audit_file: r.audit_file.to_string_lossy().into_owned(),
        state_dir,
        sentinel_file: r
            .sentinel_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        api_token_file,
        api_token_env,
        query_max_chars: r.query_max_chars,
        redact_queries: r.redact_queries,
        pacing: human(r.pacing),
        budget: Budget {
            per_target: r.target_budget.0,
            global: r.global_budget.0,
            window: human(r.target_budget.1),
        },
        policies: Ordered(
            r.policies
                .iter()
                .map(|p| {
                    (
                        p.name.as_str(),
                        policy(p, written.applications.get(&p.name)),
                    )
                })
                .collect(),
        ),
        neo4j_policies: Ordered(
            r.neo4j_policies
                .iter()
                .map(|p| (p.name.as_str(), neo4j_policy(p)))
                .collect(),
        ),
    }
}

fn policy<'a>(p: &'a Policy, applications: Option<&'a Applications>) -> PolicyTable<'a> {
    let c = &p.conditions;
    let networks = |n: &[ipnet::IpNet]| n.iter().map(|n| n.to_string()).collect();
    PolicyTable {
        targets: &p.targets,
        action: p.action.as_str(),
        grace: match p.action {
            Action::CancelThenTerminate { grace } => Some(human(grace)),
            Action::Cancel | Action::Terminate => None,
        },
        victims: match p.victims {
            Victims::All => "all",
            Victims::Oldest => "oldest",
        },
        max_per_cycle: p.max_per_cycle,
        only_while_failing: p.only_while_failing.iter().map(|c| c.as_str()).collect(),
        only_while_alerts: p.only_while_alerts.iter().map(String::as_str).collect(),
        when: When {
            state: c.states.iter().map(|s| s.as_str()).collect(),
            idle_for: c.idle_for.map(human),
            query_running_for: c.query_running_for.map(human),
            transaction_open_for: c.transaction_open_for.map(human),
            connected_for: c.connected_for.map(human),
            match_users: &c.match_users,
            ignore_users: &c.ignore_users,
            match_databases: &c.match_databases,
            ignore_databases: &c.ignore_databases,
            match_applications: applications.map(|a| a.0.as_slice()).unwrap_or_default(),
            ignore_applications: applications.map(|a| a.1.as_slice()).unwrap_or_default(),
            match_client_addrs: networks(&c.match_client_addrs),
            ignore_client_addrs: networks(&c.ignore_client_addrs),
            match_query: c.match_query.as_ref().map(|r| r.as_str()),
            ignore_query: c.ignore_query.as_ref().map(|r| r.as_str()),
            blocking_waiters: c.blocking.map(|b| b.min_waiters),
            blocking_for: c.blocking.map(|b| human(b.waited_for)),
        },
    }
}

// The file's shape. Field order is the order printed.

#[derive(Serialize)]
struct File<'a> {
    server: Server,
    log: Log<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    postgres: BTreeMap<&'a str, Target<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    neo4j: BTreeMap<&'a str, Neo4jTargetTable<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesTable<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<Remediation<'a>>,
}

#[derive(Serialize)]
struct KubernetesTable<'a> {
    credentials: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a str>,
    namespace: &'a str,
    statefulsets: bool,
    volume_stats: bool,
    volume_stats_interval: String,
    interval: String,
    max_restarts_last_hour: u32,
    oom_window: String,
    min_volume_free_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseTable<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eviction: Option<EvictionTable<'a>>,
}

#[derive(Serialize)]
struct LeaseTable<'a> {
    name: &'a str,
    duration: String,
    renew_every: String,
}

#[derive(Serialize)]
struct EvictionTable<'a> {
    targets: &'a [String],
    not_ready_for: String,
    cooldown: String,
}

#[derive(Serialize)]
struct Neo4jTargetTable<'a> {
    uri: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    databases: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<&'a str>,
    poll_interval: String,
    poll_timeout: String,
    connect_timeout: String,
    backoff_max: String,
    thresholds: Neo4jThresholdTables,
}

#[derive(Serialize)]
struct Neo4jThresholdTables {
    slow_queries: MaxDuration,
    indexes_online: HoldOnly,
    databases_online: HoldOnly,
    cluster_healthy: HoldOnly,
    node_count: CountTable,
    relationship_count: CountTable,
}

#[derive(Serialize)]
struct CountTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<u64>,
    #[serde(rename = "for")]
    hold: String,
}

/// A table whose keys keep the given order (policies are evaluated in it).
struct Ordered<'a, T>(Vec<(&'a str, T)>);

impl<T: Serialize> Serialize for Ordered<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Remediation<'a> {
    mode: &'static str,
    instance: &'a str,
    audit_file: String,
    state_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentinel_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_token_env: Option<&'a str>,
    query_max_chars: usize,
    redact_queries: bool,
    pacing: String,
    budget: Budget,
    #[serde(skip_serializing_if = "is_empty_ordered")]
    policies: Ordered<'a, PolicyTable<'a>>,
    #[serde(skip_serializing_if = "is_empty_ordered")]
    neo4j_policies: Ordered<'a, Neo4jPolicyTable<'a>>,
}

#[derive(Serialize)]
struct Neo4jPolicyTable<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targets: &'a [String],
    action: &'static str,
    victims: &'static str,
    max_per_cycle: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    only_while_failing: Vec<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    only_while_alerts: &'a [String],
    when: Neo4jWhenTable<'a>,
}

#[derive(Serialize)]
struct Neo4jWhenTable<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    running_for: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    status: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    match_users: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_users: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    match_databases: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_databases: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    match_query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_query: Option<&'a str>,
}

fn neo4j_policy(p: &Neo4jPolicy) -> Neo4jPolicyTable<'_> {
    let c = &p.conditions;
    Neo4jPolicyTable {
        targets: &p.targets,
        action: "terminate",
        victims: match p.victims {
            Victims::All => "all",
            Victims::Oldest => "oldest",
        },
        max_per_cycle: p.max_per_cycle,
        only_while_failing: p.only_while_failing.iter().map(|c| c.as_str()).collect(),
        only_while_alerts: &p.only_while_alerts,
        when: Neo4jWhenTable {
            running_for: c.running_for.map(human),
            status: &c.statuses,
            match_users: &c.match_users,
            ignore_users: &c.ignore_users,
            match_databases: &c.match_databases,
            ignore_databases: &c.ignore_databases,
            match_query: c.match_query.as_ref().map(|r| r.as_str()),
            ignore_query: c.ignore_query.as_ref().map(|r| r.as_str()),
        },
    }
}

fn is_empty_ordered<T>(o: &Ordered<'_, T>) -> bool {
    o.0.is_empty()
}

#[derive(Serialize)]
struct Budget {
    per_target: u32,
    global: u32,
    window: String,
}

#[derive(Serialize)]
struct PolicyTable<'a> {
    /// Empty: every target, written by leaving the key out.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targets: &'a [String],
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace: Option<String>,
    victims: &'static str,
    max_per_cycle: u32,
    only_while_failing: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    only_while_alerts: Vec<&'a str>,
    when: When<'a>,
}

/// Only the conditions the policy sets: an unset condition is no condition.
#[derive(Serialize)]
struct When<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    state: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_running_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_open_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_for: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    match_users: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_users: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    match_databases: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_databases: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    match_applications: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_applications: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    match_client_addrs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignore_client_addrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocking_waiters: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocking_for: Option<String>,
}

#[derive(Serialize)]
struct Server {
    listen: String,
    shutdown_grace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alertmanager_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alertmanager_token_env: Option<String>,
}

#[derive(Serialize)]
struct Log<'a> {
    format: &'static str,
    level: &'a str,
}

#[derive(Serialize)]
struct Target<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    sslmode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ssl_root_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<&'a str>,
    poll_interval: String,
    poll_timeout: String,
    connect_timeout: String,
    statement_timeout: String,
    lock_timeout: String,
    max_connections: u32,
    database_sizes_interval: String,
    backoff_max: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    paths: BTreeMap<&'a str, String>,
    thresholds: ThresholdTables,
}

#[derive(Serialize)]
struct ThresholdTables {
    disk_free: MinRatio,
    connections_used: MaxRatio,
    replication_lag: MaxDuration,
    replication_streaming: MinStandbys,
    replication_slot_retained_wal: MaxBytes,
    long_running_query: MaxDuration,
    idle_session: MaxDuration,
    idle_in_transaction: MaxDuration,
    wraparound: MaxRatio,
    checksum_failures: HoldOnly,
    wal_archiving: HoldOnly,
    invalid_indexes: HoldOnly,
}

#[derive(Serialize)]
struct MinRatio {
    min_ratio: f64,
    #[serde(rename = "for")]
    hold: String,
}

#[derive(Serialize)]
struct MaxRatio {
    max_ratio: f64,
    #[serde(rename = "for")]
    hold: String,
}

#[derive(Serialize)]
struct MaxDuration {
    max: String,
    #[serde(rename = "for")]
    hold: String,
}

#[derive(Serialize)]
struct MinStandbys {
    min_standbys: u32,
    #[serde(rename = "for")]
    hold: String,
}

#[derive(Serialize)]
struct MaxBytes {
    max_bytes: u64,
    #[serde(rename = "for")]
    hold: String,
}

#[derive(Serialize)]
struct HoldOnly {
    #[serde(rename = "for")]
    hold: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_come_back_exactly() {
        for text in ["5s", "300ms", "1h 30m", "10m", "100ms", "1day 2h 3m 4s 5ms"] {
            let d = humantime::parse_duration(text).unwrap();
            assert_eq!(human(secs(d.as_secs_f64())), text);
        }
    }
}
