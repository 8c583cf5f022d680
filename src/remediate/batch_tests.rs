//! The batching of a cycle's candidates: order kept, none twice, batches
//! full but the last, only what the budgets admit; and, over the real
//! selection, `max_per_cycle` still bounds what the batches act on.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::remediate::budget::Budget;
use crate::remediate::policy::tests::{failing, gates, policy_strategy, sessions, snapshot_of};
use crate::remediate::policy::{self, Candidate, Victims};

fn size(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

/// Every batch of `chosen`, admitting what `admit` admits.
fn all<'a, C, K: Eq + Hash>(
    chosen: &'a [C],
    n: usize,
    key: fn(&C) -> K,
    mut admit: impl FnMut(&'a C) -> bool,
) -> Vec<Vec<&'a C>> {
    let mut batches = Batches::new(chosen, size(n), key);
    let mut out = Vec::new();
    loop {
        let b = batches.next(|c| admit(c).then_some(()));
        if b.is_empty() {
            assert!(batches.is_done(), "an empty batch only at the end");
            return out;
        }
        out.push(b.into_iter().map(|(c, ())| c).collect());
    }
}

#[test]
fn batches_are_full_but_the_last_and_keep_the_order() {
    let chosen: Vec<u32> = (1..=7).collect();
    let b = all(&chosen, 3, |c| *c, |_| true);
    assert_eq!(b, [vec![&1, &2, &3], vec![&4, &5, &6], vec![&7]]);
    assert!(all(&[] as &[u32], 3, |c| *c, |_| true).is_empty());
}

#[test]
fn a_refused_candidate_makes_room_for_the_next_and_is_not_asked_again() {
    let chosen = [1u32, 2, 3, 4, 2, 5];
    let mut asked = Vec::new();
    let b = all(
        &chosen,
        2,
        |c| *c,
        |c| {
            asked.push(*c);
            *c != 2
        },
    );
    assert_eq!(b, [vec![&1, &3], vec![&4, &5]]);
    assert_eq!(asked, [1, 2, 3, 4, 5], "2 is asked about once");
}

#[test]
fn nothing_is_admitted_beyond_the_batch_being_formed() {
    let chosen: Vec<u32> = (1..=5).collect();
    let mut batches = Batches::new(&chosen, size(2), |c| *c);
    let mut admitted = 0;
    let first = batches.next(|_| {
        admitted += 1;
        Some(())
    });
    assert_eq!(first.len(), 2);
    assert_eq!(admitted, 2, "the next batch's budget is not spent yet");
    assert!(!batches.is_done());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Over any candidate list (duplicates included): order kept, none
    /// twice, batches of `n` but the last, exactly the admitted ones.
    #[test]
    fn batching_keeps_order_and_takes_each_once(
        chosen in prop::collection::vec(0u32..30, 0..80),
        n in 1usize..10,
        refused in prop::collection::hash_set(0u32..30, 0..10),
    ) {
        let b = all(&chosen, n, |c| *c, |c| !refused.contains(c));
        let mut seen = HashSet::new();
        let expected: Vec<u32> = chosen.iter().copied()
            .filter(|c| seen.insert(*c) && !refused.contains(c))
            .collect();
        let flat: Vec<u32> = b.iter().flatten().map(|c| **c).collect();
        prop_assert_eq!(&flat, &expected);
        for (i, batch) in b.iter().enumerate() {
            prop_assert!(!batch.is_empty());
            if i + 1 < b.len() {
                prop_assert_eq!(batch.len(), n);
            } else {
                prop_assert!(batch.len() <= n);
            }
        }
    }

    /// The real selection, then the batches under a budget and a settled
    /// set: each policy acts on at most its `max_per_cycle`, the budget is
    /// never overspent and spent only for what the batches act on, no
    /// session twice, in the selection's order.
    #[test]
    fn batches_of_a_selection_respect_caps_budgets_and_order(
        snap in sessions().prop_map(snapshot_of),
        ps in prop::collection::vec(policy_strategy(), 1..4),
        f in failing(),
        n in 1usize..8,
        budget in 0u32..12,
        settled in prop::collection::hash_set(100i32..140, 0..6),
    ) {
        let ps: Vec<_> = ps.into_iter().enumerate().map(|(i, mut p)| {
            p.name = format!("p{i}");
            p
        }).collect();
        let (_, chosen) = policy::select(&ps, "db1", &snap, gates(&f));
        let mut b = Budget::new(budget, Duration::from_secs(600));
        let batches = all(&chosen, n, |c: &Candidate| c.facts.pid, |c| {
            !settled.contains(&c.facts.pid) && b.try_spend(1_000)
        });
        let flat: Vec<&Candidate> = batches.iter().flatten().copied().collect();
        let pids: Vec<i32> = flat.iter().map(|c| c.facts.pid).collect();
        let distinct: HashSet<i32> = pids.iter().copied().collect();
        prop_assert_eq!(distinct.len(), pids.len(), "a session twice: {:?}", pids);
        let expected: Vec<i32> = chosen.iter().map(|c| c.facts.pid)
            .filter(|p| !settled.contains(p))
            .take(budget as usize)
            .collect();
        prop_assert_eq!(&pids, &expected);
        prop_assert_eq!(b.remaining(1_000), budget - pids.len() as u32, "spent exactly what is acted on");
        let mut per_policy: HashMap<&str, usize> = HashMap::new();
        for c in &flat {
            *per_policy.entry(c.policy.as_str()).or_default() += 1;
        }
        for p in &ps {
            let cap = match p.victims {
                Victims::All => p.max_per_cycle as usize,
                Victims::Oldest => 1,
            };
            prop_assert!(per_policy.get(p.name.as_str()).copied().unwrap_or(0) <= cap);
        }
        for batch in &batches {
            prop_assert!(!batch.is_empty() && batch.len() <= n);
        }
    }
}
