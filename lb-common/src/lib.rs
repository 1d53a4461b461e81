//! Map keys, values and constants shared by the XDP program (`lb-ebpf`) and the
//! loader (`lb-user`). Everything here is `#[repr(C)]`, `Copy`, and free of
//! implicit padding, `bool` and `Option`, so both sides agree on every byte.
//!
//! Byte order: fields ending in `_be` hold bytes exactly as they appear on the
//! wire (network order), loaded into native integers without swapping. An IPv4
//! address uses word 0 of an `[u32; 4]` address; words 1-3 are zero.
#![no_std]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod choice;
pub mod flow_table;
pub mod hash;
pub mod table;

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
/// table slot fails closed (counted as `NoTarget`). Room for 1,000 groups of
/// 100 targets (the scale `cargo xtask bench` measures).
pub const MAX_TARGETS: u32 = 1 << 17;
/// Default `flow_table.max_flows`: flows of both address families the flow
/// table holds (`flow_table::buckets_for` sizes it).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Largest consistent-hash table a group may have (slots; see [`table`] for
/// how a table is stored).
pub const MAX_TABLE_SIZE: u32 = 1_000_003;
/// One element of a group table (an inner map of `GROUP_TABLES`): two 4-byte
/// words, laid out as [`table`] describes. Two words per element because an
/// array map stores each value in 8 bytes: one 4-byte word per element would
/// double the memory the kernel allocates and zeroes for every new table
/// (and the time to apply 1,000 groups).
pub type GroupTableElement = [u32; 2];
/// The kernel's `BPF_F_INNER_MAP`: inner maps of one outer map may differ in size.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// The kernel's `BPF_F_MMAPABLE`: the loader fills a group table through a
/// memory mapping instead of one syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every group table (the inner maps of `GROUP_TABLES`).
pub const GROUP_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

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
/// 8-byte aligned so that the flow cache compares it as five 8-byte words.
#[repr(C, align(8))]
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

/// Key of the listener map: (VIP, protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// Data of a key of the port-range map (`PORT_RANGES`, an LPM trie whose
/// keys are this after a 32-bit prefix length): the listener's VIP,
/// protocol and family, matched whole ([`PortRangeKey::FIXED_BITS`]), then
/// the port (wire order, so the first bits are the high ones) matched to the
/// prefix length. A listener of ports `first-last` holds the few prefixes
/// that cover exactly its range ([`port_prefixes`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRangeKey {
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub _pad2: [u8; 2],
}

impl PortRangeKey {
    /// The prefix bits of family, protocol, padding and address.
    pub const FIXED_BITS: u32 = 160;
    /// The prefix length of a packet's key: every bit of its port.
    pub const PACKET_BITS: u32 = Self::FIXED_BITS + 16;
}

/// Capacity of `PORT_RANGES`: every listener a range of the most prefixes
/// one takes (30, for 1-65534).
pub const MAX_PORT_PREFIXES: u32 = MAX_LISTENERS * 30;

/// The prefixes (first port, port bits matched) that cover `first..=last`
/// exactly, fewest first-to-last: at most 30 for a range of 16-bit ports.
pub fn port_prefixes(first: u16, last: u16) -> impl Iterator<Item = (u16, u32)> {
    let mut next = first as u32;
    let end = last as u32 + 1;
    core::iter::from_fn(move || {
        if next >= end || next > u16::MAX as u32 {
            return None;
        }
        // The largest aligned block that starts at `next` and ends by `end`.
        let mut size = if next == 0 {
            1 << 16
        } else {
            1 << next.trailing_zeros().min(16)
        };
        while next + size > end {
            size >>= 1;
        }
        let prefix = (next as u16, 16 - size.trailing_zeros());
        next += size;
        Some(prefix)
    })
}

/// A listener's ports (array indexed by listener id, `LISTENER_PORTS`;
/// host order): `first..=last` for a listener of a range, whose key in
/// `LISTENERS` and `LISTENERS_BY_ID` holds its first port; zeros for a
/// listener of one port. A flow-table entry's listener is confirmed by its
/// slot's port and, when that differs, by this.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerPorts {
    pub first: u16,
    pub last: u16,
}

