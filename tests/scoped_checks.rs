//! The session checks scoped as policies are, against a real PostgreSQL 15
//! scratch cluster: a real `pg_dump` held up by a lock does not fail
//! `long_running_query` where the backup exception is in place and fails it
//! where it is not; a real idle `psql` does not fail `idle_session` where
//! `psql` is ignored; the excluded-sessions gauge and `dbwarden check` count
//! it. Both targets watch the same cluster, so they see the same sessions.
//! Needs the Debian package `postgresql-15` (server, `pg_dump`, `psql`).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use support::{Daemon, blocking, metric_value, psql, wait_until};

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(30);

const PG_DUMP: &str = "/usr/lib/postgresql/15/bin/pg_dump";

/// A child process killed and reaped when dropped, so that a failing
/// assertion leaves no `pg_dump` or `psql` behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A target's check in the status, once the target has been polled.
fn try_check<'a>(status: &'a Value, target: &str, check: &str) -> Option<&'a Value> {
    status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == target))
        .and_then(|t| t["checks"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["check"] == check))
}

fn check<'a>(status: &'a Value, target: &str, check: &str) -> &'a Value {
    try_check(status, target, check)
        .unwrap_or_else(|| panic!("no check {check:?} of {target:?} in {status:#}"))
}

/// Limits of a second, so that the test is quick; the `with` target has the
/// runbook-friendly exclusions, the `without` target none.
fn thresholds(scoped: bool) -> String {
    let (backup, psql) = if scoped {
        (
            r#", exceptions = { backup = { max = "6h", match_users = ["backup"], match_applications = ["pg_dump"] } }"#,
            r#", ignore_applications = ["psql"]"#,
        )
    } else {
        ("", "")
    };
    format!(
        "long_running_query = {{ max = \"1s\", for = \"0s\"{backup} }}\n\
         idle_session = {{ max = \"1s\", for = \"0s\"{psql} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nightly_backup_and_an_idle_psql_do_not_page_where_they_are_expected() {
    assert!(
        Path::new(PG_DUMP).exists(),
        "{PG_DUMP} is missing: install the Debian package postgresql-15"
    );
    let pg = support::primary();
    psql(&pg, "CREATE ROLE backup LOGIN");
    psql(&pg, "CREATE DATABASE shop");
    blocking(|| {
        pg.psql(
            "shop",
            "CREATE TABLE orders (id int); GRANT SELECT ON orders TO backup",
        )
    })
    .expect("create the table pg_dump dumps");

    // The dump is held up: another session holds the table's ACCESS
    // EXCLUSIVE lock, for which pg_dump's LOCK TABLE ... IN ACCESS SHARE
    // MODE waits, an active query that runs as long as the lock is held.
    let shop = pg.url("shop");
    let mut locker =
        sqlx::PgConnection::connect(&format!("{shop}?application_name=locker&sslmode=disable"))
            .await
            .expect("connect the locker");
    sqlx::raw_sql("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("take the lock");
    let port = pg.port().to_string();
    let dump = Killed(
        Command::new(PG_DUMP)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "backup", "-d", "shop"])
            .args(["-f", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pg_dump"),
    );
    // A DBA's interactive psql, left idle: it waits for input on its stdin.
    let idle_psql = Killed(
        Command::new(dbwarden::scratch::PSQL)
            .args(["-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(["-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start psql"),
    );

    let url = pg.url("postgres");
    let daemon = Daemon::start(&format!(
        "{}{}",
        support::fast_target("with", &url, &thresholds(true)),
        support::fast_target("without", &url, &thresholds(false)),
    ))
    .await;

    // Without the exception the dump fails the check, once it has waited
    // more than a second; with it, the same dump passes against 6 h.
    let status = wait_until(T, "the held-up pg_dump to fail `without`", async || {
        let status = daemon.status().await;
        let Some(c) = try_check(&status, "without", "long_running_query") else {
            return Err("not polled yet".into());
        };
        let detail = c["detail"].as_str().unwrap_or_default();
        // And `with` has seen the same dump run over a second.
        let seen = try_check(&status, "with", "long_running_query")
            .and_then(|w| w["value"].as_f64())
            .is_some_and(|v| v > 1.0);
        if c["status"] == "fail" && detail.contains("pg_dump") && seen {
            Ok(status)
        } else {
            Err(format!("{c}"))
        }
    })
    .await;
    let with = check(&status, "with", "long_running_query");
    assert_eq!(with["status"], "pass", "{with}");
    assert_eq!(with["threshold"], 6.0 * 3600.0, "{with}");
    assert!(with["value"].as_f64().unwrap() > 1.0, "{with}");
    let detail = with["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"pg_dump\"") && detail.contains("(exception backup)"),
        "{detail}"
    );
    // An exception judges sessions, it does not exclude them.
    assert!(with.get("excluded").is_none(), "{with}");

    // The idle psql fails `without` and is excluded from `with`, counted.
    let metrics = wait_until(T, "the idle psql to fail `without`", async || {
        let status = daemon.status().await;
        let Some(c) = try_check(&status, "without", "idle_session") else {
            return Err("not polled yet".into());
        };
        let detail = c["detail"].as_str().unwrap_or_default();
        // And `with` has seen the same psql, and left it out.
        let left_out = try_check(&status, "with", "idle_session")
            .is_some_and(|w| w["excluded"]["ignore_applications"] == 1);
        if c["status"] == "fail" && detail.contains("\"psql\"") && left_out {
            Ok(daemon.metrics().await)
        } else {
            Err(format!("{c}"))
        }
    })
    .await;
    let excluded = |target: &str, check: &str, reason: &str| {
        metric_value(
            &metrics,
            "dbwarden_check_excluded_sessions",
            &[("target", target), ("check", check), ("reason", reason)],
        )
    };
    assert_eq!(
        excluded("with", "idle_session", "ignore_applications"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        excluded("without", "idle_session", "ignore_applications"),
        None
    );
    assert_eq!(
        excluded("with", "long_running_query", "ignore_applications"),
        None
    );
    let status = daemon.status().await;
    let with = check(&status, "with", "idle_session");
    assert_eq!(with["status"], "pass", "{with}");
    assert_eq!(with["excluded"]["ignore_applications"], 1, "{with}");

    // `dbwarden check` says the same, next to the scoped check.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres.with]\nurl = \"{url}\"\nsslmode = \"disable\"\n\
             [postgres.with.thresholds]\n{}",
            thresholds(true)
        ),
    )
    .expect("write the check config");
    let out = support::dbwarden_check(&config, "text");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |check: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line:\n{}", support::describe_output(&out)))
            .to_string()
    };
    let idle = line("idle_session");
    assert!(
        idle.trim_start().starts_with("PASS")
            && idle.ends_with("[excluded 1: ignore_applications 1]"),
        "{idle}"
    );
    let long = line("long_running_query");
    assert!(
        long.trim_start().starts_with("PASS") && long.contains("(exception backup)"),
        "{long}"
    );
    let out = support::dbwarden_check(&config, "json");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", support::describe_output(&out)));
    let idle = report["targets"][0]["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["check"] == "idle_session"))
        .expect("idle_session in the JSON report");
    assert_eq!(idle["status"], "pass", "{idle}");
    assert_eq!(idle["excluded"]["ignore_applications"], 1, "{idle}");

    daemon.stop().await;
    drop((dump, idle_psql));
    locker.close().await.expect("release the lock");
}
