use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn request(vips: &[&str], udp: UdpMethod, ports: &[u16], targets: &[&str]) -> Request {
    Request {
        vips: vips.iter().map(|v| ip(v)).collect(),
        udp,
        ports: ports.iter().map(|&p| Ports::one(p)).collect(),
        target_ips: targets.iter().map(|v| ip(v)).collect(),
    }
}

/// `r` with the ports given as on the command line.
fn with_ports(r: Request, ports: &[&str]) -> Request {
    Request {
        ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
        ..r
    }
}

/// A target host: its own addresses on eth0, loopback on lo.
fn host() -> Vec<(String, IpAddr, u8)> {
    vec![
        ("lo".into(), ip("127.0.0.1"), 8),
        ("lo".into(), ip("::1"), 128),
        ("eth0".into(), ip("10.0.3.11"), 24),
        ("eth0".into(), ip("fd00:3::11"), 64),
        ("eth0".into(), ip("fe80::11"), 64),
    ]
}

fn error(r: Request, host: &[(String, IpAddr, u8)]) -> String {
    r.check(host).unwrap_err().to_string()
}

#[test]
fn bad_requests_say_what_to_give() {
    use UdpMethod::*;
    let cases: &[(Request, &str)] = &[
        (request(&[], Bind, &[], &[]), "no --vip"),
        (
            request(&["127.0.0.2"], Bind, &[], &[]),
            "--vip 127.0.0.2: a loopback address is no VIP",
        ),
        (
            request(&["0.0.0.0"], Bind, &[], &[]),
            "--vip 0.0.0.0: the unspecified address",
        ),
        (
            request(&["ff02::1"], Bind, &[], &[]),
            "--vip ff02::1: a VIP is a unicast address",
        ),
        (
            request(&["fe80::49"], Bind, &[], &[]),
            "a link-local address is no VIP",
        ),
        (
            request(&["::ffff:10.0.3.49"], Bind, &[], &[]),
            "--vip ::ffff:10.0.3.49: an IPv4-mapped IPv6 address: give the IPv4 address",
        ),
        (
            request(&["10.0.3.49"], Iptables, &[53], &["::ffff:10.0.3.11"]),
            "--target-ip ::ffff:10.0.3.11",
        ),
        (
            request(&["10.0.3.49"], Iptables, &[], &[]),
            "--udp iptables rewrites addresses of UDP ports: give them with --udp-port",
        ),
        (
            request(&["10.0.3.49"], Bind, &[0], &[]),
            "--udp-port 0: ports are 1-65535",
        ),
        (
            request(&["10.0.3.49"], Iptables, &[53], &["10.0.3.11", "10.0.3.12"]),
            "--target-ip 10.0.3.12: one address a family (10.0.3.11 given too)",
        ),
        (
            request(&["10.0.3.49"], Iptables, &[53], &["10.0.3.49"]),
            "--target-ip 10.0.3.49: the target's own address, not a VIP",
        ),
        (
            request(&["10.0.3.49", "10.0.3.50"], Nftables, &[53], &[]),
            "VIPs 10.0.3.49 and 10.0.3.50, both on --udp-port 53, cannot be told apart",
        ),
    ];
    for (r, want) in cases {
        let got = error(r.clone(), &host());
        assert!(got.contains(want), "{r:?}: {got}");
    }
    let two = [host(), vec![("eth1".into(), ip("192.0.2.7"), 24)]].concat();
    assert_eq!(
        error(request(&["10.0.3.49"], Nftables, &[53], &[]), &two),
        "--udp nftables needs this target's own IPv4 address: the host has several (10.0.3.11 on eth0, 192.0.2.7 on eth1); give it with --target-ip"
    );
    assert_eq!(
        error(request(&["fd00:3::49"], Iptables, &[53], &[]), &host()[..3]),
        "--udp iptables needs this target's own IPv6 address: the host has none; give it with --target-ip"
    );
}

