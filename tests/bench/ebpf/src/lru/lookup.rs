//! Flow -> listener: a bitmap of listener ports first (most traffic that is
//! not ours stops there), then the listener itself, from the flow-table
//! entry's hint when it still holds, else by (VIP, protocol, port) hash lookup.
use super::common::{Counter, FlowKey, ListenerInfo, ListenerKey};
use aya_ebpf::bindings::xdp_action;

use super::{LISTENER_PORTS, LISTENERS, LISTENERS_BY_ID, counters::count};

#[inline(always)]
fn not_ours() -> u32 {
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// XDP_PASS unless some listener uses the flow's (protocol, destination port).
#[inline(always)]
pub fn listener_port(flow: &FlowKey) -> Result<(), u32> {
    let ports = LISTENER_PORTS.get(0).ok_or_else(not_ours)?;
    if ports.contains(flow.proto, flow.dst_port_be) {
        Ok(())
    } else {
        Err(not_ours())
    }
}

/// The listener `id` if it still has the flow's (VIP, protocol, port).
#[inline(always)]
fn listener_by_id(flow: &FlowKey, id: u16) -> Option<ListenerInfo> {
    let id = id as u32;
    let slot = LISTENERS_BY_ID.get(id)?;
    let key = &slot.key;
    if key.addr_be == flow.dst_be
        && key.port_be == flow.dst_port_be
        && key.proto == flow.proto
        && key.family == flow.family
    {
        Some(ListenerInfo {
            listener_id: id,
            group_id: slot.group_id,
        })
    } else {
        None
    }
}

/// The listener of a flow's (VIP, protocol, port), or XDP_PASS: traffic that
/// is not addressed to a listener belongs to the kernel. `hint` is the
/// listener id the flow's flow-table entry names: if that id still has this
/// (VIP, protocol, port), the hash lookup is skipped.
#[inline(always)]
pub fn listener(flow: &FlowKey, hint: Option<u16>) -> Result<ListenerInfo, u32> {
    if let Some(info) = hint.and_then(|id| listener_by_id(flow, id)) {
        return Ok(info);
    }
    let key = ListenerKey {
        addr_be: flow.dst_be,
        port_be: flow.dst_port_be,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out at once; the loader never changes an
    // entry in place without a full-value update.
    match unsafe { LISTENERS.get(key) } {
        Some(info) => Ok(*info),
        None => Err(not_ours()),
    }
}
