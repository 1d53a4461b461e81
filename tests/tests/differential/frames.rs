//! The frames of the differential test's sequences: one function per kind
//! of frame, and the table of kinds with their shares ([`KINDS`]).
//!
//! To add a kind: write its function, a [`Kind`], give it a row of `KINDS` (the shares add
//! up to 1000), and, if the test must assert that every variant of it was
//! sent, a [`Covers`] variant listed by [`every_cover`]. Variants that must
//! all be sent take turns ([`Traffic::turn`]) rather than being drawn, so a
//! run covers each once it has sent as many frames of the kind as there are
//! variants.
//!
//! What is covered:
//! - frames for a listener: IPv4 and IPv6, TCP (SYN, ACK, FIN, RST mixes)
//!   and UDP, IPv4 ones with options of every length (1-10 words);
//! - VLAN tags: 802.1Q, 802.1ad, 802.1Q with priority and DEI bits, two tags
//!   (only one is parsed: not IP, passed);
//! - frames not for a listener: other addresses, ports, protocols, another
//!   host's MAC, broadcast;
//! - truncations at every length of every header the program parses: the
//!   VLAN tag, the IPv4 header with and without options (60 bytes), the
//!   IPv6 header, TCP and UDP (the Ethernet header itself cannot be cut:
//!   BPF_PROG_TEST_RUN refuses frames shorter than 14 bytes);
//! - bogus IP lengths: IPv4 IHL below 5 or beyond the options present or
//!   beyond the frame, total length below the header, beyond the frame or
//!   short of it, version not 4; IPv6 payload length 0, beyond the frame or
//!   short of it, version not 6;
//! - IPv4 fragments (more fragments set);
//! - datagrams cut into fragments (IPv4 and IPv6, TCP and UDP; over IPv6
//!   some with Destination Options in the fragmentable part), their
//!   fragments sent in every order ([`Order`]) between other frames;
//! - ICMP and ICMPv6 errors quoting recent flows and unknown ones, errors
//!   that are not about a VIP flow, echo requests, quotes cut short,
//!   quotes of a fragment of a reply, first or later ([`Icmp`]);
//! - IPv6 extension header chains: walked, not walked, too long, cut
//!   ([`Chain`]).
use std::collections::{BTreeSet, VecDeque};

use lb_common::FlowKey;
use lb_tests::packets::{ExtHeader, Frame, L4, tcp_flags::*};

use super::{Rng, Sequence};

/// A kind of frame: it makes one (described, and its bytes), recording in
/// `Traffic::covered` what it covers.
pub type Kind = fn(&mut Rng, &mut Traffic) -> (String, Vec<u8>);

/// The kinds of frame the sequences send, with their shares (per mille of
/// the frames).
pub const KINDS: [(u64, Kind); 9] = [
    (632, for_a_listener),
    (60, tagged),
    (50, not_for_a_listener),
    (100, truncated),
    (48, bogus_length),
    (10, fragment),
    (40, fragmented),
    (30, icmp_error),
    (30, extension_headers),
];

/// A frame of a sequence, of a kind drawn by the shares of `KINDS`.
pub fn frame(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let mut roll = rng.below(1000);
    for (share, kind) in KINDS {
        if roll < share {
            return kind(rng, traffic);
        }
        roll -= share;
    }
    unreachable!("the shares of KINDS add up to 1000")
}

/// A header the program parses, and how many bytes it has at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Header {
    VlanTag,
    /// With 40 bytes of options when a cut needs them.
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
}

const HEADERS: [(Header, usize); 5] = [
    (Header::VlanTag, 4),
    (Header::Ipv4, 60),
    (Header::Ipv6, 40),
    (Header::Tcp, 20),
    (Header::Udp, 8),
];

/// A bogus IP length (or version) field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bogus {
    IhlBelow5,
    IhlBeyondOptions,
    IhlBeyondFrame,
    TotalBelowHeader,
    TotalBeyondFrame,
    TotalShortOfFrame,
    NotVersion4,
    PayloadZero,
    PayloadBeyondFrame,
    PayloadShortOfFrame,
    NotVersion6,
}

impl Bogus {
    fn is_ipv4(self) -> bool {
        !matches!(
            self,
            Bogus::PayloadZero
                | Bogus::PayloadBeyondFrame
                | Bogus::PayloadShortOfFrame
                | Bogus::NotVersion6
        )
    }
}

