//! The harness of the golden, algorithm and differential tests: the real XDP
//! program loaded with maps written by the real compile -> apply path, frames
//! run through it with BPF_PROG_TEST_RUN, and every frame also run through
//! the reference model (`crate::model`), which must agree on the verdict, the
//! output bytes, the global counters, the flow-table entry of the frame's
//! flow, the listener and target statistics, the active flows per target,
//! the round-robin positions and the sticky sessions.
//!
//! Policies are compiled as `lb run` compiles them: a harness's first plan
//! numbers everything afresh (a new data plane), and every later policy
//! takes its ids from the applied plan's (`Ids::assign`), with one table
//! cache. The model names everything by identity (`crate::model`); the
//! harness reads the program's maps by id and translates every id through
//! the applied plan's ids (retired targets included) before it compares: an
//! id that names nothing there is a mismatch in itself.
//!
//! Needs root (CAP_BPF). Each harness loads its own program and maps.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Instant,
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{FlowKey, ListenerKey, Stats, StickyKey, flow_table::flags};
use lb_user::{
    dataplane::{Dataplane, LoadOptions},
    ids::{Ids, TargetKey},
    maglev::TableCache,
    plan::{MapPlan, Observed},
    policy::{
        self, Policy,
        compile::{compile_next, ip_of},
    },
};

use crate::{
    model::{Client, Model, Outcome, ProgramRun, Span, Table, XDP_TX},
    packets::{LB_MAC, hex},
};

pub const S: u64 = 1_000_000_000;

/// Target MACs in these tests read like the address: 10.0.3.12 and
/// fd00:3::12 have 02:00:00:00:00:12. IPv4 addresses outside 10.0.0.0/16
/// also carry their second and third octets (10.6.2.12 has
/// 02:00:00:06:02:12), so that large groups there have a MAC per target.
pub fn mac_of(ip: &IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let d = o[3] % 100;
            let last = ((d / 10) << 4) | (d % 10);
            if o[1] == 0 {
                [0x02, 0, 0, 0, 0, last]
            } else {
                [0x02, 0, 0, o[1], o[2], last]
            }
        }
        IpAddr::V6(v6) => [0x02, 0, 0, 0, 0, v6.octets()[15]],
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
        ..Default::default()
    }
}

/// The plan of `policy` for a new data plane (everything numbered afresh).
pub fn compile(policy: &Policy) -> MapPlan {
    policy::compile::compile(policy, &observed(policy)).expect("compile")
}

/// Asserts that XDP program `program` of `object` is one BPF function: the
/// pipeline inlined into the entry point, with no BPF-to-BPF call (not even
/// to `memcpy`), since such a call costs every packet. The golden tests
/// check `lb`; the benchmark checks its build of the pipeline.
pub fn assert_one_bpf_function(object: &[u8], program: &str) {
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const PSEUDO_CALL: u8 = 1; // src_reg of a call to a BPF function
    let obj = aya_obj::Object::parse(object).expect("parse the object");
    let function = &obj.functions[&obj.programs[program].function_key()];
    let calls = function
        .instructions
        .iter()
        .filter(|i| i.code == CALL && i.src_reg() == PSEUDO_CALL)
        .count();
    assert_eq!(calls, 0, "{program}: {calls} BPF-to-BPF calls");
    assert!(
        function.instructions.len() > 1000,
        "{program}: the whole pipeline ({} instructions)",
        function.instructions.len()
    );
}

/// The identity of target `ip` of `group`.
pub fn target(group: &str, ip: &str) -> TargetKey {
    TargetKey::new(group.to_string(), ip.parse().expect("a target address"))
}

/// A listener key, readable: `10.0.3.49 tcp/80`.
pub fn listener_name(key: &ListenerKey) -> String {
    let proto = match key.proto {
        lb_common::PROTO_TCP => "tcp",
        lb_common::PROTO_UDP => "udp",
        _ => "?",
    };
    let vip = ip_of(key.addr_be, key.family);
    format!("{vip} {proto}/{}", u16::from_be(key.port_be))
}

