//! `lb-bench`: the performance report of `cargo xtask bench` (run as root).
//! Runs the benchmarks of `lb_bench` (data plane, control plane,
//! health checks), writes `report.md` and SVG plots into the output directory
//! (default `target/bench/`) and prints the summary table. docs/bench.md
//! describes the methods.
use std::{path::PathBuf, time::Instant};

use anyhow::Result;
use clap::Parser;
use lb_bench::{
    Settings, flood, flows, health, live, million, observe, packet, ranges,
    report::{Figure, Machine, OPTIMIZED, Report, Section},
    scale, table, versus,
};

const SECTIONS: [&str; 11] = [
    "packet", "ranges", "flows", "flood", "live", "table", "scale", "million", "health", "observe",
    "versus",
];

#[derive(Parser, Debug)]
#[command(about = "lb's performance report (run as root)")]
struct Args {
    /// Fewer repetitions and shorter windows (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Repetitions per BPF_PROG_TEST_RUN call (ns/packet).
    #[arg(long)]
    repeat: Option<u32>,
    /// Runs per ns/packet figure.
    #[arg(long)]
    runs: Option<usize>,
    /// Only the ns/packet fixtures whose name contains TEXT (e.g. under
    /// `perf record`).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Only these sections (repeatable): packet, ranges, flows, flood, live,
    /// table, scale, million, health, observe, versus.
    #[arg(long = "section", value_name = "NAME")]
    sections: Vec<String>,
    /// Another XDP program to time beside lb (section `versus`, which runs
    /// with all sections only when this is given): the path its loader
    /// pins it at, configured for the benchmark's listeners
    /// (docs/bench.md).
    #[arg(long, value_name = "PATH")]
    versus_pin: Option<PathBuf>,
    /// A shell command that loads, configures and pins that program afresh;
    /// run before each fixture of `versus`.
    #[arg(long, value_name = "CMD", requires = "versus_pin")]
    versus_load: Option<String>,
    /// Its name in the report (default: the pin's file name).
    #[arg(long, value_name = "NAME", requires = "versus_pin")]
    versus_name: Option<String>,
    /// Where report.md and the plots go.
    #[arg(long, default_value_os_t = lb_tests::lab::target_dir().join("bench"))]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let settings = settings(&args)?;
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let sections = sections(&args, &settings);
    let report = Report {
        machine: Machine::detect(),
        mode: format!(
            "`cargo xtask bench{}`, {:.0} s of measurement{}",
            if args.quick { " --quick" } else { "" },
            started.elapsed().as_secs_f64(),
            if OPTIMIZED {
                ""
            } else {
                ", dev build: goals on userspace time and CPU not judged"
            }
        ),
        sections,
    };
    report.write(&args.out)?;
    println!("\n{}", report.machine.one_line());
    println!("{}", report.summary_text());
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

/// The settings the command line asks for (its sections checked).
fn settings(args: &Args) -> Result<Settings> {
    for s in &args.sections {
        anyhow::ensure!(
            SECTIONS.contains(&s.as_str()),
            "unknown section {s}: one of {}",
            SECTIONS.join(", ")
        );
    }
    let mut settings = Settings::new(args.quick);
    if let Some(repeat) = args.repeat {
        settings.repeat = repeat;
        settings.new_flow_repeat = repeat;
    }
    settings.runs = args.runs.unwrap_or(settings.runs);
    settings.only = args.only.clone();
    Ok(settings)
}

/// The sections the command line asks for, measured in the report's order.
fn sections(args: &Args, settings: &Settings) -> Vec<Section> {
    let asked = |name: &str| args.sections.iter().any(|s| s == name);
    // `versus` needs a program of another project: among all sections
    // only when one is given; asked for by name without one, it says what
    // is missing.
    let wants = |name: &str| match name {
        "versus" => asked(name) || (args.sections.is_empty() && args.versus_pin.is_some()),
        _ => args.sections.is_empty() || asked(name),
    };
    let mut sections = Vec::new();
    let mut run = |name: &str, title: &str, f: &mut dyn FnMut() -> Result<Section>| {
        if wants(name) {
            sections.push(measured(title, f));
        }
    };
    let out = &args.out;
    run(
        "packet",
        "Data plane: ns/packet (BPF_PROG_TEST_RUN)",
        &mut || {
            let rows = packet::measure(settings)?;
            packet::section(settings, &rows, out)
        },
    );
    run("ranges", ranges::TITLE, &mut || ranges::section(settings));
    run("flows", flows::TITLE, &mut || flows::section(settings, out));
    run("flood", flood::TITLE, &mut || flood::section(settings));
    run("live", live::TITLE, &mut || live::section(settings));
    run("table", "Control plane: consistent-hash table", &mut || {
        table::section(settings, out)
    });
    run("scale", &scale::title(settings), &mut || {
        scale::section(settings)
    });
    run("million", million::TITLE, &mut || {
        million::section(settings)
    });
    run("health", "Control plane: health checks", &mut || {
        health::section(settings)
    });
    run("observe", observe::TITLE, &mut || {
        observe::section(settings)
    });
    let other = args.versus_pin.as_ref().map(|pin| versus::Other {
        pin: pin.clone(),
        load: args.versus_load.clone(),
        name: args.versus_name.clone().unwrap_or_else(|| {
            pin.file_name()
                .map_or("other".into(), |n| n.to_string_lossy().into_owned())
        }),
    });
    run("versus", versus::TITLE, &mut || {
        versus::section(settings, other.as_ref())
    });
    sections
}

/// The section `f` measures, or in its place one that says why it could
/// not be measured.
fn measured(title: &str, f: &mut dyn FnMut() -> Result<Section>) -> Section {
    eprintln!("bench: {title}...");
    let t = Instant::now();
    let section = f().unwrap_or_else(|e| {
        eprintln!("bench: {title} failed: {e:#}");
        let mut s = Section::new(title);
        // One line, no table separators: it goes into a table cell.
        let error = format!("{e:#}").replace('\n', "; ").replace('|', "/");
        s.line(format!("Not measured: {error}"));
        s.figures
            .push(Figure::info(format!("{title}: not measured"), error));
        s
    });
    eprintln!("bench: {title}: {:.1} s", t.elapsed().as_secs_f64());
    section
}
