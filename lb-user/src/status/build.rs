//! Builds the status report from the policy, the plan, the data plane's
//! counters and the health monitor's snapshots.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use lb_common::{Counter, TargetInfo};

use super::report::{
    AnnounceStatus, BackupStatus, DataPlaneStatus, DrainStatus, ErrorStatus, FlowTableStatus,
    GroupStatus, HealthCheckStatus, HealthStatus, ListenerStatus, Provisioning, StatusReport,
    Stickiness, StickyStatus, TargetState, TargetStatus,
};
use crate::{
    dataplane::{Dataplane, reader::StatsRead, sweep::SweepReport},
    drains::{Drains, Phase},
    flows,
    health::{self, HealthSnapshot, TargetKey},
    plan::{Exclusion, MapPlan, PlannedGroup, PlannedHealth, PlannedListener, PlannedTarget},
    policy::{self, Mac, Policy},
};

/// Everything a status report is built from.
pub struct Sources<'a> {
    pub policy: &'a Policy,
    pub plan: &'a MapPlan,
    pub dataplane: &'a Dataplane,
    pub max_flows: u32,
    pub sweep: Option<&'a SweepReport>,
    pub health: &'a BTreeMap<TargetKey, HealthSnapshot>,
    /// The targets leaving, and each target's entry as the maps hold it.
    pub drains: &'a Drains,
    pub written: &'a BTreeMap<TargetKey, TargetInfo>,
    pub now_unix: u64,
    pub iface: &'a str,
    pub mode: &'a str,
    pub config: &'a Path,
    pub data_plane: DataPlaneStatus,
    pub errors: ErrorStatus,
    /// The global counters by name, and the listener and target
    /// statistics, read in batches (`dataplane::reader`).
    pub counters: BTreeMap<String, u64>,
    pub stats: &'a StatsRead,
    /// Where health probes come from (cached: `ProbeSources`).
    pub probe_sources: Vec<String>,
    /// Only this target group (`status GROUP`), if given.
    pub only_group: Option<&'a str>,
    /// The VIPs announced (`lb run --announce`).
    pub announce: Option<AnnounceStatus>,
}

/// The status report (`lb status`).
pub fn report(src: &Sources<'_>) -> StatusReport {
    let listeners = src.policy.listeners.iter().zip(&src.plan.listeners);
    StatusReport {
        interface: src.iface.to_string(),
        xdp_mode: src.mode.to_string(),
        policy: src.config.display().to_string(),
        probe_sources: src.probe_sources.clone(),
        counters: src.counters.clone(),
        flow_table: FlowTableStatus {
            max_flows: src.max_flows,
            entries: src.sweep.map(|s| s.entries),
            last_sweep_ms: src.sweep.map(|s| s.took.as_secs_f64() * 1e3),
            cache_slots: 0,
            buckets: src.dataplane.flow_table_layout().0,
        },
        data_plane: src.data_plane.clone(),
        errors: src.errors.clone(),
        announce: src.announce.clone(),
        // With one group, its listener only: the others' counters are
        // not read (`stats_of`).
        listeners: listeners
            .filter(|(l, _)| src.only_group.is_none_or(|only| only == l.target_group))
            .map(|(l, p)| listener(l, p, src.stats))
            .collect(),
        target_groups: src
            .policy
            .target_groups
            .iter()
            .filter(|g| src.only_group.is_none_or(|only| only == g.name))
            .map(|g| group(src, g))
            .collect(),
    }
}

/// The global counters by name, from a read of them (none if it failed).
pub fn counter_names(read: Option<[u64; Counter::COUNT as usize]>) -> BTreeMap<String, u64> {
    read.map(|values| {
        Counter::ALL
            .iter()
            .map(|&c| (c.name().to_string(), values[c as usize]))
            .collect()
    })
    .unwrap_or_default()
}

fn listener(l: &policy::Listener, p: &PlannedListener, stats: &StatsRead) -> ListenerStatus {
    let stats = stats.listener(p.info.listener_id);
    ListenerStatus {
        name: l.name.clone(),
        vip: l.vip,
        protocol: l.protocol,
        port: l.port,
        target_group: l.target_group.clone(),
        packets: stats.packets,
        bytes: stats.bytes,
        new_flows: stats.new_flows,
    }
}

