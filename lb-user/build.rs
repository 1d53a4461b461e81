//! Builds the XDP program of `lb-ebpf` with the nightly toolchain and
//! bpf-linker; the object is embedded into `lb` (see `src/lib.rs`).
//! `AYA_BUILD_SKIP=1` skips that build and embeds an empty placeholder, for
//! tools such as clippy that do not need the object, as does a cargo-fuzz
//! build (`--cfg fuzzing`: the fuzz targets reach only the policy code).
//!
//! The eBPF build is the same whatever the host profile (aya-build always
//! builds it in release), but aya-build keeps its cargo target directory
//! under `OUT_DIR`, which differs per profile: the dev build (`cargo xtask
//! test`) and the release build (`cargo xtask bench`) would each build it,
//! `core` included, from scratch. So it runs in one directory shared by the
//! profiles, `target/ebpf`, and the object is copied into `OUT_DIR`.
use std::{env, fs, path::PathBuf};

/// The object `src/lib.rs` embeds (lb-ebpf's one binary).
const OBJECT: &str = "lb";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../lb-common/src");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    if env::var_os("CARGO_CFG_FUZZING").is_some() {
        fs::write(out.join(OBJECT), [])?;
        return Ok(());
    }
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip && !out.join(OBJECT).exists() {
        fs::write(out.join(OBJECT), [])?;
    }
    // OUT_DIR is <target>/<profile>/build/lb-user-<hash>/out.
    let shared = match out.ancestors().nth(4) {
        Some(target) if !skip => target.join("ebpf"),
        _ => out.clone(),
    };
    fs::create_dir_all(&shared)?;
    // SAFETY: the build script is single-threaded here; aya-build reads
    // OUT_DIR to know where to build and put the objects.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())?;
    if shared != out {
        fs::copy(shared.join(OBJECT), out.join(OBJECT))?;
    }
    Ok(())
}
