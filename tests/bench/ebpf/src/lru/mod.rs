//! THE FROZEN FLOOR: main's pipeline and maps as they were at commit
//! feb5154 (lb-ebpf/src/pipeline/), before lb's own flow table replaced the
//! kernel LRU flow maps (`FLOWS_V4`, `FLOWS_V6`) and the flow cache
//! (`FLOW_CACHE`). Benchmark-only: `lb-bench` measures the flow table
//! against this design in every run (programs `lru`, `lru_new_flow`,
//! `lru_scrambled`), with the same policy and fixtures. The files of this
//! directory are copied unchanged but for their `use` of lb-common, which
//! goes through `common` (lb-common's types as they were then); do not fix
//! or improve them.
//!
//! Main's description: the load balancer's pipeline and maps: parse the
//! flow, find its listener, select a target, rewrite and transmit.
//!
//! The flow table is read before the listener is known: an entry names the
//! listener its flow was created under, which `LISTENERS_BY_ID` confirms
//! without a hash lookup. Before the flow table comes the flow cache
//! (`cache`), which repeats the table's entries for packets that would only
//! read them.

mod atomic;
mod cache;
mod choose;
pub mod common;
mod counters;
mod lookup;
mod parse;
mod rewrite;
mod select;
mod time;

pub use time::clock;

use self::common::{
    BPF_F_MMAPABLE, Config, Counter, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_STICKY_TABLE_SIZE,
    FlowCacheSlot, FlowKey, FlowKeyV4, FlowState, GROUP_TABLE_FLAGS, GroupInfo, GroupName,
    GroupTableElement, ListenerInfo, ListenerKey, ListenerPorts, ListenerSlot, MAX_GROUPS,
    MAX_LISTENERS, MAX_TARGETS, Stats, StickyKey, StickyState, TargetInfo, TargetRecord,
};
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};

/// (VIP, protocol, port) -> listener id and group id.
#[btf_map]
pub(crate) static LISTENERS: HashMap<ListenerKey, ListenerInfo, { MAX_LISTENERS as usize }> =
    HashMap::new();

/// Which (protocol, port) pairs have a listener: checked before `LISTENERS`.
#[btf_map]
pub(crate) static LISTENER_PORTS: Array<ListenerPorts, 1> = Array::new();

/// Listener id -> its (VIP, protocol, port) and group: confirms the listener
/// a flow-table entry names without a hash lookup.
#[btf_map]
pub(crate) static LISTENERS_BY_ID: Array<ListenerSlot, { MAX_LISTENERS as usize }> = Array::new();

/// Group id -> hash settings.
#[btf_map]
static GROUPS: Array<GroupInfo, { MAX_GROUPS as usize }> = Array::new();

/// A group's table, laid out as `lb_common::table` says (slot count,
/// header, then its members and 16-bit slots, or its slots' target ids),
/// two words an element (`GroupTableElement`). Inner maps differ in size
/// (BPF_F_INNER_MAP); the loader builds a new one and swaps it in with one
/// outer update.
pub(crate) type GroupTable = Array<GroupTableElement, 1, { GROUP_TABLE_FLAGS as usize }>;

/// Group id -> that group's table.
#[btf_map]
static GROUP_TABLES: ArrayOfMaps<GroupTable, { MAX_GROUPS as usize }> = ArrayOfMaps::new();

/// Target id -> MAC and flags. Id 0 is never written (fails closed).
#[btf_map]
static TARGETS: Array<TargetInfo, { MAX_TARGETS as usize }> = Array::new();

