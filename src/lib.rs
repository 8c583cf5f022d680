//! dbwarden watches PostgreSQL (and, later, Neo4j and Kubernetes), evaluates
//! the runbook's thresholds, exports Prometheus metrics and, where a policy
//! allows, remediates.
//!
//! Data flows one way (see ARCHITECTURE.md):
//!
//! - [`settings`]: what every part's settings share (durations, issues with key
//!   paths); [`secret`]: values that never print.
//! - [`config`]: the loader: the TOML file and the environment, read into each
//!   part's settings and validated by each part.
//! - [`observe`]: one task per target polls its server and produces a [`observe::Snapshot`].
//! - [`evaluate`]: pure functions from a snapshot and thresholds to check results.
//! - [`telemetry`]: every metric dbwarden exports, defined in one place, and logging setup.
//! - [`http`]: `/metrics`, `/livez`, `/readyz` and `/api/v1/*`, served from the latest state.
//! - [`daemon`]: the wiring: poll loops, the shared state, shutdown.
//! - [`kubernetes`]: pods, StatefulSets and volumes through kube-rs; evictions; Lease election.
//! - [`commands`]: the CLI subcommands (`run`, `check`, `config`).
//! - [`scratch`]: throwaway PostgreSQL clusters for tests and the quick start.

pub mod commands;
pub mod config;
pub mod daemon;
pub mod evaluate;
pub mod http;
pub mod kubernetes;
pub mod observe;
pub mod remediate;
pub mod scratch;
pub mod secret;
pub mod settings;
pub mod state;
pub mod telemetry;
