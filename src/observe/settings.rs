//! What observation needs to know of a target: where it is, how to log in,
//! and how often and how patiently to poll it (its thresholds belong to
//! `evaluate`). `[postgres.<name>]` tables
//! are [`PostgresTarget`]s; [`TargetSettings`] are the cadence, timeouts and
//! connection budget, written in `[defaults]` for every target and in a
//! target's own table, which wins key by key (the loader merges them).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::secret::{REDACTED, Secret, redact_url, url_password};
use crate::settings::{Context, Issues, Trim, duration, join, q, read_secret, valid_name};

/// The `application_name` of every session dbwarden opens; remediation never
/// touches sessions that carry it.
pub const APPLICATION_NAME: &str = "dbwarden";

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(2).unwrap();
pub const DEFAULT_DATABASE_SIZES_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Bounds of every setting's duration: below 100ms is a busy loop, above a
/// day is a typo (and would overflow PostgreSQL's millisecond timeouts long
/// before it overflowed anything of ours).
const MIN_SETTING: Duration = Duration::from_millis(100);
const MAX_SETTING: Duration = Duration::from_secs(24 * 3600);
const MAX_CONNECTIONS_LIMIT: u32 = 10;

/// How dbwarden treats one target: cadence, timeouts, connection budget.
/// As written: `None` is unset. Read through the methods, which apply the
/// defaults; [`TargetSettings::resolved`] writes them in (for printing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// How often the target is polled.
    #[serde(default, with = "duration::option")]
    pub poll_interval: Option<Duration>,
    /// A poll still running after this long is abandoned and counted.
    /// Unset: 5s, or poll_interval if shorter.
    #[serde(default, with = "duration::option")]
    pub poll_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub connect_timeout: Option<Duration>,
    /// Server-side `statement_timeout` of dbwarden's sessions. Unset: 3s,
    /// or poll_timeout if shorter.
    #[serde(default, with = "duration::option")]
    pub statement_timeout: Option<Duration>,
    /// Server-side `lock_timeout` of dbwarden's sessions.
    #[serde(default, with = "duration::option")]
    pub lock_timeout: Option<Duration>,
    /// The most connections dbwarden ever holds to this target (1 to 10).
    pub max_connections: Option<u32>,
    /// Database sizes are costly on large clusters: read them this often.
    #[serde(default, with = "duration::option")]
    pub database_sizes_interval: Option<Duration>,
    /// The longest wait between retries while the target is unreachable.
    #[serde(default, with = "duration::option")]
    pub backoff_max: Option<Duration>,
}

