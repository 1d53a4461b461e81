//! Differential test: seeded pseudo-random sequences of frames (IPv4 and
//! IPv6, TCP with SYN/ACK/FIN/RST mixes, UDP, VLAN tags, frames not for a
//! listener, truncated and inconsistent ones) interleaved with control events
//! (time steps through `Config::time_offset_ns`, re-applied plans that set a
//! target's weight to 0, lose its MAC or remove it, remove and restore a
//! listener, or swap two listeners' groups, and flow-table entries deleted
//! as an LRU eviction would), run through the real XDP program
//! (BPF_PROG_TEST_RUN) and the reference model (`lb_tests::model`). After
//! every step the two must agree on the verdict, the output bytes, the
//! global counters, the listener and target statistics, the active flows per
//! target, the round-robin positions and the sticky sessions
//! (`lb_tests::harness`); the flow tables are compared every
//! `FLOWS_EVERY` steps. A mismatch names the seed, the step and both results.
//!
//! Time moves in steps of `Q` (100 s) and every timeout is an odd multiple of
//! Q / 2, so the few seconds of real time the test takes (the program's clock
//! runs on, the model's does not) never decide an expiry.
//!
//! Needs root (CAP_BPF).
use std::fmt::Write as _;

use lb_common::FlowKey;
use lb_tests::{
    harness::{self, Harness},
    packets::{Frame, L4, tcp_flags::*},
};
use lb_user::{
    plan::Observed,
    policy::{self, Policy},
};

const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 0x0123_4567_89ab_cdef];
const STEPS: usize = 2000;
const FLOWS_EVERY: usize = 250;
/// The time step (ns).
const Q: u64 = 100 * harness::S;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A target of the policy and what the control events did to it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Normal,
    /// Weight 0: keeps its flows, takes no new ones.
    WeightZero,
    /// No MAC: takes nothing (its flows are re-selected).
    NoMac,
    /// Not in the policy (its id is retired: kept, not reused).
    Removed,
}

struct Target {
    group: &'static str,
    ip: &'static str,
    weight: u16,
    state: State,
}

/// (name, protocol, settings) of each group; timeouts as the module says.
const GROUPS: [(&str, &str, &str); 7] = [
    (
        "hash",
        "tcp",
        "algorithm: hash\n    sticky_session: { duration_s: 150 }",
    ),
    (
        "rr",
        "tcp",
        "algorithm: round_robin\n    sticky_session: { duration_s: 150 }",
    ),
    ("lc", "tcp", "algorithm: least_connections"),
    ("src", "tcp", "algorithm: source_ip"),
    ("dns", "udp", "algorithm: round_robin"),
    (
        "lc6",
        "tcp",
        "algorithm: least_connections\n    sticky_session: { duration_s: 150 }",
    ),
    (
        "dns6",
        "udp",
        "algorithm: least_connections\n    sticky_session: { duration_s: 150 }",
    ),
];

const LISTENERS: &str = r#"listeners:
  - { name: hash, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: hash }
  - { name: rr, vip: 10.0.3.49, protocol: tcp, port: 81, target_group: rr }
  - { name: lc, vip: 10.0.3.49, protocol: tcp, port: 82, target_group: lc }
  - { name: src, vip: 10.0.3.49, protocol: tcp, port: 83, target_group: src }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: lc6 }
  - { name: dns6, vip: "fd00:3::49", protocol: udp, port: 53, target_group: dns6 }
"#;

fn targets() -> Vec<Target> {
    let t = |group, ip, weight| Target {
        group,
        ip,
        weight,
        state: State::Normal,
    };
    vec![
        t("hash", "10.0.3.11", 256),
        t("hash", "10.0.3.12", 256),
        t("hash", "10.0.3.13", 128),
        t("rr", "10.0.3.14", 256),
        t("rr", "10.0.3.15", 128),
        t("rr", "10.0.3.16", 128),
        t("lc", "10.0.3.17", 256),
        t("lc", "10.0.3.18", 256),
        t("lc", "10.0.3.19", 64),
        t("src", "10.0.3.21", 256),
        t("src", "10.0.3.22", 256),
        t("dns", "10.0.3.23", 256),
        t("dns", "10.0.3.24", 256),
        t("dns", "10.0.3.25", 128),
        t("lc6", "fd00:3::31", 256),
        t("lc6", "fd00:3::32", 128),
        t("lc6", "fd00:3::33", 128),
        t("dns6", "fd00:3::34", 256),
        t("dns6", "fd00:3::35", 128),
    ]
}

