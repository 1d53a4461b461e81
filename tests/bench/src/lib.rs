//! The benchmarks of `cargo xtask bench` (binary `lb-bench`), one module per
//! concern; each returns a report [`report::Section`]: its method and detail
//! tables, its lines of the summary table and its plots. docs/bench.md
//! describes the methods and how to read the figures.
//!
//! Data plane (BPF_PROG_TEST_RUN, no network needed): [`packet`] (ns/packet
//! beside a MAC-swap program), [`ranges`] (what a listener's port range
//! costs, `lb` only), [`flows`] (established flows at scale, in a
//! scrambled order, on one CPU and on two at once), [`flood`] (SYN and
//! spoofed-ACK floods against established flows); `packet` and `flows`
//! also time [`memory`] (one read from memory, the unit of issue 18's
//! goals). Through the lab's
//! namespaces: [`live`] (live frames forwarded by DSR, and frames from a
//! traffic generator: [`generator`]), [`health`] (failure-to-removal time)
//! and the probe capacity.
//! Control plane (pure or in-process): [`table`] (hash table build time and
//! disruption), [`scale`] (1,000 groups x 100 targets); in a lab,
//! [`million`] (`lb run` with 1,048,576 live flows: memory, status, sweep,
//! restart), [`observe`] (metrics scrapes at that scale, and reloads and
//! health verdicts while scrapes run).
//!
//! The benchmark's own eBPF programs (`ebpf/`: the MAC-swap baseline,
//! `lb_new_flow`, `lb_scrambled` and its baseline, and the frozen floor's
//! `lru`, `lru_new_flow`, `lru_scrambled`) are built by `cargo xtask bench`
//! and read at run time ([`Object`]); `lb` is the one `lb` embeds
//! (`lb_user::EBPF_LB`).
//!
//! The floor ([`floor`]): every data-plane figure of `lb` (its own flow
//! table) is measured beside main's design before it (kernel LRU flow maps
//! and the flow cache, frozen in `ebpf/src/lru/`), with the same policy and
//! fixtures, in the same run ([`Design`], [`Subject`]).
//!
//! Adding a fixture: data-plane fixtures are listed in [`packet::fixtures`]
//! (per algorithm: one listener of [`POLICY`] per algorithm, named in
//! [`ALGORITHMS`]); the floods run for each entry of [`ALGORITHMS`] too.
pub mod cpus;
pub mod flood;
pub mod floor;
pub mod flow_cache;
pub mod flows;
pub mod generator;
pub mod health;
pub mod live;
pub mod maps;
pub mod memory;
pub mod million;
pub mod observe;
pub mod packet;
pub mod plot;
pub mod ranges;
pub mod report;
pub mod scale;
// The order and the sources of the scrambled builds, shared with them.
#[path = "../ebpf/src/scramble.rs"]
pub mod scramble;
pub mod stats;
pub mod table;
pub mod versus;

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_common::Counter;
use lb_tests::packets::LB_MAC;
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    plan::Observed,
    policy,
};

/// What the whole run was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Repetitions of one BPF_PROG_TEST_RUN call (ns/packet).
    pub repeat: u32,
    /// The same for new-flow fixtures (each repetition costs many times an
    /// established one: quick runs do fewer).
    pub new_flow_repeat: u32,
    /// Runs of each ns/packet figure (min and median are reported).
    pub runs: usize,
    /// Only the data-plane fixtures whose name contains this.
    pub only: Option<String>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            quick,
            repeat: if quick { 200_000 } else { 1_000_000 },
            new_flow_repeat: if quick { 50_000 } else { 1_000_000 },
            runs: if quick { 3 } else { 7 },
            only: None,
        }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| name.contains(only))
    }
}

