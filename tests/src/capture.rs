//! A packet tap (AF_PACKET, every protocol) on one namespace, decoded just
//! enough to tell who sent what: Ethernet addresses, IP addresses and ports,
//! ARP replies and IPv6 neighbour advertisements.
use std::{
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{netns, topo::Mac};

/// What a captured frame carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// TCP or UDP (ports are 0 for other protocols and for fragments).
    Ip {
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        sport: u16,
        dport: u16,
    },
    /// ARP reply: "`sender_ip` is at `sender_mac`".
    ArpReply {
        sender_ip: Ipv4Addr,
        sender_mac: Mac,
    },
    /// ARP request, with the asker's claimed address.
    ArpRequest {
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    },
    /// ICMPv6 neighbour advertisement for `target`.
    NeighborAdvert {
        src: Ipv6Addr,
        target: Ipv6Addr,
    },
    /// ICMPv6 neighbour solicitation from `src` for `target`.
    NeighborSolicit {
        src: Ipv6Addr,
        target: Ipv6Addr,
    },
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub payload: Payload,
}

const ETH_P_ALL: u16 = 0x0003;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn mac(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)?.try_into().ok()
}

fn ports(l4: &[u8], proto: u8) -> (u16, u16) {
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        (be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0))
    } else {
        (0, 0)
    }
}

fn v6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(bytes.into())
}

fn v4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(bytes.into())
}

/// Decodes an Ethernet frame; `None` if it is shorter than its headers say.
pub fn decode(frame: &[u8]) -> Option<Frame> {
    let dst_mac = mac(frame, 0)?;
    let src_mac = mac(frame, 6)?;
    let ethertype = be16(frame, 12)?;
    let l3 = frame.get(14..)?;
    let payload = match ethertype {
        ETHERTYPE_IPV4 => ipv4(l3)?,
        ETHERTYPE_IPV6 => ipv6(l3)?,
        ETHERTYPE_ARP => arp(l3)?,
        _ => Payload::Other,
    };
    Some(Frame {
        dst_mac,
        src_mac,
        payload,
    })
}

/// An IPv4 packet (no ports for a fragment other than the first).
fn ipv4(l3: &[u8]) -> Option<Payload> {
    let ihl = usize::from(l3.first()? & 0x0f) * 4;
    let proto = *l3.get(9)?;
    let fragment_offset = be16(l3, 6)? & 0x1fff;
    let (sport, dport) = if fragment_offset == 0 {
        ports(l3.get(ihl..)?, proto)
    } else {
        (0, 0)
    };
    Some(Payload::Ip {
        src: v4(l3, 12)?.into(),
        dst: v4(l3, 16)?.into(),
        proto,
        sport,
        dport,
    })
}

/// An IPv6 packet: a neighbour advertisement or solicitation, else its
/// addresses and ports.
fn ipv6(l3: &[u8]) -> Option<Payload> {
    let next = *l3.get(6)?;
    let src = v6(l3, 8)?;
    let l4 = l3.get(40..)?;
    Some(match (next, l4.first()) {
        (IPPROTO_ICMPV6, Some(136)) => Payload::NeighborAdvert {
            src,
            target: v6(l4, 8)?,
        },
        (IPPROTO_ICMPV6, Some(135)) => Payload::NeighborSolicit {
            src,
            target: v6(l4, 8)?,
        },
        _ => {
            let (sport, dport) = ports(l4, next);
            Payload::Ip {
                src: src.into(),
                dst: v6(l3, 24)?.into(),
                proto: next,
                sport,
                dport,
            }
        }
    })
}

/// An ARP request or reply.
fn arp(l3: &[u8]) -> Option<Payload> {
    Some(match be16(l3, 6)? {
        1 => Payload::ArpRequest {
            sender_ip: v4(l3, 14)?,
            target_ip: v4(l3, 24)?,
        },
        2 => Payload::ArpReply {
            sender_mac: mac(l3, 8)?,
            sender_ip: v4(l3, 14)?,
        },
        _ => Payload::Other,
    })
}

