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
    collections::{BTreeMap, BTreeSet},
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

use crate::view::{GroupView, View};
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
    /// backup, since `old` (a group new in `new` counts if it starts so),
    /// and forgets the groups `new` no longer has. A group is known by its
    /// id: renamed, it goes on with its counts under its new name.
    pub fn activations(&self, old: &View, new: &View) {
        let before: BTreeMap<u32, &GroupView> = old.groups.iter().map(|g| (g.id, g)).collect();
        let families = [&self.last_resort_activations, &self.backup_activations];
        // Read before any is moved: two groups may swap names.
        let counts: BTreeMap<&str, [u64; 2]> = old
            .groups
            .iter()
            .map(|g| {
                let label = [("group", g.name.clone())];
                let n = families.map(|f| f.get(&label).map_or(0, |c| c.get()));
                (g.name.as_str(), n)
            })
            .collect();
        for g in &new.groups {
            let was = before.get(&g.id);
            let label = [("group", g.name.clone())];
            // Renamed: its counts under the new name; new: from none (the
            // name may be one a renamed group left).
            if was.is_none_or(|w| w.name != g.name) {
                let moved = was.and_then(|w| counts.get(w.name.as_str()).copied());
                for (family, n) in families.iter().zip(moved.unwrap_or_default()) {
                    family.remove(&label);
                    if n > 0 {
                        family.get_or_create(&label).inc_by(n);
                    }
                }
            }
            if g.last_resort && !was.is_some_and(|w| w.last_resort) {
                self.last_resort_activations.get_or_create(&label).inc();
            }
            if g.backup_active() && !was.is_some_and(|w| w.backup_active()) {
                self.backup_activations.get_or_create(&label).inc();
            }
        }
        let now: BTreeSet<&str> = new.groups.iter().map(|g| g.name.as_str()).collect();
        for gone in counts.keys().filter(|g| !now.contains(*g)) {
            let label = [("group", gone.to_string())];
            self.last_resort_activations.remove(&label);
            self.backup_activations.remove(&label);
        }
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
            "Times the group went into last resort (no healthy target on the side serving it)",
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
    use crate::failover::Serving;

    fn view(groups: &[(&str, bool, Serving)]) -> View {
        View {
            groups: groups
                .iter()
                .enumerate()
                .map(|(id, (name, last_resort, serving))| GroupView {
                    id: id as u32 + 1,
                    name: name.to_string(),
                    listener: None,
                    serving: *serving,
                    last_resort: *last_resort,
                })
                .collect(),
            ..View::default()
        }
    }

    #[test]
    fn activations_count_each_change_into_last_resort_and_backup() {
        let m = Instruments::default();
        let count = |f: &Family<GroupLabel, Counter>, g: &str| {
            f.get(&[("group", g.to_string())]).map_or(0, |c| c.get())
        };
        let normal = view(&[
            ("web", false, Serving::Primary),
            ("dns", false, Serving::Primary),
        ]);
        let down = view(&[
            ("web", true, Serving::PrimaryLastResort),
            ("dns", false, Serving::Backup),
        ]);
        m.activations(&View::default(), &normal);
        m.activations(&normal, &down);
        // Staying there is no new activation.
        m.activations(&down, &down);
        m.activations(&down, &normal);
        m.activations(&normal, &down);
        assert_eq!(count(&m.last_resort_activations, "web"), 2);
        assert_eq!(count(&m.backup_activations, "dns"), 2);
        assert_eq!(count(&m.backup_activations, "web"), 0);
        // Renamed (the same id), as it was: no activation, its counts go
        // on under the new name; two groups may swap names.
        let renamed = view(&[
            ("www", true, Serving::PrimaryLastResort),
            ("dns", false, Serving::Backup),
        ]);
        m.activations(&down, &renamed);
        assert_eq!(count(&m.last_resort_activations, "www"), 2);
        assert!(
            m.last_resort_activations
                .get(&[("group", "web".into())])
                .is_none()
        );
        // Renamed, and a new group takes the name it left, in one step:
        // the new one starts from none.
        let m2 = Instruments::default();
        m2.activations(&normal, &down);
        let mut reused = renamed.clone();
        reused.groups.push(GroupView {
            id: 9,
            name: "web".into(),
            listener: None,
            serving: Serving::Primary,
            last_resort: false,
        });
        m2.activations(&down, &reused);
        assert_eq!(count(&m2.last_resort_activations, "www"), 1);
        assert_eq!(count(&m2.last_resort_activations, "web"), 0);
        let swapped = view(&[
            ("dns", true, Serving::PrimaryLastResort),
            ("www", false, Serving::Backup),
        ]);
        m.activations(&renamed, &swapped);
        assert_eq!(count(&m.last_resort_activations, "dns"), 2);
        assert_eq!(count(&m.backup_activations, "www"), 2);
        assert_eq!(count(&m.last_resort_activations, "www"), 0);
        // A group that leaves the policy leaves the metrics.
        m.activations(&swapped, &view(&[("www", false, Serving::Primary)]));
        assert!(
            m.last_resort_activations
                .get(&[("group", "dns".into())])
                .is_none()
        );
    }
}
