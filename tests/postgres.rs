//! Integration tests against real PostgreSQL 15 scratch clusters: the daemon
//! runs in-process, the tests create real sessions, locks, replication lag
//! and faults, and assert through `/metrics`, `/api/v1/status`, `/readyz`
//! and the `dbwarden check` binary. Each test starts the clusters it needs on
//! free ports (never the system server) and waits on conditions with
//! deadlines. Needs the Debian package `postgresql-15`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;
use support::{Daemon, Want, expect_metrics, fast_target, psql, require, try_psql, wait_until};

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(20);

fn target<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == name))
        .unwrap_or_else(|| panic!("no target {name:?} in {status:#}"))
}

fn check<'a>(target: &'a Value, name: &str) -> &'a Value {
    target["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {target:#}"))
}

/// The kinds of every poll error counted for `target`, as one number.
fn errors_of(text: &str, target: &str, kinds: &[&str]) -> f64 {
    let all = support::poll_errors(text, target);
    kinds
        .iter()
        .map(|k| all.get(*k).copied().unwrap_or(0.0))
        .sum()
}

const SESSION_THRESHOLDS: &str = r#"long_running_query = { max = "1s", for = "0s" }
idle_session = { max = "1s", for = "0s" }
idle_in_transaction = { max = "1s", for = "0s" }"#;