fn group(src: &Sources<'_>, g: &policy::TargetGroup) -> GroupStatus {
    let attached = src.policy.listener_of(&g.name);
    let targets = src.plan.targets.iter().filter(|t| t.group == g.name);
    let planned = src.plan.groups.iter().find(|p| p.name == g.name);
    GroupStatus {
        name: g.name.clone(),
        protocol: g.protocol,
        algorithm: g.algorithm,
        affinity: g.affinity,
        table_size: g.table_size,
        listener: attached.map(|l| l.name.clone()),
        health_check: g
            .health_check
            .as_ref()
            .map(|h| health_check(g, h, src.policy.traffic_listener_of(&g.name))),
        on_unhealthy: g.target_failover.on_unhealthy,
        on_deregistration: g.target_failover.on_deregistration,
        deregistration_delay_s: g.deregistration_delay_s(),
        backup: g.backup.as_ref().map(|b| BackupStatus {
            target_group: b.clone(),
            failover_ratio: g.failover_ratio.unwrap_or(0.0),
        }),
        serving: planned.map(|p| p.serving).unwrap_or_default(),
        serving_reason: planned.map(serving_reason).unwrap_or_default(),
        flow_idle_timeout_s: g.idle_timeout_s(),
        flow_fin_timeout_s: g.fin_timeout_s(),
        last_resort: planned.is_some_and(|p| p.last_resort),
        sticky_session: sticky_status(g),
        targets: targets
            .map(|t| target(src, t, attached.is_some()))
            .collect(),
    }
}

/// Why a group's new flows go where they go.
fn serving_reason(p: &PlannedGroup) -> String {
    let backup = p.backup.as_ref().map(|(_, side, ratio)| (*side, *ratio));
    p.serving.reason(p.primary, backup)
}

/// A target of the plan; `attached`: its group has a listener.
fn target(src: &Sources<'_>, t: &PlannedTarget, attached: bool) -> TargetStatus {
    let stats = src.stats.target(t.id);
    let key = t.key();
    // A backup's target is probed as its own group's.
    let snapshot = src.health.get(&key.own());
    let drain = src.drains.get(&key);
    TargetStatus {
        ip: t.ip,
        via: t.via.clone(),
        provisioning: match drain {
            Some(d) if !d.by_command => Provisioning::BeingRemoved,
            _ if src.written.get(&key) != Some(&t.info) => Provisioning::BeingChanged,
            _ => Provisioning::Applied,
        },
        drain: drain.map(|d| DrainStatus {
            by_command: d.by_command,
            since: d.since,
            until: d.until,
            remaining_s: d.until.saturating_sub(src.now_unix),
        }),
        port: t.port,
        monitor_port: t.monitor_port,
        selectable: attached && t.excluded.is_none(),
        // A group attached to no listener takes no flow of its own.
        excluded: t.excluded.or((!attached).then_some(Exclusion::Unused)),
        health: snapshot.map(health),
        weight: t.weight,
        ratio: t.ratio,
        slots: t.slots,
        mac: known_mac(t),
        state: target_state(t, attached),
        packets: stats.packets,
        bytes: stats.bytes,
        new_flows: stats.new_flows,
        active_flows: flows::shown(src.dataplane.active_flows(t.id)),
    }
}

/// A target's MAC, if known. Its entry holds zeros for one whose MAC is
/// not, whatever else excludes it (draining, unused): the policy refuses a
/// zero `mac:` and the neighbour watch never reports one.
fn known_mac(t: &PlannedTarget) -> Option<Mac> {
    Some(Mac::new(t.info.mac)).filter(|m| !m.is_zero())
}

/// A planned target's operating state; `attached`: its group has a
/// listener.
pub fn target_state(t: &PlannedTarget, attached: bool) -> TargetState {
    match (attached, t.phase, t.health) {
        (_, Some(Phase::Draining { .. }), _) => TargetState::Draining,
        (false, ..) | (_, Some(Phase::Unused { .. }), _) => TargetState::Unused,
        (true, None, PlannedHealth::Unchecked) => TargetState::Unchecked,
        (true, None, PlannedHealth::Checked(state)) => state.into(),
    }
}

/// The latest probes of a checked target.
fn health(h: &HealthSnapshot) -> HealthStatus {
    HealthStatus {
        consecutive_successes: h.consecutive_successes,
        consecutive_failures: h.consecutive_failures,
        last_result: h.last_result.clone(),
        last_ok: h.last_ok,
        last_latency_ms: h.last_latency.map(|d| d.as_secs_f64() * 1e3),
    }
}

/// A group's health check with its defaults applied; `listener`: the one
/// whose traffic its targets receive (`Policy::traffic_listener_of`), whose
/// port it probes when it names none.
fn health_check(
    g: &policy::TargetGroup,
    h: &policy::HealthCheck,
    listener: Option<&policy::Listener>,
) -> HealthCheckStatus {
    let kind = h.kind_for(g.protocol);
    let http = kind.is_http();
    HealthCheckStatus {
        enabled: h.enabled,
        kind,
        port: h
            .port
            .or(listener.and_then(|l| l.port.single()))
            .unwrap_or(0),
        interval_s: h.interval_s,
        timeout_s: h.timeout_s,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        method: http.then(|| h.method()),
        version: http.then(|| h.version()),
        path: http.then(|| h.path().to_string()),
        status_codes: http.then(|| h.status_codes().to_string()),
    }
}

