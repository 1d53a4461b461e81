//! The status report's types: what `lb status` shows and `lb status --json`
//! prints. The JSON is a stable interface, documented in the README
//! ("Status"): fields are only ever added, and every name and value stays
//! as it is. Enums serialize to the names the policy writes.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

pub use crate::announce::AnnounceStatus;
use crate::{
    failover::Serving,
    health::HealthState,
    plan::Exclusion,
    policy::{
        Affinity, Algorithm, CheckType, FailoverMode, GroupProtocol, HttpMethod, HttpVersion,
        ListenerProtocol, Mac, Ports, StickyType,
    },
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The interface the program is attached to.
    pub interface: String,
    /// `native` or `generic`.
    pub xdp_mode: String,
    /// The policy file being served.
    pub policy: String,
    /// Local addresses health probes come from (allow them in the targets'
    /// firewalls).
    pub probe_sources: Vec<String>,
    /// Global data-plane counters (see `lb_common::Counter`), summed over CPUs.
    pub counters: BTreeMap<String, u64>,
    /// The flow tables.
    #[serde(default)]
    pub flow_table: FlowTableStatus,
    /// The pinned data plane.
    #[serde(default)]
    pub data_plane: DataPlaneStatus,
    /// What is wrong now: a refused reload, maps not written, state not
    /// saved (`null` each when fine).
    #[serde(default)]
    pub errors: ErrorStatus,
    /// The VIPs announced for BGP (`lb run --announce`); null without it.
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
    pub listeners: Vec<ListenerStatus>,
    pub target_groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPlaneStatus {
    /// The bpffs directory of its pinned maps and link.
    pub pin_dir: String,
    /// Whether this `lb` adopted it from an earlier one (else it made it).
    pub adopted: bool,
    /// The runtime state file (health verdicts).
    pub state_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// Why the last reload was refused (the last good policy serves), until
    /// a reload succeeds.
    pub policy: Option<String>,
    /// Why the maps could not be written (retried; the data plane forwards
    /// with what it holds), until a write succeeds.
    pub apply: Option<String>,
    /// Why the runtime state could not be saved, until it is.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// Flows the table is sized for (both address families; it has twice
    /// as many entries), fixed when the data plane is made.
    pub max_flows: u32,
    /// Entries in use at the last sweep (`null` before the first), ended
    /// ones included until the sweep deletes them.
    pub entries: Option<u64>,
    /// How long the last sweep took.
    pub last_sweep_ms: Option<f64>,
    /// Slots of the flow cache that stood in front of the kernel's tables;
    /// always 0 (the flow table has none). Kept for scripts that read it.
    #[serde(default)]
    pub cache_slots: u32,
    /// Buckets of the table (four entries each, one cache line).
    #[serde(default)]
    pub buckets: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub vip: IpAddr,
    pub protocol: ListenerProtocol,
    pub port: Ports,
    pub target_group: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub protocol: GroupProtocol,
    pub algorithm: Algorithm,
    pub affinity: Affinity,
    pub table_size: u32,
    /// The listener it is attached to, if any.
    pub listener: Option<String>,
    /// The health check in effect (defaults applied), `null` when absent.
    pub health_check: Option<HealthCheckStatus>,
    /// `on_unhealthy` of `target_failover`.
    pub on_unhealthy: FailoverMode,
    /// `on_deregistration` of `target_failover`: whether flows still on a
    /// deregistered target move when its delay ends.
    #[serde(default)]
    pub on_deregistration: FailoverMode,
    /// How long a deregistered target keeps its flows (seconds).
    #[serde(default)]
    pub deregistration_delay_s: u32,
    /// Its backup group, `null` when it has none.
    #[serde(default)]
    pub backup: Option<BackupStatus>,
    /// Who takes its new flows now, and why.
    #[serde(default)]
    pub serving: Serving,
    #[serde(default)]
    pub serving_reason: String,
    /// No target of the side serving it is healthy (last resort): those
    /// with a weight above 0 and a known MAC take new flows, unhealthy or
    /// not; none may (`serving_reason` says so): new flows are dropped.
    pub last_resort: bool,
    /// A flow without packets for this long has ended (seconds).
    #[serde(default)]
    pub flow_idle_timeout_s: u32,
    /// A TCP flow ends this long after the client's FIN or RST (seconds).
    #[serde(default)]
    pub flow_fin_timeout_s: u32,
    /// The `sticky_session` setting, `null` when absent.
    #[serde(default)]
    pub sticky_session: Option<StickyStatus>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupStatus {
    pub target_group: String,
    pub failover_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StickyStatus {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: StickyType,
    pub duration_s: u32,
    pub state: Stickiness,
}

/// Whether a group's sticky sessions are in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stickiness {
    #[serde(rename = "on")]
    On,
    /// `enabled: false`.
    #[serde(rename = "off")]
    Off,
    /// The `source_ip` algorithm keeps a client on one target anyway.
    #[serde(rename = "ignored (source_ip algorithm)")]
    Ignored,
}

impl Stickiness {
    pub const ALL: [Stickiness; 3] = [Stickiness::On, Stickiness::Off, Stickiness::Ignored];

    /// Its name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Stickiness::On => "on",
            Stickiness::Off => "off",
            Stickiness::Ignored => "ignored (source_ip algorithm)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub ip: IpAddr,
    /// For a target of the group's backup group (taking the group's flows
    /// when it fails over): that group; `null` for the group's own.
    #[serde(default)]
    pub via: Option<String>,
    pub port: Ports,
    pub weight: u16,
    /// SPEC.md weight ratio: converted weight / sum of converted weights.
    pub ratio: f64,
    /// Slots of the group's consistent-hash table it holds.
    pub slots: u32,
    /// Where health probes go.
    pub monitor_port: u16,
    /// Resolved (or static) MAC, `null` while unresolved.
    pub mac: Option<Mac>,
    pub state: TargetState,
    /// Whether the maps hold what the policy says of it.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Its drain, `null` unless it is leaving.
    #[serde(default)]
    pub drain: Option<DrainStatus>,
    /// Takes new flows now.
    pub selectable: bool,
    /// Why it takes no new flows, `null` when it does.
    pub excluded: Option<Exclusion>,
    /// The latest probes, `null` when unchecked.
    pub health: Option<HealthStatus>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Flows in progress: started and not yet ended by the client's FIN or
    /// RST or by the idle timeout (counted by the data plane, corrected by
    /// the flow sweeper; never negative).
    #[serde(default)]
    pub active_flows: u64,
}

/// A leaving target's drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Drained by `lb drain` (else it left the policy).
    pub by_command: bool,
    /// When it began, and when its delay ends (Unix seconds).
    pub since: u64,
    pub until: u64,
    /// Seconds of its delay left (0 once over).
    pub remaining_s: u64,
}

/// A target's operating state (SPEC.md "Target states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// No verdict yet.
    Initial,
    Healthy,
    Unhealthy,
    /// Health checks disabled: counts as healthy.
    Unchecked,
    /// Deregistered, inside its deregistration delay: its flows go on.
    Draining,
    /// Its group has no listener, or its drain is over.
    Unused,
}

