//! Control plane at scale: a policy of 1,000 target groups x 100 targets
//! (1,000 listeners): time to parse and validate, compile (every hash table
//! built) and apply to freshly loaded maps; a re-apply after one target
//! changes; memory of the maps (the kernel's `memlock` of each map, the
//! group tables swapped into `GROUP_TABLES` included) and the
//! resident memory of the process holding the plan, i.e. what `lb` itself
//! holds for such a policy.
use std::{fmt::Write as _, net::IpAddr, time::Instant};

use anyhow::Result;
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    maglev::TableCache,
    plan::Observed,
    policy::{self, compile::compile_cached},
};

use super::{
    Settings,
    report::{Figure, OPTIMIZED, Section, fmt_bytes, fmt_secs},
};
use crate::packets::LB_MAC;

/// Target groups of the policy (each with a listener of its own).
pub const GROUPS: usize = 1000;
/// Groups in a dev build (`cargo xtask bench --quick`): its unoptimized
/// compile of 1,000 tables alone takes about 20 s.
pub const DEV_GROUPS: usize = 100;
pub const TARGETS: usize = 100;

/// The groups this build measures.
pub fn groups() -> usize {
    if OPTIMIZED { GROUPS } else { DEV_GROUPS }
}

/// "1,000 groups x 100 targets" (the section's and the figures' name).
fn scale_name() -> String {
    let g = groups();
    let groups = if g >= 1000 {
        format!("{},{:03}", g / 1000, g % 1000)
    } else {
        g.to_string()
    };
    format!("{groups} groups x {TARGETS} targets")
}

/// The section's title.
pub fn title(_settings: &Settings) -> String {
    format!(
        "Control plane: {}",
        scale_name().replace("groups", "target groups")
    )
}
/// Goal: apply under 2 s.
pub const APPLY_GOAL_S: f64 = 2.0;

/// The policy text: listener `l<g>` on 10.200.<g/256>.<g%256>:80 to group
/// `g<g>`, whose targets are 10.<1+g/256>.<g%256>.<1..=100>.
pub fn policy_yaml(groups: usize, targets: usize) -> String {
    let mut y = String::from("listeners:\n");
    for g in 0..groups {
        let _ = writeln!(
            y,
            "  - {{ name: l{g}, vip: 10.200.{}.{}, protocol: tcp, port: 80, target_group: g{g} }}",
            g / 256,
            g % 256
        );
    }
    y.push_str("target_groups:\n");
    for g in 0..groups {
        let _ = write!(y, "  - name: g{g}\n    protocol: tcp\n    targets: [");
        for t in 0..targets {
            let sep = if t == 0 { "" } else { ", " };
            let _ = write!(y, "{sep}{{ ip: {} }}", target_ip(g, t));
        }
        y.push_str("]\n");
    }
    y
}

fn target_ip(g: usize, t: usize) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        1 + (g / 256) as u8,
        (g % 256) as u8,
        1 + t as u8,
    ))
}

/// `VmRSS` and `VmHWM` of this process, bytes.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub struct Scale {
    pub yaml_bytes: usize,
    pub parse: f64,
    pub compile: f64,
    pub load: f64,
    pub apply: f64,
    pub recompile: f64,
    pub reapply: f64,
    pub maps: u64,
    pub rss_before: u64,
    pub rss_after: u64,
}

pub fn measure(groups: usize) -> Result<Scale> {
    let yaml = policy_yaml(groups, TARGETS);
    let (rss_before, _) = rss();
    let t = Instant::now();
    let mut policy = policy::parse("scale.yaml", &yaml)?;
    let parse = t.elapsed().as_secs_f64();
    let mut observed = Observed {
        iface_mac: LB_MAC,
        iface_nets: vec![],
        neighbors: Default::default(),
        health: Default::default(),
    };
    for g in 0..groups {
        for t in 0..TARGETS {
            observed
                .neighbors
                .insert(target_ip(g, t), [2, 0, g as u8, (g >> 8) as u8, 0, t as u8]);
        }
    }
    let mut cache = TableCache::default();
    let t = Instant::now();
    let plan = compile_cached(&policy, &observed, &mut cache)?;
    let compile = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dp.apply(&plan)?;
    let apply = t.elapsed().as_secs_f64();
    // One target's weight changes: one table is rebuilt and swapped.
    policy.target_groups[groups / 2].targets[0].weight = 128;
    let t = Instant::now();
    let plan2 = compile_cached(&policy, &observed, &mut cache)?;
    let recompile = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dp.apply(&plan2)?;
    let reapply = t.elapsed().as_secs_f64();
    let maps = dp.map_memory()?;
    let (rss_after, _) = rss();
    drop(plan);
    Ok(Scale {
        yaml_bytes: yaml.len(),
        parse,
        compile,
        load,
        apply,
        recompile,
        reapply,
        maps,
        rss_before,
        rss_after,
    })
}

pub fn section(settings: &Settings) -> Result<Section> {
    let groups = groups();
    let m = measure(groups)?;
    let name = scale_name();
    let mut s = Section::new(title(settings));
    s.line(format!(
        "A policy of {groups} listeners and {groups} groups of {TARGETS} targets ({} targets, {} of YAML), every MAC known, hash tables of 65537 slots. Times are wall-clock, one run each: parse + validate, compile (every table built), load of the program with empty maps, first apply; then one target's weight changes and the policy is recompiled (table cache: one table rebuilt) and re-applied (delta: one table swapped). Resident memory: this process's VmRSS, which holds what `lb run` holds (policy, plan, table cache, maps' user side).",
        groups * TARGETS,
        fmt_bytes(m.yaml_bytes as u64)
    ));
    s.table(
        &["step", "value"],
        &[
            vec!["parse + validate".into(), fmt_secs(m.parse)],
            vec!["compile".into(), fmt_secs(m.compile)],
            vec!["load program and maps".into(), fmt_secs(m.load)],
            vec!["apply (first)".into(), fmt_secs(m.apply)],
            vec!["recompile after one change".into(), fmt_secs(m.recompile)],
            vec!["re-apply after one change".into(), fmt_secs(m.reapply)],
            vec![
                "map memory (kernel memlock, group tables included)".into(),
                fmt_bytes(m.maps),
            ],
            vec![
                "resident memory before / after".into(),
                format!("{} / {}", fmt_bytes(m.rss_before), fmt_bytes(m.rss_after)),
            ],
        ],
    );
    let total = m.parse + m.compile + m.apply;
    s.figures.push(Figure::cpu_goal(
        format!("{name}: apply"),
        format!(
            "{} (validate {}, compile {}; total {})",
            fmt_secs(m.apply),
            fmt_secs(m.parse),
            fmt_secs(m.compile),
            fmt_secs(total)
        ),
        "< 2 s",
        m.apply < APPLY_GOAL_S,
    ));
    s.figures.push(Figure::info(
        format!("{name}: one change, recompile + re-apply"),
        fmt_secs(m.recompile + m.reapply),
    ));
    s.figures.push(Figure::info(
        format!("{name}: map memory / resident memory"),
        format!("{} / {}", fmt_bytes(m.maps), fmt_bytes(m.rss_after)),
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_policy_parses() {
        let p = policy::parse("s.yaml", &policy_yaml(3, 4)).unwrap();
        assert_eq!(p.listeners.len(), 3);
        assert_eq!(p.target_groups[2].targets.len(), 4);
        assert_eq!(p.target_groups[2].targets[3].ip, target_ip(2, 3));
    }
}
