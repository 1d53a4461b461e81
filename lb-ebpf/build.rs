//! Rebuild when bpf-linker changes (it is the linker of this crate), and tune
//! its code generation:
//! - unaligned loads and stores: packet fields sit at any offset, and without
//!   this every multi-byte read of one becomes byte loads and shifts. The
//!   kernel allows unaligned packet and map-value access on architectures
//!   with efficient unaligned access (x86-64, arm64), but not unaligned stack
//!   access: LLVM may merge stores of adjacent small fields of an on-stack
//!   key into one unaligned store, which the verifier rejects at load time
//!   (golden tests catch it). Keep padding of key types in naturally aligned
//!   fields (`_pad0: u8, _pad1: u16`, not `[u8; 3]`);
//! - BPF ISA v3 (kernel >= 5.1; atomics with fetch need it, and its 32-bit
//!   jumps and ALU make shorter code);
//! - memset/memcpy/memmove of known small size expanded into loads and
//!   stores, instead of bpf-to-bpf calls of byte-loop subprograms (by
//!   default bpf-linker only expands memcpy, so that it stays in order for
//!   JIT pattern matching, which this program does not need).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
