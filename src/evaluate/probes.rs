//! The probes' checks, judged purely from their latest runs: a run's
//! result and its settings in, check results out, with the same `for` hold
//! as the built-in checks. Each probe has
//!
//! - `probe:<name>`: the run itself succeeded (fails at once when it did not:
//!   timeout, a write refused, a column that cannot be read, too many series);
//! - `probe:<name>:duration`: the run time under `checks.duration.max`;
//! - `probe:<name>:<column>`: `min`/`max` on a numeric column (the worst row
//!   decides), `max_age` on a timestamp column (the oldest row's value must
//!   be younger than this, measured by the server's clock at the run).
//!
//! A probe's column checks are unknown while its run fails, and every probe
//! check is unknown while the target is down.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{CheckStatus, fmt_secs};
use crate::observe::probes::settings::{DURATION_CHECK, probe_check_name};
use crate::observe::probes::{
    Bound, ColumnKind, ProbeCheck, ProbeError, ProbeRows, ProbeRun, ProbeSettings,
};

/// The result of one probe check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeCheckResult {
    /// `probe:<name>`, `probe:<name>:duration` or `probe:<name>:<column>`:
    /// the `check` label of the check metrics.
    pub check: String,
    pub status: CheckStatus,
    pub value: Option<f64>,
    pub threshold: f64,
    pub for_seconds: f64,
    pub held_seconds: f64,
    pub detail: String,
}

/// A probe's latest run and its checks: what is published, exported and shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeStatus {
    pub probe: String,
    /// The latest run succeeded.
    pub ok: bool,
    pub error: Option<ProbeError>,
    #[serde(serialize_with = "unix")]
    pub last_run_at: SystemTime,
    pub duration_seconds: f64,
    /// Series of the latest successful result (0 when it failed).
    pub series: usize,
    /// Failed runs since start, by kind.
    pub failures: BTreeMap<&'static str, u64>,
    /// The latest result, when the latest run succeeded and the target is up.
    #[serde(skip)]
    pub rows: Option<ProbeRows>,
    pub checks: Vec<ProbeCheckResult>,
}

fn unix<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    )
}

/// A check's limit as it was when its hold began; a changed limit restarts it.
type LimitKey = (Option<u64>, Option<u64>, Option<u64>, u128);

/// What a target's probes carry from run to run: the latest run of each,
/// failures counted, and since when each check's condition has held.
#[derive(Debug, Clone, Default)]
pub struct ProbeBook {
    latest: BTreeMap<String, ProbeRun>,
    failures: BTreeMap<String, BTreeMap<&'static str, u64>>,
    hold: BTreeMap<String, (u64, LimitKey)>,
}

impl ProbeBook {
    /// Takes fresh runs.
    pub fn record(&mut self, runs: Vec<ProbeRun>) {
        for run in runs {
            if let Err(e) = &run.result {
                *self
                    .failures
                    .entry(run.probe.clone())
                    .or_default()
                    .entry(e.kind.as_str())
                    .or_insert(0) += 1;
            }
            self.latest.insert(run.probe.clone(), run);
        }
    }

    /// Forgets the probes a reload removed.
    pub fn retain(&mut self, probes: &BTreeMap<String, ProbeSettings>) {
        self.latest.retain(|p, _| probes.contains_key(p));
        self.failures.retain(|p, _| probes.contains_key(p));
        self.hold.retain(|c, _| {
            let p = c.strip_prefix("probe:").unwrap_or(c);
            probes.contains_key(p.split(':').next().unwrap_or(p))
        });
    }
}

