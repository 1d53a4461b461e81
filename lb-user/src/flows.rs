//! Flow-table upkeep, the pure part: when a flow-table entry has ended, and
//! the recount of active flows per target. The sweeper that walks the maps
//! (`dataplane::sweep`) applies these rules; they are the data plane's own
//! (lb-ebpf `pipeline/select.rs`), restated here for the user side.
//!
//! A flow has ended when its last packet is older than its timeout: the
//! group's FIN timeout once the client sent FIN or RST, else the group's idle
//! timeout. Times are data-plane times: the kernel's monotonic clock plus
//! `Config::time_offset_ns`.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{FlowState, GroupInfo, flow_flags};

use crate::{
    plan::MapPlan,
    policy::limits::{DEFAULT_FIN_TIMEOUT_S, DEFAULT_TCP_IDLE_TIMEOUT_S},
};

const NS_PER_S: u64 = 1_000_000_000;

/// Idle and FIN timeouts (ns) of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle_ns: u64,
    pub fin_ns: u64,
}

impl Timeouts {
    pub fn of(group: &GroupInfo) -> Timeouts {
        Timeouts {
            idle_ns: group.idle_timeout_s as u64 * NS_PER_S,
            fin_ns: group.fin_timeout_s as u64 * NS_PER_S,
        }
    }

    /// How long an entry with `flags` may go without packets.
    pub fn for_flags(&self, flags: u16) -> u64 {
        if flags & (flow_flags::FIN | flow_flags::RST) != 0 {
            self.fin_ns
        } else {
            self.idle_ns
        }
    }
}

/// What the sweeper needs of a plan: the timeouts of each listener's group
/// (an entry names the listener it was created under), the time offset, and
/// the retired target ids (`crate::ids`), whose flows are re-selected at
/// their next packet anyway: their entries and sticky sessions are deleted,
/// so that the ids can be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    by_listener: HashMap<u16, Timeouts>,
    /// For entries whose listener is gone or was renumbered: the longest
    /// timeouts of any group, so that no entry ends early (the data plane
    /// re-selects such flows anyway, and the LRU evicts what is left).
    fallback: Timeouts,
    /// `Config::time_offset_ns` of the plan.
    pub time_offset_ns: u64,
    pub retired: BTreeSet<u32>,
}

impl Rules {
    pub fn of(plan: &MapPlan) -> Rules {
        let groups: HashMap<u32, Timeouts> = plan
            .groups
            .iter()
            .map(|g| (g.id, Timeouts::of(&g.info)))
            .collect();
        let by_listener = plan
            .listeners
            .iter()
            .filter_map(|l| {
                let t = groups.get(&l.info.group_id)?;
                Some((l.info.listener_id as u16, *t))
            })
            .collect();
        let longest = |f: fn(&Timeouts) -> u64| groups.values().map(f).max();
        let fallback = Timeouts {
            idle_ns: longest(|t| t.idle_ns).unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT_S as u64 * NS_PER_S),
            fin_ns: longest(|t| t.fin_ns).unwrap_or(DEFAULT_FIN_TIMEOUT_S as u64 * NS_PER_S),
        };
        Rules {
            by_listener,
            fallback,
            time_offset_ns: plan.config.time_offset_ns,
            retired: plan.ids.retired().map(|(_, a)| a.id).collect(),
        }
    }

    /// What a sweep does with an entry at data-plane time `now_ns`.
    pub fn fate(&self, state: &FlowState, now_ns: u64) -> Fate {
        if self.ended(state, now_ns) {
            Fate::Ended
        } else if self.retired.contains(&state.target_id) {
            Fate::Orphaned
        } else {
            Fate::Live
        }
    }

    /// Whether `state` has ended at data-plane time `now_ns`.
    pub fn ended(&self, state: &FlowState, now_ns: u64) -> bool {
        let timeouts = self
            .by_listener
            .get(&state.listener_id)
            .unwrap_or(&self.fallback);
        ended(state, now_ns, timeouts)
    }
}

/// What a sweep does with a flow-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Live,
    /// The flow has ended: delete it.
    Ended,
    /// It names a retired target (its next packet would choose again):
    /// delete it, if the target is still not usable when deleting.
    Orphaned,
}

/// Whether an entry has ended: its last packet is older than the timeout
/// its flags call for (the data plane's rule).
pub fn ended(state: &FlowState, now_ns: u64, timeouts: &Timeouts) -> bool {
    now_ns.saturating_sub(state.last_seen_ns) > timeouts.for_flags(state.flags)
}

/// One sweep's tally: live counted flows per target that started before the
/// sweep's snapshot of the counts, and the entries seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Data-plane time of the snapshot: entries created at or after it are
    /// not counted (their +1 came after the snapshot; see [`corrections`]).
    pub since_ns: u64,
    pub entries: u64,
    pub ended: u64,
    /// Target id -> live entries with `COUNTED` created before `since_ns`.
    pub active: BTreeMap<u32, i64>,
    /// Entries naming a retired target.
    pub orphaned: u64,
    /// Target ids that live entries name.
    pub named: BTreeSet<u32>,
}

