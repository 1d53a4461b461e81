//! A reference model of the XDP program in plain Rust: what it must do with a
//! frame, given the policy, the host's MACs and health verdicts, and the
//! model's own copy of the program's state (flow table, active flows per
//! target, round-robin positions, sticky sessions). Golden, algorithm and
//! differential tests compare the real program against it; it is written
//! from the documented rules (README "Algorithms", "Sticky sessions", "Flow
//! lifecycle"; docs/algorithms.md), not from the eBPF code. It shares with
//! the product only the parsed policy, the map types of `lb_common` and the
//! flow table's placement and time units (`lb_common::flow_table`): its flow
//! hash ([`hash`]), Maglev tables and round-robin orders ([`maglev`]), least
//! connections ([`least_connections`]) and which targets take new flows
//! ([`view`]) are its own, written from docs/algorithms.md (docs/testing.md).
//!
//! The model names objects by identity, never by the program's numbers: a
//! target is a [`TargetKey`] (group name, address), a group its name, a
//! listener its (VIP, protocol, port); its tables hold targets, not ids. So
//! its flows, active counts, round-robin positions and sessions mean the
//! same whatever ids a plan gives, and the harness, which reads the
//! program's maps by id, translates them to agree with it.
//!
//! Least connections draws two random slots, which the model cannot know:
//! it computes the set of targets that SOME pair of draws leads to
//! ([`least_connections`]) and takes the program's choice if it is in that
//! set (`Model::process_observed`). The check is exact: a choice outside
//! the set is a bug, and every choice in it is one the program may make.
//!
//! The model keeps the flow table's occupancy too ([`table`]): which flow
//! holds each entry, where a new flow goes, which flow it evicts, and when
//! it goes unremembered. Where the program's clock decides between entries
//! closer in age than the model can know, it follows the program's choice
//! in the same way, checking it against the rules.
use std::collections::HashMap;

pub use fragments::Datagram;
use lb_common::{
    Counter, FlowKey, ListenerKey, PROTO_TCP,
    flow_table::{TIME_SHIFT, TOUCH_UNITS, age_ns, outlived, time_units},
};
pub use lb_user::ids::TargetKey;
use lb_user::{
    plan::Observed,
    policy::{Algorithm, Policy},
};
pub use parse::{Kind, Packet, Refused, packet, parse, read};
pub use table::{Candidate, Class, Insert, Span, Table};
pub use view::{Group, Tables, Timeouts, View};

use crate::packets::tcp_flags;

mod fragments;
pub mod hash;
pub mod least_connections;
pub mod maglev;
pub mod parse;
pub mod table;
pub mod view;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub output: Vec<u8>,
    /// The global counters this frame must bump.
    pub counters: Vec<Counter>,
    /// The target it went to.
    pub target: Option<TargetKey>,
    /// The listener it was counted under (forwarded frames only).
    pub listener: Option<ListenerKey>,
    /// Whether it was counted as a new flow (listener and target stats).
    pub new_flow: bool,
    /// Least connections: the targets some pair of random draws leads to
    /// (the program's choice must be one of them), sorted.
    pub least_connections: Option<Vec<TargetKey>>,
    /// The sticky session this frame may have read or written (a listener
    /// frame of a sticky group).
    pub sticky_key: Option<Client>,
    /// How the entry of a new flow without one was chosen.
    pub insert: Option<Insert>,
}

/// What the harness saw of the program's run of a frame: what settles the
/// choices the model cannot make alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramRun {
    /// The destination MAC it wrote (a forwarded frame's first 6 bytes):
    /// least connections' random draws.
    pub mac: Option<[u8; 6]>,
    /// The flow-table entry (bucket, way) of the frame's flow after it:
    /// among entries a new flow may take by the rules, the one it took.
    pub entry: Option<(u32, usize)>,
    /// The program's clock during the run: its last-seen stamps.
    pub clock: Span,
}

/// A client of a group: the key of a sticky session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Client {
    pub group: String,
    pub addr_be: [u32; 4],
}

