//! Validation of `[kubernetes]` (with `[kubernetes.lease]` and
//! `[kubernetes.eviction]`) and of the targets' `pods` label selectors.
//! Nothing connects here: a kubeconfig is checked to exist, not read, and
//! in-cluster credentials are only looked for when the daemon starts.
//!
//! The eviction policy lives under `[kubernetes]` rather than
//! `[remediation]`: it acts on Kubernetes objects, through the client, the
//! namespace and the Lease configured here, and means nothing without them.
//! It still runs under `[remediation]`'s mode, budgets, pacing, pause switch
//! and audit file, so it needs that section too (reported when missing).

use std::time::Duration;

use super::raw::{self, RawConfig, RawKubernetes};
use super::validate::{Issues, q};
use crate::kubernetes::checks::KubeThresholds;
use crate::kubernetes::selector::LabelSelector;
use crate::kubernetes::{
    Credentials, EvictionPolicy, KubernetesSettings, KubernetesTarget, LeaseSettings,
};

pub(super) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_VOLUME_STATS_INTERVAL: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_MAX_RESTARTS: u32 = 3;
pub(super) const DEFAULT_OOM_WINDOW: Duration = Duration::from_secs(3600);
/// The runbook's disk threshold, as `[thresholds.disk_free]`'s default.
pub(super) const DEFAULT_MIN_VOLUME_FREE: f64 = 0.30;
pub(super) const DEFAULT_LEASE_NAME: &str = "dbwarden";
pub(super) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub(super) const DEFAULT_LEASE_RENEW: Duration = Duration::from_secs(5);
/// The name of the eviction policy in audit records and metrics.
pub const EVICTION_POLICY_NAME: &str = "kubernetes_eviction";
pub(super) const DEFAULT_NOT_READY_FOR: Duration = Duration::from_secs(600);
pub(super) const DEFAULT_EVICTION_COOLDOWN: Duration = Duration::from_secs(900);
const MIN_NOT_READY_FOR: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A DNS-1123 label: a namespace's name.
fn dns_label(s: &str) -> bool {
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

fn in_range(
    v: Duration,
    min: Duration,
    max: Duration,
    path: String,
    issues: &mut Issues,
) -> Duration {
    if v < min {
        issues.push(path, format!("{} is too short: at least {}", q(v), q(min)));
    } else if v > max {
        issues.push(path, format!("{} is too long: at most {}", q(v), q(max)));
    }
    v
}

/// The targets' label selectors: every `pods` key, checked whether or not
/// there is a `[kubernetes]` section (without one, each is an error).
fn targets(raw: &RawConfig, section: bool, issues: &mut Issues) -> Vec<KubernetesTarget> {
    let written = raw
        .postgres
        .iter()
        .map(|(n, t)| ("postgres", n, t.pods.as_ref()))
        .chain(raw.neo4j.iter().map(|(n, t)| ("neo4j", n, t.pods.as_ref())));
    let mut out = Vec::new();
    for (kind, name, pods) in written {
        let Some(selector) = pods else { continue };
        let path = raw::join(&raw::join(kind, name), "pods");
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
            name: name.clone(),
            label_selector: selector.clone(),
        });
    }
    out
}

