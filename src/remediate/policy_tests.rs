//! Tests of the pure session selection: a snapshot/session builder, unit tests
//! of the runbook's mitigations and of every protection and filter, and
//! property tests over random snapshots and policies. The properties re-check
//! the module's decisions with an independent oracle written here, never with
//! the module's private helpers.

use crate::remediate::policy::Gates;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use proptest::prelude::*;
use regex::Regex;

use super::{
    Action, ActionKind, Candidate, Conditions, NameSet, Policy, PolicyEvaluation, Protection,
    Victims, crossings, evaluate_policy, is_own, select,
};
use crate::evaluate::{CheckId, CheckName};
use crate::observe::APPLICATION_NAME;
use crate::observe::{Archiver, PgSnapshot, ServerInfo, Session, SessionState};
use crate::settings::Pattern;

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// The server's clock in every fixture snapshot (2025-06-15, in µs).
const NOW_US: i64 = 1_750_000_000_000_000;

/// A server timestamp `secs` seconds before [`NOW_US`].
fn ago(secs: f64) -> i64 {
    NOW_US - (secs * 1e6).round() as i64
}

/// A session under construction. Starts as a client backend of user `app`
/// on database `intelgraph`, application `api`, from 10.2.3.4, connected for
/// two hours and idle for one second, running nothing remarkable.
#[derive(Debug, Clone)]
struct Sb(Session);

fn client(pid: i32) -> Sb {
    Sb(Session {
        pid,
        backend_type: "client backend".into(),
        state: SessionState::Idle,
        user: Some("app".into()),
        database: Some("intelgraph".into()),
        application_name: "api".into(),
        client_addr: Some("10.2.3.4".into()),
        backend_start_us: Some(ago(7200.0)),
        xact_start_us: None,
        query_start_us: Some(ago(1.5)),
        state_change_us: Some(ago(1.0)),
        wait_event_type: Some("Client".into()),
        blocked_by: Vec::new(),
        lock_wait_start_us: None,
        query: "SELECT 1".into(),
        is_superuser: false,
        is_replication_role: false,
        is_self: false,
    })
}

/// A non-client backend (walsender, autovacuum worker, ...), active for a long time.
fn backend(pid: i32, backend_type: &str) -> Sb {
    let mut b = client(pid).active(3000.0);
    b.0.backend_type = backend_type.into();
    b
}

impl Sb {
    /// `idle` for `secs` (the last query finished then; no transaction).
    fn idle(mut self, secs: f64) -> Self {
        self.0.state = SessionState::Idle;
        self.0.state_change_us = Some(ago(secs));
        self.0.query_start_us = Some(ago(secs + 0.25));
        self.0.xact_start_us = None;
        self.0.wait_event_type = Some("Client".into());
        self
    }

    /// `active`, the current query (and its transaction) running for `secs`.
    fn active(mut self, secs: f64) -> Self {
        self.0.state = SessionState::Active;
        self.0.query_start_us = Some(ago(secs));
        self.0.state_change_us = Some(ago(secs));
        self.0.xact_start_us = Some(ago(secs));
        self.0.wait_event_type = None;
        self
    }

    /// `idle in transaction` for `secs`, the transaction open one second longer.
    fn idle_in_transaction(mut self, secs: f64) -> Self {
        self.0.state = SessionState::IdleInTransaction;
        self.0.state_change_us = Some(ago(secs));
        self.0.query_start_us = Some(ago(secs + 0.5));
        self.0.xact_start_us = Some(ago(secs + 1.0));
        self.0.wait_event_type = Some("Client".into());
        self
    }

    /// In `state` for `secs` (the state's natural timestamps).
    fn in_state(self, state: SessionState, secs: f64) -> Self {
        match state {
            SessionState::Active => self.active(secs),
            SessionState::Idle => self.idle(secs),
            SessionState::IdleInTransaction => self.idle_in_transaction(secs),
            other => {
                let mut s = self.idle_in_transaction(secs);
                s.0.state = other;
                s
            }
        }
    }

    fn connected(mut self, secs: f64) -> Self {
        self.0.backend_start_us = Some(ago(secs));
        self
    }

    fn user(mut self, user: &str) -> Self {
        self.0.user = Some(user.into());
        self
    }

    fn db(mut self, db: &str) -> Self {
        self.0.database = Some(db.into());
        self
    }

    fn app(mut self, app: &str) -> Self {
        self.0.application_name = app.into();
        self
    }

    fn addr(mut self, addr: &str) -> Self {
        self.0.client_addr = Some(addr.into());
        self
    }

    /// Connected over a unix socket: no client address.
    fn unix_socket(mut self) -> Self {
        self.0.client_addr = None;
        self
    }

    fn query(mut self, q: &str) -> Self {
        self.0.query = q.into();
        self
    }

    fn superuser(mut self) -> Self {
        self.0.is_superuser = true;
        self
    }

    fn replication_role(mut self) -> Self {
        self.0.is_replication_role = true;
        self
    }

    /// The session dbwarden polled with.
    fn polling_self(mut self) -> Self {
        self.0.is_self = true;
        self
    }

    /// Active, waiting on a lock held by `blockers` since `waited_secs` ago
    /// (`pg_locks.waitstart`); its query started a little earlier.
    fn waits_on(mut self, blockers: &[i32], waited_secs: f64) -> Self {
        self = self.active(waited_secs + 0.5);
        self.0.wait_event_type = Some("Lock".into());
        self.0.blocked_by = blockers.to_vec();
        self.0.lock_wait_start_us = Some(ago(waited_secs));
        self
    }

    /// Like [`Sb::waits_on`] but without `waitstart` (older servers): the
    /// wait is measured from the query start, `query_secs` ago.
    fn waits_on_since_query(mut self, blockers: &[i32], query_secs: f64) -> Self {
        self = self.active(query_secs);
        self.0.wait_event_type = Some("Lock".into());
        self.0.blocked_by = blockers.to_vec();
        self.0.lock_wait_start_us = None;
        self
    }
}

fn snapshot(sessions: impl IntoIterator<Item = Sb>) -> PgSnapshot {
    snapshot_of(sessions.into_iter().map(|s| s.0).collect())
}

pub(crate) fn snapshot_of(sessions: Vec<Session>) -> PgSnapshot {
    PgSnapshot {
        server_now_us: NOW_US,
        server: ServerInfo {
            version_num: 170_004,
            version: "PostgreSQL 17.4".into(),
            max_connections: 100,
            superuser_reserved_connections: 3,
            in_recovery: false,
            data_checksums: true,
            database: "postgres".into(),
            system_identifier: None,
            wal_lsn: None,
        },
        sessions,
        standbys: Vec::new(),
        slots: Vec::new(),
        recovery: None,
        databases: Vec::new(),
        archiver: Archiver::default(),
        invalid_indexes: 0,
        disks: Vec::new(),
        statistics: None,
    }
}

/// A terminate policy on every target, acting on all candidates (cap 100), no gate.
fn policy(name: &str, conditions: Conditions) -> Policy {
    Policy {
        name: name.into(),
        targets: None,
        kind: Some(ActionKind::Terminate),
        grace: None,
        victims: Victims::All,
        max_per_cycle: 100,
        conditions,
        only_while_failing: Vec::new(),
        only_while_alerts: Vec::new(),
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|n| n.parse().unwrap()).collect()
}

fn re(p: &str) -> Pattern {
    Pattern(Regex::new(p).unwrap())
}

fn pids(cs: &[Candidate]) -> Vec<i32> {
    cs.iter().map(|c| c.facts.pid).collect()
}

fn protected(e: &PolicyEvaluation) -> Vec<(i32, Protection)> {
    e.protected.iter().map(|(f, p)| (f.pid, *p)).collect()
}

fn eval(p: &Policy, snap: &PgSnapshot) -> PolicyEvaluation {
    evaluate_policy(p, snap, gates(&[]))
}

// ---------------------------------------------------------------------------
// The runbook's mitigations
// ---------------------------------------------------------------------------

/// Runbook mitigation: terminate sessions idle for over 10 minutes in `intelgraph`.
fn idle_in_intelgraph() -> Policy {
    policy(
        "idle-intelgraph",
        Conditions {
            states: vec![SessionState::Idle],
            idle_for: secs(600),
            match_databases: strings(&["intelgraph"]),
            ..Default::default()
        },
    )
}

