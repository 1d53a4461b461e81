//! The policy as written in YAML. Parsing (with line numbers) lives in
//! `parse.rs`, the rules of SPEC.md in `validate.rs`, the limits and
//! defaults in `limits.rs`; this file is only shape, and the values in
//! effect where a field is optional.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Mac, Ports};

use super::limits::{
    DEFAULT_DEREGISTRATION_DELAY_S, DEFAULT_FIN_TIMEOUT_S, DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_HTTP_PATH, DEFAULT_INTERVAL_S, DEFAULT_MAX_FLOWS, DEFAULT_STATUS_CODES,
    DEFAULT_STICKY_DURATION_S, DEFAULT_TABLE_SIZE, DEFAULT_TCP_IDLE_TIMEOUT_S, DEFAULT_TIMEOUT_S,
    DEFAULT_UDP_IDLE_TIMEOUT_S, DEFAULT_UNHEALTHY_THRESHOLD, DEFAULT_WEIGHT,
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The NIC `lb` attaches to; `lb run --iface` overrides it.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub target_groups: Vec<TargetGroup>,
    /// Flow table settings; absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_table: Option<FlowTableSettings>,
}

impl Policy {
    /// Capacity of each flow table (IPv4 and IPv6) in effect.
    pub fn max_flows(&self) -> u32 {
        self.flow_table
            .as_ref()
            .map_or(DEFAULT_MAX_FLOWS, |t| t.max_flows)
    }

    /// The listener `group` is attached to: the first that names it (a
    /// valid policy has at most one).
    pub fn listener_of(&self, group: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.target_group == group)
    }

    /// The listener whose traffic `group`'s targets receive, and so whose
    /// port and address family they must have: the group's own, else, for a
    /// group attached to no listener, that of the first group naming it as
    /// its `backup` that has one (DSR keeps the port, so a backup's targets
    /// take the port of the listener they back up; the validator refuses a
    /// backup whose listeners disagree). None for a group that serves no
    /// listener, even as a backup.
    pub fn traffic_listener_of(&self, group: &str) -> Option<&Listener> {
        self.listener_of(group).or_else(|| {
            self.target_groups
                .iter()
                .filter(|g| g.backup.as_deref() == Some(group))
                .find_map(|g| self.listener_of(&g.name))
        })
    }
}

/// The `flow_table` section: the flow tables' size, set when `lb run`
/// starts (a reload that changes it keeps the old size until a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTableSettings {
    /// Entries of each flow table (IPv4 and IPv6 have one each).
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
}

fn default_max_flows() -> u32 {
    DEFAULT_MAX_FLOWS
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub vip: IpAddr,
    pub protocol: ListenerProtocol,
    /// One port, a range, or all (SPEC.md "Objects").
    pub port: Ports,
    pub target_group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    Tcp,
    Udp,
}

impl ListenerProtocol {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    pub protocol: GroupProtocol,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// Absent: no health checks (targets count as healthy, status says
    /// `unchecked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub target_failover: TargetFailover,
    /// A flow without packets for this long has ended. Default: 350 for
    /// `tcp` and `http` groups, 120 for `udp` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_idle_timeout_s: Option<u32>,
    /// A TCP flow whose client sent FIN or RST ends after this long without
    /// packets. Default 10; TCP groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_fin_timeout_s: Option<u32>,
    /// Absent: no sticky sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,
    /// How long a target that leaves (removed from the policy, or `lb
    /// drain`) keeps its flows before it is `unused`. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistration_delay_s: Option<u32>,
    /// The group that takes this one's new flows when too few of its
    /// targets are healthy (SPEC.md "Backup group and failover ratio").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// With `backup`: the healthy share of this group's targets below which
    /// new flows go to the backup (0.0: only when none is healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_ratio: Option<f64>,
    #[serde(default)]
    pub targets: Vec<Target>,
}

