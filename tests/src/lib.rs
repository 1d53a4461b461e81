//! Shared test support: the namespace lab (also used by `cargo xtask run`).
pub mod model;
pub mod packets;