#[test]
fn runbook_idle_over_ten_minutes_in_intelgraph() {
    let snap = snapshot([
        client(1).idle(700.0),
        client(2).idle(599.0),
        client(3).idle(900.0).db("billing"),
        client(4).active(900.0),
        client(5).idle_in_transaction(900.0),
        client(6).idle(1200.0),
        client(7).idle(600.0),
        client(8).idle(900.0).unix_socket(),
    ]);
    let e = eval(&idle_in_intelgraph(), &snap);
    assert!(e.gate_open);
    assert_eq!(e.gate_reason, "always");
    // Oldest first by idle time; exactly 10 minutes is "at least 10 minutes".
    assert_eq!(pids(&e.candidates), vec![6, 8, 1, 7]);
    assert_eq!(pids(&e.selected), vec![6, 8, 1, 7]);
    assert!(e.protected.is_empty());
    let c = &e.selected[0];
    assert_eq!(c.action, Action::Terminate);
    assert_eq!(c.policy, "idle-intelgraph");
    assert_eq!(c.age_seconds, 1200.0);
    assert_eq!(c.facts.idle_seconds, Some(1200.0));
    assert_eq!(c.facts.query_seconds, None);
    assert_eq!(c.facts.database.as_deref(), Some("intelgraph"));
}

#[test]
fn idle_for_without_states_also_covers_idle_in_transaction() {
    let p = policy(
        "idle",
        Conditions {
            idle_for: secs(600),
            ..Default::default()
        },
    );
    let snap = snapshot([
        client(1).idle(700.0),
        client(2).idle_in_transaction(800.0),
        client(3).in_state(SessionState::IdleInTransactionAborted, 650.0),
        client(4).active(900.0),
        client(5).idle_in_transaction(100.0),
    ]);
    assert_eq!(pids(&eval(&p, &snap).candidates), vec![2, 1, 3]);
}

/// Runbook mitigation: terminate active queries running for over 5 minutes.
fn long_active_queries() -> Policy {
    policy(
        "long-queries",
        Conditions {
            states: vec![SessionState::Active],
            query_running_for: secs(300),
            ..Default::default()
        },
    )
}

#[test]
fn runbook_active_queries_over_five_minutes() {
    let snap = snapshot([
        client(10)
            .active(400.0)
            .db("billing")
            .query("SELECT * FROM big"),
        client(11).active(200.0),
        client(12).idle(4000.0),
        client(13).idle_in_transaction(4000.0),
        client(14).active(301.0).user("postgres").superuser(),
        backend(15, "walsender"),
        client(16).active(3000.0).connected(3000.0),
        client(17).active(300.0),
    ]);
    let e = eval(&long_active_queries(), &snap);
    assert_eq!(pids(&e.selected), vec![16, 10, 17]);
    assert_eq!(
        protected(&e),
        vec![
            (14, Protection::Superuser),
            (15, Protection::NotClientBackend)
        ]
    );
    let c = &e.selected[1];
    assert_eq!(c.facts.query_seconds, Some(400.0));
    assert_eq!(c.age_seconds, 400.0);
    assert_eq!(&*c.facts.query, "SELECT * FROM big");

    // query_running_for alone already means "active": idle sessions have no running query.
    let loose = policy(
        "q",
        Conditions {
            query_running_for: secs(300),
            ..Default::default()
        },
    );
    assert_eq!(pids(&eval(&loose, &snap).selected), vec![16, 10, 17]);
}

// ---------------------------------------------------------------------------
// Filters: an ignore always wins
// ---------------------------------------------------------------------------

#[test]
fn ignore_applications_wins_over_match_applications() {
    let p = policy(
        "apps",
        Conditions {
            match_applications: NameSet::new(strings(&["api", "worker"]), &["report-.*"]).unwrap(),
            ignore_applications: NameSet::new(strings(&["worker"]), &["report-nightly"]).unwrap(),
            ..Default::default()
        },
    );
    let snap = snapshot([
        client(1).app("api"),
        client(2).app("worker"),
        client(3).app("report-daily"),
        client(4).app("report-nightly"),
        client(5).app("psql"),
        client(6).app(""),
    ]);
    let mut got = pids(&eval(&p, &snap).candidates);
    got.sort();
    assert_eq!(got, vec![1, 3]);
}

#[test]
fn ignore_users_and_databases_win_over_matches() {
    let p = policy(
        "ids",
        Conditions {
            match_users: strings(&["app", "report"]),
            ignore_users: strings(&["report"]),
            match_databases: strings(&["intelgraph", "billing"]),
            ignore_databases: strings(&["billing"]),
            ..Default::default()
        },
    );
    let snap = snapshot([
        client(1),
        client(2).user("report"),
        client(3).db("billing"),
        client(4).user("etl"),
        client(5).db("other"),
    ]);
    assert_eq!(pids(&eval(&p, &snap).candidates), vec![1]);
}

#[test]
fn client_addrs_match_and_ignore_by_cidr() {
    let both = policy(
        "nets",
        Conditions {
            match_client_addrs: nets(&["10.0.0.0/8"]),
            ignore_client_addrs: nets(&["10.1.0.0/16"]),
            ..Default::default()
        },
    );
    let snap = snapshot([
        client(1).addr("10.2.3.4"),
        client(2).addr("10.1.2.3"),
        client(3).addr("192.168.1.7"),
        client(4).unix_socket(),
        client(5).addr("::1"),
        client(6).addr("10.255.255.255"),
        client(7).addr("10.1.255.1"),
    ]);
    let mut got = pids(&eval(&both, &snap).candidates);
    got.sort();
    // The unix-socket session has no address: match_client_addrs does not match it.
    assert_eq!(got, vec![1, 6]);

    let only_ignore = policy(
        "ignore",
        Conditions {
            ignore_client_addrs: nets(&["10.1.0.0/16"]),
            ..Default::default()
        },
    );
    let mut got = pids(&eval(&only_ignore, &snap).candidates);
    got.sort();
    // ... and ignore_client_addrs does not ignore it either.
    assert_eq!(got, vec![1, 3, 4, 5, 6]);

    let v6 = policy(
        "v6",
        Conditions {
            match_client_addrs: nets(&["::1/128"]),
            ..Default::default()
        },
    );
    assert_eq!(pids(&eval(&v6, &snap).candidates), vec![5]);
}

#[test]
fn match_query_and_ignore_query_are_unanchored_searches_and_ignore_wins() {
    let p = policy(
        "q",
        Conditions {
            match_query: Some(re("(?i)from\\s+orders")),
            ignore_query: Some(re("FOR UPDATE")),
            ..Default::default()
        },
    );
    let snap = snapshot([
        client(1).query("SELECT * FROM orders WHERE id = 1"),
        client(2).query("select count(*) from   orders"),
        client(3).query("SELECT * FROM orders FOR UPDATE"),
        client(4).query("SELECT * FROM customers"),
        client(5).query("-- report\nSELECT 1 FROM orders"),
    ]);
    let mut got = pids(&eval(&p, &snap).candidates);
    got.sort();
    assert_eq!(got, vec![1, 2, 5]);

    let ignore_only = policy(
        "i",
        Conditions {
            ignore_query: Some(re("customers")),
            ..Default::default()
        },
    );
    let mut got = pids(&eval(&ignore_only, &snap).candidates);
    got.sort();
    assert_eq!(got, vec![1, 2, 3, 5]);
}

// ---------------------------------------------------------------------------
// Protections
// ---------------------------------------------------------------------------

#[test]
fn superuser_protected_unless_named_in_match_users() {
    let snap = snapshot([
        client(1).active(900.0).user("postgres").superuser(),
        client(2).active(800.0),
    ]);
    let unnamed = eval(&long_active_queries(), &snap);
    assert_eq!(pids(&unnamed.selected), vec![2]);
    assert_eq!(protected(&unnamed), vec![(1, Protection::Superuser)]);

    let mut named = long_active_queries();
    named.conditions.match_users = strings(&["postgres"]);
    let e = eval(&named, &snap);
    assert_eq!(pids(&e.selected), vec![1]);
    assert!(e.protected.is_empty());

    // Naming another user does not unprotect the superuser (it just does not match).
    let mut other = long_active_queries();
    other.conditions.match_users = strings(&["app"]);
    let e = eval(&other, &snap);
    assert_eq!(pids(&e.selected), vec![2]);
    assert!(e.protected.is_empty());

    // Ignoring the named superuser still wins.
    named.conditions.ignore_users = strings(&["postgres"]);
    assert!(eval(&named, &snap).candidates.is_empty());
}