impl TargetGroup {
    /// The idle timeout in effect (seconds).
    pub fn idle_timeout_s(&self) -> u32 {
        self.flow_idle_timeout_s.unwrap_or(match self.protocol {
            GroupProtocol::Udp => DEFAULT_UDP_IDLE_TIMEOUT_S,
            GroupProtocol::Tcp | GroupProtocol::Http => DEFAULT_TCP_IDLE_TIMEOUT_S,
        })
    }

    /// The FIN timeout in effect (seconds).
    pub fn fin_timeout_s(&self) -> u32 {
        self.flow_fin_timeout_s.unwrap_or(DEFAULT_FIN_TIMEOUT_S)
    }

    /// Whether an enabled sticky session changes nothing: `source_ip`
    /// keeps each client on one target by itself (SPEC.md).
    pub fn sticky_ignored(&self) -> bool {
        self.algorithm == Algorithm::SourceIp && self.sticky_session.is_some_and(|s| s.enabled)
    }

    /// The deregistration delay in effect (seconds).
    pub fn deregistration_delay_s(&self) -> u32 {
        self.deregistration_delay_s
            .unwrap_or(DEFAULT_DEREGISTRATION_DELAY_S)
    }

    /// The port health checks probe on `target`, one of this group's: its
    /// `monitor_port`, else the check's `port`, else the target's `port`,
    /// else the port of `listener`, the one whose traffic the group's
    /// targets receive ([`Policy::traffic_listener_of`]), if it has one
    /// port. None when no port is written and the group serves no listener,
    /// or a listener of a port range.
    pub fn monitor_port(&self, target: &Target, listener: Option<&Listener>) -> Option<u16> {
        target
            .monitor_port
            .or(self.health_check.as_ref().and_then(|h| h.port))
            .or(target.port)
            .or(listener.and_then(|l| l.port.single()))
    }
}

fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    Tcp,
    Http,
    Udp,
}

impl GroupProtocol {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Tcp => "tcp",
            GroupProtocol::Http => "http",
            GroupProtocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Consistent hashing over the affinity tuple.
    #[default]
    Hash,
    /// Consistent hashing over the client IP only.
    SourceIp,
    /// New flows go to the targets in turn, in proportion to weight (smooth
    /// weighted round robin, one order shared by all CPUs).
    RoundRobin,
    /// New flows go to the target with the fewest active flows relative to
    /// weight (the better of two weighted random candidates).
    LeastConnections,
}

impl Algorithm {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hash => "hash",
            Algorithm::SourceIp => "source_ip",
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConnections => "least_connections",
        }
    }
}

/// Source-IP sticky sessions (SPEC.md): while a session lasts, every new flow
/// of a client IP goes to the target its first flow went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickySession {
    /// `false` keeps the settings but turns sticky sessions off.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(rename = "type", default)]
    pub kind: StickyType,
    /// 1-604800 s, counted from the client's assignment to its target.
    #[serde(default = "default_sticky_duration_s")]
    pub duration_s: u32,
}

/// What a sticky session is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyType {
    /// The client's IP address.
    #[default]
    SourceIp,
}

impl StickyType {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            StickyType::SourceIp => "source_ip",
        }
    }
}

fn default_sticky_duration_s() -> u32 {
    DEFAULT_STICKY_DURATION_S
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    #[default]
    FiveTuple,
    ThreeTuple,
    TwoTuple,
}

impl Affinity {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::FiveTuple => "five_tuple",
            Affinity::ThreeTuple => "three_tuple",
            Affinity::TwoTuple => "two_tuple",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub ip: IpAddr,
    /// 0-256; 0 receives no new flows.
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// With DSR the target port is the listener port; if given it must match.
    #[serde(default)]
    pub port: Option<u16>,
    /// The port health checks probe on this target; overrides the group's
    /// `health_check.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_port: Option<u16>,
    /// Static MAC ("02:00:00:00:00:13"); overrides the neighbour table.
    #[serde(default)]
    pub mac: Option<Mac>,
}

