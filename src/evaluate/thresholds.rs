//! The runbook's thresholds: what each check compares against, and how long
//! its condition must hold (`for`) before it fails.
//!
//! Written in `[thresholds.<check>]` for every target and in
//! `[<kind>.<name>.thresholds.<check>]` for one. The loader merges a
//! target's tables field by field over the global ones and over these
//! defaults, so every target holds a complete set. In the file each check
//! names its limit in its own words and unit (`min_ratio = 0.3`,
//! `max = "5m"`, `max_bytes = 1073741824`); here every limit is a [`Limit`]
//! in base units, which is what the checks compare.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::scope::with_scope;
use crate::settings::{Context, Issues, duration, join, valid_name};

/// One limit in base units (ratio 0..1, seconds, bytes, count), and how long
/// the condition must hold before the check fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub hold: Duration,
}

/// The PostgreSQL checks' limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Fails when a watched volume's free ratio drops below this.
    #[serde(with = "min_ratio")]
    pub disk_free: Limit,
    /// Fails when connections used exceed this ratio of the usable slots.
    #[serde(with = "max_ratio")]
    pub connections_used: Limit,
    /// Fails when replication lag exceeds this many seconds.
    #[serde(with = "max_duration")]
    pub replication_lag: Limit,
    /// Fails when fewer standbys stream than this (primary), or the WAL
    /// receiver is not streaming (standby).
    #[serde(with = "min_standbys")]
    pub replication_streaming: Limit,
    /// Fails when a replication slot retains more WAL bytes than this, or is inactive.
    #[serde(with = "max_bytes")]
    pub replication_slot_retained_wal: Limit,
    /// Fails when a replication slot's `wal_status` is `unreserved` or
    /// `lost`, or its `safe_wal_size` is below `min_safe_wal_bytes`.
    #[serde(default = "default_slot_at_risk", with = "min_safe_wal_bytes")]
    pub replication_slot_at_risk: Limit,
    /// Fails when an active query has run longer than this many seconds.
    pub long_running_query: SessionCheck,
    /// Fails when a session has been idle longer than this many seconds.
    pub idle_session: SessionCheck,
    /// Fails when a session has been idle in transaction longer than this many seconds.
    pub idle_in_transaction: SessionCheck,
    /// Fails when the oldest database's transaction-ID age exceeds this ratio of 2^31.
    #[serde(with = "max_ratio")]
    pub wraparound: Limit,
    /// Fails when any data checksum failure has been counted.
    #[serde(with = "hold_only")]
    pub checksum_failures: Limit,
    /// Fails when the last WAL archive attempt failed.
    #[serde(with = "hold_only")]
    pub wal_archiving: Limit,
    /// Fails when the connected database has invalid indexes.
    #[serde(with = "hold_only")]
    pub invalid_indexes: Limit,
}

fn limit(value: f64, hold_secs: u64) -> Limit {
    Limit {
        value,
        hold: Duration::from_secs(hold_secs),
    }
}

impl Default for Thresholds {
    /// The runbook's numbers.
    fn default() -> Self {
        Thresholds {
            disk_free: limit(0.30, 300),
            connections_used: limit(0.80, 60),
            replication_lag: limit(5.0, 60),
            replication_streaming: limit(0.0, 60),
            replication_slot_retained_wal: limit(1024.0 * 1024.0 * 1024.0, 300),
            replication_slot_at_risk: default_slot_at_risk(),
            long_running_query: SessionCheck::new(Duration::from_secs(300), Duration::ZERO),
            idle_session: SessionCheck::new(Duration::from_secs(600), Duration::ZERO),
            idle_in_transaction: SessionCheck::new(Duration::from_secs(300), Duration::ZERO),
            wraparound: limit(0.50, 0),
            checksum_failures: limit(0.0, 0),
            wal_archiving: limit(0.0, 0),
            invalid_indexes: limit(0.0, 0),
        }
    }
}

/// No byte limit (a slot counts once its WAL is `unreserved` or `lost`: a
/// useful `min_safe_wal_bytes` depends on the server's
/// `max_slot_wal_keep_size`), and no hold: a lost slot does not come back.
fn default_slot_at_risk() -> Limit {
    limit(0.0, 0)
}

impl Thresholds {
    /// The limits that serde cannot refuse alone. `path` is the table's
    /// (`thresholds` or `postgres.<name>.thresholds`); a mistake in a value
    /// the table inherited is reported where it was written.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        positive(
            &self.replication_lag,
            &join(&join(path, "replication_lag"), "max"),
            "",
            ctx,
            issues,
        );
        for (check, c) in self.session_checks() {
            c.validate(&join(path, check), ctx, issues);
        }
    }

    /// The checks over sessions, which take a scope and exceptions, by name.
    pub fn session_checks(&self) -> [(&'static str, &SessionCheck); 3] {
        [
            ("long_running_query", &self.long_running_query),
            ("idle_session", &self.idle_session),
            ("idle_in_transaction", &self.idle_in_transaction),
        ]
    }
}

