//! Health checks: how fast a failed target leaves the maps, and how many
//! targets one core can probe every second.
//!
//! - Failure to removal: a lab with `lb run` and the lab's TCP check
//!   (interval 2 s, timeout 1 s, 2 failures to become unhealthy); a target's
//!   service stops and `lb status` is polled (every 100 ms) until the target
//!   has no slot left. Compared with interval x unhealthy_threshold, the
//!   longest the checks themselves may take (the failure may come just after
//!   a successful probe).
//! - Probe capacity: the health monitor of `lb` (`HealthMonitor`, the code
//!   `lb run` uses) on a single-threaded tokio runtime (one core) checks
//!   10,000 TCP targets at 127.x.y.z every 1 s, inside a network namespace of
//!   its own where one listener on 0.0.0.0 accepts every connection. The
//!   policy rules ask for an interval of at least 2 s (the timeout must be
//!   at least 1 s and below the interval); the benchmark sets 1 s on the parsed
//!   policy directly. Measured: probes completed per second against 10,000
//!   expected, and the CPU time of the monitor (process CPU minus the
//!   listener thread's) per second.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use lb_tests::{
    Lab, Node, netns,
    policy::{HealthCheck, LabPolicy},
    topo::{TARGETS, TCP_PORT},
};
use lb_user::{
    health::monitor::{HealthMonitor, HealthSnapshot, TargetKey},
    policy::{self, Target},
};
use socket2::{Domain, Socket, Type};

use crate::{
    Settings,
    report::{Figure, Section, fmt_secs},
    stats::median,
};

/// Probe capacity goal: targets at a 1 s interval on one core.
pub const CAPACITY_GOAL: usize = 10_000;
/// The full run also measures this many, to show the headroom.
pub const HEADROOM: usize = 20_000;
const PROBE_PORT: u16 = 7000;

// ---- failure to removal ----------------------------------------------------

pub struct Removal {
    pub interval_s: u32,
    pub threshold: u32,
    /// Seconds from the service's stop to the first status without slots.
    pub times: Vec<f64>,
}

pub fn removal(settings: &Settings) -> Result<Removal> {
    let trials = if settings.quick { 1 } else { 3 };
    let check = HealthCheck::tcp();
    let lab = Lab::new()?;
    let path = lab.write_file("policy.yaml", &LabPolicy::checked(check.clone()).yaml());
    let lb = lab.start_lb(&path, &["--xdp-mode", "native"])?;
    let ip = |i: usize| IpAddr::V4(TARGETS[i].v4);
    let timeout = Duration::from_secs(u64::from(
        check.interval_s * (check.healthy_threshold.max(check.unhealthy_threshold) + 2)
            + check.timeout_s
            + 5,
    ));
    let all_in = |st: &lb_tests::status::Status| {
        (0..TARGETS.len())
            .all(|i| {
                st.state("web", ip(i)) == Some("healthy")
                    && st.target("web", ip(i)).and_then(|t| t["slots"].as_u64()) > Some(0)
            })
            .then_some(())
    };
    lb.wait_for(timeout, "every web target healthy", all_in)?;
    let mut times = Vec::new();
    for trial in 0..trials {
        let i = trial % TARGETS.len();
        lab.stop_port(Node::Target(i), TCP_PORT)?;
        let stopped = Instant::now();
        let gone = lb.wait_for(timeout, "the stopped target out of the table", |st| {
            (st.target("web", ip(i)).and_then(|t| t["slots"].as_u64()) == Some(0)).then_some(())
        })?;
        times.push((gone.at - stopped).as_secs_f64());
        if trial + 1 < trials {
            lab.start_port(Node::Target(i), TCP_PORT)?;
            lb.wait_for(timeout, "every web target healthy again", all_in)?;
        }
    }
    Ok(Removal {
        interval_s: check.interval_s,
        threshold: check.unhealthy_threshold,
        times,
    })
}

// ---- probe capacity ---------------------------------------------------------

/// A network namespace for the probe benchmark; deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new() -> Result<Namespace> {
        let name = format!("lbbench{}-hc", std::process::id());
        // A namespace left by an earlier, killed run.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        lb_tests::lab::run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Namespace(name);
        lb_tests::lab::run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// utime + stime of a task of this process, seconds (/proc counts in
