//! `lb target-setup`, run on a DSR target: what a DSR target host
//! needs (README, "Setting up the targets"), as items that can be printed as commands, checked and
//! applied. The items and their states are pure ([`items`], [`Item::state`]);
//! `observe` reads the host, `apply` changes it, `persist` writes the files
//! that redo it at boot.
//!
//! The items, for VIPs V (IPv4 and IPv6) and UDP ports P (each one port or
//! a range):
//!
//! - `lo` up, and each V on it as a /32 or /128 (the target accepts V's
//!   packets as its own), on no other interface (the host must not claim V
//!   on the network: clients would send to it past `lb`);
//! - with an IPv4 VIP, `net.ipv4.conf.all.arp_ignore=1` (do not answer ARP
//!   for V, which is not on the asking interface) and `arp_announce=2` (do
//!   not name V as the source of our own ARP requests); IPv6 needs neither;
//! - a UDP server must answer from V, one of three ways (`--udp`): bound to
//!   V (`bind`: checked, not set), DNAT of V's datagrams to the target's own
//!   address that conntrack undoes on replies (`iptables`), or a stateless
//!   rewrite of the replies' source from the target's address to V
//!   (`nftables`, in table `inet lb_dsr`).
//!
//! Applying adds what is missing and never removes anything but a VIP on
//! `lo` with another prefix length.
mod apply;
mod observe;
mod persist;

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::policy::Ports;

pub use apply::apply;
pub use observe::observe;
pub use persist::{Persisted, persist};

/// How a target's UDP service answers from the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UdpMethod {
    /// The server binds the VIP (nothing to set; checked).
    Bind,
    /// Stateful DNAT with iptables/ip6tables.
    Iptables,
    /// Stateless source rewrite with nftables.
    Nftables,
}

impl UdpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            UdpMethod::Bind => "bind",
            UdpMethod::Iptables => "iptables",
            UdpMethod::Nftables => "nftables",
        }
    }
}

/// What the command line asks for, before the host is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub vips: Vec<IpAddr>,
    pub udp: UdpMethod,
    pub ports: Vec<Ports>,
    pub target_ips: Vec<IpAddr>,
}

/// A checked request: the VIPs (deduplicated, in order), the ports (sorted,
/// deduplicated, none overlapping another), and the target's own address
/// of each family a rewrite needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub vips: Vec<IpAddr>,
    pub udp: UdpMethod,
    pub ports: Vec<Ports>,
    pub target_v4: Option<Ipv4Addr>,
    pub target_v6: Option<Ipv6Addr>,
}

/// Bad input, said so that the fix is plain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("no --vip: give the load balancer's VIPs this target serves")]
    NoVip,
    #[error("--vip {0}: {1}")]
    BadVip(IpAddr, &'static str),
    #[error("--udp {0} rewrites addresses of UDP ports: give them with --udp-port")]
    NoPorts(&'static str),
    #[error("--udp-port 0: ports are 1-65535")]
    PortZero,
    #[error("--udp-port {0} and --udp-port {1} overlap: give each port once")]
    Overlap(Ports, Ports),
    #[error(
        "--udp-port {0} with --udp bind: bind is checked as a UDP socket bound to VIP:PORT for each port, which a range cannot be; use --udp iptables or nftables, or give the ports the server binds one by one"
    )]
    BindRange(Ports),
    #[error("--target-ip {0}: {1}")]
    BadTargetIp(IpAddr, String),
    #[error(
        "--udp {method} needs this target's own {family} address: {detail}; give it with --target-ip"
    )]
    TargetIp {
        method: &'static str,
        family: &'static str,
        detail: String,
    },
    #[error(
        "--udp nftables rewrites a reply's source by its own address and port, so VIPs {a} and {b}, both on --udp-port {ports}, cannot be told apart: use --udp iptables, or --udp bind with the server bound to each VIP"
    )]
    Ambiguous { a: IpAddr, b: IpAddr, ports: Ports },
}

