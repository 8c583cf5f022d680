//! `dbwarden replay`: evaluates the configured policies against a recorded
//! snapshot and prints what would be done and why, like pt-kill's offline
//! matching. Pure: it connects to nothing and changes nothing.
//!
//! Accepts the output of `dbwarden check --format json` or of
//! `GET /api/v1/status?snapshot=true`: `{"targets": [{"target", "checks",
//! "snapshot" | "neo4j_snapshot"}]}`. PostgreSQL snapshots meet
//! `[remediation.policies.*]`, Neo4j snapshots `[remediation.neo4j_policies.*]`
//! and `[remediation.neo4j_index_rebuild]` (a snapshot does not say how
//! long an index has been FAILED: replay takes each FAILED index as FAILED
//! for `failed_for`, and no rebuild in progress).

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{Format, exit};
use crate::config::Config;
use crate::evaluate::{CheckName, CheckResult, CheckStatus, fmt_secs};
use crate::observe::PgSnapshot;
use crate::observe::neo4j::Neo4jSnapshot;
use crate::remediate::neo4j_index_policy::{self, IndexSelection};
use crate::remediate::neo4j_policy::{self, Neo4jPolicyEvaluation};
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
    #[serde(default)]
    neo4j_snapshot: Option<Neo4jSnapshot>,
    /// The probes' checks, which a policy's `only_while_failing` may name.
    #[serde(default)]
    probes: Vec<RecordedProbe>,
}

#[derive(Debug, Deserialize)]
struct RecordedProbe {
    #[serde(default)]
    checks: Vec<RecordedProbeCheck>,
}

#[derive(Debug, Deserialize)]
struct RecordedProbeCheck {
    check: String,
    status: CheckStatus,
}

/// One target's replay: PostgreSQL sessions or Neo4j transactions.
enum Replayed {
    Postgres(Vec<PolicyEvaluation>, Vec<policy::Candidate>),
    Neo4j(
        Vec<Neo4jPolicyEvaluation>,
        Vec<neo4j_policy::Neo4jCandidate>,
        /// The index rebuild, where it applies to the target.
        Option<IndexSelection>,
    ),
}

