//! Summaries of repeated measurements (pure).

/// Min and median of a sample (the median of an even sample is the upper
/// middle value). Panics on an empty sample.
pub fn min_median(v: &[f64]) -> (f64, f64) {
    assert!(!v.is_empty(), "an empty sample has no median");
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// Median of a sample.
pub fn median(v: &[f64]) -> f64 {
    min_median(v).1
}

/// The median of the ratios of paired runs (`a[i]` and `b[i]` ran back to
/// back): on a VM whose speed changes from one second to the next, the ratio
/// of each pair holds where the ratio of two medians taken from different
/// moments does not. A `b[i]` of 0 counts as 1 (nothing measured).
pub fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y.max(1.0)).collect();
    median(&ratios)
}

/// Times `f` `runs` times (after one warm-up call); seconds of each run.
pub fn time_runs<T>(runs: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    std::hint::black_box(f());
    (0..runs)
        .map(|_| {
            let started = std::time::Instant::now();
            std::hint::black_box(f());
            started.elapsed().as_secs_f64()
        })
        .collect()
}

/// A small deterministic pseudo-random generator (xorshift64*), so that a
/// benchmark's "random" sources are the same in every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_pairs_runs_that_ran_together() {
        // The VM slowed down 2x for the second pair: each pair still says 5.
        let (lb, base) = ([60.0, 120.0, 62.0], [12.0, 24.0, 12.0]);
        assert_eq!(paired_ratio(&lb, &base), 5.0);
        // The ratio of the medians mixes moments.
        assert!((min_median(&lb).1 / min_median(&base).1 - 62.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn min_median_of_odd_and_even_samples() {
        assert_eq!(min_median(&[3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(min_median(&[4.0, 1.0, 3.0, 2.0]), (1.0, 3.0));
        assert_eq!(median(&[5.0]), 5.0);
    }

    #[test]
    fn rng_is_deterministic_and_spreads() {
        let a: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..1000).map(|_| r.next_u32()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u32()));
        // Top bit set in about half of the values (binomial, 1000 draws:
        // sd 16, so 400..600 is a 6-sigma band).
        let high = a.iter().filter(|&&x| x >> 31 == 1).count();
        assert!((400..600).contains(&high), "{high}");
    }
}
