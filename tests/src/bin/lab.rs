//! `lb-lab`: the lab demo behind `cargo xtask run`. Builds the namespace lab,
//! starts `lb run` in the load balancer's namespace, sends a burst of
//! requests to every listener of the policy from the client, prints what each
//! target answered against its weight ratio, then shows `lb status` once a
//! second until Ctrl-C (or `--duration`), and removes everything.
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
    stats, topo,
};
use lb_user::policy::{Listener, ListenerProtocol, Policy};

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

    eprintln!("lab: starting lb (xdp mode {})", args.xdp_mode);
    let socket = lab.dir().join("lb.sock");
    let config = std::fs::canonicalize(&args.config)?;
    let mut lb = LbProcess::start(
        &lab.ns(Node::Lb),
        &lab.options().lb_bin,
        &config,
        &socket,
        &["--iface", "eth0", "--xdp-mode", &args.xdp_mode],
        Duration::from_secs(60),
        true,
    )
    .context("start lb")?;

    for listener in &policy.listeners {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        burst_listener(&lab, &policy, listener, &args)?;
    }

    let started = Instant::now();
    let until = args.duration.map(Duration::from_secs);
    eprintln!("lab: live counters from `lb status` every second; Ctrl-C stops");
    let (mut last, mut last_shown) = (String::new(), 0);
    while !stop.load(Ordering::SeqCst) && until.is_none_or(|d| started.elapsed() < d) {
        if !lb.running() {
            eprintln!("lab: lb exited on its own");
            break;
        }
        // A line when something changed, and every 10 s anyway.
        let line = match lb.status() {
            Ok(status) => summarize(&status),
            Err(e) => format!("lb status: {e}"),
        };
        let secs = started.elapsed().as_secs();
        if line != last || secs >= last_shown + 10 {
            println!("[{secs:>4}s] {line}");
            last = line;
            last_shown = secs;
        }
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    eprintln!("lab: stopping lb");
    let status = lb.stop();
    drop(lab);
    eprintln!("lab: removed");
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("lb exited with {s}"),
        Err(e) => bail!("stopping lb: {e}"),
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
    let dst = SocketAddr::new(listener.vip, listener.port);
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
    println!();
    Ok(())
}

/// One line: the main counters, any other counter that is not zero, then
/// packets and new flows per listener.
fn summarize(status: &serde_json::Value) -> String {
    const MAIN: [&str; 5] = ["forwarded", "passed", "dropped", "malformed", "no_target"];
    let mut parts = Vec::new();
    if let Some(counters) = status.get("counters").and_then(|c| c.as_object()) {
        let main = MAIN.iter().map(|k| {
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
