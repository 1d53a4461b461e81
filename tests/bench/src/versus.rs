//! Against another XDP program (`--versus-pin PATH`): a load balancer built
//! and configured by its own loader, pinned in bpffs, timed beside `lb`,
//! the floor and MAC-swap in the same runs, each behind its own copy of the
//! same wrapper (`versus`, tests/bench/ebpf/src/versus.rs: it takes off
//! what the previous repetition added in front of the frame, gives the
//! frame the source of the next flow of its visit, as the scrambled builds
//! do, and tail-calls the program under test).
//!
//! The other program is configured by its loader for the benchmark's
//! listeners: TCP port 80 of 10.0.3.49 and of fd00:3::49 (docs/bench.md,
//! "Against another load balancer", says how Katran is). The benchmark does
//! not read its maps: it reports its verdicts, and `lb`'s counters check
//! that the wrapper gave every repetition the flow it should.
//!
//! Everything runs on one thread pinned to one CPU: a program with per-CPU
//! flow tables (Katran's LRU maps) must find at the timed runs the flows
//! the fill created.
use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{ProgramFd, ProgramInfo, Xdp},
};
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    Build, Design, Object, POLICY, Settings, Subject, XDP_PASS, XDP_TX, cpus,
    flows::{FILL_KEY, TIMED_KEY, with_visit},
    report::{Figure, Section, fmt_count, fmt_ns},
    scramble::Visit,
    stats::{self, min_median},
    test_run,
};

pub const TITLE: &str = "Data plane: against another XDP program (`versus`)";

/// The program to compare with.
#[derive(Debug, Clone)]
pub struct Other {
    /// Where its loader pins it.
    pub pin: PathBuf,
    /// A shell command that loads, configures and pins it afresh, run
    /// before each fixture (so that each fixture starts from empty flow
    /// tables); without it, the pinned program is used as it is.
    pub load: Option<String>,
    /// Its name in the report.
    pub name: String,
}

/// One fixture: 2^`bits` flows (one: a hot flow) to the `web` or `web6`
/// listener, or to the load balancer's own address on the same port
/// (`host`); established (created by the fill, then ACKs) or a new flow
/// every repetition (SYNs of flows the fill did not create, into a table
/// the fill made full).
struct Fixture {
    name: &'static str,
    v6: bool,
    host: bool,
    bits: u32,
    new_flows: bool,
    /// Issue 18's goal, stated against Katran: the other program's time /
    /// `lb`'s at least this.
    goal: Option<f64>,
}

/// An established packet at 1,048,576 flows: "2x faster than Katran".
const ESTABLISHED_1M_GOAL: f64 = 2.0;
/// A new flow into a full table: "4x faster than Katran".
const NEW_FLOW_GOAL: f64 = 4.0;

const FIXTURES: [Fixture; 7] = [
    Fixture {
        name: "tcp4, one established flow",
        v6: false,
        host: false,
        bits: 0,
        new_flows: false,
        goal: None,
    },
    Fixture {
        name: "tcp4, 4,096 flows",
        v6: false,
        host: false,
        bits: 12,
        new_flows: false,
        goal: None,
    },
    Fixture {
        name: "tcp4, 65,536 flows",
        v6: false,
        host: false,
        bits: 16,
        new_flows: false,
        goal: None,
    },
    Fixture {
        name: "tcp4, 1,048,576 flows",
        v6: false,
        host: false,
        bits: 20,
        new_flows: false,
        goal: Some(ESTABLISHED_1M_GOAL),
    },
    Fixture {
        name: "tcp6, 1,048,576 flows",
        v6: true,
        host: false,
        bits: 20,
        new_flows: false,
        goal: Some(ESTABLISHED_1M_GOAL),
    },
    Fixture {
        name: "tcp4, new flow, 1,048,576 flows before",
        v6: false,
        host: false,
        bits: 20,
        new_flows: true,
        goal: Some(NEW_FLOW_GOAL),
    },
    Fixture {
        name: "host: not a VIP, port 80",
        v6: false,
        host: true,
        bits: 0,
        new_flows: false,
        goal: None,
    },
];

impl Fixture {
    fn flows(&self) -> u32 {
        1 << self.bits
    }

