//! Bounds-checked header parsing over `network-types`' header structs:
//! Ethernet (with at most one 802.1Q or 802.1ad tag), IPv4 (any IHL: options
//! are skipped), IPv6 with its extension headers (walked: hop-by-hop,
//! destination options, routing with no segments left, fragment; at most
//! [`EXTENSION_HEADERS`]), TCP, UDP, and the ICMP errors that quote a flow.
//!
//! What a frame is ([`Parsed::kind`]):
//! - [`kind::WHOLE`]: a TCP or UDP packet (or an atomic fragment: offset 0,
//!   no more fragments);
//! - the first fragment of a datagram ([`kind::WHOLE`], the key marked
//!   `FlowKey::is_first_fragment`), which has its ports: it goes as a
//!   whole packet would, and its datagram's later fragments follow it;
//! - [`kind::LATER_FRAGMENT`]: a TCP or UDP fragment at a nonzero offset:
//!   no ports (the key's are 0), only addresses, protocol and datagram id
//!   (over IPv6 the protocol is its Fragment header's next header, which
//!   is 60 when Destination Options come before the transport header, and
//!   a first fragment's datagram is keyed by it too);
//! - [`kind::ICMP_ERROR`]: an ICMP destination unreachable (fragmentation
//!   needed included) or time exceeded, or an ICMPv6 destination
//!   unreachable, packet too big or time exceeded, quoting a TCP or UDP
//!   packet the VIP sent (a target's reply, or its first fragment: an IPv6
//!   quote may have a Fragment header): the key is the flow it belongs to,
//!   the quoted packet's addresses and ports swapped.
//!
//! The rule for what does not parse (documented in the README):
//! - not IPv4/IPv6, not TCP/UDP/ICMP; ICMP that is no error (echo
//!   requests included) or quotes no TCP/UDP packet from the address it is
//!   sent to; later fragments of other protocols: XDP_PASS, counted
//!   `passed` (not ours);
//! - IPv6 with an extension header the walk does not take (authentication,
//!   mobility, HIP, shim6, experimental), a routing header with segments
//!   left, or more than [`EXTENSION_HEADERS`] of them: XDP_PASS, counted
//!   `extension_header`;
//! - truncated or inconsistent headers (frame shorter than a header, IP version
//!   field not matching the EtherType, IHL < 5, IPv4 total length shorter than
//!   its header, a quoted header cut short, an IP length field short of a
//!   header read after the IP header): XDP_PASS untouched, counted
//!   `malformed`; the kernel's own checks then drop it. Nothing is read past
//!   `data_end`, and nothing after the IP header past the datagram's end by
//!   its length field (IPv4 total length, IPv6 payload length): the bytes
//!   after it are the link's padding (a frame is at least 60 bytes), never
//!   ports or flags.
//!
//! Every header is read through a pointer that `header` checked against
//! `data_end`; the structs hold wire bytes (byte arrays, or a `u16` read
//! unaligned), and addresses and ports stay in wire order, as the flow key
//! wants them.
use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use super::{counters::count, fragments};

/// The IPv4 "more fragments" bit (`Ipv4Hdr::frags`; DF does not matter).
const IPV4_MORE: u16 = 0x2000;
/// The 13-bit fragment offset of IPv4 (in the flags word) and IPv6 (in
/// the fragment header's offset word, above 3 bits of flags).
const IPV4_OFFSET_MASK: u16 = 0x1fff;
const IPV6_OFFSET_MASK: u16 = 0xfff8;
/// The IPv6 fragment header's "more fragments" bit.
const IPV6_MORE: u16 = 0x0001;

/// The most IPv6 extension headers walked before the transport header.
pub const EXTENSION_HEADERS: usize = 6;

/// IP protocol numbers (IPv6 next-header values) the parser tells apart.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
    pub const EXPERIMENT_1: u8 = 253;
    pub const EXPERIMENT_2: u8 = 254;
}

/// What a frame is (module documentation). A first fragment is
/// [`kind::WHOLE`], its key marked (`FlowKey::mark_first_fragment`).
pub mod kind {
    pub const WHOLE: u8 = 0;
    pub const LATER_FRAGMENT: u8 = 2;
    pub const ICMP_ERROR: u8 = 3;
}

/// What the parser found besides the flow key.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// The TCP flags byte (0 for UDP, fragments after the first, ICMP).
    pub tcp_flags: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// A fragment's datagram: the IPv4 ID or the IPv6 identification.
    pub datagram: u32,
}

