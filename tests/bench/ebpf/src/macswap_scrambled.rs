//! The baseline of `lb_scrambled`: the same prologue (`visit`), then the
//! MAC swap, so that `lb_scrambled` / this isolates the cost of `lb`'s
//! pipeline at N flows. Never attached to a NIC.
#![no_std]
#![no_main]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
mod frame;
mod scramble;
mod swap;
mod visit;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn macswap_scrambled(ctx: XdpContext) -> u32 {
    visit::next_flow(&ctx);
    swap::swap_macs(&ctx)
}

object_items!();
