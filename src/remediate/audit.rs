//! The audit trail: one JSON line per decision, appended to a file and
//! flushed to disk before the action it announces.
//!
//! Invariant: no signal is sent unless its intent record was written and
//! `fsync`ed first. If the audit cannot be written, dbwarden does not act.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::policy::Candidate;
use crate::observe::SessionState;

/// How many recent records `GET /api/v1/actions` can show.
pub const RECENT_CAPACITY: usize = 1000;

/// The mode remediation runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Evaluate and export candidates; no audit, no signal.
    Observe,
    /// Also log and audit what would be done; no signal.
    DryRun,
    /// Act.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Dry-run: this signal would have been sent.
    WouldAct,
    /// Enforce: about to send the signal (written and flushed before it).
    Intent,
    /// The signal was sent.
    Acted,
    /// The session changed or ended between the poll and the signal: nothing sent.
    Skipped,
    /// The server refused the signal (e.g. a superuser's session, without superuser rights).
    Refused,
    /// The signal could not be sent (connection error, ...).
    Failed,
    /// The budget was exhausted: nothing sent.
    BudgetExhausted,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::WouldAct => "would_act",
            Decision::Intent => "intent",
            Decision::Acted => "acted",
            Decision::Skipped => "skipped",
            Decision::Refused => "refused",
            Decision::Failed => "failed",
            Decision::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// The session as the decision saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSession {
    pub pid: i32,
    pub backend_start_us: Option<i64>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: SessionState,
    pub idle_seconds: Option<f64>,
    pub query_seconds: Option<f64>,
    pub transaction_seconds: Option<f64>,
    pub connected_seconds: Option<f64>,
    /// The server timestamps the decision rested on (µs since the epoch):
    /// with `time_ms` they tell how long after crossing its threshold the
    /// session was acted on.
    #[serde(default)]
    pub state_change_us: Option<i64>,
    #[serde(default)]
    pub query_start_us: Option<i64>,
    #[serde(default)]
    pub xact_start_us: Option<i64>,
    pub query: String,
}

/// One line of the audit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 time of the record.
    pub time: String,
    /// The same time in milliseconds since the epoch (budgets are rebuilt from it).
    pub time_ms: u64,
    /// Ties an intent to its outcome.
    pub action_id: String,
    pub instance: String,
    pub target: String,
    pub policy: String,
    pub mode: Mode,
    /// `cancel` or `terminate`: the signal this record is about.
    pub action: String,
    pub decision: Decision,
    /// Why the session was selected.
    pub reason: String,
    /// What happened, in a sentence.
    pub outcome: String,
    /// The PostgreSQL session acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<AuditSession>,
    /// The Neo4j transaction acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<AuditTransaction>,
    /// The Kubernetes pod evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<AuditPod>,
    /// The Neo4j index rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<AuditIndex>,
}

/// The Neo4j index as the rebuild decision saw it, and the exact
/// statements the rebuild runs (in the intent, before they run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditIndex {
    pub database: String,
    pub name: String,
    pub state: String,
    /// The first line of the server's failure message.
    pub failure_message: Option<String>,
    pub owning_constraint: Option<String>,
    /// How long dbwarden had seen it FAILED.
    pub failed_for_ms: u64,
    /// `DROP INDEX `name`` (or `DROP CONSTRAINT `name``); `None` when refused.
    pub drop_statement: Option<String>,
    /// The server's `createStatement`, verbatim; `None` when refused.
    pub create_statement: Option<String>,
}

/// The Kubernetes pod as the eviction decision saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPod {
    pub namespace: String,
    pub name: String,
    /// The eviction's precondition: a pod replaced in between is not touched.
    pub uid: String,
    pub statefulset: Option<String>,
    pub node: Option<String>,
    /// When the pod became not ready (ms since the epoch), the moment the re-check compares.
    pub not_ready_since_ms: u64,
    pub not_ready_for_ms: u64,
    /// Lag routing: the readiness gate condition set on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<AuditCondition>,
    /// A standby rebuilt: the stalled replay that justified the eviction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_stall: Option<AuditReplayStall>,
}

