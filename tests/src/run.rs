//! A lab with `lb run` on it: the set-up every namespace test of `lb` starts
//! from.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

use crate::{
    Lab, LabOptions, Node,
    client::{self, Proto, Tally},
    lb::LbProcess,
    policy::LabPolicy,
    status::Status,
    topo::VIP4,
};

/// One lab at a time per test binary: two cores do not run several labs,
/// their servers and their load without timeouts. (Cargo runs test binaries
/// one after another.)
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the one-lab-at-a-time lock of this test binary (a test that failed
/// while holding it does not poison it for the others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lab and `lb run` on it in native XDP mode. Fields drop in order: `lb`,
/// then the lab, then the lock.
pub struct LabRun {
    pub lb: LbProcess,
    pub lab: Lab,
    /// The policy file `lb` runs.
    pub policy: PathBuf,
    /// When `lb` said it was ready.
    pub ready: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl LabRun {
    /// A new lab running `policy`.
    pub fn start(policy: &LabPolicy) -> LabRun {
        LabRun::start_yaml(&policy.yaml(), |_| {})
    }

    /// A new lab whose servers `prepare` may set up (status codes, ping)
    /// before `lb` starts with `policy`.
    pub fn start_with(policy: &LabPolicy, prepare: impl FnOnce(&Lab)) -> LabRun {
        LabRun::start_yaml(&policy.yaml(), prepare)
    }

    /// A new lab whose servers `prepare` may set up (status codes, ping)
    /// before `lb` starts with the policy `yaml`.
    pub fn start_yaml(yaml: &str, prepare: impl FnOnce(&Lab)) -> LabRun {
        LabRun::start_in(LabOptions::default(), yaml, &[], prepare)
    }

    /// A new lab running `policy` with more arguments of `lb run`
    /// (`--metrics ADDR`, say).
    pub fn start_args(policy: &LabPolicy, args: &[&str]) -> LabRun {
        LabRun::start_in(LabOptions::default(), &policy.yaml(), args, |_| {})
    }

    /// Like [`LabRun::start_yaml`], with more arguments of `lb run`.
    pub fn start_yaml_args(yaml: &str, args: &[&str], prepare: impl FnOnce(&Lab)) -> LabRun {
        LabRun::start_in(LabOptions::default(), yaml, args, prepare)
    }

    /// Like [`LabRun::start_yaml_args`], in a lab made with `options` (its
    /// router, for one).
    pub fn start_in(
        options: LabOptions,
        yaml: &str,
        args: &[&str],
        prepare: impl FnOnce(&Lab),
    ) -> LabRun {
        let serial = serial();
        let lab = Lab::with(options).unwrap_or_else(|e| panic!("lab: {e}"));
        prepare(&lab);
        let path = lab.write_file("policy.yaml", yaml);
        let mut all = vec!["--xdp-mode", "native"];
        all.extend_from_slice(args);
        let lb = lab
            .start_lb(&path, &all)
            .unwrap_or_else(|e| panic!("start lb: {e}\npolicy:\n{yaml}"));
        LabRun {
            lb,
            lab,
            policy: path,
            ready: Instant::now(),
            _serial: serial,
        }
    }

    /// Rewrites the policy file and has `lb` reload it (SIGHUP); returns
    /// once the status report shows `applied` true.
    pub fn reload(&self, policy: &LabPolicy, what: &str, applied: impl Fn(&Status) -> bool) {
        self.reload_yaml(&policy.yaml(), what, applied);
    }

    /// Like [`LabRun::reload`], with the policy `yaml`.
    pub fn reload_yaml(&self, yaml: &str, what: &str, applied: impl Fn(&Status) -> bool) {
        std::fs::write(&self.policy, yaml).unwrap();
        let pid = self.lb.pid().expect("lb running") as i32;
        signal::kill(Pid::from_raw(pid), signal::Signal::SIGHUP).unwrap();
        self.lb
            .wait_for(Duration::from_secs(20), what, |s| applied(s).then_some(()))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.lb.log()));
    }

    /// `n` new flows from `src` to the VIP's `port` from the client (see
    /// `client::burst`), counted per target.
    pub fn burst(
        &self,
        proto: Proto,
        src: IpAddr,
        first_port: Option<u16>,
        port: u16,
        n: usize,
        deadline: Instant,
    ) -> Tally {
        let dst = SocketAddr::new(VIP4.into(), port);
        let answers = self.lab.run_in(Node::Client, || {
            client::burst(proto, src, first_port, dst, n, deadline)
        });
        Tally::of(&answers)
    }

    /// Stops nothing: gives the parts back (the lock goes with the lab).
    pub fn into_parts(self) -> (LbProcess, Lab, MutexGuard<'static, ()>) {
        (self.lb, self.lab, self._serial)
    }
}
