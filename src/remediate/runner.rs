//! The remediation loop of one target: after each poll, select (pure), then
//! act within the bounds: mode, pause switch, actor lock, budgets, pacing,
//! and the write-ahead audit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::RemediationSettings;
use super::audit::{AuditLog, AuditRecord, Decision, Mode};
use super::budget::Budget;
use super::executor::{self, Actor, Holder, Outcome, Signal};
use super::pause::PauseSwitch;
use super::policy::{self, Action, Candidate, Policy};
use super::recorder::Recorder;
use crate::config::PostgresTarget;
use crate::evaluate::CheckStatus;
use crate::state::SharedState;
use crate::state::alerts::FiringAlerts;

/// State shared by every target's remediation loop.
pub struct Remediation {
    pub settings: RemediationSettings,
    pub audit: Option<Arc<AuditLog>>,
    pub pause: PauseSwitch,
    global: Mutex<Budget>,
    targets: Mutex<HashMap<String, Budget>>,
    pub(super) metrics: Arc<dyn Recorder>,
}

impl std::fmt::Debug for Remediation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remediation")
            .field("settings", &self.settings)
            .field("audit", &self.audit)
            .field("pause", &self.pause)
            .field("global", &self.global)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Remediation {
    /// Opens the audit file (except in observe mode), rebuilds the budgets
    /// from the actions it records, and loads the pause switch.
    pub fn start(
        settings: RemediationSettings,
        metrics: Arc<dyn Recorder>,
    ) -> Result<Arc<Self>, super::audit::AuditError> {
        let mut global = Budget::new(settings.global_budget().0, settings.global_budget().1);
        let mut targets: HashMap<String, Budget> = HashMap::new();
        let audit = if settings.mode == Mode::Observe {
            None
        } else {
            let log = AuditLog::open(&settings.audit_file)?;
            let (records, bad) = AuditLog::read_all(&settings.audit_file)?;
            if bad > 0 {
                tracing::warn!(lines = bad, file = %settings.audit_file.display(), "audit file has unreadable lines (a torn write?); they are kept, not counted");
            }
            // A restart must not hand out a fresh budget: count what this mode
            // spent. An intent counts unless its outcome says nothing was sent
            // (an intent without an outcome, after a crash, counts).
            let unsent: std::collections::HashSet<&str> = records
                .iter()
                .filter(|r| {
                    matches!(
                        r.decision,
                        Decision::Skipped | Decision::Refused | Decision::Failed
                    )
                })
                .map(|r| r.action_id.as_str())
                .collect();
            let spends = |r: &&AuditRecord| {
                r.mode == settings.mode
                    && matches!(r.decision, Decision::Intent | Decision::WouldAct)
                    && !unsent.contains(r.action_id.as_str())
                    // The terminate after a cancel is part of the same action.
                    && !r.action_id.ends_with("/t")
            };
            for r in records.iter().filter(spends) {
                global.record(r.time_ms);
                targets
                    .entry(r.target.clone())
                    .or_insert_with(|| {
                        Budget::new(settings.target_budget().0, settings.target_budget().1)
                    })
                    .record(r.time_ms);
            }
            log.seed_recent(&records);
            Some(Arc::new(log))
        };
        let pause = PauseSwitch::load(
            &settings.pause_state_file(),
            settings.sentinel_file.as_deref(),
        );
        // Export the state found on disk at once, not after the first poll.
        metrics.set_paused(pause.is_paused());
        metrics.set_mode(settings.mode.as_str());
        Ok(Arc::new(Remediation {
            settings,
            audit,
            pause,
            global: Mutex::new(global),
            targets: Mutex::new(targets),
            metrics,
        }))
    }

    pub fn applies_to(&self, target: &str) -> bool {
        self.settings
            .policies
            .values()
            .any(|p| p.applies_to(target))
    }

    /// Whether a Neo4j policy applies to this Neo4j target.
    pub fn applies_to_neo4j(&self, target: &str) -> bool {
        self.settings
            .neo4j_policies
            .values()
            .any(|p| p.applies_to(target))
    }

    /// Remaining actions (target, global) right now.
    pub(crate) fn remaining(&self, target: &str, now: u64) -> (u32, u32) {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let tb = t.entry(target.to_string()).or_insert_with(|| {
            Budget::new(
                self.settings.target_budget().0,
                self.settings.target_budget().1,
            )
        });
        let g = self
            .global
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remaining(now);
        (tb.remaining(now), g)
    }

    /// Gives back an action spent at `at` on both budgets.
    pub(crate) fn refund(&self, target: &str, at: u64) {
        if let Some(b) = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(target)
        {
            b.refund(at);
        }
        self.global
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refund(at);
    }

    /// Spends one action from both budgets, or neither.
    pub(crate) fn try_spend(&self, target: &str, now: u64) -> bool {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let tb = t.entry(target.to_string()).or_insert_with(|| {
            Budget::new(
                self.settings.target_budget().0,
                self.settings.target_budget().1,
            )
        });
        let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
        if tb.remaining(now) == 0 || g.remaining(now) == 0 {
            return false;
        }
        tb.try_spend(now) && g.try_spend(now)
    }

    /// Spends one action of `target`'s and the global budget: the time it
    /// was spent at (to refund it if nothing is sent), or `None` when a
    /// budget is exhausted, which is logged once per exhaustion (`exhausted`
    /// carries that between calls) and counted as a `budget_exhausted` decision.
    pub(super) fn spend_one(
        &self,
        target: &str,
        policy: &str,
        action: &str,
        exhausted: &mut bool,
    ) -> Option<u64> {
        let spent_at = now_ms();
        if self.try_spend(target, spent_at) {
            *exhausted = false;
            return Some(spent_at);
        }
        if !*exhausted {
            let (t, g) = self.remaining(target, now_ms());
            tracing::error!(
                target_remaining = t,
                global_remaining = g,
                "remediation budget exhausted: no more actions until the window allows"
            );
        }
        *exhausted = true;
        self.metrics.action(
            target,
            policy,
            action,
            "budget_exhausted",
            self.settings.mode.as_str(),
        );
        None
    }

    pub(crate) fn publish_budgets(&self, target: &str) {
        let (t, g) = self.remaining(target, now_ms());
        self.metrics.set_budget(target, t, t == 0);
        self.metrics.set_budget("global", g, g == 0);
    }

    /// Writes a record through a blocking task; false when it could not be written.
    /// `durable`: flush to disk (`fsync`) before returning. Intents must be;
    /// other records are flushed by the next intent's `fsync` at the latest.
    pub(super) async fn audit(&self, record: AuditRecord, durable: bool) -> bool {
        let Some(log) = self.audit.clone() else {
            return false;
        };
        let r = tokio::task::spawn_blocking(move || log.append(&record, durable)).await;
        match r {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.metrics.audit_error();
                tracing::error!(error = %e, "cannot write the audit record: not acting");
                false
            }
            Err(e) => {
                self.metrics.audit_error();
                tracing::error!(error = %e, "audit task failed: not acting");
                false
            }
        }
    }
}