/// The identities of the applied plan's ids, retired targets included: how
/// the harness reads the program's maps, which name everything by id.
#[derive(Debug, Default)]
struct Names {
    targets: HashMap<u32, TargetKey>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn of(ids: &Ids) -> Names {
        Names {
            targets: ids.targets().map(|(k, a)| (a.id, k.clone())).collect(),
            groups: ids.groups().map(|(n, id)| (id, n.to_string())).collect(),
        }
    }

    fn target(&self, id: u32, what: &str) -> Result<&TargetKey, String> {
        self.targets
            .get(&id)
            .ok_or_else(|| format!("{what} names target id {id}, which no target has"))
    }

    fn group(&self, id: u32, what: &str) -> Result<&str, String> {
        self.groups
            .get(&id)
            .map(String::as_str)
            .ok_or_else(|| format!("{what} names group id {id}, which no group has"))
    }
}

/// Whether `new` keeps every id of `old` that it still has (what
/// `Ids::assign` and `Ids::release` guarantee): else a plan was compiled
/// against other ids than the applied ones.
fn follows(old: &Ids, new: &Ids) -> Result<(), String> {
    for (key, id) in old.listeners() {
        if let Some(other) = new.listener(key).filter(|&n| n != id) {
            return Err(format!(
                "listener {} has id {other}, was {id}",
                listener_name(key)
            ));
        }
    }
    for (name, id) in old.groups() {
        if let Some(other) = new.group(name).filter(|&n| n != id) {
            return Err(format!("group {name} has id {other}, was {id}"));
        }
    }
    for (key, a) in old.targets() {
        if let Some(other) = new.target(key).filter(|n| n.id != a.id) {
            return Err(format!("target {key:?} has id {}, was {}", other.id, a.id));
        }
    }
    Ok(())
}

pub struct Harness {
    pub dp: Dataplane,
    /// The plan the maps hold.
    pub plan: MapPlan,
    pub model: Model,
    /// The tables of the last compile, as `lb run` keeps them.
    tables: TableCache,
    /// The applied plan's ids by number.
    names: Names,
    /// The highest target and group ids any plan of this harness had: the
    /// program's counts are read up to one past them, for counts that no
    /// identity accounts for.
    highest: (u32, u32),
    /// Listener and target statistics the model expects (by identity).
    listener_stats: HashMap<ListenerKey, Stats>,
    target_stats: BTreeMap<TargetKey, Stats>,
    /// The kernel clock when the harness started (sticky deadlines hold it).
    started_ns: u64,
    /// Whether `compare` reads every sticky session after each frame (else
    /// only the frame's client's; `compare_state` reads them all).
    pub every_session_each_frame: bool,
}

impl Harness {
    /// A new data plane holding `yaml` (every target's MAC known).
    pub fn new(yaml: &str) -> Harness {
        let policy = parse_policy(yaml);
        Harness::with_policy(&policy, &observed(&policy))
    }

    /// A new data plane holding `policy` (numbered afresh).
    pub fn with_policy(policy: &Policy, observed: &Observed) -> Harness {
        Harness::with_policy_options(policy, observed, &default_options(), None)
    }

    /// A new data plane holding `yaml`'s policy, loaded with `options`.
    pub fn with_options(yaml: &str, options: &LoadOptions) -> Harness {
        let policy = parse_policy(yaml);
        Harness::with_policy_options(&policy, &observed(&policy), options, None)
    }

    /// A new data plane holding `policy` (numbered afresh), loaded with
    /// `options`, and with the flow table's hash seed `table_seed` if one
    /// is given (flows then meet in the same buckets every run).
    pub fn with_policy_options(
        policy: &Policy,
        observed: &Observed,
        options: &LoadOptions,
        table_seed: Option<u64>,
    ) -> Harness {
        let mut tables = TableCache::default();
        let plan = compile_with(policy, observed, &Ids::default(), &mut tables);
        let dp = match table_seed {
            Some(seed) => Dataplane::load_seeded(options, seed),
            None => Dataplane::load(options),
        };
        let mut dp = dp.expect("load lb (are you root?)");
        let started_ns = dp.clock().now_ns().expect("clock");
        dp.apply(&plan).expect("apply");
        let (buckets, seed) = dp.flow_table_layout();
        Harness {
            dp,
            names: Names::of(&plan.ids),
            highest: highest(&plan.ids, (0, 0)),
            plan,
            model: Model::new(Table::new(buckets, seed), policy, observed),
            tables,
            listener_stats: HashMap::new(),
            target_stats: BTreeMap::new(),
            started_ns,
            every_session_each_frame: true,
        }
    }

