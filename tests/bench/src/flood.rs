//! Floods against established flows (BPF_PROG_TEST_RUN on the real `lb`
//! program, and on the floor: main's design with kernel LRU flow maps and
//! the flow cache, `floor`): for each design, each algorithm of
//! [`ALGORITHMS`] and each kind of flood (SYNs, or spoofed ACKs: TCP
//! packets without SYN from random sources, which a miss sends where the
//! group's hash puts them; `lb` remembers them in empty entries only,
//! uncounted, the floor remembers them like any flow), 2K flows are
//! established (their targets recorded from the output frames); then M
//! flood packets, more than the flow table holds, in rounds, after each of
//! which the K live flows send one ACK each (the K idle ones stay silent).
//! At the end, once every flow-cache slot of the floor has expired, every
//! flow sends one ACK. Per flow: evicted (one of its packets missed its
//! entry: a new flow again, or in `lb` a TCP miss by hash) and moved (one of its packets went to
//! another target than its first). `lb` also counts what its table did:
//! entries taken from other flows (`FlowEvicted`) and new flows it could
//! not remember (`FlowInsertFailed`: both buckets held only established
//! flows in use).
//!
//! For hash groups an evicted flow is hashed again to the same target
//! while the table is unchanged, so evictions do not move flows; round
//! robin and least connections place a flow where the hash does not, so
//! an eviction moves it. `lb`'s table never evicts an established flow in
//! use, so no live flow may move whatever the algorithm.
use std::time::Duration;

use anyhow::{Result, ensure};
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    ALGORITHMS, Build, Design, POLICY, Settings, Subject, XDP_TX,
    floor::common::FLOW_TOUCH_NS,
    report::{Figure, Section, fmt_count},
    stats::Rng,
    test_run,
};

/// The packets of a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Syn,
    /// Non-SYN TCP (ACK) from random sources.
    SpoofedAck,
}

impl Flood {
    pub const ALL: [Flood; 2] = [Flood::Syn, Flood::SpoofedAck];

    fn flags(self) -> u8 {
        match self {
            Flood::Syn => SYN,
            Flood::SpoofedAck => ACK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flood::Syn => "SYN flood",
            Flood::SpoofedAck => "spoofed-ACK flood",
        }
    }

    fn packets(self) -> &'static str {
        match self {
            Flood::Syn => "SYNs",
            Flood::SpoofedAck => "ACKs",
        }
    }
}

/// The sizes of every flood of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// `max_flows` of both designs' tables (the floor: an LRU map of as
    /// many entries per family; `lb`: twice as many entries).
    pub table: u32,
    /// Live flows, and as many idle ones.
    pub flows: usize,
    /// Flood packets: four times the table, so that both designs must
    /// evict.
    pub packets: usize,
    /// The flood comes in this many rounds, each followed by one packet of
    /// every live flow.
    pub rounds: usize,
}

impl Sizes {
    pub fn new(settings: &Settings) -> Sizes {
        let (table, flows) = if settings.quick {
            (16_384u32, 2_000usize)
        } else {
            (65_536, 10_000)
        };
        Sizes {
            table,
            flows,
            packets: 4 * table as usize,
            rounds: 8,
        }
    }
}

/// What became of a set of established flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fate {
    /// Never evicted.
    pub kept: usize,
    /// Evicted at least once.
    pub evicted: usize,
    /// Sent to another target at least once.
    pub moved: usize,
}

pub struct Outcome {
    pub design: Design,
    pub algorithm: &'static str,
    pub flood: Flood,
    pub live: Fate,
    pub idle: Fate,
    /// `lb`'s `FlowEvicted` and `FlowInsertFailed` over the whole run
    /// (None for the floor, which has no `FlowEvicted`).
    pub evicted_entries: Option<u64>,
    pub insert_failed: u64,
}

/// One established flow: its ACK, its first target, what happened to it.
pub struct Flow {
    ack: Vec<u8>,
    target: [u8; 6],
    evicted: bool,
    moved: bool,
}

