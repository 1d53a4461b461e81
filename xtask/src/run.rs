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

use crate::cmd;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Run on this real interface (with --config), not in the lab.
    #[arg(long)]
    iface: Option<String>,
    /// The policy: with --iface, for the real NIC; alone, for the lab
    /// (default examples/lab.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// XDP attach mode: native, generic or auto.
    #[arg(long, default_value = "native")]
    xdp_mode: String,
    /// Lab: TCP connections per TCP listener in the burst.
    #[arg(long, default_value_t = 300)]
    tcp: usize,
    /// Lab: UDP queries per UDP listener in the burst.
    #[arg(long, default_value_t = 300)]
    udp: usize,
    /// Lab: stop after this many seconds of live counters instead of at Ctrl-C.
    #[arg(long)]
    duration: Option<u64>,
    /// Lab: seconds to stop one health-checked target's service for, at the
    /// start of the live view (0: none).
    #[arg(long, default_value_t = 10)]
    outage_s: u64,
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

/// `lb run` on a real interface, in the foreground.
fn lb_on_nic(args: &RunArgs, iface: &str, config: &Path) -> Command {
    let [(_, lb), _] = cmd::bin_env();
    let mut cmd = Command::new(lb);
    cmd.arg("run").arg("--config").arg(config).args([
        "--iface",
        iface,
        "--xdp-mode",
        &args.xdp_mode,
    ]);
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
