//! Remediation: acting on sessions, only where a policy allows and within bounds.
//!
//! - [`policy`]: pure selection of candidate sessions (conditions AND-ed,
//!   ignores win, protected sessions never selected).
//! - [`budget`]: sliding-window action budgets (pure).
//! - [`batch`]: a cycle's chosen candidates cut into batches (pure).
//! - [`audit`]: the append-only, write-ahead audit trail.
//! - [`pause`]: the kill switch (API state file and sentinel file).
//! - [`executor`]: the guarded signal statements and the actor lock.
//! - [`shared`]: what every target's loop shares ([`Remediation`]): the
//!   settings, swappable in place, the pause switch, the budgets, the audit.
//! - [`runner`]: the per-target loop that ties them together, one for every
//!   kind of target ([`runner::Kind`]): [`postgres`] (the guarded signal
//!   under the actor lock) and [`neo4j`] (the re-checked terminate).
//! - [`neo4j_policy`]: pure selection of Neo4j transactions.
//! - [`neo4j_index_policy`]: pure selection of the FAILED Neo4j index to
//!   rebuild, its statements and the re-check; `neo4j_index` is its `Kind`
//!   (re-read, DROP, CREATE, then followed until ONLINE).
//! - [`recorder`]: the metric events remediation emits ([`Recorder`]).
//!
//! Remediation imports neither telemetry, the published state nor the
//! daemon: its metrics go through [`Recorder`], and each loop receives its
//! inputs ([`runner::Cycle`]) through a channel.

pub mod audit;
pub mod batch;
pub mod budget;
pub mod executor;
#[cfg(feature = "neo4j")]
pub mod neo4j;
#[cfg(feature = "neo4j")]
pub mod neo4j_index;
pub mod neo4j_index_policy;
pub mod neo4j_policy;
pub mod pause;
pub mod policy;
pub mod postgres;
pub mod recorder;
pub mod runner;
pub mod settings;
pub mod shared;

pub use audit::Mode;
pub use policy::Policy;
pub use recorder::Recorder;
pub use settings::RemediationSettings;
pub use shared::{NotInPlace, Remediation};
