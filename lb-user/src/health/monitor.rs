//! The health monitor: one probe loop per target of every group whose health
//! check is enabled, each in its own tokio task, all sharing one [`Prober`].
//!
//! - A target's probes are spread over the interval by a fixed offset derived
//!   from its key, so thousands of targets do not probe in the same instant.
//! - Probes are scheduled from the interval, not from when the last one
//!   returned, and each is bounded by its timeout (< interval): a slow or
//!   hanging target never delays its own next probe or anyone else's.
//! - After every probe the target's [`HealthSnapshot`] in the watch channel
//!   is updated. Receivers are woken (`changed()`) only when a target's state
//!   changes or targets come and go, so a reaction to a transition is
//!   immediate while probes that change no state wake nobody; `borrow()`
//!   always shows the latest counters and results.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use super::{
    probe::{ProbeSpec, Prober},
    state::{HealthState, HealthTracker, ProbeResult, Transition, fmt_duration},
};
use crate::{
    metrics::Instruments,
    policy::{CheckType, Policy},
    rename::Renames,
};

/// A checked target is a target: the same IP in two groups is checked twice
/// (each group has its own check).
pub use crate::ids::TargetKey;

/// What the monitor knows of one target, as of its last probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub state: HealthState,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// The last probe's detail (`connected`, `status 500 (expected
    /// 200-399)`, `timeout after 1s (connecting)`); None before the first.
    pub last_result: Option<String>,
    pub last_ok: Option<bool>,
    pub last_latency: Option<Duration>,
    /// The port probed; None for ping (ICMP has no port).
    pub monitor_port: Option<u16>,
    pub kind: CheckType,
}

/// One target's check, resolved from the policy (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCheck {
    pub spec: Arc<ProbeSpec>,
    /// None for ping.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl TargetCheck {
    /// Everything that decides a verdict, in one line, saved with the
    /// verdict (`crate::state`): a verdict is restored at a start only
    /// under the same check, as a reload keeps it only then. Written out
    /// field by field, so that another build of `lb` describes the same
    /// check the same way.
    pub fn describe(&self) -> String {
        let probe = match &*self.spec {
            ProbeSpec::Tcp => "tcp".to_string(),
            ProbeSpec::Ping => "ping".to_string(),
            ProbeSpec::Http(h) => format!(
                "{} {} {} {} expecting {}",
                if h.tls { "https" } else { "http" },
                h.method.as_str(),
                h.path,
                match h.version {
                    hyper::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
                h.codes
            ),
        };
        let port = self.port.map_or("-".to_string(), |p| p.to_string());
        format!(
            "{probe} port {port} every {}ms timeout {}ms up {} down {}",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.healthy_threshold,
            self.unhealthy_threshold
        )
    }
}

/// The checks a policy asks for: every target of every group whose
/// `health_check` is present and enabled, on its monitor port
/// (`TargetGroup::monitor_port`: a backup with no listener of its own is
/// probed on the port of the listener it backs up); a tcp or http(s) check
/// whose port cannot be known (a group that serves no listener, with no
/// port written) is left out. Pure.
pub fn checks(policy: &Policy) -> BTreeMap<TargetKey, TargetCheck> {
    let mut out = BTreeMap::new();
    for group in &policy.target_groups {
        let Some(hc) = group.health_check.as_ref().filter(|hc| hc.enabled) else {
            continue;
        };
        let spec = match ProbeSpec::from_check(hc, group.protocol) {
            Ok(spec) => Arc::new(spec),
            Err(err) => {
                // The validator rejects this; never probe with a guess.
                warn!(group = %group.name, "health check not started: {err}");
                continue;
            }
        };
        let listener = policy.traffic_listener_of(&group.name);
        let is_ping = hc.kind_for(group.protocol) == CheckType::Ping;
        for target in &group.targets {
            let port = group.monitor_port(target, listener);
            if !is_ping && port.is_none() {
                debug!(group = %group.name, target = %target.ip,
                    "not checked: no monitor port (the group serves no listener)");
                continue;
            }
            out.insert(
                TargetKey::new(group.name.clone(), target.ip),
                TargetCheck {
                    spec: spec.clone(),
                    port: if is_ping { None } else { port },
                    interval: Duration::from_secs(hc.interval_s.into()),
                    timeout: Duration::from_secs(hc.timeout_s.into()),
                    healthy_threshold: hc.healthy_threshold,
                    unhealthy_threshold: hc.unhealthy_threshold,
                },
            );
        }
    }
    out
}