/// What the model remembers of a flow (the documented part of a flow-table
/// entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub target: TargetKey,
    /// The client sent FIN or RST.
    pub ending: bool,
    /// The flow counts in its target's active flows.
    pub counted: bool,
    /// When its last packet came, in the table's time units (about 1 ms:
    /// `flow_table::time_units`), on the model's clock: its lifecycle.
    pub seen: u32,
    /// A packet came after the first (it is established).
    pub again: bool,
    /// The flow-table entry it holds (bucket, way).
    pub entry: (u32, usize),
    /// When the program stamped its entry's last-seen time, on the
    /// program's clock: which entry a new flow evicts.
    pub stamped: Span,
}

/// A client's sticky session (`STICKY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub target: TargetKey,
    pub expires_ns: u64,
}

/// The model's state: what it knows of the policy and the host, the flows
/// and the flow table's entries they hold, the active flows per target, the
/// round-robin position per group, the sticky sessions, and the time
/// (data-plane time as the tests drive it: `Config::time_offset_ns`).
#[derive(Debug, Clone)]
pub struct Model {
    pub flows: HashMap<FlowKey, Flow>,
    pub table: Table,
    pub active: HashMap<TargetKey, i64>,
    /// Group name -> round-robin position (`GROUP_RR`: new flows taken).
    pub round_robin: HashMap<String, u64>,
    pub sticky: HashMap<Client, Session>,
    /// The datagrams whose first fragment was forwarded, by the key the
    /// fragments share (`FlowKey::to_datagram`).
    pub fragments: HashMap<FlowKey, Datagram>,
    pub now_ns: u64,
    /// The policy and the host as the model reads them.
    pub view: View,
    /// The tables of the last views.
    tables: Tables,
}

/// What a packet does to its flow's entry (README "Flow lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No entry: a new flow (a TCP packet other than a SYN goes to the
    /// group's hash target).
    Miss,
    /// The entry's flow has ended (timeout passed, or a client SYN after
    /// FIN/RST): uncount it if counted, then as a miss.
    Ended,
    /// The flow goes on: `ending` if this packet is the client's FIN or RST
    /// (uncount if counted), `touch` if `last_seen` is refreshed.
    Hit { ending: bool, touch: bool },
}

/// The lifecycle transition of an entry for a packet with TCP flags
/// `flags` (0 for UDP) at `now_ns`, in a group with `timeouts`.
pub fn step(entry: Option<&Flow>, flags: u8, now_ns: u64, timeouts: Timeouts) -> Step {
    let Some(e) = entry else {
        return Step::Miss;
    };
    let age = age_ns(e.seen, now_ns);
    let timeout_s = if e.ending {
        timeouts.fin_s
    } else {
        timeouts.idle_s
    };
    let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if outlived(age, timeout_s as u64 * 1_000_000_000) || (syn && e.ending) {
        return Step::Ended;
    }
    Step::Hit {
        ending: flags & (tcp_flags::FIN | tcp_flags::RST) != 0,
        touch: age > (TOUCH_UNITS as u64) << TIME_SHIFT,
    }
}

/// Where a new flow's choice came from (for `Model::new_flow`).
struct Choice {
    target: Option<TargetKey>,
    least_connections: Option<Vec<TargetKey>>,
}

impl Choice {
    fn of(target: Option<TargetKey>) -> Choice {
        Choice {
            target,
            least_connections: None,
        }
    }
}

/// A frame the program passes untouched.
fn passed(frame: &[u8], counter: Counter) -> Outcome {
    Outcome {
        action: XDP_PASS,
        output: frame.to_vec(),
        counters: vec![counter],
        target: None,
        listener: None,
        new_flow: false,
        least_connections: None,
        sticky_key: None,
        insert: None,
    }
}

/// The outcomes of a frame to a listener.
struct Verdicts<'a> {
    frame: &'a [u8],
    own_mac: [u8; 6],
    listener: ListenerKey,
    sticky_key: Option<Client>,
}

