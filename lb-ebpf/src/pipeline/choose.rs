//! A new flow's target, by the group's algorithm (and its sticky sessions).
//!
//! Every path returns a target id from the group's table (or a sticky
//! session naming a target that is still `SELECTABLE` in this group); the
//! caller checks the id is usable. The table holds only targets that may
//! take new flows (healthy or last resort, weight above 0), so the
//! algorithms honour weight, health and last resort through it.
use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use lb_common::{
    FlowKey, GroupInfo, StickyKey, StickyState, algorithm, choice, group_flags, hash::flow_hash,
    table, target_flags,
};

use super::{
    GROUP_RR, GROUP_TABLES, GroupTable, STICKY, TARGET_ACTIVE, TARGETS, atomic, select::target_with,
};

/// The slot of the group's table the flow hash picks: the consistent-hash
/// target of `hash` and `source_ip` groups, and where a TCP packet that is
/// not a SYN and misses the flow table goes (`None`: no table, or an empty
/// one). The caller checks the id is usable.
#[inline(always)]
pub fn by_hash(flow: &FlowKey, group_id: u32, group: &GroupInfo) -> Option<u32> {
    by_hash_of(flow, group_id, group.hash_fields)
}

/// The slot of the group's table the hash of the flow's `fields`
/// (`hash_fields` bits) picks.
#[inline(always)]
pub fn by_hash_of(flow: &FlowKey, group_id: u32, fields: u8) -> Option<u32> {
    let hash = flow_hash(flow, fields);
    let table = table(group_id)?;
    table.slot(hash % table.len)
}

/// A group's table, not empty (layout: `lb_common::table`).
#[derive(Clone, Copy)]
struct Table {
    map: &'static GroupTable,
    /// Its number of slots (M > 0).
    len: u32,
    /// Word 1: the member count of a narrow table, or `table::WIDE`.
    header: u32,
}

impl Table {
    /// Slot `i`'s target id (0-based; a narrow table reads the slot's
    /// member number, then the member).
    #[inline(always)]
    fn slot(self, i: u32) -> Option<u32> {
        table::slot(self.header, i, |w| word(self.map, w))
    }
}

/// Word `w` of a group table: half `w % 2` of element `w / 2`.
#[inline(always)]
fn word(map: &GroupTable, w: u32) -> Option<u32> {
    let element = map.get(w >> 1)?;
    Some(element[(w & 1) as usize])
}

/// The group's table (`None`: no table, or an empty one).
#[inline(always)]
fn table(group_id: u32) -> Option<Table> {
    let map = GROUP_TABLES.get(group_id)?;
    // Element 0: the slot count and the header.
    let head = map.get(0)?;
    let (len, header) = (head[0], head[1]);
    if len == 0 {
        return None;
    }
    Some(Table { map, len, header })
}

/// The target id a new flow of `group_id` goes to, by the group's algorithm
/// (`now_ns`: data-plane time, for sticky sessions). The caller checks the id
/// is usable.
#[inline(always)]
pub fn new_flow(flow: &FlowKey, group_id: u32, group: &GroupInfo, now_ns: u64) -> Option<u32> {
    if group.flags & group_flags::STICKY != 0 {
        sticky(flow, group_id, group, now_ns)
    } else {
        by_algorithm(flow, group_id, group)
    }
}

#[inline(always)]
fn by_algorithm(flow: &FlowKey, group_id: u32, group: &GroupInfo) -> Option<u32> {
    match group.algorithm {
        algorithm::ROUND_ROBIN => round_robin(group_id),
        algorithm::LEAST_CONNECTIONS => least_connections(group_id),
        _ => by_hash(flow, group_id, group),
    }
}

/// The next position of the group's smooth weighted round-robin order (the
/// loader writes the order as the group's table). One counter per group,
/// shared by all CPUs and advanced atomically, walks it: every new flow,
/// whichever CPU sees it, takes the next position.
#[inline(always)]
fn round_robin(group_id: u32) -> Option<u32> {
    let table = table(group_id)?;
    let counter = GROUP_RR.get_ptr_mut(group_id)?;
    // SAFETY: an 8-byte aligned map value that stays allocated while the
    // program runs; every writer (all CPUs) uses atomic adds.
    let position = unsafe { atomic::fetch_add_u64(counter, 1) };
    table.slot((position % table.len as u64) as u32)
}

