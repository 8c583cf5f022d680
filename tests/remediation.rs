//! Remediation against real PostgreSQL 15 scratch primaries: dbwarden in
//! enforce, dry-run and observe mode facing real idle sessions, lock chains
//! and long queries; the guarded signal at the executor level; the pause
//! switch, budgets, an unwritable audit and a least-privilege role.
//!
//! Each test starts its own primary and waits on conditions with deadlines.
//! The truth is read on the server (which backends still exist, which query
//! was cancelled), in the audit file, in `GET /api/v1/actions` and in
//! `/metrics`. Every session that is not meant to be signalled is checked
//! to survive several polls after it met every threshold, and to still run
//! a statement. Needs the Debian package `postgresql-15`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbwarden::config::Config;
use dbwarden::observe::{PostgresObserver, SessionState};
use dbwarden::remediate::audit::{AuditLog, AuditRecord, Decision, Mode};
use dbwarden::remediate::executor::{self, Outcome, Signal};
use dbwarden::remediate::policy::{
    ActionKind, Conditions, Gates, NameSet, Policy, Victims, evaluate_policy,
};
use dbwarden::scratch::ScratchCluster;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use support::{
    Daemon, Want, backend_alive, backend_of, connect_as, expect_metrics, fast_target, psql,
    require, wait_until,
};

/// The PostgreSQL session of an audit record (every record these tests read is one).
trait PgRecord {
    fn pg(&self) -> &dbwarden::remediate::audit::AuditSession;
}

impl PgRecord for AuditRecord {
    fn pg(&self) -> &dbwarden::remediate::audit::AuditSession {
        self.session
            .as_ref()
            .unwrap_or_else(|| panic!("not a PostgreSQL record: {self:?}"))
    }
}

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(20);
/// The bearer token of the pause API (written to the token file).
const TOKEN: &str = "test-token-0123456789abcdef";
const TARGET: &str = "main";
const INSTANCE: &str = "test-a";

// ---------------------------------------------------------------- fixture

/// A scratch primary, a directory for remediation's files (audit, pause
/// state, sentinel, API token), and a monitor session that looks at the
/// server. The monitor is a superuser's: no policy here names `postgres` in
/// `match_users` together with its application, so it is never a candidate.
struct Fixture {
    pg: ScratchCluster,
    dir: tempfile::TempDir,
    monitor: PgConnection,
}

/// A client session the test opened: its connection and backend identity
/// `(pid, backend_start_us)`.
struct Session {
    conn: PgConnection,
    id: (i32, i64),
}

impl Session {
    fn pid(&self) -> i32 {
        self.id.0
    }

    /// Runs `SELECT 1`: the session is alive and usable.
    async fn select_1(&mut self, what: &str) {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{what} (pid {}) cannot run SELECT 1: {e}", self.id.0));
        assert_eq!(one, 1);
    }

    /// The session was terminated: its connection no longer works.
    async fn assert_terminated(&mut self, what: &str) {
        let r = sqlx::query("SELECT 1").execute(&mut self.conn).await;
        assert!(
            r.is_err(),
            "{what} (pid {}) still runs statements",
            self.id.0
        );
    }
}

impl Fixture {
    /// Starts a primary and runs `setup_sql` on it as the superuser.
    async fn new(setup_sql: &str) -> Fixture {
        let pg = support::primary();
        if !setup_sql.is_empty() {
            psql(&pg, setup_sql);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write the token file");
        let monitor = support::connect(&pg, "monitor").await;
        Fixture { pg, dir, monitor }
    }

    fn url(&self) -> String {
        self.pg.url("postgres")
    }

    fn audit_file(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state").join("paused.json")
    }

    fn sentinel(&self) -> PathBuf {
        self.dir.path().join("PAUSE")
    }

    /// A target `main` at `url` (fast polls, `max_connections = 2`: the poll
    /// connection and the actor's) and a `[remediation]` section with
    /// `policies` verbatim, pacing 0s and a global budget of 100.
    fn config(
        &self,
        url: &str,
        mode: &str,
        audit_file: &Path,
        per_target: u32,
        policies: &str,
    ) -> String {
        let d = self.dir.path();
        fast_target(TARGET, url, "")
            + &format!(
                r#"
[remediation]
mode = "{mode}"
instance = "{INSTANCE}"
audit_file = "{audit}"
state_dir = "{state}"
sentinel_file = "{sentinel}"
api_token_file = "{token}"
query_max_chars = 256
redact_queries = false
pacing = "0s"

[remediation.budget]
per_target = {per_target}
global = 100
window = "10m"
{policies}"#,
                audit = audit_file.display(),
                state = d.join("state").display(),
                sentinel = self.sentinel().display(),
                token = d.join("token").display(),
            )
    }

    /// Opens a session as `user` with `application_name` `app`; it is idle
    /// when this returns.
    async fn session(&self, user: &str, app: &str) -> Session {
        let mut conn = connect_as(&self.pg, user, app).await;
        let id = backend_of(&mut conn).await;
        Session { conn, id }
    }

    async fn alive(&mut self, id: (i32, i64)) -> Result<bool, String> {
        backend_alive(&mut self.monitor, id).await
    }

    /// The server's `state` of backend `pid` (None when it is gone).
    async fn state_of(&mut self, pid: i32) -> Result<Option<String>, String> {
        sqlx::query_scalar::<_, Option<String>>("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_optional(&mut self.monitor)
            .await
            .map(Option::flatten)
            .map_err(|e| format!("monitor query: {e}"))
    }

    /// Waits until backend `pid` is active and, when `lock`, waiting on a lock.
    async fn wait_active(&mut self, pid: i32, lock: bool, what: &str) {
        wait_until(T, what, async || {
            let (state, wait): (Option<String>, Option<String>) = sqlx::query_as(
                "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(pid)
            .fetch_optional(&mut self.monitor)
            .await
            .map_err(|e| format!("monitor query: {e}"))?
            .unwrap_or((None, None));
            let ok =
                state.as_deref() == Some("active") && (!lock || wait.as_deref() == Some("Lock"));
            if ok {
                Ok(())
            } else {
                Err(format!("state {state:?}, wait_event_type {wait:?}"))
            }
        })
        .await;
    }

    /// Every client backend except dbwarden's and the monitor, by pid.
    async fn client_pids(&mut self) -> BTreeSet<i32> {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
               AND application_name <> 'dbwarden' AND application_name NOT LIKE 'dbwarden-%'",
        )
        .fetch_all(&mut self.monitor)
        .await
        .expect("list client backends")
        .into_iter()
        .collect()
    }
}

/// Starts `sql` on `s`'s connection in a task that hands the connection
/// back with the result (a long query, a lock wait).
fn spawn_query(
    mut s: Session,
    sql: &'static str,
) -> tokio::task::JoinHandle<(Session, Result<i64, sqlx::Error>)> {
    tokio::spawn(async move {
        let r = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut s.conn)
            .await;
        (s, r)
    })
}

/// The error must be "canceling statement due to user request" (57014).
fn assert_cancelled(r: Result<i64, sqlx::Error>, what: &str) {
    let err = r.expect_err(what);
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{what}: not a database error: {err}"));
    assert_eq!(db.code().as_deref(), Some("57014"), "{what}: {err}");
    assert_eq!(
        db.message(),
        "canceling statement due to user request",
        "{what}"
    );
}

// ------------------------------------------------------- config and metrics

/// A `[remediation.policies.NAME]` table for target `main` (all victims, at
/// most 10 per cycle) and its `.when` table holding `when` verbatim.
fn policy(name: &str, action: &str, when: &str) -> String {
    format!(
        r#"
[remediation.policies.{name}]
targets = ["{TARGET}"]
action = "{action}"
victims = "all"
max_per_cycle = 10

[remediation.policies.{name}.when]
{when}
"#
    )
}

/// Policy `idle`: terminate the idle sessions of application `app` (a
/// regex) once idle for `idle_for`.
fn idle_policy(idle_for: &str, app: &str) -> String {
    policy(
        "idle",
        "terminate",
        &format!("state = [\"idle\"]\nidle_for = \"{idle_for}\"\nmatch_applications = [\"{app}\"]"),
    )
}

/// The labels of one `dbwarden_remediation_actions_total` series.
fn actions<'a>(
    policy: &'a str,
    action: &'a str,
    outcome: &'a str,
    mode: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        ("target", TARGET),
        ("policy", policy),
        ("action", action),
        ("outcome", outcome),
        ("mode", mode),
    ]
}

/// The `dbwarden_remediation_actions_total` series that counted something
/// (they are exported from zero): (policy, action, outcome, mode) → count.
fn counted_actions(text: &str) -> BTreeMap<(String, String, String, String), f64> {
    support::parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == "dbwarden_remediation_actions_total" && s.value != 0.0)
        .map(|s| {
            let l = |k: &str| {
                s.labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            ((l("policy"), l("action"), l("outcome"), l("mode")), s.value)
        })
        .collect()
}

