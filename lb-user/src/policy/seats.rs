//! The targets of one group's plan, and which of them take its new flows.
//!
//! A group's plan holds its own targets (the policy's, and those that left
//! it and still drain: `crate::drains`) and, for a group with a backup, the
//! backup group's targets taking its flows (`TargetKey::via_backup`: an id
//! of their own, whose flows stay theirs when the group fails back). Which
//! side takes new flows is `crate::failover`'s decision over the two sides'
//! registered targets; the other side keeps its flows and takes no new ones.
use lb_common::{TargetInfo, target_flags};

use super::{
    FailoverMode, Listener, Mac, Policy, Ports, Target, TargetGroup, compile::converted_weight,
};
use crate::{
    drains::Phase,
    failover::{self, Serving, Side},
    health::HealthState,
    ids::{Ids, TargetKey},
    plan::{Exclusion, Observed, PlannedHealth, PlannedTarget},
};

/// A target of a group's plan before it is planned: who it is, and what the
/// policy (or its drain, once it left) says of it.
pub struct Seat<'p> {
    pub key: TargetKey,
    /// The group whose target it is (the backup, for one via it): whose
    /// health check judges it.
    pub owner: Option<&'p TargetGroup>,
    /// The policy's entry for it; None once it left the policy.
    pub target: Option<&'p Target>,
    /// A static MAC kept from before it left.
    pub left_mac: Option<Mac>,
}

/// Every seat of `group`'s plan: its own targets, those that left it and
/// still drain, then the backup's (as the policy has them, and those that
/// left).
pub fn seats<'p>(policy: &'p Policy, group: &'p TargetGroup, observed: &Observed) -> Vec<Seat<'p>> {
    let mut out: Vec<Seat> = group
        .targets
        .iter()
        .map(|t| Seat {
            key: TargetKey::new(&group.name, t.ip),
            owner: Some(group),
            target: Some(t),
            left_mac: None,
        })
        .collect();
    let backup = group
        .backup
        .as_deref()
        .and_then(|b| policy.target_groups.iter().find(|g| g.name == b));
    if let Some(b) = backup {
        out.extend(b.targets.iter().map(|t| Seat {
            key: TargetKey::via_backup(&group.name, &b.name, t.ip),
            owner: Some(b),
            target: Some(t),
            left_mac: None,
        }));
    }
    for d in observed.drains.left_the_policy() {
        if d.group != group.name {
            continue;
        }
        let owner_name = d.via.as_deref().unwrap_or(&group.name);
        out.push(Seat {
            key: d.key(),
            owner: policy.target_groups.iter().find(|g| g.name == owner_name),
            target: None,
            left_mac: d.mac,
        });
    }
    out
}

/// Plans one seat of `group` (id `group_id`, listener `listener`). Its
/// ratio, slots and whether it takes new flows are worked out with the
/// whole group ([`serve`], `compile`).
pub fn plan(
    seat: &Seat,
    group: &TargetGroup,
    group_id: u32,
    listener: Option<&Listener>,
    observed: &Observed,
    ids: &Ids,
) -> Option<PlannedTarget> {
    let id = ids.target(&seat.key).filter(|a| a.retired.is_none())?.id;
    let static_mac = seat.target.and_then(|t| t.mac).or(seat.left_mac);
    let mac = static_mac
        .map(Mac::octets)
        .or_else(|| observed.neighbors.get(&seat.key.ip).copied());
    let phase = observed.drains.phase(
        &seat.key,
        observed.now_unix,
        &observed.flows,
        group.target_failover.on_deregistration,
    );
    let health = health_of(seat, observed);
    let weight = seat.target.map_or(0, |t| t.weight);
    let excluded = exclusion(mac.is_some(), weight, health, phase);
    let usable = mac.is_some() && usable(phase, health, group);
    let converted = converted_weight(weight);
    Some(PlannedTarget {
        id,
        group: group.name.clone(),
        ip: seat.key.ip,
        via: seat.key.via.clone(),
        phase,
        // With DSR every target listens on the listener's port.
        port: listener.map_or(Ports::default(), |l| l.port),
        weight,
        converted_weight: converted,
        ratio: 0.0,
        slots: 0,
        monitor_port: match (seat.owner, seat.target) {
            (Some(owner), Some(t)) => owner.monitor_port(t, listener).unwrap_or(0),
            _ => 0,
        },
        health,
        excluded,
        info: TargetInfo {
            mac: mac.unwrap_or_default(),
            flags: if usable { target_flags::USABLE } else { 0 },
            group_id,
            weight: converted as u16,
            _pad: 0,
        },
    })
}

