//! Namespace tests. Each builds its own lab: two network namespaces joined by
//! a veth pair (`veth-a` 10.77.0.1/24 fd77::1/64 in the local one, `veth-b`
//! 10.77.0.2/24 fd77::2/64 with MAC 02:00:00:00:00:21 in the peer), runs the
//! code under test on a thread inside the local namespace, and removes both
//! namespaces on drop, even on panic. Needs root and `ip` (iproute2).
//! Every wait polls the watch channel against a generous deadline.
use std::{
    collections::BTreeMap,
    fs::File,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::sync::watch;
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use super::{NeighborWatch, NetError, entry::Mode, interface};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));
const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2));
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
/// For anything that needs one ARP/NDP exchange (or a notification).
const DEADLINE: Duration = Duration::from_secs(30);
/// For what needs the kernel's own timers to run (with the fast timers below).
const SLOW_DEADLINE: Duration = Duration::from_secs(90);

type Neighbors = BTreeMap<IpAddr, [u8; 6]>;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS...`, panicking with its stderr if it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n NS ARGS` (ARGS split at white space).
fn ip_in(ns: &str, args: &str) -> String {
    ip(&[
        &["-n", ns][..],
        &args.split_whitespace().collect::<Vec<_>>(),
    ]
    .concat())
}

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// The two namespaces of one test; removed on drop.
struct Lab {
    local: String,
    peer: String,
}

impl Lab {
    fn new() -> Self {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let base = format!("lbnt-{}-{n}", std::process::id());
        // The guard exists before anything is created.
        let lab = Lab {
            local: format!("{base}-a"),
            peer: format!("{base}-b"),
        };
        ip(&["netns", "add", &lab.local]);
        ip(&["netns", "add", &lab.peer]);
        let local_mac = super::fmt_mac(&LOCAL_MAC);
        let peer_mac = super::fmt_mac(&PEER_MAC);
        ip(&[
            "link", "add", "veth-a", "netns", &lab.local, "address", &local_mac, "type", "veth",
            "peer", "name", "veth-b", "netns", &lab.peer, "address", &peer_mac,
        ]);
        lab.local("addr add 10.77.0.1/24 dev veth-a");
        lab.local("addr add fd77::1/64 dev veth-a nodad");
        lab.peer("addr add 10.77.0.2/24 dev veth-b");
        lab.peer("addr add fd77::2/64 dev veth-b nodad");
        lab.local("link set veth-a up");
        lab.peer("link set veth-b up");
        lab
    }

    /// `ip -n LOCAL ARGS`.
    fn local(&self, args: &str) -> String {
        ip_in(&self.local, args)
    }

    /// `ip -n PEER ARGS`.
    fn peer(&self, args: &str) -> String {
        ip_in(&self.peer, args)
    }

    fn sysctl(ns: &str, settings: &[&str]) {
        ip(&[&["netns", "exec", ns, "sysctl", "-qw"][..], settings].concat());
    }

    /// Makes the local side's neighbour timers fast, so that what the kernel
    /// does on its own (re-probing, giving up) takes seconds, not a minute.
    fn fast_local_timers(&self) {
        for v in ["ipv4", "ipv6"] {
            Self::sysctl(
                &self.local,
                &[
                    &format!("net.{v}.neigh.veth-a.base_reachable_time_ms=500"),
                    &format!("net.{v}.neigh.veth-a.delay_first_probe_time=1"),
                    &format!("net.{v}.neigh.veth-a.retrans_time_ms=200"),
                ],
            );
        }
    }

    /// `veth-a`'s index.
    fn ifindex(&self) -> u32 {
        let line = self.local("-o link show veth-a");
        line.split(':').next().unwrap().trim().parse().unwrap()
    }

    /// The local kernel's entry for `ip` as `ip neigh` prints it.
    fn entry(&self, addr: IpAddr) -> String {
        self.local(&format!("neigh show {addr} dev veth-a"))
    }

    /// Asserts that the local kernel's entries for `addrs` are managed ones.
    fn assert_managed(&self, addrs: &[IpAddr]) {
        for addr in addrs {
            let entry = self.entry(*addr);
            assert!(entry.contains("managed"), "{addr} is not managed: {entry}");
        }
    }

    /// Asserts that no managed entry for `addrs` is left (the watch removes
    /// its own when it goes).
    fn assert_not_managed(&self, addrs: &[IpAddr]) {
        for addr in addrs {
            let entry = self.entry(*addr);
            assert!(!entry.contains("managed"), "{addr} left behind: {entry}");
        }
    }

    /// Starts a watch on `veth-a` (index `index`) for V4 and V6 and waits
    /// until both resolve to the peer's MAC; what most tests start from.
    async fn start_resolved(&self, index: u32) -> (NeighborWatch, watch::Receiver<Neighbors>) {
        let (watch, mut rx) = NeighborWatch::start(index, vec![V4, V6]).await.unwrap();
        self.wait(&mut rx, DEADLINE, "resolution of both targets", |m| {
            *m == both(PEER_MAC)
        })
        .await;
        (watch, rx)
    }

