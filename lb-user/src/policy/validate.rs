//! The rules of SPEC.md a policy must follow beyond its shape (serde checks
//! the shape). Every rule names the path it is about; `Positions` turns the
//! path into a line. All issues are reported, not just the first.
//!
//! - [`validate`] (called by `parse::parse`): rules that need only the text.
//! - [`validate_for_host`]: rules that depend on the host, whose facts the
//!   caller observes and passes in ([`HostFacts`]), so this stays pure.
use std::{collections::HashMap, net::IpAddr};

use super::{
    error::{Issue, PolicyError},
    limits::{
        DEFAULT_TABLE_SIZE, DEREGISTRATION_DELAY_S, FAILOVER_RATIO, FLOW_FIN_TIMEOUT_S,
        FLOW_IDLE_TIMEOUT_S, GROUP_LIMIT, IFACE_NAME_LEN, INTERVAL_S, LISTENER_LIMIT, MAX_FLOWS,
        NAME_LEN, Range, STICKY_DURATION_S, TABLE_SIZE, TARGET_LIMIT, THRESHOLD, TIMEOUT_S, WEIGHT,
        out_of_range,
    },
    mac::Mac,
    model::{
        Algorithm, CheckType, GroupProtocol, HealthCheck, Listener, ListenerProtocol, Policy,
        TargetGroup,
    },
    ports::Ports,
    positions::Positions,
};

/// Facts about the host the validator needs (kept pure: the caller observes
/// them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Prefixes configured on the lb interface; empty skips the
    /// directly-connected check.
    pub iface_nets: Vec<(IpAddr, u8)>,
}

/// Host-independent rules; `parse::parse` calls this after deserializing.
pub fn validate(file: &str, policy: &Policy, positions: &Positions) -> Vec<Issue> {
    let mut r = Report::new(file, positions);
    if let Some(name) = &policy.interface {
        interface_name(&mut r, name);
    }
    capacity(&mut r, policy);
    if let Some(table) = &policy.flow_table
        && !MAX_FLOWS.contains(table.max_flows)
    {
        r.issue(
            "flow_table.max_flows".into(),
            out_of_range("max_flows", &table.max_flows.to_string()).unwrap_or_default(),
        );
    }
    let groups = group_index(&mut r, policy);
    listeners(&mut r, policy, &groups);
    let vips = vip_owners(policy);
    for (g, group) in policy.target_groups.iter().enumerate() {
        // A backup with no listener of its own takes the port and family
        // of the one it backs up.
        let listener = policy.traffic_listener_of(&group.name);
        target_group(&mut r, g, group, listener, &vips);
        backup(&mut r, policy, g, &groups);
    }
    r.issues
}

/// The host-dependent rule: every target is on a subnet of the lb interface
/// (DSR rewrites only the destination MAC). The interface is named after
/// `policy.interface` (apply any `--iface` override to it first).
pub fn validate_for_host(
    source_name: &str,
    text: &str,
    policy: &Policy,
    host: &HostFacts,
) -> Result<(), PolicyError> {
    if host.iface_nets.is_empty() {
        return Ok(());
    }
    let off_link: Vec<(usize, usize, IpAddr)> = policy
        .target_groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| {
            group
                .targets
                .iter()
                .enumerate()
                .filter_map(move |(t, target)| {
                    let on_link = host
                        .iface_nets
                        .iter()
                        .any(|&(net, len)| network(net, len) == network(target.ip, len));
                    (!on_link).then_some((g, t, target.ip))
                })
        })
        .collect();
    if off_link.is_empty() {
        // Positions only for messages: indexing a large policy again (100,000
        // targets) would take longer than all the checks.
        return Ok(());
    }
    let positions = Positions::index(text);
    let mut r = Report::new(source_name, &positions);
    let iface = policy.interface.as_deref().unwrap_or("the lb interface");
    let nets: Vec<String> = host
        .iface_nets
        .iter()
        .map(|&(addr, len)| format!("{}/{len}", network(addr, len)))
        .collect();
    for (g, t, ip) in off_link {
        r.issue(
            format!("target_groups[{g}].targets[{t}].ip"),
            format!(
                "target {ip} is not on a subnet directly connected to {iface} ({}): \
                 DSR rewrites only the MAC, so targets must share the L2 segment",
                nets.join(", ")
            ),
        );
    }
    PolicyError::check(r.issues)
}

/// What is worth saying about a valid policy, though it changes nothing:
/// each enabled sticky session that `algorithm: source_ip` makes moot. In
/// file order, each at the line of the value it is about.
pub fn notices(source_name: &str, text: &str, policy: &Policy) -> Vec<Issue> {
    let ignored: Vec<usize> = policy
        .target_groups
        .iter()
        .enumerate()
        .filter(|(_, group)| group.sticky_ignored())
        .map(|(g, _)| g)
        .collect();
    if ignored.is_empty() {
        // As in `validate_for_host`: no second index without something to say.
        return Vec::new();
    }
    let positions = Positions::index(text);
    let mut r = Report::new(source_name, &positions);
    for g in ignored {
        r.issue(
            format!("target_groups[{g}].sticky_session"),
            "ignored: algorithm source_ip already keeps each client on one target".into(),
        );
    }
    PolicyError::new(r.issues).issues
}

struct Report<'a> {
    file: &'a str,
    positions: &'a Positions,
    issues: Vec<Issue>,
}

impl<'a> Report<'a> {
    fn new(file: &'a str, positions: &'a Positions) -> Self {
        Report {
            file,
            positions,
            issues: Vec::new(),
        }
    }

    fn issue(&mut self, path: String, message: String) {
        let pos = self.positions.locate(&path);
        self.issues.push(Issue {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path,
            message,
        });
    }

    fn line(&self, path: &str) -> usize {
        self.positions.locate(path).line
    }

    /// Whether the text gives a scalar at `path` (rather than a default).
    fn written(&self, path: &str) -> bool {
        self.positions.scalar(path).is_some()
    }
}

fn interface_name(r: &mut Report, name: &str) {
    let ok = !name.is_empty()
        && IFACE_NAME_LEN.contains(name.len() as u64)
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !ok {
        r.issue(
            "interface".into(),
            format!(
                "interface name `{name}` is invalid: use {IFACE_NAME_LEN} characters \
                 without '/', ':' or whitespace"
            ),
        );
    }
}

fn capacity(r: &mut Report, policy: &Policy) {
    let limits = [
        ("listeners", policy.listeners.len(), LISTENER_LIMIT as usize),
        (
            "target_groups",
            policy.target_groups.len(),
            GROUP_LIMIT as usize,
        ),
    ];
    for (field, count, max) in limits {
        if count > max {
            r.issue(
                field.into(),
                format!("{count} {field} exceed the limit of {max}"),
            );
        }
    }
    let targets: usize = policy.target_groups.iter().map(|g| g.targets.len()).sum();
    let max = TARGET_LIMIT as usize;
    if targets > max {
        r.issue(
            "target_groups".into(),
            format!("{targets} targets in all exceed the limit of {max}"),
        );
    }
}

/// Checks a listener or group name: the name rules, and unique among its
/// kind (`list`: `listeners` or `target_groups`; `what`: how messages call
/// the kind). `seen` maps each name to the first item with it.
fn unique_name<'p>(
    r: &mut Report,
    (list, what): (&str, &str),
    i: usize,
    item_name: &'p str,
    seen: &mut HashMap<&'p str, usize>,
) {
    let path = format!("{list}[{i}].name");
    name(r, &path, item_name);
    if let Some(&first) = seen.get(item_name) {
        let line = r.line(&format!("{list}[{first}].name"));
        let message =
            format!("{what} name `{item_name}` is already used by {list}[{first}] (line {line})");
        r.issue(path, message);
    } else {
        seen.insert(item_name, i);
    }
}

/// Checks group names; returns name -> index of the first group of each name.
fn group_index<'p>(r: &mut Report, policy: &'p Policy) -> HashMap<&'p str, usize> {
    let mut index = HashMap::new();
    for (g, group) in policy.target_groups.iter().enumerate() {
        unique_name(
            r,
            ("target_groups", "target group"),
            g,
            &group.name,
            &mut index,
        );
    }
    index
}

/// What the listeners checked so far hold, by the index of the first.
#[derive(Default)]
struct Listeners<'p> {
    names: HashMap<&'p str, usize>,
    /// (VIP, protocol) -> the ports of each listener on it.
    keys: HashMap<(IpAddr, ListenerProtocol), Vec<(Ports, usize)>>,
    /// Group name -> the listener it is attached to.
    attached: HashMap<&'p str, usize>,
}

/// Checks listeners; `groups` is [`group_index`]'s.
fn listeners(r: &mut Report, policy: &Policy, groups: &HashMap<&str, usize>) {
    let mut seen = Listeners::default();
    for (l, listener) in policy.listeners.iter().enumerate() {
        unique_name(
            r,
            ("listeners", "listener"),
            l,
            &listener.name,
            &mut seen.names,
        );
        listener_address(r, policy, l, &mut seen.keys);
        listener_group(r, policy, l, groups, &mut seen.attached);
    }
}

/// The vip, the port, and no port of (vip, protocol) another listener's.
fn listener_address(
    r: &mut Report,
    policy: &Policy,
    l: usize,
    keys: &mut HashMap<(IpAddr, ListenerProtocol), Vec<(Ports, usize)>>,
) {
    let listener = &policy.listeners[l];
    let at = |field: &str| format!("listeners[{l}].{field}");
    let vip = listener.vip;
    if let Some(what) = not_unicast(vip) {
        let message = format!("vip {vip} is {what}; a vip must be a unicast address");
        r.issue(at("vip"), message);
    }
    if listener.port.first == 0 {
        r.issue(at("port"), out_of_range("port", "0").unwrap_or_default());
    }
    let on_vip = keys.entry((vip, listener.protocol)).or_default();
    let clash = on_vip
        .iter()
        .find_map(|&(ports, first)| Some((ports.overlap(listener.port)?, first)));
    on_vip.push((listener.port, l));
    let Some((shared, first)) = clash else {
        return;
    };
    let line = r.line(&format!("listeners[{first}]"));
    let other = &policy.listeners[first];
    let message = if other.port == listener.port && !listener.port.is_range() {
        format!(
            "listener `{}` has the same vip, protocol and port ({vip} {} {}) as listener `{}` \
             (line {line})",
            listener.name,
            listener.protocol.as_str(),
            listener.port,
            other.name,
        )
    } else {
        let ports = if shared.is_range() { "ports" } else { "port" };
        let shared = if shared == Ports::ALL {
            "1-65535".to_string()
        } else {
            shared.to_string()
        };
        format!(
            "listener `{}` ({vip} {} {}) shares {ports} {shared} with listener `{}` (line {line}): \
             listeners of one vip and protocol must not share a port",
            listener.name,
            listener.protocol.as_str(),
            listener.port,
            other.name,
        )
    };
    r.issue(format!("listeners[{l}]"), message);
}

