//! The frozen floor's shared types: lb-common as main had it at commit
//! feb5154 (the kernel LRU flow maps and the flow cache), for the copy of
//! main's pipeline in this directory. Everything lb-common still has is
//! re-exported unchanged (listeners, groups, tables, targets, hashes: the
//! policy maps have the same layout in both designs); what the flow table
//! removed or changed is copied here as it was: the flow maps' key and
//! value, the flow cache's slot and its hash, the listener port bitmap
//! (`ListenerPorts`: lb now has a filter of listener keys in its place),
//! `Config` (same size and offsets, the flow cache's fields where the flow
//! table's are now) and `Counter` (ten counters: no `FlowEvicted`).
//!
//! Benchmark-only code: do not fix or improve it, it is the floor `lb`'s
//! flow table is measured against. The benchmark (`lb-bench`) includes this
//! file too, to write `Config` and read the counters.
#![allow(dead_code)]

pub use lb_common::*;

/// Key of the IPv4 flow table: the 5-tuple of an IPv4 [`FlowKey`] in 16
/// bytes. The kernel hashes and compares whole keys, so a key this size makes
/// a lookup cheaper than one of 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    // Padding in naturally aligned pieces: the eBPF build allows unaligned
    // accesses, and a `[u8; 3]` here became an unaligned 2-byte stack store,
    // which the verifier rejects.
    pub _pad0: u8,
    pub _pad1: u16,
}

impl FlowKeyV4 {
    /// The IPv4 part of `key` (address word 0; the other words are zero).
    #[inline(always)]
    pub const fn new(key: &FlowKey) -> FlowKeyV4 {
        FlowKeyV4 {
            src_be: key.src_be[0],
            dst_be: key.dst_be[0],
            src_port_be: key.src_port_be,
            dst_port_be: key.dst_port_be,
            proto: key.proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// What the flow table remembers of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub target_id: u32,
    /// The listener the flow was created under. While that listener id still
    /// has the flow's (VIP, protocol, port) in `LISTENERS_BY_ID`, the flow's
    /// packets need no `LISTENERS` hash lookup.
    pub listener_id: u16,
    /// [`flow_flags`] bits: what the client side has shown, and whether the
    /// flow counts in `TARGET_ACTIVE`.
    pub flags: u16,
    /// Data-plane time ([`Config::time_offset_ns`] included) of the packet
    /// that created the entry.
    pub created_ns: u64,
    /// Data-plane time of the flow's last packet, refreshed at most once per
    /// [`FLOW_TOUCH_NS`] so that an established flow does not write its
    /// entry on every packet.
    pub last_seen_ns: u64,
}

/// Bits of [`FlowState::flags`].
pub mod flow_flags {
    /// The client sent a SYN (the flow was seen from its start).
    pub const SYN: u16 = 1 << 0;
    /// The client sent a FIN: the flow ends after the group's FIN timeout
    /// without packets.
    pub const FIN: u16 = 1 << 1;
    /// The client sent a RST: the flow has ended (the entry lingers so that
    /// stray packets still follow it).
    pub const RST: u16 = 1 << 2;
    /// The flow is counted in its target's `TARGET_ACTIVE` slot (set when
    /// counted, cleared when uncounted, so a flow is never counted twice).
    pub const COUNTED: u16 = 1 << 3;
}

/// How stale [`FlowState::last_seen_ns`] may get before a packet refreshes it.
pub const FLOW_TOUCH_NS: u64 = 1_000_000_000;

/// One slot of the flow cache (`FLOW_CACHE`): a copy of one flow's
/// flow-table entry that a packet may use instead of the LRU hash lookup.
/// Direct-mapped ([`flow_cache_slot`]), one cache line, shared by all CPUs.
///
/// The data plane writes a slot after every packet that went through the
/// flow table and left an entry there, so a slot always repeats what the
/// table said last; a packet uses it only while that is what the table would
/// say again: no SYN, FIN or RST, data-plane time at most `until_ns` (the
/// entry's `last_seen_ns` + [`FLOW_TOUCH_NS`], before which no entry can
/// expire or needs a refresh), and `gen` equal to [`Config::flow_cache_gen`],
/// which the loader bumps whenever it deletes a live entry itself or changes
/// the listeners.
///
/// Writers take the slot by moving `seq_gen`'s low half from even to odd
/// with a compare-and-exchange (a writer that finds it odd skips: it is only
/// a cache), fill it, and store the next even value with the generation in
/// the high half. Readers check that `seq_gen` is even and unchanged around
/// their reads (a sequence lock: sound where loads are not reordered with
/// loads nor stores with stores, x86-64; the loader enables the cache there
/// only).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    /// Low 32 bits: sequence (odd while a writer fills the slot); high 32
    /// bits: the [`Config::flow_cache_gen`] the slot was written under.
    pub seq_gen: u64,
    pub target_id: u32,
    /// The flow's listener and its group, as the listener maps said when
    /// the slot was written (the loader bumps the generation whenever they
    /// change).
    pub listener_id: u16,
    pub group_id: u16,
    /// Data-plane time until which the slot may be used.
    pub until_ns: u64,
    pub key: FlowKey,
}

/// The flow cache's slot for `key`: `mask` is the slot count - 1 (a power of
/// two). The key's five 8-byte words (source address, destination address,
/// ports with protocol and family), each half of an IPv6 address folded
/// onto the other, multiplied by odd constants and mixed once: a handful of
/// instructions, since every packet of an established flow pays for it. A
/// slot is only a cache, so unlike [`hash::flow_hash`] it need not agree
/// across instances: the per-run `seed` keeps clients from choosing their
/// collisions.
#[inline(always)]
pub const fn flow_cache_slot(key: &FlowKey, seed: u64, mask: u32) -> u32 {
    let src = ((key.src_be[1] as u64) << 32 | key.src_be[0] as u64)
        ^ ((key.src_be[3] as u64) << 32 | key.src_be[2] as u64);
    let dst = ((key.dst_be[1] as u64) << 32 | key.dst_be[0] as u64)
        ^ ((key.dst_be[3] as u64) << 32 | key.dst_be[2] as u64);
    let rest = (key.src_port_be as u64)
        | (key.dst_port_be as u64) << 16
        | (key.proto as u64) << 32
        | (key.family as u64) << 40;
    let mut h = (src ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ dst.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ rest.wrapping_mul(0x1656_67b1_9e37_79f9);
    h ^= h >> 32;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h >> 32) as u32 & mask
}

/// First stage of the listener lookup (array of one element): one bit per
/// (protocol, destination port) that some listener uses. A packet whose bit is
/// clear is not addressed to a listener, which settles most traffic that is
/// not ours without a hash lookup. It may hold more bits than listeners (the
/// loader sets bits before it adds listeners and clears them after it removes
/// them), never fewer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerPorts {
    /// Bit [`ListenerPorts::bit`] of the 2 x 65536.
    pub words: [u64; 2048],
}

