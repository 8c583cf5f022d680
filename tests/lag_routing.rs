//! Lag routing (`[kubernetes.lag_routing]`) against the fake Kubernetes API
//! server, with a real scratch primary and streaming standby as the two
//! targets (pods `pg-0` and `pg-1` of the fake cluster, both behind Service
//! `pg-read`): replay paused on the standby while the primary writes makes
//! its `replication_lag` check fail, and dbwarden sets the readiness gate
//! condition `dbwarden.io/replication-lag-ok` of exactly `pg-1` to False
//! (not while paused), then back to True after `restore_after` once the
//! standby caught up; the audit has an intent before each outcome; the
//! primary's pod is never patched. With the standby as the Service's only
//! endpoint it is never taken out; in dry-run nothing is patched and the
//! decision is audited. The runner alone (`mod runner`, no database): the
//! budget bounds take-outs while put-backs are free, each intent is written
//! before its patch, no intent means no patch, and a pod whose condition
//! changed since the snapshot is re-checked and skipped.
//!
//! Prints the figures (lag failing → pod out, resume → pod back). Needs the
//! Debian package `postgresql-15`; about 40 s.

#![cfg(feature = "kubernetes")]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbwarden::remediate::audit::{AuditLog, AuditRecord, Decision};
use dbwarden::scratch::ScratchCluster;
use serde_json::Value;
use support::kube_fake::{FakeCluster, KubeFake};
use support::{Daemon, pod_target, psql, try_psql, wait_until};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "lag-routing-test-token";

fn config(
    primary: &ScratchCluster,
    standby: &ScratchCluster,
    kube: &KubeFake,
    dir: &Path,
    mode: &str,
    service: &str,
) -> String {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    format!(
        "{}{}\n{}\n[kubernetes.lag_routing]\nservice = \"{service}\"\ntargets = [\"standby\", \"primary\"]\nrestore_after = \"10s\"\n\n\
         [remediation]\nmode = \"{mode}\"\ninstance = \"lag-test\"\naudit_file = \"{}\"\nstate_dir = \"{}\"\n\
         api_token_file = \"{}\"\npacing = \"0s\"\n\n[remediation.budget]\nper_target = 10\nglobal = 10\nwindow = \"10m\"\n",
        pod_target("primary", primary, "pg-0"),
        pod_target("standby", standby, "pg-1"),
        kube.config_section("interval = \"1s\"\nstatefulsets = false"),
        dir.join("audit.jsonl").display(),
        dir.join("state").display(),
        token.display(),
    )
}

