//! A running `lb run` in the load balancer's namespace.
//!
//! It is started with `nsenter --net=/run/netns/NS` (not `ip netns exec`,
//! which hides /sys/fs/bpf), its stderr is drained into a log kept for error
//! messages. `lb run` leaves its data plane pinned and forwarding when it
//! stops; dropped, an `LbProcess` stops it (SIGTERM, then SIGKILL) and
//! removes that data plane (`lb detach`), so a test leaves nothing behind.
//! [`LbProcess::stop`] and [`LbProcess::kill`] leave it, for the next `lb`
//! to adopt.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, MapError};
use lb_user::dataplane::{sweep::ActiveCounts, table::FlowTable};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    lab::LabError,
    netns,
    status::{self, Status, Waited},
};

/// The line `lb run` logs once its maps are written and its program attached.
pub const READY: &str = "lb ready";

pub struct LbProcess {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    bin: PathBuf,
    socket: PathBuf,
    ns: String,
    iface: String,
}

/// What a client command of `lb` did.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// None if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// Runs `cmd` to its end.
    pub fn of(cmd: &mut Command) -> Result<ClientRun, LabError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(LabError::io(format!("spawn {cmd:?}")))?;
        Ok(ClientRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// How to start `lb run`.
#[derive(Debug, Clone)]
pub struct Start<'a> {
    /// The load balancer's namespace.
    pub ns: &'a str,
    pub bin: &'a Path,
    pub config: &'a Path,
    pub socket: &'a Path,
    /// The interface (`--iface`).
    pub iface: &'a str,
    /// More arguments of `lb run`.
    pub extra: &'a [&'a str],
    /// How long to wait for the ready line.
    pub timeout: Duration,
    /// Copy its log lines to our stderr as they come.
    pub echo: bool,
}

