//! policy + observed host facts + ids -> map plan. Pure: no I/O, no clock,
//! no aya.
//!
//! The input policy must have passed validation; what validation guarantees is
//! not checked again.
//!
//! Ids come from [`Ids`] (`crate::ids`): listeners, groups and targets keep
//! theirs whatever else changes in the policy (0 is the reserved "none"). A
//! target takes new flows when its weight is positive and its MAC is known
//! (static `mac:` first, else the neighbour table); it keeps receiving the
//! packets of its existing flows as long as its MAC is known, whatever its
//! weight.
use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use lb_common::{
    Config, GroupInfo, ListenerInfo, ListenerKey, PROTO_TCP, PROTO_UDP, group_flags, hash_fields,
};

use super::{Affinity, Algorithm, ListenerProtocol, Policy, TargetGroup, seats};
use crate::{
    ids::{Ids, IdsError},
    maglev::{Identity, Member, TableCache},
    plan::{GroupTable, MapPlan, Observed, PlannedGroup, PlannedListener, PlannedTarget},
    round_robin,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(transparent)]
    Ids(#[from] IdsError),
    #[error("{what} `{name}` has no id (the ids were assigned for another policy)")]
    NoId { what: &'static str, name: String },
}

/// SPEC.md: converted weight = ceil(weight / 256 * 100).
pub fn converted_weight(weight: u16) -> u32 {
    (weight as u32 * 100).div_ceil(256)
}

/// The hash fields of a group's algorithm and affinity. `round_robin` and
/// `least_connections` do not hash new flows; their field set (five-tuple)
/// serves only what the data plane hashes besides (a TCP packet that is not
/// a SYN and misses the flow table).
pub fn hash_fields_of(algorithm: Algorithm, affinity: Affinity) -> u8 {
    match (algorithm, affinity) {
        (Algorithm::SourceIp, _) => hash_fields::SOURCE_IP,
        (Algorithm::Hash, Affinity::FiveTuple) => hash_fields::FIVE_TUPLE,
        (Algorithm::Hash, Affinity::ThreeTuple) => hash_fields::THREE_TUPLE,
        (Algorithm::Hash, Affinity::TwoTuple) => hash_fields::TWO_TUPLE,
        (Algorithm::RoundRobin | Algorithm::LeastConnections, _) => hash_fields::FIVE_TUPLE,
    }
}

/// The data plane's algorithm code (`source_ip` is `hash` over the client IP).
pub fn algorithm_code(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::Hash | Algorithm::SourceIp => lb_common::algorithm::HASH,
        Algorithm::RoundRobin => lb_common::algorithm::ROUND_ROBIN,
        Algorithm::LeastConnections => lb_common::algorithm::LEAST_CONNECTIONS,
    }
}

/// Whether the group's sticky sessions are in effect: enabled, and not
/// with `source_ip` (which keeps a client on one target by itself; the
/// setting is ignored and `lb status` says so).
pub fn sticky_in_effect(group: &TargetGroup) -> Option<u32> {
    let sticky = group.sticky_session.filter(|s| s.enabled)?;
    (group.algorithm != Algorithm::SourceIp).then_some(sticky.duration_s)
}

/// Address words as the data plane stores them (wire order in memory).
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// The address stored as `words` ([`addr_words`]) of `family`.
pub fn ip_of(words: [u32; 4], family: u8) -> IpAddr {
    if family == lb_common::FAMILY_V4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut octets = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(octets)
    }
}

pub fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        lb_common::FAMILY_V4
    } else {
        lb_common::FAMILY_V6
    }
}

pub fn proto_of(protocol: ListenerProtocol) -> u8 {
    match protocol {
        ListenerProtocol::Tcp => PROTO_TCP,
        ListenerProtocol::Udp => PROTO_UDP,
    }
}

pub fn listener_key(vip: IpAddr, protocol: ListenerProtocol, port: u16) -> ListenerKey {
    ListenerKey {
        addr_be: addr_words(vip),
        port_be: port.to_be(),
        proto: proto_of(protocol),
        family: family_of(vip),
    }
}

