//! The prologue of the scrambled builds: before the program under test
//! sees the frame, its source becomes that of the next flow of the visit
//! the frame carries (`scramble`), so that the repetitions of one test run
//! visit N flows in a scrambled order, each packet of another flow than the
//! last.
//!
//! The frame is addressed to the load balancer again first
//! (`frame::to_lb`): `lb` rewrites only the Ethernet addresses (DSR) and
//! the MAC-swap baseline swaps them; nothing else needs restoring (the
//! flags of the TCP header are never written).

use aya_ebpf::programs::XdpContext;

use crate::{
    frame,
    scramble::{self, FRAME_LEN, VISIT_AT, Visit},
};

/// Moves the frame's visit one position on and writes the source of the
/// flow at the position it was at. A frame without a visit, or of another
/// kind (`frame::source_offsets`), is left alone.
#[inline(always)]
pub fn next_flow(ctx: &XdpContext) {
    frame::to_lb(ctx);
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return;
    }
    let Some((sport, saddr_low)) = frame::source_offsets(ctx) else {
        return;
    };
    let (Some(port), Some(addr)) = (frame::be16(ctx, sport), frame::be16(ctx, saddr_low)) else {
        return;
    };
    let at = (start + VISIT_AT) as *mut Visit;
    // SAFETY: the visit's 16 bytes end at FRAME_LEN, inside the frame
    // (checked above); the two fields are inside it (`be16` checked them);
    // wire bytes, read and written unaligned.
    unsafe {
        let visit = at.read_unaligned();
        core::ptr::addr_of_mut!((*at).next).write_unaligned(visit.next.wrapping_add(1));
        let (addr_low, port_value) = scramble::source(scramble::flow(visit.next, &visit));
        addr.write_unaligned(addr_low.to_be());
        port.write_unaligned(port_value.to_be());
    }
}
