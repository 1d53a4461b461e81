//! `lb`: the userspace side of the load balancer. The binary (`src/main.rs`)
//! is a thin edge over these modules, which the tests use directly.
#![deny(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod dataplane;
pub mod flows;
mod group_table;
pub mod health;
pub mod ids;
pub mod least_connections;
pub mod maglev;
pub mod neighbors;
pub mod plan;
pub mod policy;
pub mod round_robin;
pub mod state;
pub mod status;

/// The XDP load balancer, built from `lb-ebpf` by `build.rs`.
pub static EBPF_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
/// The MAC-swap baseline program (benchmarks only).
pub static EBPF_MACSWAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/macswap"));
/// Benchmark floors: a flow-table lookup or insert and a MAC rewrite alone.
pub static EBPF_FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));
/// XDP_PASS (the lab's bridge port facing the load balancer).
pub static EBPF_PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass"));
/// Benchmark variant of `lb` whose every test-run repetition is a new flow.
pub static EBPF_LB_NEW_FLOW: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-new-flow"));
/// Benchmark variant of `lb_new_flow` that keeps no flow state: what a new
/// flow costs besides pinning it.
pub static EBPF_LB_NO_FLOW_STATE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-no-flow-state"));
