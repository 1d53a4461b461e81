//! ns/packet of the `lb` XDP program and of the floor (main's design
//! before the flow table: `floor`) beside a minimal MAC-swap XDP_TX
//! program, all three measured in the same run with BPF_PROG_TEST_RUN, so
//! that the ratios mean something on a shared, noisy machine.
//!
//! - Established flow: one frame repeated `repeat` times in one test run
//!   (the flow is created before the timed runs, so every repetition finds
//!   it); the kernel reports the mean time per repetition.
//! - New flow: the benchmark builds of the same pipelines (`lb_new_flow`,
//!   `lru_new_flow`), which increment the frame's source port after each
//!   repetition, so every repetition is a new flow (flow-table miss, choice
//!   of target, insert into a table filled first with as many flows as it
//!   is sized for: the steady state of a busy load balancer). Each run
//!   starts from a source address of its own. The baseline runs the same
//!   frame.
//! - Host traffic: packets for the host, not a VIP, on a port a listener
//!   uses and on one no listener uses (passed to the kernel).
//!
//! Each figure is measured `runs` times, interleaving `lb`, the floor and
//! the baseline; min and median are reported, and the medians of the
//! ratios of each run.
use std::rc::Rc;

use anyhow::{Context as _, Result, ensure};
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    ALGORITHMS, Build, Design, POLICY, Settings, Subject, XDP_PASS, XDP_TX, load_macswap, macswap,
    memory::{self, Latency},
    plot::{self, Bars, Series},
    report::{Figure, Section, fmt_ns},
    stats::{self, min_median},
    test_run,
};

/// Established-flow goal: at most this many times the MAC-swap program.
pub const ESTABLISHED_GOAL: f64 = 2.0;
/// New-flow goal.
pub const NEW_FLOW_GOAL: f64 = 4.0;
/// Hot established flows must not regress against the floor: floor / lb
/// at least this (1.0 less the kernel's whole-ns resolution and the noise
/// of a shared VM: 1 ns of 40 is 2.5 %).
pub const HOT_GOAL: f64 = 0.95;
/// A new flow into a full 1M table: floor / lb at least this. Issue 18's
/// goal is about 230 ns on the Intel Xeon 2 vCPU machine where main's
/// design measured 898-917 ns in the same runs: 898 / 230 = 3.9.
pub const NEW_FLOW_GAIN_GOAL: f64 = 3.9;
/// Host traffic on a listener's port costs no more than on another port:
/// (lb / MAC-swap there) / (lb / MAC-swap on another port) at most this
/// (1.0 plus the noise of two fixtures measured a few seconds apart).
pub const HOST_PORT_GOAL: f64 = 1.10;
/// The flow tables of both designs (the default `max_flows`).
pub(crate) const FLOW_TABLE_SIZE: u32 = lb_common::DEFAULT_FLOW_TABLE_SIZE;

/// What a fixture measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every repetition finds the flow (forwarded).
    Established,
    /// Every repetition is a new flow (forwarded; the new-flow builds).
    NewFlow,
    /// For the host, not a VIP, on a port a listener uses: passed to the
    /// kernel once the listener lookup misses.
    HostListenerPort,
    /// For the host on a port no listener uses: passed to the kernel.
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

pub(crate) fn fixed(frame: Vec<u8>) -> Rc<dyn Fn(usize) -> Vec<u8>> {
    Rc::new(move |_| frame.clone())
}

/// Every fixture: each algorithm of [`ALGORITHMS`] with an established and a
/// new TCP/IPv4 flow, then the protocol variants under `hash` and host
/// traffic.
pub fn fixtures() -> Vec<Fixture> {
    let mut f = per_algorithm();
    f.extend(variants());
    f.extend(host());
    f
}

