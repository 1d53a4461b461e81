//! The YAML policy: model, parsing with positions, validation, compilation.
//! Everything here is pure: no I/O besides reading the file in `read`.
pub mod budget;
pub mod compile;
pub mod diff;
pub mod error;
pub mod limits;
pub mod mac;
pub mod model;
pub mod parse;
pub mod ports;
pub mod positions;
pub mod seats;
pub mod serving;
pub mod validate;

pub use error::{Issue, PolicyError};
pub use mac::Mac;
pub use model::*;
pub use parse::{load, parse, read};
pub use ports::Ports;
pub use serving::check_servable;
pub use validate::{HostFacts, notices, validate_for_host};
