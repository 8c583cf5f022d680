//! Rebuild a standby that cannot catch up: the pure detection of a stalled
//! replay, which `[kubernetes.eviction]`'s `rebuild_after` turns into an
//! eviction reason (see [`super::evict`]).
//!
//! A standby is *stalled* when its replay position has not moved for
//! `rebuild_after` while there was WAL to replay and the primary's position
//! advanced over that time: its lag grows. Being behind is not enough:
//!
//! - **Catching up**: the replay position moves, even slowly, even far
//!   behind (a big backlog, `recovery_min_apply_delay`): the clock restarts
//!   at every move.
//! - **Idle primary**: nothing to replay (the upstream position is not
//!   ahead of replay): not stalled, however long replay stands still.
//! - **Stuck but the primary idle since**: WAL waits, replay stands still,
//!   but the primary wrote nothing more since the stall began: the lag does
//!   not grow, so it is not evidence enough.
//!
//! The upstream position is the primary's `pg_current_wal_lsn()` when a
//! PostgreSQL target with the same system identifier reports one (and only
//! one does), and never less than what the standby itself received
//! (`pg_last_wal_receive_lsn()`), so a standby whose primary is not a target
//! is judged on the WAL it receives: a receiver that receives nothing is
//! then not evidence that the primary advances.
//!
//! [`ReplayTracker`] folds each poll's [`WalReading`]s in (each reading
//! once); [`ReplayTracker::stall`] says, for a time and a `rebuild_after`,
//! whether a standby is stalled, with the figures that justify it
//! ([`ReplayStall`]). Time is an argument; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// What one successful poll of a PostgreSQL target says of its WAL.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WalReading {
    /// When the poll that read it succeeded (ms since the epoch).
    pub at_ms: u64,
    /// Whether the target's latest poll succeeded: a reading of a target
    /// that is down now is history, not evidence of a stall.
    pub up: bool,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Pairs a standby with its primary.
    pub system_id: Option<u64>,
    /// A primary's `pg_current_wal_lsn()` (bytes).
    pub wal_lsn: Option<u64>,
    /// A standby's `pg_last_wal_receive_lsn()` (bytes).
    pub receive_lsn: Option<u64>,
    /// A standby's `pg_last_wal_replay_lsn()` (bytes).
    pub replay_lsn: Option<u64>,
    /// A standby's replay delay (the `replication_lag` check's measure, s).
    pub lag_seconds: Option<f64>,
}

/// The figures that justify rebuilding a standby.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ReplayStall {
    /// The replay position that has not moved (bytes from 0/0).
    pub replay_lsn: u64,
    /// Since when it has not moved with WAL waiting (ms since the epoch).
    pub since_ms: u64,
    pub stalled_for_ms: u64,
    /// The upstream position when the stall began, and now.
    pub upstream_lsn_then: u64,
    pub upstream_lsn_now: u64,
    /// `primary <target>` or `received WAL`.
    pub upstream: String,
    /// How far the upstream advanced over the stall (bytes).
    pub advanced_bytes: u64,
    /// Upstream now minus replay (bytes).
    pub lag_bytes: u64,
    /// The standby's replay delay at the latest reading (s).
    pub lag_seconds: Option<f64>,
}

/// `0/3000060`, PostgreSQL's way of writing an LSN.
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn fmt_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024 * 1024 {
        format!("{:.1} MiB", b as f64 / MIB)
    } else {
        format!("{b} bytes")
    }
}

impl ReplayStall {
    /// One sentence with every figure, for the audit trail and the logs.
    pub fn describe(&self) -> String {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.since_ms);
        format!(
            "replay LSN {} unchanged since {} ({}) while the {} advanced {} ({} -> {}); lag {}{}",
            fmt_lsn(self.replay_lsn),
            humantime::format_rfc3339_seconds(since),
            humantime::format_duration(std::time::Duration::from_secs(self.stalled_for_ms / 1000)),
            self.upstream,
            fmt_bytes(self.advanced_bytes),
            fmt_lsn(self.upstream_lsn_then),
            fmt_lsn(self.upstream_lsn_now),
            fmt_bytes(self.lag_bytes),
            self.lag_seconds
                .map(|s| format!(", {}", crate::evaluate::fmt_secs(s)))
                .unwrap_or_default(),
        )
    }
}

/// One standby's replay as followed across readings.
#[derive(Debug, Clone, PartialEq)]
struct Track {
    replay_lsn: u64,
    /// The reading folded in last.
    last_at_ms: u64,
    up: bool,
    lag_seconds: Option<f64>,
    /// The upstream position at the latest reading and its source.
    upstream_now: u64,
    upstream: String,
    /// Replay stands still at `replay_lsn` with WAL to replay: since when,
    /// and the upstream position then. `None`: nothing to replay.
    behind: Option<(u64, u64)>,
}

