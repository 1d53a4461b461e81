//! The only code that writes packet bytes: DSR rewrites the Ethernet
//! addresses and nothing else (IP header, VLAN tag and payload untouched).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, TargetInfo};

use super::{CONFIG, counters::count};

#[inline(always)]
pub fn to_target(ctx: &XdpContext, target: &TargetInfo) -> Result<(), u32> {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        // Unreachable after parse; kept for the verifier and for safety.
        count(Counter::Malformed);
        return Err(xdp_action::XDP_PASS);
    }
    let Some(config) = CONFIG.get(0) else {
        count(Counter::Dropped);
        return Err(xdp_action::XDP_DROP);
    };
    let eth = start as *mut [u8; 6];
    // SAFETY: the 12 bytes of the two MAC addresses are inside the frame.
    unsafe {
        eth.write_unaligned(target.mac);
        eth.add(1).write_unaligned(config.src_mac);
    }
    Ok(())
}