/// A running tap; [`Capture::finish`] stops it and returns the frames.
pub struct Capture {
    stop: Arc<AtomicBool>,
    /// The frames seen so far, oldest first.
    seen: Arc<Mutex<Vec<Frame>>>,
    /// Outer result: entering the namespace; inner: the tap itself.
    handle: JoinHandle<io::Result<io::Result<()>>>,
}

impl Capture {
    /// Starts tapping every interface of namespace `ns`. Returns once the tap
    /// is open, so nothing sent after this call is missed (unless the socket
    /// buffer overflows: about a few hundred frames behind the reader).
    pub fn start(ns: &str) -> io::Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let frames = seen.clone();
        let handle = netns::spawn(ns, move || -> io::Result<()> {
            let protocol = Protocol::from(i32::from(ETH_P_ALL.to_be()));
            let socket = match Socket::new(Domain::PACKET, Type::RAW, Some(protocol)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let _ = socket.set_recv_buffer_size(8 << 20);
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let _ = ready_tx.send(Ok(()));
            let mut socket = socket;
            let keep = |frame: &[u8]| frames.lock().unwrap().extend(decode(frame));
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                match socket.read(&mut buf) {
                    Ok(n) => keep(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            // Whatever is still queued.
            socket.set_nonblocking(true)?;
            while let Ok(n) = socket.read(&mut buf) {
                keep(&buf[..n]);
            }
            Ok(())
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io::Error::other(format!("packet socket in {ns}: {e}"))),
            Err(_) => {
                return Err(io::Error::other(format!(
                    "packet socket in {ns}: no answer"
                )));
            }
        }
        Ok(Capture { stop, seen, handle })
    }

    /// Waits until the frames seen so far satisfy `done`, or `within` has
    /// passed; says which.
    pub fn wait_for(&self, within: Duration, done: impl Fn(&[Frame]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the tap and returns every frame it saw, oldest first.
    pub fn finish(self) -> io::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))???;
        Ok(std::mem::take(&mut *self.seen.lock().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_tcp_over_ipv4() {
        let mut f = vec![
            2, 0, 0, 0, 0, 0x64, // dst
            2, 0, 0, 0, 0, 0x11, // src
            0x08, 0x00, // IPv4
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, // ... proto 6
            10, 0, 3, 49, // src
            10, 0, 3, 100, // dst
            0, 80, 0x4e, 0x20, // ports 80 -> 20000
        ];
        f.resize(54, 0);
        let frame = decode(&f).unwrap();
        assert_eq!(frame.src_mac, [2, 0, 0, 0, 0, 0x11]);
        assert_eq!(
            frame.payload,
            Payload::Ip {
                src: "10.0.3.49".parse().unwrap(),
                dst: "10.0.3.100".parse().unwrap(),
                proto: 6,
                sport: 80,
                dport: 20000
            }
        );
    }

    #[test]
    fn decodes_arp_reply() {
        let f = [
            2, 0, 0, 0, 0, 0x64, 2, 0, 0, 0, 0, 2, 0x08, 0x06, // ethernet
            0, 1, 0x08, 0, 6, 4, 0, 2, // htype, ptype, sizes, op = reply
            2, 0, 0, 0, 0, 2, 10, 0, 3, 49, // sender
            2, 0, 0, 0, 0, 0x64, 10, 0, 3, 100, // target
        ];
        assert_eq!(
            decode(&f).unwrap().payload,
            Payload::ArpReply {
                sender_ip: Ipv4Addr::new(10, 0, 3, 49),
                sender_mac: [2, 0, 0, 0, 0, 2]
            }
        );
    }

    #[test]
    fn short_frames_are_rejected() {
        assert_eq!(decode(&[0; 10]), None);
        assert_eq!(decode(&[0; 14]).unwrap().payload, Payload::Other);
    }
}
