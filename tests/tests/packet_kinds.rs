//! Golden packets for the frames that are not plain TCP or UDP packets:
//! IP fragments (IPv4 and IPv6, in every order), ICMP errors about a flow
//! (IPv4 destination unreachable and time exceeded, ICMPv6 packet too big),
//! and IPv6 extension headers. Each frame runs through the real program
//! and the reference model, which must agree (`Harness::check`); the tests
//! assert the outcome besides.
//!
//! Needs root (CAP_BPF). Each test loads its own program and maps.
use std::collections::BTreeSet;

use lb_common::Counter;
use lb_tests::{
    harness::{Harness, target},
    model::{TargetKey, XDP_PASS, XDP_TX},
    packets::{ExtHeader, Frame, tcp_flags::*},
};

/// Four targets per group, so that a choice that does not follow the
/// first fragment shows. `rr` counts rounds: its targets by turn, not by
/// hash; `three` hashes client and VIP only.
const POLICY: &str = r#"
listeners:
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: sip, vip: 10.0.3.50, protocol: udp, port: 5060, target_group: rr }
  - { name: three, vip: 10.0.3.51, protocol: udp, port: 53, target_group: three }
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns6, vip: "fd00:3::49", protocol: udp, port: 53, target_group: dns6 }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
  - { name: two-a, vip: 10.0.3.52, protocol: udp, port: 53, target_group: two-a }
  - { name: two-b, vip: 10.0.3.52, protocol: udp, port: 54, target_group: two-b }
  - { name: rtp, vip: 10.0.3.53, protocol: udp, port: 10000-10099, target_group: rtp }
target_groups:
  - name: dns
    protocol: udp
    table_size: 1021
    targets: [ { ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13 }, { ip: 10.0.3.14 } ]
  - name: rr
    protocol: udp
    algorithm: round_robin
    table_size: 1021
    targets: [ { ip: 10.0.3.21 }, { ip: 10.0.3.22 }, { ip: 10.0.3.23 }, { ip: 10.0.3.24 } ]
  - name: three
    protocol: udp
    affinity: three_tuple
    table_size: 1021
    targets: [ { ip: 10.0.3.31 }, { ip: 10.0.3.32 }, { ip: 10.0.3.33 }, { ip: 10.0.3.34 } ]
  - name: web
    protocol: tcp
    algorithm: round_robin
    table_size: 1021
    targets: [ { ip: 10.0.3.41 }, { ip: 10.0.3.42 }, { ip: 10.0.3.43 }, { ip: 10.0.3.44 } ]
  - name: dns6
    protocol: udp
    table_size: 1021
    targets: [ { ip: "fd00:3::11" }, { ip: "fd00:3::12" }, { ip: "fd00:3::13" }, { ip: "fd00:3::14" } ]
  - name: web6
    protocol: tcp
    algorithm: round_robin
    table_size: 1021
    targets: [ { ip: "fd00:3::41" }, { ip: "fd00:3::42" }, { ip: "fd00:3::43" }, { ip: "fd00:3::44" } ]
  - { name: two-a, protocol: udp, table_size: 1021, targets: [ { ip: 10.0.3.61 } ] }
  - { name: two-b, protocol: udp, table_size: 1021, targets: [ { ip: 10.0.3.62 } ] }
  - { name: rtp, protocol: udp, table_size: 1021, targets: [ { ip: 10.0.3.63 } ] }
"#;

/// A UDP datagram of `len` payload bytes from `client:port` to `vip:vport`.
fn datagram(client: &str, port: u16, vip: &str, vport: u16, len: usize) -> Frame {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    Frame::udp(client, port, vip, vport, &payload)
}

/// Runs `frames` in order; the target of each (None if not forwarded) and
/// the counters of each.
fn run_all(
    h: &mut Harness,
    name: &str,
    frames: &[Vec<u8>],
) -> Vec<(Option<TargetKey>, Vec<Counter>)> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let o = h.check(&format!("{name}, fragment {i}"), f);
            if o.action == XDP_TX {
                assert_eq!(&o.output[12..], &f[12..], "{name}: only the MACs change");
            }
            (o.target, o.counters)
        })
        .collect()
}