/// A group's `sticky_session` as status shows it.
fn sticky_status(group: &policy::TargetGroup) -> Option<StickyStatus> {
    group.sticky_session.map(|s| StickyStatus {
        enabled: s.enabled,
        kind: s.kind,
        duration_s: s.duration_s,
        state: if !s.enabled {
            Stickiness::Off
        } else if group.sticky_ignored() {
            Stickiness::Ignored
        } else {
            Stickiness::On
        },
    })
}

/// The local addresses health probes leave from, one per address family
/// used by checked targets, found once per target address (a UDP socket
/// connected to each, which sends nothing) and kept while the address is
/// in the policy: a status request costs no socket.
#[derive(Debug, Default)]
pub struct ProbeSources {
    by_target: BTreeMap<IpAddr, Option<IpAddr>>,
    sources: Vec<String>,
}

impl ProbeSources {
    /// The sources of `policy`'s checked targets.
    pub fn of(policy: &Policy) -> ProbeSources {
        let mut sources = ProbeSources::default();
        sources.follow(policy);
        sources
    }

    /// Follows `policy`: finds the sources of its new checked targets'
    /// addresses and forgets those it no longer has.
    pub fn follow(&mut self, policy: &Policy) {
        let checked: BTreeSet<IpAddr> = policy
            .target_groups
            .iter()
            .filter(|g| g.health_check.as_ref().is_some_and(|h| h.enabled))
            .flat_map(|g| g.targets.iter().map(|t| t.ip))
            .collect();
        self.by_target.retain(|ip, _| checked.contains(ip));
        for ip in checked {
            self.by_target
                .entry(ip)
                .or_insert_with(|| health::probe_source(ip));
        }
        let sources: BTreeSet<String> = self
            .by_target
            .values()
            .flatten()
            .map(|ip| ip.to_string())
            .collect();
        self.sources = sources.into_iter().collect();
    }

    pub fn list(&self) -> &[String] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan::Observed, policy::compile::compile};

    /// A target leaving whose MAC is unknown shows no MAC (its exclusion is
    /// `draining`, not `mac_unresolved`), one with its MAC shows it.
    #[test]
    fn a_target_whose_mac_is_unknown_shows_none_whatever_excludes_it() {
        let policy = policy::parse(
            "t.yaml",
            "listeners:\n\
             - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }\n\
             target_groups:\n\
             - { name: web, protocol: tcp, targets: [{ ip: 10.0.3.11 }, { ip: 10.0.3.12 }] }\n",
        )
        .unwrap();
        let mut drains = Drains::default();
        for t in ["10.0.3.11", "10.0.3.12"] {
            drains
                .drain(&policy, "web", t.parse().unwrap(), 1000)
                .unwrap();
        }
        let observed = Observed {
            iface_mac: [2, 0, 0, 0, 0, 2],
            iface_nets: vec![("10.0.3.0".parse().unwrap(), 24)],
            neighbors: [("10.0.3.12".parse().unwrap(), [2, 0, 0, 0, 0, 0x12])].into(),
            drains,
            now_unix: 1001,
            ..Observed::default()
        };
        let plan = compile(&policy, &observed).unwrap();
        let shown: Vec<(Option<Exclusion>, Option<String>)> = plan
            .targets
            .iter()
            .map(|t| (t.excluded, known_mac(t).map(|m| m.to_string())))
            .collect();
        assert_eq!(
            shown,
            [
                (Some(Exclusion::Draining), None),
                (Some(Exclusion::Draining), Some("02:00:00:00:00:12".into())),
            ]
        );
    }

    #[test]
    fn sticky_sessions_are_ignored_with_source_ip() {
        let groups = policy::parse(
            "t.yaml",
            "target_groups:\n\
             - { name: a, protocol: tcp, algorithm: source_ip, sticky_session: {} }\n\
             - { name: b, protocol: udp, algorithm: round_robin, sticky_session: { duration_s: 5 } }\n\
             - { name: c, protocol: tcp, sticky_session: { enabled: false } }\n\
             - { name: d, protocol: tcp }\n",
        )
        .unwrap()
        .target_groups;
        let states: Vec<Option<(Stickiness, policy::StickyType, u32)>> = groups
            .iter()
            .map(|g| sticky_status(g).map(|s| (s.state, s.kind, s.duration_s)))
            .collect();
        let some = |state, duration| Some((state, policy::StickyType::SourceIp, duration));
        assert_eq!(
            states,
            [
                some(Stickiness::Ignored, 360),
                some(Stickiness::On, 5),
                some(Stickiness::Off, 360),
                None
            ]
        );
    }
}