    /// The data plane's clock, without the offset.
    fn clock_ns(&self) -> u64 {
        self.dp.clock().now_ns().expect("clock")
    }

    /// Applies another policy (every target's MAC known), as `lb run` does.
    pub fn reapply(&mut self, yaml: &str) {
        let policy = parse_policy(yaml);
        self.apply_policy(&policy, &observed(&policy));
    }

    /// Applies another policy as `lb run` does: compiled with ids assigned
    /// from the applied plan's (`Harness::compile_next`). The model takes
    /// the policy itself.
    pub fn apply_policy(&mut self, policy: &Policy, observed: &Observed) {
        let plan = self.compile_next(policy, observed);
        self.model.set_policy(policy, observed);
        self.apply_plan(plan);
    }

    /// The plan of `policy` that follows the applied one: every listener,
    /// group and target that stays keeps its id, those that leave are
    /// retired, new ones take the lowest free ids.
    pub fn compile_next(&mut self, policy: &Policy, observed: &Observed) -> MapPlan {
        compile_with(policy, observed, &self.plan.ids, &mut self.tables)
    }

    /// Applies a plan whose ids follow the applied plan's (`compile_next`,
    /// or a plan made from one, such as one with released ids), keeping the
    /// time offset. The model's policy stays: a plan of another policy goes
    /// through `apply_policy`. What the data plane forgets, the expectations forget:
    /// the statistics of listeners no longer in the plan (their ids' are
    /// zeroed, or go to another listener, whose start from zero), of
    /// released targets, and the round-robin positions of released groups.
    pub fn apply_plan(&mut self, mut plan: MapPlan) {
        if let Err(e) = follows(&self.plan.ids, &plan.ids) {
            panic!("a plan compiled against other ids than the applied plan's: {e}");
        }
        plan.config.time_offset_ns = self.plan.config.time_offset_ns;
        self.dp.apply(&plan).expect("apply");
        self.listener_stats
            .retain(|key, _| plan.ids.listener(key).is_some());
        self.target_stats
            .retain(|key, _| plan.ids.target(key).is_some());
        self.model
            .forget_groups(|name| plan.ids.group(name).is_some());
        self.names = Names::of(&plan.ids);
        self.highest = highest(&plan.ids, self.highest);
        self.plan = plan;
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

    /// Deletes a flow's entry from the flow table and the model (as the
    /// sweeper deletes one); an error if only one of them had it.
    pub fn delete_flow(&mut self, key: &FlowKey) -> Result<(), String> {
        let real = self.dp.remove_flow(key).expect("remove flow");
        let model = self.model.delete(key);
        if real == model {
            Ok(())
        } else {
            Err(format!(
                "delete {key:?}: the program had an entry: {real}, the model: {model}"
            ))
        }
    }

    /// Active flows per target (retired ones included), as the data plane
    /// counts them.
    pub fn active(&self) -> BTreeMap<TargetKey, i64> {
        self.plan
            .ids
            .targets()
            .map(|(key, a)| (key.clone(), self.dp.active_flows(a.id)))
            .collect()
    }

    /// The program's id of target `key` (retired or not).
    pub fn target_id(&self, key: &TargetKey) -> Option<u32> {
        self.plan.ids.target(key).map(|a| a.id)
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
        let clock_before = self.clock_ns();
        let (action, output) = self.run(frame);
        let clock_after = self.clock_ns();
        let after = self.counters();
        let key = crate::model::parse(frame).ok().map(|(k, _)| k);
        let offset = self.plan.config.time_offset_ns;
        let run = ProgramRun {
            mac: (action == XDP_TX && output.len() >= 6)
                .then(|| <[u8; 6]>::try_from(&output[..6]).unwrap()),
            entry: key
                .and_then(|k| self.dp.flow_entry(&k).expect("flow table"))
                .map(|e| (e.bucket, e.way)),
            clock: Span {
                from: clock_before + offset,
                to: clock_after + offset,
            },
        };
        let model_before = key.and_then(|k| self.model.flows.get(&k).cloned());
        let expected = self.model.process_observed(frame, &run);
        if (action, &output) != (expected.action, &expected.output) {
            let program_entry = key.map(|k| self.dp.flow_entry(&k));
            return Err(verdicts_differ(
                frame,
                &expected,
                (action, &output),
                format!(
                    "the flow's entry in the program's table after it: {program_entry:?}, \
                     in the model's before it: {model_before:?}"
                ),
            ));
        }
        let model_entry = key.and_then(|k| self.model.flows.get(&k)).map(|f| f.entry);
        if run.entry != model_entry {
            return Err(format!(
                "the flow's entry (bucket, way): program {:?}, model {model_entry:?}; \
                 the model's before the frame: {model_before:?}\n{}",
                run.entry,
                match &expected.insert {
                    Some(insert) => format!("a new flow {}", insert.describe()),
                    None => "(no new entry chosen)".into(),
                }
            ));
        }
        self.compare_after(&expected, frame.len() as u64, before, &after)?;
        Ok(expected)
    }

    /// After a frame both sides agree on: the counters (`before` and
    /// `after` it), the statistics, the active counts and round-robin
    /// positions, and the sticky sessions.
    fn compare_after(
        &mut self,
        expected: &Outcome,
        len: u64,
        mut want: BTreeMap<&'static str, u64>,
        after: &BTreeMap<&'static str, u64>,
    ) -> Result<(), String> {
        for c in &expected.counters {
            *want.get_mut(c.name()).unwrap() += 1;
        }
        if *after != want {
            return Err(format!(
                "counters: expected {:?}, got {}",
                expected.counters,
                diff(&want, after)
            ));
        }
        self.compare_stats(expected, len)?;
        self.compare_counts()?;
        if self.every_session_each_frame {
            self.compare_sessions()
        } else if let Some(client) = &expected.sticky_key {
            self.compare_session(client)
        } else {
            Ok(())
        }
    }

    /// Counts a forwarded frame in the statistics the model expects of its
    /// listener and target, and compares them with the program's, read by
    /// the ids the applied plan gives them.
    fn compare_stats(&mut self, o: &Outcome, len: u64) -> Result<(), String> {
        let (Some(listener), Some(target)) = (&o.listener, &o.target) else {
            return Ok(());
        };
        let add = |s: &mut Stats| {
            s.packets += 1;
            s.bytes += len;
            s.new_flows += o.new_flow as u64;
        };
        add(self.listener_stats.entry(*listener).or_default());
        add(self.target_stats.entry(target.clone()).or_default());
        self.compare_listener_stats(listener)?;
        self.compare_target_stats(target)
    }

    fn compare_listener_stats(&self, key: &ListenerKey) -> Result<(), String> {
        let name = listener_name(key);
        let id = self
            .plan
            .ids
            .listener(key)
            .ok_or_else(|| format!("listener {name} has no id"))?;
        let want = self.listener_stats.get(key).copied().unwrap_or_default();
        let got = self.dp.listener_stats(id).expect("stats");
        if got != want {
            return Err(format!(
                "listener {name} (id {id}) stats: expected {want:?}, got {got:?}"
            ));
        }
        Ok(())
    }

    fn compare_target_stats(&self, key: &TargetKey) -> Result<(), String> {
        let id = self
            .target_id(key)
            .ok_or_else(|| format!("target {key:?} has no id"))?;
        let want = self.target_stats.get(key).copied().unwrap_or_default();
        let got = self.dp.target_stats(id).expect("stats");
        if got != want {
            return Err(format!(
                "target {key:?} (id {id}) stats: expected {want:?}, got {got:?}"
            ));
        }
        Ok(())
    }

    /// The statistics of every listener of the plan and every target with
    /// an id (retired ones included), active flows per target, round-robin
    /// positions and sticky sessions against the model.
    pub fn compare_state(&self) -> Result<(), String> {
        for l in &self.plan.listeners {
            self.compare_listener_stats(&l.key)?;
        }
        for (key, _) in self.plan.ids.targets() {
            self.compare_target_stats(key)?;
        }
        self.compare_counts()?;
        self.compare_sessions()
    }

    /// One client's sticky session against the model's.
    fn compare_session(&self, client: &Client) -> Result<(), String> {
        let group_id = self
            .plan
            .ids
            .group(&client.group)
            .ok_or_else(|| format!("group {} has no id", client.group))?;
        let key = StickyKey {
            group_id,
            addr_be: client.addr_be,
        };
        let real = match self.dp.sticky_session(&key).expect("STICKY") {
            Some(s) => {
                let target = self.names.target(s.target_id, "a sticky session")?;
                Some((target.clone(), s.expires_ns))
            }
            None => None,
        };
        let model = self
            .model
            .sticky
            .get(client)
            .map(|s| (s.target.clone(), s.expires_ns));
        let now = self.clock_ns();
        let same = match (&real, &model) {
            (None, None) => true,
            (Some(r), Some(m)) => {
                r.0 == m.0 && (self.started_ns..=now).contains(&r.1.wrapping_sub(m.1))
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "sticky session of {client:?} (group id {group_id}): expected {model:?}, got {real:?} \
                 (program deadlines include its clock, {}..={now})",
                self.started_ns
            ))
        }
    }