#[test]
fn later_fragments_follow_their_first_over_ipv4_and_ipv6() {
    let mut h = Harness::new(POLICY);
    let cases = [
        ("10.0.3.100", "10.0.3.49", 53, "dns"),
        ("10.0.3.100", "10.0.3.50", 5060, "rr"),
        ("fd00:3::100", "fd00:3::49", 53, "dns6"),
    ];
    for (client, vip, vport, group) in cases {
        let mut targets = BTreeSet::new();
        for i in 0..24u16 {
            let frames =
                datagram(client, 20000 + i, vip, vport, 3000).fragments(1232, 7000 + i as u32);
            assert_eq!(frames.len(), 3);
            let got = run_all(&mut h, group, &frames);
            let first = got[0].0.clone().expect("the first fragment is forwarded");
            assert_eq!(first.group, group);
            assert!(
                got[0].1.contains(&Counter::NewFlow),
                "{group}: {:?}",
                got[0].1
            );
            for (t, counters) in &got[1..] {
                assert_eq!(t.as_ref(), Some(&first), "{group}: a later fragment strays");
                assert_eq!(counters, &[Counter::Fragment, Counter::Forwarded]);
            }
            // The flow's next datagram, whole, goes where its first went.
            let whole = datagram(client, 20000 + i, vip, vport, 100).build();
            assert_eq!(h.check("whole", &whole).target, Some(first.clone()));
            targets.insert(first);
        }
        assert!(targets.len() >= 2, "{group}: datagrams spread: {targets:?}");
    }
}

/// RFC 8200 puts Destination Options that come before the transport
/// header in the fragmentable part: the first fragment has them and the
/// UDP header after them, the later ones only a Fragment header whose
/// next header is 60. They follow their first all the same.
#[test]
fn ipv6_later_fragments_follow_a_first_with_destination_options() {
    let mut h = Harness::new(POLICY);
    let options = || ExtHeader::options(ExtHeader::DESTINATION_OPTIONS, 1);
    let fragments = |port: u16, id: u32| {
        datagram("fd00:3::100", port, "fd00:3::49", 53, 3000)
            .with_ext_header(options())
            .fragments_keeping(1232, id, 0)
    };
    let mut targets = BTreeSet::new();
    for i in 0..16u16 {
        let frames = fragments(22000 + i, 800 + i as u32);
        assert_eq!(frames.len(), 3);
        // IPv6 header, then the Fragment header: next header 60.
        assert_eq!(
            (frames[0][14 + 40], frames[1][14 + 40]),
            (
                ExtHeader::DESTINATION_OPTIONS,
                ExtHeader::DESTINATION_OPTIONS
            )
        );
        let got = run_all(&mut h, "dns6", &frames);
        let first = got[0].0.clone().expect("the first fragment is forwarded");
        for (t, counters) in &got[1..] {
            assert_eq!(t.as_ref(), Some(&first), "a later fragment strays");
            assert_eq!(counters, &[Counter::Fragment, Counter::Forwarded]);
        }
        targets.insert(first);
    }
    assert!(targets.len() >= 2, "datagrams spread: {targets:?}");
    // Without their first, such fragments show no transport protocol to
    // find a listener by: the host's.
    let frames = fragments(23000, 99);
    let o = h.check("a later fragment alone", &frames[1]);
    assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Passed]));
    // Destination Options before the Fragment header are in every
    // fragment: the later ones show UDP.
    let frames = datagram("fd00:3::100", 23001, "fd00:3::49", 53, 3000)
        .with_ext_header(options())
        .fragments(1232, 100);
    let got = run_all(&mut h, "dns6", &frames);
    assert_eq!(got[1].0, got[0].0);
    assert_eq!(got[2].1, [Counter::Fragment, Counter::Forwarded]);
}

