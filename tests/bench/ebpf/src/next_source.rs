//! The source of `lb_new_flow`'s next frame: BPF_PROG_TEST_RUN does not
//! restore the frame between repetitions, so changing the source after each
//! one makes every repetition a new flow.

use aya_ebpf::programs::XdpContext;

use crate::frame;

/// Increments the big-endian 16-bit field `p` and returns its new value.
///
/// # Safety
/// `p` points at two bytes inside the frame (`frame::be16`).
#[inline(always)]
unsafe fn add_one(p: *mut u16) -> u16 {
    // SAFETY: as the caller guarantees; unaligned wire bytes.
    unsafe {
        let next = u16::from_be(p.read_unaligned()).wrapping_add(1);
        p.write_unaligned(next.to_be());
        next
    }
}

/// Increments the source port, carrying into the low half of the source
/// address: 2^32 distinct flows. Any other frame (`frame::source_offsets`)
/// is left alone.
#[inline(always)]
pub fn bump_frame(ctx: &XdpContext) {
    frame::to_lb(ctx);
    let Some((sport, saddr_low)) = frame::source_offsets(ctx) else {
        return;
    };
    let (Some(port), Some(addr)) = (frame::be16(ctx, sport), frame::be16(ctx, saddr_low)) else {
        return;
    };
    // SAFETY: both fields are inside the frame (`be16` checked them).
    unsafe {
        if add_one(port) == 0 {
            add_one(addr);
        }
    }
}
