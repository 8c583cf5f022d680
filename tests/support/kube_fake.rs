//! A small fake Kubernetes API server: axum over real TCP on 127.0.0.1,
//! plain HTTP, answering exactly what dbwarden's Kubernetes loop asks
//! (`src/kubernetes/{pods,volumes,lease,evict}.rs`), so that a daemon
//! started from a kubeconfig ([`KubeFake::kubeconfig`],
//! `credentials = "kubeconfig"`) exports every `dbwarden_kubernetes_*` family.
//!
//! - `GET /api/v1/namespaces/{ns}/pods?labelSelector=...`: a `PodList` of the
//!   pods whose labels match (equality selectors `k=v`, `k==v`, `k!=v`,
//!   comma-separated), with the list's `resourceVersion`.
//! - `GET /apis/apps/v1/namespaces/{ns}/statefulsets`: a `StatefulSetList`.
//! - `...&watch=true&resourceVersion=N`: nothing changes in this cluster but
//!   status patches (below), so
//!   the watch is held open (the response is withheld) for
//!   [`KubeFake::WATCH_HOLD`] or the request's `timeoutSeconds`, whichever is
//!   shorter, then ends with no event: the watcher resumes from the same
//!   version, as it does after a real watch times out.
//! - `GET /api/v1/namespaces/{ns}/pods/{name}` (the re-check before an
//!   eviction) and `POST .../pods/{name}/eviction` (recorded, 201).
//! - `GET /api/v1/nodes/{node}/proxy/stats/summary`: the kubelet stats
//!   summary of the pods on that node, with each claim's usage.
//! - `coordination.k8s.io/v1` Leases: GET (404 while absent), POST (409 when
//!   present), PUT (409 unless the `resourceVersion` sent is the current one),
//!   each Lease with its own version; LIST of the namespace's Leases whose
//!   labels match `labelSelector` (the shard group's members); DELETE (404
//!   while absent, 409 when a `preconditions.resourceVersion` is not the
//!   current one).
//! - Clients by name: [`KubeFake::kubeconfig_for`] gives a client its own
//!   token, and [`KubeFake::cut_off`] makes the API server unreachable for
//!   that client alone (its requests hang, as behind a partition, until
//!   [`KubeFake::restore`]).
//! - Lag routing: `GET /api/v1/namespaces/{ns}/services/{name}` for the
//!   Services added with [`KubeFake::add_service`], and
//!   `PATCH .../pods/{name}/status` with a JSON patch
//!   (`application/json-patch+json`: `test`, `add`, `replace`), applied to
//!   the pod's conditions and recorded ([`KubeFake::status_patches`]). A pod
//!   made gated with [`KubeFake::gate`] declares the readiness gate
//!   `dbwarden.io/replication-lag-ok` and is `Ready` only while its
//!   container is ready and that condition is `True`. A patch bumps the
//!   cluster's `resourceVersion` and ends the pod watches at once with a
//!   `MODIFIED` event for each pod, as a real API server streams it.
//!
//! Every request needs `Authorization: Bearer` with the kubeconfig's token
//! (else 401). Anything else answers 404 with a `Status` and is counted in
//! [`KubeFake::unexpected`], so a test can assert that dbwarden asked only
//! for what it should.
//!
//! [`KubeFake::start`] needs a Tokio runtime context (like the Bolt test
//! server); the server stops when the `KubeFake` is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "kube-fake-token";
/// The resourceVersion of every list until a status patch bumps it.
const LIST_VERSION: &str = "1000";

/// One container's last termination.
#[derive(Debug, Clone)]
pub struct Termination {
    pub reason: String,
    pub exit_code: i32,
    pub finished_ago: Duration,
}

/// A pod of the fake cluster, with one container named after its app.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    pub statefulset: Option<String>,
    pub ready: bool,
    /// How long ago the Ready condition last changed.
    pub ready_changed_ago: Duration,
    pub restarts: i32,
    pub waiting: Option<String>,
    pub last_termination: Option<Termination>,
    pub memory_limit: Option<String>,
    pub cpu_limit: Option<String>,
    /// The claim it mounts, with its capacity and available bytes.
    pub claim: Option<(String, u64, u64)>,
}

