//! `lb run`: load the policy, attach the program, keep the maps in step with
//! the policy (SIGHUP reloads it) and with the targets' MACs, serve the API,
//! detach on SIGINT/SIGTERM.
//!
//! A policy that fails to load at start stops `lb` before anything is
//! attached. A policy that fails on reload is reported and the last good one
//! keeps serving.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::{
    api::{
        self, FlowTableStatus, GroupStatus, HealthCheckStatus, HealthStatus, ListenerStatus,
        StatusReport, StickyStatus, TargetStatus,
    },
    dataplane::{
        AttachMode, Dataplane, LoadOptions,
        sweep::{SweepReport, SweeperHandle},
    },
    flows::{self, Rules},
    health::{self, HealthMonitor, HealthSnapshot, HealthState, TargetKey},
    maglev::TableCache,
    neighbors::{self, InterfaceInfo, NeighborWatch},
    plan::{Exclusion, Health, Mac, MapPlan, Observed, TargetHealth},
    policy::{self, HostFacts, Policy, compile::compile_cached},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub socket: PathBuf,
    /// How long to wait at start for target MACs before attaching anyway.
    pub resolve_wait: Duration,
}

/// Wall-clock time of the steps of a start or a reload, for its log line:
/// `policy:540ms,compile:80ms,apply:50ms` (one token, for `took=`).
struct Phases {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends step `name` (it began where the last one ended).
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}:{}ms", took.as_millis())?;
        }
        Ok(())
    }
}

/// A policy read, checked against the host and ready to compile.
struct Loaded {
    policy: Policy,
}

/// A policy file read and parsed (checked on its own, not yet against the
/// host).
struct Parsed {
    name: String,
    text: String,
    policy: Policy,
}

fn parse_policy(path: &Path) -> anyhow::Result<Parsed> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{name}: cannot read the policy"))?;
    let policy = policy::parse(&name, &text)?;
    Ok(Parsed { name, text, policy })
}

fn check_for_host(parsed: Parsed, iface: &InterfaceInfo) -> anyhow::Result<Loaded> {
    let Parsed {
        name,
        text,
        mut policy,
    } = parsed;
    policy.interface = Some(iface.name.clone());
    policy::validate_for_host(
        &name,
        &text,
        &policy,
        &HostFacts {
            iface_nets: iface.nets.clone(),
        },
    )?;
    Ok(Loaded { policy })
}

fn load_policy(path: &Path, iface: &InterfaceInfo) -> anyhow::Result<Loaded> {
    check_for_host(parse_policy(path)?, iface)
}