/// The packet that opens `frame`'s flow: for TCP, the frame with its flags
/// replaced by a SYN; anything else as it is.
pub(crate) fn opening(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let ethertype = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let l3 = if ethertype(12) == 0x8100 { 18 } else { 14 };
    let (proto, l4) = match ethertype(l3 - 2) {
        0x0800 => (frame[l3 + 9], l3 + (frame[l3] & 0x0f) as usize * 4),
        0x86dd => (frame[l3 + 6], l3 + 40),
        _ => return out,
    };
    if proto == 6 && out.len() > l4 + 13 {
        out[l4 + 13] = SYN;
    }
    out
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

/// The protocol variants under `hash`.
fn variants() -> [Fixture; 6] {
    [
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
    ]
}

/// Host traffic (10.0.3.2 is the load balancer's own address, not a VIP):
/// on TCP port 80, which the `web` listener uses, and on port 22, which no
/// listener uses.
fn host() -> [Fixture; 2] {
    [
        Fixture {
            name: "host, not a VIP, listener port (tcp 80)".into(),
            algorithm: "-",
            kind: Kind::HostListenerPort,
            frame: fixed(Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 80, ACK).build()),
        },
        Fixture {
            name: "host, other port (tcp 22)".into(),
            algorithm: "-",
            kind: Kind::Passed,
            frame: fixed(Frame::tcp("10.0.3.100", 40000, "10.0.3.2", 22, ACK).build()),
        },
    ]
}

/// One measured fixture: ns/packet of each run.
pub struct Row {
    pub name: String,
    pub algorithm: &'static str,
    pub kind: Kind,
    pub lb: Vec<f64>,
    pub floor: Vec<f64>,
    pub base: Vec<f64>,
}

impl Row {
    /// Median over the runs of `lb` / MAC-swap in the same run (the calls
    /// are back to back, so they share the VM's speed of the moment).
    pub fn ratio(&self) -> f64 {
        stats::paired_ratio(&self.lb, &self.base)
    }

    /// The same for the floor.
    pub fn floor_ratio(&self) -> f64 {
        stats::paired_ratio(&self.floor, &self.base)
    }

    /// Median over the runs of floor / `lb`: what the flow table gains.
    pub fn gain(&self) -> f64 {
        stats::paired_ratio(&self.floor, &self.lb)
    }

    pub fn goal(&self) -> Option<f64> {
        match self.kind {
            Kind::Established => Some(ESTABLISHED_GOAL),
            Kind::NewFlow => Some(NEW_FLOW_GOAL),
            Kind::Passed | Kind::HostListenerPort => None,
        }
    }

    fn median(v: &[f64]) -> f64 {
        stats::median(v)
    }
}

