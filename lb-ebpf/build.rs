//! Rebuild when bpf-linker changes (it is the linker of this crate), and let
//! the code generator use unaligned loads and stores: packet fields sit at
//! any offset, and without this every multi-byte read of one becomes byte
//! loads and shifts. The kernel allows unaligned packet and map-value access
//! on architectures with efficient unaligned access (x86-64, arm64).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