impl LbProcess {
    /// Starts `BIN run --config CONFIG --socket SOCKET --iface IFACE EXTRA...`
    /// in namespace `ns` and waits up to `timeout` for its ready line.
    pub fn start(start: &Start<'_>) -> Result<LbProcess, LabError> {
        if !start.bin.exists() {
            return Err(LabError::Io {
                context: format!(
                    "lb binary {} (build it: cargo build -p lb-user, or set LB_BIN)",
                    start.bin.display()
                ),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let mut cmd = run_command(start);
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Out of the terminal's process group: Ctrl-C goes to whoever owns
            // the lab, which stops lb in order.
            .process_group(0)
            .spawn()
            .map_err(LabError::io(format!("spawn {shown}")))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(format!("$ {shown}\n")));
        let ready = drain_log(stderr, log.clone(), start.echo);
        let lb = LbProcess {
            child: Some(child),
            log,
            bin: start.bin.to_path_buf(),
            socket: start.socket.to_path_buf(),
            ns: start.ns.to_string(),
            iface: start.iface.to_string(),
        };
        lb.wait_ready(&ready, start.timeout)
    }

    /// Waits up to `timeout` for the ready line: fails if lb exits first.
    fn wait_ready(
        mut self,
        ready: &mpsc::Receiver<()>,
        timeout: Duration,
    ) -> Result<Self, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(self);
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader catch the last lines.
                thread::sleep(Duration::from_millis(100));
                self.child = None;
                return Err(LabError::LbExited {
                    status: status.to_string(),
                    log: self.log(),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "lb".into(),
                    secs: timeout.as_secs(),
                    detail: format!(" (no `{READY}` line); its log:\n{}", self.log()),
                });
            }
        }
    }

    /// Everything lb wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The status socket it was started with.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `lb status --json --socket SOCKET`, parsed. For display only: tests
    /// assert on what real sockets receive.
    pub fn status(&self) -> Result<serde_json::Value, LabError> {
        let out = crate::lab::run(
            Command::new(&self.bin)
                .args(["status", "--json", "--socket"])
                .arg(&self.socket),
        )?;
        serde_json::from_str(&out).map_err(|e| LabError::Status {
            reason: format!("not JSON ({e}): {out}"),
        })
    }

    /// `lb status [GROUP] [--json] --socket SOCKET`: what the command line
    /// prints.
    pub fn status_command(&self, group: Option<&str>, json: bool) -> Result<String, LabError> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("status");
        if let Some(group) = group {
            cmd.arg(group);
        }
        if json {
            cmd.arg("--json");
        }
        crate::lab::run(cmd.arg("--socket").arg(&self.socket))
    }

    /// Runs `lb ARGS... --socket SOCKET`, a command that talks to this
    /// `lb` (`apply`, `drain`, `undrain`): what it printed and its exit code.
    pub fn client(&self, args: &[&str]) -> Result<ClientRun, LabError> {
        ClientRun::of(
            Command::new(&self.bin)
                .args(args)
                .arg("--socket")
                .arg(&self.socket),
        )
    }

    /// The status report, straight from the API socket (cheap enough to poll).
    pub fn report(&self) -> Result<Status, LabError> {
        status::fetch(&self.socket)
    }

    /// Polls the status report until `check` returns `Some` or `timeout`
    /// passes: see [`status::wait_for`].
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        check: impl FnMut(&Status) -> Option<T>,
    ) -> Result<Waited<T>, LabError> {
        status::wait_for(&self.socket, timeout, what, check)
    }

    /// Entries in use in this lb's flow table, read through a mapping of
    /// it (the map is found among the maps this process holds open; other
    /// `lb`s on the machine have their own).
    pub fn flow_table_len(&self) -> Result<usize, LabError> {
        Ok(self.flow_table()?.0.entries().count())
    }

    /// How many entries of this lb's flow table have each of these
    /// [`lb_common::flow_table::flags`] (`AGAIN`: established flows).
    pub fn flow_entries_with(&self, flags: u8) -> Result<usize, LabError> {
        Ok(self
            .flow_table()?
            .0
            .entries()
            .filter(|e| e.word.flags() & flags == flags)
            .count())
    }

    /// Deletes every entry of this lb's flow table, as a detach of its
    /// data plane would lose them (each flow leaves its target's count, as
    /// `lb` takes out a flow it deletes); returns how many there were.
    pub fn clear_flow_tables(&self) -> Result<usize, LabError> {
        let (table, active) = self.flow_table()?;
        let entries: Vec<_> = table.entries().collect();
        Ok(entries.iter().filter(|e| table.delete(e, &active)).count())
    }

    fn flow_table(&self) -> Result<(FlowTable, ActiveCounts), LabError> {
        use lb_common::map_names::{FLOW_TABLE, TARGET_ACTIVE};
        let [table, active] = self.maps([FLOW_TABLE, TARGET_ACTIVE])?;
        let status = |e: lb_user::dataplane::DataplaneError| LabError::Status {
            reason: format!("map lb's flow table: {e}"),
        };
        Ok((
            FlowTable::open(&table).map_err(status)?,
            ActiveCounts::new(&active).map_err(status)?,
        ))
    }

    /// The maps of these names among the maps this lb process holds open.
    fn maps<const N: usize>(&self, names: [&str; N]) -> Result<[MapData; N], LabError> {
        let pid = self.pid().ok_or_else(|| LabError::Status {
            reason: "lb is not running".into(),
        })?;
        let dir = format!("/proc/{pid}/fdinfo");
        let mut found: [Option<MapData>; N] = [const { None }; N];
        for entry in std::fs::read_dir(&dir).map_err(LabError::io(dir.clone()))? {
            let Ok(entry) = entry else { continue };
            let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:")?.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(map) = aya::maps::MapInfo::from_id(id) else {
                continue;
            };
            let Some(slot) = names.iter().position(|n| map.name_as_str() == Some(*n)) else {
                continue;
            };
            if found[slot].is_none() {
                found[slot] = Some(MapData::from_id(id).map_err(map_error("open a map of lb"))?);
            }
        }
        let missing: Vec<&str> = names
            .iter()
            .zip(&found)
            .filter(|(_, m)| m.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(LabError::Status {
                reason: format!("no {} map held by lb (pid {pid})", missing.join("/")),
            });
        }
        Ok(found.map(|m| m.expect("checked above")))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops it with SIGTERM (SIGKILL after 10 s) and returns how it exited.
    /// Its data plane stays pinned and forwarding.
    pub fn stop(mut self) -> Result<ExitStatus, LabError> {
        let status = self.terminate();
        self.forget();
        status
    }

    /// Kills it (SIGKILL, as a crash or the OOM killer would) and returns
    /// how it exited. Its data plane stays pinned and forwarding.
    pub fn kill(mut self) -> Result<ExitStatus, LabError> {
        let mut child = self.child.take().ok_or_else(|| LabError::Status {
            reason: "lb is not running".into(),
        })?;
        let _ = child.kill();
        let status = child.wait().map_err(LabError::io("wait for lb"));
        self.forget();
        status
    }

    /// Stops it with SIGTERM and removes its data plane (`lb detach`): how
    /// it exited and what detach said.
    pub fn detach_after_stop(mut self) -> Result<(ExitStatus, String), LabError> {
        let status = self.terminate()?;
        let said = self.detach()?;
        self.forget();
        Ok((status, said))
    }

    /// `lb detach --iface IFACE` in its namespace: its output, or an error.
    pub fn detach(&self) -> Result<String, LabError> {
        detach(&self.ns, &self.bin, &self.iface)
    }

    /// Leaves its data plane to whoever comes next (no detach on drop).
    fn forget(&mut self) {
        self.ns.clear();
    }

    fn terminate(&mut self) -> Result<ExitStatus, LabError> {
        let Some(mut child) = self.child.take() else {
            return Err(LabError::Status {
                reason: "lb is not running".into(),
            });
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map_err(LabError::io("wait for lb"))?;
                    return Err(LabError::Status {
                        reason: format!("lb ignored SIGTERM for 10 s and was killed ({status})"),
                    });
                }
            }
        }
    }
}

