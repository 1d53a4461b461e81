//! No connection lost to a change or a restart: long-lived TCP connections
//! through `hash`, `round_robin` and `least_connections` groups and UDP
//! streams through a `round_robin` group, each exchanging a message every
//! 100 ms and counted per connection (`lb_tests::streams`), while `lb` is
//! reloaded with changes elsewhere in the policy, with bad policies, killed,
//! stopped and started again, or started with a target removed.
//!
//! Needs root and the `lb` binary (`cargo xtask test` builds it).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    Lab, LabRun, Node,
    client::{self, Proto},
    lb::LbProcess,
    status::Status,
    streams::{self, Report, Spec, Streams},
    topo::{self, LINES_PORT, MORE_LINES_PORTS, TARGETS, UDP_PORT, VIP4},
};
use nix::{sys::signal, unistd::Pid};

/// Streams per group.
const PER_GROUP: usize = 12;
/// How long a step may take on a loaded 2-core machine.
const T: Duration = Duration::from_secs(30);

/// The groups with streams: (name, algorithm, listener protocol, port).
const STREAMED: [(&str, &str, &str, u16); 4] = [
    ("hash", "hash", "tcp", LINES_PORT),
    ("rr", "round_robin", "tcp", MORE_LINES_PORTS[0]),
    ("lc", "least_connections", "tcp", MORE_LINES_PORTS[1]),
    ("dns", "round_robin", "udp", UDP_PORT),
];

/// The policy of these tests, with the knobs the changes turn.
#[derive(Debug, Clone)]
struct Policy {
    /// Targets of `web` (listed first, no streams), by index, in order.
    web: Vec<usize>,
    web_weights: [u16; 3],
    web_algorithm: &'static str,
    /// A listener and its group before all the others.
    new_first: bool,
    /// Groups, and listeners, in reverse order.
    reversed: bool,
    /// Targets of the streamed groups, by index.
    streamed: Vec<usize>,
    /// A TCP health check on the `rr` group.
    rr_checked: bool,
    /// The streamed groups' `deregistration_delay_s` and whether they
    /// rebalance (else the defaults: 300 s, no_rebalance).
    streamed_leave: Option<(u32, bool)>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            web: vec![0, 1, 2],
            web_weights: [256; 3],
            web_algorithm: "hash",
            new_first: false,
            reversed: false,
            streamed: vec![0, 1, 2],
            rr_checked: false,
            streamed_leave: None,
        }
    }
}

impl Policy {
    fn yaml(&self) -> String {
        let listener = |name: &str, proto: &str, port: u16| {
            format!(
                "  - {{ name: {name}, vip: {VIP4}, protocol: {proto}, port: {port}, target_group: {name} }}\n"
            )
        };
        let mut listeners: Vec<String> = vec![listener("web", "tcp", topo::TCP_PORT)];
        listeners.extend(STREAMED.iter().map(|(n, _, p, port)| listener(n, p, *port)));
        let mut groups = vec![self.group("web", self.web_algorithm, "tcp", &self.web)];
        for (name, algorithm, proto, _) in STREAMED {
            groups.push(self.group(name, algorithm, proto, &self.streamed));
        }
        if self.reversed {
            listeners.reverse();
            groups.reverse();
        }
        if self.new_first {
            listeners.insert(0, listener("new", "tcp", 84));
            groups.insert(0, self.group("new", "hash", "tcp", &[0, 1]));
        }
        format!(
            "interface: eth0\nlisteners:\n{}target_groups:\n{}",
            listeners.concat(),
            groups.concat()
        )
    }

    fn group(&self, name: &str, algorithm: &str, proto: &str, targets: &[usize]) -> String {
        let mut y =
            format!("  - name: {name}\n    protocol: {proto}\n    algorithm: {algorithm}\n");
        if let (Some((delay, rebalance)), false) = (self.streamed_leave, name == "web") {
            let mode = if rebalance {
                "rebalance"
            } else {
                "no_rebalance"
            };
            y += &format!(
                "    deregistration_delay_s: {delay}\n    target_failover: {{ on_unhealthy: {mode}, on_deregistration: {mode} }}\n"
            );
        }
        if name == "rr" && self.rr_checked {
            y += "    health_check: { type: tcp, interval_s: 2, timeout_s: 1, healthy_threshold: 2, unhealthy_threshold: 2 }\n";
        }
        y += "    targets:\n";
        for &i in targets {
            let weight = if name == "web" {
                self.web_weights[i]
            } else {
                256
            };
            y += &format!("      - {{ ip: {}, weight: {weight} }}\n", TARGETS[i].v4);
        }
        y
    }
}

