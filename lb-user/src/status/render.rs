//! The human view of a status report (`lb status`): a few lines about the
//! data plane, then aligned tables of the listeners and of each target
//! group's targets.
use std::fmt::Write as _;

use super::report::{
    AnnounceStatus, FlowTableStatus, GroupStatus, HealthStatus, ListenerStatus, StatusReport,
    Stickiness, TargetState, TargetStatus,
};
use crate::{
    failover::Serving,
    policy::{Algorithm, FailoverMode, GroupProtocol},
};

/// The whole report, or only the group named `only_group`.
pub fn render(report: &StatusReport, only_group: Option<&str>) -> String {
    let mut out = String::new();
    if only_group.is_none() {
        out += &overview(report);
        out += &listeners(&report.listeners);
        out.push('\n');
    }
    for g in report
        .target_groups
        .iter()
        .filter(|g| only_group.is_none_or(|n| n == g.name))
    {
        out += &group(g);
        out.push('\n');
    }
    out
}

/// What `lb` serves, what is wrong, the data plane, the probes' source,
/// the counters and the flow table.
fn overview(report: &StatusReport) -> String {
    let mut out = format!(
        "interface {} ({} XDP), policy {}\n",
        report.interface, report.xdp_mode, report.policy
    );
    let errors = &report.errors;
    for (what, error) in [
        ("policy reload refused", &errors.policy),
        ("maps not written", &errors.apply),
        ("state not saved", &errors.state),
    ] {
        if let Some(error) = error {
            let _ = writeln!(out, "ERROR: {what}: {error}");
        }
    }
    let data_plane = &report.data_plane;
    if !data_plane.pin_dir.is_empty() {
        let origin = if data_plane.adopted {
            "adopted from an earlier lb"
        } else {
            "made by this lb"
        };
        let _ = writeln!(
            out,
            "data plane pinned in {} ({origin})",
            data_plane.pin_dir
        );
    }
    if let Some(a) = &report.announce {
        out += &announce(a);
    }
    if !report.probe_sources.is_empty() {
        let sources = report.probe_sources.join(", ");
        let _ = writeln!(out, "health probes come from {sources}");
    }
    let counters: Vec<String> = report
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "counters: {}", counters.join(" "));
    let _ = writeln!(out, "{}\n", flow_table(&report.flow_table));
    out
}

/// The VIPs announced in the announce table, one line each.
fn announce(a: &AnnounceStatus) -> String {
    let mut out = format!(
        "VIPs announced in table {}{}:\n",
        a.table,
        if a.withdrawn {
            " (WITHDRAWN by lb withdraw)"
        } else {
            ""
        }
    );
    if let Some(err) = &a.error {
        let _ = writeln!(out, "ERROR: announce table not set: {err}");
    }
    for v in &a.vips {
        let state = if v.announced {
            "announced"
        } else {
            "withdrawn"
        };
        let _ = writeln!(out, "  {} {state}: {}", v.vip, v.reason);
    }
    out
}

fn flow_table(t: &FlowTableStatus) -> String {
    format!(
        "flow table: {} entries, sized for {} flows ({} buckets){}",
        t.entries.map_or_else(|| "?".to_string(), |n| n.to_string()),
        t.max_flows,
        t.buckets,
        t.last_sweep_ms
            .map(|ms| format!(", last sweep {ms:.1} ms"))
            .unwrap_or_default(),
    )
}

fn listeners(listeners: &[ListenerStatus]) -> String {
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.port.at(l.vip),
                l.protocol.as_str().to_string(),
                l.target_group.clone(),
                l.packets.to_string(),
                l.bytes.to_string(),
                l.new_flows.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "LISTENER",
            "VIP",
            "PROTO",
            "TARGET GROUP",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
        ],
        &rows,
    )
}

