//! `dbwarden replay`: evaluates the configured policies against a recorded
//! snapshot and prints what would be done and why, like pt-kill's offline
//! matching. Pure: it connects to nothing and changes nothing.
//!
//! Accepts the output of `dbwarden check --format json` or of
//! `GET /api/v1/status?snapshot=true`: `{"targets": [{"target", "checks", "snapshot"}]}`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{Format, exit};
use crate::config::Config;
use crate::evaluate::{CheckResult, CheckStatus, fmt_secs};
use crate::observe::PgSnapshot;
use crate::remediate::policy::{self, PolicyEvaluation};

#[derive(Debug, Deserialize)]
struct Recorded {
    targets: Vec<RecordedTarget>,
}

#[derive(Debug, Deserialize)]
struct RecordedTarget {
    target: String,
    #[serde(default)]
    checks: Vec<CheckResult>,
    snapshot: Option<PgSnapshot>,
}

/// `assume_firing`: alert names to treat as firing on every target, for
/// policies gated on alerts (a recorded snapshot does not hold alerts).
pub fn run(config: &Config, snapshot_file: &Path, format: Format, assume_firing: &[String]) -> u8 {
    let Some(rem) = &config.remediation else {
        eprintln!("dbwarden: no [remediation] policies in the configuration: nothing to replay");
        return exit::USAGE;
    };
    let text = match std::fs::read_to_string(snapshot_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dbwarden: cannot read {}: {e}", snapshot_file.display());
            return exit::USAGE;
        }
    };
    let recorded: Recorded = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "dbwarden: {} is not a recorded snapshot ({e}); save one with `dbwarden check --format json` or GET /api/v1/status?snapshot=true",
                snapshot_file.display()
            );
            return exit::USAGE;
        }
    };
    let mut results = Vec::new();
    for t in &recorded.targets {
        let Some(snapshot) = &t.snapshot else {
            eprintln!(
                "dbwarden: target {:?} has no snapshot in the file (it was down): skipped",
                t.target
            );
            continue;
        };
        let failing: Vec<_> = t
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.check)
            .collect();
        let gates = policy::Gates {
            failing: &failing,
            firing_alerts: assume_firing,
        };
        let (evaluations, chosen) = policy::select(&rem.policies, &t.target, snapshot, gates);
        results.push((t.target.clone(), evaluations, chosen));
    }
    if results.is_empty() {
        eprintln!("dbwarden: the file holds no snapshot to replay");
        return exit::USAGE;
    }
    match format {
        Format::Json => {
            let v: Vec<_> = results
                .iter()
                .map(|(t, e, c)| serde_json::json!({"target": t, "policies": e, "would_act_on": c}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"mode": rem.mode, "targets": v}))
                    .unwrap_or_default()
            );
        }
        Format::Text => {
            let mut out = String::new();
            let _ = writeln!(out, "mode {} (replay acts on nothing)", rem.mode.as_str());
            for (t, evaluations, chosen) in &results {
                let _ = writeln!(out, "target {t}");
                if evaluations.is_empty() {
                    let _ = writeln!(out, "  no policy applies to this target");
                }
                for e in evaluations {
                    render_policy(&mut out, e);
                }
                let _ = writeln!(out, "  would act on {} session(s) this cycle", chosen.len());
            }
            print!("{out}");
        }
    }
    exit::OK
}

fn render_policy(out: &mut String, e: &PolicyEvaluation) {
    let _ = writeln!(out, "  policy {}: gate {}", e.policy, e.gate_reason);
    for c in &e.candidates {
        let f = &c.facts;
        let chosen = e.selected.iter().any(|s| s.facts.pid == f.pid);
        let _ = writeln!(
            out,
            "    {} pid {} user {:?} db {:?} app {:?} ({}): {} [{}]",
            if chosen {
                format!("WOULD {}", c.action.as_str().to_uppercase())
            } else {
                "candidate, not chosen".into()
            },
            f.pid,
            f.user.as_deref().unwrap_or(""),
            f.database.as_deref().unwrap_or(""),
            f.application_name,
            fmt_secs(c.age_seconds),
            c.reason,
            if chosen {
                "selected"
            } else if e.gate_open {
                "over the per-cycle cap"
            } else {
                "gate closed"
            }
        );
    }
    for (f, why) in &e.protected {
        let _ = writeln!(
            out,
            "    PROTECTED pid {} user {:?} app {:?}: {:?}",
            f.pid,
            f.user.as_deref().unwrap_or(""),
            f.application_name,
            why
        );
    }
    if e.candidates.is_empty() && e.protected.is_empty() {
        let _ = writeln!(out, "    no session meets every condition");
    }
}
