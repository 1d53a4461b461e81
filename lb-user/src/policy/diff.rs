//! What a new policy changes against the one in effect: the plan `lb
//! apply` prints before anything changes (and `lb run` logs on a reload).
//! Pure: the daemon adds what only it knows (active flows, when a removed
//! target will be gone) through [`Removal`].
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use super::{
    GroupProtocol, HealthCheck, Listener, ListenerProtocol, Policy, Ports, Target, TargetGroup,
};
use crate::rename::Renames;

/// One change, for people ([`fmt::Display`]) and scripts (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    ListenerAdded {
        name: String,
        vip: IpAddr,
        protocol: String,
        port: Ports,
        target_group: String,
    },
    ListenerRemoved {
        name: String,
        vip: IpAddr,
        protocol: String,
        port: Ports,
    },
    ListenerChanged {
        name: String,
        field: String,
        from: String,
        to: String,
    },
    /// A listener of the same VIP, protocol and (first) port under another
    /// name: the same listener (its id, flows and counters stay).
    ListenerRenamed {
        from: String,
        to: String,
    },
    GroupAdded {
        name: String,
        targets: usize,
    },
    GroupRemoved {
        name: String,
        targets: usize,
    },
    GroupChanged {
        name: String,
        field: String,
        from: String,
        to: String,
    },
    /// A group renamed by `lb apply --rename` (`crate::rename`).
    GroupRenamed {
        from: String,
        to: String,
    },
    TargetAdded {
        group: String,
        ip: IpAddr,
        weight: u16,
    },
    /// A target leaving its group (it drains, unless its group leaves too).
    TargetRemoved {
        group: String,
        ip: IpAddr,
        #[serde(flatten)]
        removal: Removal,
    },
    TargetChanged {
        group: String,
        ip: IpAddr,
        field: String,
        from: String,
        to: String,
    },
}

/// What happens to a removed target's flows: filled in by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Its flows in progress now.
    pub active_flows: Option<u64>,
    /// Its group's deregistration delay (None: the group leaves too, and
    /// the target with it, at once).
    pub deregistration_delay_s: Option<u32>,
    /// When it will be `unused` at the latest (Unix seconds).
    pub unused_by: Option<u64>,
    /// The flows it holds for the groups its group backs up (its view in
    /// each, `via` its group), which drain with that group's delay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_groups: Vec<ForGroup>,
}

/// A removed target's view in a group its group backs up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForGroup {
    pub group: String,
    /// Its flows of that group in progress now.
    pub active_flows: u64,
    /// When that view will be `unused` at the latest (Unix seconds).
    pub unused_by: u64,
}

/// The changes from `old` to `new`, in a stable order: listeners, groups,
/// then targets group by group.
pub fn changes(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    listeners(old, new, &mut out);
    for g in &old.target_groups {
        if !new.target_groups.iter().any(|n| n.name == g.name) {
            out.push(Change::GroupRemoved {
                name: g.name.clone(),
                targets: g.targets.len(),
            });
        }
    }
    for g in &new.target_groups {
        match old.target_groups.iter().find(|o| o.name == g.name) {
            None => out.push(Change::GroupAdded {
                name: g.name.clone(),
                targets: g.targets.len(),
            }),
            Some(o) => {
                group_fields(o, g, &mut out);
                targets(o, g, &mut out);
            }
        }
    }
    out
}

/// The changes from `old` to `new` where `renames` renamed groups: the
/// renames first, then what else changed, each group under its new name.
pub fn changes_renaming(old: &Policy, new: &Policy, renames: &Renames) -> Vec<Change> {
    let mut out: Vec<Change> = renames
        .pairs()
        .map(|(from, to)| Change::GroupRenamed {
            from: from.into(),
            to: to.into(),
        })
        .collect();
    out.extend(changes(&renames.policy(old), new));
    out
}

