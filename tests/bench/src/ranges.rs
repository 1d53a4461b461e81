//! What a listener's port range costs `lb`'s data plane: ns/packet of
//! another port of a range against its first port, beside the MAC-swap
//! baseline, with BPF_PROG_TEST_RUN as in [`crate::packet`]. `lb` only: the
//! floor (main's design before the flow table) has no port ranges.
//!
//! The policy is [`POLICY`] with the `web` listener (hash algorithm) on the
//! range 80-90 ([`policy`]). A range's listener is stored under its first
//! port (`LISTENERS`, `LISTENERS_BY_ID`), so:
//!
//! - Established flow: on the first port the flow-table entry's listener
//!   hint is confirmed by the slot's port; on another port (85) by
//!   `LISTENER_PORTS` too.
//! - New flow (`lb_new_flow`, a new source every repetition, the table
//!   filled first): the first port is found in `LISTENERS`; another port
//!   misses it and is found in `PORT_RANGES` (an LPM trie).
//! - Passed: TCP to the VIP on a port outside the range (22) gets through
//!   the listener filter (the VIP and protocol have a range), misses
//!   `LISTENERS` and `PORT_RANGES` and is passed to the kernel; TCP to the
//!   load balancer's own address, port 22, stops at the filter.
//!
//! The two fixtures of each pair are measured in the same runs (each run:
//! the reference fixture, then the other, each `lb` then the baseline), so
//! each pair's figure compares calls of `lb` made side by side.
use std::rc::Rc;

use anyhow::{Context as _, Result, ensure};
use aya::programs::Xdp;
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    Build, Design, POLICY, Settings, Subject, XDP_PASS, XDP_TX, load_macswap, macswap,
    packet::{self, FLOW_TABLE_SIZE, fill, min_med, ns, opening},
    report::{Figure, Section, fmt_ns},
    stats, test_run,
};

/// The section's title.
pub const TITLE: &str = "Data plane: port ranges (BPF_PROG_TEST_RUN)";
/// The range of the `web` listener in [`policy`].
pub const FIRST: u16 = 80;
pub const LAST: u16 = 90;
/// Another port of that range.
pub const OTHER: u16 = 85;
const _: () = assert!(FIRST < OTHER && OTHER <= LAST);
/// A port outside every listener of the VIP (and the host's SSH).
const OUTSIDE: u16 = 22;

/// [`POLICY`] with the `web` listener (TCP/IPv4, hash algorithm) on the
/// range [`FIRST`]-[`LAST`] instead of port 80: the rest as it is, so the
/// data plane holds what it holds in `packet`.
pub fn policy() -> String {
    let one = "protocol: tcp, port: 80, target_group: web }";
    assert!(
        POLICY.contains(one),
        "POLICY has the web listener on TCP port 80"
    );
    let range = format!("protocol: tcp, port: {FIRST}-{LAST}, target_group: web }}");
    POLICY.replacen(one, &range, 1)
}

/// What a fixture measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every repetition finds the flow (forwarded).
    Established,
    /// Every repetition is a new flow (forwarded; `lb_new_flow`).
    NewFlow,
    /// Not a listener's: passed to the kernel.
    Passed,
}

impl Kind {
    fn verdict(self) -> u32 {
        match self {
            Kind::Established | Kind::NewFlow => XDP_TX,
            Kind::Passed => XDP_PASS,
        }
    }

    /// The summary's figure of its pair: `lb` on the other fixture / on
    /// the reference.
    fn figure(self) -> String {
        let what = match self {
            Kind::Established => {
                "established flow on another port of a range / on its first port".into()
            }
            Kind::NewFlow => "new flow on another port of a range / on its first port".into(),
            Kind::Passed => {
                format!("passed, tcp {OUTSIDE} to a VIP with a range / to the host's own address")
            }
        };
        format!("port range: {what}, lb ns/packet")
    }

    /// The counter each repetition adds one to.
    fn counter(self) -> Counter {
        match self {
            Kind::Established => Counter::FlowHit,
            Kind::NewFlow => Counter::NewFlow,
            Kind::Passed => Counter::Passed,
        }
    }
}

/// One fixture: its name and the frame of run `run` (new flows: a source
/// of its own per run).
struct Fixture {
    name: String,
    frame: Rc<dyn Fn(usize) -> Vec<u8>>,
}

fn fixed(name: String, frame: Vec<u8>) -> Fixture {
    Fixture {
        name,
        frame: packet::fixed(frame),
    }
}

/// Two fixtures measured in the same runs: the reference, then the one
/// whose cost against it the figure gives.
struct Pair {
    kind: Kind,
    fixtures: [Fixture; 2],
}

