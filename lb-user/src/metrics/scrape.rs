//! One scrape: the data plane's counters and statistics read at once
//! (batched), named with the daemon's latest view, and encoded through a
//! `prometheus-client` collector. Runs on the metrics server's threads.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::IpAddr,
    sync::Arc,
};

use lb_common::{Counter, Stats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tokio::sync::watch;

use crate::{
    dataplane::{
        reader::{Reader, StatsRead},
        sweep::SweepReport,
    },
    flows,
    status::TargetState,
    view::{Latest, View},
};

/// What a scrape reads: the latest view, the data plane, the last sweep,
/// and with `--announce` the VIPs the announce table holds.
#[derive(Clone)]
pub struct Sources {
    pub view: Latest,
    pub reader: Arc<Reader>,
    pub sweeps: watch::Receiver<Option<Arc<SweepReport>>>,
    pub in_table: Option<watch::Receiver<BTreeSet<IpAddr>>>,
}

/// The data plane as one scrape read it.
#[derive(Debug)]
pub struct Scrape {
    view: Arc<View>,
    counters: [u64; Counter::COUNT as usize],
    listeners: Vec<Stats>,
    targets: Vec<Stats>,
    /// Active flows per target of the view (its order).
    active: Vec<u64>,
    sweep: Option<Arc<SweepReport>>,
    /// The VIPs whose routes the announce table holds (`--announce`).
    in_table: BTreeSet<IpAddr>,
}

type Labels = Vec<(&'static str, String)>;

/// A target's place in the view and its labels.
type TargetRow = (usize, Labels);

/// A group's sums: statistics, active flows, targets by state.
type GroupSums = (Stats, u64, [u64; 6]);

/// A family of series of `Stats`: name, help, and the field it shows.
type StatsFamily = (&'static str, &'static str, fn(&Stats) -> u64);

impl Scrape {
    /// Reads everything a scrape shows: three batched lookups and the
    /// active counts' mapping.
    pub fn read(sources: &Sources) -> io::Result<Scrape> {
        let counters = sources.reader.counters()?;
        let (stats, view) = read_stats(sources)?;
        let active = view
            .targets
            .iter()
            .map(|t| flows::shown(sources.reader.active_flows(t.id)))
            .collect();
        Ok(Scrape {
            counters,
            listeners: stats.listeners,
            targets: stats.targets,
            active,
            sweep: sources.sweeps.borrow().clone(),
            in_table: sources
                .in_table
                .as_ref()
                .map(|t| t.borrow().clone())
                .unwrap_or_default(),
            view,
        })
    }

    /// The text exposition of `instruments` (what `lb` counted as it went)
    /// followed by this scrape's.
    pub fn render(self, instruments: &Registry) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(64 + self.view.targets.len() * 400);
        prometheus_client::encoding::prometheus_text::encode(&mut out, instruments)?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }

    fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    fn listener(&self, id: u32) -> Stats {
        self.listeners.get(id as usize).copied().unwrap_or_default()
    }

    fn target(&self, id: u32) -> Stats {
        self.targets.get(id as usize).copied().unwrap_or_default()
    }
}

/// How many times a scrape reads the statistics again when a view was
/// published meanwhile.
const REREADS: usize = 2;

/// The statistics, and the view that names them, taken after them: the
/// daemon publishes a view that no longer counts a released id before the
/// data plane zeroes its statistics, so a view taken after the read never
/// counts an id read zeroed (a group's counters never fall). Read again
/// if a view was published meanwhile: it may name ids past those read, or
/// an id the data plane zeroed for a new target after the read (an id
/// released, its write failed, then taken again), whose old counts the
/// group keeps apart already.
fn read_stats(sources: &Sources) -> io::Result<(StatsRead, Arc<View>)> {
    let mut sized = sources.view.latest();
    for _ in 0..REREADS {
        let stats = sources.reader.stats(sized.listener_ids, sized.target_ids)?;
        let view = sources.view.latest();
        if Arc::ptr_eq(&view, &sized) {
            return Ok((stats, view));
        }
        sized = view;
    }
    let stats = sources.reader.stats(sized.listener_ids, sized.target_ids)?;
    Ok((stats, sources.view.latest()))
}

/// One family of series: its name (without `_total`: the encoder adds it
/// to counters), help, type and rows.
fn family<L: EncodeLabelSet, V: Value>(
    enc: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => value.counter(&mut series)?,
            _ => value.gauge(&mut series)?,
        }
    }
    Ok(())
}

