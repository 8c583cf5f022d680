//! What every target's remediation loop shares: the settings (swappable in
//! place), the pause switch, the budgets and the audit log. The loops
//! ([`super::runner`]) and the Kubernetes evictions act within these bounds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use super::RemediationSettings;
use super::audit::{AuditError, AuditLog, AuditRecord, Decision, Mode};
use super::budget::Budget;
use super::executor::Holder;
use super::pause::PauseSwitch;
use super::recorder::Recorder;

/// State shared by every target's remediation loop.
pub struct Remediation {
    /// Read by each loop at the start of every cycle; swapped by [`Remediation::reconfigure`].
    settings: RwLock<Arc<RemediationSettings>>,
    pub audit: Option<Arc<AuditLog>>,
    pub pause: PauseSwitch,
    global: Mutex<Budget>,
    targets: Mutex<HashMap<String, Budget>>,
    /// Who holds each PostgreSQL target's actor lock, as last seen.
    actors: Mutex<BTreeMap<String, Option<String>>>,
    recorder: Arc<dyn Recorder>,
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

/// What [`Remediation::budgets_remaining`] reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetsRemaining {
    pub global: u32,
    pub targets: BTreeMap<String, u32>,
}

/// Settings that [`Remediation::reconfigure`] cannot apply in place: what
/// they name was opened or announced at start (the audit file, the pause
/// state, the actor connections' names). A restart applies them.
#[derive(Debug, thiserror::Error)]
#[error("cannot change in place, restart dbwarden to apply: {}", .0.join("; "))]
pub struct NotInPlace(pub Vec<String>);

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A poisoned lock only means another thread panicked while holding it;
/// budgets stay usable (at worst one spend is missing or doubled).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Remediation {
    /// Opens the audit file (except in observe mode), rebuilds the budgets
    /// from the actions it records, and loads the pause switch.
    pub fn start(
        settings: RemediationSettings,
        recorder: Arc<dyn Recorder>,
    ) -> Result<Arc<Self>, AuditError> {
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
            // A restart must not hand out a fresh budget.
            for r in spent(&records, settings.mode) {
                global.record(r.time_ms);
                targets
                    .entry(r.target.clone())
                    .or_insert_with(|| target_budget(&settings))
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
        recorder.set_paused(pause.is_paused());
        recorder.set_mode(settings.mode.as_str());
        Ok(Arc::new(Remediation {
            settings: RwLock::new(Arc::new(settings)),
            audit,
            pause,
            global: Mutex::new(global),
            targets: Mutex::new(targets),
            actors: Mutex::new(BTreeMap::new()),
            recorder,
        }))
    }

    /// The settings in force now. A loop takes them once per cycle, so a
    /// cycle runs under one set of settings from start to end.
    pub fn settings(&self) -> Arc<RemediationSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps the settings in place; each loop applies them from its next
    /// cycle (mode, policies, pacing, query_max_chars, redact_queries).
    /// What was started under the old settings survives: the actions the
    /// budgets hold (their limits and window change: a shorter window drops
    /// what is now outside it, a longer one counts only what the old window
    /// still held), the pause switch, the audit log, and each loop's actor
    /// connection and advisory lock.
    ///
    /// Nothing changes when a setting cannot apply in place ([`NotInPlace`]):
    /// the instance name, the audit, state and sentinel files, and leaving
    /// observe mode without an audit file open (observe mode opens none,
    /// and nothing acts without one). Loops run only for the targets a
    /// policy applied to at start: a target's first policy needs a restart
    /// (or the caller starts its loop).
    pub fn reconfigure(&self, new: RemediationSettings) -> Result<(), NotInPlace> {
        let old = self.settings();
        let mut fixed = fixed_changes(&old, &new);
        if new.mode != Mode::Observe && self.audit.is_none() {
            fixed.push(format!(
                "mode {} needs the audit file, which observe mode did not open",
                new.mode.as_str()
            ));
        }
        if !fixed.is_empty() {
            return Err(NotInPlace(fixed));
        }
        let mode = new.mode;
        {
            // In try_spend's order (targets, then global). A target budget
            // is created under the targets' lock, so it gets either the
            // old limits and is resized here, or the new ones.
            let mut targets = lock(&self.targets);
            let mut global = lock(&self.global);
            let (per_target, window) = new.target_budget();
            for b in targets.values_mut() {
                b.resize(per_target, window);
            }
            let (max, window) = new.global_budget();
            global.resize(max, window);
            *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
        self.recorder.set_mode(mode.as_str());
        tracing::info!(
            mode = mode.as_str(),
            was = old.mode.as_str(),
            "remediation reconfigured: the loops apply it from their next cycle"
        );
        Ok(())
    }

    pub fn applies_to(&self, target: &str) -> bool {
        self.settings()
            .policies
            .values()
            .any(|p| p.applies_to(target))
    }

    /// Whether a Neo4j policy applies to this Neo4j target.
    pub fn applies_to_neo4j(&self, target: &str) -> bool {
        let s = self.settings();
        s.neo4j_policies.values().any(|p| p.applies_to(target))
            || s.neo4j_index_rebuild
                .as_ref()
                .is_some_and(|r| r.applies_to(target))
    }

    pub(crate) fn recorder(&self) -> &dyn Recorder {
        self.recorder.as_ref()
    }

    /// Remaining actions (target, global) right now.
    pub(crate) fn remaining(&self, target: &str, now: u64) -> (u32, u32) {
        let mut t = lock(&self.targets);
        let tb = self.target_entry(&mut t, target);
        let target_left = tb.remaining(now);
        (target_left, lock(&self.global).remaining(now))
    }

    /// Gives back an action spent at `at` on both budgets.
    pub(crate) fn refund(&self, target: &str, at: u64) {
        if let Some(b) = lock(&self.targets).get_mut(target) {
            b.refund(at);
        }
        lock(&self.global).refund(at);
    }

    /// Spends one action from both budgets, or neither.
    pub(crate) fn try_spend(&self, target: &str, now: u64) -> bool {
        let mut t = lock(&self.targets);
        let tb = self.target_entry(&mut t, target);
        let mut g = lock(&self.global);
        if tb.remaining(now) == 0 || g.remaining(now) == 0 {
            return false;
        }
        tb.try_spend(now) && g.try_spend(now)
    }

    /// `target`'s budget, created under the settings in force.
    fn target_entry<'a>(&self, t: &'a mut HashMap<String, Budget>, target: &str) -> &'a mut Budget {
        t.entry(target.to_string())
            .or_insert_with(|| target_budget(&self.settings()))
    }

    /// Records (and exports) who holds `target`'s actor lock.
    pub(crate) fn note_actor(&self, target: &str, holder: &Holder, instance: &str) {
        let name = match holder {
            Holder::Us => Some(instance.to_string()),
            Holder::Other(n) => Some(n.clone()),
            Holder::Nobody => None,
        };
        lock(&self.actors).insert(target.to_string(), name);
        self.recorder.set_actor(target, holder, instance);
    }

    /// Who holds each PostgreSQL target's actor lock, as its loop last saw
    /// it (`None`: nobody). Targets whose loop has not contended yet are absent.
    pub fn actors(&self) -> BTreeMap<String, Option<String>> {
        lock(&self.actors).clone()
    }

    /// The actions each budget allows now: the global one, and each
    /// target's that a loop has created.
    pub fn budgets_remaining(&self) -> BudgetsRemaining {
        let now = now_ms();
        let targets = lock(&self.targets)
            .iter_mut()
            .map(|(t, b)| (t.clone(), b.remaining(now)))
            .collect();
        BudgetsRemaining {
            global: lock(&self.global).remaining(now),
            targets,
        }
    }

    pub(crate) fn publish_budgets(&self, target: &str) {
        let (t, g) = self.remaining(target, now_ms());
        self.recorder.set_budget(target, t, t == 0);
        self.recorder.set_budget("global", g, g == 0);
    }

    /// Writes records (a batch's) in one write through a blocking task;
    /// false when they could not be written, in which case none counts as
    /// written. `durable`: flush to disk (one `fsync`) before returning.
    /// Intents must be; other records are flushed by the next intents'
    /// `fsync` at the latest.
    pub(super) async fn audit_all(&self, records: Vec<AuditRecord>, durable: bool) -> bool {
        let Some(log) = self.audit.clone() else {
            return false;
        };
        let r = tokio::task::spawn_blocking(move || log.append_all(&records, durable)).await;
        match r {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.recorder.audit_error();
                tracing::error!(error = %e, "cannot write the audit record: not acting");
                false
            }
            Err(e) => {
                self.recorder.audit_error();
                tracing::error!(error = %e, "audit task failed: not acting");
                false
            }
        }
    }
}

