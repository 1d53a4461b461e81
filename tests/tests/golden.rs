//! Golden packets through the real XDP program (BPF_PROG_TEST_RUN), with maps
//! provisioned through the real compile -> apply path. Every case asserts the
//! verdict, the exact output bytes and the counters, and is also run through
//! the reference model (`lb_tests::model`), which must agree (the harness,
//! `lb_tests::harness`, also compares statistics, active flows, round-robin
//! positions and sticky sessions after every frame).
//!
//! Needs root (CAP_BPF). Each test loads its own program and maps.
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    Counter,
    flow_table::{self, Word, flags},
};
use lb_tests::{
    harness::{Harness, assert_one_bpf_function, target},
    model::{TargetKey, XDP_DROP, XDP_PASS, XDP_TX},
    packets::{ExtHeader, Frame, L4, LB_MAC, tcp_flags::*},
};

const ONE_TARGET: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
target_groups:
  - { name: web, protocol: tcp, table_size: 1021, targets: [ { ip: 10.0.3.11 } ] }
  - { name: dns, protocol: udp, table_size: 1021, targets: [ { ip: 10.0.3.12 } ] }
  - { name: web6, protocol: tcp, table_size: 1021, targets: [ { ip: "fd00:3::13" } ] }
"#;

const T11: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const T12: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const T13: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];

/// The literal expectation: the same frame with only the MACs rewritten.
fn rewritten(frame: &[u8], dst: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

#[test]
fn tcp_syn_and_ack_to_vip_are_forwarded_with_only_macs_rewritten() {
    let mut h = Harness::new(ONE_TARGET);
    let syn = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).build();
    let o = h.check("syn", &syn);
    assert_eq!(o.action, XDP_TX);
    assert_eq!(o.output, rewritten(&syn, T11));
    // Byte-level golden: destination MAC, source MAC, the rest untouched.
    assert_eq!(
        &o.output[..12],
        &[0x02, 0, 0, 0, 0, 0x11, 0x02, 0, 0, 0, 0, 0x02]
    );
    assert_eq!(&o.output[12..], &syn[12..]);
    assert!(o.counters.contains(&Counter::NewFlow));

    let ack = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, ACK).build();
    let o = h.check("ack", &ack);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&ack, T11)));
    assert!(
        o.counters.contains(&Counter::FlowHit),
        "the ACK finds the SYN's flow"
    );

    let listener = h.dp.listener_stats(1).unwrap();
    assert_eq!((listener.packets, listener.new_flows), (2, 1));
    assert_eq!(listener.bytes, (syn.len() + ack.len()) as u64);
    assert_eq!(h.dp.target_stats(1).unwrap().packets, 2);
    // The batched reader (metrics, lb stats, lb status) reads the same,
    // every CPU summed, and the global counters.
    let reader = h.dp.reader().unwrap();
    let read = reader.stats(4, 4).unwrap();
    assert_eq!(read.listeners.len(), 4);
    assert_eq!(read.listener(1), listener);
    assert_eq!(read.target(1), h.dp.target_stats(1).unwrap());
    assert_eq!(read.target(2), h.dp.target_stats(2).unwrap());
    // A few ids are read one by one, with the same sums.
    let few = reader.stats_of(&[1], &[1, 2]).unwrap();
    assert_eq!(few.listener(1), listener);
    assert_eq!(few.target(1), read.target(1));
    assert_eq!(few.target(2), read.target(2));
    let counters = reader.counters().unwrap();
    for (c, v) in h.dp.counters().unwrap() {
        assert_eq!(counters[c as usize], v, "{}", c.name());
    }
    assert_eq!(counters[Counter::NewFlow as usize], 1);
}

#[test]
fn udp_to_vip_is_forwarded() {
    let mut h = Harness::new(ONE_TARGET);
    let frame = Frame::udp("10.0.3.100", 5353, "10.0.3.49", 53, b"query").build();
    let o = h.check("udp", &frame);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&frame, T12)));
}

#[test]
fn vlan_tagged_frame_keeps_its_tag() {
    let mut h = Harness::new(ONE_TARGET);
    let frame = Frame::tcp("10.0.3.100", 40001, "10.0.3.49", 80, SYN)
        .with_vlan(42)
        .build();
    assert_eq!(&frame[12..16], &[0x81, 0x00, 0x00, 42]);
    let o = h.check("vlan", &frame);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&frame, T11)));
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let mut h = Harness::new(ONE_TARGET);
    // Record route (7), length 11, pointer 4, two empty slots; padded to 12.
    let frame = Frame::tcp("10.0.3.100", 40002, "10.0.3.49", 80, SYN)
        .with_ip_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0])
        .build();
    assert_eq!(frame[14], 0x48, "IHL 8");
    let o = h.check("options", &frame);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&frame, T11)));

    // The same ports behind options must not be mistaken: a frame whose
    // option bytes look like port 80 but whose real ports differ passes.
    let other = Frame::tcp("10.0.3.100", 80, "10.0.3.49", 8080, SYN)
        .with_ip_options(&[1, 1, 0, 80])
        .build();
    let o = h.check("options, other port", &other);
    assert_eq!(o.action, XDP_PASS);
}

#[test]
fn ipv6_tcp_is_forwarded() {
    let mut h = Harness::new(ONE_TARGET);
    let frame = Frame::tcp("fd00:3::100", 40003, "fd00:3::49", 80, SYN).build();
    let o = h.check("ipv6", &frame);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&frame, T13)));
}

#[test]
fn non_listener_traffic_passes_untouched() {
    let mut h = Harness::new(ONE_TARGET);
    let cases = [
        (
            "other address",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 80, SYN),
        ),
        (
            "vip, other port",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 81, SYN),
        ),
        (
            "vip, udp to the tcp port",
            Frame::udp("10.0.3.100", 40000, "10.0.3.49", 80, b"x"),
        ),
        (
            "vip, tcp to the udp port",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 53, SYN),
        ),
        (
            "vip, icmp",
            Frame::new(
                "10.0.3.100",
                "10.0.3.49",
                L4::Raw {
                    proto: 1,
                    payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
                },
            ),
        ),
        (
            "ipv6 other address",
            Frame::tcp("fd00:3::100", 40000, "fd00:3::2", 80, SYN),
        ),
        (
            "a listener's frame for another host's MAC",
            Frame {
                dst_mac: [0x02, 0, 0, 0, 0, 0x99],
                ..Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN)
            },
        ),
        (
            "a listener's frame to the broadcast MAC",
            Frame {
                dst_mac: [0xff; 6],
                ..Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN)
            },
        ),
        (
            "a listener's frame to a multicast MAC, tagged",
            Frame {
                dst_mac: [0x01, 0x00, 0x5e, 0, 0, 0x49],
                ..Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).with_vlan(7)
            },
        ),
        (
            "ipv6 with an extension header, to another address",
            Frame::tcp("fd00:3::100", 40000, "fd00:3::99", 80, SYN)
                .with_ext_header(ExtHeader::options(ExtHeader::HOP_BY_HOP, 1)),
        ),
    ];
    for (name, frame) in cases {
        let bytes = frame.build();
        let o = h.check(name, &bytes);
        assert_eq!((o.action, &o.output), (XDP_PASS, &bytes), "{name}");
        assert_eq!(o.counters, vec![Counter::Passed], "{name}");
    }
    // ARP is not IP: passes.
    let mut arp = Frame::tcp("10.0.3.100", 1, "10.0.3.49", 80, SYN).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(h.check("arp", &arp).action, XDP_PASS);
}

#[test]
fn truncated_frames_pass_untouched_at_every_header_boundary() {
    let mut h = Harness::new(ONE_TARGET);
    let frames = [
        Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN),
        Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, b""),
        Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).with_vlan(7),
        Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN)
            .with_ip_options(&[1, 1, 1, 1, 1, 1, 1, 1]),
        Frame::tcp("fd00:3::100", 40000, "fd00:3::49", 80, SYN),
    ];
    let mut checked = 0;
    for frame in &frames {
        let full = frame.build();
        // The kernel's test run needs a whole Ethernet header; every length
        // from there up to one byte short is cut (all boundaries included).
        for len in 14..full.len() {
            let cut = &full[..len];
            let o = h.check(&format!("{:?} cut at {len}", frame.l4), cut);
            assert_eq!((o.action, o.output.as_slice()), (XDP_PASS, cut));
            assert_eq!(o.counters, vec![Counter::Malformed], "cut at {len}");
            checked += 1;
        }
    }
    assert!(checked > 200);
}

#[test]
fn inconsistent_headers_pass_and_are_counted() {
    let mut h = Harness::new(ONE_TARGET);
    let good = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).build();
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases = [
        ("ihl 4", mutate(&|b| b[14] = 0x44)),
        ("ihl 0", mutate(&|b| b[14] = 0x40)),
        ("version 6 in an ipv4 ethertype", mutate(&|b| b[14] = 0x65)),
        (
            "total length below header",
            mutate(&|b| b[16..18].copy_from_slice(&10u16.to_be_bytes())),
        ),
        ("ihl beyond the frame", mutate(&|b| b[14] = 0x4f)),
    ];
    for (name, frame) in cases {
        let o = h.check(name, &frame);
        assert_eq!((o.action, &o.output), (XDP_PASS, &frame), "{name}");
        assert_eq!(o.counters, vec![Counter::Malformed], "{name}");
    }
}

/// Before the loader's first write of the maps (zeros: an empty listener
/// filter, configuration and flow table), every frame passes to the
/// kernel, counted as the parser and the empty filter see it: nothing is
/// dropped (README, `lb_dropped_packets_total`).
#[test]
fn before_the_first_write_of_the_maps_every_frame_passes() {
    let mut dp = lb_user::dataplane::Dataplane::load(&lb_user::dataplane::LoadOptions {
        flow_table_size: 4096,
    })
    .expect("load lb (are you root?)");
    let quoted = Frame::tcp("10.0.3.49", 80, "10.0.3.100", 40000, ACK).build()[14..].to_vec();
    let udp = Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, &[7; 3000]);
    let frames = [
        Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).build(),
        Frame::tcp("fd00:3::100", 40000, "fd00:3::49", 80, SYN).build(),
        Frame::icmp_error("10.0.9.1", "10.0.3.49", 3, 4, 1400, &quoted).build(),
        udp.fragments(1232, 7)[0].clone(),
        udp.fragments(1232, 7)[1].clone(),
    ];
    for frame in &frames {
        let mut out = vec![0u8; frame.len() + 256];
        let run = dp
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(run.return_value, XDP_PASS);
        assert_eq!(&out[..run.data_size_out as usize], frame.as_slice());
    }
    let counters: BTreeMap<_, _> = dp
        .counters()
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(c, n)| (c.name(), n))
        .collect();
    assert_eq!(counters, BTreeMap::from([("passed", frames.len() as u64)]));
}