/// What the control events did to the listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listeners {
    /// Without the `src` listener its id is free; its flows' entries still
    /// name it.
    src: bool,
    /// The `hash` and `rr` listeners swap groups: their flows' targets are
    /// in another group now (re-selected).
    swapped: bool,
}

/// The policy of the targets and listeners as the control events left them,
/// and what the host shows of it.
fn policy(targets: &[Target], listeners: Listeners) -> (Policy, Observed) {
    let mut yaml: String = LISTENERS
        .lines()
        .filter(|l| listeners.src || !l.contains("name: src,"))
        .map(|l| {
            if listeners.swapped && l.contains("name: hash,") {
                format!("{}\n", l.replace("target_group: hash", "target_group: rr"))
            } else if listeners.swapped && l.contains("name: rr,") {
                format!("{}\n", l.replace("target_group: rr", "target_group: hash"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    yaml.push_str("target_groups:\n");
    for (name, protocol, settings) in GROUPS {
        let fin = if protocol == "tcp" {
            "\n    flow_fin_timeout_s: 50"
        } else {
            ""
        };
        write!(
            yaml,
            "  - name: {name}\n    protocol: {protocol}\n    {settings}\n    \
             flow_idle_timeout_s: 250{fin}\n    targets:\n"
        )
        .unwrap();
        let mut any = false;
        for t in targets
            .iter()
            .filter(|t| t.group == name && t.state != State::Removed)
        {
            let weight = if t.state == State::WeightZero {
                0
            } else {
                t.weight
            };
            writeln!(yaml, "      - {{ ip: \"{}\", weight: {weight} }}", t.ip).unwrap();
            any = true;
        }
        if !any {
            yaml = yaml.trim_end_matches("targets:\n").to_string() + "targets: []\n";
        }
    }
    let policy = policy::parse("differential.yaml", &yaml)
        .unwrap_or_else(|e| panic!("test policy: {e}\n{yaml}"));
    let mut observed = harness::observed(&policy);
    for t in targets.iter().filter(|t| t.state == State::NoMac) {
        observed.neighbors.remove(&t.ip.parse().unwrap());
    }
    (policy, observed)
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

/// A frame for a listener (or close to one).
fn listener_frame(rng: &mut Rng) -> Frame {
    let v4 = |rng: &mut Rng| format!("10.0.4.{}", 1 + rng.below(6));
    let v6 = |rng: &mut Rng| format!("fd00:4::{}", 1 + rng.below(4));
    match rng.below(100) {
        0..60 => {
            let port = *rng.pick(&[80, 81, 82, 83]);
            let client = v4(rng);
            let sport = 40000 + rng.below(8) as u16;
            let f = Frame::tcp(&client, sport, "10.0.3.49", port, *rng.pick(&TCP_FLAGS));
            if rng.below(10) == 0 {
                // Record route: the ports sit behind 12 bytes of options.
                f.with_ip_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0])
            } else {
                f
            }
        }
        60..72 => {
            let client = v6(rng);
            let sport = 40000 + rng.below(6) as u16;
            Frame::tcp(&client, sport, "fd00:3::49", 80, *rng.pick(&TCP_FLAGS))
        }
        72..90 => {
            let client = v4(rng);
            let sport = 5000 + rng.below(6) as u16;
            Frame::udp(&client, sport, "10.0.3.49", 53, b"query")
        }
        _ => {
            let client = v6(rng);
            let sport = 5000 + rng.below(4) as u16;
            Frame::udp(&client, sport, "fd00:3::49", 53, b"q6")
        }
    }
}

/// A frame of the sequence, described.
fn frame(rng: &mut Rng) -> (String, Vec<u8>) {
    match rng.below(100) {
        0..82 => {
            let f = listener_frame(rng);
            (format!("{f:?}"), f.build())
        }
        82..88 => {
            let vid = 1 + rng.below(4000) as u16;
            let f = listener_frame(rng).with_vlan(vid);
            let mut bytes = f.build();
            let tag = match rng.below(6) {
                // 802.1ad outer tag: parsed like 802.1Q.
                0 | 1 => {
                    bytes[12..14].copy_from_slice(&[0x88, 0xa8]);
                    "802.1ad"
                }
                // Two tags: only one is parsed, so it is not IP (passed).
                2 => {
                    bytes.splice(16..16, [0x81, 0x00, 0x00, 0x05]);
                    "two tags"
                }
                _ => "802.1Q",
            };
            (format!("{f:?} {tag}"), bytes)
        }
        88..93 => {
            // Not for a listener.
            let f = match rng.below(5) {
                0 => Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 8080, SYN),
                1 => Frame::tcp("10.0.4.1", 40000, "10.0.3.2", 80, SYN),
                2 => Frame::udp("10.0.4.1", 5000, "10.0.3.49", 54, b"x"),
                3 => Frame::tcp("fd00:4::1", 40000, "fd00:3::2", 80, ACK),
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
        _ => {
            // Truncated, inconsistent or a fragment.
            let f = listener_frame(rng);
            let mut bytes = f.build();
            let how = rng.below(4);
            match how {
                0 | 1 => {
                    let len = 14 + rng.below(bytes.len() as u64 - 14) as usize;
                    bytes.truncate(len);
                }
                2 if bytes[12..14] == [0x08, 0x00] => bytes[14] = 0x44,
                _ if bytes[12..14] == [0x08, 0x00] => {
                    bytes[20] |= 0x20; // MF
                }
                _ => bytes.truncate(14 + 39),
            }
            (
                format!("{f:?} mangled {how} to {} bytes", bytes.len()),
                bytes,
            )
        }
    }
}

/// A flow key of the model's flow table, in a deterministic order.
fn pick_flow(h: &Harness, rng: &mut Rng) -> Option<FlowKey> {
    let mut keys: Vec<FlowKey> = h.model.flows.keys().copied().collect();
    keys.sort_by_key(|k| {
        (
            k.family,
            k.proto,
            k.src_be,
            k.dst_be,
            k.src_port_be,
            k.dst_port_be,
        )
    });
    (!keys.is_empty()).then(|| keys[rng.below(keys.len() as u64) as usize])
}

/// What a sequence covered (the test also asserts it covered enough).
#[derive(Debug, Default)]
struct Tally {
    forwarded: u32,
    new_flows: u32,
    reselected: u32,
    dropped: u32,
    passed: u32,
    least_connections_choices: u32,
    sticky_sessions: usize,
    advances: u32,
    reapplies: u32,
    evictions: u32,
}

fn run_seed(seed: u64) -> Tally {
    let mut rng = Rng(seed);
    let mut targets = targets();
    let mut listeners = Listeners {
        src: true,
        swapped: false,
    };
    let (p, observed) = policy(&targets, listeners);
    let mut h = Harness::with_policy(&p, &observed);
    h.every_session_each_frame = false;
    let mut tally = Tally::default();
    let mut history: Vec<String> = Vec::new();
    let fail = |step: usize, event: &str, history: &[String], mismatch: String| -> ! {
        let recent = history[history.len().saturating_sub(8)..].join("\n  ");
        panic!(
            "seed {seed:#x}, step {step}: {event}\nprogram and model differ: {mismatch}\nrecent steps:\n  {recent}"
        )
    };
    for step in 0..STEPS {
        let roll = rng.below(1000);
        let event = if roll < 25 {
            let k = 1 + rng.below(3);
            h.advance_ns(k * Q);
            tally.advances += 1;
            format!("advance {} s", k * Q / harness::S)
        } else if roll < 35 {
            let i = rng.below(targets.len() as u64) as usize;
            let state = *rng.pick(&[
                State::Normal,
                State::Normal,
                State::WeightZero,
                State::NoMac,
                State::Removed,
            ]);
            // Now and then a whole group (none of its targets takes new
            // flows: they are dropped, `no_target`).
            let whole = state != State::Normal && rng.below(4) == 0;
            let group = targets[i].group;
            for t in targets
                .iter_mut()
                .enumerate()
                .filter(|(j, t)| *j == i || (whole && t.group == group))
            {
                t.1.state = state;
            }
            let (p, observed) = policy(&targets, listeners);
            h.apply_policy(&p, &observed);
            tally.reapplies += 1;
            if whole {
                format!("re-apply: group {group} {state:?}")
            } else {
                format!("re-apply: {} {state:?}", targets[i].ip)
            }
        } else if roll < 38 {
            if rng.below(2) == 0 {
                listeners.src = !listeners.src;
            } else {
                listeners.swapped = !listeners.swapped;
            }
            let (p, observed) = policy(&targets, listeners);
            h.apply_policy(&p, &observed);
            tally.reapplies += 1;
            format!("re-apply: {listeners:?}")
        } else if roll < 53 {
            let Some(key) = pick_flow(&h, &mut rng) else {
                continue;
            };
            if let Err(mismatch) = h.evict(&key) {
                fail(step, "evict", &history, mismatch);
            }
            tally.evictions += 1;
            format!("evict {key:?}")
        } else {
            let (what, bytes) = frame(&mut rng);
            match h.compare(&bytes) {
                Ok(o) => {
                    tally.forwarded += o.target.is_some() as u32;
                    tally.new_flows += o.new_flow as u32;
                    tally.reselected +=
                        o.counters.contains(&lb_common::Counter::FlowReselected) as u32;
                    tally.dropped += (o.action == lb_tests::model::XDP_DROP) as u32;
                    tally.passed += (o.action == lb_tests::model::XDP_PASS) as u32;
                    tally.least_connections_choices +=
                        o.least_connections.as_ref().is_some_and(|c| c.len() > 1) as u32;
                    tally.sticky_sessions = tally.sticky_sessions.max(h.model.sticky.len());
                    let s = format!("step {step}: frame {what} -> {} {:?}", o.action, o.target);
                    history.push(s);
                    continue;
                }
                Err(mismatch) => fail(step, &format!("frame {what}"), &history, mismatch),
            }
        };
        if let Err(mismatch) = h.compare_state() {
            fail(step, &event, &history, mismatch);
        }
        history.push(format!("step {step}: {event}"));
        if step % FLOWS_EVERY == 0
            && let Err(mismatch) = h.compare_flows()
        {
            fail(step, "flow tables", &history, mismatch);
        }
    }
    if let Err(mismatch) = h.compare_flows() {
        fail(STEPS, "flow tables at the end", &history, mismatch);
    }
    tally
}

#[test]
fn program_and_model_agree_on_seeded_sequences() {
    let mut all = Tally::default();
    for seed in SEEDS {
        let start = std::time::Instant::now();
        let t = run_seed(seed);
        eprintln!("seed {seed:#x}: {t:?} in {:?}", start.elapsed());
        // Every sequence covers the common paths.
        assert!(
            t.new_flows > 300 && t.forwarded > 800 && t.passed > 50,
            "{t:?}"
        );
        assert!(
            t.least_connections_choices > 20 && t.sticky_sessions > 3,
            "{t:?}"
        );
        assert!(
            t.advances > 10 && t.reapplies > 5 && t.evictions > 5,
            "{t:?}"
        );
        all.reselected += t.reselected;
        all.dropped += t.dropped;
    }
    // The rarer ones over all seeds.
    assert!(all.reselected > 5 && all.dropped > 5, "{all:?}");
}
