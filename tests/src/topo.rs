//! The lab's fixed addressing plan: one L2 segment (10.0.3.0/24, fd00:3::/64)
//! with a client, the load balancer and three DSR targets. Every lab uses the
//! same addresses and MACs (each lab lives in its own namespaces), so tests
//! can reason about them.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A MAC address.
pub type Mac = [u8; 6];

/// The load balancer's interface MAC.
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
/// The client's interface MAC.
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x64];

/// The listeners' VIPs (on the load balancer's eth0 and on each target's lo).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 49);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x49);

/// The load balancer's own addresses.
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 2);

/// The second load balancer of a lab built with `LabOptions::second_lb`
/// (`Node::Lb2`): its MAC and its own addresses. It holds no VIP: only
/// routes (ECMP, through the router) bring it the VIPs' traffic.
pub const LB2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x03];
pub const LB2_4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 3);
pub const LB2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 3);

/// How many addresses of each family the client has: 10.0.3.100-107 and
/// fd00:3::100-107. The affinity tests need several clients so that "not every
/// client lands on the same target" holds by design, not by luck.
pub const CLIENT_ADDRS: usize = 8;

/// The client's `i`-th IPv4 address (10.0.3.100 + i).
pub fn client4(i: usize) -> Ipv4Addr {
    assert!(i < CLIENT_ADDRS, "the client has {CLIENT_ADDRS} addresses");
    Ipv4Addr::new(10, 0, 3, 100 + i as u8)
}

/// The client's `i`-th IPv6 address (fd00:3::100 + i).
pub fn client6(i: usize) -> Ipv6Addr {
    assert!(i < CLIENT_ADDRS, "the client has {CLIENT_ADDRS} addresses");
    Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x100 + i as u16)
}

/// One DSR target of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSpec {
    /// Also what its server answers (`t1\n`).
    pub name: &'static str,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub mac: Mac,
}

impl TargetSpec {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }
}

pub const TARGETS: [TargetSpec; 3] = [
    TargetSpec {
        name: "t1",
        v4: Ipv4Addr::new(10, 0, 3, 11),
        v6: Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x11),
        mac: [0x02, 0, 0, 0, 0, 0x11],
    },
    TargetSpec {
        name: "t2",
        v4: Ipv4Addr::new(10, 0, 3, 12),
        v6: Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x12),
        mac: [0x02, 0, 0, 0, 0, 0x12],
    },
    TargetSpec {
        name: "t3",
        v4: Ipv4Addr::new(10, 0, 3, 13),
        v6: Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x13),
        mac: [0x02, 0, 0, 0, 0, 0x13],
    },
];

/// The target with this address (either family), if any.
pub fn target_by_ip(ip: IpAddr) -> Option<&'static TargetSpec> {
    TARGETS
        .iter()
        .find(|t| ip == IpAddr::V4(t.v4) || ip == IpAddr::V6(t.v6))
}

/// The target with this MAC, if any.
pub fn target_by_mac(mac: Mac) -> Option<&'static TargetSpec> {
    TARGETS.iter().find(|t| t.mac == mac)
}

/// Ports the targets' servers listen on: TCP on every address, UDP on the VIPs
/// (a DSR UDP server must answer from the VIP, so it binds to it). The name
/// then close on `TCP_PORT`, UDP answers on `UDP_PORT`.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
/// The targets' long-lived-connection service: the name for every line
/// received (`lb-lab-server --lines`).
pub const LINES_PORT: u16 = 81;
/// More lines ports (`lb-lab-server --lines`), for tests with several
/// groups of long-lived connections (a listener port is its targets' port).
pub const MORE_LINES_PORTS: [u16; 2] = [82, 83];
/// The targets' HTTP server (`lb-lab-server --http`), for HTTP health checks.
pub const HTTP_PORT: u16 = 8080;
/// The same HTTP server over TLS with a self-signed certificate
/// (`lb-lab-server --https`), for HTTPS health checks.
pub const HTTPS_PORT: u16 = 8443;

/// The targets' download service (`lb-lab-server --bulk`): a byte count
/// in, the name and that many bytes out.
pub const BULK_PORT: u16 = 85;