pub(crate) fn ns(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Runs every fixture `settings` wants.
pub fn measure(settings: &Settings) -> Result<Vec<Row>> {
    let mut programs = Programs::load()?;
    let mut rows = Vec::new();
    for f in fixtures().into_iter().filter(|f| settings.wants(&f.name)) {
        let [lb, floor, base] = match f.kind {
            Kind::NewFlow => programs.new_flows(&f, settings)?,
            _ => programs.established(&f, settings)?,
        };
        rows.push(Row {
            name: f.name,
            algorithm: f.algorithm,
            kind: f.kind,
            lb,
            floor,
            base,
        });
    }
    Ok(rows)
}

/// The programs the fixtures run: `lb` and its new-flow build, the same
/// two of the floor, and the MAC-swap baseline.
struct Programs {
    /// `lb`, then the floor.
    plain: [Subject; 2],
    new_flow: [Subject; 2],
    baseline: aya::Ebpf,
}

/// A test run of `frame` by each design, then the baseline: ns/packet.
fn one_run(
    subjects: &mut [Subject; 2],
    base: &aya::programs::Xdp,
    frame: &[u8],
    repeat: u32,
    expect: u32,
    name: &str,
) -> Result<[f64; 3]> {
    let mut times = [0.0; 3];
    for (i, s) in subjects.iter_mut().enumerate() {
        let (verdict, d, _) = test_run(s.program_mut(), frame, repeat)?;
        ensure!(
            verdict == expect,
            "{name} ({}): verdict {verdict}, expected {expect}",
            s.design().name()
        );
        times[i] = ns(d);
    }
    times[2] = ns(test_run(base, frame, repeat)?.1);
    Ok(times)
}

/// Runs each of `frames` `FLOW_TABLE_SIZE` times through the new-flow
/// build `s` (which changes the source after each repetition); each
/// repetition must have been a new flow.
pub(crate) fn fill(s: &mut Subject, frames: &[&[u8]]) -> Result<()> {
    for frame in frames {
        let before = s.new_flows()?;
        test_run(s.program_mut(), frame, FLOW_TABLE_SIZE)?;
        let made = s.new_flows()? - before;
        ensure!(
            made == u64::from(FLOW_TABLE_SIZE),
            "the fill of {}'s new-flow table made {made} new flows, expected {FLOW_TABLE_SIZE}",
            s.design().name()
        );
    }
    Ok(())
}

/// Pushes `times` onto the three samples.
fn push(samples: &mut [Vec<f64>; 3], times: [f64; 3]) {
    for (s, t) in samples.iter_mut().zip(times) {
        s.push(t);
    }
}

impl Programs {
    fn load() -> Result<Programs> {
        let load = |design: Design, build| {
            design
                .load(build, POLICY, FLOW_TABLE_SIZE)
                .with_context(|| format!("loading {} (run as root)", design.name()))
        };
        let plain = [
            load(Design::Lb, Build::Plain)?,
            load(Design::Floor, Build::Plain)?,
        ];
        let mut new_flow = [
            load(Design::Lb, Build::NewFlow)?,
            load(Design::Floor, Build::NewFlow)?,
        ];
        let baseline = load_macswap()?;
        // New flows are measured in the steady state of a busy load
        // balancer: each table holds as many flows as its `max_flows`, and
        // every insert evicts (the floor) or finds a place among them
        // (`lb`). Fill them first (untimed), from sources no fixture uses:
        // `lb`'s one table with IPv4 flows, each of the floor's maps (main
        // counted `max_flows` per family) with flows of its family. Every
        // fill packet must have been a new flow.
        let v4 = Frame::tcp("10.250.0.1", 1, "10.0.3.49", 80, SYN).build();
        let v6 = Frame::tcp("fd00:250::1", 1, "fd00:3::49", 80, SYN).build();
        let [lb, floor] = &mut new_flow;
        fill(lb, &[&v4])?;
        fill(floor, &[&v4, &v6])?;
        Ok(Programs {
            plain,
            new_flow,
            baseline,
        })
    }

    /// An established (or passed) fixture: ns/packet of `lb`, the floor
    /// and the baseline in each run.
    fn established(&mut self, f: &Fixture, settings: &Settings) -> Result<[Vec<f64>; 3]> {
        let base = macswap(&mut self.baseline);
        let frame = (f.frame)(0);
        let expect = match f.kind {
            Kind::Passed | Kind::HostListenerPort => XDP_PASS,
            _ => XDP_TX,
        };
        // Creates the flow (a TCP flow with its SYN: a TCP packet that is
        // not a SYN makes no entry), then one untimed run: the fill of the
        // new-flow tables just before leaves the caches and TLB cold for
        // the first fixture, which would read slower.
        one_run(&mut self.plain, base, &opening(&frame), 1, expect, &f.name)?;
        one_run(
            &mut self.plain,
            base,
            &frame,
            settings.repeat,
            expect,
            &f.name,
        )?;
        let mut samples: [Vec<f64>; 3] = Default::default();
        for _ in 0..settings.runs {
            let times = one_run(
                &mut self.plain,
                base,
                &frame,
                settings.repeat,
                expect,
                &f.name,
            )?;
            push(&mut samples, times);
        }
        Ok(samples)
    }

    /// A new-flow fixture: ns/packet of the new-flow builds and of the
    /// baseline in each run; every repetition must have been a new flow.
    fn new_flows(&mut self, f: &Fixture, settings: &Settings) -> Result<[Vec<f64>; 3]> {
        let base = macswap(&mut self.baseline);
        let before = [self.new_flow[0].new_flows()?, self.new_flow[1].new_flows()?];
        let mut samples: [Vec<f64>; 3] = Default::default();
        for run in 0..settings.runs {
            let frame = (f.frame)(run);
            let repeat = settings.new_flow_repeat;
            let times = one_run(&mut self.new_flow, base, &frame, repeat, XDP_TX, &f.name)?;
            push(&mut samples, times);
        }
        let expected = settings.new_flow_repeat as u64 * settings.runs as u64;
        for (s, before) in self.new_flow.iter().zip(before) {
            let made = s.new_flows()? - before;
            ensure!(
                made == expected,
                "{} ({}): {made} new flows, expected {expected}",
                f.name,
                s.design().name()
            );
        }
        Ok(samples)
    }
}

/// The worst (highest ratio) row of `kind`.
fn worst(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.kind == kind)
        .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
}

