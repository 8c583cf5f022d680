//! Plain data: what the watchers and the stats summary saw, ready for the pure
//! checks and the eviction selection. Times are milliseconds since the Unix epoch.

#[cfg(feature = "kubernetes")]
use std::collections::BTreeMap;

#[cfg(feature = "kubernetes")]
use k8s_openapi::api::apps::v1::StatefulSet;
#[cfg(feature = "kubernetes")]
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
#[cfg(feature = "kubernetes")]
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
#[cfg(feature = "kubernetes")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// How a container last ended (`lastState.terminated`, or `state.terminated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// `OOMKilled`, `Error`, `Completed`, ...
    pub reason: Option<String>,
    pub exit_code: i32,
    pub finished_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerFacts {
    pub name: String,
    pub ready: bool,
    pub restart_count: u32,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `ContainerCreating`, ...
    pub waiting_reason: Option<String>,
    pub last_termination: Option<Termination>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit_millicores: Option<u64>,
}

/// One pod of a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodFacts {
    pub target: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// When the pod last became not ready (the `Ready` condition's last
    /// transition; its creation time when it never was ready). `None` while ready.
    pub not_ready_since_ms: Option<u64>,
    /// A deletion timestamp is set: the pod is on its way out.
    pub terminating: bool,
    /// Sum over the containers.
    pub restart_count: u32,
    /// Restarts the watcher saw happen in the last hour (see `pods`).
    pub restarts_last_hour: u32,
    /// The first container's waiting reason, if any container waits.
    pub waiting_reason: Option<String>,
    /// The most recent termination among the containers.
    pub last_termination: Option<Termination>,
    /// The StatefulSet owning the pod (from its owner references).
    pub statefulset: Option<String>,
    /// The persistent volume claims the pod mounts.
    pub pvcs: Vec<String>,
    pub created_ms: Option<u64>,
    pub containers: Vec<ContainerFacts>,
    /// The readiness gate condition dbwarden owns
    /// (`dbwarden.io/replication-lag-ok`, see `lag_routing`): `None` when
    /// the pod does not carry it.
    #[serde(default)]
    pub lag_ok: Option<bool>,
    /// The pod declares that condition under `spec.readinessGates`: only
    /// then does setting it take the pod out of its Services' endpoints.
    #[serde(default)]
    pub lag_gated: bool,
}

impl PodFacts {
    /// Not ready only because dbwarden's lag routing holds it out: every
    /// container is ready and the gate condition is `False`. The eviction
    /// policy leaves such a pod alone (it is not broken).
    pub fn held_out_for_lag(&self) -> bool {
        self.lag_ok == Some(false) && self.containers.iter().all(|c| c.ready)
    }
}

/// One StatefulSet tied to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatefulSetFacts {
    pub target: String,
    pub name: String,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub current_replicas: i32,
}

/// A pod's persistent volume, from the kubelet stats summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeUsage {
    pub target: String,
    pub pod: String,
    pub node: String,
    /// The volume's name in the pod spec.
    pub volume: String,
    pub pvc: String,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

impl VolumeUsage {
    /// Available over capacity, as statvfs's free ratio (`None` without a capacity).
    pub fn free_ratio(&self) -> Option<f64> {
        (self.capacity_bytes > 0).then(|| self.available_bytes as f64 / self.capacity_bytes as f64)
    }
}

/// The watch state of one target's pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetWatchStatus {
    pub target: String,
    pub label_selector: String,
    /// The initial list completed at least once: the pods below are complete.
    pub synced: bool,
    /// The last list/watch error, cleared by the next successful event.
    pub error: Option<String>,
}

/// Everything Kubernetes says about the targets, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubernetesSnapshot {
    pub taken_at_ms: u64,
    pub namespace: String,
    /// False when any watch currently fails to reach the API server (or is
    /// refused by it); the facts below are then the last ones seen.
    pub api_reachable: bool,
    /// The first current error, for humans.
    pub error: Option<String>,
    pub targets: Vec<TargetWatchStatus>,
    pub pods: Vec<PodFacts>,
    /// Whether StatefulSets are watched at all.
    pub statefulsets_watched: bool,
    pub statefulsets: Vec<StatefulSetFacts>,
    pub statefulsets_error: Option<String>,
    pub volumes: Vec<VolumeUsage>,
    pub volumes_error: Option<String>,
}

impl KubernetesSnapshot {
    /// A snapshot that says only that the API server could not be reached.
    pub fn unreachable(namespace: &str, error: String, now_ms: u64) -> Self {
        KubernetesSnapshot {
            taken_at_ms: now_ms,
            namespace: namespace.to_string(),
            api_reachable: false,
            error: Some(error),
            targets: Vec::new(),
            pods: Vec::new(),
            statefulsets_watched: false,
            statefulsets: Vec::new(),
            statefulsets_error: None,
            volumes: Vec::new(),
            volumes_error: None,
        }
    }
}

#[cfg(feature = "kubernetes")]
pub(crate) fn time_ms(t: &Time) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}

/// Parses a Kubernetes quantity (`512Mi`, `1G`, `250m`, `1.5`, `2e3`) into base units.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    if let Some(num) = q.strip_suffix('E') {
        return num.parse::<f64>().ok().map(|n| n * 1e18);
    }
    q.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(feature = "kubernetes")]
