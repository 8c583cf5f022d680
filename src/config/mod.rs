//! Configuration: a TOML file overridden by `DBWARDEN_` environment variables,
//! read in two stages. [`raw`] reads the merged tree against the schema
//! (unknown keys and wrong types are errors); [`validate`] checks every value,
//! reads secrets, and yields the typed [`Config`] the rest of the program
//! uses. Both stages collect *all* mistakes, each with its key path and the
//! offending value, secrets redacted. [`render`] prints a `Config` back in the
//! file's own shape. Nothing here connects anywhere.
//!
//! The reference for users is `docs/configuration.md`; every option is in
//! `config/dbwarden.example.toml`.

pub mod kubernetes;
mod neo4j;
pub mod raw;
mod render;
pub mod secret;
mod validate;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use serde::Serialize;

pub use secret::{Secret, redact_url};

/// The environment variable prefix; nested keys are separated by `__`,
/// e.g. `DBWARDEN_SERVER__LISTEN=0.0.0.0:9641`. Variables without `__` (such
/// as `DBWARDEN_CONFIG`, the config file's path) are not overrides.
pub const ENV_PREFIX: &str = "DBWARDEN_";

/// Separates nested keys in an override's name.
pub const ENV_SEPARATOR: &str = "__";

/// Where dbwarden listens unless told otherwise. 9641 collides with none of
/// postgres_exporter (9187), Neo4j metrics (2004) or the kubelet (10250).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9641";

/// The `application_name` of every session dbwarden opens; remediation never
/// touches sessions that carry it.
pub const APPLICATION_NAME: &str = "dbwarden";

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub postgres: Vec<PostgresTarget>,
    pub neo4j: Vec<Neo4jTarget>,
    /// Present when a `[remediation]` section is configured.
    #[serde(skip)]
    pub remediation: Option<crate::remediate::RemediationSettings>,
    /// What `remediation` cannot say in the file's own words, for
    /// [`Config::to_redacted_toml`].
    #[serde(skip)]
    remediation_written: RemediationWritten,
    /// Present when a `[kubernetes]` section is configured.
    #[serde(skip)]
    pub kubernetes: Option<crate::kubernetes::KubernetesSettings>,
}

/// Where the remediation API token comes from. Names only: never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    /// Read at startup from this environment variable.
    Env(String),
    /// Read at startup from this file.
    File(PathBuf),
}

/// The parts of `[remediation]` as written that the validated
/// [`crate::remediate::RemediationSettings`] does not keep: the token's
/// source, and the application patterns (kept compiled and anchored).
#[derive(Debug, Clone, Default)]
struct RemediationWritten {
    api_token: Option<TokenSource>,
    /// Per policy name: its application patterns as written.
    applications: BTreeMap<String, Applications>,
}

/// A policy's `match_applications` and `ignore_applications` as written.
type Applications = (Vec<String>, Vec<String>);

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Bearer token Alertmanager must present on `POST /api/v1/alertmanager`;
    /// without one the receiver is disabled.
    #[serde(skip)]
    pub alertmanager_token: Option<Secret>,
    /// Where that token comes from (names only), for printing the config back.
    #[serde(skip)]
    alertmanager_token_source: Option<TokenSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

/// How dbwarden treats one target: cadence, timeouts, connection budget.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSettings {
    #[serde(serialize_with = "ser_duration")]
    pub poll_interval: Duration,
    /// A poll still running after this long is abandoned and counted.
    #[serde(serialize_with = "ser_duration")]
    pub poll_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of dbwarden's sessions.
    #[serde(serialize_with = "ser_duration")]
    pub statement_timeout: Duration,
    /// Server-side `lock_timeout` of dbwarden's sessions.
    #[serde(serialize_with = "ser_duration")]
    pub lock_timeout: Duration,
    /// The most connections dbwarden ever holds to this target.
    pub max_connections: NonZeroU32,
    /// Database sizes are costly on large clusters: read them this often.
    #[serde(serialize_with = "ser_duration")]
    pub database_sizes_interval: Duration,
    /// The longest wait between retries while the target is unreachable.
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
}

/// One runbook threshold: the limit, in base units (ratio 0..1, seconds,
/// bytes, count), and how long the condition must hold before the check fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limit {
    pub value: f64,
    #[serde(rename = "for", serialize_with = "ser_duration")]
    pub hold: Duration,
}

/// The runbook's prevention thresholds and validation checklist limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Fails when a watched volume's free ratio drops below this.
    pub disk_free: Limit,
    /// Fails when connections used exceed this ratio of the usable slots.
    pub connections_used: Limit,
    /// Fails when replication lag exceeds this many seconds.
    pub replication_lag: Limit,
    /// Fails when fewer standbys stream than this (primary), or the WAL
    /// receiver is not streaming (standby).
    pub replication_streaming: Limit,
    /// Fails when a replication slot retains more WAL bytes than this, or is inactive.
    pub replication_slot_retained_wal: Limit,
    /// Fails when an active query has run longer than this many seconds.
    pub long_running_query: Limit,
    /// Fails when a session has been idle longer than this many seconds.
    pub idle_session: Limit,
    /// Fails when a session has been idle in transaction longer than this many seconds.
    pub idle_in_transaction: Limit,
    /// Fails when the oldest database's transaction-ID age exceeds this ratio of 2^31.
    pub wraparound: Limit,
    /// Fails when any data checksum failure has been counted.
    pub checksum_failures: Limit,
    /// Fails when the last WAL archive attempt failed.
    pub wal_archiving: Limit,
    /// Fails when the connected database has invalid indexes.
    pub invalid_indexes: Limit,
}

impl Default for Thresholds {
    /// The runbook's numbers.
    fn default() -> Self {
        let l = |value: f64, hold_secs: u64| Limit {
            value,
            hold: Duration::from_secs(hold_secs),
        };
        Thresholds {
            disk_free: l(0.30, 300),
            connections_used: l(0.80, 60),
            replication_lag: l(5.0, 60),
            replication_streaming: l(0.0, 60),
            replication_slot_retained_wal: l(1024.0 * 1024.0 * 1024.0, 300),
            long_running_query: l(300.0, 0),
            idle_session: l(600.0, 0),
            idle_in_transaction: l(300.0, 0),
            wraparound: l(0.50, 0),
            checksum_failures: l(0.0, 0),
            wal_archiving: l(0.0, 0),
            invalid_indexes: l(0.0, 0),
        }
    }
}

/// Where a target's password comes from. Names only: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordSource {
    /// None configured: trust or peer authentication, `~/.pgpass`, or `PGPASSWORD`.
    None,
    /// Written in the URL (shown redacted).
    Url,
    /// Read at startup from this environment variable.
    Env(String),
    /// Read at startup from this file.
    File(PathBuf),
}

/// The runbook's Neo4j checks' limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neo4jThresholds {
    /// Fails when a transaction has run longer than this many seconds (the
    /// runbook's slow-query threshold, 1000 ms).
    pub slow_queries: Limit,
    /// Fails when an index is not ONLINE (POPULATING or FAILED).
    pub indexes_online: Limit,
    /// Fails when a database's current status is not its requested status (4.4+).
    pub databases_online: Limit,
    /// Fails when a cluster member is unhealthy (clustered deployments).
    pub cluster_healthy: Limit,
    /// Fails when a configured database's node count leaves its expected range.
    pub node_count: CountRange,
    /// Fails when a configured database's relationship count leaves its expected range.
    pub relationship_count: CountRange,
}

/// An expected range of a count; no bound set: always within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountRange {
    pub min: Option<u64>,
    pub max: Option<u64>,
    #[serde(rename = "for", serialize_with = "ser_duration")]
    pub hold: Duration,
}

impl CountRange {
    pub fn contains(&self, n: u64) -> bool {
        self.min.is_none_or(|m| n >= m) && self.max.is_none_or(|m| n <= m)
    }
}

impl Default for Neo4jThresholds {
    /// The runbook's numbers.
    fn default() -> Self {
        let l = |value: f64, hold_secs: u64| Limit {
            value,
            hold: Duration::from_secs(hold_secs),
        };
        Neo4jThresholds {
            slow_queries: l(1.0, 0),
            indexes_online: l(0.0, 300),
            databases_online: l(0.0, 60),
            cluster_healthy: l(0.0, 60),
            node_count: CountRange {
                min: None,
                max: None,
                hold: Duration::ZERO,
            },
            relationship_count: CountRange {
                min: None,
                max: None,
                hold: Duration::ZERO,
            },
        }
    }
}

