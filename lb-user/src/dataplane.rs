//! The only writer of BPF maps: loads the XDP program, attaches it, and makes
//! the maps hold a [`MapPlan`].
//!
//! `apply` writes the difference against the plan applied before, in an order
//! that never lets a packet see a half-built state: targets first, then each
//! changed group table (built complete in a fresh inner map and swapped in
//! with a single outer-map update), then listeners; removals last.
pub mod clock;
pub mod sweep;
mod sys;

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
};
use lb_common::{
    Config, Counter, FlowCacheSlot, FlowKey, FlowKeyV4, FlowState, GROUP_TABLE_FLAGS, GroupInfo,
    GroupTableElement, ListenerInfo, ListenerKey, ListenerPorts, ListenerSlot, MAX_LISTENERS,
    Stats, StickyKey, StickyState, TargetInfo, map_names as names,
};

use crate::plan::{MapPlan, Table};
use clock::Clock;
use sweep::{ActiveCounts, FlowSweeper};

/// The XDP program's name in the object.
pub const PROGRAM: &str = "lb";

/// The object's clock program (`clock.rs`).
pub const CLOCK_PROGRAM: &str = "lb_clock";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot load the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program `{0}` is missing from the object or not XDP")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("cannot attach to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("cannot load the XDP program into the kernel: {0}")]
    Program(ProgramError),
    #[error("cannot read the data plane's clock: {0}")]
    Clock(std::io::Error),
}

/// How to attach: native (driver) mode, generic (skb) mode, or native with a
/// fallback to generic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
    Auto,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Capacity of each flow table (LRU; IPv4 and IPv6 flows have one each).
    pub flow_table_size: u32,
    /// Whether the flow cache is on (where it can be: x86-64). Off only to
    /// measure what it saves.
    pub flow_cache: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: lb_common::DEFAULT_FLOW_TABLE_SIZE,
            flow_cache: true,
        }
    }
}

/// What an `apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub targets_written: usize,
    pub tables_swapped: usize,
    pub listeners_written: usize,
    pub listeners_removed: usize,
}

pub struct Dataplane {
    ebpf: Ebpf,
    program: &'static str,
    applied: Option<MapPlan>,
    active: Arc<ActiveCounts>,
    clock: Clock,
    cache: FlowCache,
}

/// The flow cache's settings, which the loader owns (README "Flow cache").
#[derive(Clone, Copy, Debug)]
struct FlowCache {
    /// Slots - 1; 0 when the cache is off.
    mask: u32,
    seed: u64,
}

impl FlowCache {
    /// Largest cache: 4 Mi slots of 64 bytes (256 MiB).
    const MAX_SLOTS: u32 = 1 << 22;

    /// One slot per flow-table entry (a power of two, at most `MAX_SLOTS`).
    /// Off (one unused slot) where the data plane's sequence lock is not
    /// sound: it relies on x86-64's ordering of loads and of stores
    /// (`lb_common::FlowCacheSlot`).
    fn for_table(flow_table_size: u32, enabled: bool) -> FlowCache {
        if !enabled || !cfg!(target_arch = "x86_64") {
            return FlowCache { mask: 0, seed: 0 };
        }
        let slots = flow_table_size
            .clamp(2, Self::MAX_SLOTS)
            .next_power_of_two();
        FlowCache {
            mask: slots - 1,
            seed: random_u64(),
        }
    }

    fn slots(&self) -> u32 {
        self.mask + 1
    }
}

/// A random 64-bit value (the flow cache's seed; a fixed one only costs
/// spread under chosen collisions, so a failed read falls back to the time).
fn random_u64() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64),
    }
}

/// The map behind a map of the object (the kinds it has).
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::ArrayOfMaps(data) => Some(data),
        _ => None,
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

