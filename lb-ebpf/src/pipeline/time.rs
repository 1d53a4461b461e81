//! Data-plane time: the kernel's monotonic clock (coarse: a tick, a few ms,
//! is precise enough for timeouts of seconds, and cheaper to read) plus the
//! loader's offset (`Config::time_offset_ns`, 0 in production), which lets
//! tests drive flow and sticky-session expiry.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::Config;

#[inline(always)]
pub fn now_ns(config: &Config) -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(config.time_offset_ns)
}
