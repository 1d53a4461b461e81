//! Established flows at scale: N live flows (4,096 to 1,048,576), every
//! timed packet of another flow than the last, visited in a scrambled order
//! that covers all N, beside the MAC-swap program behind the same prologue
//! (`lb_scrambled`, `lru_scrambled` and `macswap_scrambled`: each repetition
//! of a test run takes the source of flow `scramble::flow(i)`, i counting
//! repetitions), for `lb`'s flow table and for the floor (`floor`: main's
//! kernel LRU maps and flow cache) in the same runs.
//!
//! The N flows are created first (untimed: one pass of N SYNs in another
//! order), and the counters are checked: N new flows, then in the timed
//! runs a flow hit or a new flow per packet, new flows only for flows the
//! table did not remember. `lb`'s table is read after the fill (entries
//! per bucket, unremembered and evicted flows); the share of the floor's
//! timed packets its flow cache answered comes from its slots' write
//! sequences (`flow_cache`). Then the same fixtures run on two CPUs at once
//! (`cpus`).
use anyhow::{Context as _, Result, ensure};
use aya::programs::Xdp;
use lb_common::{Counter, flow_table::WAYS};
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    Build, Design, Object, POLICY, Settings, Subject, XDP_TX, cpus,
    flow_cache::FlowCacheView,
    memory::{self, Latency},
    plot::{self, Bars, Series},
    report::{Figure, Section, fmt_count, fmt_ns},
    scramble::{FRAME_LEN, VISIT_AT, Visit},
    stats::{self, min_median},
    test_run,
};

/// The order in which the flows are created, and the one they are timed
/// in (`scramble`: two keys, two unrelated orders).
pub const FILL_KEY: u32 = 0x5eed_f111;
pub const TIMED_KEY: u32 = 0x0bad_cafe;

/// An established packet at 1,048,576 flows: floor / lb at least this.
/// Issue 18's goal is about 200 ns on the Intel Xeon 2 vCPU machine where
/// main's design measured 503-520 ns in the same runs: 503 / 200 = 2.5.
pub const GAIN_1M_GOAL: f64 = 2.5;

/// One fixture: N = 2^`bits` TCP flows to the `hash` listener of
/// [`POLICY`], with flow tables for `table` flows.
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
    /// ns/packet of each run: `lb`, the floor and the baseline interleaved.
    pub lb: Vec<f64>,
    pub floor: Vec<f64>,
    pub base: Vec<f64>,
    /// `lb`'s flow table after the fill.
    pub table: TableFill,
    /// New flows among the timed packets (flows the table did not keep at
    /// the fill): `lb`, the floor.
    pub misses: [u64; 2],
    /// The share of the floor's timed packets its flow cache answered.
    pub cache_hits: f64,
    /// The same on two CPUs at once (None when not measured).
    pub scaling: Option<Scaling>,
}

impl Row {
    /// Median over the runs of `lb` / MAC-swap of the same run.
    pub fn ratio(&self) -> f64 {
        stats::paired_ratio(&self.lb, &self.base)
    }

    pub fn floor_ratio(&self) -> f64 {
        stats::paired_ratio(&self.floor, &self.base)
    }

    /// Median over the runs of floor / `lb`.
    pub fn gain(&self) -> f64 {
        stats::paired_ratio(&self.floor, &self.lb)
    }
}

/// What `lb`'s flow table held after the fill of N flows.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableFill {
    pub buckets: u32,
    /// Entries in use.
    pub entries: u64,
    /// Buckets with 0, 1, .. [`WAYS`] entries.
    pub per_bucket: [u64; WAYS + 1],
    /// New flows of the fill that were forwarded but not remembered
    /// (`FlowInsertFailed`), and entries taken from other flows
    /// (`FlowEvicted`).
    pub unremembered: u64,
    pub evicted: u64,
}

