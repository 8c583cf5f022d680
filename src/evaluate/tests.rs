//! Tests of the evaluation core: a small snapshot builder, unit tests of every
//! check at its boundaries, the hold (`for`) semantics of [`evaluate`], and
//! property tests over arbitrary snapshots and thresholds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{
    CheckId, CheckResult, CheckStatus, HoldState, Measurement, evaluate, evaluate_down,
    evaluate_once, fmt_secs, measure, summarize,
};
use super::{Limit, SessionCheck, Thresholds};
use crate::observe::{
    Archiver, DatabaseStats, DiskUsage, PgSnapshot, RecoveryStatus, ReplicationSlot, ServerInfo,
    Session, SessionState, Standby, XID_WRAP,
};

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// The server's clock in every fixture snapshot (2025-06-15, in µs).
const NOW_US: i64 = 1_750_000_000_000_000;

/// A server timestamp `secs` seconds before [`NOW_US`].
fn ago(secs: f64) -> Option<i64> {
    Some(NOW_US - (secs * 1e6).round() as i64)
}

/// Builds a [`PgSnapshot`] step by step. Everything not set is empty/healthy.
struct Pg {
    snap: PgSnapshot,
    next_pid: i32,
}

/// A primary with `max_connections` slots of which `reserved` are for superusers.
fn primary(max_connections: i32, reserved: i32) -> Pg {
    Pg {
        snap: PgSnapshot {
            server_now_us: NOW_US,
            server: ServerInfo {
                version_num: 170_004,
                version: "PostgreSQL 17.4".into(),
                max_connections,
                superuser_reserved_connections: reserved,
                in_recovery: false,
                data_checksums: true,
                database: "app".into(),
                system_identifier: None,
                wal_lsn: None,
            },
            sessions: Vec::new(),
            standbys: Vec::new(),
            slots: Vec::new(),
            recovery: None,
            databases: Vec::new(),
            archiver: Archiver::default(),
            invalid_indexes: 0,
            disks: Vec::new(),
            statistics: None,
        },
        next_pid: 1000,
    }
}

/// A standby (in recovery) with the given recovery status.
fn standby_server(recovery: Option<RecoveryStatus>) -> Pg {
    let mut pg = primary(100, 3);
    pg.snap.server.in_recovery = true;
    pg.snap.recovery = recovery;
    pg
}

/// The standby side: WAL receiver status (`None`: no receiver) and replay delay.
fn recovery(receiver: Option<&str>, replay_delay_seconds: Option<f64>) -> RecoveryStatus {
    RecoveryStatus {
        receiver_status: receiver.map(str::to_string),
        replay_paused: false,
        replay_delay_seconds,
        replay_pending_bytes: Some(0.0),
        receive_lsn: None,
        replay_lsn: None,
    }
}

/// A session of `backend_type` in `state` whose query, transaction and state
/// change all started `age_secs` ago (the transaction only when in one).
fn session(pid: i32, backend_type: &str, state: SessionState, age_secs: f64) -> Session {
    let in_xact = matches!(
        state,
        SessionState::Active
            | SessionState::IdleInTransaction
            | SessionState::IdleInTransactionAborted
    );
    Session {
        pid,
        backend_type: backend_type.into(),
        state,
        user: Some("app".into()),
        database: Some("app".into()),
        application_name: "web".into(),
        client_addr: Some("10.0.0.7".into()),
        backend_start_us: ago(age_secs + 60.0),
        xact_start_us: if in_xact { ago(age_secs) } else { None },
        query_start_us: ago(age_secs),
        state_change_us: ago(age_secs),
        wait_event_type: None,
        blocked_by: Vec::new(),
        lock_wait_start_us: None,
        query: "select 1".into(),
        is_superuser: false,
        is_replication_role: false,
        is_self: false,
    }
}

impl Pg {
    /// A client backend in `state` for `age_secs` seconds.
    fn session(self, state: SessionState, age_secs: f64) -> Self {
        self.backend("client backend", state, age_secs)
    }

    /// Any backend type (`autovacuum worker`, `walsender`, ...).
    fn backend(mut self, backend_type: &str, state: SessionState, age_secs: f64) -> Self {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.snap
            .sessions
            .push(session(pid, backend_type, state, age_secs));
        self
    }

    /// dbwarden's own session.
    fn own_session(self, state: SessionState, age_secs: f64) -> Self {
        self.session(state, age_secs).edit_last(|s| {
            s.is_self = true;
            s.application_name = crate::observe::APPLICATION_NAME.into();
        })
    }

    /// `n` client sessions idle for a second.
    fn idle_clients(mut self, n: usize) -> Self {
        for _ in 0..n {
            self = self.session(SessionState::Idle, 1.0);
        }
        self
    }

    /// Adjusts the session added last.
    fn edit_last(mut self, f: impl FnOnce(&mut Session)) -> Self {
        f(self.snap.sessions.last_mut().expect("a session to edit"));
        self
    }

    /// The pid of the session added last.
    fn last_pid(&self) -> i32 {
        self.snap.sessions.last().expect("a session").pid
    }

    /// A standby streaming from this primary (`pg_stat_replication` row).
    fn standby(mut self, name: &str, state: &str, replay_lag_seconds: Option<f64>) -> Self {
        self.snap.standbys.push(Standby {
            name: name.into(),
            client_addr: Some("10.0.0.8".into()),
            state: state.into(),
            sync_state: "async".into(),
            write_lag_seconds: replay_lag_seconds,
            flush_lag_seconds: replay_lag_seconds,
            replay_lag_seconds,
            replay_lag_bytes: Some(0.0),
        });
        self
    }

    fn slot(mut self, name: &str, active: bool, retained_bytes: Option<f64>) -> Self {
        self.snap.slots.push(ReplicationSlot {
            name: name.into(),
            slot_type: "physical".into(),
            active,
            retained_bytes,
            wal_status: Some("reserved".into()),
            safe_wal_bytes: None,
        });
        self
    }

    /// The last slot's `wal_status` and `safe_wal_size`.
    fn slot_wal(mut self, wal_status: &str, safe_wal_bytes: Option<i64>) -> Self {
        let slot = self.snap.slots.last_mut().expect("a slot first");
        slot.wal_status = Some(wal_status.into());
        slot.safe_wal_bytes = safe_wal_bytes;
        self
    }

    /// A watched volume with `free_ratio` of its 1 000 000 bytes free.
    fn disk(mut self, volume: &str, free_ratio: f64) -> Self {
        let size = 1_000_000u64;
        self.snap.disks.push(DiskUsage {
            volume: volume.into(),
            path: format!("/var/lib/postgresql/{volume}"),
            size_bytes: size,
            free_bytes: (free_ratio * size as f64).round() as u64,
            error: None,
        });
        self
    }

    /// A watched volume statvfs could not measure (`error`), or that reports size 0 (`None`).
    fn unmeasurable_disk(mut self, volume: &str, error: Option<&str>) -> Self {
        self.snap.disks.push(DiskUsage {
            volume: volume.into(),
            path: format!("/var/lib/postgresql/{volume}"),
            size_bytes: 0,
            free_bytes: 0,
            error: error.map(str::to_string),
        });
        self
    }

    fn database(mut self, name: &str, xid_age: i64, checksum_failures: Option<i64>) -> Self {
        self.snap.databases.push(DatabaseStats {
            name: name.into(),
            checksum_failures,
            deadlocks: 0,
            xid_age,
            size_bytes: None,
        });
        self
    }

    fn archiver(mut self, archiver: Archiver) -> Self {
        self.snap.archiver = archiver;
        self
    }

    fn invalid_indexes(mut self, n: i64) -> Self {
        self.snap.invalid_indexes = n;
        self
    }

    fn data_checksums(mut self, on: bool) -> Self {
        self.snap.server.data_checksums = on;
        self
    }

    fn build(self) -> PgSnapshot {
        self.snap
    }
}

/// Measures `check` against the runbook's default thresholds.
fn measure_default(check: CheckId, snap: &PgSnapshot) -> Measurement {
    measure(check, snap, &Thresholds::default())
}

fn result_of(results: &[CheckResult], check: CheckId) -> &CheckResult {
    results
        .iter()
        .find(|r| r.check == check)
        .expect("a result for every check")
}

/// Edits every limit of `t` (the same list `evaluate_once` clears), each
/// with its index.
fn edit_limits(t: &mut Thresholds, mut f: impl FnMut(usize, &mut Limit)) {
    let plain = [
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
    ];
    let n = plain.len();
    for (i, l) in plain.into_iter().enumerate() {
        f(i, l);
    }
    for (i, c) in [
        &mut t.long_running_query,
        &mut t.idle_session,
        &mut t.idle_in_transaction,
    ]
    .into_iter()
    .enumerate()
    {
        let mut l = c.limit();
        f(n + i, &mut l);
        c.set_limit(l);
    }
}

fn with_holds(mut t: Thresholds, hold: Duration) -> Thresholds {
    edit_limits(&mut t, |_, l| l.hold = hold);
    t
}

fn assert_pass(m: &Measurement) {
    assert!(!m.violated, "expected pass: {m:?}");
}

fn assert_violated(m: &Measurement) {
    assert!(m.violated, "expected a violation: {m:?}");
}