/// The three pairs: established flows, new flows, passed packets.
fn pairs() -> [Pair; 3] {
    let new_flow = |name: String, net: u8, port| Fixture {
        name,
        frame: Rc::new(move |run| {
            Frame::tcp(&format!("10.{net}.{run}.1"), 1, "10.0.3.49", port, SYN).build()
        }),
    };
    let ack = |dst, port| Frame::tcp("10.0.3.100", 40000, dst, port, ACK).build();
    [
        Pair {
            kind: Kind::Established,
            fixtures: [
                fixed(
                    format!("tcp4 hash established, range's first port ({FIRST})"),
                    ack("10.0.3.49", FIRST),
                ),
                fixed(
                    format!("tcp4 hash established, another port of the range ({OTHER})"),
                    ack("10.0.3.49", OTHER),
                ),
            ],
        },
        Pair {
            kind: Kind::NewFlow,
            fixtures: [
                new_flow(
                    format!("tcp4 hash new flow, range's first port ({FIRST})"),
                    120,
                    FIRST,
                ),
                new_flow(
                    format!("tcp4 hash new flow, another port of the range ({OTHER})"),
                    121,
                    OTHER,
                ),
            ],
        },
        Pair {
            kind: Kind::Passed,
            fixtures: [
                fixed(
                    format!("host, not a VIP (tcp {OUTSIDE})"),
                    ack("10.0.3.2", OUTSIDE),
                ),
                fixed(
                    format!("VIP with a range, port outside it (tcp {OUTSIDE})"),
                    ack("10.0.3.49", OUTSIDE),
                ),
            ],
        },
    ]
}

/// One measured fixture: ns/packet of each run.
pub struct Row {
    pub name: String,
    pub lb: Vec<f64>,
    pub base: Vec<f64>,
}

impl Row {
    /// Median over the runs of `lb` / MAC-swap in the same run.
    pub fn ratio(&self) -> f64 {
        stats::paired_ratio(&self.lb, &self.base)
    }
}

/// A measured pair: its figure, the reference's row and the other's.
pub struct Measured {
    pub figure: String,
    pub rows: [Row; 2],
}

impl Measured {
    /// Median over the runs of `lb` on the other fixture / `lb` on the
    /// reference, in the same run.
    pub fn cost(&self) -> f64 {
        stats::paired_ratio(&self.rows[1].lb, &self.rows[0].lb)
    }
}

/// Runs both fixtures of every pair `settings` wants (by either name).
pub fn measure(settings: &Settings) -> Result<Vec<Measured>> {
    let mut programs = Programs::load()?;
    let mut measured = Vec::new();
    for pair in pairs() {
        if pair.fixtures.iter().any(|f| settings.wants(&f.name)) {
            measured.push(Measured {
                rows: programs.pair(&pair, settings)?,
                figure: pair.kind.figure(),
            });
        }
    }
    Ok(measured)
}

/// `lb` (`lb_plain`), its new-flow build and the MAC-swap baseline.
struct Programs {
    plain: Subject,
    new_flow: Subject,
    baseline: aya::Ebpf,
}

impl Programs {
    fn load() -> Result<Programs> {
        let policy = policy();
        let load = |build| {
            Design::Lb
                .load(build, &policy, FLOW_TABLE_SIZE)
                .context("loading lb (run as root)")
        };
        let plain = load(Build::Plain)?;
        let mut new_flow = load(Build::NewFlow)?;
        // As in `packet`: new flows go into a table filled first (untimed)
        // with as many flows as it is sized for, from sources no fixture
        // uses, each fill packet a new flow.
        let v4 = Frame::tcp("10.250.0.1", 1, "10.0.3.49", FIRST, SYN).build();
        fill(&mut new_flow, &[&v4])?;
        Ok(Programs {
            plain,
            new_flow,
            baseline: load_macswap()?,
        })
    }

    /// Both fixtures of `pair`, interleaved in each run: ns/packet of `lb`
    /// and of the baseline.
    fn pair(&mut self, pair: &Pair, settings: &Settings) -> Result<[Row; 2]> {
        let base = macswap(&mut self.baseline);
        let (lb, repeat) = match pair.kind {
            Kind::NewFlow => (&mut self.new_flow, settings.new_flow_repeat),
            Kind::Established | Kind::Passed => (&mut self.plain, settings.repeat),
        };
        if pair.kind != Kind::NewFlow {
            for f in &pair.fixtures {
                prepare(lb, base, f, repeat, pair.kind)?;
            }
        }
        let mut rows = pair.fixtures.each_ref().map(|f| Row {
            name: f.name.clone(),
            lb: Vec::new(),
            base: Vec::new(),
        });
        for run in 0..settings.runs {
            for (f, row) in pair.fixtures.iter().zip(&mut rows) {
                let frame = (f.frame)(run);
                let [lb, base] = one_run(lb, base, &frame, repeat, pair.kind, &f.name)?;
                row.lb.push(lb);
                row.base.push(base);
            }
        }
        Ok(rows)
    }
}

