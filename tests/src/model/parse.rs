//! The model's reading of a frame, from the documented rules (the
//! program's parse module documentation, README "What lb does with each
//! packet"): what the frame is, and the flow it belongs to.
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};

/// The IPv6 extension headers walked before the transport header, at most.
pub const EXTENSION_HEADERS: usize = 6;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP or UDP packet (an atomic fragment included).
    Whole,
    /// The first fragment of datagram `id` (it has the ports), whose
    /// later fragments show protocol `proto` (IPv6: its Fragment header's
    /// next header, 60 when Destination Options come before the transport
    /// header): its datagram's key has it.
    First(u32, u8),
    /// A later fragment of datagram `id`: the key has no ports.
    Later(u32),
    /// An ICMP error quoting a packet the VIP sent: the key is that
    /// packet's flow, seen from the client.
    IcmpError,
}

/// A parsed frame: its flow, TCP flags (0 but for TCP) and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    pub flags: u8,
    pub kind: Kind,
}

/// A frame's flow key and TCP flags (0 for UDP) when it has a flow entry
/// of its own to look at (a whole packet, a first fragment, or the flow an
/// ICMP error quotes), else the counter of a frame the program passes (a
/// later fragment: `Counter::Fragment`, though it may be forwarded).
pub fn parse(frame: &[u8]) -> Result<(FlowKey, u8), Counter> {
    let p = packet(frame)?;
    match p.kind {
        Kind::Later(_) => Err(Counter::Fragment),
        _ => Ok((p.key, p.flags)),
    }
}

/// What `frame` is, or the counter of a frame the program passes for
/// what it is (not for where it goes).
pub fn packet(frame: &[u8]) -> Result<Packet, Counter> {
    read(frame).map_err(|refused| refused.counter)
}

/// A frame the program passes for what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub counter: Counter,
    /// A first fragment too short for its TCP or UDP header: its key so
    /// far (addresses, transport protocol) and its datagram (as
    /// [`Kind::First`]), which the program remembers as the host's.
    pub first: Option<(FlowKey, u32, u8)>,
}

impl From<Counter> for Refused {
    fn from(counter: Counter) -> Refused {
        Refused {
            counter,
            first: None,
        }
    }
}

/// What `frame` is, or why the program passes it ([`Refused`]).
pub fn read(frame: &[u8]) -> Result<Packet, Refused> {
    let (ethertype, l3) = ethernet(frame)?;
    let mut key = FlowKey::default();
    let (l4, end, kind) = match ethertype {
        0x0800 => ipv4(frame, l3, &mut key)?,
        0x86dd => ipv6(frame, l3, &mut key)?,
        _ => return Err(Counter::Passed.into()),
    };
    if let Kind::Later(_) = kind {
        // Over IPv6, the Fragment header's next header: Destination
        // Options (60) are in the fragmentable part, before the transport
        // header.
        let options = key.family == FAMILY_V6 && key.proto == 60;
        if key.proto != PROTO_TCP && key.proto != PROTO_UDP && !options {
            return Err(Counter::Passed.into());
        }
        return Ok(Packet {
            key,
            flags: 0,
            kind,
        });
    }
    if key.proto == 1 || key.proto == 58 {
        icmp_error(frame, l4, end, &mut key)?;
        return Ok(Packet {
            key,
            flags: 0,
            kind: Kind::IcmpError,
        });
    }
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(Counter::Passed.into());
    }
    let Some(flags) = ports(frame, l4, end, &mut key) else {
        let first = match kind {
            Kind::First(id, proto) => Some((key, id, proto)),
            _ => None,
        };
        return Err(Refused {
            counter: Counter::Malformed,
            first,
        });
    };
    Ok(Packet { key, flags, kind })
}

/// `len` bytes of `frame` from `at`; a frame too short is malformed.
fn bytes(frame: &[u8], at: usize, len: usize) -> Result<&[u8], Counter> {
    frame.get(at..at + len).ok_or(Counter::Malformed)
}

/// `len` bytes of `frame` from `at`, past the IP header: a frame too
/// short, or an IP datagram that ends (by its length field) at `end`
/// before them, is malformed.
fn inside(frame: &[u8], at: usize, len: usize, end: usize) -> Result<&[u8], Counter> {
    if at + len > end {
        return Err(Counter::Malformed);
    }
    bytes(frame, at, len)
}

/// The 4 bytes of `b` from `at`, as the program reads them (host order).
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The ethertype and where the IP header starts (after one VLAN tag, if any).
fn ethernet(frame: &[u8]) -> Result<(u16, usize), Counter> {
    let eth = bytes(frame, 0, 14)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        let tag = bytes(frame, 14, 4)?;
        return Ok((u16::from_be_bytes([tag[2], tag[3]]), 18));
    }
    Ok((ethertype, 14))
}

/// Fills the IPv4 part of `key`: where the L4 header starts (after the
/// options the IHL counts), where the datagram ends by its total length,
/// and whether the packet is a fragment.
fn ipv4(frame: &[u8], l3: usize, key: &mut FlowKey) -> Result<(usize, usize, Kind), Counter> {
    let ip = bytes(frame, l3, 20)?;
    let hlen = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || hlen < 20 || total < hlen {
        return Err(Counter::Malformed);
    }
    bytes(frame, l3, hlen)?;
    key.proto = ip[9];
    key.family = FAMILY_V4;
    key.src_be[0] = word(ip, 12);
    key.dst_be[0] = word(ip, 16);
    let frags = u16::from_be_bytes([ip[6], ip[7]]);
    let id = u16::from_be_bytes([ip[4], ip[5]]) as u32;
    let kind = if frags & 0x1fff != 0 {
        Kind::Later(id)
    } else if frags & 0x2000 != 0 {
        Kind::First(id, ip[9])
    } else {
        Kind::Whole
    };
    Ok((l3 + hlen, l3 + total, kind))
}

