//! The Kubernetes module against a mock API server (the kube-rs convention:
//! `tower_test::mock::pair` behind `kube::Client::new`), with a task playing
//! the API server that asserts each request and sends scripted answers.

#![cfg(feature = "kubernetes")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response};
use dbwarden::kubernetes::pods::PodObserver;
use dbwarden::kubernetes::snapshot::KubernetesSnapshot;
use dbwarden::kubernetes::{KubernetesTarget, now_ms};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NS: &str = "db";
const DEADLINE: Duration = Duration::from_secs(10);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, NS), handle)
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

/// A request as the mock server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    body: Option<Value>,
}

impl Seen {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
}

async fn seen(req: Request<Body>) -> Seen {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.replace("%3D", "=").replace("%2C", ","))
        })
        .collect();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).ok();
    Seen {
        method,
        path,
        query,
        body,
    }
}

// ---------------------------------------------------------------- fixtures

/// A pod as the API server would send it.
#[derive(Clone)]
struct PodFx {
    name: String,
    uid: String,
    rv: u32,
    ready: bool,
    /// RFC 3339 time of the Ready condition's last transition.
    transition: String,
    restarts: i32,
    waiting: Option<String>,
    last: Option<(String, i32, String)>,
    sts: Option<String>,
    node: String,
    deleting: bool,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl PodFx {
    fn new(name: &str, rv: u32) -> Self {
        PodFx {
            name: name.into(),
            uid: format!("uid-{name}"),
            rv,
            ready: true,
            transition: rfc3339(now_ms() - 3_600_000),
            restarts: 0,
            waiting: None,
            last: None,
            sts: Some("postgres".into()),
            node: "node-a".into(),
            deleting: false,
        }
    }
    fn not_ready_since(mut self, ms: u64) -> Self {
        self.ready = false;
        self.transition = rfc3339(ms);
        self
    }
    fn rv(mut self, rv: u32) -> Self {
        self.rv = rv;
        self
    }
    fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }
    fn sts(mut self, sts: Option<&str>) -> Self {
        self.sts = sts.map(String::from);
        self
    }
    fn crash_loop(mut self, restarts: i32, reason: &str, code: i32, finished_ms: u64) -> Self {
        self.restarts = restarts;
        self.waiting = Some("CrashLoopBackOff".into());
        self.last = Some((reason.into(), code, rfc3339(finished_ms)));
        self
    }
    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    fn json(&self) -> Value {
        let mut meta = json!({
            "name": self.name, "namespace": NS, "uid": self.uid,
            "resourceVersion": self.rv.to_string(),
            "creationTimestamp": rfc3339(now_ms() - 86_400_000),
            "labels": {"app": "postgres"},
        });
        if let Some(s) = &self.sts {
            meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": s, "uid": format!("sts-{s}"), "controller": true}]);
        }
        if self.deleting {
            meta["deletionTimestamp"] = json!(rfc3339(now_ms()));
        }
        let mut cs = json!({
            "name": "postgres", "ready": self.ready, "restartCount": self.restarts,
            "image": "postgres:17", "imageID": "",
            "state": if let Some(w) = &self.waiting { json!({"waiting": {"reason": w}}) }
                     else { json!({"running": {"startedAt": self.transition}}) },
        });
        if let Some((reason, code, finished)) = &self.last {
            cs["lastState"] =
                json!({"terminated": {"reason": reason, "exitCode": code, "finishedAt": finished}});
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": "postgres", "image": "postgres:17",
                                "resources": {"limits": {"memory": "2Gi", "cpu": "1"}}}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("data-{}", self.name)}}],
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if self.ready { "True" } else { "False" },
                                "lastTransitionTime": self.transition}],
                "containerStatuses": [cs],
            }
        })
    }
}

fn sts_json(name: &str, rv: u32, desired: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS, "uid": format!("sts-{name}"), "resourceVersion": rv.to_string()},
        "spec": {
            "replicas": desired, "serviceName": name,
            "selector": {"matchLabels": {"app": "postgres"}},
            "template": {"metadata": {"labels": {"app": "postgres"}},
                         "spec": {"containers": [{"name": "postgres", "image": "postgres:17"}]}}
        },
        "status": {"replicas": desired, "readyReplicas": ready, "currentReplicas": desired}
    })
}

