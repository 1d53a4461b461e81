//! What tests and benchmarks reach into a data plane for and `lb run` never
//! does: private unpinned data planes, the program for BPF_PROG_TEST_RUN,
//! the clock, the state the program keeps (flows, sticky sessions,
//! round-robin positions), evictions, memory. Compiled only
//! with the `testing` feature, so that `lb` has none of it.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, MapError},
    programs::Xdp,
};
use lb_common::{FlowKey, StickyKey, StickyState, map_names as names};

use super::{
    Basis, Dataplane, DataplaneError, Held, LoadOptions, PROGRAM, TableSettings,
    clock::Clock,
    loader,
    maps::{as_data, map_err},
    random_u64,
    table::{EntryView, FlowTable},
};

impl Dataplane {
    /// Loads the program and creates its maps (empty, not pinned). Not
    /// attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self, DataplaneError> {
        Self::load_object(crate::EBPF_LB, PROGRAM, options)
    }

    /// As [`Dataplane::load`], with the flow table's hash seed given
    /// instead of drawn: a test whose flows must meet in the same buckets
    /// every run.
    pub fn load_seeded(options: &LoadOptions, seed: u64) -> Result<Self, DataplaneError> {
        let table = TableSettings {
            seed,
            ..TableSettings::for_flows(options.flow_table_size)
        };
        let ebpf = loader(table).load(crate::EBPF_LB)?;
        Self::start(ebpf, PROGRAM, Basis::new(table), None)
    }

    /// Loads another build of the pipeline (the benchmark variant), not
    /// pinned.
    pub fn load_object(
        object: &[u8],
        program: &'static str,
        options: &LoadOptions,
    ) -> Result<Self, DataplaneError> {
        let table = TableSettings::for_flows(options.flow_table_size);
        let ebpf = loader(table).load(object)?;
        Self::start(ebpf, program, Basis::new(table), None)
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

    /// The flow table, mapped.
    pub fn flow_table(&self) -> Result<FlowTable, DataplaneError> {
        FlowTable::new(self.map_data(names::FLOW_TABLE)?, self.table.buckets)
    }

    /// Every flow-table entry in use, bucket by bucket.
    pub fn flow_entries(&self) -> Result<Vec<EntryView>, DataplaneError> {
        Ok(self.flow_table()?.entries().collect())
    }

    /// The entry of flow `key`, if it has one.
    pub fn flow_entry(&self, key: &FlowKey) -> Result<Option<EntryView>, DataplaneError> {
        Ok(self.flow_table()?.find(key, self.table.seed))
    }

    /// Where flow `key` may be in the flow table: its two buckets and tag.
    pub fn flow_place(&self, key: &FlowKey) -> lb_common::flow_table::Place {
        lb_common::flow_table::place(key, self.table.seed, self.table.buckets - 1)
    }

    /// Writes entries into the flow table as the data plane would have made
    /// them (a test filling buckets): (bucket, way, word, last seen in
    /// `flow_table::time_units`, listener id). A counted one counts in its
    /// target's active flows; whatever was there is overwritten, uncounted.
    pub fn put_flow_entries(
        &self,
        entries: impl IntoIterator<Item = (u32, usize, lb_common::flow_table::Word, u32, u16)>,
    ) -> Result<(), DataplaneError> {
        let table = self.flow_table()?;
        for (bucket, way, word, seen, listener_id) in entries {
            table.put(bucket, way, word, seen, listener_id);
            if word.flags() & lb_common::flow_table::flags::COUNTED != 0 {
                self.active.add(word.target_id(), 1);
            }
        }
        Ok(())
    }

    /// Deletes a flow's entry as the sweeper deletes one (its flow leaves
    /// its target's count if counted). False if it had none.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        let table = self.flow_table()?;
        Ok(table
            .find(key, self.table.seed)
            .is_some_and(|entry| table.delete(&entry, &self.active)))
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

impl Basis {
    /// A new data plane's, with `table`.
    fn new(table: TableSettings) -> Basis {
        Basis {
            held: Held::empty(),
            table,
            instance: random_u64(),
            ns_per_tick: 0,
        }
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
