//! `cargo xtask bench`.
// TODO(lead): the benchmarks (golden packets under BPF_PROG_TEST_RUN, lb
// against the MAC-swap baseline) replace this stub.
use anyhow::{Result, bail};

pub fn bench() -> Result<()> {
    bail!("cargo xtask bench: not written yet")
}
