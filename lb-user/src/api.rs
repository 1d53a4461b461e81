//! The local API of a running `lb`: a Unix stream socket (root-only, default
//! `/run/lb/lb.sock`) speaking one request line and one JSON answer line, in
//! the manner of HAProxy's runtime socket:
//!
//! ```text
//! $ echo status | socat - UNIX-CONNECT:/run/lb/lb.sock
//! {"interface":"eth0", ...}
//! ```
//!
//! Requests: `status` (the whole [`StatusReport`], whose JSON is stable and
//! documented in the README), and, as one JSON object on the line, the
//! requests that change something: `{"apply": {...}}` (a new policy, or its
//! plan with `dry_run`), `{"drain": {...}}` and `{"undrain": {...}}` (a
//! target). Only root may change something: the socket is root's (0600),
//! and a changing request from another user is refused. A request this `lb`
//! does not know, or an answer it cannot make, is answered
//! `{"error": "..."}`.
//!
//! This module speaks the protocol only: [`bind`] and [`receive`] for the
//! daemon, which answers each request in its event loop, and [`call`] for
//! the clients (`lb status`, `lb apply`, `lb drain`).
use std::{
    io,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
};

use crate::{
    policy::{diff::Change, limits::MAX_POLICY_BYTES},
    status::StatusReport,
};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// Longest request line: a policy at its largest, escaped as a JSON string.
const MAX_REQUEST_BYTES: u64 = 2 * MAX_POLICY_BYTES as u64 + 4096;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request, as the daemon handles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The whole status report.
    Status,
    /// A new policy (`lb apply`): its plan, and unless `dry_run`, applied.
    Apply(Apply),
    /// `lb drain GROUP TARGET`.
    Drain(TargetRef),
    /// `lb undrain GROUP TARGET`.
    Undrain(TargetRef),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apply {
    /// Where the text comes from (the file name errors name).
    pub source: String,
    pub text: String,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub group: String,
    pub ip: IpAddr,
}

impl Request {
    /// Whether it changes something (root only).
    fn changes(&self) -> bool {
        !matches!(self, Request::Status)
    }

    /// The request on `line`, or the error to answer it with.
    fn parse(line: &str) -> Result<Request, String> {
        if line == "status" {
            return Ok(Request::Status);
        }
        if line.starts_with('{') {
            return serde_json::from_str(line).map_err(|e| format!("bad request: {e}"));
        }
        let shown: String = line.chars().take(40).collect();
        Err(format!(
            "unknown request {shown:?}: try `status`, or a JSON object {{\"apply\": ...}}, {{\"drain\": ...}}, {{\"undrain\": ...}}"
        ))
    }

    /// Its line on the socket.
    fn line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            other => serde_json::to_string(other).expect("a request serializes"),
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Apply(ApplyReply),
    Drain(DrainReply),
    Error(String),
}

/// What `lb apply` did, or would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReply {
    pub source: String,
    pub dry_run: bool,
    /// The policy was taken (never with `dry_run`).
    pub applied: bool,
    /// Why it was refused: the policy's errors (`FILE:LINE:COL: PATH:
    /// message` lines), or what kept it from compiling. None when valid.
    pub refused: Option<String>,
    /// Taken, but the maps could not be written yet (retried; `lb status`
    /// shows it until they are).
    #[serde(default)]
    pub apply_error: Option<String>,
    pub changes: Vec<Change>,
}

/// What `lb drain` or `lb undrain` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    pub group: String,
    pub ip: IpAddr,
    pub draining: bool,
    /// Its flows in progress now.
    pub active_flows: u64,
    /// When its delay ends (Unix seconds), while draining.
    pub until: Option<u64>,
}

impl ApplyReply {
    /// What `lb apply` prints: the plan, one change a line, and what was
    /// done with it.
    pub fn render(&self) -> String {
        let source = &self.source;
        if let Some(why) = &self.refused {
            return format!("{source}: refused, nothing changed:\n{why}\n");
        }
        let n = self.changes.len();
        let mut out = match (n, self.dry_run) {
            (0, true) => format!("{source}: valid, no change (dry run)\n"),
            (0, false) => format!("{source}: applied, no change\n"),
            (_, true) => format!("{source}: valid, {n} changes (dry run: nothing changed):\n"),
            (_, false) => format!("{source}: applied {n} changes:\n"),
        };
        for change in &self.changes {
            out += &format!("  {change}\n");
        }
        if let Some(err) = &self.apply_error {
            out += &format!("WARNING: the maps are not written yet (retried): {err}\n");
        }
        out
    }
}

impl DrainReply {
    /// What `lb drain` and `lb undrain` print (`now`: Unix seconds).
    pub fn render(&self, now: u64) -> String {
        let head = format!("{} in {}", self.ip, self.group);
        match self.until {
            Some(until) if self.draining => format!(
                "{head}: draining, {} active flows; no new flows, unused in {} s or when its flows end",
                self.active_flows,
                until.saturating_sub(now)
            ),
            _ => format!(
                "{head}: active again ({} active flows kept)",
                self.active_flows
            ),
        }
    }
}

impl Reply {
    /// Its line on the socket: a status report is the report itself (the
    /// JSON `lb status --json` documents); the others are tagged.
    fn line(&self) -> String {
        let json = match self {
            Reply::Status(report) => serde_json::to_string(report),
            Reply::Error(message) => Ok(serde_json::json!({ "error": message }).to_string()),
            other => serde_json::to_string(other),
        };
        json.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }

    /// The reply on `line`, for a request `what`.
    fn parse(line: &str, what: &Request) -> Result<Reply, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(line)?;
        if let Some(message) = value.get("error").and_then(|m| m.as_str()) {
            return Ok(Reply::Error(message.to_string()));
        }
        match what {
            Request::Status => Ok(Reply::Status(serde_json::from_value(value)?)),
            _ => serde_json::from_value(value),
        }
    }
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

