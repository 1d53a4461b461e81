//! Long-lived streams through the load balancer, counted per connection: the
//! measure of what a change or a restart of `lb` breaks.
//!
//! A TCP stream is a connection to a lab server's lines port that sends a
//! line every [`INTERVAL`] and reads the name of the target that answers
//! (`client::Held`). A UDP stream is one socket (one flow) that sends a
//! datagram every [`INTERVAL`] to the VIP's UDP port and reads the name in
//! the answer. A stream is *broken* when its connection fails (reset,
//! closed, an answer overdue by [`ANSWER_TIMEOUT`]), when another target
//! answers than the first one (the flow moved: over TCP the new target would
//! reset it anyway), or, over UDP, when [`UDP_LOST_IN_A_ROW`] datagrams in a
//! row go unanswered. A broken stream stops.
//!
//! Each stream runs on a thread of its own until [`Streams::stop`] or
//! [`MAX_RUN`], whichever comes first.
use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    Lab, Node,
    client::{self, Held, Proto},
};

/// Time between two exchanges of a stream.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How long an answer may take (TCP retransmits within it on a loaded
/// machine).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP stream with this many unanswered datagrams in a row is broken.
pub const UDP_LOST_IN_A_ROW: u64 = 3;
/// No stream runs longer than this.
pub const MAX_RUN: Duration = Duration::from_secs(600);

/// One stream to open: a name for reports, the transport, from where, to
/// where.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What happened to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub proto: Proto,
    pub src: SocketAddr,
    /// The target that answered first.
    pub target: String,
    /// Exchanges answered (by that target).
    pub answered: u64,
    /// UDP datagrams that got no answer (not in a row enough to break it).
    pub lost: u64,
    /// Why it broke, and when (since the streams started); None: it went on.
    pub broken: Option<(Duration, String)>,
}

/// Progress of one running stream, shared with its thread.
#[derive(Debug, Default)]
struct Progress {
    answered: AtomicU64,
    broken: AtomicBool,
}

pub struct Streams {
    started: Instant,
    /// The target each stream was on when it opened.
    targets: Vec<String>,
    stop: Arc<AtomicBool>,
    progress: Vec<Arc<Progress>>,
    threads: Vec<JoinHandle<Report>>,
}

/// An opened stream, before its thread takes it.
enum Opened {
    Tcp(Held),
    Udp(UdpSocket),
}

impl Streams {
    /// Opens every stream from the lab's client and asks each once (which
    /// target it is on), then keeps them going. Panics if one cannot be
    /// opened.
    pub fn start(lab: &Lab, specs: &[Spec]) -> Streams {
        Streams::start_from(lab, Node::Client, specs)
    }

    /// Like [`Streams::start`], from `node` (the remote client behind the
    /// router, say).
    pub fn start_from(lab: &Lab, node: Node, specs: &[Spec]) -> Streams {
        let opened: Vec<(Opened, String)> = lab.run_in(node, || {
            specs
                .iter()
                .map(|spec| open(spec).unwrap_or_else(|e| panic!("stream {}: {e}", spec.name)))
                .collect()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut progress = Vec::new();
        let mut threads = Vec::new();
        let targets = opened.iter().map(|(_, t)| t.clone()).collect();
        for (spec, (stream, target)) in specs.iter().zip(opened) {
            let p = Arc::new(Progress::default());
            progress.push(p.clone());
            let (spec, stop) = (spec.clone(), stop.clone());
            let thread = thread::Builder::new()
                .name(format!("stream {}", spec.name))
                .spawn(move || run(spec, stream, target, &p, &stop, started))
                .expect("spawn a stream thread");
            threads.push(thread);
        }
        Streams {
            started,
            targets,
            stop,
            progress,
            threads,
        }
    }

    /// Waits until every stream that is not broken has answered `n` more
    /// exchanges (or `timeout` passes: then panics, naming the slow ones),
    /// so that traffic demonstrably flowed through what the test did.
    pub fn wait_answers(&self, n: u64, timeout: Duration) {
        let from: Vec<u64> = self.answered();
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = self
                .progress
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    !p.broken.load(Ordering::Relaxed)
                        && p.answered.load(Ordering::Relaxed) < from[*i] + n
                })
                .map(|(i, _)| i)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "streams {behind:?} did not answer {n} more exchanges within {timeout:?}"
            );
            thread::sleep(INTERVAL / 2);
        }
    }

    /// When the streams started: [`Report::broken`] times count from it.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How many streams opened on each target, by name.
    pub fn on(&self, target: &str) -> usize {
        self.targets.iter().filter(|t| *t == target).count()
    }

    /// Exchanges answered so far, per stream.
    fn answered(&self) -> Vec<u64> {
        self.progress
            .iter()
            .map(|p| p.answered.load(Ordering::Relaxed))
            .collect()
    }

    /// How many streams are broken now.
    pub fn broken_now(&self) -> usize {
        self.progress
            .iter()
            .filter(|p| p.broken.load(Ordering::Relaxed))
            .count()
    }

    /// Stops every stream and returns their reports (TCP connections are
    /// closed as they go).
    pub fn stop(self) -> Vec<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a stream thread panicked"))
            .collect()
    }
}

