//! ns/packet of the `lb` XDP program beside a minimal MAC-swap XDP_TX
//! program, measured in the same run with BPF_PROG_TEST_RUN, so that the
//! ratio means something on a shared, noisy machine.
//!
//! - Established flow: one frame repeated `repeat` times in one test run
//!   (the flow is created before the timed runs, so every repetition finds
//!   it); the kernel reports the mean time per repetition.
//! - New flow: the benchmark build of the same pipeline (`lb_new_flow`),
//!   which increments the frame's source port after each repetition, so
//!   every repetition is a new flow (flow-table miss, choice of target,
//!   insert; the 1M-entry flow table is filled first, so every insert
//!   evicts: the steady state of a busy load balancer). Each run starts
//!   from a source address of its own. The baseline runs the same frame.
//!
//! Each figure is measured `runs` times, interleaving `lb` and the baseline;
//! min and median are reported, and the ratio of the medians.
use std::rc::Rc;

use anyhow::{Context as _, Result, ensure};
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};
use lb_user::dataplane::{Dataplane, LoadOptions};

use crate::{
    ALGORITHMS, Object, POLICY, Settings, XDP_PASS, XDP_TX, counter, load, load_macswap, load_with,
    macswap,
    plot::{self, Bars, Series},
    report::{Figure, Section, fmt_ns},
    stats::{self, min_median},
    test_run,
};

/// Established-flow goal: at most this many times the MAC-swap program.
pub const ESTABLISHED_GOAL: f64 = 2.0;
/// New-flow goal.
pub const NEW_FLOW_GOAL: f64 = 4.0;
/// The flow tables of `lb` (the default `max_flows`).
const FLOW_TABLE_SIZE: u32 = lb_common::DEFAULT_FLOW_TABLE_SIZE;

/// What a fixture measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every repetition finds the flow (forwarded), in the flow cache.
    Established,
    /// As `Established` with the flow cache off: every repetition looks the
    /// flow up in the flow table (what a packet whose slot another flow
    /// holds costs). No goal: it shows what the cache saves.
    EstablishedUncached,
    /// Every repetition is a new flow (forwarded; the `lb_new_flow` build).
    NewFlow,
    /// Not for a listener: passed to the kernel.
    Passed,
}

/// One data-plane fixture.
pub struct Fixture {
    pub name: String,
    /// The algorithm of the listener it hits (`-` when none).
    pub algorithm: &'static str,
    pub kind: Kind,
    /// The frame of run `run` (new-flow fixtures: a source of its own per
    /// run, so no run meets the flows of an earlier one).
    pub frame: Rc<dyn Fn(usize) -> Vec<u8>>,
}

fn fixed(frame: Vec<u8>) -> Rc<dyn Fn(usize) -> Vec<u8>> {
    Rc::new(move |_| frame.clone())
}

/// Every fixture: each algorithm of [`ALGORITHMS`] with an established and a
/// new TCP/IPv4 flow, then the protocol variants under `hash` and a packet
/// for no listener.
pub fn fixtures() -> Vec<Fixture> {
    let mut f = per_algorithm();
    f.extend(variants());
    f
}

/// An established and a new TCP/IPv4 flow for each algorithm.
fn per_algorithm() -> Vec<Fixture> {
    let mut f = Vec::new();
    for (i, &(algorithm, port)) in ALGORITHMS.iter().enumerate() {
        f.push(Fixture {
            name: format!("tcp4 {algorithm} established"),
            algorithm,
            kind: Kind::Established,
            frame: fixed(Frame::tcp("10.0.3.100", 40000, "10.0.3.49", port, ACK).build()),
        });
        f.push(Fixture {
            name: format!("tcp4 {algorithm} new flow"),
            algorithm,
            kind: Kind::NewFlow,
            frame: Rc::new(move |run| {
                Frame::tcp(
                    &format!("10.{}.{run}.1", 100 + i),
                    1,
                    "10.0.3.49",
                    port,
                    SYN,
                )
                .build()
            }),
        });
    }
    f
}

