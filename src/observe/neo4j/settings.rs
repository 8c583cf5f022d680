//! A Neo4j target: `[neo4j.<name>]`. It shares the cadence settings of
//! PostgreSQL targets (and inherits them from `[defaults]`), but not the
//! PostgreSQL-only ones, which are refused when written in its table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::observe::probes::ProbeSettings;
use crate::observe::probes::settings::{CypherProbe, Language};
use crate::observe::settings::{TargetSettings, validate_target_name};
use crate::secret::{Secret, redact_url};
use crate::settings::{Context, Issues, Trim, join, read_secret};

/// The URI schemes neo4rs accepts: `bolt` talks to one server, `neo4j`
/// routes; `+s` verifies TLS against the system roots, `+ssc` accepts a
/// self-signed certificate.
const SCHEMES: [&str; 6] = [
    "bolt",
    "bolt+s",
    "bolt+ssc",
    "neo4j",
    "neo4j+s",
    "neo4j+ssc",
];

/// The database read when `databases` is not set.
pub const DEFAULT_DATABASE: &str = "neo4j";
/// The user when `user` is not set.
pub const DEFAULT_USER: &str = "neo4j";

/// `[neo4j.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jTarget {
    #[serde(skip)]
    pub name: String,
    /// `bolt://host:7687` (one server) or `neo4j://host:7687` (routing), or
    /// their `+s` / `+ssc` TLS forms. Never holds credentials. Required.
    pub uri: Option<String>,
    /// Default "neo4j".
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Databases whose indexes and counts are read (default `["neo4j"]`).
    pub databases: Option<Vec<String>>,
    /// The label selector of the target's pods (read by the Kubernetes part).
    pub pods: Option<String>,
    /// Statements the user defines: `[neo4j.<name>.probes.<probe>]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, CypherProbe>,
    /// The probes that run, as every part reads them (set by `validate`).
    #[serde(skip)]
    pub active_probes: BTreeMap<String, ProbeSettings>,
    /// Only poll_interval, poll_timeout, connect_timeout and backoff_max apply.
    #[serde(default)]
    pub settings: TargetSettings,
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl Neo4jTarget {
    pub fn uri(&self) -> &str {
        self.uri.as_deref().unwrap_or_default()
    }

    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(DEFAULT_USER)
    }

    pub fn databases(&self) -> Vec<String> {
        self.databases
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_DATABASE.to_string()])
    }

    /// Whether `other` connects the same way (server, credentials and the
    /// timeouts the client is built with). Otherwise a reload reconnects.
    pub fn same_connection(&self, other: &Neo4jTarget) -> bool {
        let (a, b) = (&self.settings, &other.settings);
        self.uri == other.uri
            && self.user() == other.user()
            && self.password == other.password
            && a.connect_timeout() == b.connect_timeout()
            && a.poll_timeout() == b.poll_timeout()
    }

    /// What `dbwarden config` prints: every default written in, and none
    /// of the PostgreSQL-only settings it may have inherited from `[defaults]`.
    pub fn resolved(&self) -> Neo4jTarget {
        let s = self.settings.resolved();
        Neo4jTarget {
            user: Some(self.user().to_string()),
            databases: Some(self.databases()),
            settings: TargetSettings {
                poll_interval: s.poll_interval,
                poll_timeout: s.poll_timeout,
                connect_timeout: s.connect_timeout,
                backoff_max: s.backoff_max,
                ..TargetSettings::default()
            },
            ..self.clone()
        }
    }

    /// `path` is `neo4j.<name>`.
    pub fn validate(&mut self, path: &str, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        validate_target_name(&self.name, path, issues);
        if cfg!(not(feature = "neo4j")) {
            issues.push(
                path,
                "this dbwarden was built without Neo4j support (cargo feature `neo4j`): use a default build",
            );
        }
        let s = &self.settings;
        for (k, written) in [
            ("statement_timeout", s.statement_timeout.is_some()),
            ("lock_timeout", s.lock_timeout.is_some()),
            ("max_connections", s.max_connections.is_some()),
            (
                "database_sizes_interval",
                s.database_sizes_interval.is_some(),
            ),
        ] {
            // Inherited from [defaults], they are PostgreSQL targets' defaults.
            if written && ctx.written_here(&key(k)) {
                issues.push(
                    key(k),
                    "applies to PostgreSQL targets only: remove it from this Neo4j target",
                );
            }
        }
        let cadence = TargetSettings {
            statement_timeout: None,
            lock_timeout: None,
            max_connections: None,
            database_sizes_interval: None,
            ..self.settings.clone()
        };
        cadence.validate(path, ctx, issues);

        match self.uri.as_deref() {
            None => issues.push(
                key("uri"),
                "missing: a bolt://host:7687 or neo4j://host:7687 URI is required",
            ),
            Some(uri) => {
                if let Err(reason) = check_uri(uri) {
                    // Never echo a URI that carries credentials.
                    let shown = if uri.contains('@') {
                        redact_url(uri)
                    } else {
                        uri.to_string()
                    };
                    issues.push(key("uri"), format!("invalid URI {shown:?}: {reason}"));
                }
            }
        }
        if self.user().is_empty() {
            issues.push(
                key("user"),
                "is empty: name the Neo4j user dbwarden logs in as",
            );
        }
        // Neither: a server with authentication disabled.
        self.password = read_secret(
            "password",
            path,
            ("password_env", self.password_env.as_deref()),
            ("password_file", self.password_file.as_deref()),
            Trim::LineEnd,
            ctx,
            issues,
        );
        let databases = self.databases();
        if databases.is_empty() {
            issues.push(
                key("databases"),
                "is empty: name at least one database (indexes and counts are read per database)",
            );
        }
        for (i, db) in databases.iter().enumerate() {
            if !valid_database_name(db) {
                issues.push(
                    key("databases"),
                    format!(
                        "invalid database name {db:?}: Neo4j names are 3-63 characters, letters, digits, '.' and '-', starting with a letter"
                    ),
                );
            } else if databases[..i].contains(db) {
                issues.push(key("databases"), format!("{db:?} is listed twice"));
            }
        }
        let probes_path = key("probes");
        self.active_probes = self
            .probes
            .iter()
            .map(|(n, p)| (n.clone(), p.settings()))
            .collect();
        for (name, probe) in &self.active_probes {
            probe.validate(
                name,
                &join(&probes_path, name),
                self.settings.poll_interval(),
                Language::Cypher,
                &databases,
                issues,
            );
        }
        crate::observe::probes::settings::validate_names(&self.active_probes, &probes_path, issues);
    }

    /// Every probe check of the target.
    pub fn probe_check_names(&self) -> Vec<String> {
        self.active_probes
            .iter()
            .flat_map(|(name, p)| p.check_names(name))
            .collect()
    }
}