/// Requirement 1: idle, idle-in-transaction, long-running and lock-waiting
/// sessions on a real server show in the metrics and fail their checks, in
/// the daemon and in `dbwarden check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sessions_fail_the_session_checks() {
    let pg = support::primary();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    // One-shot poll including the connect: generous timeouts.
    let check_config = dir.path().join("check.toml");
    std::fs::write(
        &check_config,
        format!(
            r#"[postgres.main]
url = "{url}"
sslmode = "disable"
poll_interval = "10s"
poll_timeout = "5s"
statement_timeout = "3s"

[postgres.main.thresholds]
{SESSION_THRESHOLDS}
"#
        ),
    )
    .expect("write check config");

    // A fresh cluster passes everything, and `check`'s own (active) session
    // is not a long-running query.
    let out = support::dbwarden_check(&check_config, "text");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        support::describe_output(&out)
    );
    assert!(text.contains("PASS"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    let out = support::dbwarden_check(&check_config, "json");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        support::describe_output(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check JSON: {e}\n{}", support::describe_output(&out)));
    assert_eq!(report["ok"], true, "{report:#}");
    let main = target(&report, "main");
    assert_eq!(main["up"], true, "{main:#}");
    let lrq = check(main, "long_running_query");
    assert_eq!(lrq["status"], "pass", "{lrq:#}");
    assert_eq!(lrq["value"].as_f64(), Some(0.0), "{lrq:#}");

    // The incident: one session of each kind.
    psql(&pg, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let mut idle = support::connect(&pg, "app_idle").await;
    sqlx::query("SELECT 1")
        .execute(&mut idle)
        .await
        .expect("idle session");
    let mut iit = support::connect(&pg, "app_iit").await;
    let mut iit_tx = iit.begin().await.expect("BEGIN");
    sqlx::query("SELECT 1")
        .execute(&mut *iit_tx)
        .await
        .expect("SELECT in transaction");
    let mut blocker = support::connect(&pg, "app_blocker").await;
    let mut blocker_tx = blocker.begin().await.expect("BEGIN");
    sqlx::query("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker_tx)
        .await
        .expect("LOCK TABLE t");
    let sleeper = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut c = support::connect_url(&url, "app_sleep").await;
            sqlx::query("SELECT pg_sleep(60)").execute(&mut c).await
        })
    };
    // The sleeper starts first, so it is the longest-running query.
    wait_until(T, "pg_sleep to run", async || {
        match try_psql(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'app_sleep' AND state = 'active'",
        )?
        .as_str()
        {
            "1" => Ok(()),
            n => Err(format!("{n} active app_sleep sessions")),
        }
    })
    .await;
    let waiter = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut c = support::connect_url(&url, "app_waiter").await;
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
                .fetch_one(&mut c)
                .await
        })
    };

    let daemon = Daemon::start(&fast_target("main", &url, SESSION_THRESHOLDS)).await;
    let m = [("target", "main")];
    let st = |s: &'static str| [("target", "main"), ("state", s)];
    let ck = |c: &'static str| [("target", "main"), ("check", c)];
    wait_until(
        T,
        "the sessions to show and their checks to fail",
        async || {
            let text = daemon.try_metrics().await?;
            expect_metrics(
                &text,
                &[
                    ("dbwarden_up", &m, Want::Eq(1.0)),
                    ("dbwarden_postgres_sessions", &st("idle"), Want::Ge(1.0)),
                    // app_iit and app_blocker
                    (
                        "dbwarden_postgres_sessions",
                        &st("idle_in_transaction"),
                        Want::Eq(2.0),
                    ),
                    // app_sleep, app_waiter (and dbwarden's own polling session)
                    ("dbwarden_postgres_sessions", &st("active"), Want::Ge(2.0)),
                    ("dbwarden_postgres_lock_waiting_sessions", &m, Want::Eq(1.0)),
                    (
                        "dbwarden_postgres_lock_blocking_sessions",
                        &m,
                        Want::Eq(1.0),
                    ),
                    (
                        "dbwarden_postgres_longest_active_query_seconds",
                        &m,
                        Want::Gt(1.0),
                    ),
                    (
                        "dbwarden_check_failing",
                        &ck("long_running_query"),
                        Want::Eq(1.0),
                    ),
                    (
                        "dbwarden_check_failing",
                        &ck("idle_in_transaction"),
                        Want::Eq(1.0),
                    ),
                    ("dbwarden_check_failing", &ck("idle_session"), Want::Eq(1.0)),
                    ("dbwarden_check_failing", &ck("connection"), Want::Eq(0.0)),
                    (
                        "dbwarden_check_value",
                        &ck("long_running_query"),
                        Want::Gt(1.0),
                    ),
                ],
            )
        },
    )
    .await;

    // The long-running query is the sleeper, not dbwarden's own session.
    let status = daemon.status().await;
    let lrq = check(target(&status, "main"), "long_running_query");
    let detail = lrq["detail"].as_str().unwrap_or_default();
    assert_eq!(lrq["status"], "fail", "{lrq:#}");
    assert!(detail.contains(r#"application "app_sleep""#), "{lrq:#}");

    // `dbwarden check` sees the same incident.
    let out = support::dbwarden_check(&check_config, "json");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        support::describe_output(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check JSON: {e}\n{}", support::describe_output(&out)));
    assert_eq!(report["ok"], false, "{report:#}");
    let main = target(&report, "main");
    assert_eq!(main["up"], true, "{main:#}");
    assert!(main["error"].is_null(), "{main:#}");
    assert_eq!(
        main["checks"].as_array().map(Vec::len),
        Some(14),
        "{main:#}"
    );
    for (name, want) in [
        ("long_running_query", "fail"),
        ("idle_in_transaction", "fail"),
        ("idle_session", "fail"),
        ("connection", "pass"),
        ("invalid_indexes", "pass"),
    ] {
        assert_eq!(check(main, name)["status"], want, "{name}: {main:#}");
    }
    assert!(
        check(main, "long_running_query")["detail"]
            .as_str()
            .is_some_and(|d| d.contains(r#"application "app_sleep""#)),
        "{main:#}"
    );
    assert_eq!(main["summary"]["lock_waiters"], 1, "{main:#}");
    assert_eq!(main["summary"]["lock_blockers"], 1, "{main:#}");

    // Clean up the incident: the long query and the lock wait go away.
    assert_eq!(
        psql(
            &pg,
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'app_sleep'"
        ),
        "t"
    );
    let err = sleeper
        .await
        .expect("sleeper task")
        .expect_err("pg_sleep(60) was cancelled");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("57014"),
        "{err}"
    );
    blocker_tx.rollback().await.expect("ROLLBACK blocker");
    let rows = waiter
        .await
        .expect("waiter task")
        .expect("the waiter's SELECT");
    assert_eq!(rows, 1);
    iit_tx.rollback().await.expect("ROLLBACK iit");
    wait_until(T, "the long query and the lock wait to clear", async || {
        let text = daemon.try_metrics().await?;
        expect_metrics(
            &text,
            &[
                (
                    "dbwarden_check_failing",
                    &ck("long_running_query"),
                    Want::Eq(0.0),
                ),
                (
                    "dbwarden_check_failing",
                    &ck("idle_in_transaction"),
                    Want::Eq(0.0),
                ),
                ("dbwarden_postgres_lock_waiting_sessions", &m, Want::Eq(0.0)),
                (
                    "dbwarden_postgres_lock_blocking_sessions",
                    &m,
                    Want::Eq(0.0),
                ),
            ],
        )
    })
    .await;
    daemon.stop().await;
}

/// Requirement 2: replication lag from a standby whose replay is paused
/// while the primary keeps writing; an idle primary is not lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_on_a_real_standby_is_replication_lag() {
    let primary = support::primary();
    let standby = support::standby(&primary);
    psql(
        &primary,
        "CREATE TABLE w (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
    );
    let lag = r#"replication_lag = { max = "1s", for = "0s" }"#;
    let toml = fast_target("primary", &primary.url("postgres"), lag)
        + &fast_target("standby", &standby.url("postgres"), lag);
    let daemon = Daemon::start(&toml).await;

    let name = wait_until(T, "the primary to report a streaming standby", async || {
        let n = try_psql(
            &primary,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
        )?;
        if n.is_empty() || n.contains('\n') {
            Err(format!("streaming standbys: {n:?}"))
        } else {
            Ok(n)
        }
    })
    .await;
    let p = [("target", "primary")];
    let s = [("target", "standby")];
    let p_sb = [("target", "primary"), ("standby", name.as_str())];
    let p_ck = |c: &'static str| [("target", "primary"), ("check", c)];
    let s_ck = |c: &'static str| [("target", "standby"), ("check", c)];
    wait_until(T, "both targets up, replication streaming", async || {
        let text = daemon.try_metrics().await?;
        expect_metrics(
            &text,
            &[
                ("dbwarden_up", &p, Want::Eq(1.0)),
                ("dbwarden_up", &s, Want::Eq(1.0)),
                ("dbwarden_postgres_in_recovery", &p, Want::Eq(0.0)),
                ("dbwarden_postgres_in_recovery", &s, Want::Eq(1.0)),
                ("dbwarden_postgres_standby_streaming", &p_sb, Want::Eq(1.0)),
                (
                    "dbwarden_postgres_wal_receiver_streaming",
                    &s,
                    Want::Eq(1.0),
                ),
                (
                    "dbwarden_check_failing",
                    &s_ck("replication_lag"),
                    Want::Eq(0.0),
                ),
                (
                    "dbwarden_check_failing",
                    &s_ck("replication_streaming"),
                    Want::Eq(0.0),
                ),
                (
                    "dbwarden_check_failing",
                    &p_ck("replication_lag"),
                    Want::Eq(0.0),
                ),
            ],
        )
    })
    .await;

    // An idle primary: the last replayed transaction grows older than the
    // threshold, yet the caught-up standby reads no delay.
    psql(&primary, "INSERT INTO w DEFAULT VALUES");
    wait_until(
        T,
        "the standby to replay the insert and its last replay to age past 1.5s",
        async || {
            let r = try_psql(
                &standby,
                "SELECT count(*) || ' rows, caught up ' || (pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()) \
                 || ', last replay age ' || (now() - pg_last_xact_replay_timestamp()) FROM w",
            )?;
            let old = try_psql(
                &standby,
                "SELECT (SELECT count(*) FROM w) = 1 AND now() - pg_last_xact_replay_timestamp() > interval '1.5 s'",
            )?;
            if old == "t" { Ok(()) } else { Err(r) }
        },
    )
    .await;
    // Three more standby polls: the last published one started after the wait.
    let polls = |text: &str| require(text, "dbwarden_polls_total", &s);
    let base = polls(&daemon.metrics().await).expect("polls_total");
    let text = wait_until(
        T,
        "three more polls of the standby, the latest successful",
        async || {
            let text = daemon.try_metrics().await?;
            let n = polls(&text)?;
            let up = require(&text, "dbwarden_up", &s)?;
            if n >= base + 3.0 && up == 1.0 {
                Ok(text)
            } else {
                Err(format!("{n} polls, up {up}"))
            }
        },
    )
    .await;
    expect_metrics(
        &text,
        &[
            ("dbwarden_postgres_replay_delay_seconds", &s, Want::Eq(0.0)),
            ("dbwarden_postgres_replay_paused", &s, Want::Eq(0.0)),
            (
                "dbwarden_check_value",
                &s_ck("replication_lag"),
                Want::Eq(0.0),
            ),
            (
                "dbwarden_check_failing",
                &s_ck("replication_lag"),
                Want::Eq(0.0),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("an idle primary must not read as lag: {e}"));

    // Pause replay on the standby while the primary keeps writing.
    psql(&standby, "SELECT pg_wal_replay_pause()");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let url = primary.url("postgres");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = support::connect_url(&url, "app_writer").await;
            let mut rows = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("INSERT INTO w DEFAULT VALUES")
                    .execute(&mut c)
                    .await?;
                rows += 1;
                // Pacing of the workload, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<u64, sqlx::Error>(rows)
        })
    };
    wait_until(
        T,
        "the paused standby to fail replication_lag",
        async || {
            let text = daemon.try_metrics().await?;
            expect_metrics(
                &text,
                &[
                    (
                        "dbwarden_check_failing",
                        &s_ck("replication_lag"),
                        Want::Eq(1.0),
                    ),
                    (
                        "dbwarden_check_value",
                        &s_ck("replication_lag"),
                        Want::Gt(1.0),
                    ),
                    ("dbwarden_postgres_replay_paused", &s, Want::Eq(1.0)),
                    ("dbwarden_postgres_replay_delay_seconds", &s, Want::Gt(1.0)),
                    ("dbwarden_postgres_replay_pending_bytes", &s, Want::Gt(0.0)),
                    // The receiver keeps streaming: only replay is behind.
                    (
                        "dbwarden_postgres_wal_receiver_streaming",
                        &s,
                        Want::Eq(1.0),
                    ),
                    (
                        "dbwarden_check_failing",
                        &s_ck("replication_streaming"),
                        Want::Eq(0.0),
                    ),
                    (
                        "dbwarden_postgres_standby_replay_lag_bytes",
                        &p_sb,
                        Want::Gt(0.0),
                    ),
                ],
            )
        },
    )
    .await;

    // Resume: the standby catches up while writes continue.
    psql(&standby, "SELECT pg_wal_replay_resume()");
    wait_until(T, "replication_lag to recover after resume", async || {
        let text = daemon.try_metrics().await?;
        expect_metrics(
            &text,
            &[
                (
                    "dbwarden_check_failing",
                    &s_ck("replication_lag"),
                    Want::Eq(0.0),
                ),
                (
                    "dbwarden_check_value",
                    &s_ck("replication_lag"),
                    Want::Lt(1.0),
                ),
                ("dbwarden_postgres_replay_paused", &s, Want::Eq(0.0)),
            ],
        )
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let rows = writer
        .await
        .expect("writer task")
        .expect("the writer's INSERTs");
    assert!(rows >= 5, "the writer wrote only {rows} rows");
    daemon.stop().await;
}

/// Requirement 3: the server stops while the daemon runs, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_reads_down_and_recovers_by_itself() {
    let pg = support::primary();
    let daemon = Daemon::start(&fast_target("main", &pg.url("postgres"), "")).await;
    let m = [("target", "main")];
    let conn = [("target", "main"), ("check", "connection")];
    wait_until(T, "the target to be up", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_up", &m, Want::Eq(1.0))],
        )
    })
    .await;
    let before = support::poll_errors(&daemon.metrics().await, "main");
    assert!(
        before.values().all(|v| *v == 0.0),
        "errors before the fault: {before:?}"
    );

    support::blocking(|| pg.stop()).unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
    let observed = wait_until(
        T,
        "the target to read down with connect errors",
        async || {
            // The process keeps serving while the target is down.
            match daemon.get("/livez").await? {
                (200, _) => {}
                other => panic!("/livez while the target is down: {other:?}"),
            }
            let text = daemon.try_metrics().await?;
            let errors = support::poll_errors(&text, "main");
            expect_metrics(
                &text,
                &[
                    ("dbwarden_up", &m, Want::Eq(0.0)),
                    ("dbwarden_check_failing", &conn, Want::Eq(1.0)),
                    // A down target exports no server state.
                    ("dbwarden_postgres_in_recovery", &m, Want::Absent),
                ],
            )
            .map_err(|e| format!("{e}; errors {errors:?}"))?;
            // A refused connection is a connect error (the first failure may be
            // the pooled connection breaking: io).
            if errors.get("connect").copied().unwrap_or(0.0) >= 2.0 {
                Ok(errors)
            } else {
                Err(format!("errors by kind {errors:?}"))
            }
        },
    )
    .await;
    eprintln!("poll errors while stopped: {observed:?}");
    // Our session being terminated by the shutdown (57P01) is a broken
    // connection, not a refused statement.
    assert_eq!(
        observed.get("query").copied(),
        Some(0.0),
        "a stopped server counted as query errors: {observed:?}"
    );

    assert_eq!(daemon.get("/livez").await, Ok((200, "ok\n".to_string())));
    let (code, body) = daemon.get("/readyz").await.expect("/readyz");
    assert_eq!(code, 200, "{body}");
    let status = daemon.status().await;
    let main = target(&status, "main");
    assert_eq!(main["up"], false, "{main:#}");
    assert!(main["consecutive_failures"].as_u64() >= Some(1), "{main:#}");
    assert!(main["last_error"]["kind"].is_string(), "{main:#}");
    assert_eq!(check(main, "connection")["status"], "fail", "{main:#}");
    assert_eq!(
        check(main, "long_running_query")["status"],
        "unknown",
        "{main:#}"
    );

    support::blocking(|| pg.start()).unwrap_or_else(|e| panic!("pg_ctl start: {e}"));
    wait_until(T, "the target to be up again by itself", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[
                ("dbwarden_up", &m, Want::Eq(1.0)),
                ("dbwarden_check_failing", &conn, Want::Eq(0.0)),
                ("dbwarden_postgres_in_recovery", &m, Want::Eq(0.0)),
            ],
        )
    })
    .await;
    daemon.stop().await;
}

