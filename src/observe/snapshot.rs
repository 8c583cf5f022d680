//! The plain data one poll of a PostgreSQL target produces. Everything
//! downstream (checks, metrics, policies, the status API, `dbwarden check`)
//! reads these types and nothing else; they carry no connections or handles.
//!
//! Timestamps are microseconds since the Unix epoch *on the server's clock*,
//! next to [`PgSnapshot::server_now_us`], so ages never depend on the clock
//! of the machine dbwarden runs on.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One consistent picture of a PostgreSQL server, read in one read-only transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgSnapshot {
    /// The server's `now()` for this snapshot, microseconds since the epoch.
    pub server_now_us: i64,
    pub server: ServerInfo,
    pub sessions: Vec<Session>,
    /// Standbys streaming from this server (`pg_stat_replication`).
    pub standbys: Vec<Standby>,
    pub slots: Vec<ReplicationSlot>,
    /// Present when this server is in recovery.
    pub recovery: Option<RecoveryStatus>,
    pub databases: Vec<DatabaseStats>,
    pub archiver: Archiver,
    /// Invalid indexes in the connected database (`pg_index.indisvalid = false`).
    pub invalid_indexes: i64,
    pub disks: Vec<DiskUsage>,
    /// The latest performance statistics (read on their own cadence, see
    /// `[postgres.<name>.statistics]`); `None` when turned off or not read yet.
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version_num: i32,
    pub version: String,
    pub max_connections: i32,
    pub superuser_reserved_connections: i32,
    pub in_recovery: bool,
    pub data_checksums: bool,
    /// The database dbwarden is connected to.
    pub database: String,
    /// `pg_control_system().system_identifier`: the same on a primary and
    /// its physical standbys, so it pairs them (`None` when the role may
    /// not call the function).
    #[serde(default)]
    pub system_identifier: Option<u64>,
    /// A primary's `pg_current_wal_lsn()`, in bytes; `None` in recovery.
    #[serde(default)]
    pub wal_lsn: Option<u64>,
}

impl ServerInfo {
    /// Connection slots ordinary roles can use.
    pub fn usable_connections(&self) -> i32 {
        (self.max_connections - self.superuser_reserved_connections).max(1)
    }

    pub fn role(&self) -> Role {
        if self.in_recovery {
            Role::Standby
        } else {
            Role::Primary
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// The `state` column of `pg_stat_activity`, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Idle,
    IdleInTransaction,
    IdleInTransactionAborted,
    FastpathFunctionCall,
    Disabled,
    /// NULL state: background processes, or a session we may not see.
    Unknown,
}

impl SessionState {
    pub const ALL: [SessionState; 7] = [
        SessionState::Active,
        SessionState::Idle,
        SessionState::IdleInTransaction,
        SessionState::IdleInTransactionAborted,
        SessionState::FastpathFunctionCall,
        SessionState::Disabled,
        SessionState::Unknown,
    ];

    pub fn parse(s: Option<&str>) -> SessionState {
        match s {
            Some("active") => SessionState::Active,
            Some("idle") => SessionState::Idle,
            Some("idle in transaction") => SessionState::IdleInTransaction,
            Some("idle in transaction (aborted)") => SessionState::IdleInTransactionAborted,
            Some("fastpath function call") => SessionState::FastpathFunctionCall,
            Some("disabled") => SessionState::Disabled,
            _ => SessionState::Unknown,
        }
    }

    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Idle => "idle",
            SessionState::IdleInTransaction => "idle_in_transaction",
            SessionState::IdleInTransactionAborted => "idle_in_transaction_aborted",
            SessionState::FastpathFunctionCall => "fastpath_function_call",
            SessionState::Disabled => "disabled",
            SessionState::Unknown => "unknown",
        }
    }
}

/// One row of `pg_stat_activity`, with the facts checks and policies need.
/// Its texts are shared (`observe::intern`): sessions and polls repeat them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub pid: i32,
    /// `client backend`, `walsender`, `autovacuum worker`, ...
    pub backend_type: Arc<str>,
    pub state: SessionState,
    pub user: Option<Arc<str>>,
    pub database: Option<Arc<str>>,
    pub application_name: Arc<str>,
    pub client_addr: Option<Arc<str>>,
    pub backend_start_us: Option<i64>,
    pub xact_start_us: Option<i64>,
    pub query_start_us: Option<i64>,
    pub state_change_us: Option<i64>,
    pub wait_event_type: Option<Arc<str>>,
    /// Pids this session waits for (`pg_blocking_pids`), read only for lock waiters.
    pub blocked_by: Vec<i32>,
    /// When this session started waiting for a lock (`pg_locks.waitstart`).
    #[serde(default)]
    pub lock_wait_start_us: Option<i64>,
    /// The query text, truncated on the server.
    pub query: Arc<str>,
    pub is_superuser: bool,
    pub is_replication_role: bool,
    /// This is the session dbwarden polled with.
    pub is_self: bool,
}

