//! dbwarden's interface to the rest of the monitoring stack, tested: the
//! Prometheus alert rules and their promtool unit tests, the Grafana
//! dashboards, the metrics reference, the runbook and the generated
//! Kubernetes manifests.
//!
//! The central test starts the daemon in-process against real servers (the
//! machine's PostgreSQL on 127.0.0.1:5432, plus a scratch primary with a
//! streaming standby, a replication slot, data checksums and WAL archiving,
//! and remediation in dry-run mode with a policy that selects an idle session
//! the test holds open on the scratch primary, so that every family dbwarden
//! can export shows up, and the Bolt test server of `tests/support/bolt`
//! playing a clustered Neo4j 5 Enterprise, so that every Neo4j family shows
//! up too, and the fake Kubernetes API server of `tests/support/kube_fake.rs`
//! over HTTP with the pods of both, so that every Kubernetes family shows up)
//! and checks every
//! metric named in a rule, a rule test or a dashboard against the names of
//! its real `/metrics`. That prevents the two classic defects of shipped
//! rules: alerting on a metric the exporter no longer emits, and `rate()`
//! of a gauge.
//!
//! Needs the Debian packages `prometheus` (promtool) and `postgresql-15`;
//! fails, never skips, without them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dbwarden::config::Config;
use dbwarden::evaluate::CheckId;
use dbwarden::kubernetes::checks::KubeCheckId;
use dbwarden::scratch::{ClusterOptions, ScratchCluster};
use dbwarden::telemetry::metrics::METRIC_NAMES;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use support::bolt::{BoltServer, ClusterMember, Db, Index, Persona, ServerState, Tx};
use support::kube_fake::{FakeCluster, KubeFake};

const RULES: &str = "deploy/prometheus/dbwarden-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/dbwarden-rules.test.yaml";
const METRICS_DOC: &str = "docs/metrics.md";
const RUNBOOK_DOC: &str = "docs/runbook.md";
const RUNBOOK_URL: &str = "https://github.com/dbwarden/dbwarden/blob/main/docs/runbook.md#";
const DATASOURCE_UID: &str = "${datasource}";
const SCHEMA_VERSION: u64 = 39;

/// How long the daemon may take to become ready, and then to export every
/// family the rules and dashboards use.
const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);

// ------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every dashboard, as (path relative to the crate, text).
fn dashboards() -> Vec<(String, String)> {
    let dir = root().join("dashboards");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("dashboards/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let rel = format!("dashboards/{}", p.file_name().unwrap().to_string_lossy());
            let text = read(&rel);
            (rel, text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

fn parse_json(rel: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

/// Every PromQL expression of a dashboard: panel targets (also of panels
/// nested in rows) and the queries of template variables.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            for q in [&v["definition"], &v["query"], &v["query"]["query"]] {
                if let Some(q) = q.as_str() {
                    out.push(q.to_string());
                }
            }
        }
    }
    out
}

/// Runs promtool, failing with the package to install when it is missing.
fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (apt-get install prometheus), which provides /usr/bin/promtool"
            )
        })
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Identifiers matching `dbwarden_[a-z0-9_]+` that start a word.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "dbwarden_";
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find(PREFIX) {
        let start = from + pos;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start + PREFIX.len();
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if word_start && end > start + PREFIX.len() {
            out.insert(text[start..end].to_string());
        }
        from = end;
    }
    out
}

/// The argument text of every call to `rate(`, `irate(` or `increase(`
/// (balanced parentheses), for checks on what they are applied to.
fn rate_arguments(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    for func in ["rate(", "increase("] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(func) {
            let open = from + pos + func.len() - 1;
            let mut depth = 0usize;
            let mut close = open;
            let (mut quoted, mut escaped) = (false, false);
            for (i, &c) in b.iter().enumerate().skip(open) {
                if quoted {
                    match c {
                        _ if escaped => escaped = false,
                        b'\\' => escaped = true,
                        b'"' => quoted = false,
                        _ => {}
                    }
                    continue;
                }
                match c {
                    b'"' => quoted = true,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            assert!(
                close > open,
                "unbalanced parentheses after {func} in {expr:?}"
            );
            out.push(expr[open + 1..close].to_string());
            from = close;
        }
    }
    out
}

/// Values of `check="..."` matchers in a text.
fn check_matchers(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("check=\"") {
        let rest = &text[i + "check=\"".len()..];
        if let Some(end) = rest.find('"') {
            out.insert(rest[..end].to_string());
        }
    }
    out
}

/// Alert names of the rule file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// An OpenMetrics exposition: sample names, and the type of each family.
struct Exposition {
    samples: BTreeSet<String>,
    /// Family name (as in `# TYPE`) -> type.
    families: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut samples = BTreeSet::new();
        let mut families = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exposition { samples, families }
    }

    /// The type of the family a sample name belongs to.
    fn kind_of(&self, sample: &str) -> Option<&str> {
        if let Some(k) = self.families.get(sample) {
            return Some(k);
        }
        ["_total", "_bucket", "_sum", "_count", "_info", "_created"]
            .iter()
            .filter_map(|s| sample.strip_suffix(s))
            .find_map(|fam| self.families.get(fam).map(String::as_str))
    }
}

