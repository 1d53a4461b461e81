//! Prometheus metrics (`lb run --metrics [ADDR]`), with the Prometheus
//! project's client crate (`prometheus-client`), in the Prometheus text
//! format.
//!
//! Two kinds of series:
//!
//! - What `lb` itself does, counted as it happens ([`Instruments`]): writes
//!   of the maps (count, failures, duration), refused policies, and each
//!   health probe's duration. The daemon and the probe loops update
//!   atomics; nothing waits.
//! - What the data plane counted, read at scrape time (`scrape`): the
//!   global counters, per listener, group and target packets, bytes, new
//!   and active flows, health states, last resort and backup, the flow
//!   table. The scrape reads the per-CPU maps itself (batched:
//!   `dataplane::reader`) and names the ids with the daemon's latest
//!   [`crate::view::View`].
//!
//! The HTTP server runs on a thread of its own with its own runtime
//! (`server`): a scrape never runs in, nor waits for, the daemon's event
//! loop (probes, reloads, the API).
mod scrape;
mod server;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

pub use scrape::{Scrape, Sources};

use crate::{rename::Renames, view::View};
pub use server::{Bound, DEFAULT_ADDR, Server, bind};

/// A group's label set (`group="web"`).
pub type GroupLabel = [(&'static str, String); 1];

/// Probe durations by group: one histogram per group (not per target:
/// 100,000 targets would make two million series).
pub type ProbeDurations = Family<GroupLabel, Histogram, fn() -> Histogram>;

/// Health probes take from well under a millisecond to their timeout
/// (at most 900 s): 0.25 ms to 16 s by powers of 2.
fn probe_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// What `lb` counts as it goes; cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct Instruments {
    pub applies: Counter,
    pub apply_failures: Counter,
    pub apply_duration: Histogram,
    pub policy_refusals: Counter,
    pub probe_durations: ProbeDurations,
    /// Times each group went into last resort, and to its backup.
    pub last_resort_activations: Family<GroupLabel, Counter>,
    pub backup_activations: Family<GroupLabel, Counter>,
    /// Each group's state (last resort, backup) as the last activations
    /// counted it.
    seen: Arc<Mutex<BTreeMap<String, [bool; 2]>>>,
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            applies: Counter::default(),
            apply_failures: Counter::default(),
            // 1 ms to about 65 s by powers of 2 (a 1,000 x 100 policy's
            // apply takes about 0.2 s).
            apply_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            policy_refusals: Counter::default(),
            probe_durations: Family::new_with_constructor(probe_histogram),
            last_resort_activations: Family::default(),
            backup_activations: Family::default(),
            seen: Arc::default(),
        }
    }
}

impl Instruments {
    /// A write of the maps that took `took`, failed or not.
    pub fn applied(&self, took: Duration, ok: bool) {
        self.applies.inc();
        if !ok {
            self.apply_failures.inc();
        }
        self.apply_duration.observe(took.as_secs_f64());
    }

    /// A probe of a target of `group` that took `took`.
    pub fn probed(&self, group: &str, took: Duration) {
        self.probe_durations
            .get_or_create(&[("group", group.to_string())])
            .observe(took.as_secs_f64());
    }

    /// Counts the groups of `new` that went into last resort, or to their
    /// backup, since the view counted before (a group new in `new` counts
    /// if it starts so), and forgets the groups `new` no longer has. A
    /// group is known by its name: one renamed (`lb apply --rename`) goes
    /// on under its new name through [`Instruments::renamed`], never by a
    /// guess from its id (a removed group's id may go to a new group).
    pub fn activations(&self, new: &View) {
        let mut seen = self.seen.lock().expect("activations lock");
        let families = [&self.last_resort_activations, &self.backup_activations];
        let now: BTreeMap<String, [bool; 2]> = new
            .groups
            .iter()
            .map(|g| (g.name.clone(), [g.last_resort, g.backup_active()]))
            .collect();
        for (name, state) in &now {
            let was = seen.get(name).copied().unwrap_or_default();
            let label = [("group", name.clone())];
            for ((family, on), was_on) in families.iter().zip(state).zip(was) {
                if *on && !was_on {
                    family.get_or_create(&label).inc();
                }
            }
        }
        for gone in seen.keys().filter(|g| !now.contains_key(*g)) {
            let label = [("group", gone.clone())];
            for family in families {
                family.remove(&label);
            }
        }
        *seen = now;
    }

    /// Groups renamed (`lb apply --rename`): their counts and the state
    /// they were counted in go on under their new names. All at once: two
    /// groups may swap names.
    pub fn renamed(&self, renames: &Renames) {
        let mut seen = self.seen.lock().expect("activations lock");
        let families = [&self.last_resort_activations, &self.backup_activations];
        let label = |name: &str| [("group", name.to_string())];
        let moved: Vec<(&str, [Option<u64>; 2])> = renames
            .pairs()
            .map(|(old, new)| (new, families.map(|f| f.get(&label(old)).map(|c| c.get()))))
            .collect();
        for (old, _) in renames.pairs() {
            for family in families {
                family.remove(&label(old));
            }
        }
        for (new, counts) in moved {
            for (family, n) in families.iter().zip(counts) {
                if let Some(n) = n {
                    family.get_or_create(&label(new)).inc_by(n);
                }
            }
        }
        *seen = seen
            .iter()
            .map(|(name, state)| (renames.name(name).to_string(), *state))
            .collect();
    }

