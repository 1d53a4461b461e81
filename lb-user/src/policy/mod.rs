//! The YAML policy: model, parsing with positions, validation, compilation.
//! Everything here is pure: no I/O besides reading the file in `load`.
pub mod compile;
pub mod error;
pub mod model;
pub mod parse;
pub mod positions;
pub mod validate;

pub use model::*;

// TEMP until the validator lands: replaced by parse.rs's parse_mac.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err("expected 6 octets".into());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|e| e.to_string())?;
    }
    Ok(mac)
}

// TEMP until the validator lands.
pub fn parse(_source: &str, text: &str) -> Result<Policy, serde_norway::Error> {
    serde_norway::from_str(text)
}
