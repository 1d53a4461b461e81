//! The model's weighted Maglev table and round-robin order, written from
//! docs/algorithms.md ("The weighted Maglev table", "The round-robin
//! order"), not from `lb_user::maglev` or `lb_user::round_robin`: the
//! textbook walk, one candidate slot at a time. Slots hold the members
//! themselves (their identities), never numbers.
use std::{net::IpAddr, sync::Arc};

use super::{TargetKey, hash::murmur3_words};

const OFFSET_SEED: u32 = 0x4d41_4701;
const SKIP_SEED: u32 = 0x4d41_4702;

/// A target that takes new flows, as the tables see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub target: Arc<TargetKey>,
    /// The port of its identity (the group's listener's, or 0).
    pub port: u16,
    /// Its converted weight (1-100).
    pub weight: u32,
}

impl Member {
    /// The five identity words: the address as four big-endian integers,
    /// then port × 256 + family.
    fn words(&self) -> [u32; 5] {
        let (octets, family): (Vec<u8>, u32) = match self.target.ip {
            IpAddr::V4(v4) => ([&v4.octets()[..], &[0; 12]].concat(), 4),
            IpAddr::V6(v6) => (v6.octets().to_vec(), 6),
        };
        let word = |i: usize| u32::from_be_bytes(octets[4 * i..4 * i + 4].try_into().unwrap());
        [
            word(0),
            word(1),
            word(2),
            word(3),
            u32::from(self.port) * 256 + family,
        ]
    }

    /// (offset, skip) of its permutation of `size` slots.
    fn permutation(&self, size: u64) -> (u64, u64) {
        let words = self.words();
        let offset = u64::from(murmur3_words(OFFSET_SEED, &words)) % size;
        let skip = u64::from(murmur3_words(SKIP_SEED, &words)) % (size - 1) + 1;
        (offset, skip)
    }

    /// The turn order: IPv4 before IPv6, addresses as big-endian numbers,
    /// then the port.
    fn order_key(&self) -> (u8, u128, u16) {
        match self.target.ip {
            IpAddr::V4(v4) => (4, u128::from(u32::from(v4)), self.port),
            IpAddr::V6(v6) => (6, u128::from(v6), self.port),
        }
    }
}

/// `members` with a positive weight, in turn order.
fn in_turn_order(members: &[Member]) -> Vec<Member> {
    let mut out: Vec<Member> = members.iter().filter(|m| m.weight > 0).cloned().collect();
    out.sort_by_key(Member::order_key);
    out
}

/// The Maglev table of `size` slots (a prime) over `members`: each slot
/// the member that claimed it, or `None` (no member).
pub fn maglev(members: &[Member], size: u32) -> Vec<Option<Arc<TargetKey>>> {
    let size = u64::from(size);
    let mut table: Vec<Option<Arc<TargetKey>>> = vec![None; size as usize];
    let members = in_turn_order(members);
    let Some(most) = members.iter().map(|m| m.weight).max() else {
        return table;
    };
    // Each member's next preferred slot, and its skip: the k-th preferred
    // slot is (offset + k × skip) mod size, one step of skip after another.
    let mut walks: Vec<(u64, u64)> = members.iter().map(|m| m.permutation(size)).collect();
    let mut credit = vec![0u32; members.len()];
    let mut taken = 0;
    loop {
        for (i, m) in members.iter().enumerate() {
            credit[i] += m.weight;
            if credit[i] < most {
                continue;
            }
            credit[i] -= most;
            let (next, skip) = &mut walks[i];
            let slot = loop {
                let slot = *next as usize;
                *next += *skip;
                if *next >= size {
                    *next -= size;
                }
                if table[slot].is_none() {
                    break slot;
                }
            };
            table[slot] = Some(Arc::clone(&m.target));
            taken += 1;
            if taken == size {
                return table;
            }
        }
    }
}

/// One cycle of the smooth weighted round-robin order over `members`.
pub fn round_robin(members: &[Member]) -> Vec<Option<Arc<TargetKey>>> {
    let members = in_turn_order(members);
    let gcd = members.iter().fold(0, |g, m| gcd(g, m.weight)).max(1);
    let weights: Vec<i64> = members.iter().map(|m| i64::from(m.weight / gcd)).collect();
    let total: i64 = weights.iter().sum();
    assert!(
        total <= 1_000_003 && total as u64 * members.len() as u64 <= 1 << 26,
        "the model does not cover round-robin orders this long"
    );
    let mut credit = vec![0i64; members.len()];
    (0..total)
        .map(|_| {
            for (c, w) in credit.iter_mut().zip(&weights) {
                *c += w;
            }
            // The largest credit; the first in turn order on a tie.
            let next = (0..credit.len())
                .reduce(|best, i| if credit[i] > credit[best] { i } else { best })
                .unwrap();
            credit[next] -= total;
            Some(Arc::clone(&members[next].target))
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn member(ip: &str, weight: u32) -> Member {
        Member {
            target: Arc::new(TargetKey::new("web", ip.parse().unwrap())),
            port: 80,
            weight,
        }
    }

    fn names(slots: &[Option<Arc<TargetKey>>]) -> Vec<String> {
        slots
            .iter()
            .map(|s| s.as_ref().map_or("-".into(), |t| t.ip.to_string()))
            .collect()
    }

    #[test]
    fn slots_follow_the_weights_and_not_the_order() {
        let members = [
            member("10.0.3.13", 50),
            member("10.0.3.11", 100),
            member("fd00::1", 100),
        ];
        let table = maglev(&members, 1021);
        let mut counts = HashMap::new();
        for t in names(&table) {
            *counts.entry(t).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!((407..=410).contains(&counts["10.0.3.11"]), "{counts:?}");
        assert!((203..=206).contains(&counts["10.0.3.13"]), "{counts:?}");
        let mut reversed = members.to_vec();
        reversed.reverse();
        assert_eq!(maglev(&reversed, 1021), table);
        assert!(
            maglev(&[member("10.0.3.11", 0)], 7)
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn the_documented_round_robin_cycle() {
        let members = [
            member("10.0.3.12", 100),
            member("10.0.3.13", 50),
            member("10.0.3.11", 100),
        ];
        assert_eq!(
            names(&round_robin(&members)),
            [
                "10.0.3.11",
                "10.0.3.12",
                "10.0.3.13",
                "10.0.3.11",
                "10.0.3.12"
            ]
        );
        let five_one_one = [
            member("1.0.0.1", 5),
            member("1.0.0.2", 1),
            member("1.0.0.3", 1),
        ];
        assert_eq!(
            names(&round_robin(&five_one_one)),
            [
                "1.0.0.1", "1.0.0.1", "1.0.0.2", "1.0.0.1", "1.0.0.3", "1.0.0.1", "1.0.0.1"
            ]
        );
        assert!(round_robin(&[member("1.0.0.1", 0)]).is_empty());
    }
}
