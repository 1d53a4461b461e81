//! `lb stats`: rates per listener and per target, like `ipvsadm -Ln
//! --rate`. The daemon answers a `stats` request with a [`StatsSample`]
//! (the counters of every listener and target, summed over CPUs, and the
//! CLOCK_MONOTONIC time they were read), read off its event loop
//! (`dataplane::reader`, named with the latest `view`); the client takes
//! two samples an interval apart and divides their differences by the
//! time between the reads ([`rates`]). A row of one sample is matched to
//! the other's by the ids the data plane counts it under, never by name:
//! a group or listener renamed between the two reads carries on.
use std::{collections::BTreeMap, fmt::Write as _, io, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{dataplane::reader::Reader, flows, policy::Ports, status::TargetState, view::View};

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSample {
    /// CLOCK_MONOTONIC when read, in nanoseconds (the same clock for every
    /// process of the machine).
    pub at_ns: u64,
    pub listeners: Vec<ListenerCounts>,
    pub targets: Vec<TargetCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCounts {
    /// The id its counters are kept under (kept through a rename); absent
    /// from an `lb` before it, whose rows are matched by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    pub name: String,
    pub vip: Option<IpAddr>,
    pub protocol: String,
    pub port: Ports,
    pub target_group: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCounts {
    /// As [`ListenerCounts::id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    pub group: String,
    pub ip: IpAddr,
    /// For a target of `group`'s backup taking `group`'s flows: the backup
    /// group (its own counters, apart from those of its own group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub port: Ports,
    pub state: TargetState,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub active_flows: u64,
}

/// Reads the counters of `view`'s listeners and targets, its backup's
/// taking its flows included (of `group` only, if given: its listener and
/// targets): two batched lookups.
pub fn sample(view: &View, reader: &Reader, group: Option<&str>) -> io::Result<StatsSample> {
    let stats = reader.stats(view.listener_ids, view.target_ids)?;
    let wanted = |g: &str| group.is_none_or(|only| only == g);
    let listeners = view
        .listeners
        .iter()
        .filter(|l| wanted(&l.group))
        .map(|l| {
            let s = stats.listener(l.id);
            ListenerCounts {
                id: Some(l.id),
                name: l.name.clone(),
                vip: Some(l.vip),
                protocol: l.protocol.to_string(),
                port: l.port,
                target_group: l.group.clone(),
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
            }
        })
        .collect();
    let targets = view
        .targets
        .iter()
        .filter(|t| wanted(&t.group))
        .map(|t| {
            let s = stats.target(t.id);
            TargetCounts {
                id: Some(t.id),
                group: t.group.clone(),
                ip: t.ip,
                via: t.via.clone(),
                port: t.port,
                state: t.state,
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                active_flows: flows::shown(reader.active_flows(t.id)),
            }
        })
        .collect();
    Ok(StatsSample {
        at_ns: stats.at.as_nanos() as u64,
        listeners,
        targets,
    })
}

/// Rates over one interval (what `lb stats --json` prints, one a line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// The two reads, CLOCK_MONOTONIC nanoseconds, and the seconds between.
    pub from_ns: u64,
    pub to_ns: u64,
    pub interval_s: f64,
    pub listeners: Vec<Rate>,
    pub targets: Vec<Rate>,
}

/// One listener's or target's counts over the interval and their rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// A listener's name, or a target's address.
    pub name: String,
    pub target_group: String,
    /// A target of the group's backup taking its flows: the backup group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// `tcp 10.0.3.49:80` (listener) or `10.0.3.11:80` (target).
    pub address: String,
    /// A target's state; None for a listener.
    pub state: Option<TargetState>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub new_flows_per_s: f64,
    /// A target's flows in progress at the end; None for a listener.
    pub active_flows: Option<u64>,
}

impl Rate {
    fn of(
        (name, target_group, address): (String, String, String),
        counts: [(u64, u64); 3],
        seconds: f64,
    ) -> Rate {
        // A counter that went back (a data plane made again) counts from 0.
        let d = |(before, after): (u64, u64)| after.checked_sub(before).unwrap_or(after);
        let [packets, bytes, new_flows] = counts.map(d);
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        Rate {
            name,
            target_group,
            via: None,
            address,
            state: None,
            packets,
            bytes,
            new_flows,
            packets_per_s: per_s(packets),
            bits_per_s: per_s(bytes) * 8.0,
            new_flows_per_s: per_s(new_flows),
            active_flows: None,
        }
    }
}

fn socket(ip: IpAddr, port: Ports) -> String {
    port.at(ip)
}

fn listener_rate(was: Option<&ListenerCounts>, l: &ListenerCounts, seconds: f64) -> Rate {
    let was = was.cloned().unwrap_or_default();
    let address = match l.vip {
        Some(vip) => format!("{} {}", l.protocol, socket(vip, l.port)),
        None => l.protocol.clone(),
    };
    let id = (l.name.clone(), l.target_group.clone(), address);
    let counts = [
        (was.packets, l.packets),
        (was.bytes, l.bytes),
        (was.new_flows, l.new_flows),
    ];
    Rate::of(id, counts, seconds)
}

/// Who a row is in both samples: its id and what the id stands for (a
/// listener's VIP, protocol and first port, as `crate::ids` keys it; a
/// target's address), or, from an `lb` that sends no ids, its names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RowKey {
    Listener(u32, Option<IpAddr>, String, u16),
    Target(u32, IpAddr),
    Named(String, IpAddr, Option<String>),
}

