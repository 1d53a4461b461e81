//! The status report of a running `lb` (`lb status`), built from the policy,
//! the plan, the data plane's counters and the health monitor's snapshots.
use std::{collections::BTreeMap, path::Path};

use crate::{
    api::{
        DataPlaneStatus, ErrorStatus, FlowTableStatus, GroupStatus, HealthCheckStatus,
        HealthStatus, ListenerStatus, StatusReport, StickyStatus, TargetStatus,
    },
    dataplane::{Dataplane, sweep::SweepReport},
    flows,
    health::{self, HealthSnapshot, TargetKey},
    neighbors,
    plan::{Exclusion, MapPlan, PlannedHealth},
    policy::{self, Policy},
};

/// A group's `sticky_session` as status shows it.
fn sticky_status(group: &policy::TargetGroup) -> Option<StickyStatus> {
    group.sticky_session.map(|s| StickyStatus {
        enabled: s.enabled,
        kind: s.kind.as_str().to_string(),
        duration_s: s.duration_s,
        state: match (s.enabled, group.algorithm) {
            (false, _) => "off",
            (true, policy::Algorithm::SourceIp) => "ignored (source_ip algorithm)",
            (true, _) => "on",
        }
        .into(),
    })
}

/// Everything a status report is built from.
pub struct Sources<'a> {
    pub policy: &'a Policy,
    pub plan: &'a MapPlan,
    pub dataplane: &'a Dataplane,
    pub max_flows: u32,
    pub sweep: Option<&'a SweepReport>,
    pub health: &'a BTreeMap<TargetKey, HealthSnapshot>,
    pub iface: &'a str,
    pub mode: &'a str,
    pub config: &'a Path,
    pub data_plane: DataPlaneStatus,
    pub errors: ErrorStatus,
}

/// The status report (`lb status`).
pub fn report(src: &Sources<'_>) -> StatusReport {
    let Sources {
        policy,
        plan,
        dataplane,
        health,
        iface,
        mode,
        config,
        ..
    } = *src;
    let counters = dataplane
        .counters()
        .map(|c| {
            c.into_iter()
                .map(|(k, v)| (k.name().to_string(), v))
                .collect()
        })
        .unwrap_or_default();
    let listeners = policy
        .listeners
        .iter()
        .zip(&plan.listeners)
        .map(|(l, p)| {
            let stats = dataplane
                .listener_stats(p.info.listener_id)
                .unwrap_or_default();
            ListenerStatus {
                name: l.name.clone(),
                vip: l.vip.to_string(),
                protocol: l.protocol.as_str().to_string(),
                port: l.port,
                target_group: l.target_group.clone(),
                packets: stats.packets,
                bytes: stats.bytes,
                new_flows: stats.new_flows,
            }
        })
        .collect();
    let target_groups = policy
        .target_groups
        .iter()
        .map(|g| {
            let attached = policy.listener_of(&g.name);
            let listener = attached.map(|l| l.name.clone());
            let listener_port = attached.map(|l| l.port);
            let targets = plan
                .targets
                .iter()
                .filter(|t| t.group == g.name)
                .map(|t| {
                    let stats = dataplane.target_stats(t.id).unwrap_or_default();
                    let state = match (&listener, t.health) {
                        (None, _) => "unused",
                        (_, PlannedHealth::Unchecked) => "unchecked",
                        (_, PlannedHealth::Checked(state)) => state.as_str(),
                    };
                    let snapshot = health.get(&TargetKey::new(g.name.clone(), t.ip));
                    TargetStatus {
                        ip: t.ip.to_string(),
                        port: t.port,
                        monitor_port: t.monitor_port,
                        selectable: listener.is_some() && t.excluded.is_none(),
                        excluded: t.excluded.map(|e| e.as_str().to_string()),
                        health: snapshot.map(|h| HealthStatus {
                            consecutive_successes: h.consecutive_successes,
                            consecutive_failures: h.consecutive_failures,
                            last_result: h.last_result.clone(),
                            last_ok: h.last_ok,
                            last_latency_ms: h.last_latency.map(|d| d.as_secs_f64() * 1e3),
                        }),
                        weight: t.weight,
                        ratio: t.ratio,
                        slots: t.slots,
                        mac: (t.excluded != Some(Exclusion::MacUnresolved))
                            .then(|| neighbors::fmt_mac(&t.info.mac)),
                        state: state.into(),
                        packets: stats.packets,
                        bytes: stats.bytes,
                        new_flows: stats.new_flows,
                        active_flows: flows::shown(dataplane.active_flows(t.id)),
                    }
                })
                .collect();
            GroupStatus {
                name: g.name.clone(),
                protocol: g.protocol.as_str().to_string(),
                algorithm: g.algorithm.as_str().to_string(),
                affinity: g.affinity.as_str().to_string(),
                table_size: g.table_size,
                listener,
                health_check: g.health_check.as_ref().map(|h| {
                    let kind = h.kind_for(g.protocol);
                    let http = matches!(kind, policy::CheckType::Http | policy::CheckType::Https);
                    HealthCheckStatus {
                        enabled: h.enabled,
                        kind: kind.as_str().to_string(),
                        port: h.port.or(listener_port).unwrap_or(0),
                        interval_s: h.interval_s,
                        timeout_s: h.timeout_s,
                        healthy_threshold: h.healthy_threshold,
                        unhealthy_threshold: h.unhealthy_threshold,
                        method: http.then(|| h.method().as_str().to_string()),
                        version: http.then(|| h.version().as_str().to_string()),
                        path: http.then(|| h.path().to_string()),
                        status_codes: http.then(|| h.status_codes().to_string()),
                    }
                }),
                on_unhealthy: g.target_failover.on_unhealthy.as_str().to_string(),
                flow_idle_timeout_s: g.idle_timeout_s(),
                flow_fin_timeout_s: g.fin_timeout_s(),
                last_resort: plan
                    .groups
                    .iter()
                    .any(|p| p.name == g.name && p.last_resort),
                sticky_session: sticky_status(g),
                targets,
            }
        })
        .collect();
    StatusReport {
        interface: iface.to_string(),
        xdp_mode: mode.to_string(),
        policy: config.display().to_string(),
        probe_sources: probe_sources(policy),
        counters,
        flow_table: FlowTableStatus {
            max_flows: src.max_flows,
            entries: src.sweep.map(|s| s.entries),
            last_sweep_ms: src.sweep.map(|s| s.took.as_secs_f64() * 1e3),
            cache_slots: dataplane.flow_cache_slots(),
        },
        data_plane: src.data_plane.clone(),
        errors: src.errors.clone(),
        listeners,
        target_groups,
    }
}

/// The local addresses health probes leave from, one per address family used
/// by checked targets.
fn probe_sources(policy: &Policy) -> Vec<String> {
    let mut sources: Vec<String> = policy
        .target_groups
        .iter()
        .filter(|g| g.health_check.as_ref().is_some_and(|h| h.enabled))
        .flat_map(|g| g.targets.iter())
        .filter_map(|t| health::probe_source(t.ip))
        .map(|ip| ip.to_string())
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let states: Vec<Option<(String, String, u32)>> = groups
            .iter()
            .map(|g| sticky_status(g).map(|s| (s.state, s.kind, s.duration_s)))
            .collect();
        let some =
            |state: &str, duration| Some((state.to_string(), "source_ip".to_string(), duration));
        assert_eq!(
            states,
            [
                some("ignored (source_ip algorithm)", 360),
                some("on", 5),
                some("off", 360),
                None
            ]
        );
    }
}
