//! A listener's `port`: one port (`80`), a range (`"1000-2000"`), or every
//! port (`all`, 1-65535). SPEC.md "Objects".
use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::limits::out_of_range;

/// The ports `first..=last` of a listener; one port when they are equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    /// Every port: `all`.
    pub const ALL: Ports = Ports {
        first: 1,
        last: u16::MAX,
    };

    pub const fn one(port: u16) -> Ports {
        Ports {
            first: port,
            last: port,
        }
    }

    /// The port, when there is one only.
    pub fn single(self) -> Option<u16> {
        (self.first == self.last).then_some(self.first)
    }

    pub fn is_range(self) -> bool {
        self.first != self.last
    }

    pub fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// The ports both hold, if any.
    pub fn overlap(self, other: Ports) -> Option<Ports> {
        let (first, last) = (self.first.max(other.first), self.last.min(other.last));
        (first <= last).then_some(Ports { first, last })
    }

    /// The data plane's record of the ports (`LISTENER_PORTS`): the range,
    /// zeros for one port.
    pub fn record(self) -> lb_common::ListenerPorts {
        if self.is_range() {
            lb_common::ListenerPorts {
                first: self.first,
                last: self.last,
            }
        } else {
            lb_common::ListenerPorts::default()
        }
    }

    /// `ip:ports` as a socket address is written (`[v6]:ports`):
    /// `10.0.3.49:80`, `10.0.3.49:1000-2000`, `[fd00:3::49]:all`.
    pub fn at(self, ip: std::net::IpAddr) -> String {
        match ip {
            std::net::IpAddr::V4(v4) => format!("{v4}:{self}"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{self}"),
        }
    }

    /// Parses a range as written: `first-last` or `all` (a single port is
    /// an integer in YAML).
    fn parse_range(text: &str) -> Result<Ports, String> {
        let text = text.trim();
        if text == "all" {
            return Ok(Ports::ALL);
        }
        let (first, last) = text.split_once('-').ok_or_else(|| not_a_port(text))?;
        let (first, last) = (port_number(first, text)?, port_number(last, text)?);
        if first > last {
            return Err(format!(
                "port range `{text}` ends before it starts: write the lower port first"
            ));
        }
        Ok(Ports { first, last })
    }
}

fn not_a_port(text: &str) -> String {
    format!("port `{text}` is not a port: write an integer 1-65535, a range like 1000-2000, or all")
}

/// One port 1-65535 of `text` (all of it, or one end of a range).
fn port_number(s: &str, text: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_port(text));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(out_of_range("port", s).unwrap_or_else(|| not_a_port(text))),
    }
}

/// A port as a command line gives it: `80`, `1000-2000` or `all`; port 0
/// is refused here (a policy's is the validator's to refuse).
impl FromStr for Ports {
    type Err = String;

