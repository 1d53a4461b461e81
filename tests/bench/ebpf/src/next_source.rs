//! The source of `lb_new_flow`'s next frame: BPF_PROG_TEST_RUN does not
//! restore the frame between repetitions, so changing the source after each
//! one makes every repetition a new flow.

use aya_ebpf::programs::XdpContext;

/// Increments the big-endian 16-bit source port at offset `sport`, carrying
/// into the 16 bits at `saddr_low` (the low half of the source address):
/// 2^32 distinct flows. Does nothing if either is outside the frame.
#[inline(always)]
fn bump(ctx: &XdpContext, sport: usize, saddr_low: usize) {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + sport + 2 > end || start + saddr_low + 2 > end {
        return;
    }
    let add_one = |at: usize| {
        let p = (start + at) as *mut u16;
        // SAFETY: `at + 2` is inside the frame for both offsets used
        // (checked above).
        unsafe {
            let next = u16::from_be(p.read_unaligned()).wrapping_add(1);
            p.write_unaligned(next.to_be());
            next
        }
    };
    if add_one(sport) == 0 {
        add_one(saddr_low);
    }
}

/// `bump` for an untagged IPv4 or IPv6 frame without options or extension
/// headers (the benchmark's frames); any other frame is left alone.
#[inline(always)]
pub fn bump_frame(ctx: &XdpContext) {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return;
    }
    // SAFETY: byte 12 and 13 are inside the checked Ethernet header.
    let ethertype =
        unsafe { u16::from_be_bytes([*((start + 12) as *const u8), *((start + 13) as *const u8)]) };
    // Offsets of the source port and of the last 16 bits of the source address.
    let (sport, saddr_low) = match ethertype {
        0x0800 => (14 + 20, 14 + 12 + 2),
        0x86dd => (14 + 40, 14 + 8 + 14),
        _ => return,
    };
    bump(ctx, sport, saddr_low);
}
