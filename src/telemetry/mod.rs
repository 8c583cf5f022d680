//! Telemetry: the metrics dbwarden exports ([`metrics`]) and its logs ([`logging`]).

pub mod logging;
pub mod metrics;
