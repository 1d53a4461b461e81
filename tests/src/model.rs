//! A reference model of the XDP program in plain Rust: what it must do with a
//! frame, given the map plan and the model's own copy of the program's state
//! (flow table, active flows per target, round-robin positions, sticky
//! sessions). Golden, algorithm and differential tests compare the real
//! program against it; it is written from the documented rules (README
//! "Algorithms", "Sticky sessions", "Flow lifecycle"), not from the eBPF code.
//!
//! Least connections draws two random slots (`bpf_get_prandom_u32`), which
//! the model cannot know. It computes instead the set of targets that SOME
//! pair of draws leads to under the comparison rule (every pair of slots is
//! reachable: `choice::scale` maps the 32-bit draws onto every slot), and
//! takes the program's choice if it is in that set (`Model::process_observed`).
//! The check is exact: a choice outside the set is a bug, and every choice in
//! it is one the program may make.
use std::collections::{BTreeSet, HashMap};

use lb_common::{
    Counter, FLOW_TOUCH_NS, FlowKey, GroupInfo, PROTO_TCP, algorithm,
    choice::{LEAST_CONNECTIONS_WALK, fewer_per_weight},
    group_flags,
    hash::flow_hash,
    target_flags,
};
use lb_user::plan::{MapPlan, PlannedGroup, PlannedTarget};

use crate::packets::tcp_flags;

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
    pub target: Option<u32>,
    /// The listener it was counted under (forwarded frames only).
    pub listener: Option<u32>,
    /// Whether it was counted as a new flow (listener and target stats).
    pub new_flow: bool,
    /// Least connections: the targets some pair of random draws leads to
    /// (the program's choice must be one of them).
    pub least_connections: Option<Vec<u32>>,
    /// The (group id, client address) of the sticky session this frame may
    /// have read or written (a listener frame of a sticky group).
    pub sticky_key: Option<(u32, [u32; 4])>,
}

/// What the model remembers of a flow (the documented part of the data
/// plane's `FlowState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub target: u32,
    /// The client sent FIN or RST.
    pub ending: bool,
    /// The flow counts in its target's active flows.
    pub counted: bool,
    pub last_seen_ns: u64,
}

/// A group table and the least-connections candidate pairs it gives.
type PairsOf = (lb_user::plan::Table, Vec<(u32, u32)>);

/// A client's sticky session (`STICKY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub target: u32,
    pub expires_ns: u64,
}

/// The model's state: the flow table, the active flows per target, the
/// round-robin position per group, the sticky sessions, and the time
/// (data-plane time as the tests drive it: `Config::time_offset_ns`).
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub flows: HashMap<FlowKey, Flow>,
    pub active: HashMap<u32, i64>,
    /// Group id -> round-robin position (`GROUP_RR`: new flows taken).
    pub round_robin: HashMap<u32, u64>,
    /// (group id, client address) -> session.
    pub sticky: HashMap<(u32, [u32; 4]), Session>,
    pub now_ns: u64,
    /// Least connections: per group, the table and the (first, second)
    /// candidate pairs its draws can give (they depend on the table only).
    lc_pairs: HashMap<u32, PairsOf>,
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
/// `flags` (0 for UDP) at `now_ns`.
pub fn step(entry: Option<&Flow>, flags: u8, now_ns: u64, group: &GroupInfo) -> Step {
    let Some(e) = entry else {
        return Step::Miss;
    };
    let age = now_ns.saturating_sub(e.last_seen_ns);
    let timeout_s = if e.ending {
        group.fin_timeout_s
    } else {
        group.idle_timeout_s
    };
    let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if age > timeout_s as u64 * 1_000_000_000 || (syn && e.ending) {
        return Step::Ended;
    }
    Step::Hit {
        ending: flags & (tcp_flags::FIN | tcp_flags::RST) != 0,
        touch: age > FLOW_TOUCH_NS,
    }
}

enum Parsed {
    Flow(FlowKey, u8),
    Pass(Counter),
}

