//! The local API under use and abuse, in the namespace lab: `lb stats`
//! against known traffic, health verdicts while clients abuse the socket,
//! and a file at the socket's path. Needs root and the `lb` binary.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    LabRun, Node, client,
    lb::{LbProcess, Start},
    metrics::{self, ADDR},
    policy::{HealthCheck, LabPolicy},
    topo::{self, TARGETS, TCP_PORT, UDP_PORT, VIP4},
};
use lb_user::dataplane::reader::monotonic_now;
use serde_json::Value;

fn lb_bin() -> PathBuf {
    lb_tests::lab::workspace_bin("LB_BIN", "lb")
}

/// Paced traffic for `lb stats`: datagrams every `PACE` on `SOCKETS`
/// flows, for `SENDING`.
const PACE: Duration = Duration::from_millis(20);
const SENDING: Duration = Duration::from_secs(4);
const SOCKETS: usize = 4;
const PAYLOAD: usize = 60;
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// How far a datagram's count may be from the moment its send() returned,
/// either way: the veth, the bridge and XDP on the way (microseconds when
/// the machine is idle), and the read of the listener's counters just
/// before the sample's time is taken. Datagrams sent within this much of
/// a window's edge may count in either window.
const EDGE: Duration = Duration::from_millis(15);

/// Sends the paced traffic from the client; returns each send's
/// CLOCK_MONOTONIC time and the sockets (kept open: an answer to a closed
/// port would bring an ICMP error to the VIP, which lb forwards).
fn paced_traffic(s: &LabRun) -> (Vec<Duration>, Vec<std::net::UdpSocket>) {
    let dst = SocketAddr::new(VIP4.into(), UDP_PORT);
    s.lab.run_in(Node::Client, || {
        let sockets: Vec<_> = (0..SOCKETS)
            .map(|i| {
                let src = SocketAddr::new(topo::client4(1).into(), 42_000 + i as u16);
                client::udp_socket(src, dst).expect("udp socket")
            })
            .collect();
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut next = start;
        while next < start + SENDING {
            thread::sleep(next.saturating_duration_since(Instant::now()));
            sockets[sent.len() % SOCKETS]
                .send(&[b'y'; PAYLOAD])
                .expect("send");
            sent.push(monotonic_now());
            next += PACE;
        }
        (sent, sockets)
    })
}