impl FakePod {
    /// A ready, running pod of StatefulSet `app` labelled `app=<app>`, on
    /// `node`, mounting claim `data-<name>`, limited to 2 GiB and 1 core.
    pub fn ready(app: &str, name: &str, node: &str) -> FakePod {
        FakePod {
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            node: node.into(),
            statefulset: Some(app.into()),
            ready: true,
            ready_changed_ago: Duration::from_secs(86_400),
            restarts: 0,
            waiting: None,
            last_termination: None,
            memory_limit: Some("2Gi".into()),
            cpu_limit: Some("1".into()),
            claim: Some((format!("data-{name}"), 10 << 30, 8 << 30)),
        }
    }

    /// Not ready for `for_`, waiting in CrashLoopBackOff after `restarts`
    /// restarts, the last of which ended `reason` (e.g. OOMKilled, 137) `ago`.
    pub fn crash_looping(
        mut self,
        for_: Duration,
        restarts: i32,
        reason: &str,
        exit_code: i32,
        ago: Duration,
    ) -> FakePod {
        self.ready = false;
        self.ready_changed_ago = for_;
        self.restarts = restarts;
        self.waiting = Some("CrashLoopBackOff".into());
        self.last_termination = Some(Termination {
            reason: reason.into(),
            exit_code,
            finished_ago: ago,
        });
        self
    }

    /// Its claim's capacity and available bytes.
    pub fn claim_usage(mut self, capacity: u64, available: u64) -> FakePod {
        let name = format!("data-{}", self.name);
        self.claim = Some((name, capacity, available));
        self
    }

    fn uid(&self) -> String {
        format!("uid-{}", self.name)
    }

    fn json(&self, namespace: &str) -> Value {
        let app = self.labels.get("app").cloned().unwrap_or_default();
        let mut meta = json!({
            "name": self.name, "namespace": namespace, "uid": self.uid(),
            "resourceVersion": "900", "labels": self.labels,
            "creationTimestamp": rfc3339_ago(Duration::from_secs(2 * 86_400)),
        });
        if let Some(s) = &self.statefulset {
            meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": s, "uid": format!("uid-sts-{s}"), "controller": true}]);
        }
        let changed = rfc3339_ago(self.ready_changed_ago);
        let mut status = json!({
            "name": app, "ready": self.ready, "restartCount": self.restarts,
            "image": format!("{app}:latest"), "imageID": "",
            "state": match &self.waiting {
                Some(w) => json!({"waiting": {"reason": w, "message": "back-off restarting failed container"}}),
                None => json!({"running": {"startedAt": changed}}),
            },
        });
        if let Some(t) = &self.last_termination {
            status["lastState"] = json!({"terminated": {"reason": t.reason, "exitCode": t.exit_code,
                "startedAt": rfc3339_ago(t.finished_ago + Duration::from_secs(30)),
                "finishedAt": rfc3339_ago(t.finished_ago)}});
        }
        let mut limits = serde_json::Map::new();
        if let Some(m) = &self.memory_limit {
            limits.insert("memory".into(), json!(m));
        }
        if let Some(c) = &self.cpu_limit {
            limits.insert("cpu".into(), json!(c));
        }
        let volumes: Vec<Value> = self
            .claim
            .iter()
            .map(|(claim, _, _)| json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}))
            .collect();
        let ready = if self.ready { "True" } else { "False" };
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": app, "image": format!("{app}:latest"),
                                "resources": {"limits": limits}}],
                "volumes": volumes,
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": changed}],
                "containerStatuses": [status],
            }
        })
    }
}

/// A StatefulSet of the fake cluster (its template labelled `app=<name>`).
#[derive(Debug, Clone)]
pub struct FakeStatefulSet {
    pub name: String,
    pub desired: i32,
    pub ready: i32,
}

impl FakeStatefulSet {
    fn json(&self, namespace: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": self.name, "namespace": namespace,
                         "uid": format!("uid-sts-{}", self.name), "resourceVersion": "900"},
            "spec": {
                "replicas": self.desired, "serviceName": self.name,
                "selector": {"matchLabels": {"app": self.name}},
                "template": {"metadata": {"labels": {"app": self.name}},
                             "spec": {"containers": [{"name": self.name, "image": format!("{}:latest", self.name)}]}}
            },
            "status": {"replicas": self.desired, "readyReplicas": self.ready,
                       "currentReplicas": self.desired}
        })
    }
}

