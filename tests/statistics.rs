//! The built-in performance statistics against real PostgreSQL 15: scratch
//! clusters (Debian package `postgresql-15`, which also ships the
//! `pg_stat_statements` contrib) and the local server at 127.0.0.1:5432.
//! Counters are asserted as `/metrics` shows them after real transactions,
//! temporary files and deadlocks; the slot check through `dbwarden check
//! --format json` on a slot really lost. Every wait is on a condition with a
//! deadline.

mod support;

use std::time::{Duration, Instant};

use dbwarden::observe::{StatisticsErrorReason, StatisticsSource, postgres, statistics};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use support::{Daemon, fast_target, psql, require, wait_until};

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(30);

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The sample's value, 0 when absent (a counter not exported yet).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::metric_value(text, name, labels).unwrap_or(0.0)
}

/// Waits until the scrape shows `name{labels}` at least `min`.
async fn wait_at_least(d: &Daemon, name: &str, labels: &[(&str, &str)], min: f64) -> String {
    wait_until(T, &format!("{name}{labels:?} >= {min}"), async || {
        let text = d.metrics().await;
        let v = require(&text, name, labels)?;
        if v >= min {
            Ok(text)
        } else {
            Err(format!("{v}"))
        }
    })
    .await
}

/// Commits, rollbacks, a temporary file and a deadlock in a database the
/// daemon does not connect to move its counters; the pg_stat_statements
/// signal says `not_installed`, then `not_loaded` once the extension is
/// created without being preloaded; the poll and the connection check never
/// suffer from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_a_missing_extension_is_a_bounded_signal() {
    let pg = support::primary();
    psql(&pg, "CREATE DATABASE stats_db");
    let db = pg.url("stats_db");
    let mut toml = fast_target("main", &pg.url("postgres"), "");
    toml.push_str("\n[postgres.main.statistics.statements]\ntop = 5\n");
    let d = Daemon::start(&toml).await;
    let on = [("target", "main"), ("database", "stats_db")];

    let before = wait_at_least(&d, "dbwarden_postgres_xact_commit_total", &on, 0.0).await;
    // The signal, and everything else read all the same.
    let not_installed = [
        ("target", "main"),
        ("source", "statements"),
        ("reason", "not_installed"),
    ];
    assert_eq!(
        support::metric_value(
            &before,
            "dbwarden_postgres_statistics_error",
            &not_installed
        ),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        support::metric_value(&before, "dbwarden_up", &[("target", "main")]),
        Some(1.0)
    );
    for name in [
        "dbwarden_postgres_wal_bytes_total",
        "dbwarden_postgres_buffers_allocated_total",
        "dbwarden_postgres_database_sessions_total",
    ] {
        assert!(
            before.contains(name),
            "{name} missing while statements fail:\n{before}"
        );
    }
    assert!(
        support::metric_value(
            &before,
            "dbwarden_postgres_checkpoints_total",
            &[("target", "main"), ("kind", "timed")]
        )
        .is_some(),
        "{before}"
    );
    assert!(!before.contains("dbwarden_postgres_statement_calls_total"));
    let commits = value(&before, "dbwarden_postgres_xact_commit_total", &on);
    let rollbacks = value(&before, "dbwarden_postgres_xact_rollback_total", &on);
    let temp_files = value(&before, "dbwarden_postgres_temp_files_total", &on);
    let temp_bytes = value(&before, "dbwarden_postgres_temp_bytes_total", &on);
    let deadlocks = value(&before, "dbwarden_postgres_deadlocks_total", &on);
    let sessions = value(&before, "dbwarden_postgres_database_sessions_total", &on);

    // 20 commits, 7 rollbacks, one sort spilled to disk. A backend reports
    // its counters when it ends, so the connection is closed afterwards.
    let mut c = support::connect_url(&db, "stats_test").await;
    exec(
        &mut c,
        "CREATE TABLE d (id int PRIMARY KEY, v int); INSERT INTO d VALUES (1, 0), (2, 0)",
    )
    .await;
    for _ in 0..20 {
        exec(&mut c, "BEGIN; UPDATE d SET v = v + 1 WHERE id = 1; COMMIT").await;
    }
    for _ in 0..7 {
        exec(
            &mut c,
            "BEGIN; UPDATE d SET v = v + 1 WHERE id = 2; ROLLBACK",
        )
        .await;
    }
    exec(
        &mut c,
        "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s",
    )
    .await;
    c.close().await.expect("close");

    // A deadlock between two sessions: each holds a row the other wants.
    let mut a = support::connect_url(&db, "stats_a").await;
    let mut b = support::connect_url(&db, "stats_b").await;
    exec(&mut a, "BEGIN; UPDATE d SET v = 0 WHERE id = 1").await;
    exec(&mut b, "BEGIN; UPDATE d SET v = 0 WHERE id = 2").await;
    let a_waits = tokio::spawn(async move {
        let r = sqlx::raw_sql("UPDATE d SET v = 1 WHERE id = 2")
            .execute(&mut a)
            .await;
        (a, r.map(|_| ()))
    });
    let mut watch = support::connect_url(&db, "stats_watch").await;
    wait_until(T, "session a waits on b's row lock", async || {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stats_a' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watch)
        .await
        .map_err(|e| e.to_string())?;
        if n == 1 { Ok(()) } else { Err(format!("{n} waiting")) }
    })
    .await;
    let b_result = sqlx::raw_sql("UPDATE d SET v = 1 WHERE id = 1")
        .execute(&mut b)
        .await;
    let (mut a, a_result) = a_waits.await.expect("session a");
    let codes: Vec<String> = [a_result.err(), b_result.err()]
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned())
        })
        .collect();
    assert_eq!(
        codes,
        ["40P01"],
        "exactly one session is the deadlock's victim"
    );
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut a).await;
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut b).await;
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    watch.close().await.expect("close watch");

    let after = wait_at_least(
        &d,
        "dbwarden_postgres_deadlocks_total",
        &on,
        deadlocks + 1.0,
    )
    .await;
    let after = if value(&after, "dbwarden_postgres_xact_commit_total", &on) < commits + 20.0
        || value(&after, "dbwarden_postgres_temp_files_total", &on) < temp_files + 1.0
    {
        wait_at_least(
            &d,
            "dbwarden_postgres_temp_files_total",
            &on,
            temp_files + 1.0,
        )
        .await;
        wait_at_least(
            &d,
            "dbwarden_postgres_xact_commit_total",
            &on,
            commits + 20.0,
        )
        .await
    } else {
        after
    };
    assert!(value(&after, "dbwarden_postgres_xact_commit_total", &on) >= commits + 20.0);
    // 7 rollbacks, and the deadlock's two (the victim's and the other's).
    assert!(
        value(&after, "dbwarden_postgres_xact_rollback_total", &on) >= rollbacks + 7.0,
        "{after}"
    );
    assert!(value(&after, "dbwarden_postgres_temp_files_total", &on) >= temp_files + 1.0);
    // 200000 int4 in a sort spill: well over a megabyte.
    assert!(
        value(&after, "dbwarden_postgres_temp_bytes_total", &on) >= temp_bytes + 1e6,
        "{after}"
    );
    assert_eq!(
        value(&after, "dbwarden_postgres_deadlocks_total", &on),
        deadlocks + 1.0
    );
    // Four sessions in stats_db, counted from PostgreSQL 14.
    assert!(
        value(&after, "dbwarden_postgres_database_sessions_total", &on) >= sessions + 4.0,
        "{after}"
    );
    assert!(
        after.contains("# TYPE dbwarden_postgres_xact_commit_total counter"),
        "commits are a counter"
    );

    // Created but not preloaded: reading it fails, and says so.
    psql(&pg, "CREATE EXTENSION pg_stat_statements");
    let not_loaded = [
        ("target", "main"),
        ("source", "statements"),
        ("reason", "not_loaded"),
    ];
    let text = wait_until(T, "statements reported not_loaded", async || {
        let text = d.metrics().await;
        require(&text, "dbwarden_postgres_statistics_error", &not_loaded)?;
        Ok(text)
    })
    .await;
    assert_eq!(
        support::metric_value(&text, "dbwarden_up", &[("target", "main")]),
        Some(1.0)
    );
    assert!(
        support::metric_value(&text, "dbwarden_postgres_statistics_error", &not_installed)
            .is_none()
    );
    // The statement failed last: the rest of the statistics were read in the same poll.
    assert!(support::metric_value(&text, "dbwarden_postgres_xact_commit_total", &on).is_some());
    let failing = support::metric_value(
        &text,
        "dbwarden_check_failing",
        &[("target", "main"), ("check", "connection")],
    );
    assert_eq!(failing, Some(0.0), "{text}");
    d.stop().await;
}

