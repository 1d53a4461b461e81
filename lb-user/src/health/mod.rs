//! Health checks (SPEC.md "Health checks"): whether each target answers, so
//! that unhealthy targets stop receiving new flows.
//!
//! - [`codes`]: the expected-status-code expressions (`200,301-302`).
//! - [`state`]: the pure state machine, `observe(now, result)`.
//! - [`probe`]: the probers (TCP, HTTP, HTTPS, ICMP echo): I/O only.
//! - [`monitor`]: one probe loop per checked target, results in a watch
//!   channel.
pub mod codes;
pub mod monitor;
pub mod probe;
pub mod state;
#[cfg(test)]
mod tests;

pub use codes::StatusCodes;
pub use monitor::{HealthMonitor, HealthSnapshot, TargetCheck, TargetKey, checks, probe_source};
pub use probe::{HttpProbe, ProbeSpec, Prober, probe};
pub use state::{HealthState, HealthTracker, ProbeResult, Transition};
