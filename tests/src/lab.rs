//! The namespace lab: one L2 segment with a client, the load balancer and
//! three DSR targets, each in its own network namespace, joined by a bridge
//! in a "switch" namespace.
//!
//! ```text
//!              switch namespace: bridge br0 (no IP)
//!     p-cl        p-lb (XDP_PASS, tx off)   p-t1      p-t2      p-t3
//!      |           |                         |         |         |
//!     eth0        eth0                      eth0      eth0      eth0
//!    client        lb                        t1        t2        t3
//! ```
//! With [`LabOptions::router`], a router on the bridge (`p-rt`) leads to a
//! remote client's network through a link of a smaller MTU, and the lb and
//! the targets route that network through it (path MTU tests). With
//! [`LabOptions::second_lb`], a second load balancer (`p-lb2`) joins the
//! segment (instances behind ECMP).
//!
//! See `docs/lab.md` for the addressing plan; [`crate::topo`] has it as
//! constants. [`Lab`] builds all of it with iproute2 and removes it on drop,
//! also when a test panics.
use std::{
    collections::HashMap,
    fs, io,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use crate::{
    client,
    lb::{ClientRun, LbProcess},
    netns,
    topo::{self, LB4, LB6, Node, TARGETS, VIP4, VIP6, fmt_mac},
    xdp,
};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, XDP); run `cargo xtask test` as root")]
    NotRoot,
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: not ready within {secs} s{detail}")]
    Timeout {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error("XDP_PASS program on {port}: {reason}")]
    Xdp { port: String, reason: String },
    #[error("lb exited before it was ready ({status}); its log:\n{log}")]
    LbExited { status: String, log: String },
    #[error("lb status: {reason}")]
    Status { reason: String },
    #[error("{what}: `{command}`: {reason}")]
    Control {
        what: String,
        command: String,
        reason: String,
    },
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }
}

