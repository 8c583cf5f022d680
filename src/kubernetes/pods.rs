//! The pod watcher: one kube-rs reflector per target over the pods its label
//! selector matches, and one over the namespace's StatefulSets. Each reflector
//! keeps a store that [`PodObserver::snapshot`] reads (no list call per poll);
//! the event stream feeding it also keeps each pod's restart history, from
//! which "restarts in the last hour" is counted.
//!
//! Restarts in the last hour are restarts the watcher saw happen: an increase
//! of a pod's restart count is recorded at the time it is seen. A pod seen for
//! the first time contributes at most one restart, its last termination, if
//! that ended within the hour (a lower bound: Kubernetes keeps no history).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::KubernetesTarget;
use super::selector::LabelSelector;
use super::snapshot::{
    KubernetesSnapshot, TargetWatchStatus, pod_facts, statefulset_facts, time_ms,
};

/// The window of "restarts in the last hour".
pub const RESTART_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Restarts remembered per pod (a crash loop cannot grow memory without bound).
const MAX_REMEMBERED_RESTARTS: usize = 256;

/// Polls a stream once more. `WatchStreamExt` is implemented for every
/// `Stream`, so its bound gives access to `poll_next` without a direct
/// dependency on `futures`.
async fn next_item<S>(s: &mut Pin<&mut S>) -> Option<S::Item>
where
    S: WatchStreamExt + ?Sized,
{
    std::future::poll_fn(|cx| s.as_mut().poll_next(cx)).await
}

#[derive(Debug, Default, Clone)]
struct WatchStatus {
    synced: bool,
    error: Option<String>,
}

/// Restart times of one pod (by UID).
#[derive(Debug, Default)]
struct RestartHistory {
    last_count: u32,
    restarts: VecDeque<u64>,
}

impl RestartHistory {
    fn first_seen(count: u32, last_finished_ms: Option<u64>, now_ms: u64) -> Self {
        let mut h = RestartHistory {
            last_count: count,
            restarts: VecDeque::new(),
        };
        if let Some(t) = last_finished_ms.filter(|_| count > 0)
            && t + RESTART_WINDOW_MS > now_ms
        {
            h.restarts.push_back(t.min(now_ms));
        }
        h
    }

    fn observe(&mut self, count: u32, now_ms: u64) {
        if count > self.last_count {
            for _ in 0..(count - self.last_count).min(MAX_REMEMBERED_RESTARTS as u32) {
                self.restarts.push_back(now_ms);
            }
        }
        self.last_count = count;
        while self.restarts.len() > MAX_REMEMBERED_RESTARTS
            || self
                .restarts
                .front()
                .is_some_and(|&t| t + RESTART_WINDOW_MS <= now_ms)
        {
            self.restarts.pop_front();
        }
    }

    fn in_window(&self, now_ms: u64) -> u32 {
        self.restarts
            .iter()
            .filter(|&&t| t + RESTART_WINDOW_MS > now_ms && t <= now_ms)
            .count() as u32
    }
}

struct TargetWatch {
    name: String,
    selector: String,
    parsed: LabelSelector,
    store: Store<Pod>,
    status: Mutex<WatchStatus>,
    history: Mutex<HashMap<String, RestartHistory>>,
}

struct StatefulSetWatch {
    store: Store<StatefulSet>,
    status: Mutex<WatchStatus>,
}

struct Shared {
    namespace: String,
    targets: Vec<TargetWatch>,
    statefulsets: Option<StatefulSetWatch>,
    changes: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch_error(e: &watcher::Error) -> String {
    let forbidden = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_forbidden(),
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    };
    if forbidden {
        format!("forbidden (check the RBAC role): {e}")
    } else {
        e.to_string()
    }
}

fn restart_facts(pod: &Pod) -> (u32, Option<u64>) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    let count = statuses.iter().map(|c| c.restart_count.max(0) as u32).sum();
    let last = statuses
        .iter()
        .filter_map(|c| {
            c.last_state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
        })
        .filter_map(time_ms)
        .max();
    (count, last)
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn on_pod_event(&self, t: &TargetWatch, ev: watcher::Event<Pod>, now_ms: u64) {
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let (count, last_finished) = restart_facts(&pod);
                let mut h = lock(&t.history);
                match h.get_mut(&uid) {
                    Some(r) => r.observe(count, now_ms),
                    None => {
                        h.insert(
                            uid,
                            RestartHistory::first_seen(count, last_finished, now_ms),
                        );
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                lock(&t.history).remove(&uid);
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => {
                // The store now holds exactly the listed pods: forget the others.
                let live: HashSet<String> = t
                    .store
                    .state()
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                lock(&t.history).retain(|uid, _| live.contains(uid));
                lock(&t.status).synced = true;
            }
        }
        lock(&t.status).error = None;
    }
}

