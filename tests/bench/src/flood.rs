//! SYN flood against established flows (BPF_PROG_TEST_RUN on the real `lb`
//! program): establish K flows and record each one's target (the output
//! frame's destination MAC); send M SYNs from random sources (M larger than
//! the flow table, so the LRU evicts); replay one non-SYN packet of each of
//! the K flows and count how many still hit their entry, how many were
//! evicted (a new flow again) and how many reached another target.
//!
//! For hash groups an evicted flow is re-hashed to the same target while the
//! table is unchanged, so moves stay 0 even when evictions do not.
use anyhow::{Result, ensure};
use lb_common::Counter;
use lb_tests::packets::{Frame, tcp_flags::*};

use crate::{
    ALGORITHMS, POLICY, Settings, XDP_TX, counter, load,
    report::{Figure, Section},
    stats::Rng,
    test_run,
};

pub struct Outcome {
    pub algorithm: &'static str,
    pub flows: usize,
    pub syns: usize,
    pub table: u32,
    pub kept: u64,
    pub evicted: u64,
    pub moved: usize,
}

fn client(i: usize) -> String {
    format!("10.1.{}.{}", (i >> 8) & 0xff, i & 0xff)
}

fn dst_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&frame[..6]);
    m
}

pub fn run(settings: &Settings, algorithm: &'static str, port: u16) -> Result<Outcome> {
    let (table, flows) = if settings.quick {
        (16_384u32, 2_000usize)
    } else {
        (65_536, 10_000)
    };
    let syns = 4 * table as usize;
    let mut dp = load(lb_user::EBPF_LB, "lb", POLICY, table)?;
    let frame = |i: usize, flags| {
        Frame::tcp(
            &client(i),
            10_000 + (i % 50_000) as u16,
            "10.0.3.49",
            port,
            flags,
        )
        .build()
    };
    let mut targets = Vec::with_capacity(flows);
    for i in 0..flows {
        let (verdict, _, out) = test_run(dp.program_mut(), &frame(i, SYN), 1)?;
        ensure!(verdict == XDP_TX, "flow {i}: verdict {verdict}");
        targets.push(dst_mac(&out));
    }
    let mut rng = Rng::new(0x5eed);
    for _ in 0..syns {
        let src = std::net::Ipv4Addr::from(0x0b00_0000 | (rng.next_u32() & 0x00ff_ffff));
        let sport = (rng.next_u32() % 60_000) as u16 + 1024;
        let syn = Frame::tcp(&src.to_string(), sport, "10.0.3.49", port, SYN).build();
        test_run(dp.program_mut(), &syn, 1)?;
    }
    let (hit0, new0) = (
        counter(&dp, Counter::FlowHit)?,
        counter(&dp, Counter::NewFlow)?,
    );
    let mut moved = 0;
    for (i, before) in targets.iter().enumerate() {
        let (verdict, _, out) = test_run(dp.program_mut(), &frame(i, ACK), 1)?;
        ensure!(verdict == XDP_TX, "replay {i}: verdict {verdict}");
        if dst_mac(&out) != *before {
            moved += 1;
        }
    }
    Ok(Outcome {
        algorithm,
        flows,
        syns,
        table,
        kept: counter(&dp, Counter::FlowHit)? - hit0,
        evicted: counter(&dp, Counter::NewFlow)? - new0,
        moved,
    })
}

pub fn section(settings: &Settings) -> Result<Section> {
    let mut s = Section::new("Data plane: SYN flood against established flows");
    s.line("K established TCP flows, then M SYNs from random sources (11.0.0.0/8, random ports) through the same program and maps, then one ACK of each established flow. The established flows' packets are SYNs, which take no flow-cache slot, so the ACKs measure the flow table itself. kept = flow-table hits; evicted = the flow was a new flow again (its entry was pushed out of the LRU flow table); moved = the ACK went to another target than the flow's first packet.");
    let mut rows = Vec::new();
    for &(algorithm, port) in ALGORITHMS {
        let o = run(settings, algorithm, port)?;
        let name = format!(
            "SYN flood ({} SYNs, table {}): established flows moved, {}",
            o.syns, o.table, o.algorithm
        );
        let value = format!("{} of {} ({} evicted)", o.moved, o.flows, o.evicted);
        // A miss goes to the consistent-hash target: where hash and
        // source_ip flows live, but not where round robin or least
        // connections put them (README "Flow lifecycle"), so only the first
        // two can promise no moves.
        s.figures
            .push(if matches!(algorithm, "hash" | "source_ip") {
                Figure::goal(name, value, "0 moved", o.moved == 0)
            } else {
                Figure::info(name, value)
            });
        rows.push(vec![
            o.algorithm.into(),
            o.table.to_string(),
            o.flows.to_string(),
            o.syns.to_string(),
            o.kept.to_string(),
            o.evicted.to_string(),
            o.moved.to_string(),
        ]);
    }
    s.table(
        &[
            "algorithm",
            "flow table",
            "K flows",
            "M SYNs",
            "kept",
            "evicted",
            "moved",
        ],
        &rows,
    );
    Ok(s)
}