/// IPv4 flow -> target: every packet of a flow goes where its first one went.
/// IPv4 flows have a table of their own because a 16-byte key hashes and
/// compares faster than the 40-byte `FlowKey`. The loader sizes it from the
/// policy (`flow_table.max_flows`).
///
/// One LRU list for all CPUs (no `BPF_F_NO_COMMON_LRU`): with per-CPU lists
/// the kernel splits the entries evenly between the possible CPUs, so the
/// flows one CPU sees (a single-queue NIC, an uneven RSS spread) could only
/// fill max/nCPUs entries before evicting live ones; with one list they
/// fill all of them (golden `sweeping_a_full_flow_table_takes_bounded_time`).
#[btf_map]
static FLOWS_V4: LruHashMap<FlowKeyV4, FlowState, { DEFAULT_FLOW_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// IPv6 flow -> target.
#[btf_map]
static FLOWS_V6: LruHashMap<FlowKey, FlowState, { DEFAULT_FLOW_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// The flow cache (`cache`): slots of 64 bytes, a power of two of them; the
/// loader sizes it (`Config::flow_cache_mask`). Memory-mappable only for its
/// layout: the values of such an array start on a page, so every slot is one
/// cache line.
#[btf_map]
static FLOW_CACHE: Array<FlowCacheSlot, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Global settings (element 0).
#[btf_map]
static CONFIG: Array<Config, 1> = Array::new();

/// Global counters, indexed by `lb_common::Counter`.
#[btf_map]
static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Per listener id.
#[btf_map]
static LISTENER_STATS: PerCpuArray<Stats, { MAX_LISTENERS as usize }> = PerCpuArray::new();

/// Per target id.
#[btf_map]
static TARGET_STATS: PerCpuArray<Stats, { MAX_TARGETS as usize }> = PerCpuArray::new();

/// Active flows per target id: +1 when a flow starts, -1 when it ends (see
/// `lb_common::flow_flags::COUNTED`). Shared by all CPUs: atomic adds. The
/// loader recounts from the flow tables and corrects drift with atomic stores
/// through a memory mapping (hence mmap-able).
#[btf_map]
static TARGET_ACTIVE: Array<i64, { MAX_TARGETS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Round-robin position per group id (shared by all CPUs: atomic adds, so
/// the weighted order holds across CPUs).
#[btf_map]
static GROUP_RR: Array<u64, { MAX_GROUPS as usize }> = Array::new();

/// Sticky sessions: (group, client IP) -> target until a deadline.
#[btf_map]
static STICKY: LruHashMap<StickyKey, StickyState, { DEFAULT_STICKY_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// Target id -> the target's identity, and group id -> the group's name:
/// the loader's record of what the ids in the maps above name, kept with
/// them so that a loader adopting this data plane knows it. The program never
/// reads them.
#[btf_map]
static TARGET_IDS: Array<TargetRecord, { MAX_TARGETS as usize }> = Array::new();

#[btf_map]
static GROUP_NAMES: Array<GroupName, { MAX_GROUPS as usize }> = Array::new();

/// The verdict for one frame.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Result<u32, u32> {
    let mut flow = FlowKey::default();
    let tcp_flags = parse::flow(ctx, &mut flow)?;
    // Traffic for no listener port stops here, before the flow cache: the
    // host's own packets never pay a probe of its array (a likely cache
    // miss, since their slots are never filled).
    lookup::listener_port(&flow)?;
    // Element 0 of an array map always exists; read once per packet (the
    // flow cache's settings, the clock offset, the source MAC).
    let Some(config) = CONFIG.get(0) else {
        counters::count(Counter::Dropped);
        return Err(xdp_action::XDP_DROP);
    };
    let cache = cache::Settings::read(config);
    let now = time::now_ns(config);
    if select::may_use_cache(tcp_flags)
        && let Some(hit) = cache::get(&flow, &cache, now)
        && let Some(info) = select::usable(hit.target_id, hit.group_id as u32)
    {
        counters::count(Counter::FlowHit);
        let listener = ListenerInfo {
            listener_id: hit.listener_id as u32,
            group_id: hit.group_id as u32,
        };
        let target = select::Selected {
            id: hit.target_id,
            info,
            new_flow: false,
        };
        return forward(ctx, &listener, &target, config);
    }
    let entry = select::entry(&flow);
    let listener = lookup::listener(&flow, entry.as_ref().map(|e| e.listener_hint()))?;
    let target = select::target(&flow, tcp_flags, &listener, entry, &cache, now)?;
    forward(ctx, &listener, &target, config)
}

/// Counts the packet and sends it to its target.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    listener: &ListenerInfo,
    target: &select::Selected,
    config: &Config,
) -> Result<u32, u32> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    counters::add_stats(&LISTENER_STATS, listener.listener_id, len, target.new_flow);
    counters::add_stats(&TARGET_STATS, target.id, len, target.new_flow);
    rewrite::to_target(ctx, target.info, config)?;
    // `Forwarded` is derived (FlowHit + NewFlow, counted by `select` and `run`).
    Ok(xdp_action::XDP_TX)
}