#[test]
fn fragments_in_every_order_and_without_their_first() {
    let mut h = Harness::new(POLICY);
    // Reversed: the later fragments come first and go by the hash of
    // client, VIP and protocol (counted); then the first decides for the
    // flow, and fragments after it follow it.
    for (client, vip, group) in [
        ("10.0.3.100", "10.0.3.49", "dns"),
        ("fd00:3::100", "fd00:3::49", "dns6"),
    ] {
        for i in 0..8u16 {
            let frames = datagram(client, 30000 + i, vip, 53, 4000).fragments(1024, 900 + i as u32);
            assert_eq!(frames.len(), 4);
            let mut order: Vec<Vec<u8>> = frames[1..].iter().rev().cloned().collect();
            order.push(frames[0].clone());
            order.push(frames[2].clone());
            let got = run_all(&mut h, group, &order);
            let by_addresses = got[0].0.clone().expect("forwarded");
            for (t, counters) in &got[..3] {
                assert_eq!(t.as_ref(), Some(&by_addresses), "{group}");
                assert_eq!(counters, &[Counter::FragmentUnmatched, Counter::Forwarded]);
            }
            let first = got[3].0.clone().expect("forwarded");
            assert_eq!(
                got[4],
                (Some(first), vec![Counter::Fragment, Counter::Forwarded])
            );
        }
    }
}

#[test]
fn three_tuple_groups_send_every_fragment_where_the_flow_goes() {
    let mut h = Harness::new(POLICY);
    for i in 0..16u16 {
        let client = format!("10.0.3.{}", 100 + i);
        let frames = datagram(&client, 40000, "10.0.3.51", 53, 3000).fragments(1232, 77);
        // Later fragments alone, then the whole flow: the same target.
        let alone = run_all(&mut h, "three", &frames[1..]);
        let whole = h.check(
            "whole",
            &datagram(&client, 40000, "10.0.3.51", 53, 10).build(),
        );
        for (t, counters) in alone {
            assert_eq!(t, whole.target);
            assert_eq!(counters, [Counter::FragmentUnmatched, Counter::Forwarded]);
        }
    }
}

#[test]
fn unmatched_fragments_of_a_vip_with_several_listeners_pass_to_the_host() {
    let mut h = Harness::new(POLICY);
    let frames = datagram("10.0.3.100", 40000, "10.0.3.52", 53, 3000).fragments(1232, 5);
    // Without the first, the port is unknown: two listeners share the VIP.
    let o = h.check("later alone", &frames[1]);
    assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Passed]));
    // With it, the datagram's listener is known.
    let got = run_all(&mut h, "two-a", &frames);
    assert_eq!(got[0].0, Some(target("two-a", "10.0.3.61")));
    assert_eq!(
        got[1],
        (
            Some(target("two-a", "10.0.3.61")),
            vec![Counter::Fragment, Counter::Forwarded]
        )
    );
    // Not to the load balancer's MAC, or to no VIP: passed.
    let mut other_mac = frames[1].clone();
    other_mac[5] ^= 0x40;
    assert_eq!(h.check("other mac", &other_mac).counters, [Counter::Passed]);
    let elsewhere = datagram("10.0.3.100", 40000, "10.0.3.99", 53, 3000).fragments(1232, 5);
    assert_eq!(h.check("no vip", &elsewhere[1]).counters, [Counter::Passed]);
    // Fragments of other protocols are the host's.
    let mut icmp = frames[1].clone();
    icmp[14 + 9] = 1;
    assert_eq!(h.check("icmp fragment", &icmp).counters, [Counter::Passed]);
}