async fn polls(daemon: &Daemon) -> f64 {
    metric_or_zero(daemon, "dbwarden_polls_total", &[("target", TARGET)]).await
}

async fn metric_or_zero(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    daemon.metric(name, labels).await.unwrap_or(0.0)
}

/// Waits until `n` more polls of `main` have finished: the remediation
/// loop, which runs after each poll, has seen at least `n - 1` of them.
async fn wait_polls(daemon: &Daemon, n: f64) {
    let base = polls(daemon).await;
    wait_until(T, &format!("{n} more polls"), async || {
        let now = polls(daemon).await;
        if now >= base + n {
            Ok(())
        } else {
            Err(format!("{now} polls, want {}", base + n))
        }
    })
    .await;
}

/// Waits until `dbwarden_remediation_candidates{policy}` is `want`.
async fn wait_candidates(daemon: &Daemon, policy: &str, want: Want) {
    let labels = [("target", TARGET), ("policy", policy)];
    wait_until(T, &format!("candidates of {policy} {want:?}"), async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_remediation_candidates", &labels, want)],
        )
    })
    .await;
}

/// `GET /api/v1/actions?limit=1000`: the records, newest first.
async fn api_actions(daemon: &Daemon) -> Vec<Value> {
    let (code, body) = daemon
        .get("/api/v1/actions?limit=1000")
        .await
        .expect("GET /api/v1/actions");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("actions JSON");
    v["actions"].as_array().cloned().expect("actions array")
}

// ------------------------------------------------------------------ audit

fn audit(path: &Path) -> Vec<AuditRecord> {
    let (records, bad) = AuditLog::read_all(path)
        .unwrap_or_else(|e| panic!("reading the audit file {}: {e}", path.display()));
    assert_eq!(bad, 0, "unreadable lines in {}", path.display());
    records
}

fn records_of(records: &[AuditRecord], pid: i32) -> Vec<&AuditRecord> {
    records.iter().filter(|r| r.pg().pid == pid).collect()
}

/// The session `id` was signalled exactly once in enforce mode: one intent
/// record, then one `acted` record with the same action id, both naming
/// the policy, the action, the backend and a reason containing `reason`.
fn assert_acted_once(
    records: &[AuditRecord],
    id: (i32, i64),
    what: &str,
    policy: &str,
    action: &str,
    reason: &str,
) {
    let mine = records_of(records, id.0);
    let decisions: Vec<Decision> = mine.iter().map(|r| r.decision).collect();
    assert_eq!(
        decisions,
        [Decision::Intent, Decision::Acted],
        "{what} (pid {}): {mine:#?}",
        id.0
    );
    for r in &mine {
        assert_eq!(r.policy, policy, "{what}: {r:#?}");
        assert_eq!(r.action, action, "{what}: {r:#?}");
        assert_eq!(r.mode, Mode::Enforce, "{what}: {r:#?}");
        assert_eq!(r.target, TARGET, "{what}: {r:#?}");
        assert_eq!(r.instance, INSTANCE, "{what}: {r:#?}");
        assert_eq!(r.pg().backend_start_us, Some(id.1), "{what}: {r:#?}");
        assert!(r.reason.contains(reason), "{what}: reason {:?}", r.reason);
    }
    assert_eq!(mine[0].action_id, mine[1].action_id, "{what}: {mine:#?}");
    assert!(mine[0].time_ms <= mine[1].time_ms, "{what}: {mine:#?}");
    assert_eq!(mine[1].outcome, format!("{action} signal sent"), "{what}");
}

/// `(pid, decision)` of every record, in file order.
fn decisions(records: &[AuditRecord]) -> Vec<(i32, &'static str)> {
    records
        .iter()
        .map(|r| (r.pg().pid, r.decision.as_str()))
        .collect()
}

// ------------------------------------------------------------------ tests

