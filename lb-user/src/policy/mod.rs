//! The YAML policy: model, parsing with positions, validation, compilation.
//! Everything here is pure: no I/O besides reading the file in `load`.
pub mod compile;
pub mod error;
pub mod model;
pub mod parse;
pub mod positions;
pub mod validate;

pub use model::*;
