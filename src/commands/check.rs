//! `dbwarden check`: the daemon's pipeline run once. Observe each target,
//! evaluate without hold times, print the runbook's Quick Diagnosis and
//! Validation Checklist. Read-only by construction: it only polls.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Format, exit};
use crate::config::{Config, TargetConfig};
use crate::daemon::backups;
use crate::daemon::kubernetes::KubernetesReport;
#[cfg(feature = "kubernetes")]
use crate::daemon::kubernetes::observe_kubernetes_once;
use crate::evaluate::HoldState;
use crate::evaluate::Thresholds;
use crate::evaluate::probes::ProbeStatus;
use crate::evaluate::{self, CheckResult, CheckStatus, Neo4jSummary, PgSummary, fmt_secs};
use crate::kubernetes::checks::KubeCheckStatus;
use crate::observe::PostgresTarget;
#[cfg(feature = "neo4j")]
use crate::observe::neo4j::Neo4jObserver;
use crate::observe::neo4j::Neo4jSnapshot;
use crate::observe::{PgSnapshot, PollError, PostgresObserver};
use crate::state::BackupStatus;

/// One target's outcome, as printed by `--format json` (and readable by `dbwarden replay`).
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub kind: &'static str,
    pub url: String,
    pub up: bool,
    pub error: Option<PollError>,
    pub checks: Vec<CheckResult>,
    /// The user's probes: each run once, its checks without hold times.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<PgSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PgSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neo4j: Option<Neo4jSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neo4j_snapshot: Option<Neo4jSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub targets: Vec<TargetReport>,
    /// With a `[kubernetes]` section: the pods, StatefulSets, volumes and checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesReport>,
    /// Every `[backups.<name>]` location, observed once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupStatus>,
}

pub async fn run(config: Config, format: Format) -> u8 {
    crate::observe::tls::ensure_provider();
    // Kubernetes is looked at beside the targets, never in their way.
    // Without the `kubernetes` feature, validation refuses `[kubernetes]`.
    #[cfg(feature = "kubernetes")]
    let kubernetes = config
        .kubernetes
        .clone()
        .map(|k| tokio::spawn(async move { observe_kubernetes_once(&k).await }));
    #[cfg(not(feature = "kubernetes"))]
    let kubernetes: Option<tokio::task::JoinHandle<KubernetesReport>> = None;
    // Targets are independent: observe them concurrently, report in config order.
    let mut set = tokio::task::JoinSet::new();
    for (i, target) in config.postgres.iter().cloned().enumerate() {
        set.spawn(async move { (i, observe_once(&target).await) });
    }
    // Without the `neo4j` feature, validation refuses Neo4j targets.
    #[cfg(feature = "neo4j")]
    for (i, target) in config.neo4j.iter().cloned().enumerate() {
        let first_neo4j = config.postgres.len();
        set.spawn(async move { (first_neo4j + i, observe_neo4j_once(&target).await) });
    }
    // Backup locations too, each once, beside the targets.
    let mut backup_set = tokio::task::JoinSet::new();
    for (i, b) in config.backups.iter().cloned().enumerate() {
        backup_set.spawn(async move {
            let outcome = backups::observe_once(&b.target).await;
            (
                i,
                backups::status(&b, None, outcome, &HoldState::default(), 0).0,
            )
        });
    }
    let mut reports = Vec::with_capacity(config.postgres.len() + config.neo4j.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("dbwarden: a check task failed: {e}");
                return exit::FAILED;
            }
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<TargetReport> = reports.into_iter().map(|(_, r)| r).collect();
    let kubernetes = match kubernetes {
        Some(task) => match task.await {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("dbwarden: the Kubernetes check task failed: {e}");
                return exit::FAILED;
            }
        },
        None => None,
    };
    let mut backup_reports = Vec::with_capacity(config.backups.len());
    while let Some(joined) = backup_set.join_next().await {
        match joined {
            Ok(r) => backup_reports.push(r),
            Err(e) => {
                eprintln!("dbwarden: a backup check task failed: {e}");
                return exit::FAILED;
            }
        }
    }
    backup_reports.sort_by_key(|(i, _)| *i);
    let backup_reports: Vec<BackupStatus> = backup_reports.into_iter().map(|(_, r)| r).collect();
    let ok = reports.iter().all(|r| {
        r.checks.iter().all(|c| c.status == CheckStatus::Pass)
            && r.probes
                .iter()
                .flat_map(|p| &p.checks)
                .all(|c| c.status == CheckStatus::Pass)
    }) && backup_reports
        .iter()
        .all(|b| b.checks.iter().all(|c| c.status == CheckStatus::Pass))
        && kubernetes
            .as_ref()
            .is_none_or(|k| k.checks.iter().all(|c| c.status == KubeCheckStatus::Pass));
    let report = Report {
        ok,
        targets: reports,
        kubernetes,
        backups: backup_reports,
    };
    match format {
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("dbwarden: cannot render JSON: {e}");
                return exit::FAILED;
            }
        },
        Format::Text => print!("{}", render_text(&report)),
    }
    if ok { exit::OK } else { exit::FAILED }
}