#[test]
fn target_addresses_are_given_or_the_hosts_only_one() {
    let setup = request(
        &["10.0.3.49", "fd00:3::49", "10.0.3.49"],
        UdpMethod::Iptables,
        &[53, 53],
        &[],
    )
    .check(&host())
    .unwrap();
    assert_eq!(setup.vips, [ip("10.0.3.49"), ip("fd00:3::49")]);
    assert_eq!(setup.ports, [Ports::one(53)]);
    assert_eq!(setup.target_v4, Some("10.0.3.11".parse().unwrap()));
    assert_eq!(setup.target_v6, Some("fd00:3::11".parse().unwrap()));
    let given = request(&["10.0.3.49"], UdpMethod::Nftables, &[53], &["192.0.2.7"])
        .check(&[])
        .unwrap();
    assert_eq!(given.target_v4, Some("192.0.2.7".parse().unwrap()));
    assert_eq!(
        given.invocation(),
        "lb target-setup --vip 10.0.3.49 --udp nftables --udp-port 53 --target-ip 192.0.2.7"
    );
    // bind needs no target address, and an IPv6-only set-up no sysctls.
    let bind = request(&["fd00:3::49"], UdpMethod::Bind, &[], &[])
        .check(&[])
        .unwrap();
    assert_eq!(
        items(&bind),
        [
            Item::LoUp,
            Item::VipOnLo(ip("fd00:3::49")),
            Item::VipOnlyOnLo(ip("fd00:3::49"))
        ]
    );
}

fn setup(udp: UdpMethod) -> Setup {
    request(&["10.0.3.49", "fd00:3::49"], udp, &[53], &[])
        .check(&host())
        .unwrap()
}

#[test]
fn the_script_is_the_spec_setup_with_the_clouds_rules() {
    let nft = script(&setup(UdpMethod::Nftables), "lb target-setup ...");
    assert_eq!(
        nft,
        "#!/bin/sh
# DSR target set-up, made by: lb target-setup ...
set -eu
ip link set dev lo up
ip addr replace 10.0.3.49/32 dev lo
ip -6 addr replace fd00:3::49/128 dev lo nodad
sysctl -w net.ipv4.conf.all.arp_ignore=1
sysctl -w net.ipv4.conf.all.arp_announce=2
nft add table inet lb_dsr
nft add chain inet lb_dsr postrouting '{ type filter hook postrouting priority 300; }'
nft list chain inet lb_dsr postrouting | sed 's/^[[:space:]]*//' | grep -qxF 'ip saddr 10.0.3.11 udp sport 53 ip saddr set 10.0.3.49' || nft add rule inet lb_dsr postrouting ip saddr 10.0.3.11 udp sport 53 ip saddr set 10.0.3.49
nft list chain inet lb_dsr postrouting | sed 's/^[[:space:]]*//' | grep -qxF 'ip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49' || nft add rule inet lb_dsr postrouting ip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49
"
    );
    let iptables = script(&setup(UdpMethod::Iptables), "x");
    for rule in [
        "iptables -t nat -C POSTROUTING -d 10.0.3.11 -p udp --dport 53 -j RETURN 2>/dev/null || iptables -t nat -A POSTROUTING -d 10.0.3.11 -p udp --dport 53 -j RETURN\n",
        "iptables -t nat -C PREROUTING -d 10.0.3.49 -p udp --dport 53 -j DNAT --to-destination 10.0.3.11 2>/dev/null || iptables -t nat -A PREROUTING -d 10.0.3.49 -p udp --dport 53 -j DNAT --to-destination 10.0.3.11\n",
        "ip6tables -t nat -A PREROUTING -d fd00:3::49 -p udp --dport 53 -j DNAT --to-destination fd00:3::11\n",
    ] {
        assert!(iptables.contains(rule), "{rule} not in\n{iptables}");
    }
    let bind = script(&setup(UdpMethod::Bind), "x");
    assert!(
        bind.contains(
            "# a UDP server bound to 10.0.3.49:53: start the UDP service bound to 10.0.3.49:53"
        ),
        "{bind}"
    );
    assert!(
        !bind.contains("nft add") && !bind.contains("iptables -t"),
        "{bind}"
    );
}