/// The listener's group: it exists, takes the listener's protocol, and
/// serves no other listener. `attached` maps groups to their first listener.
fn listener_group<'p>(
    r: &mut Report,
    policy: &'p Policy,
    l: usize,
    groups: &HashMap<&str, usize>,
    attached: &mut HashMap<&'p str, usize>,
) {
    let listener = &policy.listeners[l];
    let at = format!("listeners[{l}].target_group");
    let wanted = listener.target_group.as_str();
    let Some(&g) = groups.get(wanted) else {
        r.issue(at, no_such_group(policy, wanted));
        return;
    };
    let group = &policy.target_groups[g];
    if !protocols_match(listener.protocol, group.protocol) {
        let needs = match listener.protocol {
            ListenerProtocol::Tcp => "a tcp listener needs a tcp or http target group",
            ListenerProtocol::Udp => "a udp listener needs a udp target group",
        };
        let (name, protocol) = (&listener.name, listener.protocol.as_str());
        let group_protocol = group.protocol.as_str();
        let message = format!(
            "listener `{name}` is {protocol} but target group `{wanted}` is {group_protocol}: {needs}"
        );
        r.issue(at.clone(), message);
    }
    if let Some(&first) = attached.get(wanted) {
        let line = r.line(&format!("listeners[{first}]"));
        r.issue(
            at,
            format!(
                "target group `{wanted}` is already attached to listener `{}` (line {line}): \
                 with DSR a target group serves at most one listener",
                policy.listeners[first].name
            ),
        );
    } else {
        attached.insert(&group.name, l);
    }
}

/// A group's `backup` and `failover_ratio` (SPEC.md "Backup group and
/// failover ratio"): the backup is another group that exists; the ratio is
/// written with a backup, and only then, within 0.0-1.0; and the backup's
/// targets can take this group's flows: the same transport, and (DSR keeps
/// the listener's port) the port of this group's listener.
fn backup(r: &mut Report, policy: &Policy, g: usize, groups: &HashMap<&str, usize>) {
    let group = &policy.target_groups[g];
    let at = |field: &str| format!("target_groups[{g}].{field}");
    let (lo, hi) = FAILOVER_RATIO;
    match (&group.backup, group.failover_ratio) {
        (None, None) => return,
        (None, Some(_)) => {
 let message = "failover_ratio needs a backup: it says when the backup group takes this group's new flows";
            r.issue(at("failover_ratio"), message.into());
            return;
        }
        (Some(_), None) => r.issue(
            at("backup"),
            format!(
 "a backup needs failover_ratio ({lo:.1}-{hi:.1}): the healthy share of this group's targets below which new flows go to the backup (0.0: only when none is)"
            ),
        ),
        (Some(_), Some(ratio)) if !(lo..=hi).contains(&ratio) => r.issue(
            at("failover_ratio"),
            format!("failover_ratio {ratio} is out of range {lo:.1}-{hi:.1}"),
        ),
        _ => {}
    }
    let Some(name) = group.backup.as_deref() else {
        return;
    };
    if name == group.name {
        let message = format!("target group `{name}` cannot be its own backup");
        r.issue(at("backup"), message);
        return;
    }
    let Some(&b) = groups.get(name) else {
        r.issue(at("backup"), no_such_group(policy, name));
        return;
    };
    backup_fits(r, policy, g, b);
}

/// Whether backup group `b` can take the flows of group `g`: the same
/// transport, and the port and address family of `g`'s listener. Those are
/// what the backup's targets receive, so they must match what the backup
/// serves already ([`Policy::traffic_listener_of`]: its own listener, or
/// that of the first group it backs up), against which its targets are
/// checked.
fn backup_fits(r: &mut Report, policy: &Policy, g: usize, b: usize) {
    let (group, backup) = (&policy.target_groups[g], &policy.target_groups[b]);
    let at = format!("target_groups[{g}].backup");
    same_transport(r, &at, group, backup);
    let Some(listener) = policy.listener_of(&group.name) else {
        return;
    };
    let Some(serves) = policy
        .traffic_listener_of(&backup.name)
        .filter(|&l| !std::ptr::eq(l, listener))
    else {
        return;
    };
    let own = serves.target_group == backup.name;
    let what = if own {
        format!("serves listener `{}`", serves.name)
    } else {
        format!(
            "backs up target group `{}` of listener `{}`",
            serves.target_group, serves.name
        )
    };
    // A backup with no listener of its own may serve several ports, its
    // targets listening on each, unless its check takes its port from the
    // first (it would probe that one alone).
    if serves.port != listener.port && (own || probes_the_traffic_port(backup)) {
        let why = if own {
            "with DSR the backup's targets receive the port of the listener they serve, so every listener it serves must have the same"
        } else {
            "its health check names no port, so it would probe its targets on the first alone: give health_check.port (or every target a monitor_port), or use a backup per port"
        };
        let message = format!(
            "backup `{}` {what}, on port {}, but listener `{}` of target group `{}` is on port {}: {why}",
            backup.name, serves.port, listener.name, group.name, listener.port
        );
        r.issue(at.clone(), message);
    }
    if serves.vip.is_ipv4() != listener.vip.is_ipv4() {
        let message = format!(
            "backup `{}` {what}, whose vip {} is {}, but listener `{}` of target group `{}` has the {} vip {}: a backup's targets must have the address family of every vip they serve",
            backup.name,
            serves.vip,
            family(serves.vip),
            listener.name,
            group.name,
            family(listener.vip),
            listener.vip
        );
        r.issue(at, message);
    }
}

/// A backup carries its group's transport.
fn same_transport(r: &mut Report, at: &str, group: &TargetGroup, backup: &TargetGroup) {
    let udp = |p: GroupProtocol| p == GroupProtocol::Udp;
    if udp(group.protocol) != udp(backup.protocol) {
        let message = format!(
            "backup `{}` is {} but target group `{}` is {}: a backup must carry the same transport (udp with udp; tcp or http with tcp or http)",
            backup.name,
            backup.protocol.as_str(),
            group.name,
            group.protocol.as_str()
        );
        r.issue(at.to_string(), message);
    }
}

/// Whether `group`'s health check probes its targets on the port they
/// take traffic on (`TargetGroup::monitor_port`: a target's `port` is that
/// port): an enabled check that uses a port, names none, and a target with
/// no `monitor_port`.
fn probes_the_traffic_port(group: &TargetGroup) -> bool {
    let Some(hc) = group.health_check.as_ref().filter(|hc| hc.enabled) else {
        return false;
    };
    hc.port.is_none()
        && hc.kind_for(group.protocol) != CheckType::Ping
        && group.targets.iter().any(|t| t.monitor_port.is_none())
}

/// The message for a listener's group that does not exist, naming those
/// that do.
fn no_such_group(policy: &Policy, wanted: &str) -> String {
    let defined: Vec<String> = policy
        .target_groups
        .iter()
        .map(|g| format!("`{}`", g.name))
        .collect();
    let known = if defined.is_empty() {
        "no target groups are defined".to_string()
    } else {
        format!("defined: {}", defined.join(", "))
    };
    format!("target group `{wanted}` does not exist ({known})")
}

/// The first listener of each vip.
fn vip_owners(policy: &Policy) -> HashMap<IpAddr, &str> {
    let mut owners = HashMap::new();
    for l in &policy.listeners {
        owners.entry(l.vip).or_insert(l.name.as_str());
    }
    owners
}

/// A group's rules, then its targets'; `listener` is the group's.
fn target_group(
    r: &mut Report,
    g: usize,
    group: &TargetGroup,
    listener: Option<&Listener>,
    vips: &HashMap<IpAddr, &str>,
) {
    table_size(r, g, group);
    algorithm(r, g, group);
    sticky_session(r, g, group);
    health_check(r, g, group);
    health_check_port(r, g, group, listener);
    target_failover(r, g, group);
    flow_timeouts(r, g, group);
    if let Some(delay) = group.deregistration_delay_s
        && !DEREGISTRATION_DELAY_S.contains(delay)
    {
        r.issue(
            format!("target_groups[{g}].deregistration_delay_s"),
            out_of_range("deregistration_delay_s", &delay.to_string()).unwrap_or_default(),
        );
    }
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    for (t, target) in group.targets.iter().enumerate() {
        let at = |field: &str| format!("target_groups[{g}].targets[{t}].{field}");
        target_ip(r, (g, t), group, listener, vips, &mut seen);
        if !WEIGHT.contains(target.weight) {
            let weight = target.weight.to_string();
            r.issue(
                at("weight"),
                out_of_range("weight", &weight).unwrap_or_default(),
            );
        }
        target_port(r, &at("port"), target.port, group, listener);
        if let Some(port) = target.monitor_port {
            monitor_port(r, &at("monitor_port"), port, group);
        }
        if let Some(mac) = target.mac {
            target_mac(r, &at("mac"), mac);
        }
    }
}

/// A prime size in range, with a slot for every target.
fn table_size(r: &mut Report, g: usize, group: &TargetGroup) {
    let at = |field: &str| format!("target_groups[{g}].{field}");
    let size = group.table_size;
    if !TABLE_SIZE.contains(size) {
        let message = out_of_range("table_size", &size.to_string()).unwrap_or_default();
        r.issue(at("table_size"), message);
    } else if !is_prime(size) {
        r.issue(
            at("table_size"),
            format!(
                "table_size {size} is not a prime (consistent hashing needs one); \
                 {DEFAULT_TABLE_SIZE} is a good default"
            ),
        );
    }
    let targets = group.targets.len();
    if targets > size as usize {
        let message = format!(
            "{targets} targets do not fit a table_size of {size}: every target needs a slot"
        );
        r.issue(at("targets"), message);
    }
}