/// What a renamed group would keep that a removed one and an added one do
/// not: for each group of `old` that is gone from `new` and each group new
/// in `new` that looks like it renamed (its listener has the same VIP,
/// protocol and port, or it has one of its targets), the advice to say so.
pub fn rename_hints(old: &Policy, new: &Policy) -> Vec<String> {
    let has = |p: &Policy, name: &str| p.target_groups.iter().any(|g| g.name == name);
    let gone = old.target_groups.iter().filter(|g| !has(new, &g.name));
    let mut added: Vec<&TargetGroup> = new
        .target_groups
        .iter()
        .filter(|g| !has(old, &g.name))
        .collect();
    let mut out = Vec::new();
    for o in gone {
        let like = |n: &&TargetGroup| {
            let same_listener = match (old.listener_of(&o.name), new.listener_of(&n.name)) {
                (Some(a), Some(b)) => listener_id(a) == listener_id(b),
                _ => false,
            };
            same_listener
                || o.targets
                    .iter()
                    .any(|t| n.targets.iter().any(|x| x.ip == t.ip))
        };
        if let Some(i) = added.iter().position(like) {
            let n = added.remove(i);
            out.push(format!(
                "if `{}` is `{}` renamed, apply with --rename {}={}: it keeps its flows, health verdicts and drains (without it, `{}`'s targets leave at once and their flows choose a target again)",
                n.name, o.name, o.name, n.name, o.name
            ));
        }
    }
    out
}

/// What a listener's id follows (`crate::ids`): VIP, protocol, first port.
fn listener_id(l: &Listener) -> (IpAddr, ListenerProtocol, u16) {
    (l.vip, l.protocol, l.port.first)
}

/// What tells a renamed listener from a removed and an added one: the names
/// of `new`, and for each listener of `new` under a name `old` does not
/// have, the first listener of `old` with its id whose name `new` does not
/// have (it was renamed). Found in a few lookups each (a policy may have a
/// thousand listeners).
struct ListenerNames<'a> {
    new: HashSet<&'a str>,
    renamed_from: HashMap<&'a str, &'a Listener>,
}

impl<'a> ListenerNames<'a> {
    fn of(old: &'a Policy, new: &'a Policy) -> ListenerNames<'a> {
        let names = |p: &'a Policy| -> HashSet<&'a str> {
            p.listeners.iter().map(|l| l.name.as_str()).collect()
        };
        let (old_names, new_names) = (names(old), names(new));
        let mut left: HashMap<(IpAddr, ListenerProtocol, u16), &Listener> = HashMap::new();
        for o in old
            .listeners
            .iter()
            .filter(|o| !new_names.contains(o.name.as_str()))
        {
            left.entry(listener_id(o)).or_insert(o);
        }
        let renamed_from = new
            .listeners
            .iter()
            .filter(|n| !old_names.contains(n.name.as_str()))
            .filter_map(|n| Some((n.name.as_str(), *left.get(&listener_id(n))?)))
            .collect();
        ListenerNames {
            new: new_names,
            renamed_from,
        }
    }
}

fn listeners(old: &Policy, new: &Policy, out: &mut Vec<Change>) {
    let names = ListenerNames::of(old, new);
    let renamed: HashSet<&str> = names
        .renamed_from
        .values()
        .map(|o| o.name.as_str())
        .collect();
    let renamed_from = |n: &Listener| names.renamed_from.get(n.name.as_str()).copied();
    for l in &old.listeners {
        if !names.new.contains(l.name.as_str()) && !renamed.contains(l.name.as_str()) {
            out.push(Change::ListenerRemoved {
                name: l.name.clone(),
                vip: l.vip,
                protocol: l.protocol.as_str().into(),
                port: l.port,
            });
        }
    }
    for l in &new.listeners {
        let was = old.listeners.iter().find(|o| o.name == l.name);
        let was = match (was, renamed_from(l)) {
            (None, Some(o)) => {
                out.push(Change::ListenerRenamed {
                    from: o.name.clone(),
                    to: l.name.clone(),
                });
                Some(o)
            }
            (was, _) => was,
        };
        match was {
            None => out.push(Change::ListenerAdded {
                name: l.name.clone(),
                vip: l.vip,
                protocol: l.protocol.as_str().into(),
                port: l.port,
                target_group: l.target_group.clone(),
            }),
            Some(o) => {
                for (field, from, to) in listener_fields(o, l) {
                    out.push(Change::ListenerChanged {
                        name: l.name.clone(),
                        field: field.into(),
                        from,
                        to,
                    });
                }
            }
        }
    }
}

