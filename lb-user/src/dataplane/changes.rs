//! What an apply must write: the difference between what the maps hold and
//! a new plan, as a list of writes in a safe order. Pure (no kernel), so
//! the difference is unit-tested; `Dataplane::apply` carries it out.
//!
//! The order never lets a packet see a half-built state:
//! 1. records of new ids (`TARGET_IDS`, `GROUP_NAMES`), before anything
//!    names them, so a loader that adopts the maps after a crash at any
//!    point knows every id they hold;
//! 2. targets, then group settings and complete new tables (a table slot
//!    may only name a written target);
//! 3. listeners: the port filter widened, port ranges by id, slots by id,
//!    then the listener keys added or changed, removed, the port-range
//!    prefixes added, removed, the filter narrowed;
//! 4. what left: targets' entries zeroed (their flows are chosen again),
//!    groups' tables and settings, listeners' statistics; then ids released
//!    by the registry (their records freed and statistics zeroed, so the
//!    next object to take the id starts from nothing).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    GroupInfo, GroupName, ListenerFilter, ListenerInfo, ListenerKey, ListenerPorts, ListenerSlot,
    MAX_GROUPS, MAX_TARGETS, PortRangeKey, TargetInfo, TargetRecord, port_prefixes, record_state,
};

use crate::{
    ids::Ids,
    plan::{GroupTable, MapPlan},
    policy::compile::{addr_words, family_of},
};

/// What the maps hold, as far as the loader knows it.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// The records (`TARGET_IDS`, `GROUP_NAMES`) as ids.
    pub ids: Ids,
    pub listeners: HashMap<ListenerKey, ListenerInfo>,
    /// The port range of each listener of one (`LISTENER_PORTS`), by id.
    pub ports: HashMap<u32, ListenerPorts>,
    /// Target entries by id; None when unknown (after adopting maps or a
    /// failed apply): every target is written and every other id zeroed.
    pub targets: Option<HashMap<u32, TargetInfo>>,
    /// Group settings and tables by id; None when unknown: every group is
    /// written and every other group id cleared.
    pub groups: Option<HashMap<u32, (GroupInfo, GroupTable)>>,
}

impl Held {
    /// Fresh maps: nothing in them.
    pub fn empty() -> Held {
        Held {
            targets: Some(HashMap::new()),
            groups: Some(HashMap::new()),
            ..Held::default()
        }
    }

    /// What the maps hold after `plan` was applied.
    pub fn of(plan: &MapPlan) -> Held {
        Held {
            ids: (*plan.ids).clone(),
            listeners: plan.listeners.iter().map(|l| (l.key, l.info)).collect(),
            ports: ranges(plan),
            targets: Some(plan.targets.iter().map(|t| (t.id, t.info)).collect()),
            groups: Some(
                plan.groups
                    .iter()
                    .map(|g| (g.id, (g.info, g.table.clone())))
                    .collect(),
            ),
        }
    }
}

