//! Policy files for lab tests: the shape of `examples/lab.yaml` with the
//! knobs the tests turn (algorithm, affinity, weights, static MACs, health
//! checks, target failover, monitor ports, the `lines` listener).
use std::{fmt::Write as _, net::IpAddr};

use crate::topo::{LINES_PORT, TARGETS, TCP_PORT, UDP_PORT, VIP4, VIP6, fmt_mac};

/// A listener of [`listeners_yaml`], with a group of its own of the same
/// name: t1, t2 and t3 (their addresses of the VIP's family), by the
/// group's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub name: &'static str,
    pub vip: IpAddr,
    /// `tcp` or `udp` (also the group's protocol).
    pub proto: &'static str,
    pub port: u16,
    /// `hash`, `source_ip`, `round_robin` or `least_connections`.
    pub algorithm: &'static str,
    /// `five_tuple`, `three_tuple` or `two_tuple` (written for `hash` only).
    pub affinity: &'static str,
}

/// A policy of `listeners`, each with its group; every target has weight
/// 256 (so round robin and least connections treat them alike).
pub fn listeners_yaml(listeners: &[Listener]) -> String {
    let mut y = String::from("interface: eth0\nlisteners:\n");
    for l in listeners {
        let _ = write!(
            y,
            "  - name: {}\n    vip: \"{}\"\n    protocol: {}\n    port: {}\n    target_group: {}\n",
            l.name, l.vip, l.proto, l.port, l.name
        );
    }
    y.push_str("target_groups:\n");
    for l in listeners {
        let _ = write!(
            y,
            "  - name: {}\n    protocol: {}\n    algorithm: {}\n",
            l.name, l.proto, l.algorithm
        );
        if l.algorithm == "hash" {
            let _ = writeln!(y, "    affinity: {}", l.affinity);
        }
        y.push_str("    targets:\n");
        for t in &TARGETS {
            let _ = write!(
                y,
                "      - ip: \"{}\"\n        weight: 256\n",
                t.ip(l.vip.is_ipv6())
            );
        }
    }
    y
}

/// A group's `health_check:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub enabled: bool,
    /// `tcp`, `http`, `https` or `ping`.
    pub kind: &'static str,
    /// Monitor port; None: the listener's port.
    pub port: Option<u16>,
    pub interval_s: u32,
    pub timeout_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP/HTTPS only (written only for those types).
    pub method: &'static str,
    /// `"1.0"` or `"1.1"`.
    pub version: &'static str,
    pub path: &'static str,
    pub status_codes: &'static str,
}

impl HealthCheck {
    /// What the lab uses (and `examples/lab.yaml`'s `web` group has): TCP,
    /// every 2 s, 1 s timeout, 2 successes to become healthy and 2 failures
    /// to become unhealthy. Short, so that a test sees transitions within
    /// seconds; the timeout below the interval as the policy requires.
    pub fn tcp() -> HealthCheck {
        HealthCheck {
            enabled: true,
            kind: "tcp",
            port: None,
            interval_s: 2,
            timeout_s: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            method: "GET",
            version: "1.1",
            path: "/healthz",
            status_codes: "200-399",
        }
    }

    /// [`HealthCheck::tcp`]'s timing with another type.
    pub fn of(kind: &'static str) -> HealthCheck {
        HealthCheck {
            kind,
            ..HealthCheck::tcp()
        }
    }

    fn is_http(&self) -> bool {
        matches!(self.kind, "http" | "https")
    }

    /// The section, indented for a group of [`LabPolicy::yaml`].
    fn yaml(&self, y: &mut String) {
        let _ = write!(
            y,
            "    health_check:\n      enabled: {}\n      type: {}\n",
            self.enabled, self.kind
        );
        if let Some(port) = self.port {
            let _ = writeln!(y, "      port: {port}");
        }
        let _ = write!(
            y,
            "      interval_s: {}\n      timeout_s: {}\n      healthy_threshold: {}\n      unhealthy_threshold: {}\n",
            self.interval_s, self.timeout_s, self.healthy_threshold, self.unhealthy_threshold
        );
        if self.is_http() {
            let _ = write!(
                y,
                "      method: {}\n      version: \"{}\"\n      path: {}\n      status_codes: \"{}\"\n",
                self.method, self.version, self.path, self.status_codes
            );
        }
    }
}

