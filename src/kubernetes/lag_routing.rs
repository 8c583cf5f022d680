//! The opt-in lag routing policy, `[kubernetes.lag_routing]`: the runbook's
//! "route all reads to primary" while a standby lags, made reversible and
//! Kubernetes-native. A standby's pod leaves its Service's endpoints through
//! a readiness gate: dbwarden sets the pod condition [`CONDITION_TYPE`] to
//! `False` (through `pods/status`) while the standby's `replication_lag`
//! check fails, and back to `True` once the check has passed for
//! `restore_after`. The Service's spec is never touched; the StatefulSet
//! declares the gate (`readinessGates`, see `docs/remediation.md`).
//!
//! [`select`] is pure: the Kubernetes snapshot, what the targets' latest
//! polls say about their lag ([`TargetLag`]), the number of ready endpoints
//! of the Service and the time in; the condition changes to make out, each
//! with a reason, and the ones held back with theirs. Its rules:
//!
//! - Never acts against a primary: a primary's pod only ever gets `True`
//!   (at once, e.g. a standby promoted while held out).
//! - Never removes the Service's last ready endpoint (reads on a lagging
//!   standby beat no reads at all), counting the removals it makes in the
//!   same round; and puts a held-out pod back at once when the Service has
//!   no ready endpoint left.
//! - Hysteresis: a pod taken out comes back only after the check has passed
//!   for `restore_after` without interruption.
//! - Only a pod that declares the gate in `spec.readinessGates` (on any
//!   other, the condition would change nothing: it is reported, not set).
//! - Only a target whose `pods` selector matches exactly one pod, whose
//!   pods are fully listed from a reachable API server, and whose latest
//!   poll succeeded (a down or unknown target changes nothing).
//!
//! A gated pod without the condition is not ready, so a new pod gets `True`
//! as soon as its check passes (or when it would be the Service's only
//! endpoint). Taking a pod out spends a remediation action from the budgets;
//! putting one back spends none (it undoes). Both run under the mode, the
//! pause switch and the write-ahead audit, like an eviction.

use std::collections::BTreeMap;
#[cfg(feature = "kubernetes")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "kubernetes")]
use k8s_openapi::api::core::v1::Pod;
#[cfg(feature = "kubernetes")]
use kube::api::ListParams;
#[cfg(feature = "kubernetes")]
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::duration_ms;
use super::snapshot::{KubernetesSnapshot, PodFacts};
use crate::evaluate::CheckStatus;
use crate::observe::Role;
use crate::remediate::audit::{AuditCondition, AuditPod, AuditRecord, Decision, Mode};
use crate::settings::{Issues, join, within};

/// The pod condition dbwarden owns; the StatefulSet's pod template lists it
/// under `readinessGates`.
pub const CONDITION_TYPE: &str = "dbwarden.io/replication-lag-ok";
/// The policy's name in audit records and metrics.
pub const LAG_ROUTING_POLICY_NAME: &str = "kubernetes_lag_routing";

/// `[kubernetes.lag_routing]`. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LagRoutingPolicy {
    /// Always `kubernetes_lag_routing` (set at load).
    #[serde(skip)]
    pub name: String,
    /// The targets (standbys, each with a `pods` selector matching its one
    /// pod) it applies to; empty: every target with a `pods` selector.
    pub targets: Vec<String>,
    /// The Service the standbys' reads go through, in `[kubernetes]`'s
    /// namespace: its selector counts the ready endpoints that must remain.
    pub service: String,
    /// How long the lag check must pass, without interruption, before a pod
    /// taken out is put back.
    #[serde(with = "crate::settings::duration")]
    pub restore_after: Duration,
}

impl Default for LagRoutingPolicy {
    fn default() -> Self {
        LagRoutingPolicy {
            name: LAG_ROUTING_POLICY_NAME.to_string(),
            targets: Vec::new(),
            service: String::new(),
            restore_after: Duration::from_secs(120),
        }
    }
}

impl LagRoutingPolicy {
    pub fn applies_to(&self, target: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == target)
    }

    /// Checks what the policy can check alone; `path` is its table. The
    /// targets and `[remediation]` are checked by `[kubernetes]`'s
    /// validation, which knows them.
    pub fn validate(&mut self, path: &str, issues: &mut Issues) {
        self.name = LAG_ROUTING_POLICY_NAME.to_string();
        let p = |k: &str| join(path, k);
        if self.service.is_empty() {
            issues.push(
                p("service"),
                "missing: name the Service the standbys' reads go through, e.g. service = \"postgres-replica\"",
            );
        } else if !super::settings::dns_label(&self.service) {
            issues.push(
                p("service"),
                format!(
                    "invalid Service name {:?}: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                    self.service
                ),
            );
        }
        within(
            self.restore_after,
            Duration::from_secs(10),
            Duration::from_secs(24 * 3600),
            &p("restore_after"),
            issues,
        );
    }
}

/// What the latest poll of one target says about its lag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetLag {
    /// The role in the latest successful snapshot; `None` when the latest
    /// poll failed or none happened.
    pub role: Option<Role>,
    /// The `replication_lag` check.
    pub check: CheckStatus,
    /// Its measured value (seconds).
    pub lag_seconds: Option<f64>,
    /// Since when (ms) the check has passed without interruption, as the
    /// runner saw it; `None` unless it passes now.
    pub passing_since_ms: Option<u64>,
}