/// Target `t` of group `g`'s address: a unicast host, not a vip, once in
/// its group (`seen`: address -> first target), of its listener's family.
fn target_ip(
    r: &mut Report,
    (g, t): (usize, usize),
    group: &TargetGroup,
    listener: Option<&Listener>,
    vips: &HashMap<IpAddr, &str>,
    seen: &mut HashMap<IpAddr, usize>,
) {
    let at = format!("target_groups[{g}].targets[{t}].ip");
    let ip = group.targets[t].ip;
    if let Some(what) = not_unicast(ip) {
        let message = format!("target {ip} is {what}; a target must be a unicast host address");
        r.issue(at.clone(), message);
    } else if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
        && group.health_check.as_ref().is_some_and(|hc| hc.enabled)
    {
        let message = format!(
            "target {ip} is an IPv6 link-local address: health checks cannot reach it without \
             an interface scope; give its global or unique-local address"
        );
        r.issue(at.clone(), message);
    }
    if let Some(owner) = vips.get(&ip) {
        let message =
            format!("target {ip} is the vip of listener `{owner}`; a target cannot be a vip");
        r.issue(at.clone(), message);
    }
    if let Some(&first) = seen.get(&ip) {
        let line = r.line(&format!("target_groups[{g}].targets[{first}]"));
        let message = format!(
            "duplicate target {ip} in target group `{}` (first at targets[{first}], line {line})",
            group.name
        );
        r.issue(at.clone(), message);
    } else {
        seen.insert(ip, t);
    }
    if let Some(l) = listener
        && ip.is_ipv4() != l.vip.is_ipv4()
    {
        let (family, vip_family) = (family(ip), family(l.vip));
        let message = format!(
            "target {ip} is {family} but {} has the {vip_family} vip {}: \
             a target must have its vip's address family",
            listener_named(l, group),
            l.vip
        );
        r.issue(at, message);
    }
}

/// A target's port: in range, and with DSR the listener's.
fn target_port(
    r: &mut Report,
    path: &str,
    port: Option<u16>,
    group: &TargetGroup,
    listener: Option<&Listener>,
) {
    match (port, listener) {
        (Some(0), _) => {
            r.issue(
                path.to_string(),
                out_of_range("port", "0").unwrap_or_default(),
            );
        }
        (Some(port), Some(l)) if l.port.is_range() => r.issue(
            path.to_string(),
            format!(
                "port {port} is set but {} has ports {}: with DSR a target \
                 receives every port of the range; remove it (monitor_port sets where \
                 health checks go)",
                listener_named(l, group),
                l.port
            ),
        ),
        (Some(port), Some(l)) if Some(port) != l.port.single() => r.issue(
            path.to_string(),
            format!(
                "port {port} differs from {} port {}: \
                 with DSR the target port is the listener port",
                listener_named(l, group),
                l.port
            ),
        ),
        _ => {}
    }
}

/// `l`, the listener whose traffic `group`'s targets receive, as a message
/// names it: for a backup attached to no listener, with the group it backs
/// up.
fn listener_named(l: &Listener, group: &TargetGroup) -> String {
    if l.target_group == group.name {
        format!("listener `{}`", l.name)
    } else {
        format!(
            "listener `{}` (of target group `{}`, which `{}` backs up)",
            l.name, l.target_group, group.name
        )
    }
}

/// A static MAC: unicast and not all zeros (its syntax is serde's).
fn target_mac(r: &mut Report, path: &str, mac: Mac) {
    let what = if mac.is_zero() {
        "all zeros"
    } else if mac.is_multicast() {
        "a multicast address"
    } else {
        return;
    };
    let message = format!("mac {mac} is {what}; a target needs a unicast MAC");
    r.issue(path.to_string(), message);
}

/// Flow timeout ranges; the FIN timeout only for TCP groups.
fn flow_timeouts(r: &mut Report, g: usize, group: &TargetGroup) {
    let at = |field: &str| format!("target_groups[{g}].{field}");
    let fields = [
        (
            "flow_idle_timeout_s",
            group.flow_idle_timeout_s,
            FLOW_IDLE_TIMEOUT_S,
        ),
        (
            "flow_fin_timeout_s",
            group.flow_fin_timeout_s,
            FLOW_FIN_TIMEOUT_S,
        ),
    ];
    for (field, value, range) in fields {
        if let Some(value) = value
            && !range.contains(value)
        {
            r.issue(
                at(field),
                out_of_range(field, &value.to_string()).unwrap_or_default(),
            );
        }
    }
    if group.protocol == GroupProtocol::Udp && group.flow_fin_timeout_s.is_some() {
        r.issue(
            at("flow_fin_timeout_s"),
            "flow_fin_timeout_s applies to TCP flows only (UDP has no FIN): \
             remove it from this udp target group"
                .into(),
        );
    }
}

/// `affinity` is what `hash` hashes: written for another algorithm it would
/// silently do nothing, so it is refused.
fn algorithm(r: &mut Report, g: usize, group: &TargetGroup) {
    let at = format!("target_groups[{g}].affinity");
    if group.algorithm != Algorithm::Hash && r.written(&at) {
        let what = match group.algorithm {
            Algorithm::SourceIp => "source_ip hashes the client IP alone",
            Algorithm::RoundRobin => "round_robin does not hash",
            Algorithm::LeastConnections => "least_connections does not hash",
            Algorithm::Hash => "",
        };
        r.issue(
            at,
            format!(
                "affinity is only for algorithm hash; {what}: remove affinity or use algorithm hash"
            ),
        );
    }
}

/// SPEC.md "Sticky session": tcp x tcp and udp x udp only, duration
/// 1-604800 s. (With `source_ip` it is accepted and ignored: that algorithm
/// is sticky by itself; [`notices`] and `lb status` say so.)
fn sticky_session(r: &mut Report, g: usize, group: &TargetGroup) {
    let Some(sticky) = &group.sticky_session else {
        return;
    };
    let at = |field: &str| format!("target_groups[{g}].sticky_session{field}");
    if group.protocol == GroupProtocol::Http {
        r.issue(
            at(""),
            "sticky_session is only for tcp and udp target groups (tcp listener to tcp group, \
             udp to udp); this group is http: use protocol tcp or remove sticky_session"
                .into(),
        );
    }
    if !STICKY_DURATION_S.contains(sticky.duration_s) {
        r.issue(
            at(".duration_s"),
            out_of_range("duration_s", &sticky.duration_s.to_string()).unwrap_or_default(),
        );
    }
}

/// SPEC.md "Health checks": ranges, timeout < interval, types by group
/// protocol, http-only fields only on http and https checks.
fn health_check(r: &mut Report, g: usize, group: &TargetGroup) {
    let Some(hc) = &group.health_check else {
        return;
    };
    let at = |field: &str| format!("target_groups[{g}].health_check.{field}");
    let kind = hc.kind_for(group.protocol);
    let allowed = CheckType::allowed_for(group.protocol);
    if !allowed.contains(&kind) {
        let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
        r.issue(
            at("type"),
            format!(
                "health check type {} is not allowed for a {} target group: use {}",
                kind.as_str(),
                group.protocol.as_str(),
                names.join(", ")
            ),
        );
    }
    if hc.port == Some(0) {
        r.issue(at("port"), out_of_range("port", "0").unwrap_or_default());
    } else if hc.port.is_some() && kind == CheckType::Ping {
        r.issue(
            at("port"),
            "port is not used by ping checks (ICMP has no port): remove it or use another type"
                .into(),
        );
    }
    check_timing(r, g, hc);
    let kind_text = if hc.kind.is_some() {
        kind.as_str().to_string()
    } else {
        let protocol = group.protocol.as_str();
        format!("{} (the default for a {protocol} group)", kind.as_str())
    };
    http_fields(r, g, hc, kind, &kind_text);
}

/// The interval, timeout and thresholds in range, and the timeout below
/// the interval (reported at the one written, when one is a default).
fn check_timing(r: &mut Report, g: usize, hc: &HealthCheck) {
    let at = |field: &str| format!("target_groups[{g}].health_check.{field}");
    let mut in_range = |field: &str, value: u32, range: Range| {
        let ok = range.contains(value);
        if !ok {
            let message = out_of_range(field, &value.to_string()).unwrap_or_default();
            r.issue(at(field), message);
        }
        ok
    };
    let interval_ok = in_range("interval_s", hc.interval_s, INTERVAL_S);
    let timeout_ok = in_range("timeout_s", hc.timeout_s, TIMEOUT_S);
    in_range("healthy_threshold", hc.healthy_threshold, THRESHOLD);
    in_range("unhealthy_threshold", hc.unhealthy_threshold, THRESHOLD);
    if !(interval_ok && timeout_ok && hc.timeout_s >= hc.interval_s) {
        return;
    }
    let (timeout, interval) = (hc.timeout_s, hc.interval_s);
    let interval_written = r.written(&at("interval_s"));
    if r.written(&at("timeout_s")) || !interval_written {
        let default = if interval_written {
            ""
        } else {
            " (the default)"
        };
        r.issue(
            at("timeout_s"),
            format!("timeout_s {timeout} must be less than interval_s {interval}{default}"),
        );
    } else {
        r.issue(
            at("interval_s"),
            format!(
                "interval_s {interval} must be greater than timeout_s {timeout} (the default): \
                 set timeout_s too"
            ),
        );
    }
}

/// method, version, path and status_codes: only for http and https, and
/// well formed.
fn http_fields(r: &mut Report, g: usize, hc: &HealthCheck, kind: CheckType, kind_text: &str) {
    let at = |field: &str| format!("target_groups[{g}].health_check.{field}");
    if !kind.is_http() {
        let given = [
            ("method", hc.method.is_some()),
            ("version", hc.version.is_some()),
            ("path", hc.path.is_some()),
            ("status_codes", hc.status_codes.is_some()),
        ];
        for (field, _) in given.iter().filter(|(_, given)| *given) {
            r.issue(
                at(field),
                format!("{field} is only for http and https checks; this check is {kind_text}"),
            );
        }
        return;
    }
    if let Some(path) = &hc.path
        && let Err(why) = http_path(path)
    {
        r.issue(at("path"), format!("path `{path}` is invalid: {why}"));
    }
    if let Some(codes) = &hc.status_codes
        && let Err(message) = crate::health::StatusCodes::parse(codes)
    {
        r.issue(at("status_codes"), message);
    }
}