/// `PER_GROUP` streams per streamed group, each from its own client address
/// and port.
fn specs() -> Vec<Spec> {
    let mut out = Vec::new();
    for (g, (name, _, proto, port)) in STREAMED.iter().enumerate() {
        for i in 0..PER_GROUP {
            let src = SocketAddr::new(
                topo::client4(i % topo::CLIENT_ADDRS).into(),
                31000 + (g * 100 + i) as u16,
            );
            out.push(Spec {
                name: format!("{name}#{i}"),
                proto: if *proto == "udp" {
                    Proto::Udp
                } else {
                    Proto::Tcp
                },
                src,
                dst: SocketAddr::new(VIP4.into(), *port),
            });
        }
    }
    out
}

fn lines(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Writes `yaml` as the policy, sends SIGHUP, and waits for lb to log that
/// the reload was applied (`policy reloaded`) or refused: true if applied.
fn reload(lb: &LbProcess, policy: &Path, yaml: &str) -> bool {
    let log = lb.log();
    let (done, refused) = (
        lines(&log, "policy reloaded"),
        lines(&log, "policy reload refused"),
    );
    std::fs::write(policy, yaml).unwrap();
    let pid = lb.pid().expect("lb running") as i32;
    signal::kill(Pid::from_raw(pid), signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let log = lb.log();
        if lines(&log, "policy reloaded") > done {
            return true;
        }
        if lines(&log, "policy reload refused") > refused {
            return false;
        }
        assert!(Instant::now() < deadline, "no reload within {T:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_none_broken(reports: &[Report], steps: &streams::Steps) {
    let broken = streams::broken(reports);
    assert!(
        broken.is_empty(),
        "{} of {} streams broke:\n{}\nsteps:\n{}\nstreams per target: {:?}",
        broken.len(),
        reports.len(),
        broken.join("\n"),
        steps.show(),
        streams::by_target(reports)
    );
}

/// `n` new TCP connections to the VIP's `port`, from client address 7,
/// ports `first..`: how many each target answered.
fn new_connections(lab: &Lab, port: u16, first: u16, n: u16) -> [usize; 3] {
    let names: Vec<String> = lab.run_in(Node::Client, || {
        (0..n)
            .map(|i| {
                let src = SocketAddr::new(topo::client4(7).into(), first + i);
                let dst = SocketAddr::new(VIP4.into(), port);
                client::lines_ask(src, dst, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("new connection {src} -> {dst}: {e}"))
            })
            .collect()
    });
    TARGETS.map(|t| names.iter().filter(|n| *n == t.name).count())
}

/// Reloads that remove, add or reorder targets, groups and listeners
/// elsewhere in the file, or change another group's weights and algorithm,
/// break no connection; and new connections follow each new policy.
#[test]
fn reloads_elsewhere_break_no_connection() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(5, T);
    let changes = [
        (
            "t2 removed from web",
            Policy {
                web: vec![0, 2],
                ..Policy::default()
            },
        ),
        (
            "a listener and its group added at the top of the file",
            Policy {
                web: vec![0, 2],
                new_first: true,
                ..Policy::default()
            },
        ),
        (
            "t2 back in web",
            Policy {
                new_first: true,
                ..Policy::default()
            },
        ),
        (
            "groups and listeners in reverse order, web's targets too",
            Policy {
                web: vec![2, 1, 0],
                new_first: true,
                reversed: true,
                ..Policy::default()
            },
        ),
        (
            "web's weights and algorithm changed",
            Policy {
                web_weights: [256, 128, 64],
                web_algorithm: "round_robin",
                new_first: true,
                reversed: true,
                ..Policy::default()
            },
        ),
        ("the added listener and group removed", Policy::default()),
    ];
    for (what, policy) in changes {
        steps.push(what);
        assert!(
            reload(&s.lb, &s.policy, &policy.yaml()),
            "{what}: refused:\n{}",
            s.lb.log()
        );
        streams.wait_answers(5, T);
        if policy.web == [0, 2] {
            let spread = new_connections(&s.lab, topo::TCP_PORT, 40000, 20);
            assert_eq!(
                spread[1], 0,
                "{what}: new connections reached t2: {spread:?}"
            );
        }
    }
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
}

/// Hostile (nested aliases, deep nesting), empty, `null`, comments-only,
/// listener-less and half-written files on reload are refused: lb keeps running with the last good policy, says why
/// in its log and in `lb status`, and no connection breaks; the next good
/// file is taken.
#[test]
fn bad_reloads_are_refused_and_break_no_connection() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(5, T);
    let good = Policy::default().yaml();
    // Cut inside a target's flow mapping: what an editor's truncate-then-write
    // leaves for a moment.
    let cut = good.rfind("{ ip: ").unwrap() + "{ ip: 10.0".len();
    let groups_only = good[good.find("target_groups:").unwrap()..].to_string();
    // Hostile files: each is refused in bounded time and memory (a policy
    // is read with limits: docs/policy.md).
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        laughs += &format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        );
    }
    let deep = format!("{}x\n", "- ".repeat(1000));
    let bad = [
        ("a billion laughs", laughs),
        ("nesting 1,000 deep", deep),
        ("an empty file", String::new()),
        ("null", "null\n".to_string()),
        ("~", "~\n".to_string()),
        ("comments only", "# nothing here yet\n".to_string()),
        ("no listeners", format!("interface: eth0\n{groups_only}")),
        ("a half-written file", good[..cut].to_string()),
    ];
    for (what, text) in bad {
        steps.push(what);
        assert!(
            !reload(&s.lb, &s.policy, &text),
            "{what} was taken:\n{}",
            s.lb.log()
        );
        let status = s.lb.report().unwrap();
        let error = status.0["errors"]["policy"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{what}: no error in lb status: {}",
            status.0["errors"]
        );
        streams.wait_answers(3, T);
    }
    assert!(reload(&s.lb, &s.policy, &good), "the good policy again");
    let status = s.lb.report().unwrap();
    assert!(
        status.0["errors"]["policy"].is_null(),
        "{}",
        status.0["errors"]
    );
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
}