/// Before the timed runs of an established or passed fixture, as in
/// `packet`: its opening packet (a TCP flow's SYN makes its entry), then
/// one untimed run (the fill just before leaves the caches cold).
fn prepare(lb: &mut Subject, base: &Xdp, f: &Fixture, repeat: u32, kind: Kind) -> Result<()> {
    let frame = (f.frame)(0);
    let (verdict, _, _) = test_run(lb.program_mut(), &opening(&frame), 1)?;
    ensure!(
        verdict == kind.verdict(),
        "{} (its opening packet): verdict {verdict}, expected {}",
        f.name,
        kind.verdict()
    );
    one_run(lb, base, &frame, repeat, kind, &f.name).map(drop)
}

/// A test run of `frame` by `lb`, then by the baseline: ns/packet of each.
/// `lb`'s verdict must be the kind's, and each repetition must have added
/// one to the kind's counter (a flow hit, a new flow, a passed packet).
fn one_run(
    lb: &mut Subject,
    base: &Xdp,
    frame: &[u8],
    repeat: u32,
    kind: Kind,
    name: &str,
) -> Result<[f64; 2]> {
    let which = kind.counter();
    let count =
        |lb: &Subject| -> Result<u64> { lb.counter(which)?.context("lb counts everything") };
    let before = count(lb)?;
    let (verdict, d, _) = test_run(lb.program_mut(), frame, repeat)?;
    let base_d = test_run(base, frame, repeat)?.1;
    ensure!(
        verdict == kind.verdict(),
        "{name}: verdict {verdict}, expected {}",
        kind.verdict()
    );
    let counted = count(lb)? - before;
    ensure!(
        counted == u64::from(repeat),
        "{name}: {counted} of {repeat} repetitions counted {}",
        which.name()
    );
    Ok([ns(d), ns(base_d)])
}

/// The report section.
pub fn section(settings: &Settings) -> Result<Section> {
    let measured = measure(settings)?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "`lb` alone (the floor has no port ranges), with the policy of `packet` but the `web` listener (TCP/IPv4, hash) on the range {FIRST}-{LAST} instead of port 80: a range's listener is kept under its first port. Each figure: {} repetitions per test run ({} for new flows), {} runs; each run measures both fixtures of a pair, each by `lb` then the MAC-swap XDP_TX program; min / median of the kernel's mean time per repetition; ratios = the median over the runs of the ratio within each run. Established flow (`lb_plain`; the flow made by its SYN before the timed runs, every repetition a flow hit): on port {FIRST} the flow entry's listener is confirmed by the listener's slot, on port {OTHER} by `LISTENER_PORTS` too. New flow (`lb_new_flow`: a new source every repetition, each a new flow, into a table for the default `max_flows`, 1,048,576 flows, filled first with as many): port {FIRST} is found in `LISTENERS`; port {OTHER} misses it and is found in the `PORT_RANGES` LPM trie. Passed (every repetition counted `passed`): TCP port {OUTSIDE} to the load balancer's own address 10.0.3.2 stops at the listener filter; TCP port {OUTSIDE} to the VIP 10.0.3.49 gets through it (the VIP has a TCP range), misses `LISTENERS` and `PORT_RANGES` and is passed to the kernel.",
        settings.repeat,
        settings.new_flow_repeat,
        settings.runs,
    ));
    let table: Vec<Vec<String>> = measured
        .iter()
        .flat_map(|m| &m.rows)
        .map(table_row)
        .collect();
    s.table(
        &[
            "fixture",
            "lb min / median",
            "MAC-swap min / median",
            "lb / MAC-swap",
        ],
        &table,
    );
    for m in &measured {
        let [reference, other] = &m.rows;
        s.figures.push(Figure::info(
            &m.figure,
            format!(
                "{:.2}x ({} vs {})",
                m.cost(),
                fmt_ns(stats::median(&other.lb)),
                fmt_ns(stats::median(&reference.lb))
            ),
        ));
    }
    Ok(s)
}

/// A fixture's row of the table.
fn table_row(r: &Row) -> Vec<String> {
    vec![
        r.name.clone(),
        min_med(&r.lb),
        min_med(&r.base),
        format!("{:.2}x", r.ratio()),
    ]
}

#[cfg(test)]
mod tests {
    use lb_user::policy::{self, Ports};

    use super::*;

    /// The policy differs from `packet`'s only in the `web` listener's
    /// port, and no listener has the port of the passed fixtures.
    #[test]
    fn the_policy_is_packets_with_web_on_the_range() {
        let ranges = policy::parse("ranges.yaml", &policy()).unwrap();
        let plain = policy::parse("bench.yaml", POLICY).unwrap();
        assert_eq!(ranges.listeners.len(), plain.listeners.len());
        for (r, p) in ranges.listeners.iter().zip(&plain.listeners) {
            let port = if p.name == "web" {
                Ports {
                    first: FIRST,
                    last: LAST,
                }
            } else {
                p.port
            };
            assert_eq!((&r.name, r.vip, r.port), (&p.name, p.vip, port));
        }
        assert!(ranges.listeners.iter().all(|l| !l.port.contains(OUTSIDE)));
    }
}