fn assert_mentions(m: &Measurement, needle: &str) {
    assert!(
        m.detail.contains(needle),
        "detail {:?} should mention {needle:?}",
        m.detail
    );
}

// ---------------------------------------------------------------------------
// The fixture itself
// ---------------------------------------------------------------------------

#[test]
fn fixture_ages_are_exact() {
    let s = primary(100, 3).session(SessionState::Active, 300.0).build();
    let x = &s.sessions[0];
    assert_eq!(s.age_seconds(x.query_start_us), Some(300.0));
    assert_eq!(s.age_seconds(x.state_change_us), Some(300.0));
    assert_eq!(s.age_seconds(x.xact_start_us), Some(300.0));
    assert!(x.is_client_backend());
    assert_eq!(s.server.usable_connections(), 97);
}

// ---------------------------------------------------------------------------
// connection
// ---------------------------------------------------------------------------

#[test]
fn connection_passes_on_any_snapshot() {
    let m = measure_default(CheckId::Connection, &primary(100, 3).build());
    assert_pass(&m);
    assert_eq!(m.value, 1.0);
    assert_mentions(&m, "connected");
}

// ---------------------------------------------------------------------------
// disk_free
// ---------------------------------------------------------------------------

#[test]
fn disk_free_without_watched_paths_passes() {
    let m = measure_default(CheckId::DiskFree, &primary(100, 3).build());
    assert_pass(&m);
    assert_eq!(m.value, 1.0);
    assert_mentions(&m, "no paths configured");
}

#[test]
fn disk_free_exactly_at_threshold_passes() {
    let m = measure_default(
        CheckId::DiskFree,
        &primary(100, 3).disk("data", 0.30).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 0.30);
    assert_mentions(&m, "30.0% free");
}

#[test]
fn disk_free_below_threshold_fails_and_names_the_volume() {
    let m = measure_default(
        CheckId::DiskFree,
        &primary(100, 3).disk("wal", 0.299).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 0.299);
    assert_mentions(&m, "volume \"wal\" has 29.9% free");
    assert_mentions(&m, "threshold 30.0%");
}

#[test]
fn disk_free_reports_the_fullest_volume() {
    let s = primary(100, 3)
        .disk("data", 0.80)
        .disk("wal", 0.10)
        .disk("logs", 0.50)
        .build();
    let m = measure_default(CheckId::DiskFree, &s);
    assert_violated(&m);
    assert_eq!(m.value, 0.10);
    assert_mentions(&m, "\"wal\"");
}

#[test]
fn disk_free_unmeasurable_volume_fails_even_when_others_have_room() {
    let s = primary(100, 3)
        .disk("data", 0.90)
        .unmeasurable_disk("wal", Some("wal: statvfs /pg/wal: permission denied"))
        .build();
    let m = measure_default(CheckId::DiskFree, &s);
    assert_violated(&m);
    assert_eq!(m.value, 0.90);
    assert_mentions(&m, "permission denied");
}

#[test]
fn disk_free_zero_sized_volume_fails() {
    let m = measure_default(
        CheckId::DiskFree,
        &primary(100, 3).unmeasurable_disk("data", None).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "no watched volume could be measured");
    assert_mentions(&m, "data: size 0");
}

// ---------------------------------------------------------------------------
// connections_used
// ---------------------------------------------------------------------------

#[test]
fn connections_used_exactly_80_percent_passes() {
    // 103 - 3 reserved = 100 usable.
    let m = measure_default(
        CheckId::ConnectionsUsed,
        &primary(103, 3).idle_clients(80).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 0.80);
    assert_mentions(&m, "80 of 100 usable connections (80.0%)");
}

#[test]
fn connections_used_81_percent_fails() {
    let m = measure_default(
        CheckId::ConnectionsUsed,
        &primary(103, 3).idle_clients(81).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 0.81);
    assert_mentions(&m, "81 of 100 usable connections (81.0%)");
    assert_mentions(&m, "threshold 80.0%");
}

#[test]
fn connections_used_counts_client_backends_only() {
    let mut pg = primary(103, 3).idle_clients(80);
    for bt in [
        "autovacuum worker",
        "walsender",
        "background worker",
        "checkpointer",
    ] {
        pg = pg.backend(bt, SessionState::Unknown, 100.0);
    }
    let m = measure_default(CheckId::ConnectionsUsed, &pg.build());
    assert_pass(&m);
    assert_eq!(m.value, 0.80);
}

#[test]
fn connections_used_counts_dbwardens_own_session() {
    // dbwarden's session occupies a slot like any other client.
    let s = primary(103, 3)
        .idle_clients(80)
        .own_session(SessionState::Active, 0.0)
        .build();
    let m = measure_default(CheckId::ConnectionsUsed, &s);
    assert_violated(&m);
    assert_eq!(m.value, 0.81);
}

#[test]
fn connections_used_survives_reserved_exceeding_max() {
    // usable_connections is clamped to 1: no division by zero.
    let m = measure_default(
        CheckId::ConnectionsUsed,
        &primary(3, 5).idle_clients(1).build(),
    );
    assert_eq!(m.value, 1.0);
    assert_violated(&m);
    let m = measure_default(CheckId::ConnectionsUsed, &primary(3, 5).build());
    assert_eq!(m.value, 0.0);
    assert_pass(&m);
}

// ---------------------------------------------------------------------------
// replication_lag
// ---------------------------------------------------------------------------

#[test]
fn replication_lag_primary_without_standbys_passes() {
    let m = measure_default(CheckId::ReplicationLag, &primary(100, 3).build());
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "no standbys connected");
}

#[test]
fn replication_lag_primary_exactly_5s_passes() {
    let m = measure_default(
        CheckId::ReplicationLag,
        &primary(100, 3).standby("b", "streaming", Some(5.0)).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 5.0);
}

#[test]
fn replication_lag_primary_over_5s_fails_and_names_the_worst_standby() {
    let s = primary(100, 3)
        .standby("replica-a", "streaming", Some(1.0))
        .standby("replica-b", "streaming", Some(7.0))
        .standby("replica-c", "streaming", None)
        .build();
    let m = measure_default(CheckId::ReplicationLag, &s);
    assert_violated(&m);
    assert_eq!(m.value, 7.0);
    assert_mentions(&m, "standby \"replica-b\" replay lag 7s");
    assert_mentions(&m, "threshold 5s");
}