    /// A frame with `flags` that carries `visit`.
    fn frame(&self, flags: u8, visit: &Visit) -> Vec<u8> {
        let frame = match (self.v6, self.host) {
            (true, _) => Frame::tcp("fd00:5::", 0x8000, "fd00:3::49", 80, flags),
            (false, false) => Frame::tcp("10.128.0.0", 0x8000, "10.0.3.49", 80, flags),
            (false, true) => Frame::tcp("10.128.0.0", 0x8000, "10.0.3.2", 80, flags),
        };
        with_visit(frame.build(), visit)
    }

    /// The frame of timed run `round`: the fill's flows in another order,
    /// or (new flows) flows of a block of 2^`bits` that no earlier run
    /// used.
    fn timed(&self, round: u32) -> Vec<u8> {
        let visit = Visit::new(self.bits, TIMED_KEY, 0);
        if self.new_flows {
            self.frame(SYN, &visit.from_flow((round + 1) << self.bits))
        } else {
            self.frame(ACK, &visit)
        }
    }

    /// `lb`'s and the floor's verdict.
    fn verdict(&self) -> u32 {
        if self.host { XDP_PASS } else { XDP_TX }
    }
}

/// The four programs under test, in the order of [`Row::ns`]: MAC-swap,
/// `lb`, the floor and the other program.
const COMPARED: usize = 4;

/// One measured fixture.
struct Row {
    fixture: &'static Fixture,
    repeat: u32,
    /// ns/packet of each run, per program.
    ns: [Vec<f64>; COMPARED],
    /// The other program's verdicts (every timed run's).
    other_verdicts: Vec<u32>,
    /// `lb`'s timed packets of flows its fill did not keep (sent by the
    /// hash, not remembered).
    lb_by_hash: u64,
}

/// Each program loaded, and a wrapper of each.
struct Programs {
    _macswap: Ebpf,
    /// `lb`'s data plane, for its counters.
    lb: Subject,
    _floor: Subject,
    wrappers: Vec<Ebpf>,
}

impl Programs {
    fn load(other: &Other) -> Result<Programs> {
        if let Some(cmd) = &other.load {
            let status = std::process::Command::new("sh")
                .args(["-c", cmd])
                .status()
                .with_context(|| format!("run `{cmd}`"))?;
            ensure!(status.success(), "`{cmd}` failed: {status}");
        }
        let info = ProgramInfo::from_pin(&other.pin)
            .with_context(|| format!("no program pinned at {}", other.pin.display()))?;
        let table = lb_common::DEFAULT_FLOW_TABLE_SIZE;
        let mut macswap = crate::load_macswap()?;
        let mut lb = Design::Lb.load(Build::Plain, POLICY, table)?;
        let mut floor = Design::Floor.load(Build::Plain, POLICY, table)?;
        let wrappers = vec![
            wrapper(crate::macswap(&mut macswap).fd()?)?,
            wrapper(lb.program_mut().fd()?)?,
            wrapper(floor.program_mut().fd()?)?,
            wrapper(&info.fd()?).with_context(|| {
                format!(
                    "the program pinned at {} (an XDP program without frags?)",
                    other.pin.display()
                )
            })?,
        ];
        Ok(Programs {
            _macswap: macswap,
            lb,
            _floor: floor,
            wrappers,
        })
    }

    /// `lb`'s flow hits, TCP packets sent by the hash, new flows and
    /// packets passed.
    fn lb_counts(&self) -> Result<[u64; 4]> {
        let which = [
            Counter::FlowHit,
            Counter::FlowMissByHash,
            Counter::NewFlow,
            Counter::Passed,
        ];
        let mut counts = [0; 4];
        for (count, which) in counts.iter_mut().zip(which) {
            *count = self.lb.counter(which)?.context("lb has every counter")?;
        }
        Ok(counts)
    }

    /// One test run of program `i` behind its wrapper.
    fn run(&mut self, i: usize, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let program: &mut Xdp = self.wrappers[i]
            .program_mut("versus")
            .context("the wrapper's program")?
            .try_into()?;
        let (verdict, d, _) = test_run(program, frame, repeat)?;
        Ok((verdict, d.as_secs_f64() * 1e9))
    }
}

/// A loaded wrapper whose tail call goes to `under_test`.
fn wrapper(under_test: &ProgramFd) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(Object::read(Object::VERSUS)?.bytes())?;
    let program: &mut Xdp = ebpf
        .program_mut("versus")
        .context("the wrapper's program")?
        .try_into()?;
    program.load()?;
    let mut slot = ProgramArray::try_from(ebpf.map_mut("UNDER_TEST").context("UNDER_TEST")?)?;
    slot.set(0, under_test, 0)?;
    Ok(ebpf)
}

