//! Packet kinds end to end: `lb run` in the namespace lab, real sockets,
//! real target servers (each answer names the target that served it).
//!
//! - Fragmented UDP: datagrams larger than the MTU (the client's kernel
//!   fragments them), IPv4 and IPv6, under every algorithm and hash
//!   affinity: each arrives whole (the server answers its length and
//!   digest) at the target the flow's small datagrams go to.
//! - Path MTU: a router with a smaller MTU toward a remote client refuses
//!   the targets' full-size replies and sends fragmentation needed / packet
//!   too big to the VIP; `lb` hands it to the target that owns the flow, and
//!   1 MB downloads complete, IPv4 and IPv6.
//! - Spoofed ACK flood: long-lived connections of every algorithm, then
//!   200,000 spoofed TCP ACKs at their listeners: every connection still
//!   answers from its target, the flow table and the active flow counts do
//!   not move.
//!
//! Needs root and the `lb` binary (`cargo xtask test` builds it).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::flow_table::flags;
use lb_tests::{
    LabOptions, LabRun, Node,
    client::{self, Held},
    flood,
    lab::Lab,
    policy::{Listener, listeners_yaml},
    status::Status,
    topo::{self, BULK_PORT, TARGETS, UDP_PORT, VIP4, VIP6},
};
use nix::{sys::signal, unistd::Pid};

const T: Duration = Duration::from_secs(2);
/// Status changes (a reload applied, a sweep) show within this; generous
/// for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(20);

/// Every algorithm, and `hash` with each affinity.
const ALGORITHMS: [(&str, &str); 6] = [
    ("hash", "five_tuple"),
    ("hash", "three_tuple"),
    ("hash", "two_tuple"),
    ("source_ip", ""),
    ("round_robin", ""),
    ("least_connections", ""),
];

/// `hash five_tuple`, `round_robin`.
fn label((algorithm, affinity): (&str, &str)) -> String {
    format!("{algorithm} {affinity}").trim_end().to_owned()
}

fn vip(v6: bool) -> IpAddr {
    if v6 { VIP6.into() } else { VIP4.into() }
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// A global counter of the data plane.
fn counter(status: &Status, name: &str) -> u64 {
    status.0["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {}", status.0["counters"]))
}

/// How much each named counter grew from `before` to `after`.
fn grown(before: &Status, after: &Status, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| (n.to_string(), counter(after, n) - counter(before, n)))
        .collect()
}

/// Writes `yaml` as `s`'s policy, has `lb` reload it, and waits until the
/// status shows group `group` with `algorithm` (and `affinity`, for hash).
fn reload(s: &LabRun, yaml: &str, group: &str, (algorithm, affinity): (&str, &str)) {
    std::fs::write(&s.policy, yaml).unwrap();
    let pid = Pid::from_raw(s.lb.pid().expect("lb runs") as i32);
    signal::kill(pid, signal::Signal::SIGHUP).unwrap();
    let what = format!("{group} by {}", label((algorithm, affinity)));
    s.lb.wait_for(SETTLE, &what, |st| {
        let g = st.group(group)?;
        (g["algorithm"] == algorithm && (algorithm != "hash" || g["affinity"] == affinity))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.lb.log()));
}

// --- Fragmented UDP -------------------------------------------------------

/// The UDP listeners `dns` (10.0.3.49:53) and `dns6` ([fd00:3::49]:53).
fn dns_policy((algorithm, affinity): (&'static str, &'static str)) -> String {
    let listener = |name, v6| Listener {
        name,
        vip: vip(v6),
        proto: "udp",
        port: UDP_PORT,
        algorithm,
        affinity,
    };
    listeners_yaml(&[listener("dns", false), listener("dns6", true)])
}

/// One flow's exchanges: (a large datagram?, who answered or why not).
type Exchanges = Vec<(bool, Result<String, String>)>;

