//! The flow-table sweeper: every couple of seconds it reads both flow tables
//! (batched lookups), deletes the entries whose flow has ended (idle or FIN
//! timeout passed, data-plane time), and makes `TARGET_ACTIVE` match the
//! live counted entries per target. It runs on a thread of its own with its
//! own handles on the maps, so a walk of a full table never holds up `lb`'s
//! event loop; the rules (`flows::Rules`) come from the applied plan.
//!
//! Races, and why the counts converge:
//! - The data plane keeps the counts itself (+1 per new flow, -1 at the
//!   client's FIN or RST, at expiry on the next packet, at re-selection).
//!   Flows that end silently (idle timeout, entry evicted or deleted) are
//!   only taken out by the recount.
//! - The recount corrects by a difference, never by storing a value: it
//!   snapshots the counts at the start of a clock tick, counts the live
//!   counted entries created before that tick, and adds (that count - the
//!   snapshot) to each target. A flow that starts while the walk runs is in
//!   neither, so its +1 stands (storing the walk's count would erase it
//!   whenever the walk missed its entry: with 2 x 1M buckets to walk, every
//!   flow started in the last half second). What the difference removes is
//!   what the snapshot held and the table no longer does.
//! - What can still be off, by the flows that changed in a window of
//!   microseconds to one walk: a flow that ends during the walk and whose
//!   entry the walk reads after its FIN, or whose entry is replaced then (a
//!   client port reused, a target chosen again), is taken out twice; one started
//!   in the microseconds between the tick's start and the snapshot (not
//!   counted). The next sweep corrects both, so errors never accumulate:
//!   once the table holds still for one sweep, every count is exact.
//! - An ended entry is read again just before it is deleted; a packet that
//!   refreshed it in between keeps it. One that arrives between that read
//!   and the delete misses the table and is steered like any miss (README
//!   "Flow lifecycle").
//! - Counts are changed with atomic adds through a memory mapping of
//!   `TARGET_ACTIVE`, so they never tear against the data plane's.
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
    FlowKey, FlowKeyV4, FlowState, MAX_TARGETS, StickyKey, StickyState, TargetInfo,
    map_names as names, target_flags,
};

use super::{
    DataplaneError,
    clock::Clock,
    maps::{io_err, map_err},
    mmap::Mapping,
    sys,
};
use crate::flows::{Fate, Rules, Tally, corrections};

/// Entries per batched lookup: 40 x 4096 bytes of keys and values at most.
const CHUNK: u32 = 4096;

/// Active flows per target id: the mapping of `TARGET_ACTIVE`.
pub struct ActiveCounts {
    mapping: Mapping,
}

impl ActiveCounts {
    pub(super) fn new(map: &MapData) -> Result<ActiveCounts, DataplaneError> {
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
    fn add(&self, id: u32, delta: i64) {
        if let Some(a) = self.mapping.atomic_i64(id as usize) {
            a.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Every id whose count is not 0.
    fn nonzero(&self) -> BTreeMap<u32, i64> {
        (0..MAX_TARGETS)
            .filter_map(|id| {
                let v = self.get(id);
                (v != 0).then_some((id, v))
            })
            .collect()
    }
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries in both flow tables.
    pub entries: u64,
    /// Entries found ended, and how many of them were deleted (the others
    /// had a packet meanwhile, or were gone already).
    pub ended: u64,
    pub deleted: u64,
    /// Active counts corrected because they differed from the table.
    pub corrected: usize,
    /// Live counted flows per target id that started before the sweep.
    pub active: BTreeMap<u32, i64>,
    /// Entries and sticky sessions of retired targets deleted.
    pub orphans_deleted: u64,
    /// Target ids that flow entries or sticky sessions still name.
    pub named: BTreeSet<u32>,
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
            corrected: 0,
            active: BTreeMap::new(),
            orphans_deleted: 0,
            named: BTreeSet::new(),
            started: Instant::now(),
            took: Duration::ZERO,
        }
    }
}

struct FlowTable<K> {
    fd: OwnedFd,
    map: BpfHashMap<MapData, K, FlowState>,
}

impl<K: aya::Pod + Default> FlowTable<K> {
    fn open(data: &MapData, name: &'static str) -> Result<FlowTable<K>, DataplaneError> {
        let (fd, own) = dup(data, name)?;
        let map = BpfHashMap::try_from(Map::LruHashMap(own)).map_err(map_err(name))?;
        Ok(FlowTable { fd, map })
    }

