//! Flow -> target: the flow table first, else the group's algorithm; and the
//! flow's lifecycle (README "Flow lifecycle").
//!
//! A hit costs one clock read and, at most once per `FLOW_TOUCH_NS`, one
//! store of `last_seen_ns` (and then one `GROUPS` lookup to check the idle
//! timeout: a flow seen within the last `FLOW_TOUCH_NS` cannot have expired,
//! since no timeout is shorter). Client FIN and RST set their flag and take
//! the flow out of `TARGET_ACTIVE` once (an atomic clear of `COUNTED`, so two
//! CPUs never both uncount it). An entry past its timeout, or a client SYN on
//! an entry that saw FIN or RST (the client reused the port), is a new flow.
//!
//! A miss: a TCP packet that is not a SYN belongs to a flow that started
//! before its entry was lost (table full, entry expired, lb restarted), so it
//! goes to the group's consistent-hash target (`choose::by_hash`), where
//! `hash` and `source_ip` groups sent it in the first place; a SYN, or a UDP
//! packet, starts a new flow (`choose::new_flow`, by the group's algorithm).
use super::common::{
    Counter, FAMILY_V4, FLOW_TOUCH_NS, FlowKey, FlowKeyV4, FlowState, GroupInfo, ListenerInfo,
    PROTO_TCP, TargetInfo, flow_flags, target_flags,
};
use aya_ebpf::bindings::xdp_action;

use super::{
    FLOWS_V4, FLOWS_V6, GROUPS, TARGET_ACTIVE, TARGETS, atomic, cache, choose, counters::count,
    parse::tcp,
};

pub struct Selected {
    pub id: u32,
    pub info: &'static TargetInfo,
    /// The flow was not in the flow table (or its entry had ended).
    pub new_flow: bool,
}

/// `FlowState::flags` is the top 16 bits of the 8-byte word at offset 0
/// (target id, listener id, flags; little endian), which atomic operations
/// update as a whole.
const FLAGS_SHIFT: u64 = 48;
const _: () = {
    assert!(core::mem::offset_of!(FlowState, target_id) == 0);
    assert!(core::mem::offset_of!(FlowState, listener_id) == 4);
    assert!(core::mem::offset_of!(FlowState, flags) == 6);
    assert!(core::mem::align_of::<FlowState>() == 8);
};

/// A flow's entry in the flow table (it stays valid until the program ends).
pub struct Entry(*mut FlowState);

impl Entry {
    #[inline(always)]
    pub fn target_id(&self) -> u32 {
        // SAFETY: a flow-table value stays allocated while the program runs
        // (RCU); another CPU may rewrite it, field by field, which is why
        // fields are read one at a time.
        unsafe { (*self.0).target_id }
    }

    /// The listener id the flow was created under (a hint, see `lookup`).
    #[inline(always)]
    pub fn listener_hint(&self) -> u16 {
        // SAFETY: as above.
        unsafe { (*self.0).listener_id }
    }

    /// Points the hint at the flow's current listener (after the listeners
    /// were renumbered), so its next packets skip the hash lookup again.
    #[inline(always)]
    pub fn set_listener_hint(&self, listener_id: u32) {
        // SAFETY: as above; a 2-byte field written whole, and any value a
        // reader may see is only a hint checked against LISTENERS_BY_ID.
        unsafe { (*self.0).listener_id = listener_id as u16 }
    }

    #[inline(always)]
    fn flags(&self) -> u16 {
        // SAFETY: as above.
        unsafe { (*self.0).flags }
    }

    #[inline(always)]
    fn last_seen_ns(&self) -> u64 {
        // SAFETY: as above; an aligned 8-byte load.
        unsafe { (*self.0).last_seen_ns }
    }

    #[inline(always)]
    fn set_last_seen_ns(&self, now: u64) {
        // SAFETY: as above; an aligned 8-byte store (any CPU's recent time
        // is as good as another's).
        unsafe { (*self.0).last_seen_ns = now }
    }

    /// The first word (target id, listener id, flags) for atomic updates.
    #[inline(always)]
    fn word(&self) -> *mut u64 {
        self.0 as *mut u64
    }

    /// Records client FIN/RST bits (`seen`, `flow_flags`) in the entry.
    #[inline(always)]
    fn mark(&self, seen: u16) {
        // SAFETY: the entry is 8-byte aligned and stays allocated (above);
        // the other bits are or-ed with zeros, so concurrent stores of the
        // listener hint are not lost.
        unsafe { atomic::fetch_or_u64(self.word(), (seen as u64) << FLAGS_SHIFT) };
    }

    /// Takes the flow out of its target's active count if it is counted;
    /// exactly one caller (of any CPU) sees `COUNTED` and subtracts.
    #[inline(always)]
    fn uncount(&self) {
        if self.flags() & flow_flags::COUNTED == 0 {
            return;
        }
        // SAFETY: as in `mark`.
        let old = unsafe {
            atomic::fetch_and_not_u64(self.word(), (flow_flags::COUNTED as u64) << FLAGS_SHIFT)
        };
        if (old >> FLAGS_SHIFT) as u16 & flow_flags::COUNTED != 0 {
            active_add(old as u32, -1);
        }
    }
}

