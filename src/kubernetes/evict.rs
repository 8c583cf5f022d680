//! The opt-in eviction policy: the runbook's pod-crash recovery ("delete the
//! pod and wait for it to come back"), made safe.
//!
//! - [`select`] is pure: given a snapshot, the policy, the recent evictions
//!   and the time, it returns the pods to evict, each with a human reason.
//!   A pod qualifies when it has been not ready for at least
//!   `not_ready_for`; at most one pod per StatefulSet is chosen, and none
//!   while another pod of that StatefulSet is down without qualifying (it
//!   may be recovering), is terminating, or was evicted within `cooldown`.
//! - [`execute`] re-checks the pod (same UID, still not ready, not
//!   terminating) and creates a `pods/eviction`, which the API server refuses
//!   (429) when a PodDisruptionBudget would be violated: unlike a delete, an
//!   eviction respects the PDB.
//! - With `rebuild_after` set, [`select_with`] also takes a PostgreSQL standby
//!   whose replay has stalled (see [`super::rebuild`]: replay not moving
//!   while its primary advances, for at least `rebuild_after`): evicted so
//!   that it is rebuilt. Never a primary's pod, never a target whose
//!   selector matches more than its one pod, and never while another member
//!   of its StatefulSet is not ready (the pods dbwarden watches, and the
//!   StatefulSet's ready count when it is watched). Its re-check at the
//!   moment of acting confirms the stall on the freshest published polls.
//! - [`EvictionRunner`] applies the bounds, in this order: pause switch →
//!   mode → actor (the Lease) → budget → audit intent → re-check → evict →
//!   audit outcome, with pacing between evictions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
#[cfg(feature = "kubernetes")]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

#[cfg(feature = "kubernetes")]
use k8s_openapi::api::core::v1::Pod;
#[cfg(feature = "kubernetes")]
use kube::api::PostParams;
#[cfg(feature = "kubernetes")]
use kube::{Api, Client};
use serde::Serialize;
#[cfg(feature = "kubernetes")]
use tokio_util::sync::CancellationToken;

use super::duration_ms;
use super::rebuild::{ReplayStall, ReplayTracker, WalReading};
use super::snapshot::{KubernetesSnapshot, PodFacts};
use crate::remediate::audit::{AuditPod, AuditRecord, AuditReplayStall, Decision, Mode};
use crate::remediate::budget::Budget;

/// The eviction policy, `[kubernetes.eviction]`. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvictionPolicy {
    /// Always `kubernetes_eviction` (set at load).
    #[serde(skip)]
    pub name: String,
    /// The targets it applies to; empty: every target.
    pub targets: Vec<String>,
    /// How long a pod must have been not ready before it is evicted.
    #[serde(with = "crate::settings::duration")]
    pub not_ready_for: Duration,
    /// After an eviction (or a PDB refusal), how long its StatefulSet (or the
    /// lone pod) is left alone to recover.
    #[serde(with = "crate::settings::duration")]
    pub cooldown: Duration,
    /// The opt-in second reason: a PostgreSQL standby whose replay has not
    /// moved for this long while its primary advanced is evicted, to be
    /// rebuilt. `None` (the default): off.
    #[serde(
        default,
        with = "crate::settings::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub rebuild_after: Option<Duration>,
}

/// The rebuild reason's policy name in audit records and metrics.
pub const REBUILD_POLICY_NAME: &str = "kubernetes_rebuild";

impl Default for EvictionPolicy {
    fn default() -> Self {
        EvictionPolicy {
            name: super::settings::EVICTION_POLICY_NAME.to_string(),
            targets: Vec::new(),
            not_ready_for: Duration::from_secs(600),
            cooldown: Duration::from_secs(900),
            rebuild_after: None,
        }
    }
}

impl EvictionPolicy {
    pub fn applies_to(&self, target: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == target)
    }
}

/// A pod chosen for eviction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvictionCandidate {
    pub policy: String,
    pub target: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub statefulset: Option<String>,
    pub node: Option<String>,
    pub not_ready_since_ms: u64,
    pub not_ready_for_ms: u64,
    /// Why, for humans and the audit trail.
    pub reason: String,
    /// The rebuild reason: the figures of the stalled replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<ReplayStall>,
}

impl EvictionCandidate {
    /// The audit record of a decision about this pod (action `evict`).
    pub fn audit_record(
        &self,
        now: std::time::SystemTime,
        action_id: &str,
        instance: &str,
        mode: Mode,
        decision: Decision,
        outcome: impl Into<String>,
    ) -> AuditRecord {
        let c = self;
        AuditRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            time_ms: now
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            action_id: action_id.to_string(),
            instance: instance.to_string(),
            target: c.target.clone(),
            policy: c.policy.clone(),
            mode,
            action: "evict".to_string(),
            decision,
            reason: c.reason.clone(),
            outcome: outcome.into(),
            session: None,
            transaction: None,
            index: None,
            pod: Some(AuditPod {
                namespace: c.namespace.clone(),
                name: c.pod.clone(),
                uid: c.uid.clone(),
                statefulset: c.statefulset.clone(),
                node: c.node.clone(),
                not_ready_since_ms: c.not_ready_since_ms,
                not_ready_for_ms: c.not_ready_for_ms,
                condition: None,
                replay_stall: c.stall.as_ref().map(|s| AuditReplayStall {
                    replay_lsn: super::rebuild::fmt_lsn(s.replay_lsn),
                    unchanged_since_ms: s.since_ms,
                    stalled_for_ms: s.stalled_for_ms,
                    upstream: s.upstream.clone(),
                    upstream_lsn_then: super::rebuild::fmt_lsn(s.upstream_lsn_then),
                    upstream_lsn_now: super::rebuild::fmt_lsn(s.upstream_lsn_now),
                    advanced_bytes: s.advanced_bytes,
                    lag_bytes: s.lag_bytes,
                    lag_seconds: s.lag_seconds,
                }),
            }),
        }
    }
}

impl EvictionCandidate {
    /// The unit "one at a time" counts in: the StatefulSet, or the lone pod.
    pub fn group(&self) -> String {
        group_key(&self.namespace, self.statefulset.as_deref(), &self.pod)
    }
}

