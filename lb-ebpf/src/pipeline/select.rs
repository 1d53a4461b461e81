//! Flow -> target: the flow table first, else the group's consistent-hash table.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use lb_common::{
    Counter, FlowKey, FlowState, ListenerInfo, TargetInfo, hash::flow_hash, target_flags,
};

use super::{FLOWS, GROUP_TABLES, GROUPS, TARGETS, counters::count};

pub struct Selected {
    pub id: u32,
    pub info: TargetInfo,
    /// The flow was not in the flow table.
    pub new_flow: bool,
}

/// The target's data if it may take packets of `group_id`'s flows.
#[inline(always)]
fn usable(id: u32, group_id: u32) -> Option<TargetInfo> {
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

#[inline(always)]
pub fn target(flow: &FlowKey, listener: &ListenerInfo) -> Result<Selected, u32> {
    // SAFETY: the target id is copied out before any other map operation.
    if let Some(id) = unsafe { FLOWS.get(flow) }.map(|state| state.target_id) {
        if let Some(info) = usable(id, listener.group_id) {
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
    let hash = flow_hash(flow, group.hash_fields);
    let table = GROUP_TABLES.get(listener.group_id).ok_or_else(no_target)?;
    let slots = *table.get(0).ok_or_else(no_target)?;
    if slots == 0 {
        return Err(no_target());
    }
    let id = *table.get(1 + hash % slots).ok_or_else(no_target)?;
    let info = usable(id, listener.group_id).ok_or_else(no_target)?;

    let state = FlowState {
        target_id: id,
        flags: 0,
        // SAFETY: a plain helper call.
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    if FLOWS.insert(flow, &state, 0).is_err() {
        count(Counter::FlowInsertFailed);
    }
    count(Counter::NewFlow);
    Ok(Selected {
        id,
        info,
        new_flow: true,
    })
}
