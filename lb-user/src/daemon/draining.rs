//! The daemon's side of drains (`crate::drains`): which targets the flows
//! still name, from each sweep; drains settled when their delay ends or
//! their flows do; retired target ids released; and the timer of the next
//! delay's end.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::target_flags;
use tracing::{debug, info, warn};

use super::{Daemon, load, unix_now};
use crate::{
    dataplane::sweep::SweepReport, drains::Flows, ids::TargetKey, neighbors::NeighborWatch,
    plan::MapPlan,
};

/// A delay's end is acted on this long after its second begins (drains are
/// timed in whole Unix seconds).
const DEADLINE_SLACK: Duration = Duration::from_millis(200);

impl Daemon {
    /// A sweep found which target ids flow entries still name, and which
    /// sticky sessions hold too: drains whose flows ended settle, and
    /// retired ids that nothing holds are released.
    pub(super) async fn on_sweep(&mut self, report: &SweepReport, watch: &NeighborWatch) {
        self.flows = self.flows_of(report);
        // The timeouts of listeners that held a reused id before, past.
        if self.rules.expire(std::time::Instant::now())
            && let Some(sweeper) = &self.sweeper
        {
            sweeper.update(self.rules.clone());
        }
        let released = self.release(report);
        if released {
            // The maps must drop the released ids' records.
            self.in_sync = false;
        }
        if !self.drains.is_empty() {
            self.settle(watch).await;
            self.reconcile();
            self.schedule_drains();
        } else if released {
            self.apply();
        }
    }

    /// The delay of a drain ended: its target is unused now.
    pub(super) async fn on_drain_deadline(&mut self, watch: &NeighborWatch) {
        self.drain_at = None;
        self.settle(watch).await;
        self.reconcile();
        self.schedule_drains();
    }

    /// The keys of the targets `report` found named, and the drains it can
    /// tell about: those whose target took no new flow in the maps since
    /// before it started (`drains::Closed`).
    fn flows_of(&self, report: &SweepReport) -> Flows {
        let by_id: BTreeMap<u32, &TargetKey> = self
            .plan
            .ids
            .targets()
            .map(|(key, a)| (a.id, key))
            .collect();
        Flows {
            named: report
                .named
                .iter()
                .filter_map(|id| by_id.get(id).map(|k| (*k).clone()))
                .collect(),
            covered: self.closed.covered(report.started),
        }
    }

    /// The maps hold the plan wanted since `now` (a write succeeded then):
    /// drains whose target takes no new flow in them are closed from then
    /// (if not before), and targets retired since the last such write
    /// count as retired from now (`Ids::written`): until now the maps may
    /// have let them take new flows.
    pub(super) fn mark_written(&mut self, now: Instant) {
        let open: BTreeSet<TargetKey> = self
            .plan
            .targets
            .iter()
            .filter(|t| t.info.flags & target_flags::SELECTABLE != 0)
            .map(|t| t.key())
            .collect();
        self.closed.written(&self.drains, |k| open.contains(k), now);
        let mut ids = (*self.plan.ids).clone();
        ids.written(self.last_written, now);
        if ids != *self.plan.ids {
            self.plan = MapPlan {
                ids: Arc::new(ids),
                ..self.plan.clone()
            };
        }
        self.last_written = Some(now);
    }

    /// Releases the retired target ids nothing names any more; true if
    /// some were. Only while the maps hold the plan wanted: a plan not
    /// written (its write failed, or is to be retried) may retire a target
    /// the maps still choose. Their counts are kept first for their
    /// groups' counters (the next write of the maps zeroes them for
    /// reuse), and a view that counts them so is published before that
    /// write; one whose counts cannot be read is released at a later sweep.
    fn release(&mut self, report: &SweepReport) -> bool {
        if !self.in_sync || self.plan.ids.retired().next().is_none() {
            return false;
        }
        let mut ids = (*self.plan.ids).clone();
        let released = ids.release(&report.held, report.started);
        if released.is_empty() {
            return false;
        }
        let read = match self.reader.stats_of(&[], &released) {
            Ok(read) => read,
            Err(err) => {
                warn!(%err, "cannot read the counts of the target ids to release: released later");
                return false;
            }
        };
        debug!(?released, "target ids released");
        self.released.add(&self.plan.ids, &released, &read);
        self.view
            .publish(self.view.last().released(&released, &self.released));
        self.plan = MapPlan {
            ids: Arc::new(ids),
            ..self.plan.clone()
        };
        true
    }

    /// Forgets the drains that are done (their targets leave the plan),
    /// saves the state, and stops following the MACs of those gone.
    async fn settle(&mut self, watch: &NeighborWatch) {
        let done = self.drains.settle(unix_now(), &self.flows, &self.policy);
        if done.is_empty() {
            return;
        }
        for key in &done {
            info!(group = %key.group, target = %key.ip, via = key.via.as_deref().unwrap_or(""), "drained: the target left");
        }
        self.save_state();
        let dynamic = load::dynamic_targets(&self.policy, &self.drains);
        if let Err(err) = watch.set_targets(dynamic).await {
            warn!(%err, "following the targets' MACs");
        }
    }

    /// Wakes the event loop when the next drain's delay ends.
    pub(super) fn schedule_drains(&mut self) {
        let now = unix_now();
        self.drain_at = self.drains.next_deadline(now).map(|until| {
            tokio::time::Instant::now() + Duration::from_secs(until - now) + DEADLINE_SLACK
        });
    }
}
