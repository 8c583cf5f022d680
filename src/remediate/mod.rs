//! Remediation: acting on sessions, only where a policy allows and within bounds.
//!
//! - [`policy`]: pure selection of candidate sessions (conditions AND-ed,
//!   ignores win, protected sessions never selected).
//! - [`budget`]: sliding-window action budgets (pure).
//! - [`audit`]: the append-only, write-ahead audit trail.
//! - [`pause`]: the kill switch (API state file and sentinel file).
//! - [`executor`]: the guarded signal statements and the actor lock.
//! - [`runner`]: the per-target loop that ties them together.
//! - [`neo4j_policy`]: pure selection of Neo4j transactions; [`neo4j`]: the
//!   re-checked terminate and the Neo4j target's loop, under the same mode,
//!   pause switch, budgets, pacing and audit.

pub mod audit;
pub mod budget;
pub mod executor;
#[cfg(feature = "neo4j")]
pub mod neo4j;
pub mod neo4j_policy;
pub mod pause;
pub mod policy;
pub mod runner;

use std::path::PathBuf;
use std::time::Duration;

pub use audit::Mode;
pub use policy::Policy;

use crate::config::Secret;

/// Validated remediation settings.
#[derive(Debug, Clone)]
pub struct RemediationSettings {
    pub mode: Mode,
    /// This dbwarden's name among replicas (audit records, actor lock holder).
    pub instance: String,
    pub audit_file: PathBuf,
    pub pause_state_file: PathBuf,
    pub sentinel_file: Option<PathBuf>,
    /// Bearer token for `POST /api/v1/pause` and `/resume`; without one those endpoints are disabled.
    pub api_token: Option<Secret>,
    pub query_max_chars: usize,
    pub redact_queries: bool,
    /// Wait after each action before the next.
    pub pacing: Duration,
    /// At most this many actions per window on one target.
    pub target_budget: (u32, Duration),
    /// At most this many actions per window over all targets.
    pub global_budget: (u32, Duration),
    pub policies: Vec<Policy>,
    /// `[remediation.neo4j_policies.*]`, in file order.
    pub neo4j_policies: Vec<neo4j_policy::Neo4jPolicy>,
}
