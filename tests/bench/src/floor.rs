//! The floor: main's design before `lb`'s own flow table (commit feb5154:
//! kernel LRU hash maps `FLOWS_V4` / `FLOWS_V6` and the flow cache
//! `FLOW_CACHE`), frozen as benchmark-only eBPF code in `ebpf/src/lru/` and
//! built as the programs `lru`, `lru_new_flow` and `lru_scrambled`. Every
//! data-plane figure of `lb` is measured beside it in the same run.
//!
//! The floor runs the same policy: `lb` is loaded with it and applied
//! (`lb_user`'s compile and apply), and the floor's program is loaded over
//! `lb`'s policy maps (listeners, groups, group tables, targets, and the
//! state the pipeline keeps beside flows: listener statistics, active
//! counts, round-robin positions, sticky sessions), which have the same
//! names and layouts in both designs; `lb`'s own program never runs. The
//! floor has its own flow maps, sized as main's loader sized them for the
//! same `max_flows` (each LRU map `max_flows` entries, the flow cache
//! `max_flows` slots rounded up to a power of two, at most 4 Mi), its own
//! counters, its own `CONFIG`, written here from `lb`'s with the flow
//! cache's fields where `lb` now keeps the flow table's, and its own
//! `LISTENER_PORTS` (main's bitmap of listener ports, where `lb` now has a
//! filter of listener keys), written here from the listeners `lb` holds.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::map_names as names;
use lb_user::dataplane::Dataplane;

use crate::maps::{memlock, program_map};

/// lb-common's types as main had them (`ebpf/src/lru/common.rs`).
#[path = "../ebpf/src/lru/common.rs"]
pub mod common;

use common::floor_map_names;

// SAFETY: repr(C), Copy, no implicit padding (sizes asserted in the file).
#[allow(unsafe_code)]
unsafe impl aya::Pod for common::Config {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for common::ListenerPorts {}

/// `lb`'s maps the floor uses as they are: the policy and the state the
/// pipeline keeps beside flows.
const SHARED: [&str; 9] = [
    names::LISTENERS,
    names::LISTENERS_BY_ID,
    names::GROUPS,
    names::GROUP_TABLES,
    names::TARGETS,
    names::LISTENER_STATS,
    names::TARGET_ACTIVE,
    names::GROUP_RR,
    names::STICKY,
];

/// The flow maps of the floor, whose memory is its memory per flow.
pub const FLOW_MAPS: [&str; 3] = [
    floor_map_names::FLOWS_V4,
    floor_map_names::FLOWS_V6,
    floor_map_names::FLOW_CACHE,
];

/// main's flow cache size for a table of `max_flows` (its loader's
/// `FlowCache::for_table`, x86-64): one slot per entry, a power of two,
/// at most 4 Mi.
pub fn cache_slots(max_flows: u32) -> u32 {
    max_flows.clamp(2, 1 << 22).next_power_of_two()
}

/// A loaded floor program with its maps.
pub struct Floor {
    /// `lb` with the policy applied: the owner of the shared maps (its
    /// program never runs).
    _policy: Dataplane,
    ebpf: Ebpf,
    program: &'static str,
    pub max_flows: u32,
    pub cache_slots: u32,
}

/// A directory of pins on the BPF filesystem, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Result<PinDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/lb-bench-floor-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(PinDir(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Floor {
    /// Loads `program` of the floor's `object` for `max_flows` with the
    /// policy `yaml` (applied to `lb`, whose maps it shares).
    pub fn load(object: &[u8], program: &'static str, yaml: &str, max_flows: u32) -> Result<Floor> {
        // `lb`'s own flow table is never used: the smallest will do.
        let mut policy = crate::load(lb_user::EBPF_LB, "lb", yaml, 64)
            .context("loading lb for the floor's policy (run as root)")?;
        let cache_slots = cache_slots(max_flows);
        let mut ebpf = over(policy.program_mut(), object, max_flows, cache_slots)?;
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in the floor's object"))?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("loading the floor's {program}"))?;
        let lb_config = read_lb_config(policy.program_mut())?;
        let mut config: Array<_, common::Config> = Array::try_from(
            ebpf.map_mut(names::CONFIG)
                .context("the floor has no CONFIG")?,
        )?;
        config.set(0, floor_config(&lb_config, cache_slots), 0)?;
        let mut ports: Array<_, common::ListenerPorts> = Array::try_from(
            ebpf.map_mut(floor_map_names::LISTENER_PORTS)
                .context("the floor has no LISTENER_PORTS")?,
        )?;
        ports.set(0, listener_ports(&policy)?, 0)?;
        Ok(Floor {
            _policy: policy,
            ebpf,
            program,
            max_flows,
            cache_slots,
        })
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.program)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    /// The counter named `name` (lb-common's `Counter::name`), summed over
    /// the CPUs; None if the floor has no such counter.
    pub fn counter(&self, name: &str) -> Result<Option<u64>> {
        let Some(c) = common::Counter::ALL.iter().find(|c| c.name() == name) else {
            return Ok(None);
        };
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::COUNTERS)
                .context("the floor has no COUNTERS")?,
        )?;
        let value =
            |c: common::Counter| -> Result<u64> { Ok(map.get(&(c as u32), 0)?.iter().sum()) };
        Ok(Some(match c {
            common::Counter::Forwarded => {
                value(common::Counter::FlowHit)? + value(common::Counter::NewFlow)?
            }
            c => value(*c)?,
        }))
    }

    /// The kernel memory of each of the floor's flow maps (memlock).
    pub fn flow_memory(&self) -> Result<Vec<(&'static str, u64)>> {
        FLOW_MAPS
            .iter()
            .map(|&name| Ok((name, memlock(data(&self.ebpf, name)?)?)))
            .collect()
    }

    /// The floor's flow cache (for its write sequences).
    pub fn flow_cache(&self) -> Result<&MapData> {
        data(&self.ebpf, floor_map_names::FLOW_CACHE)
    }
}

