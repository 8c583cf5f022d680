//! Action budgets: at most `max` actions in any sliding `window`. Pure: the
//! caller passes the time. Rebuilt at start-up from the audit trail, so a
//! restart does not hand out a fresh budget.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Budget {
    max: u32,
    window_ms: u64,
    /// Times (ms on the caller's clock) of the actions still inside the window, oldest first.
    spent: VecDeque<u64>,
}

impl Budget {
    pub fn new(max: u32, window: Duration) -> Self {
        Budget {
            max,
            window_ms: window.as_millis() as u64,
            spent: VecDeque::new(),
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while self
            .spent
            .front()
            .is_some_and(|&t| t + self.window_ms <= now_ms)
        {
            self.spent.pop_front();
        }
    }

    /// Actions still allowed now.
    pub fn remaining(&mut self, now_ms: u64) -> u32 {
        self.expire(now_ms);
        self.max.saturating_sub(self.spent.len() as u32)
    }

    /// Spends one action if the budget allows it; returns whether it did.
    pub fn try_spend(&mut self, now_ms: u64) -> bool {
        if self.remaining(now_ms) == 0 {
            return false;
        }
        self.spent.push_back(now_ms);
        true
    }

    /// Records an action taken at `at_ms` (e.g. read back from the audit trail).
    pub fn record(&mut self, at_ms: u64) {
        let pos = self
            .spent
            .iter()
            .position(|&t| t > at_ms)
            .unwrap_or(self.spent.len());
        self.spent.insert(pos, at_ms);
    }

    /// Gives back an action spent at `at_ms` that turned out not to send
    /// anything (the session had changed, or the server refused).
    pub fn refund(&mut self, at_ms: u64) {
        if let Some(pos) = self.spent.iter().rposition(|&t| t == at_ms) {
            self.spent.remove(pos);
        }
    }

    /// When the next action will be allowed, if the budget is exhausted now.
    pub fn next_allowed_ms(&mut self, now_ms: u64) -> Option<u64> {
        if self.remaining(now_ms) > 0 {
            return None;
        }
        let idx = self.spent.len() - self.max as usize;
        self.spent.get(idx).map(|t| t + self.window_ms)
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Changes the limit and the window in place (a reconfiguration),
    /// keeping the actions spent: a smaller limit or a shorter window
    /// allows less at once; a longer window counts the actions the old one
    /// still held (those it had already let go of stay forgotten).
    pub fn resize(&mut self, max: u32, window: Duration) {
        self.max = max;
        self.window_ms = window.as_millis() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spends_until_exhausted_then_refills_with_the_window() {
        let mut b = Budget::new(2, Duration::from_secs(10));
        assert!(b.try_spend(0));
        assert!(b.try_spend(1_000));
        assert!(!b.try_spend(2_000));
        assert_eq!(b.next_allowed_ms(2_000), Some(10_000));
        assert!(!b.try_spend(9_999));
        assert!(b.try_spend(10_000));
        assert_eq!(b.remaining(10_000), 0);
        assert_eq!(b.remaining(11_000), 1);
    }

    #[test]
    fn a_refund_gives_the_action_back() {
        let mut b = Budget::new(1, Duration::from_secs(10));
        assert!(b.try_spend(5));
        assert!(!b.try_spend(6));
        b.refund(5);
        assert!(b.try_spend(6));
        b.refund(999); // nothing spent then: no effect
        assert_eq!(b.remaining(7), 0);
    }

    #[test]
    fn zero_budget_never_allows() {
        let mut b = Budget::new(0, Duration::from_secs(1));
        assert!(!b.try_spend(0));
        assert!(!b.try_spend(1_000_000));
    }

    #[test]
    fn a_resize_keeps_the_actions_spent() {
        let mut b = Budget::new(2, Duration::from_secs(10));
        assert!(b.try_spend(0));
        assert!(b.try_spend(1_000));
        b.resize(3, Duration::from_secs(10));
        assert_eq!(b.remaining(2_000), 1, "two of three spent");
        b.resize(1, Duration::from_secs(10));
        assert_eq!(b.remaining(2_000), 0);
        assert!(!b.try_spend(2_000));
        assert_eq!(b.next_allowed_ms(2_000), Some(11_000));
        b.resize(5, Duration::from_secs(1));
        assert_eq!(b.remaining(2_000), 5, "both left the one-second window");
    }

    proptest! {
        /// Whatever the request times, no window ever holds more than `max` actions.
        #[test]
        fn never_exceeds_max_in_any_window(
            max in 0u32..6,
            window_ms in 1u64..5_000,
            mut times in proptest::collection::vec(0u64..20_000, 0..200),
        ) {
            times.sort();
            let mut b = Budget::new(max, Duration::from_millis(window_ms));
            let mut granted = Vec::new();
            for t in times {
                if b.try_spend(t) {
                    granted.push(t);
                }
            }
            for (i, &start) in granted.iter().enumerate() {
                let in_window = granted[i..].iter().take_while(|&&t| t < start + window_ms).count();
                prop_assert!(in_window as u32 <= max, "{in_window} actions within {window_ms} ms from {start}");
            }
        }

        /// A request is refused only when the window is really full.
        #[test]
        fn refuses_only_when_full(
            max in 1u32..6,
            window_ms in 1u64..5_000,
            mut times in proptest::collection::vec(0u64..20_000, 0..200),
        ) {
            times.sort();
            let mut b = Budget::new(max, Duration::from_millis(window_ms));
            let mut granted: Vec<u64> = Vec::new();
            for t in times {
                let live = granted.iter().filter(|&&g| g + window_ms > t).count() as u32;
                let ok = b.try_spend(t);
                prop_assert_eq!(ok, live < max);
                if ok { granted.push(t); }
            }
        }

        /// Right after a resize, the budget counts exactly the actions both
        /// windows hold: what the old one still held and the new one covers.
        #[test]
        fn a_resize_counts_what_both_windows_hold(
            max in 0u32..6,
            window_ms in 1u64..5_000,
            new_max in 0u32..6,
            new_window_ms in 1u64..5_000,
            mut times in proptest::collection::vec(0u64..20_000, 0..200),
            after in 0u64..5_000,
        ) {
            times.sort();
            let mut b = Budget::new(max, Duration::from_millis(window_ms));
            let granted: Vec<u64> = times.iter().copied().filter(|&t| b.try_spend(t)).collect();
            let now = times.last().copied().unwrap_or(0) + after;
            b.remaining(now);
            b.resize(new_max, Duration::from_millis(new_window_ms));
            let both = window_ms.min(new_window_ms);
            let held = granted.iter().filter(|&&g| g + both > now).count() as u32;
            prop_assert_eq!(b.remaining(now), new_max.saturating_sub(held));
        }

        /// Across a resize, a request is refused exactly when the window in
        /// force is full, counting what the old window held at the resize:
        /// the new limit is never exceeded.
        #[test]
        fn refuses_only_when_full_across_a_resize(
            max in 0u32..6,
            window_ms in 1u64..5_000,
            new_max in 0u32..6,
            new_window_ms in 1u64..5_000,
            mut times in proptest::collection::vec(0u64..20_000, 1..200),
            resize_at in 0usize..200,
        ) {
            times.sort();
            let resize_at = resize_at.min(times.len() - 1);
            let mut b = Budget::new(max, Duration::from_millis(window_ms));
            let mut held: Vec<u64> = Vec::new();
            for (i, &t) in times.iter().enumerate() {
                if i == resize_at {
                    b.remaining(t);
                    held.retain(|&g| g + window_ms > t);
                    b.resize(new_max, Duration::from_millis(new_window_ms));
                }
                let (limit, window) = if i < resize_at { (max, window_ms) } else { (new_max, new_window_ms) };
                let live = held.iter().filter(|&&g| g + window > t).count() as u32;
                let ok = b.try_spend(t);
                prop_assert_eq!(ok, live < limit, "at {} ({} live, limit {})", t, live, limit);
                if ok { held.push(t); }
            }
        }
    }
}
