//! Benchmark variant of `lb_new_flow` with the flow state taken out: no flow
//! cache probe, no flow-table lookup, no insert, no cache write. Everything
//! else a new flow costs is there (parse, listener lookup, the group's
//! algorithm, active-flow count, counters, rewrite), so `lb_new_flow` minus
//! this is what pinning a flow costs, and this alone is the least `lb`'s
//! new-flow path can take while it chooses targets as it does. The source
//! changes after each repetition as in `lb_new_flow`. Never attached to a
//! NIC: it pins nothing, so it breaks the flow lifecycle on purpose.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod next_source;
#[path = "pipeline/mod.rs"]
mod pipeline;

/// This build keeps no flow state (`pipeline::FLOW_STATE`).
const FLOW_STATE: bool = false;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
// The pipeline in the program's own function: the macro calls this one, and
// left to itself LLVM may keep it a separate BPF function (a BPF-to-BPF call
// per packet, measured at 7 ns).
#[inline(always)]
pub fn lb_no_flow_state(ctx: XdpContext) -> u32 {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