/// The policy of the data-plane benchmarks (BPF_PROG_TEST_RUN): one TCP
/// listener per algorithm on 10.0.3.49 (ports in [`ALGORITHMS`]), UDP and
/// IPv6 listeners of the hash algorithm. Targets are 10.0.3.11-13 and
/// fd00:3::11-13 with MACs 02:00:00:00:00:11-13.
pub const POLICY: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
  - { name: src, vip: 10.0.3.49, protocol: tcp, port: 8080, target_group: src }
  - { name: rr, vip: 10.0.3.49, protocol: tcp, port: 8081, target_group: rr }
  - { name: lc, vip: 10.0.3.49, protocol: tcp, port: 8082, target_group: lc }
target_groups:
  - name: web
    protocol: tcp
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
  - name: dns
    protocol: udp
    targets: [ { ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13 } ]
  - name: web6
    protocol: tcp
    targets: [ { ip: "fd00:3::11" }, { ip: "fd00:3::12" }, { ip: "fd00:3::13" } ]
  - name: src
    protocol: tcp
    algorithm: source_ip
    targets: [ { ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13 } ]
  - name: rr
    protocol: tcp
    algorithm: round_robin
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
  - name: lc
    protocol: tcp
    algorithm: least_connections
    targets: [ { ip: 10.0.3.11, weight: 256 }, { ip: 10.0.3.12, weight: 256 }, { ip: 10.0.3.13, weight: 128 } ]
"#;

/// Algorithms the data-plane benchmarks cover: (name in the report, TCP port
/// of its IPv4 listener in [`POLICY`]).
pub const ALGORITHMS: &[(&str, u16)] = &[
    ("hash", 80),
    ("source_ip", 8080),
    ("round_robin", 8081),
    ("least_connections", 8082),
];

/// The MAC of the target whose address ends in `last` (hexadecimal) in
/// [`POLICY`]: 10.0.3.11 and fd00:3::11 have 02:00:00:00:00:11, the MAC of
/// the lab's target t1 (see [`lb_tests::topo::TARGETS`]).
pub fn target_mac(last: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, last]
}

/// 11 -> 0x11: the last octet of an IPv4 target read as the hexadecimal
/// digits of its IPv6 twin.
fn decimal_as_hex(octet: u8) -> u8 {
    ((octet / 10 % 10) << 4) | (octet % 10)
}

/// An eBPF object of the benchmark (`ebpf/`), read from
/// `$LB_BENCH_EBPF_DIR`, where `cargo xtask bench` builds them; held 8-byte
/// aligned, as the ELF parser wants it.
pub struct Object {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Object {
    /// The MAC-swap baseline (program `macswap`).
    pub const MACSWAP: &str = "macswap";
    /// `lb`'s pipeline behind the write that addresses the frame to the
    /// load balancer again (program `lb_plain`): fixtures that repeat one
    /// frame.
    pub const LB_PLAIN: &str = "lb-plain";
    /// `lb`'s pipeline with a new source after each frame (program
    /// `lb_new_flow`).
    pub const LB_NEW_FLOW: &str = "lb-new-flow";
    /// `lb`'s pipeline behind the prologue that visits N flows in a
    /// scrambled order (program `lb_scrambled`, see [`scramble`]).
    pub const LB_SCRAMBLED: &str = "lb-scrambled";
    /// Its baseline: the same prologue, then the MAC swap (program
    /// `macswap_scrambled`).
    pub const MACSWAP_SCRAMBLED: &str = "macswap-scrambled";
    /// The frozen floor ([`floor`]): main's `lb` (program `lru`), its
    /// new-flow build (`lru_new_flow`) and its scrambled build
    /// (`lru_scrambled`).
    pub const LRU: &str = "lru";
    pub const LRU_NEW_FLOW: &str = "lru-new-flow";
    pub const LRU_SCRAMBLED: &str = "lru-scrambled";
    /// The wrapper of the `versus` section: the scrambled prologue, then a
    /// tail call into the program under test (program `versus`).
    pub const VERSUS: &str = "versus";