    /// Reads every entry into `tally` (`now`: data-plane time); returns the
    /// keys of ended and orphaned entries.
    fn read(&self, rules: &Rules, now: u64, tally: &mut Tally) -> std::io::Result<Vec<K>> {
        let mut stale = Vec::new();
        sys::lookup_all::<K, FlowState>(self.fd.as_fd(), CHUNK, |key, state| {
            if tally.add(rules, state, now) != Fate::Live {
                stale.push(*key);
            }
        })?;
        Ok(stale)
    }

    /// Deletes the entries of `keys` that are still ended, or still name a
    /// retired target that is not usable, at `now`; returns how many of each
    /// it deleted, and adds the targets of the others to `named`.
    fn delete_stale(
        &mut self,
        rules: &Rules,
        now: u64,
        keys: &[K],
        targets: &Targets,
        named: &mut BTreeSet<u32>,
    ) -> (u64, u64) {
        let (mut ended, mut orphans) = (0, 0);
        for key in keys {
            let Ok(state) = self.map.get(key, 0) else {
                continue;
            };
            let fate = rules.fate(&state, now);
            let delete =
                fate == Fate::Ended || (fate == Fate::Orphaned && !targets.usable(state.target_id));
            if delete && self.map.remove(key).is_ok() {
                match fate {
                    Fate::Ended => ended += 1,
                    _ => orphans += 1,
                }
            } else {
                named.insert(state.target_id);
            }
        }
        (ended, orphans)
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
    pub v4: &'a MapData,
    pub v6: &'a MapData,
    pub sticky: &'a MapData,
    pub targets: &'a MapData,
}

/// Walks the flow tables and corrects the active counts (see the module
/// documentation). `Send`: it runs on its own thread.
pub struct FlowSweeper {
    v4: FlowTable<FlowKeyV4>,
    v6: FlowTable<FlowKey>,
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
            v4: FlowTable::open(maps.v4, names::FLOWS_V4)?,
            v6: FlowTable::open(maps.v6, names::FLOWS_V6)?,
            sticky: (sticky_fd, sticky),
            targets: Targets(targets),
            active,
            clock,
        })
    }

    /// Reads every sticky session: the targets the live ones name go to
    /// `named`; those of retired targets that are not usable are deleted
    /// (a client's next flow would be placed afresh anyway). Returns how
    /// many it deleted.
    fn sweep_sticky(&mut self, rules: &Rules, named: &mut BTreeSet<u32>) -> std::io::Result<u64> {
        let mut stale = Vec::new();
        sys::lookup_all::<StickyKey, StickyState>(self.sticky.0.as_fd(), CHUNK, |key, s| {
            if rules.retired.contains(&s.target_id) {
                stale.push(*key);
            } else {
                named.insert(s.target_id);
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
            } else {
                named.insert(s.target_id);
            }
        }
        Ok(deleted)
    }

    /// One sweep.
    pub fn sweep(&mut self, rules: &Rules) -> Result<SweepReport, DataplaneError> {
        let started = Instant::now();
        // The snapshot of the counts, taken right at the start of a tick:
        // flows created in earlier ticks are in it, later ones are not
        // (`flows::corrections`).
        let since = data_plane_time(rules, self.clock.next_tick_ns())?;
        let snapshot = self.active.nonzero();
        let mut tally = Tally::since(since);
        let read_at = data_plane_time(rules, self.clock.now_ns())?;
        let stale_v4 = self
            .v4
            .read(rules, read_at, &mut tally)
            .map_err(io_err(names::FLOWS_V4))?;
        let stale_v6 = self
            .v6
            .read(rules, read_at, &mut tally)
            .map_err(io_err(names::FLOWS_V6))?;
        let delete_at = data_plane_time(rules, self.clock.now_ns())?;
        let mut named = std::mem::take(&mut tally.named);
        let (ended_v4, orphans_v4) =
            self.v4
                .delete_stale(rules, delete_at, &stale_v4, &self.targets, &mut named);
        let (ended_v6, orphans_v6) =
            self.v6
                .delete_stale(rules, delete_at, &stale_v6, &self.targets, &mut named);
        let sticky = self
            .sweep_sticky(rules, &mut named)
            .map_err(io_err(names::STICKY))?;
        let fixes = corrections(&tally, &snapshot);
        for &(id, delta) in &fixes {
            self.active.add(id, delta);
        }
        Ok(SweepReport {
            entries: tally.entries,
            ended: tally.ended,
            deleted: ended_v4 + ended_v6,
            corrected: fixes.len(),
            active: tally.active,
            orphans_deleted: orphans_v4 + orphans_v6 + sticky,
            named,
            started,
            took: started.elapsed(),
        })
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
                            if r.deleted > 0 || r.corrected > 0 || r.orphans_deleted > 0 {
                                tracing::debug!(
                                    entries = r.entries,
                                    deleted = r.deleted,
                                    orphans_deleted = r.orphans_deleted,
                                    corrected = r.corrected,
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
