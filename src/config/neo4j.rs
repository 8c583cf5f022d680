//! Validation of `[neo4j.<name>]` targets and of the Neo4j checks'
//! thresholds (in `[thresholds]` for every Neo4j target, and in
//! `[neo4j.<name>.thresholds]` for one).

use regex::Regex;

use super::raw::{
    self, RawConfig, RawNeo4jPolicy, RawNeo4jTarget, RawTargetSettings, RawThresholds,
};
use super::validate::{
    Issues, check_setting_ranges, gates, regex_reason, settings, valid_env_name, valid_name,
    victims_and_cap,
};
use super::{Neo4jTarget, Neo4jThresholds, PasswordSource, Secret};
use crate::evaluate::CheckId;
use crate::remediate::neo4j_policy::{Neo4jConditions, Neo4jPolicy};

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
pub(super) const DEFAULT_DATABASE: &str = "neo4j";

/// Applies the Neo4j checks written at `path` over `t`, field by field.
pub(super) fn thresholds(
    mut t: Neo4jThresholds,
    raw: &RawThresholds,
    path: &str,
    issues: &mut Issues,
) -> Neo4jThresholds {
    let at = |check: &str, key: &str| raw::join(&raw::join(path, check), key);
    if let Some(c) = raw.slow_queries {
        if let Some(m) = c.max {
            if m.is_zero() {
                issues.push(
                    at("slow_queries", "max"),
                    "\"0s\" would fail all the time: use a positive duration (the runbook's is \"1s\")",
                );
            } else {
                t.slow_queries.value = m.as_secs_f64();
            }
        }
        if let Some(h) = c.hold {
            t.slow_queries.hold = h;
        }
    }
    for (limit, raw) in [
        (&mut t.indexes_online, raw.indexes_online),
        (&mut t.databases_online, raw.databases_online),
        (&mut t.cluster_healthy, raw.cluster_healthy),
    ] {
        if let Some(h) = raw.and_then(|c| c.hold) {
            limit.hold = h;
        }
    }
    for (name, range, raw) in [
        ("node_count", &mut t.node_count, raw.node_count),
        (
            "relationship_count",
            &mut t.relationship_count,
            raw.relationship_count,
        ),
    ] {
        let Some(c) = raw else { continue };
        if c.min.is_some() {
            range.min = c.min;
        }
        if c.max.is_some() {
            range.max = c.max;
        }
        if let Some(h) = c.hold {
            range.hold = h;
        }
        if let (Some(min), Some(max)) = (range.min, range.max)
            && min > max
        {
            issues.push(
                raw::join(path, name),
                format!("min {min} is greater than max {max}: no count could pass"),
            );
        }
    }
    t
}

