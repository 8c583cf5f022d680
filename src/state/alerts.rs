//! What Alertmanager last reported as firing, and the memory that recognises
//! its re-sends. Pure logic: the caller passes the time; nothing here reads
//! a clock or does I/O.
//!
//! Alertmanager sends a notification again on every repeat interval, and
//! each peer of an HA pair sends its own copy. An alert is identified by its
//! `fingerprint` (a hash of its labels) and `startsAt` (which changes when the
//! alert fires anew), so a notification with a pair already seen *with the
//! same status* is a duplicate: counted, not acted on again. The status is
//! part of the key because the resolution of an alert carries the same
//! fingerprint and `startsAt` as its firing; a firing copy that arrives after
//! the resolution (a slow HA peer) is a duplicate too, and does not revive
//! the alert.
//!
//! [`FiringAlerts`] keeps the currently firing alerts with a `target` label,
//! as `(alertname, target)`: a firing notification adds (or refreshes) one,
//! a resolved one removes it, and each expires at its `endsAt` when the
//! sender set one, and at the latest [`MAX_AGE`] after the latest report.
//! Alertmanager's webhook hides the `endsAt` of a firing alert (it sends
//! Go's zero time, `0001-01-01T00:00:00Z`), so with Alertmanager it is the
//! re-sends on the route's `repeat_interval` (keep it well under
//! [`MAX_AGE`]) that keep an alert known as firing; a resolution that never
//! arrives is forgotten after [`MAX_AGE`]. Remediation can use
//! [`FiringAlerts::is_firing`] as a second gate: act only while the named
//! alert is firing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A firing alert not reported again within this long is forgotten.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// The most `(fingerprint, startsAt)` pairs remembered for deduplication;
/// the oldest are forgotten first.
pub const DEDUPE_CAPACITY: usize = 10_000;
/// Pairs remembered for deduplication are forgotten after this long.
pub const DEDUPE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The most firing alerts kept; when full, the one expiring soonest goes.
pub const FIRING_CAPACITY: usize = 10_000;

/// An alert's status in a webhook notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One alert of a notification, reduced to what dbwarden uses.
#[derive(Debug, Clone, Copy)]
pub struct AlertReport<'a> {
    pub status: AlertStatus,
    /// Alertmanager's fingerprint of the alert's labels.
    pub fingerprint: &'a str,
    /// `startsAt` as sent; compared as a time when it parses as RFC 3339.
    pub starts_at: &'a str,
    /// `endsAt`, when set (Alertmanager's zero time `0001-01-01T00:00:00Z` is not).
    pub ends_at: Option<SystemTime>,
    pub alertname: Option<&'a str>,
    /// The `target` label, when it names a target dbwarden watches. Alerts
    /// without one are deduplicated but not kept in the firing set.
    pub target: Option<&'a str>,
}

/// What to do about one reported alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not seen before with this status: act on it.
    New,
    /// A re-send (repeat interval, HA peer) or a firing copy of an alert
    /// already resolved: counted, not acted on.
    Duplicate,
}

/// A firing alert as dbwarden knows it, for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FiringAlert {
    pub alertname: String,
    pub target: String,
    pub fingerprint: String,
    #[serde(serialize_with = "ser_time")]
    pub starts_at: Option<SystemTime>,
    #[serde(serialize_with = "ser_time")]
    pub ends_at: Option<SystemTime>,
    /// When dbwarden forgets it unless reported again.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct Firing {
    alertname: String,
    target: String,
    /// The normalised `startsAt`: which incarnation of the alert this is.
    starts_key: String,
    starts_at: Option<SystemTime>,
    ends_at: Option<SystemTime>,
    expires_at: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    /// By fingerprint.
    firing: HashMap<String, Firing>,
    /// No entry of `firing` expires before this: skips needless sweeps.
    next_expiry: Option<SystemTime>,
    /// Dedupe memory: (fingerprint, startsAt) -> latest status seen.
    seen: HashMap<(String, String), AlertStatus>,
    /// The keys of `seen` with when each was first seen, oldest first.
    order: VecDeque<((String, String), SystemTime)>,
}

/// The currently firing alerts and the dedupe memory, shared between the
/// Alertmanager receiver (writer) and whoever asks (remediation, the API).
#[derive(Debug, Default)]
pub struct FiringAlerts {
    inner: Mutex<Inner>,
}