/// Compiles with fresh ids (numbered in policy order) and a fresh table
/// cache (every table built).
pub fn compile(policy: &Policy, observed: &Observed) -> Result<MapPlan, CompileError> {
    let ids = Ids::default().assign_with(policy, &observed.drains, Instant::now())?;
    compile_cached(policy, observed, &Arc::new(ids), &mut TableCache::default())
}

/// Compiles `policy` to follow the plan whose ids are `previous`, as `lb
/// run` does for every change: every listener, group and target that stays
/// keeps its id, those that leave are retired (since `now`), new ones take
/// the lowest free ids; tables come from `cache` when unchanged.
pub fn compile_next(
    policy: &Policy,
    observed: &Observed,
    previous: &Ids,
    now: Instant,
    cache: &mut TableCache,
) -> Result<MapPlan, CompileError> {
    let ids = Arc::new(previous.assign_with(policy, &observed.drains, now)?);
    compile_cached(policy, observed, &ids, cache)
}

/// Compiles with `ids` (assigned for this policy: [`Ids::assign`]), reusing
/// the tables of `cache` whose members and size are unchanged (the result
/// is the same as with a fresh cache).
pub fn compile_cached(
    policy: &Policy,
    observed: &Observed,
    ids: &Arc<Ids>,
    cache: &mut TableCache,
) -> Result<MapPlan, CompileError> {
    let plan = compile_groups(policy, observed, ids, cache);
    cache.end_round();
    plan
}

fn compile_groups(
    policy: &Policy,
    observed: &Observed,
    ids: &Arc<Ids>,
    cache: &mut TableCache,
) -> Result<MapPlan, CompileError> {
    let target_count: usize = policy.target_groups.iter().map(|g| g.targets.len()).sum();
    let mut groups: Vec<PlannedGroup> = Vec::with_capacity(policy.target_groups.len());
    let mut targets = Vec::with_capacity(target_count);
    // Groups whose consistent-hash table is still to come: (index in
    // `groups`, members, table size); built together after the loop.
    let mut hashed: Vec<(usize, Vec<Member>, u32)> = Vec::new();
    for group in &policy.target_groups {
        let group_id = group_id(ids, &group.name)?;
        let first = targets.len();
        targets.extend(plan_targets(policy, group, group_id, observed, ids)?);
        seats::set_ratios(&mut targets[first..]);
        let (serving, primary, backup) = seats::serve(group, &mut targets[first..]);
        let members = members(&targets[first..]);
        // Round robin: the smooth weighted order; the others: the weighted
        // consistent-hash table (least connections draws its candidates
        // from it), filled in below.
        let table = match group.algorithm {
            Algorithm::RoundRobin => round_robin::order(&members).into(),
            _ => {
                hashed.push((groups.len(), members, group.table_size));
                GroupTable::default()
            }
        };
        groups.push(PlannedGroup {
            id: group_id,
            name: group.name.clone(),
            info: group_info(group),
            table,
            last_resort: serving.last_resort(),
            serving,
            primary,
            backup: group
                .backup
                .clone()
                .map(|name| (name, backup, group.failover_ratio.unwrap_or(0.0))),
        });
    }
    fill_hash_tables(&mut groups, &hashed, cache);
    count_slots(&groups, &mut targets);
    Ok(MapPlan {
        // The data plane's loader knows the kernel's tick, sizes the flow
        // cache and keeps the data plane's identity: the plan only has the
        // source MAC to say.
        config: Config {
            src_mac: observed.iface_mac,
            ..Config::default()
        },
        ids: Arc::clone(ids),
        listeners: plan_listeners(policy, ids)?,
        groups,
        targets,
    })
}

