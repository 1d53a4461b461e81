//! Interface facts and target MAC resolution over netlink.
//!
//! DSR rewrites only the destination MAC, so the loader must know the MAC of
//! every target. This module is everything netlink the loader needs:
//!
//! - [`interface`]: index, MAC and addresses of the interface `lb` attaches
//!   to, by name, in the current network namespace.
//! - [`NeighborWatch`]: keeps the MACs of a set of target IPs on one interface
//!   resolved and publishes them on a `tokio::sync::watch` channel
//!   (`IP -> MAC`, only targets with a usable MAC: a target missing from the
//!   map must not be sent to).
//!
//! How targets are resolved: the kernel's neighbour table (ARP and NDP) is the
//! source of truth; a MAC counts in REACHABLE, STALE, DELAY, PROBE, PERMANENT
//! and NOARP with an address, never in INCOMPLETE or FAILED, never all-zero.
//!
//! - For every target without an entry the watch creates a *managed* entry
//!   (`NTF_EXT_MANAGED`, Linux >= 5.16, `ip neigh add ADDR dev DEV managed`):
//!   the kernel resolves it at once and keeps re-probing it on its own timers,
//!   with no traffic from us, which is what managed entries were made for.
//! - An ordinary cache entry of a target is turned into a managed one (its
//!   address and state are kept): no traffic of the kernel ever confirms a
//!   DSR target's entry, so it would otherwise go stale and stay wrong.
//! - Static (PERMANENT, NOARP) and externally learned entries are used as they
//!   are and never touched (making a PERMANENT entry managed drops its MAC).
//! - While a target has no usable MAC the watch also asks the kernel to
//!   resolve it now, at 0, 1, 2, 4, 8 and then every 10 seconds: an
//!   `NTF_USE` request (`ip neigh replace ADDR dev DEV use managed`). That
//!   only makes the kernel send ARP/NDP solicitations, which is why it is
//!   preferred to provoking resolution with a packet (a UDP datagram to the
//!   discard port, an ICMP echo): nothing reaches the target's stack but
//!   ARP/NDP, no socket or route is needed, and it works for every address.
//! - Fallback: on kernels older than 5.16 (by `/proc/sys/kernel/osrelease`),
//!   or for a target whose managed entry cannot be added, `NTF_USE` requests
//!   alone do the work on ordinary entries and also re-confirm STALE ones.
//!
//! Changes are followed through the `RTNLGRP_NEIGH` multicast group, with a
//! full re-read every 30 seconds as a safety net. The managed entries the
//! watch created or converted are removed when it stops; others are left
//! alone. A target that changes MAC is followed as soon as it announces the
//! change (gratuitous ARP, unsolicited NA). A silent change is only noticed
//! when the managed entry's next confirmation fails: REACHABLE lasts
//! `base_reachable_time` (30 s) +-50%, then about 5 + 3 seconds of unicast
//! probes by default; the old MAC stays published until the entry FAILs, and
//! the target is out of the map until it is resolved again.
//!
//! Network namespaces are per thread in Linux: all calls must run in the
//! namespace of the interface (the `lb` process lives in one).
//!
//! Everything here must be called within a tokio runtime.
mod entry;
mod netlink;
pub mod vip_probe;
mod watch;

#[cfg(test)]
mod tests;

use std::{io, net::IpAddr};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkLayerType, LinkMessage},
};
use rtnetlink::Handle;

pub use self::watch::NeighborWatch;

/// Errors of this module. Messages name the interface or address concerned;
/// the cause, where there is one, is the error's `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot open a netlink socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchInterface { name: String },
    #[error("no interface with index {index} in this network namespace")]
    NoSuchIndex { index: u32 },
    #[error("interface {name} is not an ethernet interface (link type {link_type})")]
    NotEthernet { name: String, link_type: String },
    #[error("interface {name} has no ethernet address")]
    NoMac { name: String },
    #[error("target {addr} is not a unicast address")]
    BadTarget { addr: IpAddr },
    #[error("netlink request failed: {what} on interface {iface}")]
    Netlink {
        iface: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink request timed out: {what} on interface {iface}")]
    Timeout { iface: String, what: String },
    #[error("cannot remove managed neighbour {addr} from interface {iface}")]
    Remove {
        iface: String,
        addr: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("the neighbour watch on interface {iface} has stopped")]
    Stopped { iface: String },
}