impl FiringAlerts {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one alert of a notification received at `now` and says
    /// whether it is new. A firing alert's re-send is not new but still
    /// refreshes its expiry: it proves the alert still fires.
    pub fn observe(&self, alert: &AlertReport<'_>, now: SystemTime) -> Outcome {
        let mut inner = self.lock();
        inner.forget_expired(now);
        inner.forget_seen(now);
        let starts_key = match parse_rfc3339(alert.starts_at) {
            Some(t) => format!("@{}", nanos(t)),
            None => alert.starts_at.to_string(),
        };
        let key = (alert.fingerprint.to_string(), starts_key.clone());
        let previous = inner.seen.get(&key).copied();
        let outcome = match (previous, alert.status) {
            (None, _) | (Some(AlertStatus::Firing), AlertStatus::Resolved) => Outcome::New,
            _ => Outcome::Duplicate,
        };
        if previous.is_none() {
            inner.order.push_back((key.clone(), now));
        }
        // A resolved pair stays resolved: a late firing copy does not revive it.
        if previous != Some(AlertStatus::Resolved) {
            inner.seen.insert(key, alert.status);
        }
        inner.forget_seen(now);

        match (alert.status, previous) {
            (AlertStatus::Resolved, _) => {
                // Only the incarnation that resolved: a late resolution of an
                // earlier firing must not clear the alert firing anew.
                if inner
                    .firing
                    .get(alert.fingerprint)
                    .is_some_and(|f| f.starts_key == starts_key)
                {
                    inner.firing.remove(alert.fingerprint);
                }
            }
            (AlertStatus::Firing, Some(AlertStatus::Resolved)) => {}
            (AlertStatus::Firing, _) => {
                if let (Some(alertname), Some(target)) = (alert.alertname, alert.target) {
                    let max = now.checked_add(MAX_AGE).unwrap_or(now);
                    let expires_at = alert.ends_at.map_or(max, |e| e.min(max));
                    let entry = Firing {
                        alertname: alertname.to_string(),
                        target: target.to_string(),
                        starts_key,
                        starts_at: parse_rfc3339(alert.starts_at),
                        ends_at: alert.ends_at,
                        expires_at,
                    };
                    inner.insert_firing(alert.fingerprint, entry, now);
                }
            }
        }
        outcome
    }

    /// True while Alertmanager reports an alert `alertname` with label
    /// `target` firing (and the report has not expired at `now`).
    pub fn is_firing(&self, alertname: &str, target: &str, now: SystemTime) -> bool {
        self.lock()
            .firing
            .values()
            .any(|f| f.alertname == alertname && f.target == target && f.expires_at > now)
    }

    /// Every alert firing at `now`, by alert name, target and fingerprint.
    pub fn firing(&self, now: SystemTime) -> Vec<FiringAlert> {
        let inner = self.lock();
        let mut out: Vec<FiringAlert> = inner
            .firing
            .iter()
            .filter(|(_, f)| f.expires_at > now)
            .map(|(fp, f)| FiringAlert {
                alertname: f.alertname.clone(),
                target: f.target.clone(),
                fingerprint: fp.clone(),
                starts_at: f.starts_at,
                ends_at: f.ends_at,
                expires_at: Some(f.expires_at),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.alertname, &a.target, &a.fingerprint).cmp(&(
                &b.alertname,
                &b.target,
                &b.fingerprint,
            ))
        });
        out
    }

    /// How many `(fingerprint, startsAt)` pairs the dedupe memory holds.
    pub fn remembered(&self) -> usize {
        self.lock().seen.len()
    }
}

