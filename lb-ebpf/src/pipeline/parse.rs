//! Bounds-checked header parsing: Ethernet (with at most one 802.1Q tag),
//! IPv4 (any IHL: options are skipped), IPv6 (no extension headers), TCP, UDP.
//!
//! The rule for what does not parse (documented in the README):
//! - not IPv4/IPv6, not TCP/UDP, or IPv6 with an extension header first:
//!   XDP_PASS, counted `passed` (not ours);
//! - IPv4 fragments: XDP_PASS, counted `fragment` (fragment steering is later work);
//! - truncated or inconsistent headers (frame shorter than a header, IP version
//!   field not matching the EtherType, IHL < 5, IPv4 total length shorter than
//!   its header): XDP_PASS untouched, counted `malformed`; the kernel's own
//!   checks then drop it. Nothing is read past `data_end`.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};

use super::counters::count;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv4 flags and fragment offset: MF bit and the 13-bit offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;

/// A pointer to `len` bytes at `offset`, or `None` if the frame is shorter.
#[inline(always)]
fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const u8)
}

#[inline(always)]
fn malformed() -> u32 {
    count(Counter::Malformed);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn not_ours() -> u32 {
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn be16(p: *const u8, at: usize) -> u16 {
    // SAFETY: callers pass pointers checked by `bytes_at` to cover `at + 2`.
    unsafe { u16::from_be_bytes([*p.add(at), *p.add(at + 1)]) }
}

#[inline(always)]
fn raw_u32(p: *const u8, at: usize) -> u32 {
    // SAFETY: as above, for `at + 4`; unaligned read of wire bytes.
    unsafe { (p.add(at) as *const u32).read_unaligned() }
}

#[inline(always)]
fn raw_u16(p: *const u8, at: usize) -> u16 {
    // SAFETY: as above, for `at + 2`.
    unsafe { (p.add(at) as *const u16).read_unaligned() }
}

/// TCP header flag bits (byte 13 of the TCP header).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Parses the frame into `key`, the flow it belongs to, and returns the TCP
/// flags byte (0 for UDP). The key is filled in place (it is a map key on the
/// stack) rather than returned: a returned key is assembled in registers,
/// spilled, and copied again. The flags stay out of the key: the key is
/// hashed and compared whole, and every packet of a flow must have the same.
#[inline(always)]
pub fn flow(ctx: &XdpContext, key: &mut FlowKey) -> Result<u8, u32> {
    let eth = bytes_at(ctx, 0, ETH_HLEN).ok_or_else(malformed)?;
    let mut ethertype = be16(eth, 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = bytes_at(ctx, ETH_HLEN, VLAN_HLEN).ok_or_else(malformed)?;
        ethertype = be16(tag, 2);
        l3 += VLAN_HLEN;
    }
    let l4 = match ethertype {
        ETH_P_IP => {
            let ip = bytes_at(ctx, l3, IPV4_MIN_HLEN).ok_or_else(malformed)?;
            // SAFETY: `ip` covers IPV4_MIN_HLEN bytes.
            let ver_ihl = unsafe { *ip };
            if ver_ihl >> 4 != 4 {
                return Err(malformed());
            }
            let hlen = ((ver_ihl & 0x0f) as usize) * 4;
            if hlen < IPV4_MIN_HLEN {
                return Err(malformed());
            }
            if (be16(ip, 2) as usize) < hlen {
                return Err(malformed());
            }
            // The options (if any) must be in the frame.
            bytes_at(ctx, l3, hlen).ok_or_else(malformed)?;
            if be16(ip, 6) & IPV4_FRAG_MASK != 0 {
                count(Counter::Fragment);
                return Err(xdp_action::XDP_PASS);
            }
            // SAFETY: within the checked header.
            key.proto = unsafe { *ip.add(9) };
            key.family = FAMILY_V4;
            key.src_be[0] = raw_u32(ip, 12);
            key.dst_be[0] = raw_u32(ip, 16);
            l3 + hlen
        }
        ETH_P_IPV6 => {
            let ip = bytes_at(ctx, l3, IPV6_HLEN).ok_or_else(malformed)?;
            // SAFETY: `ip` covers IPV6_HLEN bytes.
            if unsafe { *ip } >> 4 != 6 {
                return Err(malformed());
            }
            // Extension headers are not walked yet: such packets are not
            // TCP/UDP at this point and pass below.
            // SAFETY: within the checked header.
            key.proto = unsafe { *ip.add(6) };
            key.family = FAMILY_V6;
            key.src_be = [
                raw_u32(ip, 8),
                raw_u32(ip, 12),
                raw_u32(ip, 16),
                raw_u32(ip, 20),
            ];
            key.dst_be = [
                raw_u32(ip, 24),
                raw_u32(ip, 28),
                raw_u32(ip, 32),
                raw_u32(ip, 36),
            ];
            l3 + IPV6_HLEN
        }
        _ => return Err(not_ours()),
    };
    let l4_len = match key.proto {
        PROTO_TCP => TCP_MIN_HLEN,
        PROTO_UDP => UDP_HLEN,
        _ => return Err(not_ours()),
    };
    let ports = bytes_at(ctx, l4, l4_len).ok_or_else(malformed)?;
    key.src_port_be = raw_u16(ports, 0);
    key.dst_port_be = raw_u16(ports, 2);
    if key.proto == PROTO_TCP {
        // SAFETY: `ports` covers TCP_MIN_HLEN (20) bytes; the flags are byte 13.
        Ok(unsafe { *ports.add(13) })
    } else {
        Ok(0)
    }
}
