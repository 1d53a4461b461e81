//! The benchmark baseline: the least an XDP_TX forwarder can do (swap the
//! Ethernet addresses and transmit).
#![no_std]
#![no_main]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
mod swap;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn macswap(ctx: XdpContext) -> u32 {
    swap::swap_macs(&ctx)
}

object_items!();
