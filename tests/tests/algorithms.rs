//! Golden packets for the new-flow algorithms and sticky sessions, through
//! the real XDP program (BPF_PROG_TEST_RUN) with maps written by the real
//! compile -> apply path. A test run executes on one CPU, so the round-robin
//! counter advances by exactly one per new flow and its order is checked
//! exactly; time is driven through `Config::time_offset_ns`. Every frame is
//! also cross-checked against the reference model (`lb_tests::model`): the
//! round-robin position, each least-connections choice (one of the targets
//! some pair of random draws leads to), the sticky sessions and the active
//! flows after every frame.
//!
//! Needs root (CAP_BPF). Each test loads its own program and maps.
use std::collections::{BTreeMap, BTreeSet};

use lb_tests::{
    harness::{self, mac_of},
    model::{Outcome, TargetKey, XDP_DROP, XDP_TX},
    packets::{Frame, LB_MAC, tcp_flags::*},
};
use lb_user::{
    health::HealthState,
    plan::{MapPlan, Observed},
    policy,
};

const SECOND: u64 = 1_000_000_000;

/// The shared harness (every frame is also run through the reference model,
/// which must agree on the verdict, the bytes, the counters, the active
/// flows, the round-robin position and the sticky sessions), with the direct
/// checks of these tests on top.
struct Harness {
    h: harness::Harness,
    plan: MapPlan,
}

impl Harness {
    fn new(yaml: &str) -> Harness {
        let h = harness::Harness::new(yaml);
        Harness {
            plan: h.plan.clone(),
            h,
        }
    }

    /// Applies another policy (every target's MAC known), keeping the ids
    /// and the time offset.
    fn reapply(&mut self, yaml: &str) {
        self.h.reapply(yaml);
        self.plan = self.h.plan.clone();
    }

    fn apply_policy(&mut self, policy: &policy::Policy, observed: &Observed) {
        self.h.apply_policy(policy, observed);
        self.plan = self.h.plan.clone();
    }

    /// Moves data-plane time forward.
    fn advance(&mut self, ns: u64) {
        self.h.advance_ns(ns);
        self.plan = self.h.plan.clone();
    }

    /// The verdict and the target the frame went to (by its MAC).
    fn run(&mut self, frame: &[u8]) -> (u32, Option<TargetKey>) {
        let o = self.h.check("frame", frame);
        let out = &o.output;
        let target = (o.action == XDP_TX).then(|| {
            assert_eq!(&out[6..12], &LB_MAC, "source MAC");
            assert_eq!(&out[12..], &frame[12..], "only the MACs change");
            let target = self
                .plan
                .targets
                .iter()
                .find(|t| t.info.mac == out[..6])
                .map(|t| t.key())
                .expect("a target's MAC");
            assert_eq!(o.target.as_ref(), Some(&target), "the model's target");
            target
        });
        (o.action, target)
    }

    /// A new TCP flow (SYN) from `client`:`port`: the model's outcome (the
    /// program agreed with it).
    fn syn_outcome(&mut self, client: &str, port: u16) -> Outcome {
        let frame = Frame::tcp(client, port, "10.0.3.49", 80, SYN).build();
        let o = self.h.check("syn", &frame);
        assert_eq!(o.action, XDP_TX, "{client}:{port}");
        o
    }

    /// The group's round-robin position as the data plane holds it.
    fn position(&self) -> u64 {
        self.h
            .dp
            .round_robin_position(self.plan.groups[0].id)
            .unwrap()
    }

    /// A new TCP flow (SYN) from `client`:`port`; its target.
    fn syn(&mut self, client: &str, port: u16) -> TargetKey {
        let frame = Frame::tcp(client, port, "10.0.3.49", 80, SYN).build();
        let (action, target) = self.run(&frame);
        assert_eq!(action, XDP_TX, "{client}:{port}");
        target.unwrap()
    }