/// A URL path (and query) as it goes on the request line.
fn http_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("it must start with '/'");
    }
    if let Some(c) = path.chars().find(|&c| !c.is_ascii_graphic()) {
        return Err(if c == ' ' {
            "it must not contain spaces (write %20)"
        } else {
            "use printable ASCII only (percent-encode the rest)"
        });
    }
    if path.contains('#') {
        return Err("a fragment ('#') is never sent to a server");
    }
    if path.parse::<hyper::Uri>().is_err() {
        return Err("it is not a URL path");
    }
    Ok(())
}

/// A group whose listener has a port range has no traffic port to probe:
/// its check needs a `port`, or every target a `monitor_port`.
fn health_check_port(r: &mut Report, g: usize, group: &TargetGroup, listener: Option<&Listener>) {
    let Some(l) = listener.filter(|l| l.port.is_range()) else {
        return;
    };
    let Some(hc) = group.health_check.as_ref().filter(|hc| hc.enabled) else {
        return;
    };
    if hc.port.is_some() || hc.kind_for(group.protocol) == CheckType::Ping {
        return;
    }
    let unported = group
        .targets
        .iter()
        .filter(|t| t.monitor_port.is_none())
        .count();
    if unported > 0 {
        r.issue(
            format!("target_groups[{g}].health_check.port"),
            format!(
                "port is required: {} has ports {}, so there is no one traffic port \
                 to probe ({unported} of {} targets have no monitor_port); set health_check.port \
                 or every target's monitor_port",
                listener_named(l, group),
                l.port,
                group.targets.len()
            ),
        );
    }
}

/// A target's monitor port: in range, and only where a check uses a port.
fn monitor_port(r: &mut Report, path: &str, port: u16, group: &TargetGroup) {
    if port == 0 {
        r.issue(
            path.to_string(),
            out_of_range("monitor_port", "0").unwrap_or_default(),
        );
        return;
    }
    match &group.health_check {
        None => r.issue(
            path.to_string(),
            format!(
                "monitor_port is set but target group `{}` has no health_check",
                group.name
            ),
        ),
        Some(hc) if hc.kind_for(group.protocol) == CheckType::Ping => r.issue(
            path.to_string(),
            format!(
                "monitor_port is not used: target group `{}` checks with ping (ICMP has no port)",
                group.name
            ),
        ),
        Some(_) => {}
    }
}

/// SPEC.md: on_deregistration and on_unhealthy must have the same value.
fn target_failover(r: &mut Report, g: usize, group: &TargetGroup) {
    let tf = group.target_failover;
    if tf.on_deregistration == tf.on_unhealthy {
        return;
    }
    let at = |field: &str| format!("target_groups[{g}].target_failover.{field}");
    let (dereg, unhealthy) = (tf.on_deregistration.as_str(), tf.on_unhealthy.as_str());
    if r.written(&at("on_deregistration")) {
        let default = if r.written(&at("on_unhealthy")) {
            ""
        } else {
            " (the default)"
        };
        r.issue(
            at("on_deregistration"),
            format!(
                "on_deregistration {dereg} differs from on_unhealthy {unhealthy}{default}: \
                 both must have the same value"
            ),
        );
    } else {
        r.issue(
            at("on_unhealthy"),
            format!(
                "on_unhealthy {unhealthy} differs from on_deregistration {dereg} (the default): \
                 both must have the same value; set on_deregistration: {unhealthy} too"
            ),
        );
    }
}

