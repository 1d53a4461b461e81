//! The harness of the golden, algorithm and differential tests: the real XDP
//! program loaded with maps written by the real compile -> apply path, frames
//! run through it with BPF_PROG_TEST_RUN, and every frame also run through
//! the reference model (`crate::model`), which must agree on the verdict, the
//! output bytes, the global counters, the listener and target statistics,
//! the active flows per target, the round-robin positions and the sticky
//! sessions.
//!
//! Needs root (CAP_BPF). Each harness loads its own program and maps.
use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{FlowKey, Stats, flow_flags};
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    plan::{MapPlan, Observed},
    policy::{self, Policy},
};

use crate::{
    model::{Model, Outcome, XDP_TX},
    packets::{LB_MAC, hex},
};

pub const S: u64 = 1_000_000_000;

/// Target MACs in these tests read like the address: 10.0.3.12 and
/// fd00:3::12 have 02:00:00:00:00:12. IPv4 addresses outside 10.0.0.0/16
/// also carry their second and third octets (10.6.2.12 has
/// 02:00:00:06:02:12), so that large groups there have a MAC per target.
pub fn mac_of(ip: &std::net::IpAddr) -> [u8; 6] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            let d = o[3] % 100;
            let last = ((d / 10) << 4) | (d % 10);
            if o[1] == 0 {
                [0x02, 0, 0, 0, 0, last]
            } else {
                [0x02, 0, 0, o[1], o[2], last]
            }
        }
        std::net::IpAddr::V6(v6) => [0x02, 0, 0, 0, 0, v6.octets()[15]],
    }
}

pub fn parse_policy(yaml: &str) -> Policy {
    policy::parse("golden.yaml", yaml).unwrap_or_else(|e| panic!("test policy: {e}"))
}

/// Every target's MAC known (`mac_of`), no health verdicts.
pub fn observed(policy: &Policy) -> Observed {
    let targets = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter().map(|t| (t.ip, mac_of(&t.ip))));
    Observed {
        iface_mac: LB_MAC,
        iface_nets: vec![],
        neighbors: targets.collect(),
        health: Default::default(),
    }
}

pub fn compile(policy: &Policy) -> MapPlan {
    policy::compile::compile(policy, &observed(policy)).expect("compile")
}

pub struct Harness {
    pub dp: Dataplane,
    pub plan: MapPlan,
    pub model: Model,
    /// Listener and target statistics the model expects (by id).
    listener_stats: BTreeMap<u32, Stats>,
    target_stats: BTreeMap<u32, Stats>,
    /// The kernel clock when the harness started (sticky deadlines hold it).
    started_ns: u64,
    /// Whether `compare` reads every sticky session after each frame (else
    /// only the frame's client's; `compare_state` reads them all).
    pub every_session_each_frame: bool,
}

impl Harness {
    pub fn new(yaml: &str) -> Harness {
        let plan = compile(&parse_policy(yaml));
        Harness::with_plan(plan)
    }

    pub fn with_plan(plan: MapPlan) -> Harness {
        let mut dp = Dataplane::load(&LoadOptions {
            flow_table_size: 4096,
            ..Default::default()
        })
        .expect("load lb (are you root?)");
        let started_ns = dp.clock().now_ns().expect("clock");
        dp.apply(&plan).expect("apply");
        Harness {
            dp,
            plan,
            model: Model::default(),
            listener_stats: BTreeMap::new(),
            target_stats: BTreeMap::new(),
            started_ns,
            every_session_each_frame: true,
        }
    }

    /// The data plane's clock, without the offset.
    fn clock_ns(&self) -> u64 {
        self.dp.clock().now_ns().expect("clock")
    }

    /// Applies another policy, keeping the time offset.
    pub fn reapply(&mut self, yaml: &str) {
        self.apply_plan(compile(&parse_policy(yaml)));
    }

    /// Applies another plan, keeping the time offset.
    pub fn apply_plan(&mut self, mut plan: MapPlan) {
        plan.config.time_offset_ns = self.plan.config.time_offset_ns;
        self.plan = plan;
        self.dp.apply(&self.plan).expect("apply");
    }

    /// Moves data-plane time (and the model's) forward by `secs`, through
    /// `Config::time_offset_ns`.
    pub fn advance(&mut self, secs: u64) {
        self.advance_ns(secs * S);
    }