/// A host with the whole set-up of `setup` in place.
fn complete(setup: &Setup) -> Seen {
    let mut addrs = host();
    addrs.extend(
        setup
            .vips
            .iter()
            .map(|&v| ("lo".to_string(), v, host_len(v))),
    );
    let rules: Vec<String> = items(setup)
        .iter()
        .filter_map(|i| match i {
            Item::NftRule(r) => Some(format!("\t\t{r}")),
            _ => None,
        })
        .collect();
    Seen {
        lo_up: true,
        addrs,
        sysctls: vec![
            (ARP_IGNORE.0, Some("1".into())),
            (ARP_ANNOUNCE.0, Some("2".into())),
        ],
        iptables: items(setup)
            .into_iter()
            .filter_map(|i| match i {
                Item::Iptables(r) => Some(r),
                _ => None,
            })
            .collect(),
        nft_table: Some(format!(
            "table inet lb_dsr {{\n\tchain postrouting {{\n\t\ttype filter hook postrouting priority 300; policy accept;\n{}\n\t}}\n}}\n",
            rules.join("\n")
        )),
        udp_sockets: setup
            .vips
            .iter()
            .flat_map(|&v| setup.ports.iter().map(move |p| SocketAddr::new(v, p.first)))
            .collect(),
    }
}

fn states(setup: &Setup, seen: &Seen) -> Vec<(String, State)> {
    items(setup)
        .iter()
        .filter(|i| i.state(seen) != State::Ok)
        .map(|i| (i.what(), i.state(seen)))
        .collect()
}

#[test]
fn a_complete_host_checks_ok_and_each_lack_is_named() {
    for udp in [UdpMethod::Bind, UdpMethod::Iptables, UdpMethod::Nftables] {
        let s = setup(udp);
        let seen = complete(&s);
        assert_eq!(states(&s, &seen), [], "{udp:?}");
        assert!(Report::of(&items(&s), &seen).all_ok());
    }
    let s = setup(UdpMethod::Nftables);
    let mut seen = complete(&s);
    seen.lo_up = false;
    seen.addrs.retain(|(_, a, _)| *a != ip("fd00:3::49"));
    seen.addrs.push(("lo".into(), ip("10.0.3.49"), 24));
    seen.addrs
        .retain(|(iface, a, len)| !(iface == "lo" && *a == ip("10.0.3.49") && *len == 32));
    seen.addrs.push(("eth0".into(), ip("fd00:3::49"), 64));
    seen.sysctls[0].1 = Some("0".into());
    seen.sysctls[1].1 = None;
    seen.nft_table = Some(
        seen.nft_table
            .unwrap()
            .replace("priority 300", "priority 0")
            .replace(
                "\t\tip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49\n",
                "",
            ),
    );
    let got = states(&s, &seen);
    let want: Vec<(String, State)> = vec![
        ("lo is up".into(), State::Missing),
        ("10.0.3.49/32 on lo".into(), State::Wrong("10.0.3.49/24 on lo: the whole prefix would be the host's".into())),
        ("fd00:3::49/128 on lo".into(), State::Missing),
        ("fd00:3::49 on no interface but lo".into(), State::Wrong("fd00:3::49/64 on eth0".into())),
        ("net.ipv4.conf.all.arp_ignore = 1".into(), State::Wrong("it is 0".into())),
        ("net.ipv4.conf.all.arp_announce = 2".into(), State::Missing),
        (
            "nftables chain inet lb_dsr postrouting (type filter hook postrouting priority 300;)".into(),
            State::Wrong("the chain is `type filter hook postrouting priority 0; policy accept;`".into()),
        ),
        ("nftables rule in inet lb_dsr postrouting: ip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49".into(), State::Missing),
    ];
    assert_eq!(got, want);
    let report = Report::of(&items(&s), &seen).to_string();
    assert!(report.contains("wrong    fd00:3::49 on no interface but lo (fd00:3::49/64 on eth0)\n         fix: ip addr del fd00:3::49/64 dev eth0\n"), "{report}");
    assert!(report.contains("missing  fd00:3::49/128 on lo\n         fix: ip -6 addr replace fd00:3::49/128 dev lo nodad\n"), "{report}");
    assert!(report.contains("fix: nft add rule inet lb_dsr postrouting ip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49\n"), "{report}");
    assert!(report.ends_with("3 of 11 in place"), "{report}");
}

