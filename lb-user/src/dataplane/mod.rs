//! The only writer of BPF maps: loads the XDP program, attaches it, and makes
//! the maps hold a [`MapPlan`].
//!
//! `apply` works out what differs between the maps and the plan
//! (`changes`, pure) and writes it in an order that never lets a packet see
//! a half-built state: records of new ids, targets, each changed group table
//! (built complete in a fresh inner map and swapped in with a single
//! outer-map update), listeners; what left last.
//!
//! `lb run` opens a pinned data plane (`pin`): created on its first start,
//! adopted by every later one, with its flows, sticky sessions, round-robin
//! positions and active counts, and its program replaced in place. Tests and
//! benchmarks load private, unpinned ones and look inside them (`testing`,
//! behind the feature of that name).
//!
//! Every map is reached one way (`maps`); what `lb run` reads back is in
//! `read`, and its statistics, in batches, in `reader`.
pub mod changes;
pub mod clock;
mod maps;
pub mod memory;
pub mod pin;
mod read;
pub mod reader;
pub mod sweep;
mod sys;
pub mod table;
#[cfg(feature = "testing")]
mod testing;

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray,
        lpm_trie::Key as LpmKey,
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Config, GROUP_TABLE_FLAGS, GroupInfo, GroupName, GroupTableElement, LAYOUT_VERSION,
    ListenerFilter, ListenerInfo, ListenerKey, ListenerPorts, ListenerSlot, PortRangeKey, Stats,
    TargetInfo, TargetRecord, map_names as names, record_state,
};

use crate::{
    ids::{Ids, TargetKey},
    plan::{GroupTable, MapPlan},
};
use changes::{Changes, Held};
use clock::Clock;
use maps::{io_err, map_err};
use pin::{Instance, PinError};
use sweep::{ActiveCounts, FlowSweeper};

/// The XDP program's name in the object.
pub const PROGRAM: &str = "lb";

/// The object's clock program (`clock.rs`).
pub const CLOCK_PROGRAM: &str = "lb_clock";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot load the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program `{0}` is missing from the object or not XDP")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("cannot attach to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("the XDP link on {iface}: {reason}")]
    Link { iface: String, reason: String },
    #[error("cannot load the XDP program into the kernel: {0}")]
    Program(ProgramError),
    #[error("cannot read the data plane's clock: {0}")]
    Clock(std::io::Error),
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// How to attach: native (driver) mode, generic (skb) mode, or native with a
/// fallback to generic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
    Auto,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Flows the flow table is to hold (`flow_table.max_flows`, both
    /// address families; `flow_table::buckets_for` sizes it).
    pub flow_table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: lb_common::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

/// What an `apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub targets_written: usize,
    pub targets_removed: usize,
    pub tables_swapped: usize,
    pub listeners_written: usize,
    pub listeners_removed: usize,
    pub ids_released: usize,
}

/// How an attach went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link, in this mode.
    New(&'static str),
    /// The pinned link now runs this program: the interface was never
    /// without one. Its mode is the one it was made with.
    Replaced,
}

pub struct Dataplane {
    ebpf: Ebpf,
    program: &'static str,
    /// What the maps hold, as far as known: the base of the next apply.
    held: Held,
    applied: Option<MapPlan>,
    /// The plan's config as last written (the loader adds its own fields).
    config_written: Option<Config>,
    active: Arc<ActiveCounts>,
    clock: Clock,
    table: TableSettings,
    instance: u64,
    pins: Option<Pins>,
}

/// A pinned data plane's directory, and its link once attached.
struct Pins {
    dir: PathBuf,
    adopted: bool,
    link: Option<PinnedLink>,
}

/// What a data plane starts from: its maps' ids, its flow table, its
/// identity and the tick length its clock counts in (0: the kernel's),
/// an adopted one's as it was.
struct Basis {
    held: Held,
    table: TableSettings,
    instance: u64,
    ns_per_tick: u64,
}

/// The flow table's size and hash seed, which the loader owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableSettings {
    buckets: u32,
    seed: u64,
}

impl TableSettings {
    fn for_flows(max_flows: u32) -> TableSettings {
        TableSettings {
            buckets: lb_common::flow_table::buckets_for(max_flows),
            seed: random_u64(),
        }
    }
}

/// A random 64-bit value (the flow table's seed, a data plane's instance;
/// a fixed one only costs spread under chosen collisions, so a failed read
/// falls back to the time).
fn random_u64() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64),
    }
}