fn list_json(kind: &str, api_version: &str, rv: u32, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// Newline-delimited watch events, as a watch response body.
fn events(evs: &[(&str, Value)]) -> Response<Body> {
    let mut out = Vec::new();
    for (t, obj) in evs {
        out.extend(serde_json::to_vec(&json!({"type": t, "object": obj})).unwrap());
        out.push(b'\n');
    }
    Response::builder()
        .status(200)
        .body(Body::from(out))
        .unwrap()
}

// ---------------------------------------------------------------- the watch server

/// What the mock answers to the watchers: the initial lists, then each watch
/// request gets the next scripted body (the request is held until the test
/// sends one, so the test sees every intermediate state).
struct WatchServer {
    pods_watch: mpsc::UnboundedSender<Response<Body>>,
    sts_watch: mpsc::UnboundedSender<Response<Body>>,
    log: Arc<Mutex<Vec<Seen>>>,
}

enum ListAnswer {
    Ok(Value),
    Status(u16, Value),
    TransportError,
}

fn spawn_watch_server(
    mut handle: Handle,
    mut pod_lists: Vec<ListAnswer>,
    mut sts_lists: Vec<ListAnswer>,
) -> WatchServer {
    let (pods_tx, pods_rx) = mpsc::unbounded_channel::<Response<Body>>();
    let (sts_tx, sts_rx) = mpsc::unbounded_channel::<Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    pod_lists.reverse();
    sts_lists.reverse();
    tokio::spawn(async move {
        let pods_rx = Arc::new(tokio::sync::Mutex::new(pods_rx));
        let sts_rx = Arc::new(tokio::sync::Mutex::new(sts_rx));
        while let Some((req, send)) = handle.next_request().await {
            let s = seen(req).await;
            log2.lock().unwrap().push(s.clone());
            assert_eq!(s.method, Method::GET, "watchers only read: {s:?}");
            let is_pods = s.path == format!("/api/v1/namespaces/{NS}/pods");
            let is_sts = s.path == format!("/apis/apps/v1/namespaces/{NS}/statefulsets");
            assert!(is_pods || is_sts, "unexpected path {}", s.path);
            if is_pods {
                assert_eq!(s.q("labelSelector"), Some("app=postgres"), "{s:?}");
            } else {
                assert_eq!(s.q("labelSelector"), None, "{s:?}");
            }
            if s.q("watch") == Some("true") {
                assert!(
                    s.q("resourceVersion").is_some(),
                    "a watch resumes at a version"
                );
                let rx = if is_pods {
                    pods_rx.clone()
                } else {
                    sts_rx.clone()
                };
                tokio::spawn(async move {
                    match rx.lock().await.recv().await {
                        Some(r) => send.send_response(r),
                        // No more script: hold the watch open until the test ends.
                        None => std::future::pending::<()>().await,
                    }
                });
                continue;
            }
            let lists = if is_pods {
                &mut pod_lists
            } else {
                &mut sts_lists
            };
            match lists.pop() {
                Some(ListAnswer::Ok(v)) => send.send_response(json_response(200, &v)),
                Some(ListAnswer::Status(code, v)) => send.send_response(json_response(code, &v)),
                Some(ListAnswer::TransportError) => send.send_error("connection refused"),
                None => panic!("unexpected list: {s:?}"),
            }
        }
    });
    WatchServer {
        pods_watch: pods_tx,
        sts_watch: sts_tx,
        log,
    }
}

fn targets() -> Vec<KubernetesTarget> {
    vec![KubernetesTarget {
        name: "pg".into(),
        label_selector: "app=postgres".into(),
    }]
}

async fn wait_for(
    obs: &PodObserver,
    what: &str,
    f: impl Fn(&KubernetesSnapshot) -> bool,
) -> KubernetesSnapshot {
    let mut rx = obs.subscribe();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = obs.snapshot(now_ms());
        if f(&s) {
            return s;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the observer stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; last snapshot: {s:#?}"),
        }
    }
}

fn start_observer(
    client: Client,
    statefulsets: bool,
) -> (PodObserver, CancellationToken, TaskTracker) {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let obs = PodObserver::spawn(
        client,
        NS,
        &targets(),
        statefulsets,
        &tracker,
        cancel.clone(),
    )
    .unwrap();
    (obs, cancel, tracker)
}

async fn stop(cancel: CancellationToken, tracker: TaskTracker) {
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(DEADLINE, tracker.wait())
        .await
        .expect("the watchers stop when cancelled");
}

// ---------------------------------------------------------------- pods

#[tokio::test]
async fn pod_transitions_are_reflected_in_the_facts() {
    let (client, handle) = mock_client();
    let p0 = PodFx::new("postgres-0", 101);
    let p1 = PodFx::new("postgres-1", 102);
    let server = spawn_watch_server(
        handle,
        vec![ListAnswer::Ok(list_json(
            "PodList",
            "v1",
            110,
            vec![p0.json(), p1.json()],
        ))],
        vec![ListAnswer::Ok(list_json(
            "StatefulSetList",
            "apps/v1",
            110,
            vec![
                sts_json("postgres", 90, 2, 2),
                sts_json("other", 91, 1, 1).tap_labels("app", "redis"),
            ],
        ))],
    );
    let (obs, cancel, tracker) = start_observer(client, true);

    // The initial list: both pods ready, the StatefulSet complete.
    let s = wait_for(&obs, "the initial list", |s| {
        s.targets[0].synced && s.pods.len() == 2 && s.statefulsets.len() == 1
    })
    .await;
    assert!(s.api_reachable, "{s:?}");
    assert!(
        s.pods
            .iter()
            .all(|p| p.ready && p.not_ready_since_ms.is_none())
    );
    assert_eq!(s.pods[0].name, "postgres-0");
    assert_eq!(s.pods[0].statefulset.as_deref(), Some("postgres"));
    assert_eq!(s.pods[0].containers[0].memory_limit_bytes, Some(2 << 30));
    assert_eq!(s.pods[0].containers[0].cpu_limit_millicores, Some(1000));
    assert_eq!(s.pods[0].restarts_last_hour, 0);
    let sts = &s.statefulsets[0];
    assert_eq!(
        (sts.name.as_str(), sts.desired_replicas, sts.ready_replicas),
        ("postgres", 2, 2)
    );

    // Running ready → not ready.
    let since = now_ms() - 30_000;
    server
        .pods_watch
        .send(events(&[(
            "MODIFIED",
            p0.clone().rv(111).not_ready_since(since).json(),
        )]))
        .unwrap();
    let s = wait_for(&obs, "postgres-0 not ready", |s| !s.pods[0].ready).await;
    // The time is the Ready condition's transition.
    assert_eq!(s.pods[0].not_ready_since_ms, Some(since));
    assert!(s.pods[0].waiting_reason.is_none());
    assert!(s.pods[1].ready);

    // Not ready → CrashLoopBackOff after an OOM kill; the StatefulSet follows.
    let finished = now_ms() - 5_000;
    server
        .pods_watch
        .send(events(&[(
            "MODIFIED",
            p0.clone()
                .rv(112)
                .not_ready_since(since)
                .crash_loop(1, "OOMKilled", 137, finished)
                .json(),
        )]))
        .unwrap();
    server
        .sts_watch
        .send(events(&[("MODIFIED", sts_json("postgres", 113, 2, 1))]))
        .unwrap();
    let s = wait_for(&obs, "the crash loop and the StatefulSet", |s| {
        s.pods[0].waiting_reason.is_some() && s.statefulsets[0].ready_replicas == 1
    })
    .await;
    let p = &s.pods[0];
    assert_eq!(p.waiting_reason.as_deref(), Some("CrashLoopBackOff"));
    let t = p.last_termination.as_ref().unwrap();
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));
    assert_eq!(p.restart_count, 1);
    assert_eq!(
        p.restarts_last_hour, 1,
        "the watcher saw the restart happen"
    );
    // Restarts older than an hour no longer count.
    let later = obs.snapshot(now_ms() + 61 * 60_000);
    assert_eq!(later.pods[0].restarts_last_hour, 0);

    // Two more restarts seen; then the pod is replaced.
    server
        .pods_watch
        .send(events(&[
            (
                "MODIFIED",
                p0.clone()
                    .rv(114)
                    .not_ready_since(since)
                    .crash_loop(3, "OOMKilled", 137, finished)
                    .json(),
            ),
            ("DELETED", p0.clone().rv(115).json()),
            (
                "ADDED",
                PodFx::new("postgres-0", 116)
                    .uid("uid-new")
                    .not_ready_since(now_ms())
                    .json(),
            ),
        ]))
        .unwrap();
    let s = wait_for(&obs, "the replacement pod", |s| {
        s.pods.iter().any(|p| p.uid == "uid-new")
    })
    .await;
    assert_eq!(s.pods.len(), 2);
    let new = s.pods.iter().find(|p| p.name == "postgres-0").unwrap();
    assert_eq!(new.uid, "uid-new");
    assert_eq!((new.restart_count, new.restarts_last_hour), (0, 0));
    assert!(new.last_termination.is_none());

    // The requests: list then watch, by label selector, resuming at the versions seen.
    let log = server.log.lock().unwrap().clone();
    let pod_reqs: Vec<&Seen> = log.iter().filter(|r| r.path.ends_with("/pods")).collect();
    assert!(
        pod_reqs[0].q("watch").is_none(),
        "the first request lists: {:?}",
        pod_reqs[0]
    );
    let watches: Vec<&str> = pod_reqs
        .iter()
        .filter(|r| r.q("watch") == Some("true"))
        .map(|r| r.q("resourceVersion").unwrap())
        .collect();
    assert_eq!(&watches[..4], &["110", "111", "112", "116"]);
    stop(cancel, tracker).await;
}

