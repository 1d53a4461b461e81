//! Reading a policy: YAML text -> [`Policy`], every problem located.
//!
//! The API (errors are [`PolicyError`]: `FILE:LINE:COL: PATH: MESSAGE` lines):
//! - [`read`]`(path)`: the file's text, refused past `MAX_POLICY_BYTES`.
//! - [`load`]`(path)`: [`read`], then [`parse`].
//! - [`parse`]`(source_name, text)`: check the limits of `limits.rs`,
//!   deserialize, then check every rule that needs nothing but the text
//!   (`validate::validate`), reporting all issues.
//! - `validate::validate_for_host(source_name, text, &policy, &HostFacts)`:
//!   the rules that depend on the host (targets directly connected).
//!
//! serde (serde_norway) errors stop at the first one, as serde does; they
//! come out in the same format, with serde_norway's position.
use std::{io::Read as _, path::Path};

use serde::de::IgnoredAny;

use super::{
    error::{Issue, PolicyError},
    limits::{self, MAX_POLICY_BYTES},
    model::Policy,
    positions::{Pos, Positions},
    validate,
};

/// Reads the policy file at `path`, refusing a file larger than
/// `MAX_POLICY_BYTES` before reading it whole; without its byte order mark,
/// if it has one.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    let name = path.display().to_string();
    let refuse = |message: String| {
        PolicyError::new(vec![Issue {
            file: name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message,
        }])
    };
    let cannot = |e: std::io::Error| {
        refuse(format!(
            "cannot read the policy: {}",
            lowercase_first(&e.to_string())
        ))
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    if file.metadata().map_err(cannot)?.len() > MAX_POLICY_BYTES as u64 {
        return Err(refuse(too_large()));
    }
    // The size a file reports does not bound what a pipe, a device or a
    // growing file gives: stop one byte past the limit.
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() > MAX_POLICY_BYTES {
        return Err(refuse(too_large()));
    }
    if text.starts_with(BOM) {
        text.drain(..BOM.len_utf8());
    }
    Ok(text)
}

/// The byte order mark some editors write at the start of a UTF-8 file.
/// YAML allows it and editors do not show it, but serde_norway reads it
/// as text: it refused such a policy ("more than one document").
const BOM: char = '\u{feff}';

/// Reads and parses the policy at `path` (no host checks).
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = read(path)?;
    parse(&path.display().to_string(), &text)
}

/// Parses `text` (named `source_name` in errors) and checks every
/// host-independent rule. An empty document is an empty, valid policy (see
/// `serving::check_servable` for the daemon's view of it).
pub fn parse(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::new(vec![Issue {
            file: source_name.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message: too_large(),
        }]));
    }
    let positions = Positions::index(text);
    let policy = deserialize(source_name, text, &positions)?;
    PolicyError::check(validate::validate(source_name, &policy, &positions))?;
    Ok(policy)
}

/// The message for a text past `MAX_POLICY_BYTES`.
fn too_large() -> String {
    format!(
        "the policy is larger than the limit of {} MiB",
        MAX_POLICY_BYTES >> 20
    )
}

/// YAML -> `Policy`, stopping at the first problem: a limit exceeded, else
/// duplicate keys (all of them, as many as `positions` lists), else a second
/// document, else a YAML syntax error, else a serde error. serde only sees a document whose every
/// event passed the limits.
fn deserialize(file: &str, text: &str, positions: &Positions) -> Result<Policy, PolicyError> {
    PolicyError::check(index_issues(file, text, positions))?;
    match serde_norway::from_str::<Policy>(text) {
        Ok(policy) => Ok(policy),
        Err(e) => serde_failure(file, text, positions, &e),
    }
}

fn issue(file: &str, pos: Pos, path: &str, message: String) -> Issue {
    Issue {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        path: path.to_string(),
        message,
    }
}