    /// Forgets group `group`'s probe durations (its checks stopped).
    pub fn forget_probe_group(&self, group: &str) {
        self.probe_durations.remove(&[("group", group.to_string())]);
    }

    /// Registers every instrument in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "lb_applies",
            "Writes of a new plan to the data plane's maps (start, reload, lb apply, health, MAC and drain changes, retries), failed or not",
            self.applies.clone(),
        );
        registry.register(
            "lb_apply_failures",
            "Writes of the maps that failed (retried with a backoff; the data plane forwards with what it holds)",
            self.apply_failures.clone(),
        );
        registry.register(
            "lb_apply_duration_seconds",
            "How long each write of the maps took",
            self.apply_duration.clone(),
        );
        registry.register(
            "lb_policy_refusals",
            "New policies refused (reload or lb apply): the last good policy serves on",
            self.policy_refusals.clone(),
        );
        registry.register(
            "lb_group_last_resort_activations",
            "Times the group went into last resort (no healthy target on the side serving it), whether or not a target could take its new flows then",
            self.last_resort_activations.clone(),
        );
        registry.register(
            "lb_group_backup_activations",
            "Times the group's new flows went over to its backup group",
            self.backup_activations.clone(),
        );
        registry.register(
            "lb_health_probe_duration_seconds",
            "Health probe durations by target group (a probe that times out counts its timeout)",
            self.probe_durations.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{failover::Serving, view::GroupView};

    /// Groups (id, name, last resort, serving).
    fn view(groups: &[(u32, &str, bool, Serving)]) -> View {
        View {
            groups: groups
                .iter()
                .map(|(id, name, last_resort, serving)| GroupView {
                    id: *id,
                    name: name.to_string(),
                    listener: None,
                    serving: *serving,
                    last_resort: *last_resort,
                    counted: Vec::new(),
                    released: Default::default(),
                })
                .collect(),
            ..View::default()
        }
    }

    fn count(f: &Family<GroupLabel, Counter>, g: &str) -> Option<u64> {
        f.get(&[("group", g.to_string())]).map(|c| c.get())
    }

    #[test]
    fn activations_count_each_change_into_last_resort_and_backup() {
        let m = Instruments::default();
        let normal = view(&[
            (1, "web", false, Serving::Primary),
            (2, "dns", false, Serving::Primary),
        ]);
        let down = view(&[
            (1, "web", true, Serving::PrimaryLastResort),
            (2, "dns", false, Serving::Backup),
        ]);
        m.activations(&normal);
        m.activations(&down);
        // Staying there is no new activation.
        m.activations(&down);
        m.activations(&normal);
        m.activations(&down);
        assert_eq!(count(&m.last_resort_activations, "web"), Some(2));
        assert_eq!(count(&m.backup_activations, "dns"), Some(2));
        assert_eq!(count(&m.backup_activations, "web"), None);
        // Renamed, as it was: no activation, its counts go on under the
        // new name.
        m.renamed(&Renames::parse(&["web=www"]).unwrap());
        let renamed = view(&[
            (1, "www", true, Serving::PrimaryLastResort),
            (2, "dns", false, Serving::Backup),
        ]);
        m.activations(&renamed);
        assert_eq!(count(&m.last_resort_activations, "www"), Some(2));
        assert_eq!(count(&m.last_resort_activations, "web"), None);
        // Two groups swap names: each keeps its counts.
        m.renamed(&Renames::parse(&["www=dns", "dns=www"]).unwrap());
        let swapped = view(&[
            (1, "dns", true, Serving::PrimaryLastResort),
            (2, "www", false, Serving::Backup),
        ]);
        m.activations(&swapped);
        assert_eq!(count(&m.last_resort_activations, "dns"), Some(2));
        assert_eq!(count(&m.backup_activations, "www"), Some(2));
        assert_eq!(count(&m.last_resort_activations, "www"), None);
        // A group that leaves the policy leaves the metrics.
        m.activations(&view(&[(2, "www", false, Serving::Primary)]));
        assert_eq!(count(&m.last_resort_activations, "dns"), None);
    }

    /// A group removed, and a new one given its freed id in the same
    /// apply: the new one starts from none, and the removed one's counts
    /// go with it. A group is renamed only by `lb apply --rename`.
    #[test]
    fn a_new_group_given_a_removed_groups_id_starts_from_none() {
        let m = Instruments::default();
        m.activations(&view(&[(1, "old", true, Serving::PrimaryLastResort)]));
        assert_eq!(count(&m.last_resort_activations, "old"), Some(1));
        m.activations(&view(&[(1, "new", false, Serving::Primary)]));
        assert_eq!(count(&m.last_resort_activations, "new"), None);
        assert_eq!(count(&m.last_resort_activations, "old"), None);
        // The new group in last resort: its first activation.
        m.activations(&view(&[(1, "new", true, Serving::PrimaryLastResort)]));
        assert_eq!(count(&m.last_resort_activations, "new"), Some(1));
        // Renamed and a new group taking the name it left, in one step:
        // the new one starts from none.
        let m = Instruments::default();
        m.activations(&view(&[(1, "web", true, Serving::PrimaryLastResort)]));
        m.renamed(&Renames::parse(&["web=www"]).unwrap());
        m.activations(&view(&[
            (1, "www", true, Serving::PrimaryLastResort),
            (2, "web", false, Serving::Primary),
        ]));
        assert_eq!(count(&m.last_resort_activations, "www"), Some(1));
        assert_eq!(count(&m.last_resort_activations, "web"), None);
    }
}
