//! The wrapper of the `versus` section: each repetition undoes what the
//! program under test added in front of the frame, takes the source of the
//! next flow of the frame's visit (`visit`, as the scrambled builds do),
//! then tail-calls the program under test, `UNDER_TEST[0]`: another load
//! balancer pinned by its own loader, or `lb`, the floor or MAC-swap, each
//! behind its own copy of this wrapper, so that all are timed through the
//! same prologue and the same tail call. Benchmark-only; never attached to
//! a NIC.
//!
//! BPF_PROG_TEST_RUN keeps the frame from one repetition to the next,
//! including a head the program moved: a load balancer that encapsulates
//! (Katran's IP-in-IP) leaves the frame longer by its outer header, which
//! the next repetition would otherwise wrap again. The benchmark's frames
//! are [`scramble::FRAME_LEN`] bytes long, so the excess is what the
//! previous repetition added; the inner packet is where it was, and so is
//! the visit.
#![no_std]
#![no_main]

#[macro_use]
#[path = "../../../../lb-ebpf/src/object.rs"]
mod object;
mod frame;
mod scramble;
mod visit;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};

/// The program under test, at index 0 (the loader's).
#[map]
static UNDER_TEST: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The most a program under test may add in front of the frame: an
/// Ethernet header moved by an outer IPv6 header and a UDP one, with room
/// to spare.
const MAX_ADDED: usize = 128;

/// Takes off what the previous repetition added in front of the frame and
/// writes the Ethernet type of the packet found behind it (IPv4 or IPv6,
/// from its version). The destination MAC is written by `visit::next_flow`
/// (`frame::to_lb`); the source MAC is read by no program under test.
#[inline(always)]
fn unwrap(ctx: &XdpContext) {
    let len = ctx.data_end() - ctx.data();
    if len <= scramble::FRAME_LEN || len > scramble::FRAME_LEN + MAX_ADDED {
        return;
    }
    // SAFETY: a helper call on this program's own context; on failure the
    // frame is left as it is, and the program under test sees it so.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (len - scramble::FRAME_LEN) as i32) } != 0 {
        return;
    }
    let start = ctx.data();
    if start + 15 > ctx.data_end() {
        return;
    }
    // SAFETY: bytes 12 to 14 are inside the frame (checked above); wire
    // bytes, read and written unaligned.
    unsafe {
        let version = *((start + 14) as *const u8) >> 4;
        let ethertype: u16 = if version == 6 { 0x86dd } else { 0x0800 };
        ((start + 12) as *mut u16).write_unaligned(ethertype.to_be());
    }
}

#[xdp]
pub fn versus(ctx: XdpContext) -> u32 {
    unwrap(&ctx);
    visit::next_flow(&ctx);
    // SAFETY: a tail call; it returns only if `UNDER_TEST[0]` is empty.
    let _ = unsafe { UNDER_TEST.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

object_items!();