/// The row of `kind` where the flow table gains least over the floor.
fn least_gain(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.kind == kind)
        .min_by(|a, b| a.gain().total_cmp(&b.gain()))
}

/// The section's title.
pub const TITLE: &str = "Data plane: ns/packet (BPF_PROG_TEST_RUN)";

/// The report section, with one read from memory timed after the
/// fixtures; writes `ns_per_packet.svg` into `dir`.
pub fn section(settings: &Settings, rows: &[Row], dir: &std::path::Path) -> Result<Section> {
    let memory = memory::measure(settings)?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "Each figure: {} repetitions per test run ({} for new flows), {} runs, `lb`, the floor (main's design before the flow table: kernel LRU flow maps and the flow cache, frozen in tests/bench/ebpf/src/lru/, same policy) and the MAC-swap XDP_TX program interleaved; min / median of the kernel's mean time per repetition; ratios = the median over the runs of the ratio within each run (the calls of a run are back to back, at the same speed of the VM); gain = floor / `lb`. Established flow: the flow exists before the timed runs (created by the fixture's packet, a non-SYN; the floor answers it from its flow cache). New flow: the `lb_new_flow` / `lru_new_flow` builds, whose source port changes every repetition (flow-table miss, choice, insert into a table for 1,048,576 flows filled before the timed runs: `lb`'s with 1,048,576 IPv4 flows, each of the floor's LRU maps, one per family, with 1,048,576 flows of its family, so that the floor evicts on every insert). Host: packets for the load balancer's own address (not a VIP), on a port the `web` listener uses and on one no listener uses, passed to the kernel.",
        settings.repeat, settings.new_flow_repeat, settings.runs
    ));
    let table: Vec<Vec<String>> = rows.iter().map(table_row).collect();
    s.table(
        &[
            "fixture",
            "algorithm",
            "lb min / median",
            "floor min / median",
            "MAC-swap min / median",
            "lb / MAC-swap",
            "floor / MAC-swap",
            "gain (floor / lb)",
            "goal (lb / MAC-swap)",
            "met?",
        ],
        &table,
    );
    s.line(memory.line());
    figures(&mut s, rows);
    memory_figure(&mut s, rows, &memory);
    if !rows.is_empty() {
        let name = "ns_per_packet.svg";
        plot_medians(&dir.join(name), rows)?;
        s.plots.push(name.into());
    }
    Ok(s)
}

pub(crate) fn min_med(v: &[f64]) -> String {
    let (min, median) = min_median(v);
    format!("{} / {}", fmt_ns(min), fmt_ns(median))
}

/// A fixture's row of the table.
fn table_row(r: &Row) -> Vec<String> {
    let goal = r.goal();
    vec![
        r.name.clone(),
        r.algorithm.into(),
        min_med(&r.lb),
        min_med(&r.floor),
        min_med(&r.base),
        format!("{:.2}x", r.ratio()),
        format!("{:.2}x", r.floor_ratio()),
        format!("{:.2}x", r.gain()),
        goal.map_or_else(String::new, |g| format!("<= {g}x")),
        goal.map_or_else(String::new, |g| {
            if r.ratio() <= g { "met" } else { "not met" }.into()
        }),
    ]
}