impl ListenerPorts {
    /// Whether `port_be` (wire order) is one of a range's ports.
    #[inline(always)]
    pub fn contains(&self, port_be: u16) -> bool {
        let port = u16::from_be(port_be);
        self.first <= port && port <= self.last && self.first != self.last
    }
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

impl FlowKey {
    /// Makes this key (a fragment's flow) the key of its datagram `id`
    /// (the IPv4 identification, or the IPv6 fragment identification) in
    /// the fragment table (`FRAGMENTS`): addresses, the datagram's
    /// protocol ([`FlowKey::set_datagram_proto`]) and the id in place of
    /// the ports, which only a datagram's first fragment has. In place, not
    /// a new key: the data plane's stack is small.
    #[inline(always)]
    pub fn to_datagram(&mut self, id: u32) {
        self.proto ^= self._pad[1];
        self.src_port_be = (id >> 16) as u16;
        self.dst_port_be = id as u16;
        self._pad = [0; 2];
    }

    /// Sets the protocol of the datagram a first fragment's key
    /// ([`FlowKey::to_datagram`]) has when it is not the flow's: every
    /// fragment of an IPv6 datagram has its Fragment header, whose next
    /// header is the only protocol its later fragments show (Destination
    /// Options, which RFC 8200 puts in the fragmentable part, before the
    /// transport header, make it 60). Held in the key's second padding
    /// byte as the difference from `proto` (set before), so that an unset
    /// byte (0) means the flow's own: no branch, and only the IPv6
    /// extension-header walk writes it.
    #[inline(always)]
    pub fn set_datagram_proto(&mut self, proto: u8) {
        self._pad[1] = self.proto ^ proto;
    }

    /// Marks the key's packet as the first fragment of a datagram, or not
    /// (`mark` 1 or 0). The mark rides in the key's padding, which no hash
    /// and no comparison of flows reads: the data plane keeps it there
    /// rather than in a variable because the verifier follows every later
    /// path once per value of a variable it sees tested, and a byte in the
    /// key on the stack is one it does not track.
    #[inline(always)]
    pub fn mark_first_fragment(&mut self, mark: u8) {
        self._pad[0] = mark;
    }

    /// Whether the key's packet is the first fragment of a datagram.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self._pad[0] != 0
    }
}

/// Value of the fragment table: where a datagram's first fragment went,
/// and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentEntry {
    /// The target, or [`FragmentEntry::HOST`].
    pub target_id: u32,
    /// The listener it went under (0 for the host).
    pub listener_id: u32,
    /// Data-plane time of the first fragment (ns).
    pub seen_ns: u64,
}

impl FragmentEntry {
    /// The `target_id` of a datagram whose first fragment passed to the
    /// host (a VIP's, for no listener's port, or malformed): no target has
    /// id 0.
    pub const HOST: u32 = 0;
}

/// Capacity of the fragment table (an LRU map shared by all CPUs): the
/// datagrams whose later fragments may still be on their way.
pub const FRAGMENT_TABLE_SIZE: u32 = 16384;

/// How long after its first fragment a datagram's later fragments follow
/// it (ns): the kernel's own reassembly timeout (`ipfrag_time`, 30 s).
/// Later than that, they go as if the first had not been seen.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// A listener by id (array indexed by listener id): the inverse of
/// `LISTENERS`, which lets a flow-table hit confirm its listener without a
/// hash lookup. An unused id is all zeros (family 0 matches no packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSlot {
    pub key: ListenerKey,
    pub group_id: u32,
}

/// First stage of the listener lookup (array of one element): a filter of
/// the listeners' (VIP, protocol, port) keys, one bit per key at a hash of
/// it ([`ListenerFilter::bit`]). A packet whose bit is clear is not
/// addressed to a listener and passes before anything else is read: the
/// host's own traffic costs the same on a port some listener uses as on any
/// other. A set bit is confirmed by the listener lookup (with L listeners a
/// packet that is not ours finds a set bit with odds of about L in
/// 131,072). It may hold more bits than listeners (the loader sets bits
/// before it adds listeners and clears them after it removes them), never
/// fewer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerFilter {
    /// Bit [`ListenerFilter::bit`] of 2^17.
    pub words: [u64; 2048],
}

impl ListenerFilter {
    pub const EMPTY: ListenerFilter = ListenerFilter { words: [0; 2048] };