/// SPEC.md: 1-63 characters matching `[a-z]([-a-z0-9]*[a-z0-9])?`.
fn name(r: &mut Report, path: &str, name: &str) {
    let len = name.chars().count();
    if len as u64 > NAME_LEN.max {
        let max = NAME_LEN.max;
        r.issue(
            path.to_string(),
            format!("name `{name}` is {len} characters long; the limit is {max}"),
        );
        return;
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !ok {
        r.issue(
            path.to_string(),
            format!(
                "name `{name}` is invalid: use {NAME_LEN} characters from a-z, 0-9 and '-', \
                 starting with a letter and not ending with '-'"
            ),
        );
    }
}

/// SPEC.md protocol table: tcp -> tcp or http, udp -> udp.
fn protocols_match(listener: ListenerProtocol, group: GroupProtocol) -> bool {
    matches!(
        (listener, group),
        (
            ListenerProtocol::Tcp,
            GroupProtocol::Tcp | GroupProtocol::Http
        ) | (ListenerProtocol::Udp, GroupProtocol::Udp)
    )
}

/// Why `ip` cannot be a vip or a target, if it cannot.
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address)")
        }
        _ => None,
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// `addr` with the bits past the first `len` cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{model::Target, parse::parse};

    /// A bad policy and the one issue it must produce.
    struct Case {
        name: &'static str,
        /// One YAML line per entry, so line numbers can be read off.
        yaml: &'static [&'static str],
        expect_line: usize,
        /// Must occur in `PATH: MESSAGE`.
        expect: &'static str,
    }

    const L_WEB: &str =
        "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }";
    const G_WEB: &str = "  - { name: web, protocol: tcp, targets: [ { ip: 10.0.3.11 } ] }";

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "listener name with an uppercase letter",
                yaml: &[
                    "listeners:",
                    "  - { name: Web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 2,
                expect: "listeners[0].name: name `Web` is invalid: use 1-63 characters from a-z, 0-9 and '-', starting with a letter",
            },
            Case {
                name: "group name starting with a digit",
                yaml: &["target_groups:", "  - name: 1web", "    protocol: tcp"],
                expect_line: 2,
                expect: "target_groups[0].name: name `1web` is invalid",
            },
            Case {
                name: "group name ending with '-'",
                yaml: &["target_groups:", "  - name: web-", "    protocol: tcp"],
                expect_line: 2,
                expect: "target_groups[0].name: name `web-` is invalid",
            },
            Case {
                name: "empty name",
                yaml: &["target_groups:", "  - name: ''", "    protocol: tcp"],
                expect_line: 2,
                expect: "target_groups[0].name: name `` is invalid",
            },
            Case {
                name: "name longer than 63",
                yaml: &[
                    "target_groups:",
                    "  - protocol: tcp",
                    "    name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ],
                expect_line: 3,
                expect: "target_groups[0].name: name `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa` is 64 characters long; the limit is 63",
            },
            Case {
                name: "duplicate listener name",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "  - { name: web, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }",
                    "target_groups:",
                    G_WEB,
                    "  - { name: dns, protocol: udp }",
                ],
                expect_line: 3,
                expect: "listeners[1].name: listener name `web` is already used by listeners[0] (line 2)",
            },
            Case {
                name: "duplicate target group name",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp }",
                    "  - { name: web, protocol: http }",
                ],
                expect_line: 3,
                expect: "target_groups[1].name: target group name `web` is already used by target_groups[0] (line 2)",
            },
            Case {
                name: "udp listener to a tcp group",
                yaml: &[
                    "listeners:",
                    "  - name: dns",
                    "    vip: 10.0.3.49",
                    "    protocol: udp",
                    "    port: 53",
                    "    target_group: web",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 6,
                expect: "listeners[0].target_group: listener `dns` is udp but target group `web` is tcp: a udp listener needs a udp target group",
            },
            Case {
                name: "tcp listener to a udp group",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - { name: web, protocol: udp }",
                ],
                expect_line: 2,
                expect: "listeners[0].target_group: listener `web` is tcp but target group `web` is udp: a tcp listener needs a tcp or http target group",
            },
            Case {
                name: "listener to a group that does not exist",
                yaml: &[
                    "listeners:",
                    "  - name: web",
                    "    vip: 10.0.3.49",
                    "    protocol: tcp",
                    "    port: 80",
                    "    target_group: wbe",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 6,
                expect: "listeners[0].target_group: target group `wbe` does not exist (defined: `web`)",
            },
            Case {
                name: "group attached to two listeners",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "  - name: web-alt",
                    "    vip: 10.0.3.49",
                    "    protocol: tcp",
                    "    port: 8080",
                    "    target_group: web",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 7,
                expect: "listeners[1].target_group: target group `web` is already attached to listener `web` (line 2): with DSR a target group serves at most one listener",
            },
            Case {
                name: "same vip, protocol and port twice",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "  - { name: web2, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web2 }",
                    "target_groups:",
                    G_WEB,
                    "  - { name: web2, protocol: tcp }",
                ],
                expect_line: 3,
                expect: "listeners[1]: listener `web2` has the same vip, protocol and port (10.0.3.49 tcp 80) as listener `web` (line 2)",
            },
            Case {
                name: "a port inside another listener's range",
                yaml: &[
                    "listeners:",
                    "  - { name: rtp, vip: 10.0.3.49, protocol: udp, port: 10000-20000, target_group: rtp }",
                    "  - { name: sip, vip: 10.0.3.49, protocol: udp, port: 15060, target_group: sip }",
                    "target_groups:",
                    "  - { name: rtp, protocol: udp }",
                    "  - { name: sip, protocol: udp }",
                ],
                expect_line: 3,
                expect: "listeners[1]: listener `sip` (10.0.3.49 udp 15060) shares port 15060 with listener `rtp` (line 2): listeners of one vip and protocol must not share a port",
            },
            Case {
                name: "overlapping ranges",
                yaml: &[
                    "listeners:",
                    "  - { name: a, vip: 10.0.3.49, protocol: tcp, port: 1000-2000, target_group: a }",
                    "  - { name: b, vip: 10.0.3.49, protocol: tcp, port: all, target_group: b }",
                    "target_groups:",
                    "  - { name: a, protocol: tcp }",
                    "  - { name: b, protocol: tcp }",
                ],
                expect_line: 3,
                expect: "listeners[1]: listener `b` (10.0.3.49 tcp all) shares ports 1000-2000 with listener `a` (line 2): listeners of one vip and protocol must not share a port",
            },
            Case {
                name: "a target port under a range",
                yaml: &[
                    "listeners:",
                    "  - { name: rtp, vip: 10.0.3.49, protocol: udp, port: 10000-20000, target_group: rtp }",
                    "target_groups:",
                    "  - { name: rtp, protocol: udp, targets: [ { ip: 10.0.3.11, port: 10000 } ] }",
                ],
                expect_line: 4,
                expect: "target_groups[0].targets[0].port: port 10000 is set but listener `rtp` has ports 10000-20000: with DSR a target receives every port of the range; remove it (monitor_port sets where health checks go)",
            },
            Case {
                name: "a range's health check without a port",
                yaml: &[
                    "listeners:",
                    "  - { name: ftp, vip: 10.0.3.49, protocol: tcp, port: 21-30000, target_group: ftp }",
                    "target_groups:",
                    "  - name: ftp",
                    "    protocol: tcp",
                    "    health_check: {}",
                    "    targets: [ { ip: 10.0.3.11, monitor_port: 21 }, { ip: 10.0.3.12 } ]",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.port: port is required: listener `ftp` has ports 21-30000, so there is no one traffic port to probe (1 of 2 targets have no monitor_port); set health_check.port or every target's monitor_port",
            },
            Case {
                name: "a backup on other ports than a range",
                yaml: &[
                    "listeners:",
                    "  - { name: rtp, vip: 10.0.3.49, protocol: udp, port: 10000-20000, target_group: rtp }",
                    "target_groups:",
                    "  - { name: rtp, protocol: udp, backup: spare, failover_ratio: 0.5, targets: [ { ip: 10.0.3.11 } ] }",
                    "  - { name: spare, protocol: udp, targets: [ { ip: 10.0.3.12, port: 10000 } ] }",
                ],
                expect_line: 5,
                expect: "target_groups[1].targets[0].port: port 10000 is set but listener `rtp` (of target group `rtp`, which `spare` backs up) has ports 10000-20000: with DSR a target receives every port of the range",
            },
            Case {
                name: "listener port 0",
                yaml: &[
                    "listeners:",
                    "  - name: web",
                    "    vip: 10.0.3.49",
                    "    protocol: tcp",
                    "    port: 0",
                    "    target_group: web",
                    "target_groups:",
                    "  - { name: web, protocol: tcp }",
                ],
                expect_line: 5,
                expect: "listeners[0].port: port 0 is out of range 1-65535",
            },
            Case {
                name: "unspecified vip",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 0.0.0.0, protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 2,
                expect: "listeners[0].vip: vip 0.0.0.0 is the unspecified address; a vip must be a unicast address",
            },
            Case {
                name: "multicast vip",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 'ff02::1', protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp }",
                ],
                expect_line: 2,
                expect: "listeners[0].vip: vip ff02::1 is a multicast address",
            },
            Case {
                name: "loopback vip",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 127.0.0.1, protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    G_WEB,
                ],
                expect_line: 2,
                expect: "listeners[0].vip: vip 127.0.0.1 is a loopback address",
            },
            Case {
                name: "weight above 256",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "      - ip: 10.0.3.12",
                    "        weight: 300",
                ],
                expect_line: 9,
                expect: "target_groups[0].targets[1].weight: weight 300 is out of range 0-256",
            },
            Case {
                name: "table size not a prime",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    table_size: 65536",
                ],
                expect_line: 4,
                expect: "target_groups[0].table_size: table_size 65536 is not a prime (consistent hashing needs one); 65537 is a good default",
            },
            Case {
                name: "table size below the range",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    table_size: 1019",
                ],
                expect_line: 4,
                expect: "target_groups[0].table_size: table_size 1019 is out of range 1021-1000003; 65537 is a good default",
            },
            Case {
                name: "table size above the range",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    table_size: 1000033",
                ],
                expect_line: 4,
                expect: "table_size 1000033 is out of range 1021-1000003",
            },
            Case {
                name: "same target twice in a group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "      - ip: 10.0.3.12",
                    "      - ip: 10.0.3.11",
                ],
                expect_line: 7,
                expect: "target_groups[0].targets[2].ip: duplicate target 10.0.3.11 in target group `web` (first at targets[0], line 5)",
            },
            Case {
                name: "IPv4 target behind an IPv6 vip",
                yaml: &[
                    "listeners:",
                    "  - { name: web6, vip: 'fd00:3::49', protocol: tcp, port: 80, target_group: web6 }",
                    "target_groups:",
                    "  - name: web6",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: fd00:3::11",
                    "      - ip: 10.0.3.12",
                ],
                expect_line: 8,
                expect: "target_groups[0].targets[1].ip: target 10.0.3.12 is IPv4 but listener `web6` has the IPv6 vip fd00:3::49: a target must have its vip's address family",
            },
            Case {
                name: "target port other than the listener port",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - { ip: 10.0.3.11, port: 8080 }",
                ],
                expect_line: 7,
                expect: "target_groups[0].targets[0].port: port 8080 differs from listener `web` port 80: with DSR the target port is the listener port",
            },
            Case {
                name: "target port 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - { ip: 10.0.3.11, port: 0 }",
                ],
                expect_line: 5,
                expect: "target_groups[0].targets[0].port: port 0 is out of range 1-65535",
            },
            Case {
                name: "mac with five octets",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        mac: '02:00:00:00:13'",
                ],
                expect_line: 6,
                expect: "target_groups[0].targets[0].mac: mac `02:00:00:00:13` is not a MAC address: expected 6 hex octets separated by ':' (like 02:00:00:00:00:13)",
            },
            Case {
                name: "multicast mac",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        mac: '01:00:5e:00:00:01'",
                ],
                expect_line: 6,
                expect: "target_groups[0].targets[0].mac: mac 01:00:5e:00:00:01 is a multicast address; a target needs a unicast MAC",
            },
            Case {
                name: "all-zero mac",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        mac: 00:00:00:00:00:00",
                ],
                expect_line: 6,
                expect: "target_groups[0].targets[0].mac: mac 00:00:00:00:00:00 is all zeros; a target needs a unicast MAC",
            },
            Case {
                name: "loopback target",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets: [ { ip: 127.0.0.2 } ]",
                ],
                expect_line: 4,
                expect: "target_groups[0].targets[0].ip: target 127.0.0.2 is a loopback address; a target must be a unicast host address",
            },
            Case {
                name: "multicast target",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 224.0.0.1",
                ],
                expect_line: 5,
                expect: "target_groups[0].targets[0].ip: target 224.0.0.1 is a multicast address",
            },
            Case {
                name: "unspecified target",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: '::'",
                ],
                expect_line: 5,
                expect: "target_groups[0].targets[0].ip: target :: is the unspecified address",
            },
            Case {
                name: "target that is a vip",
                yaml: &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.49",
                ],
                expect_line: 7,
                expect: "target_groups[0].targets[0].ip: target 10.0.3.49 is the vip of listener `web`; a target cannot be a vip",
            },
            Case {
                name: "bad interface name",
                yaml: &["interface: eth0/1"],
                expect_line: 1,
                expect: "interface: interface name `eth0/1` is invalid: use 1-15 characters without '/', ':' or whitespace",
            },
            Case {
                name: "http check on a tcp group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: http",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.type: health check type http is not allowed for a tcp target group: use tcp, ping",
            },
            Case {
                name: "https check on a tcp group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: https",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.type: health check type https is not allowed for a tcp target group: use tcp, ping",
            },
            Case {
                name: "tcp check on a http group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      type: tcp",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.type: health check type tcp is not allowed for a http target group: use http, https, ping",
            },
            Case {
                name: "ping check on a udp group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: udp",
                    "    health_check:",
                    "      type: ping",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.type: health check type ping is not allowed for a udp target group: use tcp, http, https",
            },
            Case {
                name: "interval_s 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      interval_s: 0",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.interval_s: interval_s 0 is out of range 1-3600",
            },
            Case {
                name: "interval_s 3601",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      interval_s: 3601",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.interval_s: interval_s 3601 is out of range 1-3600",
            },
            Case {
                name: "timeout_s 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      timeout_s: 0",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.timeout_s: timeout_s 0 is out of range 1-900",
            },
            Case {
                name: "timeout_s 901",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      timeout_s: 901",
                    "      interval_s: 3600",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.timeout_s: timeout_s 901 is out of range 1-900",
            },
            Case {
                name: "healthy_threshold 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      healthy_threshold: 0",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.healthy_threshold: healthy_threshold 0 is out of range 1-10",
            },
            Case {
                name: "healthy_threshold 11",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      healthy_threshold: 11",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.healthy_threshold: healthy_threshold 11 is out of range 1-10",
            },
            Case {
                name: "unhealthy_threshold 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      unhealthy_threshold: 0",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.unhealthy_threshold: unhealthy_threshold 0 is out of range 1-10",
            },
            Case {
                name: "unhealthy_threshold 11",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      unhealthy_threshold: 11",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.unhealthy_threshold: unhealthy_threshold 11 is out of range 1-10",
            },
            Case {
                name: "health check port 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      port: 0",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.port: port 0 is out of range 1-65535",
            },
            Case {
                name: "timeout equal to interval",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      interval_s: 5",
                    "      timeout_s: 5",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.timeout_s: timeout_s 5 must be less than interval_s 5",
            },
            Case {
                name: "timeout above the default interval",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      timeout_s: 30",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.timeout_s: timeout_s 30 must be less than interval_s 30 (the default)",
            },
            Case {
                name: "interval below the default timeout",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      interval_s: 2",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.interval_s: interval_s 2 must be greater than timeout_s 5 (the default): set timeout_s too",
            },
            Case {
                name: "method on a tcp check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: tcp",
                    "      method: GET",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.method: method is only for http and https checks; this check is tcp",
            },
            Case {
                name: "version on a tcp check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: tcp",
                    "      version: '1.1'",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.version: version is only for http and https checks; this check is tcp",
            },
            Case {
                name: "path on a tcp check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: tcp",
                    "      path: /health",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.path: path is only for http and https checks; this check is tcp",
            },
            Case {
                name: "status_codes on a tcp check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: tcp",
                    "      status_codes: '200'",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.status_codes: status_codes is only for http and https checks; this check is tcp",
            },
            Case {
                name: "method on a ping check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      type: ping",
                    "      method: HEAD",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.method: method is only for http and https checks; this check is ping",
            },
            Case {
                name: "path on a default (tcp) check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: udp",
                    "    health_check:",
                    "      path: /health",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.path: path is only for http and https checks; this check is tcp (the default for a udp group)",
            },
            Case {
                name: "port on a ping check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: ping",
                    "      port: 8080",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.port: port is not used by ping checks (ICMP has no port)",
            },
            Case {
                name: "path without a leading slash",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      path: health",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.path: path `health` is invalid: it must start with '/'",
            },
            Case {
                name: "path with a space",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      path: /my health",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.path: path `/my health` is invalid: it must not contain spaces (write %20)",
            },
            Case {
                name: "path with a fragment",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      path: '/health#top'",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.path: path `/health#top` is invalid: a fragment ('#') is never sent to a server",
            },
            Case {
                name: "path with a non-ascii character",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      path: /santé",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.path: path `/santé` is invalid: use printable ASCII only (percent-encode the rest)",
            },
            Case {
                name: "status code out of range",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      status_codes: 600",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.status_codes: status code 600 is out of range 100-599",
            },
            Case {
                name: "status code not a number",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      status_codes: 2xx",
                ],
                expect_line: 5,
                expect: "target_groups[0].health_check.status_codes: status code `2xx` is not a number",
            },
            Case {
                name: "reversed status code range",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      type: https",
                    "      status_codes: 399-200",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.status_codes: status code range 399-200 is reversed: write 200-399",
            },
            Case {
                name: "empty status code entry",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: udp",
                    "    health_check:",
                    "      type: http",
                    "      status_codes: '200,,201'",
                ],
                expect_line: 6,
                expect: "target_groups[0].health_check.status_codes: status_codes `200,,201` has an empty entry",
            },
            Case {
                name: "monitor_port 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        monitor_port: 0",
                ],
                expect_line: 8,
                expect: "target_groups[0].targets[0].monitor_port: monitor_port 0 is out of range 1-65535",
            },
            Case {
                name: "monitor_port without a health check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        monitor_port: 8080",
                ],
                expect_line: 6,
                expect: "target_groups[0].targets[0].monitor_port: monitor_port is set but target group `web` has no health_check",
            },
            Case {
                name: "monitor_port with a ping check",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check:",
                    "      type: ping",
                    "    targets:",
                    "      - ip: 10.0.3.11",
                    "        monitor_port: 8080",
                ],
                expect_line: 8,
                expect: "target_groups[0].targets[0].monitor_port: monitor_port is not used: target group `web` checks with ping (ICMP has no port)",
            },
            Case {
                name: "failover modes differ",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    target_failover:",
                    "      on_unhealthy: rebalance",
                    "      on_deregistration: no_rebalance",
                ],
                expect_line: 6,
                expect: "target_groups[0].target_failover.on_deregistration: on_deregistration no_rebalance differs from on_unhealthy rebalance: both must have the same value",
            },
            Case {
                name: "only on_unhealthy set",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    target_failover:",
                    "      on_unhealthy: rebalance",
                ],
                expect_line: 5,
                expect: "target_groups[0].target_failover.on_unhealthy: on_unhealthy rebalance differs from on_deregistration no_rebalance (the default): both must have the same value; set on_deregistration: rebalance too",
            },
            Case {
                name: "deregistration delay out of range",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    deregistration_delay_s: 3601",
                ],
                expect_line: 4,
                expect: "target_groups[0].deregistration_delay_s: deregistration_delay_s 3601 is out of range 0-3600",
            },
            Case {
                name: "backup without failover_ratio",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare }",
                    "  - { name: spare, protocol: tcp }",
                ],
                expect_line: 2,
                expect: "target_groups[0].backup: a backup needs failover_ratio (0.0-1.0)",
            },
            Case {
                name: "failover_ratio without backup",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    failover_ratio: 0.5",
                ],
                expect_line: 4,
                expect: "target_groups[0].failover_ratio: failover_ratio needs a backup",
            },
            Case {
                name: "failover_ratio out of range",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 1.5 }",
                    "  - { name: spare, protocol: tcp }",
                ],
                expect_line: 2,
                expect: "target_groups[0].failover_ratio: failover_ratio 1.5 is out of range 0.0-1.0",
            },
            Case {
                name: "backup that does not exist",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    backup: spare",
                    "    failover_ratio: 0.5",
                ],
                expect_line: 4,
                expect: "target_groups[0].backup: target group `spare` does not exist (defined: `web`)",
            },
            Case {
                name: "a group its own backup",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: web, failover_ratio: 0.0 }",
                ],
                expect_line: 2,
                expect: "target group `web` cannot be its own backup",
            },
            Case {
                name: "backup of another transport",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: dns, failover_ratio: 0.0 }",
                    "  - { name: dns, protocol: udp }",
                ],
                expect_line: 2,
                expect: "backup `dns` is udp but target group `web` is tcp: a backup must carry the same transport",
            },
            Case {
                name: "backup on another port",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "  - { name: alt, vip: 10.0.3.49, protocol: tcp, port: 8080, target_group: spare }",
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    backup: spare",
                    "    failover_ratio: 0.5",
                    "  - { name: spare, protocol: tcp }",
                ],
                expect_line: 7,
                expect: "backup `spare` serves listener `alt`, on port 8080, but listener `web` of target group `web` is on port 80",
            },
            Case {
                name: "a backup's second target on another port",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - name: spare",
                    "    protocol: tcp",
                    "    targets: [ { ip: 10.0.3.11, port: 80 }, { ip: 10.0.3.12, port: 81 } ]",
                ],
                expect_line: 7,
                expect: "target_groups[1].targets[1].port: port 81 differs from listener `web` (of target group `web`, which `spare` backs up) port 80",
            },
            Case {
                name: "a backup's target of the other family",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: spare, protocol: tcp, targets: [ { ip: \"fd00:3::21\" } ] }",
                ],
                expect_line: 5,
                expect: "target_groups[1].targets[0].ip: target fd00:3::21 is IPv6 but listener `web` (of target group `web`, which `spare` backs up) has the IPv4 vip 10.0.3.49",
            },
            Case {
                name: "an IPv6 link-local target",
                yaml: &[
                    "listeners:",
                    "  - { name: web6, vip: \"fd00:3::49\", protocol: tcp, port: 80, target_group: web6 }",
                    "target_groups:",
                    "  - { name: web6, protocol: tcp, health_check: { type: tcp }, targets: [ { ip: \"fe80::11\" } ] }",
                ],
                expect_line: 4,
                expect: "target_groups[0].targets[0].ip: target fe80::11 is an IPv6 link-local address",
            },
            Case {
                name: "one backup for two ports",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "  - { name: tls, vip: 10.0.3.49, protocol: tcp, port: 443, target_group: tls }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: tls, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: spare, protocol: tcp, health_check: { type: tcp }, targets: [ { ip: 10.0.3.21 } ] }",
                ],
                expect_line: 6,
                expect: "target_groups[1].backup: backup `spare` backs up target group `web` of listener `web`, on port 80, but listener `tls` of target group `tls` is on port 443: its health check names no port",
            },
            Case {
                name: "one backup for two families",
                yaml: &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "  - { name: web6, vip: \"fd00:3::49\", protocol: tcp, port: 80, target_group: web6 }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: web6, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: spare, protocol: tcp, targets: [ { ip: 10.0.3.21 } ] }",
                ],
                expect_line: 6,
                expect: "target_groups[1].backup: backup `spare` backs up target group `web` of listener `web`, whose vip 10.0.3.49 is IPv4, but listener `web6` of target group `web6` has the IPv6 vip fd00:3::49",
            },
            Case {
                name: "a backup's check on a port range without a port",
                yaml: &[
                    "listeners:",
                    "  - { name: rtp, vip: 10.0.3.49, protocol: udp, port: 10000-20000, target_group: rtp }",
                    "target_groups:",
                    "  - { name: rtp, protocol: udp, backup: spare, failover_ratio: 0.5, targets: [] }",
                    "  - { name: spare, protocol: udp, health_check: { type: tcp }, targets: [ { ip: 10.0.3.21 } ] }",
                ],
                expect_line: 5,
                expect: "target_groups[1].health_check.port: port is required: listener `rtp` (of target group `rtp`, which `spare` backs up) has ports 10000-20000",
            },
            Case {
                name: "affinity with round_robin",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    algorithm: round_robin",
                    "    affinity: two_tuple",
                ],
                expect_line: 5,
                expect: "target_groups[0].affinity: affinity is only for algorithm hash; round_robin does not hash: remove affinity or use algorithm hash",
            },
            Case {
                name: "affinity with source_ip",
                yaml: &[
                    "target_groups:",
                    "  - { name: web, protocol: tcp, algorithm: source_ip, affinity: five_tuple }",
                ],
                expect_line: 2,
                expect: "affinity is only for algorithm hash; source_ip hashes the client IP alone",
            },
            Case {
                name: "sticky session on an http group",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    sticky_session:",
                    "      duration_s: 60",
                ],
                expect_line: 5,
                expect: "target_groups[0].sticky_session: sticky_session is only for tcp and udp target groups (tcp listener to tcp group, udp to udp); this group is http",
            },
            Case {
                name: "sticky duration 0",
                yaml: &[
                    "target_groups:",
                    "  - name: dns",
                    "    protocol: udp",
                    "    sticky_session: { enabled: true, type: source_ip, duration_s: 0 }",
                ],
                expect_line: 4,
                expect: "target_groups[0].sticky_session.duration_s: duration_s 0 is out of range 1-604800",
            },
            Case {
                name: "sticky duration above a week",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    sticky_session:",
                    "      duration_s: 604801",
                ],
                expect_line: 5,
                expect: "duration_s 604801 is out of range 1-604800",
            },
            Case {
                name: "only on_deregistration set",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    target_failover:",
                    "      on_deregistration: rebalance",
                ],
                expect_line: 5,
                expect: "target_groups[0].target_failover.on_deregistration: on_deregistration rebalance differs from on_unhealthy no_rebalance (the default): both must have the same value",
            },
            Case {
                name: "flow idle timeout 0",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    flow_idle_timeout_s: 0",
                ],
                expect_line: 4,
                expect: "target_groups[0].flow_idle_timeout_s: flow_idle_timeout_s 0 is out of range 1-86400",
            },
            Case {
                name: "flow fin timeout too long",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    flow_fin_timeout_s: 3601",
                ],
                expect_line: 4,
                expect: "target_groups[0].flow_fin_timeout_s: flow_fin_timeout_s 3601 is out of range 1-3600",
            },
            Case {
                name: "flow fin timeout on a udp group",
                yaml: &[
                    "target_groups:",
                    "  - name: dns",
                    "    protocol: udp",
                    "    flow_fin_timeout_s: 5",
                ],
                expect_line: 4,
                expect: "target_groups[0].flow_fin_timeout_s: flow_fin_timeout_s applies to TCP flows only",
            },
            Case {
                name: "flow timeout not a number",
                yaml: &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    flow_idle_timeout_s: forever",
                ],
                expect_line: 4,
                expect: "flow_idle_timeout_s must be an integer 1-86400",
            },
            Case {
                name: "max flows too small",
                yaml: &["flow_table:", "  max_flows: 100"],
                expect_line: 2,
                expect: "flow_table.max_flows: max_flows 100 is out of range 1024-33554432",
            },
            Case {
                name: "max flows too big for u32",
                yaml: &["flow_table:", "  max_flows: 5000000000"],
                expect_line: 2,
                expect: "max_flows 5000000000 is out of range 1024-33554432",
            },
            Case {
                name: "flow table unknown field",
                yaml: &["flow_table:", "  max_flow: 100000"],
                expect_line: 2,
                expect: "unknown field `max_flow`",
            },
        ]
    }

    fn text(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn each_rule_reports_its_message_and_line() {
        let mut failures = Vec::new();
        for case in cases() {
            let yaml = text(case.yaml);
            match parse("t.yaml", &yaml) {
                Ok(_) => failures.push(format!("{}: accepted", case.name)),
                Err(err) => {
                    let one = err.issues.len() == 1;
                    let issue = &err.issues[0];
                    let said = format!("{}: {}", issue.path, issue.message);
                    if !one || issue.line != case.expect_line || !said.contains(case.expect) {
                        failures.push(format!(
                            "{}: expected one issue at line {} containing\n    {}\n  got\n    {}",
                            case.name,
                            case.expect_line,
                            case.expect,
                            err.to_string().replace('\n', "\n    ")
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn all_issues_are_reported_in_file_order() {
        let yaml = text(&[
            "listeners:",
            "  - { name: Web, vip: 10.0.3.49, protocol: udp, port: 0, target_group: web }",
            "target_groups:",
            "  - name: web",
            "    protocol: tcp",
            "    table_size: 100",
            "    targets:",
            "      - { ip: 10.0.3.11, weight: 257 }",
            "      - { ip: 10.0.3.11, mac: 'ff:ff:ff:ff:ff:ff' }",
        ]);
        let err = parse("t.yaml", &yaml).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            [
                "t.yaml:2:13: listeners[0].name: name `Web` is invalid: use 1-63 characters from a-z, 0-9 and '-', starting with a letter and not ending with '-'",
                "t.yaml:2:55: listeners[0].port: port 0 is out of range 1-65535",
                "t.yaml:2:72: listeners[0].target_group: listener `Web` is udp but target group `web` is tcp: a udp listener needs a udp target group",
                "t.yaml:6:17: target_groups[0].table_size: table_size 100 is out of range 1021-1000003; 65537 is a good default",
                "t.yaml:8:34: target_groups[0].targets[0].weight: weight 257 is out of range 0-256",
                "t.yaml:9:15: target_groups[0].targets[1].ip: duplicate target 10.0.3.11 in target group `web` (first at targets[0], line 8)",
                "t.yaml:9:31: target_groups[0].targets[1].mac: mac ff:ff:ff:ff:ff:ff is a multicast address; a target needs a unicast MAC",
            ]
        );
    }

    #[test]
    fn valid_policies() {
        let valid: &[(&str, &[&str])] = &[
            ("empty", &[""]),
            (
                "tcp listener to an http group",
                &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - { name: web, protocol: http }",
                ],
            ),
            (
                "udp listener to a udp group",
                &[
                    "listeners:",
                    "  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }",
                    "target_groups:",
                    "  - { name: dns, protocol: udp, targets: [ { ip: 10.0.3.11, port: 53 } ] }",
                ],
            ),
            (
                "port ranges and all ports beside single ports, health checks on a set port",
                &[
                    "listeners:",
                    "  - { name: rtp, vip: 10.0.3.49, protocol: udp, port: 10000-20000, target_group: rtp }",
                    "  - { name: sip, vip: 10.0.3.49, protocol: udp, port: 5060, target_group: sip }",
                    "  - { name: any, vip: 10.0.3.49, protocol: tcp, port: all, target_group: any }",
                    "  - { name: ftp, vip: 10.0.3.50, protocol: tcp, port: \"21-21\", target_group: ftp }",
                    "target_groups:",
                    "  - { name: rtp, protocol: udp, health_check: { port: 5060 }, targets: [ { ip: 10.0.3.11 } ] }",
                    "  - { name: sip, protocol: udp, targets: [ { ip: 10.0.3.11, port: 5060 } ] }",
                    "  - { name: any, protocol: tcp, health_check: {}, targets: [ { ip: 10.0.3.12, monitor_port: 22 } ] }",
                    "  - { name: ftp, protocol: tcp, health_check: {}, targets: [ { ip: 10.0.3.12, port: 21 } ] }",
                ],
            ),
            (
                "group attached to no listener (unused)",
                &["target_groups:", G_WEB],
            ),
            (
                "group without targets",
                &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - { name: web, protocol: tcp, targets: [] }",
                ],
            ),
            (
                "weights 0 and 256, table size at both ends",
                &[
                    "target_groups:",
                    "  - { name: a, protocol: tcp, table_size: 1021, targets: [ { ip: 10.0.3.11, weight: 0 } ] }",
                    "  - { name: b, protocol: tcp, table_size: 1000003, targets: [ { ip: 10.0.3.11, weight: 256 } ] }",
                ],
            ),
            (
                "same target in two groups, one vip for tcp and udp",
                &[
                    "listeners:",
                    L_WEB,
                    "  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 80, target_group: dns }",
                    "target_groups:",
                    G_WEB,
                    "  - { name: dns, protocol: udp, targets: [ { ip: 10.0.3.11 } ] }",
                ],
            ),
            (
                "algorithms, sticky sessions on tcp and udp, ignored with source_ip",
                &[
                    "listeners:",
                    L_WEB,
                    "  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, algorithm: round_robin, sticky_session: { duration_s: 1 } }",
                    "  - { name: dns, protocol: udp, algorithm: least_connections, sticky_session: { enabled: true, type: source_ip, duration_s: 604800 } }",
                    "  - { name: src, protocol: tcp, algorithm: source_ip, sticky_session: {} }",
                    "  - { name: off, protocol: http, algorithm: hash, affinity: two_tuple }",
                ],
            ),
            (
                "unicast mac, target port equal to the listener's",
                &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - { name: web, protocol: tcp, targets: [ { ip: 10.0.3.11, port: 80, mac: '02:00:00:00:00:13' } ] }",
                ],
            ),
            (
                "names at the limits",
                &[
                    "target_groups:",
                    "  - { name: a, protocol: tcp }",
                    "  - { name: a-0, protocol: tcp }",
                    "  - { name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, protocol: tcp }",
                ],
            ),
            (
                "every health check field, on an http group",
                &[
                    "listeners:",
                    L_WEB,
                    "target_groups:",
                    "  - name: web",
                    "    protocol: http",
                    "    health_check:",
                    "      enabled: true",
                    "      type: https",
                    "      port: 8443",
                    "      interval_s: 3600",
                    "      timeout_s: 900",
                    "      healthy_threshold: 10",
                    "      unhealthy_threshold: 1",
                    "      method: CONNECT",
                    "      version: '1.0'",
                    "      path: /health?full=1",
                    "      status_codes: 200,301-302",
                    "    target_failover:",
                    "      on_unhealthy: rebalance",
                    "      on_deregistration: rebalance",
                    "    targets:",
                    "      - { ip: 10.0.3.11, monitor_port: 9443 }",
                ],
            ),
            (
                "an empty health_check section: every default",
                &[
                    "target_groups:",
                    "  - { name: web, protocol: http, health_check: {} }",
                    "  - { name: tcp, protocol: tcp, health_check: {} }",
                    "  - { name: udp, protocol: udp, health_check: {} }",
                ],
            ),
            (
                "unquoted version and status code, http check on a udp group",
                &[
                    "target_groups:",
                    "  - name: dns",
                    "    protocol: udp",
                    "    health_check: { type: http, version: 1.0, status_codes: 204, port: 8080 }",
                    "    targets: [ { ip: 10.0.3.11, monitor_port: 8081 } ]",
                ],
            ),
            (
                "ping on tcp and http groups, no port",
                &[
                    "target_groups:",
                    "  - { name: a, protocol: tcp, health_check: { type: ping } }",
                    "  - { name: b, protocol: http, health_check: { type: ping, interval_s: 2, timeout_s: 1 } }",
                ],
            ),
            (
                "an IPv6 link-local target of a group with no check",
                &[
                    "listeners:",
                    "  - { name: web6, vip: \"fd00:3::49\", protocol: tcp, port: 80, target_group: web6 }",
                    "target_groups:",
                    "  - { name: web6, protocol: tcp, targets: [ { ip: \"fe80::11\" } ] }",
                ],
            ),
            (
                "a backup with no listener for two ports, its check's port named",
                &[
                    "listeners:",
                    "  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }",
                    "  - { name: tls, vip: 10.0.3.49, protocol: tcp, port: 443, target_group: tls }",
                    "target_groups:",
                    "  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5 }",
                    "  - { name: tls, protocol: tcp, backup: spare, failover_ratio: 0.5 }",
                    "  - { name: spare, protocol: tcp, health_check: { port: 9000 }, targets: [ { ip: 10.0.3.21 } ] }",
                ],
            ),
            (
                "disabled check keeps its settings and monitor ports",
                &[
                    "target_groups:",
                    "  - name: web",
                    "    protocol: tcp",
                    "    health_check: { enabled: false, port: 8080, interval_s: 2, timeout_s: 1 }",
                    "    targets: [ { ip: 10.0.3.11, monitor_port: 8081 } ]",
                ],
            ),
        ];
        for (name, lines) in valid {
            if let Err(e) = parse("t.yaml", &text(lines)) {
                panic!("{name}: rejected:\n{e}");
            }
        }
    }

    /// A value brought in by an alias is written (at its anchor), not a
    /// default: the rules that ask "was this written?" see it.
    #[test]
    fn values_written_through_an_alias_are_written() {
        let yaml = text(&[
            "target_groups:",
            "  - { name: w, protocol: tcp, affinity: &aff two_tuple }",
            "  - { name: x, protocol: tcp, algorithm: round_robin, affinity: *aff }",
            "  - name: a",
            "    protocol: tcp",
            "    health_check: &check { interval_s: 5, timeout_s: 5 }",
            "    target_failover: &failover { on_deregistration: rebalance, on_unhealthy: no_rebalance }",
            "  - name: b",
            "    protocol: tcp",
            "    health_check: *check",
            "    target_failover: *failover",
        ]);
        let err = parse("t.yaml", &yaml).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            [
                "t.yaml:3:65: target_groups[1].affinity: affinity is only for algorithm hash; round_robin does not hash: remove affinity or use algorithm hash",
                "t.yaml:6:54: target_groups[2].health_check.timeout_s: timeout_s 5 must be less than interval_s 5",
                "t.yaml:6:54: target_groups[3].health_check.timeout_s: timeout_s 5 must be less than interval_s 5",
                "t.yaml:7:53: target_groups[2].target_failover.on_deregistration: on_deregistration rebalance differs from on_unhealthy no_rebalance: both must have the same value",
                "t.yaml:7:53: target_groups[3].target_failover.on_deregistration: on_deregistration rebalance differs from on_unhealthy no_rebalance: both must have the same value",
            ]
        );
    }

    #[test]
    fn a_sticky_session_source_ip_ignores_is_a_notice() {
        let yaml = text(&[
            "target_groups:",
            "  - { name: off, protocol: tcp, algorithm: source_ip, sticky_session: { enabled: false } }",
            "  - { name: rr, protocol: tcp, algorithm: round_robin, sticky_session: {} }",
            "  - name: src",
            "    protocol: tcp",
            "    algorithm: source_ip",
            "    sticky_session:",
            "      duration_s: 60",
            "  - { name: udp, protocol: udp, algorithm: source_ip, sticky_session: {} }",
        ]);
        let policy = parse("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
        let said: Vec<String> = notices("t.yaml", &yaml, &policy)
            .iter()
            .map(Issue::to_string)
            .collect();
        assert_eq!(
            said,
            [
                "t.yaml:8:7: target_groups[2].sticky_session: ignored: algorithm source_ip already keeps each client on one target",
                "t.yaml:9:71: target_groups[3].sticky_session: ignored: algorithm source_ip already keeps each client on one target",
            ]
        );
        let lab = include_str!("../../../examples/lab.yaml");
        let policy = parse("lab.yaml", lab).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(notices("lab.yaml", lab, &policy), []);
    }

    #[test]
    fn lab_example_parses_and_validates() {
        let path =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab.yaml"));
        let policy = crate::policy::parse::load(path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(path).unwrap();
        let host = HostFacts {
            iface_nets: vec![
                ("10.0.3.1".parse().unwrap(), 24),
                ("fd00:3::1".parse().unwrap(), 64),
            ],
        };
        validate_for_host("lab.yaml", &text, &policy, &host).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.interface.as_deref(), Some("eth0"));
        let summary: Vec<(&str, &str, usize)> = policy
            .listeners
            .iter()
            .map(|l| {
                let g = policy
                    .target_groups
                    .iter()
                    .find(|g| g.name == l.target_group)
                    .unwrap();
                (l.name.as_str(), g.name.as_str(), g.targets.len())
            })
            .collect();
        assert_eq!(
            summary,
            [("web", "web", 3), ("dns", "dns", 3), ("web6", "web6", 3)]
        );
        let weights: Vec<u16> = policy.target_groups[2]
            .targets
            .iter()
            .map(|t| t.weight)
            .collect();
        assert_eq!(weights, [256, 256, 128]);
        // The lab demo's health check: tcp every 2 s, 2 to turn either way.
        let hc = policy.target_groups[0].health_check.as_ref().unwrap();
        assert_eq!(
            (
                hc.kind,
                hc.interval_s,
                hc.timeout_s,
                hc.healthy_threshold,
                hc.unhealthy_threshold
            ),
            (Some(crate::policy::CheckType::Tcp), 2, 1, 2, 2)
        );
    }

    #[test]
    fn targets_must_be_directly_connected() {
        let yaml = text(&[
            "interface: eth0",
            "target_groups:",
            "  - name: web",
            "    protocol: tcp",
            "    targets:",
            "      - ip: 10.0.3.11",
            "      - ip: 10.9.9.9",
            "      - ip: fd00:4::11",
        ]);
        let policy = parse("t.yaml", &yaml).unwrap();
        let host = HostFacts {
            iface_nets: vec![
                ("10.0.3.1".parse().unwrap(), 24),
                ("fd00:3::1".parse().unwrap(), 64),
            ],
        };
        let err = validate_for_host("t.yaml", &yaml, &policy, &host).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:7:13: target_groups[0].targets[1].ip: target 10.9.9.9 is not on a subnet directly connected to eth0 (10.0.3.0/24, fd00:3::/64): DSR rewrites only the MAC, so targets must share the L2 segment\n\
             t.yaml:8:13: target_groups[0].targets[2].ip: target fd00:4::11 is not on a subnet directly connected to eth0 (10.0.3.0/24, fd00:3::/64): DSR rewrites only the MAC, so targets must share the L2 segment"
        );
        // No facts: nothing to check.
        validate_for_host("t.yaml", &yaml, &policy, &HostFacts::default()).unwrap();
        // A /0 holds everything of its family; a /32 only itself.
        let host = HostFacts {
            iface_nets: vec![
                ("0.0.0.0".parse().unwrap(), 0),
                ("fd00:4::11".parse().unwrap(), 128),
            ],
        };
        validate_for_host("t.yaml", &yaml, &policy, &host).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn more_targets_than_table_slots() {
        let mut lines = vec![
            "target_groups:".to_string(),
            "  - name: web".into(),
            "    protocol: tcp".into(),
            "    table_size: 1021".into(),
            "    targets:".into(),
        ];
        for i in 0..1022u32 {
            lines.push(format!("      - ip: 10.1.{}.{}", i / 250, 1 + i % 250));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let err = parse("t.yaml", &text(&refs)).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].line, 6);
        assert_eq!(
            err.issues[0].message,
            "1022 targets do not fit a table_size of 1021: every target needs a slot"
        );
    }

    fn capacity_target(i: u32) -> Target {
        Target {
            ip: IpAddr::V4((0x0a00_0000 + i).into()),
            weight: 1,
            port: None,
            monitor_port: None,
            mac: None,
        }
    }

    fn capacity_group(n: u32, targets: u32) -> TargetGroup {
        TargetGroup {
            name: format!("g{n}"),
            protocol: GroupProtocol::Tcp,
            algorithm: Default::default(),
            affinity: Default::default(),
            table_size: TABLE_SIZE.max as u32,
            health_check: None,
            target_failover: Default::default(),
            flow_idle_timeout_s: None,
            flow_fin_timeout_s: None,
            sticky_session: None,
            deregistration_delay_s: None,
            backup: None,
            failover_ratio: None,
            targets: (0..targets)
                .map(|i| capacity_target(1 + n * 20_000 + i))
                .collect(),
        }
    }

    /// `n` listeners, each to a group of its own without targets.
    fn listeners_and_groups(n: u32) -> Policy {
        Policy {
            interface: None,
            listeners: (0..n)
                .map(|n| Listener {
                    name: format!("l{n}"),
                    vip: IpAddr::V4((0x0a01_0000 + n).into()),
                    protocol: ListenerProtocol::Tcp,
                    port: crate::policy::Ports::one(80),
                    target_group: format!("g{n}"),
                })
                .collect(),
            target_groups: (0..n).map(|n| capacity_group(n, 0)).collect(),
            flow_table: None,
        }
    }

    fn messages(policy: &Policy) -> Vec<String> {
        let issues = validate("t.yaml", policy, &Positions::default());
        issues.into_iter().map(|i| i.message).collect()
    }

    #[test]
    fn capacity_limits() {
        let policy = Policy {
            interface: None,
            listeners: Vec::new(),
            target_groups: (0..(TARGET_LIMIT + 1) / 16_384)
                .map(|n| capacity_group(n, 16_384))
                .collect(),
            flow_table: None,
        };
        let issues = validate("t.yaml", &policy, &Positions::default());
        assert_eq!(issues.len(), 1);
        assert_eq!(
            issues[0].message,
            "131072 targets in all exceed the limit of 131071"
        );
        assert_eq!(issues[0].path, "target_groups");

        assert_eq!(
            messages(&listeners_and_groups(LISTENER_LIMIT + 1)),
            [
                "4096 listeners exceed the limit of 4095",
                "4096 target_groups exceed the limit of 4095"
            ]
        );
    }

    /// What `lb check` accepts, `lb run` numbers: the largest policy gets
    /// its ids.
    #[test]
    fn the_largest_valid_policy_gets_ids() {
        let policy = listeners_and_groups(LISTENER_LIMIT.max(GROUP_LIMIT));
        assert_eq!(messages(&policy), Vec::<String>::new());
        let ids = crate::ids::Ids::default().assign(&policy, std::time::Instant::now());
        assert!(ids.is_ok(), "{ids:?}");
    }

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(
            [TABLE_SIZE.min, DEFAULT_TABLE_SIZE.into(), TABLE_SIZE.max]
                .iter()
                .all(|&n| is_prime(n as u32))
        );
        assert!(!is_prime(65536) && !is_prime(1_000_001));
    }
}
