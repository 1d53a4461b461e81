//! The frozen floor (`lru/`: main's pipeline at feb5154, kernel LRU flow
//! maps and the flow cache) as main's `lb` program was: the entry point over
//! the pipeline. Benchmark-only; never attached to a NIC.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
#[path = "lru/mod.rs"]
mod pipeline;

mod frame;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function, as main's `lb` had it.
#[inline(always)]
pub fn lru(ctx: XdpContext) -> u32 {
    frame::to_lb(&ctx);
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