#[test]
fn replication_role_protected_unless_named_in_match_users() {
    let snap = snapshot([
        client(1).idle(900.0).user("replicator").replication_role(),
        client(2).idle(800.0),
    ]);
    let unnamed = eval(&idle_in_intelgraph(), &snap);
    assert_eq!(pids(&unnamed.selected), vec![2]);
    assert_eq!(protected(&unnamed), vec![(1, Protection::ReplicationRole)]);

    let mut named = idle_in_intelgraph();
    named.conditions.match_users = strings(&["replicator", "app"]);
    assert_eq!(pids(&eval(&named, &snap).selected), vec![1, 2]);

    // A superuser with REPLICATION named in match_users is selectable too.
    let snap = snapshot([client(3)
        .idle(900.0)
        .user("root")
        .superuser()
        .replication_role()]);
    assert_eq!(
        protected(&eval(&idle_in_intelgraph(), &snap)),
        vec![(3, Protection::Superuser)]
    );
    named.conditions.match_users = strings(&["root"]);
    assert_eq!(pids(&eval(&named, &snap).selected), vec![3]);
}

#[test]
fn own_sessions_and_non_client_backends_are_never_selected() {
    let snap = snapshot([
        client(1).polling_self().app("psql"),
        client(2).app(APPLICATION_NAME),
        client(3).app("dbwarden-actor/x"),
        backend(4, "walsender")
            .user("replicator")
            .replication_role(),
        backend(5, "autovacuum worker").user("postgres"),
        backend(6, "background worker"),
        backend(7, "parallel worker"),
        backend(8, "logical replication worker"),
        backend(9, "autovacuum launcher"),
        client(10),
        client(11).app("dbwardenx"),
        client(12).app("my-dbwarden-actor"),
    ]);
    // No conditions at all: everything matches, only the protections remain.
    let bare = policy("everything", Conditions::default());
    let e = eval(&bare, &snap);
    let mut got = pids(&e.selected);
    got.sort();
    assert_eq!(got, vec![10, 11, 12]);
    assert_eq!(
        protected(&e),
        vec![
            (1, Protection::Own),
            (2, Protection::Own),
            (3, Protection::Own),
            (4, Protection::NotClientBackend),
            (5, Protection::NotClientBackend),
            (6, Protection::NotClientBackend),
            (7, Protection::NotClientBackend),
            (8, Protection::NotClientBackend),
            (9, Protection::NotClientBackend),
        ]
    );
    assert!(e.selected.iter().all(|c| c.reason == "no conditions"));

    // Not even when the policy names them explicitly.
    let naming = policy(
        "naming",
        Conditions {
            match_users: strings(&["app", "replicator", "postgres"]),
            match_applications: NameSet::new(
                strings(&["dbwarden", "dbwarden-actor/x", "psql", "api"]),
                &["dbwarden.*"],
            )
            .unwrap(),
            ..Default::default()
        },
    );
    let e = eval(&naming, &snap);
    let mut got = pids(&e.selected);
    got.sort();
    assert_eq!(got, vec![10, 11]);
    assert!(e.protected.iter().all(|(f, _)| f.pid < 10));

    assert!(is_own(&client(1).polling_self().0));
    assert!(is_own(&client(1).app("dbwarden").0));
    assert!(is_own(&client(1).app("dbwarden-").0));
    assert!(!is_own(&client(1).app("dbwarden2").0));
    assert!(!is_own(&client(1).app("Dbwarden").0));
}

#[test]
fn hidden_query_text_protects_when_the_policy_conditions_on_query() {
    const HIDDEN: &str = "<insufficient privilege>";
    let snap = snapshot([
        client(1).active(900.0).query(HIDDEN),
        client(2).active(800.0).query("SELECT pg_sleep(1000)"),
    ]);

    let matching = policy(
        "m",
        Conditions {
            match_query: Some(re(".*")),
            ..Default::default()
        },
    );
    let e = eval(&matching, &snap);
    assert_eq!(pids(&e.selected), vec![2]);
    assert_eq!(protected(&e), vec![(1, Protection::QueryTextHidden)]);

    let priv_text = policy(
        "p",
        Conditions {
            match_query: Some(re("privilege")),
            ..Default::default()
        },
    );
    let e = eval(&priv_text, &snap);
    assert!(e.selected.is_empty());
    assert_eq!(protected(&e), vec![(1, Protection::QueryTextHidden)]);

    // An ignore cannot be checked against a hidden text either: protected.
    let ignoring = policy(
        "i",
        Conditions {
            ignore_query: Some(re("pg_sleep")),
            ..Default::default()
        },
    );
    let e = eval(&ignoring, &snap);
    assert!(e.selected.is_empty());
    assert_eq!(protected(&e), vec![(1, Protection::QueryTextHidden)]);

    // A policy that does not look at the text may select the session.
    assert_eq!(
        pids(&eval(&long_active_queries(), &snap).selected),
        vec![1, 2]
    );
}

// ---------------------------------------------------------------------------
// Lock chains
// ---------------------------------------------------------------------------

fn blocking(min_waiters: u32, waited_for: u64) -> Policy {
    policy(
        "blocking",
        Conditions {
            blocking_waiters: Some(min_waiters),
            blocking_for: Some(Duration::from_secs(waited_for)),
            ..Default::default()
        },
    )
}

/// Root 10 (idle in transaction) ← 11 ← 12 ← 13, each waiting 30 s; plus
/// an unrelated client 20 and a short waiter 31 behind 30.
fn lock_chain() -> PgSnapshot {
    snapshot([
        client(10).idle_in_transaction(120.0),
        client(11).waits_on(&[10], 30.0),
        client(12).waits_on(&[11], 30.0),
        client(13).waits_on(&[12, 11], 30.0),
        client(20).active(500.0),
        client(30).idle_in_transaction(100.0),
        client(31).waits_on(&[30], 2.0),
    ])
}

#[test]
fn blocking_root_with_three_transitive_waiters() {
    let snap = lock_chain();
    let e = eval(&blocking(3, 10), &snap);
    assert_eq!(pids(&e.selected), vec![10]);
    assert_eq!(e.selected[0].facts.blocked_waiters, 3);
    assert!(
        e.selected[0]
            .reason
            .contains("blocks 3 sessions waiting ≥ 10s (lock chain root)"),
        "{}",
        e.selected[0].reason
    );

    assert!(eval(&blocking(4, 10), &snap).candidates.is_empty());

    // 11 has two waiters behind it but waits itself: never a root.
    let e = eval(&blocking(2, 10), &snap);
    assert_eq!(pids(&e.candidates), vec![10]);
    let e = eval(&blocking(1, 10), &snap);
    assert_eq!(pids(&e.candidates), vec![10]);

    // The short waiter only counts once the threshold is below its wait.
    let e = eval(&blocking(1, 1), &snap);
    let mut got = pids(&e.candidates);
    got.sort();
    assert_eq!(got, vec![10, 30]);
    // A long threshold counts nobody.
    assert!(eval(&blocking(1, 31), &snap).candidates.is_empty());
}

#[test]
fn waited_is_measured_from_lock_wait_start_falling_back_to_query_start() {
    // Query running 100 s, but waiting for the lock only 2 s.
    let mut late_waiter = client(2).waits_on(&[1], 2.0);
    late_waiter.0.query_start_us = Some(ago(100.0));
    let snap = snapshot([
        client(1).idle_in_transaction(600.0),
        late_waiter,
        client(3).idle_in_transaction(600.0),
        // No waitstart: the wait counts from the query start, 40 s.
        client(4).waits_on_since_query(&[3], 40.0),
    ]);
    assert_eq!(pids(&eval(&blocking(1, 10), &snap).candidates), vec![3]);
    let mut got = pids(&eval(&blocking(1, 2), &snap).candidates);
    got.sort();
    assert_eq!(got, vec![1, 3]);
}

#[test]
fn blocking_combines_with_other_conditions() {
    let mut p = blocking(3, 10);
    p.conditions.states = vec![SessionState::IdleInTransaction];
    p.conditions.idle_for = secs(60);
    let e = eval(&p, &lock_chain());
    assert_eq!(pids(&e.selected), vec![10]);
    let r = &e.selected[0].reason;
    assert!(
        r.contains("state idle_in_transaction")
            && r.contains("idle 120s ≥ 60s")
            && r.contains("blocks 3"),
        "{r}"
    );

    p.conditions.idle_for = secs(121);
    assert!(eval(&p, &lock_chain()).candidates.is_empty());
}

