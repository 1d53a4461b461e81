//! `lb run`: load the policy, open the pinned data plane (adopting the one
//! an earlier `lb` left, with all its flows), keep its maps in step with the
//! policy (SIGHUP or `lb apply` changes it), the targets' MACs, their
//! health and their drains, serve the API, and on SIGINT/SIGTERM leave with
//! the data plane still forwarding (`lb detach` removes it).
//!
//! Every event goes through one step, [`Daemon::reconcile`]: compile the
//! policy with what is observed now, and apply the plan if it changed. A
//! policy that fails to load at start stops `lb` before anything changes. A
//! new policy that fails is refused (logged, shown in `lb status`, told to
//! `lb apply`) and the last good policy keeps serving. A failed write of
//! the maps is logged, shown and retried; the data plane forwards with what
//! it holds meanwhile.
mod checks;
mod draining;
mod follow;
mod load;
mod log;
mod requests;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use lb_common::TargetInfo;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    announce::{self, Announcer},
    api,
    dataplane::{
        AttachMode, Attached, Dataplane, LoadOptions, pin::Instance, reader::Reader,
        sweep::SweeperHandle,
    },
    drains::{Closed, Drains, Flows},
    flows::Rules,
    health::{self, HealthMonitor, HealthSnapshot, HealthState, TargetCheck, TargetKey},
    maglev::TableCache,
    metrics::{self, Instruments},
    neighbors::{self, InterfaceInfo, NeighborWatch},
    plan::{MapPlan, Observed},
    policy::{Mac, Policy, compile::compile_next},
    rename::Renames,
    state::RuntimeState,
    status::{ErrorStatus, ProbeSources},
    view::{self, View},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub socket: PathBuf,
    /// How long to wait at start for target MACs before attaching anyway.
    pub resolve_wait: Duration,
    /// Where to serve Prometheus metrics (`--metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The routing table to announce the VIPs in (`--announce`).
    pub announce: Option<u32>,
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

type Snapshots = BTreeMap<TargetKey, HealthSnapshot>;
type Verdicts = BTreeMap<TargetKey, HealthState>;

/// The verdicts saved in `state` that `policy` checks as the saved ones
/// were given (a check changed while `lb` was stopped starts over).
fn restored_verdicts(state: &RuntimeState, policy: &Policy) -> Verdicts {
    let checks = health::checks(policy);
    state.verdicts(|key| checks.get(key).map(TargetCheck::describe))
}

/// The verdicts the compiler needs, from the monitor's snapshots.
fn verdicts(snapshots: &Snapshots) -> Verdicts {
    snapshots
        .iter()
        .map(|(key, snap)| (key.clone(), snap.state))
        .collect()
}

/// Now, in Unix seconds (what drains are timed in: they survive restarts).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often the flow tables are swept (ended entries deleted, active flow
/// counts corrected, retired ids released, drains settled).
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How long MACs inherited from an adopted data plane stand in for
/// targets the neighbour watch has not resolved (it asks the kernel for
/// each at start, and re-reads the table this often anyway).
const INHERIT_MACS: Duration = Duration::from_secs(30);

