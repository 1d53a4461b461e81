//! `cargo xtask bench [--quick] [-- LB-BENCH ARGS]`: set up; build `lb`,
//! `lb-lab-server`, the benchmark crate `lb-bench` and its eBPF programs;
//! run `lb-bench`'s unit tests, then `lb-bench`, which writes
//! `target/bench/report.md` and its SVG plots and prints the summary table
//! (docs/bench.md). `cargo xtask test` builds none of the benchmark.
//!
//! The full run builds in release. `--quick` builds in the dev profile,
//! the one of `cargo xtask test` (so after the tests only the benchmark
//! crate is left to build): the eBPF programs are optimized in every build,
//! so the data-plane figures hold; goals on the time or CPU of `lb`'s
//! userspace code are reported but not judged.
use anyhow::Result;

use crate::cmd;

pub fn bench(quick: bool, args: &[String]) -> Result<()> {
    crate::setup::setup()?;
    let (profile, release) = if quick {
        ("debug", None)
    } else {
        ("release", Some("--release"))
    };
    let mut build = cmd::cargo();
    build
        .env_remove("AYA_BUILD_SKIP")
        .args(["build", "-p", "lb-user", "--bin", "lb"])
        .args(["-p", "lb-tests", "--bin", "lb-lab-server"])
        .args(["-p", "lb-bench", "--bin", "lb-bench"])
        .args(release);
    cmd::build_overlapping_ebpf(&mut build)?;
    let objects = cmd::build_bench_ebpf()?;
    // The report's pure helpers and the structure of the benchmark's
    // programs, before anything is measured.
    let mut test = cmd::cargo();
    test.env("LB_BENCH_EBPF_DIR", &objects)
        .args(["test", "-p", "lb-bench"])
        .args(release);
    cmd::run(&mut test)?;
    let dir = cmd::target_dir().join(profile);
    let mut bench = std::process::Command::new(dir.join("lb-bench"));
    // The lab of the health benchmark runs these.
    bench
        .env("LB_BIN", dir.join("lb"))
        .env("LB_LAB_SERVER_BIN", dir.join("lb-lab-server"))
        .env("LB_BENCH_EBPF_DIR", &objects);
    if quick {
        bench.arg("--quick");
    }
    bench.args(args.iter().filter(|a| *a != "--"));
    cmd::run(&mut bench)
}
