//! The map plan: everything the data plane maps should hold, computed purely
//! from a policy and what was observed of the host (`policy::compile`), and
//! written by `dataplane::apply`, the only writer of BPF maps.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{Config, GroupInfo, ListenerInfo, ListenerKey, ListenerPorts, TargetInfo};
use serde::{Deserialize, Serialize};

pub use crate::group_table::GroupTable;
use crate::{
    drains::{Drains, Flows, Phase},
    failover::{Serving, Side},
    health::HealthState,
    ids::{Ids, TargetKey},
    policy::Ports,
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
    /// Targets leaving (`crate::drains`), and which targets flows still
    /// name (the flow sweeper's last walk).
    pub drains: Drains,
    pub flows: Flows,
    /// The time (Unix seconds) drains are judged at.
    pub now_unix: u64,
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

impl MapPlan {
    /// A plan of nothing, with `ids`: what a daemon holds before its first
    /// plan is compiled.
    pub fn nothing_but(ids: Ids) -> MapPlan {
        MapPlan {
            ids: Arc::new(ids),
            config: Default::default(),
            listeners: Vec::new(),
            groups: Vec::new(),
            targets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedListener {
    pub name: String,
    /// (VIP, protocol, first port).
    pub key: ListenerKey,
    pub info: ListenerInfo,
    /// Its ports as `LISTENER_PORTS` holds them (zeros for one port).
    pub ports: ListenerPorts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedGroup {
    pub id: u32,
    pub name: String,
    pub info: GroupInfo,
    /// The group's table. `hash`, `source_ip` and `least_connections`: the
    /// consistent-hash table, `table.len()` is the group's table size and
    /// every slot holds a target id (0 only when no target can take flows).
    /// `round_robin`: one cycle of the smooth weighted order (empty when no
    /// target can take flows).
    pub table: GroupTable,
    /// No target is healthy, so every target with a known MAC and a weight
    /// takes new flows (SPEC.md failover table: last resort).
    pub last_resort: bool,
    /// Who takes its new flows (SPEC.md "Backup group and failover ratio").
    pub serving: Serving,
    /// Its own registered targets, how many are healthy, and how many
    /// would take new flows in last resort.
    pub primary: Side,
    /// Its backup group: name, its targets as above, the failover ratio.
    pub backup: Option<(String, Side, f64)>,
}

/// Why a target of the policy takes no new flows (named as `lb status`
/// shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Weight 0.
    #[serde(rename = "weight_zero")]
    ZeroWeight,
    /// No `mac:` in the policy and no neighbour entry yet.
    MacUnresolved,
    /// Failed its health checks (and the group is not in last resort).
    Unhealthy,
    /// Leaving, inside its deregistration delay: its flows go on.
    Draining,
    /// Left: its delay is over (or its flows ended).
    Unused,
    /// One of the group's own, while the backup takes the new flows.
    FailedOver,
    /// One of the backup's, while the group takes its own new flows.
    #[serde(rename = "backup_standby")]
    Standby,
}

impl Exclusion {
    pub const ALL: [Exclusion; 7] = [
        Exclusion::ZeroWeight,
        Exclusion::MacUnresolved,
        Exclusion::Unhealthy,
        Exclusion::Draining,
        Exclusion::Unused,
        Exclusion::FailedOver,
        Exclusion::Standby,
    ];

    /// Its name in `lb status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::ZeroWeight => "weight_zero",
            Exclusion::MacUnresolved => "mac_unresolved",
            Exclusion::Unhealthy => "unhealthy",
            Exclusion::Draining => "draining",
            Exclusion::Unused => "unused",
            Exclusion::FailedOver => "failed_over",
            Exclusion::Standby => "backup_standby",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTarget {
    pub id: u32,
    pub group: String,
    pub ip: IpAddr,
    /// For a target of the group's backup group: that group.
    pub via: Option<String>,
    /// Leaving (draining or unused), or None.
    pub phase: Option<Phase>,
    /// The listener's ports (with DSR a target takes them all).
    pub port: Ports,
    /// Weight as written (0-256).
    pub weight: u16,
    /// SPEC.md: ceil(weight / 256 * 100).
    pub converted_weight: u32,
    /// converted weight / sum of converted weights of the group.
    pub ratio: f64,
    /// Slots of the group table that point at this target.
    pub slots: u32,
    /// Where health probes go (`TargetGroup::monitor_port`; 0 when no port
    /// is known).
    pub monitor_port: u16,
    pub health: PlannedHealth,
    pub excluded: Option<Exclusion>,
    pub info: TargetInfo,
}

impl PlannedTarget {
    /// Who it is: its group, address, and the backup it comes from.
    pub fn key(&self) -> TargetKey {
        TargetKey {
            group: self.group.clone(),
            ip: self.ip,
            via: self.via.clone(),
        }
    }
}