/// What the fake cluster holds: one namespace's pods and StatefulSets.
#[derive(Debug, Clone)]
pub struct FakeCluster {
    pub namespace: String,
    pub pods: Vec<FakePod>,
    pub statefulsets: Vec<FakeStatefulSet>,
}

impl FakeCluster {
    /// A primary and its standby in namespace `db`: pods `pg-0` and `pg-1`
    /// of StatefulSet `pg`, both ready on `node-a`, each selectable by its
    /// `statefulset.kubernetes.io/pod-name` label (see [`super::pod_target`]).
    pub fn primary_and_standby() -> FakeCluster {
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

    /// The interface tests' cluster in namespace `db`: a PostgreSQL
    /// StatefulSet `postgres` (`app=postgres`, 2 of 3 ready: `postgres-2` is
    /// not ready, in CrashLoopBackOff, its last termination OOMKilled two
    /// minutes ago) on `node-a`, claims 80 % free; a Neo4j StatefulSet
    /// `neo4j` (`app=neo4j`, 1 of 1 ready) on `node-b`, its claim 20 % free.
    pub fn databases() -> FakeCluster {
        let pods = vec![
            FakePod::ready("postgres", "postgres-0", "node-a"),
            FakePod::ready("postgres", "postgres-1", "node-a"),
            FakePod::ready("postgres", "postgres-2", "node-a").crash_looping(
                Duration::from_secs(20 * 60),
                7,
                "OOMKilled",
                137,
                Duration::from_secs(120),
            ),
            FakePod::ready("neo4j", "neo4j-0", "node-b").claim_usage(10 << 30, 2 << 30),
        ];
        FakeCluster {
            namespace: "db".into(),
            pods,
            statefulsets: vec![
                FakeStatefulSet {
                    name: "postgres".into(),
                    desired: 3,
                    ready: 2,
                },
                FakeStatefulSet {
                    name: "neo4j".into(),
                    desired: 1,
                    ready: 1,
                },
            ],
        }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub status: u16,
}

#[derive(Debug, Default)]
struct LeaseStore {
    lease: Option<Value>,
    version: u64,
}

/// One `pods/status` patch as the fake received it.
#[derive(Debug, Clone)]
pub struct StatusPatch {
    pub pod: String,
    pub content_type: String,
    pub ops: Value,
    /// The HTTP status answered.
    pub status: u16,
}

/// The readiness gate condition lag routing owns.
pub const GATE: &str = "dbwarden.io/replication-lag-ok";

struct Inner {
    cluster: FakeCluster,
    /// Pods declaring the readiness gate.
    gated: Mutex<std::collections::BTreeSet<String>>,
    /// Conditions set through `pods/status`, by pod (besides `Ready`).
    conditions: Mutex<BTreeMap<String, Vec<Value>>>,
    services: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    status_patches: Mutex<Vec<StatusPatch>>,
    /// The cluster's resourceVersion: bumped by every status patch.
    version: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
    log: Mutex<Vec<Seen>>,
    unexpected: Mutex<Vec<String>>,
    evictions: Mutex<Vec<String>>,
    leases: Mutex<BTreeMap<String, LeaseStore>>,
    /// Clients (by their kubeconfig's name) the API server is unreachable for.
    cut: Mutex<std::collections::BTreeSet<String>>,
    stop: CancellationToken,
}

/// The fake API server, listening until dropped.
pub struct KubeFake {
    inner: Arc<Inner>,
    url: String,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl KubeFake {
    /// How long a watch is held open before it ends without an event.
    pub const WATCH_HOLD: Duration = Duration::from_secs(5);

    /// Serves `cluster` on a free port of 127.0.0.1. Needs a Tokio runtime
    /// context (`Handle::current()`).
    pub fn start(cluster: FakeCluster) -> KubeFake {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local_addr"));
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let inner = Arc::new(Inner {
            cluster,
            gated: Mutex::default(),
            conditions: Mutex::default(),
            services: Mutex::default(),
            status_patches: Mutex::default(),
            version: std::sync::atomic::AtomicU64::new(LIST_VERSION.parse().expect("version")),
            changed: tokio::sync::Notify::new(),
            log: Mutex::default(),
            unexpected: Mutex::default(),
            evictions: Mutex::default(),
            leases: Mutex::default(),
            cut: Mutex::default(),
            stop: CancellationToken::new(),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let stop = inner.stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        let dir = tempfile::tempdir().expect("tempdir for the kubeconfig");
        let fake = KubeFake {
            inner,
            url,
            dir,
            task,
        };
        std::fs::write(fake.kubeconfig(), fake.kubeconfig_text()).expect("write the kubeconfig");
        fake
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn namespace(&self) -> &str {
        &self.inner.cluster.namespace
    }

    /// A kubeconfig file whose current context points at this server, with
    /// the fake's namespace and bearer token.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubeconfig_text(&self) -> String {
        self.kubeconfig_text_with(TOKEN)
    }

    /// A kubeconfig like [`KubeFake::kubeconfig`] whose token names the
    /// client `name`, so that [`KubeFake::cut_off`] can single it out.
    pub fn kubeconfig_for(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(&path, self.kubeconfig_text_with(&format!("{TOKEN}.{name}")))
            .expect("write the kubeconfig");
        path
    }

    /// A `[kubernetes]` section like [`KubeFake::config_section`] for the
    /// client `name` ([`KubeFake::kubeconfig_for`]).
    pub fn config_section_for(&self, name: &str, extra: &str) -> String {
        format!(
            "[kubernetes]\ncredentials = \"kubeconfig\"\nkubeconfig = {}\nnamespace = {:?}\n{extra}\n",
            toml_path(&self.kubeconfig_for(name)),
            self.inner.cluster.namespace
        )
    }

    /// Makes the API server unreachable for client `name`: its requests
    /// hang (no answer, no error) until [`KubeFake::restore`].
    pub fn cut_off(&self, name: &str) {
        lock(&self.inner.cut).insert(name.to_string());
    }

    /// Makes the API server reachable again for client `name`.
    pub fn restore(&self, name: &str) {
        lock(&self.inner.cut).remove(name);
    }

    /// Every Lease now: name, holder, labels and annotations.
    pub fn leases(&self) -> Vec<Value> {
        lock(&self.inner.leases)
            .values()
            .filter_map(|s| s.lease.clone())
            .collect()
    }

    fn kubeconfig_text_with(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: dbwarden\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: dbwarden\n    namespace: {}\n\
             current-context: fake\n",
            self.url, self.inner.cluster.namespace
        )
    }

    /// A `[kubernetes]` section using this server through the kubeconfig,
    /// with `extra` lines appended (e.g. `interval = "1s"`).
    pub fn config_section(&self, extra: &str) -> String {
        format!(
            "[kubernetes]\ncredentials = \"kubeconfig\"\nkubeconfig = {}\nnamespace = {:?}\n{extra}\n",
            toml_path(&self.kubeconfig()),
            self.inner.cluster.namespace
        )
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.inner.log).clone()
    }

    /// Requests the fake does not serve (method and path), in order.
    pub fn unexpected(&self) -> Vec<String> {
        lock(&self.inner.unexpected).clone()
    }

    /// Pods evicted through the Eviction API, in order.
    /// Makes `pod` declare the readiness gate `dbwarden.io/replication-lag-ok`
    /// (with no condition yet, so not ready until one is set `True`), or
    /// with `initial` set.
    pub fn gate(&self, pod: &str, initial: Option<bool>) {
        lock(&self.inner.gated).insert(pod.to_string());
        if let Some(v) = initial {
            lock(&self.inner.conditions).insert(
                pod.to_string(),
                vec![json!({"type": GATE, "status": if v { "True" } else { "False" }})],
            );
        }
    }

    /// Adds a Service selecting pods by `selector` (equality labels).
    pub fn add_service(&self, name: &str, selector: &[(&str, &str)]) {
        lock(&self.inner.services).insert(
            name.to_string(),
            selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Every `pods/status` patch received, in order.
    pub fn status_patches(&self) -> Vec<StatusPatch> {
        lock(&self.inner.status_patches).clone()
    }

    /// The gate condition of `pod` now (`None`: absent).
    pub fn gate_value(&self, pod: &str) -> Option<bool> {
        gate_of(&lock(&self.inner.conditions), pod)
    }

    /// Whether `pod` is `Ready` now, as the fake renders it.
    pub fn pod_ready(&self, pod: &str) -> bool {
        let ns = &self.inner.cluster.namespace;
        self.inner
            .cluster
            .pods
            .iter()
            .find(|p| p.name == pod)
            .map(|p| render(&self.inner, p, ns)["status"]["conditions"][0]["status"] == "True")
            .unwrap_or(false)
    }

    pub fn evictions(&self) -> Vec<String> {
        lock(&self.inner.evictions).clone()
    }

    /// The holder of Lease `name`, if any.
    pub fn lease_holder(&self, name: &str) -> Option<String> {
        lock(&self.inner.leases)
            .get(name)
            .and_then(|s| s.lease.as_ref())
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    }
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        self.inner.stop.cancel();
        self.task.abort();
    }
}

fn gate_of(conditions: &BTreeMap<String, Vec<Value>>, pod: &str) -> Option<bool> {
    conditions
        .get(pod)?
        .iter()
        .find(|c| c["type"] == GATE)
        .map(|c| c["status"] == "True")
}

/// A pod as the fake serves it now: its conditions set through
/// `pods/status`, its readiness gate, the cluster's resourceVersion.
fn render(fake: &Inner, pod: &FakePod, ns: &str) -> Value {
    let mut v = pod.json(ns);
    let version = fake.version.load(std::sync::atomic::Ordering::SeqCst);
    v["metadata"]["resourceVersion"] = json!(version.to_string());
    let conditions = lock(&fake.conditions);
    if lock(&fake.gated).contains(&pod.name) {
        v["spec"]["readinessGates"] = json!([{"conditionType": GATE}]);
        if pod.ready && gate_of(&conditions, &pod.name) != Some(true) {
            v["status"]["conditions"][0]["status"] = json!("False");
        }
    }
    if let Some(extra) = conditions.get(&pod.name)
        && let Some(list) = v["status"]["conditions"].as_array_mut()
    {
        list.extend(extra.iter().cloned());
    }
    v
}

/// Applies a JSON patch's `test`, `add` and `replace` operations (the ones
/// dbwarden sends) to `doc`, all or nothing, as the API server does.
fn apply_json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let mut out = doc.clone();
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("an operation without a path")?;
        let pointer = |p: &str| p.to_string();
        match op["op"].as_str() {
            Some("test") => {
                if out.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            Some("replace") => {
                let slot = out
                    .pointer_mut(&pointer(path))
                    .ok_or(format!("replace: {path} does not exist"))?;
                *slot = op["value"].clone();
            }
            Some("add") => {
                let (parent, last) = path.rsplit_once('/').ok_or("add: bad path")?;
                let target = out
                    .pointer_mut(parent)
                    .ok_or(format!("add: {parent} does not exist"))?;
                match target {
                    Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                    Value::Object(o) => {
                        o.insert(last.to_string(), op["value"].clone());
                    }
                    _ => return Err(format!("add: unsupported path {path}")),
                }
            }
            other => return Err(format!("unsupported operation {other:?}")),
        }
    }
    *doc = out;
    Ok(())
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339_ago(ago: Duration) -> String {
    let at = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Whole seconds, as the API server writes them.
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at.as_secs())).to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether `labels` match an equality-based selector; `Err` for anything else.
fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for req in selector.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let (key, want, equal) = if let Some((k, v)) = req.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = req.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = req.split_once('=') {
            (k, v, true)
        } else {
            return Err(format!("unsupported selector requirement {req:?}"));
        };
        let has = labels.get(key.trim()).is_some_and(|v| v == want.trim());
        if has != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        serde_json::to_vec(body).expect("serialize"),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": code.as_u16(), "reason": reason, "message": message}),
    )
}

async fn handle(State(fake): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query = parse_query(req.uri().query());
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let client = bearer
        .strip_prefix(TOKEN)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(String::from);
    let authorized = bearer == TOKEN || client.is_some();
    // A partition for this client: no answer until restored (or the fake stops).
    if let Some(c) = &client {
        while lock(&fake.cut).contains(c) {
            tokio::select! {
                _ = fake.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let response = if authorized {
        route(&fake, &method, &path, &query, body, &content_type).await
    } else {
        status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    };
    lock(&fake.log).push(Seen {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

async fn route(
    fake: &Inner,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: Option<Value>,
    content_type: &str,
) -> Response {
    let ns = fake.cluster.namespace.as_str();
    let pods = format!("/api/v1/namespaces/{ns}/pods");
    let sts = format!("/apis/apps/v1/namespaces/{ns}/statefulsets");
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.clone(), path) {
        (Method::GET, p) if p == pods || p == sts => {
            if query.get("watch").map(String::as_str) == Some("true") {
                return held_watch(fake, query, p == pods).await;
            }
            let items: Vec<Value> = if p == pods {
                let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
                let mut items = Vec::new();
                for pod in &fake.cluster.pods {
                    match selector_matches(selector, &pod.labels) {
                        Ok(true) => items.push(render(fake, pod, ns)),
                        Ok(false) => {}
                        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                    }
                }
                items
            } else {
                fake.cluster
                    .statefulsets
                    .iter()
                    .map(|s| s.json(ns))
                    .collect()
            };
            let (kind, api_version) = if p == pods {
                ("PodList", "v1")
            } else {
                ("StatefulSetList", "apps/v1")
            };
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": fake.version.load(std::sync::atomic::Ordering::SeqCst).to_string()},
                        "items": items}),
            )
        }
        (Method::GET, p) if p.starts_with(&format!("{pods}/")) && segments.len() == 6 => {
            match fake.cluster.pods.iter().find(|f| f.name == segments[5]) {
                Some(pod) => json_response(StatusCode::OK, &render(fake, pod, ns)),
                None => status(StatusCode::NOT_FOUND, "NotFound", "pods not found"),
            }
        }
        (Method::PATCH, p)
            if p.starts_with(&format!("{pods}/"))
                && p.ends_with("/status")
                && segments.len() == 7 =>
        {
            let name = segments[5].to_string();
            let Some(pod) = fake.cluster.pods.iter().find(|f| f.name == name) else {
                return status(StatusCode::NOT_FOUND, "NotFound", "pods not found");
            };
            let ops = body.clone().unwrap_or(Value::Null);
            let record = |code: StatusCode| {
                lock(&fake.status_patches).push(StatusPatch {
                    pod: name.clone(),
                    content_type: content_type.to_string(),
                    ops: ops.clone(),
                    status: code.as_u16(),
                })
            };
            if content_type != "application/json-patch+json" {
                record(StatusCode::UNSUPPORTED_MEDIA_TYPE);
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    content_type,
                );
            }
            let mut doc = render(fake, pod, ns);
            if let Err(e) = apply_json_patch(&mut doc, &ops) {
                record(StatusCode::UNPROCESSABLE_ENTITY);
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e);
            }
            // Keep what the patch set besides the Ready condition the fake computes.
            let extra: Vec<Value> = doc["status"]["conditions"]
                .as_array()
                .map(|a| a.iter().filter(|c| c["type"] != "Ready").cloned().collect())
                .unwrap_or_default();
            lock(&fake.conditions).insert(name.clone(), extra);
            fake.version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            fake.changed.notify_waiters();
            record(StatusCode::OK);
            json_response(StatusCode::OK, &render(fake, pod, ns))
        }
        (Method::GET, p)
            if segments.len() == 6
                && p.starts_with(&format!("/api/v1/namespaces/{ns}/services/")) =>
        {
            match lock(&fake.services).get(segments[5]) {
                Some(selector) => json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": segments[5], "namespace": ns, "resourceVersion": "900"},
                            "spec": {"selector": selector, "ports": [{"port": 5432}]}}),
                ),
                None => status(StatusCode::NOT_FOUND, "NotFound", "services not found"),
            }
        }
        (Method::POST, p)
            if p.starts_with(&format!("{pods}/"))
                && p.ends_with("/eviction")
                && segments.len() == 7 =>
        {
            lock(&fake.evictions).push(segments[5].to_string());
            json_response(
                StatusCode::CREATED,
                &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201}),
            )
        }
        (Method::GET, p)
            if segments.len() == 7
                && p.starts_with("/api/v1/nodes/")
                && p.ends_with("/proxy/stats/summary") =>
        {
            let node = segments[3];
            let pods: Vec<Value> = fake
                .cluster
                .pods
                .iter()
                .filter(|p| p.node == node)
                .map(|p| {
                    let volume: Vec<Value> = p.claim.iter().map(|(claim, capacity, available)| {
                        json!({"name": "data", "pvcRef": {"name": claim, "namespace": ns},
                               "capacityBytes": capacity, "availableBytes": available,
                               "usedBytes": capacity - available})
                    }).collect();
                    json!({"podRef": {"name": p.name, "namespace": ns, "uid": p.uid()}, "volume": volume})
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"node": {"nodeName": node}, "pods": pods}),
            )
        }
        (Method::GET, p) if p == leases => {
            let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
            let store = lock(&fake.leases);
            let mut items = Vec::new();
            for lease in store.values().filter_map(|s| s.lease.as_ref()) {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(lease["metadata"]["labels"].clone()).unwrap_or_default();
                match selector_matches(selector, &labels) {
                    Ok(true) => items.push(lease.clone()),
                    Ok(false) => {}
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                }
            }
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                        "metadata": {"resourceVersion": LIST_VERSION}, "items": items}),
            )
        }
        (m, p) if p == leases && m == Method::POST => {
            let Some(mut lease) = body else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
            };
            let name = lease["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut store = lock(&fake.leases);
            let s = store.entry(name.clone()).or_default();
            if s.lease.is_some() {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            s.version += 1;
            lease["metadata"]["resourceVersion"] = json!(s.version.to_string());
            lease["metadata"]["namespace"] = json!(ns);
            s.lease = Some(lease.clone());
            json_response(StatusCode::CREATED, &lease)
        }
        (m, p) if p.starts_with(&format!("{leases}/")) && segments.len() == 7 => {
            let name = segments[6].to_string();
            let mut store = lock(&fake.leases);
            let s = store.entry(name.clone()).or_default();
            match m {
                Method::GET => match &s.lease {
                    Some(l) => json_response(StatusCode::OK, l),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("leases.coordination.k8s.io \"{name}\" not found"),
                    ),
                },
                Method::PUT => {
                    let Some(mut lease) = body else {
                        return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                    };
                    let sent = lease["metadata"]["resourceVersion"]
                        .as_str()
                        .map(String::from);
                    if s.lease.is_none() || sent != Some(s.version.to_string()) {
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version and try again",
                        );
                    }
                    s.version += 1;
                    lease["metadata"]["resourceVersion"] = json!(s.version.to_string());
                    s.lease = Some(lease.clone());
                    json_response(StatusCode::OK, &lease)
                }
                Method::DELETE => {
                    let Some(lease) = s.lease.clone() else {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            &format!("leases.coordination.k8s.io \"{name}\" not found"),
                        );
                    };
                    let want = body.as_ref().and_then(|b| {
                        b["preconditions"]["resourceVersion"]
                            .as_str()
                            .map(String::from)
                    });
                    if want.is_some_and(|w| w != s.version.to_string()) {
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            "Precondition failed: the object has been modified",
                        );
                    }
                    s.lease = None;
                    json_response(StatusCode::OK, &lease)
                }
                _ => unexpected(fake, method, path),
            }
        }
        _ => unexpected(fake, method, path),
    }
}