/// A frame is at least 60 bytes: a short IP packet is followed by the
/// link's padding, which its length field (IPv4 total length, IPv6
/// payload length) leaves out. Ports, TCP flags, extension headers and an
/// ICMP error's quote are read from the packet only: a packet too short
/// for them is malformed, whatever the padding holds (here, the headers
/// of a listener's packet).
#[test]
fn headers_past_the_ip_length_are_padding_not_ports() {
    let mut h = Harness::new(ONE_TARGET);
    // `frame` padded to 60 bytes, its IP length field (at `at`) set to
    // `len`.
    let padded = |frame: Frame, at: usize, len: u16| {
        let mut b = frame.build();
        b.resize(b.len().max(60), 0);
        b[at..at + 2].copy_from_slice(&len.to_be_bytes());
        b
    };
    let udp = || Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, b"");
    let syn = || Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN);
    let syn6 = || Frame::tcp("fd00:3::100", 40000, "fd00:3::49", 80, SYN);
    let quoted = Frame::tcp("10.0.3.49", 80, "10.0.3.100", 40000, ACK).build()[14..].to_vec();
    let error = || Frame::icmp_error("10.0.9.1", "10.0.3.49", 3, 4, 1400, &quoted);
    // The IPv4 total length is at 16, the IPv6 payload length at 18.
    let malformed = [
        // The 60-byte frame of an IP header alone, a UDP header to a
        // listener's port in its padding.
        ("udp in the padding", padded(udp(), 16, 20)),
        ("udp header cut by the total length", padded(udp(), 16, 27)),
        ("tcp up to its flags", padded(syn(), 16, 20 + 14)),
        ("tcp a byte short", padded(syn(), 16, 20 + 19)),
        ("ipv6 payload length 0", padded(syn6(), 18, 0)),
        ("ipv6 tcp a byte short", padded(syn6(), 18, 19)),
        (
            "ipv6 payload length short of an extension header",
            padded(
                syn6().with_ext_header(ExtHeader::options(ExtHeader::HOP_BY_HOP, 1)),
                18,
                4,
            ),
        ),
        ("icmp error quoting padding", padded(error(), 16, 20 + 8)),
        (
            "icmp error, its quote's ports cut",
            padded(error(), 16, 20 + 8 + 20 + 3),
        ),
    ];
    for (name, frame) in malformed {
        assert_eq!(frame.len(), frame.len().max(60));
        let o = h.check(name, &frame);
        assert_eq!((o.action, &o.output), (XDP_PASS, &frame), "{name}");
        assert_eq!(o.counters, [Counter::Malformed], "{name}");
    }
    // Lengths that cover the headers, the padding after them: forwarded.
    for (name, frame, mac) in [
        ("udp header exactly", padded(udp(), 16, 28), T12),
        ("tcp header exactly", padded(syn(), 16, 40), T11),
        ("ipv6 tcp header exactly", padded(syn6(), 18, 20), T13),
    ] {
        let o = h.check(name, &frame);
        assert_eq!(
            (o.action, o.output),
            (XDP_TX, rewritten(&frame, mac)),
            "{name}"
        );
    }
}

/// Listeners keep their ids whatever else changes (`lb_user::ids`). A
/// listener that leaves frees its id, which the next new listener takes
/// (the lowest free id), with statistics that start from zero; the flows of
/// the others keep their targets. The flow entries of the listener that
/// left still name its old id; when it comes back under another id, that
/// stale hint names another listener (another port): its flows must find
/// it by lookup and keep their targets.
#[test]
fn listener_changes_reach_established_flows() {
    let mut h = Harness::new(ONE_TARGET);
    let web = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).build();
    let web_ack = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, ACK).build();
    let dns = Frame::udp("10.0.3.100", 5353, "10.0.3.49", 53, b"query").build();
    let web6 = Frame::tcp("fd00:3::100", 40003, "fd00:3::49", 80, SYN).build();
    for (name, frame) in [("web", &web), ("dns", &dns), ("web6", &web6)] {
        assert_eq!(h.check(name, frame).action, XDP_TX, "{name}");
    }
    let id = |h: &Harness, name: &str| {
        h.plan
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.info.listener_id)
    };
    assert_eq!(
        ["web", "dns", "web6"].map(|n| id(&h, n)),
        [Some(1), Some(2), Some(3)]
    );
    let dns_before = h.dp.listener_stats(2).unwrap().packets;

    // Without `web`, and with `alt`, a listener on a new port of web's
    // group: alt takes web's id; dns and web6 keep theirs and their flows
    // keep their targets; web's flow is no longer ours.
    let alt_line =
        "  - { name: alt, vip: 10.0.3.49, protocol: tcp, port: 8080, target_group: web }\n";
    let web_line =
        "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }\n";
    h.reapply(
        &ONE_TARGET
            .replace(web_line, "")
            .replace("target_groups:", &format!("{alt_line}target_groups:")),
    );
    assert_eq!(
        ["web", "dns", "web6", "alt"].map(|n| id(&h, n)),
        [None, Some(2), Some(3), Some(1)]
    );
    for _ in 0..2 {
        let o = h.check("web, listener removed", &web_ack);
        assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Passed]));
        let o = h.check("dns, same id", &dns);
        assert_eq!(
            (o.action, o.target),
            (XDP_TX, Some(target("dns", "10.0.3.12")))
        );
        assert!(o.counters.contains(&Counter::FlowHit));
        let o = h.check("web6, same id", &web6);
        assert_eq!(
            (o.action, o.target),
            (XDP_TX, Some(target("web6", "fd00:3::13")))
        );
        assert!(o.counters.contains(&Counter::FlowHit));
    }
    assert_eq!(
        h.dp.listener_stats(2).unwrap().packets,
        dns_before + 2,
        "dns counts on under its id"
    );
    let alt = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 8080, SYN).build();
    let o = h.check("new listener port", &alt);
    assert_eq!((o.action, o.output), (XDP_TX, rewritten(&alt, T11)));
    assert_eq!(
        h.dp.listener_stats(1).unwrap().packets,
        1,
        "web's id starts from zero under alt"
    );

    // `web` back (alt moves to a group of its own: a group serves one
    // listener): web takes the next free id, 4. Its flow's entry still
    // names id 1, now alt's, on another port: the flow finds web by lookup,
    // keeps its target, is counted under 4, and its entry names 4 again.
    let alt_own = alt_line.replace("target_group: web", "target_group: alt");
    h.reapply(&format!(
        "{}  - {{ name: alt, protocol: tcp, table_size: 1021, targets: [ {{ ip: 10.0.3.14 }} ] }}\n",
        ONE_TARGET.replace("target_groups:", &format!("{alt_own}target_groups:"))
    ));
    assert_eq!(
        ["web", "dns", "web6", "alt"].map(|n| id(&h, n)),
        [Some(4), Some(2), Some(3), Some(1)]
    );
    let key = lb_common::FlowKey {
        family: lb_common::FAMILY_V4,
        proto: lb_common::PROTO_TCP,
        src_be: [u32::from_ne_bytes([10, 0, 3, 100]), 0, 0, 0],
        dst_be: [u32::from_ne_bytes([10, 0, 3, 49]), 0, 0, 0],
        src_port_be: 40000u16.to_be(),
        dst_port_be: 80u16.to_be(),
        ..Default::default()
    };
    let hint = |h: &Harness| h.dp.flow_entry(&key).unwrap().map(|e| e.listener_id);
    assert_eq!(hint(&h), Some(1), "a stale hint: alt's id");
    let o = h.check("web back, stale hint", &web_ack);
    assert_eq!(
        (o.action, o.target),
        (XDP_TX, Some(target("web", "10.0.3.11")))
    );
    assert!(o.counters.contains(&Counter::FlowHit), "{:?}", o.counters);
    assert_eq!(hint(&h), Some(4), "the hint follows the listener");
    assert_eq!(h.dp.listener_stats(4).unwrap().packets, 1);
    assert_eq!(
        h.dp.listener_stats(1).unwrap().packets,
        1,
        "alt's, kept with its id"
    );
}

const THREE_TARGETS: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: web
    protocol: tcp
    table_size: 65537
    targets:
      - { ip: 10.0.3.11, weight: 256 }
      - { ip: 10.0.3.12, weight: 256 }
      - { ip: 10.0.3.13, weight: 128 }
"#;

#[test]
fn many_flows_follow_the_model_and_the_weights() {
    let mut h = Harness::new(THREE_TARGETS);
    let mut per_target = BTreeMap::<TargetKey, u32>::new();
    for i in 0..2000u16 {
        let frame = Frame::tcp("10.0.3.100", 10000 + i, "10.0.3.49", 80, SYN).build();
        let o = h.check("flow", &frame);
        assert_eq!(o.action, XDP_TX);
        *per_target.entry(o.target.unwrap()).or_default() += 1;
    }
    // 2000 flows at 0.4/0.4/0.2: sd = sqrt(2000 * 0.4 * 0.6) ~ 21.9 and
    // sqrt(2000 * 0.2 * 0.8) ~ 17.9; 5 sd bands.
    let got: Vec<u32> = per_target.values().copied().collect();
    assert!(
        got[0].abs_diff(800) < 110 && got[1].abs_diff(800) < 110 && got[2].abs_diff(400) < 90,
        "{got:?}"
    );
}