/// Watches the targets' pods (and the namespace's StatefulSets) until cancelled.
#[derive(Clone)]
pub struct PodObserver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PodObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodObserver")
            .field("namespace", &self.shared.namespace)
            .field("targets", &self.shared.targets.len())
            .finish()
    }
}

impl PodObserver {
    /// Starts one reflector per target (pods matching its selector in
    /// `namespace`) and, with `statefulsets`, one over the namespace's
    /// StatefulSets, on `tracker`, each stopping at `cancel`. Errors only on
    /// a label selector that does not parse; an unreachable API server is
    /// reported in the snapshots, never here.
    pub fn spawn(
        client: Client,
        namespace: &str,
        targets: &[KubernetesTarget],
        statefulsets: bool,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<PodObserver, String> {
        let mut watches = Vec::new();
        let mut writers = Vec::new();
        for t in targets {
            let parsed = LabelSelector::parse(&t.label_selector)
                .map_err(|e| format!("target {}: {e}", t.name))?;
            let (store, writer) = reflector::store();
            watches.push(TargetWatch {
                name: t.name.clone(),
                selector: t.label_selector.clone(),
                parsed,
                store,
                status: Mutex::default(),
                history: Mutex::default(),
            });
            writers.push(writer);
        }
        let (sts_watch, sts_writer) = if statefulsets {
            let (store, writer) = reflector::store();
            (
                Some(StatefulSetWatch {
                    store,
                    status: Mutex::default(),
                }),
                Some(writer),
            )
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            namespace: namespace.to_string(),
            targets: watches,
            statefulsets: sts_watch,
            changes: watch::Sender::new(0),
        });
        for (i, writer) in writers.into_iter().enumerate() {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let mut cfg = watcher::Config::default();
            if !shared.targets[i].selector.trim().is_empty() {
                cfg = cfg.labels(&shared.targets[i].selector);
            }
            let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
            let shared = shared.clone();
            let cancel = cancel.clone();
            let span = tracing::info_span!("kubernetes_pods", target = %shared.targets[i].name);
            tracker.spawn(tracing::Instrument::instrument(
                async move {
                    let mut stream = std::pin::pin!(stream);
                    loop {
                        let item = tokio::select! {
                            _ = cancel.cancelled() => break,
                            item = next_item(&mut stream) => item,
                        };
                        let t = &shared.targets[i];
                        match item {
                            None => break,
                            Some(Ok(ev)) => shared.on_pod_event(t, ev, super::now_ms()),
                            Some(Err(e)) => {
                                let msg = watch_error(&e);
                                tracing::warn!(error = %msg, "cannot watch the pods; retrying with backoff");
                                lock(&t.status).error = Some(msg);
                            }
                        }
                        shared.bump();
                    }
                },
                span,
            ));
        }
        if let Some(writer) = sts_writer {
            let api: Api<StatefulSet> = Api::namespaced(client, namespace);
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            let shared = shared.clone();
            tracker.spawn(tracing::Instrument::instrument(
                async move {
                    let mut stream = std::pin::pin!(stream);
                    loop {
                        let item = tokio::select! {
                            _ = cancel.cancelled() => break,
                            item = next_item(&mut stream) => item,
                        };
                        let Some(w) = &shared.statefulsets else { break };
                        match item {
                            None => break,
                            Some(Ok(ev)) => {
                                let mut s = lock(&w.status);
                                if matches!(ev, watcher::Event::InitDone) {
                                    s.synced = true;
                                }
                                s.error = None;
                            }
                            Some(Err(e)) => {
                                let msg = watch_error(&e);
                                tracing::warn!(error = %msg, "cannot watch the StatefulSets; retrying with backoff");
                                lock(&w.status).error = Some(msg);
                            }
                        }
                        shared.bump();
                    }
                },
                tracing::info_span!("kubernetes_statefulsets"),
            ));
        }
        Ok(PodObserver { shared })
    }

