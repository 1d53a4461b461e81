//! What the maps' ids stand for, for readers off the event loop: the daemon
//! publishes a [`View`] after each change of its plan (a policy, a health
//! verdict, a MAC, a drain), and metrics scrapes and `lb stats` read the
//! per-CPU counters themselves (`dataplane::reader`) and name them with
//! the view they hold. A view is immutable and shared (`Arc`): publishing
//! one costs the event loop a walk of the plan, a read costs it nothing.
//!
//! A group's counters (`lb_group_packets_total`...) are counters: they
//! never fall while `lb` runs. So a group's view names every id its own
//! targets' counts are kept under (in the plan, or retired while flows may
//! name them: [`GroupView::counted`]), and the counts of those whose ids
//! were released, which the data plane zeroes for reuse ([`Released`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use lb_common::Stats;
use tokio::sync::watch;

use crate::{
    dataplane::reader::StatsRead,
    failover::Serving,
    ids::Ids,
    plan::MapPlan,
    policy::{Policy, Ports},
    rename::Renames,
    status::{TargetState, target_state},
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub listeners: Vec<ListenerView>,
    pub groups: Vec<GroupView>,
    /// A group's own targets, then its backup's (`via`), then those leaving,
    /// group after group (the plan's order).
    pub targets: Vec<TargetView>,
    /// Ids to read: one past the largest listener and target id named.
    pub listener_ids: u32,
    pub target_ids: u32,
    /// The flow table: flows it is sized for, and buckets.
    pub max_flows: u32,
    pub buckets: u32,
    /// The VIPs of the policy with `lb run --announce` (empty without it):
    /// the metrics say whether the announce table holds each.
    pub announce_vips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    pub id: u32,
    pub name: String,
    pub vip: IpAddr,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub port: Ports,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Its id in the data plane: the same through a rename.
    pub id: u32,
    pub name: String,
    pub listener: Option<String>,
    pub serving: Serving,
    /// No target of the side serving it is healthy.
    pub last_resort: bool,
    /// The ids its own targets' counts are kept under: those of the plan
    /// and those retired while flows may name them (a target that comes
    /// back before its id is released has it again, with its counts).
    pub counted: Vec<u32>,
    /// The counts of its own targets whose ids were released (zeroed for
    /// reuse) since `lb` started.
    pub released: Stats,
}

