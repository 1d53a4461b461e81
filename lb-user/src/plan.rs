//! The map plan: everything the data plane maps should hold, computed purely
//! from a policy and what was observed of the host (`policy::compile`), and
//! written by `dataplane::apply`, the only writer of BPF maps.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{Config, GroupInfo, ListenerInfo, ListenerKey, TargetInfo};

use crate::{
    health::HealthState,
    ids::{Ids, TargetKey},
};

/// What the loader learned of the host; the compiler's only other input.
/// MACs are bytes, as the kernel gives them and the maps store them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// MAC of the interface `lb` is attached to (source MAC of forwarded frames).
    pub iface_mac: [u8; 6],
    /// Prefixes configured on that interface: targets must be on one of them.
    pub iface_nets: Vec<(IpAddr, u8)>,
    /// Resolved neighbours of that interface (IP -> MAC).
    pub neighbors: BTreeMap<IpAddr, [u8; 6]>,
    /// Health states of the targets of groups with health checks enabled.
    /// A checked target missing here is `Initial`: it takes new flows until
    /// its first verdict (a restart of `lb` must not send every new flow to
    /// whichever target answers first).
    pub health: BTreeMap<TargetKey, HealthState>,
}

/// A target's health as the plan uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlannedHealth {
    /// Health checks disabled: counts as healthy.
    Unchecked,
    Checked(HealthState),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapPlan {
    pub config: Config,
    /// The ids of the policy's objects and of retired targets (the loader
    /// records them in the data plane, `TARGET_IDS` and `GROUP_NAMES`).
    pub ids: Arc<Ids>,
    /// In policy order (ids are stable, not positions: `crate::ids`).
    pub listeners: Vec<PlannedListener>,
    /// In policy order.
    pub groups: Vec<PlannedGroup>,
    /// In policy order, group by group (id 0 is the reserved "no target").
    pub targets: Vec<PlannedTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedListener {
    pub name: String,
    pub key: ListenerKey,
    pub info: ListenerInfo,
}

/// A group's table, kept as the words the data plane reads
/// (`lb_common::table`: 16-bit slots after the members' target ids when
/// that is smaller), so that applying it copies them as they are. Shared:
/// the table cache, each plan compiled from it and the plan the data plane
/// holds as applied all point at one copy (1,000 tables of 65537 slots of
/// 100 targets are 131 MB), and comparing two plans' tables is a pointer
/// comparison when they are the same table.
#[derive(Clone)]
pub struct Table(Arc<[u32]>);

impl Table {
    /// The table whose slot `i` names target `slots[i]`.
    pub fn from_slots(slots: &[u32]) -> Table {
        thread_local! {
            static NUMBERS: std::cell::RefCell<crate::group_table::Numbers> =
                std::cell::RefCell::default();
        }
        NUMBERS.with_borrow_mut(|numbers| Table(crate::group_table::encode(slots, numbers).into()))
    }

    /// The words of its map.
    pub fn words(&self) -> &[u32] {
        &self.0
    }

    /// Its number of slots.
    pub fn len(&self) -> usize {
        self.0[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The target id in slot `i` (`i < len`).
    pub fn get(&self, i: usize) -> u32 {
        let words = self.words();
        lb_common::table::slot(words[1], i as u32, |w| words.get(w as usize).copied())
            .expect("a slot of the table")
    }

    /// The target id of every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// How many slots each target id has (id 0, an empty slot, included),
    /// in one pass over the slots' words.
    pub fn slot_counts(&self) -> Vec<(u32, u32)> {
        let words = self.words();
        let (len, header) = (words[0] as usize, words[1]);
        if header & lb_common::table::WIDE != 0 {
            let mut counts = std::collections::BTreeMap::<u32, u32>::new();
            for &id in &words[lb_common::table::HEADER_WORDS as usize..] {
                *counts.entry(id).or_default() += 1;
            }
            return counts.into_iter().collect();
        }
        // Member number n is word 2 + n; the slots follow the members.
        let numbers = &words[lb_common::table::HEADER_WORDS as usize..];
        let (members, slots) = numbers.split_at(1 + header as usize);
        let mut counts = vec![0u32; members.len()];
        for (i, &pair) in slots.iter().enumerate() {
            counts[(pair & 0xffff) as usize] += 1;
            if 2 * i + 1 < len {
                counts[(pair >> 16) as usize] += 1;
            }
        }
        members
            .iter()
            .zip(counts)
            .filter(|&(_, n)| n > 0)
            .map(|(&id, n)| (id, n))
            .collect()
    }

    /// Whether both are the one shared copy.
    pub fn ptr_eq(a: &Table, b: &Table) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<Vec<u32>> for Table {
    fn from(slots: Vec<u32>) -> Table {
        Table::from_slots(&slots)
    }
}

impl Default for Table {
    /// The empty table.
    fn default() -> Table {
        Table::from_slots(&[])
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        Table::ptr_eq(self, other) || self.0 == other.0
    }
}

impl Eq for Table {}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.len())
            .field("header", &self.0[1])
            .field("words", &self.0.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGroup {
    pub id: u32,
    pub name: String,
    pub info: GroupInfo,
    /// The group's table. `hash`, `source_ip` and `least_connections`: the
    /// consistent-hash table, `table.len()` is the group's table size and
    /// every slot holds a target id (0 only when no target can take flows).
    /// `round_robin`: one cycle of the smooth weighted order (empty when no
    /// target can take flows).
    pub table: Table,
    /// No target is healthy, so every target with a known MAC and a weight
    /// takes new flows (SPEC.md failover table: last resort).
    pub last_resort: bool,
}

/// Why a target of the policy takes no new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// Weight 0.
    ZeroWeight,
    /// No `mac:` in the policy and no neighbour entry yet.
    MacUnresolved,
    /// Failed its health checks (and the group is not in last resort).
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTarget {
    pub id: u32,
    pub group: String,
    pub ip: IpAddr,
    pub port: u16,
    /// Weight as written (0-256).
    pub weight: u16,
    /// SPEC.md: ceil(weight / 256 * 100).
    pub converted_weight: u32,
    /// converted weight / sum of converted weights of the group.
    pub ratio: f64,
    /// Slots of the group table that point at this target.
    pub slots: u32,
    /// Where health probes go: `monitor_port`, else the check's `port`,
    /// else the target port.
    pub monitor_port: u16,
    pub health: PlannedHealth,
    pub excluded: Option<Exclusion>,
    pub info: TargetInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_back_its_slots_and_counts_them() {
        let narrow: Vec<u32> = (0..1021u32).map(|i| 11 + i * 7 % 3).collect();
        let with_empty: Vec<u32> = (0..1021u32).map(|i| [0, 5, 6][(i % 3) as usize]).collect();
        let wide: Vec<u32> = (1..=100).collect();
        for slots in [narrow, with_empty, wide, vec![], vec![9; 7]] {
            let table = Table::from_slots(&slots);
            assert_eq!(table.len(), slots.len());
            assert_eq!(table.to_vec(), slots);
            let mut want = BTreeMap::<u32, u32>::new();
            for &id in &slots {
                *want.entry(id).or_default() += 1;
            }
            let got: BTreeMap<u32, u32> = table.slot_counts().into_iter().collect();
            assert_eq!(got, want, "{table:?}");
        }
        assert_ne!(Table::from_slots(&[1, 2]), Table::from_slots(&[2, 1]));
        assert_eq!(Table::default(), Table::from_slots(&[]));
    }
}
