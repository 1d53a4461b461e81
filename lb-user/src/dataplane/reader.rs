//! The one way `lb` reads the data plane's statistics: whole per-CPU maps
//! in a few batched syscalls (`BPF_MAP_LOOKUP_BATCH`), never one syscall
//! per listener or target. A [`Reader`] owns its own handles on the maps,
//! so it is `Send` and `Sync`: metrics scrapes and `lb stats` read on
//! threads of their own, never in the daemon's event loop.
use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use lb_common::{Counter, Stats, map_names as names};

use super::{Dataplane, DataplaneError, maps::io_err, sweep::ActiveCounts, sys};

/// Keys per batched lookup: 4,096 targets of 2 CPUs are 192 KiB.
const CHUNK: u32 = 4096;

/// Up to this many ids are read one syscall each rather than in batches
/// of every id up to the largest.
const FEW: usize = 256;

/// Reads the counters, the listener and target statistics and the active
/// flows of one data plane.
pub struct Reader {
    counters: OwnedFd,
    listener_stats: OwnedFd,
    target_stats: OwnedFd,
    active: Arc<ActiveCounts>,
    cpus: usize,
}

/// One read of the statistics: every listener and target id up to the
/// ones asked for, summed over CPUs, and when it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRead {
    /// Per listener id and per target id (index = id).
    pub listeners: Vec<Stats>,
    pub targets: Vec<Stats>,
    /// CLOCK_MONOTONIC when the read was made (between the two maps).
    pub at: Duration,
}

impl StatsRead {
    pub fn listener(&self, id: u32) -> Stats {
        self.listeners.get(id as usize).copied().unwrap_or_default()
    }

    pub fn target(&self, id: u32) -> Stats {
        self.targets.get(id as usize).copied().unwrap_or_default()
    }
}

/// CLOCK_MONOTONIC now (the clock `lb stats` windows are timed in: the same
/// for every process of the machine).
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes the struct passed.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Reader {
    /// Global counters, summed over CPUs, derived ones filled in: one
    /// syscall.
    pub fn counters(&self) -> io::Result<[u64; Counter::COUNT as usize]> {
        let per_cpu = self.read_u64s(&self.counters, Counter::COUNT, 8)?;
        let mut values = [0u64; Counter::COUNT as usize];
        for (i, cpus) in per_cpu.chunks_exact(self.cpus).enumerate() {
            values[i] = cpus.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Counter::derive(&mut values);
        Ok(values)
    }

    /// Statistics of listener ids `0..listeners` and target ids
    /// `0..targets`, summed over CPUs.
    pub fn stats(&self, listeners: u32, targets: u32) -> io::Result<StatsRead> {
        let listeners = self.read_stats(&self.listener_stats, listeners)?;
        let at = monotonic_now();
        let targets = self.read_stats(&self.target_stats, targets)?;
        Ok(StatsRead {
            listeners,
            targets,
            at,
        })
    }

    /// Statistics of the listener and target ids named (the others read as
    /// zero): one syscall per id when they are few, else the batched
    /// lookups of [`Reader::stats`] up to the largest. What a status
    /// request about one group costs is that group's.
    pub fn stats_of(&self, listeners: &[u32], targets: &[u32]) -> io::Result<StatsRead> {
        let end = |ids: &[u32]| ids.iter().map(|id| id + 1).max().unwrap_or(0);
        if listeners.len() + targets.len() > FEW {
            return self.stats(end(listeners), end(targets));
        }
        let listeners = self.read_ids(&self.listener_stats, listeners)?;
        let at = monotonic_now();
        let targets = self.read_ids(&self.target_stats, targets)?;
        Ok(StatsRead {
            listeners,
            targets,
            at,
        })
    }

    /// Ids `ids` of a statistics map, one lookup each, in a vector indexed
    /// by id.
    fn read_ids(&self, fd: &OwnedFd, ids: &[u32]) -> io::Result<Vec<Stats>> {
        let end = ids.iter().map(|id| id + 1).max().unwrap_or(0) as usize;
        let mut out = vec![Stats::default(); end];
        let mut value = vec![0u8; size_of::<Stats>() * self.cpus];
        for &id in ids {
            sys::lookup_elem(fd.as_fd(), id, &mut value)?;
            out[id as usize] = value
                .chunks_exact(size_of::<Stats>())
                .map(|b| {
                    let word = |i: usize| {
                        u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                    };
                    (word(0), word(1), word(2))
                })
                .fold(Stats::default(), |a, (p, b, n)| Stats {
                    packets: a.packets.wrapping_add(p),
                    bytes: a.bytes.wrapping_add(b),
                    new_flows: a.new_flows.wrapping_add(n),
                });
        }
        Ok(out)
    }

    /// Active flows of target `id` as stored (see `flows::shown`).
    pub fn active_flows(&self, id: u32) -> i64 {
        self.active.get(id)
    }

    fn read_stats(&self, fd: &OwnedFd, n: u32) -> io::Result<Vec<Stats>> {
        let words = size_of::<Stats>() / 8;
        let raw = self.read_u64s(fd, n, size_of::<Stats>())?;
        Ok(raw
            .chunks_exact(words * self.cpus)
            .map(|cpus| {
                cpus.chunks_exact(words)
                    .fold(Stats::default(), |a, s| Stats {
                        packets: a.packets.wrapping_add(s[0]),
                        bytes: a.bytes.wrapping_add(s[1]),
                        new_flows: a.new_flows.wrapping_add(s[2]),
                    })
            })
            .collect())
    }

    /// Keys `0..n` of a per-CPU array whose values are `size` bytes of
    /// u64s, as u64s: key after key, CPU after CPU.
    fn read_u64s(&self, fd: &OwnedFd, n: u32, size: usize) -> io::Result<Vec<u64>> {
        let stride = size.next_multiple_of(8) * self.cpus;
        let bytes = sys::lookup_array(fd.as_fd(), n, stride, CHUNK)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }
}

impl Dataplane {
    /// A reader of this data plane's statistics with handles of its own.
    pub fn reader(&self) -> Result<Reader, DataplaneError> {
        let dup = |name: &'static str| -> Result<OwnedFd, DataplaneError> {
            self.map_data(name)?
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(io_err(name))
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io_err(names::COUNTERS)(e))?;
        Ok(Reader {
            counters: dup(names::COUNTERS)?,
            listener_stats: dup(names::LISTENER_STATS)?,
            target_stats: dup(names::TARGET_STATS)?,
            active: self.active.clone(),
            cpus,
        })
    }
}