// ---------------------------------------------------------------------------
// Gate, victims, reasons, select
// ---------------------------------------------------------------------------

#[test]
fn closed_gate_selects_nothing_but_reports_candidates() {
    let mut p = idle_in_intelgraph();
    p.only_while_failing = vec![CheckId::ConnectionsUsed.into(), CheckId::IdleSession.into()];
    let snap = snapshot([client(1).idle(700.0), client(2).idle(900.0)]);

    let e = evaluate_policy(&p, &snap, gates(&[CheckId::IdleSession.into()]));
    assert!(!e.gate_open);
    assert!(e.selected.is_empty());
    assert_eq!(pids(&e.candidates), vec![2, 1]);
    assert_eq!(
        e.gate_reason,
        "not under pressure: connections_used not failing"
    );

    let e = evaluate_policy(&p, &snap, gates(&[]));
    assert!(!e.gate_open && e.selected.is_empty() && e.candidates.len() == 2);
    assert_eq!(
        e.gate_reason,
        "not under pressure: connections_used, idle_session not failing"
    );

    let e = evaluate_policy(
        &p,
        &snap,
        gates(&[
            CheckId::IdleSession.into(),
            CheckId::LongRunningQuery.into(),
            CheckId::ConnectionsUsed.into(),
        ]),
    );
    assert!(e.gate_open);
    assert_eq!(pids(&e.selected), vec![2, 1]);
    assert_eq!(
        e.gate_reason,
        "under pressure: connections_used, idle_session failing"
    );

    // The gate closes select too.
    let (evals, chosen) = select(
        &[p],
        "db1",
        &snap,
        gates(&[CheckId::ConnectionsUsed.into()]),
    );
    assert_eq!(evals.len(), 1);
    assert!(chosen.is_empty());
}

#[test]
fn oldest_picks_exactly_one_and_all_respects_the_cap() {
    let snap = snapshot([
        client(5).active(400.0),
        client(3).active(900.0),
        client(4).active(900.0),
        client(6).active(350.0),
        // Connected long ago, but its query is young: the policy's measure is the query.
        client(7).active(310.0).connected(100_000.0),
    ]);
    let mut p = long_active_queries();
    p.victims = Victims::Oldest;
    p.max_per_cycle = 5;
    let e = eval(&p, &snap);
    assert_eq!(pids(&e.candidates), vec![3, 4, 5, 6, 7]);
    assert_eq!(pids(&e.selected), vec![3]);

    p.victims = Victims::All;
    p.max_per_cycle = 2;
    assert_eq!(pids(&eval(&p, &snap).selected), vec![3, 4]);
    p.max_per_cycle = 0;
    let e = eval(&p, &snap);
    assert!(e.selected.is_empty() && e.candidates.len() == 5);

    // Without a duration condition the measure is the connection age.
    let bare = policy(
        "bare",
        Conditions {
            states: vec![SessionState::Active],
            ..Default::default()
        },
    );
    let e = eval(&bare, &snap);
    assert_eq!(pids(&e.candidates)[0], 7);
    assert_eq!(e.candidates[0].age_seconds, 100_000.0);
}

#[test]
fn age_follows_the_duration_the_policy_conditions_on() {
    let snap = snapshot([
        client(1).idle_in_transaction(100.0).connected(5000.0),
        client(2).idle_in_transaction(200.0),
    ]);
    let by = |c: Conditions| {
        eval(&policy("p", c), &snap)
            .candidates
            .iter()
            .map(|c| (c.facts.pid, c.age_seconds))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(Conditions {
            idle_for: secs(0),
            ..Default::default()
        }),
        vec![(2, 200.0), (1, 100.0)]
    );
    assert_eq!(
        by(Conditions {
            transaction_open_for: secs(0),
            ..Default::default()
        }),
        vec![(2, 201.0), (1, 101.0)]
    );
    assert_eq!(
        by(Conditions {
            connected_for: secs(0),
            ..Default::default()
        }),
        vec![(2, 7200.0), (1, 5000.0)]
    );
    // Transaction before idle when both are set.
    assert_eq!(
        by(Conditions {
            idle_for: secs(0),
            transaction_open_for: secs(0),
            ..Default::default()
        }),
        vec![(2, 201.0), (1, 101.0)]
    );

    // Query before transaction: two active sessions whose transactions are
    // older than their current queries, in the opposite order.
    let mut young_query_old_xact = client(3).active(350.0);
    young_query_old_xact.0.xact_start_us = Some(ago(3000.0));
    let mut old_query_young_xact = client(4).active(900.0);
    old_query_young_xact.0.xact_start_us = Some(ago(1000.0));
    let snap = snapshot([young_query_old_xact, old_query_young_xact]);
    let p = policy(
        "q+x",
        Conditions {
            query_running_for: secs(300),
            transaction_open_for: secs(300),
            ..Default::default()
        },
    );
    let e = eval(&p, &snap);
    assert_eq!(
        e.candidates
            .iter()
            .map(|c| (c.facts.pid, c.age_seconds))
            .collect::<Vec<_>>(),
        vec![(4, 900.0), (3, 350.0)]
    );
}

#[test]
fn reason_names_each_condition_that_held() {
    let p = policy(
        "all",
        Conditions {
            states: vec![SessionState::Active],
            query_running_for: secs(300),
            transaction_open_for: secs(60),
            connected_for: secs(600),
            match_query: Some(re("(?i)orders")),
            ..Default::default()
        },
    );
    let snap = snapshot([client(1).active(400.0).query("SELECT * FROM orders")]);
    let e = eval(&p, &snap);
    assert_eq!(
        e.selected[0].reason,
        "state active, query running 400s ≥ 300s, transaction open 400s ≥ 60s, connected 7200s ≥ 600s, query matches /(?i)orders/"
    );

    let e = eval(&idle_in_intelgraph(), &snapshot([client(2).idle(700.4)]));
    let r = &e.selected[0].reason;
    assert!(r.starts_with("state idle, idle 700s ≥ 600s"), "{r}");

    let e = eval(
        &policy("none", Conditions::default()),
        &snapshot([client(3)]),
    );
    assert_eq!(e.selected[0].reason, "no conditions");
}

#[test]
fn select_acts_on_a_session_once_first_policy_wins() {
    let snap = snapshot([
        client(1).active(900.0),
        client(2).active(400.0).db("billing"),
        client(3).idle(700.0),
        client(4).idle(100.0),
    ]);
    let first = long_active_queries();
    let mut everything = policy("everything", Conditions::default());
    everything.kind = Some(ActionKind::Cancel);
    let mut elsewhere = policy("elsewhere", Conditions::default());
    elsewhere.targets = Some(strings(&["db2"]));

    let (evals, chosen) = select(
        &[first.clone(), everything.clone(), elsewhere.clone()],
        "db1",
        &snap,
        gates(&[]),
    );
    assert_eq!(
        evals.iter().map(|e| e.policy.as_str()).collect::<Vec<_>>(),
        vec!["long-queries", "everything"]
    );
    assert_eq!(
        chosen
            .iter()
            .map(|c| (c.facts.pid, c.policy.as_str(), c.action))
            .collect::<Vec<_>>(),
        vec![
            (1, "long-queries", Action::Terminate),
            (2, "long-queries", Action::Terminate),
            (3, "everything", Action::Cancel),
            (4, "everything", Action::Cancel),
        ]
    );

    let (evals, chosen) = select(&[everything, first], "db2", &snap, gates(&[]));
    assert_eq!(evals.len(), 2);
    assert!(chosen.iter().all(|c| c.policy == "everything"));
    assert_eq!(chosen.len(), 4);

    let (evals, chosen) = select(&[elsewhere], "db1", &snap, gates(&[]));
    assert!(evals.is_empty() && chosen.is_empty());
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

const USERS: [&str; 4] = ["app", "report", "postgres", "replicator"];
const DBS: [&str; 2] = ["intelgraph", "other"];
const APPS: [&str; 7] = [
    "api",
    "worker",
    "psql",
    "",
    "report-nightly",
    "dbwarden",
    "dbwarden-actor/x",
];
const ADDRS: [Option<&str>; 5] = [
    None,
    Some("10.1.2.3"),
    Some("10.2.0.5"),
    Some("192.168.1.7"),
    Some("::1"),
];
const QUERIES: [&str; 5] = [
    "SELECT 1",
    "select * from orders",
    "UPDATE orders SET paid = true",
    "<insufficient privilege>",
    "VACUUM",
];
const BACKENDS: [&str; 8] = [
    "client backend",
    "client backend",
    "client backend",
    "client backend",
    "walsender",
    "autovacuum worker",
    "background worker",
    "parallel worker",
];
const NETS: [&str; 4] = ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "::1/128"];
// Anchored on purpose: NameSet documents full-match patterns; see the report
// on `NameSet::contains`, which searches unanchored.
const APP_PATTERNS: [&str; 3] = ["^report-.*$", "^(api|worker)$", "^dbwarden.*$"];
const QUERY_PATTERNS: [&str; 4] = ["orders", "(?i)^select", "privilege", "^VACUUM$"];
fn gate_checks() -> [CheckName; 4] {
    [
        CheckName::Builtin(CheckId::ConnectionsUsed),
        CheckName::Builtin(CheckId::LongRunningQuery),
        CheckName::Builtin(CheckId::IdleSession),
        CheckName::Probe("probe:entities:rows".to_string()),
    ]
}
const TARGET: &str = "db1";