    /// Active flows per target and round-robin positions per group, by
    /// identity.
    fn compare_counts(&self) -> Result<(), String> {
        self.compare_active()?;
        self.compare_round_robin()
    }

    /// Active flows per target; a count under an id that names no target
    /// (up to one past the highest given) is a mismatch, and so is one the
    /// model has for a target without id.
    fn compare_active(&self) -> Result<(), String> {
        let mut real = BTreeMap::new();
        for id in 0..=self.highest.0 + 1 {
            let n = self.dp.active_flows(id);
            match self.names.targets.get(&id) {
                Some(key) => {
                    real.insert(key.clone(), n);
                }
                None if n != 0 => {
                    return Err(format!(
                        "active flows: {n} under target id {id}, which no target has"
                    ));
                }
                None => {}
            }
        }
        let mut model: BTreeMap<TargetKey, i64> = real
            .keys()
            .map(|k| (k.clone(), self.model.active(k)))
            .collect();
        for (key, &n) in &self.model.active {
            if n != 0 && !model.contains_key(key) {
                model.insert(key.clone(), n);
            }
        }
        if real != model {
            return Err(format!("active flows: expected {model:?}, got {real:?}"));
        }
        Ok(())
    }

    /// Round-robin positions per group; a position under an id that names
    /// no group is a mismatch, and so is one the model has for a group
    /// without id.
    fn compare_round_robin(&self) -> Result<(), String> {
        for id in 0..=self.highest.1 + 1 {
            let real = self.dp.round_robin_position(id).expect("GROUP_RR");
            let Some(name) = self.names.groups.get(&id) else {
                if real != 0 {
                    return Err(format!(
                        "round-robin position {real} under group id {id}, which no group has"
                    ));
                }
                continue;
            };
            let model = self.model.round_robin_position(name);
            if real != model {
                return Err(format!(
                    "group {name} (id {id}) round-robin position: expected {model}, got {real}"
                ));
            }
        }
        match self
            .model
            .round_robin
            .iter()
            .find(|(name, n)| **n != 0 && self.plan.ids.group(name).is_none())
        {
            Some((name, n)) => Err(format!(
                "the model has round-robin position {n} for group {name}, which has no id"
            )),
            None => Ok(()),
        }
    }

