//! A new flow's target, by the group's algorithm.
use lb_common::{FlowKey, GroupInfo, hash::flow_hash};

use super::GROUP_TABLES;

/// The slot of the group's table the flow hash picks: the consistent-hash
/// target of `hash` and `source_ip` groups, and where a TCP packet that is
/// not a SYN and misses the flow table goes (`None`: no table, or an empty
/// one). The caller checks the id is usable.
#[inline(always)]
pub fn by_hash(flow: &FlowKey, group_id: u32, group: &GroupInfo) -> Option<u32> {
    let hash = flow_hash(flow, group.hash_fields);
    let table = GROUP_TABLES.get(group_id)?;
    let slots = *table.get(0)?;
    if slots == 0 {
        return None;
    }
    table.get(1 + hash % slots).copied()
}

/// The target id a new flow of `group_id` goes to, by the group's algorithm
/// (`now_ns`: data-plane time, for sticky sessions). The caller checks the id
/// is usable.
#[inline(always)]
pub fn new_flow(flow: &FlowKey, group_id: u32, group: &GroupInfo, _now_ns: u64) -> Option<u32> {
    by_hash(flow, group_id, group)
}
