//! Flow -> listener.
use aya_ebpf::bindings::xdp_action;
use lb_common::{Counter, FlowKey, ListenerInfo, ListenerKey};

use super::{LISTENERS, counters::count};

/// The listener of a flow's (VIP, protocol, port), or XDP_PASS: traffic that
/// is not addressed to a listener belongs to the kernel.
#[inline(always)]
pub fn listener(flow: &FlowKey) -> Result<ListenerInfo, u32> {
    let key = ListenerKey {
        addr_be: flow.dst_be,
        port_be: flow.dst_port_be,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out at once; the loader never changes an
    // entry in place without a full-value update.
    match unsafe { LISTENERS.get(&key) } {
        Some(info) => Ok(*info),
        None => {
            count(Counter::Passed);
            Err(xdp_action::XDP_PASS)
        }
    }
}