fn dst_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&frame[..6]);
    m
}

/// Flows `range` of the clients 10.1.x.y to `port`, each established by
/// its SYN.
fn establish(s: &mut Subject, port: u16, range: std::ops::Range<usize>) -> Result<Vec<Flow>> {
    let frame = |i: usize, flags| {
        let src = format!("10.1.{}.{}", (i >> 8) & 0xff, i & 0xff);
        Frame::tcp(&src, 10_000 + (i % 50_000) as u16, "10.0.3.49", port, flags).build()
    };
    range
        .map(|i| {
            let (verdict, _, out) = test_run(s.program_mut(), &frame(i, SYN), 1)?;
            ensure!(verdict == XDP_TX, "flow {i}: verdict {verdict}");
            Ok(Flow {
                ack: frame(i, ACK),
                target: dst_mac(&out),
                evicted: false,
                moved: false,
            })
        })
        .collect()
}

/// `packets` flood packets with `flags` from random sources in 11.0.0.0/8
/// and random ports.
fn flood(s: &mut Subject, rng: &mut Rng, flags: u8, port: u16, packets: usize) -> Result<()> {
    for _ in 0..packets {
        let src = std::net::Ipv4Addr::from(0x0b00_0000 | (rng.next_u32() & 0x00ff_ffff));
        let sport = (rng.next_u32() % 60_000) as u16 + 1024;
        let frame = Frame::tcp(&src.to_string(), sport, "10.0.3.49", port, flags).build();
        test_run(s.program_mut(), &frame, 1)?;
    }
    Ok(())
}

/// One ACK of each of `flows`, noting which were new flows again and which
/// went to another target.
fn replay(s: &mut Subject, flows: &mut [Flow]) -> Result<()> {
    let mut before = misses(s)?;
    for (i, flow) in flows.iter_mut().enumerate() {
        let (verdict, _, out) = test_run(s.program_mut(), &flow.ack, 1)?;
        ensure!(verdict == XDP_TX, "replay {i}: verdict {verdict}");
        let now = misses(s)?;
        flow.evicted |= now != before;
        flow.moved |= dst_mac(&out) != flow.target;
        before = now;
    }
    Ok(())
}

/// Packets that found no entry of their flow: new flows, and (`lb`) TCP
/// packets that are not SYNs, which go by hash (and take an empty entry,
/// if one is).
fn misses(s: &Subject) -> Result<u64> {
    Ok(s.new_flows()? + s.counter(Counter::FlowMissByHash)?.unwrap_or(0))
}

fn fate(flows: &[Flow]) -> Fate {
    let evicted = flows.iter().filter(|f| f.evicted).count();
    Fate {
        kept: flows.len() - evicted,
        evicted,
        moved: flows.iter().filter(|f| f.moved).count(),
    }
}

/// A flood run up to its last round: the data plane and its flows.
pub struct Flooded {
    algorithm: &'static str,
    kind: Flood,
    subject: Subject,
    live: Vec<Flow>,
    idle: Vec<Flow>,
}

/// One flood against the flows of `algorithm`'s listener (`port`) in a
/// data plane of `design`, its rounds of live packets included.
pub fn flood_rounds(
    sizes: &Sizes,
    design: Design,
    algorithm: &'static str,
    port: u16,
    kind: Flood,
) -> Result<Flooded> {
    let mut s = design.load(Build::Plain, POLICY, sizes.table)?;
    let mut live = establish(&mut s, port, 0..sizes.flows)?;
    let idle = establish(&mut s, port, sizes.flows..2 * sizes.flows)?;
    let mut rng = Rng::new(0x5eed);
    for _ in 0..sizes.rounds {
        let packets = sizes.packets / sizes.rounds;
        flood(&mut s, &mut rng, kind.flags(), port, packets)?;
        replay(&mut s, &mut live)?;
    }
    Ok(Flooded {
        algorithm,
        kind,
        subject: s,
        live,
        idle,
    })
}

