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

use aya::{
    maps::MapData,
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{Counter, FlowKeyV4};
use lb_tests::{
    harness::{Harness, S, assert_one_bpf_function, compile, parse_policy, target},
    model::{TargetKey, XDP_DROP, XDP_PASS, XDP_TX, key_of},
    packets::{Frame, L4, LB_MAC, tcp_flags::*},
};
use lb_user::dataplane::Dataplane;

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
            "ipv6 extension header",
            Frame::new(
                "fd00:3::100",
                "fd00:3::49",
                L4::Raw {
                    proto: 0,
                    payload: vec![6, 0, 0, 0, 0, 0, 0, 0],
                },
            ),
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
    let frag = Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, b"x")
        .with_frag(0x2000)
        .build();
    let o = h.check("fragment", &frag);
    assert_eq!((o.action, o.counters), (XDP_PASS, vec![Counter::Fragment]));
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
    let hint = |h: &Harness| {
        h.dp.flow_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, state)| state.listener_id)
    };
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
            .map(|(_, s)| s.target_id);
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
/// model, which reads the compiler's table of target ids, slot for slot.
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

#[test]
fn tcp_packets_that_miss_the_flow_table_go_to_the_hash_target() {
    for algorithm in ["algorithm: hash", "algorithm: source_ip"] {
        let yaml = SHORT_TIMEOUTS.replace(
            "    protocol: tcp\n    table_size: 65537",
            &format!("    protocol: tcp\n    {algorithm}\n    table_size: 65537"),
        );
        let mut h = Harness::new(&yaml);
        let group = h.plan.groups[0].clone();
        for i in 0..100u16 {
            let ack = Frame::tcp("10.0.3.100", 43000 + i, "10.0.3.49", 80, ACK).build();
            let o = h.check("ack without entry", &ack);
            // The target of the group table's slot for the flow's hash,
            // computed here from the plan's table as the model does.
            let flow = lb_common::FlowKey {
                family: lb_common::FAMILY_V4,
                proto: lb_common::PROTO_TCP,
                src_be: [u32::from_ne_bytes([10, 0, 3, 100]), 0, 0, 0],
                dst_be: [u32::from_ne_bytes([10, 0, 3, 49]), 0, 0, 0],
                src_port_be: (43000 + i).to_be(),
                dst_port_be: 80u16.to_be(),
                ..Default::default()
            };
            let hash = lb_common::hash::flow_hash(&flow, group.info.hash_fields);
            let id = group.table.get((hash % group.table.len() as u32) as usize);
            let want = h.plan.targets.iter().find(|t| t.id == id).map(key_of);
            assert_eq!(o.target, want, "{algorithm}");
            assert!(o.counters.contains(&Counter::NewFlow));
        }
        // Remembered and counted like any flow.
        assert_eq!(total(&h.active()), 100, "{algorithm}");
    }
}