/// An age in µs: often a round threshold-like value (for ties), else anything up to an hour.
fn age_us() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..=3_600_000_000,
        1 => prop::sample::select(vec![0i64, 300_000_000, 600_000_000, 3_600_000_000]),
    ]
}

fn ts() -> impl Strategy<Value = Option<i64>> {
    prop::option::weighted(0.85, age_us().prop_map(|a| NOW_US - a))
}

/// Sessions with pids 100.. in shuffled order; lock waiters point at random pids of the snapshot.
pub(crate) fn sessions() -> impl Strategy<Value = Vec<Session>> {
    let one = (
        (
            prop::sample::select(BACKENDS.to_vec()),
            prop_oneof![
                3 => Just(SessionState::Active),
                2 => Just(SessionState::Idle),
                2 => Just(SessionState::IdleInTransaction),
                1 => prop::sample::select(SessionState::ALL.to_vec()),
            ],
            prop::option::weighted(0.9, prop::sample::select(USERS.to_vec())),
            prop::option::weighted(0.9, prop::sample::select(DBS.to_vec())),
            prop::sample::select(APPS.to_vec()),
            prop::sample::select(ADDRS.to_vec()),
            prop::sample::select(QUERIES.to_vec()),
        ),
        (ts(), ts(), ts(), ts()),
        (
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.04),
        ),
        prop::option::weighted(0.3, (prop::collection::vec(0usize..60, 1..3), ts())),
    );
    prop::collection::vec(one, 0..=60)
        .prop_flat_map(|raw| {
            let n = raw.len();
            (
                Just(raw),
                Just((0..n as i32).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(|(raw, perm)| {
            let n = raw.len();
            raw.into_iter()
                .enumerate()
                .map(
                    |(
                        i,
                        (
                            (bt, state, user, db, app, addr, query),
                            (bs, xs, qs, sc),
                            (su, repl, me),
                            lock,
                        ),
                    )| {
                        let (blocked_by, lock_wait_start_us, wait_event_type) = match lock {
                            Some((to, since)) => (
                                to.into_iter().map(|j| 100 + perm[j % n]).collect(),
                                since,
                                Some(Arc::from("Lock")),
                            ),
                            None => (
                                Vec::new(),
                                None,
                                Some(Arc::from("ClientRead"))
                                    .filter(|_| state != SessionState::Active),
                            ),
                        };
                        Session {
                            pid: 100 + perm[i],
                            backend_type: bt.into(),
                            state,
                            user: user.map(Arc::from),
                            database: db.map(Arc::from),
                            application_name: app.into(),
                            client_addr: addr.map(Arc::from),
                            backend_start_us: bs,
                            xact_start_us: xs,
                            query_start_us: qs,
                            state_change_us: sc,
                            wait_event_type,
                            blocked_by,
                            lock_wait_start_us,
                            query: query.into(),
                            is_superuser: user == Some("postgres") || su,
                            is_replication_role: user == Some("replicator") || repl,
                            is_self: me,
                        }
                    },
                )
                .collect()
        })
}

/// A random subset of `items`, empty more often than not.
fn some_of<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = Vec<T>> {
    let n = items.len();
    prop_oneof![
        5 => Just(Vec::new()),
        1 => prop::sample::subsequence(items.to_vec(), 1..=n),
    ]
}

fn duration() -> impl Strategy<Value = Option<Duration>> {
    prop::option::weighted(
        0.15,
        prop_oneof![0u64..=1800, Just(300), Just(600)].prop_map(Duration::from_secs),
    )
}

fn name_set() -> impl Strategy<Value = NameSet> {
    (some_of(&APPS), some_of(&APP_PATTERNS)).prop_map(|(exact, patterns)| {
        NameSet::new(exact.into_iter().map(String::from).collect(), &patterns).unwrap()
    })
}

fn query_re() -> impl Strategy<Value = Option<Pattern>> {
    prop::option::weighted(
        0.15,
        prop::sample::select(QUERY_PATTERNS.to_vec()).prop_map(re),
    )
}

fn conditions() -> impl Strategy<Value = Conditions> {
    (
        (
            some_of(&SessionState::ALL),
            duration(),
            duration(),
            duration(),
            duration(),
        ),
        (
            some_of(&USERS),
            some_of(&USERS),
            some_of(&DBS),
            some_of(&DBS),
        ),
        (name_set(), name_set(), some_of(&NETS), some_of(&NETS)),
        (
            query_re(),
            query_re(),
            prop::option::weighted(0.15, (0u32..5, 0u64..=120)),
        ),
    )
        .prop_map(
            |(
                (states, idle_for, query_running_for, transaction_open_for, connected_for),
                (match_users, ignore_users, match_databases, ignore_databases),
                (match_applications, ignore_applications, match_nets, ignore_nets),
                (match_query, ignore_query, blocking),
            )| Conditions {
                states,
                idle_for,
                query_running_for,
                transaction_open_for,
                connected_for,
                match_users: match_users.into_iter().map(String::from).collect(),
                ignore_users: ignore_users.into_iter().map(String::from).collect(),
                match_databases: match_databases.into_iter().map(String::from).collect(),
                ignore_databases: ignore_databases.into_iter().map(String::from).collect(),
                match_applications,
                ignore_applications,
                match_client_addrs: nets(&match_nets),
                ignore_client_addrs: nets(&ignore_nets),
                match_query,
                ignore_query,
                blocking_waiters: blocking.map(|(m, _)| m),
                blocking_for: blocking.map(|(_, w)| Duration::from_secs(w)),
            },
        )
}

pub(crate) fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        conditions(),
        prop::sample::select(vec![Victims::All, Victims::Oldest]),
        0u32..=5,
        gate_subset(),
        some_of(&["db1", "db2"]),
        prop::sample::select(vec![ActionKind::Cancel, ActionKind::Terminate]),
    )
        .prop_map(
            |(conditions, victims, max_per_cycle, gate, targets, action)| Policy {
                name: "p".into(),
                // No targets: every target.
                targets: (!targets.is_empty())
                    .then(|| targets.into_iter().map(String::from).collect()),
                kind: Some(action),
                grace: None,
                victims,
                max_per_cycle,
                conditions,
                only_while_failing: gate,
                only_while_alerts: Vec::new(),
            },
        )
}

/// Some gate checks, usually none (as `some_of`).
fn gate_subset() -> impl Strategy<Value = Vec<CheckName>> {
    prop_oneof![
        5 => Just(Vec::new()),
        1 => prop::sample::subsequence(gate_checks().to_vec(), 1..=4),
    ]
}

pub(crate) fn failing() -> impl Strategy<Value = Vec<CheckName>> {
    prop::sample::subsequence(gate_checks().to_vec(), 0..=4)
}

// --- The oracle: the rules restated, independently of the module ---------

fn age_of(ts: Option<i64>) -> Option<f64> {
    ts.map(|t| (NOW_US - t).max(0) as f64 / 1e6)
}

fn idle_secs(s: &Session) -> Option<f64> {
    matches!(
        s.state,
        SessionState::Idle
            | SessionState::IdleInTransaction
            | SessionState::IdleInTransactionAborted
    )
    .then(|| age_of(s.state_change_us))
    .flatten()
}

fn query_secs(s: &Session) -> Option<f64> {
    (s.state == SessionState::Active)
        .then(|| age_of(s.query_start_us))
        .flatten()
}

fn waits(s: &Session) -> bool {
    s.wait_event_type.as_deref() == Some("Lock")
}

/// For every pid, the sessions waiting (at least `min`) behind it, directly or transitively.
fn waiters_behind(snap: &PgSnapshot, min: Duration) -> HashMap<i32, usize> {
    let by_pid: HashMap<i32, &Session> = snap.sessions.iter().map(|s| (s.pid, s)).collect();
    let mut behind: HashMap<i32, HashSet<i32>> = HashMap::new();
    for w in snap.sessions.iter().filter(|s| waits(s)) {
        let waited = age_of(w.lock_wait_start_us.or(w.query_start_us)).unwrap_or(0.0);
        if waited < min.as_secs_f64() {
            continue;
        }
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        let mut frontier: Vec<i32> = w.blocked_by.clone();
        while let Some(p) = frontier.pop() {
            if p != w.pid
                && seen.insert(p)
                && let Some(b) = by_pid.get(&p)
            {
                frontier.extend(b.blocked_by.iter().copied());
            }
        }
        for p in seen {
            behind.entry(p).or_default().insert(w.pid);
        }
    }
    behind.into_iter().map(|(p, ws)| (p, ws.len())).collect()
}

fn in_nets(addr: &Option<Arc<str>>, nets: &[IpNet]) -> bool {
    addr.as_deref()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
}

fn named(set: &NameSet, v: &str) -> bool {
    set.exact.iter().any(|e| e == v) || set.patterns.iter().any(|p| p.is_match(v))
}

fn listed(list: &[String], v: &Option<Arc<str>>) -> bool {
    v.as_deref().is_some_and(|v| list.iter().any(|l| l == v))
}

/// Every condition the policy sets holds for `s`.
fn meets(c: &Conditions, s: &Session, snap: &PgSnapshot) -> bool {
    let at_least = |v: Option<f64>, min: Option<Duration>| {
        min.is_none_or(|m| v.is_some_and(|v| v >= m.as_secs_f64()))
    };
    (c.states.is_empty() || c.states.contains(&s.state))
        && at_least(idle_secs(s), c.idle_for)
        && at_least(query_secs(s), c.query_running_for)
        && at_least(age_of(s.xact_start_us), c.transaction_open_for)
        && at_least(age_of(s.backend_start_us), c.connected_for)
        && !listed(&c.ignore_users, &s.user)
        && (c.match_users.is_empty() || listed(&c.match_users, &s.user))
        && !listed(&c.ignore_databases, &s.database)
        && (c.match_databases.is_empty() || listed(&c.match_databases, &s.database))
        && !named(&c.ignore_applications, &s.application_name)
        && (c.match_applications.is_empty() || named(&c.match_applications, &s.application_name))
        && !in_nets(&s.client_addr, &c.ignore_client_addrs)
        && (c.match_client_addrs.is_empty() || in_nets(&s.client_addr, &c.match_client_addrs))
        && !c
            .ignore_query
            .as_ref()
            .is_some_and(|r| r.is_match(&s.query))
        && c.match_query.as_ref().is_none_or(|r| r.is_match(&s.query))
        && c.blocking().is_none_or(|b| {
            !waits(s)
                && waiters_behind(snap, b.waited_for)
                    .get(&s.pid)
                    .copied()
                    .unwrap_or(0)
                    >= b.min_waiters as usize
        })
}

/// `s` must never be touched by `p`.
fn must_not_touch(p: &Policy, s: &Session) -> bool {
    let c = &p.conditions;
    let own = s.is_self
        || &*s.application_name == "dbwarden"
        || s.application_name.starts_with("dbwarden-");
    let named_user = listed(&c.match_users, &s.user);
    own || &*s.backend_type != "client backend"
        || (s.is_superuser && !named_user)
        || (s.is_replication_role && !named_user)
        || ((c.match_query.is_some() || c.ignore_query.is_some())
            && &*s.query == "<insufficient privilege>")
}

/// The policy's own measure of age.
fn oracle_age(c: &Conditions, s: &Session) -> f64 {
    let connected = age_of(s.backend_start_us);
    let pick = if c.query_running_for.is_some() {
        query_secs(s)
    } else if c.transaction_open_for.is_some() {
        age_of(s.xact_start_us)
    } else if c.idle_for.is_some() {
        idle_secs(s)
    } else {
        connected
    };
    pick.or(connected).unwrap_or(0.0)
}

fn session(snap: &PgSnapshot, pid: i32) -> &Session {
    snap.sessions
        .iter()
        .find(|s| s.pid == pid)
        .expect("candidate pid is in the snapshot")
}

fn pid_set(cs: &[Candidate]) -> BTreeSet<i32> {
    cs.iter().map(|c| c.facts.pid).collect()
}

/// Makes `p` stricter by one condition taken from `q` (the `field`-th); the
/// result's conditions imply `p`'s. Returns whether `match_users` was added
/// (which may unprotect named superusers and replication roles).
fn add_condition(p: &Policy, q: &Conditions, field: usize) -> (Policy, bool) {
    let mut s = p.clone();
    let c = &mut s.conditions;
    let max_dur = |a: Option<Duration>, b: Option<Duration>| a.max(b);
    let mut added_match_users = false;
    match field % 16 {
        0 if c.states.is_empty() => c.states = q.states.clone(),
        0 => {
            // Narrow to the intersection, unless that is empty (which would mean "any").
            let both: Vec<SessionState> = c
                .states
                .iter()
                .copied()
                .filter(|st| q.states.contains(st))
                .collect();
            if !both.is_empty() {
                c.states = both;
            }
        }
        1 => c.idle_for = max_dur(c.idle_for, q.idle_for),
        2 => c.query_running_for = max_dur(c.query_running_for, q.query_running_for),
        3 => c.transaction_open_for = max_dur(c.transaction_open_for, q.transaction_open_for),
        4 => c.connected_for = max_dur(c.connected_for, q.connected_for),
        5 if c.match_users.is_empty() => {
            c.match_users = q.match_users.clone();
            added_match_users = !q.match_users.is_empty();
        }
        6 => c.ignore_users.extend(q.ignore_users.iter().cloned()),
        7 if c.match_databases.is_empty() => c.match_databases = q.match_databases.clone(),
        8 => c
            .ignore_databases
            .extend(q.ignore_databases.iter().cloned()),
        9 if c.match_applications.is_empty() => c.match_applications = q.match_applications.clone(),
        10 => {
            c.ignore_applications
                .exact
                .extend(q.ignore_applications.exact.iter().cloned());
            c.ignore_applications
                .patterns
                .extend(q.ignore_applications.patterns.iter().cloned());
        }
        11 if c.match_client_addrs.is_empty() => {
            c.match_client_addrs = q.match_client_addrs.clone()
        }
        12 => c
            .ignore_client_addrs
            .extend(q.ignore_client_addrs.iter().cloned()),
        13 if c.match_query.is_none() => c.match_query = q.match_query.clone(),
        14 if c.ignore_query.is_none() => c.ignore_query = q.ignore_query.clone(),
        15 if c.blocking_waiters.is_none() => {
            c.blocking_waiters = q.blocking_waiters;
            c.blocking_for = q.blocking_for;
        }
        _ => {}
    }
    (s, added_match_users)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) No protected session is ever selected, nor even listed as a candidate.
    #[test]
    fn never_selects_a_protected_session(snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing()) {
        let e = evaluate_policy(&p, &snap, gates(&f));
        for c in e.candidates.iter().chain(&e.selected) {
            let s = session(&snap, c.facts.pid);
            prop_assert!(!must_not_touch(&p, s), "protected session {:?} is a candidate of {:?}", s, p);
            prop_assert!(!is_own(s));
            prop_assert!(s.is_client_backend());
        }
        for (f, why) in &e.protected {
            prop_assert!(must_not_touch(&p, session(&snap, f.pid)), "{} protected ({:?}) for no reason", f.pid, why);
        }
    }

    /// (b) The cap and the gate bound the selection.
    #[test]
    fn selection_respects_cap_and_gate(snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing()) {
        let e = evaluate_policy(&p, &snap, gates(&f));
        let gate_open = p.only_while_failing.iter().all(|c| f.contains(c));
        prop_assert_eq!(e.gate_open, gate_open);
        let cap = match p.victims { Victims::All => p.max_per_cycle as usize, Victims::Oldest => 1 };
        prop_assert!(e.selected.len() <= cap);
        if gate_open {
            prop_assert_eq!(e.selected.len(), cap.min(e.candidates.len()));
        } else {
            prop_assert!(e.selected.is_empty());
        }
    }

    /// (c) An ignore always wins, whatever the matches say.
    #[test]
    fn an_ignore_always_wins(snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing()) {
        let e = evaluate_policy(&p, &snap, gates(&f));
        let c = &p.conditions;
        for cand in e.candidates.iter().chain(&e.selected) {
            let s = session(&snap, cand.facts.pid);
            prop_assert!(!listed(&c.ignore_users, &s.user));
            prop_assert!(!listed(&c.ignore_databases, &s.database));
            prop_assert!(!named(&c.ignore_applications, &s.application_name));
            prop_assert!(!in_nets(&s.client_addr, &c.ignore_client_addrs));
            prop_assert!(!c.ignore_query.as_ref().is_some_and(|r| r.is_match(&s.query)));
        }
    }

    /// (d) Every candidate meets every condition the policy sets (AND); and,
    /// conversely, every unprotected session meeting them is a candidate and
    /// every protected one is reported as protected.
    #[test]
    fn candidates_are_exactly_the_unprotected_sessions_meeting_every_condition(
        snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing(),
    ) {
        let e = evaluate_policy(&p, &snap, gates(&f));
        for cand in &e.candidates {
            let s = session(&snap, cand.facts.pid);
            prop_assert!(meets(&p.conditions, s, &snap), "candidate {:?} fails a condition of {:?}", s, p.conditions);
            prop_assert_eq!(&cand.facts.state, &s.state);
            prop_assert_eq!(&cand.policy, &p.name);
            prop_assert_eq!(cand.action, p.action());
        }
        let expected: BTreeSet<i32> =
            snap.sessions.iter().filter(|s| meets(&p.conditions, s, &snap) && !must_not_touch(&p, s)).map(|s| s.pid).collect();
        prop_assert_eq!(pid_set(&e.candidates), expected);
        let expected_protected: BTreeSet<i32> =
            snap.sessions.iter().filter(|s| meets(&p.conditions, s, &snap) && must_not_touch(&p, s)).map(|s| s.pid).collect();
        prop_assert_eq!(e.protected.iter().map(|(f, _)| f.pid).collect::<BTreeSet<_>>(), expected_protected);
    }

    /// (e) Selected is a prefix of the candidates, which are ordered by the
    /// policy's age (descending), then pid (ascending).
    #[test]
    fn victims_are_the_oldest_candidates(snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing()) {
        let e = evaluate_policy(&p, &snap, gates(&f));
        prop_assert!(e.selected.len() <= e.candidates.len());
        // The selected are the first candidates; their reason also says why
        // the gate was open, when the policy has one.
        let gated = !p.only_while_failing.is_empty() || !p.only_while_alerts.is_empty();
        for (s, c) in e.selected.iter().zip(&e.candidates) {
            prop_assert_eq!(&s.facts, &c.facts);
            let want = if gated { format!("{}; {}", c.reason, e.gate_reason) } else { c.reason.clone() };
            prop_assert_eq!(&s.reason, &want);
        }
        for c in &e.candidates {
            prop_assert_eq!(c.age_seconds, oracle_age(&p.conditions, session(&snap, c.facts.pid)));
        }
        for w in e.candidates.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            prop_assert!(
                a.age_seconds > b.age_seconds || (a.age_seconds == b.age_seconds && a.facts.pid < b.facts.pid),
                "out of order: {} ({}s) before {} ({}s)", a.facts.pid, a.age_seconds, b.facts.pid, b.age_seconds
            );
        }
    }

    /// (f) Across policies a session is acted on at most once, by the first
    /// applicable policy that selected it, and only if some policy selected it.
    #[test]
    fn select_acts_at_most_once(
        snap in sessions().prop_map(snapshot_of),
        ps in prop::collection::vec(policy_strategy(), 1..=3),
        f in failing(),
    ) {
        let ps: Vec<Policy> = ps.into_iter().enumerate().map(|(i, mut p)| { p.name = format!("p{i}"); p }).collect();
        let (evals, chosen) = select(&ps, TARGET, &snap, gates(&f));
        let applicable: Vec<&str> = ps.iter().filter(|p| p.applies_to(TARGET)).map(|p| p.name.as_str()).collect();
        prop_assert_eq!(evals.iter().map(|e| e.policy.as_str()).collect::<Vec<_>>(), applicable);
        let mut seen = HashSet::new();
        for c in &chosen {
            prop_assert!(seen.insert(c.facts.pid), "pid {} chosen twice", c.facts.pid);
            let first = evals.iter().find(|e| e.selected.iter().any(|x| x.facts.pid == c.facts.pid));
            prop_assert!(first.is_some(), "pid {} chosen but selected by no policy", c.facts.pid);
            prop_assert_eq!(&c.policy, &first.unwrap().policy);
            prop_assert!(!must_not_touch(ps.iter().find(|p| p.name == c.policy).unwrap(), session(&snap, c.facts.pid)));
        }
        let all_selected: BTreeSet<i32> = evals.iter().flat_map(|e| e.selected.iter().map(|c| c.facts.pid)).collect();
        prop_assert_eq!(chosen.iter().map(|c| c.facts.pid).collect::<BTreeSet<_>>(), all_selected);
    }

    /// (g) AND semantics: a stricter policy never has more matching sessions,
    /// nor more candidates; except that naming users in `match_users` lifts
    /// the superuser / replication-role protection for exactly those users.
    #[test]
    fn adding_a_condition_never_adds_candidates(
        snap in sessions().prop_map(snapshot_of),
        p in policy_strategy(),
        q in conditions(),
        field in 0usize..16,
        f in failing(),
    ) {
        let (strict, added_match_users) = add_condition(&p, &q, field);
        let loose_e = evaluate_policy(&p, &snap, gates(&f));
        let strict_e = evaluate_policy(&strict, &snap, gates(&f));
        let matched = |e: &PolicyEvaluation| -> BTreeSet<i32> {
            e.candidates.iter().map(|c| c.facts.pid).chain(e.protected.iter().map(|(f, _)| f.pid)).collect()
        };
        prop_assert!(matched(&strict_e).is_subset(&matched(&loose_e)));
        let (loose_c, strict_c) = (pid_set(&loose_e.candidates), pid_set(&strict_e.candidates));
        for pid in strict_c.difference(&loose_c) {
            let s = session(&snap, *pid);
            prop_assert!(
                added_match_users && (s.is_superuser || s.is_replication_role) && listed(&strict.conditions.match_users, &s.user),
                "stricter policy added candidate {:?}", s
            );
        }
        if !added_match_users {
            prop_assert!(strict_c.is_subset(&loose_c));
        }
    }

    /// Lock chains in depth: with a blocking-only policy the candidates are
    /// exactly the non-waiting sessions with enough long-enough waiters behind
    /// them, and `blocked_waiters` is the oracle's count.
    #[test]
    fn blocking_roots_match_the_oracle(
        snap in sessions().prop_map(snapshot_of),
        min_waiters in 0u32..6,
        waited in 0u64..=120,
    ) {
        let waited_for = Duration::from_secs(waited);
        let p = policy("roots", Conditions {
            blocking_waiters: Some(min_waiters),
            blocking_for: Some(waited_for),
            ..Default::default()
        });
        let e = evaluate_policy(&p, &snap, gates(&[]));
        let behind = waiters_behind(&snap, waited_for);
        let count = |pid: i32| behind.get(&pid).copied().unwrap_or(0);
        let facts = e.protected.iter().map(|(f, _)| f).chain(e.candidates.iter().map(|c| &c.facts));
        for f in facts {
            prop_assert_eq!(f.blocked_waiters as usize, count(f.pid));
            prop_assert!(!waits(session(&snap, f.pid)), "a waiter {} was taken for a root", f.pid);
        }
        let expected: BTreeSet<i32> = snap
            .sessions
            .iter()
            .filter(|s| !waits(s) && count(s.pid) >= min_waiters as usize && !must_not_touch(&p, s))
            .map(|s| s.pid)
            .collect();
        prop_assert_eq!(pid_set(&e.candidates), expected);
    }
}