const BOGUS: [Bogus; 11] = [
    Bogus::IhlBelow5,
    Bogus::IhlBeyondOptions,
    Bogus::IhlBeyondFrame,
    Bogus::TotalBelowHeader,
    Bogus::TotalBeyondFrame,
    Bogus::TotalShortOfFrame,
    Bogus::NotVersion4,
    Bogus::PayloadZero,
    Bogus::PayloadBeyondFrame,
    Bogus::PayloadShortOfFrame,
    Bogus::NotVersion6,
];

/// A VLAN tagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    Dot1q,
    Dot1ad,
    /// 802.1Q with priority (PCP) and drop-eligible (DEI) bits.
    Priority,
    /// Two tags: only one is parsed, so the frame is not IP (passed).
    Two,
}

const TAGS: [Tag; 4] = [Tag::Dot1q, Tag::Dot1ad, Tag::Priority, Tag::Two];

/// Something a sequence must send at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Covers {
    /// A frame cut in a header, with this many of its bytes left.
    Cut(Header, usize),
    Bogus(Bogus),
    Tag(Tag),
    /// IPv4 options of this many 4-byte words.
    Options(usize),
    Order(Order),
    Icmp(Icmp),
    Chain(Chain),
}

/// The order a datagram's fragments are sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Order {
    Sequential,
    Reversed,
    /// The first last.
    FirstLast,
    /// The first never sent.
    FirstLost,
    /// The first sent twice, a later one twice.
    Repeated,
}

const ORDERS: [Order; 5] = [
    Order::Sequential,
    Order::Reversed,
    Order::FirstLast,
    Order::FirstLost,
    Order::Repeated,
];

/// An ICMP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Icmp {
    /// An error quoting a flow sent recently (IPv4: fragmentation needed or
    /// time exceeded; IPv6: packet too big, unreachable, time exceeded).
    RecentFlow,
    /// An error quoting a flow never sent.
    UnknownFlow,
    /// An error sent to another address than the quoted packet's source.
    NotFromTheVip,
    /// An error quoting a reply from no listener's port (its source).
    NoListener,
    /// An echo request to the VIP.
    Echo,
    /// An error whose quoted headers are cut short.
    QuoteCut,
    /// An error quoting a fragment of a recent flow's reply (the first or
    /// a later one; over IPv6, after a Fragment header).
    QuotedFragment,
}

const ICMPS: [Icmp; 7] = [
    Icmp::RecentFlow,
    Icmp::UnknownFlow,
    Icmp::NotFromTheVip,
    Icmp::NoListener,
    Icmp::Echo,
    Icmp::QuoteCut,
    Icmp::QuotedFragment,
];

/// An IPv6 extension header chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    HopByHop,
    /// Hop-by-hop, destination options, routing with no segments left.
    Three,
    /// An atomic fragment header (offset 0, no more fragments).
    Atomic,
    /// Six destination options headers: as many as the walk takes.
    Six,
    /// Seven: one too many.
    Seven,
    /// A routing header with segments left.
    SegmentsLeft,
    Authentication,
    /// Cut inside the chain.
    Cut,
}

const CHAINS: [Chain; 8] = [
    Chain::HopByHop,
    Chain::Three,
    Chain::Atomic,
    Chain::Six,
    Chain::Seven,
    Chain::SegmentsLeft,
    Chain::Authentication,
    Chain::Cut,
];

/// Everything the frames cover.
pub fn every_cover() -> Vec<Covers> {
    let cuts = HEADERS
        .iter()
        .flat_map(|&(h, len)| (0..len).map(move |left| Covers::Cut(h, left)));
    cuts.chain(BOGUS.map(Covers::Bogus))
        .chain(TAGS.map(Covers::Tag))
        .chain((1..=10).map(Covers::Options))
        .chain(ORDERS.map(Covers::Order))
        .chain(ICMPS.map(Covers::Icmp))
        .chain(CHAINS.map(Covers::Chain))
        .collect()
}

/// What takes turns (see the module).
#[derive(Debug, Clone, Copy)]
enum Turn {
    Cut,
    Bogus,
    Tag,
    Options,
    Order,
    Icmp,
    Chain,
}

/// A listener's flow: address family and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