/// Every probe's status from its latest run (probes that have not run yet
/// are left out). `now_ms` is the caller's monotonic clock; `hold: false`
/// (`dbwarden check`, one observation) fails a violated condition at once.
pub fn evaluate(
    book: &mut ProbeBook,
    probes: &BTreeMap<String, ProbeSettings>,
    now_ms: u64,
    hold: bool,
) -> Vec<ProbeStatus> {
    let mut next_hold = BTreeMap::new();
    let mut out = Vec::new();
    for (name, settings) in probes {
        let Some(run) = book.latest.get(name) else {
            continue;
        };
        let mut checks = Vec::new();
        let own = probe_check_name(name, None);
        let (ok, error, rows) = match &run.result {
            Ok(rows) => {
                checks.push(ProbeCheckResult {
                    check: own,
                    status: CheckStatus::Pass,
                    value: Some(1.0),
                    threshold: 1.0,
                    for_seconds: 0.0,
                    held_seconds: 0.0,
                    detail: format!(
                        "ran in {}, {} series",
                        fmt_secs(run.duration_seconds),
                        rows.series()
                    ),
                });
                (true, None, Some(rows))
            }
            Err(e) => {
                checks.push(ProbeCheckResult {
                    check: own,
                    status: CheckStatus::Fail,
                    value: Some(0.0),
                    threshold: 1.0,
                    for_seconds: 0.0,
                    held_seconds: 0.0,
                    detail: format!("probe failed ({}): {}", e.kind.as_str(), e.message),
                });
                (false, Some(e.clone()), None)
            }
        };
        for (column, check) in &settings.checks {
            let id = probe_check_name(name, Some(column));
            let limit_hold = check.hold.unwrap_or(Duration::ZERO);
            let m = if column == DURATION_CHECK {
                Some(measure_duration(run.duration_seconds, check))
            } else {
                rows.map(|r| measure_column(r, column, check))
            };
            let Some(m) = m else {
                checks.push(ProbeCheckResult {
                    check: id,
                    status: CheckStatus::Unknown,
                    value: None,
                    threshold: threshold(check),
                    for_seconds: limit_hold.as_secs_f64(),
                    held_seconds: 0.0,
                    detail: "unknown: the probe's run failed".to_string(),
                });
                continue;
            };
            let key = limit_key(check);
            let (status, held) = if m.violated {
                let since = book
                    .hold
                    .get(&id)
                    .filter(|(_, k)| *k == key)
                    .map_or(now_ms, |(s, _)| *s)
                    .min(now_ms);
                next_hold.insert(id.clone(), (since, key));
                let held = Duration::from_millis(now_ms - since);
                let fail = !hold || held >= limit_hold || m.immediate;
                (
                    if fail {
                        CheckStatus::Fail
                    } else {
                        CheckStatus::Pending
                    },
                    held,
                )
            } else {
                (CheckStatus::Pass, Duration::ZERO)
            };
            checks.push(ProbeCheckResult {
                check: id,
                status,
                value: m.value,
                threshold: m.threshold,
                for_seconds: limit_hold.as_secs_f64(),
                held_seconds: held.as_secs_f64(),
                detail: m.detail,
            });
        }
        out.push(ProbeStatus {
            probe: name.clone(),
            ok,
            error,
            last_run_at: run.at,
            duration_seconds: run.duration_seconds,
            series: rows.map_or(0, ProbeRows::series),
            failures: book.failures.get(name).cloned().unwrap_or_default(),
            rows: rows.cloned(),
            checks,
        });
    }
    book.hold = next_hold;
    out
}

/// The target is down: no fresh observation; every probe check is unknown
/// and no values are exported (the hold timers keep running in the book).
pub fn down(statuses: &mut [ProbeStatus]) {
    for s in statuses {
        s.rows = None;
        for c in &mut s.checks {
            c.status = CheckStatus::Unknown;
            c.value = None;
            c.held_seconds = 0.0;
            c.detail = "no fresh observation: the target is down".to_string();
        }
    }
}

struct Measured {
    value: Option<f64>,
    threshold: f64,
    violated: bool,
    /// Fails without waiting for the hold (a mistake, not a condition).
    immediate: bool,
    detail: String,
}

