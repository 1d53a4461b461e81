//! Every limit, range and default of a policy, in one place: the model's
//! defaults, validation, the compiler, the ids registry, error messages and
//! docs/policy.md (a test below reads it) all take them from here.
//!
//! The data plane's map capacities are lb-common's (`MAX_LISTENERS`, ...);
//! id 0 is reserved in each map (a zeroed entry names nothing), so a policy
//! holds one object fewer than each map has entries.
use std::fmt;

/// An inclusive range of a numeric field, written `min-max` in messages and
/// docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

impl Range {
    pub const fn new(min: u64, max: u64) -> Range {
        Range { min, max }
    }

    pub fn contains(self, value: impl Into<u64>) -> bool {
        (self.min..=self.max).contains(&value.into())
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Most listeners a policy may have: listener ids are 1..=this.
pub const LISTENER_LIMIT: u32 = lb_common::MAX_LISTENERS - 1;
/// Most target groups a policy may have: group ids are 1..=this.
pub const GROUP_LIMIT: u32 = lb_common::MAX_GROUPS - 1;
/// Most targets a policy may have, all groups together: target ids are
/// 1..=this (retired targets hold theirs too, `crate::ids`).
pub const TARGET_LIMIT: u32 = lb_common::MAX_TARGETS - 1;

/// Characters of a listener or target group name (SPEC.md "Names"); the
/// data plane records group names of at most this length.
pub const NAME_LEN: Range = Range::new(1, lb_common::MAX_GROUP_NAME as u64);
/// Characters of an interface name (Linux: IFNAMSIZ - 1).
pub const IFACE_NAME_LEN: Range = Range::new(1, 15);

pub const PORT: Range = Range::new(1, 65535);
/// SPEC.md "Weights".
pub const WEIGHT: Range = Range::new(0, 256);
/// Slots of a consistent-hash table; the size must also be a prime.
pub const TABLE_SIZE: Range = Range::new(1021, lb_common::MAX_TABLE_SIZE as u64);
/// SPEC.md "Health checks".
pub const INTERVAL_S: Range = Range::new(1, 3600);
pub const TIMEOUT_S: Range = Range::new(1, 900);
pub const THRESHOLD: Range = Range::new(1, 10);
/// The status codes a check may expect.
pub const STATUS_CODE: Range = Range::new(100, 599);
/// Flow timeouts. Neither may be below 1 s: an entry's last-seen time is
/// refreshed only once it is `flow_table::TOUCH_UNITS` stale, so an entry
/// outlives its timeout by up to that (`flow_table::outlived`).
pub const FLOW_IDLE_TIMEOUT_S: Range = Range::new(1, 86_400);
pub const FLOW_FIN_TIMEOUT_S: Range = Range::new(1, 3600);
const _: () = assert!(
    (lb_common::flow_table::TOUCH_UNITS as u64) << lb_common::flow_table::TIME_SHIFT
        <= 1_000_000_000
);
/// Flows the flow table holds (both address families).
pub const MAX_FLOWS: Range = Range::new(1024, 1 << 25);
/// SPEC.md "Sticky session".
pub const STICKY_DURATION_S: Range = Range::new(1, 604_800);
/// SPEC.md "Deregistration and failover of flows": how long a target that
/// leaves keeps its flows (draining).
pub const DEREGISTRATION_DELAY_S: Range = Range::new(0, 3600);
/// SPEC.md "Backup group and failover ratio": the healthy share of a group's
/// targets below which its new flows go to its backup group.
pub const FAILOVER_RATIO: (f64, f64) = (0.0, 1.0);

/// The range of each numeric field, by its name (a name means the same
/// field wherever it appears).
pub fn range_of(field: &str) -> Option<Range> {
    Some(match field {
        "port" | "monitor_port" => PORT,
        "weight" => WEIGHT,
        "table_size" => TABLE_SIZE,
        "interval_s" => INTERVAL_S,
        "timeout_s" => TIMEOUT_S,
        "healthy_threshold" | "unhealthy_threshold" => THRESHOLD,
        "flow_idle_timeout_s" => FLOW_IDLE_TIMEOUT_S,
        "flow_fin_timeout_s" => FLOW_FIN_TIMEOUT_S,
        "max_flows" => MAX_FLOWS,
        "duration_s" => STICKY_DURATION_S,
        "deregistration_delay_s" => DEREGISTRATION_DELAY_S,
        _ => return None,
    })
}

/// The message for a number out of its field's range, shared by the
/// validator and the rewording of serde's errors (a number too big for its
/// integer type).
pub fn out_of_range(field: &str, value: &str) -> Option<String> {
    let range = range_of(field)?;
    let hint = if field == "table_size" {
        format!("; {DEFAULT_TABLE_SIZE} is a good default")
    } else {
        String::new()
    };
    Some(format!("{field} {value} is out of range {range}{hint}"))
}

/// Consistent-hash table size of a group that names none: a prime, as
/// Maglev requires.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Weight of a target that names none: the maximum, so that listing IPs
/// alone gives an even spread.
pub const DEFAULT_WEIGHT: u16 = WEIGHT.max as u16;
/// Entries of each flow table (IPv4 and IPv6 have one each).
pub const DEFAULT_MAX_FLOWS: u32 = lb_common::DEFAULT_FLOW_TABLE_SIZE;
/// SPEC.md "Sticky session".
pub const DEFAULT_STICKY_DURATION_S: u32 = 360;
/// Idle timeouts by group protocol (SPEC.md "Deregistration and failover of
/// flows").
pub const DEFAULT_TCP_IDLE_TIMEOUT_S: u32 = 350;
pub const DEFAULT_UDP_IDLE_TIMEOUT_S: u32 = 120;
/// How long a TCP flow lingers without packets after the client's FIN or
/// RST.
pub const DEFAULT_FIN_TIMEOUT_S: u32 = 10;
/// SPEC.md "Deregistration and failover of flows".
pub const DEFAULT_DEREGISTRATION_DELAY_S: u32 = 300;

/// Health check defaults, from the KakaoCloud DSR NLB target group
/// documents (docs/policy.md says where each one comes from).
pub const DEFAULT_INTERVAL_S: u32 = 30;
pub const DEFAULT_TIMEOUT_S: u32 = 5;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 5;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_HTTP_PATH: &str = "/";
/// The seeds give no default; this is the usual network load balancer one
/// (any 2xx or 3xx answer: the server is up).
pub const DEFAULT_STATUS_CODES: &str = "200-399";

/// Largest policy file or text, in bytes: room for the largest policy the
/// data plane can hold (a target with every field written takes about 100
/// bytes of YAML: about 20 MiB in all), three times over for comments and
/// spacing. A larger file is refused before it is read whole. Bytes alone
/// are cheap (64 MiB of comments: 0.5 s in a release build); what they
/// hold is bounded by `MAX_NODES` and `MAX_DEPTH`.
pub const MAX_POLICY_BYTES: usize = 64 << 20;

/// Deepest nesting of collections (the document's top mapping is level 1).
/// A policy nests 5 levels; deep nesting costs the parsers stack and memory
/// for nothing (serde_norway gives up at 128), and libyaml time that grows
/// with the square of the nesting, so no text nested deeper reaches it.
pub const MAX_DEPTH: usize = 64;

/// Most nodes (scalars, sequences and mappings; keys count) a document may
/// have once its aliases are expanded: more than the largest policy the data
/// plane can hold (checked below), and a bound on what parsing costs, since
/// the position index keeps every node written and serde builds every node
/// expanded.
pub const MAX_NODES: u64 = 1 << 21;

// The largest policy the data plane can hold, every field written: a target
// is a mapping of 5 fields (11 nodes), a listener too, and a target group
// with its health check, failover and sticky session has under 64 nodes
// besides its targets.
const _: () = assert!(
    MAX_NODES
        >= 11 * TARGET_LIMIT as u64 + 64 * GROUP_LIMIT as u64 + 11 * LISTENER_LIMIT as u64 + 16
);
const _: () = assert!(MAX_POLICY_BYTES as u64 >= 100 * TARGET_LIMIT as u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Affinity, Algorithm, HttpMethod, HttpVersion};

    const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md"));

    /// The cells of the row of `field` in the table of section `## section`.
    fn row(section: &str, field: &str) -> Vec<&'static str> {
        let heading = format!("\n## {section}\n");
        let start = DOC
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading:?}"));
        let body = &DOC[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        let prefix = format!("| `{field}` |");
        let line = body
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{section}: no row for `{field}`"));
        line.trim_matches('|').split(" | ").map(str::trim).collect()
    }