#[test]
fn reason_names_identity_conditions_that_held() {
    let p = policy(
        "identity",
        Conditions {
            match_users: strings(&["app"]),
            match_databases: strings(&["intelgraph"]),
            match_applications: NameSet::new(strings(&["api"]), &[] as &[&str]).unwrap(),
            match_client_addrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        },
    );
    let s = snapshot([client(1)
        .user("app")
        .db("intelgraph")
        .app("api")
        .addr("10.2.3.4")]);
    let e = eval(&p, &s);
    let r = &e.selected[0].reason;
    for w in [
        "user app",
        "database intelgraph",
        "application api",
        "client 10.2.3.4 in 10.0.0.0/8",
    ] {
        assert!(r.contains(w), "reason {r:?} does not name {w}");
    }
}

#[test]
fn nameset_patterns_are_full_match() {
    let set = NameSet::new(vec![], &["psql"]).unwrap();
    assert!(set.contains("psql"));
    assert!(!set.contains("psql-admin"));
    assert!(!set.contains("billing-psql-loader"));
    // Alternation is anchored as a whole: `a|ab` matches "ab".
    assert!(NameSet::new(vec![], &["a|ab"]).unwrap().contains("ab"));
}

#[test]
fn ipv4_mapped_client_addresses_match_ipv4_networks() {
    let p = policy(
        "net",
        Conditions {
            ignore_client_addrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        },
    );
    let s = snapshot([
        client(1).addr("::ffff:10.1.2.3"),
        client(2).addr("192.168.1.1"),
    ]);
    assert_eq!(pids(&eval(&p, &s).selected), vec![2]);
}