fn listener_fields(o: &Listener, n: &Listener) -> Vec<(&'static str, String, String)> {
    let fields = [
        ("vip", o.vip.to_string(), n.vip.to_string()),
        (
            "protocol",
            o.protocol.as_str().into(),
            n.protocol.as_str().into(),
        ),
        ("port", o.port.to_string(), n.port.to_string()),
        (
            "target_group",
            o.target_group.clone(),
            n.target_group.clone(),
        ),
    ];
    fields.into_iter().filter(|(_, a, b)| a != b).collect()
}

/// A group's settings, each as written or in effect.
fn settings(g: &TargetGroup) -> Vec<(&'static str, String)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    vec![
        ("protocol", g.protocol.as_str().into()),
        ("algorithm", g.algorithm.as_str().into()),
        ("affinity", g.affinity.as_str().into()),
        ("table_size", g.table_size.to_string()),
        (
            "health_check",
            opt(g.health_check.as_ref().map(|h| health_check(h, g.protocol))),
        ),
        (
            "target_failover",
            g.target_failover.on_unhealthy.as_str().to_string(),
        ),
        ("flow_idle_timeout_s", g.idle_timeout_s().to_string()),
        ("flow_fin_timeout_s", g.fin_timeout_s().to_string()),
        (
            "sticky_session",
            opt(g
                .sticky_session
                .filter(|s| s.enabled)
                .map(|s| format!("source_ip {}s", s.duration_s))),
        ),
        (
            "deregistration_delay_s",
            g.deregistration_delay_s().to_string(),
        ),
        (
            "backup",
            opt(g
                .backup
                .as_ref()
                .map(|b| format!("{b} (failover ratio {})", g.failover_ratio.unwrap_or(0.0)))),
        ),
    ]
}

/// A health check of a group of `protocol` in one line: everything that
/// decides a verdict (a changed check starts its targets from `initial`).
fn health_check(h: &HealthCheck, protocol: GroupProtocol) -> String {
    if !h.enabled {
        return "disabled".into();
    }
    let kind = h.kind_for(protocol);
    let port = h.port.map(|p| format!(" port {p}")).unwrap_or_default();
    let request = if kind.is_http() {
        format!(
            " {} {} HTTP/{} expecting {},",
            h.method().as_str(),
            h.path(),
            h.version().as_str(),
            h.status_codes()
        )
    } else {
        String::new()
    };
    format!(
        "{}{port}{request} every {}s, timeout {}s, up after {}, down after {}",
        kind.as_str(),
        h.interval_s,
        h.timeout_s,
        h.healthy_threshold,
        h.unhealthy_threshold
    )
}

fn group_fields(o: &TargetGroup, n: &TargetGroup, out: &mut Vec<Change>) {
    for ((field, from), (_, to)) in settings(o).into_iter().zip(settings(n)) {
        if from != to {
            out.push(Change::GroupChanged {
                name: n.name.clone(),
                field: field.into(),
                from,
                to,
            });
        }
    }
}

