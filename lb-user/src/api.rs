//! The local API of a running `lb`: a Unix stream socket (root-only, default
//! `/run/lb/lb.sock`) speaking one request line and one JSON answer line, in
//! the manner of HAProxy's runtime socket:
//!
//! ```text
//! $ echo status | socat - UNIX-CONNECT:/run/lb/lb.sock
//! {"interface":"eth0", ...}
//! ```
//!
//! Requests: `status` (the whole [`StatusReport`]). The JSON shape is stable:
//! fields are only ever added. It is documented in the README.
use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The interface the program is attached to.
    pub interface: String,
    /// `native` or `generic`.
    pub xdp_mode: String,
    /// The policy file being served.
    pub policy: String,
    /// Local addresses health probes come from (allow them in the targets'
    /// firewalls).
    pub probe_sources: Vec<String>,
    /// Global data-plane counters (see `lb_common::Counter`), summed over CPUs.
    pub counters: BTreeMap<String, u64>,
    /// The flow tables.
    #[serde(default)]
    pub flow_table: FlowTableStatus,
    /// The pinned data plane.
    #[serde(default)]
    pub data_plane: DataPlaneStatus,
    /// What is wrong now: a refused reload, maps not written, state not
    /// saved (`null` each when fine).
    #[serde(default)]
    pub errors: ErrorStatus,
    pub listeners: Vec<ListenerStatus>,
    pub target_groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPlaneStatus {
    /// The bpffs directory of its pinned maps and link.
    pub pin_dir: String,
    /// Whether this `lb` adopted it from an earlier one (else it made it).
    pub adopted: bool,
    /// The runtime state file (health verdicts).
    pub state_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// Why the last reload was refused (the last good policy serves), until
    /// a reload succeeds.
    pub policy: Option<String>,
    /// Why the maps could not be written (retried; the data plane forwards
    /// with what it holds), until a write succeeds.
    pub apply: Option<String>,
    /// Why the runtime state could not be saved, until it is.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// Capacity of each flow table (IPv4 and IPv6), fixed at start.
    pub max_flows: u32,
    /// Entries in both tables at the last sweep (`null` before the first),
    /// ended ones included until the sweep deletes them.
    pub entries: Option<u64>,
    /// How long the last sweep took.
    pub last_sweep_ms: Option<f64>,
    /// Slots of the flow cache in front of the tables (README "Flow
    /// cache"); 0 when it is off.
    #[serde(default)]
    pub cache_slots: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub vip: String,
    pub protocol: String,
    pub port: u16,
    pub target_group: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub protocol: String,
    pub algorithm: String,
    pub affinity: String,
    pub table_size: u32,
    /// The listener it is attached to, if any.
    pub listener: Option<String>,
    /// The health check in effect (defaults applied), `null` when absent.
    pub health_check: Option<HealthCheckStatus>,
    /// `on_unhealthy` of `target_failover`: `no_rebalance` or `rebalance`.
    pub on_unhealthy: String,
    /// No target is healthy: every target takes new flows (last resort).
    pub last_resort: bool,
    /// A flow without packets for this long has ended (seconds).
    #[serde(default)]
    pub flow_idle_timeout_s: u32,
    /// A TCP flow ends this long after the client's FIN or RST (seconds).
    #[serde(default)]
    pub flow_fin_timeout_s: u32,
    /// The `sticky_session` setting, `null` when absent.
    #[serde(default)]
    pub sticky_session: Option<StickyStatus>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StickyStatus {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub duration_s: u32,
    /// `on`, `off` (`enabled: false`) or `ignored (source_ip algorithm)`.
    pub state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub ip: String,
    pub port: u16,
    pub weight: u16,
    /// SPEC.md weight ratio: converted weight / sum of converted weights.
    pub ratio: f64,
    /// Slots of the group's consistent-hash table it holds.
    pub slots: u32,
    /// Where health probes go.
    pub monitor_port: u16,
    /// Resolved (or static) MAC, `null` while unresolved.
    pub mac: Option<String>,
    /// Operating state: `initial` (no verdict yet), `healthy`, `unhealthy`,
    /// `unchecked` (health checks disabled: counts as healthy), or `unused`
    /// (its group has no listener).
    pub state: String,
    /// Takes new flows now.
    pub selectable: bool,
    /// Why it takes no new flows: `mac_unresolved`, `weight_zero`,
    /// `unhealthy`, or `null`.
    pub excluded: Option<String>,
    /// The latest probes, `null` when unchecked.
    pub health: Option<HealthStatus>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Flows in progress: started and not yet ended by the client's FIN or
    /// RST or by the idle timeout (counted by the data plane, corrected by
    /// the flow sweeper every 2 s; never negative).
    #[serde(default)]
    pub active_flows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckStatus {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: String,
    /// The group's monitor port: its `port:`, else the target (listener)
    /// port. A target's own `monitor_port` overrides it (see the target).
    pub port: u16,
    pub interval_s: u32,
    pub timeout_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP(S) only: method, version, path, status codes.
    pub method: Option<String>,
    pub version: Option<String>,
    pub path: Option<String>,
    pub status_codes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// What the last probe saw (`connected`, `status 500`, `timeout after 1s`...).
    pub last_result: Option<String>,
    pub last_ok: Option<bool>,
    pub last_latency_ms: Option<f64>,
}

/// Binds the API socket: creates the directory (0700) if needed, refuses to
/// steal the socket of another running `lb`, removes a stale one, and makes
/// the socket root-only (0600).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another lb is serving on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request line from `stream` and answers it with `answer`.
pub async fn serve_one<F>(stream: UnixStream, answer: F) -> io::Result<()>
where
    F: FnOnce(&str) -> Result<String, String>,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let limited = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_line(&mut line),
    )
    .await;
    let reply = match limited {
        Ok(Ok(0)) => return Ok(()), // connected and left (a liveness probe)
        Ok(Ok(_)) => match answer(line.trim()) {
            Ok(json) => json,
            Err(message) => serde_json::json!({ "error": message }).to_string(),
        },
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lb at {path}: {source} (is `lb run` running? is --socket right?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("lb at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("lb at {path} answered something that is not a status report: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("lb at {path}: {message}")]
    Remote { path: PathBuf, message: String },
}

/// Asks the `lb` serving at `path` for its status.
pub async fn status(path: &Path) -> Result<StatusReport, ClientError> {
    let line = request(path, "status").await?;
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&line)
        && let Some(serde_json::Value::String(message)) = map.get("error")
    {
        return Err(ClientError::Remote {
            path: path.into(),
            message: message.clone(),
        });
    }
    serde_json::from_str(&line).map_err(|source| ClientError::Decode {
        path: path.into(),
        source,
    })
}

async fn request(path: &Path, what: &str) -> Result<String, ClientError> {
    let io = |source| ClientError::Io {
        path: path.into(),
        source,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
    stream
        .write_all(format!("{what}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    Ok(line)
}

/// The human view of a status report: aligned tables.
pub fn render(report: &StatusReport, only_group: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if only_group.is_none() {
        let _ = writeln!(
            out,
            "interface {} ({} XDP), policy {}",
            report.interface, report.xdp_mode, report.policy
        );
        let errors = &report.errors;
        for (what, error) in [
            ("policy reload refused", &errors.policy),
            ("maps not written", &errors.apply),
            ("state not saved", &errors.state),
        ] {
            if let Some(error) = error {
                let _ = writeln!(out, "ERROR: {what}: {error}");
            }
        }
        if !report.data_plane.pin_dir.is_empty() {
            let _ = writeln!(
                out,
                "data plane pinned in {} ({})",
                report.data_plane.pin_dir,
                if report.data_plane.adopted {
                    "adopted from an earlier lb"
                } else {
                    "made by this lb"
                }
            );
        }
        if !report.probe_sources.is_empty() {
            let _ = writeln!(
                out,
                "health probes come from {}",
                report.probe_sources.join(", ")
            );
        }
        let counters: Vec<String> = report
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "counters: {}", counters.join(" "));
        let t = &report.flow_table;
        let _ = writeln!(
            out,
            "flow table: {} entries of {} per address family{}; {}\n",
            t.entries.map_or_else(|| "?".to_string(), |n| n.to_string()),
            t.max_flows,
            t.last_sweep_ms
                .map(|ms| format!(", last sweep {ms:.1} ms"))
                .unwrap_or_default(),
            match t.cache_slots {
                0 => "flow cache off".to_string(),
                n => format!("flow cache {n} slots"),
            }
        );
        let rows: Vec<Vec<String>> = report
            .listeners
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    format!("{}:{}", bracket(&l.vip), l.port),
                    l.protocol.clone(),
                    l.target_group.clone(),
                    l.packets.to_string(),
                    l.bytes.to_string(),
                    l.new_flows.to_string(),
                ]
            })
            .collect();
        out += &table(
            &[
                "LISTENER",
                "VIP",
                "PROTO",
                "TARGET GROUP",
                "PACKETS",
                "BYTES",
                "NEW FLOWS",
            ],
            &rows,
        );
        out.push('\n');
    }
    for g in report
        .target_groups
        .iter()
        .filter(|g| only_group.is_none_or(|n| n == g.name))
    {
        // A round-robin group's table is its cycle: one place per turn.
        let size = if g.algorithm == "round_robin" {
            let cycle: u32 = g.targets.iter().map(|t| t.slots).sum();
            format!("{cycle}-turn cycle")
        } else {
            format!("{} slots", g.table_size)
        };
        let _ = writeln!(
            out,
            "target group {} ({}, {}{}, {size}){}",
            g.name,
            g.protocol,
            g.algorithm,
            if g.algorithm == "hash" {
                format!(" {}", g.affinity)
            } else {
                String::new()
            },
            g.listener
                .as_ref()
                .map(|l| format!(", listener {l}"))
                .unwrap_or_else(|| ", no listener".into())
        );
        if g.protocol == "udp" {
            let _ = writeln!(out, "flows end after {}s idle", g.flow_idle_timeout_s);
        } else {
            let _ = writeln!(
                out,
                "flows end after {}s idle, {}s after the client's FIN or RST",
                g.flow_idle_timeout_s, g.flow_fin_timeout_s
            );
        }
        if let Some(sticky) = &g.sticky_session {
            let _ = match sticky.state.as_str() {
                "on" => writeln!(
                    out,
                    "sticky sessions by {}, {}s from a client's first flow",
                    sticky.kind, sticky.duration_s
                ),
                state => writeln!(out, "sticky sessions {state}"),
            };
        }
        if let Some(h) = g.health_check.as_ref().filter(|h| h.enabled) {
            let _ = writeln!(
                out,
                "health check {} every {}s, timeout {}s, up after {} successes, down after {} failures{}",
                h.kind,
                h.interval_s,
                h.timeout_s,
                h.healthy_threshold,
                h.unhealthy_threshold,
                if g.last_resort {
                    "; LAST RESORT: no healthy target, all targets take flows"
                } else {
                    ""
                }
            );
        }
        let rows: Vec<Vec<String>> = g
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.ip.clone(),
                    t.port.to_string(),
                    t.monitor_port.to_string(),
                    t.weight.to_string(),
                    format!("{:.1}%", t.ratio * 100.0),
                    t.state.clone(),
                    match &t.excluded {
                        Some(why) => format!("no ({why})"),
                        None => "yes".into(),
                    },
                    t.health
                        .as_ref()
                        .map(|h| {
                            format!(
                                "{} ({}ok/{}fail){}",
                                h.last_result.as_deref().unwrap_or("-"),
                                h.consecutive_successes,
                                h.consecutive_failures,
                                h.last_latency_ms
                                    .map(|ms| format!(" {ms:.1}ms"))
                                    .unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|| "-".into()),
                    t.mac.clone().unwrap_or_else(|| "-".into()),
                    t.packets.to_string(),
                    t.bytes.to_string(),
                    t.new_flows.to_string(),
                    t.active_flows.to_string(),
                ]
            })
            .collect();
        out += &table(
            &[
                "TARGET",
                "PORT",
                "MONITOR",
                "WEIGHT",
                "RATIO",
                "STATE",
                "NEW FLOWS?",
                "LAST PROBE",
                "MAC",
                "PACKETS",
                "BYTES",
                "NEW FLOWS",
                "ACTIVE FLOWS",
            ],
            &rows,
        );
        out.push('\n');
    }
    out
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A      LONGER\nxxxxx  1\ny      22\n");
    }

    #[test]
    fn render_shows_active_flows_and_flow_timeouts() {
        let report = StatusReport {
            flow_table: FlowTableStatus {
                max_flows: 1024,
                entries: Some(3),
                last_sweep_ms: Some(0.25),
                cache_slots: 1024,
            },
            target_groups: vec![GroupStatus {
                name: "web".into(),
                protocol: "tcp".into(),
                flow_idle_timeout_s: 350,
                flow_fin_timeout_s: 10,
                targets: vec![TargetStatus {
                    active_flows: 7,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&report, None);
        assert!(
            text.contains(
                "flow table: 3 entries of 1024 per address family, last sweep 0.2 ms; flow cache 1024 slots"
            ),
            "{text}"
        );
        assert!(
            text.contains("flows end after 350s idle, 10s after the client's FIN or RST"),
            "{text}"
        );
        let header = text.lines().find(|l| l.starts_with("TARGET")).unwrap();
        assert!(header.ends_with("NEW FLOWS  ACTIVE FLOWS"), "{header}");
        let row = text.lines().skip_while(|l| !l.starts_with("TARGET")).nth(1);
        assert!(row.unwrap().ends_with('7'), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let report = StatusReport {
            interface: "eth0".into(),
            target_groups: vec![GroupStatus {
                name: "web".into(),
                targets: vec![TargetStatus::default()],
                sticky_session: Some(StickyStatus {
                    enabled: true,
                    kind: "source_ip".into(),
                    duration_s: 360,
                    state: "ignored (source_ip algorithm)".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), report);
        assert!(json.contains(r#""state":"ignored (source_ip algorithm)""#));
        let text = render(&report, None);
        assert!(
            text.contains("sticky sessions ignored (source_ip algorithm)"),
            "{text}"
        );
    }

    #[test]
    fn round_robin_groups_show_their_cycle() {
        let report = StatusReport {
            target_groups: vec![GroupStatus {
                name: "web".into(),
                protocol: "tcp".into(),
                algorithm: "round_robin".into(),
                table_size: 65537,
                sticky_session: Some(StickyStatus {
                    enabled: true,
                    kind: "source_ip".into(),
                    duration_s: 30,
                    state: "on".into(),
                }),
                flow_idle_timeout_s: 350,
                flow_fin_timeout_s: 10,
                targets: [2, 2, 1]
                    .iter()
                    .map(|&slots| TargetStatus {
                        slots,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&report, Some("web"));
        assert!(
            text.starts_with(
                "target group web (tcp, round_robin, 5-turn cycle), no listener\n\
                 flows end after 350s idle, 10s after the client's FIN or RST\n\
                 sticky sessions by source_ip, 30s from a client's first flow\n"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn socket_serves_status_and_refuses_a_second_server() {
        let dir = std::env::temp_dir().join(format!("lb-api-test-{}", std::process::id()));
        let path = dir.join("lb.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = bind(&path).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AddrInUse, "{second}");
        let server = tokio::spawn(async move {
            // The first connection is the second bind's liveness probe.
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                serve_one(stream, |req| {
                    assert_eq!(req, "status");
                    Ok(serde_json::to_string(&StatusReport {
                        interface: "veth9".into(),
                        ..Default::default()
                    })
                    .unwrap())
                })
                .await
                .unwrap();
            }
        });
        assert_eq!(status(&path).await.unwrap().interface, "veth9");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