/// A value a series holds.
trait Value {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result;
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result;
}

impl Value for u64 {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        m.encode_counter::<NoLabelSet, _, u64>(self, None)
    }
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        m.encode_gauge(self)
    }
}

impl Value for f64 {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        m.encode_counter::<NoLabelSet, _, f64>(self, None)
    }
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        m.encode_gauge(self)
    }
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

fn reason(r: &str) -> [(&'static str, String); 1] {
    [("reason", r.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_packets(&mut enc)?;
        self.encode_flow_table(&mut enc)?;
        self.encode_listeners(&mut enc)?;
        self.encode_groups(&mut enc)?;
        self.encode_targets(&mut enc)?;
        if !self.view.announce_vips.is_empty() {
            // What the table holds, not what lb decided: a write that
            // failed leaves the table as it was.
            let rows = self.view.announce_vips.iter().map(|vip| {
                let held = self.in_table.contains(vip);
                ([("vip", vip.to_string())], u64::from(held))
            });
            family(
                &mut enc,
                (
                    "lb_vip_announced",
                    "1 while the VIP's route is in the announce table, as lb last read and wrote it (lb run --announce)",
                    GAUGE,
                ),
                rows,
            )?;
        }
        family(
            &mut enc,
            ("lb_build_info", "The running lb's version", GAUGE),
            [([("version", env!("CARGO_PKG_VERSION").to_string())], 1u64)],
        )
    }
}

impl Scrape {
    /// The data plane's verdicts by reason (`lb_common::Counter`).
    fn encode_packets(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let forwarded = Counter::FORWARDING
            .iter()
            .map(|&c| (reason(c.name()), self.counter(c)));
        family(
            enc,
            (
                "lb_forwarded_packets",
                "Packets sent to a target (XDP_TX), by how the target was found",
                COUNTER,
            ),
            forwarded,
        )?;
        let passed = [
            ("not_a_listener", self.counter(Counter::Passed)),
            ("malformed", self.counter(Counter::Malformed)),
            ("extension_header", self.counter(Counter::ExtensionHeader)),
        ];
        family(
            enc,
            (
                "lb_passed_packets",
                "Packets passed to the kernel untouched (XDP_PASS), by reason",
                COUNTER,
            ),
            passed.map(|(r, v)| (reason(r), v)),
        )?;
        // The data plane drops nothing else: before the loader's first
        // write of the maps, every frame passes.
        let dropped = [("no_target", self.counter(Counter::NoTarget))];
        family(
            enc,
            (
                "lb_dropped_packets",
                "Packets dropped (XDP_DROP), by reason",
                COUNTER,
            ),
            dropped.map(|(r, v)| (reason(r), v)),
        )
    }

    fn encode_flow_table(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let none = || [] as [(&'static str, String); 0];
        let counters = [
            (
                "lb_flow_table_evictions",
                "Flow-table entries taken by a new flow from another (idle, ended or seen once)",
                Counter::FlowEvicted,
            ),
            (
                "lb_flow_table_insert_failures",
                "New flows forwarded but not remembered: their buckets held only established flows in use",
                Counter::FlowInsertFailed,
            ),
            (
                "lb_flow_reselections",
                "Flows whose target could no longer take them, chosen again",
                Counter::FlowReselected,
            ),
        ];
        for (name, help, c) in counters {
            family(enc, (name, help, COUNTER), [(none(), self.counter(c))])?;
        }
        let v = &self.view;
        let gauges = [
            (
                "lb_flow_table_entries",
                "Entries in use in the flow table at the last sweep",
                self.sweep.as_ref().map_or(0, |s| s.entries),
            ),
            (
                "lb_flow_table_max_flows",
                "Flows the flow table is sized for (flow_table.max_flows as made)",
                u64::from(v.max_flows),
            ),
            (
                "lb_flow_table_slots",
                "Entries the flow table has (buckets of four)",
                u64::from(v.buckets) * 4,
            ),
        ];
        for (name, help, value) in gauges {
            family(enc, (name, help, GAUGE), [(none(), value)])?;
        }
        let took = self.sweep.as_ref().map_or(0.0, |s| s.took.as_secs_f64());
        family(
            enc,
            (
                "lb_flow_table_sweep_duration_seconds",
                "How long the last sweep of the flow table took",
                GAUGE,
            ),
            [(none(), took)],
        )
    }

    fn encode_listeners(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let labels: Vec<Labels> = self
            .view
            .listeners
            .iter()
            .map(|l| {
                vec![
                    ("listener", l.name.clone()),
                    ("vip", l.vip.to_string()),
                    ("protocol", l.protocol.to_string()),
                    ("port", l.port.to_string()),
                    ("group", l.group.clone()),
                ]
            })
            .collect();
        let stats: Vec<Stats> = self
            .view
            .listeners
            .iter()
            .map(|l| self.listener(l.id))
            .collect();
        let families: [StatsFamily; 3] = [
            (
                "lb_listener_packets",
                "Packets the data plane forwarded for the listener",
                |s| s.packets,
            ),
            (
                "lb_listener_bytes",
                "Bytes (whole frames) the data plane forwarded for the listener",
                |s| s.bytes,
            ),
            ("lb_listener_new_flows", "New flows of the listener", |s| {
                s.new_flows
            }),
        ];
        for (name, help, get) in families {
            let rows = labels
                .iter()
                .zip(&stats)
                .map(|(l, s)| (l.as_slice(), get(s)));
            family(enc, (name, help, COUNTER), rows)?;
        }
        Ok(())
    }

    /// Per group: sums over its own targets, active flows, and who takes
    /// its new flows.
    fn encode_groups(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let sums = self.group_sums();
        let groups = &self.view.groups;
        let label = |name: &str| [("group", name.to_string())];
        let sum_of = |name: &str| sums.get(name).copied().unwrap_or_default();
        let families: [StatsFamily; 3] = [
            (
                "lb_group_packets",
                "Packets forwarded to the group's own targets",
                |s| s.packets,
            ),
            (
                "lb_group_bytes",
                "Bytes forwarded to the group's own targets",
                |s| s.bytes,
            ),
            (
                "lb_group_new_flows",
                "New flows given to the group's own targets",
                |s| s.new_flows,
            ),
        ];
        for (name, help, get) in families {
            let rows = groups
                .iter()
                .map(|g| (label(&g.name), get(&sum_of(&g.name).0)));
            family(enc, (name, help, COUNTER), rows)?;
        }
        let rows = groups.iter().map(|g| (label(&g.name), sum_of(&g.name).1));
        family(
            enc,
            (
                "lb_group_active_flows",
                "Flows in progress on the group's own targets",
                GAUGE,
            ),
            rows,
        )?;
        let rows = groups.iter().flat_map(|g| {
            let counts = sum_of(&g.name).2;
            TargetState::ALL.iter().map(move |s| {
                let labels = [("group", g.name.clone()), ("state", s.as_str().to_string())];
                (labels, counts[state_index(*s)])
            })
        });
        family(
            enc,
            (
                "lb_group_targets",
                "The group's own targets by state",
                GAUGE,
            ),
            rows,
        )?;
        self.encode_serving(enc)
    }

    /// Per group, over its own targets: statistics, active flows, and
    /// targets by state (`TargetState::ALL`'s order). The statistics are
    /// a counter's: those of every id its targets' counts are kept under,
    /// in the plan or retired, and the counts of those released
    /// (`crate::view::Released`), so that a target leaving never makes the
    /// sum fall. Not its backup's taking its flows (their `via` series):
    /// a via row leaves when the backup link does.
    fn group_sums(&self) -> BTreeMap<&str, GroupSums> {
        let mut sums: BTreeMap<&str, GroupSums> = BTreeMap::new();
        for g in &self.view.groups {
            let mut total = g.released;
            for s in g.counted.iter().map(|id| self.target(*id)) {
                total.packets += s.packets;
                total.bytes += s.bytes;
                total.new_flows += s.new_flows;
            }
            sums.entry(g.name.as_str()).or_default().0 = total;
        }
        for (t, active) in self.view.targets.iter().zip(&self.active) {
            if !t.own() {
                continue;
            }
            let e = sums.entry(t.group.as_str()).or_default();
            e.1 += active;
            e.2[state_index(t.state)] += 1;
        }
        sums
    }

    fn encode_serving(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let groups = &self.view.groups;
        let label = |name: &str| [("group", name.to_string())];
        let flag = |b: bool| u64::from(b);
        family(
            enc,
            (
                "lb_group_last_resort",
                "1 while no target of the side serving the group is healthy (last resort): those with a weight above 0 and a known MAC take new flows, unhealthy or not; with none (every target of weight 0, say), new flows are dropped",
                GAUGE,
            ),
            groups.iter().map(|g| (label(&g.name), flag(g.last_resort))),
        )?;
        family(
            enc,
            (
                "lb_group_backup_active",
                "1 while the group's new flows go to its backup group's targets",
                GAUGE,
            ),
            groups
                .iter()
                .map(|g| (label(&g.name), flag(g.backup_active()))),
        )?;
        family(
            enc,
            (
                "lb_group_serving",
                "Who takes the group's new flows (lb status's serving): 1 for the current one",
                GAUGE,
            ),
            groups.iter().map(|g| {
                let labels = [
                    ("group", g.name.clone()),
                    ("serving", g.serving.as_str().to_string()),
                ];
                (labels, 1u64)
            }),
        )
    }

    /// Per target of each group: its own, those leaving, and its backup's
    /// taking its flows (labelled `via` the backup group: their own
    /// counters, apart from their own group's series).
    fn encode_targets(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let rows: Vec<TargetRow> = self
            .view
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut labels = vec![("group", t.group.clone()), ("target", t.ip.to_string())];
                if let Some(via) = &t.via {
                    labels.push(("via", via.clone()));
                }
                (i, labels)
            })
            .collect();
        let families: [StatsFamily; 3] = [
            (
                "lb_target_packets",
                "Packets forwarded to the target",
                |s| s.packets,
            ),
            (
                "lb_target_bytes",
                "Bytes (whole frames) forwarded to the target",
                |s| s.bytes,
            ),
            (
                "lb_target_new_flows",
                "New flows given to the target",
                |s| s.new_flows,
            ),
        ];
        let targets = &self.view.targets;
        for (name, help, get) in families {
            let series = rows
                .iter()
                .map(|(i, l)| (&l[..], get(&self.target(targets[*i].id))));
            family(enc, (name, help, COUNTER), series)?;
        }
        family(
            enc,
            (
                "lb_target_active_flows",
                "Flows in progress on the target",
                GAUGE,
            ),
            rows.iter().map(|(i, l)| (&l[..], self.active[*i])),
        )?;
        self.encode_target_states(enc, &rows)
    }

    fn encode_target_states(&self, enc: &mut DescriptorEncoder, rows: &[TargetRow]) -> fmt::Result {
        let targets = &self.view.targets;
        let rows = rows.iter().map(|(i, l)| {
            let mut labels = l.clone();
            labels.push(("state", targets[*i].state.as_str().to_string()));
            (labels, 1u64)
        });
        family(
            enc,
            (
                "lb_target_state",
                "The target's operating state (lb status's STATE): 1 for the current one",
                GAUGE,
            ),
            rows,
        )
    }
}

fn state_index(state: TargetState) -> usize {
    TargetState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        failover::Serving,
        view::{GroupView, ListenerView, TargetView},
    };

    fn target(id: u32, ip: &str, via: Option<&str>, state: TargetState) -> TargetView {
        TargetView {
            id,
            group: "web".into(),
            ip: ip.parse().unwrap(),
            port: crate::policy::Ports::one(80),
            via: via.map(str::to_string),
            state,
            selectable: true,
        }
    }

    #[test]
    fn series_are_named_and_summed_as_documented() {
        let view = View {
            listeners: vec![ListenerView {
                id: 1,
                name: "web".into(),
                vip: "10.0.3.49".parse().unwrap(),
                protocol: "tcp",
                port: crate::policy::Ports::one(80),
                group: "web".into(),
            }],
            groups: vec![GroupView {
                id: 1,
                name: "web".into(),
                listener: Some("web".into()),
                serving: Serving::Backup,
                last_resort: false,
                // Its own targets' ids (not the backup's taking its flows),
                // and what targets released before took.
                counted: vec![1, 2],
                released: Stats {
                    packets: 4,
                    bytes: 400,
                    new_flows: 0,
                },
            }],
            targets: vec![
                target(1, "10.0.3.11", None, TargetState::Healthy),
                target(2, "10.0.3.12", None, TargetState::Unhealthy),
                // A backup's target taking web's flows: its own series.
                target(3, "10.0.3.21", Some("spare"), TargetState::Healthy),
            ],
            listener_ids: 2,
            target_ids: 4,
            max_flows: 1024,
            buckets: 512,
            announce_vips: vec!["10.0.3.49".parse().unwrap(), "fd00:3::49".parse().unwrap()],
        };
        let stats = |p: u64| Stats {
            packets: p,
            bytes: p * 100,
            new_flows: p / 10,
        };
        let mut counters = [0u64; Counter::COUNT as usize];
        counters[Counter::NewFlow as usize] = 3;
        counters[Counter::FlowHit as usize] = 27;
        counters[Counter::Dropped as usize] = 2;
        counters[Counter::NoTarget as usize] = 2;
        Counter::derive(&mut counters);
        let scrape = Scrape {
            view: Arc::new(view),
            counters,
            listeners: vec![stats(0), stats(30)],
            targets: vec![stats(0), stats(20), stats(10), stats(7)],
            active: vec![4, 1, 9],
            sweep: None,
            // What the announce table holds, whatever was decided (a
            // write that failed leaves it as it was).
            in_table: ["fd00:3::49".parse().unwrap()].into(),
        };
        let text = scrape.render(&Registry::default()).unwrap();
        for line in [
            "# TYPE lb_listener_packets_total counter",
            "lb_listener_packets_total{listener=\"web\",vip=\"10.0.3.49\",protocol=\"tcp\",port=\"80\",group=\"web\"} 30",
            "lb_listener_bytes_total{listener=\"web\",vip=\"10.0.3.49\",protocol=\"tcp\",port=\"80\",group=\"web\"} 3000",
            "lb_forwarded_packets_total{reason=\"new_flow\"} 3",
            "lb_forwarded_packets_total{reason=\"flow_hit\"} 27",
            "lb_dropped_packets_total{reason=\"no_target\"} 2",
            "lb_target_packets_total{group=\"web\",target=\"10.0.3.11\"} 20",
            "lb_target_active_flows{group=\"web\",target=\"10.0.3.12\"} 1",
            "lb_target_state{group=\"web\",target=\"10.0.3.12\",state=\"unhealthy\"} 1",
            "lb_target_packets_total{group=\"web\",target=\"10.0.3.21\",via=\"spare\"} 7",
            "lb_target_active_flows{group=\"web\",target=\"10.0.3.21\",via=\"spare\"} 9",
            "lb_target_state{group=\"web\",target=\"10.0.3.21\",via=\"spare\",state=\"healthy\"} 1",
            "lb_group_packets_total{group=\"web\"} 34",
            "lb_group_active_flows{group=\"web\"} 5",
            "lb_group_targets{group=\"web\",state=\"healthy\"} 1",
            "lb_group_targets{group=\"web\",state=\"draining\"} 0",
            "lb_group_serving{group=\"web\",serving=\"backup\"} 1",
            "lb_group_backup_active{group=\"web\"} 1",
            "lb_group_last_resort{group=\"web\"} 0",
            "lb_flow_table_slots 2048",
            "lb_vip_announced{vip=\"10.0.3.49\"} 0",
            "lb_vip_announced{vip=\"fd00:3::49\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        // Nothing but a target missing drops a frame: one reason.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("lb_dropped_packets_total"))
                .count(),
            1,
            "{text}"
        );
        // Each series once: the backup's target has no row without `via`.
        assert!(
            !text.contains("target=\"10.0.3.21\"}"),
            "a backup's target without via:\n{text}"
        );
    }

    /// `lb_group_packets_total{group="web"}` of a scrape of `view` with
    /// target ids' packets `packets` (index = id).
    fn group_packets(view: &View, packets: &[u64]) -> u64 {
        let stats = |p: u64| Stats {
            packets: p,
            ..Stats::default()
        };
        let scrape = Scrape {
            view: Arc::new(view.clone()),
            counters: [0; Counter::COUNT as usize],
            listeners: Vec::new(),
            targets: packets.iter().map(|&p| stats(p)).collect(),
            active: vec![0; view.targets.len()],
            sweep: None,
            in_table: BTreeSet::new(),
        };
        let text = scrape.render(&Registry::default()).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("lb_group_packets_total{group=\"web\"} "))
            .unwrap_or_else(|| panic!("no web packets in:\n{text}"));
        line.parse().unwrap()
    }

    /// A policy whose group `web` has targets 10.0.3.N for each N.
    fn web(targets: &[u8]) -> crate::policy::Policy {
        let mut y = String::from(
            "listeners:\n  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }\n\
             target_groups:\n  - name: web\n    protocol: tcp\n    targets:\n",
        );
        for t in targets {
            y += &format!("      - {{ ip: 10.0.3.{t} }}\n");
        }
        crate::policy::parse("t.yaml", &y).unwrap()
    }

    /// The plan of `p` following `ids`, at `now`, and its view.
    fn next(
        p: &crate::policy::Policy,
        ids: &crate::ids::Ids,
        now: std::time::Instant,
        released: &crate::view::Released,
    ) -> (crate::plan::MapPlan, View) {
        let observed = crate::plan::Observed::default();
        let cache = &mut crate::maglev::TableCache::default();
        let plan = crate::policy::compile::compile_next(p, &observed, ids, now, cache).unwrap();
        let view = View::of(p, &plan, released, (1024, 512));
        (plan, view)
    }

    /// A group's counters never fall while lb runs: a removed target is
    /// counted while its id is retired, its counts are kept when its id is
    /// released (and zeroed), a new target given that id counts from 0,
    /// and one back before its id is released is counted once.
    #[test]
    fn a_groups_counters_never_fall_as_targets_leave_and_come_back() {
        let (t0, none) = (std::time::Instant::now(), Default::default());
        let (first, v) = next(&web(&[11, 12]), &Default::default(), t0, &none);
        assert_eq!(group_packets(&v, &[0, 100, 50]), 150);
        // .12 removed: retired, not in the plan, still counted.
        let (removed, v) = next(&web(&[11]), &first.ids, t0, &none);
        assert!(removed.targets.iter().all(|t| t.id != 2));
        assert_eq!(group_packets(&v, &[0, 100, 50]), 150);
        // Back before its id is released: the same id, counted once.
        let (_, back) = next(&web(&[11, 12]), &removed.ids, t0, &none);
        assert_eq!(group_packets(&back, &[0, 100, 60]), 160);
        // Released: its counts are kept (in the view published before the
        // data plane zeroes it), and a new target given its id counts
        // from 0.
        let mut ids = (*removed.ids).clone();
        let released = ids.release(&Default::default(), t0 + crate::ids::RELEASE_GRACE);
        assert_eq!(released, [2]);
        let read = StatsRead {
            targets: [0, 0, 60]
                .map(|p| Stats {
                    packets: p,
                    ..Stats::default()
                })
                .to_vec(),
            ..StatsRead::default()
        };
        let mut totals = crate::view::Released::default();
        totals.add(&removed.ids, &released, &read);
        let v = v.released(&released, &totals);
        assert_eq!(group_packets(&v, &[0, 100, 60]), 160);
        assert_eq!(group_packets(&v, &[0, 100, 0]), 160, "zeroed");
        let (reused, v) = next(&web(&[11, 13]), &ids, t0, &totals);
        let new = reused
            .targets
            .iter()
            .find(|t| t.ip.to_string() == "10.0.3.13");
        assert_eq!(new.map(|t| t.id), Some(2));
        assert_eq!(group_packets(&v, &[0, 100, 5]), 165);
    }
}
