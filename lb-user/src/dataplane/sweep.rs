//! The flow-table sweeper: every couple of seconds it walks the flow table
//! through its memory mapping (`table`), deletes the entries whose flow has
//! ended (idle or FIN timeout passed, data-plane time) and those that name
//! a retired target, and reports what it found. It runs on a thread of its
//! own, so a walk of a full table never holds up `lb`'s event loop; the
//! rules (`flows::Rules`) come from the applied plan.
//!
//! Counts stay exact without a recount: an entry is deleted by clearing its
//! word with a compare-and-exchange against the word read, and whoever
//! clears a counted flow's word (this sweeper, or the data plane at a FIN,
//! a re-selection or an eviction) takes it out of its target's count; a
//! word the data plane changed since the read is left for the next sweep.
//! The tally of counted entries per target is reported beside the counts,
//! which match it whenever the table holds still.
//!
//! Retired targets (`crate::ids`): entries and sticky sessions that name one
//! are deleted, if the target is still not usable when the entry is read
//! again (a packet of such a flow would choose again anyway), and each
//! report lists the target ids that live entries and sessions still name,
//! so that the registry releases the others.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    MAX_TARGETS, StickyKey, StickyState, TargetInfo, flow_table, map_names as names, target_flags,
};

use super::{
    DataplaneError,
    clock::Clock,
    maps::{io_err, map_err},
    mmap::Mapping,
    sys,
    table::{EntryView, FlowTable},
};
use crate::flows::{Fate, Rules, Tally};

/// Sticky sessions per batched lookup.
const CHUNK: u32 = 4096;

/// Active flows per target id: the mapping of `TARGET_ACTIVE`.
pub struct ActiveCounts {
    mapping: Mapping,
}

impl ActiveCounts {
    /// Maps `TARGET_ACTIVE` (this process's, or another's found by id).
    pub fn new(map: &MapData) -> Result<ActiveCounts, DataplaneError> {
        let mapping = Mapping::new(map.fd().as_fd(), MAX_TARGETS as usize * 8)
            .map_err(io_err(names::TARGET_ACTIVE))?;
        Ok(ActiveCounts { mapping })
    }

