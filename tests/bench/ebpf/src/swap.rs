//! What the MAC-swap baselines do: swap the Ethernet addresses and transmit,
//! the least an XDP_TX forwarder can do.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut [u8; 6];
    // SAFETY: both MAC addresses are inside the frame (checked above).
    unsafe {
        let dst = eth.read_unaligned();
        let src = eth.add(1).read_unaligned();
        eth.write_unaligned(src);
        eth.add(1).write_unaligned(dst);
    }
    xdp_action::XDP_TX
}
