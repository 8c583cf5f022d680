//! The health endpoints for load balancers (`/health/<target>/primary`,
//! `/replica`, `/read-only`) against a real scratch primary and its
//! streaming standby, both dbwarden targets: a standby whose replay is
//! paused while the primary writes leaves `/replica` within one poll and
//! comes back after the resume; roles answer as they are; a stopped target
//! answers 503; unknown targets and bad parameters say so.
//!
//! Prints the figures (time from the lag crossing to 503, and from the
//! resume to 200). Needs the Debian package `postgresql-15`; about 15 s.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Daemon, fast_target, psql, require, try_psql, wait_until};

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(20);

/// GET `path` on the daemon: the status code and the JSON body.
async fn health(daemon: &Daemon, path: &str) -> Result<(u16, Value), String> {
    let (code, body) = daemon.get(path).await?;
    let json =
        serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))?;
    Ok((code, json))
}

/// Waits until `path` answers `code`; returns the body.
async fn until(daemon: &Daemon, path: &str, code: u16) -> Value {
    wait_until(
        T,
        &format!("{path} to answer {code}"),
        async || match health(daemon, path).await? {
            (c, body) if c == code => Ok(body),
            (c, body) => Err(format!("{c} {body}")),
        },
    )
    .await
}

async fn polls(daemon: &Daemon, target: &str) -> f64 {
    let text = daemon.metrics().await;
    require(&text, "dbwarden_polls_total", &[("target", target)]).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_leaves_replica_within_one_poll_and_comes_back() {
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

    // Both up and streaming: each answers as its role.
    let body = until(&daemon, "/health/standby/replica", 200).await;
    assert_eq!(body["role"], "standby", "{body}");
    assert_eq!(
        body["max_lag_seconds"], 1.0,
        "the threshold is the default: {body}"
    );
    assert_eq!(body["healthy"], true);
    until(&daemon, "/health/primary/primary", 200).await;
    for (path, code, role) in [
        ("/health/standby/read-only", 200, "standby"),
        ("/health/primary/read-only", 200, "primary"),
        ("/health/standby/primary", 503, "standby"),
        ("/health/primary/replica", 503, "primary"),
    ] {
        let (c, body) = health(&daemon, path).await.expect(path);
        assert_eq!(
            (c, body["role"].as_str()),
            (code, Some(role)),
            "{path}: {body}"
        );
        assert_eq!(body["healthy"], code == 200, "{path}: {body}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{path}: {body}"
        );
    }
    // HEAD (what some checkers send) answers the same code without a body.
    let head = reqwest::Client::new()
        .head(format!("{}/health/standby/primary", daemon.base_url))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status().as_u16(), 503);

    // Unknown target, unknown parameter, bad max_lag.
    let (c, body) = health(&daemon, "/health/nosuch/replica").await.unwrap();
    assert_eq!(c, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"nosuch\""),
        "{body}"
    );
    let (c, body) = health(&daemon, "/health/standby/replica?lag=5s")
        .await
        .unwrap();
    assert_eq!(c, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_lag"),
        "{body}"
    );
    let (c, body) = health(&daemon, "/health/standby/replica?max_lag=soon")
        .await
        .unwrap();
    assert_eq!(c, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid max_lag"),
        "{body}"
    );
    let (c, _) = daemon.get("/health/standby/writable").await.unwrap();
    assert_eq!(c, 404, "exactly the three paths");

    // The standby replays one insert, which then ages past the threshold:
    // the caught-up standby still reads no lag (an idle primary is not lag).
    psql(&primary, "INSERT INTO w DEFAULT VALUES");
    wait_until(T, "the standby to replay the insert, 1.5s ago", async || {
        let old = try_psql(
            &standby,
            "SELECT (SELECT count(*) FROM w) = 1 AND now() - pg_last_xact_replay_timestamp() > interval '1.5 s'",
        )?;
        if old == "t" { Ok(()) } else { Err(old) }
    })
    .await;
    let base = polls(&daemon, "standby").await;
    let body = wait_until(T, "three more standby polls, still healthy", async || {
        let (c, body) = health(&daemon, "/health/standby/replica").await?;
        let n = polls(&daemon, "standby").await;
        if c == 200 && n >= base + 3.0 {
            Ok(body)
        } else {
            Err(format!("{c} after {n} polls: {body}"))
        }
    })
    .await;
    assert_eq!(body["lag_seconds"], 0.0, "{body}");

    // Pause replay; the primary writes: the delay is at once the age of the
    // last replayed transaction (> 1.5s), over the 1s threshold.
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
        "the paused standby to receive WAL it does not replay",
        async || {
            let r = try_psql(
                &standby,
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()",
            )?;
            if r == "t" { Ok(()) } else { Err(r) }
        },
    )
    .await;
    let crossed = Instant::now();
    let polls_at_crossing = polls(&daemon, "standby").await;
    let body = until(&daemon, "/health/standby/replica", 503).await;
    let to_503 = crossed.elapsed();
    let polls_at_503 = polls(&daemon, "standby").await;
    // The poll in flight at the crossing may have missed it; the next one
    // must not (one more may finish between the two requests above).
    assert!(
        polls_at_503 <= polls_at_crossing + 3.0,
        "503 only after {} polls: {body}",
        polls_at_503 - polls_at_crossing
    );
    assert_eq!(body["replay_paused"], true, "{body}");
    assert!(body["lag_seconds"].as_f64().unwrap() > 1.0, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("exceeds max_lag 1s (replay paused)"),
        "{body}"
    );
    // Read-only follows; a looser max_lag in the query keeps it; the primary is unaffected.
    let (c, body) = health(&daemon, "/health/standby/read-only").await.unwrap();
    assert_eq!(c, 503, "{body}");
    let (c, body) = health(&daemon, "/health/standby/replica?max_lag=10m")
        .await
        .unwrap();
    assert_eq!(
        (c, &body["max_lag_seconds"]),
        (200, &Value::from(600.0)),
        "{body}"
    );
    let (c, body) = health(&daemon, "/health/primary/primary").await.unwrap();
    assert_eq!(c, 200, "{body}");

    // Resume: the standby catches up while writes continue, and is back.
    psql(&standby, "SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    let body = until(&daemon, "/health/standby/replica", 200).await;
    let to_200 = resumed.elapsed();
    assert!(body["lag_seconds"].as_f64().unwrap() <= 1.0, "{body}");
    assert_eq!(body["replay_paused"], false, "{body}");
    stop.store(true, Ordering::Relaxed);
    let rows = writer
        .await
        .expect("writer task")
        .expect("the writer's INSERTs");
    assert!(rows >= 3, "the writer wrote only {rows} rows");
    println!(
        "figures: lag crossing -> /replica 503 in {} ms ({} polls of 300 ms); resume -> 200 in {} ms",
        to_503.as_millis(),
        polls_at_503 - polls_at_crossing,
        to_200.as_millis()
    );

    // A stopped standby is down: 503 on every endpoint, saying so.
    support::blocking(|| standby.stop()).unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
    let stopped = Instant::now();
    let body = until(&daemon, "/health/standby/replica", 503).await;
    let body = if body["up"] == false {
        body
    } else {
        wait_until(T, "the stopped standby to read down", async || {
            let (_, body) = health(&daemon, "/health/standby/replica").await?;
            if body["up"] == false {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        })
        .await
    };
    println!(
        "figures: standby stopped -> down in {} ms",
        stopped.elapsed().as_millis()
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("down: the latest poll failed"),
        "{body}"
    );
    for path in ["/health/standby/read-only", "/health/standby/primary"] {
        let (c, body) = health(&daemon, path).await.unwrap();
        assert_eq!(
            (c, &body["up"]),
            (503, &Value::Bool(false)),
            "{path}: {body}"
        );
    }
    let (c, body) = health(&daemon, "/health/primary/primary").await.unwrap();
    assert_eq!(c, 200, "the primary is unaffected: {body}");
    daemon.stop().await;
}
