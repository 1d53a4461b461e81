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
use clap::{Arg, ArgAction, ArgMatches, Command};

// The command line is declared with clap's builder API, not its derive
// macros: `cargo xtask` is the first thing a clean clone compiles, and the
// derive macros need `syn` (compiled with other features than the
// workspace's, so twice) before anything else, the eBPF build included, can
// start.

/// Arguments passed through after the options (`--` optional).
fn passthrough(help: &'static str) -> Arg {
    Arg::new("args")
        .help(help)
        .num_args(0..)
        .trailing_var_arg(true)
        .allow_hyphen_values(true)
}

fn cli() -> Command {
    Command::new("xtask")
        .about("Tasks of the lb workspace")
        .subcommand_required(true)
        .subcommand(
            Command::new("setup")
                .about("Check and install prerequisites: apt packages, rust-src, bpf-linker, bpffs"),
        )
        .subcommand(run::command())
        .subcommand(
            Command::new("test")
                .about("Set up, build, and run every test (unit, golden packets, namespace lab)")
                .arg(passthrough(
                    "Passed to `cargo test` after `--` (a test name filter, --nocapture...)",
                )),
        )
        .subcommand(
            Command::new("bench")
                .about(
                    "The performance report: data plane, control plane, health checks \
                     (target/bench/report.md, SVG plots, summary table; docs/bench.md)",
                )
                .arg(
                    Arg::new("quick")
                        .long("quick")
                        .action(ArgAction::SetTrue)
                        .help("Fewer repetitions and shorter windows, on the dev build"),
                )
                .arg(passthrough(
                    "Passed to lb-bench (--section NAME, --only TEXT, --repeat N, --runs N, --out DIR)",
                )),
        )
}

/// The pass-through arguments of a subcommand.
fn rest(m: &ArgMatches) -> Vec<String> {
    m.get_many::<String>("args")
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
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
    let matches = cli().get_matches_from(argv);
    std::env::set_current_dir(root())?;
    match matches.subcommand() {
        Some(("run", m)) => run::run(run::RunArgs::from(m)),
        Some(("test", m)) => test::test(&rest(m)),
        Some(("bench", m)) => bench::bench(m.get_flag("quick"), &rest(m)),
        // `setup`, the only other subcommand (clap requires one).
        _ => setup::setup(),
    }
}