/// Starts replay-paused lag on `standby`: an insert replayed and aged past
/// the threshold, replay paused, then a writer on `primary`. Returns the
/// writer's stop flag.
async fn make_lag(primary: &ScratchCluster, standby: &ScratchCluster) -> Arc<AtomicBool> {
    psql(
        primary,
        "CREATE TABLE IF NOT EXISTS w (id bigserial PRIMARY KEY)",
    );
    psql(primary, "INSERT INTO w DEFAULT VALUES");
    wait_until(T, "the standby to replay the insert, 1.5s ago", async || {
        let r = try_psql(
            standby,
            "SELECT (SELECT count(*) FROM w) > 0 AND now() - pg_last_xact_replay_timestamp() > interval '1.5 s'",
        )?;
        if r == "t" { Ok(()) } else { Err(r) }
    })
    .await;
    psql(standby, "SELECT pg_wal_replay_pause()");
    let stop = Arc::new(AtomicBool::new(false));
    let url = primary.url("postgres");
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut c = support::connect_url(&url, "app_writer").await;
        while !flag.load(Ordering::Relaxed) {
            let _ = sqlx::query("INSERT INTO w DEFAULT VALUES")
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

async fn lag_check(daemon: &Daemon) -> String {
    let status = daemon.status().await;
    status["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["target"] == "standby")
        .flat_map(|t| t["checks"].as_array().cloned().unwrap_or_default())
        .find(|c| c["check"] == "replication_lag")
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_leaves_its_service_and_comes_back_after_hysteresis() {
    let primary = support::primary();
    let standby = support::standby(&primary);
    let kube = KubeFake::start(FakeCluster::primary_and_standby());
    kube.gate("pg-0", Some(true));
    kube.gate("pg-1", Some(true));
    kube.add_service("pg-read", &[("app", "pg")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(
        &primary,
        &standby,
        &kube,
        dir.path(),
        "enforce",
        "pg-read",
    ))
    .await;
    wait_until(
        T,
        "the standby to be polled and pass",
        async || match lag_check(&daemon).await.as_str() {
            "pass" => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;
    assert!(kube.pod_ready("pg-1"));

    // Paused: the check fails, nothing is patched.
    let (code, body) = daemon.post("/api/v1/pause", Some(TOKEN), "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let stop = make_lag(&primary, &standby).await;
    wait_until(
        T,
        "the standby's lag check to fail",
        async || match lag_check(&daemon).await.as_str() {
            "fail" => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;
    let paused: Value = wait_until(T, "a paused lag routing decision", async || {
        let s = daemon.status().await;
        let routes = s["kubernetes"]["last_routes"].clone();
        if routes
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["decision"] == "paused"))
        {
            Ok(routes)
        } else {
            Err(routes.to_string())
        }
    })
    .await;
    assert_eq!(paused[0]["change"]["pod"], "pg-1", "{paused}");
    assert!(
        kube.status_patches().is_empty(),
        "paused: {:?}",
        kube.status_patches()
    );

    // Resumed: exactly pg-1 leaves the Service.
    let crossed = Instant::now();
    let (code, body) = daemon
        .post("/api/v1/resume", Some(TOKEN), "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_until(
        T,
        "pg-1's gate condition to be False",
        async || match kube.gate_value("pg-1") {
            Some(false) => Ok(()),
            other => Err(format!("{other:?}; patches {:?}", kube.status_patches())),
        },
    )
    .await;
    let to_out = crossed.elapsed();
    assert!(!kube.pod_ready("pg-1"), "out of the Service's endpoints");
    assert!(kube.pod_ready("pg-0"), "the primary stays");
    let patches = kube.status_patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].pod, "pg-1");
    assert_eq!(patches[0].status, 200);
    assert_eq!(patches[0].content_type, "application/json-patch+json");
    assert_eq!(
        patches[0].ops[0]["op"], "test",
        "the UID is tested first: {:?}",
        patches[0].ops
    );
    assert_eq!(patches[0].ops[0]["path"], "/metadata/uid");

    // Caught up: back after restore_after (10s) of passing, not before.
    // The writer stops first: on a loaded machine a standby replaying
    // behind a live writer can cross the 1 s threshold again, and the test
    // would see a second (correct) take-out instead of one round trip.
    stop.store(true, Ordering::Relaxed);
    psql(&standby, "SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    wait_until(
        T,
        "the standby's lag check to pass",
        async || match lag_check(&daemon).await.as_str() {
            "pass" => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;
    let passing = Instant::now();
    wait_until(
        T,
        "pg-1's gate condition to be True again",
        async || match kube.gate_value("pg-1") {
            Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let to_back = resumed.elapsed();
    assert!(
        passing.elapsed() >= Duration::from_secs(9),
        "back only after restore_after: {:?} after the check passed",
        passing.elapsed()
    );
    assert!(kube.pod_ready("pg-1"));
    println!(
        "figures: resume of remediation with the check failing -> pod out in {} ms; replay resumed -> pod back in {} ms (restore_after 10s)",
        to_out.as_millis(),
        to_back.as_millis()
    );

    // The audit: an intent before each outcome, for pg-1 only.
    let records = audit(dir.path());
    let routed: Vec<(&str, Decision, &str)> = records
        .iter()
        .filter(|r| r.action.starts_with("route_"))
        .map(|r| {
            (
                r.action.as_str(),
                r.decision,
                r.pod.as_ref().unwrap().name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        routed,
        vec![
            ("route_out", Decision::Intent, "pg-1"),
            ("route_out", Decision::Acted, "pg-1"),
            ("route_in", Decision::Intent, "pg-1"),
            ("route_in", Decision::Acted, "pg-1"),
        ],
        "{records:#?}"
    );
    let out = records.iter().find(|r| r.action == "route_out").unwrap();
    let cond = out.pod.as_ref().unwrap().condition.as_ref().unwrap();
    assert_eq!((cond.status, cond.before), (false, Some(true)));
    assert!(cond.lag_seconds.unwrap() > 1.0, "{cond:?}");
    assert!(
        kube.status_patches().iter().all(|p| p.pod == "pg-1"),
        "never the primary"
    );
    assert!(kube.unexpected().is_empty(), "{:?}", kube.unexpected());
    let m = daemon.metrics().await;
    let acted = |action: &str| {
        support::metric_value(
            &m,
            "dbwarden_remediation_actions_total",
            &[
                ("target", "standby"),
                ("action", action),
                ("outcome", "acted"),
            ],
        )
    };
    assert_eq!(
        (acted("route_out"), acted("route_in")),
        (Some(1.0), Some(1.0)),
        "{m}"
    );
    // The watch saw the condition: exported per pod.
    wait_until(T, "the gate conditions in /metrics", async || {
        let m = daemon.try_metrics().await?;
        let gate = |target: &str, pod: &str| {
            support::metric_value(
                &m,
                "dbwarden_kubernetes_pod_lag_routing_ok",
                &[("target", target), ("pod", pod)],
            )
        };
        match (gate("standby", "pg-1"), gate("primary", "pg-0")) {
            (Some(1.0), Some(1.0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The figure without a pause: from the lag crossing (WAL received and
    // not replayed, the last replay already older than the threshold) to
    // the pod out of the Service.
    let stop = make_lag(&primary, &standby).await;
    wait_until(T, "WAL received and not replayed", async || {
        let r = try_psql(
            &standby,
            "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()",
        )?;
        if r == "t" { Ok(()) } else { Err(r) }
    })
    .await;
    let crossed = Instant::now();
    wait_until(T, "pg-1 out again", async || {
        match kube.gate_value("pg-1") {
            Some(false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!(
        "figures: lag crossing -> pod out (no pause) in {} ms",
        crossed.elapsed().as_millis()
    );
    stop.store(true, Ordering::Relaxed);
    psql(&standby, "SELECT pg_wal_replay_resume()");
    let patches = kube.status_patches();
    assert_eq!(patches.len(), 3, "{patches:?}");
    assert!(
        patches.iter().all(|p| p.pod == "pg-1" && p.status == 200),
        "{patches:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_ready_endpoint_stays_and_dry_run_patches_nothing() {
    let primary = support::primary();
    let standby = support::standby(&primary);
    let kube = KubeFake::start(FakeCluster::primary_and_standby());
    kube.gate("pg-1", Some(true));
    // The standby is the only endpoint of pg-standby; pg-read has both.
    kube.add_service(
        "pg-standby",
        &[("statefulset.kubernetes.io/pod-name", "pg-1")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(
        &primary,
        &standby,
        &kube,
        dir.path(),
        "enforce",
        "pg-standby",
    ))
    .await;
    let stop = make_lag(&primary, &standby).await;
    let held: Value = wait_until(
        T,
        "the standby held back as the last endpoint",
        async || {
            let s = daemon.status().await;
            let h = s["kubernetes"]["lag_routing_held_back"].clone();
            if h.as_array().is_some_and(|a| !a.is_empty()) {
                Ok(h)
            } else {
                Err(format!("check {}, held back {h}", lag_check(&daemon).await))
            }
        },
    )
    .await;
    assert_eq!(held[0]["pod"], "pg-1", "{held}");
    assert!(
        held[0]["reason"]
            .as_str()
            .unwrap()
            .contains("last ready endpoint of Service \"pg-standby\""),
        "{held}"
    );
    assert!(
        kube.status_patches().is_empty(),
        "{:?}",
        kube.status_patches()
    );
    assert!(kube.pod_ready("pg-1"));
    daemon.stop().await;

    // Dry-run with another endpoint ready: audited as would_act, not patched.
    kube.add_service("pg-read", &[("app", "pg")]);
    let dry = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(
        &primary,
        &standby,
        &kube,
        dry.path(),
        "dry-run",
        "pg-read",
    ))
    .await;
    let record = wait_until(T, "a dry-run route_out record", async || {
        audit(dry.path())
            .into_iter()
            .find(|r| r.action == "route_out")
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert_eq!(record.decision, Decision::WouldAct);
    assert_eq!(record.pod.as_ref().unwrap().name, "pg-1");
    assert!(
        kube.status_patches().is_empty(),
        "{:?}",
        kube.status_patches()
    );
    assert_eq!(kube.gate_value("pg-1"), Some(true));
    stop.store(true, Ordering::Relaxed);
    daemon.stop().await;
}

// ------------------------------------------------------- the runner alone

mod runner {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dbwarden::evaluate::CheckStatus;
    use dbwarden::kubernetes::Credentials;
    use dbwarden::kubernetes::lag_routing::{
        LagRouteAudit, LagRouteChange, LagRoutingPolicy, LagRoutingRunner, RouteDecision,
        RouteOutcome, TargetLag,
    };
    use dbwarden::kubernetes::snapshot::{KubernetesSnapshot, PodFacts, TargetWatchStatus};
    use dbwarden::observe::Role;
    use dbwarden::remediate::audit::Mode;
    use dbwarden::remediate::budget::Budget;

    use super::support::kube_fake::FakeCluster;
    use super::support::kube_fake::KubeFake;

    /// Records intents and outcomes in order with the number of patches the
    /// fake had received when each was written; fails intents on request.
    struct Recorder {
        kube: Arc<KubeFake>,
        fail: bool,
        log: Mutex<Vec<(String, String, usize)>>,
    }

    impl LagRouteAudit for Recorder {
        fn intent(&self, c: &LagRouteChange) -> Result<(), String> {
            if self.fail {
                return Err("disk full".into());
            }
            let n = self.kube.status_patches().len();
            self.log
                .lock()
                .unwrap()
                .push(("intent".into(), c.action().into(), n));
            Ok(())
        }
        fn outcome(&self, c: &LagRouteChange, o: &RouteOutcome) {
            let n = self.kube.status_patches().len();
            self.log
                .lock()
                .unwrap()
                .push((o.as_str().into(), c.action().into(), n));
        }
    }

    fn pod(target: &str, name: &str, lag_ok: Option<bool>) -> PodFacts {
        PodFacts {
            target: target.into(),
            namespace: "db".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some("node-a".into()),
            phase: "Running".into(),
            ready: lag_ok != Some(false),
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
            lag_ok,
            lag_gated: true,
        }
    }

    fn snapshot(pods: Vec<PodFacts>) -> KubernetesSnapshot {
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

    fn failing() -> TargetLag {
        TargetLag {
            role: Some(Role::Standby),
            check: CheckStatus::Fail,
            lag_seconds: Some(30.0),
            passing_since_ms: None,
        }
    }

    fn scene(
        kube: &Arc<KubeFake>,
        mode: Mode,
        budget: u32,
        fail: bool,
    ) -> (LagRoutingRunner, Arc<Recorder>) {
        let audit = Arc::new(Recorder {
            kube: kube.clone(),
            fail,
            log: Mutex::default(),
        });
        let policy = LagRoutingPolicy {
            service: "pg-read".into(),
            restore_after: Duration::from_secs(10),
            ..LagRoutingPolicy::default()
        };
        let runner = LagRoutingRunner::new(
            policy,
            mode,
            Arc::new(Mutex::new(Budget::new(budget, Duration::from_secs(600)))),
            Arc::new(|| false),
            Arc::new(|| true),
            audit.clone(),
        );
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

    /// Three standbys of pg-read fail together while a fourth pod serves:
    /// a budget of 2 takes out two (intent before each patch) and refuses
    /// the third; putting one back spends nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_budget_bounds_take_outs_and_the_intent_comes_first() {
        let mut c = FakeCluster::primary_and_standby();
        let mut extra = c.pods[1].clone();
        for name in ["pg-2", "pg-3"] {
            extra.name = name.into();
            extra
                .labels
                .insert("statefulset.kubernetes.io/pod-name".into(), name.into());
            c.pods.push(extra.clone());
        }
        let kube = Arc::new(KubeFake::start(c));
        for p in ["pg-1", "pg-2", "pg-3"] {
            kube.gate(p, Some(true));
        }
        kube.add_service("pg-read", &[("app", "pg")]);
        let client = client(&kube).await;
        let (mut runner, audit) = scene(&kube, Mode::Enforce, 2, false);
        let snap = snapshot(vec![
            pod("s1", "pg-1", Some(true)),
            pod("s2", "pg-2", Some(true)),
            pod("s3", "pg-3", Some(true)),
        ]);
        let lags: BTreeMap<String, TargetLag> = ["s1", "s2", "s3"]
            .iter()
            .map(|t| (t.to_string(), failing()))
            .collect();
        let (_, reports) = runner.run_once(&client, &snap, lags, 1_000).await;
        let decisions: Vec<_> = reports.iter().map(|r| r.decision.clone()).collect();
        assert_eq!(
            decisions,
            vec![
                RouteDecision::Done(RouteOutcome::Set),
                RouteDecision::Done(RouteOutcome::Set),
                RouteDecision::BudgetExhausted,
            ]
        );
        let patched: Vec<String> = kube.status_patches().into_iter().map(|p| p.pod).collect();
        assert_eq!(patched.len(), 2, "{patched:?}");
        assert_eq!(
            audit.log.lock().unwrap().clone(),
            vec![
                ("intent".to_string(), "route_out".to_string(), 0),
                ("acted".into(), "route_out".into(), 1),
                ("intent".into(), "route_out".into(), 1),
                ("acted".into(), "route_out".into(), 2),
            ],
            "each intent is written before its patch"
        );

        // One of them caught up long ago: back, free, though the budget is spent.
        let back = &patched[0];
        let target = ["s1", "s2", "s3"][["pg-1", "pg-2", "pg-3"]
            .iter()
            .position(|p| p == back)
            .unwrap()];
        let snap = snapshot(
            ["pg-1", "pg-2", "pg-3"]
                .iter()
                .zip(["s1", "s2", "s3"])
                .map(|(p, t)| pod(t, p, Some(!patched.contains(&p.to_string()))))
                .collect(),
        );
        let mut lags: BTreeMap<String, TargetLag> = BTreeMap::new();
        lags.insert(
            target.to_string(),
            TargetLag {
                role: Some(Role::Standby),
                check: CheckStatus::Pass,
                lag_seconds: Some(0.0),
                passing_since_ms: None,
            },
        );
        // First seen passing now: not back before restore_after.
        let (_, reports) = runner.run_once(&client, &snap, lags.clone(), 2_000).await;
        assert!(reports.is_empty(), "{reports:?}");
        let (_, reports) = runner.run_once(&client, &snap, lags, 12_000).await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].change.pod, *back);
        assert_eq!(reports[0].decision, RouteDecision::Done(RouteOutcome::Set));
        assert_eq!(kube.gate_value(back), Some(true));
    }

    /// An intent that cannot be written patches nothing; a pod whose
    /// condition changed since the snapshot is re-checked and skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_patch_without_an_audit_record_or_after_a_change() {
        let kube = Arc::new(KubeFake::start(FakeCluster::primary_and_standby()));
        kube.gate("pg-1", Some(true));
        kube.add_service("pg-read", &[("app", "pg")]);
        let client = client(&kube).await;
        let snap = snapshot(vec![pod("standby", "pg-1", Some(true))]);
        let lags: BTreeMap<String, TargetLag> =
            [("standby".to_string(), failing())].into_iter().collect();

        let (mut runner, _) = scene(&kube, Mode::Enforce, 5, true);
        let (_, reports) = runner.run_once(&client, &snap, lags.clone(), 1_000).await;
        assert_eq!(reports[0].decision, RouteDecision::AuditFailed);
        assert!(kube.status_patches().is_empty());

        // The snapshot is older than the pod (it had no condition then):
        // the re-check sees True, skips it and patches nothing.
        let stale = snapshot(vec![pod("standby", "pg-1", None)]);
        let (mut runner, audit) = scene(&kube, Mode::Enforce, 5, false);
        let (_, reports) = runner.run_once(&client, &stale, lags, 1_000).await;
        match &reports[0].decision {
            RouteDecision::Done(RouteOutcome::Changed(m)) => {
                assert!(m.contains("True now, not absent"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(kube.status_patches().is_empty());
        assert_eq!(
            audit.log.lock().unwrap().clone(),
            vec![
                ("intent".to_string(), "route_out".to_string(), 0),
                ("skipped".into(), "route_out".into(), 0)
            ]
        );
    }
}
