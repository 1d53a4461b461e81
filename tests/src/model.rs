//! A reference model of the XDP program in plain Rust: what it must do with a
//! frame, given the map plan and the flow table. Golden tests compare the real
//! program against it; it is written from the documented rules, not from the
//! eBPF code.
use std::collections::HashMap;

use lb_common::{Counter, FLOW_TOUCH_NS, FlowKey, GroupInfo, hash::flow_hash, target_flags};
use lb_user::plan::MapPlan;

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

/// The model's state: the flow table, the active flows per target, and the
/// time (data-plane time as the tests drive it).
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub flows: HashMap<FlowKey, Flow>,
    pub active: HashMap<u32, i64>,
    pub now_ns: u64,
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

impl Model {
    pub fn process(&mut self, plan: &MapPlan, frame: &[u8]) -> Outcome {
        let pass = |counter| Outcome {
            action: XDP_PASS,
            output: frame.to_vec(),
            counters: vec![counter],
            target: None,
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
        let group_id = listener.info.group_id;
        let usable = |id: u32| {
            plan.targets.iter().find(|t| {
                t.id == id
                    && t.info.flags & target_flags::USABLE != 0
                    && t.info.group_id == group_id
            })
        };
        let group = plan
            .groups
            .iter()
            .find(|g| g.id == group_id)
            .expect("listener's group");
        let now = self.now_ns;
        let mut counters = Vec::new();
        match step(self.flows.get(&key), flags, now, &group.info) {
            Step::Miss => {}
            Step::Ended => self.uncount(&key),
            Step::Hit { ending, touch } => {
                let id = self.flows[&key].target;
                if let Some(t) = usable(id) {
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
                    };
                }
                counters.push(Counter::FlowReselected);
                self.uncount(&key);
            }
        }
        // A new flow, or a TCP flow under way whose entry is missing: both
        // go to the group's consistent-hash target (the only algorithm here).
        let slot = flow_hash(&key, group.info.hash_fields) % group.table.len() as u32;
        let id = group.table[slot as usize];
        let Some(t) = (id != 0).then(|| usable(id)).flatten() else {
            counters.extend([Counter::NoTarget, Counter::Dropped]);
            return Outcome {
                action: XDP_DROP,
                output: frame.to_vec(),
                counters,
                target: None,
            };
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

    /// Active flows of a target.
    pub fn active(&self, id: u32) -> i64 {
        self.active.get(&id).copied().unwrap_or(0)
    }
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
}