fn target_budget(settings: &RemediationSettings) -> Budget {
    let (max, window) = settings.target_budget();
    Budget::new(max, window)
}

/// The records that spent budget in `mode`: an intent (or a dry-run's
/// report) counts unless its outcome says nothing was sent; an intent
/// without an outcome, after a crash, counts.
fn spent(records: &[AuditRecord], mode: Mode) -> impl Iterator<Item = &AuditRecord> {
    let unsent: HashSet<&str> = records
        .iter()
        .filter(|r| {
            matches!(
                r.decision,
                Decision::Skipped | Decision::Refused | Decision::Failed
            )
        })
        .map(|r| r.action_id.as_str())
        .collect();
    records.iter().filter(move |r| {
        r.mode == mode
            && matches!(r.decision, Decision::Intent | Decision::WouldAct)
            && !unsent.contains(r.action_id.as_str())
            // The terminate after a cancel is part of the same action.
            && !r.action_id.ends_with("/t")
            // Putting a pod back into its Service undoes an action: free.
            && r.action != "route_in"
    })
}

/// The settings `new` changes that were bound at start.
fn fixed_changes(old: &RemediationSettings, new: &RemediationSettings) -> Vec<String> {
    let mut changed = Vec::new();
    if old.instance() != new.instance() {
        changed.push(format!(
            "instance {:?} → {:?} (audit records and the actor connections carry it)",
            old.instance(),
            new.instance()
        ));
    }
    let files = [
        ("audit_file", Some(&old.audit_file), Some(&new.audit_file)),
        ("state_dir", Some(&old.state_dir), Some(&new.state_dir)),
        (
            "sentinel_file",
            old.sentinel_file.as_ref(),
            new.sentinel_file.as_ref(),
        ),
    ];
    for (key, was, is) in files {
        if was != is {
            changed.push(format!("{key} {} → {}", shown(was), shown(is)));
        }
    }
    changed
}

fn shown(path: Option<&std::path::PathBuf>) -> String {
    path.map_or("unset".into(), |p| format!("{:?}", p.display().to_string()))
}