pub async fn run(
    rem: Arc<Remediation>,
    target: PostgresTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("remediation", target = %target.name);
    run_inner(rem, target, state, alerts, cancel)
        .instrument(span)
        .await
}

async fn run_inner(
    rem: Arc<Remediation>,
    target: PostgresTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) {
    let Some(mut updates) = state.subscribe(&target.name) else {
        return;
    };
    let mut actor = Actor::new(target.connect_options(), rem.settings.instance());
    let policies: Vec<Policy> = rem
        .settings
        .policies
        .values()
        .filter(|p| p.applies_to(&target.name))
        .cloned()
        .collect();
    // Every decision series exists from the start at 0, so `increase()`
    // sees the first one.
    for p in &policies {
        let signals: &[Signal] = match p.action() {
            Action::Cancel => &[Signal::Cancel],
            Action::Terminate => &[Signal::Terminate],
            Action::CancelThenTerminate { .. } => &[Signal::Cancel, Signal::Terminate],
        };
        let outcomes: &[&str] = match rem.settings.mode {
            Mode::Observe => &[],
            Mode::DryRun => &["would_act", "audit_failed", "budget_exhausted"],
            Mode::Enforce => &[
                "acted",
                "skipped",
                "refused",
                "failed",
                "audit_failed",
                "budget_exhausted",
            ],
        };
        for s in signals {
            for o in outcomes {
                rem.metrics.init_action(
                    &target.name,
                    &p.name,
                    s.as_str(),
                    o,
                    rem.settings.mode.as_str(),
                );
            }
        }
    }
    // Bound on each statement of the actor connection, on our side.
    let limit = target.settings.poll_timeout();
    let mut was_paused = false;
    let mut exhausted = false;
    // Sessions not to decide on again while they exist: in dry-run, those
    // already reported (enforce would have acted once); in enforce, those
    // the server refused to signal (retrying would only burn the budget).
    // Keyed by backend identity and query start, so a new query is a new decision.
    let mut settled: HashSet<SessionKey> = HashSet::new();
    rem.publish_budgets(&target.name);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = updates.changed() => if changed.is_err() { break },
        }
        let paused = rem.pause.is_paused();
        rem.metrics.set_paused(paused);
        let Some(status) = state.get(&target.name) else {
            continue;
        };
        let Some(snapshot) = status.snapshot.clone().filter(|_| status.up) else {
            continue;
        };
        settled.retain(|k| snapshot.sessions.iter().any(|s| key_of_session(s) == *k));
        let (failing, firing) = gate_inputs(&status, &alerts);
        let gates = policy::Gates {
            failing: &failing,
            firing_alerts: &firing,
        };
        let (evaluations, chosen) = policy::select(&policies, &target.name, &snapshot, gates);
        for e in &evaluations {
            rem.metrics
                .set_candidates(&target.name, &e.policy, e.candidates.len());
        }
        rem.publish_budgets(&target.name);
        if rem.settings.mode == Mode::Observe {
            continue;
        }
        // Contend for the actor lock on every cycle, candidates or not: every
        // replica then knows and exports the holder before anything needs
        // doing, and another replica takes over on its first cycle after the
        // holder's connection is gone, not only once it sees a candidate.
        let holder = if paused {
            None
        } else {
            match tokio::time::timeout(limit, actor.ensure()).await {
                Ok(h) => Some(h),
                Err(_) => {
                    tracing::warn!("the actor connection did not answer in time: dropping it");
                    actor.reset();
                    Some(Holder::Nobody)
                }
            }
        };
        if let Some(h) = &holder {
            rem.metrics
                .set_actor(&target.name, h, rem.settings.instance());
        }
        if chosen.is_empty() {
            continue;
        }
        if paused {
            if !was_paused {
                tracing::warn!(
                    candidates = chosen.len(),
                    "remediation is paused: not acting"
                );
            }
            was_paused = true;
            continue;
        }
        was_paused = false;
        if holder != Some(Holder::Us) {
            tracing::debug!(?holder, "not the actor for this target: observing only");
            continue;
        }
        let mut follow_ups: Vec<(Candidate, tokio::time::Instant)> = Vec::new();
        for c in &chosen {
            if cancel.is_cancelled() {
                break;
            }
            if settled.contains(&key_of(c)) {
                tracing::debug!(
                    pid = c.facts.pid,
                    "already decided on this session: not again"
                );
                continue;
            }
            let Some(spent_at) = rem.spend_one(
                &target.name,
                &c.policy,
                first_signal(c.action).as_str(),
                &mut exhausted,
            ) else {
                continue;
            };
            let first = first_signal(c.action);
            let id = format!("{}-{}-{}", rem.settings.instance(), c.facts.pid, now_ms());
            let outcome = act(
                &rem,
                &mut actor,
                &target.name,
                &id,
                first,
                c,
                &policies,
                limit,
            )
            .await;
            match (&outcome, rem.settings.mode) {
                (Some(Outcome::Signalled), _) => {}
                (None, Mode::DryRun) => {
                    settled.insert(key_of(c));
                }
                (Some(Outcome::Refused(_)), _) => {
                    // Nothing was sent, and retrying would be refused again.
                    rem.refund(&target.name, spent_at);
                    settled.insert(key_of(c));
                }
                // Nothing was sent: the action is not charged.
                _ => rem.refund(&target.name, spent_at),
            }
            if let (Some(Outcome::Signalled), Action::CancelThenTerminate { grace }) =
                (&outcome, c.action)
            {
                follow_ups.push((c.clone(), tokio::time::Instant::now() + grace));
            }
            if outcome.is_none() && rem.settings.mode == Mode::Enforce {
                // The audit failed: act on nothing more this cycle.
                break;
            }
            if rem.settings.mode == Mode::Enforce && !rem.settings.pacing.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(rem.settings.pacing) => {}
                }
            }
        }
        for (c, due) in follow_ups {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let id = format!("{}-{}-{}/t", rem.settings.instance(), c.facts.pid, now_ms());
            act(
                &rem,
                &mut actor,
                &target.name,
                &id,
                Signal::Terminate,
                &c,
                &policies,
                limit,
            )
            .await;
        }
        rem.publish_budgets(&target.name);
    }
    actor.close().await;
}