#[test]
fn replication_lag_primary_unknown_lag_counts_as_zero() {
    let m = measure_default(
        CheckId::ReplicationLag,
        &primary(100, 3).standby("b", "streaming", None).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
}

#[test]
fn replication_lag_standby_uses_replay_delay() {
    // A cascading standby's own downstream lag is not what this check reads.
    let s = standby_server(Some(recovery(Some("streaming"), Some(2.0))))
        .standby("cascade", "streaming", Some(100.0))
        .build();
    let m = measure_default(CheckId::ReplicationLag, &s);
    assert_pass(&m);
    assert_eq!(m.value, 2.0);
    assert_mentions(&m, "replay delay 2s");

    let at = measure_default(
        CheckId::ReplicationLag,
        &standby_server(Some(recovery(Some("streaming"), Some(5.0)))).build(),
    );
    assert_pass(&at);

    let over = measure_default(
        CheckId::ReplicationLag,
        &standby_server(Some(recovery(None, Some(3600.0)))).build(),
    );
    assert_violated(&over);
    assert_eq!(over.value, 3600.0);
    assert_mentions(&over, "replay delay 1h");
}

#[test]
fn replication_lag_standby_without_replay_passes() {
    for r in [None, Some(recovery(Some("streaming"), None))] {
        let m = measure_default(CheckId::ReplicationLag, &standby_server(r).build());
        assert_pass(&m);
        assert_eq!(m.value, 0.0);
        assert_mentions(&m, "replay delay unknown");
    }
}

// ---------------------------------------------------------------------------
// replication_streaming
// ---------------------------------------------------------------------------

#[test]
fn replication_streaming_primary_without_standbys_passes_by_default() {
    let m = measure_default(CheckId::ReplicationStreaming, &primary(100, 3).build());
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
}

#[test]
fn replication_streaming_primary_standby_not_streaming_fails() {
    let s = primary(100, 3)
        .standby("a", "streaming", Some(0.0))
        .standby("b", "catchup", None)
        .build();
    let m = measure_default(CheckId::ReplicationStreaming, &s);
    assert_violated(&m);
    assert_eq!(m.value, 1.0);
    assert_mentions(&m, "1 standbys streaming");
    assert_mentions(&m, "\"b\" is catchup");
}

#[test]
fn replication_streaming_primary_fewer_than_min_standbys_fails() {
    let mut t = Thresholds::default();
    t.replication_streaming.value = 2.0;
    let one = primary(100, 3).standby("a", "streaming", Some(0.0)).build();
    let m = measure(CheckId::ReplicationStreaming, &one, &t);
    assert_violated(&m);
    assert_mentions(&m, "at least 2 expected");

    let two = primary(100, 3)
        .standby("a", "streaming", Some(0.0))
        .standby("b", "streaming", Some(0.0))
        .build();
    let m = measure(CheckId::ReplicationStreaming, &two, &t);
    assert_pass(&m);
    assert_eq!(m.value, 2.0);
}

#[test]
fn replication_streaming_standby_receiver_streaming_passes() {
    let m = measure_default(
        CheckId::ReplicationStreaming,
        &standby_server(Some(recovery(Some("streaming"), Some(0.0)))).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 1.0);
    assert_mentions(&m, "WAL receiver: streaming");
}

#[test]
fn replication_streaming_standby_receiver_not_streaming_fails() {
    for (r, said) in [
        (
            Some(recovery(Some("waiting"), Some(0.0))),
            "WAL receiver: waiting",
        ),
        (Some(recovery(None, Some(0.0))), "no WAL receiver"),
        (None, "no WAL receiver"),
    ] {
        let m = measure_default(CheckId::ReplicationStreaming, &standby_server(r).build());
        assert_violated(&m);
        assert_eq!(m.value, 0.0);
        assert_mentions(&m, said);
    }
}

// ---------------------------------------------------------------------------
// replication_slots
// ---------------------------------------------------------------------------

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[test]
fn replication_slots_none_passes() {
    let m = measure_default(CheckId::ReplicationSlots, &primary(100, 3).build());
    assert_pass(&m);
    assert_mentions(&m, "no replication slots");
}

#[test]
fn replication_slots_retained_wal_boundary() {
    let at = measure_default(
        CheckId::ReplicationSlots,
        &primary(100, 3).slot("s1", true, Some(GIB)).build(),
    );
    assert_pass(&at);
    assert_eq!(at.value, GIB);

    let s = primary(100, 3)
        .slot("small", true, Some(10.0))
        .slot("big", true, Some(GIB + 1.0))
        .build();
    let over = measure_default(CheckId::ReplicationSlots, &s);
    assert_violated(&over);
    assert_eq!(over.value, GIB + 1.0);
    assert_mentions(&over, "slot \"big\" retains 1073741825 bytes");
}

#[test]
fn replication_slots_inactive_slot_fails() {
    let s = primary(100, 3)
        .slot("live", true, Some(100.0))
        .slot("forgotten", false, None)
        .build();
    let m = measure_default(CheckId::ReplicationSlots, &s);
    assert_violated(&m);
    assert_eq!(m.value, 100.0);
    assert_mentions(&m, "inactive: forgotten");
}

// ---------------------------------------------------------------------------
// replication_slot_at_risk
// ---------------------------------------------------------------------------

#[test]
fn replication_slot_at_risk_counts_unreserved_and_lost_slots() {
    let none = measure_default(CheckId::ReplicationSlotAtRisk, &primary(100, 3).build());
    assert_pass(&none);
    assert_mentions(&none, "no replication slots");

    let unlimited = primary(100, 3).slot("s1", true, Some(GIB)).build();
    let m = measure_default(CheckId::ReplicationSlotAtRisk, &unlimited);
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "max_slot_wal_keep_size is -1");

    let s = primary(100, 3)
        .slot("ok", true, Some(10.0))
        .slot_wal("extended", Some(1))
        .slot("late", false, Some(GIB))
        .slot_wal("unreserved", Some(-5))
        .slot("gone", false, None)
        .slot_wal("lost", None)
        .build();
    let m = measure_default(CheckId::ReplicationSlotAtRisk, &s);
    assert_violated(&m);
    assert_eq!(m.value, 2.0);
    assert_mentions(&m, "slot \"late\" is unreserved");
    assert_mentions(&m, "slot \"gone\" is lost");
}

#[test]
fn replication_slot_at_risk_min_safe_wal_bytes_boundary() {
    let s = primary(100, 3)
        .slot("s1", true, Some(10.0))
        .slot_wal("reserved", Some(1000))
        .build();
    let mut t = Thresholds::default();
    // The default has no byte limit.
    assert_pass(&measure(CheckId::ReplicationSlotAtRisk, &s, &t));
    t.replication_slot_at_risk.value = 1000.0;
    let at = measure(CheckId::ReplicationSlotAtRisk, &s, &t);
    assert_pass(&at);
    assert_mentions(&at, "can take 1000 more bytes");
    t.replication_slot_at_risk.value = 1001.0;
    let below = measure(CheckId::ReplicationSlotAtRisk, &s, &t);
    assert_violated(&below);
    assert_eq!(below.value, 1.0);
    assert_mentions(&below, "slot \"s1\" can lose its WAL after 1000 more bytes");
}

// ---------------------------------------------------------------------------
// long_running_query, idle_session, idle_in_transaction
// ---------------------------------------------------------------------------

#[test]
fn long_running_query_exactly_300s_passes() {
    let m = measure_default(
        CheckId::LongRunningQuery,
        &primary(100, 3).session(SessionState::Active, 300.0).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 300.0);
    assert_mentions(&m, "5m");
}

#[test]
fn long_running_query_301s_fails_and_names_the_session() {
    let pg = primary(100, 3)
        .session(SessionState::Active, 10.0)
        .session(SessionState::Active, 301.0)
        .edit_last(|s| s.user = Some("report".into()));
    let pid = pg.last_pid();
    let m = measure_default(CheckId::LongRunningQuery, &pg.build());
    assert_violated(&m);
    assert_eq!(m.value, 301.0);
    assert_mentions(&m, "longest active query running 5m 1s");
    assert_mentions(&m, &format!("pid {pid}"));
    assert_mentions(&m, "\"report\"");
    assert_mentions(&m, "threshold 5m");
}

#[test]
fn long_running_query_none_active_passes() {
    let m = measure_default(CheckId::LongRunningQuery, &primary(100, 3).build());
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "no active query running");
}

#[test]
fn long_running_query_reads_query_start_not_xact_start() {
    // A long transaction whose current statement is young is not a long query.
    let s = primary(100, 3)
        .session(SessionState::Active, 10.0)
        .edit_last(|s| s.xact_start_us = ago(5000.0))
        .build();
    let m = measure_default(CheckId::LongRunningQuery, &s);
    assert_pass(&m);
    assert_eq!(m.value, 10.0);
}

#[test]
fn long_running_query_ignores_other_states() {
    let s = primary(100, 3)
        .session(SessionState::Idle, 5000.0)
        .session(SessionState::IdleInTransaction, 5000.0)
        .session(SessionState::Unknown, 5000.0)
        .build();
    assert_pass(&measure_default(CheckId::LongRunningQuery, &s));
}

#[test]
fn idle_session_exactly_600s_passes() {
    let m = measure_default(
        CheckId::IdleSession,
        &primary(100, 3).session(SessionState::Idle, 600.0).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 600.0);
    assert_mentions(&m, "10m");
}

#[test]
fn idle_session_601s_fails() {
    let m = measure_default(
        CheckId::IdleSession,
        &primary(100, 3).session(SessionState::Idle, 601.0).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 601.0);
    assert_mentions(&m, "longest session idle 10m 1s");
    assert_mentions(&m, "threshold 10m");
}

#[test]
fn idle_session_reads_state_change() {
    // Idle for 20 s, although the last query started long ago.
    let s = primary(100, 3)
        .session(SessionState::Idle, 20.0)
        .edit_last(|s| s.query_start_us = ago(5000.0))
        .build();
    let m = measure_default(CheckId::IdleSession, &s);
    assert_pass(&m);
    assert_eq!(m.value, 20.0);
}

#[test]
fn idle_session_ignores_active_and_in_transaction() {
    let s = primary(100, 3)
        .session(SessionState::Active, 5000.0)
        .session(SessionState::IdleInTransaction, 5000.0)
        .build();
    let m = measure_default(CheckId::IdleSession, &s);
    assert_pass(&m);
    assert_mentions(&m, "no session idle");
}

#[test]
fn idle_in_transaction_boundary_and_aborted() {
    let at = measure_default(
        CheckId::IdleInTransaction,
        &primary(100, 3)
            .session(SessionState::IdleInTransaction, 300.0)
            .build(),
    );
    assert_pass(&at);
    assert_eq!(at.value, 300.0);

    let over = measure_default(
        CheckId::IdleInTransaction,
        &primary(100, 3)
            .session(SessionState::IdleInTransaction, 301.0)
            .build(),
    );
    assert_violated(&over);
    assert_mentions(&over, "session idle in transaction 5m 1s");

    let s = primary(100, 3)
        .session(SessionState::IdleInTransaction, 100.0)
        .session(SessionState::IdleInTransactionAborted, 400.0)
        .build();
    let aborted = measure_default(CheckId::IdleInTransaction, &s);
    assert_violated(&aborted);
    assert_eq!(aborted.value, 400.0);
    assert_mentions(&aborted, "idle in an aborted transaction 6m 40s");

    let s = primary(100, 3)
        .session(SessionState::IdleInTransaction, 500.0)
        .session(SessionState::IdleInTransactionAborted, 400.0)
        .build();
    let plain = measure_default(CheckId::IdleInTransaction, &s);
    assert_eq!(plain.value, 500.0);
    assert_mentions(&plain, "idle in transaction 8m 20s");
}

#[test]
fn session_checks_ignore_dbwarden_and_non_client_backends() {
    let checks = [
        (CheckId::LongRunningQuery, SessionState::Active),
        (CheckId::IdleSession, SessionState::Idle),
        (CheckId::IdleInTransaction, SessionState::IdleInTransaction),
        (
            CheckId::IdleInTransaction,
            SessionState::IdleInTransactionAborted,
        ),
    ];
    for (check, state) in checks {
        let s = primary(100, 3)
            .own_session(state, 100_000.0)
            .backend("autovacuum worker", state, 100_000.0)
            .backend("walsender", state, 100_000.0)
            .backend("background worker", state, 100_000.0)
            .session(state, 42.0)
            .build();
        let m = measure_default(check, &s);
        assert_pass(&m);
        assert_eq!(m.value, 42.0, "{check:?} in {state:?}: {m:?}");
    }
}

