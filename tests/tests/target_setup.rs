//! `lb target-setup` on a target of its own: a network namespace (a unique
//! name, deleted when the test ends, also when it fails) whose `eth0` has
//! the target's addresses 10.0.3.11/24 and fd00:3::11/64. For IPv4 and
//! IPv6 VIPs and each UDP method whose tool is installed: `--check` first
//! (exit 1, what is missing named with its fix), `--apply`, `--apply`
//! again (nothing to change, and the host exactly as after the first),
//! `--check` (every item ok, exit 0); for the rewrites, with one port and
//! with a range of ports. Then the persisted script sets up a fresh
//! namespace that checks ok, and its unit verifies; a VIP on an external
//! interface is refused with nothing changed, and so are ports that cannot
//! be set (a range with `bind`, overlapping ranges, port 0).
//!
//! Needs root and the `lb` binary (`cargo build -p lb-user --bins`).
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use lb_tests::{
    lab::{run, workspace_bin},
    netns,
};

fn lb() -> PathBuf {
    workspace_bin("LB_BIN", "lb")
}

const PREFIX: &str = "lbts";
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A target's namespace; deleted on drop.
struct Target {
    ns: String,
}

impl Target {
    /// None when not root (the test is then skipped).
    fn new() -> Option<Target> {
        if !is_root() {
            lb_tests::skip("needs root (network namespaces)");
            return None;
        }
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{PREFIX}{}x{n}", std::process::id());
        // The leftover of a dead process that had our pid, if any.
        let _ = run(Command::new("ip").args(["netns", "del", &ns]));
        run(Command::new("ip").args(["netns", "add", &ns])).expect("ip netns add");
        let target = Target { ns };
        for line in [
            "link add eth0 type veth peer name eth1",
            "addr add 10.0.3.11/24 dev eth0",
            "addr add fd00:3::11/64 dev eth0 nodad",
            "link set eth0 up",
            "link set eth1 up",
        ] {
            let mut args = vec!["-n", &target.ns];
            args.extend(line.split(' '));
            run(Command::new("ip").args(args)).expect(line);
        }
        Some(target)
    }