/// Fills the IPv6 part of `key`, walking its extension headers: where the
/// L4 header starts, where the datagram ends by its payload length, and
/// whether the packet is a fragment.
fn ipv6(frame: &[u8], l3: usize, key: &mut FlowKey) -> Result<(usize, usize, Kind), Counter> {
    let ip = bytes(frame, l3, 40)?;
    if ip[0] >> 4 != 6 {
        return Err(Counter::Malformed);
    }
    let end = l3 + 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    key.family = FAMILY_V6;
    key.src_be = std::array::from_fn(|i| word(ip, 8 + 4 * i));
    key.dst_be = std::array::from_fn(|i| word(ip, 24 + 4 * i));
    let mut next = ip[6];
    let mut at = l3 + 40;
    let mut kind = Kind::Whole;
    for walked in 0..=EXTENSION_HEADERS {
        match next {
            PROTO_TCP | PROTO_UDP | 58 => {
                key.proto = next;
                return Ok((at, end, kind));
            }
            // More extension headers than the walk takes.
            _ if walked == EXTENSION_HEADERS => return Err(Counter::ExtensionHeader),
            // Hop-by-hop, routing, destination options: next header and
            // length in 8-byte units beyond the first 8; a routing header
            // with segments left is not for the final destination yet.
            0 | 43 | 60 => {
                let h = inside(frame, at, 4, end)?;
                if next == 43 && h[3] != 0 {
                    return Err(Counter::ExtensionHeader);
                }
                next = h[0];
                at += (h[1] as usize + 1) * 8;
            }
            44 => {
                let h = inside(frame, at, 8, end)?;
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                next = h[0];
                at += 8;
                if offset_flags & 0xfff8 != 0 {
                    key.proto = next;
                    return Ok((at, end, Kind::Later(id)));
                }
                kind = if offset_flags & 1 != 0 {
                    Kind::First(id, next)
                } else {
                    Kind::Whole
                };
            }
            51 | 135 | 139 | 140 | 253 | 254 => return Err(Counter::ExtensionHeader),
            _ => return Err(Counter::Passed),
        }
    }
    unreachable!("the walk returns at its last step")
}

/// Fills the ports of `key` (TCP or UDP, the header all before `end`):
/// the TCP flags (0 for UDP); `None` if the packet is too short for it.
fn ports(frame: &[u8], l4: usize, end: usize, key: &mut FlowKey) -> Option<u8> {
    let need = if key.proto == PROTO_TCP { 20 } else { 8 };
    let ports = inside(frame, l4, need, end).ok()?;
    key.src_port_be = u16::from_ne_bytes([ports[0], ports[1]]);
    key.dst_port_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(if key.proto == PROTO_TCP { ports[13] } else { 0 })
}

/// An ICMP error at `l4` about a TCP or UDP packet sent from `key`'s
/// destination (the VIP): `key` becomes that packet's flow, its addresses
/// and ports swapped. ICMP: destination unreachable (3) and time exceeded
/// (11); ICMPv6: destination unreachable (1), packet too big (2), time
/// exceeded (3), whose quote may be a first fragment (a Fragment header of
/// offset 0 before its transport header). Anything else ICMP is passed. Every byte read is before
/// `end`.
fn icmp_error(frame: &[u8], l4: usize, end: usize, key: &mut FlowKey) -> Result<(), Counter> {
    let icmp = inside(frame, l4, 8, end)?;
    let quoted = l4 + 8;
    let (proto, src, dst, ports_at) = if key.family == FAMILY_V4 {
        if key.proto != 1 || (icmp[0] != 3 && icmp[0] != 11) {
            return Err(Counter::Passed);
        }
        let ip = inside(frame, quoted, 20, end)?;
        let hlen = (ip[0] & 0x0f) as usize * 4;
        if ip[0] >> 4 != 4 || hlen < 20 {
            return Err(Counter::Malformed);
        }
        let later = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
        let src = [word(ip, 12), 0, 0, 0];
        if src != key.dst_be || (ip[9] != PROTO_TCP && ip[9] != PROTO_UDP) || later {
            return Err(Counter::Passed);
        }
        (ip[9], src, [word(ip, 16), 0, 0, 0], quoted + hlen)
    } else {
        if key.proto != 58 || !(1..=3).contains(&icmp[0]) {
            return Err(Counter::Passed);
        }
        let ip = inside(frame, quoted, 40, end)?;
        if ip[0] >> 4 != 6 {
            return Err(Counter::Malformed);
        }
        let src: [u32; 4] = std::array::from_fn(|i| word(ip, 8 + 4 * i));
        if src != key.dst_be {
            return Err(Counter::Passed);
        }
        // A quoted Fragment header (44): the first fragment has the ports
        // after it; a later one (offset > 0) has none.
        let (mut next, mut at) = (ip[6], quoted + 40);
        if next == 44 {
            let fragment = inside(frame, at, 8, end)?;
            if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                return Err(Counter::Passed);
            }
            (next, at) = (fragment[0], at + 8);
        }
        if next != PROTO_TCP && next != PROTO_UDP {
            return Err(Counter::Passed);
        }
        let dst = std::array::from_fn(|i| word(ip, 24 + 4 * i));
        (next, src, dst, at)
    };
    let ports = inside(frame, ports_at, 4, end)?;
    key.proto = proto;
    key.src_be = dst;
    key.dst_be = src;
    key.src_port_be = u16::from_ne_bytes([ports[2], ports[3]]);
    key.dst_port_be = u16::from_ne_bytes([ports[0], ports[1]]);
    Ok(())
}