    /// The group's round-robin order (its table, translated).
    fn order(&self) -> Vec<TargetKey> {
        let group = &self.plan.groups[0];
        group
            .table
            .iter()
            .map(|id| self.plan.targets.iter().find(|t| t.id == id).unwrap().key())
            .collect()
    }
}

/// Target 10.0.3.`last` of the group `web` (`group`'s targets).
fn t(last: u8) -> TargetKey {
    harness::target("web", &format!("10.0.3.{last}"))
}

/// The targets `t(last)`.
fn ts<const N: usize>(lasts: [u8; N]) -> Vec<TargetKey> {
    lasts.iter().map(|&l| t(l)).collect()
}

/// One tcp listener and its group of three targets (weights 256, 256, 128:
/// converted 100, 100, 50) with `settings` added to the group.
fn group(settings: &str) -> String {
    format!(
        "listeners:
  - {{ name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }}
target_groups:
  - name: web
    protocol: tcp
    table_size: 1021
{settings}
    targets:
      - {{ ip: 10.0.3.11, weight: 256 }}
      - {{ ip: 10.0.3.12, weight: 256 }}
      - {{ ip: 10.0.3.13, weight: 128 }}
"
    )
}

#[test]
fn round_robin_follows_the_smooth_weighted_order() {
    let mut h = Harness::new(&group("    algorithm: round_robin"));
    let order = h.order();
    assert_eq!(order, ts([11, 12, 13, 11, 12]), "2:2:1, spread out");
    // Four cycles of new flows, from one client and from many: exactly the
    // order, whatever the flows' addresses.
    let got: Vec<TargetKey> = (0..20u16)
        .map(|i| h.syn(&format!("10.0.4.{}", i % 7), 40000 + i))
        .collect();
    let want: Vec<TargetKey> = order.iter().cycle().take(20).cloned().collect();
    assert_eq!(got, want);
    assert_eq!(h.position(), 20, "one turn per new flow");
    // Established flows stay where they went (no turn taken).
    for i in 0..20u16 {
        let ack = Frame::tcp(
            &format!("10.0.4.{}", i % 7),
            40000 + i,
            "10.0.3.49",
            80,
            ACK,
        )
        .build();
        assert_eq!(h.run(&ack).1.as_ref(), Some(&want[i as usize]), "flow {i}");
    }
    assert_eq!(h.position(), 20, "established flows take no turn");
    assert_eq!(h.syn("10.0.4.9", 50000), order[0], "the next turn");

    // UDP takes turns too.
    let mut h = Harness::new(
        &group("    algorithm: round_robin")
            .replace("protocol: tcp, port: 80", "protocol: udp, port: 53")
            .replace("    protocol: tcp\n", "    protocol: udp\n"),
    );
    let got: Vec<TargetKey> = (0..10u16)
        .map(|i| {
            let frame = Frame::udp("10.0.4.1", 5000 + i, "10.0.3.49", 53, b"q").build();
            h.run(&frame).1.unwrap()
        })
        .collect();
    assert_eq!(got, ts([11, 12, 13, 11, 12, 11, 12, 13, 11, 12]));
}

/// A group table stores two slots an 8-byte element (after the slot count):
/// orders of odd and even lengths both reach their last slot, and every slot
/// is read from the right half of its element.
#[test]
fn round_robin_walks_orders_of_odd_and_even_length() {
    let mut lengths = BTreeSet::new();
    for weights in [
        [256, 0, 0],
        [256, 256, 0],
        [256, 128, 0],
        [256, 128, 128],
        [256, 256, 128],
        [256, 256, 256],
    ] {
        let yaml = group("    algorithm: round_robin")
            .replace(
                "10.0.3.11, weight: 256",
                &format!("10.0.3.11, weight: {}", weights[0]),
            )
            .replace(
                "10.0.3.12, weight: 256",
                &format!("10.0.3.12, weight: {}", weights[1]),
            )
            .replace(
                "10.0.3.13, weight: 128",
                &format!("10.0.3.13, weight: {}", weights[2]),
            );
        let mut h = Harness::new(&yaml);
        let order = h.order();
        lengths.insert(order.len());
        let n = 2 * order.len() as u16;
        let got: Vec<TargetKey> = (0..n).map(|i| h.syn("10.0.4.1", 40000 + i)).collect();
        let want: Vec<TargetKey> = order.iter().cycle().take(n.into()).cloned().collect();
        assert_eq!(got, want, "weights {weights:?}");
    }
    assert!(
        lengths.iter().any(|l| l % 2 == 0) && lengths.iter().any(|l| l % 2 == 1),
        "orders of both parities: {lengths:?}"
    );
}

