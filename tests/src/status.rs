//! Reading `lb`'s status report in tests: one request on its API socket (a
//! file path, reachable from any network namespace), the JSON answer, typed
//! accessors for the parts the health tests look at, and a poll loop that
//! waits for a condition with a deadline.
//!
//! The fields read here are the stable JSON of `lb status --json`
//! (`lb-user/src/status/report.rs`): top-level `probe_sources`; per group
//! `health_check` and `last_resort`; per target `state`, `selectable`,
//! `monitor_port` and `health`.
use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::LabError;

/// How often [`wait_for`] asks: often enough to time a transition to a tenth
/// of a second, rarely enough to cost the 2-core machine nothing.
pub const POLL: Duration = Duration::from_millis(100);

/// Asks the `lb` serving at `socket` for its status (the raw JSON the daemon
/// sends; `lb status --json` prints the same report).
pub fn fetch(socket: &Path) -> Result<Status, LabError> {
    fetch_line(socket, "status")
}

/// The status of one group (`status GROUP`: `lb` builds only that group's).
pub fn fetch_group(socket: &Path, group: &str) -> Result<Status, LabError> {
    fetch_line(socket, &format!("status {group}"))
}

fn fetch_line(socket: &Path, request: &str) -> Result<Status, LabError> {
    let err = |reason: String| LabError::Status {
        reason: format!("{}: {reason}", socket.display()),
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| err(e.to_string()))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| err(format!("write: {e}")))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| err(format!("read: {e}")))?;
    let value: Value =
        serde_json::from_str(&line).map_err(|e| err(format!("not JSON ({e}): {line}")))?;
    if let Some(message) = value.get("error").and_then(Value::as_str) {
        return Err(err(format!("error: {message}")));
    }
    Ok(Status(value))
}

/// One status report.
#[derive(Debug, Clone, PartialEq)]
pub struct Status(pub Value);

impl Status {
    /// The target group called `name`.
    pub fn group(&self, name: &str) -> Option<&Value> {
        self.0
            .get("target_groups")?
            .as_array()?
            .iter()
            .find(|g| g.get("name").and_then(Value::as_str) == Some(name))
    }

    /// The target `ip` of group `group`.
    pub fn target(&self, group: &str, ip: IpAddr) -> Option<&Value> {
        self.group(group)?
            .get("targets")?
            .as_array()?
            .iter()
            .find(|t| {
                t.get("ip")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    == Some(ip)
            })
    }

    /// Its `state`: `initial`, `healthy`, `unhealthy`, `unchecked`, `unused`.
    pub fn state(&self, group: &str, ip: IpAddr) -> Option<&str> {
        self.target(group, ip)?.get("state")?.as_str()
    }

    /// Whether it takes new flows now.
    pub fn selectable(&self, group: &str, ip: IpAddr) -> Option<bool> {
        self.target(group, ip)?.get("selectable")?.as_bool()
    }

    /// A field of its `health` object (`consecutive_successes`,
    /// `last_result`...); None if absent or if `health` is null.
    pub fn health(&self, group: &str, ip: IpAddr, field: &str) -> Option<&Value> {
        self.target(group, ip)?
            .get("health")?
            .get(field)
            .filter(|v| !v.is_null())
    }

    /// `health.consecutive_successes` / `consecutive_failures`.
    pub fn consecutive(&self, group: &str, ip: IpAddr) -> Option<(u64, u64)> {
        Some((
            self.health(group, ip, "consecutive_successes")?.as_u64()?,
            self.health(group, ip, "consecutive_failures")?.as_u64()?,
        ))
    }

    /// `health.last_result`.
    pub fn last_result(&self, group: &str, ip: IpAddr) -> Option<&str> {
        self.health(group, ip, "last_result")?.as_str()
    }

    /// The group's `last_resort` flag.
    pub fn last_resort(&self, group: &str) -> Option<bool> {
        self.group(group)?.get("last_resort")?.as_bool()
    }