fn group_key(namespace: &str, statefulset: Option<&str>, pod: &str) -> String {
    match statefulset {
        Some(s) => format!("{namespace}/statefulset/{s}"),
        None => format!("{namespace}/pod/{pod}"),
    }
}

fn group_of(p: &PodFacts) -> String {
    group_key(&p.namespace, p.statefulset.as_deref(), &p.name)
}

/// When each group (StatefulSet or lone pod) was last acted on, in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentEvictions(HashMap<String, u64>);

impl RecentEvictions {
    pub fn record(&mut self, group: String, at_ms: u64) {
        let e = self.0.entry(group).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }

    /// Whether `group` was acted on less than `cooldown_ms` before `now_ms`.
    pub fn cooling(&self, group: &str, cooldown_ms: u64, now_ms: u64) -> bool {
        self.0
            .get(group)
            .is_some_and(|&t| t.saturating_add(cooldown_ms) > now_ms)
    }

    /// Forgets what is past any cooldown.
    pub fn expire(&mut self, cooldown_ms: u64, now_ms: u64) {
        self.0.retain(|_, t| t.saturating_add(cooldown_ms) > now_ms);
    }
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// What the targets' polls say, for the rebuild reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayFacts {
    /// The standbys stalled for at least `rebuild_after`, by target.
    pub stalls: BTreeMap<String, ReplayStall>,
    /// The targets whose latest successful poll found a primary: their
    /// pods are never rebuilt.
    pub primaries: BTreeSet<String>,
}

impl ReplayFacts {
    /// The facts as of the targets' latest `readings`, folded into `tracker`.
    pub fn observe(
        tracker: &mut ReplayTracker,
        readings: &BTreeMap<String, WalReading>,
        rebuild_after: Duration,
    ) -> ReplayFacts {
        tracker.observe(readings);
        ReplayFacts {
            stalls: tracker.stalls(duration_ms(rebuild_after)),
            primaries: readings
                .iter()
                .filter(|(_, r)| !r.in_recovery)
                .map(|(t, _)| t.clone())
                .collect(),
        }
    }
}

/// The pods to evict now for being not ready, at most `max`, those not
/// ready the longest first: [`select_with`] without the rebuild reason.
pub fn select(
    policy: &EvictionPolicy,
    snapshot: &KubernetesSnapshot,
    recent: &RecentEvictions,
    now_ms: u64,
    max: usize,
) -> Vec<EvictionCandidate> {
    let mut out = select_not_ready(policy, snapshot, recent, now_ms);
    out.truncate(max);
    out
}

/// The pods to evict now, at most `max` and at most one per StatefulSet (or
/// lone pod): those not ready, the longest first, then (with
/// `rebuild_after`) the stalled standbys, the longest stalled first. Pure.
/// Nothing is selected from a snapshot taken while the API server was
/// unreachable, or from a target whose pods are not fully listed yet.
pub fn select_with(
    policy: &EvictionPolicy,
    snapshot: &KubernetesSnapshot,
    replay: &ReplayFacts,
    recent: &RecentEvictions,
    now_ms: u64,
    max: usize,
) -> Vec<EvictionCandidate> {
    let mut out = select_not_ready(policy, snapshot, recent, now_ms);
    let taken: BTreeSet<String> = out.iter().map(EvictionCandidate::group).collect();
    out.extend(
        select_rebuilds(policy, snapshot, replay, recent, now_ms)
            .into_iter()
            .filter(|c| !taken.contains(&c.group())),
    );
    out.truncate(max);
    out
}

/// The stalled standbys to rebuild (evict), one per StatefulSet, the
/// longest stalled first. Pure.
pub fn select_rebuilds(
    policy: &EvictionPolicy,
    snapshot: &KubernetesSnapshot,
    replay: &ReplayFacts,
    recent: &RecentEvictions,
    now_ms: u64,
) -> Vec<EvictionCandidate> {
    let Some(after) = policy.rebuild_after else {
        return Vec::new();
    };
    if !snapshot.api_reachable {
        return Vec::new();
    }
    let cooldown = duration_ms(policy.cooldown);
    let synced = |target: &str| {
        snapshot
            .targets
            .iter()
            .any(|t| t.target == target && t.synced && t.error.is_none())
    };
    // A pod that is a primary target's, under whatever target it also shows.
    let primary_pods: BTreeSet<&str> = snapshot
        .pods
        .iter()
        .filter(|p| replay.primaries.contains(&p.target))
        .map(|p| p.uid.as_str())
        .collect();
    let mut out: Vec<EvictionCandidate> = Vec::new();
    for (target, stall) in &replay.stalls {
        if !policy.applies_to(target) || !synced(target) || replay.primaries.contains(target) {
            continue;
        }
        // The target's one pod: with more, which one is the standby is unknown.
        let pods: Vec<&PodFacts> = snapshot
            .pods
            .iter()
            .filter(|p| &p.target == target)
            .collect();
        let [p] = pods.as_slice() else {
            continue;
        };
        if p.terminating
            || p.uid.is_empty()
            || p.node.is_none()
            || primary_pods.contains(p.uid.as_str())
        {
            continue;
        }
        let group = group_of(p);
        if recent.cooling(&group, cooldown, now_ms) {
            continue;
        }
        // Never while another member of the set is not ready or leaving.
        if snapshot
            .pods
            .iter()
            .any(|o| o.uid != p.uid && group_of(o) == group && (!o.ready || o.terminating))
        {
            continue;
        }
        if let Some(sts) = &p.statefulset
            && let Some(f) = snapshot
                .statefulsets
                .iter()
                .find(|f| &f.name == sts && f.target == p.target)
            && f.ready_replicas - i32::from(p.ready) < f.desired_replicas - 1
        {
            continue;
        }
        out.push(EvictionCandidate {
            policy: REBUILD_POLICY_NAME.to_string(),
            target: p.target.clone(),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            uid: p.uid.clone(),
            statefulset: p.statefulset.clone(),
            node: p.node.clone(),
            not_ready_since_ms: p.not_ready_since_ms.unwrap_or(0),
            not_ready_for_ms: p.not_ready_since_ms.map_or(0, |t| now_ms.saturating_sub(t)),
            reason: format!(
                "standby replay stalled for at least {} (policy {}: rebuild_after): {}",
                fmt_ms(duration_ms(after)),
                REBUILD_POLICY_NAME,
                stall.describe()
            ),
            stall: Some(stall.clone()),
        });
    }
    out.sort_by(|a, b| {
        let since = |c: &EvictionCandidate| c.stall.as_ref().map_or(u64::MAX, |s| s.since_ms);
        since(a).cmp(&since(b)).then(a.pod.cmp(&b.pod))
    });
    let mut groups = BTreeSet::new();
    out.retain(|c| groups.insert(c.group()));
    out
}

