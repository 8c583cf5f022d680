//! The pure evaluation core: a snapshot and thresholds in, check results out.
//!
//! Architecture invariant: nothing in this module does I/O, reads a clock or
//! can fail. Time comes in as arguments; the hold state (how long each
//! condition has held, for the `for` durations) comes in and goes out as a
//! value. The daemon, `dbwarden check` and the status API all call the same
//! [`evaluate`].

mod backups;
mod checks;
mod neo4j;
pub mod probes;
pub mod scope;
mod sessions;
mod summary;
mod thresholds;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use backups::{
    BACKUP_CHECKS, BackupThresholds, backup_limits, evaluate_backups, evaluate_backups_down,
    fmt_bytes,
};
pub use checks::{fmt_pct, fmt_secs, measure, standby_lag_seconds};
pub use neo4j::{
    Neo4jSummary, evaluate_neo4j, evaluate_neo4j_down, evaluate_neo4j_once, neo4j_limits,
    summarize_neo4j,
};
pub use scope::{Exclusion, NameSet, Scope};
pub use sessions::{SessionMeasurement, measure_sessions};
pub use summary::{PgSummary, summarize};
pub use thresholds::{CountRange, Exception, Limit, Neo4jThresholds, SessionCheck, Thresholds};

use crate::observe::PgSnapshot;

/// The runbook's checks for a PostgreSQL target. The label value of each is
/// its `snake_case` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    /// Quick Diagnosis: "Test connection". Validation: "Connection successful".
    Connection,
    /// Prevention: "Disk space < 30%".
    DiskFree,
    /// Prevention: "Connection pool > 80%"; the exhaustion scenario.
    ConnectionsUsed,
    /// Prevention: "Replication lag > 5 seconds".
    ReplicationLag,
    /// Validation: "Replication working (if applicable)".
    ReplicationStreaming,
    /// Replication slots that retain WAL fill the disk.
    ReplicationSlots,
    /// A replication slot whose WAL is `unreserved` or `lost` (past
    /// `max_slot_wal_keep_size`), or whose `safe_wal_size` is below a limit:
    /// its consumer is about to lose, or has lost, the WAL it needs.
    ReplicationSlotAtRisk,
    /// Prevention: "Long-running queries"; mitigation kills those over 5 minutes.
    LongRunningQuery,
    /// Mitigation: idle connections over 10 minutes.
    IdleSession,
    /// Sessions idle in a transaction hold locks and snapshots.
    IdleInTransaction,
    /// Crash/corruption: checksum failures.
    ChecksumFailures,
    /// Backups: WAL archiving failing.
    WalArchiving,
    /// Transaction-ID wraparound approaching.
    Wraparound,
    /// Validation: "Indexes functional".
    InvalidIndexes,
    // Neo4j checks.
    /// "Identify slow queries": a transaction running longer than 1000 ms.
    SlowQueries,
    /// "Check index status": every index ONLINE.
    IndexesOnline,
    /// Every database's current status is its requested status (4.4+).
    DatabasesOnline,
    /// "Check cluster status (if clustered)": every member healthy.
    ClusterHealthy,
    /// "Verify data": node counts within the configured expectation.
    NodeCount,
    /// Relationship counts within the configured expectation.
    RelationshipCount,
    // Backup checks, per `[backups.<name>]` location.
    /// The location can be listed.
    BackupStore,
    /// Recovery's "Get latest backup": the newest backup is younger than `max_age`.
    BackupFresh,
    /// The newest backup has at least `min_bytes` and did not shrink by more than `max_shrink`.
    BackupSize,
    /// Post-Recovery's "Verify backup integrity": the newest backup's first bytes are a dump.
    BackupIntegrity,
}

impl CheckId {
    pub const ALL: [CheckId; 14] = [
        CheckId::Connection,
        CheckId::DiskFree,
        CheckId::ConnectionsUsed,
        CheckId::ReplicationLag,
        CheckId::ReplicationStreaming,
        CheckId::ReplicationSlots,
        CheckId::ReplicationSlotAtRisk,
        CheckId::LongRunningQuery,
        CheckId::IdleSession,
        CheckId::IdleInTransaction,
        CheckId::ChecksumFailures,
        CheckId::WalArchiving,
        CheckId::Wraparound,
        CheckId::InvalidIndexes,
    ];