#[test]
fn session_checks_clamp_future_timestamps() {
    // Server clock stepped back: a start in the future is age 0, not negative.
    let s = primary(100, 3).session(SessionState::Active, -30.0).build();
    let m = measure_default(CheckId::LongRunningQuery, &s);
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
}

#[test]
fn session_checks_skip_sessions_without_timestamps() {
    let s = primary(100, 3)
        .session(SessionState::Active, 1000.0)
        .edit_last(|s| s.query_start_us = None)
        .build();
    assert_pass(&measure_default(CheckId::LongRunningQuery, &s));
}

// ---------------------------------------------------------------------------
// checksum_failures, wal_archiving, wraparound, invalid_indexes
// ---------------------------------------------------------------------------

#[test]
fn checksum_failures_zero_passes() {
    let s = primary(100, 3)
        .database("app", 1000, Some(0))
        .database("old", 1000, None)
        .build();
    let m = measure_default(CheckId::ChecksumFailures, &s);
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "0 checksum failures");
}

#[test]
fn checksum_failures_any_fails_summed_over_databases() {
    let s = primary(100, 3)
        .database("app", 1000, Some(2))
        .database("other", 1000, Some(3))
        .build();
    let m = measure_default(CheckId::ChecksumFailures, &s);
    assert_violated(&m);
    assert_eq!(m.value, 5.0);
    assert_mentions(&m, "5 checksum failures");
}

#[test]
fn checksum_failures_disabled_checksums_are_said() {
    let s = primary(100, 3)
        .data_checksums(false)
        .database("app", 1000, None)
        .build();
    let m = measure_default(CheckId::ChecksumFailures, &s);
    assert_pass(&m);
    assert_mentions(&m, "data checksums are disabled");
}

#[test]
fn wal_archiving_states() {
    let off = measure_default(CheckId::WalArchiving, &primary(100, 3).build());
    assert_pass(&off);
    assert_mentions(&off, "archive_mode is off");

    let ok = Archiver {
        archive_mode: true,
        archived_count: 10,
        failed_count: 0,
        last_archived_age_seconds: Some(61.0),
        failing: false,
    };
    let m = measure_default(
        CheckId::WalArchiving,
        &primary(100, 3).archiver(ok.clone()).build(),
    );
    assert_pass(&m);
    assert_eq!(m.value, 0.0);
    assert_mentions(&m, "last segment archived 1m 1s ago");

    let none_yet = Archiver {
        last_archived_age_seconds: None,
        ..ok.clone()
    };
    let m = measure_default(
        CheckId::WalArchiving,
        &primary(100, 3).archiver(none_yet).build(),
    );
    assert_pass(&m);
    assert_mentions(&m, "no segment archived yet");

    let failing = Archiver {
        failing: true,
        failed_count: 7,
        ..ok
    };
    let m = measure_default(
        CheckId::WalArchiving,
        &primary(100, 3).archiver(failing).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 1.0);
    assert_mentions(&m, "the last archive attempt failed (7 failures in all)");
}

#[test]
fn wraparound_boundary() {
    let half = (XID_WRAP / 2.0) as i64;
    let none = measure_default(CheckId::Wraparound, &primary(100, 3).build());
    assert_pass(&none);
    assert_mentions(&none, "no databases visible");

    let at = measure_default(
        CheckId::Wraparound,
        &primary(100, 3).database("app", half, None).build(),
    );
    assert_pass(&at);
    assert_eq!(at.value, 0.5);

    let s = primary(100, 3)
        .database("app", 1000, None)
        .database("legacy", half + 1, None)
        .build();
    let over = measure_default(CheckId::Wraparound, &s);
    assert_violated(&over);
    assert!(over.value > 0.5);
    assert_mentions(
        &over,
        &format!("oldest XID age {} in database \"legacy\"", half + 1),
    );
    assert_mentions(&over, "50.00000005% of wraparound), threshold 50.00000000%");
    assert_mentions(&over, "threshold 50.00000000%");
}

#[test]
fn invalid_indexes_any_fails() {
    let m = measure_default(CheckId::InvalidIndexes, &primary(100, 3).build());
    assert_pass(&m);
    let m = measure_default(
        CheckId::InvalidIndexes,
        &primary(100, 3).invalid_indexes(2).build(),
    );
    assert_violated(&m);
    assert_eq!(m.value, 2.0);
    assert_mentions(&m, "2 invalid indexes in database \"app\"");
}

#[test]
fn healthy_snapshot_passes_every_check() {
    let s = primary(103, 3)
        .idle_clients(10)
        .own_session(SessionState::Active, 0.01)
        .session(SessionState::Active, 2.0)
        .standby("replica", "streaming", Some(0.1))
        .slot("replica", true, Some(4096.0))
        .disk("data", 0.7)
        .disk("wal", 0.9)
        .database("app", 10_000, Some(0))
        .archiver(Archiver {
            archive_mode: true,
            archived_count: 5,
            failed_count: 0,
            last_archived_age_seconds: Some(10.0),
            failing: false,
        })
        .build();
    let (results, hold) = evaluate(&s, &Thresholds::default(), &HoldState::default(), 0);
    for r in &results {
        assert_eq!(r.status, CheckStatus::Pass, "{r:?}");
        assert_eq!(r.held_seconds, 0.0);
    }
    assert_eq!(hold, HoldState::default());
}

#[test]
fn fmt_secs_renders_short_durations() {
    assert_eq!(fmt_secs(301.0), "5m 1s");
    assert_eq!(fmt_secs(600.0), "10m");
    assert_eq!(fmt_secs(0.25), "250ms");
    assert_eq!(fmt_secs(0.0), "0ms");
    assert_eq!(fmt_secs(-3.0), "0ms");
    assert_eq!(fmt_secs(f64::NAN), "0ms");
}

// ---------------------------------------------------------------------------
// evaluate: results, hold (`for`) semantics
// ---------------------------------------------------------------------------

/// 81 of 100 usable connections: connections_used is violated.
fn crowded() -> PgSnapshot {
    primary(103, 3).idle_clients(81).build()
}

/// 10 of 100: nothing is violated.
fn calm() -> PgSnapshot {
    primary(103, 3).idle_clients(10).build()
}

#[test]
fn evaluate_reports_every_check_in_order_with_its_limit() {
    let t = Thresholds::default();
    let (results, _) = evaluate(&calm(), &t, &HoldState::default(), 0);
    let order: Vec<CheckId> = results.iter().map(|r| r.check).collect();
    assert_eq!(order, CheckId::ALL.to_vec());
    let cu = result_of(&results, CheckId::ConnectionsUsed);
    assert_eq!(cu.threshold, 0.80);
    assert_eq!(cu.for_seconds, 60.0);
    assert_eq!(cu.value, Some(0.10));
    let conn = result_of(&results, CheckId::Connection);
    assert_eq!(
        (conn.threshold, conn.for_seconds, conn.value),
        (1.0, 0.0, Some(1.0))
    );
    assert_eq!(
        result_of(&results, CheckId::LongRunningQuery).threshold,
        300.0
    );
    assert_eq!(result_of(&results, CheckId::IdleSession).threshold, 600.0);
    assert_eq!(result_of(&results, CheckId::DiskFree).threshold, 0.30);
    assert_eq!(result_of(&results, CheckId::ReplicationLag).threshold, 5.0);
}

#[test]
fn evaluate_hold_pending_until_the_for_duration_then_fail() {
    let t = Thresholds::default(); // connections_used: for 60 s
    let s = crowded();

    let (r0, h0) = evaluate(&s, &t, &HoldState::default(), 0);
    let c = result_of(&r0, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Pending);
    assert_eq!(c.held_seconds, 0.0);
    assert_eq!(c.for_seconds, 60.0);

    let (r59, h59) = evaluate(&s, &t, &h0, 59_000);
    let c = result_of(&r59, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Pending);
    assert_eq!(c.held_seconds, 59.0);

    let (r60, h60) = evaluate(&s, &t, &h59, 60_000);
    let c = result_of(&r60, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Fail);
    assert_eq!(c.held_seconds, 60.0);

    let (r61, _) = evaluate(&s, &t, &h60, 61_000);
    assert_eq!(
        result_of(&r61, CheckId::ConnectionsUsed).status,
        CheckStatus::Fail
    );
}

#[test]
fn evaluate_hold_resets_when_the_condition_clears() {
    let t = Thresholds::default();
    let (_, h) = evaluate(&crowded(), &t, &HoldState::default(), 0);
    let (_, h) = evaluate(&crowded(), &t, &h, 50_000);

    let (r, h) = evaluate(&calm(), &t, &h, 55_000);
    let c = result_of(&r, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Pass);
    assert_eq!(c.held_seconds, 0.0);
    assert_eq!(
        h,
        HoldState::default(),
        "a passing check leaves no hold behind"
    );

    // Violated again: the hold starts over from this evaluation.
    let (r, h) = evaluate(&crowded(), &t, &h, 70_000);
    let c = result_of(&r, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Pending);
    assert_eq!(c.held_seconds, 0.0);
    let (r, h) = evaluate(&crowded(), &t, &h, 129_000);
    assert_eq!(
        result_of(&r, CheckId::ConnectionsUsed).status,
        CheckStatus::Pending
    );
    let (r, _) = evaluate(&crowded(), &t, &h, 130_000);
    assert_eq!(
        result_of(&r, CheckId::ConnectionsUsed).status,
        CheckStatus::Fail
    );
}