/// Every Kubernetes check's name. The exhaustive match stops compiling when
/// a check is added, so that it is added here (and alerted on) too.
fn kube_checks() -> Vec<&'static str> {
    use KubeCheckId::*;
    let all = [
        ApiReachable,
        PodsReady,
        NoCrashLoop,
        NoOomKilled,
        Restarts,
        StatefulSetReady,
        VolumeFree,
    ];
    for c in all {
        match c {
            ApiReachable | PodsReady | NoCrashLoop | NoOomKilled | Restarts | StatefulSetReady
            | VolumeFree => {}
        }
    }
    all.iter().map(|c| c.as_str()).collect()
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

// ------------------------------------------------------------------ tests

#[test]
fn promtool_checks_and_tests_the_rules() {
    assert_success(
        &format!("promtool check rules {RULES}"),
        &promtool(&["check", "rules", RULES]),
    );
    assert_success(
        &format!("promtool test rules {RULE_TESTS}"),
        &promtool(&["test", "rules", RULE_TESTS]),
    );
}

#[test]
fn every_alert_has_tests_a_runbook_section_and_the_conventions() {
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let runbook = read(RUNBOOK_DOC);
    let alerts = alert_names(&rules);
    assert!(
        alerts.len() >= 15,
        "too few alerts found in {RULES}: {alerts:?}"
    );
    let unique: BTreeSet<_> = alerts.iter().collect();
    assert_eq!(
        unique.len(),
        alerts.len(),
        "duplicate alert names in {RULES}"
    );
    for a in &alerts {
        assert!(
            a.starts_with("DbWarden"),
            "alert {a} lacks the DbWarden prefix"
        );
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "{RULE_TESTS} has no alert_rule_test for {a}"
        );
        assert!(
            tests.contains(&format!(
                "ALERTS{{alertname=\"{a}\",alertstate=\"pending\"}}"
            )),
            "{RULE_TESTS} does not test {a} pending"
        );
        assert!(
            rules.contains(&format!("runbook_url: {RUNBOOK_URL}{}\n", a.to_lowercase())),
            "{a}: runbook_url must be {RUNBOOK_URL}{}",
            a.to_lowercase()
        );
        assert!(
            runbook.contains(&format!("\n## {a}\n")),
            "{RUNBOOK_DOC} has no section `## {a}` (the anchor of its runbook_url)"
        );
    }
    // Each rule: a severity among the three, a static summary, a description.
    let per_rule: Vec<&str> = rules.split("- alert:").skip(1).collect();
    for (a, body) in alerts.iter().zip(&per_rule) {
        assert!(
            ["critical", "warning", "info"]
                .iter()
                .any(|s| body.contains(&format!("severity: {s}\n"))),
            "{a}: severity must be critical, warning or info"
        );
        let summary = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("summary:"))
            .unwrap_or_else(|| panic!("{a}: no summary annotation"));
        assert!(!summary.contains("{{"), "{a}: summary must be static");
        assert!(
            body.contains("description:"),
            "{a}: no description annotation"
        );
        // Alerts about dbwarden's own process (its configuration) name the
        // instance; every other alert is about a target, names it and shows
        // the value.
        // Per-instance alerts (configuration, shards) name the instance.
        if body.contains("expr: dbwarden_config_") || body.contains("expr: dbwarden_shard_") {
            assert!(
                body.contains("$labels.instance"),
                "{a}: description must name the instance"
            );
        } else {
            assert!(
                body.contains("$labels.target"),
                "{a}: description must name the target"
            );
            assert!(body.contains("$value"), "{a}: description must show $value");
        }
        assert!(body.contains("for:"), "{a}: no `for`");
    }
    // Check names in matchers are real checks.
    // PostgreSQL's checks, Neo4j's and the Kubernetes ones.
    let checks: BTreeSet<&str> = CheckId::ALL
        .iter()
        .chain(CheckId::NEO4J.iter())
        .chain(dbwarden::evaluate::BACKUP_CHECKS.iter())
        .map(|c| c.as_str())
        .chain(kube_checks())
        .collect();
    let mut texts = vec![
        (RULES.to_string(), rules.clone()),
        (RULE_TESTS.to_string(), tests),
    ];
    for (rel, text) in dashboards() {
        texts.push((
            rel.clone(),
            dashboard_exprs(&parse_json(&rel, &text)).join("\n"),
        ));
    }
    // A probe check is named by the team's configuration.
    let probe = regex::Regex::new("^probe:[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?$").unwrap();
    for (rel, text) in &texts {
        for c in check_matchers(text) {
            assert!(
                checks.contains(c.as_str()) || probe.is_match(&c),
                "{rel}: check=\"{c}\" is not a dbwarden check ({checks:?})"
            );
        }
    }
    // Every check is either alerted on or is the connection check (dbwarden_up).
    for c in &checks {
        assert!(
            *c == "connection" || rules.contains(&format!("check=\"{c}\"")),
            "{RULES}: no alert on check {c}"
        );
    }
}