/// A `T` header at `offset`, or `None` if the frame is shorter.
#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A `T` header at `offset` past the IP header, or `None` if the frame
/// is shorter or the IP datagram ends before it (at `end`, by its length
/// field: what lies beyond is the link's padding, not the packet's).
#[inline(always)]
fn inside<T>(ctx: &XdpContext, offset: usize, end: usize) -> Option<*const T> {
    if offset + size_of::<T>() > end {
        return None;
    }
    header(ctx, offset)
}

/// The `N` bytes at `offset` past the IP header (copied), or `None` as
/// [`inside`] says.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize, end: usize) -> Option<[u8; N]> {
    let at: *const [u8; N] = inside(ctx, offset, end)?;
    // SAFETY: `header` checked the N bytes are inside the frame (a byte
    // array: no alignment).
    Some(unsafe { *at })
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
fn extension_header() -> u32 {
    count(Counter::ExtensionHeader);
    xdp_action::XDP_PASS
}

/// TCP header flag bits (the second byte of `TcpHdr`'s flags bitfield).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Where the transport header starts, and the fragment it is part of.
#[derive(Clone, Copy)]
struct Transport {
    offset: usize,
    /// Where the IP datagram ends by its length field (IPv4 total length,
    /// IPv6 payload length): nothing at or past it is read.
    end: usize,
    kind: u8,
    /// 1 for a datagram's first fragment, else 0: from the header's bits,
    /// never by a branch (a constant per path here would make the verifier
    /// follow every later path once per value).
    first_fragment: u8,
    datagram: u32,
}

/// Parses the frame into `key`, the flow it belongs to (module
/// documentation). The key is filled in place (it is a map key on the
/// stack) rather than returned: a returned key is assembled in registers,
/// spilled, and copied again. The TCP flags stay out of the key: the key
/// is hashed and compared whole, and every packet of a flow must have the
/// same.
#[inline(always)]
pub fn flow(ctx: &XdpContext, key: &mut FlowKey) -> Result<Parsed, u32> {
    let (ethertype, l3) = ethernet(ctx)?;
    let l4 = if ethertype == EtherType::Ipv4 as u16 {
        ipv4(ctx, l3, key)?
    } else if ethertype == EtherType::Ipv6 as u16 {
        ipv6(ctx, l3, key)?
    } else {
        return Err(not_ours());
    };
    let (kind, datagram) = (l4.kind, l4.datagram);
    if kind == kind::LATER_FRAGMENT {
        // No transport header: addresses, protocol and datagram only. The
        // protocol is what the IPv6 Fragment header's next header says:
        // Destination Options (60) before the transport header are in the
        // fragmentable part, so their datagram's later fragments show 60.
        if key.proto != PROTO_TCP
            && key.proto != PROTO_UDP
            && (key.proto != ip_proto::DESTINATION_OPTIONS || key.family != FAMILY_V6)
        {
            return Err(not_ours());
        }
        return Ok(Parsed {
            tcp_flags: 0,
            kind,
            datagram,
        });
    }
    if key.proto == ip_proto::ICMP || key.proto == ip_proto::ICMPV6 {
        icmp_error(ctx, l4.offset, l4.end, key)?;
        return Ok(Parsed {
            tcp_flags: 0,
            kind: kind::ICMP_ERROR,
            datagram: 0,
        });
    }
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(not_ours());
    }
    let Some(tcp_flags) = ports(ctx, l4.offset, l4.end, key) else {
        return Err(malformed_first(ctx, key, &l4));
    };
    key.mark_first_fragment(l4.first_fragment);
    Ok(Parsed {
        tcp_flags,
        kind,
        datagram,
    })
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
fn ipv4(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<Transport, u32> {
    let ip: *const Ipv4Hdr = header(ctx, l3).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv4Hdr (byte fields only: no alignment).
    let ip = unsafe { &*ip };
    if ip.version() != 4 {
        return Err(malformed());
    }
    let hlen = ip.ihl() as usize;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if hlen < Ipv4Hdr::LEN || tot_len < hlen {
        return Err(malformed());
    }
    // The options (if any) must be in the frame.
    header::<u8>(ctx, l3 + hlen - 1).ok_or_else(malformed)?;
    key.proto = ip.proto;
    key.family = FAMILY_V4;
    set_v4(&mut key.src_be, ip.src_addr);
    set_v4(&mut key.dst_be, ip.dst_addr);
    let frags = u16::from_be_bytes(ip.frags);
    let kind = if frags & IPV4_OFFSET_MASK != 0 {
        kind::LATER_FRAGMENT
    } else {
        kind::WHOLE
    };
    Ok(Transport {
        offset: l3 + hlen,
        end: l3 + tot_len,
        kind,
        // At offset 0, the MF bit.
        first_fragment: ((frags & IPV4_MORE) >> 13) as u8,
        datagram: u16::from_be_bytes(ip.id) as u32,
    })
}

/// The IPv6 header at `l3` and its extension headers into `key`; where the
/// transport header starts.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<Transport, u32> {
    let ip: *const Ipv6Hdr = header(ctx, l3).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv6Hdr (byte fields only: no alignment).
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return Err(malformed());
    }
    key.family = FAMILY_V6;
    set_v6(&mut key.src_be, &ip.src_addr);
    set_v6(&mut key.dst_be, &ip.dst_addr);
    let next = ip.next_hdr;
    let offset = l3 + Ipv6Hdr::LEN;
    let end = offset + u16::from_be_bytes(ip.payload_len) as usize;
    if next == PROTO_TCP || next == PROTO_UDP {
        // The common case: no extension header.
        key.proto = next;
        return Ok(Transport {
            offset,
            end,
            kind: kind::WHOLE,
            first_fragment: 0,
            datagram: 0,
        });
    }
    extension_headers(ctx, next, offset, end, key)
}