    /// The checks of a Neo4j target.
    pub const NEO4J: [CheckId; 7] = [
        CheckId::Connection,
        CheckId::SlowQueries,
        CheckId::IndexesOnline,
        CheckId::DatabasesOnline,
        CheckId::ClusterHealthy,
        CheckId::NodeCount,
        CheckId::RelationshipCount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::Connection => "connection",
            CheckId::DiskFree => "disk_free",
            CheckId::ConnectionsUsed => "connections_used",
            CheckId::ReplicationLag => "replication_lag",
            CheckId::ReplicationStreaming => "replication_streaming",
            CheckId::ReplicationSlots => "replication_slots",
            CheckId::ReplicationSlotAtRisk => "replication_slot_at_risk",
            CheckId::LongRunningQuery => "long_running_query",
            CheckId::IdleSession => "idle_session",
            CheckId::IdleInTransaction => "idle_in_transaction",
            CheckId::ChecksumFailures => "checksum_failures",
            CheckId::WalArchiving => "wal_archiving",
            CheckId::Wraparound => "wraparound",
            CheckId::InvalidIndexes => "invalid_indexes",
            CheckId::SlowQueries => "slow_queries",
            CheckId::IndexesOnline => "indexes_online",
            CheckId::DatabasesOnline => "databases_online",
            CheckId::ClusterHealthy => "cluster_healthy",
            CheckId::NodeCount => "node_count",
            CheckId::RelationshipCount => "relationship_count",
            CheckId::BackupStore => "backup_store",
            CheckId::BackupFresh => "backup_fresh",
            CheckId::BackupSize => "backup_size",
            CheckId::BackupIntegrity => "backup_integrity",
        }
    }

    /// What the measured value and threshold mean, for people.
    pub fn description(self) -> &'static str {
        match self {
            CheckId::Connection => "connection successful (1 = up)",
            CheckId::DiskFree => "lowest free ratio of the watched volumes",
            CheckId::ConnectionsUsed => {
                "client connections / (max_connections - superuser_reserved_connections)"
            }
            CheckId::ReplicationLag => {
                "replication lag in seconds (worst standby, or this standby's replay delay)"
            }
            CheckId::ReplicationStreaming => {
                "standbys streaming (primary) or WAL receiver streaming (standby)"
            }
            CheckId::ReplicationSlots => "WAL bytes retained by the worst replication slot",
            CheckId::ReplicationSlotAtRisk => {
                "replication slots whose WAL is unreserved or lost, or whose safe_wal_size is below the threshold (min_safe_wal_bytes)"
            }
            CheckId::LongRunningQuery => "seconds the longest active query has run",
            CheckId::IdleSession => "seconds the longest idle session has been idle",
            CheckId::IdleInTransaction => {
                "seconds the longest idle-in-transaction session has been idle"
            }
            CheckId::ChecksumFailures => "data checksum failures counted since the stats reset",
            CheckId::WalArchiving => "1 when the last WAL archive attempt failed",
            CheckId::Wraparound => "oldest transaction-ID age as a ratio of 2^31",
            CheckId::InvalidIndexes => "invalid indexes in the connected database",
            CheckId::SlowQueries => "seconds the longest transaction has run",
            CheckId::IndexesOnline => "indexes not ONLINE in the configured databases",
            CheckId::DatabasesOnline => "databases whose current status is not the requested one",
            CheckId::ClusterHealthy => "cluster members that are not healthy",
            CheckId::NodeCount => "nodes in the configured database outside the expected range",
            CheckId::RelationshipCount => {
                "relationships in the configured database outside the expected range"
            }
            CheckId::BackupStore => "1 when the backup location can be listed",
            CheckId::BackupFresh => "seconds since the newest backup was written",
            CheckId::BackupSize => "bytes of the newest backup",
            CheckId::BackupIntegrity => {
                "1 when the newest backup's first bytes are a recognised dump"
            }
        }
    }

    fn limit(self, t: &Thresholds) -> Limit {
        match self {
            CheckId::Connection => Limit {
                value: 1.0,
                hold: Duration::ZERO,
            },
            CheckId::DiskFree => t.disk_free,
            CheckId::ConnectionsUsed => t.connections_used,
            CheckId::ReplicationLag => t.replication_lag,
            CheckId::ReplicationStreaming => t.replication_streaming,
            CheckId::ReplicationSlots => t.replication_slot_retained_wal,
            // The value is a count of slots: min_safe_wal_bytes is what
            // makes a slot count (a slot at risk fails the check).
            CheckId::ReplicationSlotAtRisk => t.replication_slot_at_risk,
            CheckId::LongRunningQuery => t.long_running_query.limit(),
            CheckId::IdleSession => t.idle_session.limit(),
            CheckId::IdleInTransaction => t.idle_in_transaction.limit(),
            CheckId::ChecksumFailures => t.checksum_failures,
            CheckId::WalArchiving => t.wal_archiving,
            CheckId::Wraparound => t.wraparound,
            CheckId::InvalidIndexes => t.invalid_indexes,
            // Not PostgreSQL checks: never evaluated on a PostgreSQL target.
            CheckId::SlowQueries
            | CheckId::IndexesOnline
            | CheckId::DatabasesOnline
            | CheckId::ClusterHealthy
            | CheckId::NodeCount
            | CheckId::RelationshipCount
            | CheckId::BackupStore
            | CheckId::BackupFresh
            | CheckId::BackupSize
            | CheckId::BackupIntegrity => Limit {
                value: 0.0,
                hold: Duration::ZERO,
            },
        }
    }
}

