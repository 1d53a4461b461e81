//! Observing `lb` at scale (`observe`): `lb run --metrics` in a lab with
//! the `scale` policy (1,000 groups x 100 targets in a full run; 100 x 100
//! in a dev build), plus one group `probed` of the lab's three real targets
//! with the lab's TCP check (interval 2 s, timeout 1 s, thresholds 2/2).
//!
//! - A scrape: `curl` in the load balancer's namespace, its own time
//!   (`%{time_total}`: connect to last byte) and the body's size, sequential
//!   scrapes.
//! - Reloads: SIGHUP to `policy reloaded` after one target's weight
//!   changed, without scrapes, then while two clients scrape back to back.
//! - Health verdicts: a `probed` target's service stops; the time until
//!   `lb status probed` (polled every 100 ms) shows it with no slot, without
//!   scrapes, then with two clients scraping back to back.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    Lab, Node,
    lb::LbProcess,
    topo::{TARGETS, TCP_PORT},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    Settings,
    report::{Figure, Section, fmt_bytes, fmt_count, fmt_secs},
    scale::{self, TARGETS as PER_GROUP},
    stats::median,
};

pub const TITLE: &str = "Control plane: metrics and status at scale";
const ADDR: &str = "127.0.0.1:9650";
/// The probed group's check bound: interval x unhealthy_threshold (the
/// verdict's rewrite of the maps comes on top).
const VERDICT_BOUND_S: f64 = 4.0;

/// The scale policy with the group `probed` (listener 10.0.3.49:80).
fn policy(groups: usize, changed: Option<(usize, usize)>) -> String {
    let text = scale::lab_policy(groups, PER_GROUP, changed);
    let listener =
        "  - { name: probed, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: probed }\n";
    let mut text = text.replacen(
        "target_groups:\n",
        &format!("{listener}target_groups:\n"),
        1,
    );
    text.push_str(
        "  - name: probed\n    protocol: tcp\n    health_check: { type: tcp, interval_s: 2, timeout_s: 1, healthy_threshold: 2, unhealthy_threshold: 2 }\n    targets: [",
    );
    for (i, t) in TARGETS.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        text.push_str(&format!("{sep}{{ ip: {} }}", t.v4));
    }
    text.push_str("]\n");
    text
}

/// One scrape by curl: its time (s) and size (bytes).
fn scrape(lab: &Lab) -> Result<(f64, u64)> {
    let out = lb_tests::lab::run(lab.command(Node::Lb, "curl").args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{size_download}",
        &format!("http://{ADDR}/metrics"),
    ]))?;
    let (time, size) = out.trim().split_once(' ').context("curl's -w output")?;
    Ok((time.parse()?, size.parse()?))
}

/// Clients scraping back to back until dropped.
struct Scrapers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Scrapers {
    fn start(lab: &Lab, n: usize) -> Scrapers {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                let mut cmd = lab.command(Node::Lb, "curl");
                cmd.args(["-s", "-o", "/dev/null", &format!("http://{ADDR}/metrics")]);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if cmd.status().is_ok_and(|s| s.success()) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Scrapers {
            stop,
            done,
            threads,
        }
    }