/// The VIP on lo with another prefix length is wrong even beside the host
/// one (the whole prefix would still be the host's); the fix removes it.
#[test]
fn another_prefix_of_the_vip_on_lo_is_wrong_beside_the_host_one() {
    let s = setup(UdpMethod::Bind);
    let mut seen = complete(&s);
    seen.addrs.push(("lo".into(), ip("10.0.3.49"), 24));
    let got = states(&s, &seen);
    assert_eq!(
        got,
        [(
            "10.0.3.49/32 on lo".to_string(),
            State::Wrong("10.0.3.49/24 on lo: the whole prefix would be the host's".into())
        )]
    );
    let report = Report::of(&items(&s), &seen).to_string();
    assert!(
        report.contains("fix: ip addr del 10.0.3.49/24 dev lo\n"),
        "{report}"
    );
}

#[test]
fn a_udp_server_on_the_wildcard_address_is_wrong_for_bind() {
    let s = setup(UdpMethod::Bind);
    let mut seen = complete(&s);
    seen.udp_sockets = [
        SocketAddr::new(ip("0.0.0.0"), 53),
        SocketAddr::new(ip("fd00:3::49"), 53),
    ]
    .into();
    assert_eq!(
        states(&s, &seen),
        [(
            "a UDP server bound to 10.0.3.49:53".to_string(),
            State::Wrong(
                "the UDP server is bound to 0.0.0.0:53: it answers from the host's own address"
                    .into()
            )
        )]
    );
    seen.udp_sockets.clear();
    assert_eq!(states(&s, &seen).len(), 2);
}

#[test]
fn proc_net_udp_lines_give_local_addresses() {
    // 10.0.3.49:53 and [fd00:3::49]:53 as a little-endian host writes them.
    let v4 = "  12: 3103000A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0";
    let v6 = "   3: 030000FD000000000000000049000000:0035 00000000000000000000000000000000:0000 07";
    if cfg!(target_endian = "little") {
        assert_eq!(
            observe::proc_net_local(v4, false),
            Some("10.0.3.49:53".parse().unwrap())
        );
        assert_eq!(
            observe::proc_net_local(v6, true),
            Some("[fd00:3::49]:53".parse().unwrap())
        );
    }
    let short = "  3: 030000FD00000000000000004900000:0035";
    assert_eq!(
        observe::proc_net_local(short, true),
        None,
        "31 hex digits are no address"
    );
    assert_eq!(observe::proc_net_local("  sl  local_address", false), None);
}