/// A loader of the object with the flow table's size.
fn loader<'a>(table: TableSettings) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(names::FLOW_TABLE, table.buckets);
    loader
}

/// The maps of `object` that a pinned data plane pins: all of them but
/// the sections of global data (none hold state).
fn pinned_maps(object: &[u8]) -> Result<Vec<String>, DataplaneError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::Load(aya::EbpfError::ParseError(e)))?;
    let mut names: Vec<String> = obj
        .maps
        .into_keys()
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

fn read_config(ebpf: &Ebpf) -> Result<Config, DataplaneError> {
    let config: Array<&MapData, Config> = maps::open(ebpf, names::CONFIG)?;
    config.get(&0, 0).map_err(map_err(names::CONFIG))
}

/// What the maps of `ebpf` hold that the next apply builds on: their
/// listeners and their records of ids (targets and groups are rewritten).
fn read_held(ebpf: &Ebpf) -> Result<Held, DataplaneError> {
    let listeners: BpfHashMap<&MapData, ListenerKey, ListenerInfo> =
        maps::open(ebpf, names::LISTENERS)?;
    let listeners: HashMap<ListenerKey, ListenerInfo> = listeners
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(names::LISTENERS))?;
    let ports = read_ports(ebpf)?;
    let group_names = maps::data(ebpf, names::GROUP_NAMES)?.fd().as_fd();
    let mut groups: BTreeMap<u32, String> = BTreeMap::new();
    sys::lookup_all::<u32, GroupName>(group_names, 4096, |id, name| {
        if name.len > 0 {
            groups.insert(*id, String::from_utf8_lossy(name.as_bytes()).into_owned());
        }
    })
    .map_err(io_err(names::GROUP_NAMES))?;
    let target_ids = maps::data(ebpf, names::TARGET_IDS)?.fd().as_fd();
    let mut targets = Vec::new();
    sys::lookup_all::<u32, TargetRecord>(target_ids, 4096, |id, r| {
        if r.state == record_state::FREE {
            return;
        }
        // A record whose group has no name (never written so) still holds
        // its id: it is retired at the next assignment and released later.
        let group = groups
            .entry(r.group_id)
            .or_insert_with(|| format!("#{}", r.group_id))
            .clone();
        let ip = crate::policy::compile::ip_of(r.addr_be, r.family);
        let key = match r.via_group {
            0 => TargetKey::new(group, ip),
            via => {
                let backup = groups
                    .entry(u32::from(via))
                    .or_insert_with(|| format!("#{via}"))
                    .clone();
                TargetKey::via_backup(group, backup, ip)
            }
        };
        targets.push((*id, key, r.state == record_state::RETIRED));
    })
    .map_err(io_err(names::TARGET_IDS))?;
    let ids = Ids::from_records(
        listeners.iter().map(|(k, i)| (*k, i.listener_id)),
        groups,
        targets,
        Instant::now(),
    );
    Ok(Held {
        ids,
        listeners,
        ports,
        targets: None,
        groups: None,
    })
}

/// The port ranges `LISTENER_PORTS` holds, by listener id.
fn read_ports(ebpf: &Ebpf) -> Result<HashMap<u32, ListenerPorts>, DataplaneError> {
    let mut ports = HashMap::new();
    let map = maps::data(ebpf, names::LISTENER_PORTS)?.fd().as_fd();
    sys::lookup_all::<u32, ListenerPorts>(map, 4096, |id, range| {
        if *range != ListenerPorts::default() {
            ports.insert(*id, *range);
        }
    })
    .map_err(io_err(names::LISTENER_PORTS))?;
    Ok(ports)
}

fn unzip<K: Copy, V: Copy>(pairs: &[(K, V)]) -> (Vec<K>, Vec<V>) {
    pairs.iter().copied().unzip()
}

fn link_err(iface: &str, reason: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Link {
        iface: iface.to_string(),
        reason: reason.to_string(),
    }
}

/// The index of interface `iface` in the caller's network namespace.
fn neighbors_ifindex(iface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    #[allow(unsafe_code)]
    // SAFETY: a NUL-terminated name that lives for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index)
}

/// What `detach` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detached {
    /// The XDP link was there and is detached.
    pub link: bool,
    /// Pinned objects removed (the link and the maps).
    pub pins: usize,
    /// The runtime state was there and is removed.
    pub state: bool,
}

