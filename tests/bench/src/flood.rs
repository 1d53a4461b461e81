//! Floods against established flows (BPF_PROG_TEST_RUN on the real `lb`
//! program): for each algorithm of [`ALGORITHMS`] and each kind of flood
//! (SYNs, or spoofed ACKs: TCP packets without SYN from random sources,
//! which a miss sends where the group's hash puts them and remembers like
//! any flow), 2K flows are established (their targets recorded from the
//! output frames); then M flood packets, more than the flow table holds,
//! in rounds, after each of which the K live flows send one ACK each (the
//! K idle ones stay silent). At the end, once every flow-cache slot has
//! expired, every flow sends one ACK. Per flow: evicted (one of its packets
//! was a new flow again: its entry had been pushed out of the LRU flow
//! table) and moved (one of its packets went to another target than its
//! first).
//!
//! For hash groups an evicted flow is hashed again to the same target
//! while the table is unchanged, so evictions do not move flows; round
//! robin and least connections place a flow where the hash does not, so
//! an eviction moves it.
use std::time::Duration;

use anyhow::{Result, ensure};
use lb_common::{Counter, FLOW_TOUCH_NS};
use lb_tests::packets::{Frame, tcp_flags::*};
use lb_user::dataplane::{Dataplane, LoadOptions};