/// The protocol variants under `hash`, the flow cache off, and a packet for
/// no listener.
fn variants() -> [Fixture; 8] {
    [
        Fixture {
            name: "tcp4 hash established, flow cache off".into(),
            algorithm: "hash",
            kind: Kind::EstablishedUncached,
            frame: fixed(Frame::tcp("10.0.3.100", 40003, "10.0.3.49", 80, ACK).build()),
        },
        Fixture {
            name: "udp4 established".into(),
            algorithm: "hash",
            kind: Kind::Established,
            frame: fixed(Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, b"query").build()),
        },
        Fixture {
            name: "tcp4 vlan established".into(),
            algorithm: "hash",
            kind: Kind::Established,
            frame: fixed(
                Frame::tcp("10.0.3.100", 40001, "10.0.3.49", 80, ACK)
                    .with_vlan(42)
                    .build(),
            ),
        },
        Fixture {
            name: "tcp4 options established".into(),
            algorithm: "hash",
            kind: Kind::Established,
            frame: fixed(
                Frame::tcp("10.0.3.100", 40002, "10.0.3.49", 80, ACK)
                    .with_ip_options(&[1, 1, 1, 1, 1, 1, 1, 1])
                    .build(),
            ),
        },
        Fixture {
            name: "tcp6 established".into(),
            algorithm: "hash",
            kind: Kind::Established,
            frame: fixed(Frame::tcp("fd00:3::100", 40000, "fd00:3::49", 80, ACK).build()),
        },
        Fixture {
            name: "udp4 new flow".into(),
            algorithm: "hash",
            kind: Kind::NewFlow,
            frame: Rc::new(|run| {
                Frame::udp(&format!("10.90.{run}.1"), 1, "10.0.3.49", 53, b"query").build()
            }),
        },
        Fixture {
            name: "tcp6 new flow".into(),
            algorithm: "hash",
            kind: Kind::NewFlow,
            frame: Rc::new(|run| {
                Frame::tcp(&format!("fd00:4:{run}::1"), 1, "fd00:3::49", 80, SYN).build()
            }),
        },
        Fixture {
            name: "not a listener (pass)".into(),
            algorithm: "-",
            kind: Kind::Passed,
            frame: fixed(Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 22, ACK).build()),
        },
    ]
}

/// One measured fixture.
pub struct Row {
    pub name: String,
    pub algorithm: &'static str,
    pub kind: Kind,
    pub lb: (f64, f64),
    pub base: (f64, f64),
    /// Median over the runs of `lb` / MAC-swap in the same run (the two
    /// calls are back to back, so they share the VM's speed of the moment).
    pub paired: f64,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.paired
    }

    pub fn goal(&self) -> Option<f64> {
        match self.kind {
            Kind::Established => Some(ESTABLISHED_GOAL),
            Kind::NewFlow => Some(NEW_FLOW_GOAL),
            Kind::Passed | Kind::EstablishedUncached => None,
        }
    }
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Runs every fixture `settings` wants.
pub fn measure(settings: &Settings) -> Result<Vec<Row>> {
    let mut programs = Programs::load()?;
    let mut rows = Vec::new();
    for f in fixtures().into_iter().filter(|f| settings.wants(&f.name)) {
        let (l, b) = match f.kind {
            Kind::Established | Kind::EstablishedUncached | Kind::Passed => {
                programs.established(&f, settings)?
            }
            Kind::NewFlow => programs.new_flows(&f, settings)?,
        };
        rows.push(Row {
            name: f.name,
            algorithm: f.algorithm,
            kind: f.kind,
            lb: min_median(&l),
            base: min_median(&b),
            paired: stats::paired_ratio(&l, &b),
        });
    }
    Ok(rows)
}

/// The programs the fixtures run: `lb`, its new-flow build, `lb` with the
/// flow cache off, and the MAC-swap baseline.
struct Programs {
    lb: Dataplane,
    new_flow: Dataplane,
    uncached: Dataplane,
    baseline: aya::Ebpf,
}