fn targets(o: &TargetGroup, n: &TargetGroup, out: &mut Vec<Change>) {
    for t in &o.targets {
        if !n.targets.iter().any(|x| x.ip == t.ip) {
            out.push(Change::TargetRemoved {
                group: n.name.clone(),
                ip: t.ip,
                removal: Removal {
                    deregistration_delay_s: Some(n.deregistration_delay_s()),
                    ..Removal::default()
                },
            });
        }
    }
    for t in &n.targets {
        match o.targets.iter().find(|x| x.ip == t.ip) {
            None => out.push(Change::TargetAdded {
                group: n.name.clone(),
                ip: t.ip,
                weight: t.weight,
            }),
            Some(was) => {
                for (field, from, to) in target_fields(was, t) {
                    out.push(Change::TargetChanged {
                        group: n.name.clone(),
                        ip: t.ip,
                        field: field.into(),
                        from,
                        to,
                    });
                }
            }
        }
    }
}

fn target_fields(o: &Target, n: &Target) -> Vec<(&'static str, String, String)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let fields = [
        ("weight", o.weight.to_string(), n.weight.to_string()),
        (
            "mac",
            opt(o.mac.map(|m| m.to_string())),
            opt(n.mac.map(|m| m.to_string())),
        ),
        (
            "monitor_port",
            opt(o.monitor_port.map(|p| p.to_string())),
            opt(n.monitor_port.map(|p| p.to_string())),
        ),
        (
            "port",
            opt(o.port.map(|p| p.to_string())),
            opt(n.port.map(|p| p.to_string())),
        ),
    ];
    fields.into_iter().filter(|(_, a, b)| a != b).collect()
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::ListenerAdded {
                name,
                vip,
                protocol,
                port,
                target_group,
            } => write!(
                f,
                "+ listener {name} {vip} {protocol} {port} -> {target_group}"
            ),
            Change::ListenerRemoved {
                name,
                vip,
                protocol,
                port,
            } => write!(
                f,
                "- listener {name} {vip} {protocol} {port} (its traffic passes to this host)"
            ),
            Change::ListenerChanged {
                name,
                field,
                from,
                to,
            } => write!(f, "~ listener {name}: {field} {from} -> {to}"),
            Change::ListenerRenamed { from, to } => renamed(f, "listener", from, to),
            Change::GroupAdded { name, targets } => {
                write!(f, "+ target group {name} ({targets} targets)")
            }
            Change::GroupRemoved { name, targets } => {
                write!(
                    f,
                    "- target group {name} ({targets} targets, removed at once)"
                )
            }
            Change::GroupChanged {
                name,
                field,
                from,
                to,
            } => write!(f, "~ target group {name}: {field} {from} -> {to}"),
            Change::GroupRenamed { from, to } => renamed(f, "target group", from, to),
            Change::TargetAdded { group, ip, weight } => {
                write!(f, "+ target {ip} in {group} (weight {weight})")
            }
            Change::TargetRemoved { group, ip, removal } => {
                write!(f, "- target {ip} in {group}: {removal}")
            }
            Change::TargetChanged {
                group,
                ip,
                field,
                from,
                to,
            } => write!(f, "~ target {ip} in {group}: {field} {from} -> {to}"),
        }
    }
}

/// A listener's or a group's rename, and what it keeps.
fn renamed(f: &mut fmt::Formatter<'_>, what: &str, from: &str, to: &str) -> fmt::Result {
    let kept = match what {
        "listener" => "same VIP, protocol and port: its flows and counters stay",
        _ => "its flows, health verdicts and drains stay",
    };
    write!(f, "~ {what} {from}: renamed to {to} ({kept})")
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flows = self
            .active_flows
            .map(|n| format!("{n} active flows, "))
            .unwrap_or_default();
        match self.deregistration_delay_s {
            None => write!(f, "{flows}gone at once"),
            Some(0) => write!(f, "{flows}unused at once (deregistration_delay_s 0)"),
            Some(delay) => write!(
                f,
                "draining: {flows}unused in {delay} s{} or when its flows end",
                self.unused_by
                    .map(|at| format!(" (at {})", clock(at)))
                    .unwrap_or_default()
            ),
        }?;
        for g in &self.for_groups {
            write!(
                f,
                "; for {} (its backup): {} active flows, unused at {} or when they end",
                g.group,
                g.active_flows,
                clock(g.unused_by)
            )?;
        }
        Ok(())
    }
}

