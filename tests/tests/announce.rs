//! `lb run --announce TABLE`: the VIPs a BGP daemon would announce, kept
//! as blackhole host routes in a routing table of lb's own in the lb's
//! namespace, following the targets' health, `lb withdraw` and `lb
//! announce`, restarts and `lb detach`.
//!
//! Needs root and the `lb` binary (`cargo xtask test` builds it).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use lb_tests::{
    LabRun, Node,
    bird::{self, Bird},
    lb::LbProcess,
    topo::{self, LINES_PORT, TARGETS, VIP4, VIP6},
};
use serde_json::Value;

const TABLE: &str = "4242";
/// Health verdicts here take 1-2 s; the announcer rechecks every 5 s.
const T: Duration = Duration::from_secs(30);

/// `web` (IPv4) and `web6` (IPv6) on the lines port, each over the three
/// targets, checked on port 80 every 2 s: one failure and a target is
/// unhealthy, one success and it is healthy.
fn yaml() -> String {
    let check = "    health_check: { type: tcp, port: 80, interval_s: 2, timeout_s: 1, healthy_threshold: 1, unhealthy_threshold: 1 }\n";
    let targets = |v6: bool| {
        TARGETS
            .iter()
            .map(|t| {
                let ip = if v6 {
                    format!("\"{}\"", t.v6)
                } else {
                    t.v4.to_string()
                };
                format!("      - {{ ip: {ip} }}\n")
            })
            .collect::<String>()
    };
    format!(
        "interface: eth0\nlisteners:\n\
         \x20 - {{ name: web, vip: {VIP4}, protocol: tcp, port: {LINES_PORT}, target_group: web }}\n\
         \x20 - {{ name: web6, vip: \"{VIP6}\", protocol: tcp, port: {LINES_PORT}, target_group: web6 }}\n\
         target_groups:\n\
         \x20 - name: web\n    protocol: tcp\n{check}    targets:\n{}\
         \x20 - name: web6\n    protocol: tcp\n{check}    targets:\n{}",
        targets(false),
        targets(true)
    )
}

/// The routes of the announce table, as `VIP/LEN TYPE PROTOCOL`.
fn announced(s: &lb_tests::Lab) -> BTreeSet<String> {
    announced_in(s, TABLE)
}

