//! End-to-end tests: `lb run` in the namespace lab, real client sockets,
//! real target servers. Each test builds its own lab (unique namespaces) and
//! writes its own policy. Needs root and the `lb` binary (`cargo xtask test`
//! builds it and sets `LB_BIN`).
//!
//! What they assert is what the sockets receive: every answer names the
//! target that served it. `lb status` is never used to decide a result.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    LabRun, Node,
    capture::{Capture, Frame, Payload},
    client::{self, Answer, Proto, Tally},
    policy::LabPolicy,
    stats,
    topo::{self, LB_MAC, LB4, LB6, TARGETS, TCP_PORT, UDP_PORT, VIP4, VIP6, fmt_mac},
};

/// Flows per spread test. With 5-sigma bands, 300 flows cannot tell a 0.2
/// share from an unweighted 1/3 (a broken weighting would pass about one run
/// in four); 1000 separate them by more than 4 sigma of the broken spread.
/// See `lb_tests::stats`.
const SPREAD_FLOWS: usize = 1000;
/// Band half-width in standard deviations: a correct implementation whose
/// hash behaves like a random function falls outside with probability below
/// 6e-7 per target.
const SIGMAS: f64 = 5.0;

/// The weights of `LabPolicy::default()` (and examples/lab.yaml) as ratios.
fn lab_ratios() -> Vec<f64> {
    stats::ratios(&LabPolicy::default().weights)
}

/// A burst and what was seen around it.
struct Run {
    answers: Vec<Answer>,
    /// Every frame the client's namespace saw during the burst.
    frames: Vec<Frame>,
    /// Delta of the lb kernel's counters named in `drive`.
    lb_kernel_delta: u64,
}

