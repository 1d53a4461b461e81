//! Targets leaving a group (SPEC.md "Target states", "Deregistration and
//! failover of flows"): removed from the policy, or drained by `lb drain`.
//!
//! A leaving target is `draining`: it takes no new flow at once, and its
//! flows go on until they end or its group's `deregistration_delay_s`
//! expires; then it is `unused`. At that point `target_failover.
//! on_deregistration: rebalance` moves the flows still on it (their next
//! packet chooses again); `no_rebalance` lets them go on to it until they
//! end (it *lingers*). One that left the policy leaves the plan once it is
//! unused and no flow is left on it; one drained by command stays, taking
//! nothing, until `lb undrain` or the policy takes it back. Back in the
//! policy (or undrained) before then, it is active again with its flows.
//!
//! Pure: times are Unix seconds, passed in; whether flows are left on a
//! target comes from the flow sweeper ([`Flows`]), for the drains whose
//! target took no new flow in the maps since before the sweep began
//! ([`Closed`], monotonic time). The daemon saves the drains with its
//! runtime state, so they survive a restart.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{
    ids::{RELEASE_GRACE, TargetKey},
    policy::{FailoverMode, Mac, Policy},
    rename::Renames,
};

/// One leaving target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub group: String,
    pub ip: IpAddr,
    /// For a backup group's target taking `group`'s flows: that group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// When it started draining, and when its delay ends (Unix seconds).
    pub since: u64,
    pub until: u64,
    /// Drained by `lb drain` (it stays in the policy); else it left it.
    pub by_command: bool,
    /// Its static MAC, if the policy gave one (kept once it has left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
}

impl Drain {
    pub fn key(&self) -> TargetKey {
        TargetKey {
            group: self.group.clone(),
            ip: self.ip,
            via: self.via.clone(),
        }
    }
}

/// Where a leaving target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Takes no new flow; its flows go on until `until` (Unix seconds).
    Draining { until: u64 },
    /// Its delay is over, or its flows have ended: it takes nothing new;
    /// `lingering`: flows still on it go on to it (`no_rebalance`).
    Unused { lingering: bool },
}

/// Which targets flow entries still name, as the flow sweeper last saw
/// them, and the drains that sweep can tell about ([`Closed::covered`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flows {
    pub named: BTreeSet<TargetKey>,
    pub covered: BTreeSet<TargetKey>,
}

impl Flows {
    /// The same, the groups renamed (`crate::rename`).
    pub fn renamed(&self, renames: &Renames) -> Flows {
        let keys = |set: &BTreeSet<TargetKey>| set.iter().map(|k| renames.key(k)).collect();
        Flows {
            named: keys(&self.named),
            covered: keys(&self.covered),
        }
    }

    /// Whether flows may be left on `drain`'s target: it is named, or no
    /// sweep that can tell says otherwise.
    fn left_on(&self, drain: &Drain) -> bool {
        let key = drain.key();
        !self.covered.contains(&key) || self.named.contains(&key)
    }
}

/// When each drain's target stopped taking new flows in the maps: when
/// the first write of the maps that made it so succeeded (in this run of
/// `lb`; monotonic time). A sweep tells whether flows are left on it only
/// if it started [`RELEASE_GRACE`] or more after that: an earlier one may
/// have passed the buckets of a flow made after it, while the target took
/// new flows (the drain began, but its write had not, or had failed), or
/// just after (a packet that found the target selectable just before the
/// write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closed(BTreeMap<TargetKey, Instant>);

impl Closed {
    /// The maps were written at `now`; `takes_new`: whether a target takes
    /// new flows in them (one not in them takes none).
    pub fn written(
        &mut self,
        drains: &Drains,
        takes_new: impl Fn(&TargetKey) -> bool,
        now: Instant,
    ) {
        self.0
            .retain(|key, _| drains.get(key).is_some() && !takes_new(key));
        for key in drains.by_key.keys().filter(|k| !takes_new(k)) {
            self.0.entry(key.clone()).or_insert(now);
        }
    }

