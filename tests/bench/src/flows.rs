//! Established flows at scale: N live flows (4,096 to 1,048,576), every
//! timed packet of another flow than the last, visited in a scrambled order
//! that covers all N, beside the MAC-swap program behind the same prologue
//! (`lb_scrambled` and `macswap_scrambled`: each repetition of a test run
//! takes the source of flow `scramble::flow(i)`, i counting repetitions).
//!
//! The N flows are created first (untimed: one pass of N SYNs in another
//! order), and the counters are checked: N new flows, then only flow hits
//! in the timed runs (a new flow there would mean the table lost one). The
//! share of the timed packets the flow cache answered comes from its
//! slots' write sequences (`flow_cache`). Then the same fixtures run on two
//! CPUs at once (`cpus`).
use anyhow::{Context as _, Result, ensure};
use aya::programs::Xdp;
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};
use lb_user::dataplane::Dataplane;

use crate::{
    Object, POLICY, Settings, XDP_TX, counter, cpus,
    flow_cache::FlowCacheView,
    load,
    plot::{self, Bars, Series},
    report::{Figure, Section, fmt_ns},
    scramble::{FRAME_LEN, VISIT_AT, Visit},
    stats::{self, min_median},
    test_run,
};

/// The order in which the flows are created, and the one they are timed
/// in (`scramble`: two keys, two unrelated orders).
const FILL_KEY: u32 = 0x5eed_f111;
const TIMED_KEY: u32 = 0x0bad_cafe;

/// One fixture: N = 2^`bits` TCP flows to the `hash` listener of
/// [`POLICY`], with flow tables of `table` entries.
#[derive(Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub v6: bool,
    pub bits: u32,
    pub table: u32,
}

/// The flow table of the default policy (`max_flows`).
const DEFAULT_TABLE: u32 = lb_common::DEFAULT_FLOW_TABLE_SIZE;

/// The fixtures, each with the default flow table (what `lb` runs with
/// unless the policy says otherwise): it must hold every flow, which the
/// measurement checks.
pub const FIXTURES: [Fixture; 4] = [
    Fixture {
        name: "tcp4, 4,096 flows",
        v6: false,
        bits: 12,
        table: DEFAULT_TABLE,
    },
    Fixture {
        name: "tcp4, 65,536 flows",
        v6: false,
        bits: 16,
        table: DEFAULT_TABLE,
    },
    Fixture {
        name: "tcp4, 1,048,576 flows",
        v6: false,
        bits: 20,
        table: DEFAULT_TABLE,
    },
    Fixture {
        name: "tcp6, 1,048,576 flows",
        v6: true,
        bits: 20,
        table: DEFAULT_TABLE,
    },
];

impl Fixture {
    pub fn flows(&self) -> u32 {
        1 << self.bits
    }

    /// A frame to the `hash` listener with `flags` that carries `visit`.
    fn frame(&self, flags: u8, visit: &Visit) -> Vec<u8> {
        let frame = if self.v6 {
            Frame::tcp("fd00:5::", 0x8000, "fd00:3::49", 80, flags)
        } else {
            Frame::tcp("10.128.0.0", 0x8000, "10.0.3.49", 80, flags)
        };
        with_visit(frame.build(), visit)
    }

    /// The visit of all N flows in the order of `key`, from position
    /// `next`.
    fn visit(&self, key: u32, next: u32) -> Visit {
        Visit::new(self.bits, key, next)
    }

    /// The timed visit of half `half` (0 or 1) of the flows, from position
    /// `next`.
    fn half(&self, half: u32, next: u32) -> Visit {
        Visit::new(self.bits - 1, TIMED_KEY, next).from_flow(half << (self.bits - 1))
    }
}

/// `frame` padded to [`FRAME_LEN`] with `visit` at [`VISIT_AT`] (little
/// endian, as the programs read it).
pub fn with_visit(mut frame: Vec<u8>, visit: &Visit) -> Vec<u8> {
    assert!(frame.len() <= VISIT_AT, "the headers overlap the visit");
    frame.resize(FRAME_LEN, 0);
    let words = [visit.next, visit.mask, visit.key, visit.shift, visit.first];
    for (i, w) in words.iter().enumerate() {
        frame[VISIT_AT + 4 * i..][..4].copy_from_slice(&w.to_le_bytes());
    }
    frame
}

