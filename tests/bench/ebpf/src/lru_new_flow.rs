//! The frozen floor's `lb_new_flow` (see `new_flow.rs`): main's pipeline
//! (`lru/`), then the frame's next source, so that every repetition of a
//! test run is a new flow into the kernel LRU flow map. Benchmark-only;
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
mod next_source;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
#[inline(always)]
pub fn lru_new_flow(ctx: XdpContext) -> u32 {
    let action = match pipeline::run(&ctx) {
        Ok(action) | Err(action) => action,
    };
    next_source::bump_frame(&ctx);
    action
}

/// The floor's clock (unused: the benchmark copies `lb`'s tick length).
#[xdp]
pub fn lru_clock(ctx: XdpContext) -> u32 {
    pipeline::clock(&ctx)
}

object_items!();
