//! Benchmark variant of `lb`: the same pipeline (and maps), then the TCP/UDP
//! source port of an untagged IPv4 or IPv6 frame without options is
//! incremented (carrying into the source address). BPF_PROG_TEST_RUN does not restore the frame between
//! repetitions, so every repetition of one test run is a new flow: this
//! measures the steady-state new-flow path (flow table miss, hash, table
//! lookup, flow insert with LRU eviction) at full rate. Never attached to a NIC.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

#[macro_use]
mod object;
#[macro_use]
mod bench_entry;
mod next_source;
#[path = "pipeline/mod.rs"]
mod pipeline;

/// This build keeps flow state as `lb` does (`pipeline::FLOW_STATE`).
const FLOW_STATE: bool = true;

new_flow_programs!(lb_new_flow);