/// `lb stats dns --watch --interval 1 --json` while paced traffic flows:
/// every window's count is the datagrams sent in it (up to those within
/// `EDGE` of its edges), its rates are its counts over its length, and the
/// windows together count every datagram once.
#[test]
fn stats_rates_follow_known_traffic() {
    let s = LabRun::start(&LabPolicy::default());
    let mut watch = Command::new(lb_bin())
        .args([
            "stats",
            "dns",
            "--watch",
            "--interval",
            "1",
            "--json",
            "--socket",
        ])
        .arg(s.lb.socket())
        .stdout(Stdio::piped())
        .spawn()
        .expect("lb stats");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut windows: Vec<Value> = Vec::new();
    let mut next = |what: &str| -> Value {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{what}: lb stats ended"))
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    };
    // Traffic starts once a window has ended, and stops two windows
    // before the last one read.
    windows.push(next("first window"));
    let (sent, _sockets) = paced_traffic(&s);
    let until = sent.last().copied().unwrap() + Duration::from_millis(1);
    loop {
        let w = next("window");
        let done = ns(&w["from_ns"]) > until + Duration::from_secs(1);
        windows.push(w);
        if done {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = watch.wait().unwrap();
    assert!(status.success(), "lb stats --watch after Ctrl-C: {status}");
    check_windows(&windows, &sent);
    human_table(&s);
}

fn ns(v: &Value) -> Duration {
    Duration::from_nanos(v.as_u64().expect("nanoseconds"))
}

/// Sends at or after `from` and before `to`.
fn sent_in(sent: &[Duration], from: Duration, to: Duration) -> u64 {
    sent.iter().filter(|t| **t >= from && **t < to).count() as u64
}

fn check_windows(windows: &[Value], sent: &[Duration]) {
    let (mut total, mut total_targets, mut flows) = (0, 0, 0);
    for (i, w) in windows.iter().enumerate() {
        let (from, to) = (ns(&w["from_ns"]), ns(&w["to_ns"]));
        if i > 0 {
            assert_eq!(from, ns(&windows[i - 1]["to_ns"]), "windows are contiguous");
        }
        let seconds = w["interval_s"].as_f64().unwrap();
        assert!((seconds - (to - from).as_secs_f64()).abs() < 1e-6);
        let l = &w["listeners"][0];
        assert_eq!(l["name"], "dns", "{w}");
        let packets = l["packets"].as_u64().unwrap();
        let lo = sent_in(sent, from + EDGE, to.saturating_sub(EDGE));
        let hi = sent_in(sent, from.saturating_sub(EDGE), to + EDGE);
        assert!(
            (lo..=hi).contains(&packets),
            "window {i} ({seconds:.3} s): {packets} packets counted, {lo}..={hi} sent in it"
        );
        let rate = l["packets_per_s"].as_f64().unwrap();
        assert!((rate - packets as f64 / seconds).abs() < 1e-6, "{w}");
        assert_eq!(l["bytes"].as_u64().unwrap(), packets * FRAME);
        let bits = l["bits_per_s"].as_f64().unwrap();
        assert!(
            (bits - (packets * FRAME * 8) as f64 / seconds).abs() < 1e-3,
            "{w}"
        );
        let targets: u64 = w["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["packets"].as_u64().unwrap())
            .sum();
        assert!(
            (lo..=hi).contains(&targets),
            "window {i}: targets {targets}, {lo}..={hi}"
        );
        total += packets;
        total_targets += targets;
        flows += l["new_flows"].as_u64().unwrap();
    }
    assert_eq!(total, sent.len() as u64, "every datagram counted once");
    assert_eq!(total_targets, sent.len() as u64);
    assert_eq!(flows, SOCKETS as u64);
}

/// `lb stats dns` once: the table names the listener and its targets.
fn human_table(s: &LabRun) {
    let out = s.lb.client(&["stats", "dns", "--interval", "0.2"]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("rates over 0.2"), "{}", out.stdout);
    assert!(out.stdout.contains("dns (group dns)"), "{}", out.stdout);
    for t in &TARGETS {
        assert!(
            out.stdout.contains(&format!("-> {}", t.ip(false))),
            "{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("group web"), "{}", out.stdout);
    let unknown = s.lb.client(&["stats", "nosuch"]).unwrap();
    assert!(
        unknown.code == Some(1) && unknown.stderr.contains("no target group named \"nosuch\""),
        "{unknown:?}"
    );
}

/// Abuse of the API socket, until `stop` (set by `finish`, or on drop when
/// the test fails before it) or `ABUSE_AT_MOST` has passed: clients that
/// connect and send nothing, one that sends a byte a second, and floods of
/// connections.
struct Abuse {
    stop: Arc<AtomicBool>,
    until: Instant,
    threads: Vec<thread::JoinHandle<()>>,
    busy: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    timed_out: Arc<AtomicUsize>,
}

impl Abuse {
    fn start(socket: &Path) -> Abuse {
        let mut abuse = Abuse {
            stop: Arc::new(AtomicBool::new(false)),
            until: Instant::now() + ABUSE_AT_MOST,
            threads: Vec::new(),
            busy: Arc::new(AtomicUsize::new(0)),
            answered: Arc::new(AtomicUsize::new(0)),
            timed_out: Arc::new(AtomicUsize::new(0)),
        };
        for _ in 0..20 {
            abuse.spawn(socket, Self::silent);
        }
        abuse.spawn(socket, Self::trickle);
        for _ in 0..2 {
            abuse.spawn(socket, Self::flood);
        }
        abuse
    }

    fn spawn(&mut self, socket: &Path, f: fn(&Abuse, &Path)) {
        let this = Abuse {
            stop: self.stop.clone(),
            until: self.until,
            threads: Vec::new(),
            busy: self.busy.clone(),
            answered: self.answered.clone(),
            timed_out: self.timed_out.clone(),
        };
        let socket = socket.to_path_buf();
        self.threads.push(thread::spawn(move || f(&this, &socket)));
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.until
    }

    /// What lb says to a client (read until it closes, 15 s at most).
    fn answer(&self, mut stream: UnixStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let counter = if text.contains("busy:") {
            &self.busy
        } else if text.contains("no whole request line") {
            &self.timed_out
        } else if text.contains("\"interface\"") {
            &self.answered
        } else {
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Connects and sends nothing, again and again.
    fn silent(&self, socket: &Path) {
        while !self.stopped() {
            if let Ok(stream) = UnixStream::connect(socket) {
                self.answer(stream);
            }
        }
    }

    /// Sends a byte a second, never a whole line.
    fn trickle(&self, socket: &Path) {
        while !self.stopped() {
            let Ok(mut stream) = UnixStream::connect(socket) else {
                continue;
            };
            let reader = stream.try_clone().unwrap();
            for &b in b"status-status-status" {
                if self.stopped() || stream.write_all(&[b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_secs(1));
            }
            drop(stream);
            self.answer(reader);
        }
    }

    /// Asks for the status as fast as it is answered or refused.
    fn flood(&self, socket: &Path) {
        while !self.stopped() {
            if let Ok(mut stream) = UnixStream::connect(socket) {
                let _ = stream.write_all(b"status\n");
                self.answer(stream);
            }
        }
    }

    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        (get(&self.busy), get(&self.answered), get(&self.timed_out))
    }
}

impl Drop for Abuse {
    /// A test that fails before `finish` stops the threads too (the lab is
    /// gone then, so they would spin on failed connects).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest the abuse runs, whatever the test does.
const ABUSE_AT_MOST: Duration = Duration::from_secs(300);

/// The promised time from a service's stop to its target's unhealthy
/// verdict, as tests/tests/health.rs derives it: `unhealthy_threshold`
/// intervals, a timeout, one interval for a probe in flight, 2 s of slack.
fn unhealthy_within(check: &HealthCheck) -> Duration {
    let interval = Duration::from_secs(check.interval_s.into());
    interval * check.unhealthy_threshold
        + Duration::from_secs(check.timeout_s.into())
        + interval
        + Duration::from_secs(2)
}

/// While the socket is abused (20 silent clients, one sending a byte a
/// second, two flooding it with status requests), a stopped service is
/// still found unhealthy, and its target taken out of the maps (seen
/// through the metrics endpoint, which the abuse does not touch), within
/// the promised time; the floods are told `busy` and the slow clients cut
/// off, and the API answers normally once it stops.
#[test]
fn an_abused_socket_does_not_delay_health_verdicts() {
    let check = HealthCheck::tcp();
    let s = LabRun::start_args(&LabPolicy::checked(check.clone()), &["--metrics", ADDR]);
    let t2 = TARGETS[1].ip(false).to_string();
    let state = |st: &str| {
        let m = metrics::scrape(&s.lab, ADDR);
        m.sum(
            "lb_target_state",
            &[("group", "web"), ("target", &t2), ("state", st)],
        ) == 1.0
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state("healthy") {
        assert!(
            Instant::now() < deadline,
            "t2 never healthy\n{}",
            s.lb.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let abuse = Abuse::start(s.lb.socket());
    thread::sleep(Duration::from_secs(2));
    s.lab.stop_port(Node::Target(1), TCP_PORT).unwrap();
    let stopped = Instant::now();
    let promised = unhealthy_within(&check);
    while !state("unhealthy") {
        assert!(
            stopped.elapsed() < promised,
            "t2 not unhealthy within {promised:?} of its service stopping\n{}",
            s.lb.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = stopped.elapsed();
    // Keep abusing past the read timeout (10 s), so that slow clients are
    // seen cut off.
    thread::sleep(Duration::from_secs(12).saturating_sub(took));
    let (busy, answered, timed_out) = abuse.finish();
    eprintln!(
        "unhealthy {took:?} after the stop (promised {promised:?}); busy {busy}, answered {answered}, cut off {timed_out}"
    );
    assert!(busy > 0, "no client was told busy");
    assert!(answered > 0, "no status request was answered under abuse");
    assert!(timed_out > 0, "no slow client was cut off");
    let st = s.lb.report().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(st.state("web", TARGETS[1].ip(false)), Some("unhealthy"));
}

/// `lb run --socket PATH` where PATH is a regular file (a typo naming the
/// policy, say): lb refuses to start, names the path, leaves the file as
/// it was and changes nothing on the interface.
#[test]
fn a_file_at_the_socket_path_is_left_alone() {
    let _serial = lb_tests::run::serial();
    let lab = lb_tests::Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    let file = lab.write_file("precious.yaml", "listeners: [] # not a socket\n");
    let policy = lab.write_file("policy2.yaml", &LabPolicy::default().yaml());
    let ns = lab.ns(Node::Lb);
    let bin = lb_bin();
    let started = LbProcess::start(&Start {
        ns: &ns,
        bin: &bin,
        config: &policy,
        socket: &file,
        iface: "eth0",
        extra: &[],
        timeout: Duration::from_secs(30),
        echo: false,
    });
    let err = match started {
        Ok(_) => panic!("lb started over a file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&file.display().to_string()) && err.contains("is not a socket"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "listeners: [] # not a socket\n"
    );
    let pins = Path::new("/sys/fs/bpf/lb").join(&ns).join("eth0");
    assert!(!pins.exists(), "{} made", pins.display());
}