impl GroupView {
    /// Its new flows go to its backup group's targets.
    pub fn backup_active(&self) -> bool {
        matches!(self.serving, Serving::Backup | Serving::BackupLastResort)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub id: u32,
    pub group: String,
    pub ip: IpAddr,
    pub port: Ports,
    /// The backup group it comes from, for a backup's target.
    pub via: Option<String>,
    pub state: TargetState,
    /// Takes new flows now.
    pub selectable: bool,
}

impl TargetView {
    /// One of the group's own targets (not its backup's): its counters
    /// are its own group's.
    pub fn own(&self) -> bool {
        self.via.is_none()
    }
}

impl View {
    /// The view of `plan`, compiled from `policy`; `released`: the counts
    /// of the targets whose ids were released, by group.
    pub fn of(
        policy: &Policy,
        plan: &MapPlan,
        released: &Released,
        (max_flows, buckets): (u32, u32),
    ) -> View {
        let listeners: Vec<ListenerView> = policy
            .listeners
            .iter()
            .zip(&plan.listeners)
            .map(|(l, p)| ListenerView {
                id: p.info.listener_id,
                name: l.name.clone(),
                vip: l.vip,
                protocol: l.protocol.as_str(),
                port: l.port,
                group: l.target_group.clone(),
            })
            .collect();
        // Each group's listener, found once (a lookup per target would be
        // listeners x targets comparisons).
        let listener_of: HashMap<&str, &str> = policy
            .listeners
            .iter()
            .map(|l| (l.target_group.as_str(), l.name.as_str()))
            .collect();
        let groups = group_views(plan, &listener_of, released);
        let targets: Vec<TargetView> = plan
            .targets
            .iter()
            .map(|t| {
                let attached = listener_of.contains_key(t.group.as_str());
                TargetView {
                    id: t.id,
                    group: t.group.clone(),
                    ip: t.ip,
                    port: t.port,
                    via: t.via.clone(),
                    state: target_state(t, attached),
                    selectable: attached && t.excluded.is_none(),
                }
            })
            .collect();
        let counted_end = groups.iter().flat_map(|g| &g.counted).map(|id| id + 1);
        View {
            listener_ids: listeners.iter().map(|l| l.id + 1).max().unwrap_or(0),
            target_ids: targets
                .iter()
                .map(|t| t.id + 1)
                .chain(counted_end)
                .max()
                .unwrap_or(0),
            listeners,
            groups,
            targets,
            max_flows,
            buckets,
            ..View::default()
        }
    }
}

/// The groups of `plan`, with their listeners (`listener_of`) and the
/// counts of their targets released.
fn group_views(
    plan: &MapPlan,
    listener_of: &HashMap<&str, &str>,
    released: &Released,
) -> Vec<GroupView> {
    let mut counted = counted_ids(&plan.ids);
    plan.groups
        .iter()
        .map(|g| GroupView {
            id: g.id,
            name: g.name.clone(),
            listener: listener_of.get(g.name.as_str()).map(|l| l.to_string()),
            serving: g.serving,
            last_resort: g.last_resort,
            counted: counted.remove(g.name.as_str()).unwrap_or_default(),
            released: released.of(&g.name),
        })
        .collect()
}

/// By group, the ids of its own targets (active or retired) in `ids`.
fn counted_ids(ids: &Ids) -> HashMap<&str, Vec<u32>> {
    let mut out: HashMap<&str, Vec<u32>> = HashMap::new();
    for (key, a) in ids.targets().filter(|(k, _)| k.via.is_none()) {
        out.entry(key.group.as_str()).or_default().push(a.id);
    }
    out
}

impl View {
    /// This view, the target ids `released` (sorted) counted no more by their
    /// groups, whose counts `totals` holds now: what the daemon publishes
    /// after a release and before the data plane zeroes the ids'
    /// statistics, so that no view counts a zeroed id.
    pub fn released(&self, released: &[u32], totals: &Released) -> View {
        let mut view = self.clone();
        for g in &mut view.groups {
            g.counted.retain(|id| released.binary_search(id).is_err());
            g.released = totals.of(&g.name);
        }
        view
    }
}

/// By group, the counts of its own targets whose ids were released (their
/// statistics zeroed for reuse), since `lb` started: what its counters
/// keep of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released(BTreeMap<String, Stats>);

impl Released {
    /// Adds the counts `read` holds of the target ids `released` (sorted),
    /// named in `ids` (the ids before the release), to their groups'.
    pub fn add(&mut self, ids: &Ids, released: &[u32], read: &StatsRead) {
        for (key, a) in ids.targets() {
            if key.via.is_some() || released.binary_search(&a.id).is_err() {
                continue;
            }
            let s = read.target(a.id);
            let total = self.0.entry(key.group.clone()).or_default();
            total.packets += s.packets;
            total.bytes += s.bytes;
            total.new_flows += s.new_flows;
        }
    }

    /// Group `group`'s.
    pub fn of(&self, group: &str) -> Stats {
        self.0.get(group).copied().unwrap_or_default()
    }

    /// The same counts, the groups renamed.
    pub fn renamed(&self, renames: &Renames) -> Released {
        Released(
            self.0
                .iter()
                .map(|(name, s)| (renames.name(name).to_string(), *s))
                .collect(),
        )
    }

    /// Forgets the groups that have no id in `ids` any more (gone from
    /// the policy, no target of theirs held).
    pub fn keep_groups_of(&mut self, ids: &Ids) {
        let held: BTreeSet<&str> = ids.groups().map(|(name, _)| name).collect();
        self.0.retain(|name, _| held.contains(name.as_str()));
    }
}

/// The daemon's side: publishes each new view.
pub struct Publisher {
    tx: watch::Sender<Arc<View>>,
}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher {
            tx: watch::Sender::new(Arc::new(View::default())),
        }
    }

    /// Publishes `view` if it differs from the last one.
    pub fn publish(&self, view: View) {
        self.tx.send_if_modified(|last| {
            if **last == view {
                return false;
            }
            *last = Arc::new(view);
            true
        });
    }

    /// The last view published.
    pub fn last(&self) -> Arc<View> {
        self.tx.borrow().clone()
    }

    /// A reader's handle: `latest()` from any thread.
    pub fn subscribe(&self) -> Latest {
        Latest(self.tx.subscribe())
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

/// A reader's handle on the latest view.
#[derive(Clone)]
pub struct Latest(watch::Receiver<Arc<View>>);

impl Latest {
    /// The latest view (an `Arc` clone: the lock is held for no longer).
    pub fn latest(&self) -> Arc<View> {
        self.0.borrow().clone()
    }
}