/// Runs `cmd` to completion; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("spawn {shown}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Feeds `lines` to `ip [-n NS] -batch -`: one process for many changes.
fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("ip -n {} -batch: {}", ns.unwrap_or("-"), lines.join("; "));
    let mut child = cmd.spawn().map_err(LabError::io("spawn ip"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = lines.join("\n") + "\n";
    stdin
        .write_all(text.as_bytes())
        .map_err(LabError::io("write to ip -batch"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(LabError::io("wait for ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The workspace's cargo target directory: `$CARGO_TARGET_DIR` (relative to
/// the root), default `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t))
}

/// A binary of this workspace: `$ENV_VAR` if set, else
/// `$CARGO_TARGET_DIR/debug/NAME` (default `<root>/target/debug/NAME`).
/// `cargo xtask test` builds and sets both `LB_BIN` and `LB_LAB_SERVER_BIN`.
pub fn workspace_bin(env_var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    target_dir().join("debug").join(name)
}

/// How to build a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Namespace names are `<prefix><pid>x<n>-<role>`; labs of dead processes
    /// with the same prefix are removed when a new one is made.
    pub prefix: String,
    /// The `lb-lab-server` binary (None: do not start target servers).
    pub server_bin: Option<PathBuf>,
    /// The `lb` binary, for [`Lab::start_lb`].
    pub lb_bin: PathBuf,
    /// Attach the XDP_PASS program to `p-lb` (needed by native XDP_TX).
    pub attach_pass: bool,
    /// How long to wait for servers and connectivity.
    pub ready_timeout: Duration,
    /// Add a router on the bridge (`Node::Router`, 10.0.3.1, fd00:3::1) and a
    /// remote client behind it (`Node::Remote`, 10.0.4.100, fd00:4::100),
    /// the router's side of that link with MTU [`topo::ROUTER_MTU`]; the lb
    /// and the targets route 10.0.4.0/24 and fd00:4::/64 via the router.
    pub router: bool,
    /// Add a second load balancer on the bridge (`Node::Lb2`, 10.0.3.3,
    /// fd00:3::3, no VIP) with its XDP_PASS program on `p-lb2`, for a
    /// second `lb run` ([`Lab::start_lb_on`]).
    pub second_lb: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: "lbt".into(),
            server_bin: Some(workspace_bin("LB_LAB_SERVER_BIN", "lb-lab-server")),
            lb_bin: workspace_bin("LB_BIN", "lb"),
            attach_pass: true,
            ready_timeout: Duration::from_secs(20),
            router: false,
            second_lb: false,
        }
    }
}

/// A process the lab started; killed when the lab goes.
struct Process {
    what: String,
    node: Node,
    child: Child,
    /// `lb-lab-server`'s command channel; closing its stdin tells it to exit.
    control: Option<Mutex<Control>>,
}

/// Commands go to a lab server's stdin, one line each; it answers each with
/// one line on stdout once the command has taken effect.
struct Control {
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

/// One HTTP request a lab server received (its `--record` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Who sent it (IPv4-mapped addresses shown as IPv4).
    pub peer: IpAddr,
    pub method: String,
    pub target: String,
    pub version: String,
    /// `http` or `https`: which of the server's listeners received it.
    pub scheme: String,
}

impl HttpRequest {
    /// `HEAD /healthz HTTP/1.0`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }
}

/// A running lab. Dropping it stops its processes and deletes its namespaces.
pub struct Lab {
    id: String,
    dir: PathBuf,
    options: LabOptions,
    processes: Vec<Process>,
    created: Vec<String>,
    /// Keeps the XDP_PASS programs on `p-lb` (and `p-lb2`) attached.
    pass: Vec<(Node, xdp::Attached)>,
}

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// A lab with the default options: all three target servers running.
    pub fn new() -> Result<Lab, LabError> {
        Lab::with(LabOptions::default())
    }

    pub fn with(options: LabOptions) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        remove_stale(&options.prefix);
        let id = format!(
            "{}{}x{}",
            options.prefix,
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(LabError::io(format!("create {}", dir.display())))?;
        let mut lab = Lab {
            id,
            dir,
            options,
            processes: Vec::new(),
            created: Vec::new(),
            pass: Vec::new(),
        };
        // From here on, Drop removes whatever was made if a step fails.
        lab.build_topology()?;
        if lab.options.attach_pass {
            for node in lab.lbs() {
                lab.attach_pass(node)?;
            }
        }
        if let Some(bin) = lab.options.server_bin.clone() {
            for (i, t) in TARGETS.iter().enumerate() {
                let args = [
                    "--tcp".to_owned(),
                    topo::TCP_PORT.to_string(),
                    "--lines".to_owned(),
                    topo::LINES_PORT.to_string(),
                    "--lines".to_owned(),
                    topo::MORE_LINES_PORTS[0].to_string(),
                    "--lines".to_owned(),
                    topo::MORE_LINES_PORTS[1].to_string(),
                    "--http".to_owned(),
                    topo::HTTP_PORT.to_string(),
                    "--https".to_owned(),
                    topo::HTTPS_PORT.to_string(),
                    "--bulk".to_owned(),
                    topo::BULK_PORT.to_string(),
                    "--udp".to_owned(),
                    SocketAddr::new(VIP4.into(), topo::UDP_PORT).to_string(),
                    "--udp".to_owned(),
                    SocketAddr::new(VIP6.into(), topo::UDP_PORT).to_string(),
                ];
                lab.spawn_server_bin(&bin, Node::Target(i), t.name, &args)?;
            }
            lab.wait_reachable()?;
        }
        Ok(lab)
    }

    /// The name of the namespace of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.id, node.suffix())
    }

    /// This lab's scratch directory (policies, lb's socket); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// Writes `contents` to `name` in the lab's directory.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Runs `f` inside `node`'s namespace (on a thread of its own) and returns
    /// its result. Panics in `f` propagate.
    pub fn run_in<T: Send>(&self, node: Node, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.ns(node);
        netns::run(&ns, f).unwrap_or_else(|e| panic!("enter {ns}: {e}"))
    }

    /// `nsenter --net=<node's namespace> PROGRAM`, to add arguments to.
    pub fn command(&self, node: Node, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns::command(&self.ns(node), program)
    }

    /// Runs `args` in `node`'s namespace; its stdout, or an error.
    pub fn exec(&self, node: Node, args: &[&str]) -> Result<String, LabError> {
        let (program, rest) = args.split_first().expect("a command");
        run(self.command(node, program).args(rest))
    }

    /// Absolute SNMP/netstat counters of `node`'s kernel (`nstat -asz`).
    pub fn nstat(&self, node: Node) -> Result<HashMap<String, u64>, LabError> {
        let out = self.exec(node, &["nstat", "-asz"])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                let value = words.next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect())
    }

    /// Starts `lb-lab-server --name NAME --record FILE ARGS...` in `node`'s
    /// namespace (for example a server on the load balancer's own address) and
    /// waits until it has bound its sockets. It stops with the lab. The
    /// control methods ([`Lab::stop_port`]...) talk to the last server
    /// started in a namespace; [`Lab::http_requests`] reads its FILE.
    pub fn spawn_server(
        &mut self,
        node: Node,
        name: &str,
        args: &[String],
    ) -> Result<(), LabError> {
        let bin = self
            .options
            .server_bin
            .clone()
            .unwrap_or_else(|| workspace_bin("LB_LAB_SERVER_BIN", "lb-lab-server"));
        self.spawn_server_bin(&bin, node, name, args)
    }

    fn spawn_server_bin(
        &mut self,
        bin: &Path,
        node: Node,
        name: &str,
        args: &[String],
    ) -> Result<(), LabError> {
        if !bin.exists() {
            return Err(LabError::Io {
                context: format!(
                    "lab server {} (build it: cargo build -p lb-tests --bins)",
                    bin.display()
                ),
                source: io::ErrorKind::NotFound.into(),
            });
        }
        let what = format!("lb-lab-server {name} in {}", self.ns(node));
        let mut child = self
            .command(node, bin)
            .args(["--name", name])
            .arg("--record")
            .arg(self.http_log(node))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Out of the terminal's process group: Ctrl-C reaches only the
            // process that owns the lab, which then stops everything in order.
            .process_group(0)
            .spawn()
            .map_err(LabError::io(format!("spawn {what}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let rx = reply_lines(stdout);
        let timeout = self.options.ready_timeout;
        let first = rx.recv_timeout(timeout);
        self.processes.push(Process {
            what: what.clone(),
            node,
            child,
            control: Some(Mutex::new(Control { stdin, replies: rx })),
        });
        ready(what, timeout, first)
    }

    /// Where the lab server of `node` records the HTTP requests it receives.
    fn http_log(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{}-http.log", node.suffix()))
    }

    /// Sends `command` to the last lab server started in `node` and waits
    /// (at most 10 s) until it has taken effect.
    pub fn control(&self, node: Node, command: &str) -> Result<(), LabError> {
        let process = self
            .processes
            .iter()
            .rev()
            .find(|p| p.node == node && p.control.is_some())
            .ok_or_else(|| LabError::Control {
                what: self.ns(node),
                command: command.into(),
                reason: "no lab server runs there".into(),
            })?;
        let err = |reason: String| LabError::Control {
            what: process.what.clone(),
            command: command.into(),
            reason,
        };
        let mut control = process
            .control
            .as_ref()
            .expect("checked")
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A reply left over from a command that timed out belongs to nobody.
        while control.replies.try_recv().is_ok() {}
        control
            .stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| control.stdin.flush())
            .map_err(|e| err(format!("write: {e}")))?;
        match control.replies.recv_timeout(Duration::from_secs(10)) {
            Ok(reply) if reply == "ok" => Ok(()),
            Ok(reply) => Err(err(reply)),
            Err(e) => Err(err(format!("no answer: {e}"))),
        }
    }

    /// Closes the TCP listener (tcp, lines, http or https) on `port` of `node`'s lab
    /// server: new connections are refused, accepted ones go on.
    pub fn stop_port(&self, node: Node, port: u16) -> Result<(), LabError> {
        self.control(node, &format!("stop {port}"))
    }

    /// Opens the listener on `port` again, as it was.
    pub fn start_port(&self, node: Node, port: u16) -> Result<(), LabError> {
        self.control(node, &format!("start {port}"))
    }

    /// `node`'s HTTP and HTTPS servers answer `code` from now on (and stop
    /// hanging).
    pub fn set_http_status(&self, node: Node, code: u16) -> Result<(), LabError> {
        self.control(node, &format!("http-status {code}"))
    }

    /// `node`'s HTTP and HTTPS servers accept and read requests (HTTPS: after
    /// the TLS handshake) but never answer.
    pub fn set_http_hang(&self, node: Node) -> Result<(), LabError> {
        self.control(node, "http-hang")
    }

    /// Every HTTP request `node`'s lab server received so far, oldest first.
    pub fn http_requests(&self, node: Node) -> Result<Vec<HttpRequest>, LabError> {
        let path = self.http_log(node);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(LabError::io(format!("read {}", path.display()))(e)),
        };
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                Some(HttpRequest {
                    peer: words.next()?.parse().ok()?,
                    method: words.next()?.to_owned(),
                    target: words.next()?.to_owned(),
                    version: words.next()?.to_owned(),
                    scheme: words.next().unwrap_or("http").to_owned(),
                })
            })
            .collect())
    }

    /// Makes `node`'s kernel ignore (or answer again) ICMP and ICMPv6 echo
    /// requests: `net.ipv4.icmp_echo_ignore_all` and
    /// `net.ipv6.icmp.echo_ignore_all`, both per namespace.
    pub fn set_ping_ignored(&self, node: Node, ignored: bool) -> Result<(), LabError> {
        let value = if ignored { "1" } else { "0" };
        set_sysctls(
            &self.ns(node),
            &[
                ("net/ipv4/icmp_echo_ignore_all", value),
                ("net/ipv6/icmp/echo_ignore_all", value),
            ],
        )
    }

    /// Starts `lb run --config POLICY --socket <lab dir>/lb.sock EXTRA...` in
    /// the load balancer's namespace and waits for its `lb ready` line.
    pub fn start_lb(&self, policy: &Path, extra: &[&str]) -> Result<LbProcess, LabError> {
        self.start_lb_on(Node::Lb, policy, extra)
    }

    /// Like [`Lab::start_lb`], on load balancer `node` (`Node::Lb` or
    /// `Node::Lb2`), its socket `<lab dir>/<suffix>.sock`.
    pub fn start_lb_on(
        &self,
        node: Node,
        policy: &Path,
        extra: &[&str],
    ) -> Result<LbProcess, LabError> {
        let socket = self.dir.join(format!("{}.sock", node.suffix()));
        LbProcess::start(&crate::lb::Start {
            ns: &self.ns(node),
            bin: &self.options.lb_bin,
            config: policy,
            socket: &socket,
            iface: "eth0",
            extra,
            timeout: Duration::from_secs(60),
            echo: false,
        })
    }

    /// Runs `lb run` like [`Lab::start_lb`] for a start that must fail,
    /// to its end (`crate::lb::run_to_exit`): nothing is detached after it.
    pub fn run_lb_to_exit(&self, policy: &Path, extra: &[&str]) -> Result<ClientRun, LabError> {
        crate::lb::run_to_exit(
            &crate::lb::Start {
                ns: &self.ns(Node::Lb),
                bin: &self.options.lb_bin,
                config: policy,
                socket: &self.dir.join("lb.sock"),
                iface: "eth0",
                extra,
                timeout: Duration::from_secs(60),
                echo: false,
            },
            &self.dir.join("lb-exit.log"),
        )
    }

    /// Every namespace but the switch's, in creation order: the hosts,
    /// and with `router` the router and the remote client.
    fn nodes(&self) -> Vec<Node> {
        let mut nodes = Node::hosts().to_vec();
        if self.options.second_lb {
            nodes.push(Node::Lb2);
        }
        if self.options.router {
            nodes.extend(Node::routed());
        }
        nodes
    }

    /// The load balancers' nodes: `Node::Lb`, and `Node::Lb2` with
    /// `second_lb`.
    fn lbs(&self) -> Vec<Node> {
        let mut lbs = vec![Node::Lb];
        if self.options.second_lb {
            lbs.push(Node::Lb2);
        }
        lbs
    }

    fn build_topology(&mut self) -> Result<(), LabError> {
        let nodes = self.nodes();
        for &node in [Node::Switch].iter().chain(&nodes) {
            let ns = self.ns(node);
            // A name of ours can only be taken by the leftover of a dead
            // process that had our pid (pids are reused): remove it.
            if Path::new("/run/netns").join(&ns).exists() {
                eprintln!("lab: removing leftover namespace {ns} (a dead process had our pid)");
                remove_namespace(&ns);
            }
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            self.created.push(ns);
        }
        let sw = self.ns(Node::Switch);
        self.build_switch(&sw)?;
        if self.options.router {
            // The router's second link: its eth1, the remote client's eth0.
            let link = format!(
                "link add eth1 type veth peer name eth0 netns {}",
                self.ns(Node::Remote)
            );
            ip_batch(Some(&self.ns(Node::Router)), &[link])?;
        }
        for node in nodes {
            let ns = self.ns(node);
            set_sysctls(&ns, &host_sysctls(node))?;
            let mut batch = host_links(node);
            if self.options.router {
                batch.extend(routes_to_remote(node));
            }
            ip_batch(Some(&ns), &batch)?;
            if let Node::Target(_) = node {
                self.target_setup(node)?;
            }
        }
        // Native XDP_TX on the lb's veth hands frames to p-lb with unfinished
        // checksums unless p-lb computes them itself (TOOLCHAIN.md).
        for lb in self.lbs() {
            run(netns::command(&sw, "ethtool").args(["-K", &lb.port(), "tx", "off"]))?;
        }
        Ok(())
    }

    /// Deletes the load balancer's `eth0` (its bridge port `p-lb` goes with
    /// it) and makes both again as the lab first made them, with new
    /// interface indexes: what a driver reset or a re-created VF does to
    /// `lb`'s NIC.
    pub fn remake_lb_interface(&mut self) -> Result<(), LabError> {
        let (lb, sw) = (self.ns(Node::Lb), self.ns(Node::Switch));
        self.pass.retain(|(node, _)| *node != Node::Lb);
        run(Command::new("ip").args(["-n", &lb, "link", "del", "eth0"]))?;
        ip_batch(
            Some(&sw),
            &[
                format!("link add p-lb type veth peer name eth0 netns {lb}"),
                "link set p-lb master br0".to_owned(),
                "link set p-lb up".to_owned(),
            ],
        )?;
        set_sysctls(&lb, &host_sysctls(Node::Lb))?;
        ip_batch(Some(&lb), &host_links(Node::Lb))?;
        run(netns::command(&sw, "ethtool").args(["-K", "p-lb", "tx", "off"]))?;
        if self.options.attach_pass {
            self.attach_pass(Node::Lb)?;
        }
        Ok(())
    }

    /// A DSR target's set-up (SPEC.md: the VIPs on lo, the ARP sysctls),
    /// made as on a real target: `lb target-setup --vip ... --apply`.
    fn target_setup(&self, node: Node) -> Result<(), LabError> {
        let (v4, v6) = (VIP4.to_string(), VIP6.to_string());
        let args = ["target-setup", "--vip", &v4, "--vip", &v6, "--apply"];
        run(self.command(node, &self.options.lb_bin).args(args)).map(drop)
    }

    /// The switch: no IPv6 of its own (keeps the segment quiet), a bridge
    /// without multicast snooping (neighbour solicitations are flooded like
    /// ARP), one port per host.
    fn build_switch(&self, sw: &str) -> Result<(), LabError> {
        set_sysctls(
            sw,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        )?;
        let mut batch = vec![
            "link set lo up".to_owned(),
            "link add br0 type bridge mcast_snooping 0".to_owned(),
            "link set br0 up".to_owned(),
        ];
        for node in self.nodes().into_iter().filter(|&n| n != Node::Remote) {
            let port = node.port();
            batch.push(format!(
                "link add {port} type veth peer name eth0 netns {}",
                self.ns(node)
            ));
            batch.push(format!("link set {port} master br0"));
            batch.push(format!("link set {port} up"));
        }
        ip_batch(Some(sw), &batch)
    }

    /// Attaches the XDP_PASS program to the bridge port of load balancer
    /// `node`.
    fn attach_pass(&mut self, node: Node) -> Result<(), LabError> {
        let port = node.port();
        let err = |reason: String| LabError::Xdp {
            port: port.clone(),
            reason,
        };
        let sw = self.ns(Node::Switch);
        let attached = netns::run(&sw, || xdp::attach_native(&xdp::PASS, &port))
            .map_err(|e| err(format!("enter {sw}: {e}")))?
            .map_err(|e| err(e.to_string()))?;
        self.pass.push((node, attached));
        Ok(())
    }

    /// Waits until the client and the load balancer reach every target's own
    /// addresses (IPv4 and IPv6) on the TCP port. This also fills the lb's
    /// neighbour table with the targets' MACs, as on any live segment.
    fn wait_reachable(&self) -> Result<(), LabError> {
        let deadline = Instant::now() + self.options.ready_timeout;
        let mut from = vec![Node::Client];
        from.extend(self.lbs());
        if self.options.router {
            // Through the router, both ways: its forwarding and the
            // targets' routes back.
            from.push(Node::Remote);
        }
        for node in from {
            let ns = self.ns(node);
            let result = netns::run(&ns, || -> Result<(), String> {
                for t in &TARGETS {
                    for v6 in [false, true] {
                        let dst = SocketAddr::new(t.ip(v6), topo::TCP_PORT);
                        let src = SocketAddr::new(
                            if v6 {
                                [0u16; 8].into()
                            } else {
                                [0u8; 4].into()
                            },
                            0,
                        );
                        loop {
                            match client::tcp_ask(src, dst, Duration::from_secs(1)) {
                                Ok(name) if name == t.name => break,
                                Ok(name) => {
                                    return Err(format!(
                                        "{dst} answered {name:?}, expected {:?}",
                                        t.name
                                    ));
                                }
                                Err(e) if Instant::now() >= deadline => {
                                    return Err(format!("{dst}: {e}"));
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(50)),
                            }
                        }
                    }
                }
                Ok(())
            })
            .map_err(LabError::io(format!("enter {ns}")))?;
            result.map_err(|detail| LabError::Timeout {
                what: format!("targets from {ns}"),
                secs: self.options.ready_timeout.as_secs(),
                detail: format!(" ({detail})"),
            })?;
        }
        Ok(())
    }
}

