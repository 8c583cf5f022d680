//! Every metric dbwarden exports, defined in this one file.
//!
//! Two kinds live here:
//! - live instruments the poll loops record through [`Metrics`]'s methods
//!   (poll counts, durations, errors by kind);
//! - state metrics rendered from the latest published [`TargetStatus`] of
//!   each target, when it is published ([`Metrics::published`]; a scrape
//!   renders any it finds without them), and kept as each target's sample
//!   lines per family, which a scrape assembles under each family's header.
//!   A scrape reads memory only: it never touches a database, and series of
//!   a standby or volume that disappeared vanish with it instead of going
//!   stale.
//!
//! Names follow `dbwarden_<name>_<unit>[_total]`; prometheus-client appends
//! the unit and `_total`, so names below are registered without them.
//! [`METRIC_NAMES`] lists every exported family, for the tests that check
//! alert rules and dashboards against what really exists.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use smallvec::{SmallVec, smallvec};

use crate::evaluate::CheckStatus;
use crate::observe::{PgSnapshot, PollErrorKind};
use crate::remediate::Recorder;
use crate::remediate::executor::Holder;
use crate::state::{SharedState, TargetStatus, unix_seconds};

/// Registers a new metric under `name` and returns its handle.
fn add<M: Default + Clone + prometheus_client::registry::Metric>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let m = M::default();
    registry.register(name, help, m.clone());
    m
}

/// The OpenMetrics content type served on `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type, for clients that do not accept OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    Text,
}

impl Format {
    /// OpenMetrics when `accept` names it with a quality above zero and at
    /// least that of the text format (`text/plain`, `text/*`, `*/*`);
    /// the text format otherwise (no `Accept`, `*/*`, `text/plain`).
    pub fn negotiate(accept: &str) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut fields = range.split(';');
            let media = fields.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = fields
                .filter_map(|f| f.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition in the Prometheus
/// text format 0.0.4: no `# EOF` and no `# UNIT`; a counter family is
/// declared under its `_total` sample name and loses its `_created`
/// samples; an `info` family becomes the gauge `<name>_info`; `unknown`
/// becomes `untyped`; exemplars are dropped; `\"` in help texts is a
/// plain quote. Sample lines are otherwise the same in both formats.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut text = TextFormat::default();
    text.learn(openmetrics);
    let mut out = String::with_capacity(openmetrics.len());
    text.convert(openmetrics, &mut out);
    out
}

/// [`openmetrics_to_text`] piece by piece: the kind of every family is
/// learnt first (from its `# TYPE` line), then any run of whole lines is
/// converted on its own.
#[derive(Debug, Default)]
struct TextFormat<'a> {
    kinds: HashMap<&'a str, &'a str>,
}

