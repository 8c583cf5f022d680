//! Remediation: acting on sessions, only where a policy allows and within bounds.
//!
//! - [`policy`]: pure selection of candidate sessions (conditions AND-ed,
//!   ignores win, protected sessions never selected).
//! - [`budget`]: sliding-window action budgets (pure).
//! - [`audit`]: the append-only, write-ahead audit trail.
//! - [`pause`]: the kill switch (API state file and sentinel file).
//! - [`executor`]: the guarded signal statements and the actor lock.
//! - [`runner`]: the per-target loop that ties them together.
//! - [`recorder`]: the metric events remediation emits ([`Recorder`]), so
//!   that remediation does not depend on telemetry.
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
pub mod recorder;
pub mod runner;
pub mod settings;

pub use audit::Mode;
pub use policy::Policy;
pub use recorder::Recorder;
pub use settings::RemediationSettings;
