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
    // The summary line is printed whatever happens: a run that could not
    // start says so there too.
    if let Err(err) = crate::setup::setup().and_then(|()| cmd::build_bins()) {
        println!("tests: 0 passed, 0 failed, 0 skipped (not run: set-up or build failed)");
        return Err(err);
    }

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
    totals.end();
    for (name, reason) in skipped(&skips)? {
        eprintln!("xtask: skipped {name}: {reason}");
        totals.skip_one();
    }
    eprintln!("xtask: {} test binaries ran", totals.binaries);
    println!("{}", totals.summary(status.success()));
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
    /// The binary that runs now (its `running N tests` line seen, its
    /// `test result:` line not yet).
    running: Option<Running>,
}

/// A test binary's tests so far.
#[derive(Debug, Default, PartialEq)]
struct Running {
    tests: u64,
    ok: u64,
    ignored: u64,
}

impl Totals {
    /// The summary line. A failure outside any test (a doc test or a test
    /// binary that does not compile) fails the run too: the line says so.
    fn summary(&self, cargo_ok: bool) -> String {
        let outside = if !cargo_ok && self.failed == 0 {
            " (cargo test failed outside the tests: see above)"
        } else {
            ""
        };
        format!(
            "tests: {} passed, {} failed, {} skipped{outside}",
            self.passed, self.failed, self.ignored
        )
    }

    /// A test that libtest counted as passed but reported itself skipped.
    fn skip_one(&mut self) {
        self.passed = self.passed.saturating_sub(1);
        self.ignored += 1;
    }

    /// A binary that ended without its `test result:` line (it aborted: a
    /// test overflowed its stack, called `exit`, was killed): the tests
    /// it had not reported passed or ignored count as failed.
    fn end(&mut self) {
        if let Some(r) = self.running.take() {
            self.binaries += 1;
            self.passed += r.ok;
            self.ignored += r.ignored;
            self.failed += r.tests.saturating_sub(r.ok + r.ignored).max(1);
        }
    }

    /// Reads one line of `cargo test`'s output: `running 3 tests`, `test
    /// NAME ... ok`, and `test result: ok. 3 passed; 0 failed; 1 ignored;
    /// ...`, which gives the binary's figures.
    fn add(&mut self, line: &str) {
        let line = line.trim();
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
            .and_then(|n| n.parse().ok())
        {
            self.end();
            self.running = Some(Running {
                tests: n,
                ..Running::default()
            });
            return;
        }
        if let (Some(r), Some(test)) = (&mut self.running, line.strip_prefix("test ")) {
            if test.ends_with(" ... ok") {
                r.ok += 1;
            } else if test.ends_with(" ... ignored") || test.contains(" ... ignored, ") {
                r.ignored += 1;
            }
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.running = None;
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
        t.add("running 4 tests");
        t.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("running 3 tests");
        t.add("test a ... ok");
        t.add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.end();
        assert_eq!(
            t,
            Totals {
                binaries: 2,
                passed: 5,
                failed: 1,
                ignored: 1,
                running: None,
            }
        );
        // A test that said it was skipped: passed by libtest, not by us.
        t.skip_one();
        assert_eq!((t.passed, t.ignored), (4, 2));
    }

    #[test]
    fn counts_an_aborted_binary_as_failed() {
        let mut t = Totals::default();
        t.add("running 5 tests");
        t.add("test a ... ok");
        t.add("test b ... ignored, needs two CPUs");
        t.add("test c ... ok");
        // The binary aborts here; the next one runs.
        t.add("running 1 test");
        t.add("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.end();
        assert_eq!((t.binaries, t.passed, t.failed, t.ignored), (2, 3, 2, 1));
        // One that aborts with every test reported still failed.
        t.add("running 1 test");
        t.add("test d ... ok");
        t.end();
        assert_eq!((t.binaries, t.passed, t.failed), (3, 4, 3));
    }
}