/// The flow's flow-table entry, if it has one.
#[inline(always)]
pub fn entry(flow: &FlowKey) -> Option<Entry> {
    if flow.family == FAMILY_V4 {
        FLOWS_V4.get_ptr_mut(FlowKeyV4::new(flow)).map(Entry)
    } else {
        FLOWS_V6.get_ptr_mut(flow).map(Entry)
    }
}

/// Adds `delta` to the target's active-flow count (shared by all CPUs).
#[inline(always)]
pub(super) fn active_add(target_id: u32, delta: i64) {
    if let Some(slot) = TARGET_ACTIVE.get_ptr_mut(target_id) {
        // SAFETY: an 8-byte aligned map value that stays allocated while the
        // program runs; other CPUs only touch it with atomic operations too.
        unsafe { atomic::fetch_add_i64(slot, delta) };
    }
}

/// Remembers the flow's target (replacing any entry it had); false if the
/// insert failed.
#[inline(always)]
fn remember(flow: &FlowKey, state: FlowState) -> bool {
    let inserted = if flow.family == FAMILY_V4 {
        FLOWS_V4.insert(FlowKeyV4::new(flow), state, 0)
    } else {
        FLOWS_V6.insert(flow, state, 0)
    };
    if inserted.is_err() {
        count(Counter::FlowInsertFailed);
        return false;
    }
    true
}

/// The target's data if it may take packets of `group_id`'s flows.
#[inline(always)]
pub fn usable(id: u32, group_id: u32) -> Option<&'static TargetInfo> {
    target_with(id, group_id, target_flags::USABLE)
}

/// The target's data if it belongs to `group_id` and has every bit of
/// `flags` (`USABLE`: may take packets; `SELECTABLE`: may take new flows).
/// Id 0 never qualifies (a zeroed slot fails closed).
#[inline(always)]
pub(super) fn target_with(id: u32, group_id: u32, flags: u16) -> Option<&'static TargetInfo> {
    let info = TARGETS.get(id)?;
    if id != 0 && info.flags & flags == flags && info.group_id == group_id {
        Some(info)
    } else {
        None
    }
}

/// A listener flow with nowhere to go is dropped (fail closed) and counted.
#[inline(always)]
fn no_target() -> u32 {
    count(Counter::NoTarget);
    count(Counter::Dropped);
    xdp_action::XDP_DROP
}

/// The client FIN/RST bits of a TCP flags byte, as `flow_flags`.
#[inline(always)]
fn ending(tcp_flags: u8) -> u16 {
    let mut seen = 0;
    if tcp_flags & tcp::FIN != 0 {
        seen |= flow_flags::FIN;
    }
    if tcp_flags & tcp::RST != 0 {
        seen |= flow_flags::RST;
    }
    seen
}

/// Whether a packet with these TCP flags (0 for UDP) may be steered by the
/// flow cache: no SYN, FIN or RST, whose lifecycle work needs the table.
#[inline(always)]
pub fn may_use_cache(tcp_flags: u8) -> bool {
    tcp_flags & (tcp::SYN | tcp::FIN | tcp::RST) == 0
}

/// A client's opening SYN (not the SYN-ACK of a server, which DSR never
/// sends through the load balancer anyway).
#[inline(always)]
fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
}

/// How long an entry with `flags` may go without packets (ns).
#[inline(always)]
pub(super) fn timeout_ns(group: &GroupInfo, flags: u16) -> u64 {
    let s = if flags & (flow_flags::FIN | flow_flags::RST) != 0 {
        group.fin_timeout_s
    } else {
        group.idle_timeout_s
    };
    s as u64 * 1_000_000_000
}

/// Whether the entry's flow has ended before this packet: past its timeout
/// (`age`: since its last packet), or a client SYN after its FIN or RST (the
/// client reused the port).
#[inline(always)]
fn has_ended(entry: &Entry, tcp_flags: u8, age: u64, group_id: u32) -> bool {
    let flags = entry.flags();
    if is_syn(tcp_flags) && flags & (flow_flags::FIN | flow_flags::RST) != 0 {
        return true;
    }
    age > FLOW_TOUCH_NS
        && GROUPS
            .get(group_id)
            .is_none_or(|group| age > timeout_ns(group, flags))
}

/// A live flow's packet that is not quiet: records the client's FIN or RST
/// (uncounting the flow once) and refreshes `last_seen_ns` when stale.
#[inline(always)]
fn on_packet(entry: &Entry, tcp_flags: u8, age: u64, now: u64) {
    let seen = ending(tcp_flags);
    if seen != 0 {
        if entry.flags() & seen != seen {
            entry.mark(seen);
        }
        entry.uncount();
    }
    if age > FLOW_TOUCH_NS {
        entry.set_last_seen_ns(now);
    }
}