/// Loads the XDP program `name` of the object into the kernel.
fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let xdp: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|_| DataplaneError::MissingProgram(name))?;
    xdp.load().map_err(DataplaneError::Program)?;
    Ok(xdp)
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Loads the program and creates its maps (empty). Not attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self, DataplaneError> {
        Self::load_object(crate::EBPF_LB, PROGRAM, options)
    }

    /// Loads another build of the pipeline (the benchmark variant).
    pub fn load_object(
        object: &[u8],
        program: &'static str,
        options: &LoadOptions,
    ) -> Result<Self, DataplaneError> {
        let cache = FlowCache::for_table(options.flow_table_size, options.flow_cache);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS_V4, options.flow_table_size)
            .map_max_entries(names::FLOWS_V6, options.flow_table_size)
            .map_max_entries(names::FLOW_CACHE, cache.slots())
            .load(object)?;
        load_xdp(&mut ebpf, program)?;
        let clock_fd = load_xdp(&mut ebpf, CLOCK_PROGRAM)?
            .fd()
            .map_err(DataplaneError::Program)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(DataplaneError::Clock)?;
        let clock = Clock::new(clock_fd).map_err(DataplaneError::Clock)?;
        let active = ActiveCounts::new(
            ebpf.map(names::TARGET_ACTIVE)
                .and_then(map_data)
                .ok_or(DataplaneError::MissingMap(names::TARGET_ACTIVE))?,
        )?;
        Ok(Dataplane {
            ebpf,
            program,
            applied: None,
            active: Arc::new(active),
            clock,
            cache,
        })
    }

    /// Invalidates every flow-cache slot (a new generation): after the
    /// loader deleted live flow-table entries, which the slots may repeat,
    /// or changed the listeners, which the slots name unchecked.
    /// The generation is read from the map, so a bump by another process
    /// (a test that empties the tables) is never undone.
    fn invalidate_flow_cache(&mut self) -> Result<(), DataplaneError> {
        let mut value = self.config()?;
        value.flow_cache_gen = value.flow_cache_gen.wrapping_add(1);
        let mut config: Array<_, Config> = self.map_array(names::CONFIG)?;
        config.set(0, value, 0).map_err(map_err(names::CONFIG))
    }

    /// The program's settings as the map holds them now.
    fn config(&self) -> Result<Config, DataplaneError> {
        let config: Array<&MapData, Config> = Array::try_from(
            self.ebpf
                .map(names::CONFIG)
                .ok_or(DataplaneError::MissingMap(names::CONFIG))?,
        )
        .map_err(map_err(names::CONFIG))?;
        config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Active flows of a target id as stored (see `flows::shown` for the
    /// value to show).
    pub fn active_flows(&self, id: u32) -> i64 {
        self.active.get(id)
    }

    /// A sweeper with its own handles on the flow tables and the active
    /// counts, to run on a thread of its own.
    pub fn flow_sweeper(&self) -> Result<FlowSweeper, DataplaneError> {
        let data = |name: &'static str| {
            self.ebpf
                .map(name)
                .and_then(map_data)
                .ok_or(DataplaneError::MissingMap(name))
        };
        FlowSweeper::new(
            data(names::FLOWS_V4)?,
            data(names::FLOWS_V6)?,
            Arc::clone(&self.active),
            self.clock.try_clone().map_err(DataplaneError::Clock)?,
        )
    }

    /// The data plane's clock (data-plane time is its reading plus the
    /// plan's `Config::time_offset_ns`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.program)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    /// Attaches to `iface`; returns the mode it attached in. The program
    /// detaches when `self` is dropped (the link is owned by the program).
    pub fn attach(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<&'static str, DataplaneError> {
        let program = self.program_mut();
        let attempt = |program: &mut Xdp, xdp_mode, label: &'static str| {
            program
                .attach(iface, xdp_mode)
                .map(|_| label)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: label,
                    source,
                })
        };
        match mode {
            AttachMode::Native => attempt(program, XdpMode::Driver, "native"),
            AttachMode::Generic => attempt(program, XdpMode::Skb, "generic"),
            AttachMode::Auto => match attempt(program, XdpMode::Driver, "native") {
                Ok(label) => Ok(label),
                Err(err) => {
                    tracing::warn!(%err, "native XDP not available, falling back to generic mode");
                    attempt(program, XdpMode::Skb, "generic")
                }
            },
        }
    }

    /// The plan the maps hold now.
    pub fn applied(&self) -> Option<&MapPlan> {
        self.applied.as_ref()
    }

    /// Makes the maps hold `plan`, writing only what differs from the plan
    /// applied before.
    pub fn apply(&mut self, plan: &MapPlan) -> Result<ApplyReport, DataplaneError> {
        let previous = self.applied.take();
        let result = self.write(plan, previous.as_ref());
        // On failure the maps may hold a mix; forget the previous plan so the
        // next apply rewrites everything.
        self.applied = result.is_ok().then(|| plan.clone());
        result
    }

    fn write(
        &mut self,
        plan: &MapPlan,
        old: Option<&MapPlan>,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();

        // The tick length is the loader's to write (the plan does not know
        // the kernel).
        let ns_per_tick = self.clock.ns_per_tick();
        if old.map(|o| o.config) != Some(plan.config) {
            // The generation stays: a new config invalidates no flow.
            let value = Config {
                ns_per_tick,
                flow_cache_mask: self.cache.mask,
                flow_cache_gen: self.config()?.flow_cache_gen,
                flow_cache_seed: self.cache.seed,
                ..plan.config
            };
            let mut config: Array<_, Config> = self.map_array(names::CONFIG)?;
            config.set(0, value, 0).map_err(map_err(names::CONFIG))?;
        }

        // Targets first: a table slot may only point at a written target.
        let old_targets: HashMap<u32, TargetInfo> = old
            .map(|o| o.targets.iter().map(|t| (t.id, t.info)).collect())
            .unwrap_or_default();
        let (ids, infos): (Vec<u32>, Vec<TargetInfo>) = plan
            .targets
            .iter()
            .filter(|t| old_targets.get(&t.id) != Some(&t.info))
            .map(|t| (t.id, t.info))
            .unzip();
        self.update_batch(names::TARGETS, &ids, &infos)?;
        report.targets_written += ids.len();

        // Groups: settings, then a complete new table swapped in at once.
        let old_groups: HashMap<u32, (&GroupInfo, &Table)> = old
            .map(|o| {
                o.groups
                    .iter()
                    .map(|g| (g.id, (&g.info, &g.table)))
                    .collect()
            })
            .unwrap_or_default();
        // New tables are built first and swapped in with one batch update:
        // the kernel waits for an RCU grace period after each update of an
        // array of maps (so that no program still uses the old table when
        // the call returns), and one wait per batch instead of one per table
        // makes the first apply of 1,000 groups take milliseconds, not
        // seconds.
        let mut swaps: Vec<(u32, MapData)> = Vec::new();
        for g in &plan.groups {
            let same = old_groups.get(&g.id);
            if same.map(|(info, _)| **info) != Some(g.info) {
                let mut groups: Array<_, GroupInfo> = self.map_array(names::GROUPS)?;
                groups
                    .set(g.id, g.info, 0)
                    .map_err(map_err(names::GROUPS))?;
            }
            if same.map(|(_, table)| *table) != Some(&g.table) {
                swaps.push((g.id, build_table(&g.table)?));
            }
        }
        if !swaps.is_empty() {
            let outer_map = self
                .ebpf
                .map_mut(names::GROUP_TABLES)
                .ok_or(DataplaneError::MissingMap(names::GROUP_TABLES))?;
            let keys: Vec<u32> = swaps.iter().map(|(id, _)| *id).collect();
            let fds: Vec<u32> = swaps
                .iter()
                .map(|(_, table)| table.fd().as_fd().as_raw_fd() as u32)
                .collect();
            let outer_fd = match outer_map {
                aya::maps::Map::ArrayOfMaps(data) => Some(data.fd().as_fd()),
                _ => None,
            }
            .ok_or(DataplaneError::MissingMap(names::GROUP_TABLES))?;
            if let Err(e) = sys::update_batch(outer_fd, &keys, &fds) {
                // Kernels without batch updates of arrays of maps: one at a
                // time.
                tracing::debug!(
                    "batch update of {}: {e}; one at a time",
                    names::GROUP_TABLES
                );
                let mut outer: ArrayOfMaps<&mut MapData, MapData> =
                    ArrayOfMaps::try_from(outer_map).map_err(map_err(names::GROUP_TABLES))?;
                for (id, table) in &swaps {
                    outer
                        .set(*id, table, 0)
                        .map_err(map_err(names::GROUP_TABLES))?;
                }
            }
            report.tables_swapped += swaps.len();
        }

        // Listeners: add and change, then remove. The port filter covers the
        // old and the new listeners while both may be in the map, then only
        // the new ones.
        let new_listeners: HashMap<ListenerKey, ListenerInfo> =
            plan.listeners.iter().map(|l| (l.key, l.info)).collect();
        let old_listeners: HashMap<ListenerKey, ListenerInfo> = old
            .map(|o| o.listeners.iter().map(|l| (l.key, l.info)).collect())
            .unwrap_or_default();
        let old_ports = listener_ports(old_listeners.keys());
        let new_ports = listener_ports(new_listeners.keys());
        let both_ports = listener_ports(old_listeners.keys().chain(new_listeners.keys()));
        if old.is_none() || both_ports != old_ports {
            self.set_listener_ports(&both_ports)?;
        }
        // Listeners by id: a listener's slot holds its key before the key is
        // added; slots of ids no listener has any more are cleared after the
        // removals (all of them when the maps' content is unknown).
        let new_slots = listener_slots(&new_listeners);
        let old_slots = listener_slots(&old_listeners);
        let mut by_id: Array<_, ListenerSlot> = self.map_array(names::LISTENERS_BY_ID)?;
        for (&id, slot) in &new_slots {
            if old_slots.get(&id) != Some(slot) {
                by_id
                    .set(id, slot, 0)
                    .map_err(map_err(names::LISTENERS_BY_ID))?;
            }
        }
        let mut listeners: BpfHashMap<_, ListenerKey, ListenerInfo> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::LISTENERS)
                .ok_or(DataplaneError::MissingMap(names::LISTENERS))?,
        )
        .map_err(map_err(names::LISTENERS))?;
        for (key, info) in &new_listeners {
            if old_listeners.get(key) != Some(info) {
                listeners
                    .insert(key, info, 0)
                    .map_err(map_err(names::LISTENERS))?;
                report.listeners_written += 1;
            }
        }
        for key in old_listeners
            .keys()
            .filter(|k| !new_listeners.contains_key(k))
        {
            listeners.remove(key).map_err(map_err(names::LISTENERS))?;
            report.listeners_removed += 1;
        }
        if new_ports != both_ports {
            self.set_listener_ports(&new_ports)?;
        }
        let stale: Vec<u32> = match old {
            Some(_) => old_slots.into_keys().collect(),
            None => (1..MAX_LISTENERS).collect(),
        };
        let mut by_id: Array<_, ListenerSlot> = self.map_array(names::LISTENERS_BY_ID)?;
        for id in stale.into_iter().filter(|id| !new_slots.contains_key(id)) {
            by_id
                .set(id, ListenerSlot::default(), 0)
                .map_err(map_err(names::LISTENERS_BY_ID))?;
        }
        // Flow-cache slots name a listener and its group without checking
        // them: any change of the listeners invalidates them all, after the
        // maps are written.
        if old.is_none_or(|o| o.listeners != plan.listeners) {
            self.invalidate_flow_cache()?;
        }

        // Targets that left the policy: no longer usable, so their flows are
        // re-selected.
        if let Some(old) = old {
            let ids: HashSet<u32> = plan.targets.iter().map(|t| t.id).collect();
            let gone: Vec<u32> = old
                .targets
                .iter()
                .map(|t| t.id)
                .filter(|id| !ids.contains(id))
                .collect();
            self.update_batch(
                names::TARGETS,
                &gone,
                &vec![TargetInfo::default(); gone.len()],
            )?;
            report.targets_written += gone.len();
        }
        Ok(report)
    }

    /// Sets `keys[i]` to `values[i]` in the array `name`, in one call
    /// (100,000 targets: milliseconds instead of a syscall each).
    fn update_batch<V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[u32],
        values: &[V],
    ) -> Result<(), DataplaneError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self
            .ebpf
            .map(name)
            .and_then(map_data)
            .ok_or(DataplaneError::MissingMap(name))?;
        sys::update_batch(map.fd().as_fd(), keys, values).map_err(|e| DataplaneError::Map {
            name,
            source: MapError::IoError(e),
        })
    }

    fn set_listener_ports(&mut self, ports: &ListenerPorts) -> Result<(), DataplaneError> {
        let mut map: Array<_, ListenerPorts> = self.map_array(names::LISTENER_PORTS)?;
        map.set(0, ports, 0).map_err(map_err(names::LISTENER_PORTS))
    }

    fn map_array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or(DataplaneError::MissingMap(name))?,
        )
        .map_err(map_err(name))
    }

    /// Global counters, summed over CPUs, indexed by `Counter` (derived ones
    /// included).
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::COUNTERS)
                .ok_or(DataplaneError::MissingMap(names::COUNTERS))?,
        )
        .map_err(map_err(names::COUNTERS))?;
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

    /// The round-robin position of a group (`GROUP_RR`: new flows the
    /// group's order has handed out).
    pub fn round_robin_position(&self, group_id: u32) -> Result<u64, DataplaneError> {
        let map: Array<&MapData, u64> = Array::try_from(
            self.ebpf
                .map(names::GROUP_RR)
                .ok_or(DataplaneError::MissingMap(names::GROUP_RR))?,
        )
        .map_err(map_err(names::GROUP_RR))?;
        map.get(&group_id, 0).map_err(map_err(names::GROUP_RR))
    }

    /// Every sticky session (`STICKY`), in no particular order.
    pub fn sticky_sessions(&self) -> Result<Vec<(StickyKey, StickyState)>, DataplaneError> {
        let map: BpfHashMap<&MapData, StickyKey, StickyState> = BpfHashMap::try_from(
            self.ebpf
                .map(names::STICKY)
                .ok_or(DataplaneError::MissingMap(names::STICKY))?,
        )
        .map_err(map_err(names::STICKY))?;
        map.iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::STICKY))
    }

    /// A client's sticky session (`STICKY`), if it has one.
    pub fn sticky_session(&self, key: &StickyKey) -> Result<Option<StickyState>, DataplaneError> {
        let map: BpfHashMap<&MapData, StickyKey, StickyState> = BpfHashMap::try_from(
            self.ebpf
                .map(names::STICKY)
                .ok_or(DataplaneError::MissingMap(names::STICKY))?,
        )
        .map_err(map_err(names::STICKY))?;
        match map.get(key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::STICKY)(e)),
        }
    }

    /// Every flow-table entry (both tables; IPv4 keys widened to `FlowKey`).
    /// One syscall per entry: for tests and small tables.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowState)>, DataplaneError> {
        let open = |name: &'static str| self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name));
        let v4: BpfHashMap<&MapData, FlowKeyV4, FlowState> =
            BpfHashMap::try_from(open(names::FLOWS_V4)?).map_err(map_err(names::FLOWS_V4))?;
        let v6: BpfHashMap<&MapData, FlowKey, FlowState> =
            BpfHashMap::try_from(open(names::FLOWS_V6)?).map_err(map_err(names::FLOWS_V6))?;
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
    /// next packet misses as the reference model expects. For tests; false
    /// if it had none.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        let removed = self.remove_flow_entry(key)?;
        if removed {
            self.invalidate_flow_cache()?;
        }
        Ok(removed)
    }

    /// The flow cache's slot for `key` (its index and content, whichever
    /// flow it holds), or `None` when the cache is off. For tests.
    pub fn flow_cache_slot(
        &self,
        key: &FlowKey,
    ) -> Result<Option<(u32, FlowCacheSlot)>, DataplaneError> {
        if self.cache.mask == 0 {
            return Ok(None);
        }
        let index = lb_common::flow_cache_slot(key, self.cache.seed, self.cache.mask);
        let map: Array<&MapData, FlowCacheSlot> = Array::try_from(
            self.ebpf
                .map(names::FLOW_CACHE)
                .ok_or(DataplaneError::MissingMap(names::FLOW_CACHE))?,
        )
        .map_err(map_err(names::FLOW_CACHE))?;
        let slot = map.get(&index, 0).map_err(map_err(names::FLOW_CACHE))?;
        Ok(Some((index, slot)))
    }

    /// Slots of the flow cache; 0 when it is off.
    pub fn flow_cache_slots(&self) -> u32 {
        if self.cache.mask == 0 {
            0
        } else {
            self.cache.slots()
        }
    }

    /// The flow cache's current generation (`Config::flow_cache_gen`).
    pub fn flow_cache_generation(&self) -> Result<u32, DataplaneError> {
        Ok(self.config()?.flow_cache_gen)
    }

    /// Deletes a flow's entry and nothing else, exactly as the kernel's LRU
    /// evicts one: the flow cache may still serve the flow for up to
    /// `FLOW_TOUCH_NS` (README "Flow cache"). For tests; false if it had none.
    pub fn remove_flow_entry(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        let removed = if key.family == lb_common::FAMILY_V4 {
            let mut map: BpfHashMap<&mut MapData, FlowKeyV4, FlowState> = BpfHashMap::try_from(
                self.ebpf
                    .map_mut(names::FLOWS_V4)
                    .ok_or(DataplaneError::MissingMap(names::FLOWS_V4))?,
            )
            .map_err(map_err(names::FLOWS_V4))?;
            map.remove(&FlowKeyV4::new(key))
        } else {
            let mut map: BpfHashMap<&mut MapData, FlowKey, FlowState> = BpfHashMap::try_from(
                self.ebpf
                    .map_mut(names::FLOWS_V6)
                    .ok_or(DataplaneError::MissingMap(names::FLOWS_V6))?,
            )
            .map_err(map_err(names::FLOWS_V6))?;
            map.remove(key)
        };
        let name = if key.family == lb_common::FAMILY_V4 {
            names::FLOWS_V4
        } else {
            names::FLOWS_V6
        };
        match removed {
            Ok(()) => Ok(true),
            // A delete of a missing key fails with ENOENT.
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Kernel memory charged to the data plane's maps, the group tables
    /// swapped in (inner maps, held by `GROUP_TABLES`) included.
    pub fn map_memory(&self) -> Result<u64, DataplaneError> {
        let mut total = 0;
        for (name, map) in self.ebpf.maps() {
            if let Some(bytes) = map_data(map).and_then(memlock) {
                total += bytes;
            } else {
                tracing::debug!("map {name}: no memlock figure");
            }
        }
        let name = names::GROUP_TABLES;
        let outer: ArrayOfMaps<&MapData, MapData> = ArrayOfMaps::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap(name))?,
        )
        .map_err(map_err(name))?;
        for group in self.applied.iter().flat_map(|plan| &plan.groups) {
            match outer.get(&group.id, 0) {
                Ok(table) => total += memlock(&table).unwrap_or(0),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(total)
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
        let map: PerCpuArray<&MapData, Stats> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap(name))?,
        )
        .map_err(map_err(name))?;
        let values = map.get(&id, 0).map_err(map_err(name))?;
        Ok(values.iter().fold(Stats::default(), |acc, s| Stats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            new_flows: acc.new_flows + s.new_flows,
        }))
    }
}