/// The writes that make the maps hold a plan, in the order of the module
/// documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub group_names: Vec<(u32, GroupName)>,
    pub target_records: Vec<(u32, TargetRecord)>,
    pub targets: Vec<(u32, TargetInfo)>,
    pub group_infos: Vec<(u32, GroupInfo)>,
    pub tables: Vec<(u32, GroupTable)>,
    /// The listener filter while old and new listeners may both be in the map.
    pub filter_during: Option<ListenerFilter>,
    /// `LISTENER_PORTS` by id: the ranges of new or changed listeners, and
    /// zeros where a listener of one port takes an id a range had.
    pub listener_ports: Vec<(u32, ListenerPorts)>,
    pub listener_slots: Vec<(u32, ListenerSlot)>,
    pub listeners_written: Vec<(ListenerKey, ListenerInfo)>,
    pub listeners_removed: Vec<ListenerKey>,
    /// Every prefix `PORT_RANGES` is to hold ([`range_prefixes`]), when
    /// they change (or are unknown): the map is made to hold exactly these.
    pub port_ranges: Option<Vec<(PortPrefix, ListenerInfo)>>,
    /// The listener filter of the new listeners alone.
    pub filter_after: Option<ListenerFilter>,
    /// Every (VIP, protocol, port 0) key of `FRAGMENT_LISTENERS` and its
    /// listener ([`fragment_listeners`]), when they change (or are
    /// unknown): the map is made to hold exactly these.
    pub fragment_listeners: Option<Vec<(ListenerKey, ListenerInfo)>>,
    /// Listener ids no listener has any more: slot cleared.
    pub listener_ids_gone: Vec<u32>,
    /// Listener ids whose statistics start again: gone, or now another
    /// listener's.
    pub listener_stats_reset: Vec<u32>,
    /// Target ids no target of the plan has: entries zeroed.
    pub targets_gone: Vec<u32>,
    /// Group ids no group of the plan has: table removed, settings cleared.
    pub groups_gone: Vec<u32>,
    /// Target ids released by the registry: records freed, statistics
    /// zeroed.
    pub targets_released: Vec<u32>,
    /// Target ids the maps hold for one target and the plan gives to
    /// another: released and taken again before a write carried the
    /// release (it failed). Statistics and active flows zeroed before the
    /// new record is written, as a release would have.
    pub targets_reassigned: Vec<u32>,
    /// Group ids released by the registry: names freed, round-robin
    /// positions zeroed.
    pub groups_released: Vec<u32>,
}

/// Whether two records name the same target (whatever its state: active or
/// retired).
fn same_target(a: &TargetRecord, b: &TargetRecord) -> bool {
    (a.addr_be, a.group_id, a.family, a.via_group) == (b.addr_be, b.group_id, b.family, b.via_group)
}