/// A group: its settings, a line each, then its targets.
fn group(g: &GroupStatus) -> String {
    let mut out = heading(g);
    if g.last_resort {
        // Who takes new flows then, or that nobody does (every target of
        // weight 0 or with no MAC).
        let _ = writeln!(out, "LAST RESORT: {}", g.serving_reason);
    }
    let _ = match g.protocol {
        GroupProtocol::Udp => writeln!(out, "flows end after {}s idle", g.flow_idle_timeout_s),
        GroupProtocol::Tcp | GroupProtocol::Http => writeln!(
            out,
            "flows end after {}s idle, {}s after the client's FIN or RST",
            g.flow_idle_timeout_s, g.flow_fin_timeout_s
        ),
    };
    if let Some(sticky) = &g.sticky_session {
        let _ = match sticky.state {
            Stickiness::On => writeln!(
                out,
                "sticky sessions by {}, {}s from a client's first flow",
                sticky.kind.as_str(),
                sticky.duration_s
            ),
            state => writeln!(out, "sticky sessions {}", state.as_str()),
        };
    }
    if let Some(h) = g.health_check.as_ref().filter(|h| h.enabled) {
        let _ = writeln!(
            out,
            "health check {} every {}s, timeout {}s, up after {} successes, down after {} failures",
            h.kind.as_str(),
            h.interval_s,
            h.timeout_s,
            h.healthy_threshold,
            h.unhealthy_threshold,
        );
    }
    out += &lifecycle(g);
    out + &targets(&g.targets)
}

/// How targets leave the group, and who takes its new flows when that is
/// not simply its own healthy targets.
fn lifecycle(g: &GroupStatus) -> String {
    let mut out = format!(
        "deregistration delay {}s, then {}\n",
        g.deregistration_delay_s,
        match g.on_deregistration {
            FailoverMode::Rebalance => "flows still on the target move (rebalance)",
            FailoverMode::NoRebalance =>
                "flows still on the target stay until they end (no_rebalance)",
        }
    );
    if let Some(b) = &g.backup {
        let _ = writeln!(
            out,
            "backup group {} below a healthy share of {}: new flows go to {} ({})",
            b.target_group,
            b.failover_ratio,
            match g.serving {
                Serving::Primary | Serving::PrimaryBelowRatio => "its own targets",
                Serving::Backup => "the BACKUP's targets",
                Serving::PrimaryLastResort =>
                    "its own targets with a weight and a MAC, unhealthy or not (LAST RESORT)",
                Serving::BackupLastResort =>
                    "the backup's targets with a weight and a MAC, unhealthy or not (LAST RESORT)",
                Serving::Nobody => "nobody (dropped)",
            },
            g.serving_reason
        );
    }
    out
}

/// `target group NAME (PROTOCOL, ALGORITHM, SIZE), listener NAME`.
fn heading(g: &GroupStatus) -> String {
    // A round-robin group's table is its cycle: one place per turn.
    let size = match g.algorithm {
        Algorithm::RoundRobin => {
            let cycle: u32 = g.targets.iter().map(|t| t.slots).sum();
            format!("{cycle}-turn cycle")
        }
        _ => format!("{} slots", g.table_size),
    };
    let affinity = match g.algorithm {
        Algorithm::Hash => format!(" {}", g.affinity.as_str()),
        _ => String::new(),
    };
    let listener = match &g.listener {
        Some(l) => format!(", listener {l}"),
        None => ", no listener".into(),
    };
    format!(
        "target group {} ({}, {}{affinity}, {size}){listener}\n",
        g.name,
        g.protocol.as_str(),
        g.algorithm.as_str(),
    )
}

fn targets(targets: &[TargetStatus]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                match &t.via {
                    Some(backup) => format!("{} (via {backup})", t.ip),
                    None => t.ip.to_string(),
                },
                t.port.to_string(),
                t.monitor_port.to_string(),
                t.weight.to_string(),
                format!("{:.1}%", t.ratio * 100.0),
                match (&t.drain, t.state) {
                    (Some(d), TargetState::Draining) => format!("draining {}s", d.remaining_s),
                    (Some(d), state) if d.by_command => format!("{} (drained)", state.as_str()),
                    (_, state) => state.as_str().to_string(),
                },
                t.provisioning.as_str().to_string(),
                match t.excluded {
                    Some(why) => format!("no ({})", why.as_str()),
                    None => "yes".into(),
                },
                t.health.as_ref().map_or_else(|| "-".into(), last_probe),
                t.mac.map_or_else(|| "-".into(), |mac| mac.to_string()),
                t.packets.to_string(),
                t.bytes.to_string(),
                t.new_flows.to_string(),
                t.active_flows.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TARGET",
            "PORT",
            "MONITOR",
            "WEIGHT",
            "RATIO",
            "STATE",
            "PROVISIONING",
            "NEW FLOWS?",
            "LAST PROBE",
            "MAC",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "ACTIVE FLOWS",
        ],
        &rows,
    )
}