/// Walks the extension headers starting with `next` at `offset` (at most
/// [`EXTENSION_HEADERS`], inside the payload, which ends at `end`) to the
/// transport header, into `key.proto`.
#[inline(always)]
fn extension_headers(
    ctx: &XdpContext,
    mut next: u8,
    mut offset: usize,
    end: usize,
    key: &mut FlowKey,
) -> Result<Transport, u32> {
    let mut first_fragment = 0;
    let mut datagram = 0;
    // The Fragment header's next header: the protocol of the datagram's
    // key (`FlowKey::set_datagram_proto`; read only for a first fragment).
    let mut datagram_proto = 0;
    for _ in 0..EXTENSION_HEADERS {
        match next {
            PROTO_TCP | PROTO_UDP | ip_proto::ICMPV6 => break,
            ip_proto::HOP_BY_HOP | ip_proto::DESTINATION_OPTIONS | ip_proto::ROUTING => {
                // Next header, length in 8-byte units beyond the first 8,
                // then (routing) type and segments left.
                let h: [u8; 4] = bytes(ctx, offset, end).ok_or_else(malformed)?;
                if next == ip_proto::ROUTING && h[3] != 0 {
                    // Not the final destination yet.
                    return Err(extension_header());
                }
                next = h[0];
                offset += (h[1] as usize + 1) * 8;
            }
            ip_proto::FRAGMENT => {
                // Next header, reserved, offset and flags, identification.
                let h: [u8; 8] = bytes(ctx, offset, end).ok_or_else(malformed)?;
                let word = u16::from_be_bytes([h[2], h[3]]);
                datagram = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                next = h[0];
                datagram_proto = next;
                offset += 8;
                if word & IPV6_OFFSET_MASK != 0 {
                    key.proto = next;
                    return Ok(Transport {
                        offset,
                        end,
                        kind: kind::LATER_FRAGMENT,
                        first_fragment: 0,
                        datagram,
                    });
                }
                first_fragment = (word & IPV6_MORE) as u8;
            }
            other if unwalked(other) => return Err(extension_header()),
            _ => return Err(not_ours()),
        }
    }
    if next != PROTO_TCP && next != PROTO_UDP && next != ip_proto::ICMPV6 {
        // More extension headers than the walk takes.
        return Err(extension_header());
    }
    key.proto = next;
    key.set_datagram_proto(datagram_proto);
    Ok(Transport {
        offset,
        end,
        kind: kind::WHOLE,
        first_fragment,
        datagram,
    })
}

/// Whether `next` is an IPv6 extension header the walk does not take
/// (counted `extension_header`, where another protocol is not ours).
#[inline(always)]
fn unwalked(next: u8) -> bool {
    matches!(
        next,
        ip_proto::AUTHENTICATION
            | ip_proto::MOBILITY
            | ip_proto::HIP
            | ip_proto::SHIM6
            | ip_proto::EXPERIMENT_1
            | ip_proto::EXPERIMENT_2
    )
}

