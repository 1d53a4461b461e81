//! The map plan: everything the data plane maps should hold, computed purely
//! from a policy and what was observed of the host (`policy::compile`), and
//! written by `dataplane::apply`, the only writer of BPF maps.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{Config, GroupInfo, ListenerInfo, ListenerKey, TargetInfo};

/// A MAC address.
pub type Mac = [u8; 6];

/// What the loader learned of the host; the compiler's only other input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// MAC of the interface `lb` is attached to (source MAC of forwarded frames).
    pub iface_mac: Mac,
    /// Prefixes configured on that interface: targets must be on one of them.
    pub iface_nets: Vec<(IpAddr, u8)>,
    /// Resolved neighbours of that interface (IP -> MAC).
    pub neighbors: BTreeMap<IpAddr, Mac>,
    /// Health verdicts by (target group, target IP), for groups with health
    /// checks enabled. A checked target missing here is `Initial`.
    pub health: BTreeMap<(String, IpAddr), Health>,
}

/// The health verdict of a checked target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// No verdict yet: takes new flows until its first verdict (a restart of
    /// `lb` must not send every new flow to whichever target answers first).
    Initial,
    Healthy,
    Unhealthy,
}

/// A target's health as the plan uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetHealth {
    /// Health checks disabled: counts as healthy.
    Unchecked,
    Checked(Health),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapPlan {
    pub config: Config,
    pub listeners: Vec<PlannedListener>,
    /// Ordered by id; ids start at 1.
    pub groups: Vec<PlannedGroup>,
    /// Ordered by id; ids start at 1 (0 is the reserved "no target").
    pub targets: Vec<PlannedTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedListener {
    pub name: String,
    pub key: ListenerKey,
    pub info: ListenerInfo,
}

/// A group's table, shared: the table cache, each plan compiled from it and
/// the plan the data plane holds as applied all point at one copy (1,000
/// tables of 65537 slots are 262 MB), and comparing two plans' tables is a
/// pointer comparison when they are the same table.
pub type Table = Arc<[u32]>;

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
    pub health: TargetHealth,
    pub excluded: Option<Exclusion>,
    pub info: TargetInfo,
}