/// The position of the visit `frame` carries.
pub fn visit_next(frame: &[u8]) -> Option<u32> {
    let bytes = frame.get(VISIT_AT..VISIT_AT + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// One measured fixture.
pub struct Row {
    pub fixture: &'static Fixture,
    /// Repetitions per test run (at least N: each run covers every flow).
    pub repeat: u32,
    /// ns/packet of each run, `lb` and the baseline interleaved.
    pub lb: Vec<f64>,
    pub base: Vec<f64>,
    /// The share of the timed packets the flow cache answered.
    pub cache_hits: f64,
    /// The same on two CPUs at once (None when not measured).
    pub scaling: Option<Scaling>,
}

impl Row {
    /// Median over the runs of `lb` / MAC-swap of the same run.
    pub fn ratio(&self) -> f64 {
        stats::paired_ratio(&self.lb, &self.base)
    }
}

/// Two CPUs at once: in each round, each CPU alone, then both together,
/// for `lb` and for the baseline; ns/packet per CPU (in the order of
/// `cpus`).
pub struct Scaling {
    pub cpus: [usize; 2],
    pub lb_alone: Vec<[f64; 2]>,
    pub lb_both: Vec<[f64; 2]>,
    pub base_alone: Vec<[f64; 2]>,
    pub base_both: Vec<[f64; 2]>,
}

impl Scaling {
    /// Median over the rounds of the mean over the CPUs of (ns/packet with
    /// both running) / (ns/packet of the same CPU alone, in the same round).
    pub fn ratio(alone: &[[f64; 2]], both: &[[f64; 2]]) -> f64 {
        let ratios: Vec<f64> = alone
            .iter()
            .zip(both)
            .map(|(a, b)| (b[0] / a[0].max(1.0) + b[1] / a[1].max(1.0)) / 2.0)
            .collect();
        stats::median(&ratios)
    }

    /// Median ns/packet of each CPU over the rounds.
    pub fn per_cpu(runs: &[[f64; 2]]) -> [f64; 2] {
        [0, 1].map(|c| stats::median(&runs.iter().map(|r| r[c]).collect::<Vec<_>>()))
    }
}

/// The baseline, loaded.
fn load_baseline() -> Result<aya::Ebpf> {
    let mut ebpf = aya::Ebpf::load(Object::read(Object::MACSWAP_SCRAMBLED)?.bytes())?;
    baseline(&mut ebpf).load()?;
    Ok(ebpf)
}

fn baseline(ebpf: &mut aya::Ebpf) -> &mut Xdp {
    ebpf.program_mut("macswap_scrambled")
        .expect("the object has its program")
        .try_into()
        .expect("an XDP program")
}

/// Every fixture `settings` wants; `cpus`: the two CPUs of the scaling
/// runs, or why they are not measured.
pub fn measure(settings: &Settings, cpus: &Result<[usize; 2], String>) -> Result<Vec<Row>> {
    let mut ebpf = load_baseline()?;
    let base = baseline(&mut ebpf);
    FIXTURES
        .iter()
        .filter(|f| settings.wants(f.name))
        .map(|f| measure_fixture(f, settings, base, cpus.as_ref().ok()))
        .collect()
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// One fixture: its flows created, the timed runs, the checks, and the
/// scaling runs on `cpus`.
fn measure_fixture(
    f: &'static Fixture,
    settings: &Settings,
    base: &Xdp,
    cpus: Option<&[usize; 2]>,
) -> Result<Row> {
    let object = Object::read(Object::LB_SCRAMBLED)?;
    let mut dp = load(object.bytes(), "lb_scrambled", POLICY, f.table)
        .context("loading lb_scrambled (run as root)")?;
    let created = fill(&mut dp, f)?;
    let repeat = settings.repeat.max(f.flows());
    let slots = dp.flow_cache_slots();
    let view = FlowCacheView::of(dp.program_mut(), slots)?;
    let sequences = view.sequences();
    let hits = counter(&dp, Counter::FlowHit)?;
    let (lb, base_ns) = timed(dp.program_mut(), base, f, repeat, settings.runs)?;
    no_new_flows(&dp, f, created)?;
    let hits = counter(&dp, Counter::FlowHit)? - hits;
    ensure!(
        hits == u64::from(repeat) * (settings.runs as u64 + 1),
        "{}: {hits} flow hits, expected one per repetition",
        f.name
    );
    let cache_hits = 1.0 - view.writes_since(&sequences) as f64 / hits as f64;
    let scaling = match cpus {
        Some(cpus) => Some(scaling(
            dp.program_mut(),
            base,
            f,
            repeat,
            settings.runs,
            *cpus,
        )?),
        None => None,
    };
    no_new_flows(&dp, f, created)?;
    Ok(Row {
        fixture: f,
        repeat,
        lb,
        base: base_ns,
        cache_hits,
        scaling,
    })
}

/// The untimed test run that creates the fixture's N flows: N SYNs in the
/// fill order, forwarded, the prologue run once per repetition.
pub fn run_fill(program: &Xdp, f: &Fixture) -> Result<()> {
    let frame = f.frame(SYN, &f.visit(FILL_KEY, 0));
    let (verdict, _, out) = test_run(program, &frame, f.flows())?;
    ensure!(verdict == XDP_TX, "{}: fill verdict {verdict}", f.name);
    ensure!(
        visit_next(&out) == Some(f.flows()),
        "{}: the prologue did not run once per repetition",
        f.name
    );
    Ok(())
}

/// Creates the fixture's N flows (`run_fill`), each of which must be a new
/// flow. The new-flow counter after it.
fn fill(dp: &mut Dataplane, f: &Fixture) -> Result<u64> {
    let before = counter(dp, Counter::NewFlow)?;
    run_fill(dp.program_mut(), f)?;
    let after = counter(dp, Counter::NewFlow)?;
    ensure!(
        after - before == u64::from(f.flows()),
        "{}: the fill made {} new flows, expected {}",
        f.name,
        after - before,
        f.flows()
    );
    Ok(after)
}

/// Checks that the new-flow counter is still `created`: every packet since
/// the fill found its flow in the table.
fn no_new_flows(dp: &Dataplane, f: &Fixture, created: u64) -> Result<()> {
    let new = counter(dp, Counter::NewFlow)? - created;
    ensure!(
        new == 0,
        "{}: {new} new flows among established ones: the flow table lost flows",
        f.name
    );
    Ok(())
}

/// The fixture's ACK frame at position `next` of the timed order.
fn timed_frame(f: &Fixture, next: u32) -> Vec<u8> {
    f.frame(ACK, &f.visit(TIMED_KEY, next))
}

/// One untimed pair, then `runs` pairs of test runs of `repeat`
/// repetitions (`lb`, then the baseline on the same frame), each run
/// going on from where the last one stopped: ns/packet of each.
fn timed(
    lb: &Xdp,
    base: &Xdp,
    f: &Fixture,
    repeat: u32,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut l, mut b) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let frame = timed_frame(f, run as u32 * repeat);
        let (verdict, lb_time, _) = test_run(lb, &frame, repeat)?;
        ensure!(verdict == XDP_TX, "{}: lb verdict {verdict}", f.name);
        let (verdict, base_time, _) = test_run(base, &frame, repeat)?;
        ensure!(verdict == XDP_TX, "{}: baseline verdict {verdict}", f.name);
        // The first pair warms up (the fill ran in another order).
        if run > 0 {
            l.push(ns(lb_time));
            b.push(ns(base_time));
        }
    }
    Ok((l, b))
}

/// One pass of `program` on each CPU of `on` at once, each visiting its
/// half of the flows (`(cpu, half)`): ns/packet per CPU.
fn pass(
    program: &Xdp,
    f: &Fixture,
    repeat: u32,
    on: &[(usize, u32)],
    next: u32,
) -> Result<Vec<f64>> {
    let cpus: Vec<usize> = on.iter().map(|&(cpu, _)| cpu).collect();
    cpus::on_cpus(&cpus, |k| {
        let frame = f.frame(ACK, &f.half(on[k].1, next));
        let (verdict, time, _) = test_run(program, &frame, repeat)?;
        ensure!(verdict == XDP_TX, "{}: verdict {verdict}", f.name);
        Ok(ns(time))
    })
}

/// `program` on each of `cpus` alone, then on both at once, the first CPU
/// visiting one half of the flows and the second the other, as RSS gives
/// each flow to one queue.
fn alone_and_both(
    program: &Xdp,
    f: &Fixture,
    repeat: u32,
    [a, b]: [usize; 2],
    next: u32,
) -> Result<([f64; 2], [f64; 2])> {
    let alone_a = pass(program, f, repeat, &[(a, 0)], next)?[0];
    let alone_b = pass(program, f, repeat, &[(b, 1)], next)?[0];
    let both = pass(program, f, repeat, &[(a, 0), (b, 1)], next)?;
    Ok(([alone_a, alone_b], [both[0], both[1]]))
}

/// `runs` rounds of `alone_and_both`, for `lb` then for the baseline.
fn scaling(
    lb: &Xdp,
    base: &Xdp,
    f: &Fixture,
    repeat: u32,
    runs: usize,
    cpus: [usize; 2],
) -> Result<Scaling> {
    let mut s = Scaling {
        cpus,
        lb_alone: vec![],
        lb_both: vec![],
        base_alone: vec![],
        base_both: vec![],
    };
    for run in 0..runs {
        let next = run as u32 * repeat;
        let (alone, both) = alone_and_both(lb, f, repeat, cpus, next)?;
        s.lb_alone.push(alone);
        s.lb_both.push(both);
        let (alone, both) = alone_and_both(base, f, repeat, cpus, next)?;
        s.base_alone.push(alone);
        s.base_both.push(both);
    }
    Ok(s)
}

/// The section's title.
pub const TITLE: &str = "Data plane: established flows at scale (scrambled order)";

/// The report section; writes `flows.svg` into `dir`.
pub fn section(settings: &Settings, dir: &std::path::Path) -> Result<Section> {
    let cpus = cpus::pair();
    let rows = measure(settings, &cpus)?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "N established TCP flows to the `hash` listener, each timed packet of another flow than the last, in a scrambled order that covers all N in every run: `lb_scrambled`, whose prologue gives repetition i of a test run the source of flow scramble(i mod N) (docs/bench.md), beside `macswap_scrambled`, the same prologue and a MAC swap. The N flows are created first (untimed: one test run of N SYNs, in another order), then {} runs of max(N, {}) repetitions (ACKs), `lb` and the baseline interleaved, after one untimed pair; ratio = the median over the runs of `lb` / baseline in the same run. Checked: the fill made N new flows, the timed runs none (every packet found its flow). Flow cache: the share of the timed packets it answered (1 - slot writes / packets; a packet the cache does not answer goes to the flow table and writes its slot).",
        settings.runs, settings.repeat
    ));
    s.table(
        &[
            "fixture",
            "flow table",
            "repetitions",
            "lb min",
            "lb median",
            "baseline min",
            "baseline median",
            "ratio",
            "flow cache answered",
        ],
        &rows.iter().map(table_row).collect::<Vec<_>>(),
    );
    scaling_table(&mut s, &rows, &cpus);
    figures(&mut s, &rows);
    if !rows.is_empty() {
        plot_medians(&dir.join("flows.svg"), &rows)?;
        s.plots.push("flows.svg".into());
    }
    Ok(s)
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// A fixture's row of the one-CPU table.
fn table_row(r: &Row) -> Vec<String> {
    let (lb, base) = (min_median(&r.lb), min_median(&r.base));
    vec![
        r.fixture.name.into(),
        r.fixture.table.to_string(),
        r.repeat.to_string(),
        fmt_ns(lb.0),
        fmt_ns(lb.1),
        fmt_ns(base.0),
        fmt_ns(base.1),
        format!("{:.2}x", r.ratio()),
        percent(r.cache_hits),
    ]
}

