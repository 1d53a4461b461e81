//! Shared test support: the namespace lab (also used by `cargo xtask run`).
