//! A data plane that outlives `lb`: the program's maps and its XDP link are
//! pinned on bpffs, one directory per interface, so that `kill -9`, a panic,
//! an OOM kill or an upgrade leave packets forwarded with the last state, and
//! the next `lb run` adopts them (README "Restarts and upgrades").
//!
//! ```text
//! /sys/fs/bpf/lb/IFACE/          IFACE in the first network namespace;
//! /sys/fs/bpf/lb/NETNS/IFACE/    in a named one (`ip netns`), NETNS its name
//!     link                       the XDP link (interface -> program)
//!     CONFIG, FLOWS_V4, ...      every map of the program, by name
//! /var/lib/lb/IFACE/             the runtime state (`crate::state`) and the
//!     state.json, lock           lock a running `lb` holds
//! ```
//!
//! A pinned data plane is adopted only when every map it pins has the kind,
//! key, value and flags of this build's maps (sizes too, but for the flow
//! table, which keeps the size it was made with) and
//! its `Config::layout` is this build's [`lb_common::LAYOUT_VERSION`]. A map
//! this build added to that layout ([`names::ADDED`]) may be missing: the
//! loader creates and pins it.
use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use lb_common::map_names as names;

/// Where the pinned objects of every data plane live (bpffs).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/lb";
/// Where the runtime state of every data plane lives.
pub const STATE_ROOT: &str = "/var/lib/lb";
/// The XDP link's pin, in a data plane's directory.
pub const LINK: &str = "link";

/// Maps whose size the loader chooses (from the policy): an adopted data
/// plane keeps the size it was made with.
const SIZED_BY_LOADER: [&str; 1] = [names::FLOW_TABLE];

/// One data plane's names: its interface and network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub iface: String,
    /// The network namespace's name when it is not the first one (its
    /// `ip netns` name, else `netns-INODE`).
    pub netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "the pinned data plane in {dir} was made by a build with another map layout ({detail}); \
         either run the build that made it, or run `lb detach --iface {iface}` and start again \
         (existing connections through {iface} are then reset)"
    )]
    Layout {
        dir: String,
        iface: String,
        detail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "another lb runs on {iface} (it holds {lock}); stop it first (SIGTERM leaves its data plane forwarding)"
    )]
    Busy { iface: String, lock: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PinError {
    let context = context.into();
    move |source| PinError::Io { context, source }
}

impl Instance {
    /// The data plane on `iface` in the caller's network namespace.
    pub fn of_interface(iface: &str) -> Instance {
        Instance {
            iface: iface.to_string(),
            netns: netns_name(),
        }
    }

    /// `IFACE`, or `NETNS/IFACE` outside the first network namespace.
    pub fn relative(&self) -> PathBuf {
        match &self.netns {
            Some(ns) => Path::new(ns).join(&self.iface),
            None => PathBuf::from(&self.iface),
        }
    }

    /// The directory of its pinned objects.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS_ROOT).join(self.relative())
    }

    /// The directory of its runtime state.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(self.relative())
    }

    /// Whether a data plane is pinned for it (its link is).
    pub fn is_pinned(&self) -> bool {
        self.pin_dir().join(LINK).exists()
    }

    /// Takes the instance's lock (held until the returned file is closed, or
    /// the process ends, however it ends): one `lb` per interface, and no
    /// detach under a running one.
    pub fn lock(&self) -> Result<fs::File, PinError> {
        let dir = self.state_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        if !try_lock(&file).map_err(io_err(format!("lock {}", path.display())))? {
            return Err(PinError::Busy {
                iface: self.iface.clone(),
                lock: path.display().to_string(),
            });
        }
        Ok(file)
    }
}

/// An exclusive advisory lock on `file`, without waiting: false if another
/// process holds it.
#[allow(unsafe_code)]
fn try_lock(file: &fs::File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows for the call.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The name of the caller's network namespace, None for the first one
/// (that of process 1).
fn netns_name() -> Option<String> {
    let ours = fs::metadata("/proc/thread-self/ns/net").ok()?;
    let first = fs::metadata("/proc/1/ns/net").ok();
    if first.is_some_and(|f| f.ino() == ours.ino() && f.dev() == ours.dev()) {
        return None;
    }
    let named = fs::read_dir("/run/netns").ok().and_then(|entries| {
        entries.flatten().find_map(|e| {
            let m = fs::metadata(e.path()).ok()?;
            (m.ino() == ours.ino() && m.dev() == ours.dev())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
    });
    Some(named.unwrap_or_else(|| format!("netns-{}", ours.ino())))
}

/// Checks that the maps pinned in `dir` are the maps of `object` (kind, key,
/// value, flags; sizes but for the maps the loader sizes): an `Err` names
/// the first difference.
pub fn check_maps(object: &[u8], dir: &Path, iface: &str) -> Result<(), PinError> {
    let layout = |detail: String| PinError::Layout {
        dir: dir.display().to_string(),
        iface: iface.to_string(),
        detail,
    };
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| layout(format!("this build's object does not parse: {e}")))?;
    let mut names: Vec<&String> = obj.maps.keys().filter(|n| !n.starts_with('.')).collect();
    names.sort();
    for name in names {
        let want = &obj.maps[name];
        let path = dir.join(name);
        if names::ADDED.contains(&name.as_str()) && !path.exists() {
            continue;
        }
        let have = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| layout(format!("map {name} is not pinned ({e})")))?;
        let fields = [
            ("kind", want.map_type(), have_type(&have)),
            ("key size", want.key_size(), have.key_size()),
            ("value size", want.value_size(), have.value_size()),
            ("flags", want.map_flags(), have.map_flags()),
        ];
        for (what, want, have) in fields {
            if want != have {
                return Err(layout(format!(
                    "map {name}: {what} {have}, this build's {want}"
                )));
            }
        }
        if !SIZED_BY_LOADER.contains(&name.as_str()) && want.max_entries() != have.max_entries() {
            return Err(layout(format!(
                "map {name}: {} entries, this build's {}",
                have.max_entries(),
                want.max_entries()
            )));
        }
    }
    Ok(())
}

fn have_type(info: &aya::maps::MapInfo) -> u32 {
    // MapInfo hides the raw kind behind an enum; its id is what the kernel
    // says.
    info.map_type().map(|t| t as u32).unwrap_or(u32::MAX)
}

/// Whether `dir` holds anything.
pub fn has_pins(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Removes every pin in `dir` and the directory (and its parent, the
/// namespace's directory, if that is left empty). The objects go with their
/// last reference.
pub fn remove_pins(dir: &Path) -> Result<usize, PinError> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        let path = entry.path();
        fs::remove_file(&path).map_err(io_err(format!("unpin {}", path.display())))?;
        removed += 1;
    }
    fs::remove_dir(dir).map_err(io_err(format!("remove {}", dir.display())))?;
    if let Some(parent) = dir.parent()
        && parent != Path::new(BPFFS_ROOT)
        && parent.starts_with(BPFFS_ROOT)
    {
        let _ = fs::remove_dir(parent);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_name_the_interface_and_its_namespace() {
        let first = Instance {
            iface: "eth0".into(),
            netns: None,
        };
        assert_eq!(first.pin_dir(), Path::new("/sys/fs/bpf/lb/eth0"));
        assert_eq!(first.state_dir(), Path::new("/var/lib/lb/eth0"));
        let named = Instance {
            iface: "eth0".into(),
            netns: Some("blue".into()),
        };
        assert_eq!(named.pin_dir(), Path::new("/sys/fs/bpf/lb/blue/eth0"));
        assert_eq!(named.state_dir(), Path::new("/var/lib/lb/blue/eth0"));
    }
}