/// The router of a lab built with `LabOptions::router`: its `eth0` on the
/// segment, its `eth1` toward the remote client's network (10.0.4.0/24,
/// fd00:4::/64) with the smaller MTU [`ROUTER_MTU`].
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 1);
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER_REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 0, 4, 1);
pub const ROUTER_REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 4, 0, 0, 0, 0, 0, 1);
pub const ROUTER_REMOTE_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
/// The MTU of the router's `eth1` only (the remote client's own interface
/// keeps 1500, so its MSS stays 1460): the IPv6 minimum, 1280, for both
/// families.
pub const ROUTER_MTU: u32 = 1280;
/// The remote client, behind the router.
pub const REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 0, 4, 100);
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 4, 0, 0, 0, 0, 0, 0x100);
pub const REMOTE_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x64];
/// The remote client's networks.
pub const REMOTE_NET4: &str = "10.0.4.0/24";
pub const REMOTE_NET6: &str = "fd00:4::/64";

/// `02:00:00:00:00:11`.
pub fn fmt_mac(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The namespaces of one lab, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// Holds the bridge `br0` and one port per other node (`p-cl`, `p-lb`, `p-t1`...).
    Switch,
    Client,
    Lb,
    /// The second load balancer (`LabOptions::second_lb` only); on the
    /// bridge as `p-lb2`.
    Lb2,
    /// Index into [`TARGETS`].
    Target(usize),
    /// The router between the segment and the remote client
    /// (`LabOptions::router` only); on the bridge as `p-rt`.
    Router,
    /// The client behind the router (`LabOptions::router` only).
    Remote,
}

impl Node {
    /// Every node except the switch, in creation order (the router's two
    /// are not among them: see [`Node::routed`]).
    pub fn hosts() -> [Node; 5] {
        [
            Node::Client,
            Node::Lb,
            Node::Target(0),
            Node::Target(1),
            Node::Target(2),
        ]
    }

    /// The nodes `LabOptions::router` adds: the router (on the bridge) and
    /// the remote client (behind it).
    pub fn routed() -> [Node; 2] {
        [Node::Router, Node::Remote]
    }

    /// Suffix of its namespace name, and of its bridge port name (`p-<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Node::Switch => "sw",
            Node::Client => "cl",
            Node::Lb => "lb",
            Node::Lb2 => "lb2",
            Node::Target(0) => "t1",
            Node::Target(1) => "t2",
            Node::Target(2) => "t3",
            Node::Target(i) => panic!("the lab has {} targets, not {}", TARGETS.len(), i + 1),
            Node::Router => "rt",
            Node::Remote => "rc",
        }
    }

    /// The bridge port in the switch namespace that faces this node (the
    /// remote client has none: it hangs off the router).
    pub fn port(self) -> String {
        format!("p-{}", self.suffix())
    }

    /// The MAC of its `eth0` (the switch has none).
    pub fn mac(self) -> Option<Mac> {
        match self {
            Node::Switch => None,
            Node::Client => Some(CLIENT_MAC),
            Node::Lb => Some(LB_MAC),
            Node::Lb2 => Some(LB2_MAC),
            Node::Target(i) => Some(TARGETS[i].mac),
            Node::Router => Some(ROUTER_MAC),
            Node::Remote => Some(REMOTE_MAC),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(Node::Target(2).port(), "p-t3");
        assert_eq!(Node::Router.port(), "p-rt");
        assert_eq!(Node::Remote.suffix(), "rc");
        assert_eq!(Node::Lb2.port(), "p-lb2");
        assert_eq!(fmt_mac(Node::Lb2.mac().unwrap()), "02:00:00:00:00:03");
        assert_eq!(fmt_mac(Node::Remote.mac().unwrap()), "02:00:00:00:01:64");
        assert_eq!(fmt_mac(TARGETS[0].mac), "02:00:00:00:00:11");
        assert_eq!(client4(7), Ipv4Addr::new(10, 0, 3, 107));
        assert_eq!(client6(1).to_string(), "fd00:3::101");
        assert_eq!(
            target_by_ip("fd00:3::12".parse().unwrap()).unwrap().name,
            "t2"
        );
        assert_eq!(target_by_mac([2, 0, 0, 0, 0, 0x13]).unwrap().name, "t3");
        assert!(target_by_ip(VIP4.into()).is_none());
    }
}