impl<'a> TextFormat<'a> {
    /// Learns the kinds the `# TYPE` lines of `openmetrics` declare.
    fn learn(&mut self, openmetrics: &'a str) {
        for line in openmetrics.lines() {
            if let Some((name, kind)) = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.split_once(' '))
            {
                self.kinds.insert(name, kind);
            }
        }
    }

    fn renamed(&self, name: &str) -> String {
        match self.kinds.get(name).copied() {
            Some("counter") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_string(),
        }
    }

    /// Appends the text-format lines of `openmetrics` (whole lines) to `out`.
    fn convert(&self, openmetrics: &str, out: &mut String) {
        for line in openmetrics.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            if let Some((name, kind)) = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.split_once(' '))
            {
                let kind = match kind {
                    "info" => "gauge",
                    "unknown" => "untyped",
                    k => k,
                };
                out.push_str(&format!("# TYPE {} {kind}\n", self.renamed(name)));
                continue;
            }
            if let Some((name, help)) = line
                .strip_prefix("# HELP ")
                .and_then(|rest| rest.split_once(' '))
            {
                out.push_str(&format!(
                    "# HELP {} {}\n",
                    self.renamed(name),
                    help.replace("\\\"", "\"")
                ));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            if let Some(family) = line[..name_end].strip_suffix("_created")
                && matches!(
                    self.kinds.get(family).copied(),
                    Some("counter" | "histogram")
                )
            {
                continue;
            }
            // An exemplar follows the value as ` # {...} value`.
            let sample = match line.find(" # {") {
                Some(at) => &line[..at],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
}

/// The `reason` label values of `dbwarden_http_rejections_total`.
pub const HTTP_REJECTION_REASONS: [&str; 9] = [
    "unauthenticated",
    "wrong_credentials",
    "bearer_token",
    "client_certificate",
    "tls_handshake",
    "connection_limit",
    "header_timeout",
    "header_too_large",
    "request_timeout",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupResultLabels {
    backup: String,
    target: String,
    result: &'static str,
}

/// The results of a backup observation: `ok` or a failure's kind.
const BACKUP_RESULTS: [&str; 7] = [
    "ok",
    "not_found",
    "credentials",
    "unreachable",
    "timeout",
    "config",
    "other",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    target: String,
    policy: String,
    action: String,
    outcome: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    target: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    target: String,
    holder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertStatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// The `code` label values of `dbwarden_alertmanager_requests_total`: the
/// receiver's own answers, and `other` for anything else.
pub const ALERTMANAGER_CODES: [&str; 7] = ["202", "400", "401", "403", "413", "500", "other"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    target: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    target: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// The shard group as this replica last read it (`[kubernetes.shards]`);
/// no series without sharding.
#[derive(Debug)]
struct ShardGauges {
    members: Family<Vec<(String, String)>, Gauge>,
    targets: Family<MemberLabels, Gauge>,
    unowned: Family<Vec<(String, String)>, Gauge>,
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ShardGauges {
    fn register(registry: &mut Registry) -> Self {
        ShardGauges {
            members: add(
                registry,
                "shard_members",
                "Live members of the shard group (unexpired Leases with its label), as this replica last read them",
            ),
            targets: add(
                registry,
                "shard_targets",
                "Targets each live member of the shard group claims (by its published view), as this replica last read them",
            ),
            unowned: add(
                registry,
                "shard_unowned_targets",
                "Configured targets that no live member of the shard group claims, as this replica last read them",
            ),
        }
    }
}

/// The live instruments, and the registry that renders everything.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    polls: Family<TargetLabels, Counter>,
    poll_errors: Family<ErrorLabels, Counter>,
    backup_observations: Family<BackupResultLabels, Counter>,
    poll_duration: Family<TargetLabels, Histogram>,
    actions: Family<ActionLabels, Counter>,
    candidates: Family<PolicyLabels, Gauge>,
    budget_remaining: Family<ScopeLabels, Gauge>,
    budget_exhausted: Family<ScopeLabels, Gauge>,
    paused: Gauge,
    mode: Family<ModeLabels, Gauge>,
    actor: Family<TargetLabels, Gauge>,
    polls_brought_forward: Family<TargetLabels, Counter>,
    actor_holder: Family<HolderLabels, Gauge>,
    /// The holder last exported per target, so its series can be removed on change.
    last_holder: std::sync::Mutex<std::collections::HashMap<String, String>>,
    audit_errors: Counter,
    am_alerts: Family<AlertStatusLabels, Counter>,
    am_duplicates: Counter,
    am_requests: Family<CodeLabels, Counter>,
    reload_successful: Gauge,
    reload_success_time: Gauge<f64, AtomicU64>,
    reloads: Family<ResultLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    shards: ShardGauges,
    index_rebuild_held: Family<HeldLabels, Gauge>,
    index_rebuild_started: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// The decision and candidate series created so far, so that those of
    /// a target or a policy a reload removed can be removed too.
    created: Mutex<(HashSet<ActionLabels>, HashSet<PolicyLabels>)>,
    state: Arc<SharedState>,
    /// Each target's series, rendered when its status was published.
    series: Mutex<HashMap<String, Arc<TargetSeries>>>,
    /// The state families' headers, each kept once.
    families: Mutex<Families>,
}

impl Metrics {
    /// Registers every metric. Targets named in `state` get their counters
    /// initialised at zero, so `rate()` and `increase()` see the first error.
    pub fn new(state: Arc<SharedState>) -> Self {
        let mut registry = Registry::with_prefix("dbwarden");
        registry.register(
            "build",
            "dbwarden's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let polls = Family::<TargetLabels, Counter>::default();
        registry.register("polls", "Polls finished, successful or not", polls.clone());
        let poll_errors: Family<ErrorLabels, Counter> = add(
            &mut registry,
            "poll_errors",
            "Polls that failed, by kind of failure",
        );
        let backup_observations: Family<BackupResultLabels, Counter> = add(
            &mut registry,
            "backup_observations",
            "Observations of a backup location, by result (ok, or the kind of failure)",
        );
        let poll_duration = Family::<TargetLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register_with_unit(
            "poll_duration",
            "How long polls took, including failed ones",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let actions: Family<ActionLabels, Counter> = add(
            &mut registry,
            "remediation_actions",
            "Remediation decisions by target, policy, action (cancel/terminate), outcome and mode",
        );
        let candidates: Family<PolicyLabels, Gauge> = add(
            &mut registry,
            "remediation_candidates",
            "Sessions that meet a policy's conditions in the latest poll (protected sessions excluded)",
        );
        let budget_remaining: Family<ScopeLabels, Gauge> = add(
            &mut registry,
            "remediation_budget_remaining",
            "Actions still allowed in the current window, per target and `global`",
        );
        let budget_exhausted: Family<ScopeLabels, Gauge> = add(
            &mut registry,
            "remediation_budget_exhausted",
            "1 while the budget of the scope is exhausted and dbwarden does not act there",
        );
        let paused: Gauge = add(
            &mut registry,
            "remediation_paused",
            "1 while remediation is paused (API or sentinel file)",
        );
        let mode: Family<ModeLabels, Gauge> = add(
            &mut registry,
            "remediation_mode",
            "1 for the configured remediation mode (observe, dry-run, enforce), 0 for the others",
        );
        let actor: Family<TargetLabels, Gauge> = add(
            &mut registry,
            "remediation_actor",
            "1 when this instance holds the actor lock of the target and may act on it",
        );
        let polls_brought_forward: Family<TargetLabels, Counter> = add(
            &mut registry,
            "remediation_polls_brought_forward",
            "Polls remediation brought forward to the moment sessions cross a policy's durations",
        );
        let actor_holder: Family<HolderLabels, Gauge> = add(
            &mut registry,
            "remediation_actor_holder",
            "The instance holding the actor lock of the target, as seen by this instance (value 1)",
        );
        let audit_errors: Counter = add(
            &mut registry,
            "remediation_audit_errors",
            "Audit records that could not be written; dbwarden does not act without one",
        );
        let am_alerts: Family<AlertStatusLabels, Counter> = add(
            &mut registry,
            "alertmanager_alerts_received",
            "Alerts received from Alertmanager's webhook, duplicates included, by status (firing/resolved)",
        );
        for status in ["firing", "resolved"] {
            let _ = am_alerts.get_or_create(&AlertStatusLabels { status });
        }
        let am_duplicates: Counter = add(
            &mut registry,
            "alertmanager_duplicates",
            "Alerts received again (same fingerprint, startsAt and status) and not acted on again",
        );
        let am_requests: Family<CodeLabels, Counter> = add(
            &mut registry,
            "alertmanager_requests",
            "Requests to the Alertmanager receiver by HTTP status code",
        );
        let _ = am_requests.get_or_create(&CodeLabels { code: "202" });
        let reload_successful: Gauge = add(
            &mut registry,
            "config_last_reload_successful",
            "1 when the last configuration reload applied (or none was tried), 0 when it was refused",
        );
        reload_successful.set(1);
        let reload_success_time = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration in effect was loaded (start-up or the last successful reload)",
            Unit::Seconds,
            reload_success_time.clone(),
        );
        reload_success_time.set(unix_seconds(std::time::SystemTime::now()));
        let reloads: Family<ResultLabels, Counter> = add(
            &mut registry,
            "config_reloads",
            "Configuration reloads by result (success, failure)",
        );
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        let rejections: Family<ReasonLabels, Counter> = add(
            &mut registry,
            "http_rejections",
            "HTTP requests and connections refused, by reason (authentication, TLS handshake, limits)",
        );
        for reason in HTTP_REJECTION_REASONS {
            let _ = rejections.get_or_create(&ReasonLabels { reason });
        }
        let shards = ShardGauges::register(&mut registry);
        let index_rebuild_held: Family<HeldLabels, Gauge> = add(
            &mut registry,
            "neo4j_index_rebuild_held",
            "FAILED Neo4j indexes the index rebuild leaves alone in the latest cycle, by reason (too_recent, constraint, unsupported_version, no_definition, one_at_a_time)",
        );
        let index_rebuild_started = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "neo4j_index_rebuild_started_timestamp",
            "When the Neo4j index rebuild in progress on the target started (its DROP); 0 while none is",
            Unit::Seconds,
            index_rebuild_started.clone(),
        );
        let metrics = Metrics {
            registry,
            polls,
            poll_errors,
            backup_observations,
            poll_duration,
            actions,
            candidates,
            budget_remaining,
            budget_exhausted,
            paused,
            mode,
            actor,
            polls_brought_forward,
            actor_holder,
            last_holder: Default::default(),
            audit_errors,
            am_alerts,
            am_duplicates,
            am_requests,
            reload_successful,
            reload_success_time,
            reloads,
            rejections,
            shards,
            index_rebuild_held,
            index_rebuild_started,
            created: Mutex::default(),
            state,
            series: Mutex::default(),
            families: Mutex::default(),
        };
        for t in metrics.state.all() {
            metrics.add_target(&t.target);
        }
        metrics
    }

    fn lock_created(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashSet<ActionLabels>, HashSet<PolicyLabels>)> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every series of a target a reload removed: its polls, its
    /// remediation decisions, candidates, budget and actor.
    pub fn forget_target(&self, target: &str) {
        let l = TargetLabels {
            target: target.to_string(),
        };
        self.polls.remove(&l);
        self.poll_duration.remove(&l);
        self.actor.remove(&l);
        self.polls_brought_forward.remove(&l);
        for kind in PollErrorKind::ALL {
            self.poll_errors.remove(&ErrorLabels {
                target: target.to_string(),
                kind: kind.as_str(),
            });
        }
        let scope = ScopeLabels {
            scope: target.to_string(),
        };
        self.budget_remaining.remove(&scope);
        self.budget_exhausted.remove(&scope);
        let holder = self
            .last_holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        if let Some(holder) = holder {
            self.actor_holder.remove(&HolderLabels {
                target: target.to_string(),
                holder,
            });
        }
        self.forget_series(|t, _| t == target);
        for reason in crate::remediate::neo4j_index_policy::Held::ALL {
            self.index_rebuild_held.remove(&HeldLabels {
                target: target.to_string(),
                reason: reason.as_str().to_string(),
            });
        }
        self.index_rebuild_started.remove(&TargetLabels {
            target: target.to_string(),
        });
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
    }

    /// Removes the decision and candidate series of a policy a reload
    /// removed (or that no longer applies to the target).
    pub fn forget_policy(&self, target: &str, policy: &str) {
        self.forget_series(|t, p| t == target && p == policy);
    }

    fn forget_series(&self, gone: impl Fn(&str, &str) -> bool) {
        let mut created = self.lock_created();
        let (actions, candidates) = &mut *created;
        actions.retain(|l| {
            let keep = !gone(&l.target, &l.policy);
            if !keep {
                self.actions.remove(l);
            }
            keep
        });
        candidates.retain(|l| {
            let keep = !gone(&l.target, &l.policy);
            if !keep {
                self.candidates.remove(l);
            }
            keep
        });
    }

    /// Starts counting a target (its counters at zero, so that `rate()`
    /// sees the first error): at start-up, and when a reload adds one.
    pub fn add_target(&self, target: &str) {
        let l = TargetLabels {
            target: target.to_string(),
        };
        let _ = self.polls.get_or_create(&l);
        let _ = self.poll_duration.get_or_create(&l);
        for kind in PollErrorKind::ALL {
            let _ = self.poll_errors.get_or_create(&ErrorLabels {
                target: target.to_string(),
                kind: kind.as_str(),
            });
        }
    }

    /// Counts one observation of a backup location by its result (every
    /// result's series exists from the first observation on, so `increase`
    /// sees the first failure).
    pub fn record_backup_observation(&self, status: &crate::state::BackupStatus) {
        let result = status.last_error.as_ref().map_or("ok", |e| e.kind.as_str());
        for r in BACKUP_RESULTS {
            let c = self.backup_observations.get_or_create(&BackupResultLabels {
                backup: status.name.clone(),
                target: status.target.clone(),
                result: r,
            });
            if r == result {
                c.inc();
            }
        }
    }

    /// Removes the series of a backup location a reload removed or changed.
    pub fn forget_backup(&self, name: &str, target: &str) {
        for result in BACKUP_RESULTS {
            self.backup_observations.remove(&BackupResultLabels {
                backup: name.to_string(),
                target: target.to_string(),
                result,
            });
        }
    }

    /// Records a configuration reload: applied, or refused (invalid, or a
    /// change that needs a restart).
    /// The shard group as last read: live members, the targets each
    /// claims, and the configured targets nobody claims.
    pub fn record_shards(&self, members: usize, claimed: &[(String, usize)], unowned: usize) {
        let g = &self.shards;
        g.members
            .get_or_create(&Vec::new())
            .set(gauge_value(members));
        g.unowned
            .get_or_create(&Vec::new())
            .set(gauge_value(unowned));
        g.targets.clear();
        for (member, n) in claimed {
            g.targets
                .get_or_create(&MemberLabels {
                    member: member.clone(),
                })
                .set(gauge_value(*n));
        }
    }

    pub fn record_reload(&self, applied: bool) {
        let result = if applied { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.reload_successful.set(i64::from(applied));
        if applied {
            self.reload_success_time
                .set(unix_seconds(std::time::SystemTime::now()));
        }
    }

    /// Records one request to the Alertmanager receiver: its status code and
    /// the alerts it carried.
    pub fn record_alertmanager(&self, code: u16, firing: u64, resolved: u64, duplicates: u64) {
        let code = ALERTMANAGER_CODES
            .iter()
            .find(|c| c.parse::<u16>().ok() == Some(code))
            .copied()
            .unwrap_or("other");
        self.am_requests.get_or_create(&CodeLabels { code }).inc();
        for (status, n) in [("firing", firing), ("resolved", resolved)] {
            if n > 0 {
                self.am_alerts
                    .get_or_create(&AlertStatusLabels { status })
                    .inc_by(n);
            }
        }
        if duplicates > 0 {
            self.am_duplicates.inc_by(duplicates);
        }
    }

    /// Records a refused request or connection; `reason` is one of
    /// [`HTTP_REJECTION_REASONS`].
    pub fn record_rejection(&self, reason: &'static str) {
        debug_assert!(HTTP_REJECTION_REASONS.contains(&reason), "{reason}");
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one finished poll.
    pub fn record_poll(&self, target: &str, seconds: f64, error: Option<PollErrorKind>) {
        let l = TargetLabels {
            target: target.to_string(),
        };
        self.polls.get_or_create(&l).inc();
        self.poll_duration.get_or_create(&l).observe(seconds);
        if let Some(kind) = error {
            self.poll_errors
                .get_or_create(&ErrorLabels {
                    target: target.to_string(),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }

    /// The OpenMetrics text of every metric, whole (tests and small
    /// callers; a scrape streams it with [`Metrics::write_to`]).
    pub fn render(&self) -> Bytes {
        self.render_as(Format::OpenMetrics)
    }

    /// Every metric in `format`, whole.
    pub fn render_as(&self, format: Format) -> Bytes {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        if let Err(e) = self.write_to(format, &mut out) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        Bytes::from(out)
    }
}

impl Metrics {
    /// Renders a target's series from the status just published, so that a
    /// scrape only copies them: with a thousand targets the rendering is
    /// spread over their polls instead of done at once by every scrape.
    pub fn published(&self, status: &Arc<TargetStatus>) {
        let _ = self.render_target(status);
    }

    fn render_target(&self, status: &Arc<TargetStatus>) -> Arc<TargetSeries> {
        let text = render_collector(TargetsCollector {
            targets: vec![status.clone()],
        });
        let mut series = self.split(&text, Some(&status.target));
        series.status = Arc::downgrade(status);
        let series = Arc::new(series);
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(status.target.clone(), series.clone());
        series
    }

    /// The target's series rendered from exactly this status, or rendered now.
    fn series_of(&self, status: &Arc<TargetStatus>) -> Arc<TargetSeries> {
        let cached = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&status.target)
            .cloned();
        match cached {
            // A `Weak` keeps the allocation, so no newer status can have its address.
            Some(s) if std::ptr::eq(s.status.as_ptr(), Arc::as_ptr(status)) => s,
            _ => self.render_target(status),
        }
    }

    /// Writes the whole exposition in `format` to `out`, piece by piece:
    /// the live instruments, then every state family once, its header
    /// followed by each target's samples and the global ones. The body is
    /// never held whole (a thousand targets' is megabytes): what `out`
    /// does with the pieces (a scrape gzips and streams them) bounds the
    /// memory a scrape takes.
    pub fn write_to(&self, format: Format, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let targets = self.state.all();
        let series: Vec<Arc<TargetSeries>> = targets.iter().map(|s| self.series_of(s)).collect();
        let global = self.split(
            &render_collector(GlobalCollector {
                state: self.state.clone(),
            }),
            None,
        );
        let headers = self
            .families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .headers
            .clone();
        // Each family's pieces: a target's stored lines, and its name.
        let mut buckets: Vec<Vec<(&str, &str)>> = vec![Vec::new(); headers.len()];
        let own = targets.iter().map(|s| s.target.as_str());
        for (s, target) in series.iter().map(|s| &**s).zip(own).chain([(&global, "")]) {
            let mut at = 0;
            for &(family, end) in &s.spans {
                buckets[family as usize].push((&s.samples[at..end as usize], target));
                at = end as usize;
            }
        }
        let mut live = String::with_capacity(64 * 1024);
        // Writing into a String cannot fail; an error here would be a bug in a collector.
        if let Err(e) =
            prometheus_client::encoding::text::encode_registry(&mut live, &self.registry)
        {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        let families = headers
            .iter()
            .map(|h| (h, family_name(h)))
            .zip(&buckets)
            .filter(|(_, s)| !s.is_empty());
        let mut lines = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => {
                out.write_all(live.as_bytes())?;
                for ((header, name), samples) in families {
                    out.write_all(header.as_bytes())?;
                    for &(stored, target) in samples {
                        lines.clear();
                        expand(stored, name, target, &mut lines);
                        out.write_all(lines.as_bytes())?;
                    }
                }
                out.write_all(b"# EOF\n")?;
            }
            Format::Text => {
                let mut text = TextFormat::default();
                text.learn(&live);
                for header in &headers {
                    text.learn(header);
                }
                let mut piece = String::with_capacity(live.len());
                text.convert(&live, &mut piece);
                out.write_all(piece.as_bytes())?;
                for ((header, name), samples) in families {
                    piece.clear();
                    text.convert(header, &mut piece);
                    out.write_all(piece.as_bytes())?;
                    for &(stored, target) in samples {
                        lines.clear();
                        expand(stored, name, target, &mut lines);
                        piece.clear();
                        text.convert(&lines, &mut piece);
                        out.write_all(piece.as_bytes())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts an OpenMetrics rendering into its families' sample lines, keeping
    /// each family's header once in [`Families`] and the lines of `target`
    /// without what [`compact`] leaves out.
    fn split(&self, text: &str, target: Option<&str>) -> TargetSeries {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = TargetSeries {
            samples: String::with_capacity(text.len()),
            ..TargetSeries::default()
        };
        let (mut header, mut name, mut current) = (String::new(), "", None);
        for line in text.split_inclusive('\n') {
            if line.starts_with("# HELP ") {
                if let Some(f) = current.take() {
                    out.spans.push((f, out.samples.len() as u32));
                }
                name = family_name(line);
                header.clear();
                header.push_str(line);
            } else if line.starts_with("# EOF") {
                continue;
            } else if line.starts_with('#') {
                header.push_str(line);
            } else {
                if current.is_none() {
                    current = Some(families.intern(name, &header));
                }
                compact(line, name, target, &mut out.samples);
            }
        }
        if let Some(f) = current {
            out.spans.push((f, out.samples.len() as u32));
        }
        // Kept until the target's next poll: not the headers' room too.
        out.samples.shrink_to_fit();
        out.spans.shrink_to_fit();
        out
    }
}

/// Stores a sample line of family `name` without what every line of a
/// target's family repeats: the family's name and the target's label,
/// `name<suffix>{target="<target>"<rest>` kept as `<suffix><rest>` (a
/// thousand targets' lines are the largest part of their memory). A line
/// of another shape (no target, or not first) is kept whole after a `#`.
fn compact(line: &str, name: &str, target: Option<&str>, out: &mut String) {
    let short = target.and_then(|target| {
        let rest = line.strip_prefix(name)?;
        let at = rest.find(['{', ' '])?;
        let (suffix, rest) = rest.split_at(at);
        let rest = rest
            .strip_prefix("{target=\"")?
            .strip_prefix(target)?
            .strip_prefix('"')?;
        rest.starts_with([',', '}']).then_some((suffix, rest))
    });
    match short {
        Some((suffix, rest)) => {
            out.push_str(suffix);
            out.push_str(rest);
        }
        None => {
            out.push('#');
            out.push_str(line);
        }
    }
}

/// The lines [`compact`] stored, whole again.
fn expand(stored: &str, name: &str, target: &str, out: &mut String) {
    for line in stored.split_inclusive('\n') {
        if let Some(whole) = line.strip_prefix('#') {
            out.push_str(whole);
            continue;
        }
        // A suffix is a name's characters: the rest starts at `,` or `}`.
        let at = line.find([',', '}']).unwrap_or(line.len());
        let (suffix, rest) = line.split_at(at);
        out.push_str(name);
        out.push_str(suffix);
        out.push_str("{target=\"");
        out.push_str(target);
        out.push('"');
        out.push_str(rest);
    }
}

/// One target's sample lines, family after family, as [`compact`] keeps them.
#[derive(Debug, Default)]
struct TargetSeries {
    /// The status they were rendered from.
    status: Weak<TargetStatus>,
    samples: String,
    /// Each family's index in [`Families`] and where its lines end in `samples`.
    spans: Vec<(u32, u32)>,
}

/// The state families' headers (`# HELP`, `# TYPE`, `# UNIT`), in the order first seen.
#[derive(Debug, Default)]
struct Families {
    index: HashMap<String, u32>,
    headers: Vec<String>,
}

/// The family a header (or its `# HELP` line) is of.
fn family_name(header: &str) -> &str {
    header
        .strip_prefix("# HELP ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default()
}

impl Families {
    fn intern(&mut self, name: &str, header: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.headers.len() as u32;
        self.headers.push(header.to_string());
        self.index.insert(name.to_string(), i);
        i
    }
}

/// One collector's OpenMetrics rendering, without `# EOF`.
fn render_collector(collector: impl Collector + 'static) -> String {
    let mut registry = Registry::with_prefix("dbwarden");
    registry.register_collector(Box::new(collector));
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &registry) {
        tracing::error!(error = %e, "rendering metrics failed");
    }
    out
}

/// Remediation's events, as the metrics above (remediation records through
/// this trait and does not know these metrics exist).
impl Recorder for Metrics {
    fn set_index_rebuild_held(&self, target: &str, reason: &str, n: usize) {
        self.index_rebuild_held
            .get_or_create(&HeldLabels {
                target: target.to_string(),
                reason: reason.to_string(),
            })
            .set(n as i64);
    }

    fn set_index_rebuild(&self, target: &str, started_at: Option<f64>) {
        self.index_rebuild_started
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .set(started_at.unwrap_or(0.0));
    }

    fn init_action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str) {
        let l = ActionLabels {
            target: target.to_string(),
            policy: policy.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
            mode: mode.to_string(),
        };
        let _ = self.actions.get_or_create(&l);
        self.lock_created().0.insert(l);
    }

    fn set_mode(&self, mode: &str) {
        for m in ["observe", "dry-run", "enforce"] {
            self.mode
                .get_or_create(&ModeLabels {
                    mode: m.to_string(),
                })
                .set(i64::from(m == mode));
        }
    }

    fn action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str) {
        let l = ActionLabels {
            target: target.to_string(),
            policy: policy.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
            mode: mode.to_string(),
        };
        self.actions.get_or_create(&l).inc();
        self.lock_created().0.insert(l);
    }

    fn set_candidates(&self, target: &str, policy: &str, n: usize) {
        let l = PolicyLabels {
            target: target.to_string(),
            policy: policy.to_string(),
        };
        self.candidates.get_or_create(&l).set(n as i64);
        self.lock_created().1.insert(l);
    }

    fn set_budget(&self, scope: &str, remaining: u32, exhausted: bool) {
        let l = ScopeLabels {
            scope: scope.to_string(),
        };
        self.budget_remaining
            .get_or_create(&l)
            .set(i64::from(remaining));
        self.budget_exhausted
            .get_or_create(&l)
            .set(i64::from(exhausted));
    }

    fn set_paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }

    fn polls_brought_forward(&self, target: &str, n: u64) {
        self.polls_brought_forward
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc_by(n);
    }

    fn set_actor(&self, target: &str, holder: &Holder, instance: &str) {
        let us = matches!(holder, Holder::Us);
        self.actor
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .set(i64::from(us));
        let name = match holder {
            Holder::Us => Some(instance.to_string()),
            Holder::Other(n) => Some(n.clone()),
            Holder::Nobody => None,
        };
        // One series per target: drop the previous holder's before setting the new one.
        let mut last = self.last_holder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = last.remove(target) {
            self.actor_holder.remove(&HolderLabels {
                target: target.to_string(),
                holder: prev,
            });
        }
        if let Some(holder) = name {
            self.actor_holder
                .get_or_create(&HolderLabels {
                    target: target.to_string(),
                    holder: holder.clone(),
                })
                .set(1);
            last.insert(target.to_string(), holder);
        }
    }

    fn audit_error(&self) {
        self.audit_errors.inc();
    }
}

/// Every metric family dbwarden can export, by full name as it appears in
/// the exposition (histograms and counters with their sample suffixes).
pub const METRIC_NAMES: &[&str] = &[
    "dbwarden_build_info",
    "dbwarden_config_last_reload_successful",
    "dbwarden_config_last_reload_success_timestamp_seconds",
    "dbwarden_config_reloads_total",
    "dbwarden_http_rejections_total",
    "dbwarden_polls_total",
    "dbwarden_poll_errors_total",
    "dbwarden_poll_duration_seconds_bucket",
    "dbwarden_poll_duration_seconds_sum",
    "dbwarden_poll_duration_seconds_count",
    "dbwarden_up",
    "dbwarden_last_poll_success_timestamp_seconds",
    "dbwarden_last_poll_timestamp_seconds",
    "dbwarden_open_connections",
    "dbwarden_check_failing",
    "dbwarden_check_pending",
    "dbwarden_check_value",
    "dbwarden_check_threshold",
    "dbwarden_check_for_seconds",
    "dbwarden_check_held_seconds",
    "dbwarden_check_excluded_sessions",
    "dbwarden_poll_interval_seconds",
    "dbwarden_target_info",
    "dbwarden_poll_timeout_seconds",
    "dbwarden_probe_up",
    "dbwarden_probe_duration_seconds",
    "dbwarden_probe_last_run_timestamp_seconds",
    "dbwarden_probe_series",
    "dbwarden_probe_failures_total",
    "dbwarden_postgres_data_checksums_enabled",
    "dbwarden_postgres_archive_mode",
    "dbwarden_postgres_info",
    "dbwarden_postgres_in_recovery",
    "dbwarden_postgres_sessions",
    "dbwarden_postgres_backends",
    "dbwarden_postgres_connections_used",
    "dbwarden_postgres_connections_usable",
    "dbwarden_postgres_connections_used_ratio",
    "dbwarden_postgres_longest_active_query_seconds",
    "dbwarden_postgres_longest_transaction_seconds",
    "dbwarden_postgres_longest_idle_in_transaction_seconds",
    "dbwarden_postgres_longest_idle_seconds",
    "dbwarden_postgres_lock_waiting_sessions",
    "dbwarden_postgres_lock_blocking_sessions",
    "dbwarden_postgres_standby_streaming",
    "dbwarden_postgres_standby_lag_seconds",
    "dbwarden_postgres_standby_replay_lag_bytes",
    "dbwarden_postgres_replication_slot_active",
    "dbwarden_postgres_replication_slot_retained_bytes",
    "dbwarden_postgres_wal_receiver_streaming",
    "dbwarden_postgres_replay_paused",
    "dbwarden_postgres_replay_delay_seconds",
    "dbwarden_postgres_replay_pending_bytes",
    "dbwarden_postgres_database_size_bytes",
    "dbwarden_postgres_checksum_failures_total",
    "dbwarden_postgres_deadlocks_total",
    "dbwarden_postgres_xid_age",
    "dbwarden_postgres_xid_wraparound_ratio",
    "dbwarden_postgres_archiver_failing",
    "dbwarden_postgres_archived_total",
    "dbwarden_postgres_archive_failed_total",
    "dbwarden_postgres_last_archive_age_seconds",
    "dbwarden_postgres_invalid_indexes",
    "dbwarden_postgres_replication_slot_wal_status",
    "dbwarden_postgres_replication_slot_safe_wal_size_bytes",
    "dbwarden_postgres_statistics_timestamp_seconds",
    "dbwarden_postgres_statistics_error",
    "dbwarden_postgres_xact_commit_total",
    "dbwarden_postgres_xact_rollback_total",
    "dbwarden_postgres_blocks_read_total",
    "dbwarden_postgres_blocks_hit_total",
    "dbwarden_postgres_temp_files_total",
    "dbwarden_postgres_temp_bytes_total",
    "dbwarden_postgres_conflicts_total",
    "dbwarden_postgres_database_sessions_total",
    "dbwarden_postgres_database_sessions_abnormal_total",
    "dbwarden_postgres_session_time_seconds_total",
    "dbwarden_postgres_active_time_seconds_total",
    "dbwarden_postgres_idle_in_transaction_time_seconds_total",
    "dbwarden_postgres_wal_records_total",
    "dbwarden_postgres_wal_fpi_total",
    "dbwarden_postgres_wal_bytes_total",
    "dbwarden_postgres_wal_buffers_full_total",
    "dbwarden_postgres_wal_writes_total",
    "dbwarden_postgres_wal_syncs_total",
    "dbwarden_postgres_checkpoints_total",
    "dbwarden_postgres_checkpoint_write_time_seconds_total",
    "dbwarden_postgres_checkpoint_sync_time_seconds_total",
    "dbwarden_postgres_checkpoint_buffers_written_total",
    "dbwarden_postgres_bgwriter_buffers_clean_total",
    "dbwarden_postgres_bgwriter_maxwritten_clean_total",
    "dbwarden_postgres_buffers_allocated_total",
    "dbwarden_postgres_statement_calls_total",
    "dbwarden_postgres_statement_time_seconds_total",
    "dbwarden_postgres_statement_rows_total",
    "dbwarden_postgres_statement_shared_blocks_hit_total",
    "dbwarden_postgres_statement_shared_blocks_read_total",
    "dbwarden_neo4j_info",
    "dbwarden_neo4j_ping_seconds",
    "dbwarden_neo4j_transactions",
    "dbwarden_neo4j_longest_transaction_seconds",
    "dbwarden_neo4j_slow_transactions",
    "dbwarden_neo4j_indexes",
    "dbwarden_neo4j_index_population_percent",
    "dbwarden_neo4j_index_rebuild_held",
    "dbwarden_neo4j_index_rebuild_started_timestamp_seconds",
    "dbwarden_neo4j_nodes",
    "dbwarden_neo4j_relationships",
    "dbwarden_neo4j_database_as_requested",
    "dbwarden_neo4j_cluster_members",
    "dbwarden_disk_size_bytes",
    "dbwarden_disk_free_bytes",
    "dbwarden_disk_free_ratio",
    "dbwarden_remediation_actions_total",
    "dbwarden_remediation_candidates",
    "dbwarden_remediation_budget_remaining",
    "dbwarden_remediation_budget_exhausted",
    "dbwarden_remediation_paused",
    "dbwarden_remediation_mode",
    "dbwarden_remediation_actor",
    "dbwarden_remediation_actor_holder",
    "dbwarden_remediation_polls_brought_forward_total",
    "dbwarden_remediation_audit_errors_total",
    "dbwarden_alertmanager_alerts_received_total",
    "dbwarden_alertmanager_duplicates_total",
    "dbwarden_alertmanager_requests_total",
    "dbwarden_kubernetes_api_reachable",
    "dbwarden_kubernetes_target_synced",
    "dbwarden_kubernetes_pod_phase",
    "dbwarden_kubernetes_pod_ready",
    "dbwarden_kubernetes_pod_lag_routing_ok",
    "dbwarden_kubernetes_replay_stalled_seconds",
    "dbwarden_kubernetes_pod_not_ready_since_timestamp_seconds",
    "dbwarden_kubernetes_pod_restarts_total",
    "dbwarden_kubernetes_pod_restarts_last_hour",
    "dbwarden_kubernetes_pod_last_termination",
    "dbwarden_kubernetes_pod_last_termination_timestamp_seconds",
    "dbwarden_kubernetes_pod_waiting",
    "dbwarden_kubernetes_container_memory_limit_bytes",
    "dbwarden_kubernetes_container_cpu_limit_cores",
    "dbwarden_kubernetes_statefulset_replicas_desired",
    "dbwarden_kubernetes_statefulset_replicas_ready",
    "dbwarden_kubernetes_volume_capacity_bytes",
    "dbwarden_kubernetes_volume_available_bytes",
    "dbwarden_kubernetes_volume_free_ratio",
    "dbwarden_kubernetes_lease_holder",
    "dbwarden_kubernetes_lease_leader",
    "dbwarden_shard_members",
    "dbwarden_shard_targets",
    "dbwarden_shard_unowned_targets",
    "dbwarden_backup_observations_total",
    "dbwarden_backup_up",
    "dbwarden_backup_error",
    "dbwarden_backup_last_success_timestamp_seconds",
    "dbwarden_backup_interval_seconds",
    "dbwarden_backup_objects",
    "dbwarden_backup_count",
    "dbwarden_backup_newest_timestamp_seconds",
    "dbwarden_backup_newest_size_bytes",
    "dbwarden_backup_previous_size_bytes",
    "dbwarden_backup_observation_duration_seconds",
];

/// The pod phases, each exported (0 or 1) so a missing series means a missing pod.
pub const POD_PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// The termination reasons exported as they are; any other is `other`.
pub const TERMINATION_REASONS: [&str; 6] = [
    "OOMKilled",
    "Error",
    "Completed",
    "ContainerCannotRun",
    "DeadlineExceeded",
    "Evicted",
];

/// The waiting reasons exported as they are; any other is `other`.
pub const WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ContainerCreating",
    "PodInitializing",
];

/// A reason as a bounded label value.
fn bounded(reason: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("other")
}

/// Renders the series of some targets' statuses: of one target when its
/// status is published ([`Metrics::published`]), of any target a scrape
/// finds without them.
#[derive(Debug)]
struct TargetsCollector {
    targets: Vec<Arc<TargetStatus>>,
}

/// Renders, at scrape time, what is not a target's own: the Kubernetes
/// loop's and the backup locations' series.
#[derive(Debug)]
struct GlobalCollector {
    state: Arc<SharedState>,
}

/// A family of samples for one metric name; `labels` are (name, value) pairs.
struct Fam<'a> {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels<'a>, f64)>,
}

/// A sample's labels, borrowed from the status it is rendered from where
/// they can be: a publish renders a target's 250-odd series, and a `String`
/// per label per series was most of its allocations.
type Labels<'a> = SmallVec<[(&'static str, Cow<'a, str>); 3]>;

impl<'a> Fam<'a> {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: MetricType) -> Self {
        Fam {
            name,
            help,
            unit,
            kind,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, None, MetricType::Gauge)
    }

    fn gauge_unit(name: &'static str, help: &'static str, unit: Unit) -> Self {
        Self::new(name, help, Some(unit), MetricType::Gauge)
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, None, MetricType::Counter)
    }

    fn push(&mut self, labels: Labels<'a>, v: f64) {
        self.samples.push((labels, v));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut m =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        for (labels, v) in &self.samples {
            let labels = labels.as_slice();
            let fe = m.encode_family(&labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(v.max(0.0)).encode(fe)?,
                _ => ConstGauge::new(*v).encode(fe)?,
            }
        }
        Ok(())
    }
}

fn t(target: &str) -> Labels<'_> {
    smallvec![("target", Cow::Borrowed(target))]
}

fn t2<'a>(target: &'a str, k: &'static str, v: &'a str) -> Labels<'a> {
    smallvec![("target", Cow::Borrowed(target)), (k, Cow::Borrowed(v))]
}

fn t2_owned<'a>(target: &'a str, k: &'static str, v: String) -> Labels<'a> {
    smallvec![("target", Cow::Borrowed(target)), (k, Cow::Owned(v))]
}

/// The families every kind of status joins: a target's own, and the
/// Kubernetes loop's and the backup locations' rows of the check families.
struct StateFams<'a> {
    up: Fam<'a>,
    last_ok: Fam<'a>,
    last: Fam<'a>,
    conns: Fam<'a>,
    failing: Fam<'a>,
    pending: Fam<'a>,
    value: Fam<'a>,
    threshold: Fam<'a>,
    hold: Fam<'a>,
    held: Fam<'a>,
    excluded: Fam<'a>,
    interval: Fam<'a>,
    timeout: Fam<'a>,
}

impl StateFams<'_> {
    fn new() -> Self {
        let up = Fam::gauge(
            "up",
            "1 when the latest poll of the target succeeded, 0 when it failed",
        );
        let last_ok = Fam::gauge_unit(
            "last_poll_success_timestamp",
            "Unix time of the latest successful poll",
            Unit::Seconds,
        );
        let last = Fam::gauge_unit(
            "last_poll_timestamp",
            "Unix time of the latest finished poll",
            Unit::Seconds,
        );
        let conns = Fam::gauge(
            "open_connections",
            "Connections dbwarden holds open to the target",
        );
        let failing = Fam::gauge(
            "check_failing",
            "1 when the check fails (its condition held for its `for` duration)",
        );
        let pending = Fam::gauge(
            "check_pending",
            "1 when the check's condition holds but not yet for its `for` duration",
        );
        let value = Fam::gauge(
            "check_value",
            "The value the check measured, in the check's base unit",
        );
        let threshold = Fam::gauge(
            "check_threshold",
            "The configured threshold of the check, in the check's base unit",
        );
        let hold = Fam::gauge_unit(
            "check_for",
            "How long the condition must hold before the check fails",
            Unit::Seconds,
        );
        let held = Fam::gauge_unit(
            "check_held",
            "How long the check's condition has held so far (0 when it does not hold)",
            Unit::Seconds,
        );
        let excluded = Fam::gauge(
            "check_excluded_sessions",
            "Sessions a scoped check left out, by the key of its scope that did (ignore_users, match_applications, ...)",
        );
        let interval = Fam::gauge_unit(
            "poll_interval",
            "The configured interval between polls of the target",
            Unit::Seconds,
        );
        let timeout = Fam::gauge_unit(
            "poll_timeout",
            "The configured limit after which a poll is abandoned",
            Unit::Seconds,
        );
        StateFams {
            up,
            last_ok,
            last,
            conns,
            failing,
            pending,
            value,
            threshold,
            hold,
            held,
            excluded,
            interval,
            timeout,
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in [
            &self.up,
            &self.last_ok,
            &self.last,
            &self.conns,
            &self.failing,
            &self.pending,
            &self.value,
            &self.threshold,
            &self.hold,
            &self.held,
            &self.excluded,
            &self.interval,
            &self.timeout,
        ] {
            f.encode(encoder)?;
        }
        Ok(())
    }
}

impl Collector for TargetsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = &self.targets;
        let mut f = StateFams::new();
        for s in targets {
            f.interval.push(t(&s.target), s.poll_interval_seconds);
            f.timeout.push(t(&s.target), s.poll_timeout_seconds);
            f.up.push(t(&s.target), if s.up { 1.0 } else { 0.0 });
            if let Some(at) = s.last_success_at {
                f.last_ok.push(t(&s.target), unix_seconds(at));
            }
            if let Some(at) = s.last_poll_at {
                f.last.push(t(&s.target), unix_seconds(at));
            }
            f.conns.push(t(&s.target), f64::from(s.open_connections));
            for c in &s.checks {
                let l = || t2(&s.target, "check", c.check.as_str());
                f.threshold.push(l(), c.threshold);
                f.hold.push(l(), c.for_seconds);
                if c.status == CheckStatus::Unknown {
                    continue;
                }
                f.failing.push(
                    l(),
                    if c.status == CheckStatus::Fail {
                        1.0
                    } else {
                        0.0
                    },
                );
                f.pending.push(
                    l(),
                    if c.status == CheckStatus::Pending {
                        1.0
                    } else {
                        0.0
                    },
                );
                f.held.push(l(), c.held_seconds);
                if let Some(v) = c.value {
                    f.value.push(l(), v);
                }
                for (reason, n) in c.excluded.iter().flatten() {
                    let mut labels = l();
                    labels.push(("reason", Cow::from(reason.as_str())));
                    f.excluded.push(labels, *n as f64);
                }
            }
            // The probes' checks join the same families, `check="probe:<name>[:<column>]"`.
            for c in s.probes.iter().flat_map(|p| p.checks.iter()) {
                let l = || t2(&s.target, "check", &c.check);
                f.threshold.push(l(), c.threshold);
                f.hold.push(l(), c.for_seconds);
                if c.status == CheckStatus::Unknown {
                    continue;
                }
                let is = |st| if c.status == st { 1.0 } else { 0.0 };
                f.failing.push(l(), is(CheckStatus::Fail));
                f.pending.push(l(), is(CheckStatus::Pending));
                f.held.push(l(), c.held_seconds);
                if let Some(v) = c.value {
                    f.value.push(l(), v);
                }
            }
        }
        f.encode(&mut encoder)?;
        if !targets.is_empty() {
            // Every configured target and its kind, from start-up on, so
            // rules and dashboards can tell PostgreSQL from Neo4j targets
            // even while a target is down.
            let mut m = encoder.encode_descriptor(
                "target",
                "Every configured target and its kind (postgres or neo4j)",
                None,
                MetricType::Info,
            )?;
            for s in targets.iter() {
                let labels = t(&s.target);
                let labels = labels.as_slice();
                let mut fe = m.encode_family(&labels)?;
                fe.encode_info(&vec![("kind", s.kind.to_string())])?;
            }
        }
        encode_postgres(targets, &mut encoder)?;
        encode_neo4j(targets, &mut encoder)?;
        encode_probes(targets, &mut encoder)?;
        Ok(())
    }
}