/// A Neo4j target, ready to connect to.
#[derive(Debug, Clone, Serialize)]
pub struct Neo4jTarget {
    pub name: String,
    /// `bolt://host:7687` (one server) or `neo4j://host:7687` (routing), or
    /// their `+s` / `+ssc` TLS forms. Never holds credentials.
    pub uri: String,
    pub user: String,
    pub password_source: PasswordSource,
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Databases whose indexes and counts are read (default `["neo4j"]`).
    pub databases: Vec<String>,
    /// Only poll_interval, poll_timeout, connect_timeout and backoff_max
    /// apply; max_connections is fixed (one poll connection, one actor connection).
    pub settings: TargetSettings,
    pub thresholds: Neo4jThresholds,
}

/// A PostgreSQL target, ready to connect to.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresTarget {
    pub name: String,
    /// The URL with its password redacted; safe to print.
    pub url: String,
    pub password_source: PasswordSource,
    /// The effective sslmode: the `sslmode` key, else the URL's, else "prefer".
    pub sslmode: String,
    pub ssl_root_cert: Option<PathBuf>,
    /// Filesystem paths to watch with statvfs, by volume name (`data`, `wal`, ...).
    pub paths: Vec<WatchedPath>,
    pub settings: TargetSettings,
    pub thresholds: Thresholds,
    #[serde(skip)]
    pub connect: ConnectOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchedPath {
    pub volume: String,
    pub path: PathBuf,
}

/// sqlx's connection options, which hold the password; printed redacted.
#[derive(Clone)]
pub struct ConnectOptions(pub sqlx::postgres::PgConnectOptions);

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectOptions(<redacted>)")
    }
}

/// One mistake in the configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl Config {
    /// Reads `path`, applies `DBWARDEN_*` overrides from the process
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // `vars()` would panic on a variable that is not UTF-8; skip those.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::from_toml_with_env(&text, env)
    }

    /// Parses `toml` with the given environment (only `DBWARDEN_*__*`
    /// overrides, the variables named by `password_env` and
    /// `remediation.api_token_env`, and `HOSTNAME` are read), then validates.
    /// Tests pass their own environment.
    pub fn from_toml_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut root: toml::Table = toml
            .parse()
            .map_err(|e| ConfigError::Invalid(vec![syntax_issue(toml, &e)]))?;
        let (env_paths, mut issues) = apply_env_overrides(&mut root, &env);

        let mut reader = raw::Reader::new(&env_paths);
        (reader.policy_order, reader.neo4j_policy_order) = raw::policy_orders(toml);
        let raw = reader.read(&root);
        let read_issues = reader.issues;
        let validated = validate::validate(raw, &env);

        issues.extend(read_issues.iter().cloned());
        if let Err(more) = &validated {
            // A key the reader rejected was treated as unset: drop what
            // validation then said about it (e.g. "missing" after a type error).
            let rejected = |p: &str| {
                read_issues
                    .iter()
                    .any(|r| r.path == p || p.starts_with(&format!("{}.", r.path)))
            };
            issues.extend(more.iter().filter(|i| !rejected(&i.path)).cloned());
        }
        if issues.is_empty()
            && let Ok(config) = validated
        {
            return Ok(config);
        }
        let mut seen = std::collections::HashSet::new();
        issues.retain(|i| seen.insert((i.path.clone(), i.message.clone())));
        // In the file's order of sections, then by key path.
        issues.sort_by_cached_key(|i| {
            let section = i.path.split('.').next().unwrap_or_default();
            let rank = match i.path.as_str() {
                "" => 0,
                _ => {
                    1 + raw::ROOT_KEYS
                        .iter()
                        .position(|k| *k == section)
                        .unwrap_or(raw::ROOT_KEYS.len())
                }
            };
            (rank, i.path.clone())
        });
        for issue in &mut issues {
            let set_by = env_paths
                .iter()
                .find(|(p, _)| issue.path == **p || issue.path.starts_with(&format!("{p}.")));
            if let Some((_, var)) = set_by {
                issue
                    .message
                    .push_str(&format!(" (set by environment variable {var})"));
            }
        }
        Err(ConfigError::Invalid(issues))
    }

    /// The effective configuration as TOML in the config file's own shape,
    /// every default filled in, passwords redacted. It loads back into the
    /// same configuration (given the same password sources).
    pub fn to_redacted_toml(&self) -> String {
        render::to_toml(self)
    }
}

/// A TOML syntax error, located by line and column. toml's own message
/// quotes the offending line, which may hold a password: we do not.
fn syntax_issue(text: &str, e: &toml::de::Error) -> ConfigIssue {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    };
    let message = e.message().trim().replace('\n', "; ");
    ConfigIssue {
        path: String::new(),
        message: format!("TOML syntax error{at}: {}", redact_url(&message)),
    }
}