    /// The count as stored (it may dip below 0 for a moment; see
    /// `flows::shown`). Ids beyond the map read 0.
    pub fn get(&self, id: u32) -> i64 {
        self.mapping
            .atomic_i64(id as usize)
            .map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Adds `delta` atomically (the data plane adds to the same slots).
    pub(crate) fn add(&self, id: u32, delta: i64) {
        if let Some(a) = self.mapping.atomic_i64(id as usize) {
            a.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sets the count of a released id (nothing names it) to 0.
    pub(crate) fn reset(&self, id: u32) {
        if let Some(a) = self.mapping.atomic_i64(id as usize) {
            a.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries in the flow table.
    pub entries: u64,
    /// Entries found ended, and how many of them were deleted (the others
    /// had a packet meanwhile, or were gone already).
    pub ended: u64,
    pub deleted: u64,
    /// Live counted flows per target id, as the walk found them.
    pub active: BTreeMap<u32, i64>,
    /// Entries and sticky sessions of retired targets deleted.
    pub orphans_deleted: u64,
    /// Target ids that flow entries still name: a drain lasts while its
    /// target is among them.
    pub named: BTreeSet<u32>,
    /// Those and the ids that sticky sessions not yet expired name: a
    /// retired id is released once it is in neither (a session that has
    /// expired is never followed, so it holds nothing).
    pub held: BTreeSet<u32>,
    /// When the walk started.
    pub started: Instant,
    pub took: Duration,
}

impl Default for SweepReport {
    fn default() -> Self {
        SweepReport {
            entries: 0,
            ended: 0,
            deleted: 0,
            active: BTreeMap::new(),
            orphans_deleted: 0,
            named: BTreeSet::new(),
            held: BTreeSet::new(),
            started: Instant::now(),
            took: Duration::ZERO,
        }
    }
}

/// The `TARGETS` map, read to check that a retired target is still not
/// usable before its entries are deleted (a plan newer than the sweeper's
/// rules may have brought it back).
struct Targets(Array<MapData, TargetInfo>);

impl Targets {
    fn usable(&self, id: u32) -> bool {
        // A read that fails counts as usable: nothing is deleted on a guess.
        self.0
            .get(&id, 0)
            .map_or(true, |t| t.flags & target_flags::USABLE != 0)
    }
}

/// Opens another handle on a map (the sweeper's own, for its thread).
fn dup(data: &MapData, name: &'static str) -> Result<(OwnedFd, MapData), DataplaneError> {
    let dup = || data.fd().as_fd().try_clone_to_owned().map_err(io_err(name));
    Ok((dup()?, MapData::from_fd(dup()?).map_err(map_err(name))?))
}

/// The maps a sweeper reads, borrowed to make its own handles on them.
pub(super) struct SweptMaps<'a> {
    pub table: &'a MapData,
    pub buckets: u32,
    pub sticky: &'a MapData,
    pub targets: &'a MapData,
}

/// Walks the flow table (see the module documentation). `Send`: it runs on
/// its own thread.
pub struct FlowSweeper {
    table: FlowTable,
    sticky: (OwnedFd, BpfHashMap<MapData, StickyKey, StickyState>),
    targets: Targets,
    active: Arc<ActiveCounts>,
    clock: Clock,
}

impl FlowSweeper {
    pub(super) fn new(
        maps: SweptMaps<'_>,
        active: Arc<ActiveCounts>,
        clock: Clock,
    ) -> Result<FlowSweeper, DataplaneError> {
        let (sticky_fd, sticky) = dup(maps.sticky, names::STICKY)?;
        let sticky =
            BpfHashMap::try_from(Map::LruHashMap(sticky)).map_err(map_err(names::STICKY))?;
        let (_, targets) = dup(maps.targets, names::TARGETS)?;
        let targets = Array::try_from(Map::Array(targets)).map_err(map_err(names::TARGETS))?;
        Ok(FlowSweeper {
            table: FlowTable::new(maps.table, maps.buckets)?,
            sticky: (sticky_fd, sticky),
            targets: Targets(targets),
            active,
            clock,
        })
    }

    /// Reads every sticky session at data-plane time `now`: the targets
    /// those not expired name go to `held`; those of retired targets that
    /// are not usable are deleted (a client's next flow would be placed
    /// afresh anyway). Sessions are not flows: a drain does not wait for
    /// them (a draining target is not selectable, so the data plane does
    /// not follow them to it). Returns how many it deleted.
    fn sweep_sticky(
        &mut self,
        rules: &Rules,
        now: u64,
        held: &mut BTreeSet<u32>,
    ) -> std::io::Result<u64> {
        let mut stale = Vec::new();
        // As the data plane's `sticky` reads a session.
        let live = |s: &StickyState| now < s.expires_ns;
        sys::lookup_all::<StickyKey, StickyState>(self.sticky.0.as_fd(), CHUNK, |key, s| {
            if rules.retired.contains(&s.target_id) {
                stale.push(*key);
            } else if live(s) {
                held.insert(s.target_id);
            }
        })?;
        let mut deleted = 0;
        for key in &stale {
            let Ok(s) = self.sticky.1.get(key, 0) else {
                continue;
            };
            if rules.retired.contains(&s.target_id)
                && !self.targets.usable(s.target_id)
                && self.sticky.1.remove(key).is_ok()
            {
                deleted += 1;
            } else if live(&s) {
                held.insert(s.target_id);
            }
        }
        Ok(deleted)
    }

    fn delete(&self, entry: &EntryView) -> bool {
        self.table.delete(entry, &self.active)
    }

    /// One sweep.
    pub fn sweep(&mut self, rules: &Rules) -> Result<SweepReport, DataplaneError> {
        let started = Instant::now();
        let now = data_plane_time(rules, self.clock.now_ns())?;
        let mut tally = Tally::default();
        let (mut deleted, mut orphans) = (0, 0);
        for entry in self.table.entries() {
            let id = entry.word.target_id();
            let at = self.judged_at(rules, &entry, now);
            match tally.add(rules, &entry, at) {
                Fate::Live => {}
                Fate::Ended if self.delete(&entry) => deleted += 1,
                Fate::Orphaned if !self.targets.usable(id) && self.delete(&entry) => orphans += 1,
                _ => {
                    tally.named.insert(id);
                }
            }
        }
        let named = std::mem::take(&mut tally.named);
        let mut held = named.clone();
        let sticky = self
            .sweep_sticky(rules, now, &mut held)
            .map_err(io_err(names::STICKY))?;
        Ok(SweepReport {
            entries: tally.entries,
            ended: tally.ended,
            deleted,
            active: tally.active,
            orphans_deleted: orphans + sticky,
            named,
            held,
            started,
            took: started.elapsed(),
        })
    }

    /// The data-plane time to judge `entry` at: the walk's start (`now`),
    /// read before any entry, so that an entry that had a packet since
    /// is judged as of before it; for one stamped further ahead of that
    /// than `flow_table::elapsed` reads as now (a long walk), the clock
    /// read again: only a stamp that is ahead of it too is no recent one.
    /// A failed read judges the entry as just seen.
    fn judged_at(&self, rules: &Rules, entry: &EntryView, now: u64) -> u64 {
        if !flow_table::far_ahead(entry.seen, flow_table::time_units(now)) {
            return now;
        }
        data_plane_time(rules, self.clock.now_ns())
            .unwrap_or(u64::from(entry.seen) << flow_table::TIME_SHIFT)
    }

    /// Runs `sweep` every `interval` on a thread of its own until the handle
    /// is stopped or dropped.
    pub fn spawn(mut self, rules: Rules, interval: Duration) -> SweeperHandle {
        let (tx, rx) = mpsc::channel::<Option<Rules>>();
        let (reports, _) = tokio::sync::watch::channel(None);
        let report = reports.clone();
        let thread = thread::Builder::new()
            .name("lb-flow-sweeper".into())
            .spawn(move || {
                let mut rules = rules;
                loop {
                    match self.sweep(&rules) {
                        Ok(r) => {
                            if r.deleted > 0 || r.orphans_deleted > 0 {
                                tracing::debug!(
                                    entries = r.entries,
                                    deleted = r.deleted,
                                    orphans_deleted = r.orphans_deleted,
                                    took_ms = r.took.as_secs_f64() * 1e3,
                                    "flow sweep"
                                );
                            }
                            report.send_replace(Some(Arc::new(r)));
                        }
                        Err(err) => tracing::warn!(%err, "flow sweep failed"),
                    }
                    match rx.recv_timeout(interval) {
                        Ok(Some(new)) => rules = new,
                        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                }
            })
            .expect("spawn the flow sweeper thread");
        SweeperHandle {
            tx,
            thread: Some(thread),
            reports,
        }
    }
}

/// Data-plane time: a reading of the data plane's clock plus the plan's
/// offset.
fn data_plane_time(rules: &Rules, clock_ns: std::io::Result<u64>) -> Result<u64, DataplaneError> {
    clock_ns
        .map(|ns| ns.wrapping_add(rules.time_offset_ns))
        .map_err(DataplaneError::Clock)
}

/// The running sweeper.
pub struct SweeperHandle {
    tx: mpsc::Sender<Option<Rules>>,
    thread: Option<thread::JoinHandle<()>>,
    reports: tokio::sync::watch::Sender<Option<Arc<SweepReport>>>,
}

impl SweeperHandle {
    /// New rules (after a plan change); they also trigger a sweep at once.
    pub fn update(&self, rules: Rules) {
        let _ = self.tx.send(Some(rules));
    }

    /// The last sweep's report.
    pub fn last(&self) -> Option<Arc<SweepReport>> {
        self.reports.borrow().clone()
    }

    /// Each sweep's report as it comes.
    pub fn reports(&self) -> tokio::sync::watch::Receiver<Option<Arc<SweepReport>>> {
        self.reports.subscribe()
    }

    /// Stops the thread (after the sweep under way, if any).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