impl Collector for GlobalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kube = self.state.kubernetes();
        let backups = self.state.backups();
        let mut f = StateFams::new();
        // The Kubernetes checks join the same check families (no `for`: they have no hold).
        for c in kube.iter().flat_map(|k| k.checks.iter()) {
            let l = || t2(&c.target, "check", c.check.as_str());
            if let Some(th) = c.threshold {
                f.threshold.push(l(), th);
            }
            if c.status == crate::kubernetes::checks::KubeCheckStatus::Unknown {
                continue;
            }
            let fail = c.status == crate::kubernetes::checks::KubeCheckStatus::Fail;
            f.failing.push(l(), if fail { 1.0 } else { 0.0 });
            if let Some(v) = c.observed {
                f.value.push(l(), v);
            }
        }
        // The backup checks too, with the location as a `backup` label.
        for b in &backups {
            for c in &b.checks {
                let l = || {
                    smallvec![
                        ("target", Cow::from(b.target.as_str())),
                        ("check", Cow::from(c.check.as_str())),
                        ("backup", Cow::from(b.name.as_str())),
                    ]
                };
                f.threshold.push(l(), c.threshold);
                f.hold.push(l(), c.for_seconds);
                if c.status == CheckStatus::Unknown {
                    continue;
                }
                f.failing
                    .push(l(), f64::from(u8::from(c.status == CheckStatus::Fail)));
                f.pending
                    .push(l(), f64::from(u8::from(c.status == CheckStatus::Pending)));
                f.held.push(l(), c.held_seconds);
                if let Some(v) = c.value {
                    f.value.push(l(), v);
                }
            }
        }
        f.encode(&mut encoder)?;
        if let Some(k) = &kube {
            encode_kubernetes(k, &mut encoder)?;
        }
        encode_backups(&backups, &mut encoder)?;
        Ok(())
    }
}

