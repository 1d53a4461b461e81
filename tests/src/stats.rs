//! How far a measured spread may stray from the weights.
//!
//! Treat each of `n` flows as an independent draw that lands on a target with
//! probability `p` (its weight ratio): the count is binomial with mean `n p`
//! and standard deviation `sqrt(n p (1 - p))`. A `z`-sigma band around the mean
//! is what a correct implementation stays inside; with `z = 5` it leaves it
//! with probability below 6e-7 per target.
//!
//! The flows of a lab test are not random in fact: the source ports are fixed
//! and the flow hash has a fixed seed, so a given implementation gives the same
//! spread on every run; it passes or fails every time. The model says how far
//! a hash that behaves like a random function may land from the weights, so
//! the band accepts every reasonable hash and table and still rejects wrong
//! weighting: see [`separates`].

/// The inclusive `[lo, hi]` range of counts within `z` standard deviations of
/// the mean of Binomial(n, p).
pub fn band(n: usize, p: f64, z: f64) -> (usize, usize) {
    let n_f = n as f64;
    let mean = n_f * p;
    let sd = (n_f * p * (1.0 - p)).sqrt();
    let lo = (mean - z * sd).ceil().max(0.0) as usize;
    let hi = (mean + z * sd).floor().min(n_f) as usize;
    (lo, hi)
}

/// Whether a band of `z` sigmas around `p` excludes the count a wrong share
/// `q` would give, with that count itself `margin` of its own standard
/// deviations away from the band edge, for `n` flows.
pub fn separates(n: usize, p: f64, q: f64, z: f64, margin: f64) -> bool {
    let (lo, hi) = band(n, p, z);
    let n_f = n as f64;
    let wrong_mean = n_f * q;
    let wrong_sd = (n_f * q * (1.0 - q)).sqrt();
    if q > p {
        wrong_mean - margin * wrong_sd > hi as f64
    } else {
        wrong_mean + margin * wrong_sd < lo as f64
    }
}

/// Expected share of each target of a group from its SPEC weights (0-256):
/// converted weight = ceil(w / 256 * 100), ratio = converted / sum.
pub fn ratios(weights: &[u16]) -> Vec<f64> {
    let converted: Vec<u64> = weights
        .iter()
        .map(|&w| (u64::from(w) * 100).div_ceil(256))
        .collect();
    let sum: u64 = converted.iter().sum();
    converted
        .iter()
        .map(|&c| if sum == 0 { 0.0 } else { c as f64 / sum as f64 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_of_300_at_0_4() {
        // sd = sqrt(300 * 0.4 * 0.6) = 8.49; 5 sd = 42.4.
        assert_eq!(band(300, 0.4, 5.0), (78, 162));
    }

    #[test]
    fn lab_weights() {
        let r = ratios(&[256, 256, 128]);
        assert_eq!(r, vec![0.4, 0.4, 0.2]);
        assert_eq!(ratios(&[256, 0, 0]), vec![1.0, 0.0, 0.0]);
    }

    /// Why the lab tests use 1000 flows: 300 is too few to tell 0.2 from 1/3
    /// with a 5-sigma band (a broken, unweighted spread would pass about one
    /// run in four), 1000 separates them by more than 4 sigma of the broken
    /// spread.
    #[test]
    fn one_thousand_flows_tell_weighted_from_unweighted() {
        assert!(!separates(300, 0.2, 1.0 / 3.0, 5.0, 3.0));
        assert!(separates(1000, 0.2, 1.0 / 3.0, 5.0, 4.0));
    }
}