/// The policy of a lab test; every group of the policy uses the same
/// settings, except the health check, which goes to `checked_groups` only.
#[derive(Debug, Clone)]
pub struct LabPolicy {
    /// `hash`, `source_ip`, `round_robin` or `least_connections`.
    pub algorithm: &'static str,
    /// `five_tuple`, `three_tuple` or `two_tuple` (ignored for `source_ip`).
    pub affinity: &'static str,
    /// Weights of t1, t2, t3.
    pub weights: [u16; 3],
    /// Give each target its MAC in the policy instead of leaving it to the
    /// neighbour table.
    pub static_macs: bool,
    /// Group protocol of `web`, `web6` and `lines`: `tcp`, or `http` (which
    /// HTTP and HTTPS health checks need; SPEC.md).
    pub tcp_group_protocol: &'static str,
    /// The `health_check:` section of the groups in `checked_groups`.
    pub health_check: Option<HealthCheck>,
    pub checked_groups: &'static [&'static str],
    /// `target_failover` (`no_rebalance` or `rebalance`, both keys the same)
    /// of the groups in `checked_groups`; None: not written (the default).
    pub on_unhealthy: Option<&'static str>,
    /// `monitor_port:` of t1, t2, t3 in the groups that get `health_check`.
    pub monitor_ports: [Option<u16>; 3],
    /// Add the listener `lines` (tcp 10.0.3.49:81) and its group, served by
    /// the targets' lines port (one answer per line, long-lived connections).
    pub lines: bool,
    /// `sticky_session: { enabled: true, type: source_ip, duration_s: N }`
    /// in every group (tcp and udp groups only: the policy refuses it on
    /// http ones).
    pub sticky_duration_s: Option<u32>,
}

impl Default for LabPolicy {
    /// What `examples/lab.yaml` has, without its health check (so traffic
    /// flows at once, with no `initial` phase): see [`LabPolicy::example`].
    fn default() -> Self {
        LabPolicy {
            algorithm: "hash",
            affinity: "five_tuple",
            weights: [256, 256, 128],
            static_macs: false,
            tcp_group_protocol: "tcp",
            health_check: None,
            checked_groups: &["web", "web6", "lines"],
            on_unhealthy: None,
            monitor_ports: [None; 3],
            lines: false,
            sticky_duration_s: None,
        }
    }
}

impl LabPolicy {
    /// Exactly `examples/lab.yaml`: the default plus the TCP health check
    /// and the (default) `no_rebalance` failover on `web`.
    pub fn example() -> LabPolicy {
        LabPolicy {
            health_check: Some(HealthCheck::tcp()),
            checked_groups: &["web"],
            on_unhealthy: Some("no_rebalance"),
            ..LabPolicy::default()
        }
    }

    /// With `check` on `web`, `web6` and `lines`.
    pub fn checked(check: HealthCheck) -> LabPolicy {
        LabPolicy {
            tcp_group_protocol: if check.is_http() { "http" } else { "tcp" },
            health_check: Some(check),
            ..LabPolicy::default()
        }
    }

    /// Listeners `web` (tcp 10.0.3.49:80), `dns` (udp 10.0.3.49:53) and `web6`
    /// (tcp [fd00:3::49]:80), each with its own group of t1..t3; with
    /// `lines`, also `lines` (tcp 10.0.3.49:81).
    pub fn yaml(&self) -> String {
        let mut y = String::from("interface: eth0\nlisteners:\n");
        let mut listeners = vec![
            ("web", VIP4.to_string(), "tcp", TCP_PORT, false),
            ("dns", VIP4.to_string(), "udp", UDP_PORT, false),
            ("web6", VIP6.to_string(), "tcp", TCP_PORT, true),
        ];
        if self.lines {
            listeners.push(("lines", VIP4.to_string(), "tcp", LINES_PORT, false));
        }
        for (name, vip, proto, port, _) in &listeners {
            let _ = write!(
                y,
                "  - name: {name}\n    vip: \"{vip}\"\n    protocol: {proto}\n    port: {port}\n    target_group: {name}\n"
            );
        }
        y.push_str("target_groups:\n");
        for (name, _, proto, _, v6) in &listeners {
            self.group_yaml(&mut y, name, proto, *v6);
        }
        y
    }