/// Merges `DBWARDEN_A__B__C=value` into `root` as `a.b.c = "value"`, the
/// environment winning. Returns the key paths set, with their variables (the
/// reader types those string values by the schema), and any malformed names.
fn apply_env_overrides(
    root: &mut toml::Table,
    env: &[(String, String)],
) -> (BTreeMap<String, String>, Vec<ConfigIssue>) {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains(ENV_SEPARATOR))
        .collect();
    vars.sort();
    let mut paths = BTreeMap::new();
    let mut issues = Vec::new();
    for (var, value) in vars {
        let name = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let parts: Vec<&str> = name.split(ENV_SEPARATOR).collect();
        if parts.iter().any(|p| p.is_empty()) {
            issues.push(ConfigIssue {
                path: String::new(),
                message: format!(
                    "environment variable {var} does not name a key: separate nested keys with one \"__\", e.g. DBWARDEN_SERVER__LISTEN"
                ),
            });
            continue;
        }
        let mut table = &mut *root;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let toml::Value::Table(inner) = entry else {
                unreachable!("just made a table")
            };
            table = inner;
        }
        table.insert(
            parts[parts.len() - 1].to_string(),
            toml::Value::String(value.clone()),
        );
        let path = parts
            .iter()
            .fold(String::new(), |path, part| raw::join(&path, part));
        paths.insert(path, var.clone());
    }
    (paths, issues)
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::CheckId;
    use crate::observe::SessionState;
    use crate::remediate::Mode;
    use crate::remediate::policy::{Action, Blocking, Victims};

    const EXAMPLE: &str = include_str!("../../config/dbwarden.example.toml");
    const LOCAL: &str = include_str!("../../config/local.toml");
    const EXAMPLE_ENV: [(&str, &str); 2] = [
        ("PG_PRIMARY_PASSWORD", "primary-secret-1"),
        ("PG_STANDBY_PASSWORD", "standby-secret-2"),
    ];

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(toml, env(vars))
    }

    #[track_caller]
    fn ok(toml: &str, vars: &[(&str, &str)]) -> Config {
        load(toml, vars).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn issues(toml: &str, vars: &[(&str, &str)]) -> Vec<ConfigIssue> {
        match load(toml, vars) {
            Ok(c) => panic!("expected errors, got {c:#?}"),
            Err(ConfigError::Invalid(issues)) => issues,
            Err(e) => panic!("expected ConfigError::Invalid, got {e}"),
        }
    }

    /// The one issue at `path`, whose message must contain every one of `needles`.
    #[track_caller]
    fn assert_issue(issues: &[ConfigIssue], path: &str, needles: &[&str]) {
        let at: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
        assert_eq!(at.len(), 1, "one issue at {path} expected in {issues:#?}");
        for n in needles {
            assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
        }
    }

    const MIN: &str = "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n";

    #[test]
    fn the_example_loads_with_the_runbook_defaults_and_its_overrides() {
        let c = ok(EXAMPLE, &EXAMPLE_ENV);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9641");
        let names: Vec<_> = c.postgres.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["primary", "standby"]);
        let (primary, standby) = (&c.postgres[0], &c.postgres[1]);
        assert_eq!(
            primary.password_source,
            PasswordSource::Env("PG_PRIMARY_PASSWORD".into())
        );
        assert_eq!(primary.sslmode, "verify-full");
        assert_eq!(standby.sslmode, "require", "from the url");
        assert_eq!(primary.settings.poll_interval, Duration::from_secs(5));
        assert_eq!(standby.settings.poll_interval, Duration::from_secs(15));
        assert_eq!(standby.settings.poll_timeout, Duration::from_secs(5));
        assert_eq!(primary.settings.max_connections.get(), 3);
        assert_eq!(primary.paths.len(), 2);

        // The file's [thresholds] are the built-in defaults, which are the runbook's.
        let d = Thresholds::default();
        assert_eq!(d.disk_free.value, 0.30);
        assert_eq!(d.connections_used.value, 0.80);
        assert_eq!(d.replication_lag.value, 5.0);
        assert_eq!(d.long_running_query.value, 5.0 * 60.0);
        assert_eq!(d.idle_session.value, 10.0 * 60.0);
        assert_eq!(ok(MIN, &[]).postgres[0].thresholds, d);
        let mut standby_expected = d.clone();
        standby_expected.replication_lag.hold = Duration::from_secs(300);
        assert_eq!(standby.thresholds, standby_expected);
        assert_eq!(primary.thresholds.disk_free.value, 0.15);
        assert_eq!(primary.thresholds.disk_free.hold, d.disk_free.hold);
        assert_eq!(primary.thresholds.replication_streaming.value, 1.0);

        // Remediation: the runbook's two mitigations, ready, in dry-run.
        let r = c
            .remediation
            .as_ref()
            .expect("the example configures remediation");
        assert_eq!(r.mode, crate::remediate::Mode::DryRun);
        assert_eq!(
            r.instance, "dbwarden",
            "no HOSTNAME in the test's environment"
        );
        assert_eq!(r.audit_file, Path::new("/var/lib/dbwarden/audit.jsonl"));
        assert_eq!(
            r.pause_state_file,
            Path::new("/var/lib/dbwarden/paused.json")
        );
        assert_eq!(
            (r.sentinel_file.as_ref(), r.api_token.as_ref()),
            (None, None)
        );
        assert_eq!(r.target_budget, (10, Duration::from_secs(600)));
        assert_eq!(r.global_budget, (30, Duration::from_secs(600)));
        let names: Vec<_> = r.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "runbook-idle-sessions",
                "runbook-long-queries",
                "lock-chain-roots"
            ]
        );
        let (idle, long, roots) = (&r.policies[0], &r.policies[1], &r.policies[2]);
        assert_eq!(idle.conditions.states, [SessionState::Idle]);
        assert_eq!(idle.conditions.idle_for, Some(Duration::from_secs(600)));
        assert_eq!(idle.action, Action::Terminate);
        assert_eq!(long.conditions.states, [SessionState::Active]);
        assert_eq!(
            long.conditions.query_running_for,
            Some(Duration::from_secs(300))
        );
        assert!(idle.targets.is_empty() && long.targets.is_empty());
        assert_eq!(idle.only_while_failing, [CheckId::ConnectionsUsed]);
        assert_eq!(
            roots.conditions.blocking,
            Some(Blocking {
                min_waiters: 3,
                waited_for: Duration::from_secs(30)
            })
        );
        assert_eq!(roots.victims, Victims::Oldest);
        assert!(ok(LOCAL, &[]).remediation.is_none());
        assert!(!LOCAL.contains("remediation"));
    }

    #[test]
    fn the_printed_config_loads_back_into_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  tok-file-Wd4\n").unwrap();
        let every_remediation_key = format!(
            "{MIN}max_connections = 2\n[postgres.other]\nurl = \"postgres://h/d\"\n{}",
            every_remediation_key(&token)
        );
        let mut vars = EXAMPLE_ENV.to_vec();
        vars.push(("HOSTNAME", "host-7.example"));
        for (name, text) in [
            ("example", EXAMPLE),
            ("local", LOCAL),
            ("remediation", every_remediation_key.as_str()),
        ] {
            let first = ok(text, &vars).to_redacted_toml();
            assert!(!first.contains("tok-file-Wd4"), "{first}");
            let second = load(&first, &vars)
                .unwrap_or_else(|e| {
                    panic!("{name}: the printed config does not load: {e}\n{first}")
                })
                .to_redacted_toml();
            assert_eq!(first, second, "{name}");
            // The file's shape, not the internal structs.
            assert!(!first.contains("[[postgres"), "{first}");
            assert!(!first.contains("value ="), "{first}");
            assert!(!first.contains("\n[defaults]"), "{first}");
            assert!(!first.contains("\n[thresholds"), "{first}");
            assert!(!first.contains(".settings]"), "{first}");
            // The same remediation, not only the same text.
            let (a, b) = (ok(text, &vars), ok(&first, &vars));
            assert_eq!(
                format!("{:?}", a.remediation),
                format!("{:?}", b.remediation),
                "{name}"
            );
        }
        let printed = ok(&every_remediation_key, &vars).to_redacted_toml();
        for needle in [
            "[remediation]\nmode = \"enforce\"\ninstance = \"dbwarden-1\"\n",
            "state_dir = \"/srv/dbwarden\"\n",
            "sentinel_file = \"/etc/dbwarden/PAUSE\"\n",
            &format!("api_token_file = {:?}\n", token.display().to_string()),
            "query_max_chars = 100\nredact_queries = true\npacing = \"0s\"\n",
            "[remediation.budget]\nper_target = 0\nglobal = 5\nwindow = \"1h\"\n",
            "[remediation.policies.zz-first]\ntargets = [\"main\"]\naction = \"cancel_then_terminate\"\ngrace = \"15s\"\nvictims = \"oldest\"\nmax_per_cycle = 3\n",
            "match_applications = [\"web-.*\"]\n",
            "\"10.0.0.0/8\",\n    \"192.168.1.5/32\",\n",
            "match_query = \"(?i)^select\"\n",
            "blocking_waiters = 2\nblocking_for = \"30s\"\n",
            "[remediation.policies.aa-second]\naction = \"cancel\"\n",
        ] {
            assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
        }
        assert!(
            printed.find("[remediation.policies.zz-first]")
                < printed.find("[remediation.policies.aa-second]"),
            "{printed}"
        );
        // An unset condition is no condition: not printed.
        let second = printed
            .split("[remediation.policies.aa-second.when]")
            .nth(1)
            .unwrap();
        assert_eq!(second.trim(), "connected_for = \"1day\"", "{printed}");
        let printed = ok(EXAMPLE, &EXAMPLE_ENV).to_redacted_toml();
        for needle in [
            "[server]\n",
            "[log]\n",
            "[postgres.primary]\n",
            "password_env = \"PG_PRIMARY_PASSWORD\"\n",
            "poll_interval = \"5s\"\n",
            "[postgres.primary.paths]\n",
            "[postgres.primary.thresholds.disk_free]\nmin_ratio = 0.15\nfor = \"5m\"\n",
            "[postgres.primary.thresholds.connections_used]\nmax_ratio = 0.8\n",
            "[postgres.standby.thresholds.replication_lag]\nmax = \"5s\"\nfor = \"5m\"\n",
            "[postgres.primary.thresholds.replication_streaming]\nmin_standbys = 1\n",
            "max_bytes = 1073741824\n",
            "[postgres.standby.thresholds.invalid_indexes]\nfor = \"0s\"\n",
        ] {
            assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
        }
        for secret in ["primary-secret-1", "standby-secret-2"] {
            assert!(!printed.contains(secret));
        }
    }

    #[test]
    fn a_password_file_is_printed_by_path_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "file-secret-3\n").unwrap();
        let toml = format!("{MIN}password_file = {:?}\n", file.display().to_string());
        let c = ok(&toml, &[]);
        assert_eq!(
            c.postgres[0].password_source,
            PasswordSource::File(file.clone())
        );
        let printed = c.to_redacted_toml();
        assert!(printed.contains(&format!("password_file = {:?}", file.display().to_string())));
        assert!(!printed.contains("file-secret-3"));
        assert_eq!(ok(&printed, &[]).to_redacted_toml(), printed);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_full_path() {
        let toml = format!(
            "[serverr]\nlisten = \"x\"\n{MIN}pol_interval = \"5s\"\n\
             [postgres.main.thresholds.disk_free]\nmin_ratoi = 0.2\n\
             [thresholds.bogus]\nfor = \"1s\"\n"
        );
        let issues = issues(&toml, &[]);
        assert_issue(&issues, "serverr", &["unknown", "`server`"]);
        assert_issue(
            &issues,
            "postgres.main.pol_interval",
            &["unknown key", "poll_interval"],
        );
        assert_issue(
            &issues,
            "postgres.main.thresholds.disk_free.min_ratoi",
            &["unknown key", "min_ratio"],
        );
        assert_issue(&issues, "thresholds.bogus", &["unknown table `bogus`"]);
        assert_eq!(issues.len(), 4, "{issues:#?}");
    }

    #[test]
    fn a_bad_duration_names_its_path_and_value() {
        let issues = issues(&format!("{MIN}poll_interval = \"5x\"\n"), &[]);
        assert_issue(
            &issues,
            "postgres.main.poll_interval",
            &["\"5x\"", "duration"],
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
        let issues = self::issues(&format!("{MIN}poll_interval = 5\n"), &[]);
        assert_issue(
            &issues,
            "postgres.main.poll_interval",
            &["duration", "found 5"],
        );
    }

    #[test]
    fn a_ratio_out_of_range_is_an_error() {
        let issues = issues(
            &format!("{MIN}[postgres.main.thresholds.disk_free]\nmin_ratio = 1.5\n"),
            &[],
        );
        assert_issue(
            &issues,
            "postgres.main.thresholds.disk_free.min_ratio",
            &["1.5", "out of range"],
        );
        let issues = self::issues(
            "[thresholds.connections_used]\nmax_ratio = -0.1\n[postgres.a]\nurl = \"postgres://h/d\"\n",
            &[],
        );
        assert_issue(&issues, "thresholds.connections_used.max_ratio", &["-0.1"]);
    }

    #[test]
    fn a_target_without_url_is_an_error() {
        let issues = issues("[postgres.main]\nsslmode = \"require\"\n", &[]);
        assert_issue(&issues, "postgres.main.url", &["missing"]);
        let issues = self::issues("[server]\n", &[]);
        assert_issue(&issues, "postgres", &["no targets"]);
        let issues = self::issues("[postgres.main]\nurl = \"mysql://u@h/d\"\n", &[]);
        assert_issue(&issues, "postgres.main.url", &["\"mysql://u@h/d\""]);
    }

    #[test]
    fn two_password_sources_are_an_error() {
        let toml =
            "[postgres.main]\nurl = \"postgres://app:pw-in-url@db/app\"\npassword_env = \"PGPW\"\n";
        let issues = issues(toml, &[("PGPW", "x")]);
        assert_issue(
            &issues,
            "postgres.main",
            &[
                "more than one password source",
                "url",
                "password_env = \"PGPW\"",
            ],
        );
        assert!(!format!("{issues:?}").contains("pw-in-url"));
    }

    #[test]
    fn an_unset_password_env_is_an_error() {
        let toml = format!("{MIN}password_env = \"MAIN_PW\"\n");
        let issues = issues(&toml, &[]);
        assert_issue(
            &issues,
            "postgres.main.password_env",
            &["\"MAIN_PW\"", "not set"],
        );
        let issues = self::issues(&toml, &[("MAIN_PW", "")]);
        assert_issue(
            &issues,
            "postgres.main.password_env",
            &["\"MAIN_PW\"", "empty"],
        );
        let c = ok(&toml, &[("MAIN_PW", "pw")]);
        assert_eq!(c.postgres[0].connect.0.get_username(), "app");
    }

    #[test]
    fn a_missing_password_file_is_an_error() {
        let toml = format!("{MIN}password_file = \"/nonexistent/dbwarden/pw\"\n");
        let issues = issues(&toml, &[]);
        assert_issue(
            &issues,
            "postgres.main.password_file",
            &["\"/nonexistent/dbwarden/pw\"", "cannot read"],
        );
    }

    #[test]
    fn environment_variables_override_the_file() {
        let c = ok(
            MIN,
            &[
                ("DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL", "2s"),
                ("DBWARDEN_SERVER__LISTEN", "0.0.0.0:9999"),
                ("DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS", "3"),
                ("DBWARDEN_THRESHOLDS__DISK_FREE__MIN_RATIO", "0.25"),
                // The config file's path, read by the CLI: not an override.
                ("DBWARDEN_CONFIG", "/etc/dbwarden.toml"),
                ("OTHER__VAR", "x"),
            ],
        );
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9999");
        let t = &c.postgres[0];
        assert_eq!(t.settings.poll_interval, Duration::from_secs(2));
        // Unset, the timeouts shrink to fit a short interval.
        assert_eq!(t.settings.poll_timeout, Duration::from_secs(2));
        assert_eq!(t.settings.statement_timeout, Duration::from_secs(2));
        assert_eq!(t.settings.max_connections.get(), 3);
        assert_eq!(t.thresholds.disk_free.value, 0.25);
        // An override replaces a value written in the file.
        let c = ok(
            "[server]\nlisten = \"127.0.0.1:1\"\n[postgres.main]\nurl = \"postgres://h/d\"\n",
            &[("DBWARDEN_SERVER__LISTEN", "127.0.0.1:2")],
        );
        assert_eq!(c.server.listen.port(), 2);
    }

    #[test]
    fn a_bad_override_names_its_variable() {
        let issues = issues(
            MIN,
            &[
                ("DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL", "5x"),
                ("DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS", "three"),
                ("DBWARDEN_POSTGRES__MAIN__POL_INTERVAL", "5s"),
            ],
        );
        assert_issue(
            &issues,
            "postgres.main.poll_interval",
            &["\"5x\"", "DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL"],
        );
        assert_issue(
            &issues,
            "postgres.main.max_connections",
            &["\"three\"", "DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS"],
        );
        assert_issue(
            &issues,
            "postgres.main.pol_interval",
            &["unknown key", "DBWARDEN_POSTGRES__MAIN__POL_INTERVAL"],
        );
        assert_eq!(issues.len(), 3, "{issues:#?}");
    }

    #[test]
    fn target_thresholds_merge_field_by_field_over_the_global_ones() {
        let toml = "\
            [thresholds.disk_free]\nmin_ratio = 0.2\nfor = \"10m\"\n\
            [thresholds.replication_lag]\nmax = \"30s\"\n\
            [postgres.a]\nurl = \"postgres://h/d\"\n\
            [postgres.a.thresholds.disk_free]\nfor = \"1m\"\n\
            [postgres.a.thresholds.replication_lag]\nfor = \"2m\"\n\
            [postgres.b]\nurl = \"postgres://h/d\"\n\
            [postgres.b.thresholds.disk_free]\nmin_ratio = 0.1\n";
        let c = ok(toml, &[]);
        let (a, b) = (&c.postgres[0].thresholds, &c.postgres[1].thresholds);
        let d = Thresholds::default();
        assert_eq!(
            (a.disk_free.value, a.disk_free.hold),
            (0.2, Duration::from_secs(60))
        );
        assert_eq!(
            (b.disk_free.value, b.disk_free.hold),
            (0.1, Duration::from_secs(600))
        );
        assert_eq!(
            (a.replication_lag.value, a.replication_lag.hold),
            (30.0, Duration::from_secs(120))
        );
        assert_eq!(b.replication_lag.value, 30.0);
        assert_eq!(b.replication_lag.hold, d.replication_lag.hold);
        assert_eq!(a.connections_used, d.connections_used);
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let toml = "\
            [server]\nlisten = \"localhost\"\n\
            [postgres.main]\nurl = \"postgres://h/d\"\npoll_interval = \"5x\"\n\
            [postgres.main.thresholds.connections_used]\nmax_ratio = 1.5\n";
        let issues = issues(toml, &[]);
        assert_eq!(issues.len(), 3, "{issues:#?}");
        assert_issue(&issues, "server.listen", &["\"localhost\""]);
        assert_issue(&issues, "postgres.main.poll_interval", &["\"5x\""]);
        assert_issue(
            &issues,
            "postgres.main.thresholds.connections_used.max_ratio",
            &["1.5"],
        );
    }

    #[test]
    fn a_mistake_in_defaults_is_reported_once_where_it_was_written() {
        let toml = "\
            [defaults]\npoll_interval = \"10ms\"\npoll_timeout = \"20s\"\n\
            [postgres.a]\nurl = \"postgres://h/d\"\n\
            [postgres.b]\nurl = \"postgres://h/d\"\n";
        let issues = issues(toml, &[]);
        assert_issue(
            &issues,
            "defaults.poll_interval",
            &["\"10ms\"", "too short"],
        );
        assert_issue(
            &issues,
            "defaults.poll_timeout",
            &[
                "\"20s\"",
                "longer than poll_interval \"10ms\" (defaults.poll_interval)",
            ],
        );
        assert_eq!(issues.len(), 2, "{issues:#?}");
    }

    #[test]
    fn a_type_error_is_not_also_reported_as_missing() {
        let issues = issues("[postgres.main]\nurl = 5\n", &[]);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_issue(
            &issues,
            "postgres.main.url",
            &["expected a string, found 5"],
        );
        let issues = self::issues("[postgres]\nmain = \"postgres://u:pw9@h/d\"\n", &[]);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_issue(
            &issues,
            "postgres.main",
            &["expected a table", "<redacted>"],
        );
        assert!(!format!("{issues:?}").contains("pw9"));
    }

    #[test]
    fn sslmode_comes_from_the_key_or_the_url_and_they_must_agree() {
        let c = ok(
            "[postgres.a]\nurl = \"postgres://h/d?sslmode=verify-full\"\n",
            &[],
        );
        assert_eq!(c.postgres[0].sslmode, "verify-full");
        let c = ok(MIN, &[]);
        assert_eq!(c.postgres[0].sslmode, "prefer");
        let issues = issues(
            "[postgres.a]\nurl = \"postgres://h/d?sslmode=verify-full\"\nsslmode = \"disable\"\n",
            &[],
        );
        assert_issue(
            &issues,
            "postgres.a.sslmode",
            &["\"disable\"", "verify-full"],
        );
        let issues = self::issues(&format!("{MIN}sslmode = \"on\"\n"), &[]);
        assert_issue(&issues, "postgres.main.sslmode", &["\"on\""]);
    }

    #[test]
    fn url_parameters_sqlx_would_ignore_are_errors() {
        let issues = issues(
            "[postgres.a]\nurl = \"postgres://h/d?connect_timeout=10&passwd=pw-Lk3&sslmode=require\"\n\
             [postgres.b]\nurl = \"postgres://h/d?application_name=x\"\n",
            &[],
        );
        let a: Vec<_> = issues
            .iter()
            .filter(|i| i.path == "postgres.a.url")
            .collect();
        assert_eq!(a.len(), 2, "{issues:#?}");
        assert!(a[0].message.contains("`connect_timeout`"), "{a:?}");
        assert!(a[1].message.contains("`passwd`"), "{a:?}");
        assert!(!format!("{issues:?}").contains("pw-Lk3"));
        assert_issue(&issues, "postgres.b.url", &["application_name"]);
        let c = ok(
            "[postgres.a]\nurl = \"postgres://h/d?options[search_path]=x&sslrootcert=/x\"\n",
            &[],
        );
        assert_eq!(c.postgres[0].sslmode, "prefer");
    }

    #[test]
    fn the_redaction_placeholder_is_not_a_password() {
        let issues = issues("[postgres.a]\nurl = \"postgres://u:<redacted>@h/d\"\n", &[]);
        assert_issue(&issues, "postgres.a.url", &["placeholder"]);
    }

    #[test]
    fn a_syntax_error_does_not_quote_the_line() {
        let issues = issues("[postgres.a]\nurl = \"postgres://u:pw7@h/d\n", &[]);
        assert_eq!(issues.len(), 1);
        assert!(issues[0].message.contains("line 2"), "{issues:?}");
        assert!(!issues[0].message.contains("pw7"), "{issues:?}");
    }

    #[test]
    fn passwords_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "secret-from-file\n").unwrap();
        let toml = format!(
            "[postgres.url]\nurl = \"postgres://u:secret-in-url@h/d\"\n\
             [postgres.query]\nurl = \"postgres://u@h/d?password=secret-in-query\"\n\
             [postgres.env]\nurl = \"postgres://u@h/d\"\npassword_env = \"PW\"\n\
             [postgres.file]\nurl = \"postgres://u@h/d\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let vars = [("PW", "secret-from-env")];
        let secrets = [
            "secret-in-url",
            "secret-in-query",
            "secret-from-env",
            "secret-from-file",
        ];
        let c = ok(&toml, &vars);
        // The secrets did reach the connect options.
        assert_eq!(c.postgres.len(), 4);
        let shown = [
            format!("{c:?}"),
            format!("{c:#?}"),
            c.to_redacted_toml(),
            serde_json::to_string(&c).unwrap(),
        ];
        // And every error about these targets.
        let broken = format!(
            "{toml}poll_interval = \"5x\"\n[postgres.url.thresholds.disk_free]\nmin_ratio = 2.0\n"
        );
        let err = load(&broken, &vars).unwrap_err();
        let errors = [err.to_string(), format!("{err:?}")];
        for text in shown.iter().chain(&errors) {
            for s in secrets {
                assert!(!text.contains(s), "{s} printed in:\n{text}");
            }
        }
        // Two sources for one target: the error names them, not the password.
        let both = format!(
            "{toml}[postgres.both]\nurl = \"postgres://u:secret-in-url@h/d\"\npassword_env = \"PW\"\n"
        );
        let err = load(&both, &vars).unwrap_err().to_string();
        for s in secrets {
            assert!(!err.contains(s), "{s} printed in:\n{err}");
        }
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, MIN).unwrap();
        assert_eq!(Config::load(&file).unwrap().postgres[0].name, "main");
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Config::load(&missing),
            Err(ConfigError::Read { .. })
        ));
    }

    // Remediation.

    /// Every `[remediation]` key, with values other than the defaults.
    fn every_remediation_key(token: &Path) -> String {
        format!(
            "[remediation]\n\
             mode = \"enforce\"\ninstance = \"dbwarden-1\"\n\
             audit_file = \"/srv/dbwarden/audit.jsonl\"\nstate_dir = \"/srv/dbwarden\"\n\
             sentinel_file = \"/etc/dbwarden/PAUSE\"\napi_token_file = {:?}\n\
             query_max_chars = 100\nredact_queries = true\npacing = \"0s\"\n\
             [remediation.budget]\nper_target = 0\nglobal = 5\nwindow = \"1h\"\n\
             [remediation.policies.zz-first]\n\
             targets = [\"main\"]\naction = \"cancel_then_terminate\"\ngrace = \"15s\"\n\
             victims = \"oldest\"\nmax_per_cycle = 3\n\
             only_while_failing = [\"connections_used\", \"long_running_query\"]\n\
             [remediation.policies.zz-first.when]\n\
             state = [\"active\", \"idle_in_transaction\"]\n\
             query_running_for = \"5m\"\ntransaction_open_for = \"1h\"\nconnected_for = \"1day\"\n\
             match_users = [\"app\"]\nignore_users = [\"batch\"]\n\
             match_databases = [\"intelgraph\"]\nignore_databases = [\"postgres\"]\n\
             match_applications = [\"web-.*\"]\nignore_applications = [\"pg_dump\", \"psql\"]\n\
             match_client_addrs = [\"10.0.0.0/8\", \"192.168.1.5\"]\n\
             ignore_client_addrs = [\"10.1.0.0/16\"]\n\
             match_query = \"(?i)^select\"\nignore_query = \"(?i)vacuum\"\n\
             blocking_waiters = 2\nblocking_for = \"30s\"\n\
             [remediation.policies.aa-second]\naction = \"cancel\"\n\
             [remediation.policies.aa-second.when]\nconnected_for = \"1day\"\n",
            token.display().to_string()
        )
    }

    /// MIN with `[remediation]` and one policy `p` whose extra policy keys
    /// and `when` keys are given.
    fn with_policy(policy: &str, when: &str) -> String {
        format!(
            "{MIN}[remediation]\n[remediation.policies.p]\naction = \"terminate\"\n{policy}\
             [remediation.policies.p.when]\n{when}"
        )
    }

    fn policy(c: &Config) -> &Policy {
        &c.remediation.as_ref().unwrap().policies[0]
    }

    use crate::remediate::Policy;

    #[test]
    fn without_a_remediation_section_there_is_no_remediation() {
        assert!(ok(MIN, &[]).remediation.is_none());
        assert!(!ok(MIN, &[]).to_redacted_toml().contains("[remediation"));
    }

    #[test]
    fn an_empty_remediation_section_takes_the_defaults() {
        let c = ok(&format!("{MIN}[remediation]\n"), &[]);
        let r = c.remediation.unwrap();
        assert_eq!(r.mode, Mode::DryRun);
        assert_eq!(r.instance, "dbwarden");
        assert_eq!(r.audit_file, Path::new("/var/lib/dbwarden/audit.jsonl"));
        assert_eq!(
            r.pause_state_file,
            Path::new("/var/lib/dbwarden/paused.json")
        );
        assert_eq!(r.sentinel_file, None);
        assert!(r.api_token.is_none());
        assert_eq!(r.query_max_chars, 256);
        assert!(!r.redact_queries);
        assert_eq!(r.pacing, Duration::from_secs(1));
        assert_eq!(r.target_budget, (10, Duration::from_secs(600)));
        assert_eq!(r.global_budget, (30, Duration::from_secs(600)));
        assert!(r.policies.is_empty());
        // The instance defaults to HOSTNAME, when that is a valid name.
        let c = ok(
            &format!("{MIN}[remediation]\n"),
            &[("HOSTNAME", "dbwarden-7f9c")],
        );
        assert_eq!(c.remediation.unwrap().instance, "dbwarden-7f9c");
        let long = "a".repeat(41);
        let issues = issues(&format!("{MIN}[remediation]\n"), &[("HOSTNAME", &long)]);
        assert_issue(
            &issues,
            "remediation.instance",
            &["not set", "HOSTNAME", &long],
        );
        let issues = self::issues(&format!("{MIN}[remediation]\ninstance = \"a b\"\n"), &[]);
        assert_issue(&issues, "remediation.instance", &["\"a b\"", "1-40"]);
    }

    #[test]
    fn every_remediation_mistake_is_reported_at_once() {
        let toml = format!(
            "{MIN}[remediation]\n\
             mode = \"dry_run\"\naudit_file = \"audit.jsonl\"\nquery_max_chars = 0\n\
             redact_queries = \"yes\"\nstate = [\"idle\"]\npacing = \"1x\"\n\
             [remediation.budget]\nwindow = \"0s\"\nper_targte = 1\n\
             [remediation.policies.a]\naction = \"kill\"\ntargets = [\"main\", \"nope\"]\n\
             max_per_cycle = 0\nonly_while_failing = [\"pool\"]\nidle_for = \"1m\"\n\
             [remediation.policies.a.when]\nstate = [\"idle\", \"sleeping\"]\n\
             match_applications = [\"web-(\"]\nmatch_client_addrs = [\"10.0.0.0/33\"]\n\
             match_query = \"[\"\nblocking_for = \"5s\"\n\
             [remediation.policies.B]\naction = \"cancel_then_terminate\"\n\
             [remediation.policies.B.when]\nmatch_users = [\"app\"]\n\
             [remediation.policies.c]\naction = \"terminate\"\ngrace = \"5s\"\nvictims = \"some\"\n\
             [remediation.policies.c.when]\nstate = [\"active\"]\nidle_for = \"10m\"\n\
             [remediation.policies.d]\naction = \"cancel\"\n\
             [remediation.policies.d.when]\nstate = [\"active\"]\nquery_running_for = \"0s\"\n"
        );
        let issues = issues(&toml, &[]);
        let expect: &[(&str, &[&str])] = &[
            ("remediation.mode", &["\"dry_run\"", "\"dry-run\""]),
            ("remediation.audit_file", &["\"audit.jsonl\"", "absolute"]),
            ("remediation.query_max_chars", &["0", "1 to 10000"]),
            ("remediation.redact_queries", &["true or false", "\"yes\""]),
            (
                "remediation.state",
                &["unknown key", "a [remediation.policies.<name>.when] table"],
            ),
            ("remediation.pacing", &["\"1x\""]),
            ("remediation.budget.window", &["\"0s\"", "at least \"1s\""]),
            (
                "remediation.budget.per_targte",
                &["did you mean `per_target`?"],
            ),
            (
                "remediation.policies.a.action",
                &["\"kill\"", "cancel_then_terminate"],
            ),
            (
                "remediation.policies.a.targets",
                &["\"nope\" is not a configured target", "\"main\""],
            ),
            ("remediation.policies.a.max_per_cycle", &["0", "1 to 1000"]),
            (
                "remediation.policies.a.only_while_failing",
                &["\"pool\"", "connections_used"],
            ),
            (
                "remediation.policies.a.idle_for",
                &["it belongs in [remediation.policies.a.when]"],
            ),
            (
                "remediation.policies.a.when.state",
                &["\"sleeping\"", "idle_in_transaction_aborted"],
            ),
            (
                "remediation.policies.a.when.match_applications",
                &["\"web-(\"", "unclosed group"],
            ),
            (
                "remediation.policies.a.when.match_client_addrs",
                &["\"10.0.0.0/33\"", "CIDR"],
            ),
            (
                "remediation.policies.a.when.match_query",
                &["\"[\"", "unclosed character class"],
            ),
            (
                "remediation.policies.a.when.blocking_for",
                &["\"5s\"", "without blocking_waiters"],
            ),
            ("remediation.policies.B", &["\"B\"", "lowercase"]),
            (
                "remediation.policies.B.grace",
                &["missing", "cancel_then_terminate"],
            ),
            (
                "remediation.policies.B.when",
                &["no condition", "every client session"],
            ),
            (
                "remediation.policies.c.grace",
                &["\"5s\"", "only used with", "\"terminate\""],
            ),
            (
                "remediation.policies.c.victims",
                &["\"some\"", "\"oldest\""],
            ),
            (
                "remediation.policies.c.when.idle_for",
                &["\"10m\"", "never hold", "[\"active\"]"],
            ),
            (
                "remediation.policies.d.when.query_running_for",
                &["\"0s\"", "positive"],
            ),
        ];
        for (path, needles) in expect {
            assert_issue(&issues, path, needles);
        }
        assert_eq!(issues.len(), expect.len(), "{issues:#?}");
        // A regex error is one line, not the regex crate's diagram.
        assert!(
            issues.iter().all(|i| !i.message.contains('\n')),
            "{issues:#?}"
        );
        // The other sections' issues come first, remediation's last, in key order.
        let paths: Vec<_> = issues.iter().map(|i| i.path.clone()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
    }

    #[test]
    fn a_policy_must_select_by_state_duration_or_blocking() {
        // Identity filters alone would select every session of a user.
        for when in [
            "match_users = [\"app\"]\nmatch_databases = [\"x\"]\n",
            "state = []\nmatch_query = \"x\"\n",
            "",
        ] {
            let issues = issues(&with_policy("", when), &[]);
            assert_issue(&issues, "remediation.policies.p.when", &["no condition"]);
            assert_eq!(issues.len(), 1, "{issues:#?}");
        }
        // Without a when table at all.
        let toml = format!("{MIN}[remediation.policies.p]\naction = \"cancel\"\n");
        assert_issue(
            &issues(&toml, &[]),
            "remediation.policies.p.when",
            &["no condition"],
        );
        // A when that is not a table is a type error, not also "no condition".
        let issues = issues(
            &with_policy("when = 5\n", "").replace("[remediation.policies.p.when]\n", ""),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when",
            &["expected a table, found 5"],
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
        // So is a condition written in the policy's table instead of its when.
        let issues = self::issues(
            &format!("{MIN}[remediation.policies.p]\naction = \"cancel\"\nidle_for = \"10m\"\n"),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.idle_for",
            &["it belongs in [remediation.policies.p.when]"],
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
        // A rejected condition is reported once, as itself.
        let issues = self::issues(&with_policy("", "idle_for = \"10x\"\n"), &[]);
        assert_issue(
            &issues,
            "remediation.policies.p.when.idle_for",
            &["\"10x\""],
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
        // Each selecting condition is enough on its own.
        for when in [
            "state = [\"idle\"]\n",
            "idle_for = \"10m\"\n",
            "query_running_for = \"5m\"\n",
            "transaction_open_for = \"1h\"\n",
            "connected_for = \"1day\"\n",
            "blocking_waiters = 1\n",
        ] {
            ok(&with_policy("", when), &[]);
        }
        let issues = self::issues(&with_policy("", "blocking_waiters = 0\n"), &[]);
        assert_issue(
            &issues,
            "remediation.policies.p.when.blocking_waiters",
            &["0", "at least 1"],
        );
    }

    #[test]
    fn durations_must_fit_the_states() {
        let issues = issues(
            &with_policy("", "state = [\"active\"]\nidle_for = \"10m\"\n"),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when.idle_for",
            &["never hold"],
        );
        let issues = self::issues(
            &with_policy(
                "",
                "state = [\"idle\", \"idle_in_transaction\"]\nquery_running_for = \"5m\"\n",
            ),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when.query_running_for",
            &[
                "\"5m\"",
                "[\"idle\", \"idle_in_transaction\"]",
                "add \"active\"",
            ],
        );
        let issues = self::issues(
            &with_policy("", "idle_for = \"1m\"\nquery_running_for = \"5m\"\n"),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when",
            &["never hold together"],
        );
        // Fitting combinations load.
        let c = ok(
            &with_policy(
                "",
                "state = [\"active\", \"idle_in_transaction\"]\nidle_for = \"1m\"\n",
            ),
            &[],
        );
        assert_eq!(
            policy(&c).conditions.states,
            [SessionState::Active, SessionState::IdleInTransaction]
        );
        ok(
            &with_policy("", "state = [\"active\"]\nquery_running_for = \"5m\"\n"),
            &[],
        );
        ok(&with_policy("", "query_running_for = \"5m\"\n"), &[]);
    }

    #[test]
    fn actions_victims_and_gates_map_to_the_policy() {
        let c = ok(
            &with_policy(
                "grace = \"20s\"\nvictims = \"oldest\"\nmax_per_cycle = 1000\n\
                 only_while_failing = [\"connections_used\", \"idle_session\"]\n",
                "idle_for = \"10m\"\nblocking_waiters = 3\n",
            )
            .replace("\"terminate\"", "\"cancel_then_terminate\""),
            &[],
        );
        let p = policy(&c);
        assert_eq!(p.name, "p");
        assert_eq!(
            p.action,
            Action::CancelThenTerminate {
                grace: Duration::from_secs(20)
            }
        );
        assert_eq!(p.victims, Victims::Oldest);
        assert_eq!(p.max_per_cycle, 1000);
        assert_eq!(
            p.only_while_failing,
            [CheckId::ConnectionsUsed, CheckId::IdleSession]
        );
        assert_eq!(
            p.conditions.blocking,
            Some(Blocking {
                min_waiters: 3,
                waited_for: Duration::ZERO
            })
        );
        let c = ok(&with_policy("", "state = [\"idle\"]\n"), &[]);
        let p = policy(&c);
        assert_eq!(
            (p.action, p.victims, p.max_per_cycle),
            (Action::Terminate, Victims::All, 10)
        );
        assert!(p.only_while_failing.is_empty() && p.targets.is_empty());
        let issues = issues(
            &format!("{MIN}[remediation.policies.p.when]\nstate = [\"idle\"]\n"),
            &[],
        );
        assert_issue(&issues, "remediation.policies.p.action", &["missing"]);
    }

    #[test]
    fn alertmanager_token_comes_from_env_or_file_and_never_prints() {
        let toml = format!("[server]\nalertmanager_token_env = \"AM_TOKEN\"\n{MIN}");
        let c = ok(&toml, &[("AM_TOKEN", "s3cret-am")]);
        assert_eq!(
            c.server.alertmanager_token.as_ref().map(|t| t.expose()),
            Some("s3cret-am")
        );
        let printed = c.to_redacted_toml();
        assert!(
            printed.contains("alertmanager_token_env = \"AM_TOKEN\""),
            "{printed}"
        );
        assert!(!printed.contains("s3cret-am") && !format!("{c:?}").contains("s3cret-am"));
        let issues = issues(&toml, &[]);
        assert_issue(
            &issues,
            "server.alertmanager_token_env",
            &["\"AM_TOKEN\"", "not set"],
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("am-token");
        std::fs::write(&f, "from-file\n").unwrap();
        let c = ok(
            &format!(
                "[server]\nalertmanager_token_file = {:?}\n{MIN}",
                f.display().to_string()
            ),
            &[],
        );
        assert_eq!(
            c.server.alertmanager_token.as_ref().map(|t| t.expose()),
            Some("from-file")
        );
    }

    #[test]
    fn alert_gate_is_read_and_alert_names_are_checked() {
        let c = ok(
            &with_policy(
                "only_while_alerts = [\"DbWardenConnectionsHigh\"]\n",
                "idle_for = \"10m\"\n",
            ),
            &[],
        );
        assert_eq!(policy(&c).only_while_alerts, ["DbWardenConnectionsHigh"]);
        let printed = c.to_redacted_toml();
        assert!(
            printed.contains("only_while_alerts = [\"DbWardenConnectionsHigh\"]"),
            "{printed}"
        );
        let issues = issues(
            &with_policy(
                "only_while_alerts = [\"not an alert\"]\n",
                "idle_for = \"10m\"\n",
            ),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.only_while_alerts",
            &["\"not an alert\"", "alert name"],
        );
    }

    #[test]
    fn application_patterns_match_whole_names() {
        let c = ok(
            &with_policy(
                "",
                "state = [\"idle\"]\nmatch_applications = [\"web-.*\", \"api\"]\n\
                 ignore_applications = [\"psql\", \"pg_dump|pg_basebackup\"]\n",
            ),
            &[],
        );
        let w = &policy(&c).conditions;
        assert!(w.match_applications.contains("web-1"));
        assert!(w.match_applications.contains("api"));
        assert!(!w.match_applications.contains("legacy-web-1"));
        assert!(!w.match_applications.contains("api-2"));
        assert!(w.ignore_applications.contains("psql"));
        assert!(!w.ignore_applications.contains("billing-psql-loader"));
        assert!(w.ignore_applications.contains("pg_basebackup"));
        assert!(!w.ignore_applications.contains("pg_dumpall"));
        // The query regexes search.
        let c = ok(
            &with_policy(
                "",
                "state = [\"active\"]\nmatch_query = \"(?i)select\"\nignore_query = \"vacuum\"\n",
            ),
            &[],
        );
        let w = &policy(&c).conditions;
        assert!(
            w.match_query
                .as_ref()
                .unwrap()
                .is_match("with x as (SELECT 1) select")
        );
        assert!(
            w.ignore_query
                .as_ref()
                .unwrap()
                .is_match("analyze; vacuum t")
        );
        // Each bad pattern is named with the regex crate's reason.
        let issues = issues(
            &with_policy(
                "",
                "state = [\"idle\"]\nignore_applications = [\"ok\", \"a)\", \"(?x)b # c\"]\n",
            ),
            &[],
        );
        let at: Vec<_> = issues
            .iter()
            .filter(|i| i.path == "remediation.policies.p.when.ignore_applications")
            .collect();
        assert_eq!(at.len(), 1, "{issues:#?}");
        assert!(
            at[0].message.contains("\"a)\"") && at[0].message.contains("unopened group"),
            "{at:?}"
        );
        // A pattern valid alone that anchoring would break is refused too.
        let issues = self::issues(
            &with_policy(
                "",
                "state = [\"idle\"]\nignore_applications = [\"(?x)b # c\"]\n",
            ),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when.ignore_applications",
            &["(?x)b # c", "whole name"],
        );
    }

    #[test]
    fn client_addresses_are_networks_or_single_addresses() {
        let c = ok(
            &with_policy(
                "",
                "state = [\"idle\"]\nmatch_client_addrs = [\"10.0.0.0/8\", \"192.168.1.5\", \"fd00::/8\", \"::1\"]\n\
                 ignore_client_addrs = [\"::ffff:10.1.0.0/112\"]\n",
            ),
            &[],
        );
        let w = &policy(&c).conditions;
        let shown: Vec<String> = w.match_client_addrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8", "::1/128"]
        );
        // Sessions' addresses are compared canonically: a mapped network is its IPv4 one.
        assert_eq!(w.ignore_client_addrs[0].to_string(), "10.1.0.0/16");
        for bad in ["10.0.0.0/33", "10.0.0", "db.internal", "10.0.0.0/8 "] {
            let issues = issues(
                &with_policy(
                    "",
                    &format!("state = [\"idle\"]\nignore_client_addrs = [{bad:?}]\n"),
                ),
                &[],
            );
            assert_issue(
                &issues,
                "remediation.policies.p.when.ignore_client_addrs",
                &[&format!("{bad:?}"), "CIDR"],
            );
        }
    }

    #[test]
    fn policies_keep_the_order_of_the_file() {
        let toml = format!(
            "{MIN}[remediation.policies.zeta]\naction = \"cancel\"\n\
             [remediation.policies.zeta.when]\nstate = [\"idle\"]\n\
             [remediation.policies.alpha.when]\nstate = [\"idle\"]\n\
             [remediation.policies.alpha]\naction = \"cancel\"\n\
             [remediation.policies.mid]\naction = \"cancel\"\nwhen.state = [\"idle\"]\n"
        );
        let names = |c: &Config| -> Vec<String> {
            c.remediation
                .as_ref()
                .unwrap()
                .policies
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let c = ok(&toml, &[]);
        assert_eq!(names(&c), ["zeta", "alpha", "mid"]);
        // And the printed configuration keeps it.
        let printed = c.to_redacted_toml();
        assert_eq!(names(&ok(&printed, &[])), ["zeta", "alpha", "mid"]);
        // A policy only the environment adds comes last.
        let c = ok(
            &toml,
            &[
                ("DBWARDEN_REMEDIATION__POLICIES__ENV__ACTION", "cancel"),
                ("DBWARDEN_REMEDIATION__POLICIES__ENV__WHEN__STATE", "idle"),
                ("DBWARDEN_REMEDIATION__POLICIES__ALPHA__ACTION", "terminate"),
            ],
        );
        assert_eq!(names(&c), ["zeta", "alpha", "mid", "env"]);
        assert_eq!(c.remediation.unwrap().policies[1].action, Action::Terminate);
    }

    #[test]
    fn remediation_keys_can_be_overridden_from_the_environment() {
        let c = ok(
            &with_policy("", "state = [\"idle\"]\n"),
            &[
                ("DBWARDEN_REMEDIATION__MODE", "enforce"),
                ("DBWARDEN_REMEDIATION__REDACT_QUERIES", "true"),
                ("DBWARDEN_REMEDIATION__QUERY_MAX_CHARS", "100"),
                ("DBWARDEN_REMEDIATION__BUDGET__GLOBAL", "3"),
                (
                    "DBWARDEN_REMEDIATION__POLICIES__P__WHEN__STATE",
                    "[\"idle\", \"active\"]",
                ),
                ("DBWARDEN_REMEDIATION__POLICIES__P__TARGETS", "main"),
            ],
        );
        let r = c.remediation.unwrap();
        assert_eq!(r.mode, Mode::Enforce);
        assert!(r.redact_queries);
        assert_eq!(r.query_max_chars, 100);
        assert_eq!(r.global_budget.0, 3);
        assert_eq!(
            r.policies[0].conditions.states,
            [SessionState::Idle, SessionState::Active]
        );
        assert_eq!(r.policies[0].targets, ["main"]);
        let issues = issues(
            &with_policy("", "state = [\"idle\"]\n"),
            &[("DBWARDEN_REMEDIATION__REDACT_QUERIES", "yes")],
        );
        assert_issue(
            &issues,
            "remediation.redact_queries",
            &["\"yes\"", "DBWARDEN_REMEDIATION__REDACT_QUERIES"],
        );
    }

    #[test]
    fn acted_on_targets_need_two_connections() {
        let two = "[postgres.other]\nurl = \"postgres://h/d\"\nmax_connections = 1\n";
        let toml = format!(
            "{MIN}max_connections = 1\n{two}{}",
            &with_policy("", "state = [\"idle\"]\n")[MIN.len()..]
        );
        let issues = issues(&toml, &[]);
        for target in ["main", "other"] {
            assert_issue(
                &issues,
                &format!("postgres.{target}.max_connections"),
                &[
                    "1 is too few",
                    &format!("target {target:?}"),
                    "policy p, remediation.policies.p.targets",
                    "\"dry-run\"",
                    "actor lock",
                ],
            );
        }
        assert_eq!(issues.len(), 2, "{issues:#?}");
        // A target no policy acts on may keep one connection.
        let only_main = toml.replace(
            "action = \"terminate\"\n",
            "action = \"terminate\"\ntargets = [\"other\"]\n",
        );
        let issues = self::issues(&only_main, &[]);
        assert_issue(&issues, "postgres.other.max_connections", &["1 is too few"]);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        // In observe mode nothing acts.
        ok(
            &toml.replace("[remediation]\n", "[remediation]\nmode = \"observe\"\n"),
            &[],
        );
        // Set in [defaults], it is reported there, for each target.
        let toml = format!(
            "[defaults]\nmax_connections = 1\n{}",
            with_policy("", "state = [\"idle\"]\n")
        );
        let issues = self::issues(&toml, &[]);
        assert_issue(&issues, "defaults.max_connections", &["target \"main\""]);
        // Targets named by a policy must exist; an empty list is refused.
        let issues = self::issues(
            &with_policy("targets = [\"mian\"]\n", "state = [\"idle\"]\n"),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.targets",
            &["\"mian\"", "configured are \"main\""],
        );
        let issues = self::issues(&with_policy("targets = []\n", "state = [\"idle\"]\n"), &[]);
        assert_issue(&issues, "remediation.policies.p.targets", &["empty"]);
    }

    #[test]
    fn the_api_token_is_read_from_env_or_file_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\n tok-from-file-Q8 \r\n").unwrap();
        let from_file = format!(
            "{MIN}[remediation]\napi_token_file = {:?}\n",
            file.display().to_string()
        );
        let from_env = format!("{MIN}[remediation]\napi_token_env = \"API_TOKEN\"\n");
        let vars = [("API_TOKEN", " tok-from-env-R3\n")];
        let secrets = ["tok-from-file-Q8", "tok-from-env-R3", "tok-inline-Z1"];

        let a = ok(&from_file, &[]);
        let b = ok(&from_env, &vars);
        let token = |c: &Config| c.remediation.as_ref().unwrap().api_token.clone().unwrap();
        assert_eq!(token(&a).expose(), "tok-from-file-Q8");
        assert_eq!(token(&b).expose(), "tok-from-env-R3");
        assert!(a.to_redacted_toml().contains(&format!(
            "api_token_file = {:?}",
            file.display().to_string()
        )));
        assert!(
            b.to_redacted_toml()
                .contains("api_token_env = \"API_TOKEN\"")
        );
        // Printed by source, the configuration loads back with the same token.
        assert_eq!(
            token(&ok(&b.to_redacted_toml(), &vars)).expose(),
            "tok-from-env-R3"
        );

        let both = format!(
            "{from_env}api_token_file = {:?}\n",
            file.display().to_string()
        );
        let issues = issues(&both, &vars);
        assert_issue(
            &issues,
            "remediation",
            &["two token sources", "api_token_file", "\"API_TOKEN\""],
        );
        let issues = self::issues(&from_env, &[]);
        assert_issue(
            &issues,
            "remediation.api_token_env",
            &["\"API_TOKEN\"", "not set"],
        );
        let issues = self::issues(&from_env, &[("API_TOKEN", " \n")]);
        assert_issue(&issues, "remediation.api_token_env", &["empty"]);
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let issues = self::issues(&from_file.replace("token\"", "empty\""), &[]);
        assert_issue(&issues, "remediation.api_token_file", &["is empty"]);
        let issues = self::issues(&from_file.replace("token\"", "missing\""), &[]);
        assert_issue(
            &issues,
            "remediation.api_token_file",
            &["cannot read", "missing"],
        );
        // The token itself written where a name belongs, or as a key of its
        // own: an error that does not quote it.
        let inline = [
            format!("{MIN}[remediation]\napi_token_env = \"tok-inline-Z1\"\n"),
            format!("{MIN}[remediation]\napi_token = \"tok-inline-Z1\"\n"),
            format!(
                "{MIN}[remediation]\napi_token_env = \"tok-inline-Z1\"\napi_token_file = \"/x\"\n"
            ),
        ];
        let mut shown = vec![
            format!("{a:?}"),
            format!("{b:#?}"),
            a.to_redacted_toml(),
            b.to_redacted_toml(),
            serde_json::to_string(&b).unwrap(),
        ];
        for toml in &inline {
            let err = load(toml, &vars).unwrap_err();
            shown.push(err.to_string());
            shown.push(format!("{err:?}"));
        }
        let err = load(&inline[1], &vars).unwrap_err().to_string();
        assert!(
            err.contains("api_token_file") && err.contains("api_token_env"),
            "{err}"
        );
        for text in &shown {
            for s in secrets {
                assert!(!text.contains(s), "{s} printed in:\n{text}");
            }
        }
    }
}
