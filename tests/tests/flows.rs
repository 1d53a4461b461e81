//! Flow lifecycle end to end: `lb run` in the namespace lab with real TCP
//! connections to the targets' lines port (long-lived, one answer per line).
//!
//! - Active flows per target (`lb status`) count open connections and return
//!   to zero once they are closed (the client's FIN uncounts each).
//! - A connection of a `hash` or `source_ip` group keeps working after the
//!   flow table is emptied (as after a full table evicted it): its packets
//!   miss the table and go to the group's consistent-hash target, which is
//!   where the connection lives, and make no entry.
//!
//! Needs root and the `lb` binary (`cargo xtask test` builds it).
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_tests::{
    LabRun, Node,
    client::Held,
    lb::LbProcess,
    policy::LabPolicy,
    status::Status,
    topo::{self, LINES_PORT, TARGETS, VIP4},
};

const T: Duration = Duration::from_secs(2);
/// The client's FIN reaches the data plane within a round trip; the status
/// is polled. Generous for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(10);

/// Active flows of group `lines` per target name.
fn active(status: &Status) -> BTreeMap<&'static str, u64> {
    TARGETS
        .iter()
        .map(|t| {
            let n = status
                .target("lines", t.v4.into())
                .and_then(|v| v.get("active_flows"))
                .and_then(|v| v.as_u64())
                .unwrap_or_else(|| panic!("no active_flows for {}: {}", t.name, status.show(None)));
            (t.name, n)
        })
        .collect()
}

/// Opens `n` connections from client address 0, ports `first_port..`, and
/// asks each once: (connection, target name).
fn open(s: &LabRun, n: u16, first_port: u16) -> Vec<(Held, String)> {
    let dst = SocketAddr::new(VIP4.into(), LINES_PORT);
    s.lab.run_in(Node::Client, || {
        (0..n)
            .map(|i| {
                let src = SocketAddr::new(topo::client4(0).into(), first_port + i);
                let mut h = Held::open(src, dst, T).unwrap_or_else(|e| panic!("{src}: {e}"));
                let name = h.ask().unwrap_or_else(|e| panic!("{src}: {e}"));
                (h, name)
            })
            .collect()
    })
}

fn per_target(held: &[(Held, String)]) -> BTreeMap<&'static str, u64> {
    TARGETS
        .iter()
        .map(|t| {
            (
                t.name,
                held.iter().filter(|(_, n)| n == t.name).count() as u64,
            )
        })
        .collect()
}