/// The better (fewer active flows per weight) of two weighted random
/// candidates: two random slots of the group's weighted consistent-hash
/// table, the second moved on (at most `LEAST_CONNECTIONS_WALK` slots) until
/// it names another target than the first.
///
/// The walk reads up to 17 slots, so it is built twice, once per table
/// layout: with one layout test per slot read, the verifier would follow
/// every combination of outcomes and give up.
#[inline(always)]
fn least_connections(group_id: u32) -> Option<u32> {
    let t = table(group_id)?;
    if t.header & table::WIDE != 0 {
        least_connections_in(t.len, |i| table::wide_slot(i, |w| word(t.map, w)))
    } else {
        least_connections_in(t.len, |i| {
            table::narrow_slot(t.header, i, |w| word(t.map, w))
        })
    }
}

/// `least_connections` over a table of `len` slots read by `slot_at`, with
/// two random draws (`lb_common::choice::least_connections`).
#[inline(always)]
fn least_connections_in(len: u32, slot_at: impl Fn(u32) -> Option<u32>) -> Option<u32> {
    // SAFETY: plain helper calls.
    let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    choice::least_connections(len, r1, r2, slot_at, load)
}

/// A target's active flows and converted weight (0, 0 if unknown).
#[inline(always)]
fn load(id: u32) -> (i64, u16) {
    let active = TARGET_ACTIVE.get(id).copied().unwrap_or(0);
    let weight = TARGETS.get(id).map(|t| t.weight).unwrap_or(0);
    (active, weight)
}

/// Whether `id` may still take new flows of `group_id`.
#[inline(always)]
fn selectable(id: u32, group_id: u32) -> bool {
    target_with(id, group_id, target_flags::SELECTABLE).is_some()
}

/// The sticky-session key of the flow's client. Written one `u32` at a
/// time: the address sits at offset 4, and the eBPF build (which allows
/// unaligned accesses) would otherwise merge the copies into 8-byte stores
/// at a stack offset the verifier rejects as misaligned.
#[inline(always)]
fn sticky_key(flow: &FlowKey, group_id: u32) -> StickyKey {
    let mut key = StickyKey::default();
    // SAFETY: plain stores into a local; volatile only keeps them 4 bytes wide.
    unsafe {
        write_volatile(&mut key.group_id, group_id);
        write_volatile(&mut key.addr_be[0], flow.src_be[0]);
        write_volatile(&mut key.addr_be[1], flow.src_be[1]);
        write_volatile(&mut key.addr_be[2], flow.src_be[2]);
        write_volatile(&mut key.addr_be[3], flow.src_be[3]);
    }
    key
}

/// Source-IP sticky sessions: the client's remembered target while the
/// session lasts and the target may take new flows; otherwise the
/// algorithm's choice, remembered for `sticky_duration_s` from now.
// The key and state are passed by reference on purpose: passed by value they
// would be copied to another stack slot, and the copy of the key could again
// become misaligned 8-byte stores (see `sticky_key`).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn sticky(flow: &FlowKey, group_id: u32, group: &GroupInfo, now_ns: u64) -> Option<u32> {
    let key = sticky_key(flow, group_id);
    let mut known = false;
    // SAFETY: fields are copied out at once; a concurrent update of the
    // entry replaces it whole (map update), and any value read is checked.
    if let Some(state) = unsafe { STICKY.get(&key) } {
        known = true;
        let (id, expires) = (state.target_id, state.expires_ns);
        if now_ns < expires && selectable(id, group_id) {
            return Some(id);
        }
    }
    let id = by_algorithm(flow, group_id, group)?;
    if !selectable(id, group_id) {
        // Nothing to remember (an empty table fails closed in the caller).
        return Some(id);
    }
    let state = StickyState {
        target_id: id,
        _pad: 0,
        expires_ns: now_ns.wrapping_add(group.sticky_duration_s as u64 * 1_000_000_000),
    };
    // A client seen for the first time: insert only if no other CPU just
    // did, so that concurrent first flows of one client agree.
    let flags = (if known { BPF_ANY } else { BPF_NOEXIST }) as u64;
    if STICKY.insert(&key, &state, flags).is_err() && !known {
        // SAFETY: as above.
        if let Some(state) = unsafe { STICKY.get(&key) } {
            let (other, expires) = (state.target_id, state.expires_ns);
            if now_ns < expires && selectable(other, group_id) {
                return Some(other);
            }
        }
    }
    Some(id)
}
