//! Configuration: a TOML file overridden by `DBWARDEN_` environment variables,
//! read in two stages. [`raw`] is what serde parses (unknown keys are errors);
//! [`validate`] checks every value, collects *all* mistakes with their key
//! paths, reads secrets, and yields the typed [`Config`] the rest of the
//! program uses. Nothing here connects anywhere.

pub mod raw;
pub mod secret;
mod validate;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Serialize;

pub use secret::{Secret, redact_url};

/// The environment variable prefix; nested keys are separated by `__`,
/// e.g. `DBWARDEN_SERVER__LISTEN=0.0.0.0:9641`.
pub const ENV_PREFIX: &str = "DBWARDEN_";

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
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
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

/// A PostgreSQL target, ready to connect to.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresTarget {
    pub name: String,
    /// The URL with its password redacted; safe to print.
    pub url: String,
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
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses `toml` with the given environment (only `DBWARDEN_` variables
    /// are read), then validates. Tests pass their own environment.
    pub fn from_toml_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let overrides: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .cloned()
            .collect();
        let mut figment = Figment::from(Toml::string(toml));
        // figment reads the process environment; feed it ours through a
        // provider built from explicit pairs so tests stay hermetic.
        figment = figment.merge(env_provider(&overrides));
        let raw: raw::RawConfig = figment.extract().map_err(figment_issues)?;
        validate::validate(raw, &env)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn env_provider(pairs: &[(String, String)]) -> impl figment::Provider {
    // `Env` can only read the real process environment, so we build the same
    // nested dictionary it would from the explicit pairs.
    let mut root = figment::value::Dict::new();
    for (key, value) in pairs {
        let key = key[ENV_PREFIX.len()..].to_ascii_lowercase();
        let parts: Vec<&str> = key.split("__").filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            continue;
        }
        insert_nested(&mut root, &parts, parse_env_value(value));
    }
    figment::providers::Serialized::defaults(root)
}

/// The same typing figment's `Env` applies: "5" is an integer, "true" a bool, the rest strings.
fn parse_env_value(v: &str) -> figment::value::Value {
    v.parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(v.to_string()))
}

fn insert_nested(dict: &mut figment::value::Dict, parts: &[&str], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    if parts.len() == 1 {
        dict.insert(parts[0].to_string(), value);
        return;
    }
    let entry = dict
        .entry(parts[0].to_string())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert_nested(inner, &parts[1..], value);
    }
}

fn figment_issues(err: figment::Error) -> ConfigError {
    ConfigError::Invalid(
        err.into_iter()
            .map(|e| ConfigIssue {
                path: e.path.join("."),
                message: e.kind.to_string(),
            })
            .collect(),
    )
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