/// Follows each standby's replay position across the targets' polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayTracker {
    tracks: BTreeMap<String, Track>,
}

/// The primary of `standby`: the one target not in recovery with the same
/// system identifier (none, or two, after a split: `None`).
fn primary_of<'a>(
    standby: &WalReading,
    readings: &'a BTreeMap<String, WalReading>,
) -> Option<(&'a str, u64)> {
    let id = standby.system_id?;
    let mut found = readings
        .iter()
        .filter(|(_, r)| !r.in_recovery && r.system_id == Some(id))
        .filter_map(|(t, r)| r.wal_lsn.map(|l| (t.as_str(), l)));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

impl ReplayTracker {
    /// Folds in the targets' latest readings. A target absent from
    /// `readings`, a primary, or a standby without a replay position is
    /// forgotten; a reading already folded in (same `at_ms`) changes
    /// nothing but `up`.
    pub fn observe(&mut self, readings: &BTreeMap<String, WalReading>) {
        self.tracks.retain(|t, _| {
            readings
                .get(t)
                .is_some_and(|r| r.in_recovery && r.replay_lsn.is_some())
        });
        for (target, r) in readings {
            let (true, Some(replay)) = (r.in_recovery, r.replay_lsn) else {
                continue;
            };
            let primary = primary_of(r, readings);
            let received = r.receive_lsn.unwrap_or(0);
            // Both are positions in the same WAL stream: the larger counts,
            // whichever poll came last (the primary's may be older than
            // what the standby has received since).
            let (upstream_now, upstream) = match primary {
                Some((p, lsn)) => (lsn.max(received), format!("primary (target {p})")),
                None => (received, "received WAL".to_string()),
            };
            let ahead = upstream_now > replay;
            match self.tracks.get_mut(target) {
                Some(t) if t.last_at_ms == r.at_ms => t.up = r.up,
                Some(t) if t.replay_lsn == replay && r.at_ms > t.last_at_ms => {
                    t.last_at_ms = r.at_ms;
                    t.up = r.up;
                    t.lag_seconds = r.lag_seconds;
                    t.upstream_now = upstream_now;
                    t.upstream = upstream;
                    if !ahead {
                        t.behind = None;
                    } else if t.behind.is_none() {
                        t.behind = Some((r.at_ms, upstream_now));
                    }
                }
                // Replay moved (or a reading older than the last: start over).
                _ => {
                    self.tracks.insert(
                        target.clone(),
                        Track {
                            replay_lsn: replay,
                            last_at_ms: r.at_ms,
                            up: r.up,
                            lag_seconds: r.lag_seconds,
                            upstream_now,
                            upstream,
                            behind: ahead.then_some((r.at_ms, upstream_now)),
                        },
                    );
                }
            }
        }
    }

    /// How long `target`'s replay has stood still with WAL to replay (ms),
    /// as of its latest reading; 0 when it moves or has nothing to replay.
    pub fn standing_still_ms(&self, target: &str) -> u64 {
        self.tracks
            .get(target)
            .and_then(|t| {
                t.behind
                    .map(|(since, _)| t.last_at_ms.saturating_sub(since))
            })
            .unwrap_or(0)
    }

    /// The standbys followed now.
    pub fn standbys(&self) -> BTreeSet<String> {
        self.tracks.keys().cloned().collect()
    }

    /// Whether `target` is stalled for at least `rebuild_after_ms` as of its
    /// latest reading: replay unchanged with WAL to replay, the upstream
    /// advanced over that time, and the target up.
    pub fn stall(&self, target: &str, rebuild_after_ms: u64) -> Option<ReplayStall> {
        let t = self.tracks.get(target)?;
        let (since, then) = t.behind?;
        let stalled_for_ms = t.last_at_ms.saturating_sub(since);
        let advanced = t.upstream_now.saturating_sub(then);
        (t.up && stalled_for_ms >= rebuild_after_ms && advanced > 0).then(|| ReplayStall {
            replay_lsn: t.replay_lsn,
            since_ms: since,
            stalled_for_ms,
            upstream_lsn_then: then,
            upstream_lsn_now: t.upstream_now,
            upstream: t.upstream.clone(),
            advanced_bytes: advanced,
            lag_bytes: t.upstream_now.saturating_sub(t.replay_lsn),
            lag_seconds: t.lag_seconds,
        })
    }

    /// Every stalled standby.
    pub fn stalls(&self, rebuild_after_ms: u64) -> BTreeMap<String, ReplayStall> {
        self.tracks
            .keys()
            .filter_map(|t| self.stall(t, rebuild_after_ms).map(|s| (t.clone(), s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;
    const MIN: u64 = 60 * S;

    fn standby(at_ms: u64, receive: u64, replay: u64) -> WalReading {
        WalReading {
            at_ms,
            up: true,
            in_recovery: true,
            system_id: Some(7),
            wal_lsn: None,
            receive_lsn: Some(receive),
            replay_lsn: Some(replay),
            lag_seconds: Some(1.0),
        }
    }

    fn primary(at_ms: u64, lsn: u64) -> WalReading {
        WalReading {
            at_ms,
            up: true,
            in_recovery: false,
            system_id: Some(7),
            wal_lsn: Some(lsn),
            receive_lsn: None,
            replay_lsn: None,
            lag_seconds: None,
        }
    }

    fn feed(rows: &[(u64, u64, u64, u64)]) -> ReplayTracker {
        // (time, primary lsn, received, replayed)
        let mut t = ReplayTracker::default();
        for &(at, p, recv, replay) in rows {
            let r: BTreeMap<String, WalReading> = [
                ("p".to_string(), primary(at, p)),
                ("s".to_string(), standby(at, recv, replay)),
            ]
            .into();
            t.observe(&r);
        }
        t
    }

    #[test]
    fn paused_replay_behind_a_writing_primary_is_stalled() {
        let t = feed(&[
            (0, 100, 100, 100),
            (MIN, 200, 200, 100),
            (5 * MIN, 900, 900, 100),
            (11 * MIN, 1500, 1500, 100),
        ]);
        let s = t.stall("s", 10 * MIN).expect("stalled");
        assert_eq!(s.since_ms, MIN, "from the first reading with WAL waiting");
        assert_eq!(s.stalled_for_ms, 10 * MIN);
        assert_eq!(
            (s.upstream_lsn_then, s.upstream_lsn_now, s.advanced_bytes),
            (200, 1500, 1300)
        );
        assert_eq!(s.lag_bytes, 1400);
        assert_eq!(s.upstream, "primary (target p)");
        let d = s.describe();
        assert!(
            d.contains("replay LSN 0/64 unchanged since")
                && d.contains("(10m)")
                && d.contains("advanced 1300 bytes (0/C8 -> 0/5DC)"),
            "{d}"
        );
        assert!(t.stall("s", 11 * MIN).is_none(), "not yet for 11 minutes");
        assert_eq!(t.standing_still_ms("s"), 10 * MIN);
    }

    /// `stalls` lists exactly the stalled standbys, each with its own figures.
    #[test]
    fn stalls_lists_the_stalled_standbys_only() {
        let mut t = ReplayTracker::default();
        // s1 paused behind the writing primary, s2 replaying as it comes.
        for (at, p) in [(0, 100), (MIN, 200), (5 * MIN, 900), (11 * MIN, 1500)] {
            let r: BTreeMap<String, WalReading> = [
                ("p".to_string(), primary(at, p)),
                ("s1".to_string(), standby(at, p, 100)),
                ("s2".to_string(), standby(at, p, p)),
            ]
            .into();
            t.observe(&r);
        }
        let stalls = t.stalls(10 * MIN);
        assert_eq!(stalls.keys().collect::<Vec<_>>(), ["s1"]);
        assert_eq!(stalls["s1"], t.stall("s1", 10 * MIN).unwrap());
        assert!(t.stalls(11 * MIN).is_empty());
    }

    #[test]
    fn an_older_primary_reading_does_not_restart_the_clock() {
        // The standby received more than the primary's last poll showed,
        // in every other round: the larger position counts, the stall holds.
        let t = feed(&[
            (0, 100, 100, 100),
            (MIN, 200, 250, 100),
            (5 * MIN, 900, 800, 100),
            (11 * MIN, 1400, 1500, 100),
        ]);
        let s = t.stall("s", 10 * MIN).expect("stalled");
        assert_eq!(s.since_ms, MIN);
        assert_eq!((s.upstream_lsn_then, s.upstream_lsn_now), (250, 1500));
        assert_eq!(s.upstream, "primary (target p)");
    }

    #[test]
    fn catching_up_idle_and_quiet_primaries_are_not_stalled() {
        // Replay moves, however slowly: the clock restarts.
        let t = feed(&[
            (0, 1000, 1000, 100),
            (10 * MIN, 2000, 2000, 101),
            (20 * MIN, 3000, 3000, 102),
        ]);
        assert!(t.stall("s", 5 * MIN).is_none());
        // Nothing to replay: an idle primary.
        let t = feed(&[(0, 100, 100, 100), (30 * MIN, 100, 100, 100)]);
        assert!(t.stall("s", MIN).is_none());
        assert_eq!(t.standing_still_ms("s"), 0);
        // WAL waits, but the primary wrote nothing since: the lag does not grow.
        let t = feed(&[(0, 500, 500, 100), (30 * MIN, 500, 500, 100)]);
        assert!(t.stall("s", MIN).is_none());
        assert_eq!(t.standing_still_ms("s"), 30 * MIN);
    }

    #[test]
    fn a_broken_receiver_is_judged_on_the_primary_and_a_down_standby_never() {
        // Nothing received, but the paired primary advanced.
        let t = feed(&[(0, 200, 100, 100), (20 * MIN, 900, 100, 100)]);
        let s = t.stall("s", 10 * MIN).expect("stalled");
        assert_eq!(s.advanced_bytes, 700);
        // Without a paired primary (another system): received WAL only, flat.
        let mut t = ReplayTracker::default();
        for (at, p) in [(0, 200), (20 * MIN, 900)] {
            let mut other = primary(at, p);
            other.system_id = Some(8);
            t.observe(&[("p".into(), other), ("s".into(), standby(at, 100, 100))].into());
        }
        assert!(t.stall("s", MIN).is_none());
        // A standby whose latest poll failed is not judged.
        let mut t = feed(&[(0, 200, 200, 100), (20 * MIN, 900, 900, 100)]);
        let mut down = standby(20 * MIN, 900, 100);
        down.up = false;
        t.observe(&[("p".into(), primary(20 * MIN, 900)), ("s".into(), down)].into());
        assert!(t.stall("s", MIN).is_none());
    }

    #[test]
    fn a_primary_is_never_followed() {
        let mut t = feed(&[(0, 200, 200, 100), (20 * MIN, 900, 900, 100)]);
        assert!(t.stall("s", MIN).is_some());
        // Promoted: no longer in recovery, forgotten.
        let mut promoted = primary(21 * MIN, 950);
        promoted.system_id = Some(7);
        t.observe(&[("s".into(), promoted)].into());
        assert!(t.stall("s", MIN).is_none() && t.standbys().is_empty());
    }

    proptest! {
        /// Whatever the sequence: a stall is reported only when replay did
        /// not move over the whole stall, the upstream advanced over it and
        /// was ahead of replay throughout.
        #[test]
        fn a_stall_is_always_justified(
            steps in proptest::collection::vec((0u64..3, 0u64..400, 0u64..3, 1u64..5), 1..40),
            after_min in 1u64..20,
        ) {
            // Each step: replay advance (0 = stands still), primary advance,
            // how far the receiver trails the primary, minutes elapsed.
            let (mut at, mut p, mut replay) = (0u64, 1000u64, 1000u64);
            let mut t = ReplayTracker::default();
            let mut history = Vec::new();
            for (dr, dp, trail, dt) in steps {
                at += dt * MIN;
                p += dp;
                replay = (replay + dr * 50).min(p);
                let recv = p.saturating_sub(trail * 10).max(replay);
                history.push((at, p, replay));
                t.observe(&[("p".into(), primary(at, p)), ("s".into(), standby(at, recv, replay))].into());
                if let Some(s) = t.stall("s", after_min * MIN) {
                    prop_assert!(s.stalled_for_ms >= after_min * MIN);
                    prop_assert!(s.advanced_bytes > 0);
                    prop_assert_eq!(s.replay_lsn, replay);
                    for &(h_at, h_p, h_replay) in history.iter().filter(|h| h.0 >= s.since_ms) {
                        prop_assert_eq!(h_replay, s.replay_lsn, "replay moved during the stall at {}", h_at);
                        prop_assert!(h_p > h_replay, "nothing to replay at {}", h_at);
                    }
                    prop_assert!(s.upstream_lsn_now > s.upstream_lsn_then);
                }
            }
        }

        /// Replay that advances at every reading is never stalled.
        #[test]
        fn advancing_replay_is_never_stalled(
            steps in proptest::collection::vec((1u64..100, 0u64..400, 1u64..30), 1..40),
        ) {
            let (mut at, mut p, mut replay) = (0u64, 1000u64, 1000u64);
            let mut t = ReplayTracker::default();
            for (dr, dp, dt) in steps {
                at += dt * MIN;
                p += dp + dr;
                replay += dr;
                t.observe(&[("p".into(), primary(at, p)), ("s".into(), standby(at, p, replay))].into());
                prop_assert!(t.stall("s", MIN).is_none());
            }
        }
    }
}