fn default_weight() -> u16 {
    DEFAULT_WEIGHT
}

/// How a target group's targets are probed. Only what was written is
/// stored; the accessors give the effective values (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `false` keeps the settings but stops checking.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default: `http` for `http` groups, `tcp` otherwise.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckType>,
    /// Monitor port of every target; default: the target (= listener) port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_interval_s")]
    pub interval_s: u32,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// http/https only. Default GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// http/https only. Default 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<HttpVersion>,
    /// http/https only. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http/https only: `200`, `201,202`, `200-399` or a mix. Default
    /// `200-399`. A bare number in the YAML is accepted.
    #[serde(
        default,
        deserialize_with = "string_or_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_codes: Option<String>,
}

impl HealthCheck {
    /// The check type in effect for a group of `protocol`.
    pub fn kind_for(&self, protocol: GroupProtocol) -> CheckType {
        self.kind.unwrap_or(match protocol {
            GroupProtocol::Http => CheckType::Http,
            GroupProtocol::Tcp | GroupProtocol::Udp => CheckType::Tcp,
        })
    }

    pub fn method(&self) -> HttpMethod {
        self.method.unwrap_or_default()
    }

    pub fn version(&self) -> HttpVersion {
        self.version.unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_HTTP_PATH)
    }

    pub fn status_codes(&self) -> &str {
        self.status_codes.as_deref().unwrap_or(DEFAULT_STATUS_CODES)
    }
}

fn yes() -> bool {
    true
}
fn default_interval_s() -> u32 {
    DEFAULT_INTERVAL_S
}
fn default_timeout_s() -> u32 {
    DEFAULT_TIMEOUT_S
}
fn default_healthy_threshold() -> u32 {
    DEFAULT_HEALTHY_THRESHOLD
}
fn default_unhealthy_threshold() -> u32 {
    DEFAULT_UNHEALTHY_THRESHOLD
}

/// `status_codes: 200` is a YAML integer; take it as the text `200`.
fn string_or_integer<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a status code, a comma list or a range, like \"200-399\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(Visitor)
}

/// What a health check probes with (SPEC.md "Health checks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    /// Connect to the monitor port.
    Tcp,
    /// A request to the monitor port; the status code must match.
    Http,
    /// HTTP over TLS, the certificate not verified.
    Https,
    /// ICMP echo.
    Ping,
}

impl CheckType {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Tcp => "tcp",
            CheckType::Http => "http",
            CheckType::Https => "https",
            CheckType::Ping => "ping",
        }
    }

    /// http and https: the only types with method, version, path and status
    /// codes.
    pub fn is_http(self) -> bool {
        matches!(self, CheckType::Http | CheckType::Https)
    }

    /// The types a group of `protocol` may use (SPEC.md).
    pub fn allowed_for(protocol: GroupProtocol) -> &'static [CheckType] {
        match protocol {
            GroupProtocol::Http => &[CheckType::Http, CheckType::Https, CheckType::Ping],
            GroupProtocol::Tcp => &[CheckType::Tcp, CheckType::Ping],
            GroupProtocol::Udp => &[CheckType::Tcp, CheckType::Http, CheckType::Https],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Options,
    Post,
    Put,
    Trace,
    Patch,
    Delete,
    Connect,
}

impl HttpMethod {
    /// Its name in the policy (upper case, as sent).
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
        }
    }
}

/// `"1.0"` or `"1.1"`; unquoted `1.0` and `1.1` (YAML numbers) work too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HttpVersion {
    Http10,
    #[default]
    Http11,
}

impl HttpVersion {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
        }
    }
}