/// A target's health, judged by its own group's check: unchecked, or its
/// verdict (`initial` until it has one). One that left is not probed.
fn health_of(seat: &Seat, observed: &Observed) -> PlannedHealth {
    let checked = seat
        .owner
        .and_then(|g| g.health_check.as_ref())
        .is_some_and(|h| h.enabled);
    if !checked || seat.target.is_none() {
        return PlannedHealth::Unchecked;
    }
    let state = observed.health.get(&seat.key.own()).copied();
    PlannedHealth::Checked(state.unwrap_or(HealthState::Initial))
}

/// Why a target takes no new flows, before the group's side is chosen.
fn exclusion(
    mac: bool,
    weight: u16,
    health: PlannedHealth,
    phase: Option<Phase>,
) -> Option<Exclusion> {
    match phase {
        Some(Phase::Draining { .. }) => return Some(Exclusion::Draining),
        Some(Phase::Unused { .. }) => return Some(Exclusion::Unused),
        None => {}
    }
    if !mac {
        Some(Exclusion::MacUnresolved)
    } else if weight == 0 {
        Some(Exclusion::ZeroWeight)
    } else if health == PlannedHealth::Checked(HealthState::Unhealthy) {
        Some(Exclusion::Unhealthy)
    } else {
        None
    }
}

/// Whether a target with a MAC may receive its flows' packets: not when
/// unhealthy in a group that rebalances, nor once unused unless its flows
/// linger (`no_rebalance`).
fn usable(phase: Option<Phase>, health: PlannedHealth, group: &TargetGroup) -> bool {
    let unhealthy = health == PlannedHealth::Checked(HealthState::Unhealthy);
    let rebalance = group.target_failover.on_unhealthy == FailoverMode::Rebalance;
    match phase {
        Some(Phase::Unused { lingering }) => lingering,
        _ => !(unhealthy && rebalance),
    }
}

/// The two sides of a group's planned targets: its own registered ones,
/// and its backup's (not leaving).
pub fn sides(targets: &[PlannedTarget]) -> (Side, Side) {
    let count = |backup: bool| {
        let registered = targets
            .iter()
            .filter(|t| t.via.is_some() == backup && t.phase.is_none());
        let mut side = Side::default();
        for t in registered {
            side.total += 1;
            side.healthy += usize::from(t.excluded.is_none());
            // What last resort gives new flows to again (`serve`).
            side.usable += usize::from(matches!(t.excluded, None | Some(Exclusion::Unhealthy)));
        }
        side
    };
    (count(false), count(true))
}

/// Decides which side takes `group`'s new flows and marks its targets
/// `SELECTABLE` accordingly (the other side's get `FailedOver` or
/// `Standby`; in last resort the unhealthy ones of the serving side take
/// new flows and their packets again). Returns the decision and the sides.
pub fn serve(group: &TargetGroup, targets: &mut [PlannedTarget]) -> (Serving, Side, Side) {
    let (primary, backup) = sides(targets);
    let ratio = group.failover_ratio.unwrap_or(0.0);
    let serving = failover::serving(primary, group.backup.as_ref().map(|_| (backup, ratio)));
    for t in targets.iter_mut().filter(|t| t.phase.is_none()) {
        let serves = t.via.is_some() == serving.backup();
        if serving.last_resort() && serves && t.excluded == Some(Exclusion::Unhealthy) {
            t.excluded = None;
            t.info.flags |= target_flags::USABLE;
        }
        if t.excluded.is_none() && !serves && serving != Serving::Nobody {
            t.excluded = Some(if t.via.is_some() {
                Exclusion::Standby
            } else {
                Exclusion::FailedOver
            });
        }
        if t.excluded.is_none() {
            t.info.flags |= target_flags::SELECTABLE;
        }
    }
    (serving, primary, backup)
}

