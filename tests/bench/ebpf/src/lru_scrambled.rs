//! The frozen floor's `lb_scrambled` (see `lb_scrambled.rs`): the same
//! prologue (`visit`), then main's pipeline (`lru/`): established flows at
//! scale in the kernel LRU flow maps and the flow cache. Benchmark-only;
//! never attached to a NIC.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
#[path = "lru/mod.rs"]
mod pipeline;

mod frame;
mod scramble;
mod visit;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
#[inline(always)]
pub fn lru_scrambled(ctx: XdpContext) -> u32 {
    visit::next_flow(&ctx);
    match pipeline::run(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// The floor's clock (unused: the benchmark copies `lb`'s tick length).
#[xdp]
pub fn lru_clock(ctx: XdpContext) -> u32 {
    pipeline::clock(&ctx)
}

object_items!();
