//! Health checks (SPEC.md "Health checks"): whether each target answers, so
//! that unhealthy targets stop receiving new flows.
//!
//! - [`codes`]: the expected-status-code expressions (`200,301-302`).
//! - [`state`]: the pure state machine, `observe(now, result)`.
pub mod codes;
pub mod state;

pub use codes::StatusCodes;
pub use state::{HealthState, ProbeResult, TargetHealth, Transition};
