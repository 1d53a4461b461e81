//! Flow -> target: the flow table first, else the group's consistent-hash table.
use aya_ebpf::bindings::xdp_action;
use lb_common::{
    Counter, FAMILY_V4, FlowKey, FlowKeyV4, FlowState, ListenerInfo, TargetInfo, flow_flags,
    target_flags,
};

use super::{
    CONFIG, FLOWS_V4, FLOWS_V6, GROUPS, TARGET_ACTIVE, TARGETS, atomic, choose, counters::count,
    time,
};

pub struct Selected {
    pub id: u32,
    pub info: TargetInfo,
    /// The flow was not in the flow table.
    pub new_flow: bool,
}

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
pub(super) fn usable(id: u32, group_id: u32) -> Option<TargetInfo> {
    let info = *TARGETS.get(id)?;
    if id != 0 && info.flags & target_flags::USABLE != 0 && info.group_id == group_id {
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

/// The target of a listener's flow: the one its flow-table `entry` names if
/// still usable, else one chosen by the group's table (and remembered).
#[inline(always)]
pub fn target(
    flow: &FlowKey,
    listener: &ListenerInfo,
    entry: Option<Entry>,
) -> Result<Selected, u32> {
    if let Some(entry) = entry {
        let id = entry.target_id();
        if let Some(info) = usable(id, listener.group_id) {
            if entry.listener_hint() as u32 != listener.listener_id {
                entry.set_listener_hint(listener.listener_id);
            }
            count(Counter::FlowHit);
            return Ok(Selected {
                id,
                info,
                new_flow: false,
            });
        }
        // The target left (removed, MAC lost, id reused): choose again.
        count(Counter::FlowReselected);
    }

    let group = GROUPS.get(listener.group_id).ok_or_else(no_target)?;
    let config = CONFIG.get(0).ok_or_else(no_target)?;
    let now = time::now_ns(config);
    let id = choose::new_flow(flow, listener.group_id, group, now).ok_or_else(no_target)?;
    let info = usable(id, listener.group_id).ok_or_else(no_target)?;

    let state = FlowState {
        target_id: id,
        listener_id: listener.listener_id as u16,
        flags: flow_flags::COUNTED,
        created_ns: now,
        last_seen_ns: now,
    };
    if remember(flow, state) {
        active_add(id, 1);
    }
    count(Counter::NewFlow);
    Ok(Selected {
        id,
        info,
        new_flow: true,
    })
}