#[test]
fn sweeper_deletes_ended_flows_and_recounts_active_flows() {
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
    assert_eq!(
        (r.entries, r.ended, r.deleted, r.corrected),
        (50, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.active.values().sum::<i64>(), 40);
    assert_eq!(total(&h.active()), 40);

    // Past the FIN timeout: the 10 finished flows go.
    h.advance(10);
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!((r.entries, r.deleted, r.corrected), (50, 10, 0), "{r:?}");
    // Past the idle timeout: the others end silently; only the sweeper
    // takes them out of the counts.
    h.advance(40);
    assert_eq!(total(&h.active()), 40, "the data plane saw no packet");
    let r = sweeper.sweep(&rules(&h)).unwrap();
    assert_eq!((r.entries, r.deleted), (40, 40), "{r:?}");
    assert!(r.corrected > 0);
    assert_eq!(total(&h.active()), 0);
    assert_eq!(sweeper.sweep(&rules(&h)).unwrap().entries, 0);
}

/// A full flow table is swept in bounded time. The table is filled from user
/// space on one CPU (as one CPU of a single-queue NIC would fill it), with
/// 1.25 times its size of flows, so that the LRU evicts: copies of the
/// entries that SYNs through the program made (their listener, targets and
/// flags), under other sources. The figures are printed (`--nocapture`) for
/// the README.
#[test]
fn sweeping_a_full_flow_table_takes_bounded_time() {
    use lb_user::dataplane::LoadOptions;
    let max = lb_common::DEFAULT_FLOW_TABLE_SIZE;
    let plan = compile(&parse_policy(SHORT_TIMEOUTS));
    let mut dp = Dataplane::load(&LoadOptions {
        flow_table_size: max,
        ..Default::default()
    })
    .expect("load");
    dp.apply(&plan).expect("apply");
    let made = entries_of_syns(&mut dp, 16);
    let map = flows_v4(&mut dp);
    eprintln!(
        "flow table (key {} bytes): memlock {} bytes",
        size_of::<FlowKeyV4>(),
        memlock(&map).unwrap_or(0)
    );
    let mut table: aya::maps::HashMap<_, FlowKeyV4, lb_common::FlowState> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("an LRU hash map");
    // Every flow from one CPU (as from a single-queue NIC).
    let mut one = nix::sched::CpuSet::new();
    one.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
    let vip_be = u32::from(std::net::Ipv4Addr::new(10, 0, 3, 49)).to_be();
    for i in 0..max + max / 4 {
        let key = FlowKeyV4 {
            src_be: (0x0a02_0000 + (i >> 16)).to_be(),
            dst_be: vip_be,
            src_port_be: (i as u16).to_be(),
            dst_port_be: 80u16.to_be(),
            proto: 6,
            ..Default::default()
        };
        table
            .insert(key, made[i as usize % made.len()], 0)
            .expect("insert a flow");
    }
    let mut sweeper = dp.flow_sweeper().expect("sweeper");
    let rules = lb_user::flows::Rules::of(&plan);
    let live = sweeper.sweep(&rules).unwrap();
    eprintln!(
        "full table: {} entries of max_flows {max} filled from one CPU; sweep {:.0} ms, {} counts corrected",
        live.entries,
        live.took.as_secs_f64() * 1e3,
        live.corrected
    );
    // One LRU list for all CPUs: one CPU can fill the whole table (with
    // per-CPU lists it filled only max / nCPUs).
    assert!(live.entries >= max as u64 * 99 / 100, "{live:?}");
    let mut later = plan.clone();
    later.config.time_offset_ns += 60 * S;
    dp.apply(&later).expect("apply");
    let ended = sweeper.sweep(&lb_user::flows::Rules::of(&later)).unwrap();
    eprintln!(
        "all ended: {} deleted in {:.0} ms",
        ended.deleted,
        ended.took.as_secs_f64() * 1e3
    );
    assert_eq!(ended.deleted, live.entries);
    assert!(plan.targets.iter().all(|t| dp.active_flows(t.id) == 0));
    // Generous bounds for a loaded 2-core machine; the figures are printed.
    assert!(live.took.as_secs() < 10 && ended.took.as_secs() < 30);
}

/// The flow-table entries that `n` SYNs of new TCP flows to 10.0.3.49:80
/// make, sent through the program.
fn entries_of_syns(dp: &mut Dataplane, n: u16) -> Vec<lb_common::FlowState> {
    for port in 1..=n {
        let syn = Frame::tcp("10.1.0.0", port, "10.0.3.49", 80, SYN).build();
        let mut out = vec![0u8; syn.len() + 256];
        let r = dp
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&syn),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        assert_eq!(r.return_value, XDP_TX);
    }
    let made: Vec<_> = dp
        .flow_entries()
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(made.len(), n as usize);
    made
}

/// The IPv4 flow table of `dp`, found among the maps its program uses.
fn flows_v4(dp: &mut Dataplane) -> MapData {
    let ids = dp.program_mut().info().unwrap().map_ids().unwrap();
    let id = ids
        .into_iter()
        .flatten()
        .find(|&id| {
            aya::maps::MapInfo::from_id(id)
                .is_ok_and(|m| m.name_as_str() == Some(lb_common::map_names::FLOWS_V4))
        })
        .expect("the program uses FLOWS_V4");
    MapData::from_id(id).expect("open FLOWS_V4")
}

