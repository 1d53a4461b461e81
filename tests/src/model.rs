//! A reference model of the XDP program in plain Rust: what it must do with a
//! frame, given the map plan and the flow table. Golden tests compare the real
//! program against it; it is written from the documented rules, not from the
//! eBPF code.
use std::collections::HashMap;

use lb_common::{Counter, FlowKey, hash::flow_hash, target_flags};
use lb_user::plan::MapPlan;

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

/// The model's state: the flow table.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub flows: HashMap<FlowKey, u32>,
}

enum Parsed {
    Flow(FlowKey),
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
    Parsed::Flow(key)
}

impl Model {
    pub fn process(&mut self, plan: &MapPlan, frame: &[u8]) -> Outcome {
        let pass = |counter| Outcome {
            action: XDP_PASS,
            output: frame.to_vec(),
            counters: vec![counter],
            target: None,
        };
        let key = match parse(frame) {
            Parsed::Flow(key) => key,
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
        let mut counters = Vec::new();
        if let Some(&id) = self.flows.get(&key) {
            if let Some(t) = usable(id) {
                counters.extend([Counter::FlowHit, Counter::Forwarded]);
                return Outcome {
                    action: XDP_TX,
                    output: rewrite(frame, t.info.mac, plan.config.src_mac),
                    counters,
                    target: Some(id),
                };
            }
            counters.push(Counter::FlowReselected);
        }
        let group = plan
            .groups
            .iter()
            .find(|g| g.id == group_id)
            .expect("listener's group");
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
        self.flows.insert(key, id);
        counters.extend([Counter::NewFlow, Counter::Forwarded]);
        Outcome {
            action: XDP_TX,
            output: rewrite(frame, t.info.mac, plan.config.src_mac),
            counters,
            target: Some(id),
        }
    }
}

fn rewrite(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}