    /// Runs `f` to completion on a thread inside the local namespace, on its
    /// own single-threaded runtime (netlink sockets belong to the namespace
    /// of the thread that opens them).
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        // Logs show with a failing test's output.
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .with(Targets::new().with_target("lb_user", tracing::Level::DEBUG))
            .try_init();
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                enter_netns(&self.local);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Waits until the published map satisfies `ok`.
    async fn wait(
        &self,
        rx: &mut watch::Receiver<Neighbors>,
        deadline: Duration,
        what: &str,
        ok: impl FnMut(&Neighbors) -> bool,
    ) {
        let waited = tokio::time::timeout(deadline, rx.wait_for(ok))
            .await
            .map(|r| r.map(drop));
        match waited {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the watch stopped while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {deadline:?}; published: {:?}\nneighbours:\n{}",
                *rx.borrow(),
                self.local("neigh show dev veth-a")
            ),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.local, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[allow(unsafe_code)]
fn enter_netns(name: &str) {
    let file = File::open(format!("/run/netns/{name}")).expect("open namespace");
    // SAFETY: setns(2) with a valid open namespace fd and CLONE_NEWNET only
    // moves the calling thread into that network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", io::Error::last_os_error());
}

fn both(mac: [u8; 6]) -> Neighbors {
    [(V4, mac), (V6, mac)].into()
}

#[test]
fn interface_reports_index_mac_and_addresses() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let info = interface("veth-a").await.unwrap();
        assert_eq!(info.name, "veth-a");
        assert_eq!(info.index, index);
        assert_eq!(info.mac, LOCAL_MAC);
        let v4 = (IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 24);
        let v6 = (IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1)), 64);
        assert!(
            info.nets.contains(&v4) && info.nets.contains(&v6),
            "{:?}",
            info.nets
        );
        assert_eq!(info.nets[0], v4, "IPv4 first: {:?}", info.nets);
    });
}

#[test]
fn interface_errors_name_the_interface() {
    let lab = Lab::new();
    lab.run(|| async {
        let err = interface("nope0").await.unwrap_err();
        assert!(
            matches!(&err, NetError::NoSuchInterface { name } if name == "nope0"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "no interface named \"nope0\" in this network namespace"
        );
        let err = interface("a-name-too-long-for-linux").await.unwrap_err();
        assert!(matches!(err, NetError::NoSuchInterface { .. }), "{err:?}");
        let err = interface("lo").await.unwrap_err();
        assert!(
            matches!(&err, NetError::NotEthernet { name, .. } if name == "lo"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "interface lo is not an ethernet interface (link type loopback)"
        );
    });
}

#[test]
fn watch_resolves_ipv4_and_ipv6_with_managed_entries_and_removes_them_on_shutdown() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        // `_rx` (not `_`): the receiver lives on, as it would in `lb`.
        let (watch, _rx) = lab.start_resolved(index).await;
        lab.assert_managed(&[V4, V6]);
        watch.shutdown().await.unwrap();
        lab.assert_not_managed(&[V4, V6]);
    });
}

#[test]
fn dropping_the_watch_removes_its_managed_entries() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = lab.start_resolved(index).await;
        drop(watch);
        lab.assert_not_managed(&[V4, V6]);
        let closed =
            tokio::time::timeout(DEADLINE, async { while rx.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "the channel closes with the watch");
    });
}

#[test]
fn watch_follows_an_announced_mac_change() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = lab.start_resolved(index).await;
        // A replaced backend announces its new MAC (gratuitous ARP,
        // unsolicited neighbour advertisement).
        Lab::sysctl(
            &lab.peer,
            &[
                "net.ipv4.conf.veth-b.arp_notify=1",
                "net.ipv6.conf.veth-b.ndisc_notify=1",
            ],
        );
        lab.peer("link set veth-b address 02:00:00:00:00:22");
        lab.wait(&mut rx, DEADLINE, "the announced MAC", |m| {
            *m == both(mac(0x22))
        })
        .await;
        lab.assert_managed(&[V4, V6]);
        watch.shutdown().await.unwrap();
    });
}

#[test]
fn watch_follows_a_silent_mac_change_through_kernel_reprobes() {
    let lab = Lab::new();
    lab.fast_local_timers();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = lab.start_resolved(index).await;
        // No announcement: the managed entries' own re-probes must notice.
        lab.peer("link set veth-b address 02:00:00:00:00:23");
        lab.wait(&mut rx, SLOW_DEADLINE, "the new MAC", |m| {
            *m == both(mac(0x23))
        })
        .await;
        lab.assert_managed(&[V4, V6]);
        watch.shutdown().await.unwrap();
    });
}