    /// The same, the groups renamed (`crate::rename`).
    pub fn renamed(&self, renames: &Renames) -> Closed {
        Closed(self.0.iter().map(|(k, &at)| (renames.key(k), at)).collect())
    }

    /// The drains a sweep that started at `started` tells about.
    pub fn covered(&self, started: Instant) -> BTreeSet<TargetKey> {
        self.0
            .iter()
            .filter(|&(_, &at)| at + RELEASE_GRACE <= started)
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// Every leaving target, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    by_key: BTreeMap<TargetKey, Drain>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    #[error("target group `{0}` does not exist")]
    NoGroup(String),
    #[error("target {ip} is not in target group `{group}`")]
    NoTarget { group: String, ip: IpAddr },
    #[error("target {ip} of target group `{group}` is already draining")]
    AlreadyDraining { group: String, ip: IpAddr },
    #[error("target {ip} of target group `{group}` is not drained")]
    NotDrained { group: String, ip: IpAddr },
    #[error("target {ip} left target group `{group}`: put it back in the policy to take it back")]
    LeftThePolicy { group: String, ip: IpAddr },
}

impl Drains {
    pub fn from_list(list: impl IntoIterator<Item = Drain>) -> Drains {
        Drains {
            by_key: list.into_iter().map(|d| (d.key(), d)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The same drains, the groups renamed (`crate::rename`): each goes on
    /// as it was, under its group's new name.
    pub fn renamed(&self, renames: &Renames) -> Drains {
        Drains::from_list(self.by_key.values().map(|d| {
            let key = renames.key(&d.key());
            Drain {
                group: key.group,
                via: key.via,
                ..d.clone()
            }
        }))
    }

    /// Keeps the drains made by `lb drain` only: on a new data plane, the
    /// others (targets that left) have no flow to wait for.
    pub fn keep_by_command(&mut self) {
        self.by_key.retain(|_, d| d.by_command);
    }

    pub fn list(&self) -> impl Iterator<Item = &Drain> {
        self.by_key.values()
    }

    pub fn get(&self, key: &TargetKey) -> Option<&Drain> {
        self.by_key.get(key)
    }

    /// Follows a change of the policy from `old` to `new` at `now`: the
    /// targets that left a group that stays start draining with that
    /// group's delay (those of a group that left go at once: nothing routes
    /// to them); those back stop draining, unless drained by command; and
    /// every drain's delay becomes its group's new one, counted from when
    /// it began.
    pub fn follow(&mut self, old: &Policy, new: &Policy, now: u64) {
        self.follow_from(wanted(old), new, now);
    }

    /// As [`Drains::follow`], from the targets `before` held (with their
    /// MACs): at a start, those of the adopted data plane, so that a target
    /// taken out of the policy while `lb` was stopped drains too.
    pub fn follow_from(&mut self, before: Vec<(TargetKey, Option<Mac>)>, new: &Policy, now: u64) {
        let after: BTreeMap<TargetKey, Option<Mac>> = wanted(new).into_iter().collect();
        for (key, mac) in &before {
            if after.contains_key(key) || self.by_key.contains_key(key) {
                continue;
            }
            let Some(group) = new.target_groups.iter().find(|g| g.name == key.group) else {
                continue;
            };
            let delay = u64::from(group.deregistration_delay_s());
            self.by_key
                .insert(key.clone(), drain(key, *mac, now, delay, false));
        }
        self.by_key.retain(|key, d| {
            let back = after.contains_key(key) && !d.by_command;
            let group_left = !new.target_groups.iter().any(|g| g.name == key.group);
            !back && !group_left
        });
        for d in self.by_key.values_mut() {
            d.by_command &= after.contains_key(&d.key());
            // The delay is the group's as the policy says it now: lowered,
            // it ends drains in progress sooner (0: at once).
            if let Some(g) = new.target_groups.iter().find(|g| g.name == d.group) {
                d.until = d.since + u64::from(g.deregistration_delay_s());
            }
        }
        self.drain_views(&after, new);
    }

    /// A target drained by command stays out in every backup view of it
    /// (`TargetKey::via_backup`), also in those the policy made after the
    /// drain (a group that names its group as `backup` since): each drains
    /// as the target did, from the same moment, with its own group's
    /// delay, and `lb undrain` ends it with the target's.
    fn drain_views(&mut self, after: &BTreeMap<TargetKey, Option<Mac>>, new: &Policy) {
        let mut views = Vec::new();
        for (key, mac) in after {
            let Some(via) = key.via.as_deref() else {
                continue;
            };
            let own = TargetKey::new(via, key.ip);
            let Some(own) = self.by_key.get(&own).filter(|d| d.by_command) else {
                continue;
            };
            if self.by_key.contains_key(key) {
                continue;
            }
            let delay = new
                .target_groups
                .iter()
                .find(|g| g.name == key.group)
                .map_or(0, |g| u64::from(g.deregistration_delay_s()));
            views.push(drain(key, *mac, own.since, delay, true));
        }
        for view in views {
            self.by_key.insert(view.key(), view);
        }
    }

    /// `lb drain GROUP IP` at `now`: the target, in the policy, starts
    /// draining.
    pub fn drain(
        &mut self,
        policy: &Policy,
        group: &str,
        ip: IpAddr,
        now: u64,
    ) -> Result<Drain, DrainError> {
        let g = policy
            .target_groups
            .iter()
            .find(|g| g.name == group)
            .ok_or_else(|| DrainError::NoGroup(group.to_string()))?;
        let target = g
            .targets
            .iter()
            .find(|t| t.ip == ip)
            .ok_or_else(|| DrainError::NoTarget {
                group: group.to_string(),
                ip,
            })?;
        let key = TargetKey::new(group, ip);
        if self.by_key.contains_key(&key) {
            return Err(DrainError::AlreadyDraining {
                group: group.to_string(),
                ip,
            });
        }
        let d = drain(
            &key,
            target.mac,
            now,
            u64::from(g.deregistration_delay_s()),
            true,
        );
        self.by_key.insert(key, d.clone());
        // The backup group's view of it drains alongside.
        for (shadow, _) in wanted(policy) {
            if shadow.via.as_deref() == Some(group) && shadow.ip == ip {
                let delay = policy
                    .target_groups
                    .iter()
                    .find(|g| g.name == shadow.group)
                    .map_or(0, |g| u64::from(g.deregistration_delay_s()));
                self.by_key
                    .entry(shadow.clone())
                    .or_insert_with(|| drain(&shadow, target.mac, now, delay, true));
            }
        }
        Ok(d)
    }

    /// `lb undrain GROUP IP`: a target drained by command takes new flows
    /// again, with its flows as they are.
    pub fn undrain(&mut self, group: &str, ip: IpAddr) -> Result<Drain, DrainError> {
        let key = TargetKey::new(group, ip);
        let d = self
            .by_key
            .get(&key)
            .ok_or_else(|| DrainError::NotDrained {
                group: group.to_string(),
                ip,
            })?;
        if !d.by_command {
            return Err(DrainError::LeftThePolicy {
                group: group.to_string(),
                ip,
            });
        }
        let d = self.by_key.remove(&key).expect("checked");
        self.by_key
            .retain(|k, s| !(s.by_command && k.via.as_deref() == Some(group) && k.ip == ip));
        Ok(d)
    }

    /// The phase of `key` at `now` (None: not leaving). `rebalance`: its
    /// group's `on_deregistration`.
    pub fn phase(
        &self,
        key: &TargetKey,
        now: u64,
        flows: &Flows,
        rebalance: FailoverMode,
    ) -> Option<Phase> {
        let d = self.by_key.get(key)?;
        let left = flows.left_on(d);
        Some(if now < d.until && left {
            Phase::Draining { until: d.until }
        } else {
            Phase::Unused {
                lingering: left && rebalance == FailoverMode::NoRebalance,
            }
        })
    }

    /// Forgets the targets that left the policy and are done: unused, with
    /// no flow left on them to linger. Returns their keys (they leave the
    /// plan).
    pub fn settle(&mut self, now: u64, flows: &Flows, policy: &Policy) -> Vec<TargetKey> {
        let mut done = Vec::new();
        self.by_key.retain(|key, d| {
            let rebalance = policy
                .target_groups
                .iter()
                .find(|g| g.name == key.group)
                .map_or(FailoverMode::Rebalance, |g| {
                    g.target_failover.on_deregistration
                });
            let unused = now >= d.until || !flows.left_on(d);
            let lingers = flows.left_on(d) && rebalance == FailoverMode::NoRebalance;
            let gone = !d.by_command && unused && !lingers;
            if gone {
                done.push(key.clone());
            }
            !gone
        });
        done
    }

    /// The targets that left the policy and still have a drain: the plan
    /// keeps them (their flows go on), beside the policy's.
    pub fn left_the_policy(&self) -> impl Iterator<Item = &Drain> {
        self.by_key.values().filter(|d| !d.by_command)
    }

    /// The next moment a drain's delay ends, after `now`.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.by_key
            .values()
            .map(|d| d.until)
            .filter(|&u| u > now)
            .min()
    }
}

fn drain(key: &TargetKey, mac: Option<Mac>, now: u64, delay: u64, by_command: bool) -> Drain {
    Drain {
        group: key.group.clone(),
        ip: key.ip,
        via: key.via.clone(),
        since: now,
        until: now + delay,
        by_command,
        mac,
    }
}

/// Every target key a policy has, with its static MAC, in policy order:
/// each group's own targets, then, for a group with a backup, the backup's
/// targets taking its flows (`TargetKey::via_backup`).
pub fn wanted(policy: &Policy) -> Vec<(TargetKey, Option<Mac>)> {
    let mut out = Vec::new();
    for group in &policy.target_groups {
        for t in &group.targets {
            out.push((TargetKey::new(&group.name, t.ip), t.mac));
        }
        let backup = group
            .backup
            .as_deref()
            .and_then(|b| policy.target_groups.iter().find(|g| g.name == b));
        if let Some(b) = backup {
            for t in &b.targets {
                out.push((TargetKey::via_backup(&group.name, &b.name, t.ip), t.mac));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn policy(web: &[u8], delay: u32, rebalance: bool) -> Policy {
        let mode = if rebalance {
            "rebalance"
        } else {
            "no_rebalance"
        };
        let mut yaml = format!(
            "target_groups:\n  - name: web\n    protocol: tcp\n    deregistration_delay_s: {delay}\n    \
             target_failover: {{ on_unhealthy: {mode}, on_deregistration: {mode} }}\n    targets:\n"
        );
        for t in web {
            yaml += &format!("      - {{ ip: 10.0.3.{t} }}\n");
        }
        policy::parse("t.yaml", &yaml).unwrap()
    }

    fn key(t: u8) -> TargetKey {
        TargetKey::new("web", IpAddr::from([10, 0, 3, t]))
    }

    /// A sweep that named the targets `named` and, `covered`, started
    /// long enough after target 12 took no new flow.
    fn flows(named: &[u8], covered: bool) -> Flows {
        Flows {
            named: named.iter().map(|&t| key(t)).collect(),
            covered: if covered {
                [key(12)].into()
            } else {
                BTreeSet::new()
            },
        }
    }

    #[test]
    fn a_target_that_leaves_drains_for_its_delay_then_is_unused() {
        let (old, new) = (policy(&[11, 12], 300, false), policy(&[11], 300, false));
        let mut d = Drains::default();
        d.follow(&old, &new, 1000);
        let nr = FailoverMode::NoRebalance;
        let unknown = Flows::default();
        assert_eq!(
            d.phase(&key(12), 1000, &unknown, nr),
            Some(Phase::Draining { until: 1300 })
        );
        assert_eq!(d.phase(&key(11), 1000, &unknown, nr), None, "it stayed");
        // Flows on it: draining until the delay ends.
        assert_eq!(
            d.phase(&key(12), 1299, &flows(&[12], true), nr),
            Some(Phase::Draining { until: 1300 })
        );
        // Then unused; its flows linger with no_rebalance, not with rebalance.
        assert_eq!(
            d.phase(&key(12), 1300, &flows(&[12], true), nr),
            Some(Phase::Unused { lingering: true })
        );
        let rb = FailoverMode::Rebalance;
        assert_eq!(
            d.phase(&key(12), 1300, &flows(&[12], true), rb),
            Some(Phase::Unused { lingering: false })
        );
        // Its flows ended before the delay: unused at once.
        assert_eq!(
            d.phase(&key(12), 1100, &flows(&[], true), nr),
            Some(Phase::Unused { lingering: false })
        );
        // A sweep from before the target took no new flows knows nothing
        // of its flows.
        assert_eq!(
            d.phase(&key(12), 1100, &flows(&[], false), nr),
            Some(Phase::Draining { until: 1300 })
        );
        // Lingering keeps it in the plan; done, it leaves.
        assert!(d.settle(1300, &flows(&[12], true), &new).is_empty());
        assert_eq!(d.settle(1400, &flows(&[], true), &new), vec![key(12)]);
        assert!(d.get(&key(12)).is_none());
    }

    /// A sweep ends a drain only if it started long enough after the write
    /// that made its target take no new flow: not one that began before
    /// the drain, nor before that write succeeded (one failed first), nor
    /// within the grace after it. Monotonic time, to the nanosecond.
    #[test]
    fn only_a_sweep_after_the_target_closed_ends_its_drain() {
        let (old, new) = (policy(&[11, 12], 300, false), policy(&[11], 300, false));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut d = Drains::default();
        let mut closed = Closed::default();
        let takes_new = |open: bool| move |k: &TargetKey| open || *k != key(12);
        // A write before the drain: 12 takes new flows.
        closed.written(&d, takes_new(true), at(0));
        d.follow(&old, &new, 1000);
        // The drain's first write failed; the next succeeded at 3 s.
        closed.written(&d, takes_new(false), at(3000));
        closed.written(&d, takes_new(false), at(5000));
        let sweep = |closed: &Closed, started: u64| Flows {
            named: BTreeSet::new(),
            covered: closed.covered(at(started)),
        };
        let nr = FailoverMode::NoRebalance;
        let draining = Some(Phase::Draining { until: 1300 });
        for started in [0, 2900, 3000, 3000 + 999] {
            let flows = sweep(&closed, started);
            assert_eq!(d.phase(&key(12), 1010, &flows, nr), draining, "{started}");
            assert!(d.settle(1010, &flows, &new).is_empty());
        }
        let after = sweep(&closed, 3000 + RELEASE_GRACE.as_millis() as u64);
        assert_eq!(
            d.phase(&key(12), 1010, &after, nr),
            Some(Phase::Unused { lingering: false })
        );
        // Undrained (back in the policy), it is forgotten: drained again,
        // it counts from the next write.
        d.follow(&new, &old, 1020);
        closed.written(&d, takes_new(true), at(6000));
        d.follow(&old, &new, 1030);
        closed.written(&d, takes_new(false), at(7000));
        assert!(closed.covered(at(7999)).is_empty());
        assert_eq!(closed.covered(at(8000)), [key(12)].into());
        assert_eq!(d.settle(1040, &sweep(&closed, 8000), &new), vec![key(12)]);
    }

    #[test]
    fn a_new_delay_applies_to_drains_in_progress() {
        let (old, new) = (policy(&[11, 12], 300, false), policy(&[11], 300, false));
        let mut d = Drains::default();
        d.follow(&old, &new, 1000);
        d.follow(&new, &policy(&[11], 60, false), 1010);
        assert_eq!(d.get(&key(12)).unwrap().until, 1060);
        d.follow(&new, &policy(&[11], 0, true), 1020);
        let unknown = Flows::default();
        assert_eq!(
            d.phase(&key(12), 1020, &unknown, FailoverMode::Rebalance),
            Some(Phase::Unused { lingering: false })
        );
    }

    #[test]
    fn back_in_the_policy_it_is_active_again() {
        let (old, new) = (policy(&[11, 12], 300, false), policy(&[11], 300, false));
        let mut d = Drains::default();
        d.follow(&old, &new, 1000);
        d.follow(&new, &old, 1100);
        assert!(d.get(&key(12)).is_none());
        // A delay of 0: unused at once.
        let zero = policy(&[11], 0, true);
        d.follow(&old, &zero, 1200);
        assert_eq!(
            d.phase(&key(12), 1200, &Flows::default(), FailoverMode::Rebalance),
            Some(Phase::Unused { lingering: false })
        );
    }

    #[test]
    fn drain_and_undrain_by_command() {
        let p = policy(&[11, 12], 60, false);
        let mut d = Drains::default();
        let ip = IpAddr::from([10, 0, 3, 12]);
        let drained = d.drain(&p, "web", ip, 1000).unwrap();
        assert_eq!((drained.until, drained.by_command), (1060, true));
        assert_eq!(
            d.drain(&p, "web", ip, 1001),
            Err(DrainError::AlreadyDraining {
                group: "web".into(),
                ip
            })
        );
        assert!(matches!(
            d.drain(&p, "api", ip, 1000),
            Err(DrainError::NoGroup(_))
        ));
        assert!(matches!(
            d.drain(&p, "web", IpAddr::from([10, 0, 3, 99]), 1000),
            Err(DrainError::NoTarget { .. })
        ));
        // Unused after its delay, but kept (it is in the policy) until undrained.
        assert!(d.settle(2000, &flows(&[], true), &p).is_empty());
        d.undrain("web", ip).unwrap();
        assert!(d.get(&key(12)).is_none());
        assert_eq!(
            d.undrain("web", ip),
            Err(DrainError::NotDrained {
                group: "web".into(),
                ip
            })
        );
        // Drained, then removed from the policy: it drains on as one that left.
        d.drain(&p, "web", ip, 3000).unwrap();
        d.follow(&p, &policy(&[11], 60, false), 3010);
        let left = d.get(&key(12)).unwrap();
        assert_eq!((left.since, left.by_command), (3000, false));
        assert_eq!(
            d.undrain("web", ip),
            Err(DrainError::LeftThePolicy {
                group: "web".into(),
                ip
            })
        );
    }

    #[test]
    fn a_backup_groups_targets_are_wanted_via_it() {
        let p = policy::parse(
            "t.yaml",
            "target_groups:\n  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [{ ip: 10.0.3.11 }] }\n  - { name: spare, protocol: tcp, targets: [{ ip: 10.0.3.21 }] }\n",
        )
        .unwrap();
        let keys: Vec<TargetKey> = wanted(&p).into_iter().map(|(k, _)| k).collect();
        let via = TargetKey::via_backup("web", "spare", IpAddr::from([10, 0, 3, 21]));
        assert!(keys.contains(&via), "{keys:?}");
        assert!(keys.contains(&TargetKey::new("spare", IpAddr::from([10, 0, 3, 21]))));
        assert_eq!(keys.len(), 3);
        // Draining the backup's target drains its view from web too.
        let mut d = Drains::default();
        d.drain(&p, "spare", IpAddr::from([10, 0, 3, 21]), 1000)
            .unwrap();
        assert!(d.get(&via).is_some());
        d.undrain("spare", IpAddr::from([10, 0, 3, 21])).unwrap();
        assert!(d.get(&via).is_none());
    }

    /// A target drained before a group names its group as `backup` is
    /// drained in that group's view of it too, from the same moment: the
    /// order of `lb drain` and the policy change does not matter. Unlinked
    /// and linked again, the view is drained again; `lb undrain` ends both.
    #[test]
    fn a_drain_reaches_backup_views_made_after_it() {
        let ip = IpAddr::from([10, 0, 3, 21]);
        let yaml = |backup: &str| {
            format!(
                "target_groups:\n  - {{ name: web, protocol: tcp, {backup}targets: [{{ ip: 10.0.3.11 }}] }}\n  \
                 - {{ name: spare, protocol: tcp, deregistration_delay_s: 60, targets: [{{ ip: 10.0.3.21 }}] }}\n"
            )
        };
        let alone = policy::parse("t.yaml", &yaml("")).unwrap();
        let linked =
            policy::parse("t.yaml", &yaml("backup: spare, failover_ratio: 0.5, ")).unwrap();
        let via = TargetKey::via_backup("web", "spare", ip);
        let mut d = Drains::default();
        d.drain(&alone, "spare", ip, 1000).unwrap();
        assert!(d.get(&via).is_none());

        d.follow(&alone, &linked, 1010);
        let view = d.get(&via).expect("the new view is drained");
        // web's delay (the default 300 s), from the drain's start.
        assert_eq!(
            (view.since, view.until, view.by_command),
            (1000, 1300, true)
        );

        d.follow(&linked, &alone, 1020);
        d.follow(&alone, &linked, 1030);
        assert!(d.get(&via).is_some_and(|v| v.by_command), "linked again");
        d.undrain("spare", ip).unwrap();
        assert!(d.is_empty(), "{d:?}");
    }

    /// A start on a new data plane (a reboot) follows the drains kept to
    /// the policy from nothing held: a target drained by command and taken
    /// out of the file meanwhile is no longer drained by command (it is
    /// gone once unused, not drained if it comes back), a group gone takes
    /// its drains, and a backup view made meanwhile is drained.
    #[test]
    fn drains_kept_through_a_reboot_follow_the_policy() {
        let (t11, t21) = (IpAddr::from([10, 0, 3, 11]), IpAddr::from([10, 0, 3, 21]));
        let before = policy::parse(
            "t.yaml",
            "target_groups:\n  - { name: web, protocol: tcp, targets: [{ ip: 10.0.3.11 }, { ip: 10.0.3.12 }] }\n  \
             - { name: spare, protocol: tcp, targets: [{ ip: 10.0.3.21 }] }\n  \
             - { name: old, protocol: tcp, targets: [{ ip: 10.0.3.31 }] }\n",
        )
        .unwrap();
        let mut d = Drains::default();
        d.drain(&before, "web", t11, 1000).unwrap();
        d.drain(&before, "spare", t21, 1000).unwrap();
        d.drain(&before, "old", IpAddr::from([10, 0, 3, 31]), 1000)
            .unwrap();
        let after = policy::parse(
            "t.yaml",
            "target_groups:\n  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [{ ip: 10.0.3.12 }] }\n  \
             - { name: spare, protocol: tcp, targets: [{ ip: 10.0.3.21 }] }\n",
        )
        .unwrap();
        d.follow_from(Vec::new(), &after, 2000);
        let web = d.get(&TargetKey::new("web", t11)).expect("drains on");
        assert!(!web.by_command, "out of the file: no longer by command");
        assert!(
            d.get(&TargetKey::new("spare", t21))
                .is_some_and(|d| d.by_command)
        );
        let view = d.get(&TargetKey::via_backup("web", "spare", t21));
        assert!(view.is_some_and(|v| v.by_command), "the new backup view");
        assert_eq!(d.list().count(), 3, "old's went with its group");
    }

    /// Renamed, a drain goes on as it was under its group's new name (and
    /// its backup's, for a target taken through one).
    #[test]
    fn a_renamed_group_keeps_its_drains() {
        let ip: IpAddr = [10, 0, 3, 12].into();
        let mut d = Drains::from_list([
            drain(&TargetKey::new("web", ip), None, 1000, 300, true),
            drain(
                &TargetKey::via_backup("api", "web", ip),
                None,
                1000,
                300,
                false,
            ),
        ]);
        d = d.renamed(&Renames::parse(&["web=www"]).unwrap());
        let www = d.get(&TargetKey::new("www", ip)).expect("renamed");
        assert_eq!(
            (www.group.as_str(), www.since, www.until, www.by_command),
            ("www", 1000, 1300, true)
        );
        let via = d
            .get(&TargetKey::via_backup("api", "www", ip))
            .expect("its backup renamed");
        assert_eq!(via.via.as_deref(), Some("www"));
        assert!(d.get(&TargetKey::new("web", ip)).is_none());
        let flows = Flows {
            named: [TargetKey::new("web", ip)].into(),
            covered: [TargetKey::new("web", ip)].into(),
        };
        let flows = flows.renamed(&Renames::parse(&["web=www"]).unwrap());
        assert_eq!(flows.named, [TargetKey::new("www", ip)].into());
        assert_eq!(flows.covered, flows.named);
    }
}
