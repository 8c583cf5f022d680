//! The Kubernetes module against a mock API server (the kube-rs convention:
//! `tower_test::mock::pair` behind `kube::Client::new`), with a task playing
//! the API server that asserts each request and sends scripted answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
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
type Responder = tower_test::mock::SendResponse<Response<Body>>;

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