/// Whether an XDP program is attached to the lab lb's eth0.
fn xdp_attached(lab: &Lab) -> bool {
    let link = lab
        .exec(Node::Lb, &["ip", "-d", "link", "show", "eth0"])
        .unwrap();
    link.contains("prog/xdp")
}

/// The round-robin group's spread of 30 new connections is even: 10 each
/// (the shared position carries on across restarts).
fn assert_round_robin(lab: &Lab, first: u16, steps: &streams::Steps) {
    let spread = new_connections(lab, MORE_LINES_PORTS[0], first, 30);
    assert!(
        spread.iter().all(|&n| (9..=11).contains(&n)),
        "new round-robin connections {spread:?}\nsteps:\n{}",
        steps.show()
    );
}

/// `kill -9` under traffic: nothing breaks while lb is down (the pinned data
/// plane forwards on), nor when it starts again and adopts the data plane;
/// new connections then follow the policy. The same for SIGTERM and a start,
/// the upgrade path.
#[test]
fn a_killed_or_stopped_lb_breaks_no_connection_and_is_adopted() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(5, T);
    let (mut lb, lab, _serial) = s.into_parts();
    let policy = lab.dir().join("policy.yaml");
    let mut first = 41000;
    for how in ["kill -9", "SIGTERM"] {
        steps.push(format!("{how} lb"));
        let status = match how {
            "kill -9" => lb.kill(),
            _ => lb.stop(),
        }
        .unwrap();
        if how == "SIGTERM" {
            assert!(status.success(), "lb exited with {status}");
        }
        assert!(xdp_attached(&lab), "after {how}, eth0 has no XDP program");
        // Traffic goes on with lb down: old flows and new ones.
        streams.wait_answers(10, T);
        assert_round_robin(&lab, first, &steps);
        first += 100;
        steps.push("start lb again");
        lb = lab
            .start_lb(&policy, &["--xdp-mode", "native"])
            .unwrap_or_else(|e| panic!("restart after {how}: {e}"));
        let report = lb.report().unwrap();
        assert_eq!(
            report.0["data_plane"]["adopted"], true,
            "after {how}: {}",
            report.0["data_plane"]
        );
        assert!(
            lb.log().contains("replaced in place"),
            "the program was not replaced in the pinned link:\n{}",
            lb.log()
        );
        streams.wait_answers(10, T);
        assert_round_robin(&lab, first, &steps);
        first += 100;
    }
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
    drop(lb);
}