#[test]
fn evaluate_hold_zero_fails_at_once() {
    let s = primary(100, 3).session(SessionState::Active, 301.0).build();
    let (r, h) = evaluate(&s, &Thresholds::default(), &HoldState::default(), 1_000);
    let c = result_of(&r, CheckId::LongRunningQuery);
    assert_eq!(c.status, CheckStatus::Fail);
    assert_eq!(c.for_seconds, 0.0);
    assert_eq!(h.0.get(&CheckId::LongRunningQuery), Some(&1_000));
}

#[test]
fn evaluate_holds_are_independent_per_check() {
    let s = primary(103, 3)
        .idle_clients(81)
        .session(SessionState::Active, 301.0)
        .build();
    let (r, h) = evaluate(&s, &Thresholds::default(), &HoldState::default(), 0);
    assert_eq!(
        result_of(&r, CheckId::ConnectionsUsed).status,
        CheckStatus::Pending
    );
    assert_eq!(
        result_of(&r, CheckId::LongRunningQuery).status,
        CheckStatus::Fail
    );
    let held: Vec<CheckId> = h.0.keys().copied().collect();
    assert_eq!(
        held,
        vec![CheckId::ConnectionsUsed, CheckId::LongRunningQuery]
    );
}

#[test]
fn evaluate_clock_going_backwards_restarts_the_hold_without_panicking() {
    let t = Thresholds::default();
    let mut h = HoldState::default();
    h.0.insert(CheckId::ConnectionsUsed, 100_000);
    let (r, h) = evaluate(&crowded(), &t, &h, 40_000);
    let c = result_of(&r, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Pending);
    assert_eq!(c.held_seconds, 0.0);
    assert_eq!(h.0.get(&CheckId::ConnectionsUsed), Some(&40_000));
}

#[test]
fn evaluate_once_ignores_hold_but_reports_it() {
    let t = Thresholds::default();
    let results = evaluate_once(&crowded(), &t);
    let c = result_of(&results, CheckId::ConnectionsUsed);
    assert_eq!(c.status, CheckStatus::Fail);
    assert_eq!(c.for_seconds, 60.0);
    assert_eq!(c.held_seconds, 0.0);
    for r in &results {
        assert_ne!(r.status, CheckStatus::Pending);
    }
    let disk = result_of(&results, CheckId::DiskFree);
    assert_eq!(disk.for_seconds, 300.0);
}

#[test]
fn evaluate_down_fails_only_connection() {
    let t = Thresholds::default();
    let results = evaluate_down(&t, "connection refused");
    let order: Vec<CheckId> = results.iter().map(|r| r.check).collect();
    assert_eq!(order, CheckId::ALL.to_vec());
    for r in &results {
        if r.check == CheckId::Connection {
            assert_eq!(r.status, CheckStatus::Fail);
            assert_eq!(r.value, Some(0.0));
            assert!(r.detail.contains("connection refused"), "{r:?}");
        } else {
            assert_eq!(r.status, CheckStatus::Unknown, "{r:?}");
            assert_eq!(r.value, None);
        }
        assert_eq!(r.held_seconds, 0.0);
    }
    let cu = result_of(&results, CheckId::ConnectionsUsed);
    assert_eq!((cu.threshold, cu.for_seconds), (0.80, 60.0));
}

#[test]
fn check_names_are_snake_case_and_match_serde() {
    for c in CheckId::ALL {
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{}\"", c.as_str()));
        assert!(!c.description().is_empty());
    }
    for s in [
        CheckStatus::Pass,
        CheckStatus::Pending,
        CheckStatus::Fail,
        CheckStatus::Unknown,
    ] {
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
}

// ---------------------------------------------------------------------------
// summarize
// ---------------------------------------------------------------------------

#[test]
fn summarize_counts_and_longest() {
    let pg = primary(103, 3)
        .session(SessionState::Active, 30.0)
        .session(SessionState::Idle, 700.0)
        .session(SessionState::IdleInTransactionAborted, 50.0)
        .own_session(SessionState::Active, 9000.0)
        .backend("autovacuum worker", SessionState::Active, 8000.0)
        .backend("walsender", SessionState::Active, 8000.0)
        .edit_last(|s| s.wait_event_type = Some("Lock".into()))
        .edit_last(|s| s.blocked_by = vec![1, 2]);
    let s = pg.session(SessionState::Idle, 5.0).edit_last(|s| {
        s.wait_event_type = Some("Lock".into());
        s.blocked_by = vec![2, 3];
    });
    let s = s.database("app", (XID_WRAP / 4.0) as i64, None).build();
    let sum = summarize(&s);
    assert_eq!(sum.sessions_by_state.len(), SessionState::ALL.len());
    assert_eq!(sum.sessions_by_state["active"], 2);
    assert_eq!(sum.sessions_by_state["idle"], 2);
    assert_eq!(sum.sessions_by_state["idle_in_transaction_aborted"], 1);
    assert_eq!(sum.sessions_by_state["unknown"], 0);
    assert_eq!(sum.backends_by_type["client backend"], 5);
    assert_eq!(sum.backends_by_type["walsender"], 1);
    assert_eq!(sum.connections_used, 5);
    assert_eq!(sum.connections_usable, 100);
    assert_eq!(sum.longest_active_query_seconds, 30.0);
    assert_eq!(sum.longest_idle_seconds, 700.0);
    assert_eq!(sum.longest_idle_in_transaction_seconds, 50.0);
    assert_eq!(sum.longest_transaction_seconds, 50.0);
    assert_eq!(sum.lock_waiters, 2);
    assert_eq!(sum.lock_blockers, 3);
    assert_eq!(sum.wraparound_ratio, 0.25);
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// A timestamp: none, a whole number of seconds ago (to hit thresholds
/// exactly), or any microsecond up to ~2 days ago or a little in the future.
fn arb_ts() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        1 => Just(None),
        3 => (0i64..2_000).prop_map(|s| Some(NOW_US - s * 1_000_000)),
        3 => (-5_000_000i64..200_000_000_000).prop_map(|us| Some(NOW_US - us)),
    ]
}

fn arb_session() -> impl Strategy<Value = Session> {
    (
        prop_oneof![
            6 => Just("client backend"),
            1 => Just("autovacuum worker"),
            1 => Just("walsender"),
            1 => Just("background worker"),
            1 => Just("parallel worker"),
        ],
        prop::sample::select(SessionState::ALL.to_vec()),
        (arb_ts(), arb_ts(), arb_ts(), arb_ts()),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.2, Just("Lock")),
        prop::collection::vec(1i32..60, 0..3),
    )
        .prop_map(
            |(backend_type, state, (bs, xs, qs, sc), is_self, wait, blocked_by)| {
                let mut s = session(0, backend_type, state, 0.0);
                s.backend_start_us = bs;
                s.xact_start_us = xs;
                s.query_start_us = qs;
                s.state_change_us = sc;
                s.is_self = is_self;
                s.wait_event_type = wait.map(Arc::from);
                s.blocked_by = blocked_by;
                s
            },
        )
}

fn arb_seconds_opt() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![(0u32..12).prop_map(f64::from), 0.0..20.0f64])
}

fn arb_standby() -> impl Strategy<Value = Standby> {
    (
        prop_oneof![4 => Just("streaming"), 1 => Just("catchup"), 1 => Just("startup"), 1 => Just("backup")],
        arb_seconds_opt(),
    )
        .prop_map(|(state, lag)| Standby {
            name: String::new(),
            client_addr: None,
            state: state.into(),
            sync_state: "async".into(),
            write_lag_seconds: lag,
            flush_lag_seconds: lag,
            replay_lag_seconds: lag,
            replay_lag_bytes: None,
        })
}

fn arb_slot() -> impl Strategy<Value = ReplicationSlot> {
    (
        prop::bool::weighted(0.8),
        prop::option::of(0.0..2.0 * GIB),
        prop::option::of(prop::sample::select(
            &["reserved", "extended", "unreserved", "lost"][..],
        )),
        prop::option::of(-(GIB as i64)..(2 * GIB as i64)),
    )
        .prop_map(
            |(active, retained_bytes, wal_status, safe_wal_bytes)| ReplicationSlot {
                name: String::new(),
                slot_type: "physical".into(),
                active,
                retained_bytes,
                wal_status: wal_status.map(str::to_string),
                safe_wal_bytes,
            },
        )
}

fn arb_recovery() -> impl Strategy<Value = RecoveryStatus> {
    (
        prop::option::of(prop::sample::select(vec![
            "streaming",
            "waiting",
            "starting",
            "stopping",
        ])),
        any::<bool>(),
        arb_seconds_opt(),
    )
        .prop_map(|(receiver, replay_paused, delay)| RecoveryStatus {
            replay_paused,
            ..recovery(receiver, delay)
        })
}

