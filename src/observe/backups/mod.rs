//! Backups in object storage: what a `[backups.<name>]` location holds.
//! One observation lists every object under the prefix (page by page,
//! keeping only the newest two backups, so memory stays bounded however
//! many objects there are), then reads the first bytes of the newest
//! backup with one range request and recognises its format
//! ([`content::inspect`]). The checks judging it live in `evaluate`.
//!
//! `settings.rs` is the section, `content.rs` the pure reading of a
//! backup's first bytes; `store.rs` (cargo feature `backups`) talks to the
//! stores through the `object_store` crate.

pub mod content;
pub mod settings;
#[cfg(feature = "backups")]
mod store;

use serde::Serialize;

pub use content::Content;
pub use settings::{BackupLocation, StoreKind};
#[cfg(feature = "backups")]
pub use store::BackupObserver;

/// One object, as the listing reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupObject {
    /// Its key in the store (the path, for a directory).
    pub key: String,
    pub size_bytes: u64,
    /// When the store says it was last modified, in ms since the Unix epoch.
    pub modified_unix_ms: i64,
}

/// What one observation of a location found: plain data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupSnapshot {
    /// Objects listed under the prefix.
    pub objects: u64,
    /// Of those, the backups (names matching the pattern).
    pub backups: u64,
    /// The newest backup (by modification time, then key).
    pub newest: Option<BackupObject>,
    /// The one before it.
    pub previous: Option<BackupObject>,
    /// What the newest backup's first bytes are; `None` without a backup.
    pub content: Option<Content>,
    /// When the listing started, in ms since the Unix epoch (the clock
    /// ages are measured against).
    pub observed_unix_ms: i64,
    pub duration_seconds: f64,
}

/// Why an observation failed, in a bounded set of kinds (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupErrorKind {
    /// The bucket, container or directory does not exist.
    NotFound,
    /// Credentials missing, wrong or without permission.
    Credentials,
    /// The store cannot be reached (DNS, connection, TLS).
    Unreachable,
    /// The observation took longer than the location's `timeout`.
    Timeout,
    /// The store's client cannot be built from the configuration and environment.
    Config,
    /// Anything else the store answered.
    Other,
}

impl BackupErrorKind {
    pub const ALL: [BackupErrorKind; 6] = [
        BackupErrorKind::NotFound,
        BackupErrorKind::Credentials,
        BackupErrorKind::Unreachable,
        BackupErrorKind::Timeout,
        BackupErrorKind::Config,
        BackupErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupErrorKind::NotFound => "not_found",
            BackupErrorKind::Credentials => "credentials",
            BackupErrorKind::Unreachable => "unreachable",
            BackupErrorKind::Timeout => "timeout",
            BackupErrorKind::Config => "config",
            BackupErrorKind::Other => "other",
        }
    }
}

/// A failed observation: its kind, and a message for people (the store's
/// own words; never a credential, which the stores never echo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct BackupError {
    pub kind: BackupErrorKind,
    pub message: String,
}