/// Validates the section; `None` without one (or after a mistake, reported).
pub(super) fn kubernetes(
    config: &RawConfig,
    env: &[(String, String)],
    issues: &mut Issues,
) -> Option<KubernetesSettings> {
    let before = issues.0.len();
    let targets = targets(config, config.kubernetes.is_some(), issues);
    let raw: &RawKubernetes = config.kubernetes.as_ref()?;
    let key = |k: &str| raw::join("kubernetes", k);
    if cfg!(not(feature = "kubernetes")) {
        issues.push(
            "kubernetes",
            "this dbwarden was built without Kubernetes support (cargo feature `kubernetes`): use a default build",
        );
    }

    let credentials = match raw.credentials.as_deref() {
        None | Some("in-cluster") => {
            for (k, set) in [
                ("kubeconfig", raw.kubeconfig.is_some()),
                ("context", raw.context.is_some()),
            ] {
                if set {
                    issues.push(
                        key(k),
                        "applies to credentials = \"kubeconfig\" only: set credentials = \"kubeconfig\" or remove it",
                    );
                }
            }
            Some(Credentials::InCluster)
        }
        Some("kubeconfig") => {
            if let Some(p) = &raw.kubeconfig
                && !p.is_file()
            {
                issues.push(
                    key("kubeconfig"),
                    format!("{:?} is not a readable file", p.display().to_string()),
                );
            }
            if raw.context.as_deref().is_some_and(str::is_empty) {
                issues.push(key("context"), "is empty: name a context or remove the key");
            }
            Some(Credentials::Kubeconfig {
                path: raw.kubeconfig.clone(),
                context: raw.context.clone(),
            })
        }
        Some(other) => {
            issues.push(
                key("credentials"),
                format!(
                    "invalid value {other:?}: expected \"in-cluster\" (the pod's service account, the default) or \"kubeconfig\""
                ),
            );
            None
        }
    };

    let namespace = match raw.namespace.as_deref() {
        Some(ns) if dns_label(ns) => ns.to_string(),
        Some(ns) => {
            issues.push(
                key("namespace"),
                format!(
                    "invalid namespace {ns:?}: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
                ),
            );
            String::new()
        }
        None => {
            issues.push(
                key("namespace"),
                "missing: name the namespace of the database pods, e.g. namespace = \"databases\"",
            );
            String::new()
        }
    };

    if targets.is_empty() && issues.0.len() == before {
        issues.push(
            "kubernetes",
            "no target names its pods: add e.g. pods = \"app=postgres\" to a [postgres.<name>] or [neo4j.<name>] table",
        );
    }

    let interval = in_range(
        raw.interval.unwrap_or(DEFAULT_INTERVAL),
        Duration::from_secs(1),
        Duration::from_secs(3600),
        key("interval"),
        issues,
    );
    let volume_stats_interval = in_range(
        raw.volume_stats_interval
            .unwrap_or(DEFAULT_VOLUME_STATS_INTERVAL),
        Duration::from_secs(10),
        DAY,
        key("volume_stats_interval"),
        issues,
    );
    let oom_window = in_range(
        raw.oom_window.unwrap_or(DEFAULT_OOM_WINDOW),
        Duration::from_secs(60),
        7 * DAY,
        key("oom_window"),
        issues,
    );
    // Like the disk-free check's: `[thresholds.disk_free]`'s min_ratio unless set here.
    let min_volume_free_ratio = raw
        .min_volume_free_ratio
        .or_else(|| config.thresholds.disk_free.and_then(|c| c.min_ratio))
        .unwrap_or(DEFAULT_MIN_VOLUME_FREE);
    if raw.min_volume_free_ratio.is_some() && !(0.0..=1.0).contains(&min_volume_free_ratio) {
        issues.push(
            key("min_volume_free_ratio"),
            format!("{min_volume_free_ratio} is out of range: a ratio from 0 to 1, e.g. 0.3"),
        );
    }

    let holder_identity = config
        .remediation
        .as_ref()
        .and_then(|r| r.instance.clone())
        .or_else(|| {
            env.iter()
                .find(|(k, v)| k == "HOSTNAME" && !v.is_empty())
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| super::validate::DEFAULT_INSTANCE.to_string());
    let lease = raw.lease.as_ref().map(|l| {
        let p = |k: &str| raw::join(&key("lease"), k);
        let name = l
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_string());
        if !dns_subdomain(&name) {
            issues.push(
                p("name"),
                format!(
                    "invalid Lease name {name:?}: lowercase letters, digits, '-' and '.', at most 253"
                ),
            );
        }
        let duration = in_range(
            l.duration.unwrap_or(DEFAULT_LEASE_DURATION),
            Duration::from_secs(2),
            Duration::from_secs(600),
            p("duration"),
            issues,
        );
        if duration.subsec_nanos() != 0 {
            issues.push(
                p("duration"),
                format!(
                    "{}: a Lease lasts whole seconds (leaseDurationSeconds)",
                    q(duration)
                ),
            );
        }
        let renew_every = in_range(
            l.renew_every.unwrap_or(DEFAULT_LEASE_RENEW),
            Duration::from_millis(500),
            Duration::from_secs(300),
            p("renew_every"),
            issues,
        );
        if renew_every * 2 > duration {
            issues.push(
                p("renew_every"),
                format!(
                    "{} is too long for a duration of {}: renew at least twice per duration, so one missed renewal does not lose the Lease",
                    q(renew_every),
                    q(duration)
                ),
            );
        }
        LeaseSettings {
            name,
            holder_identity: holder_identity.clone(),
            duration,
            renew_every,
        }
    });

    let eviction = raw.eviction.as_ref().map(|e| {
        let p = |k: &str| raw::join(&key("eviction"), k);
        if config.remediation.is_none() {
            issues.push(
                key("eviction"),
                "needs a [remediation] section: evictions run under its mode, budgets, pacing, pause switch and audit file",
            );
        }
        for t in e.targets.iter().flatten() {
            if !targets.iter().any(|k| &k.name == t) {
                let why = if config.postgres.contains_key(t) || config.neo4j.contains_key(t) {
                    "has no pods selector: add pods = \"...\" to it"
                } else {
                    "is not a configured target"
                };
                issues.push(p("targets"), format!("{t:?} {why}"));
            }
        }
        let not_ready_for = in_range(
            e.not_ready_for.unwrap_or(DEFAULT_NOT_READY_FOR),
            MIN_NOT_READY_FOR,
            DAY,
            p("not_ready_for"),
            issues,
        );
        let cooldown = in_range(
            e.cooldown.unwrap_or(DEFAULT_EVICTION_COOLDOWN),
            Duration::from_secs(60),
            DAY,
            p("cooldown"),
            issues,
        );
        EvictionPolicy {
            name: EVICTION_POLICY_NAME.to_string(),
            targets: e.targets.clone().unwrap_or_default(),
            not_ready_for,
            cooldown,
        }
    });

    if issues.0.len() != before {
        return None;
    }
    Some(KubernetesSettings {
        credentials: credentials?,
        namespace,
        targets,
        statefulsets: raw.statefulsets.unwrap_or(true),
        volume_stats: raw.volume_stats.unwrap_or(false),
        eviction,
        lease,
        thresholds: KubeThresholds {
            max_restarts_last_hour: raw.max_restarts_last_hour.unwrap_or(DEFAULT_MAX_RESTARTS),
            oom_window,
            min_volume_free_ratio,
        },
        interval,
        volume_stats_interval,
    })
}