/// `lb`, floor and MAC-swap medians of `r`.
fn three(r: &Row) -> String {
    format!(
        "lb {}, floor {}, MAC-swap {}",
        fmt_ns(Row::median(&r.lb)),
        fmt_ns(Row::median(&r.floor)),
        fmt_ns(Row::median(&r.base))
    )
}

/// The summary's figures: the worst established and new flow against
/// their goals; the gains over the floor; host traffic.
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
                    fmt_ns(Row::median(&w.lb)),
                    fmt_ns(Row::median(&w.base))
                ),
                format!("<= {goal}x"),
                w.ratio() <= goal,
            ));
        }
    }
    if let Some(w) = least_gain(rows, Kind::Established) {
        s.figures.push(Figure::goal(
            format!(
                "hot established flow, no regression: floor / lb ns/packet (least: {})",
                w.name
            ),
            format!("{:.2}x ({})", w.gain(), three(w)),
            format!(">= {HOT_GOAL}x"),
            w.gain() >= HOT_GOAL,
        ));
    }
    if let Some(w) = least_gain(rows, Kind::NewFlow) {
        s.figures.push(Figure::goal(
            format!(
                "new flow into a full 1M table: floor / lb ns/packet (least: {})",
                w.name
            ),
            format!("{:.2}x ({})", w.gain(), three(w)),
            format!(
                ">= {NEW_FLOW_GAIN_GOAL}x (issue 18: <= 230 ns on an Intel Xeon 2 vCPU, main 898-917 ns there)"
            ),
            w.gain() >= NEW_FLOW_GAIN_GOAL,
        ));
    }
    host_figure(s, rows);
}

/// The slowest new flow in reads from memory (issue 18: a new flow into a
/// full table costs at most two misses plus the choice of target).
fn memory_figure(s: &mut Section, rows: &[Row], memory: &Latency) {
    let Some(w) = rows
        .iter()
        .filter(|r| r.kind == Kind::NewFlow)
        .max_by(|a, b| Row::median(&a.lb).total_cmp(&Row::median(&b.lb)))
    else {
        return;
    };
    let lb = Row::median(&w.lb);
    s.figures.push(Figure::info(
        format!(
            "new flow into a full 1M table, in reads from memory: lb / one read (slowest: {})",
            w.name
        ),
        memory.in_reads(lb),
    ));
}

/// Host traffic on a listener's port against another port, each relative
/// to MAC-swap in its own runs.
fn host_figure(s: &mut Section, rows: &[Row]) {
    let of = |kind| rows.iter().find(|r| r.kind == kind);
    let (Some(listener), Some(other)) = (of(Kind::HostListenerPort), of(Kind::Passed)) else {
        return;
    };
    let lb = listener.ratio() / other.ratio();
    let floor = listener.floor_ratio() / other.floor_ratio();
    s.figures.push(Figure::goal(
        "host traffic (not a VIP): listener port / other port, lb / MAC-swap of each",
        format!(
            "{lb:.2}x (lb {} vs {}; floor {floor:.2}x: {} vs {})",
            fmt_ns(Row::median(&listener.lb)),
            fmt_ns(Row::median(&other.lb)),
            fmt_ns(Row::median(&listener.floor)),
            fmt_ns(Row::median(&other.floor)),
        ),
        format!("<= {HOST_PORT_GOAL}x"),
        lb <= HOST_PORT_GOAL,
    ));
}

/// The medians of `lb`, the floor and the baseline, fixture by fixture.
fn plot_medians(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let medians = |f: fn(&Row) -> &Vec<f64>| rows.iter().map(|r| stats::median(f(r))).collect();
    plot::bars(
        path,
        &Bars {
            title: "ns/packet (median): lb vs the floor vs MAC-swap, same run",
            y_label: "ns/packet",
            categories: rows.iter().map(|r| r.name.clone()).collect(),
            series: vec![
                Series {
                    name: "lb",
                    values: medians(|r| &r.lb),
                },
                Series {
                    name: "floor (main: LRU + flow cache)",
                    values: medians(|r| &r.floor),
                },
                Series {
                    name: "MAC-swap",
                    values: medians(|r| &r.base),
                },
            ],
            references: vec![],
        },
    )
}
