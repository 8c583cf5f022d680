//! The stores, through the `object_store` crate: one client per location,
//! built from the URL, the `endpoint` and the store's own environment.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::settings::{BackupLocation, StoreKind};
use super::{BackupError, BackupErrorKind, BackupObject, BackupSnapshot, content};

/// Lists one location and reads the head of its newest backup.
#[derive(Debug)]
pub struct BackupObserver {
    location: BackupLocation,
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
}

impl BackupObserver {
    /// Builds the store's client. Nothing is contacted yet; a client that
    /// cannot be built (a malformed URL, an environment the store refuses)
    /// is an error of kind `config`.
    pub fn new(location: BackupLocation) -> Result<Self, BackupError> {
        crate::observe::tls::ensure_provider();
        let config = |e: object_store::Error| BackupError {
            kind: BackupErrorKind::Config,
            message: e.to_string(),
        };
        let (bucket, prefix) = location.bucket_and_prefix();
        let client = ClientOptions::new()
            .with_timeout(location.timeout)
            .with_connect_timeout(location.timeout.min(Duration::from_secs(10)))
            .with_allow_http(location.allow_http());
        // Retries stay well inside one observation's timeout.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: location.timeout / 2,
            ..RetryConfig::default()
        };
        let env = |prefix: &'static str| -> Vec<(String, String)> {
            location
                .env
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.expose().to_string()))
                .collect()
        };
        let url = location.url.clone();
        let store: Arc<dyn ObjectStore> =
            match location.store() {
                Some(StoreKind::S3) => {
                    let mut b = object_store::aws::AmazonS3Builder::new();
                    for (k, v) in env("AWS_") {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    b = b.with_url(url).with_bucket_name(bucket);
                    if let Some(e) = &location.endpoint {
                        b = b.with_endpoint(e);
                    }
                    Arc::new(
                        b.with_client_options(client)
                            .with_retry(retry)
                            .build()
                            .map_err(config)?,
                    )
                }
                Some(StoreKind::Gcs) => {
                    let mut b = object_store::gcp::GoogleCloudStorageBuilder::new();
                    for (k, v) in env("GOOGLE_") {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(
                        b.with_url(url)
                            .with_client_options(client)
                            .with_retry(retry)
                            .build()
                            .map_err(config)?,
                    )
                }
                Some(StoreKind::Azure) => {
                    let mut b = object_store::azure::MicrosoftAzureBuilder::new();
                    for (k, v) in env("AZURE_") {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(
                        b.with_url(url)
                            .with_client_options(client)
                            .with_retry(retry)
                            .build()
                            .map_err(config)?,
                    )
                }
                Some(StoreKind::File) => {
                    let fs = object_store::local::LocalFileSystem::new_with_prefix(prefix)
                        .map_err(|e| BackupError {
                            kind: if std::path::Path::new(prefix).is_dir() {
                                BackupErrorKind::Config
                            } else {
                                BackupErrorKind::NotFound
                            },
                            message: e.to_string(),
                        })?;
                    return Ok(BackupObserver {
                        location,
                        store: Arc::new(fs),
                        prefix: None,
                    });
                }
                None => {
                    return Err(BackupError {
                        kind: BackupErrorKind::Config,
                        message: format!("unsupported location {}", location.redacted_url()),
                    });
                }
            };
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        Ok(BackupObserver {
            location,
            store,
            prefix,
        })
    }

    pub fn location(&self) -> &BackupLocation {
        &self.location
    }

    /// One observation, bounded by the location's `timeout`.
    pub async fn observe(&self) -> Result<BackupSnapshot, BackupError> {
        match tokio::time::timeout(self.location.timeout, self.observe_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(BackupError {
                kind: BackupErrorKind::Timeout,
                message: format!(
                    "no answer within {}",
                    humantime::format_duration(self.location.timeout)
                ),
            }),
        }
    }

    async fn observe_unbounded(&self) -> Result<BackupSnapshot, BackupError> {
        let started = Instant::now();
        let observed_unix_ms = unix_ms(SystemTime::now());
        if self.location.store() == Some(StoreKind::File) {
            let dir = self.location.bucket_and_prefix().1;
            if !std::path::Path::new(dir).is_dir() {
                return Err(BackupError {
                    kind: BackupErrorKind::NotFound,
                    message: format!("{dir} is not a directory"),
                });
            }
        }
        let mut snapshot = BackupSnapshot {
            objects: 0,
            backups: 0,
            newest: None,
            previous: None,
            content: None,
            observed_unix_ms,
            duration_seconds: 0.0,
        };
        // The stream fetches one page (up to 1000 keys) at a time; only the
        // newest two backups are kept.
        let mut listing = self.store.list(self.prefix.as_ref());
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(classify)?;
            snapshot.objects += 1;
            let name = meta.location.filename().unwrap_or_default();
            if !self.location.matches(name) {
                continue;
            }
            snapshot.backups += 1;
            let object = BackupObject {
                key: meta.location.to_string(),
                size_bytes: meta.size,
                modified_unix_ms: meta.last_modified.timestamp_millis(),
            };
            keep_newest(&mut snapshot, object);
        }
        drop(listing);
        if let Some(newest) = &snapshot.newest {
            snapshot.content = Some(self.read_head(newest).await);
        }
        snapshot.duration_seconds = started.elapsed().as_secs_f64();
        Ok(snapshot)
    }

    /// The first `integrity_bytes` of the object, by one range request.
    async fn read_head(&self, object: &BackupObject) -> content::Content {
        let len = object.size_bytes.min(self.location.integrity_bytes);
        if len == 0 {
            return content::inspect(&[], object.size_bytes);
        }
        let path = Path::from(object.key.as_str());
        match self.store.get_range(&path, 0..len).await {
            Ok(bytes) => {
                let c = content::inspect(&bytes, object.size_bytes);
                match c {
                    content::Content::PostgresCustom { .. } => {
                        let whole = len == object.size_bytes;
                        pg_restore_list(c, &bytes, whole, self.location.timeout).await
                    }
                    c => c,
                }
            }
            Err(e) => content::Content::Unreadable {
                error: classify(e).to_string(),
            },
        }
    }
}

