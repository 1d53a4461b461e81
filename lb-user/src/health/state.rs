//! The health state of one target: pure, time passed in (`observe(now, ..)`),
//! so the tests drive time instead of sleeping.
//!
//! SPEC.md: `initial` until a verdict; `healthy` after `healthy_threshold`
//! consecutive successes, `unhealthy` after `unhealthy_threshold` consecutive
//! failures, from `initial` as from the other state. A success resets the
//! failure count and a failure the success count, so a flapping target keeps
//! its state.
use std::time::{Duration, Instant};

/// What one probe found. Probers build these; [`HealthTracker::observe`]
/// judges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// From the start of the probe to its answer (or to the timeout).
    pub latency: Duration,
    /// What happened, for people: `connected`, `status 500 (expected
    /// 200-399)`, `timeout after 1s`, `connection refused`, `echo reply`.
    pub detail: String,
}

/// A target's health: the state machine's state, the verdict the compiler
/// takes, the state the runtime state file keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Registered, no verdict yet.
    Initial,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub const ALL: [HealthState; 3] = [
        HealthState::Initial,
        HealthState::Healthy,
        HealthState::Unhealthy,
    ];

    /// The state named `name` ([`HealthState::as_str`]), if any.
    pub fn from_name(name: &str) -> Option<HealthState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// `initial`, `healthy`, `unhealthy` (SPEC.md "Target states").
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Initial => "initial",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state caused by one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
}

/// The verdict on the last probe, as judged (a late answer is a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at: Instant,
    pub ok: bool,
    pub latency: Duration,
    pub detail: String,
}

/// One target's health state machine: counts consecutive probe results
/// against the thresholds.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    /// Answers slower than this are failures; None: no limit here (the
    /// prober enforces the timeout anyway).
    timeout: Option<Duration>,
    state: HealthState,
    successes: u32,
    failures: u32,
    last: Option<Observation>,
}

impl HealthTracker {
    /// A target with no verdict yet. Thresholds below 1 count as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            timeout: None,
            state: HealthState::Initial,
            successes: 0,
            failures: 0,
            last: None,
        }
    }

    /// Starts from `state` (a verdict from before a restart) instead of
    /// `initial`: the thresholds count from there.
    pub fn with_state(mut self, state: HealthState) -> Self {
        self.state = state;
        self
    }

    /// Also judges a result whose latency exceeds `timeout` a failure.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Takes one probe result into account; returns the transition it
    /// caused, if any.
    pub fn observe(&mut self, now: Instant, result: &ProbeResult) -> Option<Transition> {
        let late = self.timeout.filter(|&t| result.latency > t);
        let ok = result.ok && late.is_none();
        let detail = match late {
            Some(t) if result.ok => format!(
                "{} after {}, past the {} timeout",
                result.detail,
                fmt_duration(result.latency),
                fmt_duration(t)
            ),
            _ => result.detail.clone(),
        };
        self.last = Some(Observation {
            at: now,
            ok,
            latency: result.latency,
            detail,
        });

        let from = self.state;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.healthy_threshold {
                self.state = HealthState::Healthy;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.unhealthy_threshold {
                self.state = HealthState::Unhealthy;
            }
        }
        (self.state != from).then_some(Transition {
            from,
            to: self.state,
        })
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The last probe, as judged.
    pub fn last(&self) -> Option<&Observation> {
        self.last.as_ref()
    }

    pub fn last_result(&self) -> Option<&str> {
        self.last.as_ref().map(|o| o.detail.as_str())
    }

    pub fn last_ok(&self) -> Option<bool> {
        self.last.as_ref().map(|o| o.ok)
    }

    pub fn last_latency(&self) -> Option<Duration> {
        self.last.as_ref().map(|o| o.latency)
    }

    pub fn last_probe(&self) -> Option<Instant> {
        self.last.as_ref().map(|o| o.at)
    }
}