trait TapLabels {
    fn tap_labels(self, k: &str, v: &str) -> Self;
}
impl TapLabels for Value {
    fn tap_labels(mut self, k: &str, v: &str) -> Self {
        self["spec"]["template"]["metadata"]["labels"] = json!({ k: v });
        self
    }
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_and_recovers() {
    let (client, handle) = mock_client();
    let server = spawn_watch_server(
        handle,
        vec![
            ListAnswer::TransportError,
            ListAnswer::Ok(list_json(
                "PodList",
                "v1",
                10,
                vec![PodFx::new("postgres-0", 5).json()],
            )),
        ],
        vec![],
    );
    let (obs, cancel, tracker) = start_observer(client, false);
    let s = wait_for(&obs, "the error", |s| !s.api_reachable).await;
    assert!(s.error.as_deref().unwrap().contains("target pg"), "{s:?}");
    assert!(s.targets[0].error.is_some());
    assert!(!s.targets[0].synced);
    assert!(s.pods.is_empty());
    assert!(!s.statefulsets_watched);
    // The watcher retries (with its backoff) and recovers.
    let s = wait_for(&obs, "recovery", |s| s.api_reachable && s.pods.len() == 1).await;
    assert!(s.targets[0].synced && s.error.is_none());
    assert_eq!(
        server.log.lock().unwrap().len(),
        3,
        "list, list, then the watch"
    );
    stop(cancel, tracker).await;
}

#[tokio::test]
async fn a_statefulset_watch_refused_by_rbac_does_not_disturb_the_pods() {
    let (client, handle) = mock_client();
    let _server = spawn_watch_server(
        handle,
        vec![ListAnswer::Ok(list_json(
            "PodList",
            "v1",
            10,
            vec![PodFx::new("postgres-0", 5).json()],
        ))],
        vec![ListAnswer::Status(
            403,
            status_body(
                403,
                "Forbidden",
                "statefulsets.apps is forbidden: User \"system:serviceaccount:db:dbwarden\" cannot list resource \"statefulsets\"",
            ),
        )],
    );
    let (obs, cancel, tracker) = start_observer(client, true);
    let s = wait_for(&obs, "pods and the refusal", |s| {
        s.targets[0].synced && s.statefulsets_error.is_some()
    })
    .await;
    assert!(
        s.statefulsets_error
            .as_deref()
            .unwrap()
            .contains("forbidden"),
        "{s:?}"
    );
    assert!(s.api_reachable);
    assert_eq!(s.pods.len(), 1);
    assert!(s.statefulsets.is_empty());
    stop(cancel, tracker).await;
}

// ---------------------------------------------------------------- eviction

use dbwarden::kubernetes::evict::{
    EvictionAudit, EvictionCandidate, EvictionDecision, EvictionOutcome, EvictionPolicy,
    EvictionRunner,
};
use dbwarden::kubernetes::snapshot::{TargetWatchStatus, pod_facts};
use dbwarden::remediate::audit::Mode;
use dbwarden::remediate::budget::Budget;

type Timeline = Arc<Mutex<Vec<String>>>;

/// An audit that records into the shared timeline, and can be made to fail.
struct RecordingAudit {
    timeline: Timeline,
    fail_intent: bool,
}

impl EvictionAudit for RecordingAudit {
    fn intent(&self, c: &EvictionCandidate) -> Result<(), String> {
        if self.fail_intent {
            self.timeline
                .lock()
                .unwrap()
                .push(format!("intent-failed {}", c.pod));
            return Err("disk full".into());
        }
        self.timeline
            .lock()
            .unwrap()
            .push(format!("intent {}", c.pod));
        Ok(())
    }
    fn outcome(&self, c: &EvictionCandidate, o: &EvictionOutcome) {
        self.timeline
            .lock()
            .unwrap()
            .push(format!("outcome {} {}", c.pod, o.as_str()));
    }
}

/// A mock API server answering each request with `answer`, recording it in the timeline.
fn spawn_api(
    mut handle: Handle,
    timeline: Timeline,
    answer: impl Fn(&Seen) -> Response<Body> + Send + 'static,
) -> Arc<Mutex<Vec<Seen>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let s = seen(req).await;
            timeline
                .lock()
                .unwrap()
                .push(format!("{} {}", s.method, s.path));
            log2.lock().unwrap().push(s.clone());
            send.send_response(answer(&s));
        }
    });
    log
}

fn eviction_policy() -> EvictionPolicy {
    EvictionPolicy {
        name: "crashed".into(),
        targets: vec!["pg".into()],
        not_ready_for: Duration::from_secs(600),
        cooldown: Duration::from_secs(900),
        rebuild_after: None,
    }
}

fn snapshot_of(fixtures: &[PodFx]) -> KubernetesSnapshot {
    let mut s = KubernetesSnapshot::unreachable(NS, String::new(), now_ms());
    s.api_reachable = true;
    s.error = None;
    s.targets = vec![TargetWatchStatus {
        target: "pg".into(),
        label_selector: "app=postgres".into(),
        synced: true,
        error: None,
    }];
    s.pods = fixtures
        .iter()
        .map(|f| pod_facts("pg", &serde_json::from_value(f.json()).unwrap(), 0))
        .collect();
    s
}

struct EvictionScene {
    runner: EvictionRunner,
    budget: Arc<Mutex<Budget>>,
    timeline: Timeline,
    requests: Arc<Mutex<Vec<Seen>>>,
    client: Client,
}

const MIN: u64 = 60_000;

