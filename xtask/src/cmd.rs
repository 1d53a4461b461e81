//! Running commands: each one is printed before it runs, and a failure names
//! the command.
use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// `cargo`, as the one that runs us (`$CARGO`), else from PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd.status().with_context(|| format!("spawn {shown}"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout, or None if it cannot start or
/// fails (for probes such as `bpf-linker --version`).
pub fn probe(program: impl AsRef<OsStr>, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, default `<root>/target`).
pub fn target_dir() -> PathBuf {
    let root = crate::root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t))
}

/// The binaries the lab and the tests use, built in the dev profile.
pub fn build_bins() -> Result<()> {
    let mut cmd = cargo();
    // The real eBPF objects are needed here, whatever the caller's shell says.
    cmd.env_remove("AYA_BUILD_SKIP")
        .args(["build", "-p", "lb-user", "-p", "lb-tests", "--bins"]);
    run(&mut cmd)
}

/// Paths of the built `lb` and `lb-lab-server`, as env vars for the tests.
pub fn bin_env() -> [(&'static str, PathBuf); 2] {
    let debug = target_dir().join("debug");
    [
        ("LB_BIN", debug.join("lb")),
        ("LB_LAB_SERVER_BIN", debug.join("lb-lab-server")),
    ]
}
