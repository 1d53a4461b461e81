//! Differential test: seeded pseudo-random sequences of frames (IPv4 and
//! IPv6, TCP with SYN/ACK/FIN/RST mixes, UDP, VLAN tags, frames not for a
//! listener, truncated and inconsistent ones) interleaved with control events,
//! run through the real XDP program (BPF_PROG_TEST_RUN) and the reference
//! model (`lb_tests::model`). The control events:
//! - time steps through `Config::time_offset_ns`;
//! - flow-table entries deleted as the sweeper deletes them;
//! - policy changes, each compiled as `lb run` compiles (ids assigned from the
//!   applied plan's) and applied: a target's weight set to 0, its MAC lost,
//!   the target removed (its id retired) or added back (its id again), or a
//!   new target added to a group; the targets of a group, the groups or the
//!   listeners reordered in the file; another group's weights changed;
//!   another group's algorithm changed (round robin, least connections, hash
//!   and back); a listener removed and restored (its id free meanwhile), two
//!   listeners swapping groups, and a new listener with its new group added
//!   at the top of the file and removed again (a new listener takes the
//!   lowest free id: the one a removed listener's flow entries still name).
//!
//! After every step the two must agree on the verdict, the output bytes, the
//! global counters, the listener and target statistics, the active flows per
//! target, the round-robin positions and the sticky sessions, all compared
//! by identity (`lb_tests::harness`), and on the flow-table entry of the
//! frame's flow; the whole flow tables are compared every
//! `Sequence::flows_every` steps. After each policy change, flows whose
//! target stays in its listener's group are sent a packet: each must keep
//! its target (the model's outcome, which the program's must equal). A
//! mismatch names the seed, the step, the last steps, the policy and both
//! results.
//!
//! Time moves in steps of `Q` (100 s) and every timeout is an odd multiple of
//! Q / 2, so the few seconds of real time the test takes (the program's clock
//! runs on, the model's does not) never decide an expiry.
//!
//! The sequences run twice: on a flow table these flows never fill
//! (`ROOMY`), and on one of 32 entries (`CROWDED`), where new flows evict
//! others by the table's rules (`lb_common::flow_table`: the flow the
//! client ended, else one seen once, else the established flow seen least
//! recently, never one within its protection), which the model predicts
//! (`lb_tests::model::table`): the entry each new flow takes, the flow it
//! evicts (`flow_evicted`, uncounted) or that it goes unremembered
//! (`flow_insert_failed`), and every later packet of an evicted flow (a
//! miss). There, most frames are packets of flows just sent, so that many
//! flows are established; time also moves in small steps (4 s, up to 12 s
//! into a `Q`, then the rest of it), so that the protection both holds and
//! expires while no age comes within 38 s of a timeout. The model knows
//! the program's last-seen stamps within the clock readings around each
//! frame; where the clock ticked during a frame and two candidates' stamps
//! may be in either order, it takes the program's choice and checks that
//! the rules allow it. The flow table's hash seed is the sequence's, so
//! its flows meet in the same buckets every run (which entries they evict
//! still depends on when the clock ticks).
//!
//! Needs root (CAP_BPF).
use std::{
    collections::{HashSet, VecDeque},
    fmt::Write as _,
};

use lb_common::{Counter, FlowKey};
use lb_tests::{
    harness::{self, Harness},
    model::{Candidate, Class, Outcome, Step, TargetKey, step},
    packets::{Frame, L4, tcp_flags::*},
};
use lb_user::{
    dataplane::LoadOptions,
    plan::Observed,
    policy::{self, Policy, compile::ip_of},
};

const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 0x0123_4567_89ab_cdef];
const STEPS: usize = 2000;
/// Flows sent a packet after each policy change (at most).
const PROBES: usize = 4;
/// The time step (ns).
const Q: u64 = 100 * harness::S;

/// A kind of sequence: the data plane it runs on, the traffic it sends and
/// how its time moves.
struct Sequence {
    /// Flows the flow table is sized for (`LoadOptions::flow_table_size`).
    flow_table_size: u32,
    /// Source ports per client: IPv4 TCP, IPv6 TCP, IPv4 UDP, IPv6 UDP.
    ports: [u64; 4],
    /// Per cent of the listener frames that are another packet of one of
    /// the `RECENT` flows last sent (which so become established).
    again: u64,
    /// Steps (per mille) that move time.
    time_steps: u64,
    /// Time also moves in small steps (`SMALL`), which an established
    /// flow's protection outlasts or not.
    small_steps: bool,
    /// The flow tables are compared every this many steps.
    flows_every: usize,
}

