//! The load balancer's pipeline and maps, shared by the `lb` program and its
//! benchmark build (`lb_new_flow`, tests/bench/ebpf/src/new_flow.rs, which
//! includes these sources by path): parse the flow, find its listener, select
//! a target, rewrite and transmit.
//!
//! The flow table is read before the listener is known: an entry names the
//! listener its flow was created under, which `LISTENERS_BY_ID` confirms
//! without a hash lookup. The verdict is the same as looking the listener up
//! first (the model in tests/src/model.rs does it in that order).

mod atomic;
mod choose;
mod counters;
mod flows;
mod fragments;
mod icmp;
mod lookup;
mod parse;
mod rewrite;
mod select;
mod time;

pub use time::clock;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    BPF_F_MMAPABLE, Config, Counter, DEFAULT_STICKY_TABLE_SIZE, FRAGMENT_TABLE_SIZE, FlowKey,
    FragmentEntry, GROUP_TABLE_FLAGS, GroupInfo, GroupName, GroupTableElement, ListenerFilter,
    ListenerInfo, ListenerKey, ListenerPorts, ListenerSlot, MAX_GROUPS, MAX_LISTENERS,
    MAX_PORT_PREFIXES, MAX_TARGETS, PortRangeKey, Stats, StickyKey, StickyState, TargetInfo,
    TargetRecord, flow_table::Bucket,
};

/// (VIP, protocol, port) -> listener id and group id.
#[btf_map]
pub(crate) static LISTENERS: HashMap<ListenerKey, ListenerInfo, { MAX_LISTENERS as usize }> =
    HashMap::new();

/// Which (VIP, protocol, port) keys may be a listener's: checked before
/// anything else (`lb_common::ListenerFilter`).
#[btf_map]
pub(crate) static LISTENER_FILTER: Array<ListenerFilter, 1> = Array::new();

/// Listener id -> its (VIP, protocol, port) and group: confirms the listener
/// a flow-table entry names without a hash lookup.
#[btf_map]
pub(crate) static LISTENERS_BY_ID: Array<ListenerSlot, { MAX_LISTENERS as usize }> = Array::new();

/// (VIP, protocol, port prefix) -> the listener of a port range: where a
/// packet whose (VIP, protocol, port) is not in `LISTENERS` is looked up
/// when the filter lets it through.
#[btf_map]
pub(crate) static PORT_RANGES: LpmTrie<PortRangeKey, ListenerInfo, { MAX_PORT_PREFIXES as usize }> =
    LpmTrie::new();

/// Listener id -> its port range (zeros for one port): confirms the
/// listener a flow-table entry names for a port other than the first.
#[btf_map]
pub(crate) static LISTENER_PORTS: Array<ListenerPorts, { MAX_LISTENERS as usize }> = Array::new();

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

/// The flow table (`flows`, `lb_common::flow_table`): every packet of a
/// flow goes where its first one went. One-cache-line buckets, both
/// address families; the loader sizes it from the policy
/// (`flow_table.max_flows`) and sweeps it through a memory mapping.
#[btf_map]
static FLOW_TABLE: Array<Bucket, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

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

/// Datagram -> the target and listener its first fragment went to
/// (`fragments`).
#[btf_map]
static FRAGMENTS: LruHashMap<FlowKey, FragmentEntry, { FRAGMENT_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// (VIP, protocol, port 0) -> the one listener of that VIP and protocol:
/// where a later fragment whose first was not seen goes (`fragments`).
#[btf_map]
static FRAGMENT_LISTENERS: HashMap<ListenerKey, ListenerInfo, { MAX_LISTENERS as usize }> =
    HashMap::new();

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
    let packet = parse::flow(ctx, &mut flow)?;
    if packet.kind == parse::kind::LATER_FRAGMENT {
        return fragments::later(ctx, &mut flow, packet.datagram);
    }
    // Traffic for no listener stops here, before the flow table: the
    // host's own packets never pay a read of its buckets, whatever their
    // port. (A first fragment's datagram is remembered as the host's.)
    lookup::listener_filter(&flow)
        .map_err(|action| fragments::passed(ctx, &mut flow, packet.datagram, action))?;
    // Element 0 of an array map always exists (zeros before the loader's
    // first write, when the empty filter has passed everything above);
    // read once per packet (the flow table's settings, the clock offset,
    // the source MAC). The `None` arm, which the verifier wants, never
    // runs; it would pass, as if `lb` were not there.
    let Some(config) = CONFIG.get(0) else {
        counters::count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    };
    lookup::to_us(ctx, config)?;
    let now = time::now_ns(config);
    // A table that is off (before the loader's first write) or out of
    // reach: the kernel's, as if `lb` were not there.
    let Some(mut probe) = flows::Probe::read(&flow, &flows::Settings::read(config)) else {
        counters::count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    };
    let entry = probe.entry();
    let listener = lookup::listener(&flow, entry.as_ref().map(flows::Entry::listener_hint))
        .map_err(|action| fragments::passed(ctx, &mut flow, packet.datagram, action))?;
    if packet.kind == parse::kind::ICMP_ERROR {
        return icmp::error(ctx, &flow, &listener, entry, config);
    }
    let target = select::target(&flow, packet.tcp_flags, &listener, &mut probe, entry, now)?;
    let verdict = forward(ctx, &listener, &target, config);
    // Last, so that only this is followed twice by the verifier.
    if flow.is_first_fragment() {
        fragments::record(&mut flow, packet.datagram, &listener, &target, now);
    }
    verdict
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
    // `Forwarded` is derived (`Counter::FORWARDING`, counted by the callers).
    Ok(xdp_action::XDP_TX)
}
