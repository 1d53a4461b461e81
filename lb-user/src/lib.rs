//! `lb`: the userspace side of the load balancer. The binary (`src/main.rs`)
//! is a thin edge over these modules, which the tests use directly.
#![deny(unsafe_code)]

pub mod announce;
pub mod api;
pub mod daemon;
pub mod dataplane;
pub mod drains;
pub mod failover;
pub mod flows;
mod group_table;
pub mod health;
pub mod ids;
pub mod least_connections;
pub mod maglev;
pub mod metrics;
pub mod neighbors;
pub mod plan;
pub mod policy;
pub mod rename;
pub mod round_robin;
pub mod state;
pub mod stats;
pub mod status;
pub mod target_setup;
pub mod view;

/// The XDP load balancer (`lb` and `lb_clock`), built from `lb-ebpf` by
/// `build.rs`.
pub static EBPF_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
