//! `cargo xtask run`: set-up, build, then either the namespace lab demo
//! (`lb-lab`: lab, lb, a burst, live counters and health states with one
//! target's service stopped for a while, until Ctrl-C) or, with both
//! `--iface` and `--config`, `lb run` on a real NIC in the foreground.
//! The lab demo replaces this process (exec), so Ctrl-C and the exit status
//! are its own; `lb run` is a child, followed by `lb detach` when it stops
//! cleanly.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use clap::{Arg, ArgMatches, value_parser};
use nix::{sys::signal, unistd::Pid};

use crate::cmd;

pub struct RunArgs {
    iface: Option<String>,
    config: Option<PathBuf>,
    xdp_mode: Option<String>,
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
            "XDP attach mode: native, generic or auto (default: native in the lab, \
             auto on a NIC, as `lb run`)",
        ),
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
            xdp_mode: m.get_one::<String>("xdp-mode").cloned(),
            tcp: count("tcp"),
            udp: count("udp"),
            duration: m.get_one::<u64>("duration").copied(),
            outage_s: m.get_one::<u64>("outage-s").copied().unwrap_or_default(),
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    // Check the arguments before spending time on set-up and build.
    match (&args.iface, &args.config) {
        (Some(_), Some(_)) => {}
        (Some(_), None) => {
            bail!("--iface needs --config: `cargo xtask run -- --iface IF --config FILE`")
        }
        (None, config) => {
            if let Some(config) = config
                && !config.exists()
            {
                bail!("no policy at {}", config.display());
            }
        }
    }
    crate::setup::setup()?;
    cmd::build_bins()?;
    match (&args.iface, &args.config) {
        (Some(iface), Some(config)) => lb_on_nic(&args, iface, config),
        (_, config) => {
            let config = config.clone().unwrap_or_else(|| "examples/lab.yaml".into());
            exec(lab_demo(&args, &config))
        }
    }
}

/// The `lb run` child, for the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal came: `lb run` is to stop.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// SIGTERM to `pid`, if it is one.
fn stop(pid: i32) {
    if pid > 0 {
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
    }
}

/// `lb run` on a real interface, in the foreground, then `lb detach`: the
/// pinned data plane `lb run` leaves when it stops (Ctrl-C, SIGTERM) goes
/// too, so a try-out leaves nothing on the NIC. Only after a clean stop
/// (exit 0): an `lb run` that stopped at start (a bad policy, another `lb`
/// on the interface) changed nothing, and a data plane pinned before it
/// (one a stopped `lb.service` left forwarding) must stay. The signals
/// that stop this process are passed on to `lb` as SIGTERM (Ctrl-C at a
/// terminal reaches both).
fn lb_on_nic(args: &RunArgs, iface: &str, config: &Path) -> Result<()> {
    let [(_, lb), _] = cmd::bin_env();
    let mode = args.xdp_mode.as_deref().unwrap_or("auto");
    let mut run = Command::new(&lb);
    run.arg("run")
        .arg("--config")
        .arg(config)
        .args(["--iface", iface, "--xdp-mode", mode]);
    // Installed first, so that no signal finds xtask with its default
    // action while lb runs; one that comes before lb is known is passed on
    // once it is.
    ctrlc::set_handler(|| {
        STOPPING.store(true, Ordering::SeqCst);
        stop(CHILD.load(Ordering::SeqCst));
    })
    .context("install the signal handler")?;
    eprintln!("xtask: $ {}", cmd::show(&run));
    let mut child = run.spawn().context("spawn lb run")?;
    let pid = i32::try_from(child.id())?;
    CHILD.store(pid, Ordering::SeqCst);
    if STOPPING.load(Ordering::SeqCst) {
        stop(pid);
    }
    let status = child.wait().context("wait for lb run")?;
    CHILD.store(0, Ordering::SeqCst);
    if !status.success() {
        eprintln!(
            "xtask: lb run failed ({status}); whatever it found on {iface} is left as it was \
             (`lb detach --iface {iface}` removes a data plane of lb)"
        );
        std::process::exit(exit_code(status));
    }
    eprintln!("xtask: lb stopped; removing its data plane from {iface} (lb detach)");
    cmd::run(Command::new(&lb).args(["detach", "--iface", iface]))
}

/// The exit code a shell would show for `status`.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// `lb-lab`: the namespace lab with `lb` in it.
fn lab_demo(args: &RunArgs, config: &Path) -> Command {
    let [(_, lb), (_, server)] = cmd::bin_env();
    let mut cmd = Command::new(cmd::target_dir().join("debug").join("lb-lab"));
    cmd.arg("--config")
        .arg(config)
        .args(["--xdp-mode", args.xdp_mode.as_deref().unwrap_or("native")])
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
