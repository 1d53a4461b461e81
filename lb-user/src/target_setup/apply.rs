//! Sets the items that are not in place: addresses and `lo` through
//! rtnetlink, sysctls through /proc/sys, rules with iptables/ip6tables or
//! nft. Only what is missing is touched, so applying twice changes nothing
//! the second time.
use std::net::IpAddr;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::{Handle, LinkUnspec};

use super::{
    Item, NFT_CHAIN, NFT_HOOK, NFT_TABLE, Report, Seen, Setup, State, host_len, items,
    observe::{self, run_tool, sysctl_path},
};

/// Applies `setup`: each item not in place is set, then the host is read
/// again and every item (but a UDP server, which only its owner can
/// start) must be in place. Returns what was done, one line each. Refused
/// before any change when a VIP is on another interface than `lo`.
pub async fn apply(setup: &Setup) -> anyhow::Result<Vec<String>> {
    let items = items(setup);
    let seen = observe::observe(setup).await?;
    refuse_vip_elsewhere(&items, &seen)?;
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(conn);
    let lo = observe::links()
        .await?
        .lo_index
        .context("this network namespace has no lo")?;
    let mut done = Vec::new();
    for item in &items {
        let state = item.state(&seen);
        if state == State::Ok {
            continue;
        }
        if let Some(line) = set(&handle, lo, item, &state).await? {
            done.push(line);
        }
    }
    let after = observe::observe(setup).await?;
    let report = Report::of(&items, &after);
    let unset: Vec<String> = report
        .rows
        .iter()
        .filter(|(item, state, _)| *state != State::Ok && !matches!(item, Item::UdpBound(_)))
        .map(|(item, _, _)| item.what())
        .collect();
    if !unset.is_empty() {
        bail!("applied, yet not in place: {}", unset.join("; "));
    }
    Ok(done)
}

fn refuse_vip_elsewhere(items: &[Item], seen: &Seen) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for item in items {
        if let (Item::VipOnlyOnLo(vip), State::Wrong(where_)) = (item, item.state(seen)) {
            let fix = item.commands(Some(seen)).join("; ");
            problems.push(format!("VIP {vip} is also configured as {where_}: this host would answer ARP/ND for it and take clients' traffic past the load balancer; remove it ({fix}), or run this on a target, not on the load balancer"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("nothing changed: {}", problems.join("\n"))
    }
}

/// Sets one item; what was done, or None for what cannot be set here.
async fn set(
    handle: &Handle,
    lo: u32,
    item: &Item,
    state: &State,
) -> anyhow::Result<Option<String>> {
    let line = match item {
        Item::LoUp => {
            handle
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .context("cannot bring lo up")?;
            "lo set up".to_string()
        }
        Item::VipOnLo(vip) => vip_on_lo(handle, lo, *vip).await?,
        Item::Sysctl(key, value) => {
            let path = sysctl_path(key);
            std::fs::write(&path, value)
                .with_context(|| format!("cannot write {value} to {}", path.display()))?;
            format!("{key} set to {value}")
        }
        Item::Iptables(rule) => {
            tool(&rule.argv("-A"))?;
            format!("added: {}", rule.argv("-A").join(" "))
        }
        Item::NftTable => {
            tool(&nft(&["add", "table"], &[]))?;
            format!("added nftables table {NFT_TABLE}")
        }
        Item::NftChain => {
            if let State::Wrong(what) = state {
                bail!(
                    "nftables chain {NFT_TABLE} {NFT_CHAIN} is there but not a `{NFT_HOOK}` chain ({what}): empty and delete it (nft flush chain {NFT_TABLE} {NFT_CHAIN}; nft delete chain {NFT_TABLE} {NFT_CHAIN}) and apply again"
                );
            }
            tool(&nft(
                &["add", "chain"],
                &[NFT_CHAIN, &format!("{{ {NFT_HOOK} }}")],
            ))?;
            format!("added nftables chain {NFT_TABLE} {NFT_CHAIN}")
        }
        Item::NftRule(rule) => {
            let mut args = vec![NFT_CHAIN];
            args.extend(rule.split(' '));
            tool(&nft(&["add", "rule"], &args))?;
            format!("added nftables rule: {rule}")
        }
        Item::VipOnlyOnLo(_) | Item::UdpBound(_) => return Ok(None),
    };
    Ok(Some(line))
}

/// `nft VERB... inet lb_dsr ARGS...`.
fn nft(verb: &[&str], args: &[&str]) -> Vec<String> {
    let mut argv = vec!["nft".to_string()];
    argv.extend(verb.iter().map(|s| s.to_string()));
    argv.extend(NFT_TABLE.split(' ').map(String::from));
    argv.extend(args.iter().map(|s| s.to_string()));
    argv
}

fn tool(argv: &[String]) -> anyhow::Result<()> {
    let out = run_tool(argv)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The VIP on `lo` as a host address; the same address with another
/// prefix length on `lo` is removed first (it would make the whole prefix
/// the host's).
async fn vip_on_lo(handle: &Handle, lo: u32, vip: IpAddr) -> anyhow::Result<String> {
    let len = host_len(vip);
    let on_lo: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(lo)
        .set_address_filter(vip)
        .execute()
        .try_collect()
        .await
        .context("cannot read the addresses of lo")?;
    let mut line = String::new();
    for msg in on_lo {
        let is_vip = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == vip)
        });
        if msg.header.index == lo && is_vip && msg.header.prefix_len != len {
            line = format!("removed {vip}/{} from lo; ", msg.header.prefix_len);
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("cannot remove {vip} from lo"))?;
        }
    }
    let mut add = handle.address().add(lo, vip, len).replace();
    if vip.is_ipv6() {
        // Usable at once: no duplicate address detection (the VIP is the
        // load balancer's on the segment anyway).
        add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    add.execute()
        .await
        .with_context(|| format!("cannot add {vip}/{len} to lo"))?;
    Ok(format!("{line}added {vip}/{len} to lo"))
}