/// The local address the kernel would use to reach `target` (and so the
/// source of the probes), found by connecting a UDP socket: no packet is
/// sent. None when there is no route.
pub fn probe_source(target: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match target {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    // Any port does: connect() on UDP only picks the route.
    socket.connect((target, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

type Snapshots = BTreeMap<TargetKey, HealthSnapshot>;

/// Runs the probe loops. Create it inside a tokio runtime.
pub struct HealthMonitor {
    prober: Arc<Prober>,
    tx: watch::Sender<Snapshots>,
    running: BTreeMap<TargetKey, Running>,
    /// Verdicts from before a restart, each taken by its target's first
    /// probe loop.
    restored: BTreeMap<TargetKey, HealthState>,
    /// Where each probe's duration is counted (`lb run`'s metrics).
    instruments: Option<Instruments>,
}

struct Running {
    check: TargetCheck,
    /// Cleared before the task is aborted, so that a probe finishing at that
    /// moment cannot write its result over the target's new entry.
    alive: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    /// Starts checking every target `checks(policy)` lists. The receiver
    /// holds one entry per checked target, `initial` until its first verdict.
    pub fn start(policy: &Policy) -> (Self, watch::Receiver<Snapshots>) {
        Self::start_with(policy, BTreeMap::new())
    }

    /// Starts like [`HealthMonitor::start`], but a target with a verdict in
    /// `restored` (saved before `lb` restarted) starts with that verdict
    /// instead of `initial`, and needs its threshold of probes to change it.
    pub fn start_with(
        policy: &Policy,
        restored: BTreeMap<TargetKey, HealthState>,
    ) -> (Self, watch::Receiver<Snapshots>) {
        Self::start_observed(policy, restored, None)
    }

    /// Starts like [`HealthMonitor::start_with`], and counts each probe's
    /// duration in `instruments`.
    pub fn start_observed(
        policy: &Policy,
        restored: BTreeMap<TargetKey, HealthState>,
        instruments: Option<Instruments>,
    ) -> (Self, watch::Receiver<Snapshots>) {
        let (tx, rx) = watch::channel(BTreeMap::new());
        let mut monitor = HealthMonitor {
            prober: Arc::new(Prober::new()),
            tx,
            running: BTreeMap::new(),
            restored,
            instruments,
        };
        monitor.update(policy);
        monitor.restored.clear();
        (monitor, rx)
    }

    /// Follows a new policy: targets whose check is unchanged (same group,
    /// IP and resolved check) keep their state and schedule; changed ones
    /// start over from `initial`; removed ones stop and leave the map.
    pub fn update(&mut self, policy: &Policy) {
        let wanted = checks(policy);
        let stale: Vec<TargetKey> = self
            .running
            .iter()
            .filter(|(key, r)| wanted.get(*key) != Some(&r.check))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &stale {
            if let Some(r) = self.running.remove(key) {
                r.alive.store(false, Ordering::Release);
                r.task.abort();
            }
        }
        if let Some(instruments) = &self.instruments {
            let checked: std::collections::BTreeSet<&str> =
                wanted.keys().map(|k| k.group.as_str()).collect();
            for key in &stale {
                if !checked.contains(key.group.as_str()) {
                    instruments.forget_probe_group(&key.group);
                }
            }
        }
        let fresh: Vec<(TargetKey, TargetCheck)> = wanted
            .into_iter()
            .filter(|(key, _)| !self.running.contains_key(key))
            .collect();
        if stale.is_empty() && fresh.is_empty() {
            return;
        }
        let restored = &self.restored;
        let first = |key: &TargetKey| restored.get(key).copied().unwrap_or(HealthState::Initial);
        self.tx.send_modify(|map| {
            for key in &stale {
                map.remove(key);
            }
            for (key, check) in &fresh {
                map.insert(key.clone(), initial_snapshot(check, first(key)));
            }
        });
        for (key, check) in fresh {
            let alive = Arc::new(AtomicBool::new(true));
            let task = tokio::spawn(probe_loop(
                key.clone(),
                check.clone(),
                first(&key),
                self.prober.clone(),
                Report {
                    tx: self.tx.clone(),
                    alive: alive.clone(),
                    instruments: self.instruments.clone(),
                },
            ));
            self.running.insert(key, Running { check, alive, task });
        }
    }

    /// Follows a new policy whose groups were renamed (`crate::rename`):
    /// as [`HealthMonitor::update`], but each target of a renamed group
    /// whose check is unchanged starts under its new name with the verdict
    /// it had (its probe loop starts again, as after a restart of `lb`).
    pub fn update_renamed(&mut self, policy: &Policy, renames: &Renames) {
        let wanted = checks(policy);
        let snapshots = self.tx.borrow();
        let carried: BTreeMap<TargetKey, HealthState> = self
            .running
            .iter()
            .filter_map(|(key, r)| {
                let new = renames.key(key);
                let same = new != *key && wanted.get(&new) == Some(&r.check);
                Some((new, snapshots.get(key).filter(|_| same)?.state))
            })
            .collect();
        drop(snapshots);
        self.restored = carried;
        self.update(policy);
        self.restored.clear();
    }

    /// Stops every probe loop and waits for them to end. Receivers then see
    /// the channel closed.
    pub async fn shutdown(mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            r.alive.store(false, Ordering::Release);
            r.task.abort();
        }
        for (_, r) in running {
            let _ = r.task.await;
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.alive.store(false, Ordering::Release);
            r.task.abort();
        }
    }
}

/// How long past its timeout a probe may run before the loop gives up on it
/// (the probers stop at the timeout themselves; this only guards the
/// schedule against a prober that would not).
const GRACE: Duration = Duration::from_millis(100);

/// Where a probe loop reports: the snapshots (while `alive`), and each
/// probe's duration.
struct Report {
    tx: watch::Sender<Snapshots>,
    alive: Arc<AtomicBool>,
    instruments: Option<Instruments>,
}

async fn probe_loop(
    key: TargetKey,
    check: TargetCheck,
    first: HealthState,
    prober: Arc<Prober>,
    report: Report,
) {
    let Report {
        tx,
        alive,
        instruments,
    } = report;
    let addr = SocketAddr::new(key.ip, check.port.unwrap_or(0));
    let mut tracker = HealthTracker::new(check.healthy_threshold, check.unhealthy_threshold)
        .with_timeout(check.timeout)
        .with_state(first);
    let first = Instant::now() + offset(&key, check.interval);
    let mut ticks = tokio::time::interval_at(first, check.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = match tokio::time::timeout(
            check.timeout + GRACE,
            prober.probe(&check.spec, addr, check.timeout),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => ProbeResult {
                ok: false,
                latency: started.elapsed(),
                detail: format!("timeout after {}", fmt_duration(check.timeout)),
            },
        };
        if let Some(instruments) = &instruments {
            instruments.probed(&key.group, result.latency);
        }
        if let Some(t) = tracker.observe(std::time::Instant::now(), &result) {
            log_transition(&key, &check, &t, &result.detail);
        }
        let snapshot = snapshot(&tracker, &check);
        tx.send_if_modified(|map| {
            if !alive.load(Ordering::Acquire) {
                return false;
            }
            match map.get_mut(&key) {
                Some(entry) => {
                    let state_changed = entry.state != snapshot.state;
                    *entry = snapshot;
                    state_changed
                }
                None => false,
            }
        });
    }
}

/// Logs a target's change of state (`detail`: the probe that made it).
fn log_transition(key: &TargetKey, check: &TargetCheck, t: &Transition, detail: &str) {
    let port = check.port.map(|p| format!(":{p}")).unwrap_or_default();
    let kind = check.spec.kind().as_str();
    let (group, ip) = (&key.group, key.ip);
    if t.to == HealthState::Unhealthy {
        warn!(%group, target = %ip, check = kind, from = %t.from, to = %t.to,
            "target {ip}{port} of group {group} is unhealthy (was {}): {kind} check: {detail}", t.from);
    } else {
        info!(%group, target = %ip, check = kind, from = %t.from, to = %t.to,
            "target {ip}{port} of group {group} is {} (was {}): {kind} check: {detail}", t.to, t.from);
    }
}

fn initial_snapshot(check: &TargetCheck, state: HealthState) -> HealthSnapshot {
    HealthSnapshot {
        state,
        consecutive_successes: 0,
        consecutive_failures: 0,
        last_result: None,
        last_ok: None,
        last_latency: None,
        monitor_port: check.port,
        kind: check.spec.kind(),
    }
}

fn snapshot(tracker: &HealthTracker, check: &TargetCheck) -> HealthSnapshot {
    HealthSnapshot {
        state: tracker.state(),
        consecutive_successes: tracker.consecutive_successes(),
        consecutive_failures: tracker.consecutive_failures(),
        last_result: tracker.last_result().map(str::to_string),
        last_ok: tracker.last_ok(),
        last_latency: tracker.last_latency(),
        monitor_port: check.port,
        kind: check.spec.kind(),
    }
}

/// Where in the interval `key`'s probes fall: the same for the same key
/// (FNV-1a, stable across runs and builds), spread evenly over keys.
fn offset(key: &TargetKey, interval: Duration) -> Duration {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(key.group.as_bytes());
    feed(&[0xff]);
    match key.ip {
        IpAddr::V4(ip) => feed(&ip.octets()),
        IpAddr::V6(ip) => feed(&ip.octets()),
    }
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(hash % millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup attached to no listener is probed where its targets take
    /// traffic: the port of the listener it backs up. Before, it was left
    /// unprobed, `initial` for ever, and so counted healthy by failover.
    #[test]
    fn a_backup_without_a_listener_is_probed_on_the_port_it_backs_up() {
        let policy = crate::policy::parse(
            "t.yaml",
            r"listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 8080, target_group: web }
target_groups:
  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [ { ip: 10.0.3.11 } ] }
  - name: spare
    protocol: tcp
    health_check: { type: tcp }
    targets: [ { ip: 10.0.3.21 }, { ip: 10.0.3.22, monitor_port: 9000 } ]
  - { name: idle, protocol: tcp, health_check: { type: tcp }, targets: [ { ip: 10.0.3.31 } ] }
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(String, Option<u16>)> = checks(&policy)
            .into_iter()
            .map(|(key, check)| (format!("{} {}", key.group, key.ip), check.port))
            .collect();
        // `web` has no check; `idle` serves nothing and has no port written.
        let want = [("spare 10.0.3.21", 8080), ("spare 10.0.3.22", 9000)];
        let want: Vec<(String, Option<u16>)> = want
            .iter()
            .map(|&(k, p)| (k.to_string(), Some(p)))
            .collect();
        assert_eq!(ports, want);
    }

    /// A check's description (saved with its verdicts) names everything
    /// that decides a verdict, and nothing else.
    #[test]
    fn a_check_is_described_by_what_decides_a_verdict() {
        let describe = |check: &str| {
            let text = format!(
                "listeners:\n  - {{ name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }}\n\
                 target_groups:\n  - {{ name: web, protocol: http, health_check: {check}, targets: [ {{ ip: 10.0.3.11 }} ] }}\n"
            );
            let policy = crate::policy::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
            let checks = checks(&policy);
            assert_eq!(checks.len(), 1);
            checks.values().next().unwrap().describe()
        };
        let base = describe("{ path: /healthz }");
        assert_eq!(
            base,
            "http GET /healthz 1.1 expecting 200-399 port 80 every 30000ms timeout 5000ms up 5 down 2"
        );
        assert_eq!(
            describe("{ type: http, path: /healthz, method: GET }"),
            base
        );
        for other in [
            "{ path: /ready }",
            "{ path: /healthz, method: HEAD }",
            "{ path: /healthz, version: \"1.0\" }",
            "{ path: /healthz, status_codes: \"200\" }",
            "{ type: https, path: /healthz }",
            "{ path: /healthz, port: 8080 }",
            "{ path: /healthz, interval_s: 10 }",
            "{ path: /healthz, timeout_s: 2 }",
            "{ path: /healthz, healthy_threshold: 2 }",
            "{ path: /healthz, unhealthy_threshold: 3 }",
            "{ type: ping }",
        ] {
            assert_ne!(describe(other), base, "{other}");
        }
    }

    #[test]
    fn offsets_are_stable_and_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let keys: Vec<TargetKey> = (0..10_000u32)
            .map(|n| TargetKey::new(format!("g{}", n % 7), IpAddr::V4((0x0a00_0000 + n).into())))
            .collect();
        let mut buckets = [0u32; 10];
        for key in &keys {
            let o = offset(key, interval);
            assert!(o < interval);
            assert_eq!(o, offset(key, interval), "same key, same offset");
            buckets[(o.as_millis() / 100) as usize] += 1;
        }
        // 1,000 per 100 ms on average: no tenth of the interval gets a
        // burst.
        for (n, &count) in buckets.iter().enumerate() {
            assert!((800..=1200).contains(&count), "bucket {n}: {count}");
        }
        // Pinned (FNV-1a, not std's hasher): a restart or another build
        // keeps every target's phase.
        let key = TargetKey::new("web", "10.0.3.11".parse().unwrap());
        assert_eq!(
            offset(&key, Duration::from_secs(30)),
            Duration::from_millis(4502)
        );
        assert_eq!(offset(&key, Duration::from_millis(1)), Duration::ZERO);
    }
}