    fn from_str(text: &str) -> Result<Ports, String> {
        let text = text.trim();
        if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
            return port_number(text, text).map(Ports::one);
        }
        Ports::parse_range(text)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Ports::ALL {
            f.write_str("all")
        } else if self.is_range() {
            write!(f, "{}-{}", self.first, self.last)
        } else {
            write!(f, "{}", self.first)
        }
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.single() {
            Some(port) => s.serialize_u16(port),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ports, D::Error> {
        d.deserialize_any(PortsVisitor)
    }
}

struct PortsVisitor;

impl de::Visitor<'_> for PortsVisitor {
    type Value = Ports;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port 1-65535, a range like 1000-2000, or all")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ports, E> {
        // Port 0 is the validator's to refuse (with the other issues).
        u16::try_from(v)
            .map(Ports::one)
            .map_err(|_| E::custom(out_of_range("port", &v.to_string()).unwrap_or_default()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ports, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(
                out_of_range("port", &v.to_string()).unwrap_or_default(),
            )),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Ports, E> {
        Ports::parse_range(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Ports, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn a_port_a_range_or_all() {
        assert_eq!(parse("80"), Ok(Ports::one(80)));
        assert_eq!(
            parse("1000-2000"),
            Ok(Ports {
                first: 1000,
                last: 2000
            })
        );
        assert_eq!(
            parse("\"5060 - 5061\""),
            Ok(Ports {
                first: 5060,
                last: 5061
            })
        );
        assert_eq!(parse("all"), Ok(Ports::ALL));
        assert_eq!(parse("1-65535"), Ok(Ports::ALL));
        assert_eq!(parse("0"), Ok(Ports::one(0)), "the validator refuses 0");
        assert_eq!(parse("7-7"), Ok(Ports::one(7)));
    }

    #[test]
    fn what_is_not_a_port_says_what_is() {
        let err = |yaml| parse(yaml).unwrap_err();
        assert!(err("70000").starts_with("port 70000 is out of range 1-65535"));
        assert!(err("-1").starts_with("port -1 is out of range 1-65535"));
        assert!(err("http").starts_with(
            "port `http` is not a port: write an integer 1-65535, a range like 1000-2000, or all"
        ));
        assert!(err("2000-1000").starts_with("port range `2000-1000` ends before it starts"));
        assert!(err("0-100").starts_with("port 0 is out of range 1-65535"));
        assert!(err("1-70000").starts_with("port 70000 is out of range 1-65535"));
        assert!(err("1--2").starts_with("port `1--2` is not a port"));
        assert!(err("true").contains("expected a port 1-65535, a range like 1000-2000, or all"));
    }

    #[test]
    fn a_command_line_port_is_a_port_a_range_or_all() {
        let r = |first, last| Ports { first, last };
        for (text, want) in [
            ("53", Ports::one(53)),
            (" 65535 ", Ports::one(65535)),
            ("10000-20000", r(10000, 20000)),
            ("7-7", Ports::one(7)),
            ("all", Ports::ALL),
            ("1-65535", Ports::ALL),
        ] {
            assert_eq!(text.parse::<Ports>(), Ok(want), "{text}");
        }
        let err = |text: &str| text.parse::<Ports>().unwrap_err();
        assert_eq!(err("0"), "port 0 is out of range 1-65535");
        assert_eq!(err("0-10"), "port 0 is out of range 1-65535");
        assert_eq!(err("65536"), "port 65536 is out of range 1-65535");
        assert_eq!(
            err("dns"),
            "port `dns` is not a port: write an integer 1-65535, a range like 1000-2000, or all"
        );
        assert!(err("").starts_with("port `` is not a port"));
        assert!(err("20-10").starts_with("port range `20-10` ends before it starts"));
        for ports in [Ports::one(80), r(1000, 2000), Ports::ALL] {
            assert_eq!(ports.to_string().parse::<Ports>(), Ok(ports));
        }
    }

    #[test]
    fn shown_and_written_as_read() {
        for (ports, shown) in [
            (Ports::one(80), "80"),
            (
                Ports {
                    first: 1000,
                    last: 2000,
                },
                "1000-2000",
            ),
            (Ports::ALL, "all"),
        ] {
            assert_eq!(ports.to_string(), shown);
            let yaml = serde_norway::to_string(&ports).unwrap();
            assert_eq!(parse(&yaml), Ok(ports), "{yaml}");
        }
    }

    #[test]
    fn overlaps_and_records() {
        let r = |first, last| Ports { first, last };
        assert_eq!(r(1000, 2000).overlap(r(2000, 3000)), Some(Ports::one(2000)));
        assert_eq!(r(1000, 2000).overlap(r(2001, 3000)), None);
        assert_eq!(Ports::ALL.overlap(Ports::one(80)), Some(Ports::one(80)));
        assert_eq!(Ports::one(80).record(), lb_common::ListenerPorts::default());
        assert_eq!(
            r(1000, 2000).record(),
            lb_common::ListenerPorts {
                first: 1000,
                last: 2000
            }
        );
    }
}
