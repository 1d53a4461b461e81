//! The least-connections choice of the data plane
//! (`lb_common::choice::least_connections`, which `lb-ebpf`
//! `pipeline/choose.rs` runs with its random draws and maps) over a plain
//! table, and a simulation that measures it against exact least
//! connections.
//!
//! The data plane does not scan every target per new flow: it draws two
//! random slots of the group's weighted consistent-hash table (so a target is
//! drawn in proportion to its weight), moves the second on until it names
//! another target (at most [`LEAST_CONNECTIONS_WALK`] slots), and takes the
//! candidate with fewer active flows per weight. The simulation below runs
//! both on the same churn workload and reports how far each strays from the
//! weight-proportional share of the active flows.
use lb_common::choice;
#[cfg(doc)]
use lb_common::choice::LEAST_CONNECTIONS_WALK;

/// The target a new flow goes to: `table` is the group's table (target ids),
/// `active` and `weight` give a target's active flows and converted weight,
/// `r1` and `r2` are the two random numbers. `None` for an empty table.
pub fn pick(
    table: &[u32],
    active: impl Fn(u32) -> i64,
    weight: impl Fn(u32) -> u16,
    r1: u32,
    r2: u32,
) -> Option<u32> {
    let len = table.len() as u32;
    if len == 0 {
        return None;
    }
    let slot_at = |i: u32| table.get(i as usize).copied();
    choice::least_connections(len, r1, r2, slot_at, |id| (active(id), weight(id)))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::maglev::{self, Identity, Member};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn u32(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn table(weights: &[u16]) -> Vec<u32> {
        let members: Vec<Member> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                identity: Identity {
                    ip: IpAddr::from([10, 0, 3, 11 + i as u8]),
                    port: 80,
                },
                weight: w as u32,
                id: i as u32 + 1,
            })
            .collect();
        maglev::build(&members, 65537)
    }

    /// Exact least connections: the target with the fewest active flows per
    /// weight, the first on a tie.
    fn exact(weights: &[u16], active: &[i64]) -> u32 {
        let mut best = 0;
        for i in 1..weights.len() {
            if choice::fewer_per_weight(active[i], weights[i], active[best], weights[best]) {
                best = i;
            }
        }
        best as u32 + 1
    }

    /// Largest |active_i - total * w_i / W| over targets.
    fn deviation(weights: &[u16], active: &[i64]) -> f64 {
        let total: i64 = active.iter().sum();
        let w: u32 = weights.iter().map(|&w| w as u32).sum();
        weights
            .iter()
            .zip(active)
            .map(|(&wi, &a)| (a as f64 - total as f64 * wi as f64 / w as f64).abs())
            .fold(0.0, f64::max)
    }

    #[derive(Clone, Copy)]
    enum Mode {
        Exact,
        TwoChoices,
        /// One weighted random candidate (what hashing gives), for scale.
        WeightedRandom,
    }

    /// The churn workload: `population` flows live at a time; each step one
    /// random flow ends and one new flow is placed. Returns the largest and
    /// the mean deviation from the weight share over the steps after warm-up.
    fn churn(
        weights: &[u16],
        population: usize,
        steps: usize,
        mode: Mode,
        seed: u64,
    ) -> (f64, f64) {
        let table = table(weights);
        let mut rng = Rng(seed);
        let mut active = vec![0i64; weights.len()];
        let mut flows: Vec<u32> = Vec::with_capacity(population);
        let (mut worst, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
        for step in 0..population + steps {
            if flows.len() == population {
                let gone = flows.swap_remove(rng.below(flows.len()));
                active[gone as usize - 1] -= 1;
            }
            let id = match mode {
                Mode::Exact => exact(weights, &active),
                Mode::TwoChoices => {
                    let (r1, r2) = (rng.u32(), rng.u32());
                    pick(
                        &table,
                        |id| active[id as usize - 1],
                        |id| weights[id as usize - 1],
                        r1,
                        r2,
                    )
                    .unwrap()
                }
                Mode::WeightedRandom => {
                    table[choice::scale(rng.u32(), table.len() as u32) as usize]
                }
            };
            active[id as usize - 1] += 1;
            flows.push(id);
            if step >= population {
                let d = deviation(weights, &active);
                worst = worst.max(d);
                sum += d;
                n += 1;
            }
        }
        (worst, sum / n as f64)
    }

    /// The numbers in README "Algorithms": 1000 live flows, 100,000 steps of
    /// churn. Exact least connections stays within about 1 flow of the
    /// weight share; two choices within about 10 (out of 1000), a weighted
    /// random choice (hashing) strays by dozens.
    #[test]
    fn two_choices_stay_close_to_exact_least_connections() {
        for weights in [
            &[100u16, 100, 100][..],
            &[100, 100, 50],
            &[100, 50, 20, 5, 1],
        ] {
            let (exact_worst, exact_mean) = churn(weights, 1000, 100_000, Mode::Exact, 7);
            let (worst, mean) = churn(weights, 1000, 100_000, Mode::TwoChoices, 7);
            let (random_worst, random_mean) =
                churn(weights, 1000, 100_000, Mode::WeightedRandom, 7);
            println!(
                "weights {weights:?}: exact worst {exact_worst:.1} mean {exact_mean:.2}; \
                 two choices worst {worst:.1} mean {mean:.2}; \
                 weighted random worst {random_worst:.1} mean {random_mean:.2}"
            );
            assert!(
                random_worst > 3.0 * worst,
                "{weights:?}: no better than random"
            );
            assert!(exact_worst <= 2.0, "{weights:?}: exact {exact_worst}");
            assert!(worst <= 15.0, "{weights:?}: two choices worst {worst}");
            assert!(mean <= 5.0, "{weights:?}: two choices mean {mean}");
        }
    }

    /// Held flows on one target: new flows go to the others.
    #[test]
    fn a_loaded_target_gets_no_new_flows_until_the_others_catch_up() {
        let weights = [100u16, 100, 100];
        let table = table(&weights);
        let mut active = [10i64, 0, 0];
        let mut rng = Rng(11);
        // 18 new flows: the others stay below 10 flows each until the last.
        for _ in 0..18 {
            let (r1, r2) = (rng.u32(), rng.u32());
            let id = pick(&table, |id| active[id as usize - 1], |_| 100, r1, r2).unwrap();
            assert_ne!(id, 1, "{active:?}");
            active[id as usize - 1] += 1;
        }
        // A single target is always its own choice; weight 0 never wins.
        assert_eq!(pick(&[1, 1, 1], |_| 5, |_| 100, 1, 2), Some(1));
        assert_eq!(
            pick(&[1, 2], |_| 0, |id| (id == 2) as u16 * 100, 0, u32::MAX),
            Some(2)
        );
        assert_eq!(pick(&[], |_| 0, |_| 100, 1, 2), None);
    }
}
