//! The round-robin order of a group (pure): the table a `round_robin` group
//! hands the data plane, which walks it with one counter shared by all CPUs.
//!
//! The order is nginx's smooth weighted round robin over the targets'
//! converted weights, reduced by their greatest common divisor: each step
//! every target gains its weight in credit, the target with the most credit
//! (the first in identity order on a tie) is next and pays back the sum of
//! the weights. One period holds each target exactly (weight / gcd) times,
//! spread out rather than in bursts: after any number of steps from the start
//! of the period each target's count is within 1 of its weight share (less
//! than 2 in any window of the cycle; tested below).
//!
//! Length: the sum of the reduced weights, at most 100 per target. Past
//! [`MAX_ORDER_LEN`] (possible only with more than 10,000 targets of
//! unequal weight) the weights are scaled down to fit, each kept at least 1.
//! The exact rules, which the tests' reference model implements again:
//! docs/algorithms.md.
use lb_common::MAX_TABLE_SIZE;

use crate::maglev::Member;

/// Longest order: the largest group table the data plane is built for.
pub const MAX_ORDER_LEN: u32 = MAX_TABLE_SIZE;

/// Steps x members the exact order may cost; larger groups take the order
/// by weight class (below).
const EXACT_BUDGET: u64 = 1 << 26;

/// The smooth weighted round-robin order of `members` (target ids; members
/// of weight 0 take no place). Empty when no member has a positive weight.
/// Members take turns in the order of their identity, so the order does not
/// depend on the order of the policy.
pub fn order(members: &[Member]) -> Vec<u32> {
    order_within(members, EXACT_BUDGET)
}

fn order_within(members: &[Member], budget: u64) -> Vec<u32> {
    let mut members: Vec<Member> = members.iter().copied().filter(|m| m.weight > 0).collect();
    members.sort_by_key(|m| m.identity);
    let weights: Vec<u64> = fit(members.iter().map(|m| m.weight as u64).collect());
    let total: u64 = weights.iter().sum();
    if total * members.len() as u64 <= budget {
        return smooth(&weights)
            .into_iter()
            .map(|i| members[i].id)
            .collect();
    }
    // A large group: the smooth order of its weight classes (at most 100
    // distinct converted weights), each class handing its turns to its
    // members in identity order. Every member still gets exactly its weight
    // in places per cycle, spread over the cycle.
    let mut classes: Vec<(u64, Vec<u32>)> = Vec::new();
    for (m, &w) in members.iter().zip(&weights) {
        match classes.iter_mut().find(|(cw, _)| *cw == w) {
            Some((_, ids)) => ids.push(m.id),
            None => classes.push((w, vec![m.id])),
        }
    }
    let class_weights: Vec<u64> = classes
        .iter()
        .map(|(w, ids)| w * ids.len() as u64)
        .collect();
    let mut next = vec![0usize; classes.len()];
    smooth(&class_weights)
        .into_iter()
        .map(|c| {
            let ids = &classes[c].1;
            let id = ids[next[c] % ids.len()];
            next[c] += 1;
            id
        })
        .collect()
}

/// nginx's smooth weighted round robin: one cycle of indices into
/// `weights`, each index `weights[i]` times.
fn smooth(weights: &[u64]) -> Vec<usize> {
    let total: u64 = weights.iter().sum();
    let mut credit = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            credit[i] += w as i64;
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total as i64;
        order.push(best);
    }
    order
}

