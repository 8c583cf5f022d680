//! `[kubernetes]` (with `[kubernetes.lease]` and `[kubernetes.eviction]`)
//! and the targets' `pods` label selectors. Nothing connects here: a
//! kubeconfig is checked to exist, not read, and in-cluster credentials are
//! only looked for when the daemon starts.
//!
//! The eviction policy lives under `[kubernetes]` rather than
//! `[remediation]`: it acts on Kubernetes objects, through the client, the
//! namespace and the Lease configured here, and means nothing without them.
//! It still runs under `[remediation]`'s mode, budgets, pacing, pause switch
//! and audit file, so it needs that section too (reported when missing).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::KubeThresholds;
use super::selector::LabelSelector;
use super::{
    Credentials, EvictionPolicy, KubernetesTarget, LagRoutingPolicy, LeaseSettings, ShardSettings,
};
use crate::settings::{Context, Issues, duration, join, q, ratio, within};

/// The name of the eviction policy in audit records and metrics.
pub const EVICTION_POLICY_NAME: &str = "kubernetes_eviction";
const DAY: Duration = Duration::from_secs(24 * 3600);

/// How dbwarden authenticates to the API server, as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialsKind {
    /// The pod's service account.
    #[default]
    InCluster,
    /// A kubeconfig file (`kubeconfig`, else `$KUBECONFIG` or `~/.kube/config`).
    Kubeconfig,
}

/// `[kubernetes]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesSettings {
    pub credentials: CredentialsKind,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The namespace holding the database pods (and the Lease). Required.
    pub namespace: String,
    /// Watch the namespace's StatefulSets for ready against desired replicas.
    /// Needs `statefulsets` get/list/watch in the `apps` group.
    pub statefulsets: bool,
    /// Read volume usage from the kubelet stats summary (needs `nodes/proxy` get).
    pub volume_stats: bool,
    /// How often the kubelet stats summaries are read (with `volume_stats`).
    #[serde(with = "duration")]
    pub volume_stats_interval: Duration,
    /// How often the snapshot is published, the checks evaluated and the
    /// eviction policy run even when no watch event arrived (time-based
    /// conditions such as `not_ready_for` need it).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A pod restarting more often than this within the last hour fails.
    pub max_restarts_last_hour: u32,
    /// How far back an OOM kill fails the check.
    #[serde(with = "duration")]
    pub oom_window: Duration,
    /// Default: `[thresholds.disk_free]`'s min_ratio; resolved at load.
    #[serde(with = "ratio::option")]
    pub min_volume_free_ratio: Option<f64>,
    /// Lease election among dbwarden replicas; `None`: this replica acts alone.
    pub lease: Option<LeaseSettings>,
    /// The opt-in eviction policy; `None` (the default) never evicts.
    pub eviction: Option<EvictionPolicy>,
    /// The opt-in lag routing policy (a readiness gate condition that takes
    /// a lagging standby's pod out of its Service); `None` never routes.
    pub lag_routing: Option<LagRoutingPolicy>,
    /// Shards across replicas: each replica's own Lease is its membership
    /// and it watches only its share of the targets; `None`: every target.
    pub shards: Option<ShardSettings>,
    /// The targets that name their pods (their `pods` selectors).
    #[serde(skip)]
    pub targets: Vec<KubernetesTarget>,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            credentials: CredentialsKind::InCluster,
            kubeconfig: None,
            context: None,
            namespace: String::new(),
            statefulsets: true,
            volume_stats: false,
            volume_stats_interval: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            max_restarts_last_hour: 3,
            oom_window: Duration::from_secs(3600),
            min_volume_free_ratio: None,
            lease: None,
            eviction: None,
            lag_routing: None,
            shards: None,
            targets: Vec::new(),
        }
    }
}

impl KubernetesSettings {
    pub fn credentials(&self) -> Credentials {
        match self.credentials {
            CredentialsKind::InCluster => Credentials::InCluster,
            CredentialsKind::Kubeconfig => Credentials::Kubeconfig {
                path: self.kubeconfig.clone(),
                context: self.context.clone(),
            },
        }
    }

    /// The pure checks' thresholds.
    pub fn thresholds(&self) -> KubeThresholds {
        KubeThresholds {
            max_restarts_last_hour: self.max_restarts_last_hour,
            oom_window: self.oom_window,
            min_volume_free_ratio: self.min_volume_free_ratio.unwrap_or(0.30),
        }
    }