/// A first fragment to a VIP on a port no listener has passes to the
/// host; its later fragments, which have no port, must follow it there,
/// and not go to the VIP's one listener of their protocol. The same for a
/// first fragment too short for its UDP header (malformed).
#[test]
fn later_fragments_follow_a_first_that_passed_to_the_host() {
    let mut h = Harness::new(POLICY);
    let cases = [
        // 10.0.3.49 has one UDP listener, on 53.
        ("10.0.3.100", "10.0.3.49", 5353),
        ("fd00:3::100", "fd00:3::49", 5353),
        // 10.0.3.53 has one, of a range of ports: passed at the lookup.
        ("10.0.3.100", "10.0.3.53", 10100),
    ];
    for (i, (client, vip, port)) in cases.into_iter().enumerate() {
        let frames = datagram(client, 30000, vip, port, 3000).fragments(1232, 40 + i as u32);
        assert_eq!(frames.len(), 3);
        for (n, frame) in frames.iter().enumerate() {
            let o = h.check(&format!("{vip}:{port}, fragment {n}"), frame);
            assert_eq!(
                (o.action, &o.output, o.counters),
                (XDP_PASS, frame, vec![Counter::Passed]),
                "{vip}:{port}, fragment {n}"
            );
        }
    }
    // Malformed: a first fragment whose total length ends in its UDP
    // header.
    let frames = datagram("10.0.3.100", 30001, "10.0.3.49", 53, 3000).fragments(1232, 50);
    let mut first = frames[0].clone();
    first[16..18].copy_from_slice(&(20u16 + 4).to_be_bytes());
    let o = h.check("malformed first", &first);
    assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Malformed]));
    for frame in &frames[1..] {
        let o = h.check("after a malformed first", frame);
        assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Passed]));
    }
    // Only frames to the load balancer's MAC are remembered: a first
    // fragment for another host leaves its later ones (to this one) to
    // the hash, as if it had not been seen.
    let frames = datagram("10.0.3.100", 30002, "10.0.3.49", 5353, 3000).fragments(1232, 51);
    let mut elsewhere = frames[0].clone();
    elsewhere[5] ^= 0x40;
    assert_eq!(
        h.check("first, other mac", &elsewhere).counters,
        [Counter::Passed]
    );
    assert_eq!(
        h.check("later", &frames[1]).counters,
        [Counter::FragmentUnmatched, Counter::Forwarded]
    );
    // Remembered for 30 s, like a forwarded first.
    let frames = datagram("10.0.3.100", 30003, "10.0.3.49", 5353, 3000).fragments(1232, 52);
    assert_eq!(h.check("first", &frames[0]).counters, [Counter::Passed]);
    h.advance(29);
    assert_eq!(h.check("within", &frames[1]).counters, [Counter::Passed]);
    h.advance(2);
    assert_eq!(
        h.check("after", &frames[2]).counters,
        [Counter::FragmentUnmatched, Counter::Forwarded]
    );
    // The listener's own datagrams still go to its group.
    let frames = datagram("10.0.3.100", 30004, "10.0.3.49", 53, 3000).fragments(1232, 53);
    let got = run_all(&mut h, "dns", &frames);
    assert_eq!(got[0].0.as_ref().map(|t| t.group.as_str()), Some("dns"));
    assert_eq!(
        got[2],
        (
            got[0].0.clone(),
            vec![Counter::Fragment, Counter::Forwarded]
        )
    );
}

#[test]
fn a_first_fragment_is_followed_for_30_seconds() {
    let mut h = Harness::new(POLICY);
    let mut strays = 0;
    for i in 0..16u16 {
        let frames = datagram("10.0.3.100", 41000 + i, "10.0.3.50", 5060, 3000)
            .fragments(1232, 60 + i as u32);
        let first = h.check("first", &frames[0]).target;
        h.advance(29);
        assert_eq!(h.check("within", &frames[1]).target, first);
        h.advance(2);
        let late = h.check("after", &frames[2]);
        assert_eq!(
            late.counters,
            [Counter::FragmentUnmatched, Counter::Forwarded]
        );
        strays += usize::from(late.target != first);
    }
    // Round robin and the hash agree for about a quarter of datagrams.
    assert!(strays >= 4, "{strays} of 16 went elsewhere");
}

/// A target's reply from `vip:vport` to `client:port` (the IP packet an
/// ICMP error quotes: the frame without its Ethernet header).
fn reply(vip: &str, vport: u16, client: &str, port: u16) -> Vec<u8> {
    Frame::tcp(vip, vport, client, port, ACK | PSH).build()[14..].to_vec()
}

