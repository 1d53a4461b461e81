//! `lb-bench`: ns/packet of the `lb` XDP program beside a minimal MAC-swap
//! XDP_TX program, measured in the same run with BPF_PROG_TEST_RUN, so the
//! ratio means something on a shared, noisy machine. `cargo xtask bench` runs
//! it (as root).
//!
//! Method:
//! - established flow: one frame repeated `--repeat` times in one test run
//!   (the first repetition creates the flow, all others find it); the kernel
//!   reports the mean time per repetition.
//! - new flow: the benchmark build of the same pipeline (`lb-new-flow`), which
//!   increments the frame's source port after each repetition, so every
//!   repetition is a new flow (flow-table miss, hash, table lookup, insert; the
//!   1M-entry flow table fills and then evicts). The baseline runs the same
//!   frame the same way.
//!
//! Each figure is measured `--runs` times, interleaving `lb` and the baseline;
//! min and median are reported, and the ratio of the medians.
//!
//! Options: `--repeat N`, `--runs N`, `--quick`, and `--only TEXT` (only the
//! fixtures whose name contains TEXT, e.g. under `perf record`).
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_tests::packets::{Frame, LB_MAC, tcp_flags::*};
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    plan::Observed,
    policy,
};

const POLICY: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
  - { name: rr, vip: 10.0.3.49, protocol: tcp, port: 8080, target_group: rr }
  - { name: lc, vip: 10.0.3.49, protocol: tcp, port: 8081, target_group: lc }
target_groups:
  - name: web
    protocol: tcp
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
  - name: dns
    protocol: udp
    targets: [ { ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13 } ]
  - name: web6
    protocol: tcp
    targets: [ { ip: "fd00:3::11" }, { ip: "fd00:3::12" }, { ip: "fd00:3::13" } ]
  - name: rr
    protocol: tcp
    algorithm: round_robin
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
  - name: lc
    protocol: tcp
    algorithm: least_connections
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
"#;

struct Args {
    repeat: u32,
    runs: usize,
    /// Only the fixtures whose name contains this (for profiling one path).
    only: Option<String>,
}

impl Args {
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| name.contains(only))
    }
}