/// What a sequence sends: its kind, the flows it sent last, whose turn it
/// is, and what it covered.
pub struct Traffic {
    sequence: &'static Sequence,
    recent: VecDeque<FlowKey>,
    turns: [usize; 7],
    /// Fragments of datagrams cut, still to send (each with what it is).
    fragments: VecDeque<(String, Vec<u8>)>,
    /// The next datagram's identification.
    datagram: u32,
    pub covered: BTreeSet<Covers>,
}

/// Flows sent again (`Sequence::again`): the last ones sent.
const RECENT: usize = 12;

impl Traffic {
    pub fn new(sequence: &'static Sequence) -> Traffic {
        Traffic {
            sequence,
            recent: VecDeque::new(),
            turns: [0; 7],
            fragments: VecDeque::new(),
            datagram: 0,
            covered: BTreeSet::new(),
        }
    }

    /// Whose turn it is among `n` variants of `which`.
    fn turn(&mut self, which: Turn, n: usize) -> usize {
        let t = &mut self.turns[which as usize];
        *t += 1;
        (*t - 1) % n
    }

    /// A frame for a listener (or close to one), remembered as recent: a
    /// new one, or (`Sequence::again`) another packet of a recent flow.
    pub fn listener_frame(&mut self, rng: &mut Rng) -> Frame {
        let again = self.sequence.again;
        let f = if again > 0 && !self.recent.is_empty() && rng.below(100) < again {
            let key = self.recent[rng.below(self.recent.len() as u64) as usize];
            super::packet_of(&key, *rng.pick(&AGAIN_FLAGS))
        } else {
            let flow = match rng.below(100) {
                0..60 => Flow::Tcp4,
                60..72 => Flow::Tcp6,
                72..90 => Flow::Udp4,
                _ => Flow::Udp6,
            };
            self.flow_frame(rng, flow, true)
        };
        if again > 0
            && let Ok((key, _)) = lb_tests::model::parse(&f.build())
            && !self.recent.contains(&key)
        {
            self.recent.push_back(key);
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        f
    }

    /// A new frame of a `flow` to a listener (or close to one); an IPv4
    /// one has options now and then if `options` allows.
    fn flow_frame(&mut self, rng: &mut Rng, flow: Flow, options: bool) -> Frame {
        let ports = &self.sequence.ports;
        let v4 = |rng: &mut Rng| format!("10.0.4.{}", 1 + rng.below(6));
        let v6 = |rng: &mut Rng| format!("fd00:4::{}", 1 + rng.below(4));
        let f = match flow {
            Flow::Tcp4 => {
                let (client, port) = (v4(rng), *rng.pick(&[80, 81, 82, 83, 84]));
                let sport = 40000 + rng.below(ports[0]) as u16;
                Frame::tcp(&client, sport, "10.0.3.49", port, self.opening(rng))
            }
            Flow::Tcp6 => {
                let client = v6(rng);
                let sport = 40000 + rng.below(ports[1]) as u16;
                Frame::tcp(&client, sport, "fd00:3::49", 80, self.opening(rng))
            }
            Flow::Udp4 => {
                let client = v4(rng);
                let sport = 5000 + rng.below(ports[2]) as u16;
                Frame::udp(&client, sport, "10.0.3.49", 53, b"query")
            }
            Flow::Udp6 => {
                let client = v6(rng);
                let sport = 5000 + rng.below(ports[3]) as u16;
                // The listener's range is 53-59; 60 is past it. (One
                // port draws nothing: the sequence is as it was without.)
                let port = match self.sequence.udp6_ports {
                    1 => 53,
                    n => 53 + rng.below(n) as u16,
                };
                Frame::udp(&client, sport, "fd00:3::49", port, b"q6")
            }
        };
        if options && matches!(flow, Flow::Tcp4 | Flow::Udp4) && rng.below(10) == 0 {
            let words = 1 + self.turn(Turn::Options, 10);
            f.with_ip_options(&self.options(words))
        } else {
            f
        }
    }

    /// The TCP flags of a new flow's frame: a SYN for the sequence's
    /// `syn_first` per cent, else any.
    fn opening(&self, rng: &mut Rng) -> u8 {
        if rng.below(100) < self.sequence.syn_first {
            SYN
        } else {
            *rng.pick(&TCP_FLAGS)
        }
    }

    /// IPv4 options of `words` 4-byte words: a record route that fills
    /// them, or no-operations, then the end of the list.
    fn options(&mut self, words: usize) -> Vec<u8> {
        self.covered.insert(Covers::Options(words));
        let len = 4 * words - 1;
        let mut options = if words % 2 == 1 {
            let mut rr = vec![0; len];
            rr[..3].copy_from_slice(&[7, len as u8, 4]);
            rr
        } else {
            vec![1; len]
        };
        options.push(0);
        options
    }
}

const TCP_FLAGS: [u8; 20] = [
    SYN,
    SYN,
    SYN,
    SYN,
    SYN,
    SYN,
    ACK,
    ACK,
    ACK,
    ACK,
    ACK,
    ACK | PSH,
    ACK | PSH,
    ACK | PSH,
    FIN | ACK,
    FIN | ACK,
    RST,
    RST | ACK,
    SYN | ACK,
    FIN,
];

/// The TCP flags of a packet of a flow sent again.
const AGAIN_FLAGS: [u8; 10] = [
    ACK,
    ACK,
    ACK,
    ACK | PSH,
    ACK | PSH,
    ACK | PSH,
    FIN | ACK,
    RST,
    SYN,
    SYN | ACK,
];

/// A frame for a listener.
fn for_a_listener(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let f = traffic.listener_frame(rng);
    (format!("{f:?}"), f.build())
}

/// A frame for a listener with a VLAN tag (or two), in turn.
fn tagged(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let vid = 1 + rng.below(4000) as u16;
    let f = traffic.listener_frame(rng).with_vlan(vid);
    let mut bytes = f.build();
    let tag = TAGS[traffic.turn(Turn::Tag, TAGS.len())];
    traffic.covered.insert(Covers::Tag(tag));
    match tag {
        Tag::Dot1q => {}
        Tag::Dot1ad => bytes[12..14].copy_from_slice(&[0x88, 0xa8]),
        Tag::Priority => bytes[14] |= (1 + rng.below(7) as u8) << 5 | 0x10,
        Tag::Two => {
            bytes.splice(16..16, [0x81, 0x00, 0x00, 0x05]);
        }
    }
    (format!("{f:?} {tag:?}"), bytes)
}

/// Not for a listener: another address, port or protocol, or a listener's
/// frame addressed to another host's MAC (a switch flooding an unknown
/// unicast, a mirror port) or to everyone.
fn not_for_a_listener(rng: &mut Rng, _: &mut Traffic) -> (String, Vec<u8>) {
    let f = match rng.below(7) {
        0 => Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 8080, SYN),
        1 => Frame::tcp("10.0.4.1", 40000, "10.0.3.2", 80, SYN),
        2 => Frame::udp("10.0.4.1", 5000, "10.0.3.49", 54, b"x"),
        3 => Frame::tcp("fd00:4::1", 40000, "fd00:3::2", 80, ACK),
        5 => Frame {
            dst_mac: [0x02, 0, 0, 0, 0, 0x99],
            ..Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 80, SYN)
        },
        6 => Frame {
            dst_mac: [0xff; 6],
            ..Frame::udp("10.0.4.1", 5000, "10.0.3.49", 53, b"x")
        },
        _ => Frame::new(
            "10.0.4.1",
            "10.0.3.49",
            L4::Raw {
                proto: 1,
                payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
            },
        ),
    };
    (format!("{f:?}"), f.build())
}

