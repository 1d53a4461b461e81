//! Flow -> listener: a filter of the listeners' (VIP, protocol, port) keys
//! first (traffic that is not ours stops there, whatever its port), then
//! the listener itself, from the flow-table entry's hint when it still
//! holds, else by (VIP, protocol, port) hash lookup, else in the port
//! ranges.
use aya_ebpf::{bindings::xdp_action, btf_maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{Config, Counter, FlowKey, ListenerInfo, ListenerKey, PortRangeKey};

use super::{
    LISTENER_FILTER, LISTENER_PORTS, LISTENERS, LISTENERS_BY_ID, PORT_RANGES, counters::count,
    parse::ip_proto,
};

#[inline(always)]
fn not_ours() -> u32 {
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// XDP_PASS unless the frame is addressed to the interface's own MAC
/// (`Config::src_mac`, which the loader sets from the interface; a VLAN
/// interface on it has the same). A frame for another host (a switch
/// flooding an unknown unicast, a promiscuous port, a mirror) or for a
/// group (broadcast, multicast) is not the load balancer's to forward,
/// whatever its IP destination.
#[inline(always)]
pub fn to_us(ctx: &XdpContext, config: &Config) -> Result<(), u32> {
    if is_to_us(ctx, config) {
        Ok(())
    } else {
        Err(not_ours())
    }
}

/// Whether the frame is addressed to the interface's own MAC ([`to_us`]),
/// uncounted.
#[inline(always)]
pub fn is_to_us(ctx: &XdpContext, config: &Config) -> bool {
    let start = ctx.data();
    if start + 6 > ctx.data_end() {
        return false;
    }
    // SAFETY: the 6 bytes are inside the frame (checked above) and in the
    // map value; unaligned 4- and 2-byte loads.
    let (frame, ours) = unsafe {
        let dst = start as *const u8;
        let mac = config.src_mac.as_ptr();
        (
            (
                (dst as *const u32).read_unaligned(),
                (dst.add(4) as *const u16).read_unaligned(),
            ),
            (
                (mac as *const u32).read_unaligned(),
                (mac.add(4) as *const u16).read_unaligned(),
            ),
        )
    };
    frame == ours
}

/// XDP_PASS unless the flow's (VIP, protocol, port) may be a listener's
/// (its bit in the filter is set, or its VIP and protocol's port-range
/// bit).
#[inline(always)]
pub fn listener_filter(flow: &FlowKey) -> Result<(), u32> {
    let filter = LISTENER_FILTER.get(0).ok_or_else(not_ours)?;
    if filter.admits(flow.family, &flow.dst_be, flow.proto, flow.dst_port_be) {
        Ok(())
    } else {
        Err(not_ours())
    }
}

/// Whether the flow's destination may be a VIP (`ListenerFilter::may_be_vip`):
/// else a fragment of its datagram is the host's, and costs no lookup.
#[inline(always)]
pub fn to_vip(flow: &FlowKey) -> bool {
    LISTENER_FILTER
        .get(0)
        .is_some_and(|filter| filter.may_be_vip(flow.family, &flow.dst_be))
}

/// Whether a datagram's fragment after its first, which has no ports, may
/// be the listener's: its VIP and protocol suffice ([`listener_by_id`]).
pub const ANY_PORT: bool = true;

/// The listener `id` if it still has the flow's (VIP, protocol, port), or
/// with `any_port` ([`ANY_PORT`], `flow` a datagram's key) its VIP and
/// protocol: any protocol for an IPv6 datagram whose fragments show
/// Destination Options (only its first fragment has the transport
/// header). A listener of a port range holds its first port in its slot,
/// the others in `LISTENER_PORTS`, read only when the first port is not
/// the flow's.
#[inline(always)]
pub fn listener_by_id(flow: &FlowKey, id: u32, any_port: bool) -> Option<ListenerInfo> {
    let slot = LISTENERS_BY_ID.get(id)?;
    let key = &slot.key;
    if key.addr_be == flow.dst_be
        && (any_port
            || key.port_be == flow.dst_port_be
            || LISTENER_PORTS
                .get(id)
                .is_some_and(|ports| ports.contains(flow.dst_port_be)))
        && (key.proto == flow.proto || (any_port && flow.proto == ip_proto::DESTINATION_OPTIONS))
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
    if let Some(info) = hint.and_then(|id| listener_by_id(flow, id as u32, !ANY_PORT)) {
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
    if let Some(info) = unsafe { LISTENERS.get(key) } {
        return Ok(*info);
    }
    in_port_ranges(flow).ok_or_else(not_ours)
}

/// The listener whose port range holds the flow's (VIP, protocol, port).
/// Reached only past the filter: the VIP and protocol have a range, or the
/// key's bit was a false positive.
#[inline(always)]
fn in_port_ranges(flow: &FlowKey) -> Option<ListenerInfo> {
    let key = Key::new(
        PortRangeKey::PACKET_BITS,
        PortRangeKey {
            family: flow.family,
            proto: flow.proto,
            _pad: [0; 2],
            addr_be: flow.dst_be,
            port_be: flow.dst_port_be,
            _pad2: [0; 2],
        },
    );
    PORT_RANGES.get(&key).copied()
}
