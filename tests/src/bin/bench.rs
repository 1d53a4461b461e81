//! `lb-bench`: ns/packet of the `lb` XDP program beside a minimal MAC-swap
//! XDP_TX program, measured in the same run with BPF_PROG_TEST_RUN, so the
//! ratio means something on a shared, noisy machine. `cargo xtask bench` runs
//! it (as root).
//!
//! Method:
//! - established flow: one frame repeated `--repeat` times in one test run
//!   (the first repetition creates the flow, all others find it); the kernel
//!   reports the mean time per repetition.
//! - new flow: `--new-flows` distinct frames (distinct source ports), each in
//!   its own test run of one repetition, so every run misses the flow table;
//!   the baseline runs the same frames the same way, so the fixed cost of a
//!   one-repetition test run is in both.
//!
//! Each figure is measured `--runs` times, interleaving `lb` and the baseline;
//! min and median are reported, and the ratio of the medians.
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
"#;

struct Args {
    repeat: u32,
    runs: usize,
    new_flows: u16,
}

fn args() -> Result<Args> {
    let mut a = Args {
        repeat: 1_000_000,
        runs: 5,
        new_flows: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("missing value");
        match flag.as_str() {
            "--repeat" => a.repeat = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--new-flows" => a.new_flows = value()?.parse()?,
            "--quick" => {
                a.repeat = 200_000;
                a.runs = 3;
                a.new_flows = 5_000;
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn lb_dataplane() -> Result<Dataplane> {
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
    };
    let plan = policy::compile::compile(&policy, &observed)?;
    let mut dp = Dataplane::load(&LoadOptions {
        flow_table_size: 1 << 20,
    })?;
    dp.apply(&plan)?;
    Ok(dp)
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
    let mut dp = lb_dataplane().context("loading lb (run as root)")?;
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
            "not a listener (pass)",
            Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 22, ACK).build(),
            false,
        ),
    ];

    let mut rows = Vec::new();
    for (name, frame, forwarded) in &fixtures {
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

    for (name, v6) in [("tcp4 new flow", false), ("tcp6 new flow", true)] {
        let (mut l, mut b) = (Vec::new(), Vec::new());
        for run_index in 0..args.runs {
            let (mut lsum, mut bsum) = (0.0, 0.0);
            for i in 0..args.new_flows {
                // A fresh client address per run keeps every frame a new flow.
                let src = if v6 {
                    format!("fd00:4::{run_index:x}")
                } else {
                    format!("10.0.4.{run_index}")
                };
                let dst = if v6 { "fd00:3::49" } else { "10.0.3.49" };
                let frame = Frame::tcp(&src, 1024 + i, dst, 80, SYN).build();
                let (verdict, d) = run(dp.program_mut(), &frame, 1)?;
                anyhow::ensure!(verdict == 3, "{name}: verdict {verdict}");
                lsum += ns(d);
                bsum += ns(run(base, &frame, 1)?.1);
            }
            l.push(lsum / args.new_flows as f64);
            b.push(bsum / args.new_flows as f64);
        }
        rows.push(Row {
            name: name.to_string(),
            lb: min_median(l),
            base: min_median(b),
            goal: Some(4.0),
        });
    }

    println!(
        "BPF_PROG_TEST_RUN, {} repetitions x {} runs per established figure, {} new flows x {} runs per new-flow figure",
        args.repeat, args.runs, args.new_flows, args.runs
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