/// BPF_PROG_TEST_RUN runs the program on the calling thread's CPU: new flows
/// seen alternately on CPU 0 and CPU 1 still follow the one order (a counter
/// per CPU would give 1, 1, 2, 2, 3, 3, ...).
#[test]
fn round_robin_order_is_shared_by_all_cpus() {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .take(2)
        .collect();
    if cpus.len() < 2 {
        lb_tests::skip("the process may run on one CPU only: nothing to share");
        return;
    }
    let pin = |cpu: usize| {
        let mut set = CpuSet::new();
        set.set(cpu).unwrap();
        sched_setaffinity(Pid::from_raw(0), &set).unwrap();
    };
    let mut h = Harness::new(&group("    algorithm: round_robin"));
    let order = h.order();
    let got: Vec<TargetKey> = (0..20u16)
        .map(|i| {
            pin(cpus[i as usize % 2]);
            h.syn("10.0.4.1", 40000 + i)
        })
        .collect();
    sched_setaffinity(Pid::from_raw(0), &allowed).unwrap();
    let want: Vec<TargetKey> = order.iter().cycle().take(20).cloned().collect();
    assert_eq!(got, want, "CPUs {cpus:?}");
}

#[test]
fn round_robin_honours_weight_zero_and_health() {
    let yaml = group("    algorithm: round_robin");
    let mut h = Harness::new(&yaml.replace("10.0.3.12, weight: 256", "10.0.3.12, weight: 0"));
    assert_eq!(h.order(), ts([11, 13, 11]), "weight 0 has no turn");
    let got: BTreeSet<TargetKey> = (0..30u16).map(|i| h.syn("10.0.4.1", 40000 + i)).collect();
    assert_eq!(got, ts([11, 13]).into_iter().collect());

    // An unhealthy target leaves the order; with none healthy, all are last
    // resort.
    let checked = yaml.replace(
        "    algorithm: round_robin",
        "    algorithm: round_robin\n    health_check: { type: tcp, interval_s: 2, timeout_s: 1 }",
    );
    let policy = policy::parse("a.yaml", &checked).unwrap();
    let web = |ip: &str| lb_user::ids::TargetKey::new("web", ip.parse().unwrap());
    let mut observed = Observed {
        iface_mac: LB_MAC,
        neighbors: policy.target_groups[0]
            .targets
            .iter()
            .map(|t| (t.ip, mac_of(&t.ip)))
            .collect(),
        ..Default::default()
    };
    for (ip, health) in [
        ("10.0.3.11", HealthState::Unhealthy),
        ("10.0.3.12", HealthState::Healthy),
        ("10.0.3.13", HealthState::Healthy),
    ] {
        observed.health.insert(web(ip), health);
    }
    h.apply_policy(&policy, &observed);
    assert_eq!(h.order(), ts([12, 13, 12]));
    let got: BTreeSet<TargetKey> = (0..30u16).map(|i| h.syn("10.0.4.2", 40000 + i)).collect();
    assert_eq!(got, ts([12, 13]).into_iter().collect());
    for ip in ["10.0.3.12", "10.0.3.13"] {
        observed.health.insert(web(ip), HealthState::Unhealthy);
    }
    h.apply_policy(&policy, &observed);
    assert!(h.plan.groups[0].last_resort);
    let got: BTreeSet<TargetKey> = (0..30u16).map(|i| h.syn("10.0.4.3", 40000 + i)).collect();
    assert_eq!(
        got,
        ts([11, 12, 13]).into_iter().collect(),
        "last resort: every target"
    );

    // No target at all: fail closed.
    let mut h = Harness::new(
        &yaml
            .replace("weight: 256", "weight: 0")
            .replace("weight: 128", "weight: 0"),
    );
    assert!(h.order().is_empty());
    let frame = Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 80, SYN).build();
    assert_eq!(h.run(&frame).0, XDP_DROP);
}

