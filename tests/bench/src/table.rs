//! Control plane: the consistent-hash (Maglev) table. Build time of a
//! 65537-slot table for 10, 100 and 1,000 targets; disruption (share of
//! slots that move when one of N targets is removed, added or has its weight
//! halved, against the ideal); spread of slots against weights.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use lb_user::maglev::{Identity, Member, build, build_textbook};

use crate::{
    Settings,
    plot::{self, Bars, Reference, Series},
    report::{Figure, Section, fmt_secs},
    stats::{min_median, time_runs},
};

/// Slots of the measured tables (the default table size).
pub const SLOTS: u32 = 65537;
/// The Maglev paper's figure for a 65537-slot table (anchor, not a goal).
pub const PAPER_MS: f64 = 1.8;
/// Goal: build time with 100 targets.
pub const GOAL_MS: f64 = 1.0;
pub const SIZES: [u32; 3] = [10, 100, 1000];

fn member(i: u32, weight: u32) -> Member {
    Member {
        identity: Identity {
            ip: IpAddr::V4(Ipv4Addr::new(
                10,
                1 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            )),
            port: 80,
        },
        weight,
        id: i + 1,
    }
}

/// Share of slots that differ.
pub fn moved(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// Build times (seconds) per size.
pub struct BuildTimes {
    pub n: u32,
    pub min: f64,
    pub median: f64,
    /// Median of the textbook walk (`build_textbook`), same run.
    pub textbook: f64,
}

pub fn build_times(settings: &Settings) -> Vec<BuildTimes> {
    let runs = if settings.quick { 15 } else { 60 };
    SIZES
        .iter()
        .map(|&n| {
            let members: Vec<Member> = (0..n).map(|i| member(i, 100)).collect();
            let (min, median) = min_median(&time_runs(runs, || build(&members, SLOTS)));
            let (_, textbook) =
                min_median(&time_runs(runs / 3 + 1, || build_textbook(&members, SLOTS)));
            BuildTimes {
                n,
                min,
                median,
                textbook,
            }
        })
        .collect()
}

/// One disruption scenario.
pub struct Disruption {
    pub what: &'static str,
    pub n: u32,
    /// Mean and max moved share over the changed targets tried.
    pub mean: f64,
    pub max: f64,
    pub ideal: f64,
}

/// Which targets of N to change (spread over the identity order).
fn picks(n: u32) -> [u32; 3] {
    [0, n / 2, n - 1]
}

pub fn disruption() -> Vec<Disruption> {
    let mut out = Vec::new();
    for n in SIZES {
        let all: Vec<Member> = (0..n).map(|i| member(i, 100)).collect();
        let before = build(&all, SLOTS);
        let nf = n as f64;
        let mut add = |what, ideal, shares: Vec<f64>| {
            out.push(Disruption {
                what,
                n,
                mean: shares.iter().sum::<f64>() / shares.len() as f64,
                max: shares.iter().copied().fold(0.0, f64::max),
                ideal,
            });
        };
        let removed = picks(n)
            .iter()
            .map(|&k| {
                let rest: Vec<Member> = all.iter().copied().filter(|m| m.id != k + 1).collect();
                moved(&before, &build(&rest, SLOTS))
            })
            .collect();
        add("remove 1", 1.0 / nf, removed);
        let added = (0..3)
            .map(|j| {
                let mut more = all.clone();
                more.push(member(n + 1000 * (j + 1), 100));
                moved(&before, &build(&more, SLOTS))
            })
            .collect();
        add("add 1", 1.0 / (nf + 1.0), added);
        let halved = picks(n)
            .iter()
            .map(|&k| {
                let changed: Vec<Member> = all
                    .iter()
                    .map(|m| {
                        let mut m = *m;
                        if m.id == k + 1 {
                            m.weight /= 2;
                        }
                        m
                    })
                    .collect();
                moved(&before, &build(&changed, SLOTS))
            })
            .collect();
        // Its share drops from 1/N to 0.5/(N-0.5): the difference moves.
        add("halve 1 weight", 1.0 / nf - 0.5 / (nf - 0.5), halved);
    }
    out
}

/// Spread of slots against weights: the largest |slots - ideal| (slots and
/// relative to the ideal) with weights 1..100 spread over the targets.
pub struct Spread {
    pub n: u32,
    pub max_slots: f64,
    pub max_relative: f64,
}

pub fn spread() -> Vec<Spread> {
    SIZES
        .iter()
        .map(|&n| {
            let members: Vec<Member> = (0..n).map(|i| member(i, 1 + (i * 37) % 100)).collect();
            let table = build(&members, SLOTS);
            let mut counts = vec![0u32; n as usize + 1];
            for &id in &table {
                counts[id as usize] += 1;
            }
            let total: u32 = members.iter().map(|m| m.weight).sum();
            let (mut max_slots, mut max_relative) = (0.0f64, 0.0f64);
            for m in &members {
                let ideal = SLOTS as f64 * m.weight as f64 / total as f64;
                let dev = (counts[m.id as usize] as f64 - ideal).abs();
                max_slots = max_slots.max(dev);
                max_relative = max_relative.max(dev / ideal);
            }
            Spread {
                n,
                max_slots,
                max_relative,
            }
        })
        .collect()
}

pub fn section(settings: &Settings, dir: &std::path::Path) -> Result<Section> {
    let times = build_times(settings);
    let disruptions = disruption();
    let spreads = spread();
    let mut s = Section::new("Control plane: consistent-hash table");
    s.line(format!(
        "Build time of a {SLOTS}-slot table (`lb_user::maglev::build`, equal weights), min and median over repeated builds in this process. Anchor: {PAPER_MS} ms for 65537 slots in the Maglev paper (NSDI 2016). The textbook walk (one candidate at a time, a modulo per step: `maglev::build_textbook`, which builds the same table) is timed in the same run, so the speed-up is a ratio that holds on any machine. Disruption: share of the slots whose target changes; each figure is the mean (and max) over 3 changed targets; ideal = the changed target's share of the table."
    ));
    build_table(&mut s, &times);
    disruption_table(&mut s, &disruptions);
    spread_table(&mut s, &spreads);
    build_figures(&mut s, &times);
    for d in disruptions.iter().filter(|d| d.n == 100) {
        s.figures.push(Figure::info(
            format!("slots moved, {} of 100 targets", d.what),
            format!(
                "{:.2} % (ideal {:.2} %, {:.2}x)",
                d.mean * 100.0,
                d.ideal * 100.0,
                d.mean / d.ideal
            ),
        ));
    }
    if let Some(sp) = spreads.iter().find(|sp| sp.n == 100) {
        s.figures.push(Figure::info(
            "slots vs weight, 100 targets: max deviation",
            format!(
                "{:.2} slots ({:.3} %)",
                sp.max_slots,
                sp.max_relative * 100.0
            ),
        ));
    }
    plot_build_times(&dir.join("table_build.svg"), &times)?;
    plot_disruption(&dir.join("disruption.svg"), &disruptions)?;
    s.plots.push("table_build.svg".into());
    s.plots.push("disruption.svg".into());
    Ok(s)
}

fn build_table(s: &mut Section, times: &[BuildTimes]) {
    s.table(
        &[
            "targets",
            "build min",
            "build median",
            "textbook walk (median)",
            "speed-up",
        ],
        &times
            .iter()
            .map(|t| {
                vec![
                    t.n.to_string(),
                    fmt_secs(t.min),
                    fmt_secs(t.median),
                    fmt_secs(t.textbook),
                    format!("{:.1}x", t.textbook / t.median),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

/// The disruption table, and what it shows.
fn disruption_table(s: &mut Section, disruptions: &[Disruption]) {
    s.table(
        &[
            "change",
            "N",
            "moved (mean)",
            "moved (max)",
            "ideal",
            "mean / ideal",
        ],
        &disruptions
            .iter()
            .map(|d| {
                vec![
                    d.what.into(),
                    d.n.to_string(),
                    format!("{:.3} %", d.mean * 100.0),
                    format!("{:.3} %", d.max * 100.0),
                    format!("{:.3} %", d.ideal * 100.0),
                    format!("{:.2}", d.mean / d.ideal),
                ]
            })
            .collect::<Vec<_>>(),
    );
    s.line(format!("\nMaglev's disruption grows as the slots per target shrink: with 1,000 targets a {SLOTS}-slot table gives each about 65, and a change moves several times the ideal share. A larger `table_size` (about 100 x the targets) brings it back towards the ideal."));
}

/// What the spread measures, and its table.
fn spread_table(s: &mut Section, spreads: &[Spread]) {
    s.line("\nSpread: weights 1-100 over the targets; largest deviation of a target's slot count from its ideal share.");
    s.table(
        &[
            "targets",
            "max deviation (slots)",
            "max deviation (relative)",
        ],
        &spreads
            .iter()
            .map(|sp| {
                vec![
                    sp.n.to_string(),
                    format!("{:.2}", sp.max_slots),
                    format!("{:.3} %", sp.max_relative * 100.0),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

/// A figure per size; the goal's (100 targets) judged.
fn build_figures(s: &mut Section, times: &[BuildTimes]) {
    for t in times {
        let ms = t.median * 1e3;
        if t.n == 100 {
            s.figures.push(Figure::cpu_goal(
                format!("hash table build, {SLOTS} slots, 100 targets (median)"),
                format!(
                    "{} ({:.1}x faster than the textbook walk, {})",
                    fmt_secs(t.median),
                    t.textbook / t.median,
                    fmt_secs(t.textbook)
                ),
                format!("< {GOAL_MS} ms (paper: {PAPER_MS} ms)"),
                ms < GOAL_MS,
            ));
        } else {
            s.figures.push(Figure::info(
                format!("hash table build, {SLOTS} slots, {} targets (median)", t.n),
                fmt_secs(t.median),
            ));
        }
    }
}

fn plot_build_times(path: &std::path::Path, times: &[BuildTimes]) -> Result<()> {
    plot::bars(
        path,
        &Bars {
            title: "Hash table build time, 65537 slots (median)",
            y_label: "ms",
            categories: times.iter().map(|t| format!("{} targets", t.n)).collect(),
            series: vec![
                Series {
                    name: "build",
                    values: times.iter().map(|t| t.median * 1e3).collect(),
                },
                Series {
                    name: "textbook walk",
                    values: times.iter().map(|t| t.textbook * 1e3).collect(),
                },
            ],
            references: vec![
                Reference {
                    name: "Maglev paper",
                    value: PAPER_MS,
                },
                Reference {
                    name: "goal (100 targets)",
                    value: GOAL_MS,
                },
            ],
        },
    )
}

fn plot_disruption(path: &std::path::Path, disruptions: &[Disruption]) -> Result<()> {
    plot::bars(
        path,
        &Bars {
            title: "Slots moved by one change, relative to the ideal (1 of N targets)",
            y_label: "moved / ideal",
            categories: disruptions
                .iter()
                .map(|d| format!("{} / {}", d.what, d.n))
                .collect(),
            series: vec![Series {
                name: "moved (mean) / ideal",
                values: disruptions.iter().map(|d| d.mean / d.ideal).collect(),
            }],
            references: vec![Reference {
                name: "ideal",
                value: 1.0,
            }],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_counts_differing_slots() {
        assert_eq!(moved(&[1, 2, 3, 4], &[1, 2, 4, 4]), 0.25);
    }
}