/// On one socket from `src` (one flow) to the VIP's UDP port: a small
/// datagram, a large one (3000-4000 bytes: the kernel sends it in three
/// fragments) and a small one; or, `large_first`, large, small, large.
fn one_flow(src: SocketAddr, v6: bool, large_first: bool, seed: u64) -> Exchanges {
    let dst = SocketAddr::new(vip(v6), UDP_PORT);
    let socket = match client::udp_socket(src, dst) {
        Ok(socket) => socket,
        Err(e) => return vec![(false, Err(format!("socket: {e}")))],
    };
    (0..3u64)
        .map(|i| {
            let large = (i % 2 == 0) == large_first;
            let answer = if large {
                let len = 3000 + ((seed * 3 + i) * 397 % 1000) as usize;
                let datagram = client::sum_datagram(len, seed + i);
                client::udp_sum_ask(&socket, &datagram, Duration::from_secs(1), 3)
            } else {
                client::udp_exchange(&socket, b"who?\n", Duration::from_millis(700), 3)
            };
            (large, answer.map_err(|e| e.to_string()))
        })
        .collect()
}

/// Two flows from each client address (ports `first_port`...), one of
/// them starting with a large datagram; each flow's answers must name one
/// target. Returns the targets that received large datagrams whole, and
/// how many.
fn fragmented_flows(lab: &Lab, v6: bool, first_port: u16, what: &str) -> (BTreeSet<String>, u64) {
    let flows: Vec<(SocketAddr, Exchanges)> = lab.run_in(Node::Client, || {
        (0..topo::CLIENT_ADDRS * 2)
            .map(|i| {
                let ip: IpAddr = if v6 {
                    topo::client6(i / 2).into()
                } else {
                    topo::client4(i / 2).into()
                };
                let src = SocketAddr::new(ip, first_port + i as u16);
                (src, one_flow(src, v6, i % 2 == 1, u64::from(src.port())))
            })
            .collect()
    });
    let (mut served, mut large) = (BTreeSet::new(), 0);
    for (src, exchanges) in &flows {
        let names: BTreeSet<&str> = exchanges
            .iter()
            .map(|(big, r)| {
                r.as_deref()
                    .unwrap_or_else(|e| panic!("{what}, {src}, large {big}: {e}; {exchanges:?}"))
            })
            .collect();
        assert_eq!(
            names.len(),
            1,
            "{what}, {src}: one flow, several targets: {exchanges:?}"
        );
        for (big, r) in exchanges {
            if *big {
                large += 1;
                served.insert(r.clone().unwrap());
            }
        }
    }
    (served, large)
}

/// Real datagrams larger than the MTU, IPv4 and IPv6, under each algorithm
/// (and hash affinity; one lab, a reload each): every one arrives whole
/// (the server answers its length and digest) at the target the flow's
/// small datagrams go to, whichever comes first. The data plane counts
/// each later fragment as following its first (`fragment`), none as
/// unmatched.
#[test]
fn fragmented_udp_arrives_whole_at_the_flows_target() {
    let s = LabRun::start_yaml(&dns_policy(ALGORITHMS[0]), |_| {});
    for (phase, &algorithm) in ALGORITHMS.iter().enumerate() {
        if phase > 0 {
            reload(&s, &dns_policy(algorithm), "dns", algorithm);
        }
        let before = s.lb.report().unwrap();
        let mut large = 0;
        for v6 in [false, true] {
            let what = format!("{}, {}", label(algorithm), family(v6));
            let first_port = 40000 + phase as u16 * 100 + if v6 { 50 } else { 0 };
            let (served, n) = fragmented_flows(&s.lab, v6, first_port, &what);
            eprintln!("{what}: {n} large datagrams whole at {served:?}");
            assert!(
                served.len() > 1,
                "{what}: every large datagram on one target"
            );
            large += n;
        }
        let after = s.lb.report().unwrap();
        let counts = grown(&before, &after, &["fragment", "fragment_unmatched"]);
        eprintln!("{}: counters grew {counts:?}", label(algorithm));
        // Each large datagram has two later fragments (three in all).
        assert!(counts["fragment"] >= 2 * large, "{counts:?} for {large}");
        assert_eq!(counts["fragment_unmatched"], 0, "{counts:?}");
    }
}