/// The index rebuild's decision on a recorded snapshot, taking every FAILED
/// index as FAILED for exactly `failed_for`.
fn replay_rebuild(
    rem: &crate::remediate::RemediationSettings,
    target: &str,
    snapshot: &Neo4jSnapshot,
) -> Option<IndexSelection> {
    let settings = rem
        .neo4j_index_rebuild
        .as_ref()
        .filter(|r| r.applies_to(target))?;
    let since = snapshot.observed_at - settings.failed_for.as_secs_f64();
    let failed_since = snapshot
        .indexes
        .iter()
        .filter(|i| neo4j_index_policy::is_failed(i))
        .map(|i| (neo4j_index_policy::key_of(i), since))
        .collect();
    Some(neo4j_index_policy::select(
        settings,
        snapshot,
        &failed_since,
        None,
    ))
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
        let failing: Vec<CheckName> = t
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| CheckName::Builtin(c.check))
            .chain(
                t.probes
                    .iter()
                    .flat_map(|p| &p.checks)
                    .filter(|c| c.status == CheckStatus::Fail)
                    .map(|c| CheckName::Probe(c.check.clone())),
            )
            .collect();
        let gates = policy::Gates {
            failing: &failing,
            firing_alerts: assume_firing,
        };
        let replayed = match (&t.snapshot, &t.neo4j_snapshot) {
            (Some(snapshot), _) => {
                let (e, c) = policy::select(
                    &rem.policies.values().cloned().collect::<Vec<_>>(),
                    &t.target,
                    snapshot,
                    gates,
                );
                Replayed::Postgres(e, c)
            }
            (None, Some(snapshot)) => {
                let (e, c) = neo4j_policy::select(
                    &rem.neo4j_policies.values().cloned().collect::<Vec<_>>(),
                    &t.target,
                    snapshot,
                    gates,
                );
                Replayed::Neo4j(e, c, replay_rebuild(rem, &t.target, snapshot))
            }
            (None, None) => {
                eprintln!(
                    "dbwarden: target {:?} has no snapshot in the file (it was down): skipped",
                    t.target
                );
                continue;
            }
        };
        results.push((t.target.clone(), replayed));
    }
    if results.is_empty() {
        eprintln!("dbwarden: the file holds no snapshot to replay");
        return exit::USAGE;
    }
    match format {
        Format::Json => {
            let v: Vec<_> = results
                .iter()
                .map(|(t, r)| match r {
                    Replayed::Postgres(e, c) => {
                        serde_json::json!({"target": t, "policies": e, "would_act_on": c})
                    }
                    Replayed::Neo4j(e, c, r) => {
                        serde_json::json!({"target": t, "policies": e, "would_act_on": c, "index_rebuild": r})
                    }
                })
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
            for (t, replayed) in &results {
                let _ = writeln!(out, "target {t}");
                match replayed {
                    Replayed::Postgres(evaluations, chosen) => {
                        if evaluations.is_empty() {
                            let _ = writeln!(out, "  no policy applies to this target");
                        }
                        for e in evaluations {
                            render_policy(&mut out, e);
                        }
                        let _ =
                            writeln!(out, "  would act on {} session(s) this cycle", chosen.len());
                    }
                    Replayed::Neo4j(evaluations, chosen, rebuild) => {
                        if evaluations.is_empty() {
                            let _ = writeln!(out, "  no Neo4j policy applies to this target");
                        }
                        for e in evaluations {
                            render_neo4j_policy(&mut out, e);
                        }
                        let _ = writeln!(
                            out,
                            "  would terminate {} transaction(s) this cycle",
                            chosen.len()
                        );
                        if let Some(r) = rebuild {
                            render_rebuild(&mut out, r);
                        }
                    }
                }
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

fn render_neo4j_policy(out: &mut String, e: &Neo4jPolicyEvaluation) {
    let _ = writeln!(out, "  policy {}: gate {}", e.policy, e.gate_reason);
    for c in &e.candidates {
        let t = &c.transaction;
        let chosen = e
            .selected
            .iter()
            .any(|s| s.transaction.id == t.id && s.transaction.database == t.database);
        let _ = writeln!(
            out,
            "    {} {} user {:?} db {:?} {} ({}): {} [{}]",
            if chosen {
                "WOULD TERMINATE"
            } else {
                "candidate, not chosen"
            },
            t.id,
            t.username,
            t.database,
            t.status,
            fmt_secs(t.elapsed_ms as f64 / 1000.0),
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
    for (t, why) in &e.protected {
        let _ = writeln!(
            out,
            "    PROTECTED {} user {:?} db {:?}: {:?}",
            t.id, t.username, t.database, why
        );
    }
    if e.candidates.is_empty() && e.protected.is_empty() {
        let _ = writeln!(out, "    no transaction meets every condition");
    }
}

fn render_rebuild(out: &mut String, r: &IndexSelection) {
    let _ = writeln!(
        out,
        "  index rebuild: {} FAILED index(es), each taken as FAILED for failed_for (a snapshot does not say how long)",
        r.failed
    );
    for (n, c) in r.eligible.iter().enumerate() {
        let i = &c.index;
        match (&c.statements, n) {
            (Some(s), 0) => {
                let _ = writeln!(
                    out,
                    "    WOULD REBUILD {}.{} ({}): {}; then {}",
                    i.database, i.name, c.reason, s.drop, s.create
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "    candidate, not chosen {}.{}: one index at a time, after the first is ONLINE",
                    i.database, i.name
                );
            }
        }
    }
    for (c, why) in &r.refused {
        let _ = writeln!(
            out,
            "    REFUSED {}.{}: {why}",
            c.index.database, c.index.name
        );
    }
    for (i, held) in r.held.iter().filter(|(_, h)| !h.refuses()) {
        let _ = writeln!(out, "    HELD {}.{}: {}", i.database, i.name, held.as_str());
    }
    let _ = writeln!(
        out,
        "  would rebuild {} index(es) this cycle",
        usize::from(!r.eligible.is_empty())
    );
}
