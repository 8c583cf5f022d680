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
use support::kube_fake::{FakeCluster, KubeFake};
use support::{Daemon, pod_target, psql, try_psql, wait_until};

const T: Duration = Duration::from_secs(30);
/// `rebuild_after` in these tests.
const REBUILD_AFTER: Duration = Duration::from_secs(5);

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
        pod_target("primary", primary, "pg-0"),
        pod_target("standby", standby, "pg-1"),
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
    let kube = KubeFake::start(FakeCluster::primary_and_standby());
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

// ------------------------------------------------------- the runner alone

mod runner {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dbwarden::kubernetes::Credentials;
    use dbwarden::kubernetes::evict::{
        EvictionAudit, EvictionCandidate, EvictionDecision, EvictionOutcome, EvictionPolicy,
        EvictionRunner, REBUILD_POLICY_NAME,
    };
    use dbwarden::kubernetes::rebuild::WalReading;
    use dbwarden::kubernetes::snapshot::{KubernetesSnapshot, PodFacts, TargetWatchStatus};
    use dbwarden::remediate::audit::Mode;
    use dbwarden::remediate::budget::Budget;
    use tokio_util::sync::CancellationToken;

    use super::support::kube_fake::FakeCluster;
    use super::support::kube_fake::KubeFake;

    const S: u64 = 1000;
    const T0: u64 = 1_800_000_000_000;

    /// Intents and outcomes in order, with the evictions the fake had then.
    struct Recorder {
        kube: Arc<KubeFake>,
        log: Mutex<Vec<(String, usize)>>,
    }

    impl EvictionAudit for Recorder {
        fn intent(&self, _: &EvictionCandidate) -> Result<(), String> {
            let n = self.kube.evictions().len();
            self.log.lock().unwrap().push(("intent".into(), n));
            Ok(())
        }
        fn outcome(&self, _: &EvictionCandidate, o: &EvictionOutcome) {
            let n = self.kube.evictions().len();
            self.log.lock().unwrap().push((o.as_str().into(), n));
        }
    }

    fn pod(target: &str, name: &str) -> PodFacts {
        PodFacts {
            target: target.into(),
            namespace: "db".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some("node-a".into()),
            phase: "Running".into(),
            ready: true,
            not_ready_since_ms: None,
            terminating: false,
            restart_count: 0,
            restarts_last_hour: 0,
            waiting_reason: None,
            last_termination: None,
            statefulset: Some("pg".into()),
            pvcs: vec![],
            created_ms: Some(0),
            containers: vec![],
            lag_ok: None,
            lag_gated: false,
        }
    }

    fn snapshot() -> KubernetesSnapshot {
        let pods = vec![pod("primary", "pg-0"), pod("standby", "pg-1")];
        let mut s = KubernetesSnapshot::unreachable("db", String::new(), 0);
        s.api_reachable = true;
        s.error = None;
        s.targets = pods
            .iter()
            .map(|p| TargetWatchStatus {
                target: p.target.clone(),
                label_selector: format!("statefulset.kubernetes.io/pod-name={}", p.name),
                synced: true,
                error: None,
            })
            .collect();
        s.pods = pods;
        s
    }

    /// The primary at `primary`, the standby having received it and
    /// replayed up to `replay`, both read at `at`.
    fn readings(at: u64, primary: u64, replay: u64) -> BTreeMap<String, WalReading> {
        let r = |in_recovery: bool| WalReading {
            at_ms: at,
            up: true,
            in_recovery,
            system_id: Some(42),
            wal_lsn: (!in_recovery).then_some(primary),
            receive_lsn: in_recovery.then_some(primary),
            replay_lsn: in_recovery.then_some(replay),
            lag_seconds: Some(3.0),
        };
        [
            ("primary".to_string(), r(false)),
            ("standby".to_string(), r(true)),
        ]
        .into()
    }

    /// Each read takes the next queued readings (the last one stays).
    type Queue = Arc<Mutex<VecDeque<BTreeMap<String, WalReading>>>>;