// `set_v4`, `set_v6` and `set_ports` write a key's words in pairs, the
// first word as the low half: little-endian only (bpfel, the only target
// the loader builds).
#[cfg(target_endian = "big")]
compile_error!("parse writes the flow key's words in little-endian pairs");

/// An IPv4 address into a key's address words: word 0, and word 1 zeroed
/// by the same 8-byte store. Later reads of the key load 8 bytes at a time
/// (the hashes, the listener's address compared): the CPU forwards such a
/// load from one store of the same width at once, where stores of its
/// halves make it wait until they have reached the cache (a stall that
/// cost established packets about a fifth of their time).
#[inline(always)]
fn set_v4(words: &mut [u32; 4], addr: [u8; 4]) {
    // SAFETY: `words` is 8-byte aligned in `FlowKey` (align 8, at offset 0
    // or 16); little-endian: word 0 is the low half.
    unsafe { (words.as_mut_ptr() as *mut u64).write(u32::from_ne_bytes(addr) as u64) };
}

/// An IPv6 address (wire bytes) into a key's address words as two 8-byte
/// stores, for the reason [`set_v4`] gives, from two 8-byte loads (byte
/// by byte, the compiler builds some addresses from sixteen loads).
#[inline(always)]
fn set_v6(words: &mut [u32; 4], addr: &[u8; 16]) {
    let from = addr.as_ptr() as *const u64;
    let to = words.as_mut_ptr() as *mut u64;
    // SAFETY: 16 bytes on both sides; unaligned loads of wire bytes (the
    // verifier allows them where the CPU does); `words` as in `set_v4`.
    // Little-endian: the first four bytes are word 0, the low half.
    unsafe {
        to.write(from.read_unaligned());
        to.add(1).write(from.add(1).read_unaligned());
    }
}

/// An IPv6 address as four words of wire bytes.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Both ports into `key` with one 4-byte store (as [`set_v4`] does the
/// addresses: the hashes read them together).
#[inline(always)]
fn set_ports(key: &mut FlowKey, src: [u8; 2], dst: [u8; 2]) {
    let ports = u16::from_ne_bytes(src) as u32 | (u16::from_ne_bytes(dst) as u32) << 16;
    // SAFETY: the two ports are adjacent, source first, at a 4-byte aligned
    // offset of `FlowKey` (32); little-endian: the source is the low half.
    unsafe { (addr_of_mut!(key.src_port_be) as *mut u32).write(ports) };
}

/// The ports of the TCP or UDP header (`key.proto`) at `l4` into `key`;
/// the TCP flags (0 for UDP). `None` if the header is not all in the frame
/// and before `end`.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, end: usize, key: &mut FlowKey) -> Option<u8> {
    if key.proto == PROTO_TCP {
        let tcp: *const TcpHdr = inside(ctx, l4, end)?;
        // SAFETY: `tcp` covers a TcpHdr (byte fields only).
        let tcp = unsafe { &*tcp };
        set_ports(key, tcp.source, tcp.dest);
        // The bitfield is data offset and reserved bits, then the flags
        // byte: one load instead of a bit read per flag.
        // SAFETY: a repr(C) wrapper of the header's two bytes.
        let doff_flags: [u8; 2] = unsafe { core::mem::transmute(tcp._bitfield_1) };
        Some(doff_flags[1])
    } else {
        let udp: *const UdpHdr = inside(ctx, l4, end)?;
        // SAFETY: `udp` covers a UdpHdr (byte fields only).
        let udp = unsafe { &*udp };
        set_ports(key, udp.src, udp.dst);
        Some(0)
    }
}

/// A TCP or UDP packet too short for its transport header: malformed.
/// A first fragment's datagram is remembered as the host's
/// (`fragments::to_host`), so that its later fragments, which have no
/// header to find wrong, follow it there.
#[inline(always)]
fn malformed_first(ctx: &XdpContext, key: &mut FlowKey, l4: &Transport) -> u32 {
    if l4.first_fragment != 0 {
        fragments::to_host(ctx, key, l4.datagram);
    }
    malformed()
}