    /// The bit of a listener key: 17 bits of a hash of the family, the
    /// address, the protocol and the port, taken as stored (wire order),
    /// so the data plane never swaps.
    #[inline(always)]
    pub const fn bit(family: u8, addr_be: &[u32; 4], proto: u8, port_be: u16) -> usize {
        let a = addr_be[0] as u64 | (addr_be[1] as u64) << 32;
        let b = addr_be[2] as u64 | (addr_be[3] as u64) << 32;
        let c = port_be as u64 | (proto as u64) << 16 | (family as u64) << 24;
        let h = (a ^ b.rotate_left(23) ^ c.rotate_left(41)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h >> (64 - 17)) as usize
    }

    #[inline(always)]
    pub const fn contains(&self, family: u8, addr_be: &[u32; 4], proto: u8, port_be: u16) -> bool {
        let bit = Self::bit(family, addr_be, proto, port_be);
        self.words[bit >> 6] & (1 << (bit & 63)) != 0
    }

    pub fn insert(&mut self, key: &ListenerKey) {
        let bit = Self::bit(key.family, &key.addr_be, key.proto, key.port_be);
        self.words[bit >> 6] |= 1 << (bit & 63);
    }

    /// Lets through every port of `key`'s VIP and protocol (`key`'s port
    /// is not read) to the port-range lookup: sets the bit of port 0, which
    /// no listener has, and [`ListenerFilter::RANGES`].
    pub fn insert_ranges(&mut self, key: &ListenerKey) {
        self.insert(&ListenerKey { port_be: 0, ..*key });
        self.words[0] |= Self::RANGES;
    }

    /// Bit 0 of word 0: set when some listener has a port range (and
    /// perhaps by a key's own bit, which costs only a second test). Clear,
    /// a packet whose key's bit is clear is not ours without a second hash.
    pub const RANGES: u64 = 1;

    /// Whether a packet to (VIP, protocol, port) may be a listener's: its
    /// key's bit, or the bit of its VIP and protocol's port ranges.
    #[inline(always)]
    pub const fn admits(&self, family: u8, addr_be: &[u32; 4], proto: u8, port_be: u16) -> bool {
        self.contains(family, addr_be, proto, port_be)
            || (self.words[0] & Self::RANGES != 0 && self.contains(family, addr_be, proto, 0))
    }

    /// Marks `key`'s address as a VIP ([`ListenerFilter::may_be_vip`]):
    /// sets the bit of (family, address, protocol 0, port 0), a key no
    /// packet's is (only TCP and UDP keys are looked up otherwise).
    pub fn insert_vip(&mut self, key: &ListenerKey) {
        self.insert(&ListenerKey {
            port_be: 0,
            proto: 0,
            ..*key
        });
    }

    /// Whether `addr_be` may be a VIP (some listener's address, whatever
    /// its protocol and port): a fragment after the first has no port for
    /// [`ListenerFilter::admits`], and is the host's unless its
    /// destination is a VIP.
    #[inline(always)]
    pub const fn may_be_vip(&self, family: u8, addr_be: &[u32; 4]) -> bool {
        self.contains(family, addr_be, 0, 0)
    }

    /// Whether `key`'s bit is set.
    pub fn has(&self, key: &ListenerKey) -> bool {
        self.contains(key.family, &key.addr_be, key.proto, key.port_be)
    }
}

impl Default for ListenerFilter {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Values of [`GroupInfo::algorithm`]: how a new flow picks its target.
/// (`source_ip` is `HASH` with [`hash_fields::SOURCE_IP`].)
pub mod algorithm {
    /// A slot of the group's consistent-hash table by the flow hash.
    pub const HASH: u8 = 0;
    /// The group table holds the smooth weighted round-robin order; a shared
    /// per-group counter (`GROUP_RR`) walks it.
    pub const ROUND_ROBIN: u8 = 1;
    /// The better (fewer `TARGET_ACTIVE` flows per weight) of two weighted
    /// random candidates drawn from the group's consistent-hash table.
    pub const LEAST_CONNECTIONS: u8 = 2;
}

/// Bits of [`GroupInfo::flags`].
pub mod group_flags {
    /// Source-IP sticky sessions (`STICKY` map) for new flows.
    pub const STICKY: u8 = 1 << 0;
}

/// Per target group settings the data plane needs (array indexed by group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// [`hash_fields`] bits.
    pub hash_fields: u8,
    /// One of [`algorithm`].
    pub algorithm: u8,
    /// [`group_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    /// A flow without packets for this long has ended (TCP or UDP default
    /// by the group's protocol).
    pub idle_timeout_s: u32,
    /// A TCP flow whose client sent FIN or RST ends after this long without
    /// packets.
    pub fin_timeout_s: u32,
    /// Sticky sessions: how long a client stays on its first target.
    pub sticky_duration_s: u32,
}