impl TargetSettings {
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL)
    }
    pub fn poll_timeout(&self) -> Duration {
        // Unset, the timeouts shrink to fit: poll_interval = "2s" alone is valid.
        self.poll_timeout
            .unwrap_or(DEFAULT_POLL_TIMEOUT.min(self.poll_interval()))
    }
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
            .unwrap_or(DEFAULT_STATEMENT_TIMEOUT.min(self.poll_timeout()))
    }
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT)
    }
    pub fn max_connections(&self) -> NonZeroU32 {
        self.max_connections
            .and_then(NonZeroU32::new)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }
    pub fn database_sizes_interval(&self) -> Duration {
        self.database_sizes_interval
            .unwrap_or(DEFAULT_DATABASE_SIZES_INTERVAL)
    }
    pub fn backoff_max(&self) -> Duration {
        self.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX)
    }

    /// Every setting with its default written in: what `dbwarden config` prints.
    pub fn resolved(&self) -> TargetSettings {
        TargetSettings {
            poll_interval: Some(self.poll_interval()),
            poll_timeout: Some(self.poll_timeout()),
            connect_timeout: Some(self.connect_timeout()),
            statement_timeout: Some(self.statement_timeout()),
            lock_timeout: Some(self.lock_timeout()),
            max_connections: Some(self.max_connections().get()),
            database_sizes_interval: Some(self.database_sizes_interval()),
            backoff_max: Some(self.backoff_max()),
        }
    }

    /// The ranges of the settings written at `path` (a target's table or
    /// `defaults`), and the order of the timeouts. A value the target
    /// inherited from `[defaults]` is reported there, once.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        for (key, value) in [
            ("poll_interval", self.poll_interval),
            ("poll_timeout", self.poll_timeout),
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            ("database_sizes_interval", self.database_sizes_interval),
            ("backoff_max", self.backoff_max),
        ] {
            let Some(value) = value else { continue };
            let Some(at) = ctx.written_at(&join(path, key)) else {
                continue;
            };
            if value < MIN_SETTING {
                issues.push(at, format!("{} is too short: at least \"100ms\"", q(value)));
            } else if value > MAX_SETTING {
                issues.push(at, format!("{} is too long: at most \"1day\"", q(value)));
            }
        }
        if let Some(n) = self.max_connections
            && !(1..=MAX_CONNECTIONS_LIMIT).contains(&n)
            && let Some(at) = ctx.written_at(&join(path, "max_connections"))
        {
            issues.push(
                at,
                format!("{n} is out of range: 1 to {MAX_CONNECTIONS_LIMIT}"),
            );
        }
        // "6s" is longer than poll_interval "5s" (defaults.poll_interval): ...
        // reported where the longer value was written, or at the target
        // when it is a default.
        let origin = |key: &str, written: Option<Duration>| -> Option<String> {
            written.and_then(|_| ctx.written_at(&join(path, key)))
        };
        // Where a value came from, unless it is the table the issue is reported in.
        let table = |at: &str| at.rsplit_once('.').map(|(t, _)| t.to_string());
        let shown =
            |key: &str, written: Option<Duration>, reported: &str| match origin(key, written) {
                None => " (the default)".to_string(),
                Some(at) if table(&at) == table(reported) => String::new(),
                Some(at) => format!(" ({at})"),
            };
        for (short, long, why) in [
            (
                ("poll_timeout", self.poll_timeout, self.poll_timeout()),
                ("poll_interval", self.poll_interval, self.poll_interval()),
                "a poll must end before the next is due",
            ),
            (
                (
                    "statement_timeout",
                    self.statement_timeout,
                    self.statement_timeout(),
                ),
                ("poll_timeout", self.poll_timeout, self.poll_timeout()),
                "the server would keep running statements the poll has abandoned",
            ),
        ] {
            if short.2 <= long.2 {
                continue;
            }
            let at = origin(short.0, short.1).unwrap_or_else(|| join(path, short.0));
            let short_origin = if short.1.is_none() {
                shown(short.0, short.1, &at)
            } else {
                String::new()
            };
            let long_origin = shown(long.0, long.1, &at);
            issues.push(
                at,
                format!(
                    "{}{short_origin} is longer than {} {}{long_origin}: {why}",
                    q(short.2),
                    long.0,
                    q(long.2),
                ),
            );
        }
    }
}

