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
use tracing::{error, info, warn};

use crate::{
    api::{self, GroupStatus, ListenerStatus, StatusReport, TargetStatus},
    dataplane::{AttachMode, Dataplane, LoadOptions},
    maglev::TableCache,
    neighbors::{self, InterfaceInfo, NeighborWatch},
    plan::{Exclusion, Mac, MapPlan, Observed},
    policy::{self, HostFacts, Policy, compile::compile_cached},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub socket: PathBuf,
    pub flow_table_size: u32,
    /// How long to wait at start for target MACs before attaching anyway.
    pub resolve_wait: Duration,
}

/// A policy read, checked against the host and ready to compile.
struct Loaded {
    policy: Policy,
}

fn load_policy(path: &Path, iface: &InterfaceInfo) -> anyhow::Result<Loaded> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{name}: cannot read the policy"))?;
    let mut policy = policy::parse(&name, &text)?;
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

fn observed(iface: &InterfaceInfo, neighbors: &BTreeMap<IpAddr, Mac>) -> Observed {
    Observed {
        iface_mac: iface.mac,
        iface_nets: iface.nets.clone(),
        neighbors: neighbors.clone(),
    }
}

/// Which interface: `--iface`, else the policy's `interface:`.
fn interface_name(opts: &RunOptions) -> anyhow::Result<String> {
    if let Some(iface) = &opts.iface {
        return Ok(iface.clone());
    }
    let name = opts.config.display().to_string();
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("{name}: cannot read the policy"))?;
    let policy = policy::parse(&name, &text)?;
    policy.interface.ok_or_else(|| {
        anyhow!("{name}: no interface: give --iface or set `interface:` in the policy")
    })
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let iface_name = interface_name(&opts)?;
    let iface = neighbors::interface(&iface_name).await?;
    let Loaded { mut policy } = load_policy(&opts.config, &iface)?;

    let (watch, mut macs) = NeighborWatch::start(iface.index, dynamic_targets(&policy)).await?;
    wait_for_macs(&mut macs, &dynamic_targets(&policy), opts.resolve_wait).await;

    let mut tables = TableCache::default();
    let mut plan = compile_cached(&policy, &observed(&iface, &macs.borrow()), &mut tables)?;
    let mut dataplane = Dataplane::load(&LoadOptions {
        flow_table_size: opts.flow_table_size,
    })?;
    dataplane.apply(&plan)?;
    report_exclusions(&plan);
    let mode = dataplane.attach(&iface.name, opts.mode)?;
    let api = api::bind(&opts.socket)
        .with_context(|| format!("cannot serve the API on {}", opts.socket.display()))?;

    info!(
        iface = %iface.name,
        mode,
        listeners = plan.listeners.len(),
        targets = plan.targets.len(),
        socket = %opts.socket.display(),
        "lb ready"
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                match load_policy(&opts.config, &iface)
                    .and_then(|loaded| {
                        let new_plan = compile_cached(&loaded.policy, &observed(&iface, &macs.borrow()), &mut tables)?;
                        Ok((loaded, new_plan))
                    }) {
                    Ok((loaded, new_plan)) => {
                        watch.set_targets(dynamic_targets(&loaded.policy)).await?;
                        match dataplane.apply(&new_plan) {
                            Ok(report) => {
                                info!(?report, "policy reloaded");
                                policy = loaded.policy;
                                plan = new_plan;
                                report_exclusions(&plan);
                            }
                            Err(err) => {
                                error!(%err, "applying the reloaded policy failed; rewriting the last good one");
                                dataplane.apply(&plan)?;
                            }
                        }
                    }
                    Err(err) => error!("policy reload refused, still serving the last good policy:\n{err:#}"),
                }
            }
            changed = macs.changed() => {
                if changed.is_err() {
                    return Err(anyhow!("the neighbour watcher stopped"));
                }
                let new_plan = compile_cached(&policy, &observed(&iface, &macs.borrow_and_update()), &mut tables)?;
                if new_plan != plan {
                    log_mac_changes(&plan, &new_plan);
                    dataplane.apply(&new_plan)?;
                    plan = new_plan;
                }
            }
            accepted = api.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        let json = serde_json::to_string(&status_report(&policy, &plan, &dataplane, &iface.name, mode, &opts.config));
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
    drop(dataplane);
    let _ = std::fs::remove_file(&opts.socket);
    if let Err(err) = watch.shutdown().await {
        warn!(%err, "removing the managed neighbour entries");
    }
    Ok(())
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

fn status_report(
    policy: &Policy,
    plan: &MapPlan,
    dataplane: &Dataplane,
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
            let targets = plan
                .targets
                .iter()
                .filter(|t| t.group == g.name)
                .map(|t| {
                    let stats = dataplane.target_stats(t.id).unwrap_or_default();
                    let state = match (&listener, t.excluded) {
                        (None, _) => "unused",
                        (_, Some(Exclusion::MacUnresolved)) => "mac_unresolved",
                        (_, Some(Exclusion::ZeroWeight)) => "weight_zero",
                        (_, None) => "active",
                    };
                    TargetStatus {
                        ip: t.ip.to_string(),
                        port: t.port,
                        weight: t.weight,
                        ratio: t.ratio,
                        slots: t.slots,
                        mac: (t.excluded != Some(Exclusion::MacUnresolved))
                            .then(|| neighbors::fmt_mac(&t.info.mac)),
                        state: state.into(),
                        packets: stats.packets,
                        bytes: stats.bytes,
                        new_flows: stats.new_flows,
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
                targets,
            }
        })
        .collect();
    StatusReport {
        interface: iface.to_string(),
        xdp_mode: mode.to_string(),
        policy: config.display().to_string(),
        counters,
        listeners,
        target_groups,
    }
}