/// Waits between retries of a failed write of the maps.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// API requests waiting for the event loop.
const REQUEST_QUEUE: usize = 64;

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
    /// Targets leaving (`crate::drains`), which targets flows still name
    /// (the last sweep), and when the next drain's delay ends.
    drains: Drains,
    flows: Flows,
    drain_at: Option<tokio::time::Instant>,
    /// When each drain's target stopped taking new flows in the maps.
    closed: Closed,
    /// When a write of the plan wanted last succeeded.
    last_written: Option<Instant>,
    dataplane: Dataplane,
    /// The plan wanted: compiled from `policy` with what is observed.
    plan: MapPlan,
    /// The maps hold `plan`.
    in_sync: bool,
    /// Each target's entry as the maps hold it (`lb status`: a target whose
    /// planned entry is not written yet is `being_changed`).
    written: BTreeMap<TargetKey, TargetInfo>,
    retry_in: Duration,
    retry_at: Option<tokio::time::Instant>,
    /// Started once the first plan is written: its rules (timeouts, retired
    /// ids) come from the plan the maps hold, never from a guess.
    sweeper: Option<SweeperHandle>,
    rules: Rules,
    state: RuntimeState,
    errors: ErrorStatus,
    mode: String,
    /// The interface index the program is attached to (`follow`).
    attached_to: Option<u32>,
    /// The interface is gone, and that was logged.
    iface_gone: bool,
    /// What readers off the event loop name the maps' ids with (metrics,
    /// `lb stats`), published when the maps hold a new plan.
    view: view::Publisher,
    /// The counts of the targets whose ids were released, by group (what
    /// the groups' counters keep of them).
    released: view::Released,
    /// What `lb` counts as it goes (metrics).
    instruments: Instruments,
    /// Reads the data plane's statistics in batches, on any thread.
    reader: Arc<Reader>,
    /// Where health probes come from, found once per target address.
    probe_sources: ProbeSources,
    /// Keeps the VIPs it may serve in the announce table (`--announce`).
    announcer: Option<Announcer>,
    /// From the start until the first verdicts are in: groups whose new
    /// flows go only to `initial` targets do not announce their VIPs.
    announce_hold: Option<announce::Hold>,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting (or right after
    // `lb ready`) must take the orderly way out, never the default action.
    let signals = Signals::new()?;
    raise_open_files_limit();
    let mut timer = Phases::start();
    let parsed = load::parse_file(&opts.config)?;
    let iface = neighbors::interface(&load::interface_name(&opts, &parsed)?).await?;
    checks::addresses(&iface);
    let policy = load::check_for_host(&parsed, &iface)?;
    load::warn_notices(&parsed.notices);
    let instance = Instance::of_interface(&iface.name);
    let _lock = instance.lock()?;
    checks::memory(&instance, &policy)?;
    // Before anything changes: a taken address or path stops lb here.
    let metrics = bind_metrics(opts.metrics)?;
    let api = api::bind(&opts.socket)
        .with_context(|| format!("cannot serve the API on {}", opts.socket.display()))?;
    let announcer = start_announcer(opts.announce).await?;
    timer.lap("policy");

    let dataplane = Dataplane::open_pinned(
        &instance,
        &LoadOptions {
            flow_table_size: policy.max_flows(),
        },
    )?;
    timer.lap("load");
    let (state, drains) = restore(&instance, &dataplane, &policy, opts.announce).await?;
    let dynamic = load::dynamic_targets(&policy, &drains);
    let (watch, mut macs) = NeighborWatch::start(iface.index, dynamic.clone()).await?;
    wait_for_macs(&mut macs, &dynamic, opts.resolve_wait).await;
    timer.lap("macs");
    let instruments = Instruments::default();
    let (monitor, health) = HealthMonitor::start_observed(
        &policy,
        restored_verdicts(&state, &policy),
        Some(instruments.clone()),
    );
    let mut daemon = Daemon::new(
        opts, iface, instance, policy, dataplane, macs, state, &health,
    )?;
    daemon.instruments = instruments;
    daemon.drains = drains;
    daemon.first_apply(&mut timer)?;
    daemon.attach()?;
    daemon.announcer = announcer;
    daemon.announce();
    let _metrics = daemon.serve_metrics(metrics)?;
    timer.lap("attach");
    daemon.ready(&timer);
    daemon.check_host().await;
    let answers = Answers {
        gate: api::Gate::default(),
        view: daemon.view.subscribe(),
        reader: daemon.reader.clone(),
    };
    let services = Services::new(monitor, health, watch, api, answers);
    daemon.serve(signals, services).await
}

/// Tells systemd (a `Type=notify` unit: dist/lb.service) where `lb run`
/// stands; nothing when not run by systemd (`NOTIFY_SOCKET` unset).
pub(crate) fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd: {e}");
    }
}

