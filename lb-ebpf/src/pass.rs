//! XDP_PASS for every frame. The lab attaches it to the bridge port facing the
//! load balancer: a veth only delivers frames sent with native XDP_TX when its
//! peer has an XDP program of its own (see TOOLCHAIN.md).
#![no_std]
#![no_main]

#[macro_use]
mod object;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

object_items!();
