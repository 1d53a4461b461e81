//! `--persist`: the set-up again at every boot. The ARP sysctls go to a
//! sysctl.d file (set early, by systemd-sysctl); the whole set-up (the
//! printed script: each command safe to run again) goes to a script that a
//! oneshot systemd unit runs before the network comes up, after the
//! firewall services that would otherwise flush its rules. The unit is
//! enabled as `systemctl enable` does it, by a symlink, so this works on an
//! image being built (`--root`).
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{ARP_ANNOUNCE, ARP_IGNORE, Setup, script};

pub const SYSCTL_FILE: &str = "etc/sysctl.d/90-lb-dsr-target.conf";
pub const SCRIPT_FILE: &str = "etc/lb/dsr-target-setup.sh";
pub const UNIT_NAME: &str = "lb-dsr-target.service";
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const WANTS_DIR: &str = "etc/systemd/system/multi-user.target.wants";

/// A file `persist` made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub path: PathBuf,
    /// False: it already held this.
    pub changed: bool,
}

/// The unit that runs the script at boot.
pub fn unit() -> String {
    format!(
        "[Unit]
Description=DSR target set-up for lb (VIPs on lo, ARP sysctls, UDP rules)
Documentation=man:lb-target-setup(1)
DefaultDependencies=no
After=local-fs.target systemd-sysctl.service nftables.service netfilter-persistent.service
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/{SCRIPT_FILE}

[Install]
WantedBy=multi-user.target
"
    )
}

fn sysctl_conf(invocation: &str) -> String {
    format!(
        "# DSR target: do not answer ARP for the VIPs on lo, nor name them in our own ARP requests.\n# Made by: {invocation}\n{} = {}\n{} = {}\n",
        ARP_IGNORE.0, ARP_IGNORE.1, ARP_ANNOUNCE.0, ARP_ANNOUNCE.1
    )
}

/// Writes the files under `root` (`/` on the target itself); each is only
/// written when it does not hold what it must.
pub fn persist(setup: &Setup, invocation: &str, root: &Path) -> anyhow::Result<Vec<Persisted>> {
    let mut done = Vec::new();
    if setup.vips.iter().any(std::net::IpAddr::is_ipv4) {
        done.push(write(root, SYSCTL_FILE, &sysctl_conf(invocation), 0o644)?);
    }
    done.push(write(root, SCRIPT_FILE, &script(setup, invocation), 0o755)?);
    let unit_file = format!("{UNIT_DIR}/{UNIT_NAME}");
    done.push(write(root, &unit_file, &unit(), 0o644)?);
    done.push(enable(root, &unit_file)?);
    Ok(done)
}

fn write(root: &Path, rel: &str, text: &str, mode: u32) -> anyhow::Result<Persisted> {
    let path = root.join(rel);
    let same = std::fs::read_to_string(&path).is_ok_and(|old| old == text)
        && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if !same {
        let dir = path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let mut tmp = path.clone();
        tmp.as_mut_os_string().push(".tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(Persisted {
        path,
        changed: !same,
    })
}

/// `systemctl enable`: the unit linked from multi-user.target.wants.
fn enable(root: &Path, unit_file: &str) -> anyhow::Result<Persisted> {
    let link = root.join(WANTS_DIR).join(UNIT_NAME);
    let to = Path::new("/").join(unit_file);
    let same = std::fs::read_link(&link).is_ok_and(|t| t == to);
    if !same {
        std::fs::create_dir_all(root.join(WANTS_DIR))
            .with_context(|| format!("cannot make {}", root.join(WANTS_DIR).display()))?;
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        std::os::unix::fs::symlink(&to, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), to.display()))?;
    }
    Ok(Persisted {
        path: link,
        changed: !same,
    })
}
