//! What remediation reports about itself, as events: the loops and the
//! shared [`Remediation`](super::Remediation) state call a [`Recorder`]
//! and never name a metric. `telemetry::metrics::Metrics` implements it
//! (the one place metrics are defined); tests record the events in memory.
//! Remediation therefore does not depend on telemetry.

use super::executor::Holder;

/// The metric events remediation emits. Label values are bounded: target,
/// policy and scope names come from the configuration; `action`, `outcome`
/// and `mode` from the short lists below.
pub trait Recorder: Send + Sync {
    /// One decision about one candidate. `action` is what the decision is
    /// about (`cancel`, `terminate`; `evict` for Kubernetes), `outcome`
    /// what became of it (`acted`, `would_act`, `skipped`, `refused`,
    /// `failed`, `audit_failed`, `budget_exhausted`) and `mode` the mode
    /// it was decided in (`dry-run`, `enforce`).
    fn action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str);

    /// Creates the series of a decision at zero without counting one, so
    /// that the first real decision shows as an increase (`increase()`
    /// does not see a series that starts at 1).
    fn init_action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str);

    /// How many candidates `policy` has on `target` in the latest cycle:
    /// those meeting every condition, protected ones excluded, before the
    /// victim cap and before anything already decided is left out.
    fn set_candidates(&self, target: &str, policy: &str, n: usize);

    /// The actions still allowed in the current window of a budget
    /// (`scope`: a target's name, or `global`), and whether that is none.
    fn set_budget(&self, scope: &str, remaining: u32, exhausted: bool);

    /// Whether remediation is paused (through the API or the sentinel file).
    fn set_paused(&self, paused: bool);

    /// The mode remediation runs in now (`observe`, `dry-run`, `enforce`).
    fn set_mode(&self, mode: &str);

    /// Who holds a PostgreSQL target's actor lock, as this instance sees
    /// it; `instance` is this instance's name (the holder when it is us).
    fn set_actor(&self, target: &str, holder: &Holder, instance: &str);

    /// An audit record could not be written. When it was an intent,
    /// nothing was sent.
    fn audit_error(&self);

    /// Counts `n` polls of `target` brought forward to a predicted
    /// crossing (`n = 0` when the loop starts: the series exists from then).
    fn polls_brought_forward(&self, _target: &str, _n: u64) {}

    /// How many FAILED indexes of a Neo4j target the index rebuild leaves
    /// alone in the latest cycle, for one reason (`neo4j_index_policy::Held`).
    fn set_index_rebuild_held(&self, _target: &str, _reason: &str, _n: usize) {}

    /// When the index rebuild in progress on a Neo4j target started
    /// (seconds since the epoch), `None` while none is (exported as 0).
    fn set_index_rebuild(&self, _target: &str, _started_at: Option<f64>) {}
}