/// The not-ready reason, every group's candidate, the longest down first.
fn select_not_ready(
    policy: &EvictionPolicy,
    snapshot: &KubernetesSnapshot,
    recent: &RecentEvictions,
    now_ms: u64,
) -> Vec<EvictionCandidate> {
    if !snapshot.api_reachable {
        return Vec::new();
    }
    let threshold = duration_ms(policy.not_ready_for);
    let cooldown = duration_ms(policy.cooldown);
    let synced = |target: &str| {
        snapshot
            .targets
            .iter()
            .any(|t| t.target == target && t.synced && t.error.is_none())
    };
    let mut groups: BTreeMap<String, Vec<&PodFacts>> = BTreeMap::new();
    for p in &snapshot.pods {
        if policy.applies_to(&p.target) && synced(&p.target) {
            groups.entry(group_of(p)).or_default().push(p);
        }
    }
    let qualifies = |p: &PodFacts| {
        !p.ready
            && !p.terminating
            // Held out of its Service for lag (`lag_routing`), not broken.
            && !p.held_out_for_lag()
            && p.phase != "Succeeded"
            // An unscheduled pod is not helped by an eviction.
            && p.node.is_some()
            && !p.uid.is_empty()
            && p.not_ready_since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= threshold && t <= now_ms)
    };
    let mut out = Vec::new();
    for (group, pods) in groups {
        if recent.cooling(&group, cooldown, now_ms) {
            continue;
        }
        // Another pod of the set is down without qualifying (it may be
        // recovering, e.g. from the last eviction), or one is on its way out.
        if pods
            .iter()
            .any(|p| p.terminating || (!p.ready && !qualifies(p)))
        {
            continue;
        }
        let Some(p) = pods.iter().filter(|p| qualifies(p)).min_by(|a, b| {
            a.not_ready_since_ms
                .cmp(&b.not_ready_since_ms)
                .then(a.name.cmp(&b.name))
        }) else {
            continue;
        };
        let since = p.not_ready_since_ms.unwrap_or(now_ms);
        let down = now_ms.saturating_sub(since);
        let mut reason = format!(
            "not ready for {} (policy {}: at least {})",
            fmt_ms(down),
            policy.name,
            fmt_ms(threshold)
        );
        if let Some(w) = &p.waiting_reason {
            reason.push_str(&format!("; waiting: {w}"));
        }
        if let Some(t) = &p.last_termination {
            reason.push_str(&format!(
                "; last termination: {} (exit code {})",
                t.reason.as_deref().unwrap_or("unknown"),
                t.exit_code
            ));
        }
        out.push(EvictionCandidate {
            policy: policy.name.clone(),
            target: p.target.clone(),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            uid: p.uid.clone(),
            statefulset: p.statefulset.clone(),
            node: p.node.clone(),
            not_ready_since_ms: since,
            not_ready_for_ms: down,
            reason,
            stall: None,
        });
    }
    out.sort_by(|a, b| {
        a.not_ready_since_ms
            .cmp(&b.not_ready_since_ms)
            .then(a.pod.cmp(&b.pod))
    });
    out
}

/// What came of one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum EvictionOutcome {
    /// Dry-run: this pod would have been evicted.
    WouldEvict,
    /// The API server accepted the eviction (200/201).
    Evicted,
    /// The API server refused, e.g. 429: a PodDisruptionBudget would be violated.
    Refused(String),
    /// The pod no longer exists (404).
    Gone,
    /// The re-check found another pod, or a ready or terminating one.
    Changed(String),
    /// Anything else; the eviction may or may not have happened.
    Failed(String),
}

impl EvictionOutcome {
    /// A bounded label, the PostgreSQL side's outcome names.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvictionOutcome::WouldEvict => "would_act",
            EvictionOutcome::Evicted => "acted",
            EvictionOutcome::Refused(_) => "refused",
            EvictionOutcome::Gone | EvictionOutcome::Changed(_) => "skipped",
            EvictionOutcome::Failed(_) => "failed",
        }
    }

    /// A sentence for the audit trail.
    pub fn sentence(&self) -> String {
        match self {
            EvictionOutcome::WouldEvict => "would evict the pod".into(),
            EvictionOutcome::Evicted => "evicted the pod".into(),
            EvictionOutcome::Refused(m) => format!("the API server refused the eviction: {m}"),
            EvictionOutcome::Gone => "the pod no longer exists: nothing to do".into(),
            EvictionOutcome::Changed(m) => format!("not evicted: {m}"),
            EvictionOutcome::Failed(m) => format!("the eviction failed: {m}"),
        }
    }
}

/// The audit seam: phase 2 bridges it to the JSON-lines audit trail.
/// `intent` must be durable when it returns `Ok`; if it fails, nothing is
/// evicted. Both are called from a blocking task.
pub trait EvictionAudit: Send + Sync {
    fn intent(&self, c: &EvictionCandidate) -> Result<(), String>;
    /// The outcome (in dry-run: [`EvictionOutcome::WouldEvict`], with no intent before it).
    fn outcome(&self, c: &EvictionCandidate, o: &EvictionOutcome);
}