/// dbwarden's backends on the server, counted from a connection opened
/// before the lock: its sessions, plus backends stuck in connection start-up
/// (they wait on a lock but have no activity entry yet, and still take a
/// connection slot). The test opens no connections while it holds the lock,
/// so every such backend is dbwarden's. Reads shared memory only:
/// `pg_stat_get_activity()` and `pg_locks`, never `pg_database` (which the
/// `pg_stat_activity` view joins).
async fn dbwarden_backends(monitor: &mut sqlx::PgConnection) -> Result<i64, String> {
    sqlx::query_scalar::<_, i64>(
        "SELECT (SELECT count(*) FROM pg_stat_get_activity(NULL)
                 WHERE application_name = 'dbwarden')
              + (SELECT count(DISTINCT pid) FROM pg_locks
                 WHERE NOT granted
                   AND pid NOT IN (SELECT pid FROM pg_stat_get_activity(NULL) WHERE pid IS NOT NULL))",
    )
    .fetch_one(monitor)
    .await
    .map_err(|e| format!("monitor query: {e}"))
}

/// The connection budget of the targets in these tests (`fast_target`).
const BUDGET: f64 = 2.0;

/// One observation under a catalog lock: panics at once when dbwarden holds
/// more than its budget, server-side or by its own count.
async fn assert_within_budget(
    monitor: &mut sqlx::PgConnection,
    daemon: &Daemon,
    max_seen: &mut i64,
) -> Result<String, String> {
    let backends = dbwarden_backends(monitor).await?;
    let text = daemon.try_metrics().await?;
    let open = require(&text, "dbwarden_open_connections", &[("target", "main")])?;
    *max_seen = (*max_seen).max(backends);
    assert!(
        backends as f64 <= BUDGET && open <= BUDGET,
        "over the connection budget of {BUDGET} during the lock: {backends} dbwarden backends \
         on the server, dbwarden_open_connections {open}; poll errors {:?}",
        support::poll_errors(&text, "main")
    );
    Ok(text)
}