/// The status page links each failing check to its alert's runbook
/// section: that alert must be the one the shipped rules fire for the check
/// (its expression names `check="<check>"`, or it is the target-down alert
/// of the connection check), and every check of every kind has one.
#[test]
fn the_status_page_links_each_check_to_the_alert_that_fires_for_it() {
    let rules = read(RULES);
    let alerts = alert_names(&rules);
    let per_rule: Vec<&str> = rules.split("- alert:").skip(1).collect();
    let pg: Vec<&str> = CheckId::ALL.iter().map(|c| c.as_str()).collect();
    let neo4j: Vec<&str> = CheckId::NEO4J.iter().map(|c| c.as_str()).collect();
    let backups: Vec<&str> = dbwarden::evaluate::BACKUP_CHECKS
        .iter()
        .map(|c| c.as_str())
        .collect();
    let kinds = [
        ("postgres", pg),
        ("neo4j", neo4j),
        ("kubernetes", kube_checks()),
        ("backups", backups),
    ];
    for (kind, checks) in &kinds {
        for check in checks {
            let n = dbwarden::http::CHECK_ALERTS
                .iter()
                .filter(|(k, c, _)| k == kind && c == check)
                .count();
            assert_eq!(n, 1, "CHECK_ALERTS has {n} entries for {kind}/{check}");
        }
    }
    for (kind, check, alert) in dbwarden::http::CHECK_ALERTS {
        assert!(
            kinds.iter().any(|(k, cs)| k == kind && cs.contains(check)),
            "CHECK_ALERTS names {kind}/{check}, which is no such check"
        );
        assert!(
            alerts.iter().any(|a| a == alert),
            "{alert} is not in {RULES}"
        );
        let rule = per_rule
            .iter()
            .find(|r| r.trim_start().starts_with(&format!("{alert}\n")))
            .unwrap_or_else(|| panic!("{alert}: rule not found"));
        let fires_for_check = rule.contains(&format!("check=\"{check}\""));
        let down_alert = *check == "connection"
            && rule.contains("dbwarden_up == 0")
            && rule.contains(&format!("kind=\"{kind}\""));
        assert!(
            fires_for_check || down_alert,
            "{alert} does not fire for {kind}/{check}:\n{rule}"
        );
    }
}

/// The status page links a failing probe check to the probe alerts' runbook
/// sections: those alerts must exist and fire for exactly those checks
/// (`probe:<probe>` for the run, `probe:<probe>:<column>` for the rest).
#[test]
fn the_probe_alerts_fire_for_the_probe_checks_the_status_page_links_them_to() {
    let rules = read(RULES);
    let per_rule: Vec<&str> = rules.split("- alert:").skip(1).collect();
    let matcher = |alert: &str| -> regex::Regex {
        let rule = per_rule
            .iter()
            .find(|r| r.trim_start().starts_with(&format!("{alert}\n")))
            .unwrap_or_else(|| panic!("{alert} is not in {RULES}"));
        let re = regex::Regex::new(r#"check=~"([^"]+)""#).unwrap();
        let caps = re
            .captures(rule)
            .unwrap_or_else(|| panic!("{alert} matches no check=~ pattern"));
        regex::Regex::new(&format!("^(?:{})$", &caps[1])).unwrap()
    };
    let [(_, run_alert), (_, check_alert)] = dbwarden::http::PROBE_ALERTS;
    let (run, check) = (matcher(run_alert), matcher(check_alert));
    for name in ["probe:entities", "probe:a_1"] {
        assert!(run.is_match(name) && !check.is_match(name), "{name}");
    }
    for name in ["probe:entities:rows", "probe:entities:duration"] {
        assert!(check.is_match(name) && !run.is_match(name), "{name}");
    }
    for name in ["connections_used", "probe:"] {
        assert!(!check.is_match(name) && !run.is_match(name), "{name}");
    }
}

#[test]
fn generated_deploy_files_are_up_to_date() {
    let out = Command::new("bash")
        .arg("scripts/generate-deploy.sh")
        .arg("--check")
        .current_dir(root())
        .output()
        .expect("run bash scripts/generate-deploy.sh --check");
    assert_success(
        "scripts/generate-deploy.sh --check (run scripts/generate-deploy.sh to regenerate)",
        &out,
    );
}

#[test]
fn metric_names_are_documented_and_follow_conventions() {
    let doc = read(METRICS_DOC);
    let mut seen = BTreeSet::new();
    for name in METRIC_NAMES {
        assert!(seen.insert(*name), "METRIC_NAMES lists {name} twice");
        assert!(
            name.starts_with("dbwarden_"),
            "{name}: missing the dbwarden_ prefix"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}: only lowercase letters, digits and underscores"
        );
        assert!(!name.contains("__"), "{name}: double underscore");
        assert!(
            doc.contains(&format!("`{name}`")),
            "{METRICS_DOC} does not document {name} (write it in backticks)"
        );
    }
    for c in CheckId::ALL
        .iter()
        .chain(CheckId::NEO4J.iter())
        .chain(dbwarden::evaluate::BACKUP_CHECKS.iter())
        .map(|c| c.as_str())
        .chain(kube_checks())
    {
        assert!(
            doc.contains(&format!("`{c}`")),
            "{METRICS_DOC} does not document check {c}"
        );
    }
}