/// Bits of [`TargetInfo::flags`].
pub mod target_flags {
    /// The target may receive packets (present in the policy with a known MAC).
    pub const USABLE: u16 = 1 << 0;
    /// The target may take new flows (it is in the group's table: healthy or
    /// last resort, weight above 0). Sticky sessions and least connections
    /// check it.
    pub const SELECTABLE: u16 = 1 << 1;
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
    /// Converted weight (SPEC.md, 0-100): least connections compares
    /// active flows / weight.
    pub weight: u16,
    pub _pad: u16,
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
    /// Buckets of `FLOW_TABLE` - 1 (a power of two - 1); 0 turns the table
    /// off (nothing is remembered). Written by the loader, like the fields
    /// below.
    pub flow_table_mask: u32,
    pub _pad4: u32,
    /// Seed of the flow table's hash ([`flow_table::place`]), random per
    /// data plane.
    pub flow_table_seed: u64,
    /// [`LAYOUT_VERSION`] of the build that created the maps; 0 until the
    /// loader first writes them. Only the loader reads it.
    pub layout: u32,
    pub _pad3: u32,
    /// Random per data plane, chosen when its maps are created: the runtime
    /// state the loader keeps on disk names the data plane it belongs to.
    pub instance: u64,
}

/// Version of the maps' layout: their kinds, key and value types. A loader
/// adopts a pinned data plane only if it was made with the same layout
/// (lb-user `dataplane::pin`); bump it with any change to a map or to a type
/// stored in one. A map added without a change to the others
/// ([`map_names::ADDED`]) keeps the version: a loader creates it when it
/// adopts a data plane pinned without it.
pub const LAYOUT_VERSION: u32 = 3;

/// What the loader records of a target id (`TARGET_IDS`, array indexed by
/// id; the data plane never reads it): the target's identity, so that a
/// loader that adopts a running data plane knows which target every id in
/// its flow entries, sticky sessions and counts names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetRecord {
    pub addr_be: [u32; 4],
    /// The target's group (its name is in `GROUP_NAMES`).
    pub group_id: u32,
    pub family: u8,
    /// One of [`record_state`].
    pub state: u8,
    /// For a target of `group_id`'s backup group that takes `group_id`'s
    /// flows: that backup group's id (0: a target of its own group).
    pub via_group: u16,
}

/// Values of [`TargetRecord::state`].
pub mod record_state {
    /// The id names nothing.
    pub const FREE: u8 = 0;
    /// The id is a target of the policy.
    pub const ACTIVE: u8 = 1;
    /// The target left the policy; the id is not reused while flow entries
    /// or sticky sessions may still name it.
    pub const RETIRED: u8 = 2;
}

/// Longest target group name (SPEC.md: 1-63 characters); the policy's
/// name rules read it.
pub const MAX_GROUP_NAME: usize = 63;

/// A group id's name (`GROUP_NAMES`, array indexed by group id; the data
/// plane never reads it): `len` bytes of `bytes`, 0 for a free id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupName {
    pub len: u8,
    pub bytes: [u8; MAX_GROUP_NAME],
}

impl GroupName {
    pub const FREE: GroupName = GroupName {
        len: 0,
        bytes: [0; MAX_GROUP_NAME],
    };

    /// The record of `name` (None if it is longer than [`MAX_GROUP_NAME`]).
    pub fn new(name: &str) -> Option<GroupName> {
        let len = name.len();
        if len > MAX_GROUP_NAME {
            return None;
        }
        let mut bytes = [0; MAX_GROUP_NAME];
        bytes[..len].copy_from_slice(name.as_bytes());
        Some(GroupName {
            len: len as u8,
            bytes,
        })
    }

    /// The name's bytes (empty for a free id).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(MAX_GROUP_NAME)]
    }
}

impl Default for GroupName {
    fn default() -> Self {
        Self::FREE
    }
}

/// Key of the sticky-session map: (group, client IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickyKey {
    pub group_id: u32,
    pub addr_be: [u32; 4],
}