pub(super) fn target(
    name: &str,
    raw: &RawNeo4jTarget,
    defaults: &RawTargetSettings,
    global: &Neo4jThresholds,
    env: &[(String, String)],
    issues: &mut Issues,
) -> Option<Neo4jTarget> {
    let path = raw::join("neo4j", name);
    let key = |k: &str| raw::join(&path, k);
    let before = issues.0.len();
    if !valid_name(name) {
        issues.push(
            &path,
            format!("invalid target name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }
    if name == "global" {
        issues.push(
            &path,
            "the target name \"global\" is reserved: it names the global remediation budget in metrics",
        );
    }
    if cfg!(not(feature = "neo4j")) {
        issues.push(
            &path,
            "this dbwarden was built without Neo4j support (cargo feature `neo4j`): use a default build",
        );
    }
    check_setting_ranges(&raw.settings, &path, issues);
    let settings = settings(&raw.settings, defaults, &path, issues);

    let uri = match raw.uri.as_deref() {
        None => {
            issues.push(
                key("uri"),
                "missing: a bolt://host:7687 or neo4j://host:7687 URI is required",
            );
            None
        }
        Some(uri) => match check_uri(uri) {
            Ok(()) => Some(uri.to_string()),
            Err(reason) => {
                // Never echo a URI that carries credentials.
                let shown = if uri.contains('@') {
                    super::redact_url(uri)
                } else {
                    uri.to_string()
                };
                issues.push(key("uri"), format!("invalid URI {shown:?}: {reason}"));
                None
            }
        },
    };

    let user = raw.user.clone().unwrap_or_else(|| "neo4j".to_string());
    if user.is_empty() {
        issues.push(
            key("user"),
            "is empty: name the Neo4j user dbwarden logs in as",
        );
    }

    let (password, password_source) = password(raw, &key, env, issues);

    let databases = raw
        .databases
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_DATABASE.to_string()]);
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

    let thresholds = thresholds(global.clone(), &raw.thresholds, &key("thresholds"), issues);

    if issues.0.len() != before {
        return None;
    }
    Some(Neo4jTarget {
        name: name.to_string(),
        uri: uri?,
        user,
        password_source,
        password,
        databases,
        settings,
        thresholds,
    })
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
fn valid_database_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

fn password(
    raw: &RawNeo4jTarget,
    key: &dyn Fn(&str) -> String,
    env: &[(String, String)],
    issues: &mut Issues,
) -> (Option<Secret>, PasswordSource) {
    match (&raw.password_env, &raw.password_file) {
        (Some(_), Some(_)) => {
            issues.push(
                key("password_env"),
                "set together with password_file: use only one",
            );
            (None, PasswordSource::None)
        }
        (Some(var), None) => {
            if !valid_env_name(var) {
                issues.push(
                    key("password_env"),
                    format!("{var:?} is not an environment variable name"),
                );
            }
            let secret = match env.iter().find(|(k, _)| k == var) {
                Some((_, v)) if !v.is_empty() => Some(Secret::new(v.clone())),
                Some(_) => {
                    issues.push(
                        key("password_env"),
                        format!("environment variable {var:?} is empty"),
                    );
                    None
                }
                None => {
                    issues.push(
                        key("password_env"),
                        format!("environment variable {var:?} is not set"),
                    );
                    None
                }
            };
            (secret, PasswordSource::Env(var.clone()))
        }
        (None, Some(file)) => {
            let secret = match std::fs::read_to_string(file) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').unwrap_or(&v);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    if v.is_empty() {
                        issues.push(
                            key("password_file"),
                            format!("file {:?} is empty", file.display().to_string()),
                        );
                        None
                    } else {
                        Some(Secret::new(v))
                    }
                }
                Err(e) => {
                    issues.push(
                        key("password_file"),
                        format!("cannot read {:?}: {e}", file.display().to_string()),
                    );
                    None
                }
            };
            (secret, PasswordSource::File(file.clone()))
        }
        // Neo4j with dbms.security.auth_enabled=false.
        (None, None) => (None, PasswordSource::None),
    }
}

/// The statuses a Neo4j policy may name (SHOW TRANSACTIONS' status column).
const POLICY_STATUSES: [&str; 2] = ["Running", "Blocked"];