use crate::{
    ALGORITHMS, POLICY, Settings, XDP_TX, counter, load_with,
    report::{Figure, Section},
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
    /// Flow table entries (IPv4).
    pub table: u32,
    /// Live flows, and as many idle ones.
    pub flows: usize,
    /// Flood packets: four times the table, so the LRU evicts.
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
    pub algorithm: &'static str,
    pub flood: Flood,
    pub live: Fate,
    pub idle: Fate,
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
fn establish(dp: &mut Dataplane, port: u16, range: std::ops::Range<usize>) -> Result<Vec<Flow>> {
    let frame = |i: usize, flags| {
        let src = format!("10.1.{}.{}", (i >> 8) & 0xff, i & 0xff);
        Frame::tcp(&src, 10_000 + (i % 50_000) as u16, "10.0.3.49", port, flags).build()
    };
    range
        .map(|i| {
            let (verdict, _, out) = test_run(dp.program_mut(), &frame(i, SYN), 1)?;
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
fn flood(dp: &mut Dataplane, rng: &mut Rng, flags: u8, port: u16, packets: usize) -> Result<()> {
    for _ in 0..packets {
        let src = std::net::Ipv4Addr::from(0x0b00_0000 | (rng.next_u32() & 0x00ff_ffff));
        let sport = (rng.next_u32() % 60_000) as u16 + 1024;
        let frame = Frame::tcp(&src.to_string(), sport, "10.0.3.49", port, flags).build();
        test_run(dp.program_mut(), &frame, 1)?;
    }
    Ok(())
}

/// One ACK of each of `flows`, noting which were new flows again and which
/// went to another target.
fn replay(dp: &mut Dataplane, flows: &mut [Flow]) -> Result<()> {
    let mut new_flows = counter(dp, Counter::NewFlow)?;
    for (i, flow) in flows.iter_mut().enumerate() {
        let (verdict, _, out) = test_run(dp.program_mut(), &flow.ack, 1)?;
        ensure!(verdict == XDP_TX, "replay {i}: verdict {verdict}");
        let now = counter(dp, Counter::NewFlow)?;
        flow.evicted |= now != new_flows;
        flow.moved |= dst_mac(&out) != flow.target;
        new_flows = now;
    }
    Ok(())
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
    dp: Dataplane,
    live: Vec<Flow>,
    idle: Vec<Flow>,
}

/// One flood against the flows of `algorithm`'s listener (`port`), its
/// rounds of live packets included.
pub fn flood_rounds(
    sizes: &Sizes,
    algorithm: &'static str,
    port: u16,
    kind: Flood,
) -> Result<Flooded> {
    let options = LoadOptions {
        flow_table_size: sizes.table,
        ..Default::default()
    };
    let mut dp = load_with(lb_user::EBPF_LB, "lb", POLICY, &options)?;
    let mut live = establish(&mut dp, port, 0..sizes.flows)?;
    let idle = establish(&mut dp, port, sizes.flows..2 * sizes.flows)?;
    let mut rng = Rng::new(0x5eed);
    for _ in 0..sizes.rounds {
        let packets = sizes.packets / sizes.rounds;
        flood(&mut dp, &mut rng, kind.flags(), port, packets)?;
        replay(&mut dp, &mut live)?;
    }
    Ok(Flooded {
        algorithm,
        kind,
        dp,
        live,
        idle,
    })
}

/// The floods of every algorithm of [`ALGORITHMS`], then the last packet
/// of every flow once the flow cache can no longer answer for a lost
/// entry: it answers a flow for up to FLOW_TOUCH_NS after its entry was
/// last refreshed, even if the table lost the entry meanwhile.
pub fn run(sizes: &Sizes) -> Result<Vec<Outcome>> {
    let mut flooded = Vec::new();
    for kind in Flood::ALL {
        for &(algorithm, port) in ALGORITHMS {
            flooded.push(flood_rounds(sizes, algorithm, port, kind)?);
        }
    }
    std::thread::sleep(Duration::from_nanos(FLOW_TOUCH_NS) + Duration::from_millis(100));
    flooded
        .into_iter()
        .map(|mut f| {
            replay(&mut f.dp, &mut f.live)?;
            replay(&mut f.dp, &mut f.idle)?;
            Ok(Outcome {
                algorithm: f.algorithm,
                flood: f.kind,
                live: fate(&f.live),
                idle: fate(&f.idle),
            })
        })
        .collect()
}

pub const TITLE: &str = "Data plane: floods against established flows";

pub fn section(settings: &Settings) -> Result<Section> {
    let sizes = Sizes::new(settings);
    let mut s = Section::new(TITLE);
    s.line(format!(
        "For each algorithm and each flood: {k} live and {k} idle established TCP flows (one SYN each) in a flow table of {t} entries, then {m} flood packets from random sources (11.0.0.0/8, random ports): SYNs, or spoofed ACKs (TCP without SYN: a miss goes to the group's hash target and is remembered like any flow). The flood comes in {r} rounds; after each, every live flow sends one ACK, the idle ones nothing. Then, once the flow cache can no longer answer for a lost entry (FLOW_TOUCH_NS after the last refresh), every flow sends one ACK. kept = none of its packets was a new flow; evicted = one was (its entry had been pushed out of the LRU table); moved = one went to another target than its first packet. Same program and maps as `lb run`, flow cache on.",
        k = sizes.flows,
        t = sizes.table,
        m = sizes.packets,
        r = sizes.rounds,
    ));
    let outcomes = run(&sizes)?;
    s.table(
        &[
            "flood",
            "algorithm",
            "live: kept",
            "live: evicted",
            "live: moved",
            "idle: kept",
            "idle: evicted",
            "idle: moved",
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
        o.live.kept.to_string(),
        o.live.evicted.to_string(),
        o.live.moved.to_string(),
        o.idle.kept.to_string(),
        o.idle.evicted.to_string(),
        o.idle.moved.to_string(),
    ]
}

/// The summary's figures: per flood, the moves of the hash-placed
/// algorithms against the goal of none, and those of the others.
fn figures(s: &mut Section, sizes: &Sizes, outcomes: &[Outcome]) {
    for kind in Flood::ALL {
        // A miss goes to the consistent-hash target: where hash and
        // source_ip flows live, but not where round robin or least
        // connections put them (README "Flow lifecycle"), so only the first
        // two can promise no moves.
        for pair in [["hash", "source_ip"], ["round_robin", "least_connections"]] {
            let of = |name| {
                outcomes
                    .iter()
                    .find(|o| o.flood == kind && o.algorithm == name)
            };
            let (Some(a), Some(b)) = (of(pair[0]), of(pair[1])) else {
                continue;
            };
            let name = format!(
                "{} ({} {}, table {}): established flows moved, {} / {}",
                kind.name(),
                sizes.packets,
                kind.packets(),
                sizes.table,
                pair[0],
                pair[1]
            );
            let value = format!(
                "live {} / {}, idle {} / {} of {} each (evicted: live {} / {}, idle {} / {})",
                a.live.moved,
                b.live.moved,
                a.idle.moved,
                b.idle.moved,
                sizes.flows,
                a.live.evicted,
                b.live.evicted,
                a.idle.evicted,
                b.idle.evicted
            );
            let moved = a.live.moved + b.live.moved + a.idle.moved + b.idle.moved;
            s.figures.push(if pair[0] == "hash" {
                Figure::goal(name, value, "0 moved", moved == 0)
            } else {
                Figure::info(name, value)
            });
        }
    }
}