fn check_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("expected bolt://host:7687 or neo4j://host:7687".into());
    };
    if !SCHEMES.contains(&scheme) {
        return Err(format!(
            "unsupported scheme {scheme:?}: expected one of {}",
            SCHEMES.join(", ")
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "holds credentials: put the user in `user` and the password in password_env or password_file"
                .into(),
        );
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if port.parse::<u16>().is_err() { "" } else { h }
    });
    if host.is_empty() || host.trim_matches(['[', ']']).is_empty() {
        return Err("expected a host and an optional numeric port, e.g. bolt://neo4j:7687".into());
    }
    let path = &rest[authority.len()..];
    if !(path.is_empty() || path == "/") {
        return Err(
            "has a path or query: name the databases in `databases`, not in the URI".into(),
        );
    }
    Ok(())
}

/// Neo4j's database naming rules (3-63 characters; letters, digits, dots and
/// dashes; a letter first), lower-cased as Neo4j stores them.
pub fn valid_database_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        for ok in [
            "bolt://neo4j:7687",
            "neo4j+s://graph.example.com",
            "bolt+ssc://[::1]:7687",
            "bolt://h/",
        ] {
            assert_eq!(check_uri(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("http://h:7474", "unsupported scheme"),
            ("bolt://u:p@h:7687", "credentials"),
            ("bolt://:7687", "expected a host"),
            ("bolt://h:port", "expected a host"),
            ("bolt://h/neo4j", "path"),
            ("h:7687", "expected bolt://"),
        ] {
            let e = check_uri(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// A build without the `neo4j` feature refuses Neo4j targets by name.
    #[test]
    fn a_build_without_neo4j_refuses_the_target() {
        let mut t = Neo4jTarget {
            name: "graph".into(),
            uri: Some("bolt://neo4j:7687".into()),
            ..Neo4jTarget::default()
        };
        let mut issues = Issues::default();
        t.validate("neo4j.graph", &Context::default(), &mut issues);
        let refused = issues
            .0
            .iter()
            .any(|i| i.path == "neo4j.graph" && i.message.contains("built without"));
        assert_eq!(refused, cfg!(not(feature = "neo4j")), "{issues:?}");
        assert_eq!(issues.len(), usize::from(refused), "{issues:?}");
    }

    #[test]
    fn database_names() {
        for ok in ["neo4j", "movies", "a.b-c", "db1"] {
            assert!(valid_database_name(ok), "{ok}");
        }
        for bad in ["ab", "1db", "Movies", "a_b", ""] {
            assert!(!valid_database_name(bad), "{bad}");
        }
    }
}