/// A client's sticky target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickyState {
    pub target_id: u32,
    pub _pad: u32,
    /// Data-plane time after which the client is free again.
    pub expires_ns: u64,
}

/// Capacity of the sticky-session map (LRU).
pub const DEFAULT_STICKY_TABLE_SIZE: u32 = 1 << 18;

/// Packet, byte and new-flow counts (per CPU) for a listener or a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Global counters: one per-CPU slot each, indexed by the enum value.
///
/// `Forwarded` is derived, not stored: every forwarded packet counts in
/// exactly one of [`Counter::FORWARDING`] (a flow-table hit, a new flow, a
/// TCP miss by hash, a fragment, an ICMP error), and readers report their
/// sum (one counter update per forwarded packet instead of two). Its slot
/// stays zero.
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
    /// Later fragments (not the first of their datagram) forwarded to the
    /// target their datagram's first fragment went to (`FRAGMENTS`).
    Fragment = 5,
    /// Packets of new flows forwarded (flow table miss or re-selection).
    NewFlow = 6,
    /// Packets forwarded to the target their flow-table entry names.
    FlowHit = 7,
    /// Flow table entries whose target was no longer usable (re-selected).
    FlowReselected = 8,
    /// New flows forwarded but not remembered: both their buckets held
    /// only established flows in use, or stayed locked.
    FlowInsertFailed = 9,
    /// Flow-table entries taken by a new flow from another (idle, ended or
    /// seen once, rarely in use): that flow's next packet is a new flow.
    FlowEvicted = 10,
    /// Later fragments whose first fragment was not seen (or came more
    /// than `FRAGMENT_TIMEOUT_NS` before), forwarded by the hash of the
    /// client address, VIP and protocol.
    FragmentUnmatched = 11,
    /// ICMP errors about a flow (destination unreachable, fragmentation
    /// needed or packet too big, time exceeded) forwarded to the target
    /// the flow's entry names.
    IcmpError = 12,
    /// ICMP errors about a flow the table does not hold, forwarded to the
    /// target the group's hash gives the flow.
    IcmpErrorUnmatched = 13,
    /// TCP packets, not SYN, of flows the table does not hold, forwarded to
    /// the group's consistent-hash target and not remembered.
    FlowMissByHash = 14,
    /// IPv6 packets passed for an extension header the program does not
    /// walk (authentication, mobility, HIP, shim6, experimental), a routing
    /// header with segments left, or a chain longer than it walks.
    ExtensionHeader = 15,
}

impl Counter {
    pub const COUNT: u32 = 16;
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
        Counter::FlowEvicted,
        Counter::FragmentUnmatched,
        Counter::IcmpError,
        Counter::IcmpErrorUnmatched,
        Counter::FlowMissByHash,
        Counter::ExtensionHeader,
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
            Counter::FlowEvicted => "flow_evicted",
            Counter::FragmentUnmatched => "fragment_unmatched",
            Counter::IcmpError => "icmp_error",
            Counter::IcmpErrorUnmatched => "icmp_error_unmatched",
            Counter::FlowMissByHash => "flow_miss_by_hash",
            Counter::ExtensionHeader => "extension_header",
        }
    }

    /// Fills in the derived counters of `values` (indexed by the enum value)
    /// from the stored ones.
    pub fn derive(values: &mut [u64; Self::COUNT as usize]) {
        values[Counter::Forwarded as usize] = Self::FORWARDING
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(values[*c as usize]));
    }

    /// The counters of forwarded packets: each forwarded packet counts in
    /// exactly one, and `Forwarded` is their sum.
    pub const FORWARDING: [Counter; 7] = [
        Counter::FlowHit,
        Counter::NewFlow,
        Counter::FlowMissByHash,
        Counter::Fragment,
        Counter::FragmentUnmatched,
        Counter::IcmpError,
        Counter::IcmpErrorUnmatched,
    ];
}