/// The floods of every algorithm of [`ALGORITHMS`] in both designs, then
/// the last packet of every flow once the floor's flow cache can no longer
/// answer for a lost entry: it answers a flow for up to FLOW_TOUCH_NS
/// after its entry was last refreshed, even if the LRU map lost the entry
/// meanwhile.
pub fn run(sizes: &Sizes) -> Result<Vec<Outcome>> {
    let mut flooded = Vec::new();
    for kind in Flood::ALL {
        for &(algorithm, port) in ALGORITHMS {
            for design in Design::BOTH {
                flooded.push(flood_rounds(sizes, design, algorithm, port, kind)?);
            }
        }
    }
    std::thread::sleep(Duration::from_nanos(FLOW_TOUCH_NS) + Duration::from_millis(100));
    flooded
        .into_iter()
        .map(|mut f| {
            replay(&mut f.subject, &mut f.live)?;
            replay(&mut f.subject, &mut f.idle)?;
            Ok(Outcome {
                design: f.subject.design(),
                algorithm: f.algorithm,
                flood: f.kind,
                live: fate(&f.live),
                idle: fate(&f.idle),
                evicted_entries: f.subject.counter(Counter::FlowEvicted)?,
                insert_failed: f.subject.counter(Counter::FlowInsertFailed)?.unwrap_or(0),
            })
        })
        .collect()
}

pub const TITLE: &str = "Data plane: floods against established flows";

pub fn section(settings: &Settings) -> Result<Section> {
    let sizes = Sizes::new(settings);
    let mut s = Section::new(TITLE);
    s.line(format!(
        "For each design (`lb`: its flow table; the floor: main's kernel LRU flow maps and flow cache), each algorithm and each flood: {k} live and {k} idle established TCP flows (one SYN each) in a data plane with `max_flows` {t} (`lb`: {e} entries; the floor: an LRU map of {t} entries and as many flow-cache slots), then {m} flood packets from random sources (11.0.0.0/8, random ports): SYNs, or spoofed ACKs (TCP without SYN: `lb` sends a miss to the group's hash target and remembers it in an empty entry only, uncounted, taking no flow's entry; the floor remembers it like any flow). The flood comes in {r} rounds; after each, every live flow sends one ACK, the idle ones nothing. Then, once the floor's flow cache can no longer answer for a lost entry (FLOW_TOUCH_NS after the last refresh), every flow sends one ACK. kept = none of its packets missed its entry; evicted = one did (a new flow, or in `lb` a miss by hash: its entry had been taken by another flow); moved = one went to another target than its first packet. `lb`'s own counts over the run: entries it took from other flows (FlowEvicted) and new flows it forwarded without remembering them (FlowInsertFailed: both buckets held only established flows in use). The programs are `lb`'s and the floor's as they run (`lb`, `lru`).",
        k = sizes.flows,
        t = sizes.table,
        e = fmt_count(
            u64::from(lb_common::flow_table::buckets_for(sizes.table))
                * lb_common::flow_table::WAYS as u64
        ),
        m = sizes.packets,
        r = sizes.rounds,
    ));
    let outcomes = run(&sizes)?;
    s.table(
        &[
            "flood",
            "algorithm",
            "design",
            "live: kept",
            "live: evicted",
            "live: moved",
            "idle: kept",
            "idle: evicted",
            "idle: moved",
            "FlowEvicted",
            "FlowInsertFailed",
        ],
        &outcomes.iter().map(table_row).collect::<Vec<_>>(),
    );
    figures(&mut s, &sizes, &outcomes);
    Ok(s)
}

fn table_row(o: &Outcome) -> Vec<String> {
    vec![
        o.flood.name().into(),
        o.algorithm.into(),
        o.design.name().into(),
        o.live.kept.to_string(),
        o.live.evicted.to_string(),
        o.live.moved.to_string(),
        o.idle.kept.to_string(),
        o.idle.evicted.to_string(),
        o.idle.moved.to_string(),
        o.evicted_entries
            .map_or_else(|| "-".into(), |n| n.to_string()),
        o.insert_failed.to_string(),
    ]
}

