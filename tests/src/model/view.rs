//! The model's own reading of the policy and of the host (MACs, health
//! verdicts): its listeners, its groups with their settings and tables, and
//! which targets take new flows and which their flows' packets, from
//! docs/algorithms.md ("Which targets take new flows") and the README. It
//! shares nothing with the compiler but the parsed policy: not the map
//! plan, its ids, tables or flags. Backup groups and drains are not
//! modelled (a policy with a backup group is refused here).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use lb_common::{FAMILY_V4, FAMILY_V6, ListenerKey, PROTO_TCP, PROTO_UDP};
use lb_user::{
    health::HealthState,
    plan::Observed,
    policy::{
        Affinity, Algorithm, FailoverMode, GroupProtocol, ListenerProtocol, Policy, TargetGroup,
    },
};

use super::{
    TargetKey,
    hash::Fields,
    least_connections::Draws,
    maglev::{self, Member},
};

/// What the model knows of the policy and the host.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The interface's MAC: frames to it are balanced, and forwarded ones
    /// come from it.
    pub own_mac: [u8; 6],
    /// Each listener's key (its first port), last port and group.
    pub listeners: Vec<(ListenerKey, u16, String)>,
    pub groups: HashMap<String, Group>,
}

/// A group as the model sees it.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub algorithm: Algorithm,
    /// What the flow hash hashes.
    pub fields: Fields,
    pub timeouts: Timeouts,
    /// Sticky sessions in effect: their duration (s).
    pub sticky_s: Option<u32>,
    pub targets: Vec<Target>,
    /// The Maglev table, or the round-robin cycle of a `round_robin` group.
    pub table: Arc<Table>,
}

/// How long a flow may go without packets (s): in general, and after the
/// client's FIN or RST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle_s: u32,
    pub fin_s: u32,
}

/// A target of a group.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: TargetKey,
    pub mac: Option<[u8; 6]>,
    /// Converted weight (0-100).
    pub weight: u32,
    /// It takes its flows' packets.
    pub usable: bool,
    /// It takes new flows.
    pub selectable: bool,
}

/// A group's table: the target of each slot, and (built when least
/// connections first asks) what its draws can give.
#[derive(Debug, Default)]
pub struct Table {
    pub slots: Vec<Option<Arc<TargetKey>>>,
    draws: OnceLock<Draws>,
}

impl Table {
    pub fn draws(&self) -> &Draws {
        self.draws.get_or_init(|| Draws::of(&self.slots))
    }
}

/// The kind of a table and its members: what it is a function of.
type TableKey = (Option<u32>, Vec<Member>);

/// Tables built for earlier views, kept while a view uses them (a policy
/// change rebuilds only the tables whose members changed).
#[derive(Debug, Default, Clone)]
pub struct Tables(HashMap<TableKey, Arc<Table>>);

impl Tables {
    /// The Maglev table of `size` slots (`Some`), or the round-robin cycle
    /// (`None`), of `members`.
    fn get(
        &mut self,
        size: Option<u32>,
        members: Vec<Member>,
        used: &mut HashSet<TableKey>,
    ) -> Arc<Table> {
        let key = (size, members);
        let table = self.0.entry(key.clone()).or_insert_with(|| {
            let slots = match size {
                Some(size) => maglev::maglev(&key.1, size),
                None => maglev::round_robin(&key.1),
            };
            Arc::new(Table {
                slots,
                draws: OnceLock::new(),
            })
        });
        let table = Arc::clone(table);
        used.insert(key);
        table
    }
}

impl View {
    /// The view of `policy` on a host with `host`'s MACs and health
    /// verdicts (its drains and flows are not modelled), with tables from
    /// `tables` where unchanged.
    pub fn new(policy: &Policy, host: &Observed, tables: &mut Tables) -> View {
        assert_eq!(
            host.drains,
            Default::default(),
            "the model does not cover drains"
        );
        let mut used = HashSet::new();
        let groups = policy
            .target_groups
            .iter()
            .map(|g| {
                let port = policy
                    .listeners
                    .iter()
                    .find(|l| l.target_group == g.name)
                    .map_or(0, |l| l.port.first);
                (g.name.clone(), group(g, port, host, tables, &mut used))
            })
            .collect();
        tables.0.retain(|key, _| used.contains(key));
        View {
            own_mac: host.iface_mac,
            listeners: policy
                .listeners
                .iter()
                .map(|l| {
                    (
                        listener_key(l.vip, l.protocol, l.port.first),
                        l.port.last,
                        l.target_group.clone(),
                    )
                })
                .collect(),
            groups,
        }
    }