/// Where pg_restore is installed, proves that it reads the table of
/// contents of the bytes read: `pg_restore --list` on them, through its
/// standard input. A failure counts only when it cannot be the bounded
/// read's or the installed version's: the whole object was read, and
/// pg_restore does not refuse the archive's version.
async fn pg_restore_list(
    c: content::Content,
    head: &[u8],
    whole: bool,
    timeout: Duration,
) -> content::Content {
    use tokio::io::AsyncWriteExt;
    let content::Content::PostgresCustom {
        archive_version,
        database,
        dump_version,
        toc_entries,
        ..
    } = c
    else {
        return c;
    };
    let custom = |note: String| content::Content::PostgresCustom {
        archive_version: archive_version.clone(),
        database: database.clone(),
        dump_version: dump_version.clone(),
        toc_entries,
        pg_restore: Some(note),
    };
    let spawned = tokio::process::Command::new("pg_restore")
        .arg("--list")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = spawned else {
        return custom("not installed: the header alone was read".into());
    };
    let mut stdin = child.stdin.take();
    let head = head.to_vec();
    let run = async move {
        if let Some(stdin) = &mut stdin {
            // pg_restore may stop reading once the table of contents is read.
            let _ = stdin.write_all(&head).await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    let out = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return custom(format!("not run: {e}")),
        Err(_) => return custom("did not finish in time".into()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let listed = stdout
            .lines()
            .find_map(|l| l.split("TOC Entries:").nth(1))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| "?".into());
        return custom(format!("{listed} entries listed"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().next().unwrap_or("failed").trim().to_string();
    if error.contains("unsupported version") || !whole {
        return custom(format!("not verified ({error})"));
    }
    content::Content::Unrecognised {
        found: format!(
            "a pg_dump custom-format header whose table of contents pg_restore cannot read: {error}"
        ),
    }
}

/// Keeps the newest two objects, by modification time and then key.
fn keep_newest(s: &mut BackupSnapshot, o: BackupObject) {
    let order = |o: &BackupObject| (o.modified_unix_ms, o.key.clone());
    match &s.newest {
        Some(n) if order(&o) <= order(n) => {
            if s.previous.as_ref().is_none_or(|p| order(&o) > order(p)) {
                s.previous = Some(o);
            }
        }
        _ => s.previous = s.newest.replace(o),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The store's error in a bounded kind, keeping its message.
fn classify(e: object_store::Error) -> BackupError {
    use object_store::Error as E;
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    let has = |words: &[&str]| words.iter().any(|w| chain.contains(w));
    let kind = match &e {
        E::NotFound { .. } => BackupErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => BackupErrorKind::Credentials,
        _ if has(&["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]) => {
            BackupErrorKind::NotFound
        }
        _ if has(&[
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "credential",
            "Forbidden",
            "Unauthorized",
        ]) =>
        {
            BackupErrorKind::Credentials
        }
        _ if has(&[
            "error sending request",
            "connect",
            "Connection refused",
            "dns error",
            "timed out",
        ]) =>
        {
            BackupErrorKind::Unreachable
        }
        _ => BackupErrorKind::Other,
    };
    BackupError {
        kind,
        message: chain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, ms: i64) -> BackupObject {
        BackupObject {
            key: key.into(),
            size_bytes: 1,
            modified_unix_ms: ms,
        }
    }

    #[test]
    fn the_newest_two_are_kept_in_any_order() {
        let all = [
            obj("a", 1),
            obj("b", 5),
            obj("c", 3),
            obj("d", 5),
            obj("e", 0),
        ];
        for rotate in 0..all.len() {
            let mut s = BackupSnapshot {
                objects: 0,
                backups: 0,
                newest: None,
                previous: None,
                content: None,
                observed_unix_ms: 0,
                duration_seconds: 0.0,
            };
            let mut order = all.to_vec();
            order.rotate_left(rotate);
            for o in order {
                keep_newest(&mut s, o);
            }
            assert_eq!(s.newest.unwrap().key, "d");
            assert_eq!(s.previous.unwrap().key, "b");
        }
    }
}