fn encode_backups(
    backups: &[Arc<crate::state::BackupStatus>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut up = Fam::gauge(
        "backup_up",
        "1 when the latest listing of the backup location succeeded, 0 when it failed",
    );
    let mut error = Fam::gauge(
        "backup_error",
        "1 for the kind of the latest observation's failure (not_found, credentials, unreachable, timeout, config, other); absent while it succeeds",
    );
    let mut last_ok = Fam::gauge_unit(
        "backup_last_success_timestamp",
        "Unix time of the latest successful observation of the location",
        Unit::Seconds,
    );
    let mut interval = Fam::gauge_unit(
        "backup_interval",
        "The configured interval between observations of the location",
        Unit::Seconds,
    );
    let mut objects = Fam::gauge(
        "backup_objects",
        "Objects listed under the location's prefix",
    );
    let mut count = Fam::gauge(
        "backup_count",
        "Backups at the location (objects whose names match the pattern)",
    );
    let mut newest_at = Fam::gauge_unit(
        "backup_newest_timestamp",
        "Unix time the newest backup was last modified, as the store reports it",
        Unit::Seconds,
    );
    let mut newest_size = Fam::gauge_unit(
        "backup_newest_size",
        "Size of the newest backup",
        Unit::Bytes,
    );
    let mut previous_size = Fam::gauge_unit(
        "backup_previous_size",
        "Size of the backup before the newest",
        Unit::Bytes,
    );
    let mut duration = Fam::gauge_unit(
        "backup_observation_duration",
        "How long the latest successful observation (listing and integrity read) took",
        Unit::Seconds,
    );
    for b in backups {
        let l = || {
            smallvec![
                ("backup", Cow::from(b.name.as_str())),
                ("target", Cow::from(b.target.as_str()))
            ]
        };
        up.push(l(), f64::from(u8::from(b.up)));
        interval.push(l(), b.interval_seconds);
        if let Some(e) = &b.last_error {
            let mut k = l();
            k.push(("kind", Cow::from(e.kind.as_str())));
            error.push(k, 1.0);
        }
        if let Some(at) = b.last_success_at {
            last_ok.push(l(), unix_seconds(at));
        }
        let Some(s) = &b.snapshot else {
            continue;
        };
        objects.push(l(), s.objects as f64);
        count.push(l(), s.backups as f64);
        duration.push(l(), s.duration_seconds);
        if let Some(n) = &s.newest {
            newest_at.push(l(), n.modified_unix_ms as f64 / 1000.0);
            newest_size.push(l(), n.size_bytes as f64);
        }
        if let Some(p) = &s.previous {
            previous_size.push(l(), p.size_bytes as f64);
        }
    }
    for f in [
        &up,
        &error,
        &last_ok,
        &interval,
        &objects,
        &count,
        &newest_at,
        &newest_size,
        &previous_size,
        &duration,
    ] {
        f.encode(encoder)?;
    }
    Ok(())
}

/// The probes: their runs (`dbwarden_probe_*{target, probe}`), and each
/// value column of each probe's latest successful result as its own family,
/// `dbwarden_probe_<probe>_<column>{target, <label columns>}` (the label
/// names differ from probe to probe, so one family for all would mix label
/// sets; names are checked at load time never to collide). A target that is
/// down, or a probe whose latest run failed, exports no values.
fn encode_probes(
    targets: &[Arc<TargetStatus>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut up = Fam::gauge(
        "probe_up",
        "1 when the probe's latest run succeeded, 0 when it failed",
    );
    let mut duration = Fam::gauge_unit(
        "probe_duration",
        "How long the probe's latest run took",
        Unit::Seconds,
    );
    let mut last = Fam::gauge_unit(
        "probe_last_run_timestamp",
        "Unix time the probe's latest run started",
        Unit::Seconds,
    );
    let mut series = Fam::gauge(
        "probe_series",
        "Series the probe's latest successful result exports (0 when it failed)",
    );
    let mut failures = Fam::counter(
        "probe_failures",
        "Failed probe runs since start, by kind (timeout, lock_timeout, read_only, query, columns, series, connection)",
    );
    // Value families by name, over every target: (help, samples).
    type Samples = Vec<(Vec<(String, String)>, f64)>;
    let mut values: std::collections::BTreeMap<String, (String, Samples)> = Default::default();
    for s in targets {
        for p in &s.probes {
            let l = || t2(&s.target, "probe", &p.probe);
            up.push(l(), if p.ok { 1.0 } else { 0.0 });
            duration.push(l(), p.duration_seconds);
            last.push(l(), unix_seconds(p.last_run_at));
            series.push(l(), p.series as f64);
            for kind in crate::observe::probes::ProbeErrorKind::ALL {
                let n = p.failures.get(kind.as_str()).copied().unwrap_or(0);
                let mut labels = l();
                labels.push(("kind", Cow::from(kind.as_str())));
                failures.push(labels, n as f64);
            }
            let Some(rows) = &p.rows else { continue };
            for (i, (column, kind)) in rows.values.iter().enumerate() {
                let (_, samples) = values
                    .entry(format!("probe_{}_{column}", p.probe))
                    .or_insert_with(|| {
                        let unit = match kind {
                            crate::observe::probes::ColumnKind::Timestamp => " (Unix seconds)",
                            _ => "",
                        };
                        (
                            format!("Probe {}: column {column}{unit}", p.probe),
                            Vec::new(),
                        )
                    });
                for r in &rows.rows {
                    let Some(v) = r.values[i] else { continue };
                    let mut labels = vec![("target".to_string(), s.target.clone())];
                    labels.extend(rows.labels.iter().cloned().zip(r.labels.iter().cloned()));
                    samples.push((labels, v));
                }
            }
        }
    }
    for f in [&up, &duration, &last, &series, &failures] {
        f.encode(encoder)?;
    }
    for (name, (help, samples)) in &values {
        if samples.is_empty() {
            continue;
        }
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            let labels = labels.as_slice();
            let fe = m.encode_family(&labels)?;
            ConstGauge::new(*v).encode(fe)?;
        }
    }
    Ok(())
}

fn encode_kubernetes(
    k: &crate::state::KubernetesStatus,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let snap = &k.snapshot;
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let mut reachable = Fam::gauge(
        "kubernetes_api_reachable",
        "1 when every pod watch reaches the API server, 0 when one fails (the pod facts are then the last ones seen)",
    );
    reachable.push(Labels::new(), b(snap.api_reachable));
    let mut synced = Fam::gauge(
        "kubernetes_target_synced",
        "1 once the target's pods were listed completely and its watch has no current error",
    );
    for w in &snap.targets {
        synced.push(t(&w.target), b(w.synced && w.error.is_none()));
    }
    fn pod(p: &crate::kubernetes::snapshot::PodFacts) -> Labels<'_> {
        smallvec![
            ("target", Cow::from(p.target.as_str())),
            ("pod", Cow::from(p.name.as_str()))
        ]
    }
    let mut phase = Fam::gauge(
        "kubernetes_pod_phase",
        "1 for the pod's current phase, 0 for the others",
    );
    let mut ready = Fam::gauge(
        "kubernetes_pod_ready",
        "1 when the pod's Ready condition is True",
    );
    let mut lag_ok = Fam::gauge(
        "kubernetes_pod_lag_routing_ok",
        "The pod's readiness gate condition dbwarden.io/replication-lag-ok: 0 while lag routing holds it out of its Service (absent without the condition)",
    );
    let mut not_ready_since = Fam::gauge_unit(
        "kubernetes_pod_not_ready_since_timestamp",
        "Unix time the pod last became not ready (absent while ready)",
        Unit::Seconds,
    );
    let mut restarts = Fam::counter(
        "kubernetes_pod_restarts",
        "Container restarts of the pod, summed over its containers (restartCount)",
    );
    let mut restarts_hour = Fam::gauge(
        "kubernetes_pod_restarts_last_hour",
        "Restarts the watcher saw within the last hour (a lower bound in dbwarden's first hour)",
    );
    let mut termination = Fam::gauge(
        "kubernetes_pod_last_termination",
        "1 for the reason of the pod's most recent container termination (OOMKilled, Error, ..., other)",
    );
    let mut termination_at = Fam::gauge_unit(
        "kubernetes_pod_last_termination_timestamp",
        "Unix time of the pod's most recent container termination",
        Unit::Seconds,
    );
    let mut waiting = Fam::gauge(
        "kubernetes_pod_waiting",
        "1 while a container of the pod waits, by reason (CrashLoopBackOff, ..., other)",
    );
    let mut memory = Fam::gauge_unit(
        "kubernetes_container_memory_limit",
        "The container's memory limit",
        Unit::Bytes,
    );
    let mut cpu = Fam::gauge(
        "kubernetes_container_cpu_limit_cores",
        "The container's CPU limit, in cores",
    );
    for p in &snap.pods {
        for ph in POD_PHASES {
            let mut l = pod(p);
            l.push(("phase", Cow::from(ph)));
            phase.push(l, b(p.phase == ph));
        }
        ready.push(pod(p), b(p.ready));
        if let Some(ok) = p.lag_ok {
            lag_ok.push(pod(p), b(ok));
        }
        if let Some(ms) = p.not_ready_since_ms {
            not_ready_since.push(pod(p), ms as f64 / 1000.0);
        }
        restarts.push(pod(p), f64::from(p.restart_count));
        restarts_hour.push(pod(p), f64::from(p.restarts_last_hour));
        if let Some(term) = &p.last_termination {
            let mut l = pod(p);
            let reason = term.reason.as_deref().unwrap_or("other");
            l.push(("reason", Cow::from(bounded(reason, &TERMINATION_REASONS))));
            termination.push(l, 1.0);
            if let Some(ms) = term.finished_at_ms {
                termination_at.push(pod(p), ms as f64 / 1000.0);
            }
        }
        if let Some(reason) = &p.waiting_reason {
            let mut l = pod(p);
            l.push(("reason", Cow::from(bounded(reason, &WAITING_REASONS))));
            waiting.push(l, 1.0);
        }
        for c in &p.containers {
            let l = || {
                let mut l = pod(p);
                l.push(("container", Cow::from(c.name.as_str())));
                l
            };
            if let Some(m) = c.memory_limit_bytes {
                memory.push(l(), m as f64);
            }
            if let Some(m) = c.cpu_limit_millicores {
                cpu.push(l(), m as f64 / 1000.0);
            }
        }
    }
    let mut desired = Fam::gauge(
        "kubernetes_statefulset_replicas_desired",
        "Replicas the StatefulSet asks for (spec.replicas)",
    );
    let mut sts_ready = Fam::gauge(
        "kubernetes_statefulset_replicas_ready",
        "Ready replicas of the StatefulSet",
    );
    for s in &snap.statefulsets {
        desired.push(
            t2(&s.target, "statefulset", &s.name),
            f64::from(s.desired_replicas),
        );
        sts_ready.push(
            t2(&s.target, "statefulset", &s.name),
            f64::from(s.ready_replicas),
        );
    }
    let mut capacity = Fam::gauge_unit(
        "kubernetes_volume_capacity",
        "Capacity of a pod's persistent volume (kubelet stats summary)",
        Unit::Bytes,
    );
    let mut available = Fam::gauge_unit(
        "kubernetes_volume_available",
        "Bytes available on a pod's persistent volume (kubelet stats summary)",
        Unit::Bytes,
    );
    let mut free_ratio = Fam::gauge(
        "kubernetes_volume_free_ratio",
        "Available over capacity of a pod's persistent volume",
    );
    for v in &snap.volumes {
        let l = || {
            smallvec![
                ("target", Cow::from(v.target.as_str())),
                ("pod", Cow::from(v.pod.as_str())),
                ("pvc", Cow::from(v.pvc.as_str())),
            ]
        };
        capacity.push(l(), v.capacity_bytes as f64);
        available.push(l(), v.available_bytes as f64);
        if let Some(r) = v.free_ratio() {
            free_ratio.push(l(), r);
        }
    }
    let mut holder = Fam::gauge(
        "kubernetes_lease_holder",
        "The replica holding the Lease, as this instance last read it (value 1; absent while nobody holds it)",
    );
    let mut leader = Fam::gauge(
        "kubernetes_lease_leader",
        "1 when this instance holds the Lease and may act on Kubernetes objects",
    );
    if let Some(l) = &k.lease {
        if let Some(h) = &l.holder {
            holder.push(smallvec![("holder", Cow::from(h.as_str()))], 1.0);
        }
        leader.push(Labels::new(), b(l.is_leader));
    }
    let mut replay_stalled = Fam::gauge_unit(
        "kubernetes_replay_stalled",
        "With [kubernetes.eviction] rebuild_after: how long the standby's replay has stood still with WAL to replay (0 while it moves or has nothing to replay)",
        Unit::Seconds,
    );
    for (target, secs) in &k.replay_stalled_seconds {
        replay_stalled.push(t(target), *secs);
    }
    for f in [
        &replay_stalled,
        &reachable,
        &synced,
        &phase,
        &ready,
        &lag_ok,
        &not_ready_since,
        &restarts,
        &restarts_hour,
        &termination,
        &termination_at,
        &waiting,
        &memory,
        &cpu,
        &desired,
        &sts_ready,
        &capacity,
        &available,
        &free_ratio,
        &holder,
        &leader,
    ] {
        f.encode(encoder)?;
    }
    Ok(())
}