/// One decision: audit, then (in enforce mode) the guarded signal and its
/// outcome. Returns the outcome, or `None` when nothing was sent because the
/// audit could not be written (or in dry-run).
#[allow(clippy::too_many_arguments)] // one decision's whole context, passed once
async fn act(
    rem: &Remediation,
    actor: &mut Actor,
    target: &str,
    id: &str,
    signal: Signal,
    c: &Candidate,
    policies: &[Policy],
    limit: Duration,
) -> Option<Outcome> {
    let s = &rem.settings;
    let record = |decision: Decision, outcome: String| {
        AuditRecord::new(
            SystemTime::now(),
            id,
            s.instance(),
            target,
            s.mode,
            signal.as_str(),
            decision,
            c,
            outcome,
            s.query_max_chars as usize,
            s.redact_queries,
        )
    };
    if s.mode == Mode::DryRun {
        let written = rem
            .audit(
                record(Decision::WouldAct, format!("would {}", signal.as_str())),
                false,
            )
            .await;
        tracing::info!(pid = c.facts.pid, policy = %c.policy, action = signal.as_str(), reason = %c.reason, "dry-run: would act");
        rem.metrics.action(
            target,
            &c.policy,
            signal.as_str(),
            if written { "would_act" } else { "audit_failed" },
            s.mode.as_str(),
        );
        return None;
    }
    // Write-ahead: the intent is on disk before the signal is sent.
    if !rem
        .audit(
            record(Decision::Intent, format!("about to {}", signal.as_str())),
            true,
        )
        .await
    {
        rem.metrics.action(
            target,
            &c.policy,
            signal.as_str(),
            "audit_failed",
            s.mode.as_str(),
        );
        return None;
    }
    let cond = &policies
        .iter()
        .find(|p| p.name == c.policy)
        .map(|p| p.conditions.clone())
        .unwrap_or_default();
    let outcome = match actor.connection() {
        // A hung server or network must not hang remediation: bound the
        // statement on our side too (the server's statement_timeout cannot
        // fire if the server does not answer at all).
        Some(conn) => {
            match tokio::time::timeout(limit, executor::signal(conn, signal, c, cond)).await {
                Ok(o) => o,
                Err(_) => Outcome::Failed(format!(
                    "no answer within {}: the signal may or may not have been delivered",
                    humantime::format_duration(limit)
                )),
            }
        }
        None => Outcome::Failed("lost the actor connection".into()),
    };
    if matches!(outcome, Outcome::Failed(_)) {
        actor.reset();
    }
    let (decision, label) = match &outcome {
        Outcome::Signalled => (Decision::Acted, "acted"),
        Outcome::Gone | Outcome::Changed(_) => (Decision::Skipped, "skipped"),
        Outcome::Refused(_) => (Decision::Refused, "refused"),
        Outcome::Failed(_) => (Decision::Failed, "failed"),
    };
    let sentence = outcome.sentence(signal);
    match decision {
        Decision::Acted => {
            tracing::warn!(pid = c.facts.pid, policy = %c.policy, action = signal.as_str(), reason = %c.reason, "acted on a session")
        }
        _ => {
            tracing::info!(pid = c.facts.pid, policy = %c.policy, action = signal.as_str(), outcome = %sentence, "did not act")
        }
    }
    rem.audit(record(decision, sentence), false).await;
    rem.metrics
        .action(target, &c.policy, signal.as_str(), label, s.mode.as_str());
    Some(outcome)
}

