//! The rebuild reason of `[kubernetes.eviction]` (`rebuild_after`) against
//! the fake Kubernetes API server, with a real scratch primary and
//! streaming standby as the two targets (pods `pg-0` and `pg-1` of
//! StatefulSet `pg`):
//!
//! - an idle primary (nothing to replay) never gets its standby evicted;
//! - a standby catching up (replay held `recovery_min_apply_delay` behind a
//!   writing primary: behind, but its replay position moves) is never
//!   evicted;
//! - replay paused while the primary writes: after `rebuild_after` exactly
//!   `pg-1` is evicted (the fake records it), the audit has the intent with
//!   the lag figures before the outcome, and the primary's pod never;
//! - the same stall in dry-run: `would_act` in the audit, no eviction.
//!
//! Prints the figures (replay stalled → pod evicted). Needs the Debian
//! package `postgresql-15`; about 40 s.

#![cfg(feature = "kubernetes")]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbwarden::remediate::audit::{AuditLog, AuditRecord, Decision};
use dbwarden::scratch::ScratchCluster;
use support::kube_fake::{FakeCluster, FakePod, KubeFake};
use support::{Daemon, fast_target, psql, try_psql, wait_until};

const T: Duration = Duration::from_secs(30);
/// `rebuild_after` in these tests.
const REBUILD_AFTER: Duration = Duration::from_secs(5);

/// Pods `pg-0` (the primary) and `pg-1` (the standby) of StatefulSet `pg`.
fn cluster() -> FakeCluster {
    let pod = |name: &str| {
        let mut p = FakePod::ready("pg", name, "node-a");
        p.statefulset = Some("pg".into());
        p.labels
            .insert("statefulset.kubernetes.io/pod-name".into(), name.into());
        p
    };
    FakeCluster {
        namespace: "db".into(),
        pods: vec![pod("pg-0"), pod("pg-1")],
        statefulsets: vec![],
    }
}

fn target(name: &str, pg: &ScratchCluster, pod: &str) -> String {
    let lag = r#"replication_lag = { max = "1s", for = "0s" }"#;
    fast_target(name, &pg.url("postgres"), lag).replacen(
        "sslmode = \"disable\"\n",
        &format!("sslmode = \"disable\"\npods = \"statefulset.kubernetes.io/pod-name={pod}\"\n"),
        1,
    )
}

fn config(
    primary: &ScratchCluster,
    standby: &ScratchCluster,
    kube: &KubeFake,
    dir: &Path,
    mode: &str,
) -> String {
    format!(
        "{}{}\n{}\n[kubernetes.eviction]\ntargets = [\"standby\", \"primary\"]\nnot_ready_for = \"10m\"\ncooldown = \"1h\"\nrebuild_after = \"{}s\"\n\n\
         [remediation]\nmode = \"{mode}\"\ninstance = \"rebuild-test\"\naudit_file = \"{}\"\nstate_dir = \"{}\"\npacing = \"0s\"\n\n\
         [remediation.budget]\nper_target = 10\nglobal = 10\nwindow = \"10m\"\n",
        target("primary", primary, "pg-0"),
        target("standby", standby, "pg-1"),
        kube.config_section("interval = \"1s\"\nstatefulsets = false"),
        REBUILD_AFTER.as_secs(),
        dir.join("audit.jsonl").display(),
        dir.join("state").display(),
    )
}

