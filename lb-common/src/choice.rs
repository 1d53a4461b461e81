//! The new-flow choice of least connections and its pieces, shared by the
//! data plane and the loader's simulation, so that the simulation measures
//! the code the data plane runs.

/// Least connections: whether a target with `a_active` active flows and
/// converted weight `a_weight` is a strictly better pick than one with
/// `b_active` and `b_weight`: fewer active flows per unit of weight. The
/// quotients are compared cross-multiplied (no division); a negative count
/// (a transient drift of the shared counters) counts as 0, and a weight of 0
/// is never better than a positive one.
#[inline(always)]
pub fn fewer_per_weight(a_active: i64, a_weight: u16, b_active: i64, b_weight: u16) -> bool {
    if a_weight == 0 {
        return false;
    }
    if b_weight == 0 {
        return true;
    }
    let a = clamp(a_active) * b_weight as u64;
    let b = clamp(b_active) * a_weight as u64;
    a < b
}

/// A count as a non-negative number small enough that a product with a
/// weight (at most 100) cannot overflow.
#[inline(always)]
fn clamp(active: i64) -> u64 {
    if active < 0 {
        0
    } else if active > u32::MAX as i64 {
        u32::MAX as u64
    } else {
        active as u64
    }
}

/// Least connections draws its second candidate from this many consecutive
/// slots at most, starting at a random one, taking the first that names
/// another target than the first candidate (so that the two differ whenever
/// the group has two targets, but for a chance of about
/// `share_of_first ^ LEAST_CONNECTIONS_WALK`).
pub const LEAST_CONNECTIONS_WALK: u32 = 16;

/// Least connections' choice over a table of `len` slots (`slot_at(i)`: the
/// target id in slot `i`; `None` ends the choice) with the random draws `r1`
/// and `r2`: the first candidate is slot `r1` scaled, the second the first
/// slot from `r2` scaled on (wrapping, at most [`LEAST_CONNECTIONS_WALK`])
/// that names another target; the second wins only with strictly fewer
/// active flows per weight (`load(id)`: active flows, converted weight).
/// The data plane runs this with `bpf_get_prandom_u32` draws and its maps;
/// the loader's simulation (lb-user `least_connections.rs`) with its own.
#[inline(always)]
pub fn least_connections(
    len: u32,
    r1: u32,
    r2: u32,
    slot_at: impl Fn(u32) -> Option<u32>,
    load: impl Fn(u32) -> (i64, u16),
) -> Option<u32> {
    let first = slot_at(scale(r1, len))?;
    let mut slot = scale(r2, len);
    let mut second = first;
    for _ in 0..LEAST_CONNECTIONS_WALK {
        second = slot_at(slot)?;
        if second != first {
            break;
        }
        slot += 1;
        if slot == len {
            slot = 0;
        }
    }
    if second == first {
        return Some(first);
    }
    let (a_active, a_weight) = load(first);
    let (b_active, b_weight) = load(second);
    if fewer_per_weight(b_active, b_weight, a_active, a_weight) {
        Some(second)
    } else {
        Some(first)
    }
}

/// A random slot index below `len`, from 32 random bits (multiply and shift:
/// no division, and no bias worth the name for tables far below 2^32).
#[inline(always)]
pub fn scale(random: u32, len: u32) -> u32 {
    ((random as u64 * len as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_flows_per_weight_wins() {
        // 10 flows on weight 100 is 0.1 per unit; 1 on weight 5 is 0.2.
        assert!(fewer_per_weight(10, 100, 1, 5));
        assert!(!fewer_per_weight(1, 5, 10, 100));
        // Ties are not better.
        assert!(!fewer_per_weight(2, 50, 4, 100));
        // Negative counts are 0; weight 0 never wins.
        assert!(!fewer_per_weight(-5, 100, 0, 100));
        assert!(fewer_per_weight(-5, 100, 1, 100));
        assert!(!fewer_per_weight(0, 0, 1000, 1));
        assert!(fewer_per_weight(1000, 1, 0, 0));
        // Huge counts do not overflow.
        assert!(fewer_per_weight(i64::MAX, 100, i64::MAX, 1));
    }

    #[test]
    fn scale_stays_below_len() {
        for len in [1, 2, 3, 1021, 65537] {
            assert_eq!(scale(0, len), 0);
            assert_eq!(scale(u32::MAX, len), len - 1);
        }
        assert_eq!(scale(1 << 31, 10), 5);
    }
}
