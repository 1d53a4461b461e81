//! `cargo xtask setup`: checks every prerequisite and installs what is
//! missing. Idempotent, and quick when everything is there (a few probes, no
//! network). A fresh machine has none of it; see shared/TOOLCHAIN.md.
use std::{fs, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, probe};

/// Debian packages: LLVM 22 for bpf-linker, the lab's tools, what the
/// tests check the service file and man pages with (`systemd-analyze`,
/// `man`), the firewall tools `lb target-setup` drives (`iptables`,
/// `nft`), what the metrics tests and benchmark scrape with (`curl`), the
/// BGP daemon the announce test runs (`bird2`), and `sysctl` (`procps`),
/// which the target set-up tests read and write.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "tcpdump",
    "systemd",
    "man-db",
    "iptables",
    "nftables",
    "curl",
    "bird2",
    "procps",
];

/// How long each apt step waits for a lock another apt holds (say,
/// unattended-upgrades at boot) before it fails.
const APT_LOCK_TIMEOUT_S: u32 = 300;

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn setup() -> Result<()> {
    ensure_root()?;
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    eprintln!("setup: done");
    Ok(())
}

fn ensure_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    if euid != "0" {
        bail!(
            "xtask needs root (apt-get, network namespaces, XDP, bpffs); effective uid is {euid}: \
             run it as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

/// Packages of `wanted` that dpkg does not have installed.
fn missing_packages(wanted: &[&str]) -> Vec<String> {
    // Exit status 1 when some package is unknown; the output still lists the
    // known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
        .args(wanted)
        .stderr(std::process::Stdio::null())
        .output();
    let installed: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    let (name, status) = l.split_once(' ')?;
                    status.starts_with("ii").then(|| name.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    wanted
        .iter()
        .filter(|p| !installed.iter().any(|i| i == *p))
        .map(|p| p.to_string())
        .collect()
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages(APT_PACKAGES);
    if missing.is_empty() {
        eprintln!("setup: apt packages present ({})", APT_PACKAGES.join(" "));
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", missing.join(" "));
    cmd::run(apt_get().args(["update", "-q"]))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

/// `apt-get`, non-interactive, waiting for the locks of another apt.
fn apt_get() -> Command {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive")
        .arg("-o")
        .arg(format!("DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"));
    apt
}

fn rust_src() -> Result<()> {
    // The `nightly` channel itself (a dated nightly is not it).
    let nightly = probe("rustup", &["run", "nightly", "rustc", "-V"]).is_some();
    if !nightly {
        // The eBPF build needs a nightly (`-Z build-std`).
        eprintln!(
            "setup: installing the nightly toolchain with rust-src (the eBPF build needs it)"
        );
        return cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let installed = probe(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|out| out.lines().any(|l| l.trim().starts_with("rust-src")));
    if installed {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain (the eBPF build needs it)");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    let version = probe("bpf-linker", &["--version"]).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        eprintln!("setup: {} present", version.trim());
        return Ok(());
    }
    if version.is_empty() {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    } else {
        eprintln!(
            "setup: found {}, installing bpf-linker {BPF_LINKER_VERSION}",
            version.trim()
        );
    }
    // llvm-sys links against the LLVM found first on PATH (llvm-config).
    let path = std::env::var("PATH").unwrap_or_default();
    let mut install = cmd::cargo();
    install
        .env("PATH", format!("{LLVM_BIN}:{path}"))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]);
    cmd::run(&mut install)?;
    let version = probe("bpf-linker", &["--version"]).unwrap_or_default();
    if !version.contains(BPF_LINKER_VERSION) {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed but `bpf-linker --version` says {version:?}: \
             is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    });
    if mounted {
        eprintln!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").ok();
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs a Debian machine (dpkg), as the project's machines are.
    #[test]
    fn finds_missing_packages() {
        assert_eq!(
            missing_packages(&["dpkg", "lb-no-such-package"]),
            vec!["lb-no-such-package".to_owned()]
        );
    }
}
