//! A running `lb` with 1,048,576 live flows: the kernel memory of its flow
//! maps per flow, and how long its status request, one sweep of its flow
//! tables and a restart (adoption of the pinned data plane) take.
//!
//! `lb run` runs in a lab (no target servers: the policy has static MACs
//! and no health check). The flows are created by `lb_scrambled` loaded
//! over the maps `lb` pinned, so its test runs go through `lb`'s own
//! pipeline code, listeners and tables: one test run of N SYNs, N distinct
//! sources in a scrambled order (the `flows` fixture of 1,048,576 TCP/IPv4
//! flows). The sweep time is `lb`'s own (`lb status`: the last sweep's
//! duration); the flows it counted show what the table kept.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{maps::MapData, programs::Xdp};
use lb_common::map_names;
use lb_tests::{Lab, LabOptions, Node, lb::LbProcess, policy::LabPolicy, status::Status};
use lb_user::dataplane::pin::{self, Instance};

use crate::{
    Object, Settings,
    flows::{self, Fixture},
    maps::memlock,
    report::{Figure, OPTIMIZED, Section, fmt_bytes, fmt_count, fmt_secs},
    scale::steps,
    stats::median,
};

/// The fixture whose flows `lb` gets.
const FIXTURE: &Fixture = &flows::FIXTURES[2];

/// The flow maps whose memory is reported.
const FLOW_MAPS: [&str; 3] = [
    map_names::FLOWS_V4,
    map_names::FLOWS_V6,
    map_names::FLOW_CACHE,
];

/// What `lb status` said of the flow tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sweep {
    /// Entries of both tables at the last sweep.
    pub entries: u64,
    /// How long that sweep took (ms).
    pub took_ms: f64,
    /// Active flows of the group the flows belong to (`web`).
    pub active: u64,
}

impl Sweep {
    fn of(status: &Status) -> Option<Sweep> {
        let table = &status.0["flow_table"];
        let active = status.group("web")?["targets"]
            .as_array()?
            .iter()
            .filter_map(|t| t["active_flows"].as_u64())
            .sum();
        Some(Sweep {
            entries: table["entries"].as_u64()?,
            took_ms: table["last_sweep_ms"].as_f64()?,
            active,
        })
    }
}