/// Requirement 4: a lock on a catalog the poll reads makes polls fail fast
/// (lock_timeout) on dbwarden's established connection, and dbwarden stays
/// within its connection budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lock_fails_polls_within_the_connection_budget() {
    let pg = support::primary();
    let daemon = Daemon::start(&fast_target("main", &pg.url("postgres"), "")).await;
    let m = [("target", "main")];
    wait_until(T, "the target to be up", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_up", &m, Want::Eq(1.0))],
        )
    })
    .await;

    let mut monitor = support::connect(&pg, "monitor").await;
    let mut locker = support::connect(&pg, "locker").await;
    let lock_kinds = ["lock_timeout", "timeout", "statement_timeout"];
    let base = errors_of(&daemon.metrics().await, "main", &lock_kinds);

    let mut tx = locker.begin().await.expect("BEGIN");
    sqlx::query("LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("LOCK pg_database");
    let mut max_seen = 0;
    let observed = wait_until(T, "polls to fail on the catalog lock", async || {
        let text = assert_within_budget(&mut monitor, &daemon, &mut max_seen).await?;
        let errors = support::poll_errors(&text, "main");
        expect_metrics(&text, &[("dbwarden_up", &m, Want::Eq(0.0))])
            .map_err(|e| format!("{e}; errors {errors:?}"))?;
        if errors_of(&text, "main", &lock_kinds) >= base + 3.0 {
            Ok(errors)
        } else {
            Err(format!("errors by kind {errors:?}"))
        }
    })
    .await;
    eprintln!(
        "poll errors during the catalog lock: {observed:?}; most dbwarden backends {max_seen}"
    );
    let status = daemon.status().await;
    let main = target(&status, "main");
    let kind = main["last_error"]["kind"].as_str().unwrap_or_default();
    assert!(lock_kinds.contains(&kind), "{main:#}");
    assert_eq!(check(main, "connection")["status"], "fail", "{main:#}");

    tx.rollback().await.expect("ROLLBACK releases the lock");
    wait_until(
        T,
        "the target to be up after the lock is released",
        async || {
            expect_metrics(
                &daemon.try_metrics().await?,
                &[("dbwarden_up", &m, Want::Eq(1.0))],
            )
        },
    )
    .await;
    let backends = dbwarden_backends(&mut monitor).await.expect("monitor");
    assert!(backends as f64 <= BUDGET, "{backends} dbwarden backends");
    daemon.stop().await;
}

