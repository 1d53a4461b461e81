//! Live traffic through the lab: frames injected at the load balancer's
//! interface with BPF_PROG_TEST_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs the program on each
//! frame as if it had arrived on the lab lb's `eth0`, and an XDP_TX verdict
//! really transmits the frame there, so it crosses the lab's bridge to a
//! target (DSR: only the destination MAC changes). The same is done with the
//! MAC-swap program, whose input frame carries the target's MAC as source so
//! that its output takes the same path. Forwarded packets are counted where
//! they arrive (the target's `eth0` receive counter); drops = injected -
//! received.
//!
//! The rate is what one core can push through the program, the veth pair,
//! the bridge and the target's receive path; the ratio `lb` / MAC-swap is the
//! figure that carries over to other machines.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, ensure};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use lb_common::Counter;
use lb_tests::{
    Lab, LabOptions, Node,
    packets::Frame,
    topo::{CLIENT_MAC, LB_MAC, TARGETS, TargetSpec, fmt_mac},
};

use crate::{
    POLICY, Settings, XDP_TX, counter, errno_text,
    generator::{self, Generated},
    load, load_macswap, macswap,
    report::{Figure, Section, fmt_rate},
    stats::{median, paired_ratio},
    test_run,
};

/// Goal: `lb` forwards at least this share of the MAC-swap rate.
pub const GOAL: f64 = 0.8;
/// Frames per live-frames batch (the kernel's maximum is 256).
const BATCH: u32 = 64;