/// A flow table these flows never fill.
const ROOMY: Sequence = Sequence {
    flow_table_size: 4096,
    ports: [8, 6, 6, 4],
    again: 0,
    time_steps: 25,
    small_steps: false,
    flows_every: 250,
};

/// A flow table of 8 buckets (32 entries) and many more flows, some
/// established, most one packet: new flows evict, or go unremembered when
/// all their candidates are established flows within the protection.
const CROWDED: Sequence = Sequence {
    flow_table_size: 16,
    ports: [64, 32, 32, 16],
    again: 70,
    time_steps: 15,
    small_steps: true,
    flows_every: 10,
};

/// Flows sent again (`Sequence::again`): the last ones sent.
const RECENT: usize = 12;

/// Small time steps (`Sequence::small_steps`): steps of `SMALL` from the
/// start of a `Q` up to `SMALLS` into it, or one of `SMALLS`, then the rest
/// of the Q. An established flow's protection (`flow_table::PROTECT_UNITS`,
/// about 8.6 s) outlasts 4 and 8 s, not 12; no age comes within 38 s of a
/// timeout (an odd multiple of Q / 2).
const SMALL: u64 = 4 * harness::S;
const SMALLS: u64 = 12 * harness::S;

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
    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
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
    /// Not in the policy (its id, if it had one, is retired: kept, not
    /// reused).
    Removed,
}

#[derive(Clone, Debug)]
struct Target {
    group: &'static str,
    ip: &'static str,
    weight: u16,
    state: State,
}

impl Target {
    fn key(&self) -> TargetKey {
        harness::target(self.group, self.ip)
    }
}