/// Gates with these checks failing and no alert firing.
pub(crate) fn gates(failing: &[CheckName]) -> Gates<'_> {
    Gates {
        failing,
        firing_alerts: &[],
    }
}

#[test]
fn alert_gate_opens_only_while_every_named_alert_fires() {
    let mut p = policy(
        "alerted",
        Conditions {
            states: vec![SessionState::Idle],
            ..Default::default()
        },
    );
    p.only_while_alerts = vec!["DbWardenConnectionsHigh".into()];
    let snap = snapshot([client(1).idle(30.0)]);
    let closed = evaluate_policy(&p, &snap, gates(&[]));
    assert!(!closed.gate_open && closed.selected.is_empty() && closed.candidates.len() == 1);
    assert!(
        closed
            .gate_reason
            .contains("alert not firing: DbWardenConnectionsHigh"),
        "{}",
        closed.gate_reason
    );
    let firing = vec!["DbWardenConnectionsHigh".to_string()];
    let open = evaluate_policy(
        &p,
        &snap,
        Gates {
            failing: &[],
            firing_alerts: &firing,
        },
    );
    assert!(open.gate_open);
    assert_eq!(pids(&open.selected), vec![1]);
}

// ---------------------------------------------------------------------------
// A check's scope and a policy's selection agree
// ---------------------------------------------------------------------------

