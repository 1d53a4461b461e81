//! Two `lb` instances behind ECMP, as the deployment the README's "Behind
//! ECMP" describes: each runs the same policy with `--announce`, BIRD on
//! each exports its VIPs over BGP, and BIRD on the router merges them into
//! one ECMP route that spreads the remote client's flows by their 5-tuple.
//! When the routes move every flow to one instance, then to the other, the
//! instance that never saw a flow sends it to the same target as the one
//! that did, and remembers it: no connection breaks and no answer comes
//! from another target, even when that instance then drains targets.
//!
//! Needs root, the `lb` binary (`cargo xtask test` builds it) and BIRD 2.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    LabOptions, LabRun, Node,
    bird::{self, Bird},
    client::Proto,
    lb::LbProcess,
    streams::{self, Spec, Streams},
    topo::{self, LINES_PORT, TARGETS, UDP_PORT, VIP4, VIP6},
};

const TABLE: &str = "4242";
/// BGP sessions come up and routes move within a few seconds here.
const T: Duration = Duration::from_secs(30);
/// Streams of each kind (TCP and UDP, IPv4 and IPv6).
const STREAMS: usize = 12;

/// Four listeners (TCP and UDP, both families), each to a `hash` group
/// (`five_tuple`) over the three targets: `order` lists the listeners and
/// the groups, and the targets of each group, in that order of `TARGETS`.
fn yaml(order: &[usize]) -> String {
    let listeners = [
        ("web", VIP4.to_string(), "tcp", LINES_PORT),
        ("web6", format!("\"{VIP6}\""), "tcp", LINES_PORT),
        ("dns", VIP4.to_string(), "udp", UDP_PORT),
        ("dns6", format!("\"{VIP6}\""), "udp", UDP_PORT),
    ];
    let mut out = String::from("interface: eth0\nlisteners:\n");
    for &i in order.iter().filter(|&&i| i < listeners.len()) {
        let (name, vip, proto, port) = &listeners[i];
        out += &format!(
            "  - {{ name: {name}, vip: {vip}, protocol: {proto}, port: {port}, target_group: {name} }}\n"
        );
    }
    out += "target_groups:\n";
    for &i in order.iter().filter(|&&i| i < listeners.len()) {
        let (name, vip, proto, _) = &listeners[i];
        let v6 = vip.contains(':');
        out += &format!(
            "  - name: {name}\n    protocol: {proto}\n    algorithm: hash\n    targets:\n"
        );
        for &t in order.iter().filter(|&&t| t < TARGETS.len()) {
            out += &format!("      - {{ ip: \"{}\" }}\n", TARGETS[t].ip(v6));
        }
    }
    out
}

/// What one instance holds: its active flows over TCP and over UDP (every
/// target of every group), and its `flow_miss_by_hash` counter: the TCP
/// packets without an entry that are not SYNs, which the data plane
/// forwards by the hash (and remembers, counted from the next packet), as
/// it does the first packet of a TCP flow that ECMP moved to it
/// mid-connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    tcp: u64,
    udp: u64,
    miss_by_hash: u64,
}