/// A check by the name a policy's `only_while_failing` gives it: a built-in
/// check, or one of the target's probe checks (`probe:<probe>` or
/// `probe:<probe>:<column>`, as `evaluate::probes` names them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckName {
    Builtin(CheckId),
    /// The whole name, `probe:` included.
    Probe(String),
}

impl CheckName {
    pub fn as_str(&self) -> &str {
        match self {
            CheckName::Builtin(c) => c.as_str(),
            CheckName::Probe(p) => p,
        }
    }
}

impl From<CheckId> for CheckName {
    fn from(c: CheckId) -> Self {
        CheckName::Builtin(c)
    }
}

impl std::fmt::Display for CheckName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IntoDeserializer;
        let s = String::deserialize(d)?;
        if s.starts_with("probe:") {
            return Ok(CheckName::Probe(s));
        }
        let id: Result<CheckId, serde::de::value::Error> =
            CheckId::deserialize(s.as_str().into_deserializer());
        id.map(CheckName::Builtin).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a check: expected a check of the target's kind ({}), or a probe's check, \"probe:<probe>[:<column>]\"",
                CheckId::ALL
                    .iter()
                    .chain(&CheckId::NEO4J)
                    .map(|c| c.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// Where a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    /// The condition holds but not yet for the check's `for` duration.
    Pending,
    Fail,
    /// No fresh observation to judge by (the target is down).
    Unknown,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Pending => "pending",
            CheckStatus::Fail => "fail",
            CheckStatus::Unknown => "unknown",
        }
    }
}

/// The result of one check on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: CheckId,
    pub status: CheckStatus,
    /// The measured value, in the check's base unit; `None` when unknown.
    pub value: Option<f64>,
    pub threshold: f64,
    /// How long the condition must hold before the check fails, in seconds.
    pub for_seconds: f64,
    /// Seconds the condition has held so far (0 when it does not hold).
    pub held_seconds: f64,
    /// A sentence for people: what was measured, against what.
    pub detail: String,
    /// For a check over sessions whose scope sets a list: the sessions it
    /// left out, by the key that did (every key the scope sets, 0 included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<BTreeMap<Exclusion, u64>>,
}

/// A check's condition before hold times apply: what [`measure`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub value: f64,
    /// The condition is violated right now.
    pub violated: bool,
    pub detail: String,
}

/// Since when (milliseconds on the caller's clock) each check's condition has
/// held. Carried from one evaluation to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldState(BTreeMap<CheckId, u64>);

impl HoldState {
    /// After new thresholds (a reload): a check whose limit changed starts
    /// its hold over; the others keep holding since when they did.
    pub fn keep_unchanged(&mut self, before: &[(CheckId, Limit)], after: &[(CheckId, Limit)]) {
        self.0.retain(|check, _| {
            let limit =
                |ls: &[(CheckId, Limit)]| ls.iter().find(|(c, _)| c == check).map(|(_, l)| *l);
            limit(before) == limit(after)
        });
    }

    /// After new thresholds (a reload): these checks start their hold over.
    pub fn restart(&mut self, checks: &[CheckId]) {
        self.0.retain(|check, _| !checks.contains(check));
    }

    /// The checks holding, and since when.
    pub fn since(&self, check: CheckId) -> Option<u64> {
        self.0.get(&check).copied()
    }
}

/// Every PostgreSQL check's limit.
pub fn limits(t: &Thresholds) -> Vec<(CheckId, Limit)> {
    CheckId::ALL.iter().map(|c| (*c, c.limit(t))).collect()
}

/// The checks over sessions whose lists or exceptions differ between two
/// sets of thresholds: they judge other sessions now, so a reload restarts
/// their hold as it does for a changed limit.
pub fn rescoped(before: &Thresholds, after: &Thresholds) -> Vec<CheckId> {
    let scope = |c: &SessionCheck| {
        let mut c = c.clone();
        c.max = std::time::Duration::ZERO;
        c.hold = std::time::Duration::ZERO;
        c
    };
    [
        CheckId::LongRunningQuery,
        CheckId::IdleSession,
        CheckId::IdleInTransaction,
    ]
    .into_iter()
    .zip(
        before
            .session_checks()
            .into_iter()
            .zip(after.session_checks()),
    )
    .filter(|(_, ((_, a), (_, b)))| scope(a) != scope(b))
    .map(|(check, _)| check)
    .collect()
}