/// The reports of the broken streams, one line each, for assertions.
pub fn broken(reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| {
            let (at, why) = r.broken.as_ref()?;
            Some(format!(
                "{} ({} {} on {}, {} answered): broke after {:.1} s: {why}",
                r.name,
                r.proto,
                r.src,
                r.target,
                r.answered,
                at.as_secs_f64()
            ))
        })
        .collect()
}

/// Opens a stream and asks once: the stream and its target.
fn open(spec: &Spec) -> io::Result<(Opened, String)> {
    match spec.proto {
        Proto::Tcp => {
            let mut held = Held::open(spec.src, spec.dst, ANSWER_TIMEOUT)?;
            let target = held.ask()?;
            Ok((Opened::Tcp(held), target))
        }
        Proto::Udp => {
            let socket = client::udp_socket(spec.src, spec.dst)?;
            socket.set_read_timeout(Some(INTERVAL * 5))?;
            // The first answer may need a resend (the neighbour entries of a
            // fresh lab).
            for _ in 0..UDP_LOST_IN_A_ROW {
                if let Ok(target) = udp_exchange(&socket) {
                    return Ok((Opened::Udp(socket), target));
                }
            }
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer to the first datagrams",
            ))
        }
    }
}

/// One datagram and its answer.
fn udp_exchange(socket: &UdpSocket) -> io::Result<String> {
    socket.send(b"who?\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

/// A stream's thread: an exchange every `INTERVAL` until stopped, broken or
/// `MAX_RUN` is up.
fn run(
    spec: Spec,
    mut stream: Opened,
    target: String,
    progress: &Progress,
    stop: &AtomicBool,
    started: Instant,
) -> Report {
    let mut report = Report {
        name: spec.name,
        proto: spec.proto,
        src: spec.src,
        target,
        answered: 1,
        lost: 0,
        broken: None,
    };
    progress.answered.store(1, Ordering::Relaxed);
    let mut lost_in_a_row = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
        next += INTERVAL;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let answer = match &mut stream {
            Opened::Tcp(held) => held.ask(),
            Opened::Udp(socket) => udp_exchange(socket),
        };
        let why = match answer {
            Ok(name) if name == report.target => {
                report.answered += 1;
                progress.answered.store(report.answered, Ordering::Relaxed);
                lost_in_a_row = 0;
                continue;
            }
            Ok(name) => format!("answered by {name} instead of {}", report.target),
            Err(e)
                if spec.proto == Proto::Udp
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                report.lost += 1;
                lost_in_a_row += 1;
                if lost_in_a_row < UDP_LOST_IN_A_ROW {
                    continue;
                }
                format!("{lost_in_a_row} datagrams in a row unanswered")
            }
            Err(e) => format!("{:?}: {e}", e.kind()),
        };
        report.broken = Some((started.elapsed(), why));
        progress.broken.store(true, Ordering::Relaxed);
        break;
    }
    report
}

/// Which streams each target serves: (target name, stream names).
pub fn by_target(reports: &[Report]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in reports {
        match out.iter_mut().find(|(t, _)| *t == r.target) {
            Some((_, names)) => names.push(r.name.clone()),
            None => out.push((r.target.clone(), vec![r.name.clone()])),
        }
    }
    out.sort();
    out
}

/// Shared record of what a test did, for failure messages.
#[derive(Debug, Default, Clone)]
pub struct Steps(Arc<Mutex<Vec<String>>>);

impl Steps {
    pub fn push(&self, step: impl Into<String>) {
        let step = step.into();
        eprintln!("step: {step}");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }

    pub fn show(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}