/// With `pg_stat_statements` preloaded and created, the top N statements by
/// total time are exported under `queryid` alone, never with their text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_statements_top_n_by_queryid() {
    let pg = support::primary_with(dbwarden::scratch::ClusterOptions {
        extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
        ..Default::default()
    });
    psql(&pg, "CREATE EXTENSION pg_stat_statements");
    let mut c = support::connect(&pg, "stats_test").await;
    // The slowest statement by total time: 5 calls of 40 ms.
    for _ in 0..5 {
        exec(&mut c, "SELECT pg_sleep(0.04)").await;
    }
    for i in 0..10 {
        exec(&mut c, &format!("SELECT {i} AS n_{i}")).await;
    }
    let sleep_id: i64 = sqlx::query_scalar(
        "SELECT queryid FROM pg_stat_statements WHERE query LIKE 'SELECT pg_sleep(%' LIMIT 1",
    )
    .fetch_one(&mut c)
    .await
    .expect("the sleep's queryid");

    let mut toml = fast_target("main", &pg.url("postgres"), "");
    toml.push_str("\n[postgres.main.statistics.statements]\ntop = 3\n");
    let d = Daemon::start(&toml).await;
    let id = sleep_id.to_string();
    let l = [("target", "main"), ("queryid", id.as_str())];
    let text = wait_at_least(&d, "dbwarden_postgres_statement_calls_total", &l, 5.0).await;
    let samples = support::parse_metrics(&text);
    let calls: Vec<&support::Sample> = samples
        .iter()
        .filter(|s| s.name == "dbwarden_postgres_statement_calls_total")
        .collect();
    assert_eq!(calls.len(), 3, "top = 3: {calls:?}");
    for s in samples
        .iter()
        .filter(|s| s.name.starts_with("dbwarden_postgres_statement_"))
    {
        let keys: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["target", "queryid"], "{s:?}");
    }
    assert!(
        !text.contains("pg_sleep"),
        "no query text in the exposition"
    );
    let time = require(&text, "dbwarden_postgres_statement_time_seconds_total", &l).unwrap();
    assert!(time >= 0.2, "5 × 40 ms: {time}");
    let rows = require(&text, "dbwarden_postgres_statement_rows_total", &l).unwrap();
    assert!(rows >= 5.0, "{rows}");
    require(
        &text,
        "dbwarden_postgres_statement_shared_blocks_hit_total",
        &l,
    )
    .unwrap();
    assert!(
        !text.contains("dbwarden_postgres_statistics_error{"),
        "nothing failed: {text}"
    );
    c.close().await.expect("close");
    d.stop().await;
}