    /// docs/policy.md states every range and default as the constants here
    /// say: a change to one without the other fails.
    #[test]
    fn the_policy_document_states_the_limits() {
        let int = |r: Range| format!("integer {r}");
        let code = |v: &dyn fmt::Display| format!("`{v}`");
        let text = |v: &str| v.to_string();
        let (top, tg, target, hc) = ("Top level", "Target group", "Target", "Health check");
        let idle = format!(
            "`{DEFAULT_TCP_IDLE_TIMEOUT_S}` for `tcp` and `http` groups, \
             `{DEFAULT_UDP_IDLE_TIMEOUT_S}` for `udp`"
        );
        // (section, field, in the type cell, the default cell)
        #[rustfmt::skip]
        let rows: Vec<(&str, &str, String, String)> = vec![
            (top, "flow_table", text("flow table"), format!("`max_flows: {DEFAULT_MAX_FLOWS}`")),
            ("Listener", "port", int(PORT), text("required")),
            (tg, "algorithm", text("`hash`"), code(&Algorithm::default().as_str())),
            (tg, "affinity", text("`five_tuple`"), code(&Affinity::default().as_str())),
            (tg, "table_size", format!("prime {}", int(TABLE_SIZE)), code(&DEFAULT_TABLE_SIZE)),
            (tg, "flow_idle_timeout_s", int(FLOW_IDLE_TIMEOUT_S), idle),
            (tg, "flow_fin_timeout_s", int(FLOW_FIN_TIMEOUT_S), code(&DEFAULT_FIN_TIMEOUT_S)),
            (tg, "deregistration_delay_s", int(DEREGISTRATION_DELAY_S), code(&DEFAULT_DEREGISTRATION_DELAY_S)),
            (tg, "failover_ratio", format!("number {:.1}-{:.1}", FAILOVER_RATIO.0, FAILOVER_RATIO.1), text("required with `backup`")),
            (target, "weight", int(WEIGHT), code(&DEFAULT_WEIGHT)),
            (target, "port", int(PORT), text("the listener's port")),
            (target, "monitor_port", int(PORT), text("the group's `health_check.port`")),
            (hc, "port", int(PORT), text("the target port (= the listener port)")),
            (hc, "interval_s", int(INTERVAL_S), code(&DEFAULT_INTERVAL_S)),
            (hc, "timeout_s", int(TIMEOUT_S), code(&DEFAULT_TIMEOUT_S)),
            (hc, "healthy_threshold", int(THRESHOLD), code(&DEFAULT_HEALTHY_THRESHOLD)),
            (hc, "unhealthy_threshold", int(THRESHOLD), code(&DEFAULT_UNHEALTHY_THRESHOLD)),
            (hc, "method", text("`GET`"), code(&HttpMethod::default().as_str())),
            (hc, "version", text("`\"1.1\"`"), format!("`\"{}\"`", HttpVersion::default().as_str())),
            (hc, "path", text("URL path"), code(&DEFAULT_HTTP_PATH)),
            (hc, "status_codes", text("string"), format!("`\"{DEFAULT_STATUS_CODES}\"`")),
            ("Flow table", "max_flows", int(MAX_FLOWS), code(&DEFAULT_MAX_FLOWS)),
            ("Sticky session", "duration_s", int(STICKY_DURATION_S), code(&DEFAULT_STICKY_DURATION_S)),
        ];
        let mut wrong = Vec::new();
        for (section, field, kind, default) in &rows {
            let cells = row(section, field);
            if !cells[1].contains(kind.as_str()) || cells[2] != default {
                wrong.push(format!(
                    "{section} `{field}`: want `{kind}` and {default}, doc says {cells:?}"
                ));
            }
        }
        // Limits and ranges stated in prose.
        let sentences = [
            format!(
                "Limits: at most {LISTENER_LIMIT} listeners, {GROUP_LIMIT} target groups and \
                 {TARGET_LIMIT} targets in all"
            ),
            format!(
                "{}-{} characters, no `/`",
                IFACE_NAME_LEN.min, IFACE_NAME_LEN.max
            ),
            format!("names are {}-{} characters", NAME_LEN.min, NAME_LEN.max),
            format!("each code {STATUS_CODE}"),
            format!("max_flows: {DEFAULT_MAX_FLOWS}\n"),
            format!("| file size | {} MiB |", MAX_POLICY_BYTES >> 20),
            format!("| nesting | {MAX_DEPTH} levels |"),
            format!("| nodes | {MAX_NODES} |"),
        ];
        for sentence in &sentences {
            if !DOC.contains(sentence.as_str()) {
                wrong.push(format!("not in the document: {sentence:?}"));
            }
        }
        assert!(wrong.is_empty(), "docs/policy.md:\n{}", wrong.join("\n"));
    }

    #[test]
    fn every_range_field_has_its_message() {
        assert_eq!(
            out_of_range("table_size", "7").as_deref(),
            Some("table_size 7 is out of range 1021-1000003; 65537 is a good default")
        );
        assert_eq!(
            out_of_range("port", "0").as_deref(),
            Some("port 0 is out of range 1-65535")
        );
        assert_eq!(out_of_range("name", "x"), None);
        assert!(WEIGHT.contains(0u16) && WEIGHT.contains(256u16) && !WEIGHT.contains(257u16));
    }
}
