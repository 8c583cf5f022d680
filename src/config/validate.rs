//! From [`RawConfig`] to [`Config`]: every value checked, every mistake
//! reported with its key path and the offending value, secrets read.
//! Nothing here connects anywhere; the only I/O is reading password and
//! certificate files.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::raw::{self, *};
use super::secret::{REDACTED, url_password};
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

pub(super) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
pub(super) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 2;
pub(super) const DEFAULT_DATABASE_SIZES_INTERVAL: Duration = Duration::from_secs(300);
pub(super) const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_SSLMODE: &str = "prefer";

/// Bounds of every target-setting duration: below 100ms is a busy loop,
/// above a day is a typo (and would overflow PostgreSQL's millisecond timeouts
/// long before it overflowed anything of ours).
const MIN_SETTING: Duration = Duration::from_millis(100);
const MAX_SETTING: Duration = Duration::from_secs(24 * 3600);
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
const MAX_CONNECTIONS_LIMIT: u32 = 10;

/// `"5s"`: a duration as the user would write it, quoted.
fn q(d: Duration) -> String {
    format!("{:?}", humantime::format_duration(d).to_string())
}

pub(super) fn validate(
    raw: RawConfig,
    env: &[(String, String)],
) -> Result<Config, Vec<ConfigIssue>> {
    let mut issues = Issues::default();

    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = match SocketAddr::from_str(listen_text) {
        Ok(a) => a,
        Err(_) => {
            issues.push(
                "server.listen",
                format!(
                    "invalid address {listen_text:?}: expected IP:PORT, e.g. \"127.0.0.1:9641\" or \"0.0.0.0:9641\" (host names are not resolved)"
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 9641))
        }
    };
    let shutdown_grace = raw.server.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    if shutdown_grace > MAX_SHUTDOWN_GRACE {
        issues.push(
            "server.shutdown_grace",
            format!("{} is too long: at most \"1h\"", q(shutdown_grace)),
        );
    }

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
        issues.push(
            "log.level",
            format!(
                "invalid filter {level:?}: {e}; write e.g. \"info\" or \"info,dbwarden=debug\""
            ),
        );
    }

    check_setting_ranges(&raw.defaults, "defaults", &mut issues);
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
                alertmanager_token: None,
            },
            log: LogConfig { format, level },
            postgres,
            remediation: None,
        })
    } else {
        Err(issues.0)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn sslmode_name(m: PgSslMode) -> &'static str {
    match m {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The query parameters sqlx reads from a URL (besides `options[name]`).
/// It ignores any other with a warning; we refuse them.
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The keys of a URL's query string, as written (sqlx matches them exactly).
fn query_keys(url: &str) -> Vec<String> {
    let Some(q) = url.split_once('?').map(|(_, q)| q) else {
        return Vec::new();
    };
    let q = q.split('#').next().unwrap_or_default();
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or_default().to_string())
        .collect()
}

fn postgres_target(
    name: &str,
    raw: &RawPostgresTarget,
    defaults: &RawTargetSettings,
    global: &Thresholds,
    env: &[(String, String)],
    issues: &mut Issues,
) -> Option<PostgresTarget> {
    let path = raw::join("postgres", name);
    let key = |k: &str| raw::join(&path, k);
    let before = issues.0.len();
    if !valid_name(name) {
        issues.push(
            &path,
            format!("invalid target name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }

    check_setting_ranges(&raw.settings, &path, issues);
    let settings = settings(&raw.settings, defaults, &path, issues);

    // The URL. sqlx reads it; we check the parts sqlx would accept silently.
    let url = raw.url.as_deref();
    let written_password = url.and_then(url_password).filter(|p| !p.is_empty());
    let mut options = None;
    let mut url_sslmode = None;
    match url {
        None => issues.push(key("url"), "missing: a postgres:// URL is required"),
        Some(url) => {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("postgres" | "postgresql")) {
                issues.push(
                    key("url"),
                    format!(
                        "invalid URL {:?}: expected postgres://user@host:port/database",
                        redact_url(url)
                    ),
                );
            } else {
                match PgConnectOptions::from_str(url) {
                    Ok(o) => {
                        if query_keys(url)
                            .iter()
                            .any(|k| k == "sslmode" || k == "ssl-mode")
                        {
                            url_sslmode = Some(sslmode_name(o.get_ssl_mode()));
                        }
                        options = Some(o);
                    }
                    Err(e) => {
                        // sqlx's messages do not echo the URL, but make sure.
                        let mut reason = redact_url(&e.to_string());
                        if written_password.is_some_and(|p| reason.contains(p)) {
                            reason = "cannot parse it".to_string();
                        }
                        issues.push(
                            key("url"),
                            format!(
                                "invalid URL {:?}: {reason}; expected postgres://user@host:port/database",
                                redact_url(url)
                            ),
                        );
                    }
                }
            }
            if let Some(p) = written_password
                && (p == REDACTED || p.eq_ignore_ascii_case("%3Credacted%3E"))
            {
                issues.push(
                    key("url"),
                    format!(
                        "{:?} holds the placeholder {REDACTED} that `dbwarden config` prints instead of a password: put the password back, or use password_env or password_file",
                        redact_url(url)
                    ),
                );
            }
            let keys = query_keys(url);
            for k in &keys {
                let known = URL_PARAMETERS.contains(&k.as_str())
                    || (k.starts_with("options[") && k.ends_with(']'));
                if k == "application_name" {
                    issues.push(
                        key("url"),
                        "has application_name=...: dbwarden sets it to \"dbwarden\" (remediation skips those sessions); remove it",
                    );
                } else if !known {
                    // Not echoed: an unknown parameter's value may be a password.
                    issues.push(
                        key("url"),
                        format!(
                            "unknown parameter `{k}` (it would be ignored): the url accepts {}; timeouts are keys of [postgres.<name>]",
                            URL_PARAMETERS
                                .iter()
                                .filter(|p| **p != "application_name")
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
            for k in ["sslrootcert", "ssl-root-cert", "ssl-ca"] {
                if raw.ssl_root_cert.is_some() && keys.iter().any(|x| x == k) {
                    issues.push(
                        key("ssl_root_cert"),
                        format!("set twice: the url also has {k}=...; keep one"),
                    );
                }
            }
        }
    }

    // The password: in the URL, from an environment variable, or from a file.
    let mut given = Vec::new();
    if written_password.is_some() {
        given.push("a password in the url".to_string());
    }
    if let Some(var) = &raw.password_env {
        given.push(format!("password_env = {var:?}"));
    }
    if let Some(file) = &raw.password_file {
        given.push(format!("password_file = {:?}", file.display().to_string()));
    }
    if given.len() > 1 {
        issues.push(
            &path,
            format!(
                "more than one password source ({}): use only one",
                given.join(", ")
            ),
        );
    }
    let mut password = None;
    let mut password_source = if written_password.is_some() {
        PasswordSource::Url
    } else {
        PasswordSource::None
    };
    if let Some(var) = &raw.password_env {
        password_source = PasswordSource::Env(var.clone());
        match env.iter().find(|(k, _)| k == var) {
            Some((_, v)) if !v.is_empty() => password = Some(Secret::new(v.clone())),
            Some(_) => issues.push(
                key("password_env"),
                format!("environment variable {var:?} is empty"),
            ),
            None => issues.push(
                key("password_env"),
                format!("environment variable {var:?} is not set"),
            ),
        }
    }
    if let Some(file) = &raw.password_file {
        password_source = PasswordSource::File(file.clone());
        match std::fs::read_to_string(file) {
            Ok(v) => {
                // Only the line ending an editor or `echo` adds: passwords may end in spaces.
                let v = v.strip_suffix('\n').unwrap_or(&v);
                let v = v.strip_suffix('\r').unwrap_or(v);
                if v.is_empty() {
                    issues.push(
                        key("password_file"),
                        format!("file {:?} is empty", file.display().to_string()),
                    );
                } else {
                    password = Some(Secret::new(v));
                }
            }
            Err(e) => issues.push(
                key("password_file"),
                format!("cannot read {:?}: {e}", file.display().to_string()),
            ),
        }
    }

    // TLS. The sslmode key and an sslmode in the URL must agree; without
    // either, "prefer" (libpq's default), so PGSSLMODE never decides.
    let sslmode = match (raw.sslmode.as_deref(), url_sslmode) {
        (Some(k), _) => match PgSslMode::from_str(k) {
            Ok(m) => {
                let m = sslmode_name(m);
                if url_sslmode.is_some_and(|u| u != m) {
                    issues.push(
                        key("sslmode"),
                        format!(
                            "{k:?} contradicts sslmode={} in the url: keep one",
                            url_sslmode.unwrap_or_default()
                        ),
                    );
                }
                Some(m)
            }
            Err(_) => {
                issues.push(
                    key("sslmode"),
                    format!(
                        "invalid value {k:?}: expected one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                );
                None
            }
        },
        (None, Some(u)) => Some(u),
        (None, None) => Some(DEFAULT_SSLMODE),
    };
    if let Some(cert) = &raw.ssl_root_cert {
        if !cert.is_file() {
            issues.push(
                key("ssl_root_cert"),
                format!("file {:?} does not exist", cert.display().to_string()),
            );
        }
        if sslmode == Some("disable") {
            issues.push(
                key("ssl_root_cert"),
                format!(
                    "{:?} is never used with sslmode \"disable\": use verify-full (or verify-ca)",
                    cert.display().to_string()
                ),
            );
        }
    }

    let mut paths = Vec::new();
    for (volume, p) in &raw.paths {
        let vpath = raw::join(&key("paths"), volume);
        if !valid_name(volume) {
            issues.push(
                &vpath,
                format!(
                    "invalid volume name {volume:?}: use lowercase letters, digits, '_' or '-'"
                ),
            );
        }
        if !p.is_absolute() {
            issues.push(
                &vpath,
                format!("{:?} must be an absolute path", p.display().to_string()),
            );
        }
        paths.push(WatchedPath {
            volume: volume.clone(),
            path: p.clone(),
        });
    }

    let thresholds = thresholds(global.clone(), &raw.thresholds, &key("thresholds"), issues);

    if issues.0.len() != before {
        return None;
    }
    let mut o = options?;
    if let Some(p) = &password {
        o = o.password(p.expose());
    }
    if let Some(m) = sslmode.and_then(|m| PgSslMode::from_str(m).ok()) {
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
        url: redact_url(url.unwrap_or_default()),
        password_source,
        sslmode: sslmode.unwrap_or(DEFAULT_SSLMODE).to_string(),
        ssl_root_cert: raw.ssl_root_cert.clone(),
        paths,
        settings,
        thresholds,
        connect: ConnectOptions(o),
    })
}

/// The bounds of each setting, checked where it is written (`defaults.*` or
/// `postgres.<name>.*`), so a mistake in `[defaults]` is reported once.
fn check_setting_ranges(s: &RawTargetSettings, path: &str, issues: &mut Issues) {
    for (key, value) in [
        ("poll_interval", s.poll_interval),
        ("poll_timeout", s.poll_timeout),
        ("connect_timeout", s.connect_timeout),
        ("statement_timeout", s.statement_timeout),
        ("lock_timeout", s.lock_timeout),
        ("database_sizes_interval", s.database_sizes_interval),
        ("backoff_max", s.backoff_max),
    ] {
        let Some(value) = value else { continue };
        if value < MIN_SETTING {
            issues.push(
                raw::join(path, key),
                format!("{} is too short: at least \"100ms\"", q(value)),
            );
        } else if value > MAX_SETTING {
            issues.push(
                raw::join(path, key),
                format!("{} is too long: at most \"1day\"", q(value)),
            );
        }
    }
    if let Some(n) = s.max_connections
        && (n == 0 || n > MAX_CONNECTIONS_LIMIT)
    {
        issues.push(
            raw::join(path, "max_connections"),
            format!("{n} is out of range: 1 to {MAX_CONNECTIONS_LIMIT}"),
        );
    }
}

/// A resolved setting and where its value came from.
struct Picked {
    value: Duration,
    /// The key path that set it, or `None` for the built-in default.
    from: Option<String>,
}

fn settings(
    t: &RawTargetSettings,
    d: &RawTargetSettings,
    path: &str,
    issues: &mut Issues,
) -> TargetSettings {
    let pick = |key: &str, a: Option<Duration>, b: Option<Duration>, def: Duration| match (a, b) {
        (Some(v), _) => Picked {
            value: v,
            from: Some(raw::join(path, key)),
        },
        (None, Some(v)) => Picked {
            value: v,
            from: Some(raw::join("defaults", key)),
        },
        (None, None) => Picked {
            value: def,
            from: None,
        },
    };
    let poll_interval = pick(
        "poll_interval",
        t.poll_interval,
        d.poll_interval,
        DEFAULT_POLL_INTERVAL,
    );
    // Unset, the timeouts shrink to fit: poll_interval = "2s" alone is valid.
    let poll_timeout = pick(
        "poll_timeout",
        t.poll_timeout,
        d.poll_timeout,
        DEFAULT_POLL_TIMEOUT.min(poll_interval.value),
    );
    let statement_timeout = pick(
        "statement_timeout",
        t.statement_timeout,
        d.statement_timeout,
        DEFAULT_STATEMENT_TIMEOUT.min(poll_timeout.value),
    );

    // "6s" is longer than poll_interval "5s" (defaults.poll_interval): ...
    // reported where the longer value was written, or at the target when
    // it is a built-in default.
    let mut must_not_exceed =
        |short: &Picked, short_key: &str, long: &Picked, long_key: &str, why: &str| {
            if short.value <= long.value {
                return;
            }
            let origin = |p: &Picked| match &p.from {
                Some(f) => format!(" ({f})"),
                None => " (the default)".to_string(),
            };
            let at = short
                .from
                .clone()
                .unwrap_or_else(|| raw::join(path, short_key));
            issues.push(
                at,
                format!(
                    "{}{} is longer than {long_key} {}{}: {why}",
                    q(short.value),
                    if short.from.is_none() {
                        origin(short)
                    } else {
                        String::new()
                    },
                    q(long.value),
                    origin(long),
                ),
            );
        };
    must_not_exceed(
        &poll_timeout,
        "poll_timeout",
        &poll_interval,
        "poll_interval",
        "a poll must end before the next is due",
    );
    must_not_exceed(
        &statement_timeout,
        "statement_timeout",
        &poll_timeout,
        "poll_timeout",
        "the server would keep running statements the poll has abandoned",
    );

    let or = |a: Option<Duration>, b: Option<Duration>, def: Duration| a.or(b).unwrap_or(def);
    TargetSettings {
        poll_interval: poll_interval.value,
        poll_timeout: poll_timeout.value,
        connect_timeout: or(
            t.connect_timeout,
            d.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        ),
        statement_timeout: statement_timeout.value,
        lock_timeout: or(t.lock_timeout, d.lock_timeout, DEFAULT_LOCK_TIMEOUT),
        max_connections: NonZeroU32::new(
            t.max_connections
                .or(d.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        )
        .unwrap_or(NonZeroU32::MIN),
        database_sizes_interval: or(
            t.database_sizes_interval,
            d.database_sizes_interval,
            DEFAULT_DATABASE_SIZES_INTERVAL,
        ),
        backoff_max: or(t.backoff_max, d.backoff_max, DEFAULT_BACKOFF_MAX),
    }
}

/// Applies the thresholds written at `path` over `t`, field by field: a
/// target that sets only `disk_free.for` keeps the global `min_ratio`.
fn thresholds(
    mut t: Thresholds,
    raw: &RawThresholds,
    path: &str,
    issues: &mut Issues,
) -> Thresholds {
    let check = |name: &str, key: &str| raw::join(&raw::join(path, name), key);
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
    let hold = |l: &mut Limit, h: Option<Duration>| {
        if let Some(h) = h {
            l.hold = h;
        }
    };
    if let Some(c) = raw.disk_free {
        if let Some(v) = ratio(c.min_ratio, check("disk_free", "min_ratio"), issues) {
            t.disk_free.value = v;
        }
        hold(&mut t.disk_free, c.hold);
    }
    if let Some(c) = raw.connections_used {
        if let Some(v) = ratio(c.max_ratio, check("connections_used", "max_ratio"), issues) {
            t.connections_used.value = v;
        }
        hold(&mut t.connections_used, c.hold);
    }
    if let Some(c) = raw.wraparound {
        if let Some(v) = ratio(c.max_ratio, check("wraparound", "max_ratio"), issues) {
            t.wraparound.value = v;
        }
        hold(&mut t.wraparound, c.hold);
    }
    for (name, limit, raw) in [
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
                if m.is_zero() {
                    issues.push(
                        check(name, "max"),
                        "\"0s\" would fail all the time: use a positive duration",
                    );
                } else {
                    limit.value = m.as_secs_f64();
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
