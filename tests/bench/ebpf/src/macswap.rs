//! The benchmark baseline: the least an XDP_TX forwarder can do (swap the
//! Ethernet addresses and transmit).
#![no_std]
#![no_main]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn macswap(ctx: XdpContext) -> u32 {
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

object_items!();