/// One condition change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagRouteChange {
    pub policy: String,
    pub target: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub statefulset: Option<String>,
    /// The condition's value to set: `false` takes the pod out of the
    /// Service's endpoints, `true` puts it back.
    pub ready: bool,
    /// The condition's value before (`None`: absent).
    pub before: Option<bool>,
    pub lag_seconds: Option<f64>,
    /// Why, for humans, the condition's message and the audit trail.
    pub reason: String,
}

impl LagRouteChange {
    /// The action's name in metrics and the audit: `route_out` or `route_in`.
    pub fn action(&self) -> &'static str {
        if self.ready { "route_in" } else { "route_out" }
    }
}

/// What one round decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LagRouting {
    /// The changes to make, take-outs (worst lag first) before put-backs.
    pub changes: Vec<LagRouteChange>,
    /// Pods that qualify for a take-out but stay: `ready` is what they
    /// keep, `reason` says why (the last ready endpoint, an unknown count).
    pub held_back: Vec<LagRouteChange>,
}

fn fmt_lag(l: Option<f64>) -> String {
    l.map_or("unknown".into(), crate::evaluate::fmt_secs)
}

/// The condition changes to make now. Pure. `service_ready` is the number
/// of ready pods matching the Service's selector (`None`: the Service or its
/// pods could not be read: nothing is taken out, pods are still put back).
pub fn select(
    policy: &LagRoutingPolicy,
    snapshot: &KubernetesSnapshot,
    lags: &BTreeMap<String, TargetLag>,
    service_ready: Option<usize>,
    now_ms: u64,
) -> LagRouting {
    let mut out = LagRouting::default();
    if !snapshot.api_reachable {
        return out;
    }
    let restore_after = duration_ms(policy.restore_after);
    let synced = |target: &str| {
        snapshot
            .targets
            .iter()
            .any(|t| t.target == target && t.synced && t.error.is_none())
    };
    let mut by_target: BTreeMap<&str, Vec<&PodFacts>> = BTreeMap::new();
    for p in &snapshot.pods {
        if policy.applies_to(&p.target) && synced(&p.target) {
            by_target.entry(p.target.as_str()).or_default().push(p);
        }
    }
    let change = |p: &PodFacts, lag: &TargetLag, ready: bool, reason: String| LagRouteChange {
        policy: policy.name.clone(),
        target: p.target.clone(),
        namespace: p.namespace.clone(),
        pod: p.name.clone(),
        uid: p.uid.clone(),
        statefulset: p.statefulset.clone(),
        ready,
        before: p.lag_ok,
        lag_seconds: lag.lag_seconds,
        reason,
    };
    // Take-out candidates, decided after the put-backs are known.
    let mut out_candidates: Vec<(&PodFacts, &TargetLag)> = Vec::new();
    let mut put_back = Vec::new();
    for (target, pods) in by_target {
        let pods: Vec<&PodFacts> = pods.into_iter().filter(|p| !p.terminating).collect();
        let [p] = pods.as_slice() else {
            continue;
        };
        if p.uid.is_empty() {
            continue;
        }
        let Some(lag) = lags.get(target) else {
            continue;
        };
        let held_out = p.lag_ok == Some(false);
        if !p.lag_gated {
            // Setting the condition would change nothing: say so when it matters.
            if lag.role == Some(Role::Standby) && lag.check == CheckStatus::Fail {
                out.held_back.push(change(
                    p,
                    lag,
                    p.lag_ok != Some(false),
                    format!(
                        "replication lag {} fails its check, but the pod does not declare the readiness gate {CONDITION_TYPE}: add it to the StatefulSet's readinessGates",
                        fmt_lag(lag.lag_seconds)
                    ),
                ));
            }
            continue;
        }
        match lag.role {
            None => {}
            Some(Role::Primary) if p.lag_ok != Some(true) => {
                put_back.push(change(
                    p,
                    lag,
                    true,
                    "the server is a primary: never held out of its Service".into(),
                ));
            }
            Some(Role::Primary) => {}
            Some(Role::Standby) => match lag.check {
                CheckStatus::Fail if !held_out => out_candidates.push((p, lag)),
                CheckStatus::Pass if held_out => {
                    let since = lag.passing_since_ms.unwrap_or(now_ms);
                    let passed = now_ms.saturating_sub(since);
                    if passed >= restore_after {
                        put_back.push(change(
                            p,
                            lag,
                            true,
                            format!(
                                "replication lag {} has passed its check for {} (restore_after {})",
                                fmt_lag(lag.lag_seconds),
                                fmt_ms(passed),
                                fmt_ms(restore_after)
                            ),
                        ));
                    } else if service_ready == Some(0) {
                        put_back.push(change(
                            p,
                            lag,
                            true,
                            "the Service has no ready endpoint left: back before restore_after"
                                .into(),
                        ));
                    }
                }
                CheckStatus::Pass if p.lag_ok.is_none() => put_back.push(change(
                    p,
                    lag,
                    true,
                    format!(
                        "replication lag {} passes its check: the gate condition is set",
                        fmt_lag(lag.lag_seconds)
                    ),
                )),
                CheckStatus::Fail | CheckStatus::Pending | CheckStatus::Unknown
                    if held_out && service_ready == Some(0) =>
                {
                    put_back.push(change(
                        p,
                        lag,
                        true,
                        "the Service has no ready endpoint left: reads on a lagging standby beat no reads"
                            .into(),
                    ));
                }
                _ => {}
            },
        }
    }
    // Ready endpoints that remain as take-outs are made: a put-back of a
    // pod that is otherwise ready adds one, but only once it happened, so
    // it is not counted here.
    let mut remaining = service_ready;
    out_candidates.sort_by(|a, b| {
        b.1.lag_seconds
            .unwrap_or(f64::INFINITY)
            .total_cmp(&a.1.lag_seconds.unwrap_or(f64::INFINITY))
            .then(a.0.name.cmp(&b.0.name))
    });
    for (p, lag) in out_candidates {
        let lagging = format!(
            "replication lag {} fails its check",
            fmt_lag(lag.lag_seconds)
        );
        // The pod counts as an endpoint only while it is ready.
        let others = remaining.map(|n| n.saturating_sub(usize::from(p.ready)));
        match others {
            Some(n) if n >= 1 => {
                out.changes.push(change(
                    p,
                    lag,
                    false,
                    format!(
                        "{lagging}: out of Service {:?} ({n} other ready endpoint{} remain{})",
                        policy.service,
                        if n == 1 { "" } else { "s" },
                        if n == 1 { "s" } else { "" }
                    ),
                ));
                remaining = Some(n);
            }
            Some(_) => {
                // Not taken out; a gated pod without the condition needs
                // True to serve at all.
                let reason = format!(
                    "{lagging}, but it is the last ready endpoint of Service {:?}: reads on a lagging standby beat no reads",
                    policy.service
                );
                if p.lag_ok.is_none() {
                    out.changes.push(change(p, lag, true, reason));
                } else {
                    out.held_back.push(change(p, lag, true, reason));
                }
            }
            None => out.held_back.push(change(
                p,
                lag,
                p.lag_ok != Some(false),
                format!(
                    "{lagging}, but the ready endpoints of Service {:?} are unknown: not taken out",
                    policy.service
                ),
            )),
        }
    }
    out.changes.extend(put_back);
    out
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

impl LagRouteChange {
    /// The audit record of a decision about this change.
    pub fn audit_record(
        &self,
        now: std::time::SystemTime,
        action_id: &str,
        instance: &str,
        mode: Mode,
        decision: Decision,
        outcome: impl Into<String>,
    ) -> AuditRecord {
        AuditRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            time_ms: now
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            action_id: action_id.to_string(),
            instance: instance.to_string(),
            target: self.target.clone(),
            policy: self.policy.clone(),
            mode,
            action: self.action().to_string(),
            decision,
            reason: self.reason.clone(),
            outcome: outcome.into(),
            session: None,
            transaction: None,
            index: None,
            pod: Some(AuditPod {
                namespace: self.namespace.clone(),
                name: self.pod.clone(),
                uid: self.uid.clone(),
                statefulset: self.statefulset.clone(),
                node: None,
                not_ready_since_ms: 0,
                not_ready_for_ms: 0,
                condition: Some(AuditCondition {
                    type_: CONDITION_TYPE.to_string(),
                    status: self.ready,
                    before: self.before,
                    lag_seconds: self.lag_seconds,
                }),
                replay_stall: None,
            }),
        }
    }
}