    /// Stops them; the scrapes they completed.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// SIGHUP after writing `text` to `path`, to the next `policy reloaded`:
/// seconds, and the steps `lb` logged.
fn reload(lb: &LbProcess, path: &std::path::Path, text: &str) -> Result<(f64, String)> {
    std::fs::write(path, text)?;
    let reloads = |log: &str| log.matches("policy reloaded").count();
    let before = reloads(&lb.log());
    let t = Instant::now();
    kill(
        Pid::from_raw(lb.pid().context("lb exited")? as i32),
        Signal::SIGHUP,
    )?;
    let deadline = t + Duration::from_secs(120);
    while reloads(&lb.log()) == before {
        if Instant::now() > deadline {
            bail!("lb did not reload:\n{}", lb.log());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let took = t.elapsed().as_secs_f64();
    Ok((took, scale::steps(&lb.log(), "policy reloaded")))
}

fn slots(st: &lb_tests::status::Status, i: usize) -> Option<u64> {
    st.target("probed", TARGETS[i].v4.into())
        .and_then(|t| t["slots"].as_u64())
}

/// Seconds from `since` to the time of the last line of `log` that
/// contains `needle` (`lb` stamps each line in UTC, microseconds; same
/// day assumed).
fn logged_after(log: &str, needle: &str, since: SystemTime) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    let at = h * 3600.0 + m * 60.0 + s;
    let from = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() % 86_400.0;
    Some(at - from)
}

/// A probed target's service stops: seconds until status shows it with no
/// slot, and until `lb` logged its verdict; then it is started again and
/// healthy once more.
fn verdict(lab: &Lab, lb: &LbProcess, i: usize) -> Result<(f64, f64)> {
    let socket = lb.socket().to_path_buf();
    let poll = |what: &str, f: &dyn Fn(&lb_tests::status::Status) -> bool| {
        lb_tests::status::wait_for_group(&socket, "probed", Duration::from_secs(30), what, |st| {
            f(st).then_some(())
        })
    };
    let all_in = |st: &lb_tests::status::Status| (0..TARGETS.len()).all(|i| slots(st, i) > Some(0));
    poll("every probed target in", &all_in)?;
    lab.stop_port(Node::Target(i), TCP_PORT)?;
    let (stopped, wall) = (Instant::now(), SystemTime::now());
    let gone = poll("the stopped target out", &|st| slots(st, i) == Some(0))?;
    let needle = format!(
        "target {}:{TCP_PORT} of group probed is unhealthy",
        TARGETS[i].v4
    );
    let logged = logged_after(&lb.log(), &needle, wall).unwrap_or(f64::NAN);
    lab.start_port(Node::Target(i), TCP_PORT)?;
    poll("every probed target in again", &all_in)?;
    Ok(((gone.at - stopped).as_secs_f64(), logged))
}

/// CPU seconds (utime + stime) of `pid`'s threads: those named
/// `lb-metrics` (the metrics endpoint) and the others (the event loop and
/// what it spawns).
fn lb_cpu(pid: u32) -> (f64, f64) {
    let mut cpu = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cpu;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // After the command: state is field 0, utime 11, stime 12 (USER_HZ:
        // 100 a second).
        let secs =
            (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0;
        if head.ends_with("(lb-metrics") {
            cpu.0 += secs;
        } else {
            cpu.1 += secs;
        }
    }
    cpu
}

pub struct Observed {
    pub groups: usize,
    pub scrapes: Vec<f64>,
    pub size: u64,
    pub series: usize,
    pub reloads: Vec<f64>,
    pub reloads_scraped: Vec<f64>,
    /// The steps of the last reload of each kind, as `lb` logged them.
    pub reload_steps: [String; 2],
    pub verdicts: Vec<f64>,
    pub verdicts_scraped: Vec<f64>,
    /// When `lb` logged each of those verdicts (its probe loop's), seconds
    /// after the stop.
    pub logged: Vec<f64>,
    pub logged_scraped: Vec<f64>,
    /// A whole status report (`lb status --json`'s request) and one
    /// group's (`lb status probed`), seconds from request to last byte.
    pub status_all: Vec<f64>,
    pub status_group: Vec<f64>,
    /// Scrapes the concurrent clients completed.
    pub concurrent: usize,
    /// CPU seconds of lb's metrics threads and of its other threads while
    /// the clients scraped, and the seconds that took.
    pub cpu_metrics: f64,
    pub cpu_rest: f64,
    pub scraped_for: f64,
}

/// Five scrapes in a row: their times, and the last one's size.
fn scrapes(lab: &Lab) -> Result<(Vec<f64>, u64)> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let (t, bytes) = scrape(lab)?;
        times.push(t);
        size = bytes;
    }
    Ok((times, size))
}