/// Listener id -> its slot in `LISTENERS_BY_ID`.
fn listener_slots(listeners: &HashMap<ListenerKey, ListenerInfo>) -> HashMap<u32, ListenerSlot> {
    listeners
        .iter()
        .map(|(key, info)| {
            let slot = ListenerSlot {
                key: *key,
                group_id: info.group_id,
            };
            (info.listener_id, slot)
        })
        .collect()
}

/// The port filter that lets the packets of `listeners` through.
fn listener_ports<'a>(listeners: impl Iterator<Item = &'a ListenerKey>) -> ListenerPorts {
    let mut ports = ListenerPorts::EMPTY;
    for key in listeners {
        ports.insert(key.proto, key.port_be);
    }
    ports
}

/// A complete group table as a new inner map: the plan's table holds the
/// words in the layout of `lb_common::table` already. The map is created
/// memory-mappable and filled through the mapping (one copy instead of one
/// syscall per element), and is not visible to the program until the caller
/// swaps it in.
fn build_table(table: &Table) -> Result<MapData, DataplaneError> {
    let name = names::GROUP_TABLES;
    let words = table.words();
    let entries = lb_common::table::elements(words[0], words[1]);
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<GroupTableElement>() as u32,
        entries,
        GROUP_TABLE_FLAGS,
    );
    let map = MapData::create(obj, "lb_group_table", None).map_err(map_err(name))?;
    // Elements of 8 bytes are stored back to back, so the words are too.
    const _: () = assert!(size_of::<GroupTableElement>() == ARRAY_ELEM_STRIDE);
    let mut mapping = mmap::Mapping::new(map.fd().as_fd(), entries as usize * ARRAY_ELEM_STRIDE)
        .map_err(|e| DataplaneError::Map {
            name,
            source: MapError::IoError(e),
        })?;
    mapping.write_u32s(0, words);
    Ok(map)
}

