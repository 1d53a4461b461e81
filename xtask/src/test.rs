//! `cargo xtask test`: set-up, build the binaries the lab needs, then one
//! `cargo test` over the workspace (unit tests, golden packets, namespace
//! lab). The lab tests run one lab at a time by themselves (a lock per test
//! binary), so no thread limit is needed here.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub fn test(extra: &[String]) -> Result<()> {
    crate::setup::setup()?;
    cmd::build_bins()?;

    // Tests that cannot do their work on this machine say so here
    // (`lb_tests::skip`): counted as skipped, not passed.
    let skips = cmd::target_dir().join("test-skips");
    let _ = std::fs::remove_dir_all(&skips);
    std::fs::create_dir_all(&skips).with_context(|| format!("create {}", skips.display()))?;
    let mut test = cmd::cargo();
    test.env_remove("AYA_BUILD_SKIP")
        .env("LB_TEST_SKIPS", &skips)
        .envs(cmd::bin_env())
        // The eBPF crates only build for the BPF target; the benchmark is
        // built and tested by `cargo xtask bench` alone.
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(["--exclude", "lb-ebpf", "--exclude", "lb-bench-ebpf"])
        .args(["--exclude", "lb-bench"]);
    if !extra.is_empty() {
        test.arg("--").args(extra);
    }
    let shown = cmd::show(&test);
    eprintln!("xtask: $ {shown}");
    // Copy cargo test's stdout through, adding up its `test result:` lines.
    let mut child = test
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {shown}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo test output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    for (name, reason) in skipped(&skips)? {
        eprintln!("xtask: skipped {name}: {reason}");
        totals.skip_one();
    }
    eprintln!("xtask: {} test binaries ran", totals.binaries);
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() || totals.failed > 0 {
        bail!("cargo test failed ({status})");
    }
    if totals.binaries == 0 {
        bail!("cargo test ran no test binary");
    }
    Ok(())
}

/// The tests that reported themselves skipped: (name, reason).
fn skipped(dir: &std::path::Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, std::fs::read_to_string(&path).unwrap_or_default()));
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, Default, PartialEq)]
struct Totals {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// A test that libtest counted as passed but reported itself skipped.
    fn skip_one(&mut self) {
        self.passed = self.passed.saturating_sub(1);
        self.ignored += 1;
    }

    /// Adds `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (n, what) = match words.as_slice() {
                [_, n, what] | [n, what] => (n.parse::<u64>().unwrap_or(0), *what),
                _ => continue,
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                binaries: 2,
                passed: 5,
                failed: 1,
                ignored: 1
            }
        );
        // A test that said it was skipped: passed by libtest, not by us.
        t.skip_one();
        assert_eq!((t.passed, t.ignored), (4, 2));
    }
}
