//! What one read from memory costs on this machine: the unit issue 18's
//! goals are stated in ("an established packet costs at most one memory
//! miss plus the work of a hot flow; a new flow at most two misses plus
//! the choice of target"). The data-plane sections measure it in their own
//! run and express `lb`'s figures at a million flows in it.
//!
//! A pointer chase in user space over a buffer the size of the benchmark's
//! flow table: every line of the buffer holds the index of the next line of
//! one random cycle through all of them, so each read depends on the one
//! before (no overlap, no prefetch) and misses every cache. Once with
//! 4 KiB pages, as the kernel gives BPF maps, and once asking for 2 MiB
//! pages (transparent huge pages), which saves the page walks: what a
//! table in huge pages could gain.
use anyhow::Result;

use crate::{
    Settings,
    report::fmt_ns,
    stats::{Rng, median},
};

/// How the read is timed, for the report.
const METHOD: &str = "Timed in user space: a chase of dependent reads through one random cycle over the lines of a buffer the size of the benchmark's flow table, so that each read waits for the one before and misses every cache (docs/bench.md).";

/// One cache line.
const LINE: usize = 64;
/// A huge page: the buffer starts on one.
const HUGE: usize = 2 << 20;

/// The benchmark's flow table: `max_flows` of the default, in 64-byte
/// buckets.
pub fn table_bytes() -> usize {
    lb_common::flow_table::buckets_for(lb_common::DEFAULT_FLOW_TABLE_SIZE) as usize * LINE
}

/// ns per read, run by run, in pages of each size.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The buffer's size.
    pub bytes: usize,
    /// 4 KiB pages.
    pub small: Vec<f64>,
    /// 2 MiB pages asked for.
    pub huge: Vec<f64>,
    /// The share of the buffer the kernel gave huge pages (0 without
    /// transparent huge pages).
    pub huge_share: f64,
}

impl Latency {
    /// One read, 4 KiB pages (median over the runs).
    pub fn read(&self) -> f64 {
        median(&self.small)
    }

    /// The report's line on it: the figure, the runs and the method.
    pub fn line(&self) -> String {
        format!(
            "\nOne read from memory, timed after the fixtures ({} runs of each page size): {}. {METHOD}",
            self.small.len(),
            self.describe()
        )
    }

    /// `ns` in reads: "X (lb ns; one read ...)", a figure's value.
    pub fn in_reads(&self, ns: f64) -> String {
        format!(
            "{:.2} (lb {}; one read {})",
            ns / self.read(),
            fmt_ns(ns),
            self.describe()
        )
    }

    /// "R ns (a random line of N MiB, 4 KiB pages ...; H ns with 2 MiB
    /// pages)".
    pub fn describe(&self) -> String {
        let huge = if self.huge_share > 0.5 {
            format!("{} with 2 MiB pages", fmt_ns(median(&self.huge)))
        } else {
            "no 2 MiB pages given".to_string()
        };
        format!(
            "{} (a random line of {} MiB, 4 KiB pages as BPF maps have; {huge})",
            fmt_ns(self.read()),
            self.bytes >> 20
        )
    }
}

/// Measures `settings.runs` runs of each page size, alternating.
pub fn measure(settings: &Settings) -> Result<Latency> {
    let bytes = table_bytes();
    let steps = if settings.quick { 500_000 } else { 4_000_000 };
    let mut small = Chase::new(bytes, false)?;
    let mut huge = Chase::new(bytes, true)?;
    let huge_share = huge.huge_share();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    // One untimed pass each: the caches and the TLB in the state the
    // chase keeps them in.
    small.ns_per_read(steps);
    huge.ns_per_read(steps);
    for _ in 0..settings.runs.max(1) {
        a.push(small.ns_per_read(steps));
        b.push(huge.ns_per_read(steps));
    }
    Ok(Latency {
        bytes,
        small: a,
        huge: b,
        huge_share,
    })
}

/// The order of the chase: `next[i]` is the line read after line `i`, one
/// cycle through all `n` lines (Sattolo's shuffle), so a chase from any
/// line reads every line before it comes back.
pub fn cycle(n: usize, seed: u64) -> Vec<u32> {
    assert!(n >= 2 && n <= u32::MAX as usize, "a cycle of {n} lines");
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0; n];
    for i in 0..n {
        next[order[i] as usize] = order[(i + 1) % n];
    }
    next
}

/// A buffer of lines linked in one random cycle.
struct Chase {
    /// The mapping (with room to start on a huge page).
    map: *mut libc::c_void,
    len: usize,
    /// Its first line, on a 2 MiB boundary.
    base: *mut u8,
    bytes: usize,
    at: usize,
}

impl Chase {
    fn new(bytes: usize, huge: bool) -> Result<Chase> {
        let len = bytes + HUGE;
        // SAFETY: a fresh private anonymous mapping; nothing else refers
        // to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        anyhow::ensure!(
            map != libc::MAP_FAILED,
            "mmap of {len} bytes: {}",
            std::io::Error::last_os_error()
        );
        let base = (map as usize).next_multiple_of(HUGE) as *mut u8;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [base, base + bytes) is inside the mapping. The advice
        // only chooses page sizes; without THP it fails and changes nothing.
        unsafe { libc::madvise(base.cast(), bytes, advice) };
        let chase = Chase {
            map,
            len,
            base,
            bytes,
            at: 0,
        };
        let lines = bytes / LINE;
        for (i, next) in cycle(lines, 0x6d65_6d6f_7279).into_iter().enumerate() {
            // SAFETY: line i is inside [base, base + bytes); aligned.
            unsafe {
                chase
                    .base
                    .add(i * LINE)
                    .cast::<u64>()
                    .write(u64::from(next))
            };
        }
        Ok(chase)
    }

    /// ns per read over `steps` dependent reads, from where the last
    /// chase stopped.
    fn ns_per_read(&mut self, steps: usize) -> f64 {
        let started = std::time::Instant::now();
        let mut at = self.at;
        for _ in 0..steps {
            // SAFETY: every line holds the index of a line of the buffer.
            at = unsafe { self.base.add(at * LINE).cast::<u64>().read_volatile() } as usize;
        }
        self.at = std::hint::black_box(at);
        started.elapsed().as_secs_f64() * 1e9 / steps as f64
    }

    /// The share of the buffer in huge pages (/proc/self/smaps).
    fn huge_share(&self) -> f64 {
        let start = format!("{:x}-", self.map as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let huge_kib = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&start))
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap_or(0);
        (huge_kib << 10) as f64 / self.bytes as f64
    }
}

impl Drop for Chase {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_visits_every_line_once_per_cycle() {
        for (n, seed) in [(2, 1), (3, 2), (1000, 3), (4096, 4)] {
            let next = cycle(n, seed);
            let mut seen = vec![false; n];
            let mut at = 0usize;
            for _ in 0..n {
                assert!(!seen[at], "line {at} read twice in one cycle of {n}");
                seen[at] = true;
                at = next[at] as usize;
            }
            assert_eq!(at, 0, "the chase of {n} lines comes back after {n} reads");
        }
    }

    #[test]
    fn the_order_is_not_sequential() {
        // A stride the prefetcher could follow would time the cache, not
        // memory: of 4096 steps almost none go to the next line (a random
        // cycle takes that step with odds of about 1 in 4096 each).
        let next = cycle(4096, 5);
        let sequential = (0..4096)
            .filter(|&i| next[i] as usize == (i + 1) % 4096)
            .count();
        assert!(sequential < 10, "{sequential} steps to the next line");
    }
}