/// Removes the pinned data plane of `instance`: detaches its XDP link
/// from the interface (traffic falls to the kernel), unpins its maps and
/// removes its runtime state. Refused while an `lb` runs on it.
pub fn detach(instance: &Instance) -> Result<Detached, DataplaneError> {
    let lock = instance.lock()?;
    let dir = instance.pin_dir();
    let link_path = dir.join(pin::LINK);
    let mut done = Detached::default();
    if link_path.exists() {
        let fd = sys::obj_get(&link_path).map_err(|e| DataplaneError::Link {
            iface: instance.iface.clone(),
            reason: format!("open {}: {e}", link_path.display()),
        })?;
        match sys::link_detach(fd.as_fd()) {
            // A defunct link (its interface gone) has nothing to detach.
            Ok(()) => done.link = true,
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
            Err(e) => {
                return Err(DataplaneError::Link {
                    iface: instance.iface.clone(),
                    reason: format!("detach: {e}"),
                });
            }
        }
    }
    done.pins = pin::remove_pins(&dir)?;
    let state = instance.state_dir();
    done.state = state.join(crate::state::FILE).exists();
    drop(lock);
    match std::fs::remove_dir_all(&state) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PinError::Io {
                context: format!("remove {}", state.display()),
                source,
            }
            .into());
        }
    }
    if instance.netns.is_some()
        && let Some(parent) = state.parent()
    {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(done)
}

/// Loads the XDP program `name` of the object into the kernel.
fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let xdp: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|_| DataplaneError::MissingProgram(name))?;
    xdp.load().map_err(DataplaneError::Program)?;
    Ok(xdp)
}

impl Dataplane {
    /// The pinned data plane of `instance`: adopted when one is pinned (its
    /// maps must be this build's: `pin::check_maps`), else created and
    /// pinned. Not attached yet (`attach` replaces an adopted program in
    /// place).
    pub fn open_pinned(instance: &Instance, options: &LoadOptions) -> Result<Self, DataplaneError> {
        let dir = instance.pin_dir();
        let object = crate::EBPF_LB;
        let adopt = instance.is_pinned();
        if adopt {
            pin::check_maps(object, &dir, &instance.iface)?;
        } else if pin::has_pins(&dir) {
            // Maps of a start that never attached: nothing forwards with them.
            pin::remove_pins(&dir)?;
        }
        std::fs::create_dir_all(&dir).map_err(|source| PinError::Io {
            context: format!("create {}", dir.display()),
            source,
        })?;
        let names = pinned_maps(object)?;
        let mut table = TableSettings::for_flows(options.flow_table_size);
        let mut loader = loader(table);
        for name in &names {
            loader.map_pin_path(name, dir.join(name));
        }
        let ebpf = loader.load(object)?;
        let pins = Pins {
            dir,
            adopted: adopt,
            link: None,
        };
        if !adopt {
            let basis = Basis {
                held: Held::empty(),
                table,
                instance: random_u64(),
                ns_per_tick: 0,
            };
            return Self::start(ebpf, PROGRAM, basis, Some(pins));
        }
        let config = read_config(&ebpf)?;
        if config.layout != LAYOUT_VERSION {
            return Err(PinError::Layout {
                dir: pins.dir.display().to_string(),
                iface: instance.iface.clone(),
                detail: format!(
                    "layout version {}, this build's {LAYOUT_VERSION}",
                    config.layout
                ),
            }
            .into());
        }
        table = TableSettings {
            buckets: config.flow_table_mask + 1,
            seed: config.flow_table_seed,
        };
        let adopted = Basis {
            held: read_held(&ebpf)?,
            table,
            instance: config.instance,
            ns_per_tick: config.ns_per_tick,
        };
        Self::start(ebpf, PROGRAM, adopted, Some(pins))
    }

    fn start(
        mut ebpf: Ebpf,
        program: &'static str,
        state: Basis,
        pins: Option<Pins>,
    ) -> Result<Self, DataplaneError> {
        let Basis {
            held,
            table,
            instance,
            ns_per_tick,
        } = state;
        load_xdp(&mut ebpf, program)?;
        let clock_fd = load_xdp(&mut ebpf, CLOCK_PROGRAM)?
            .fd()
            .map_err(DataplaneError::Program)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(DataplaneError::Clock)?;
        let clock = Clock::new(clock_fd, ns_per_tick).map_err(DataplaneError::Clock)?;
        let active = ActiveCounts::new(maps::data(&ebpf, names::TARGET_ACTIVE)?)?;
        // The map's own size (an adopted table keeps the one it was made
        // with).
        let buckets = maps::data(&ebpf, names::FLOW_TABLE)?
            .info()
            .map_err(map_err(names::FLOW_TABLE))?
            .max_entries();
        let table = TableSettings { buckets, ..table };
        Ok(Dataplane {
            ebpf,
            program,
            held,
            applied: None,
            config_written: None,
            active: Arc::new(active),
            clock,
            table,
            instance,
            pins,
        })
    }