impl Programs {
    fn load() -> Result<Programs> {
        let lb = load(lb_user::EBPF_LB, "lb", POLICY, FLOW_TABLE_SIZE)
            .context("loading lb (run as root)")?;
        let mut new_flow = load(
            Object::read(Object::LB_NEW_FLOW)?.bytes(),
            "lb_new_flow",
            POLICY,
            FLOW_TABLE_SIZE,
        )?;
        let uncached = load_with(
            lb_user::EBPF_LB,
            "lb",
            POLICY,
            &LoadOptions {
                flow_table_size: FLOW_TABLE_SIZE,
                flow_cache: false,
            },
        )?;
        let baseline = load_macswap()?;
        // New flows are measured in the steady state of a busy load balancer:
        // the flow table is full and every insert evicts. Fill it first
        // (untimed), from sources no fixture uses.
        let fill = Frame::tcp("10.250.0.1", 1, "10.0.3.49", 80, SYN).build();
        test_run(new_flow.program_mut(), &fill, FLOW_TABLE_SIZE)?;
        Ok(Programs {
            lb,
            new_flow,
            uncached,
            baseline,
        })
    }

    /// An established (or passed) fixture: ns/packet of `lb` and of the
    /// baseline in each run.
    fn established(&mut self, f: &Fixture, settings: &Settings) -> Result<(Vec<f64>, Vec<f64>)> {
        let dp = if f.kind == Kind::EstablishedUncached {
            &mut self.uncached
        } else {
            &mut self.lb
        };
        let base = macswap(&mut self.baseline);
        let frame = (f.frame)(0);
        let (verdict, _, _) = test_run(dp.program_mut(), &frame, 1)?; // creates the flow
        let expect = if f.kind == Kind::Passed {
            XDP_PASS
        } else {
            XDP_TX
        };
        ensure!(
            verdict == expect,
            "{}: verdict {verdict}, expected {expect}",
            f.name
        );
        // One untimed pair first: the fill of the new-flow tables just
        // before leaves the caches and TLB cold for the first fixture, which
        // would read slower.
        test_run(dp.program_mut(), &frame, settings.repeat)?;
        test_run(base, &frame, settings.repeat)?;
        let (mut l, mut b) = (Vec::new(), Vec::new());
        for _ in 0..settings.runs {
            l.push(ns(test_run(dp.program_mut(), &frame, settings.repeat)?.1));
            b.push(ns(test_run(base, &frame, settings.repeat)?.1));
        }
        Ok((l, b))
    }

    /// A new-flow fixture: ns/packet of the new-flow build and of the
    /// baseline in each run; every repetition must have been a new flow.
    fn new_flows(&mut self, f: &Fixture, settings: &Settings) -> Result<(Vec<f64>, Vec<f64>)> {
        let base = macswap(&mut self.baseline);
        let before = counter(&self.new_flow, Counter::NewFlow)?;
        let (mut l, mut b) = (Vec::new(), Vec::new());
        for run in 0..settings.runs {
            let frame = (f.frame)(run);
            let (verdict, d, _) = test_run(
                self.new_flow.program_mut(),
                &frame,
                settings.new_flow_repeat,
            )?;
            ensure!(verdict == XDP_TX, "{}: verdict {verdict}", f.name);
            l.push(ns(d));
            b.push(ns(test_run(base, &frame, settings.new_flow_repeat)?.1));
        }
        let new_flows = counter(&self.new_flow, Counter::NewFlow)? - before;
        let expected = settings.new_flow_repeat as u64 * settings.runs as u64;
        ensure!(
            new_flows == expected,
            "{}: {new_flows} new flows, expected {expected}",
            f.name
        );
        Ok((l, b))
    }
}

/// The worst (highest ratio) row of `kind`.
fn worst(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.kind == kind)
        .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
}