/// Targets whose MAC comes from the neighbour table (no static `mac:`).
fn dynamic_targets(policy: &Policy) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter())
        .filter(|t| t.mac.is_none())
        .map(|t| t.ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

type Snapshots = BTreeMap<TargetKey, HealthSnapshot>;
type Verdicts = BTreeMap<(String, IpAddr), Health>;

fn observed(
    iface: &InterfaceInfo,
    neighbors: &BTreeMap<IpAddr, Mac>,
    verdicts: &Verdicts,
) -> Observed {
    Observed {
        iface_mac: iface.mac,
        iface_nets: iface.nets.clone(),
        neighbors: neighbors.clone(),
        health: verdicts.clone(),
    }
}

/// The verdicts the compiler needs, from the monitor's snapshots.
fn verdicts(snapshots: &Snapshots) -> Verdicts {
    snapshots
        .iter()
        .map(|(key, snap)| {
            let health = match snap.state {
                HealthState::Initial => Health::Initial,
                HealthState::Healthy => Health::Healthy,
                HealthState::Unhealthy => Health::Unhealthy,
            };
            ((key.group.clone(), key.ip), health)
        })
        .collect()
}

/// Which interface: `--iface`, else the policy's `interface:`.
fn interface_name(opts: &RunOptions, parsed: &Parsed) -> anyhow::Result<String> {
    if let Some(iface) = &opts.iface {
        return Ok(iface.clone());
    }
    parsed.policy.interface.clone().ok_or_else(|| {
        anyhow!(
            "{}: no interface: give --iface or set `interface:` in the policy",
            parsed.name
        )
    })
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting (or right after
    // `lb ready`) must take the orderly way out, never the default action.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut timer = Phases::start();
    let parsed = parse_policy(&opts.config)?;
    let iface = neighbors::interface(&interface_name(&opts, &parsed)?).await?;
    let Loaded { mut policy } = check_for_host(parsed, &iface)?;
    timer.lap("policy");

    let (watch, mut macs) = NeighborWatch::start(iface.index, dynamic_targets(&policy)).await?;
    wait_for_macs(&mut macs, &dynamic_targets(&policy), opts.resolve_wait).await;
    timer.lap("macs");
    let (mut monitor, mut health) = HealthMonitor::start(&policy);
    let mut verdicts_now = verdicts(&health.borrow_and_update());

    let mut tables = TableCache::default();
    let mut plan = compile_cached(
        &policy,
        &observed(&iface, &macs.borrow(), &verdicts_now),
        &mut tables,
    )?;
    timer.lap("compile");
    // The flow tables are sized once: a reload cannot resize them.
    let max_flows = policy.max_flows();
    let mut dataplane = Dataplane::load(&LoadOptions {
        flow_table_size: max_flows,
        ..Default::default()
    })?;
    timer.lap("load");
    dataplane.apply(&plan)?;
    timer.lap("apply");
    let sweeper = dataplane
        .flow_sweeper()?
        .spawn(Rules::of(&plan), SWEEP_INTERVAL);
    let mut rules = Rules::of(&plan);
    report_exclusions(&plan);
    let mode = dataplane.attach(&iface.name, opts.mode)?;
    let api = api::bind(&opts.socket)
        .with_context(|| format!("cannot serve the API on {}", opts.socket.display()))?;
    timer.lap("attach");

    info!(
        iface = %iface.name,
        mode,
        listeners = plan.listeners.len(),
        targets = plan.targets.len(),
        socket = %opts.socket.display(),
        took = %timer,
        "lb ready"
    );

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                let mut timer = Phases::start();
                let compiled = load_policy(&opts.config, &iface).and_then(|loaded| {
                    timer.lap("policy");
                    let seen = observed(&iface, &macs.borrow(), &verdicts_now);
                    let new_plan = compile_cached(&loaded.policy, &seen, &mut tables)?;
                    timer.lap("compile");
                    Ok((loaded, new_plan))
                });
                match compiled {
                    Ok((loaded, new_plan)) => match dataplane.apply(&new_plan) {
                        Ok(report) => {
                            timer.lap("apply");
                            info!(?report, took = %timer, "policy reloaded");
                            if loaded.policy.max_flows() != max_flows {
                                warn!(
                                    "flow_table.max_flows changed to {} but the flow tables keep {max_flows} entries: restart lb to resize them",
                                    loaded.policy.max_flows()
                                );
                            }
                            watch.set_targets(dynamic_targets(&loaded.policy)).await?;
                            monitor.update(&loaded.policy);
                            policy = loaded.policy;
                            plan = new_plan;
                            update_rules(&sweeper, &mut rules, &plan);
                            report_exclusions(&plan);
                        }
                        Err(err) => {
                            error!(%err, "applying the reloaded policy failed; rewriting the last good one");
                            dataplane.apply(&plan)?;
                        }
                    },
                    Err(err) => error!("policy reload refused, still serving the last good policy:\n{err:#}"),
                }
            }
            changed = macs.changed() => {
                if changed.is_err() {
                    return Err(anyhow!("the neighbour watcher stopped"));
                }
                let seen = observed(&iface, &macs.borrow_and_update(), &verdicts_now);
                let new_plan = compile_cached(&policy, &seen, &mut tables)?;
                if new_plan != plan {
                    log_mac_changes(&plan, &new_plan);
                    dataplane.apply(&new_plan)?;
                    plan = new_plan;
                    update_rules(&sweeper, &mut rules, &plan);
                }
            }
            changed = health.changed() => {
                if changed.is_err() {
                    return Err(anyhow!("the health monitor stopped"));
                }
                // Snapshots change with every probe; the maps only with a verdict.
                let new_verdicts = verdicts(&health.borrow_and_update());
                if new_verdicts != verdicts_now {
                    verdicts_now = new_verdicts;
                    let seen = observed(&iface, &macs.borrow(), &verdicts_now);
                    let new_plan = compile_cached(&policy, &seen, &mut tables)?;
                    if new_plan != plan {
                        log_last_resort(&plan, &new_plan);
                        let report = dataplane.apply(&new_plan)?;
                        debug!(?report, "health verdicts applied");
                        plan = new_plan;
                        update_rules(&sweeper, &mut rules, &plan);
                    }
                }
            }
            accepted = api.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        let flow_table = FlowTable { max_flows, sweep: sweeper.last() };
                        let report = status_report(&policy, &plan, &dataplane, &flow_table, &health.borrow(), &iface.name, mode, &opts.config);
                        let json = serde_json::to_string(&report);
                        tokio::spawn(async move {
                            let answer = move |request: &str| match request {
                                "status" => json.map_err(|e| e.to_string()),
                                other => Err(format!("unknown request {other:?}: try `status`")),
                            };
                            if let Err(err) = api::serve_one(stream, answer).await {
                                warn!(%err, "api client");
                            }
                        });
                    }
                    Err(err) => warn!(%err, "api accept"),
                }
            }
        }
    }
    info!("stopping: detaching from {}", iface.name);
    sweeper.stop();
    drop(dataplane);
    let _ = std::fs::remove_file(&opts.socket);
    monitor.shutdown().await;
    if let Err(err) = watch.shutdown().await {
        warn!(%err, "removing the managed neighbour entries");
    }
    Ok(())
}

