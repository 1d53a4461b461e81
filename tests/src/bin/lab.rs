//! `lb-lab`: the lab demo behind `cargo xtask run`. Builds the namespace lab,
//! starts `lb run` in the load balancer's namespace, waits for the first
//! health verdicts, sends a burst of requests to every listener of the policy
//! from the client, prints what each target answered against its weight
//! ratio, then shows `lb status` once a second until Ctrl-C (or
//! `--duration`), and removes everything. During the live view it stops one
//! target's service for `--outage-s` seconds (a target of the first group
//! with health checks), so the view shows it going unhealthy and coming back;
//! the group's `lb status` table is printed at each health transition.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use lb_tests::{
    Lab, LabOptions, Node,
    client::{self, Proto, Tally},
    lab::workspace_bin,
    lb::LbProcess,
    stats,
    status::Status,
    topo,
};
use lb_user::policy::{Listener, ListenerProtocol, Policy, TargetGroup};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Run lb in the namespace lab, drive a burst, show live counters")]
struct Args {
    /// The policy (its `interface:` is ignored: lb runs on the lab's eth0).
    #[arg(long, default_value = "examples/lab.yaml")]
    config: PathBuf,
    /// XDP attach mode passed to `lb run`.
    #[arg(long, default_value = "native")]
    xdp_mode: String,
    /// TCP connections per TCP listener in the burst.
    #[arg(long, default_value_t = 300)]
    tcp: usize,
    /// UDP queries per UDP listener in the burst.
    #[arg(long, default_value_t = 300)]
    udp: usize,
    /// Stop after this many seconds of live counters (default: at Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds to stop one checked target's service for, at the start of the
    /// live view (0: no outage).
    #[arg(long, default_value_t = 10)]
    outage_s: u64,
    /// The `lb` binary (default: $LB_BIN, else target/debug/lb).
    #[arg(long)]
    lb_bin: Option<PathBuf>,
    /// The lab server binary (default: $LB_LAB_SERVER_BIN, else target/debug/lb-lab-server).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("install the Ctrl-C handler")?;

    let policy = lb_user::policy::load(&args.config)?;
    let lab = start_lab(&args)?;
    let mut lb = start_lb(&lab, &args)?;

    wait_for_verdicts(&lb, &stop);

    for listener in &policy.listeners {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        burst_listener(&lab, &policy, listener, &args)?;
    }

    live_view(&lab, &mut lb, &args, &stop);
    finish(lab, lb)
}

/// Builds the lab with its target servers.
fn start_lab(args: &Args) -> Result<Lab> {
    let options = LabOptions {
        prefix: "lbx".into(),
        lb_bin: args
            .lb_bin
            .clone()
            .unwrap_or_else(|| workspace_bin("LB_BIN", "lb")),
        server_bin: Some(
            args.server_bin
                .clone()
                .unwrap_or_else(|| workspace_bin("LB_LAB_SERVER_BIN", "lb-lab-server")),
        ),
        ..LabOptions::default()
    };
    eprintln!("lab: creating namespaces, bridge, targets t1..t3 and their servers");
    let lab = Lab::with(options).context("create the lab")?;
    eprintln!(
        "lab: namespaces {} .. {} (inspect with: nsenter --net=/run/netns/{} ip addr)",
        lab.ns(Node::Switch),
        lab.ns(Node::Target(2)),
        lab.ns(Node::Lb)
    );
    Ok(lab)
}

/// Starts `lb run` in the lab, its log echoed.
fn start_lb(lab: &Lab, args: &Args) -> Result<LbProcess> {
    eprintln!("lab: starting lb (xdp mode {})", args.xdp_mode);
    let socket = lab.dir().join("lb.sock");
    let config = std::fs::canonicalize(&args.config)?;
    LbProcess::start(&lb_tests::lb::Start {
        ns: &lab.ns(Node::Lb),
        bin: &lab.options().lb_bin,
        config: &config,
        socket: &socket,
        iface: "eth0",
        extra: &["--xdp-mode", &args.xdp_mode],
        timeout: Duration::from_secs(60),
        echo: true,
    })
    .context("start lb")
}

