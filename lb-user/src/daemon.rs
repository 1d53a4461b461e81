//! `lb run`: load the policy, open the pinned data plane (adopting the one
//! an earlier `lb` left, with all its flows), keep its maps in step with the
//! policy (SIGHUP reloads it), the targets' MACs and their health, serve
//! the API, and on SIGINT/SIGTERM leave with the data plane still
//! forwarding (`lb detach` removes it).
//!
//! Every event goes through one step, [`Daemon::reconcile`]: compile the
//! policy with what is observed now, and apply the plan if it changed. A
//! policy that fails to load at start stops `lb` before anything changes. A
//! reload that fails is refused (logged, shown in `lb status`) and the last
//! good policy keeps serving. A failed write of the maps is logged, shown
//! and retried; the data plane forwards with what it holds meanwhile.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{debug, error, info, warn};

use crate::{
    api,
    dataplane::{
        AttachMode, Attached, Dataplane, LoadOptions,
        pin::Instance,
        sweep::{SweepReport, SweeperHandle},
    },
    flows::Rules,
    health::{HealthMonitor, HealthSnapshot, HealthState, TargetKey},
    ids::Ids,
    maglev::TableCache,
    neighbors::{self, InterfaceInfo, NeighborWatch},
    plan::{Exclusion, MapPlan, Observed},
    policy::{self, HostFacts, Policy, compile::compile_next},
    state::RuntimeState,
    status::{self, DataPlaneStatus, ErrorStatus},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub socket: PathBuf,
    /// How long to wait at start for target MACs before attaching anyway.
    pub resolve_wait: Duration,
}

/// Wall-clock time of the steps of a start or a reload, for its log line:
/// `policy:540ms,compile:80ms,apply:50ms` (one token, for `took=`).
struct Phases {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends step `name` (it began where the last one ended).
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}:{}ms", took.as_millis())?;
        }
        Ok(())
    }
}

/// A policy file read and parsed (checked on its own, not yet against the
/// host).
struct Parsed {
    name: String,
    text: String,
    policy: Policy,
}

/// Reads (in bounded time and memory: `policy::limits`) and parses the
/// policy; one that balances nothing is refused for serving (an empty or
/// truncated file must not delete every listener).
fn parse_policy(path: &Path) -> anyhow::Result<Parsed> {
    let name = path.display().to_string();
    let text = policy::read(path)?;
    let policy = policy::parse(&name, &text)?;
    policy::check_servable(&name, &text, &policy)?;
    Ok(Parsed { name, text, policy })
}

/// The policy checked against the host (targets on the interface's subnets).
fn check_for_host(parsed: Parsed, iface: &InterfaceInfo) -> anyhow::Result<Policy> {
    let Parsed {
        name,
        text,
        mut policy,
    } = parsed;
    policy.interface = Some(iface.name.clone());
    policy::validate_for_host(
        &name,
        &text,
        &policy,
        &HostFacts {
            iface_nets: iface.nets.clone(),
        },
    )?;
    Ok(policy)
}