#[test]
fn least_connections_sends_new_flows_away_from_a_loaded_target() {
    let yaml = group("    algorithm: least_connections");
    // Ten flows on 10.0.3.11 while it is the only one with a weight.
    let mut h = Harness::new(
        &yaml
            .replace("10.0.3.12, weight: 256", "10.0.3.12, weight: 0")
            .replace("weight: 128", "weight: 0"),
    );
    for i in 0..10u16 {
        assert_eq!(h.syn("10.0.4.1", 40000 + i), t(11));
    }
    // All three equal now: the next 10 new flows go to .12 and .13
    // (neither can reach .11's ten before the last of them, so .11 never
    // wins a tie), then .11 takes its share.
    h.reapply(&yaml.replace("weight: 128", "weight: 256"));
    let mut per = BTreeMap::<TargetKey, u32>::new();
    for i in 0..10u16 {
        let o = h.syn_outcome("10.0.4.2", 40000 + i);
        // No pair of draws can pick the loaded target (the model's set of
        // possible choices, which the program's choice was checked against).
        let candidates = o.least_connections.expect("least connections");
        assert!(!candidates.contains(&t(11)), "{candidates:?}");
        *per.entry(o.target.unwrap()).or_default() += 1;
    }
    assert_eq!(per.get(&t(11)), None, "{per:?}");
    assert_eq!(per.values().sum::<u32>(), 10);
    // 68 more: every target ends within a few flows of 88 / 3.
    for i in 0..68u16 {
        *per.entry(h.syn("10.0.4.3", 40000 + i)).or_default() += 1;
    }
    let total = |last| per.get(&t(last)).copied().unwrap_or(0) + if last == 11 { 10 } else { 0 };
    for last in 11..=13 {
        assert!(total(last).abs_diff(29) <= 6, "target .{last}: {per:?}");
    }
}

#[test]
fn least_connections_follows_weight() {
    // Converted weights 100, 100, 50: active flows grow 2:2:1.
    let mut h = Harness::new(&group("    algorithm: least_connections"));
    let mut per = BTreeMap::<TargetKey, u32>::new();
    for i in 0..500u16 {
        *per.entry(h.syn("10.0.4.1", 30000 + i)).or_default() += 1;
    }
    // Two choices keep each within a few flows of its share (200, 200, 100).
    let got: Vec<u32> = per.values().copied().collect();
    assert!(
        got[0].abs_diff(200) <= 6 && got[1].abs_diff(200) <= 6 && got[2].abs_diff(100) <= 6,
        "{got:?}"
    );
}