/// Names of the maps, shared so the loader never spells them differently.
pub mod map_names {
    pub const LISTENERS: &str = "LISTENERS";
    pub const LISTENER_FILTER: &str = "LISTENER_FILTER";
    pub const LISTENERS_BY_ID: &str = "LISTENERS_BY_ID";
    pub const GROUPS: &str = "GROUPS";
    pub const GROUP_TABLES: &str = "GROUP_TABLES";
    pub const TARGETS: &str = "TARGETS";
    /// The flow table (`flow_table::Bucket`s, memory-mappable).
    pub const FLOW_TABLE: &str = "FLOW_TABLE";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    pub const TARGET_STATS: &str = "TARGET_STATS";
    /// Active flows per target id (`i64`, shared, atomic adds).
    pub const TARGET_ACTIVE: &str = "TARGET_ACTIVE";
    /// Round-robin position per group id (`u64`, shared, atomic adds).
    pub const GROUP_RR: &str = "GROUP_RR";
    pub const STICKY: &str = "STICKY";
    /// Datagram -> where its first fragment went (`FragmentEntry`).
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// (VIP, protocol, port 0) -> the one listener of that VIP and
    /// protocol: where later fragments of a datagram whose first was not
    /// seen go (no entry when the VIP has several listeners of the protocol).
    pub const FRAGMENT_LISTENERS: &str = "FRAGMENT_LISTENERS";
    /// (VIP, protocol, port prefix) -> the listener whose port range it is
    /// part of (`PortRangeKey`, LPM trie).
    pub const PORT_RANGES: &str = "PORT_RANGES";
    /// Listener id -> its port range (`ListenerPorts`).
    pub const LISTENER_PORTS: &str = "LISTENER_PORTS";
    /// Maps added in layout 3's lifetime: a data plane pinned before them
    /// lacks them, and one that lacks them had no port-range listeners, so
    /// a loader that adopts it creates them empty.
    pub const ADDED: [&str; 2] = [PORT_RANGES, LISTENER_PORTS];
    /// Target id -> its identity (`TargetRecord`), for the loader only.
    pub const TARGET_IDS: &str = "TARGET_IDS";
    /// Group id -> its name (`GroupName`), for the loader only.
    pub const GROUP_NAMES: &str = "GROUP_NAMES";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding
    // (checked by the size assertions below).
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for flow_table::Bucket {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerInfo {}
    unsafe impl aya::Pod for ListenerFilter {}
    unsafe impl aya::Pod for ListenerSlot {}
    unsafe impl aya::Pod for GroupInfo {}
    unsafe impl aya::Pod for TargetInfo {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for StickyKey {}
    unsafe impl aya::Pod for StickyState {}
    unsafe impl aya::Pod for TargetRecord {}
    unsafe impl aya::Pod for GroupName {}
    unsafe impl aya::Pod for FragmentEntry {}
    unsafe impl aya::Pod for PortRangeKey {}
    unsafe impl aya::Pod for ListenerPorts {}
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::align_of::<FlowKey>() == 8);
    // The data plane stores addresses 8 bytes at a time (an IPv4 address
    // with its zero word) and both ports as 4 (lb-ebpf's parse).
    assert!(core::mem::offset_of!(FlowKey, src_be) % 8 == 0);
    assert!(core::mem::offset_of!(FlowKey, dst_be) % 8 == 0);
    assert!(core::mem::offset_of!(FlowKey, src_port_be) % 4 == 0);
    assert!(
        core::mem::offset_of!(FlowKey, dst_port_be)
            == core::mem::offset_of!(FlowKey, src_port_be) + 2
    );
    assert!(core::mem::size_of::<ListenerKey>() == 20);
    assert!(core::mem::size_of::<ListenerInfo>() == 8);
    assert!(core::mem::size_of::<ListenerFilter>() == 16384);
    assert!(core::mem::size_of::<ListenerSlot>() == 24);
    assert!(core::mem::size_of::<PortRangeKey>() == 24);
    assert!(core::mem::offset_of!(PortRangeKey, port_be) * 8 == PortRangeKey::FIXED_BITS as usize);
    assert!(core::mem::size_of::<ListenerPorts>() == 4);
    // Listener ids fit a flow-table entry's listener hint.
    assert!(MAX_LISTENERS <= u16::MAX as u32 + 1);
    assert!(core::mem::size_of::<GroupInfo>() == 16);
    assert!(core::mem::size_of::<TargetInfo>() == 16);
    assert!(core::mem::size_of::<Config>() == 64);
    assert!(core::mem::size_of::<TargetRecord>() == 24);
    assert!(core::mem::size_of::<GroupName>() == 64);
    assert!(core::mem::size_of::<StickyKey>() == 20);
    assert!(core::mem::size_of::<StickyState>() == 16);
    assert!(core::mem::size_of::<Stats>() == 24);
    assert!(core::mem::size_of::<FragmentEntry>() == 16);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// Flows that differ in one field only (client port, client address,
    /// IPv6 address words) spread over the flow table's buckets like random
    /// placement: with n flows in m buckets the busiest holds a few, and
    /// about m * (1 - e^(-n/m)) are used. Checked for 2^16 flows' first
    /// buckets among 2^16 (random placement: about 41,427 used, max about 8).
    #[test]
    fn the_flow_table_spreads_flows_over_its_buckets() {
        const M: u32 = 1 << 16;
        type Family = (&'static str, fn(u32) -> FlowKey);
        let families: [Family; 3] = [
            ("client ports", |i| FlowKey {
                src_port_be: (i as u16).to_be(),
                ..base_key()
            }),
            ("client addresses", |i| FlowKey {
                src_be: [(0x0a00_0000 + i).to_be(), 0, 0, 0],
                ..base_key()
            }),
            ("IPv6 low words", |i| FlowKey {
                src_be: [0x20010db8u32.to_be(), 0, 0, i.to_be()],
                family: FAMILY_V6,
                ..base_key()
            }),
        ];
        fn base_key() -> FlowKey {
            FlowKey {
                src_be: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
                dst_be: [u32::from_ne_bytes([10, 0, 3, 49]), 0, 0, 0],
                src_port_be: 1000u16.to_be(),
                dst_port_be: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            }
        }
        for seed in [0, 0x1234_5678_9abc_def0] {
            for (name, key) in families {
                let mut load = [0u8; M as usize];
                for i in 0..M {
                    let slot = flow_table::place(&key(i), seed, M - 1).first;
                    load[slot as usize] = load[slot as usize].saturating_add(1);
                }
                let used = load.iter().filter(|&&n| n > 0).count();
                let max = *load.iter().max().unwrap();
                extern crate std;
                std::eprintln!("{name}, seed {seed:#x}: {used} buckets used, at most {max}");
                // Random placement: 41,427 +- about 110 (sd); max 8 or 9.
                assert!(used > 40_800, "{name}, seed {seed:#x}: {used} slots used");
                assert!(max <= 12, "{name}, seed {seed:#x}: {max} flows in one slot");
            }
        }
    }

    #[test]
    fn forwarded_is_the_sum_of_the_forwarding_counters() {
        let mut values = [0u64; Counter::COUNT as usize];
        values[Counter::FlowHit as usize] = 5;
        values[Counter::NewFlow as usize] = 2;
        values[Counter::FlowMissByHash as usize] = 40;
        values[Counter::Fragment as usize] = 300;
        values[Counter::FragmentUnmatched as usize] = 1000;
        values[Counter::IcmpError as usize] = 20_000;
        values[Counter::IcmpErrorUnmatched as usize] = 500_000;
        values[Counter::Passed as usize] = 9;
        values[Counter::ExtensionHeader as usize] = 8;
        values[Counter::Malformed as usize] = 7;
        Counter::derive(&mut values);
        assert_eq!(values[Counter::Forwarded as usize], 521_347);
        assert_eq!(values[Counter::Passed as usize], 9);
    }

    #[test]
    fn port_prefixes_cover_a_range_exactly() {
        let mut ranges = vec![
            (1, 65535),
            (0, 65535),
            (2, 65534),
            (1, 1),
            (80, 80),
            (65535, 65535),
        ];
        ranges.extend([
            (1000, 2000),
            (1024, 2047),
            (1023, 2048),
            (5060, 5061),
            (10000, 20000),
        ]);
        // A deterministic spread of others.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b) = (x as u16, (x >> 16) as u16);
            ranges.push((a.min(b), a.max(b)));
        }
        for (first, last) in ranges {
            let prefixes: Vec<(u16, u32)> = port_prefixes(first, last).collect();
            assert!(prefixes.len() <= 30, "{first}-{last}: {prefixes:?}");
            let mut next = first as u32;
            for &(start, bits) in &prefixes {
                assert_eq!(start as u32, next, "{first}-{last}: {prefixes:?}");
                let size = 1u32 << (16 - bits);
                assert_eq!(start as u32 % size, 0, "unaligned {start}/{bits}");
                next += size;
            }
            assert_eq!(next, last as u32 + 1, "{first}-{last}: {prefixes:?}");
        }
        assert_eq!(port_prefixes(1, 65534).count(), 30);
        assert_eq!(port_prefixes(0, 65535).collect::<Vec<_>>(), [(0, 0)]);
    }

    #[test]
    fn listener_ports_hold_a_range_only() {
        let range = ListenerPorts {
            first: 1000,
            last: 2000,
        };
        assert!(range.contains(1000u16.to_be()));
        assert!(range.contains(2000u16.to_be()));
        assert!(!range.contains(999u16.to_be()));
        assert!(!range.contains(2001u16.to_be()));
        assert!(!ListenerPorts::default().contains(0));
        assert!(
            !ListenerPorts {
                first: 80,
                last: 80
            }
            .contains(80u16.to_be())
        );
    }

    /// The listener key of IPv4 address `a` (host order).
    fn key(a: u32, proto: u8, port: u16) -> ListenerKey {
        ListenerKey {
            addr_be: [a.to_be(), 0, 0, 0],
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    #[test]
    fn the_filter_admits_a_vips_ranges_only_when_it_has_some() {
        let vip = 0x0a00_0331;
        let admits =
            |f: &ListenerFilter, k: ListenerKey| f.admits(k.family, &k.addr_be, k.proto, k.port_be);
        let mut filter = ListenerFilter::EMPTY;
        filter.insert(&key(vip, PROTO_TCP, 80));
        assert!(admits(&filter, key(vip, PROTO_TCP, 80)));
        assert!(!admits(&filter, key(vip, PROTO_TCP, 5000)));
        assert_eq!(filter.words[0] & ListenerFilter::RANGES, 0);
        filter.insert_ranges(&key(vip, PROTO_UDP, 10000));
        assert_ne!(filter.words[0] & ListenerFilter::RANGES, 0);
        for port in [1, 5000, 10000, 65535] {
            assert!(admits(&filter, key(vip, PROTO_UDP, port)));
        }
        assert!(!admits(&filter, key(vip, PROTO_TCP, 5000)));
        assert!(!admits(&filter, key(vip + 1, PROTO_UDP, 5000)));
    }

    #[test]
    fn the_filter_knows_its_vips_apart_from_their_ports() {
        let vip = 0x0a00_0331;
        let mut filter = ListenerFilter::EMPTY;
        let web = key(vip, PROTO_TCP, 80);
        filter.insert(&web);
        assert!(!filter.may_be_vip(FAMILY_V4, &web.addr_be));
        filter.insert_vip(&web);
        assert!(filter.may_be_vip(FAMILY_V4, &web.addr_be));
        // The VIP's bit lets no other port through, nor its ranges' bit.
        assert!(!filter.admits(web.family, &web.addr_be, PROTO_TCP, 5000u16.to_be()));
        assert!(!filter.admits(web.family, &web.addr_be, PROTO_TCP, 0));
        assert!(!filter.may_be_vip(FAMILY_V6, &web.addr_be));
        let others = (1..=50_000u32)
            .filter(|i| filter.may_be_vip(FAMILY_V4, &[(vip + i).to_be(), 0, 0, 0]))
            .count();
        assert!(others < 5, "{others} false positives");
    }

    #[test]
    fn the_listener_filter_holds_its_keys_and_little_else() {
        let mut filter = ListenerFilter::EMPTY;
        let vip = 0x0a00_0331;
        filter.insert(&key(vip, PROTO_TCP, 80));
        filter.insert(&key(vip, PROTO_UDP, 53));
        assert!(filter.has(&key(vip, PROTO_TCP, 80)));
        assert!(filter.has(&key(vip, PROTO_UDP, 53)));
        // Other addresses on the listeners' ports, the VIP on other ports
        // and protocols: among 100,000 keys, about 2 x 100,000 / 131,072
        // false positives are expected; allow a generous bound.
        let mut hits = 0;
        for i in 1..=50_000u32 {
            hits += filter.has(&key(vip + i, PROTO_TCP, 80)) as u32;
            hits += filter.has(&key(vip, PROTO_TCP, 80 + i as u16 % 60_000 + 1)) as u32;
        }
        assert!(hits < 10, "{hits} false positives");
        assert!(!filter.has(&key(vip, PROTO_UDP, 80)));
        assert!(!filter.has(&key(vip, PROTO_TCP, 53)));
    }
}
