//! `cargo xtask bench [--quick] [-- LB-BENCH ARGS]`: set up, build `lb`,
//! `lb-lab-server` and `lb-bench` in release, and run `lb-bench`, which
//! writes `target/bench/report.md` and its SVG plots and prints the summary
//! table (docs/bench.md). No benchmark runs inside `cargo xtask test`.
use anyhow::Result;

use crate::cmd;

pub fn bench(quick: bool, args: &[String]) -> Result<()> {
    crate::setup::setup()?;
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
    cmd::run(&mut build)?;
    let release = cmd::target_dir().join("release");
    let mut bench = std::process::Command::new(release.join("lb-bench"));
    // The lab of the health benchmark runs these.
    bench
        .env("LB_BIN", release.join("lb"))
        .env("LB_LAB_SERVER_BIN", release.join("lb-lab-server"));
    if quick {
        bench.arg("--quick");
    }
    bench.args(args.iter().filter(|a| *a != "--"));
    cmd::run(&mut bench)
}