    /// Whether this data plane was adopted from an earlier `lb` (pinned).
    pub fn adopted(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.adopted)
    }

    /// The ids the maps record: the adopted data plane's, or those of the
    /// last plan applied.
    pub fn ids(&self) -> &Ids {
        &self.held.ids
    }

    /// This data plane's random identity (`Config::instance`).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Flows the flow table is sized for (`flow_table::buckets_for`; an
    /// adopted data plane keeps its own): half its entries.
    pub fn flow_table_size(&self) -> u32 {
        (self.table.buckets as u64 * lb_common::flow_table::WAYS as u64 / 2).min(u32::MAX as u64)
            as u32
    }

    /// Whether a table for `max_flows` flows would have this one's size.
    pub fn flow_table_fits(&self, max_flows: u32) -> bool {
        lb_common::flow_table::buckets_for(max_flows) == self.table.buckets
    }

    /// The flow table's buckets and seed.
    pub fn flow_table_layout(&self) -> (u32, u64) {
        (self.table.buckets, self.table.seed)
    }

    /// A sweeper with its own handles on the flow tables, the sticky
    /// sessions and the active counts, to run on a thread of its own.
    pub fn flow_sweeper(&self) -> Result<FlowSweeper, DataplaneError> {
        let maps = sweep::SweptMaps {
            table: self.map_data(names::FLOW_TABLE)?,
            buckets: self.table.buckets,
            sticky: self.map_data(names::STICKY)?,
            targets: self.map_data(names::TARGETS)?,
        };
        FlowSweeper::new(
            maps,
            Arc::clone(&self.active),
            self.clock.try_clone().map_err(DataplaneError::Clock)?,
        )
    }

    /// The loaded XDP program.
    fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.program)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    /// Attaches to `iface`. A pinned data plane whose link is pinned and
    /// still on `iface` gets its program replaced in that link (one atomic
    /// update: no packet meets an interface without the program); else a
    /// new link is made (and pinned, for a pinned data plane). An unpinned
    /// data plane detaches when `self` is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached, DataplaneError> {
        let ifindex = neighbors_ifindex(iface).map_err(|e| link_err(iface, e))?;
        if self.replace_in_pinned_link(iface, ifindex)? {
            return Ok(Attached::Replaced);
        }
        let (id, label) = self.attach_new(iface, mode)?;
        if let Some(dir) = self.pins.as_ref().map(|p| p.dir.clone()) {
            let link = self
                .xdp_mut()
                .take_link(id)
                .map_err(|e| link_err(iface, e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| {
                link_err(
                    iface,
                    format!("not a bpf_link (XDP links need Linux 5.9): {e}"),
                )
            })?;
            let pinned = fd_link
                .pin(dir.join(pin::LINK))
                .map_err(|e| link_err(iface, format!("pin: {e}")))?;
            if let Some(pins) = &mut self.pins {
                pins.link = Some(pinned);
            }
        }
        Ok(Attached::New(label))
    }

    /// Gives the pinned link this program, if the data plane is pinned and
    /// its link is on `ifindex`: true if it did. A link left by an interface
    /// that is gone (or whose name another one took) is unpinned.
    fn replace_in_pinned_link(
        &mut self,
        iface: &str,
        ifindex: u32,
    ) -> Result<bool, DataplaneError> {
        let Some(path) = self.pins.as_ref().map(|p| p.dir.join(pin::LINK)) else {
            return Ok(false);
        };
        if !path.exists() {
            return Ok(false);
        }
        let on = sys::obj_get(&path)
            .and_then(|fd| sys::xdp_link_ifindex(fd.as_fd()))
            .map_err(|e| link_err(iface, format!("reading the pinned link: {e}")))?;
        if on != ifindex {
            tracing::warn!(
                iface,
                pinned_ifindex = on,
                ifindex,
                "the pinned XDP link is not on {iface} any more: attaching a new one"
            );
            std::fs::remove_file(&path).map_err(|e| link_err(iface, format!("unpin: {e}")))?;
            return Ok(false);
        }
        let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(iface, e))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(iface, e))?;
        self.xdp_mut()
            .attach_to_link(link)
            .map_err(|e| link_err(iface, format!("replacing its program: {e}")))?;
        Ok(true)
    }

    /// A new link of the program on `iface`, in `mode` (`Auto`: native,
    /// else generic); its id and the mode's name.
    fn attach_new(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), DataplaneError> {
        let program = self.xdp_mut();
        let attempt = |program: &mut Xdp, xdp_mode, label: &'static str| {
            program
                .attach(iface, xdp_mode)
                .map(|id| (id, label))
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: label,
                    source,
                })
        };
        match mode {
            AttachMode::Native => attempt(program, XdpMode::Driver, "native"),
            AttachMode::Generic => attempt(program, XdpMode::Skb, "generic"),
            AttachMode::Auto => attempt(program, XdpMode::Driver, "native").or_else(|err| {
                tracing::warn!(%err, "native XDP not available, falling back to generic mode");
                attempt(program, XdpMode::Skb, "generic")
            }),
        }
    }

    /// The plan the maps hold now.
    pub fn applied(&self) -> Option<&MapPlan> {
        self.applied.as_ref()
    }

    /// Makes the maps hold `plan`, writing only what differs from what they
    /// hold. On failure the maps may hold a mix, which keeps forwarding
    /// (every write is whole and in a safe order); the next apply rewrites
    /// what is not known.
    pub fn apply(&mut self, plan: &MapPlan) -> Result<ApplyReport, DataplaneError> {
        let changes = Changes::between(&self.held, plan);
        match self.execute(&changes, plan) {
            Ok(report) => {
                self.held = Held::of(plan);
                self.applied = Some(plan.clone());
                Ok(report)
            }
            Err(err) => {
                self.applied = None;
                self.config_written = None;
                // Reread what can be read; the rest is rewritten next time.
                self.held = match read_held(&self.ebpf) {
                    Ok(held) => held,
                    Err(_) => Held {
                        ids: (*plan.ids).clone(),
                        ..Held::default()
                    },
                };
                Err(err)
            }
        }
    }

    /// Carries out `changes` (made for `plan`), in their order.
    fn execute(&mut self, c: &Changes, plan: &MapPlan) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        self.write_config(&plan.config)?;
        let (ids, values) = unzip(&c.group_names);
        self.update_batch(names::GROUP_NAMES, &ids, &values)?;
        // An id taken by another target since the maps' last write starts
        // from nothing, before its new record names it.
        for &id in &c.targets_reassigned {
            self.active.reset(id);
        }
        self.zero_stats(names::TARGET_STATS, &c.targets_reassigned)?;
        let (ids, values) = unzip(&c.target_records);
        self.update_batch(names::TARGET_IDS, &ids, &values)?;
        let (ids, values) = unzip(&c.targets);
        self.update_batch(names::TARGETS, &ids, &values)?;
        report.targets_written = ids.len();
        let (ids, values) = unzip(&c.group_infos);
        self.update_batch(names::GROUPS, &ids, &values)?;
        self.swap_tables(&c.tables)?;
        report.tables_swapped = c.tables.len();

        self.write_listeners(c)?;
        report.listeners_written = c.listeners_written.len();
        report.listeners_removed = c.listeners_removed.len();

        self.update_batch(
            names::TARGETS,
            &c.targets_gone,
            &vec![TargetInfo::default(); c.targets_gone.len()],
        )?;
        report.targets_removed = c.targets_gone.len();
        self.remove_groups(&c.groups_gone)?;
        self.release(c)?;
        report.ids_released = c.targets_released.len();
        Ok(report)
    }

    /// Writes `Config` when the plan's part of it changed: the loader adds
    /// the tick length, the flow table's settings and the data plane's
    /// identity.
    fn write_config(&mut self, config: &Config) -> Result<(), DataplaneError> {
        if self.config_written == Some(*config) {
            return Ok(());
        }
        let value = Config {
            ns_per_tick: self.clock.ns_per_tick(),
            flow_table_mask: self.table.buckets - 1,
            flow_table_seed: self.table.seed,
            layout: LAYOUT_VERSION,
            instance: self.instance,
            ..*config
        };
        let mut map: Array<_, Config> = self.open_mut(names::CONFIG)?;
        map.set(0, value, 0).map_err(map_err(names::CONFIG))?;
        self.config_written = Some(*config);
        Ok(())
    }

    /// Builds each table complete in a new inner map and swaps them all in
    /// with one batch update: the kernel waits for an RCU grace period
    /// after each update of an array of maps (so that no program still
    /// uses the old table when the call returns), and one wait per batch
    /// instead of one per table makes the first apply of 1,000 groups take
    /// milliseconds, not seconds.
    fn swap_tables(&mut self, tables: &[(u32, GroupTable)]) -> Result<(), DataplaneError> {
        if tables.is_empty() {
            return Ok(());
        }
        let built: Vec<(u32, MapData)> = tables
            .iter()
            .map(|(id, table)| Ok((*id, build_table(table)?)))
            .collect::<Result<_, DataplaneError>>()?;
        let keys: Vec<u32> = built.iter().map(|(id, _)| *id).collect();
        let fds: Vec<u32> = built
            .iter()
            .map(|(_, table)| table.fd().as_fd().as_raw_fd() as u32)
            .collect();
        let outer = self.map_data(names::GROUP_TABLES)?;
        if let Err(e) = sys::update_batch(outer.fd().as_fd(), &keys, &fds) {
            // Kernels without batch updates of arrays of maps: one at a time.
            tracing::debug!(
                "batch update of {}: {e}; one at a time",
                names::GROUP_TABLES
            );
            let mut outer: ArrayOfMaps<&mut MapData, MapData> =
                self.open_mut(names::GROUP_TABLES)?;
            for (id, table) in &built {
                outer
                    .set(*id, table, 0)
                    .map_err(map_err(names::GROUP_TABLES))?;
            }
        }
        Ok(())
    }

    /// Listeners: the listener filter widened to the old and new ones, port
    /// ranges and slots by id (a slot holds its key before the key is
    /// added), keys added or changed, keys removed, the port-range prefixes
    /// made what the plan's are, the filter narrowed, slots and ranges of
    /// ids no listener has cleared and their statistics zeroed.
    fn write_listeners(&mut self, c: &Changes) -> Result<(), DataplaneError> {
        if let Some(filter) = &c.filter_during {
            self.set_listener_filter(filter)?;
        }
        let (ids, ports) = unzip(&c.listener_ports);
        self.update_batch(names::LISTENER_PORTS, &ids, &ports)?;
        let (ids, slots) = unzip(&c.listener_slots);
        self.update_batch(names::LISTENERS_BY_ID, &ids, &slots)?;
        let mut listeners: BpfHashMap<_, ListenerKey, ListenerInfo> =
            self.open_mut(names::LISTENERS)?;
        for (key, info) in &c.listeners_written {
            listeners
                .insert(key, info, 0)
                .map_err(map_err(names::LISTENERS))?;
        }
        for key in &c.listeners_removed {
            maps::removed(listeners.remove(key)).map_err(map_err(names::LISTENERS))?;
        }
        if let Some(prefixes) = &c.port_ranges {
            self.set_port_ranges(prefixes)?;
        }
        if let Some(filter) = &c.filter_after {
            self.set_listener_filter(filter)?;
        }
        if let Some(fragments) = &c.fragment_listeners {
            self.set_fragment_listeners(fragments)?;
        }
        self.update_batch(
            names::LISTENERS_BY_ID,
            &c.listener_ids_gone,
            &vec![ListenerSlot::default(); c.listener_ids_gone.len()],
        )?;
        self.update_batch(
            names::LISTENER_PORTS,
            &c.listener_ids_gone,
            &vec![ListenerPorts::default(); c.listener_ids_gone.len()],
        )?;
        self.zero_stats(names::LISTENER_STATS, &c.listener_stats_reset)
    }

    /// Groups no longer in the plan: their tables leave `GROUP_TABLES`
    /// (only those present: each delete waits for an RCU grace period) and
    /// their settings are cleared.
    fn remove_groups(&mut self, gone: &[u32]) -> Result<(), DataplaneError> {
        if gone.is_empty() {
            return Ok(());
        }
        let outer: ArrayOfMaps<&MapData, MapData> = self.open(names::GROUP_TABLES)?;
        let present: Vec<u32> = gone
            .iter()
            .copied()
            .filter(|id| outer.get(id, 0).is_ok())
            .collect();
        let fd = self.map_data(names::GROUP_TABLES)?.fd().as_fd();
        for id in present {
            match sys::delete(fd, id) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io_err(names::GROUP_TABLES)(e)),
            }
        }
        self.update_batch(names::GROUPS, gone, &vec![GroupInfo::default(); gone.len()])
    }

    /// Ids the registry released: records freed, statistics and active
    /// flows zeroed, so the next object to take an id starts from nothing
    /// (no entry names a released id: a count left is a flow lost
    /// uncounted, which would weigh on least connections).
    fn release(&mut self, c: &Changes) -> Result<(), DataplaneError> {
        for &id in &c.targets_released {
            self.active.reset(id);
        }
        let free = TargetRecord {
            state: record_state::FREE,
            ..TargetRecord::default()
        };
        self.update_batch(
            names::TARGET_IDS,
            &c.targets_released,
            &vec![free; c.targets_released.len()],
        )?;
        self.zero_stats(names::TARGET_STATS, &c.targets_released)?;
        self.update_batch(
            names::GROUP_NAMES,
            &c.groups_released,
            &vec![GroupName::FREE; c.groups_released.len()],
        )?;
        self.update_batch(
            names::GROUP_RR,
            &c.groups_released,
            &vec![0u64; c.groups_released.len()],
        )
    }

    /// Zeroes the per-CPU statistics of `ids` in `name`.
    fn zero_stats(&mut self, name: &'static str, ids: &[u32]) -> Result<(), DataplaneError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io_err(name)(e))?;
        let mut map: PerCpuArray<&mut MapData, Stats> = self.open_mut(name)?;
        for &id in ids {
            let zeros = aya::maps::PerCpuValues::try_from(vec![Stats::default(); cpus])
                .map_err(io_err(name))?;
            map.set(id, zeros, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Sets `keys[i]` to `values[i]` in the array `name`, in one call
    /// (100,000 targets: milliseconds instead of a syscall each).
    fn update_batch<V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[u32],
        values: &[V],
    ) -> Result<(), DataplaneError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.map_data(name)?;
        sys::update_batch(map.fd().as_fd(), keys, values).map_err(io_err(name))
    }

    /// Makes `FRAGMENT_LISTENERS` hold exactly `want`: the keys it holds
    /// and `want` has not removed, the others written.
    fn set_fragment_listeners(
        &mut self,
        want: &[(ListenerKey, ListenerInfo)],
    ) -> Result<(), DataplaneError> {
        let mut map: BpfHashMap<_, ListenerKey, ListenerInfo> =
            self.open_mut(names::FRAGMENT_LISTENERS)?;
        let held: Vec<ListenerKey> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::FRAGMENT_LISTENERS))?;
        for key in held.iter().filter(|k| !want.iter().any(|(w, _)| w == *k)) {
            maps::removed(map.remove(key)).map_err(map_err(names::FRAGMENT_LISTENERS))?;
        }
        for (key, info) in want {
            map.insert(key, info, 0)
                .map_err(map_err(names::FRAGMENT_LISTENERS))?;
        }
        Ok(())
    }

    /// Makes `PORT_RANGES` hold exactly `want`: the prefixes wanted written
    /// first (a range that grows never drops a port on the way), then those
    /// held and not wanted removed.
    fn set_port_ranges(
        &mut self,
        want: &[(changes::PortPrefix, ListenerInfo)],
    ) -> Result<(), DataplaneError> {
        let mut map: LpmTrie<_, PortRangeKey, ListenerInfo> = self.open_mut(names::PORT_RANGES)?;
        for ((data, bits), info) in want {
            map.insert(&LpmKey::new(*bits, *data), info, 0)
                .map_err(map_err(names::PORT_RANGES))?;
        }
        let held: Vec<LpmKey<PortRangeKey>> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::PORT_RANGES))?;
        for key in held {
            let (bits, data) = (key.prefix_len(), key.data());
            if !want.iter().any(|((d, b), _)| (*d, *b) == (data, bits)) {
                maps::removed(map.remove(&key)).map_err(map_err(names::PORT_RANGES))?;
            }
        }
        Ok(())
    }

    fn set_listener_filter(&mut self, filter: &ListenerFilter) -> Result<(), DataplaneError> {
        let mut map: Array<_, ListenerFilter> = self.open_mut(names::LISTENER_FILTER)?;
        map.set(0, filter, 0)
            .map_err(map_err(names::LISTENER_FILTER))
    }
}

