//! `[backups.<name>]`: where a target's backups are kept in object storage,
//! which files are backups, and how often to look. The thresholds the
//! checks compare against (`[backups.<name>.thresholds]`) are owned by
//! `evaluate` (`BackupThresholds`).
//!
//! Credentials are never written here: each store reads its own standard
//! environment and files (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_WEB_IDENTITY_TOKEN_FILE`, instance metadata;
//! `GOOGLE_SERVICE_ACCOUNT`/`GOOGLE_APPLICATION_CREDENTIALS`, workload
//! identity; `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
//! managed identity) when the daemon starts observing, never at load.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::settings::{Context, Issues, duration, join, valid_name, within};

/// The stores a location may name, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// `s3://bucket/prefix/`: Amazon S3 and S3-compatible stores (`endpoint`).
    S3,
    /// `gs://bucket/prefix/`: Google Cloud Storage.
    Gcs,
    /// `az://container/prefix/`: Azure Blob Storage.
    Azure,
    /// `file:///path/`: a local or mounted directory.
    File,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gcs",
            StoreKind::Azure => "azure",
            StoreKind::File => "file",
        }
    }
}

/// `[backups.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupLocation {
    /// The table's name (`pg-nightly`), set by the loader.
    #[serde(skip)]
    pub name: String,
    /// The PostgreSQL or Neo4j target these backups protect.
    pub target: String,
    /// `s3://bucket/prefix/`, `gs://bucket/prefix/`, `az://container/prefix/`
    /// or `file:///absolute/path/`. Every object under the prefix is listed
    /// (sub-folders included); `pattern` picks the backups among them.
    pub url: String,
    /// A file-name pattern: `*` any run of characters, `?` one character.
    /// Matched against the last segment of each object's key.
    pub pattern: String,
    /// How often the location is listed (backups change daily: minutes, not
    /// seconds; as little as 1 s is accepted, for tests and demonstrations).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long one observation (listing and the integrity read) may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// An S3-compatible endpoint (MinIO, Ceph, ...), `https://` or, only
    /// when written here, `http://`. S3 only.
    pub endpoint: Option<String>,
    /// How many bytes of the newest backup the integrity check reads (one
    /// range request from the start of the object).
    pub integrity_bytes: u64,
    /// The store's standard environment variables (`AWS_*`, `GOOGLE_*`,
    /// `AZURE_*`) as the configuration was loaded: handed to the store's
    /// client, never printed. A reload reads them again.
    #[serde(skip)]
    pub env: Vec<(String, Secret)>,
}

impl Default for BackupLocation {
    fn default() -> Self {
        BackupLocation {
            name: String::new(),
            target: String::new(),
            url: String::new(),
            pattern: "*".into(),
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
            endpoint: None,
            integrity_bytes: 1024 * 1024,
            env: Vec::new(),
        }
    }
}

/// The least and most `integrity_bytes` may be: pg_dump's header and table
/// of contents need a few kilobytes; more than 64 MiB is no longer cheap.
pub const INTEGRITY_BYTES: (u64, u64) = (512, 64 * 1024 * 1024);

impl BackupLocation {
    /// The store the URL names; `None` for an unsupported scheme.
    pub fn store(&self) -> Option<StoreKind> {
        let scheme = self.url.split_once("://")?.0;
        Some(match scheme {
            "s3" | "s3a" => StoreKind::S3,
            "gs" => StoreKind::Gcs,
            "az" | "azure" | "abfs" | "abfss" => StoreKind::Azure,
            "file" => StoreKind::File,
            _ => return None,
        })
    }

