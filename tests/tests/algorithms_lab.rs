//! End-to-end tests of the new-flow algorithms and sticky sessions: `lb run`
//! in the namespace lab, real client sockets, real target servers (each
//! answer names the target that served it). Needs root and the `lb` binary
//! (`cargo xtask test` builds it and sets `LB_BIN`).
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    LabRun, Node,
    client::{self, Held, Proto, Tally},
    policy::LabPolicy,
    topo::{self, LINES_PORT, TARGETS, TCP_PORT, UDP_PORT, VIP4},
};

/// Round robin: 300 new connections (TCP, then 300 UDP flows) spread 2:2:1
/// (converted weights 100, 100, 50) within 2 of 120, 120, 60 each. The
/// order is smooth weighted round robin with one counter shared by all CPUs,
/// and every new flow of the group takes one turn, so 300 consecutive new
/// flows hold each target within 2 of its share (any window of the order
/// does; a window of 60 whole cycles is exact). A hash would stray by about
/// 8.5 flows (one sigma) per target here.
#[test]
fn round_robin_spreads_new_flows_by_weight() {
    let s = LabRun::start(&LabPolicy {
        algorithm: "round_robin",
        ..LabPolicy::default()
    });
    let n = 300;
    for (proto, port) in [(Proto::Tcp, TCP_PORT), (Proto::Udp, UDP_PORT)] {
        let tally = s.burst(
            proto,
            topo::client4(0).into(),
            Some(20000),
            port,
            n,
            Instant::now() + Duration::from_secs(120),
        );
        eprintln!("round robin, {proto}: {tally}");
        assert_eq!(tally.ok(), n, "{proto}: {tally}");
        for (t, want) in TARGETS.iter().zip([120usize, 120, 60]) {
            let got = tally.count(t.name);
            assert!(
                got.abs_diff(want) <= 2,
                "{proto}: {} served {got}, expected {want} +- 2; all: {tally}",
                t.name
            );
        }
    }
}

/// Least connections: ten long-lived connections held on t1 (while it is
/// the only target with a weight), then all weights equal: the next nine new
/// connections go to t2 and t3, whose active flows stay below t1's ten
/// throughout (each new flow counts +1, so neither can tie with t1 before the
/// last). The held connections stay on t1.
#[test]
fn least_connections_sends_new_connections_away_from_a_loaded_target() {
    let mut policy = LabPolicy {
        algorithm: "least_connections",
        lines: true,
        weights: [256, 0, 0],
        ..LabPolicy::default()
    };
    let s = LabRun::start(&policy);
    let dst = SocketAddr::new(VIP4.into(), LINES_PORT);
    let mut held: Vec<Held> = s.lab.run_in(Node::Client, || {
        (0..10u16)
            .map(|n| {
                let src = SocketAddr::new(topo::client4(0).into(), 30000 + n);
                Held::open(src, dst, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("{src}: {e}"))
            })
            .collect()
    });
    for h in &mut held {
        let name = h.ask().unwrap_or_else(|e| panic!("{}: {e}", h.local()));
        assert_eq!(name, TARGETS[0].name, "{}", h.local());
    }

    policy.weights = [256, 256, 256];
    s.reload(&policy, "every target of lines selectable", |st| {
        TARGETS
            .iter()
            .all(|t| st.selectable("lines", t.ip(false)) == Some(true))
    });
    let answers = s.lab.run_in(Node::Client, || {
        client::burst_by(
            topo::client4(1).into(),
            Some(31000),
            9,
            Instant::now() + Duration::from_secs(60),
            |src| client::lines_ask(src, dst, Duration::from_secs(2)),
        )
    });
    let tally = Tally::of(&answers);
    eprintln!("least connections, after 10 held on t1: {tally}");
    assert_eq!(tally.ok(), 9, "{tally}");
    assert_eq!(tally.count(TARGETS[0].name), 0, "{tally}");
    for h in &mut held {
        assert_eq!(
            h.ask().ok().as_deref(),
            Some(TARGETS[0].name),
            "{}",
            h.local()
        );
    }
}

/// Sticky sessions (round robin underneath, duration 4 s): 30 connections
/// from one client IP, each from a new source port, all reach the target
/// its first connection reached, while another client takes the next turn;
/// once 4 s have passed since the first one, the client's next connection
/// is assigned again (the next turn of the order, another target) and its
/// following connections stay there.
#[test]
fn sticky_sessions_keep_a_client_on_one_target_and_release_it() {
    const DURATION: Duration = Duration::from_secs(4);
    let s = LabRun::start(&LabPolicy {
        algorithm: "round_robin",
        sticky_duration_s: Some(DURATION.as_secs() as u32),
        ..LabPolicy::default()
    });
    let a: IpAddr = topo::client4(0).into();
    let b: IpAddr = topo::client4(1).into();
    // Connections are asserted only while the session surely lasts.
    let margin = Duration::from_millis(500);

    let started = Instant::now();
    let first = s.burst(
        Proto::Tcp,
        a,
        None,
        TCP_PORT,
        30,
        started + DURATION - margin,
    );
    let other = s.burst(
        Proto::Tcp,
        b,
        None,
        TCP_PORT,
        10,
        started + DURATION - margin,
    );
    eprintln!("sticky: client a {first}, client b {other}");
    assert!(first.ok() >= 15, "too slow to test a 4 s session: {first}");
    assert_eq!(first.by_name.len(), 1, "client a moved: {first}");
    assert_eq!(other.by_name.len(), 1, "client b moved: {other}");
    let x = first.by_name.keys().next().unwrap().clone();
    assert_ne!(
        other.by_name.keys().next(),
        Some(&x),
        "b took the next turn"
    );

    // Past the duration (from a's first connection), a is assigned again.
    let expired = started + DURATION + margin;
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let again = Instant::now();
    let second = s.burst(
        Proto::Tcp,
        a,
        Some(31000),
        TCP_PORT,
        30,
        again + DURATION - margin,
    );
    eprintln!("sticky: client a after {DURATION:?}: {second}");
    assert!(second.ok() >= 15, "{second}");
    assert_eq!(second.by_name.len(), 1, "client a moved: {second}");
    assert_ne!(
        second.by_name.keys().next(),
        Some(&x),
        "a was released and took the next turn: {second}"
    );
}