/// The routes of routing table `table`, as `VIP/LEN TYPE PROTOCOL`.
fn announced_in(s: &lb_tests::Lab, table: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let text = s
            .exec(
                Node::Lb,
                &["ip", family, "-j", "route", "show", "table", table],
            )
            .unwrap_or_default();
        let routes: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for r in routes.as_array().into_iter().flatten() {
            let len = if family == "-4" { 32 } else { 128 };
            let dst = r["dst"].as_str().unwrap();
            let dst = if dst.contains('/') {
                dst.to_string()
            } else {
                format!("{dst}/{len}")
            };
            out.insert(format!(
                "{dst} {} {}",
                r["type"].as_str().unwrap_or("unicast"),
                r["protocol"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the announce table holds exactly `want`.
fn wait_announced(s: &lb_tests::Lab, lb: &LbProcess, want: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let seen = announced(s);
        if seen == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: table {TABLE} holds {seen:?}, not {want:?}\n{}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status's `announce` section.
fn status_of(lb: &LbProcess) -> Value {
    lb.status().unwrap()["announce"].clone()
}

/// Stops the health servers (port 80) of every target.
fn stop_health_servers(s: &lb_tests::Lab) {
    for i in 0..TARGETS.len() {
        s.stop_port(Node::Target(i), topo::TCP_PORT).unwrap();
    }
}

#[test]
fn vips_are_announced_while_they_can_be_served_and_withdrawn_on_command() {
    let both = set(&[
        &format!("{VIP4}/32 blackhole static"),
        &format!("{VIP6}/128 blackhole static"),
    ]);
    let none = BTreeSet::new();
    let s = LabRun::start_yaml_args(&yaml(), &["--announce", TABLE], |_| {});
    wait_announced(&s.lab, &s.lb, &both, "at start");
    let st = status_of(&s.lb);
    assert_eq!(st["table"], 4242, "{st}");
    assert_eq!(st["withdrawn"], false, "{st}");
    assert!(st["error"].is_null(), "{st}");
    let text = s.lb.status_command(None, false).unwrap();
    assert!(text.contains("VIPs announced in table 4242:\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  {VIP4} announced: listener web has healthy targets"
        )),
        "{text}"
    );

    // A route put there by hand goes (the table is lb's); one taken out
    // comes back.
    let by_hand = [
        "ip",
        "route",
        "add",
        "192.0.2.7/32",
        "dev",
        "eth0",
        "table",
        TABLE,
    ];
    s.lab.exec(Node::Lb, &by_hand).unwrap();
    let v4 = format!("{VIP4}/32");
    let taken = ["ip", "route", "del", "blackhole", &v4, "table", TABLE];
    s.lab.exec(Node::Lb, &taken).unwrap();
    wait_announced(&s.lab, &s.lb, &both, "after routes changed by hand");

    // No target healthy (last resort): withdrawn; one back: announced.
    stop_health_servers(&s.lab);
    wait_announced(&s.lab, &s.lb, &none, "every health server down");
    let st = status_of(&s.lb);
    let reason = st["vips"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("no listener has a healthy target (web primary_last_resort"),
        "{st}"
    );
    s.lab.start_port(Node::Target(0), topo::TCP_PORT).unwrap();
    wait_announced(&s.lab, &s.lb, &both, "t1's health server up");
    for i in 1..TARGETS.len() {
        s.lab.start_port(Node::Target(i), topo::TCP_PORT).unwrap();
    }

    // A restart leaves the announcements (the data plane forwards on), and
    // never takes them out meanwhile: `ip monitor` sees no route deleted.
    let (lb, lab, _serial) = s.into_parts();
    let monitor = lab
        .command(Node::Lb, "ip")
        .args(["monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    lb.stop().unwrap();
    assert_eq!(announced(&lab), both, "lb stopped");
    let policy = lab.dir().join("policy.yaml");
    let lb = lab.start_lb(&policy, &["--announce", TABLE]).unwrap();
    wait_announced(&lab, &lb, &both, "after a restart");
    let mut monitor = monitor;
    let _ = monitor.kill();
    let seen = String::from_utf8_lossy(&monitor.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        !seen
            .lines()
            .any(|l| l.starts_with("Deleted") && l.contains(&format!("table {TABLE}"))),
        "a route of the announce table was deleted across the restart:\n{seen}"
    );

    // Withdrawn on command, through a restart, until `lb announce`.
    let run = lb.client(&["withdraw"]).unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("VIPs in table 4242: withdrawn (until lb announce)"),
        "{run:?}"
    );
    wait_announced(&lab, &lb, &none, "lb withdraw");
    assert_eq!(status_of(&lb)["withdrawn"], true);
    lb.stop().unwrap();
    let lb = lab.start_lb(&policy, &["--announce", TABLE]).unwrap();
    assert_eq!(
        status_of(&lb)["withdrawn"],
        true,
        "withdrawn after a restart"
    );
    assert_eq!(announced(&lab), none, "after a restart");
    let run = lb.client(&["announce"]).unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_announced(&lab, &lb, &both, "lb announce");

    // `lb detach` empties the table (the BGP daemon withdraws all).
    let (_, said) = lb.detach_after_stop().unwrap();
    assert!(
        said.contains("announce table 4242 emptied (2 routes)"),
        "{said}"
    );
    assert_eq!(announced(&lab), none, "table {TABLE} after lb detach");

    // The kernel's tables are refused before anything changes.
    let refused = lab.start_lb(&policy, &["--announce", "254"]);
    let err = format!("{:?}", refused.err().expect("refused"));
    assert!(err.contains("not a table of lb's own"), "{err}");
}

/// What the operator asked for outlives the data plane when it goes without
/// `lb detach` (a reboot empties bpffs, not /var/lib/lb): `lb withdraw`
/// and `lb drain` hold on the new data plane. And a run that announces in
/// another table empties the one of the run before, which nothing would
/// keep any more.
#[test]
fn a_reboot_keeps_the_withdraw_and_drains_and_a_new_table_empties_the_old() {
    let both = set(&[
        &format!("{VIP4}/32 blackhole static"),
        &format!("{VIP6}/128 blackhole static"),
    ]);
    let none = BTreeSet::new();
    let other = "4243";
    let s = LabRun::start_yaml_args(&yaml(), &["--announce", TABLE], |_| {});
    wait_announced(&s.lab, &s.lb, &both, "at start");
    let (lb, lab, _serial) = s.into_parts();
    let policy = lab.dir().join("policy.yaml");

    // Another table: the old one is emptied at the start.
    lb.stop().unwrap();
    assert_eq!(announced(&lab), both, "lb stopped");
    let lb = lab.start_lb(&policy, &["--announce", other]).unwrap();
    assert_eq!(
        announced(&lab),
        none,
        "table {TABLE} after a run in {other}"
    );
    let deadline = Instant::now() + T;
    while announced_in(&lab, other) != both {
        assert!(Instant::now() < deadline, "table {other}\n{}", lb.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Withdrawn and a target drained, then "a reboot": lb stops, its pinned
    // data plane goes (bpffs), its state stays.
    assert_eq!(lb.client(&["withdraw"]).unwrap().code, Some(0));
    let t1 = TARGETS[0].v4.to_string();
    assert_eq!(lb.client(&["drain", "web", &t1]).unwrap().code, Some(0));
    let pins = lb.status().unwrap()["data_plane"]["pin_dir"]
        .as_str()
        .unwrap()
        .to_string();
    lb.stop().unwrap();
    std::fs::remove_dir_all(&pins).unwrap();
    let lb = lab.start_lb(&policy, &["--announce", other]).unwrap();
    let st = lb.status().unwrap();
    assert_eq!(st["data_plane"]["adopted"], false, "a new data plane");
    assert_eq!(
        st["announce"]["withdrawn"], true,
        "withdrawn after a reboot"
    );
    assert_eq!(announced_in(&lab, other), none, "after a reboot");
    let web = st["target_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "web")
        .unwrap();
    let t1_row = web["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["ip"] == t1.as_str())
        .unwrap();
    assert_eq!(t1_row["drain"]["by_command"], true, "{t1_row}");
    assert_eq!(t1_row["selectable"], false, "{t1_row}");
    assert_eq!(lb.client(&["announce"]).unwrap().code, Some(0));
    let deadline = Instant::now() + T;
    while announced_in(&lab, other) != both {
        assert!(Instant::now() < deadline, "lb announce\n{}", lb.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, said) = lb.detach_after_stop().unwrap();
    assert!(
        said.contains(&format!("announce table {other} emptied")),
        "{said}"
    );
}

/// A start without saved verdicts announces nothing before its first
/// verdicts: an instance added behind ECMP takes no traffic before it knows
/// that its targets answer (`initial` targets take new flows, but do not
/// make a VIP announced). Five successes 2 s apart make the first verdict,
/// so for 8 s at least after the start every target is `initial`.
#[test]
fn a_start_announces_only_after_the_first_verdicts() {
    let both = set(&[
        &format!("{VIP4}/32 blackhole static"),
        &format!("{VIP6}/128 blackhole static"),
    ]);
    let slow = yaml().replace("healthy_threshold: 1", "healthy_threshold: 5");
    let s = LabRun::start_yaml_args(&slow, &["--announce", TABLE], |_| {});
    let st = status_of(&s.lb);
    let reason = st["vips"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("waiting for the first health verdicts (web only initial targets"),
        "{st}"
    );
    assert_eq!(st["vips"][0]["announced"], false, "{st}");
    assert_eq!(announced(&s.lab), BTreeSet::new(), "{st}");
    wait_announced(&s.lab, &s.lb, &both, "after the first verdicts");
    let st = status_of(&s.lb);
    assert!(
        st["vips"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("listener web has healthy targets")),
        "{st}"
    );
}

/// Without `--announce`, `lb withdraw` and `lb announce` are refused.
#[test]
fn without_announce_the_commands_are_refused() {
    let s = LabRun::start_yaml(&yaml(), |_| {});
    for cmd in ["withdraw", "announce"] {
        let run = s.lb.client(&[cmd]).unwrap();
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(run.stderr.contains("without --announce"), "{run:?}");
    }
    assert!(s.lb.status().unwrap()["announce"].is_null());
    assert!(announced(&s.lab).is_empty());
}

/// End to end with BIRD, as a deployment behind ECMP runs it: BIRD on the
/// lb's host learns the announce table (`protocol kernel ... learn`) and
/// exports it over BGP (IPv4 and IPv6 sessions) to BIRD on the lab's
/// router, which installs the VIPs' routes via the lb. `lb withdraw` takes
/// them off the router within a few seconds, `lb announce` puts them back,
/// and so does the targets' health.
#[test]
fn bird_announces_the_vips_to_a_router_over_bgp() {
    if !bird::installed() {
        return lb_tests::skip("bird is not installed (cargo xtask setup installs bird2)");
    }
    let options = lb_tests::LabOptions {
        router: true,
        ..Default::default()
    };
    let s = LabRun::start_in(options, &yaml(), &["--announce", TABLE], |_| {});
    let lb = (topo::LB4.into(), topo::LB6.into());
    let _lb_bird = Bird::on_lb(&s.lab, Node::Lb, lb, TABLE);
    let router = Bird::on_router(&s.lab, &[lb]);
    let both = bird::via(&[lb]);
    let none = BTreeSet::new();
    let wait_router = |want: &BTreeSet<String>, what: &str| {
        bird::wait_router(&s.lab, &router, want, T, || {
            format!("{what}\nlb:\n{}", s.lb.log())
        });
    };
    wait_router(&both, "BGP sessions up");
    let run = s.lb.client(&["withdraw"]).unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_router(&none, "lb withdraw");
    let run = s.lb.client(&["announce"]).unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_router(&both, "lb announce");
    stop_health_servers(&s.lab);
    wait_router(&none, "no healthy target");
}