/// How often the flow tables are swept (ended entries deleted, active flow
/// counts corrected).
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

fn update_rules(sweeper: &SweeperHandle, rules: &mut Rules, plan: &MapPlan) {
    let new = Rules::of(plan);
    if new != *rules {
        *rules = new.clone();
        sweeper.update(new);
    }
}

/// The flow tables' size and last sweep, for the status report.
struct FlowTable {
    max_flows: u32,
    sweep: Option<SweepReport>,
}

fn log_last_resort(old: &MapPlan, new: &MapPlan) {
    for (o, n) in old.groups.iter().zip(&new.groups) {
        match (o.last_resort, n.last_resort) {
            (false, true) => {
                warn!(group = %n.name, "no healthy target left: last resort, every target takes new flows")
            }
            (true, false) => info!(group = %n.name, "a target is healthy again: last resort over"),
            _ => {}
        }
    }
}

async fn wait_for_macs(
    macs: &mut tokio::sync::watch::Receiver<BTreeMap<IpAddr, Mac>>,
    targets: &[IpAddr],
    wait: Duration,
) {
    let all_known = |m: &BTreeMap<IpAddr, Mac>| targets.iter().all(|ip| m.contains_key(ip));
    let _ = tokio::time::timeout(wait, async {
        while !all_known(&macs.borrow_and_update()) {
            if macs.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

fn report_exclusions(plan: &MapPlan) {
    for t in &plan.targets {
        if t.excluded == Some(Exclusion::MacUnresolved) {
            warn!(group = %t.group, target = %t.ip, "target MAC unresolved: it takes no traffic until it resolves");
        }
    }
}

fn log_mac_changes(old: &MapPlan, new: &MapPlan) {
    for (o, n) in old.targets.iter().zip(&new.targets) {
        if o.info.mac != n.info.mac || o.excluded != n.excluded {
            match n.excluded {
                Some(Exclusion::MacUnresolved) => {
                    warn!(group = %n.group, target = %n.ip, "target MAC lost: target taken out of selection")
                }
                _ => {
                    info!(group = %n.group, target = %n.ip, mac = %neighbors::fmt_mac(&n.info.mac), "target MAC resolved")
                }
            }
        }
    }
}

fn lower<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A group's `sticky_session` as status shows it.
fn sticky_status(group: &policy::TargetGroup) -> Option<StickyStatus> {
    group.sticky_session.map(|s| StickyStatus {
        enabled: s.enabled,
        kind: lower(&s.kind),
        duration_s: s.duration_s,
        state: match (s.enabled, group.algorithm) {
            (false, _) => "off",
            (true, policy::Algorithm::SourceIp) => "ignored (source_ip algorithm)",
            (true, _) => "on",
        }
        .into(),
    })
}

// Each argument is one independent source of the report.
#[allow(clippy::too_many_arguments)]
fn status_report(
    policy: &Policy,
    plan: &MapPlan,
    dataplane: &Dataplane,
    flow_table: &FlowTable,
    health: &Snapshots,
    iface: &str,
    mode: &str,
    config: &Path,
) -> StatusReport {
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
                protocol: lower(&l.protocol),
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
            let listener = policy
                .listeners
                .iter()
                .find(|l| l.target_group == g.name)
                .map(|l| l.name.clone());
            let listener_port = policy
                .listeners
                .iter()
                .find(|l| l.target_group == g.name)
                .map(|l| l.port);
            let targets = plan
                .targets
                .iter()
                .filter(|t| t.group == g.name)
                .map(|t| {
                    let stats = dataplane.target_stats(t.id).unwrap_or_default();
                    let state = match (&listener, t.health) {
                        (None, _) => "unused",
                        (_, TargetHealth::Unchecked) => "unchecked",
                        (_, TargetHealth::Checked(Health::Initial)) => "initial",
                        (_, TargetHealth::Checked(Health::Healthy)) => "healthy",
                        (_, TargetHealth::Checked(Health::Unhealthy)) => "unhealthy",
                    };
                    let snapshot = health.get(&TargetKey {
                        group: g.name.clone(),
                        ip: t.ip,
                    });
                    TargetStatus {
                        ip: t.ip.to_string(),
                        port: t.port,
                        monitor_port: t.monitor_port,
                        selectable: listener.is_some() && t.excluded.is_none(),
                        excluded: t.excluded.map(|e| {
                            match e {
                                Exclusion::MacUnresolved => "mac_unresolved",
                                Exclusion::ZeroWeight => "weight_zero",
                                Exclusion::Unhealthy => "unhealthy",
                            }
                            .to_string()
                        }),
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
                protocol: lower(&g.protocol),
                algorithm: lower(&g.algorithm),
                affinity: lower(&g.affinity),
                table_size: g.table_size,
                listener,
                health_check: g.health_check.as_ref().map(|h| {
                    let kind = h.kind_for(g.protocol);
                    let http = matches!(kind, policy::CheckType::Http | policy::CheckType::Https);
                    HealthCheckStatus {
                        enabled: h.enabled,
                        kind: lower(&kind),
                        port: h.port.or(listener_port).unwrap_or(0),
                        interval_s: h.interval_s,
                        timeout_s: h.timeout_s,
                        healthy_threshold: h.healthy_threshold,
                        unhealthy_threshold: h.unhealthy_threshold,
                        method: http.then(|| lower(&h.method())),
                        version: http.then(|| lower(&h.version())),
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
            max_flows: flow_table.max_flows,
            entries: flow_table.sweep.as_ref().map(|s| s.entries),
            last_sweep_ms: flow_table
                .sweep
                .as_ref()
                .map(|s| s.took.as_secs_f64() * 1e3),
            cache_slots: dataplane.flow_cache_slots(),
        },
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
    fn steps_are_one_token() {
        let mut phases = Phases::start();
        assert_eq!(phases.to_string(), "");
        phases.laps.push(("policy", Duration::from_micros(540_900)));
        phases.laps.push(("apply", Duration::from_millis(50)));
        assert_eq!(phases.to_string(), "policy:540ms,apply:50ms");
        phases.lap("attach");
        assert!(
            phases
                .to_string()
                .starts_with("policy:540ms,apply:50ms,attach:")
        );
        assert!(!phases.to_string().contains(char::is_whitespace));
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
