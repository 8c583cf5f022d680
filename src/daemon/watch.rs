//! `run --watch-config`: a reload when the configuration file changes.
//!
//! The file's directory is watched, not the file: editors replace a file
//! rather than write it in place, and a Kubernetes ConfigMap volume updates
//! by swapping its `..data` symlink to a new `..<timestamp>` directory and
//! deleting the old one (the file itself, a symlink through `..data`, never
//! changes). A `subPath` mount is never updated by the kubelet at all: mount
//! the whole volume. Events are debounced, so one update (several events)
//! is one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// How long events settle before one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches `file`'s directory; sends on `changed` (without waiting: one
/// pending reload is enough) after the file, or a ConfigMap's `..data`,
/// changed. Dropping the returned watcher stops it.
pub fn watch(
    file: &Path,
    changed: mpsc::Sender<()>,
) -> Result<Debouncer<RecommendedWatcher, RecommendedCache>, String> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = file
        .file_name()
        .ok_or_else(|| format!("{} names no file", file.display()))?
        .to_owned();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "watching the configuration file");
                }
                return;
            }
        };
        let relevant = |p: &PathBuf| {
            p.file_name()
                .is_some_and(|f| f == name.as_os_str() || f.to_string_lossy().starts_with(".."))
        };
        if events.iter().any(|e| e.paths.iter().any(relevant)) {
            let _ = changed.try_send(());
        }
    })
    .map_err(|e| e.to_string())?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    Ok(debouncer)
}
