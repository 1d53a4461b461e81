//! Benchmark variant of `lb`: a prologue (`visit`) gives each repetition of
//! a test run the source of the next of N flows, in a scrambled order, then
//! the same pipeline (and maps) as `lb`. Filled once (every flow created),
//! the repetitions measure established flows at scale: each packet of
//! another flow than the last, as on a busy load balancer, where the flow
//! cache and the flow table are read from memory, not from the CPU's
//! caches. Never attached to a NIC.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

// lb's sources, by path: this is the pipeline `lb` runs.
#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
#[path = "../../../../lb-ebpf/src/pipeline/mod.rs"]
mod pipeline;

mod frame;
mod scramble;
mod visit;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function (see lb-ebpf's `main.rs`).
#[inline(always)]
pub fn lb_scrambled(ctx: XdpContext) -> u32 {
    visit::next_flow(&ctx);
    match pipeline::run(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// The data plane's clock, read by the loader (`pipeline::clock`).
#[xdp]
pub fn lb_clock(ctx: XdpContext) -> u32 {
    pipeline::clock(&ctx)
}

object_items!();
