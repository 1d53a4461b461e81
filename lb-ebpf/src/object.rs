//! What every eBPF object has besides its programs: `lb`'s, and the
//! benchmark's (tests/bench/ebpf, which includes this file).

/// The panic handler a `no_std` binary needs (nothing in the programs can
/// panic: the verifier would reject a path that reaches it) and the license
/// section, which GPL-only helpers require.
macro_rules! object_items {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
