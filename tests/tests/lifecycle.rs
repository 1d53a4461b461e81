//! Targets leaving gracefully, groups failing over to their backup, and
//! `lb apply`: long-lived TCP connections (`lb_tests::streams`) through a
//! `round_robin` group of the three lab targets, counted per connection,
//! while targets are drained, removed, put back, and their health servers
//! stopped and started; new connections show where new flows go.
//!
//! Needs root and the `lb` binary (`cargo xtask test` builds it).
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    Lab, LabRun, Node,
    client::{self, Proto},
    lb::{ClientRun, LbProcess},
    status::Status,
    streams::{self, Report, Spec, Streams},
    topo::{self, LINES_PORT, TARGETS, VIP4},
};
use serde_json::Value;

/// Streams, four per target under round robin.
const STREAMS: usize = 12;
/// How long a step may take on a loaded 2-core machine.
const T: Duration = Duration::from_secs(30);

fn ip(i: usize) -> IpAddr {
    TARGETS[i].v4.into()
}

/// The lab policy of these tests: listener `lines` on the lines port of
/// the IPv4 VIP, to group `web` (round robin over `web`'s targets).
#[derive(Debug, Clone)]
struct Web {
    targets: Vec<usize>,
    delay_s: u32,
    rebalance: bool,
}

impl Web {
    fn new(targets: &[usize], delay_s: u32, rebalance: bool) -> Web {
        Web {
            targets: targets.to_vec(),
            delay_s,
            rebalance,
        }
    }

    fn yaml(&self) -> String {
        let mode = if self.rebalance {
            "rebalance"
        } else {
            "no_rebalance"
        };
        let mut y = format!(
            "interface: eth0\nlisteners:\n  - {{ name: lines, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
             target_groups:\n  - name: web\n    protocol: tcp\n    algorithm: round_robin\n    \
             deregistration_delay_s: {}\n    \
             target_failover: {{ on_unhealthy: {mode}, on_deregistration: {mode} }}\n    targets:\n",
            self.delay_s
        );
        for &i in &self.targets {
            y += &format!("      - {{ ip: {} }}\n", TARGETS[i].v4);
        }
        y
    }
}

/// `STREAMS` streams to the lines port, each from its own client address
/// and port.
fn specs() -> Vec<Spec> {
    (0..STREAMS)
        .map(|i| Spec {
            name: format!("s#{i}"),
            proto: Proto::Tcp,
            src: SocketAddr::new(
                topo::client4(i % topo::CLIENT_ADDRS).into(),
                32000 + i as u16,
            ),
            dst: SocketAddr::new(VIP4.into(), LINES_PORT),
        })
        .collect()
}

/// `n` new connections to `vip`'s lines port from the client's address 7
/// (of `vip`'s family), ports `first..`: how many each target answered, and
/// how many failed.
fn new_connections(lab: &Lab, vip: IpAddr, first: u16, n: u16) -> ([usize; 3], usize) {
    let answers: Vec<Option<String>> = lab.run_in(Node::Client, || {
        (0..n)
            .map(|i| {
                let client: IpAddr = match vip {
                    IpAddr::V4(_) => topo::client4(7).into(),
                    IpAddr::V6(_) => topo::client6(7).into(),
                };
                let src = SocketAddr::new(client, first + i);
                let dst = SocketAddr::new(vip, LINES_PORT);
                client::lines_ask(src, dst, Duration::from_secs(2)).ok()
            })
            .collect()
    });
    let spread = TARGETS.map(|t| {
        answers
            .iter()
            .filter(|a| a.as_deref() == Some(t.name))
            .count()
    });
    (spread, answers.iter().filter(|a| a.is_none()).count())
}

/// Ports for the next round of new connections (each round its own, so no
/// connection meets another's TIME_WAIT).
struct Ports(u16);

impl Ports {
    fn next(&mut self, n: u16) -> u16 {
        let first = self.0;
        self.0 += n;
        first
    }
}

/// `lb ARGS...` against the lab's lb, which must exit with `code`.
fn cli(lb: &LbProcess, args: &[&str], code: i32) -> ClientRun {
    let run = lb.client(args).unwrap();
    assert_eq!(
        run.code,
        Some(code),
        "lb {}: {run:?}\nlb's log:\n{}",
        args.join(" "),
        lb.log()
    );
    run
}

fn target_field<'a>(st: &'a Status, group: &str, i: usize, field: &str) -> Option<&'a Value> {
    st.target(group, ip(i))?.get(field)
}

/// Waits until target `i` of `group` is in operating state `state`.
fn wait_state(lb: &LbProcess, group: &str, i: usize, state: &str) -> Status {
    lb.wait_for(T, &format!("{} {state}", TARGETS[i].name), |st: &Status| {
        (st.state(group, ip(i)) == Some(state)).then(|| st.clone())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb.log()))
    .value
}

fn assert_none_broken(reports: &[Report], steps: &streams::Steps) {
    let broken = streams::broken(reports);
    assert!(
        broken.is_empty(),
        "{} of {} streams broke:\n{}\nsteps:\n{}",
        broken.len(),
        reports.len(),
        broken.join("\n"),
        steps.show()
    );
}