#[test]
fn persisting_writes_the_boot_files_once() {
    let root = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let s = setup(UdpMethod::Iptables);
    let first = persist(&s, "lb target-setup x", &root).unwrap();
    assert!(first.iter().all(|p| p.changed), "{first:?}");
    let rel: Vec<String> = first
        .iter()
        .map(|p| p.path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        [
            "etc/sysctl.d/90-lb-dsr-target.conf",
            "etc/lb/dsr-target-setup.sh",
            "etc/systemd/system/lb-dsr-target.service",
            "etc/systemd/system/multi-user.target.wants/lb-dsr-target.service",
        ]
    );
    let conf = std::fs::read_to_string(root.join(persist::SYSCTL_FILE)).unwrap();
    assert!(
        conf.ends_with("net.ipv4.conf.all.arp_ignore = 1\nnet.ipv4.conf.all.arp_announce = 2\n"),
        "{conf}"
    );
    let script_file = root.join(persist::SCRIPT_FILE);
    assert_eq!(
        std::fs::read_to_string(&script_file).unwrap(),
        script(&s, "lb target-setup x")
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&script_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let link = std::fs::read_link(&first[3].path).unwrap();
    assert_eq!(
        link,
        std::path::Path::new("/etc/systemd/system/lb-dsr-target.service")
    );
    assert!(persist::unit().contains("ExecStart=/etc/lb/dsr-target-setup.sh\n"));
    let again = persist(&s, "lb target-setup x", &root).unwrap();
    assert!(again.iter().all(|p| !p.changed), "{again:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

fn range(first: u16, last: u16) -> Ports {
    Ports { first, last }
}

#[test]
fn ports_are_sorted_and_deduplicated_and_overlaps_refused() {
    let r = request(&["10.0.3.49"], UdpMethod::Iptables, &[], &[]);
    let ports = |given: &[&str]| with_ports(r.clone(), given).check(&host());
    assert_eq!(
        ports(&["all", "53", "10000-20000", "53", "10000-20000"]).map(|s| s.ports),
        Err(SetupError::Overlap(Ports::ALL, Ports::one(53)))
    );
    assert_eq!(
        ports(&["10000-20000", "53", "20001-20002", "10000-20000"]).map(|s| s.ports),
        Ok(vec![
            Ports::one(53),
            range(10000, 20000),
            range(20001, 20002)
        ])
    );
    let err = |given: &[&str]| ports(given).unwrap_err().to_string();
    assert_eq!(
        err(&["10000-20000", "15000-25000"]),
        "--udp-port 10000-20000 and --udp-port 15000-25000 overlap: give each port once"
    );
    assert_eq!(
        err(&["10000-20000", "20000"]),
        "--udp-port 10000-20000 and --udp-port 20000 overlap: give each port once"
    );
    // What clap cannot give: a port 0 from a caller of the library.
    assert_eq!(
        err(&[]),
        "--udp iptables rewrites addresses of UDP ports: give them with --udp-port"
    );
    let zero = Request {
        ports: vec![range(0, 10)],
        ..r
    };
    assert_eq!(zero.check(&host()), Err(SetupError::PortZero));
}

#[test]
fn bind_takes_single_ports_only() {
    let bind = request(&["10.0.3.49", "fd00:3::49"], UdpMethod::Bind, &[], &[]);
    assert_eq!(
        with_ports(bind.clone(), &["53", "5000-5001"])
            .check(&host())
            .unwrap_err()
            .to_string(),
        "--udp-port 5000-5001 with --udp bind: bind is checked as a UDP socket bound to VIP:PORT for each port, which a range cannot be; use --udp iptables or nftables, or give the ports the server binds one by one"
    );
    assert_eq!(
        with_ports(bind.clone(), &["all"]).check(&host()),
        Err(SetupError::BindRange(Ports::ALL))
    );
    let single = with_ports(bind, &["5001", "5000"]).check(&host()).unwrap();
    let bound: Vec<Item> = items(&single)
        .into_iter()
        .filter(|i| matches!(i, Item::UdpBound(_)))
        .collect();
    let at = |a: &str| Item::UdpBound(a.parse().unwrap());
    assert_eq!(
        bound,
        [
            at("10.0.3.49:5000"),
            at("10.0.3.49:5001"),
            at("[fd00:3::49]:5000"),
            at("[fd00:3::49]:5001")
        ]
    );
}

#[test]
fn nftables_refuses_two_vips_of_a_family_on_a_range() {
    let r = request(
        &["10.0.3.49", "fd00:3::49", "10.0.3.50"],
        UdpMethod::Nftables,
        &[],
        &[],
    );
    assert_eq!(
        with_ports(r.clone(), &["10000-20000"]).check(&host()),
        Err(SetupError::Ambiguous {
            a: ip("10.0.3.49"),
            b: ip("10.0.3.50"),
            ports: range(10000, 20000)
        })
    );
    assert!(
        error(with_ports(r, &["all"]), &host()).contains(
            "so VIPs 10.0.3.49 and 10.0.3.50, both on --udp-port all, cannot be told apart"
        )
    );
    // One VIP a family is no ambiguity, whatever the ports.
    let one_each = request(&["10.0.3.49", "fd00:3::49"], UdpMethod::Nftables, &[], &[]);
    assert!(with_ports(one_each, &["all"]).check(&host()).is_ok());
}

fn rules_of(setup: &Setup) -> Vec<String> {
    items(setup)
        .into_iter()
        .filter_map(|i| match i {
            Item::Iptables(rule) => Some(rule.argv("-A").join(" ")),
            Item::NftRule(rule) => Some(rule),
            _ => None,
        })
        .collect()
}

#[test]
fn a_range_is_one_rule_in_each_tools_syntax() {
    let ranged = |udp| {
        let r = request(&["10.0.3.49", "fd00:3::49"], udp, &[], &[]);
        with_ports(r, &["10000-20000", "53"])
            .check(&host())
            .unwrap()
    };
    assert_eq!(
        rules_of(&ranged(UdpMethod::Iptables)),
        [
            "iptables -t nat -A POSTROUTING -d 10.0.3.11 -p udp --dport 53 -j RETURN",
            "iptables -t nat -A POSTROUTING -d 10.0.3.11 -p udp --dport 10000:20000 -j RETURN",
            "ip6tables -t nat -A POSTROUTING -d fd00:3::11 -p udp --dport 53 -j RETURN",
            "ip6tables -t nat -A POSTROUTING -d fd00:3::11 -p udp --dport 10000:20000 -j RETURN",
            "iptables -t nat -A PREROUTING -d 10.0.3.49 -p udp --dport 53 -j DNAT --to-destination 10.0.3.11",
            "iptables -t nat -A PREROUTING -d 10.0.3.49 -p udp --dport 10000:20000 -j DNAT --to-destination 10.0.3.11",
            "ip6tables -t nat -A PREROUTING -d fd00:3::49 -p udp --dport 53 -j DNAT --to-destination fd00:3::11",
            "ip6tables -t nat -A PREROUTING -d fd00:3::49 -p udp --dport 10000:20000 -j DNAT --to-destination fd00:3::11",
        ]
    );
    let nft = ranged(UdpMethod::Nftables);
    assert_eq!(
        rules_of(&nft),
        [
            "ip saddr 10.0.3.11 udp sport 53 ip saddr set 10.0.3.49",
            "ip saddr 10.0.3.11 udp sport 10000-20000 ip saddr set 10.0.3.49",
            "ip6 saddr fd00:3::11 udp sport 53 ip6 saddr set fd00:3::49",
            "ip6 saddr fd00:3::11 udp sport 10000-20000 ip6 saddr set fd00:3::49",
        ]
    );
    assert_eq!(
        nft.invocation(),
        "lb target-setup --vip 10.0.3.49 --vip fd00:3::49 --udp nftables --udp-port 53 --udp-port 10000-20000 --target-ip 10.0.3.11 --target-ip fd00:3::11"
    );
    let script = script(&nft, "x");
    assert!(script.contains("grep -qxF 'ip saddr 10.0.3.11 udp sport 10000-20000 ip saddr set 10.0.3.49' || nft add rule inet lb_dsr postrouting ip saddr 10.0.3.11 udp sport 10000-20000 ip saddr set 10.0.3.49\n"), "{script}");
    let all = |udp| {
        let r = request(&["10.0.3.49"], udp, &[], &[]);
        rules_of(&with_ports(r, &["all"]).check(&host()).unwrap())
    };
    assert!(all(UdpMethod::Iptables)[0].ends_with("--dport 1:65535 -j RETURN"));
    assert_eq!(
        all(UdpMethod::Nftables),
        ["ip saddr 10.0.3.11 udp sport 1-65535 ip saddr set 10.0.3.49"]
    );
}

/// The table as nft 1.0.6 lists it after `--apply` of a range, a single
/// port and all ports: each rule is found by its text.
#[test]
fn nfts_listing_of_ranges_checks_ok() {
    let listing = "table inet lb_dsr {
\tchain postrouting {
\t\ttype filter hook postrouting priority 300; policy accept;
\t\tip saddr 10.0.3.11 udp sport 53 ip saddr set 10.0.3.49
\t\tip saddr 10.0.3.11 udp sport 10000-20000 ip saddr set 10.0.3.49
\t\tip saddr 10.0.3.11 udp sport 1-65535 ip saddr set 10.0.3.49
\t}
}
";
    let seen = Seen {
        nft_table: Some(listing.into()),
        ..Seen::default()
    };
    for ports in [&["53", "10000-20000"][..], &["all"]] {
        let r = request(&["10.0.3.49"], UdpMethod::Nftables, &[], &[]);
        let s = with_ports(r, ports).check(&host()).unwrap();
        let nft: Vec<Item> = items(&s)
            .into_iter()
            .filter(|i| matches!(i, Item::NftTable | Item::NftChain | Item::NftRule(_)))
            .collect();
        assert!(nft.len() >= 3, "{nft:?}");
        for item in nft {
            assert_eq!(item.state(&seen), State::Ok, "{}", item.what());
        }
    }
    let r = request(&["10.0.3.49"], UdpMethod::Nftables, &[], &[]);
    let other = with_ports(r, &["10000-20001"]).check(&host()).unwrap();
    let missing = items(&other)
        .into_iter()
        .find(|i| matches!(i, Item::NftRule(_)));
    assert_eq!(missing.unwrap().state(&seen), State::Missing);
}
