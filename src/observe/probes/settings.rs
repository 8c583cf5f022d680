//! `[postgres.<target>.probes.<name>]` and `[neo4j.<target>.probes.<name>]`:
//! a statement the user writes (`sql` or `cypher`), the columns of its
//! result that become metrics and labels, and the checks on them
//! (`[...probes.<name>.checks]`).
//!
//! A probe runs on the target's polling connection. A PostgreSQL probe runs
//! in the target's own database (the one in its URL): `databases` names
//! that database or is left out; other databases would need a connection
//! each, which the connection budget does not have. A Cypher probe runs in
//! each database `databases` names (default: the target's `databases`) over
//! the same Bolt connection; with more than one, its rows carry a
//! `database` label.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::settings::{Issues, duration, join, q};

/// Series a probe may export unless its `max_series` says otherwise.
pub const DEFAULT_MAX_SERIES: u32 = 100;
/// The most `max_series` may allow.
pub const MAX_SERIES_LIMIT: u32 = 10_000;
/// A probe's interval unset: this many poll intervals.
pub const DEFAULT_INTERVAL_POLLS: u32 = 6;
/// A probe's timeout unset: 5s, or half the poll interval if shorter.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_SETTING: Duration = Duration::from_millis(100);
const MAX_SETTING: Duration = Duration::from_secs(24 * 3600);

/// The check key that limits the probe's own run time.
pub const DURATION_CHECK: &str = "duration";

/// The names after `dbwarden_probe_` of the fixed probe families
/// (`telemetry::metrics` defines them); a probe's value families
/// (`dbwarden_probe_<probe>_<column>`) must never take one of them.
pub const FIXED_FAMILIES: [&str; 5] = [
    "up",
    "duration_seconds",
    "last_run_timestamp_seconds",
    "series",
    "failures_total",
];

/// The language of a target's probes: the kind of target decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// PostgreSQL: `sql`, in the target's own database.
    Sql,
    /// Neo4j: `cypher`, in each of `databases`.
    Cypher,
}

/// The label a Cypher probe's rows carry when it runs in several databases.
pub const DATABASE_LABEL: &str = "database";

/// One probe, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// One SQL statement (a query); required on a PostgreSQL target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// One Cypher statement, from a Neo4j target's [`CypherProbe`]; not a
    /// key of a PostgreSQL probe.
    #[serde(skip)]
    pub cypher: Option<String>,
    /// The databases it runs in. PostgreSQL: only the target's own (the
    /// default). Neo4j: any; default the target's `databases`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// How often it runs: a multiple of the poll interval, never faster.
    #[serde(default, with = "duration::option")]
    pub interval: Option<Duration>,
    /// Its `statement_timeout` (and the longest it may hold the connection).
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Its `lock_timeout`; unset: the target's `lock_timeout`, at most the timeout.
    #[serde(default, with = "duration::option")]
    pub lock_timeout: Option<Duration>,
    /// The text columns that become labels (declared, never inferred).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The most series the probe may export; over it the probe fails.
    pub max_series: Option<u32>,
    /// Checks on its columns, and `duration` on its run time.
    #[serde(default)]
    pub checks: BTreeMap<String, ProbeCheck>,
    /// Columns left out of the result (a queries file's `DISCARD`); not a key.
    #[serde(skip)]
    pub discard: Vec<String>,
}

/// `[neo4j.<target>.probes.<name>]`: a probe as a Neo4j target's table
/// holds it (`cypher`; no `sql`, no `lock_timeout`), turned into
/// [`ProbeSettings`] by [`CypherProbe::settings`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CypherProbe {
    /// One Cypher statement (a read); required.
    pub cypher: Option<String>,
    /// The databases it runs in; default the target's `databases`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    #[serde(default, with = "duration::option")]
    pub interval: Option<Duration>,
    /// The transaction timeout the server applies (and the longest the
    /// probe may hold the connection).
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub max_series: Option<u32>,
    #[serde(default)]
    pub checks: BTreeMap<String, ProbeCheck>,
}

impl CypherProbe {
    pub fn settings(&self) -> ProbeSettings {
        ProbeSettings {
            sql: None,
            cypher: self.cypher.clone(),
            databases: self.databases.clone(),
            interval: self.interval,
            timeout: self.timeout,
            lock_timeout: None,
            labels: self.labels.clone(),
            max_series: self.max_series,
            checks: self.checks.clone(),
            discard: Vec::new(),
        }
    }
}

