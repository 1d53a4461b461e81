//! Shared by the benchmark programs `lb_new_flow` and `floor_new_flow`:
//! BPF_PROG_TEST_RUN does not restore the frame between repetitions, so
//! changing the source after each one makes every repetition a new flow.

use aya_ebpf::programs::XdpContext;

/// Increments the big-endian 16-bit source port at offset `sport`, carrying
/// into the 16 bits at `saddr_low` (the low half of the source address):
/// 2^32 distinct flows. Does nothing if either is outside the frame.
#[inline(always)]
pub fn bump(ctx: &XdpContext, sport: usize, saddr_low: usize) {
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