/// Targets whose MAC comes from the neighbour table (no static `mac:`).
fn dynamic_targets(policy: &Policy) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter())
        .filter(|t| t.mac.is_none())
        .map(|t| t.ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

type Snapshots = BTreeMap<TargetKey, HealthSnapshot>;
type Verdicts = BTreeMap<TargetKey, HealthState>;

/// The verdicts the compiler needs, from the monitor's snapshots.
fn verdicts(snapshots: &Snapshots) -> Verdicts {
    snapshots
        .iter()
        .map(|(key, snap)| (key.clone(), snap.state))
        .collect()
}

/// Which interface: `--iface`, else the policy's `interface:`.
fn interface_name(opts: &RunOptions, parsed: &Parsed) -> anyhow::Result<String> {
    if let Some(iface) = &opts.iface {
        return Ok(iface.clone());
    }
    parsed.policy.interface.clone().ok_or_else(|| {
        anyhow!(
            "{}: no interface: give --iface or set `interface:` in the policy",
            parsed.name
        )
    })
}

/// How often the flow tables are swept (ended entries deleted, active flow
/// counts corrected, retired ids released).
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How long MACs inherited from an adopted data plane stand in for
/// targets the neighbour watch has not resolved (it asks the kernel for
/// each at start, and re-reads the table this often anyway).
const INHERIT_MACS: Duration = Duration::from_secs(30);

/// Waits between retries of a failed write of the maps.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A running `lb`: what it serves, what it observes, and the data plane.
struct Daemon {
    opts: RunOptions,
    iface: InterfaceInfo,
    instance: Instance,
    policy: Policy,
    tables: TableCache,
    verdicts: Verdicts,
    macs: watch::Receiver<BTreeMap<IpAddr, [u8; 6]>>,
    /// MACs the adopted data plane had, for targets the neighbour watch has
    /// not reported yet: a restart must not take a target out for the
    /// moment its MAC takes to show. Kept until `inherited_until`.
    inherited_macs: BTreeMap<IpAddr, [u8; 6]>,
    inherited_until: Option<tokio::time::Instant>,
    dataplane: Dataplane,
    /// The plan wanted: compiled from `policy` with what is observed.
    plan: MapPlan,
    /// The maps hold `plan`.
    in_sync: bool,
    retry_in: Duration,
    retry_at: Option<tokio::time::Instant>,
    /// Started once the first plan is written: its rules (timeouts, retired
    /// ids) come from the plan the maps hold, never from a guess.
    sweeper: Option<SweeperHandle>,
    rules: Rules,
    state: RuntimeState,
    errors: ErrorStatus,
    mode: String,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting (or right after
    // `lb ready`) must take the orderly way out, never the default action.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    raise_open_files_limit();
    let mut timer = Phases::start();
    let parsed = parse_policy(&opts.config)?;
    let iface = neighbors::interface(&interface_name(&opts, &parsed)?).await?;
    let policy = check_for_host(parsed, &iface)?;
    let instance = Instance::of_interface(&iface.name);
    let _lock = instance.lock()?;
    timer.lap("policy");

    let (watch, mut macs) = NeighborWatch::start(iface.index, dynamic_targets(&policy)).await?;
    wait_for_macs(&mut macs, &dynamic_targets(&policy), opts.resolve_wait).await;
    timer.lap("macs");
    let dataplane = Dataplane::open_pinned(
        &instance,
        &LoadOptions {
            flow_table_size: policy.max_flows(),
            ..Default::default()
        },
    )?;
    timer.lap("load");
    let state = saved_state(&instance, &dataplane);
    let (monitor, health) = HealthMonitor::start_with(&policy, state.verdicts());
    let mut daemon = Daemon::new(
        opts, iface, instance, policy, dataplane, macs, state, &health,
    )?;
    daemon.first_apply(&mut timer)?;
    daemon.attach()?;
    let api = api::bind(&daemon.opts.socket)
        .with_context(|| format!("cannot serve the API on {}", daemon.opts.socket.display()))?;
    timer.lap("attach");
    daemon.ready(&timer);
    let services = Services {
        monitor,
        health,
        watch,
        api,
    };
    daemon.serve(signals, services).await
}

/// The signals `lb run` acts on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What runs beside the daemon's own state: the health monitor and its
/// snapshots, the neighbour watch, the API socket.
struct Services {
    monitor: HealthMonitor,
    health: watch::Receiver<Snapshots>,
    watch: NeighborWatch,
    api: tokio::net::UnixListener,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The runtime state saved for an adopted data plane (health verdicts), or
/// a fresh one.
fn saved_state(instance: &Instance, dataplane: &Dataplane) -> RuntimeState {
    if dataplane.adopted() {
        match RuntimeState::load(&instance.state_dir(), dataplane.instance()) {
            Ok(Some(state)) => return state,
            Ok(None) => warn!(
                dir = %instance.state_dir().display(),
                "no saved runtime state for the adopted data plane: every checked target starts initial"
            ),
            Err(err) => {
                warn!(%err, "the saved runtime state is unreadable: every checked target starts initial")
            }
        }
    }
    RuntimeState::new(dataplane.instance())
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: RunOptions,
        iface: InterfaceInfo,
        instance: Instance,
        policy: Policy,
        dataplane: Dataplane,
        macs: watch::Receiver<BTreeMap<IpAddr, [u8; 6]>>,
        state: RuntimeState,
        health: &watch::Receiver<Snapshots>,
    ) -> anyhow::Result<Daemon> {
        let inherited_macs = if dataplane.adopted() {
            dataplane
                .target_macs()?
                .into_iter()
                .map(|(key, mac)| (key.ip, mac))
                .collect()
        } else {
            BTreeMap::new()
        };
        let plan = MapPlan {
            ids: Arc::new(dataplane.ids().clone()),
            config: Default::default(),
            listeners: Vec::new(),
            groups: Vec::new(),
            targets: Vec::new(),
        };
        let rules = Rules::of(&plan);
        let verdicts = verdicts(&health.borrow());
        let mode = state.xdp_mode.clone().unwrap_or_else(|| "unknown".into());
        Ok(Daemon {
            opts,
            iface,
            instance,
            policy,
            tables: TableCache::default(),
            verdicts,
            macs,
            inherited_until: (!inherited_macs.is_empty())
                .then(|| tokio::time::Instant::now() + INHERIT_MACS),
            inherited_macs,
            dataplane,
            plan,
            in_sync: false,
            retry_in: RETRY_FIRST,
            retry_at: None,
            sweeper: None,
            rules,
            state,
            errors: ErrorStatus::default(),
            mode,
        })
    }

    /// What is observed of the host now.
    fn observed(&self) -> Observed {
        let mut neighbors = self.inherited_macs.clone();
        neighbors.extend(self.macs.borrow().iter().map(|(ip, mac)| (*ip, *mac)));
        Observed {
            iface_mac: self.iface.mac,
            iface_nets: self.iface.nets.clone(),
            neighbors,
            health: self.verdicts.clone(),
            ..Observed::default()
        }
    }

    /// The plan of `policy` with what is observed now, its ids following
    /// those of the plan wanted so far.
    fn compile(&mut self, policy: &Policy) -> anyhow::Result<MapPlan> {
        let seen = self.observed();
        Ok(compile_next(
            policy,
            &seen,
            &self.plan.ids,
            Instant::now(),
            &mut self.tables,
        )?)
    }

    /// The start's first plan, which must be written: a start that cannot
    /// write its maps stops (an adopted data plane forwards on meanwhile).
    fn first_apply(&mut self, timer: &mut Phases) -> anyhow::Result<()> {
        let policy = self.policy.clone();
        self.plan = self.compile(&policy)?;
        timer.lap("compile");
        self.dataplane.apply(&self.plan)?;
        timer.lap("apply");
        self.rules = Rules::of(&self.plan);
        self.sweeper = Some(
            self.dataplane
                .flow_sweeper()?
                .spawn(self.rules.clone(), SWEEP_INTERVAL),
        );
        self.applied();
        report_exclusions(&self.plan);
        Ok(())
    }

    /// The one step every event goes through: compile, and apply the plan
    /// if it changed (or the last write failed).
    fn reconcile(&mut self) {
        let policy = self.policy.clone();
        match self.compile(&policy) {
            Ok(plan) => {
                if plan != self.plan || !self.in_sync {
                    log_changes(&self.plan, &plan);
                    self.plan = plan;
                    self.apply();
                }
            }
            Err(err) => error!("{err:#}"),
        }
    }

    /// Writes the plan wanted; on failure, logs it, shows it in the status
    /// and schedules a retry.
    fn apply(&mut self) {
        match self.dataplane.apply(&self.plan) {
            Ok(report) => {
                debug!(?report, "maps written");
                self.applied();
            }
            Err(err) => {
                let wait = self.retry_in;
                error!(%err, retry_in_s = wait.as_secs(), "writing the maps failed; the data plane forwards with what it holds, retrying");
                self.errors.apply = Some(err.to_string());
                self.in_sync = false;
                self.retry_at = Some(tokio::time::Instant::now() + wait);
                self.retry_in = (wait * 2).min(RETRY_MAX);
            }
        }
    }

    /// The maps hold the plan wanted.
    fn applied(&mut self) {
        self.in_sync = true;
        self.errors.apply = None;
        self.retry_at = None;
        self.retry_in = RETRY_FIRST;
        let rules = Rules::of(&self.plan);
        if rules != self.rules {
            self.rules = rules.clone();
            if let Some(sweeper) = &self.sweeper {
                sweeper.update(rules);
            }
        }
    }

    fn retry(&mut self) {
        self.retry_at = None;
        info!("writing the maps again");
        self.reconcile();
    }

    /// Attaches (a new link, or the adopted one given the new program) and
    /// saves the runtime state with the mode.
    fn attach(&mut self) -> anyhow::Result<()> {
        match self.dataplane.attach(&self.iface.name, self.opts.mode)? {
            Attached::New(mode) => self.mode = mode.to_string(),
            Attached::Replaced => info!(
                iface = %self.iface.name,
                "the pinned XDP link runs this lb's program now (replaced in place: no packet went to the kernel meanwhile)"
            ),
        }
        self.state.xdp_mode = Some(self.mode.clone());
        self.save_state();
        Ok(())
    }

    fn ready(&self, timer: &Phases) {
        info!(
            iface = %self.iface.name,
            mode = %self.mode,
            adopted = self.dataplane.adopted(),
            pinned = %self.instance.pin_dir().display(),
            listeners = self.plan.listeners.len(),
            targets = self.plan.targets.len(),
            socket = %self.opts.socket.display(),
            took = %timer,
            "lb ready"
        );
        if self.dataplane.flow_table_size() != self.policy.max_flows() {
            warn_flow_table_size(&self.dataplane, &self.policy, &self.iface.name);
        }
    }

    /// SIGHUP: reads the policy again; a policy that fails to load, to
    /// compile or to balance anything is refused and the last good one
    /// keeps serving.
    async fn reload(&mut self, watch: &NeighborWatch, monitor: &mut HealthMonitor) {
        let mut timer = Phases::start();
        let loaded = parse_policy(&self.opts.config)
            .and_then(|parsed| check_for_host(parsed, &self.iface))
            .and_then(|policy| {
                timer.lap("policy");
                let plan = self.compile(&policy)?;
                timer.lap("compile");
                Ok((policy, plan))
            });
        let (policy, plan) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                error!("policy reload refused, still serving the last good policy:\n{err:#}");
                self.errors.policy = Some(format!("{err:#}"));
                return;
            }
        };
        self.errors.policy = None;
        if policy.max_flows() != self.policy.max_flows() {
            warn_flow_table_size(&self.dataplane, &policy, &self.iface.name);
        }
        if let Err(err) = watch.set_targets(dynamic_targets(&policy)).await {
            warn!(%err, "following the new targets' MACs");
        }
        monitor.update(&policy);
        self.policy = policy;
        self.plan = plan;
        self.apply();
        timer.lap("apply");
        if self.in_sync {
            info!(took = %timer, "policy reloaded");
        }
        report_exclusions(&self.plan);
    }

    fn on_macs(&mut self) {
        // A MAC the watch reports replaces the inherited one for good: if
        // the watch loses it later, the target is out.
        let reported: Vec<IpAddr> = self.macs.borrow_and_update().keys().copied().collect();
        for ip in reported {
            self.inherited_macs.remove(&ip);
        }
        self.reconcile();
    }

    /// The inherited MACs have had their time: targets the watch has not
    /// resolved since the start are out until it does.
    fn forget_inherited_macs(&mut self) {
        self.inherited_until = None;
        if !self.inherited_macs.is_empty() {
            let ips: Vec<String> = self
                .inherited_macs
                .keys()
                .map(|ip| ip.to_string())
                .collect();
            warn!(targets = %ips.join(","), "MACs from before the restart not confirmed by the neighbour table: those targets are out until they resolve");
            self.inherited_macs.clear();
            self.reconcile();
        }
    }

    fn on_health(&mut self, snapshots: &Snapshots) {
        // Snapshots change with every probe; the maps only with a verdict.
        let new = verdicts(snapshots);
        if new == self.verdicts {
            return;
        }
        self.verdicts = new;
        self.state
            .set_verdicts(snapshots.iter().map(|(key, snap)| (key, snap.state)));
        self.save_state();
        self.reconcile();
    }

    /// A sweep found which target ids flow entries and sticky sessions
    /// still name: the retired ones nothing names are released.
    fn on_sweep(&mut self, report: &SweepReport) {
        if self.plan.ids.retired().next().is_none() {
            return;
        }
        let mut ids: Ids = (*self.plan.ids).clone();
        let released = ids.release(&report.named, report.started);
        if released.is_empty() {
            return;
        }
        debug!(?released, "target ids released");
        self.plan = MapPlan {
            ids: Arc::new(ids),
            ..self.plan.clone()
        };
        self.apply();
    }

    fn save_state(&mut self) {
        match self.state.save(&self.instance.state_dir()) {
            Ok(()) => self.errors.state = None,
            Err(err) => {
                warn!(%err, "saving the runtime state");
                self.errors.state = Some(err.to_string());
            }
        }
    }

    /// Answers one API client with the status report.
    fn answer(&self, stream: tokio::net::UnixStream, health: &Snapshots) {
        let sweep = self.sweeper.as_ref().and_then(SweeperHandle::last);
        let report = status::report(&status::Sources {
            policy: &self.policy,
            plan: &self.plan,
            dataplane: &self.dataplane,
            max_flows: self.dataplane.flow_table_size(),
            sweep: sweep.as_deref(),
            health,
            iface: &self.iface.name,
            mode: &self.mode,
            config: &self.opts.config,
            data_plane: DataPlaneStatus {
                pin_dir: self.instance.pin_dir().display().to_string(),
                adopted: self.dataplane.adopted(),
                state_file: self
                    .instance
                    .state_dir()
                    .join(crate::state::FILE)
                    .display()
                    .to_string(),
            },
            errors: self.errors.clone(),
        });
        tokio::spawn(async move {
            let answer = move |request| match request {
                api::Request::Status => report,
            };
            if let Err(err) = api::serve_one(stream, answer).await {
                warn!(%err, "api client");
            }
        });
    }

    /// The event loop, until SIGINT or SIGTERM: every event ends in
    /// [`Daemon::reconcile`] (or a step that calls it).
    async fn serve(mut self, mut signals: Signals, mut s: Services) -> anyhow::Result<()> {
        let mut sweeps = match &self.sweeper {
            Some(sweeper) => sweeper.reports(),
            None => return Err(anyhow!("the flow sweeper was not started")),
        };
        loop {
            let retry = self.retry_at;
            tokio::select! {
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
                _ = signals.hup.recv() => self.reload(&s.watch, &mut s.monitor).await,
                changed = self.macs.changed() => {
                    changed.map_err(|_| anyhow!("the neighbour watcher stopped"))?;
                    self.on_macs();
                }
                changed = s.health.changed() => {
                    changed.map_err(|_| anyhow!("the health monitor stopped"))?;
                    self.on_health(&s.health.borrow_and_update());
                }
                changed = sweeps.changed() => {
                    if changed.is_ok() && let Some(report) = sweeps.borrow_and_update().clone() {
                        self.on_sweep(&report);
                    }
                }
                _ = sleep_until(retry), if retry.is_some() => self.retry(),
                _ = sleep_until(self.inherited_until), if self.inherited_until.is_some() => {
                    self.forget_inherited_macs();
                }
                accepted = s.api.accept() => match accepted {
                    Ok((stream, _)) => self.answer(stream, &s.health.borrow()),
                    Err(err) => warn!(%err, "api accept"),
                },
            }
        }
        self.leave(s.monitor, s.watch).await;
        Ok(())
    }

    /// Leaves with the data plane forwarding: the sweeper stops, the state
    /// is saved, probes stop, the managed neighbour entries stay for the
    /// next `lb`.
    async fn leave(mut self, monitor: HealthMonitor, watch: NeighborWatch) {
        info!(
            iface = %self.iface.name,
            pinned = %self.instance.pin_dir().display(),
            "stopping; the data plane keeps forwarding with the last state (nothing is probed until lb runs again; `lb detach --iface {}` removes it)",
            self.iface.name
        );
        self.save_state();
        let _ = std::fs::remove_file(&self.opts.socket);
        monitor.shutdown().await;
        watch.leave().await;
        drop(self.sweeper);
    }
}