/// The kernel memory charged to `map` (`memlock` in its fdinfo).
fn memlock(map: &MapData) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
}

/// An entry deleted behind the program's back (LRU eviction) is a miss: the
/// next packet is a new flow (a TCP packet that is not a SYN by hash), and
/// the lost entry stays counted until the sweeper recounts.
#[test]
fn an_evicted_flow_is_a_miss_and_stays_counted() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let frame = |flags| Frame::tcp("10.0.3.100", 45000, "10.0.3.49", 80, flags).build();
    h.check("syn", &frame(SYN));
    let key = lb_common::FlowKey {
        family: lb_common::FAMILY_V4,
        proto: lb_common::PROTO_TCP,
        src_be: [u32::from_ne_bytes([10, 0, 3, 100]), 0, 0, 0],
        dst_be: [u32::from_ne_bytes([10, 0, 3, 49]), 0, 0, 0],
        src_port_be: 45000u16.to_be(),
        dst_port_be: 80u16.to_be(),
        ..Default::default()
    };
    h.evict(&key).unwrap();
    assert!(!h.dp.remove_flow(&key).unwrap(), "gone");
    let o = h.check("ack after eviction", &frame(ACK));
    assert!(o.counters.contains(&Counter::NewFlow), "{:?}", o.counters);
    assert_eq!(total(&h.active()), 2, "the evicted flow is still counted");
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
/// whether it counted as a flow-table hit or a new flow.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    action: u32,
    mac: [u8; 6],
    hit: bool,
    new_flow: bool,
}

/// Runs `frame` through the program only (no model: these steps leave the
/// model's world on purpose).
fn run_raw(h: &mut Harness, frame: &[u8]) -> Seen {
    let count = |h: &Harness, c: Counter| {
        h.dp.counters()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| v)
    };
    let (hits, news) = (count(h, Counter::FlowHit), count(h, Counter::NewFlow));
    let (action, out) = h.run(frame);
    Seen {
        action,
        mac: out[..6].try_into().unwrap(),
        hit: count(h, Counter::FlowHit) == hits + 1,
        new_flow: count(h, Counter::NewFlow) == news + 1,
    }
}

/// The flow cache's slot for `key`, if it holds that flow under the current
/// generation and no writer is in it.
fn cached(h: &Harness, key: &lb_common::FlowKey) -> Option<lb_common::FlowCacheSlot> {
    let (_, slot) =
        h.dp.flow_cache_slot(key)
            .unwrap()
            .expect("the flow cache is on (x86-64)");
    let generation = h.dp.flow_cache_generation().unwrap();
    (slot.key == *key && slot.seq_gen & 1 == 0 && (slot.seq_gen >> 32) as u32 == generation)
        .then_some(slot)
}