/// The issue's scenario: one daemon in enforce mode with three policies on
/// a server holding every kind of session. Exactly the idle session of an
/// ordinary application, the idle-in-transaction session at the root of a
/// lock chain and the long `pg_sleep` are signalled, each once; the waiter
/// then proceeds; ignored applications, ignored roles, a superuser and
/// sessions in other states survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_signals_exactly_the_sessions_the_policies_select() {
    let mut fx = Fixture::new(
        "CREATE ROLE app LOGIN; CREATE ROLE reporting LOGIN;
         CREATE ROLE admin LOGIN SUPERUSER NOREPLICATION; CREATE ROLE repl LOGIN REPLICATION;
         CREATE TABLE t (id int); INSERT INTO t VALUES (1);
         GRANT ALL ON t TO app, reporting",
    )
    .await;
    let policies = policy(
        "idle",
        "terminate",
        r#"state = ["idle"]
idle_for = "2s"
ignore_users = ["reporting"]
ignore_applications = ["ignored-app", "batch-.*"]"#,
    ) + &policy(
        "lock_blocker",
        "terminate",
        r#"state = ["idle_in_transaction"]
blocking_waiters = 1
blocking_for = "1s""#,
    ) + &policy(
        "long_query",
        "cancel",
        r#"state = ["active"]
query_running_for = "2s"
match_users = ["app"]
match_query = "pg_sleep""#,
    );

    // (a) idle, an ordinary application: terminated.
    let mut idle = fx.session("app", "webapp").await;
    // (b) idle, an ignored application: survives.
    let mut ignored = fx.session("app", "ignored-app").await;
    // (e) idle, a superuser: protected. Not `postgres`, which also has
    // REPLICATION, a protection of its own.
    let mut superuser = fx.session("admin", "su-idle").await;
    // (e) idle, a role with REPLICATION: protected too.
    let mut replication = fx.session("repl", "webapp").await;
    // (f) idle, an ignored role: survives.
    let mut reporting = fx.session("reporting", "webapp").await;
    // (f) idle in transaction, blocking nobody: no policy matches.
    let mut iit = fx.session("app", "webapp").await;
    sqlx::query("BEGIN")
        .execute(&mut iit.conn)
        .await
        .expect("BEGIN");
    sqlx::query("SELECT 1")
        .execute(&mut iit.conn)
        .await
        .expect("SELECT in the transaction");
    // (c) idle in transaction holding a lock another session waits on.
    let mut blocker = fx.session("app", "webapp").await;
    sqlx::query("BEGIN")
        .execute(&mut blocker.conn)
        .await
        .expect("BEGIN");
    sqlx::query("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker.conn)
        .await
        .expect("LOCK TABLE t");
    let waiter = fx.session("reporting", "report-waiter").await;
    let waiter_id = waiter.id;
    let waiter = spawn_query(waiter, "SELECT count(*) FROM t");
    fx.wait_active(waiter_id.0, true, "the waiter to wait on the lock")
        .await;
    // (d) a long query of an ordinary role: cancelled, the session survives.
    let sleeper = fx.session("app", "batch-sleep").await;
    let sleeper_id = sleeper.id;
    let sleeper = spawn_query(sleeper, "SELECT count(*) FROM pg_sleep(600)");
    fx.wait_active(sleeper_id.0, false, "the sleeper to run")
        .await;
    // (f) the same long query from a role the policy does not match.
    let other_sleeper = fx.session("reporting", "batch-report").await;
    let other_sleeper_id = other_sleeper.id;
    let other_sleeper = spawn_query(other_sleeper, "SELECT count(*) FROM pg_sleep(600)");
    fx.wait_active(other_sleeper_id.0, false, "the other sleeper to run")
        .await;
    let other_sleeper_start: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM query_start) * 1000000)::int8 FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(other_sleeper_id.0)
    .fetch_one(&mut fx.monitor)
    .await
    .expect("query_start of the other sleeper");

    let audit_file = fx.audit_file();
    let daemon = Daemon::start(&fx.config(&fx.url(), "enforce", &audit_file, 10, &policies)).await;
    wait_until(
        T,
        "the idle session and the lock root to be terminated, the long query cancelled, the waiter through",
        async || {
            let idle_alive = fx.alive(idle.id).await?;
            let blocker_alive = fx.alive(blocker.id).await?;
            if !idle_alive && !blocker_alive && sleeper.is_finished() && waiter.is_finished() {
                Ok(())
            } else {
                Err(format!(
                    "idle alive {idle_alive}, blocker alive {blocker_alive}, sleeper finished {}, \
                     waiter finished {}; audit {:?}",
                    sleeper.is_finished(),
                    waiter.is_finished(),
                    decisions(&audit(&audit_file))
                ))
            }
        },
    )
    .await;
    let (mut sleeper, slept) = sleeper.await.expect("sleeper task");
    assert_cancelled(slept, "pg_sleep(600) of app was cancelled");
    let (mut waiter, counted) = waiter.await.expect("waiter task");
    assert_eq!(
        counted.expect("the waiter's SELECT proceeds once the lock root is gone"),
        1
    );
    idle.assert_terminated("the idle session").await;
    blocker.assert_terminated("the lock root").await;

    // Every other session met its thresholds long ago; a few more polls,
    // and still nothing else is touched.
    wait_polls(&daemon, 4.0).await;
    let survivors = [
        ("the ignored application", ignored.id),
        ("the superuser", superuser.id),
        ("the replication role", replication.id),
        ("the ignored role", reporting.id),
        ("the idle-in-transaction session", iit.id),
        ("the waiter", waiter.id),
        ("the cancelled sleeper", sleeper.id),
        ("the other role's sleeper", other_sleeper_id),
    ];
    let want: BTreeSet<i32> = survivors.iter().map(|(_, id)| id.0).collect();
    assert_eq!(
        fx.client_pids().await,
        want,
        "the client backends left on the server, want {survivors:?}"
    );
    for (what, id) in survivors {
        assert!(fx.alive(id).await.expect("monitor"), "{what} is gone");
    }
    // The other sleeper's query was never cancelled: still the same query.
    assert_eq!(
        fx.state_of(other_sleeper_id.0).await.expect("monitor"),
        Some("active".into())
    );
    let still: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM query_start) * 1000000)::int8 FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(other_sleeper_id.0)
    .fetch_one(&mut fx.monitor)
    .await
    .expect("query_start of the other sleeper");
    assert_eq!(still, other_sleeper_start);
    assert!(!other_sleeper.is_finished());

    // The audit: one intent and one outcome per signalled session, nothing else.
    let records = audit(&audit_file);
    let acted: BTreeSet<i32> = records.iter().map(|r| r.pg().pid).collect();
    assert_eq!(
        acted,
        BTreeSet::from([idle.pid(), blocker.pid(), sleeper_id.0]),
        "pids in the audit: {:?}",
        decisions(&records)
    );
    assert!(
        records.iter().all(|r| r.decision != Decision::WouldAct),
        "{records:#?}"
    );
    assert_acted_once(
        &records,
        idle.id,
        "the idle session",
        "idle",
        "terminate",
        "state idle, idle ",
    );
    assert_acted_once(
        &records,
        blocker.id,
        "the lock root",
        "lock_blocker",
        "terminate",
        "blocks 1 sessions waiting",
    );
    assert_acted_once(
        &records,
        sleeper_id,
        "the long query",
        "long_query",
        "cancel",
        "query matches /pg_sleep/",
    );
    let sleep_record = &records_of(&records, sleeper_id.0)[0];
    assert!(
        sleep_record.reason.contains("query running"),
        "{sleep_record:#?}"
    );
    assert!(
        sleep_record.pg().query.contains("pg_sleep(600)"),
        "{sleep_record:#?}"
    );
    assert_eq!(sleep_record.pg().state, SessionState::Active);
    assert_eq!(
        records_of(&records, blocker.pid())[0].pg().state,
        SessionState::IdleInTransaction
    );

    // The API lists the same records, newest first.
    let listed = api_actions(&daemon).await;
    let mut from_api: Vec<(i32, String)> = listed
        .iter()
        .map(|r| {
            (
                r["session"]["pid"].as_i64().expect("pid") as i32,
                r["decision"].as_str().expect("decision").to_string(),
            )
        })
        .collect();
    from_api.reverse();
    let from_file: Vec<(i32, String)> = decisions(&records)
        .into_iter()
        .map(|(p, d)| (p, d.to_string()))
        .collect();
    assert_eq!(from_api, from_file, "{listed:#?}");
    assert!(
        listed
            .iter()
            .all(|r| r["mode"] == "enforce" && r["target"] == TARGET)
    );

    // The metrics count the same three actions and nothing else.
    let text = daemon.metrics().await;
    let counted = counted_actions(&text);
    let want: BTreeMap<_, _> = [
        ("idle", "terminate"),
        ("lock_blocker", "terminate"),
        ("long_query", "cancel"),
    ]
    .into_iter()
    .map(|(p, a)| ((p.into(), a.into(), "acted".into(), "enforce".into()), 1.0))
    .collect();
    assert_eq!(counted, want, "dbwarden_remediation_actions_total");
    expect_metrics(
        &text,
        &[
            ("dbwarden_remediation_paused", &[], Want::Eq(0.0)),
            (
                "dbwarden_remediation_mode",
                &[("mode", "enforce")],
                Want::Eq(1.0),
            ),
            (
                "dbwarden_remediation_mode",
                &[("mode", "dry-run")],
                Want::Eq(0.0),
            ),
            // Exported from zero, and still zero: nothing skipped or refused.
            (
                "dbwarden_remediation_actions_total",
                &actions("idle", "terminate", "skipped", "enforce"),
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("lock_blocker", "terminate", "refused", "enforce"),
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_actor",
                &[("target", TARGET)],
                Want::Eq(1.0),
            ),
            (
                "dbwarden_remediation_audit_errors_total",
                &[],
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_budget_remaining",
                &[("scope", TARGET)],
                Want::Eq(7.0),
            ),
            (
                "dbwarden_remediation_candidates",
                &[("target", TARGET), ("policy", "idle")],
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_candidates",
                &[("target", TARGET), ("policy", "lock_blocker")],
                Want::Eq(0.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        require(
            &text,
            "dbwarden_remediation_actions_total",
            &actions("idle", "terminate", "acted", "enforce")
        ),
        Ok(1.0)
    );

    // The survivors still work.
    ignored.select_1("the ignored application").await;
    superuser.select_1("the superuser").await;
    replication.select_1("the replication role").await;
    reporting.select_1("the ignored role").await;
    iit.select_1("the idle-in-transaction session").await;
    waiter.select_1("the waiter").await;
    sleeper.select_1("the cancelled sleeper").await;
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(other_sleeper_id.0)
        .fetch_one(&mut fx.monitor)
        .await
        .expect("cancel the other sleeper");
    assert!(cancelled);
    let (mut other_sleeper, r) = other_sleeper.await.expect("other sleeper task");
    assert_cancelled(r, "the test cancelled the other sleeper");
    other_sleeper.select_1("the other role's sleeper").await;
    daemon.stop().await;
}

/// The guarded statement, deterministically: sessions selected from one
/// real snapshot, then changed before the signal. Nothing is sent to a
/// session that ran a statement, is running one, is gone, is another
/// backend, or no longer blocks anyone; an unchanged one is signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_signal_rechecks_the_session_when_acting() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let config =
        Config::from_toml_with_env(&fast_target(TARGET, &fx.url(), ""), std::iter::empty())
            .expect("target config");
    let mut observer = PostgresObserver::new(config.postgres[0].target.clone());
    let policy = Policy {
        name: "idle".into(),
        targets: None,
        kind: Some(ActionKind::Terminate),
        grace: None,
        victims: Victims::All,
        max_per_cycle: 10,
        conditions: Conditions {
            states: vec![SessionState::Idle],
            idle_for: Some(Duration::from_millis(300)),
            match_applications: NameSet::new(vec![], &["victim-.*"]).expect("pattern"),
            ..Conditions::default()
        },
        only_while_failing: vec![],
        only_while_alerts: vec![],
    };
    let mut ran = fx.session("app", "victim-ran").await;
    let busy = fx.session("app", "victim-busy").await;
    let gone = fx.session("app", "victim-gone").await;
    let mut other = fx.session("app", "victim-other").await;
    let mut ok = fx.session("app", "victim-ok").await;
    let ids = [ran.id, busy.id, gone.id, other.id, ok.id];

    let selected = wait_until(
        T,
        "one snapshot to select the five idle sessions",
        async || {
            let snapshot = observer.poll().await.map_err(|e| format!("poll: {e:?}"))?;
            let e = evaluate_policy(&policy, &snapshot, Gates::default());
            let pids: BTreeSet<i32> = e.selected.iter().map(|c| c.facts.pid).collect();
            if ids.iter().all(|id| pids.contains(&id.0)) && pids.len() == ids.len() {
                Ok(e.selected)
            } else {
                Err(format!("selected {pids:?}, want {ids:?}"))
            }
        },
    )
    .await;
    observer.close().await;
    let candidate = |id: (i32, i64)| {
        let c = selected
            .iter()
            .find(|c| c.facts.pid == id.0)
            .cloned()
            .expect("selected");
        // The observer and the guard measure backend_start the same way.
        assert_eq!(c.facts.backend_start_us, Some(id.1), "{c:#?}");
        c
    };
    let cond = &policy.conditions;
    let mut signaller = support::connect(&fx.pg, "signaller").await;

    // Ran a statement since the poll: idle again, but a new idle stretch.
    ran.select_1("victim-ran").await;
    let out = executor::signal(&mut signaller, Signal::Terminate, &candidate(ran.id), cond).await;
    assert_eq!(out, Outcome::Changed(vec!["the session was active since"]));
    assert!(fx.alive(ran.id).await.expect("monitor"));
    ran.select_1("victim-ran after the refused signal").await;

    // Became active just before the action.
    let busy_id = busy.id;
    let busy = spawn_query(busy, "SELECT count(*) FROM pg_sleep(600)");
    fx.wait_active(busy_id.0, false, "victim-busy to run its query")
        .await;
    let out = executor::signal(&mut signaller, Signal::Cancel, &candidate(busy_id), cond).await;
    assert_eq!(
        out,
        Outcome::Changed(vec!["state", "the session was active since"])
    );

    // Disconnected.
    gone.conn.close().await.expect("close victim-gone");
    wait_until(T, "victim-gone to leave the server", async || {
        match fx.alive(gone.id).await? {
            false => Ok(()),
            true => Err("still there".into()),
        }
    })
    .await;
    let out = executor::signal(&mut signaller, Signal::Terminate, &candidate(gone.id), cond).await;
    assert_eq!(out, Outcome::Gone);

    // The policy measured a lock chain the session no longer roots.
    let blocking = Conditions {
        blocking_waiters: Some(1),
        blocking_for: Some(Duration::from_secs(1)),
        ..cond.clone()
    };
    let out = executor::signal(
        &mut signaller,
        Signal::Terminate,
        &candidate(other.id),
        &blocking,
    )
    .await;
    assert_eq!(out, Outcome::Changed(vec!["no longer blocks anyone"]));

    // The same pid, another backend (its backend_start differs).
    let mut impostor = candidate(other.id);
    impostor.facts.backend_start_us = impostor.facts.backend_start_us.map(|b| b + 1);
    let out = executor::signal(&mut signaller, Signal::Terminate, &impostor, cond).await;
    assert_eq!(
        out,
        Outcome::Changed(vec!["a different backend now has this pid"])
    );
    assert!(fx.alive(other.id).await.expect("monitor"));
    other.select_1("victim-other").await;

    // Unchanged since the poll: signalled.
    let out = executor::signal(&mut signaller, Signal::Terminate, &candidate(ok.id), cond).await;
    assert_eq!(out, Outcome::Signalled);
    wait_until(T, "victim-ok to be terminated", async || {
        match fx.alive(ok.id).await? {
            false => Ok(()),
            true => Err("still there".into()),
        }
    })
    .await;
    ok.assert_terminated("victim-ok").await;

    // The busy session's query was never cancelled by the refused signal.
    assert!(!busy.is_finished(), "victim-busy's query ended");
    assert_eq!(
        fx.state_of(busy_id.0).await.expect("monitor"),
        Some("active".into())
    );
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(busy_id.0)
        .fetch_one(&mut fx.monitor)
        .await
        .expect("cancel victim-busy");
    assert!(cancelled);
    let (mut busy, r) = busy.await.expect("victim-busy task");
    assert_cancelled(r, "the test cancelled victim-busy");
    busy.select_1("victim-busy").await;
}

/// Observe mode writes no audit and signals nothing, yet exports the
/// candidates; dry-run audits `would_act` and signals nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_and_dry_run_signal_nothing() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let policies = idle_policy("1s", "webapp");
    let mut victim = fx.session("app", "webapp").await;
    let audit_file = fx.audit_file();

    let daemon = Daemon::start(&fx.config(&fx.url(), "observe", &audit_file, 10, &policies)).await;
    wait_candidates(&daemon, "idle", Want::Ge(1.0)).await;
    wait_polls(&daemon, 3.0).await;
    assert!(fx.alive(victim.id).await.expect("monitor"));
    assert!(
        !audit_file.exists(),
        "observe mode wrote {}",
        audit_file.display()
    );
    assert!(api_actions(&daemon).await.is_empty());
    let text = daemon.metrics().await;
    assert!(
        counted_actions(&text).is_empty(),
        "{:?}",
        counted_actions(&text)
    );
    assert_eq!(daemon.status().await["remediation"]["mode"], "observe");
    expect_metrics(
        &text,
        &[(
            "dbwarden_remediation_mode",
            &[("mode", "observe")],
            Want::Eq(1.0),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    daemon.stop().await;

    let daemon = Daemon::start(&fx.config(&fx.url(), "dry-run", &audit_file, 10, &policies)).await;
    wait_until(T, "a would_act record for the idle session", async || {
        let records = audit(&audit_file);
        if records_of(&records, victim.pid()).is_empty() {
            Err(format!("{:?}", decisions(&records)))
        } else {
            Ok(())
        }
    })
    .await;
    wait_polls(&daemon, 3.0).await;
    assert!(fx.alive(victim.id).await.expect("monitor"));
    let records = audit(&audit_file);
    // Reported once while the session exists, idle since the same query:
    // enforce would have acted once.
    assert_eq!(records.len(), 1, "{:?}", decisions(&records));
    for r in &records {
        assert_eq!(r.decision, Decision::WouldAct, "{r:#?}");
        assert_eq!(r.mode, Mode::DryRun, "{r:#?}");
        assert_eq!(r.pg().pid, victim.pid(), "{r:#?}");
        assert_eq!(r.pg().backend_start_us, Some(victim.id.1), "{r:#?}");
        assert_eq!(r.policy, "idle", "{r:#?}");
        assert_eq!(r.action, "terminate", "{r:#?}");
        assert_eq!(r.outcome, "would terminate", "{r:#?}");
    }
    let listed = api_actions(&daemon).await;
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|r| r["decision"] == "would_act" && r["mode"] == "dry-run"),
        "{listed:#?}"
    );
    let text = daemon.metrics().await;
    assert!(
        require(
            &text,
            "dbwarden_remediation_actions_total",
            &actions("idle", "terminate", "would_act", "dry-run")
        )
        .is_ok_and(|v| v >= 1.0),
        "{:?}",
        counted_actions(&text)
    );
    assert!(
        counted_actions(&text)
            .keys()
            .all(|(_, _, outcome, mode)| mode == "dry-run"
                && (outcome == "would_act" || outcome == "budget_exhausted")),
        "{:?}",
        counted_actions(&text)
    );
    victim.select_1("the idle session").await;
    daemon.stop().await;
}

/// The kill switch: the API pause needs the token, holds across a restart
/// (state file) until resumed; the sentinel file pauses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_across_restarts_until_resumed() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let audit_file = fx.audit_file();
    let toml = fx.config(
        &fx.url(),
        "enforce",
        &audit_file,
        10,
        &idle_policy("1s", "webapp"),
    );
    let daemon = Daemon::start(&toml).await;
    for token in [None, Some("wrong-token")] {
        let (code, body) = daemon
            .post("/api/v1/pause", token, "")
            .await
            .expect("POST /api/v1/pause");
        assert_eq!(code, 401, "token {token:?}: {body}");
    }
    assert_eq!(
        daemon.status().await["remediation"]["paused"]["paused"],
        false
    );
    let (code, body) = daemon
        .post(
            "/api/v1/pause",
            Some(TOKEN),
            r#"{"by": "test", "reason": "maintenance"}"#,
        )
        .await
        .expect("POST /api/v1/pause");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("pause JSON");
    assert_eq!(v["paused"]["paused"], true, "{v:#}");
    assert_eq!(v["paused"]["sources"], serde_json::json!(["api"]), "{v:#}");
    assert_eq!(v["paused"]["by"], "test", "{v:#}");
    assert!(fx.state_file().exists(), "no {}", fx.state_file().display());
    assert_eq!(
        daemon.metric("dbwarden_remediation_paused", &[]).await,
        Some(1.0)
    );

    let mut v1 = fx.session("app", "webapp").await;
    wait_candidates(&daemon, "idle", Want::Ge(1.0)).await;
    wait_polls(&daemon, 3.0).await;
    assert!(
        fx.alive(v1.id).await.expect("monitor"),
        "acted while paused"
    );
    assert!(audit(&audit_file).is_empty());
    daemon.stop().await;

    // A new daemon with the same state_dir is still paused.
    let daemon = Daemon::start(&toml).await;
    let paused = &daemon.status().await["remediation"]["paused"];
    assert_eq!(paused["paused"], true, "{paused:#}");
    assert_eq!(paused["sources"], serde_json::json!(["api"]), "{paused:#}");
    assert_eq!(paused["reason"], "maintenance", "{paused:#}");
    wait_candidates(&daemon, "idle", Want::Ge(1.0)).await;
    wait_polls(&daemon, 3.0).await;
    assert_eq!(
        daemon.metric("dbwarden_remediation_paused", &[]).await,
        Some(1.0)
    );
    assert!(
        fx.alive(v1.id).await.expect("monitor"),
        "acted while paused after a restart"
    );
    assert!(audit(&audit_file).is_empty());

    // Resume: the session is terminated.
    let (code, body) = daemon
        .post("/api/v1/resume", None, "")
        .await
        .expect("POST /api/v1/resume");
    assert_eq!(code, 401, "{body}");
    let (code, body) = daemon
        .post("/api/v1/resume", Some(TOKEN), "")
        .await
        .expect("POST /api/v1/resume");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("resume JSON");
    assert_eq!(v["paused"]["paused"], false, "{v:#}");
    assert!(!fx.state_file().exists());
    wait_until(
        T,
        "the idle session to be terminated after resume",
        async || match fx.alive(v1.id).await? {
            false => Ok(()),
            true => Err(format!("audit {:?}", decisions(&audit(&audit_file)))),
        },
    )
    .await;
    v1.assert_terminated("the first idle session").await;
    assert_acted_once(
        &audit(&audit_file),
        v1.id,
        "the first idle session",
        "idle",
        "terminate",
        "application webapp",
    );

    // The sentinel file pauses too, and removing it resumes.
    std::fs::write(fx.sentinel(), b"").expect("touch the sentinel");
    let mut v2 = fx.session("app", "webapp").await;
    wait_candidates(&daemon, "idle", Want::Ge(1.0)).await;
    wait_polls(&daemon, 3.0).await;
    assert_eq!(
        daemon.metric("dbwarden_remediation_paused", &[]).await,
        Some(1.0)
    );
    let paused = &daemon.status().await["remediation"]["paused"];
    assert_eq!(
        paused["sources"],
        serde_json::json!(["sentinel"]),
        "{paused:#}"
    );
    assert!(
        fx.alive(v2.id).await.expect("monitor"),
        "acted while the sentinel file exists"
    );
    assert!(records_of(&audit(&audit_file), v2.pid()).is_empty());
    v2.select_1("the second idle session").await;
    std::fs::remove_file(fx.sentinel()).expect("remove the sentinel");
    wait_until(
        T,
        "the second idle session to be terminated",
        async || match fx.alive(v2.id).await? {
            false => Ok(()),
            true => Err(format!("audit {:?}", decisions(&audit(&audit_file)))),
        },
    )
    .await;
    assert_acted_once(
        &audit(&audit_file),
        v2.id,
        "the second idle session",
        "idle",
        "terminate",
        "application webapp",
    );
    wait_until(T, "the paused gauge to drop", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_remediation_paused", &[], Want::Eq(0.0))],
        )
    })
    .await;
    daemon.stop().await;
}

