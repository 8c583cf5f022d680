//! Free space of watched volumes, from statvfs: no database extension needed.

use std::path::Path;

use super::snapshot::DiskUsage;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// statvfs of each path, by volume name. Failures are reported per volume,
/// never as a poll failure.
pub fn usage(paths: &BTreeMap<String, PathBuf>) -> Vec<DiskUsage> {
    paths
        .iter()
        .map(|(volume, path)| one(volume, path))
        .collect()
}

fn one(volume: &str, path: &Path) -> DiskUsage {
    match rustix::fs::statvfs(path) {
        Ok(s) => {
            let frsize = if s.f_frsize > 0 {
                s.f_frsize
            } else {
                s.f_bsize
            };
            DiskUsage {
                volume: volume.to_string(),
                path: path.display().to_string(),
                size_bytes: s.f_blocks.saturating_mul(frsize),
                free_bytes: s.f_bavail.saturating_mul(frsize),
                error: None,
            }
        }
        Err(e) => DiskUsage {
            volume: volume.to_string(),
            path: path.display().to_string(),
            size_bytes: 0,
            free_bytes: 0,
            error: Some(format!("statvfs {}: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_of_a_real_directory() {
        let u = usage(&BTreeMap::from([("tmp".to_string(), std::env::temp_dir())]));
        assert_eq!(u.len(), 1);
        assert!(u[0].error.is_none(), "{:?}", u[0].error);
        assert!(u[0].size_bytes > 0 && u[0].free_bytes <= u[0].size_bytes);
        let r = u[0].free_ratio().unwrap();
        assert!((0.0..=1.0).contains(&r));
    }

    #[test]
    fn missing_path_is_a_per_volume_error() {
        let u = usage(&BTreeMap::from([(
            "x".to_string(),
            PathBuf::from("/nonexistent/dbwarden"),
        )]));
        assert!(
            u[0].error
                .as_deref()
                .unwrap()
                .contains("/nonexistent/dbwarden")
        );
        assert_eq!(u[0].free_ratio(), None);
    }
}