/// The map `name` of `ebpf` itself.
fn data<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    use aya::maps::Map;
    match ebpf.map(name) {
        Some(
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::PerCpuArray(d)
            | Map::ArrayOfMaps(d),
        ) => Ok(d),
        _ => anyhow::bail!("the floor has no map {name} of a known kind"),
    }
}

/// The floor's `object` loaded with the maps of [`SHARED`] taken from the
/// program `lb` (pinned for the load, then unpinned: the floor's program
/// holds them) and its flow maps sized for `max_flows`.
fn over(lb: &Xdp, object: &[u8], max_flows: u32, cache_slots: u32) -> Result<Ebpf> {
    let pins = PinDir::new()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(floor_map_names::FLOWS_V4, max_flows)
        .map_max_entries(floor_map_names::FLOWS_V6, max_flows)
        .map_max_entries(floor_map_names::FLOW_CACHE, cache_slots);
    for name in SHARED {
        let map = program_map(lb, name)?;
        map.pin(pins.path(name))
            .with_context(|| format!("pin {name} in {}", pins.0.display()))?;
        loader.map_pin_path(name, pins.path(name));
    }
    let ebpf = loader.load(object).context("loading the floor's object")?;
    ensure_shared(&ebpf, &pins.0)?;
    Ok(ebpf)
}

/// Checks that the floor's maps of [`SHARED`] are the pinned ones.
fn ensure_shared(ebpf: &Ebpf, pins: &Path) -> Result<()> {
    for name in SHARED {
        let pinned = MapData::from_pin(pins.join(name))?.info()?.id();
        let ours = data(ebpf, name)?.info()?.id();
        ensure!(ours == pinned, "the floor's {name} is not lb's");
    }
    Ok(())
}