    pub fn advance_ns(&mut self, ns: u64) {
        self.plan.config.time_offset_ns += ns;
        self.model.now_ns += ns;
        self.dp.apply(&self.plan).expect("apply");
    }

    /// Deletes a flow's entry from the flow table and the model (an LRU
    /// eviction); an error if only one of them had it.
    pub fn evict(&mut self, key: &FlowKey) -> Result<(), String> {
        let real = self.dp.remove_flow(key).expect("remove flow");
        let model = self.model.evict(key);
        if real == model {
            Ok(())
        } else {
            Err(format!(
                "evict {key:?}: the program had an entry: {real}, the model: {model}"
            ))
        }
    }

    /// Active flows per target id, as the data plane counts them.
    pub fn active(&self) -> BTreeMap<u32, i64> {
        self.plan
            .targets
            .iter()
            .map(|t| (t.id, self.dp.active_flows(t.id)))
            .collect()
    }

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .dp
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.dp
            .counters()
            .expect("counters")
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect()
    }

    /// Runs `frame` through the program and the model; asserts they agree
    /// (see the module documentation) and returns the model's outcome.
    pub fn check(&mut self, name: &str, frame: &[u8]) -> Outcome {
        self.compare(frame)
            .unwrap_or_else(|mismatch| panic!("{name}: {mismatch}"))
    }

    /// As `check`, but a disagreement is returned, described.
    pub fn compare(&mut self, frame: &[u8]) -> Result<Outcome, String> {
        let before = self.counters();
        let (action, output) = self.run(frame);
        let after = self.counters();
        let observed_mac = (action == XDP_TX && output.len() >= 6)
            .then(|| <[u8; 6]>::try_from(&output[..6]).unwrap());
        let expected = self.model.process_observed(&self.plan, frame, observed_mac);
        if (action, &output) != (expected.action, &expected.output) {
            return Err(format!(
                "verdict/bytes differ: model {} (target {:?}), program {}{}\ninput:\n{}\nexpected:\n{}\nactual:\n{}",
                expected.action,
                expected.target,
                action,
                match &expected.least_connections {
                    Some(c) => format!(" (least connections could pick {c:?})"),
                    None => String::new(),
                },
                hex(frame),
                hex(&expected.output),
                hex(&output)
            ));
        }
        let mut want = before.clone();
        for c in &expected.counters {
            *want.get_mut(c.name()).unwrap() += 1;
        }
        if after != want {
            return Err(format!(
                "counters: expected {:?}, got {}",
                expected.counters,
                diff(&want, &after)
            ));
        }
        self.compare_stats(&expected, frame.len() as u64)?;
        self.compare_counts()?;
        if self.every_session_each_frame {
            self.compare_sessions()?;
        } else if let Some(client) = expected.sticky_key {
            self.compare_session(client)?;
        }
        Ok(expected)
    }

    fn compare_stats(&mut self, o: &Outcome, len: u64) -> Result<(), String> {
        let (Some(listener), Some(target)) = (o.listener, o.target) else {
            return Ok(());
        };
        for (what, map, id) in [
            ("listener", &mut self.listener_stats, listener),
            ("target", &mut self.target_stats, target),
        ] {
            let s = map.entry(id).or_default();
            s.packets += 1;
            s.bytes += len;
            s.new_flows += o.new_flow as u64;
            let got = if what == "listener" {
                self.dp.listener_stats(id)
            } else {
                self.dp.target_stats(id)
            }
            .expect("stats");
            if got != *s {
                return Err(format!("{what} {id} stats: expected {s:?}, got {got:?}"));
            }
        }
        Ok(())
    }

    /// Active flows per target, round-robin positions and sticky sessions
    /// against the model.
    pub fn compare_state(&self) -> Result<(), String> {
        self.compare_counts()?;
        self.compare_sessions()
    }

    /// One client's sticky session against the model's.
    fn compare_session(&self, (group_id, addr_be): (u32, [u32; 4])) -> Result<(), String> {
        let key = lb_common::StickyKey { group_id, addr_be };
        let real = self.dp.sticky_session(&key).expect("STICKY");
        let model = self.model.sticky.get(&(group_id, addr_be));
        let now = self.clock_ns();
        let same = match (real, model) {
            (None, None) => true,
            (Some(r), Some(m)) => {
                r.target_id == m.target
                    && (self.started_ns..=now).contains(&r.expires_ns.wrapping_sub(m.expires_ns))
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "sticky session of {key:?}: expected {model:?}, got {real:?} \
                 (program deadlines include its clock, {}..={now})",
                self.started_ns
            ))
        }
    }

    /// Active flows per target and round-robin positions.
    fn compare_counts(&self) -> Result<(), String> {
        let ids: BTreeSet<u32> = self
            .plan
            .targets
            .iter()
            .map(|t| t.id)
            .chain(self.model.active.keys().copied())
            .collect();
        let model: BTreeMap<u32, i64> = ids.iter().map(|&id| (id, self.model.active(id))).collect();
        let real: BTreeMap<u32, i64> = ids
            .iter()
            .map(|&id| (id, self.dp.active_flows(id)))
            .collect();
        if real != model {
            return Err(format!("active flows: expected {model:?}, got {real:?}"));
        }
        let groups: BTreeSet<u32> = self
            .plan
            .groups
            .iter()
            .map(|g| g.id)
            .chain(self.model.round_robin.keys().copied())
            .collect();
        for g in groups {
            let real = self.dp.round_robin_position(g).expect("GROUP_RR");
            let model = self.model.round_robin_position(g);
            if real != model {
                return Err(format!(
                    "group {g} round-robin position: expected {model}, got {real}"
                ));
            }
        }
        Ok(())
    }

    /// Every sticky session.
    fn compare_sessions(&self) -> Result<(), String> {
        let real: BTreeMap<(u32, [u32; 4]), (u32, u64)> = self
            .dp
            .sticky_sessions()
            .expect("STICKY")
            .into_iter()
            .map(|(k, s)| ((k.group_id, k.addr_be), (s.target_id, s.expires_ns)))
            .collect();
        let model: BTreeMap<(u32, [u32; 4]), (u32, u64)> = self
            .model
            .sticky
            .iter()
            .map(|(&k, s)| (k, (s.target, s.expires_ns)))
            .collect();
        // The program's deadlines hold its clock at the session's start
        // (between the harness's start and now); the model's do not.
        let now = self.clock_ns();
        let same = real.len() == model.len()
            && real.iter().zip(&model).all(|((rk, r), (mk, m))| {
                let clock = r.1.wrapping_sub(m.1);
                rk == mk && r.0 == m.0 && (self.started_ns..=now).contains(&clock)
            });
        if !same {
            return Err(format!(
                "sticky sessions (target, deadline): expected {model:?}, got {real:?} \
                 (program deadlines include its clock, {}..={now})",
                self.started_ns
            ));
        }
        Ok(())
    }

    /// The flow tables against the model's: the same flows, each with the
    /// same target, ending (client FIN or RST seen) and counted state. One
    /// syscall per entry, so call it now and then.
    pub fn compare_flows(&self) -> Result<(), String> {
        let real: BTreeMap<String, (u32, bool, bool)> = self
            .dp
            .flow_entries()
            .expect("flow tables")
            .into_iter()
            .map(|(k, s)| {
                let ending = s.flags & (flow_flags::FIN | flow_flags::RST) != 0;
                let counted = s.flags & flow_flags::COUNTED != 0;
                (format!("{k:?}"), (s.target_id, ending, counted))
            })
            .collect();
        let model: BTreeMap<String, (u32, bool, bool)> = self
            .model
            .flows
            .iter()
            .map(|(k, f)| (format!("{k:?}"), (f.target, f.ending, f.counted)))
            .collect();
        if real != model {
            let only_real: Vec<_> = real
                .iter()
                .filter(|(k, v)| model.get(*k) != Some(v))
                .collect();
            let only_model: Vec<_> = model
                .iter()
                .filter(|(k, v)| real.get(*k) != Some(v))
                .collect();
            return Err(format!(
                "flow tables differ: program only/different {only_real:?}, model only/different {only_model:?}"
            ));
        }
        Ok(())
    }
}

/// The counters that differ, as `name: expected -> got`.
fn diff(want: &BTreeMap<&'static str, u64>, got: &BTreeMap<&'static str, u64>) -> String {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {}", got.get(k).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}