impl ListenerPorts {
    pub const EMPTY: ListenerPorts = ListenerPorts { words: [0; 2048] };

    /// The bit of (protocol, port): UDP ports after the TCP ones; the port is
    /// taken as stored (`port_be`, wire order), so the data plane never swaps.
    #[inline(always)]
    pub const fn bit(proto: u8, port_be: u16) -> usize {
        (((proto == PROTO_UDP) as usize) << 16) | port_be as usize
    }

    #[inline(always)]
    pub const fn contains(&self, proto: u8, port_be: u16) -> bool {
        let bit = Self::bit(proto, port_be);
        self.words[bit >> 6] & (1 << (bit & 63)) != 0
    }

    pub fn insert(&mut self, proto: u8, port_be: u16) {
        let bit = Self::bit(proto, port_be);
        self.words[bit >> 6] |= 1 << (bit & 63);
    }
}

impl Default for ListenerPorts {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Global settings (array of one element).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Source MAC of forwarded frames: the interface's own MAC.
    pub src_mac: [u8; 6],
    pub _pad: [u8; 2],
    pub flags: u32,
    pub _pad2: u32,
    /// Added to the kernel clock to make the data-plane time of flows and
    /// sticky sessions. 0 in production; tests set it to drive time.
    pub time_offset_ns: u64,
    /// Length of a kernel tick (jiffy) in ns: the data-plane clock is
    /// `jiffies * ns_per_tick + time_offset_ns`. Written by the loader (which
    /// measures the kernel's HZ), not by the policy compiler; 0 stops the
    /// clock (flows and sticky sessions then never time out).
    pub ns_per_tick: u64,
    /// Slots of `FLOW_CACHE` - 1 (a power of two - 1); 0 turns the cache
    /// off. Written by the loader, like the fields below.
    pub flow_cache_mask: u32,
    /// Generation of the valid cache slots ([`FlowCacheSlot`]).
    pub flow_cache_gen: u32,
    /// Seed of [`flow_cache_slot`], random per data plane.
    pub flow_cache_seed: u64,
    /// [`LAYOUT_VERSION`] of the build that created the maps; 0 until the
    /// loader first writes them. Only the loader reads it.
    pub layout: u32,
    pub _pad3: u32,
    /// Random per data plane, chosen when its maps are created: the runtime
    /// state the loader keeps on disk names the data plane it belongs to.
    pub instance: u64,
}