/// `cancel_then_terminate`: the cancel, then after the grace the terminate,
/// guarded like every signal. It ends the session whose query ignored the
/// cancel and spares the one whose query the cancel stopped (its state
/// changed). One action per session, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_terminate_ends_only_what_the_cancel_did_not_stop() {
    let mut fx = Fixture::new(
        "CREATE ROLE app LOGIN;
         CREATE FUNCTION stubborn() RETURNS bigint LANGUAGE plpgsql AS $body$
         BEGIN
           LOOP
             BEGIN
               PERFORM pg_sleep(600);
             EXCEPTION WHEN query_canceled THEN
               NULL; -- swallows the cancel
             END;
           END LOOP;
         END $body$;
         GRANT EXECUTE ON FUNCTION stubborn() TO app",
    )
    .await;
    let stubborn = fx.session("app", "stubborn").await;
    let stubborn_id = stubborn.id;
    let stubborn = spawn_query(stubborn, "SELECT stubborn()");
    fx.wait_active(stubborn_id.0, false, "the stubborn query to run")
        .await;
    let sleeper = fx.session("app", "sleeper").await;
    let sleeper_id = sleeper.id;
    let sleeper = spawn_query(sleeper, "SELECT count(*) FROM pg_sleep(600)");
    fx.wait_active(sleeper_id.0, false, "the sleeper to run")
        .await;
    let grace_ms = 1_000;
    let policies = format!(
        r#"
[remediation.policies.slow]
targets = ["{TARGET}"]
action = "cancel_then_terminate"
grace = "{grace_ms}ms"

[remediation.policies.slow.when]
state = ["active"]
query_running_for = "1s"
match_users = ["app"]
"#
    );
    let audit_file = fx.audit_file();
    let daemon = Daemon::start(&fx.config(&fx.url(), "enforce", &audit_file, 10, &policies)).await;
    wait_until(
        T,
        "the sleeper cancelled and the stubborn session terminated",
        async || {
            let stubborn_alive = fx.alive(stubborn_id).await?;
            if !stubborn_alive && sleeper.is_finished() {
                Ok(())
            } else {
                Err(format!(
                    "stubborn alive {stubborn_alive}, sleeper finished {}; audit {:?}",
                    sleeper.is_finished(),
                    decisions(&audit(&audit_file))
                ))
            }
        },
    )
    .await;
    let (mut sleeper, result) = sleeper.await.expect("the sleeper's task");
    assert_cancelled(result, "the sleeper's query");
    sleeper.select_1("the cancelled sleeper").await;
    let (_, result) = stubborn.await.expect("the stubborn task");
    assert!(result.is_err(), "the stubborn query returned: {result:?}");
    // The sleeper may have been chosen a cycle after the stubborn session:
    // its guarded terminate comes a grace after its cancel, so wait for it.
    wait_until(T, "both follow-up terminates in the audit", async || {
        let records = audit(&audit_file);
        let done = |pid| {
            records_of(&records, pid)
                .iter()
                .filter(|r| r.action_id.ends_with("/t") && r.decision != Decision::Intent)
                .count()
        };
        match (done(stubborn_id.0), done(sleeper_id.0)) {
            (0, _) | (_, 0) => Err(format!("audit {:?}", decisions(&records))),
            _ => Ok(()),
        }
    })
    .await;

    let records = audit(&audit_file);
    let steps = |pid: i32| -> Vec<(&'static str, String, bool)> {
        records_of(&records, pid)
            .iter()
            .map(|r| {
                (
                    r.decision.as_str(),
                    r.action.clone(),
                    r.action_id.ends_with("/t"),
                )
            })
            .collect()
    };
    let step = |d: &'static str, action: &str, t: bool| (d, action.to_string(), t);
    let stubborn_steps = steps(stubborn_id.0);
    assert_eq!(
        stubborn_steps[..4],
        [
            step("intent", "cancel", false),
            step("acted", "cancel", false),
            step("intent", "terminate", true),
            step("acted", "terminate", true),
        ],
        "{stubborn_steps:?}"
    );
    let sleeper_steps = steps(sleeper_id.0);
    assert_eq!(
        sleeper_steps[..4],
        [
            step("intent", "cancel", false),
            step("acted", "cancel", false),
            step("intent", "terminate", true),
            step("skipped", "terminate", true),
        ],
        "{sleeper_steps:?}"
    );
    // A snapshot read just before the terminate may select the session once
    // more; the guard finds it gone: nothing more is sent.
    for extra in stubborn_steps[4..].iter().chain(&sleeper_steps[4..]) {
        assert!(
            matches!(extra.0, "intent" | "skipped"),
            "{stubborn_steps:?} {sleeper_steps:?}"
        );
    }
    let mine = records_of(&records, stubborn_id.0);
    assert!(
        mine[2].time_ms >= mine[1].time_ms + grace_ms - 10,
        "the terminate came {} ms after the cancel",
        mine[2].time_ms - mine[1].time_ms
    );
    let prefix = format!("{INSTANCE}-{}-", stubborn_id.0);
    assert!(
        mine[2].action_id.starts_with(&prefix),
        "{:?}",
        mine[2].action_id
    );
    expect_metrics(
        &daemon.metrics().await,
        &[
            (
                "dbwarden_remediation_budget_remaining",
                &[("scope", TARGET)],
                Want::Eq(8.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("slow", "cancel", "acted", "enforce"),
                Want::Eq(2.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("slow", "terminate", "acted", "enforce"),
                Want::Eq(1.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    daemon.stop().await;
}

/// The per-target budget caps actions, and a restarted daemon rebuilds the
/// spent budget from the audit instead of starting afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_actions_and_survives_a_restart() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(fx.session("app", "webapp").await);
    }
    let audit_file = fx.audit_file();
    let toml = fx.config(
        &fx.url(),
        "enforce",
        &audit_file,
        2,
        &idle_policy("1s", "webapp"),
    );
    let main = [("scope", TARGET)];
    let global = [("scope", "global")];
    let exhausted = actions("idle", "terminate", "budget_exhausted", "enforce");
    let daemon = Daemon::start(&toml).await;
    wait_until(T, "two actions, then an exhausted budget", async || {
        let records = audit(&audit_file);
        expect_metrics(
            &daemon.try_metrics().await?,
            &[
                (
                    "dbwarden_remediation_budget_exhausted",
                    &main,
                    Want::Eq(1.0),
                ),
                (
                    "dbwarden_remediation_actions_total",
                    &exhausted,
                    Want::Ge(1.0),
                ),
            ],
        )
        .map_err(|e| format!("{e}; audit {:?}", decisions(&records)))
    })
    .await;
    wait_polls(&daemon, 3.0).await;
    // The two oldest were terminated; the others survive.
    for (i, s) in sessions.iter().enumerate() {
        let alive = fx.alive(s.id).await.expect("monitor");
        assert_eq!(
            alive,
            i >= 2,
            "session {i} (pid {}) alive: {alive}",
            s.pid()
        );
    }
    let records = audit(&audit_file);
    assert_eq!(records.len(), 4, "{:?}", decisions(&records));
    for (i, s) in sessions.iter().take(2).enumerate() {
        assert_acted_once(
            &records,
            s.id,
            &format!("session {i}"),
            "idle",
            "terminate",
            "state idle",
        );
    }
    let text = daemon.metrics().await;
    expect_metrics(
        &text,
        &[
            (
                "dbwarden_remediation_budget_remaining",
                &main,
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_budget_exhausted",
                &main,
                Want::Eq(1.0),
            ),
            (
                "dbwarden_remediation_budget_remaining",
                &global,
                Want::Eq(98.0),
            ),
            (
                "dbwarden_remediation_budget_exhausted",
                &global,
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("idle", "terminate", "acted", "enforce"),
                Want::Eq(2.0),
            ),
            (
                "dbwarden_remediation_candidates",
                &[("target", TARGET), ("policy", "idle")],
                Want::Eq(3.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    daemon.stop().await;

    // A restart within the window: the budget is rebuilt from the audit.
    let daemon = Daemon::start(&toml).await;
    wait_until(
        T,
        "the restarted daemon to see the three candidates",
        async || {
            expect_metrics(
                &daemon.try_metrics().await?,
                &[
                    (
                        "dbwarden_remediation_budget_remaining",
                        &main,
                        Want::Eq(0.0),
                    ),
                    (
                        "dbwarden_remediation_budget_exhausted",
                        &main,
                        Want::Eq(1.0),
                    ),
                    (
                        "dbwarden_remediation_candidates",
                        &[("target", TARGET), ("policy", "idle")],
                        Want::Eq(3.0),
                    ),
                    (
                        "dbwarden_remediation_actions_total",
                        &exhausted,
                        Want::Ge(1.0),
                    ),
                ],
            )
        },
    )
    .await;
    wait_polls(&daemon, 3.0).await;
    for s in sessions.iter().skip(2) {
        assert!(
            fx.alive(s.id).await.expect("monitor"),
            "pid {} acted on after a restart",
            s.pid()
        );
    }
    let after = audit(&audit_file);
    assert_eq!(after.len(), 4, "{:?}", decisions(&after));
    let text = daemon.metrics().await;
    expect_metrics(
        &text,
        &[
            (
                "dbwarden_remediation_budget_remaining",
                &main,
                Want::Eq(0.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("idle", "terminate", "acted", "enforce"),
                Want::Eq(0.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for s in sessions.iter_mut().skip(2) {
        s.select_1("a session the budget spared").await;
    }
    daemon.stop().await;
}

/// Nothing is signalled without its intent on disk: an audit file whose
/// writes fail (`/dev/full`: ENOSPC, even for root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_without_an_audit_record() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let mut victim = fx.session("app", "webapp").await;
    let toml = fx.config(
        &fx.url(),
        "enforce",
        Path::new("/dev/full"),
        10,
        &idle_policy("1s", "webapp"),
    );
    let daemon = Daemon::start(&toml).await;
    wait_until(T, "a failed audit write", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[
                (
                    "dbwarden_remediation_audit_errors_total",
                    &[],
                    Want::Ge(1.0),
                ),
                (
                    "dbwarden_remediation_candidates",
                    &[("target", TARGET), ("policy", "idle")],
                    Want::Ge(1.0),
                ),
            ],
        )
    })
    .await;
    let errors = metric_or_zero(&daemon, "dbwarden_remediation_audit_errors_total", &[]).await;
    wait_polls(&daemon, 3.0).await;
    assert!(
        fx.alive(victim.id).await.expect("monitor"),
        "signalled without an audit record"
    );
    let text = daemon.metrics().await;
    // Each cycle tries again, and fails again.
    assert!(
        require(&text, "dbwarden_remediation_audit_errors_total", &[]).is_ok_and(|v| v > errors),
        "{text}"
    );
    let counted = counted_actions(&text);
    assert!(
        counted
            .keys()
            .all(|(_, _, outcome, _)| outcome == "audit_failed"),
        "{counted:?}"
    );
    assert!(
        require(
            &text,
            "dbwarden_remediation_actions_total",
            &actions("idle", "terminate", "audit_failed", "enforce")
        )
        .is_ok_and(|v| v >= 1.0),
        "{counted:?}"
    );
    assert!(api_actions(&daemon).await.is_empty());
    victim.select_1("the idle session").await;
    daemon.stop().await;
}

/// Issue §9: dbwarden runs as a role with only `pg_monitor` and
/// `pg_signal_backend`. It observes, terminates an ordinary role's session,
/// and is refused by the server on a superuser's session that a policy
/// names (the superuser survives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_acts_on_ordinary_sessions_only() {
    let mut fx = Fixture::new(
        "CREATE ROLE app LOGIN; CREATE ROLE warden LOGIN;
         GRANT pg_monitor, pg_signal_backend TO warden",
    )
    .await;
    let mut victim = fx.session("app", "webapp").await;
    let mut superuser = fx.session("postgres", "su-victim").await;
    let audit_file = fx.audit_file();
    let warden_url = format!("postgres://warden@127.0.0.1:{}/postgres", fx.pg.port());
    let policies = idle_policy("1s", "webapp")
        + &policy(
            "superusers",
            "terminate",
            r#"state = ["idle"]
idle_for = "1s"
match_users = ["postgres"]
match_applications = ["su-victim"]"#,
        );
    let daemon =
        Daemon::start(&fx.config(&warden_url, "enforce", &audit_file, 100, &policies)).await;
    wait_until(
        T,
        "the ordinary session terminated, the superuser's refused",
        async || {
            let records = audit(&audit_file);
            let refused = records_of(&records, superuser.pid())
                .iter()
                .any(|r| r.decision == Decision::Refused);
            if !fx.alive(victim.id).await? && refused {
                Ok(())
            } else {
                Err(format!("audit {:?}", decisions(&records)))
            }
        },
    )
    .await;
    wait_polls(&daemon, 3.0).await;
    assert!(
        fx.alive(superuser.id).await.expect("monitor"),
        "the superuser's session is gone"
    );
    victim.assert_terminated("the ordinary session").await;
    superuser.select_1("the superuser's session").await;

    let records = audit(&audit_file);
    assert_acted_once(
        &records,
        victim.id,
        "the ordinary session",
        "idle",
        "terminate",
        "application webapp",
    );
    let su = records_of(&records, superuser.pid());
    assert!(
        su.iter().all(|r| r.policy == "superusers"
            && r.pg().backend_start_us == Some(superuser.id.1)
            && r.reason.contains("user postgres")),
        "{su:#?}"
    );
    // Each attempt: an intent, then the server's refusal; never acted.
    for pair in su.chunks(2) {
        let d: Vec<Decision> = pair.iter().map(|r| r.decision).collect();
        if d.len() == 2 {
            assert_eq!(d, [Decision::Intent, Decision::Refused], "{su:#?}");
            assert_eq!(pair[0].action_id, pair[1].action_id, "{su:#?}");
            assert!(
                pair[1].outcome.starts_with("refused by the server")
                    && pair[1].outcome.contains("superuser"),
                "{:?}",
                pair[1].outcome
            );
        } else {
            assert_eq!(d, [Decision::Intent], "{su:#?}");
        }
    }
    let others: BTreeSet<i32> = records
        .iter()
        .map(|r| r.pg().pid)
        .filter(|p| *p != victim.pid() && *p != superuser.pid())
        .collect();
    assert!(others.is_empty(), "{:?}", decisions(&records));
    eprintln!(
        "{} audit records for the superuser's session (intent + refused per poll)",
        su.len()
    );

    // Observation works with the role's rights, and dbwarden runs as it.
    let text = daemon.metrics().await;
    expect_metrics(
        &text,
        &[
            ("dbwarden_up", &[("target", TARGET)], Want::Eq(1.0)),
            (
                "dbwarden_remediation_actions_total",
                &actions("idle", "terminate", "acted", "enforce"),
                Want::Eq(1.0),
            ),
            (
                "dbwarden_remediation_actions_total",
                &actions("superusers", "terminate", "refused", "enforce"),
                Want::Ge(1.0),
            ),
            (
                "dbwarden_remediation_actor",
                &[("target", TARGET)],
                Want::Eq(1.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let status = daemon.status().await;
    let main = status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == TARGET))
        .unwrap_or_else(|| panic!("no target {TARGET} in {status:#}"));
    assert_eq!(main["up"], true, "{main:#}");
    let checks = main["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 14, "{main:#}");
    for c in checks {
        assert_ne!(c["status"], "unknown", "{c:#}");
        let name = c["check"].as_str().expect("check name");
        assert!(
            support::metric_value(
                &text,
                "dbwarden_check_failing",
                &[("target", TARGET), ("check", name)]
            )
            .is_some(),
            "no dbwarden_check_failing for {name}"
        );
    }
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity
         WHERE application_name = 'dbwarden' OR application_name LIKE 'dbwarden-%'",
    )
    .fetch_all(&mut fx.monitor)
    .await
    .expect("dbwarden's sessions");
    assert_eq!(users, ["warden"]);
    daemon.stop().await;
}

/// A policy gated on a probe check (`only_while_failing =
/// ["probe:backlog:pending"]`) leaves an idle session alone while the team's
/// own check passes, however many polls go by, and terminates it once the
/// check fails; the audit's reason names the probe check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_gated_on_a_probe_check_acts_only_while_that_check_fails() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN; CREATE TABLE queue (id int)").await;
    let policies = format!(
        r#"
[remediation.policies.idle_workers]
targets = ["{TARGET}"]
action = "terminate"
only_while_failing = ["probe:backlog:pending"]

[remediation.policies.idle_workers.when]
state = ["idle"]
idle_for = "1s"
match_applications = ["worker"]

[postgres.{TARGET}.probes.backlog]
sql = "SELECT count(*) AS pending FROM queue"
interval = "300ms"
timeout = "200ms"
checks.pending = {{ max = 10 }}
"#
    );
    let audit_file = fx.audit_file();
    let daemon = Daemon::start(&fx.config(&fx.url(), "enforce", &audit_file, 10, &policies)).await;
    let mut worker = fx.session("app", "worker").await;

    // The check passes (an empty queue) while the session is idle past
    // idle_for: wait for the probe's verdict and the candidate, then for
    // three more polls.
    wait_until(T, "probe:backlog:pending passes", async || {
        let s = daemon.status().await;
        let found = s["targets"][0]["probes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["checks"].as_array().into_iter().flatten())
            .find(|c| c["check"] == "probe:backlog:pending")
            .map(|c| c["status"].clone());
        match found {
            Some(v) if v == "pass" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The session meets the policy's conditions: a candidate, the gate closed.
    wait_until(T, "the idle worker a candidate", async || {
        let n = metric_or_zero(
            &daemon,
            "dbwarden_remediation_candidates",
            &[("target", TARGET), ("policy", "idle_workers")],
        )
        .await;
        if n >= 1.0 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;
    let seen = polls(&daemon).await;
    wait_until(T, "three more polls", async || {
        let n = polls(&daemon).await;
        if n >= seen + 3.0 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;
    assert_eq!(
        fx.alive(worker.id).await,
        Ok(true),
        "terminated while the gate was closed"
    );
    assert!(
        records_of(&audit(&audit_file), worker.id.0).is_empty(),
        "no audit record while the probe check passes"
    );

    // A backlog: the check fails, the gate opens, the session goes.
    psql(&fx.pg, "INSERT INTO queue SELECT generate_series(1, 50)");
    wait_until(T, "the idle worker terminated", async || {
        match fx.alive(worker.id).await {
            Ok(false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let records = audit(&audit_file);
    assert_acted_once(
        &records,
        worker.id,
        "idle worker",
        "idle_workers",
        "terminate",
        "probe:backlog:pending failing",
    );
    let _ = worker.conn.ping().await;
    daemon.stop().await;
}

// ------------------------------------------------------------------ bursts

impl Fixture {
    /// As [`Fixture::new`], on a primary that takes `max_connections`.
    async fn with_connections(max_connections: u32, setup_sql: &str) -> Fixture {
        let pg = support::primary_with(dbwarden::scratch::ClusterOptions {
            max_connections,
            ..Default::default()
        });
        psql(&pg, setup_sql);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write the token file");
        let monitor = support::connect(&pg, "monitor").await;
        Fixture { pg, dir, monitor }
    }
}

/// One batch statement over sessions that, between the snapshot and the
/// statement, ran a query, became active, left, or are another backend
/// (a stale backend_start), beside a superuser's session that the
/// signalling role may not signal, and unchanged sessions: each gets its
/// own outcome, in the batch's order; only the unchanged ones are
/// signalled (terminated, or cancelled: one statement sends both), and the
/// refusal does not stop the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_statement_rechecks_each_session_and_signals_only_the_unchanged() {
    let mut fx = Fixture::new(
        "CREATE ROLE app LOGIN; CREATE ROLE warden LOGIN;
         GRANT pg_monitor, pg_signal_backend TO warden",
    )
    .await;
    let config =
        Config::from_toml_with_env(&fast_target(TARGET, &fx.url(), ""), std::iter::empty())
            .expect("target config");
    let mut observer = PostgresObserver::new(config.postgres[0].target.clone());
    let cond = Conditions {
        states: vec![SessionState::Idle],
        idle_for: Some(Duration::from_millis(300)),
        match_users: vec!["app".into(), "postgres".into()],
        match_applications: NameSet::new(vec![], &["batch-.*"]).expect("pattern"),
        ..Conditions::default()
    };
    let policy = Policy {
        name: "idle".into(),
        targets: None,
        kind: Some(ActionKind::Terminate),
        grace: None,
        victims: Victims::All,
        max_per_cycle: 100,
        conditions: cond.clone(),
        only_while_failing: vec![],
        only_while_alerts: vec![],
    };
    let mut ok = Vec::new();
    for i in 0..6 {
        ok.push(fx.session("app", &format!("batch-ok-{i}")).await);
    }
    let mut ran = fx.session("app", "batch-ran").await;
    let busy = fx.session("app", "batch-busy").await;
    let gone = fx.session("app", "batch-gone").await;
    let mut other = fx.session("app", "batch-other").await;
    let mut su = fx.session("postgres", "batch-su").await;
    let mut cancelled = fx.session("app", "batch-cancelled").await;
    let mut ids: Vec<(i32, i64)> = ok.iter().map(|s| s.id).collect();
    ids.extend([ran.id, busy.id, gone.id, other.id, su.id, cancelled.id]);

    let selected = wait_until(T, "one snapshot to select every session", async || {
        let snapshot = observer.poll().await.map_err(|e| format!("poll: {e:?}"))?;
        let e = evaluate_policy(&policy, &snapshot, Gates::default());
        let pids: BTreeSet<i32> = e.selected.iter().map(|c| c.facts.pid).collect();
        if ids.iter().all(|id| pids.contains(&id.0)) && pids.len() == ids.len() {
            Ok(e.selected)
        } else {
            Err(format!("selected {pids:?}, want {ids:?}"))
        }
    })
    .await;
    observer.close().await;
    let candidate = |id: (i32, i64)| {
        selected
            .iter()
            .find(|c| c.facts.pid == id.0)
            .cloned()
            .expect("selected")
    };

    // Between the snapshot and the statement:
    ran.select_1("batch-ran").await;
    let busy_id = busy.id;
    let busy = spawn_query(busy, "SELECT count(*) FROM pg_sleep(600)");
    fx.wait_active(busy_id.0, false, "batch-busy to run its query")
        .await;
    let gone_id = gone.id;
    gone.conn.close().await.expect("close batch-gone");
    wait_until(T, "batch-gone to leave the server", async || {
        match fx.alive(gone_id).await? {
            false => Ok(()),
            true => Err("still there".into()),
        }
    })
    .await;
    let mut impostor = candidate(other.id);
    impostor.facts.backend_start_us = impostor.facts.backend_start_us.map(|b| b - 1);

    // The batch, in this order: three unchanged, the changed ones, the
    // superuser's, the cancelled one, three more unchanged.
    let mut candidates = Vec::new();
    let mut signals = Vec::new();
    for s in &ok[..3] {
        candidates.push(candidate(s.id));
        signals.push(Signal::Terminate);
    }
    for c in [
        candidate(ran.id),
        candidate(busy_id),
        candidate(gone_id),
        impostor,
        candidate(su.id),
    ] {
        candidates.push(c);
        signals.push(Signal::Terminate);
    }
    candidates.push(candidate(cancelled.id));
    signals.push(Signal::Cancel);
    for s in &ok[3..] {
        candidates.push(candidate(s.id));
        signals.push(Signal::Terminate);
    }
    let batch: Vec<executor::Batched<'_>> = candidates
        .iter()
        .zip(&signals)
        .map(|(c, &signal)| executor::Batched {
            candidate: c,
            signal,
            conditions: &cond,
        })
        .collect();
    // As the least-privilege role: the server would refuse the superuser's.
    let mut warden = connect_as(&fx.pg, "warden", "warden").await;
    let out = executor::signal_batch(&mut warden, &batch).await;

    assert_eq!(out.len(), batch.len());
    for (i, o) in out.iter().enumerate().take(3) {
        assert_eq!(*o, Outcome::Signalled, "row {i}");
    }
    assert_eq!(
        out[3],
        Outcome::Changed(vec!["the session was active since"]),
        "ran a query"
    );
    assert_eq!(
        out[4],
        Outcome::Changed(vec!["state", "the session was active since"]),
        "became active"
    );
    assert_eq!(out[5], Outcome::Gone, "left");
    assert_eq!(
        out[6],
        Outcome::Changed(vec!["a different backend now has this pid"]),
        "another backend"
    );
    match &out[7] {
        Outcome::Refused(m) => assert!(m.contains("superuser"), "{m}"),
        o => panic!("the superuser's session: {o:?}"),
    }
    assert_eq!(out[8], Outcome::Signalled, "the cancel");
    for (i, o) in out.iter().enumerate().skip(9) {
        assert_eq!(*o, Outcome::Signalled, "row {i}");
    }

    // On the server: the unchanged are gone, everything else still works.
    for s in &mut ok {
        let id = s.id;
        wait_until(
            T,
            "an unchanged session to be terminated",
            async || match fx.alive(id).await? {
                false => Ok(()),
                true => Err(format!("pid {} still there", id.0)),
            },
        )
        .await;
        s.assert_terminated("an unchanged session").await;
    }
    ran.select_1("batch-ran").await;
    other.select_1("batch-other").await;
    su.select_1("batch-su").await;
    cancelled
        .select_1("batch-cancelled (an idle session ignores a cancel)")
        .await;
    assert!(!busy.is_finished(), "batch-busy's query ended");
    let stopped: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(busy_id.0)
        .fetch_one(&mut fx.monitor)
        .await
        .expect("cancel batch-busy");
    assert!(stopped);
    let (mut busy, r) = busy.await.expect("batch-busy task");
    assert_cancelled(r, "the test cancelled batch-busy");
    busy.select_1("batch-busy").await;
}

/// The runbook's burst: 150 idle sessions cross `idle_for` at one instant
/// (they wait on one advisory lock, released at once), the daemon selects
/// them together and terminates every one, in batches of `batch_size`
/// (60): each batch's intents on consecutive lines before any of its
/// outcomes, every session with its intent before its `acted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_idle_sessions_is_terminated_in_batches() {
    const N: usize = 150;
    const BATCH: usize = 60;
    let mut fx = Fixture::with_connections(N as u32 + 30, "CREATE ROLE app LOGIN").await;
    let lock: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)")
        .fetch_one(&mut fx.monitor)
        .await
        .expect("take the lock");
    assert!(lock);
    let mut waiting = Vec::new();
    for i in 0..N {
        let s = fx.session("app", &format!("burst-{i}")).await;
        waiting.push(spawn_query(
            s,
            "SELECT count(*) FROM (SELECT pg_advisory_lock_shared(4242), pg_advisory_unlock_shared(4242)) x",
        ));
    }
    let audit_file = fx.audit_file();
    let toml = fx
        .config(
            &fx.url(),
            "enforce",
            &audit_file,
            1000,
            &idle_policy("1s", "burst-.*").replace("max_per_cycle = 10", "max_per_cycle = 1000"),
        )
        .replace("global = 100", "global = 1000")
        .replace(
            "pacing = \"0s\"",
            &format!("pacing = \"0s\"\nbatch_size = {BATCH}"),
        );
    let daemon = Daemon::start(&toml).await;
    wait_until(T, "every session waiting on the lock", async || {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'burst-%' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut fx.monitor)
        .await
        .map_err(|e| e.to_string())?;
        if n as usize == N { Ok(()) } else { Err(format!("{n} waiting")) }
    })
    .await;
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(4242)")
        .fetch_one(&mut fx.monitor)
        .await
        .expect("release the lock");
    assert!(unlocked);
    let mut sessions = Vec::new();
    for w in waiting {
        let (s, r) = w.await.expect("session task");
        assert_eq!(r.expect("the lock query"), 1);
        sessions.push(s);
    }
    let ids: Vec<(i32, i64)> = sessions.iter().map(|s| s.id).collect();
    // The outcomes are written after the statement: wait for both.
    wait_until(
        T,
        "every session of the burst terminated and audited",
        async || {
            let left = fx.client_pids().await;
            let alive = ids.iter().filter(|id| left.contains(&id.0)).count();
            let acted = audit(&audit_file)
                .iter()
                .filter(|r| r.decision == Decision::Acted)
                .count();
            if alive == 0 && acted == N {
                Ok(())
            } else {
                Err(format!("{alive} of {N} left, {acted} acted records"))
            }
        },
    )
    .await;
    let records = audit(&audit_file);
    for &id in &ids {
        assert_acted_once(&records, id, "a burst session", "idle", "terminate", "idle");
        let at = |d: Decision| {
            records
                .iter()
                .position(|r| r.pg().pid == id.0 && r.decision == d)
                .expect("a record")
        };
        assert!(at(Decision::Intent) < at(Decision::Acted), "pid {}", id.0);
    }
    // Runs of consecutive intents are the batches.
    let mut runs = Vec::new();
    let mut run = 0;
    for r in &records {
        if r.decision == Decision::Intent {
            run += 1;
        } else if run > 0 {
            runs.push(run);
            run = 0;
        }
    }
    assert_eq!(run, 0, "the file ends with outcomes");
    assert_eq!(runs.iter().sum::<usize>(), N, "{runs:?}");
    assert!(runs.iter().all(|&r| r <= BATCH), "{runs:?}");
    assert_eq!(runs.iter().max(), Some(&BATCH), "full batches: {runs:?}");
    // A batch's outcomes follow its intents, in the same order.
    let mut i = 0;
    for &n in &runs {
        let intents = &records[i..i + n];
        let outcomes = &records[i + n..i + 2 * n];
        for (a, b) in intents.iter().zip(outcomes) {
            assert_eq!(a.action_id, b.action_id, "{runs:?}");
            assert_eq!(b.decision, Decision::Acted);
        }
        i += 2 * n;
    }
    assert_eq!(i, records.len());
    wait_until(T, "every action counted", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[(
                "dbwarden_remediation_actions_total",
                &actions("idle", "terminate", "acted", "enforce"),
                Want::Eq(N as f64),
            )],
        )
    })
    .await;
    for s in &mut sessions {
        s.assert_terminated("a burst session").await;
    }
}

/// A session that will cross its policy's `idle_for` before the next poll
/// is acted on when it crosses: the runner brings one poll forward to that
/// moment instead of leaving it to the next poll (here a day away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_acted_on_when_it_crosses_not_at_the_next_poll() {
    let mut fx = Fixture::new("CREATE ROLE app LOGIN").await;
    let mut crossing = fx.session("app", "crossing").await;
    let audit_file = fx.audit_file();
    let toml = fx
        .config(
            &fx.url(),
            "enforce",
            &audit_file,
            10,
            &idle_policy("3s", "crossing"),
        )
        .replace("poll_interval = \"300ms\"", "poll_interval = \"1day\"");
    let daemon = Daemon::start(&toml).await;
    wait_until(T, "the session terminated", async || {
        if fx.alive(crossing.id).await? {
            Err("alive".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let records = audit(&audit_file);
    assert_acted_once(
        &records,
        crossing.id,
        "the crossing session",
        "idle",
        "terminate",
        "idle",
    );
    let intent = records
        .iter()
        .find(|r| r.decision == Decision::Intent)
        .expect("an intent");
    let idle = intent.pg().idle_seconds.expect("idle seconds");
    // Selected by the poll brought forward to the crossing, not by a later one.
    assert!(
        (3.0..4.5).contains(&idle),
        "selected after {idle} s idle, idle_for 3 s"
    );
    // The first poll, then the one brought forward: the day's next poll is far.
    assert_eq!(polls(&daemon).await, 2.0);
    assert_eq!(
        metric_or_zero(
            &daemon,
            "dbwarden_remediation_polls_brought_forward_total",
            &[("target", TARGET)]
        )
        .await,
        1.0
    );
    crossing.assert_terminated("the crossing session").await;
}