/// Sends `n` requests from `src_ip`, source ports `first_port..`, to `dst`,
/// capturing in the client namespace and reading the lb kernel's counters of
/// `proto` before and after.
fn drive(
    s: &LabRun,
    proto: Proto,
    src_ip: IpAddr,
    first_port: u16,
    dst: SocketAddr,
    n: usize,
) -> Run {
    let counters: &[&str] = match proto {
        Proto::Tcp => &["TcpInSegs"],
        Proto::Udp => &[
            "UdpInDatagrams",
            "Udp6InDatagrams",
            "UdpNoPorts",
            "Udp6NoPorts",
        ],
    };
    let lb_kernel = || -> u64 {
        let all = s
            .lab
            .nstat(Node::Lb)
            .unwrap_or_else(|e| panic!("nstat: {e}"));
        counters
            .iter()
            .map(|c| all.get(*c).copied().unwrap_or(0))
            .sum()
    };
    let before = lb_kernel();
    let cap = Capture::start(&s.lab.ns(Node::Client)).unwrap_or_else(|e| panic!("capture: {e}"));
    let answers = s.lab.run_in(Node::Client, || {
        client::burst(
            proto,
            src_ip,
            Some(first_port),
            dst,
            n,
            Instant::now() + Duration::from_secs(120),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    let frames = cap.finish().unwrap_or_else(|e| panic!("capture: {e}"));
    let after = lb_kernel();
    Run {
        answers,
        frames,
        lb_kernel_delta: after - before,
    }
}

/// Every request answered, and each target's count within `SIGMAS` standard
/// deviations of its weight ratio.
fn assert_weighted(tally: &Tally, n: usize, ratios: &[f64]) {
    eprintln!("spread of {n} flows: {tally}, expected ratios {ratios:?}");
    assert_eq!(tally.ok(), n, "answers: {tally}");
    for (t, &p) in TARGETS.iter().zip(ratios) {
        let (lo, hi) = stats::band(n, p, SIGMAS);
        let got = tally.count(t.name);
        assert!(
            (lo..=hi).contains(&got),
            "{} answered {got} of {n}, expected {lo}..={hi} (ratio {p}); all: {tally}",
            t.name
        );
    }
    let known: BTreeSet<&str> = TARGETS.iter().map(|t| t.name).collect();
    for name in tally.by_name.keys() {
        assert!(
            known.contains(name.as_str()),
            "answer from outside the group: {tally}"
        );
    }
}

/// Proof of direct server return: each reply frame (source address the VIP)
/// reached the client with the Ethernet source of the target that the answer
/// names, never with the lb's. Had the reply gone back through the lb's
/// kernel (NAT, proxy), the bridge would have delivered it from the lb's port
/// with the lb's MAC. And the lb kernel's TCP/UDP counters barely move: the
/// requests were forwarded by XDP before its stack saw them.
fn assert_direct_replies(run: &Run, dst: SocketAddr) {
    let mut macs_by_port: HashMap<u16, BTreeSet<[u8; 6]>> = HashMap::new();
    for f in &run.frames {
        if let Payload::Ip {
            src, sport, dport, ..
        } = f.payload
            && src == dst.ip()
            && sport == dst.port()
        {
            assert_ne!(f.src_mac, LB_MAC, "a reply came from the lb's MAC: {f:?}");
            assert!(
                topo::target_by_mac(f.src_mac).is_some(),
                "a reply came from {}, not a target: {f:?}",
                fmt_mac(f.src_mac)
            );
            macs_by_port.entry(dport).or_default().insert(f.src_mac);
        }
    }
    let mut covered = 0;
    for answer in &run.answers {
        let Ok(name) = &answer.result else { continue };
        if let Some(macs) = macs_by_port.get(&answer.src.port()) {
            covered += 1;
            let senders: Vec<&str> = macs
                .iter()
                .map(|m| topo::target_by_mac(*m).map_or("?", |t| t.name))
                .collect();
            assert_eq!(
                senders,
                [name.as_str()],
                "replies to {} came from {senders:?}",
                answer.src
            );
        }
    }
    eprintln!(
        "direct return: {covered} of {} flows' replies captured, all from their target's MAC; \
         lb kernel counter delta {}",
        run.answers.len(),
        run.lb_kernel_delta
    );
    // The tap may lose frames when its buffer overflows; half is plenty.
    assert!(
        covered * 2 >= run.answers.len(),
        "replies of only {covered} of {} flows were captured",
        run.answers.len()
    );
    assert!(
        run.lb_kernel_delta < (run.answers.len() / 100) as u64 + 1,
        "the lb's kernel saw {} segments/datagrams of {} flows: not forwarded by XDP?",
        run.lb_kernel_delta,
        run.answers.len()
    );
}

#[test]
fn tcp_spread_follows_weights_and_replies_bypass_the_lb() {
    let s = LabRun::start(&LabPolicy::default());
    let dst = SocketAddr::new(VIP4.into(), TCP_PORT);
    let run = drive(
        &s,
        Proto::Tcp,
        topo::client4(0).into(),
        20000,
        dst,
        SPREAD_FLOWS,
    );
    assert_weighted(&Tally::of(&run.answers), SPREAD_FLOWS, &lab_ratios());
    assert_direct_replies(&run, dst);
}

#[test]
fn udp_spread_follows_weights_and_replies_bypass_the_lb() {
    let s = LabRun::start(&LabPolicy::default());
    let dst = SocketAddr::new(VIP4.into(), UDP_PORT);
    let run = drive(
        &s,
        Proto::Udp,
        topo::client4(0).into(),
        20000,
        dst,
        SPREAD_FLOWS,
    );
    assert_weighted(&Tally::of(&run.answers), SPREAD_FLOWS, &lab_ratios());
    assert_direct_replies(&run, dst);
}

#[test]
fn ipv6_tcp_spread_follows_weights_and_replies_bypass_the_lb() {
    let s = LabRun::start(&LabPolicy::default());
    let dst = SocketAddr::new(VIP6.into(), TCP_PORT);
    let run = drive(
        &s,
        Proto::Tcp,
        topo::client6(0).into(),
        20000,
        dst,
        SPREAD_FLOWS,
    );
    assert_weighted(&Tally::of(&run.answers), SPREAD_FLOWS, &lab_ratios());
    assert_direct_replies(&run, dst);
}

/// Which targets served each client address: `per_client` TCP connections
/// to web, UDP queries to dns and TCP connections to web6, from every client
/// address, fixed source ports.
fn targets_by_client(s: &LabRun, per_client: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in 0..topo::CLIENT_ADDRS {
        let cases = [
            (
                Proto::Tcp,
                IpAddr::from(topo::client4(i)),
                SocketAddr::new(VIP4.into(), TCP_PORT),
            ),
            (
                Proto::Udp,
                IpAddr::from(topo::client4(i)),
                SocketAddr::new(VIP4.into(), UDP_PORT),
            ),
            (
                Proto::Tcp,
                IpAddr::from(topo::client6(i)),
                SocketAddr::new(VIP6.into(), TCP_PORT),
            ),
        ];
        for (proto, src, dst) in cases {
            let answers = s.lab.run_in(Node::Client, || {
                client::burst(
                    proto,
                    src,
                    Some(40000),
                    dst,
                    per_client,
                    Instant::now() + Duration::from_secs(60),
                )
            });
            let tally = Tally::of(&answers);
            assert_eq!(tally.ok(), per_client, "{proto} {src} -> {dst}: {tally}");
            seen.entry(format!("{proto} {src} -> {dst}"))
                .or_default()
                .extend(tally.by_name.into_keys());
        }
    }
    seen
}

/// Every client address stays on one target per listener, and not all
/// client addresses share one: with 8 addresses per listener and shares of
/// 0.4/0.4/0.2 a hash puts them all on one target with probability
/// 2 * 0.4^8 + 0.2^8 < 0.14% per listener, and the set of addresses is fixed,
/// so the outcome does not change between runs.
fn assert_sticky(algorithm: &'static str, affinity: &'static str) {
    let s = LabRun::start(&LabPolicy {
        algorithm,
        affinity,
        ..LabPolicy::default()
    });
    let seen = targets_by_client(&s, 12);
    let mut per_listener: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (flow, targets) in &seen {
        assert_eq!(
            targets.len(),
            1,
            "{algorithm}/{affinity}: {flow} reached {targets:?}; all: {seen:?}"
        );
        let (proto, rest) = flow.split_once(' ').unwrap();
        let listener = format!("{proto} {}", rest.split(" -> ").nth(1).unwrap());
        per_listener
            .entry(listener)
            .or_default()
            .extend(targets.iter().cloned());
    }
    for (listener, targets) in &per_listener {
        assert!(
            targets.len() >= 2,
            "{algorithm}/{affinity}: every client on {listener} reached only {targets:?}"
        );
    }
}

#[test]
fn five_tuple_spreads_one_client_over_every_target() {
    let s = LabRun::start(&LabPolicy::default());
    // 100 connections from one address; each target's share is at least
    // 0.2, so missing one has probability 0.8^100 (2e-10) for a random hash.
    for (proto, src, dst) in [
        (
            Proto::Tcp,
            IpAddr::from(topo::client4(0)),
            SocketAddr::new(VIP4.into(), TCP_PORT),
        ),
        (
            Proto::Udp,
            IpAddr::from(topo::client4(0)),
            SocketAddr::new(VIP4.into(), UDP_PORT),
        ),
        (
            Proto::Tcp,
            IpAddr::from(topo::client6(0)),
            SocketAddr::new(VIP6.into(), TCP_PORT),
        ),
    ] {
        let answers = s.lab.run_in(Node::Client, || {
            client::burst(
                proto,
                src,
                Some(50000),
                dst,
                100,
                Instant::now() + Duration::from_secs(60),
            )
        });
        let tally = Tally::of(&answers);
        assert_eq!(tally.ok(), 100, "{proto} {src} -> {dst}: {tally}");
        for t in &TARGETS {
            assert!(tally.count(t.name) > 0, "{proto} {src} -> {dst}: {tally}");
        }
    }
}

#[test]
fn two_tuple_keeps_each_client_on_one_target() {
    assert_sticky("hash", "two_tuple");
}

#[test]
fn three_tuple_keeps_each_client_on_one_target() {
    assert_sticky("hash", "three_tuple");
}

#[test]
fn source_ip_keeps_each_client_on_one_target() {
    assert_sticky("source_ip", "five_tuple");
}

/// Weight 0: no new flows. Static MACs in the policy here, so this test also
/// covers targets whose MAC is not looked up.
#[test]
fn weight_zero_target_gets_no_new_flows() {
    let s = LabRun::start(&LabPolicy {
        weights: [256, 256, 0],
        static_macs: true,
        ..LabPolicy::default()
    });
    let n = 300;
    let ratios = stats::ratios(&[256, 256, 0]);
    for (proto, src, dst) in [
        (
            Proto::Tcp,
            IpAddr::from(topo::client4(0)),
            SocketAddr::new(VIP4.into(), TCP_PORT),
        ),
        (
            Proto::Udp,
            IpAddr::from(topo::client4(1)),
            SocketAddr::new(VIP4.into(), UDP_PORT),
        ),
        (
            Proto::Tcp,
            IpAddr::from(topo::client6(0)),
            SocketAddr::new(VIP6.into(), TCP_PORT),
        ),
    ] {
        let answers = s.lab.run_in(Node::Client, || {
            client::burst(
                proto,
                src,
                Some(20000),
                dst,
                n,
                Instant::now() + Duration::from_secs(60),
            )
        });
        let tally = Tally::of(&answers);
        assert_eq!(
            tally.count("t3"),
            0,
            "{proto} -> {dst}: weight-0 t3 got flows: {tally}"
        );
        assert_weighted(&tally, n, &ratios);
    }
}

/// What is not a listener's goes to the lb's own kernel: its own addresses,
/// the VIP on other ports or protocols, ICMP.
#[test]
fn traffic_that_is_not_a_listeners_reaches_the_lb_itself() {
    let mut s = LabRun::start(&LabPolicy::default());
    let args: Vec<String> = ["--tcp", "8080", "--tcp", "53", "--udp", "10.0.3.49:5353"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    s.lab
        .spawn_server(Node::Lb, "lb", &args)
        .unwrap_or_else(|e| panic!("server on the lb: {e}"));
    for ip in [
        IpAddr::from(LB4),
        IpAddr::from(LB6),
        IpAddr::from(VIP4),
        IpAddr::from(VIP6),
    ] {
        s.lab
            .exec(
                Node::Client,
                &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip.to_string()],
            )
            .unwrap_or_else(|e| panic!("ping {ip}: {e}"));
    }
    let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let timeout = Duration::from_secs(3);
    let answers = s.lab.run_in(Node::Client, || {
        [
            (
                "tcp to the lb's address",
                client::tcp_ask(any4, (LB4, 8080).into(), timeout),
            ),
            (
                "tcp to the VIP, other port",
                client::tcp_ask(any4, (VIP4, 8080).into(), timeout),
            ),
            (
                "tcp to the VIP, udp listener's port",
                client::tcp_ask(any4, (VIP4, UDP_PORT).into(), timeout),
            ),
            (
                "udp to the VIP, other port",
                client::udp_ask(any4, (VIP4, 5353).into(), timeout, 3),
            ),
            (
                "the listener itself",
                client::tcp_ask(any4, (VIP4, TCP_PORT).into(), timeout),
            ),
        ]
    });
    for (what, answer) in &answers[..4] {
        assert_eq!(answer.as_deref().ok(), Some("lb"), "{what}: {answer:?}");
    }
    let (what, answer) = &answers[4];
    let name = answer.as_deref().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(name.starts_with('t'), "{what}: answered by {name}");
}

/// A listener of a port range balances every port of it, with DSR (the
/// targets answer the port asked); one of all ports balances UDP on any;
/// a port past the range, and one a reload took out of it, reach the lb
/// itself.
#[test]
fn port_ranges_balance_every_port_of_theirs() {
    let range = |ports: &str| {
        LabPolicy::default()
            .yaml()
            .replacen(
                &format!("    port: {TCP_PORT}\n    target_group: web\n"),
                &format!("    port: {ports}\n    target_group: web\n"),
                1,
            )
            .replacen(
                &format!("    port: {UDP_PORT}\n    target_group: dns\n"),
                "    port: all\n    target_group: dns\n",
                1,
            )
    };
    let yaml = range("8000-8999");
    assert!(
        yaml.contains("8000-8999") && yaml.contains("port: all"),
        "{yaml}"
    );
    let tcp = |ports: &[u16]| -> Vec<String> {
        ports
            .iter()
            .flat_map(|p| ["--tcp".to_string(), p.to_string()])
            .collect()
    };
    let served = [8000, 8500, 8999];
    let mut s = LabRun::start_yaml(&yaml, |_| {});
    for (i, t) in TARGETS.iter().enumerate() {
        s.lab
            .spawn_server(
                Node::Target(i),
                &format!("{}-ranges", t.name),
                &tcp(&served),
            )
            .unwrap_or_else(|e| panic!("servers on {}: {e}", t.name));
    }
    s.lab
        .spawn_server(Node::Lb, "lb", &tcp(&[8500, 9000]))
        .unwrap_or_else(|e| panic!("server on the lb: {e}"));

    // Every target takes flows on every served port of the range: 60 flows
    // miss a target of weight >= 1/5 with odds below 2e-6.
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in served {
        let tally = s.burst(
            Proto::Tcp,
            topo::client4(0).into(),
            None,
            port,
            60,
            deadline,
        );
        assert_eq!(tally.ok(), 60, "tcp to {port}: {tally}");
        for t in TARGETS {
            let name = format!("{}-ranges", t.name);
            assert!(
                tally.count(&name) > 0,
                "tcp to {port}: {name} got none: {tally}"
            );
        }
    }
    let tally = s.burst(
        Proto::Udp,
        topo::client4(1).into(),
        None,
        UDP_PORT,
        60,
        deadline,
    );
    assert_eq!(tally.ok(), 60, "udp to all ports, {UDP_PORT}: {tally}");
    assert!(
        TARGETS.iter().all(|t| tally.count(t.name) > 0),
        "udp: {tally}"
    );

    let ask = |port: u16| {
        let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        s.lab.run_in(Node::Client, || {
            client::tcp_ask(any4, (VIP4, port).into(), Duration::from_secs(3))
        })
    };
    assert_eq!(ask(9000).ok().as_deref(), Some("lb"), "past the range");

    // Shrunk by a reload: 8500 is the lb's own again, 8000 still balanced.
    s.reload_yaml(&range("8000-8499"), "the range shrunk", |st| {
        st.0["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["name"] == "web" && l["port"] == "8000-8499")
    });
    assert_eq!(
        ask(8500).ok().as_deref(),
        Some("lb"),
        "out of the shrunk range"
    );
    let name = ask(8000).unwrap_or_else(|e| panic!("8000 after the reload: {e}"));
    assert!(
        name.ends_with("-ranges"),
        "8000 after the reload: answered by {name}"
    );
}
