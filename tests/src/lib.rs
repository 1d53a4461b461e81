//! Shared test support: the namespace lab, used by the end-to-end tests in
//! `tests/tests/`, by `cargo xtask run` (through the `lb-lab` binary) and by
//! the benchmark (`tests/bench`), and the packet builders and reference model
//! of the golden packet tests.
//!
//! The lab needs root: it builds network namespaces, veths, a bridge and XDP
//! attachments, and removes them when dropped.
#![deny(unsafe_code)]

pub mod capture;
pub mod client;
pub mod harness;
pub mod lab;
pub mod lb;
pub mod model;
pub mod netns;
pub mod packets;
pub mod policy;
pub mod run;
pub mod stats;
pub mod status;
pub mod streams;
pub mod topo;
pub mod xdp;

pub use lab::{Lab, LabError, LabOptions};
pub use run::LabRun;
pub use topo::Node;