/// USER_HZ, which is 100 on Linux).
fn task_cpu(task: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{task}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields after the command: state is index 0, utime 11, stime 12.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn process_cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    u.map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Accepts and closes every connection on 0.0.0.0:`port` until `stop`.
/// Returns its task id (for its CPU time).
fn listener(port: u16, stop: Arc<AtomicBool>) -> Result<(String, std::thread::JoinHandle<()>)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.listen(4096)?;
    let listener: std::net::TcpListener = socket.into();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let task = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let _ = tx.send(task);
        while !stop.load(Ordering::Relaxed) {
            let _ = listener.accept();
        }
    });
    let task = rx.recv().context("listener thread")?;
    Ok((task, handle))
}

pub struct Capacity {
    pub targets: usize,
    pub window: f64,
    pub probes_per_s: f64,
    pub failed_targets: usize,
    /// Monitor CPU seconds per second (1.0 = one core busy).
    pub cpu: f64,
}

fn probes_done(map: &BTreeMap<TargetKey, HealthSnapshot>) -> (u64, usize) {
    let done = map
        .values()
        .map(|s| u64::from(s.consecutive_successes) + u64::from(s.consecutive_failures))
        .sum();
    let failed = map.values().filter(|s| s.last_ok == Some(false)).count();
    (done, failed)
}

pub fn capacity(settings: &Settings, targets: usize) -> Result<Capacity> {
    let window = if settings.quick { 3.0 } else { 15.0 };
    let ns = Namespace::new()?;
    netns::run(&ns.0, || -> Result<Capacity> {
        let stop = Arc::new(AtomicBool::new(false));
        let (task, handle) = listener(PROBE_PORT, stop.clone())?;
        let policy = probe_policy(targets)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(monitor(&policy, &task, window));
        stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, PROBE_PORT)),
            Duration::from_secs(1),
        );
        handle
            .join()
            .map_err(|_| anyhow!("listener thread panicked"))?;
        Ok(result)
    })?
}

/// One group of `targets` TCP targets at 127.x.y.z, checked on
/// `PROBE_PORT` every second.
fn probe_policy(targets: usize) -> Result<policy::Policy> {
    let yaml = format!(
        "listeners: []\ntarget_groups:\n  - name: probed\n    protocol: tcp\n    health_check: {{ type: tcp, port: {PROBE_PORT}, interval_s: 2, timeout_s: 1, healthy_threshold: 2, unhealthy_threshold: 2 }}\n    targets: [ {{ ip: 10.0.0.1 }} ]\n"
    );
    let mut policy = policy::parse("probe.yaml", &yaml)?;
    let group = &mut policy.target_groups[0];
    let hc = group.health_check.as_mut().context("health check")?;
    // Below what the policy rules allow (interval >= 2 s): see the module
    // comment.
    hc.interval_s = 1;
    let template = group.targets[0].clone();
    group.targets = (0..targets)
        .map(|i| Target {
            ip: IpAddr::V4(Ipv4Addr::new(
                127,
                1 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            )),
            ..template.clone()
        })
        .collect();
    Ok(policy)
}

