//! What tests and benchmarks reach into a data plane for and `lb run` never
//! does: private unpinned data planes, the program for BPF_PROG_TEST_RUN,
//! the clock, the state the program keeps (flows, sticky sessions,
//! round-robin positions, the flow cache), evictions, memory. Compiled only
//! with the `testing` feature, so that `lb` has none of it.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, MapError},
    programs::Xdp,
};
use lb_common::{
    FlowCacheSlot, FlowKey, FlowKeyV4, FlowState, StickyKey, StickyState, map_names as names,
};

use super::{
    Dataplane, DataplaneError, FlowCache, Held, LoadOptions, PROGRAM,
    clock::Clock,
    loader,
    maps::{as_data, map_err, removed},
    random_u64,
};

impl Dataplane {
    /// Loads the program and creates its maps (empty, not pinned). Not
    /// attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self, DataplaneError> {
        Self::load_object(crate::EBPF_LB, PROGRAM, options)
    }

    /// Loads another build of the pipeline (the benchmark variant), not
    /// pinned.
    pub fn load_object(
        object: &[u8],
        program: &'static str,
        options: &LoadOptions,
    ) -> Result<Self, DataplaneError> {
        let cache = FlowCache::for_table(options.flow_table_size, options.flow_cache);
        let ebpf = loader(options, cache).load(object)?;
        Self::start(ebpf, program, Held::empty(), cache, random_u64(), None)
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.xdp_mut()
    }

    /// The data plane's clock (data-plane time is its reading plus the
    /// plan's `Config::time_offset_ns`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The round-robin position of a group (`GROUP_RR`: new flows the
    /// group's order has handed out).
    pub fn round_robin_position(&self, group_id: u32) -> Result<u64, DataplaneError> {
        let map: Array<&MapData, u64> = self.open(names::GROUP_RR)?;
        map.get(&group_id, 0).map_err(map_err(names::GROUP_RR))
    }

    /// Every sticky session (`STICKY`), in no particular order.
    pub fn sticky_sessions(&self) -> Result<Vec<(StickyKey, StickyState)>, DataplaneError> {
        let map: BpfHashMap<&MapData, StickyKey, StickyState> = self.open(names::STICKY)?;
        map.iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::STICKY))
    }

    /// A client's sticky session (`STICKY`), if it has one.
    pub fn sticky_session(&self, key: &StickyKey) -> Result<Option<StickyState>, DataplaneError> {
        let map: BpfHashMap<&MapData, StickyKey, StickyState> = self.open(names::STICKY)?;
        found(map.get(key, 0)).map_err(map_err(names::STICKY))
    }

    /// Every flow-table entry (both tables; IPv4 keys widened to `FlowKey`).
    /// One syscall per entry: for small tables.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowState)>, DataplaneError> {
        let v4: BpfHashMap<&MapData, FlowKeyV4, FlowState> = self.open(names::FLOWS_V4)?;
        let v6: BpfHashMap<&MapData, FlowKey, FlowState> = self.open(names::FLOWS_V6)?;
        let mut out = Vec::new();
        for entry in v4.iter() {
            let (k, state) = entry.map_err(map_err(names::FLOWS_V4))?;
            let key = FlowKey {
                src_be: [k.src_be, 0, 0, 0],
                dst_be: [k.dst_be, 0, 0, 0],
                src_port_be: k.src_port_be,
                dst_port_be: k.dst_port_be,
                proto: k.proto,
                family: lb_common::FAMILY_V4,
                _pad: [0; 2],
            };
            out.push((key, state));
        }
        for entry in v6.iter() {
            out.push(entry.map_err(map_err(names::FLOWS_V6))?);
        }
        Ok(out)
    }

    /// Deletes a flow's entry, as an LRU eviction would (its active count is
    /// left to the sweeper's recount), and invalidates the flow cache, so the
    /// next packet misses as the reference model expects. False if it had
    /// none.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        let removed = self.remove_flow_entry(key)?;
        if removed {
            self.invalidate_flow_cache()?;
        }
        Ok(removed)
    }

    /// Deletes a flow's entry and nothing else, exactly as the kernel's LRU
    /// evicts one: the flow cache may still serve the flow for up to
    /// `FLOW_TOUCH_NS` (README "Flow cache"). False if it had none.
    pub fn remove_flow_entry(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        if key.family == lb_common::FAMILY_V4 {
            let mut map: BpfHashMap<&mut MapData, FlowKeyV4, FlowState> =
                self.open_mut(names::FLOWS_V4)?;
            removed(map.remove(&FlowKeyV4::new(key))).map_err(map_err(names::FLOWS_V4))
        } else {
            let mut map: BpfHashMap<&mut MapData, FlowKey, FlowState> =
                self.open_mut(names::FLOWS_V6)?;
            removed(map.remove(key)).map_err(map_err(names::FLOWS_V6))
        }
    }

    /// The flow cache's slot for `key` (its index and content, whichever
    /// flow it holds), or `None` when the cache is off.
    pub fn flow_cache_slot(
        &self,
        key: &FlowKey,
    ) -> Result<Option<(u32, FlowCacheSlot)>, DataplaneError> {
        if self.cache.mask == 0 {
            return Ok(None);
        }
        let index = lb_common::flow_cache_slot(key, self.cache.seed, self.cache.mask);
        let map: Array<&MapData, FlowCacheSlot> = self.open(names::FLOW_CACHE)?;
        let slot = map.get(&index, 0).map_err(map_err(names::FLOW_CACHE))?;
        Ok(Some((index, slot)))
    }

    /// The flow cache's current generation (`Config::flow_cache_gen`).
    pub fn flow_cache_generation(&self) -> Result<u32, DataplaneError> {
        Ok(self.config()?.flow_cache_gen)
    }

    /// Kernel memory charged to the data plane's maps, the group tables
    /// swapped in (inner maps, held by `GROUP_TABLES`) included.
    pub fn map_memory(&self) -> Result<u64, DataplaneError> {
        let mut total = 0;
        for (name, map) in self.ebpf.maps() {
            if let Some(bytes) = as_data(map).and_then(memlock) {
                total += bytes;
            } else {
                tracing::debug!("map {name}: no memlock figure");
            }
        }
        let name = names::GROUP_TABLES;
        let outer: ArrayOfMaps<&MapData, MapData> = self.open(name)?;
        for group in self.applied.iter().flat_map(|plan| &plan.groups) {
            match found(outer.get(&group.id, 0)) {
                Ok(table) => total += table.as_ref().and_then(memlock).unwrap_or(0),
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(total)
    }
}

/// A lookup's value, `None` if the key is missing.
fn found<V>(result: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Kernel memory charged to a map: the `memlock:` line of its fdinfo.
fn memlock(map: &MapData) -> Option<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}