#[test]
fn icmp_errors_about_a_flow_go_to_its_target() {
    let mut h = Harness::new(POLICY);
    for (router, client, vip, group, too_big) in [
        ("10.0.9.1", "10.0.3.100", "10.0.3.49", "web", (3, 4)),
        ("fd00:9::1", "fd00:3::100", "fd00:3::49", "web6", (2, 0)),
    ] {
        let mut owners = BTreeSet::new();
        for i in 0..12u16 {
            let port = 50000 + i;
            let syn = Frame::tcp(client, port, vip, 80, SYN).build();
            let owner = h.check("syn", &syn).target.expect("forwarded");
            let quoted = reply(vip, 80, client, port);
            let (t, code) = too_big;
            let error = Frame::icmp_error(router, vip, t, code, 1400, &quoted).build();
            let o = h.check("too big", &error);
            assert_eq!(
                (o.action, &o.target),
                (XDP_TX, &Some(owner.clone())),
                "{group}"
            );
            assert_eq!(o.counters, [Counter::IcmpError, Counter::Forwarded]);
            assert_eq!(&o.output[12..], &error[12..]);
            // Time exceeded, too.
            let exceeded = if vip.contains(':') { 3 } else { 11 };
            let error = Frame::icmp_error(router, vip, exceeded, 0, 0, &quoted).build();
            assert_eq!(h.check("time exceeded", &error).target, Some(owner.clone()));
            // The flow is untouched: its next packet is a hit.
            let ack = Frame::tcp(client, port, vip, 80, ACK).build();
            assert_eq!(
                h.check("ack", &ack).counters,
                [Counter::FlowHit, Counter::Forwarded]
            );
            owners.insert(owner);
        }
        assert!(owners.len() >= 2, "{group}: {owners:?}");
        // A flow the table does not hold: the group's hash target.
        let quoted = reply(vip, 80, client, 1);
        let error = Frame::icmp_error(router, vip, too_big.0, too_big.1, 1400, &quoted).build();
        let o = h.check("unknown flow", &error);
        assert_eq!(
            o.counters,
            [Counter::IcmpErrorUnmatched, Counter::Forwarded]
        );
    }
}

/// A target's UDP answer larger than its route's MTU leaves it in IPv6
/// fragments; a router on a smaller link answers the first with "packet
/// too big", quoting its IPv6 header, Fragment header and UDP header. The
/// error goes to the flow's target, which learns the path MTU; an error
/// quoting a later fragment (no ports) is the host's, as over IPv4.
#[test]
fn icmpv6_errors_quoting_a_first_fragment_go_to_the_flows_target() {
    let mut h = Harness::new(POLICY);
    let (router, client, vip) = ("fd00:9::1", "fd00:3::100", "fd00:3::49");
    let mut owners = BTreeSet::new();
    for i in 0..12u16 {
        let port = 21000 + i;
        let query = datagram(client, port, vip, 53, 40).build();
        let owner = h.check("query", &query).target.expect("forwarded");
        // The answer, cut by the target into fragments of 1232 bytes; an
        // ICMPv6 error quotes as much as fits in 1280 bytes.
        let answer = datagram(vip, 53, client, port, 3000).fragments(1232, 500 + i as u32);
        let quote = |fragment: &[u8]| fragment[14..].iter().take(1232).copied().collect();
        let first: Vec<u8> = quote(&answer[0]);
        assert_eq!(first[6], ExtHeader::FRAGMENT);
        for (t, code) in [(2, 0), (1, 4), (3, 0)] {
            let error = Frame::icmp_error(router, vip, t, code, 1280, &first).build();
            let o = h.check("about the first fragment", &error);
            assert_eq!((o.action, &o.target), (XDP_TX, &Some(owner.clone())));
            assert_eq!(o.counters, [Counter::IcmpError, Counter::Forwarded]);
            assert_eq!(&o.output[12..], &error[12..]);
        }
        let later: Vec<u8> = quote(&answer[1]);
        let error = Frame::icmp_error(router, vip, 2, 0, 1280, &later).build();
        let o = h.check("about a later fragment", &error);
        assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Passed]));
        owners.insert(owner);
    }
    assert!(owners.len() >= 2, "{owners:?}");
    // A flow the table does not hold: the group's hash target.
    let answer = datagram(vip, 53, client, 1, 3000).fragments(1232, 9);
    let error = Frame::icmp_error(router, vip, 2, 0, 1280, &answer[0][14..]).build();
    assert_eq!(
        h.check("unknown flow", &error).counters,
        [Counter::IcmpErrorUnmatched, Counter::Forwarded]
    );
    // A quote cut in its Fragment header or before its ports: malformed.
    for len in 40..40 + 8 + 4 {
        let error = Frame::icmp_error(router, vip, 2, 0, 1280, &answer[0][14..14 + len]).build();
        let o = h.check(&format!("quote cut at {len}"), &error);
        assert_eq!(
            (o.action, o.counters),
            (XDP_PASS, vec![Counter::Malformed]),
            "cut at {len}"
        );
    }
}