/// An ICMP error at `l4` (ICMP after IPv4, ICMPv6 after IPv6; all of it
/// that is read before `end`) about a TCP or UDP packet the VIP sent:
/// `key` becomes that packet's flow (the client's side first). Anything
/// else ICMP is the host's.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, l4: usize, end: usize, key: &mut FlowKey) -> Result<(), u32> {
    // Type, code, checksum, then 4 bytes (unused, next-hop MTU or the
    // packet-too-big MTU) before the quoted packet.
    // (Read as a whole: a 1-byte read's bounds check compiles to one the
    // verifier does not take.)
    let h: [u8; 8] = bytes(ctx, l4, end).ok_or_else(malformed)?;
    let quoted = l4 + 8;
    if key.family == FAMILY_V4 {
        // Destination unreachable (fragmentation needed included), time
        // exceeded.
        if key.proto != ip_proto::ICMP || (h[0] != 3 && h[0] != 11) {
            return Err(not_ours());
        }
        quoted_ipv4(ctx, quoted, end, key)
    } else {
        // Destination unreachable, packet too big, time exceeded.
        if key.proto != ip_proto::ICMPV6 || h[0] == 0 || h[0] > 3 {
            return Err(not_ours());
        }
        quoted_ipv6(ctx, quoted, end, key)
    }
}

/// The IPv4 packet quoted at `l3` by an ICMP error sent to `key.dst_be`:
/// its flow, swapped, into `key`.
#[inline(always)]
fn quoted_ipv4(ctx: &XdpContext, l3: usize, end: usize, key: &mut FlowKey) -> Result<(), u32> {
    let ip: *const Ipv4Hdr = inside(ctx, l3, end).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv4Hdr (byte fields only).
    let ip = unsafe { &*ip };
    let hlen = ip.ihl() as usize;
    if ip.version() != 4 || hlen < Ipv4Hdr::LEN {
        return Err(malformed());
    }
    let from = u32::from_ne_bytes(ip.src_addr);
    if from != key.dst_be[0]
        || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP)
        || u16::from_be_bytes(ip.frags) & IPV4_OFFSET_MASK != 0
    {
        return Err(not_ours());
    }
    let ports: [u8; 4] = bytes(ctx, l3 + hlen, end).ok_or_else(malformed)?;
    key.proto = ip.proto;
    set_v4(&mut key.src_be, ip.dst_addr);
    set_v4(&mut key.dst_be, ip.src_addr);
    swap_ports(key, ports);
    Ok(())
}

/// The IPv6 packet quoted at `l3` by an ICMPv6 error sent to `key.dst_be`:
/// its flow, swapped, into `key`. A target's TCP or UDP reply has no
/// extension header but one: a Fragment header, when the target's kernel
/// cut a reply larger than its route's MTU (a UDP answer over a tunnel).
/// The quote of its first fragment (offset 0) has the ports after it; a
/// later fragment has none, and its error is passed, as IPv4's is.
#[inline(always)]
fn quoted_ipv6(ctx: &XdpContext, l3: usize, end: usize, key: &mut FlowKey) -> Result<(), u32> {
    let ip: *const Ipv6Hdr = inside(ctx, l3, end).ok_or_else(malformed)?;
    // SAFETY: `ip` covers an Ipv6Hdr (byte fields only).
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return Err(malformed());
    }
    if words(&ip.src_addr) != key.dst_be {
        return Err(not_ours());
    }
    let mut next = ip.next_hdr;
    let mut l4 = l3 + Ipv6Hdr::LEN;
    if next == ip_proto::FRAGMENT {
        // Next header, reserved, offset and flags, identification.
        let h: [u8; 8] = bytes(ctx, l4, end).ok_or_else(malformed)?;
        if u16::from_be_bytes([h[2], h[3]]) & IPV6_OFFSET_MASK != 0 {
            return Err(not_ours());
        }
        next = h[0];
        l4 += 8;
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(not_ours());
    }
    let ports: [u8; 4] = bytes(ctx, l4, end).ok_or_else(malformed)?;
    key.proto = next;
    set_v6(&mut key.src_be, &ip.dst_addr);
    set_v6(&mut key.dst_be, &ip.src_addr);
    swap_ports(key, ports);
    Ok(())
}

/// The quoted packet's source and destination ports (wire bytes), as the
/// flow's destination and source port.
#[inline(always)]
fn swap_ports(key: &mut FlowKey, ports: [u8; 4]) {
    set_ports(key, [ports[2], ports[3]], [ports[0], ports[1]]);
}