impl<'a> Verdicts<'a> {
    /// The outcomes of `frame` under `listener` (no sticky session read).
    fn of(frame: &'a [u8], own_mac: [u8; 6], listener: ListenerKey) -> Verdicts<'a> {
        Verdicts {
            frame,
            own_mac,
            listener,
            sticky_key: None,
        }
    }

    fn dropped(
        &self,
        mut counters: Vec<Counter>,
        least_connections: Option<Vec<TargetKey>>,
    ) -> Outcome {
        counters.extend([Counter::NoTarget, Counter::Dropped]);
        Outcome {
            action: XDP_DROP,
            output: self.frame.to_vec(),
            counters,
            target: None,
            listener: None,
            new_flow: false,
            least_connections,
            sticky_key: self.sticky_key.clone(),
            insert: None,
        }
    }

    /// Forwarded to `target`, whose MAC is `mac`.
    fn forwarded(
        &self,
        (target, mac): (TargetKey, [u8; 6]),
        counters: Vec<Counter>,
        new_flow: bool,
        least_connections: Option<Vec<TargetKey>>,
    ) -> Outcome {
        Outcome {
            action: XDP_TX,
            output: rewrite(self.frame, mac, self.own_mac),
            counters,
            target: Some(target),
            listener: Some(self.listener),
            new_flow,
            least_connections,
            sticky_key: self.sticky_key.clone(),
            insert: None,
        }
    }
}

/// Target `key` of `group` and its MAC, if it takes its flows' packets.
fn usable(group: &Group, key: &TargetKey) -> Option<(TargetKey, [u8; 6])> {
    let t = group.usable(key)?;
    Some((t.key.clone(), t.mac?))
}

impl Model {
    /// A model of a new data plane whose flow table is `table` (empty),
    /// holding `policy` on a host with `host`'s MACs and health verdicts.
    pub fn new(table: Table, policy: &Policy, host: &Observed) -> Model {
        let mut tables = Tables::default();
        Model {
            flows: HashMap::new(),
            table,
            active: HashMap::new(),
            round_robin: HashMap::new(),
            sticky: HashMap::new(),
            fragments: HashMap::new(),
            now_ns: 0,
            view: View::new(policy, host, &mut tables),
            tables,
        }
    }

    /// Takes another policy (or other MACs or verdicts): the state stays.
    pub fn set_policy(&mut self, policy: &Policy, host: &Observed) {
        self.view = View::new(policy, host, &mut self.tables);
    }

    /// The outcome of `frame`; `run` is what the program did with it, used
    /// only to settle the choices the model cannot make alone: if one of
    /// the targets some pair of least connections' draws leads to has the
    /// MAC it wrote, the model takes it; if the rules allow the entry its
    /// new flow took (or its going unremembered), the model takes that;
    /// otherwise it takes its own first and the outcomes differ.
    pub fn process_observed(&mut self, frame: &[u8], run: &ProgramRun) -> Outcome {
        let (key, flags, kind) = match read(frame) {
            Ok(Packet {
                key,
                kind: Kind::Later(datagram),
                ..
            }) => return self.later_fragment(frame, key, datagram, run.clock),
            Ok(p) => (p.key, p.flags, p.kind),
            Err(Refused { counter, first }) => {
                if let Some((key, id, proto)) = first {
                    self.first_to_host(frame, &key, (id, proto), run.clock);
                }
                return passed(frame, counter);
            }
        };
        let to = ListenerKey {
            addr_be: key.dst_be,
            port_be: key.dst_port_be,
            proto: key.proto,
            family: key.family,
        };
        let Some((listener, group)) = self
            .view
            .listener_of_packet(&to)
            .map(|(l, g)| (l, g.clone()))
        else {
            if let Kind::First(id, proto) = kind {
                self.first_to_host(frame, &key, (id, proto), run.clock);
            }
            return passed(frame, Counter::Passed);
        };
        // Only frames addressed to the interface's own MAC are balanced.
        if frame[..6] != self.view.own_mac {
            return passed(frame, Counter::Passed);
        }
        let verdicts = Verdicts {
            frame,
            own_mac: self.view.own_mac,
            listener,
            sticky_key: group.sticky_s.map(|_| Client {
                group: group.name.clone(),
                addr_be: key.src_be,
            }),
        };
        if kind == Kind::IcmpError {
            return self.icmp_error(&verdicts, &group, &key);
        }
        let outcome = self.flow_packet(&verdicts, &group, &key, flags, run);
        if let (Kind::First(datagram, proto), Some(target)) = (kind, &outcome.target) {
            let went = Some((target.clone(), listener));
            self.record_fragment(&key, (datagram, proto), went, run.clock);
        }
        outcome
    }