impl TableFill {
    fn read(dp: &lb_user::dataplane::Dataplane) -> Result<TableFill> {
        let table = dp.flow_table()?;
        let mut fill = TableFill {
            buckets: table.buckets(),
            ..TableFill::default()
        };
        for b in 0..table.buckets() {
            let used = (0..WAYS).filter(|&w| table.entry(b, w).is_some()).count();
            fill.per_bucket[used] += 1;
            fill.entries += used as u64;
        }
        fill.unremembered = crate::counter(dp, Counter::FlowInsertFailed)?;
        fill.evicted = crate::counter(dp, Counter::FlowEvicted)?;
        Ok(fill)
    }

    fn capacity(&self) -> u64 {
        u64::from(self.buckets) * WAYS as u64
    }
}

/// Two CPUs at once: in each round, each CPU alone, then both together,
/// for `lb`, the floor and the baseline (in that order); ns/packet per CPU
/// (in the order of `cpus`).
pub struct Scaling {
    pub cpus: [usize; 2],
    pub alone: [Vec<[f64; 2]>; 3],
    pub both: [Vec<[f64; 2]>; 3],
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

    /// The ratio of program `i` (0 `lb`, 1 the floor, 2 the baseline).
    pub fn of(&self, i: usize) -> f64 {
        Scaling::ratio(&self.alone[i], &self.both[i])
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

/// The fixture's data plane of `design`, its flows created: the data plane
/// and its new-flow counter after the fill.
fn filled(design: Design, f: &Fixture) -> Result<(Subject, u64)> {
    let mut s = design
        .load(Build::Scrambled, POLICY, f.table)
        .with_context(|| format!("loading {}'s scrambled build (run as root)", design.name()))?;
    let created = fill(&mut s, f)?;
    Ok((s, created))
}

/// One fixture: its flows created in both designs, the timed runs, the
/// checks, and the scaling runs on `cpus`.
fn measure_fixture(
    f: &'static Fixture,
    settings: &Settings,
    base: &Xdp,
    cpus: Option<&[usize; 2]>,
) -> Result<Row> {
    let (lb, lb_created) = filled(Design::Lb, f)?;
    let (floor, floor_created) = filled(Design::Floor, f)?;
    let mut subjects = [lb, floor];
    let table = match &subjects[0] {
        Subject::Lb(dp) => TableFill::read(dp)?,
        Subject::Floor(_) => unreachable!("the first subject is lb"),
    };
    let repeat = settings.repeat.max(f.flows());
    let Subject::Floor(fl) = &subjects[1] else {
        unreachable!("the second subject is the floor")
    };
    let view = FlowCacheView::of(fl.flow_cache()?, fl.cache_slots)?;
    let sequences = view.sequences();
    let hits = [hit_count(&subjects[0])?, hit_count(&subjects[1])?];
    let [lb_ns, floor_ns, base_ns] = timed(&mut subjects, base, f, repeat, settings.runs)?;
    let packets = u64::from(repeat) * (settings.runs as u64 + 1);
    let misses = [
        timed_misses(&subjects[0], f, lb_created, hits[0], packets)?,
        timed_misses(&subjects[1], f, floor_created, hits[1], packets)?,
    ];
    let floor_hits = hit_count(&subjects[1])? - hits[1];
    let cache_hits = 1.0 - view.writes_since(&sequences) as f64 / floor_hits.max(1) as f64;
    let scaling = match cpus {
        Some(cpus) => Some(scaling(
            &mut subjects,
            base,
            f,
            repeat,
            settings.runs,
            *cpus,
        )?),
        None => None,
    };
    Ok(Row {
        fixture: f,
        repeat,
        lb: lb_ns,
        floor: floor_ns,
        base: base_ns,
        table,
        misses,
        cache_hits,
        scaling,
    })
}

fn hit_count(s: &Subject) -> Result<u64> {
    s.counter(Counter::FlowHit)?.context("no flow_hit counter")
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
fn fill(s: &mut Subject, f: &Fixture) -> Result<u64> {
    let before = s.new_flows()?;
    run_fill(s.program_mut(), f)?;
    let after = s.new_flows()?;
    ensure!(
        after - before == u64::from(f.flows()),
        "{} ({}): the fill made {} new flows, expected {}",
        f.name,
        s.design().name(),
        after - before,
        f.flows()
    );
    Ok(after)
}

/// Misses among the `packets` timed packets since the fill (the new-flow
/// counter was `created`, the hit counter `hits`): every packet was a hit
/// or a miss. Both designs may lose a few flows at the fill (reported):
/// `lb`'s table when a later flow of the fill takes the entry of one seen
/// once (`FlowEvicted`) or one goes unremembered (`FlowInsertFailed`),
/// whose ACKs then go by hash and make no entry (`FlowMissByHash`); the
/// floor's kernel LRU map, which evicts before it is full (its free entries
/// are spread over per-CPU lists), whose next packets are new flows again.
fn timed_misses(s: &Subject, f: &Fixture, created: u64, hits: u64, packets: u64) -> Result<u64> {
    let new = s.new_flows()? - created;
    // The fill sends SYNs only: every miss by hash is a timed packet's.
    let by_hash = s.counter(Counter::FlowMissByHash)?.unwrap_or(0);
    let hits = hit_count(s)? - hits;
    ensure!(
        hits + new + by_hash == packets,
        "{} ({}): {hits} flow hits, {new} new flows and {by_hash} misses by hash, \
         expected {packets} packets",
        f.name,
        s.design().name()
    );
    Ok(new + by_hash)
}

/// The fixture's ACK frame at position `next` of the timed order.
fn timed_frame(f: &Fixture, next: u32) -> Vec<u8> {
    f.frame(ACK, &f.visit(TIMED_KEY, next))
}

/// One untimed round, then `runs` rounds of test runs of `repeat`
/// repetitions (`lb`, the floor, then the baseline on the same frame), each
/// run going on from where the last one stopped: ns/packet of each.
fn timed(
    subjects: &mut [Subject; 2],
    base: &Xdp,
    f: &Fixture,
    repeat: u32,
    runs: usize,
) -> Result<[Vec<f64>; 3]> {
    let mut samples: [Vec<f64>; 3] = Default::default();
    for run in 0..=runs {
        let frame = timed_frame(f, run as u32 * repeat);
        let mut times = [0.0; 3];
        for (i, program) in subjects
            .iter_mut()
            .map(|s| &*s.program_mut())
            .chain([base])
            .enumerate()
        {
            let (verdict, time, _) = test_run(program, &frame, repeat)?;
            ensure!(verdict == XDP_TX, "{}: verdict {verdict}", f.name);
            times[i] = ns(time);
        }
        // The first round warms up (the fill ran in another order).
        if run > 0 {
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
        }
    }
    Ok(samples)
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

/// `runs` rounds of `alone_and_both`, for `lb`, the floor, then the
/// baseline.
fn scaling(
    subjects: &mut [Subject; 2],
    base: &Xdp,
    f: &Fixture,
    repeat: u32,
    runs: usize,
    cpus: [usize; 2],
) -> Result<Scaling> {
    let mut s = Scaling {
        cpus,
        alone: Default::default(),
        both: Default::default(),
    };
    for run in 0..runs {
        let next = run as u32 * repeat;
        for (i, program) in subjects
            .iter_mut()
            .map(|s| &*s.program_mut())
            .chain([base])
            .enumerate()
        {
            let (alone, both) = alone_and_both(program, f, repeat, cpus, next)?;
            s.alone[i].push(alone);
            s.both[i].push(both);
        }
    }
    Ok(s)
}

/// The section's title.
pub const TITLE: &str = "Data plane: established flows at scale (scrambled order)";

/// The report section; writes `flows.svg` into `dir`.
pub fn section(settings: &Settings, dir: &std::path::Path) -> Result<Section> {
    let cpus = cpus::pair();
    let rows = measure(settings, &cpus)?;
    let memory = memory::measure(settings)?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "N established TCP flows to the `hash` listener, each timed packet of another flow than the last, in a scrambled order that covers all N in every run: `lb_scrambled` (`lb`'s flow table) and `lru_scrambled` (the floor: main's kernel LRU flow maps and flow cache, frozen in tests/bench/ebpf/src/lru/), whose prologue gives repetition i of a test run the source of flow scramble(i mod N) (docs/bench.md), beside `macswap_scrambled`, the same prologue and a MAC swap. Both designs get a table for 1,048,576 flows (`max_flows`, the default: `lb` 524,288 buckets of 4 entries; the floor an LRU map of 1,048,576 entries per family and as many flow-cache slots). The N flows are created first (untimed: one test run of N SYNs, in another order), then {} rounds of max(N, {}) repetitions (ACKs), `lb`, the floor and the baseline interleaved, after one untimed round; ratios = the median over the rounds of the ratio within each round; gain = floor / `lb`. Checked: each fill made N new flows (the new-flow counter); in the timed runs every packet was a flow hit or a new flow. New flows there are flows a table did not keep at the fill, shown: `lb`'s evicted (FlowEvicted: a later flow of the fill found both its buckets full and took the entry of a flow seen once) or never remembered (FlowInsertFailed); the floor's evicted by its kernel LRU map, which evicts before it is full (its free entries are spread over per-CPU lists). `lb`'s table after the fill: entries in use and buckets by entries. The floor's flow cache: the share of its timed packets the cache answered (1 - slot writes / packets).",
        settings.runs, settings.repeat
    ));
    s.table(
        &[
            "fixture",
            "repetitions",
            "lb min / median",
            "floor min / median",
            "baseline min / median",
            "lb / baseline",
            "floor / baseline",
            "gain (floor / lb)",
        ],
        &rows.iter().map(table_row).collect::<Vec<_>>(),
    );
    s.table(
        &[
            "fixture",
            "lb: entries in use / of",
            "lb: buckets with 0 / 1 / 2 / 3 / 4 entries",
            "lb: unremembered at the fill / evicted",
            "lb: timed new flows",
            "floor: timed new flows",
            "floor: flow cache answered",
        ],
        &rows.iter().map(table_detail_row).collect::<Vec<_>>(),
    );
    scaling_table(&mut s, &rows, &cpus);
    s.line(memory.line());
    figures(&mut s, &rows);
    memory_figures(&mut s, &rows, &memory);
    if !rows.is_empty() {
        plot_medians(&dir.join("flows.svg"), &rows)?;
        s.plots.push("flows.svg".into());
    }
    Ok(s)
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

fn min_med(v: &[f64]) -> String {
    let (min, median) = min_median(v);
    format!("{} / {}", fmt_ns(min), fmt_ns(median))
}

/// A fixture's row of the one-CPU table.
fn table_row(r: &Row) -> Vec<String> {
    vec![
        r.fixture.name.into(),
        r.repeat.to_string(),
        min_med(&r.lb),
        min_med(&r.floor),
        min_med(&r.base),
        format!("{:.2}x", r.ratio()),
        format!("{:.2}x", r.floor_ratio()),
        format!("{:.2}x", r.gain()),
    ]
}

/// A fixture's row of the table of what each design held.
fn table_detail_row(r: &Row) -> Vec<String> {
    let t = &r.table;
    let per_bucket: Vec<String> = t.per_bucket.iter().map(|&n| fmt_count(n)).collect();
    vec![
        r.fixture.name.into(),
        format!(
            "{} / {} ({})",
            fmt_count(t.entries),
            fmt_count(t.capacity()),
            percent(t.entries as f64 / t.capacity().max(1) as f64)
        ),
        per_bucket.join(" / "),
        format!("{} / {}", fmt_count(t.unremembered), fmt_count(t.evicted)),
        fmt_count(r.misses[0]),
        fmt_count(r.misses[1]),
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
        "\nBoth CPUs at once: the same fixtures, a thread pinned to CPU {a} and one to CPU {b} (sched_setaffinity), each running a test run of the same program and maps at the same time; CPU {a} visits one half of the N flows and CPU {b} the other (in a scrambled order, as above), as RSS gives each flow to one queue. Each round runs CPU {a} alone on its half, CPU {b} alone on its half, then both at once, for `lb`, the floor and the baseline; {} rounds, of max(N, repeat) repetitions per CPU. Ratio = the median over the rounds of the CPUs' mean of (ns/packet with both running) / (ns/packet of that CPU alone in the same round): 1.00 means that sharing the tables costs nothing; the baseline's ratio is what the machine itself adds (two vCPUs of a VM).",
        rows.iter().find_map(|r| r.scaling.as_ref()).map_or(0, |sc| sc.both[0].len())
    ));
    let pair = |v: [f64; 2]| format!("{} / {}", fmt_ns(v[0]), fmt_ns(v[1]));
    let table: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| Some((r.fixture.name, r.scaling.as_ref()?)))
        .map(|(name, sc)| {
            let mut row = vec![name.to_string()];
            for i in 0..3 {
                row.extend([
                    pair(Scaling::per_cpu(&sc.alone[i])),
                    pair(Scaling::per_cpu(&sc.both[i])),
                    format!("{:.2}", sc.of(i)),
                ]);
            }
            row
        })
        .collect();
    let cpus = format!("(CPU {a} / CPU {b})");
    s.table(
        &[
            "fixture",
            &format!("lb alone {cpus}"),
            "lb, both at once",
            "lb ratio",
            "floor alone",
            "floor, both at once",
            "floor ratio",
            "baseline alone",
            "baseline, both at once",
            "baseline ratio",
        ],
        &table,
    );
}

/// The summary's figures: each fixture's gain over the floor (with a goal
/// at 1,048,576 flows) and its two-CPU ratios.
fn figures(s: &mut Section, rows: &[Row]) {
    for r in rows {
        let name = format!(
            "established flows at scale, {}: floor / lb ns/packet (same prologue)",
            r.fixture.name
        );
        let value = format!(
            "{:.2}x (lb {}, floor {}, MAC-swap {}; lb / MAC-swap {:.2}x)",
            r.gain(),
            fmt_ns(stats::median(&r.lb)),
            fmt_ns(stats::median(&r.floor)),
            fmt_ns(stats::median(&r.base)),
            r.ratio()
        );
        s.figures.push(if r.fixture.bits == 20 {
            Figure::goal(
                name,
                value,
                format!(
                    ">= {GAIN_1M_GOAL}x (issue 18: <= 200 ns on an Intel Xeon 2 vCPU, main 503-520 ns there)"
                ),
                r.gain() >= GAIN_1M_GOAL,
            )
        } else {
            Figure::info(name, value)
        });
    }
    for r in rows {
        let Some(sc) = &r.scaling else { continue };
        let ([a, b], [alone_a, alone_b]) = (
            Scaling::per_cpu(&sc.both[0]),
            Scaling::per_cpu(&sc.alone[0]),
        );
        s.figures.push(Figure::info(
            format!(
                "both CPUs at once, {}: lb ns/packet per CPU / the CPU alone",
                r.fixture.name
            ),
            format!(
                "{:.2} ({} / {} vs {} / {} alone; floor {:.2}, MAC-swap {:.2})",
                sc.of(0),
                fmt_ns(a),
                fmt_ns(b),
                fmt_ns(alone_a),
                fmt_ns(alone_b),
                sc.of(1),
                sc.of(2)
            ),
        ));
    }
}

/// The million-flow fixtures in reads from memory (issue 18: an
/// established packet at 1M flows costs at most one miss plus the work of a
/// hot flow).
fn memory_figures(s: &mut Section, rows: &[Row], memory: &Latency) {
    for r in rows.iter().filter(|r| r.fixture.bits == 20) {
        let lb = stats::median(&r.lb);
        s.figures.push(Figure::info(
            format!(
                "established flows at scale, {}, in reads from memory: lb / one read",
                r.fixture.name
            ),
            memory.in_reads(lb),
        ));
    }
}

/// The medians of `lb`, the floor and the baseline, fixture by fixture.
fn plot_medians(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let medians = |f: fn(&Row) -> &Vec<f64>| rows.iter().map(|r| stats::median(f(r))).collect();
    plot::bars(
        path,
        &Bars {
            title: "established flows at scale, ns/packet (median): lb vs the floor vs MAC-swap, same prologue",
            y_label: "ns/packet",
            categories: rows.iter().map(|r| r.fixture.name.to_string()).collect(),
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
