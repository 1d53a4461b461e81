//! The targets of one group's plan, and which of them take its new flows.
//!
//! A group's plan holds its own targets (the policy's, and those that left
//! it and still drain: `crate::drains`) and, for a group with a backup, the
//! backup group's targets taking its flows (`TargetKey::via_backup`: an id
//! of their own, whose flows stay theirs when the group fails back). Which
//! side takes new flows is `crate::failover`'s decision over the two sides'
//! registered targets; the other side keeps its flows and takes no new ones.
use lb_common::{TargetInfo, target_flags};

use super::{FailoverMode, Listener, Mac, Policy, Target, TargetGroup, compile::converted_weight};
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
        port: listener.map_or(0, |l| l.port),
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
        let (total, healthy) = registered.fold((0, 0), |(n, h), t| {
            (n + 1, h + usize::from(t.excluded.is_none()))
        });
        Side { total, healthy }
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