    /// The outcome of a packet of a listener's flow (a whole packet or a
    /// first fragment).
    fn flow_packet(
        &mut self,
        verdicts: &Verdicts,
        group: &Group,
        key: &FlowKey,
        flags: u8,
        run: &ProgramRun,
    ) -> Outcome {
        let key = *key;
        let mut counters = Vec::new();
        if let Some(t) = self.follow(group, &key, flags, run.clock, &mut counters) {
            counters.extend([Counter::FlowHit, Counter::Forwarded]);
            return verdicts.forwarded(t, counters, false, None);
        }
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        if key.proto == PROTO_TCP && !syn && !self.flows.contains_key(&key) {
            // A TCP packet, not a SYN, of a flow the table does not hold:
            // the group's hash target, remembered in an empty entry only
            // (evicting nobody), not counted until its next packet.
            let Some(t) = by_hash(group, &key).and_then(|t| usable(group, &t)) else {
                return verdicts.dropped(counters, None);
            };
            if let Some(entry) = self.table.first_empty(&key, &self.flows) {
                self.table.put(entry, key);
                self.flows.insert(
                    key,
                    Flow {
                        target: t.0.clone(),
                        ending: flags & (tcp_flags::FIN | tcp_flags::RST) != 0,
                        counted: false,
                        seen: time_units(self.now_ns),
                        again: false,
                        entry,
                        stamped: run.clock,
                    },
                );
            }
            return verdicts.forwarded(
                t,
                vec![Counter::FlowMissByHash, Counter::Forwarded],
                false,
                None,
            );
        }
        let choice = self.first_choice(group, &key, flags, run.mac);
        let Some(t) = choice.target.as_ref().and_then(|t| usable(group, t)) else {
            return verdicts.dropped(counters, choice.least_connections);
        };
        let insert = self.start_flow(key, t.0.clone(), flags, run, &mut counters);
        counters.extend([Counter::NewFlow, Counter::Forwarded]);
        let mut outcome = verdicts.forwarded(t, counters, true, choice.least_connections);
        outcome.insert = insert;
        outcome
    }

    /// Follows the frame's flow entry (README "Flow lifecycle"): the target
    /// the flow goes on to, or `None` when the frame starts a new flow
    /// (`counters` then holds what reselecting counted). `clock`: the
    /// program's, which stamps the entry.
    fn follow(
        &mut self,
        group: &Group,
        key: &FlowKey,
        flags: u8,
        clock: Span,
        counters: &mut Vec<Counter>,
    ) -> Option<(TargetKey, [u8; 6])> {
        let now = self.now_ns;
        match step(self.flows.get(key), flags, now, group.timeouts) {
            Step::Miss => {}
            Step::Ended => self.uncount(key),
            Step::Hit { ending, touch } => {
                if let Some(t) = usable(group, &self.flows[key].target) {
                    let flow = self.flows.get_mut(key).unwrap();
                    if touch {
                        flow.seen = time_units(now);
                    }
                    flow.stamped = flow.stamped.after_packet(clock);
                    // A flow remembered at a TCP miss counts from its
                    // next packet (unless that ends it).
                    let count = !flow.again && !flow.counted && !flow.ending && !ending;
                    flow.again = true;
                    if count {
                        flow.counted = true;
                        *self.active.entry(flow.target.clone()).or_default() += 1;
                    }
                    if ending {
                        flow.ending = true;
                        self.uncount(key);
                    }
                    return Some(t);
                }
                counters.push(Counter::FlowReselected);
                self.uncount(key);
            }
        }
        None
    }

    /// The target of a frame without a live flow entry.
    fn first_choice(
        &mut self,
        group: &Group,
        key: &FlowKey,
        flags: u8,
        observed_mac: Option<[u8; 6]>,
    ) -> Choice {
        // A TCP flow under way whose entry is missing goes to the group's
        // hash slot whatever the algorithm; a SYN or a UDP packet starts a
        // new flow (sticky session, else the algorithm).
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        if key.proto == PROTO_TCP && !syn {
            Choice::of(by_hash(group, key))
        } else {
            self.new_flow(group, key, observed_mac)
        }
    }