pub struct Million {
    pub flows: u32,
    /// The test run that created them (s).
    pub fill: f64,
    /// memlock of each of [`FLOW_MAPS`].
    pub memory: Vec<(&'static str, u64)>,
    /// The first sweep that saw them.
    pub swept: Sweep,
    /// The status request on the API socket, and `lb status` (s).
    pub api: Vec<f64>,
    pub cli: Vec<f64>,
    /// SIGTERM to exit, and the next start to its ready line (s).
    pub stop: f64,
    pub ready: f64,
    pub ready_steps: String,
    /// The first sweep of the restarted `lb`.
    pub adopted: Sweep,
}

/// Polls the status until a sweep has seen `flows` entries (60 s at most).
fn wait_for_sweep(lb: &LbProcess, flows: u64) -> Result<Sweep> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = Sweep::of(&lb.report()?);
        if last.is_some_and(|s| s.entries >= flows) {
            return Ok(last.expect("checked"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("after 60 s, lb's last sweep saw {last:?}, not {flows} entries")
}

/// The `new_flow` counter as `lb status` shows it.
fn new_flows(lb: &LbProcess) -> Result<u64> {
    lb.report()?.0["counters"]["new_flow"]
        .as_u64()
        .context("no new_flow counter in lb's status")
}

/// `lb_scrambled` loaded over the maps `lb` pinned in `dir` (every pin but
/// the link): its test runs create flows in `lb`'s tables. Maps it has
/// that `lb` did not pin (global data) are its own.
fn over_pins(dir: &Path) -> Result<aya::Ebpf> {
    let mut pins: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != pin::LINK {
            pins.push((name, entry.path()));
        }
    }
    ensure!(pins.len() > 1, "lb pinned no maps in {}", dir.display());
    let object = Object::read(Object::LB_SCRAMBLED)?;
    let mut loader = aya::EbpfLoader::new();
    for (name, path) in &pins {
        loader.map_pin_path(name, path);
    }
    let mut ebpf = loader.load(object.bytes())?;
    program(&mut ebpf).load()?;
    Ok(ebpf)
}

fn program(ebpf: &mut aya::Ebpf) -> &mut Xdp {
    ebpf.program_mut("lb_scrambled")
        .expect("the object has its program")
        .try_into()
        .expect("an XDP program")
}

/// Creates the fixture's flows in `lb`'s maps (pinned in `dir`); checks
/// that `lb` counted as many new flows. Seconds the test run took.
fn fill(lb: &LbProcess, dir: &Path) -> Result<f64> {
    let mut ebpf = over_pins(dir)?;
    let before = new_flows(lb)?;
    let t = Instant::now();
    flows::run_fill(program(&mut ebpf), FIXTURE)?;
    let secs = t.elapsed().as_secs_f64();
    let made = new_flows(lb)? - before;
    ensure!(
        made == u64::from(FIXTURE.flows()),
        "lb counted {made} new flows, expected {}",
        FIXTURE.flows()
    );
    Ok(secs)
}

/// memlock of each flow map pinned in `dir`.
fn memory(dir: &Path) -> Result<Vec<(&'static str, u64)>> {
    FLOW_MAPS
        .iter()
        .map(|&name| {
            let map = MapData::from_pin(dir.join(name)).with_context(|| format!("open {name}"))?;
            Ok((name, memlock(&map)?))
        })
        .collect()
}

/// Seconds each of `runs` calls of `f` took.
fn timed(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// The lab, `lb run` in it (native XDP), its policy file and the directory
/// of its pinned maps.
fn start() -> Result<(Lab, LbProcess, PathBuf, PathBuf)> {
    let lab = Lab::with(LabOptions {
        prefix: "lbbench".into(),
        server_bin: None,
        ..LabOptions::default()
    })?;
    let policy = LabPolicy {
        static_macs: true,
        ..LabPolicy::default()
    };
    let path = lab.write_file("million.yaml", &policy.yaml());
    let lb = lab.start_lb(&path, &["--xdp-mode", "native"])?;
    let dir = lab.run_in(Node::Lb, || Instance::of_interface("eth0").pin_dir());
    Ok((lab, lb, path, dir))
}

pub fn measure() -> Result<Million> {
    let (lab, lb, path, dir) = start()?;
    let flows = FIXTURE.flows();
    let fill = fill(&lb, &dir)?;
    let swept = wait_for_sweep(&lb, flows.into())?;
    let api = timed(5, || Ok(lb.report().map(drop)?))?;
    let cli = timed(3, || Ok(lb.status_command(None, false).map(drop)?))?;
    let memory = memory(&dir)?;
    let t = Instant::now();
    lb.stop()?;
    let stop = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let lb = lab.start_lb(&path, &["--xdp-mode", "native"])?;
    let ready = t.elapsed().as_secs_f64();
    let ready_steps = steps(&lb.log(), lb_tests::lb::READY);
    let adopted = wait_for_sweep(&lb, flows.into())?;
    Ok(Million {
        flows,
        fill,
        memory,
        swept,
        api,
        cli,
        stop,
        ready,
        ready_steps,
        adopted,
    })
}

pub const TITLE: &str = "Control plane: 1,048,576 live flows (memory, status, sweep, restart)";

pub fn section(_settings: &Settings) -> Result<Section> {
    let m = measure()?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "`lb run` in a lab (native XDP, the lab policy with static MACs and no health check, default flow tables of 1,048,576 entries per family). Its flows are created by `lb_scrambled` loaded over the maps `lb` pinned: one test run of {} SYNs from distinct sources (10.128.0.0/26, ports 32768-65535) to its `web` listener, through `lb`'s pipeline and tables; `lb`'s `new_flow` counter must grow by as many. Then: what `lb`'s next sweep saw (`lb status`: entries, the sweep's duration, active flows of `web`), the status request on the API socket (5 times) and `lb status` (the command: process start, request, rendering; 3 times), the kernel memory of the flow maps (the `memlock` line of each map's fdinfo: these maps are allocated in full when created, so the figure per flow is the same for a full table and an empty one), and a restart: SIGTERM (the data plane stays pinned and forwarding) and a new `lb run`, to its ready line (it adopts the pinned maps), then its first sweep.{}",
        fmt_count(m.flows.into()),
        if OPTIMIZED {
            ""
        } else {
            " Dev build: `lb`'s times are those of unoptimized code."
        }
    ));
    s.table(&["step", "value"], &rows(&m));
    figures(&mut s, &m);
    Ok(s)
}

fn sweep_text(s: &Sweep) -> String {
    format!(
        "{} entries, {} active flows, sweep {}",
        s.entries,
        s.active,
        fmt_secs(s.took_ms / 1e3)
    )
}

fn all_secs(v: &[f64]) -> String {
    let all: Vec<String> = v.iter().map(|&x| fmt_secs(x)).collect();
    format!("{} (median; {})", fmt_secs(median(v)), all.join(", "))
}

/// Bytes of the IPv4 flow table and the flow cache per IPv4 flow.
fn per_flow(m: &Million) -> f64 {
    let of = |name| {
        m.memory
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, b)| *b)
    };
    (of(map_names::FLOWS_V4) + of(map_names::FLOW_CACHE)) as f64 / f64::from(m.flows)
}