/// A group: name, protocol, the two algorithms the control events switch
/// between, and whether its sessions are sticky. Timeouts as the module
/// says.
struct Group {
    name: &'static str,
    protocol: &'static str,
    algorithms: [&'static str; 2],
    sticky: bool,
}

const fn group(
    name: &'static str,
    protocol: &'static str,
    algorithms: [&'static str; 2],
    sticky: bool,
) -> Group {
    Group {
        name,
        protocol,
        algorithms,
        sticky,
    }
}

/// `NEW` is in the policy only while the `new` listener is.
const GROUPS: [Group; 8] = [
    group("new", "tcp", ["round_robin", "hash"], true),
    group("hash", "tcp", ["hash", "least_connections"], true),
    group("rr", "tcp", ["round_robin", "least_connections"], true),
    group("lc", "tcp", ["least_connections", "round_robin"], false),
    group("src", "tcp", ["source_ip", "hash"], false),
    group("dns", "udp", ["round_robin", "least_connections"], false),
    group("lc6", "tcp", ["least_connections", "round_robin"], true),
    group("dns6", "udp", ["least_connections", "hash"], true),
];
const NEW: usize = 0;

/// (name, VIP, protocol, port, group) of each listener.
const LISTENERS: [(&str, &str, &str, u16, &str); 8] = [
    ("new", "10.0.3.49", "tcp", 84, "new"),
    ("hash", "10.0.3.49", "tcp", 80, "hash"),
    ("rr", "10.0.3.49", "tcp", 81, "rr"),
    ("lc", "10.0.3.49", "tcp", 82, "lc"),
    ("src", "10.0.3.49", "tcp", 83, "src"),
    ("dns", "10.0.3.49", "udp", 53, "dns"),
    ("web6", "fd00:3::49", "tcp", 80, "lc6"),
    ("dns6", "fd00:3::49", "udp", 53, "dns6"),
];
const SRC: usize = 4;

/// The targets; the last ones are not in the first policy (added later).
fn targets() -> Vec<Target> {
    let t = |group, ip, weight| Target {
        group,
        ip,
        weight,
        state: State::Normal,
    };
    let spare = |group, ip, weight| Target {
        state: State::Removed,
        ..t(group, ip, weight)
    };
    vec![
        t("new", "10.0.3.41", 256),
        t("new", "10.0.3.42", 128),
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
        spare("hash", "10.0.3.26", 256),
        spare("rr", "10.0.3.27", 64),
        spare("lc", "10.0.3.28", 128),
        spare("dns", "10.0.3.29", 256),
        spare("lc6", "fd00:3::36", 256),
    ]
}

/// The policy as the control events left it: what is in it, and in which
/// order the file has it.
struct World {
    /// In file order, group by group.
    targets: Vec<Target>,
    /// Indices of `GROUPS`, in file order.
    groups: Vec<usize>,
    /// Per group: whether it runs its second algorithm.
    alternate: [bool; GROUPS.len()],
    /// Indices of `LISTENERS`, in file order.
    listeners: Vec<usize>,
    /// The `src` listener is in the policy.
    src: bool,
    /// The `hash` and `rr` listeners swap groups: their flows' targets are
    /// in another group now (re-selected).
    swapped: bool,
    /// The `new` listener and its group are in the policy.
    new: bool,
    /// The group the last change was about, if one.
    touched: Option<&'static str>,
}

impl World {
    fn new() -> World {
        World {
            targets: targets(),
            groups: (0..GROUPS.len()).collect(),
            alternate: [false; GROUPS.len()],
            listeners: (0..LISTENERS.len()).collect(),
            src: true,
            swapped: false,
            new: false,
            touched: None,
        }
    }

    fn listener_in(&self, l: usize) -> bool {
        (l != SRC || self.src) && (l != NEW || self.new)
    }

    /// The group of listener `l`.
    fn group_of(&self, l: usize) -> &'static str {
        match (LISTENERS[l].4, self.swapped) {
            ("hash", true) => "rr",
            ("rr", true) => "hash",
            (group, _) => group,
        }
    }

    /// Whether `target` is in the policy and may take its flows' packets.
    fn keeps_flows(&self, target: &TargetKey) -> bool {
        let group_in = target.group != GROUPS[NEW].name || self.new;
        group_in
            && self
                .targets
                .iter()
                .any(|t| t.key() == *target && matches!(t.state, State::Normal | State::WeightZero))
    }

    fn yaml(&self) -> String {
        let mut yaml = String::from("listeners:\n");
        for &l in self.listeners.iter().filter(|&&l| self.listener_in(l)) {
            let (name, vip, protocol, port, _) = LISTENERS[l];
            let group = self.group_of(l);
            writeln!(
                yaml,
                "  - {{ name: {name}, vip: \"{vip}\", protocol: {protocol}, port: {port}, target_group: {group} }}"
            )
            .unwrap();
        }
        yaml.push_str("target_groups:\n");
        for &g in self.groups.iter().filter(|&&g| g != NEW || self.new) {
            let Group {
                name,
                protocol,
                algorithms,
                sticky,
            } = GROUPS[g];
            let algorithm = algorithms[self.alternate[g] as usize];
            write!(
                yaml,
                "  - name: {name}\n    protocol: {protocol}\n    algorithm: {algorithm}\n    \
                 flow_idle_timeout_s: 250\n"
            )
            .unwrap();
            if sticky {
                yaml.push_str("    sticky_session: { duration_s: 150 }\n");
            }
            if protocol == "tcp" {
                yaml.push_str("    flow_fin_timeout_s: 50\n");
            }
            let targets: Vec<&Target> = self
                .targets
                .iter()
                .filter(|t| t.group == name && t.state != State::Removed)
                .collect();
            if targets.is_empty() {
                yaml.push_str("    targets: []\n");
                continue;
            }
            yaml.push_str("    targets:\n");
            for t in targets {
                let weight = if t.state == State::WeightZero {
                    0
                } else {
                    t.weight
                };
                writeln!(yaml, "      - {{ ip: \"{}\", weight: {weight} }}", t.ip).unwrap();
            }
        }
        yaml
    }

    /// The policy and what the host shows of it.
    fn policy(&self) -> (String, Policy, Observed) {
        let yaml = self.yaml();
        let policy = policy::parse("differential.yaml", &yaml)
            .unwrap_or_else(|e| panic!("test policy: {e}\n{yaml}"));
        let mut observed = harness::observed(&policy);
        for t in self.targets.iter().filter(|t| t.state == State::NoMac) {
            observed.neighbors.remove(&t.ip.parse().unwrap());
        }
        (yaml, policy, observed)
    }

    /// A policy change; its description.
    fn change(&mut self, rng: &mut Rng, tally: &mut Tally) -> String {
        self.touched = None;
        match rng.below(100) {
            0..30 => self.set_state(rng),
            30..42 => {
                tally.targets_added += 1;
                self.add_target(rng)
            }
            42..57 => {
                tally.reorders += 1;
                self.reorder(rng)
            }
            57..69 => {
                tally.reweighs += 1;
                self.reweigh(rng)
            }
            69..81 => {
                tally.algorithm_changes += 1;
                self.switch_algorithm(rng)
            }
            _ => {
                tally.listener_changes += 1;
                self.change_listeners(rng)
            }
        }
    }

    /// A target's weight set to 0, its MAC lost or found, or the target
    /// removed or back; now and then a whole group's.
    fn set_state(&mut self, rng: &mut Rng) -> String {
        let i = rng.below(self.targets.len() as u64) as usize;
        let state = *rng.pick(&[
            State::Normal,
            State::Normal,
            State::WeightZero,
            State::NoMac,
            State::Removed,
        ]);
        // A whole group: none of its targets takes new flows (they are
        // dropped, `no_target`).
        let whole = state != State::Normal && rng.below(4) == 0;
        let group = self.targets[i].group;
        self.touched = Some(group);
        for (_, t) in self
            .targets
            .iter_mut()
            .enumerate()
            .filter(|(j, t)| *j == i || (whole && t.group == group))
        {
            t.state = state;
        }
        if whole {
            format!("group {group} {state:?}")
        } else {
            format!("{} {state:?}", self.targets[i].ip)
        }
    }

    /// A target added: back (its id again) or new (the lowest free id).
    fn add_target(&mut self, rng: &mut Rng) -> String {
        let removed: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].state == State::Removed)
            .collect();
        if removed.is_empty() {
            return "add a target: none to add".into();
        }
        let t = &mut self.targets[*rng.pick(&removed)];
        t.state = State::Normal;
        self.touched = Some(t.group);
        format!("add {} to {}", t.ip, t.group)
    }

    /// The targets of a group, the groups or the listeners in another order.
    fn reorder(&mut self, rng: &mut Rng) -> String {
        match rng.below(3) {
            0 => {
                let g = GROUPS[rng.below(GROUPS.len() as u64) as usize].name;
                let at: Vec<usize> = (0..self.targets.len())
                    .filter(|&i| self.targets[i].group == g)
                    .collect();
                let mut moved: Vec<Target> = at.iter().map(|&i| self.targets[i].clone()).collect();
                rng.shuffle(&mut moved);
                for (i, t) in at.into_iter().zip(moved) {
                    self.targets[i] = t;
                }
                self.touched = Some(g);
                format!("reorder the targets of {g}")
            }
            1 => {
                rng.shuffle(&mut self.groups);
                "reorder the groups".into()
            }
            _ => {
                rng.shuffle(&mut self.listeners);
                "reorder the listeners".into()
            }
        }
    }

    /// New weights for a group's targets.
    fn reweigh(&mut self, rng: &mut Rng) -> String {
        let g = GROUPS[rng.below(GROUPS.len() as u64) as usize].name;
        for t in self.targets.iter_mut().filter(|t| t.group == g) {
            t.weight = *rng.pick(&[1, 32, 64, 128, 200, 256]);
        }
        self.touched = Some(g);
        format!("reweigh {g}")
    }

    /// A group switches to its other algorithm.
    fn switch_algorithm(&mut self, rng: &mut Rng) -> String {
        let g = rng.below(GROUPS.len() as u64) as usize;
        self.alternate[g] = !self.alternate[g];
        self.touched = Some(GROUPS[g].name);
        let algorithm = GROUPS[g].algorithms[self.alternate[g] as usize];
        format!("{} to {algorithm}", GROUPS[g].name)
    }

    /// `src` removed or back, `hash` and `rr` swapping groups or back, or
    /// the `new` listener and group added (at the top of the file) or
    /// removed.
    fn change_listeners(&mut self, rng: &mut Rng) -> String {
        match rng.below(3) {
            0 => self.src = !self.src,
            1 => self.swapped = !self.swapped,
            _ => {
                self.new = !self.new;
                if self.new {
                    self.listeners.retain(|&l| l != NEW);
                    self.listeners.insert(0, NEW);
                    self.groups.retain(|&g| g != NEW);
                    self.groups.insert(0, NEW);
                }
            }
        }
        format!(
            "listeners: src {}, swapped {}, new {}",
            self.src, self.swapped, self.new
        )
    }
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