    pub fn read(name: &str) -> Result<Object> {
        let dir = std::env::var_os("LB_BENCH_EBPF_DIR")
            .context("LB_BENCH_EBPF_DIR is not set: `cargo xtask bench` builds the benchmark's eBPF programs and sets it")?;
        let path = std::path::Path::new(&dir).join(name);
        let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let mut buf = vec![0u8; data.len() + 7];
        let start = buf.as_ptr().align_offset(8);
        buf[start..start + data.len()].copy_from_slice(&data);
        Ok(Object {
            buf,
            start,
            len: data.len(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// The MAC-swap baseline, loaded (not attached): the figure every `lb`
/// figure is compared with. Keep the returned `Ebpf`; `macswap(&mut it)`
/// gives the program.
pub fn load_macswap() -> Result<aya::Ebpf> {
    let mut baseline = aya::Ebpf::load(Object::read(Object::MACSWAP)?.bytes())?;
    macswap(&mut baseline).load()?;
    Ok(baseline)
}

/// The loaded MAC-swap program of [`load_macswap`].
pub fn macswap(baseline: &mut aya::Ebpf) -> &mut Xdp {
    baseline
        .program_mut("macswap")
        .expect("the MAC-swap object has its program")
        .try_into()
        .expect("macswap is an XDP program")
}

/// The two designs every data-plane figure compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// `lb`: its own flow table (`lb_common::flow_table`).
    Lb,
    /// The floor: main's kernel LRU flow maps and flow cache ([`floor`]).
    Floor,
}

/// Which build of a design's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// As `lb run` runs it, behind the write that addresses a repeated
    /// frame to the load balancer again (`frame::to_lb`).
    Plain,
    /// A new source after every repetition (`new_flow.rs`).
    NewFlow,
    /// Behind the prologue that visits N flows in a scrambled order
    /// (`visit.rs`).
    Scrambled,
}

impl Design {
    pub const BOTH: [Design; 2] = [Design::Lb, Design::Floor];

    pub fn name(self) -> &'static str {
        match self {
            Design::Lb => "lb",
            Design::Floor => "floor",
        }
    }

    /// Loads `build` of this design with a flow table for `max_flows` and
    /// the policy `yaml`.
    pub fn load(self, build: Build, yaml: &str, max_flows: u32) -> Result<Subject> {
        Ok(match (self, build) {
            (Design::Lb, Build::Plain) => Subject::Lb(load(
                Object::read(Object::LB_PLAIN)?.bytes(),
                "lb_plain",
                yaml,
                max_flows,
            )?),
            (Design::Lb, Build::NewFlow) => Subject::Lb(load(
                Object::read(Object::LB_NEW_FLOW)?.bytes(),
                "lb_new_flow",
                yaml,
                max_flows,
            )?),
            (Design::Lb, Build::Scrambled) => Subject::Lb(load(
                Object::read(Object::LB_SCRAMBLED)?.bytes(),
                "lb_scrambled",
                yaml,
                max_flows,
            )?),
            (Design::Floor, build) => {
                let (object, program) = match build {
                    Build::Plain => (Object::LRU, "lru"),
                    Build::NewFlow => (Object::LRU_NEW_FLOW, "lru_new_flow"),
                    Build::Scrambled => (Object::LRU_SCRAMBLED, "lru_scrambled"),
                };
                let object = Object::read(object)?;
                Subject::Floor(floor::Floor::load(
                    object.bytes(),
                    program,
                    yaml,
                    max_flows,
                )?)
            }
        })
    }
}

/// A loaded data plane of either design.
pub enum Subject {
    Lb(Dataplane),
    Floor(floor::Floor),
}

impl Subject {
    pub fn design(&self) -> Design {
        match self {
            Subject::Lb(_) => Design::Lb,
            Subject::Floor(_) => Design::Floor,
        }
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        match self {
            Subject::Lb(dp) => dp.program_mut(),
            Subject::Floor(f) => f.program_mut(),
        }
    }

    /// A global counter; None if this design has no such counter (the
    /// floor has no `FlowEvicted`: its LRU maps evict silently).
    pub fn counter(&self, which: Counter) -> Result<Option<u64>> {
        match self {
            Subject::Lb(dp) => counter(dp, which).map(Some),
            Subject::Floor(f) => f.counter(which.name()),
        }
    }

    /// The new flows counted (both designs count them).
    pub fn new_flows(&self) -> Result<u64> {
        self.counter(Counter::NewFlow)?
            .context("no new_flow counter")
    }
}

/// Loads `program` of `object` with a flow table for `flow_table_size`
/// flows and applies `yaml` (every target's MAC known, no health checks).
pub fn load(
    object: &[u8],
    program: &'static str,
    yaml: &str,
    flow_table_size: u32,
) -> Result<Dataplane> {
    let policy = policy::parse("bench.yaml", yaml)?;
    let neighbors = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter())
        .map(|t| {
            let last = match t.ip {
                std::net::IpAddr::V4(v4) => decimal_as_hex(v4.octets()[3]),
                std::net::IpAddr::V6(v6) => v6.octets()[15],
            };
            (t.ip, target_mac(last))
        })
        .collect();
    let observed = Observed {
        iface_mac: LB_MAC,
        iface_nets: vec![],
        neighbors,
        health: Default::default(),
        ..Default::default()
    };
    let plan = policy::compile::compile(&policy, &observed)?;
    let mut dp = Dataplane::load_object(object, program, &LoadOptions { flow_table_size })?;
    dp.apply(&plan)?;
    Ok(dp)
}

/// One BPF_PROG_TEST_RUN of `frame` repeated `repeat` times: the verdict,
/// the kernel's mean time per repetition and the output frame.
pub fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration, out))
}