/// `1s`, `1.5s`, `250ms`: short, for details and logs.
pub fn fmt_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn ok() -> ProbeResult {
        ProbeResult {
            ok: true,
            latency: Duration::from_millis(3),
            detail: "connected".into(),
        }
    }

    fn fail() -> ProbeResult {
        ProbeResult {
            ok: false,
            latency: Duration::from_millis(1),
            detail: "connection refused".into(),
        }
    }

    /// Feeds `results` one second apart; returns the state after each, and
    /// the transitions with the step (0-based) that caused them.
    fn drive(
        h: &mut HealthTracker,
        results: &[ProbeResult],
    ) -> (Vec<HealthState>, Vec<(usize, Transition)>) {
        let t0 = Instant::now();
        let mut states = Vec::new();
        let mut transitions = Vec::new();
        for (n, r) in results.iter().enumerate() {
            let now = t0 + Duration::from_secs(n as u64);
            if let Some(t) = h.observe(now, r) {
                transitions.push((n, t));
            }
            assert_eq!(h.last_probe(), Some(now));
            states.push(h.state());
        }
        (states, transitions)
    }

    fn tr(from: HealthState, to: HealthState) -> Transition {
        Transition { from, to }
    }

    #[test]
    fn initial_to_healthy_after_healthy_threshold_successes() {
        let mut h = HealthTracker::new(3, 2);
        assert_eq!(h.state(), Initial);
        assert_eq!(h.last_result(), None);
        let (states, transitions) = drive(&mut h, &[ok(), ok(), ok(), ok()]);
        assert_eq!(states, [Initial, Initial, Healthy, Healthy]);
        assert_eq!(transitions, [(2, tr(Initial, Healthy))]);
        assert_eq!(h.consecutive_successes(), 4);
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.last_ok(), Some(true));
        assert_eq!(h.last_result(), Some("connected"));
        assert_eq!(h.last_latency(), Some(Duration::from_millis(3)));
    }

    #[test]
    fn initial_to_unhealthy_after_unhealthy_threshold_failures() {
        let mut h = HealthTracker::new(5, 2);
        let (states, transitions) = drive(&mut h, &[fail(), fail(), fail()]);
        assert_eq!(states, [Initial, Unhealthy, Unhealthy]);
        assert_eq!(transitions, [(1, tr(Initial, Unhealthy))]);
        assert_eq!(h.consecutive_failures(), 3);
        assert_eq!(h.last_ok(), Some(false));
        assert_eq!(h.last_result(), Some("connection refused"));
    }

    #[test]
    fn healthy_to_unhealthy_and_back() {
        let mut h = HealthTracker::new(2, 3);
        let seq = [ok(), ok(), fail(), fail(), fail(), ok(), ok()];
        let (states, transitions) = drive(&mut h, &seq);
        assert_eq!(
            states,
            [
                Initial, Healthy, Healthy, Healthy, Unhealthy, Unhealthy, Healthy
            ]
        );
        assert_eq!(
            transitions,
            [
                (1, tr(Initial, Healthy)),
                (4, tr(Healthy, Unhealthy)),
                (6, tr(Unhealthy, Healthy)),
            ]
        );
    }

    #[test]
    fn flapping_keeps_the_state() {
        // A success resets the failure count and vice versa: alternating
        // results never reach a threshold of 2.
        let mut h = HealthTracker::new(2, 2);
        drive(&mut h, &[ok(), ok()]);
        assert_eq!(h.state(), Healthy);
        let (states, transitions) = drive(&mut h, &[fail(), ok(), fail(), ok(), fail()]);
        assert_eq!(states, [Healthy; 5]);
        assert!(transitions.is_empty());
        assert_eq!(h.consecutive_failures(), 1);
        assert_eq!(h.consecutive_successes(), 0);

        let mut h = HealthTracker::new(2, 2);
        drive(&mut h, &[fail(), fail()]);
        let (states, transitions) = drive(&mut h, &[ok(), fail(), ok(), fail()]);
        assert_eq!(states, [Unhealthy; 4]);
        assert!(transitions.is_empty());

        // From initial: no verdict while flapping.
        let mut h = HealthTracker::new(2, 2);
        let (states, _) = drive(&mut h, &[ok(), fail(), ok(), fail()]);
        assert_eq!(states, [Initial; 4]);
    }

    #[test]
    fn thresholds_of_one() {
        let mut h = HealthTracker::new(1, 1);
        let (states, transitions) = drive(&mut h, &[ok(), fail(), ok()]);
        assert_eq!(states, [Healthy, Unhealthy, Healthy]);
        assert_eq!(
            transitions,
            [
                (0, tr(Initial, Healthy)),
                (1, tr(Healthy, Unhealthy)),
                (2, tr(Unhealthy, Healthy)),
            ]
        );
        // Zero is taken as one rather than "healthy before any probe".
        let mut h = HealthTracker::new(0, 0);
        assert_eq!(h.state(), Initial);
        drive(&mut h, &[fail()]);
        assert_eq!(h.state(), Unhealthy);
    }

    #[test]
    fn a_late_success_is_a_failure() {
        let mut h = HealthTracker::new(1, 1).with_timeout(Duration::from_secs(1));
        let late = ProbeResult {
            ok: true,
            latency: Duration::from_millis(1500),
            detail: "connected".into(),
        };
        let t = h.observe(Instant::now(), &late);
        assert_eq!(t, Some(tr(Initial, Unhealthy)));
        assert_eq!(h.last_ok(), Some(false));
        assert_eq!(
            h.last_result(),
            Some("connected after 1.5s, past the 1s timeout")
        );
        // Exactly the timeout is still in time.
        let on_time = ProbeResult {
            latency: Duration::from_secs(1),
            ..late
        };
        assert_eq!(
            h.observe(Instant::now(), &on_time),
            Some(tr(Unhealthy, Healthy))
        );
        // A failure that took long keeps its own detail.
        let slow_fail = ProbeResult {
            ok: false,
            latency: Duration::from_secs(2),
            detail: "timeout after 1s".into(),
        };
        h.observe(Instant::now(), &slow_fail);
        assert_eq!(h.last_result(), Some("timeout after 1s"));
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
    }
}