impl Tally {
    /// A tally against a snapshot of the counts taken at data-plane time
    /// `since_ns` (the start of a tick).
    pub fn since(since_ns: u64) -> Tally {
        Tally {
            since_ns,
            entries: 0,
            ended: 0,
            active: BTreeMap::new(),
            orphaned: 0,
            named: BTreeSet::new(),
        }
    }

    /// Adds one entry; returns what to do with it (the sweeper deletes the
    /// ended and orphaned ones).
    pub fn add(&mut self, rules: &Rules, state: &FlowState, now_ns: u64) -> Fate {
        self.entries += 1;
        let fate = rules.fate(state, now_ns);
        match fate {
            Fate::Ended => self.ended += 1,
            Fate::Orphaned => self.orphaned += 1,
            Fate::Live => {
                self.named.insert(state.target_id);
                if state.flags & flow_flags::COUNTED != 0 && state.created_ns < self.since_ns {
                    *self.active.entry(state.target_id).or_default() += 1;
                }
            }
        }
        fate
    }
}

/// What to add to each target's active count (target id -> delta, only the
/// ones not 0) after a sweep: the tally minus the `snapshot` of the counts
/// taken when the walk began (target id -> value; ids not in it were 0).
///
/// Adding a delta, not storing the tally, keeps what the data plane counted
/// while the walk ran: a flow that starts then is in neither the snapshot
/// nor the tally (the tally skips entries created from the snapshot's tick
/// on), so its +1 stands. What the delta takes out is what the snapshot
/// held and the table does not: flows that ended silently (idle timeout,
/// evicted entries). A flow that ends while the walk runs can still be
/// taken out twice (by the data plane and by the delta, if the walk read it
/// after its FIN), and one that started in the first microseconds of the
/// snapshot's tick, before the snapshot, can be missed; the next sweep puts
/// both right.
pub fn corrections(tally: &Tally, snapshot: &BTreeMap<u32, i64>) -> Vec<(u32, i64)> {
    let mut ids: Vec<u32> = snapshot
        .keys()
        .chain(tally.active.keys())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let want = tally.active.get(&id).copied().unwrap_or(0);
            let had = snapshot.get(&id).copied().unwrap_or(0);
            (want != had).then_some((id, want - had))
        })
        .collect()
}

/// A count as shown to people: never negative (a count may dip below zero
/// for a moment when a flow ends twice, e.g. at its RST and in a sweep, until
/// the next sweep corrects it).
pub fn shown(value: i64) -> u64 {
    value.max(0) as u64
}

#[cfg(test)]
mod tests {
    use lb_common::{Config, ListenerInfo, ListenerKey};

    use super::*;
    use crate::plan::{PlannedGroup, PlannedListener};

    const S: u64 = NS_PER_S;

    fn plan() -> MapPlan {
        let group = |id, idle, fin| PlannedGroup {
            id,
            name: format!("g{id}"),
            info: GroupInfo {
                idle_timeout_s: idle,
                fin_timeout_s: fin,
                ..Default::default()
            },
            table: Default::default(),
            last_resort: false,
            serving: crate::failover::Serving::Primary,
            primary: Default::default(),
            backup: None,
        };
        let listener = |id, group_id| PlannedListener {
            name: format!("l{id}"),
            key: ListenerKey::default(),
            info: ListenerInfo {
                listener_id: id,
                group_id,
            },
        };
        MapPlan {
            config: Config {
                time_offset_ns: 7,
                ..Default::default()
            },
            ids: Default::default(),
            listeners: vec![listener(1, 1), listener(2, 2)],
            groups: vec![group(1, 350, 10), group(2, 120, 3)],
            targets: vec![],
        }
    }

    fn state(listener_id: u16, flags: u16, last_seen_s: u64) -> FlowState {
        FlowState {
            target_id: 1,
            listener_id,
            flags,
            created_ns: 0,
            last_seen_ns: last_seen_s * S,
        }
    }

    #[test]
    fn entries_end_after_their_timeout_by_flags_and_group() {
        let rules = Rules::of(&plan());
        assert_eq!(rules.time_offset_ns, 7);
        let now = 1000 * S;
        let cases = [
            // (listener, flags, last seen, ended)
            (1, flow_flags::COUNTED, 1000 - 350, false),
            (1, flow_flags::COUNTED, 1000 - 351, true),
            (1, flow_flags::FIN, 1000 - 10, false),
            (1, flow_flags::FIN, 1000 - 11, true),
            (1, flow_flags::RST, 1000 - 11, true),
            (2, flow_flags::COUNTED, 1000 - 121, true),
            (2, flow_flags::FIN, 1000 - 3, false),
            (2, flow_flags::FIN | flow_flags::SYN, 1000 - 4, true),
            // Unknown listener: the longest timeouts of any group.
            (9, flow_flags::COUNTED, 1000 - 300, false),
            (9, flow_flags::FIN, 1000 - 10, false),
            (9, flow_flags::FIN, 1000 - 11, true),
            // A last packet "after" now (another CPU's clock, or the test
            // offset moved back) is not ended.
            (1, 0, 2000, false),
        ];
        for (listener, flags, seen, want) in cases {
            let s = state(listener, flags, seen);
            assert_eq!(rules.ended(&s, now), want, "{listener} {flags:#x} {seen}");
        }
    }

