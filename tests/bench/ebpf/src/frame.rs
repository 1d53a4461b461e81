//! Where a benchmark frame keeps its source: the TCP/UDP source port and the
//! last 16 bits of the source address of an untagged IPv4 frame without
//! options or an IPv6 frame without extension headers (the benchmark's
//! frames), and big-endian 16-bit fields there.

use aya_ebpf::programs::XdpContext;

/// Offsets of the source port and of the low 16 bits of the source address,
/// or `None` for a frame of another kind (or one too short to tell).
#[inline(always)]
pub fn source_offsets(ctx: &XdpContext) -> Option<(usize, usize)> {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return None;
    }
    // SAFETY: bytes 12 and 13 are inside the checked Ethernet header.
    let ethertype =
        unsafe { u16::from_be_bytes([*((start + 12) as *const u8), *((start + 13) as *const u8)]) };
    match ethertype {
        0x0800 => Some((14 + 20, 14 + 12 + 2)),
        0x86dd => Some((14 + 40, 14 + 8 + 14)),
        _ => None,
    }
}

/// The big-endian 16-bit field at `at`, as a pointer, if it is inside the
/// frame.
#[inline(always)]
pub fn be16(ctx: &XdpContext, at: usize) -> Option<*mut u16> {
    let start = ctx.data();
    if start + at + 2 > ctx.data_end() {
        return None;
    }
    Some((start + at) as *mut u16)
}

/// The load balancer's own MAC, which the benchmark's frames are addressed
/// to (`lb_tests::packets::LB_MAC`): `lb` balances only frames for it.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Addresses the frame to the load balancer again. BPF_PROG_TEST_RUN does
/// not restore the frame between repetitions, and the previous repetition
/// rewrote its destination to a target's MAC (`lb`, the floor) or swapped
/// the addresses (MAC-swap); every build writes it first, so that each
/// repetition is a frame the load balancer receives, at the same cost for
/// every program compared.
#[inline(always)]
pub fn to_lb(ctx: &XdpContext) {
    let start = ctx.data();
    if start + 6 > ctx.data_end() {
        return;
    }
    let (head, tail) = (
        u32::from_ne_bytes([LB_MAC[0], LB_MAC[1], LB_MAC[2], LB_MAC[3]]),
        u16::from_ne_bytes([LB_MAC[4], LB_MAC[5]]),
    );
    // SAFETY: the 6 bytes are inside the frame (checked above); unaligned
    // stores of wire bytes.
    unsafe {
        (start as *mut u32).write_unaligned(head);
        ((start + 4) as *mut u16).write_unaligned(tail);
    }
}