impl Changes {
    /// The writes that take the maps from `held` to `plan`.
    pub fn between(held: &Held, plan: &MapPlan) -> Changes {
        let mut changes = Changes::default();
        changes.records(&held.ids, &plan.ids);
        changes.targets(held, plan);
        changes.groups(held, plan);
        changes.listeners(held, plan);
        changes
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    fn records(&mut self, old: &Ids, new: &Ids) {
        let old_groups: BTreeMap<u32, &str> = old.groups().map(|(n, id)| (id, n)).collect();
        let new_groups: BTreeMap<u32, &str> = new.groups().map(|(n, id)| (id, n)).collect();
        for (&id, name) in &new_groups {
            if old_groups.get(&id) != Some(name) {
                // Names are validated to fit (SPEC.md: 1-63 characters).
                let record = GroupName::new(name).unwrap_or(GroupName::FREE);
                self.group_names.push((id, record));
            }
        }
        let record_of = |ids: &Ids| -> BTreeMap<u32, TargetRecord> {
            ids.targets()
                .map(|(key, a)| {
                    let record = TargetRecord {
                        addr_be: addr_words(key.ip),
                        group_id: ids.group(&key.group).unwrap_or(0),
                        family: family_of(key.ip),
                        state: if a.retired.is_some() {
                            record_state::RETIRED
                        } else {
                            record_state::ACTIVE
                        },
                        via_group: key.via.as_deref().and_then(|b| ids.group(b)).unwrap_or(0)
                            as u16,
                    };
                    (a.id, record)
                })
                .collect()
        };
        let (old_records, new_records) = (record_of(old), record_of(new));
        for (&id, record) in &new_records {
            let held = old_records.get(&id);
            if held != Some(record) {
                self.target_records.push((id, *record));
            }
            if held.is_some_and(|h| !same_target(h, record)) {
                self.targets_reassigned.push(id);
            }
        }
        self.targets_released = old_records
            .keys()
            .filter(|id| !new_records.contains_key(id))
            .copied()
            .collect();
        self.groups_released = old_groups
            .keys()
            .filter(|id| !new_groups.contains_key(id))
            .copied()
            .collect();
    }

    fn targets(&mut self, held: &Held, plan: &MapPlan) {
        let new: BTreeMap<u32, TargetInfo> = plan.targets.iter().map(|t| (t.id, t.info)).collect();
        self.targets = new
            .iter()
            .filter(|(id, info)| {
                held.targets
                    .as_ref()
                    .is_none_or(|old| old.get(id) != Some(info))
            })
            .map(|(&id, &info)| (id, info))
            .collect();
        self.targets_gone = match &held.targets {
            Some(old) => {
                let mut gone: Vec<u32> = old
                    .keys()
                    .filter(|id| !new.contains_key(id))
                    .copied()
                    .collect();
                gone.sort_unstable();
                gone
            }
            None => (1..MAX_TARGETS)
                .filter(|id| !new.contains_key(id))
                .collect(),
        };
    }

    fn groups(&mut self, held: &Held, plan: &MapPlan) {
        let old = held.groups.as_ref();
        for g in &plan.groups {
            let same = old.and_then(|o| o.get(&g.id));
            if same.map(|(info, _)| *info) != Some(g.info) {
                self.group_infos.push((g.id, g.info));
            }
            if same.map(|(_, table)| table) != Some(&g.table) {
                self.tables.push((g.id, g.table.clone()));
            }
        }
        let ids: BTreeSet<u32> = plan.groups.iter().map(|g| g.id).collect();
        self.groups_gone = match old {
            Some(old) => {
                let mut gone: Vec<u32> =
                    old.keys().filter(|id| !ids.contains(id)).copied().collect();
                gone.sort_unstable();
                gone
            }
            None => (1..MAX_GROUPS).filter(|id| !ids.contains(id)).collect(),
        };
    }

    fn listeners(&mut self, held: &Held, plan: &MapPlan) {
        let new: HashMap<ListenerKey, ListenerInfo> =
            plan.listeners.iter().map(|l| (l.key, l.info)).collect();
        let new_ports = ranges(plan);
        let old = &held.listeners;
        let old_ports = &held.ports;
        let old_filter = filter(old, old_ports);
        let new_filter = filter(&new, &new_ports);
        let mut both = old_filter;
        for (word, new) in both.words.iter_mut().zip(new_filter.words) {
            *word |= new;
        }
        // When the targets are unknown the filter is too: write it.
        let unknown = held.targets.is_none();
        if unknown || both != old_filter {
            self.filter_during = Some(both);
        }
        self.port_ranges(held, &new, &new_ports, unknown);
        let old_slots = slots(old);
        let new_slots = slots(&new);
        self.listener_slots = sorted(
            new_slots
                .iter()
                .filter(|(id, slot)| unknown || old_slots.get(id) != Some(slot))
                .map(|(&id, &slot)| (id, slot)),
        );
        self.listeners_written = new
            .iter()
            .filter(|(key, info)| old.get(key) != Some(info))
            .map(|(&k, &i)| (k, i))
            .collect();
        self.listeners_written
            .sort_unstable_by_key(|(_, info)| info.listener_id);
        self.listeners_removed = old
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect();
        self.listeners_removed
            .sort_unstable_by_key(|k| old[k].listener_id);
        if new_filter != both || (unknown && self.filter_during != Some(new_filter)) {
            self.filter_after = Some(new_filter);
        }
        let fragments = fragment_listeners(&new);
        if unknown || fragment_listeners(old) != fragments {
            self.fragment_listeners = Some(fragments);
        }
        self.listener_ids(&old_slots, &new_slots, unknown);
    }

    /// The listener ids gone, and those whose statistics start again.
    fn listener_ids(
        &mut self,
        old_slots: &HashMap<u32, ListenerSlot>,
        new_slots: &HashMap<u32, ListenerSlot>,
        unknown: bool,
    ) {
        let mut gone: BTreeSet<u32> = old_slots
            .keys()
            .filter(|id| !new_slots.contains_key(id))
            .copied()
            .collect();
        if unknown {
            gone.extend((1..lb_common::MAX_LISTENERS).filter(|id| !new_slots.contains_key(id)));
        }
        let mut reset = gone.clone();
        reset.extend(
            new_slots
                .iter()
                .filter(|(id, slot)| old_slots.get(id).is_none_or(|o| o.key != slot.key))
                .map(|(id, _)| *id),
        );
        self.listener_ids_gone = gone.into_iter().collect();
        self.listener_stats_reset = reset.into_iter().collect();
    }
}

fn sorted<T: Ord + Copy, V>(items: impl Iterator<Item = (T, V)>) -> Vec<(T, V)> {
    let mut v: Vec<(T, V)> = items.collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

impl Changes {
    /// `LISTENER_PORTS` and `PORT_RANGES` for `new` listeners with
    /// `new_ports`.
    fn port_ranges(
        &mut self,
        held: &Held,
        new: &HashMap<ListenerKey, ListenerInfo>,
        new_ports: &HashMap<u32, ListenerPorts>,
        unknown: bool,
    ) {
        let old_ports = &held.ports;
        self.listener_ports = sorted(
            new.values()
                .map(|info| info.listener_id)
                .map(|id| (id, new_ports.get(&id).copied().unwrap_or_default()))
                .filter(|(id, ports)| {
                    unknown || old_ports.get(id).copied().unwrap_or_default() != *ports
                }),
        );
        // The prefixes follow from the listeners of a range: compared as
        // those, they are derived only when they change.
        if unknown || ranged(&held.listeners, old_ports) != ranged(new, new_ports) {
            self.port_ranges = Some(range_prefixes(new, new_ports));
        }
    }
}

/// Listener id -> port range, for the listeners of `plan` that have one.
fn ranges(plan: &MapPlan) -> HashMap<u32, ListenerPorts> {
    plan.listeners
        .iter()
        .filter(|l| l.ports != ListenerPorts::default())
        .map(|l| (l.info.listener_id, l.ports))
        .collect()
}

/// The listeners of `listeners` that have a range in `ports`, with it, by
/// id.
fn ranged(
    listeners: &HashMap<ListenerKey, ListenerInfo>,
    ports: &HashMap<u32, ListenerPorts>,
) -> BTreeMap<u32, (ListenerKey, ListenerInfo, ListenerPorts)> {
    listeners
        .iter()
        .filter_map(|(key, info)| {
            let range = ports.get(&info.listener_id)?;
            Some((info.listener_id, (*key, *info, *range)))
        })
        .collect()
}

/// A key of `PORT_RANGES`: its data and prefix length.
pub type PortPrefix = (PortRangeKey, u32);

/// The prefixes of `PORT_RANGES` for `listeners` with `ports` (by id) and
/// their listeners, sorted.
pub fn range_prefixes(
    listeners: &HashMap<ListenerKey, ListenerInfo>,
    ports: &HashMap<u32, ListenerPorts>,
) -> Vec<(PortPrefix, ListenerInfo)> {
    let mut out = Vec::new();
    for (key, info) in listeners {
        let Some(range) = ports.get(&info.listener_id) else {
            continue;
        };
        for (port, bits) in port_prefixes(range.first, range.last) {
            let data = PortRangeKey {
                family: key.family,
                proto: key.proto,
                addr_be: key.addr_be,
                port_be: port.to_be(),
                ..PortRangeKey::default()
            };
            out.push(((data, PortRangeKey::FIXED_BITS + bits), *info));
        }
    }
    out.sort_unstable_by_key(|((data, bits), info)| {
        (info.listener_id, u16::from_be(data.port_be), *bits)
    });
    out
}

/// Listener id -> its slot in `LISTENERS_BY_ID`.
fn slots(listeners: &HashMap<ListenerKey, ListenerInfo>) -> HashMap<u32, ListenerSlot> {
    listeners
        .iter()
        .map(|(key, info)| {
            let slot = ListenerSlot {
                key: *key,
                group_id: info.group_id,
            };
            (info.listener_id, slot)
        })
        .collect()
}

/// The keys of `FRAGMENT_LISTENERS`: for each VIP and protocol with
/// exactly one listener, (VIP, protocol, port 0) and that listener, where
/// a later fragment whose first was not seen goes (it has no port to tell
/// listeners apart). Sorted by listener id.
pub fn fragment_listeners(
    listeners: &HashMap<ListenerKey, ListenerInfo>,
) -> Vec<(ListenerKey, ListenerInfo)> {
    let mut of_vip: HashMap<ListenerKey, Option<ListenerInfo>> = HashMap::new();
    for (key, info) in listeners {
        let vip = ListenerKey { port_be: 0, ..*key };
        of_vip
            .entry(vip)
            .and_modify(|one| *one = None)
            .or_insert(Some(*info));
    }
    let mut out: Vec<(ListenerKey, ListenerInfo)> = of_vip
        .into_iter()
        .filter_map(|(key, one)| one.map(|info| (key, info)))
        .collect();
    out.sort_unstable_by_key(|(_, info)| info.listener_id);
    out
}

/// The listener filter that lets the packets of `listeners` through, and
/// of every port of the (VIP, protocol) of those with a range in `ports`,
/// and knows their VIPs (the fragments the data plane looks up).
pub fn filter(
    listeners: &HashMap<ListenerKey, ListenerInfo>,
    ports: &HashMap<u32, ListenerPorts>,
) -> ListenerFilter {
    let mut filter = ListenerFilter::EMPTY;
    for (key, info) in listeners {
        filter.insert(key);
        filter.insert_vip(key);
        if ports.contains_key(&info.listener_id) {
            filter.insert_ranges(key);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::{ids::TargetKey, plan::Observed, policy};

    fn observed() -> Observed {
        Observed {
            iface_mac: [2, 0, 0, 0, 0, 2],
            iface_nets: vec![("10.0.3.0".parse().unwrap(), 24)],
            neighbors: (11..=40u8)
                .map(|t| (std::net::IpAddr::from([10, 0, 3, t]), [2, 0, 0, 0, 0, t]))
                .collect::<BTreeMap<_, _>>(),
            health: BTreeMap::new(),
            ..Default::default()
        }
    }

    /// `groups`: (name, port, target last octets); each group has a listener
    /// on its port.
    fn policy(groups: &[(&str, u16, &[u8])]) -> policy::Policy {
        let mut yaml = String::from("listeners:\n");
        for (name, port, _) in groups {
            yaml += &format!(
                "  - {{ name: {name}, vip: 10.0.3.49, protocol: tcp, port: {port}, target_group: {name} }}\n"
            );
        }
        yaml += "target_groups:\n";
        for (name, _, targets) in groups {
            yaml += &format!(
                "  - name: {name}\n    protocol: tcp\n    table_size: 1021\n    targets:\n"
            );
            for t in *targets {
                yaml += &format!("      - {{ ip: 10.0.3.{t} }}\n");
            }
        }
        policy::parse("t.yaml", &yaml).unwrap()
    }

    #[test]
    fn fragment_listeners_are_the_vips_with_one_listener_of_a_protocol() {
        let key = |vip: u8, proto, port: u16| ListenerKey {
            addr_be: [u32::from_ne_bytes([10, 0, 3, vip]), 0, 0, 0],
            port_be: port.to_be(),
            proto,
            family: lb_common::FAMILY_V4,
        };
        let info = |id| ListenerInfo {
            listener_id: id,
            group_id: id + 100,
        };
        let (tcp, udp) = (lb_common::PROTO_TCP, lb_common::PROTO_UDP);
        let listeners: HashMap<ListenerKey, ListenerInfo> = [
            // VIP 49: one TCP and one UDP listener; VIP 50: two UDP ones.
            (key(49, tcp, 80), info(1)),
            (key(49, udp, 53), info(2)),
            (key(50, udp, 53), info(3)),
            (key(50, udp, 54), info(4)),
        ]
        .into();
        assert_eq!(
            fragment_listeners(&listeners),
            [(key(49, tcp, 0), info(1)), (key(49, udp, 0), info(2))]
        );
        assert!(fragment_listeners(&HashMap::new()).is_empty());
        // Written when they change, not otherwise.
        let p = policy(&[("web", 80, &[11])]);
        let now = Instant::now();
        let first = plan(&p, &Ids::default(), now);
        let changes = Changes::between(&Held::empty(), &first);
        assert_eq!(changes.fragment_listeners.as_ref().map(Vec::len), Some(1));
        let held = Held {
            listeners: first.listeners.iter().map(|l| (l.key, l.info)).collect(),
            ..Held::empty()
        };
        let again = plan(&p, &first.ids, now);
        assert_eq!(Changes::between(&held, &again).fragment_listeners, None);
        let two = policy(&[("web", 80, &[11]), ("api", 81, &[12])]);
        let both = plan(&two, &first.ids, now);
        assert_eq!(
            Changes::between(&held, &both).fragment_listeners,
            Some(Vec::new()),
            "a second listener on the VIP: no fragment listener"
        );
    }

    /// Compiles `p` with the ids of `previous` (assigned at `now`).
    fn plan(p: &policy::Policy, previous: &Ids, now: Instant) -> MapPlan {
        let ids = std::sync::Arc::new(previous.assign(p, now).unwrap());
        policy::compile::compile_cached(p, &observed(), &ids, &mut Default::default()).unwrap()
    }

    /// A group renamed (`crate::rename`) keeps its id and its targets'
    /// ids: the maps change only its name record.
    #[test]
    fn a_renamed_group_rewrites_only_its_name() {
        let now = Instant::now();
        let before = plan(
            &policy(&[("web", 80, &[11, 12]), ("api", 81, &[21])]),
            &Ids::default(),
            now,
        );
        let renames = crate::rename::Renames::parse(&["web=www"]).unwrap();
        let renamed = renames.policy(&policy(&[("web", 80, &[11, 12]), ("api", 81, &[21])]));
        let after = plan(&renamed, &before.ids.renamed(&renames), now);
        let id = before.ids.group("web").unwrap();
        assert_eq!(after.ids.group("www"), Some(id));
        let c = Changes::between(&Held::of(&before), &after);
        let expected = Changes {
            group_names: vec![(id, GroupName::new("www").unwrap())],
            ..Changes::default()
        };
        assert_eq!(c, expected);
        // Without the rename: another group, its targets new and the old
        // ones retired, its table and listener written again.
        let other = plan(&renamed, &before.ids, now);
        let c = Changes::between(&Held::of(&before), &other);
        assert_ne!(other.ids.group("www"), Some(id));
        assert_eq!(c.targets_gone.len(), 2, "{c:?}");
        assert_eq!(c.listeners_written.len(), 1, "{c:?}");
    }

    #[test]
    fn a_port_range_is_written_grown_shrunk_and_taken_back() {
        let now = Instant::now();
        let mut p = policy(&[("rtp", 10000, &[11])]);
        let range = |first, last| policy::Ports { first, last };
        p.listeners[0].port = range(10000, 20000);
        let first = plan(&p, &Ids::default(), now);
        let id = first.listeners[0].info.listener_id;
        let vip = first.listeners[0].key;
        let admits = |f: &ListenerFilter, port: u16| {
            f.admits(vip.family, &vip.addr_be, vip.proto, port.to_be())
        };
        let c = Changes::between(&Held::empty(), &first);
        assert_eq!(c.listeners_written, [(vip, first.listeners[0].info)]);
        assert_eq!(
            u16::from_be(vip.port_be),
            10000,
            "a range's key holds its first port"
        );
        let ports = ListenerPorts {
            first: 10000,
            last: 20000,
        };
        assert_eq!(c.listener_ports, [(id, ports)]);
        let prefixes = c.port_ranges.clone().unwrap();
        assert_eq!(prefixes.len(), port_prefixes(10000, 20000).count());
        assert!(prefixes.iter().all(|(_, info)| info.listener_id == id));
        assert!(admits(c.filter_during.as_ref().unwrap(), 15000));

        // Shrunk: the same listener (key and id), other ports and prefixes.
        let held = Held::of(&first);
        assert!(Changes::between(&held, &first).is_empty());
        p.listeners[0].port = range(10000, 15000);
        let shrunk = plan(&p, &first.ids, now);
        let c = Changes::between(&held, &shrunk);
        assert!(c.listeners_written.is_empty() && c.listeners_removed.is_empty());
        assert_eq!(
            c.listener_ports,
            [(
                id,
                ListenerPorts {
                    last: 15000,
                    ..ports
                }
            )]
        );
        let kept = c.port_ranges.unwrap();
        assert_eq!(kept.len(), port_prefixes(10000, 15000).count());
        assert_ne!(kept, prefixes);

        // One port again: no range, no prefixes, the filter narrowed.
        let held = Held::of(&shrunk);
        p.listeners[0].port = policy::Ports::one(10000);
        let one = plan(&p, &shrunk.ids, now);
        let c = Changes::between(&held, &one);
        assert_eq!(c.listener_ports, [(id, ListenerPorts::default())]);
        assert_eq!(c.port_ranges, Some(vec![]));
        let after = c.filter_after.unwrap();
        assert!(admits(&after, 10000));
        assert!(!admits(&after, 12000));
    }

    fn target_id(plan: &MapPlan, group: &str, last: u8) -> u32 {
        plan.ids
            .target(&TargetKey::new(group, [10, 0, 3, last].into()))
            .unwrap()
            .id
    }

    #[test]
    fn a_first_apply_writes_everything_and_removes_nothing() {
        let now = Instant::now();
        let p = plan(
            &policy(&[("web", 80, &[11, 12]), ("api", 81, &[21])]),
            &Ids::default(),
            now,
        );
        let c = Changes::between(&Held::empty(), &p);
        assert_eq!(c.group_names.len(), 2);
        assert_eq!(c.target_records.len(), 3);
        assert_eq!(c.targets.len(), 3);
        assert_eq!((c.group_infos.len(), c.tables.len()), (2, 2));
        assert_eq!(c.listeners_written.len(), 2);
        assert_eq!(c.listener_slots.len(), 2);
        assert!(c.filter_during.is_some() && c.filter_after.is_none());
        // The filter knows the VIP (its fragments are looked up), and no
        // other address.
        let filter = c.filter_during.as_ref().unwrap();
        let vip = p.listeners[0].key;
        assert!(filter.may_be_vip(vip.family, &vip.addr_be));
        assert!(!filter.may_be_vip(vip.family, &addr_words([10, 0, 3, 2].into())));
        assert!(c.targets_gone.is_empty() && c.groups_gone.is_empty());
        assert!(c.listeners_removed.is_empty() && c.listener_ids_gone.is_empty());
        assert_eq!(c.listener_stats_reset, [1, 2], "fresh ids");
        assert!(c.targets_released.is_empty() && c.groups_released.is_empty());
        // Applied, the same plan again is nothing to do.
        assert!(Changes::between(&Held::of(&p), &p).is_empty());
    }

    #[test]
    fn removing_one_target_touches_only_its_group() {
        let now = Instant::now();
        let before = plan(
            &policy(&[("web", 80, &[11, 12, 13]), ("api", 81, &[21, 22])]),
            &Ids::default(),
            now,
        );
        // The group is moved to the end of the file and loses .12.
        let after = plan(
            &policy(&[("api", 81, &[22, 21]), ("web", 80, &[11, 13])]),
            &before.ids,
            now,
        );
        let c = Changes::between(&Held::of(&before), &after);
        let gone = target_id(&before, "web", 12);
        assert_eq!(c.targets_gone, [gone], "the removed target, nothing else");
        assert_eq!(
            c.target_records,
            [(
                gone,
                TargetRecord {
                    addr_be: addr_words([10, 0, 3, 12].into()),
                    group_id: before.ids.group("web").unwrap(),
                    family: lb_common::FAMILY_V4,
                    state: record_state::RETIRED,
                    via_group: 0,
                }
            )]
        );
        assert!(
            c.targets.is_empty(),
            "the others are unchanged: {:?}",
            c.targets
        );
        let web = after.ids.group("web").unwrap();
        assert_eq!(
            c.tables.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [web]
        );
        assert!(c.listeners_written.is_empty());
        assert!(c.filter_during.is_none() && c.filter_after.is_none());
        assert!(c.targets_released.is_empty(), "retired, not released");

        // Released by a sweep: its record is freed, nothing else changes.
        let mut ids = (*after.ids).clone();
        assert_eq!(
            ids.release(&BTreeSet::new(), now + crate::ids::RELEASE_GRACE),
            [gone]
        );
        let released = MapPlan {
            ids: std::sync::Arc::new(ids),
            ..after.clone()
        };
        let c = Changes::between(&Held::of(&after), &released);
        assert_eq!(c.targets_released, [gone]);
        assert!(c.targets_gone.is_empty() && c.target_records.is_empty() && c.tables.is_empty());
        assert!(c.targets_reassigned.is_empty());

        // The write of the release failed, and a new target takes the
        // id: its statistics start from nothing all the same.
        let again = plan(
            &policy(&[("api", 81, &[22, 21]), ("web", 80, &[11, 13, 14])]),
            &released.ids,
            now,
        );
        assert_eq!(
            target_id(&again, "web", 14),
            gone,
            "the freed id, taken again"
        );
        let c = Changes::between(&Held::of(&after), &again);
        assert_eq!(c.targets_reassigned, [gone]);
        assert!(c.targets_released.is_empty());
        // Written, the same target retiring is no reassignment.
        let c = Changes::between(&Held::of(&before), &after);
        assert!(c.targets_reassigned.is_empty());
    }

    #[test]
    fn listeners_and_groups_that_leave_are_cleared_after_the_rest() {
        let now = Instant::now();
        let before = plan(
            &policy(&[("web", 80, &[11]), ("api", 81, &[21])]),
            &Ids::default(),
            now,
        );
        let after = plan(
            &policy(&[("new", 82, &[31]), ("web", 80, &[11])]),
            &before.ids,
            now,
        );
        let c = Changes::between(&Held::of(&before), &after);
        let (api, new) = (
            before.ids.group("api").unwrap(),
            after.ids.group("new").unwrap(),
        );
        assert_ne!(api, new, "api's id is held by its retired target");
        assert_eq!(c.groups_gone, [api]);
        assert_eq!(c.group_names, [(new, GroupName::new("new").unwrap())]);
        assert_eq!(c.listeners_removed.len(), 1);
        assert_eq!(c.listeners_written.len(), 1);
        assert!(
            c.listener_ids_gone.is_empty(),
            "api's id 2 goes to the new listener"
        );
        assert_eq!(c.listener_stats_reset, [2], "which starts counting from 0");
        assert_eq!(c.listener_slots.len(), 1, "the new listener's slot");
        let during = c
            .filter_during
            .expect("81 and 82 while both may be in the map");
        let key = |port: u16| {
            let mut key = after.listeners[0].key;
            key.port_be = port.to_be();
            key
        };
        assert!(during.has(&key(81)));
        assert!(during.has(&key(82)));
        let after_filter = c.filter_after.expect("81 goes");
        assert!(!after_filter.has(&key(81)));
        assert!(after_filter.has(&key(82)));
    }

    #[test]
    fn unknown_maps_are_written_whole() {
        let now = Instant::now();
        let p = plan(&policy(&[("web", 80, &[11, 12])]), &Ids::default(), now);
        let held = Held {
            ids: (*p.ids).clone(),
            listeners: p.listeners.iter().map(|l| (l.key, l.info)).collect(),
            ports: HashMap::new(),
            targets: None,
            groups: None,
        };
        let c = Changes::between(&held, &p);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets_gone.len(), MAX_TARGETS as usize - 3);
        assert_eq!(c.groups_gone.len(), MAX_GROUPS as usize - 2);
        assert_eq!(
            c.listener_ids_gone.len(),
            lb_common::MAX_LISTENERS as usize - 2
        );
        assert!(
            c.target_records.is_empty(),
            "the records were read, not guessed"
        );
        assert!(c.listeners_written.is_empty());
        assert!(c.filter_during.is_some());
    }
}