    #[test]
    fn tally_counts_live_counted_entries_per_target() {
        let rules = Rules::of(&plan());
        let now = 1000 * S;
        let mut tally = Tally::since(1);
        let entries = [
            FlowState {
                target_id: 3,
                ..state(1, flow_flags::COUNTED | flow_flags::SYN, 999)
            },
            FlowState {
                target_id: 3,
                ..state(1, flow_flags::COUNTED, 999)
            },
            // Uncounted at its FIN, still lingering.
            FlowState {
                target_id: 3,
                ..state(1, flow_flags::FIN, 999)
            },
            // Ended: deleted, not counted.
            FlowState {
                target_id: 4,
                ..state(1, flow_flags::COUNTED, 1)
            },
            FlowState {
                target_id: 5,
                ..state(2, flow_flags::COUNTED, 999)
            },
            // Created at or after the snapshot: its +1 is not in the
            // snapshot, so it is not in the tally either.
            FlowState {
                target_id: 5,
                created_ns: 1,
                ..state(2, flow_flags::COUNTED, 999)
            },
        ];
        let fates: Vec<Fate> = entries.iter().map(|e| tally.add(&rules, e, now)).collect();
        use Fate::{Ended, Live};
        assert_eq!(fates, [Live, Live, Live, Ended, Live, Live]);
        assert_eq!((tally.entries, tally.ended), (6, 1));
        assert_eq!(tally.active, BTreeMap::from([(3, 2), (5, 1)]));
        assert_eq!(
            tally.named,
            BTreeSet::from([3, 5]),
            "the ended entry names nothing"
        );

        // Drifted values are corrected by their difference (a target without
        // live flows loses what the snapshot had), right values are left
        // alone.
        let snapshot = BTreeMap::from([(3, 2), (4, 1), (5, -1), (6, 0)]);
        assert_eq!(corrections(&tally, &snapshot), [(4, -1), (5, 2)]);
        assert_eq!(
            corrections(&tally, &BTreeMap::new()),
            [(3, 2), (5, 1)],
            "targets not in the snapshot"
        );
    }

    /// The race the delta avoids: flows that start while the walk runs keep
    /// their count, whether the walk reads their entries or not.
    #[test]
    fn flows_started_during_a_sweep_keep_their_count() {
        let rules = Rules::of(&plan());
        let (snapshot_at, now) = (500 * S, 501 * S);
        // 10 flows on target 1 started before the snapshot, 10 on target 2
        // after it; the walk reads all of them.
        let mut table: Vec<FlowState> = (0..10)
            .map(|_| FlowState {
                target_id: 1,
                created_ns: snapshot_at - S,
                ..state(1, flow_flags::COUNTED, 500)
            })
            .collect();
        let snapshot = BTreeMap::from([(1, 10)]);
        table.extend((0..10).map(|_| FlowState {
            target_id: 2,
            created_ns: snapshot_at,
            ..state(1, flow_flags::COUNTED, 500)
        }));
        let mut tally = Tally::since(snapshot_at);
        for e in &table {
            assert_eq!(tally.add(&rules, e, now), Fate::Live);
        }
        // The data plane counted 10 and 10: nothing to correct.
        assert_eq!(corrections(&tally, &snapshot), []);
    }

    /// Entries of retired targets are deleted (their next packet would
    /// choose again anyway), so that the ids can be released; the others
    /// name their targets.
    #[test]
    fn entries_of_retired_targets_are_orphans() {
        let mut rules = Rules::of(&plan());
        rules.retired = BTreeSet::from([4]);
        let now = 1000 * S;
        let mut tally = Tally::since(1);
        let live = FlowState {
            target_id: 3,
            ..state(1, flow_flags::COUNTED, 999)
        };
        let orphan = FlowState {
            target_id: 4,
            ..state(1, flow_flags::COUNTED, 999)
        };
        let ended_orphan = FlowState {
            target_id: 4,
            ..state(1, flow_flags::COUNTED, 1)
        };
        assert_eq!(tally.add(&rules, &live, now), Fate::Live);
        assert_eq!(tally.add(&rules, &orphan, now), Fate::Orphaned);
        assert_eq!(tally.add(&rules, &ended_orphan, now), Fate::Ended);
        assert_eq!((tally.orphaned, tally.ended), (1, 1));
        assert_eq!(tally.named, BTreeSet::from([3]));
        assert_eq!(
            tally.active,
            BTreeMap::from([(3, 1)]),
            "orphans are not counted"
        );
    }

    #[test]
    fn shown_counts_are_never_negative() {
        assert_eq!((shown(-2), shown(0), shown(5)), (0, 0, 5));
    }
}
