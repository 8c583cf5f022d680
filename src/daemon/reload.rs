//! Reload in place: what a new configuration changes against the running
//! one, and whether that can be applied without a restart. Pure: two
//! configurations in, a plan out; `daemon` applies it.
//!
//! What survives every reload: the connections of targets whose connection
//! settings did not change (and their hold timers, check by check, where
//! the check's limit did not change), the budgets already spent, the pause
//! state, the actor locks and the audit file.

use crate::config::{Config, TargetConfig};
use crate::evaluate::BackupThresholds;
use crate::kubernetes::KubernetesSettings;
use crate::observe::backups::BackupLocation;
use crate::remediate::{Mode, RemediationSettings};

/// What a reload changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Settings that cannot change in place, by key path; any refuses the reload.
    pub needs_restart: Vec<String>,
    /// Targets to start.
    pub added: Vec<String>,
    /// Targets to stop (their connections closed, their series removed).
    pub removed: Vec<String>,
    /// Targets whose connection settings changed: stopped and started again.
    pub reconnected: Vec<String>,
    /// Targets whose other settings or thresholds changed: updated in place.
    pub updated: Vec<String>,
    /// Backup locations to start, stop, or stop and start again with new
    /// settings (an observation keeps nothing but its published status).
    pub backups_added: Vec<String>,
    pub backups_removed: Vec<String>,
    pub backups_changed: Vec<String>,
    /// `[remediation]`'s mode, budgets, pacing or policies changed.
    pub remediation: bool,
    pub log_level: bool,
    pub server: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// One line for the log and the API: what changed.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("reconnected", &self.reconnected),
            ("updated", &self.updated),
            ("added backups", &self.backups_added),
            ("removed backups", &self.backups_removed),
            ("changed backups", &self.backups_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        for (what, changed) in [
            ("remediation", self.remediation),
            ("log level", self.log_level),
            ("server", self.server),
        ] {
            if changed {
                parts.push(format!("{what} changed"));
            }
        }
        if parts.is_empty() {
            "nothing changed".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// Compares the running configuration with a new, valid one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    let mut restart = |changed: bool, key: &str| {
        if changed {
            p.needs_restart.push(key.to_string());
        }
    };
    restart(old.server.listen != new.server.listen, "server.listen");
    restart(old.log.format != new.log.format, "log.format");
    restart_remediation(
        old.remediation.as_ref(),
        new.remediation.as_ref(),
        &mut restart,
    );
    restart_kubernetes(
        old.kubernetes.as_ref(),
        new.kubernetes.as_ref(),
        &mut restart,
    );
    backups(&old.backups, &new.backups, &mut p);
    p.server = old.server != new.server;
    p.log_level = old.log.level != new.log.level;
    p.remediation = old.remediation != new.remediation;
    targets(&old.postgres, &new.postgres, &mut p, |a, b| {
        a.same_connection(b)
    });
    targets(&old.neo4j, &new.neo4j, &mut p, |a, b| a.same_connection(b));
    p
}

/// The remediation settings a running remediation cannot take in place:
/// its identity among replicas, and the files it holds.
fn restart_remediation(
    old: Option<&RemediationSettings>,
    new: Option<&RemediationSettings>,
    restart: &mut impl FnMut(bool, &str),
) {
    match (old, new) {
        (Some(a), Some(b)) => {
            restart(a.instance != b.instance, "remediation.instance");
            restart(a.audit_file != b.audit_file, "remediation.audit_file");
            restart(a.state_dir != b.state_dir, "remediation.state_dir");
            restart(
                a.sentinel_file != b.sentinel_file,
                "remediation.sentinel_file",
            );
            // Observe mode runs without the audit file: acting needs it opened.
            restart(
                a.mode == Mode::Observe && b.mode != Mode::Observe,
                "remediation.mode",
            );
        }
        (None, None) => {}
        // Adding or removing the section opens or closes the audit trail.
        _ => restart(true, "remediation"),
    }
}