/// What the position index found before serde may look: a limit exceeded,
/// else duplicate keys, else a second document, else a syntax error.
fn index_issues(file: &str, text: &str, positions: &Positions) -> Vec<Issue> {
    if let Some(limit) = positions.limit_exceeded() {
        return vec![issue(file, limit.pos, &limit.path, limit.message.clone())];
    }
    let mut duplicates: Vec<Issue> = positions
        .duplicate_keys()
        .iter()
        .map(|d| {
            let message = format!("duplicate key `{}` (first at line {})", d.key, d.first_line);
            issue(file, d.pos, &d.path, message)
        })
        .collect();
    if let (Some(last), n @ 1..) = (duplicates.last(), positions.unlisted_duplicate_keys()) {
        let pos = Pos {
            line: last.line,
            column: last.column,
        };
        duplicates.push(issue(
            file,
            pos,
            "",
            format!("{n} more duplicate keys after this one"),
        ));
    }
    if !duplicates.is_empty() {
        return duplicates;
    }
    if let Some(pos) = positions.second_document() {
        let message = "a second yaml document starts here: a policy file is one document";
        return vec![issue(file, pos, "", message.to_string())];
    }
    let Some(error) = positions.syntax_error() else {
        return Vec::new();
    };
    // serde_norway's message when it finds the error too (the usual case),
    // else yaml-rust2's. The limits were checked up to the error only: serde
    // must not deserialize the rest, and serde_norway reads no more of it
    // than the end of the error's line, `MAX_TAIL` bytes at most (libyaml,
    // on a text whose nesting no limit checked, takes time that grows with
    // the square of the nesting).
    let head = head_of(text, error.index);
    vec![match document(head) {
        Err(e) if head.len() == text.len() || !at_end(&e, head) => invalid_yaml(file, &e),
        _ => issue(
            file,
            error.pos,
            "",
            format!("invalid yaml: {}", error.message),
        ),
    }]
}

/// Bytes of text past a syntax error that serde_norway may read to find it.
const MAX_TAIL: usize = 1024;

/// `text` to the end of the line holding its character `index`, or
/// `MAX_TAIL` bytes past that character when the line goes on longer.
fn head_of(text: &str, index: usize) -> &str {
    let at = text
        .char_indices()
        .nth(index)
        .map_or(text.len(), |(i, _)| i);
    let rest = &text[at..];
    let mut end = rest.find(['\n', '\r']).map_or(rest.len(), |i| i + 1);
    if end > MAX_TAIL {
        end = MAX_TAIL;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
    }
    &text[..at + end]
}

/// Whether serde_norway's error on `head` (a text cut short) is at its end
/// (or nowhere): an artifact of the cut, not the error of the whole text.
fn at_end(err: &serde_norway::Error, head: &str) -> bool {
    let Some(location) = err.location() else {
        return true;
    };
    // The position just past `head`, lines broken at LF, CRLF or CR.
    let (mut line, mut column) = (1, 1);
    let mut chars = head.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
            (line, column) = (line + 1, 1);
        } else if c != '\r' {
            column += 1;
        }
    }
    (location.line(), location.column()) == (line, column)
}

fn invalid_yaml(file: &str, e: &serde_norway::Error) -> Issue {
    let (pos, message) = strip_location(e);
    issue(file, pos, "", format!("invalid yaml: {message}"))
}

/// What to make of serde's error `err` on `text`. Syntax first:
/// serde_norway deserializes as it parses, so a broken document could
/// otherwise come out as a misleading "missing field". (Parsed again only
/// when the policy did not deserialize: a large valid policy is parsed
/// once.)
fn serde_failure(
    file: &str,
    text: &str,
    positions: &Positions,
    err: &serde_norway::Error,
) -> Result<Policy, PolicyError> {
    match document(text) {
        Err(e) => Err(PolicyError::new(vec![invalid_yaml(file, &e)])),
        // Empty, only comments, or `~`: nothing to balance, which parses.
        Ok(None) => Ok(Policy::default()),
        Ok(Some(_)) => {
            let (pos, text) = strip_location(err);
            let (path, message) = split_path(&text);
            let (path, message) = reword(path, message, positions);
            Err(PolicyError::new(vec![issue(file, pos, &path, message)]))
        }
    }
}

/// serde_norway's reading of `text` as YAML, without building it: None for
/// a null document (empty, only comments, `~` or `null`). Aliases are not
/// followed, so this costs no more than the text.
pub(super) fn document(text: &str) -> Result<Option<IgnoredAny>, serde_norway::Error> {
    serde_norway::from_str::<Option<IgnoredAny>>(text)
}

