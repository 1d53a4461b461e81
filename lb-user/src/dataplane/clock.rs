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
//! is measured once per process: the jiffies that pass between two tick
//! edges about 100 ms apart, against `CLOCK_MONOTONIC`, rounded to the
//! nearest of those rates.
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

/// How long the tick rate is measured for (at least 10 ticks at 100 Hz).
const MEASURE: Duration = Duration::from_millis(100);

/// A tick edge is at most 10 ms away (100 Hz); a clock that does not move
/// within this long is broken.
const EDGE_WAIT: Duration = Duration::from_millis(500);

/// The data plane's clock (`lb_clock`, a program of the loaded object).
pub struct Clock {
    program: OwnedFd,
    ns_per_tick: u64,
}

impl Clock {
    /// A clock reading through the `lb_clock` program `program`. The first
    /// clock of a process measures the tick length (about 100 ms).
    pub fn new(program: OwnedFd) -> io::Result<Clock> {
        static NS_PER_TICK: OnceLock<u64> = OnceLock::new();
        let ns_per_tick = match NS_PER_TICK.get() {
            Some(&ns) => ns,
            None => {
                let hz = measure_hz(|| ticks(&program))?;
                *NS_PER_TICK.get_or_init(|| 1_000_000_000 / hz)
            }
        };
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
/// apart.
fn measure_hz(ticks: impl Fn() -> io::Result<u64>) -> io::Result<u64> {
    let (t0, at0) = next_edge(&ticks)?;
    thread::sleep(MEASURE);
    let (t1, at1) = next_edge(&ticks)?;
    let rate = t1.wrapping_sub(t0) as f64 / (at1 - at0).as_secs_f64();
    Ok(nearest_rate(rate))
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