impl Session {
    pub fn is_client_backend(&self) -> bool {
        &*self.backend_type == "client backend"
    }

    pub fn waits_on_lock(&self) -> bool {
        self.wait_event_type.as_deref() == Some("Lock")
    }
}

/// A standby as its primary sees it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standby {
    /// `application_name` of the walreceiver: the standby's name.
    pub name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    /// WAL bytes written on the primary and not yet replayed on the standby.
    pub replay_lag_bytes: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationSlot {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    /// WAL bytes the slot keeps from being removed.
    pub retained_bytes: Option<f64>,
    /// `wal_status` (13+): `reserved`, `extended`, `unreserved` or `lost`;
    /// `None` when the slot never reserved WAL.
    #[serde(default)]
    pub wal_status: Option<String>,
    /// `safe_wal_size` (13+): WAL bytes that can still be written before the
    /// slot is lost (negative when unreserved); `None` for a lost slot or
    /// when `max_slot_wal_keep_size` is -1 (no limit).
    #[serde(default)]
    pub safe_wal_bytes: Option<i64>,
}

impl ReplicationSlot {
    /// The slot's WAL is no longer (or may soon not be) kept: `unreserved` or `lost`.
    pub fn wal_lost_or_unreserved(&self) -> bool {
        matches!(self.wal_status.as_deref(), Some("unreserved" | "lost"))
    }
}

