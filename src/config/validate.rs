//! From [`RawConfig`] to [`Config`]: every value checked, every mistake
//! reported with its key path and the offending value, secrets read.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::raw::*;
use super::*;

/// Collects issues while validating, so the user sees every mistake at once.
#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }
}

const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_CONNECTIONS: u32 = 2;
const DEFAULT_DATABASE_SIZES_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(super) fn validate(raw: RawConfig, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut issues = Issues::default();

    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = match SocketAddr::from_str(listen_text) {
        Ok(a) => a,
        Err(_) => {
            issues.push(
                "server.listen",
                format!(
                    "invalid address {listen_text:?}: expected IP:PORT, e.g. \"127.0.0.1:9641\""
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 9641))
        }
    };
    let shutdown_grace = raw
        .server
        .shutdown_grace
        .map(|d| d.0)
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);

    let format = match raw.log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            issues.push(
                "log.format",
                format!("invalid value {other:?}: expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = raw.log.level.clone().unwrap_or_else(|| "info".to_string());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        issues.push("log.level", format!("invalid filter {level:?}: {e}"));
    }

    let global_thresholds = thresholds(
        Thresholds::default(),
        &raw.thresholds,
        "thresholds",
        &mut issues,
    );

    if raw.postgres.is_empty() {
        issues.push(
            "postgres",
            "no targets configured: add a [postgres.<name>] table with a url",
        );
    }
    let mut postgres = Vec::new();
    for (name, target) in &raw.postgres {
        if let Some(t) = postgres_target(
            name,
            target,
            &raw.defaults,
            &global_thresholds,
            env,
            &mut issues,
        ) {
            postgres.push(t);
        }
    }

    if issues.0.is_empty() {
        Ok(Config {
            server: ServerConfig {
                listen,
                shutdown_grace,
            },
            log: LogConfig { format, level },
            postgres,
        })
    } else {
        Err(ConfigError::Invalid(issues.0))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn postgres_target(
    name: &str,
    raw: &RawPostgresTarget,
    defaults: &RawTargetSettings,
    global: &Thresholds,
    env: &[(String, String)],
    issues: &mut Issues,
) -> Option<PostgresTarget> {
    let path = format!("postgres.{name}");
    let before = issues.0.len();
    if !valid_name(name) {
        issues.push(
            &path,
            format!("invalid target name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }

    let settings = settings(&raw.settings(), defaults, &path, issues);

    let mut options = None;
    match raw.url.as_deref() {
        None => issues.push(
            format!("{path}.url"),
            "missing: a postgres:// URL is required",
        ),
        Some(url) => match PgConnectOptions::from_str(url) {
            Ok(o) => options = Some(o),
            // sqlx's message may echo the URL: print only the redacted form.
            Err(_) => issues.push(
                format!("{path}.url"),
                format!(
                    "invalid URL {:?}: expected postgres://user[:password]@host[:port]/database",
                    redact_url(url)
                ),
            ),
        },
    }

    let url_has_password = raw.url.as_deref().is_some_and(|u| redact_url(u) != u);
    let sources = [
        url_has_password,
        raw.password_env.is_some(),
        raw.password_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        issues.push(
            &path,
            "more than one password source: use only one of a password in the url, password_env, password_file",
        );
    }
    let mut password = None;
    if let Some(var) = &raw.password_env {
        match env.iter().find(|(k, _)| k == var) {
            Some((_, v)) if !v.is_empty() => password = Some(Secret::new(v.clone())),
            _ => issues.push(
                format!("{path}.password_env"),
                format!("environment variable {var:?} is not set or empty"),
            ),
        }
    }
    if let Some(file) = &raw.password_file {
        match std::fs::read_to_string(file) {
            Ok(v) => {
                let v = v.trim_end_matches(['\n', '\r']);
                if v.is_empty() {
                    issues.push(
                        format!("{path}.password_file"),
                        format!("file {} is empty", file.display()),
                    );
                } else {
                    password = Some(Secret::new(v));
                }
            }
            Err(e) => issues.push(
                format!("{path}.password_file"),
                format!("cannot read {}: {e}", file.display()),
            ),
        }
    }

    let sslmode = raw.sslmode.clone().unwrap_or_else(|| "prefer".to_string());
    let ssl_mode = match PgSslMode::from_str(&sslmode) {
        Ok(m) => Some(m),
        Err(_) => {
            issues.push(
                format!("{path}.sslmode"),
                format!(
                    "invalid value {sslmode:?}: expected one of disable, allow, prefer, require, verify-ca, verify-full"
                ),
            );
            None
        }
    };
    if let Some(cert) = &raw.ssl_root_cert {
        if !cert.is_file() {
            issues.push(
                format!("{path}.ssl_root_cert"),
                format!("file {} does not exist", cert.display()),
            );
        }
    }

    let mut paths = Vec::new();
    for (volume, p) in &raw.paths {
        if !valid_name(volume) {
            issues.push(
                format!("{path}.paths.{volume}"),
                format!(
                    "invalid volume name {volume:?}: use lowercase letters, digits, '_' or '-'"
                ),
            );
        }
        if !p.is_absolute() {
            issues.push(
                format!("{path}.paths.{volume}"),
                format!("path {} must be absolute", p.display()),
            );
        }
        paths.push(WatchedPath {
            volume: volume.clone(),
            path: p.clone(),
        });
    }

    let thresholds = thresholds(
        global.clone(),
        &raw.thresholds,
        &format!("{path}.thresholds"),
        issues,
    );

    if issues.0.len() != before {
        return None;
    }
    let mut o = options?;
    if let Some(p) = &password {
        o = o.password(p.expose());
    }
    if let Some(m) = ssl_mode {
        o = o.ssl_mode(m);
    }
    if let Some(cert) = &raw.ssl_root_cert {
        o = o.ssl_root_cert(cert);
    }
    let s = &settings;
    o = o.application_name(APPLICATION_NAME).options([
        (
            "statement_timeout",
            s.statement_timeout.as_millis().to_string(),
        ),
        ("lock_timeout", s.lock_timeout.as_millis().to_string()),
        // dbwarden's own sessions must never sit idle in a transaction.
        (
            "idle_in_transaction_session_timeout",
            (s.poll_timeout.as_millis() * 2).to_string(),
        ),
    ]);

    Some(PostgresTarget {
        name: name.to_string(),
        url: redact_url(raw.url.as_deref().unwrap_or_default()),
        sslmode,
        ssl_root_cert: raw.ssl_root_cert.clone(),
        paths,
        settings,
        thresholds,
        connect: ConnectOptions(o),
    })
}

fn settings(
    t: &RawTargetSettings,
    d: &RawTargetSettings,
    path: &str,
    issues: &mut Issues,
) -> TargetSettings {
    let pick = |a: Option<HumanDuration>, b: Option<HumanDuration>, def: Duration| {
        a.or(b).map(|x| x.0).unwrap_or(def)
    };
    let s = TargetSettings {
        poll_interval: pick(t.poll_interval, d.poll_interval, DEFAULT_POLL_INTERVAL),
        poll_timeout: pick(t.poll_timeout, d.poll_timeout, DEFAULT_POLL_TIMEOUT),
        connect_timeout: pick(
            t.connect_timeout,
            d.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        ),
        statement_timeout: pick(
            t.statement_timeout,
            d.statement_timeout,
            DEFAULT_STATEMENT_TIMEOUT,
        ),
        lock_timeout: pick(t.lock_timeout, d.lock_timeout, DEFAULT_LOCK_TIMEOUT),
        max_connections: NonZeroU32::new(
            t.max_connections
                .or(d.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        )
        .unwrap_or(NonZeroU32::MIN),
        database_sizes_interval: pick(
            t.database_sizes_interval,
            d.database_sizes_interval,
            DEFAULT_DATABASE_SIZES_INTERVAL,
        ),
        backoff_max: pick(t.backoff_max, d.backoff_max, DEFAULT_BACKOFF_MAX),
    };
    let fmt = |d: Duration| format!("{:?}", humantime::format_duration(d).to_string());
    let min = Duration::from_millis(100);
    for (key, value) in [
        ("poll_interval", s.poll_interval),
        ("poll_timeout", s.poll_timeout),
        ("connect_timeout", s.connect_timeout),
        ("statement_timeout", s.statement_timeout),
        ("lock_timeout", s.lock_timeout),
        ("database_sizes_interval", s.database_sizes_interval),
        ("backoff_max", s.backoff_max),
    ] {
        if value < min {
            issues.push(
                format!("{path}.{key}"),
                format!("{} is too short: at least 100ms", fmt(value)),
            );
        }
    }
    if s.poll_timeout > s.poll_interval {
        issues.push(
            format!("{path}.poll_timeout"),
            format!(
                "{} is longer than poll_interval {}: a poll must end before the next is due",
                fmt(s.poll_timeout),
                fmt(s.poll_interval)
            ),
        );
    }
    if s.statement_timeout > s.poll_timeout {
        issues.push(
            format!("{path}.statement_timeout"),
            format!(
                "{} is longer than poll_timeout {}: the server would keep running statements the poll has abandoned",
                fmt(s.statement_timeout),
                fmt(s.poll_timeout)
            ),
        );
    }
    if let Some(n) = t.max_connections.or(d.max_connections) {
        if n == 0 || n > 10 {
            issues.push(
                format!("{path}.max_connections"),
                format!("{n} is out of range: 1 to 10"),
            );
        }
    }
    s
}

fn thresholds(
    mut t: Thresholds,
    raw: &RawThresholds,
    path: &str,
    issues: &mut Issues,
) -> Thresholds {
    fn ratio(v: Option<f64>, key: String, issues: &mut Issues) -> Option<f64> {
        let v = v?;
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Some(v)
        } else {
            issues.push(
                key,
                format!("{v} is out of range: a ratio from 0.0 to 1.0 (0.3 means 30%)"),
            );
            None
        }
    }
    let hold = |l: &mut Limit, h: Option<HumanDuration>| {
        if let Some(h) = h {
            l.hold = h.0;
        }
    };
    if let Some(c) = raw.disk_free {
        if let Some(v) = ratio(c.min_ratio, format!("{path}.disk_free.min_ratio"), issues) {
            t.disk_free.value = v;
        }
        hold(&mut t.disk_free, c.hold);
    }
    if let Some(c) = raw.connections_used {
        if let Some(v) = ratio(
            c.max_ratio,
            format!("{path}.connections_used.max_ratio"),
            issues,
        ) {
            t.connections_used.value = v;
        }
        hold(&mut t.connections_used, c.hold);
    }
    if let Some(c) = raw.wraparound {
        if let Some(v) = ratio(c.max_ratio, format!("{path}.wraparound.max_ratio"), issues) {
            t.wraparound.value = v;
        }
        hold(&mut t.wraparound, c.hold);
    }
    for (key, limit, raw) in [
        (
            "replication_lag",
            &mut t.replication_lag,
            raw.replication_lag,
        ),
        (
            "long_running_query",
            &mut t.long_running_query,
            raw.long_running_query,
        ),
        ("idle_session", &mut t.idle_session, raw.idle_session),
        (
            "idle_in_transaction",
            &mut t.idle_in_transaction,
            raw.idle_in_transaction,
        ),
    ] {
        if let Some(c) = raw {
            if let Some(m) = c.max {
                if m.0.is_zero() {
                    issues.push(
                        format!("{path}.{key}.max"),
                        "\"0s\" would fail on every session: use a positive duration",
                    );
                } else {
                    limit.value = m.0.as_secs_f64();
                }
            }
            hold(limit, c.hold);
        }
    }
    if let Some(c) = raw.replication_streaming {
        if let Some(n) = c.min_standbys {
            t.replication_streaming.value = f64::from(n);
        }
        hold(&mut t.replication_streaming, c.hold);
    }
    if let Some(c) = raw.replication_slot_retained_wal {
        if let Some(n) = c.max_bytes {
            t.replication_slot_retained_wal.value = n as f64;
        }
        hold(&mut t.replication_slot_retained_wal, c.hold);
    }
    for (limit, raw) in [
        (&mut t.checksum_failures, raw.checksum_failures),
        (&mut t.wal_archiving, raw.wal_archiving),
        (&mut t.invalid_indexes, raw.invalid_indexes),
    ] {
        if let Some(c) = raw {
            hold(limit, c.hold);
        }
    }
    t
}