fn listener_key(l: &ListenerCounts) -> RowKey {
    match l.id {
        Some(id) => RowKey::Listener(id, l.vip, l.protocol.clone(), l.port.first),
        None => RowKey::Named(l.name.clone(), IpAddr::from([0u8; 4]), None),
    }
}

fn target_key(t: &TargetCounts) -> RowKey {
    match t.id {
        Some(id) => RowKey::Target(id, t.ip),
        None => RowKey::Named(t.group.clone(), t.ip, t.via.clone()),
    }
}

/// The rates between two samples (listeners and targets of `after`; one
/// missing from `before` counts from 0). Rows are matched by id
/// ([`RowKey`]): renamed between the reads, a listener's or a group's
/// counters are still the same counters.
pub fn rates(before: &StatsSample, after: &StatsSample) -> Rates {
    let seconds = after.at_ns.saturating_sub(before.at_ns) as f64 / 1e9;
    let old_l: BTreeMap<RowKey, &ListenerCounts> = before
        .listeners
        .iter()
        .map(|l| (listener_key(l), l))
        .collect();
    let old_t: BTreeMap<RowKey, &TargetCounts> =
        before.targets.iter().map(|t| (target_key(t), t)).collect();
    let listeners = after
        .listeners
        .iter()
        .map(|l| listener_rate(old_l.get(&listener_key(l)).copied(), l, seconds))
        .collect();
    let targets = after
        .targets
        .iter()
        .map(|t| {
            let was = old_t.get(&target_key(t));
            let w = |f: fn(&TargetCounts) -> u64| was.map_or(0, |w| f(w));
            let id = (t.ip.to_string(), t.group.clone(), socket(t.ip, t.port));
            let counts = [
                (w(|c| c.packets), t.packets),
                (w(|c| c.bytes), t.bytes),
                (w(|c| c.new_flows), t.new_flows),
            ];
            Rate {
                via: t.via.clone(),
                state: Some(t.state),
                active_flows: Some(t.active_flows),
                ..Rate::of(id, counts, seconds)
            }
        })
        .collect();
    Rates {
        from_ns: before.at_ns,
        to_ns: after.at_ns,
        interval_s: seconds,
        listeners,
        targets,
    }
}

/// A rate as people read it: 3 significant digits, k/M/G.
fn human(v: f64) -> String {
    let (v, unit) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    match v {
        v if v >= 100.0 || v == 0.0 => format!("{v:.0}{unit}"),
        v if v >= 10.0 => format!("{v:.1}{unit}"),
        v => format!("{v:.2}{unit}"),
    }
}

