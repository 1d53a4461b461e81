//! `cargo xtask`: set-up, build, lab demo, tests. Needs root (namespaces, XDP,
//! apt). Kept free of the workspace's own crates so that it builds before the
//! eBPF toolchain is installed: `cargo xtask setup` installs it.
mod bench;
mod cmd;
mod run;
mod setup;
mod test;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tasks of the lb workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install prerequisites: apt packages, rust-src, bpf-linker, bpffs.
    Setup,
    /// Set up, build, and run lb in the namespace lab (or on a real NIC with
    /// both --iface and --config).
    Run(run::RunArgs),
    /// Set up, build, and run every test (unit, golden packets, namespace lab).
    Test {
        /// Passed to `cargo test` after `--` (a test name filter, --nocapture...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The performance report: data plane, control plane, health checks
    /// (target/bench/report.md, SVG plots, summary table; docs/bench.md).
    Bench {
        /// Fewer repetitions and shorter windows (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Passed to lb-bench (--section NAME, --only TEXT, --repeat N,
        /// --runs N, --out DIR).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

fn main() -> Result<()> {
    // `cargo xtask run -- --iface X` arrives as `run -- --iface X`: drop that
    // separator so the options reach the subcommand.
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(2).is_some_and(|a| a == "--") && argv.get(1).is_some_and(|a| a == "run") {
        argv.remove(2);
    }
    let cli = Cli::parse_from(argv);
    std::env::set_current_dir(root())?;
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Run(args) => run::run(args),
        Task::Test { args } => test::test(&args),
        Task::Bench { quick, args } => bench::bench(quick, &args),
    }
}