with_scope! {
/// A check over sessions (`long_running_query`, `idle_session`,
/// `idle_in_transaction`): its limit and `for`, the sessions it considers
/// (the scope's lists, as a policy's), and named exceptions, each with its
/// own sessions and limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCheck {
    /// Fails when a session in scope exceeds this (its exception's, if one takes it).
    #[serde(with = "duration")]
    pub max: Duration,
    #[serde(rename = "for", with = "duration")]
    pub hold: Duration,
    /// By name; applied most specific first ([`SessionCheck::exception_for`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exceptions: BTreeMap<String, Exception>,
}
}

with_scope! {
/// `[thresholds.<check>.exceptions.<name>]`: the sessions its `match_*`
/// lists name (minus those its `ignore_*` lists name) are judged against
/// its `max` instead of the check's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    #[serde(with = "duration")]
    pub max: Duration,
}
}

impl SessionCheck {
    /// A check over every session, with this limit.
    pub fn new(max: Duration, hold: Duration) -> Self {
        SessionCheck {
            max,
            hold,
            exceptions: BTreeMap::new(),
            match_users: Vec::new(),
            ignore_users: Vec::new(),
            match_databases: Vec::new(),
            ignore_databases: Vec::new(),
            match_applications: Default::default(),
            ignore_applications: Default::default(),
            match_client_addrs: Vec::new(),
            ignore_client_addrs: Vec::new(),
            match_query: None,
            ignore_query: None,
        }
    }

    /// The check's own limit, as the other checks have theirs.
    pub fn limit(&self) -> Limit {
        Limit {
            value: self.max.as_secs_f64(),
            hold: self.hold,
        }
    }

    /// Sets the check's own limit (seconds).
    pub fn set_limit(&mut self, l: Limit) {
        self.max = secs(l.value);
        self.hold = l.hold;
    }

    /// The exceptions, most specific first: more `match_*` lists set
    /// first; among as many, the lower `max` (an overlap never loosens a
    /// limit by accident); then by name.
    pub fn exceptions_in_order(&self) -> Vec<(&str, &Exception)> {
        let mut out: Vec<(&str, &Exception)> = self
            .exceptions
            .iter()
            .map(|(n, e)| (n.as_str(), e))
            .collect();
        out.sort_by(|(an, a), (bn, b)| {
            b.scope()
                .match_lists()
                .cmp(&a.scope().match_lists())
                .then(a.max.cmp(&b.max))
                .then(an.cmp(bn))
        });
        out
    }

    /// `path` is the check's table (`thresholds.long_running_query`, or a
    /// target's); a mistake in an inherited value is reported where it was
    /// written.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        positive(&self.limit(), &join(path, "max"), "", ctx, issues);
        for (name, e) in &self.exceptions {
            let here = join(&join(path, "exceptions"), name);
            // An exception a target inherited is reported where it was written.
            let at = ctx
                .written_at(&join(&here, "max"))
                .and_then(|m| m.strip_suffix(".max").map(str::to_string))
                .unwrap_or(here);
            let written = |k: &str| join(&at, k);
            if !valid_name(name) {
                issues.push(
                    &at,
                    format!(
                        "invalid exception name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"
                    ),
                );
            }
            if e.max.is_zero() {
                issues.push(
                    written("max"),
                    "\"0s\" would fail all the time: use a positive duration",
                );
            }
            if e.scope().match_lists() == 0 && !ctx.rejected_under(&at) {
                issues.push(
                    &at,
                    "no match_ list: an exception names the sessions it applies to with match_users, match_databases, match_applications, match_client_addrs or match_query (to change the limit of every session, change the check's max)",
                );
            }
        }
    }
}

/// A duration limit of zero would fail all the time.
fn positive(l: &Limit, at: &str, hint: &str, ctx: &Context, issues: &mut Issues) {
    if l.value <= 0.0
        && let Some(at) = ctx.written_at(at)
    {
        issues.push(
            at,
            format!("\"0s\" would fail all the time: use a positive duration{hint}"),
        );
    }
}

/// The Neo4j checks' limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jThresholds {
    /// Fails when a transaction has run longer than this many seconds (the
    /// runbook's slow-query threshold, 1000 ms).
    #[serde(with = "max_duration")]
    pub slow_queries: Limit,
    /// Fails when an index is not ONLINE (POPULATING or FAILED).
    #[serde(with = "hold_only")]
    pub indexes_online: Limit,
    /// Fails when a database's current status is not its requested status (4.4+).
    #[serde(with = "hold_only")]
    pub databases_online: Limit,
    /// Fails when a cluster member is unhealthy (clustered deployments).
    #[serde(with = "hold_only")]
    pub cluster_healthy: Limit,
    /// Fails when a configured database's node count leaves its expected range.
    pub node_count: CountRange,
    /// Fails when a configured database's relationship count leaves its expected range.
    pub relationship_count: CountRange,
}

/// An expected range of a count; no bound set: always within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRange {
    pub min: Option<u64>,
    pub max: Option<u64>,
    #[serde(rename = "for", with = "duration")]
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
        Neo4jThresholds {
            slow_queries: limit(1.0, 0),
            indexes_online: limit(0.0, 300),
            databases_online: limit(0.0, 60),
            cluster_healthy: limit(0.0, 60),
            node_count: CountRange::default(),
            relationship_count: CountRange::default(),
        }
    }
}