fn parse(frame: &[u8]) -> Parsed {
    let get = |at: usize, len: usize| frame.get(at..at + len);
    let Some(eth) = get(0, 14) else {
        return Parsed::Pass(Counter::Malformed);
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        let Some(tag) = get(14, 4) else {
            return Parsed::Pass(Counter::Malformed);
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 = 18;
    }
    let mut key = FlowKey::default();
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let l4 = match ethertype {
        0x0800 => {
            let Some(ip) = get(l3, 20) else {
                return Parsed::Pass(Counter::Malformed);
            };
            let hlen = (ip[0] & 0x0f) as usize * 4;
            if ip[0] >> 4 != 4 || hlen < 20 || (u16::from_be_bytes([ip[2], ip[3]]) as usize) < hlen
            {
                return Parsed::Pass(Counter::Malformed);
            }
            if get(l3, hlen).is_none() {
                return Parsed::Pass(Counter::Malformed);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Parsed::Pass(Counter::Fragment);
            }
            key.proto = ip[9];
            key.family = lb_common::FAMILY_V4;
            key.src_be[0] = word(ip, 12);
            key.dst_be[0] = word(ip, 16);
            l3 + hlen
        }
        0x86dd => {
            let Some(ip) = get(l3, 40) else {
                return Parsed::Pass(Counter::Malformed);
            };
            if ip[0] >> 4 != 6 {
                return Parsed::Pass(Counter::Malformed);
            }
            key.proto = ip[6];
            key.family = lb_common::FAMILY_V6;
            key.src_be = std::array::from_fn(|i| word(ip, 8 + 4 * i));
            key.dst_be = std::array::from_fn(|i| word(ip, 24 + 4 * i));
            l3 + 40
        }
        _ => return Parsed::Pass(Counter::Passed),
    };
    let need = match key.proto {
        lb_common::PROTO_TCP => 20,
        lb_common::PROTO_UDP => 8,
        _ => return Parsed::Pass(Counter::Passed),
    };
    let Some(ports) = get(l4, need) else {
        return Parsed::Pass(Counter::Malformed);
    };
    key.src_port_be = u16::from_ne_bytes([ports[0], ports[1]]);
    key.dst_port_be = u16::from_ne_bytes([ports[2], ports[3]]);
    let flags = if key.proto == lb_common::PROTO_TCP {
        ports[13]
    } else {
        0
    };
    Parsed::Flow(key, flags)
}

/// Where a new flow's choice came from (for `Model::choose`).
struct Choice {
    id: Option<u32>,
    least_connections: Option<Vec<u32>>,
}

impl Model {
    /// The outcome of `frame`. Least connections takes the first target of
    /// its candidate set; use [`Model::process_observed`] to follow the
    /// program's random draws.
    pub fn process(&mut self, plan: &MapPlan, frame: &[u8]) -> Outcome {
        self.process_observed(plan, frame, None)
    }

    /// The outcome of `frame`; `observed_mac` is the destination MAC the
    /// program wrote (its output's first 6 bytes, if it forwarded the frame).
    /// It is used only to resolve a least-connections choice: if one of the
    /// targets some pair of draws leads to has that MAC, the model takes it;
    /// otherwise it takes the first candidate and the outcomes differ.
    pub fn process_observed(
        &mut self,
        plan: &MapPlan,
        frame: &[u8],
        observed_mac: Option<[u8; 6]>,
    ) -> Outcome {
        let pass = |counter| Outcome {
            action: XDP_PASS,
            output: frame.to_vec(),
            counters: vec![counter],
            target: None,
            listener: None,
            new_flow: false,
            least_connections: None,
            sticky_key: None,
        };
        let (key, flags) = match parse(frame) {
            Parsed::Flow(key, flags) => (key, flags),
            Parsed::Pass(counter) => return pass(counter),
        };
        let Some(listener) = plan.listeners.iter().find(|l| {
            l.key.addr_be == key.dst_be
                && l.key.port_be == key.dst_port_be
                && l.key.proto == key.proto
                && l.key.family == key.family
        }) else {
            return pass(Counter::Passed);
        };
        let listener_id = listener.info.listener_id;
        let group_id = listener.info.group_id;
        let sticky_key = plan
            .groups
            .iter()
            .any(|g| g.id == group_id && g.info.flags & group_flags::STICKY != 0)
            .then_some((group_id, key.src_be));
        let drop = |mut counters: Vec<Counter>, least_connections| {
            counters.extend([Counter::NoTarget, Counter::Dropped]);
            Outcome {
                action: XDP_DROP,
                output: frame.to_vec(),
                counters,
                target: None,
                listener: None,
                new_flow: false,
                least_connections,
                sticky_key,
            }
        };
        let Some(group) = plan.groups.iter().find(|g| g.id == group_id) else {
            return drop(Vec::new(), None);
        };
        let now = self.now_ns;
        let mut counters = Vec::new();
        match step(self.flows.get(&key), flags, now, &group.info) {
            Step::Miss => {}
            Step::Ended => self.uncount(&key),
            Step::Hit { ending, touch } => {
                let id = self.flows[&key].target;
                if let Some(t) = usable(plan, id, group_id) {
                    if ending {
                        self.flows.get_mut(&key).unwrap().ending = true;
                        self.uncount(&key);
                    }
                    if touch {
                        self.flows.get_mut(&key).unwrap().last_seen_ns = now;
                    }
                    counters.extend([Counter::FlowHit, Counter::Forwarded]);
                    return Outcome {
                        action: XDP_TX,
                        output: rewrite(frame, t.info.mac, plan.config.src_mac),
                        counters,
                        target: Some(id),
                        listener: Some(listener_id),
                        new_flow: false,
                        least_connections: None,
                        sticky_key,
                    };
                }
                counters.push(Counter::FlowReselected);
                self.uncount(&key);
            }
        }
        // A TCP flow under way whose entry is missing goes to the group's
        // hash slot whatever the algorithm; a SYN or a UDP packet starts a
        // new flow (sticky session, else the algorithm).
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let choice = if key.proto == PROTO_TCP && !syn {
            Choice {
                id: by_hash(group, &key),
                least_connections: None,
            }
        } else {
            self.new_flow(plan, group, &key, observed_mac)
        };
        let Some((id, t)) = choice
            .id
            .and_then(|id| usable(plan, id, group_id).map(|t| (id, t)))
        else {
            return drop(counters, choice.least_connections);
        };
        // A flow first seen at its FIN or RST has already ended: not counted.
        let ending = flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
        self.flows.insert(
            key,
            Flow {
                target: id,
                ending,
                counted: !ending,
                last_seen_ns: now,
            },
        );
        if !ending {
            *self.active.entry(id).or_default() += 1;
        }
        counters.extend([Counter::NewFlow, Counter::Forwarded]);
        Outcome {
            action: XDP_TX,
            output: rewrite(frame, t.info.mac, plan.config.src_mac),
            counters,
            target: Some(id),
            listener: Some(listener_id),
            new_flow: true,
            least_connections: choice.least_connections,
            sticky_key,
        }
    }

    /// A new flow's target: the client's sticky session while it lasts and
    /// its target may take new flows, else the algorithm's choice (which
    /// starts a session when sticky sessions are on and the target may take
    /// new flows).
    fn new_flow(
        &mut self,
        plan: &MapPlan,
        group: &PlannedGroup,
        key: &FlowKey,
        observed_mac: Option<[u8; 6]>,
    ) -> Choice {
        if group.info.flags & group_flags::STICKY == 0 {
            return self.by_algorithm(plan, group, key, observed_mac);
        }
        let client = (group.id, key.src_be);
        if let Some(s) = self.sticky.get(&client)
            && self.now_ns < s.expires_ns
            && selectable(plan, s.target, group.id)
        {
            return Choice {
                id: Some(s.target),
                least_connections: None,
            };
        }
        let choice = self.by_algorithm(plan, group, key, observed_mac);
        if let Some(id) = choice.id
            && selectable(plan, id, group.id)
        {
            let duration = group.info.sticky_duration_s as u64 * 1_000_000_000;
            self.sticky.insert(
                client,
                Session {
                    target: id,
                    expires_ns: self.now_ns.wrapping_add(duration),
                },
            );
        }
        choice
    }

    fn by_algorithm(
        &mut self,
        plan: &MapPlan,
        group: &PlannedGroup,
        key: &FlowKey,
        observed_mac: Option<[u8; 6]>,
    ) -> Choice {
        match group.info.algorithm {
            algorithm::ROUND_ROBIN => {
                // One shared position per group, advanced by every new flow
                // (nothing is taken from an empty order).
                let id = (!group.table.is_empty()).then(|| {
                    let position = self.round_robin.entry(group.id).or_default();
                    let id = group
                        .table
                        .get((*position % group.table.len() as u64) as usize);
                    *position += 1;
                    id
                });
                Choice {
                    id,
                    least_connections: None,
                }
            }
            algorithm::LEAST_CONNECTIONS => {
                if self
                    .lc_pairs
                    .get(&group.id)
                    .is_none_or(|(t, _)| *t != group.table)
                {
                    let pairs = least_connections_pairs(&group.table.to_vec());
                    self.lc_pairs.insert(group.id, (group.table.clone(), pairs));
                }
                let pairs = &self.lc_pairs[&group.id].1;
                let candidates = least_connections_candidates(
                    pairs,
                    |id| self.active(id),
                    |id| target(plan, id).map_or(0, |t| t.info.weight),
                );
                let observed = candidates.iter().copied().find(|&id| {
                    observed_mac.is_some()
                        && usable(plan, id, group.id).map(|t| t.info.mac) == observed_mac
                });
                Choice {
                    id: observed.or(candidates.first().copied()),
                    least_connections: Some(candidates),
                }
            }
            _ => Choice {
                id: by_hash(group, key),
                least_connections: None,
            },
        }
    }

    /// Takes a flow out of its target's active count, once.
    fn uncount(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.get_mut(key)
            && f.counted
        {
            f.counted = false;
            *self.active.entry(f.target).or_default() -= 1;
        }
    }

    /// Forgets a flow's entry without uncounting it, as an LRU eviction (or
    /// any deletion but the sweeper's) does.
    pub fn evict(&mut self, key: &FlowKey) -> bool {
        self.flows.remove(key).is_some()
    }

    /// Active flows of a target.
    pub fn active(&self, id: u32) -> i64 {
        self.active.get(&id).copied().unwrap_or(0)
    }

    /// The round-robin position of a group (new flows it has placed).
    pub fn round_robin_position(&self, group_id: u32) -> u64 {
        self.round_robin.get(&group_id).copied().unwrap_or(0)
    }
}

/// The flow hash's slot of the group's table (`None`: an empty table).
fn by_hash(group: &PlannedGroup, key: &FlowKey) -> Option<u32> {
    let len = group.table.len() as u32;
    (len > 0).then(|| {
        group
            .table
            .get((flow_hash(key, group.info.hash_fields) % len) as usize)
    })
}

fn target(plan: &MapPlan, id: u32) -> Option<&PlannedTarget> {
    plan.targets.iter().find(|t| t.id == id)
}

/// The target if it may take packets of `group_id`'s flows.
fn usable(plan: &MapPlan, id: u32, group_id: u32) -> Option<&PlannedTarget> {
    target(plan, id).filter(|t| {
        id != 0 && t.info.flags & target_flags::USABLE != 0 && t.info.group_id == group_id
    })
}

/// Whether the target may take new flows of `group_id` (sticky sessions).
fn selectable(plan: &MapPlan, id: u32, group_id: u32) -> bool {
    target(plan, id).is_some_and(|t| {
        id != 0 && t.info.flags & target_flags::SELECTABLE != 0 && t.info.group_id == group_id
    })
}

/// Least connections: the (first, second) candidate pairs some pair of
/// random draws gives. A draw is any slot of `table`; the second candidate is
/// the first target other than the first candidate's within
/// `LEAST_CONNECTIONS_WALK` slots from its slot (wrapping), else the first
/// candidate itself. Empty for an empty table.
pub fn least_connections_pairs(table: &[u32]) -> Vec<(u32, u32)> {
    let len = table.len();
    let firsts: BTreeSet<u32> = table.iter().copied().collect();
    let mut pairs = BTreeSet::new();
    for &first in &firsts {
        for start in 0..len {
            let second = (0..LEAST_CONNECTIONS_WALK as usize)
                .map(|i| table[(start + i) % len])
                .find(|&id| id != first)
                .unwrap_or(first);
            pairs.insert((first, second));
        }
    }
    pairs.into_iter().collect()
}

/// Least connections: every target the candidate `pairs` lead to (sorted):
/// the second wins only with strictly fewer active flows per weight.
pub fn least_connections_candidates(
    pairs: &[(u32, u32)],
    active: impl Fn(u32) -> i64,
    weight: impl Fn(u32) -> u16,
) -> Vec<u32> {
    let out: BTreeSet<u32> = pairs
        .iter()
        .map(|&(first, second)| {
            let better = second != first
                && fewer_per_weight(active(second), weight(second), active(first), weight(first));
            if better { second } else { first }
        })
        .collect();
    out.into_iter().collect()
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

    fn group() -> GroupInfo {
        GroupInfo {
            idle_timeout_s: 350,
            fin_timeout_s: 10,
            ..Default::default()
        }
    }

    fn flow(ending: bool, last_seen_s: u64) -> Flow {
        Flow {
            target: 1,
            ending,
            counted: !ending,
            last_seen_ns: last_seen_s * S,
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
            // Seen within FLOW_TOUCH_NS: no touch.
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
                Some(flow(false, 999)),
                FIN | ACK,
                Step::Hit {
                    ending: true,
                    touch: false,
                },
            ),
            (
                Some(flow(false, 999)),
                RST,
                Step::Hit {
                    ending: true,
                    touch: false,
                },
            ),
            // Idle timeout: up to 350 s goes on, past it ends.
            (
                Some(flow(false, 650)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            (Some(flow(false, 649)), ACK, Step::Ended),
            // After FIN: the FIN timeout.
            (
                Some(flow(true, 990)),
                ACK,
                Step::Hit {
                    ending: false,
                    touch: true,
                },
            ),
            (Some(flow(true, 989)), ACK, Step::Ended),
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
                step(entry.as_ref(), flags, now, &g),
                want,
                "{entry:?} flags {flags:#x}"
            );
        }
    }

    #[test]
    fn least_connections_may_pick_what_some_pair_of_draws_picks() {
        let table = [1, 2, 3, 1, 2];
        let pairs = least_connections_pairs(&table);
        assert_eq!(pairs, [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]);
        let equal = |_| 100;
        // Equal counts: a tie keeps the first draw, which may be any target.
        assert_eq!(
            least_connections_candidates(&pairs, |_| 0, equal),
            [1, 2, 3]
        );
        // A target with more flows than every other is never picked.
        let loaded = |id| if id == 1 { 10 } else { 0 };
        assert_eq!(least_connections_candidates(&pairs, loaded, equal), [2, 3]);
        // Per weight: 10 flows on weight 100 (0.1 per unit) beat 1 on
        // weight 5 (0.2), which beats 2 on weight 5 (0.4): the last is never
        // picked.
        let weight = |id| if id == 1 { 100 } else { 5 };
        let active = |id| [0, 10, 1, 2][id as usize];
        assert_eq!(least_connections_candidates(&pairs, active, weight), [1, 2]);
        // A run of one target longer than the walk: both draws may be it.
        let mut long = vec![1; 20];
        long.push(2);
        let pairs = least_connections_pairs(&long);
        assert_eq!(pairs, [(1, 1), (1, 2), (2, 1)]);
        assert_eq!(least_connections_candidates(&pairs, loaded, equal), [1, 2]);
        assert!(least_connections_pairs(&[]).is_empty());
    }
}