/// A check on one column (or on the run time, `duration`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeCheck {
    /// Fails when a value is below this.
    pub min: Option<f64>,
    /// Fails when a value is above this (a number; for `duration`, a duration).
    pub max: Option<Bound>,
    /// A timestamp column: fails when the newest value is older than this.
    #[serde(default, with = "duration::option")]
    pub max_age: Option<Duration>,
    /// How long the condition must hold before the check fails.
    #[serde(rename = "for", default, with = "duration::option")]
    pub hold: Option<Duration>,
}

/// `max = 5` or `max = "2s"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Number(f64),
    Duration(Duration),
}

impl Bound {
    /// In base units: the number, or seconds.
    pub fn value(self) -> f64 {
        match self {
            Bound::Number(n) => n,
            Bound::Duration(d) => d.as_secs_f64(),
        }
    }
}

impl Serialize for Bound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bound::Number(n) => s.serialize_f64(*n),
            Bound::Duration(d) => duration::serialize(d, s),
        }
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Bound;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, or for `duration` a duration such as \"2s\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bound, E> {
                Ok(Bound::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bound, E> {
                Ok(Bound::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bound, E> {
                Ok(Bound::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bound, E> {
                humantime::parse_duration(v.trim())
                    .map(Bound::Duration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid duration {v:?}: {e}; write e.g. \"2s\", or a number"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

/// A `databases` entry with `*`: every database whose name it matches.
pub fn is_pattern(database: &str) -> bool {
    database.contains('*')
}

/// Whether `name` matches the `databases` entry `entry` (a name, or a
/// pattern where `*` stands for any run of characters).
pub fn database_matches(entry: &str, name: &str) -> bool {
    if !is_pattern(entry) {
        return entry == name;
    }
    let parts: Vec<&str> = entry.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// `probe:<probe>` or `probe:<probe>:<column>`: a probe check's name.
pub fn probe_check_name(probe: &str, column: Option<&str>) -> String {
    match column {
        Some(c) => format!("probe:{probe}:{c}"),
        None => format!("probe:{probe}"),
    }
}

/// A probe's or a column's name: it becomes part of a metric name.
pub fn valid_metric_word(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ProbeSettings {
    /// The interval in effect, given the target's poll interval.
    pub fn interval(&self, poll_interval: Duration) -> Duration {
        self.interval
            .unwrap_or(poll_interval * DEFAULT_INTERVAL_POLLS)
    }

    /// The timeout in effect (`statement_timeout`), given the poll interval.
    pub fn timeout(&self, poll_interval: Duration) -> Duration {
        self.timeout
            .unwrap_or(DEFAULT_TIMEOUT.min(poll_interval / 2))
    }

    /// The `lock_timeout` in effect: the key, else the target's, never over the timeout.
    pub fn lock_timeout(&self, poll_interval: Duration, target_lock_timeout: Duration) -> Duration {
        self.lock_timeout
            .unwrap_or(target_lock_timeout)
            .min(self.timeout(poll_interval))
    }

    /// The names of the probe's checks, as `evaluate::probes` reports them
    /// and a policy's `only_while_failing` names them: `probe:<name>` (the
    /// run succeeded), then `probe:<name>:<column>` for each check.
    pub fn check_names(&self, name: &str) -> Vec<String> {
        std::iter::once(probe_check_name(name, None))
            .chain(
                self.checks
                    .keys()
                    .map(|column| probe_check_name(name, Some(column))),
            )
            .collect()
    }

    pub fn max_series(&self) -> u32 {
        self.max_series.unwrap_or(DEFAULT_MAX_SERIES)
    }

    pub fn sql(&self) -> &str {
        self.sql.as_deref().unwrap_or_default()
    }

    pub fn cypher(&self) -> &str {
        self.cypher.as_deref().unwrap_or_default()
    }

    /// Whether the probe's rows carry a `database` label: it runs in more
    /// than one database, or in every database a pattern matches.
    pub fn labels_database(&self, target_databases: &[String]) -> bool {
        let dbs = self.databases_or(target_databases);
        dbs.len() > 1 || dbs.iter().any(|d| is_pattern(d))
    }

    /// A PostgreSQL probe that runs in a database other than the target's
    /// own: it needs a connection of its own for the run (`own` is the
    /// target's database).
    pub fn needs_other_connection(&self, own: &str) -> bool {
        self.sql.is_some() && self.databases.iter().any(|d| d != own)
    }

    /// The databases a Cypher probe runs in: its own list, else the target's.
    pub fn databases_or<'a>(&'a self, target_databases: &'a [String]) -> &'a [String] {
        if self.databases.is_empty() {
            target_databases
        } else {
            &self.databases
        }
    }

    /// Checks everything serde could not. `path` is
    /// `postgres.<target>.probes.<name>` (`language` Sql; `databases` the
    /// target's own) or `neo4j.<target>.probes.<name>` (Cypher; the
    /// target's `databases`).
    pub fn validate(
        &self,
        name: &str,
        path: &str,
        poll_interval: Duration,
        language: Language,
        databases: &[String],
        issues: &mut Issues,
    ) {
        let key = |k: &str| join(path, k);
        if !valid_metric_word(name) {
            issues.push(
                path,
                format!(
                    "invalid probe name {name:?}: it becomes part of metric names, use lowercase letters, digits and '_', starting with a letter"
                ),
            );
        }
        for fixed in FIXED_FAMILIES {
            if fixed == name || fixed.starts_with(&format!("{name}_")) {
                issues.push(
                    path,
                    format!(
                        "probe name {name:?} could make a metric named like dbwarden_probe_{fixed}: choose another name"
                    ),
                );
            }
        }
        let (statement, what, mine) = match language {
            Language::Sql => ("sql", "SQL", &self.sql),
            Language::Cypher => ("cypher", "Cypher", &self.cypher),
        };
        match mine.as_deref().map(str::trim) {
            None => issues.push(
                key(statement),
                format!("missing: the probe's {what} statement is required"),
            ),
            Some("") => issues.push(
                key(statement),
                format!("empty: write the probe's {what} statement"),
            ),
            Some(_) => {}
        }
        match language {
            Language::Sql => {
                for (i, db) in self.databases.iter().enumerate() {
                    if db.is_empty() || db.len() > 63 || db.chars().any(char::is_control) {
                        issues.push(
                            key("databases"),
                            format!(
                                "invalid database name {db:?}: 1 to 63 characters, or a pattern with `*` such as \"tenant_*\""
                            ),
                        );
                    } else if self.databases[..i].contains(db) {
                        issues.push(key("databases"), format!("{db:?} is listed twice"));
                    }
                }
                if self.labels_database(databases)
                    && self.labels.iter().any(|l| l == DATABASE_LABEL)
                {
                    issues.push(
                        key("labels"),
                        "\"database\" is the label dbwarden adds when a probe runs in several databases: rename the column (AS ...)",
                    );
                }
            }
            Language::Cypher => {
                for (i, db) in self.databases.iter().enumerate() {
                    if !super::super::neo4j::settings::valid_database_name(db) {
                        issues.push(
                            key("databases"),
                            format!(
                                "invalid database name {db:?}: Neo4j names are 3-63 characters, letters, digits, '.' and '-', starting with a letter"
                            ),
                        );
                    } else if self.databases[..i].contains(db) {
                        issues.push(key("databases"), format!("{db:?} is listed twice"));
                    }
                }
                if self.labels_database(databases)
                    && self.labels.iter().any(|l| l == DATABASE_LABEL)
                {
                    issues.push(
                        key("labels"),
                        "\"database\" is the label dbwarden adds when a probe runs in several databases: rename the column (AS ...)",
                    );
                }
            }
        }
        for (k, v) in [
            ("interval", self.interval),
            ("timeout", self.timeout),
            ("lock_timeout", self.lock_timeout),
        ] {
            if let Some(v) = v {
                crate::settings::within(v, MIN_SETTING, MAX_SETTING, &key(k), issues);
            }
        }
        if let Some(i) = self.interval
            && i < poll_interval
        {
            issues.push(
                key("interval"),
                format!(
                    "{} is faster than the target's poll_interval {}: a probe never runs more often than the poll",
                    q(i),
                    q(poll_interval)
                ),
            );
        }
        if let Some(t) = self.timeout
            && t >= poll_interval
        {
            issues.push(
                key("timeout"),
                format!(
                    "{} is not shorter than the target's poll_interval {}: a probe runs between polls and must fit there",
                    q(t),
                    q(poll_interval)
                ),
            );
        }
        if let Some(n) = self.max_series
            && !(1..=MAX_SERIES_LIMIT).contains(&n)
        {
            issues.push(
                key("max_series"),
                format!("{n} is out of range: 1 to {MAX_SERIES_LIMIT}"),
            );
        }
        let mut seen = BTreeSet::new();
        for l in &self.labels {
            if !valid_metric_word(l) {
                issues.push(
                    key("labels"),
                    format!(
                        "invalid label column {l:?}: a label name uses lowercase letters, digits and '_', starting with a letter"
                    ),
                );
            } else if l == "target" {
                issues.push(
                    key("labels"),
                    "\"target\" is dbwarden's own label: rename the column (AS ...)",
                );
            } else if !seen.insert(l.as_str()) {
                issues.push(key("labels"), format!("{l:?} is listed twice"));
            }
            if self.checks.contains_key(l) {
                issues.push(
                    join(&key("checks"), l),
                    format!(
                        "{l:?} is a label column (text): only numeric and timestamp columns can be checked"
                    ),
                );
            }
        }
        for (column, check) in &self.checks {
            let at = join(&key("checks"), column);
            if let Some(h) = check.hold {
                crate::settings::within(h, Duration::ZERO, MAX_SETTING, &join(&at, "for"), issues);
            }
            if column == DURATION_CHECK {
                if check.min.is_some() || check.max_age.is_some() {
                    issues.push(
                        &at,
                        "the run time takes only `max` (a duration such as \"2s\") and `for`",
                    );
                }
                match check.max {
                    None => issues.push(
                        join(&at, "max"),
                        "missing: the longest run time, such as \"2s\"",
                    ),
                    Some(Bound::Number(n)) => issues.push(
                        join(&at, "max"),
                        format!("{n} is a number: write the run time as a duration such as \"2s\""),
                    ),
                    Some(Bound::Duration(_)) => {}
                }
                continue;
            }
            if !valid_metric_word(column) {
                issues.push(
                    &at,
                    format!(
                        "invalid column name {column:?}: use lowercase letters, digits and '_', starting with a letter (AS ... in the SQL)"
                    ),
                );
            }
            let max = match check.max {
                Some(Bound::Duration(d)) => {
                    issues.push(
                        join(&at, "max"),
                        format!(
                            "{} is a duration: a column's `max` is a number (use `max_age` for a timestamp column)",
                            q(d)
                        ),
                    );
                    None
                }
                Some(Bound::Number(n)) => Some(n),
                None => None,
            };
            if check.max_age.is_some() && (check.min.is_some() || check.max.is_some()) {
                issues.push(
                    &at,
                    "`max_age` (a timestamp column) cannot be combined with `min` or `max` (numeric columns)",
                );
            }
            if check.min.is_none() && check.max.is_none() && check.max_age.is_none() {
                issues.push(&at, "no limit: give `min`, `max` or `max_age`");
            }
            if let (Some(min), Some(max)) = (check.min, max)
                && min > max
            {
                issues.push(
                    &at,
                    format!("min {min} is greater than max {max}: no value could pass"),
                );
            }
            for (k, v) in [("min", check.min), ("max", max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    issues.push(join(&at, k), "must be a finite number");
                }
            }
            if let Some(a) = check.max_age {
                crate::settings::within(
                    a,
                    Duration::from_secs(1),
                    Duration::from_secs(366 * 24 * 3600),
                    &join(&at, "max_age"),
                    issues,
                );
            }
        }
    }
}

/// Probes of one target whose value families could collide: one probe's
/// name followed by `_` begins another's (`a` and `a_b`: `dbwarden_probe_a_b_c`
/// could be either). Reported at the longer name.
pub fn validate_names(probes: &BTreeMap<String, ProbeSettings>, path: &str, issues: &mut Issues) {
    for a in probes.keys() {
        for b in probes.keys() {
            if a != b && b.starts_with(&format!("{a}_")) {
                issues.push(
                    join(path, b),
                    format!(
                        "probe {b:?} begins with probe {a:?} and '_': their metric names (dbwarden_probe_<probe>_<column>) could collide; rename one"
                    ),
                );
            }
        }
    }
}