/// The report section; writes `ns_per_packet.svg` into `dir`.
pub fn section(settings: &Settings, rows: &[Row], dir: &std::path::Path) -> Result<Section> {
    let mut s = Section::new("Data plane: ns/packet (BPF_PROG_TEST_RUN)");
    s.line(format!(
        "Each figure: {} repetitions per test run ({} for new flows), {} runs, `lb` and the MAC-swap XDP_TX program interleaved; min and median of the kernel's mean time per repetition; ratio = the median over the runs of `lb` / MAC-swap in the same run (each pair runs back to back, at the same speed of the VM). Established flow: the flow exists before the timed runs (created by the fixture's packet, a non-SYN, so it is in the flow cache and every timed repetition is a cache hit: README \"Flow cache\"). New flow: the `lb_new_flow` build, whose source port changes every repetition (flow-table miss, choice, insert into a 1M-entry table that was filled before the timed runs, so every insert evicts). Established flow, flow cache off: the same kind of packet through a second `lb` loaded with the flow cache off, so every repetition looks the flow up in the flow table.",
        settings.repeat, settings.new_flow_repeat, settings.runs
    ));
    let table: Vec<Vec<String>> = rows.iter().map(table_row).collect();
    s.table(
        &[
            "fixture",
            "algorithm",
            "lb min",
            "lb median",
            "MAC-swap min",
            "MAC-swap median",
            "ratio",
            "goal",
            "met?",
        ],
        &table,
    );
    figures(&mut s, rows);
    if !rows.is_empty() {
        let name = "ns_per_packet.svg";
        plot_medians(&dir.join(name), rows)?;
        s.plots.push(name.into());
    }
    Ok(s)
}

/// A fixture's row of the table.
fn table_row(r: &Row) -> Vec<String> {
    let goal = r.goal();
    vec![
        r.name.clone(),
        r.algorithm.into(),
        fmt_ns(r.lb.0),
        fmt_ns(r.lb.1),
        fmt_ns(r.base.0),
        fmt_ns(r.base.1),
        format!("{:.2}x", r.ratio()),
        goal.map_or_else(String::new, |g| format!("<= {g}x")),
        goal.map_or_else(String::new, |g| {
            if r.ratio() <= g { "met" } else { "not met" }.into()
        }),
    ]
}

/// The summary's figures: the worst established and new flow against
/// their goals, and the flow cache off.
fn figures(s: &mut Section, rows: &[Row]) {
    for (kind, what, goal) in [
        (Kind::Established, "established flow", ESTABLISHED_GOAL),
        (Kind::NewFlow, "new flow", NEW_FLOW_GOAL),
    ] {
        if let Some(w) = worst(rows, kind) {
            s.figures.push(Figure::goal(
                format!("{what}: lb / MAC-swap ns/packet (worst: {})", w.name),
                format!(
                    "{:.2}x ({} vs {})",
                    w.ratio(),
                    fmt_ns(w.lb.1),
                    fmt_ns(w.base.1)
                ),
                format!("<= {goal}x"),
                w.ratio() <= goal,
            ));
        }
    }
    // What the flow cache saves: the same established packet through the
    // flow table.
    if let Some(r) = rows.iter().find(|r| r.kind == Kind::EstablishedUncached) {
        s.figures.push(Figure::info(
            "established flow, flow cache off: lb / MAC-swap ns/packet",
            format!(
                "{:.2}x ({} vs {})",
                r.ratio(),
                fmt_ns(r.lb.1),
                fmt_ns(r.base.1)
            ),
        ));
    }
}

/// The medians of `lb` and of the baseline, fixture by fixture.
fn plot_medians(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    plot::bars(
        path,
        &Bars {
            title: "ns/packet (median): lb vs MAC-swap, same run",
            y_label: "ns/packet",
            categories: rows.iter().map(|r| r.name.clone()).collect(),
            series: vec![
                Series {
                    name: "lb",
                    values: rows.iter().map(|r| r.lb.1).collect(),
                },
                Series {
                    name: "MAC-swap",
                    values: rows.iter().map(|r| r.base.1).collect(),
                },
            ],
            references: vec![],
        },
    )
}