/// `e`'s message, followed by the errno of the system call under it when
/// one is in its chain of sources, by name and number (`` `bpf_prog_test_run`
/// failed: EPERM (1): Operation not permitted ``): aya's messages name only
/// the call.
pub fn errno_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(code) = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            let errno = nix::errno::Errno::from_raw(code);
            return format!("{e}: {errno:?} ({code}): {}", errno.desc());
        }
        source = s.source();
    }
    e.to_string()
}

/// A global counter of `dp`.
pub fn counter(dp: &Dataplane, which: Counter) -> Result<u64> {
    Ok(dp
        .counters()?
        .into_iter()
        .find(|(c, _)| *c == which)
        .map_or(0, |(_, v)| v))
}

/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_errno() {
        let refused = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_test_run",
            io_error: std::io::Error::from_raw_os_error(1),
        });
        assert_eq!(
            errno_text(&refused),
            "`bpf_prog_test_run` failed: EPERM (1): Operation not permitted"
        );
        let plain = std::io::Error::other("no errno");
        assert_eq!(errno_text(&plain), "no errno");
    }

    /// `lb_plain`, `lb_new_flow` and `lb_scrambled`, and the floor's three programs,
    /// are one BPF function each, as the golden tests check of `lb`
    /// (`the_data_plane_program_is_one_bpf_function`): a BPF-to-BPF call
    /// would cost each of their packets, and their figures would not be
    /// those of the design they stand for.
    #[test]
    fn the_benchmark_builds_are_one_bpf_function() {
        for (object, program) in [
            (Object::LB_PLAIN, "lb_plain"),
            (Object::LB_NEW_FLOW, "lb_new_flow"),
            (Object::LB_SCRAMBLED, "lb_scrambled"),
            (Object::LRU, "lru"),
            (Object::LRU_NEW_FLOW, "lru_new_flow"),
            (Object::LRU_SCRAMBLED, "lru_scrambled"),
        ] {
            let object = Object::read(object).unwrap();
            lb_tests::harness::assert_one_bpf_function(object.bytes(), program);
        }
    }
}