/// The Kubernetes loop keeps watches, the Lease and the eviction cooldowns:
/// a change to its section or to the targets' pods needs a restart, so that
/// no cooldown is forgotten.
fn restart_kubernetes(
    old: Option<&KubernetesSettings>,
    new: Option<&KubernetesSettings>,
    restart: &mut impl FnMut(bool, &str),
) {
    restart(old != new, "kubernetes");
}

/// `[backups.<name>]` locations added, removed or changed (credentials in
/// the environment included).
fn backups(
    old: &[TargetConfig<BackupLocation, BackupThresholds>],
    new: &[TargetConfig<BackupLocation, BackupThresholds>],
    p: &mut Plan,
) {
    for n in new {
        match old.iter().find(|o| o.target.name == n.target.name) {
            None => p.backups_added.push(n.target.name.clone()),
            Some(o) if o != n => p.backups_changed.push(n.target.name.clone()),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.target.name == o.target.name) {
            p.backups_removed.push(o.target.name.clone());
        }
    }
}

fn targets<T, Th: PartialEq>(
    old: &[TargetConfig<T, Th>],
    new: &[TargetConfig<T, Th>],
    p: &mut Plan,
    same_connection: impl Fn(&T, &T) -> bool,
) where
    T: PartialEq + Named,
{
    for n in new {
        match old.iter().find(|o| o.target.name() == n.target.name()) {
            None => p.added.push(n.target.name().to_string()),
            Some(o) if !same_connection(&o.target, &n.target) => {
                p.reconnected.push(n.target.name().to_string())
            }
            Some(o) if o != n => p.updated.push(n.target.name().to_string()),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.target.name() == o.target.name()) {
            p.removed.push(o.target.name().to_string());
        }
    }
}

/// A target's name, whatever its kind.
pub trait Named {
    fn name(&self) -> &str;
}

impl Named for crate::observe::PostgresTarget {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for crate::observe::neo4j::Neo4jTarget {
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let env = [("PW", "secret-1"), ("PW2", "secret-2")].map(|(k, v)| (k.into(), v.into()));
        Config::from_toml_with_env(text, env).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str =
        "[postgres.a]\nurl = \"postgres://u@h/d\"\n[postgres.b]\nurl = \"postgres://u@h/e\"\n";

    #[test]
    fn the_same_configuration_changes_nothing() {
        let p = plan(&config(BASE), &config(BASE));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "nothing changed");
    }

    #[test]
    fn targets_are_added_removed_reconnected_or_updated() {
        let new = "[postgres.a]\nurl = \"postgres://u@h/d\"\npoll_interval = \"30s\"\n\
                   [postgres.a.thresholds.idle_session]\nmax = \"1m\"\n\
                   [postgres.c]\nurl = \"postgres://u@h/f\"\n";
        let p = plan(&config(BASE), &config(new));
        assert_eq!((p.added, p.removed), (vec!["c".into()], vec!["b".into()]));
        assert_eq!(p.updated, ["a"]);
        assert!(p.reconnected.is_empty() && p.needs_restart.is_empty());
        // The server, the credentials or a session setting: a new connection.
        for change in [
            "url = \"postgres://u@h2/d\"\n",
            "url = \"postgres://u@h/d\"\npassword_env = \"PW\"\n",
            "url = \"postgres://u@h/d\"\nsslmode = \"require\"\n",
            "url = \"postgres://u@h/d\"\nstatement_timeout = \"2s\"\n",
            "url = \"postgres://u@h/d\"\npoll_timeout = \"4s\"\n",
        ] {
            let p = plan(&config(BASE), &config(&format!("[postgres.a]\n{change}")));
            assert_eq!(p.reconnected, ["a"], "{change}");
        }
        // A rotated password (same variable, new value) reconnects too.
        let with = |pw: &str| {
            Config::from_toml_with_env(
                "[postgres.a]\nurl = \"postgres://u@h/d\"\npassword_env = \"PW\"\n",
                [("PW".to_string(), pw.to_string())],
            )
            .unwrap()
        };
        assert_eq!(plan(&with("one"), &with("two")).reconnected, ["a"]);
    }