/// The sysctls of a host's namespace (a target's DSR ones are `lb
/// target-setup`'s: [`Lab::target_setup`]).
fn host_sysctls(node: Node) -> Vec<(&'static str, &'static str)> {
    let mut sysctls = vec![
        // Addresses are usable at once (no duplicate address detection).
        ("net/ipv6/conf/eth0/accept_dad", "0"),
        ("net/ipv6/conf/eth0/router_solicitations", "0"),
    ];
    if node == Node::Router {
        sysctls.push(("net/ipv6/conf/eth1/accept_dad", "0"));
        sysctls.push(("net/ipv4/ip_forward", "1"));
        sysctls.push(("net/ipv6/conf/all/forwarding", "1"));
        // ECMP spreads by the 5-tuple (layer 4), as routers in front of
        // load balancers do, so one client's flows take every path.
        sysctls.push(("net/ipv4/fib_multipath_hash_policy", "1"));
        sysctls.push(("net/ipv6/fib_multipath_hash_policy", "1"));
    }
    sysctls
}

/// The `ip -batch` lines that bring a host's interfaces up with its MAC and
/// addresses.
fn host_links(node: Node) -> Vec<String> {
    let mac = fmt_mac(node.mac().expect("hosts have a MAC"));
    let mut batch = vec![
        "link set lo up".to_owned(),
        format!("link set eth0 address {mac}"),
        "link set eth0 up".to_owned(),
    ];
    let mut v4 = |a: String| batch.push(format!("addr add {a} dev eth0"));
    match node {
        Node::Client => {
            for i in 0..topo::CLIENT_ADDRS {
                v4(format!("{}/24", topo::client4(i)));
            }
            for i in 0..topo::CLIENT_ADDRS {
                v4(format!("{}/64 nodad", topo::client6(i)));
            }
        }
        Node::Lb => {
            v4(format!("{LB4}/24"));
            v4(format!("{LB6}/64 nodad"));
            // The lb owns the VIPs on its interface, so it (and only
            // it) answers ARP and neighbour solicitations for them.
            // The IPv6 VIP is deprecated (preferred_lft 0): still
            // answered for, never picked as a source; a /128 on the
            // outgoing interface would otherwise win source address
            // selection (longest match) for every neighbour on the
            // segment, and the targets' answers would stay on them.
            v4(format!("{VIP4}/32"));
            v4(format!("{VIP6}/128 nodad preferred_lft 0"));
        }
        Node::Lb2 => {
            v4(format!("{}/24", topo::LB2_4));
            v4(format!("{}/64 nodad", topo::LB2_6));
        }
        Node::Target(i) => {
            v4(format!("{}/24", TARGETS[i].v4));
            v4(format!("{}/64 nodad", TARGETS[i].v6));
            // The VIPs on lo: `lb target-setup` (Lab::target_setup).
        }
        Node::Router | Node::Remote => batch.extend(routed_links(node)),
        Node::Switch => unreachable!("not a host"),
    }
    batch
}

