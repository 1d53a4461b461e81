//! Stable identities: the numbers the data plane stores for listeners,
//! target groups and targets.
//!
//! The data plane names targets by id in flow entries, flow-cache slots,
//! sticky sessions and active-flow counts, groups in round-robin positions
//! and sticky-session keys, and listeners in statistics. So an id belongs to
//! an object, never to a position in the policy file:
//! - a listener keeps its id while its (VIP, protocol, first port) is in the
//!   policy, a group while its name is, a target (group, address) while it
//!   is in that group, whatever else is added, removed or reordered;
//! - a target that leaves the policy is *retired*: its id goes to no other
//!   target until a sweep of the flow tables and sticky sessions, started
//!   [`RELEASE_GRACE`] or more after the retirement, found nothing that
//!   names it ([`Ids::release`]); a group's id stays taken while a retired
//!   target of the group holds one (the loader's records name the group);
//! - a new object takes the lowest free id (0 is reserved in every space:
//!   a zeroed table slot or map entry names nothing).
//!
//! Pure: the time is an argument.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::ListenerKey;

use crate::drains::{self, Drains};
use crate::policy::{
    Policy,
    compile::listener_key,
    limits::{GROUP_LIMIT, LISTENER_LIMIT, TARGET_LIMIT},
};
use crate::rename::Renames;

/// A target's identity: its group and address (every target of a group
/// shares the group's port); for a target of the group's backup group that
/// takes the group's flows, also that backup group (`crate::failover`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    pub group: String,
    pub ip: IpAddr,
    /// The backup group whose target this is (None: one of `group`'s own).
    pub via: Option<String>,
}

impl TargetKey {
    /// Target `ip` of `group`.
    pub fn new(group: impl Into<String>, ip: IpAddr) -> TargetKey {
        TargetKey {
            group: group.into(),
            ip,
            via: None,
        }
    }

    /// Target `ip` of `backup`, taking the flows of `group`.
    pub fn via_backup(
        group: impl Into<String>,
        backup: impl Into<String>,
        ip: IpAddr,
    ) -> TargetKey {
        TargetKey {
            group: group.into(),
            ip,
            via: Some(backup.into()),
        }
    }

    /// The key of the target itself in its own group (a backup's target
    /// for one taken via a backup): whose health and MAC it has.
    pub fn own(&self) -> TargetKey {
        TargetKey::new(
            self.via.clone().unwrap_or_else(|| self.group.clone()),
            self.ip,
        )
    }
}

/// How long after its retirement a target id may be released at the
/// earliest: a packet that read the target as usable just before the
/// retirement was written may still insert a flow entry naming it (a
/// program run takes microseconds; this leaves a wide margin).
pub const RELEASE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdsError {
    #[error(
        "too many {what}: the data plane holds at most {max}{}",
        retired_note(*retired)
    )]
    Exhausted {
        what: &'static str,
        max: u32,
        /// Ids held by removed targets whose flows may still be in the
        /// tables.
        retired: usize,
    },
}

fn retired_note(retired: usize) -> String {
    if retired == 0 {
        String::new()
    } else {
        format!(" ({retired} of them held by removed targets until their flows end or time out)")
    }
}

/// A target's id, and since when it is retired (None: in the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub id: u32,
    pub retired: Option<Instant>,
}

/// A group's id, and whether the group is in the policy (a group that is
/// not is kept only while a retired target of it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    id: u32,
    in_policy: bool,
}

/// The ids of one policy's objects, and of the targets retired from earlier
/// ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ids {
    listeners: HashMap<ListenerKey, u32>,
    groups: BTreeMap<String, Group>,
    targets: BTreeMap<TargetKey, Assigned>,
}

impl Ids {
    /// The ids for `policy`, following `self` (the ids in use): every
    /// object already numbered keeps its id (a retired target that is back
    /// is active again), targets that left are retired (since `now`), and
    /// new objects take the lowest free ids, in policy order.
    pub fn assign(&self, policy: &Policy, now: Instant) -> Result<Ids, IdsError> {
        self.assign_with(policy, &Drains::default(), now)
    }

