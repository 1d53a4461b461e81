//! The namespace lab on its own, without `lb`: the wiring every end-to-end
//! test relies on. Needs root.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Mutex,
    thread,
    time::Duration,
};

use lb_tests::{
    Lab, Node,
    capture::{Capture, Frame, Payload},
    topo::{self, CLIENT_MAC, LB_MAC, LB4, TARGETS, VIP4, VIP6, fmt_mac},
    xdp,
};

/// One lab at a time: they are independent, but two cores are not enough to
/// run several with their servers without timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

fn lab() -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    (guard, lab)
}

fn capture(lab: &Lab, node: Node) -> Capture {
    Capture::start(&lab.ns(node)).unwrap_or_else(|e| panic!("capture: {e}"))
}

/// The client's neighbour entry for `ip`, as `ip neigh` shows it.
fn neighbour(lab: &Lab, node: Node, ip: IpAddr) -> String {
    lab.exec(node, &["ip", "neigh", "show", &ip.to_string()])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ping(lab: &Lab, node: Node, ip: IpAddr) {
    lab.exec(node, &["ping", "-c", "1", "-W", "2", &ip.to_string()])
        .unwrap_or_else(|e| panic!("ping {ip}: {e}"));
}

/// `Lab::new` already proved that the client and the lb reach every target's
/// own IPv4 and IPv6 address; here: who answers for the VIPs. Only the lb
/// may: a target answering ARP or neighbour solicitations for the VIP (which
/// it has on lo) would steal the traffic from the load balancer.
#[test]
fn only_the_lb_answers_for_the_vips() {
    let (_serial, lab) = lab();
    let cap = capture(&lab, Node::Client);
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        lab.exec(
            Node::Client,
            &["ip", "neigh", "flush", "to", &vip.to_string()],
        )
        .unwrap();
        ping(&lab, Node::Client, vip);
    }
    // Late answers from a misconfigured target would come within microseconds;
    // give them ample time.
    thread::sleep(Duration::from_millis(300));
    let frames = cap.finish().unwrap();
    let arp: Vec<&Frame> = frames
        .iter()
        .filter(|f| matches!(f.payload, Payload::ArpReply { sender_ip, .. } if sender_ip == VIP4))
        .collect();
    let nd: Vec<&Frame> = frames
        .iter()
        .filter(|f| matches!(f.payload, Payload::NeighborAdvert { target, .. } if target == VIP6))
        .collect();
    assert!(!arp.is_empty(), "no ARP reply for {VIP4} seen");
    assert!(!nd.is_empty(), "no neighbour advertisement for {VIP6} seen");
    for f in arp.iter().chain(&nd) {
        assert_eq!(
            f.src_mac,
            LB_MAC,
            "answer for a VIP from {}: {f:?}",
            fmt_mac(f.src_mac)
        );
    }
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        let entry = neighbour(&lab, Node::Client, vip);
        assert!(
            entry.contains(&fmt_mac(LB_MAC)),
            "client's entry for {vip}: {entry}"
        );
    }
}

/// A target that sends from the VIP (as every DSR reply does) must not make
/// the client re-point its VIP entry at the target: its own ARP requests and
/// neighbour solicitations must carry its own address (arp_announce=2 for
/// IPv4; IPv6 never uses an address of lo on eth0).
#[test]
fn targets_do_not_announce_the_vip() {
    let (_serial, lab) = lab();
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        ping(&lab, Node::Client, vip);
    }
    let cap = capture(&lab, Node::Client);
    for (i, _) in TARGETS.iter().enumerate() {
        lab.exec(Node::Target(i), &["ip", "neigh", "flush", "dev", "eth0"])
            .unwrap();
        lab.run_in(Node::Target(i), || {
            for (vip, client) in [
                (IpAddr::from(VIP4), IpAddr::from(topo::client4(0))),
                (IpAddr::from(VIP6), IpAddr::from(topo::client6(0))),
            ] {
                let socket = UdpSocket::bind(SocketAddr::new(vip, 0)).unwrap();
                // The discard port: nothing listens, the client answers with
                // an ICMP error at most.
                socket
                    .send_to(b"from the vip", SocketAddr::new(client, 9))
                    .unwrap();
            }
        });
    }
    thread::sleep(Duration::from_millis(300));
    let frames = cap.finish().unwrap();
    let mut solicitations = 0;
    for f in &frames {
        match f.payload {
            Payload::ArpRequest { sender_ip, .. } if f.src_mac != CLIENT_MAC => {
                solicitations += 1;
                assert_ne!(
                    sender_ip,
                    VIP4,
                    "ARP request from {} claims the VIP",
                    fmt_mac(f.src_mac)
                );
            }
            Payload::NeighborSolicit { src, .. } if f.src_mac != CLIENT_MAC => {
                solicitations += 1;
                assert_ne!(
                    src,
                    VIP6,
                    "solicitation from {} comes from the VIP",
                    fmt_mac(f.src_mac)
                );
            }
            _ => {}
        }
    }
    assert!(
        solicitations >= 2 * TARGETS.len(),
        "targets sent {solicitations} solicitations: {frames:?}"
    );
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        let entry = neighbour(&lab, Node::Client, vip);
        assert!(
            entry.contains(&fmt_mac(LB_MAC)),
            "client's entry for {vip}: {entry}"
        );
    }
}

/// Native XDP_TX out of the lb's veth reaches the segment: the lab's
/// reflect program (`lb_tests::xdp::REFLECT`, a MAC swap) on the lb's eth0
/// sends the client's datagrams back to it. This is what needs the XDP_PASS
/// program and `tx off` on `p-lb`.
#[test]
fn native_xdp_tx_from_the_lb_reaches_the_client() {
    let (_serial, lab) = lab();
    // The reflected ARP request would carry a broadcast source MAC, which the
    // bridge drops: give the client the lb's MAC.
    lab.exec(
        Node::Client,
        &[
            "ip",
            "neigh",
            "replace",
            &LB4.to_string(),
            "lladdr",
            &fmt_mac(LB_MAC),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let _reflect = lab.run_in(Node::Lb, || {
        xdp::attach_native(&xdp::REFLECT, "eth0").unwrap_or_else(|e| panic!("{e}"))
    });
    let cap = capture(&lab, Node::Client);
    let sent = 50;
    lab.run_in(Node::Client, || {
        let socket = UdpSocket::bind((topo::client4(0), 0)).unwrap();
        for _ in 0..sent {
            socket.send_to(b"reflect me", (LB4, 9)).unwrap();
        }
    });
    let reflected = |frames: &[Frame]| {
        frames
            .iter()
            .filter(|f| {
                f.src_mac == LB_MAC
                    && f.dst_mac == CLIENT_MAC
                    && matches!(f.payload, Payload::Ip { dst, dport: 9, .. } if dst == IpAddr::from(LB4))
            })
            .count()
    };
    cap.wait_for(Duration::from_secs(5), |f| reflected(f) >= sent);
    let frames = cap.finish().unwrap();
    assert_eq!(
        reflected(&frames),
        sent,
        "reflected frames seen by the client"
    );
}
