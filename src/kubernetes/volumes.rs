//! Volume usage of the targets' persistent volumes, from the kubelet stats
//! summary read through the API server's node proxy
//! (`GET /api/v1/nodes/{node}/proxy/stats/summary`; RBAC: `nodes/proxy` get).
//! The free ratio (available over capacity) feeds the same disk-free check
//! as the statvfs paths.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::Client;
use serde::Deserialize;

use super::KubeError;
use super::snapshot::{KubernetesSnapshot, PodFacts, VolumeUsage};

#[derive(Debug, Deserialize)]
struct Summary {
    #[serde(default)]
    pods: Vec<PodStats>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStats {
    pod_ref: PodRef,
    #[serde(default)]
    volume: Vec<VolumeStats>,
}

#[derive(Debug, Deserialize)]
struct PodRef {
    name: String,
    namespace: String,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeStats {
    name: String,
    pvc_ref: Option<PvcRef>,
    capacity_bytes: Option<u64>,
    available_bytes: Option<u64>,
    used_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PvcRef {
    name: String,
}

/// The persistent volumes of `pods` in one node's stats summary. Volumes
/// without a claim (emptyDir, projected, ...) and other pods are left out; a
/// volume the kubelet reports without a capacity is left out too.
pub fn parse_summary(
    json: &str,
    node: &str,
    pods: &[PodFacts],
) -> Result<Vec<VolumeUsage>, String> {
    let summary: Summary =
        serde_json::from_str(json).map_err(|e| format!("stats summary of {node}: {e}"))?;
    let mut out = Vec::new();
    for ps in summary.pods {
        let Some(pod) = pods.iter().find(|p| {
            p.name == ps.pod_ref.name
                && p.namespace == ps.pod_ref.namespace
                && ps.pod_ref.uid.as_deref().is_none_or(|u| u == p.uid)
        }) else {
            continue;
        };
        for v in ps.volume {
            let (Some(pvc), Some(capacity)) = (v.pvc_ref, v.capacity_bytes) else {
                continue;
            };
            out.push(VolumeUsage {
                target: pod.target.clone(),
                pod: pod.name.clone(),
                node: node.to_string(),
                volume: v.name,
                pvc: pvc.name,
                capacity_bytes: capacity,
                available_bytes: v.available_bytes.unwrap_or(0),
                used_bytes: v.used_bytes.unwrap_or(0),
            });
        }
    }
    out.sort_by(|a, b| (&a.target, &a.pod, &a.pvc).cmp(&(&b.target, &b.pod, &b.pvc)));
    Ok(out)
}

/// One node's stats summary, as text.
pub async fn fetch_summary(client: &Client, node: &str) -> Result<String, KubeError> {
    if node.is_empty() || node.contains(['/', '?', '#', '%']) {
        return Err(KubeError::Decode(format!("not a node name: {node:?}")));
    }
    let req = axum::http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
        .body(Vec::new())
        .map_err(|e| KubeError::Decode(e.to_string()))?;
    Ok(client.request_text(req).await?)
}

/// The volumes of the snapshot's pods, one summary per node (each bounded by
/// `per_node`), and the first error if any node could not be read. Phase 2
/// stores both in the snapshot (`volumes`, `volumes_error`).
pub async fn collect_volumes(
    client: &Client,
    snapshot: &KubernetesSnapshot,
    per_node: Duration,
) -> (Vec<VolumeUsage>, Option<String>) {
    let nodes: BTreeSet<&str> = snapshot
        .pods
        .iter()
        .filter(|p| !p.pvcs.is_empty())
        .filter_map(|p| p.node.as_deref())
        .collect();
    let mut volumes = Vec::new();
    let mut error = None;
    for node in nodes {
        let text = match tokio::time::timeout(per_node, fetch_summary(client, node)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                error.get_or_insert(format!("node {node}: {e}"));
                continue;
            }
            Err(_) => {
                error.get_or_insert(format!(
                    "node {node}: no stats summary within {}",
                    humantime::format_duration(per_node)
                ));
                continue;
            }
        };
        match parse_summary(&text, node, &snapshot.pods) {
            Ok(v) => volumes.extend(v),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    (volumes, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_claims_to_pods_and_skips_the_rest() {
        let pods: Vec<PodFacts> = ["postgres-0", "postgres-1"]
            .iter()
            .map(|n| {
                let pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": n, "namespace": "db", "uid": format!("uid-{n}")},
                    "spec": {"containers": []}
                }))
                .unwrap();
                super::super::snapshot::pod_facts("pg", &pod, 0)
            })
            .collect();
        let json = serde_json::json!({
            "node": {"nodeName": "node-a"},
            "pods": [
                {"podRef": {"name": "postgres-0", "namespace": "db", "uid": "uid-postgres-0"},
                 "volume": [
                    {"name": "data", "pvcRef": {"name": "data-postgres-0", "namespace": "db"},
                     "capacityBytes": 100, "availableBytes": 25, "usedBytes": 75},
                    {"name": "kube-api-access", "capacityBytes": 10, "availableBytes": 10, "usedBytes": 0}
                 ]},
                {"podRef": {"name": "postgres-1", "namespace": "db", "uid": "an-older-pod"},
                 "volume": [{"name": "data", "pvcRef": {"name": "data-postgres-1"}, "capacityBytes": 100, "availableBytes": 90}]},
                {"podRef": {"name": "web-0", "namespace": "db"},
                 "volume": [{"name": "data", "pvcRef": {"name": "x"}, "capacityBytes": 1, "availableBytes": 0}]},
                {"podRef": {"name": "postgres-0", "namespace": "other"}}
            ]
        })
        .to_string();
        let v = parse_summary(&json, "node-a", &pods).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].pod.as_str(), v[0].pvc.as_str()),
            ("postgres-0", "data-postgres-0")
        );
        assert_eq!(
            (v[0].capacity_bytes, v[0].available_bytes, v[0].used_bytes),
            (100, 25, 75)
        );
        assert_eq!(v[0].free_ratio(), Some(0.25));
        assert_eq!(v[0].target, "pg");
        assert!(parse_summary("not json", "node-a", &pods).is_err());
    }
}