/// The figures of a stalled replay (`kubernetes::rebuild`), LSNs written
/// as PostgreSQL writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReplayStall {
    /// The replay position that did not move.
    pub replay_lsn: String,
    /// Since when (ms since the epoch) it did not move with WAL to replay.
    pub unchanged_since_ms: u64,
    pub stalled_for_ms: u64,
    /// `primary (target <name>)` or `received WAL`.
    pub upstream: String,
    pub upstream_lsn_then: String,
    pub upstream_lsn_now: String,
    /// How far the upstream advanced over the stall.
    pub advanced_bytes: u64,
    /// Upstream now minus replay.
    pub lag_bytes: u64,
    /// The standby's replay delay, seconds.
    pub lag_seconds: Option<f64>,
}

/// The pod condition a lag routing decision sets (`kubernetes::lag_routing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// The value set: `true` puts the pod back into its Service.
    pub status: bool,
    /// The value before (`None`: the pod did not carry the condition).
    pub before: Option<bool>,
    /// The standby's replication lag that justified it, in seconds.
    pub lag_seconds: Option<f64>,
}

/// The Neo4j transaction as the decision saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditTransaction {
    /// `neo4j-transaction-42` (4.4+) or the query id before 4.4.
    pub id: String,
    pub database: String,
    pub username: String,
    pub status: String,
    pub elapsed_ms: i64,
    /// Shortened (and redacted when configured) like a session's.
    pub query: String,
}

impl AuditRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: SystemTime,
        action_id: &str,
        instance: &str,
        target: &str,
        mode: Mode,
        action: &str,
        decision: Decision,
        candidate: &Candidate,
        outcome: impl Into<String>,
        query_max_chars: usize,
        redact: bool,
    ) -> Self {
        let f = &candidate.facts;
        let query = shorten(&f.query, query_max_chars, redact);
        AuditRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            time_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            action_id: action_id.to_string(),
            instance: instance.to_string(),
            target: target.to_string(),
            policy: candidate.policy.clone(),
            mode,
            action: action.to_string(),
            decision,
            reason: candidate.reason.clone(),
            outcome: outcome.into(),
            transaction: None,
            pod: None,
            index: None,
            session: Some(AuditSession {
                pid: f.pid,
                backend_start_us: f.backend_start_us,
                user: f.user.as_deref().map(str::to_string),
                database: f.database.as_deref().map(str::to_string),
                application_name: f.application_name.to_string(),
                client_addr: f.client_addr.as_deref().map(str::to_string),
                state: f.state,
                idle_seconds: f.idle_seconds,
                query_seconds: f.query_seconds,
                transaction_seconds: f.transaction_seconds,
                connected_seconds: f.connected_seconds,
                state_change_us: f.state_change_us,
                query_start_us: f.query_start_us,
                xact_start_us: f.xact_start_us,
                query,
            }),
        }
    }

    /// A record about a Neo4j transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn for_transaction(
        now: SystemTime,
        action_id: &str,
        instance: &str,
        target: &str,
        mode: Mode,
        decision: Decision,
        candidate: &crate::remediate::neo4j_policy::Neo4jCandidate,
        outcome: impl Into<String>,
        query_max_chars: usize,
        redact: bool,
    ) -> Self {
        let t = &candidate.transaction;
        let query = shorten(
            t.query.as_deref().unwrap_or_default(),
            query_max_chars,
            redact,
        );
        AuditRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            time_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            action_id: action_id.to_string(),
            instance: instance.to_string(),
            target: target.to_string(),
            policy: candidate.policy.clone(),
            mode,
            action: "terminate".to_string(),
            decision,
            reason: candidate.reason.clone(),
            outcome: outcome.into(),
            session: None,
            pod: None,
            index: None,
            transaction: Some(AuditTransaction {
                id: t.id.clone(),
                database: t.database.clone(),
                username: t.username.clone(),
                status: t.status.clone(),
                elapsed_ms: t.elapsed_ms,
                query,
            }),
        }
    }
}