/// A VIP must be a unicast address another host can send to.
fn vip_problem(ip: IpAddr) -> Option<&'static str> {
    if matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some()) {
        Some("an IPv4-mapped IPv6 address: give the IPv4 address")
    } else if ip.is_unspecified() {
        Some("the unspecified address is no VIP")
    } else if ip.is_loopback() {
        Some("a loopback address is no VIP")
    } else if ip.is_multicast() || matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
        Some("a VIP is a unicast address")
    } else if matches!(ip, IpAddr::V6(a) if a.is_unicast_link_local())
        || matches!(ip, IpAddr::V4(a) if a.is_link_local())
    {
        Some("a link-local address is no VIP")
    } else {
        None
    }
}

impl Request {
    /// Checks the request; `host` is the host's own addresses (interface,
    /// address), for the target addresses not given.
    pub fn check(&self, host: &[(String, IpAddr, u8)]) -> Result<Setup, SetupError> {
        let mut vips = Vec::new();
        for &vip in &self.vips {
            if let Some(problem) = vip_problem(vip) {
                return Err(SetupError::BadVip(vip, problem));
            }
            if !vips.contains(&vip) {
                vips.push(vip);
            }
        }
        if vips.is_empty() {
            return Err(SetupError::NoVip);
        }
        let ports = self.ports()?;
        let rewrites = self.udp != UdpMethod::Bind;
        if rewrites && ports.is_empty() {
            return Err(SetupError::NoPorts(self.udp.as_str()));
        }
        let mut setup = Setup {
            vips,
            udp: self.udp,
            ports,
            target_v4: None,
            target_v6: None,
        };
        self.target_ips(&mut setup, host)?;
        if self.udp == UdpMethod::Nftables {
            no_two_vips_of_a_family(&setup)?;
        }
        Ok(setup)
    }

    /// The ports sorted and deduplicated; overlapping ones (which would
    /// make two rules for a port) and, with `bind`, a range are refused.
    fn ports(&self) -> Result<Vec<Ports>, SetupError> {
        if self.ports.iter().any(|p| p.first == 0) {
            return Err(SetupError::PortZero);
        }
        let mut ports = self.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        // Sorted by first port: any overlap shows between neighbours.
        if let Some(w) = ports.windows(2).find(|w| w[0].overlap(w[1]).is_some()) {
            return Err(SetupError::Overlap(w[0], w[1]));
        }
        if self.udp == UdpMethod::Bind
            && let Some(&range) = ports.iter().find(|p| p.is_range())
        {
            return Err(SetupError::BindRange(range));
        }
        Ok(ports)
    }

    /// The target's own address of each family the rewrite needs: given,
    /// else the host's only one of that family.
    fn target_ips(
        &self,
        setup: &mut Setup,
        host: &[(String, IpAddr, u8)],
    ) -> Result<(), SetupError> {
        for &ip in &self.target_ips {
            let taken = match ip {
                IpAddr::V4(a) => setup.target_v4.replace(a).map(IpAddr::V4),
                IpAddr::V6(a) => setup.target_v6.replace(a).map(IpAddr::V6),
            };
            if let Some(other) = taken {
                return Err(SetupError::BadTargetIp(
                    ip,
                    format!("one address a family ({other} given too)"),
                ));
            }
            if setup.vips.contains(&ip) {
                return Err(SetupError::BadTargetIp(
                    ip,
                    "the target's own address, not a VIP".into(),
                ));
            }
            if vip_problem(ip).is_some() {
                return Err(SetupError::BadTargetIp(ip, "not a unicast address".into()));
            }
        }
        if setup.udp == UdpMethod::Bind {
            return Ok(());
        }
        let method = setup.udp.as_str();
        if setup.target_v4.is_none() && setup.vips.iter().any(IpAddr::is_ipv4) {
            let ip = own_address(host, &setup.vips, false, method)?;
            setup.target_v4 = match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            };
        }
        if setup.target_v6.is_none() && setup.vips.iter().any(IpAddr::is_ipv6) {
            let ip = own_address(host, &setup.vips, true, method)?;
            setup.target_v6 = match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            };
        }
        Ok(())
    }
}

