//! The data plane's clock, as user space reads it.
//!
//! The XDP program tells time by the kernel's tick counter (`jiffies`,
//! `bpf_jiffies64`: one load once verified, where `bpf_ktime_get_coarse_ns`
//! is a helper call per packet) times the tick length
//! (`Config::ns_per_tick`). User space has no system call for jiffies, so
//! [`Clock`] runs the object's `lb_clock` program with BPF_PROG_TEST_RUN,
//! which writes jiffies into its frame (about a microsecond). The flow
//! sweeper compares flow-table times with it, and the loader writes the tick
//! length into `Config`.
//!
//! The tick length (1/HZ, a kernel build option: 100, 250, 300 or 1000 Hz)
//! of an adopted data plane is the one it counts in already
//! (`Config::ns_per_tick`): its entries are stamped in it, and another
//! would move its time by days ([`tick_length`]). A new data plane's is the
//! kernel's, found once per process: `CONFIG_HZ` in the kernel's build
//! configuration (`/boot/config-RELEASE`) if it is there, else measured:
//! the jiffies that pass between two tick edges at least 200 ms apart,
//! against `CLOCK_MONOTONIC`, measured again over longer stretches until
//! the rate is within 3 % of one of those rates.
use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use super::sys;

/// The kernel's configurable tick rates (`CONFIG_HZ`).
const RATES: [u64; 4] = [100, 250, 300, 1000];

const NS_PER_S: u64 = 1_000_000_000;

/// How long the tick rate is measured for at first (20 ticks at 100 Hz),
/// and at most (each try four times longer than the last).
const MEASURE: Duration = Duration::from_millis(200);
const MEASURE_MAX: Duration = Duration::from_millis(3200);

/// How far a measured rate may be from a configurable one (250 and 300 Hz
/// are 18 % apart).
const TOLERANCE: f64 = 0.03;

/// A tick edge is at most 10 ms away (100 Hz); a clock that does not move
/// within this long is broken.
const EDGE_WAIT: Duration = Duration::from_millis(500);

/// The data plane's clock (`lb_clock`, a program of the loaded object).
pub struct Clock {
    program: OwnedFd,
    ns_per_tick: u64,
}

impl Clock {
    /// A clock reading through the `lb_clock` program `program`, of a data
    /// plane that counts in `adopted` ns a tick (`Config::ns_per_tick`; 0:
    /// a new one, which counts in the kernel's: [`tick_length`]).
    pub fn new(program: OwnedFd, adopted: u64) -> io::Result<Clock> {
        let ns_per_tick = tick_length(adopted, || kernel_ns_per_tick(&program))?;
        Ok(Clock {
            program,
            ns_per_tick,
        })
    }

    /// Another handle on the same clock (for the sweeper thread).
    pub fn try_clone(&self) -> io::Result<Clock> {
        Ok(Clock {
            program: self.program.try_clone()?,
            ns_per_tick: self.ns_per_tick,
        })
    }

    /// The kernel tick length in ns (`Config::ns_per_tick`).
    pub fn ns_per_tick(&self) -> u64 {
        self.ns_per_tick
    }

    /// Data-plane time without the plan's offset, in ns.
    pub fn now_ns(&self) -> io::Result<u64> {
        Ok(ticks(&self.program)?.wrapping_mul(self.ns_per_tick))
    }

    /// Waits for the next tick and returns its time (as [`Clock::now_ns`])
    /// right after it began: what the data plane stamps before it is
    /// earlier, what it stamps from now on is not (at most one tick, 10 ms,
    /// of waiting).
    pub fn next_tick_ns(&self) -> io::Result<u64> {
        let (tick, _) = next_edge(&|| ticks(&self.program))?;
        Ok(tick.wrapping_mul(self.ns_per_tick))
    }
}

/// The tick length a data plane counts in: an adopted one's own (its
/// entries and sessions are stamped in it: a length measured again, and
/// wrong, would move its time by days, and a tick length that differs
/// from the kernel's only makes its timeouts that much longer or shorter),
/// else the kernel's (`kernel`).
fn tick_length(adopted: u64, kernel: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if adopted == 0 {
        return kernel();
    }
    if !RATES.iter().any(|hz| NS_PER_S / hz == adopted) {
        tracing::warn!(
            ns_per_tick = adopted,
            "the data plane's tick length is no kernel rate's; keeping it"
        );
    }
    Ok(adopted)
}

/// The kernel's tick length in ns: its configured rate, else measured
/// through `program`; found once per process.
fn kernel_ns_per_tick(program: &OwnedFd) -> io::Result<u64> {
    static NS_PER_TICK: OnceLock<u64> = OnceLock::new();
    if let Some(&ns) = NS_PER_TICK.get() {
        return Ok(ns);
    }
    let hz = match configured_hz() {
        Some(hz) => hz,
        None => measure_hz(|| ticks(program))?,
    };
    Ok(*NS_PER_TICK.get_or_init(|| NS_PER_S / hz))
}

/// `CONFIG_HZ` of the running kernel's build configuration, where
/// distributions install it, if it is one of [`RATES`].
fn configured_hz() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    config_hz(&config)
}

