//! Atomic read-modify-write operations on shared map values.
//! `core::sync::atomic` offers none on the BPF target, and LLVM emits the
//! fetching forms only for `-mcpu=v3`, which the Rust BPF target does not let
//! a build script choose; so the instructions are written out
//! (`BPF_ATOMIC | BPF_FETCH` and `BPF_CMPXCHG`, kernel >= 5.12).
use core::arch::asm;

/// `pub unsafe fn $name(slot: *mut u64, operand: u64) -> u64`: the atomic
/// `$insn` of `*slot` with `$operand(operand)`, returning the old value.
macro_rules! fetch_op {
    ($(#[$doc:meta])* $name:ident, $insn:literal, $operand:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `slot` points at an 8-byte aligned map value that stays allocated
        /// while the program runs, and every other writer uses atomic
        /// operations too.
        #[inline(always)]
        pub unsafe fn $name(slot: *mut u64, operand: u64) -> u64 {
            let mut value: u64 = $operand(operand);
            // SAFETY: as the caller guarantees.
            unsafe {
                asm!(
                    concat!("{value} = ", $insn, "((u64 *)({slot} + 0), {value})"),
                    slot = in(reg) slot,
                    value = inout(reg) value,
                    options(nostack),
                );
            }
            value
        }
    };
}

fetch_op!(
    /// Adds `operand` to `*slot` and returns the old value.
    fetch_add_u64, "atomic_fetch_add", |v: u64| v
);

/// Adds `delta` to `*slot` and returns the old value.
///
/// # Safety
/// As for [`fetch_add_u64`].
#[inline(always)]
pub unsafe fn fetch_add_i64(slot: *mut i64, delta: i64) -> i64 {
    // SAFETY: as the caller guarantees; two's complement makes the add the same.
    unsafe { fetch_add_u64(slot as *mut u64, delta as u64) as i64 }
}

/// Stores `new` in `*slot` if it holds `expected`; returns the old value
/// (`expected` if the exchange happened). `BPF_ATOMIC | BPF_CMPXCHG`, whose
/// expected and returned value live in r0.
///
/// # Safety
/// As for [`fetch_add_u64`].
#[inline(always)]
pub unsafe fn cmpxchg_u64(slot: *mut u64, expected: u64, new: u64) -> u64 {
    let mut old = expected;
    // SAFETY: as the caller guarantees.
    unsafe {
        asm!(
            "r0 = cmpxchg_64({slot} + 0, r0, {new})",
            slot = in(reg) slot,
            new = in(reg) new,
            inout("r0") old,
            options(nostack),
        );
    }
    old
}