#[test]
fn dashboards_follow_the_conventions() {
    let mut uids = BTreeSet::new();
    let mut records = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (rel, text) in dashboards() {
        assert!(
            !text.contains("__inputs"),
            "{rel}: no __inputs (breaks provisioning)"
        );
        assert!(
            !text.contains("${DS_"),
            "{rel}: no ${{DS_...}} datasource placeholders"
        );
        let d = parse_json(&rel, &text);
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{rel}: a stable uid of at most 40 characters"
        );
        assert!(uids.insert(uid.to_string()), "{rel}: uid {uid} used twice");
        assert_eq!(
            d["schemaVersion"].as_u64(),
            Some(SCHEMA_VERSION),
            "{rel}: schemaVersion"
        );
        assert!(
            d["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "dbwarden")),
            "{rel}: tag `dbwarden`"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let first = &vars[0];
        assert!(
            first["name"] == "datasource"
                && first["type"] == "datasource"
                && first["query"] == "prometheus",
            "{rel}: the first variable must be datasource (type datasource, query prometheus)"
        );
        let target = vars
            .iter()
            .find(|v| v["name"] == "target")
            .unwrap_or_else(|| panic!("{rel}: no `target` variable"));
        assert_eq!(target["type"], "query", "{rel}: target variable type");
        assert_eq!(target["multi"], true, "{rel}: target variable multi");
        assert_eq!(
            target["includeAll"], true,
            "{rel}: target variable include all"
        );
        assert!(
            target["definition"].as_str().is_some_and(|q| q
                .starts_with("label_values(dbwarden_up")
                && q.ends_with(", target)")),
            "{rel}: target variable must be label_values(dbwarden_up..., target)"
        );
        let ds = serde_json::json!({"type": "prometheus", "uid": DATASOURCE_UID});
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"], ds,
                "{rel}: variable {} datasource",
                v["name"]
            );
        }
        let mut ids = BTreeSet::new();
        let mut panels: Vec<&Value> = Vec::new();
        for p in d["panels"].as_array().expect("panels") {
            panels.push(p);
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{rel}: duplicate panel id in {title}"
            );
            assert!(
                p["gridPos"].is_object(),
                "{rel}: panel {title} has no gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"], ds, "{rel}: panel {title} datasource");
            assert!(
                p["description"]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{rel}: panel {title} has no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{rel}: panel {title} has no unit"
            );
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{rel}: panel {title} has no query"));
            for t in targets {
                assert_eq!(t["datasource"], ds, "{rel}: panel {title} query datasource");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{rel}: panel {title} has an empty query");
                for arg in rate_arguments(expr) {
                    assert!(
                        arg.contains("[$__rate_interval]"),
                        "{rel}: panel {title}: rate()/increase() must use $__rate_interval: {expr}"
                    );
                }
            }
        }
        // Every query must parse: promtool checks them as recording rules.
        for (i, expr) in dashboard_exprs(&d).iter().enumerate() {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("${datasource}", "")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$target", ".*");
            // A variable's label_values(selector, label) becomes its selector.
            let expr = match expr.strip_prefix("label_values(") {
                Some(rest) => rest
                    .rsplit_once(',')
                    .map_or(rest.to_string(), |(sel, _)| sel.to_string()),
                None => expr,
            };
            records.push_str(&format!(
                "      - record: dashboard:{}:q{i}\n        expr: {}\n",
                uid.replace('-', "_"),
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, &records).expect("write dashboard-queries.yaml");
    assert_success(
        "promtool check rules on the dashboards' queries",
        &promtool(&["check", "rules", file.to_str().unwrap()]),
    );
}

/// Scratch servers that make every family dbwarden can export appear: a
/// primary with data checksums, WAL archiving (to nowhere), a physical
/// replication slot, `pg_stat_statements` and the role of the session
/// remediation selects, and its streaming standby.
struct Replicated {
    primary: ScratchCluster,
    standby: ScratchCluster,
}

fn start_replicated() -> Replicated {
    let primary = ScratchCluster::start_primary(ClusterOptions {
        extra_conf: vec![
            "archive_mode = on".into(),
            "archive_command = 'true'".into(),
            "shared_preload_libraries = 'pg_stat_statements'".into(),
        ],
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("scratch primary: {e}"));
    let psql = |sql: &str| {
        primary
            .psql("postgres", sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    };
    psql("CREATE EXTENSION pg_stat_statements");
    psql("SELECT pg_create_physical_replication_slot('dbwarden_interface_test', true)");
    psql(&format!("CREATE ROLE {IDLE_ROLE} LOGIN"));
    // Write something and switch segments, so one is archived.
    psql("CREATE TABLE interface_test (id int)");
    psql("SELECT pg_switch_wal()");
    let standby =
        ScratchCluster::start_standby(&primary).unwrap_or_else(|e| panic!("scratch standby: {e}"));
    Replicated { primary, standby }
}

/// The role of the idle session the test holds open on the scratch primary
/// for the remediation policy to select.
const IDLE_ROLE: &str = "interface_idle";

/// An idle session of [`IDLE_ROLE`] on the scratch primary, held open while
/// the daemon runs.
async fn idle_session(r: &Replicated) -> PgConnection {
    let url = r.primary.url("postgres");
    let opts: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .unwrap_or_else(|e| panic!("scratch primary URL {url}: {e}"))
        .username(IDLE_ROLE)
        .application_name("interface-test-idle");
    PgConnection::connect_with(&opts)
        .await
        .unwrap_or_else(|e| panic!("idle session as {IDLE_ROLE}: {e}"))
}

/// The daemon's configuration: the machine's PostgreSQL and the scratch pair,
/// and remediation in dry-run mode (it audits what it would do and signals
/// nothing) on the scratch primary only, so that its decision, actor and
/// budget families appear; `dir` holds its audit file and pause state.
/// The Bolt test server as a clustered Neo4j 5 Enterprise with a running
/// transaction, indexes ONLINE and POPULATING, counts and databases, so that
/// every `dbwarden_neo4j_*` family has samples.
fn start_neo4j() -> BoltServer {
    let state = ServerState::shared();
    {
        let mut s = support::bolt::state::lock(&state);
        s.transactions = vec![
            Tx::running(
                "neo4j-transaction-7",
                "query-9",
                "alice",
                "MATCH (n) RETURN n",
            )
            .elapsed_ms(1500),
        ];
        s.indexes = vec![
            Index::online("person_name", "Person", "name"),
            Index::populating("movie_title", "Movie", "title", 40.0),
        ];
        s.node_count = 1234;
        s.relationship_count = 5678;
        s.databases = vec![Db::online("neo4j"), Db::online("system")];
        s.cluster_members = vec![
            ClusterMember::new("core-1", "10.0.0.1:7687", "PRIMARY"),
            ClusterMember::new("core-2", "10.0.0.2:7687", "PRIMARY"),
            ClusterMember::new("core-3", "10.0.0.3:7687", "PRIMARY").health("Unavailable"),
        ];
    }
    BoltServer::start(Persona::neo4j_5().clustered(), state)
}

/// The Kubernetes part of the daemon's configuration: the fake API server
/// through a kubeconfig, StatefulSets and volume stats on, a Lease, a shard
/// group of one (so the `dbwarden_shard_*` families are exported), and the
/// eviction policy (dry-run, like all remediation here) on the scratch
/// primary, whose crash-looping pod has been not ready for longer than
/// `not_ready_for`: it is recorded as would_act, never evicted. With
/// `rebuild_after`, the scratch standby's replay is followed (and exported),
/// never stalled: its primary is idle.
fn kubernetes_config(kube: &KubeFake) -> String {
    kube.config_section(
        "statefulsets = true\nvolume_stats = true\nvolume_stats_interval = \"10s\"\n\
         interval = \"1s\"\n\n\
         [kubernetes.lease]\nname = \"dbwarden\"\nduration = \"15s\"\nrenew_every = \"5s\"\n\n\
         [kubernetes.shards]
duration = \"15s\"
renew_every = \"5s\"

\
         [kubernetes.eviction]
targets = [\"scratch-primary\"]
not_ready_for = \"30s\"
rebuild_after = \"10m\"
",
    )
}

fn config(port: u16, r: &Replicated, dir: &Path, neo4j_uri: &str, kube: &KubeFake) -> Config {
    let target = |name: &str, url: &str, data: &Path| {
        // The scratch primary's pods are the fake cluster's `app=postgres`;
        // its top statements are read (`pg_stat_statements` is there).
        let (pods, statements) = if name == "scratch-primary" {
            (
                "pods = \"app=postgres\"\n",
                format!("[postgres.{name}.statistics.statements]\ntop = 10\n"),
            )
        } else {
            ("", String::new())
        };
        format!(
            "[postgres.{name}]\nurl = {}\nsslmode = \"disable\"\n{pods}[postgres.{name}.paths]\ndata = {}\n{statements}\n",
            toml_str(url),
            toml_str(&data.to_string_lossy())
        )
    };
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"10s\"\n\n\
         [defaults]\npoll_interval = \"2s\"\npoll_timeout = \"2s\"\nstatement_timeout = \"2s\"\n\
         database_sizes_interval = \"2s\"\n\n\
         [thresholds.idle_session]\nignore_applications = [\"psql\"]\n\n"
    );
    toml.push_str(&target(
        "local",
        "postgres://postgres@127.0.0.1:5432/postgres",
        Path::new("/tmp"),
    ));
    toml.push_str(&target(
        "scratch-primary",
        &r.primary.url("postgres"),
        r.primary.data_dir(),
    ));
    toml.push_str(&target(
        "scratch-standby",
        &r.standby.url("postgres"),
        r.standby.data_dir(),
    ));
    let password = dir.join("neo4j-password");
    std::fs::write(&password, "secret\n").expect("write the Neo4j password file");
    toml.push_str(&format!(
        "[neo4j.graph]\nuri = {}\nuser = \"neo4j\"\npassword_file = {}\npods = \"app=neo4j\"\n\n",
        toml_str(neo4j_uri),
        toml_str(&password.to_string_lossy()),
    ));
    toml.push_str(&format!(
        "[remediation]\nmode = \"dry-run\"\ninstance = \"interface-test\"\n\
         audit_file = {}\nstate_dir = {}\n\n\
         [remediation.policies.idle]\ntargets = [\"scratch-primary\"]\naction = \"terminate\"\n\
         [remediation.policies.idle.when]\nstate = [\"idle\"]\nidle_for = \"1s\"\n\
         match_users = [\"{IDLE_ROLE}\"]\n\
         [remediation.neo4j_index_rebuild]\ntargets = [\"graph\"]\n",
        toml_str(&dir.join("audit.jsonl").to_string_lossy()),
        toml_str(&dir.join("state").to_string_lossy()),
    ));
    // Backups: a directory with two plain dumps, and one that does not exist.
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups).expect("create the backups directory");
    for (name, rows) in [("b1.sql", 20), ("b2.sql", 10)] {
        let body = format!(
            "--\n-- PostgreSQL database dump\n--\n{}",
            "SELECT 1;\n".repeat(rows)
        );
        std::fs::write(backups.join(name), body).expect("write a backup");
    }
    for (name, url) in [
        ("files", format!("file://{}/", backups.display())),
        (
            "gone",
            format!("file://{}/", dir.join("no-such-dir").display()),
        ),
    ] {
        toml.push_str(&format!(
            "\n[backups.{name}]\ntarget = \"scratch-primary\"\nurl = {}\npattern = \"*.sql\"\ninterval = \"2s\"\ntimeout = \"2s\"\n",
            toml_str(&url)
        ));
    }
    toml.push_str(&kubernetes_config(kube));
    Config::from_toml_with_env(&toml, std::iter::empty())
        .unwrap_or_else(|e| panic!("invalid test configuration: {e}\n{toml}"))
}

/// Every `dbwarden_*` name used by the rules, their tests and the dashboards,
/// with where it is used.
fn used_metric_names() -> BTreeMap<String, BTreeSet<String>> {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |rel: &str, text: &str| {
        for n in metric_names_in(text) {
            used.entry(n).or_default().insert(rel.to_string());
        }
    };
    add(RULES, &read(RULES));
    add(RULE_TESTS, &read(RULE_TESTS));
    for (rel, text) in dashboards() {
        add(&rel, &text);
    }
    used
}

#[test]
fn every_metric_in_rules_and_dashboards_is_really_exported() {
    let used = used_metric_names();
    assert!(
        used.len() > 20,
        "suspiciously few metric names found: {used:?}"
    );

    let replicated = start_replicated();
    let port = free_port();
    let remediation_dir = tempfile::tempdir().expect("tempdir");
    let base = format!("http://127.0.0.1:{port}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (neo4j, kube) = {
        let _runtime = rt.enter();
        (start_neo4j(), KubeFake::start(FakeCluster::databases()))
    };
    let config = config(
        port,
        &replicated,
        remediation_dir.path(),
        &neo4j.uri(),
        &kube,
    );
    let (exposition, missing) = rt.block_on(async {
        // Selected by the dry-run policy: nothing is signalled, the decision
        // is audited and counted, and dbwarden takes the actor lock.
        let idle = idle_session(&replicated).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(dbwarden::daemon::run(config, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");

        let started = Instant::now();
        loop {
            let last = match client.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status() == 200 => break,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if daemon.is_finished() {
                panic!("the daemon stopped before it was ready: {:?}", daemon.await);
            }
            assert!(
                started.elapsed() < DEADLINE,
                "/readyz not 200 within {DEADLINE:?}; last answer: {last}"
            );
            tokio::time::sleep(POLL).await;
        }

        // Some families appear a poll or two later (standby feedback, the
        // archiver): wait until all used names are there, or the deadline.
        let started = Instant::now();
        let (text, missing) = loop {
            let text = client
                .get(format!("{base}/metrics"))
                .header("accept", "application/openmetrics-text; version=1.0.0")
                .send()
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("/metrics body");
            let names = Exposition::parse(&text).samples;
            let missing: BTreeMap<String, BTreeSet<String>> = used
                .iter()
                .filter(|(n, _)| !names.contains(*n))
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect();
            // The PVC usage reaches the scratch primary's disk metrics on its
            // next poll after a volume reading.
            let pvc_fed = support::metric_value(
                &text,
                "dbwarden_disk_free_ratio",
                &[("volume", "pvc/data-postgres-0")],
            )
            .is_some();
            if (missing.is_empty() && pvc_fed) || started.elapsed() >= DEADLINE {
                break (text, missing);
            }
            tokio::time::sleep(POLL).await;
        };

        let _ = stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(30), daemon)
            .await
            .expect("the daemon did not stop within 30s of the shutdown signal")
            .expect("the daemon task panicked");
        result.expect("the daemon failed");
        let _ = idle.close().await;
        (text, missing)
    });
    drop(replicated);
    let kube_requests = kube.requests();
    let kube_unexpected = kube.unexpected();
    let kube_evictions = kube.evictions();
    {
        let _runtime = rt.enter();
        drop(neo4j);
        drop(kube);
    }

    let exp = Exposition::parse(&exposition);

    // The Kubernetes families came from the fake API server over HTTP, asked
    // exactly what the watchers, the volume reader and the Lease ask.
    assert!(
        kube_unexpected.is_empty(),
        "requests the fake Kubernetes API server does not serve: {kube_unexpected:?}"
    );
    assert!(
        kube_evictions.is_empty(),
        "dry-run evicted pods: {kube_evictions:?}"
    );
    let asked = |what: &str, f: &dyn Fn(&support::kube_fake::Seen) -> bool| {
        assert!(
            kube_requests.iter().any(|r| r.status < 300 && f(r)),
            "the daemon never asked the fake API server for {what}: {kube_requests:#?}"
        );
    };
    let q = |r: &support::kube_fake::Seen, k: &str| r.query.get(k).cloned().unwrap_or_default();
    for selector in ["app=postgres", "app=neo4j"] {
        asked(&format!("the pods {selector} (list)"), &|r| {
            r.path == "/api/v1/namespaces/db/pods"
                && q(r, "labelSelector") == selector
                && q(r, "watch").is_empty()
        });
        asked(&format!("a watch of the pods {selector}"), &|r| {
            r.path == "/api/v1/namespaces/db/pods"
                && q(r, "labelSelector") == selector
                && q(r, "watch") == "true"
                && q(r, "resourceVersion") == "1000"
        });
    }
    asked("the StatefulSets", &|r| {
        r.path == "/apis/apps/v1/namespaces/db/statefulsets"
    });
    for node in ["node-a", "node-b"] {
        asked(&format!("the stats summary of {node}"), &|r| {
            r.path == format!("/api/v1/nodes/{node}/proxy/stats/summary")
        });
    }
    asked("the Lease", &|r| {
        r.method == "POST" && r.path == "/apis/coordination.k8s.io/v1/namespaces/db/leases"
    });
    // The fake cluster's states, as exported.
    let m = |name: &str, labels: &[(&str, &str)]| support::metric_value(&exposition, name, labels);
    for (name, labels, want) in [
        ("dbwarden_kubernetes_api_reachable", vec![], 1.0),
        (
            "dbwarden_kubernetes_pod_ready",
            vec![("target", "scratch-primary"), ("pod", "postgres-0")],
            1.0,
        ),
        (
            "dbwarden_kubernetes_pod_ready",
            vec![("target", "scratch-primary"), ("pod", "postgres-2")],
            0.0,
        ),
        (
            "dbwarden_kubernetes_pod_waiting",
            vec![("pod", "postgres-2"), ("reason", "CrashLoopBackOff")],
            1.0,
        ),
        (
            "dbwarden_kubernetes_pod_last_termination",
            vec![("pod", "postgres-2"), ("reason", "OOMKilled")],
            1.0,
        ),
        (
            "dbwarden_kubernetes_pod_restarts_total",
            vec![("pod", "postgres-2")],
            7.0,
        ),
        (
            "dbwarden_kubernetes_container_memory_limit_bytes",
            vec![("pod", "neo4j-0"), ("container", "neo4j")],
            f64::from(2u32 << 30),
        ),
        (
            "dbwarden_kubernetes_statefulset_replicas_desired",
            vec![("target", "scratch-primary"), ("statefulset", "postgres")],
            3.0,
        ),
        (
            "dbwarden_kubernetes_statefulset_replicas_ready",
            vec![("target", "scratch-primary"), ("statefulset", "postgres")],
            2.0,
        ),
        (
            "dbwarden_kubernetes_volume_free_ratio",
            vec![("target", "graph"), ("pvc", "data-neo4j-0")],
            0.2,
        ),
        (
            "dbwarden_kubernetes_lease_holder",
            vec![("holder", "interface-test")],
            1.0,
        ),
        ("dbwarden_kubernetes_lease_leader", vec![], 1.0),
        (
            "dbwarden_check_failing",
            vec![
                ("target", "scratch-primary"),
                ("check", "kubernetes_no_crash_loop"),
            ],
            1.0,
        ),
        (
            "dbwarden_check_failing",
            vec![
                ("target", "scratch-primary"),
                ("check", "kubernetes_statefulset_ready"),
            ],
            1.0,
        ),
        (
            "dbwarden_check_failing",
            vec![("target", "graph"), ("check", "kubernetes_volume_free")],
            1.0,
        ),
        (
            "dbwarden_check_failing",
            vec![("target", "graph"), ("check", "kubernetes_pods_ready")],
            0.0,
        ),
    ] {
        assert_eq!(
            m(name, &labels),
            Some(want),
            "{name}{labels:?} from the fake Kubernetes API server\n--- /metrics ---\n{exposition}"
        );
    }
    // dry-run: the crash-looping pod, not ready for 20 minutes, would be evicted.
    let would_evict = m(
        "dbwarden_remediation_actions_total",
        &[
            ("target", "scratch-primary"),
            ("policy", "kubernetes_eviction"),
            ("action", "evict"),
            ("outcome", "would_act"),
        ],
    );
    assert!(
        would_evict >= Some(1.0),
        "no would_act eviction decision: {would_evict:?}\n{exposition}"
    );
    // The scratch primary's claims (80 % free) joined its disk metrics.
    assert_eq!(
        m(
            "dbwarden_disk_free_ratio",
            &[
                ("target", "scratch-primary"),
                ("volume", "pvc/data-postgres-0")
            ]
        ),
        Some(0.8)
    );
    assert!(
        missing.is_empty(),
        "metrics used by rules/tests/dashboards that the daemon does not export \
         (name: where it is used):\n{}\n--- /metrics ---\n{exposition}",
        missing
            .iter()
            .map(|(n, w)| format!(
                "  {n}: {}",
                w.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // METRIC_NAMES is complete: every exported sample name is listed.
    let listed: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    for s in &exp.samples {
        assert!(
            listed.contains(s.as_str()),
            "{s} is exported but missing from METRIC_NAMES"
        );
    }

    // Naming conventions of the real exposition.
    for (fam, kind) in &exp.families {
        assert!(
            fam.starts_with("dbwarden_"),
            "family {fam}: missing the dbwarden_ prefix"
        );
        assert!(
            fam.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "family {fam}: only lowercase letters, digits and underscores"
        );
        if kind != "counter" {
            assert!(
                !fam.ends_with("_total"),
                "{fam} is a {kind}: only counters end in _total"
            );
        }
    }
    for s in &exp.samples {
        let kind = exp
            .kind_of(s)
            .unwrap_or_else(|| panic!("sample {s} belongs to no # TYPE family"));
        match kind {
            "counter" => assert!(s.ends_with("_total"), "counter {s} must end in _total"),
            "info" => assert!(s.ends_with("_info"), "info {s} must end in _info"),
            "histogram" => assert!(
                s.ends_with("_bucket") || s.ends_with("_sum") || s.ends_with("_count"),
                "histogram sample {s}"
            ),
            _ => assert!(!s.ends_with("_total"), "{kind} {s} must not end in _total"),
        }
    }

    // rate()/increase() only of counters and histogram samples, never a gauge.
    let mut exprs: Vec<(String, String)> = vec![(RULES.to_string(), read(RULES))];
    for (rel, text) in dashboards() {
        for e in dashboard_exprs(&parse_json(&rel, &text)) {
            exprs.push((rel.clone(), e));
        }
    }
    for (rel, expr) in &exprs {
        for arg in rate_arguments(expr) {
            for n in metric_names_in(&arg) {
                let kind = exp.kind_of(&n).unwrap_or("unknown");
                assert!(
                    kind == "counter" || kind == "histogram",
                    "{rel}: rate()/increase() of {n}, a {kind}: only counters may be rated"
                );
            }
        }
    }
}

#[test]
fn helpers_extract_what_they_should() {
    let names = metric_names_in(
        r#"x:dbwarden_up == 0 and rate(dbwarden_polls_total[5m]) + xdbwarden_no "dbwarden_" DbWarden_no"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "dbwarden_polls_total".to_string(),
            "dbwarden_up".to_string()
        ]
    );
    assert_eq!(
        rate_arguments("sum(rate(a{x=\"(\"}[1m])) / increase(b[2m])")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["a{x=\"(\"}[1m]", "b[2m]"]
    );
    let e = Exposition::parse(
        "# TYPE dbwarden_polls counter\ndbwarden_polls_total{target=\"a\"} 1\n\
         # TYPE dbwarden_up gauge\ndbwarden_up{target=\"a\"} 1.0\n# EOF\n",
    );
    assert_eq!(e.kind_of("dbwarden_polls_total"), Some("counter"));
    assert_eq!(e.kind_of("dbwarden_up"), Some("gauge"));
    assert_eq!(e.samples.len(), 2);
}