fn unexpected(fake: &Inner, method: &Method, path: &str) -> Response {
    lock(&fake.unexpected).push(format!("{method} {path}"));
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the fake API server does not serve {method} {path}"),
    )
}

/// The watch's answer after a status patch: a `MODIFIED` event for each
/// pod it selects, at the cluster's current version; then it ends and the
/// watcher resumes from that version.
fn pod_events(fake: &Inner, query: &BTreeMap<String, String>) -> Response {
    let ns = fake.cluster.namespace.as_str();
    let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let mut body = String::new();
    for pod in &fake.cluster.pods {
        if selector_matches(selector, &pod.labels).unwrap_or(false) {
            body.push_str(
                &json!({"type": "MODIFIED", "object": render(fake, pod, ns)}).to_string(),
            );
            body.push('\n');
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("watch response")
}

/// A watch from the listed version: nothing changes here, so the response is
/// withheld until the hold (or the request's `timeoutSeconds`) ends or the
/// server stops, then the watch ends without an event.
async fn held_watch(fake: &Inner, query: &BTreeMap<String, String>, pods: bool) -> Response {
    if query.get("resourceVersion").is_none_or(|v| v.is_empty()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the fake serves watches from a listed resourceVersion only",
        );
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(KubeFake::WATCH_HOLD, |t| {
            Duration::from_secs(t).min(KubeFake::WATCH_HOLD)
        });
    let from: u64 = query["resourceVersion"].parse().unwrap_or(0);
    let changed = fake.changed.notified();
    let now = fake.version.load(std::sync::atomic::Ordering::SeqCst);
    if pods && from < now {
        return pod_events(fake, query);
    }
    tokio::select! {
        _ = tokio::time::sleep(timeout) => {}
        _ = fake.stop.cancelled() => {}
        _ = changed, if pods => return pod_events(fake, query),
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::empty())
        .expect("watch response")
}