fn args() -> Result<Args> {
    let mut a = Args {
        repeat: 1_000_000,
        runs: 5,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("missing value");
        match flag.as_str() {
            "--repeat" => a.repeat = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--only" => a.only = Some(value()?),
            "--quick" => {
                a.repeat = 200_000;
                a.runs = 3;
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn lb_dataplane(object: &[u8], program: &'static str) -> Result<Dataplane> {
    let policy = policy::parse("bench.yaml", POLICY)?;
    let neighbors = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter().map(|t| (t.ip, [2, 0, 0, 0, 0, 0x11])))
        .collect();
    let observed = Observed {
        iface_mac: LB_MAC,
        iface_nets: vec![],
        neighbors,
        health: Default::default(),
    };
    let plan = policy::compile::compile(&policy, &observed)?;
    let mut dp = Dataplane::load_object(
        object,
        program,
        &LoadOptions {
            flow_table_size: 1 << 20,
        },
    )?;
    dp.apply(&plan)?;
    Ok(dp)
}

fn new_flow_count(dp: &Dataplane) -> Result<u64> {
    Ok(dp
        .counters()?
        .into_iter()
        .find(|(c, _)| *c == lb_common::Counter::NewFlow)
        .map_or(0, |(_, v)| v))
}

fn run(program: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    Ok((r.return_value, r.duration))
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

struct Row {
    name: String,
    lb: (f64, f64),
    base: (f64, f64),
    goal: Option<f64>,
}

fn main() -> Result<()> {
    let args = args()?;
    let mut dp = lb_dataplane(lb_user::EBPF_LB, "lb").context("loading lb (run as root)")?;
    let mut new_flow = lb_dataplane(lb_user::EBPF_LB_NEW_FLOW, "lb_new_flow")?;
    let mut baseline = Ebpf::load(lb_user::EBPF_MACSWAP)?;
    let base: &mut Xdp = baseline
        .program_mut("macswap")
        .context("macswap program")?
        .try_into()?;
    base.load()?;

    let fixtures: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "tcp4 established",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 80, ACK).build(),
            true,
        ),
        (
            "udp4 established",
            Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, b"query").build(),
            true,
        ),
        (
            "tcp4 vlan established",
            Frame::tcp("10.0.3.100", 40001, "10.0.3.49", 80, ACK)
                .with_vlan(42)
                .build(),
            true,
        ),
        (
            "tcp4 options established",
            Frame::tcp("10.0.3.100", 40002, "10.0.3.49", 80, ACK)
                .with_ip_options(&[1, 1, 1, 1, 1, 1, 1, 1])
                .build(),
            true,
        ),
        (
            "tcp6 established",
            Frame::tcp("fd00:3::100", 40000, "fd00:3::49", 80, ACK).build(),
            true,
        ),
        (
            "tcp4 rr established",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 8080, ACK).build(),
            true,
        ),
        (
            "tcp4 lc established",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.49", 8081, ACK).build(),
            true,
        ),
        (
            "not a listener (pass)",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 22, ACK).build(),
            false,
        ),
    ];

    let mut rows = Vec::new();
    for (name, frame, forwarded) in fixtures.iter().filter(|f| args.wants(f.0)) {
        let (verdict, _) = run(dp.program_mut(), frame, 1)?; // create the flow
        anyhow::ensure!(
            (verdict == 3) == *forwarded,
            "{name}: unexpected verdict {verdict}"
        );
        let (mut l, mut b) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            l.push(ns(run(dp.program_mut(), frame, args.repeat)?.1));
            b.push(ns(run(base, frame, args.repeat)?.1));
        }
        rows.push(Row {
            name: name.to_string(),
            lb: min_median(l),
            base: min_median(b),
            goal: forwarded.then_some(2.0),
        });
    }

    // (name, IPv6, UDP, destination port, IPv4 source prefix 10.X)
    for (name, v6, udp, port, prefix) in [
        ("tcp4 new flow", false, false, 80, 100),
        ("udp4 new flow", false, true, 53, 101),
        ("tcp6 new flow", true, false, 80, 102),
        ("tcp4 rr new flow", false, false, 8080, 104),
        ("tcp4 lc new flow", false, false, 8081, 105),
    ]
    .into_iter()
    .filter(|f| args.wants(f.0))
    {
        let (mut l, mut b) = (Vec::new(), Vec::new());
        let before = new_flow_count(&new_flow)?;
        for run_index in 0..args.runs {
            // Each run starts from its own source prefix, so no run meets the
            // flows of an earlier one.
            let (src, dst) = if v6 {
                (
                    format!("fd00:4:{}:{run_index}::", 1 + udp as u8),
                    "fd00:3::49",
                )
            } else {
                (format!("10.{prefix}.{run_index}.0"), "10.0.3.49")
            };
            let frame = if udp {
                Frame::udp(&src, 1, dst, 53, b"query").build()
            } else {
                Frame::tcp(&src, 1, dst, port, SYN).build()
            };
            let (verdict, d) = run(new_flow.program_mut(), &frame, args.repeat)?;
            anyhow::ensure!(verdict == 3, "{name}: verdict {verdict}");
            l.push(ns(d));
            b.push(ns(run(base, &frame, args.repeat)?.1));
        }
        let new_flows = new_flow_count(&new_flow)? - before;
        let expected = args.repeat as u64 * args.runs as u64;
        anyhow::ensure!(
            new_flows == expected,
            "{name}: {new_flows} new flows, expected {expected}"
        );
        rows.push(Row {
            name: name.to_string(),
            lb: min_median(l),
            base: min_median(b),
            goal: Some(4.0),
        });
    }

    println!(
        "BPF_PROG_TEST_RUN, {} repetitions x {} runs per figure (min, median); ratio = lb median / macswap median",
        args.repeat, args.runs
    );
    println!(
        "{:<26} {:>10} {:>10} {:>12} {:>12} {:>7} {:>6}",
        "fixture", "lb min", "lb median", "macswap min", "macswap med", "ratio", "goal"
    );
    for r in &rows {
        let ratio = r.lb.1 / r.base.1;
        let goal = match r.goal {
            Some(g) => format!("{}{g}x", if ratio <= g { "<=" } else { "> " }),
            None => "-".into(),
        };
        println!(
            "{:<26} {:>8.1}ns {:>8.1}ns {:>10.1}ns {:>10.1}ns {:>6.2}x {:>6}",
            r.name, r.lb.0, r.lb.1, r.base.0, r.base.1, ratio, goal
        );
    }
    Ok(())
}