    /// The bucket (or container) and the prefix under it, as written:
    /// `s3://b/database/` is `("b", "database")`. For `file:///srv/b/` the
    /// bucket is empty and the prefix is the absolute path.
    pub fn bucket_and_prefix(&self) -> (&str, &str) {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        if self.store() == Some(StoreKind::File) {
            return ("", rest.trim_end_matches('/'));
        }
        match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
            None => (rest, ""),
        }
    }

    /// Whether `file_name` is a backup by the `pattern`.
    pub fn matches(&self, file_name: &str) -> bool {
        glob(self.pattern.as_bytes(), file_name.as_bytes())
    }

    /// Checks the table at `path` (`backups.<name>`); `ctx` names the targets.
    pub fn validate(&mut self, path: &str, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        if !valid_name(&self.name) {
            issues.push(
                path,
                format!(
                    "invalid name {:?}: 1-63 lowercase letters, digits, '_' or '-' (it is a metric label)",
                    self.name
                ),
            );
        }
        if cfg!(not(feature = "backups")) {
            issues.push(
                path,
                "this dbwarden was built without backup support (cargo feature `backups`): use a default build",
            );
        }
        if self.target.is_empty() {
            issues.push(
                key("target"),
                "missing: name the [postgres.<name>] or [neo4j.<name>] target these backups protect",
            );
        } else if !ctx.postgres.contains(&self.target) && !ctx.neo4j.contains(&self.target) {
            let known: Vec<&str> = ctx
                .postgres
                .iter()
                .chain(&ctx.neo4j)
                .map(String::as_str)
                .collect();
            issues.push(
                key("target"),
                format!(
                    "{:?} is not a configured target (configured: {})",
                    self.target,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        self.validate_url(path, issues);
        self.env = match self.store() {
            Some(store) => store_env(store, ctx),
            None => Vec::new(),
        };
        if self.pattern.is_empty() {
            issues.push(
                key("pattern"),
                "is empty: write a file-name pattern such as \"postgres_backup_*.dump\" (or \"*\" for every object)",
            );
        } else if self.pattern.contains('/') {
            issues.push(
                key("pattern"),
                format!(
                    "{:?} contains '/': the pattern matches file names; put folders in the url's prefix",
                    self.pattern
                ),
            );
        }
        let s = Duration::from_secs;
        within(self.interval, s(1), s(24 * 3600), &key("interval"), issues);
        within(self.timeout, s(1), s(3600), &key("timeout"), issues);
        if self.timeout > self.interval && ctx.written_here(&key("timeout")) {
            issues.push(
                key("timeout"),
                format!(
                    "{} is longer than the interval ({}): observations would overlap",
                    crate::settings::q(self.timeout),
                    crate::settings::q(self.interval)
                ),
            );
        }
        let (lo, hi) = INTEGRITY_BYTES;
        if !(lo..=hi).contains(&self.integrity_bytes) {
            issues.push(
                key("integrity_bytes"),
                format!("{} is out of range: {lo} to {hi}", self.integrity_bytes),
            );
        }
    }

    fn validate_url(&self, path: &str, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        let Some(store) = self.store() else {
            let what = if self.url.is_empty() {
                "missing: ".to_string()
            } else {
                format!("{:?} is not a supported location: ", redact(&self.url))
            };
            issues.push(
                key("url"),
                format!(
                    "{what}write s3://bucket/prefix/, gs://bucket/prefix/, az://container/prefix/ or file:///absolute/path/"
                ),
            );
            return;
        };
        let (bucket, prefix) = self.bucket_and_prefix();
        if self.url.contains('@') || self.url.contains('?') {
            issues.push(
                key("url"),
                "holds credentials or options: credentials are never written in the file; the store reads its standard environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
            );
        }
        match store {
            StoreKind::File if !prefix.starts_with('/') => issues.push(
                key("url"),
                format!(
                    "{:?}: a file URL names an absolute path, file:///srv/backups/",
                    self.url
                ),
            ),
            StoreKind::File => {}
            _ if bucket.is_empty() => issues.push(
                key("url"),
                format!("{:?} names no bucket or container", redact(&self.url)),
            ),
            _ => {}
        }
        if let Some(endpoint) = &self.endpoint {
            if store != StoreKind::S3 {
                issues.push(
                    key("endpoint"),
                    format!(
                        "applies to s3:// locations only (this url is {})",
                        store.as_str()
                    ),
                );
            } else if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
                || endpoint.contains('@')
            {
                issues.push(
                    key("endpoint"),
                    format!(
                        "{:?} is not an endpoint: write https://host:port (or http:// for a store without TLS), without credentials",
                        redact(endpoint)
                    ),
                );
            }
        }
    }

    /// Whether plain HTTP may be used: only when the endpoint says so.
    pub fn allow_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }

    /// The URL as shown in logs and the API (never credentials).
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// The variables the store's client reads, as `from_env` would; except
/// `*_ALLOW_HTTP`: plain HTTP is allowed only by an `endpoint` written in
/// the file.
fn store_env(store: StoreKind, ctx: &Context) -> Vec<(String, Secret)> {
    let prefix = match store {
        StoreKind::S3 => "AWS_",
        StoreKind::Gcs => "GOOGLE_",
        StoreKind::Azure => "AZURE_",
        StoreKind::File => return Vec::new(),
    };
    let mut env: Vec<(String, Secret)> = ctx
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && !k.ends_with("_ALLOW_HTTP"))
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    env.sort_by(|a, b| a.0.cmp(&b.0));
    env
}

fn redact(url: &str) -> String {
    crate::secret::redact_url(url)
}

/// `*` and `?` globbing over bytes.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(url: &str, pattern: &str) -> BackupLocation {
        BackupLocation {
            url: url.into(),
            pattern: pattern.into(),
            ..Default::default()
        }
    }

    #[test]
    fn patterns_match_file_names() {
        let l = loc("s3://b/p/", "postgres_backup_*.dump");
        assert!(l.matches("postgres_backup_20261206.dump"));
        assert!(l.matches("postgres_backup_.dump"));
        assert!(!l.matches("postgres_backup_20261206.dump.tmp"));
        assert!(!l.matches("neo4j_backup_1.dump"));
        let q = loc("s3://b/p/", "b?.sql");
        assert!(q.matches("b1.sql") && !q.matches("b12.sql"));
        assert!(loc("s3://b/", "*").matches("anything"));
        assert!(loc("s3://b/", "*a*b*").matches("xxaxxbxx"));
        assert!(!loc("s3://b/", "*a*b").matches("xxaxxbxx"));
    }

    #[test]
    fn urls_name_their_store_bucket_and_prefix() {
        let l = loc("s3://intelgraph-backups/database/", "*");
        assert_eq!(l.store(), Some(StoreKind::S3));
        assert_eq!(l.bucket_and_prefix(), ("intelgraph-backups", "database"));
        assert_eq!(loc("gs://b", "*").bucket_and_prefix(), ("b", ""));
        assert_eq!(loc("az://c/x/y/", "*").store(), Some(StoreKind::Azure));
        let f = loc("file:///srv/backups/", "*");
        assert_eq!(f.bucket_and_prefix(), ("", "/srv/backups"));
        assert_eq!(loc("ftp://x/", "*").store(), None);
    }
}