/// serde_norway's message without its " at line L column C", and that
/// position (1:1 when it has none).
fn strip_location(err: &serde_norway::Error) -> (Pos, String) {
    let pos = err.location().map_or(Pos { line: 1, column: 1 }, |l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let mut text = err.to_string();
    let at = format!(" at line {} column {}", pos.line, pos.column);
    if let Some(i) = text.find(&at) {
        text.replace_range(i..i + at.len(), "");
    }
    (pos, text)
}

/// serde_norway writes `path: message` (no path at the root).
fn split_path(text: &str) -> (&str, &str) {
    let is_path = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.[]?".contains(&b))
    };
    match text.split_once(": ") {
        Some((path, message)) if is_path(path) => (path, message),
        _ => ("", text),
    }
}

/// The last field name of a path: `listeners[0].port` -> `port`.
fn field(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// Rewords serde's messages for the common mistakes so that they name the
/// value and what is allowed, like the validator's; returns the path to
/// report (an unknown field's own path rather than its parent's).
fn reword(path: &str, message: &str, positions: &Positions) -> (String, String) {
    let field = field(path);
    // "unknown field `vipp`, expected one of `name`, `vip`, ..."
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, _)) = rest.split_once('`')
    {
        let path = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        return (path, message.to_string());
    }
    // "invalid value: integer `70000`, expected u16", and for a negative
    // number "invalid type: integer `-1`, expected u32"
    if let Some(rest) = message
        .strip_prefix("invalid value: integer `")
        .or_else(|| message.strip_prefix("invalid type: integer `"))
        && let Some((value, _)) = rest.split_once('`')
        && let Some(m) = limits::out_of_range(field, value)
    {
        return (path.to_string(), m);
    }
    // "invalid type: string \"eighty\", expected u16"
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, _)) = rest.split_once(", expected u")
        && let Some(range) = limits::range_of(field)
    {
        return (
            path.to_string(),
            format!("{field} must be an integer {range}, found {found}"),
        );
    }
    if message == "invalid IP address syntax" {
        let value = positions.scalar(path).unwrap_or("?");
        return (
            path.to_string(),
            format!("{field} `{value}` is not an IP address (like 10.0.3.11 or fd00:3::11)"),
        );
    }
    (path.to_string(), reword_struct(message))
}

