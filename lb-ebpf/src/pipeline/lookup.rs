//! Flow -> listener: a bitmap of listener ports first (most traffic that is
//! not ours stops there), then the exact (VIP, protocol, port) hash lookup.
use aya_ebpf::bindings::xdp_action;
use lb_common::{Counter, FlowKey, ListenerInfo, ListenerKey};

use super::{LISTENER_PORTS, LISTENERS, counters::count};

#[inline(always)]
fn not_ours() -> u32 {
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// The listener of a flow's (VIP, protocol, port), or XDP_PASS: traffic that
/// is not addressed to a listener belongs to the kernel.
#[inline(always)]
pub fn listener(flow: &FlowKey) -> Result<ListenerInfo, u32> {
    let ports = LISTENER_PORTS.get(0).ok_or_else(not_ours)?;
    if !ports.contains(flow.proto, flow.dst_port_be) {
        return Err(not_ours());
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