/// A complete group table as a new inner map: the plan's table holds the
/// words in the layout of `lb_common::table` already. The map is created
/// memory-mappable and filled through the mapping (one copy instead of one
/// syscall per element), and is not visible to the program until the caller
/// swaps it in.
fn build_table(table: &GroupTable) -> Result<MapData, DataplaneError> {
    let name = names::GROUP_TABLES;
    let words = table.words();
    let entries = lb_common::table::elements(words[0], words[1]);
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<GroupTableElement>() as u32,
        entries,
        GROUP_TABLE_FLAGS,
    );
    let map = MapData::create(obj, "lb_group_table", None).map_err(map_err(name))?;
    // Elements of 8 bytes are stored back to back, so the words are too.
    const _: () = assert!(size_of::<GroupTableElement>() == ARRAY_ELEM_STRIDE);
    let mut mapping = mmap::Mapping::new(map.fd().as_fd(), entries as usize * ARRAY_ELEM_STRIDE)
        .map_err(io_err(name))?;
    mapping.write_u32s(0, words);
    Ok(map)
}

/// An array map stores each value in a slot rounded up to 8 bytes.
const ARRAY_ELEM_STRIDE: usize = 8;

/// The one place that needs `unsafe` in userspace: mapping a BPF array.
#[allow(unsafe_code)]
mod mmap {
    use std::{
        io,
        os::fd::{AsRawFd as _, BorrowedFd},
        ptr::NonNull,
    };

