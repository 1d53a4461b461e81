//! Benchmark variant of `lb_new_flow` with the flow state taken out: no flow
//! cache probe, no flow-table lookup, no insert, no cache write. Everything
//! else a new flow costs is there (parse, listener lookup, the group's
//! algorithm, active-flow count, counters, rewrite), so `lb_new_flow` minus
//! this is what pinning a flow costs, and this alone is the least `lb`'s
//! new-flow path can take while it chooses targets as it does. The source
//! changes after each repetition as in `lb_new_flow`. Never attached to a
//! NIC: it pins nothing, so it breaks the flow lifecycle on purpose.
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

/// This build keeps no flow state (`pipeline::FLOW_STATE`).
const FLOW_STATE: bool = false;

new_flow_programs!(lb_no_flow_state);