/// The two-CPU table, or why it was not measured.
fn scaling_table(s: &mut Section, rows: &[Row], cpus: &Result<[usize; 2], String>) {
    let [a, b] = match cpus {
        Ok(cpus) => *cpus,
        Err(why) => {
            s.line(format!("\nBoth CPUs at once: not measured: {why}."));
            return;
        }
    };
    s.line(format!(
        "\nBoth CPUs at once: the same fixtures, a thread pinned to CPU {a} and one to CPU {b} (sched_setaffinity), each running a test run of the same program and maps at the same time; CPU {a} visits one half of the N flows and CPU {b} the other (in a scrambled order, as above), as RSS gives each flow to one queue. Each round runs CPU {a} alone on its half, CPU {b} alone on its half, then both at once, for `lb` and for the baseline; {} rounds, of max(N, repeat) repetitions per CPU. Ratio = the median over the rounds of the CPUs' mean of (ns/packet with both running) / (ns/packet of that CPU alone in the same round): 1.00 means that sharing the tables costs nothing; the baseline's ratio is what the machine itself adds (two vCPUs of a VM).",
        rows.iter().find_map(|r| r.scaling.as_ref()).map_or(0, |sc| sc.lb_both.len())
    ));
    let pair = |v: [f64; 2]| format!("{} / {}", fmt_ns(v[0]), fmt_ns(v[1]));
    let table: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| Some((r.fixture.name, r.scaling.as_ref()?)))
        .map(|(name, sc)| {
            vec![
                name.into(),
                pair(Scaling::per_cpu(&sc.lb_alone)),
                pair(Scaling::per_cpu(&sc.lb_both)),
                format!("{:.2}", Scaling::ratio(&sc.lb_alone, &sc.lb_both)),
                pair(Scaling::per_cpu(&sc.base_alone)),
                pair(Scaling::per_cpu(&sc.base_both)),
                format!("{:.2}", Scaling::ratio(&sc.base_alone, &sc.base_both)),
            ]
        })
        .collect();
    let cpus = format!("(CPU {a} / CPU {b})");
    s.table(
        &[
            "fixture",
            &format!("lb alone {cpus}"),
            "lb, both at once",
            "lb ratio",
            "baseline alone",
            "baseline, both at once",
            "baseline ratio",
        ],
        &table,
    );
}