// --- Path MTU through lb --------------------------------------------------

/// A kernel counter of `node` (`nstat -asz`).
fn nstat(lab: &Lab, node: Node, name: &str) -> u64 {
    let all = lab.nstat(node).unwrap_or_else(|e| panic!("nstat: {e}"));
    *all.get(name)
        .unwrap_or_else(|| panic!("no {name} in {}'s nstat", lab.ns(node)))
}

/// The ICMP counters of path MTU discovery: what the router sends, what a
/// target takes in.
fn icmp_counters(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("Icmp6OutPktTooBigs", "Icmp6InPktTooBigs")
    } else {
        ("IcmpOutDestUnreachs", "IcmpInDestUnreachs")
    }
}

/// Downloads of 1 MB each from the remote client to the VIP's bulk port,
/// from ports `first_port`...: the target of each.
fn downloads(lab: &Lab, v6: bool, first_port: u16, n: u16) -> Vec<String> {
    let dst = SocketAddr::new(vip(v6), BULK_PORT);
    let src_ip: IpAddr = if v6 {
        topo::REMOTE6.into()
    } else {
        topo::REMOTE4.into()
    };
    lab.run_in(Node::Remote, || {
        (first_port..first_port + n)
            .map(|port| {
                let src = SocketAddr::new(src_ip, port);
                let started = Instant::now();
                let stall = Duration::from_secs(10);
                client::bulk_get(src, dst, 1 << 20, stall, Duration::from_secs(30))
                    .map(|name| {
                        eprintln!("{src}: 1 MB from {name} in {:?}", started.elapsed());
                        name
                    })
                    .unwrap_or_else(|e| panic!("download {src} -> {dst}: {e}"))
            })
            .collect()
    })
}

/// A router between the remote client and the segment, its link to the
/// client of MTU 1280 (the client's side 1500, so its MSS is 1460 or
/// 1440): the targets' full-size replies (DF) are refused there, and the
/// router's fragmentation needed / packet too big goes to the VIP, i.e. to
/// `lb`, which must hand it to the target that owns the flow. Six 1 MB
/// downloads per family (round robin: two on each target) complete within
/// their deadline; the router sent such errors, `lb` counted them as
/// matching a flow, every target took some in and now routes to the client
/// with the path's MTU. (With `lb` passing these errors to its own kernel
/// instead, the first download stalls.)
#[test]
fn path_mtu_discovery_through_lb() {
    let listener = |name, v6| Listener {
        name,
        vip: vip(v6),
        proto: "tcp",
        port: BULK_PORT,
        // Six new flows take two turns each on the three targets.
        algorithm: "round_robin",
        affinity: "",
    };
    let yaml = listeners_yaml(&[listener("bulk", false), listener("bulk6", true)]);
    let options = LabOptions {
        router: true,
        ..LabOptions::default()
    };
    let s = LabRun::start_in(options, &yaml, &[], |_| {});
    for v6 in [false, true] {
        let (sent, taken) = icmp_counters(v6);
        let router_before = nstat(&s.lab, Node::Router, sent);
        let targets_before: Vec<u64> = (0..TARGETS.len())
            .map(|i| nstat(&s.lab, Node::Target(i), taken))
            .collect();
        let before = s.lb.report().unwrap();
        let names = downloads(&s.lab, v6, 43000 + if v6 { 100 } else { 0 }, 6);
        let after = s.lb.report().unwrap();
        let what = family(v6);
        let served: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(served.len(), 3, "{what}: downloads served by {names:?}");
        let router = nstat(&s.lab, Node::Router, sent) - router_before;
        let counts = grown(&before, &after, &["icmp_error", "icmp_error_unmatched"]);
        let targets: Vec<u64> = (0..TARGETS.len())
            .map(|i| nstat(&s.lab, Node::Target(i), taken) - targets_before[i])
            .collect();
        eprintln!(
            "{what}: router sent {router} {sent}, lb {counts:?}, targets' {taken} {targets:?}"
        );
        assert!(router >= 3, "{what}: the router refused no full-size reply");
        assert!(counts["icmp_error"] >= 3, "{what}: {counts:?}");
        assert_eq!(counts["icmp_error_unmatched"], 0, "{what}: {counts:?}");
        assert!(targets.iter().all(|&n| n >= 1), "{what}: {targets:?}");
        assert_path_mtu_learned(&s.lab, v6);
    }
}

