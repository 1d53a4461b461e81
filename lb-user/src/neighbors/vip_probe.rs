//! Who else answers for a VIP. A target that has a VIP on its external
//! interface, or on `lo` without `arp_ignore=1`, answers the segment's
//! ARP requests (IPv6: neighbour solicitations) for it, and a client that
//! takes its answer sends to it past `lb`. `lb` asks for each VIP once, as
//! any host would (an ARP request from its own address; a neighbour
//! solicitation to the VIP's solicited-node group), and listens on its
//! interface for a while: every answer from another MAC is such a host.
//!
//! What this cannot see: a target that lacks `arp_announce=2` shows only
//! when it sends an ARP request from the VIP, which nobody asks for; and
//! an answer lost on the way. `lb target-setup --check` on the target
//! tells both.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;

/// An ARP request `who-has vip tell own` from `mac`, broadcast.
pub fn arp_request(mac: [u8; 6], own: Ipv4Addr, vip: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend(ETH_ARP.to_be_bytes());
    f.extend([0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, sizes, request
    f.extend(mac);
    f.extend(own.octets());
    f.extend([0; 6]);
    f.extend(vip.octets());
    f
}

/// The ICMPv6 checksum of `body` from `src` to `dst`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A neighbour solicitation for `vip` from `own` (and `mac`), to the
/// VIP's solicited-node multicast group.
pub fn neighbor_solicitation(mac: [u8; 6], own: Ipv6Addr, vip: Ipv6Addr) -> Vec<u8> {
    let v = vip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(v[13]),
        u16::from_be_bytes([v[14], v[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend(v);
    icmp.extend([1, 1]); // source link-layer address option
    icmp.extend(mac);
    let sum = icmpv6_checksum(own, group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, v[13], v[14], v[15]];
    f.extend(mac);
    f.extend(ETH_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend((icmp.len() as u16).to_be_bytes());
    f.extend([58, 255]);
    f.extend(own.octets());
    f.extend(group.octets());
    f.extend(icmp);
    f
}

/// A frame in which another host than `own_mac` claims one of `vips`: an
/// ARP reply (or request) from the VIP, or a neighbour advertisement for
/// it; the VIP and the claimant's MAC.
pub fn claim(frame: &[u8], vips: &[IpAddr], own_mac: [u8; 6]) -> Option<(IpAddr, [u8; 6])> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let (vip, mac) = match ethertype {
        ETH_ARP => {
            let arp = frame.get(14..42)?;
            let sha: [u8; 6] = arp[8..14].try_into().ok()?;
            let spa: [u8; 4] = arp[14..18].try_into().ok()?;
            (IpAddr::V4(spa.into()), sha)
        }
        ETH_IPV6 => {
            let ip = frame.get(14..54)?;
            let icmp = frame.get(54..)?;
            if ip[6] != 58 || icmp.len() < 24 || icmp[0] != 136 {
                return None;
            }
            let target: [u8; 16] = icmp[8..24].try_into().ok()?;
            let tlla = icmp.get(24..32).filter(|o| o[0] == 2 && o[1] == 1);
            let mac = match tlla {
                Some(o) => o[2..8].try_into().ok()?,
                None => frame.get(6..12)?.try_into().ok()?,
            };
            (IpAddr::V6(target.into()), mac)
        }
        _ => return None,
    };
    (vips.contains(&vip) && mac != own_mac).then_some((vip, mac))
}

/// Asks on interface `ifindex` for each of `vips` (IPv4 ones from `own4`,
/// IPv6 ones from `own6`; a family without an address is not asked) and
/// collects for `wait` who else answers.
#[allow(unsafe_code)]
pub fn probe(
    ifindex: u32,
    mac: [u8; 6],
    own4: Option<Ipv4Addr>,
    own6: Option<Ipv6Addr>,
    vips: &[IpAddr],
    wait: Duration,
) -> io::Result<Vec<(IpAddr, [u8; 6])>> {
    let frames: Vec<Vec<u8>> = vips
        .iter()
        .filter_map(|vip| match (vip, own4, own6) {
            (IpAddr::V4(v), Some(own), _) => Some(arp_request(mac, own, *v)),
            (IpAddr::V6(v), _, Some(own)) => Some(neighbor_solicitation(mac, own, *v)),
            _ => None,
        })
        .collect();
    if frames.is_empty() {
        return Ok(Vec::new());
    }
    let socket = PacketSocket::open(ifindex)?;
    for frame in &frames {
        socket.send(frame)?;
    }
    let mut claims = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(n) = socket.recv(&mut buf, left)? else {
            break;
        };
        if let Some(c) = claim(&buf[..n], vips, mac)
            && !claims.contains(&c)
        {
            claims.push(c);
        }
    }
    Ok(claims)
}

/// A raw packet socket bound to one interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: u32,
}

#[allow(unsafe_code)]
impl PacketSocket {
    fn open(ifindex: u32) -> io::Result<PacketSocket> {
        use std::os::fd::FromRawFd as _;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr(ifindex, proto);
        // SAFETY: a sockaddr_ll of the size passed, alive for the call.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr(self.ifindex, 0);
        // SAFETY: the frame and the address outlive the call, sizes as given.
        let rc = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// One frame received within `wait`, or None.
    fn recv(&self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one pollfd, alive for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            return if ready == 0 {
                Ok(None)
            } else {
                Err(io::Error::last_os_error())
            };
        }
        // SAFETY: the buffer and its length as given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Some(n as usize))
        }
    }
}

fn sockaddr(ifindex: u32, proto_be: u16) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto_be,
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const T2: [u8; 6] = [2, 0, 0, 0, 0, 0x12];

    #[test]
    fn an_arp_reply_from_another_mac_claims_the_vip() {
        let vip: Ipv4Addr = "10.0.3.49".parse().unwrap();
        let request = arp_request(LB, "10.0.3.2".parse().unwrap(), vip);
        assert_eq!(request.len(), 42);
        assert_eq!(&request[12..14], &[0x08, 0x06]);
        // t2's reply: the request's addresses swapped, op 2.
        let mut reply = request.clone();
        reply[..6].copy_from_slice(&LB);
        reply[6..12].copy_from_slice(&T2);
        reply[21] = 2;
        reply[22..28].copy_from_slice(&T2);
        reply[28..32].copy_from_slice(&vip.octets());
        reply[32..38].copy_from_slice(&LB);
        reply[38..42].copy_from_slice(&[10, 0, 3, 2]);
        let vips = [IpAddr::V4(vip)];
        assert_eq!(claim(&reply, &vips, LB), Some((vips[0], T2)));
        assert_eq!(claim(&reply, &vips, T2), None, "our own answer");
        assert_eq!(
            claim(&reply, &[IpAddr::V4("10.0.3.50".parse().unwrap())], LB),
            None
        );
        // Our own request names our own address: no claim.
        assert_eq!(claim(&request, &vips, LB), None);
        assert_eq!(claim(&reply[..30], &vips, LB), None, "truncated");
    }

    #[test]
    fn a_neighbour_advertisement_claims_the_vip_and_solicitations_check_out() {
        let own: Ipv6Addr = "fe80::2".parse().unwrap();
        let vip: Ipv6Addr = "fd00:3::49".parse().unwrap();
        let ns = neighbor_solicitation(LB, own, vip);
        assert_eq!(&ns[..6], &[0x33, 0x33, 0xff, 0, 0, 0x49]);
        let group: [u8; 16] = ns[38..54].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(group),
            "ff02::1:ff00:49".parse::<Ipv6Addr>().unwrap()
        );
        // A checksum over the message with its checksum in is zero.
        assert_eq!(icmpv6_checksum(own, group.into(), &ns[54..]), 0);
        // An advertisement from t3 with its target link-layer address.
        let mut na = ns[..54].to_vec();
        na.extend([136, 0, 0, 0, 0x60, 0, 0, 0]);
        na.extend(vip.octets());
        na.extend([2, 1]);
        na.extend(T2);
        let vips = [IpAddr::V6(vip)];
        assert_eq!(claim(&na, &vips, LB), Some((vips[0], T2)));
        assert_eq!(claim(&ns, &vips, LB), None, "a solicitation claims nothing");
    }
}