/// The summary's figures: each fixture's ratio (no goal: the goal of
/// issue 18 is for the flow table that is to replace today's, see
/// docs/bench.md) and its two-CPU ratio.
fn figures(s: &mut Section, rows: &[Row]) {
    for r in rows {
        s.figures.push(Figure::info(
            format!(
                "established flows at scale, {}: lb / MAC-swap ns/packet (same prologue)",
                r.fixture.name
            ),
            format!(
                "{:.2}x ({} vs {}; flow cache answered {})",
                r.ratio(),
                fmt_ns(stats::median(&r.lb)),
                fmt_ns(stats::median(&r.base)),
                percent(r.cache_hits)
            ),
        ));
    }
    for r in rows {
        let Some(sc) = &r.scaling else { continue };
        let ([a, b], [alone_a, alone_b]) = (
            Scaling::per_cpu(&sc.lb_both),
            Scaling::per_cpu(&sc.lb_alone),
        );
        s.figures.push(Figure::info(
            format!(
                "both CPUs at once, {}: lb ns/packet per CPU / the CPU alone",
                r.fixture.name
            ),
            format!(
                "{:.2} ({} / {} vs {} / {} alone; MAC-swap {:.2})",
                Scaling::ratio(&sc.lb_alone, &sc.lb_both),
                fmt_ns(a),
                fmt_ns(b),
                fmt_ns(alone_a),
                fmt_ns(alone_b),
                Scaling::ratio(&sc.base_alone, &sc.base_both)
            ),
        ));
    }
}

