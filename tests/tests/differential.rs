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
//! by identity (`lb_tests::harness`); the flow tables are compared every
//! `FLOWS_EVERY` steps. After each policy change, flows whose target stays
//! in its listener's group are sent a packet: each must keep its target (the
//! model's outcome, which the program's must equal). A mismatch names the
//! seed, the step, the last steps, the policy and both results.
//!
//! Time moves in steps of `Q` (100 s) and every timeout is an odd multiple of
//! Q / 2, so the few seconds of real time the test takes (the program's clock
//! runs on, the model's does not) never decide an expiry.
//!
//! Needs root (CAP_BPF).
use std::fmt::Write as _;

use lb_common::{Counter, FlowKey};
use lb_tests::{
    harness::{self, Harness},
    model::{Step, TargetKey, step},
    packets::{Frame, L4, tcp_flags::*},
};
use lb_user::{
    plan::Observed,
    policy::{self, Policy, compile::ip_of},
};

const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 0x0123_4567_89ab_cdef];
const STEPS: usize = 2000;
const FLOWS_EVERY: usize = 250;
/// Flows sent a packet after each policy change (at most).
const PROBES: usize = 4;
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

/// A frame for a listener (or close to one).
fn listener_frame(rng: &mut Rng) -> Frame {
    let v4 = |rng: &mut Rng| format!("10.0.4.{}", 1 + rng.below(6));
    let v6 = |rng: &mut Rng| format!("fd00:4::{}", 1 + rng.below(4));
    match rng.below(100) {
        0..60 => {
            let port = *rng.pick(&[80, 81, 82, 83, 84]);
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
    let src = ip_of(key.src_be, key.family).to_string();
    let dst = ip_of(key.dst_be, key.family).to_string();
    let (sport, dport) = (u16::from_be(key.src_port_be), u16::from_be(key.dst_port_be));
    if key.proto == lb_common::PROTO_TCP {
        Frame::tcp(&src, sport, &dst, dport, ACK).build()
    } else {
        Frame::udp(&src, sport, &dst, dport, b"again").build()
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
            let listener = h.plan.listeners.iter().find(|l| {
                l.key.addr_be == key.dst_be
                    && l.key.port_be == key.dst_port_be
                    && l.key.proto == key.proto
                    && l.key.family == key.family
            })?;
            let group = h
                .plan
                .groups
                .iter()
                .find(|g| g.id == listener.info.group_id)?;
            let flags = if key.proto == lb_common::PROTO_TCP {
                ACK
            } else {
                0
            };
            let alive = matches!(
                step(Some(flow), flags, h.model.now_ns, &group.info),
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
}

fn run_seed(seed: u64) -> Tally {
    let mut rng = Rng(seed);
    let mut world = World::new();
    let (mut yaml, policy, observed) = world.policy();
    let mut h = Harness::with_policy(&policy, &observed);
    h.every_session_each_frame = false;
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
        let roll = rng.below(1000);
        // Whether the step is in `history` already (a re-apply, before
        // the packets that follow it).
        let mut logged = false;
        let event = if roll < 25 {
            let k = 1 + rng.below(3);
            h.advance_ns(k * Q);
            tally.advances += 1;
            format!("advance {} s", k * Q / harness::S)
        } else if roll < 55 {
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
        } else if roll < 70 {
            let Some(key) = pick_flow(&h, &mut rng) else {
                continue;
            };
            if let Err(mismatch) = h.delete_flow(&key) {
                fail(step, "delete", &history, &yaml, differ(mismatch));
            }
            tally.deletions += 1;
            format!("delete {key:?}")
        } else {
            let (what, bytes) = frame(&mut rng);
            match h.compare(&bytes) {
                Ok(o) => {
                    tally.forwarded += o.target.is_some() as u32;
                    tally.new_flows += o.new_flow as u32;
                    tally.reselected += o.counters.contains(&Counter::FlowReselected) as u32;
                    tally.dropped += (o.action == lb_tests::model::XDP_DROP) as u32;
                    tally.passed += (o.action == lb_tests::model::XDP_PASS) as u32;
                    tally.least_connections_choices +=
                        o.least_connections.as_ref().is_some_and(|c| c.len() > 1) as u32;
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
        if step % FLOWS_EVERY == 0
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
            t.advances > 10 && t.reapplies > 20 && t.deletions > 5,
            "{t:?}"
        );
        assert!(t.pinned > 40, "{t:?}");
        all.reselected += t.reselected;
        all.moved += t.moved;
        all.dropped += t.dropped;
        all.targets_added += t.targets_added;
        all.reorders += t.reorders;
        all.reweighs += t.reweighs;
        all.algorithm_changes += t.algorithm_changes;
        all.listener_changes += t.listener_changes;
        all.listener_ids_taken_over += t.listener_ids_taken_over;
    }
    // The rarer ones over all seeds.
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
}