/// Every target's route to the remote client has the path's MTU (the
/// kernel's cached exception, from the ICMP error).
fn assert_path_mtu_learned(lab: &Lab, v6: bool) {
    let remote = if v6 {
        topo::REMOTE6.to_string()
    } else {
        topo::REMOTE4.to_string()
    };
    let mtu = format!("mtu {}", topo::ROUTER_MTU);
    for (i, t) in TARGETS.iter().enumerate() {
        let route = lab.exec(Node::Target(i), &["ip", "route", "get", &remote]);
        let route = route.unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let what = family(v6);
        assert!(route.contains(&mtu), "{what}: {}'s route: {route}", t.name);
    }
}

// --- Spoofed ACK flood ----------------------------------------------------

/// The six held listeners: the lines ports 81-83 on both VIPs, each
/// listener with an algorithm of its own.
fn flood_listeners() -> Vec<Listener> {
    let ports = [
        topo::LINES_PORT,
        topo::MORE_LINES_PORTS[0],
        topo::MORE_LINES_PORTS[1],
    ];
    let names = [
        "five-tuple",
        "three-tuple",
        "two-tuple",
        "source-ip",
        "round-robin",
        "least-connections",
    ];
    ALGORITHMS
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (&(algorithm, affinity), name))| Listener {
            name,
            vip: vip(i >= 3),
            proto: "tcp",
            port: ports[i % 3],
            algorithm,
            affinity,
        })
        .collect()
}

/// A held connection: its listener, and who served it.
struct Connection {
    listener: &'static str,
    held: Held,
    name: String,
}

/// `n` long-lived connections to each listener, from the client's
/// addresses in turn (ports `first_port`..., 100 per listener), each asked
/// once.
fn hold(lab: &Lab, listeners: &[Listener], n: usize, first_port: u16) -> Vec<Connection> {
    lab.run_in(Node::Client, || {
        let mut held = Vec::new();
        for (l, listener) in listeners.iter().enumerate() {
            for i in 0..n {
                let ip: IpAddr = if listener.vip.is_ipv6() {
                    topo::client6(i % topo::CLIENT_ADDRS).into()
                } else {
                    topo::client4(i % topo::CLIENT_ADDRS).into()
                };
                let src = SocketAddr::new(ip, first_port + (l * 100 + i) as u16);
                let dst = SocketAddr::new(listener.vip, listener.port);
                let mut h = Held::open(src, dst, T).unwrap_or_else(|e| panic!("{src}: {e}"));
                let name = h.ask().unwrap_or_else(|e| panic!("{src}: {e}"));
                held.push(Connection {
                    listener: listener.name,
                    held: h,
                    name,
                });
            }
        }
        held
    })
}

/// Active flows per (group, target name).
fn active(status: &Status, listeners: &[Listener]) -> BTreeMap<(String, &'static str), u64> {
    let mut all = BTreeMap::new();
    for l in listeners {
        for t in &TARGETS {
            let n = status
                .target(l.name, t.ip(l.vip.is_ipv6()))
                .and_then(|v| v["active_flows"].as_u64())
                .unwrap_or_else(|| panic!("no active_flows for {} in {}", t.name, l.name));
            all.insert((l.name.to_owned(), t.name), n);
        }
    }
    all
}

/// The held connections per (group, target name).
fn per_target(held: &[Connection]) -> BTreeMap<(String, &'static str), u64> {
    let mut all = BTreeMap::new();
    for l in flood_listeners() {
        for t in &TARGETS {
            let n = held
                .iter()
                .filter(|c| c.listener == l.name && c.name == t.name)
                .count();
            all.insert((l.name.to_owned(), t.name), n as u64);
        }
    }
    all
}