#[test]
fn flows_stay_pinned_across_policy_changes_until_their_target_goes() {
    let mut h = Harness::new(THREE_TARGETS);
    let frames: Vec<Vec<u8>> = (0..300u16)
        .map(|i| Frame::tcp("10.0.3.100", 20000 + i, "10.0.3.49", 80, SYN).build())
        .collect();
    let first: Vec<TargetKey> = frames
        .iter()
        .map(|f| h.check("first", f).target.unwrap())
        .collect();
    let [t11, t12, t13] = ["10.0.3.11", "10.0.3.12", "10.0.3.13"].map(|ip| target("web", ip));
    assert!(first.contains(&t11) && first.contains(&t12) && first.contains(&t13));

    // Re-weighting changes the table, not the pinned flows.
    h.reapply(
        &THREE_TARGETS
            .replace("weight: 128", "weight: 1")
            .replace("10.0.3.12, weight: 256", "10.0.3.12, weight: 10"),
    );
    for (f, t) in frames.iter().zip(&first) {
        let o = h.check("reweighted", f);
        assert_eq!(o.target.as_ref(), Some(t), "a pinned flow moved");
    }

    // Removing 10.0.3.13 re-selects only its flows.
    h.reapply(&THREE_TARGETS.replace("      - { ip: 10.0.3.13, weight: 128 }\n", ""));
    for (f, t) in frames.iter().zip(&first) {
        let o = h.check("removed", f);
        assert_eq!(o.action, XDP_TX);
        if *t == t13 {
            assert!(o.counters.contains(&Counter::FlowReselected));
            assert_ne!(o.target.as_ref(), Some(&t13));
        } else {
            assert_eq!(o.target.as_ref(), Some(t));
        }
    }
}

/// A target that leaves the policy is retired: it keeps its id (a new
/// target takes another) and its statistics, and its flows are re-selected;
/// back before its id is released, it counts on under the same id. Once a
/// sweep finds nothing naming it, the id is released: its statistics are
/// zeroed, and the next new target takes it, from zero.
#[test]
fn retired_targets_keep_their_ids_and_statistics_until_released() {
    let mut h = Harness::new(THREE_TARGETS);
    let t13 = target("web", "10.0.3.13");
    let frames: Vec<Vec<u8>> = (0..60u16)
        .map(|i| Frame::tcp("10.0.3.100", 21000 + i, "10.0.3.49", 80, SYN).build())
        .collect();
    let first: Vec<TargetKey> = frames
        .iter()
        .map(|f| h.check("first", f).target.unwrap())
        .collect();
    assert!(first.contains(&t13));
    let stats_13 = h.dp.target_stats(3).unwrap();
    assert!(stats_13.packets > 0);

    // Removed: retired under id 3; a new target takes 4.
    let without_13 = THREE_TARGETS.replace("      - { ip: 10.0.3.13, weight: 128 }\n", "");
    let with_14 = "      - { ip: 10.0.3.14, weight: 128 }\n";
    h.reapply(&format!("{without_13}{with_14}"));
    assert_eq!(h.target_id(&t13), Some(3));
    assert_eq!(h.target_id(&target("web", "10.0.3.14")), Some(4));
    assert_eq!(
        h.dp.target_stats(3).unwrap(),
        stats_13,
        "kept while retired"
    );
    // Its flows are chosen again; the others stay.
    for (f, t) in frames.iter().zip(&first) {
        let o = h.check("13 retired", f);
        assert_eq!(o.counters.contains(&Counter::FlowReselected), *t == t13);
        assert_eq!(o.target.as_ref() == Some(t), *t != t13);
    }

    // Back: the same id, and its statistics count on.
    h.reapply(THREE_TARGETS);
    assert_eq!(h.target_id(&t13), Some(3));
    let new_13 = (0..400u16)
        .map(|i| Frame::tcp("10.0.3.101", 21000 + i, "10.0.3.49", 80, SYN).build())
        .find(|f| h.check("back", f).target.as_ref() == Some(&t13))
        .expect("a new flow on 10.0.3.13");
    assert_eq!(
        h.dp.target_stats(3).unwrap().packets,
        stats_13.packets + 1,
        "counted on"
    );

    // Removed again; once no flow entry or sticky session names it (its
    // flow re-selected), a sweep releases it. (The ids named are read here
    // as `lb run`'s sweep reports them; the sweeper itself would also
    // delete the entries of retired targets, which the model does not do.)
    h.reapply(&without_13);
    h.check("13 retired again", &new_13);
    let flows =
        h.dp.flow_entries()
            .unwrap()
            .into_iter()
            .map(|e| e.word.target_id());
    let sessions =
        h.dp.sticky_sessions()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.target_id);
    let named: std::collections::BTreeSet<u32> = flows.chain(sessions).collect();
    assert!(!named.contains(&3), "{named:?}");
    let mut ids = (*h.plan.ids).clone();
    let swept_from = std::time::Instant::now() + lb_user::ids::RELEASE_GRACE;
    // 10.0.3.14, retired too, goes as well unless flows re-selected
    // from 10.0.3.13 went to it.
    let want: Vec<u32> = if named.contains(&4) {
        vec![3]
    } else {
        vec![3, 4]
    };
    assert_eq!(ids.release(&named, swept_from), want);
    let released = lb_user::plan::MapPlan {
        ids: std::sync::Arc::new(ids),
        ..h.plan.clone()
    };
    h.apply_plan(released);
    assert_eq!(h.target_id(&t13), None);
    assert_eq!(h.dp.target_stats(3).unwrap(), Default::default(), "zeroed");

    // The next new target takes id 3, from zero (the harness compares its
    // statistics, by identity, after every frame).
    let t15 = target("web", "10.0.3.15");
    h.reapply(&without_13.replace("10.0.3.12, weight: 256", "10.0.3.15, weight: 256"));
    assert_eq!(h.target_id(&t15), Some(3));
    let on_15 = (0..400u16)
        .map(|i| Frame::tcp("10.0.3.102", 21000 + i, "10.0.3.49", 80, SYN).build())
        .find(|f| h.check("15", f).target.as_ref() == Some(&t15))
        .expect("a new flow on 10.0.3.15");
    h.check("15 again", &on_15);
    assert_eq!(h.dp.target_stats(3).unwrap().packets, 2);
}

#[test]
fn weight_zero_takes_no_new_flows_but_keeps_its_own() {
    let mut h = Harness::new(THREE_TARGETS);
    let frames: Vec<Vec<u8>> = (0..200u16)
        .map(|i| Frame::tcp("10.0.3.100", 30000 + i, "10.0.3.49", 80, SYN).build())
        .collect();
    let first: Vec<TargetKey> = frames
        .iter()
        .map(|f| h.check("first", f).target.unwrap())
        .collect();
    let t13 = target("web", "10.0.3.13");
    assert!(first.contains(&t13));
    h.reapply(&THREE_TARGETS.replace("weight: 128", "weight: 0"));
    for (f, t) in frames.iter().zip(&first) {
        assert_eq!(h.check("existing", f).target.as_ref(), Some(t));
    }
    for i in 0..300u16 {
        let f = Frame::tcp("10.0.3.101", 30000 + i, "10.0.3.49", 80, SYN).build();
        assert_ne!(h.check("new", &f).target, Some(t13.clone()));
    }
}

/// Group tables are stored narrow (16-bit member numbers) when that is
/// smaller, else wide (`lb_common::table`). A 1021-slot table of 3 targets
/// is narrow, one of 600 targets wide; flows through either follow the
/// model, which builds its own tables of targets.
#[test]
fn narrow_and_wide_group_tables_choose_alike() {
    use lb_common::table::WIDE;
    let targets = |third: u8| {
        (0..600u32)
            // A MAC of its own for each (`harness::mac_of`).
            .map(|i| format!("      - {{ ip: 10.{third}.{}.{} }}\n", i / 86, 1 + i % 86))
            .collect::<String>()
    };
    let yaml = format!(
        "listeners:
  - {{ name: few, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: few }}
  - {{ name: many, vip: 10.0.3.49, protocol: tcp, port: 81, target_group: many }}
  - {{ name: many-lc, vip: 10.0.3.49, protocol: tcp, port: 82, target_group: many-lc }}
target_groups:
  - name: few
    protocol: tcp
    table_size: 1021
    targets: [ {{ ip: 10.0.3.11 }}, {{ ip: 10.0.3.12 }}, {{ ip: 10.0.3.13, weight: 50 }} ]
  - name: many
    protocol: tcp
    table_size: 1021
    targets:
{}  - name: many-lc
    protocol: tcp
    table_size: 1021
    algorithm: least_connections
    targets:
{}",
        targets(5),
        targets(6)
    );
    let mut h = Harness::new(&yaml);
    let headers: Vec<u32> = h.plan.groups.iter().map(|g| g.table.words()[1]).collect();
    assert_eq!(headers, [3, WIDE, WIDE], "few: narrow; many: wide");
    // Least connections: few flows, as the model's set of choices over 600
    // targets takes it about 2 s a flow in a debug build.
    for (port, flows) in [(80u16, 300u16), (81, 300), (82, 3)] {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..flows {
            let syn = Frame::tcp("10.0.4.1", 20000 + i, "10.0.3.49", port, SYN).build();
            let o = h.check(&format!("port {port}, flow {i}"), &syn);
            assert_eq!(o.action, XDP_TX);
            seen.insert(o.output[..6].to_vec());
        }
        // Hash: 300 flows over 600 equal targets reach about 236 of them;
        // least connections gives each of its flows another target.
        let least = if port == 81 { 200 } else { 3 };
        assert!(seen.len() >= least, "port {port}: {} targets", seen.len());
    }
}

#[test]
fn empty_group_fails_closed() {
    let mut h = Harness::new(
        "listeners: [ { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web } ]\n\
         target_groups: [ { name: web, protocol: tcp, table_size: 1021, targets: [] } ]\n",
    );
    let frame = Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, SYN).build();
    let o = h.check("empty", &frame);
    assert_eq!(
        (o.action, o.counters),
        (XDP_DROP, vec![Counter::NoTarget, Counter::Dropped])
    );
}