/// Runs the health monitor on `policy` and counts its probes and CPU time
/// over `window` seconds, after a warm-up (`task`: the listener thread,
/// whose CPU time is not the monitor's).
async fn monitor(policy: &policy::Policy, task: &str, window: f64) -> Capacity {
    let (monitor, rx) = HealthMonitor::start(policy);
    // Every target has been probed at least once after 1 interval;
    // one more to reach the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (done0, _) = probes_done(&rx.borrow());
    let (cpu0, listener0, t0) = (process_cpu(), task_cpu(task), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let (done1, failed) = probes_done(&rx.borrow());
    let (cpu1, listener1) = (process_cpu(), task_cpu(task));
    let elapsed = t0.elapsed().as_secs_f64();
    monitor.shutdown().await;
    Capacity {
        targets: policy.target_groups[0].targets.len(),
        window: elapsed,
        probes_per_s: done1.saturating_sub(done0) as f64 / elapsed,
        failed_targets: failed,
        cpu: ((cpu1 - cpu0) - (listener1 - listener0)).max(0.0) / elapsed,
    }
}

pub fn section(settings: &Settings) -> Result<Section> {
    let mut s = Section::new("Control plane: health checks");
    removal_section(&mut s, settings)?;
    // The goal, and in the full run a larger count to show the headroom.
    let counts: &[usize] = if settings.quick {
        &[CAPACITY_GOAL]
    } else {
        &[CAPACITY_GOAL, HEADROOM]
    };
    let mut results = Vec::new();
    for &n in counts {
        results.push(capacity(settings, n)?);
    }
    capacity_section(&mut s, &results);
    Ok(s)
}

/// Failure to removal: the table and its goal.
fn removal_section(s: &mut Section, settings: &Settings) -> Result<()> {
    s.line("Failure to removal: lab, `lb run` with the lab's TCP check; a target's service stops; time until `lb status` (polled every 100 ms) shows the target with no slot. Bound: interval x unhealthy_threshold (a failure just after a successful probe waits that long for the last failed probe).");
    let r = removal(settings)?;
    let bound = f64::from(r.interval_s * r.threshold);
    let worst = r.times.iter().copied().fold(0.0, f64::max);
    s.table(
        &[
            "interval",
            "unhealthy_threshold",
            "bound",
            "measured (each trial)",
        ],
        &[vec![
            format!("{} s", r.interval_s),
            r.threshold.to_string(),
            format!("{bound} s"),
            r.times
                .iter()
                .map(|t| fmt_secs(*t))
                .collect::<Vec<_>>()
                .join(", "),
        ]],
    );
    s.figures.push(Figure::goal(
        format!(
            "health: failure to removal from the maps (interval {} s x threshold {}), worst of {}",
            r.interval_s,
            r.threshold,
            r.times.len()
        ),
        format!(
            "{} (median {})",
            fmt_secs(worst),
            fmt_secs(median(&r.times))
        ),
        format!("<= {bound} s + 0.2 s (status polling)"),
        worst <= bound + 0.2,
    ));
    Ok(())
}

/// The share of the expected probes that completed.
fn sustained(c: &Capacity) -> f64 {
    c.probes_per_s / c.targets as f64
}

/// Probe capacity: the table of every count, a figure per count (the goal's
/// judged).
fn capacity_section(s: &mut Section, results: &[Capacity]) {
    s.line(format!(
        "\nProbe capacity: TCP targets at a 1 s interval on a single-threaded runtime; probes counted over {:.1} s after a 2 s warm-up. Estimate = probes/s / CPU share.",
        results[0].window
    ));
    let rows: Vec<Vec<String>> = results.iter().map(capacity_row).collect();
    s.table(
        &[
            "targets",
            "probes/s",
            "of expected",
            "failed targets",
            "CPU (one core = 100 %)",
            "probes/s per core (estimate)",
        ],
        &rows,
    );
    for c in results {
        let line = format!(
            "{:.0} ({:.1} % of expected, CPU {:.0} % of a core)",
            c.probes_per_s,
            sustained(c) * 100.0,
            c.cpu * 100.0
        );
        let name = format!("health: {} targets at 1 s on one core: probes/s", c.targets);
        s.figures.push(if c.targets == CAPACITY_GOAL {
            Figure::cpu_goal(
                name,
                line,
                format!(">= 95 % of {CAPACITY_GOAL}/s"),
                sustained(c) >= 0.95 && c.failed_targets == 0,
            )
        } else {
            Figure::info(name, line)
        });
    }
}

fn capacity_row(c: &Capacity) -> Vec<String> {
    let estimate = if c.cpu > 0.0 {
        c.probes_per_s / c.cpu
    } else {
        0.0
    };
    vec![
        c.targets.to_string(),
        format!("{:.0}", c.probes_per_s),
        format!("{:.1} %", sustained(c) * 100.0),
        c.failed_targets.to_string(),
        format!("{:.1} %", c.cpu * 100.0),
        format!("{estimate:.0}"),
    ]
}