    /// Records a new flow's entry to `target` and counts it active: in
    /// place of its own entry if it has one, else in the entry the table's
    /// rules give it (its flow evicted), or nowhere (the flow goes
    /// unremembered, uncounted). What that counts goes to `counters`; how
    /// the entry was chosen is returned.
    fn start_flow(
        &mut self,
        key: FlowKey,
        target: TargetKey,
        flags: u8,
        run: &ProgramRun,
        counters: &mut Vec<Counter>,
    ) -> Option<Insert> {
        let (entry, insert) = match self.flows.get(&key) {
            Some(own) => (Some(own.entry), None),
            None => {
                let insert = self.table.insert(&key, &self.flows, run.clock, run.entry);
                (insert.entry(), Some(insert))
            }
        };
        if let Some((evicted, _)) = insert.as_ref().and_then(Insert::evicted) {
            counters.push(Counter::FlowEvicted);
            self.delete(&evicted);
        }
        let Some(entry) = entry else {
            counters.push(Counter::FlowInsertFailed);
            return insert;
        };
        // A flow first seen at its FIN or RST has already ended: not counted.
        let ending = flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
        if !ending {
            *self.active.entry(target.clone()).or_default() += 1;
        }
        self.table.put(entry, key);
        self.flows.insert(
            key,
            Flow {
                target,
                ending,
                counted: !ending,
                seen: time_units(self.now_ns),
                again: false,
                entry,
                stamped: run.clock,
            },
        );
        insert
    }

    /// A new flow's target: the client's sticky session while it lasts and
    /// its target may take new flows, else the algorithm's choice (which
    /// starts a session when sticky sessions are on and the target may take
    /// new flows).
    fn new_flow(&mut self, group: &Group, key: &FlowKey, observed_mac: Option<[u8; 6]>) -> Choice {
        let Some(duration_s) = group.sticky_s else {
            return self.by_algorithm(group, key, observed_mac);
        };
        let client = Client {
            group: group.name.clone(),
            addr_be: key.src_be,
        };
        if let Some(s) = self.sticky.get(&client)
            && self.now_ns < s.expires_ns
            && group.selectable(&s.target)
        {
            return Choice::of(Some(s.target.clone()));
        }
        let choice = self.by_algorithm(group, key, observed_mac);
        if let Some(target) = &choice.target
            && group.selectable(target)
        {
            let duration = duration_s as u64 * 1_000_000_000;
            self.sticky.insert(
                client,
                Session {
                    target: target.clone(),
                    expires_ns: self.now_ns.wrapping_add(duration),
                },
            );
        }
        choice
    }

    fn by_algorithm(
        &mut self,
        group: &Group,
        key: &FlowKey,
        observed_mac: Option<[u8; 6]>,
    ) -> Choice {
        match group.algorithm {
            Algorithm::RoundRobin => {
                // One shared position per group, advanced by every new flow
                // (nothing is taken from an empty order).
                let slots = &group.table.slots;
                if slots.is_empty() {
                    return Choice::of(None);
                }
                let position = self.round_robin.entry(group.name.clone()).or_default();
                let target = slots[(*position % slots.len() as u64) as usize].as_deref();
                *position += 1;
                Choice::of(target.cloned())
            }
            Algorithm::LeastConnections => {
                let candidates = group
                    .table
                    .draws()
                    .winners(|t| (self.active(t), group.weight(t)));
                let observed = candidates.iter().find(|&target| {
                    observed_mac.is_some() && usable(group, target).map(|t| t.1) == observed_mac
                });
                Choice {
                    target: observed.or(candidates.first()).cloned(),
                    least_connections: Some(candidates),
                }
            }
            Algorithm::Hash | Algorithm::SourceIp => Choice::of(by_hash(group, key)),
        }
    }

    /// Takes a flow out of its target's active count, once.
    fn uncount(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.get_mut(key)
            && f.counted
        {
            f.counted = false;
            *self.active.entry(f.target.clone()).or_default() -= 1;
        }
    }

    /// Forgets a flow's entry, taking it out of its target's count if it
    /// was counted, as every deletion of an entry does.
    pub fn delete(&mut self, key: &FlowKey) -> bool {
        self.uncount(key);
        let Some(flow) = self.flows.remove(key) else {
            return false;
        };
        self.table.free(flow.entry);
        true
    }