/// Re-checks the pod, then creates its eviction. The eviction carries the
/// pod's UID as a precondition, so a pod replaced between the re-check and
/// the eviction is not touched (the API server answers 409).
///
/// (kube 5's `Api::<Pod>::evict` sends its delete options under a key the API
/// server ignores, so the request is built here with `deleteOptions`.)
#[cfg(feature = "kubernetes")]
pub async fn execute(client: &Client, c: &EvictionCandidate) -> EvictionOutcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), &c.namespace);
    let pod = match api.get_opt(&c.pod).await {
        Ok(Some(p)) => p,
        Ok(None) => return EvictionOutcome::Gone,
        Err(e) => return EvictionOutcome::Failed(format!("cannot re-check the pod: {e}")),
    };
    if pod.metadata.uid.as_deref() != Some(c.uid.as_str()) {
        return EvictionOutcome::Changed("the pod was replaced by a new one".into());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return EvictionOutcome::Changed("the pod is already terminating".into());
    }
    // A rebuild's stall was re-checked by the runner on the freshest polls;
    // a not-ready pod must still be the same kind of not ready.
    let facts = super::snapshot::pod_facts(&c.target, &pod, 0);
    if c.stall.is_none() && facts.ready {
        return EvictionOutcome::Changed("the pod became ready".into());
    }
    if c.stall.is_none() && facts.not_ready_since_ms != Some(c.not_ready_since_ms) {
        return EvictionOutcome::Changed(
            "the pod's readiness changed since it was selected".into(),
        );
    }
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": c.pod, "namespace": c.namespace},
        "deleteOptions": {"preconditions": {"uid": c.uid}},
    });
    let url = format!("/api/v1/namespaces/{}/pods/{}/eviction", c.namespace, c.pod);
    let req = match kube::core::Request::new(url).create(
        &PostParams::default(),
        serde_json::to_vec(&body).unwrap_or_default(),
    ) {
        Ok(r) => r,
        Err(e) => return EvictionOutcome::Failed(e.to_string()),
    };
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => EvictionOutcome::Evicted,
        Err(kube::Error::Api(s)) => match s.code {
            429 => EvictionOutcome::Refused(s.message.clone()),
            404 => EvictionOutcome::Gone,
            409 => EvictionOutcome::Changed(format!("precondition failed: {}", s.message)),
            _ => EvictionOutcome::Failed(format!("{} {}: {}", s.code, s.reason, s.message)),
        },
        Err(e) => EvictionOutcome::Failed(e.to_string()),
    }
}

/// What the runner decided for one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionDecision {
    /// The pause switch is on.
    Paused,
    /// Observe mode: reported only.
    Observed,
    /// Another replica holds the Lease.
    NotActor,
    /// Already decided on (reported in dry-run, or refused within the cooldown).
    Settled,
    BudgetExhausted,
    /// The intent could not be written: not evicted, and nothing more this round.
    AuditFailed,
    Done(EvictionOutcome),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvictionReport {
    pub candidate: EvictionCandidate,
    pub decision: EvictionDecision,
}

#[cfg(feature = "kubernetes")]
type Flag = Arc<dyn Fn() -> bool + Send + Sync>;

/// The budget seam: one action is spent per eviction attempt (or dry-run
/// report), refunded when nothing happened. The daemon bridges it to the
/// shared remediation budgets (per target and global); a lone
/// `Mutex<Budget>` serves the tests.
pub trait EvictionBudget: Send + Sync {
    /// Spends one action for `target`, or returns false (nothing spent).
    fn try_spend(&self, target: &str, now_ms: u64) -> bool;
    /// Gives back an action spent at `at_ms`.
    fn refund(&self, target: &str, at_ms: u64);
}

impl EvictionBudget for Mutex<Budget> {
    fn try_spend(&self, _target: &str, now_ms: u64) -> bool {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_spend(now_ms)
    }
    fn refund(&self, _target: &str, at_ms: u64) {
        self.lock().unwrap_or_else(|e| e.into_inner()).refund(at_ms);
    }
}

/// The eviction loop's state across rounds: recent evictions, settled pods,
/// the budget. Call [`EvictionRunner::run_once`] after each snapshot.
#[cfg(feature = "kubernetes")]
pub struct EvictionRunner {
    policy: EvictionPolicy,
    mode: Mode,
    pacing: Duration,
    budget: Arc<dyn EvictionBudget>,
    paused: Flag,
    is_actor: Flag,
    audit: Arc<dyn EvictionAudit>,
    recent: RecentEvictions,
    /// Pod UIDs not to decide on again, until a time (ms) or while they exist.
    settled: HashMap<String, Option<u64>>,
    /// The rebuild reason: the targets' latest WAL readings, read afresh at
    /// each round and again at the moment of acting, and the replay
    /// positions followed across them.
    readings: Option<Readings>,
    tracker: ReplayTracker,
}

/// Reads the PostgreSQL targets' latest published WAL positions.
#[cfg(feature = "kubernetes")]
pub type Readings = Arc<dyn Fn() -> BTreeMap<String, WalReading> + Send + Sync>;

#[cfg(feature = "kubernetes")]
impl std::fmt::Debug for EvictionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvictionRunner")
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("recent", &self.recent)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "kubernetes")]
impl EvictionRunner {
    /// `budget` may be shared with other runners (e.g. a global budget);
    /// `paused` is the pause switch (`PauseSwitch::is_paused`); `is_actor`
    /// says whether this replica holds the Lease (always true without one).
    pub fn new(
        policy: EvictionPolicy,
        mode: Mode,
        pacing: Duration,
        budget: Arc<dyn EvictionBudget>,
        paused: Flag,
        is_actor: Flag,
        audit: Arc<dyn EvictionAudit>,
    ) -> Self {
        EvictionRunner {
            policy,
            mode,
            pacing,
            budget,
            paused,
            is_actor,
            audit,
            recent: RecentEvictions::default(),
            settled: HashMap::new(),
            readings: None,
            tracker: ReplayTracker::default(),
        }
    }

    /// Where the rebuild reason reads the targets' WAL positions (without
    /// it, `rebuild_after` selects nothing).
    pub fn with_readings(mut self, readings: Readings) -> Self {
        self.readings = Some(readings);
        self
    }

    /// The replay positions followed, for the stall metric.
    pub fn tracker(&self) -> &ReplayTracker {
        &self.tracker
    }