fn threshold(check: &ProbeCheck) -> f64 {
    check
        .max_age
        .map(|d| d.as_secs_f64())
        .or(check.max.map(Bound::value))
        .or(check.min)
        .unwrap_or(0.0)
}

fn limit_key(check: &ProbeCheck) -> LimitKey {
    (
        check.min.map(f64::to_bits),
        check.max.map(|b| b.value().to_bits()),
        check.max_age.map(|d| d.as_millis() as u64),
        check.hold.unwrap_or_default().as_millis(),
    )
}

fn measure_duration(seconds: f64, check: &ProbeCheck) -> Measured {
    let max = check.max.map_or(f64::INFINITY, Bound::value);
    Measured {
        value: Some(seconds),
        threshold: max,
        violated: seconds > max,
        immediate: false,
        detail: format!("ran in {}, max {}", fmt_secs(seconds), fmt_secs(max)),
    }
}

fn measure_column(rows: &ProbeRows, column: &str, check: &ProbeCheck) -> Measured {
    let mistake = |detail: String| Measured {
        value: None,
        threshold: threshold(check),
        violated: true,
        immediate: true,
        detail,
    };
    let Some(i) = rows.values.iter().position(|(c, _)| c == column) else {
        return mistake(format!(
            "column {column:?} is not a value column of the result (columns: {})",
            rows.values
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let kind = rows.values[i].1;
    // Each row with its value (NULLs left out), and which labels it has.
    let values: Vec<(f64, String)> = rows
        .rows
        .iter()
        .filter_map(|r| {
            r.values[i].map(|v| {
                let labels = rows
                    .labels
                    .iter()
                    .zip(&r.labels)
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                (v, labels)
            })
        })
        .collect();
    let at = |labels: &str| {
        if labels.is_empty() {
            String::new()
        } else {
            format!(" ({labels})")
        }
    };
    if let Some(max_age) = check.max_age {
        if kind != ColumnKind::Timestamp {
            return mistake(format!(
                "column {column:?} is a number, not a timestamp: max_age needs a timestamp column"
            ));
        }
        let limit = max_age.as_secs_f64();
        let Some((oldest, labels)) = values.iter().min_by(|a, b| a.0.total_cmp(&b.0)) else {
            return Measured {
                value: None,
                threshold: limit,
                violated: true,
                immediate: false,
                detail: format!("{column} has no value (no row, or NULL): no recent data"),
            };
        };
        let age = (rows.server_now - oldest).max(0.0);
        return Measured {
            value: Some(age),
            threshold: limit,
            violated: age > limit,
            immediate: false,
            detail: format!(
                "newest {column}{} is {} old, max_age {}",
                at(labels),
                fmt_secs(age),
                fmt_secs(limit)
            ),
        };
    }
    if values.is_empty() {
        return Measured {
            value: None,
            threshold: threshold(check),
            violated: true,
            immediate: false,
            detail: format!("{column} has no value (no row, or NULL)"),
        };
    }
    let low = values
        .iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("not empty");
    let high = values
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("not empty");
    let max = check.max.map(Bound::value);
    if let Some(min) = check.min
        && low.0 < min
    {
        return Measured {
            value: Some(low.0),
            threshold: min,
            violated: true,
            immediate: false,
            detail: format!("{column}{} = {} is below min {min}", at(&low.1), low.0),
        };
    }
    if let Some(max) = max
        && high.0 > max
    {
        return Measured {
            value: Some(high.0),
            threshold: max,
            violated: true,
            immediate: false,
            detail: format!("{column}{} = {} is above max {max}", at(&high.1), high.0),
        };
    }
    let (value, threshold) = match (check.min, max) {
        (Some(min), _) => (low.0, min),
        (None, Some(max)) => (high.0, max),
        (None, None) => (low.0, 0.0),
    };
    let range = match (check.min, max) {
        (Some(a), Some(b)) => format!("within {a}..{b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => String::new(),
    };
    Measured {
        value: Some(value),
        threshold,
        violated: false,
        immediate: false,
        detail: if values.len() == 1 {
            format!("{column} = {value}, {range}")
        } else {
            format!("{column}: {} rows, all {range}", values.len())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::probes::{ProbeErrorKind, ProbeRow};

    fn settings(checks: &[(&str, ProbeCheck)]) -> BTreeMap<String, ProbeSettings> {
        let mut p = ProbeSettings {
            sql: Some("SELECT 1".into()),
            ..Default::default()
        };
        for (c, k) in checks {
            p.checks.insert(c.to_string(), k.clone());
        }
        BTreeMap::from([("entities".to_string(), p)])
    }

    fn run(result: Result<ProbeRows, ProbeError>) -> ProbeRun {
        ProbeRun {
            probe: "entities".into(),
            at: SystemTime::UNIX_EPOCH,
            duration_seconds: 0.5,
            result,
        }
    }

    fn rows(count: f64, newest: f64) -> ProbeRows {
        ProbeRows {
            labels: vec![],
            values: vec![
                ("rows".into(), ColumnKind::Number),
                ("newest".into(), ColumnKind::Timestamp),
            ],
            rows: vec![ProbeRow {
                labels: vec![],
                values: vec![Some(count), Some(newest)],
            }],
            server_now: 1000.0,
        }
    }

    fn status_of(s: &[ProbeStatus], check: &str) -> CheckStatus {
        s[0].checks
            .iter()
            .find(|c| c.check == check)
            .unwrap()
            .status
    }

    #[test]
    fn min_holds_then_fails_and_max_age_measures_server_time() {
        let probes = settings(&[
            (
                "rows",
                ProbeCheck {
                    min: Some(10.0),
                    hold: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            ),
            (
                "newest",
                ProbeCheck {
                    max_age: Some(Duration::from_secs(100)),
                    ..Default::default()
                },
            ),
        ]);
        let mut book = ProbeBook::default();
        book.record(vec![run(Ok(rows(5.0, 950.0)))]);
        let s = evaluate(&mut book, &probes, 0, true);
        assert_eq!(status_of(&s, "probe:entities"), CheckStatus::Pass);
        assert_eq!(status_of(&s, "probe:entities:rows"), CheckStatus::Pending);
        assert_eq!(status_of(&s, "probe:entities:newest"), CheckStatus::Pass);
        book.record(vec![run(Ok(rows(5.0, 800.0)))]);
        let s = evaluate(&mut book, &probes, 60_000, true);
        assert_eq!(status_of(&s, "probe:entities:rows"), CheckStatus::Fail);
        let newest = s[0]
            .checks
            .iter()
            .find(|c| c.check == "probe:entities:newest")
            .unwrap();
        assert_eq!(newest.status, CheckStatus::Fail);
        assert_eq!(newest.value, Some(200.0));
        // Without hold (dbwarden check) a violated condition fails at once.
        let mut once = ProbeBook::default();
        once.record(vec![run(Ok(rows(5.0, 950.0)))]);
        let s = evaluate(&mut once, &probes, 0, false);
        assert_eq!(status_of(&s, "probe:entities:rows"), CheckStatus::Fail);
    }

    #[test]
    fn a_failed_run_fails_its_own_check_and_leaves_columns_unknown() {
        let probes = settings(&[(
            "rows",
            ProbeCheck {
                min: Some(1.0),
                ..Default::default()
            },
        )]);
        let mut book = ProbeBook::default();
        book.record(vec![run(Err(ProbeError {
            kind: ProbeErrorKind::ReadOnly,
            message: "no".into(),
        }))]);
        let s = evaluate(&mut book, &probes, 0, true);
        assert_eq!(status_of(&s, "probe:entities"), CheckStatus::Fail);
        assert_eq!(status_of(&s, "probe:entities:rows"), CheckStatus::Unknown);
        assert_eq!(s[0].failures.get("read_only"), Some(&1));
    }
}
