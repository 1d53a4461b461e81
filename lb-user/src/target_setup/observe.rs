//! Reads what the host has of the items: links and addresses over
//! rtnetlink, sysctls from /proc/sys, iptables rules with `-C`, the
//! nftables table with `nft list`, UDP sockets from /proc/net.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkFlags},
};

use super::{ARP_ANNOUNCE, ARP_IGNORE, Item, NFT_TABLE, Seen, Setup, items};

/// The host's links and addresses: whether `lo` is up, its index, and
/// every address (interface, address, prefix length).
pub struct Links {
    pub lo_up: bool,
    pub lo_index: Option<u32>,
    pub addrs: Vec<(String, IpAddr, u8)>,
}

/// Reads the links and addresses of this network namespace.
pub async fn links() -> anyhow::Result<Links> {
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(conn);
    let links: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("cannot read the interfaces")?;
    let mut names = BTreeMap::new();
    let (mut lo_up, mut lo_index) = (false, None);
    for link in &links {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        let name = name.unwrap_or_else(|| format!("#{}", link.header.index));
        if name == "lo" {
            lo_up = link.header.flags.contains(LinkFlags::Up);
            lo_index = Some(link.header.index);
        }
        names.insert(link.header.index, name);
    }
    let addresses: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .context("cannot read the addresses")?;
    let mut addrs = Vec::new();
    for a in &addresses {
        let ip = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let (Some(ip), Some(name)) = (ip, names.get(&a.header.index)) {
            addrs.push((name.clone(), ip, a.header.prefix_len));
        }
    }
    Ok(Links {
        lo_up,
        lo_index,
        addrs,
    })
}

/// What the host has of `setup`'s items.
pub async fn observe(setup: &Setup) -> anyhow::Result<Seen> {
    let links = links().await?;
    let mut seen = Seen {
        lo_up: links.lo_up,
        addrs: links.addrs,
        ..Seen::default()
    };
    for (key, _) in [ARP_IGNORE, ARP_ANNOUNCE] {
        seen.sysctls.push((key, read_sysctl(key)));
    }
    let items = items(setup);
    for item in &items {
        match item {
            Item::Iptables(rule) if iptables_has(&rule.argv("-C"))? => {
                seen.iptables.insert(rule.clone());
            }
            Item::NftTable => seen.nft_table = nft_table()?,
            Item::UdpBound(_) if seen.udp_sockets.is_empty() => seen.udp_sockets = udp_sockets(),
            _ => {}
        }
    }
    Ok(seen)
}

/// `/proc/sys/net/ipv4/...` of `net.ipv4....`.
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Runs a tool; its output, or an error that says how to get it.
pub fn run_tool(argv: &[String]) -> anyhow::Result<Output> {
    let (program, args) = argv.split_first().expect("a program");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "{program} is not installed (Debian: apt-get install {})",
                if program == "nft" {
                    "nftables"
                } else {
                    "iptables"
                }
            ),
            _ => anyhow!("cannot run {program}: {e}"),
        })
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `iptables -C`: 0 if the rule is there, 1 if not.
fn iptables_has(argv: &[String]) -> anyhow::Result<bool> {
    let out = run_tool(argv)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            stderr_of(&out)
        ),
    }
}

/// `nft list table inet lb_dsr`, or None when there is no such table.
fn nft_table() -> anyhow::Result<Option<String>> {
    let mut argv: Vec<String> = vec!["nft".into(), "list".into(), "table".into()];
    argv.extend(NFT_TABLE.split(' ').map(String::from));
    let out = run_tool(&argv)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = stderr_of(&out);
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    bail!("`{}` failed ({}): {err}", argv.join(" "), out.status)
}

/// The local addresses of this namespace's UDP sockets.
fn udp_sockets() -> BTreeSet<SocketAddr> {
    let mut sockets = BTreeSet::new();
    for (path, v6) in [("/proc/net/udp", false), ("/proc/net/udp6", true)] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        sockets.extend(text.lines().skip(1).filter_map(|l| proc_net_local(l, v6)));
    }
    sockets
}

/// The local address of a line of /proc/net/udp or udp6: `sl local rem
/// ...`, the address as 32-bit words in host order, the port big-endian,
/// in hex.
pub(super) fn proc_net_local(line: &str, v6: bool) -> Option<SocketAddr> {
    let local = line.split_whitespace().nth(1)?;
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match (v6, bytes.len()) {
        (false, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (true, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}