    /// `lb target-setup ARGS` in the namespace: exit code and output.
    fn setup(&self, args: &[&str]) -> (i32, String) {
        let out = netns::command(&self.ns, lb())
            .arg("target-setup")
            .args(args)
            .output()
            .expect("run lb");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn exec(&self, args: &[&str]) -> String {
        let (program, rest) = args.split_first().unwrap();
        run(netns::command(&self.ns, program).args(rest)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// What target-setup may change, as text.
    fn snapshot(&self) -> String {
        let mut text = self.exec(&["ip", "addr", "show"]);
        text += &self.exec(&[
            "sysctl",
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
        ]);
        if has("iptables") {
            text += &self.exec(&["iptables", "-t", "nat", "-S"]);
            text += &self.exec(&["ip6tables", "-t", "nat", "-S"]);
        }
        if has("nft") {
            text += &self.exec(&["nft", "list", "ruleset"]);
        }
        text
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

/// Namespaces of this test whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
    {
        let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('x').next());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether `tool` is installed.
fn has(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(tool).exists())
}

/// --check, --apply, --apply, --check for `vip` with `udp` on `ports` (one
/// port or a range); `bound`: a UDP socket on the VIP for the final check
/// (`bind`, one port). The host's state after the first --apply, or None
/// when the test is skipped.
fn check_apply_check(vip: &str, udp: &str, ports: &str, bound: bool) -> Option<String> {
    let t = Target::new()?;
    let args = ["--vip", vip, "--udp", udp, "--udp-port", ports];
    let (code, before) = t.setup(&[&args[..], &["--check"]].concat());
    assert_eq!(code, 1, "--check before: {before}");
    let v6 = vip.contains(':');
    let on_lo = if v6 {
        format!(
            "missing  {vip}/128 on lo\n         fix: ip -6 addr replace {vip}/128 dev lo nodad\n"
        )
    } else {
        format!("missing  {vip}/32 on lo\n         fix: ip addr replace {vip}/32 dev lo\n")
    };
    assert!(before.contains(&on_lo), "{before}");
    if !v6 {
        assert!(before.contains("wrong    net.ipv4.conf.all.arp_ignore = 1 (it is 0)\n         fix: sysctl -w net.ipv4.conf.all.arp_ignore=1\n"), "{before}");
    }
    let (code, applied) = t.setup(&[&args[..], &["--apply"]].concat());
    assert_eq!(code, 0, "--apply: {applied}");
    assert!(applied.contains(&format!("added {vip}/")), "{applied}");
    let after_first = t.snapshot();
    let (code, again) = t.setup(&[&args[..], &["--apply"]].concat());
    assert_eq!(code, 0, "--apply again: {again}");
    assert!(again.starts_with("nothing to change"), "{again}");
    assert_eq!(
        t.snapshot(),
        after_first,
        "the second --apply changed the host"
    );
    let check = || t.setup(&[&args[..], &["--check"]].concat());
    let (code, after) = if bound {
        netns::run(&t.ns, || {
            let ip: IpAddr = vip.parse().unwrap();
            let port = ports.parse().expect("bind takes one port");
            let _socket = UdpSocket::bind(SocketAddr::new(ip, port)).expect("bind the VIP");
            check()
        })
        .unwrap()
    } else {
        check()
    };
    assert_eq!(code, 0, "--check after: {after}");
    let lines: Vec<&str> = after.lines().collect();
    let (last, items) = lines.split_last().unwrap();
    assert!(items.iter().all(|l| l.starts_with("ok ")), "{after}");
    assert_eq!(*last, format!("{n} of {n} in place", n = items.len()));
    Some(after_first)
}

#[test]
fn bind_ipv4_and_ipv6() {
    check_apply_check("10.0.3.49", "bind", "53", true);
    check_apply_check("fd00:3::49", "bind", "53", true);
}

#[test]
fn iptables_ipv4_and_ipv6() {
    if !has("iptables") || !has("ip6tables") {
        return lb_tests::skip("iptables is not installed (cargo xtask setup installs it)");
    }
    check_apply_check("10.0.3.49", "iptables", "53", false);
    check_apply_check("fd00:3::49", "iptables", "53", false);
}

#[test]
fn iptables_port_ranges_ipv4_and_ipv6() {
    if !has("iptables") || !has("ip6tables") {
        return lb_tests::skip("iptables is not installed (cargo xtask setup installs it)");
    }
    for (vip, ports, dport) in [
        ("10.0.3.49", "10000-20000", "--dport 10000:20000"),
        ("fd00:3::49", "10000-20000", "--dport 10000:20000"),
        ("10.0.3.49", "all", "--dport 1:65535"),
    ] {
        let Some(host) = check_apply_check(vip, "iptables", ports, false) else {
            return;
        };
        for chain in ["PREROUTING", "POSTROUTING"] {
            let rule = host
                .lines()
                .find(|l| l.starts_with(&format!("-A {chain} ")) && l.contains(dport));
            assert!(rule.is_some(), "no {chain} rule with {dport}:\n{host}");
        }
    }
}

#[test]
fn nftables_ipv4_and_ipv6() {
    if !has("nft") {
        return lb_tests::skip("nft is not installed (cargo xtask setup installs nftables)");
    }
    check_apply_check("10.0.3.49", "nftables", "53", false);
    check_apply_check("fd00:3::49", "nftables", "53", false);
}

#[test]
fn nftables_port_ranges_ipv4_and_ipv6() {
    if !has("nft") {
        return lb_tests::skip("nft is not installed (cargo xtask setup installs nftables)");
    }
    for (vip, ports, rule) in [
        (
            "10.0.3.49",
            "10000-20000",
            "ip saddr 10.0.3.11 udp sport 10000-20000 ip saddr set 10.0.3.49",
        ),
        (
            "fd00:3::49",
            "10000-20000",
            "ip6 saddr fd00:3::11 udp sport 10000-20000 ip6 saddr set fd00:3::49",
        ),
        (
            "10.0.3.49",
            "all",
            "ip saddr 10.0.3.11 udp sport 1-65535 ip saddr set 10.0.3.49",
        ),
    ] {
        let Some(host) = check_apply_check(vip, "nftables", ports, false) else {
            return;
        };
        assert!(
            host.lines().any(|l| l.trim() == rule),
            "no `{rule}`:\n{host}"
        );
    }
}

#[test]
fn ports_that_cannot_be_set_are_refused_and_nothing_changes() {
    let Some(t) = Target::new() else { return };
    let before = t.snapshot();
    let refused = [
        (
            &[
                "--udp",
                "bind",
                "--udp-port",
                "53",
                "--udp-port",
                "5000-5001",
            ][..],
            1,
            "--udp-port 5000-5001 with --udp bind: bind is checked as a UDP socket bound to VIP:PORT for each port, which a range cannot be; use --udp iptables or nftables",
        ),
        (
            &[
                "--udp",
                "iptables",
                "--udp-port",
                "5000-6000",
                "--udp-port",
                "5353",
            ],
            1,
            "--udp-port 5000-6000 and --udp-port 5353 overlap: give each port once",
        ),
        (
            &["--udp", "nftables", "--udp-port", "0"],
            2,
            "invalid value '0' for '--udp-port <PORTS>': port 0 is out of range 1-65535",
        ),
        (
            &["--udp", "nftables", "--udp-port", "6000-5000"],
            2,
            "port range `6000-5000` ends before it starts",
        ),
    ];
    for (ports, want_code, want) in refused {
        let args = [&["--vip", "10.0.3.49"][..], ports, &["--apply"]].concat();
        let (code, out) = t.setup(&args);
        assert_eq!(code, want_code, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
    }
    assert_eq!(t.snapshot(), before);
}

#[test]
fn the_persisted_script_sets_up_a_fresh_target_and_its_unit_verifies() {
    let Some(t) = Target::new() else { return };
    let root = std::env::temp_dir().join(format!("lb-ts-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let udp = if has("nft") { "nftables" } else { "bind" };
    // A rewrite takes a range too (bind only single ports).
    let ports = if udp == "bind" { "54" } else { "10000-20000" };
    let args = [
        "--vip",
        "10.0.3.49",
        "--vip",
        "fd00:3::49",
        "--udp",
        udp,
        "--udp-port",
        "53",
        "--udp-port",
        ports,
    ];
    let root_arg = root.display().to_string();
    let (code, out) = t.setup(&[&args[..], &["--persist", "--root", &root_arg]].concat());
    assert_eq!(code, 0, "{out}");
    for file in [
        "etc/sysctl.d/90-lb-dsr-target.conf",
        "etc/lb/dsr-target-setup.sh",
        "etc/systemd/system/lb-dsr-target.service",
    ] {
        assert!(
            out.contains(&format!("written {}", root.join(file).display())),
            "{out}"
        );
    }
    let (code, out) = t.setup(&[&args[..], &["--persist", "--root", &root_arg]].concat());
    assert_eq!(code, 0);
    assert!(
        !out.contains("written"),
        "a second --persist rewrote: {out}"
    );
    // At boot: the script alone, in a namespace that has nothing of it.
    let script = root.join("etc/lb/dsr-target-setup.sh");
    run(netns::command(&t.ns, "sh").arg(&script)).unwrap_or_else(|e| panic!("{e}"));
    let once = t.snapshot();
    run(netns::command(&t.ns, "sh").arg(&script)).unwrap_or_else(|e| panic!("run twice: {e}"));
    assert_eq!(
        t.snapshot(),
        once,
        "the script's second run changed the host"
    );
    let (code, check) = t.setup(&[&args[..], &["--check"]].concat());
    let wanted_missing = if udp == "bind" { 1 } else { 0 };
    assert_eq!(code, wanted_missing, "{check}");
    if udp != "bind" {
        assert!(
            check.lines().rev().skip(1).all(|l| l.starts_with("ok ")),
            "{check}"
        );
    }
    // The unit verifies, pointing at the written script and the man pages.
    let man = root.join("man");
    run(Command::new(lb()).arg("man").arg(man.join("man1"))).unwrap();
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/lb-dsr-target.service")).unwrap();
    let local = root.join("lb-dsr-target.service");
    std::fs::write(
        &local,
        unit.replace("/etc/lb/dsr-target-setup.sh", &script.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_vip_on_an_external_interface_is_refused_and_nothing_changes() {
    let Some(t) = Target::new() else { return };
    t.exec(&["ip", "addr", "add", "10.0.3.49/24", "dev", "eth0"]);
    let before = t.snapshot();
    let (code, out) = t.setup(&["--vip", "10.0.3.49", "--apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing changed: VIP 10.0.3.49 is also configured as 10.0.3.49/24 on eth0: this host would answer ARP/ND for it"), "{out}");
    assert!(out.contains("(ip addr del 10.0.3.49/24 dev eth0)"), "{out}");
    assert_eq!(t.snapshot(), before);
    let (code, out) = t.setup(&["--vip", "10.0.3.49", "--check"]);
    assert_eq!(code, 1);
    assert!(out.contains("wrong    10.0.3.49 on no interface but lo (10.0.3.49/24 on eth0)\n         fix: ip addr del 10.0.3.49/24 dev eth0\n"), "{out}");
}

/// The UDP methods work: behind `lb`, targets whose server is bound to the
/// wildcard address (so it answers from the target's own address, which
/// the client drops) answer from the VIP once `lb target-setup --udp
/// METHOD --udp-port PORTS --apply` has set their rules: every query is
/// answered, by every target. The listener and `--udp-port` are `ports`
/// (one port or a range); the servers listen on `served`, ports of it, and
/// the queries go to each in turn.
fn udp_answers_from_the_vip(method: &str, ports: &str, served: &[u16]) {
    use lb_tests::{
        Lab, Node, client,
        topo::{TARGETS, VIP4, client4},
    };
    let _serial = lb_tests::run::serial();
    let mut lab = Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    for (i, t) in TARGETS.iter().enumerate() {
        let args: Vec<String> = served
            .iter()
            .flat_map(|p| ["--udp".to_string(), format!("0.0.0.0:{p}")])
            .collect();
        lab.spawn_server(Node::Target(i), t.name, &args)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut yaml = String::from(
        "interface: eth0\nlisteners:\n  - { name: q, vip: 10.0.3.49, protocol: udp, port: PORTS, target_group: q }\n",
    )
    .replace("PORTS", ports);
    yaml += "target_groups:\n  - name: q\n    protocol: udp\n    targets:\n";
    for t in &TARGETS {
        yaml += &format!("      - {{ ip: {} }}\n", t.v4);
    }
    let policy = lab.write_file("q.yaml", &yaml);
    let running = lab
        .start_lb(&policy, &["--xdp-mode", "native"])
        .unwrap_or_else(|e| panic!("{e}"));
    let ask = |first: u16| -> Vec<Result<String, String>> {
        lab.run_in(Node::Client, || {
            (0..12u16)
                .map(|i| {
                    let src = SocketAddr::new(client4(1).into(), first + i);
                    let port = served[usize::from(i) % served.len()];
                    let dst = SocketAddr::new(VIP4.into(), port);
                    client::udp_ask(src, dst, Duration::from_millis(300), 2)
                        .map_err(|e| e.to_string())
                })
                .collect()
        })
    };
    let without = ask(30000);
    assert!(
        without.iter().all(Result::is_err),
        "answered without the rules: {without:?}"
    );
    for i in 0..TARGETS.len() {
        let out = lab
            .exec(
                Node::Target(i),
                &[
                    lb().to_str().unwrap(),
                    "target-setup",
                    "--vip",
                    "10.0.3.49",
                    "--udp",
                    method,
                    "--udp-port",
                    ports,
                    "--apply",
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("added"), "{out}");
    }
    let with = ask(31000);
    let names: Vec<&str> = with
        .iter()
        .map(|r| {
            r.as_deref().unwrap_or_else(|e| {
                panic!("{method}: unanswered: {e}\n{with:?}\n{}", running.log())
            })
        })
        .collect();
    for t in &TARGETS {
        assert!(
            names.contains(&t.name),
            "{method}: {} never answered: {names:?}",
            t.name
        );
    }
    drop(running);
}

#[test]
fn udp_from_the_wildcard_answers_from_the_vip_with_iptables() {
    if !has("iptables") || !is_root() {
        return lb_tests::skip("needs root and iptables (cargo xtask setup installs it)");
    }
    udp_answers_from_the_vip("iptables", "5353", &[5353]);
}

#[test]
fn udp_to_a_port_range_answers_from_the_vip_with_iptables() {
    if !has("iptables") || !is_root() {
        return lb_tests::skip("needs root and iptables (cargo xtask setup installs it)");
    }
    udp_answers_from_the_vip("iptables", "5300-5399", &[5353, 5399]);
}

#[test]
fn udp_from_the_wildcard_answers_from_the_vip_with_nftables() {
    if !has("nft") || !is_root() {
        return lb_tests::skip("needs root and nft (cargo xtask setup installs nftables)");
    }
    udp_answers_from_the_vip("nftables", "5353", &[5353]);
}

#[test]
fn udp_to_a_port_range_answers_from_the_vip_with_nftables() {
    if !has("nft") || !is_root() {
        return lb_tests::skip("needs root and nft (cargo xtask setup installs nftables)");
    }
    udp_answers_from_the_vip("nftables", "5300-5399", &[5353, 5399]);
}