/// A Unix time as `HH:MM:SS UTC`.
fn clock(unix: u64) -> String {
    let day = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    const BEFORE: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: old, vip: 10.0.3.49, protocol: tcp, port: 82, target_group: old }
target_groups:
  - name: web
    protocol: tcp
    targets: [{ ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13, weight: 256 }]
  - { name: old, protocol: tcp, targets: [{ ip: 10.0.3.31 }] }
"#;

    const AFTER: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: api, vip: 10.0.3.50, protocol: tcp, port: 80, target_group: api }
target_groups:
  - name: web
    protocol: tcp
    algorithm: round_robin
    deregistration_delay_s: 60
    backup: api
    failover_ratio: 0.5
    targets: [{ ip: 10.0.3.11 }, { ip: 10.0.3.13, weight: 128 }, { ip: 10.0.3.14 }]
  - { name: api, protocol: tcp, targets: [{ ip: 10.0.3.21 }] }
"#;

    /// Every kind of change of a sample edit, named.
    #[test]
    fn a_sample_edit_names_every_change() {
        let (old, new) = (
            policy::parse("a.yaml", BEFORE).unwrap(),
            policy::parse("b.yaml", AFTER).unwrap(),
        );
        let lines: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "- listener old 10.0.3.49 tcp 82 (its traffic passes to this host)",
                "+ listener api 10.0.3.50 tcp 80 -> api",
                "- target group old (1 targets, removed at once)",
                "~ target group web: algorithm hash -> round_robin",
                "~ target group web: deregistration_delay_s 300 -> 60",
                "~ target group web: backup none -> api (failover ratio 0.5)",
                "- target 10.0.3.12 in web: draining: unused in 60 s or when its flows end",
                "~ target 10.0.3.13 in web: weight 256 -> 128",
                "+ target 10.0.3.14 in web (weight 256)",
                "+ target group api (1 targets)",
            ]
        );
        assert!(changes(&new, &new).is_empty(), "no change, no plan");
        // JSON for scripts: tagged, flat.
        let json = serde_json::to_value(&changes(&old, &new)[6]).unwrap();
        assert_eq!(json["change"], "target_removed");
        assert_eq!(json["deregistration_delay_s"], 60);
    }

    /// Every setting of a health check that decides a verdict shows in the
    /// plan when it changes (such a change starts the targets from
    /// `initial`): the HTTP request's too; one written as it was in effect
    /// is no change.
    #[test]
    fn a_health_check_change_names_what_the_probe_does() {
        let with = |check: &str| {
            let text = BEFORE.replace(
                "    protocol: tcp\n    targets",
                &format!("    protocol: http\n    health_check: {check}\n    targets"),
            );
            policy::parse("t.yaml", &text).unwrap()
        };
        let http = "{ type: http, path: /healthz }";
        let line = |from: &str, to: &str| {
            let lines: Vec<String> = changes(&with(from), &with(to))
                .iter()
                .map(|c| c.to_string())
                .collect();
            lines.join("\n")
        };
        assert_eq!(
            line(http, "{ type: http, path: /ready }"),
            "~ target group web: health_check http GET /healthz HTTP/1.1 expecting 200-399, \
             every 30s, timeout 5s, up after 5, down after 2 -> http GET /ready HTTP/1.1 \
             expecting 200-399, every 30s, timeout 5s, up after 5, down after 2"
        );
        for other in [
            "{ type: http, path: /healthz, method: HEAD }",
            "{ type: http, path: /healthz, version: \"1.0\" }",
            "{ type: http, path: /healthz, status_codes: \"200\" }",
            "{ type: https, path: /healthz }",
        ] {
            assert!(!line(http, other).is_empty(), "{other}");
        }
        assert_eq!(
            line("{ path: /healthz }", "{ type: http, path: /healthz }"),
            "",
            "http is the default"
        );
    }

    /// A group renamed with `--rename` is one change, then what else
    /// changed under its new name; without it, a remove and an add, and
    /// the advice to say it is a rename.
    #[test]
    fn a_renamed_group_is_one_change_and_a_guess_is_advice() {
        let old = policy::parse("a.yaml", BEFORE).unwrap();
        let text = BEFORE
            .replace("target_group: web", "target_group: www")
            .replace("name: web\n", "name: www\n")
            .replace("{ ip: 10.0.3.12 }, ", "");
        let new = policy::parse("b.yaml", &text).unwrap();
        let renames = Renames::parse(&["web=www"]).unwrap();
        let lines: Vec<String> = changes_renaming(&old, &new, &renames)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "~ target group web: renamed to www (its flows, health verdicts and drains stay)",
                "- target 10.0.3.12 in www: draining: unused in 300 s or when its flows end",
            ]
        );
        let json = serde_json::to_value(&changes_renaming(&old, &new, &renames)[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"change": "group_renamed", "from": "web", "to": "www"})
        );
        let plain: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert!(plain.contains(&"- target group web (3 targets, removed at once)".to_string()));
        assert!(plain.contains(&"+ target group www (2 targets)".to_string()));
        let hints = rename_hints(&old, &new);
        assert_eq!(hints.len(), 1, "{hints:?}");
        assert!(hints[0].contains("--rename web=www"), "{}", hints[0]);
        assert!(rename_hints(&old, &old).is_empty());
        // A group gone and an unrelated one added: no advice.
        let unrelated = BEFORE
            .replace(
                "name: old, protocol: tcp, targets: [{ ip: 10.0.3.31 }]",
                "name: new, protocol: tcp, targets: [{ ip: 10.0.3.32 }]",
            )
            .replace("target_group: old", "target_group: new")
            .replace("port: 82", "port: 83");
        let unrelated = policy::parse("c.yaml", &unrelated).unwrap();
        assert!(
            rename_hints(&old, &unrelated).is_empty(),
            "{:?}",
            rename_hints(&old, &unrelated)
        );
    }

    /// A listener under a new name with the same VIP, protocol and port is
    /// the same listener renamed.
    #[test]
    fn a_listener_of_the_same_key_under_a_new_name_is_renamed() {
        let old = policy::parse("a.yaml", BEFORE).unwrap();
        let text = BEFORE.replace("{ name: web, vip", "{ name: front, vip");
        let new = policy::parse("b.yaml", &text).unwrap();
        let lines: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "~ listener web: renamed to front (same VIP, protocol and port: its flows and counters stay)"
            ]
        );
        // Renamed and moved to another port: another listener.
        let moved = text.replace("port: 80, target_group: web", "port: 81, target_group: web");
        let moved = policy::parse("c.yaml", &moved).unwrap();
        let lines: Vec<String> = changes(&old, &moved)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("- listener web"), "{lines:?}");
        assert!(lines[1].starts_with("+ listener front"), "{lines:?}");
    }

    #[test]
    fn a_removal_says_when_the_target_goes() {
        let r = Removal {
            active_flows: Some(5),
            deregistration_delay_s: Some(300),
            unused_by: Some(86_400 + 3600 + 60 + 5),
            for_groups: Vec::new(),
        };
        assert_eq!(
            r.to_string(),
            "draining: 5 active flows, unused in 300 s (at 01:01:05 UTC) or when its flows end"
        );
        // A target of a backup group with no delay, holding flows of the
        // group it backs up, which has one.
        let r = Removal {
            active_flows: Some(0),
            deregistration_delay_s: Some(0),
            unused_by: None,
            for_groups: vec![ForGroup {
                group: "web".into(),
                active_flows: 4,
                unused_by: 3600 + 300,
            }],
        };
        assert_eq!(
            r.to_string(),
            "0 active flows, unused at once (deregistration_delay_s 0); for web (its backup): \
             4 active flows, unused at 01:05:00 UTC or when they end"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["for_groups"][0]["group"], "web");
    }
}