/// What `lb` needs to know of the interface it attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub index: u32,
    /// The interface's own MAC (source MAC of forwarded frames).
    pub mac: [u8; 6],
    /// Addresses configured on the interface with their prefix length, as
    /// `ip addr` shows them (e.g. `10.77.0.1/24`, `fe80::1/64`), IPv4 first.
    pub nets: Vec<(IpAddr, u8)>,
}

/// Looks up an Ethernet interface by name in the current network namespace.
pub async fn interface(name: &str) -> Result<InterfaceInfo, NetError> {
    // Linux names are 1 to 15 bytes without '/' or whitespace.
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n']) {
        return Err(no_such_interface(name));
    }
    let handle = netlink::connect()?;
    let link = link(&handle, name).await?;
    let index = link.header.index;
    let mac = ethernet_mac(name, &link)?;
    let nets = nets(&handle, name, index).await?;
    Ok(InterfaceInfo {
        name: name.to_string(),
        index,
        mac,
        nets,
    })
}

fn no_such_interface(name: &str) -> NetError {
    NetError::NoSuchInterface {
        name: name.to_string(),
    }
}

/// The link named `name`.
async fn link(handle: &Handle, name: &str) -> Result<LinkMessage, NetError> {
    let links = netlink::timed(name, "read link", async {
        handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect::<Vec<_>>()
            .await
    });
    match links.await {
        Ok(links) => links
            .into_iter()
            .next()
            .ok_or_else(|| no_such_interface(name)),
        Err(e) if e.is_errno(libc::ENODEV) => Err(no_such_interface(name)),
        Err(e) => Err(e.into_net_error()),
    }
}

/// The MAC of link `name`, which must be an Ethernet link with one.
fn ethernet_mac(name: &str, link: &LinkMessage) -> Result<[u8; 6], NetError> {
    if link.header.link_layer_type != LinkLayerType::Ether {
        return Err(NetError::NotEthernet {
            name: name.to_string(),
            link_type: format!("{:?}", link.header.link_layer_type).to_lowercase(),
        });
    }
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .filter(|mac| *mac != [0; 6])
        .ok_or_else(|| NetError::NoMac {
            name: name.to_string(),
        })
}

/// The addresses of link `index` (called `name`) with their prefix
/// lengths, IPv4 first.
async fn nets(handle: &Handle, name: &str, index: u32) -> Result<Vec<(IpAddr, u8)>, NetError> {
    let addrs = netlink::timed(name, "read addresses", async {
        handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
    })
    .await
    .map_err(netlink::Failure::into_net_error)?;
    let mut nets: Vec<(IpAddr, u8)> = addrs
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(own_address)
        .collect();
    nets.sort_by_key(|(ip, len)| (ip.is_ipv6(), *ip, *len));
    nets.dedup();
    Ok(nets)
}

/// The interface's own address in `a`, with its prefix length.
fn own_address(a: &AddressMessage) -> Option<(IpAddr, u8)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's
    // on point-to-point links and the same otherwise.
    let local = a.attributes.iter().find_map(|at| match at {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|at| match at {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some((local.or(address)?, a.header.prefix_len))
}

/// Targets must be unicast addresses a neighbour entry can exist for.
fn check_target(addr: IpAddr) -> Result<(), NetError> {
    let bad = addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if bad {
        Err(NetError::BadTarget { addr })
    } else {
        Ok(())
    }
}

/// `02:00:00:00:00:21`, as the policy writes a MAC.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    crate::policy::Mac::new(*mac).to_string()
}