    /// [`Ids::assign`], where the targets `drains` keeps after they left the
    /// policy (draining, or lingering) keep their ids too, and every target
    /// of a group's backup taking the group's flows has one of its own
    /// (`drains::wanted`).
    pub fn assign_with(
        &self,
        policy: &Policy,
        drains: &Drains,
        now: Instant,
    ) -> Result<Ids, IdsError> {
        let mut wanted: Vec<TargetKey> =
            drains::wanted(policy).into_iter().map(|(k, _)| k).collect();
        wanted.extend(drains.left_the_policy().map(|d| d.key()));
        let targets = self.assign_targets(&wanted, now)?;
        let groups = self.assign_groups(policy, &targets)?;
        let listeners = self.assign_listeners(policy)?;
        Ok(Ids {
            listeners,
            groups,
            targets,
        })
    }

    fn assign_targets(
        &self,
        wanted: &[TargetKey],
        now: Instant,
    ) -> Result<BTreeMap<TargetKey, Assigned>, IdsError> {
        let mut out: BTreeMap<TargetKey, Assigned> = self
            .targets
            .iter()
            .map(|(key, a)| {
                let retired = Some(a.retired.unwrap_or(now));
                (key.clone(), Assigned { id: a.id, retired })
            })
            .collect();
        let mut fresh = Vec::new();
        for key in wanted {
            match out.get_mut(key) {
                Some(a) => a.retired = None,
                None => fresh.push(key.clone()),
            }
        }
        let retired = out.values().filter(|a| a.retired.is_some()).count();
        let mut free = FreeIds::new(out.values().map(|a| a.id), TARGET_LIMIT);
        for key in fresh {
            let id = free.next().ok_or(IdsError::Exhausted {
                what: "targets",
                max: TARGET_LIMIT,
                retired,
            })?;
            out.insert(key, Assigned { id, retired: None });
        }
        Ok(out)
    }

    fn assign_groups(
        &self,
        policy: &Policy,
        targets: &BTreeMap<TargetKey, Assigned>,
    ) -> Result<BTreeMap<String, Group>, IdsError> {
        let in_policy: BTreeSet<&str> = policy
            .target_groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        // Groups that stay: in the policy, or named by a target that has
        // an id (as its group, or the backup it is taken through).
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        for name in targets
            .keys()
            .flat_map(|k| [Some(&k.group), k.via.as_ref()])
            .flatten()
        {
            if let Some(g) = self.groups.get(name) {
                out.insert(name.clone(), *g);
            }
        }
        for name in &in_policy {
            if let Some(g) = self.groups.get(*name) {
                out.insert(name.to_string(), *g);
            }
        }
        for (name, g) in out.iter_mut() {
            g.in_policy = in_policy.contains(name.as_str());
        }
        let mut free = FreeIds::new(out.values().map(|g| g.id), GROUP_LIMIT);
        for group in &policy.target_groups {
            if out.contains_key(&group.name) {
                continue;
            }
            let id = free.next().ok_or(IdsError::Exhausted {
                what: "target groups",
                max: GROUP_LIMIT,
                retired: 0,
            })?;
            let group_entry = Group {
                id,
                in_policy: true,
            };
            out.insert(group.name.clone(), group_entry);
        }
        Ok(out)
    }

    fn assign_listeners(&self, policy: &Policy) -> Result<HashMap<ListenerKey, u32>, IdsError> {
        let keys: Vec<ListenerKey> = policy
            .listeners
            .iter()
            .map(|l| listener_key(l.vip, l.protocol, l.port.first))
            .collect();
        let mut out: HashMap<ListenerKey, u32> = keys
            .iter()
            .filter_map(|k| Some((*k, *self.listeners.get(k)?)))
            .collect();
        let mut free = FreeIds::new(out.values().copied(), LISTENER_LIMIT);
        for key in keys {
            if out.contains_key(&key) {
                continue;
            }
            let id = free.next().ok_or(IdsError::Exhausted {
                what: "listeners",
                max: LISTENER_LIMIT,
                retired: 0,
            })?;
            out.insert(key, id);
        }
        Ok(out)
    }