/// main's bitmap of the ports of the listeners `lb` holds.
fn listener_ports(lb: &Dataplane) -> Result<common::ListenerPorts> {
    let plan = lb.applied().context("lb holds no plan")?;
    let mut ports = common::ListenerPorts::EMPTY;
    for l in &plan.listeners {
        ports.insert(l.key.proto, l.key.port_be);
    }
    Ok(ports)
}

/// `lb`'s `CONFIG` as its loader wrote it.
fn read_lb_config(lb: &Xdp) -> Result<lb_common::Config> {
    let map = program_map(lb, names::CONFIG)?;
    let array: Array<MapData, lb_common::Config> = Array::try_from(aya::maps::Map::Array(map))?;
    Ok(array.get(&0, 0)?)
}

/// The floor's `CONFIG`: `lb`'s policy fields and tick length, the flow
/// cache's own fields as main's loader wrote them.
fn floor_config(lb: &lb_common::Config, cache_slots: u32) -> common::Config {
    common::Config {
        src_mac: lb.src_mac,
        _pad: lb._pad,
        flags: lb.flags,
        _pad2: lb._pad2,
        time_offset_ns: lb.time_offset_ns,
        ns_per_tick: lb.ns_per_tick,
        flow_cache_mask: cache_slots - 1,
        flow_cache_gen: 0,
        flow_cache_seed: seed(),
        layout: 1,
        _pad3: 0,
        instance: lb.instance,
    }
}

/// A random seed for the flow cache's slots (random per data plane in
/// main).
fn seed() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    match read {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => 0x9e37_79b9_7f4a_7c15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// main's loader: one slot per entry, a power of two, at most 4 Mi.
    #[test]
    fn the_flow_cache_is_sized_as_main_sized_it() {
        assert_eq!(cache_slots(1 << 20), 1 << 20);
        assert_eq!(cache_slots(16_384), 16_384);
        assert_eq!(cache_slots(100_000), 131_072);
        assert_eq!(cache_slots(1), 2);
        assert_eq!(cache_slots(u32::MAX), 1 << 22);
    }

    /// The bytes of the floor's `CONFIG` are lb's but for the flow cache's
    /// fields (where lb keeps the flow table's) and the layout version: the
    /// two `Config`s share their layout, so the floor reads lb's policy
    /// fields where lb wrote them.
    #[test]
    fn the_floor_config_is_lbs_with_the_cache_fields() {
        let lb = lb_common::Config {
            src_mac: [2, 0, 0, 0, 0, 9],
            time_offset_ns: 7,
            ns_per_tick: 4_000_000,
            flow_table_mask: 0xffff,
            flow_table_seed: 0x1234,
            layout: lb_common::LAYOUT_VERSION,
            instance: 99,
            ..Default::default()
        };
        let floor = floor_config(&lb, 1 << 20);
        let bytes = |p: *const u8| {
            // SAFETY: both Configs are 64 bytes of plain integers (asserted
            // in common.rs), read whole.
            #[allow(unsafe_code)]
            unsafe {
                std::slice::from_raw_parts(p, 64).to_vec()
            }
        };
        let (lb_bytes, floor_bytes) = (
            bytes((&lb as *const lb_common::Config).cast()),
            bytes((&floor as *const common::Config).cast()),
        );
        let cache = std::mem::offset_of!(common::Config, flow_cache_mask);
        let layout = std::mem::offset_of!(common::Config, layout);
        assert_eq!(
            cache,
            std::mem::offset_of!(lb_common::Config, flow_table_mask)
        );
        assert_eq!(lb_bytes[..cache], floor_bytes[..cache]);
        assert_eq!(lb_bytes[layout + 8..], floor_bytes[layout + 8..]);
        assert_eq!(floor.flow_cache_mask, (1 << 20) - 1);
        assert_eq!(floor.flow_cache_gen, 0);
        assert_eq!(floor.layout, 1);
    }
}