/// What came of one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum RouteOutcome {
    /// Dry-run: the condition would have been set.
    WouldSet,
    /// The API server accepted the patch.
    Set,
    /// The pod no longer exists.
    Gone,
    /// The re-check found another pod, another condition value, or (taking
    /// out) no other ready endpoint: nothing patched.
    Changed(String),
    /// Anything else; the patch may or may not have happened.
    Failed(String),
}

impl RouteOutcome {
    /// A bounded label, the outcome names of the other actions.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteOutcome::WouldSet => "would_act",
            RouteOutcome::Set => "acted",
            RouteOutcome::Gone | RouteOutcome::Changed(_) => "skipped",
            RouteOutcome::Failed(_) => "failed",
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            RouteOutcome::WouldSet => Decision::WouldAct,
            RouteOutcome::Set => Decision::Acted,
            RouteOutcome::Gone | RouteOutcome::Changed(_) => Decision::Skipped,
            RouteOutcome::Failed(_) => Decision::Failed,
        }
    }

    /// A sentence for the audit trail.
    pub fn sentence(&self, c: &LagRouteChange) -> String {
        let value = if c.ready { "True" } else { "False" };
        match self {
            RouteOutcome::WouldSet => format!("would set {CONDITION_TYPE}={value}"),
            RouteOutcome::Set => format!("set {CONDITION_TYPE}={value}"),
            RouteOutcome::Gone => "the pod no longer exists: nothing to do".into(),
            RouteOutcome::Changed(m) => format!("not set: {m}"),
            RouteOutcome::Failed(m) => format!("the patch failed: {m}"),
        }
    }
}

/// The audit seam, as for evictions: `intent` is durable when it returns
/// `Ok`; if it fails nothing is patched. Called from a blocking task.
pub trait LagRouteAudit: Send + Sync {
    fn intent(&self, c: &LagRouteChange) -> Result<(), String>;
    fn outcome(&self, c: &LagRouteChange, o: &RouteOutcome);
}

