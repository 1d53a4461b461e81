//! `lb run` and its interface: the NIC deleted and made again under the
//! same name while `lb` runs (a driver reset, a re-created VF) gets the
//! data plane back. Needs root and the `lb` binary.
use std::time::{Duration, Instant};

use lb_tests::{
    LabRun, Node,
    client::{Proto, Tally},
    policy::LabPolicy,
    topo::{TARGETS, TCP_PORT, client4},
};

/// 30 new TCP connections to the VIP's port 80 from client address 0,
/// ports `first..`.
fn burst(s: &LabRun, first: u16) -> Tally {
    let deadline = Instant::now() + Duration::from_secs(30);
    s.burst(
        Proto::Tcp,
        client4(0).into(),
        Some(first),
        TCP_PORT,
        30,
        deadline,
    )
}

fn balanced(tally: &Tally) -> bool {
    tally.failed == 0 && TARGETS.iter().all(|t| tally.count(t.name) > 0)
}

fn ifindex(s: &LabRun) -> String {
    let link = s
        .lab
        .exec(Node::Lb, &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    link.split(':').next().unwrap().to_owned()
}

/// Within this of the interface's return, new connections are balanced to
/// every target again (lb looks every second; the targets' MACs are
/// resolved again on the new interface).
const BACK_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn a_remade_interface_gets_the_data_plane_back() {
    let mut s = LabRun::start(&LabPolicy::default());
    let before = burst(&s, 20000);
    assert!(balanced(&before), "before: {before}");
    let old = ifindex(&s);
    s.lab
        .remake_lb_interface()
        .unwrap_or_else(|e| panic!("{e}"));
    let remade = Instant::now();
    assert_ne!(ifindex(&s), old, "the interface has a new index");
    let mut first = 21000;
    let took = loop {
        let tally = burst(&s, first);
        first += 30;
        if balanced(&tally) {
            break remade.elapsed();
        }
        assert!(
            remade.elapsed() < BACK_WITHIN,
            "not balanced {BACK_WITHIN:?} after the interface came back: {tally}\n{}",
            s.lb.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "balanced again {} ms after the interface was made again",
        took.as_millis()
    );
    let link = s
        .lab
        .exec(Node::Lb, &["ip", "-d", "link", "show", "eth0"])
        .unwrap();
    assert!(
        link.contains("prog/xdp"),
        "no XDP program on the new eth0: {link}"
    );
    let log = s.lb.log();
    for line in [
        "the interface was made again (a new index): following it",
        "the data plane is attached to the interface again",
    ] {
        assert!(log.contains(line), "the log does not say {line:?}:\n{log}");
    }
}