/// Sets each target's ratio: its converted weight over the sum of its
/// side's (SPEC.md "Weights"; the group's own, or its backup's).
pub fn set_ratios(targets: &mut [PlannedTarget]) {
    for backup in [false, true] {
        let side = |t: &&mut PlannedTarget| t.via.is_some() == backup && t.phase.is_none();
        let total: u32 = targets
            .iter_mut()
            .filter(side)
            .map(|t| t.converted_weight)
            .sum();
        for t in targets.iter_mut().filter(side) {
            t.ratio = if total == 0 {
                0.0
            } else {
                t.converted_weight as f64 / total as f64
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::{
        drains::{Drains, Flows},
        plan::MapPlan,
        policy::{self, compile::compile},
    };

    fn ip(t: u8) -> IpAddr {
        IpAddr::from([10, 0, 3, t])
    }

    fn observed(drains: Drains, flows: Flows, now: u64) -> Observed {
        Observed {
            iface_mac: [2, 0, 0, 0, 0, 2],
            neighbors: (11..=40u8).map(|t| (ip(t), [2, 0, 0, 0, 0, t])).collect(),
            drains,
            flows,
            now_unix: now,
            ..Observed::default()
        }
    }

    fn target<'a>(plan: &'a MapPlan, key: &TargetKey) -> &'a PlannedTarget {
        plan.targets
            .iter()
            .find(|t| t.group == key.group && t.ip == key.ip && t.via == key.via)
            .unwrap_or_else(|| panic!("{key:?} not in the plan"))
    }

    fn in_table(plan: &MapPlan, id: u32) -> bool {
        plan.groups.iter().any(|g| g.table.iter().any(|s| s == id))
    }

    const FLAGS: u16 = target_flags::USABLE | target_flags::SELECTABLE;

    fn web(targets: &[u8], rebalance: bool) -> policy::Policy {
        let mode = if rebalance {
            "rebalance"
        } else {
            "no_rebalance"
        };
        let mut yaml = format!(
            "listeners:\n  - {{ name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }}\n\
             target_groups:\n  - name: web\n    protocol: tcp\n    table_size: 1021\n    \
             deregistration_delay_s: 100\n    \
             target_failover: {{ on_unhealthy: {mode}, on_deregistration: {mode} }}\n    targets:\n"
        );
        for t in targets {
            yaml += &format!("      - {{ ip: 10.0.3.{t} }}\n");
        }
        policy::parse("t.yaml", &yaml).unwrap()
    }

    /// A removed target drains (its flows go on, no new ones), then is
    /// unused: it lingers for its flows with no_rebalance, not with
    /// rebalance; with no flow left it leaves the plan.
    #[test]
    fn a_removed_target_drains_then_leaves() {
        for rebalance in [false, true] {
            let (before, after) = (web(&[11, 12], rebalance), web(&[11], rebalance));
            let mut drains = Drains::default();
            drains.follow(&before, &after, 1000);
            let key = TargetKey::new("web", ip(12));
            let flows = |named: bool| Flows {
                named: if named {
                    [key.clone()].into()
                } else {
                    Default::default()
                },
                covered: [key.clone()].into(),
            };
            let plan = |now, f| compile(&after, &observed(drains.clone(), f, now)).unwrap();
            let draining = plan(1050, flows(true));
            let t = target(&draining, &key);
            assert_eq!(t.phase, Some(Phase::Draining { until: 1100 }));
            assert_eq!(
                (t.excluded, t.info.flags & FLAGS),
                (Some(Exclusion::Draining), target_flags::USABLE)
            );
            assert!(!in_table(&draining, t.id), "no new flows");
            let ended = plan(1100, flows(true));
            let t = target(&ended, &key);
            assert_eq!(t.excluded, Some(Exclusion::Unused));
            let lingering = if rebalance { 0 } else { target_flags::USABLE };
            assert_eq!(t.info.flags & FLAGS, lingering, "rebalance {rebalance}");
            assert_eq!(t.id, target(&draining, &key).id, "the same id throughout");
            // No flow left: it leaves.
            let mut settled = drains.clone();
            assert_eq!(
                settled.settle(1101, &flows(false), &after),
                vec![key.clone()]
            );
            let gone = compile(&after, &observed(settled, flows(false), 1101)).unwrap();
            assert!(gone.targets.iter().all(|t| t.ip != ip(12)));
        }
    }

    fn with_backup(ratio: f64, check: bool) -> policy::Policy {
        let hc = if check {
            "    health_check: { type: tcp, interval_s: 2, timeout_s: 1 }\n"
        } else {
            ""
        };
        let yaml = format!(
            "listeners:\n  - {{ name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }}\n\
             target_groups:\n  - name: web\n    protocol: tcp\n    table_size: 1021\n    \
             backup: spare\n    failover_ratio: {ratio}\n{hc}    targets:\n      - {{ ip: 10.0.3.11 }}\n      \
             - {{ ip: 10.0.3.12 }}\n      - {{ ip: 10.0.3.13 }}\n  - name: spare\n    protocol: tcp\n    \
             table_size: 1021\n    targets:\n      - {{ ip: 10.0.3.21 }}\n      - {{ ip: 10.0.3.22 }}\n"
        );
        policy::parse("t.yaml", &yaml).unwrap()
    }

    /// Below the failover ratio the group's table holds its backup's
    /// targets (ids of their own, usable for the group's flows); its own
    /// keep their flows. Back above it, the backup's keep theirs.
    #[test]
    fn below_the_ratio_the_backup_takes_new_flows() {
        let p = with_backup(0.5, true);
        let unhealthy = |ts: &[u8]| -> BTreeMap<TargetKey, HealthState> {
            ts.iter()
                .map(|&t| (TargetKey::new("web", ip(t)), HealthState::Unhealthy))
                .collect()
        };
        let plan = |down: &[u8]| {
            let mut o = observed(Drains::default(), Flows::default(), 0);
            o.health = unhealthy(down);
            compile(&p, &o).unwrap()
        };
        let web_id = plan(&[]).ids.group("web").unwrap();
        let via = TargetKey::via_backup("web", "spare", ip(21));
        let own = TargetKey::new("web", ip(11));

        let failed = plan(&[12, 13]);
        let group = failed.groups.iter().find(|g| g.name == "web").unwrap();
        assert_eq!(group.serving, Serving::Backup);
        let v = target(&failed, &via);
        assert_eq!((v.info.flags & FLAGS, v.info.group_id), (FLAGS, web_id));
        assert!(group.table.iter().all(|id| {
            failed
                .targets
                .iter()
                .any(|t| t.id == id && t.via.as_deref() == Some("spare"))
        }));
        let o = target(&failed, &own);
        assert_eq!(
            (o.excluded, o.info.flags & FLAGS),
            (Some(Exclusion::FailedOver), target_flags::USABLE)
        );
        // The backup group serves its own listener-less self as before.
        let spare = target(&failed, &TargetKey::new("spare", ip(21)));
        assert_ne!(spare.id, v.id);

        let back = plan(&[13]);
        let group = back.groups.iter().find(|g| g.name == "web").unwrap();
        assert_eq!(group.serving, Serving::Primary, "2 of 3 >= 0.5");
        let v = target(&back, &via);
        assert_eq!(
            (v.excluded, v.info.flags & FLAGS),
            (Some(Exclusion::Standby), target_flags::USABLE)
        );
        assert_eq!(v.id, target(&failed, &via).id);
        assert!(!in_table(&back, v.id));
    }
}
