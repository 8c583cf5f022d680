//! `dbwarden check`: the daemon's pipeline run once. Observe each target,
//! evaluate without hold times, print the runbook's Quick Diagnosis and
//! Validation Checklist. Read-only by construction: it only polls.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Format, exit};
use crate::config::{Config, PostgresTarget};
use crate::evaluate::{self, CheckResult, CheckStatus, PgSummary, fmt_secs};
use crate::observe::{PgSnapshot, PollError, PostgresObserver};

/// One target's outcome, as printed by `--format json` (and readable by `dbwarden replay`).
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub kind: &'static str,
    pub url: String,
    pub up: bool,
    pub error: Option<PollError>,
    pub checks: Vec<CheckResult>,
    pub summary: Option<PgSummary>,
    pub snapshot: Option<PgSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub targets: Vec<TargetReport>,
}

pub async fn run(config: Config, format: Format) -> u8 {
    // Targets are independent: observe them concurrently, report in config order.
    let mut set = tokio::task::JoinSet::new();
    for (i, target) in config.postgres.iter().cloned().enumerate() {
        set.spawn(async move { (i, observe_once(&target).await) });
    }
    let mut reports = Vec::with_capacity(config.postgres.len());
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
    let ok = reports
        .iter()
        .all(|r| r.checks.iter().all(|c| c.status == CheckStatus::Pass));
    let report = Report {
        ok,
        targets: reports,
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

async fn observe_once(target: &PostgresTarget) -> TargetReport {
    let mut observer = PostgresObserver::new(target.clone());
    let result = observer.poll().await;
    observer.close().await;
    match result {
        Ok(snapshot) => TargetReport {
            target: target.name.clone(),
            kind: "postgres",
            url: target.url.clone(),
            up: true,
            error: None,
            checks: evaluate::evaluate_once(&snapshot, &target.thresholds),
            summary: Some(evaluate::summarize(&snapshot)),
            snapshot: Some(snapshot),
        },
        Err(e) => TargetReport {
            target: target.name.clone(),
            kind: "postgres",
            url: target.url.clone(),
            up: false,
            checks: evaluate::evaluate_down(&target.thresholds, &e.message),
            error: Some(e),
            summary: None,
            snapshot: None,
        },
    }
}

/// The human report: diagnosis first, then one line per check.
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
                "    {:<7} {:<22} {}",
                c.status.as_str().to_uppercase(),
                c.check.as_str(),
                c.detail
            );
        }
    }
    let failed: usize = report
        .targets
        .iter()
        .map(|t| {
            t.checks
                .iter()
                .filter(|c| c.status != CheckStatus::Pass)
                .count()
        })
        .sum();
    let total: usize = report.targets.iter().map(|t| t.checks.len()).sum();
    let _ = writeln!(
        out,
        "{total} checks: {} pass, {failed} fail",
        total - failed
    );
    out
}