#[test]
fn active_flows_count_open_connections_and_return_to_zero() {
    let s = LabRun::start(&LabPolicy {
        lines: true,
        ..Default::default()
    });
    const N: u16 = 40;
    let held = open(&s, N, 31000);
    let want = per_target(&held);
    assert!(
        want.values().filter(|&&n| n > 0).count() > 1,
        "40 connections on one target: {want:?}"
    );
    // Each open connection counts once on the target that serves it.
    let seen =
        s.lb.wait_for(SETTLE, "active flows = open connections", |st| {
            (active(st) == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("open: active flows {:?}", active(&seen.status));
    let table = s.lb.status_command(Some("lines"), false).unwrap();
    assert!(table.contains("ACTIVE FLOWS"), "{table}");
    assert!(
        s.lb.status_command(None, true)
            .unwrap()
            .contains("\"active_flows\""),
        "the JSON has active_flows"
    );

    // Close every connection (FIN from the client): back to zero.
    let closing = std::time::Instant::now();
    drop(held);
    let zero: BTreeMap<&str, u64> = TARGETS.iter().map(|t| (t.name, 0)).collect();
    let closed =
        s.lb.wait_for(SETTLE, "active flows back to 0", |st| {
            (active(st) == zero).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "closed: all zero in the report asked {:.2} s after the closes",
        closed.asked.duration_since(closing).as_secs_f64()
    );
}

/// A `hash` or `source_ip` group: held connections answer from the same
/// target after the flow table was emptied.
fn survives_a_cleared_flow_table(algorithm: &'static str) {
    let s = LabRun::start(&LabPolicy {
        lines: true,
        algorithm,
        ..Default::default()
    });
    let mut held = open(&s, 12, 32000);
    let entries = s.lb.flow_table_len().unwrap();
    assert!(entries >= 12, "{entries} entries for 12 connections");

    let cleared = s.lb.clear_flow_tables().unwrap();
    assert!(cleared >= 12, "cleared {cleared}");
    assert_eq!(s.lb.flow_table_len().unwrap(), 0, "the table is empty");
    // The deletion took each lost flow out of its target's count.
    let zero: BTreeMap<&str, u64> = TARGETS.iter().map(|t| (t.name, 0)).collect();
    s.lb.wait_for(SETTLE, "no active flows", |st| {
        (active(st) == zero).then_some(())
    })
    .unwrap_or_else(|e| panic!("{algorithm}: {e}"));

    for (h, name) in &mut held {
        for _ in 0..3 {
            let got = h
                .ask()
                .unwrap_or_else(|e| panic!("{algorithm}: {} broke: {e}", h.local()));
            assert_eq!(&got, name, "{algorithm}: {} moved", h.local());
        }
    }
    // The misses went by hash and were remembered again (a TCP packet that
    // is not a SYN takes an empty entry: never another flow's), each
    // counted from its next packet.
    assert_eq!(
        s.lb.flow_table_len().unwrap(),
        12,
        "each connection remembered again"
    );
    let want = per_target(&held);
    s.lb.wait_for(SETTLE, "each connection counted again", |st| {
        (active(st) == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
    eprintln!(
        "{algorithm}: 12 connections kept their targets: {:?}",
        per_target(&held)
    );
}

#[test]
fn hash_connections_survive_a_cleared_flow_table() {
    survives_a_cleared_flow_table("hash");
}

#[test]
fn source_ip_connections_survive_a_cleared_flow_table() {
    survives_a_cleared_flow_table("source_ip");
}

/// `max_entries` of the flow table lb holds open (buckets).
fn flow_table_buckets(lb: &LbProcess) -> Vec<u64> {
    let dir = format!("/proc/{}/fdinfo", lb.pid().expect("lb runs"));
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path()).ok()?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            let id = field("map_id:")?;
            let map = aya::maps::MapInfo::from_id(id as u32).ok()?;
            (map.name_as_str() == Some(lb_common::map_names::FLOW_TABLE))
                .then(|| Some((id, field("max_entries:")?)))?
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

#[test]
fn flow_table_size_comes_from_the_policy_and_a_reload_keeps_it() {
    let with_size = |n: u32| {
        format!(
            "{}flow_table:\n  max_flows: {n}\n",
            LabPolicy {
                lines: true,
                ..Default::default()
            }
            .yaml()
        )
    };
    let s = LabRun::start_yaml(&with_size(4096), |_| {});
    let max = |st: &Status| st.0["flow_table"]["max_flows"].as_u64();
    assert_eq!(max(&s.lb.report().unwrap()), Some(4096));
    // Twice as many entries as flows, four to a bucket (a power of two).
    let buckets = s.lb.report().unwrap().0["flow_table"]["buckets"].as_u64();
    assert_eq!(buckets, Some(2048));
    let tables = flow_table_buckets(&s.lb);
    assert_eq!(tables, [2048], "the flow table's buckets");

    // A reload that changes the size keeps the table and says so.
    s.lab.write_file("policy.yaml", &with_size(8192));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.lb.pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + SETTLE;
    while !s
        .lb
        .log()
        .contains("the flow table keeps its size, made for 4096 flows")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning that the table keeps its size after the reload:\n{}",
            s.lb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(max(&s.lb.report().unwrap()), Some(4096));
    assert_eq!(flow_table_buckets(&s.lb), tables);
    // And it still balances.
    let held = open(&s, 3, 33000);
    assert_eq!(held.len(), 3);
}
