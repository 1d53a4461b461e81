//! Test runs on chosen CPUs at once: one thread per CPU, pinned there with
//! `sched_setaffinity` (BPF_PROG_TEST_RUN runs the program on the calling
//! CPU), all released together by a barrier.
use std::sync::Barrier;

use anyhow::{Context as _, Result, anyhow};
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

/// The CPUs this process may run on.
pub fn allowed() -> Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// The first two CPUs this process may run on, or why there are not two.
pub fn pair() -> Result<[usize; 2], String> {
    match allowed() {
        Ok(cpus) if cpus.len() >= 2 => Ok([cpus[0], cpus[1]]),
        Ok(cpus) => Err(format!("only one CPU allowed (affinity mask: {cpus:?})")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pin a thread to CPU {cpu}"))
}

/// Runs `f(k)` on a thread pinned to `cpus[k]`, for every k at once; the
/// results in the order of `cpus`.
pub fn on_cpus<T: Send>(cpus: &[usize], f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let start = Barrier::new(cpus.len());
    std::thread::scope(|s| {
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(k, &cpu)| {
                let (f, start) = (&f, &start);
                s.spawn(move || {
                    let pinned = pin(cpu);
                    // Every thread waits, pinned or not, so none is left
                    // waiting for one that failed.
                    start.wait();
                    pinned.and_then(|()| f(k))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("a pinned thread panicked"))?)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_closure_runs_on_its_cpu() {
        let cpus = allowed().unwrap();
        let on = on_cpus(&cpus, |k| {
            let set = sched_getaffinity(Pid::from_raw(0))?;
            Ok((
                k,
                (0..CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap())
                    .collect::<Vec<_>>(),
            ))
        })
        .unwrap();
        for (i, (k, set)) in on.into_iter().enumerate() {
            assert_eq!((k, set), (i, vec![cpus[i]]));
        }
    }
}
