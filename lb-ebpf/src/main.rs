//! The `lb` XDP program: the entry point over the pipeline (`pipeline/`, which
//! also holds the maps). Anything that is not listener traffic passes to the
//! kernel untouched.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

#[macro_use]
mod object;

mod pipeline;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function: the macro calls this one, and
// left to itself LLVM may keep it a separate BPF function, a BPF-to-BPF call
// per packet (golden `each_data_plane_program_is_one_bpf_function`).
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
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