/// The API server knows `pods` (by name); evictions get `eviction_status`.
fn eviction_scene(
    mode: Mode,
    budget_max: u32,
    pods: &[PodFx],
    eviction_status: u16,
    fail_intent: bool,
    paused: bool,
) -> EvictionScene {
    let (client, handle) = mock_client();
    let timeline: Timeline = Arc::default();
    let known: HashMap<String, Value> = pods.iter().map(|p| (p.name.clone(), p.json())).collect();
    let requests = spawn_api(handle, timeline.clone(), move |s| {
        let prefix = format!("/api/v1/namespaces/{NS}/pods/");
        let rest = s.path.strip_prefix(&prefix).expect("only pods are touched");
        match (s.method.clone(), rest.split_once('/')) {
            (Method::GET, None) => match known.get(rest) {
                Some(p) => json_response(200, p),
                None => json_response(404, &status_body(404, "NotFound", "pods not found")),
            },
            (Method::POST, Some((name, "eviction"))) => {
                let body = s.body.as_ref().expect("an Eviction body");
                assert_eq!(body["kind"], "Eviction");
                assert_eq!(body["metadata"]["name"], name);
                assert_eq!(
                    body["deleteOptions"]["preconditions"]["uid"], known[name]["metadata"]["uid"],
                    "the eviction is bound to the pod's UID"
                );
                match eviction_status {
                    201 => json_response(
                        201,
                        &json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
                    ),
                    429 => json_response(
                        429,
                        &status_body(
                            429,
                            "TooManyRequests",
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                        ),
                    ),
                    c => json_response(c, &status_body(c, "InternalError", "etcd is sad")),
                }
            }
            other => panic!("unexpected request {other:?} {s:?}"),
        }
    });
    let budget = Arc::new(Mutex::new(Budget::new(
        budget_max,
        Duration::from_secs(3600),
    )));
    let runner = EvictionRunner::new(
        eviction_policy(),
        mode,
        Duration::ZERO,
        budget.clone(),
        Arc::new(move || paused),
        Arc::new(|| true),
        Arc::new(RecordingAudit {
            timeline: timeline.clone(),
            fail_intent,
        }),
    );
    EvictionScene {
        runner,
        budget,
        timeline,
        requests,
        client,
    }
}

/// Pods of several kinds; exactly `postgres-1` qualifies.
fn mixed_pods() -> Vec<PodFx> {
    let now = now_ms();
    vec![
        PodFx::new("postgres-0", 1),                                 // ready
        PodFx::new("postgres-1", 2).not_ready_since(now - 20 * MIN), // qualifies
        PodFx::new("replica-0", 3)
            .sts(Some("replica"))
            .not_ready_since(now - 3 * MIN), // < T
        PodFx::new("neo-0", 4)
            .sts(Some("neo"))
            .not_ready_since(now - 30 * MIN), // its StatefulSet
        PodFx::new("neo-1", 5)
            .sts(Some("neo"))
            .not_ready_since(now - 2 * MIN), // has another pod down
        PodFx::new("gone-0", 6).sts(Some("gone")).deleting(),        // terminating
    ]
}

fn decisions(r: &[dbwarden::kubernetes::evict::EvictionReport]) -> Vec<(String, EvictionDecision)> {
    r.iter()
        .map(|r| (r.candidate.pod.clone(), r.decision.clone()))
        .collect()
}

#[tokio::test]
async fn evicts_exactly_the_pod_that_qualifies_with_the_intent_first() {
    let pods = mixed_pods();
    let mut sc = eviction_scene(Mode::Enforce, 5, &pods, 201, false, false);
    let snap = snapshot_of(&pods);
    let cancel = CancellationToken::new();
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![(
            "postgres-1".into(),
            EvictionDecision::Done(EvictionOutcome::Evicted)
        )]
    );
    assert!(
        r[0].candidate.reason.contains("not ready for 20m"),
        "{}",
        r[0].candidate.reason
    );
    let p = format!("/api/v1/namespaces/{NS}/pods/postgres-1");
    assert_eq!(
        *sc.timeline.lock().unwrap(),
        vec![
            "intent postgres-1".to_string(),
            format!("GET {p}"),
            format!("POST {p}/eviction"),
            "outcome postgres-1 acted".to_string(),
        ],
        "audit intent, re-check, evict, audit outcome"
    );
    assert_eq!(
        sc.budget.lock().unwrap().remaining(now_ms()),
        4,
        "one action spent"
    );
    // The same snapshot again: its StatefulSet is cooling down, nothing more.
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(sc.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn the_budget_bounds_evictions() {
    let now = now_ms();
    let pods = vec![
        PodFx::new("a-0", 1)
            .sts(Some("a"))
            .not_ready_since(now - 30 * MIN),
        PodFx::new("b-0", 2)
            .sts(Some("b"))
            .not_ready_since(now - 20 * MIN),
        PodFx::new("c-0", 3)
            .sts(Some("c"))
            .not_ready_since(now - 15 * MIN),
    ];
    let mut sc = eviction_scene(Mode::Enforce, 2, &pods, 201, false, false);
    let r = sc
        .runner
        .run_once(
            &sc.client,
            &snapshot_of(&pods),
            now,
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(
        decisions(&r),
        vec![
            (
                "a-0".into(),
                EvictionDecision::Done(EvictionOutcome::Evicted)
            ),
            (
                "b-0".into(),
                EvictionDecision::Done(EvictionOutcome::Evicted)
            ),
            ("c-0".into(), EvictionDecision::BudgetExhausted),
        ]
    );
    let posts = sc
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == Method::POST)
        .count();
    assert_eq!(posts, 2);
    assert!(
        !sc.timeline
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("c-0")),
        "nothing audited for c-0"
    );
}

#[tokio::test]
async fn a_pdb_refusal_is_recorded_as_refused_and_not_charged() {
    let pods = mixed_pods();
    let mut sc = eviction_scene(Mode::Enforce, 1, &pods, 429, false, false);
    let snap = snapshot_of(&pods);
    let cancel = CancellationToken::new();
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    match &r[0].decision {
        EvictionDecision::Done(EvictionOutcome::Refused(m)) => {
            assert!(m.contains("disruption budget"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        sc.timeline.lock().unwrap().last().unwrap(),
        "outcome postgres-1 refused"
    );
    assert_eq!(sc.budget.lock().unwrap().remaining(now_ms()), 1, "refunded");
    // Not asked again within the cooldown.
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![("postgres-1".into(), EvictionDecision::Settled)]
    );
    assert_eq!(sc.requests.lock().unwrap().len(), 2, "GET and POST once");
}

#[tokio::test]
async fn an_audit_failure_means_no_eviction() {
    let pods = mixed_pods();
    let mut sc = eviction_scene(Mode::Enforce, 5, &pods, 201, true, false);
    let r = sc
        .runner
        .run_once(
            &sc.client,
            &snapshot_of(&pods),
            now_ms(),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(
        decisions(&r),
        vec![("postgres-1".into(), EvictionDecision::AuditFailed)]
    );
    assert_eq!(
        *sc.timeline.lock().unwrap(),
        vec!["intent-failed postgres-1".to_string()]
    );
    assert!(
        sc.requests.lock().unwrap().is_empty(),
        "no request reached the API server"
    );
    assert_eq!(sc.budget.lock().unwrap().remaining(now_ms()), 5);
}

#[tokio::test]
async fn dry_run_observe_and_pause_send_nothing() {
    let pods = mixed_pods();
    let snap = snapshot_of(&pods);
    let cancel = CancellationToken::new();

    let mut sc = eviction_scene(Mode::DryRun, 5, &pods, 201, false, false);
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![(
            "postgres-1".into(),
            EvictionDecision::Done(EvictionOutcome::WouldEvict)
        )]
    );
    assert_eq!(
        *sc.timeline.lock().unwrap(),
        vec!["outcome postgres-1 would_act".to_string()]
    );
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![("postgres-1".into(), EvictionDecision::Settled)],
        "reported once"
    );
    assert!(sc.requests.lock().unwrap().is_empty());

    let mut sc = eviction_scene(Mode::Observe, 5, &pods, 201, false, false);
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![("postgres-1".into(), EvictionDecision::Observed)]
    );
    assert!(sc.timeline.lock().unwrap().is_empty());

    let mut sc = eviction_scene(Mode::Enforce, 5, &pods, 201, false, true);
    let r = sc
        .runner
        .run_once(&sc.client, &snap, now_ms(), &cancel)
        .await;
    assert_eq!(
        decisions(&r),
        vec![("postgres-1".into(), EvictionDecision::Paused)]
    );
    assert!(
        sc.timeline.lock().unwrap().is_empty(),
        "paused: no audit, no request"
    );
    assert_eq!(sc.budget.lock().unwrap().remaining(now_ms()), 5);
}

