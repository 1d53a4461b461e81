//! Counter updates (per-CPU, so no atomics are needed).
use super::common::{Counter, Stats};
use aya_ebpf::btf_maps::PerCpuArray;

use super::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn add_stats<const N: usize>(
    map: &PerCpuArray<Stats, N>,
    index: u32,
    bytes: u64,
    new_flow: bool,
) {
    if let Some(stats) = map.get_ptr_mut(index) {
        // SAFETY: as above, per-CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            if new_flow {
                (*stats).new_flows += 1;
            }
        }
    }
}