fn arb_database() -> impl Strategy<Value = DatabaseStats> {
    let half = (XID_WRAP / 2.0) as i64;
    (
        prop_oneof![Just(half), Just(half + 1), 0i64..(XID_WRAP as i64)],
        prop::option::weighted(0.7, prop_oneof![4 => Just(0i64), 1 => 1i64..4]),
    )
        .prop_map(|(xid_age, checksum_failures)| DatabaseStats {
            name: String::new(),
            checksum_failures,
            deadlocks: 0,
            xid_age,
            size_bytes: None,
        })
}

fn arb_archiver() -> impl Strategy<Value = Archiver> {
    (
        any::<bool>(),
        0i64..100,
        0i64..10,
        arb_seconds_opt(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(archive_mode, archived_count, failed_count, last_archived_age_seconds, failing)| {
                Archiver {
                    archive_mode,
                    archived_count,
                    failed_count,
                    last_archived_age_seconds,
                    failing: archive_mode && failing,
                }
            },
        )
}

fn arb_disk() -> impl Strategy<Value = DiskUsage> {
    (
        0u64..1000,
        0u64..=1000,
        prop::option::weighted(0.1, Just("statvfs: permission denied")),
    )
        .prop_map(|(size, free, error)| DiskUsage {
            volume: String::new(),
            path: "/pg".into(),
            size_bytes: if error.is_some() { 0 } else { size },
            free_bytes: if error.is_some() { 0 } else { free.min(size) },
            error: error.map(str::to_string),
        })
}

fn arb_snapshot() -> impl Strategy<Value = PgSnapshot> {
    (
        (1i32..60, 0i32..5, prop::bool::weighted(0.3), any::<bool>()),
        prop::collection::vec(arb_session(), 0..48),
        prop::collection::vec(arb_standby(), 0..4),
        prop::collection::vec(arb_slot(), 0..4),
        prop::option::weighted(0.8, arb_recovery()),
        prop::collection::vec(arb_database(), 0..4),
        arb_archiver(),
        prop_oneof![4 => Just(0i64), 1 => 1i64..3],
        prop::collection::vec(arb_disk(), 0..4),
    )
        .prop_map(
            |(
                (max_connections, reserved, in_recovery, checksums),
                sessions,
                standbys,
                slots,
                recovery,
                databases,
                archiver,
                invalid_indexes,
                disks,
            )| {
                let mut pg = primary(max_connections, reserved).data_checksums(checksums);
                let s = &mut pg.snap;
                s.server.in_recovery = in_recovery;
                s.recovery = if in_recovery { recovery } else { None };
                s.sessions = sessions;
                for (i, x) in s.sessions.iter_mut().enumerate() {
                    x.pid = 100 + i as i32;
                }
                s.standbys = standbys;
                for (i, x) in s.standbys.iter_mut().enumerate() {
                    x.name = format!("standby-{i}");
                }
                s.slots = slots;
                for (i, x) in s.slots.iter_mut().enumerate() {
                    x.name = format!("slot_{i}");
                }
                s.databases = databases;
                for (i, x) in s.databases.iter_mut().enumerate() {
                    x.name = format!("db{i}");
                }
                s.archiver = archiver;
                s.invalid_indexes = invalid_indexes;
                s.disks = disks;
                for (i, x) in s.disks.iter_mut().enumerate() {
                    x.volume = format!("vol{i}");
                }
                pg.build()
            },
        )
}

/// A `for` duration: often zero, sometimes the runbook's minute, else up to 10 min.
fn arb_hold() -> impl Strategy<Value = Duration> {
    prop_oneof![Just(0u64), Just(60_000), 0u64..600_000].prop_map(Duration::from_millis)
}

fn arb_ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(0.3),
        Just(0.5),
        Just(0.8),
        Just(1.0),
        0.0..=1.0f64
    ]
}

/// A positive duration in seconds, as the config accepts for `max`.
fn arb_max_secs() -> impl Strategy<Value = f64> {
    prop_oneof![
        (1u64..2_000).prop_map(|s| s as f64),
        (1u64..200_000_000).prop_map(|ms| ms as f64 / 1000.0),
    ]
}

fn limit(value: impl Strategy<Value = f64>) -> impl Strategy<Value = Limit> {
    (value, arb_hold()).prop_map(|(value, hold)| Limit { value, hold })
}

fn unscoped(l: Limit) -> SessionCheck {
    let mut c = SessionCheck::new(Duration::ZERO, Duration::ZERO);
    c.set_limit(l);
    c
}

fn arb_thresholds() -> impl Strategy<Value = Thresholds> {
    (
        (limit(arb_ratio()), limit(arb_ratio()), limit(arb_ratio())),
        (
            limit(arb_max_secs()),
            limit(arb_max_secs()),
            limit(arb_max_secs()),
            limit(arb_max_secs()),
        ),
        limit((0u32..3).prop_map(f64::from)),
        (
            limit(prop_oneof![Just(GIB), 0.0..2.0 * GIB]),
            limit(prop_oneof![Just(0.0), 0.0..GIB]),
        ),
        (limit(Just(0.0)), limit(Just(0.0)), limit(Just(0.0))),
    )
        .prop_map(
            |(
                (disk_free, connections_used, wraparound),
                (replication_lag, long_running_query, idle_session, idle_in_transaction),
                replication_streaming,
                (replication_slot_retained_wal, replication_slot_at_risk),
                (checksum_failures, wal_archiving, invalid_indexes),
            )| Thresholds {
                disk_free,
                connections_used,
                replication_lag,
                replication_streaming,
                replication_slot_retained_wal,
                replication_slot_at_risk,
                long_running_query: unscoped(long_running_query),
                idle_session: unscoped(idle_session),
                idle_in_transaction: unscoped(idle_in_transaction),
                wraparound,
                checksum_failures,
                wal_archiving,
                invalid_indexes,
            },
        )
}

/// A previous hold state: some checks held since some time around `now`.
fn arb_hold_state() -> impl Strategy<Value = HoldState> {
    prop::collection::btree_map(
        prop::sample::select(CheckId::ALL.to_vec()),
        0u64..2_000_000,
        0..6,
    )
    .prop_map(HoldState)
}

fn status_of(results: &[CheckResult], check: CheckId) -> CheckStatus {
    result_of(results, check).status
}

/// Ages the summary must cover: for each non-self client session, the ages
/// of the timestamps each `longest_*` field reads.
fn session_ages(
    s: &PgSnapshot,
    x: &Session,
) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let (mut active, mut idle, mut iit) = (None, None, None);
    match x.state {
        SessionState::Active => active = s.age_seconds(x.query_start_us),
        SessionState::Idle => idle = s.age_seconds(x.state_change_us),
        SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted => {
            iit = s.age_seconds(x.state_change_us)
        }
        _ => {}
    }
    (active, idle, iit, s.age_seconds(x.xact_start_us))
}