#[tokio::test]
async fn the_recheck_skips_a_replaced_or_recovered_pod() {
    let now = now_ms();
    let selected = PodFx::new("postgres-1", 2).not_ready_since(now - 20 * MIN);
    // The API server now has a new pod under the same name.
    let replaced = selected.clone().uid("uid-replacement");
    let mut sc = eviction_scene(Mode::Enforce, 5, &[replaced], 201, false, false);
    let r = sc
        .runner
        .run_once(
            &sc.client,
            &snapshot_of(std::slice::from_ref(&selected)),
            now,
            &CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(&r[0].decision, EvictionDecision::Done(EvictionOutcome::Changed(m)) if m.contains("replaced")),
        "{r:?}"
    );
    assert_eq!(sc.budget.lock().unwrap().remaining(now), 5, "refunded");
    assert!(
        sc.requests
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.method == Method::GET)
    );

    // Recovered: ready again.
    let mut recovered = selected.clone();
    recovered.ready = true;
    let mut sc = eviction_scene(Mode::Enforce, 5, &[recovered], 201, false, false);
    let r = sc
        .runner
        .run_once(
            &sc.client,
            &snapshot_of(std::slice::from_ref(&selected)),
            now,
            &CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(&r[0].decision, EvictionDecision::Done(EvictionOutcome::Changed(m)) if m.contains("ready")),
        "{r:?}"
    );

    // Gone.
    let mut sc = eviction_scene(Mode::Enforce, 5, &[], 201, false, false);
    let r = sc
        .runner
        .run_once(
            &sc.client,
            &snapshot_of(&[selected]),
            now,
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(
        decisions(&r),
        vec![(
            "postgres-1".into(),
            EvictionDecision::Done(EvictionOutcome::Gone)
        )]
    );
}

// ---------------------------------------------------------------- lease

use dbwarden::kubernetes::lease::{LeaseElector, LeaseSettings, LeaseStatus};

/// A Lease as an API server keeps it: resourceVersion checked on update.
#[derive(Default)]
struct LeaseStore {
    lease: Option<Value>,
    rv: u64,
    /// Another writer slips in before the next update (a lost race).
    interfere_before_put: bool,
    /// Another replica creates the Lease before our create.
    interfere_before_post: bool,
}

