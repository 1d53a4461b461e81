//! What `lb run` checks of the host at start, each a log line that names
//! the problem and its fix: an error that stops the start where the problem
//! makes `lb` useless, a warning where it only hurts. (Targets off the
//! interface's subnets are refused by the policy's host check:
//! `policy::validate_for_host`.)
//!
//! - the data plane's maps against the memory available (a new data plane
//!   only: an adopted one has its memory already);
//! - the interface has no address (the subnet check cannot be made, and
//!   neither probes nor ARP have a source);
//! - a strict `rp_filter` on the interface while the route back to a target
//!   leaves by another interface: the kernel drops the target's answers to
//!   health probes;
//! - generic XDP mode (said where the program is attached);
//! - another host answering ARP or neighbour solicitations for a VIP
//!   (`vip_probe`).
use std::net::IpAddr;

use anyhow::bail;
use futures::TryStreamExt as _;
use netlink_packet_route::route::RouteAttribute;
use tracing::{debug, info, warn};

use crate::{
    dataplane::{memory, pin::Instance},
    neighbors::InterfaceInfo,
    policy::Policy,
};

/// How the maps' memory compares with what the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    Fits,
    /// More than half of what is available.
    Tight,
    TooBig,
}

pub fn memory_verdict(needed: u64, available: u64) -> Memory {
    if needed > available {
        Memory::TooBig
    } else if needed > available / 2 {
        Memory::Tight
    } else {
        Memory::Fits
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// The maps a new data plane for `policy` would make (the flow table at
/// its size, per-CPU maps for every possible CPU, each group's table at
/// its size) against MemAvailable: refused when larger, a warning above
/// half.
pub fn memory(instance: &Instance, policy: &Policy) -> anyhow::Result<()> {
    if instance.is_pinned() {
        return Ok(()); // adopted: its maps exist already
    }
    let buckets = lb_common::flow_table::buckets_for(policy.max_flows());
    let cpus = memory::possible_cpus();
    let maps = memory::maps(crate::EBPF_LB, buckets, cpus)?;
    let tables: u64 = policy
        .target_groups
        .iter()
        .map(|g| memory::group_table_bytes(g.table_size.into()))
        .sum();
    let flow_table = maps
        .iter()
        .find(|m| m.name == lb_common::map_names::FLOW_TABLE)
        .map_or(0, |m| m.bytes);
    let needed = maps.iter().map(|m| m.bytes).sum::<u64>() + tables;
    let Some(available) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(mem_available)
    else {
        warn!(
            "cannot read MemAvailable from /proc/meminfo: the data plane's memory ({}) is not checked",
            mib(needed)
        );
        return Ok(());
    };
    let detail = format!(
        "the data plane needs {} (flow table {} for flow_table.max_flows {}, group tables {}, per-CPU maps for {cpus} CPUs), MemAvailable is {}",
        mib(needed),
        mib(flow_table),
        policy.max_flows(),
        mib(tables),
        mib(available)
    );
    match memory_verdict(needed, available) {
        Memory::TooBig => bail!(
            "{detail}: lower flow_table.max_flows (or table_size of the largest groups), or free memory"
        ),
        Memory::Tight => warn!(
            "{detail}: more than half of it; lower flow_table.max_flows if the host needs its memory"
        ),
        Memory::Fits => debug!("{detail}"),
    }
    Ok(())
}

/// The interface has an address (targets are checked against its subnets;
/// probes and ARP requests need a source).
pub fn addresses(iface: &InterfaceInfo) {
    if iface.nets.is_empty() {
        warn!(
            iface = %iface.name,
            "the interface has no address: lb cannot check that the targets are on its subnets (DSR rewrites only the MAC), and health probes and ARP requests have no source of their own; give it its address on the targets' subnet"
        );
    }
}

/// The effective `rp_filter` of an interface: the larger of `all` and its
/// own (Linux takes the maximum).
pub fn rp_filter(all: u8, iface: u8) -> u8 {
    all.max(iface)
}

/// Whether strict reverse-path filtering drops a target's packets arriving
/// on the interface: the route back to it leaves by another.
pub fn rp_filter_drops(effective: u8, route_oif: Option<u32>, iface_index: u32) -> bool {
    effective == 1 && route_oif.is_some_and(|oif| oif != iface_index)
}

fn read_u8(path: &str) -> Option<u8> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Warns for each IPv4 target whose answers strict `rp_filter` drops.
pub async fn rp_filter_targets(iface: &InterfaceInfo, policy: &Policy) {
    let conf =
        |dev: &str| read_u8(&format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter")).unwrap_or(0);
    let effective = rp_filter(conf("all"), conf(&iface.name));
    if effective != 1 {
        return;
    }
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
        return;
    };
    tokio::spawn(conn);
    let mut targets: Vec<IpAddr> = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter().map(|t| t.ip))
        .filter(IpAddr::is_ipv4)
        .collect();
    targets.sort();
    targets.dedup();
    for ip in targets {
        let IpAddr::V4(v4) = ip else { continue };
        let msg = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build();
        let routes: Vec<_> = handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        let oif = routes
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
        if rp_filter_drops(effective, oif, iface.index) {
            warn!(
                iface = %iface.name,
                target = %ip,
                "strict reverse-path filtering (rp_filter 1) on {} drops what {ip} sends to this host, since the route back to it leaves by another interface (index {}): its health probe answers are lost and a checked target turns unhealthy; set net.ipv4.conf.{}.rp_filter=2 and net.ipv4.conf.all.rp_filter=2 (loose), or route {ip} through {}",
                iface.name, oif.unwrap_or(0), iface.name, iface.name
            );
        }
    }
}

/// How long the VIP probe listens for answers.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Asks the segment who answers for each VIP of `policy`, and warns for
/// every other host that does (on a thread of its own: it waits).
pub fn vip_claims(iface: &InterfaceInfo, policy: &Policy, targets: Vec<([u8; 6], IpAddr)>) {
    let mut vips: Vec<IpAddr> = policy.listeners.iter().map(|l| l.vip).collect();
    vips.sort();
    vips.dedup();
    let own4 = iface.nets.iter().find_map(|(ip, _)| match ip {
        IpAddr::V4(a) if !vips.contains(ip) => Some(*a),
        _ => None,
    });
    let v6 = |link_local: bool| {
        iface.nets.iter().find_map(|(ip, _)| match ip {
            IpAddr::V6(a) if !vips.contains(ip) && a.is_unicast_link_local() == link_local => {
                Some(*a)
            }
            _ => None,
        })
    };
    let own6 = v6(true).or_else(|| v6(false));
    let (name, index, mac) = (iface.name.clone(), iface.index, iface.mac);
    std::thread::spawn(move || {
        match crate::neighbors::vip_probe::probe(index, mac, own4, own6, &vips, PROBE_WAIT) {
            Ok(claims) => {
                for (vip, by) in claims {
                    let who = claimant(&targets, vip, by);
                    let by = crate::neighbors::fmt_mac(&by);
                    warn!(
                        iface = %name,
                        %vip,
                        "VIP {vip} is answered for by {by} ({who}) besides this host: that host has the VIP on an interface other than lo, or lacks net.ipv4.conf.all.arp_ignore=1, and clients that take its answer send to it past lb; on it, `lb target-setup --vip {vip} --check` says what to fix"
                    );
                }
            }
            Err(err) => {
                warn!(iface = %name, %err, "cannot ask who answers for the VIPs (a raw packet socket)")
            }
        }
    });
}

/// Which target has MAC `mac`: the address of the VIP's family first.
fn claimant(targets: &[([u8; 6], IpAddr)], vip: IpAddr, mac: [u8; 6]) -> String {
    let of_mac = || targets.iter().filter(|(m, _)| *m == mac).map(|(_, ip)| *ip);
    of_mac()
        .find(|ip| ip.is_ipv6() == vip.is_ipv6())
        .or_else(|| of_mac().next())
        .map_or_else(|| "not a target".to_string(), |ip| format!("target {ip}"))
}

/// Generic XDP mode, and what it costs.
pub fn generic_mode(iface: &str, forced: bool) {
    let why = if forced {
        "as asked (--xdp-mode generic)"
    } else {
        "its driver has no native XDP"
    };
    warn!(
        iface,
        "the XDP program runs in generic (skb) mode, {why}: every packet gets a kernel socket buffer before lb sees it and forwarded ones go out through the kernel's transmit path, so each costs several times the CPU of native mode and large receive offloads are undone; use a NIC whose driver has native XDP (ip link shows `xdp`, not `xdpgeneric`), or --xdp-mode native to refuse generic mode"
    );
    info!(
        iface,
        "generic mode sees packets after GRO: super-packets, not wire frames"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_refused_above_what_is_available_and_warned_above_half() {
        assert_eq!(memory_verdict(100, 1000), Memory::Fits);
        assert_eq!(memory_verdict(500, 1000), Memory::Fits);
        assert_eq!(memory_verdict(501, 1000), Memory::Tight);
        assert_eq!(memory_verdict(1000, 1000), Memory::Tight);
        assert_eq!(memory_verdict(1001, 1000), Memory::TooBig);
        let meminfo = "MemTotal:       24684100 kB\nMemFree:        14197608 kB\nMemAvailable:   23747072 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_747_072 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_claimant_is_named_by_its_address_of_the_vips_family() {
        let t2 = [2, 0, 0, 0, 0, 0x12];
        let targets = [
            (t2, "fd00:3::12".parse().unwrap()),
            (t2, "10.0.3.12".parse().unwrap()),
        ];
        assert_eq!(
            claimant(&targets, "10.0.3.49".parse().unwrap(), t2),
            "target 10.0.3.12"
        );
        assert_eq!(
            claimant(&targets, "fd00:3::49".parse().unwrap(), t2),
            "target fd00:3::12"
        );
        assert_eq!(
            claimant(&targets[..1], "10.0.3.49".parse().unwrap(), t2),
            "target fd00:3::12"
        );
        assert_eq!(
            claimant(&targets, "10.0.3.49".parse().unwrap(), [2; 6]),
            "not a target"
        );
    }

    #[test]
    fn strict_rp_filter_drops_only_what_routes_elsewhere() {
        assert_eq!(rp_filter(0, 1), 1);
        assert_eq!(rp_filter(2, 1), 2, "the maximum: loose wins");
        assert!(rp_filter_drops(1, Some(7), 3));
        assert!(
            !rp_filter_drops(1, Some(3), 3),
            "the route back is the interface"
        );
        assert!(
            !rp_filter_drops(2, Some(7), 3),
            "loose: any route back will do"
        );
        assert!(!rp_filter_drops(0, Some(7), 3));
        assert!(!rp_filter_drops(1, None, 3), "no route: unknown");
    }
}
