//! Benchmark floors: what a flow table alone costs, measured beside `lb` and
//! `macswap` in the same run (`cargo xtask bench`, section `packet`).
//!
//! `floor_flow` parses an untagged IPv4 TCP/UDP frame, looks its 5-tuple up
//! in an LRU hash map built like `lb`'s IPv4 flow table (same key, value
//! size, capacity and flags), inserts it on a miss, rewrites both MAC
//! addresses and transmits: the least a load balancer that pins flows in a
//! kernel hash map does per packet, with no listener, no target choice, no
//! lifecycle and no counters. `floor_new_flow` also bumps the source port
//! after each packet (as `lb_new_flow` does), so every repetition of a test
//! run is a miss and an insert. `floor_array_new_flow` records each new flow
//! with one 64-byte store into a slot of a 1M-slot array picked by a
//! multiply-shift hash of the 5-tuple, in place of the LRU insert: the least
//! any design that records its flows in a table of that size does for a new
//! flow (one slot that is seldom in the CPU's caches). Never attached to a
//! NIC.
#![no_std]
#![no_main]

#[macro_use]
mod object;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, LruHashMap},
    macros::btf_map,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{DEFAULT_FLOW_TABLE_SIZE, FlowKeyV4, FlowState};

mod next_source;

#[btf_map]
static FLOOR_FLOWS: LruHashMap<FlowKeyV4, FlowState, { DEFAULT_FLOW_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// `floor_array_new_flow`'s table: one cache line per slot.
#[btf_map]
static FLOOR_SLOTS: Array<[u64; 8], { DEFAULT_FLOW_TABLE_SIZE as usize }> = Array::new();

const ETH_HLEN: usize = 14;
const TARGET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The frame's IPv4 flow and the offset of its source port, if it is an
/// untagged IPv4 TCP or UDP frame.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<(FlowKeyV4, usize)> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN + 20 > end {
        return None;
    }
    // SAFETY: the Ethernet header and 20 bytes of IPv4 header are in the
    // frame (checked above); unaligned reads of wire bytes.
    let (ethertype, ver_ihl, proto, src_be, dst_be) = unsafe {
        let p = start as *const u8;
        (
            u16::from_be_bytes([*p.add(12), *p.add(13)]),
            *p.add(ETH_HLEN),
            *p.add(ETH_HLEN + 9),
            (p.add(ETH_HLEN + 12) as *const u32).read_unaligned(),
            (p.add(ETH_HLEN + 16) as *const u32).read_unaligned(),
        )
    };
    if ethertype != 0x0800 || ver_ihl >> 4 != 4 || (proto != 6 && proto != 17) {
        return None;
    }
    let l4 = ETH_HLEN + ((ver_ihl & 0x0f) as usize) * 4;
    if start + l4 + 4 > end {
        return None;
    }
    // SAFETY: the 4 bytes of ports are in the frame (checked above).
    let (src_port_be, dst_port_be) = unsafe {
        let p = (start + l4) as *const u16;
        (p.read_unaligned(), p.add(1).read_unaligned())
    };
    let key = FlowKeyV4 {
        src_be,
        dst_be,
        src_port_be,
        dst_port_be,
        proto,
        _pad0: 0,
        _pad1: 0,
    };
    Some((key, l4))
}

/// Finds (or remembers) the flow, rewrites the MACs; the source-port offset.
#[inline(always)]
fn forward(ctx: &XdpContext) -> Result<usize, u32> {
    let (key, sport) = parse(ctx).ok_or(xdp_action::XDP_PASS)?;
    let target = match FLOOR_FLOWS.get_ptr(key) {
        // SAFETY: a map value stays allocated while the program runs.
        Some(state) => unsafe { (*state).target_id },
        None => {
            // Every field written (a `..Default::default()` value became a
            // misaligned stack store, which the verifier rejects).
            let state = FlowState {
                target_id: 1,
                listener_id: 1,
                flags: 0,
                created_ns: key.src_port_be as u64,
                last_seen_ns: key.src_port_be as u64,
            };
            FLOOR_FLOWS
                .insert(key, state, 0)
                .map_err(|_| xdp_action::XDP_DROP)?;
            1
        }
    };
    if target == 0 {
        return Err(xdp_action::XDP_DROP);
    }
    rewrite_macs(ctx)?;
    Ok(sport)
}

/// Sends the frame to the target: both MAC addresses rewritten.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext) -> Result<(), u32> {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return Err(xdp_action::XDP_DROP);
    }
    let eth = start as *mut [u8; 6];
    // SAFETY: both MAC addresses are inside the frame (checked above).
    unsafe {
        eth.write_unaligned(TARGET_MAC);
        eth.add(1).write_unaligned(OWN_MAC);
    }
    Ok(())
}

#[xdp]
pub fn floor_flow(ctx: XdpContext) -> u32 {
    match forward(&ctx) {
        Ok(_) => xdp_action::XDP_TX,
        Err(action) => action,
    }
}

#[xdp]
pub fn floor_new_flow(ctx: XdpContext) -> u32 {
    let sport = match forward(&ctx) {
        Ok(sport) => sport,
        Err(action) => return action,
    };
    // The source port, carrying into the low half of the source address.
    next_source::bump(&ctx, sport, ETH_HLEN + 14);
    xdp_action::XDP_TX
}

#[xdp]
pub fn floor_array_new_flow(ctx: XdpContext) -> u32 {
    let Some((key, sport)) = parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let a = ((key.src_be as u64) << 32) | key.dst_be as u64;
    let b = ((key.src_port_be as u64) << 16) | key.dst_port_be as u64 | ((key.proto as u64) << 32);
    let h = (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let index = (h >> 44) as u32; // 20 bits: 1M slots
    let Some(slot) = FLOOR_SLOTS.get_ptr_mut(index) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: a map value that stays allocated while the program runs.
    unsafe {
        (*slot)[0] = a;
        (*slot)[1] = b;
        (*slot)[2] = 1;
    }
    if let Err(action) = rewrite_macs(&ctx) {
        return action;
    }
    next_source::bump(&ctx, sport, ETH_HLEN + 14);
    xdp_action::XDP_TX
}

object_items!();
