//! [`Config`] back to TOML, in the config file's own shape: what
//! `dbwarden config` prints. Every default is filled in, `[defaults]` and
//! `[thresholds]` are applied to each target, and passwords never appear:
//! a URL's password is redacted, `password_env`/`password_file` show only the
//! variable's name or the file's path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Config, Limit, LogFormat, PasswordSource, PostgresTarget, Thresholds};

const HEADER: &str = "\
# dbwarden effective configuration: every default filled in, [defaults],
# [thresholds] and DBWARDEN_* overrides applied to each target.
# Passwords are never printed: a password written in a url shows as <redacted>.
";

pub(super) fn to_toml(config: &Config) -> String {
    let file = File {
        server: Server {
            listen: config.server.listen.to_string(),
            shutdown_grace: human(config.server.shutdown_grace),
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
            .map(|t| (t.name.as_str(), target(t)))
            .collect(),
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

fn target(t: &PostgresTarget) -> Target<'_> {
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

// The file's shape. Field order is the order printed.

#[derive(Serialize)]
struct File<'a> {
    server: Server,
    log: Log<'a>,
    postgres: BTreeMap<&'a str, Target<'a>>,
}

#[derive(Serialize)]
struct Server {
    listen: String,
    shutdown_grace: String,
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