    pub fn policy(&self) -> &EvictionPolicy {
        &self.policy
    }

    /// What the targets' polls say now, folded into the tracker.
    fn replay_facts(&mut self) -> ReplayFacts {
        match (&self.readings, self.policy.rebuild_after) {
            (Some(read), Some(after)) => ReplayFacts::observe(&mut self.tracker, &read(), after),
            _ => ReplayFacts::default(),
        }
    }

    /// The rebuild re-check: the stall still holds on the freshest polls,
    /// at the same replay position, and the target is still a standby.
    fn recheck_stall(&mut self, c: &EvictionCandidate) -> Result<(), String> {
        let Some(selected) = &c.stall else {
            return Ok(());
        };
        let facts = self.replay_facts();
        if facts.primaries.contains(&c.target) {
            return Err("the server is a primary now".into());
        }
        match facts.stalls.get(&c.target) {
            Some(s) if s.replay_lsn == selected.replay_lsn => Ok(()),
            Some(s) => Err(format!(
                "replay moved to {} since it was selected",
                super::rebuild::fmt_lsn(s.replay_lsn)
            )),
            None => Err("the stall no longer holds on the latest poll".into()),
        }
    }

    /// Seeds the cooldowns, e.g. from the audit trail after a restart.
    pub fn record_recent(&mut self, group: String, at_ms: u64) {
        self.recent.record(group, at_ms);
    }

    pub fn recent(&self) -> &RecentEvictions {
        &self.recent
    }

    async fn audit_intent(&self, c: &EvictionCandidate) -> Result<(), String> {
        let (audit, c) = (self.audit.clone(), c.clone());
        tokio::task::spawn_blocking(move || audit.intent(&c))
            .await
            .unwrap_or_else(|e| Err(format!("audit task failed: {e}")))
    }

    async fn audit_outcome(&self, c: &EvictionCandidate, o: &EvictionOutcome) {
        let (audit, c, o) = (self.audit.clone(), c.clone(), o.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || audit.outcome(&c, &o)).await {
            tracing::error!(error = %e, "audit task failed writing an eviction outcome");
        }
    }

    /// One round: select, then act within the bounds. Returns what was
    /// decided for each candidate.
    pub async fn run_once(
        &mut self,
        client: &Client,
        snapshot: &KubernetesSnapshot,
        now_ms: u64,
        cancel: &CancellationToken,
    ) -> Vec<EvictionReport> {
        let cooldown = duration_ms(self.policy.cooldown);
        self.recent.expire(cooldown, now_ms);
        self.settled.retain(|uid, until| {
            snapshot.pods.iter().any(|p| &p.uid == uid) && until.is_none_or(|t| t > now_ms)
        });
        let replay = self.replay_facts();
        let candidates = select_with(
            &self.policy,
            snapshot,
            &replay,
            &self.recent,
            now_ms,
            usize::MAX,
        );
        let all = |d: EvictionDecision| {
            candidates
                .iter()
                .map(|c| EvictionReport {
                    candidate: c.clone(),
                    decision: d.clone(),
                })
                .collect::<Vec<_>>()
        };
        if candidates.is_empty() {
            return Vec::new();
        }
        if (self.paused)() {
            tracing::warn!(
                candidates = candidates.len(),
                "remediation is paused: not evicting"
            );
            return all(EvictionDecision::Paused);
        }
        if self.mode == Mode::Observe {
            return all(EvictionDecision::Observed);
        }
        if !(self.is_actor)() {
            tracing::debug!("another replica holds the Lease: not evicting");
            return all(EvictionDecision::NotActor);
        }
        let mut reports = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            if cancel.is_cancelled() {
                break;
            }
            let report = |decision| EvictionReport {
                candidate: c.clone(),
                decision,
            };
            if self.settled.contains_key(&c.uid) {
                reports.push(report(EvictionDecision::Settled));
                continue;
            }
            if !self.budget.try_spend(&c.target, now_ms) {
                tracing::error!(pod = %c.pod, "remediation budget exhausted: not evicting until the window allows");
                reports.push(report(EvictionDecision::BudgetExhausted));
                continue;
            }
            if self.mode == Mode::DryRun {
                let o = EvictionOutcome::WouldEvict;
                tracing::info!(pod = %c.pod, policy = %c.policy, reason = %c.reason, "dry-run: would evict");
                self.audit_outcome(c, &o).await;
                self.settled.insert(c.uid.clone(), None);
                reports.push(report(EvictionDecision::Done(o)));
                continue;
            }
            // Write-ahead: the intent is durable before the eviction is requested.
            if let Err(e) = self.audit_intent(c).await {
                tracing::error!(error = %e, pod = %c.pod, "cannot write the audit record: not evicting");
                self.budget.refund(&c.target, now_ms);
                reports.push(report(EvictionDecision::AuditFailed));
                break;
            }
            let o = match self.recheck_stall(c) {
                Ok(()) => execute(client, c).await,
                Err(why) => EvictionOutcome::Changed(why),
            };
            self.audit_outcome(c, &o).await;
            match &o {
                EvictionOutcome::Evicted => {
                    tracing::warn!(pod = %c.pod, policy = %c.policy, reason = %c.reason, "evicted a pod");
                    self.recent.record(c.group(), now_ms);
                }
                EvictionOutcome::Refused(m) => {
                    tracing::info!(pod = %c.pod, refusal = %m, "the eviction was refused");
                    // Nothing happened; asking again at once would be refused again.
                    self.budget.refund(&c.target, now_ms);
                    self.settled
                        .insert(c.uid.clone(), Some(now_ms.saturating_add(cooldown)));
                }
                EvictionOutcome::Gone | EvictionOutcome::Changed(_) => {
                    tracing::info!(pod = %c.pod, outcome = %o.sentence(), "did not evict");
                    self.budget.refund(&c.target, now_ms);
                }
                EvictionOutcome::Failed(m) => {
                    // It may have happened: keep the charge and the cooldown.
                    tracing::warn!(pod = %c.pod, error = %m, "the eviction failed");
                    self.recent.record(c.group(), now_ms);
                }
                EvictionOutcome::WouldEvict => {}
            }
            let acted = o == EvictionOutcome::Evicted;
            reports.push(report(EvictionDecision::Done(o)));
            if acted && !self.pacing.is_zero() && i + 1 < candidates.len() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(self.pacing) => {}
                }
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::snapshot::{PodFacts, TargetWatchStatus};
    use proptest::prelude::*;

