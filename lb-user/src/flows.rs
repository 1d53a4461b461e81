//! Flow-table upkeep, the pure part: when a flow-table entry has ended, and
//! what a sweep found. The sweeper that walks the table
//! (`dataplane::sweep`) applies these rules; they are the data plane's own
//! (lb-ebpf `pipeline/select.rs`), restated here for the user side.
//!
//! A flow has ended when its last packet is older than its timeout: the
//! group's FIN timeout once the client sent FIN or RST, else the group's idle
//! timeout. Its entry's last-seen time may be up to the touch interval
//! (about a second) earlier than its last packet, so an entry ends only once
//! that time is older than the timeout and the interval
//! (`flow_table::outlived`, the data plane's rule too). Times are data-plane
//! times: the kernel's tick counter in ns plus `Config::time_offset_ns`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use lb_common::{
    GroupInfo, ListenerKey,
    flow_table::{age_ns, flags, outlived},
};

use crate::dataplane::table::EntryView;

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

    /// How long an entry with `entry_flags` may go without packets.
    pub fn for_flags(&self, entry_flags: u8) -> u64 {
        if entry_flags & (flags::FIN | flags::RST) != 0 {
            self.fin_ns
        } else {
            self.idle_ns
        }
    }

    /// The longer of each.
    fn max(self, other: Timeouts) -> Timeouts {
        Timeouts {
            idle_ns: self.idle_ns.max(other.idle_ns),
            fin_ns: self.fin_ns.max(other.fin_ns),
        }
    }

    /// The longest an entry under them can go without a packet.
    fn longest(&self) -> Duration {
        Duration::from_nanos(self.idle_ns.max(self.fin_ns))
    }
}

/// The timeouts of the listeners that held an id before its holder, kept
/// until `until`: by then every entry of theirs has had a packet (which
/// names the listener it reached) or gone past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Before {
    timeouts: Timeouts,
    until: Instant,
}

/// The listener that holds (or last held) a listener id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    key: ListenerKey,
    /// Its group's timeouts.
    own: Timeouts,
    /// The longest timeouts of the listeners that held the id before it
    /// (in this run of `lb`), while entries of theirs may be left.
    before: Option<Before>,
    /// When it left the plan, for an id no listener holds now: its
    /// entries' time counts from then.
    left: Option<Instant>,
}

impl Holder {
    /// What an entry naming the id gets: an entry that names it may still
    /// be an earlier holder's, until its next packet rewrites the hint.
    fn timeouts(&self) -> Timeouts {
        self.before.map_or(self.own, |b| b.timeouts.max(self.own))
    }
}

/// What the sweeper needs of a plan: the timeouts of each listener's group
/// (an entry names the listener it was created under), the time offset, and
/// the retired target ids (`crate::ids`), whose flows are re-selected at
/// their next packet anyway: their entries and sticky sessions are deleted,
/// so that the ids can be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Every listener id of this plan, and those of earlier plans of this
    /// run (a reload can free an id and give it to another listener).
    holders: HashMap<u16, Holder>,
    /// The timeouts an entry naming each id of this plan gets.
    by_listener: HashMap<u16, Timeouts>,
    /// For entries whose listener is gone or was renumbered: the longest
    /// timeouts of any group, so that no entry ends early (the data plane
    /// re-selects such flows anyway, and new flows evict what is left).
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
        let holders: HashMap<u16, Holder> = plan
            .listeners
            .iter()
            .filter_map(|l| {
                let own = *groups.get(&l.info.group_id)?;
                let holder = Holder {
                    key: l.key,
                    own,
                    before: None,
                    left: None,
                };
                Some((l.info.listener_id as u16, holder))
            })
            .collect();
        let by_listener = holders.iter().map(|(&id, h)| (id, h.timeouts())).collect();
        let longest = |f: fn(&Timeouts) -> u64| groups.values().map(f).max();
        let fallback = Timeouts {
            idle_ns: longest(|t| t.idle_ns).unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT_S as u64 * NS_PER_S),
            fin_ns: longest(|t| t.fin_ns).unwrap_or(DEFAULT_FIN_TIMEOUT_S as u64 * NS_PER_S),
        };
        Rules {
            holders,
            by_listener,
            fallback,
            time_offset_ns: plan.config.time_offset_ns,
            retired: plan.ids.retired().map(|(_, a)| a.id).collect(),
        }
    }

    /// The rules of `plan`, after `self` (those of the plan before it in
    /// this run): an id that another listener held before keeps, for entries
    /// naming it, the longest timeouts of its holders, so that a flow of
    /// the one before, idle since the reload, is not ended by the new one's
    /// shorter timeout (its entry names the listener it was last seen under
    /// until its next packet), for as long as such an entry may be left
    /// ([`Rules::expire`]). Ids no listener holds now are remembered for
    /// when one does.
    pub fn following(&self, plan: &MapPlan, now: Instant) -> Rules {
        let mut next = Rules::of(plan);
        for (id, holder) in &mut next.holders {
            let Some(was) = self.holders.get(id) else {
                continue;
            };
            holder.before = if was.key == holder.key {
                was.before
            } else {
                // Its own entries may be left until its longest timeout
                // after it left the plan (now, or a reload before); those
                // of holders before it, until their own time.
                let own_until = was.left.unwrap_or(now) + was.own.longest();
                let until = was.before.map_or(own_until, |b| b.until.max(own_until));
                Some(Before {
                    timeouts: was.timeouts(),
                    until,
                })
            };
        }
        for (id, was) in &self.holders {
            next.holders.entry(*id).or_insert(Holder {
                left: was.left.or(Some(now)),
                ..*was
            });
        }
        next.expire(now);
        next
    }

    /// Forgets the timeouts of earlier holders of ids whose time has
    /// passed at `now`, and works out what each id's entries get; true if
    /// that changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        for holder in self.holders.values_mut() {
            holder.before = holder.before.filter(|b| now < b.until);
        }
        let mut changed = false;
        for (id, t) in &mut self.by_listener {
            let wanted = self.holders[id].timeouts();
            changed |= *t != wanted;
            *t = wanted;
        }
        changed
    }

    /// What a sweep does with an entry at data-plane time `now_ns`.
    pub fn fate(&self, entry: &EntryView, now_ns: u64) -> Fate {
        if self.ended(entry, now_ns) {
            Fate::Ended
        } else if self.retired.contains(&entry.word.target_id()) {
            Fate::Orphaned
        } else {
            Fate::Live
        }
    }

    /// Whether `entry`'s flow has ended at data-plane time `now_ns`.
    pub fn ended(&self, entry: &EntryView, now_ns: u64) -> bool {
        let timeouts = self
            .by_listener
            .get(&entry.listener_id)
            .unwrap_or(&self.fallback);
        outlived(
            age_ns(entry.seen, now_ns),
            timeouts.for_flags(entry.word.flags()),
        )
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

/// One sweep's tally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    pub ended: u64,
    /// Target id -> live entries counted in its active flows.
    pub active: BTreeMap<u32, i64>,
    /// Entries naming a retired target.
    pub orphaned: u64,
    /// Target ids that live entries name.
    pub named: BTreeSet<u32>,
}