/// What the runner decided for one change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteDecision {
    Paused,
    Observed,
    NotActor,
    /// Already reported (dry-run) for this pod and value.
    Settled,
    BudgetExhausted,
    AuditFailed,
    Done(RouteOutcome),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteReport {
    pub change: LagRouteChange,
    pub decision: RouteDecision,
}

impl RouteReport {
    /// The metric outcome label (`None`: not an action).
    pub fn outcome_label(&self) -> Option<&'static str> {
        match &self.decision {
            RouteDecision::Done(o) => Some(o.as_str()),
            RouteDecision::BudgetExhausted => Some("budget_exhausted"),
            RouteDecision::AuditFailed => Some("audit_failed"),
            RouteDecision::Paused
            | RouteDecision::Observed
            | RouteDecision::NotActor
            | RouteDecision::Settled => None,
        }
    }
}

/// Ready pods matching `selector` (a Service's `spec.selector`), not terminating.
#[cfg(feature = "kubernetes")]
fn ready_pods(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// The number of ready endpoints of the Service (ready pods matching its
/// selector), read from the API server now.
#[cfg(feature = "kubernetes")]
pub async fn service_ready(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<(usize, Vec<String>), String> {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc = services
        .get(service)
        .await
        .map_err(|e| format!("cannot read Service {service:?}: {e}"))?;
    let selector = svc
        .spec
        .and_then(|s| s.selector)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("Service {service:?} has no selector"))?;
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(|e| format!("cannot list the pods of Service {service:?}: {e}"))?;
    let ready: Vec<String> = ready_pods(&list.items)
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    Ok((ready.len(), ready))
}

/// Re-checks the pod (same UID, not terminating, the condition still as
/// selected; taking out: another ready endpoint of the Service still
/// exists), then sets the condition with a JSON patch of `pods/status`
/// whose `test` operations make the API server refuse it if the pod or
/// the condition's place changed in between.
#[cfg(feature = "kubernetes")]
pub async fn execute(client: &Client, service: &str, c: &LagRouteChange) -> RouteOutcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), &c.namespace);
    let pod = match api.get_opt(&c.pod).await {
        Ok(Some(p)) => p,
        Ok(None) => return RouteOutcome::Gone,
        Err(e) => return RouteOutcome::Failed(format!("cannot re-check the pod: {e}")),
    };
    if pod.metadata.uid.as_deref() != Some(c.uid.as_str()) {
        return RouteOutcome::Changed("the pod was replaced by a new one".into());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return RouteOutcome::Changed("the pod is terminating".into());
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone());
    let index = conditions
        .as_ref()
        .and_then(|cs| cs.iter().position(|x| x.type_ == CONDITION_TYPE));
    let now_value = index.and_then(|i| conditions.as_ref().map(|cs| cs[i].status == "True"));
    if now_value != c.before {
        return RouteOutcome::Changed(format!(
            "the condition is {} now, not {} as selected",
            show(now_value),
            show(c.before)
        ));
    }
    if !c.ready {
        match service_ready(client, &c.namespace, service).await {
            Ok((_, ready)) if ready.iter().any(|n| n != &c.pod) => {}
            Ok(_) => {
                return RouteOutcome::Changed(format!(
                    "it is now the last ready endpoint of Service {service:?}"
                ));
            }
            Err(e) => return RouteOutcome::Failed(e),
        }
    }
    let condition = serde_json::json!({
        "type": CONDITION_TYPE,
        "status": if c.ready { "True" } else { "False" },
        "reason": if c.ready { "ReplicationLagOk" } else { "ReplicationLag" },
        "message": c.reason,
        "lastTransitionTime": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    let mut ops = vec![serde_json::json!({"op": "test", "path": "/metadata/uid", "value": c.uid})];
    match (index, &conditions) {
        (Some(i), _) => {
            ops.push(serde_json::json!({"op": "test", "path": format!("/status/conditions/{i}/type"), "value": CONDITION_TYPE}));
            ops.push(serde_json::json!({"op": "replace", "path": format!("/status/conditions/{i}"), "value": condition}));
        }
        (None, Some(_)) => ops.push(
            serde_json::json!({"op": "add", "path": "/status/conditions/-", "value": condition}),
        ),
        (None, None) => ops.push(
            serde_json::json!({"op": "add", "path": "/status/conditions", "value": [condition]}),
        ),
    }
    let url = format!("/api/v1/namespaces/{}/pods/{}/status", c.namespace, c.pod);
    let req = match axum::http::Request::builder()
        .method(axum::http::Method::PATCH)
        .uri(url)
        .header(
            axum::http::header::CONTENT_TYPE,
            "application/json-patch+json",
        )
        .body(serde_json::to_vec(&ops).unwrap_or_default())
    {
        Ok(r) => r,
        Err(e) => return RouteOutcome::Failed(e.to_string()),
    };
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => RouteOutcome::Set,
        Err(kube::Error::Api(s)) => match s.code {
            404 => RouteOutcome::Gone,
            409 | 422 => RouteOutcome::Changed(format!(
                "the API server refused the patch's test: {}",
                s.message
            )),
            _ => RouteOutcome::Failed(format!("{} {}: {}", s.code, s.reason, s.message)),
        },
        Err(e) => RouteOutcome::Failed(e.to_string()),
    }
}