/// An array map stores each value in a slot rounded up to 8 bytes.
const ARRAY_ELEM_STRIDE: usize = 8;

/// The one place that needs `unsafe` in userspace: mapping a BPF array.
#[allow(unsafe_code)]
mod mmap {
    use std::{
        io,
        os::fd::{AsRawFd as _, BorrowedFd},
        ptr::NonNull,
    };

    pub struct Mapping {
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the mapping is shared memory that lives until `drop`; all
    // access after `new` goes through `write_u32s` (`&mut self`) or atomics.
    unsafe impl Send for Mapping {}
    // SAFETY: as above; `&self` only hands out atomics.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// Maps the first `len` bytes of the mmap-able BPF array `fd`.
        pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
            // SAFETY: a fresh shared mapping of a map the kernel sized to at
            // least `len` bytes (max_entries x 8); no other mapping exists.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let ptr =
                NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
            Ok(Mapping { ptr, len })
        }

        /// Writes `values` back to back from byte `at` (a multiple of 4).
        pub fn write_u32s(&mut self, at: usize, values: &[u32]) {
            assert!(at.is_multiple_of(4), "unaligned write");
            let end = values.len().checked_mul(4).and_then(|n| n.checked_add(at));
            assert!(
                end.is_some_and(|end| end <= self.len),
                "write past the mapping"
            );
            // SAFETY: `at + 4 * values.len() <= len` (checked), the mapping
            // is writable and page aligned, so `at` is 4-byte aligned, and it
            // does not overlap `values` (memory of this process's own).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    values.as_ptr(),
                    self.ptr.as_ptr().add(at).cast::<u32>(),
                    values.len(),
                )
            };
        }
    }

    impl Mapping {
        /// The `index`th 8-byte element as an atomic (`None` past the end).
        pub fn atomic_i64(&self, index: usize) -> Option<&std::sync::atomic::AtomicI64> {
            let at = index.checked_mul(8)?;
            if at + 8 > self.len {
                return None;
            }
            // SAFETY: `at + 8 <= len` (checked), the mapping is page aligned
            // so the element is 8-byte aligned, it lives as long as `self`,
            // and every other writer (the data plane) uses atomic operations.
            Some(unsafe {
                std::sync::atomic::AtomicI64::from_ptr(self.ptr.as_ptr().add(at).cast::<i64>())
            })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly what `new` mapped; nothing refers to it after.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}