impl Serialize for HttpVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HttpVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"1.0\" or \"1.1\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HttpVersion, E> {
                match v {
                    "1.0" => Ok(HttpVersion::Http10),
                    "1.1" => Ok(HttpVersion::Http11),
                    _ => Err(E::custom(format!(
                        "version `{v}` is not supported: use \"1.0\" or \"1.1\""
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HttpVersion, E> {
                self.visit_str(&format!("{v:?}"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HttpVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HttpVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What happens to a target's existing flows when it turns unhealthy or is
/// deregistered (SPEC.md "Deregistration and failover of flows").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFailover {
    #[serde(default)]
    pub on_unhealthy: FailoverMode,
    /// Must equal `on_unhealthy`.
    #[serde(default)]
    pub on_deregistration: FailoverMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// Existing flows keep going to the same target.
    #[default]
    NoRebalance,
    /// Existing flows are re-hashed onto healthy targets.
    Rebalance,
}

impl FailoverMode {
    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::NoRebalance => "no_rebalance",
            FailoverMode::Rebalance => "rebalance",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(yaml: &str) -> Vec<TargetGroup> {
        crate::policy::parse("t.yaml", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .target_groups
    }

    /// `as_str` names each variant as the policy (serde) does.
    #[test]
    fn enums_name_themselves_as_the_policy_does() {
        fn check<T: Serialize>(pairs: &[(T, &str)]) {
            for (value, name) in pairs {
                let json = serde_json::to_value(value).unwrap();
                assert_eq!(json.as_str(), Some(*name));
            }
        }
        use ListenerProtocol as L;
        check(&[(L::Tcp, L::Tcp.as_str()), (L::Udp, L::Udp.as_str())]);
        use GroupProtocol as G;
        check(&[G::Tcp, G::Http, G::Udp].map(|v| (v, v.as_str())));
        use Algorithm as A;
        check(&[A::Hash, A::SourceIp, A::RoundRobin, A::LeastConnections].map(|v| (v, v.as_str())));
        use Affinity as F;
        check(&[F::FiveTuple, F::ThreeTuple, F::TwoTuple].map(|v| (v, v.as_str())));
        check(&[(StickyType::SourceIp, StickyType::SourceIp.as_str())]);
        use CheckType as C;
        check(&[C::Tcp, C::Http, C::Https, C::Ping].map(|v| (v, v.as_str())));
        use HttpMethod as M;
        let methods = [
            M::Get,
            M::Head,
            M::Options,
            M::Post,
            M::Put,
            M::Trace,
            M::Patch,
            M::Delete,
            M::Connect,
        ];
        check(&methods.map(|v| (v, v.as_str())));
        use HttpVersion as V;
        check(&[V::Http10, V::Http11].map(|v| (v, v.as_str())));
        use FailoverMode as R;
        check(&[R::NoRebalance, R::Rebalance].map(|v| (v, v.as_str())));
    }

    #[test]
    fn health_check_defaults() {
        let gs = groups(
            "target_groups:\n\
             - { name: web, protocol: http, health_check: {} }\n\
             - { name: tcp, protocol: tcp, health_check: {} }\n\
             - { name: udp, protocol: udp, health_check: {} }\n\
             - { name: off, protocol: tcp }\n",
        );
        let hc = gs[0].health_check.as_ref().unwrap();
        assert!(hc.enabled);
        assert_eq!(hc.kind_for(GroupProtocol::Http), CheckType::Http);
        assert_eq!(
            (
                hc.interval_s,
                hc.timeout_s,
                hc.healthy_threshold,
                hc.unhealthy_threshold
            ),
            (30, 5, 5, 2)
        );
        assert_eq!(hc.port, None);
        assert_eq!(hc.method(), HttpMethod::Get);
        assert_eq!(hc.version(), HttpVersion::Http11);
        assert_eq!(hc.path(), "/");
        assert_eq!(hc.status_codes(), "200-399");
        let kind = |g: &TargetGroup| g.health_check.as_ref().unwrap().kind_for(g.protocol);
        assert_eq!(kind(&gs[1]), CheckType::Tcp);
        assert_eq!(kind(&gs[2]), CheckType::Tcp);
        assert_eq!(gs[3].health_check, None);
        for g in &gs {
            assert_eq!(g.target_failover, TargetFailover::default());
            assert_eq!(g.target_failover.on_unhealthy, FailoverMode::NoRebalance);
        }
    }

    #[test]
    fn monitor_port_and_listener_of_a_group() {
        let policy = crate::policy::parse(
            "t.yaml",
            "listeners:\n\
             - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }\n\
             target_groups:\n\
             - name: web\n  protocol: tcp\n  health_check: { enabled: false, port: 8080 }\n  \
               targets: [ { ip: 10.0.3.11, monitor_port: 9090 }, { ip: 10.0.3.12 } ]\n\
             - name: lone\n  protocol: tcp\n  \
               targets: [ { ip: 10.0.3.11, port: 81 }, { ip: 10.0.3.12 } ]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (web, lone) = (&policy.target_groups[0], &policy.target_groups[1]);
        let listener = policy.listener_of("web");
        assert_eq!(listener.map(|l| l.name.as_str()), Some("web"));
        assert_eq!(policy.listener_of("lone"), None);
        let ports = |g: &TargetGroup, l| g.targets.iter().map(|t| g.monitor_port(t, l)).collect();
        let ports: [Vec<Option<u16>>; 2] = [ports(web, listener), ports(lone, None)];
        // A disabled check keeps its port, as status shows it.
        assert_eq!(ports, [vec![Some(9090), Some(8080)], vec![Some(81), None]]);
    }

    #[test]
    fn a_backup_without_a_listener_takes_the_traffic_of_the_group_it_backs_up() {
        let policy = crate::policy::parse(
            "t.yaml",
            r"listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: own, vip: 10.0.3.50, protocol: tcp, port: 80, target_group: own }
target_groups:
  - { name: lone, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }
  - { name: web, protocol: tcp, backup: spare, failover_ratio: 0.5, targets: [] }
  - { name: spare, protocol: tcp, health_check: { type: tcp }, targets: [ { ip: 10.0.3.21 } ] }
  - { name: own, protocol: tcp, targets: [] }
  - { name: idle, protocol: tcp, targets: [] }
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let name = |g| policy.traffic_listener_of(g).map(|l| l.name.as_str());
        // `lone` names spare first but has no listener: web's is taken.
        assert_eq!(name("spare"), Some("web"));
        assert_eq!((name("web"), name("own")), (Some("web"), Some("own")));
        assert_eq!((name("lone"), name("idle")), (None, None));
        let spare = &policy.target_groups[2];
        let listener = policy.traffic_listener_of("spare");
        assert_eq!(spare.monitor_port(&spare.targets[0], listener), Some(80));
    }

    #[test]
    fn written_values_and_number_forms() {
        let gs = groups(
            "target_groups:\n\
             - name: web\n  protocol: http\n  health_check:\n    enabled: false\n    type: https\n    method: HEAD\n    version: 1.0\n    status_codes: 204\n    path: /health\n  target_failover: { on_unhealthy: rebalance, on_deregistration: rebalance }\n  targets: [ { ip: 10.0.3.11, monitor_port: 8443 } ]\n",
        );
        let hc = gs[0].health_check.as_ref().unwrap();
        assert!(!hc.enabled);
        assert_eq!(hc.kind, Some(CheckType::Https));
        assert_eq!(hc.method(), HttpMethod::Head);
        assert_eq!(hc.version(), HttpVersion::Http10);
        assert_eq!(hc.status_codes(), "204");
        assert_eq!(hc.path(), "/health");
        assert_eq!(gs[0].target_failover.on_unhealthy, FailoverMode::Rebalance);
        assert_eq!(gs[0].targets[0].monitor_port, Some(8443));
        // `1.1` unquoted is the YAML float 1.1.
        let gs = groups(
            "target_groups:\n- { name: web, protocol: http, health_check: { version: 1.1 } }\n",
        );
        assert_eq!(
            gs[0].health_check.as_ref().unwrap().version,
            Some(HttpVersion::Http11)
        );
    }
}