/// One fixture, from fresh programs: the fill, then `settings.runs` timed
/// rounds (after an untimed one), the four programs interleaved.
fn measure_fixture(f: &'static Fixture, settings: &Settings, other: &Other) -> Result<Row> {
    let mut p = Programs::load(other)?;
    fill(&mut p, f)?;
    let repeat = if f.new_flows {
        settings.new_flow_repeat.min(f.flows())
    } else {
        settings.repeat.max(f.flows())
    };
    let before = p.lb_counts()?;
    let mut ns: [Vec<f64>; COMPARED] = Default::default();
    let mut other_verdicts = Vec::new();
    for round in 0..=settings.runs as u32 {
        let frame = f.timed(round);
        for (i, times) in ns.iter_mut().enumerate() {
            let (verdict, t) = p.run(i, &frame, repeat)?;
            match i {
                3 => other_verdicts.push(verdict),
                1 | 2 => ensure!(verdict == f.verdict(), "{}: verdict {verdict}", f.name),
                _ => {}
            }
            if round > 0 {
                times.push(t);
            }
        }
    }
    let after = p.lb_counts()?;
    let packets = u64::from(repeat) * (settings.runs as u64 + 1);
    let lb_by_hash = check_lb(f, packets, [0, 1, 2, 3].map(|i| after[i] - before[i]))?;
    Ok(Row {
        fixture: f,
        repeat,
        ns,
        other_verdicts,
        lb_by_hash,
    })
}

/// Creates the fixture's flows in each program (SYNs, in the fill's
/// order), and checks that `lb` made them.
fn fill(p: &mut Programs, f: &Fixture) -> Result<()> {
    let fill = f.frame(SYN, &Visit::new(f.bits, FILL_KEY, 0));
    for i in 0..COMPARED {
        p.run(i, &fill, f.flows())?;
    }
    let made = p.lb_counts()?[2];
    let expected = if f.host { 0 } else { u64::from(f.flows()) };
    ensure!(
        made == expected,
        "{}: lb's fill made {made} flows, not {expected}",
        f.name
    );
    Ok(())
}

/// Checks that each of `lb`'s timed packets was what the fixture says (the
/// wrapper gave each repetition its flow), from the differences of its
/// counts (`Programs::lb_counts`): a flow hit or, for the few flows its
/// fill did not keep, a packet sent by the hash; a new flow; passed.
/// Returns the packets sent by the hash.
fn check_lb(f: &Fixture, packets: u64, counts: [u64; 4]) -> Result<u64> {
    let [hits, by_hash, news, passed] = counts;
    let as_expected = match (f.host, f.new_flows) {
        (true, _) => passed == packets,
        (false, true) => news == packets,
        (false, false) => hits + by_hash == packets,
    };
    ensure!(
        as_expected,
        "{}: lb's {packets} timed packets: {hits} flow hits, {by_hash} by hash, {news} new flows, {passed} passed",
        f.name
    );
    Ok(by_hash)
}

/// The section, or why it was not measured.
pub fn section(settings: &Settings, other: Option<&Other>) -> Result<Section> {
    let other = other.context(
        "no program to compare with: `--versus-pin PATH` (and `--versus-load CMD`), docs/bench.md",
    )?;
    let cpu = *cpus::allowed()?.last().context("no CPU allowed")?;
    let rows = cpus::on_cpus(&[cpu], |_| {
        FIXTURES
            .iter()
            .filter(|f| settings.wants(f.name))
            .map(|f| measure_fixture(f, settings, other))
            .collect::<Result<Vec<_>>>()
    })?
    .pop()
    .context("the pinned thread's rows")?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "`{name}` (pinned at `{pin}`{load}) beside MAC-swap, `lb` and the floor (main's design before the flow table), each behind its own copy of one wrapper (`versus`): it takes off what the previous repetition added in front of the frame (an encapsulation), gives the frame the source of the next flow of its visit (scrambled, as in the section on established flows at scale) and tail-calls the program. All on one thread pinned to CPU {cpu}; each fixture from freshly loaded programs{fresh}. The flows are created first (one untimed test run of their SYNs, in another order), then {runs} rounds of max(N, {repeat}) repetitions (ACKs; for new flows, {new_repeat} SYNs of flows not seen before, a new block each round), the four interleaved, after one untimed round; ratios = the median over the rounds of the ratio within each round. `lb` and the floor get the default flow table (1,048,576 flows). Checked: `lb`'s fill made N flows, and each of its timed packets was what the fixture says (a flow hit, a new flow, passed), or for the few flows its fill did not keep (shown) a packet sent by the hash. The other program's verdicts are shown (3 = XDP_TX, 2 = XDP_PASS).",
        name = other.name,
        pin = other.pin.display(),
        load = other
            .load
            .as_ref()
            .map_or(String::new(), |c| format!(", loaded by `{c}`")),
        fresh = if other.load.is_some() {
            ""
        } else {
            " (the other program's as it was: no `--versus-load`)"
        },
        runs = settings.runs,
        repeat = settings.repeat,
        new_repeat = settings.new_flow_repeat.min(1 << 20),
    ));
    let header = [
        "fixture".to_string(),
        "MAC-swap min / median".into(),
        "lb min / median".into(),
        "floor min / median".into(),
        format!("{} min / median", other.name),
        format!("{} / lb", other.name),
        "floor / lb".into(),
        "lb / MAC-swap".into(),
        format!("{} verdicts", other.name),
        "lb: timed packets of flows not kept".into(),
    ];
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    s.table(&header, &rows.iter().map(table_row).collect::<Vec<_>>());
    figures(&mut s, &rows, other);
    Ok(s)
}