impl Neo4jThresholds {
    /// Like [`Thresholds::validate`].
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        positive(
            &self.slow_queries,
            &join(&join(path, "slow_queries"), "max"),
            " (the runbook's is \"1s\")",
            ctx,
            issues,
        );
        for (check, range) in [
            ("node_count", &self.node_count),
            ("relationship_count", &self.relationship_count),
        ] {
            if let (Some(min), Some(max)) = (range.min, range.max)
                && min > max
            {
                issues.push(
                    join(path, check),
                    format!("min {min} is greater than max {max}: no count could pass"),
                );
            }
        }
    }
}

/// Each check's table as written: its limit under a key of its own, in its
/// own unit, and `for`. Each module reads and writes one such table as a [`Limit`].
macro_rules! limit_table {
    ($module:ident, $key:ident: $ty:ty, $doc:literal, to_value: $to:expr, from_value: $from:expr $(, with = $with:literal)?) => {
        #[doc = $doc]
        mod $module {
            use super::*;

            #[derive(Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Table {
                $(#[serde(with = $with)])?
                $key: $ty,
                #[serde(rename = "for", with = "duration")]
                hold: Duration,
            }

            pub fn serialize<S: serde::Serializer>(l: &Limit, s: S) -> Result<S::Ok, S::Error> {
                let from: fn(f64) -> $ty = $from;
                Table { $key: from(l.value), hold: l.hold }.serialize(s)
            }

            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
                let t = Table::deserialize(d)?;
                let to: fn($ty) -> f64 = $to;
                Ok(Limit { value: to(t.$key), hold: t.hold })
            }
        }
    };
}

limit_table!(min_ratio, min_ratio: f64, "`{min_ratio, for}`: a ratio from 0 to 1.",
    to_value: |v| v, from_value: |v| v, with = "crate::settings::ratio");
limit_table!(max_ratio, max_ratio: f64, "`{max_ratio, for}`: a ratio from 0 to 1.",
    to_value: |v| v, from_value: |v| v, with = "crate::settings::ratio");
limit_table!(max_duration, max: Duration, "`{max, for}`: a duration, in seconds here.",
    to_value: |d| d.as_secs_f64(), from_value: secs, with = "duration");
limit_table!(max_bytes, max_bytes: u64, "`{max_bytes, for}`: bytes.",
    to_value: |v| v as f64, from_value: |v| v as u64);
limit_table!(min_safe_wal_bytes, min_safe_wal_bytes: u64, "`{min_safe_wal_bytes, for}`: bytes.",
    to_value: |v| v as f64, from_value: |v| v as u64);
limit_table!(min_standbys, min_standbys: u32, "`{min_standbys, for}`: a count of standbys.",
    to_value: f64::from, from_value: |v| v as u32);

/// `{for}`: a check whose limit is fixed (any failure, any invalid index).
mod hold_only {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        #[serde(rename = "for", with = "duration")]
        hold: Duration,
    }

    pub fn serialize<S: serde::Serializer>(l: &Limit, s: S) -> Result<S::Ok, S::Error> {
        Table { hold: l.hold }.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        let t = Table::deserialize(d)?;
        Ok(Limit {
            value: 0.0,
            hold: t.hold,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_runbooks_and_print_in_the_files_words() {
        let t = Thresholds::default();
        assert_eq!(t.disk_free.value, 0.30);
        assert_eq!(t.connections_used.value, 0.80);
        assert_eq!(t.replication_lag.value, 5.0);
        assert_eq!(t.long_running_query.limit().value, 5.0 * 60.0);
        assert_eq!(t.idle_session.limit().value, 10.0 * 60.0);
        let printed = toml::to_string(&t).unwrap();
        for needle in [
            "[disk_free]\nmin_ratio = 0.3\nfor = \"5m\"\n",
            "[replication_lag]\nmax = \"5s\"\nfor = \"1m\"\n",
            "[replication_slot_retained_wal]\nmax_bytes = 1073741824\n",
            "[invalid_indexes]\nfor = \"0s\"\n",
        ] {
            assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
        }
        let back: Thresholds = toml::from_str(&printed).unwrap();
        assert_eq!(back, t);
        let n = Neo4jThresholds::default();
        assert_eq!(n.slow_queries.value, 1.0);
        let back: Neo4jThresholds = toml::from_str(&toml::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn durations_round_trip_to_the_nanosecond() {
        for s in ["1h 30m", "250ms", "1day", "1ns"] {
            let d = humantime::parse_duration(s).unwrap();
            assert_eq!(secs(d.as_secs_f64()), d, "{s}");
        }
    }

    #[test]
    fn count_ranges() {
        let r = CountRange {
            min: Some(10),
            max: Some(20),
            hold: Duration::ZERO,
        };
        assert!(!r.contains(9) && r.contains(10) && r.contains(20) && !r.contains(21));
        assert!(CountRange::default().contains(0));
    }
}