    pub struct Mapping {
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the mapping is shared memory that lives until `drop`; all
    // access after `new` goes through `write_u32s` (`&mut self`) or atomics.
    unsafe impl Send for Mapping {}
    // SAFETY: as above; `&self` only hands out atomics.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// Maps the first `len` bytes of the mmap-able BPF array `fd`.
        pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
            // SAFETY: a fresh shared mapping of a map the kernel sized to at
            // least `len` bytes (max_entries x 8); no other mapping exists.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let ptr =
                NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
            Ok(Mapping { ptr, len })
        }

        /// Writes `values` back to back from byte `at` (a multiple of 4).
        pub fn write_u32s(&mut self, at: usize, values: &[u32]) {
            assert!(at.is_multiple_of(4), "unaligned write");
            let end = values.len().checked_mul(4).and_then(|n| n.checked_add(at));
            assert!(
                end.is_some_and(|end| end <= self.len),
                "write past the mapping"
            );
            // SAFETY: `at + 4 * values.len() <= len` (checked), the mapping
            // is writable and page aligned, so `at` is 4-byte aligned, and it
            // does not overlap `values` (memory of this process's own).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    values.as_ptr(),
                    self.ptr.as_ptr().add(at).cast::<u32>(),
                    values.len(),
                )
            };
        }
    }

    impl Mapping {
        /// A pointer to the `T` at byte `at`, if it lies inside the mapping
        /// and is aligned.
        fn at<T>(&self, at: usize) -> Option<*mut T> {
            let end = at.checked_add(std::mem::size_of::<T>())?;
            if end > self.len || !at.is_multiple_of(std::mem::align_of::<T>()) {
                return None;
            }
            // SAFETY: inside the mapping (checked), which is page aligned.
            Some(unsafe { self.ptr.as_ptr().add(at).cast::<T>() })
        }

        /// The 8-byte word at byte `at` as an atomic (`None` outside).
        pub fn atomic_u64_at(&self, at: usize) -> Option<&std::sync::atomic::AtomicU64> {
            // SAFETY: aligned and inside the mapping (`at`), which lives as
            // long as `self`; every other writer of such words (the data
            // plane) uses atomic operations.
            self.at::<u64>(at)
                .map(|p| unsafe { std::sync::atomic::AtomicU64::from_ptr(p) })
        }

        /// The `T` at byte `at`, read once (a value other writers store
        /// plainly: a torn read is the caller's to tolerate).
        pub fn read_at<T: Copy>(&self, at: usize) -> Option<T> {
            // SAFETY: aligned and inside the mapping (`at`); volatile, since
            // the data plane writes it concurrently.
            self.at::<T>(at)
                .map(|p| unsafe { std::ptr::read_volatile(p) })
        }

        /// Stores `value` at byte `at` (a test writing what the data plane
        /// would). False if outside the mapping.
        #[cfg(feature = "testing")]
        pub fn write_at<T: Copy>(&self, at: usize, value: T) -> bool {
            match self.at::<T>(at) {
                Some(p) => {
                    // SAFETY: aligned and inside the mapping (`at`).
                    unsafe { std::ptr::write_volatile(p, value) };
                    true
                }
                None => false,
            }
        }

        /// The `index`th 8-byte element as an atomic (`None` past the end).
        pub fn atomic_i64(&self, index: usize) -> Option<&std::sync::atomic::AtomicI64> {
            let at = index.checked_mul(8)?;
            if at + 8 > self.len {
                return None;
            }
            // SAFETY: `at + 8 <= len` (checked), the mapping is page aligned
            // so the element is 8-byte aligned, it lives as long as `self`,
            // and every other writer (the data plane) uses atomic operations.
            Some(unsafe {
                std::sync::atomic::AtomicI64::from_ptr(self.ptr.as_ptr().add(at).cast::<i64>())
            })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly what `new` mapped; nothing refers to it after.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}
