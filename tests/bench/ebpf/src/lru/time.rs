//! Data-plane time: the kernel's tick counter (`jiffies`, which the verifier
//! turns into a single load, where `bpf_ktime_get_coarse_ns` is a helper
//! call) in ns (`Config::ns_per_tick`, which the loader
//! measures), plus the loader's offset (`Config::time_offset_ns`, 0 in
//! production), which lets tests drive flow and sticky-session expiry. A
//! tick (1 to 10 ms) is precise enough for timeouts of seconds.
//!
//! The loader reads the same clock through [`clock`], so the flow sweeper
//! and the data plane agree on the time.
use super::common::Config;
use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, programs::XdpContext};

#[inline(always)]
pub fn now_ns(config: &Config) -> u64 {
    // SAFETY: a plain helper call (inlined by the verifier).
    let ticks = unsafe { bpf_jiffies64() };
    ticks
        .wrapping_mul(config.ns_per_tick)
        .wrapping_add(config.time_offset_ns)
}

/// The `lb_clock` program: writes the kernel's tick counter (native byte
/// order) into the first 8 bytes of the frame and passes it. The loader runs
/// it with BPF_PROG_TEST_RUN to read the data plane's clock.
#[inline(always)]
pub fn clock(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + 8 <= ctx.data_end() {
        // SAFETY: a plain helper call.
        let ticks = unsafe { bpf_jiffies64() };
        // SAFETY: the 8 bytes are inside the frame (checked above).
        unsafe { (start as *mut u64).write_unaligned(ticks) };
    }
    xdp_action::XDP_PASS
}
