//! Running code and commands inside a named network namespace
//! (`/run/netns/NAME`, as `ip netns add` creates them).
//!
//! In-process: a fresh thread `setns`'s into the namespace and runs a closure,
//! so sockets it opens live there. Commands: `nsenter --net=...`, never
//! `ip netns exec`, which remounts /sys and so hides /sys/fs/bpf.
use std::{
    fs::File,
    io,
    path::PathBuf,
    process::Command,
    thread::{self, JoinHandle},
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps the namespace called `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// `nsenter --net=/run/netns/NAME PROGRAM`: add arguments and spawn.
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", path(name).display()))
        .arg(program);
    cmd
}

fn enter(file: &File) -> io::Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
/// A panic in `f` is resumed on the calling thread, so assertions inside work
/// as usual.
pub fn run<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(path(name))
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {name}: {e}")))?;
    thread::scope(|s| {
        let handle = s.spawn(move || {
            enter(&file)?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Like [`run`], but does not wait: `f` runs on a detached thread inside the
/// namespace. The thread's `io::Result` says whether it got in.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<io::Result<T>>> {
    let file = File::open(path(name))
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {name}: {e}")))?;
    Ok(thread::spawn(move || {
        enter(&file)?;
        Ok(f())
    }))
}