/// Requirement 4 when dbwarden must reconnect during the lock (its session
/// was terminated). Connection start-up reads pg_database too, and the
/// session's `lock_timeout` does not apply there: a new connection waits in
/// "startup" until the lock is released, also after dbwarden gave up on it.
/// Those backends hold connection slots, so abandoning one attempt per poll
/// and opening another would exceed the budget on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lock_during_reconnect_stays_within_the_connection_budget() {
    let pg = support::primary();
    let daemon = Daemon::start(&fast_target("main", &pg.url("postgres"), "")).await;
    let m = [("target", "main")];
    wait_until(T, "the target to be up", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_up", &m, Want::Eq(1.0))],
        )
    })
    .await;

    let mut monitor = support::connect(&pg, "monitor").await;
    let mut locker = support::connect(&pg, "locker").await;
    let mut tx = locker.begin().await.expect("BEGIN");
    sqlx::query("LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("LOCK pg_database");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
         FROM pg_stat_get_activity(NULL) WHERE application_name = 'dbwarden'",
    )
    .fetch_one(&mut monitor)
    .await
    .expect("terminate dbwarden's sessions");
    assert!(terminated >= 1, "dbwarden had no session to terminate");
    let all_kinds = |text: &str| support::poll_errors(text, "main").values().sum::<f64>();
    let base = all_kinds(&daemon.metrics().await);

    let mut max_seen = 0;
    let observed = wait_until(T, "five failed polls during the lock", async || {
        let text = assert_within_budget(&mut monitor, &daemon, &mut max_seen).await?;
        let errors = support::poll_errors(&text, "main");
        expect_metrics(&text, &[("dbwarden_up", &m, Want::Eq(0.0))])
            .map_err(|e| format!("{e}; errors {errors:?}"))?;
        if all_kinds(&text) >= base + 5.0 {
            Ok(errors)
        } else {
            Err(format!("errors by kind {errors:?}"))
        }
    })
    .await;
    eprintln!(
        "poll errors while reconnecting under the lock: {observed:?}; most dbwarden backends {max_seen}"
    );

    tx.rollback().await.expect("ROLLBACK releases the lock");
    wait_until(
        T,
        "the target to be up after the lock is released",
        async || {
            expect_metrics(
                &daemon.try_metrics().await?,
                &[("dbwarden_up", &m, Want::Eq(1.0))],
            )
        },
    )
    .await;
    wait_until(
        T,
        "dbwarden's backends to be within the budget",
        async || match dbwarden_backends(&mut monitor).await? {
            n if n as f64 <= BUDGET => Ok(()),
            n => Err(format!("{n} dbwarden backends")),
        },
    )
    .await;
    daemon.stop().await;
}