#[cfg(all(test, feature = "kubernetes"))]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError, ConfigIssue};
    use crate::kubernetes::Credentials;

    const TARGETS: &str = "\
[postgres.main]
url = \"postgres://app@db:5432/app\"
pods = \"app=postgres,role in (primary,replica)\"

[neo4j.graph]
uri = \"bolt://neo4j:7687\"
user = \"neo4j\"
pods = \"app=neo4j\"
";

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            toml,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[track_caller]
    fn issues(toml: &str) -> Vec<ConfigIssue> {
        match load(toml, &[]) {
            Ok(c) => panic!("expected errors, got {:#?}", c.kubernetes),
            Err(ConfigError::Invalid(i)) => i,
            Err(e) => panic!("{e}"),
        }
    }

    #[track_caller]
    fn assert_issue(issues: &[ConfigIssue], path: &str, needles: &[&str]) {
        let at: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
        assert_eq!(at.len(), 1, "one issue at {path} expected in {issues:#?}");
        for n in needles {
            assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
        }
    }

    #[test]
    fn without_a_section_there_is_no_kubernetes() {
        let c = load(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n",
            &[],
        )
        .unwrap();
        assert!(c.kubernetes.is_none());
    }

    #[test]
    fn a_minimal_section_takes_the_defaults_and_prints_back() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"databases\"\n");
        let c = load(&toml, &[("HOSTNAME", "dbwarden-0")]).unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.credentials, Credentials::InCluster);
        assert_eq!(k.namespace, "databases");
        let sel: Vec<_> = k
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.label_selector.as_str()))
            .collect();
        assert_eq!(
            sel,
            [
                ("main", "app=postgres,role in (primary,replica)"),
                ("graph", "app=neo4j")
            ]
        );
        assert!(k.statefulsets && !k.volume_stats);
        assert!(k.eviction.is_none(), "eviction is off by default");
        assert!(k.lease.is_none());
        assert_eq!(k.thresholds.max_restarts_last_hour, 3);
        assert_eq!(k.thresholds.oom_window, Duration::from_secs(3600));
        assert_eq!(k.thresholds.min_volume_free_ratio, 0.30);
        assert_eq!(k.interval, Duration::from_secs(10));
        let printed = c.to_redacted_toml();
        assert!(printed.contains("[kubernetes]"), "{printed}");
        assert!(printed.contains("pods = \"app=neo4j\""), "{printed}");
        let again = load(&printed, &[("HOSTNAME", "dbwarden-0")]).unwrap();
        assert_eq!(again.kubernetes, c.kubernetes);
        assert_eq!(again.to_redacted_toml(), printed);
    }

    #[test]
    fn every_key_is_applied_and_the_printed_config_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, "apiVersion: v1\n").unwrap();
        let toml = format!(
            "{TARGETS}
[thresholds.disk_free]
min_ratio = 0.25

[remediation]
mode = \"enforce\"
instance = \"warden-a\"
audit_file = \"/var/lib/dbwarden/audit.jsonl\"

[kubernetes]
credentials = \"kubeconfig\"
kubeconfig = {kc:?}
context = \"kind-db\"
namespace = \"db\"
statefulsets = false
volume_stats = true
volume_stats_interval = \"2m\"
interval = \"5s\"
max_restarts_last_hour = 5
oom_window = \"30m\"

[kubernetes.lease]
name = \"dbwarden-actor\"
duration = \"20s\"
renew_every = \"5s\"

[kubernetes.eviction]
targets = [\"main\"]
not_ready_for = \"5m\"
cooldown = \"20m\"
"
        );
        let c = load(&toml, &[("HOSTNAME", "ignored")]).unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(
            k.credentials,
            Credentials::Kubeconfig {
                path: Some(kc.clone()),
                context: Some("kind-db".into())
            }
        );
        assert!(!k.statefulsets && k.volume_stats);
        assert_eq!(k.volume_stats_interval, Duration::from_secs(120));
        assert_eq!(k.interval, Duration::from_secs(5));
        assert_eq!(k.thresholds.max_restarts_last_hour, 5);
        assert_eq!(k.thresholds.oom_window, Duration::from_secs(1800));
        // Unset here: the disk-free check's threshold.
        assert_eq!(k.thresholds.min_volume_free_ratio, 0.25);
        let lease = k.lease.as_ref().unwrap();
        assert_eq!(lease.name, "dbwarden-actor");
        assert_eq!(
            lease.holder_identity, "warden-a",
            "remediation.instance first"
        );
        assert_eq!(lease.duration, Duration::from_secs(20));
        let e = k.eviction.as_ref().unwrap();
        assert_eq!(e.targets, ["main"]);
        assert_eq!(e.not_ready_for, Duration::from_secs(300));
        assert_eq!(e.cooldown, Duration::from_secs(1200));
        assert_eq!(e.name, super::EVICTION_POLICY_NAME);
        let printed = c.to_redacted_toml();
        let again = load(&printed, &[("HOSTNAME", "ignored")]).unwrap();
        assert_eq!(again.kubernetes, c.kubernetes, "{printed}");
    }

    #[test]
    fn the_lease_holder_defaults_to_the_hostname() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"db\"\n[kubernetes.lease]\n");
        let c = load(&toml, &[("HOSTNAME", "dbwarden-1")]).unwrap();
        let lease = c.kubernetes.unwrap().lease.unwrap();
        assert_eq!(lease.holder_identity, "dbwarden-1");
        assert_eq!(lease.name, "dbwarden");
        assert_eq!(lease.duration, Duration::from_secs(15));
        assert_eq!(lease.renew_every, Duration::from_secs(5));
    }

    #[test]
    fn environment_variables_override_the_section() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"db\"\n");
        let c = load(
            &toml,
            &[
                ("DBWARDEN_KUBERNETES__NAMESPACE", "other"),
                ("DBWARDEN_KUBERNETES__VOLUME_STATS", "true"),
            ],
        )
        .unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.namespace, "other");
        assert!(k.volume_stats);
    }

    #[test]
    fn every_mistake_is_reported_at_once_with_its_path() {
        let toml = "\
[postgres.main]
url = \"postgres://app@db:5432/app\"
pods = \"app in (postgres\"

[postgres.other]
url = \"postgres://app@db2:5432/app\"

[neo4j.graph]
uri = \"bolt://neo4j:7687\"
user = \"neo4j\"
pods = \"\"

[kubernetes]
credentials = \"token\"
namespce = \"db\"
context = \"x\"
oom_window = \"1s\"
min_volume_free_ratio = 1.5

[kubernetes.lease]
name = \"Not_A_Name\"
duration = \"10s\"
renew_every = \"8s\"

[kubernetes.eviction]
targets = [\"other\", \"nope\"]
not_ready_for = \"5s\"
max_per_cycle = 2
";
        let i = issues(toml);
        assert_issue(
            &i,
            "postgres.main.pods",
            &["invalid label selector", "app=postgres"],
        );
        assert_issue(&i, "neo4j.graph.pods", &["empty selector"]);
        assert_issue(
            &i,
            "kubernetes.credentials",
            &["\"in-cluster\"", "\"kubeconfig\""],
        );
        assert_issue(&i, "kubernetes.namespce", &["unknown key", "namespace"]);
        assert_issue(&i, "kubernetes.namespace", &["missing"]);
        assert_issue(&i, "kubernetes.oom_window", &["too short"]);
        assert_issue(&i, "kubernetes.min_volume_free_ratio", &["out of range"]);
        assert_issue(&i, "kubernetes.lease.name", &["invalid Lease name"]);
        assert_issue(&i, "kubernetes.lease.renew_every", &["twice per duration"]);
        assert_issue(
            &i,
            "kubernetes.eviction",
            &["needs a [remediation] section"],
        );
        assert_issue(&i, "kubernetes.eviction.max_per_cycle", &["unknown key"]);
        assert_issue(&i, "kubernetes.eviction.not_ready_for", &["too short"]);
        let t: Vec<_> = i
            .iter()
            .filter(|x| x.path == "kubernetes.eviction.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(t.len(), 2, "{i:#?}");
        assert!(t[0].contains("\"other\" has no pods selector"), "{t:?}");
        assert!(
            t[1].contains("\"nope\" is not a configured target"),
            "{t:?}"
        );
    }

    #[test]
    fn pods_without_a_section_and_a_section_without_pods_are_errors() {
        let i = issues(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\npods = \"app=postgres\"\n",
        );
        assert_issue(&i, "postgres.main.pods", &["needs a [kubernetes] section"]);
        let i = issues(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n[kubernetes]\nnamespace = \"db\"\n",
        );
        assert_issue(&i, "kubernetes", &["no target names its pods"]);
        // In-cluster credentials take no kubeconfig; a misplaced key is pointed home.
        let i = issues(&format!(
            "{TARGETS}\n[kubernetes]\nnamespace = \"db\"\nkubeconfig = \"/x\"\nnot_ready_for = \"5m\"\n"
        ));
        assert_issue(
            &i,
            "kubernetes.kubeconfig",
            &["credentials = \"kubeconfig\""],
        );
        assert_issue(&i, "kubernetes.not_ready_for", &["[kubernetes.eviction]"]);
        let i = issues(&format!(
            "{TARGETS}\n[kubernetes]\ncredentials = \"kubeconfig\"\nkubeconfig = \"/nonexistent/kubeconfig\"\nnamespace = \"db\"\n"
        ));
        assert_issue(&i, "kubernetes.kubeconfig", &["not a readable file"]);
    }
}