/// TLS towards the server, as libpq names its modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn pg(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }

    fn of(m: PgSslMode) -> SslMode {
        match m {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow => SslMode::Allow,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require => SslMode::Require,
            PgSslMode::VerifyCa => SslMode::VerifyCa,
            PgSslMode::VerifyFull => SslMode::VerifyFull,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection URL as written, which may hold a password: it prints
/// (`Debug`, `Serialize`) with the password redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Url(String);

impl Url {
    /// The URL itself, password included: only for the client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for Url {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// sqlx's connection options, which hold the password; printed redacted and
/// not compared (they are derived from the fields that are).
#[derive(Clone)]
pub struct ConnectOptions(pub PgConnectOptions);

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectOptions(<redacted>)")
    }
}

impl PartialEq for ConnectOptions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A PostgreSQL target: `[postgres.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// The table's key.
    #[serde(skip)]
    pub name: String,
    /// `postgres://user@host:port/database`. Required.
    pub url: Option<Url>,
    /// The password, at most one of: in the URL, from this environment
    /// variable, or from this file (read at load time). None: trust or peer
    /// authentication, `~/.pgpass` or `PGPASSWORD`, as with libpq.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The `sslmode` key, else the URL's, else "prefer".
    pub sslmode: Option<SslMode>,
    /// The CA that signed the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
    /// Filesystem paths to watch with statvfs, by volume name (`data`, `wal`, ...).
    #[serde(default)]
    pub paths: BTreeMap<String, PathBuf>,
    /// The label selector of the target's pods (read by the Kubernetes part).
    pub pods: Option<String>,
    /// In the file, these keys sit in the target's own table.
    #[serde(default)]
    pub settings: TargetSettings,
    /// Statements the user defines: `[postgres.<name>.probes.<probe>]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, super::probes::ProbeSettings>,
    /// postgres_exporter's `queries.yaml`, read at load time as more probes.
    pub queries_file: Option<PathBuf>,
    /// The built-in performance statistics: `[postgres.<name>.statistics]`.
    #[serde(default)]
    pub statistics: super::statistics::StatisticsSettings,
    /// The probes that run: `probes` and those of `queries_file`.
    #[serde(skip)]
    pub active_probes: BTreeMap<String, super::probes::ProbeSettings>,
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(skip)]
    connect: Option<ConnectOptions>,
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