    /// Releases the retired targets that nothing names any more: retired
    /// at least [`RELEASE_GRACE`] before `swept_from` (when a sweep of the
    /// flow tables and sticky sessions started) and not in `held` (the
    /// target ids that sweep found named by flows or by sessions not yet
    /// expired). Groups that only a released target kept go too. Returns
    /// the released target ids.
    pub fn release(&mut self, held: &BTreeSet<u32>, swept_from: Instant) -> Vec<u32> {
        let mut released = Vec::new();
        self.targets.retain(|_, a| {
            let done = a
                .retired
                .is_some_and(|at| at + RELEASE_GRACE <= swept_from && !held.contains(&a.id));
            if done {
                released.push(a.id);
            }
            !done
        });
        if !released.is_empty() {
            let held: BTreeSet<&str> = self
                .targets
                .keys()
                .flat_map(|k| [Some(k.group.as_str()), k.via.as_deref()])
                .flatten()
                .collect();
            self.groups
                .retain(|name, g| g.in_policy || held.contains(name.as_str()));
        }
        released.sort_unstable();
        released
    }

    /// The maps took these ids at `now`, in a write that succeeded; the
    /// one before it that succeeded was at `last` (None: none yet). A
    /// target retired since then counts as retired from `now`: until its
    /// retirement reached the maps (a write that failed, or a slow one),
    /// they may have given it new flows.
    pub fn written(&mut self, last: Option<Instant>, now: Instant) {
        for a in self.targets.values_mut() {
            if let Some(at) = a.retired
                && last.is_none_or(|last| at > last)
            {
                a.retired = Some(now.max(at));
            }
        }
    }

    /// The ids a loader found recorded in a data plane it adopts: listeners
    /// by key, group names by id, and targets (active or retired) by id.
    /// Retired targets count as retired since `now`; every group counts as
    /// in the policy until the next [`Ids::assign`].
    pub fn from_records(
        listeners: impl IntoIterator<Item = (ListenerKey, u32)>,
        groups: impl IntoIterator<Item = (u32, String)>,
        targets: impl IntoIterator<Item = (u32, TargetKey, bool)>,
        now: Instant,
    ) -> Ids {
        Ids {
            listeners: listeners.into_iter().collect(),
            groups: groups
                .into_iter()
                .map(|(id, name)| {
                    let group = Group {
                        id,
                        in_policy: true,
                    };
                    (name, group)
                })
                .collect(),
            targets: targets
                .into_iter()
                .map(|(id, key, retired)| {
                    let retired = retired.then_some(now);
                    (key, Assigned { id, retired })
                })
                .collect(),
        }
    }

    /// The same ids, the groups renamed (`crate::rename`): each group and
    /// target keeps its id under its group's new name.
    pub fn renamed(&self, renames: &Renames) -> Ids {
        Ids {
            listeners: self.listeners.clone(),
            groups: self
                .groups
                .iter()
                .map(|(name, g)| (renames.name(name).to_string(), *g))
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|(key, a)| (renames.key(key), *a))
                .collect(),
        }
    }

    pub fn listener(&self, key: &ListenerKey) -> Option<u32> {
        self.listeners.get(key).copied()
    }

    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.id)
    }

    /// The id of a target of the policy or a retired one.
    pub fn target(&self, key: &TargetKey) -> Option<Assigned> {
        self.targets.get(key).copied()
    }

    /// Every listener key and its id.
    pub fn listeners(&self) -> impl Iterator<Item = (&ListenerKey, u32)> {
        self.listeners.iter().map(|(k, &id)| (k, id))
    }

    /// Every group name with an id (in the policy, or held by a retired
    /// target), and its id.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u32)> {
        self.groups.iter().map(|(name, g)| (name.as_str(), g.id))
    }

    /// Every target with an id, active or retired.
    pub fn targets(&self) -> impl Iterator<Item = (&TargetKey, Assigned)> {
        self.targets.iter().map(|(k, &a)| (k, a))
    }

    /// The retired targets.
    pub fn retired(&self) -> impl Iterator<Item = (&TargetKey, Assigned)> {
        self.targets().filter(|(_, a)| a.retired.is_some())
    }
}

