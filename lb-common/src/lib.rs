//! Map keys, values and constants shared by the XDP program (`lb-ebpf`) and the
//! loader (`lb-user`). Everything here is `#[repr(C)]`, `Copy`, and free of
//! implicit padding, `bool` and `Option`, so both sides agree on every byte.
//!
//! Byte order: fields ending in `_be` hold bytes exactly as they appear on the
//! wire (network order), loaded into native integers without swapping. An IPv4
//! address uses word 0 of an `[u32; 4]` address; words 1-3 are zero.
#![no_std]

pub mod hash;

/// Address families, as stored in [`FlowKey::family`] and [`ListenerKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Capacity of the listener map (exact VIP, protocol, port entries).
pub const MAX_LISTENERS: u32 = 4096;
/// Capacity of the group maps; group id 0 is never used.
pub const MAX_GROUPS: u32 = 4096;
/// Capacity of the target maps; target id 0 is reserved so that a zeroed
/// table slot fails closed (counted as `NoTarget`).
pub const MAX_TARGETS: u32 = 65536;
/// Default capacity of the flow table (LRU). The loader may override it.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Largest consistent-hash table a group may have (slots; the table map has
/// one more element: slot 0 holds the table size).
pub const MAX_TABLE_SIZE: u32 = 1_000_003;
/// The kernel's `BPF_F_INNER_MAP`: inner maps of one outer map may differ in size.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// The kernel's `BPF_F_MMAPABLE`: the loader fills a group table through a
/// memory mapping instead of one syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every group table (the inner maps of `GROUP_TABLES`).
pub const GROUP_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;
/// The kernel's `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists for the flow table.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Bits of [`GroupInfo::hash_fields`]: which parts of a flow feed the hash
/// that picks a slot of the group's consistent-hash table.
pub mod hash_fields {
    pub const SRC_ADDR: u8 = 1 << 0;
    pub const DST_ADDR: u8 = 1 << 1;
    pub const SRC_PORT: u8 = 1 << 2;
    pub const DST_PORT: u8 = 1 << 3;
    pub const PROTO: u8 = 1 << 4;
    /// `hash` with `five_tuple` affinity.
    pub const FIVE_TUPLE: u8 = SRC_ADDR | DST_ADDR | SRC_PORT | DST_PORT | PROTO;
    /// `hash` with `three_tuple` affinity: client IP, VIP, protocol.
    pub const THREE_TUPLE: u8 = SRC_ADDR | DST_ADDR | PROTO;
    /// `hash` with `two_tuple` affinity: client IP, VIP.
    pub const TWO_TUPLE: u8 = SRC_ADDR | DST_ADDR;
    /// `source_ip` algorithm: client IP only.
    pub const SOURCE_IP: u8 = SRC_ADDR;
}

/// A parsed flow: the key of the flow table and the input of the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// What the flow table remembers of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub target_id: u32,
    /// Flow flags (reserved for TCP state tracking; 0 today).
    pub flags: u32,
    /// `bpf_ktime_get_ns` of the packet that created the entry.
    pub created_ns: u64,
}

/// Key of the listener map: (VIP, protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the listener map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Index into the per-listener counters.
    pub listener_id: u32,
    /// Index into `GROUPS` and `GROUP_TABLES`.
    pub group_id: u32,
}

/// Per target group settings the data plane needs (array indexed by group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// [`hash_fields`] bits.
    pub hash_fields: u8,
    /// Reserved for the algorithm (round robin, least connections).
    pub algorithm: u8,
    pub _pad: [u8; 2],
    /// Generation of the group, bumped by the loader on every change.
    pub generation: u32,
}

/// Bits of [`TargetInfo::flags`].
pub mod target_flags {
    /// The target may receive packets (present in the policy with a known MAC).
    pub const USABLE: u16 = 1 << 0;
}

/// Per target data (array indexed by target id; id 0 is never written).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetInfo {
    pub mac: [u8; 6],
    /// [`target_flags`] bits.
    pub flags: u16,
    /// The group the target belongs to; a flow whose listener points at another
    /// group is re-selected (the target id was reused).
    pub group_id: u32,
}

/// Global settings (array of one element).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Source MAC of forwarded frames: the interface's own MAC.
    pub src_mac: [u8; 6],
    pub _pad: [u8; 2],
    pub flags: u32,
}

/// Packet, byte and new-flow counts (per CPU) for a listener or a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Global counters: one per-CPU slot each, indexed by the enum value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets not addressed to a listener, passed to the kernel untouched.
    Passed = 0,
    /// Packets forwarded to a target (XDP_TX).
    Forwarded = 1,
    /// Packets dropped (no usable target for a listener's flow).
    Dropped = 2,
    /// Truncated or inconsistent headers (passed to the kernel untouched).
    Malformed = 3,
    /// Listener packets whose table slot held no usable target (dropped).
    NoTarget = 4,
    /// IP fragments (passed to the kernel untouched for now).
    Fragment = 5,
    /// New flows created in the flow table.
    NewFlow = 6,
    /// Flows found in the flow table.
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
}

/// Names of the maps, shared so the loader never spells them differently.
pub mod map_names {
    pub const LISTENERS: &str = "LISTENERS";
    pub const GROUPS: &str = "GROUPS";
    pub const GROUP_TABLES: &str = "GROUP_TABLES";
    pub const TARGETS: &str = "TARGETS";
    pub const FLOWS: &str = "FLOWS";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    pub const TARGET_STATS: &str = "TARGET_STATS";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding
    // (checked by the size assertions below).
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerInfo {}
    unsafe impl aya::Pod for GroupInfo {}
    unsafe impl aya::Pod for TargetInfo {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Stats {}
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowState>() == 16);
    assert!(core::mem::size_of::<ListenerKey>() == 20);
    assert!(core::mem::size_of::<ListenerInfo>() == 8);
    assert!(core::mem::size_of::<GroupInfo>() == 8);
    assert!(core::mem::size_of::<TargetInfo>() == 12);
    assert!(core::mem::size_of::<Config>() == 12);
    assert!(core::mem::size_of::<Stats>() == 24);
};