/// How many spoofed ACKs the flood sends (at most, within `FLOOD_LIMIT`).
const FLOOD: u64 = 200_000;
const FLOOD_LIMIT: Duration = Duration::from_secs(60);

/// Sends the flood from the client namespace at every listener.
fn spoofed_flood(lab: &Lab, listeners: &[Listener]) -> flood::Sent {
    let to: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| SocketAddr::new(l.vip, l.port))
        .collect();
    let sent = lab
        .run_in(Node::Client, || {
            flood::spoofed_acks(&to, FLOOD, FLOOD_LIMIT, 0x5eed)
        })
        .unwrap_or_else(|e| panic!("flood: {e}"));
    eprintln!(
        "flood: {} spoofed ACKs sent ({} refused) in {:.1} s",
        sent.packets, sent.refused, sent.secs
    );
    sent
}

/// Twelve long-lived connections to each of six listeners (every
/// algorithm, IPv4 and IPv6); then 200,000 spoofed TCP ACKs from random
/// addresses and ports at those listeners. `lb` forwards them by the
/// group's hash (`flow_miss_by_hash` grows by most of them, `new_flow` not
/// at all) and remembers them in empty entries only, uncounted (the flood
/// repeats no flow: `flood::tests`): the held
/// connections keep their entries (read from the map: as many established
/// entries as before, and the others seen once and uncounted), each
/// target's active flows stay as they were, and every held connection
/// still answers from its own target.
#[test]
fn spoofed_ack_flood_leaves_flows_and_table_alone() {
    let listeners = flood_listeners();
    let s = LabRun::start_yaml(&listeners_yaml(&listeners), |_| {});
    let mut held = hold(&s.lab, &listeners, 12, 44000);
    let want = per_target(&held);
    let settled =
        s.lb.wait_for(SETTLE, "active flows = held connections", |st| {
            (active(st, &listeners) == want).then_some(())
        });
    let before = settled.unwrap_or_else(|e| panic!("{e}")).status;
    let entries = s.lb.flow_table_len().unwrap();
    assert_eq!(entries, held.len(), "an entry per held connection");

    let sent = spoofed_flood(&s.lab, &listeners);
    assert!(
        sent.packets >= FLOOD / 2,
        "the flood sent too little: {sent:?}"
    );
    let after = s.lb.report().unwrap();
    let counts = grown(&before, &after, &["flow_miss_by_hash", "new_flow"]);
    eprintln!("flood: counters grew {counts:?}");
    // Each write goes through the veths and the bridge before it returns,
    // so none queues up to be dropped: nearly all reach lb.
    assert!(
        counts["flow_miss_by_hash"] >= sent.packets * 9 / 10,
        "{counts:?}"
    );
    assert_eq!(counts["new_flow"], 0, "{counts:?}");
    let after_flood = s.lb.flow_table_len().unwrap();
    assert_eq!(
        s.lb.flow_entries_with(flags::AGAIN).unwrap(),
        entries,
        "established entries taken or made by the flood"
    );
    assert_eq!(
        s.lb.flow_entries_with(flags::COUNTED).unwrap(),
        entries,
        "the flood's entries are counted"
    );
    eprintln!(
        "flood: {} entries of the flood's (empty ones taken)",
        after_flood - entries
    );
    assert_eq!(active(&after, &listeners), want, "active flows moved");

    for c in &mut held {
        for _ in 0..2 {
            let got = c
                .held
                .ask()
                .unwrap_or_else(|e| panic!("{}: {e}", c.held.local()));
            assert_eq!(got, c.name, "{} of {} moved", c.held.local(), c.listener);
        }
    }
    // One more connection, then a sweep that saw it: the status's count
    // is the table's, the flood's entries and this one's included.
    let marker = hold(&s.lab, &listeners[..1], 1, 45000);
    let len = s.lb.flow_table_len().unwrap();
    assert!(len > after_flood, "the new connection's entry");
    s.lb.wait_for(
        SETTLE,
        "the status counts the entries after the flood",
        |st| (st.0["flow_table"]["entries"].as_u64() == Some(len as u64)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(marker);
}