    /// Checks the section; `pods` are the targets' selectors (kind, name,
    /// selector), `disk_free` the global `[thresholds.disk_free]` min_ratio.
    pub fn validate(
        &mut self,
        pods: &[(&str, &str, &str)],
        disk_free: f64,
        ctx: &Context,
        issues: &mut Issues,
    ) {
        let before = issues.len();
        let key = |k: &str| join("kubernetes", k);
        if cfg!(not(feature = "kubernetes")) {
            issues.push(
                "kubernetes",
                "this dbwarden was built without Kubernetes support (cargo feature `kubernetes`): use a default build",
            );
        }
        self.targets = targets(pods, true, issues);
        match self.credentials {
            CredentialsKind::InCluster => {
                for (k, set) in [
                    ("kubeconfig", self.kubeconfig.is_some()),
                    ("context", self.context.is_some()),
                ] {
                    if set {
                        issues.push(
                            key(k),
                            "applies to credentials = \"kubeconfig\" only: set credentials = \"kubeconfig\" or remove it",
                        );
                    }
                }
            }
            CredentialsKind::Kubeconfig => {
                if let Some(p) = &self.kubeconfig
                    && !p.is_file()
                {
                    issues.push(
                        key("kubeconfig"),
                        format!("{:?} is not a readable file", p.display().to_string()),
                    );
                }
                if self.context.as_deref().is_some_and(str::is_empty) {
                    issues.push(key("context"), "is empty: name a context or remove the key");
                }
            }
        }
        if self.namespace.is_empty() {
            issues.push(
                key("namespace"),
                "missing: name the namespace of the database pods, e.g. namespace = \"databases\"",
            );
        } else if !dns_label(&self.namespace) {
            issues.push(
                key("namespace"),
                format!(
                    "invalid namespace {:?}: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                    self.namespace
                ),
            );
        }
        if self.targets.is_empty() && self.shards.is_none() && issues.len() == before {
            issues.push(
                "kubernetes",
                "no target names its pods: add e.g. pods = \"app=postgres\" to a [postgres.<name>] or [neo4j.<name>] table, or shard the targets with [kubernetes.shards]",
            );
        }
        let s = Duration::from_secs;
        within(self.interval, s(1), s(3600), &key("interval"), issues);
        within(
            self.volume_stats_interval,
            s(10),
            DAY,
            &key("volume_stats_interval"),
            issues,
        );
        within(self.oom_window, s(60), 7 * DAY, &key("oom_window"), issues);
        // Like the disk-free check's unless set here.
        self.min_volume_free_ratio.get_or_insert(disk_free);

        let holder = ctx
            .instance
            .clone()
            .or_else(|| {
                ctx.var("HOSTNAME")
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| crate::remediate::settings::DEFAULT_INSTANCE.to_string());
        if let Some(l) = &mut self.lease {
            l.holder_identity = holder.clone();
            let p = |k: &str| join(&key("lease"), k);
            if !dns_subdomain(&l.name) {
                issues.push(
                    p("name"),
                    format!(
                        "invalid Lease name {:?}: lowercase letters, digits, '-' and '.', at most 253",
                        l.name
                    ),
                );
            }
            within(l.duration, s(2), s(600), &p("duration"), issues);
            if l.duration.subsec_nanos() != 0 {
                issues.push(
                    p("duration"),
                    format!(
                        "{}: a Lease lasts whole seconds (leaseDurationSeconds)",
                        q(l.duration)
                    ),
                );
            }
            within(
                l.renew_every,
                Duration::from_millis(500),
                s(300),
                &p("renew_every"),
                issues,
            );
            if l.renew_every * 2 > l.duration {
                issues.push(
                    p("renew_every"),
                    format!(
                        "{} is too long for a duration of {}: renew at least twice per duration, so one missed renewal does not lose the Lease",
                        q(l.renew_every),
                        q(l.duration)
                    ),
                );
            }
        }
        if let Some(sh) = &mut self.shards {
            sh.identity = holder.clone();
            validate_shards(sh, &key("shards"), issues);
        }
        if let Some(e) = &mut self.eviction {
            e.name = EVICTION_POLICY_NAME.to_string();
            let p = |k: &str| join(&key("eviction"), k);
            if !ctx.remediation {
                issues.push(
                    key("eviction"),
                    "needs a [remediation] section: evictions run under its mode, budgets, pacing, pause switch and audit file",
                );
            }
            for t in &e.targets {
                if !self.targets.iter().any(|k| &k.name == t) {
                    let why = if ctx.postgres.contains(t) || ctx.neo4j.contains(t) {
                        "has no pods selector: add pods = \"...\" to it"
                    } else {
                        "is not a configured target"
                    };
                    issues.push(p("targets"), format!("{t:?} {why}"));
                }
            }
            within(e.not_ready_for, s(30), DAY, &p("not_ready_for"), issues);
            within(e.cooldown, s(60), DAY, &p("cooldown"), issues);
            if let Some(r) = e.rebuild_after {
                within(r, s(5), 7 * DAY, &p("rebuild_after"), issues);
            }
        }
        if let Some(r) = &mut self.lag_routing {
            let path = key("lag_routing");
            r.validate(&path, issues);
            if !ctx.remediation {
                issues.push(
                    path.clone(),
                    "needs a [remediation] section: taking pods out of a Service runs under its mode, budgets, pause switch and audit file",
                );
            }
            for t in &r.targets {
                if !self.targets.iter().any(|k| &k.name == t) {
                    let why = if ctx.neo4j.contains(t) {
                        "is a Neo4j target: lag routing is for PostgreSQL standbys"
                    } else if ctx.postgres.contains(t) {
                        "has no pods selector: add pods = \"statefulset.kubernetes.io/pod-name=...\" to it"
                    } else {
                        "is not a configured target"
                    };
                    issues.push(join(&path, "targets"), format!("{t:?} {why}"));
                } else if ctx.neo4j.contains(t) {
                    issues.push(
                        join(&path, "targets"),
                        format!("{t:?} is a Neo4j target: lag routing is for PostgreSQL standbys"),
                    );
                }
            }
        }
    }
}

/// `[kubernetes.shards]`: the group names Leases and a label value, the
/// identity completes a Lease name, and the member must renew well within
/// the duration.
fn validate_shards(sh: &ShardSettings, path: &str, issues: &mut Issues) {
    let p = |k: &str| join(path, k);
    let s = Duration::from_secs;
    let label_value = (1..=63).contains(&sh.group.len())
        && sh
            .group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !sh.group.starts_with('-')
        && !sh.group.ends_with('-');
    if !label_value {
        issues.push(
            p("group"),
            format!(
                "invalid shard group {:?}: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit (it is a label value and the prefix of each replica's Lease name)",
                sh.group
            ),
        );
    } else if !dns_subdomain(&sh.lease_name()) {
        issues.push(
            path.to_string(),
            format!(
                "this replica's Lease name {:?} (group, '-', identity) is not a valid name: the identity comes from remediation.instance or $HOSTNAME and must be lowercase letters, digits, '-' and '.'",
                sh.lease_name()
            ),
        );
    }
    within(sh.duration, s(2), s(600), &p("duration"), issues);
    if sh.duration.subsec_nanos() != 0 {
        issues.push(
            p("duration"),
            format!(
                "{}: a Lease lasts whole seconds (leaseDurationSeconds)",
                q(sh.duration)
            ),
        );
    }
    within(
        sh.renew_every,
        Duration::from_millis(200),
        s(300),
        &p("renew_every"),
        issues,
    );
    if sh.renew_every * 3 > sh.duration {
        issues.push(
            p("renew_every"),
            format!(
                "{} is too long for a duration of {}: renew at least three times per duration (a replica stops acting one renewal before its Lease could expire)",
                q(sh.renew_every),
                q(sh.duration)
            ),
        );
    }
}

/// The targets' label selectors, checked; without a `[kubernetes]`
/// section (`section` false) each one is an error.
pub fn targets(
    pods: &[(&str, &str, &str)],
    section: bool,
    issues: &mut Issues,
) -> Vec<KubernetesTarget> {
    let mut out = Vec::new();
    for (kind, name, selector) in pods {
        let path = join(&join(kind, name), "pods");
        if !section {
            issues.push(
                path,
                "needs a [kubernetes] section (credentials and namespace) to watch the pods",
            );
            continue;
        }
        if selector.trim().is_empty() {
            issues.push(
                path,
                "an empty selector would tie every pod of the namespace to this target: write e.g. \"app=postgres\"",
            );
            continue;
        }
        if let Err(e) = LabelSelector::parse(selector) {
            issues.push(
                path,
                format!(
                    "invalid label selector {selector:?}: {e}; write e.g. \"app=postgres\" or \"app=postgres,role in (primary,replica)\""
                ),
            );
            continue;
        }
        out.push(KubernetesTarget {
            name: name.to_string(),
            label_selector: selector.to_string(),
        });
    }
    out
}

/// A DNS-1123 label: a namespace's or a Service's name.
pub(crate) fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: a Lease's name.
fn dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without the `kubernetes` feature refuses the section by name.
    #[test]
    fn a_build_without_kubernetes_refuses_the_section() {
        let mut k = KubernetesSettings {
            namespace: "databases".into(),
            ..KubernetesSettings::default()
        };
        let mut issues = Issues::default();
        let pods = [("postgres", "main", "app=postgres")];
        k.validate(&pods, 0.3, &Context::default(), &mut issues);
        let refused = issues
            .0
            .iter()
            .any(|i| i.path == "kubernetes" && i.message.contains("built without"));
        assert_eq!(refused, cfg!(not(feature = "kubernetes")), "{issues:?}");
        assert_eq!(issues.len(), usize::from(refused), "{issues:?}");
        assert_eq!(k.targets.len(), 1);
    }
}
