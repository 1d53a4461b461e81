//! `cargo xtask bench [--quick] [-- LB-BENCH ARGS]`: set up, build `lb`,
//! `lb-lab-server` and `lb-bench`, and run `lb-bench`, which writes
//! `target/bench/report.md` and its SVG plots and prints the summary table
//! (docs/bench.md). No benchmark runs inside `cargo xtask test`.
//!
//! The full run builds in release. `--quick` runs the dev build, the very
//! one `cargo xtask test` makes (so after the tests it builds nothing, and
//! from a clean clone it builds what the tests would): the eBPF programs are
//! optimized in every build, so the data-plane figures hold; goals on the
//! time or CPU of `lb`'s userspace code are reported but not judged.
use anyhow::Result;

use crate::cmd;

pub fn bench(quick: bool, args: &[String]) -> Result<()> {
    crate::setup::setup()?;
    let profile = if quick {
        cmd::build_bins()?;
        "debug"
    } else {
        let mut build = cmd::cargo();
        build.env_remove("AYA_BUILD_SKIP").args([
            "build",
            "--release",
            "-p",
            "lb-user",
            "--bin",
            "lb",
            "-p",
            "lb-tests",
            "--bin",
            "lb-bench",
            "--bin",
            "lb-lab-server",
        ]);
        cmd::build_overlapping_ebpf(&mut build)?;
        "release"
    };
    let dir = cmd::target_dir().join(profile);
    let mut bench = std::process::Command::new(dir.join("lb-bench"));
    // The lab of the health benchmark runs these.
    bench
        .env("LB_BIN", dir.join("lb"))
        .env("LB_LAB_SERVER_BIN", dir.join("lb-lab-server"));
    if quick {
        bench.arg("--quick");
    }
    bench.args(args.iter().filter(|a| *a != "--"));
    cmd::run(&mut bench)
}