#[test]
fn affinity_modes_hash_the_right_fields() {
    for (affinity, same_client_same_target) in [
        ("five_tuple", false),
        ("three_tuple", true),
        ("two_tuple", true),
        ("source_ip", true),
    ] {
        let algo = if affinity == "source_ip" {
            "algorithm: source_ip"
        } else {
            "algorithm: hash"
        };
        let aff = if affinity == "source_ip" {
            String::new()
        } else {
            format!("affinity: {affinity}")
        };
        let yaml = THREE_TARGETS.replace(
            "protocol: tcp\n    table_size",
            &format!("protocol: tcp\n    {algo}\n    {aff}\n    table_size"),
        );
        let mut h = Harness::new(&yaml);
        let targets: std::collections::BTreeSet<TargetKey> = (0..60u16)
            .map(|i| {
                h.check(
                    affinity,
                    &Frame::tcp("10.0.3.100", 40000 + i, "10.0.3.49", 80, SYN).build(),
                )
                .target
                .unwrap()
            })
            .collect();
        assert_eq!(
            targets.len() == 1,
            same_client_same_target,
            "{affinity}: {targets:?}"
        );
        // Several clients spread.
        let clients: std::collections::BTreeSet<TargetKey> = (0..40u8)
            .map(|i| {
                h.check(
                    affinity,
                    &Frame::tcp(&format!("10.0.4.{i}"), 40000, "10.0.3.49", 80, SYN).build(),
                )
                .target
                .unwrap()
            })
            .collect();
        assert!(clients.len() > 1, "{affinity}: clients all on one target");
    }
}

/// Short flow timeouts, so that tests can step over them.
const SHORT_TIMEOUTS: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
target_groups:
  - name: web
    protocol: tcp
    table_size: 65537
    flow_idle_timeout_s: 30
    flow_fin_timeout_s: 5
    targets:
      - { ip: 10.0.3.11, weight: 256 }
      - { ip: 10.0.3.12, weight: 256 }
      - { ip: 10.0.3.13, weight: 128 }
  - { name: dns, protocol: udp, table_size: 1021, flow_idle_timeout_s: 20, targets: [ { ip: 10.0.3.14 } ] }
"#;

fn total(active: &BTreeMap<TargetKey, i64>) -> i64 {
    active.values().sum()
}

#[test]
fn syn_counts_a_flow_and_fin_or_rst_uncount_it_once() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let a = |flags| Frame::tcp("10.0.3.100", 41000, "10.0.3.49", 80, flags).build();
    let b = |flags| Frame::tcp("10.0.3.100", 41001, "10.0.3.49", 80, flags).build();

    let t = h.check("a syn", &a(SYN)).target.unwrap();
    assert_eq!(h.active()[&t], 1);
    h.check("a ack", &a(ACK));
    h.check("a data", &a(ACK | PSH));
    assert_eq!(total(&h.active()), 1);
    let o = h.check("a fin", &a(FIN | ACK));
    assert_eq!(o.target, Some(t), "the FIN follows the flow");
    assert_eq!(total(&h.active()), 0, "uncounted at the FIN");
    h.check("a fin again", &a(FIN | ACK));
    h.check("a last ack", &a(ACK));
    assert_eq!(total(&h.active()), 0, "uncounted once");

    let tb = h.check("b syn", &b(SYN)).target.unwrap();
    assert_eq!(h.active()[&tb], 1);
    let o = h.check("b rst", &b(RST));
    assert_eq!(o.target, Some(tb));
    h.check("b rst again", &b(RST | ACK));
    assert_eq!(total(&h.active()), 0, "uncounted once at the RST");

    // The client reuses a's port: its SYN starts a new, counted flow.
    let o = h.check("a reused", &a(SYN));
    assert!(o.counters.contains(&Counter::NewFlow), "{:?}", o.counters);
    assert_eq!(total(&h.active()), 1);
    // A repeated SYN of a live flow is the same flow.
    let o = h.check("a syn retransmitted", &a(SYN));
    assert!(o.counters.contains(&Counter::FlowHit));
    assert_eq!(total(&h.active()), 1);
}

#[test]
fn flows_expire_after_their_idle_or_fin_timeout() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let frames: Vec<(Vec<u8>, Vec<u8>)> = (0..120u16)
        .map(|i| {
            let f = |flags| Frame::tcp("10.0.3.100", 42000 + i, "10.0.3.49", 80, flags).build();
            (f(SYN), f(ACK))
        })
        .collect();
    let first: Vec<TargetKey> = frames
        .iter()
        .map(|(syn, _)| h.check("syn", syn).target.unwrap())
        .collect();
    let t13 = target("web", "10.0.3.13");
    assert!(first.contains(&t13));
    assert_eq!(total(&h.active()), 120);

    // 10.0.3.13 takes no new flows; its flows stay while they go on.
    h.reapply(&SHORT_TIMEOUTS.replace("weight: 128", "weight: 0"));
    h.advance(25);
    for ((_, ack), t) in frames.iter().zip(&first) {
        let o = h.check("ack at 25 s", ack);
        assert_eq!(o.target.as_ref(), Some(t));
        assert!(o.counters.contains(&Counter::FlowHit));
    }
    // 25 s after their last packet they are still alive (idle timeout 30 s):
    // the ACKs above refreshed them.
    h.advance(25);
    for (_, ack) in &frames {
        assert!(
            h.check("ack at 50 s", ack)
                .counters
                .contains(&Counter::FlowHit)
        );
    }
    // Silent for 35 s: ended. The next packet is a new flow, by hash, so
    // never 10.0.3.13 now.
    h.advance(35);
    for (_, ack) in &frames {
        let o = h.check("ack after idle timeout", ack);
        assert!(o.counters.contains(&Counter::NewFlow), "{:?}", o.counters);
        assert_ne!(o.target.as_ref(), Some(&t13));
    }
    assert_eq!(h.active().get(&t13), Some(&0));
    assert_eq!(total(&h.active()), 120);

    // After the client's FIN, the FIN timeout (5 s) applies.
    let fin = |i: u16| Frame::tcp("10.0.3.100", 42000 + i, "10.0.3.49", 80, FIN | ACK).build();
    h.check("fin 0", &fin(0));
    h.check("fin 1", &fin(1));
    assert_eq!(total(&h.active()), 118);
    h.advance(3);
    assert!(
        h.check("ack 3 s after fin", &frames[0].1)
            .counters
            .contains(&Counter::FlowHit)
    );
    h.advance(8);
    let o = h.check("ack 8 s after fin", &frames[1].1);
    assert!(o.counters.contains(&Counter::NewFlow), "{:?}", o.counters);
    assert_eq!(total(&h.active()), 119);

    // UDP: its group's idle timeout (20 s).
    let dns = Frame::udp("10.0.3.100", 5353, "10.0.3.49", 53, b"q").build();
    h.check("udp", &dns);
    h.advance(15);
    assert!(
        h.check("udp at 15 s", &dns)
            .counters
            .contains(&Counter::FlowHit)
    );
    h.advance(25);
    assert!(
        h.check("udp at 40 s", &dns)
            .counters
            .contains(&Counter::NewFlow)
    );
}

/// A TCP packet that is not a SYN and has no entry (a connection another
/// instance behind ECMP started, or a spoofed ACK) goes to the group's hash
/// target whatever the algorithm, and is remembered in an empty entry,
/// uncounted: its next packet counts it. Remembered, it keeps its target
/// when a target joins the group and the hash moves its slot.
#[test]
fn tcp_packets_that_miss_the_flow_table_go_to_the_hash_target() {
    for algorithm in ["hash", "source_ip", "round_robin", "least_connections"] {
        let yaml = SHORT_TIMEOUTS.replace(
            "    protocol: tcp\n    table_size: 65537",
            &format!("    protocol: tcp\n    algorithm: {algorithm}\n    table_size: 65537"),
        );
        let mut h = Harness::new(&yaml);
        // Clients of many addresses, for `source_ip`'s hash.
        let ack = |i: u16| {
            let src = format!("10.1.0.{}", i + 1);
            Frame::tcp(&src, 43000 + i, "10.0.3.49", 80, ACK).build()
        };
        let mut first = Vec::new();
        for i in 0..100u16 {
            let o = h.check("ack without entry", &ack(i));
            // The target of the group table's slot for the flow's hash, as
            // the model computes both (its own hash and table).
            let flow = lb_tests::model::parse(&ack(i)).unwrap().0;
            let want = h.model.hash_target("web", &flow);
            assert!(want.is_some());
            assert_eq!(o.target, want, "{algorithm}");
            assert_eq!(
                o.counters,
                [Counter::FlowMissByHash, Counter::Forwarded],
                "{algorithm}"
            );
            assert!(!o.new_flow);
            first.push(o.target.unwrap());
        }
        // Remembered (the table is nearly empty), not counted: a packet
        // seen once is no connection yet.
        assert_eq!(h.dp.flow_entries().expect("entries").len(), 100);
        assert_eq!(total(&h.active()), 0, "{algorithm}");
        // A target joins: about a quarter of the slots move to it, but each
        // flow goes on to its first target, and its next packet counts it.
        h.reapply(&yaml.replace(
            "      - { ip: 10.0.3.13, weight: 128 }\n",
            "      - { ip: 10.0.3.13, weight: 128 }\n      - { ip: 10.0.3.15, weight: 256 }\n",
        ));
        let mut moved = 0;
        for (i, target) in first.iter().enumerate() {
            let flow = lb_tests::model::parse(&ack(i as u16)).unwrap().0;
            moved += usize::from(h.model.hash_target("web", &flow).as_ref() != Some(target));
            let o = h.check("ack again", &ack(i as u16));
            assert_eq!(o.target.as_ref(), Some(target), "{algorithm}: flow {i}");
            assert_eq!(o.counters, [Counter::FlowHit, Counter::Forwarded]);
        }
        assert!(moved > 0, "{algorithm}: the new target takes some slots");
        assert_eq!(total(&h.active()), 100, "{algorithm}");
    }
}

/// Such a packet takes no flow's entry: where its two buckets are full
/// (of established flows, or of flows seen once), it is forwarded by the
/// hash and remembered nowhere.
#[test]
fn a_tcp_miss_evicts_nobody() {
    let mut h = Harness::with_options(SHORT_TIMEOUTS, &Default::default());
    for flags in [flags::COUNTED | flags::AGAIN, flags::COUNTED] {
        fill_table(&h, flags);
        let entries = h.dp.flow_entries().expect("entries");
        for i in 0..20u16 {
            let ack = Frame::tcp("10.0.3.100", 46000 + i, "10.0.3.49", 80, ACK).build();
            let (action, _) = h.run(&ack);
            assert_eq!(action, XDP_TX);
        }
        assert_eq!(h.dp.flow_entries().expect("entries"), entries, "{flags:#x}");
    }
}