impl AuditRecord {
    /// A record about a Neo4j index rebuild (policy `neo4j_index_rebuild`,
    /// action `rebuild`).
    #[allow(clippy::too_many_arguments)]
    pub fn for_index(
        now: SystemTime,
        action_id: &str,
        instance: &str,
        target: &str,
        mode: Mode,
        decision: Decision,
        candidate: &crate::remediate::neo4j_index_policy::IndexCandidate,
        outcome: impl Into<String>,
    ) -> Self {
        let i = &candidate.index;
        AuditRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            time_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            action_id: action_id.to_string(),
            instance: instance.to_string(),
            target: target.to_string(),
            policy: crate::remediate::neo4j_index_policy::POLICY.to_string(),
            mode,
            action: "rebuild".to_string(),
            decision,
            reason: candidate.reason.clone(),
            outcome: outcome.into(),
            session: None,
            transaction: None,
            pod: None,
            index: Some(AuditIndex {
                database: i.database.clone(),
                name: i.name.clone(),
                state: i.state.clone(),
                failure_message: i
                    .failure_message
                    .as_deref()
                    .and_then(|m| m.lines().next())
                    .map(String::from),
                owning_constraint: i.owning_constraint.clone(),
                failed_for_ms: candidate.failed_for_ms,
                drop_statement: candidate.statements.as_ref().map(|s| s.drop.clone()),
                create_statement: candidate.statements.as_ref().map(|s| s.create.clone()),
            }),
        }
    }
}

/// The query as an audit record keeps it: redacted when configured, and
/// cut to `max_chars`.
fn shorten(query: &str, max_chars: usize, redact: bool) -> String {
    let mut q = if redact {
        redact_literals(query)
    } else {
        query.to_string()
    };
    if q.chars().count() > max_chars {
        q = q.chars().take(max_chars).collect::<String>() + "…";
    }
    q
}

/// Replaces string and numeric literals with `?`, so audit files hold the
/// shape of a query and not the data in it.
pub fn redact_literals(q: &str) -> String {
    static STRINGS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?s)(?:[eE])?'(?:[^']|'')*'|\$([A-Za-z_][A-Za-z0-9_]*)?\$.*?\$([A-Za-z_][A-Za-z0-9_]*)?\$").unwrap()
    });
    static NUMBERS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b").unwrap());
    let s = STRINGS.replace_all(q, "?");
    NUMBERS.replace_all(&s, "?").into_owned()
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