/// The signals `lb run` acts on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What runs beside the daemon's own state: the health monitor and its
/// snapshots, the neighbour watch, the API socket and the requests read
/// from it (each connection is read by a task of its own, and its request
/// answered in the event loop, but `stats`, answered by the task).
struct Services {
    monitor: HealthMonitor,
    health: watch::Receiver<Snapshots>,
    watch: NeighborWatch,
    api: api::Bound,
    answers: Answers,
    requests: mpsc::Receiver<(api::Request, api::Responder)>,
    requests_tx: mpsc::Sender<(api::Request, api::Responder)>,
}

/// What a connection's task needs: the admission of clients, and for
/// `stats` the latest view and a reader of the maps.
#[derive(Clone)]
struct Answers {
    gate: api::Gate,
    view: view::Latest,
    reader: Arc<Reader>,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

impl Services {
    fn new(
        monitor: HealthMonitor,
        health: watch::Receiver<Snapshots>,
        watch: NeighborWatch,
        api: api::Bound,
        answers: Answers,
    ) -> Services {
        let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
        Services {
            monitor,
            health,
            watch,
            api,
            answers,
            requests,
            requests_tx,
        }
    }

    /// Admits a client (one over the limit is told `busy` and closed),
    /// reads its request on a task of its own (a slow client holds up
    /// nobody), answers `stats` there (on a blocking thread: the event
    /// loop never reads counters for it) and queues the rest for the
    /// event loop.
    fn receive(&self, stream: tokio::net::UnixStream) {
        let Some(turn) = self.answers.gate.admit() else {
            tokio::spawn(api::refuse(stream));
            return;
        };
        let queue = self.requests_tx.clone();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            match api::receive(stream, &answers.gate, Some(turn)).await {
                Ok(Some((api::Request::Stats { group }, responder))) => {
                    let reply = answers.stats(group).await;
                    if let Err(err) = responder.send(reply).await {
                        debug!(%err, "api client left before its answer");
                    }
                }
                Ok(Some(request)) => {
                    let _ = queue.send(request).await;
                }
                Ok(None) => {}
                Err(err) => debug!(%err, "api client"),
            }
        });
    }
}

