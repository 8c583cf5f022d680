//! From [`RawConfig`] to [`Config`]: every value checked, every mistake
//! reported with its key path and the offending value, secrets read.
//! Nothing here connects anywhere; the only I/O is reading password and
//! certificate files.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::evaluate::CheckId;
use crate::observe::SessionState;
use crate::remediate::policy::{Action, Blocking, Conditions, NameSet, Policy, Victims};
use crate::remediate::{Mode, RemediationSettings};

use super::raw::{self, *};
use super::secret::{REDACTED, url_password};
use super::*;

/// Collects issues while validating, so the user sees every mistake at once.
#[derive(Default)]
pub(super) struct Issues(pub(super) Vec<ConfigIssue>);

impl Issues {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
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

pub(super) const DEFAULT_MODE: Mode = Mode::DryRun;
pub(super) const DEFAULT_INSTANCE: &str = "dbwarden";
pub(super) const DEFAULT_AUDIT_FILE: &str = "/var/lib/dbwarden/audit.jsonl";
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/dbwarden";
/// The pause state's file name in `state_dir`.
pub(super) const PAUSE_STATE_FILE: &str = "paused.json";
pub(super) const DEFAULT_QUERY_MAX_CHARS: u32 = 256;
const MAX_QUERY_MAX_CHARS: u32 = 10_000;
pub(super) const DEFAULT_PACING: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_BUDGET_PER_TARGET: u32 = 10;
pub(super) const DEFAULT_BUDGET_GLOBAL: u32 = 30;
pub(super) const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(600);
const MIN_BUDGET_WINDOW: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_MAX_PER_CYCLE: u32 = 10;
const MAX_PER_CYCLE_LIMIT: u32 = 1000;
/// A target remediation acts on needs one connection to poll and one for
/// the actor (its advisory lock and the signals).
const REMEDIATION_MIN_CONNECTIONS: u32 = 2;

/// Bounds of every target-setting duration: below 100ms is a busy loop,
/// above a day is a typo (and would overflow PostgreSQL's millisecond timeouts
/// long before it overflowed anything of ours).
const MIN_SETTING: Duration = Duration::from_millis(100);
const MAX_SETTING: Duration = Duration::from_secs(24 * 3600);
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
const MAX_CONNECTIONS_LIMIT: u32 = 10;

/// `"5s"`: a duration as the user would write it, quoted.
pub(super) fn q(d: Duration) -> String {
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

    // The Alertmanager receiver's token, read like the pause API's.
    let (alertmanager_token, alertmanager_token_source) = read_token(
        "server",
        (
            "alertmanager_token_file",
            raw.server.alertmanager_token_file.as_ref(),
        ),
        (
            "alertmanager_token_env",
            raw.server.alertmanager_token_env.as_ref(),
        ),
        env,
        &mut issues,
    );

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

    let global_neo4j = super::neo4j::thresholds(
        Neo4jThresholds::default(),
        &raw.thresholds,
        "thresholds",
        &mut issues,
    );
    if raw.postgres.is_empty() && raw.neo4j.is_empty() {
        issues.push(
            "postgres",
            "no targets configured: add a [postgres.<name>] table with a url (or a [neo4j.<name>] table with a uri)",
        );
    }
    for name in raw.neo4j.keys().filter(|n| raw.postgres.contains_key(*n)) {
        issues.push(
            raw::join("neo4j", name),
            format!("the name {name:?} is also a PostgreSQL target: target names must be unique"),
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

    let mut neo4j = Vec::new();
    for (name, target) in &raw.neo4j {
        if let Some(t) =
            super::neo4j::target(name, target, &raw.defaults, &global_neo4j, env, &mut issues)
        {
            neo4j.push(t);
        }
    }

    let remediation = raw
        .remediation
        .as_ref()
        .and_then(|r| remediation(r, &raw, env, &mut issues));
    let kubernetes = super::kubernetes::kubernetes(&raw, env, &mut issues);

    if issues.0.is_empty() {
        let (remediation, remediation_written) = match remediation {
            Some((settings, written)) => (Some(settings), written),
            None => (None, RemediationWritten::default()),
        };
        Ok(Config {
            server: ServerConfig {
                listen,
                shutdown_grace,
                alertmanager_token,
                alertmanager_token_source,
            },
            log: LogConfig { format, level },
            postgres,
            neo4j,
            remediation,
            remediation_written,
            kubernetes,
        })
    } else {
        Err(issues.0)
    }
}

pub(super) fn valid_name(name: &str) -> bool {
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
    if name == "global" {
        issues.push(
            &path,
            "the target name \"global\" is reserved: it names the global remediation budget in metrics",
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
pub(super) fn check_setting_ranges(s: &RawTargetSettings, path: &str, issues: &mut Issues) {
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

pub(super) fn settings(
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

/// `[remediation]`: its settings, its policies, and the connection budget of
/// every target a policy may act on. `None` when anything is wrong (all of
/// it reported).
fn remediation(
    raw: &RawRemediation,
    config: &RawConfig,
    env: &[(String, String)],
    issues: &mut Issues,
) -> Option<(RemediationSettings, RemediationWritten)> {
    let before = issues.0.len();
    let key = |k: &str| raw::join("remediation", k);

    let mode = match raw.mode.as_deref() {
        None => Some(DEFAULT_MODE),
        Some("observe") => Some(Mode::Observe),
        Some("dry-run") => Some(Mode::DryRun),
        Some("enforce") => Some(Mode::Enforce),
        Some(other) => {
            issues.push(
                key("mode"),
                format!(
                    "invalid value {other:?}: expected \"observe\", \"dry-run\" (the default) or \"enforce\""
                ),
            );
            None
        }
    };

    let instance = match &raw.instance {
        Some(i) => {
            if !valid_instance(i) {
                issues.push(
                    key("instance"),
                    format!(
                        "invalid instance name {i:?}: use 1-40 letters, digits, '.', '_' or '-'"
                    ),
                );
            }
            i.clone()
        }
        None => match env.iter().find(|(k, _)| k == "HOSTNAME") {
            Some((_, h)) if valid_instance(h) => h.clone(),
            Some((_, h)) if !h.is_empty() => {
                issues.push(
                    key("instance"),
                    format!(
                        "not set, and its default, the HOSTNAME {h:?}, is not a valid instance name (1-40 letters, digits, '.', '_' or '-'): set remediation.instance (or DBWARDEN_REMEDIATION__INSTANCE)"
                    ),
                );
                h.clone()
            }
            _ => DEFAULT_INSTANCE.to_string(),
        },
    };

    let mut absolute = |k: &str, p: &Path| {
        if !p.is_absolute() {
            issues.push(
                key(k),
                format!("{:?} must be an absolute path", p.display().to_string()),
            );
        }
    };
    let audit_file = raw
        .audit_file
        .clone()
        .unwrap_or_else(|| DEFAULT_AUDIT_FILE.into());
    absolute("audit_file", &audit_file);
    let state_dir = raw
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    absolute("state_dir", &state_dir);
    if let Some(sentinel) = &raw.sentinel_file {
        absolute("sentinel_file", sentinel);
    }

    // The pause API's token: from a file or an environment variable, never
    // from the configuration itself, and never echoed.
    let (api_token, token_source) = read_token(
        "remediation",
        ("api_token_file", raw.api_token_file.as_ref()),
        ("api_token_env", raw.api_token_env.as_ref()),
        env,
        issues,
    );

    let query_max_chars = raw.query_max_chars.unwrap_or(DEFAULT_QUERY_MAX_CHARS);
    if !(1..=MAX_QUERY_MAX_CHARS).contains(&query_max_chars) {
        issues.push(
            key("query_max_chars"),
            format!("{query_max_chars} is out of range: 1 to {MAX_QUERY_MAX_CHARS}"),
        );
    }
    let window = raw.budget.window.unwrap_or(DEFAULT_BUDGET_WINDOW);
    if window < MIN_BUDGET_WINDOW {
        issues.push(
            raw::join(&key("budget"), "window"),
            format!("{} is too short: at least \"1s\"", q(window)),
        );
    }

    let mut policies = Vec::new();
    let mut applications = BTreeMap::new();
    for (name, p) in &raw.policies {
        if let Some((policy, apps)) = policy(name, p, config, issues) {
            applications.insert(name.clone(), apps);
            policies.push(policy);
        }
    }

    let mut neo4j_policies = Vec::new();
    for (name, p) in &raw.neo4j_policies {
        if let Some(policy) = super::neo4j::policy(name, p, config, issues) {
            neo4j_policies.push(policy);
        }
    }

    // Every target a policy acts on needs a second connection, for the actor.
    if mode.is_some_and(|m| m != Mode::Observe) {
        for (target, t) in &config.postgres {
            let acting: Vec<&str> = raw
                .policies
                .iter()
                .filter(|(_, p)| {
                    p.targets
                        .as_ref()
                        .is_none_or(|ts| ts.iter().any(|x| x == target))
                })
                .map(|(name, _)| name.as_str())
                .collect();
            let (n, at) = match (t.settings.max_connections, config.defaults.max_connections) {
                (Some(n), _) => (
                    n,
                    raw::join(&raw::join("postgres", target), "max_connections"),
                ),
                (None, Some(n)) => (n, raw::join("defaults", "max_connections")),
                (None, None) => continue,
            };
            // 0 is already out of range; only 1 is too few here.
            if acting.is_empty() || n == 0 || n >= REMEDIATION_MIN_CONNECTIONS {
                continue;
            }
            let by = acting
                .iter()
                .map(|p| {
                    let at = raw::join(&raw::join("remediation.policies", p), "targets");
                    format!("policy {p}, {at}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            issues.push(
                at,
                format!(
                    "{n} is too few for target {target:?}: in mode {:?}, remediation acts on it ({by}) and needs {REMEDIATION_MIN_CONNECTIONS} connections: one to poll, one dedicated to the actor lock and the signals; set max_connections = {REMEDIATION_MIN_CONNECTIONS} or more, or leave {target:?} out of the policy's targets",
                    mode.map(Mode::as_str).unwrap_or_default()
                ),
            );
        }
    }

    if issues.0.len() != before {
        return None;
    }
    let budget_per_target = raw.budget.per_target.unwrap_or(DEFAULT_BUDGET_PER_TARGET);
    let budget_global = raw.budget.global.unwrap_or(DEFAULT_BUDGET_GLOBAL);
    Some((
        RemediationSettings {
            mode: mode?,
            instance,
            audit_file,
            pause_state_file: state_dir.join(PAUSE_STATE_FILE),
            sentinel_file: raw.sentinel_file.clone(),
            api_token,
            query_max_chars: query_max_chars as usize,
            redact_queries: raw.redact_queries.unwrap_or(false),
            pacing: raw.pacing.unwrap_or(DEFAULT_PACING),
            target_budget: (budget_per_target, window),
            global_budget: (budget_global, window),
            policies,
            neo4j_policies,
        },
        RemediationWritten {
            api_token: token_source,
            applications,
        },
    ))
}

/// An instance name: it appears in audit records and as the actor lock's holder.
fn valid_instance(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn valid_env_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The states a policy may name, by their names in the configuration.
const POLICY_STATES: [SessionState; 4] = [
    SessionState::Active,
    SessionState::Idle,
    SessionState::IdleInTransaction,
    SessionState::IdleInTransactionAborted,
];

/// The keys of `when` that select sessions by themselves; a policy needs one.
const SELECTING_CONDITIONS: [&str; 6] = [
    "state",
    "idle_for",
    "query_running_for",
    "transaction_open_for",
    "connected_for",
    "blocking_waiters",
];

/// A policy's `victims` and `max_per_cycle` (PostgreSQL and Neo4j alike).
pub(super) fn victims_and_cap(
    victims: Option<&str>,
    max_per_cycle: Option<u32>,
    path: &str,
    issues: &mut Issues,
) -> (Victims, u32) {
    let victims = match victims {
        None | Some("all") => Victims::All,
        Some("oldest") => Victims::Oldest,
        Some(other) => {
            issues.push(
                raw::join(path, "victims"),
                format!("invalid value {other:?}: expected \"all\" (the default) or \"oldest\""),
            );
            Victims::All
        }
    };
    let max_per_cycle = max_per_cycle.unwrap_or(DEFAULT_MAX_PER_CYCLE);
    if !(1..=MAX_PER_CYCLE_LIMIT).contains(&max_per_cycle) {
        issues.push(
            raw::join(path, "max_per_cycle"),
            format!("{max_per_cycle} is out of range: 1 to {MAX_PER_CYCLE_LIMIT}"),
        );
    }
    (victims, max_per_cycle)
}

/// A policy's gates: `only_while_failing` (names among `checks`, which are
/// `what` checks) and `only_while_alerts` (Prometheus alert names).
pub(super) fn gates(
    failing: Option<&[String]>,
    alerts: Option<&[String]>,
    checks: &[CheckId],
    what: &str,
    path: &str,
    issues: &mut Issues,
) -> (Vec<CheckId>, Vec<String>) {
    let mut only_while_failing = Vec::new();
    for check in failing.into_iter().flatten() {
        match checks.iter().find(|c| c.as_str() == check) {
            Some(c) => only_while_failing.push(*c),
            None => issues.push(
                raw::join(path, "only_while_failing"),
                format!(
                    "unknown {what} {check:?}: expected one of {}",
                    checks
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    let mut only_while_alerts = Vec::new();
    for name in alerts.into_iter().flatten() {
        // Prometheus alert names: [a-zA-Z_][a-zA-Z0-9_]*.
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            only_while_alerts.push(name.clone());
        } else {
            issues.push(
                raw::join(path, "only_while_alerts"),
                format!("{name:?} is not an alert name (letters, digits and '_', e.g. \"DbWardenConnectionsHigh\")"),
            );
        }
    }
    (only_while_failing, only_while_alerts)
}

/// The regex crate's message without its multi-line diagram: the line
/// after `error: `, e.g. "unclosed group".
pub(super) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A CIDR network, or a bare address as a single-host network (/32, /128).
/// An IPv4-mapped IPv6 network is stored as the IPv4 network it maps, since
/// sessions' addresses are compared in canonical form.
fn network(text: &str) -> Option<IpNet> {
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?;
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return Some(IpNet::V4(n));
    }
    Some(net)
}

fn policy(
    name: &str,
    p: &RawPolicy,
    config: &RawConfig,
    issues: &mut Issues,
) -> Option<(Policy, Applications)> {
    let before = issues.0.len();
    let path = raw::join("remediation.policies", name);
    let key = |k: &str| raw::join(&path, k);
    let when_path = key("when");
    let wkey = |k: &str| raw::join(&when_path, k);
    if !valid_name(name) {
        issues.push(
            &path,
            format!("invalid policy name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }

    match &p.targets {
        Some(t) if t.is_empty() => issues.push(
            key("targets"),
            "empty: name the targets, or leave targets out to apply the policy to every target",
        ),
        Some(t) => {
            for x in t.iter().filter(|x| config.neo4j.contains_key(*x)) {
                issues.push(
                    key("targets"),
                    format!("{x:?} is a Neo4j target: these policies act on PostgreSQL sessions; use [remediation.neo4j_policies.*] for it"),
                );
            }
            let unknown: Vec<String> = t
                .iter()
                .filter(|x| !config.postgres.contains_key(*x) && !config.neo4j.contains_key(*x))
                .map(|x| format!("{x:?}"))
                .collect();
            if !unknown.is_empty() {
                let known: Vec<String> = config.postgres.keys().map(|k| format!("{k:?}")).collect();
                issues.push(
                    key("targets"),
                    format!(
                        "{} {} not a configured target: configured are {}",
                        unknown.join(", "),
                        if unknown.len() == 1 { "is" } else { "are" },
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

    let action = match p.action.as_deref() {
        None => {
            issues.push(
                key("action"),
                "missing: \"cancel\", \"terminate\" or \"cancel_then_terminate\" (with a grace)",
            );
            None
        }
        Some("cancel") => Some(Action::Cancel),
        Some("terminate") => Some(Action::Terminate),
        Some("cancel_then_terminate") => match p.grace {
            Some(grace) if !grace.is_zero() => Some(Action::CancelThenTerminate { grace }),
            Some(_) => {
                issues.push(
                    key("grace"),
                    "\"0s\" leaves the query no time to end after the cancel: use a positive duration, e.g. \"10s\"",
                );
                None
            }
            None => {
                issues.push(
                    key("grace"),
                    "missing: action = \"cancel_then_terminate\" needs a grace, how long to wait after the cancel before terminating, e.g. \"10s\"",
                );
                None
            }
        },
        Some(other) => {
            issues.push(
                key("action"),
                format!(
                    "invalid value {other:?}: expected \"cancel\", \"terminate\" or \"cancel_then_terminate\""
                ),
            );
            None
        }
    };
    if let (Some(grace), Some(a @ ("cancel" | "terminate"))) = (p.grace, p.action.as_deref()) {
        issues.push(
            key("grace"),
            format!(
                "{} is only used with action = \"cancel_then_terminate\", not {a:?}: remove it",
                q(grace)
            ),
        );
    }

    let (victims, max_per_cycle) =
        victims_and_cap(p.victims.as_deref(), p.max_per_cycle, &path, issues);
    let (only_while_failing, only_while_alerts) = gates(
        p.only_while_failing.as_deref(),
        p.only_while_alerts.as_deref(),
        &CheckId::ALL,
        "check",
        &path,
        issues,
    );

    // The conditions.
    let w = &p.when;
    let mut states = Vec::new();
    let mut states_valid = true;
    for s in w.state.iter().flatten() {
        match POLICY_STATES.iter().find(|x| x.as_str() == s) {
            Some(x) => states.push(*x),
            None => {
                states_valid = false;
                issues.push(
                    wkey("state"),
                    format!(
                        "invalid state {s:?}: expected {}",
                        POLICY_STATES.map(SessionState::as_str).join(", ")
                    ),
                );
            }
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
        format!(
            "[{}]",
            w.state
                .iter()
                .flatten()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if states_valid && !states.is_empty() {
        let idle_states = [
            SessionState::Idle,
            SessionState::IdleInTransaction,
            SessionState::IdleInTransactionAborted,
        ];
        if let Some(d) = w.idle_for
            && !states.iter().any(|s| idle_states.contains(s))
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
            && !states.contains(&SessionState::Active)
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
    // A condition whose value was rejected still counts: it is reported already.
    let selects = w.written.iter().any(|k| {
        SELECTING_CONDITIONS.contains(&k.as_str())
            && !(k == "state" && w.state.as_ref().is_some_and(Vec::is_empty))
    });
    if !selects && !p.stray_conditions {
        issues.push(
            &when_path,
            format!(
                "no condition: the policy would select every client session; set at least one of {}",
                SELECTING_CONDITIONS.join(", ")
            ),
        );
    }

    let mut names = |k: &str, list: &Option<Vec<String>>| -> NameSet {
        let list = list.clone().unwrap_or_default();
        let mut valid = true;
        for pattern in &list {
            if let Err(e) = Regex::new(pattern) {
                valid = false;
                issues.push(
                    wkey(k),
                    format!("invalid regex {pattern:?}: {}", regex_reason(&e)),
                );
            }
        }
        if !valid {
            return NameSet::default();
        }
        NameSet::new(Vec::new(), &list).unwrap_or_else(|e| {
            issues.push(
                wkey(k),
                format!(
                    "{} cannot be matched as a whole name: {}",
                    list.iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    regex_reason(&e)
                ),
            );
            NameSet::default()
        })
    };
    let match_applications = names("match_applications", &w.match_applications);
    let ignore_applications = names("ignore_applications", &w.ignore_applications);

    let mut networks = |k: &str, list: &Option<Vec<String>>| -> Vec<IpNet> {
        let mut out = Vec::new();
        for text in list.iter().flatten() {
            match network(text) {
                Some(n) => out.push(n),
                None => issues.push(
                    wkey(k),
                    format!(
                        "invalid network {text:?}: expected CIDR notation such as \"10.0.0.0/8\" or \"fd00::/8\", or an IP address"
                    ),
                ),
            }
        }
        out
    };
    let match_client_addrs = networks("match_client_addrs", &w.match_client_addrs);
    let ignore_client_addrs = networks("ignore_client_addrs", &w.ignore_client_addrs);

    let mut query = |k: &str, text: &Option<String>| -> Option<Regex> {
        let text = text.as_ref()?;
        Regex::new(text)
            .map_err(|e| {
                issues.push(
                    wkey(k),
                    format!("invalid regex {text:?}: {}", regex_reason(&e)),
                )
            })
            .ok()
    };
    let match_query = query("match_query", &w.match_query);
    let ignore_query = query("ignore_query", &w.ignore_query);

    let blocking = match (w.blocking_waiters, w.blocking_for) {
        (Some(0), _) => {
            issues.push(
                wkey("blocking_waiters"),
                "0 is out of range: at least 1 (the number of sessions the lock-chain root must block)",
            );
            None
        }
        (Some(n), waited_for) => Some(Blocking {
            min_waiters: n,
            waited_for: waited_for.unwrap_or(Duration::ZERO),
        }),
        (None, Some(d)) => {
            if !w.written.iter().any(|k| k == "blocking_waiters") {
                issues.push(
                    wkey("blocking_for"),
                    format!(
                        "{} without blocking_waiters: set blocking_waiters, how many sessions the lock-chain root must block",
                        q(d)
                    ),
                );
            }
            None
        }
        (None, None) => None,
    };

    if issues.0.len() != before {
        return None;
    }
    let policy = Policy {
        name: name.to_string(),
        targets: p.targets.clone().unwrap_or_default(),
        action: action?,
        victims,
        max_per_cycle,
        conditions: Conditions {
            states,
            idle_for: w.idle_for,
            query_running_for: w.query_running_for,
            transaction_open_for: w.transaction_open_for,
            connected_for: w.connected_for,
            match_users: w.match_users.clone().unwrap_or_default(),
            ignore_users: w.ignore_users.clone().unwrap_or_default(),
            match_databases: w.match_databases.clone().unwrap_or_default(),
            ignore_databases: w.ignore_databases.clone().unwrap_or_default(),
            match_applications,
            ignore_applications,
            match_client_addrs,
            ignore_client_addrs,
            match_query,
            ignore_query,
            blocking,
        },
        only_while_failing,
        only_while_alerts,
    };
    let apps = (
        w.match_applications.clone().unwrap_or_default(),
        w.ignore_applications.clone().unwrap_or_default(),
    );
    Some((policy, apps))
}

/// Reads a bearer token from a file or an environment variable (one of the
/// two, never from the configuration itself), reporting problems under
/// `table.<key>` without ever echoing a value that may be the token.
fn read_token(
    table: &str,
    (file_key, file): (&str, Option<&PathBuf>),
    (env_key, var): (&str, Option<&String>),
    env: &[(String, String)],
    issues: &mut Issues,
) -> (Option<Secret>, Option<TokenSource>) {
    let key = |k: &str| raw::join(table, k);
    if let (Some(file), Some(var)) = (file, var) {
        let var = if valid_env_name(var) {
            format!(" = {var:?}")
        } else {
            String::new()
        };
        issues.push(
            table,
            format!(
                "two token sources ({file_key} = {:?}, {env_key}{var}): use only one",
                file.display().to_string()
            ),
        );
    }
    let mut token = None;
    let mut source = None;
    if let Some(var) = var {
        source = Some(TokenSource::Env(var.clone()));
        if !valid_env_name(var) {
            // Not echoed: it may be the token itself, written in the wrong place.
            issues.push(
                key(env_key),
                "is not an environment variable name (letters, digits and '_', not starting with a digit): write the name of the variable that holds the token, never the token itself",
            );
        } else {
            match env.iter().find(|(k, _)| k == var) {
                Some((_, v)) if !v.trim().is_empty() => token = Some(Secret::new(v.trim())),
                Some(_) => issues.push(
                    key(env_key),
                    format!("environment variable {var:?} is empty"),
                ),
                None => issues.push(
                    key(env_key),
                    format!("environment variable {var:?} is not set"),
                ),
            }
        }
    }
    if let Some(file) = file {
        source = Some(TokenSource::File(file.clone()));
        let shown = file.display().to_string();
        match std::fs::read_to_string(file) {
            Ok(v) if !v.trim().is_empty() => token = Some(Secret::new(v.trim())),
            Ok(_) => issues.push(key(file_key), format!("file {shown:?} is empty")),
            Err(e) => issues.push(key(file_key), format!("cannot read {shown:?}: {e}")),
        }
    }
    (token, source)
}
