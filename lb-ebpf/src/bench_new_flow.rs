//! Benchmark variant of `lb`: the same pipeline (and maps), then the TCP/UDP
//! source port of an untagged IPv4 or IPv6 frame without options is
//! incremented (carrying into the source address). BPF_PROG_TEST_RUN does not restore the frame between
//! repetitions, so every repetition of one test run is a new flow: this
//! measures the steady-state new-flow path (flow table miss, hash, table
//! lookup, flow insert with LRU eviction) at full rate. Never attached to a NIC.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod next_source;
#[path = "pipeline/mod.rs"]
mod pipeline;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn lb_new_flow(ctx: XdpContext) -> u32 {
    let action = match pipeline::run(&ctx) {
        Ok(action) | Err(action) => action,
    };
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return action;
    }
    // SAFETY: byte 12 and 13 are inside the checked Ethernet header.
    let ethertype =
        unsafe { u16::from_be_bytes([*((start + 12) as *const u8), *((start + 13) as *const u8)]) };
    // Offsets of the source port and of the last 16 bits of the source address.
    let (sport, saddr_low) = match ethertype {
        0x0800 => (14 + 20, 14 + 12 + 2),
        0x86dd => (14 + 40, 14 + 8 + 14),
        _ => return action,
    };
    next_source::bump(&ctx, sport, saddr_low);
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