/// What a sequence sends: its kind, and the flows it sent last.
struct Traffic {
    sequence: &'static Sequence,
    recent: VecDeque<FlowKey>,
}

impl Traffic {
    fn new(sequence: &'static Sequence) -> Traffic {
        Traffic {
            sequence,
            recent: VecDeque::new(),
        }
    }

    /// A frame for a listener (or close to one), remembered as recent.
    fn listener_frame(&mut self, rng: &mut Rng) -> Frame {
        let again = self.sequence.again;
        let f = if again > 0 && !self.recent.is_empty() && rng.below(100) < again {
            let key = self.recent[rng.below(self.recent.len() as u64) as usize];
            packet_of(&key, *rng.pick(&AGAIN_FLAGS))
        } else {
            listener_frame(rng, &self.sequence.ports)
        };
        if again > 0
            && let Ok((key, _)) = lb_tests::model::parse(&f.build())
            && !self.recent.contains(&key)
        {
            self.recent.push_back(key);
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        f
    }
}

/// The TCP flags of a packet of a flow sent again.
const AGAIN_FLAGS: [u8; 10] = [
    ACK,
    ACK,
    ACK,
    ACK | PSH,
    ACK | PSH,
    ACK | PSH,
    FIN | ACK,
    RST,
    SYN,
    SYN | ACK,
];

/// A new frame for a listener (or close to one), from `ports` source
/// ports per client (IPv4 TCP, IPv6 TCP, IPv4 UDP, IPv6 UDP).
fn listener_frame(rng: &mut Rng, ports: &[u64; 4]) -> Frame {
    let v4 = |rng: &mut Rng| format!("10.0.4.{}", 1 + rng.below(6));
    let v6 = |rng: &mut Rng| format!("fd00:4::{}", 1 + rng.below(4));
    match rng.below(100) {
        0..60 => {
            let port = *rng.pick(&[80, 81, 82, 83, 84]);
            let client = v4(rng);
            let sport = 40000 + rng.below(ports[0]) as u16;
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
            let sport = 40000 + rng.below(ports[1]) as u16;
            Frame::tcp(&client, sport, "fd00:3::49", 80, *rng.pick(&TCP_FLAGS))
        }
        72..90 => {
            let client = v4(rng);
            let sport = 5000 + rng.below(ports[2]) as u16;
            Frame::udp(&client, sport, "10.0.3.49", 53, b"query")
        }
        _ => {
            let client = v6(rng);
            let sport = 5000 + rng.below(ports[3]) as u16;
            Frame::udp(&client, sport, "fd00:3::49", 53, b"q6")
        }
    }
}

/// A frame of the sequence, described.
fn frame(rng: &mut Rng, traffic: &mut Traffic) -> (String, Vec<u8>) {
    match rng.below(100) {
        0..82 => {
            let f = traffic.listener_frame(rng);
            (format!("{f:?}"), f.build())
        }
        82..88 => {
            let vid = 1 + rng.below(4000) as u16;
            let f = traffic.listener_frame(rng).with_vlan(vid);
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
            // Not for a listener: another address, port or protocol, or a
            // listener's frame addressed to another host's MAC (a switch
            // flooding an unknown unicast, a mirror port) or to everyone.
            let f = match rng.below(7) {
                0 => Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 8080, SYN),
                1 => Frame::tcp("10.0.4.1", 40000, "10.0.3.2", 80, SYN),
                2 => Frame::udp("10.0.4.1", 5000, "10.0.3.49", 54, b"x"),
                3 => Frame::tcp("fd00:4::1", 40000, "fd00:3::2", 80, ACK),
                5 => Frame {
                    dst_mac: [0x02, 0, 0, 0, 0, 0x99],
                    ..Frame::tcp("10.0.4.1", 40000, "10.0.3.49", 80, SYN)
                },
                6 => Frame {
                    dst_mac: [0xff; 6],
                    ..Frame::udp("10.0.4.1", 5000, "10.0.3.49", 53, b"x")
                },
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
            let f = traffic.listener_frame(rng);
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

fn differ(mismatch: String) -> String {
    format!("program and model differ: {mismatch}")
}

/// The flow keys of the model's flow table, in a deterministic order.
fn flow_keys(h: &Harness) -> Vec<FlowKey> {
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
    keys
}

/// A flow key of the model's flow table.
fn pick_flow(h: &Harness, rng: &mut Rng) -> Option<FlowKey> {
    let keys = flow_keys(h);
    (!keys.is_empty()).then(|| keys[rng.below(keys.len() as u64) as usize])
}

/// A packet of the flow `key` that goes on with it (an ACK for TCP).
fn next_packet(key: &FlowKey) -> Vec<u8> {
    packet_of(key, ACK).build()
}

/// A packet of the flow `key`, with TCP flags `flags` if it is TCP.
fn packet_of(key: &FlowKey, flags: u8) -> Frame {
    let src = ip_of(key.src_be, key.family).to_string();
    let dst = ip_of(key.dst_be, key.family).to_string();
    let (sport, dport) = (u16::from_be(key.src_port_be), u16::from_be(key.dst_port_be));
    if key.proto == lb_common::PROTO_TCP {
        Frame::tcp(&src, sport, &dst, dport, flags)
    } else {
        Frame::udp(&src, sport, &dst, dport, b"again")
    }
}

/// The live flows of the model under a listener of the policy, each with
/// its target and whether that target must keep it: it is in the
/// listener's group, in the policy and its MAC known (weight 0 or not).
/// The others must be chosen again.
fn live_flows(h: &Harness, world: &World) -> Vec<(FlowKey, TargetKey, bool)> {
    flow_keys(h)
        .into_iter()
        .filter_map(|key| {
            let flow = &h.model.flows[&key];
            let listener = lb_common::ListenerKey {
                addr_be: key.dst_be,
                port_be: key.dst_port_be,
                proto: key.proto,
                family: key.family,
            };
            let group = h.model.view.listener(&listener)?;
            let flags = if key.proto == lb_common::PROTO_TCP {
                ACK
            } else {
                0
            };
            let alive = matches!(
                step(Some(flow), flags, h.model.now_ns, group.timeouts),
                Step::Hit { .. }
            );
            let keeps = flow.target.group == group.name && world.keeps_flows(&flow.target);
            alive.then(|| (key, flow.target.clone(), keeps))
        })
        .collect()
}

/// After a policy change: a packet of up to `PROBES` flows that must keep
/// their targets (those of the group the change was about first), and of up
/// to `PROBES` whose targets left, checked against the model and against
/// that rule (each one added to `history`).
fn probe(
    h: &mut Harness,
    world: &World,
    rng: &mut Rng,
    tally: &mut Tally,
    history: &mut Vec<String>,
) -> Result<(), String> {
    let mut flows = live_flows(h, world);
    rng.shuffle(&mut flows);
    let (mut kept, moved): (Vec<_>, Vec<_>) = flows.into_iter().partition(|f| f.2);
    kept.sort_by_key(|(_, target, _)| Some(target.group.as_str()) != world.touched);
    for (key, target, keeps) in kept
        .into_iter()
        .take(PROBES)
        .chain(moved.into_iter().take(PROBES))
    {
        let o = h
            .compare(&next_packet(&key))
            .map_err(|e| differ(format!("a packet of {key:?} (on {target:?}): {e}")))?;
        history.push(format!(
            "  a packet of {key:?} (on {target:?}) -> {} {:?}",
            o.action, o.target
        ));
        let hit = o.counters.contains(&Counter::FlowHit);
        let reselected = o.counters.contains(&Counter::FlowReselected);
        let ok = if keeps {
            hit && o.target.as_ref() == Some(&target)
        } else {
            reselected && o.target.as_ref() != Some(&target)
        };
        if !ok {
            return Err(format!(
                "a packet of {key:?}, whose target {target:?} {}, went to {:?} ({:?}) \
                 (program and model agree on it)",
                if keeps { "stays" } else { "left" },
                o.target,
                o.counters
            ));
        }
        if keeps {
            tally.pinned += 1;
        } else {
            tally.moved += 1;
        }
    }
    Ok(())
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
    deletions: u32,
    targets_added: u32,
    reorders: u32,
    reweighs: u32,
    algorithm_changes: u32,
    listener_changes: u32,
    /// Listener ids that a new listener took from one that left (the
    /// flow entries of the one that left name another listener now).
    listener_ids_taken_over: u32,
    /// Flows sent a packet after a policy change, which kept their target.
    pinned: u32,
    /// Flows sent a packet after a policy change, whose target had left.
    moved: u32,
    /// New flows that took another flow's entry, by that flow's class:
    /// ended by its client, seen once, established.
    evicted: [u32; 3],
    /// Of those, established flows evicted under `Q` after their last
    /// packet (after a small step: their protection had expired).
    protection_expired: u32,
    /// New flows that went unremembered (every candidate an established
    /// flow within its protection).
    unremembered: u32,
    /// Of those, the ones with a candidate last seen more than 2 s before
    /// (before a small step: its protection still held).
    protection_held: u32,
    /// New flows whose entry the rules left to the program (ages closer
    /// than the model can tell, or the protection either way: the clock
    /// ticked during their frame).
    program_choices: u32,
    /// Packets of flows whose entries had been evicted (misses).
    after_eviction: u32,
}

impl Tally {
    /// Counts what a frame's outcome covered; `evicted`: the flows whose
    /// entries were evicted and that have sent no packet since.
    fn frame(&mut self, o: &Outcome, key: Option<FlowKey>, evicted: &mut HashSet<FlowKey>) {
        self.forwarded += o.target.is_some() as u32;
        self.new_flows += o.new_flow as u32;
        self.reselected += o.counters.contains(&Counter::FlowReselected) as u32;
        self.dropped += (o.action == lb_tests::model::XDP_DROP) as u32;
        self.passed += (o.action == lb_tests::model::XDP_PASS) as u32;
        self.least_connections_choices +=
            o.least_connections.as_ref().is_some_and(|c| c.len() > 1) as u32;
        self.after_eviction += key.is_some_and(|k| evicted.remove(&k)) as u32;
        let Some(insert) = &o.insert else {
            return;
        };
        self.program_choices += insert.tie() as u32;
        // How long before the frame a candidate was last seen (at least).
        let age = |c: &Candidate| insert.now.from.saturating_sub(c.stamped.to);
        if let Some((k, class)) = insert.evicted() {
            let i = match class {
                Class::Ended => 0,
                Class::Once => 1,
                _ => 2,
            };
            self.evicted[i] += 1;
            let c = &insert.candidates[insert.took.unwrap()];
            self.protection_expired += (class == Class::Established && age(c) < Q / 2) as u32;
            evicted.insert(k);
        }
        if insert.took.is_none() {
            self.unremembered += 1;
            let oldest = insert.candidates.iter().map(age).max().unwrap_or(0);
            self.protection_held += (oldest > 2 * harness::S) as u32;
        }
    }

    /// Adds another sequence's counts (the most sticky sessions: the
    /// higher).
    fn add(&mut self, t: &Tally) {
        let sum = [
            (&mut self.forwarded, t.forwarded),
            (&mut self.new_flows, t.new_flows),
            (&mut self.reselected, t.reselected),
            (&mut self.dropped, t.dropped),
            (&mut self.passed, t.passed),
            (
                &mut self.least_connections_choices,
                t.least_connections_choices,
            ),
            (&mut self.advances, t.advances),
            (&mut self.reapplies, t.reapplies),
            (&mut self.deletions, t.deletions),
            (&mut self.targets_added, t.targets_added),
            (&mut self.reorders, t.reorders),
            (&mut self.reweighs, t.reweighs),
            (&mut self.algorithm_changes, t.algorithm_changes),
            (&mut self.listener_changes, t.listener_changes),
            (&mut self.listener_ids_taken_over, t.listener_ids_taken_over),
            (&mut self.pinned, t.pinned),
            (&mut self.moved, t.moved),
            (&mut self.unremembered, t.unremembered),
            (&mut self.protection_expired, t.protection_expired),
            (&mut self.protection_held, t.protection_held),
            (&mut self.program_choices, t.program_choices),
            (&mut self.after_eviction, t.after_eviction),
        ];
        for (a, b) in sum {
            *a += b;
        }
        for (a, b) in self.evicted.iter_mut().zip(t.evicted) {
            *a += b;
        }
        self.sticky_sessions = self.sticky_sessions.max(t.sticky_sessions);
    }
}

/// The next time step (ns): one to three `Q`; with small steps (`SMALL`),
/// also those.
fn time_step(rng: &mut Rng, sequence: &Sequence, now_ns: u64) -> u64 {
    let into = now_ns % Q;
    if sequence.small_steps {
        let roll = rng.below(10);
        if into == 0 && roll < 7 {
            return if roll < 4 { SMALL } else { SMALLS };
        }
        if into != 0 {
            return if into + SMALL <= SMALLS && roll < 7 {
                SMALL
            } else {
                Q - into
            };
        }
    }
    (1 + rng.below(3)) * Q
}

fn run_seed(seed: u64, sequence: &'static Sequence) -> Tally {
    let mut rng = Rng(seed);
    let mut world = World::new();
    let (mut yaml, policy, observed) = world.policy();
    let options = LoadOptions {
        flow_table_size: sequence.flow_table_size,
    };
    let mut h = Harness::with_policy_options(&policy, &observed, &options, Some(seed));
    h.every_session_each_frame = false;
    let mut traffic = Traffic::new(sequence);
    let mut evicted = HashSet::new();
    let mut tally = Tally::default();
    let mut history: Vec<String> = Vec::new();
    // The last listener key of each listener id.
    let mut listener_keys = std::collections::HashMap::new();
    let fail = |step: usize, event: &str, history: &[String], yaml: &str, mismatch: String| -> ! {
        let recent = history[history.len().saturating_sub(8)..].join("\n  ");
        panic!(
            "seed {seed:#x}, step {step}: {event}\n{mismatch}\n\
             recent steps:\n  {recent}\npolicy:\n{yaml}"
        )
    };
    for step in 0..STEPS {
        // Per mille: a time step, a policy change, a deletion, else a frame.
        let roll = rng.below(1000);
        let changes = sequence.time_steps + 30;
        // Whether the step is in `history` already (a re-apply, before
        // the packets that follow it).
        let mut logged = false;
        let event = if roll < sequence.time_steps {
            let ns = time_step(&mut rng, sequence, h.model.now_ns);
            h.advance_ns(ns);
            tally.advances += 1;
            format!("advance {} s", ns / harness::S)
        } else if roll < changes {
            let change = world.change(&mut rng, &mut tally);
            let (text, policy, observed) = world.policy();
            yaml = text;
            h.apply_policy(&policy, &observed);
            tally.reapplies += 1;
            for l in &h.plan.listeners {
                let before = listener_keys.insert(l.info.listener_id, l.key);
                tally.listener_ids_taken_over += before.is_some_and(|k| k != l.key) as u32;
            }
            let event = format!("re-apply: {change}");
            if let Err(mismatch) = h.compare_state() {
                fail(step, &event, &history, &yaml, differ(mismatch));
            }
            history.push(format!("step {step}: {event}"));
            logged = true;
            if let Err(mismatch) = probe(&mut h, &world, &mut rng, &mut tally, &mut history) {
                fail(step, &event, &history, &yaml, mismatch);
            }
            event
        } else if roll < changes + 15 {
            let Some(key) = pick_flow(&h, &mut rng) else {
                continue;
            };
            if let Err(mismatch) = h.delete_flow(&key) {
                fail(step, "delete", &history, &yaml, differ(mismatch));
            }
            tally.deletions += 1;
            format!("delete {key:?}")
        } else {
            let (what, bytes) = frame(&mut rng, &mut traffic);
            match h.compare(&bytes) {
                Ok(o) => {
                    let key = lb_tests::model::parse(&bytes).ok().map(|(k, _)| k);
                    tally.frame(&o, key, &mut evicted);
                    tally.sticky_sessions = tally.sticky_sessions.max(h.model.sticky.len());
                    let s = format!("step {step}: frame {what} -> {} {:?}", o.action, o.target);
                    history.push(s);
                    continue;
                }
                Err(mismatch) => fail(
                    step,
                    &format!("frame {what}"),
                    &history,
                    &yaml,
                    differ(mismatch),
                ),
            }
        };
        if let Err(mismatch) = h.compare_state() {
            fail(step, &event, &history, &yaml, differ(mismatch));
        }
        if !logged {
            history.push(format!("step {step}: {event}"));
        }
        if step % sequence.flows_every == 0
            && let Err(mismatch) = h.compare_flows()
        {
            fail(step, "flow tables", &history, &yaml, differ(mismatch));
        }
    }
    if let Err(mismatch) = h.compare_flows() {
        fail(
            STEPS,
            "flow tables at the end",
            &history,
            &yaml,
            differ(mismatch),
        );
    }
    tally
}

/// Runs the seeds' sequences of this kind and asserts that each covered
/// the common paths; what they covered, added up.
fn run_seeds(sequence: &'static Sequence) -> Tally {
    let mut all = Tally::default();
    for seed in SEEDS {
        let start = std::time::Instant::now();
        let t = run_seed(seed, sequence);
        eprintln!("seed {seed:#x}: {t:?} in {:?}", start.elapsed());
        assert!(
            t.new_flows > 300 && t.forwarded > 800 && t.passed > 50,
            "{t:?}"
        );
        assert!(
            t.least_connections_choices > 10 && t.sticky_sessions > 3,
            "{t:?}"
        );
        assert!(
            t.advances > 10 && t.reapplies > 20 && t.deletions > 5,
            "{t:?}"
        );
        assert!(t.pinned > 40, "{t:?}");
        all.add(&t);
    }
    eprintln!("all seeds: {all:?}");
    all
}

#[test]
fn program_and_model_agree_on_seeded_sequences() {
    let all = run_seeds(&ROOMY);
    // The rarer paths, over all seeds.
    assert!(
        all.reselected > 5 && all.moved > 5 && all.dropped > 5,
        "{all:?}"
    );
    assert!(
        all.targets_added > 5
            && all.reorders > 5
            && all.reweighs > 5
            && all.algorithm_changes > 5
            && all.listener_changes > 5
            && all.listener_ids_taken_over > 0,
        "{all:?}"
    );
    assert_eq!(
        (all.evicted, all.unremembered),
        ([0; 3], 0),
        "the roomy table evicted: {all:?}"
    );
}

/// Evictions as the flow table makes them, over all seeds: of every class,
/// established flows evicted 12 s after their last packet (the protection
/// expired), new flows unremembered for flows 4 s after theirs (it held),
/// and packets of evicted flows after the eviction (misses).
#[test]
fn program_and_model_agree_when_new_flows_evict() {
    let all = run_seeds(&CROWDED);
    let [ended, once, established] = all.evicted;
    assert!(
        ended > 200 && once > 400 && established > 150,
        "evictions by class: {all:?}"
    );
    assert!(
        all.unremembered > 30 && all.protection_expired > 2 && all.protection_held > 10,
        "{all:?}"
    );
    assert!(all.after_eviction > 300, "{all:?}");
}
