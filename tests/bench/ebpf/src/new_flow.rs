//! Benchmark variant of `lb`: the same pipeline (and maps), then the TCP/UDP
//! source port of an untagged IPv4 or IPv6 frame without options is
//! incremented (carrying into the source address). BPF_PROG_TEST_RUN does
//! not restore the frame between repetitions, so every repetition of one
//! test run is a new flow: this measures the steady-state new-flow path
//! (flow table miss, hash, table lookup, flow insert with LRU eviction) at
//! full rate. Never attached to a NIC.
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
mod next_source;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function (see lb-ebpf's `main.rs`).
#[inline(always)]
pub fn lb_new_flow(ctx: XdpContext) -> u32 {
    let action = match pipeline::run(&ctx) {
        Ok(action) | Err(action) => action,
    };
    next_source::bump_frame(&ctx);
    action
}

/// The data plane's clock, read by the loader (`pipeline::clock`).
#[xdp]
pub fn lb_clock(ctx: XdpContext) -> u32 {
    pipeline::clock(&ctx)
}

object_items!();