/// At most this many indexes per target get a population series.
const MAX_INDEX_SERIES: usize = 50;

fn encode_neo4j(
    targets: &[Arc<TargetStatus>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let live: Vec<(&str, &crate::evaluate::Neo4jSummary)> = targets
        .iter()
        .filter(|s| s.up)
        .filter_map(|s| s.neo4j.as_ref().map(|n| (s.target.as_str(), n)))
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    {
        let mut m = encoder.encode_descriptor(
            "neo4j",
            "Neo4j server version and edition",
            None,
            MetricType::Info,
        )?;
        for (target, n) in &live {
            let labels = t(target);
            let labels = labels.as_slice();
            let mut fe = m.encode_family(&labels)?;
            fe.encode_info(&vec![
                ("version", n.version.clone()),
                ("edition", n.edition.clone()),
            ])?;
        }
    }
    let db = |target, database| t2(target, "database", database);
    let mut ping = Fam::gauge_unit(
        "neo4j_ping",
        "Round trip of RETURN 1 in the latest poll",
        Unit::Seconds,
    );
    let mut txs = Fam::gauge(
        "neo4j_transactions",
        "Running transactions by database and status (SHOW TRANSACTIONS; dbwarden's own excluded)",
    );
    let mut longest = Fam::gauge_unit(
        "neo4j_longest_transaction",
        "Elapsed time of the longest transaction per database (0 when none)",
        Unit::Seconds,
    );
    let mut slow = Fam::gauge(
        "neo4j_slow_transactions",
        "Transactions running longer than the slow_queries threshold, per database",
    );
    let mut indexes = Fam::gauge(
        "neo4j_indexes",
        "Indexes by database and state (ONLINE, POPULATING, FAILED)",
    );
    let mut population = Fam::gauge(
        "neo4j_index_population_percent",
        "Population progress of each index that is not ONLINE (POPULATING, or FAILED), per database; absent once ONLINE",
    );
    let mut nodes = Fam::gauge("neo4j_nodes", "Nodes per database (count store)");
    let mut rels = Fam::gauge(
        "neo4j_relationships",
        "Relationships per database (count store)",
    );
    let mut as_requested = Fam::gauge(
        "neo4j_database_as_requested",
        "1 when the database's current status is its requested status (SHOW DATABASES, 4.4+)",
    );
    let mut members = Fam::gauge(
        "neo4j_cluster_members",
        "Cluster members by health (only where clustered)",
    );
    for (target, n) in &live {
        ping.push(t(target), n.ping_seconds);
        for (database, by_status) in &n.transactions {
            for status in ["Running", "Blocked", "Closing", "Terminated"] {
                let mut l = db(target, database);
                l.push(("status", Cow::from(status)));
                txs.push(l, by_status.get(status).copied().unwrap_or(0) as f64);
            }
            for (status, count) in by_status {
                if !matches!(
                    status.as_str(),
                    "Running" | "Blocked" | "Closing" | "Terminated"
                ) {
                    let mut l = db(target, database);
                    l.push(("status", Cow::from(status.as_str())));
                    txs.push(l, *count as f64);
                }
            }
        }
        for (database, secs) in &n.longest_transaction_seconds {
            longest.push(db(target, database), *secs);
        }
        for (database, count) in &n.slow_transactions {
            slow.push(db(target, database), *count as f64);
        }
        for (database, by_state) in &n.indexes {
            for state in ["ONLINE", "POPULATING", "FAILED"] {
                let mut l = db(target, database);
                l.push(("state", Cow::from(state)));
                indexes.push(l, by_state.get(state).copied().unwrap_or(0) as f64);
            }
            for (state, count) in by_state {
                if !matches!(state.as_str(), "ONLINE" | "POPULATING" | "FAILED") {
                    let mut l = db(target, database);
                    l.push(("state", Cow::from(state.as_str())));
                    indexes.push(l, *count as f64);
                }
            }
        }
        // Bounded: the indexes not ONLINE, at most MAX_INDEX_SERIES per target.
        for i in n.indexes_not_online.iter().take(MAX_INDEX_SERIES) {
            let mut l = db(target, &i.database);
            l.push(("index", Cow::from(i.name.as_str())));
            population.push(l, i.population_percent);
        }
        for (database, count) in &n.nodes {
            nodes.push(db(target, database), *count as f64);
        }
        for (database, count) in &n.relationships {
            rels.push(db(target, database), *count as f64);
        }
        // A clustered database is listed once per member hosting it: it is
        // as requested when it is so on every member.
        let mut per_db = std::collections::BTreeMap::<&str, bool>::new();
        for d in &n.databases {
            let ok = d.current_status.eq_ignore_ascii_case(&d.requested_status);
            *per_db.entry(d.name.as_str()).or_insert(true) &= ok;
        }
        for (database, ok) in per_db {
            as_requested.push(db(target, database), if ok { 1.0 } else { 0.0 });
        }
        if let Some(cluster) = &n.cluster {
            let healthy = cluster.iter().filter(|m| m.healthy).count();
            members.push(t2(target, "health", "healthy"), healthy as f64);
            members.push(
                t2(target, "health", "unhealthy"),
                (cluster.len() - healthy) as f64,
            );
        }
    }
    for f in [
        &ping,
        &txs,
        &longest,
        &slow,
        &indexes,
        &population,
        &nodes,
        &rels,
        &as_requested,
        &members,
    ] {
        f.encode(encoder)?;
    }
    Ok(())
}

fn encode_postgres(
    targets: &[Arc<TargetStatus>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    // Only targets whose latest poll succeeded export server state: when a
    // target is down its state is unknown, and `dbwarden_up` says so.
    let live: Vec<(&TargetStatus, &PgSnapshot)> = targets
        .iter()
        .filter(|s| s.up)
        .filter_map(|s| s.snapshot.as_deref().map(|snap| (s.as_ref(), snap)))
        .collect();

    {
        let mut m = encoder.encode_descriptor(
            "postgres",
            "PostgreSQL server version and role",
            None,
            MetricType::Info,
        )?;
        for (s, snap) in &live {
            let target = t(&s.target);
            let target = target.as_slice();
            let fe = m.encode_family(&target)?;
            let info = vec![
                ("version", snap.server.version_num.to_string()),
                ("role", snap.server.role().as_str().to_string()),
            ];
            let mut fe = fe;
            fe.encode_info(&info)?;
        }
    }

    let mut checksums_on = Fam::gauge(
        "postgres_data_checksums_enabled",
        "1 when the cluster has data checksums (without them corruption goes undetected)",
    );
    let mut arch_mode = Fam::gauge(
        "postgres_archive_mode",
        "1 when WAL archiving is enabled (archive_mode is not off)",
    );
    let mut in_recovery = Fam::gauge(
        "postgres_in_recovery",
        "1 when the server is a standby in recovery",
    );
    let mut sessions = Fam::gauge(
        "postgres_sessions",
        "Client sessions by state (pg_stat_activity)",
    );
    let mut backends = Fam::gauge(
        "postgres_backends",
        "Server processes by backend_type (pg_stat_activity)",
    );
    let mut used = Fam::gauge(
        "postgres_connections_used",
        "Client connections counting against max_connections",
    );
    let mut usable = Fam::gauge(
        "postgres_connections_usable",
        "Connection slots ordinary roles can use: max_connections - superuser_reserved_connections",
    );
    let mut used_ratio = Fam::gauge(
        "postgres_connections_used_ratio",
        "Connections used over usable slots",
    );
    let mut q = Fam::gauge_unit(
        "postgres_longest_active_query",
        "Age of the longest-running active query",
        Unit::Seconds,
    );
    let mut xact = Fam::gauge_unit(
        "postgres_longest_transaction",
        "Age of the oldest open transaction",
        Unit::Seconds,
    );
    let mut iit = Fam::gauge_unit(
        "postgres_longest_idle_in_transaction",
        "Longest time a session has been idle in transaction",
        Unit::Seconds,
    );
    let mut idle = Fam::gauge_unit(
        "postgres_longest_idle",
        "Longest time a session has been idle",
        Unit::Seconds,
    );
    let mut waiting = Fam::gauge(
        "postgres_lock_waiting_sessions",
        "Sessions waiting on a lock",
    );
    let mut blocking = Fam::gauge(
        "postgres_lock_blocking_sessions",
        "Distinct sessions that other sessions wait on",
    );
    let mut sb_stream = Fam::gauge(
        "postgres_standby_streaming",
        "1 when the standby's state is streaming (seen from the primary)",
    );
    let mut sb_lag = Fam::gauge_unit(
        "postgres_standby_lag",
        "Standby lag by stage (write, flush, replay), seen from the primary; 0 when caught up",
        Unit::Seconds,
    );
    let mut sb_bytes = Fam::gauge_unit(
        "postgres_standby_replay_lag",
        "WAL bytes written on the primary and not yet replayed by the standby",
        Unit::Bytes,
    );
    let mut slot_active = Fam::gauge(
        "postgres_replication_slot_active",
        "1 when a replication slot is in use",
    );
    let mut slot_bytes = Fam::gauge_unit(
        "postgres_replication_slot_retained",
        "WAL bytes a replication slot keeps from being removed",
        Unit::Bytes,
    );
    let mut rx = Fam::gauge(
        "postgres_wal_receiver_streaming",
        "On a standby: 1 when the WAL receiver is streaming",
    );
    let mut paused = Fam::gauge(
        "postgres_replay_paused",
        "On a standby: 1 when WAL replay is paused",
    );
    let mut delay = Fam::gauge_unit(
        "postgres_replay_delay",
        "On a standby: seconds behind the primary (0 when everything received is replayed and the receiver streams)",
        Unit::Seconds,
    );
    let mut pending_b = Fam::gauge_unit(
        "postgres_replay_pending",
        "On a standby: WAL received but not yet replayed",
        Unit::Bytes,
    );
    let mut db_size = Fam::gauge_unit(
        "postgres_database_size",
        "Database size on disk (read on a slower cadence)",
        Unit::Bytes,
    );
    let mut cks = Fam::counter(
        "postgres_checksum_failures",
        "Data checksum failures (pg_stat_database)",
    );
    let mut dl = Fam::counter(
        "postgres_deadlocks",
        "Deadlocks detected (pg_stat_database)",
    );
    let mut xid = Fam::gauge(
        "postgres_xid_age",
        "Transactions since the database's oldest unfrozen XID (age(datfrozenxid))",
    );
    let mut wrap = Fam::gauge(
        "postgres_xid_wraparound_ratio",
        "Worst age(datfrozenxid) over 2^31",
    );
    let mut arch_fail = Fam::gauge(
        "postgres_archiver_failing",
        "1 when the last WAL archive attempt failed",
    );
    let mut archived = Fam::counter(
        "postgres_archived",
        "WAL segments archived (pg_stat_archiver)",
    );
    let mut arch_failed = Fam::counter(
        "postgres_archive_failed",
        "Failed WAL archive attempts (pg_stat_archiver)",
    );
    let mut arch_age = Fam::gauge_unit(
        "postgres_last_archive_age",
        "Time since the last WAL segment was archived",
        Unit::Seconds,
    );
    let mut invalid = Fam::gauge(
        "postgres_invalid_indexes",
        "Invalid indexes in the connected database",
    );
    let mut disk_size = Fam::gauge_unit(
        "disk_size",
        "Size of a watched volume (statvfs)",
        Unit::Bytes,
    );
    let mut disk_free = Fam::gauge_unit(
        "disk_free",
        "Bytes available to unprivileged users on a watched volume",
        Unit::Bytes,
    );
    let mut disk_ratio = Fam::gauge("disk_free_ratio", "Available over size of a watched volume");

    for (s, snap) in &live {
        let n = s.target.as_str();
        in_recovery.push(t(n), if snap.server.in_recovery { 1.0 } else { 0.0 });
        checksums_on.push(t(n), if snap.server.data_checksums { 1.0 } else { 0.0 });
        if let Some(sum) = &s.summary {
            for (state, count) in &sum.sessions_by_state {
                sessions.push(t2(n, "state", state), *count as f64);
            }
            for (bt, count) in &sum.backends_by_type {
                backends.push(t2(n, "backend_type", bt), *count as f64);
            }
            used.push(t(n), sum.connections_used as f64);
            usable.push(t(n), sum.connections_usable as f64);
            used_ratio.push(
                t(n),
                sum.connections_used as f64 / sum.connections_usable.max(1) as f64,
            );
            q.push(t(n), sum.longest_active_query_seconds);
            xact.push(t(n), sum.longest_transaction_seconds);
            iit.push(t(n), sum.longest_idle_in_transaction_seconds);
            idle.push(t(n), sum.longest_idle_seconds);
            waiting.push(t(n), sum.lock_waiters as f64);
            blocking.push(t(n), sum.lock_blockers as f64);
            wrap.push(t(n), sum.wraparound_ratio);
        }
        for sb in &snap.standbys {
            sb_stream.push(
                t2(n, "standby", &sb.name),
                if sb.state == "streaming" { 1.0 } else { 0.0 },
            );
            for (stage, v) in [
                ("write", sb.write_lag_seconds),
                ("flush", sb.flush_lag_seconds),
                ("replay", sb.replay_lag_seconds),
            ] {
                let mut l = t2(n, "standby", &sb.name);
                l.push(("stage", Cow::from(stage)));
                // NULL lag means the standby is caught up with an idle primary.
                sb_lag.push(l, v.unwrap_or(0.0));
            }
            if let Some(b) = sb.replay_lag_bytes {
                sb_bytes.push(t2(n, "standby", &sb.name), b);
            }
        }
        for slot in &snap.slots {
            slot_active.push(
                t2(n, "slot", &slot.name),
                if slot.active { 1.0 } else { 0.0 },
            );
            if let Some(b) = slot.retained_bytes {
                slot_bytes.push(t2(n, "slot", &slot.name), b);
            }
        }
        if let Some(r) = &snap.recovery {
            rx.push(t(n), if r.is_streaming() { 1.0 } else { 0.0 });
            paused.push(t(n), if r.replay_paused { 1.0 } else { 0.0 });
            if let Some(d) = r.replay_delay_seconds {
                delay.push(t(n), d);
            }
            if let Some(b) = r.replay_pending_bytes {
                pending_b.push(t(n), b);
            }
        }
        for db in &snap.databases {
            let l = || t2(n, "database", &db.name);
            if let Some(size) = db.size_bytes {
                db_size.push(l(), size as f64);
            }
            if let Some(c) = db.checksum_failures {
                cks.push(l(), c as f64);
            }
            dl.push(l(), db.deadlocks as f64);
            xid.push(l(), db.xid_age as f64);
        }
        let a = &snap.archiver;
        arch_fail.push(t(n), if a.failing { 1.0 } else { 0.0 });
        arch_mode.push(t(n), if a.archive_mode { 1.0 } else { 0.0 });
        archived.push(t(n), a.archived_count as f64);
        arch_failed.push(t(n), a.failed_count as f64);
        if let Some(age) = a.last_archived_age_seconds {
            arch_age.push(t(n), age);
        }
        invalid.push(t(n), snap.invalid_indexes as f64);
        for d in &snap.disks {
            if d.error.is_some() {
                continue;
            }
            disk_size.push(t2(n, "volume", &d.volume), d.size_bytes as f64);
            disk_free.push(t2(n, "volume", &d.volume), d.free_bytes as f64);
            if let Some(r) = d.free_ratio() {
                disk_ratio.push(t2(n, "volume", &d.volume), r);
            }
        }
    }
    for f in [
        &in_recovery,
        &checksums_on,
        &arch_mode,
        &sessions,
        &backends,
        &used,
        &usable,
        &used_ratio,
        &q,
        &xact,
        &iit,
        &idle,
        &waiting,
        &blocking,
        &sb_stream,
        &sb_lag,
        &sb_bytes,
        &slot_active,
        &slot_bytes,
        &rx,
        &paused,
        &delay,
        &pending_b,
        &db_size,
        &cks,
        &dl,
        &xid,
        &wrap,
        &arch_fail,
        &archived,
        &arch_failed,
        &arch_age,
        &invalid,
        &disk_size,
        &disk_free,
        &disk_ratio,
    ] {
        f.encode(encoder)?;
    }
    encode_postgres_statistics(&live, encoder)
}

/// The slots' WAL status and the performance statistics
/// (`[postgres.<name>.statistics]`): cumulative counters as the server
/// reports them, exported as counters.
fn encode_postgres_statistics(
    live: &[(&TargetStatus, &PgSnapshot)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use crate::observe::SLOT_WAL_STATUSES;
    let counter_unit = |name, help, unit| Fam::new(name, help, Some(unit), MetricType::Counter);
    let mut slot_status = Fam::gauge(
        "postgres_replication_slot_wal_status",
        "1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others",
    );
    let mut slot_safe = Fam::gauge_unit(
        "postgres_replication_slot_safe_wal_size",
        "WAL bytes that can still be written before the slot is lost (safe_wal_size; absent without max_slot_wal_keep_size)",
        Unit::Bytes,
    );
    let mut read_at = Fam::gauge_unit(
        "postgres_statistics_timestamp",
        "Unix time (server clock) of the latest statistics read",
        Unit::Seconds,
    );
    let mut error = Fam::gauge(
        "postgres_statistics_error",
        "1 for each statistics source the latest read could not read, with the reason",
    );
    let mut commit = Fam::counter(
        "postgres_xact_commit",
        "Transactions committed (pg_stat_database)",
    );
    let mut rollback = Fam::counter(
        "postgres_xact_rollback",
        "Transactions rolled back (pg_stat_database)",
    );
    let mut blks_read = Fam::counter(
        "postgres_blocks_read",
        "Disk blocks read into shared buffers (pg_stat_database blks_read)",
    );
    let mut blks_hit = Fam::counter(
        "postgres_blocks_hit",
        "Disk blocks found in shared buffers (pg_stat_database blks_hit)",
    );
    let mut temp_files = Fam::counter(
        "postgres_temp_files",
        "Temporary files created by queries (pg_stat_database)",
    );
    let mut temp_bytes = counter_unit(
        "postgres_temp",
        "Data written to temporary files by queries (pg_stat_database temp_bytes)",
        Unit::Bytes,
    );
    let mut conflicts = Fam::counter(
        "postgres_conflicts",
        "Queries canceled by recovery conflicts on a standby (pg_stat_database)",
    );
    let mut db_sessions = Fam::counter(
        "postgres_database_sessions",
        "Sessions established (pg_stat_database, PostgreSQL 14+)",
    );
    let mut abnormal = Fam::counter(
        "postgres_database_sessions_abnormal",
        "Sessions ended abnormally, by reason: abandoned (client gone), fatal, killed (pg_stat_database, 14+)",
    );
    let mut session_time = counter_unit(
        "postgres_session_time",
        "Time sessions spent connected (pg_stat_database session_time, 14+)",
        Unit::Seconds,
    );
    let mut active_time = counter_unit(
        "postgres_active_time",
        "Time sessions spent executing statements (pg_stat_database active_time, 14+)",
        Unit::Seconds,
    );
    let mut iit_time = counter_unit(
        "postgres_idle_in_transaction_time",
        "Time sessions spent idle in a transaction (pg_stat_database, 14+)",
        Unit::Seconds,
    );
    let mut wal_records = Fam::counter(
        "postgres_wal_records",
        "WAL records generated (pg_stat_wal, 14+)",
    );
    let mut wal_fpi = Fam::counter(
        "postgres_wal_fpi",
        "WAL full-page images generated (pg_stat_wal, 14+)",
    );
    let mut wal_bytes = counter_unit(
        "postgres_wal",
        "WAL generated (pg_stat_wal wal_bytes, 14+)",
        Unit::Bytes,
    );
    let mut wal_full = Fam::counter(
        "postgres_wal_buffers_full",
        "Times WAL was written because the WAL buffers were full (pg_stat_wal, 14+)",
    );
    let mut wal_writes = Fam::counter(
        "postgres_wal_writes",
        "WAL buffer writes to disk (pg_stat_wal wal_write, 14 to 17)",
    );
    let mut wal_syncs = Fam::counter(
        "postgres_wal_syncs",
        "WAL file syncs to disk (pg_stat_wal wal_sync, 14 to 17)",
    );
    let mut checkpoints = Fam::counter(
        "postgres_checkpoints",
        "Checkpoints, by kind: timed (checkpoint_timeout) or requested (pg_stat_checkpointer on 17+, pg_stat_bgwriter before)",
    );
    let mut ckpt_write = counter_unit(
        "postgres_checkpoint_write_time",
        "Time checkpoints spent writing files",
        Unit::Seconds,
    );
    let mut ckpt_sync = counter_unit(
        "postgres_checkpoint_sync_time",
        "Time checkpoints spent syncing files",
        Unit::Seconds,
    );
    let mut ckpt_buffers = Fam::counter(
        "postgres_checkpoint_buffers_written",
        "Buffers written by checkpoints",
    );
    let mut bg_clean = Fam::counter(
        "postgres_bgwriter_buffers_clean",
        "Buffers written by the background writer (pg_stat_bgwriter)",
    );
    let mut bg_max = Fam::counter(
        "postgres_bgwriter_maxwritten_clean",
        "Times the background writer stopped a round for writing too many buffers (pg_stat_bgwriter)",
    );
    let mut alloc = Fam::counter(
        "postgres_buffers_allocated",
        "Buffers allocated (pg_stat_bgwriter buffers_alloc)",
    );
    let mut st_calls = Fam::counter(
        "postgres_statement_calls",
        "Calls of a top statement by queryid (pg_stat_statements, opt-in)",
    );
    let mut st_time = counter_unit(
        "postgres_statement_time",
        "Execution time of a top statement by queryid (pg_stat_statements total_exec_time)",
        Unit::Seconds,
    );
    let mut st_rows = Fam::counter(
        "postgres_statement_rows",
        "Rows returned or affected by a top statement by queryid (pg_stat_statements)",
    );
    let mut st_hit = Fam::counter(
        "postgres_statement_shared_blocks_hit",
        "Shared blocks found in the buffer cache by a top statement (pg_stat_statements)",
    );
    let mut st_read = Fam::counter(
        "postgres_statement_shared_blocks_read",
        "Shared blocks read from disk by a top statement (pg_stat_statements)",
    );

    for (s, snap) in live {
        let n = s.target.as_str();
        for slot in &snap.slots {
            if let Some(status) = &slot.wal_status {
                for known in SLOT_WAL_STATUSES {
                    let mut l = t2(n, "slot", &slot.name);
                    l.push(("status", Cow::from(known)));
                    slot_status.push(l, if status == known { 1.0 } else { 0.0 });
                }
            }
            if let Some(b) = slot.safe_wal_bytes {
                slot_safe.push(t2(n, "slot", &slot.name), b as f64);
            }
        }
        let Some(st) = &snap.statistics else {
            continue;
        };
        read_at.push(t(n), st.read_at_us as f64 / 1e6);
        for e in &st.errors {
            let mut l = t2(n, "source", e.source.as_str());
            l.push(("reason", Cow::from(e.reason.as_str())));
            error.push(l, 1.0);
        }
        for db in &st.databases {
            let l = || t2(n, "database", &db.name);
            commit.push(l(), db.xact_commit as f64);
            rollback.push(l(), db.xact_rollback as f64);
            blks_read.push(l(), db.blks_read as f64);
            blks_hit.push(l(), db.blks_hit as f64);
            temp_files.push(l(), db.temp_files as f64);
            temp_bytes.push(l(), db.temp_bytes as f64);
            conflicts.push(l(), db.conflicts as f64);
            if let Some(x) = &db.sessions {
                db_sessions.push(l(), x.sessions as f64);
                for (reason, v) in [
                    ("abandoned", x.abandoned),
                    ("fatal", x.fatal),
                    ("killed", x.killed),
                ] {
                    let mut l = l();
                    l.push(("reason", Cow::from(reason)));
                    abnormal.push(l, v as f64);
                }
                session_time.push(l(), x.session_time_ms / 1e3);
                active_time.push(l(), x.active_time_ms / 1e3);
                iit_time.push(l(), x.idle_in_transaction_time_ms / 1e3);
            }
        }
        if let Some(w) = &st.wal {
            wal_records.push(t(n), w.records as f64);
            wal_fpi.push(t(n), w.fpi as f64);
            wal_bytes.push(t(n), w.bytes);
            wal_full.push(t(n), w.buffers_full as f64);
            if let Some(v) = w.writes {
                wal_writes.push(t(n), v as f64);
            }
            if let Some(v) = w.syncs {
                wal_syncs.push(t(n), v as f64);
            }
        }
        if let Some(c) = &st.checkpoints {
            checkpoints.push(t2(n, "kind", "timed"), c.timed as f64);
            checkpoints.push(t2(n, "kind", "requested"), c.requested as f64);
            ckpt_write.push(t(n), c.write_time_ms / 1e3);
            ckpt_sync.push(t(n), c.sync_time_ms / 1e3);
            ckpt_buffers.push(t(n), c.buffers_written as f64);
        }
        if let Some(b) = &st.bgwriter {
            bg_clean.push(t(n), b.buffers_clean as f64);
            bg_max.push(t(n), b.maxwritten_clean as f64);
            alloc.push(t(n), b.buffers_alloc as f64);
        }
        for x in st.statements.iter().flatten() {
            let l = || t2_owned(n, "queryid", x.queryid.to_string());
            st_calls.push(l(), x.calls as f64);
            st_time.push(l(), x.total_time_ms / 1e3);
            st_rows.push(l(), x.rows as f64);
            st_hit.push(l(), x.shared_blks_hit as f64);
            st_read.push(l(), x.shared_blks_read as f64);
        }
    }
    for f in [
        &slot_status,
        &slot_safe,
        &read_at,
        &error,
        &commit,
        &rollback,
        &blks_read,
        &blks_hit,
        &temp_files,
        &temp_bytes,
        &conflicts,
        &db_sessions,
        &abnormal,
        &session_time,
        &active_time,
        &iit_time,
        &wal_records,
        &wal_fpi,
        &wal_bytes,
        &wal_full,
        &wal_writes,
        &wal_syncs,
        &checkpoints,
        &ckpt_write,
        &ckpt_sync,
        &ckpt_buffers,
        &bg_clean,
        &bg_max,
        &alloc,
        &st_calls,
        &st_time,
        &st_rows,
        &st_hit,
        &st_read,
    ] {
        f.encode(encoder)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TargetStatus;

    /// A probe's value families never take the name of a fixed probe family:
    /// the names the probes' settings reserve are exactly these.
    #[test]
    fn the_fixed_probe_families_are_the_reserved_ones() {
        let fixed: Vec<&str> = METRIC_NAMES
            .iter()
            .filter_map(|n| n.strip_prefix("dbwarden_probe_"))
            .collect();
        assert_eq!(fixed, crate::observe::probes::settings::FIXED_FAMILIES);
    }

    #[test]
    fn negotiates_openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(prometheus), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate("application/openmetrics-text"),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(""), Format::Text);
        assert_eq!(Format::negotiate("*/*"), Format::Text);
        assert_eq!(Format::negotiate("text/plain"), Format::Text);
        assert_eq!(
            Format::negotiate("text/plain, application/openmetrics-text;q=0.5"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text;q=0, */*"),
            Format::Text
        );
    }

    #[test]
    fn openmetrics_becomes_the_text_format() {
        let om = "# HELP dbwarden_build dbwarden's \\\"version\\\"\n\
                  # TYPE dbwarden_build info\n\
                  dbwarden_build_info{version=\"1\"} 1\n\
                  # HELP dbwarden_polls Polls.\n\
                  # TYPE dbwarden_polls counter\n\
                  dbwarden_polls_total{target=\"a\"} 3\n\
                  dbwarden_polls_created{target=\"a\"} 1700000000.0\n\
                  # HELP dbwarden_poll_duration_seconds How long.\n\
                  # TYPE dbwarden_poll_duration_seconds histogram\n\
                  # UNIT dbwarden_poll_duration_seconds seconds\n\
                  dbwarden_poll_duration_seconds_bucket{le=\"+Inf\"} 1 # {trace=\"x\"} 0.5\n\
                  dbwarden_poll_duration_seconds_sum 0.5\n\
                  dbwarden_poll_duration_seconds_count 1\n\
                  # TYPE dbwarden_x unknown\n\
                  dbwarden_x 1\n\
                  # EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP dbwarden_build_info dbwarden's \"version\"\n\
             # TYPE dbwarden_build_info gauge\n\
             dbwarden_build_info{version=\"1\"} 1\n\
             # HELP dbwarden_polls_total Polls.\n\
             # TYPE dbwarden_polls_total counter\n\
             dbwarden_polls_total{target=\"a\"} 3\n\
             # HELP dbwarden_poll_duration_seconds How long.\n\
             # TYPE dbwarden_poll_duration_seconds histogram\n\
             dbwarden_poll_duration_seconds_bucket{le=\"+Inf\"} 1\n\
             dbwarden_poll_duration_seconds_sum 0.5\n\
             dbwarden_poll_duration_seconds_count 1\n\
             # TYPE dbwarden_x untyped\n\
             dbwarden_x 1\n"
        );
    }

    #[test]
    fn the_exposition_follows_every_change() {
        let state = Arc::new(SharedState::new([("main", "postgres")]));
        let m = Metrics::new(state.clone());
        let a = m.render();
        assert_eq!(a, m.render(), "no change, the same exposition");
        // A recorded poll changes it.
        m.record_poll("main", 0.004, None);
        let c = m.render();
        assert_ne!(a, c);
        assert!(
            std::str::from_utf8(&c)
                .unwrap()
                .contains("dbwarden_polls_total{target=\"main\"} 1")
        );
        // So does a published status, which no recording method sees.
        let mut s = TargetStatus::new("main", "postgres");
        s.up = true;
        s.polls_completed = 1;
        state.publish(s);
        let d = m.render();
        assert!(
            std::str::from_utf8(&d)
                .unwrap()
                .contains("dbwarden_up{target=\"main\"} 1")
        );
        assert!(
            std::str::from_utf8(&c)
                .unwrap()
                .contains("dbwarden_up{target=\"main\"} 0")
        );
    }

    /// The text format written piece by piece (the live instruments, each
    /// family's header, each target's lines) is the whole OpenMetrics
    /// exposition converted at once.
    #[test]
    fn the_text_format_written_in_pieces_is_the_whole_conversion() {
        let state = Arc::new(SharedState::new([("a", "postgres"), ("b", "postgres")]));
        let m = Metrics::new(state.clone());
        for (target, up) in [("a", true), ("b", false)] {
            m.record_poll(target, 0.004, None);
            if let Some(p) = state.publish(pg_status(target, up)) {
                m.published(&p);
            }
        }
        let openmetrics = String::from_utf8(m.render().to_vec()).unwrap();
        let text = String::from_utf8(m.render_as(Format::Text).to_vec()).unwrap();
        assert_eq!(text, openmetrics_to_text(&openmetrics));
        assert!(
            text.contains("# TYPE dbwarden_polls_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("_created"));
    }

    /// What a target's lines are kept as gives back every line as it was:
    /// the target's own label left out where it comes first, any other
    /// line whole.
    #[test]
    fn a_kept_line_is_given_back_as_it_was() {
        let lines = [
            "dbwarden_up{target=\"t-1\"} 1\n",
            "dbwarden_up_total{target=\"t-1\",check=\"a,}\\\"b\"} 0.0\n",
            "dbwarden_up_bucket{le=\"0.1\",target=\"t-1\"} 3\n",
            "dbwarden_up{target=\"t-10\"} 1\n",
            "dbwarden_up{target=\"t\"} 1\n",
            "dbwarden_upper{target=\"t-1\"} 2\n",
            "dbwarden_up 7\n",
            "dbwarden_other{target=\"t-1\"} 1\n",
            "#dbwarden_up{target=\"t-1\"} 1\n",
        ];
        for target in [Some("t-1"), None] {
            let mut kept = String::new();
            for line in lines {
                compact(line, "dbwarden_up", target, &mut kept);
            }
            let mut back = String::new();
            expand(&kept, "dbwarden_up", target.unwrap_or(""), &mut back);
            assert_eq!(back, lines.concat(), "{target:?}");
            if target.is_some() {
                assert!(kept.starts_with("} 1\n_total,check="), "{kept}");
                assert_eq!(
                    kept.lines().filter(|l| l.starts_with('#')).count(),
                    6,
                    "{kept}"
                );
            }
        }
    }

    /// A PostgreSQL status as a poll publishes it: a small primary, evaluated.
    fn pg_status(target: &str, up: bool) -> TargetStatus {
        use crate::observe::{Archiver, ServerInfo, Session, SessionState};
        let session = |pid, state| Session {
            pid,
            backend_type: "client backend".into(),
            state,
            user: Some("app".into()),
            database: Some("app".into()),
            application_name: "web \"1\"".into(),
            client_addr: Some("10.0.0.1".into()),
            backend_start_us: Some(1_000_000),
            xact_start_us: None,
            query_start_us: Some(2_000_000),
            state_change_us: Some(2_000_000),
            wait_event_type: None,
            blocked_by: Vec::new(),
            lock_wait_start_us: None,
            query: "SELECT 1".into(),
            is_superuser: false,
            is_replication_role: false,
            is_self: false,
        };
        let snap = PgSnapshot {
            server_now_us: 900_000_000,
            server: ServerInfo {
                version_num: 150_000,
                version: "PostgreSQL 15".into(),
                max_connections: 100,
                superuser_reserved_connections: 3,
                in_recovery: false,
                data_checksums: true,
                database: "app".into(),
                system_identifier: None,
                wal_lsn: None,
            },
            sessions: vec![
                session(10, SessionState::Idle),
                session(11, SessionState::Active),
            ],
            standbys: Vec::new(),
            slots: Vec::new(),
            recovery: None,
            databases: Vec::new(),
            archiver: Archiver::default(),
            invalid_indexes: 0,
            disks: Vec::new(),
            statistics: None,
        };
        let mut s = TargetStatus::new(target, "postgres");
        s.polls_completed = 3;
        s.up = up;
        s.last_poll_at = Some(std::time::SystemTime::now());
        s.checks = crate::evaluate::evaluate_once(&snap, &crate::evaluate::Thresholds::default());
        s.summary = Some(crate::evaluate::summarize(&snap));
        s.snapshot = Some(Arc::new(snap));
        s
    }

    /// The samples of an exposition, and each family's header lines, with
    /// the number of times each header appears.
    fn samples_and_headers(text: &str) -> (Vec<String>, std::collections::BTreeMap<String, usize>) {
        let mut samples: Vec<String> = Vec::new();
        let mut headers = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                *headers.entry(line.to_string()).or_insert(0) += 1;
            } else {
                samples.push(line.to_string());
            }
        }
        samples.sort();
        (samples, headers)
    }

    #[test]
    fn assembled_from_each_targets_series_the_exposition_is_the_whole_rendering() {
        let state = Arc::new(SharedState::new([
            ("a", "postgres"),
            ("b", "postgres"),
            ("c", "postgres"),
            ("n", "neo4j"),
        ]));
        let m = Metrics::new(state.clone());
        m.record_poll("a", 0.004, None);
        // a: rendered when published; b: published, then published again
        // without telling the metrics (a scrape must not use the older
        // series); c: down; n: never polled.
        let a = state.publish(pg_status("a", true)).unwrap();
        m.published(&a);
        let b = state.publish(pg_status("b", true)).unwrap();
        m.published(&b);
        let mut newer = pg_status("b", true);
        newer.polls_completed = 4;
        newer.open_connections = 7;
        state.publish(newer);
        state.publish(pg_status("c", false));
        let assembled = String::from_utf8(m.render().to_vec()).unwrap();
        assert!(assembled.contains("dbwarden_open_connections{target=\"b\"} 7"));
        assert!(assembled.ends_with("# EOF\n"));

        // The same state rendered whole, as one collector sees it.
        let mut whole = String::new();
        prometheus_client::encoding::text::encode_registry(&mut whole, &m.registry).unwrap();
        whole.push_str(&render_collector(TargetsCollector {
            targets: state.all(),
        }));
        whole.push_str(&render_collector(GlobalCollector {
            state: state.clone(),
        }));
        let (got, got_headers) = samples_and_headers(&assembled);
        let (want, want_headers) = samples_and_headers(&whole);
        assert!(got.len() > 100, "{assembled}");
        assert_eq!(got, want);
        // Every family's header once, and a family's samples under it.
        assert!(got_headers.values().all(|&n| n == 1), "{got_headers:?}");
        let mut family = String::new();
        for line in assembled.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&family),
                    "{line} outside its family {family}"
                );
            }
        }
        for h in want_headers.keys() {
            let name = h.split(' ').nth(2).unwrap();
            let has_samples = want.iter().any(|s| s.starts_with(name));
            assert_eq!(got_headers.contains_key(h), has_samples, "{h}");
        }
        // A removed target's series go with it.
        m.forget_target("a");
        state.remove_target("a");
        let after = String::from_utf8(m.render().to_vec()).unwrap();
        assert!(!after.contains("target=\"a\""));
        assert!(after.contains("target=\"b\""));
    }
}