impl LeaseStore {
    fn store(&mut self, mut v: Value) -> Value {
        self.rv += 1;
        v["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        v["metadata"]["namespace"] = json!(NS);
        v["apiVersion"] = json!("coordination.k8s.io/v1");
        v["kind"] = json!("Lease");
        self.lease = Some(v.clone());
        v
    }
    fn holder(&self) -> Option<String> {
        self.lease.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    }
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/db/leases";

fn lease_client(store: Arc<Mutex<LeaseStore>>, timeline: Timeline) -> Client {
    let (client, handle) = mock_client();
    spawn_api(handle, timeline, move |s| {
        let mut st = store.lock().unwrap();
        let conflict = |m: &str| json_response(409, &status_body(409, "Conflict", m));
        match (s.method.clone(), s.path.as_str()) {
            (Method::GET, p) if p == format!("{LEASES}/dbwarden") => match &st.lease {
                Some(l) => json_response(200, l),
                None => json_response(
                    404,
                    &status_body(404, "NotFound", "leases \"dbwarden\" not found"),
                ),
            },
            (Method::POST, LEASES) => {
                if std::mem::take(&mut st.interfere_before_post) {
                    st.store(json!({"metadata": {"name": "dbwarden"}, "spec": {"holderIdentity": "sneaky", "leaseDurationSeconds": 15}}));
                }
                if st.lease.is_some() {
                    return conflict("leases \"dbwarden\" already exists");
                }
                let v = st.store(s.body.clone().unwrap());
                json_response(201, &v)
            }
            (Method::PUT, p) if p == format!("{LEASES}/dbwarden") => {
                if std::mem::take(&mut st.interfere_before_put) {
                    let mut l = st.lease.clone().unwrap();
                    l["spec"]["holderIdentity"] = json!("sneaky");
                    st.store(l);
                }
                let body = s.body.clone().unwrap();
                let sent_rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                if sent_rv != Some(st.rv.to_string()) {
                    return conflict(
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let v = st.store(body);
                json_response(200, &v)
            }
            other => panic!("unexpected lease request {other:?}"),
        }
    });
    client
}

fn elector(store: &Arc<Mutex<LeaseStore>>, timeline: &Timeline, me: &str) -> LeaseElector {
    LeaseElector::new(
        lease_client(store.clone(), timeline.clone()),
        NS,
        LeaseSettings {
            name: "dbwarden".into(),
            holder_identity: me.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        },
    )
}

fn renew_ms(store: &Arc<Mutex<LeaseStore>>) -> u64 {
    let l = store.lock().unwrap().lease.clone().unwrap();
    let t: std::time::SystemTime =
        humantime::parse_rfc3339(l["spec"]["renewTime"].as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn lease_acquire_renew_no_early_takeover_then_takeover_after_expiry() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let timeline: Timeline = Arc::default();
    let a = elector(&store, &timeline, "dbwarden-a");
    let b = elector(&store, &timeline, "dbwarden-b");
    let t = now_ms();

    // Free: A creates it.
    assert_eq!(a.tick(t).await.unwrap(), LeaseStatus::Leader);
    assert!(a.is_leader(t));
    assert_eq!(a.holder().as_deref(), Some("dbwarden-a"));
    assert_eq!(
        store.lock().unwrap().holder().as_deref(),
        Some("dbwarden-a")
    );
    let l = store.lock().unwrap().lease.clone().unwrap();
    assert_eq!(l["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(l["spec"]["leaseTransitions"], 0);
    assert_eq!(
        *timeline.lock().unwrap(),
        vec![format!("GET {LEASES}/dbwarden"), format!("POST {LEASES}")]
    );

    // B sees A's live Lease: a follower.
    assert_eq!(
        b.tick(t).await.unwrap(),
        LeaseStatus::Follower {
            holder: Some("dbwarden-a".into())
        }
    );
    assert!(!b.is_leader(t));

    // A renews.
    assert_eq!(a.tick(t + 5_000).await.unwrap(), LeaseStatus::Leader);
    assert_eq!(renew_ms(&store), t + 5_000);
    assert!(timeline.lock().unwrap().last().unwrap().starts_with("PUT "));

    // No takeover before expiry (renewed at t+5s, 15 s lease).
    assert!(matches!(
        b.tick(t + 19_000).await.unwrap(),
        LeaseStatus::Follower { .. }
    ));
    assert_eq!(
        store.lock().unwrap().holder().as_deref(),
        Some("dbwarden-a")
    );

    // A stops renewing; B only takes over once the Lease expired by its
    // renewTime and stayed unchanged for a lease duration on B's own clock.
    assert!(
        matches!(
            b.tick(t + 21_000).await.unwrap(),
            LeaseStatus::Follower { .. }
        ),
        "expired by renewTime, but B saw this version only since t+19s"
    );
    assert!(
        !a.is_leader(t + 21_000),
        "A's own claim lapses a lease duration after its renewal"
    );
    assert_eq!(b.tick(t + 34_000).await.unwrap(), LeaseStatus::Leader);
    assert!(b.is_leader(t + 34_000));
    let l = store.lock().unwrap().lease.clone().unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "dbwarden-b");
    assert_eq!(l["spec"]["leaseTransitions"], 1);

    // A comes back: a follower of B.
    assert_eq!(
        a.tick(t + 35_000).await.unwrap(),
        LeaseStatus::Follower {
            holder: Some("dbwarden-b".into())
        }
    );
    assert!(!a.is_leader(t + 35_000));

    // B releases on shutdown; A takes over at once.
    b.release().await.unwrap();
    assert_eq!(store.lock().unwrap().holder(), None);
    assert!(!b.is_leader(t + 36_000));
    assert_eq!(a.tick(t + 36_000).await.unwrap(), LeaseStatus::Leader);
}

#[tokio::test]
async fn a_conflict_loses_the_race() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let timeline: Timeline = Arc::default();
    let a = elector(&store, &timeline, "dbwarden-a");
    let t = now_ms();

    // Both create at once: the other one's create lands first, ours gets 409.
    store.lock().unwrap().interfere_before_post = true;
    assert_eq!(
        a.tick(t).await.unwrap(),
        LeaseStatus::Follower { holder: None }
    );
    assert!(!a.is_leader(t));

    // An expired Lease, and someone else updates it between our read and our write.
    let old = rfc3339(t - 3_600_000);
    {
        let mut st = store.lock().unwrap();
        let mut l = st.lease.clone().unwrap();
        l["spec"]["renewTime"] = json!(old.replace('Z', "000Z"));
        st.store(l);
    }
    assert!(
        matches!(a.tick(t).await.unwrap(), LeaseStatus::Follower { .. }),
        "first sight"
    );
    store.lock().unwrap().interfere_before_put = true;
    let r = a.tick(t + 16_000).await.unwrap();
    assert!(matches!(r, LeaseStatus::Follower { .. }), "{r:?}");
    assert!(!a.is_leader(t + 16_000));
    let puts = timeline
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("PUT"))
        .count();
    assert_eq!(puts, 1, "it tried once and lost");

    // Our own Lease renewed by someone else in between: we stop leading.
    store.lock().unwrap().lease = None;
    assert_eq!(a.tick(t + 20_000).await.unwrap(), LeaseStatus::Leader);
    store.lock().unwrap().interfere_before_put = true;
    assert_eq!(
        a.tick(t + 22_000).await.unwrap(),
        LeaseStatus::Follower { holder: None }
    );
    assert!(!a.is_leader(t + 22_000));
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_and_leadership_decays() {
    let (client, mut handle) = mock_client();
    tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            send.send_error("connection refused");
        }
    });
    let e = LeaseElector::new(
        client,
        NS,
        LeaseSettings {
            name: "dbwarden".into(),
            holder_identity: "a".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        },
    );
    let err = e.tick(now_ms()).await.unwrap_err();
    assert_eq!(err.kind(), "unreachable");
    assert!(e.last_error().is_some());
    assert!(!e.is_leader(now_ms()));
}

// ---------------------------------------------------------------- volumes

#[tokio::test]
async fn volume_usage_through_the_node_proxy() {
    let (client, handle) = mock_client();
    let timeline: Timeline = Arc::default();
    let requests = spawn_api(handle, timeline, |s| {
        assert_eq!(s.method, Method::GET);
        match s.path.as_str() {
            "/api/v1/nodes/node-a/proxy/stats/summary" => json_response(
                200,
                &json!({"node": {"nodeName": "node-a"}, "pods": [
                    {"podRef": {"name": "postgres-0", "namespace": NS, "uid": "uid-postgres-0"},
                     "volume": [{"name": "data", "pvcRef": {"name": "data-postgres-0", "namespace": NS},
                                 "capacityBytes": 1000, "availableBytes": 200, "usedBytes": 800}]}
                ]}),
            ),
            "/api/v1/nodes/node-b/proxy/stats/summary" => json_response(
                403,
                &status_body(
                    403,
                    "Forbidden",
                    "nodes \"node-b\" is forbidden: cannot get resource \"nodes/proxy\"",
                ),
            ),
            other => panic!("unexpected path {other}"),
        }
    });
    let mut on_b = PodFx::new("postgres-1", 2);
    on_b.node = "node-b".into();
    let snap = snapshot_of(&[PodFx::new("postgres-0", 1), on_b]);
    let (volumes, error) =
        dbwarden::kubernetes::volumes::collect_volumes(&client, &snap, Duration::from_secs(5))
            .await;
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].pvc, "data-postgres-0");
    assert_eq!(volumes[0].free_ratio(), Some(0.2));
    assert!(error.as_deref().unwrap().contains("node-b"), "{error:?}");
    assert_eq!(requests.lock().unwrap().len(), 2, "one summary per node");
    // Fed to the checks: 20 % free is below the runbook's 30 %.
    let mut snap = snap;
    snap.volumes = volumes;
    let checks = dbwarden::kubernetes::checks::pod_checks(&snap, &Default::default(), now_ms());
    let v = checks
        .iter()
        .find(|c| c.check == dbwarden::kubernetes::checks::KubeCheckId::VolumeFree)
        .unwrap();
    assert_eq!(
        v.status,
        dbwarden::kubernetes::checks::KubeCheckStatus::Fail
    );
}