/// A target removed from the policy (by `lb apply`) drains: it keeps every
/// connection until its delay ends and gets no new one; then, with
/// `rebalance`, its connections move (their next packet goes to another
/// target, which resets them) and it leaves the group. The other targets'
/// connections never notice.
#[test]
fn a_removed_target_keeps_its_connections_until_the_delay_then_they_move() {
    const DELAY: u32 = 8;
    let s = LabRun::start_yaml(&Web::new(&[0, 1, 2], DELAY, true).yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    assert_eq!(streams.on("t2"), STREAMS / 3, "round robin spreads streams");
    let mut ports = Ports(40000);

    steps.push("lb apply: t2 removed");
    let without_t2 = s
        .lab
        .write_file("without-t2.yaml", &Web::new(&[0, 2], DELAY, true).yaml());
    let sent = Instant::now();
    let applied = cli(&s.lb, &["apply", without_t2.to_str().unwrap()], 0);
    assert!(
        applied.stdout.contains(&format!(
            "- target {} in web: draining: {} active flows, unused in {DELAY} s",
            ip(1),
            STREAMS / 3
        )),
        "{}",
        applied.stdout
    );
    let st = s.lb.report().unwrap();
    assert_eq!(
        st.state("web", ip(1)),
        Some("draining"),
        "{}",
        st.show(Some("web"))
    );
    assert_eq!(
        target_field(&st, "web", 1, "provisioning"),
        Some(&Value::from("being_removed"))
    );
    assert_eq!(
        target_field(&st, "web", 1, "excluded"),
        Some(&Value::from("draining"))
    );
    let remaining = target_field(&st, "web", 1, "drain").unwrap()["remaining_s"]
        .as_u64()
        .unwrap();
    assert!(remaining <= u64::from(DELAY), "{remaining}");
    // No new connection reaches it.
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!((spread[1], failed), (0, 0), "new connections {spread:?}");
    // Still inside the delay: every connection goes on.
    streams.wait_answers(3, T);
    if sent.elapsed() < Duration::from_secs(u64::from(DELAY) - 2) {
        assert_eq!(streams.broken_now(), 0, "a stream broke inside the delay");
    }

    steps.push("the delay ends");
    s.lb.wait_for(
        T + Duration::from_secs(DELAY.into()),
        "t2 gone",
        |st: &Status| st.target("web", ip(1)).is_none().then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.lb.log()));
    streams.wait_answers(3, T);
    let started = streams.started();
    let reports = streams.stop();
    let (on_t2, others): (Vec<Report>, Vec<Report>) =
        reports.into_iter().partition(|r| r.target == "t2");
    assert_none_broken(&others, &steps);
    // Drains are timed in whole seconds: the delay may end up to 1 s early.
    let earliest = sent + Duration::from_secs(u64::from(DELAY) - 1);
    for r in &on_t2 {
        let (at, why) = r.broken.as_ref().unwrap_or_else(|| {
            panic!("{} stayed on t2 after its delay (rebalance): {r:?}", r.name)
        });
        assert!(
            started + *at >= earliest,
            "{} broke {:.1} s after the apply, inside the {DELAY} s delay: {why}",
            r.name,
            (started + *at).duration_since(sent).as_secs_f64()
        );
    }
}

