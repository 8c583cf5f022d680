//! The backup checks: the newest backup of a `[backups.<name>]` location
//! is fresh, big enough and not much smaller than the one before, and its
//! first bytes are a dump dbwarden recognises. Pure, like the rest of the
//! core: the snapshot carries the clock its ages are measured against.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CheckId, CheckResult, CheckStatus, HoldState, Limit, Measurement, fmt_secs, judge};
use crate::observe::backups::{BackupError, BackupSnapshot, Content};
use crate::settings::{Context, Issues, duration, join, q, ratio};

/// `[backups.<name>.thresholds]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupThresholds {
    /// The newest backup must be younger than this (a nightly schedule
    /// with two hours of slack: 26 h).
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// The newest backup must have at least this many bytes.
    pub min_bytes: u64,
    /// The newest backup may be smaller than the one before by at most
    /// this ratio (0.5: half); a sudden drop is how a broken dump looks.
    #[serde(with = "ratio")]
    pub max_shrink: f64,
    /// How long `backup_fresh`, `backup_size` or `backup_integrity` must
    /// hold before it fails, as the built-in checks' `for` (default none:
    /// a stale backup stays stale until the next one). `backup_store`
    /// fails at once, like a target's `connection`.
    #[serde(rename = "for", default, with = "duration")]
    pub hold: Duration,
}

impl Default for BackupThresholds {
    fn default() -> Self {
        BackupThresholds {
            max_age: Duration::from_secs(26 * 3600),
            min_bytes: 1,
            max_shrink: 0.5,
            hold: Duration::ZERO,
        }
    }
}

impl BackupThresholds {
    pub fn validate(&self, path: &str, _ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        if self.max_age < Duration::from_secs(1) {
            issues.push(
                key("max_age"),
                format!("{} is too short: at least \"1s\"", q(self.max_age)),
            );
        }
        if self.max_shrink >= 1.0 {
            issues.push(
                key("max_shrink"),
                "1.0 lets a backup shrink to nothing: write a ratio below 1, e.g. 0.5",
            );
        }
    }
}

/// The checks of a backup location.
pub const BACKUP_CHECKS: [CheckId; 4] = [
    CheckId::BackupStore,
    CheckId::BackupFresh,
    CheckId::BackupSize,
    CheckId::BackupIntegrity,
];

fn limit(check: CheckId, t: &BackupThresholds) -> Limit {
    let value = match check {
        CheckId::BackupFresh => t.max_age.as_secs_f64(),
        CheckId::BackupSize => t.min_bytes as f64,
        _ => 1.0,
    };
    let hold = match check {
        CheckId::BackupStore => Duration::ZERO,
        _ => t.hold,
    };
    Limit { value, hold }
}

/// Every backup check's limit.
pub fn backup_limits(t: &BackupThresholds) -> Vec<(CheckId, Limit)> {
    BACKUP_CHECKS.iter().map(|c| (*c, limit(*c, t))).collect()
}

/// A byte count for people: `1.5 MiB`.
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Measures one backup check; `None` when there is no backup to judge.
fn measure(check: CheckId, s: &BackupSnapshot, t: &BackupThresholds) -> Option<Measurement> {
    let newest = s.newest.as_ref();
    match check {
        CheckId::BackupStore => Some(Measurement {
            value: 1.0,
            violated: false,
            detail: format!("{} objects listed, {} backups", s.objects, s.backups),
        }),
        CheckId::BackupFresh => {
            let max = t.max_age.as_secs_f64();
            Some(match newest {
                None => Measurement {
                    value: f64::NAN,
                    violated: true,
                    detail: format!(
                        "no backup: none of the {} objects matches the pattern",
                        s.objects
                    ),
                },
                Some(n) => {
                    let age = (s.observed_unix_ms - n.modified_unix_ms).max(0) as f64 / 1000.0;
                    Measurement {
                        value: age,
                        violated: age > max,
                        detail: format!(
                            "newest backup {} is {} old, threshold {}",
                            n.key,
                            fmt_secs(age),
                            fmt_secs(max)
                        ),
                    }
                }
            })
        }
        CheckId::BackupSize => {
            let n = newest?;
            let size = n.size_bytes as f64;
            let too_small = n.size_bytes < t.min_bytes;
            let shrink = s
                .previous
                .as_ref()
                .filter(|p| p.size_bytes > 0)
                .map(|p| (p, 1.0 - size / p.size_bytes as f64));
            let shrunk = shrink.is_some_and(|(_, r)| r > t.max_shrink);
            let mut detail = format!(
                "newest backup {} is {} (minimum {})",
                n.key,
                fmt_bytes(size),
                fmt_bytes(t.min_bytes as f64)
            );
            if let Some((p, r)) = shrink {
                detail.push_str(&format!(
                    "; the previous, {}, was {}: {} {:.0}% (at most {:.0}%)",
                    p.key,
                    fmt_bytes(p.size_bytes as f64),
                    if r >= 0.0 { "shrunk by" } else { "grew by" },
                    r.abs() * 100.0,
                    t.max_shrink * 100.0
                ));
            }
            Some(Measurement {
                value: size,
                violated: too_small || shrunk,
                detail,
            })
        }
        CheckId::BackupIntegrity => {
            let n = newest?;
            let c = s.content.as_ref()?;
            let what = match c {
                Content::PostgresCustom {
                    archive_version,
                    database,
                    dump_version,
                    toc_entries,
                    pg_restore,
                } => format!(
                    "a pg_dump custom-format archive {archive_version} of database {database:?} by pg_dump {dump_version}, {toc_entries} table-of-contents entries{}",
                    pg_restore
                        .as_deref()
                        .map(|p| format!("; pg_restore --list: {p}"))
                        .unwrap_or_default()
                ),
                Content::PostgresPlain { header } => format!("a plain SQL dump ({header})"),
                Content::Neo4jDump { compression } => {
                    format!("a Neo4j database dump ({compression})")
                }
                Content::Unrecognised { found } => {
                    format!("not a recognised backup: found {found}")
                }
                Content::Unreadable { error } => format!("cannot be read: {error}"),
            };
            Some(Measurement {
                value: if c.recognised() { 1.0 } else { 0.0 },
                violated: !c.recognised(),
                detail: format!("newest backup {} is {what}", n.key),
            })
        }
        _ => None,
    }
}