/// The host's only global address of a family (not on `lo`, not a VIP).
fn own_address(
    host: &[(String, IpAddr, u8)],
    vips: &[IpAddr],
    v6: bool,
    method: &'static str,
) -> Result<IpAddr, SetupError> {
    let candidates: Vec<(&str, IpAddr)> = host
        .iter()
        .filter(|(iface, ip, _)| {
            iface != "lo" && ip.is_ipv6() == v6 && !vips.contains(ip) && vip_problem(*ip).is_none()
        })
        .map(|(iface, ip, _)| (iface.as_str(), *ip))
        .collect();
    let family = if v6 { "IPv6" } else { "IPv4" };
    match candidates.as_slice() {
        [(_, ip)] => Ok(*ip),
        [] => Err(SetupError::TargetIp {
            method,
            family,
            detail: "the host has none".into(),
        }),
        many => Err(SetupError::TargetIp {
            method,
            family,
            detail: format!(
                "the host has several ({})",
                many.iter()
                    .map(|(iface, ip)| format!("{ip} on {iface}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Two VIPs of a family sharing a port: every VIP gets every port (ranges
/// included), so any two of a family share them all.
fn no_two_vips_of_a_family(setup: &Setup) -> Result<(), SetupError> {
    let Some(&ports) = setup.ports.first() else {
        return Ok(());
    };
    for v6 in [false, true] {
        let mut of_family = setup.vips.iter().filter(|ip| ip.is_ipv6() == v6);
        if let (Some(&a), Some(&b)) = (of_family.next(), of_family.next()) {
            return Err(SetupError::Ambiguous { a, b, ports });
        }
    }
    Ok(())
}

/// The sysctls the DSR set-up sets, with the value it wants.
pub const ARP_IGNORE: (&str, &str) = ("net.ipv4.conf.all.arp_ignore", "1");
pub const ARP_ANNOUNCE: (&str, &str) = ("net.ipv4.conf.all.arp_announce", "2");

/// The nftables table and chain `--udp nftables` keeps its rules in.
pub const NFT_TABLE: &str = "inet lb_dsr";
pub const NFT_CHAIN: &str = "postrouting";
/// After NAT (srcnat is 100), as in the cloud's instructions.
pub const NFT_HOOK: &str = "type filter hook postrouting priority 300;";

/// An iptables rule in the `nat` table: `CHAIN ARGS...`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IptablesRule {
    pub v6: bool,
    pub chain: &'static str,
    pub args: Vec<String>,
}

impl IptablesRule {
    fn new(v6: bool, chain: &'static str, args: &[&str]) -> IptablesRule {
        IptablesRule {
            v6,
            chain,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn tool(&self) -> &'static str {
        if self.v6 { "ip6tables" } else { "iptables" }
    }

    /// `iptables -t nat -A CHAIN ARGS` (`op` `-A`, or `-C` to check).
    pub fn argv(&self, op: &str) -> Vec<String> {
        let mut argv = vec![
            self.tool().to_string(),
            "-t".into(),
            "nat".into(),
            op.into(),
            self.chain.into(),
        ];
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// One thing the target needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    LoUp,
    VipOnLo(IpAddr),
    /// Checked only: the VIP on no other interface.
    VipOnlyOnLo(IpAddr),
    Sysctl(&'static str, &'static str),
    Iptables(IptablesRule),
    NftTable,
    NftChain,
    /// A rule of the chain, as `nft list` prints it.
    NftRule(String),
    /// `--udp bind`: a UDP socket bound to the VIP and port (one port:
    /// `Request::check` refuses a range with bind).
    UdpBound(SocketAddr),
}

/// The items of `setup`, in the order they are set.
pub fn items(setup: &Setup) -> Vec<Item> {
    let mut items = vec![Item::LoUp];
    items.extend(setup.vips.iter().map(|&v| Item::VipOnLo(v)));
    items.extend(setup.vips.iter().map(|&v| Item::VipOnlyOnLo(v)));
    if setup.vips.iter().any(IpAddr::is_ipv4) {
        items.push(Item::Sysctl(ARP_IGNORE.0, ARP_IGNORE.1));
        items.push(Item::Sysctl(ARP_ANNOUNCE.0, ARP_ANNOUNCE.1));
    }
    match setup.udp {
        UdpMethod::Bind => {
            for &vip in &setup.vips {
                items.extend(
                    setup
                        .ports
                        .iter()
                        .map(|p| Item::UdpBound(SocketAddr::new(vip, p.first))),
                );
            }
        }
        UdpMethod::Iptables => items.extend(iptables_rules(setup).into_iter().map(Item::Iptables)),
        UdpMethod::Nftables => {
            items.push(Item::NftTable);
            items.push(Item::NftChain);
            items.extend(nft_rules(setup).into_iter().map(Item::NftRule));
        }
    }
    items
}

fn target_of(setup: &Setup, vip: IpAddr) -> Option<IpAddr> {
    match vip {
        IpAddr::V4(_) => setup.target_v4.map(IpAddr::V4),
        IpAddr::V6(_) => setup.target_v6.map(IpAddr::V6),
    }
}

/// The cloud's DNAT method: the VIP's datagrams to the target's own
/// address (conntrack gives the replies the VIP back), and a RETURN that
/// keeps them from any source NAT rule later in POSTROUTING.
fn iptables_rules(setup: &Setup) -> Vec<IptablesRule> {
    // One RETURN a target address and port, however many VIPs share them.
    let mut returns = Vec::new();
    let mut dnats = Vec::new();
    for &vip in &setup.vips {
        let Some(target) = target_of(setup, vip) else {
            continue;
        };
        let (vip, target) = (vip.to_string(), target.to_string());
        for &ports in &setup.ports {
            let port = iptables_ports(ports);
            let dport = ["-p", "udp", "--dport", port.as_str()];
            let mut ret = vec!["-d", target.as_str()];
            ret.extend(dport);
            ret.extend(["-j", "RETURN"]);
            let mut dnat = vec!["-d", vip.as_str()];
            dnat.extend(dport);
            dnat.extend(["-j", "DNAT", "--to-destination", target.as_str()]);
            let v6 = target.contains(':');
            let ret = IptablesRule::new(v6, "POSTROUTING", &ret);
            if !returns.contains(&ret) {
                returns.push(ret);
            }
            dnats.push(IptablesRule::new(v6, "PREROUTING", &dnat));
        }
    }
    returns.into_iter().chain(dnats).collect()
}

/// The cloud's stateless method: replies from the target's own address and
/// a UDP port leave with the VIP as their source.
fn nft_rules(setup: &Setup) -> Vec<String> {
    let mut rules = Vec::new();
    for &vip in &setup.vips {
        let Some(target) = target_of(setup, vip) else {
            continue;
        };
        let ip = if vip.is_ipv6() { "ip6" } else { "ip" };
        for &ports in &setup.ports {
            let port = nft_ports(ports);
            rules.push(format!(
                "{ip} saddr {target} udp sport {port} {ip} saddr set {vip}"
            ));
        }
    }
    rules
}

/// Ports as iptables' `--dport` takes and `-S` prints them: `53`,
/// `10000:20000` (`all` is `1:65535`).
fn iptables_ports(ports: Ports) -> String {
    match ports.single() {
        Some(port) => port.to_string(),
        None => format!("{}:{}", ports.first, ports.last),
    }
}

/// Ports as nft takes and `nft list` prints them: `53`, `10000-20000`
/// (`all` is `1-65535`), so that a rule is found by its text.
fn nft_ports(ports: Ports) -> String {
    match ports.single() {
        Some(port) => port.to_string(),
        None => format!("{}-{}", ports.first, ports.last),
    }
}

/// What the host has of the items (read by `observe`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub lo_up: bool,
    /// Every address: interface, address, prefix length.
    pub addrs: Vec<(String, IpAddr, u8)>,
    /// Sysctl values (None: not readable).
    pub sysctls: Vec<(&'static str, Option<String>)>,
    /// The wanted iptables rules that `-C` found.
    pub iptables: BTreeSet<IptablesRule>,
    /// `nft list table inet lb_dsr`: None if there is no such table.
    pub nft_table: Option<String>,
    /// Local addresses of UDP sockets.
    pub udp_sockets: BTreeSet<SocketAddr>,
}

/// How an item stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Ok,
    /// Not there.
    Missing,
    /// There, but not as it must be: what is there instead.
    Wrong(String),
}

impl Item {
    /// What the item is, in words.
    pub fn what(&self) -> String {
        match self {
            Item::LoUp => "lo is up".into(),
            Item::VipOnLo(vip) => format!("{vip}/{} on lo", host_len(*vip)),
            Item::VipOnlyOnLo(vip) => format!("{vip} on no interface but lo"),
            Item::Sysctl(key, value) => format!("{key} = {value}"),
            Item::Iptables(rule) => format!(
                "{} nat rule: {}",
                rule.tool(),
                rule.argv("-A")[3..].join(" ")
            ),
            Item::NftTable => format!("nftables table {NFT_TABLE}"),
            Item::NftChain => format!("nftables chain {NFT_TABLE} {NFT_CHAIN} ({NFT_HOOK})"),
            Item::NftRule(rule) => format!("nftables rule in {NFT_TABLE} {NFT_CHAIN}: {rule}"),
            Item::UdpBound(addr) => format!("a UDP server bound to {addr}"),
        }
    }

    /// Whether the host has it.
    pub fn state(&self, seen: &Seen) -> State {
        match self {
            Item::LoUp => ok_if(seen.lo_up),
            Item::VipOnLo(vip) => vip_on_lo(seen, *vip),
            Item::VipOnlyOnLo(vip) => {
                let elsewhere: Vec<String> = seen
                    .addrs
                    .iter()
                    .filter(|(iface, ip, _)| ip == vip && iface != "lo")
                    .map(|(iface, ip, len)| format!("{ip}/{len} on {iface}"))
                    .collect();
                if elsewhere.is_empty() {
                    State::Ok
                } else {
                    State::Wrong(elsewhere.join(", "))
                }
            }
            Item::Sysctl(key, value) => sysctl(seen, key, value),
            Item::Iptables(rule) => ok_if(seen.iptables.contains(rule)),
            Item::NftTable => ok_if(seen.nft_table.is_some()),
            Item::NftChain => nft_chain(seen),
            Item::NftRule(rule) => ok_if(nft_lines(seen).any(|line| line == *rule)),
            Item::UdpBound(addr) => udp_bound(seen, *addr),
        }
    }

    /// Shell commands that set the item: for the script (`seen` None),
    /// each safe to run again; as the fix of what `seen` lacks, plain.
    pub fn commands(&self, seen: Option<&Seen>) -> Vec<String> {
        match self {
            Item::LoUp => vec!["ip link set dev lo up".into()],
            Item::VipOnLo(vip) => {
                let len = host_len(*vip);
                // As the fix: first the VIP with another prefix length.
                let mut out: Vec<String> = seen
                    .into_iter()
                    .flat_map(|seen| &seen.addrs)
                    .filter(|(iface, ip, l)| iface == "lo" && ip == vip && *l != len)
                    .map(|(_, ip, l)| format!("ip addr del {ip}/{l} dev lo"))
                    .collect();
                out.push(if vip.is_ipv6() {
                    format!("ip -6 addr replace {vip}/{len} dev lo nodad")
                } else {
                    format!("ip addr replace {vip}/{len} dev lo")
                });
                out
            }
            Item::VipOnlyOnLo(vip) => seen
                .map(|seen| {
                    seen.addrs
                        .iter()
                        .filter(|(iface, ip, _)| ip == vip && iface != "lo")
                        .map(|(iface, ip, len)| format!("ip addr del {ip}/{len} dev {iface}"))
                        .collect()
                })
                .unwrap_or_default(),
            Item::Sysctl(key, value) => vec![format!("sysctl -w {key}={value}")],
            // A fix is the plain command; the script's guards make it
            // safe to run again.
            Item::Iptables(rule) if seen.is_some() => vec![rule.argv("-A").join(" ")],
            Item::Iptables(rule) => vec![format!(
                "{} 2>/dev/null || {}",
                rule.argv("-C").join(" "),
                rule.argv("-A").join(" ")
            )],
            Item::NftTable => vec![format!("nft add table {NFT_TABLE}")],
            Item::NftChain if seen.is_some_and(|s| matches!(self.state(s), State::Wrong(_))) => {
                vec![
                    format!("nft flush chain {NFT_TABLE} {NFT_CHAIN}"),
                    format!("nft delete chain {NFT_TABLE} {NFT_CHAIN}"),
                    format!("nft add chain {NFT_TABLE} {NFT_CHAIN} '{{ {NFT_HOOK} }}'"),
                ]
            }
            Item::NftChain => vec![format!(
                "nft add chain {NFT_TABLE} {NFT_CHAIN} '{{ {NFT_HOOK} }}'"
            )],
            Item::NftRule(rule) if seen.is_some() => {
                vec![format!("nft add rule {NFT_TABLE} {NFT_CHAIN} {rule}")]
            }
            Item::NftRule(rule) => vec![format!(
                "nft list chain {NFT_TABLE} {NFT_CHAIN} | sed 's/^[[:space:]]*//' | grep -qxF '{rule}' || nft add rule {NFT_TABLE} {NFT_CHAIN} {rule}"
            )],
            Item::UdpBound(_) => Vec::new(),
        }
    }

    /// What to do when the item is not in place and no command does it.
    pub fn advice(&self) -> Option<String> {
        match self {
            Item::UdpBound(addr) => Some(format!(
                "start the UDP service bound to {addr}: one bound to the wildcard address answers from the host's own address, which the client drops (or use --udp iptables or nftables)"
            )),
            Item::VipOnlyOnLo(vip) => Some(format!(
                "this host claims {vip} on the network, so clients may send to it past the load balancer; remove it there (if this is the load balancer itself, target-setup is not for it)"
            )),
            _ => None,
        }
    }
}

fn ok_if(ok: bool) -> State {
    if ok { State::Ok } else { State::Missing }
}

/// /32 or /128.
pub fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv6() { 128 } else { 32 }
}

fn vip_on_lo(seen: &Seen, vip: IpAddr) -> State {
    let on_lo: Vec<u8> = seen
        .addrs
        .iter()
        .filter(|(iface, ip, _)| iface == "lo" && *ip == vip)
        .map(|(_, _, len)| *len)
        .collect();
    // Another prefix length is wrong even beside the host one: the whole
    // prefix would be the host's.
    if let Some(len) = on_lo.iter().find(|&&len| len != host_len(vip)) {
        State::Wrong(format!(
            "{vip}/{len} on lo: the whole prefix would be the host's"
        ))
    } else if on_lo.is_empty() {
        State::Missing
    } else {
        State::Ok
    }
}

fn sysctl(seen: &Seen, key: &str, value: &str) -> State {
    match seen.sysctls.iter().find(|(k, _)| *k == key) {
        Some((_, Some(now))) if now == value => State::Ok,
        Some((_, Some(now))) => State::Wrong(format!("it is {now}")),
        _ => State::Missing,
    }
}

/// The lines of the `nft list` output, trimmed.
fn nft_lines(seen: &Seen) -> impl Iterator<Item = &str> {
    seen.nft_table.iter().flat_map(|t| t.lines().map(str::trim))
}

fn nft_chain(seen: &Seen) -> State {
    let mut lines = nft_lines(seen).skip_while(|l| *l != format!("chain {NFT_CHAIN} {{"));
    if lines.next().is_none() {
        return State::Missing;
    }
    match lines.next() {
        Some(hook) if hook.starts_with(NFT_HOOK) => State::Ok,
        Some(hook) => State::Wrong(format!("the chain is `{hook}`")),
        None => State::Missing,
    }
}

fn udp_bound(seen: &Seen, addr: SocketAddr) -> State {
    if seen.udp_sockets.contains(&addr) {
        return State::Ok;
    }
    let wildcard = seen
        .udp_sockets
        .iter()
        .find(|s| s.port() == addr.port() && s.ip().is_unspecified());
    match wildcard {
        Some(w) => State::Wrong(format!(
            "the UDP server is bound to {w}: it answers from the host's own address"
        )),
        None => State::Missing,
    }
}

/// The set-up as a shell script: the commands of every item, each safe to
/// run again (what is printed, and what `--persist` runs at boot).
pub fn script(setup: &Setup, invocation: &str) -> String {
    let mut out = String::from("#!/bin/sh\n");
    out += "# DSR target set-up, made by: ";
    out += invocation;
    out += "\nset -eu\n";
    for item in items(setup) {
        if let Some(advice) = item.advice().filter(|_| matches!(item, Item::UdpBound(_))) {
            out += &format!("# {}: {advice}\n", item.what());
        }
        for command in item.commands(None) {
            out += &command;
            out.push('\n');
        }
    }
    out
}

/// One line per item: its state, and for one not in place what fixes it.
pub struct Report<'a> {
    pub rows: Vec<(&'a Item, State, Vec<String>)>,
}

impl<'a> Report<'a> {
    pub fn of(items: &'a [Item], seen: &Seen) -> Report<'a> {
        let rows = items
            .iter()
            .map(|item| (item, item.state(seen), item.commands(Some(seen))))
            .collect();
        Report { rows }
    }

    pub fn all_ok(&self) -> bool {
        self.rows.iter().all(|(_, state, _)| *state == State::Ok)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (item, state, fix) in &self.rows {
            let (word, detail) = match state {
                State::Ok => ("ok", String::new()),
                State::Missing => ("missing", String::new()),
                State::Wrong(what) => ("wrong", format!(" ({what})")),
            };
            writeln!(f, "{word:<8} {}{detail}", item.what())?;
            if *state == State::Ok {
                continue;
            }
            for command in fix {
                writeln!(f, "         fix: {command}")?;
            }
            if let Some(advice) = item.advice() {
                writeln!(f, "         fix: {advice}")?;
            }
        }
        let ok = self.rows.iter().filter(|(_, s, _)| *s == State::Ok).count();
        write!(f, "{ok} of {} in place", self.rows.len())
    }
}

/// What `lb target-setup` is to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub request: Request,
    pub apply: bool,
    /// `--persist`, under this root (`/` by default).
    pub persist: Option<std::path::PathBuf>,
    pub check: bool,
}

impl Setup {
    /// The command line that gives this set-up (with the target addresses
    /// found), for the files it writes.
    pub fn invocation(&self) -> String {
        let mut line = String::from("lb target-setup");
        for vip in &self.vips {
            line += &format!(" --vip {vip}");
        }
        line += &format!(" --udp {}", self.udp.as_str());
        for port in &self.ports {
            line += &format!(" --udp-port {port}");
        }
        let targets = [
            self.target_v4.map(IpAddr::V4),
            self.target_v6.map(IpAddr::V6),
        ];
        for ip in targets.into_iter().flatten() {
            line += &format!(" --target-ip {ip}");
        }
        line
    }
}

/// Runs `lb target-setup`: prints the set-up, or checks, applies and
/// persists it. False when a check found something not in place.
pub async fn run(options: &Options) -> anyhow::Result<bool> {
    let host = observe::links().await?.addrs;
    let setup = options.request.check(&host)?;
    let invocation = setup.invocation();
    if options.check {
        let items = items(&setup);
        let seen = observe(&setup).await?;
        let report = Report::of(&items, &seen);
        println!("{report}");
        return Ok(report.all_ok());
    }
    if options.apply {
        let done = apply(&setup).await?;
        if done.is_empty() {
            println!("nothing to change: every item is in place");
        }
        for line in done {
            println!("{line}");
        }
        let seen = observe(&setup).await?;
        for item in items(&setup) {
            if let (Item::UdpBound(_), false) = (&item, item.state(&seen) == State::Ok) {
                println!("still to do: {}", item.advice().unwrap_or_default());
            }
        }
    }
    if let Some(root) = &options.persist {
        for file in persist(&setup, &invocation, root)? {
            let word = if file.changed { "written" } else { "unchanged" };
            println!("{word} {}", file.path.display());
        }
    }
    if !options.apply && options.persist.is_none() {
        print!("{}", script(&setup, &invocation));
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
