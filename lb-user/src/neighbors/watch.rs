//! [`NeighborWatch`]: one task per interface that keeps the kernel's entries
//! for a set of targets resolved and publishes their MACs.
use std::{
    collections::{BTreeMap, BTreeSet},
    mem,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    Handle,
    packet_core::{NetlinkMessage, NetlinkPayload},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use super::{
    NetError, check_target,
    entry::{Entry, Mode, Schedule, Step, kernel_supports_managed, step},
    fmt_mac,
    netlink::{self, BlockingSocket, Events, Failure},
};

/// Full re-read of the neighbour table, in case a notification was lost
/// (the kernel drops them when the socket's buffer is full).
const RESYNC: Duration = Duration::from_secs(30);

/// Keeps the MACs of a set of target IPs on one interface resolved and
/// reports changes on a watch channel (see the module documentation for how).
///
/// Stop it with [`NeighborWatch::shutdown`], which reports errors, or by
/// dropping it; either removes the managed entries it made. A drop while
/// another runtime thread is in the middle of creating an entry may leave
/// that one entry behind: prefer `shutdown`.
pub struct NeighborWatch {
    iface: String,
    ifindex: u32,
    commands: mpsc::Sender<Command>,
    task: Option<JoinHandle<()>>,
    owned: Arc<Mutex<Owned>>,
    cleanup: BlockingSocket,
}

enum Command {
    SetTargets(BTreeSet<IpAddr>, oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

/// Managed entries this watch made, to remove when it stops. Shared with the
/// task; once `closed`, the task makes no more.
#[derive(Debug, Default)]
struct Owned {
    closed: bool,
    addrs: BTreeSet<IpAddr>,
}

fn lock(owned: &Mutex<Owned>) -> MutexGuard<'_, Owned> {
    owned.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NeighborWatch {
    /// Starts watching `targets` on interface `ifindex`. Returns once the
    /// table has been read and entries for unresolved targets requested; the
    /// receiver then holds the targets whose MAC is already known (more
    /// follow as they resolve). Only targets with a usable MAC are in the map.
    pub async fn start(
        ifindex: u32,
        targets: Vec<IpAddr>,
    ) -> Result<(Self, watch::Receiver<BTreeMap<IpAddr, [u8; 6]>>), NetError> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mode = if kernel_supports_managed(&release) {
            Mode::Managed
        } else {
            Mode::Use
        };
        Self::start_with_mode(ifindex, targets, mode).await
    }

    pub(super) async fn start_with_mode(
        ifindex: u32,
        targets: Vec<IpAddr>,
        mode: Mode,
    ) -> Result<(Self, watch::Receiver<BTreeMap<IpAddr, [u8; 6]>>), NetError> {
        targets.iter().try_for_each(|t| check_target(*t))?;
        let handle = netlink::connect()?;
        let iface = netlink::link_name(&handle, ifindex).await?;
        // Subscribe before the first read, so no change falls in between.
        let events = netlink::monitor()?;
        let cleanup = BlockingSocket::open()?;
        let owned = Arc::new(Mutex::new(Owned::default()));
        let (published, receiver) = watch::channel(BTreeMap::new());
        let mut watcher = Watcher {
            iface: iface.clone(),
            ifindex,
            mode,
            handle,
            targets: targets.into_iter().collect(),
            entries: BTreeMap::new(),
            schedule: Schedule::default(),
            failing: BTreeSet::new(),
            owned: owned.clone(),
            reread: true,
            published,
        };
        watcher.reread().await.map_err(Failure::into_net_error)?;
        watcher.settle().await;
        info!(
            iface,
            ifindex,
            ?mode,
            targets = watcher.targets.len(),
            "neighbour watch started"
        );
        let (commands, command_rx) = mpsc::channel(8);
        let task = tokio::spawn(watcher.run(command_rx, Some(events)));
        let watch = Self {
            iface,
            ifindex,
            commands,
            task: Some(task),
            owned,
            cleanup,
        };
        Ok((watch, receiver))
    }

    /// Replaces the set of targets. Returns once the new ones have been
    /// looked up (and entries requested) and the ones dropped are out of the
    /// map, their managed entries removed.
    pub async fn set_targets(&self, targets: Vec<IpAddr>) -> Result<(), NetError> {
        targets.iter().try_for_each(|t| check_target(*t))?;
        let stopped = || NetError::Stopped {
            iface: self.iface.clone(),
        };
        let (done, done_rx) = oneshot::channel();
        let command = Command::SetTargets(targets.into_iter().collect(), done);
        self.commands.send(command).await.map_err(|_| stopped())?;
        done_rx.await.map_err(|_| stopped())
    }

    /// Stops the watch and removes the managed entries it made.
    pub async fn shutdown(mut self) -> Result<(), NetError> {
        if let Some(task) = self.task.take() {
            let (done, done_rx) = oneshot::channel();
            if self.commands.send(Command::Stop(done)).await.is_ok() {
                let _ = done_rx.await;
            }
            let _ = task.await;
        }
        self.remove_owned()
    }

    /// Stops the watch and leaves the managed entries it made in the
    /// kernel, which keeps them resolved: for the `lb` that takes over the
    /// data plane, which then finds every target's MAC at once.
    pub async fn leave(mut self) {
        if let Some(task) = self.task.take() {
            let (done, done_rx) = oneshot::channel();
            if self.commands.send(Command::Stop(done)).await.is_ok() {
                let _ = done_rx.await;
            }
            let _ = task.await;
        }
        lock(&self.owned).addrs.clear();
    }

    /// Removes the managed entries made by the task, which must be stopped
    /// or aborted, and makes it create no more.
    fn remove_owned(&self) -> Result<(), NetError> {
        let addrs = {
            let mut owned = lock(&self.owned);
            owned.closed = true;
            mem::take(&mut owned.addrs)
        };
        let mut first_error = None;
        for addr in addrs {
            match self.cleanup.delete(self.ifindex, addr) {
                Ok(()) => debug!(iface = self.iface, %addr, "removed managed neighbour"),
                // Already gone, with its interface or by someone's hand.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
                Err(source) => {
                    warn!(iface = self.iface, %addr, "cannot remove managed neighbour: {source}");
                    first_error.get_or_insert(NetError::Remove {
                        iface: self.iface.clone(),
                        addr,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NeighborWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Errors are logged by remove_owned.
            let _ = self.remove_owned();
        }
    }
}

/// The task's state.
struct Watcher {
    iface: String,
    ifindex: u32,
    mode: Mode,
    handle: Handle,
    targets: BTreeSet<IpAddr>,
    /// The kernel's entries for our targets on our interface.
    entries: BTreeMap<IpAddr, Entry>,
    /// Targets that need a step ([`step`]), and when.
    schedule: Schedule,
    /// Targets whose last step failed (logged at warn once, then debug).
    failing: BTreeSet<IpAddr>,
    owned: Arc<Mutex<Owned>>,
    /// Read the whole table before the next steps.
    reread: bool,
    published: watch::Sender<BTreeMap<IpAddr, [u8; 6]>>,
}

async fn next_event(events: &mut Option<Events>) -> Option<NetlinkMessage<RouteNetlinkMessage>> {
    match events {
        Some(events) => events.next().await.map(|(msg, _)| msg),
        None => std::future::pending().await,
    }
}

impl Watcher {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut events: Option<Events>) {
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let due = self.schedule.next_due().map(Instant::from_std);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::SetTargets(targets, done)) => {
                        self.set_targets(targets).await;
                        self.settle().await;
                        let _ = done.send(());
                    }
                    Some(Command::Stop(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    None => break,
                },
                event = next_event(&mut events) => match event {
                    Some(msg) => self.on_event(msg),
                    None => {
                        warn!(iface = self.iface, "neighbour notifications stopped, reopening");
                        events = None;
                        self.reread = true;
                    }
                },
                _ = resync.tick() => self.reread = true,
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            }
            if events.is_none() && self.reread {
                events = netlink::monitor()
                    .inspect_err(|e| {
                        warn!(
                            iface = self.iface,
                            "cannot reopen neighbour notifications: {e}"
                        )
                    })
                    .ok();
            }
            self.settle().await;
        }
        info!(iface = self.iface, "neighbour watch stopped");
    }

    /// Brings the table up to date if needed, takes the steps that are due
    /// and publishes the result.
    async fn settle(&mut self) {
        if self.reread
            && let Err(e) = self.reread().await
        {
            warn!(iface = self.iface, "{e}");
        }
        self.take_due_steps().await;
        self.publish();
    }

    async fn reread(&mut self) -> Result<(), Failure> {
        let messages = netlink::neighbours(&self.handle, &self.iface).await?;
        self.reread = false;
        let mut found: BTreeMap<IpAddr, Entry> = messages
            .iter()
            .filter_map(Entry::from_message)
            .filter(|e| e.ifindex == self.ifindex && self.targets.contains(&e.ip))
            .map(|e| (e.ip, e))
            .collect();
        for ip in self.targets.clone() {
            self.update(ip, found.remove(&ip));
        }
        Ok(())
    }

    fn on_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) {
        let (message, deleted) = match &msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (m, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (m, true),
            NetlinkPayload::Overrun(_) => {
                self.reread = true;
                return;
            }
            _ => return,
        };
        let Some(entry) = Entry::from_message(message) else {
            return;
        };
        if entry.ifindex != self.ifindex || !self.targets.contains(&entry.ip) {
            return;
        }
        self.update(entry.ip, (!deleted).then_some(entry));
    }

    /// Records `ip`'s entry as the kernel now has it (`None`: none).
    fn update(&mut self, ip: IpAddr, entry: Option<Entry>) {
        let old = self.entries.get(&ip);
        if old != entry.as_ref() {
            match &entry {
                Some(e) => debug!(
                    iface = self.iface,
                    %ip,
                    state = e.state_name(),
                    lladdr = e.lladdr.as_ref().map(fmt_mac),
                    managed = e.managed,
                    "neighbour entry changed",
                ),
                None => debug!(iface = self.iface, %ip, "neighbour entry removed"),
            }
        }
        if !entry.as_ref().is_some_and(|e| e.managed) {
            // Gone, or replaced by someone else: not ours to remove any more.
            lock(&self.owned).addrs.remove(&ip);
        }
        match step(entry.as_ref(), self.mode) {
            Some(_) => self.schedule.want(ip, Instant::now().into_std()),
            None => self.schedule.forget(&ip),
        }
        match entry {
            Some(e) => self.entries.insert(ip, e),
            None => self.entries.remove(&ip),
        };
    }

    async fn set_targets(&mut self, targets: BTreeSet<IpAddr>) {
        for ip in self
            .targets
            .difference(&targets)
            .copied()
            .collect::<Vec<_>>()
        {
            self.entries.remove(&ip);
            self.schedule.forget(&ip);
            self.failing.remove(&ip);
            if lock(&self.owned).addrs.remove(&ip) {
                match netlink::delete(&self.handle, &self.iface, self.ifindex, ip).await {
                    Ok(()) => debug!(iface = self.iface, %ip, "removed managed neighbour"),
                    Err(e) if e.is_errno(libc::ENOENT) => {}
                    Err(e) => warn!(iface = self.iface, "{e}"),
                }
            }
        }
        self.targets = targets;
        self.reread = true;
    }

    async fn take_due_steps(&mut self) {
        let now = Instant::now().into_std();
        for ip in self.schedule.due(now) {
            match step(self.entries.get(&ip), self.mode) {
                Some(s) => {
                    self.take_step(s, ip).await;
                    self.schedule.taken(ip, now);
                }
                None => self.schedule.forget(&ip),
            }
        }
    }

    /// Takes step `s` for `ip`; a failure is a warning the first time in a
    /// row, a debug line after.
    async fn take_step(&mut self, s: Step, ip: IpAddr) {
        let result = match s {
            Step::CreateManaged | Step::MakeManaged => {
                if !self.own(ip) {
                    return;
                }
                self.make_managed(ip, s == Step::CreateManaged).await
            }
            Step::Kick => self.kick(ip).await,
        };
        match result {
            Ok(()) => {
                self.failing.remove(&ip);
            }
            Err(e) if self.failing.insert(ip) => warn!(iface = self.iface, "{e}"),
            Err(e) => debug!(iface = self.iface, "{e}"),
        }
    }

    /// Records `ip` as an entry of ours, before it is made managed; false
    /// once the watch is closed (it makes no more then).
    fn own(&self, ip: IpAddr) -> bool {
        let mut owned = lock(&self.owned);
        if owned.closed {
            return false;
        }
        owned.addrs.insert(ip);
        true
    }

    /// Makes the entry of `ip` managed (`create`: a new one); `ip` must be
    /// [`own`](Self::own)ed already, and is disowned if that fails.
    async fn make_managed(&mut self, ip: IpAddr, create: bool) -> Result<(), Failure> {
        let (iface, ifindex) = (self.iface.as_str(), self.ifindex);
        match netlink::make_managed(&self.handle, iface, ifindex, ip, create).await {
            Ok(()) => {
                // The kernel announces a conversion but not a new entry that
                // is still unresolved: record both here.
                let new = Entry {
                    ifindex,
                    ip,
                    state: 0,
                    lladdr: None,
                    managed: true,
                    ext_learned: false,
                };
                self.entries.entry(ip).or_insert(new).managed = true;
                debug!(iface, %ip, "made neighbour entry managed");
                Ok(())
            }
            Err(e) => {
                lock(&self.owned).addrs.remove(&ip);
                if e.is_errno(libc::EEXIST) || e.is_errno(libc::ENOENT) {
                    debug!(iface, "{e}: the entry changed meanwhile, reading again");
                    self.reread = true;
                    Ok(())
                } else {
                    // Still get it resolved, as an ordinary entry.
                    let kicked = netlink::kick(&self.handle, iface, ifindex, ip, false, true).await;
                    Err(kicked.err().unwrap_or(e))
                }
            }
        }
    }

    /// Asks the kernel to resolve `ip` now.
    async fn kick(&mut self, ip: IpAddr) -> Result<(), Failure> {
        let (iface, ifindex) = (self.iface.as_str(), self.ifindex);
        let managed = self.entries.get(&ip).is_some_and(|e| e.managed);
        let create = self.mode == Mode::Use;
        match netlink::kick(&self.handle, iface, ifindex, ip, managed, create).await {
            Err(e) if e.is_errno(libc::ENOENT) => {
                debug!(iface, "{e}: the entry is gone, reading again");
                self.reread = true;
                Ok(())
            }
            other => other,
        }
    }

    fn publish(&mut self) {
        let now: BTreeMap<IpAddr, [u8; 6]> = self
            .targets
            .iter()
            .filter_map(|ip| Some((*ip, self.entries.get(ip)?.mac()?)))
            .collect();
        let iface = &self.iface;
        self.published.send_if_modified(|old| {
            if *old == now {
                return false;
            }
            for (ip, mac) in &now {
                match old.get(ip) {
                    None => info!(iface, %ip, mac = fmt_mac(mac), "target MAC resolved"),
                    Some(was) if was != mac => {
                        info!(iface, %ip, mac = fmt_mac(mac), was = fmt_mac(was), "target MAC changed")
                    }
                    Some(_) => {}
                }
            }
            for (ip, was) in old.iter().filter(|(ip, _)| !now.contains_key(ip)) {
                info!(iface, %ip, was = fmt_mac(was), "target MAC lost");
            }
            *old = now;
            true
        });
    }
}