#[cfg(feature = "kubernetes")]
fn show(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "True",
        Some(false) => "False",
        None => "absent",
    }
}

#[cfg(feature = "kubernetes")]
type Flag = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long a value set is assumed in flight (the pod watch has not shown
/// it yet) before the snapshot is believed again.
pub const IN_FLIGHT: Duration = Duration::from_secs(60);

/// The lag routing loop's state across rounds. Call
/// [`LagRoutingRunner::run_once`] after each Kubernetes snapshot.
#[cfg(feature = "kubernetes")]
pub struct LagRoutingRunner {
    policy: LagRoutingPolicy,
    mode: Mode,
    budget: Arc<dyn super::evict::EvictionBudget>,
    paused: Flag,
    is_actor: Flag,
    audit: Arc<dyn LagRouteAudit>,
    /// Per target: since when its lag check has passed without interruption.
    passing_since: BTreeMap<String, u64>,
    /// Values set (or, in dry-run, reported) and not yet seen in the
    /// snapshot: pod UID → (value, when).
    in_flight: BTreeMap<String, (bool, u64)>,
}

#[cfg(feature = "kubernetes")]
impl std::fmt::Debug for LagRoutingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagRoutingRunner")
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("passing_since", &self.passing_since)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "kubernetes")]
impl LagRoutingRunner {
    pub fn new(
        policy: LagRoutingPolicy,
        mode: Mode,
        budget: Arc<dyn super::evict::EvictionBudget>,
        paused: Flag,
        is_actor: Flag,
        audit: Arc<dyn LagRouteAudit>,
    ) -> Self {
        LagRoutingRunner {
            policy,
            mode,
            budget,
            paused,
            is_actor,
            audit,
            passing_since: BTreeMap::new(),
            in_flight: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> &LagRoutingPolicy {
        &self.policy
    }

    /// Tracks since when each target's check passes: `lags` come from the
    /// published statuses, with `passing_since_ms` filled in here.
    fn track(&mut self, lags: &mut BTreeMap<String, TargetLag>, now_ms: u64) {
        self.passing_since
            .retain(|t, _| lags.get(t).is_some_and(|l| l.check == CheckStatus::Pass));
        for (t, l) in lags.iter_mut() {
            if l.check == CheckStatus::Pass {
                let since = *self.passing_since.entry(t.clone()).or_insert(now_ms);
                l.passing_since_ms = Some(since);
            }
        }
    }

    /// The snapshot with the values set and not yet seen applied.
    fn overlay(&mut self, snapshot: &KubernetesSnapshot, now_ms: u64) -> KubernetesSnapshot {
        let mut s = snapshot.clone();
        let in_flight = duration_ms(IN_FLIGHT);
        self.in_flight.retain(|uid, (value, at)| {
            let seen = snapshot
                .pods
                .iter()
                .find(|p| &p.uid == uid)
                .map(|p| p.lag_ok);
            match seen {
                None => false,
                Some(v) if v == Some(*value) => false,
                Some(_) => now_ms.saturating_sub(*at) < in_flight,
            }
        });
        for p in &mut s.pods {
            if let Some((value, _)) = self.in_flight.get(&p.uid) {
                p.lag_ok = Some(*value);
                if !*value {
                    p.ready = false;
                }
            }
        }
        s
    }

    async fn audit_intent(&self, c: &LagRouteChange) -> Result<(), String> {
        let (audit, c) = (self.audit.clone(), c.clone());
        tokio::task::spawn_blocking(move || audit.intent(&c))
            .await
            .unwrap_or_else(|e| Err(format!("audit task failed: {e}")))
    }

    async fn audit_outcome(&self, c: &LagRouteChange, o: &RouteOutcome) {
        let (audit, c, o) = (self.audit.clone(), c.clone(), o.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || audit.outcome(&c, &o)).await {
            tracing::error!(error = %e, "audit task failed writing a lag routing outcome");
        }
    }

    /// One round: select, then act within the bounds (pause → mode → actor
    /// → budget for a take-out → audit intent → re-check → patch → audit
    /// outcome). `lags` are the targets' latest polls.
    pub async fn run_once(
        &mut self,
        client: &Client,
        snapshot: &KubernetesSnapshot,
        mut lags: BTreeMap<String, TargetLag>,
        now_ms: u64,
    ) -> (LagRouting, Vec<RouteReport>) {
        self.track(&mut lags, now_ms);
        let snapshot = self.overlay(snapshot, now_ms);
        // The Service is read only when a pod is, or may be, out of it.
        let needed = snapshot.pods.iter().any(|p| {
            self.policy.applies_to(&p.target)
                && (p.lag_ok == Some(false)
                    || lags
                        .get(&p.target)
                        .is_some_and(|l| l.check == CheckStatus::Fail))
        });
        let service_ready = if needed && snapshot.api_reachable {
            match service_ready(client, &snapshot.namespace, &self.policy.service).await {
                Ok((n, _)) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the Service's ready endpoints: no pod is taken out");
                    None
                }
            }
        } else {
            None
        };
        let routing = select(&self.policy, &snapshot, &lags, service_ready, now_ms);
        for h in &routing.held_back {
            tracing::info!(pod = %h.pod, reason = %h.reason, "lag routing: not taken out");
        }
        let changes = routing.changes.clone();
        let all = |d: RouteDecision| {
            changes
                .iter()
                .map(|c| RouteReport {
                    change: c.clone(),
                    decision: d.clone(),
                })
                .collect::<Vec<_>>()
        };
        if changes.is_empty() {
            return (routing, Vec::new());
        }
        if (self.paused)() {
            tracing::warn!(
                changes = changes.len(),
                "remediation is paused: no pod condition is set"
            );
            return (routing, all(RouteDecision::Paused));
        }
        if self.mode == Mode::Observe {
            return (routing, all(RouteDecision::Observed));
        }
        if !(self.is_actor)() {
            return (routing, all(RouteDecision::NotActor));
        }
        let mut reports = Vec::new();
        for c in &changes {
            let report = |decision| RouteReport {
                change: c.clone(),
                decision,
            };
            // Taking out spends an action; putting back undoes one and is free.
            if !c.ready && !self.budget.try_spend(&c.target, now_ms) {
                tracing::error!(pod = %c.pod, "remediation budget exhausted: not taking the pod out");
                reports.push(report(RouteDecision::BudgetExhausted));
                continue;
            }
            if self.mode == Mode::DryRun {
                let o = RouteOutcome::WouldSet;
                tracing::info!(pod = %c.pod, ready = c.ready, reason = %c.reason, "dry-run: would set the lag routing condition");
                self.audit_outcome(c, &o).await;
                // Reported once; the dry-run overlay keeps it from repeating.
                self.in_flight.insert(c.uid.clone(), (c.ready, now_ms));
                reports.push(report(RouteDecision::Done(o)));
                continue;
            }
            if let Err(e) = self.audit_intent(c).await {
                tracing::error!(error = %e, pod = %c.pod, "cannot write the audit record: not setting the condition");
                if !c.ready {
                    self.budget.refund(&c.target, now_ms);
                }
                reports.push(report(RouteDecision::AuditFailed));
                break;
            }
            let o = execute(client, &self.policy.service, c).await;
            self.audit_outcome(c, &o).await;
            match &o {
                RouteOutcome::Set => {
                    if c.ready {
                        tracing::warn!(pod = %c.pod, reason = %c.reason, "put a standby back into its Service");
                    } else {
                        tracing::warn!(pod = %c.pod, reason = %c.reason, "took a lagging standby out of its Service");
                    }
                    self.in_flight.insert(c.uid.clone(), (c.ready, now_ms));
                }
                RouteOutcome::Gone | RouteOutcome::Changed(_) => {
                    tracing::info!(pod = %c.pod, outcome = %o.sentence(c), "did not set the condition");
                    if !c.ready {
                        self.budget.refund(&c.target, now_ms);
                    }
                }
                RouteOutcome::Failed(m) => {
                    tracing::warn!(pod = %c.pod, error = %m, "setting the lag routing condition failed");
                }
                RouteOutcome::WouldSet => {}
            }
            reports.push(report(RouteDecision::Done(o)));
        }
        (routing, reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::snapshot::TargetWatchStatus;
    use proptest::prelude::*;

    const S: u64 = 1000;
    const NOW: u64 = 1_000_000 * S;

    fn policy() -> LagRoutingPolicy {
        LagRoutingPolicy {
            service: "pg-read".into(),
            restore_after: Duration::from_secs(60),
            ..LagRoutingPolicy::default()
        }
    }

    fn pod(target: &str, ready: bool, lag_ok: Option<bool>) -> PodFacts {
        PodFacts {
            target: target.into(),
            namespace: "db".into(),
            name: format!("{target}-0"),
            uid: format!("uid-{target}"),
            node: Some("node-a".into()),
            phase: "Running".into(),
            ready,
            not_ready_since_ms: (!ready).then_some(NOW - 10 * S),
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

    fn snap(pods: Vec<PodFacts>) -> KubernetesSnapshot {
        let mut targets: Vec<String> = pods.iter().map(|p| p.target.clone()).collect();
        targets.dedup();
        KubernetesSnapshot {
            taken_at_ms: NOW,
            namespace: "db".into(),
            api_reachable: true,
            error: None,
            targets: targets
                .into_iter()
                .map(|t| TargetWatchStatus {
                    label_selector: format!("statefulset.kubernetes.io/pod-name={t}-0"),
                    target: t,
                    synced: true,
                    error: None,
                })
                .collect(),
            pods,
            statefulsets_watched: false,
            statefulsets: vec![],
            statefulsets_error: None,
            volumes: vec![],
            volumes_error: None,
        }
    }

    fn lag(role: Role, check: CheckStatus, lag: f64, passing_for: Option<u64>) -> TargetLag {
        TargetLag {
            role: Some(role),
            check,
            lag_seconds: Some(lag),
            passing_since_ms: passing_for.map(|d| NOW - d),
        }
    }

    fn lags(l: &[(&str, TargetLag)]) -> BTreeMap<String, TargetLag> {
        l.iter().map(|(t, l)| (t.to_string(), *l)).collect()
    }

    fn changes(r: &LagRouting) -> Vec<(&str, bool)> {
        r.changes
            .iter()
            .map(|c| (c.pod.as_str(), c.ready))
            .collect()
    }

    #[test]
    fn a_lagging_standby_leaves_while_another_endpoint_is_ready() {
        let s = snap(vec![pod("a", true, Some(true)), pod("b", true, Some(true))]);
        let l = lags(&[
            ("a", lag(Role::Standby, CheckStatus::Fail, 12.0, None)),
            (
                "b",
                lag(Role::Standby, CheckStatus::Pass, 0.0, Some(600 * S)),
            ),
        ]);
        let r = select(&policy(), &s, &l, Some(2), NOW);
        assert_eq!(changes(&r), vec![("a-0", false)]);
        let c = &r.changes[0];
        assert_eq!((c.action(), c.before), ("route_out", Some(true)));
        assert!(
            c.reason.contains("replication lag 12s fails its check")
                && c.reason.contains("1 other ready endpoint remains"),
            "{}",
            c.reason
        );
        // Pending (not yet held for its `for`) is not failing.
        let l = lags(&[("a", lag(Role::Standby, CheckStatus::Pending, 12.0, None))]);
        assert!(select(&policy(), &s, &l, Some(2), NOW).changes.is_empty());
    }

    #[test]
    fn the_last_ready_endpoint_stays_and_the_worst_leaves_first() {
        let s = snap(vec![pod("a", true, Some(true)), pod("b", true, Some(true))]);
        let l = lags(&[
            ("a", lag(Role::Standby, CheckStatus::Fail, 12.0, None)),
            ("b", lag(Role::Standby, CheckStatus::Fail, 30.0, None)),
        ]);
        let r = select(&policy(), &s, &l, Some(2), NOW);
        assert_eq!(
            changes(&r),
            vec![("b-0", false)],
            "the worst goes, one stays"
        );
        assert_eq!(r.held_back.len(), 1);
        assert_eq!(r.held_back[0].pod, "a-0");
        assert!(
            r.held_back[0].reason.contains("last ready endpoint"),
            "{}",
            r.held_back[0].reason
        );
        // A single-endpoint Service keeps its lagging standby.
        let r = select(
            &policy(),
            &snap(vec![pod("a", true, Some(true))]),
            &l,
            Some(1),
            NOW,
        );
        assert!(r.changes.is_empty());
        // Unknown endpoints: nothing is taken out.
        let r = select(&policy(), &s, &l, None, NOW);
        assert!(r.changes.is_empty() && r.held_back.len() == 2);
    }

    #[test]
    fn back_after_restore_after_or_when_no_endpoint_is_left() {
        let s = snap(vec![pod("a", false, Some(false))]);
        let passing = |d| lags(&[("a", lag(Role::Standby, CheckStatus::Pass, 0.5, Some(d)))]);
        assert!(
            select(&policy(), &s, &passing(30 * S), Some(1), NOW)
                .changes
                .is_empty()
        );
        let r = select(&policy(), &s, &passing(60 * S), Some(1), NOW);
        assert_eq!(changes(&r), vec![("a-0", true)]);
        assert_eq!(r.changes[0].action(), "route_in");
        assert!(
            r.changes[0].reason.contains("passed its check for 1m"),
            "{}",
            r.changes[0].reason
        );
        // No ready endpoint left: back at once, passing or not.
        assert_eq!(
            changes(&select(&policy(), &s, &passing(1), Some(0), NOW)),
            vec![("a-0", true)]
        );
        let failing = lags(&[("a", lag(Role::Standby, CheckStatus::Fail, 40.0, None))]);
        assert_eq!(
            changes(&select(&policy(), &s, &failing, Some(0), NOW)),
            vec![("a-0", true)]
        );
        assert!(
            select(&policy(), &s, &failing, Some(1), NOW)
                .changes
                .is_empty()
        );
    }

    #[test]
    fn never_against_a_primary_and_never_on_what_is_not_known() {
        // A standby promoted while held out comes back at once.
        let s = snap(vec![pod("a", false, Some(false))]);
        let l = lags(&[("a", lag(Role::Primary, CheckStatus::Fail, 99.0, None))]);
        assert_eq!(
            changes(&select(&policy(), &s, &l, Some(3), NOW)),
            vec![("a-0", true)]
        );
        let s = snap(vec![pod("a", true, Some(true))]);
        assert!(select(&policy(), &s, &l, Some(3), NOW).changes.is_empty());
        // Down target, unreachable API, unsynced pods, two pods, another target.
        let down = lags(&[(
            "a",
            TargetLag {
                role: None,
                check: CheckStatus::Unknown,
                lag_seconds: None,
                passing_since_ms: None,
            },
        )]);
        assert!(
            select(&policy(), &s, &down, Some(3), NOW)
                .changes
                .is_empty()
        );
        let fail = lags(&[("a", lag(Role::Standby, CheckStatus::Fail, 9.0, None))]);
        let mut u = s.clone();
        u.api_reachable = false;
        assert!(
            select(&policy(), &u, &fail, Some(3), NOW)
                .changes
                .is_empty()
        );
        let mut u = s.clone();
        u.targets[0].synced = false;
        assert!(
            select(&policy(), &u, &fail, Some(3), NOW)
                .changes
                .is_empty()
        );
        let mut two = pod("a", true, Some(true));
        two.name = "a-1".into();
        let u = snap(vec![pod("a", true, Some(true)), two]);
        assert!(
            select(&policy(), &u, &fail, Some(3), NOW)
                .changes
                .is_empty()
        );
        let mut p = policy();
        p.targets = vec!["other".into()];
        assert!(select(&p, &s, &fail, Some(3), NOW).changes.is_empty());
    }

    #[test]
    fn a_pod_without_the_gate_is_never_patched() {
        let mut p = pod("a", true, None);
        p.lag_gated = false;
        let s = snap(vec![p, pod("b", true, Some(true))]);
        let l = lags(&[("a", lag(Role::Standby, CheckStatus::Fail, 20.0, None))]);
        let r = select(&policy(), &s, &l, Some(2), NOW);
        assert!(r.changes.is_empty());
        assert!(
            r.held_back[0].reason.contains("readinessGates"),
            "{:?}",
            r.held_back
        );
        let l = lags(&[("a", lag(Role::Primary, CheckStatus::Pass, 0.0, Some(1)))]);
        assert!(select(&policy(), &s, &l, Some(2), NOW).changes.is_empty());
    }

    #[test]
    fn a_new_gated_pod_gets_the_condition() {
        let s = snap(vec![pod("a", false, None), pod("b", true, Some(true))]);
        let ok = lag(Role::Standby, CheckStatus::Pass, 0.0, Some(1));
        let bad = lag(Role::Standby, CheckStatus::Fail, 20.0, None);
        assert_eq!(
            changes(&select(&policy(), &s, &lags(&[("a", ok)]), Some(1), NOW)),
            vec![("a-0", true)]
        );
        // Lagging with another endpoint ready: False, so it says why.
        let r = select(&policy(), &s, &lags(&[("a", bad)]), Some(1), NOW);
        assert_eq!(changes(&r), vec![("a-0", false)]);
        assert_eq!(r.changes[0].before, None);
        // Lagging and nothing else ready: True (reads beat no reads).
        assert_eq!(
            changes(&select(&policy(), &s, &lags(&[("a", bad)]), Some(0), NOW)),
            vec![("a-0", true)]
        );
    }

    fn arb_case() -> impl Strategy<Value = (Vec<PodFacts>, BTreeMap<String, TargetLag>)> {
        proptest::collection::vec(
            (
                any::<bool>(),                       // ready
                proptest::option::of(any::<bool>()), // lag_ok
                0usize..3,                           // role: primary, standby, down
                0usize..4,                           // check status
                proptest::option::of(0.0f64..60.0),  // lag
                proptest::option::of(0u64..200 * S), // passing for
            ),
            0..6,
        )
        .prop_map(|rows| {
            let mut pods = Vec::new();
            let mut lags = BTreeMap::new();
            for (i, (ready, lag_ok, role, check, lag, passing)) in rows.into_iter().enumerate() {
                let t = format!("t{i}");
                // A pod held out (False) is not ready.
                pods.push(pod(&t, ready && lag_ok != Some(false), lag_ok));
                let check = [
                    CheckStatus::Pass,
                    CheckStatus::Pending,
                    CheckStatus::Fail,
                    CheckStatus::Unknown,
                ][check];
                lags.insert(
                    t,
                    TargetLag {
                        role: [Some(Role::Primary), Some(Role::Standby), None][role],
                        check,
                        lag_seconds: lag,
                        passing_since_ms: (check == CheckStatus::Pass)
                            .then(|| NOW - passing.unwrap_or(0)),
                    },
                );
            }
            (pods, lags)
        })
    }

    proptest! {
        #[test]
        fn the_rules_always_hold(
            (pods, lags) in arb_case(),
            extra_ready in 0usize..3,
            known in any::<bool>(),
        ) {
            let ready_now = pods.iter().filter(|p| p.ready).count() + extra_ready;
            let service_ready = known.then_some(ready_now);
            let r = select(&policy(), &snap(pods.clone()), &lags, service_ready, NOW);
            let outs: Vec<_> = r.changes.iter().filter(|c| !c.ready).collect();
            // Never the last ready endpoint: after every take-out one remains.
            if !outs.is_empty() {
                let removed_ready = outs
                    .iter()
                    .filter(|c| pods.iter().any(|p| p.uid == c.uid && p.ready))
                    .count();
                prop_assert!(known);
                prop_assert!(ready_now > removed_ready, "{ready_now} ready, {removed_ready} removed");
            }
            let mut seen = std::collections::HashSet::new();
            for c in &r.changes {
                prop_assert!(seen.insert(c.uid.clone()), "one change per pod");
                let l = lags[&c.target];
                let p = pods.iter().find(|p| p.uid == c.uid).unwrap();
                prop_assert_ne!(Some(c.ready), p.lag_ok, "a change changes something");
                if !c.ready {
                    // Only a standby whose check fails, never a primary.
                    prop_assert_eq!(l.role, Some(Role::Standby));
                    prop_assert_eq!(l.check, CheckStatus::Fail);
                } else if p.lag_ok == Some(false) && l.role == Some(Role::Standby) && service_ready != Some(0) {
                    // Hysteresis: back only after restore_after of passing.
                    prop_assert_eq!(l.check, CheckStatus::Pass);
                    prop_assert!(NOW - l.passing_since_ms.unwrap() >= 60 * S);
                }
                prop_assert!(l.role.is_some(), "never on a target that is down");
            }
        }
    }
}