/// Requirement 5: `/readyz` before and after the first poll, and the status API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_status_api() {
    let pg = support::primary();
    // A hung server: its first poll cannot finish before 3s.
    let hung = support::Blackhole::new();
    let hung_timeouts = Duration::from_secs(3);
    let toml = fast_target("main", &pg.url("postgres"), "")
        + &format!(
            r#"
[postgres.hung]
url = "{}"
sslmode = "disable"
poll_interval = "3s"
poll_timeout = "3s"
connect_timeout = "3s"
statement_timeout = "1s"
"#,
            hung.url()
        );
    let started = Instant::now();
    let daemon = Daemon::start(&toml).await;
    let (code, body) = daemon.get("/readyz").await.expect("/readyz");
    if started.elapsed() < hung_timeouts - Duration::from_millis(500) {
        assert_eq!(code, 503, "{body}");
        let ready: Value = serde_json::from_str(&body).expect("/readyz JSON");
        assert_eq!(ready["ready"], false, "{ready:#}");
        assert_eq!(target(&ready, "hung")["polled"], false, "{ready:#}");
    } else {
        eprintln!(
            "skipped the 503 half of /readyz: start-up took {:?}",
            started.elapsed()
        );
    }

    let ready = wait_until(T, "/readyz to answer 200", async || {
        match daemon.get("/readyz").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await;
    let ready: Value = serde_json::from_str(&ready).expect("/readyz JSON");
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(target(&ready, "hung")["polled"], true, "{ready:#}");
    assert_eq!(target(&ready, "hung")["up"], false, "{ready:#}");

    let status = wait_until(T, "main to be up in the status API", async || {
        let status = daemon.status().await;
        if target(&status, "main")["up"] == true {
            Ok(status)
        } else {
            Err(format!("{status:#}"))
        }
    })
    .await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    let main = target(&status, "main");
    assert_eq!(main["kind"], "postgres", "{main:#}");
    assert!(main["polls_completed"].as_u64() >= Some(1), "{main:#}");
    assert!(main["last_error"].is_null(), "{main:#}");
    assert!(main["last_success_at"].is_string(), "{main:#}");
    assert!(
        main["summary"]["connections_used"].as_u64() >= Some(1),
        "{main:#}"
    );
    let checks = main["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 14, "{main:#}");
    let names: std::collections::BTreeSet<&str> =
        checks.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(names.len(), 14, "duplicate checks: {main:#}");
    for c in checks {
        assert_eq!(
            c["status"], "pass",
            "a fresh cluster passes every check: {c:#}"
        );
    }
    let hung_status = target(&status, "hung");
    assert_eq!(hung_status["up"], false, "{hung_status:#}");
    let kind = hung_status["last_error"]["kind"]
        .as_str()
        .unwrap_or_default();
    assert!(["timeout", "connect"].contains(&kind), "{hung_status:#}");
    assert_eq!(check(hung_status, "connection")["status"], "fail");
    assert_eq!(check(hung_status, "replication_lag")["status"], "unknown");

    // OpenMetrics to a client that asks for it, the text format 0.0.4 to others.
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.base_url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = resp.text().await.expect("metrics body");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let resp = daemon.get_full("/metrics").await;
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = resp.text().await.expect("metrics body");
    assert!(!text.contains("# EOF"), "{text}");
    let (code, _) = daemon.get("/no/such/endpoint").await.expect("GET");
    assert_eq!(code, 404);
    daemon.stop().await;
}

/// Requirement 6: `run` returns within the grace period once the shutdown
/// future resolves, even with a poll hanging on an unresponsive server, and
/// dbwarden's sessions are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_within_the_grace_period() {
    let pg = support::primary();
    let hung = support::Blackhole::new();
    let grace = Duration::from_secs(3);
    let toml = r#"[server]
shutdown_grace = "3s"
"#
    .to_string()
        + &fast_target("main", &pg.url("postgres"), "")
        + &format!(
            r#"
[postgres.hung]
url = "{}"
sslmode = "disable"
poll_interval = "30s"
poll_timeout = "30s"
connect_timeout = "30s"
statement_timeout = "1s"
"#,
            hung.url()
        );
    let daemon = Daemon::start(&toml).await;
    assert_eq!(daemon.config.server.shutdown_grace, grace);
    wait_until(T, "main to be up", async || {
        expect_metrics(
            &daemon.try_metrics().await?,
            &[("dbwarden_up", &[("target", "main")], Want::Eq(1.0))],
        )
    })
    .await;
    // The hung target's first poll is still in flight.
    assert_eq!(target(&daemon.status().await, "hung")["polls_completed"], 0);
    let dbwarden_sessions =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbwarden'";
    assert_ne!(psql(&pg, dbwarden_sessions), "0");

    let base_url = daemon.base_url.clone();
    let took = daemon.stop().await;
    assert!(
        took < grace,
        "run() returned after {took:?}, not within the grace period {grace:?}"
    );
    // The listener is closed and dbwarden's sessions are gone.
    let err = reqwest::get(format!("{base_url}/livez"))
        .await
        .expect_err("nothing listens after shutdown");
    assert!(err.is_connect(), "{err}");
    wait_until(
        T,
        "dbwarden's sessions to close",
        async || match try_psql(&pg, dbwarden_sessions)?.as_str() {
            "0" => Ok(()),
            n => Err(format!("{n} dbwarden sessions")),
        },
    )
    .await;
}