/// Where the IP header and the transport header of `bytes` start.
fn offsets(bytes: &[u8]) -> (usize, usize) {
    let l3 = if bytes[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let l4 = if bytes[l3] >> 4 == 4 {
        l3 + 4 * (bytes[l3] & 0x0f) as usize
    } else {
        l3 + 40
    };
    (l3, l4)
}

/// A frame for a listener cut in a header, every length of every header in
/// turn (`HEADERS`).
fn truncated(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let cuts: Vec<(Header, usize)> = HEADERS
        .iter()
        .flat_map(|&(h, len)| (0..len).map(move |left| (h, left)))
        .collect();
    let (header, left) = cuts[traffic.turn(Turn::Cut, cuts.len())];
    traffic.covered.insert(Covers::Cut(header, left));
    let v4 = rng.below(2) == 0;
    let flow = match (header, v4) {
        (Header::Ipv4, _) | (Header::Tcp, true) => Flow::Tcp4,
        (Header::Ipv6, _) | (Header::Tcp, false) => Flow::Tcp6,
        (Header::Udp, true) | (Header::VlanTag, true) => Flow::Udp4,
        (Header::Udp, false) | (Header::VlanTag, false) => Flow::Udp6,
    };
    let long = header == Header::Ipv4 && left >= 20;
    let mut f = traffic.flow_frame(rng, flow, !long);
    if long {
        f = f.with_ip_options(&traffic.options(10));
    }
    if header == Header::VlanTag || rng.below(4) == 0 {
        f = f.with_vlan(1 + rng.below(4000) as u16);
    }
    let mut bytes = f.build();
    let (l3, l4) = offsets(&bytes);
    let start = match header {
        Header::VlanTag => 14,
        Header::Ipv4 | Header::Ipv6 => l3,
        Header::Tcp | Header::Udp => l4,
    };
    bytes.truncate(start + left);
    (format!("{f:?} cut in {header:?} after {left} bytes"), bytes)
}

/// A frame for a listener with a bogus IP length or version, each in turn.
fn bogus_length(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let bogus = BOGUS[traffic.turn(Turn::Bogus, BOGUS.len())];
    traffic.covered.insert(Covers::Bogus(bogus));
    let v4 = bogus.is_ipv4();
    let udp = rng.below(3) == 0;
    let flow = match (v4, udp) {
        (true, false) => Flow::Tcp4,
        (true, true) => Flow::Udp4,
        (false, false) => Flow::Tcp6,
        (false, true) => Flow::Udp6,
    };
    // Without options: the IHL cases add their own.
    let mut f = traffic.flow_frame(rng, flow, false);
    if rng.below(4) == 0 {
        f = f.with_vlan(1 + rng.below(4000) as u16);
    }
    let mut bytes = f.build();
    let how = if v4 {
        bogus_ipv4(rng, bogus, &mut bytes)
    } else {
        bogus_ipv6(rng, bogus, &mut bytes)
    };
    (format!("{f:?} {bogus:?}: {how}"), bytes)
}

/// Makes the IPv4 header of `bytes` `bogus`; what it did.
fn bogus_ipv4(rng: &mut Rng, bogus: Bogus, bytes: &mut Vec<u8>) -> String {
    let (l3, l4) = offsets(bytes);
    let hlen = l4 - l3;
    let datagram = bytes.len() - l3;
    let total = |bytes: &mut Vec<u8>, len: usize| {
        bytes[l3 + 2..l3 + 4].copy_from_slice(&(len.min(0xffff) as u16).to_be_bytes());
        format!("total length {len}")
    };
    match bogus {
        Bogus::IhlBelow5 => {
            bytes[l3] = 0x40 | rng.below(5) as u8;
            format!("IHL {}", bytes[l3] & 0x0f)
        }
        Bogus::IhlBeyondOptions | Bogus::IhlBeyondFrame => {
            let ihl = if bogus == Bogus::IhlBeyondFrame {
                15
            } else {
                hlen / 4 + 1 + rng.below(2) as usize
            };
            bytes[l3] = 0x40 | ihl as u8;
            total(bytes, datagram.max(4 * ihl));
            format!("IHL {ihl} for {hlen} bytes of header, {datagram} of datagram")
        }
        Bogus::TotalBelowHeader => total(bytes, rng.below(hlen as u64) as usize),
        Bogus::TotalBeyondFrame => total(bytes, datagram + 1 + rng.below(2000) as usize),
        Bogus::TotalShortOfFrame => {
            total(bytes, hlen + rng.below((datagram - hlen) as u64) as usize)
        }
        _ => {
            let version = *rng.pick(&[0u8, 5, 6, 15]);
            bytes[l3] = version << 4 | (bytes[l3] & 0x0f);
            format!("version {version}")
        }
    }
}

/// Makes the IPv6 header of `bytes` `bogus`; what it did.
fn bogus_ipv6(rng: &mut Rng, bogus: Bogus, bytes: &mut [u8]) -> String {
    let (l3, l4) = offsets(bytes);
    let payload = bytes.len() - l4;
    let len = match bogus {
        Bogus::PayloadZero => 0,
        Bogus::PayloadBeyondFrame => payload + 1 + rng.below(2000) as usize,
        Bogus::PayloadShortOfFrame => rng.below(payload as u64) as usize,
        _ => {
            let version = *rng.pick(&[0u8, 4, 15]);
            bytes[l3] = version << 4 | (bytes[l3] & 0x0f);
            return format!("version {version}");
        }
    };
    bytes[l3 + 4..l3 + 6].copy_from_slice(&(len as u16).to_be_bytes());
    format!("payload length {len} for {payload} bytes")
}

/// An IPv4 frame for a listener with more fragments set.
fn fragment(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let flow = *rng.pick(&[Flow::Tcp4, Flow::Udp4]);
    let f = traffic.flow_frame(rng, flow, true).with_frag(0x2000);
    (format!("{f:?} (more fragments)"), f.build())
}

/// The next fragment of a datagram cut before, else a datagram for a
/// listener cut into 2 to 4 fragments, queued in an order that takes
/// turns ([`ORDERS`]), and its first fragment to send.
fn fragmented(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    if let Some(next) = traffic.fragments.pop_front() {
        return next;
    }
    let flow = *rng.pick(&[Flow::Tcp4, Flow::Udp4, Flow::Tcp6, Flow::Udp6]);
    let mut f = traffic.flow_frame(rng, flow, true);
    // A payload that makes 2-4 fragments of 64 bytes (with its 8- or
    // 20-byte transport header).
    let len = 72 + rng.below(160) as usize;
    f = with_data(f, len);
    if rng.below(4) == 0 {
        f = f.with_vlan(1 + rng.below(4000) as u16);
    }
    traffic.datagram += 1;
    let id = traffic.datagram;
    // Over IPv6, every third datagram has Destination Options before its
    // transport header, in the fragmentable part: its later fragments'
    // Fragment header says 60.
    if f.src.is_ipv6() && id.is_multiple_of(3) {
        f = f.with_ext_header(ExtHeader::options(ExtHeader::DESTINATION_OPTIONS, 1));
    }
    let parts = f.fragments_keeping(64, id, 0);
    let order = ORDERS[traffic.turn(Turn::Order, ORDERS.len())];
    traffic.covered.insert(Covers::Order(order));
    let mut queued: Vec<usize> = (0..parts.len()).collect();
    match order {
        Order::Sequential => {}
        Order::Reversed => queued.reverse(),
        Order::FirstLast => queued.rotate_left(1),
        Order::FirstLost => {
            queued.remove(0);
        }
        Order::Repeated => {
            queued.insert(1, 0);
            queued.push(parts.len() - 1);
        }
    }
    for i in queued {
        let what = format!(
            "{f:?} datagram {id}, fragment {i} of {} ({order:?})",
            parts.len()
        );
        traffic.fragments.push_back((what, parts[i].clone()));
    }
    traffic
        .fragments
        .pop_front()
        .expect("a datagram has fragments")
}

/// `f` with `len` bytes of data after its TCP or UDP header (a TCP
/// segment's, as raw bytes after its header).
fn with_data(mut f: Frame, len: usize) -> Frame {
    if let L4::Udp { payload, .. } = &mut f.l4 {
        *payload = (0..len).map(|i| i as u8).collect();
    }
    if matches!(f.l4, L4::Tcp { .. }) {
        let header = f.build();
        let (_, l4) = offsets(&header);
        let mut segment = header[l4..].to_vec();
        segment.extend((0..len).map(|i| i as u8));
        f.l4 = L4::Raw {
            proto: lb_common::PROTO_TCP,
            payload: segment,
        };
    }
    f
}

/// An ICMP frame, each kind in turn ([`ICMPS`]).
fn icmp_error(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let icmp = ICMPS[traffic.turn(Turn::Icmp, ICMPS.len())];
    traffic.covered.insert(Covers::Icmp(icmp));
    let recent = (!traffic.recent.is_empty())
        .then(|| traffic.recent[rng.below(traffic.recent.len() as u64) as usize]);
    let flow = match (icmp, recent) {
        (Icmp::RecentFlow | Icmp::QuoteCut | Icmp::QuotedFragment, Some(key)) => {
            super::packet_of(&key, ACK)
        }
        _ => {
            let flow = *rng.pick(&[Flow::Tcp4, Flow::Udp4, Flow::Tcp6, Flow::Udp6]);
            traffic.flow_frame(rng, flow, false)
        }
    };
    let v4 = flow.src.is_ipv4();
    let (router, vip) = if v4 {
        ("10.0.9.1", flow.dst.to_string())
    } else {
        ("fd00:9::1", flow.dst.to_string())
    };
    // The reply the error is about: from the VIP to the client.
    let mut reply = flow.clone();
    std::mem::swap(&mut reply.src, &mut reply.dst);
    reply.l4 = match reply.l4 {
        L4::Tcp { sport, dport, .. } => L4::Tcp {
            sport: if icmp == Icmp::NoListener {
                8080
            } else {
                dport
            },
            dport: sport,
            flags: ACK | PSH,
        },
        L4::Udp { sport, dport, .. } => L4::Udp {
            sport: if icmp == Icmp::NoListener {
                5353
            } else {
                dport
            },
            dport: sport,
            payload: b"answer".to_vec(),
        },
        raw => raw,
    };
    let mut quoted = if icmp == Icmp::QuotedFragment {
        // The reply in fragments of 64 bytes (two or three): one of them.
        let parts = with_data(reply.clone(), 100).fragments(64, rng.below(1 << 16) as u32);
        parts[rng.below(parts.len() as u64) as usize][14..].to_vec()
    } else {
        reply.build()[14..].to_vec()
    };
    let (kind, code) = match (v4, rng.below(2)) {
        (true, 0) => (3, 4),
        (true, _) => (11, 0),
        (false, 0) => (2, 0),
        (false, _) => (*rng.pick(&[1u8, 3]), 0),
    };
    let (kind, to) = match icmp {
        Icmp::Echo => (if v4 { 8 } else { 128 }, vip.clone()),
        Icmp::NotFromTheVip => (
            kind,
            if v4 {
                "10.0.3.2".into()
            } else {
                "fd00:3::2".into()
            },
        ),
        _ => (kind, vip.clone()),
    };
    if icmp == Icmp::QuoteCut {
        let ihl = if v4 {
            4 * (quoted[0] & 0x0f) as usize
        } else {
            40
        };
        quoted.truncate(rng.below(ihl as u64 + 4) as usize);
    }
    let f = Frame::icmp_error(router, &to, kind, code, 1280, &quoted);
    (
        format!("ICMP {kind}/{code} {icmp:?} about {reply:?}"),
        f.build(),
    )
}

/// An IPv6 frame for a listener with an extension header chain, each in
/// turn ([`CHAINS`]).
fn extension_headers(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    let chain = CHAINS[traffic.turn(Turn::Chain, CHAINS.len())];
    traffic.covered.insert(Covers::Chain(chain));
    let flow = *rng.pick(&[Flow::Tcp6, Flow::Udp6]);
    let mut f = traffic.flow_frame(rng, flow, false);
    let options = |kind, rng: &mut Rng| ExtHeader::options(kind, 1 + rng.below(3) as usize);
    let headers: Vec<ExtHeader> = match chain {
        Chain::HopByHop => vec![options(ExtHeader::HOP_BY_HOP, rng)],
        Chain::Three | Chain::Cut => vec![
            options(ExtHeader::HOP_BY_HOP, rng),
            options(ExtHeader::DESTINATION_OPTIONS, rng),
            ExtHeader::routing(0),
        ],
        Chain::Atomic => vec![ExtHeader::fragment(0, false, rng.below(1 << 32) as u32)],
        Chain::Six => (0..6)
            .map(|_| options(ExtHeader::DESTINATION_OPTIONS, rng))
            .collect(),
        Chain::Seven => (0..7)
            .map(|_| options(ExtHeader::DESTINATION_OPTIONS, rng))
            .collect(),
        Chain::SegmentsLeft => vec![ExtHeader::routing(1 + rng.below(3) as u8)],
        Chain::Authentication => vec![ExtHeader {
            kind: ExtHeader::AUTHENTICATION,
            body: vec![0; 14],
        }],
    };
    for h in headers {
        f = f.with_ext_header(h);
    }
    if rng.below(4) == 0 {
        f = f.with_vlan(1 + rng.below(4000) as u16);
    }
    let mut bytes = f.build();
    if chain == Chain::Cut {
        let l3 = if bytes[12..14] == [0x81, 0x00] {
            18
        } else {
            14
        };
        let chain_len: usize = f.ext_headers.iter().map(|h| h.body.len() + 2).sum();
        bytes.truncate(l3 + 40 + rng.below(chain_len as u64) as usize);
    }
    (format!("{f:?} {chain:?}"), bytes)
}