/// The lowest ids in 1..=max that are not taken, in order.
struct FreeIds {
    taken: Vec<u32>,
    at: usize,
    next: u32,
    max: u32,
}

impl FreeIds {
    fn new(taken: impl IntoIterator<Item = u32>, max: u32) -> FreeIds {
        let mut taken: Vec<u32> = taken.into_iter().collect();
        taken.sort_unstable();
        taken.dedup();
        FreeIds {
            taken,
            at: 0,
            next: 1,
            max,
        }
    }
}

impl Iterator for FreeIds {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.next <= self.max {
            let id = self.next;
            self.next += 1;
            while self.taken.get(self.at).is_some_and(|&t| t < id) {
                self.at += 1;
            }
            if self.taken.get(self.at) != Some(&id) {
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    /// A policy of listeners (name, port, group) and groups (name, target
    /// last octets).
    fn policy(listeners: &[(&str, u16, &str)], groups: &[(&str, &[u8])]) -> Policy {
        let mut yaml = String::from("listeners:\n");
        for (name, port, group) in listeners {
            yaml += &format!(
                "  - {{ name: {name}, vip: 10.0.3.49, protocol: tcp, port: {port}, target_group: {group} }}\n"
            );
        }
        yaml += "target_groups:\n";
        for (name, targets) in groups {
            yaml += &format!("  - name: {name}\n    protocol: tcp\n    targets:\n");
            for t in *targets {
                yaml += &format!("      - {{ ip: 10.0.3.{t} }}\n");
            }
        }
        policy::parse("t.yaml", &yaml).unwrap()
    }

    fn key(group: &str, last: u8) -> TargetKey {
        TargetKey::new(group, IpAddr::from([10, 0, 3, last]))
    }

    fn id(ids: &Ids, group: &str, last: u8) -> u32 {
        ids.target(&key(group, last)).expect("a target id").id
    }

    fn lkey(port: u16) -> ListenerKey {
        listener_key(
            "10.0.3.49".parse().unwrap(),
            policy::ListenerProtocol::Tcp,
            port,
        )
    }

    #[test]
    fn ids_follow_objects_not_positions() {
        let t0 = Instant::now();
        let first = policy(
            &[("web", 80, "web"), ("api", 81, "api")],
            &[("web", &[11, 12, 13]), ("api", &[21, 22])],
        );
        let ids = Ids::default().assign(&first, t0).unwrap();
        assert_eq!(
            [11, 12, 13].map(|t| id(&ids, "web", t)),
            [1, 2, 3],
            "policy order"
        );
        assert_eq!([21, 22].map(|t| id(&ids, "api", t)), [4, 5]);
        assert_eq!((ids.group("web"), ids.group("api")), (Some(1), Some(2)));
        assert_eq!(
            (ids.listener(&lkey(80)), ids.listener(&lkey(81))),
            (Some(1), Some(2))
        );

        // A new listener and group first, a target removed from `web`, the
        // rest reordered: every id that stays stays.
        let second = policy(
            &[("new", 82, "new"), ("api", 81, "api"), ("web", 80, "web")],
            &[("new", &[31]), ("api", &[22, 21]), ("web", &[13, 11])],
        );
        let next = ids.assign(&second, t0).unwrap();
        assert_eq!((id(&next, "web", 11), id(&next, "web", 13)), (1, 3));
        assert_eq!((id(&next, "api", 21), id(&next, "api", 22)), (4, 5));
        assert_eq!(
            next.target(&key("web", 12)),
            Some(Assigned {
                id: 2,
                retired: Some(t0)
            }),
            "retired, id kept"
        );
        assert_eq!(id(&next, "new", 31), 6, "2 is held by the retired target");
        assert_eq!(
            (next.group("web"), next.group("api"), next.group("new")),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(next.listener(&lkey(80)), Some(1));
        assert_eq!(next.listener(&lkey(81)), Some(2));
        assert_eq!(next.listener(&lkey(82)), Some(3));

        // The same policy again changes nothing (the retirement time too).
        assert_eq!(next.assign(&second, t0 + RELEASE_GRACE * 5).unwrap(), next);
        // Back in the policy: the same id, active again.
        let back = next.assign(&first, t0).unwrap();
        assert_eq!(
            back.target(&key("web", 12)),
            Some(Assigned {
                id: 2,
                retired: None
            })
        );
    }

    #[test]
    fn retired_ids_are_released_only_when_nothing_names_them() {
        let t0 = Instant::now();
        let with = policy(&[("web", 80, "web")], &[("web", &[11, 12]), ("old", &[41])]);
        let without = policy(&[("web", 80, "web")], &[("web", &[11])]);
        let mut ids = Ids::default()
            .assign(&with, t0)
            .unwrap()
            .assign(&without, t0)
            .unwrap();
        let (t12, t41) = (id(&ids, "web", 12), id(&ids, "old", 41));
        assert_eq!(ids.group("old"), Some(2), "held by its retired target");
        assert_eq!(ids.retired().count(), 2);

        // Too soon after the retirement: kept, named or not.
        assert!(ids.release(&BTreeSet::new(), t0).is_empty());
        // A later sweep that still finds 12 named releases only 41.
        let later = t0 + RELEASE_GRACE;
        assert_eq!(ids.release(&[t12].into(), later), vec![t41]);
        assert_eq!(ids.group("old"), None, "its group goes with it");
        assert!(ids.target(&key("old", 41)).is_none());
        // The free id goes to the next new target.
        let grown = policy(&[("web", 80, "web")], &[("web", &[11, 14])]);
        let ids2 = ids.assign(&grown, later).unwrap();
        assert_eq!(id(&ids2, "web", 14), t41);
        assert_eq!(ids2.target(&key("web", 12)).unwrap().id, t12);
        assert_eq!(ids.release(&BTreeSet::new(), later), vec![t12]);
    }

    /// A target retired by a plan whose write failed is released only
    /// from the grace after the write that succeeded: a sweep before then
    /// may have missed flows the maps still gave it.
    #[test]
    fn a_retirement_counts_from_the_write_that_took_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let with = policy(&[("web", 80, "web")], &[("web", &[11, 12])]);
        let without = policy(&[("web", 80, "web")], &[("web", &[11])]);
        let mut ids = Ids::default().assign(&with, t0).unwrap();
        ids.written(None, at(0));
        // Retired at 1 s; that write failed, the retry took it at 30 s.
        let mut ids = ids.assign(&without, at(1)).unwrap();
        let t12 = id(&ids, "web", 12);
        ids.written(Some(at(0)), at(30));
        assert!(ids.release(&BTreeSet::new(), at(10)).is_empty());
        assert!(ids.release(&BTreeSet::new(), at(30)).is_empty());
        // Later writes keep the time it was first written at.
        ids.written(Some(at(30)), at(40));
        assert_eq!(ids.release(&BTreeSet::new(), at(31)), vec![t12]);
    }

    #[test]
    fn exhausted_ids_are_an_error_that_counts_the_retired() {
        let mut free = FreeIds::new([1, 2, 4], 5);
        assert_eq!(free.by_ref().collect::<Vec<_>>(), [3, 5]);
        assert_eq!(free.next(), None);
        let err = IdsError::Exhausted {
            what: "targets",
            max: 131071,
            retired: 3,
        };
        assert_eq!(
            err.to_string(),
            "too many targets: the data plane holds at most 131071 (3 of them held by removed targets until their flows end or time out)"
        );
    }

    #[test]
    fn records_read_back_as_the_ids_they_record() {
        let t0 = Instant::now();
        let p = policy(&[("web", 80, "web")], &[("web", &[11, 12])]);
        let ids = Ids::default()
            .assign(&p, t0)
            .unwrap()
            .assign(&policy(&[("web", 80, "web")], &[("web", &[12])]), t0)
            .unwrap();
        let adopted = Ids::from_records(
            ids.listeners().map(|(k, id)| (*k, id)),
            ids.groups().map(|(n, id)| (id, n.to_string())),
            ids.targets()
                .map(|(k, a)| (a.id, k.clone(), a.retired.is_some())),
            t0,
        );
        assert_eq!(adopted, ids);
    }
}