fn limit(limits: Option<&BTreeMap<String, Quantity>>, key: &str) -> Option<f64> {
    limits
        .and_then(|l| l.get(key))
        .and_then(|q| parse_quantity(&q.0))
}

#[cfg(feature = "kubernetes")]
fn termination_of(cs: &ContainerStatus) -> Option<Termination> {
    let from = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| Termination {
        reason: t.reason.clone(),
        exit_code: t.exit_code,
        finished_at_ms: t.finished_at.as_ref().and_then(time_ms),
    };
    // A container that is terminated right now says more than its last state.
    cs.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(from)
        .or_else(|| {
            cs.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(from)
        })
}

/// The facts of one pod. Pure; `restarts_last_hour` comes from the watcher's history.
#[cfg(feature = "kubernetes")]
pub fn pod_facts(target: &str, pod: &Pod, restarts_last_hour: u32) -> PodFacts {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let ready_cond = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_cond.is_some_and(|c| c.status == "True");
    let lag_ok = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == super::lag_routing::CONDITION_TYPE)
        })
        .map(|c| c.status == "True");
    let lag_gated = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| {
            g.iter()
                .any(|g| g.condition_type == super::lag_routing::CONDITION_TYPE)
        });
    let created_ms = meta.creation_timestamp.as_ref().and_then(time_ms);
    let not_ready_since_ms = if ready {
        None
    } else {
        ready_cond
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(time_ms)
            .or(created_ms)
    };
    let statuses: &[ContainerStatus] = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    let spec_containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let containers: Vec<ContainerFacts> = spec_containers
        .iter()
        .map(|c| {
            let st = statuses.iter().find(|s| s.name == c.name);
            let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            ContainerFacts {
                name: c.name.clone(),
                ready: st.is_some_and(|s| s.ready),
                restart_count: st.map(|s| s.restart_count.max(0) as u32).unwrap_or(0),
                waiting_reason: st
                    .and_then(|s| s.state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone()),
                last_termination: st.and_then(termination_of),
                memory_limit_bytes: limit(limits, "memory").map(|b| b.round() as u64),
                cpu_limit_millicores: limit(limits, "cpu").map(|c| (c * 1000.0).round() as u64),
            }
        })
        .collect();
    let last_termination = containers
        .iter()
        .filter_map(|c| c.last_termination.clone())
        .max_by_key(|t| t.finished_at_ms.unwrap_or(0));
    PodFacts {
        target: target.to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()),
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into()),
        ready,
        not_ready_since_ms,
        terminating: meta.deletion_timestamp.is_some(),
        restart_count: containers.iter().map(|c| c.restart_count).sum(),
        restarts_last_hour,
        waiting_reason: containers.iter().find_map(|c| c.waiting_reason.clone()),
        last_termination,
        statefulset: meta
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.kind == "StatefulSet"))
            .map(|r| r.name.clone()),
        pvcs: spec
            .and_then(|s| s.volumes.as_ref())
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.persistent_volume_claim.as_ref())
                    .map(|p| p.claim_name.clone())
                    .collect()
            })
            .unwrap_or_default(),
        lag_ok,
        lag_gated,
        created_ms,
        containers,
    }
}

/// The facts of one StatefulSet. Pure.
#[cfg(feature = "kubernetes")]
pub fn statefulset_facts(target: &str, sts: &StatefulSet) -> StatefulSetFacts {
    let status = sts.status.as_ref();
    StatefulSetFacts {
        target: target.to_string(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        // The API defaults `spec.replicas` to 1.
        desired_replicas: sts.spec.replicas.unwrap_or(1),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        current_replicas: status.and_then(|s| s.current_replicas).unwrap_or(0),
    }
}

#[cfg(all(test, feature = "kubernetes"))]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("1Ei"), Some(1024f64.powi(6)));
        assert_eq!(parse_quantity("lots"), None);
    }

    #[test]
    fn facts_of_a_crash_looping_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "postgres-0", "namespace": "db", "uid": "u1",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "postgres", "uid": "s1"}]
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "postgres", "resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-postgres-0"}}]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2024-01-01T01:00:00Z"}],
                "containerStatuses": [{
                    "name": "postgres", "ready": false, "restartCount": 4, "image": "pg", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2024-01-01T01:00:05Z"}}
                }]
            }
        }))
        .unwrap();
        let f = pod_facts("pg", &pod, 2);
        assert_eq!(f.name, "postgres-0");
        assert!(!f.ready);
        assert_eq!(f.not_ready_since_ms, Some(1_704_070_800_000));
        assert_eq!(f.restart_count, 4);
        assert_eq!(f.restarts_last_hour, 2);
        assert_eq!(f.waiting_reason.as_deref(), Some("CrashLoopBackOff"));
        let t = f.last_termination.unwrap();
        assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(t.exit_code, 137);
        assert_eq!(t.finished_at_ms, Some(1_704_070_805_000));
        assert_eq!(f.statefulset.as_deref(), Some("postgres"));
        assert_eq!(f.pvcs, vec!["data-postgres-0".to_string()]);
        assert_eq!(f.containers[0].memory_limit_bytes, Some(1 << 30));
        assert_eq!(f.containers[0].cpu_limit_millicores, Some(500));
        assert_eq!(f.node.as_deref(), Some("node-a"));
    }
}
