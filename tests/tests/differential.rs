//! Differential test: seeded pseudo-random sequences of frames
//! (`frames`: IPv4 and IPv6, TCP with SYN/ACK/FIN/RST mixes, UDP, IPv4
//! options, VLAN tags, frames not for a listener, truncations at every
//! length of every header, bogus IP lengths, fragments) interleaved with
//! control events, run through the real XDP program (BPF_PROG_TEST_RUN) and
//! the reference model (`lb_tests::model`, which computes hashes, tables and
//! choices itself from the policy). The control events:
//! - time steps through `Config::time_offset_ns`;
//! - flow-table entries deleted as the sweeper deletes them;
//! - policy changes, each compiled as `lb run` compiles (ids assigned from the
//!   applied plan's) and applied: a target's weight set to 0, its MAC lost,
//!   the target removed (its id retired) or added back (its id again), or a
//!   new target added to a group; a target's health verdict changed (or a
//!   whole group's: last resort), in groups that rebalance and groups that
//!   do not; the targets of a group, the groups or the
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
//! mismatch names the seed, the step, the last steps, the policy, both
//! results and the command that runs the sequence again.
//!
//! Each test runs the fixed seeds (`SEEDS`, `FIXED_FRAMES` frames each) and
//! one seed that varies with every run, from the clock (`VARYING_FRAMES`
//! frames), printed in the output with the command that runs it again.
//! `LB_DIFFERENTIAL_SEED` runs that seed alone, and `LB_DIFFERENTIAL_FRAMES`
//! sets how many frames the varying (or named) seed sends: docs/testing.md
//! has the long run.
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
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    io::Write as _,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use frames::{Covers, Traffic, every_cover};
use lb_common::{Counter, FlowKey, ListenerKey};
use lb_tests::{
    harness::{self, Harness},
    model::{Candidate, Class, Outcome, Step, TargetKey, step},
    packets::{Frame, tcp_flags::*},
};
use lb_user::{
    dataplane::LoadOptions,
    health::HealthState,
    plan::Observed,
    policy::{self, Policy, compile::ip_of},
};

#[path = "differential/frames.rs"]
mod frames;

const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 0x0123_4567_89ab_cdef];
/// Frames each fixed seed sends (`Sequence::fixed_frames`: a multiple).
const FIXED_FRAMES: usize = 2000;
/// Frames the seed that varies sends, unless `LB_DIFFERENTIAL_FRAMES` says.
const VARYING_FRAMES: usize = 3000;
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
    /// Destination ports of IPv6 UDP, from 53: those of `dns6`'s range
    /// (53-59) and one past it.
    udp6_ports: u64,
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
    /// Per cent of new TCP flows that open with a SYN (the others open with
    /// any flags: a TCP packet that is not a SYN and misses takes an empty
    /// entry only).
    syn_first: u64,
    /// Frames each fixed seed sends.
    fixed_frames: usize,
}

/// A flow table these flows never fill.
const ROOMY: Sequence = Sequence {
    flow_table_size: 4096,
    ports: [8, 6, 6, 4],
    udp6_ports: 8,
    again: 0,
    time_steps: 25,
    small_steps: false,
    flows_every: 250,
    syn_first: 0,
    fixed_frames: FIXED_FRAMES,
};

/// A flow table of 8 buckets (32 entries) and many more flows, some
/// established, most one packet: new flows evict, or go unremembered when
/// all their candidates are established flows within the protection.
const CROWDED: Sequence = Sequence {
    flow_table_size: 16,
    ports: [64, 32, 32, 16],
    // One: more flows would crowd out the established ones, whose
    // protection the sequence is for (the ranges are ROOMY's to cover).
    udp6_ports: 1,
    again: 70,
    time_steps: 15,
    small_steps: true,
    flows_every: 10,
    // Most open with a SYN, so that new flows keep taking entries.
    syn_first: 80,
    // New flows find all their candidates established and protected only
    // now and then (fewer since the misses of flows under way take the
    // empty entries: seen once, new flows evict those first), and how often
    // depends on the program's clock between frames: three times the
    // frames, so that the fixed seeds' sum is well above the test's bounds.
    fixed_frames: 3 * FIXED_FRAMES,
};