proptest! {
    /// (a) One result per check, in `CheckId::ALL` order, and no panic; (b)
    /// Fail/Pending exactly when `measure` says violated; the result carries
    /// the measurement and the limit; the next hold state holds exactly the
    /// violated checks.
    #[test]
    fn prop_evaluate_is_total_and_agrees_with_measure(
        snap in arb_snapshot(),
        t in arb_thresholds(),
        hold in arb_hold_state(),
        now_ms in 0u64..3_000_000,
    ) {
        let (results, next) = evaluate(&snap, &t, &hold, now_ms);
        let order: Vec<CheckId> = results.iter().map(|r| r.check).collect();
        prop_assert_eq!(order, CheckId::ALL.to_vec());
        let mut violated = BTreeSet::new();
        for r in &results {
            let m = measure(r.check, &snap, &t);
            let bad = matches!(r.status, CheckStatus::Fail | CheckStatus::Pending);
            prop_assert_eq!(bad, m.violated, "{:?} vs {:?}", r, m);
            prop_assert_ne!(r.status, CheckStatus::Unknown);
            prop_assert_eq!(r.value, Some(m.value));
            prop_assert_eq!(&r.detail, &m.detail);
            let l = r.check.limit(&t);
            prop_assert_eq!(r.threshold, l.value);
            prop_assert_eq!(r.for_seconds, l.hold.as_secs_f64());
            prop_assert!(r.held_seconds >= 0.0);
            if !m.violated {
                prop_assert_eq!(r.held_seconds, 0.0);
            }
            if m.violated {
                violated.insert(r.check);
                let since = next.0[&r.check];
                prop_assert!(since <= now_ms);
                // Fail exactly when the condition has held for the `for` duration.
                let held = Duration::from_millis(now_ms - since);
                prop_assert_eq!(r.status == CheckStatus::Fail, held >= l.hold);
            }
        }
        prop_assert_eq!(next.0.keys().copied().collect::<BTreeSet<_>>(), violated);
    }

    /// (c) With every hold zero nothing is ever Pending, whatever the
    /// previous hold state; `evaluate_once` agrees and reports the
    /// configured holds.
    #[test]
    fn prop_zero_holds_never_pend(
        snap in arb_snapshot(),
        t in arb_thresholds(),
        hold in arb_hold_state(),
        now_ms in 0u64..3_000_000,
    ) {
        let zero = with_holds(t.clone(), Duration::ZERO);
        let (results, _) = evaluate(&snap, &zero, &hold, now_ms);
        for r in &results {
            prop_assert_ne!(r.status, CheckStatus::Pending, "{:?}", r);
        }
        let once = evaluate_once(&snap, &t);
        prop_assert_eq!(once.len(), results.len());
        for (o, r) in once.iter().zip(&results) {
            prop_assert_eq!(o.check, r.check);
            prop_assert_eq!(o.status, r.status);
            prop_assert_eq!(o.value, r.value);
            prop_assert_eq!(o.held_seconds, 0.0);
            prop_assert_eq!(o.for_seconds, o.check.limit(&t).hold.as_secs_f64());
        }
    }

    /// (d) Raising a maximum never turns a Pass into a Fail.
    #[test]
    fn prop_raising_a_maximum_is_monotone(
        snap in arb_snapshot(),
        t in arb_thresholds(),
        hold in arb_hold_state(),
        now_ms in 0u64..3_000_000,
        ratios in (arb_ratio(), arb_ratio()),
        long in (arb_max_secs(), arb_max_secs()),
        idle in (arb_max_secs(), arb_max_secs()),
    ) {
        let sorted = |(a, b): (f64, f64)| if a <= b { (a, b) } else { (b, a) };
        let (ratio_lo, ratio_hi) = sorted(ratios);
        let (long_lo, long_hi) = sorted(long);
        let (idle_lo, idle_hi) = sorted(idle);
        let mut lo = t.clone();
        lo.connections_used.value = ratio_lo;
        lo.long_running_query.max = Duration::from_secs_f64(long_lo);
        lo.idle_session.max = Duration::from_secs_f64(idle_lo);
        let mut hi = t;
        hi.connections_used.value = ratio_hi;
        hi.long_running_query.max = Duration::from_secs_f64(long_hi);
        hi.idle_session.max = Duration::from_secs_f64(idle_hi);
        let (r_lo, _) = evaluate(&snap, &lo, &hold, now_ms);
        let (r_hi, _) = evaluate(&snap, &hi, &hold, now_ms);
        for check in [CheckId::ConnectionsUsed, CheckId::LongRunningQuery, CheckId::IdleSession] {
            let (a, b) = (status_of(&r_lo, check), status_of(&r_hi, check));
            if a == CheckStatus::Pass {
                prop_assert_eq!(b, CheckStatus::Pass, "{:?}: pass at the lower max, {:?} at the higher", check, b);
            }
            if b == CheckStatus::Fail {
                prop_assert_eq!(a, CheckStatus::Fail, "{:?}", check);
            }
        }
    }

    /// (e) The summary: states sum to the client backends, longest_* are
    /// never negative and cover every non-self client session, and they are
    /// the values the checks measure.
    #[test]
    fn prop_summary_is_consistent(snap in arb_snapshot()) {
        let sum = summarize(&snap);
        let clients = snap.sessions.iter().filter(|x| x.is_client_backend()).count() as u64;
        prop_assert_eq!(sum.sessions_by_state.len(), SessionState::ALL.len());
        prop_assert_eq!(sum.sessions_by_state.values().sum::<u64>(), clients);
        prop_assert_eq!(sum.backends_by_type.values().sum::<u64>(), snap.sessions.len() as u64);
        prop_assert_eq!(sum.connections_used, clients);
        prop_assert!(sum.connections_usable >= 1);
        for v in [
            sum.longest_active_query_seconds,
            sum.longest_transaction_seconds,
            sum.longest_idle_in_transaction_seconds,
            sum.longest_idle_seconds,
        ] {
            prop_assert!(v >= 0.0 && v.is_finite());
        }
        for x in snap.sessions.iter().filter(|x| x.is_client_backend() && !x.is_self) {
            let (active, idle, iit, xact) = session_ages(&snap, x);
            prop_assert!(active.is_none_or(|a| sum.longest_active_query_seconds >= a));
            prop_assert!(idle.is_none_or(|a| sum.longest_idle_seconds >= a));
            prop_assert!(iit.is_none_or(|a| sum.longest_idle_in_transaction_seconds >= a));
            prop_assert!(xact.is_none_or(|a| sum.longest_transaction_seconds >= a));
        }
        let waiters = snap.sessions.iter().filter(|x| x.waits_on_lock()).count() as u64;
        prop_assert_eq!(sum.lock_waiters, waiters);
        prop_assert!(sum.wraparound_ratio >= 0.0 && sum.wraparound_ratio < 1.0);

        let t = Thresholds::default();
        prop_assert_eq!(measure(CheckId::LongRunningQuery, &snap, &t).value, sum.longest_active_query_seconds);
        prop_assert_eq!(measure(CheckId::IdleSession, &snap, &t).value, sum.longest_idle_seconds);
        prop_assert_eq!(
            measure(CheckId::IdleInTransaction, &snap, &t).value,
            sum.longest_idle_in_transaction_seconds
        );
        prop_assert_eq!(measure(CheckId::Wraparound, &snap, &t).value, sum.wraparound_ratio);
        prop_assert_eq!(
            measure(CheckId::ConnectionsUsed, &snap, &t).value,
            sum.connections_used as f64 / sum.connections_usable as f64
        );
    }

    /// (f) Evaluating the same snapshot at t and t + d keeps the first
    /// `since`: the condition has held for exactly d.
    #[test]
    fn prop_hold_keeps_the_first_since(
        snap in arb_snapshot(),
        t in arb_thresholds(),
        t0 in 0u64..1_000_000_000_000,
        d in prop_oneof![0u64..120_000, 0u64..1_000_000_000],
    ) {
        let (first, h1) = evaluate(&snap, &t, &HoldState::default(), t0);
        let (second, h2) = evaluate(&snap, &t, &h1, t0 + d);
        for (a, b) in first.iter().zip(&second) {
            prop_assert_eq!(a.status == CheckStatus::Pass, b.status == CheckStatus::Pass);
            if b.status == CheckStatus::Pass {
                continue;
            }
            prop_assert_eq!(h1.0[&a.check], t0);
            prop_assert_eq!(h2.0[&b.check], t0);
            prop_assert_eq!(a.held_seconds, 0.0);
            prop_assert!((b.held_seconds - d as f64 / 1000.0).abs() < 1e-9, "{} vs {}", b.held_seconds, d);
            let hold = b.check.limit(&t).hold;
            prop_assert_eq!(b.status == CheckStatus::Fail, Duration::from_millis(d) >= hold);
        }
        prop_assert_eq!(h1, h2);
    }
}

/// Every check but `connection` reads a limit of its own, and `edit_limits`
/// (the list `evaluate_once` also clears) covers all of them.
#[test]
fn every_threshold_limit_is_reachable() {
    let mut t = Thresholds::default();
    edit_limits(&mut t, |i, l| l.value = 1000.0 + i as f64);
    let seen: BTreeMap<u64, CheckId> = CheckId::ALL
        .iter()
        .filter(|&&c| c != CheckId::Connection)
        .map(|&c| (c.limit(&t).value as u64, c))
        .collect();
    assert_eq!(seen.len(), 13, "each check reads its own limit");
}

/// A value just over its threshold never prints the same as the threshold.
#[test]
fn violated_values_never_print_as_their_threshold() {
    let s = primary(100, 3).standby("b", "streaming", Some(5.5)).build();
    let m = measure(CheckId::ReplicationLag, &s, &Thresholds::default());
    assert!(m.violated);
    assert_mentions(&m, "replay lag 5.5s (threshold 5s)");
    let s = primary(1000, 0).idle_clients(804).build();
    let m = measure(CheckId::ConnectionsUsed, &s, &Thresholds::default());
    assert!(m.violated);
    assert_mentions(&m, "(80.4%), threshold 80.0%");
}

/// An absurd threshold from the config must not panic the evaluation.
#[test]
fn huge_duration_threshold_does_not_panic() {
    let mut t = Thresholds::default();
    t.long_running_query.max = Duration::from_secs(u64::MAX);
    let s = primary(100, 3).session(SessionState::Active, 10.0).build();
    assert!(!measure(CheckId::LongRunningQuery, &s, &t).violated);
}

/// A reload's new thresholds restart the hold of the checks whose limit
/// changed, and only those.
#[test]
fn new_thresholds_restart_only_the_changed_checks_holds() {
    let s = crowded();
    let old = Thresholds::default();
    let (_, mut hold) = evaluate(&s, &old, &HoldState::default(), 1_000);
    let since = hold.since(CheckId::ConnectionsUsed);
    assert_eq!(since, Some(1_000));
    // Unchanged limits: the hold keeps its start.
    hold.keep_unchanged(&super::limits(&old), &super::limits(&old.clone()));
    assert_eq!(hold.since(CheckId::ConnectionsUsed), since);
    // Another check's limit changed: still kept.
    let mut other = old.clone();
    other.idle_session.max = Duration::from_secs(60);
    hold.keep_unchanged(&super::limits(&old), &super::limits(&other));
    assert_eq!(hold.since(CheckId::ConnectionsUsed), since);
    // Its own `for` changed: it starts over.
    let mut longer = other.clone();
    longer.connections_used.hold = Duration::from_secs(600);
    hold.keep_unchanged(&super::limits(&other), &super::limits(&longer));
    assert_eq!(hold.since(CheckId::ConnectionsUsed), None);
}

/// The scoped session checks: the worked example of docs/configuration.md,
/// read from the document itself, on sessions it describes.
mod scoped {
    use super::*;
    use crate::evaluate::{Exclusion, SessionCheck, evaluate_once};

