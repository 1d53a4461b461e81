//! Pieces of the new-flow choice that the data plane and the loader's tests
//! share, so that a simulation measures the code the data plane runs.

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
