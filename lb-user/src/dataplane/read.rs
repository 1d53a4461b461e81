//! What `lb run` reads back from the maps: counters and statistics for its
//! status report, the active flows of each target, and the MACs an adopted
//! data plane was left with.
use std::collections::BTreeMap;

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{Counter, Stats, TargetInfo, map_names as names};

use super::{Dataplane, DataplaneError, maps::map_err};
use crate::ids::TargetKey;

impl Dataplane {
    /// Global counters, summed over CPUs, indexed by `Counter` (derived ones
    /// included).
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        let map: PerCpuArray<&MapData, u64> = self.open(names::COUNTERS)?;
        let mut values = [0u64; Counter::COUNT as usize];
        for c in Counter::ALL {
            let per_cpu = map.get(&(c as u32), 0).map_err(map_err(names::COUNTERS))?;
            values[c as usize] = per_cpu.iter().sum();
        }
        Counter::derive(&mut values);
        Ok(Counter::ALL
            .iter()
            .map(|&c| (c, values[c as usize]))
            .collect())
    }

    /// Per-listener statistics (by listener id), summed over CPUs.
    pub fn listener_stats(&self, id: u32) -> Result<Stats, DataplaneError> {
        self.stats(names::LISTENER_STATS, id)
    }

    /// Per-target statistics (by target id), summed over CPUs.
    pub fn target_stats(&self, id: u32) -> Result<Stats, DataplaneError> {
        self.stats(names::TARGET_STATS, id)
    }

    fn stats(&self, name: &'static str, id: u32) -> Result<Stats, DataplaneError> {
        let map: PerCpuArray<&MapData, Stats> = self.open(name)?;
        let values = map.get(&id, 0).map_err(map_err(name))?;
        Ok(values.iter().fold(Stats::default(), |acc, s| Stats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            new_flows: acc.new_flows + s.new_flows,
        }))
    }

    /// Active flows of a target id as stored (see `flows::shown` for the
    /// value to show).
    pub fn active_flows(&self, id: u32) -> i64 {
        self.active.get(id)
    }

    /// The MAC each target id of the maps has (adopted data plane: what the
    /// last `lb` resolved), by target identity.
    pub fn target_macs(&self) -> Result<BTreeMap<TargetKey, [u8; 6]>, DataplaneError> {
        let targets: Array<&MapData, TargetInfo> = self.open(names::TARGETS)?;
        let mut out = BTreeMap::new();
        for (key, assigned) in self.held.ids.targets() {
            if let Ok(info) = targets.get(&assigned.id, 0)
                && info.flags & lb_common::target_flags::USABLE != 0
            {
                out.insert(key.clone(), info.mac);
            }
        }
        Ok(out)
    }
}