/// Evaluates every backup check on a fresh observation.
pub fn evaluate_backups(
    snapshot: &BackupSnapshot,
    thresholds: &BackupThresholds,
    hold: &HoldState,
    now_ms: u64,
) -> (Vec<CheckResult>, HoldState) {
    let mut next = HoldState::default();
    let results = BACKUP_CHECKS
        .iter()
        .map(|&check| {
            let l = limit(check, thresholds);
            match measure(check, snapshot, thresholds) {
                Some(m) => {
                    let mut r = judge(check, m, l, hold, &mut next, now_ms);
                    if r.value.is_some_and(f64::is_nan) {
                        r.value = None;
                    }
                    r
                }
                None => unknown(check, l, "no backup to judge"),
            }
        })
        .collect();
    (results, next)
}

/// The results for a location that could not be observed: `backup_store`
/// fails with the error, the others are unknown.
pub fn evaluate_backups_down(
    thresholds: &BackupThresholds,
    error: &BackupError,
) -> Vec<CheckResult> {
    BACKUP_CHECKS
        .iter()
        .map(|&check| {
            let l = limit(check, thresholds);
            if check == CheckId::BackupStore {
                CheckResult {
                    check,
                    status: CheckStatus::Fail,
                    value: Some(0.0),
                    threshold: l.value,
                    for_seconds: 0.0,
                    held_seconds: 0.0,
                    detail: format!("cannot list the location ({error})"),
                    excluded: None,
                }
            } else {
                unknown(
                    check,
                    l,
                    "no fresh observation: the location cannot be listed",
                )
            }
        })
        .collect()
}