    /// Every sticky session.
    fn compare_sessions(&self) -> Result<(), String> {
        let mut real = BTreeMap::new();
        for (k, s) in self.dp.sticky_sessions().expect("STICKY") {
            let client = Client {
                group: self
                    .names
                    .group(k.group_id, "a sticky session")?
                    .to_string(),
                addr_be: k.addr_be,
            };
            let target = self.names.target(s.target_id, "a sticky session")?;
            real.insert(client, (target.clone(), s.expires_ns));
        }
        let model: BTreeMap<Client, (TargetKey, u64)> = self
            .model
            .sticky
            .iter()
            .map(|(k, s)| (k.clone(), (s.target.clone(), s.expires_ns)))
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

    /// The flow table against the model's: each of the model's flows has
    /// an entry, where the model has it, with the same target, ending
    /// (client FIN or RST seen), established and counted state and a
    /// last-seen time within the model's stamp, and the table has no other
    /// entry. An entry holds a tag, not the key: the
    /// model's keys are looked up.
    pub fn compare_flows(&self) -> Result<(), String> {
        let mut differ = Vec::new();
        for (k, f) in &self.model.flows {
            let Some(e) = self.dp.flow_entry(k).expect("flow table") else {
                differ.push(format!("{k:?}: no entry, model {f:?}"));
                continue;
            };
            let what = format!("the flow entry of {k:?}");
            let target = self.names.target(e.word.target_id(), &what)?.clone();
            let ending = e.word.flags() & (flags::FIN | flags::RST) != 0;
            let counted = e.word.flags() & flags::COUNTED != 0;
            let again = e.word.flags() & flags::AGAIN != 0;
            let entry = (e.bucket, e.way);
            if (&target, ending, counted, again, entry)
                != (&f.target, f.ending, f.counted, f.again, f.entry)
                || !f.stamped.holds(e.seen)
            {
                differ.push(format!(
                    "{k:?}: program ({target:?}, ending {ending}, counted {counted}, \
                     again {again}, entry {entry:?}, seen {}), model {f:?} \
                     (stamped in time units: {:?})",
                    e.seen,
                    f.stamped.units()
                ));
            }
        }
        let entries = self.dp.flow_entries().expect("flow table").len();
        if entries != self.model.flows.len() {
            differ.push(format!(
                "{entries} entries in the program's table, {} flows in the model's",
                self.model.flows.len()
            ));
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(format!("flow tables differ:\n{}", differ.join("\n")))
        }
    }
}

/// The harness's data plane unless a test says otherwise: a flow table
/// that these tests' flows never fill.
fn default_options() -> LoadOptions {
    LoadOptions {
        flow_table_size: 4096,
    }
}

/// The description of a frame whose verdict or bytes differ: what each
/// side did with it, `entries` (the flow's entry on each side), and the
/// frame, the model's output and the program's.
fn verdicts_differ(
    frame: &[u8],
    expected: &Outcome,
    (action, output): (u32, &[u8]),
    entries: String,
) -> String {
    let choices = match &expected.least_connections {
        Some(c) => format!(" (least connections could pick {c:?})"),
        None => String::new(),
    };
    format!(
        "verdict/bytes differ: model {} (target {:?}), program {action}{choices}\n{entries}\n\
         input:\n{}\nexpected:\n{}\nactual:\n{}",
        expected.action,
        expected.target,
        hex(frame),
        hex(&expected.output),
        hex(output)
    )
}

/// Compiles `policy` as `lb run` does, following the plan whose ids are
/// `previous`, reusing `tables`.
fn compile_with(
    policy: &Policy,
    observed: &Observed,
    previous: &Ids,
    tables: &mut TableCache,
) -> MapPlan {
    compile_next(policy, observed, previous, Instant::now(), tables).expect("compile")
}

/// The highest target and group ids of `ids` and `before`.
fn highest(ids: &Ids, before: (u32, u32)) -> (u32, u32) {
    let target = ids.targets().map(|(_, a)| a.id).max().unwrap_or(0);
    let group = ids.groups().map(|(_, id)| id).max().unwrap_or(0);
    (before.0.max(target), before.1.max(group))
}

/// The counters that differ, as `name: expected -> got`.
fn diff(want: &BTreeMap<&'static str, u64>, got: &BTreeMap<&'static str, u64>) -> String {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {}", got.get(k).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}
