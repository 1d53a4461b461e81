//! `cargo xtask run`: set-up, build, then either the namespace lab demo
//! (`lb-lab`: lab, lb, a burst, live counters and health states with one
//! target's service stopped for a while, until Ctrl-C) or, with both
//! `--iface` and `--config`, `lb run` on a real NIC in the foreground.
//! Either way this process is replaced by the one it starts (exec), so
//! Ctrl-C and the exit status are that process's own.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};
use clap::{Arg, ArgMatches, value_parser};

use crate::cmd;

pub struct RunArgs {
    iface: Option<String>,
    config: Option<PathBuf>,
    xdp_mode: String,
    tcp: usize,
    udp: usize,
    duration: Option<u64>,
    outage_s: u64,
}

/// `cargo xtask run`'s options.
pub fn command() -> clap::Command {
    clap::Command::new("run")
        .about(
            "Set up, build, and run lb in the namespace lab (or on a real NIC with \
             both --iface and --config)",
        )
        .args(where_args())
        .args(lab_args())
}

/// Where lb runs: a real NIC or the lab, with which policy and XDP mode.
fn where_args() -> [Arg; 3] {
    [
        opt(
            "iface",
            "IFACE",
            "Run on this real interface (with --config), not in the lab",
        ),
        opt(
            "config",
            "FILE",
            "The policy: with --iface, for the real NIC; alone, for the lab \
             (default examples/lab.yaml)",
        )
        .value_parser(value_parser!(PathBuf)),
        opt(
            "xdp-mode",
            "MODE",
            "XDP attach mode: native, generic or auto",
        )
        .default_value("native"),
    ]
}

/// The lab demo's burst and live view.
fn lab_args() -> [Arg; 4] {
    [
        opt(
            "tcp",
            "N",
            "Lab: TCP connections per TCP listener in the burst",
        )
        .value_parser(value_parser!(usize))
        .default_value("300"),
        opt("udp", "N", "Lab: UDP queries per UDP listener in the burst")
            .value_parser(value_parser!(usize))
            .default_value("300"),
        opt(
            "duration",
            "SECONDS",
            "Lab: stop after this many seconds of live counters instead of at Ctrl-C",
        )
        .value_parser(value_parser!(u64)),
        opt(
            "outage-s",
            "SECONDS",
            "Lab: seconds to stop one health-checked target's service for, at the \
             start of the live view (0: none)",
        )
        .value_parser(value_parser!(u64))
        .default_value("10"),
    ]
}

/// `--NAME VALUE`.
fn opt(name: &'static str, value: &'static str, help: &'static str) -> Arg {
    Arg::new(name).long(name).value_name(value).help(help)
}

impl From<&ArgMatches> for RunArgs {
    fn from(m: &ArgMatches) -> RunArgs {
        // Every option with a default has a value; the others may be absent.
        let count = |name| m.get_one::<usize>(name).copied().unwrap_or_default();
        RunArgs {
            iface: m.get_one::<String>("iface").cloned(),
            config: m.get_one::<PathBuf>("config").cloned(),
            xdp_mode: m.get_one::<String>("xdp-mode").cloned().unwrap_or_default(),
            tcp: count("tcp"),
            udp: count("udp"),
            duration: m.get_one::<u64>("duration").copied(),
            outage_s: m.get_one::<u64>("outage-s").copied().unwrap_or_default(),
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    // Check the arguments before spending time on set-up and build.
    let cmd = match (&args.iface, &args.config) {
        (Some(iface), Some(config)) => lb_on_nic(&args, iface, config),
        (Some(_), None) => {
            bail!("--iface needs --config: `cargo xtask run -- --iface IF --config FILE`")
        }
        (None, config) => {
            let config = config.clone().unwrap_or_else(|| "examples/lab.yaml".into());
            if !config.exists() {
                bail!("no policy at {}", config.display());
            }
            lab_demo(&args, &config)
        }
    };
    crate::setup::setup()?;
    cmd::build_bins()?;
    exec(cmd)
}

/// `lb run` on a real interface, in the foreground, then `lb detach`: the
/// pinned data plane `lb run` leaves when it stops (Ctrl-C) goes too, so a
/// try-out leaves nothing on the NIC. A shell runs both: its trap (a no-op,
/// not an ignore, which `lb` would inherit) keeps it alive through the
/// Ctrl-C that stops `lb`.
fn lb_on_nic(args: &RunArgs, iface: &str, config: &Path) -> Command {
    let [(_, lb), _] = cmd::bin_env();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"trap true INT TERM
"$0" run --config "$1" --iface "$2" --xdp-mode "$3"
status=$?
echo "xtask: lb stopped; removing its data plane from $2 (lb detach)" >&2
"$0" detach --iface "$2"
exit $status"#,
    ])
    .arg(lb)
    .arg(config)
    .args([iface, &args.xdp_mode]);
    cmd
}

/// `lb-lab`: the namespace lab with `lb` in it.
fn lab_demo(args: &RunArgs, config: &Path) -> Command {
    let [(_, lb), (_, server)] = cmd::bin_env();
    let mut cmd = Command::new(cmd::target_dir().join("debug").join("lb-lab"));
    cmd.arg("--config")
        .arg(config)
        .args(["--xdp-mode", &args.xdp_mode])
        .args([
            "--tcp",
            &args.tcp.to_string(),
            "--udp",
            &args.udp.to_string(),
        ])
        .arg("--lb-bin")
        .arg(lb)
        .arg("--server-bin")
        .arg(server)
        .args(["--outage-s", &args.outage_s.to_string()]);
    if let Some(d) = args.duration {
        cmd.args(["--duration", &d.to_string()]);
    }
    cmd
}

fn exec(mut cmd: Command) -> Result<()> {
    eprintln!("xtask: $ {}", cmd::show(&cmd));
    let err = cmd.exec();
    bail!("exec {}: {err}", cmd.get_program().to_string_lossy())
}