/// Runs `BIN detach --iface IFACE` in namespace `ns`: its output, or an
/// error with its stderr.
pub fn detach(ns: &str, bin: &Path, iface: &str) -> Result<String, LabError> {
    crate::lab::run(netns::command(ns, bin).args(["detach", "--iface", iface]))
}

/// Runs `lb run` for a start that must fail: waits up to `start.timeout`
/// for it to exit (killed past it) and, unlike a dropped [`LbProcess`],
/// detaches nothing after it, so that a test sees what it left. Its log
/// goes to `log` (a file: a pipe nobody reads could hold it up).
pub fn run_to_exit(start: &Start<'_>, log: &Path) -> Result<ClientRun, LabError> {
    let file = std::fs::File::create(log).map_err(LabError::io(format!("create {log:?}")))?;
    let mut cmd = run_command(start);
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(LabError::io(format!("spawn {shown}")))?;
    let deadline = Instant::now() + start.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(LabError::io("wait for lb"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Timeout {
                what: format!("{shown} to stop"),
                secs: start.timeout.as_secs(),
                detail: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(50));
    };
    Ok(ClientRun {
        code: status.code(),
        stdout: String::new(),
        stderr: std::fs::read_to_string(log).unwrap_or_default(),
    })
}

/// `BIN run --config CONFIG --socket SOCKET --iface IFACE EXTRA...` in
/// namespace `ns`, logging plain lines at info unless `RUST_LOG` says
/// otherwise.
fn run_command(start: &Start<'_>) -> Command {
    let mut cmd = netns::command(start.ns, start.bin);
    cmd.arg("run")
        .arg("--config")
        .arg(start.config)
        .arg("--socket")
        .arg(start.socket)
        .args(["--iface", start.iface])
        .args(start.extra);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // Plain log lines: they end up in test failure messages.
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Appends lb's stderr to `log` line by line on a thread of its own (echoed
/// to ours if `echo`); the receiver gets one message at the ready line.
fn drain_log(
    stderr: std::process::ChildStderr,
    log: Arc<Mutex<String>>,
    echo: bool,
) -> mpsc::Receiver<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("lb| {line}");
            }
            if line.contains(READY)
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    ready_rx
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        if !self.ns.is_empty()
            && let Err(e) = self.detach()
        {
            eprintln!("lb: detach in {}: {e}", self.ns);
        }
        if thread::panicking() {
            eprintln!("--- lb log ---\n{}--- end of lb log ---", self.log());
        }
    }
}

fn map_error(what: &'static str) -> impl FnOnce(MapError) -> LabError {
    move |e| LabError::Status {
        reason: format!("{what}: {e}"),
    }
}
