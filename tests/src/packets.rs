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
    pub l4: L4,
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
            l4,
        }
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
        let (proto, l4) = self.l4_bytes();
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
                ip.extend(0x1234u16.to_be_bytes()); // id
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
                out.extend([0x60, 0, 0, 0]);
                out.extend((l4.len() as u16).to_be_bytes());
                out.push(proto);
                out.push(64);
                out.extend(s.octets());
                out.extend(d.octets());
            }
            _ => panic!("mixed address families"),
        }
        out.extend(l4);
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
