//! `cargo xtask bench [--quick]`: set up, build in release, and run the
//! benchmarks (`lb-bench`: ns/packet of `lb` beside a MAC-swap XDP_TX program,
//! measured in the same run with BPF_PROG_TEST_RUN). No benchmark runs inside
//! `cargo xtask test`.
use anyhow::Result;

use crate::cmd;

pub fn bench(quick: bool) -> Result<()> {
    crate::setup::setup()?;
    let mut build = cmd::cargo();
    build.env_remove("AYA_BUILD_SKIP").args([
        "build",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "lb-bench",
    ]);
    cmd::run(&mut build)?;
    let mut bench = std::process::Command::new(cmd::target_dir().join("release").join("lb-bench"));
    if quick {
        bench.arg("--quick");
    }
    cmd::run(&mut bench)
}