    /// A session check's lists and exceptions are thresholds: updated in
    /// place, globally or per target, without a reconnect.
    #[test]
    fn session_check_scopes_and_exceptions_update_in_place() {
        for change in [
            "[thresholds.idle_session]\nignore_applications = [\"psql\"]\n",
            "[postgres.a.thresholds.long_running_query.exceptions.backup]\nmax = \"6h\"\nmatch_users = [\"backup\"]\n",
            "[postgres.a.thresholds.idle_in_transaction]\nmatch_client_addrs = [\"10.0.0.0/8\"]\n",
        ] {
            let p = plan(&config(BASE), &config(&format!("{BASE}{change}")));
            assert!(p.updated.contains(&"a".to_string()), "{change}: {p:?}");
            assert!(
                p.reconnected.is_empty() && p.needs_restart.is_empty(),
                "{change}: {p:?}"
            );
        }
    }

    // Without the `backups` feature, validation refuses [backups].
    #[cfg(feature = "backups")]
    #[test]
    fn backup_locations_are_added_removed_or_restarted_in_place() {
        let loc = |name: &str, extra: &str| {
            format!("[backups.{name}]\ntarget = \"a\"\nurl = \"file:///srv/{name}/\"\n{extra}")
        };
        let old = format!("{BASE}{}{}", loc("x", ""), loc("y", ""));
        let new = format!(
            "{BASE}{}{}[backups.x.thresholds]\nmax_age = \"2h\"\n",
            loc("z", ""),
            loc("x", "pattern = \"*.dump\"\n")
        );
        let p = plan(&config(&old), &config(&new));
        assert_eq!(p.backups_added, ["z"]);
        assert_eq!(p.backups_removed, ["y"]);
        assert_eq!(p.backups_changed, ["x"]);
        assert!(p.needs_restart.is_empty() && p.added.is_empty() && p.updated.is_empty());
        assert_eq!(
            p.summary(),
            "added backups z; removed backups y; changed backups x"
        );
        assert!(plan(&config(&old), &config(&old)).is_empty());
        // New credentials in the environment restart the location too.
        let s3 = format!("{BASE}[backups.s]\ntarget = \"a\"\nurl = \"s3://b/p/\"\n");
        let with = |key: &str| {
            Config::from_toml_with_env(
                &s3,
                [("AWS_SECRET_ACCESS_KEY".to_string(), key.to_string())],
            )
            .unwrap()
        };
        assert_eq!(plan(&with("one"), &with("two")).backups_changed, ["s"]);
    }

    #[test]
    fn what_cannot_change_in_place_is_named() {
        let rem =
            |extra: &str| format!("{BASE}[remediation]\naudit_file = \"/a/audit.jsonl\"\n{extra}");
        let cases = [
            (
                BASE.to_string(),
                format!("[server]\nlisten = \"127.0.0.1:1\"\n{BASE}"),
                "server.listen",
            ),
            (
                BASE.to_string(),
                format!("[log]\nformat = \"json\"\n{BASE}"),
                "log.format",
            ),
            (BASE.to_string(), rem(""), "remediation"),
            (
                rem(""),
                rem("instance = \"other\"\n"),
                "remediation.instance",
            ),
            (
                rem(""),
                rem("state_dir = \"/b\"\n"),
                "remediation.state_dir",
            ),
            (
                rem("mode = \"observe\"\n"),
                rem("mode = \"dry-run\"\n"),
                "remediation.mode",
            ),
        ];
        for (old, new, key) in cases {
            let p = plan(&config(&old), &config(&new));
            assert_eq!(p.needs_restart, [key], "{new}");
        }
        // What can: the mode, the budgets, the level, the grace.
        let p = plan(
            &config(&rem("")),
            &config(&format!(
                "[server]\nshutdown_grace = \"1m\"\n[log]\nlevel = \"debug\"\n{}",
                rem("mode = \"enforce\"\n[remediation.budget]\nper_target = 1\n")
            )),
        );
        assert!(p.needs_restart.is_empty(), "{p:?}");
        assert!(p.remediation && p.log_level && p.server);
        assert_eq!(
            p.summary(),
            "remediation changed; log level changed; server changed"
        );
    }
}