/// `weights` divided by their gcd, and scaled down if their sum exceeds
/// [`MAX_ORDER_LEN`].
fn fit(weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = weights.iter().sum();
    let max = MAX_ORDER_LEN as u64;
    if total <= max {
        return weights;
    }
    // Floor of w * room / total, at least 1: the sum stays within `max`
    // when `room` leaves one place per member for the rounding up to 1.
    let room = max - weights.len() as u64;
    weights.iter().map(|&w| (w * room / total).max(1)).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr};

    use super::*;
    use crate::maglev::Identity;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                identity: Identity {
                    ip: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
                    port: 80,
                },
                weight,
                id: i as u32 + 1,
            })
            .collect()
    }

    /// A small deterministic generator for the weight sets.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn smooth_order_of_the_lab_weights() {
        // Converted weights 100, 100, 50 reduce to 2, 2, 1.
        assert_eq!(order(&members(&[100, 100, 50])), vec![1, 2, 3, 1, 2]);
        assert_eq!(order(&members(&[5, 1, 1])), vec![1, 1, 2, 1, 3, 1, 1]);
        assert_eq!(order(&members(&[7, 7, 7])), vec![1, 2, 3]);
        assert_eq!(order(&members(&[0, 3])), vec![2]);
        assert!(order(&members(&[0, 0])).is_empty());
        assert!(order(&[]).is_empty());
    }

    /// Every prefix of the cycle (and of repeated cycles) holds each target
    /// within 1 of its share, every window within 2; each cycle holds each
    /// target exactly weight / gcd times.
    #[test]
    fn every_window_follows_the_weights() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut sets: Vec<Vec<u32>> = vec![
            vec![100, 100, 50],
            vec![100, 1],
            vec![3, 2, 1],
            vec![5, 1, 1],
            vec![100, 99, 98, 1, 37, 73],
        ];
        for _ in 0..60 {
            let n = 2 + xorshift(&mut rng) % 7;
            sets.push(
                (0..n)
                    .map(|_| 1 + (xorshift(&mut rng) % 100) as u32)
                    .collect(),
            );
        }
        let (prefix, window) = deviations(&sets, order);
        assert!(prefix < 1.0, "prefix deviation {prefix}");
        assert!(window < 2.0, "window deviation {window}");
        // The order by weight class (large groups), forced on small ones.
        let classes: Vec<Vec<u32>> = (0..60)
            .map(|_| {
                let n = 2 + xorshift(&mut rng) % 12;
                (0..n)
                    .map(|_| [1, 2, 3, 50, 100][(xorshift(&mut rng) % 5) as usize])
                    .collect()
            })
            .collect();
        let (prefix, window) = deviations(&classes, |m| order_within(m, 0));
        assert!(prefix < 1.5, "by class: prefix deviation {prefix}");
        assert!(window < 2.0, "by class: window deviation {window}");
    }

    /// The largest deviation of a target's count from its weight share over
    /// prefixes of two cycles, and over any window of one cycle's length.
    fn deviations(sets: &[Vec<u32>], order: impl Fn(&[Member]) -> Vec<u32>) -> (f64, f64) {
        let mut worst_prefix = 0.0f64;
        let mut worst_window = 0.0f64;
        for weights in sets {
            let seq = order(&members(weights));
            let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)) as u32;
            let total: u32 = weights.iter().map(|w| w / g).sum();
            assert_eq!(seq.len(), total as usize, "{weights:?}");
            let mut per: HashMap<u32, u32> = HashMap::new();
            for &id in &seq {
                *per.entry(id).or_default() += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                assert_eq!(per[&(i as u32 + 1)], w / g, "{weights:?}");
            }
            // Prefix sums over two cycles; a window is a difference of two.
            let len = seq.len();
            let twice: Vec<u32> = seq.iter().chain(&seq).copied().collect();
            for (i, &w) in weights.iter().enumerate() {
                let id = i as u32 + 1;
                let share = (w / g) as f64 / total as f64;
                let mut prefix = vec![0u32; 2 * len + 1];
                for (k, &t) in twice.iter().enumerate() {
                    prefix[k + 1] = prefix[k] + (t == id) as u32;
                }
                for (end, &count) in prefix.iter().enumerate() {
                    let d = (count as f64 - end as f64 * share).abs();
                    worst_prefix = worst_prefix.max(d);
                }
                for start in 0..len {
                    for l in 1..=len {
                        let got = (prefix[start + l] - prefix[start]) as f64;
                        worst_window = worst_window.max((got - l as f64 * share).abs());
                    }
                }
            }
        }
        (worst_prefix, worst_window)
    }

    #[test]
    fn order_ignores_policy_order_and_is_bounded() {
        let mut m = members(&[100, 37, 1]);
        let a = order(&m);
        m.reverse();
        assert_eq!(a, order(&m));
        // 20,000 targets of weights 1..=100: 1,010,000 places before scaling.
        let big: Vec<u32> = (0..20_000).map(|i| 1 + i % 100).collect();
        let seq = order(&members(&big));
        assert!(seq.len() <= MAX_ORDER_LEN as usize, "{}", seq.len());
        let ids: std::collections::HashSet<u32> = seq.iter().copied().collect();
        assert_eq!(ids.len(), 20_000, "every target keeps a place");
    }
}
