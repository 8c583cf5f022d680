//! The configuration as serde reads it: every field optional where a default
//! exists, unknown keys rejected. [`super::validate`] turns it into the typed
//! [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A duration written as a humantime string (`"5s"`, `"10m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"5s\", \"10m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(v.trim())
                    .map(HumanDuration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid duration {v:?}: {e} (write e.g. \"5s\", \"10m\")"
                        ))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub defaults: RawTargetSettings,
    #[serde(default)]
    pub thresholds: RawThresholds,
    /// PostgreSQL targets by name.
    #[serde(default)]
    pub postgres: BTreeMap<String, RawPostgresTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub shutdown_grace: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// Settings a target may override; `[defaults]` sets them for every target.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetSettings {
    pub poll_interval: Option<HumanDuration>,
    pub poll_timeout: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    pub statement_timeout: Option<HumanDuration>,
    pub lock_timeout: Option<HumanDuration>,
    pub max_connections: Option<u32>,
    pub database_sizes_interval: Option<HumanDuration>,
    pub backoff_max: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgresTarget {
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub sslmode: Option<String>,
    pub ssl_root_cert: Option<PathBuf>,
    #[serde(default)]
    pub paths: BTreeMap<String, PathBuf>,
    // The per-target overrides of `[defaults]`. Spelled out rather than
    // `#[serde(flatten)]`ed: serde cannot combine flatten with deny_unknown_fields.
    pub poll_interval: Option<HumanDuration>,
    pub poll_timeout: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    pub statement_timeout: Option<HumanDuration>,
    pub lock_timeout: Option<HumanDuration>,
    pub max_connections: Option<u32>,
    pub database_sizes_interval: Option<HumanDuration>,
    pub backoff_max: Option<HumanDuration>,
    #[serde(default)]
    pub thresholds: RawThresholds,
}

impl RawPostgresTarget {
    pub fn settings(&self) -> RawTargetSettings {
        RawTargetSettings {
            poll_interval: self.poll_interval,
            poll_timeout: self.poll_timeout,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            lock_timeout: self.lock_timeout,
            max_connections: self.max_connections,
            database_sizes_interval: self.database_sizes_interval,
            backoff_max: self.backoff_max,
        }
    }
}

/// A check that fails when a ratio drops below `min_ratio`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMinRatioCheck {
    pub min_ratio: Option<f64>,
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

/// A check that fails when a ratio rises above `max_ratio`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaxRatioCheck {
    pub max_ratio: Option<f64>,
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDurationCheck {
    pub max: Option<HumanDuration>,
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBytesCheck {
    pub max_bytes: Option<u64>,
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHoldOnly {
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreamingCheck {
    pub min_standbys: Option<u32>,
    #[serde(rename = "for")]
    pub hold: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
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
}