    /// The group of the listener `key`.
    pub fn listener(&self, key: &ListenerKey) -> Option<&Group> {
        let (_, _, name) = self.listeners.iter().find(|(k, _, _)| k == key)?;
        self.groups.get(name)
    }

    /// The listener (its key) and group a packet to `to` (VIP, protocol,
    /// port) is for: the listener of that port, or of a range that holds
    /// it.
    pub fn listener_of_packet(&self, to: &ListenerKey) -> Option<(ListenerKey, &Group)> {
        let port = u16::from_be(to.port_be);
        let (key, _, name) = self.listeners.iter().find(|(k, last, _)| {
            let first = u16::from_be(k.port_be);
            k.addr_be == to.addr_be
                && k.proto == to.proto
                && k.family == to.family
                && (first..=*last).contains(&port)
        })?;
        Some((*key, self.groups.get(name)?))
    }
}

impl Group {
    /// Target `key` if it is one of the group's and takes its flows'
    /// packets.
    pub fn usable(&self, key: &TargetKey) -> Option<&Target> {
        self.targets.iter().find(|t| t.key == *key && t.usable)
    }

    /// Whether target `key` is one of the group's and takes new flows.
    pub fn selectable(&self, key: &TargetKey) -> bool {
        self.targets.iter().any(|t| t.key == *key && t.selectable)
    }

    /// A target's converted weight (0 if it is not the group's).
    pub fn weight(&self, key: &TargetKey) -> u32 {
        self.targets
            .iter()
            .find(|t| t.key == *key)
            .map_or(0, |t| t.weight)
    }
}

/// The model's group `g`, whose listener has port `port` (0: none).
fn group(
    g: &TargetGroup,
    port: u16,
    host: &Observed,
    tables: &mut Tables,
    used: &mut HashSet<TableKey>,
) -> Group {
    assert!(g.backup.is_none(), "the model does not cover backup groups");
    let targets = targets(g, host);
    let members: Vec<Member> = targets
        .iter()
        .filter(|t| t.selectable)
        .map(|t| Member {
            target: Arc::new(t.key.clone()),
            port,
            weight: t.weight,
        })
        .collect();
    let size = (g.algorithm != Algorithm::RoundRobin).then_some(g.table_size);
    let sticky = g.sticky_session.filter(|s| s.enabled);
    Group {
        name: g.name.clone(),
        algorithm: g.algorithm,
        fields: fields(g.algorithm, g.affinity),
        timeouts: Timeouts {
            idle_s: g.flow_idle_timeout_s.unwrap_or(match g.protocol {
                GroupProtocol::Udp => 120,
                GroupProtocol::Tcp | GroupProtocol::Http => 350,
            }),
            fin_s: g.flow_fin_timeout_s.unwrap_or(10),
        },
        sticky_s: sticky
            .filter(|_| g.algorithm != Algorithm::SourceIp)
            .map(|s| s.duration_s),
        targets,
        table: tables.get(size, members, used),
    }
}