    fn runner(kube: &Arc<KubeFake>, mode: Mode, queue: &Queue) -> (EvictionRunner, Arc<Recorder>) {
        let audit = Arc::new(Recorder {
            kube: kube.clone(),
            log: Mutex::default(),
        });
        let policy = EvictionPolicy {
            targets: vec![],
            rebuild_after: Some(Duration::from_secs(5)),
            ..EvictionPolicy::default()
        };
        let q = queue.clone();
        let runner = EvictionRunner::new(
            policy,
            mode,
            Duration::ZERO,
            Arc::new(Mutex::new(Budget::new(5, Duration::from_secs(600)))),
            Arc::new(|| false),
            Arc::new(|| true),
            audit.clone(),
        )
        .with_readings(Arc::new(move || {
            let mut q = q.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap_or_default()
            }
        }));
        (runner, audit)
    }

    async fn client(kube: &KubeFake) -> kube::Client {
        dbwarden::kubernetes::client::build_client(
            &Credentials::Kubeconfig {
                path: Some(kube.kubeconfig()),
                context: None,
            },
            "db",
        )
        .await
        .expect("a client for the fake API server")
    }

    /// Selected on a stall, but replay moved by the moment of acting (the
    /// freshest readings): nothing evicted, the intent followed by a
    /// skipped outcome. Stalled again for rebuild_after: exactly pg-1 is
    /// evicted, after its intent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stall_is_rechecked_on_the_freshest_polls() {
        let kube = Arc::new(KubeFake::start(FakeCluster::primary_and_standby()));
        let client = client(&kube).await;
        let queue: Queue = Arc::default();
        let (mut runner, audit) = runner(&kube, Mode::Enforce, &queue);
        let cancel = CancellationToken::new();
        let snap = snapshot();
        // The primary's pod pg-0 not ready: a sibling down blocks a rebuild.
        let mut sibling_down = snapshot();
        sibling_down.pods[0].ready = false;
        sibling_down.pods[0].not_ready_since_ms = Some(T0);
        let mut round =
            async |s: &KubernetesSnapshot, batch: Vec<BTreeMap<String, WalReading>>, now: u64| {
                *queue.lock().unwrap() = batch.into();
                runner.run_once(&client, s, now, &cancel).await
            };
        let caught_up = round(&snap, vec![readings(T0, 1000, 1000)], T0).await;
        assert!(caught_up.is_empty(), "{caught_up:?}");
        let behind = round(&snap, vec![readings(T0 + S, 2000, 1000)], T0 + S).await;
        assert!(behind.is_empty(), "behind since 1s: {behind:?}");
        // Stalled for 6s at selection; replay moved by the re-check.
        let reports = round(
            &snap,
            vec![
                readings(T0 + 7 * S, 9000, 1000),
                readings(T0 + 7 * S + 300, 9100, 1500),
            ],
            T0 + 7 * S,
        )
        .await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].candidate.policy, REBUILD_POLICY_NAME);
        match &reports[0].decision {
            EvictionDecision::Done(EvictionOutcome::Changed(m)) => {
                assert!(m.contains("the stall no longer holds"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(kube.evictions().is_empty());
        // Stalled at 1500 from 7.3s: not before 12.3s.
        let early = round(&snap, vec![readings(T0 + 12 * S, 12000, 1500)], T0 + 12 * S).await;
        assert!(early.is_empty(), "{early:?}");
        // Stalled long enough, but another member of the set is not ready.
        let blocked = round(
            &sibling_down,
            vec![readings(T0 + 13 * S, 13000, 1500)],
            T0 + 13 * S,
        )
        .await;
        assert!(blocked.is_empty(), "{blocked:?}");
        assert!(kube.evictions().is_empty());
        let reports = round(&snap, vec![readings(T0 + 13 * S, 13000, 1500)], T0 + 13 * S).await;
        assert_eq!(
            reports
                .iter()
                .map(|r| r.decision.clone())
                .collect::<Vec<_>>(),
            vec![EvictionDecision::Done(EvictionOutcome::Evicted)]
        );
        let stall = reports[0].candidate.stall.as_ref().unwrap();
        assert_eq!((stall.replay_lsn, stall.since_ms), (1500, T0 + 7 * S + 300));
        assert_eq!(kube.evictions(), vec!["pg-1".to_string()]);
        assert_eq!(
            audit.log.lock().unwrap().clone(),
            vec![
                ("intent".to_string(), 0),
                ("skipped".into(), 0),
                ("intent".into(), 0),
                ("acted".into(), 1),
            ],
            "each intent before its eviction"
        );
        // Cooling down: not again.
        let again = round(&snap, vec![readings(T0 + 20 * S, 20000, 1500)], T0 + 20 * S).await;
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(kube.evictions().len(), 1);
    }
}