fn unknown(check: CheckId, l: Limit, why: &str) -> CheckResult {
    CheckResult {
        check,
        status: CheckStatus::Unknown,
        value: None,
        threshold: l.value,
        for_seconds: l.hold.as_secs_f64(),
        held_seconds: 0.0,
        detail: why.to_string(),
        excluded: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::backups::{BackupErrorKind, BackupObject};

    const HOUR_MS: i64 = 3_600_000;

    fn obj(key: &str, size: u64, at: i64) -> BackupObject {
        BackupObject {
            key: key.into(),
            size_bytes: size,
            modified_unix_ms: at,
        }
    }

    fn custom() -> Content {
        Content::PostgresCustom {
            archive_version: "1.16".into(),
            database: "app".into(),
            dump_version: "17.2".into(),
            toc_entries: 10,
            pg_restore: None,
        }
    }

    fn snap(newest: Option<BackupObject>, previous: Option<BackupObject>) -> BackupSnapshot {
        BackupSnapshot {
            objects: 3,
            backups: u64::from(newest.is_some()) + u64::from(previous.is_some()),
            content: newest.as_ref().map(|_| custom()),
            newest,
            previous,
            observed_unix_ms: 100 * HOUR_MS,
            duration_seconds: 0.1,
        }
    }

    fn status(results: &[CheckResult], check: CheckId) -> (CheckStatus, Option<f64>, String) {
        let r = results.iter().find(|r| r.check == check).unwrap();
        (r.status, r.value, r.detail.clone())
    }

    fn eval(s: &BackupSnapshot, t: &BackupThresholds) -> Vec<CheckResult> {
        evaluate_backups(s, t, &HoldState::default(), 0).0
    }

    #[test]
    fn a_fresh_sound_backup_passes_every_check() {
        let t = BackupThresholds::default();
        let s = snap(
            Some(obj("d/b2.dump", 900, 99 * HOUR_MS)),
            Some(obj("d/b1.dump", 1000, 75 * HOUR_MS)),
        );
        let r = eval(&s, &t);
        for c in BACKUP_CHECKS {
            assert_eq!(status(&r, c).0, CheckStatus::Pass, "{c:?}: {r:?}");
        }
        assert_eq!(status(&r, CheckId::BackupFresh).1, Some(3600.0));
        assert_eq!(status(&r, CheckId::BackupSize).1, Some(900.0));
    }

    #[test]
    fn an_old_backup_is_stale_and_no_backup_is_stale_too() {
        let t = BackupThresholds::default();
        let s = snap(Some(obj("b.dump", 900, 73 * HOUR_MS)), None);
        let (st, v, detail) = status(&eval(&s, &t), CheckId::BackupFresh);
        assert_eq!((st, v), (CheckStatus::Fail, Some(27.0 * 3600.0)));
        assert!(detail.contains("b.dump"), "{detail}");
        let r = eval(&snap(None, None), &t);
        let (st, v, detail) = status(&r, CheckId::BackupFresh);
        assert_eq!((st, v), (CheckStatus::Fail, None));
        assert!(detail.contains("no backup"), "{detail}");
        assert_eq!(status(&r, CheckId::BackupSize).0, CheckStatus::Unknown);
        assert_eq!(status(&r, CheckId::BackupIntegrity).0, CheckStatus::Unknown);
    }

    #[test]
    fn a_hold_keeps_a_check_pending_until_it_has_held_for_its_duration() {
        let t = BackupThresholds {
            min_bytes: 100,
            hold: Duration::from_secs(600),
            ..Default::default()
        };
        let small = snap(Some(obj("b.dump", 99, 99 * HOUR_MS)), None);
        let (r, hold) = evaluate_backups(&small, &t, &HoldState::default(), 0);
        assert_eq!(status(&r, CheckId::BackupSize).0, CheckStatus::Pending);
        let (r, hold) = evaluate_backups(&small, &t, &hold, 599_000);
        assert_eq!(status(&r, CheckId::BackupSize).0, CheckStatus::Pending);
        let (r, _) = evaluate_backups(&small, &t, &hold, 600_000);
        assert_eq!(status(&r, CheckId::BackupSize).0, CheckStatus::Fail);
        // The listing itself is not held.
        assert_eq!(limit(CheckId::BackupStore, &t).hold, Duration::ZERO);
        assert_eq!(
            limit(CheckId::BackupFresh, &t).hold,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn too_small_or_shrunk_fails_the_size_check() {
        let t = BackupThresholds {
            min_bytes: 100,
            ..Default::default()
        };
        let small = snap(Some(obj("b.dump", 99, 99 * HOUR_MS)), None);
        assert_eq!(
            status(&eval(&small, &t), CheckId::BackupSize).0,
            CheckStatus::Fail
        );
        let shrunk = snap(
            Some(obj("b2", 400, 99 * HOUR_MS)),
            Some(obj("b1", 1000, 98 * HOUR_MS)),
        );
        let (st, _, detail) = status(&eval(&shrunk, &t), CheckId::BackupSize);
        assert_eq!(st, CheckStatus::Fail);
        assert!(detail.contains("shrunk by 60%"), "{detail}");
        // Exactly at the limit passes; growth passes.
        let half = snap(Some(obj("b2", 500, 99 * HOUR_MS)), Some(obj("b1", 1000, 1)));
        assert_eq!(
            status(&eval(&half, &t), CheckId::BackupSize).0,
            CheckStatus::Pass
        );
        let grew = snap(
            Some(obj("b2", 5000, 99 * HOUR_MS)),
            Some(obj("b1", 1000, 1)),
        );
        assert_eq!(
            status(&eval(&grew, &t), CheckId::BackupSize).0,
            CheckStatus::Pass
        );
    }

    #[test]
    fn an_unrecognised_backup_fails_integrity_with_what_was_found() {
        let mut s = snap(Some(obj("b.dump", 5, 99 * HOUR_MS)), None);
        s.content = Some(Content::Unrecognised {
            found: "an empty object".into(),
        });
        let (st, v, detail) = status(
            &eval(&s, &BackupThresholds::default()),
            CheckId::BackupIntegrity,
        );
        assert_eq!((st, v), (CheckStatus::Fail, Some(0.0)));
        assert!(detail.contains("found an empty object"), "{detail}");
    }

    #[test]
    fn a_location_that_cannot_be_listed_fails_only_the_store_check() {
        let e = BackupError {
            kind: BackupErrorKind::Credentials,
            message: "InvalidAccessKeyId".into(),
        };
        let r = evaluate_backups_down(&BackupThresholds::default(), &e);
        let (st, _, detail) = status(&r, CheckId::BackupStore);
        assert_eq!(st, CheckStatus::Fail);
        assert!(
            detail.contains("credentials: InvalidAccessKeyId"),
            "{detail}"
        );
        for c in [
            CheckId::BackupFresh,
            CheckId::BackupSize,
            CheckId::BackupIntegrity,
        ] {
            assert_eq!(status(&r, c).0, CheckStatus::Unknown);
        }
    }
}
