//! A MAC address as the policy writes it (`02:00:00:00:00:13`): parsed once,
//! when the policy is read, and written back the same way in messages and
//! status. The maps, the neighbour table and `plan::Observed` hold the bare
//! bytes (`lb_common::TargetInfo::mac`); [`Mac::octets`] gives them.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac([u8; 6]);

impl Mac {
    pub const fn new(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// The group bit: multicast (and broadcast) addresses.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Six hexadecimal octets (one or two digits each) separated by `:`. The
/// error is the policy's message for the text.
impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || {
            format!(
                "mac `{s}` is not a MAC address: expected 6 hex octets separated by ':' \
                 (like 02:00:00:00:00:13)"
            )
        };
        let mut mac = [0u8; 6];
        let mut octets = s.split(':');
        for byte in &mut mac {
            let octet = octets.next().ok_or_else(bad)?;
            if octet.is_empty() || octet.len() > 2 || !octet.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad());
            }
            *byte = u8::from_str_radix(octet, 16).map_err(|_| bad())?;
        }
        if octets.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Mac;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a MAC address like 02:00:00:00:00:13")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mac, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form() {
        let parse = |s: &str| s.parse::<Mac>();
        assert_eq!(parse("02:00:00:00:00:13"), Ok(Mac([2, 0, 0, 0, 0, 0x13])));
        assert_eq!(parse("2:a:B:0:0:ff"), Ok(Mac([2, 0xa, 0xb, 0, 0, 0xff])));
        assert_eq!(
            Mac([2, 0xa, 0xb, 0, 0, 0xff]).to_string(),
            "02:0a:0b:00:00:ff"
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:13:14",
            "02-00-00-00-00-13",
            "02:00:00:00:00:1g",
            "02:00:00:00:00:123",
            "02:00:00:00::13",
            "+2:00:00:00:00:13",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("expected 6 hex octets"), "{bad}: {err}");
        }
        assert!(Mac([0xff; 6]).is_multicast() && Mac([1, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!Mac([2, 0, 0, 0, 0, 1]).is_multicast() && Mac::default().is_zero());
    }
}