#[test]
fn sticky_sessions_keep_a_client_on_its_first_target_until_they_expire() {
    let sticky = "    algorithm: round_robin\n    sticky_session: { enabled: true, type: source_ip, duration_s: 10 }";
    let yaml = group(sticky);
    let mut h = Harness::new(&yaml);
    let order = h.order();
    let mut turn = 0usize;
    let mut next_turn = || {
        let t = order[turn % order.len()].clone();
        turn += 1;
        t
    };
    // Client A's first flow takes the first turn, then sticks; client B's
    // takes the second turn. Only first flows take turns.
    let a = h.syn("10.0.4.1", 40000);
    assert_eq!(a, next_turn());
    let b = h.syn("10.0.4.2", 40000);
    assert_eq!(b, next_turn());
    assert_ne!(a, b);
    let sessions = h.h.dp.sticky_sessions().unwrap();
    let mut targets: Vec<u32> = sessions.iter().map(|(_, s)| s.target_id).collect();
    targets.sort();
    let mut want = vec![h.h.target_id(&a).unwrap(), h.h.target_id(&b).unwrap()];
    want.sort();
    assert_eq!(targets, want, "one session per client");
    for i in 1..30u16 {
        assert_eq!(h.syn("10.0.4.1", 40000 + i), a, "A's flow {i}");
        assert_eq!(h.syn("10.0.4.2", 40000 + i), b, "B's flow {i}");
    }

    // 9 s later A is still on its target; past 10 s from its first flow it
    // is assigned again (the next turn) and stays there.
    h.advance(9 * SECOND);
    assert_eq!(h.syn("10.0.4.1", 41000), a);
    h.advance(2 * SECOND);
    let again = h.syn("10.0.4.1", 41001);
    assert_eq!(again, next_turn());
    for i in 2..10u16 {
        assert_eq!(h.syn("10.0.4.1", 41000 + i), again);
    }

    // A target that may no longer take new flows (weight 0 here, or
    // unhealthy, or removed) releases its clients at once.
    let stuck = again;
    let ip = stuck.ip.to_string();
    h.reapply(
        &yaml
            .replace(&format!("{ip}, weight: 256"), &format!("{ip}, weight: 0"))
            .replace(&format!("{ip}, weight: 128"), &format!("{ip}, weight: 0")),
    );
    let moved = h.syn("10.0.4.1", 42000);
    assert_ne!(moved, stuck);
    for i in 1..10u16 {
        assert_eq!(h.syn("10.0.4.1", 42000 + i), moved);
    }
}

#[test]
fn sticky_sessions_work_with_every_algorithm_and_not_with_source_ip() {
    for algorithm in ["hash", "round_robin", "least_connections"] {
        let mut h = Harness::new(&group(&format!(
            "    algorithm: {algorithm}\n    sticky_session: {{ duration_s: 60 }}"
        )));
        for client in 1..=12u8 {
            let src = format!("10.0.5.{client}");
            let first = h.syn(&src, 30000);
            for i in 1..15u16 {
                assert_eq!(h.syn(&src, 30000 + i), first, "{algorithm}: {src}");
            }
        }
        // Without sticky sessions the same ports spread.
        let mut h = Harness::new(&group(&format!("    algorithm: {algorithm}")));
        let spread: BTreeSet<TargetKey> =
            (0..30u16).map(|i| h.syn("10.0.5.1", 30000 + i)).collect();
        assert!(spread.len() > 1, "{algorithm}: {spread:?}");
    }
    // With source_ip the setting is ignored (the hash keeps clients anyway).
    let h = Harness::new(&group(
        "    algorithm: source_ip\n    sticky_session: { duration_s: 60 }",
    ));
    assert_eq!(h.plan.groups[0].info.flags, 0);
}

#[test]
fn sticky_sessions_key_the_whole_ipv6_address() {
    let yaml = r#"
listeners:
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
target_groups:
  - name: web6
    protocol: tcp
    algorithm: round_robin
    sticky_session: { duration_s: 60 }
    targets: [ { ip: "fd00:3::11" }, { ip: "fd00:3::12" }, { ip: "fd00:3::13" } ]
"#;
    let mut h = Harness::new(yaml);
    let mut syn6 = |client: &str, port: u16| {
        let frame = Frame::tcp(client, port, "fd00:3::49", 80, SYN).build();
        h.run(&frame).1.expect("forwarded")
    };
    // Clients that differ only in the last word, or only in the first, are
    // different clients: each takes the next turn and then stays.
    let clients = ["fd00:4::1", "fd00:4::2", "fd01:4::1"];
    let first: Vec<TargetKey> = clients.iter().map(|c| syn6(c, 30000)).collect();
    let want = ["fd00:3::11", "fd00:3::12", "fd00:3::13"].map(|ip| harness::target("web6", ip));
    assert_eq!(first, want);
    for i in 1..20u16 {
        for (c, t) in clients.iter().zip(&first) {
            assert_eq!(&syn6(c, 30000 + i), t, "{c}");
        }
    }
}
