//! The model's least connections, written from docs/algorithms.md ("Least
//! connections"), not from `lb_common::choice`.
//!
//! The program draws two random slots (`bpf_get_prandom_u32`), which the
//! model cannot know. It computes instead every target that SOME pair of
//! draws leads to: every slot can be drawn, so the pairs of candidates are
//! every ordered pair of two different members, and (a member, itself)
//! where 16 consecutive slots name it. The program's choice must be one of
//! them, and every one of them is a choice it may make.
use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use super::TargetKey;

/// Slots the second candidate's walk reads at most.
const WALK: usize = 16;

/// What least connections can draw from a table: its members, and those
/// that 16 consecutive slots (wrapping) name, which can be both candidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draws {
    pub members: Vec<Arc<TargetKey>>,
    pub twice: BTreeSet<Arc<TargetKey>>,
}

impl Draws {
    /// The draws of `table` (empty slots name no member: a draw of one
    /// fails, which only a table with no member has).
    pub fn of(table: &[Option<Arc<TargetKey>>]) -> Draws {
        let len = table.len();
        // A table's slots share its members' `Arc`s: compared by address
        // first, by value only when the addresses differ.
        let same = |a: &Arc<TargetKey>, b: &Arc<TargetKey>| Arc::ptr_eq(a, b) || a == b;
        let mut seen = HashSet::new();
        let mut members = Vec::new();
        let mut twice = BTreeSet::new();
        for start in 0..len {
            let Some(first) = &table[start] else { continue };
            if seen.insert(Arc::as_ptr(first)) {
                members.push(Arc::clone(first));
            }
            if twice.contains(first) {
                continue;
            }
            let slot = |i: usize| table[(start + i) % len].as_ref();
            if (1..WALK).all(|i| slot(i).is_some_and(|t| same(t, first))) {
                twice.insert(Arc::clone(first));
            }
        }
        members.sort();
        members.dedup();
        Draws { members, twice }
    }

    /// Every target some pair of draws leads to (sorted), given each
    /// member's active flows and converted weight (`load`).
    pub fn winners(&self, load: impl Fn(&TargetKey) -> (i64, u32)) -> Vec<TargetKey> {
        let loads: Vec<(i64, u32)> = self.members.iter().map(|m| load(m)).collect();
        let mut out = BTreeSet::new();
        for (i, first) in self.members.iter().enumerate() {
            if self.twice.contains(first) {
                out.insert((**first).clone());
            }
            for (j, second) in self.members.iter().enumerate() {
                if i == j {
                    continue;
                }
                let winner = if second_wins(loads[j], loads[i]) {
                    second
                } else {
                    first
                };
                out.insert((**winner).clone());
            }
        }
        out.into_iter().collect()
    }
}

/// Whether the second candidate (active flows, converted weight) beats the
/// first: strictly fewer active flows per weight, a negative count as 0; a
/// first of weight 0 loses to a second of positive weight.
pub fn second_wins((b, wb): (i64, u32), (a, wa): (i64, u32)) -> bool {
    match (wa, wb) {
        (_, 0) => false,
        (0, _) => true,
        _ => i128::from(b.max(0)) * i128::from(wa) < i128::from(a.max(0)) * i128::from(wb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(last: u8) -> Arc<TargetKey> {
        Arc::new(TargetKey::new("lc", [10, 0, 3, last].into()))
    }

    fn table(lasts: &[u8]) -> Vec<Option<Arc<TargetKey>>> {
        lasts.iter().map(|&l| Some(t(l))).collect()
    }

    fn lasts(targets: Vec<TargetKey>) -> Vec<u8> {
        targets
            .iter()
            .map(|k| match k.ip {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn some_pair_of_draws_picks_each_winner() {
        let draws = Draws::of(&table(&[1, 2, 3, 1, 2]));
        assert!(draws.twice.is_empty());
        let equal = |_: &TargetKey| (0, 100);
        // Equal counts: a tie keeps the first draw, which may be any target.
        assert_eq!(lasts(draws.winners(equal)), [1, 2, 3]);
        // A target with more flows than every other is never picked.
        let loaded = |k: &TargetKey| (if *k == *t(1) { 10 } else { 0 }, 100);
        assert_eq!(lasts(draws.winners(loaded)), [2, 3]);
        // Per weight: 10 flows on weight 100 (0.1 per unit) beat 1 on
        // weight 5 (0.2), which beats 2 on weight 5 (0.4).
        let weighted = |k: &TargetKey| match k.ip.to_string().as_str() {
            "10.0.3.1" => (10, 100),
            "10.0.3.2" => (1, 5),
            _ => (2, 5),
        };
        assert_eq!(lasts(draws.winners(weighted)), [1, 2]);
        // A run of one target as long as the walk: both draws may be it.
        let mut long = vec![1; 16];
        long.push(2);
        let draws = Draws::of(&table(&long));
        assert_eq!(draws.twice.len(), 1);
        assert_eq!(lasts(draws.winners(loaded)), [1, 2]);
        let mut short = vec![1; 15];
        short.push(2);
        assert!(Draws::of(&table(&short)).twice.is_empty());
        assert!(Draws::of(&[None, None]).winners(equal).is_empty());
    }

    #[test]
    fn weights_and_negative_counts() {
        assert!(!second_wins((1, 5), (10, 100)));
        assert!(second_wins((10, 100), (1, 5)));
        assert!(!second_wins((2, 50), (4, 100)), "a tie keeps the first");
        assert!(!second_wins((-5, 100), (0, 100)));
        assert!(second_wins((-5, 100), (1, 100)));
        assert!(!second_wins((0, 0), (1000, 1)));
        assert!(second_wins((1000, 1), (0, 0)));
        assert!(second_wins((i64::MAX, 100), (i64::MAX, 1)), "no overflow");
    }
}