/// The addresses, second link and routes of the router and the remote
/// client (after their eth0 is up).
fn routed_links(node: Node) -> Vec<String> {
    if node == Node::Remote {
        return vec![
            format!("addr add {}/24 dev eth0", topo::REMOTE4),
            format!("addr add {}/64 dev eth0 nodad", topo::REMOTE6),
            format!("route add 0.0.0.0/0 via {}", topo::ROUTER_REMOTE4),
            format!("route add ::/0 via {}", topo::ROUTER_REMOTE6),
        ];
    }
    vec![
        format!("addr add {}/24 dev eth0", topo::ROUTER4),
        format!("addr add {}/64 dev eth0 nodad", topo::ROUTER6),
        // Toward the remote client: the smaller MTU on this side only.
        format!("link set eth1 address {}", fmt_mac(topo::ROUTER_REMOTE_MAC)),
        format!("link set eth1 mtu {}", topo::ROUTER_MTU),
        "link set eth1 up".to_owned(),
        format!("addr add {}/24 dev eth1", topo::ROUTER_REMOTE4),
        format!("addr add {}/64 dev eth1 nodad", topo::ROUTER_REMOTE6),
    ]
}

/// With a router: the routes of the lb and the targets to the remote
/// client's networks, via the router (a target's replies to the remote
/// client go there directly, never through the lb).
fn routes_to_remote(node: Node) -> Vec<String> {
    match node {
        Node::Lb | Node::Lb2 | Node::Target(_) => vec![
            format!("route add {} via {}", topo::REMOTE_NET4, topo::ROUTER4),
            format!("route add {} via {}", topo::REMOTE_NET6, topo::ROUTER6),
        ],
        _ => Vec::new(),
    }
}