impl Answers {
    /// The counters of every listener and target (or of `group`'s).
    async fn stats(self, group: Option<String>) -> api::Reply {
        let view = self.view.latest();
        if let Some(g) = &group
            && !view.groups.iter().any(|v| &v.name == g)
        {
            return api::Reply::Error(format!("no target group named {g:?}"));
        }
        let read = tokio::task::spawn_blocking(move || {
            crate::stats::sample(&view, &self.reader, group.as_deref())
        })
        .await;
        match read {
            Ok(Ok(sample)) => api::Reply::Stats(Box::new(sample)),
            Ok(Err(err)) => api::Reply::Error(format!("cannot read the counters: {err}")),
            Err(err) => api::Reply::Error(format!("cannot read the counters: {err}")),
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The metrics endpoint's address (`--metrics`), bound, if given.
fn bind_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<Option<metrics::Bound>> {
    addr.map(|addr| metrics::bind(addr).with_context(|| format!("cannot serve metrics on {addr}")))
        .transpose()
}

/// The announcer of `--announce TABLE`, if given.
async fn start_announcer(table: Option<u32>) -> anyhow::Result<Option<Announcer>> {
    Ok(match table {
        Some(table) => Some(Announcer::start(table).await?),
        None => None,
    })
}

/// What `lb run` starts from besides the policy: the runtime state saved
/// and the drains (`saved_state`, `restored_drains`), the announce table
/// of the run before left if this one announces elsewhere.
async fn restore(
    instance: &Instance,
    dataplane: &Dataplane,
    policy: &Policy,
    announce: Option<u32>,
) -> anyhow::Result<(RuntimeState, Drains)> {
    let mut state = saved_state(instance, dataplane);
    leave_old_announce_tables(&mut state, announce).await;
    let drains = restored_drains(&state, dataplane, policy)?;
    Ok((state, drains))
}

/// The runtime state saved for an adopted data plane (health verdicts,
/// drains, the withdraw, the announce table). For a new data plane where
/// one was without `lb detach` (which removes the state: a reboot, bpffs
/// emptied), what does not depend on the old maps
/// ([`RuntimeState::carried_over`]); else a fresh one.
fn saved_state(instance: &Instance, dataplane: &Dataplane) -> RuntimeState {
    if !dataplane.adopted() {
        let Some(old) = RuntimeState::load_any(&instance.state_dir()) else {
            return RuntimeState::new(dataplane.instance());
        };
        let kept = old.carried_over(dataplane.instance());
        info!(
            withdrawn = kept.withdrawn,
            drains = kept.drains.len(),
            verdicts = kept.health.len(),
            "a new data plane: kept the withdraw, drains by command and health verdicts of the one before (not detached)"
        );
        return kept;
    }
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
    RuntimeState::new(dataplane.instance())
}

/// Empties the announce tables `lb`s before this one announced in, when
/// this one announces in another or in none: nothing would keep them, and
/// the BGP daemon would go on announcing their VIPs. One that cannot be
/// emptied stays in the state (`stale_announce`) for the next start and
/// `lb detach`.
async fn leave_old_announce_tables(state: &mut RuntimeState, announce: Option<u32>) {
    let mut old: Vec<u32> = state.announce.into_iter().collect();
    old.append(&mut state.stale_announce);
    old.sort_unstable();
    old.dedup();
    for table in old.into_iter().filter(|&t| Some(t) != announce) {
        match announce::remove(table).await {
            Ok(held) => info!(
                table,
                routes = held,
                "emptied the announce table of the lb before (this one announces elsewhere or nowhere): its VIPs are withdrawn"
            ),
            Err(err) => {
                warn!(
                    table,
                    "cannot empty the announce table of the lb before (tried again at the next start and by lb detach): {err:#}"
                );
                state.stale_announce.push(table);
            }
        }
    }
}

/// The drains saved with the state, followed to the policy as a reload
/// follows it (`Drains::follow_from`: those of targets back in it end, of
/// groups gone go, delays are the groups' now, backup views made since are
/// drained too), and, for an adopted data plane, those of the targets it
/// holds that the policy no longer has (taken out while `lb` was stopped):
/// they drain from now. A new data plane holds none.
fn restored_drains(
    state: &RuntimeState,
    dataplane: &Dataplane,
    policy: &Policy,
) -> anyhow::Result<Drains> {
    let mut drains = Drains::from_list(state.drains.iter().cloned());
    let held = if dataplane.adopted() {
        dataplane
            .target_macs()?
            .into_iter()
            .map(|(key, mac)| (key, Some(Mac::new(mac))))
            .collect()
    } else {
        Vec::new()
    };
    drains.follow_from(held, policy, unix_now());
    if !dataplane.adopted() {
        // A target drained by command that left the file meanwhile is
        // drained no more by command: with no flow of it held, it is gone.
        drains.keep_by_command();
    }
    for d in drains.list() {
        info!(group = %d.group, target = %d.ip, until = d.until, by_command = d.by_command, "draining");
    }
    Ok(drains)
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
        let inherited_macs = inherited_macs(&dataplane)?;
        // Nothing written yet but the ids the maps hold.
        let plan = MapPlan::nothing_but(dataplane.ids().clone());
        let rules = Rules::of(&plan);
        let verdicts = verdicts(&health.borrow());
        let mode = state.xdp_mode.clone().unwrap_or_else(|| "unknown".into());
        let reader = Arc::new(dataplane.reader()?);
        let probe_sources = ProbeSources::of(&policy);
        let announce_hold = announce::Hold::start(&policy);
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
            drains: Drains::default(),
            flows: Flows::default(),
            drain_at: None,
            closed: Closed::default(),
            last_written: None,
            dataplane,
            plan,
            in_sync: false,
            written: BTreeMap::new(),
            retry_in: RETRY_FIRST,
            retry_at: None,
            sweeper: None,
            rules,
            state,
            errors: ErrorStatus::default(),
            mode,
            attached_to: None,
            iface_gone: false,
            view: view::Publisher::new(),
            released: view::Released::default(),
            instruments: Instruments::default(),
            reader,
            announce_hold,
            probe_sources,
            announcer: None,
        })
    }