/// Three requests for the whole status report and three for one group's.
fn status_times(socket: &std::path::Path, m: &mut Observed) -> Result<()> {
    for _ in 0..3 {
        let t = Instant::now();
        lb_tests::status::fetch(socket)?;
        m.status_all.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        lb_tests::status::fetch_group(socket, "probed")?;
        m.status_group.push(t.elapsed().as_secs_f64());
    }
    Ok(())
}

pub fn measure(settings: &Settings) -> Result<Observed> {
    let groups = scale::groups();
    let trials = if settings.quick { 1 } else { 3 };
    let lab = Lab::new()?;
    lab.exec(
        Node::Lb,
        &["ip", "addr", "add", scale::TARGET_NET, "dev", "eth0"],
    )?;
    let path = lab.write_file("observe.yaml", &policy(groups, None));
    let lb = lab.start_lb(&path, &["--xdp-mode", "native", "--metrics", ADDR])?;
    let body = lb_tests::metrics::fetch(&lab, ADDR)?;
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let (scrapes, size) = scrapes(&lab)?;
    let mut m = Observed {
        groups,
        scrapes,
        size,
        series,
        reloads: Vec::new(),
        reloads_scraped: Vec::new(),
        reload_steps: Default::default(),
        verdicts: Vec::new(),
        verdicts_scraped: Vec::new(),
        logged: Vec::new(),
        logged_scraped: Vec::new(),
        concurrent: 0,
        status_all: Vec::new(),
        status_group: Vec::new(),
        cpu_metrics: 0.0,
        cpu_rest: 0.0,
        scraped_for: 0.0,
    };
    status_times(lb.socket(), &mut m)?;
    let text = |n: usize| policy(groups, Some((n % groups, n % PER_GROUP)));
    for n in 0..trials {
        let (took, steps) = reload(&lb, &path, &text(n))?;
        m.reloads.push(took);
        m.reload_steps[0] = steps;
        let (gone, logged) = verdict(&lab, &lb, n % TARGETS.len())?;
        m.verdicts.push(gone);
        m.logged.push(logged);
    }
    let pid = lb.pid().context("lb exited")?;
    let (cpu0, since) = (lb_cpu(pid), Instant::now());
    let scrapers = Scrapers::start(&lab, 2);
    for n in 0..trials {
        let (took, steps) = reload(&lb, &path, &text(trials + n))?;
        m.reloads_scraped.push(took);
        m.reload_steps[1] = steps;
        let (gone, logged) = verdict(&lab, &lb, n % TARGETS.len())?;
        m.verdicts_scraped.push(gone);
        m.logged_scraped.push(logged);
    }
    m.concurrent = scrapers.finish();
    let cpu1 = lb_cpu(pid);
    (m.cpu_metrics, m.cpu_rest) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    m.scraped_for = since.elapsed().as_secs_f64();
    lb.stop()?;
    Ok(m)
}