/// Global counters: one per-CPU slot each, indexed by the enum value.
///
/// `Forwarded` is derived, not stored: every forwarded packet is either a
/// flow-table hit or a new flow, so the data plane counts only those two and
/// readers report `forwarded = flow_hit + new_flow` (one counter update per
/// forwarded packet instead of two). Its slot stays zero.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets not addressed to a listener, passed to the kernel untouched.
    Passed = 0,
    /// Packets forwarded to a target (XDP_TX). Derived: `FlowHit + NewFlow`.
    Forwarded = 1,
    /// Packets dropped (no usable target for a listener's flow).
    Dropped = 2,
    /// Truncated or inconsistent headers (passed to the kernel untouched).
    Malformed = 3,
    /// Listener packets whose table slot held no usable target (dropped).
    NoTarget = 4,
    /// IP fragments (passed to the kernel untouched for now).
    Fragment = 5,
    /// Packets of new flows forwarded (flow table miss or re-selection).
    NewFlow = 6,
    /// Packets forwarded to the target their flow-table entry names.
    FlowHit = 7,
    /// Flow table entries whose target was no longer usable (re-selected).
    FlowReselected = 8,
    /// Flow table inserts that failed.
    FlowInsertFailed = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Passed,
        Counter::Forwarded,
        Counter::Dropped,
        Counter::Malformed,
        Counter::NoTarget,
        Counter::Fragment,
        Counter::NewFlow,
        Counter::FlowHit,
        Counter::FlowReselected,
        Counter::FlowInsertFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Forwarded => "forwarded",
            Counter::Dropped => "dropped",
            Counter::Malformed => "malformed",
            Counter::NoTarget => "no_target",
            Counter::Fragment => "fragment",
            Counter::NewFlow => "new_flow",
            Counter::FlowHit => "flow_hit",
            Counter::FlowReselected => "flow_reselected",
            Counter::FlowInsertFailed => "flow_insert_failed",
        }
    }

    /// Fills in the derived counters of `values` (indexed by the enum value)
    /// from the stored ones.
    pub fn derive(values: &mut [u64; Self::COUNT as usize]) {
        values[Counter::Forwarded as usize] =
            values[Counter::FlowHit as usize].wrapping_add(values[Counter::NewFlow as usize]);
    }
}

/// Names of the maps only the floor has.
pub mod floor_map_names {
    pub const LISTENER_PORTS: &str = "LISTENER_PORTS";
    pub const FLOWS_V4: &str = "FLOWS_V4";
    pub const FLOWS_V6: &str = "FLOWS_V6";
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
}

const _: () = {
    assert!(core::mem::size_of::<FlowKeyV4>() == 16);
    assert!(core::mem::size_of::<FlowState>() == 24);
    assert!(core::mem::size_of::<FlowCacheSlot>() == 64);
    assert!(core::mem::size_of::<ListenerPorts>() == 16384);
    // The same size as lb's `Config`: one CONFIG layout for both designs.
    assert!(core::mem::size_of::<Config>() == core::mem::size_of::<lb_common::Config>());
    assert!(core::mem::size_of::<Config>() == 64);
    // Listener and group ids fit FlowCacheSlot's u16 fields.
    assert!(MAX_LISTENERS <= 1 << 16 && MAX_GROUPS <= 1 << 16);
};
