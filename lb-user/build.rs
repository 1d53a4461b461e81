//! Builds the XDP programs of `lb-ebpf` with the nightly toolchain and
//! bpf-linker; the objects are embedded into `lb` (see `src/lib.rs`).
//! `AYA_BUILD_SKIP=1` skips that build and embeds empty placeholders, for
//! tools such as clippy that do not need the object.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../lb-common/src");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        for name in ["lb", "lb-new-flow", "macswap", "pass"] {
            let path = out.join(name);
            if !path.exists() {
                fs::write(path, [])?;
            }
        }
    }
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