#[test]
fn icmp_that_is_no_error_about_a_vip_flow_passes() {
    let mut h = Harness::new(POLICY);
    let quoted = reply("10.0.3.49", 80, "10.0.3.100", 50000);
    let echo = Frame::icmp_error("10.0.3.100", "10.0.3.49", 8, 0, 0, b"ping").build();
    let cases = [
        ("echo request", echo, Counter::Passed),
        (
            "error sent to another address than the quoted source",
            Frame::icmp_error("10.0.9.1", "10.0.3.50", 3, 4, 1400, &quoted).build(),
            Counter::Passed,
        ),
        (
            "error about a reply from no listener's port",
            Frame::icmp_error(
                "10.0.9.1",
                "10.0.3.49",
                3,
                4,
                1400,
                &reply("10.0.3.49", 81, "10.0.3.100", 1),
            )
            .build(),
            Counter::Passed,
        ),
        (
            "redirect",
            Frame::icmp_error("10.0.9.1", "10.0.3.49", 5, 1, 0, &quoted).build(),
            Counter::Passed,
        ),
        (
            "echo request over IPv6",
            Frame::icmp_error("fd00:3::100", "fd00:3::49", 128, 0, 0, b"ping").build(),
            Counter::Passed,
        ),
    ];
    for (name, frame, counter) in cases {
        let o = h.check(name, &frame);
        assert_eq!((o.action, &o.output), (XDP_PASS, &frame), "{name}");
        assert_eq!(o.counters, [counter], "{name}");
    }
    // Cut anywhere in the quoted headers: malformed, passed.
    let full = Frame::icmp_error("10.0.9.1", "10.0.3.49", 3, 4, 1400, &quoted).build();
    for len in 34..(14 + 20 + 8 + 20 + 4) {
        let o = h.check(&format!("cut at {len}"), &full[..len]);
        assert_eq!(
            (o.action, o.counters),
            (XDP_PASS, vec![Counter::Malformed]),
            "cut at {len}"
        );
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut h = Harness::new(POLICY);
    let syn = |port| Frame::tcp("fd00:3::100", port, "fd00:3::49", 80, SYN);
    let options = |kind, units| ExtHeader::options(kind, units);
    let walked = [
        syn(1).with_ext_header(options(ExtHeader::HOP_BY_HOP, 1)),
        syn(2)
            .with_ext_header(options(ExtHeader::HOP_BY_HOP, 2))
            .with_ext_header(options(ExtHeader::DESTINATION_OPTIONS, 1))
            .with_ext_header(ExtHeader::routing(0)),
        syn(3)
            .with_ext_header(ExtHeader::fragment(0, false, 9))
            .with_ext_header(options(ExtHeader::DESTINATION_OPTIONS, 3)),
        (0..6).fold(syn(4), |f, _| {
            f.with_ext_header(options(ExtHeader::DESTINATION_OPTIONS, 1))
        }),
    ];
    for frame in walked {
        let bytes = frame.build();
        let o = h.check("walked", &bytes);
        assert_eq!(o.action, XDP_TX, "{:?}", frame.ext_headers);
        assert!(o.counters.contains(&Counter::NewFlow));
        assert_eq!(&o.output[12..], &bytes[12..]);
    }
    let passed = [
        syn(5).with_ext_header(ExtHeader::routing(1)),
        syn(6).with_ext_header(ExtHeader {
            kind: ExtHeader::AUTHENTICATION,
            body: vec![0; 14],
        }),
        (0..7).fold(syn(7), |f, _| {
            f.with_ext_header(options(ExtHeader::DESTINATION_OPTIONS, 1))
        }),
    ];
    for frame in passed {
        let bytes = frame.build();
        let o = h.check("passed", &bytes);
        assert_eq!(
            (o.action, o.counters),
            (XDP_PASS, vec![Counter::ExtensionHeader])
        );
    }
    // Cut inside the chain: malformed.
    let full = syn(8)
        .with_ext_header(options(ExtHeader::HOP_BY_HOP, 1))
        .with_ext_header(ExtHeader::fragment(0, true, 3))
        .build();
    for len in 54..(54 + 16 + 20) {
        let o = h.check(&format!("cut at {len}"), &full[..len]);
        assert_eq!(
            (o.action, o.counters),
            (XDP_PASS, vec![Counter::Malformed]),
            "cut at {len}"
        );
    }
}

/// The IPv6 extension headers the walk does not take (mobility, HIP,
/// shim6, the experimental 253 and 254) are counted `extension_header`,
/// right after the IPv6 header or after a walked one; ESP (50) and No Next
/// Header (59) are other protocols, not ours: `passed`.
#[test]
fn ipv6_headers_the_walk_does_not_take_pass() {
    let mut h = Harness::new(POLICY);
    let cases = [
        ("mobility", 135, Counter::ExtensionHeader),
        ("HIP", 139, Counter::ExtensionHeader),
        ("shim6", 140, Counter::ExtensionHeader),
        ("experimental 253", 253, Counter::ExtensionHeader),
        ("experimental 254", 254, Counter::ExtensionHeader),
        ("ESP", 50, Counter::Passed),
        ("no next header", 59, Counter::Passed),
    ];
    for (i, (name, kind, counter)) in cases.into_iter().enumerate() {
        for after_hop_by_hop in [false, true] {
            let mut f = Frame::tcp("fd00:3::100", 100 + i as u16, "fd00:3::49", 80, SYN);
            if after_hop_by_hop {
                f = f.with_ext_header(ExtHeader::options(ExtHeader::HOP_BY_HOP, 1));
            }
            let bytes = f
                .with_ext_header(ExtHeader {
                    kind,
                    body: vec![0; 6],
                })
                .build();
            let what = format!("{name}, after hop-by-hop: {after_hop_by_hop}");
            let o = h.check(&what, &bytes);
            assert_eq!(
                (o.action, &o.output, o.counters),
                (XDP_PASS, &bytes, vec![counter]),
                "{what}"
            );
        }
    }
}

/// An ICMP error passes when it quotes a later IPv4 fragment (no ports to
/// find the flow by), or comes in a frame not addressed to the load
/// balancer's MAC; the same error whole and to it goes to the flow's
/// target.
#[test]
fn icmp_errors_without_a_flow_to_follow_pass() {
    let mut h = Harness::new(POLICY);
    let (router, client, vip) = ("10.0.9.1", "10.0.3.100", "10.0.3.49");
    let syn = Frame::tcp(client, 50000, vip, 80, SYN).build();
    let owner = h.check("syn", &syn).target.expect("forwarded");
    let reply = |frag: u16| {
        Frame::tcp(vip, 80, client, 50000, ACK | PSH)
            .with_frag(frag)
            .build()[14..]
            .to_vec()
    };
    let error = |quoted: &[u8]| Frame::icmp_error(router, vip, 3, 4, 1400, quoted);
    // The reply's first fragment (more fragments, offset 0), then a later
    // one (offset 185 units of 8 bytes, more fragments or not).
    let first = error(&reply(0x2000)).build();
    let o = h.check("quoting the first fragment", &first);
    assert_eq!((o.action, &o.target), (XDP_TX, &Some(owner.clone())));
    assert_eq!(o.counters, [Counter::IcmpError, Counter::Forwarded]);
    for frag in [185, 0x2000 | 185] {
        let later = error(&reply(frag)).build();
        let o = h.check("quoting a later fragment", &later);
        assert_eq!(
            (o.action, &o.output, o.counters),
            (XDP_PASS, &later, vec![Counter::Passed]),
            "flags and offset {frag:#06x}"
        );
    }
    // Not to the load balancer's MAC: another host's, broadcast.
    for mac in [[0x02, 0, 0, 0, 0, 0x99], [0xff; 6]] {
        let frame = Frame {
            dst_mac: mac,
            ..error(&reply(0))
        }
        .build();
        let o = h.check("to another MAC", &frame);
        assert_eq!(
            (o.action, &o.output, o.counters),
            (XDP_PASS, &frame, vec![Counter::Passed]),
            "{mac:02x?}"
        );
    }
    let o = h.check("whole, to the MAC", &error(&reply(0)).build());
    assert_eq!(o.target, Some(owner));
}
