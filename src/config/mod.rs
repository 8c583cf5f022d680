//! The configuration loader: a TOML file overridden by `DBWARDEN_`
//! environment variables, merged with figment, read into the settings types
//! each part owns, and validated by each part:
//!
//! | section | type | owner |
//! |---|---|---|
//! | `[server]` | [`ServerSettings`] | `http` |
//! | `[log]` | [`LogSettings`] | `telemetry` |
//! | `[defaults]`, `[postgres.<name>]` | [`TargetSettings`], [`PostgresTarget`] | `observe` |
//! | `[neo4j.<name>]` | [`Neo4jTarget`] | `observe::neo4j` |
//! | `[thresholds]`, `[<kind>.<name>.thresholds]` | `Thresholds`, `Neo4jThresholds` | `evaluate` |
//! | `[backups.<name>]` | [`BackupLocation`] | `observe::backups` |
//! | `[backups.<name>.thresholds]` | `BackupThresholds` | `evaluate` |
//! | `[kubernetes]` | [`KubernetesSettings`] | `kubernetes` |
//! | `[remediation]` | [`RemediationSettings`] | `remediate` |
//!
//! Every mistake is reported at once, each at its key path with the
//! offending value (never a secret) and the environment variable that set
//! it, if one did. Nothing here connects anywhere; the only files read are
//! the configuration and the password and token files it names.
//!
//! Two things differ between the file and the types, and the loader
//! bridges them: a target's settings sit in its own table in the file and
//! in a `settings` field in the type; and a target inherits `[defaults]`
//! and `[thresholds]` key by key, which the loader copies into the target's
//! table before reading it, remembering where each value came from.
//!
//! The reference for users is `docs/configuration.md`; every key is in
//! `config/dbwarden.example.toml` (a test keeps both complete).

mod load;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::evaluate::{BackupThresholds, Neo4jThresholds, Thresholds};
use serde::Serialize;

pub use crate::http::ServerSettings;
pub use crate::kubernetes::KubernetesSettings;
pub use crate::observe::backups::BackupLocation;
pub use crate::observe::neo4j::Neo4jTarget;
pub use crate::observe::{PostgresTarget, TargetSettings};
pub use crate::remediate::RemediationSettings;
pub use crate::settings::Issue as ConfigIssue;
pub use crate::telemetry::logging::{LogFormat, LogSettings};
pub use load::{ENV_PREFIX, ENV_SEPARATOR};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub postgres: Vec<TargetConfig<PostgresTarget, Thresholds>>,
    pub neo4j: Vec<TargetConfig<Neo4jTarget, Neo4jThresholds>>,
    /// The `[backups.<name>]` locations, each with its thresholds.
    pub backups: Vec<TargetConfig<BackupLocation, BackupThresholds>>,
    /// Present when a `[kubernetes]` section is configured.
    pub kubernetes: Option<KubernetesSettings>,
    /// Present when a `[remediation]` section is configured.
    pub remediation: Option<RemediationSettings>,
}

/// A target's table: what observation needs, and the thresholds its
/// checks use (`[<kind>.<name>.thresholds]`, owned by `evaluate`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetConfig<T, Th> {
    #[serde(flatten)]
    pub target: T,
    pub thresholds: Th,
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

const HEADER: &str = "\
# dbwarden effective configuration: every default filled in, [defaults],
# [thresholds] and DBWARDEN_* overrides applied to each target.
# Passwords are never printed: a password written in a url shows as <redacted>.
# Neither are tokens: only their file or variable is named.
";

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
    /// overrides, the variables that password and token keys name, and
    /// `HOSTNAME` are read), then validates. Tests pass their own environment.
    pub fn from_toml_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load::load(toml, env.into_iter().collect()).map_err(ConfigError::Invalid)
    }

    /// The effective configuration as TOML in the config file's own shape,
    /// every default filled in, `[defaults]` and `[thresholds]` applied to
    /// each target, secrets left out: a URL's password is redacted, and
    /// passwords and tokens show only the variable's name or the file's
    /// path. It loads back into the same configuration (given the same
    /// password and token sources). Empty lists and tables are left out:
    /// they mean what leaving them out means.
    pub fn to_redacted_toml(&self) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            server: &'a ServerSettings,
            log: &'a LogSettings,
            postgres: IndexMap<&'a str, TargetConfig<PostgresTarget, &'a Thresholds>>,
            neo4j: IndexMap<&'a str, TargetConfig<Neo4jTarget, &'a Neo4jThresholds>>,
            backups: IndexMap<&'a str, &'a TargetConfig<BackupLocation, BackupThresholds>>,
            kubernetes: Option<&'a KubernetesSettings>,
            remediation: Option<&'a RemediationSettings>,
        }
        let file = File {
            server: &self.server,
            log: &self.log,
            postgres: self
                .postgres
                .iter()
                .map(|t| (t.target.name.as_str(), t.resolved()))
                .collect(),
            neo4j: self
                .neo4j
                .iter()
                .map(|t| (t.target.name.as_str(), t.resolved()))
                .collect(),
            backups: self
                .backups
                .iter()
                .map(|b| (b.target.name.as_str(), b))
                .collect(),
            kubernetes: self.kubernetes.as_ref(),
            remediation: self.remediation.as_ref(),
        };
        let mut value = match toml::Value::try_from(&file) {
            Ok(v) => v,
            // Only non-UTF-8 paths could get here, and they cannot come from TOML.
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        for kind in ["postgres", "neo4j"] {
            let Some(targets) = value.get_mut(kind).and_then(|v| v.as_table_mut()) else {
                continue;
            };
            for (_, target) in targets.iter_mut() {
                if let Some(t) = target.as_table_mut() {
                    inline_settings(t);
                }
            }
        }
        prune(&mut value);
        match toml::to_string_pretty(&value) {
            Ok(body) => format!("{HEADER}\n{}\n", body.trim_end()),
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }
}

impl<Th> TargetConfig<PostgresTarget, Th> {
    /// What `dbwarden config` prints: every default written in.
    fn resolved(&self) -> TargetConfig<PostgresTarget, &Th> {
        TargetConfig {
            target: self.target.resolved(),
            thresholds: &self.thresholds,
        }
    }
}

impl<Th> TargetConfig<Neo4jTarget, Th> {
    fn resolved(&self) -> TargetConfig<Neo4jTarget, &Th> {
        TargetConfig {
            target: self.target.resolved(),
            thresholds: &self.thresholds,
        }
    }
}

/// A target's `settings` table back into the target's own table, where the
/// file has them, in its place.
fn inline_settings(t: &mut toml::Table) {
    let entries: Vec<(String, toml::Value)> = std::mem::take(t).into_iter().collect();
    for (k, v) in entries {
        match (k.as_str(), v) {
            ("settings", toml::Value::Table(s)) => t.extend(s),
            (_, v) => {
                t.insert(k, v);
            }
        }
    }
}

/// Removes empty arrays and empty tables, recursively.
fn prune(v: &mut toml::Value) {
    if let toml::Value::Table(t) = v {
        for (_, inner) in t.iter_mut() {
            prune(inner);
        }
        t.retain(|_, inner| match inner {
            toml::Value::Array(a) => !a.is_empty(),
            toml::Value::Table(t) => !t.is_empty(),
            _ => true,
        });
    }
}