/// `[remediation.neo4j_policies.<name>]`.
pub(super) fn policy(
    name: &str,
    p: &RawNeo4jPolicy,
    config: &RawConfig,
    issues: &mut Issues,
) -> Option<Neo4jPolicy> {
    let path = raw::join("remediation.neo4j_policies", name);
    let key = |k: &str| raw::join(&path, k);
    let wkey = |k: &str| raw::join(&raw::join(&path, "when"), k);
    let before = issues.0.len();
    if !valid_name(name) {
        issues.push(
            &path,
            format!("invalid policy name {name:?}: use 1-63 lowercase letters, digits, '_' or '-'"),
        );
    }
    match &p.targets {
        Some(t) if t.is_empty() => issues.push(
            key("targets"),
            "empty: name the Neo4j targets, or leave targets out to apply the policy to every Neo4j target",
        ),
        Some(t) => {
            for x in t {
                if config.postgres.contains_key(x) {
                    issues.push(
                        key("targets"),
                        format!("{x:?} is a PostgreSQL target: Neo4j policies act on Neo4j targets; use [remediation.policies.*] for it"),
                    );
                } else if !config.neo4j.contains_key(x) {
                    let known: Vec<String> =
                        config.neo4j.keys().map(|k| format!("{k:?}")).collect();
                    issues.push(
                        key("targets"),
                        format!(
                            "{x:?} is not a configured Neo4j target: configured are {}",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    );
                }
            }
        }
        None => {}
    }
    match p.action.as_deref() {
        None | Some("terminate") => {}
        Some(other) => issues.push(
            key("action"),
            format!(
                "invalid value {other:?}: a Neo4j policy can only \"terminate\" (TERMINATE TRANSACTIONS, or dbms.killQuery before 4.4)"
            ),
        ),
    }
    let (victims, max_per_cycle) =
        victims_and_cap(p.victims.as_deref(), p.max_per_cycle, &path, issues);
    let (only_while_failing, only_while_alerts) = gates(
        p.only_while_failing.as_deref(),
        p.only_while_alerts.as_deref(),
        &CheckId::NEO4J,
        "Neo4j check",
        &path,
        issues,
    );

    let w = &p.when;
    if let Some(d) = w.running_for
        && d.is_zero()
    {
        issues.push(
            wkey("running_for"),
            "\"0s\" selects every transaction: use a positive duration, e.g. \"5m\"",
        );
    }
    let mut statuses = Vec::new();
    for st in w.status.iter().flatten() {
        match POLICY_STATUSES.iter().find(|s| s.eq_ignore_ascii_case(st)) {
            Some(s) => statuses.push(s.to_string()),
            None => issues.push(
                wkey("status"),
                format!(
                    "invalid status {st:?}: expected {} (Closing and Terminated transactions are already ending)",
                    POLICY_STATUSES.join(" or ")
                ),
            ),
        }
    }
    if w.running_for.is_none() && w.status.is_none() {
        issues.push(
            raw::join(&path, "when"),
            if w.written.is_empty() {
                "missing: a policy needs conditions; set running_for (e.g. \"5m\") and optionally status, users, databases, query".to_string()
            } else {
                format!(
                    "{} alone would select every such transaction however young: add running_for (e.g. \"5m\") or status",
                    w.written.join(", ")
                )
            },
        );
    }
    let regex = |k: &str, v: &Option<String>, issues: &mut Issues| -> Option<Regex> {
        let v = v.as_ref()?;
        match Regex::new(v) {
            Ok(r) => Some(r),
            Err(e) => {
                issues.push(
                    wkey(k),
                    format!("invalid regular expression {v:?}: {}", regex_reason(&e)),
                );
                None
            }
        }
    };
    let match_query = regex("match_query", &w.match_query, issues);
    let ignore_query = regex("ignore_query", &w.ignore_query, issues);
    for (k, v) in [
        ("match_users", &w.match_users),
        ("ignore_users", &w.ignore_users),
        ("match_databases", &w.match_databases),
        ("ignore_databases", &w.ignore_databases),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty()) {
            issues.push(wkey(k), "empty: name at least one, or leave the key out");
        }
    }
    if issues.0.len() != before {
        return None;
    }
    Some(Neo4jPolicy {
        name: name.to_string(),
        targets: p.targets.clone().unwrap_or_default(),
        victims,
        max_per_cycle,
        conditions: Neo4jConditions {
            running_for: w.running_for,
            statuses,
            match_users: w.match_users.clone().unwrap_or_default(),
            ignore_users: w.ignore_users.clone().unwrap_or_default(),
            match_databases: w.match_databases.clone().unwrap_or_default(),
            ignore_databases: w.ignore_databases.clone().unwrap_or_default(),
            match_query,
            ignore_query,
        },
        only_while_failing,
        only_while_alerts,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, ConfigError, ConfigIssue, CountRange, Limit};

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            toml,
            [("NEO4J_PASSWORD".to_string(), "s3cret-pw".to_string())],
        )
    }

    #[track_caller]
    fn issues(toml: &str) -> Vec<ConfigIssue> {
        match load(toml) {
            Ok(c) => panic!("expected errors, got {c:#?}"),
            Err(ConfigError::Invalid(i)) => i,
            Err(e) => panic!("{e}"),
        }
    }

    #[track_caller]
    fn at<'a>(issues: &'a [ConfigIssue], path: &str) -> &'a str {
        let found: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
        assert_eq!(found.len(), 1, "one issue at {path} in {issues:#?}");
        &found[0].message
    }

    const GRAPH: &str =
        "[neo4j.graph]\nuri = \"bolt://neo4j:7687\"\npassword_env = \"NEO4J_PASSWORD\"\n";

    #[cfg(feature = "neo4j")]
    #[test]
    fn a_neo4j_only_config_loads_with_the_runbook_defaults() {
        let c = load(GRAPH).unwrap();
        assert!(c.postgres.is_empty());
        let t = &c.neo4j[0];
        assert_eq!(t.user, "neo4j");
        assert_eq!(t.databases, ["neo4j"]);
        assert_eq!(t.password.as_ref().map(|p| p.expose()), Some("s3cret-pw"));
        assert_eq!(t.thresholds, Neo4jThresholds::default());
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("s3cret-pw"), "{printed}");
        assert_eq!(load(&printed).unwrap().to_redacted_toml(), printed);
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn every_mistake_in_a_neo4j_target_is_reported_at_its_key() {
        let i = issues(
            "[neo4j.Graph]\nuri = \"http://neo4j:s3cret@db:7474\"\npassword_env = \"UNSET\"\n\
             databases = [\"neo4j\", \"neo4j\", \"x\"]\nstatement_timeout = \"1s\"\n\
             [neo4j.Graph.thresholds]\nslow_queries = { max = \"0s\" }\n\
             node_count = { min = 10, max = 5 }\ndisk_free = { min_ratio = 0.2 }\n",
        );
        assert!(at(&i, "neo4j.Graph").contains("invalid target name"));
        let uri = at(&i, "neo4j.Graph.uri");
        assert!(uri.contains("unsupported scheme \"http\""), "{uri}");
        assert!(!uri.contains("s3cret"), "the password leaked: {uri}");
        assert!(at(&i, "neo4j.Graph.password_env").contains("\"UNSET\" is not set"));
        let dbs: Vec<&str> = i
            .iter()
            .filter(|x| x.path == "neo4j.Graph.databases")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(dbs.len(), 2, "{dbs:?}");
        assert!(at(&i, "neo4j.Graph.statement_timeout").contains("PostgreSQL targets only"));
        assert!(at(&i, "neo4j.Graph.thresholds.slow_queries.max").contains("\"0s\""));
        assert!(
            at(&i, "neo4j.Graph.thresholds.node_count").contains("min 10 is greater than max 5")
        );
        assert!(at(&i, "neo4j.Graph.thresholds.disk_free").contains("PostgreSQL targets"));
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn names_are_unique_across_kinds() {
        let i = issues(&format!(
            "{GRAPH}[postgres.graph]\nurl = \"postgres://app@db/app\"\n"
        ));
        assert!(at(&i, "neo4j.graph").contains("also a PostgreSQL target"));
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn neo4j_policies_are_validated_and_kept_in_file_order() {
        let c = load(&format!(
            "{GRAPH}[remediation]\nmode = \"enforce\"\naudit_file = \"/tmp/a.jsonl\"\nstate_dir = \"/tmp\"\n\
             [remediation.neo4j_policies.zeta]\nwhen.running_for = \"5m\"\n\
             [remediation.neo4j_policies.alpha]\nonly_while_failing = [\"slow_queries\"]\n\
             when.status = [\"blocked\"]\nwhen.ignore_users = [\"etl\"]\nwhen.match_query = \"MATCH\"\n"
        ))
        .unwrap();
        let r = c.remediation.as_ref().unwrap();
        let names: Vec<&str> = r.neo4j_policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        let alpha = &r.neo4j_policies[1];
        assert_eq!(alpha.conditions.statuses, ["Blocked"]);
        assert_eq!(alpha.only_while_failing, [CheckId::SlowQueries]);
        let printed = c.to_redacted_toml();
        assert_eq!(load(&printed).unwrap().to_redacted_toml(), printed);

        let i = issues(&format!(
            "{GRAPH}[postgres.db]\nurl = \"postgres://app@db/app\"\n\
             [remediation]\naudit_file = \"/tmp/a.jsonl\"\nstate_dir = \"/tmp\"\n\
             [remediation.neo4j_policies.p]\ntargets = [\"db\", \"nope\"]\naction = \"cancel\"\n\
             only_while_failing = [\"connections_used\"]\nwhen.status = [\"Terminated\"]\n\
             when.match_query = \"(\"\nwhen.match_users = []\n\
             [remediation.neo4j_policies.q]\nwhen.match_users = [\"alice\"]\n\
             [remediation.policies.r]\ntargets = [\"graph\"]\naction = \"cancel\"\nwhen.idle_for = \"1m\"\n"
        ));
        let targets: Vec<&str> = i
            .iter()
            .filter(|x| x.path == "remediation.neo4j_policies.p.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"db\" is a PostgreSQL target")),
            "{targets:?}"
        );
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"nope\" is not a configured Neo4j target")),
            "{targets:?}"
        );
        assert!(at(&i, "remediation.neo4j_policies.p.action").contains("can only \"terminate\""));
        assert!(
            at(&i, "remediation.neo4j_policies.p.only_while_failing")
                .contains("unknown Neo4j check")
        );
        assert!(
            at(&i, "remediation.neo4j_policies.p.when.status")
                .contains("invalid status \"Terminated\"")
        );
        assert!(
            at(&i, "remediation.neo4j_policies.p.when.match_query")
                .contains("invalid regular expression")
        );
        assert!(at(&i, "remediation.neo4j_policies.p.when.match_users").contains("empty"));
        assert!(at(&i, "remediation.neo4j_policies.q.when").contains("add running_for"));
        assert!(at(&i, "remediation.policies.r.targets").contains("\"graph\" is a Neo4j target"));
    }

    /// A build without the `neo4j` feature refuses Neo4j targets by name,
    /// and one without `kubernetes` the `[kubernetes]` section.
    #[test]
    fn a_build_without_a_feature_refuses_its_sections() {
        let r = load(&format!(
            "{GRAPH}[kubernetes]\nnamespace = \"db\"\ncredentials = \"in-cluster\"\n"
        ));
        let wanted: Vec<&str> = [
            (!cfg!(feature = "neo4j")).then_some("neo4j.graph"),
            (!cfg!(feature = "kubernetes")).then_some("kubernetes"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match r {
            Ok(_) => assert!(wanted.is_empty(), "accepted without {wanted:?}"),
            Err(ConfigError::Invalid(issues)) => {
                for path in &wanted {
                    let m = at(&issues, path);
                    assert!(m.contains("built without"), "{m}");
                }
                if cfg!(feature = "neo4j") {
                    assert!(issues.iter().all(|i| !i.message.contains("Neo4j support")));
                }
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn uris() {
        for ok in [
            "bolt://localhost:7687",
            "neo4j://graph.example.com",
            "bolt+s://db:7687/",
            "neo4j+ssc://[::1]:7687",
        ] {
            assert_eq!(check_uri(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("http://localhost:7474", "unsupported scheme"),
            ("bolt://neo4j:secret@db:7687", "holds credentials"),
            ("bolt://:7687", "expected a host"),
            ("bolt://db:7687/movies", "has a path"),
            ("localhost:7687", "expected bolt://"),
        ] {
            let e = check_uri(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn database_names() {
        assert!(valid_database_name("neo4j"));
        assert!(valid_database_name("movies-2024.eu"));
        assert!(!valid_database_name("ab"));
        assert!(!valid_database_name("1abc"));
        assert!(!valid_database_name("Movies"));
    }

    #[test]
    fn count_ranges() {
        let r = CountRange {
            min: Some(10),
            max: Some(20),
            hold: Duration::ZERO,
        };
        assert!(!r.contains(9));
        assert!(r.contains(10) && r.contains(20));
        assert!(!r.contains(21));
        let open = CountRange {
            min: None,
            max: None,
            hold: Duration::ZERO,
        };
        assert!(open.contains(0) && open.contains(u64::MAX));
    }

    #[test]
    fn limits_default_to_the_runbook() {
        let t = Neo4jThresholds::default();
        assert_eq!(
            t.slow_queries,
            Limit {
                value: 1.0,
                hold: Duration::ZERO
            }
        );
    }
}