/// What a policy's gates look at on one target: the checks failing in its
/// latest status, and the alerts Alertmanager reports firing for it.
pub(super) fn gate_inputs(
    status: &crate::state::TargetStatus,
    alerts: &FiringAlerts,
) -> (Vec<crate::evaluate::CheckId>, Vec<String>) {
    let failing = status
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.check)
        .collect();
    let firing = alerts
        .firing(SystemTime::now())
        .into_iter()
        .filter(|a| a.target == status.target)
        .map(|a| a.alertname)
        .collect();
    (failing, firing)
}

/// A session's identity for `settled`: pid, backend start and query start.
type SessionKey = (i32, Option<i64>, Option<i64>);

fn key_of(c: &Candidate) -> SessionKey {
    (
        c.facts.pid,
        c.facts.backend_start_us,
        c.facts.query_start_us,
    )
}

fn key_of_session(s: &crate::observe::Session) -> SessionKey {
    (s.pid, s.backend_start_us, s.query_start_us)
}

/// The signal an action starts with.
fn first_signal(action: Action) -> Signal {
    match action {
        Action::Cancel | Action::CancelThenTerminate { .. } => Signal::Cancel,
        Action::Terminate => Signal::Terminate,
    }
}

/// How long after a poll a candidate must wait at most; exported for docs and tests.
pub const MAX_REACTION_AFTER_POLL: Duration = Duration::from_millis(250);