fn warn_flow_table_size(dataplane: &Dataplane, policy: &Policy, iface: &str) {
    warn!(
        "flow_table.max_flows is {} but the flow tables keep their {} entries (they hold the live flows): `lb detach --iface {iface}` and a start resize them, and reset every connection",
        policy.max_flows(),
        dataplane.flow_table_size()
    );
}

/// Raises the soft limit of open files to the hard one: every probe and
/// every table swap holds a descriptor, and many targets add up.
#[allow(unsafe_code)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            soft == limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        debug!(open_files = limit.rlim_cur, "open files limit");
    } else {
        warn!(
            "cannot raise the open files limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

async fn wait_for_macs(
    macs: &mut watch::Receiver<BTreeMap<IpAddr, [u8; 6]>>,
    targets: &[IpAddr],
    wait: Duration,
) {
    let all_known = |m: &BTreeMap<IpAddr, [u8; 6]>| targets.iter().all(|ip| m.contains_key(ip));
    let _ = tokio::time::timeout(wait, async {
        while !all_known(&macs.borrow_and_update()) {
            if macs.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

fn report_exclusions(plan: &MapPlan) {
    for t in &plan.targets {
        if t.excluded == Some(Exclusion::MacUnresolved) {
            warn!(group = %t.group, target = %t.ip, "target MAC unresolved: it takes no traffic until it resolves");
        }
    }
}

/// Logs what changed between two plans of one policy: MACs resolved or
/// lost, groups entering or leaving last resort.
fn log_changes(old: &MapPlan, new: &MapPlan) {
    let old_targets: BTreeMap<u32, _> = old.targets.iter().map(|t| (t.id, t)).collect();
    for n in &new.targets {
        let Some(o) = old_targets.get(&n.id) else {
            continue;
        };
        if o.info.mac == n.info.mac && o.excluded == n.excluded {
            continue;
        }
        match (o.excluded, n.excluded) {
            (_, Some(Exclusion::MacUnresolved)) => {
                warn!(group = %n.group, target = %n.ip, "target MAC lost: target taken out of selection")
            }
            (Some(Exclusion::MacUnresolved), _) => {
                info!(group = %n.group, target = %n.ip, mac = %neighbors::fmt_mac(&n.info.mac), "target MAC resolved")
            }
            _ if o.info.mac != n.info.mac => {
                info!(group = %n.group, target = %n.ip, mac = %neighbors::fmt_mac(&n.info.mac), "target MAC changed")
            }
            _ => {}
        }
    }
    let old_groups: BTreeMap<&str, bool> = old
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.last_resort))
        .collect();
    for n in &new.groups {
        match (old_groups.get(n.name.as_str()), n.last_resort) {
            (Some(false), true) => {
                warn!(group = %n.name, "no healthy target left: last resort, every target takes new flows")
            }
            (Some(true), false) => {
                info!(group = %n.name, "a target is healthy again: last resort over")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_token() {
        let mut phases = Phases::start();
        assert_eq!(phases.to_string(), "");
        phases.laps.push(("policy", Duration::from_micros(540_900)));
        phases.laps.push(("apply", Duration::from_millis(50)));
        assert_eq!(phases.to_string(), "policy:540ms,apply:50ms");
        phases.lap("attach");
        assert!(
            phases
                .to_string()
                .starts_with("policy:540ms,apply:50ms,attach:")
        );
        assert!(!phases.to_string().contains(char::is_whitespace));
    }
}