/// The targets of `group`'s plan, one per seat (`seats::seats`), before
/// their ratios and which of them serve are worked out.
fn plan_targets(
    policy: &Policy,
    group: &TargetGroup,
    group_id: u32,
    observed: &Observed,
    ids: &Ids,
) -> Result<Vec<PlannedTarget>, CompileError> {
    // A backup attached to no listener shows the port (and monitor port)
    // its targets take as a backup.
    let listener = policy.traffic_listener_of(&group.name);
    seats::seats(policy, group, observed)
        .iter()
        .map(|seat| {
            seats::plan(seat, group, group_id, listener, observed, ids).ok_or_else(|| {
                CompileError::NoId {
                    what: "target",
                    name: format!("{} in {}", seat.key.ip, group.name),
                }
            })
        })
        .collect()
}

fn group_id(ids: &Ids, name: &str) -> Result<u32, CompileError> {
    ids.group(name).ok_or_else(|| CompileError::NoId {
        what: "target group",
        name: name.to_string(),
    })
}

/// The targets that take new flows, as the table builders see them.
fn members(targets: &[PlannedTarget]) -> Vec<Member> {
    targets
        .iter()
        .filter(|t| t.excluded.is_none())
        .map(|t| Member {
            identity: Identity {
                ip: t.ip,
                // A range's first port: any fixed port would do, and this
                // one keeps a listener of one port's table unchanged.
                port: t.port.first,
            },
            weight: t.converted_weight,
            id: t.id,
        })
        .collect()
}

/// The settings of a group the data plane reads.
fn group_info(group: &TargetGroup) -> GroupInfo {
    let sticky = sticky_in_effect(group);
    GroupInfo {
        hash_fields: hash_fields_of(group.algorithm, group.affinity),
        algorithm: algorithm_code(group.algorithm),
        flags: if sticky.is_some() {
            group_flags::STICKY
        } else {
            0
        },
        _pad: 0,
        idle_timeout_s: group.idle_timeout_s(),
        fin_timeout_s: group.fin_timeout_s(),
        sticky_duration_s: sticky.unwrap_or(0),
    }
}

/// Builds the consistent-hash tables of `hashed` (index in `groups`,
/// members, size) all at once, from `cache` when unchanged.
fn fill_hash_tables(
    groups: &mut [PlannedGroup],
    hashed: &[(usize, Vec<Member>, u32)],
    cache: &mut TableCache,
) {
    let wanted: Vec<(&[Member], u32)> = hashed
        .iter()
        .map(|(_, members, size)| (&members[..], *size))
        .collect();
    for ((g, _, _), table) in hashed.iter().zip(cache.get_all(&wanted)) {
        groups[*g].table = table;
    }
}

/// Sets each target's count of the slots of its group's table.
fn count_slots(groups: &[PlannedGroup], targets: &mut [PlannedTarget]) {
    let index: HashMap<u32, usize> = targets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    for group in groups {
        for (id, n) in group.table.slot_counts() {
            if let Some(&i) = index.get(&id) {
                targets[i].slots += n;
            }
        }
    }
}

