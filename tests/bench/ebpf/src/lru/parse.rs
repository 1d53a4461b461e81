//! Bounds-checked header parsing over `network-types`' header structs:
//! Ethernet (with at most one 802.1Q or 802.1ad tag), IPv4 (any IHL: options
//! are skipped), IPv6 (no extension headers), TCP, UDP.
//!
//! The rule for what does not parse (documented in the README):
//! - not IPv4/IPv6, not TCP/UDP, or IPv6 with an extension header first:
//!   XDP_PASS, counted `passed` (not ours);
//! - IPv4 fragments: XDP_PASS, counted `fragment` (fragment steering is later work);
//! - truncated or inconsistent headers (frame shorter than a header, IP version
//!   field not matching the EtherType, IHL < 5, IPv4 total length shorter than
//!   its header): XDP_PASS untouched, counted `malformed`; the kernel's own
//!   checks then drop it. Nothing is read past `data_end`.
//!
//! Every header is read through a pointer that `header` checked against
//! `data_end`; the structs hold wire bytes (byte arrays, or a `u16` read
//! unaligned), and addresses and ports stay in wire order, as the flow key
//! wants them.
use core::ptr::addr_of;

use super::common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use super::counters::count;

/// IPv4 flags and fragment offset (`Ipv4Hdr::frags`): the MF bit and the
/// 13-bit offset; DF does not matter.
const IPV4_FRAG_MASK: u16 = 0x3fff;

/// A `T` header at `offset`, or `None` if the frame is shorter.
#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
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

/// TCP header flag bits (the second byte of `TcpHdr`'s flags bitfield).
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
    let (ethertype, l3) = ethernet(ctx)?;
    let l4 = if ethertype == EtherType::Ipv4 as u16 {
        ipv4(ctx, l3, key)?
    } else if ethertype == EtherType::Ipv6 as u16 {
        ipv6(ctx, l3, key)?
    } else {
        return Err(not_ours());
    };
    ports(ctx, l4, key)
}

/// The EtherType (wire order) and where the IP header starts, past at most
/// one VLAN tag.
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), u32> {
    let eth: *const EthHdr = header(ctx, 0).ok_or_else(malformed)?;
    // SAFETY: `eth` covers an EthHdr; its u16 may be unaligned in the frame.
    let ethertype = unsafe { addr_of!((*eth).ether_type).read_unaligned() };
    if ethertype != EtherType::Ieee8021q as u16 && ethertype != EtherType::Ieee8021ad as u16 {
        return Ok((ethertype, EthHdr::LEN));
    }
    let tag: *const VlanHdr = header(ctx, EthHdr::LEN).ok_or_else(malformed)?;
    // SAFETY: `tag` covers a VlanHdr.
    let inner = unsafe { addr_of!((*tag).ether_type).read_unaligned() };
    Ok((inner, EthHdr::LEN + VlanHdr::LEN))
}

/// The IPv4 header at `l3` into `key`; where the transport header starts.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<usize, u32> {
    let ip: *const Ipv4Hdr = header(ctx, l3).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv4Hdr (byte fields only: no alignment).
    let ip = unsafe { &*ip };
    if ip.version() != 4 {
        return Err(malformed());
    }
    let hlen = ip.ihl() as usize;
    if hlen < Ipv4Hdr::LEN || (u16::from_be_bytes(ip.tot_len) as usize) < hlen {
        return Err(malformed());
    }
    // The options (if any) must be in the frame.
    header::<u8>(ctx, l3 + hlen - 1).ok_or_else(malformed)?;
    if u16::from_be_bytes(ip.frags) & IPV4_FRAG_MASK != 0 {
        count(Counter::Fragment);
        return Err(xdp_action::XDP_PASS);
    }
    key.proto = ip.proto;
    key.family = FAMILY_V4;
    key.src_be[0] = u32::from_ne_bytes(ip.src_addr);
    key.dst_be[0] = u32::from_ne_bytes(ip.dst_addr);
    Ok(l3 + hlen)
}

/// The IPv6 header at `l3` into `key`; where the transport header starts.
/// Extension headers are not walked yet: a packet with one has no TCP or
/// UDP next header here, and passes.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<usize, u32> {
    let ip: *const Ipv6Hdr = header(ctx, l3).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv6Hdr (byte fields only: no alignment).
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return Err(malformed());
    }
    key.proto = ip.next_hdr;
    key.family = FAMILY_V6;
    key.src_be = words(&ip.src_addr);
    key.dst_be = words(&ip.dst_addr);
    Ok(l3 + Ipv6Hdr::LEN)
}

/// An IPv6 address as four words of wire bytes.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The ports of the TCP or UDP header at `l4` into `key`; the TCP flags
/// (0 for UDP).
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, key: &mut FlowKey) -> Result<u8, u32> {
    match key.proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = header(ctx, l4).ok_or_else(malformed)?;
            // SAFETY: `tcp` covers a TcpHdr (byte fields only).
            let tcp = unsafe { &*tcp };
            key.src_port_be = u16::from_ne_bytes(tcp.source);
            key.dst_port_be = u16::from_ne_bytes(tcp.dest);
            // The bitfield is data offset and reserved bits, then the flags
            // byte: one load instead of a bit read per flag.
            // SAFETY: a repr(C) wrapper of the header's two bytes.
            let doff_flags: [u8; 2] = unsafe { core::mem::transmute(tcp._bitfield_1) };
            Ok(doff_flags[1])
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = header(ctx, l4).ok_or_else(malformed)?;
            // SAFETY: `udp` covers a UdpHdr (byte fields only).
            let udp = unsafe { &*udp };
            key.src_port_be = u16::from_ne_bytes(udp.src);
            key.dst_port_be = u16::from_ne_bytes(udp.dst);
            Ok(0)
        }
        _ => Err(not_ours()),
    }
}
