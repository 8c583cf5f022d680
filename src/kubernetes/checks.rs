//! Pure checks over a [`KubernetesSnapshot`]: one result per target and
//! check (bounded labels), naming the offending pods in the message. Phase 2
//! maps them to the evaluation core's results; time is an argument.
//!
//! While a target's watch fails, its checks other than `api_reachable` are
//! `Unknown`: the facts are the last ones seen, not current ones.

use std::time::Duration;

use serde::Serialize;

use super::duration_ms;
use super::snapshot::KubernetesSnapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeCheckId {
    /// The target's pods can be listed and watched.
    ApiReachable,
    /// Every pod of the target is ready (and there is at least one).
    PodsReady,
    /// No container waits in CrashLoopBackOff.
    NoCrashLoop,
    /// No container was OOMKilled within the window.
    NoOomKilled,
    /// No pod restarted more than the threshold within the last hour.
    Restarts,
    /// Every StatefulSet has as many ready replicas as desired.
    StatefulSetReady,
    /// Every persistent volume keeps at least the minimum free ratio.
    VolumeFree,
}

impl KubeCheckId {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeCheckId::ApiReachable => "kubernetes_api_reachable",
            KubeCheckId::PodsReady => "kubernetes_pods_ready",
            KubeCheckId::NoCrashLoop => "kubernetes_no_crash_loop",
            KubeCheckId::NoOomKilled => "kubernetes_no_oom_killed",
            KubeCheckId::Restarts => "kubernetes_restarts",
            KubeCheckId::StatefulSetReady => "kubernetes_statefulset_ready",
            KubeCheckId::VolumeFree => "kubernetes_volume_free",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeCheckStatus {
    Pass,
    Fail,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeCheck {
    pub target: String,
    pub check: KubeCheckId,
    pub status: KubeCheckStatus,
    /// The measured value (ready pods, restarts, the lowest free ratio, ...).
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KubeThresholds {
    /// A pod restarting more often than this within the last hour fails.
    pub max_restarts_last_hour: u32,
    /// How far back an OOM kill fails the check.
    pub oom_window: Duration,
    /// The runbook's disk threshold: at least 30 % free.
    pub min_volume_free_ratio: f64,
}

impl Default for KubeThresholds {
    fn default() -> Self {
        KubeThresholds {
            max_restarts_last_hour: 3,
            oom_window: Duration::from_secs(3600),
            min_volume_free_ratio: 0.30,
        }
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Every check for every target of the snapshot.
pub fn pod_checks(
    snapshot: &KubernetesSnapshot,
    thresholds: &KubeThresholds,
    now_ms: u64,
) -> Vec<KubeCheck> {
    let mut out = Vec::new();
    for t in &snapshot.targets {
        let mk = |check, status, observed: Option<f64>, threshold: Option<f64>, message: String| {
            KubeCheck {
                target: t.target.clone(),
                check,
                status,
                observed,
                threshold,
                message,
            }
        };
        let unknown =
            |check, why: &str| mk(check, KubeCheckStatus::Unknown, None, None, why.to_string());
        match &t.error {
            Some(e) => out.push(mk(
                KubeCheckId::ApiReachable,
                KubeCheckStatus::Fail,
                None,
                None,
                format!("cannot watch the pods ({}): {e}", t.label_selector),
            )),
            None => out.push(mk(
                KubeCheckId::ApiReachable,
                KubeCheckStatus::Pass,
                None,
                None,
                "the pods are watched".into(),
            )),
        }
        let mut ids = vec![
            KubeCheckId::PodsReady,
            KubeCheckId::NoCrashLoop,
            KubeCheckId::NoOomKilled,
            KubeCheckId::Restarts,
        ];
        if snapshot.statefulsets_watched {
            ids.push(KubeCheckId::StatefulSetReady);
        }
        let why = if t.error.is_some() {
            Some("the API server cannot be watched: the facts are not current")
        } else if !t.synced {
            Some("the pods have not been listed yet")
        } else {
            None
        };
        if let Some(why) = why {
            out.extend(ids.into_iter().map(|id| unknown(id, why)));
            continue;
        }
        let pods: Vec<_> = snapshot
            .pods
            .iter()
            .filter(|p| p.target == t.target && p.phase != "Succeeded")
            .collect();

        let not_ready: Vec<String> = pods
            .iter()
            .filter(|p| !p.ready)
            .map(|p| p.name.clone())
            .collect();
        let ready = (pods.len() - not_ready.len()) as f64;
        out.push(if pods.is_empty() {
            mk(
                KubeCheckId::PodsReady,
                KubeCheckStatus::Fail,
                Some(0.0),
                None,
                format!("no pod matches {}", t.label_selector),
            )
        } else if not_ready.is_empty() {
            mk(
                KubeCheckId::PodsReady,
                KubeCheckStatus::Pass,
                Some(ready),
                Some(pods.len() as f64),
                format!("{} of {} pods ready", ready, pods.len()),
            )
        } else {
            mk(
                KubeCheckId::PodsReady,
                KubeCheckStatus::Fail,
                Some(ready),
                Some(pods.len() as f64),
                format!("not ready: {}", list(&not_ready)),
            )
        });

        let looping: Vec<String> = pods
            .iter()
            .filter(|p| {
                p.containers
                    .iter()
                    .any(|c| c.waiting_reason.as_deref() == Some("CrashLoopBackOff"))
                    || p.waiting_reason.as_deref() == Some("CrashLoopBackOff")
            })
            .map(|p| p.name.clone())
            .collect();
        out.push(mk(
            KubeCheckId::NoCrashLoop,
            if looping.is_empty() {
                KubeCheckStatus::Pass
            } else {
                KubeCheckStatus::Fail
            },
            Some(looping.len() as f64),
            Some(0.0),
            if looping.is_empty() {
                "no container in CrashLoopBackOff".into()
            } else {
                format!("CrashLoopBackOff: {}", list(&looping))
            },
        ));

        let window = duration_ms(thresholds.oom_window);
        let oom: Vec<String> = pods
            .iter()
            .filter(|p| {
                p.containers
                    .iter()
                    .filter_map(|c| c.last_termination.as_ref())
                    .any(|t| {
                        t.reason.as_deref() == Some("OOMKilled")
                        // Without a finish time it cannot be shown to be old.
                        && t.finished_at_ms.is_none_or(|f| now_ms.saturating_sub(f) < window)
                    })
            })
            .map(|p| p.name.clone())
            .collect();
        out.push(mk(
            KubeCheckId::NoOomKilled,
            if oom.is_empty() {
                KubeCheckStatus::Pass
            } else {
                KubeCheckStatus::Fail
            },
            Some(oom.len() as f64),
            Some(0.0),
            if oom.is_empty() {
                "no OOM kill in the window".into()
            } else {
                format!(
                    "OOMKilled within {}: {}",
                    humantime::format_duration(thresholds.oom_window),
                    list(&oom)
                )
            },
        ));

        let max = pods.iter().map(|p| p.restarts_last_hour).max().unwrap_or(0);
        let restarting: Vec<String> = pods
            .iter()
            .filter(|p| p.restarts_last_hour > thresholds.max_restarts_last_hour)
            .map(|p| format!("{} ({})", p.name, p.restarts_last_hour))
            .collect();
        out.push(mk(
            KubeCheckId::Restarts,
            if restarting.is_empty() {
                KubeCheckStatus::Pass
            } else {
                KubeCheckStatus::Fail
            },
            Some(f64::from(max)),
            Some(f64::from(thresholds.max_restarts_last_hour)),
            if restarting.is_empty() {
                format!("at most {max} restarts per pod in the last hour")
            } else {
                format!(
                    "restarted more than {} times in the last hour: {}",
                    thresholds.max_restarts_last_hour,
                    list(&restarting)
                )
            },
        ));

        if snapshot.statefulsets_watched {
            if let Some(e) = &snapshot.statefulsets_error {
                out.push(unknown(
                    KubeCheckId::StatefulSetReady,
                    &format!("cannot watch the StatefulSets: {e}"),
                ));
            } else {
                let sets: Vec<_> = snapshot
                    .statefulsets
                    .iter()
                    .filter(|s| s.target == t.target)
                    .collect();
                let short: Vec<String> = sets
                    .iter()
                    .filter(|s| s.ready_replicas < s.desired_replicas)
                    .map(|s| format!("{} ({}/{})", s.name, s.ready_replicas, s.desired_replicas))
                    .collect();
                let msg = if sets.is_empty() {
                    "no StatefulSet for this target".to_string()
                } else if short.is_empty() {
                    format!("{} StatefulSet(s) fully ready", sets.len())
                } else {
                    format!("ready below desired: {}", list(&short))
                };
                out.push(mk(
                    KubeCheckId::StatefulSetReady,
                    if short.is_empty() {
                        KubeCheckStatus::Pass
                    } else {
                        KubeCheckStatus::Fail
                    },
                    Some(short.len() as f64),
                    Some(0.0),
                    msg,
                ));
            }
        }

        let vols: Vec<_> = snapshot
            .volumes
            .iter()
            .filter(|v| v.target == t.target)
            .collect();
        if vols.is_empty() {
            if let Some(e) = &snapshot.volumes_error {
                out.push(unknown(
                    KubeCheckId::VolumeFree,
                    &format!("cannot read volume usage: {e}"),
                ));
            }
        } else {
            let lowest = vols
                .iter()
                .filter_map(|v| v.free_ratio())
                .fold(f64::INFINITY, f64::min);
            let low: Vec<String> = vols
                .iter()
                .filter(|v| {
                    v.free_ratio()
                        .is_some_and(|r| r < thresholds.min_volume_free_ratio)
                })
                .map(|v| {
                    format!(
                        "{} of {} ({:.0}% free)",
                        v.pvc,
                        v.pod,
                        v.free_ratio().unwrap_or(0.0) * 100.0
                    )
                })
                .collect();
            out.push(mk(
                KubeCheckId::VolumeFree,
                if low.is_empty() {
                    KubeCheckStatus::Pass
                } else {
                    KubeCheckStatus::Fail
                },
                lowest.is_finite().then_some(lowest),
                Some(thresholds.min_volume_free_ratio),
                if low.is_empty() {
                    format!("lowest free ratio {:.0}%", lowest * 100.0)
                } else {
                    format!(
                        "below {:.0}% free: {}",
                        thresholds.min_volume_free_ratio * 100.0,
                        list(&low)
                    )
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::snapshot::{
        ContainerFacts, PodFacts, StatefulSetFacts, TargetWatchStatus, Termination, VolumeUsage,
    };

    const NOW: u64 = 100 * 3_600_000;

    fn pod(name: &str, ready: bool) -> PodFacts {
        PodFacts {
            target: "pg".into(),
            namespace: "db".into(),
            name: name.into(),
            uid: name.into(),
            node: Some("n".into()),
            phase: "Running".into(),
            ready,
            not_ready_since_ms: (!ready).then_some(NOW - 1000),
            terminating: false,
            restart_count: 0,
            restarts_last_hour: 0,
            waiting_reason: None,
            last_termination: None,
            statefulset: Some("postgres".into()),
            pvcs: vec![],
            created_ms: Some(0),
            containers: vec![ContainerFacts {
                name: "postgres".into(),
                ready,
                restart_count: 0,
                waiting_reason: None,
                last_termination: None,
                memory_limit_bytes: None,
                cpu_limit_millicores: None,
            }],
            lag_ok: None,
            lag_gated: false,
        }
    }

    fn snap(pods: Vec<PodFacts>) -> KubernetesSnapshot {
        let mut s = KubernetesSnapshot::unreachable("db", String::new(), NOW);
        s.api_reachable = true;
        s.error = None;
        s.targets = vec![TargetWatchStatus {
            target: "pg".into(),
            label_selector: "app=postgres".into(),
            synced: true,
            error: None,
        }];
        s.pods = pods;
        s
    }

    fn status(checks: &[KubeCheck], id: KubeCheckId) -> KubeCheckStatus {
        checks
            .iter()
            .find(|c| c.check == id)
            .unwrap_or_else(|| panic!("{id:?} missing"))
            .status
    }

    #[test]
    fn healthy_pods_pass() {
        let mut s = snap(vec![pod("postgres-0", true), pod("postgres-1", true)]);
        s.statefulsets_watched = true;
        s.statefulsets = vec![StatefulSetFacts {
            target: "pg".into(),
            name: "postgres".into(),
            desired_replicas: 2,
            ready_replicas: 2,
            current_replicas: 2,
        }];
        s.volumes = vec![VolumeUsage {
            target: "pg".into(),
            pod: "postgres-0".into(),
            node: "n".into(),
            volume: "data".into(),
            pvc: "data-postgres-0".into(),
            capacity_bytes: 100,
            available_bytes: 40,
            used_bytes: 60,
        }];
        let c = pod_checks(&s, &KubeThresholds::default(), NOW);
        assert_eq!(c.len(), 7);
        assert!(
            c.iter().all(|c| c.status == KubeCheckStatus::Pass),
            "{c:#?}"
        );
        assert_eq!(
            c.iter()
                .find(|c| c.check == KubeCheckId::VolumeFree)
                .unwrap()
                .observed,
            Some(0.4)
        );
    }

    #[test]
    fn each_failure_is_reported() {
        let mut crashed = pod("postgres-0", false);
        crashed.waiting_reason = Some("CrashLoopBackOff".into());
        crashed.containers[0].waiting_reason = Some("CrashLoopBackOff".into());
        crashed.containers[0].last_termination = Some(Termination {
            reason: Some("OOMKilled".into()),
            exit_code: 137,
            finished_at_ms: Some(NOW - 600_000),
        });
        crashed.restarts_last_hour = 4;
        let mut s = snap(vec![crashed, pod("postgres-1", true)]);
        s.statefulsets_watched = true;
        s.statefulsets = vec![StatefulSetFacts {
            target: "pg".into(),
            name: "postgres".into(),
            desired_replicas: 2,
            ready_replicas: 1,
            current_replicas: 2,
        }];
        s.volumes = vec![VolumeUsage {
            target: "pg".into(),
            pod: "postgres-1".into(),
            node: "n".into(),
            volume: "data".into(),
            pvc: "data-postgres-1".into(),
            capacity_bytes: 100,
            available_bytes: 29,
            used_bytes: 71,
        }];
        let c = pod_checks(&s, &KubeThresholds::default(), NOW);
        for id in [
            KubeCheckId::PodsReady,
            KubeCheckId::NoCrashLoop,
            KubeCheckId::NoOomKilled,
            KubeCheckId::Restarts,
            KubeCheckId::StatefulSetReady,
            KubeCheckId::VolumeFree,
        ] {
            assert_eq!(status(&c, id), KubeCheckStatus::Fail, "{id:?}: {c:#?}");
        }
        assert_eq!(status(&c, KubeCheckId::ApiReachable), KubeCheckStatus::Pass);
        let ready = c
            .iter()
            .find(|c| c.check == KubeCheckId::PodsReady)
            .unwrap();
        assert!(ready.message.contains("postgres-0"));
        // An old OOM kill no longer fails; three restarts are within the threshold.
        let later = pod_checks(
            &s,
            &KubeThresholds {
                max_restarts_last_hour: 4,
                ..KubeThresholds::default()
            },
            NOW + 3_600_000,
        );
        assert_eq!(
            status(&later, KubeCheckId::NoOomKilled),
            KubeCheckStatus::Pass
        );
        assert_eq!(status(&later, KubeCheckId::Restarts), KubeCheckStatus::Pass);
    }

    #[test]
    fn unreachable_and_unsynced_are_unknown_not_failing() {
        let mut s = snap(vec![pod("postgres-0", false)]);
        s.targets[0].error = Some("connection refused".into());
        s.api_reachable = false;
        let c = pod_checks(&s, &KubeThresholds::default(), NOW);
        assert_eq!(status(&c, KubeCheckId::ApiReachable), KubeCheckStatus::Fail);
        assert_eq!(status(&c, KubeCheckId::PodsReady), KubeCheckStatus::Unknown);
        assert_eq!(
            status(&c, KubeCheckId::NoCrashLoop),
            KubeCheckStatus::Unknown
        );
        let mut s = snap(vec![]);
        s.targets[0].synced = false;
        let c = pod_checks(&s, &KubeThresholds::default(), NOW);
        assert_eq!(status(&c, KubeCheckId::PodsReady), KubeCheckStatus::Unknown);
        // Synced with no pods: the selector matches nothing.
        let c = pod_checks(&snap(vec![]), &KubeThresholds::default(), NOW);
        assert_eq!(status(&c, KubeCheckId::PodsReady), KubeCheckStatus::Fail);
    }
}