/// Where a request's answer goes.
pub struct Responder {
    write: OwnedWriteHalf,
}

impl Responder {
    /// Writes `reply` and closes the connection.
    pub async fn send(mut self, reply: &Reply) -> io::Result<()> {
        self.write.write_all(reply.line().as_bytes()).await?;
        self.write.write_all(b"\n").await?;
        self.write.shutdown().await
    }
}

/// Reads one request from `stream` (bounded in size and time). A request
/// that cannot be taken (unknown, malformed, or changing and not from root)
/// is answered here with an error, and None returned; so is a client that
/// connects and leaves (a liveness probe).
pub async fn receive(stream: UnixStream) -> io::Result<Option<(Request, Responder)>> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, write) = stream.into_split();
    let responder = Responder { write };
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    let request = Request::parse(line.trim()).and_then(|r| {
        if r.changes() && uid != Some(0) {
            Err("only root may change a running lb".to_string())
        } else {
            Ok(r)
        }
    });
    match request {
        Ok(request) => Ok(Some((request, responder))),
        Err(message) => {
            responder.send(&Reply::Error(message)).await?;
            Ok(None)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lb at {path}: {source} (is `lb run` running? is --socket right?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("lb at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("lb at {path} answered something this lb cannot read: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("lb at {path}: {message}")]
    Remote { path: PathBuf, message: String },
}

/// Sends `request` to the `lb` serving at `path` and reads its reply (an
/// error reply is a [`ClientError::Remote`]).
pub async fn call(path: &Path, request: &Request) -> Result<Reply, ClientError> {
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
        .write_all(format!("{}\n", request.line()).as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    match Reply::parse(&line, request).map_err(|source| ClientError::Decode {
        path: path.into(),
        source,
    })? {
        Reply::Error(message) => Err(ClientError::Remote {
            path: path.into(),
            message,
        }),
        reply => Ok(reply),
    }
}

/// Asks the `lb` serving at `path` for its status.
pub async fn status(path: &Path) -> Result<StatusReport, ClientError> {
    match call(path, &Request::Status).await? {
        Reply::Status(report) => Ok(*report),
        other => Err(ClientError::Remote {
            path: path.into(),
            message: format!("answered {other:?} to `status`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_operator_expects() {
        let mut reply = ApplyReply {
            source: "new.yaml".into(),
            dry_run: true,
            applied: false,
            refused: None,
            apply_error: None,
            changes: vec![Change::TargetAdded {
                group: "web".into(),
                ip: "10.0.3.14".parse().unwrap(),
                weight: 256,
            }],
        };
        assert_eq!(
            reply.render(),
            "new.yaml: valid, 1 changes (dry run: nothing changed):\n  + target 10.0.3.14 in web (weight 256)\n"
        );
        reply.refused = Some("new.yaml:3:5: target_groups[0].name: empty".into());
        assert_eq!(
            reply.render(),
            "new.yaml: refused, nothing changed:\nnew.yaml:3:5: target_groups[0].name: empty\n"
        );
        let drain = DrainReply {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
            draining: true,
            active_flows: 14,
            until: Some(1300),
        };
        assert_eq!(
            drain.render(1000),
            "10.0.3.12 in web: draining, 14 active flows; no new flows, unused in 300 s or when its flows end"
        );
    }

    #[test]
    fn requests_are_read_from_their_line() {
        assert_eq!(Request::parse("status"), Ok(Request::Status));
        let drain = Request::Drain(TargetRef {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
        });
        assert_eq!(
            drain.line(),
            r#"{"drain":{"group":"web","ip":"10.0.3.12"}}"#
        );
        assert_eq!(Request::parse(&drain.line()), Ok(drain));
        let apply = Request::Apply(Apply {
            source: "p.yaml".into(),
            text: "listeners: []\n".into(),
            dry_run: true,
        });
        assert_eq!(Request::parse(&apply.line()), Ok(apply));
        assert!(
            Request::parse("stats")
                .unwrap_err()
                .starts_with("unknown request \"stats\"")
        );
        assert!(
            Request::parse("{\"nope\": 1}")
                .unwrap_err()
                .starts_with("bad request")
        );
    }

    #[tokio::test]
    async fn socket_serves_requests_and_refuses_a_second_server() {
        let dir = std::env::temp_dir().join(format!("lb-api-test-{}", std::process::id()));
        let path = dir.join("lb.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = bind(&path).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AddrInUse, "{second}");
        let server = tokio::spawn(async move {
            // The first connection is the second bind's liveness probe.
            for _ in 0..4 {
                let (stream, _) = listener.accept().await.unwrap();
                let Some((request, responder)) = receive(stream).await.unwrap() else {
                    continue;
                };
                let reply = match request {
                    Request::Status => Reply::Status(Box::new(crate::status::example())),
                    Request::Drain(t) => Reply::Drain(DrainReply {
                        group: t.group,
                        ip: t.ip,
                        draining: true,
                        active_flows: 3,
                        until: Some(1300),
                    }),
                    _ => Reply::Error("not here".into()),
                };
                responder.send(&reply).await.unwrap();
            }
        });
        assert_eq!(status(&path).await.unwrap(), crate::status::example());
        let drain = Request::Drain(TargetRef {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
        });
        let Reply::Drain(d) = call(&path, &drain).await.unwrap() else {
            panic!("not a drain reply")
        };
        assert_eq!((d.active_flows, d.until), (3, Some(1300)));
        let undrain = Request::Undrain(TargetRef {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
        });
        let err = call(&path, &undrain).await.unwrap_err().to_string();
        assert!(err.ends_with("not here"), "{err}");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
