//! The only code that writes packet bytes: DSR rewrites the Ethernet
//! addresses and nothing else (IP header, VLAN tag and payload untouched).
use super::common::{Config, Counter, TargetInfo};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use super::counters::count;

/// Writes a MAC address as one 4-byte and one 2-byte store (a `[u8; 6]` copy
/// may become a call to a `memmove` subprogram).
///
/// # Safety
/// `at..at + 6` must be inside the frame.
#[inline(always)]
unsafe fn write_mac(at: *mut u8, mac: &[u8; 6]) {
    // SAFETY: 6 bytes of a map value, read as one 4-byte and one 2-byte
    // load (byte loads would be six).
    let (head, tail) = unsafe {
        let p = mac.as_ptr();
        (
            (p as *const u32).read_unaligned(),
            (p.add(4) as *const u16).read_unaligned(),
        )
    };
    // SAFETY: the caller guarantees the 6 bytes are in the frame; unaligned
    // stores of wire bytes.
    unsafe {
        (at as *mut u32).write_unaligned(head);
        (at.add(4) as *mut u16).write_unaligned(tail);
    }
}

#[inline(always)]
pub fn to_target(ctx: &XdpContext, target: &TargetInfo, config: &Config) -> Result<(), u32> {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        // Unreachable after parse; kept for the verifier and for safety.
        count(Counter::Malformed);
        return Err(xdp_action::XDP_PASS);
    }
    let eth = start as *mut u8;
    // SAFETY: the 12 bytes of the two MAC addresses are inside the frame.
    unsafe {
        write_mac(eth, &target.mac);
        write_mac(eth.add(6), &config.src_mac);
    }
    Ok(())
}
