//! When each target polls. Every target keeps its own grid, `phase + k ·
//! interval` counted from the Unix epoch, with a phase derived from its
//! name: a thousand targets with one interval poll evenly spread over it
//! instead of all at one instant, and the phase stays the same across
//! restarts, reloads and replicas. Pure: the caller reads the clocks.

use std::time::Duration;

/// FNV-1a, 64 bits: a hash that is the same in every build and release
/// (std's `DefaultHasher` promises neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where in each interval `target` polls.
pub fn phase(target: &str, interval: Duration) -> Duration {
    let n = interval.as_nanos();
    if n == 0 {
        return Duration::ZERO;
    }
    // Below 2^64 ns (584 years): the remainder fits.
    Duration::from_nanos((u128::from(fnv1a(target.as_bytes())) % n) as u64)
}

/// How long after a poll that started at `started` (time since the Unix
/// epoch) the next one starts: at the first point of the target's grid at
/// least half an interval after `started`. Once on its grid, a target polls
/// exactly every `interval`; the first poll after start (or after a poll
/// woken early) moves it onto the grid, never sooner than half an interval.
pub fn next_delay(started: Duration, interval: Duration, phase: Duration) -> Duration {
    let n = interval.as_nanos();
    if n == 0 {
        return Duration::ZERO;
    }
    let earliest = started.as_nanos() + n / 2;
    let p = phase.as_nanos() % n;
    // The smallest p + k·n ≥ earliest.
    let k = earliest.saturating_sub(p).div_ceil(n);
    let next = p + k * n;
    Duration::from_nanos((next - started.as_nanos()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn phases_are_stable_and_spread() {
        // Stable: the same name gives the same phase, whatever the process.
        assert_eq!(phase("main", MS(10_000)), phase("main", MS(10_000)));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        // Spread: 1,000 targets over 10 buckets of a 10 s interval put
        // between 50 and 150 in each (even would be 100).
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let p = phase(&format!("db-{i}"), MS(10_000));
            assert!(p < MS(10_000));
            buckets[(p.as_millis() / 1000) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (50..=150).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn on_the_grid_polls_come_every_interval() {
        let (interval, p) = (MS(5_000), MS(1_234));
        // A poll started on the grid: the next one is one interval later.
        let on = MS(1_700_000_000_000 + 1_234); // 1.7e12 is a multiple of 5,000
        assert_eq!(next_delay(on, interval, p), interval);
        // Started 100 ms after a grid point: the next grid point is 4.9 s away.
        assert_eq!(next_delay(on + MS(100), interval, p), MS(4_900));
        // Started 1 s before a grid point: not that one (too soon), the next.
        assert_eq!(next_delay(on - MS(1_000), interval, p), MS(6_000));
        assert_eq!(next_delay(on, Duration::ZERO, p), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn the_next_poll_is_on_the_grid_and_neither_too_soon_nor_too_late(
            started_ms in 0u64..4_000_000_000_000,
            interval_ms in 1u64..3_600_000,
            name in "[a-z0-9-]{1,20}",
        ) {
            let interval = MS(interval_ms);
            let p = phase(&name, interval);
            let started = MS(started_ms);
            let d = next_delay(started, interval, p);
            prop_assert!(d.as_nanos() * 2 >= interval.as_nanos(), "{d:?} sooner than half of {interval:?}");
            prop_assert!(d.as_nanos() * 2 < interval.as_nanos() * 3, "{d:?} later than 1.5 × {interval:?}");
            prop_assert_eq!((started + d).as_nanos() % interval.as_nanos(), p.as_nanos());
        }
    }
}
