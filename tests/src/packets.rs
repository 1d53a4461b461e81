//! Frame builders for golden packet tests and benchmarks. Checksums are
//! computed (IPv4 header) where the kernel would check them; the XDP program
//! itself never reads or writes a checksum.
use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// Any other protocol number with a raw payload.
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

/// A frame description; `build` turns it into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded to a multiple of 4 bytes by `build`).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x2000 for MF.
    pub frag: u16,
    /// IPv4 identification.
    pub ip_id: u16,
    /// IPv6 extension headers, in order, before the transport header.
    pub ext_headers: Vec<ExtHeader>,
    pub l4: L4,
}

/// An IPv6 extension header: its type (next-header value) and the bytes
/// after its next-header and length bytes (`build` pads the header to a
/// multiple of 8 bytes and fills both in). A fragment header's length
/// byte is reserved: its body is 6 bytes and its length 0, as `build`
/// computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtHeader {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl ExtHeader {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;

    /// Hop-by-hop or destination options of `len` 8-byte units (PadN).
    pub fn options(kind: u8, units: usize) -> ExtHeader {
        let mut body = vec![1, (units * 8 - 4) as u8];
        body.resize(units * 8 - 2, 0);
        ExtHeader { kind, body }
    }

    /// A type-4 routing header with `segments_left`.
    pub fn routing(segments_left: u8) -> ExtHeader {
        let mut body = vec![4, segments_left];
        body.resize(6, 0);
        ExtHeader {
            kind: Self::ROUTING,
            body,
        }
    }

    /// A fragment header: `offset` in 8-byte units, more fragments or not,
    /// identification `id`.
    pub fn fragment(offset: u16, more: bool, id: u32) -> ExtHeader {
        let word = (offset << 3) | more as u16;
        let mut body = word.to_be_bytes().to_vec();
        body.extend(id.to_be_bytes());
        ExtHeader {
            kind: Self::FRAGMENT,
            body,
        }
    }
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn new(src: &str, dst: &str, l4: L4) -> Frame {
        Frame {
            dst_mac: LB_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            src: src.parse().expect("src ip"),
            dst: dst.parse().expect("dst ip"),
            ip_options: Vec::new(),
            frag: 0,
            ip_id: 0x1234,
            ext_headers: Vec::new(),
            l4,
        }
    }

    /// An ICMP (IPv4) or ICMPv6 error of `icmp_type` and `code` from
    /// `from` to `to`, quoting `quoted` (an IP packet: a frame's bytes
    /// after its Ethernet header); `mtu` goes in the second word (the next
    /// hop's MTU of fragmentation needed, the MTU of packet too big).
    pub fn icmp_error(
        from: &str,
        to: &str,
        icmp_type: u8,
        code: u8,
        mtu: u32,
        quoted: &[u8],
    ) -> Frame {
        let v4 = from.parse::<IpAddr>().expect("from").is_ipv4();
        let mut payload = vec![icmp_type, code, 0, 0];
        payload.extend(mtu.to_be_bytes());
        payload.extend(quoted);
        let proto = if v4 { 1 } else { 58 };
        Frame::new(from, to, L4::Raw { proto, payload })
    }

    pub fn with_ip_id(mut self, id: u16) -> Frame {
        self.ip_id = id;
        self
    }

    pub fn with_ext_header(mut self, header: ExtHeader) -> Frame {
        self.ext_headers.push(header);
        self
    }

    /// The frame's IP datagram cut into fragments that carry at most
    /// `size` bytes of it each (a multiple of 8): IPv4 with the frame's ID,
    /// IPv6 with a fragment header of identification `id` after the
    /// frame's other extension headers. In order; the first has the
    /// transport header.
    pub fn fragments(&self, size: usize, id: u32) -> Vec<Vec<u8>> {
        self.fragments_keeping(size, id, self.ext_headers.len())
    }

    /// As [`Frame::fragments`], but over IPv6 only the frame's first
    /// `per_fragment` extension headers go before the Fragment header (in
    /// every fragment); the others (Destination Options, say) are the
    /// start of the fragmentable part, in the first fragment only.
    pub fn fragments_keeping(&self, size: usize, id: u32, per_fragment: usize) -> Vec<Vec<u8>> {
        assert!(size.is_multiple_of(8) && size > 0);
        let (mut proto, mut l4) = self.l4_bytes();
        let mut frame = self.clone();
        if self.src.is_ipv6() {
            let fragmentable = frame.ext_headers.split_off(per_fragment);
            let inner = Frame {
                ext_headers: fragmentable,
                ..self.clone()
            };
            let mut part = inner.ext_header_bytes(proto);
            part.extend(l4);
            proto = inner.ext_headers.first().map_or(proto, |h| h.kind);
            l4 = part;
        }
        let chunks: Vec<&[u8]> = l4.chunks(size).collect();
        let last = chunks.len() - 1;
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let offset = (i * size / 8) as u16;
                let more = i < last;
                let mut f = frame.clone();
                if self.src.is_ipv4() {
                    f.ip_id = id as u16;
                    f.frag = offset | if more { 0x2000 } else { 0 };
                } else {
                    f.ext_headers.push(ExtHeader::fragment(offset, more, id));
                }
                f.build_with(proto, chunk.to_vec())
            })
            .collect()
    }

    pub fn with_vlan(mut self, vid: u16) -> Frame {
        self.vlan = Some(vid);
        self
    }

    pub fn with_ip_options(mut self, options: &[u8]) -> Frame {
        self.ip_options = options.to_vec();
        self
    }

    pub fn with_frag(mut self, frag: u16) -> Frame {
        self.frag = frag;
        self
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = Vec::with_capacity(20);
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(0x0102_0304u32.to_be_bytes()); // seq
                b.extend(
                    if flags & tcp_flags::ACK != 0 {
                        0x0a0b_0c0du32
                    } else {
                        0
                    }
                    .to_be_bytes(),
                );
                b.push(5 << 4); // data offset 5 words
                b.push(*flags);
                b.extend(64240u16.to_be_bytes()); // window
                b.extend([0, 0]); // checksum (not checked by XDP)
                b.extend([0, 0]); // urgent
                (lb_common::PROTO_TCP, b)
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = Vec::with_capacity(8 + payload.len());
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                b.extend(payload);
                (lb_common::PROTO_UDP, b)
            }
            L4::Raw { proto, payload } => (*proto, payload.clone()),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let (proto, l4) = self.l4_bytes();
        self.build_with(proto, l4)
    }

    /// The frame with `l4` (protocol `proto`) after its IP header(s).
    fn build_with(&self, proto: u8, l4: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend(self.dst_mac);
        out.extend(self.src_mac);
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        if let Some(vid) = self.vlan {
            out.extend(ETH_P_8021Q.to_be_bytes());
            out.extend((vid & 0x0fff).to_be_bytes());
        }
        out.extend(ethertype.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut options = self.ip_options.clone();
                while !options.len().is_multiple_of(4) {
                    options.push(0); // end of option list
                }
                let hlen = 20 + options.len();
                let mut ip = Vec::with_capacity(hlen);
                ip.push(0x40 | (hlen / 4) as u8);
                ip.push(0);
                ip.extend(((hlen + l4.len()) as u16).to_be_bytes());
                ip.extend(self.ip_id.to_be_bytes());
                ip.extend(self.frag.to_be_bytes());
                ip.push(64);
                ip.push(proto);
                ip.extend([0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                ip.extend(&options);
                let sum = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                out.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let headers = self.ext_header_bytes(proto);
                let first = self.ext_headers.first().map_or(proto, |h| h.kind);
                out.extend([0x60, 0, 0, 0]);
                out.extend(((headers.len() + l4.len()) as u16).to_be_bytes());
                out.push(first);
                out.push(64);
                out.extend(s.octets());
                out.extend(d.octets());
                out.extend(headers);
            }
            _ => panic!("mixed address families"),
        }
        out.extend(l4);
        out
    }
}

impl Frame {
    /// The IPv6 extension headers' bytes, the last one's next header
    /// `proto`.
    fn ext_header_bytes(&self, proto: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, h) in self.ext_headers.iter().enumerate() {
            let next = self.ext_headers.get(i + 1).map_or(proto, |n| n.kind);
            let mut body = h.body.clone();
            while !(body.len() + 2).is_multiple_of(8) {
                body.push(0);
            }
            out.push(next);
            out.push(((body.len() + 2) / 8 - 1) as u8);
            out.extend(body);
        }
        out
    }
}

pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Human-readable dump for assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{:04x}: {}",
                i * 16,
                c.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