/// A session check whose scope is the policy's lists, and whose limit no
/// session reaches (so that only the scope decides).
fn check_with_lists_of(c: &Conditions) -> crate::evaluate::Thresholds {
    let mut t = crate::evaluate::Thresholds::default();
    let check = &mut t.long_running_query;
    check.max = Duration::from_secs(100 * 365 * 86_400);
    check.match_users = c.match_users.clone();
    check.ignore_users = c.ignore_users.clone();
    check.match_databases = c.match_databases.clone();
    check.ignore_databases = c.ignore_databases.clone();
    check.match_applications = c.match_applications.clone();
    check.ignore_applications = c.ignore_applications.clone();
    check.match_client_addrs = c.match_client_addrs.clone();
    check.ignore_client_addrs = c.ignore_client_addrs.clone();
    check.match_query = c.match_query.clone();
    check.ignore_query = c.ignore_query.clone();
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// With the same lists, `long_running_query` judges exactly the active
    /// sessions a policy on `state = ["active"]` matches (selected or
    /// protected): as many, and the same longest query; the others are the
    /// ones it counts as excluded.
    #[test]
    fn a_checks_scope_and_a_policys_selection_agree(
        snap in sessions().prop_map(snapshot_of),
        c in conditions(),
    ) {
        let mut p = Policy {
            name: "p".into(),
            targets: None,
            kind: Some(ActionKind::Cancel),
            grace: None,
            victims: Victims::All,
            max_per_cycle: 1000,
            only_while_failing: Vec::new(),
            only_while_alerts: Vec::new(),
            conditions: c.clone(),
        };
        p.conditions.states = vec![SessionState::Active];
        p.conditions.idle_for = None;
        p.conditions.query_running_for = None;
        p.conditions.transaction_open_for = None;
        p.conditions.connected_for = None;
        p.conditions.blocking_waiters = None;
        p.conditions.blocking_for = None;
        let t = check_with_lists_of(&c);

        let e = evaluate_policy(&p, &snap, gates(&[]));
        let considered = |s: &Session| {
            s.is_client_backend() && !s.is_self && s.state == SessionState::Active
        };
        let matched: Vec<&Session> = e
            .candidates
            .iter()
            .map(|x| x.facts.pid)
            .chain(e.protected.iter().map(|(f, _)| f.pid))
            .map(|pid| session(&snap, pid))
            .filter(|s| considered(s))
            .collect();
        let all = snap.sessions.iter().filter(|s| considered(s)).count() as u64;

        let r = crate::evaluate::evaluate_once(&snap, &t)
            .into_iter()
            .find(|r| r.check == CheckId::LongRunningQuery)
            .unwrap();
        let excluded: u64 = r.excluded.iter().flatten().map(|(_, n)| n).sum();
        prop_assert_eq!(all - excluded, matched.len() as u64, "{:?}", r);
        // An unscoped check excludes nothing and reports no count.
        if p.conditions.scope().is_empty() {
            prop_assert_eq!(r.excluded, None);
        }
        let longest = matched
            .iter()
            .filter_map(|s| snap.age_seconds(s.query_start_us))
            .fold(0.0_f64, f64::max);
        prop_assert_eq!(r.value, Some(longest));
        prop_assert_eq!(r.status, crate::evaluate::CheckStatus::Pass);
    }
}

/// `p` evaluated on `snap` as it will be `secs` later, every session as it is.
fn evaluate_later(p: &Policy, snap: &PgSnapshot, f: &[CheckName], secs: f64) -> PolicyEvaluation {
    let mut later = snap.clone();
    later.server_now_us += (secs * 1e6).round() as i64;
    evaluate_policy(p, &later, gates(f))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The predicted crossings are exactly when sessions that are not
    /// candidates become ones, every session staying as it is: at any
    /// moment (just before and just after each crossing, and much later),
    /// the candidates gained are as many as the crossings passed; none is
    /// predicted while the gate is closed. (A lock chain's waiters are not
    /// predicted: policies on blocking are left out.)
    #[test]
    fn the_predicted_crossings_are_when_new_candidates_appear(
        snap in sessions().prop_map(snapshot_of), p in policy_strategy(), f in failing(),
    ) {
        prop_assume!(p.conditions.blocking().is_none());
        let e = evaluate_policy(&p, &snap, gates(&f));
        let now = pid_set(&e.candidates);
        let cs = &e.crossings_seconds;
        prop_assert!(e.gate_open || cs.is_empty(), "crossings predicted behind a closed gate");
        prop_assert!(cs.windows(2).all(|w| w[0] <= w[1]), "soonest first: {cs:?}");
        prop_assert!(cs.iter().all(|&c| c > 0.0));
        // Ages are whole microseconds: two on either side of each crossing.
        let mut moments: Vec<f64> = cs.iter().flat_map(|&c| [c - 2e-6, c + 2e-6]).filter(|&t| t > 0.0).collect();
        moments.extend([1.0, 600.0, 864_000.0]);
        for t in moments {
            let later = pid_set(&evaluate_later(&p, &snap, &f, t).candidates);
            prop_assert!(now.is_subset(&later), "a candidate lost by waiting {t} s");
            let passed = cs.iter().filter(|&&c| c <= t).count();
            if e.gate_open {
                prop_assert_eq!(later.len() - now.len(), passed, "after {} s, crossings {:?}", t, cs);
            }
        }
    }
}

#[test]
fn crossings_are_every_policy_s_soonest_first() {
    let p = |secs: &[f64]| PolicyEvaluation {
        policy: "p".into(),
        gate_open: true,
        gate_reason: String::new(),
        candidates: Vec::new(),
        protected: Vec::new(),
        selected: Vec::new(),
        crossings_seconds: secs.to_vec(),
    };
    assert!(crossings(&[]).is_empty());
    assert!(crossings(&[p(&[])]).is_empty());
    let ms = Duration::from_millis;
    assert_eq!(
        crossings(&[p(&[0.5, 3.5]), p(&[]), p(&[0.25, 9.0])]),
        [ms(250), ms(500), ms(3500), ms(9000)]
    );
}