/// The summary's figures, per flood: `lb`'s live flows (none may be
/// evicted or moved, whatever the algorithm) beside the floor's; the
/// moves of the hash-placed algorithms against the goal of none; the
/// idle flows of the others.
fn figures(s: &mut Section, sizes: &Sizes, outcomes: &[Outcome]) {
    for kind in Flood::ALL {
        let what = format!(
            "{} ({} {}, max_flows {})",
            kind.name(),
            sizes.packets,
            kind.packets(),
            sizes.table
        );
        let of_kind: Vec<&Outcome> = outcomes.iter().filter(|o| o.flood == kind).collect();
        s.figures.push(live_figure(&what, sizes, &of_kind));
        // A miss goes to the consistent-hash target: where hash and
        // source_ip flows live, but not where round robin or least
        // connections put them (README "Flow lifecycle"), so only the
        // first two can promise no moves of idle flows.
        for pair in [["hash", "source_ip"], ["round_robin", "least_connections"]] {
            s.figures.extend(idle_figure(&what, sizes, &of_kind, pair));
        }
    }
}

/// The live flows of every algorithm, `lb` against the goal of none
/// evicted or moved, the floor beside it (`outcomes` of one flood).
fn live_figure(what: &str, sizes: &Sizes, outcomes: &[&Outcome]) -> Figure {
    let sum = |design, f: fn(&Outcome) -> usize| -> usize {
        outcomes
            .iter()
            .filter(|o| o.design == design)
            .map(|o| f(o))
            .sum()
    };
    let runs = outcomes.iter().filter(|o| o.design == Design::Lb).count();
    let (moved, evicted) = (
        sum(Design::Lb, |o| o.live.moved),
        sum(Design::Lb, |o| o.live.evicted),
    );
    Figure::goal(
        format!("{what}: live flows evicted / moved, lb, every algorithm"),
        format!(
            "{evicted} / {moved} of {runs} x {} (floor: {} / {}; lb FlowEvicted {}, FlowInsertFailed {})",
            sizes.flows,
            sum(Design::Floor, |o| o.live.evicted),
            sum(Design::Floor, |o| o.live.moved),
            sum(Design::Lb, |o| o.evicted_entries.unwrap_or(0) as usize),
            sum(Design::Lb, |o| o.insert_failed as usize),
        ),
        "0 / 0",
        moved == 0 && evicted == 0,
    )
}

/// The idle flows of the two algorithms of `pair` (`outcomes` of one
/// flood): moves of `lb`'s against the goal of none for hash and
/// source_ip, the floor's beside them.
fn idle_figure(
    what: &str,
    sizes: &Sizes,
    outcomes: &[&Outcome],
    pair: [&str; 2],
) -> Option<Figure> {
    let of = |design, name: &str| {
        outcomes
            .iter()
            .find(|o| o.design == design && o.algorithm == name)
    };
    let (a, b) = (of(Design::Lb, pair[0])?, of(Design::Lb, pair[1])?);
    let floor = |name| of(Design::Floor, name).map_or(0, |o| o.idle.moved);
    let name = format!("{what}: idle flows moved, lb, {} / {}", pair[0], pair[1]);
    let value = format!(
        "{} / {} of {} each (evicted {} / {}; floor moved {} / {})",
        a.idle.moved,
        b.idle.moved,
        sizes.flows,
        a.idle.evicted,
        b.idle.evicted,
        floor(pair[0]),
        floor(pair[1]),
    );
    let moved = a.live.moved + b.live.moved + a.idle.moved + b.idle.moved;
    Some(if pair[0] == "hash" {
        Figure::goal(name, value, "0 moved", moved == 0)
    } else {
        Figure::info(name, value)
    })
}