/// `dbwarden check --format json` with `replication_slot_at_risk`: a fresh
/// slot passes; once `max_slot_wal_keep_size` lets the server remove the WAL
/// it needs (WAL generated, checkpoints taken) it is lost and the check
/// fails, naming it; a byte limit makes a healthy slot count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_fails_the_slot_check() {
    let pg = support::primary_with(dbwarden::scratch::ClusterOptions {
        extra_conf: vec![
            "max_slot_wal_keep_size = '1MB'".into(),
            "wal_keep_size = 0".into(),
            "min_wal_size = '32MB'".into(),
            "max_wal_size = '64MB'".into(),
        ],
        ..Default::default()
    });
    psql(
        &pg,
        "SELECT pg_create_physical_replication_slot('lagging', true)",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |min: u64| {
        let path = dir.path().join(format!("check-{min}.toml"));
        let toml = format!(
            "{}\n[postgres.main.thresholds.replication_slot_at_risk]\nmin_safe_wal_bytes = {min}\n",
            fast_target("main", &pg.url("postgres"), "")
                .replace("\n[postgres.main.thresholds]\n", "\n")
        );
        std::fs::write(&path, toml).expect("write config");
        path
    };
    let slot_check = |min: u64| {
        let out = support::dbwarden_check(&config(min), "json");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("check JSON: {e}\n{}", support::describe_output(&out)));
        let main = &report["targets"][0];
        assert_eq!(main["up"], true, "{main:#}");
        main["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["check"] == "replication_slot_at_risk"))
            .cloned()
            .unwrap_or_else(|| panic!("no replication_slot_at_risk in {main:#}"))
    };

    let fresh = slot_check(0);
    assert_eq!(fresh["status"], "pass", "{fresh:#}");
    assert_eq!(fresh["value"].as_f64(), Some(0.0));

    // Generate WAL past max_slot_wal_keep_size and checkpoint until the
    // server invalidates the slot.
    let mut c = support::connect(&pg, "wal_writer").await;
    exec(&mut c, "CREATE TABLE w (x int)").await;
    let deadline = Instant::now() + T;
    loop {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lagging'",
        )
        .fetch_one(&mut c)
        .await
        .expect("wal_status");
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot is still {status:?} after {T:?} of WAL and checkpoints"
        );
        exec(
            &mut c,
            "INSERT INTO w SELECT generate_series(1, 1000); SELECT pg_switch_wal(); CHECKPOINT",
        )
        .await;
    }
    let lost = slot_check(0);
    assert_eq!(lost["status"], "fail", "{lost:#}");
    assert_eq!(lost["value"].as_f64(), Some(1.0), "{lost:#}");
    let detail = lost["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("slot \"lagging\" is lost"), "{lost:#}");

    // A new slot is reserved: still one at risk. With a byte limit above its
    // safe_wal_size, it counts too.
    psql(
        &pg,
        "SELECT pg_create_physical_replication_slot('fresh', true)",
    );
    let one = slot_check(0);
    assert_eq!(one["value"].as_f64(), Some(1.0), "{one:#}");
    let safe: i64 = sqlx::query_scalar(
        "SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = 'fresh'",
    )
    .fetch_one(&mut c)
    .await
    .expect("safe_wal_size");
    assert!(safe > 0, "a fresh slot has headroom: {safe}");
    let limited = slot_check(10 * 1024 * 1024 * 1024);
    assert_eq!(limited["status"], "fail", "{limited:#}");
    assert_eq!(limited["value"].as_f64(), Some(2.0), "{limited:#}");
    assert_eq!(
        limited["threshold"].as_f64(),
        Some(10.0 * 1024.0 * 1024.0 * 1024.0)
    );
    assert!(
        limited["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("slot \"fresh\" can lose its WAL after"),
        "{limited:#}"
    );
    c.close().await.expect("close");
}