/// Shows `lb status` once a second until Ctrl-C, `--duration` or lb's exit,
/// and stops one checked target's service for `--outage-s` at the start.
fn live_view(lab: &Lab, lb: &mut LbProcess, args: &Args, stop: &AtomicBool) {
    let started = Instant::now();
    let until = args.duration.map(Duration::from_secs);
    let mut outage = if args.outage_s > 0 && !stop.load(Ordering::SeqCst) {
        start_outage(lab, lb, Duration::from_secs(args.outage_s))
    } else {
        None
    };
    eprintln!("lab: live counters from `lb status` every second; Ctrl-C stops");
    let mut view = View::default();
    while !stop.load(Ordering::SeqCst) && until.is_none_or(|d| started.elapsed() < d) {
        if !lb.running() {
            eprintln!("lab: lb exited on its own");
            break;
        }
        if let Some(o) = outage.take_if(|o| Instant::now() >= o.ends) {
            end_outage(lab, &o, args.outage_s);
        }
        view.show(lb, started);
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Stops lb, removes its data plane and the lab: lb's exit decides ours.
fn finish(lab: Lab, lb: LbProcess) -> Result<()> {
    eprintln!("lab: stopping lb and removing its data plane (lb detach)");
    let detached = lb.detach_after_stop();
    let status = detached.as_ref().map(|(status, _)| *status);
    if let Ok((_, said)) = &detached {
        eprint!("lab: {said}");
    }
    drop(lab);
    eprintln!("lab: removed");
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("lb exited with {s}"),
        Err(e) => bail!("stopping lb: {e}"),
    }
}

/// What the live view showed last.
#[derive(Default)]
struct View {
    /// The counters of the last line, `passed` aside.
    last: String,
    last_shown: u64,
    last_health: Vec<(String, String)>,
}

impl View {
    /// A line when something changed, and every 10 s anyway; the tables of
    /// the groups whose health changed.
    fn show(&mut self, lb: &LbProcess, started: Instant) {
        // The health probes' answers pass to lb's kernel all the time:
        // `passed` alone moving is no change.
        let (line, key, health) = match lb.report() {
            Ok(status) => (
                summarize(&status, &[]),
                summarize(&status, &["passed"]),
                health_states(&status),
            ),
            Err(e) => (
                format!("lb status: {e}"),
                String::new(),
                self.last_health.clone(),
            ),
        };
        let secs = started.elapsed().as_secs();
        if key != self.last || secs >= self.last_shown + 10 {
            println!("[{secs:>4}s] {line}");
            self.last = key;
            self.last_shown = secs;
        }
        for (group, states) in &health {
            let before = self.last_health.iter().find(|(g, _)| g == group);
            if before.is_some_and(|(_, b)| b != states) {
                match lb.status_command(Some(group), false) {
                    Ok(table) => print!("\n$ lb status {group}\n{table}"),
                    Err(e) => println!("lb status {group}: {e}"),
                }
            }
        }
        self.last_health = health;
    }
}

fn burst_listener(lab: &Lab, policy: &Policy, listener: &Listener, args: &Args) -> Result<()> {
    let (proto, count) = match listener.protocol {
        ListenerProtocol::Tcp => (Proto::Tcp, args.tcp),
        ListenerProtocol::Udp => (Proto::Udp, args.udp),
    };
    let src: IpAddr = if listener.vip.is_ipv6() {
        topo::client6(0).into()
    } else {
        topo::client4(0).into()
    };
    // A range's first port (the lab server answers on the ports it is told).
    let dst = SocketAddr::new(listener.vip, listener.port.first);
    let answers = lab.run_in(Node::Client, || {
        client::burst(
            proto,
            src,
            None,
            dst,
            count,
            Instant::now() + Duration::from_secs(60),
        )
    });
    let tally = Tally::of(&answers);
    println!();
    println!(
        "listener {} ({proto} {dst}): {} requests from {src}, {} answered, {} failed",
        listener.name,
        answers.len(),
        tally.ok(),
        tally.failed
    );
    for e in &tally.errors {
        println!("  error: {e}");
    }
    let Some(group) = policy
        .target_groups
        .iter()
        .find(|g| g.name == listener.target_group)
    else {
        println!("  (no target group {})", listener.target_group);
        return Ok(());
    };
    print_shares(group, &tally);
    println!();
    Ok(())
}

/// What each target of the group received against its weight ratio, and
/// any answer from outside the group.
fn print_shares(group: &TargetGroup, tally: &Tally) {
    let weights: Vec<u16> = group.targets.iter().map(|t| t.weight).collect();
    let ratios = stats::ratios(&weights);
    println!(
        "  {:<6} {:<14} {:>6} {:>8} {:>9} {:>8}",
        "target", "ip", "weight", "ratio", "received", "share"
    );
    let total = tally.ok().max(1) as f64;
    for (t, ratio) in group.targets.iter().zip(ratios) {
        let name = topo::target_by_ip(t.ip).map_or("?", |s| s.name);
        let got = tally.count(name);
        println!(
            "  {:<6} {:<14} {:>6} {:>7.1}% {:>9} {:>7.1}%",
            name,
            t.ip.to_string(),
            t.weight,
            ratio * 100.0,
            got,
            got as f64 / total * 100.0
        );
    }
    let strangers: Vec<_> = tally
        .by_name
        .iter()
        .filter(|(name, _)| {
            !group
                .targets
                .iter()
                .any(|t| topo::target_by_ip(t.ip).is_some_and(|s| &s.name == name))
        })
        .collect();
    if !strangers.is_empty() {
        println!("  answers from outside the group: {strangers:?}");
    }
}

/// How long to wait for the first health verdicts before the burst: a
/// check needs `healthy_threshold` probes an interval apart (2 x 2 s in
/// examples/lab.yaml); this leaves room for slower policies.
const VERDICTS_WITHIN: Duration = Duration::from_secs(60);

/// Waits (bounded, and no longer than Ctrl-C) until no target is
/// `initial`, so that the burst meets the targets' verdicts rather than the
/// start-up.
fn wait_for_verdicts(lb: &LbProcess, stop: &AtomicBool) {
    let initial = |st: &Status| -> Vec<String> {
        st.0["target_groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| {
                g["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["state"] == "initial")
                    .map(|t| format!("{} {}", g["name"].as_str().unwrap_or("?"), name_of(t)))
            })
            .collect()
    };
    match lb.report() {
        Ok(st) if initial(&st).is_empty() => return,
        Ok(st) => eprintln!(
            "lab: waiting for the first health verdicts ({} initial)",
            initial(&st).join(", ")
        ),
        Err(e) => {
            eprintln!("lab: lb status: {e}");
            return;
        }
    }
    match lb.wait_for(VERDICTS_WITHIN, "first health verdicts", |st| {
        (initial(st).is_empty() || stop.load(Ordering::SeqCst)).then_some(())
    }) {
        Ok(w) => {
            for (group, states) in health_states(&w.status) {
                eprintln!("lab: health of {group}: {states}");
            }
        }
        Err(e) => eprintln!("lab: {e}"),
    }
}

/// A target whose service the demo stopped.
struct Outage {
    node: Node,
    name: &'static str,
    port: u16,
    ends: Instant,
}

/// Stops the service of one target of the first group with health checks
/// and a listener (its second target, or its only one): the port its check
/// watches, which for a TCP check on the listener port is the service.
fn start_outage(lab: &Lab, lb: &LbProcess, length: Duration) -> Option<Outage> {
    let status = lb.report().ok()?;
    let groups = status.0["target_groups"].as_array()?;
    let Some(group) = groups.iter().find(|g| {
        g["health_check"].is_object()
            && g["health_check"]["enabled"] != false
            && g["listener"].is_string()
    }) else {
        println!("lab: no target group has health checks: no outage in this demo");
        return None;
    };
    let targets = group["targets"].as_array()?;
    let target = targets.get(1).or(targets.first())?;
    let ip: std::net::IpAddr = target["ip"].as_str()?.parse().ok()?;
    let index = topo::TARGETS
        .iter()
        .position(|t| t.v4 == ip || t.v6 == ip)?;
    let spec = &topo::TARGETS[index];
    let listener = group["listener"].as_str()?;
    let listener_port = status.0["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == listener)?["port"]
        .as_u64()?;
    let port = u16::try_from(target["monitor_port"].as_u64().unwrap_or(listener_port)).ok()?;
    let node = Node::Target(index);
    match lab.stop_port(node, port) {
        Ok(()) => {
            println!(
                "lab: stopping {}'s service (port {port}) for {} s: watch it turn unhealthy in group {}",
                spec.name,
                length.as_secs(),
                group["name"].as_str().unwrap_or("?")
            );
            Some(Outage {
                node,
                name: spec.name,
                port,
                ends: Instant::now() + length,
            })
        }
        Err(e) => {
            println!("lab: could not stop {}'s port {port}: {e}", spec.name);
            None
        }
    }
}

/// Starts the stopped service again.
fn end_outage(lab: &Lab, o: &Outage, outage_s: u64) {
    match lab.start_port(o.node, o.port) {
        Ok(()) => println!(
            "lab: {}'s service (port {}) is back after {} s: watch it turn healthy",
            o.name, o.port, outage_s
        ),
        Err(e) => println!("lab: could not restart {}'s service: {e}", o.name),
    }
}

/// `t2` for a lab target, else its address.
fn name_of(target: &Value) -> String {
    let ip = target["ip"].as_str().unwrap_or("?");
    ip.parse()
        .ok()
        .and_then(topo::target_by_ip)
        .map_or_else(|| ip.to_owned(), |t| t.name.to_owned())
}

/// For every group with health checks: `t1=healthy t2=unhealthy ...`.
fn health_states(status: &Status) -> Vec<(String, String)> {
    status.0["target_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["health_check"].is_object())
        .map(|g| {
            let states = g["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{}={}", name_of(t), t["state"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(" ");
            let resort = if g["last_resort"] == true {
                " (last resort)"
            } else {
                ""
            };
            (
                g["name"].as_str().unwrap_or("?").to_owned(),
                format!("{states}{resort}"),
            )
        })
        .collect()
}

/// One line: the main counters (but `skip`), any other counter that is not
/// zero, packets and new flows per listener, then the health of checked
/// groups.
fn summarize(status: &Status, skip: &[&str]) -> String {
    let health: Vec<String> = health_states(status)
        .into_iter()
        .map(|(g, s)| format!("{g}: {s}"))
        .collect();
    let mut line = counters_line(&status.0, skip);
    if !health.is_empty() {
        line.push_str(" | ");
        line.push_str(&health.join(" | "));
    }
    line
}

/// The main counters, any other counter that is not zero, then packets and
/// new flows per listener.
fn counters_line(status: &serde_json::Value, skip: &[&str]) -> String {
    const MAIN: [&str; 5] = ["forwarded", "passed", "dropped", "malformed", "no_target"];
    let mut parts = Vec::new();
    if let Some(counters) = status.get("counters").and_then(|c| c.as_object()) {
        let main = MAIN.iter().filter(|k| !skip.contains(k)).map(|k| {
            format!(
                "{k}={}",
                counters.get(*k).unwrap_or(&serde_json::Value::Null)
            )
        });
        let others = counters
            .iter()
            .filter(|(k, v)| !MAIN.contains(&k.as_str()) && v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k}={v}"));
        parts.push(main.chain(others).collect::<Vec<_>>().join(" "));
    }
    let listeners = status.get("listeners").and_then(|l| l.as_array());
    for l in listeners.into_iter().flatten() {
        let field = |k: &str| l.get(k).cloned().unwrap_or(serde_json::Value::Null);
        parts.push(format!(
            "{} {} pkts {} flows",
            l.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
            field("packets"),
            field("new_flows")
        ));
    }
    parts.join(" | ")
}
