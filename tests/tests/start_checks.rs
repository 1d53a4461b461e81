//! What `lb run` checks of its host at start, in the lab with the problems
//! made on purpose: t2 answers ARP for the VIP on its lo (arp_ignore 0),
//! t3 has the IPv6 VIP on its eth0, the lb's namespace filters reverse
//! paths strictly while its route to t3 leaves by another interface, and
//! `lb` runs in generic mode. Each must be a log line that names it and
//! its fix. Needs root and the `lb` binary.
use std::time::{Duration, Instant};

use lb_tests::{Lab, Node, policy::LabPolicy, run::serial};

fn wait_for_log(lb: &lb_tests::lb::LbProcess, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lb.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}:\n{}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_problems_are_named_with_their_fix_at_start() {
    let _serial = serial();
    let lab = Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    lab.exec(
        Node::Target(1),
        &["sysctl", "-w", "net.ipv4.conf.all.arp_ignore=0"],
    )
    .unwrap();
    lab.exec(
        Node::Target(2),
        &[
            "ip",
            "addr",
            "add",
            "fd00:3::49/128",
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .unwrap();
    for cmd in [
        &[
            "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1",
        ][..],
        &["ip", "link", "set", "other0", "up"],
        &["ip", "route", "add", "10.0.3.13/32", "dev", "other0"],
        &["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"],
    ] {
        lab.exec(Node::Lb, cmd).unwrap();
    }
    let policy = lab.write_file("policy.yaml", &LabPolicy::default().yaml());
    let lb = lab
        .start_lb(&policy, &["--xdp-mode", "generic"])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_log(
        &lb,
        "VIP 10.0.3.49 is answered for by 02:00:00:00:00:12 (target 10.0.3.12) besides this host",
    );
    wait_for_log(
        &lb,
        "VIP fd00:3::49 is answered for by 02:00:00:00:00:13 (target fd00:3::13) besides this host",
    );
    wait_for_log(
        &lb,
        "`lb target-setup --vip 10.0.3.49 --check` says what to fix",
    );
    wait_for_log(
        &lb,
        "strict reverse-path filtering (rp_filter 1) on eth0 drops what 10.0.3.13 sends to this host",
    );
    wait_for_log(&lb, "set net.ipv4.conf.eth0.rp_filter=2");
    wait_for_log(
        &lb,
        "the XDP program runs in generic (skb) mode, as asked (--xdp-mode generic)",
    );
    let log = lb.log();
    for quiet in [
        "answered for by 02:00:00:00:00:11",
        "drops what 10.0.3.11",
        "drops what 10.0.3.12",
    ] {
        assert!(!log.contains(quiet), "a sound host named ({quiet}):\n{log}");
    }
}