fn rows(m: &Million) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec![
            format!("create {} flows (one test run)", fmt_count(m.flows.into())),
            fmt_secs(m.fill),
        ],
        vec!["`lb`'s next sweep".into(), sweep_text(&m.swept)],
        vec!["status request (API socket)".into(), all_secs(&m.api)],
        vec!["`lb status`".into(), all_secs(&m.cli)],
    ];
    for (name, bytes) in &m.memory {
        rows.push(vec![
            format!("kernel memory: {name} (memlock)"),
            format!(
                "{} ({:.0} B per entry or slot)",
                fmt_bytes(*bytes),
                *bytes as f64 / f64::from(m.flows)
            ),
        ]);
    }
    rows.extend([
        vec![
            "kernel memory per IPv4 flow (FLOWS_V4 + FLOW_CACHE)".into(),
            format!("{:.0} B", per_flow(m)),
        ],
        vec!["restart: SIGTERM to exit".into(), fmt_secs(m.stop)],
        vec![
            "restart: start to ready (adoption)".into(),
            format!("{} ({})", fmt_secs(m.ready), m.ready_steps),
        ],
        vec!["restart: first sweep".into(), sweep_text(&m.adopted)],
    ]);
    rows
}

fn figures(s: &mut Section, m: &Million) {
    let v6 = m
        .memory
        .iter()
        .find(|(n, _)| *n == map_names::FLOWS_V6)
        .map_or(0, |(_, b)| *b);
    s.figures.push(Figure::info(
        format!(
            "{} live flows: kernel memory per flow (memlock)",
            fmt_count(m.flows.into())
        ),
        format!(
            "{:.0} B per IPv4 flow (flow table + flow cache; the IPv6 table {} more, allocated whatever it holds)",
            per_flow(m),
            fmt_bytes(v6)
        ),
    ));
    s.figures.push(Figure::info(
        format!(
            "{} live flows: status request / `lb`'s sweep / restart to ready",
            fmt_count(m.flows.into())
        ),
        format!(
            "{} / {} / {} ({} entries after the restart){}",
            fmt_secs(median(&m.api)),
            fmt_secs(m.swept.took_ms / 1e3),
            fmt_secs(m.ready),
            fmt_count(m.adopted.entries),
            if OPTIMIZED { "" } else { " (dev build)" }
        ),
    ));
}