/// The statements chosen for PostgreSQL 15 run on the real local server
/// (127.0.0.1:5432) and on a scratch cluster where dbwarden's role may not
/// read `pg_stat_wal`: there the WAL source is reported, the rest is read
/// and the poll succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statements_for_15_run_and_a_refused_view_degrades() {
    let plan = Some(statistics::Plan {
        statements_top: Some(10),
        known: None,
    });
    let mut local = PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("the local PostgreSQL 15 at 127.0.0.1:5432 (Debian package postgresql-15)");
    let (snap, _) = postgres::read_snapshot(&mut local, false, 0, plan.clone())
        .await
        .expect("poll with statistics");
    assert_eq!(
        snap.server.version_num / 10000,
        15,
        "{}",
        snap.server.version
    );
    let st = snap.statistics.expect("statistics read");
    assert!(
        st.databases
            .iter()
            .any(|d| d.name == "postgres" && d.xact_commit > 0),
        "{st:?}"
    );
    assert!(st.databases.iter().all(|d| d.sessions.is_some()));
    let wal = st.wal.expect("pg_stat_wal on 15");
    assert!(wal.bytes > 0.0 && wal.writes.is_some(), "{wal:?}");
    assert!(st.checkpoints.is_some() && st.bgwriter.is_some());
    // Whatever the local server has of pg_stat_statements, only it may fail.
    assert!(
        st.errors
            .iter()
            .all(|e| e.source == StatisticsSource::Statements),
        "{:?}",
        st.errors
    );
    local.close().await.expect("close");

    let pg = support::primary();
    psql(
        &pg,
        "CREATE ROLE plain LOGIN; REVOKE SELECT ON pg_catalog.pg_stat_wal FROM PUBLIC",
    );
    let url = pg.url("postgres").replace("postgres@", "plain@");
    let mut conn = PgConnection::connect(&url).await.expect("connect as plain");
    let (snap, _) = postgres::read_snapshot(&mut conn, false, 0, plan)
        .await
        .expect("the poll succeeds without pg_stat_wal");
    let st = snap.statistics.expect("statistics read");
    assert!(st.wal.is_none());
    assert!(st.checkpoints.is_some() && st.bgwriter.is_some() && !st.databases.is_empty());
    let reasons: Vec<(StatisticsSource, StatisticsErrorReason)> =
        st.errors.iter().map(|e| (e.source, e.reason)).collect();
    assert_eq!(
        reasons,
        [
            (StatisticsSource::Wal, StatisticsErrorReason::Permission),
            (
                StatisticsSource::Statements,
                StatisticsErrorReason::NotInstalled
            ),
        ]
    );
    // Trusting that answer (what the observer does between checks), the
    // same sources are read and the same refusal reported.
    let again = Some(statistics::Plan {
        statements_top: Some(10),
        known: st.availability.clone(),
    });
    assert!(again.as_ref().is_some_and(|p| p.known.is_some()));
    let (snap, _) = postgres::read_snapshot(&mut conn, false, 0, again)
        .await
        .expect("the poll with a known availability");
    let st2 = snap.statistics.expect("statistics read");
    assert!(st2.wal.is_none() && st2.checkpoints.is_some() && !st2.databases.is_empty());
    assert_eq!(st2.errors, st.errors);
    // The connection is still usable: the transaction ended cleanly.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("the connection after the poll");
    assert_eq!(one, 1);
    conn.close().await.expect("close");
}