#[test]
fn sweeper_deletes_ended_flows_and_counts_stay_exact() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    for i in 0..50u16 {
        h.check(
            "syn",
            &Frame::tcp("10.0.3.100", 44000 + i, "10.0.3.49", 80, SYN).build(),
        );
    }
    for i in 0..10u16 {
        h.check(
            "fin",
            &Frame::tcp("10.0.3.100", 44000 + i, "10.0.3.49", 80, FIN | ACK).build(),
        );
    }
    let rules = |h: &Harness| lb_user::flows::Rules::of(&h.plan);
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!((r.entries, r.ended, r.deleted), (50, 0, 0), "{r:?}");
    assert_eq!(r.active.values().sum::<i64>(), 40);
    assert_eq!(total(&h.active()), 40);

    // Past the FIN timeout: the 10 finished flows go (uncounted already).
    h.advance(10);
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!((r.entries, r.deleted), (50, 10), "{r:?}");
    assert_eq!(total(&h.active()), 40);
    // Past the idle timeout: the others end silently; the sweeper deletes
    // them and takes each out of its target's count, exactly once.
    h.advance(40);
    assert_eq!(total(&h.active()), 40, "the data plane saw no packet");
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!((r.entries, r.deleted), (40, 40), "{r:?}");
    assert_eq!(total(&h.active()), 0);
    assert_eq!(sweeper.sweep(&rules(&h)).unwrap().entries, 0);
}

/// A sweep reports the targets flows name (a drain lasts while its target
/// is among them) apart from those that sticky sessions hold too (a
/// retired id is released only once neither names it): a client's session
/// holds its target's id after the client's flow ended, not after the
/// session expired, and never holds a drain.
#[test]
fn sticky_sessions_hold_ids_while_they_last_but_never_a_drain() {
    let yaml = r"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: web
    protocol: tcp
    algorithm: round_robin
    sticky_session: { duration_s: 20 }
    flow_fin_timeout_s: 5
    targets:
      - { ip: 10.0.3.11 }
      - { ip: 10.0.3.12 }
";
    let mut h = Harness::new(yaml);
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    let rules = |h: &Harness| lb_user::flows::Rules::of(&h.plan);
    let syn = Frame::tcp("10.0.3.100", 47000, "10.0.3.49", 80, SYN).build();
    let t = h.check("syn", &syn).target.expect("a target");
    let id = h.target_id(&t).expect("its id");
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert!(r.named.contains(&id) && r.held.contains(&id), "{r:?}");

    // The flow ends (FIN, then its timeout); the session lasts 20 s.
    h.check(
        "fin",
        &Frame::tcp("10.0.3.100", 47000, "10.0.3.49", 80, FIN | ACK).build(),
    );
    h.advance(10);
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!(r.deleted, 1, "{r:?}");
    assert!(!r.named.contains(&id), "no flow names it: {r:?}");
    assert!(r.held.contains(&id), "its session holds it: {r:?}");

    // The session expired: nothing holds the id.
    h.advance(15);
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert!(r.named.is_empty() && r.held.is_empty(), "{r:?}");
}

/// CPUs read the clock at different moments, so an entry's last-seen time
/// may be a little later than the `now` of the CPU (or sweep) that reads
/// it. Such a flow is young, not 52 days old: its next packet hits it, the
/// sweeper keeps it, and a new flow does not evict it as if it were idle.
#[test]
fn a_last_seen_time_later_than_now_is_a_young_flow() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    let (listener, target) = web_ids(&h);
    let port = 45500;
    let key = web_key([10, 0, 3, 100], port);
    let place = h.dp.flow_place(&key);
    let slots = candidates(&place);
    let later = now_units(&h).wrapping_add(3);
    let established = flags::COUNTED | flags::AGAIN;
    // The flow in its first candidate; established flows seen "later" in
    // the seven others.
    h.dp.put_flow_entries(slots.iter().enumerate().map(|(k, &(b, w))| {
        let t = if k == 0 {
            place.tag
        } else {
            tag(2000 + k as u64)
        };
        (b, w, Word::new(t, target, established), later, listener)
    }))
    .unwrap();
    let seen = run_raw(
        &mut h,
        &Frame::tcp("10.0.3.100", port, "10.0.3.49", 80, ACK).build(),
    );
    assert_eq!(seen.action, XDP_TX);
    assert!(seen.rose.contains(&Counter::FlowHit), "{:?}", seen.rose);
    let r = sweeper.sweep(&lb_user::flows::Rules::of(&h.plan)).unwrap();
    assert_eq!((r.entries, r.ended, r.deleted), (8, 0, 0), "{r:?}");
    // A new flow whose candidates all hold established flows seen "later"
    // finds only flows in use: it evicts none.
    let p = 45600;
    let newcomer = h.dp.flow_place(&web_key([10, 0, 3, 101], p));
    let slots = candidates(&newcomer);
    h.dp.put_flow_entries(slots.iter().enumerate().map(|(k, &(b, w))| {
        (
            b,
            w,
            Word::new(tag(3000 + k as u64), target, established),
            later,
            listener,
        )
    }))
    .unwrap();
    let before = words(&h, &slots);
    let seen = run_raw(
        &mut h,
        &Frame::tcp("10.0.3.101", p, "10.0.3.49", 80, SYN).build(),
    );
    assert_eq!(seen.action, XDP_TX);
    assert!(
        seen.rose.contains(&Counter::FlowInsertFailed),
        "{:?}",
        seen.rose
    );
    assert_eq!(words(&h, &slots), before, "no flow in use evicted");
}

/// The web listener's id and its first target's, in `h`'s plan.
fn web_ids(h: &Harness) -> (u16, u32) {
    let listener = h.plan.listeners[0].info.listener_id as u16;
    let target = h.plan.targets.iter().find(|t| t.group == "web").unwrap().id;
    (listener, target)
}

/// Data-plane time now, in the flow table's units.
fn now_units(h: &Harness) -> u32 {
    let clock = h.dp.clock().now_ns().expect("clock");
    flow_table::time_units(clock + h.plan.config.time_offset_ns)
}

/// Puts a flow of the `web` listener's first target with `flags`, seen
/// now, in every entry of the table (behind the model's back); returns
/// that target's id.
fn fill_table(h: &Harness, flags: u8) -> u32 {
    let (listener, target) = web_ids(h);
    let (buckets, _) = h.dp.flow_table_layout();
    let now = now_units(h);
    let word = |i: u64| Word::new(tag(i), target, flags);
    h.dp.put_flow_entries((0..buckets).flat_map(|b| {
        (0..flow_table::WAYS).map(move |w| {
            let i = b as u64 * flow_table::WAYS as u64 + w as u64;
            (b, w, word(i), now, listener)
        })
    }))
    .unwrap();
    target
}

/// A tag no real flow of these tests has (they are random 40-bit values).
fn tag(i: u64) -> u64 {
    (i << 25) | (1 << 24)
}

/// A full flow table (every entry of the default size's table in use) is
/// swept in bounded time, and when every flow has ended each is deleted
/// and uncounted exactly once. The figures are printed (`--nocapture`).
#[test]
fn sweeping_a_full_flow_table_takes_bounded_time() {
    let mut h = Harness::with_options(SHORT_TIMEOUTS, &Default::default());
    let target = fill_table(&h, flags::COUNTED | flags::AGAIN);
    let (buckets, _) = h.dp.flow_table_layout();
    let entries = buckets as u64 * flow_table::WAYS as u64;
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    let live = sweeper.sweep(&lb_user::flows::Rules::of(&h.plan)).unwrap();
    eprintln!(
        "full table: {} entries in {buckets} buckets (memory of every map: {} bytes); sweep {:.0} ms",
        live.entries,
        h.dp.map_memory().unwrap_or(0),
        live.took.as_secs_f64() * 1e3
    );
    assert_eq!(live.entries, entries);
    assert_eq!(h.dp.active_flows(target), entries as i64);
    h.advance(60);
    let ended = sweeper.sweep(&lb_user::flows::Rules::of(&h.plan)).unwrap();
    eprintln!(
        "all ended: {} deleted in {:.0} ms",
        ended.deleted,
        ended.took.as_secs_f64() * 1e3
    );
    assert_eq!(ended.deleted, entries);
    assert_eq!(h.dp.active_flows(target), 0, "each uncounted once");
    // Generous bounds for a loaded 2-core machine; the figures are printed.
    assert!(live.took.as_secs() < 10 && ended.took.as_secs() < 30);
}

/// An entry deleted behind the program's back is a miss: the next packet,
/// a TCP packet that is not a SYN, goes by hash and is remembered again,
/// counted from the packet after it; the deletion took the lost flow out
/// of its target's count.
#[test]
fn a_deleted_flow_is_a_miss_and_leaves_the_count() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let frame = |flags| Frame::tcp("10.0.3.100", 45000, "10.0.3.49", 80, flags).build();
    h.check("syn", &frame(SYN));
    let key = web_key([10, 0, 3, 100], 45000);
    h.delete_flow(&key).unwrap();
    assert!(!h.dp.remove_flow(&key).unwrap(), "gone");
    assert_eq!(total(&h.active()), 0);
    let o = h.check("ack after deletion", &frame(ACK));
    assert_eq!(o.counters, [Counter::FlowMissByHash, Counter::Forwarded]);
    assert_eq!(total(&h.active()), 0);
    let o = h.check("the next ack", &frame(ACK));
    assert_eq!(o.counters, [Counter::FlowHit, Counter::Forwarded]);
    assert_eq!(total(&h.active()), 1);
    h.check("fin", &frame(FIN | ACK));
    assert_eq!(total(&h.active()), 0, "uncounted once");
    assert!(h.dp.remove_flow(&key).unwrap(), "remembered");
}

