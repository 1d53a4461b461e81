//! Benchmark variant of `lb` for the fixtures that repeat one frame: the
//! frame is addressed to the load balancer again (`frame::to_lb`), then
//! the same pipeline (and maps) as `lb`. Never attached to a NIC.
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

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function (see lb-ebpf's `main.rs`).
#[inline(always)]
pub fn lb_plain(ctx: XdpContext) -> u32 {
    frame::to_lb(&ctx);
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