/// The flow cache (README "Flow cache"), step by step through the real
/// program: a SYN takes no slot and the flow's next packet does, with the
/// entry's target and `last_seen_ns` + FLOW_TOUCH_NS; while the slot is good
/// the flow's packets are hits even with the entry gone (an LRU eviction,
/// which the cache does not see) and write nothing; past `until_ns` they go
/// to the table again; a deletion by the loader or a change of listeners
/// invalidates every slot; a SYN of another flow with the same slot leaves
/// it alone, and that flow's next packet takes the slot over.
#[test]
fn established_packets_are_steered_by_the_flow_cache() {
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let client = [10, 0, 3, 100];
    let frame = |port, flags| Frame::tcp("10.0.3.100", port, "10.0.3.49", 80, flags).build();
    let key = web_key(client, 45000);

    h.check("syn", &frame(45000, SYN));
    assert!(cached(&h, &key).is_none(), "a SYN takes no slot");
    let ack = frame(45000, ACK);
    h.check("ack", &ack);
    let entry = |h: &Harness| {
        h.dp.flow_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, state)| state)
    };
    let state = entry(&h).expect("the flow has an entry");
    let slot = cached(&h, &key).expect("the ACK wrote the flow's slot");
    assert_eq!(slot.target_id, state.target_id);
    assert_eq!(
        slot.listener_id as u32,
        h.plan.listeners[0].info.listener_id
    );
    assert_eq!(slot.until_ns, state.last_seen_ns + lb_common::FLOW_TOUCH_NS);
    let target_mac = h
        .plan
        .targets
        .iter()
        .find(|t| t.id == state.target_id)
        .unwrap()
        .info
        .mac;

    // The entry goes behind the cache's back: the slot still steers.
    assert!(h.dp.remove_flow_entry(&key).unwrap());
    let hit = Seen {
        action: XDP_TX,
        mac: target_mac,
        hit: true,
        new_flow: false,
    };
    assert_eq!(run_raw(&mut h, &ack), hit, "served from the slot");
    assert!(entry(&h).is_none(), "a cache hit writes no entry");

    // Past until_ns the slot is not used: a miss (by hash for TCP), which
    // writes the entry and the slot again.
    h.advance_ns(lb_common::FLOW_TOUCH_NS + 1);
    let miss = Seen {
        action: XDP_TX,
        mac: target_mac,
        hit: false,
        new_flow: true,
    };
    assert_eq!(run_raw(&mut h, &ack), miss, "the slot ran out");
    assert!(entry(&h).is_some() && cached(&h, &key).is_some());
    assert_eq!(run_raw(&mut h, &ack), hit);

    // A deletion by the loader invalidates the cache: the next packet misses.
    let generation = h.dp.flow_cache_generation().unwrap();
    assert!(h.dp.remove_flow(&key).unwrap());
    assert_eq!(h.dp.flow_cache_generation().unwrap(), generation + 1);
    assert!(cached(&h, &key).is_none());
    assert_eq!(run_raw(&mut h, &ack), miss, "after remove_flow");
    assert!(cached(&h, &key).is_some());

    // So does any change of listeners (slots name listener and group).
    let generation = h.dp.flow_cache_generation().unwrap();
    h.reapply(&SHORT_TIMEOUTS.replace("port: 53,", "port: 5353,"));
    assert!(h.dp.flow_cache_generation().unwrap() != generation);
    assert!(cached(&h, &key).is_none(), "listeners changed");
    assert_eq!(run_raw(&mut h, &ack), hit, "a table hit");
    assert!(cached(&h, &key).is_some());
    h.reapply(SHORT_TIMEOUTS);

    // Another flow that maps to the same slot.
    let (index, _) = h.dp.flow_cache_slot(&key).unwrap().unwrap();
    let other = (1024..=u16::MAX)
        .filter(|&p| p != 45000)
        .find(|&p| {
            h.dp.flow_cache_slot(&web_key(client, p))
                .unwrap()
                .unwrap()
                .0
                == index
        })
        .expect("a client port that shares the slot (65,000 tries for 4,096 slots)");
    let other_key = web_key(client, other);
    assert_eq!(run_raw(&mut h, &ack), hit);
    assert!(cached(&h, &key).is_some());
    assert!(run_raw(&mut h, &frame(other, SYN)).new_flow);
    assert!(cached(&h, &key).is_some(), "a SYN leaves the slot alone");
    assert!(run_raw(&mut h, &frame(other, ACK)).hit);
    assert!(
        cached(&h, &other_key).is_some(),
        "the other flow took the slot"
    );
    assert!(cached(&h, &key).is_none());
    assert_eq!(run_raw(&mut h, &ack), hit, "a table hit takes it back");
    assert!(cached(&h, &key).is_some());
}