/// A writer on `primary`, an insert every 100 ms, until the flag is set.
fn writer(primary: &ScratchCluster) -> Arc<AtomicBool> {
    psql(
        primary,
        "CREATE TABLE IF NOT EXISTS w (id bigserial PRIMARY KEY, pad text)",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let url = primary.url("postgres");
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut c = support::connect_url(&url, "app_writer").await;
        while !flag.load(Ordering::Relaxed) {
            let _ = sqlx::query("INSERT INTO w (pad) VALUES (repeat('x', 2000))")
                .execute(&mut c)
                .await;
            // Pacing of the workload, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    stop
}

fn audit(dir: &Path) -> Vec<AuditRecord> {
    AuditLog::read_all(&dir.join("audit.jsonl"))
        .map(|(r, _)| r)
        .unwrap_or_default()
}

/// The standby's `dbwarden_kubernetes_replay_stalled_seconds`.
async fn stalled_seconds(daemon: &Daemon) -> Result<f64, String> {
    let m = daemon.try_metrics().await?;
    support::metric_value(
        &m,
        "dbwarden_kubernetes_replay_stalled_seconds",
        &[("target", "standby")],
    )
    .ok_or_else(|| "no replay_stalled series for the standby yet".to_string())
}

/// Waits until the daemon has followed the standby for `span` more
/// (its published successful polls), recording the largest stall seen.
async fn follow_for(daemon: &Daemon, span: Duration, desc: &str) -> f64 {
    let until = Instant::now() + span;
    let mut worst: f64 = 0.0;
    wait_until(span + T, desc, async || {
        let s = stalled_seconds(daemon).await?;
        worst = worst.max(s);
        if Instant::now() >= until {
            Ok(())
        } else {
            Err(format!("replay stalled {s}s"))
        }
    })
    .await;
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_standby_is_rebuilt_and_one_behind_or_idle_never() {
    let primary = support::primary();
    let standby = support::standby(&primary);
    let kube = KubeFake::start(cluster());
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(&primary, &standby, &kube, dir.path(), "enforce")).await;
    stalled_seconds_present(&daemon).await;

    // An idle primary: nothing to replay, never stalled.
    let worst = follow_for(
        &daemon,
        2 * REBUILD_AFTER,
        "an idle primary followed for 2 x rebuild_after",
    )
    .await;
    assert!(
        worst < REBUILD_AFTER.as_secs_f64(),
        "idle: stalled {worst}s"
    );
    assert!(kube.evictions().is_empty(), "{:?}", kube.evictions());

    // Catching up: replay held 2 s behind a writing primary, but moving.
    psql(&standby, "ALTER SYSTEM SET recovery_min_apply_delay = '2s'");
    psql(&standby, "SELECT pg_reload_conf()");
    let stop = writer(&primary);
    wait_until(
        T,
        "the standby to be behind (WAL received, not replayed)",
        async || {
            let r = try_psql(
                &standby,
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()",
            )?;
            if r == "t" { Ok(()) } else { Err(r) }
        },
    )
    .await;
    let worst = follow_for(
        &daemon,
        2 * REBUILD_AFTER,
        "a standby catching up followed for 2 x rebuild_after",
    )
    .await;
    assert!(
        worst < REBUILD_AFTER.as_secs_f64(),
        "catching up: stalled {worst}s"
    );
    assert!(kube.evictions().is_empty(), "{:?}", kube.evictions());
    psql(&standby, "ALTER SYSTEM RESET recovery_min_apply_delay");
    psql(&standby, "SELECT pg_reload_conf()");

    // Stalled: replay paused while the primary writes.
    psql(&standby, "SELECT pg_wal_replay_pause()");
    let paused = Instant::now();
    wait_until(T, "pg-1 evicted", async || {
        let e = kube.evictions();
        if e.is_empty() {
            Err(format!(
                "replay stalled {:?}s",
                stalled_seconds(&daemon).await
            ))
        } else {
            Ok(())
        }
    })
    .await;
    let to_evict = paused.elapsed();
    assert_eq!(
        kube.evictions(),
        vec!["pg-1".to_string()],
        "exactly the standby's pod"
    );
    assert!(
        to_evict >= REBUILD_AFTER,
        "not before rebuild_after: {to_evict:?}"
    );
    eprintln!(
        "figures: replay paused with the primary writing -> pod evicted in {} ms (rebuild_after {} s)",
        to_evict.as_millis(),
        REBUILD_AFTER.as_secs()
    );

    // The audit: the intent with the lag figures, then the outcome.
    let records: Vec<AuditRecord> = audit(dir.path())
        .into_iter()
        .filter(|r| r.action == "evict")
        .collect();
    let seq: Vec<(Decision, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.decision,
                r.policy.as_str(),
                r.pod.as_ref().unwrap().name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seq,
        vec![
            (Decision::Intent, "kubernetes_rebuild", "pg-1"),
            (Decision::Acted, "kubernetes_rebuild", "pg-1"),
        ],
        "{records:#?}"
    );
    assert_eq!(records[0].action_id, records[1].action_id);
    let figures = records[0]
        .pod
        .as_ref()
        .unwrap()
        .replay_stall
        .clone()
        .expect("the lag figures");
    assert!(
        figures.stalled_for_ms >= REBUILD_AFTER.as_millis() as u64,
        "{figures:?}"
    );
    assert!(
        figures.advanced_bytes > 0 && figures.lag_bytes >= figures.advanced_bytes,
        "{figures:?}"
    );
    assert_eq!(
        figures.upstream, "primary (target primary)",
        "paired by system identifier"
    );
    let replayed = psql(&standby, "SELECT pg_last_wal_replay_lsn()");
    assert_eq!(figures.replay_lsn, replayed, "the paused replay position");
    assert!(
        records[0]
            .reason
            .contains(&format!("replay LSN {replayed} unchanged since")),
        "{}",
        records[0].reason
    );
    let m = daemon.metrics().await;
    assert_eq!(
        support::metric_value(
            &m,
            "dbwarden_remediation_actions_total",
            &[
                ("target", "standby"),
                ("policy", "kubernetes_rebuild"),
                ("outcome", "acted")
            ],
        ),
        Some(1.0),
        "{m}"
    );
    daemon.stop().await;

    // Dry-run, the same stall: reported, not evicted.
    let dry = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(&primary, &standby, &kube, dry.path(), "dry-run")).await;
    let record = wait_until(T, "a dry-run evict record", async || {
        audit(dry.path())
            .into_iter()
            .find(|r| r.action == "evict")
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert_eq!(record.decision, Decision::WouldAct);
    assert_eq!(record.policy, "kubernetes_rebuild");
    assert_eq!(record.pod.as_ref().unwrap().name, "pg-1");
    assert!(record.pod.as_ref().unwrap().replay_stall.is_some());
    assert!(
        audit(dry.path())
            .iter()
            .all(|r| r.decision == Decision::WouldAct),
        "dry-run writes would_act only"
    );
    assert_eq!(
        kube.evictions(),
        vec!["pg-1".to_string()],
        "nothing more evicted"
    );
    assert!(kube.unexpected().is_empty(), "{:?}", kube.unexpected());
    stop.store(true, Ordering::Relaxed);
    psql(&standby, "SELECT pg_wal_replay_resume()");
    daemon.stop().await;
}

/// The stall series appears once the Kubernetes loop followed the standby.
async fn stalled_seconds_present(daemon: &Daemon) {
    wait_until(
        T,
        "the standby followed by the rebuild reason",
        async || stalled_seconds(daemon).await.map(|_| ()),
    )
    .await;
}