/// An IPv4 TCP flow from `src:port` to the SHORT_TIMEOUTS web listener.
fn web_key(src: [u8; 4], port: u16) -> lb_common::FlowKey {
    lb_common::FlowKey {
        family: lb_common::FAMILY_V4,
        proto: lb_common::PROTO_TCP,
        src_be: [u32::from_ne_bytes(src), 0, 0, 0],
        dst_be: [u32::from_ne_bytes([10, 0, 3, 49]), 0, 0, 0],
        src_port_be: port.to_be(),
        dst_port_be: 80u16.to_be(),
        ..Default::default()
    }
}

/// What one frame did, seen from outside: verdict, destination MAC, and
/// the counters that rose.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    action: u32,
    mac: [u8; 6],
    rose: Vec<Counter>,
}

/// Runs `frame` through the program only (no model: these steps leave the
/// model's world on purpose).
fn run_raw(h: &mut Harness, frame: &[u8]) -> Seen {
    let counters = |h: &Harness| h.dp.counters().unwrap();
    let before = counters(h);
    let (action, out) = h.run(frame);
    let after = counters(h);
    Seen {
        action,
        mac: out[..6].try_into().unwrap(),
        rose: after
            .iter()
            .zip(&before)
            .filter(|((_, a), (_, b))| a > b)
            .map(|((c, _), _)| *c)
            .collect(),
    }
}

/// The eight entries a flow may take, as (bucket, way).
fn candidates(place: &flow_table::Place) -> Vec<(u32, usize)> {
    [place.first, place.second]
        .into_iter()
        .flat_map(|b| (0..flow_table::WAYS).map(move |w| (b, w)))
        .collect()
}

/// The words of `slots`, as the table holds them.
fn words(h: &Harness, slots: &[(u32, usize)]) -> Vec<u64> {
    let table = h.dp.flow_table().unwrap();
    slots
        .iter()
        .map(|&(b, w)| table.entry(b, w).map_or(0, |e| e.word.0))
        .collect()
}