/// Two CPUs fight over one flow-cache slot: each sends a flow of its own,
/// the two flows share the slot and go to different targets, so every packet
/// that finds the other flow there takes the table path and rewrites the
/// slot while the other CPU reads it. Every packet must still reach its own
/// flow's target: each target's packet count rises by exactly its flow's
/// packets (a torn read of the slot would move some to the other). The
/// slot's sequence shows that the CPUs did take it from each other.
#[test]
fn two_cpus_sharing_a_cache_slot_never_swap_targets() {
    const CALLS: u32 = 200;
    const REPEAT: u32 = 1000;
    let mut h = Harness::new(SHORT_TIMEOUTS);
    let client = [10, 0, 3, 100];
    let frame = |port, flags| Frame::tcp("10.0.3.100", port, "10.0.3.49", 80, flags).build();
    let target_of = |h: &mut Harness, port| {
        let o = h.check("syn", &frame(port, SYN));
        let mac: [u8; 6] = o.output[..6].try_into().unwrap();
        h.plan
            .targets
            .iter()
            .find(|t| t.info.mac == mac)
            .unwrap()
            .id
    };
    let a = 45000;
    let target_a = target_of(&mut h, a);
    let (index, _) = h.dp.flow_cache_slot(&web_key(client, a)).unwrap().unwrap();
    let mut b = None;
    for p in (1024..=u16::MAX).filter(|&p| p != a) {
        if h.dp
            .flow_cache_slot(&web_key(client, p))
            .unwrap()
            .unwrap()
            .0
            == index
        {
            let target = target_of(&mut h, p);
            if target != target_a {
                b = Some((p, target));
                break;
            }
        }
    }
    let (b, target_b) = b.expect("a port that shares the slot and goes to another target");
    h.check("ack a", &frame(a, ACK));
    h.check("ack b", &frame(b, ACK));
    let packets = |h: &Harness, id| h.dp.target_stats(id).unwrap().packets;
    let before = (packets(&h, target_a), packets(&h, target_b));
    let seq_before =
        h.dp.flow_cache_slot(&web_key(client, a))
            .unwrap()
            .unwrap()
            .1
            .seq_gen as u32;

    let program: &aya::programs::Xdp = h.dp.program_mut();
    // The CPUs this process may run on (a cpuset may leave out some).
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if cpus.len() < 2 {
        lb_tests::skip("the process may run on one CPU only: no two CPUs to race");
        return;
    }
    // Each thread goes on until both have made CALLS calls, so the two
    // overlap even when one starts late on a loaded machine (bounded: at
    // most 50 x CALLS calls, or 20 s).
    let calls = [AtomicU32::new(0), AtomicU32::new(0)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    std::thread::scope(|scope| {
        for (i, port) in [a, b].into_iter().enumerate() {
            let input = frame(port, ACK);
            let calls = &calls;
            let cpu = cpus[i];
            scope.spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).unwrap();
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
                let mut out = vec![0u8; input.len() + 256];
                let both_done = || calls.iter().all(|c| c.load(Ordering::Relaxed) >= CALLS);
                while !both_done()
                    && calls[i].load(Ordering::Relaxed) < 50 * CALLS
                    && std::time::Instant::now() < deadline
                {
                    let r = program
                        .test_run(TestRunOptions {
                            data_in: Some(&input),
                            data_out: Some(&mut out),
                            repeat: REPEAT,
                            ..Default::default()
                        })
                        .expect("BPF_PROG_TEST_RUN");
                    assert_eq!(r.return_value, XDP_TX);
                    calls[i].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });

    let sent = calls.map(|c| u64::from(c.into_inner()) * u64::from(REPEAT));
    let after = (packets(&h, target_a), packets(&h, target_b));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (sent[0], sent[1]),
        "packets per target (flow a to {target_a}, flow b to {target_b})"
    );
    let seq_after =
        h.dp.flow_cache_slot(&web_key(client, a))
            .unwrap()
            .unwrap()
            .1
            .seq_gen as u32;
    let writes = seq_after.wrapping_sub(seq_before) / 2;
    eprintln!(
        "CPUs {:?}, {sent:?} packets: the slot changed hands {writes} times",
        &cpus[..cpus.len().min(2)]
    );
    if cpus.len() > 1 {
        assert!(writes >= 10, "the CPUs hardly met: {writes} writes");
    }
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
    let [(_, state)] = entries.as_slice() else {
        panic!("one flow expected: {entries:?}")
    };
    assert!(
        (before..=after).contains(&state.created_ns) && state.last_seen_ns == state.created_ns,
        "entry stamped {} / {}, clock read {before} and {after}",
        state.created_ns,
        state.last_seen_ns
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