impl Tally {
    /// Adds one entry; returns what to do with it (the sweeper deletes the
    /// ended and orphaned ones).
    pub fn add(&mut self, rules: &Rules, entry: &EntryView, now_ns: u64) -> Fate {
        self.entries += 1;
        let fate = rules.fate(entry, now_ns);
        match fate {
            Fate::Ended => self.ended += 1,
            Fate::Orphaned => self.orphaned += 1,
            Fate::Live => {
                let id = entry.word.target_id();
                self.named.insert(id);
                if entry.word.flags() & flags::COUNTED != 0 {
                    *self.active.entry(id).or_default() += 1;
                }
            }
        }
        fate
    }
}

/// A count as shown to people: never negative (the data plane and the
/// sweeper add and take out exactly once per flow, but a count read while
/// a flow's -1 lands before its +1 may show -1 for a moment).
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
            ports: Default::default(),
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

    use lb_common::flow_table::{Word, time_units};

    /// An entry of target `target_id` under `listener_id` with `f` flags,
    /// last seen at `last_seen_s`.
    fn entry(target_id: u32, listener_id: u16, f: u8, last_seen_s: u64) -> EntryView {
        EntryView {
            bucket: 0,
            way: 0,
            word: Word::new(1 << 24, target_id, f),
            seen: time_units(last_seen_s * S),
            listener_id,
        }
    }

    #[test]
    fn entries_end_after_their_timeout_by_flags_and_group() {
        let rules = Rules::of(&plan());
        assert_eq!(rules.time_offset_ns, 7);
        let now = 1000 * S;
        // A flow's last packet may be up to the touch interval (about a
        // second) later than its entry's time: an entry two seconds past
        // the timeout is over it, a second short is not.
        let cases = [
            // (listener, flags, last seen, ended)
            (1, flags::COUNTED, 1000 - 349, false),
            (1, flags::COUNTED, 1000 - 352, true),
            (1, flags::FIN, 1000 - 9, false),
            (1, flags::FIN, 1000 - 12, true),
            (1, flags::RST, 1000 - 12, true),
            (2, flags::COUNTED, 1000 - 122, true),
            (2, flags::FIN, 1000 - 2, false),
            (2, flags::FIN | flags::SYN, 1000 - 5, true),
            // Unknown listener: the longest timeouts of any group.
            (9, flags::COUNTED, 1000 - 300, false),
            (9, flags::FIN, 1000 - 9, false),
            (9, flags::FIN, 1000 - 12, true),
        ];
        for (listener, f, seen, want) in cases {
            let e = entry(1, listener, f, seen);
            assert_eq!(rules.ended(&e, now), want, "{listener} {f:#x} {seen}");
        }
        // Half a second past the timeout: within the touch interval.
        let mut e = entry(1, 1, flags::COUNTED, 0);
        e.seen = time_units(now - 350 * S - S / 2);
        assert!(!rules.ended(&e, now));
    }

    /// A reload that frees listener id 1 and gives it to another listener
    /// (of a shorter idle timeout), at once or a reload later: entries that
    /// name it keep the longer timeout, as they may be the earlier
    /// listener's flows, idle since. A listener that keeps its id takes a
    /// lowered timeout at once.
    #[test]
    fn an_id_given_to_another_listener_keeps_the_longer_timeouts() {
        let key = |port: u16| ListenerKey {
            port_be: port.to_be(),
            ..Default::default()
        };
        let with = |listeners: &[(u32, u16, u32)], idle: [u32; 2]| {
            let mut p = plan();
            p.listeners
                .retain(|l| listeners.iter().any(|&(id, ..)| id == l.info.listener_id));
            for l in &mut p.listeners {
                let &(_, port, group) = listeners
                    .iter()
                    .find(|&&(id, ..)| id == l.info.listener_id)
                    .unwrap();
                l.key = key(port);
                l.info.group_id = group;
            }
            for (g, idle) in p.groups.iter_mut().zip(idle) {
                g.info.idle_timeout_s = idle;
            }
            p
        };
        let now = 10_000 * S;
        let idle_for =
            |rules: &Rules, s: u64| rules.ended(&entry(1, 1, flags::COUNTED, 10_000 - s), now);
        let t0 = Instant::now();
        // Listener 1 (port 80, group 1: 3600 s), listener 2 (port 53, group 2: 30 s).
        let first = Rules::of(&with(&[(1, 80, 1), (2, 53, 2)], [3600, 30]));
        assert!(!idle_for(&first, 1000));
        // Port 80 gone; id 1 given to port 54 (group 2).
        let plan_b = with(&[(1, 54, 2), (2, 53, 2)], [3600, 30]);
        assert!(
            idle_for(&Rules::of(&plan_b), 1000),
            "alone, the new timeout"
        );
        let mut b = first.following(&plan_b, t0);
        assert!(!idle_for(&b, 1000), "the earlier listener's flows kept");
        assert!(idle_for(&b, 3700));
        // And on through reloads that keep it, for as long as the earlier
        // listener's entries may be left (its idle timeout): then the new
        // one's own.
        let c = b.following(&plan_b, t0 + Duration::from_secs(60));
        assert!(!idle_for(&c, 1000));
        assert!(!b.expire(t0 + Duration::from_secs(3599)));
        assert!(b.expire(t0 + Duration::from_secs(3601)), "changed");
        assert!(idle_for(&b, 1000), "its own timeout again");
        // Freed, then given a reload later: kept for the earlier
        // listener's time counted from when it left, not from the reload
        // that gives the id.
        let none = with(&[(2, 53, 2)], [3600, 30]);
        let freed = first.following(&none, t0);
        let d = freed.following(&plan_b, t0 + Duration::from_secs(60));
        assert!(!idle_for(&d, 1000), "given a reload after it was freed");
        let late = freed.following(&plan_b, t0 + Duration::from_secs(3601));
        assert!(idle_for(&late, 1000), "given after its flows were gone");
        // The same listener, its timeout lowered: at once.
        let lowered = with(&[(1, 80, 1), (2, 53, 2)], [100, 30]);
        assert!(idle_for(&first.following(&lowered, t0), 1000));
    }

    #[test]
    fn tally_counts_live_counted_entries_per_target() {
        let rules = Rules::of(&plan());
        let now = 1000 * S;
        let mut tally = Tally::default();
        let entries = [
            entry(3, 1, flags::COUNTED | flags::SYN, 999),
            entry(3, 1, flags::COUNTED, 999),
            // Uncounted at its FIN, still lingering.
            entry(3, 1, flags::FIN, 999),
            // Ended: deleted, not counted.
            entry(4, 1, flags::COUNTED, 1),
            entry(5, 2, flags::COUNTED, 999),
        ];
        let fates: Vec<Fate> = entries.iter().map(|e| tally.add(&rules, e, now)).collect();
        use Fate::{Ended, Live};
        assert_eq!(fates, [Live, Live, Live, Ended, Live]);
        assert_eq!((tally.entries, tally.ended), (5, 1));
        assert_eq!(tally.active, BTreeMap::from([(3, 2), (5, 1)]));
        assert_eq!(
            tally.named,
            BTreeSet::from([3, 5]),
            "the ended entry names nothing"
        );
    }

    /// Entries of retired targets are deleted (their next packet would
    /// choose again anyway), so that the ids can be released; the others
    /// name their targets.
    #[test]
    fn entries_of_retired_targets_are_orphans() {
        let mut rules = Rules::of(&plan());
        rules.retired = BTreeSet::from([4]);
        let now = 1000 * S;
        let mut tally = Tally::default();
        assert_eq!(
            tally.add(&rules, &entry(3, 1, flags::COUNTED, 999), now),
            Fate::Live
        );
        assert_eq!(
            tally.add(&rules, &entry(4, 1, flags::COUNTED, 999), now),
            Fate::Orphaned
        );
        assert_eq!(
            tally.add(&rules, &entry(4, 1, flags::COUNTED, 1), now),
            Fate::Ended
        );
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
