//! Policy files for lab tests: the shape of `examples/lab.yaml` with the
//! knobs the tests turn (algorithm, affinity, weights, static MACs).
use std::fmt::Write as _;

use crate::topo::{TARGETS, TCP_PORT, UDP_PORT, VIP4, VIP6, fmt_mac};

/// One group's settings; every group of the policy uses them.
#[derive(Debug, Clone)]
pub struct LabPolicy {
    /// `hash` or `source_ip`.
    pub algorithm: &'static str,
    /// `five_tuple`, `three_tuple` or `two_tuple` (ignored for `source_ip`).
    pub affinity: &'static str,
    /// Weights of t1, t2, t3.
    pub weights: [u16; 3],
    /// Give each target its MAC in the policy instead of leaving it to the
    /// neighbour table.
    pub static_macs: bool,
}

impl Default for LabPolicy {
    /// What `examples/lab.yaml` has.
    fn default() -> Self {
        LabPolicy {
            algorithm: "hash",
            affinity: "five_tuple",
            weights: [256, 256, 128],
            static_macs: false,
        }
    }
}

impl LabPolicy {
    /// Listeners `web` (tcp 10.0.3.49:80), `dns` (udp 10.0.3.49:53) and `web6`
    /// (tcp [fd00:3::49]:80), each with its own group of t1..t3.
    pub fn yaml(&self) -> String {
        let mut y = String::from("interface: eth0\nlisteners:\n");
        let listeners = [
            ("web", VIP4.to_string(), "tcp", TCP_PORT, false),
            ("dns", VIP4.to_string(), "udp", UDP_PORT, false),
            ("web6", VIP6.to_string(), "tcp", TCP_PORT, true),
        ];
        for (name, vip, proto, port, _) in &listeners {
            let _ = write!(
                y,
                "  - name: {name}\n    vip: \"{vip}\"\n    protocol: {proto}\n    port: {port}\n    target_group: {name}\n"
            );
        }
        y.push_str("target_groups:\n");
        for (name, _, proto, _, v6) in &listeners {
            let _ = write!(
                y,
                "  - name: {name}\n    protocol: {proto}\n    algorithm: {}\n",
                self.algorithm
            );
            if self.algorithm == "hash" {
                let _ = writeln!(y, "    affinity: {}", self.affinity);
            }
            y.push_str("    targets:\n");
            for (t, weight) in TARGETS.iter().zip(self.weights) {
                let _ = write!(
                    y,
                    "      - ip: \"{}\"\n        weight: {weight}\n",
                    t.ip(*v6)
                );
                if self.static_macs {
                    let _ = writeln!(y, "        mac: \"{}\"", fmt_mac(t.mac));
                }
            }
        }
        y
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
            policy.target_groups[0].targets[0].mac.as_deref(),
            Some("02:00:00:00:00:11")
        );
        assert!(!yaml.contains("affinity"));
    }
}

/// `examples/lab.yaml` and `LabPolicy::default()` describe the same listeners,
/// groups and weights, so the tests measure what `cargo xtask run` shows.
#[cfg(test)]
#[test]
fn default_policy_is_the_lab_example() {
    let path = crate::lab::workspace_root().join("examples/lab.yaml");
    let example = lb_user::policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ours = lb_user::policy::parse("lab.yaml", &LabPolicy::default().yaml()).unwrap();
    assert_eq!(example, ours);
}