    /// Top-level `probe_sources`.
    pub fn probe_sources(&self) -> Vec<String> {
        self.0
            .get("probe_sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// `ip=state` for every target of `group`, for messages.
    pub fn states(&self, group: &str) -> String {
        let Some(targets) = self
            .group(group)
            .and_then(|g| g.get("targets"))
            .and_then(Value::as_array)
        else {
            return format!("(no group {group})");
        };
        targets
            .iter()
            .map(|t| {
                format!(
                    "{}={}{}",
                    t.get("ip").and_then(Value::as_str).unwrap_or("?"),
                    t.get("state").and_then(Value::as_str).unwrap_or("?"),
                    match t.get("selectable").and_then(Value::as_bool) {
                        Some(true) => "",
                        Some(false) => "(not selectable)",
                        None => "(selectable?)",
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Pretty JSON of one group (or everything), for failure messages.
    pub fn show(&self, group: Option<&str>) -> String {
        let value = group.and_then(|g| self.group(g)).unwrap_or(&self.0);
        serde_json::to_string_pretty(value).unwrap_or_default()
    }
}

/// What [`wait_for`] found.
#[derive(Debug)]
pub struct Waited<T> {
    pub value: T,
    /// When the report that satisfied the condition arrived: what it shows
    /// had happened by then (use this to start anything that must come
    /// after it).
    pub at: Instant,
    /// When that report was asked for.
    pub asked: Instant,
    /// When the last report that did not satisfy the condition was asked
    /// for: what the condition describes had not all happened before then
    /// (a lower bound for a transition). None if the first report did.
    pub not_before: Option<Instant>,
    pub status: Status,
}

/// Fetches the status every [`POLL`] until `check` returns `Some`, or
/// `timeout` passes (then an error naming `what`, with the last report or
/// the last fetch error). `check` is `FnMut` so that a test can record what
/// it saw on the way (states passed through, counters).
pub fn wait_for<T>(
    socket: &Path,
    timeout: Duration,
    what: &str,
    check: impl FnMut(&Status) -> Option<T>,
) -> Result<Waited<T>, LabError> {
    wait_for_with(|| fetch(socket), timeout, what, check)
}

/// [`wait_for`] on the status of group `group` only.
pub fn wait_for_group<T>(
    socket: &Path,
    group: &str,
    timeout: Duration,
    what: &str,
    check: impl FnMut(&Status) -> Option<T>,
) -> Result<Waited<T>, LabError> {
    wait_for_with(|| fetch_group(socket, group), timeout, what, check)
}

fn wait_for_with<T>(
    fetch: impl Fn() -> Result<Status, LabError>,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Status) -> Option<T>,
) -> Result<Waited<T>, LabError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last;
    let mut not_before = None;
    loop {
        let asked = Instant::now();
        match fetch() {
            Ok(status) => {
                if let Some(value) = check(&status) {
                    return Ok(Waited {
                        value,
                        at: Instant::now(),
                        asked,
                        not_before,
                        status,
                    });
                }
                not_before = Some(asked);
                last = status.show(None);
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.into(),
                secs: timeout.as_secs(),
                detail: format!(" ({:.1} s); last report: {last}", timeout.as_secs_f64()),
            });
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Status {
        Status(serde_json::json!({
            "probe_sources": ["10.0.3.2"],
            "target_groups": [{
                "name": "web",
                "last_resort": false,
                "health_check": {"type": "tcp"},
                "targets": [
                    {"ip": "10.0.3.11", "state": "healthy", "selectable": true,
                     "health": {"consecutive_successes": 3, "consecutive_failures": 0,
                                "last_result": "connected", "last_ok": true,
                                "last_latency_ms": 0.4}},
                    {"ip": "fd00:3::12", "state": "unhealthy", "selectable": false,
                     "health": null}
                ]
            }]
        }))
    }

    /// `lb status --json` is stable and documented: every field named here
    /// (README's table of the report) is in the report under that name, and
    /// the README names it. Fields may be added; never remove or rename one
    /// here.
    #[test]
    fn documented_fields_are_reported() {
        // One of every object, every optional part present.
        let report = lb_user::status::example();
        let json = serde_json::to_value(&report).unwrap();
        let group = &json["target_groups"][0];
        let target = &group["targets"][0];
        let objects: [(&str, &Value, &[&str]); 10] = [
            (
                "report",
                &json,
                &[
                    "interface",
                    "xdp_mode",
                    "policy",
                    "probe_sources",
                    "counters",
                    "flow_table",
                    "data_plane",
                    "errors",
                    "listeners",
                    "target_groups",
                ],
            ),
            (
                "data_plane",
                &json["data_plane"],
                &["pin_dir", "adopted", "state_file"],
            ),
            ("errors", &json["errors"], &["policy", "apply", "state"]),
            (
                "listeners[]",
                &json["listeners"][0],
                &[
                    "name",
                    "vip",
                    "protocol",
                    "port",
                    "target_group",
                    "packets",
                    "bytes",
                    "new_flows",
                ],
            ),
            (
                "target_groups[]",
                group,
                &[
                    "name",
                    "protocol",
                    "algorithm",
                    "affinity",
                    "table_size",
                    "listener",
                    "health_check",
                    "on_unhealthy",
                    "on_deregistration",
                    "deregistration_delay_s",
                    "backup",
                    "serving",
                    "serving_reason",
                    "last_resort",
                    "targets",
                ],
            ),
            (
                "backup",
                &group["backup"],
                &["target_group", "failover_ratio"],
            ),
            (
                "drain",
                &target["drain"],
                &["by_command", "since", "until", "remaining_s"],
            ),
            (
                "health_check",
                &group["health_check"],
                &[
                    "enabled",
                    "type",
                    "port",
                    "interval_s",
                    "timeout_s",
                    "healthy_threshold",
                    "unhealthy_threshold",
                    "method",
                    "version",
                    "path",
                    "status_codes",
                ],
            ),
            (
                "targets[]",
                target,
                &[
                    "ip",
                    "via",
                    "port",
                    "monitor_port",
                    "weight",
                    "ratio",
                    "slots",
                    "mac",
                    "state",
                    "provisioning",
                    "drain",
                    "selectable",
                    "excluded",
                    "health",
                    "packets",
                    "bytes",
                    "new_flows",
                ],
            ),
            (
                "health",
                &target["health"],
                &[
                    "consecutive_successes",
                    "consecutive_failures",
                    "last_result",
                    "last_ok",
                    "last_latency_ms",
                ],
            ),
        ];
        let readme_path = crate::lab::workspace_root().join("README.md");
        let readme = std::fs::read_to_string(&readme_path).unwrap();
        let status = &readme[readme
            .find("## Status")
            .expect("README has a Status section")..];
        for (what, object, fields) in objects {
            let object = object
                .as_object()
                .unwrap_or_else(|| panic!("{what} is not an object: {object}"));
            for field in fields {
                assert!(object.contains_key(*field), "{what} lacks `{field}`");
                assert!(
                    status.contains(&format!("`{field}`"))
                        || status.contains(&format!("`{field}[]`")),
                    "README's Status section does not name {what}'s `{field}`"
                );
            }
        }
    }

    #[test]
    fn accessors() {
        let s = report();
        let t1: IpAddr = "10.0.3.11".parse().unwrap();
        let t2: IpAddr = "fd00:3:0::12".parse().unwrap();
        assert_eq!(s.state("web", t1), Some("healthy"));
        assert_eq!(s.selectable("web", t2), Some(false));
        assert_eq!(s.consecutive("web", t1), Some((3, 0)));
        assert_eq!(s.consecutive("web", t2), None);
        assert_eq!(s.last_result("web", t1), Some("connected"));
        assert_eq!(s.last_resort("web"), Some(false));
        assert_eq!(s.probe_sources(), ["10.0.3.2"]);
        assert_eq!(
            s.states("web"),
            "10.0.3.11=healthy fd00:3::12=unhealthy(not selectable)"
        );
        assert!(s.group("dns").is_none());
    }
}