    /// The group `name` of a listener of protocol `proto` (`v6`: its
    /// targets' IPv6 addresses).
    fn group_yaml(&self, y: &mut String, name: &str, proto: &str, v6: bool) {
        let group_proto = if proto == "tcp" {
            self.tcp_group_protocol
        } else {
            proto
        };
        let _ = write!(
            y,
            "  - name: {name}\n    protocol: {group_proto}\n    algorithm: {}\n",
            self.algorithm
        );
        if self.algorithm == "hash" {
            let _ = writeln!(y, "    affinity: {}", self.affinity);
        }
        if let Some(duration) = self.sticky_duration_s {
            let _ = writeln!(
                y,
                "    sticky_session: {{ enabled: true, type: source_ip, duration_s: {duration} }}"
            );
        }
        let checked = self.checked_groups.contains(&name);
        if checked {
            if let Some(check) = &self.health_check {
                check.yaml(y);
            }
            if let Some(mode) = self.on_unhealthy {
                let _ = write!(
                    y,
                    "    target_failover:\n      on_unhealthy: {mode}\n      on_deregistration: {mode}\n"
                );
            }
        }
        self.targets_yaml(y, v6, checked);
    }

    /// A group's `targets:` (`checked`: the group has a health check).
    fn targets_yaml(&self, y: &mut String, v6: bool, checked: bool) {
        y.push_str("    targets:\n");
        for ((t, weight), monitor_port) in TARGETS.iter().zip(self.weights).zip(self.monitor_ports)
        {
            let _ = write!(
                y,
                "      - ip: \"{}\"\n        weight: {weight}\n",
                t.ip(v6)
            );
            if self.static_macs {
                let _ = writeln!(y, "        mac: \"{}\"", fmt_mac(t.mac));
            }
            // Only where a health check is written: elsewhere the
            // policy refuses it.
            if let Some(port) = monitor_port.filter(|_| checked && self.health_check.is_some()) {
                let _ = writeln!(y, "        monitor_port: {port}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        let yaml = LabPolicy::default().yaml();
        let policy =
            lb_user::policy::parse("lab.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(policy.interface.as_deref(), Some("eth0"));
        assert_eq!(policy.listeners.len(), 3);
        assert_eq!(
            policy.target_groups[2].targets[2].ip.to_string(),
            "fd00:3::13"
        );
        assert_eq!(policy.target_groups[0].targets[2].weight, 128);
    }

    #[test]
    fn source_ip_and_static_macs_are_valid() {
        let yaml = LabPolicy {
            algorithm: "source_ip",
            static_macs: true,
            ..LabPolicy::default()
        }
        .yaml();
        let policy =
            lb_user::policy::parse("lab.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(
            policy.target_groups[0].targets[0]
                .mac
                .map(|m| m.to_string()),
            Some("02:00:00:00:00:11".to_string())
        );
        assert!(!yaml.contains("affinity"));
    }

    #[test]
    fn algorithms_and_sticky_sessions_are_valid() {
        for algorithm in ["hash", "source_ip", "round_robin", "least_connections"] {
            let yaml = LabPolicy {
                algorithm,
                sticky_duration_s: Some(4),
                lines: true,
                ..LabPolicy::default()
            }
            .yaml();
            let policy = lb_user::policy::parse("lab.yaml", &yaml)
                .unwrap_or_else(|e| panic!("{algorithm}: {e}\n{yaml}"));
            assert!(
                policy
                    .target_groups
                    .iter()
                    .all(|g| g.sticky_session.is_some_and(|s| s.duration_s == 4))
            );
        }
    }

    #[test]
    fn listeners_of_their_own_are_valid() {
        let mut listeners = Vec::new();
        for (i, algorithm) in ["hash", "source_ip", "round_robin", "least_connections"]
            .into_iter()
            .enumerate()
        {
            for (vip, proto) in [(IpAddr::from(VIP4), "tcp"), (VIP6.into(), "udp")] {
                listeners.push(Listener {
                    name: ["a", "b", "c", "d", "e", "f", "g", "h"][listeners.len()],
                    vip,
                    proto,
                    port: 81 + i as u16,
                    algorithm,
                    affinity: "three_tuple",
                });
            }
        }
        let yaml = listeners_yaml(&listeners);
        let policy =
            lb_user::policy::parse("lab.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(policy.listeners.len(), 8);
        assert_eq!(
            policy.target_groups[1].targets[2].ip.to_string(),
            "fd00:3::13"
        );
        assert_eq!(yaml.matches("affinity: three_tuple").count(), 2);
    }

    #[test]
    fn lines_listener_is_valid() {
        let yaml = LabPolicy {
            lines: true,
            ..LabPolicy::default()
        }
        .yaml();
        let policy =
            lb_user::policy::parse("lab.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(policy.listeners[3].port, lb_user::policy::Ports::one(81));
        assert_eq!(policy.target_groups[3].name, "lines");
        assert!(!yaml.contains("health_check") && !yaml.contains("monitor_port"));
    }

    /// The sections as the contract of the health checks spells them.
    #[test]
    fn health_sections_as_written() {
        let yaml = LabPolicy {
            on_unhealthy: Some("rebalance"),
            monitor_ports: [None, Some(8090), None],
            checked_groups: &["web"],
            ..LabPolicy::checked(HealthCheck {
                port: Some(8080),
                method: "HEAD",
                version: "1.0",
                ..HealthCheck::of("http")
            })
        }
        .yaml();
        let web = &yaml[yaml.find("  - name: web\n    protocol").unwrap()..];
        let web = &web[..web.find("  - name: dns").unwrap()];
        assert_eq!(
            web,
            "  - name: web
    protocol: http
    algorithm: hash
    affinity: five_tuple
    health_check:
      enabled: true
      type: http
      port: 8080
      interval_s: 2
      timeout_s: 1
      healthy_threshold: 2
      unhealthy_threshold: 2
      method: HEAD
      version: \"1.0\"
      path: /healthz
      status_codes: \"200-399\"
    target_failover:
      on_unhealthy: rebalance
      on_deregistration: rebalance
    targets:
      - ip: \"10.0.3.11\"
        weight: 256
      - ip: \"10.0.3.12\"
        weight: 256
        monitor_port: 8090
      - ip: \"10.0.3.13\"
        weight: 128
"
        );
        // Only `web` is checked; the others are not touched.
        assert_eq!(yaml.matches("health_check").count(), 1);
        assert_eq!(yaml.matches("monitor_port").count(), 1);
        assert!(!HealthCheck::tcp().is_http());
    }

    /// Every policy the health tests use parses (needs the policy model of
    /// the health checks).
    #[test]
    fn health_policies_are_valid() {
        for kind in ["tcp", "http", "https", "ping"] {
            for on_unhealthy in [None, Some("no_rebalance"), Some("rebalance")] {
                // Ping has no port: the policy refuses one.
                let port = (kind != "ping").then_some(8080);
                let yaml = LabPolicy {
                    on_unhealthy,
                    monitor_ports: [port, None, None],
                    lines: true,
                    ..LabPolicy::checked(HealthCheck {
                        port,
                        ..HealthCheck::of(kind)
                    })
                }
                .yaml();
                lb_user::policy::parse("lab.yaml", &yaml)
                    .unwrap_or_else(|e| panic!("{kind}, {on_unhealthy:?}: {e}\n{yaml}"));
            }
        }
        let disabled = LabPolicy {
            checked_groups: &["web6"],
            ..LabPolicy::checked(HealthCheck {
                enabled: false,
                ..HealthCheck::tcp()
            })
        }
        .yaml();
        lb_user::policy::parse("lab.yaml", &disabled).unwrap_or_else(|e| panic!("{e}\n{disabled}"));
    }
}

/// `examples/lab.yaml` and `LabPolicy::example()` describe the same
/// listeners, groups, weights and health check, so the tests measure what
/// `cargo xtask run` shows.
#[cfg(test)]
#[test]
fn example_policy_is_the_lab_example() {
    let path = crate::lab::workspace_root().join("examples/lab.yaml");
    let example = lb_user::policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let yaml = LabPolicy::example().yaml();
    let ours = lb_user::policy::parse("lab.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(example, ours);
}