    /// Serves the metrics endpoint (`--metrics`, bound at the start) on a
    /// thread of its own; it stops when dropped.
    fn serve_metrics(
        &self,
        bound: Option<metrics::Bound>,
    ) -> anyhow::Result<Option<metrics::Server>> {
        let Some(bound) = bound else {
            return Ok(None);
        };
        let sweeps = match &self.sweeper {
            Some(sweeper) => sweeper.reports(),
            None => return Err(anyhow!("the flow sweeper was not started")),
        };
        let sources = metrics::Sources {
            view: self.view.subscribe(),
            reader: self.reader.clone(),
            sweeps,
            in_table: self.announcer.as_ref().map(Announcer::in_table),
        };
        let server = bound
            .serve(sources, &self.instruments)
            .context("cannot serve metrics")?;
        info!(addr = %server.addr(), "metrics at http://{}/metrics", server.addr());
        Ok(Some(server))
    }

    /// What is observed of the host now, with `drains`.
    fn observed(&self, drains: &Drains) -> Observed {
        let mut neighbors = self.inherited_macs.clone();
        neighbors.extend(self.macs.borrow().iter().map(|(ip, mac)| (*ip, *mac)));
        Observed {
            iface_mac: self.iface.mac,
            iface_nets: self.iface.nets.clone(),
            neighbors,
            health: self.verdicts.clone(),
            drains: drains.clone(),
            flows: self.flows.clone(),
            now_unix: unix_now(),
        }
    }

    /// The plan of `policy` with `drains` and what is observed now, its ids
    /// following those of the plan wanted so far.
    fn compile(&mut self, policy: &Policy, drains: &Drains) -> anyhow::Result<MapPlan> {
        self.compile_renamed(policy, drains, &Renames::default())
    }

    /// [`Daemon::compile`], where `renames` renamed groups: the ids and
    /// what is observed of their targets are taken under the new names.
    fn compile_renamed(
        &mut self,
        policy: &Policy,
        drains: &Drains,
        renames: &Renames,
    ) -> anyhow::Result<MapPlan> {
        let mut seen = self.observed(drains);
        let renamed;
        let ids = if renames.is_empty() {
            &*self.plan.ids
        } else {
            seen.health = renames.keys(&seen.health);
            seen.flows = seen.flows.renamed(renames);
            renamed = self.plan.ids.renamed(renames);
            &renamed
        };
        Ok(compile_next(
            policy,
            &seen,
            ids,
            Instant::now(),
            &mut self.tables,
        )?)
    }

    /// The start's first plan, which must be written: a start that cannot
    /// write its maps stops (an adopted data plane forwards on meanwhile).
    fn first_apply(&mut self, timer: &mut Phases) -> anyhow::Result<()> {
        let (policy, drains) = (self.policy.clone(), self.drains.clone());
        self.plan = self.compile(&policy, &drains)?;
        timer.lap("compile");
        let started = Instant::now();
        let written = self.dataplane.apply(&self.plan);
        self.instruments.applied(started.elapsed(), written.is_ok());
        written?;
        timer.lap("apply");
        self.rules = Rules::of(&self.plan);
        self.sweeper = Some(
            self.dataplane
                .flow_sweeper()?
                .spawn(self.rules.clone(), SWEEP_INTERVAL),
        );
        self.applied();
        self.schedule_drains();
        log::report_exclusions(&self.plan);
        Ok(())
    }