    /// The TOML block of the worked example in docs/configuration.md.
    fn worked_example() -> Thresholds {
        let docs = include_str!("../../docs/configuration.md");
        let from = docs.find("Worked example").expect("the worked example");
        let block = docs[from..]
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("its TOML block");
        let table: toml::Table = toml::from_str(block).expect("the example parses");
        let th = table["thresholds"].as_table().unwrap();
        let mut t = Thresholds::default();
        let read = |k: &str| -> SessionCheck { th[k].clone().try_into().expect(k) };
        t.long_running_query = read("long_running_query");
        t.idle_session = read("idle_session");
        t
    }

    fn who(user: &str, app: &str) -> impl FnOnce(&mut Session) {
        let (user, app): (Arc<str>, Arc<str>) = (user.into(), app.into());
        move |s| {
            s.user = Some(user);
            s.application_name = app;
        }
    }

    fn long(t: &Thresholds, user: &str, app: &str, secs: f64) -> CheckResult {
        let s = primary(100, 3)
            .session(SessionState::Active, secs)
            .edit_last(who(user, app))
            .build();
        result_of(&evaluate_once(&s, t), CheckId::LongRunningQuery).clone()
    }

    #[test]
    fn the_worked_example_does_what_the_documentation_says() {
        let t = worked_example();
        let h = 3600.0;
        // A 3-hour pg_dump of the backup user: exception backup, 6 h.
        let r = long(&t, "backup", "pg_dump", 3.0 * h);
        assert_eq!(r.status, CheckStatus::Pass, "{r:?}");
        assert_eq!(r.threshold, 6.0 * h);
        assert!(r.detail.contains("(exception backup)"), "{}", r.detail);
        // The same user from psql: the check's own 5 minutes.
        let r = long(&t, "backup", "psql", 3.0 * h);
        assert_eq!(r.status, CheckStatus::Fail, "{r:?}");
        assert_eq!(r.threshold, 300.0);
        // Reporting: 1 h.
        assert_eq!(long(&t, "reporting", "x", 1800.0).status, CheckStatus::Pass);
        assert_eq!(
            long(&t, "reporting", "x", 2.0 * h).status,
            CheckStatus::Fail
        );
        // Anyone else: 5 min.
        assert_eq!(long(&t, "app", "web", 301.0).status, CheckStatus::Fail);
        assert_eq!(long(&t, "app", "web", 299.0).status, CheckStatus::Pass);
        // Without exceptions, nothing is scoped: no excluded count.
        assert_eq!(long(&t, "app", "web", 1.0).excluded, None);
        // The idle psql is left out, and counted.
        let s = primary(100, 3)
            .session(SessionState::Idle, 3.0 * h)
            .edit_last(who("dba", "psql"))
            .session(SessionState::Idle, 60.0)
            .build();
        let r = result_of(&evaluate_once(&s, &t), CheckId::IdleSession).clone();
        assert_eq!(r.status, CheckStatus::Pass, "{r:?}");
        assert_eq!(r.value, Some(60.0));
        assert_eq!(
            r.excluded,
            Some(BTreeMap::from([(Exclusion::IgnoreApplications, 1)]))
        );
    }

    /// When two exceptions take a session, the one that sets more match_*
    /// lists wins; among as many, the lower max; then the first by name.
    #[test]
    fn the_most_specific_exception_applies() {
        let text = r#"
            max = "5m"
            for = "0s"
            [exceptions.by-user]
            max = "1h"
            match_users = ["backup"]
            [exceptions.by-user-and-app]
            max = "6h"
            match_users = ["backup"]
            match_applications = ["pg_dump"]
            [exceptions.a-by-app]
            max = "2h"
            match_applications = ["pg_dump"]
            [exceptions.z-by-app]
            max = "2h"
            match_applications = ["pg_dump"]
        "#;
        let c: SessionCheck = toml::from_str(text).unwrap();
        let order: Vec<&str> = c.exceptions_in_order().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            order,
            ["by-user-and-app", "by-user", "a-by-app", "z-by-app"]
        );
        let t = Thresholds {
            long_running_query: c,
            ..Thresholds::default()
        };
        let r = long(&t, "backup", "pg_dump", 4.0 * 3600.0);
        assert_eq!(r.status, CheckStatus::Pass);
        assert!(r.detail.contains("by-user-and-app"), "{}", r.detail);
        // Not pg_dump: by-user (1 h).
        let r = long(&t, "backup", "psql", 1.5 * 3600.0);
        assert_eq!((r.status, r.threshold), (CheckStatus::Fail, 3600.0));
        // pg_dump of another user: the two by-app exceptions tie; a- first.
        let r = long(&t, "app", "pg_dump", 600.0);
        assert!(r.detail.contains("a-by-app"), "{}", r.detail);
    }

    /// The check reports the session nearest its limit, so the value
    /// exceeds the threshold exactly when it fails.
    #[test]
    fn the_session_nearest_its_limit_is_reported() {
        let text = r#"
            max = "5m"
            for = "0s"
            [exceptions.backup]
            max = "6h"
            match_users = ["backup"]
        "#;
        let t = Thresholds {
            long_running_query: toml::from_str(text).unwrap(),
            ..Thresholds::default()
        };
        // A 2-hour backup (a third of its limit) and a 4-minute query (4/5).
        let s = primary(100, 3)
            .session(SessionState::Active, 7200.0)
            .edit_last(who("backup", "pg_dump"))
            .session(SessionState::Active, 240.0)
            .build();
        let r = result_of(&evaluate_once(&s, &t), CheckId::LongRunningQuery).clone();
        assert_eq!((r.value, r.threshold), (Some(240.0), 300.0));
        assert_eq!(r.status, CheckStatus::Pass);
        // The backup over its own limit fails the check, whatever the others.
        let s = primary(100, 3)
            .session(SessionState::Active, 7.0 * 3600.0)
            .edit_last(who("backup", "pg_dump"))
            .session(SessionState::Active, 240.0)
            .build();
        let r = result_of(&evaluate_once(&s, &t), CheckId::LongRunningQuery).clone();
        assert_eq!(r.status, CheckStatus::Fail);
        assert_eq!(r.threshold, 6.0 * 3600.0);
    }

    /// Every key a scope sets is counted, 0 included; a session is counted
    /// once, under the first key that leaves it out; only sessions in the
    /// check's state count.
    #[test]
    fn exclusions_are_counted_by_the_key_that_made_them() {
        let text = r#"
            max = "5m"
            for = "0s"
            ignore_users = ["backup"]
            ignore_applications = ["pg_dump"]
            match_databases = ["app"]
        "#;
        let t = Thresholds {
            long_running_query: toml::from_str(text).unwrap(),
            ..Thresholds::default()
        };
        let s = primary(100, 3)
            // Ignored by user and by application: counted by user.
            .session(SessionState::Active, 9000.0)
            .edit_last(who("backup", "pg_dump"))
            .session(SessionState::Active, 9000.0)
            .edit_last(|s| s.database = Some("other".into()))
            .session(SessionState::Active, 10.0)
            // Idle: not this check's state, not counted.
            .session(SessionState::Idle, 9000.0)
            .edit_last(who("backup", "x"))
            .own_session(SessionState::Active, 9000.0)
            .build();
        let r = result_of(&evaluate_once(&s, &t), CheckId::LongRunningQuery).clone();
        assert_eq!(r.status, CheckStatus::Pass, "{r:?}");
        assert_eq!(r.value, Some(10.0));
        assert_eq!(
            r.excluded,
            Some(BTreeMap::from([
                (Exclusion::IgnoreUsers, 1),
                (Exclusion::MatchDatabases, 1),
                (Exclusion::IgnoreApplications, 0),
            ]))
        );
        // Without the lists, both fail the check.
        let r = result_of(
            &evaluate_once(&s, &Thresholds::default()),
            CheckId::LongRunningQuery,
        )
        .clone();
        assert_eq!(r.status, CheckStatus::Fail);
        assert_eq!(r.excluded, None);
    }

    /// A reload that changes a session check's lists or exceptions
    /// restarts that check's hold, and only that one's.
    #[test]
    fn new_lists_restart_the_session_checks_hold() {
        let s = primary(100, 3)
            .session(SessionState::Active, 600.0)
            .session(SessionState::Idle, 6000.0)
            .build();
        let old = Thresholds::default();
        let (_, mut hold) = evaluate(&s, &old, &HoldState::default(), 1_000);
        assert!(hold.since(CheckId::LongRunningQuery).is_some());
        assert!(hold.since(CheckId::IdleSession).is_some());
        let mut new = old.clone();
        new.long_running_query.ignore_users = vec!["backup".into()];
        assert_eq!(
            crate::evaluate::rescoped(&old, &new),
            [CheckId::LongRunningQuery]
        );
        // Only the limit changed: not rescoped (the limit's own rule applies).
        let mut longer = old.clone();
        longer.idle_session.max = Duration::from_secs(1);
        assert!(crate::evaluate::rescoped(&old, &longer).is_empty());
        hold.restart(&crate::evaluate::rescoped(&old, &new));
        assert_eq!(hold.since(CheckId::LongRunningQuery), None);
        assert_eq!(hold.since(CheckId::IdleSession), Some(1_000));
    }
}