    const MIN: u64 = 60_000;
    const NOW: u64 = 1_000 * 60 * MIN;

    fn policy() -> EvictionPolicy {
        EvictionPolicy {
            name: "crashed".into(),
            targets: vec![],
            not_ready_for: Duration::from_secs(600),
            cooldown: Duration::from_secs(900),
            rebuild_after: None,
        }
    }

    fn pod(name: &str, sts: Option<&str>, not_ready_for: Option<u64>) -> PodFacts {
        PodFacts {
            target: "pg".into(),
            namespace: "db".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some("node-a".into()),
            phase: "Running".into(),
            ready: not_ready_for.is_none(),
            not_ready_since_ms: not_ready_for.map(|d| NOW - d),
            terminating: false,
            restart_count: 0,
            restarts_last_hour: 0,
            waiting_reason: None,
            last_termination: None,
            statefulset: sts.map(String::from),
            pvcs: vec![],
            created_ms: Some(0),
            containers: vec![],
            lag_ok: None,
            lag_gated: false,
        }
    }

    fn snap(pods: Vec<PodFacts>) -> KubernetesSnapshot {
        KubernetesSnapshot {
            taken_at_ms: NOW,
            namespace: "db".into(),
            api_reachable: true,
            error: None,
            targets: vec![TargetWatchStatus {
                target: "pg".into(),
                label_selector: "app=postgres".into(),
                synced: true,
                error: None,
            }],
            pods,
            statefulsets_watched: false,
            statefulsets: vec![],
            statefulsets_error: None,
            volumes: vec![],
            volumes_error: None,
        }
    }

    fn names(c: &[EvictionCandidate]) -> Vec<&str> {
        c.iter().map(|c| c.pod.as_str()).collect()
    }

    #[test]
    fn selects_exactly_the_pod_that_qualifies() {
        let s = snap(vec![
            pod("a-0", Some("a"), None),           // ready
            pod("a-1", Some("a"), Some(20 * MIN)), // qualifies
            pod("b-0", Some("b"), Some(5 * MIN)),  // not ready for < T
            pod("c-0", Some("c"), Some(30 * MIN)), // qualifies, but c-1 is down < T
            pod("c-1", Some("c"), Some(2 * MIN)),
            pod("d-0", Some("d"), Some(40 * MIN)), // d-0 and d-1 qualify: one only
            pod("d-1", Some("d"), Some(50 * MIN)),
        ]);
        let c = select(&policy(), &s, &RecentEvictions::default(), NOW, 10);
        assert_eq!(names(&c), vec!["d-1", "a-1"]);
        assert!(c[1].reason.contains("not ready for 20m"), "{}", c[1].reason);
        assert_eq!(c[1].not_ready_for_ms, 20 * MIN);
        // The budget caps the count, longest down first.
        assert_eq!(
            names(&select(&policy(), &s, &RecentEvictions::default(), NOW, 1)),
            vec!["d-1"]
        );
    }

    #[test]
    fn a_pod_held_out_for_lag_is_not_evicted() {
        // Not ready only because lag routing set its gate condition False.
        let mut held = pod("a-1", Some("a"), Some(20 * MIN));
        held.lag_ok = Some(false);
        let s = snap(vec![held.clone()]);
        assert!(select(&policy(), &s, &RecentEvictions::default(), NOW, 10).is_empty());
        // A container that is not ready too: broken, whatever the gate says.
        held.containers = vec![crate::kubernetes::snapshot::ContainerFacts {
            name: "postgres".into(),
            ready: false,
            restart_count: 3,
            waiting_reason: Some("CrashLoopBackOff".into()),
            last_termination: None,
            memory_limit_bytes: None,
            cpu_limit_millicores: None,
        }];
        let s = snap(vec![held]);
        assert_eq!(
            names(&select(&policy(), &s, &RecentEvictions::default(), NOW, 10)),
            vec!["a-1"]
        );
    }

    #[test]
    fn cooldown_terminating_unreachable_and_unsynced_block() {
        let mut recent = RecentEvictions::default();
        recent.record("db/statefulset/a".into(), NOW - 5 * MIN);
        let s = snap(vec![pod("a-1", Some("a"), Some(20 * MIN))]);
        assert!(select(&policy(), &s, &recent, NOW, 10).is_empty());
        // After the cooldown it qualifies again.
        assert_eq!(select(&policy(), &s, &recent, NOW + 11 * MIN, 10).len(), 1);

        let mut t = pod("e-0", Some("e"), None);
        t.terminating = true;
        let s = snap(vec![t, pod("e-1", Some("e"), Some(20 * MIN))]);
        assert!(select(&policy(), &s, &RecentEvictions::default(), NOW, 10).is_empty());

        let mut s = snap(vec![pod("a-1", Some("a"), Some(20 * MIN))]);
        s.api_reachable = false;
        assert!(select(&policy(), &s, &RecentEvictions::default(), NOW, 10).is_empty());
        let mut s = snap(vec![pod("a-1", Some("a"), Some(20 * MIN))]);
        s.targets[0].synced = false;
        assert!(select(&policy(), &s, &RecentEvictions::default(), NOW, 10).is_empty());

        // Other targets, unscheduled pods and lone pods.
        let mut p = policy();
        p.targets = vec!["neo4j".into()];
        let s = snap(vec![pod("a-1", Some("a"), Some(20 * MIN))]);
        assert!(select(&p, &s, &RecentEvictions::default(), NOW, 10).is_empty());
        let mut unscheduled = pod("f-0", None, Some(20 * MIN));
        unscheduled.node = None;
        let s = snap(vec![
            unscheduled,
            pod("g-0", None, Some(20 * MIN)),
            pod("g-1", None, Some(20 * MIN)),
        ]);
        assert_eq!(
            names(&select(&policy(), &s, &RecentEvictions::default(), NOW, 10)),
            vec!["g-0", "g-1"]
        );
    }