/// A lab server's stdout, line by line (trimmed), read on a thread of its
/// own.
fn reply_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether a lab server's first line, waited for `timeout`, says it is ready.
fn ready(
    what: String,
    timeout: Duration,
    first: Result<String, mpsc::RecvTimeoutError>,
) -> Result<(), LabError> {
    match first {
        Ok(line) if line == "ready" => Ok(()),
        Ok(other) => Err(LabError::Timeout {
            what,
            secs: timeout.as_secs(),
            detail: format!(" (it said {other:?} instead of `ready`; its stderr is above)"),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(LabError::Timeout {
            what,
            secs: timeout.as_secs(),
            detail: " (it exited; its stderr is above)".into(),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(LabError::Timeout {
            what,
            secs: timeout.as_secs(),
            detail: String::new(),
        }),
    }
}

fn set_sysctls(ns: &str, values: &[(&str, &str)]) -> Result<(), LabError> {
    netns::run(ns, || -> Result<(), LabError> {
        for (key, value) in values {
            let path = Path::new("/proc/sys").join(key);
            fs::write(&path, value).map_err(LabError::io(format!(
                "{ns}: write {value} to {}",
                path.display()
            )))?;
        }
        Ok(())
    })
    .map_err(LabError::io(format!("enter {ns}")))?
}

/// Stops every process in namespace `ns` and deletes it, and removes what
/// an `lb` left pinned there. Best effort.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            // Wait for it to go: a killed lb holds its data plane's lock
            // until then.
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    remove_pinned(ns);
    if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
        eprintln!("lab: could not delete namespace {ns}: {e}");
    }
}

/// Removes what an `lb` in namespace `ns` left: `lb run` pins its data plane
/// in /sys/fs/bpf/lb/NS/IFACE and keeps its state in /var/lib/lb/NS/IFACE
/// (it names a namespace by its `ip netns` name). Unpinning the link
/// detaches the program once nothing else holds it.
fn remove_pinned(ns: &str) {
    for root in [
        lb_user::dataplane::pin::BPFFS_ROOT,
        lb_user::dataplane::pin::STATE_ROOT,
    ] {
        let dir = Path::new(root).join(ns);
        if dir.exists() {
            eprintln!("lab: removing {} (left by an lb)", dir.display());
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("lab: could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// Removes labs with this prefix whose creating process is gone.
fn remove_stale(prefix: &str) {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("lab: removing stale namespace {name}");
            remove_namespace(&name);
            let lab_dir = std::env::temp_dir()
                .join(name.rsplit_once('-').map_or(name.as_str(), |(id, _)| id));
            let _ = fs::remove_dir_all(lab_dir);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("LB_LAB_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "lab: LB_LAB_KEEP=1: leaving namespaces {}-* (remove with `ip netns del`); \
                 the XDP_PASS program on p-lb goes with this process",
                self.id
            );
            return;
        }
        for mut p in self.processes.drain(..) {
            drop(p.control.take());
            let _ = p.child.kill();
            if let Err(e) = p.child.wait() {
                eprintln!("lab: wait for {}: {e}", p.what);
            }
        }
        // An lb's data plane on the lab's interface, if a test left one:
        // detached (its processes are gone above, lb's own were dropped
        // before the lab).
        for lb in self.lbs() {
            let lb_ns = self.ns(lb);
            if self.created.contains(&lb_ns)
                && Path::new(lb_user::dataplane::pin::BPFFS_ROOT)
                    .join(&lb_ns)
                    .exists()
                && let Err(e) = crate::lb::detach(&lb_ns, &self.options.lb_bin, "eth0")
            {
                eprintln!("lab: lb detach in {lb_ns}: {e}");
            }
        }
        // Detach before the port goes away with its namespace.
        self.pass.clear();
        for ns in self.created.drain(..).rev() {
            remove_namespace(&ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