async fn observe_once(config: &TargetConfig<PostgresTarget, Thresholds>) -> TargetReport {
    let (target, thresholds) = (&config.target, &config.thresholds);
    let mut observer = PostgresObserver::new(target.clone());
    let result = observer.poll().await;
    // Every probe runs once after a successful poll, due or not.
    let probes = if result.is_ok() {
        let runs = observer.run_probes(std::time::Instant::now(), true).await;
        let mut book = evaluate::probes::ProbeBook::default();
        book.record(runs);
        evaluate::probes::evaluate(&mut book, &target.active_probes, 0, false)
    } else {
        Vec::new()
    };
    observer.close().await;
    match result {
        Ok(snapshot) => TargetReport {
            target: target.name.clone(),
            kind: "postgres",
            url: target.redacted_url(),
            up: true,
            error: None,
            checks: evaluate::evaluate_once(&snapshot, thresholds),
            probes,
            summary: Some(evaluate::summarize(&snapshot)),
            snapshot: Some(snapshot),
            neo4j: None,
            neo4j_snapshot: None,
        },
        Err(e) => TargetReport {
            target: target.name.clone(),
            kind: "postgres",
            url: target.redacted_url(),
            up: false,
            checks: evaluate::evaluate_down(thresholds, &e.message),
            probes: Vec::new(),
            error: Some(e),
            summary: None,
            snapshot: None,
            neo4j: None,
            neo4j_snapshot: None,
        },
    }
}

#[cfg(feature = "neo4j")]
async fn observe_neo4j_once(
    config: &TargetConfig<crate::observe::neo4j::Neo4jTarget, crate::evaluate::Neo4jThresholds>,
) -> TargetReport {
    let (target, thresholds) = (&config.target, &config.thresholds);
    let mut observer = Neo4jObserver::new(target.clone());
    let result = observer.poll().await;
    // Every probe runs once after a successful poll, due or not.
    let probes = if result.is_ok() {
        let runs = observer.run_probes(std::time::Instant::now(), true).await;
        let mut book = evaluate::probes::ProbeBook::default();
        book.record(runs);
        evaluate::probes::evaluate(&mut book, &target.active_probes, 0, false)
    } else {
        Vec::new()
    };
    observer.close().await;
    let (up, error, checks, neo4j, neo4j_snapshot) = match result {
        Ok(snapshot) => (
            true,
            None,
            evaluate::evaluate_neo4j_once(&snapshot, thresholds),
            Some(evaluate::summarize_neo4j(&snapshot, thresholds)),
            Some(snapshot),
        ),
        Err(e) => (
            false,
            Some(e.clone()),
            evaluate::evaluate_neo4j_down(thresholds, &e.message),
            None,
            None,
        ),
    };
    TargetReport {
        target: target.name.clone(),
        kind: "neo4j",
        url: target.uri().to_string(),
        up,
        error,
        checks,
        probes,
        summary: None,
        snapshot: None,
        neo4j,
        neo4j_snapshot,
    }
}