fn held(lb: &LbProcess) -> Held {
    let status = lb.status().expect("lb status");
    let active = |groups: [&str; 2]| -> u64 {
        status["target_groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| groups.iter().any(|n| g["name"] == *n))
            .flat_map(|g| g["targets"].as_array().into_iter().flatten())
            .map(|t| t["active_flows"].as_u64().expect("active_flows"))
            .sum()
    };
    Held {
        tcp: active(["web", "web6"]),
        udp: active(["dns", "dns6"]),
        miss_by_hash: status["counters"]["flow_miss_by_hash"]
            .as_u64()
            .expect("counter flow_miss_by_hash"),
    }
}

/// `STREAMS` streams of each kind from the remote client, ports chosen by
/// its kernel (so ECMP spreads them).
fn specs() -> Vec<Spec> {
    let mut specs = Vec::new();
    for (proto, port) in [(Proto::Tcp, LINES_PORT), (Proto::Udp, UDP_PORT)] {
        for (src, vip) in [
            (IpAddr::from(topo::REMOTE4), IpAddr::from(VIP4)),
            (topo::REMOTE6.into(), VIP6.into()),
        ] {
            for i in 0..STREAMS {
                specs.push(Spec {
                    name: format!("{proto:?} {vip} #{i}"),
                    proto,
                    src: SocketAddr::new(src, 0),
                    dst: SocketAddr::new(vip, port),
                });
            }
        }
    }
    specs
}

/// `stays` drains t1 and t2 of its TCP groups: the connections the other
/// instance moved to it (remembered there) stay on them, where the hash
/// would now send every flow to t3; then it takes them back.
fn drain_two_of_three(stays: &LbProcess, streams: &Streams, what: &str) {
    let each = |verb: &str| {
        for (group, v6) in [("web", false), ("web6", true)] {
            for t in &TARGETS[..2] {
                command(stays, &[verb, group, &t.ip(v6).to_string()]);
            }
        }
    };
    each("drain");
    streams.wait_answers(3, T);
    assert_eq!(
        streams.broken_now(),
        0,
        "{what}, t1 and t2 drained: a stream broke"
    );
    each("undrain");
}

/// Runs `lb ARGS` against `lb`; it must exit 0.
fn command(lb: &LbProcess, args: &[&str]) {
    let run = lb.client(args).unwrap();
    assert_eq!(run.code, Some(0), "lb {args:?}: {run:?}");
}

#[test]
fn instances_behind_ecmp_send_every_flow_to_the_same_target() {
    if !bird::installed() {
        return lb_tests::skip("bird is not installed (cargo xtask setup installs bird2)");
    }
    let options = LabOptions {
        router: true,
        second_lb: true,
        ..Default::default()
    };
    let announce = ["--announce", TABLE];
    // The second instance lists everything the other way round: its
    // targets take other ids, and the hash tables must not care.
    let s = LabRun::start_in(options, &yaml(&[0, 1, 2, 3]), &announce, |_| {});
    let policy2 = s.lab.write_file("policy2.yaml", &yaml(&[3, 2, 1, 0]));
    let lb2 = s
        .lab
        .start_lb_on(
            Node::Lb2,
            &policy2,
            &["--xdp-mode", "native", "--announce", TABLE],
        )
        .unwrap_or_else(|e| panic!("start the second lb: {e}"));
    let (lb, lb2) = (&s.lb, &lb2);
    let one = (topo::LB4.into(), topo::LB6.into());
    let two = (topo::LB2_4.into(), topo::LB2_6.into());
    let _birds = [
        Bird::on_lb(&s.lab, Node::Lb, one, TABLE),
        Bird::on_lb(&s.lab, Node::Lb2, two, TABLE),
    ];
    let router = Bird::on_router(&s.lab, &[one, two]);
    let wait_router = |via: &[(IpAddr, IpAddr)], what: &str| {
        bird::wait_router(&s.lab, &router, &bird::via(via), T, || {
            format!("{what}\nlb:\n{}\nlb2:\n{}", lb.log(), lb2.log())
        });
    };
    wait_router(&[one, two], "ECMP over both instances");

    let specs = specs();
    let streams = Streams::start_from(&s.lab, Node::Remote, &specs);
    streams.wait_answers(3, T);
    let (one_held, two_held) = (held(lb), held(lb2));
    let per_kind = 2 * STREAMS as u64;
    assert_eq!(
        one_held.tcp + two_held.tcp,
        per_kind,
        "{one_held:?} {two_held:?}"
    );
    assert_eq!(
        one_held.udp + two_held.udp,
        per_kind,
        "{one_held:?} {two_held:?}"
    );
    assert!(
        one_held.tcp + one_held.udp > 0 && two_held.tcp + two_held.udp > 0,
        "ECMP spreads the flows over both instances: {one_held:?} {two_held:?}"
    );
    let serving = TARGETS.iter().filter(|t| streams.on(t.name) > 0).count();
    assert!(serving > 1, "the flows hash to several targets");

    // Every flow to the second instance, then every flow to the first:
    // each time, the instance that stays takes the other's flows without
    // having seen them.
    for (out, (stays, via), what) in [
        (lb, (lb2, two), "the first instance withdrawn"),
        (lb2, (lb, one), "the second instance withdrawn"),
    ] {
        let (moving, before) = (held(out), held(stays));
        command(out, &["withdraw"]);
        wait_router(&[via], what);
        streams.wait_answers(3, T);
        assert_eq!(
            streams.broken_now(),
            0,
            "{what}: a stream broke (moved to another target)"
        );
        let after = held(stays);
        // Every flow is remembered where it arrives now, and counted.
        assert_eq!(after.udp, per_kind, "{what}: {before:?} -> {after:?}");
        assert_eq!(after.tcp, per_kind, "{what}: {before:?} -> {after:?}");
        // The TCP connections it had not seen came by the hash, once each.
        let moved = per_kind - before.tcp;
        assert!(
            moved > 0 && after.miss_by_hash - before.miss_by_hash >= moved,
            "{what}: {moved} TCP flows moved: {before:?} -> {after:?}; {moving:?} left"
        );
        if std::ptr::eq(stays, lb2) {
            drain_two_of_three(stays, &streams, what);
        }
        command(out, &["announce"]);
        wait_router(&[one, two], &format!("{what}, then announced"));
    }
    streams.wait_answers(3, T);
    let reports = streams.stop();
    assert_eq!(
        streams::broken(&reports),
        Vec::<String>::new(),
        "every stream kept its target through both moves"
    );
}