/// `lb drain` takes a target out without a change of policy: no new
/// connection, every connection kept (through a restart of `lb`, which
/// keeps the drain); `lb undrain` in the middle of the delay puts it back
/// with its connections. Bad drains are refused with exit code 1.
#[test]
fn a_drain_survives_a_restart_and_undrain_keeps_the_connections() {
    const DELAY: u32 = 20;
    let s = LabRun::start_yaml(&Web::new(&[0, 1, 2], DELAY, false).yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    let mut ports = Ports(40100);
    let t2 = ip(1).to_string();

    steps.push("lb drain web t2");
    let drained = cli(&s.lb, &["drain", "web", &t2], 0);
    assert!(
        drained
            .stdout
            .contains(&format!("draining, {} active flows", STREAMS / 3)),
        "{}",
        drained.stdout
    );
    let st = s.lb.report().unwrap();
    assert_eq!(st.state("web", ip(1)), Some("draining"));
    assert_eq!(
        target_field(&st, "web", 1, "provisioning"),
        Some(&Value::from("applied")),
        "drained by command, it stays in the policy"
    );
    let until = target_field(&st, "web", 1, "drain").unwrap()["until"].clone();
    let refused = [
        (vec!["drain", "web", t2.as_str()], "already draining"),
        (vec!["drain", "nope", t2.as_str()], "`nope` does not exist"),
        (
            vec!["drain", "web", "10.0.3.99"],
            "is not in target group `web`",
        ),
        (vec!["undrain", "web", "10.0.3.11"], "is not drained"),
    ];
    for (args, says) in refused {
        let run = cli(&s.lb, &args, 1);
        assert!(run.stderr.contains(says), "lb {args:?}: {run:?}");
    }
    let (spread, _) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(spread, [6, 0, 6], "new connections while t2 drains");

    steps.push("lb restarted");
    let (lb, lab, _serial) = s.into_parts();
    lb.stop().unwrap();
    let policy = lab.dir().join("policy.yaml");
    let lb = lab.start_lb(&policy, &["--xdp-mode", "native"]).unwrap();
    let st = lb.report().unwrap();
    assert_eq!(
        st.state("web", ip(1)),
        Some("draining"),
        "{}",
        st.show(Some("web"))
    );
    assert_eq!(
        target_field(&st, "web", 1, "drain").unwrap()["until"],
        until
    );
    let (spread, _) = new_connections(&lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(
        spread[1], 0,
        "new connections after the restart: {spread:?}"
    );
    streams.wait_answers(3, T);

    steps.push("lb undrain web t2");
    let undrained = cli(&lb, &["undrain", "web", &t2], 0);
    assert!(undrained.stdout.contains("active again"), "{undrained:?}");
    let st = lb.report().unwrap();
    assert_eq!(
        st.selectable("web", ip(1)),
        Some(true),
        "{}",
        st.show(Some("web"))
    );
    assert!(target_field(&st, "web", 1, "drain").unwrap().is_null());
    let (spread, _) = new_connections(&lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(spread, [4, 4, 4], "new connections after undrain");
    // Past the end of the delay the drain would have had: nothing happens.
    let end = until.as_u64().unwrap() + 1;
    while now_unix() < end {
        streams.wait_answers(2, T);
    }
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
    drop(lb);
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// With `deregistration_delay_s: 0` a drained target is `unused` at once:
/// with `no_rebalance` its connections go on to it until they end, with
/// `rebalance` they move at once.
#[test]
fn with_no_delay_a_target_is_unused_at_once() {
    let s = LabRun::start_yaml(&Web::new(&[0, 1, 2], 0, false).yaml(), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    let mut ports = Ports(40200);

    steps.push("lb drain web t2 (no_rebalance)");
    cli(&s.lb, &["drain", "web", &ip(1).to_string()], 0);
    let st = s.lb.report().unwrap();
    assert_eq!(
        st.state("web", ip(1)),
        Some("unused"),
        "{}",
        st.show(Some("web"))
    );
    assert_eq!(
        target_field(&st, "web", 1, "excluded"),
        Some(&Value::from("unused"))
    );
    let (spread, _) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(spread[1], 0, "{spread:?}");
    streams.wait_answers(5, T);
    assert_eq!(
        streams.broken_now(),
        0,
        "no_rebalance: t2's connections go on"
    );

    steps.push("lb apply: t3 removed, rebalance");
    let file = s
        .lab
        .write_file("rebalance.yaml", &Web::new(&[0, 1], 0, true).yaml());
    cli(&s.lb, &["apply", file.to_str().unwrap()], 0);
    wait_state(&s.lb, "web", 1, "unused");
    s.lb.wait_for(T, "t3 gone", |st: &Status| {
        st.target("web", ip(2)).is_none().then_some(())
    })
    .unwrap();
    // Every stream not on t1 moves at its next exchange.
    let deadline = Instant::now() + T;
    while streams.broken_now() < 2 * STREAMS / 3 {
        assert!(Instant::now() < deadline, "{} broken", streams.broken_now());
        std::thread::sleep(streams::INTERVAL);
    }
    streams.wait_answers(3, T);
    let reports = streams.stop();
    let (on_t1, others): (Vec<Report>, Vec<Report>) =
        reports.into_iter().partition(|r| r.target == "t1");
    assert_none_broken(&on_t1, &steps);
    assert!(others.iter().all(|r| r.broken.is_some()), "{others:?}");
}

/// A drain lasts while connections are left on its target, not while
/// sticky sessions name it: a draining target is not selectable, so the
/// sessions are not followed to it. A client's connections all reach one
/// target (a session of an hour); one of them stays open, the target is
/// drained (delay 300 s) and stays `draining`; once the connection closes
/// the target is `unused` within a few sweeps, and the client's new
/// connections go elsewhere. (Sessions once held every drain of a sticky
/// group to its full delay.)
#[test]
fn a_drain_ends_with_its_connections_though_sticky_sessions_name_it() {
    let mut yaml = format!(
        "interface: eth0\nlisteners:\n  - {{ name: lines, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
         target_groups:\n  - name: web\n    protocol: tcp\n    algorithm: round_robin\n    \
         sticky_session: {{ duration_s: 3600 }}\n    deregistration_delay_s: 300\n    \
         flow_fin_timeout_s: 1\n    targets:\n"
    );
    for t in &TARGETS {
        yaml += &format!("      - {{ ip: {} }}\n", t.v4);
    }
    let s = LabRun::start_yaml(&yaml, |_| {});
    let mut ports = Ports(40600);
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(6), 6);
    assert_eq!(failed, 0, "{spread:?}");
    let k = spread.iter().position(|&n| n == 6).unwrap_or_else(|| {
        panic!("one client's connections reach one target (sticky): {spread:?}")
    });
    let spec = Spec {
        name: "kept".into(),
        proto: Proto::Tcp,
        src: SocketAddr::new(topo::client4(7).into(), 32100),
        dst: SocketAddr::new(VIP4.into(), LINES_PORT),
    };
    let stream = Streams::start(&s.lab, &[spec]);
    stream.wait_answers(2, T);
    assert_eq!(stream.on(TARGETS[k].name), 1, "the session holds");

    cli(&s.lb, &["drain", "web", &ip(k).to_string()], 0);
    // Sweeps run every 2 s: two have seen the open connection.
    let drained = Instant::now();
    let st = s.lb.wait_for(T, "two sweeps", |st: &Status| {
        (drained.elapsed() > Duration::from_secs(5)).then(|| st.clone())
    });
    let st = st.unwrap_or_else(|e| panic!("{e}")).value;
    assert_eq!(
        st.state("web", ip(k)),
        Some("draining"),
        "{}",
        st.show(Some("web"))
    );
    stream.wait_answers(2, T);

    let reports = stream.stop();
    assert!(reports[0].broken.is_none(), "{reports:?}");
    s.lb.wait_for(T, "unused once its connection ended", |st: &Status| {
        (st.state("web", ip(k)) == Some("unused")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.lb.log()));
    // The client's next connections are placed afresh (which replaces its
    // session: so only now).
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(6), 6);
    assert_eq!((spread[k], failed), (0, 0), "new connections {spread:?}");
}

/// A second IPv4 VIP, for the backup group's own listener (a backup's
/// targets listen on its group's listener port, so its own listener is on
/// that port of another VIP): on the lb's eth0 and the targets' lo, as the
/// lab has the first.
const VIP2: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 3, 50);

fn add_vip2(lab: &Lab) {
    let vip = format!("{VIP2}/32");
    lab.exec(Node::Lb, &["ip", "addr", "add", &vip, "dev", "eth0"])
        .unwrap();
    for i in 0..TARGETS.len() {
        lab.exec(Node::Target(i), &["ip", "addr", "add", &vip, "dev", "lo"])
            .unwrap();
    }
}

/// Failover policy: `web` (t1, t2; listener on the VIP) with backup
/// `spare` (t3; its own listener on the second VIP, same port), TCP health
/// checks on port 80 (the lines port keeps answering when a check fails).
fn failover_yaml(ratio: f64, web: &[usize], spare: &[usize]) -> String {
    let check = "    health_check: { type: tcp, port: 80, interval_s: 2, timeout_s: 1, healthy_threshold: 1, unhealthy_threshold: 1 }\n";
    let targets = |ts: &[usize]| -> String {
        if ts.is_empty() {
            return "    targets: []\n".into();
        }
        let mut y = "    targets:\n".to_string();
        for &i in ts {
            y += &format!("      - {{ ip: {} }}\n", TARGETS[i].v4);
        }
        y
    };
    format!(
        "interface: eth0\nlisteners:\n\
         \x20 - {{ name: lines, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
         \x20 - {{ name: spare, vip: {VIP2}, protocol: tcp, port: {LINES_PORT}, target_group: spare }}\n\
         target_groups:\n\
         \x20 - name: web\n    protocol: tcp\n    algorithm: round_robin\n    backup: spare\n    failover_ratio: {ratio}\n{check}{}\
         \x20 - name: spare\n    protocol: tcp\n    algorithm: round_robin\n{check}{}",
        targets(web),
        targets(spare)
    )
}

/// One row of the failover table: the policy's ratio and targets, which
/// targets' health servers are down, who must serve and where new
/// connections must land.
struct Row {
    what: &'static str,
    ratio: f64,
    web: &'static [usize],
    spare: &'static [usize],
    down: &'static [usize],
    serving: &'static str,
    spread: [bool; 3],
}

/// Every row of SPEC.md's failover table, driven by stopping and starting
/// the targets' health servers and by `lb apply`, checked by where new
/// connections land; connections established before a switch stay where
/// they are; the backup group serves its own listener meanwhile.
#[test]
fn every_row_of_the_failover_table() {
    let rows = [
        Row {
            what: "ratio 0.5, all healthy: primary",
            ratio: 0.5,
            web: &[0, 1],
            spare: &[2],
            down: &[],
            serving: "primary",
            spread: [true, true, false],
        },
        Row {
            what: "ratio 0.5, t2 down (share 0.5 >= 0.5): primary",
            ratio: 0.5,
            web: &[0, 1],
            spare: &[2],
            down: &[1],
            serving: "primary",
            spread: [true, false, false],
        },
        Row {
            what: "ratio 0.6, t2 down (share 0.5 < 0.6), backup healthy: backup",
            ratio: 0.6,
            web: &[0, 1],
            spare: &[2],
            down: &[1],
            serving: "backup",
            spread: [false, false, true],
        },
        Row {
            what: "ratio 0.6, t2 and t3 down: the healthy primary targets",
            ratio: 0.6,
            web: &[0, 1],
            spare: &[2],
            down: &[1, 2],
            serving: "primary_below_ratio",
            spread: [true, false, false],
        },
        Row {
            what: "every target down: all primary targets (last resort)",
            ratio: 0.6,
            web: &[0, 1],
            spare: &[2],
            down: &[0, 1, 2],
            serving: "primary_last_resort",
            spread: [true, true, false],
        },
        Row {
            what: "ratio 0, no healthy primary, backup healthy: backup",
            ratio: 0.0,
            web: &[0, 1],
            spare: &[2],
            down: &[0, 1],
            serving: "backup",
            spread: [false, false, true],
        },
        Row {
            what: "ratio 0, one healthy primary: primary",
            ratio: 0.0,
            web: &[0, 1],
            spare: &[2],
            down: &[1],
            serving: "primary",
            spread: [true, false, false],
        },
    ];
    let s = LabRun::start_yaml(&failover_yaml(0.5, &[0, 1], &[2]), add_vip2);
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    let mut ports = Ports(40300);
    let mut down = [false; 3];
    let mut ratio = 0.5;
    for row in &rows {
        steps.push(row.what);
        if row.ratio != ratio {
            let file = s.lab.write_file(
                "failover.yaml",
                &failover_yaml(row.ratio, row.web, row.spare),
            );
            cli(&s.lb, &["apply", file.to_str().unwrap()], 0);
            ratio = row.ratio;
        }
        set_down(&s, &mut down, row.down);
        check_row(&s, row, &mut ports);
        // The backup serves its own listener all along.
        let (own, failed) = new_connections(&s.lab, VIP2.into(), ports.next(4), 4);
        assert_eq!(
            (own, failed),
            ([0, 0, 4], 0),
            "{}: spare's own listener",
            row.what
        );
        streams.wait_answers(2, T);
    }
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
    assert!(s.lb.log().contains("failed over"), "the switch is logged");

    // The last two rows empty the groups.
    let empty_rows = [
        Row {
            what: "no primary target, the backup's down: all backup targets (last resort)",
            ratio: 0.0,
            web: &[],
            spare: &[2],
            down: &[2],
            serving: "backup_last_resort",
            spread: [false, false, true],
        },
        Row {
            what: "no target on either side: dropped",
            ratio: 0.0,
            web: &[],
            spare: &[],
            down: &[],
            serving: "nobody",
            spread: [false, false, false],
        },
    ];
    for row in &empty_rows {
        set_down(&s, &mut down, row.down);
        let file = s.lab.write_file(
            "failover.yaml",
            &failover_yaml(row.ratio, row.web, row.spare),
        );
        cli(&s.lb, &["apply", file.to_str().unwrap()], 0);
        check_row(&s, row, &mut ports);
    }
}

/// A backup attached to no listener (the usual shape: it only stands in)
/// with a TCP check that names no port: its targets are probed on the
/// port of the listener they back up, shown with it, and judged, so that
/// the group falls back on its own targets when the backup's are down too.
/// (It was once left unprobed: `initial` for ever, counted healthy, and
/// new flows went to a dead backup.)
#[test]
fn a_backup_without_a_listener_is_probed_on_the_port_it_backs_up() {
    let check =
        "{ type: tcp, interval_s: 2, timeout_s: 1, healthy_threshold: 1, unhealthy_threshold: 1 }";
    let yaml = |spare: &[usize]| {
        let spare: Vec<String> = spare
            .iter()
            .map(|&i| format!("{{ ip: {} }}", TARGETS[i].v4))
            .collect();
        format!(
            "interface: eth0\nlisteners:\n\
             \x20 - {{ name: lines, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
             \x20 - {{ name: more, vip: {VIP4}, protocol: tcp, port: {}, target_group: more }}\n\
             target_groups:\n\
             \x20 - {{ name: more, protocol: tcp, targets: [ {{ ip: {} }} ] }}\n\
             \x20 - name: web\n    protocol: tcp\n    algorithm: round_robin\n    backup: spare\n    \
             failover_ratio: 0.0\n    health_check: {{ type: tcp, port: {}, interval_s: 2, timeout_s: 1, \
             healthy_threshold: 1, unhealthy_threshold: 1 }}\n    targets: [ {{ ip: {} }} ]\n\
             \x20 - name: spare\n    protocol: tcp\n    algorithm: round_robin\n    \
             deregistration_delay_s: 0\n    health_check: {check}\n    targets: [ {} ]\n",
            topo::MORE_LINES_PORTS[0],
            TARGETS[0].v4,
            topo::TCP_PORT,
            TARGETS[0].v4,
            spare.join(", "),
        )
    };
    let s = LabRun::start_yaml(&yaml(&[1, 2]), |_| {});
    let mut ports = Ports(40500);
    // Waits until web serves `serving` with these states of t2 and t3.
    let wait = |what: &str, states: [&str; 2], serving: &str| {
        s.lb.wait_for(T, what, |st: &Status| {
            let judged = (1..3).all(|i| st.state("web", ip(i)) == Some(states[i - 1]));
            (judged && st.group("web")?["serving"] == serving).then(|| st.clone())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", s.lb.log()))
        .value
    };

    let st = wait(
        "t2 and t3 probed and healthy",
        ["healthy", "healthy"],
        "primary",
    );
    for i in 1..3 {
        let row = st.target("web", ip(i)).unwrap();
        assert_eq!(row["via"], "spare", "{}", st.show(Some("web")));
        assert_eq!(row["monitor_port"], LINES_PORT, "{}", st.show(Some("web")));
    }
    let check_port = &st.group("spare").unwrap()["health_check"]["port"];
    assert_eq!(check_port, LINES_PORT, "{}", st.show(Some("spare")));
    // `status spare`: no listener of its own, its rows take no flow of
    // their own (`excluded: unused`); `status web`: web's listener alone,
    // not `more`'s.
    let spare = lb_tests::status::fetch_group(s.lb.socket(), "spare").unwrap();
    assert_eq!(
        spare.0["listeners"],
        serde_json::json!([]),
        "{}",
        spare.show(None)
    );
    for i in 1..3 {
        let row = spare.target("spare", ip(i)).unwrap();
        assert_eq!(row["excluded"], "unused", "{row}");
        assert_eq!(row["selectable"], false, "{row}");
    }
    let web = lb_tests::status::fetch_group(s.lb.socket(), "web").unwrap();
    let names: Vec<&str> = web.0["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lines"]);

    // t1's check fails (its lines port still answers): the backup serves.
    s.lab.stop_port(Node::Target(0), topo::TCP_PORT).unwrap();
    wait("t1 down: the backup", ["healthy", "healthy"], "backup");
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!((spread[0], failed), (0, 0), "backup: {spread:?}");

    // The backup's targets stop listening on the port they back up: every
    // target is down, and the group's own take new flows (last resort).
    for i in 1..3 {
        s.lab.stop_port(Node::Target(i), LINES_PORT).unwrap();
    }
    let st = wait(
        "the backup down too: last resort",
        ["unhealthy", "unhealthy"],
        "primary_last_resort",
    );
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(
        (spread, failed),
        ([12, 0, 0], 0),
        "last resort\n{}",
        st.show(Some("web"))
    );

    // t3 answers again: the backup serves, on t3 alone.
    s.lab.start_port(Node::Target(2), LINES_PORT).unwrap();
    wait("t3 back: the backup", ["unhealthy", "healthy"], "backup");
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!((spread, failed), ([0, 0, 12], 0), "t3 alone");

    // Two connections held on t3 for web: the plan of removing t3 from
    // spare (no delay) names them, as they drain with web's delay.
    let streams = Streams::start(&s.lab, &specs()[..2]);
    streams.wait_answers(2, T);
    assert_eq!(streams.on(TARGETS[2].name), 2, "streams on t3");
    let file = s.lab.write_file("without-t3.yaml", &yaml(&[1]));
    let plan = cli(&s.lb, &["apply", "--dry-run", file.to_str().unwrap()], 0).stdout;
    let line = format!(
        "- target {} in spare: 0 active flows, unused at once (deregistration_delay_s 0); \
         for web (its backup): 2 active flows, unused at ",
        ip(2)
    );
    assert!(plan.contains(&line), "{plan}");
    streams.stop();
}

/// Stops the health servers (port 80) of the targets in `want` and starts
/// those of the others, as needed.
fn set_down(s: &LabRun, down: &mut [bool; 3], want: &[usize]) {
    for (i, is_down) in down.iter_mut().enumerate() {
        let should = want.contains(&i);
        if *is_down != should {
            if should {
                s.lab.stop_port(Node::Target(i), topo::TCP_PORT).unwrap();
            } else {
                s.lab.start_port(Node::Target(i), topo::TCP_PORT).unwrap();
            }
            *is_down = should;
        }
    }
}

/// Waits until `web` serves as `row` says, then sends new connections.
fn check_row(s: &LabRun, row: &Row, ports: &mut Ports) {
    let st =
        s.lb.wait_for(T, row.what, |st: &Status| {
            // Every verdict in, then the decision.
            let judged = |group: &str, targets: &[usize]| {
                targets.iter().all(|&i| {
                    let want = if row.down.contains(&i) {
                        "unhealthy"
                    } else {
                        "healthy"
                    };
                    st.state(group, ip(i)) == Some(want)
                })
            };
            let g = st.group("web")?;
            (judged("web", row.web) && judged("spare", row.spare) && g["serving"] == row.serving)
                .then(|| st.clone())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", s.lb.log()))
        .value;
    let reason = st.group("web").unwrap()["serving_reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{}", st.show(Some("web")));
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    let landed = spread.map(|n| n > 0);
    assert_eq!(
        landed,
        row.spread,
        "{}: new connections {spread:?} ({failed} failed); {reason}\n{}",
        row.what,
        st.show(Some("web"))
    );
    let expect_failed = if row.serving == "nobody" { 12 } else { 0 };
    assert_eq!(failed, expect_failed, "{}: failed connections", row.what);
}

/// The sample edit of the `lb apply` test: t2 removed, t3's weight halved,
/// another algorithm and delay, a health check, a backup group, and a
/// listener added with its group.
fn edited_yaml() -> String {
    format!(
        "interface: eth0\nlisteners:\n\
         \x20 - {{ name: lines, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
         \x20 - {{ name: more, vip: {VIP4}, protocol: tcp, port: {}, target_group: more }}\n\
         target_groups:\n\
         \x20 - name: web\n    protocol: tcp\n    algorithm: hash\n    deregistration_delay_s: 60\n    \
         backup: spare\n    failover_ratio: 0.5\n    \
         health_check: {{ type: tcp, interval_s: 2, timeout_s: 1 }}\n    targets:\n      - {{ ip: {} }}\n      - {{ ip: {}, weight: 128 }}\n\
         \x20 - {{ name: spare, protocol: tcp, targets: [{{ ip: {} }}] }}\n\
         \x20 - {{ name: more, protocol: tcp, targets: [{{ ip: {} }}] }}\n",
        topo::MORE_LINES_PORTS[0],
        TARGETS[0].v4,
        TARGETS[2].v4,
        TARGETS[2].v4,
        TARGETS[0].v4,
    )
}

/// `lb apply --dry-run` prints every change of a sample edit and changes
/// nothing; an invalid file is refused (exit 1, file, line and field named)
/// and changes nothing; an lb that cannot be reached is exit 2; the edit
/// applied is the policy file from then on. No connection breaks.
#[test]
fn lb_apply_shows_the_plan_and_refuses_bad_files_without_a_change() {
    let before = Web::new(&[0, 1, 2], 300, false).yaml();
    let s = LabRun::start_yaml(&before, |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    let mut ports = Ports(40500);
    let edited = s.lab.write_file("edited.yaml", &edited_yaml());
    let edited = edited.to_str().unwrap();

    steps.push("lb apply --dry-run");
    let plan = cli(&s.lb, &["apply", edited, "--dry-run"], 0);
    let expected = [
        format!(
            "+ listener more {VIP4} tcp {} -> more",
            topo::MORE_LINES_PORTS[0]
        ),
        "~ target group web: algorithm round_robin -> hash".to_string(),
        "~ target group web: deregistration_delay_s 300 -> 60".to_string(),
        "~ target group web: backup none -> spare (failover ratio 0.5)".to_string(),
        "~ target group web: health_check none -> tcp".to_string(),
        format!(
            "- target {} in web: draining: {} active flows, unused in 60 s",
            ip(1),
            STREAMS / 3
        ),
        format!("~ target {} in web: weight 256 -> 128", ip(2)),
        "+ target group spare (1 targets)".to_string(),
        "+ target group more (1 targets)".to_string(),
    ];
    for line in &expected {
        assert!(
            plan.stdout.contains(line.as_str()),
            "no `{line}` in:\n{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout.contains("(dry run: nothing changed)"),
        "{}",
        plan.stdout
    );
    let json = cli(&s.lb, &["apply", edited, "--dry-run", "--json"], 0);
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["applied"], false);
    assert_eq!(
        json["changes"].as_array().unwrap().len(),
        plan.stdout.lines().count() - 1
    );
    let unchanged = |what: &str, ports: &mut Ports| {
        assert_eq!(
            std::fs::read_to_string(&s.policy).unwrap(),
            before,
            "{what}: the policy file"
        );
        let st = s.lb.report().unwrap();
        assert_eq!(
            st.selectable("web", ip(1)),
            Some(true),
            "{what}: {}",
            st.show(Some("web"))
        );
        assert!(st.group("more").is_none(), "{what}");
        let (spread, _) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
        assert_eq!(spread, [4, 4, 4], "{what}: new connections");
    };
    unchanged("after the dry run", &mut ports);

    steps.push("lb apply of an invalid file");
    let invalid = edited_yaml().replace("weight: 128", "weight: 300");
    let line = invalid
        .lines()
        .position(|l| l.contains("weight: 300"))
        .unwrap()
        + 1;
    let invalid = s.lab.write_file("invalid.yaml", &invalid);
    let refused = cli(&s.lb, &["apply", invalid.to_str().unwrap()], 1);
    let said = format!("{}:{line}:", invalid.display());
    assert!(refused.stdout.contains(&said), "{said} not in {refused:?}");
    assert!(
        refused
            .stdout
            .contains("target_groups[0].targets[1].weight"),
        "{refused:?}"
    );
    let st = s.lb.report().unwrap();
    assert!(
        st.0["errors"]["policy"].as_str().is_some(),
        "{}",
        st.0["errors"]
    );
    unchanged("after the invalid file", &mut ports);

    let away = lb_tests::lb::ClientRun::of(
        std::process::Command::new(&s.lab.options().lb_bin)
            .args(["apply", edited, "--socket"])
            .arg(s.lab.dir().join("nobody.sock")),
    )
    .unwrap();
    assert_eq!(away.code, Some(2), "{away:?}");

    steps.push("lb apply");
    let applied = cli(&s.lb, &["apply", edited], 0);
    assert!(
        applied
            .stdout
            .contains(&format!("applied {} changes", expected.len())),
        "{}",
        applied.stdout
    );
    assert_eq!(std::fs::read_to_string(&s.policy).unwrap(), edited_yaml());
    let st = s.lb.report().unwrap();
    assert_eq!(
        st.state("web", ip(1)),
        Some("draining"),
        "{}",
        st.show(Some("web"))
    );
    assert!(st.0["errors"]["policy"].is_null(), "{}", st.0["errors"]);
    assert_eq!(st.group("web").unwrap()["backup"]["target_group"], "spare");
    let (spread, _) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!(spread[1], 0, "{spread:?}");
    streams.wait_answers(3, T);
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
}

/// The lifecycle policy as `group`: `web`'s round robin over the three
/// targets, with a TCP health check on port 80 that takes three failures to
/// call a target unhealthy (at 2 s intervals: 4 s at the least from
/// `initial`).
fn named_yaml(group: &str) -> String {
    Web::new(&[0, 1, 2], 300, false)
        .yaml()
        .replace("target_group: web", &format!("target_group: {group}"))
        .replace("  - name: web\n", &format!("  - name: {group}\n"))
        .replace(
            "    targets:\n",
            "    health_check: { type: tcp, port: 80, interval_s: 2, timeout_s: 1, healthy_threshold: 1, unhealthy_threshold: 3 }\n    targets:\n",
        )
}

/// `lb apply --rename web=www` takes the group `web` as `www` of the new
/// file: the plan is the rename alone; the group keeps its flows (no
/// connection breaks, though round robin would choose again for each),
/// its targets' active flows, health verdicts and drains, and all of it
/// survives a restart. Without `--rename`, the plan says a group is removed
/// and one added, and advises the rename; a rename of a group that does not
/// run is refused.
#[test]
fn lb_apply_rename_keeps_a_groups_flows_health_and_drains() {
    let s = LabRun::start_yaml(&named_yaml("web"), |_| {});
    let streams = Streams::start(&s.lab, &specs());
    let steps = streams::Steps::default();
    streams.wait_answers(3, T);
    let mut ports = Ports(40700);
    wait_state(&s.lb, "web", 0, "healthy");

    steps.push("t3's health server stopped, t2 drained");
    s.lab.stop_port(Node::Target(2), topo::TCP_PORT).unwrap();
    wait_state(&s.lb, "web", 2, "unhealthy");
    cli(&s.lb, &["drain", "web", &ip(1).to_string()], 0);
    let until = target_field(&s.lb.report().unwrap(), "web", 1, "drain").unwrap()["until"].clone();
    let renamed = s.lab.write_file("renamed.yaml", &named_yaml("www"));
    let renamed = renamed.to_str().unwrap();

    let plan = cli(&s.lb, &["apply", renamed, "--dry-run"], 0);
    for line in [
        "- target group web (3 targets, removed at once)",
        "+ target group www (3 targets)",
        "hint: if `www` is `web` renamed, apply with --rename web=www",
    ] {
        assert!(
            plan.stdout.contains(line),
            "no `{line}` in:\n{}",
            plan.stdout
        );
    }
    let refused = cli(&s.lb, &["apply", renamed, "--rename", "nope=www"], 1);
    assert!(
        refused
            .stdout
            .contains("--rename nope=www: no target group `nope` in the running policy"),
        "{refused:?}"
    );
    assert!(s.lb.report().unwrap().group("www").is_none());

    steps.push("lb apply --rename web=www");
    let applied = cli(&s.lb, &["apply", renamed, "--rename", "web=www"], 0);
    assert!(
        applied.stdout.contains(
            "applied 1 changes:\n  ~ target group web: renamed to www (its flows, health verdicts and drains stay)\n"
        ),
        "{}",
        applied.stdout
    );
    let check = |st: &Status, when: &str| {
        let shown = st.show(Some("www"));
        assert!(st.group("web").is_none(), "{when}: {shown}");
        let states = [0, 1, 2].map(|i| st.state("www", ip(i)));
        assert_eq!(
            states,
            [Some("healthy"), Some("draining"), Some("unhealthy")],
            "{when}: {shown}"
        );
        let drain = target_field(st, "www", 1, "drain").unwrap();
        assert_eq!(drain["by_command"], true, "{when}: {shown}");
        assert_eq!(drain["until"], until, "{when}: {shown}");
        let flows = [0, 1, 2].map(|i| target_field(st, "www", i, "active_flows").cloned());
        let four = Some(Value::from(STREAMS / 3));
        assert_eq!(flows, [four.clone(), four.clone(), four], "{when}: {shown}");
    };
    check(&s.lb.report().unwrap(), "after the rename");
    let (spread, failed) = new_connections(&s.lab, VIP4.into(), ports.next(12), 12);
    assert_eq!((spread, failed), ([12, 0, 0], 0), "new connections");
    streams.wait_answers(3, T);

    steps.push("lb restarted");
    let (lb, lab, _serial) = s.into_parts();
    lb.stop().unwrap();
    let policy = lab.dir().join("policy.yaml");
    let lb = lab.start_lb(&policy, &["--xdp-mode", "native"]).unwrap();
    check(&lb.report().unwrap(), "after a restart");
    streams.wait_answers(3, T);
    cli(&lb, &["undrain", "www", &ip(1).to_string()], 0);
    let reports = streams.stop();
    assert_none_broken(&reports, &steps);
    drop(lb);
}
