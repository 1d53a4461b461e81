//! A flood of spoofed TCP ACKs from the lab's client namespace: raw IP
//! sockets (`IPPROTO_RAW`, the header ours) write TCP ACKs with random
//! source addresses, ports, sequence and acknowledgment numbers, with
//! correct checksums, to a listener's VIP and port, as an attacker would to
//! fill a load balancer's flow table or move its flows. Call
//! [`spoofed_acks`] inside the client namespace (`Lab::run_in`): its
//! kernel routes each packet to the VIP, i.e. to the lb's MAC.
//!
//! The spoofed sources come from ranges no host of the lab has: IPv4
//! 198.18.0.0/15 (set aside for benchmarks, RFC 2544) and IPv6 fd00:99::/64.
//! The targets have no route to them, so the resets they answer the ACKs
//! with go nowhere; only the VIPs are ever addressed.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// What a flood sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    /// Packets the kernel took.
    pub packets: u64,
    /// Packets it refused for a full queue (not sent).
    pub refused: u64,
    pub secs: f64,
}

/// A small deterministic generator (splitmix64): the same seed, the same
/// flood.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A random spoofed source (see the module's comment) of `dst`'s family,
/// with a port of 1024 or above.
pub fn spoofed_source(rng: &mut Rng, dst: SocketAddr) -> SocketAddr {
    let r = rng.next_u64();
    let port = 1024 + (r >> 48) as u16 % (u16::MAX - 1024);
    let ip: IpAddr = if dst.is_ipv4() {
        let host = (r as u32) & 0x0001_ffff;
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | host).into()
    } else {
        let id = rng.next_u64();
        Ipv6Addr::from((0xfd00_0099u128 << 96) | u128::from(id)).into()
    };
    SocketAddr::new(ip, port)
}

/// The Internet checksum (RFC 1071) of `parts`, one after the other (each
/// of even length but the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IP packet (IPv4 or IPv6 by the addresses; no Ethernet header) of a
/// bare TCP ACK from `src` to `dst`: the TCP checksum computed, the IPv4
/// header's left 0 with its identification (the kernel fills both in).
pub fn ack_packet(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend(src.port().to_be_bytes());
    tcp.extend(dst.port().to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([5 << 4, crate::packets::tcp_flags::ACK]);
    tcp.extend(502u16.to_be_bytes()); // window
    tcp.extend([0, 0, 0, 0]); // checksum, urgent pointer
    let len = (tcp.len() as u16).to_be_bytes();
    let mut packet = Vec::with_capacity(60);
    let sum = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            packet.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            packet.extend(s.octets());
            packet.extend(d.octets());
            checksum(&[&s.octets(), &d.octets(), &[0, 6], &len, &tcp])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            packet.extend([0x60, 0, 0, 0, len[0], len[1], 6, 64]);
            packet.extend(s.octets());
            packet.extend(d.octets());
            checksum(&[&s.octets(), &d.octets(), &[0, 0], &len, &[0, 0, 0, 6], &tcp])
        }
        _ => panic!("{src} and {dst}: mixed address families"),
    };
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    packet.extend(tcp);
    packet
}

/// A raw socket of `dst`'s family whose packets carry their own IP header.
fn raw_socket(v6: bool) -> io::Result<Socket> {
    let raw = Some(Protocol::from(libc::IPPROTO_RAW));
    if v6 {
        let socket = Socket::new(Domain::IPV6, Type::RAW, raw)?;
        socket.set_header_included_v6(true)?;
        Ok(socket)
    } else {
        // IPPROTO_RAW implies IP_HDRINCL.
        Socket::new(Domain::IPV4, Type::RAW, raw)
    }
}

/// The packets of a flood with `seed`, in order: (destination, spoofed
/// source, sequence and acknowledgment numbers), each destination one of
/// `to` drawn at random.
pub fn draws(
    to: &[SocketAddr],
    seed: u64,
) -> impl Iterator<Item = (SocketAddr, SocketAddr, u64)> + '_ {
    let mut rng = Rng::new(seed);
    std::iter::from_fn(move || {
        let dst = to[(rng.next_u64() % to.len() as u64) as usize];
        let src = spoofed_source(&mut rng, dst);
        Some((dst, src, rng.next_u64()))
    })
}