    fn arb_pod() -> impl Strategy<Value = PodFacts> {
        (
            0usize..4, // StatefulSet (3 = none)
            0usize..6, // ordinal
            proptest::option::of(0u64..40 * MIN),
            any::<bool>(), // terminating
            any::<bool>(), // scheduled
        )
            .prop_map(|(s, i, down, terminating, scheduled)| {
                let sts = ["a", "b", "c"].get(s).copied();
                let mut p = pod(&format!("{}-{i}", sts.unwrap_or("lone")), sts, down);
                p.terminating = terminating && s % 2 == 0;
                if !scheduled {
                    p.node = None;
                }
                p
            })
    }

    proptest! {
        #[test]
        fn selection_is_always_bounded(
            mut pods in proptest::collection::vec(arb_pod(), 0..24),
            max in 0usize..5,
            threshold_min in 1u64..30,
            cooled in proptest::option::of(0usize..3),
        ) {
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            pods.dedup_by(|a, b| a.name == b.name);
            let mut p = policy();
            p.not_ready_for = Duration::from_secs(threshold_min * 60);
            let mut recent = RecentEvictions::default();
            if let Some(i) = cooled {
                recent.record(format!("db/statefulset/{}", ["a", "b", "c"][i]), NOW - MIN);
            }
            let s = snap(pods.clone());
            let chosen = select(&p, &s, &recent, NOW, max);
            prop_assert!(chosen.len() <= max);
            let mut groups = std::collections::HashSet::new();
            for c in &chosen {
                let f = pods.iter().find(|x| x.uid == c.uid).unwrap();
                prop_assert!(!f.ready, "never a ready pod");
                prop_assert!(!f.terminating);
                prop_assert!(NOW - f.not_ready_since_ms.unwrap() >= threshold_min * MIN, "never one not ready for < T");
                prop_assert!(groups.insert(c.group()), "never two pods of one StatefulSet");
                prop_assert!(!recent.cooling(&c.group(), duration_ms(p.cooldown), NOW));
                // No other pod of its StatefulSet is down or leaving.
                if let Some(sts) = &f.statefulset {
                    for o in pods.iter().filter(|o| o.statefulset.as_ref() == Some(sts) && o.uid != f.uid) {
                        prop_assert!(!o.terminating);
                        let o_down = o.not_ready_since_ms.map(|t| NOW - t);
                        prop_assert!(o.ready || o_down.is_some_and(|d| d >= threshold_min * MIN && o.node.is_some()));
                    }
                }
            }
        }
    }

    // ------------------------------------------------ the rebuild reason

    fn rebuild_policy() -> EvictionPolicy {
        EvictionPolicy {
            rebuild_after: Some(Duration::from_secs(600)),
            ..policy()
        }
    }

    /// A pod per target (`pg-0` of target `t0`, ...), in StatefulSet `pg`.
    fn member(i: usize, ready: bool) -> PodFacts {
        let mut p = pod(&format!("pg-{i}"), Some("pg"), (!ready).then_some(MIN));
        p.target = format!("t{i}");
        p
    }

    fn targets_snap(pods: Vec<PodFacts>) -> KubernetesSnapshot {
        let mut s = snap(pods.clone());
        s.targets = pods
            .iter()
            .map(|p| TargetWatchStatus {
                target: p.target.clone(),
                label_selector: format!("statefulset.kubernetes.io/pod-name={}", p.name),
                synced: true,
                error: None,
            })
            .collect();
        s
    }

    fn stall(since_ms: u64) -> ReplayStall {
        ReplayStall {
            replay_lsn: 0x300_0060,
            since_ms,
            stalled_for_ms: NOW - since_ms,
            upstream_lsn_then: 0x300_0100,
            upstream_lsn_now: 0x400_0000,
            upstream: "primary (target t0)".into(),
            advanced_bytes: 0x400_0000 - 0x300_0100,
            lag_bytes: 0x400_0000 - 0x300_0060,
            lag_seconds: Some(700.0),
        }
    }