    /// A receiver that changes after every event or error the watchers handle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// What the reflectors hold now. Reads memory only; never waits on the API server.
    pub fn snapshot(&self, now_ms: u64) -> KubernetesSnapshot {
        let sh = &self.shared;
        let mut targets = Vec::new();
        let mut pods = Vec::new();
        let mut statefulsets = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let sts_state = sh
            .statefulsets
            .as_ref()
            .map(|w| w.store.state())
            .unwrap_or_default();
        for t in &sh.targets {
            let status = lock(&t.status).clone();
            if let Some(e) = &status.error {
                errors.push(format!("target {}: {e}", t.name));
            }
            targets.push(TargetWatchStatus {
                target: t.name.clone(),
                label_selector: t.selector.clone(),
                synced: status.synced,
                error: status.error,
            });
            let history = lock(&t.history);
            let mut mine: Vec<_> = t
                .store
                .state()
                .iter()
                .map(|p| {
                    let uid = p.metadata.uid.as_deref().unwrap_or_default();
                    let recent = history.get(uid).map(|h| h.in_window(now_ms)).unwrap_or(0);
                    pod_facts(&t.name, p, recent)
                })
                .collect();
            drop(history);
            mine.sort_by(|a, b| a.name.cmp(&b.name));
            let owners: HashSet<&str> = mine
                .iter()
                .filter_map(|p| p.statefulset.as_deref())
                .collect();
            let mut sts: Vec<_> = sts_state
                .iter()
                .filter(|s| {
                    let name = s.metadata.name.as_deref().unwrap_or_default();
                    let template_labels = s
                        .spec
                        .template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref());
                    owners.contains(name) || template_labels.is_some_and(|l| t.parsed.matches(l))
                })
                .map(|s| statefulset_facts(&t.name, s))
                .collect();
            sts.sort_by(|a, b| a.name.cmp(&b.name));
            pods.extend(mine);
            statefulsets.extend(sts);
        }
        let statefulsets_error = sh
            .statefulsets
            .as_ref()
            .and_then(|w| lock(&w.status).error.clone());
        // A StatefulSet watch refused by RBAC is reported on its own: it
        // does not make the pods' facts any less current.
        if sh.targets.is_empty()
            && let Some(e) = &statefulsets_error
        {
            errors.push(format!("statefulsets: {e}"));
        }
        KubernetesSnapshot {
            taken_at_ms: now_ms,
            namespace: sh.namespace.clone(),
            api_reachable: errors.is_empty(),
            error: errors.into_iter().next(),
            targets,
            pods,
            statefulsets_watched: sh.statefulsets.is_some(),
            statefulsets,
            statefulsets_error,
            volumes: Vec::new(),
            volumes_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_history_counts_what_it_saw_within_the_hour() {
        let t0 = 10 * RESTART_WINDOW_MS;
        // First sight: 5 restarts, the last one 10 minutes ago: counts one.
        let mut h = RestartHistory::first_seen(5, Some(t0 - 600_000), t0);
        assert_eq!(h.in_window(t0), 1);
        // Two more seen a minute later.
        h.observe(7, t0 + 60_000);
        assert_eq!(h.in_window(t0 + 60_000), 3);
        // No change: nothing added.
        h.observe(7, t0 + 120_000);
        assert_eq!(h.in_window(t0 + 120_000), 3);
        // 55 minutes later the first-sight restart has left the window.
        assert_eq!(h.in_window(t0 + 55 * 60_000), 2);
        // Two hours later nothing is left.
        h.observe(7, t0 + 2 * RESTART_WINDOW_MS);
        assert_eq!(h.in_window(t0 + 2 * RESTART_WINDOW_MS), 0);
        assert!(h.restarts.is_empty());
        // A last termination older than the hour is not counted at first sight.
        let old = RestartHistory::first_seen(3, Some(t0 - 2 * RESTART_WINDOW_MS), t0);
        assert_eq!(old.in_window(t0), 0);
        // Nor is one without restarts.
        let none = RestartHistory::first_seen(0, Some(t0), t0);
        assert_eq!(none.in_window(t0), 0);
    }

    #[test]
    fn restart_history_is_bounded() {
        let mut h = RestartHistory::first_seen(0, None, 0);
        h.observe(100_000, 1);
        assert!(h.restarts.len() <= MAX_REMEMBERED_RESTARTS);
    }
}