// ---------------------------------------------------------------- the daemon's Kubernetes loop

use dbwarden::config::Config;
use dbwarden::kubernetes::checks::{KubeCheckId, KubeCheckStatus};
use dbwarden::remediate::Remediation;
use dbwarden::remediate::audit::{AuditLog, Decision};
use dbwarden::state::{KubernetesStatus, SharedState};
use dbwarden::telemetry::metrics::Metrics;

/// A config with one PostgreSQL target tied to `app=postgres` pods, the
/// eviction policy in enforce mode and a Lease, as a user would write it.
fn wired_config(dir: &std::path::Path) -> Config {
    let toml = format!(
        "[postgres.pg]
url = \"postgres://app@127.0.0.1:1/app\"
pods = \"app=postgres\"

[remediation]
mode = \"enforce\"
instance = \"warden-a\"
audit_file = {:?}
state_dir = {:?}
pacing = \"100ms\"

[kubernetes]
namespace = \"db\"
statefulsets = false
interval = \"1s\"

[kubernetes.lease]
duration = \"15s\"
renew_every = \"5s\"

[kubernetes.eviction]
not_ready_for = \"5m\"
cooldown = \"15m\"
",
        dir.join("audit.jsonl").display().to_string(),
        dir.display().to_string(),
    );
    Config::from_toml_with_env(&toml, std::iter::empty()).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (with a deadline) until the published Kubernetes status satisfies `f`.
async fn wait_status(
    state: &SharedState,
    what: &str,
    f: impl Fn(&KubernetesStatus) -> bool,
) -> Arc<KubernetesStatus> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = state.kubernetes();
        if let Some(s) = s.as_ref().filter(|s| f(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {s:#?}"
        );
        // The loop publishes at least every `interval`; re-read soon.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mock API server for the whole loop: pod list + (held) watch, the
/// re-check GET, the eviction, and the Lease. `evictions` records each
/// eviction with whether its intent was already in the audit file.
fn spawn_cluster(
    mut handle: Handle,
    pods: Vec<PodFx>,
    audit: std::path::PathBuf,
    evictions: Arc<Mutex<Vec<(String, bool)>>>,
) {
    let lease = Arc::new(Mutex::new(LeaseStore::default()));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let s = seen(req).await;
            let pods_path = format!("/api/v1/namespaces/{NS}/pods");
            let resp = match (s.method.clone(), s.path.as_str()) {
                (Method::GET, p) if p == pods_path && s.q("watch") == Some("true") => {
                    // Nothing changes: hold the watch open.
                    held.push(send);
                    continue;
                }
                (Method::GET, p) if p == pods_path => {
                    assert_eq!(s.q("labelSelector"), Some("app=postgres"), "{s:?}");
                    json_response(
                        200,
                        &list_json("PodList", "v1", 10, pods.iter().map(PodFx::json).collect()),
                    )
                }
                (Method::GET, p) if p.starts_with(&format!("{pods_path}/")) => {
                    let name = p.rsplit('/').next().unwrap();
                    match pods.iter().find(|f| f.name == name) {
                        Some(f) => json_response(200, &f.json()),
                        None => json_response(404, &status_body(404, "NotFound", "not found")),
                    }
                }
                (Method::POST, p) if p.ends_with("/eviction") => {
                    let pod = p.split('/').nth_back(1).unwrap().to_string();
                    let (records, _) = AuditLog::read_all(&audit).unwrap();
                    let intent_first = records.iter().any(|r| {
                        r.decision == Decision::Intent
                            && r.pod.as_ref().is_some_and(|p| p.name == pod)
                    });
                    let body = s.body.clone().unwrap();
                    assert_eq!(
                        body["deleteOptions"]["preconditions"]["uid"],
                        json!(format!("uid-{pod}"))
                    );
                    evictions.lock().unwrap().push((pod, intent_first));
                    json_response(201, &status_body(201, "", ""))
                }
                (Method::GET, p) if p == format!("{LEASES}/dbwarden") => {
                    match &lease.lock().unwrap().lease {
                        Some(l) => json_response(200, l),
                        None => json_response(404, &status_body(404, "NotFound", "no lease")),
                    }
                }
                (Method::POST, LEASES) => {
                    let v = lease.lock().unwrap().store(s.body.clone().unwrap());
                    json_response(201, &v)
                }
                (Method::PUT, p) if p == format!("{LEASES}/dbwarden") => {
                    let v = lease.lock().unwrap().store(s.body.clone().unwrap());
                    json_response(200, &v)
                }
                other => panic!("unexpected request {other:?}"),
            };
            send.send_response(resp);
        }
        drop(held);
    });
}

