//! Shared copies of the strings every poll reads again: a session's user,
//! database, application, address, backend type, wait event type and query
//! text. A server's sessions repeat them (a connection pool's sessions share
//! all but the query, and its queries are a few statements), one poll after
//! another repeats them, and the targets of a fleet (shards of one
//! application) repeat them between servers. Each distinct text is kept once
//! in the process, as an `Arc<str>` the snapshots share, instead of one
//! allocation per session per poll.
//!
//! The pool holds every text some snapshot still holds: a text no snapshot
//! holds any more is dropped at the next sweep, which runs when the pool
//! has doubled since the last one (so its cost per text is constant, and
//! the pool is at most about twice the live texts). Hashing is std's
//! (SipHash, keyed per process): query texts come from database users.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// A pool of shared texts.
#[derive(Debug, Default)]
pub struct Pool {
    texts: HashSet<Arc<str>>,
    /// The size after the last sweep.
    kept: usize,
}

/// Below this many texts the pool is never swept.
const SWEEP_FLOOR: usize = 1024;

impl Pool {
    /// The shared copy of `text`.
    pub fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(t) = self.texts.get(text) {
            return t.clone();
        }
        if self.texts.len() >= SWEEP_FLOOR.max(2 * self.kept) {
            self.sweep();
        }
        let t: Arc<str> = Arc::from(text);
        self.texts.insert(t.clone());
        t
    }

    /// Drops the texts only the pool holds.
    pub fn sweep(&mut self) {
        self.texts.retain(|t| Arc::strong_count(t) > 1);
        self.kept = self.texts.len();
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Mutex::default);

/// The process's shared copy of `text`.
pub fn intern(text: &str) -> Arc<str> {
    if text.is_empty() {
        return empty();
    }
    POOL.lock().unwrap_or_else(|e| e.into_inner()).intern(text)
}

/// The empty text (no allocation per use).
pub fn empty() -> Arc<str> {
    static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_text_while_held() {
        let mut pool = Pool::default();
        let a = pool.intern("SELECT 1");
        let b = pool.intern(&String::from("SELECT 1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "SELECT 1");
        let c = pool.intern("SELECT 2");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(pool.len(), 2);
        drop((a, b));
        pool.sweep();
        assert_eq!(pool.len(), 1, "a text nobody holds is dropped");
        assert!(
            Arc::ptr_eq(&c, &pool.intern("SELECT 2")),
            "a held one stays"
        );
    }

    #[test]
    fn the_pool_stays_within_twice_the_live_texts() {
        let mut pool = Pool::default();
        let held: Vec<Arc<str>> = (0..100)
            .map(|i| pool.intern(&format!("held {i}")))
            .collect();
        for i in 0..100_000 {
            // Each poll's texts, dropped by the next.
            drop(pool.intern(&format!("passing {i}")));
            assert!(
                pool.len() <= SWEEP_FLOOR.max(2 * held.len()) + 1,
                "{} texts for {} held",
                pool.len(),
                held.len()
            );
        }
        for (i, t) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(t, &pool.intern(&format!("held {i}"))));
        }
    }

    #[test]
    fn the_process_pool_shares_and_the_empty_text_is_one() {
        let a = intern("dbwarden-intern-test");
        let b = intern("dbwarden-intern-test");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&intern(""), &empty()));
    }
}