/// A new flow whose two buckets are full takes the entry least worth
/// keeping: one the client ended (FIN), else one seen only once, else an
/// established one idle longer than the protection; when every candidate
/// is an established flow in use, it goes unremembered (counted) and the
/// table is unchanged. An evicted counted flow leaves its target's count.
#[test]
fn a_new_flow_takes_the_entry_least_worth_keeping() {
    let established = flags::COUNTED | flags::AGAIN;
    // (what, flags of the eight entries, idle seconds of each, which is taken)
    type Case = (&'static str, [u8; 8], [u32; 8], Option<usize>);
    let cases: [Case; 4] = [
        (
            "a flow seen once",
            [
                established,
                established,
                established,
                flags::COUNTED,
                established,
                established,
                established,
                established,
            ],
            [0, 0, 0, 0, 0, 0, 0, 0],
            Some(3),
        ),
        (
            "a flow the client ended before one seen once",
            [
                established,
                flags::COUNTED,
                established,
                established,
                established,
                flags::FIN,
                established,
                established,
            ],
            [0, 5, 0, 0, 0, 0, 0, 0],
            Some(5),
        ),
        (
            "an established flow idle past the protection",
            [established; 8],
            [1, 2, 3, 10, 4, 0, 0, 0],
            Some(3),
        ),
        (
            "established flows in use: unremembered",
            [established; 8],
            [1, 2, 3, 4, 5, 6, 7, 8],
            None,
        ),
    ];
    for (i, (what, entry_flags, idle_s, taken)) in cases.into_iter().enumerate() {
        let mut h = Harness::new(SHORT_TIMEOUTS);
        let (listener, target) = web_ids(&h);
        let port = 46000 + i as u16;
        let place = h.dp.flow_place(&web_key([10, 0, 3, 100], port));
        let slots = candidates(&place);
        let now = now_units(&h);
        let second = (1_000_000_000u64 >> flow_table::TIME_SHIFT) as u32;
        h.dp.put_flow_entries(slots.iter().enumerate().map(|(k, &(b, w))| {
            let word = Word::new(tag(1000 + k as u64), target, entry_flags[k]);
            (b, w, word, now.wrapping_sub(idle_s[k] * second), listener)
        }))
        .unwrap();
        let before = words(&h, &slots);
        let counted_before = h.dp.active_flows(target);
        let seen = run_raw(
            &mut h,
            &Frame::tcp("10.0.3.100", port, "10.0.3.49", 80, SYN).build(),
        );
        assert_eq!(seen.action, XDP_TX, "{what}");
        let after = words(&h, &slots);
        let changed: Vec<usize> = (0..8).filter(|&k| before[k] != after[k]).collect();
        match taken {
            Some(k) => {
                assert_eq!(changed, [k], "{what}");
                assert_eq!(Word(after[k]).tag(), place.tag, "{what}");
                assert!(
                    seen.rose.contains(&Counter::FlowEvicted),
                    "{what}: {:?}",
                    seen.rose
                );
                let evicted_counted = entry_flags[k] & flags::COUNTED != 0;
                let new_on_target = u64::from(Word(after[k]).target_id() == target) as i64;
                assert_eq!(
                    h.dp.active_flows(target),
                    counted_before - i64::from(evicted_counted) + new_on_target,
                    "{what}: the evicted flow uncounted, the new one counted"
                );
            }
            None => {
                assert!(changed.is_empty(), "{what}: {changed:?}");
                assert!(
                    seen.rose.contains(&Counter::FlowInsertFailed),
                    "{what}: {:?}",
                    seen.rose
                );
                assert!(
                    h.dp.flow_entry(&web_key([10, 0, 3, 100], port))
                        .unwrap()
                        .is_none()
                );
            }
        }
    }
}

/// A flood of one-packet flows (SYNs from 16,384 sources, eight times the
/// table's entries) does not move an established flow: each one's next
/// packet still hits its entry.
#[test]
fn a_syn_flood_leaves_established_flows_in_place() {
    let mut h = Harness::with_options(
        SHORT_TIMEOUTS,
        &lb_user::dataplane::LoadOptions {
            flow_table_size: 1024,
        },
    );
    let (buckets, _) = h.dp.flow_table_layout();
    let entries = buckets as usize * flow_table::WAYS;
    let established = entries / 4;
    let flow = |i: usize, flags| {
        Frame::tcp(
            &format!("10.5.{}.{}", i / 250, i % 250 + 1),
            1000,
            "10.0.3.49",
            80,
            flags,
        )
        .build()
    };
    let mut targets = Vec::new();
    for i in 0..established {
        run_raw(&mut h, &flow(i, SYN));
        targets.push(run_raw(&mut h, &flow(i, ACK)).mac);
    }
    for j in 0..8 * entries {
        let syn = Frame::tcp(
            &format!("10.9.{}.{}", j / 250, j % 250 + 1),
            2000,
            "10.0.3.49",
            80,
            SYN,
        )
        .build();
        assert_eq!(run_raw(&mut h, &syn).action, XDP_TX);
    }
    for (i, mac) in targets.iter().enumerate() {
        let seen = run_raw(&mut h, &flow(i, ACK));
        assert!(
            seen.rose.contains(&Counter::FlowHit),
            "flow {i} lost its entry: {:?}",
            seen.rose
        );
        assert_eq!(&seen.mac, mac, "flow {i} moved");
    }
}

const ROUND_ROBIN: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: web
    protocol: tcp
    algorithm: round_robin
    targets:
      - { ip: 10.0.3.11 }
      - { ip: 10.0.3.12 }
      - { ip: 10.0.3.13 }
"#;

/// Two CPUs that see the first packet of one flow at once insert it once
/// and agree on its target, though each would choose another (round robin
/// hands consecutive new flows to different targets): whichever commits
/// second finds the other's entry, takes its target and removes its own.
/// Checked for many flows, each sent by both CPUs at the same moment.
#[test]
fn two_cpus_inserting_one_flow_agree_on_its_target() {
    const FLOWS: usize = 20_000;
    let Some((mut h, cpus)) = racing(65_536) else {
        return;
    };
    let syn = |i: usize| race_frame(i, SYN);
    let macs = both_cpus_send(h.dp.program_mut(), cpus, FLOWS, syn);
    let differ: Vec<usize> = (0..FLOWS).filter(|&i| macs[0][i] != macs[1][i]).collect();
    assert!(
        differ.is_empty(),
        "{} of {FLOWS} flows went to two targets, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    let entries = h.dp.flow_entries().unwrap();
    assert_eq!(entries.len(), FLOWS, "one entry per flow");
    let counted: i64 = h.plan.targets.iter().map(|t| h.dp.active_flows(t.id)).sum();
    assert_eq!(counted, FLOWS as i64, "each flow counted once");
}

/// Two CPUs that see an ACK of one flow the table does not hold at once
/// (a connection ECMP moved here, on two queues) remember it once: the
/// second finds the first's entry when it looks for an empty one, and
/// takes none. Both send it to the hash's target, and its next packet
/// counts it once.
#[test]
fn two_cpus_missing_one_flow_remember_it_once() {
    const FLOWS: usize = 20_000;
    let Some((mut h, cpus)) = racing(65_536) else {
        return;
    };
    let ack = |i: usize| race_frame(i, ACK);
    let macs = both_cpus_send(h.dp.program_mut(), cpus, FLOWS, ack);
    assert!(macs[0] == macs[1], "a flow went to two targets");
    let entries = h.dp.flow_entries().unwrap();
    assert_eq!(entries.len(), FLOWS, "one entry per flow");
    for i in 0..FLOWS {
        h.run(&ack(i));
    }
    let counted: i64 = h.plan.targets.iter().map(|t| h.dp.active_flows(t.id)).sum();
    assert_eq!(counted, FLOWS as i64, "each flow counted once");
}

/// A TCP packet with `flags` of flow `i` of the races (a client address
/// of its own, up to 20,000 flows).
fn race_frame(i: usize, flags: u8) -> Vec<u8> {
    Frame::tcp(
        &format!("10.7.{}.{}", i / 250, i % 250 + 1),
        3000,
        "10.0.3.49",
        80,
        flags,
    )
    .build()
}

/// Both CPUs send `frame(i)` for every flow i below `flows`, at the same
/// moment (a spin barrier per flow, bounded by a deadline): the destination
/// MACs each CPU's frames went to.
fn both_cpus_send(
    program: &aya::programs::Xdp,
    cpus: [usize; 2],
    flows: usize,
    frame: impl Fn(usize) -> Vec<u8> + Sync,
) -> Vec<Vec<[u8; 6]>> {
    let reached = [AtomicU32::new(0), AtomicU32::new(0)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (reached, cpu, frame) = (&reached, cpus[t], &frame);
                scope.spawn(move || {
                    pin_to(cpu);
                    let mut out = Vec::with_capacity(flows);
                    for i in 0..flows {
                        reached[t].store(i as u32 + 1, Ordering::SeqCst);
                        while reached[1 - t].load(Ordering::SeqCst) < i as u32 + 1 {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "the other CPU stalled"
                            );
                            std::hint::spin_loop();
                        }
                        out.push(transmitted_to(program, &frame(i)));
                    }
                    out
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// One CPU sends the packets of established flows while the other floods
/// the same small table with new flows (one-packet SYNs, and flows that end
/// with a RST): every packet of an established flow goes to the target its
/// first packet went to (a reader never meets a torn or foreign entry, and
/// no flow in use is evicted), evictions happen, and at the end the active
/// counts equal the counted entries exactly (the data plane saw every
/// eviction, on both CPUs).
#[test]
fn established_flows_hold_while_another_cpu_floods_the_table() {
    const LIVE: u16 = 1200;
    const FLOOD: u32 = 60_000;
    let Some((mut h, cpus)) = racing(1024) else {
        return;
    };
    let live = |p: u16, f: u8| Frame::tcp("10.0.5.1", 20000 + p, "10.0.3.49", 80, f).build();
    // SYN, then an ACK: established (AGAIN), protected while it sends. The
    // live flows fill most of the table, so that the flood often finds
    // both its buckets full of them.
    let mut targets = Vec::new();
    for p in 0..LIVE {
        h.run(&live(p, SYN));
        let (_, out) = h.run(&live(p, ACK));
        let key = lb_tests::model::parse(&live(p, ACK)).unwrap().0;
        if h.dp.flow_entry(&key).unwrap().is_some() {
            targets.push((p, <[u8; 6]>::try_from(&out[..6]).unwrap()));
        }
    }
    assert!(
        targets.len() > LIVE as usize * 9 / 10,
        "{} live flows",
        targets.len()
    );
    let program: &aya::programs::Xdp = h.dp.program_mut();
    let run = |frame: &[u8]| transmitted_to(program, frame);
    let flooding = std::sync::atomic::AtomicBool::new(true);
    let done_rounds = AtomicU32::new(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (moved, rounds) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            pin_to(cpus[0]);
            let (mut moved, mut rounds) = (Vec::new(), 0u32);
            while flooding.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                for &(p, mac) in &targets {
                    if run(&live(p, ACK | PSH)) != mac {
                        moved.push(p);
                    }
                }
                rounds += 1;
                done_rounds.store(rounds, Ordering::SeqCst);
            }
            (moved, rounds)
        });
        pin_to(cpus[1]);
        // The whole flood, and on until the reader has gone over the live
        // flows a few times meanwhile (bounded by the deadline).
        for i in 0u32.. {
            if i >= FLOOD
                && (done_rounds.load(Ordering::SeqCst) >= 3 || std::time::Instant::now() > deadline)
            {
                break;
            }
            let i = i % (4 * FLOOD);
            let src = format!("10.{}.{}.{}", 6 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
            let port = 1024 + (i % 7) as u16;
            let flags = if i.is_multiple_of(5) { RST } else { SYN };
            run(&Frame::tcp(&src, port, "10.0.3.49", 80, flags).build());
        }
        flooding.store(false, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(
        rounds >= 3,
        "the reader ran {rounds} rounds during the flood"
    );
    let moved: std::collections::BTreeSet<u16> = moved.into_iter().collect();
    assert!(
        moved.is_empty(),
        "{} established flows moved, e.g. {:?}",
        moved.len(),
        moved.iter().take(10).collect::<Vec<_>>()
    );
    let counters = h.dp.counters().unwrap();
    let evicted = counters
        .iter()
        .find(|(c, _)| *c == Counter::FlowEvicted)
        .map_or(0, |(_, v)| *v);
    let unremembered = counters
        .iter()
        .find(|(c, _)| *c == Counter::FlowInsertFailed)
        .map_or(0, |(_, v)| *v);
    assert!(evicted > 0, "the flood evicted nothing: {counters:?}");
    assert!(
        unremembered > 0,
        "the flood never met buckets full of flows in use: {counters:?}"
    );
    let entries = h.dp.flow_entries().unwrap();
    let mut counted: BTreeMap<u32, i64> = BTreeMap::new();
    for e in &entries {
        if e.word.flags() & flags::COUNTED != 0 {
            *counted.entry(e.word.target_id()).or_default() += 1;
        }
    }
    for t in &h.plan.targets {
        assert_eq!(
            h.dp.active_flows(t.id),
            counted.get(&t.id).copied().unwrap_or(0),
            "target {} counts its counted entries exactly",
            t.id
        );
    }
}

/// A round-robin data plane with a table for `flows`, and two CPUs to race
/// on; None (the test skipped) if the process may use one CPU only.
fn racing(flows: u32) -> Option<(Harness, [usize; 2])> {
    let Some(cpus) = two_cpus() else {
        lb_tests::skip("the process may run on one CPU only: no two CPUs to race");
        return None;
    };
    let options = lb_user::dataplane::LoadOptions {
        flow_table_size: flows,
    };
    Some((Harness::with_options(ROUND_ROBIN, &options), cpus))
}

/// Runs `frame` through `program` (from any thread): the destination MAC
/// of the frame it transmits.
fn transmitted_to(program: &aya::programs::Xdp, frame: &[u8]) -> [u8; 6] {
    let mut data = vec![0u8; frame.len() + 256];
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, XDP_TX);
    data[..6].try_into().unwrap()
}

/// Two CPUs this process may run on, if it may use two.
fn two_cpus() -> Option<[usize; 2]> {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    (cpus.len() >= 2).then(|| [cpus[0], cpus[1]])
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// The data plane and the loader (flow sweeper, `lb status`) tell time by
/// the same clock: a new flow's entry is stamped between two readings of
/// `Dataplane::clock` around its packet, and that clock keeps pace with
/// `CLOCK_MONOTONIC` (to a tick at each end, plus scheduling).
#[test]
fn the_data_plane_and_the_loader_share_one_clock() {
    let mut h = Harness::new(ONE_TARGET);
    let clock = |h: &Harness| h.dp.clock().now_ns().expect("clock");
    let tick = h.dp.clock().ns_per_tick();
    assert!(
        [1_000_000, 3_333_333, 4_000_000, 10_000_000].contains(&tick),
        "tick length {tick} ns is not 1/HZ of a kernel rate"
    );

    let before = clock(&h);
    h.check(
        "syn",
        &Frame::tcp("10.0.3.100", 45000, "10.0.3.49", 80, SYN).build(),
    );
    let after = clock(&h);
    let entries = h.dp.flow_entries().expect("flow entries");
    let [entry] = entries.as_slice() else {
        panic!("one flow expected: {entries:?}")
    };
    let offset = h.plan.config.time_offset_ns;
    let units = |ns: u64| flow_table::time_units(ns + offset);
    assert!(
        (units(before)..=units(after)).contains(&entry.seen),
        "entry stamped {}, clock read {} and {} (table units)",
        entry.seen,
        units(before),
        units(after)
    );

    // Against the monotonic clock over at least 300 ms. Each reading is
    // bracketed by two instants (the thread may be preempted around it) and
    // may be up to a tick late.
    let read = |h: &Harness| {
        let a = std::time::Instant::now();
        let ns = clock(h);
        (a, ns, std::time::Instant::now())
    };
    let (a0, c0, b0) = read(&h);
    let deadline = a0 + std::time::Duration::from_secs(10);
    while b0.elapsed() < std::time::Duration::from_millis(300) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::yield_now();
    }
    let (a1, c1, b1) = read(&h);
    let (shortest, longest) = ((a1 - b0).as_nanos() as u64, (b1 - a0).as_nanos() as u64);
    let ticked = c1 - c0;
    assert!(
        ticked + 2 * tick >= shortest && ticked <= longest + 2 * tick,
        "data-plane clock moved {ticked} ns while CLOCK_MONOTONIC moved {shortest}-{longest} ns"
    );
}

/// The data-plane program is one BPF function: its body is inlined into its
/// XDP entry point, with no BPF-to-BPF call (not even to `memcpy`). When
/// LLVM once left the body out of line, that call cost every packet 7 ns
/// (a packet for no listener went from 28 to 35 ns). The benchmark measures
/// the time, and checks its own build of the pipeline the same way; this
/// checks the structure, which needs no timing.
#[test]
fn the_data_plane_program_is_one_bpf_function() {
    assert_one_bpf_function(lb_user::EBPF_LB, lb_user::dataplane::PROGRAM);
}

/// The verifier walks the program's paths up to 1,000,000 instructions and
/// refuses it beyond: a change that multiplies the paths (a branch inside
/// a scan over the flow's candidates, which LLVM makes of innocent
/// arithmetic: `flow_table::opaque`) can take it there at once. The count
/// is about 204,000; this fails well before the limit, with the figure.
#[test]
fn the_verifier_follows_the_program_well_within_its_limit() {
    const BUDGET: u32 = 500_000;
    let mut h = Harness::new(ONE_TARGET);
    let count =
        h.dp.program_mut()
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("the kernel reports the verified instruction count");
    eprintln!("the verifier processed {count} instructions");
    assert!(
        count < BUDGET,
        "the verifier processed {count} instructions (budget {BUDGET}, limit 1,000,000)"
    );
}

/// The shortest idle timeout (1 s) of a flow with a packet every half
/// second: its entry's last-seen time is refreshed only once it is older
/// than the touch interval (about a second), so it lags the last packet by
/// up to that; neither the data plane nor the sweeper ends the flow, which
/// keeps its target and is never counted as new again. Silent past the
/// timeout and the lag, it has ended.
#[test]
fn a_flow_with_packets_within_a_one_second_timeout_goes_on() {
    let yaml = r#"
listeners:
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
target_groups:
  - name: dns
    protocol: udp
    algorithm: round_robin
    flow_idle_timeout_s: 1
    targets:
      - { ip: 10.0.3.11 }
      - { ip: 10.0.3.12 }
"#;
    let mut h = Harness::new(yaml);
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    let dns = Frame::udp("10.0.3.100", 5353, "10.0.3.49", 53, b"q").build();
    let first = h.check("first", &dns);
    assert!(first.new_flow);
    for i in 1..=12 {
        h.advance_ns(500_000_000);
        let r = sweeper.sweep(&lb_user::flows::Rules::of(&h.plan)).unwrap();
        assert_eq!((r.entries, r.deleted), (1, 0), "sweep {i}: {r:?}");
        let o = h.check("every half second", &dns);
        assert!(
            o.counters.contains(&Counter::FlowHit),
            "packet {i}: {:?}",
            o.counters
        );
        assert!(!o.new_flow, "packet {i}");
        assert_eq!(o.target, first.target, "packet {i} moved");
    }
    h.advance_ns(2_100_000_000);
    let o = h.check("silent for 2.1 s", &dns);
    assert!(o.counters.contains(&Counter::NewFlow), "{:?}", o.counters);
    assert_eq!(total(&h.active()), 1);
}

/// A new flow's entry is stamped (last-seen time, listener hint) before its
/// word is published: a sweep that meets the new word never pairs it with
/// the time of the entry's last flow, long ended, and deletes the new flow.
/// One CPU puts new flows into entries whose last flows have ended (each
/// round moves time past their timeout) while the other sweeps the same
/// small table without a pause (the sweeper's own reads and judgment:
/// `FlowTable::entries`, `Rules::ended`, a compare-and-exchange against the
/// word read; without its sticky sessions' half, so that it passes each
/// entry every few hundred nanoseconds): every new flow keeps its entry,
/// unless its insert lost a race and it went unremembered (counted).
#[test]
fn a_sweep_never_deletes_a_flow_just_put() {
    const ROUNDS: usize = 8000;
    const PER_ROUND: usize = 8;
    let Some(cpus) = two_cpus() else {
        lb_tests::skip("the process may run on one CPU only: no two CPUs to race");
        return;
    };
    // 4 buckets, 16 entries.
    let options = lb_user::dataplane::LoadOptions { flow_table_size: 8 };
    let mut h = Harness::with_options(ROUND_ROBIN, &options);
    let table = h.dp.flow_table().unwrap();
    let judged = std::sync::Mutex::new((lb_user::flows::Rules::of(&h.plan), 0));
    let sweeping = std::sync::atomic::AtomicBool::new(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let barrier = std::sync::Barrier::new(2);
    let failed = |h: &Harness| h.counters().get("flow_insert_failed").copied().unwrap_or(0);
    let failed_before = failed(&h);
    let mut vanished = 0;
    std::thread::scope(|scope| {
        let sweep = scope.spawn(|| {
            pin_to(cpus[1]);
            loop {
                barrier.wait();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let (rules, now) = judged.lock().unwrap().clone();
                while sweeping.load(Ordering::SeqCst) {
                    for entry in table.entries() {
                        if rules.ended(&entry, now) {
                            table.clear(&entry);
                        }
                    }
                }
                barrier.wait();
            }
        });
        pin_to(cpus[0]);
        for round in 0..ROUNDS {
            // Every entry's flow has ended (idle timeout 350 s).
            h.advance(400);
            let now = h.dp.clock().now_ns().unwrap() + h.plan.config.time_offset_ns;
            *judged.lock().unwrap() = (lb_user::flows::Rules::of(&h.plan), now);
            sweeping.store(true, Ordering::SeqCst);
            barrier.wait();
            let syns: Vec<Vec<u8>> = (0..PER_ROUND)
                .map(|k| race_frame(round * PER_ROUND + k, SYN))
                .collect();
            for syn in &syns {
                transmitted_to(h.dp.program_mut(), syn);
            }
            sweeping.store(false, Ordering::SeqCst);
            barrier.wait();
            for syn in &syns {
                let key = lb_tests::model::parse(syn).unwrap().0;
                vanished += usize::from(h.dp.flow_entry(&key).unwrap().is_none());
            }
        }
        stop.store(true, Ordering::SeqCst);
        barrier.wait();
        sweep.join().unwrap();
    });
    let unremembered = failed(&h) - failed_before;
    eprintln!(
        "{} new flows: {vanished} without an entry, {unremembered} unremembered",
        ROUNDS * PER_ROUND
    );
    assert_eq!(
        vanished as u64, unremembered,
        "new flows deleted by the sweeper as if ended"
    );
}

/// A packet that marks a flow established changes its entry's word by
/// compare-and-exchange from the word it read: when the sweeper (here a
/// stand-in that empties and refills the flow's entry without a pause)
/// empties the entry meanwhile, the mark is dropped, never left alone in
/// the empty word (an entry of no flow, with no tag).
#[test]
fn marking_a_flow_established_never_revives_an_emptied_entry() {
    let Some(cpus) = two_cpus() else {
        lb_tests::skip("the process may run on one CPU only: no two CPUs to race");
        return;
    };
    let mut h = Harness::new(ROUND_ROBIN);
    let listener = h.plan.listeners[0].info.listener_id as u16;
    let target = h.plan.targets[0].id;
    let key = web_key([10, 0, 3, 100], 45800);
    let place = h.dp.flow_place(&key);
    // The flow's first empty candidate, where a packet that misses puts it.
    let (bucket, way) = (place.first, 0);
    let table = h.dp.flow_table().unwrap();
    let now = now_units(&h);
    let counted = Word::new(place.tag, target, flags::COUNTED);
    let ack = Frame::tcp("10.0.3.100", 45800, "10.0.3.49", 80, ACK).build();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let phantom = std::thread::scope(|scope| {
        let refill = scope.spawn(|| {
            pin_to(cpus[1]);
            while !stop.load(Ordering::SeqCst) {
                match table.entry(bucket, way) {
                    None => table.put(bucket, way, counted, now, listener),
                    Some(e) if e.word.tag() == 0 => return Some(e.word),
                    Some(e) => {
                        table.clear(&e);
                    }
                }
            }
            None
        });
        pin_to(cpus[0]);
        let mut out = vec![0u8; ack.len() + 256];
        while std::time::Instant::now() < deadline && !refill.is_finished() {
            h.dp.program_mut()
                .test_run(TestRunOptions {
                    data_in: Some(&ack),
                    data_out: Some(&mut out),
                    repeat: 1000,
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
        }
        stop.store(true, Ordering::SeqCst);
        refill.join().unwrap()
    });
    assert_eq!(phantom, None, "an entry with no flow's tag");
}

/// An entry idle for longer than half the range of its time (26 days: `lb`
/// stopped, the data plane forwarding on, no sweeper), or stamped by a
/// clock that has jumped back since, reads as having a last-seen time
/// ahead of now, further than clock reads differ. Its flow has ended: its
/// next packet is a new flow, and the sweeper deletes it (uncounted).
#[test]
fn an_entry_idle_across_the_clock_wrap_has_ended() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let mut sweeper = h.dp.flow_sweeper().expect("sweeper");
    let (listener, target) = web_ids(&h);
    let day = (86_400_000_000_000u64 >> flow_table::TIME_SHIFT) as u32;
    let now = now_units(&h);
    let established = flags::COUNTED | flags::AGAIN;
    let (old, ahead) = (
        web_key([10, 0, 3, 100], 45900),
        web_key([10, 0, 3, 100], 45901),
    );
    let put = |key, seen| {
        let place = h.dp.flow_place(key);
        (
            place.first,
            0,
            Word::new(place.tag, target, established),
            seen,
            listener,
        )
    };
    h.dp.put_flow_entries([
        put(&old, now.wrapping_sub(30 * day)),
        put(&ahead, now.wrapping_add(flow_table::AHEAD_UNITS + 1000)),
    ])
    .unwrap();
    assert_eq!(total(&h.active()), 2);
    let seen = run_raw(
        &mut h,
        &Frame::tcp("10.0.3.100", 45900, "10.0.3.49", 80, ACK).build(),
    );
    assert!(seen.rose.contains(&Counter::NewFlow), "{:?}", seen.rose);
    let r = sweeper.sweep(&lb_user::flows::Rules::of(&h.plan)).unwrap();
    assert_eq!((r.entries, r.deleted), (2, 1), "{r:?}");
    assert!(h.dp.flow_entry(&ahead).unwrap().is_none());
    assert_eq!(total(&h.active()), 1, "the new flow alone");
}

/// A released target id starts from no active flows: a count left on it
/// (a flow lost without being uncounted) would weigh on least connections
/// for the next target to take the id, and show in its status.
#[test]
fn a_released_id_starts_from_no_active_flows() {
    let mut h = Harness::new(THREE_TARGETS);
    let t13 = target("web", "10.0.3.13");
    let id = h.target_id(&t13).unwrap();
    let listener = h.plan.listeners[0].info.listener_id as u16;
    let place = h.dp.flow_place(&web_key([10, 0, 3, 100], 46100));
    let word = Word::new(place.tag, id, flags::COUNTED | flags::AGAIN);
    h.dp.put_flow_entries([(place.first, 0, word, now_units(&h), listener)])
        .unwrap();
    let table = h.dp.flow_table().unwrap();
    assert!(table.clear(&table.entry(place.first, 0).unwrap()));
    assert_eq!(h.dp.active_flows(id), 1, "a count with no entry");

    let without_13 = THREE_TARGETS.replace("      - { ip: 10.0.3.13, weight: 128 }\n", "");
    h.reapply(&without_13);
    let mut ids = (*h.plan.ids).clone();
    let swept_from = std::time::Instant::now() + lb_user::ids::RELEASE_GRACE;
    assert_eq!(ids.release(&Default::default(), swept_from), vec![id]);
    h.apply_plan(lb_user::plan::MapPlan {
        ids: std::sync::Arc::new(ids),
        ..h.plan.clone()
    });
    assert_eq!(h.dp.active_flows(id), 0, "zeroed with the release");
    h.reapply(&without_13.replace("10.0.3.12, weight: 256", "10.0.3.15, weight: 256"));
    assert_eq!(h.target_id(&target("web", "10.0.3.15")), Some(id));
    assert_eq!(h.dp.active_flows(id), 0);
}
