//! How a cycle's chosen candidates become batches: in the selection's
//! order, each candidate at most once, at most `batch_size` per batch, and
//! only those the caller admits (not settled, and charged to the budgets).
//! Pure: the caller's `admit` does the charging, so a batch spends exactly
//! what it will act on, and nothing is spent for a batch that is never
//! formed (after an audit failure or a cancellation the loop just stops
//! asking).
//!
//! A batch is what one audit write (one `fsync` for its intents), one
//! statement (PostgreSQL: one guarded statement for every session of the
//! batch) and one more audit write (the outcomes) cover; pacing is waited
//! between batches.

use std::collections::HashSet;
use std::hash::Hash;
use std::num::NonZeroUsize;

/// The default of `[remediation] batch_size`: sessions per guarded statement.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
/// The largest `batch_size` accepted (the largest `max_per_cycle` too).
pub const MAX_BATCH_SIZE: u32 = 1000;

/// The batches of one cycle, taken one at a time with [`Batches::next`].
#[derive(Debug)]
pub struct Batches<'a, C, K> {
    queue: std::slice::Iter<'a, C>,
    size: NonZeroUsize,
    key: fn(&C) -> K,
    /// Keys already taken in this cycle: none is decided on twice.
    seen: HashSet<K>,
}

impl<'a, C, K: Eq + Hash> Batches<'a, C, K> {
    pub fn new(chosen: &'a [C], size: NonZeroUsize, key: fn(&C) -> K) -> Self {
        Batches {
            queue: chosen.iter(),
            size,
            key,
            seen: HashSet::new(),
        }
    }

    /// Whether candidates are left to ask about.
    pub fn is_done(&self) -> bool {
        self.queue.len() == 0
    }

    /// The next batch: candidates in order, each not seen before in this
    /// cycle, that `admit` admits (with what it returns, e.g. when the
    /// budget was spent), until `size` are admitted or none are left. Empty
    /// when none are left. A candidate `admit` refuses is not asked about again.
    pub fn next<T>(&mut self, mut admit: impl FnMut(&'a C) -> Option<T>) -> Vec<(&'a C, T)> {
        let mut batch = Vec::new();
        while batch.len() < self.size.get() {
            let Some(c) = self.queue.next() else {
                break;
            };
            if !self.seen.insert((self.key)(c)) {
                continue;
            }
            if let Some(t) = admit(c) {
                batch.push((c, t));
            }
        }
        batch
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