#[tokio::test]
async fn the_daemon_loop_publishes_pods_checks_and_the_lease_and_evicts_exactly_the_qualifying_pod()
{
    let dir = tempfile::tempdir().unwrap();
    let config = wired_config(dir.path());
    let settings = config.kubernetes.clone().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let now = now_ms();
    let pods = vec![
        // Ready.
        PodFx::new("postgres-0", 1),
        // Not ready for an hour: qualifies.
        PodFx::new("postgres-1", 2).not_ready_since(now - 3_600_000),
        // Another StatefulSet's pod, not ready for a minute only: it may be recovering.
        PodFx::new("replica-0", 3)
            .sts(Some("replica"))
            .not_ready_since(now - 60_000)
            .crash_loop(4, "OOMKilled", 137, now - 30_000),
    ];
    let (client, handle) = mock_client();
    let evictions = Arc::new(Mutex::new(Vec::new()));
    spawn_cluster(handle, pods, audit.clone(), evictions.clone());

    let state = Arc::new(SharedState::new([("pg", "postgres")]));
    let metrics = Arc::new(Metrics::new(state.clone()));
    let rem = Remediation::start(config.remediation.clone().unwrap(), metrics.clone()).unwrap();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    tracker.spawn(dbwarden::daemon::kubernetes::run(
        settings,
        client,
        state.clone(),
        metrics.clone(),
        Some(rem.clone()),
        tracker.clone(),
        cancel.clone(),
    ));

    let status = wait_status(&state, "the eviction", |s| {
        s.last_evictions.iter().any(|r| {
            matches!(
                r.decision,
                EvictionDecision::Done(dbwarden::kubernetes::evict::EvictionOutcome::Evicted)
            )
        })
    })
    .await;
    assert_eq!(
        *evictions.lock().unwrap(),
        [("postgres-1".to_string(), true)],
        "exactly the qualifying pod, its intent on disk first"
    );
    assert!(status.snapshot.api_reachable);
    assert_eq!(status.snapshot.pods.len(), 3);
    let check = |id| {
        status
            .checks
            .iter()
            .find(|c| c.target == "pg" && c.check == id)
            .unwrap_or_else(|| panic!("no {id:?} in {:#?}", status.checks))
    };
    assert_eq!(
        check(KubeCheckId::ApiReachable).status,
        KubeCheckStatus::Pass
    );
    assert_eq!(check(KubeCheckId::PodsReady).status, KubeCheckStatus::Fail);
    assert_eq!(
        check(KubeCheckId::NoCrashLoop).status,
        KubeCheckStatus::Fail
    );
    assert_eq!(
        check(KubeCheckId::NoOomKilled).status,
        KubeCheckStatus::Fail
    );
    let lease = status.lease.as_ref().unwrap();
    assert_eq!(lease.holder.as_deref(), Some("warden-a"));
    assert!(lease.is_leader);

    // The real audit file: an intent, then the outcome, about that pod.
    let (records, bad) = AuditLog::read_all(&audit).unwrap();
    assert_eq!(bad, 0);
    let about: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.decision,
                r.action.as_str(),
                r.pod.as_ref().unwrap().name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        about,
        [
            (Decision::Intent, "evict", "postgres-1"),
            (Decision::Acted, "evict", "postgres-1")
        ]
    );
    assert_eq!(records[0].action_id, records[1].action_id);
    assert_eq!(records[0].pod.as_ref().unwrap().uid, "uid-postgres-1");
    assert_eq!(records[0].policy, "kubernetes_eviction");
    assert_eq!(records[0].instance, "warden-a");

    // Metrics come from memory, with bounded labels.
    let text = String::from_utf8(metrics.render().to_vec()).unwrap();
    for line in [
        "dbwarden_kubernetes_api_reachable 1",
        "dbwarden_kubernetes_pod_ready{target=\"pg\",pod=\"postgres-0\"} 1",
        "dbwarden_kubernetes_pod_ready{target=\"pg\",pod=\"postgres-1\"} 0",
        "dbwarden_kubernetes_pod_phase{target=\"pg\",pod=\"postgres-0\",phase=\"Running\"} 1",
        "dbwarden_kubernetes_pod_restarts_total{target=\"pg\",pod=\"replica-0\"} 4",
        "dbwarden_kubernetes_pod_waiting{target=\"pg\",pod=\"replica-0\",reason=\"CrashLoopBackOff\"} 1",
        "dbwarden_kubernetes_pod_last_termination{target=\"pg\",pod=\"replica-0\",reason=\"OOMKilled\"} 1",
        "dbwarden_kubernetes_container_memory_limit_bytes{target=\"pg\",pod=\"postgres-0\",container=\"postgres\"} 2147483648",
        "dbwarden_kubernetes_lease_holder{holder=\"warden-a\"} 1",
        "dbwarden_kubernetes_lease_leader 1",
        "dbwarden_check_failing{target=\"pg\",check=\"kubernetes_pods_ready\"} 1",
        "dbwarden_check_failing{target=\"pg\",check=\"kubernetes_api_reachable\"} 0",
        "dbwarden_remediation_actions_total{target=\"pg\",policy=\"kubernetes_eviction\",action=\"evict\",outcome=\"acted\",mode=\"enforce\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    for name in text
        .lines()
        .filter(|l| l.starts_with("dbwarden_kubernetes"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
    {
        assert!(
            dbwarden::telemetry::metrics::METRIC_NAMES.contains(&name),
            "{name} is not in METRIC_NAMES"
        );
    }

    // Later rounds do not evict again (the StatefulSet cools down).
    // Each round publishes a new status (the one held cannot be reused).
    let mut seen = state.kubernetes().expect("a round's status");
    for _ in 0..2 {
        let before = seen.clone();
        seen = wait_status(&state, "another round", |s| {
            !std::ptr::eq(s, Arc::as_ptr(&before))
        })
        .await;
    }
    assert_eq!(evictions.lock().unwrap().len(), 1);

    cancel.cancel();
    tracker.close();
    tokio::time::timeout(DEADLINE, tracker.wait())
        .await
        .expect("the loop stops when cancelled");
}

#[tokio::test]
async fn an_unreachable_api_server_fails_the_kubernetes_checks_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = wired_config(dir.path()).kubernetes.unwrap();
    settings.eviction = None;
    settings.lease = None;
    let (client, mut handle) = mock_client();
    tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            send.send_error("connection refused");
        }
    });
    let state = Arc::new(SharedState::new([("pg", "postgres")]));
    let metrics = Arc::new(Metrics::new(state.clone()));
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    tracker.spawn(dbwarden::daemon::kubernetes::run(
        settings,
        client,
        state.clone(),
        metrics.clone(),
        None,
        tracker.clone(),
        cancel.clone(),
    ));
    let status = wait_status(&state, "the API server reported unreachable", |s| {
        !s.snapshot.api_reachable
    })
    .await;
    let api = status
        .checks
        .iter()
        .find(|c| c.check == KubeCheckId::ApiReachable)
        .unwrap();
    assert_eq!(api.status, KubeCheckStatus::Fail);
    assert!(
        status
            .checks
            .iter()
            .filter(|c| c.check != KubeCheckId::ApiReachable)
            .all(|c| c.status == KubeCheckStatus::Unknown),
        "{:#?}",
        status.checks
    );
    let text = String::from_utf8(metrics.render().to_vec()).unwrap();
    assert!(
        text.contains("dbwarden_kubernetes_api_reachable 0"),
        "{text}"
    );
    assert!(
        text.contains("dbwarden_check_failing{target=\"pg\",check=\"kubernetes_api_reachable\"} 1")
    );
    // The database target's state is its poll loop's alone: untouched here.
    let pg = state.get("pg").unwrap();
    assert_eq!(pg.polls_completed, 0);
    assert!(pg.checks.is_empty());
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(DEADLINE, tracker.wait())
        .await
        .expect("the loop stops when cancelled");
}

#[tokio::test]
async fn dbwarden_check_reports_an_api_server_it_cannot_reach() {
    // A kubeconfig pointing at a port nothing listens on: a real connection attempt that fails.
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: u
  user:
    token: t
contexts:
- name: x
  context:
    cluster: c
    user: u
current-context: x
"
        ),
    )
    .unwrap();
    let toml = format!(
        "[postgres.pg]
url = \"postgres://app@127.0.0.1:1/app\"
pods = \"app=postgres\"

[kubernetes]
credentials = \"kubeconfig\"
kubeconfig = {:?}
namespace = \"db\"
",
        kubeconfig.display().to_string()
    );
    let config = Config::from_toml_with_env(&toml, std::iter::empty()).unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        dbwarden::daemon::kubernetes::observe_kubernetes_once(config.kubernetes.as_ref().unwrap()),
    )
    .await
    .expect("check gives up on an unreachable API server");
    assert!(!report.snapshot.api_reachable);
    let api: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.check == KubeCheckId::ApiReachable)
        .collect();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].status, KubeCheckStatus::Fail);
    assert_eq!(api[0].target, "pg");
}