/// `ip -j -s link show eth0` in `node`: received packets.
fn rx_packets(lab: &Lab, node: Node) -> Result<u64> {
    let out = lab.exec(node, &["ip", "-j", "-s", "link", "show", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow!("no rx packets in {out}"))
}

/// The index of `node`'s `eth0`.
pub fn ifindex(lab: &Lab, node: Node) -> Result<u32> {
    let out = lab.exec(node, &["ip", "-j", "link", "show", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .ok_or_else(|| anyhow!("no ifindex in {out}"))
}

/// Waits until `node`'s receive counter stops moving (100 ms without
/// change, at most 5 s); its last value.
pub fn settled_rx(lab: &Lab, node: Node) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = rx_packets(lab, node)?;
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = rx_packets(lab, node)?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// One live-frames run: `repeat` copies of `frame` injected at `ifindex`
/// (in the lb's namespace). Wall-clock seconds.
fn inject(lab: &Lab, program: &mut Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<f64> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect();
    lab.run_in(Node::Lb, || {
        let started = Instant::now();
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .map_err(|e| {
                anyhow!(
                    "BPF_PROG_TEST_RUN with live frames (BPF_F_TEST_XDP_LIVE_FRAMES) refused: {}",
                    errno_text(&e)
                )
            })?;
        Ok(started.elapsed().as_secs_f64())
    })
}

/// One run of one program.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Wall-clock seconds of the injection.
    pub secs: f64,
    /// Frames that arrived at the target.
    pub received: u64,
}

pub struct Live {
    /// Frames injected per run.
    pub repeat: u32,
    pub lb: Vec<Run>,
    pub base: Vec<Run>,
    pub lb_counted: u64,
    pub target: &'static str,
}

impl Live {
    /// Injected frames per second, per run.
    fn injected(&self, runs: &[Run]) -> Vec<f64> {
        runs.iter().map(|r| self.repeat as f64 / r.secs).collect()
    }

    /// Forwarded (arrived) frames per second, per run.
    fn forwarded(&self, runs: &[Run]) -> Vec<f64> {
        runs.iter()
            .map(|r| r.received.min(self.repeat as u64) as f64 / r.secs)
            .collect()
    }

    fn dropped(&self, runs: &[Run]) -> u64 {
        runs.iter()
            .map(|r| (self.repeat as u64).saturating_sub(r.received))
            .sum()
    }
}

/// The live-frames runs of both programs, interleaved, in `lab` (made by
/// [`lab`]).
pub fn measure(settings: &Settings, lab: &Lab) -> Result<Live> {
    let (repeat, runs) = if settings.quick {
        (300_000, 2)
    } else {
        (2_000_000, 3)
    };
    let ifindex = ifindex(lab, Node::Lb)?;
    // `lb_plain`: live frames are recycled without being copied again (see
    // below), so `lb` would see its own output, addressed to a target,
    // which it passes; this build addresses each frame to the load
    // balancer again first.
    let object = crate::Object::read(crate::Object::LB_PLAIN)?;
    let mut dp = load(object.bytes(), "lb_plain", POLICY, 1 << 20)?;
    let mut baseline = load_macswap()?;
    let base = macswap(&mut baseline);

    // One UDP flow (the targets have no UDP server on the VIP: each frame
    // ends in their kernel, with rate-limited ICMP errors at most).
    let frame = Frame::udp("10.0.3.100", 40000, "10.0.3.49", 53, &[0u8; 18]).build();
    let (index, spec) = chosen_target(dp.program_mut(), &frame)?;
    let node = Node::Target(index);
    // Live frames are recycled without being copied again, so a program
    // sees its own output on later runs; a frame from the target's MAC to
    // the target's MAC comes out of a swap the same every time.
    let mut swap_frame = frame.clone();
    swap_frame[..6].copy_from_slice(&spec.mac);
    swap_frame[6..12].copy_from_slice(&spec.mac);

    let hits0 = counter(&dp, Counter::FlowHit)?;
    let mut live = Live {
        repeat,
        lb: vec![],
        base: vec![],
        lb_counted: 0,
        target: spec.name,
    };
    for _ in 0..runs {
        live.lb.push(one_run(
            lab,
            node,
            dp.program_mut(),
            &frame,
            ifindex,
            repeat,
        )?);
        live.base
            .push(one_run(lab, node, base, &swap_frame, ifindex, repeat)?);
    }
    live.lb_counted = counter(&dp, Counter::FlowHit)? - hits0;
    Ok(live)
}

/// A lab without target servers, its bridge set for injected frames and for
/// the traffic generator (`generator`).
pub fn lab() -> Result<Lab> {
    let lab = Lab::with(LabOptions {
        prefix: "lbbench".into(),
        server_bin: None,
        ..LabOptions::default()
    })?;
    // The bridge must not learn from what the lb's port sends: a MAC-swap
    // frame carries the target's MAC as its source (see `measure`), and
    // learning it there would send the target's frames back to the lb.
    lab.exec(
        Node::Switch,
        &[
            "bridge",
            "link",
            "set",
            "dev",
            &Node::Lb.port(),
            "learning",
            "off",
        ],
    )?;
    // The bridge learns where each target is (else it floods every frame).
    for i in 0..TARGETS.len() {
        let _ = lab.exec(Node::Target(i), &["ping", "-c", "1", "-W", "1", "10.0.3.2"]);
    }
    // The generator (`generator`) writes frames from the client's port to
    // the lb's MAC, which the bridge cannot learn from the lb's port; and
    // for the MAC-swap program, frames with a target's MAC as source,
    // which it must not learn there.
    for (node, mac) in [(Node::Lb, LB_MAC), (Node::Client, CLIENT_MAC)] {
        let port = node.port();
        let mac = fmt_mac(mac);
        lab.exec(
            Node::Switch,
            &["bridge", "link", "set", "dev", &port, "learning", "off"],
        )?;
        lab.exec(
            Node::Switch,
            &[
                "bridge", "fdb", "replace", &mac, "dev", &port, "master", "static",
            ],
        )?;
    }
    Ok(lab)
}

/// The lab target `lb` forwards `frame` to (by the destination MAC it writes).
pub fn chosen_target(lb: &mut Xdp, frame: &[u8]) -> Result<(usize, &'static TargetSpec)> {
    let (verdict, _, out) = test_run(lb, frame, 1)?;
    ensure!(verdict == XDP_TX, "lb verdict {verdict}");
    let mac: [u8; 6] = out[..6].try_into()?;
    TARGETS
        .iter()
        .enumerate()
        .find(|(_, t)| t.mac == mac)
        .ok_or_else(|| anyhow!("lb chose an unknown MAC {mac:x?}"))
}

/// One run of `program`: `repeat` copies of `frame` injected, and what
/// arrived at `node` once its receive counter settled.
fn one_run(
    lab: &Lab,
    node: Node,
    program: &mut Xdp,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<Run> {
    let before = settled_rx(lab, node)?;
    let secs = inject(lab, program, frame, ifindex, repeat)?;
    let received = settled_rx(lab, node)?.saturating_sub(before);
    Ok(Run { secs, received })
}

pub const TITLE: &str = "Data plane: live traffic through the lab";

/// Both methods in one lab: live frames, and the traffic generator (the
/// way that needs no live frames); each one that cannot run says why.
pub fn section(settings: &Settings) -> Result<Section> {
    let lab = lab()?;
    let mut s = Section::new(TITLE);
    match measure(settings, &lab) {
        Ok(m) => frames_part(&mut s, &m),
        Err(e) => not_measured(&mut s, "live traffic (live frames)", &e),
    }
    match generator::measure(settings, &lab) {
        Ok(g) => generator_part(&mut s, &g),
        Err(e) => not_measured(&mut s, "live traffic (traffic generator)", &e),
    }
    Ok(s)
}

/// A method that could not run: a line and a summary figure with the reason.
fn not_measured(s: &mut Section, what: &str, e: &anyhow::Error) {
    // One line, no table separators: it goes into a table cell.
    let why = format!("{e:#}").replace('\n', "; ").replace('|', "/");
    s.line(format!("\n{what}: not measured: {why}."));
    s.figures
        .push(Figure::info(format!("{what}: not measured"), why));
}

fn frames_part(s: &mut Section, m: &Live) {
    let frames = m.repeat as u64 * m.lb.len() as u64;
    s.line(format!(
        "Live frames: BPF_PROG_TEST_RUN with live frames ({BATCH} per batch) on the lab lb's eth0: {} frames per run, {} runs per program, `lb` and MAC-swap interleaved, one UDP flow to target {}. Injected = frames / wall-clock time of the call; forwarded = frames that arrived at the target's eth0 / the same time; dropped = injected - arrived. Injection and forwarding share the machine's cores, so the generator can outrun the path: drops then show what the path could not take.",
        m.repeat,
        m.lb.len(),
        m.target
    ));
    s.table(
        &[
            "program",
            "forwarded (median)",
            "forwarded per run",
            "injected per run",
            "dropped",
        ],
        &rows(m, frames),
    );
    s.line(format!(
        "`lb` counted {} flow-table hits for {frames} injected frames.",
        m.lb_counted
    ));
    figures(s, m, frames);
}

fn rates(v: &[f64]) -> String {
    v.iter()
        .map(|r| fmt_rate(*r))
        .collect::<Vec<_>>()
        .join(", ")
}

fn generator_part(s: &mut Section, g: &Generated) {
    s.line(format!(
        "\nTraffic generator (needs no live frames): a packet socket in the lab client's namespace writes one UDP frame to the VIP's port 53 up to {} times per run (at most {} s), as fast as one thread can, through the client's veth and the bridge to the lab lb's eth0, where the program runs in native XDP mode and transmits it to target {}: `lb` by its choice for the flow, MAC-swap because the frame it gets carries that target's MAC as source. {} runs per program, interleaved. Offered = frames sent / sending time; forwarded = frames that arrived at the target's eth0 / the same time. On a veth the receiving side's XDP runs on the sending CPU, so the generator, the veths, the bridge, the program and the target's receive path share one CPU: the ratio is that of the whole path (no goal).",
        g.count,
        g.limit.as_secs(),
        g.target,
        g.lb.len()
    ));
    let dropped = |runs: &[generator::Run]| -> (u64, u64) {
        let sent = runs.iter().map(|r| r.sent).sum::<u64>();
        let received = runs.iter().map(|r| r.received.min(r.sent)).sum::<u64>();
        (sent - received, sent)
    };
    let mut rows = Vec::new();
    for (name, runs) in [("lb", &g.lb), ("MAC-swap", &g.base)] {
        let forwarded: Vec<f64> = runs.iter().map(generator::Run::forwarded).collect();
        let offered: Vec<f64> = runs.iter().map(generator::Run::offered).collect();
        let (lost, sent) = dropped(runs);
        rows.push(vec![
            name.into(),
            format!("{}pkt/s", fmt_rate(median(&forwarded))),
            rates(&forwarded),
            rates(&offered),
            format!("{lost} of {sent}"),
        ]);
    }
    s.table(
        &[
            "program",
            "forwarded (median)",
            "forwarded per run",
            "offered per run",
            "dropped",
        ],
        &rows,
    );
    let rate = |runs: &[generator::Run]| -> Vec<f64> {
        runs.iter().map(generator::Run::forwarded).collect()
    };
    let (lb, base) = (rate(&g.lb), rate(&g.base));
    s.figures.push(Figure::info(
        "live traffic from a generator in the client namespace: lb / MAC-swap forwarded packets/s",
        format!(
            "{:.2} ({}pkt/s vs {}pkt/s; dropped {} / {})",
            paired_ratio(&lb, &base),
            fmt_rate(median(&lb)),
            fmt_rate(median(&base)),
            dropped(&g.lb).0,
            dropped(&g.base).0
        ),
    ));
}

/// The table: a row per program.
fn rows(m: &Live, frames: u64) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (name, runs) in [("lb", &m.lb), ("MAC-swap", &m.base)] {
        rows.push(vec![
            name.into(),
            format!("{}pkt/s", fmt_rate(median(&m.forwarded(runs)))),
            rates(&m.forwarded(runs)),
            rates(&m.injected(runs)),
            format!("{} of {frames}", m.dropped(runs)),
        ]);
    }
    rows
}

/// The summary's figures: the forwarding ratio against its goal, the drops.
fn figures(s: &mut Section, m: &Live, frames: u64) {
    let (lb_rates, base_rates) = (m.forwarded(&m.lb), m.forwarded(&m.base));
    let (lb, base) = (median(&lb_rates), median(&base_rates));
    // Per pair of runs (interleaved, back to back: the VM's speed of the
    // moment is in both), then the median.
    let ratio = paired_ratio(&lb_rates, &base_rates);
    s.figures.push(Figure::goal(
        "live traffic: lb / MAC-swap forwarded packets/s (median of paired runs)",
        format!(
            "{ratio:.2} ({}pkt/s vs {}pkt/s)",
            fmt_rate(lb),
            fmt_rate(base)
        ),
        format!(">= {GOAL}"),
        ratio >= GOAL,
    ));
    s.figures.push(Figure::info(
        "live traffic: dropped (lb / MAC-swap)",
        format!(
            "{} / {} of {frames} each",
            m.dropped(&m.lb),
            m.dropped(&m.base)
        ),
    ));
}