    fn facts(stalled: &[&str], primaries: &[&str]) -> ReplayFacts {
        ReplayFacts {
            stalls: stalled
                .iter()
                .map(|t| (t.to_string(), stall(NOW - 20 * MIN)))
                .collect(),
            primaries: primaries.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_stalled_standby_is_rebuilt_with_its_figures() {
        let s = targets_snap(vec![member(0, true), member(1, true), member(2, true)]);
        let c = select_with(
            &rebuild_policy(),
            &s,
            &facts(&["t1"], &["t0"]),
            &RecentEvictions::default(),
            NOW,
            10,
        );
        assert_eq!(names(&c), vec!["pg-1"]);
        assert_eq!(c[0].policy, REBUILD_POLICY_NAME);
        assert!(
            c[0].reason.contains("replay LSN 0/3000060 unchanged since")
                && c[0].reason.contains("primary (target t0) advanced"),
            "{}",
            c[0].reason
        );
        let record = c[0].audit_record(
            std::time::SystemTime::now(),
            "id",
            "i",
            Mode::Enforce,
            Decision::Intent,
            "about to evict",
        );
        let figures = record.pod.unwrap().replay_stall.unwrap();
        assert_eq!(figures.replay_lsn, "0/3000060");
        assert_eq!(figures.upstream_lsn_now, "0/4000000");
        assert_eq!(figures.lag_seconds, Some(700.0));
        // Off without rebuild_after; never the primary; never a target
        // whose selector matches two pods.
        assert!(
            select_with(
                &policy(),
                &s,
                &facts(&["t1"], &["t0"]),
                &RecentEvictions::default(),
                NOW,
                10
            )
            .is_empty()
        );
        assert!(
            select_with(
                &rebuild_policy(),
                &s,
                &facts(&["t0"], &["t0"]),
                &RecentEvictions::default(),
                NOW,
                10
            )
            .is_empty()
        );
        let mut twice = member(2, true);
        twice.target = "t1".into();
        let s2 = targets_snap(vec![member(0, true), member(1, true), twice]);
        assert!(
            select_with(
                &rebuild_policy(),
                &s2,
                &facts(&["t1"], &["t0"]),
                &RecentEvictions::default(),
                NOW,
                10
            )
            .is_empty()
        );
    }

    #[test]
    fn never_while_another_member_is_not_ready_and_one_per_set() {
        let f = facts(&["t1", "t2"], &["t0"]);
        // pg-2 is not ready: pg-1 stays, and pg-2 (stalled, not ready) is
        // blocked by nothing but is the one chosen.
        let s = targets_snap(vec![member(0, true), member(1, true), member(2, false)]);
        let c = select_with(
            &rebuild_policy(),
            &s,
            &f,
            &RecentEvictions::default(),
            NOW,
            10,
        );
        assert_eq!(names(&c), vec!["pg-2"]);
        // Two stalled, all ready: one of the set only.
        let s = targets_snap(vec![member(0, true), member(1, true), member(2, true)]);
        let c = select_with(
            &rebuild_policy(),
            &s,
            &f,
            &RecentEvictions::default(),
            NOW,
            10,
        );
        assert_eq!(c.len(), 1, "{:?}", names(&c));
        // The StatefulSet says a member dbwarden does not watch is not ready.
        let mut s = targets_snap(vec![member(0, true), member(1, true)]);
        s.statefulsets_watched = true;
        s.statefulsets = vec![crate::kubernetes::snapshot::StatefulSetFacts {
            target: "t1".into(),
            name: "pg".into(),
            desired_replicas: 3,
            ready_replicas: 2,
            current_replicas: 3,
        }];
        let f = facts(&["t1"], &["t0"]);
        assert!(
            select_with(
                &rebuild_policy(),
                &s,
                &f,
                &RecentEvictions::default(),
                NOW,
                10
            )
            .is_empty()
        );
        s.statefulsets[0].ready_replicas = 3;
        assert_eq!(
            select_with(
                &rebuild_policy(),
                &s,
                &f,
                &RecentEvictions::default(),
                NOW,
                10
            )
            .len(),
            1
        );
        // Cooling after an eviction in the set.
        let mut recent = RecentEvictions::default();
        recent.record("db/statefulset/pg".into(), NOW - MIN);
        assert!(select_with(&rebuild_policy(), &s, &f, &recent, NOW, 10).is_empty());
    }

    proptest! {
        /// Whatever the pods, the stalls and the primaries: only stalled
        /// standbys' pods, never a primary's, never while another member of
        /// the set is not ready or leaving, at most one per set.
        #[test]
        fn rebuild_selection_is_always_safe(
            rows in proptest::collection::vec(
                (0usize..3, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
                1..10,
            ),
        ) {
            // Per pod: its set, ready, terminating, stalled, primary.
            let mut pods = Vec::new();
            let mut f = ReplayFacts::default();
            for (i, (set, ready, terminating, stalled, primary)) in rows.iter().enumerate() {
                let sts = ["a", "b", "c"][*set];
                let mut p = pod(&format!("{sts}-{i}"), Some(sts), (!ready).then_some(MIN));
                p.target = format!("t{i}");
                p.terminating = *terminating;
                if *stalled {
                    f.stalls.insert(p.target.clone(), stall(NOW - 20 * MIN));
                }
                if *primary {
                    f.primaries.insert(p.target.clone());
                }
                pods.push(p);
            }
            let s = targets_snap(pods.clone());
            let chosen = select_rebuilds(&rebuild_policy(), &s, &f, &RecentEvictions::default(), NOW);
            let mut groups = std::collections::HashSet::new();
            for c in &chosen {
                prop_assert!(f.stalls.contains_key(&c.target), "only a stalled standby");
                prop_assert!(!f.primaries.contains(&c.target), "never a primary");
                prop_assert!(groups.insert(c.group()), "one per StatefulSet");
                let me = pods.iter().find(|p| p.uid == c.uid).unwrap();
                prop_assert!(!me.terminating);
                for o in pods.iter().filter(|o| o.uid != c.uid && o.statefulset == me.statefulset) {
                    prop_assert!(o.ready && !o.terminating, "another member is not ready");
                }
            }
            // And the same through select_with, with the not-ready reason.
            let mut p = rebuild_policy();
            p.not_ready_for = Duration::from_secs(30);
            let all = select_with(&p, &s, &f, &RecentEvictions::default(), NOW, 10);
            let mut groups = std::collections::HashSet::new();
            for c in &all {
                prop_assert!(groups.insert(c.group()), "one per StatefulSet across reasons");
                if c.stall.is_some() {
                    prop_assert!(!f.primaries.contains(&c.target));
                }
            }
        }

        /// A standby whose replay advances is never rebuilt: fed through
        /// the tracker, readings whose replay moves produce no stall, so no
        /// candidate.
        #[test]
        fn advancing_replay_is_never_rebuilt(
            steps in proptest::collection::vec((1u64..1000, 0u64..5000, 1u64..20), 1..30),
        ) {
            let mut tracker = ReplayTracker::default();
            let s = targets_snap(vec![member(0, true), member(1, true)]);
            let (mut at, mut lsn, mut replay) = (NOW, 10_000u64, 10_000u64);
            for (dr, dp, dt) in steps {
                at += dt * MIN;
                lsn += dp + dr;
                replay += dr;
                let reading = |in_recovery: bool| WalReading {
                    at_ms: at,
                    up: true,
                    in_recovery,
                    system_id: Some(1),
                    wal_lsn: (!in_recovery).then_some(lsn),
                    receive_lsn: in_recovery.then_some(lsn),
                    replay_lsn: in_recovery.then_some(replay),
                    lag_seconds: Some(5.0),
                };
                let readings: BTreeMap<String, WalReading> =
                    [("t0".to_string(), reading(false)), ("t1".to_string(), reading(true))].into();
                let f = ReplayFacts::observe(&mut tracker, &readings, Duration::from_secs(60));
                prop_assert!(f.stalls.is_empty());
                prop_assert!(select_rebuilds(&rebuild_policy(), &s, &f, &RecentEvictions::default(), at).is_empty());
            }
        }
    }
}