/// The summary's figures: the other program's time / `lb`'s for each
/// fixture, judged where issue 18 set a goal.
fn figures(s: &mut Section, rows: &[Row], other: &Other) {
    for r in rows {
        let name = format!("{} / lb ns/packet: {}", other.name, r.fixture.name);
        let ratio = stats::paired_ratio(&r.ns[3], &r.ns[1]);
        let value = format!("{ratio:.2}x");
        s.figures.push(match r.fixture.goal {
            Some(goal) => Figure::goal(
                name,
                value,
                format!(">= {goal}x (issue 18, against Katran)"),
                ratio >= goal,
            ),
            None => Figure::info(name, value),
        });
    }
}

fn table_row(r: &Row) -> Vec<String> {
    let cell = |v: &[f64]| {
        let (min, median) = min_median(v);
        format!("{} / {}", fmt_ns(min), fmt_ns(median))
    };
    let mut verdicts = r.other_verdicts.clone();
    verdicts.sort_unstable();
    verdicts.dedup();
    vec![
        format!(
            "{} ({} repetitions)",
            r.fixture.name,
            fmt_count(r.repeat.into())
        ),
        cell(&r.ns[0]),
        cell(&r.ns[1]),
        cell(&r.ns[2]),
        cell(&r.ns[3]),
        format!("{:.2}", stats::paired_ratio(&r.ns[3], &r.ns[1])),
        format!("{:.2}", stats::paired_ratio(&r.ns[2], &r.ns[1])),
        format!("{:.2}", stats::paired_ratio(&r.ns[1], &r.ns[0])),
        format!("{verdicts:?}"),
        fmt_count(r.lb_by_hash),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scramble::VISIT_AT;

    /// The wrapper takes off an outer header the previous repetition put
    /// in front of the packet (as Katran's IP-in-IP does: a new Ethernet
    /// header, then the outer IP header, then the packet as it was), so
    /// that the program under test sees the benchmark's frame again: `lb`
    /// behind it forwards the frame as a new flow, unchanged behind its
    /// Ethernet header.
    #[test]
    fn the_wrapper_takes_off_an_encapsulation() {
        let f = &FIXTURES[0];
        let frame = f.frame(SYN, &Visit::new(0, FILL_KEY, 0));
        let mut encapsulated = frame[..14].to_vec();
        encapsulated.extend_from_slice(&[0x45; 20]);
        encapsulated.extend_from_slice(&frame[14..]);
        let mut lb = Design::Lb
            .load(Build::Plain, POLICY, 1 << 16)
            .expect("load lb (run as root)");
        let mut wrapped = wrapper(lb.program_mut().fd().unwrap()).unwrap();
        let program: &mut Xdp = wrapped.program_mut("versus").unwrap().try_into().unwrap();
        let (verdict, _, out) = test_run(program, &encapsulated, 1).unwrap();
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out.len(), frame.len());
        // The packet as it was, and the visit one position on.
        assert_eq!(out[12..VISIT_AT], frame[12..VISIT_AT]);
        assert_eq!(crate::flows::visit_next(&out), Some(1));
        assert_eq!(lb.new_flows().unwrap(), 1);
    }
}