    /// The one step every event goes through: compile, and apply the plan
    /// if it changed (or the last write failed).
    fn reconcile(&mut self) {
        let (policy, drains) = (self.policy.clone(), self.drains.clone());
        match self.compile(&policy, &drains) {
            Ok(plan) => {
                if plan != self.plan || !self.in_sync {
                    log::log_changes(&self.plan, &plan, &Renames::default());
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
        let started = Instant::now();
        let written = self.dataplane.apply(&self.plan);
        self.instruments.applied(started.elapsed(), written.is_ok());
        match written {
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
        self.mark_written(Instant::now());
        self.in_sync = true;
        self.errors.apply = None;
        self.retry_at = None;
        self.retry_in = RETRY_FIRST;
        self.written = self
            .plan
            .targets
            .iter()
            .map(|t| (t.key(), t.info))
            .collect();
        self.released.keep_groups_of(&self.plan.ids);
        let mut view = View::of(
            &self.policy,
            &self.plan,
            &self.released,
            (
                self.dataplane.flow_table_size(),
                self.dataplane.flow_table_layout().0,
            ),
        );
        self.announce_into(&mut view);
        self.instruments.activations(&view);
        self.view.publish(view);
        // Following the rules before: a listener id given to another
        // listener keeps the longer timeouts for the entries naming it.
        let rules = self.rules.following(&self.plan, Instant::now());
        if rules != self.rules {
            self.rules = rules.clone();
            if let Some(sweeper) = &self.sweeper {
                sweeper.update(rules);
            }
        }
    }

    /// Announces the VIPs the plan in the maps can serve (`--announce`),
    /// and shows them in a new view (metrics).
    fn announce(&mut self) {
        let mut view = (*self.view.last()).clone();
        self.announce_into(&mut view);
        self.view.publish(view);
    }

    /// [`Daemon::announce`], the announcements shown in `view`.
    fn announce_into(&mut self, view: &mut View) {
        if self
            .announce_hold
            .is_some_and(|_| announce::awaiting_verdicts(&self.plan, true).is_empty())
        {
            if self.announcer.is_some() {
                info!("first health verdicts in: VIPs announced as their groups allow");
            }
            self.announce_hold = None;
        }
        let Some(a) = &self.announcer else {
            return;
        };
        let decided = announce::decide_plan(
            &self.policy,
            &self.plan,
            self.state.withdrawn,
            self.announce_hold.is_some(),
        );
        a.set(&decided);
        view.announce_vips = decided.iter().map(|v| v.vip).collect();
    }

    /// What the status shows of the announcements.
    fn announce_status(&self) -> Option<announce::AnnounceStatus> {
        let a = self.announcer.as_ref()?;
        Some(announce::AnnounceStatus {
            table: a.table(),
            withdrawn: self.state.withdrawn,
            vips: announce::decide_plan(
                &self.policy,
                &self.plan,
                self.state.withdrawn,
                self.announce_hold.is_some(),
            ),
            error: a.error(),
        })
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
            Attached::New(mode) => {
                self.mode = mode.to_string();
                self.say_generic();
            }
            Attached::Replaced => info!(
                iface = %self.iface.name,
                "the pinned XDP link runs this lb's program now (replaced in place: no packet went to the kernel meanwhile)"
            ),
        }
        self.attached_to = Some(self.iface.index);
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
            draining = self.drains.list().count(),
            socket = %self.opts.socket.display(),
            took = %timer,
            "lb ready"
        );
        if !self.dataplane.flow_table_fits(self.policy.max_flows()) {
            warn_flow_table_size(&self.dataplane, &self.policy, &self.iface.name);
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    /// A new link in generic mode: say what it costs.
    fn say_generic(&self) {
        if self.mode == "generic" {
            checks::generic_mode(&self.iface.name, self.opts.mode == AttachMode::Generic);
        }
    }

    /// The host checks that need the data plane running: reverse-path
    /// filtering against the targets, and who else answers for the VIPs.
    async fn check_host(&self) {
        checks::rp_filter_targets(&self.iface, &self.policy).await;
        let targets = self
            .plan
            .targets
            .iter()
            .filter(|t| t.info.mac != [0; 6])
            .map(|t| (t.info.mac, t.ip))
            .collect();
        checks::vip_claims(&self.iface, &self.policy, targets);
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
        let checks = health::checks(&self.policy);
        self.state.set_verdicts(
            snapshots.iter().map(|(key, snap)| (key, snap.state)),
            |key| checks.get(key).map(TargetCheck::describe),
        );
        self.save_state();
        self.reconcile();
    }

    /// Saves the runtime state: the verdicts (kept as they change), the
    /// mode, and the drains as they are now.
    fn save_state(&mut self) {
        self.state.drains = self.drains.list().cloned().collect();
        self.state.announce = self.opts.announce;
        match self.state.save(&self.instance.state_dir()) {
            Ok(()) => self.errors.state = None,
            Err(err) => {
                warn!(%err, "saving the runtime state");
                self.errors.state = Some(err.to_string());
            }
        }
    }

    /// The event loop, until SIGINT or SIGTERM: every event ends in
    /// [`Daemon::reconcile`] (or a step that calls it).
    async fn serve(mut self, mut signals: Signals, mut s: Services) -> anyhow::Result<()> {
        let mut sweeps = match &self.sweeper {
            Some(sweeper) => sweeper.reports(),
            None => return Err(anyhow!("the flow sweeper was not started")),
        };
        let mut follow = tokio::time::interval(follow::FOLLOW_INTERVAL);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = self.retry_at;
            tokio::select! {
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
                _ = signals.hup.recv() => self.reload(&mut s).await,
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
                        self.on_sweep(&report, &s.watch).await;
                    }
                }
                _ = sleep_until(retry), if retry.is_some() => self.retry(),
                _ = follow.tick() => self.follow_interface(&mut s).await,
                _ = sleep_until(self.inherited_until), if self.inherited_until.is_some() => {
                    self.forget_inherited_macs();
                }
                _ = sleep_until(self.drain_at), if self.drain_at.is_some() => {
                    self.on_drain_deadline(&s.watch).await;
                }
                _ = sleep_until(self.announce_hold.map(|h| h.until)), if self.announce_hold.is_some() => {
                    info!("no first verdict for some checked group in time: its VIPs announced as it serves");
                    self.announce_hold = None;
                    self.announce();
                }
                accepted = s.api.listener.accept() => match accepted {
                    Ok((stream, _)) => s.receive(stream),
                    Err(err) => warn!(%err, "api accept"),
                },
                Some((request, responder)) = s.requests.recv() => {
                    let reply = self.handle(request, &mut s).await;
                    tokio::spawn(async move {
                        if let Err(err) = responder.send(reply).await {
                            debug!(%err, "api client left before its answer");
                        }
                    });
                }
            }
        }
        self.leave(s.monitor, s.watch, &s.api).await;
        Ok(())
    }

    /// Leaves with the data plane forwarding: the sweeper stops, the state
    /// is saved, probes stop, the managed neighbour entries stay for the
    /// next `lb`.
    async fn leave(mut self, monitor: HealthMonitor, watch: NeighborWatch, api: &api::Bound) {
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        info!(
            iface = %self.iface.name,
            pinned = %self.instance.pin_dir().display(),
            "stopping; the data plane keeps forwarding with the last state (nothing is probed until lb runs again; `lb detach --iface {}` removes it)",
            self.iface.name
        );
        self.save_state();
        api.remove();
        monitor.shutdown().await;
        watch.leave().await;
        drop(self.sweeper);
    }
}

/// The MACs an adopted data plane has for its targets (none for a new one).
fn inherited_macs(dataplane: &Dataplane) -> anyhow::Result<BTreeMap<IpAddr, [u8; 6]>> {
    if !dataplane.adopted() {
        return Ok(BTreeMap::new());
    }
    Ok(dataplane
        .target_macs()?
        .into_iter()
        .map(|(key, mac)| (key.ip, mac))
        .collect())
}

fn warn_flow_table_size(dataplane: &Dataplane, policy: &Policy, iface: &str) {
    warn!(
        "flow_table.max_flows is {} but the flow table keeps its size, made for {} flows (it holds the live flows): `lb detach --iface {iface}` and a start resize it, and reset every connection",
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
