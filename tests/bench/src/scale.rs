//! Control plane at scale: a policy of 1,000 target groups x 100 targets
//! (1,000 listeners): time to parse and validate, compile (every hash table
//! built) and apply to freshly loaded maps; a re-apply after one target
//! changes; memory of the maps (the kernel's `memlock` of each map, the
//! group tables swapped into `GROUP_TABLES` included) and the
//! resident memory of the process holding the plan, i.e. what `lb` itself
//! holds for such a policy.
use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{Lab, Node, packets::LB_MAC};
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    ids::Ids,
    maglev::TableCache,
    plan::{MapPlan, Observed},
    policy::{self, compile::compile_cached},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    Settings,
    report::{Figure, OPTIMIZED, Section, fmt_bytes, fmt_secs},
    stats::median,
};

/// Target groups of the policy (each with a listener of its own).
pub const GROUPS: usize = 1000;
/// Groups in a dev build (`cargo xtask bench --quick`): its unoptimized
/// compile of 1,000 tables alone would take most of a quick run.
pub const DEV_GROUPS: usize = 100;
pub const TARGETS: usize = 100;

/// The groups this build measures.
pub fn groups() -> usize {
    if OPTIMIZED { GROUPS } else { DEV_GROUPS }
}

/// "1,000 groups x 100 targets" (the section's and the figures' name).
pub fn scale_name() -> String {
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
/// Goal: apply under 2 s (the median of the trials).
pub const APPLY_GOAL_S: f64 = 2.0;
/// First applies measured, each to freshly loaded maps.
const APPLY_TRIALS: usize = 3;

/// The policy text: listener `l<g>` on 10.200.<g/256>.<g%256>:80 to group
/// `g<g>`, whose targets are 10.<1+g/256>.<g%256>.<1..=100>.
pub fn policy_yaml(groups: usize, targets: usize) -> String {
    policy_text(groups, targets, &Run::default())
}

/// What the policy given to a real `lb run` adds to [`policy_yaml`].
#[derive(Default)]
struct Run {
    /// `interface:` and a static `mac:` for every target (no neighbour
    /// resolution, no traffic to the targets).
    lab: bool,
    /// This (group, target) has weight 128.
    changed: Option<(usize, usize)>,
}

fn policy_text(groups: usize, targets: usize, run: &Run) -> String {
    let mut y = String::new();
    if run.lab {
        y.push_str("interface: eth0\n");
    }
    y.push_str("listeners:\n");
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
            let _ = write!(y, "{sep}{{ ip: {}", target_ip(g, t));
            if run.lab {
                let _ = write!(
                    y,
                    ", mac: \"{}\"",
                    lb_user::neighbors::fmt_mac(&target_mac(g, t))
                );
            }
            if run.changed == Some((g, t)) {
                y.push_str(", weight: 128");
            }
            y.push_str(" }");
        }
        y.push_str("]\n");
    }
    y
}

/// The policy a real `lb run` in a lab serves: [`policy_yaml`] with the
/// lab's interface and a static MAC for every target, and weight 128 for
/// target `changed` (group, target) if given.
pub fn lab_policy(groups: usize, targets: usize, changed: Option<(usize, usize)>) -> String {
    policy_text(groups, targets, &Run { lab: true, changed })
}

/// The static MAC of target `t` of group `g`.
fn target_mac(g: usize, t: usize) -> [u8; 6] {
    [2, 0, g as u8, (g >> 8) as u8, 0, t as u8]
}

/// A prefix of the load balancer's interface in the lab that holds every
/// target address (`lb` accepts only targets on a connected subnet). Nothing
/// is sent to them: the policy has no health checks and static MACs.
pub const TARGET_NET: &str = "10.7.255.254/13";

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
    rss_of("self")
}