/// serde names the model's structs (`expected struct TargetGroup`); say
/// what the policy calls them.
fn reword_struct(message: &str) -> String {
    const SECTIONS: [(&str, &str); 8] = [
        ("Policy", "a policy"),
        ("Listener", "a listener"),
        ("TargetGroup", "a target group"),
        ("Target", "a target"),
        ("HealthCheck", "a health_check"),
        ("TargetFailover", "a target_failover"),
        ("StickySession", "a sticky_session"),
        ("FlowTableSettings", "a flow_table"),
    ];
    let Some((before, after)) = message.split_once("expected struct ") else {
        return message.to_string();
    };
    let name_len = after
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(after.len());
    let (name, rest) = after.split_at(name_len);
    match SECTIONS.iter().find(|(s, _)| *s == name) {
        Some((_, what)) => format!("{before}expected {what} mapping{rest}"),
        None => message.to_string(),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        super::limits::{MAX_DEPTH, MAX_NODES},
        *,
    };

    /// What "refused quickly" means for a hostile text of a few hundred
    /// kilobytes, in a debug build on a busy machine (each takes about a
    /// millisecond; before the limits, seconds).
    const QUICK: Duration = Duration::from_secs(2);

    /// A policy serde or the YAML parser rejects, and the issue it must give.
    struct Case {
        name: &'static str,
        yaml: &'static str,
        /// `FILE:LINE:COL: PATH: MESSAGE`, exactly.
        expect: &'static str,
    }

    const CASES: &[Case] = &[
        Case {
            name: "unknown field in a listener",
            yaml: "listeners:\n  - name: web\n    vips: 10.0.3.49\n",
            expect: "t.yaml:3:5: listeners[0].vips: unknown field `vips`, expected one of `name`, `vip`, `protocol`, `port`, `target_group`",
        },
        Case {
            name: "unknown field at the top",
            yaml: "interface: eth0\nlistener: []\n",
            expect: "t.yaml:2:1: listener: unknown field `listener`, expected one of `interface`, `listeners`, `target_groups`, `flow_table`",
        },
        Case {
            name: "unknown field in a target",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    targets:\n      - { ip: 10.0.3.11, weigth: 3 }\n",
            expect: "t.yaml:5:26: target_groups[0].targets[0].weigth: unknown field `weigth`, expected one of `ip`, `weight`, `port`, `monitor_port`, `mac`",
        },
        Case {
            name: "bad protocol",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.49\n    protocol: sctp\n",
            expect: "t.yaml:4:15: listeners[0].protocol: unknown variant `sctp`, expected `tcp` or `udp`",
        },
        Case {
            name: "bad algorithm",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    algorithm: random\n",
            expect: "t.yaml:4:16: target_groups[0].algorithm: unknown variant `random`, expected one of `hash`, `source_ip`, `round_robin`, `least_connections`",
        },
        Case {
            name: "sticky session type other than source_ip",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    sticky_session: { type: cookie }\n",
            expect: "t.yaml:4:29: target_groups[0].sticky_session.type: unknown variant `cookie`, expected `source_ip`",
        },
        Case {
            name: "bad ip address",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.300\n",
            expect: "t.yaml:3:10: listeners[0].vip: vip `10.0.3.300` is not an IP address (like 10.0.3.11 or fd00:3::11)",
        },
        Case {
            name: "port too big for the type",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.49\n    protocol: tcp\n    port: 70000\n",
            expect: "t.yaml:5:11: listeners[0].port: port 70000 is out of range 1-65535",
        },
        Case {
            name: "weight too big for the type",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    targets: [ { ip: 10.0.3.11, weight: 65536 } ]\n",
            expect: "t.yaml:4:41: target_groups[0].targets[0].weight: weight 65536 is out of range 0-256",
        },
        Case {
            name: "port that is not a number",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.49\n    protocol: tcp\n    port: http\n",
            expect: "t.yaml:5:11: listeners[0].port: port `http` is not a port: write an integer 1-65535, a range like 1000-2000, or all",
        },
        Case {
            name: "port range upside down",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.49\n    protocol: udp\n    port: 2000-1000\n",
            expect: "t.yaml:5:11: listeners[0].port: port range `2000-1000` ends before it starts: write the lower port first",
        },
        Case {
            name: "port range past the last port",
            yaml: "listeners:\n  - name: web\n    vip: 10.0.3.49\n    protocol: udp\n    port: 60000-70000\n",
            expect: "t.yaml:5:11: listeners[0].port: port 70000 is out of range 1-65535",
        },
        Case {
            name: "missing field",
            yaml: "listeners:\n  - name: web\n    protocol: tcp\n",
            expect: "t.yaml:2:5: listeners[0]: missing field `vip`",
        },
        Case {
            name: "list where a mapping belongs",
            yaml: "target_groups:\n  - [web, tcp]\n",
            expect: "t.yaml:2:5: target_groups[0]: invalid type: sequence, expected a target group mapping",
        },
        Case {
            name: "not a mapping at all",
            yaml: "- web\n",
            expect: "t.yaml:1:1: invalid type: sequence, expected a policy mapping",
        },
        Case {
            name: "a number where a section belongs",
            yaml: "flow_table: 5\n",
            expect: "t.yaml:1:13: flow_table: invalid type: integer `5`, expected a flow_table mapping",
        },
        Case {
            name: "yaml syntax error",
            yaml: "listeners:\n  - name: web\n   vip: 10.0.3.49\n",
            expect: "t.yaml:3:4: invalid yaml: did not find expected '-' indicator, while parsing a block collection at line 2 column 3",
        },
        Case {
            name: "unknown field in a health check",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    health_check:\n      intervall_s: 5\n",
            expect: "t.yaml:5:7: target_groups[0].health_check.intervall_s: unknown field `intervall_s`, expected one of `enabled`, `type`, `port`, `interval_s`, `timeout_s`, `healthy_threshold`, `unhealthy_threshold`, `method`, `version`, `path`, `status_codes`",
        },
        Case {
            name: "bad health check type",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    health_check:\n      type: icmp\n",
            expect: "t.yaml:5:13: target_groups[0].health_check.type: unknown variant `icmp`, expected one of `tcp`, `http`, `https`, `ping`",
        },
        Case {
            name: "lowercase http method",
            yaml: "target_groups:\n  - name: web\n    protocol: http\n    health_check:\n      method: get\n",
            expect: "t.yaml:5:15: target_groups[0].health_check.method: unknown variant `get`, expected one of `GET`, `HEAD`, `OPTIONS`, `POST`, `PUT`, `TRACE`, `PATCH`, `DELETE`, `CONNECT`",
        },
        Case {
            name: "http version 2",
            yaml: "target_groups:\n  - name: web\n    protocol: http\n    health_check:\n      version: '2.0'\n",
            expect: "t.yaml:5:16: target_groups[0].health_check.version: version `2.0` is not supported: use \"1.0\" or \"1.1\"",
        },
        Case {
            name: "unquoted http version 1",
            yaml: "target_groups:\n  - name: web\n    protocol: http\n    health_check:\n      version: 1\n",
            expect: "t.yaml:5:16: target_groups[0].health_check.version: version `1` is not supported: use \"1.0\" or \"1.1\"",
        },
        Case {
            name: "negative interval",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    health_check:\n      interval_s: -1\n",
            expect: "t.yaml:5:19: target_groups[0].health_check.interval_s: interval_s -1 is out of range 1-3600",
        },
        Case {
            name: "interval with a unit",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    health_check:\n      interval_s: 30s\n",
            expect: "t.yaml:5:19: target_groups[0].health_check.interval_s: interval_s must be an integer 1-3600, found string \"30s\"",
        },
        Case {
            name: "threshold too big for the type",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    health_check:\n      healthy_threshold: 5000000000\n",
            expect: "t.yaml:5:26: target_groups[0].health_check.healthy_threshold: healthy_threshold 5000000000 is out of range 1-10",
        },
        Case {
            name: "monitor port too big for the type",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    targets: [ { ip: 10.0.3.11, monitor_port: 70000 } ]\n",
            expect: "t.yaml:4:47: target_groups[0].targets[0].monitor_port: monitor_port 70000 is out of range 1-65535",
        },
        Case {
            name: "bad failover mode",
            yaml: "target_groups:\n  - name: web\n    protocol: tcp\n    target_failover:\n      on_unhealthy: failover\n",
            expect: "t.yaml:5:21: target_groups[0].target_failover.on_unhealthy: unknown variant `failover`, expected `no_rebalance` or `rebalance`",
        },
        Case {
            name: "duplicate key",
            yaml: "listeners:\n  - name: web\n    port: 80\n    port: 81\n",
            expect: "t.yaml:4:5: listeners[0].port: duplicate key `port` (first at line 3)",
        },
    ];

    #[test]
    fn serde_and_yaml_errors_are_located() {
        let mut failures = Vec::new();
        for case in CASES {
            match parse("t.yaml", case.yaml) {
                Ok(_) => failures.push(format!("{}: accepted", case.name)),
                Err(e) if e.to_string() != case.expect => failures.push(format!(
                    "{}:\n  expected {}\n  got      {e}",
                    case.name, case.expect
                )),
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn lines_end_at_lf_crlf_or_cr() {
        // As YAML and editors count them (the fuzz target checks that no
        // error points past the text, counting so).
        for end in ["\n", "\r\n", "\r"] {
            let text = ["listeners:", "  - name: web", "    vips: 10.0.3.49", ""].join(end);
            let err = parse("t.yaml", &text).unwrap_err().to_string();
            assert!(
                err.starts_with("t.yaml:3:5: listeners[0].vips: unknown field"),
                "{err}"
            );
        }
        // The end of a text whose last line has no break is at the start of
        // the line after it, for yaml-rust2 and libyaml alike.
        let err = parse("t.yaml", "listeners: [").unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:2:1: invalid yaml"), "{err}");
    }

    #[test]
    fn empty_policy_is_valid() {
        for text in [
            "",
            "# nothing yet\n",
            "---\n",
            "listeners: []\ntarget_groups: []\n",
        ] {
            let p = parse("e.yaml", text).unwrap();
            assert!(
                p.listeners.is_empty() && p.target_groups.is_empty(),
                "{text:?}"
            );
        }
    }

    /// `levels` levels of nine aliases to the level below, over nine
    /// scalars: 9^levels scalars once expanded.
    fn laughs(levels: usize) -> String {
        let mut text = "lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_string();
        for n in 1..levels {
            let item = format!("*lol{}", n - 1);
            text += &format!("lol{n}: &lol{n} [{}]\n", vec![item; 9].join(", "));
        }
        text
    }

    #[test]
    fn billion_laughs_is_refused_before_expanding() {
        let err = parse("t.yaml", &laughs(10)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "t.yaml:7:28: lol6[2]: alias `*lol5` expands the document past {MAX_NODES} nodes: \
                 aliases may share settings, not multiply the document"
            )
        );
        // Below the limit the same shape is only a policy with unknown
        // fields, refused by serde.
        let err = parse("t.yaml", &laughs(3)).unwrap_err().to_string();
        assert!(err.contains("unknown field `lol0`"), "{err}");
    }

    #[test]
    fn an_alias_inside_its_anchor_is_refused() {
        let err = parse("t.yaml", "listeners: &l [ *l ]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:1:17: listeners[0]: alias `*l` is inside the collection it names: it would expand forever"
        );
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit() {
        // Block sequences nested 100,000 deep on one line: a recursive
        // reader would overflow its stack.
        let text = format!("listeners:\n  {}x\n", "- ".repeat(100_000));
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        let column = 3 + 2 * (MAX_DEPTH - 1);
        let path = format!("listeners{}", "[0]".repeat(MAX_DEPTH - 1));
        assert_eq!(
            err,
            format!(
                "t.yaml:2:{column}: {path}: collections nested deeper than 64 levels: \
                 no policy nests that deep"
            )
        );
        // Flow collections too.
        let text = format!("target_groups: {}{}\n", "[".repeat(70), "]".repeat(70));
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("nested deeper than 64 levels"), "{err}");
    }

    /// Flow mappings nested `depth` deep.
    fn nested_flow_maps(depth: usize) -> String {
        format!("{}x{}\n", "{a: ".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn a_second_document_is_refused_unread() {
        // serde_norway reads a second document whole before refusing it,
        // and libyaml's time on nested flow collections grows with the
        // square of their depth: this took 39 s (debug build). The index
        // refuses it at its start.
        let text = format!("listeners: []\n---\n{}", nested_flow_maps(50_000));
        let start = Instant::now();
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.yaml:2:1: a second yaml document starts here: a policy file is one document"
        );
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
        // After an end marker, without `---`.
        let err = parse("t.yaml", "listeners: []\n...\ntarget_groups: []\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:3:1: a second yaml document starts here: a policy file is one document"
        );
        // One document between its markers is a policy.
        parse("t.yaml", "---\nlisteners: []\n...\n# the end\n").unwrap();
    }

    #[test]
    fn flow_nesting_yaml_rust2_gives_up_on_is_too_deep() {
        // yaml-rust2 gives up on flow collections nested past 255 levels
        // while it reads ahead, before the budget counts the 65th level.
        // The whole text then went to serde_norway for a message, and
        // libyaml took 71 s on the sequences, 40 s on the mappings (debug
        // build).
        let sequences = format!(
            "listeners: {}x{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let cases = [
            (sequences, "1:267: listeners[0]:"),
            (nested_flow_maps(50_000), "1:1021:"),
        ];
        for (text, place) in cases {
            let start = Instant::now();
            let err = parse("t.yaml", &text).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "t.yaml:{place} collections nested deeper than 64 levels: \
                     no policy nests that deep"
                )
            );
            assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
        }
    }

    #[test]
    fn flow_nesting_yaml_rust2_gives_up_on_after_collections_end() {
        // Found by the fuzzer (3 KB, cut down by hand): the error's path
        // was that of the node read last, deeper than the collections still
        // open once its own had ended: a slice indexed past them, a panic.
        let text = format!("a:\n- {{b: {{c: 1}}}}\n- {}\n", "{".repeat(300));
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.yaml:3:258: a[1]: collections nested deeper than 64 levels: \
             no policy nests that deep"
        );
    }

    #[test]
    fn serde_norway_reads_no_further_than_the_syntax_error_line() {
        // yaml-rust2 refuses a quoted scalar's next line at the key's
        // indentation; libyaml takes it, and read on to the end of the text,
        // through nesting no limit checked: this took 6 s (debug build;
        // twice the nesting, 29 s).
        let text = format!(
            "a: 'x\ny'\nc: {}x{}\n",
            "[".repeat(25_000),
            "]".repeat(25_000)
        );
        let start = Instant::now();
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.yaml:1:4: invalid yaml: invalid indentation in quoted scalar"
        );
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
        // serde_norway's message when it finds the error before the end of
        // what it reads; yaml-rust2's when the cut is what it finds.
        let err = parse("t.yaml", "listeners: {a: 1\nb: 2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:2:2: invalid yaml: did not find expected ',' or '}', \
             while parsing a flow mapping at line 1 column 12"
        );
        let err = parse("t.yaml", "a: 'open\nb: 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:1:4: invalid yaml: invalid indentation in quoted scalar"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_text() {
        // serde_norway took it for text: "more than one document".
        let policy = "\u{feff}listeners: []\ntarget_groups: []\n";
        parse("t.yaml", policy).unwrap();
        // Columns as an editor shows them.
        let err = parse("t.yaml", "\u{feff}listeners: 5\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:1:12: listeners: invalid type: integer `5`, expected a sequence"
        );
        let path = std::env::temp_dir().join(format!("lb-bom-{}.yaml", std::process::id()));
        std::fs::write(&path, policy).unwrap();
        let text = read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.unwrap(), &policy[3..]);
    }

    /// `listeners:` and block sequences nested `depth` deep in it, each on
    /// a line of its own, indented under the one before (`depth + 1`
    /// levels, `depth + 1` lines of about `depth` columns).
    fn nested_block_sequences(depth: usize) -> String {
        let mut text = "listeners:\n".to_string();
        for level in 1..=depth {
            text += &" ".repeat(2 * level);
            text += "-\n";
        }
        text += &" ".repeat(2 * depth + 2);
        text += "x\n";
        text
    }

    #[test]
    fn nested_block_sequences_of_200_kb_are_refused_quickly() {
        let text = nested_block_sequences(450);
        assert!(text.len() > 200_000, "{}", text.len());
        let start = Instant::now();
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        // Level MAX_DEPTH + 1 is the `-` of line MAX_DEPTH + 1.
        let path = format!("listeners{}", "[0]".repeat(MAX_DEPTH - 1));
        assert_eq!(
            err,
            format!(
                "t.yaml:{}:{}: {path}: collections nested deeper than 64 levels: \
                 no policy nests that deep",
                MAX_DEPTH + 1,
                2 * MAX_DEPTH + 1
            )
        );
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    }

    #[test]
    fn nesting_at_the_limit_is_read() {
        // MAX_DEPTH levels: within the limit, refused by serde for what it is.
        let err = parse("t.yaml", &nested_block_sequences(MAX_DEPTH - 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:3:5: listeners[0]: invalid type: sequence, expected a listener mapping"
        );
        let err = parse("t.yaml", &nested_block_sequences(MAX_DEPTH)).unwrap_err();
        assert!(
            err.to_string().contains("nested deeper than 64 levels"),
            "{err}"
        );
    }

    #[test]
    fn a_file_at_the_size_limit_is_read() {
        // A sparse file of MAX_POLICY_BYTES zero bytes: read whole, then
        // refused for what it holds.
        let path = std::env::temp_dir().join(format!("lb-limit-{}.yaml", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_POLICY_BYTES as u64).unwrap();
        let text = read(&path);
        std::fs::remove_file(&path).unwrap();
        let text = text.unwrap();
        assert_eq!(text.len(), MAX_POLICY_BYTES);
        let start = Instant::now();
        let err = parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.yaml:1:1: invalid yaml: control characters are not allowed"
        );
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    }

    /// 64 MiB through both YAML parsers: 0.5 s in a release build, about
    /// 10 s in a debug one (beside the other unit tests, which take longer
    /// together).
    #[test]
    fn a_policy_at_the_size_limit_parses() {
        // A valid policy, padded with comments to the byte.
        let mut text = "listeners: []\ntarget_groups: []\n".to_string();
        let line = format!("#{}\n", "x".repeat(1022));
        while text.len() + line.len() <= MAX_POLICY_BYTES {
            text += &line;
        }
        text += &"#".repeat(MAX_POLICY_BYTES - text.len());
        assert_eq!(text.len(), MAX_POLICY_BYTES);
        parse("t.yaml", &text).unwrap();
    }

    #[test]
    fn too_large_a_text_is_refused() {
        let text = " ".repeat(MAX_POLICY_BYTES + 1);
        assert_eq!(
            parse("t.yaml", &text).unwrap_err().to_string(),
            "t.yaml: the policy is larger than the limit of 64 MiB"
        );
    }

    #[test]
    fn too_large_a_file_is_refused_unread() {
        // A sparse file: its size is known without writing it.
        let path = std::env::temp_dir().join(format!("lb-large-{}.yaml", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_POLICY_BYTES as u64 + 1).unwrap();
        let err = read(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            err,
            format!(
                "{}: the policy is larger than the limit of 64 MiB",
                path.display()
            )
        );
        // A device says it holds nothing, and never ends.
        let err = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(
            err,
            "/dev/zero: the policy is larger than the limit of 64 MiB"
        );
    }

    #[test]
    fn aliases_that_share_settings_parse() {
        let text = "\
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: tls, vip: 10.0.3.49, protocol: tcp, port: 443, target_group: tls }
target_groups:
  - name: web
    protocol: http
    health_check: &check
      type: http
      path: /healthz
      interval_s: 10
    targets: &servers
      - ip: 10.0.3.11
      - ip: 10.0.3.12
  - name: tls
    protocol: http
    health_check: *check
    targets: *servers
";
        let p = parse("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.target_groups[1].health_check,
            p.target_groups[0].health_check
        );
        assert_eq!(p.target_groups[1].targets, p.target_groups[0].targets);
    }

    /// The shape of `tests/src/bench/scale.rs`: `groups` listeners, each to
    /// a group of `targets` targets with a static MAC.
    fn scale_policy(groups: usize, targets: usize) -> String {
        use std::fmt::Write as _;
        let mut y = "interface: eth0\nlisteners:\n".to_string();
        for g in 0..groups {
            let (hi, lo) = (g / 256, g % 256);
            let _ = writeln!(
                y,
                "  - {{ name: l{g}, vip: 10.200.{hi}.{lo}, protocol: tcp, port: 80, target_group: g{g} }}"
            );
        }
        y += "target_groups:\n";
        for g in 0..groups {
            let _ = write!(y, "  - name: g{g}\n    protocol: tcp\n    targets: [");
            for t in 0..targets {
                let sep = if t == 0 { "" } else { ", " };
                let (hi, lo) = (1 + g / 256, g % 256);
                let _ = write!(
                    y,
                    "{sep}{{ ip: 10.{hi}.{lo}.{}, mac: \"02:00:{lo:02x}:{:02x}:00:{t:02x}\" }}",
                    1 + t,
                    g >> 8
                );
            }
            y += "]\n";
        }
        y
    }

    #[test]
    fn the_limits_take_the_largest_realistic_policy() {
        // The limits alone on 1,000 x 100 (a full parse of it is slow
        // in a debug build); a full parse of a slice of it.
        let text = scale_policy(1000, 100);
        let positions = Positions::index(&text);
        assert_eq!(positions.limit_exceeded(), None);
        assert_eq!(positions.syntax_error(), None);
        assert_eq!(
            positions.scalar("target_groups[999].targets[99].ip"),
            Some("10.4.231.100")
        );
        let p = parse("s.yaml", &scale_policy(20, 100)).unwrap();
        assert_eq!(p.target_groups[19].targets.len(), 100);
    }

    #[test]
    fn unreadable_file() {
        let err = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        let s = err.to_string();
        assert!(
            s.starts_with("/nonexistent/policy.yaml: cannot read the policy: no such file"),
            "{s}"
        );
    }
}
