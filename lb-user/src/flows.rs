//! Flow-table upkeep, the pure part: when a flow-table entry has ended, and
//! the recount of active flows per target. The sweeper that walks the maps
//! (`dataplane::sweep`) applies these rules; they are the data plane's own
//! (lb-ebpf `pipeline/select.rs`), restated here for the user side.
//!
//! A flow has ended when its last packet is older than its timeout: the
//! group's FIN timeout once the client sent FIN or RST, else the group's idle
//! timeout. Times are data-plane times: the kernel's monotonic clock plus
//! `Config::time_offset_ns`.
use std::collections::{BTreeMap, HashMap};

use lb_common::{FlowState, GroupInfo, flow_flags};

use crate::plan::MapPlan;

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
/// (an entry names the listener it was created under) and the time offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    by_listener: HashMap<u16, Timeouts>,
    /// For entries whose listener is gone or was renumbered: the longest
    /// timeouts of any group, so that no entry ends early (the data plane
    /// re-selects such flows anyway, and the LRU evicts what is left).
    fallback: Timeouts,
    /// `Config::time_offset_ns` of the plan.
    pub time_offset_ns: u64,
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
            idle_ns: longest(|t| t.idle_ns)
                .unwrap_or(lb_common::DEFAULT_TCP_IDLE_TIMEOUT_S as u64 * NS_PER_S),
            fin_ns: longest(|t| t.fin_ns)
                .unwrap_or(lb_common::DEFAULT_FIN_TIMEOUT_S as u64 * NS_PER_S),
        };
        Rules {
            by_listener,
            fallback,
            time_offset_ns: plan.config.time_offset_ns,
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

/// Whether an entry has ended: its last packet is older than the timeout
/// its flags call for (the data plane's rule).
pub fn ended(state: &FlowState, now_ns: u64, timeouts: &Timeouts) -> bool {
    now_ns.saturating_sub(state.last_seen_ns) > timeouts.for_flags(state.flags)
}

/// One sweep's tally: live counted flows per target, and the entries seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    pub ended: u64,
    /// Target id -> live entries with `COUNTED`.
    pub active: BTreeMap<u32, i64>,
}

impl Tally {
    /// Adds one entry; returns whether it has ended (the sweeper deletes it).
    pub fn add(&mut self, rules: &Rules, state: &FlowState, now_ns: u64) -> bool {
        self.entries += 1;
        if rules.ended(state, now_ns) {
            self.ended += 1;
            return true;
        }
        if state.flags & flow_flags::COUNTED != 0 {
            *self.active.entry(state.target_id).or_default() += 1;
        }
        false
    }
}

/// The corrections that make the active counts `current` (target id ->
/// value in `TARGET_ACTIVE`) match a tally: every target whose value differs,
/// including those the tally did not see (they have no live flow: 0).
pub fn corrections(tally: &Tally, current: &BTreeMap<u32, i64>) -> Vec<(u32, i64)> {
    let mut out: Vec<(u32, i64)> = current
        .iter()
        .filter_map(|(&id, &value)| {
            let want = tally.active.get(&id).copied().unwrap_or(0);
            (want != value).then_some((id, want))
        })
        .collect();
    out.extend(
        tally
            .active
            .iter()
            .filter(|(id, _)| !current.contains_key(id))
            .map(|(&id, &want)| (id, want)),
    );
    out.sort_unstable();
    out
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
            table: vec![],
            last_resort: false,
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
        let mut tally = Tally::default();
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
        ];
        let deleted: Vec<bool> = entries.iter().map(|e| tally.add(&rules, e, now)).collect();
        assert_eq!(deleted, [false, false, false, true, false]);
        assert_eq!((tally.entries, tally.ended), (5, 1));
        assert_eq!(tally.active, BTreeMap::from([(3, 2), (5, 1)]));

        // Drifted values are corrected, targets without live flows go to 0,
        // right values are left alone.
        let current = BTreeMap::from([(3, 2), (4, 1), (5, -1), (6, 0)]);
        assert_eq!(corrections(&tally, &current), [(4, 0), (5, 1)]);
        assert_eq!(
            corrections(&tally, &BTreeMap::new()),
            [(3, 2), (5, 1)],
            "targets not read yet"
        );
    }

    #[test]
    fn shown_counts_are_never_negative() {
        assert_eq!((shown(-2), shown(0), shown(5)), (0, 0, 5));
    }
}