/// A target's name, checked like every target's (both kinds share one namespace).
pub fn validate_target_name(name: &str, path: &str, issues: &mut Issues) {
    if !valid_name(name) {
        issues.push(
            path,
            format!("invalid target name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }
    if name == "global" {
        issues.push(
            path,
            "the target name \"global\" is reserved: it names the global remediation budget in metrics",
        );
    }
}

impl PostgresTarget {
    /// Whether a probe runs in a database other than the target's own, so
    /// that a run takes a second connection for a moment.
    pub fn probes_elsewhere(&self) -> bool {
        let own = self
            .connect
            .as_ref()
            .and_then(|c| c.0.get_database().map(str::to_string))
            .unwrap_or_default();
        self.active_probes
            .values()
            .any(|p| p.needs_other_connection(&own))
    }

    /// Every probe check of the target (its probes and its queries file's).
    pub fn probe_check_names(&self) -> Vec<String> {
        self.active_probes
            .iter()
            .flat_map(|(name, p)| p.check_names(name))
            .collect()
    }

    /// The options sqlx connects with: the URL, the password, TLS, and
    /// dbwarden's session settings (`application_name`, `statement_timeout`,
    /// `lock_timeout`, `idle_in_transaction_session_timeout`).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.connect
            .clone()
            .expect("a loaded configuration's targets have their connect options")
            .0
    }

    /// The URL with its password redacted; safe to print.
    pub fn redacted_url(&self) -> String {
        self.url.as_ref().map(Url::redacted).unwrap_or_default()
    }

    /// The sslmode in effect: the key, else the URL's, else "prefer".
    pub fn effective_sslmode(&self) -> SslMode {
        self.sslmode
            .or_else(|| self.url_sslmode())
            .unwrap_or(SslMode::Prefer)
    }

    fn url_sslmode(&self) -> Option<SslMode> {
        let url = self.url.as_ref()?.expose();
        if !query_keys(url)
            .iter()
            .any(|k| k == "sslmode" || k == "ssl-mode")
        {
            return None;
        }
        PgConnectOptions::from_str(url)
            .ok()
            .map(|o| SslMode::of(o.get_ssl_mode()))
    }

    /// Whether `other` connects the same way: same server, credentials, TLS
    /// and session settings. Otherwise a reload reconnects.
    pub fn same_connection(&self, other: &PostgresTarget) -> bool {
        let (a, b) = (&self.settings, &other.settings);
        self.url == other.url
            && self.password == other.password
            && self.effective_sslmode() == other.effective_sslmode()
            && self.ssl_root_cert == other.ssl_root_cert
            && a.connect_timeout() == b.connect_timeout()
            && a.statement_timeout() == b.statement_timeout()
            && a.lock_timeout() == b.lock_timeout()
            // idle_in_transaction_session_timeout is twice poll_timeout.
            && a.poll_timeout() == b.poll_timeout()
    }

    /// What `dbwarden config` prints: every default written in.
    pub fn resolved(&self) -> PostgresTarget {
        PostgresTarget {
            sslmode: Some(self.effective_sslmode()),
            settings: self.settings.resolved(),
            ..self.clone()
        }
    }

    /// Checks everything serde could not, reads the password, and builds the
    /// connect options. `path` is `postgres.<name>`.
    pub fn validate(&mut self, path: &str, ctx: &Context, issues: &mut Issues) {
        let before = issues.len();
        let key = |k: &str| join(path, k);
        validate_target_name(&self.name, path, issues);
        self.settings.validate(path, ctx, issues);
        self.statistics.validate(&key("statistics"), ctx, issues);

        let url = self.url.as_ref().map(|u| u.expose().to_string());
        let written_password = url
            .as_deref()
            .and_then(url_password)
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let mut options = None;
        match url.as_deref() {
            None => issues.push(key("url"), "missing: a postgres:// URL is required"),
            Some(url) => options = check_url(url, written_password.as_deref(), &key("url"), issues),
        }
        if let Some(url) = &url {
            for k in ["sslrootcert", "ssl-root-cert", "ssl-ca"] {
                if self.ssl_root_cert.is_some() && query_keys(url).iter().any(|x| x == k) {
                    issues.push(
                        key("ssl_root_cert"),
                        format!("set twice: the url also has {k}=...; keep one"),
                    );
                }
            }
        }

        // The password: in the URL, from an environment variable, or from a file.
        let mut given = Vec::new();
        if written_password.is_some() {
            given.push("a password in the url".to_string());
        }
        if let Some(var) = &self.password_env {
            given.push(format!("password_env = {var:?}"));
        }
        if let Some(file) = &self.password_file {
            given.push(format!("password_file = {:?}", file.display().to_string()));
        }
        if given.len() > 1 {
            issues.push(
                path,
                format!(
                    "more than one password source ({}): use only one",
                    given.join(", ")
                ),
            );
        } else {
            self.password = read_secret(
                "password",
                path,
                ("password_env", self.password_env.as_deref()),
                ("password_file", self.password_file.as_deref()),
                Trim::LineEnd,
                ctx,
                issues,
            );
        }

        // TLS: the sslmode key and an sslmode in the URL must agree; without
        // either, "prefer" (libpq's default), so PGSSLMODE never decides.
        if let (Some(k), Some(u)) = (self.sslmode, self.url_sslmode())
            && k != u
        {
            issues.push(
                key("sslmode"),
                format!(
                    "{:?} contradicts sslmode={} in the url: keep one",
                    k.name(),
                    u.name()
                ),
            );
        }
        if let Some(cert) = &self.ssl_root_cert {
            if !cert.is_file() {
                issues.push(
                    key("ssl_root_cert"),
                    format!("file {:?} does not exist", cert.display().to_string()),
                );
            }
            if self.effective_sslmode() == SslMode::Disable {
                issues.push(
                    key("ssl_root_cert"),
                    format!(
                        "{:?} is never used with sslmode \"disable\": use verify-full (or verify-ca)",
                        cert.display().to_string()
                    ),
                );
            }
        }
        for (volume, p) in &self.paths {
            let at = join(&key("paths"), volume);
            if !valid_name(volume) {
                issues.push(
                    &at,
                    format!(
                        "invalid volume name {volume:?}: use lowercase letters, digits, '_' or '-'"
                    ),
                );
            }
            crate::settings::absolute(p, &at, issues);
        }

        let database = options
            .as_ref()
            .and_then(|o: &PgConnectOptions| o.get_database().map(str::to_string))
            .or_else(|| options.as_ref().map(|o| o.get_username().to_string()));
        let probes_path = key("probes");
        let mut active: Vec<(String, String, super::probes::ProbeSettings)> = self
            .probes
            .iter()
            .map(|(n, p)| (join(&probes_path, n), n.clone(), p.clone()))
            .collect();
        if let Some(file) = &self.queries_file {
            let at = key("queries_file");
            match super::probes::queries_file::read(file) {
                Ok(imported) => {
                    for (name, p) in imported {
                        if self.probes.contains_key(&name) {
                            issues.push(
                                join(&probes_path, &name),
                                format!(
                                    "probe {name:?} is also a query of queries_file {:?}: rename one",
                                    file.display().to_string()
                                ),
                            );
                        }
                        active.push((join(&at, &name), name, p));
                    }
                }
                Err(errors) => {
                    for (query, message) in errors {
                        let path = if query.is_empty() {
                            at.clone()
                        } else {
                            join(&at, &query)
                        };
                        issues.push(path, message);
                    }
                }
            }
        }
        let own: Vec<String> = database.into_iter().collect();
        for (path, name, probe) in &active {
            probe.validate(
                name,
                path,
                self.settings.poll_interval(),
                super::probes::settings::Language::Sql,
                &own,
                issues,
            );
            if let Some(own) = own.first()
                && probe.needs_other_connection(own)
                && self.settings.max_connections().get() < 2
            {
                issues.push(
                    join(path, "databases"),
                    format!(
                        "runs in a database other than the target's ({own:?}), which takes a second connection for the run: max_connections is 1; set it to 2 or more"
                    ),
                );
            }
        }
        self.active_probes = active.into_iter().map(|(_, n, p)| (n, p)).collect();
        super::probes::settings::validate_names(&self.active_probes, &probes_path, issues);

        if issues.len() != before {
            return;
        }
        let Some(mut o) = options else { return };
        if let Some(p) = &self.password {
            o = o.password(p.expose());
        }
        o = o.ssl_mode(self.effective_sslmode().pg());
        if let Some(cert) = &self.ssl_root_cert {
            o = o.ssl_root_cert(cert);
        }
        let s = &self.settings;
        o = o.application_name(APPLICATION_NAME).options([
            (
                "statement_timeout",
                s.statement_timeout().as_millis().to_string(),
            ),
            ("lock_timeout", s.lock_timeout().as_millis().to_string()),
            // dbwarden's own sessions must never sit idle in a transaction.
            (
                "idle_in_transaction_session_timeout",
                (s.poll_timeout().as_millis() * 2).to_string(),
            ),
        ]);
        self.connect = Some(ConnectOptions(o));
    }
}

/// The URL's scheme, its parse by sqlx, and the parts sqlx would accept
/// silently. Messages never echo the password.
fn check_url(
    url: &str,
    written_password: Option<&str>,
    at: &str,
    issues: &mut Issues,
) -> Option<PgConnectOptions> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    let mut options = None;
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        issues.push(
            at,
            format!(
                "invalid URL {:?}: expected postgres://user@host:port/database",
                redact_url(url)
            ),
        );
    } else {
        match PgConnectOptions::from_str(url) {
            Ok(o) => options = Some(o),
            Err(e) => {
                // sqlx's messages do not echo the URL, but make sure.
                let mut reason = redact_url(&e.to_string());
                if written_password.is_some_and(|p| reason.contains(p)) {
                    reason = "cannot parse it".to_string();
                }
                issues.push(
                    at,
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
            at,
            format!(
                "{:?} holds the placeholder {REDACTED} that `dbwarden config` prints instead of a password: put the password back, or use password_env or password_file",
                redact_url(url)
            ),
        );
    }
    for k in query_keys(url) {
        let known =
            URL_PARAMETERS.contains(&k.as_str()) || (k.starts_with("options[") && k.ends_with(']'));
        if k == "application_name" {
            issues.push(
                at,
                "has application_name=...: dbwarden sets it to \"dbwarden\" (remediation skips those sessions); remove it",
            );
        } else if !known {
            // Not echoed: an unknown parameter's value may be a password.
            issues.push(
                at,
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
    options
}