/// The group's targets: converted weight, MAC, and which take new flows and
/// their flows' packets (last resort included).
fn targets(g: &TargetGroup, host: &Observed) -> Vec<Target> {
    let checked = g.health_check.as_ref().is_some_and(|h| h.enabled);
    let rebalance = g.target_failover.on_unhealthy == FailoverMode::Rebalance;
    let mut out: Vec<(Target, bool)> = g
        .targets
        .iter()
        .map(|t| {
            let key = TargetKey::new(g.name.clone(), t.ip);
            let mac = t
                .mac
                .map(|m| m.octets())
                .or_else(|| host.neighbors.get(&t.ip).copied());
            let unhealthy = checked && host.health.get(&key) == Some(&HealthState::Unhealthy);
            let weight = (u32::from(t.weight) * 100).div_ceil(256);
            let healthy = mac.is_some() && weight > 0 && !unhealthy;
            let target = Target {
                key,
                mac,
                weight,
                usable: mac.is_some() && !(unhealthy && rebalance),
                selectable: healthy,
            };
            (target, unhealthy)
        })
        .collect();
    let last_resort = !out.is_empty() && out.iter().all(|(t, _)| !t.selectable);
    for (t, unhealthy) in &mut out {
        if last_resort && *unhealthy && t.mac.is_some() && t.weight > 0 {
            t.selectable = true;
            t.usable = true;
        }
    }
    out.into_iter().map(|(t, _)| t).collect()
}

/// The flow fields of a group's algorithm and affinity.
fn fields(algorithm: Algorithm, affinity: Affinity) -> Fields {
    match (algorithm, affinity) {
        (Algorithm::SourceIp, _) => Fields::SOURCE_IP,
        (Algorithm::Hash, Affinity::ThreeTuple) => Fields::THREE_TUPLE,
        (Algorithm::Hash, Affinity::TwoTuple) => Fields::TWO_TUPLE,
        _ => Fields::FIVE_TUPLE,
    }
}

/// A listener's key as the frames give it: the VIP's wire bytes, the port
/// in wire order, the protocol and the family.
pub fn listener_key(vip: IpAddr, protocol: ListenerProtocol, port: u16) -> ListenerKey {
    let (bytes, family) = match vip {
        IpAddr::V4(v4) => ([&v4.octets()[..], &[0; 12]].concat(), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets().to_vec(), FAMILY_V6),
    };
    ListenerKey {
        addr_be: std::array::from_fn(|i| {
            u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
        }),
        port_be: port.to_be(),
        proto: match protocol {
            ListenerProtocol::Tcp => PROTO_TCP,
            ListenerProtocol::Udp => PROTO_UDP,
        },
        family,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: web
    protocol: tcp
    table_size: 1021
    health_check: { type: tcp, interval_s: 2, timeout_s: 1 }
    target_failover: { on_unhealthy: rebalance, on_deregistration: rebalance }
    targets:
      - { ip: 10.0.3.11 }
      - { ip: 10.0.3.12, weight: 0 }
      - { ip: 10.0.3.13 }
      - { ip: 10.0.3.14, mac: \"02:00:00:00:00:99\" }
";

    /// (usable, selectable) of each target, with 10.0.3.13 and 10.0.3.14
    /// in the neighbour table and the verdicts `unhealthy`.
    fn flags(unhealthy: &[&str]) -> Vec<(bool, bool)> {
        let policy = lb_user::policy::parse("view.yaml", POLICY).unwrap();
        let mut host = Observed::default();
        for ip in ["10.0.3.12", "10.0.3.13"] {
            host.neighbors
                .insert(ip.parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        }
        for ip in unhealthy {
            let key = TargetKey::new("web", ip.parse().unwrap());
            host.health.insert(key, HealthState::Unhealthy);
        }
        let view = View::new(&policy, &host, &mut Tables::default());
        let g = &view.groups["web"];
        g.targets.iter().map(|t| (t.usable, t.selectable)).collect()
    }

    #[test]
    fn which_targets_take_new_flows_and_packets() {
        // 11: no MAC; 12: weight 0 (its flows go on); 13, 14: healthy.
        let none = [(false, false), (true, false), (true, true), (true, true)];
        assert_eq!(flags(&[]), none);
        // Unhealthy with rebalance: neither new flows nor packets.
        let one = [(false, false), (true, false), (false, false), (true, true)];
        assert_eq!(flags(&["10.0.3.13"]), one);
        // None healthy: last resort for those with a MAC and a weight.
        let all = [(false, false), (true, false), (true, true), (true, true)];
        assert_eq!(flags(&["10.0.3.11", "10.0.3.13", "10.0.3.14"]), all);
    }
}