    /// Active flows of a target.
    pub fn active(&self, target: &TargetKey) -> i64 {
        self.active.get(target).copied().unwrap_or(0)
    }

    /// The round-robin position of a group (new flows it has placed).
    pub fn round_robin_position(&self, group: &str) -> u64 {
        self.round_robin.get(group).copied().unwrap_or(0)
    }

    /// Forgets the round-robin positions of the groups `numbered` says have
    /// no number any more: the loader zeroes a group number's position when
    /// it releases the number, so a group that comes back later starts
    /// again. (Which groups have numbers is the harness's to say.)
    pub fn forget_groups(&mut self, numbered: impl Fn(&str) -> bool) {
        self.round_robin.retain(|name, _| numbered(name));
    }

    /// The target of the flow hash's slot of `group`'s table (`None`: an
    /// empty table or an empty slot).
    pub fn hash_target(&self, group: &str, key: &FlowKey) -> Option<TargetKey> {
        by_hash(self.view.groups.get(group)?, key)
    }
}

/// The target of the flow hash's slot of the group's table (`None`: an
/// empty table or an empty slot).
fn by_hash(group: &Group, key: &FlowKey) -> Option<TargetKey> {
    by_hash_fields(group, key, group.fields)
}

/// The target of the slot the hash of the flow's `fields` picks in the
/// group's table.
fn by_hash_fields(group: &Group, key: &FlowKey, fields: hash::Fields) -> Option<TargetKey> {
    let slots = &group.table.slots;
    if slots.is_empty() {
        return None;
    }
    let slot = hash::flow_hash(key, fields) as usize % slots.len();
    slots[slot].as_ref().map(|t| TargetKey::clone(t))
}

fn rewrite(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn group() -> Timeouts {
        Timeouts {
            idle_s: 350,
            fin_s: 10,
        }
    }

    fn flow(ending: bool, last_seen_s: u64) -> Flow {
        Flow {
            target: TargetKey::new("web", [10, 0, 3, 11].into()),
            ending,
            counted: !ending,
            seen: time_units(last_seen_s * S),
            again: false,
            entry: (0, 0),
            stamped: Span::at(last_seen_s * S),
        }
    }

    #[test]
    fn lifecycle_transitions() {
        use tcp_flags::*;
        let g = group();
        let now = 1000 * S;
        let cases = [
            // (entry, flags, step)
            (None, SYN, Step::Miss),
            (None, ACK, Step::Miss),
            (None, 0, Step::Miss),
            // Seen within the touch interval: no touch.
            (
                Some(flow(false, 1000)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: false,
                },
            ),
            (
                Some(flow(false, 998)),
                ACK | PSH,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            // The client's FIN or RST: the flow is ending.
            (
                Some(flow(false, 1000)),
                FIN | ACK,
                Step::Hit {
                    ending: true,
                    touch: false,
                },
            ),
            (
                Some(flow(false, 1000)),
                RST,
                Step::Hit {
                    ending: true,
                    touch: false,
                },
            ),
            // Idle timeout: under 350 s goes on, past it and the touch
            // interval (entry times lag the last packet by up to a second)
            // ends.
            (
                Some(flow(false, 651)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            (
                Some(flow(false, 649)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            (Some(flow(false, 648)), ACK, Step::Ended),
            // After FIN: the FIN timeout.
            (
                Some(flow(true, 991)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            (Some(flow(true, 988)), ACK, Step::Ended),
            // A SYN after FIN/RST is a new flow (port reuse); a repeated SYN
            // of a live flow is not.
            (Some(flow(true, 1000)), SYN, Step::Ended),
            (
                Some(flow(false, 1000)),
                SYN,
                Step::Hit {
                    ending: false,
                    touch: false,
                },
            ),
            // UDP: only the idle timeout.
            (
                Some(flow(false, 700)),
                0,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
        ];
        for (entry, flags, want) in cases {
            assert_eq!(
                step(entry.as_ref(), flags, now, g),
                want,
                "{entry:?} flags {flags:#x}"
            );
        }
    }
}