/// Small time steps (`Sequence::small_steps`): steps of `SMALL` from the
/// start of a `Q` up to `SMALLS` into it, or one of `SMALLS`, then the rest
/// of the Q. An established flow's protection (`flow_table::PROTECT_UNITS`,
/// about 9.6 s with the touch lag) outlasts 4 and 8 s, not 12; no age comes
/// within 37 s of a timeout and its lag (an odd multiple of Q / 2).
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
    /// Its last health verdict is `unhealthy` (groups with a health check).
    unhealthy: bool,
}

impl Target {
    fn key(&self) -> TargetKey {
        harness::target(self.group, self.ip)
    }
}

/// A group: name, protocol, the two algorithms the control events switch
/// between, whether its sessions are sticky, its table size, and whether
/// it has a health check, with which `on_unhealthy`. Timeouts as the module
/// says.
struct Group {
    name: &'static str,
    protocol: &'static str,
    algorithms: [&'static str; 2],
    sticky: bool,
    table_size: u32,
    checked: Option<&'static str>,
}

const fn group(
    name: &'static str,
    protocol: &'static str,
    algorithms: [&'static str; 2],
    (sticky, table_size, checked): (bool, u32, Option<&'static str>),
) -> Group {
    Group {
        name,
        protocol,
        algorithms,
        sticky,
        table_size,
        checked,
    }
}

const REBALANCE: Option<&str> = Some("rebalance");
const NO_REBALANCE: Option<&str> = Some("no_rebalance");

/// `NEW` is in the policy only while the `new` listener is.
/// Table sizes: the default (65537) for `hash`, smaller primes for the
/// others (every policy change rebuilds a table or two, on both sides).
const GROUPS: [Group; 8] = [
    group("new", "tcp", ["round_robin", "hash"], (true, 1021, None)),
    group(
        "hash",
        "tcp",
        ["hash", "least_connections"],
        (true, 65537, NO_REBALANCE),
    ),
    group(
        "rr",
        "tcp",
        ["round_robin", "least_connections"],
        (true, 1031, REBALANCE),
    ),
    group(
        "lc",
        "tcp",
        ["least_connections", "round_robin"],
        (false, 4099, REBALANCE),
    ),
    group("src", "tcp", ["source_ip", "hash"], (false, 2039, None)),
    group(
        "dns",
        "udp",
        ["round_robin", "least_connections"],
        (false, 1021, NO_REBALANCE),
    ),
    group(
        "lc6",
        "tcp",
        ["least_connections", "round_robin"],
        (true, 8191, None),
    ),
    group(
        "dns6",
        "udp",
        ["least_connections", "hash"],
        (true, 1033, REBALANCE),
    ),
];
const NEW: usize = 0;

/// The group named `name`.
fn group_of(name: &str) -> &'static Group {
    GROUPS.iter().find(|g| g.name == name).expect("a group")
}

/// (name, VIP, protocol, port, group) of each listener. `dns6` has a port
/// range (its frames go to 53-60 in `ROOMY`: the range and a port past it).
const LISTENERS: [(&str, &str, &str, &str, &str); 8] = [
    ("new", "10.0.3.49", "tcp", "84", "new"),
    ("hash", "10.0.3.49", "tcp", "80", "hash"),
    ("rr", "10.0.3.49", "tcp", "81", "rr"),
    ("lc", "10.0.3.49", "tcp", "82", "lc"),
    ("src", "10.0.3.49", "tcp", "83", "src"),
    ("dns", "10.0.3.49", "udp", "53", "dns"),
    ("web6", "fd00:3::49", "tcp", "80", "lc6"),
    ("dns6", "fd00:3::49", "udp", "53-59", "dns6"),
];
const SRC: usize = 4;

/// The targets; the last ones are not in the first policy (added later).
fn targets() -> Vec<Target> {
    let t = |group, ip, weight| Target {
        group,
        ip,
        weight,
        state: State::Normal,
        unhealthy: false,
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

    /// Whether `target` is in the policy and may take its flows' packets:
    /// its MAC known, and not unhealthy in a group that rebalances, unless
    /// the group is in last resort and gives it new flows (its weight is
    /// not 0) (docs/algorithms.md, "Which targets take new flows").
    fn keeps_flows(&self, target: &TargetKey) -> bool {
        let group_in = target.group != GROUPS[NEW].name || self.new;
        let Some(t) = self.targets.iter().find(|t| t.key() == *target) else {
            return false;
        };
        let moves = t.unhealthy && group_of(t.group).checked == REBALANCE;
        let last_resort = self.last_resort(t.group) && t.state == State::Normal;
        group_in && matches!(t.state, State::Normal | State::WeightZero) && (!moves || last_resort)
    }

    /// Whether `group` has targets and none could take new flows (in the
    /// policy with a MAC and a weight, and not unhealthy).
    fn last_resort(&self, group: &str) -> bool {
        let mut targets = self
            .targets
            .iter()
            .filter(|t| t.group == group && t.state != State::Removed)
            .peekable();
        targets.peek().is_some() && targets.all(|t| t.state != State::Normal || t.unhealthy)
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
                table_size,
                checked,
            } = GROUPS[g];
            let algorithm = algorithms[self.alternate[g] as usize];
            write!(
                yaml,
                "  - name: {name}\n    protocol: {protocol}\n    algorithm: {algorithm}\n    \
                 flow_idle_timeout_s: 250\n    table_size: {table_size}\n"
            )
            .unwrap();
            if sticky {
                yaml.push_str("    sticky_session: { duration_s: 150 }\n");
            }
            if let Some(mode) = checked {
                // A port range has no traffic port to probe: the check names one.
                let port = if name == "dns6" { ", port: 53" } else { "" };
                writeln!(
                    yaml,
                    "    health_check: {{ type: tcp, interval_s: 5, timeout_s: 1{port} }}\n    \
                     target_failover: {{ on_unhealthy: {mode}, on_deregistration: {mode} }}"
                )
                .unwrap();
            }
            if protocol == "tcp" {
                yaml.push_str("    flow_fin_timeout_s: 50\n");
            }
            self.targets_yaml(name, &mut yaml);
        }
        yaml
    }

    /// The targets of group `name` in the policy.
    fn targets_yaml(&self, name: &str, yaml: &mut String) {
        let targets: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.group == name && t.state != State::Removed)
            .collect();
        if targets.is_empty() {
            yaml.push_str("    targets: []\n");
            return;
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

    /// The policy and what the host shows of it.
    fn policy(&self) -> (String, Policy, Observed) {
        let yaml = self.yaml();
        let policy = policy::parse("differential.yaml", &yaml)
            .unwrap_or_else(|e| panic!("test policy: {e}\n{yaml}"));
        let mut observed = harness::observed(&policy);
        for t in self.targets.iter().filter(|t| t.state == State::NoMac) {
            observed.neighbors.remove(&t.ip.parse().unwrap());
        }
        for t in &self.targets {
            let verdict = if t.unhealthy {
                HealthState::Unhealthy
            } else {
                HealthState::Healthy
            };
            observed.health.insert(t.key(), verdict);
        }
        (yaml, policy, observed)
    }

    /// A policy change; its description.
    fn change(&mut self, rng: &mut Rng, tally: &mut Tally) -> String {
        self.touched = None;
        match rng.below(100) {
            0..26 => self.set_state(rng),
            26..36 => {
                tally.health_changes += 1;
                self.set_health(rng)
            }
            36..46 => {
                tally.targets_added += 1;
                self.add_target(rng)
            }
            46..59 => {
                tally.reorders += 1;
                self.reorder(rng)
            }
            59..70 => {
                tally.reweighs += 1;
                self.reweigh(rng)
            }
            70..81 => {
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

    /// A health verdict changed: a target of a group with a health check
    /// turned unhealthy or healthy; now and then a whole group's (last
    /// resort).
    fn set_health(&mut self, rng: &mut Rng) -> String {
        let checked: Vec<usize> = (0..self.targets.len())
            .filter(|&i| group_of(self.targets[i].group).checked.is_some())
            .collect();
        let i = *rng.pick(&checked);
        let unhealthy = rng.below(2) == 0;
        let whole = rng.below(4) == 0;
        let group = self.targets[i].group;
        self.touched = Some(group);
        for (j, t) in self.targets.iter_mut().enumerate() {
            if j == i || (whole && t.group == group) {
                t.unhealthy = unhealthy;
            }
        }
        let what = if unhealthy { "unhealthy" } else { "healthy" };
        if whole {
            format!("group {group} {what}")
        } else {
            format!("{} {what}", self.targets[i].ip)
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

/// What a sequence covered (the test also asserts it covered enough).
#[derive(Debug, Default)]
struct Tally {
    /// Frames run through the program and the model (probes included).
    frames: usize,
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
    health_changes: u32,
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
        self.frames += 1;
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
        self.frames += t.frames;
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
            (&mut self.health_changes, t.health_changes),
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

    /// `n` per `FIXED_FRAMES` frames, for a tally of this many frames.
    fn per(&self, n: u32) -> u32 {
        (n as u64 * self.frames as u64 / FIXED_FRAMES as u64) as u32
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

/// One sequence to run: its seed and how many frames it sends.
#[derive(Debug, Clone, Copy)]
struct Run {
    seed: u64,
    frames: usize,
}

impl Run {
    /// The command that runs this sequence again (test `test`).
    fn again(&self, test: &str) -> String {
        format!(
            "LB_DIFFERENTIAL_SEED={:#x} LB_DIFFERENTIAL_FRAMES={} \
             cargo test -p lb-tests --test differential {test}",
            self.seed, self.frames
        )
    }
}

/// The runs of a test: the one `LB_DIFFERENTIAL_SEED` names, if set; else
/// the fixed seeds' (`fixed_frames` each) and one of a seed that varies
/// with every run (from the clock). The varying (or named) seed sends
/// `LB_DIFFERENTIAL_FRAMES` frames, by default `VARYING_FRAMES`.
fn runs(fixed_frames: usize) -> Vec<Run> {
    let frames = env_number("LB_DIFFERENTIAL_FRAMES").map_or(VARYING_FRAMES, |n| n as usize);
    if let Some(seed) = env_number("LB_DIFFERENTIAL_SEED") {
        assert_ne!(
            seed, 0,
            "LB_DIFFERENTIAL_SEED: xorshift needs a seed other than 0"
        );
        return vec![Run { seed, frames }];
    }
    let fixed = SEEDS.map(|seed| Run {
        seed,
        frames: fixed_frames,
    });
    let varying = Run {
        seed: varying_seed(),
        frames,
    };
    fixed.into_iter().chain([varying]).collect()
}

/// The number in environment variable `name` (decimal, or hexadecimal
/// after `0x`; `_` allowed), if set.
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let digits = text.trim().replace('_', "");
    let n = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    Some(n.unwrap_or_else(|e| panic!("{name}={text}: not a number ({e})")))
}

/// A seed from the clock, one per process (both tests use it), never 0.
fn varying_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos() as u64;
        // splitmix64's finalizer: close times give unrelated seeds.
        let mut z = ns.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    })
}

/// Writes a line to stderr past libtest's output capture, so that it is in
/// the output of `cargo test` (and `cargo xtask test`) whether the test
/// passes or not.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A sequence being run: the program and the model (`h`), the policy's
/// world, the traffic, and what the sequence did.
struct Runner {
    run: Run,
    test: &'static str,
    sequence: &'static Sequence,
    rng: Rng,
    world: World,
    /// The policy applied.
    yaml: String,
    h: Harness,
    traffic: Traffic,
    /// Flows whose entries were evicted, sent no packet since.
    evicted: HashSet<FlowKey>,
    tally: Tally,
    /// The last steps, described.
    history: VecDeque<String>,
    /// The last listener key of each listener id.
    listener_keys: HashMap<u32, ListenerKey>,
}

/// Steps the history keeps (a mismatch shows the last 8).
const HISTORY: usize = 16;

impl Runner {
    fn new(run: Run, test: &'static str, sequence: &'static Sequence) -> Runner {
        let world = World::new();
        let (yaml, policy, observed) = world.policy();
        let options = LoadOptions {
            flow_table_size: sequence.flow_table_size,
        };
        let mut h = Harness::with_policy_options(&policy, &observed, &options, Some(run.seed));
        h.every_session_each_frame = false;
        Runner {
            run,
            test,
            sequence,
            rng: Rng(run.seed),
            world,
            yaml,
            h,
            traffic: Traffic::new(sequence),
            evicted: HashSet::new(),
            tally: Tally::default(),
            history: VecDeque::new(),
            listener_keys: HashMap::new(),
        }
    }

    fn log(&mut self, line: String) {
        self.history.push_back(line);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Ends the test: where the sequence was, how to run it again, the
    /// mismatch, the last steps and the policy.
    fn fail(&self, step: usize, event: &str, mismatch: String) -> ! {
        let from = self.history.len().saturating_sub(8);
        let recent: Vec<&str> = self.history.range(from..).map(String::as_str).collect();
        panic!(
            "seed {:#x}, step {step}, frame {} of {}: {event}\n{mismatch}\n\
             recent steps:\n  {}\npolicy:\n{}\nrun it again: {}",
            self.run.seed,
            self.tally.frames,
            self.run.frames,
            recent.join("\n  "),
            self.yaml,
            self.run.again(self.test)
        )
    }

    /// Runs the sequence to its last frame; what it did and covered.
    fn run(mut self) -> (Tally, BTreeSet<Covers>) {
        let mut step = 0;
        while self.tally.frames < self.run.frames {
            if let Err((event, mismatch)) = self.step(step) {
                self.fail(step, &event, mismatch);
            }
            step += 1;
        }
        if let Err(mismatch) = self.h.compare_flows() {
            self.fail(step, "flow tables at the end", differ(mismatch));
        }
        (self.tally, self.traffic.covered)
    }

    /// One step: per mille, a time step, a policy change, a deletion, else
    /// a frame. An error: the event and the mismatch.
    fn step(&mut self, step: usize) -> Result<(), (String, String)> {
        let roll = self.rng.below(1000);
        let changes = self.sequence.time_steps + 30;
        let event = if roll < self.sequence.time_steps {
            self.advance()
        } else if roll < changes {
            // In the history already (before the packets that follow it).
            self.change(step)?
        } else if roll < changes + 15 {
            match self.delete() {
                Some(event) => event?,
                None => return Ok(()),
            }
        } else {
            return self.send(step);
        };
        self.h
            .compare_state()
            .map_err(|m| (event.clone(), differ(m)))?;
        if !(self.sequence.time_steps..changes).contains(&roll) {
            self.log(format!("step {step}: {event}"));
        }
        if step.is_multiple_of(self.sequence.flows_every) {
            let flows = self.h.compare_flows();
            flows.map_err(|m| ("flow tables".to_string(), differ(m)))?;
        }
        Ok(())
    }

    fn advance(&mut self) -> String {
        let ns = time_step(&mut self.rng, self.sequence, self.h.model.now_ns);
        self.h.advance_ns(ns);
        self.tally.advances += 1;
        format!("advance {} s", ns / harness::S)
    }

    /// A flow's entry deleted, as the sweeper deletes one (`None`: no flow).
    fn delete(&mut self) -> Option<Result<String, (String, String)>> {
        let key = pick_flow(&self.h, &mut self.rng)?;
        if let Err(mismatch) = self.h.delete_flow(&key) {
            return Some(Err(("delete".into(), differ(mismatch))));
        }
        self.tally.deletions += 1;
        Some(Ok(format!("delete {key:?}")))
    }

    /// A frame of the sequence.
    fn send(&mut self, step: usize) -> Result<(), (String, String)> {
        let (what, bytes) = frames::frame(&mut self.rng, &mut self.traffic);
        let o = self
            .h
            .compare(&bytes)
            .map_err(|m| (format!("frame {what}"), differ(m)))?;
        let key = lb_tests::model::parse(&bytes).ok().map(|(k, _)| k);
        self.tally.frame(&o, key, &mut self.evicted);
        self.tally.sticky_sessions = self.tally.sticky_sessions.max(self.h.model.sticky.len());
        self.log(format!(
            "step {step}: frame {what} -> {} {:?}",
            o.action, o.target
        ));
        Ok(())
    }

    /// A policy change, applied; then the state compared and flows probed
    /// (all in the history); the change, described.
    fn change(&mut self, step: usize) -> Result<String, (String, String)> {
        let change = self.world.change(&mut self.rng, &mut self.tally);
        let (text, policy, observed) = self.world.policy();
        self.yaml = text;
        self.h.apply_policy(&policy, &observed);
        self.tally.reapplies += 1;
        for l in &self.h.plan.listeners {
            let before = self.listener_keys.insert(l.info.listener_id, l.key);
            self.tally.listener_ids_taken_over += before.is_some_and(|k| k != l.key) as u32;
        }
        let event = format!("re-apply: {change}");
        self.h
            .compare_state()
            .map_err(|m| (event.clone(), differ(m)))?;
        self.log(format!("step {step}: {event}"));
        self.probe().map_err(|m| (event.clone(), m))?;
        Ok(event)
    }

    /// After a policy change: a packet of up to `PROBES` flows that must
    /// keep their targets (those of the group the change was about first),
    /// and of up to `PROBES` whose targets left, checked against the model
    /// and against that rule.
    fn probe(&mut self) -> Result<(), String> {
        let mut flows = live_flows(&self.h, &self.world);
        self.rng.shuffle(&mut flows);
        let (mut kept, moved): (Vec<_>, Vec<_>) = flows.into_iter().partition(|f| f.2);
        let touched = self.world.touched;
        kept.sort_by_key(|(_, target, _)| Some(target.group.as_str()) != touched);
        let probes = kept.into_iter().take(PROBES);
        for (key, target, keeps) in probes.chain(moved.into_iter().take(PROBES)) {
            let o = self
                .h
                .compare(&next_packet(&key))
                .map_err(|e| differ(format!("a packet of {key:?} (on {target:?}): {e}")))?;
            self.tally.frame(&o, Some(key), &mut self.evicted);
            self.log(format!(
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
            *if keeps {
                &mut self.tally.pinned
            } else {
                &mut self.tally.moved
            } += 1;
        }
        Ok(())
    }
}

/// Runs this test's sequences of this kind and asserts that each covered
/// the common paths; the fixed seeds' counts added up, if they ran (then
/// they also sent every kind of frame between them).
fn run_seeds(test: &'static str, sequence: &'static Sequence) -> Option<Tally> {
    let mut fixed = Tally::default();
    let mut covered = BTreeSet::new();
    let runs = runs(sequence.fixed_frames);
    for &run in &runs {
        say(&format!(
            "differential {test}: seed {:#x}, {} frames (again: {})",
            run.seed,
            run.frames,
            run.again(test)
        ));
        let start = std::time::Instant::now();
        let (t, c) = Runner::new(run, test, sequence).run();
        say(&format!(
            "differential {test}: seed {:#x}: {} frames in {:.1?}",
            run.seed,
            t.frames,
            start.elapsed()
        ));
        eprintln!("seed {:#x}: {t:?}", run.seed);
        assert_covered(&t, run);
        if SEEDS.contains(&run.seed) && run.frames == sequence.fixed_frames {
            fixed.add(&t);
            covered.extend(c);
        }
    }
    if fixed.frames < SEEDS.len() * sequence.fixed_frames {
        return None;
    }
    let missing: Vec<Covers> = every_cover()
        .into_iter()
        .filter(|c| !covered.contains(c))
        .collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    eprintln!("the fixed seeds: {fixed:?}");
    Some(fixed)
}

/// Asserts that a sequence covered the common paths (in proportion to its
/// frames; a sequence of under 500 frames is too short to say).
fn assert_covered(t: &Tally, run: Run) {
    if t.frames < 500 {
        return;
    }
    let seed = run.seed;
    assert!(
        t.new_flows > t.per(200) && t.forwarded > t.per(800) && t.passed > t.per(50),
        "seed {seed:#x}: {t:?}"
    );
    assert!(
        t.least_connections_choices > t.per(10) && t.sticky_sessions > 3.min(t.frames / 100),
        "seed {seed:#x}: {t:?}"
    );
    assert!(
        t.advances > t.per(10) && t.reapplies > t.per(20) && t.deletions > t.per(5),
        "seed {seed:#x}: {t:?}"
    );
    assert!(t.pinned > t.per(40), "seed {seed:#x}: {t:?}");
}

#[test]
fn program_and_model_agree_on_seeded_sequences() {
    let test = "program_and_model_agree_on_seeded_sequences";
    let Some(all) = run_seeds(test, &ROOMY) else {
        return;
    };
    // The rarer paths, over the fixed seeds.
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
            && all.health_changes > 5
            && all.listener_ids_taken_over > 0,
        "{all:?}"
    );
    assert_eq!(
        (all.evicted, all.unremembered),
        ([0; 3], 0),
        "the roomy table evicted: {all:?}"
    );
}

/// Evictions as the flow table makes them, over the fixed seeds: of every
/// class, established flows evicted 12 s after their last packet (the
/// protection expired), new flows unremembered for flows 4 s after theirs
/// (it held), and packets of evicted flows after the eviction (misses).
#[test]
fn program_and_model_agree_when_new_flows_evict() {
    let test = "program_and_model_agree_when_new_flows_evict";
    let Some(all) = run_seeds(test, &CROWDED) else {
        return;
    };
    // (Ended entries are fewer than the others: a client's FIN or RST
    // that misses takes an empty entry only, as no TCP packet but a SYN
    // takes another flow's.)
    let [ended, once, established] = all.evicted;
    assert!(
        ended > 60 && once > 400 && established > 150,
        "evictions by class: {all:?}"
    );
    assert!(
        all.unremembered > 30 && all.protection_expired > 2 && all.protection_held > 10,
        "{all:?}"
    );
    assert!(all.after_eviction > 300, "{all:?}");
}