/// A start with a changed policy: t2 was removed from every streamed group
/// while lb was down. It drains from the start, as if a reload had removed
/// it: its flows go on, and no other flow notices. A reload with
/// `deregistration_delay_s: 0` and `rebalance` then moves its flows (and
/// so breaks them), and only them.
#[test]
fn a_start_with_a_target_removed_drains_it() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(5, T);
    let (lb, lab, _serial) = s.into_parts();
    steps.push("SIGTERM lb");
    lb.stop().unwrap();
    let without_t2 = Policy {
        streamed: vec![0, 2],
        ..Policy::default()
    };
    let policy = lab.write_file("policy.yaml", &without_t2.yaml());
    steps.push("start lb without t2 in the streamed groups");
    let lb = lab
        .start_lb(&policy, &["--xdp-mode", "native"])
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let t2: IpAddr = TARGETS[1].v4.into();
    let status = lb.report().unwrap();
    for (group, ..) in STREAMED {
        let target = status
            .target(group, t2)
            .unwrap_or_else(|| panic!("{group}: t2 gone at once\n{}", status.show(Some(group))));
        assert_eq!(target["state"], "draining", "{group}: {target}");
        assert_eq!(target["provisioning"], "being_removed", "{group}");
    }
    streams.wait_answers(5, T);
    assert_eq!(streams.broken_now(), 0, "a stream broke while t2 drains");
    steps.push("reload: deregistration_delay_s 0, rebalance");
    let moved = Policy {
        streamed_leave: Some((0, true)),
        ..without_t2
    };
    assert!(reload(&lb, &policy, &moved.yaml()), "{}", lb.log());
    let on_t2 = streams.on("t2");
    let deadline = Instant::now() + T;
    while streams.broken_now() < on_t2 {
        assert!(
            Instant::now() < deadline,
            "t2's streams did not move:\n{}",
            steps.show()
        );
        std::thread::sleep(streams::INTERVAL);
    }
    streams.wait_answers(5, T);
    let reports = streams.stop();
    let (on_t2, others): (Vec<Report>, Vec<Report>) =
        reports.into_iter().partition(|r| r.target == "t2");
    assert!(
        !on_t2.is_empty() && on_t2.iter().all(|r| r.broken.is_some()),
        "{on_t2:?}"
    );
    assert_none_broken(&others, &steps);
    drop(lb);
}

/// A restart does not send new flows to a target that was unhealthy: the
/// verdicts are saved with the data plane and restored.
#[test]
fn health_verdicts_survive_a_restart() {
    let checked = Policy {
        rr_checked: true,
        ..Policy::default()
    };
    let s = LabRun::start_yaml(&checked.yaml(), |_| {});
    let t3: IpAddr = TARGETS[2].v4.into();
    s.lab
        .stop_port(Node::Target(2), MORE_LINES_PORTS[0])
        .unwrap();
    s.lb.wait_for(T, "t3 unhealthy", |st: &Status| {
        (st.state("rr", t3) == Some("unhealthy")).then_some(())
    })
    .unwrap();
    let (lb, lab, _serial) = s.into_parts();
    lb.kill().unwrap();
    let policy = lab.dir().join("policy.yaml");
    let lb = lab
        .start_lb(&policy, &["--xdp-mode", "native"])
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let status = lb.report().unwrap();
    assert_eq!(
        status.state("rr", t3),
        Some("unhealthy"),
        "restored verdict: {}",
        status.show(Some("rr"))
    );
    // New connections go to t1 and t2 only (t3's port is closed: one sent
    // there would be refused).
    let spread = new_connections(&lab, MORE_LINES_PORTS[0], 42000, 20);
    assert_eq!(spread[2], 0, "{spread:?}");
    drop(lb);
}