fn secs_list(v: &[f64]) -> String {
    v.iter()
        .map(|t| fmt_secs(*t))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn section(settings: &Settings) -> Result<Section> {
    let m = measure(settings)?;
    let mut s = Section::new(TITLE);
    s.line(format!(
        "`lb run --metrics` in a lab with the `scale` policy ({} groups x {PER_GROUP} targets, static MACs) and one group `probed` of the lab's 3 targets with a TCP check (interval 2 s, timeout 1 s, 2 failures). A scrape: curl in the load balancer's namespace, its own time (connect to last byte), 5 in a row. Reload: SIGHUP after one target's weight changed, to `policy reloaded`. Verdict: a probed target's service stops; time until `lb status probed` (polled every 100 ms) shows it with no slot (bound: interval x threshold = {VERDICT_BOUND_S} s). Each without scrapes, then while 2 clients scrape back to back.",
        m.groups
    ));
    s.table(&["measure", "value"], &rows(&m));
    figures(&mut s, &m);
    Ok(s)
}

/// The section's table: one row per measure.
fn rows(m: &Observed) -> Vec<Vec<String>> {
    vec![
        vec!["scrape time (5 in a row)".into(), secs_list(&m.scrapes)],
        vec![
            "scrape size / series".into(),
            format!("{} / {}", fmt_bytes(m.size), fmt_count(m.series as u64)),
        ],
        vec![
            "reload, no scrapes".into(),
            format!("{} ({})", secs_list(&m.reloads), m.reload_steps[0]),
        ],
        vec![
            "reload, 2 clients scraping".into(),
            format!("{} ({})", secs_list(&m.reloads_scraped), m.reload_steps[1]),
        ],
        vec![
            "verdict, no scrapes (logged by the probe loop after)".into(),
            format!("{} ({})", secs_list(&m.verdicts), secs_list(&m.logged)),
        ],
        vec![
            "verdict, 2 clients scraping (logged after)".into(),
            format!(
                "{} ({})",
                secs_list(&m.verdicts_scraped),
                secs_list(&m.logged_scraped)
            ),
        ],
        vec![
            "status: whole report / one group (3 each)".into(),
            format!(
                "{} / {}",
                secs_list(&m.status_all),
                secs_list(&m.status_group)
            ),
        ],
        vec![
            "scrapes completed meanwhile".into(),
            fmt_count(m.concurrent as u64),
        ],
        vec![
            "lb's CPU meanwhile: metrics threads / the rest".into(),
            format!(
                "{:.0} % / {:.0} % of a CPU over {} ({} CPU per scrape)",
                m.cpu_metrics / m.scraped_for * 100.0,
                m.cpu_rest / m.scraped_for * 100.0,
                fmt_secs(m.scraped_for),
                fmt_secs(m.cpu_metrics / m.concurrent.max(1) as f64)
            ),
        ],
    ]
}

fn figures(s: &mut Section, m: &Observed) {
    let name = scale::scale_name();
    s.figures.push(Figure::info(
        format!("{name}: a metrics scrape (median of 5) / its size"),
        format!(
            "{} / {} ({} series)",
            fmt_secs(median(&m.scrapes)),
            fmt_bytes(m.size),
            fmt_count(m.series as u64)
        ),
    ));
    s.figures.push(Figure::info(
        format!("{name}: reload, no scrapes / 2 clients scraping (median)"),
        format!(
            "{} / {}",
            fmt_secs(median(&m.reloads)),
            fmt_secs(median(&m.reloads_scraped))
        ),
    ));
    s.figures.push(Figure::info(
        format!("{name}: status request, whole report / one group (median)"),
        format!(
            "{} / {}",
            fmt_secs(median(&m.status_all)),
            fmt_secs(median(&m.status_group))
        ),
    ));
    let worst = m.verdicts_scraped.iter().copied().fold(0.0, f64::max);
    // A verdict recompiles and rewrites the maps of the whole policy: at
    // this scale that is the reload's compile and apply.
    let rewrite = step_secs(&m.reload_steps[0], "compile") + step_secs(&m.reload_steps[0], "apply");
    let bound = VERDICT_BOUND_S + rewrite + 0.2;
    s.figures.push(Figure::goal(
        format!("{name}: health failure to removal while 2 clients scrape, worst"),
        format!(
            "{} (no scrapes: {})",
            fmt_secs(worst),
            fmt_secs(m.verdicts.iter().copied().fold(0.0, f64::max))
        ),
        format!(
            "<= {VERDICT_BOUND_S} s + {} (compile + apply) + 0.2 s (polling)",
            fmt_secs(rewrite)
        ),
        worst <= bound,
    ));
}

/// Seconds of step `name` in `lb`'s `took` steps (`policy:480ms,...`).
fn step_secs(steps: &str, name: &str) -> f64 {
    steps
        .split(',')
        .find_map(|s| s.strip_prefix(name)?.strip_prefix(':')?.strip_suffix("ms"))
        .and_then(|ms| ms.parse::<f64>().ok())
        .map_or(0.0, |ms| ms / 1e3)
}
