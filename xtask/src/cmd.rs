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
    build_overlapping_ebpf(&mut cmd)
}

/// Runs the host build `cmd` (which builds `lb-user`) while the eBPF build
/// runs beside it from the start.
///
/// `lb-user`'s build script builds the eBPF objects (aya-build), but cargo
/// runs it only once its build dependencies are compiled, and then it runs
/// alone on one core (it compiles `core` for the BPF target) while the
/// others idle. Started here, with the very command aya-build 0.2 runs in
/// the directory the build script uses (`target/ebpf`, see
/// `lb-user/build.rs`), it overlaps the host dependencies; the build script
/// then finds it up to date (cargo locks the directory, so the two never
/// build at once). If the commands ever differ, the build script simply
/// builds again: slower, never wrong.
pub fn build_overlapping_ebpf(cmd: &mut Command) -> Result<()> {
    let ebpf = ebpf_build("lb-ebpf")
        .arg("--message-format=json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    let result = run(cmd);
    if let Some(mut child) = ebpf {
        let _ = child.wait();
    }
    result
}

/// Builds the benchmark's eBPF programs (`tests/bench/ebpf`) in the target
/// directory of `lb-ebpf`'s build, where `core` and the dependencies they
/// share with `lb` are built already; returns the directory of the
/// objects, which `lb-bench` reads at run time (`LB_BENCH_EBPF_DIR`).
pub fn build_bench_ebpf() -> Result<PathBuf> {
    run(&mut ebpf_build("lb-bench-ebpf"))?;
    Ok(ebpf_target_dir().join("bpfel-unknown-none/release"))
}

/// aya-build 0.2's eBPF build (`aya_build::build_ebpf`) of `package`, in
/// the shared target directory of `lb-user/build.rs` (the one aya-build
/// uses there for `lb-ebpf`; `--message-format=json` aside).
fn ebpf_build(package: &str) -> Command {
    let arch = std::env::consts::ARCH;
    let mut cmd = Command::new("rustup");
    // The build script runs it with cargo's HOST, which the build scripts
    // of aya-ebpf and its dependencies declare as an input
    // (`rerun-if-env-changed=HOST`): without the same value here, the build
    // script would find them stale and compile them again.
    if let Some(host) = host_triple() {
        cmd.env("HOST", host);
    }
    cmd.current_dir(crate::root().join("lb-user"))
        .args(["run", "nightly", "cargo", "build", "--package", package])
        .args(["--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--features", ""])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .arg("--target-dir")
        .arg(ebpf_target_dir());
    cmd
}

/// aya-build's target directory for `lb-ebpf` under the shared `OUT_DIR`
/// of `lb-user/build.rs` (`target/ebpf`).
fn ebpf_target_dir() -> PathBuf {
    target_dir().join("ebpf/aya-build/target/lb-ebpf")
}

/// The host triple of the stable toolchain (`rustc -vV`), which cargo
/// gives build scripts as HOST.
fn host_triple() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = probe(rustc, &["-vV"])?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
}

/// Paths of the built `lb` and `lb-lab-server`, as env vars for the tests.
pub fn bin_env() -> [(&'static str, PathBuf); 2] {
    let debug = target_dir().join("debug");
    [
        ("LB_BIN", debug.join("lb")),
        ("LB_LAB_SERVER_BIN", debug.join("lb-lab-server")),
    ]
}