fn render_neo4j(out: &mut String, sum: &Neo4jSummary) {
    let _ = writeln!(
        out,
        "  Neo4j {} {}, RETURN 1 in {}",
        sum.version,
        sum.edition,
        fmt_secs(sum.ping_seconds)
    );
    out.push_str(
        "  Quick diagnosis
",
    );
    for (db, by_status) in &sum.transactions {
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let _ = writeln!(
            out,
            "    {db}: transactions {}, longest {}, {} slow; {} nodes, {} relationships",
            if statuses.is_empty() {
                "none".to_string()
            } else {
                statuses.join(", ")
            },
            fmt_secs(
                sum.longest_transaction_seconds
                    .get(db)
                    .copied()
                    .unwrap_or(0.0)
            ),
            sum.slow_transactions.get(db).copied().unwrap_or(0),
            sum.nodes.get(db).copied().unwrap_or(0),
            sum.relationships.get(db).copied().unwrap_or(0),
        );
    }
    for i in &sum.indexes_not_online {
        let _ = writeln!(
            out,
            "    index {}.{} {} ({:.1}% populated){}",
            i.database,
            i.name,
            i.state,
            i.population_percent,
            i.failure_message
                .as_deref()
                .map(|m| format!(": {}", m.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        );
    }
    for d in &sum.databases {
        let _ = writeln!(
            out,
            "    database {}: {} (requested {}){}",
            d.name,
            d.current_status,
            d.requested_status,
            d.role
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default()
        );
    }
    match &sum.cluster {
        None => out.push_str("    cluster: not clustered\n"),
        Some(members) => {
            for m in members {
                let _ = writeln!(
                    out,
                    "    cluster member {} ({}): {} {}",
                    m.id, m.address, m.role, m.health
                );
            }
        }
    }
}

fn render_kubernetes(out: &mut String, k: &KubernetesReport) {
    let s = &k.snapshot;
    let _ = writeln!(out, "kubernetes (namespace {})", s.namespace);
    match (&s.api_reachable, &s.error) {
        (true, _) => out.push_str("  API server reachable\n"),
        (false, e) => {
            let _ = writeln!(
                out,
                "  API server unreachable: {}",
                e.as_deref().unwrap_or("unknown error")
            );
        }
    }
    for p in &s.pods {
        let _ = writeln!(
            out,
            "    pod {} ({}): {}, {}, {} restarts ({} in the last hour){}{}",
            p.name,
            p.target,
            p.phase,
            if p.ready { "ready" } else { "not ready" },
            p.restart_count,
            p.restarts_last_hour,
            p.waiting_reason
                .as_deref()
                .map(|r| format!(", waiting: {r}"))
                .unwrap_or_default(),
            p.last_termination
                .as_ref()
                .and_then(|t| t.reason.as_deref())
                .map(|r| format!(", last terminated: {r}"))
                .unwrap_or_default(),
        );
    }
    for st in &s.statefulsets {
        let _ = writeln!(
            out,
            "    statefulset {} ({}): {} of {} ready",
            st.name, st.target, st.ready_replicas, st.desired_replicas
        );
    }
    for v in &s.volumes {
        let _ = writeln!(
            out,
            "    volume {} of {} ({}): {:.1}% free",
            v.pvc,
            v.pod,
            v.target,
            v.free_ratio().unwrap_or(0.0) * 100.0
        );
    }
    out.push_str("  Checks\n");
    for c in &k.checks {
        let status = match c.status {
            KubeCheckStatus::Pass => "PASS",
            KubeCheckStatus::Fail => "FAIL",
            KubeCheckStatus::Unknown => "UNKNOWN",
        };
        let _ = writeln!(
            out,
            "    {status:<7} {:<30} {}: {}",
            c.check.as_str(),
            c.target,
            c.message
        );
    }
}

/// A scoped check's sessions left out: ` [excluded 2: ignore_applications 2, match_users 0]`.
fn excluded_note(c: &CheckResult) -> String {
    let Some(by) = &c.excluded else {
        return String::new();
    };
    let total: u64 = by.values().sum();
    let keys: Vec<String> = by
        .iter()
        .map(|(k, n)| format!("{} {n}", k.as_str()))
        .collect();
    format!(" [excluded {total}: {}]", keys.join(", "))
}

/// The human report: diagnosis first, then one line per check.
/// A backup location: where, what the listing found, and its checks.
fn render_backup(out: &mut String, b: &BackupStatus) {
    let _ = writeln!(
        out,
        "backups {} of target {} ({}) {}",
        b.name, b.target, b.store, b.url
    );
    if let Some(e) = &b.last_error {
        let _ = writeln!(out, "  cannot list ({}): {}", e.kind.as_str(), e.message);
    }
    if let Some(s) = &b.snapshot {
        let _ = writeln!(
            out,
            "  {} objects, {} backups, listed in {}",
            s.objects,
            s.backups,
            fmt_secs(s.duration_seconds)
        );
        for (what, o) in [("newest", &s.newest), ("previous", &s.previous)] {
            if let Some(o) = o {
                let at = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(o.modified_unix_ms.max(0) as u64);
                let _ = writeln!(
                    out,
                    "  {what}: {} ({}, {})",
                    o.key,
                    evaluate::fmt_bytes(o.size_bytes as f64),
                    humantime::format_rfc3339_seconds(at)
                );
            }
        }
    }
    out.push_str("  Checks\n");
    for c in &b.checks {
        let _ = writeln!(
            out,
            "    {:<7} {:<22} {}",
            c.status.as_str().to_uppercase(),
            c.check.as_str(),
            c.detail
        );
    }
}

pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for t in &report.targets {
        let _ = write!(out, "target {} ({}) {}", t.target, t.kind, t.url);
        if let Some(s) = &t.snapshot {
            let _ = write!(
                out,
                "\n  PostgreSQL {}, {}, database {:?}",
                s.server.version_num,
                s.server.role().as_str(),
                s.server.database
            );
        }
        out.push('\n');
        if let Some(e) = &t.error {
            let _ = writeln!(out, "  cannot connect ({}): {}", e.kind.as_str(), e.message);
        }
        if let Some(sum) = &t.neo4j {
            render_neo4j(&mut out, sum);
        }
        if let (Some(sum), Some(s)) = (&t.summary, &t.snapshot) {
            out.push_str("  Quick diagnosis\n");
            let states: Vec<String> = sum
                .sessions_by_state
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(st, n)| format!("{st} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "    sessions by state: {}",
                if states.is_empty() {
                    "none".into()
                } else {
                    states.join(", ")
                }
            );
            let _ = writeln!(
                out,
                "    connections: {} used of {} usable (max_connections {}, {} reserved)",
                sum.connections_used,
                sum.connections_usable,
                s.server.max_connections,
                s.server.superuser_reserved_connections
            );
            let _ = writeln!(
                out,
                "    sessions waiting on locks: {} (blocked by {})",
                sum.lock_waiters, sum.lock_blockers
            );
            if s.standbys.is_empty() && s.recovery.is_none() {
                let _ = writeln!(out, "    replication: no standbys");
            }
            for sb in &s.standbys {
                let _ = writeln!(
                    out,
                    "    standby {:?}: {} ({}), replay lag {}, {} bytes behind",
                    sb.name,
                    sb.state,
                    sb.sync_state,
                    fmt_secs(sb.replay_lag_seconds.unwrap_or(0.0)),
                    sb.replay_lag_bytes.unwrap_or(0.0)
                );
            }
            if let Some(r) = &s.recovery {
                let _ = writeln!(
                    out,
                    "    in recovery: WAL receiver {}, replay {}",
                    r.receiver_status.as_deref().unwrap_or("not running"),
                    if r.replay_paused { "paused" } else { "running" }
                );
            }
            for d in &s.disks {
                match d.free_ratio() {
                    Some(r) => {
                        let _ = writeln!(
                            out,
                            "    volume {} ({}): {:.1}% free",
                            d.volume,
                            d.path,
                            r * 100.0
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "    volume {} ({}): {}",
                            d.volume,
                            d.path,
                            d.error.as_deref().unwrap_or("unknown")
                        );
                    }
                }
            }
        }
        out.push_str("  Checks\n");
        for c in &t.checks {
            let _ = writeln!(
                out,
                "    {:<7} {:<22} {}{}",
                c.status.as_str().to_uppercase(),
                c.check.as_str(),
                c.detail,
                excluded_note(c)
            );
        }
        if !t.probes.is_empty() {
            out.push_str("  Probes\n");
        }
        for c in t.probes.iter().flat_map(|p| &p.checks) {
            let _ = writeln!(
                out,
                "    {:<7} {:<22} {}",
                c.status.as_str().to_uppercase(),
                c.check,
                c.detail
            );
        }
    }
    if let Some(k) = &report.kubernetes {
        render_kubernetes(&mut out, k);
    }
    for b in &report.backups {
        render_backup(&mut out, b);
    }
    let kube = report
        .kubernetes
        .as_ref()
        .map(|k| k.checks.as_slice())
        .unwrap_or_default();
    let failed: usize = report
        .targets
        .iter()
        .map(|t| {
            t.checks
                .iter()
                .filter(|c| c.status != CheckStatus::Pass)
                .count()
                + t.probes
                    .iter()
                    .flat_map(|p| &p.checks)
                    .filter(|c| c.status != CheckStatus::Pass)
                    .count()
        })
        .sum::<usize>()
        + kube
            .iter()
            .filter(|c| c.status != KubeCheckStatus::Pass)
            .count();
    let backup_checks = report.backups.iter().flat_map(|b| b.checks.iter());
    let failed = failed
        + backup_checks
            .clone()
            .filter(|c| c.status != CheckStatus::Pass)
            .count();
    let total: usize = report
        .targets
        .iter()
        .map(|t| t.checks.len() + t.probes.iter().map(|p| p.checks.len()).sum::<usize>())
        .sum::<usize>()
        + kube.len()
        + backup_checks.count();
    let _ = writeln!(
        out,
        "{total} checks: {} pass, {failed} fail",
        total - failed
    );
    out
}