/// `connected (2ok/0fail) 0.4ms`.
fn last_probe(h: &HealthStatus) -> String {
    format!(
        "{} ({}ok/{}fail){}",
        h.last_result.as_deref().unwrap_or("-"),
        h.consecutive_successes,
        h.consecutive_failures,
        h.last_latency_ms
            .map(|ms| format!(" {ms:.1}ms"))
            .unwrap_or_default()
    )
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::example;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A      LONGER\nxxxxx  1\ny      22\n");
    }

    #[test]
    fn render_shows_active_flows_and_flow_timeouts() {
        let mut report = example();
        report.target_groups[0].targets[0].active_flows = 7;
        let text = render(&report, None);
        assert!(
            text.contains(
                "flow table: 3 entries, sized for 1024 flows (512 buckets), last sweep 0.2 ms"
            ),
            "{text}"
        );
        assert!(
            text.contains("flows end after 350s idle, 10s after the client's FIN or RST"),
            "{text}"
        );
        let header = text.lines().find(|l| l.starts_with("TARGET")).unwrap();
        assert!(header.ends_with("NEW FLOWS  ACTIVE FLOWS"), "{header}");
        let row = text.lines().skip_while(|l| !l.starts_with("TARGET")).nth(1);
        assert!(row.unwrap().ends_with('7'), "{text}");
    }

    #[test]
    fn ignored_sticky_sessions_say_why() {
        let mut report = example();
        let sticky = report.target_groups[0].sticky_session.as_mut().unwrap();
        sticky.state = Stickiness::Ignored;
        let text = render(&report, None);
        assert!(
            text.contains("sticky sessions ignored (source_ip algorithm)"),
            "{text}"
        );
    }

    #[test]
    fn round_robin_groups_show_their_cycle() {
        let mut report = example();
        let group = &mut report.target_groups[0];
        group.algorithm = Algorithm::RoundRobin;
        group.listener = None;
        group.sticky_session.as_mut().unwrap().duration_s = 30;
        let target = group.targets[0].clone();
        group.targets = [2, 2, 1]
            .iter()
            .map(|&slots| TargetStatus {
                slots,
                ..target.clone()
            })
            .collect();
        let text = render(&report, Some("web"));
        assert!(
            text.starts_with(
                "target group web (tcp, round_robin, 5-turn cycle), no listener\n\
                 flows end after 350s idle, 10s after the client's FIN or RST\n\
                 sticky sessions by source_ip, 30s from a client's first flow\n"
            ),
            "{text}"
        );
    }

    /// A draining target shows its delay left; a backup's, where it comes
    /// from; a group failed over, to whom its new flows go and why.
    #[test]
    fn drains_and_failover_are_shown() {
        let mut report = example();
        let group = &mut report.target_groups[0];
        group.serving = Serving::Backup;
        group.serving_reason =
            "0 of 1 targets healthy, failover ratio 0.5; backup: 1 of 1 targets healthy".into();
        let mut spare = group.targets[0].clone();
        let own = &mut group.targets[0];
        own.state = TargetState::Draining;
        own.provisioning = super::super::report::Provisioning::BeingRemoved;
        spare.via = Some("spare".into());
        spare.drain = None;
        spare.ip = "10.0.3.21".parse().unwrap();
        group.targets.push(spare);
        let text = render(&report, Some("web"));
        assert!(
            text.contains(
                "backup group spare below a healthy share of 0.5: new flows go to the BACKUP's targets \
                 (0 of 1 targets healthy, failover ratio 0.5; backup: 1 of 1 targets healthy)\n"
            ),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("TARGET"))
            .collect();
        assert!(rows[1].starts_with("10.0.3.11"), "{text}");
        assert!(
            rows[1].contains("  draining 120s  being_removed  "),
            "{text}"
        );
        assert!(rows[2].starts_with("10.0.3.21 (via spare)  "), "{text}");
        assert!(rows[2].contains("  healthy        applied  "), "{text}");
    }

    /// A group in last resort whose targets all have weight 0 takes no
    /// new flow: the status says they are dropped, never that every
    /// target takes them.
    #[test]
    fn last_resort_with_only_weight_0_targets_says_new_flows_are_dropped() {
        use crate::failover::{Side, serving};
        let mut report = example();
        let group = &mut report.target_groups[0];
        group.backup = None;
        let side = Side {
            total: 1,
            healthy: 0,
            usable: 0,
        };
        group.serving = serving(side, None);
        group.serving_reason = group.serving.reason(side, None);
        group.last_resort = group.serving.last_resort();
        let target = &mut group.targets[0];
        target.weight = 0;
        target.selectable = false;
        target.excluded = Some(crate::plan::Exclusion::ZeroWeight);
        let text = render(&report, Some("web"));
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("target group web"))
            .collect();
        assert_eq!(
            lines[1],
            "LAST RESORT: no healthy target: last resort, but none of the group's 1 targets has \
             a weight above 0 and a known MAC: new flows are dropped",
            "{text}"
        );
        assert!(!text.contains("all targets take"), "{text}");
    }

    #[test]
    fn announced_vips_are_listed_with_why() {
        let mut report = example();
        report.announce = Some(crate::announce::AnnounceStatus {
            table: 4242,
            withdrawn: false,
            vips: vec![
                crate::announce::VipAnnounce {
                    vip: "10.0.0.1".parse().unwrap(),
                    announced: true,
                    reason: "listener web has healthy targets (web serving primary)".into(),
                },
                crate::announce::VipAnnounce {
                    vip: "fd00::1".parse().unwrap(),
                    announced: false,
                    reason: "no listener has a healthy target (web6 nobody)".into(),
                },
            ],
            error: None,
        });
        let text = render(&report, None);
        assert!(
            text.contains(
                "VIPs announced in table 4242:\n  10.0.0.1 announced: listener web has healthy targets (web serving primary)\n  fd00::1 withdrawn: no listener has a healthy target (web6 nobody)\n"
            ),
            "{text}"
        );
        report.announce.as_mut().unwrap().withdrawn = true;
        assert!(
            render(&report, None)
                .contains("VIPs announced in table 4242 (WITHDRAWN by lb withdraw):\n")
        );
    }

    /// The whole view of a report, as `lb status` prints it (README
    /// "Status").
    #[test]
    fn the_whole_view() {
        let mut report = example();
        report.errors.apply = Some("map lb_targets: EPERM".into());
        let target = &mut report.target_groups[0].targets[0];
        target.selectable = false;
        target.excluded = Some(crate::plan::Exclusion::ZeroWeight);
        target.ip = "fd00:3::11".parse().unwrap();
        target.drain = None;
        report.listeners[0].vip = "fd00::1".parse().unwrap();
        assert_eq!(
            render(&report, None),
            "interface eth0 (native XDP), policy lb.yaml\n\
             ERROR: maps not written: map lb_targets: EPERM\n\
             data plane pinned in /sys/fs/bpf/lb/eth0 (made by this lb)\n\
             health probes come from 10.0.3.2\n\
             counters: xdp_tx=2\n\
             flow table: 3 entries, sized for 1024 flows (512 buckets), last sweep 0.2 ms\n\
             \n\
             LISTENER  VIP           PROTO  TARGET GROUP  PACKETS  BYTES  NEW FLOWS\n\
             web       [fd00::1]:80  tcp    web           2        120    1\n\
             \n\
             target group web (tcp, hash five_tuple, 65537 slots), listener web\n\
             flows end after 350s idle, 10s after the client's FIN or RST\n\
             sticky sessions by source_ip, 360s from a client's first flow\n\
             health check http every 2s, timeout 1s, up after 2 successes, down after 2 failures\n\
             deregistration delay 300s, then flows still on the target stay until they end (no_rebalance)\n\
             backup group spare below a healthy share of 0.5: new flows go to its own targets (1 of 1 targets healthy, failover ratio 0.5)\n\
             TARGET      PORT  MONITOR  WEIGHT  RATIO   STATE    PROVISIONING  NEW FLOWS?        LAST PROBE                    MAC                PACKETS  BYTES  NEW FLOWS  ACTIVE FLOWS\n\
             fd00:3::11  80    80       256     100.0%  healthy  applied       no (weight_zero)  status 200 (2ok/0fail) 0.4ms  02:00:00:00:00:11  2        120    1          1\n\
             \n"
        );
    }
}