/// The table `lb stats` prints: each listener, then its group's targets
/// (`->`), like `ipvsadm -Ln --rate`.
pub fn render(r: &Rates) -> String {
    let mut out = format!("rates over {:.2} s\n", r.interval_s);
    let mut rows = vec![[
        "LISTENER / TARGET".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "PACKETS/S".into(),
        "BITS/S".into(),
        "NEW FLOWS/S".into(),
        "ACTIVE FLOWS".into(),
    ]];
    let row = |name: String, rate: &Rate| {
        [
            name,
            rate.address.clone(),
            rate.state.map_or("-".into(), |s| s.as_str().to_string()),
            human(rate.packets_per_s),
            human(rate.bits_per_s),
            human(rate.new_flows_per_s),
            rate.active_flows.map_or("-".into(), |a| a.to_string()),
        ]
    };
    for l in &r.listeners {
        rows.push(row(format!("{} (group {})", l.name, l.target_group), l));
        for t in r
            .targets
            .iter()
            .filter(|t| t.target_group == l.target_group)
        {
            let via = t.via.as_ref().map(|v| format!(" (via {v})"));
            rows.push(row(
                format!("  -> {}{}", t.name, via.unwrap_or_default()),
                t,
            ));
        }
    }
    for t in r
        .targets
        .iter()
        .filter(|t| !r.listeners.iter().any(|l| l.target_group == t.target_group))
    {
        rows.push(row(
            format!("{} (group {}, no listener)", t.name, t.target_group),
            t,
        ));
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for cells in rows {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: f64, packets: u64, bytes: u64, flows: u64) -> StatsSample {
        StatsSample {
            at_ns: (at_s * 1e9) as u64,
            listeners: vec![ListenerCounts {
                id: Some(1),
                name: "web".into(),
                vip: Some("10.0.3.49".parse().unwrap()),
                protocol: "tcp".into(),
                port: crate::policy::Ports::one(80),
                target_group: "web".into(),
                packets,
                bytes,
                new_flows: flows,
            }],
            targets: vec![TargetCounts {
                id: Some(1),
                group: "web".into(),
                ip: "10.0.3.11".parse().unwrap(),
                port: crate::policy::Ports::one(80),
                state: TargetState::Healthy,
                via: None,
                packets,
                bytes,
                new_flows: flows,
                active_flows: 7,
            }],
        }
    }

    #[test]
    fn rates_divide_differences_by_the_time_between_reads() {
        let r = rates(
            &sample(10.0, 100, 10_000, 5),
            &sample(12.0, 300, 90_000, 25),
        );
        assert_eq!(r.interval_s, 2.0);
        let l = &r.listeners[0];
        assert_eq!((l.packets, l.bytes, l.new_flows), (200, 80_000, 20));
        assert_eq!(l.packets_per_s, 100.0);
        assert_eq!(l.bits_per_s, 320_000.0);
        assert_eq!(l.new_flows_per_s, 10.0);
        assert_eq!(l.address, "tcp 10.0.3.49:80");
        assert_eq!(r.targets[0].active_flows, Some(7));
        // A counter that went back counts from 0.
        let r = rates(&sample(10.0, 500, 10_000, 5), &sample(11.0, 40, 4_000, 2));
        assert_eq!(r.listeners[0].packets, 40);
        let table = render(&rates(
            &sample(0.0, 0, 0, 0),
            &sample(1.0, 1500, 150_000, 12),
        ));
        assert_eq!(
            table,
            "rates over 1.00 s\n\
             LISTENER / TARGET  ADDRESS           STATE    PACKETS/S  BITS/S  NEW FLOWS/S  ACTIVE FLOWS\n\
             web (group web)    tcp 10.0.3.49:80  -        1.50k      1.20M   12.0         -\n\
             \x20 -> 10.0.3.11     10.0.3.11:80      healthy  1.50k      1.20M   12.0         7\n"
        );
    }

    /// A backup's target taking the group's flows has its own row under the
    /// group, apart from its row in its own group (the same address), and
    /// its rate from its own counters.
    #[test]
    fn a_backup_target_taking_the_groups_flows_has_its_own_row() {
        let with_backup = |at_s: f64, packets: u64| {
            let mut s = sample(at_s, packets, packets * 100, 0);
            let own = s.targets[0].clone();
            s.targets.push(TargetCounts {
                id: Some(2),
                ip: "10.0.3.21".parse().unwrap(),
                via: Some("spare".into()),
                packets: 2 * packets,
                ..own.clone()
            });
            s.targets.push(TargetCounts {
                id: Some(3),
                group: "spare".into(),
                ip: "10.0.3.21".parse().unwrap(),
                packets: 7,
                ..own
            });
            s
        };
        let r = rates(&with_backup(0.0, 0), &with_backup(1.0, 50));
        let via = &r.targets[1];
        assert_eq!((via.via.as_deref(), via.packets), (Some("spare"), 100));
        assert_eq!(
            (r.targets[2].via.as_deref(), r.targets[2].packets),
            (None, 0)
        );
        let table = render(&r);
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        let lines: Vec<String> = table.lines().map(words).collect();
        let row = "-> 10.0.3.21 (via spare) 10.0.3.21:80 healthy 100 40.0k 0 7";
        assert!(lines.iter().any(|l| l == row), "{table}");
        assert!(
            table.contains("10.0.3.21 (group spare, no listener)"),
            "{table}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["targets"][1]["via"], "spare");
        assert!(json["targets"][0].get("via").is_none(), "{json}");
    }

    /// `lb apply --rename web=www` between two reads: the listener and the
    /// target keep their ids and counters, and their rates are what they
    /// took in the interval, not their whole count.
    #[test]
    fn a_renamed_group_carries_on_with_its_rates() {
        let before = sample(10.0, 1000, 100_000, 50);
        let mut after = sample(11.0, 1100, 110_000, 55);
        after.listeners[0].name = "www".into();
        after.listeners[0].target_group = "www".into();
        after.targets[0].group = "www".into();
        let r = rates(&before, &after);
        let l = &r.listeners[0];
        assert_eq!((l.name.as_str(), l.packets, l.new_flows), ("www", 100, 5));
        let t = &r.targets[0];
        assert_eq!((t.target_group.as_str(), t.packets), ("www", 100));
        assert_eq!(t.bytes, 10_000);
        // Another target given the same address in another group (another
        // id) counts from 0.
        let mut other = after.clone();
        other.targets[0].id = Some(7);
        assert_eq!(rates(&before, &other).targets[0].packets, 1100);
        // From an lb that sends no ids: by name, as before.
        let (mut old, mut new) = (before.clone(), sample(11.0, 1100, 110_000, 55));
        for s in [&mut old, &mut new] {
            s.listeners[0].id = None;
            s.targets[0].id = None;
        }
        assert_eq!(rates(&old, &new).targets[0].packets, 100);
    }
}