fn plan_listeners(policy: &Policy, ids: &Ids) -> Result<Vec<PlannedListener>, CompileError> {
    policy
        .listeners
        .iter()
        .map(|l| {
            let key = listener_key(l.vip, l.protocol, l.port.first);
            let listener_id = ids.listener(&key).ok_or_else(|| CompileError::NoId {
                what: "listener",
                name: l.name.clone(),
            })?;
            Ok(PlannedListener {
                name: l.name.clone(),
                key,
                info: ListenerInfo {
                    listener_id,
                    group_id: group_id(ids, &l.target_group)?,
                },
                ports: l.port.record(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        health::HealthState,
        ids::TargetKey,
        plan::{Exclusion, PlannedHealth},
        policy::{FailoverMode, GroupProtocol, Listener, Target},
    };
    use lb_common::target_flags;

    fn policy(targets: &[(&str, u16, Option<&str>)]) -> Policy {
        Policy {
            interface: Some("eth0".into()),
            listeners: vec![Listener {
                name: "web".into(),
                vip: "10.0.3.49".parse().unwrap(),
                protocol: ListenerProtocol::Tcp,
                port: crate::policy::Ports::one(80),
                target_group: "web".into(),
            }],
            target_groups: vec![TargetGroup {
                name: "web".into(),
                protocol: GroupProtocol::Tcp,
                algorithm: Algorithm::Hash,
                affinity: Affinity::FiveTuple,
                table_size: 1021,
                health_check: None,
                target_failover: Default::default(),
                flow_idle_timeout_s: None,
                flow_fin_timeout_s: None,
                sticky_session: None,
                deregistration_delay_s: None,
                backup: None,
                failover_ratio: None,
                targets: targets
                    .iter()
                    .map(|(ip, w, mac)| Target {
                        ip: ip.parse().unwrap(),
                        weight: *w,
                        port: None,
                        monitor_port: None,
                        mac: mac.map(|m| m.parse().unwrap()),
                    })
                    .collect(),
            }],
            flow_table: None,
        }
    }

    #[test]
    fn flow_timeouts_default_by_protocol_and_follow_the_policy() {
        let seen = observed(&[("10.0.3.11", 0x11)]);
        let mut p = policy(&[("10.0.3.11", 256, None)]);
        let info = |p: &Policy| compile(p, &seen).unwrap().groups[0].info;
        assert_eq!((info(&p).idle_timeout_s, info(&p).fin_timeout_s), (350, 10));
        p.target_groups[0].protocol = GroupProtocol::Udp;
        assert_eq!(info(&p).idle_timeout_s, 120);
        p.target_groups[0].protocol = GroupProtocol::Tcp;
        p.target_groups[0].flow_idle_timeout_s = Some(30);
        p.target_groups[0].flow_fin_timeout_s = Some(2);
        assert_eq!((info(&p).idle_timeout_s, info(&p).fin_timeout_s), (30, 2));
    }

    fn observed(neighbors: &[(&str, u8)]) -> Observed {
        Observed {
            iface_mac: [2, 0, 0, 0, 0, 2],
            iface_nets: vec![("10.0.3.0".parse().unwrap(), 24)],
            neighbors: neighbors
                .iter()
                .map(|(ip, last)| (ip.parse().unwrap(), [2, 0, 0, 0, 0, *last]))
                .collect::<BTreeMap<_, _>>(),
            health: BTreeMap::new(),
            ..Default::default()
        }
    }

    /// Three resolved targets with TCP checks, `rebalance` or not, and the
    /// given verdicts for .11, .12, .13 (None: no verdict yet).
    fn checked(rebalance: bool, verdicts: [Option<HealthState>; 3]) -> MapPlan {
        let mut p = policy(&[
            ("10.0.3.11", 256, None),
            ("10.0.3.12", 256, None),
            ("10.0.3.13", 256, None),
        ]);
        let yaml = "{ type: tcp, interval_s: 2, timeout_s: 1 }";
        p.target_groups[0].health_check = Some(serde_norway::from_str(yaml).unwrap());
        if rebalance {
            p.target_groups[0].target_failover.on_unhealthy = FailoverMode::Rebalance;
            p.target_groups[0].target_failover.on_deregistration = FailoverMode::Rebalance;
        }
        let mut o = observed(&[
            ("10.0.3.11", 0x11),
            ("10.0.3.12", 0x12),
            ("10.0.3.13", 0x13),
        ]);
        for (ip, v) in ["10.0.3.11", "10.0.3.12", "10.0.3.13"].iter().zip(verdicts) {
            if let Some(v) = v {
                let key = TargetKey::new("web", ip.parse().unwrap());
                o.health.insert(key, v);
            }
        }
        compile(&p, &o).unwrap()
    }

    fn table_ids(plan: &MapPlan) -> std::collections::BTreeSet<u32> {
        plan.groups[0].table.iter().collect()
    }

    #[test]
    fn unchecked_and_initial_targets_take_new_flows() {
        let p = policy(&[("10.0.3.11", 256, None)]);
        let plan = compile(&p, &observed(&[("10.0.3.11", 0x11)])).unwrap();
        assert_eq!(plan.targets[0].health, PlannedHealth::Unchecked);
        let plan = checked(false, [None, Some(HealthState::Healthy), None]);
        assert_eq!(
            plan.targets[0].health,
            PlannedHealth::Checked(HealthState::Initial)
        );
        assert_eq!(table_ids(&plan), [1, 2, 3].into());
    }

    #[test]
    fn unhealthy_targets_leave_the_table_and_keep_flows_without_rebalance() {
        let plan = checked(
            false,
            [
                Some(HealthState::Healthy),
                Some(HealthState::Unhealthy),
                Some(HealthState::Healthy),
            ],
        );
        assert_eq!(table_ids(&plan), [1, 3].into());
        assert_eq!(plan.targets[1].excluded, Some(Exclusion::Unhealthy));
        assert_ne!(
            plan.targets[1].info.flags & target_flags::USABLE,
            0,
            "no_rebalance keeps its flows"
        );
        assert!(!plan.groups[0].last_resort);
    }

    #[test]
    fn rebalance_takes_the_flows_of_unhealthy_targets_away() {
        let plan = checked(
            true,
            [
                Some(HealthState::Healthy),
                Some(HealthState::Unhealthy),
                Some(HealthState::Healthy),
            ],
        );
        assert_eq!(table_ids(&plan), [1, 3].into());
        assert_eq!(plan.targets[1].info.flags & target_flags::USABLE, 0);
        assert_ne!(plan.targets[0].info.flags & target_flags::USABLE, 0);
    }

    #[test]
    fn no_healthy_target_is_last_resort_for_all() {
        for rebalance in [false, true] {
            let plan = checked(rebalance, [Some(HealthState::Unhealthy); 3]);
            assert!(plan.groups[0].last_resort);
            assert_eq!(table_ids(&plan), [1, 2, 3].into());
            assert!(
                plan.targets
                    .iter()
                    .all(|t| t.excluded.is_none() && t.info.flags & target_flags::USABLE != 0)
            );
        }
        // One healthy target ends last resort.
        let plan = checked(
            false,
            [
                Some(HealthState::Unhealthy),
                Some(HealthState::Unhealthy),
                Some(HealthState::Healthy),
            ],
        );
        assert!(!plan.groups[0].last_resort);
        assert_eq!(table_ids(&plan), [3].into());
    }

    #[test]
    fn monitor_port_defaults_to_check_port_then_target_port() {
        let plan = checked(false, [None; 3]);
        assert_eq!(plan.targets[0].monitor_port, 80);
        let mut p = policy(&[("10.0.3.11", 256, None), ("10.0.3.12", 256, None)]);
        p.target_groups[0].health_check = Some(serde_norway::from_str("{ port: 8080 }").unwrap());
        p.target_groups[0].targets[1].monitor_port = Some(9090);
        let plan = compile(&p, &observed(&[])).unwrap();
        assert_eq!(
            (plan.targets[0].monitor_port, plan.targets[1].monitor_port),
            (8080, 9090)
        );
    }

    #[test]
    fn stored_addresses_read_back() {
        for ip in ["10.0.3.11", "fd00:3::11", "::ffff:10.0.3.11"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_of(addr_words(ip), family_of(ip)), ip);
        }
    }

    #[test]
    fn converted_weights_follow_spec() {
        assert_eq!(converted_weight(0), 0);
        assert_eq!(converted_weight(1), 1);
        assert_eq!(converted_weight(128), 50);
        assert_eq!(converted_weight(255), 100);
        assert_eq!(converted_weight(256), 100);
    }

    #[test]
    fn plan_has_keys_ids_and_ratios() {
        let p = policy(&[
            ("10.0.3.11", 256, None),
            ("10.0.3.12", 256, None),
            ("10.0.3.13", 128, Some("02:00:00:00:00:13")),
        ]);
        let plan = compile(&p, &observed(&[("10.0.3.11", 0x11), ("10.0.3.12", 0x12)])).unwrap();
        assert_eq!(plan.config.src_mac, [2, 0, 0, 0, 0, 2]);
        let l = &plan.listeners[0];
        assert_eq!(l.key.addr_be[0].to_ne_bytes(), [10, 0, 3, 49]);
        assert_eq!(l.key.port_be.to_ne_bytes(), [0, 80]);
        assert_eq!((l.key.proto, l.key.family), (PROTO_TCP, 4));
        assert_eq!(
            l.info,
            ListenerInfo {
                listener_id: 1,
                group_id: 1
            }
        );
        let ratios: Vec<f64> = plan.targets.iter().map(|t| t.ratio).collect();
        assert_eq!(ratios, vec![0.4, 0.4, 0.2]);
        assert_eq!(
            plan.targets[2].info.mac,
            [2, 0, 0, 0, 0, 0x13],
            "static mac overrides"
        );
        let slots: Vec<u32> = plan.targets.iter().map(|t| t.slots).collect();
        assert_eq!(slots.iter().sum::<u32>(), 1021);
        assert!(
            slots[0].abs_diff(409) <= 1
                && slots[1].abs_diff(408) <= 1
                && slots[2].abs_diff(204) <= 1,
            "{slots:?}"
        );
    }

    #[test]
    fn unresolved_mac_is_never_selected() {
        let p = policy(&[("10.0.3.11", 256, None), ("10.0.3.12", 256, None)]);
        let plan = compile(&p, &observed(&[("10.0.3.12", 0x12)])).unwrap();
        assert_eq!(plan.targets[0].excluded, Some(Exclusion::MacUnresolved));
        assert_eq!(plan.targets[0].info.flags & target_flags::USABLE, 0);
        assert!(plan.groups[0].table.iter().all(|id| id == 2));
    }

    #[test]
    fn no_usable_target_fails_closed() {
        let p = policy(&[("10.0.3.11", 0, None), ("10.0.3.12", 256, None)]);
        let plan = compile(&p, &observed(&[("10.0.3.11", 0x11)])).unwrap();
        assert_eq!(plan.targets[0].excluded, Some(Exclusion::ZeroWeight));
        assert_ne!(
            plan.targets[0].info.flags & target_flags::USABLE,
            0,
            "weight 0 keeps its existing flows"
        );
        assert!(plan.groups[0].table.iter().all(|id| id == 0));
    }

    /// Three targets of unequal weights.
    const UNEQUAL: [(&str, u16, Option<&str>); 3] = [
        ("10.0.3.11", 256, None),
        ("10.0.3.12", 100, None),
        ("10.0.3.13", 7, None),
    ];

    #[test]
    fn same_policy_same_plan() {
        let p = policy(&UNEQUAL);
        let o = observed(&[
            ("10.0.3.11", 0x11),
            ("10.0.3.12", 0x12),
            ("10.0.3.13", 0x13),
        ]);
        assert_eq!(compile(&p, &o).unwrap(), compile(&p, &o).unwrap());
    }

    /// Two instances behind ECMP with the same policy: one fresh, one whose
    /// history (targets added and removed, another order) gave the targets
    /// other ids. Their tables hold other ids, but every slot names the
    /// same address, so both send every flow to the same target: the hash
    /// table under `hash`, and the turn order under `round_robin`.
    #[test]
    fn instances_with_other_ids_agree_on_every_slot() {
        let o = observed(&[
            ("10.0.3.11", 0x11),
            ("10.0.3.12", 0x12),
            ("10.0.3.13", 0x13),
            ("10.0.3.14", 0x14),
        ]);
        let now = std::time::Instant::now();
        let addresses = |plan: &MapPlan| -> Vec<IpAddr> {
            let by_id: BTreeMap<u32, IpAddr> = plan.targets.iter().map(|t| (t.id, t.ip)).collect();
            plan.groups[0].table.iter().map(|id| by_id[&id]).collect()
        };
        for algorithm in [Algorithm::Hash, Algorithm::RoundRobin] {
            let mut p = policy(&UNEQUAL);
            p.target_groups[0].algorithm = algorithm;
            let fresh = compile(&p, &o).unwrap();
            // The other instance: .14 and .13 first, then .14 removed and
            // the rest added in reverse order.
            let mut first = policy(&[("10.0.3.14", 256, None), ("10.0.3.13", 7, None)]);
            first.target_groups[0].algorithm = algorithm;
            let ids = Ids::default().assign(&first, now).unwrap();
            let mut reversed = p.clone();
            reversed.target_groups[0].targets.reverse();
            let ids = Arc::new(ids.assign(&reversed, now).unwrap());
            let other = compile_cached(&reversed, &o, &ids, &mut TableCache::default()).unwrap();
            let id = |plan: &MapPlan, ip: &str| {
                let ip: IpAddr = ip.parse().unwrap();
                plan.targets.iter().find(|t| t.ip == ip).unwrap().id
            };
            assert_ne!(
                id(&fresh, "10.0.3.11"),
                id(&other, "10.0.3.11"),
                "other ids"
            );
            assert_ne!(
                fresh.groups[0].table, other.groups[0].table,
                "{algorithm:?}"
            );
            assert_eq!(addresses(&fresh), addresses(&other), "{algorithm:?}");
        }
    }

    #[test]
    fn algorithms_and_sticky_sessions_reach_the_group() {
        let mut p = policy(&[
            ("10.0.3.11", 256, None),
            ("10.0.3.12", 256, None),
            ("10.0.3.13", 128, None),
        ]);
        let o = observed(&[
            ("10.0.3.11", 0x11),
            ("10.0.3.12", 0x12),
            ("10.0.3.13", 0x13),
        ]);
        let g = &mut p.target_groups[0];
        g.algorithm = Algorithm::RoundRobin;
        g.sticky_session = Some(crate::policy::StickySession {
            enabled: true,
            kind: Default::default(),
            duration_s: 60,
        });
        let plan = compile(&p, &o).unwrap();
        let group = &plan.groups[0];
        assert_eq!(group.table.to_vec(), [1, 2, 3, 1, 2], "smooth order, 2:2:1");
        assert_eq!(group.info.algorithm, lb_common::algorithm::ROUND_ROBIN);
        assert_eq!(
            (group.info.flags, group.info.sticky_duration_s),
            (group_flags::STICKY, 60)
        );
        let slots: Vec<u32> = plan.targets.iter().map(|t| t.slots).collect();
        assert_eq!(slots, vec![2, 2, 1]);
        // Unhealthy or weight 0: out of the order.
        p.target_groups[0].targets[1].weight = 0;
        assert_eq!(compile(&p, &o).unwrap().groups[0].table.to_vec(), [1, 3, 1]);

        // source_ip ignores sticky sessions; disabled ones are off.
        p.target_groups[0].algorithm = Algorithm::SourceIp;
        let info = compile(&p, &o).unwrap().groups[0].info;
        assert_eq!(
            (info.flags, info.algorithm),
            (0, lb_common::algorithm::HASH)
        );
        p.target_groups[0].algorithm = Algorithm::LeastConnections;
        p.target_groups[0].sticky_session.as_mut().unwrap().enabled = false;
        let plan = compile(&p, &o).unwrap();
        assert_eq!(plan.groups[0].info.flags, 0);
        assert_eq!(
            plan.groups[0].info.algorithm,
            lb_common::algorithm::LEAST_CONNECTIONS
        );
        assert_eq!(plan.groups[0].table.len(), 1021, "the weighted hash table");
        assert_eq!(plan.targets[1].info.weight, 0);
        assert_eq!(plan.targets[2].info.weight, 50);
    }

    #[test]
    fn hash_fields_by_algorithm_and_affinity() {
        assert_eq!(
            hash_fields_of(Algorithm::SourceIp, Affinity::FiveTuple),
            hash_fields::SRC_ADDR
        );
        assert_eq!(
            hash_fields_of(Algorithm::Hash, Affinity::TwoTuple),
            hash_fields::SRC_ADDR | hash_fields::DST_ADDR
        );
    }
}