impl TargetState {
    pub const ALL: [TargetState; 6] = [
        TargetState::Initial,
        TargetState::Healthy,
        TargetState::Unhealthy,
        TargetState::Unchecked,
        TargetState::Draining,
        TargetState::Unused,
    ];

    /// Its name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Unchecked => "unchecked",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }
}

/// A target's provisioning state, apart from its operating state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    /// The maps hold what the policy says of it.
    #[default]
    Applied,
    /// The maps do not hold it yet (a write failed and is retried).
    BeingChanged,
    /// It left the policy and drains: the maps keep it for its flows.
    BeingRemoved,
}

impl Provisioning {
    pub const ALL: [Provisioning; 3] = [
        Provisioning::Applied,
        Provisioning::BeingChanged,
        Provisioning::BeingRemoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provisioning::Applied => "applied",
            Provisioning::BeingChanged => "being_changed",
            Provisioning::BeingRemoved => "being_removed",
        }
    }
}

impl From<HealthState> for TargetState {
    fn from(state: HealthState) -> TargetState {
        match state {
            HealthState::Initial => TargetState::Initial,
            HealthState::Healthy => TargetState::Healthy,
            HealthState::Unhealthy => TargetState::Unhealthy,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckStatus {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// The group's monitor port: its `port:`, else the target (listener)
    /// port. A target's own `monitor_port` overrides it (see the target).
    pub port: u16,
    pub interval_s: u32,
    pub timeout_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP(S) only: method, version, path, status codes.
    pub method: Option<HttpMethod>,
    pub version: Option<HttpVersion>,
    pub path: Option<String>,
    pub status_codes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// What the last probe saw (`connected`, `status 500`, `timeout after 1s`...).
    pub last_result: Option<String>,
    pub last_ok: Option<bool>,
    pub last_latency_ms: Option<f64>,
}

/// A report with one of every object and every optional part present, for
/// tests of the rendering and of the JSON's names.
#[cfg(any(test, feature = "testing"))]
pub fn example() -> StatusReport {
    StatusReport {
        interface: "eth0".into(),
        xdp_mode: "native".into(),
        policy: "lb.yaml".into(),
        probe_sources: vec!["10.0.3.2".into()],
        counters: BTreeMap::from([("xdp_tx".into(), 2)]),
        flow_table: FlowTableStatus {
            max_flows: 1024,
            entries: Some(3),
            last_sweep_ms: Some(0.25),
            cache_slots: 0,
            buckets: 512,
        },
        data_plane: DataPlaneStatus {
            pin_dir: "/sys/fs/bpf/lb/eth0".into(),
            adopted: false,
            state_file: "/var/lib/lb/eth0/state.json".into(),
        },
        errors: ErrorStatus::default(),
        announce: None,
        listeners: vec![ListenerStatus {
            name: "web".into(),
            vip: IpAddr::from([10, 0, 0, 1]),
            protocol: ListenerProtocol::Tcp,
            port: crate::policy::Ports::one(80),
            target_group: "web".into(),
            packets: 2,
            bytes: 120,
            new_flows: 1,
        }],
        target_groups: vec![example_group()],
    }
}

#[cfg(any(test, feature = "testing"))]
fn example_group() -> GroupStatus {
    GroupStatus {
        name: "web".into(),
        protocol: GroupProtocol::Tcp,
        algorithm: Algorithm::Hash,
        affinity: Affinity::FiveTuple,
        table_size: 65537,
        listener: Some("web".into()),
        health_check: Some(HealthCheckStatus {
            enabled: true,
            kind: CheckType::Http,
            port: 80,
            interval_s: 2,
            timeout_s: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            method: Some(HttpMethod::Get),
            version: Some(HttpVersion::Http11),
            path: Some("/".into()),
            status_codes: Some("200-399".into()),
        }),
        on_unhealthy: FailoverMode::NoRebalance,
        on_deregistration: FailoverMode::NoRebalance,
        deregistration_delay_s: 300,
        backup: Some(BackupStatus {
            target_group: "spare".into(),
            failover_ratio: 0.5,
        }),
        serving: Serving::Primary,
        serving_reason: "1 of 1 targets healthy, failover ratio 0.5".into(),
        last_resort: false,
        flow_idle_timeout_s: 350,
        flow_fin_timeout_s: 10,
        sticky_session: Some(StickyStatus {
            enabled: true,
            kind: StickyType::SourceIp,
            duration_s: 360,
            state: Stickiness::On,
        }),
        targets: vec![example_target()],
    }
}

#[cfg(any(test, feature = "testing"))]
fn example_target() -> TargetStatus {
    TargetStatus {
        ip: IpAddr::from([10, 0, 3, 11]),
        via: None,
        port: crate::policy::Ports::one(80),
        weight: 256,
        ratio: 1.0,
        slots: 65537,
        monitor_port: 80,
        mac: Some(Mac::new([2, 0, 0, 0, 0, 0x11])),
        state: TargetState::Healthy,
        provisioning: Provisioning::Applied,
        drain: Some(DrainStatus {
            by_command: true,
            since: 1000,
            until: 1300,
            remaining_s: 120,
        }),
        selectable: true,
        excluded: None,
        health: Some(HealthStatus {
            consecutive_successes: 2,
            consecutive_failures: 0,
            last_result: Some("status 200".into()),
            last_ok: Some(true),
            last_latency_ms: Some(0.4),
        }),
        packets: 2,
        bytes: 120,
        new_flows: 1,
        active_flows: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(value: T) -> serde_json::Value {
        serde_json::to_value(value).unwrap()
    }

    /// The values README "Status" documents, which `lb status --json`
    /// printed when the report held them as strings.
    #[test]
    fn enums_serialize_to_the_documented_strings() {
        let states = TargetState::ALL.map(json);
        let exclusions = Exclusion::ALL.map(json);
        let stickiness = Stickiness::ALL.map(json);
        assert_eq!(
            states,
            [
                "initial",
                "healthy",
                "unhealthy",
                "unchecked",
                "draining",
                "unused"
            ]
        );
        assert_eq!(
            Provisioning::ALL.map(json),
            ["applied", "being_changed", "being_removed"]
        );
        assert_eq!(
            Serving::ALL.map(json),
            [
                "primary",
                "primary_below_ratio",
                "backup",
                "primary_last_resort",
                "backup_last_resort",
                "nobody"
            ]
        );
        for p in Provisioning::ALL {
            assert_eq!(json(p), p.as_str());
        }
        for s in Serving::ALL {
            assert_eq!(json(s), s.as_str());
        }
        assert_eq!(
            exclusions,
            [
                "weight_zero",
                "mac_unresolved",
                "unhealthy",
                "draining",
                "unused",
                "failed_over",
                "backup_standby"
            ]
        );
        assert_eq!(stickiness, ["on", "off", "ignored (source_ip algorithm)"]);
        for s in TargetState::ALL {
            assert_eq!(json(s), s.as_str());
        }
        for e in Exclusion::ALL {
            assert_eq!(json(e), e.as_str());
        }
        for s in Stickiness::ALL {
            assert_eq!(json(s), s.as_str());
        }
    }

    #[test]
    fn typed_fields_serialize_as_the_policy_writes_them() {
        let mut report = example();
        report.listeners[0].vip = "fd00::1".parse().unwrap();
        let group = &mut report.target_groups[0];
        group.algorithm = Algorithm::LeastConnections;
        group.affinity = Affinity::ThreeTuple;
        group.on_unhealthy = FailoverMode::Rebalance;
        group.targets[0].excluded = Some(Exclusion::MacUnresolved);
        let json = json(&report);
        let (listener, group) = (&json["listeners"][0], &json["target_groups"][0]);
        let (check, target) = (&group["health_check"], &group["targets"][0]);
        let sticky = &group["sticky_session"];
        let fields = [
            (&listener["vip"], "fd00::1"),
            (&listener["protocol"], "tcp"),
            (&group["protocol"], "tcp"),
            (&group["algorithm"], "least_connections"),
            (&group["affinity"], "three_tuple"),
            (&group["on_unhealthy"], "rebalance"),
            (&check["type"], "http"),
            (&check["method"], "GET"),
            (&check["version"], "1.1"),
            (&sticky["type"], "source_ip"),
            (&sticky["state"], "on"),
            (&target["ip"], "10.0.3.11"),
            (&target["mac"], "02:00:00:00:00:11"),
            (&target["state"], "healthy"),
            (&target["excluded"], "mac_unresolved"),
        ];
        for (value, expected) in fields {
            assert_eq!(value, expected, "{json:#}");
        }
    }

    #[test]
    fn json_round_trips() {
        let mut report = example();
        let group = &mut report.target_groups[0];
        group.sticky_session.as_mut().unwrap().state = Stickiness::Ignored;
        group.targets[0].mac = None;
        group.targets[0].excluded = Some(Exclusion::MacUnresolved);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), report);
        assert!(json.contains(r#""state":"ignored (source_ip algorithm)""#));
    }
}