/// Evaluates every check on a fresh snapshot.
///
/// `now_ms` is the caller's monotonic clock in milliseconds; `hold` is the
/// state returned by the previous evaluation of the same target.
pub fn evaluate(
    snapshot: &PgSnapshot,
    thresholds: &Thresholds,
    hold: &HoldState,
    now_ms: u64,
) -> (Vec<CheckResult>, HoldState) {
    let mut next = HoldState::default();
    let results = CheckId::ALL
        .iter()
        .map(|&check| {
            let mut limit = check.limit(thresholds);
            match measure_sessions(check, snapshot, thresholds) {
                // A check over sessions: judged against the limit of the
                // session nearest its own (an exception's, perhaps).
                Some(sm) => {
                    limit.value = sm.threshold;
                    let mut r = judge(check, sm.measurement, limit, hold, &mut next, now_ms);
                    r.excluded = sm.excluded;
                    r
                }
                None => {
                    let m = measure(check, snapshot, thresholds);
                    judge(check, m, limit, hold, &mut next, now_ms)
                }
            }
        })
        .collect();
    (results, next)
}

/// Applies the hold time to a measurement: pending until the condition has
/// held for `limit.hold`, then failing.
fn judge(
    check: CheckId,
    m: Measurement,
    limit: Limit,
    hold: &HoldState,
    next: &mut HoldState,
    now_ms: u64,
) -> CheckResult {
    let (status, held) = if m.violated {
        let since = hold.0.get(&check).copied().unwrap_or(now_ms).min(now_ms);
        next.0.insert(check, since);
        let held = Duration::from_millis(now_ms - since);
        (
            if held >= limit.hold {
                CheckStatus::Fail
            } else {
                CheckStatus::Pending
            },
            held,
        )
    } else {
        (CheckStatus::Pass, Duration::ZERO)
    };
    CheckResult {
        check,
        status,
        value: Some(m.value),
        threshold: limit.value,
        for_seconds: limit.hold.as_secs_f64(),
        held_seconds: held.as_secs_f64(),
        detail: m.detail,
        excluded: None,
    }
}

/// The results for a target whose poll failed: the connection check fails at
/// once (no hold: the target is down), every other check is unknown, and the
/// hold state is kept so a short outage does not restart the other holds.
pub fn evaluate_down(thresholds: &Thresholds, error: &str) -> Vec<CheckResult> {
    down(&CheckId::ALL, |c| c.limit(thresholds), error)
}

fn down(checks: &[CheckId], limit: impl Fn(CheckId) -> Limit, error: &str) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|&check| {
            let limit = limit(check);
            let (status, value, detail) = if check == CheckId::Connection {
                (
                    CheckStatus::Fail,
                    Some(0.0),
                    format!("cannot poll: {error}"),
                )
            } else {
                (
                    CheckStatus::Unknown,
                    None,
                    "no fresh observation: the target is down".to_string(),
                )
            };
            CheckResult {
                check,
                status,
                value,
                threshold: limit.value,
                for_seconds: limit.hold.as_secs_f64(),
                held_seconds: 0.0,
                detail,
                excluded: None,
            }
        })
        .collect()
}

/// Evaluation for a single observation (`dbwarden check`): hold times do not
/// apply, since there is no history; a violated condition fails.
pub fn evaluate_once(snapshot: &PgSnapshot, thresholds: &Thresholds) -> Vec<CheckResult> {
    let mut t = thresholds.clone();
    for l in [
        &mut t.disk_free,
        &mut t.connections_used,
        &mut t.replication_lag,
        &mut t.replication_streaming,
        &mut t.replication_slot_retained_wal,
        &mut t.replication_slot_at_risk,
        &mut t.wraparound,
        &mut t.checksum_failures,
        &mut t.wal_archiving,
        &mut t.invalid_indexes,
    ] {
        l.hold = Duration::ZERO;
    }
    for c in [
        &mut t.long_running_query,
        &mut t.idle_session,
        &mut t.idle_in_transaction,
    ] {
        c.hold = Duration::ZERO;
    }
    let mut results = evaluate(snapshot, &t, &HoldState::default(), 0).0;
    // Report the configured hold all the same, so the output shows the config.
    for r in &mut results {
        r.for_seconds = r.check.limit(thresholds).hold.as_secs_f64();
    }
    results
}

#[cfg(test)]
mod tests;