#[test]
fn watch_drops_a_target_that_goes_away_and_takes_it_back() {
    let lab = Lab::new();
    lab.fast_local_timers();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = lab.start_resolved(index).await;

        lab.peer("addr del 10.77.0.2/24 dev veth-b");
        lab.wait(&mut rx, SLOW_DEADLINE, "loss of the IPv4 target", |m| {
            !m.contains_key(&V4)
        })
        .await;
        assert_eq!(rx.borrow().get(&V6), Some(&PEER_MAC));
        lab.peer("addr del fd77::2/64 dev veth-b");
        lab.wait(&mut rx, SLOW_DEADLINE, "loss of the IPv6 target", |m| {
            m.is_empty()
        })
        .await;

        lab.peer("addr add 10.77.0.2/24 dev veth-b");
        lab.peer("addr add fd77::2/64 dev veth-b nodad");
        lab.wait(&mut rx, DEADLINE, "both targets back", |m| {
            *m == both(PEER_MAC)
        })
        .await;
        lab.assert_managed(&[V4, V6]);

        // The peer's interface disappears (and with it ours, the pair).
        lab.peer("link del veth-b");
        lab.wait(&mut rx, DEADLINE, "loss of both targets", |m| m.is_empty())
            .await;
        watch.shutdown().await.unwrap();
    });
}

#[test]
fn set_targets_adds_and_removes_targets() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = NeighborWatch::start(index, vec![]).await.unwrap();
        assert!(rx.borrow().is_empty());
        watch.set_targets(vec![V4]).await.unwrap();
        lab.wait(&mut rx, DEADLINE, "resolution of the IPv4 target", |m| {
            *m == [(V4, PEER_MAC)].into()
        })
        .await;

        watch.set_targets(vec![V6]).await.unwrap();
        assert!(
            !rx.borrow().contains_key(&V4),
            "a removed target is out of the map at once"
        );
        assert!(
            !lab.entry(V4).contains("managed"),
            "its entry is removed: {}",
            lab.entry(V4)
        );
        lab.wait(&mut rx, DEADLINE, "resolution of the IPv6 target", |m| {
            *m == [(V6, PEER_MAC)].into()
        })
        .await;

        let err = watch
            .set_targets(vec![V6, "224.0.0.1".parse().unwrap()])
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "target 224.0.0.1 is not a unicast address");
        watch.shutdown().await.unwrap();
        assert!(!lab.entry(V6).contains("managed"), "{}", lab.entry(V6));
    });
}

#[test]
fn fallback_without_managed_entries_resolves_too() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let (watch, mut rx) = NeighborWatch::start_with_mode(index, vec![V4, V6], Mode::Use)
            .await
            .unwrap();
        lab.wait(&mut rx, DEADLINE, "resolution of both targets", |m| {
            *m == both(PEER_MAC)
        })
        .await;
        for addr in [V4, V6] {
            assert!(
                !lab.entry(addr).contains("managed"),
                "{addr}: {}",
                lab.entry(addr)
            );
        }
        watch.shutdown().await.unwrap();
    });
}

#[test]
fn static_entries_are_used_as_they_are_and_ordinary_ones_made_managed() {
    let lab = Lab::new();
    let index = lab.ifindex();
    let fixed: IpAddr = "10.77.0.3".parse().unwrap();
    lab.local("neigh add 10.77.0.3 dev veth-a lladdr 02:00:00:00:00:33 nud permanent");
    // An ordinary cache entry, as traffic would leave (no packet needed).
    lab.local("neigh replace 10.77.0.2 dev veth-a use");
    lab.run(|| async {
        let (watch, mut rx) = NeighborWatch::start(index, vec![fixed, V4]).await.unwrap();
        assert_eq!(rx.borrow().get(&fixed), Some(&mac(0x33)), "known at start");
        lab.wait(&mut rx, DEADLINE, "resolution of the IPv4 target", |m| {
            m.get(&V4) == Some(&PEER_MAC)
        })
        .await;
        lab.assert_managed(&[V4]);
        watch.shutdown().await.unwrap();
        assert!(
            lab.entry(fixed).contains("PERMANENT"),
            "left alone: {}",
            lab.entry(fixed)
        );
        assert!(!lab.entry(V4).contains("managed"), "{}", lab.entry(V4));
    });
}

#[test]
fn start_fails_for_a_missing_interface_or_a_bad_target() {
    let lab = Lab::new();
    let index = lab.ifindex();
    lab.run(|| async {
        let err = NeighborWatch::start(9999, vec![V4]).await.err().unwrap();
        assert!(
            matches!(err, NetError::NoSuchIndex { index: 9999 }),
            "{err:?}"
        );
        let err = NeighborWatch::start(index, vec!["0.0.0.0".parse().unwrap()])
            .await
            .err()
            .unwrap();
        assert!(matches!(err, NetError::BadTarget { .. }), "{err:?}");
    });
}