/// Sends up to `count` spoofed ACKs, for `limit` at most, each to one of
/// `to` (a VIP and a listener's port) drawn at random, from a random
/// spoofed address and port ([`spoofed_source`]) with random sequence and
/// acknowledgment numbers ([`draws`]). Run it inside the client namespace.
pub fn spoofed_acks(to: &[SocketAddr], count: u64, limit: Duration, seed: u64) -> io::Result<Sent> {
    assert!(!to.is_empty(), "somewhere to send to");
    let (v4, v6) = (raw_socket(false)?, raw_socket(true)?);
    let mut draws = draws(to, seed);
    let started = Instant::now();
    let mut sent = Sent {
        packets: 0,
        refused: 0,
        secs: 0.0,
    };
    while sent.packets + sent.refused < count && started.elapsed() < limit {
        for _ in 0..256.min(count - sent.packets - sent.refused) {
            let (dst, src, numbers) = draws.next().expect("endless");
            let packet = ack_packet(src, dst, numbers as u32, (numbers >> 32) as u32);
            let socket = if dst.is_ipv4() { &v4 } else { &v6 };
            // A raw socket's port must be 0 (IPv6 reads it as a protocol).
            match socket.send_to(&packet, &SockAddr::from(SocketAddr::new(dst.ip(), 0))) {
                Ok(_) => sent.packets += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => sent.refused += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sent.refused += 1,
                Err(e) => return Err(io::Error::new(e.kind(), format!("send to {dst}: {e}"))),
            }
        }
    }
    sent.secs = started.elapsed().as_secs_f64();
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let dst: SocketAddr = "10.0.3.49:81".parse().unwrap();
        let src: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let p = ack_packet(src, dst, 1, 2);
        assert_eq!(p.len(), 40);
        assert_eq!(&p[..2], &[0x45, 0]);
        assert_eq!(p[33], 0x10, "ACK only");
        // Summed with its checksum in place, a segment checks to 0.
        let tcp = &p[20..];
        assert_eq!(checksum(&[&p[12..20], &[0, 6, 0, 20], tcp]), 0);

        let dst: SocketAddr = "[fd00:3::49]:81".parse().unwrap();
        let mut rng = Rng::new(7);
        let src = spoofed_source(&mut rng, dst);
        assert!(src.to_string().starts_with("[fd00:99::"), "{src}");
        let p = ack_packet(src, dst, 3, 4);
        assert_eq!(p.len(), 60);
        assert_eq!((p[0], p[5], p[6]), (0x60, 20, 6));
        let tcp = &p[40..];
        assert_eq!(checksum(&[&p[8..40], &[0, 0, 0, 20, 0, 0, 0, 6], tcp]), 0);
    }

    /// The lab's spoofed-ACK flood (`lab_packets.rs`: seed 0x5eed, 200,000
    /// packets to three IPv4 and three IPv6 listeners) repeats no flow, so
    /// each of its packets is a flow's only one: none counts as a
    /// connection.
    #[test]
    fn the_lab_flood_repeats_no_flow() {
        let to: Vec<SocketAddr> = ["10.0.3.49:81", "10.0.3.49:82", "10.0.3.49:83"]
            .into_iter()
            .chain(["[fd00:3::49]:81", "[fd00:3::49]:82", "[fd00:3::49]:83"])
            .map(|a| a.parse().unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (dst, src, _) in draws(&to, 0x5eed).take(200_000) {
            assert!(seen.insert((dst, src)), "{src} -> {dst} twice");
        }
    }

    #[test]
    fn spoofed_sources_stay_in_their_ranges() {
        let dst: SocketAddr = "10.0.3.49:81".parse().unwrap();
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let src = spoofed_source(&mut rng, dst);
            let IpAddr::V4(ip) = src.ip() else {
                panic!("{src}")
            };
            assert_eq!(
                u32::from(ip) >> 17,
                u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17
            );
            assert!(src.port() >= 1024);
        }
    }
}