impl Inner {
    /// Drops dedupe entries beyond the capacity or older than the max age.
    fn forget_seen(&mut self, now: SystemTime) {
        while let Some((key, first_seen)) = self.order.front() {
            let too_old = now
                .duration_since(*first_seen)
                .is_ok_and(|age| age >= DEDUPE_MAX_AGE);
            if self.order.len() > DEDUPE_CAPACITY || too_old {
                self.seen.remove(key);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    fn forget_expired(&mut self, now: SystemTime) {
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.firing.retain(|_, f| f.expires_at > now);
            self.next_expiry = self.firing.values().map(|f| f.expires_at).min();
        }
    }

    fn insert_firing(&mut self, fingerprint: &str, entry: Firing, now: SystemTime) {
        if !self.firing.contains_key(fingerprint) && self.firing.len() >= FIRING_CAPACITY {
            self.forget_expired(now);
            if self.firing.len() >= FIRING_CAPACITY {
                let soonest = self
                    .firing
                    .iter()
                    .min_by_key(|(_, f)| f.expires_at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.firing.remove(&k);
                }
            }
        }
        self.next_expiry = Some(
            self.next_expiry
                .map_or(entry.expires_at, |t| t.min(entry.expires_at)),
        );
        self.firing.insert(fingerprint.to_string(), entry);
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// Parses an RFC 3339 timestamp as Alertmanager writes them
/// (`2026-08-23T10:02:00.123456789Z`, or with a `+02:00` offset). Times
/// before 1970, such as Go's zero time `0001-01-01T00:00:00Z` that means
/// "not set", and anything malformed give `None`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    if secs < 0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-08-23T10:02:00Z";

    fn at(secs: u64) -> SystemTime {
        parse_rfc3339(T0).unwrap() + Duration::from_secs(secs)
    }

    fn firing<'a>(fp: &'a str, starts: &'a str, ends: Option<SystemTime>) -> AlertReport<'a> {
        AlertReport {
            status: AlertStatus::Firing,
            fingerprint: fp,
            starts_at: starts,
            ends_at: ends,
            alertname: Some("DbWardenIdleSessions"),
            target: Some("main"),
        }
    }

    fn resolved<'a>(fp: &'a str, starts: &'a str) -> AlertReport<'a> {
        AlertReport {
            status: AlertStatus::Resolved,
            ..firing(fp, starts, None)
        }
    }

    #[test]
    fn parses_rfc3339_as_alertmanager_writes_it() {
        let t = parse_rfc3339("2026-08-23T10:02:00Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_787_479_320
        );
        let frac = parse_rfc3339("2026-08-23T10:02:00.123456789Z").unwrap();
        assert_eq!(
            frac.duration_since(t).unwrap(),
            Duration::from_nanos(123_456_789)
        );
        let short = parse_rfc3339("2026-08-23T10:02:00.5Z").unwrap();
        assert_eq!(short.duration_since(t).unwrap(), Duration::from_millis(500));
        let long = parse_rfc3339("2026-08-23T10:02:00.1234567891234Z").unwrap();
        assert_eq!(
            long.duration_since(t).unwrap(),
            Duration::from_nanos(123_456_789)
        );
        assert_eq!(parse_rfc3339("2026-08-23T12:02:00+02:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-08-23T07:32:00-02:30"), Some(t));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").map(nanos),
            Some(1_709_164_800 * 1_000_000_000)
        );
        for bad in [
            "0001-01-01T00:00:00Z", // Go's zero time: "not set"
            "",
            "2026-08-23",
            "2026-08-23T10:02:00",
            "2026-08-23T10:02:00.Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-08-23T24:00:00Z",
            "2026-08-23T10:02:00+2:00",
            "2026-08-23T10:02:00Zjunk",
            "2026-08-23x10:02:00Z",
            "２026-08-23T10:02:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_firing_alert_is_firing_until_resolved() {
        let a = FiringAlerts::new();
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(0)));
        assert_eq!(a.observe(&firing("fp1", T0, None), at(0)), Outcome::New);
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(1)));
        assert!(!a.is_firing("DbWardenIdleSessions", "other", at(1)));
        assert!(!a.is_firing("DbWardenTargetDown", "main", at(1)));
        assert_eq!(a.observe(&resolved("fp1", T0), at(60)), Outcome::New);
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(61)));
    }

    #[test]
    fn repeats_and_ha_copies_are_duplicates_that_keep_the_alert_alive() {
        let a = FiringAlerts::new();
        let ends = |s| Some(at(s));
        assert_eq!(
            a.observe(&firing("fp1", T0, ends(240)), at(0)),
            Outcome::New
        );
        // The HA peer's copy, with the same startsAt written differently.
        let same = "2026-08-23T12:02:00.000+02:00";
        assert_eq!(
            a.observe(&firing("fp1", same, ends(240)), at(1)),
            Outcome::Duplicate
        );
        // The repeat-interval re-send moves endsAt on: the alert lives on.
        assert_eq!(
            a.observe(&firing("fp1", T0, ends(500)), at(200)),
            Outcome::Duplicate
        );
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(300)));
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(500)));
        // The resolution is new; its copy is a duplicate.
        assert_eq!(a.observe(&resolved("fp1", T0), at(300)), Outcome::New);
        assert_eq!(
            a.observe(&resolved("fp1", same), at(301)),
            Outcome::Duplicate
        );
        // A slow peer's firing copy after the resolution does not revive it.
        assert_eq!(
            a.observe(&firing("fp1", T0, ends(900)), at(302)),
            Outcome::Duplicate
        );
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(303)));
        // Firing anew (a new startsAt) is new.
        let again = "2026-08-23T11:00:00Z";
        assert_eq!(
            a.observe(&firing("fp1", again, None), at(400)),
            Outcome::New
        );
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(401)));
    }

    #[test]
    fn a_late_resolution_of_an_earlier_incarnation_does_not_clear_the_new_one() {
        let a = FiringAlerts::new();
        let again = "2026-08-23T11:00:00Z";
        assert_eq!(a.observe(&firing("fp1", again, None), at(0)), Outcome::New);
        assert_eq!(a.observe(&resolved("fp1", T0), at(1)), Outcome::New);
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(2)));
    }

    #[test]
    fn entries_expire_at_ends_at_or_after_the_max_age() {
        let a = FiringAlerts::new();
        a.observe(&firing("fp1", T0, Some(at(240))), at(0));
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(239)));
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(240)));

        // No endsAt (Go's zero time): the max age.
        let b = FiringAlerts::new();
        b.observe(&firing("fp1", T0, None), at(0));
        let max = MAX_AGE.as_secs();
        assert!(b.is_firing("DbWardenIdleSessions", "main", at(max - 1)));
        assert!(!b.is_firing("DbWardenIdleSessions", "main", at(max)));
        // A resend refreshes it.
        b.observe(&firing("fp1", T0, None), at(max - 10));
        assert!(b.is_firing("DbWardenIdleSessions", "main", at(max + 100)));

        // endsAt further away than the max age: the max age wins.
        let c = FiringAlerts::new();
        c.observe(&firing("fp1", T0, Some(at(10 * max))), at(0));
        assert!(!c.is_firing("DbWardenIdleSessions", "main", at(max)));

        // endsAt already past: not firing.
        let d = FiringAlerts::new();
        d.observe(&firing("fp1", T0, Some(at(5))), at(10));
        assert!(!d.is_firing("DbWardenIdleSessions", "main", at(10)));
        assert!(d.firing(at(10)).is_empty());
    }

    #[test]
    fn one_resolved_series_leaves_the_others_of_the_same_pair_firing() {
        // DbWardenDiskFillingUp fires per volume: same alertname and target.
        let a = FiringAlerts::new();
        a.observe(&firing("data", T0, None), at(0));
        a.observe(&firing("wal", T0, None), at(0));
        a.observe(&resolved("data", T0), at(5));
        assert!(a.is_firing("DbWardenIdleSessions", "main", at(6)));
        a.observe(&resolved("wal", T0), at(7));
        assert!(!a.is_firing("DbWardenIdleSessions", "main", at(8)));
    }

    #[test]
    fn alerts_without_alertname_or_watched_target_are_not_kept() {
        let a = FiringAlerts::new();
        let mut r = firing("fp1", T0, None);
        r.target = None;
        assert_eq!(a.observe(&r, at(0)), Outcome::New);
        assert_eq!(a.observe(&r, at(1)), Outcome::Duplicate);
        assert!(a.firing(at(1)).is_empty());
        let mut r = firing("fp2", T0, None);
        r.alertname = None;
        a.observe(&r, at(0));
        assert!(a.firing(at(1)).is_empty());
    }

    #[test]
    fn the_dedupe_memory_is_bounded_in_size_and_age() {
        let a = FiringAlerts::new();
        let fps: Vec<String> = (0..DEDUPE_CAPACITY + 5).map(|i| format!("fp{i}")).collect();
        for fp in &fps {
            let mut r = firing(fp, T0, None);
            r.target = None;
            a.observe(&r, at(0));
        }
        assert_eq!(a.remembered(), DEDUPE_CAPACITY);
        // The oldest were forgotten: seen again, they count as new.
        let mut oldest = firing(&fps[0], T0, None);
        oldest.target = None;
        assert_eq!(a.observe(&oldest, at(1)), Outcome::New);
        let mut newest = firing(&fps[fps.len() - 1], T0, None);
        newest.target = None;
        assert_eq!(a.observe(&newest, at(1)), Outcome::Duplicate);
        // After 24 h everything is forgotten.
        let day = DEDUPE_MAX_AGE.as_secs();
        assert_eq!(a.observe(&newest, at(day + 1)), Outcome::New);
        assert_eq!(a.remembered(), 1);
    }

    #[test]
    fn the_firing_set_is_bounded() {
        let a = FiringAlerts::new();
        for i in 0..FIRING_CAPACITY + 3 {
            let fp = format!("fp{i}");
            // Later ones expire later, so the earliest are dropped first.
            a.observe(&firing(&fp, T0, Some(at(100 + i as u64))), at(0));
        }
        let now = a.firing(at(1));
        assert_eq!(now.len(), FIRING_CAPACITY);
        assert!(!now.iter().any(|f| f.fingerprint == "fp0"));
        assert!(
            now.iter()
                .any(|f| f.fingerprint == format!("fp{}", FIRING_CAPACITY + 2))
        );
    }

    #[test]
    fn firing_lists_what_is_firing_now() {
        let a = FiringAlerts::new();
        a.observe(&firing("fp1", T0, Some(at(240))), at(0));
        let list = a.firing(at(1));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].alertname, "DbWardenIdleSessions");
        assert_eq!(list[0].target, "main");
        assert_eq!(list[0].starts_at, Some(at(0)));
        assert_eq!(list[0].expires_at, Some(at(240)));
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["starts_at"], "2026-08-23T10:02:00.000Z");
    }
}
