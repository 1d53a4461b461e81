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

use std::time::Duration;

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

pub use scrape::{Scrape, Sources};
pub use server::{DEFAULT_ADDR, Server};

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
            "lb_health_probe_duration_seconds",
            "Health probe durations by target group (a probe that times out counts its timeout)",
            self.probe_durations.clone(),
        );
    }
}