/// The values of `wal_status`, each exported (0 or 1) per slot.
pub const SLOT_WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// The standby side of replication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// `pg_stat_wal_receiver.status`; `None` when no WAL receiver runs.
    pub receiver_status: Option<String>,
    pub replay_paused: bool,
    /// Seconds behind the primary. 0 when everything received is replayed and
    /// the receiver streams (an idle primary is not lag); otherwise the age of
    /// the last replayed transaction, so a broken receiver cannot hide.
    pub replay_delay_seconds: Option<f64>,
    /// WAL received but not yet replayed.
    pub replay_pending_bytes: Option<f64>,
    /// `pg_last_wal_receive_lsn()`, in bytes (`None` before anything was streamed).
    #[serde(default)]
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()`, in bytes.
    #[serde(default)]
    pub replay_lsn: Option<u64>,
}

impl RecoveryStatus {
    pub fn is_streaming(&self) -> bool {
        self.receiver_status.as_deref() == Some("streaming")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStats {
    pub name: String,
    /// `None` before PostgreSQL 12, or when checksums are off.
    pub checksum_failures: Option<i64>,
    pub deadlocks: i64,
    /// `age(datfrozenxid)`: transactions since the oldest unfrozen XID.
    pub xid_age: i64,
    /// Read on a slower cadence; the latest known value.
    pub size_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Archiver {
    pub archive_mode: bool,
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_archived_age_seconds: Option<f64>,
    /// The last attempt failed: `last_failed_time` is newer than `last_archived_time`.
    pub failing: bool,
}

/// The built-in performance statistics of one read: cumulative counters as
/// the server reports them (since its last stats reset); rates are the
/// metrics' consumers' business.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// The server's clock when they were read, microseconds since the epoch.
    pub read_at_us: i64,
    /// `pg_stat_database`, one per database (the shared-objects row left out).
    pub databases: Vec<DatabaseActivity>,
    /// `pg_stat_wal` (14+).
    pub wal: Option<WalStats>,
    /// `pg_stat_checkpointer` (17+) or the checkpoint columns of `pg_stat_bgwriter`.
    pub checkpoints: Option<CheckpointStats>,
    /// `pg_stat_bgwriter`'s own columns.
    pub bgwriter: Option<BgwriterStats>,
    /// `pg_stat_statements`' top statements by total execution time, summed
    /// per `queryid` over users and databases; `None` when not asked for or
    /// not readable (then `errors` says why).
    pub statements: Option<Vec<StatementStats>>,
    /// The sources that could not be read, and why: the rest was read.
    pub errors: Vec<StatisticsError>,
    /// What the read found readable, which the observer keeps for the next
    /// reads (not data: never serialized).
    #[serde(skip)]
    pub availability: Option<super::statistics::Availability>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseActivity {
    pub name: String,
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub blks_read: i64,
    pub blks_hit: i64,
    pub temp_files: i64,
    pub temp_bytes: i64,
    pub conflicts: i64,
    /// The session columns (14+).
    pub sessions: Option<SessionTotals>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTotals {
    pub sessions: i64,
    pub session_time_ms: f64,
    pub active_time_ms: f64,
    pub idle_in_transaction_time_ms: f64,
    pub abandoned: i64,
    pub fatal: i64,
    pub killed: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalStats {
    pub records: i64,
    /// Full-page images.
    pub fpi: i64,
    pub bytes: f64,
    /// Times WAL was written because the WAL buffers were full.
    pub buffers_full: i64,
    /// `wal_write` and `wal_sync` (14 to 17; 18 moved them to `pg_stat_io`).
    pub writes: Option<i64>,
    pub syncs: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Scheduled by `checkpoint_timeout`.
    pub timed: i64,
    /// Requested (WAL volume, `CHECKPOINT`, shutdown, ...).
    pub requested: i64,
    pub write_time_ms: f64,
    pub sync_time_ms: f64,
    pub buffers_written: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgwriterStats {
    pub buffers_clean: i64,
    pub maxwritten_clean: i64,
    pub buffers_alloc: i64,
}

/// One statement of `pg_stat_statements`: its `queryid` and totals, never its text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementStats {
    pub queryid: i64,
    pub calls: i64,
    pub total_time_ms: f64,
    pub rows: i64,
    pub shared_blks_hit: i64,
    pub shared_blks_read: i64,
}

/// A statistics source that could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticsError {
    pub source: StatisticsSource,
    pub reason: StatisticsErrorReason,
    pub message: String,
}

/// Where statistics come from, as a closed set usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatisticsSource {
    Database,
    Wal,
    Checkpointer,
    Bgwriter,
    Statements,
}

impl StatisticsSource {
    pub const ALL: [StatisticsSource; 5] = [
        StatisticsSource::Database,
        StatisticsSource::Wal,
        StatisticsSource::Checkpointer,
        StatisticsSource::Bgwriter,
        StatisticsSource::Statements,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatisticsSource::Database => "database",
            StatisticsSource::Wal => "wal",
            StatisticsSource::Checkpointer => "checkpointer",
            StatisticsSource::Bgwriter => "bgwriter",
            StatisticsSource::Statements => "statements",
        }
    }
}

/// Why a statistics source could not be read, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatisticsErrorReason {
    /// The view this server version should have is not there.
    Missing,
    /// dbwarden's role may not read it.
    Permission,
    /// `pg_stat_statements` is not installed (`CREATE EXTENSION`) in the connected database.
    NotInstalled,
    /// `pg_stat_statements` is installed but not in `shared_preload_libraries`.
    NotLoaded,
    /// The statement hit `statement_timeout`.
    Timeout,
    /// An earlier statistics statement failed in the same transaction.
    Skipped,
    /// Any other refusal or unexpected answer.
    Query,
}

impl StatisticsErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StatisticsErrorReason::Missing => "missing",
            StatisticsErrorReason::Permission => "permission",
            StatisticsErrorReason::NotInstalled => "not_installed",
            StatisticsErrorReason::NotLoaded => "not_loaded",
            StatisticsErrorReason::Timeout => "timeout",
            StatisticsErrorReason::Skipped => "skipped",
            StatisticsErrorReason::Query => "query",
        }
    }
}

/// statvfs of one watched path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub volume: String,
    pub path: String,
    pub size_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail`).
    pub free_bytes: u64,
    /// Set when statvfs failed; the sizes are then 0.
    pub error: Option<String>,
}

impl DiskUsage {
    pub fn free_ratio(&self) -> Option<f64> {
        (self.error.is_none() && self.size_bytes > 0)
            .then(|| self.free_bytes as f64 / self.size_bytes as f64)
    }
}

/// Transaction IDs wrap around at 2^31.
pub const XID_WRAP: f64 = 2_147_483_648.0;

impl PgSnapshot {
    /// Seconds from `ts_us` to the snapshot's server time; never negative.
    pub fn age_seconds(&self, ts_us: Option<i64>) -> Option<f64> {
        ts_us.map(|t| ((self.server_now_us - t).max(0)) as f64 / 1e6)
    }

    /// Client connections counting against `max_connections` (since
    /// PostgreSQL 12, walsenders and background workers have slots of their own).
    pub fn connections_used(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.is_client_backend())
            .count()
    }
}
