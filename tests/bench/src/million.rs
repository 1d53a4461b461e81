//! A running `lb` with 1,048,576 live flows: the kernel memory of its flow
//! table per flow (beside the floor's flow maps: main's design, `floor`),
//! and how long its status request, one sweep of its flow table (through
//! the memory mapping) and a restart (adoption of the pinned data plane)
//! take.
//!
//! `lb run` runs in a lab (no target servers: the policy has static MACs
//! and no health check). The flows are created by `lb_scrambled` loaded
//! over the maps `lb` pinned, so its test runs go through `lb`'s own
//! pipeline code, listeners and tables: one test run of N SYNs, N distinct
//! sources in a scrambled order (the `flows` fixture of 1,048,576 TCP/IPv4
//! flows). The sweep time is `lb`'s own (`lb status`: the last sweep's
//! duration); the entries it counted show what the table kept: every flow
//! but those the fill lost (`flow_evicted`, `flow_insert_failed`).
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
    Build, Design, Object, POLICY, Settings, Subject,
    flows::{self, Fixture},
    maps::memlock,
    report::{Figure, OPTIMIZED, Section, fmt_bytes, fmt_count, fmt_secs},
    scale::steps,
    stats::median,
};

/// The fixture whose flows `lb` gets.
const FIXTURE: &Fixture = &flows::FIXTURES[2];