/// The medians of `lb` and of the baseline, fixture by fixture.
fn plot_medians(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    plot::bars(
        path,
        &Bars {
            title: "established flows at scale, ns/packet (median): lb vs MAC-swap, same prologue",
            y_label: "ns/packet",
            categories: rows.iter().map(|r| r.fixture.name.to_string()).collect(),
            series: vec![
                Series {
                    name: "lb",
                    values: rows.iter().map(|r| stats::median(&r.lb)).collect(),
                },
                Series {
                    name: "MAC-swap",
                    values: rows.iter().map(|r| stats::median(&r.base)).collect(),
                },
            ],
            references: vec![],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scramble::{flow, source};

    /// The order is a permutation of 0..N for every N the fixtures use (and
    /// the small ones), and two keys give different orders.
    #[test]
    fn each_order_visits_every_flow_once() {
        for bits in (1..=16).chain([20]) {
            for key in [FILL_KEY, TIMED_KEY] {
                let v = Visit::new(bits, key, 0);
                let mut seen = vec![false; 1 << bits];
                for i in 0..1u32 << bits {
                    let f = flow(i, &v) as usize;
                    assert!(!seen[f], "bits {bits}: flow {f} twice");
                    seen[f] = true;
                }
            }
        }
        let (a, b) = (Visit::new(12, FILL_KEY, 0), Visit::new(12, TIMED_KEY, 0));
        let same = (0..4096).filter(|&i| flow(i, &a) == flow(i, &b)).count();
        assert!(same < 16, "{same} positions agree");
    }

    /// Consecutive positions are neither neighbours nor a constant stride
    /// apart, and the timed order does not follow the fill order.
    #[test]
    fn the_order_is_scrambled() {
        let (fill, timed) = (Visit::new(20, FILL_KEY, 0), Visit::new(20, TIMED_KEY, 0));
        let mut position_in_fill = vec![0u32; 1 << 20];
        for i in 0..1 << 20 {
            position_in_fill[flow(i, &fill) as usize] = i;
        }
        let strides: std::collections::HashSet<u32> = (0..1000)
            .map(|i| {
                let a = position_in_fill[flow(i, &timed) as usize];
                let b = position_in_fill[flow(i + 1, &timed) as usize];
                b.wrapping_sub(a) & fill.mask
            })
            .collect();
        assert!(strides.len() > 990, "{} distinct strides", strides.len());
    }

    #[test]
    fn sources_are_distinct_and_never_port_0() {
        assert_eq!(source(0), (0, 0x8000));
        assert_eq!(source(0x7fff), (0, 0xffff));
        assert_eq!(source(0x8000), (1, 0x8000));
        assert_eq!(source((1 << 21) - 1), (63, 0xffff));
    }

    #[test]
    fn the_frame_carries_its_visit() {
        let f = &FIXTURES[3];
        let frame = f.frame(ACK, &f.visit(7, 5));
        assert_eq!(frame.len(), FRAME_LEN);
        assert_eq!(visit_next(&frame), Some(5));
        let words = |frame: &[u8]| -> Vec<u32> {
            frame[VISIT_AT..]
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        assert_eq!(words(&frame), [5, (1 << 20) - 1, 7, 10, 0]);
        let second_half = f.frame(ACK, &f.half(1, 3));
        assert_eq!(words(&second_half)[..2], [3, (1 << 19) - 1]);
        assert_eq!(words(&second_half)[4], 1 << 19);
    }

    /// The two halves of the timed visit are the two halves of the flows.
    #[test]
    fn each_half_visits_its_own_flows() {
        let f = &FIXTURES[0];
        for half in [0, 1] {
            let v = f.half(half, 0);
            let mut seen: Vec<u32> = (0..f.flows() / 2).map(|i| flow(i, &v)).collect();
            seen.sort();
            let start = half * f.flows() / 2;
            assert_eq!(seen, (start..start + f.flows() / 2).collect::<Vec<_>>());
        }
    }
}
