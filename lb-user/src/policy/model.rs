//! The policy as written in YAML. Parsing (with line numbers) lives in
//! `parse.rs`, the rules of SPEC.md in `validate.rs`; this file is only shape
//! and defaults.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Default consistent-hash table size per group: a prime, as Maglev requires.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The NIC `lb` attaches to; `lb run --iface` overrides it.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub target_groups: Vec<TargetGroup>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub vip: IpAddr,
    pub protocol: ListenerProtocol,
    pub port: u16,
    pub target_group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    Tcp,
    Udp,
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
    #[serde(default)]
    pub targets: Vec<Target>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Consistent hashing over the affinity tuple.
    #[default]
    Hash,
    /// Consistent hashing over the client IP only.
    SourceIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    #[default]
    FiveTuple,
    ThreeTuple,
    TwoTuple,
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
    /// Static MAC ("02:00:00:00:00:13"); overrides the neighbour table.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Weight of a target that names none: the maximum, so that listing IPs alone
/// gives an even spread.
pub const DEFAULT_WEIGHT: u16 = 256;

fn default_weight() -> u16 {
    DEFAULT_WEIGHT
}