/// What `lb status` said of the flow table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sweep {
    /// Entries in use at the last sweep.
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
    /// Flows of the fill whose entry a later one took (`flow_evicted`),
    /// and flows it forwarded without remembering them
    /// (`flow_insert_failed`).
    pub evicted: u64,
    pub unremembered: u64,
    /// memlock of `FLOW_TABLE`, and its buckets.
    pub table_memory: u64,
    pub buckets: u64,
    /// memlock of each of the floor's flow maps for as many flows (main's
    /// design, loaded for this figure only).
    pub floor_memory: Vec<(&'static str, u64)>,
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

/// The counter `name` as `lb status` shows it.
fn lb_counter(lb: &LbProcess, name: &str) -> Result<u64> {
    lb.report()?.0["counters"][name]
        .as_u64()
        .with_context(|| format!("no {name} counter in lb's status"))
}

fn new_flows(lb: &LbProcess) -> Result<u64> {
    lb_counter(lb, "new_flow")
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

/// memlock of the flow table pinned in `dir`, and its buckets.
fn memory(dir: &Path) -> Result<(u64, u64)> {
    let name = map_names::FLOW_TABLE;
    let map = MapData::from_pin(dir.join(name)).with_context(|| format!("open {name}"))?;
    Ok((memlock(&map)?, map.info()?.max_entries().into()))
}

/// memlock of each of the floor's flow maps for `max_flows` (they are
/// allocated in full when created).
fn floor_memory(max_flows: u32) -> Result<Vec<(&'static str, u64)>> {
    match Design::Floor.load(Build::Plain, POLICY, max_flows)? {
        Subject::Floor(floor) => floor.flow_memory(),
        Subject::Lb(_) => unreachable!("the floor loads as the floor"),
    }
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
    let lost = |lb: &LbProcess| -> Result<[u64; 2]> {
        Ok([
            lb_counter(lb, "flow_evicted")?,
            lb_counter(lb, "flow_insert_failed")?,
        ])
    };
    let before = lost(&lb)?;
    let fill = fill(&lb, &dir)?;
    let after = lost(&lb)?;
    let [evicted, unremembered] = [after[0] - before[0], after[1] - before[1]];
    let kept = u64::from(flows) - evicted - unremembered;
    let swept = wait_for_sweep(&lb, kept)?;
    let api = timed(5, || Ok(lb.report().map(drop)?))?;
    let cli = timed(3, || Ok(lb.status_command(None, false).map(drop)?))?;
    let (table_memory, buckets) = memory(&dir)?;
    let t = Instant::now();
    lb.stop()?;
    let stop = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let lb = lab.start_lb(&path, &["--xdp-mode", "native"])?;
    let ready = t.elapsed().as_secs_f64();
    let adopted = wait_for_sweep(&lb, kept)?;
    // Read once the sweep is seen: the log thread signals the ready line
    // before it appends it to the log.
    let ready_steps = steps(&lb.log(), lb_tests::lb::READY);
    drop(lb);
    drop(lab);
    let floor_memory = floor_memory(flows)?;
    Ok(Million {
        flows,
        fill,
        evicted,
        unremembered,
        table_memory,
        buckets,
        floor_memory,
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
        "`lb run` in a lab (native XDP, the lab policy with static MACs and no health check, the default flow table: sized for 1,048,576 flows of both families, {} buckets of 4 entries). Its flows are created by `lb_scrambled` loaded over the maps `lb` pinned: one test run of {} SYNs from distinct sources (10.128.0.0/26, ports 32768-65535) to its `web` listener, through `lb`'s pipeline and table; `lb`'s `new_flow` counter must grow by as many, and its sweeps must then see every flow the fill kept (all but those it counted as `flow_evicted` or `flow_insert_failed`: a flow whose two buckets were full took the entry of a flow seen once, or went unremembered). Then: what `lb`'s next sweep saw (`lb status`: entries, the sweep's duration (it walks the table through its memory mapping), active flows of `web`), the status request on the API socket (5 times) and `lb status` (the command: process start, request, rendering; 3 times), the kernel memory of the flow table (the `memlock` line of the map's fdinfo: allocated in full when created, so the figure per flow is the same for a full table and an empty one), and a restart: SIGTERM (the data plane stays pinned and forwarding) and a new `lb run`, to its ready line (it adopts the pinned maps), then its first sweep. Beside it, the floor's flow maps for as many flows (main's design: an LRU hash map per family and the flow cache, loaded for this figure only; main's `lb run` is not built here, so its sweep, status and restart are not measured).{}",
        fmt_count(m.buckets),
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

/// Bytes of `lb`'s flow table per flow it is sized for (both families).
fn per_flow(m: &Million) -> f64 {
    m.table_memory as f64 / f64::from(m.flows)
}

/// The floor's memlock of map `name`.
fn floor_map(m: &Million, name: &str) -> u64 {
    m.floor_memory
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, b)| *b)
}

/// Bytes of the floor's IPv4 LRU map and flow cache per IPv4 flow.
fn floor_per_flow(m: &Million) -> f64 {
    use crate::floor::common::floor_map_names as names;
    (floor_map(m, names::FLOWS_V4) + floor_map(m, names::FLOW_CACHE)) as f64 / f64::from(m.flows)
}

fn rows(m: &Million) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec![
            format!("create {} flows (one test run)", fmt_count(m.flows.into())),
            format!(
                "{} (lost at the fill, both buckets full: {} evicted by a later flow, {} not remembered)",
                fmt_secs(m.fill),
                fmt_count(m.evicted),
                fmt_count(m.unremembered)
            ),
        ],
        vec!["`lb`'s next sweep".into(), sweep_text(&m.swept)],
        vec!["status request (API socket)".into(), all_secs(&m.api)],
        vec!["`lb status`".into(), all_secs(&m.cli)],
        vec![
            "kernel memory: FLOW_TABLE (memlock)".into(),
            format!(
                "{} ({} buckets of 64 B; {:.0} B per flow, either family)",
                fmt_bytes(m.table_memory),
                fmt_count(m.buckets),
                per_flow(m)
            ),
        ],
    ];
    for (name, bytes) in &m.floor_memory {
        rows.push(vec![
            format!("floor: kernel memory: {name} (memlock)"),
            format!(
                "{} ({:.0} B per entry or slot)",
                fmt_bytes(*bytes),
                *bytes as f64 / f64::from(m.flows)
            ),
        ]);
    }
    rows.extend([
        vec![
            "floor: kernel memory per IPv4 flow (FLOWS_V4 + FLOW_CACHE)".into(),
            format!("{:.0} B", floor_per_flow(m)),
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
    use crate::floor::common::floor_map_names as names;
    s.figures.push(Figure::info(
        format!(
            "{} live flows: kernel memory per flow (memlock)",
            fmt_count(m.flows.into())
        ),
        format!(
            "{:.0} B per flow of either family (FLOW_TABLE {}); floor {:.0} B per IPv4 flow (LRU map + flow cache) and its IPv6 map {} more",
            per_flow(m),
            fmt_bytes(m.table_memory),
            floor_per_flow(m),
            fmt_bytes(floor_map(m, names::FLOWS_V6))
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