/// `CONFIG_HZ` of a kernel build configuration, if it is one of [`RATES`].
fn config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
        .filter(|hz| RATES.contains(hz))
}

/// The kernel's jiffies, read by running `lb_clock` once.
fn ticks(program: &OwnedFd) -> io::Result<u64> {
    // The smallest frame an XDP test run takes is an Ethernet header.
    let frame = [0u8; 14];
    let mut out = [0u8; 64];
    let (_, len) = sys::test_run(program.as_fd(), &frame, &mut out)?;
    if len < 8 {
        return Err(io::Error::other("lb_clock returned a short frame"));
    }
    Ok(u64::from_ne_bytes(out[..8].try_into().expect("8 bytes")))
}

/// The first tick edge from now: the new tick count and when it was seen.
fn next_edge(ticks: &impl Fn() -> io::Result<u64>) -> io::Result<(u64, Instant)> {
    let start = Instant::now();
    let first = ticks()?;
    loop {
        let now = ticks()?;
        let seen = Instant::now();
        if now != first {
            return Ok((now, seen));
        }
        if seen - start > EDGE_WAIT {
            return Err(io::Error::other(format!(
                "the kernel tick counter did not move in {EDGE_WAIT:?}"
            )));
        }
        thread::yield_now();
    }
}

/// The kernel's tick rate, from the ticks between two edges [`MEASURE`]
/// apart; measured again, over four times as long each time, while the
/// rate is not within [`TOLERANCE`] of a configurable one (a thread
/// preempted at an edge), up to [`MEASURE_MAX`]: then the nearest.
fn measure_hz(ticks: impl Fn() -> io::Result<u64>) -> io::Result<u64> {
    let mut window = MEASURE;
    loop {
        let (t0, at0) = next_edge(&ticks)?;
        thread::sleep(window);
        let (t1, at1) = next_edge(&ticks)?;
        let rate = t1.wrapping_sub(t0) as f64 / (at1 - at0).as_secs_f64();
        let hz = nearest_rate(rate);
        if (rate - hz as f64).abs() <= hz as f64 * TOLERANCE || window >= MEASURE_MAX {
            return Ok(hz);
        }
        tracing::debug!(rate, "the kernel's tick rate is unclear: measuring longer");
        window *= 4;
    }
}

/// The configurable rate nearest to a measured one.
fn nearest_rate(measured: f64) -> u64 {
    RATES
        .into_iter()
        .min_by(|a, b| {
            let (da, db) = ((*a as f64 - measured).abs(), (*b as f64 - measured).abs());
            da.total_cmp(&db)
        })
        .expect("RATES is not empty")
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_measured_rate_rounds_to_a_configurable_one() {
        assert_eq!(nearest_rate(998.3), 1000);
        assert_eq!(nearest_rate(251.0), 250);
        assert_eq!(nearest_rate(296.0), 300);
        assert_eq!(nearest_rate(103.0), 100);
        // Off by a preempted millisecond or two at either edge.
        assert_eq!(nearest_rate(27.0 / 0.1), 250);
        assert_eq!(nearest_rate(29.0 / 0.1), 300);
    }

    /// A fake tick counter driven by `Instant`: `hz` ticks a second.
    fn fake(hz: u64) -> impl Fn() -> io::Result<u64> {
        let start = Instant::now();
        move || Ok(1_000 + (start.elapsed().as_nanos() as u64 * hz / 1_000_000_000))
    }

    #[test]
    fn the_rate_is_measured_between_tick_edges() {
        for hz in [100, 250, 1000] {
            assert_eq!(measure_hz(fake(hz)).unwrap(), hz);
        }
    }

    /// An adopted data plane keeps the tick length it counts in, whatever
    /// the kernel's would be found to be (a measurement of 300 Hz on a
    /// 250 Hz kernel would move its time by a sixth of the uptime); a new
    /// one takes the kernel's.
    #[test]
    fn an_adopted_tick_length_is_kept() {
        let never = || -> io::Result<u64> { panic!("no measurement for an adopted data plane") };
        assert_eq!(tick_length(4_000_000, never).unwrap(), 4_000_000);
        assert_eq!(tick_length(3_000_000, never).unwrap(), 3_000_000);
        assert_eq!(tick_length(0, || Ok(3_333_333)).unwrap(), 3_333_333);
        assert!(tick_length(0, || Err(io::Error::other("no clock"))).is_err());
    }

    #[test]
    fn the_configured_rate_is_read_from_the_kernel_config() {
        let config =
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(config_hz(config), Some(250));
        assert_eq!(config_hz("CONFIG_HZ=1000\n"), Some(1000));
        assert_eq!(config_hz("CONFIG_HZ=123\n"), None, "no kernel rate");
        assert_eq!(config_hz("CONFIG_HZ_300=y\n"), None);
    }

    #[test]
    fn a_clock_that_stands_still_is_an_error() {
        let calls = Cell::new(0u32);
        let err = next_edge(&|| {
            calls.set(calls.get() + 1);
            Ok(7)
        })
        .unwrap_err();
        assert!(err.to_string().contains("did not move"), "{err}");
        assert!(calls.get() > 1);
    }
}