/// `lb detach` while lb runs is refused (and lb runs with its open files
/// limit raised to the hard one); after lb stopped (its data plane
/// still forwarding), it removes the XDP program, every pinned object and
/// the runtime state: the VIP is the kernel's again.
#[test]
fn detach_leaves_nothing_behind() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let refused = s.lb.detach().unwrap_err().to_string();
    assert!(refused.contains("another lb runs"), "{refused}");
    // lb raised its open files limit to the hard one at start.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.lb.pid().unwrap())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        files[3], files[4],
        "soft and hard open files limits: {files:?}"
    );
    let (lb, lab, _serial) = s.into_parts();
    let dst = SocketAddr::new(VIP4.into(), topo::TCP_PORT);
    let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let ask = || {
        lab.run_in(Node::Client, || {
            client::tcp_ask(any4, dst, Duration::from_secs(3))
        })
    };
    let log = lb.log();
    let status = lb.stop().unwrap_or_else(|e| panic!("stop: {e}\n{log}"));
    assert!(status.success(), "lb exited with {status}; log:\n{log}");
    let answer = ask();
    assert!(
        answer.as_deref().is_ok_and(|n| n.starts_with('t')),
        "with lb stopped the data plane forwards: {answer:?}"
    );
    let ns = lab.ns(Node::Lb);
    let said = lb_tests::lb::detach(&ns, &lab.options().lb_bin, "eth0").unwrap();
    assert!(said.contains("XDP program detached"), "{said}");
    assert!(!xdp_attached(&lab), "eth0 still has an XDP program");
    for root in ["/sys/fs/bpf/lb", "/var/lib/lb"] {
        let dir = Path::new(root).join(&ns);
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    assert!(
        ask().is_err(),
        "after detach, {dst} is the kernel's (nothing listens)"
    );
}

/// Makes the pinned map `name` of the lab lb's data plane read-only for
/// syscalls (BPF_MAP_FREEZE, for good): the next write of it by `lb` fails
/// as a write of the maps may fail in production (out of memory, say).
#[allow(unsafe_code)]
fn freeze(lab: &Lab, name: &str) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let pin = Path::new(lb_user::dataplane::pin::BPFFS_ROOT)
        .join(lab.ns(Node::Lb))
        .join("eth0")
        .join(name);
    let map =
        aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    // SAFETY: bpf_attr is a C union of integers; zeros are its defaults.
    let mut attr: aya_obj::generated::bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY: a valid bpf_attr of the size passed, for the freeze command.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_MAP_FREEZE as libc::c_int,
            &mut attr as *mut _,
            std::mem::size_of::<aya_obj::generated::bpf_attr>() as libc::c_uint,
        )
    };
    assert_eq!(ret, 0, "freeze {name}: {}", std::io::Error::last_os_error());
}

/// A write of the maps that fails never ends lb: it is logged, shown in
/// `lb status` and retried, the data plane forwards with what it holds, and
/// the next write that works clears the error.
#[test]
fn a_failed_write_of_the_maps_is_retried_and_breaks_nothing() {
    let s = LabRun::start_yaml(&Policy::default().yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(5, T);
    // Removing a target writes its record first: with the records frozen,
    // nothing of the new plan reaches the data plane.
    freeze(&s.lab, lb_common::map_names::TARGET_IDS);
    steps.push("t2 removed from web, the records frozen");
    let without_t2 = Policy {
        web: vec![0, 2],
        ..Policy::default()
    };
    std::fs::write(&s.policy, without_t2.yaml()).unwrap();
    signal::kill(
        Pid::from_raw(s.lb.pid().unwrap() as i32),
        signal::Signal::SIGHUP,
    )
    .unwrap();
    let waited =
        s.lb.wait_for(T, "the failed write in lb status", |st: &Status| {
            st.0["errors"]["apply"].as_str().map(str::to_string)
        })
        .unwrap();
    assert!(waited.value.contains("TARGET_IDS"), "{}", waited.value);
    // Retried (1 s, then 2 s later), still failing; lb runs on.
    let deadline = Instant::now() + T;
    while lines(&s.lb.log(), "writing the maps again") < 2 {
        assert!(Instant::now() < deadline, "no retries:\n{}", s.lb.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    streams.wait_answers(5, T);
    // Back to a policy the frozen records already hold: written, error gone.
    steps.push("the first policy again");
    assert!(reload(&s.lb, &s.policy, &Policy::default().yaml()));
    let status = s.lb.report().unwrap();
    assert!(
        status.0["errors"]["apply"].is_null(),
        "{}",
        status.0["errors"]
    );
    streams.wait_answers(5, T);
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
}