/// True when `path` no longer names the open file (renamed, removed or replaced).
#[cfg(unix)]
fn rotated(open: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (open.metadata(), std::fs::metadata(path)) {
        // Devices (e.g. /dev/full in tests) are what they are.
        (Ok(a), Ok(b)) => a.is_file() && (a.dev(), a.ino()) != (b.dev(), b.ino()),
        (Ok(a), Err(_)) => a.is_file(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn rotated(_: &File, _: &Path) -> bool {
    false
}

#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The append-only audit file plus a ring of recent records for the API.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    recent: Mutex<VecDeque<AuditRecord>>,
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) the audit file for appending.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let err = |source| AuditError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_append(path).map_err(err)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; with `durable`, flushes it to disk (`fsync`)
    /// before returning (an `fsync` also flushes every record before it).
    /// Blocking: call from a blocking context.
    pub fn append(&self, record: &AuditRecord, durable: bool) -> Result<(), AuditError> {
        self.append_all(std::slice::from_ref(record), durable)
    }

    /// Appends the records of a batch in one write; with `durable`, one
    /// `fsync` flushes them all before returning. On error none is in the
    /// recent ring, and none may be taken as on disk (a part may be).
    /// Blocking: call from a blocking context.
    pub fn append_all(&self, records: &[AuditRecord], durable: bool) -> Result<(), AuditError> {
        let err = |source| AuditError {
            path: self.path.clone(),
            source,
        };
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|e| err(std::io::Error::other(e)))?;
            lines.push(b'\n');
        }
        {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            // Rotated away (renamed or removed, e.g. by logrotate)? Reopen the
            // path, so records keep going to the file operators read.
            if rotated(&f, &self.path) {
                *f = open_append(&self.path).map_err(err)?;
            }
            // One write call for whole lines: O_APPEND keeps them together
            // even with other writers.
            f.write_all(&lines).map_err(err)?;
            if durable {
                f.sync_data().map_err(err)?;
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        Ok(())
    }

    /// The most recent records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<AuditRecord> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }

    /// Reads every record of an audit file. Lines that do not parse (a torn
    /// last line after a crash) are skipped and counted.
    pub fn read_all(path: &Path) -> Result<(Vec<AuditRecord>, usize), AuditError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => {
                return Err(AuditError {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        // Only a regular file can be read back: a device or a pipe
        // (`/dev/stdout`, `/dev/full`) would block, or never end and fill memory.
        let meta = file.metadata().map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            tracing::warn!(file = %path.display(), "the audit file is not a regular file: past actions cannot be read back, so budgets start afresh");
            return Ok((Vec::new(), 0));
        }
        let mut records = Vec::new();
        let mut bad = 0;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| AuditError {
                path: path.to_path_buf(),
                source,
            })?;
            match serde_json::from_str::<AuditRecord>(&line) {
                Ok(r) => records.push(r),
                Err(_) => bad += 1,
            }
        }
        Ok((records, bad))
    }

    /// Seeds the recent-records ring from records read at start-up.
    pub fn seed_recent(&self, records: &[AuditRecord]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for r in records.iter().rev().take(RECENT_CAPACITY).rev() {
            recent.push_back(r.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_redacted() {
        assert_eq!(
            redact_literals("SELECT * FROM t WHERE name = 'O''Brien' AND id = 42 AND x > 1.5e3"),
            "SELECT * FROM t WHERE name = ? AND id = ? AND x > ?"
        );
        assert_eq!(
            redact_literals("SELECT $$secret$$, t1.c2"),
            "SELECT ?, t1.c2"
        );
    }

    #[test]
    fn a_rotated_audit_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let rec = |n: u64| AuditRecord {
            time: "t".into(),
            time_ms: n,
            action_id: format!("a{n}"),
            instance: "i".into(),
            target: "t".into(),
            policy: "p".into(),
            mode: Mode::Enforce,
            action: "terminate".into(),
            decision: Decision::Intent,
            reason: "r".into(),
            outcome: "o".into(),
            transaction: None,
            pod: None,
            index: None,
            session: Some(AuditSession {
                pid: 1,
                backend_start_us: None,
                user: None,
                database: None,
                application_name: String::new(),
                client_addr: None,
                state: SessionState::Idle,
                idle_seconds: None,
                query_seconds: None,
                transaction_seconds: None,
                connected_seconds: None,
                state_change_us: None,
                query_start_us: None,
                xact_start_us: None,
                query: String::new(),
            }),
        };
        log.append(&rec(1), true).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        log.append(&rec(2), true).unwrap();
        let (now, _) = AuditLog::read_all(&path).unwrap();
        let (old, _) = AuditLog::read_all(&dir.path().join("audit.jsonl.1")).unwrap();
        assert_eq!(now.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [2]);
        assert_eq!(old.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [1]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_device_is_not_read_back() {
        // /dev/full reads as endless NUL bytes: one line that never ends.
        let (records, bad) = AuditLog::read_all(Path::new("/dev/full")).unwrap();
        assert!(records.is_empty());
        assert_eq!(bad, 0);
    }
}
