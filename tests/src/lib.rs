//! Shared test support: the namespace lab, used by the end-to-end tests in
//! `tests/tests/`, by `cargo xtask run` (through the `lb-lab` binary) and by
//! the benchmark (`tests/bench`), and the packet builders and reference model
//! of the golden packet tests.
//!
//! The lab needs root: it builds network namespaces, veths, a bridge and XDP
//! attachments, and removes them when dropped.
#![deny(unsafe_code)]

pub mod bird;
pub mod capture;
pub mod client;
pub mod flood;
pub mod harness;
pub mod lab;
pub mod lb;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod packets;
pub mod policy;
pub mod run;
pub mod stats;
pub mod status;
pub mod streams;
pub mod topo;
pub mod xdp;

pub use lab::{Lab, LabError, LabOptions};
pub use run::LabRun;
pub use topo::Node;

/// Reports the calling test as skipped: it cannot do its work on this
/// machine (say, it needs two CPUs and the process may use one), so it
/// must not count as passed. Return right after calling it. `cargo xtask
/// test` (which sets `LB_TEST_SKIPS` to a directory) counts every test that
/// called it as skipped, not passed, and lists the reasons.
pub fn skip(reason: &str) {
    let name = std::thread::current()
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("unnamed test of process {}", std::process::id()));
    eprintln!("SKIPPED {name}: {reason}");
    if let Some(dir) = std::env::var_os("LB_TEST_SKIPS") {
        // The test binary's name too: two binaries may have a test of the
        // same name.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let file = std::path::Path::new(&dir).join(format!("{binary}.{}", name.replace("::", ".")));
        if let Err(e) = std::fs::write(&file, reason) {
            eprintln!("cannot record the skip in {}: {e}", file.display());
        }
    }
}