/// `VmRSS` and `VmHWM` of process `pid` ("self" or a number), bytes (0 if
/// unknown).
pub fn rss_of(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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

/// `lb run` itself, in a lab, with the same policy (static MACs, no health
/// checks).
pub struct LbRun {
    /// From its start to its `lb ready` line: interface, parse and validate,
    /// compile, load, apply, attach.
    pub ready: f64,
    /// Its steps as `lb` logged them (`policy:540ms,...`).
    pub ready_steps: String,
    /// From SIGHUP, after one target's weight changed in the file, to its
    /// `policy reloaded` line: parse and validate, recompile, re-apply.
    pub reload: f64,
    /// The steps of that reload as `lb` logged them (`policy:540ms,...`).
    pub reload_steps: String,
    /// `VmRSS` after the reload, and the peak (`VmHWM`).
    pub rss: u64,
    pub hwm: u64,
}

/// The `took` field of the last log line that contains `message`: the
/// steps of a start or a reload (`policy:540ms,compile:80ms,apply:50ms`,
/// one token: `lb` writes it without spaces).
pub fn steps(log: &str, message: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains(message))
        .and_then(|l| l.split("took=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

pub fn lb_run(groups: usize) -> Result<LbRun> {
    let lab = Lab::new()?;
    lab.exec(Node::Lb, &["ip", "addr", "add", TARGET_NET, "dev", "eth0"])?;
    let text = |changed| policy_text(groups, TARGETS, &Run { lab: true, changed });
    let path = lab.write_file("scale.yaml", &text(None));
    let t = Instant::now();
    let lb = lab.start_lb(&path, &["--xdp-mode", "native"])?;
    let ready = t.elapsed().as_secs_f64();
    let pid = lb.pid().context("lb has exited")?;

    std::fs::write(&path, text(Some((groups / 2, 0))))?;
    let reloads = |log: &str| log.matches("policy reloaded").count();
    let before = reloads(&lb.log());
    let t = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP)?;
    let deadline = t + Duration::from_secs(60);
    loop {
        let log = lb.log();
        if reloads(&log) > before {
            break;
        }
        if log.contains("ERROR") || Instant::now() > deadline {
            bail!("lb did not reload the changed policy:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let reload = t.elapsed().as_secs_f64();
    let log = lb.log();
    let ready_steps = steps(&log, lb_tests::lb::READY);
    let reload_steps = steps(&log, "policy reloaded");
    let (rss, hwm) = rss_of(&pid.to_string());
    lb.stop()?;
    Ok(LbRun {
        ready,
        ready_steps,
        reload,
        reload_steps,
        rss,
        hwm,
    })
}

pub struct Scale {
    pub yaml_bytes: usize,
    pub parse: f64,
    pub compile: f64,
    pub load: f64,
    /// First applies to freshly loaded maps (`APPLY_TRIALS`).
    pub applies: Vec<f64>,
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
        ..Default::default()
    };
    for g in 0..groups {
        for t in 0..TARGETS {
            observed.neighbors.insert(target_ip(g, t), target_mac(g, t));
        }
    }
    let mut cache = TableCache::default();
    let t = Instant::now();
    // As `lb run` compiles: the ids assigned first (a fresh data plane).
    let ids = Arc::new(Ids::default().assign(&policy, Instant::now())?);
    let plan = compile_cached(&policy, &observed, &ids, &mut cache)?;
    let compile = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dp.apply(&plan)?;
    let apply = t.elapsed().as_secs_f64();
    // One target's weight changes: one table is rebuilt and swapped.
    policy.target_groups[groups / 2].targets[0].weight = 128;
    // The new plan stays until the end: the resident memory after counts it.
    let (_changed, recompile, reapply) = change(&policy, &observed, &plan, &mut cache, &mut dp)?;
    let maps = dp.map_memory()?;
    let (rss_after, _) = rss();
    let applies = first_applies(&plan, apply)?;
    drop(plan);
    Ok(Scale {
        yaml_bytes: yaml.len(),
        parse,
        compile,
        load,
        applies,
        recompile,
        reapply,
        maps,
        rss_before,
        rss_after,
    })
}

/// Recompiles the changed `policy` over `plan` and applies the result to
/// `dp`: the new plan and the seconds each step took.
fn change(
    policy: &policy::Policy,
    observed: &Observed,
    plan: &MapPlan,
    cache: &mut TableCache,
    dp: &mut Dataplane,
) -> Result<(MapPlan, f64, f64)> {
    let t = Instant::now();
    let ids = Arc::new(plan.ids.assign(policy, Instant::now())?);
    let plan2 = compile_cached(policy, observed, &ids, cache)?;
    let recompile = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dp.apply(&plan2)?;
    let reapply = t.elapsed().as_secs_f64();
    Ok((plan2, recompile, reapply))
}

/// `first` and more first applies of `plan`, each to freshly loaded maps:
/// the kernel's cost of fresh pages varies on a VM (a page the hypervisor
/// took back is faulted in again on first use), so one apply is not a
/// figure.
fn first_applies(plan: &MapPlan, first: f64) -> Result<Vec<f64>> {
    let mut applies = vec![first];
    for _ in 1..APPLY_TRIALS {
        let mut fresh = Dataplane::load(&LoadOptions::default())?;
        let t = Instant::now();
        fresh.apply(plan)?;
        applies.push(t.elapsed().as_secs_f64());
    }
    Ok(applies)
}

pub fn section(settings: &Settings) -> Result<Section> {
    let groups = groups();
    let m = measure(groups)?;
    let lb = lb_run(groups)?;
    let mut s = Section::new(title(settings));
    s.line(format!(
        "A policy of {groups} listeners and {groups} groups of {TARGETS} targets ({} targets, {} of YAML), every MAC known, hash tables of 65537 slots. Times are wall-clock, one run each except the first apply: parse + validate, compile (every table built), load of the program with empty maps, first apply (three times, each to freshly loaded maps: the kernel's fresh pages cost up to 10x more when the VM's hypervisor has taken them back; the goal is judged on the median, the worst is shown); then one target's weight changes and the policy is recompiled (table cache: one table rebuilt) and re-applied (delta: one table swapped). Resident memory: this process's VmRSS. Then `lb run` itself, in a lab, with the same policy (a static MAC for each target, no health checks): from its start to its `lb ready` line (parse, validate, compile, load, apply, attach), a reload (SIGHUP) after one target's weight changed in the file, to its `policy reloaded` line, and its resident memory.",
        groups * TARGETS,
        fmt_bytes(m.yaml_bytes as u64)
    ));
    s.table(&["step", "value"], &rows(&m, &lb));
    figures(&mut s, &m, &lb);
    Ok(s)
}

/// The table: a row per step, the measured value.
fn rows(m: &Scale, lb: &LbRun) -> Vec<Vec<String>> {
    vec![
        vec!["parse + validate".into(), fmt_secs(m.parse)],
        vec!["compile".into(), fmt_secs(m.compile)],
        vec!["load program and maps".into(), fmt_secs(m.load)],
        vec![
            format!("apply (first), {} trials", m.applies.len()),
            m.applies
                .iter()
                .map(|&a| fmt_secs(a))
                .collect::<Vec<_>>()
                .join(", "),
        ],
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
        vec![
            "`lb run`: start to ready".into(),
            format!("{} ({})", fmt_secs(lb.ready), lb.ready_steps),
        ],
        vec![
            "`lb run`: reload after one change (SIGHUP to `policy reloaded`)".into(),
            format!("{} ({})", fmt_secs(lb.reload), lb.reload_steps),
        ],
        vec![
            "`lb run`: resident memory (peak)".into(),
            format!("{} ({})", fmt_bytes(lb.rss), fmt_bytes(lb.hwm)),
        ],
    ]
}

/// The summary's figures: apply against its goal, one change, memory.
fn figures(s: &mut Section, m: &Scale, lb: &LbRun) {
    let name = scale_name();
    let apply = median(&m.applies);
    let worst = m.applies.iter().copied().fold(0.0, f64::max);
    let total = m.parse + m.compile + apply;
    s.figures.push(Figure::cpu_goal(
        format!("{name}: apply (median of {})", m.applies.len()),
        format!(
            "{} (worst {}; validate {}, compile {}; total {})",
            fmt_secs(apply),
            fmt_secs(worst),
            fmt_secs(m.parse),
            fmt_secs(m.compile),
            fmt_secs(total)
        ),
        "< 2 s",
        apply < APPLY_GOAL_S,
    ));
    s.figures.push(Figure::info(
        format!("{name}: one change, recompile + re-apply"),
        format!(
            "{} (`lb run`: SIGHUP to reloaded {}; start to ready {})",
            fmt_secs(m.recompile + m.reapply),
            fmt_secs(lb.reload),
            fmt_secs(lb.ready)
        ),
    ));
    s.figures.push(Figure::info(
        format!("{name}: map memory / `lb run` resident memory"),
        format!("{} / {}", fmt_bytes(m.maps), fmt_bytes(lb.rss)),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_from_the_last_matching_line() {
        let log = "\
2026-12-04T14:00:00Z  INFO lb_user::daemon: lb ready iface=eth0 took=policy:900ms,apply:700ms
2026-12-04T14:00:01Z  INFO lb_user::daemon: policy reloaded report=ApplyReport { .. } took=policy:1ms,compile:2ms,apply:3ms
2026-12-04T14:00:02Z  INFO lb_user::daemon: policy reloaded report=ApplyReport { .. } took=policy:4ms,compile:5ms,apply:6ms
";
        assert_eq!(steps(log, "lb ready"), "policy:900ms,apply:700ms");
        assert_eq!(
            steps(log, "policy reloaded"),
            "policy:4ms,compile:5ms,apply:6ms"
        );
        assert_eq!(steps(log, "stopping"), "");
    }

    #[test]
    fn scale_policy_parses() {
        let p = policy::parse("s.yaml", &policy_yaml(3, 4)).unwrap();
        assert_eq!(p.listeners.len(), 3);
        assert_eq!(p.target_groups[2].targets.len(), 4);
        assert_eq!(p.target_groups[2].targets[3].ip, target_ip(2, 3));
    }
}
