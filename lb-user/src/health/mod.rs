//! Health checks (SPEC.md "Health checks"): whether each target answers, so
//! that unhealthy targets stop receiving new flows.
//!
//! - [`codes`]: the expected-status-code expressions (`200,301-302`).
pub mod codes;

pub use codes::StatusCodes;