/// The target of a listener's flow: the one its flow-table `entry` names if
/// the flow goes on and the target is still usable, else one chosen for it
/// (and remembered). `tcp_flags`: the packet's TCP flags (0 for UDP); `now`:
/// the data-plane time. Either way the flow cache gets the table's answer.
#[inline(always)]
pub fn target(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    entry: Option<Entry>,
    cache: &cache::Settings,
    now: u64,
) -> Result<Selected, u32> {
    let had_entry = entry.is_some();
    if let Some(entry) = entry {
        if let Some(hit) = existing(flow, tcp_flags, listener, &entry, cache, now) {
            return Ok(hit);
        }
        // The flow ended (this packet starts another) or is re-selected.
        entry.uncount();
    }
    new_flow(flow, tcp_flags, listener, cache, now, had_entry)
}

/// The target the flow's `entry` names, if the flow goes on and the target
/// is still usable (the packet's FIN or RST recorded, a stale last-seen
/// time refreshed, the cache written); None if the flow has ended or must
/// choose again.
#[inline(always)]
fn existing(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    entry: &Entry,
    cache: &cache::Settings,
    now: u64,
) -> Option<Selected> {
    let cacheable = may_use_cache(tcp_flags);
    let last_seen = entry.last_seen_ns();
    let age = now.saturating_sub(last_seen);
    // The common case, decided with one test: a packet of a flow seen
    // within FLOW_TOUCH_NS (no timeout is shorter, so it goes on) that is no
    // SYN, FIN or RST: nothing to check, nothing to write.
    let quiet = age <= FLOW_TOUCH_NS && cacheable;
    if !quiet && has_ended(entry, tcp_flags, age, listener.group_id) {
        return None;
    }
    let id = entry.target_id();
    let Some(info) = usable(id, listener.group_id) else {
        // The target left (removed, MAC lost, or unhealthy with
        // `rebalance`): choose again.
        count(Counter::FlowReselected);
        return None;
    };
    if !quiet {
        on_packet(entry, tcp_flags, age, now);
    }
    if entry.listener_hint() as u32 != listener.listener_id {
        entry.set_listener_hint(listener.listener_id);
    }
    // The entry's `last_seen_ns` now (`on_packet` refreshes a stale one): a
    // packet is quiet until FLOW_TOUCH_NS after it.
    let seen = if age > FLOW_TOUCH_NS { now } else { last_seen };
    let until = seen.saturating_add(FLOW_TOUCH_NS);
    cache::put(flow, cache, id, listener, until, !cacheable);
    count(Counter::FlowHit);
    Some(Selected {
        id,
        info,
        new_flow: false,
    })
}

/// A new flow: its target chosen (a TCP packet that is not a SYN goes where
/// the group's hash puts it: a flow already under way), remembered,
/// counted, and its cache slot written (`had_entry`: the flow table had an
/// entry for its 5-tuple, now replaced).
#[inline(always)]
fn new_flow(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    cache: &cache::Settings,
    now: u64,
    had_entry: bool,
) -> Result<Selected, u32> {
    let group = GROUPS.get(listener.group_id).ok_or_else(no_target)?;
    let id = if flow.proto == PROTO_TCP && !is_syn(tcp_flags) {
        choose::by_hash(flow, listener.group_id, group)
    } else {
        choose::new_flow(flow, listener.group_id, group, now)
    }
    .ok_or_else(no_target)?;
    let info = usable(id, listener.group_id).ok_or_else(no_target)?;
    let state = new_state(tcp_flags, id, listener, now);
    if remember(flow, state) {
        if state.flags & flow_flags::COUNTED != 0 {
            active_add(id, 1);
        }
        // A SYN of a flow the table did not have leaves the cache alone: its
        // slot can hold the flow only if the LRU evicted a flow of the same
        // 5-tuple within the last FLOW_TOUCH_NS, and reading the slot would
        // cost every new flow a cache miss.
        let cacheable = may_use_cache(tcp_flags);
        if cacheable || had_entry {
            let until = now.saturating_add(FLOW_TOUCH_NS);
            cache::put(flow, cache, id, listener, until, !cacheable);
        }
    }
    count(Counter::NewFlow);
    Ok(Selected {
        id,
        info,
        new_flow: true,
    })
}

/// The flow-table entry of a new flow to `id`: what the client has shown,
/// and `COUNTED` unless it was first seen at its FIN or RST (it has ended
/// already).
#[inline(always)]
fn new_state(tcp_flags: u8, id: u32, listener: &ListenerInfo, now: u64) -> FlowState {
    let mut flags = ending(tcp_flags);
    if is_syn(tcp_flags) {
        flags |= flow_flags::SYN;
    }
    if flags & (flow_flags::FIN | flow_flags::RST) == 0 {
        flags |= flow_flags::COUNTED;
    }
    FlowState {
        target_id: id,
        listener_id: listener.listener_id as u16,
        flags,
        created_ns: now,
        last_seen_ns: now,
    }
}
