//! The local API of a running `lb`: a Unix stream socket (root-only, default
//! `/run/lb/lb.sock`) speaking one request line and one JSON answer line, in
//! the manner of HAProxy's runtime socket:
//!
//! ```text
//! $ echo status | socat - UNIX-CONNECT:/run/lb/lb.sock
//! {"interface":"eth0", ...}
//! ```
//!
//! Requests: `status [GROUP]` (the [`StatusReport`], whole or of one
//! group, whose JSON is stable and documented in the README), `stats
//! [GROUP]` (the counters `lb stats` makes rates of, each row with the id
//! they are kept under: [`StatsSample`]), and,
//! as one JSON object on the line, the
//! requests that change something: `{"apply": {...}}` (a new policy, or its
//! plan with `dry_run`), `{"drain": {...}}` and `{"undrain": {...}}` (a
//! target). Only root may change something: the socket is root's (0600),
//! and a changing request from another user is refused. A request this `lb`
//! does not know, or an answer it cannot make, is answered
//! `{"error": "..."}`.
//!
//! This module speaks the protocol only: the daemon's side (`server`:
//! [`bind`], [`Gate`], [`receive`], [`Responder`], each bounded in clients,
//! bytes and time), whose requests the daemon answers in its event loop
//! (`stats` off it), and the clients' side (`client`: [`call`], within a
//! timeout) for `lb status`, `lb stats`, `lb apply` and `lb drain`.
mod client;
mod server;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use client::{ClientError, DEFAULT_TIMEOUT, call, stats, status};
pub use server::{
    Bound, Gate, MAX_CLIENTS, MAX_LINE_BYTES, MAX_REQUEST_BYTES, READ_TIMEOUT, Responder,
    WRITE_TIMEOUT, bind, receive, refuse,
};

use crate::{
    announce::AnnounceStatus, policy::diff::Change, stats::StatsSample, status::StatusReport,
};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// A request, as the daemon handles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The status report: whole, or of one target group (`status GROUP`).
    Status { group: Option<String> },
    /// The counters of the listeners and targets, whole or of one group
    /// (`stats [GROUP]`), for `lb stats`'s rates: answered off the event
    /// loop.
    Stats { group: Option<String> },
    /// A new policy (`lb apply`): its plan, and unless `dry_run`, applied.
    Apply(Apply),
    /// `lb drain GROUP TARGET`.
    Drain(TargetRef),
    /// `lb undrain GROUP TARGET`.
    Undrain(TargetRef),
    /// `lb announce` (true) and `lb withdraw` (false): the VIPs announced
    /// again, or all withdrawn (`crate::announce`).
    Announce(bool),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apply {
    /// Where the text comes from (the file name errors name).
    pub source: String,
    pub text: String,
    pub dry_run: bool,
    /// Target groups renamed (`OLD=NEW`, `crate::rename`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub group: String,
    pub ip: IpAddr,
}

impl Request {
    /// Whether it changes something (root only).
    fn changes(&self) -> bool {
        !matches!(self, Request::Status { .. } | Request::Stats { .. })
    }

    /// The request on `line`, or the error to answer it with.
    fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let (first, group, more) = (words.next(), words.next(), words.next());
        match (first, more) {
            (Some("status"), None) => {
                let group = group.map(str::to_string);
                return Ok(Request::Status { group });
            }
            (Some("stats"), None) => {
                let group = group.map(str::to_string);
                return Ok(Request::Stats { group });
            }
            _ => {}
        }
        if line.starts_with('{') {
            return serde_json::from_str(line).map_err(|e| format!("bad request: {e}"));
        }
        let shown: String = line.chars().take(40).collect();
        Err(format!(
            "unknown request {shown:?}: try `status [GROUP]`, `stats [GROUP]`, or a JSON object {{\"apply\": ...}}, {{\"drain\": ...}}, {{\"undrain\": ...}}"
        ))
    }

    /// Its line on the socket.
    fn line(&self) -> String {
        let with = |what: &str, group: &Option<String>| match group {
            Some(g) => format!("{what} {g}"),
            None => what.to_string(),
        };
        match self {
            Request::Status { group } => with("status", group),
            Request::Stats { group } => with("stats", group),
            other => serde_json::to_string(other).expect("a request serializes"),
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Stats(Box<StatsSample>),
    Apply(ApplyReply),
    Drain(DrainReply),
    Announce(AnnounceStatus),
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
    /// Advice on the plan: a group removed and one added that look like a
    /// rename (`policy::diff::rename_hints`).
    #[serde(default)]
    pub hints: Vec<String>,
    /// What is worth knowing about the valid policy though it changes
    /// nothing (`policy::notices`), as `FILE:LINE:COL: PATH: message` lines.
    #[serde(default)]
    pub notices: Vec<String>,
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
        for hint in &self.hints {
            out += &format!("hint: {hint}\n");
        }
        for notice in &self.notices {
            out += &format!("{notice}\n");
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
            Reply::Stats(sample) => serde_json::to_string(sample),
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
            Request::Status { .. } => Ok(Reply::Status(serde_json::from_value(value)?)),
            Request::Stats { .. } => Ok(Reply::Stats(serde_json::from_value(value)?)),
            _ => serde_json::from_value(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use tokio::net::UnixStream;

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
            hints: Vec::new(),
            notices: Vec::new(),
        };
        assert_eq!(
            reply.render(),
            "new.yaml: valid, 1 changes (dry run: nothing changed):\n  + target 10.0.3.14 in web (weight 256)\n"
        );
        let notice = "new.yaml:9:71: target_groups[3].sticky_session: ignored: \
                      algorithm source_ip already keeps each client on one target";
        reply.notices = vec![notice.into()];
        assert_eq!(
            reply.render(),
            format!(
                "new.yaml: valid, 1 changes (dry run: nothing changed):\n  + target 10.0.3.14 in web (weight 256)\n{notice}\n"
            )
        );
        reply.notices.clear();
        reply.hints = vec!["if `www` is `web` renamed, ...".into()];
        assert!(
            reply
                .render()
                .ends_with("(weight 256)\nhint: if `www` is `web` renamed, ...\n"),
            "{}",
            reply.render()
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
        assert_eq!(
            Request::parse("status"),
            Ok(Request::Status { group: None })
        );
        let web = Request::Stats {
            group: Some("web".into()),
        };
        assert_eq!(web.line(), "stats web");
        assert_eq!(Request::parse(&web.line()), Ok(web));
        assert!(Request::parse("status a b").is_err());
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
            renames: Vec::new(),
        });
        assert_eq!(Request::parse(&apply.line()), Ok(apply));
        let renaming = Request::Apply(Apply {
            source: "p.yaml".into(),
            text: "listeners: []\n".into(),
            dry_run: false,
            renames: vec!["web=www".into()],
        });
        assert_eq!(Request::parse(&renaming.line()), Ok(renaming));
        assert!(
            Request::parse("stat")
                .unwrap_err()
                .starts_with("unknown request \"stat\"")
        );
        assert!(
            Request::parse("{\"nope\": 1}")
                .unwrap_err()
                .starts_with("bad request")
        );
    }

    /// A scratch directory for sockets, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("lb-api-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves `n` admitted requests with canned answers (and refuses the
    /// clients over `gate`'s limit).
    fn serve(
        listener: tokio::net::UnixListener,
        gate: Gate,
        n: usize,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut served = 0;
            while served < n {
                let (stream, _) = listener.accept().await.unwrap();
                let Some(turn) = gate.admit() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let gate = gate.clone();
                served += 1;
                tokio::spawn(async move {
                    let Ok(Some((request, responder))) = receive(stream, &gate, Some(turn)).await
                    else {
                        return;
                    };
                    let reply = match request {
                        Request::Status { .. } => Reply::Status(Box::new(crate::status::example())),
                        Request::Drain(t) => Reply::Drain(DrainReply {
                            group: t.group,
                            ip: t.ip,
                            draining: true,
                            active_flows: 3,
                            until: Some(1300),
                        }),
                        _ => Reply::Error("not here".into()),
                    };
                    let _ = responder.send(reply).await;
                });
            }
        })
    }

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test]
    async fn socket_serves_requests_and_refuses_a_second_server() {
        let dir = Dir::new("serve");
        let path = dir.0.join("lb.sock");
        let bound = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = bind(&path).unwrap_err();
        assert_eq!(second.kind(), std::io::ErrorKind::AddrInUse, "{second}");
        // The first connection is the second bind's liveness probe.
        let server = serve(bound.listener, Gate::default(), 4);
        assert_eq!(
            status(&path, None, T).await.unwrap(),
            crate::status::example()
        );
        let drain = Request::Drain(TargetRef {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
        });
        let Reply::Drain(d) = call(&path, &drain, T).await.unwrap() else {
            panic!("not a drain reply")
        };
        assert_eq!((d.active_flows, d.until), (3, Some(1300)));
        let undrain = Request::Undrain(TargetRef {
            group: "web".into(),
            ip: "10.0.3.12".parse().unwrap(),
        });
        let err = call(&path, &undrain, T).await.unwrap_err().to_string();
        assert!(err.ends_with("not here"), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn anything_but_a_stale_socket_at_the_path_is_left_alone() {
        let dir = Dir::new("file");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("policy.yaml");
        std::fs::write(&path, "listeners: []\n").unwrap();
        let err = bind(&path).expect_err("bound over a file").to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("not a socket"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "listeners: []\n");
        // A stale socket (nobody listening) is replaced; the one bound is
        // removed at the end, and only while it is still there.
        let stale = dir.0.join("lb.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let bound = bind(&stale).unwrap();
        std::fs::remove_file(&stale).unwrap();
        std::fs::write(&stale, "someone else's").unwrap();
        bound.remove();
        assert_eq!(std::fs::read_to_string(&stale).unwrap(), "someone else's");
    }

    #[tokio::test]
    async fn clients_over_the_limit_are_told_busy_and_long_lines_refused() {
        let dir = Dir::new("busy");
        let path = dir.0.join("lb.sock");
        let bound = bind(&path).unwrap();
        let server = serve(bound.listener, Gate::new(2), 3);
        // Two clients that send nothing hold both turns.
        let idle1 = UnixStream::connect(&path).await.unwrap();
        let idle2 = UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let err = status(&path, None, T).await.unwrap_err().to_string();
        assert!(err.contains("busy: 16 clients"), "{err}");
        drop((idle1, idle2));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // A line too long for anything but an apply is refused, read no
        // further than its limit.
        // (Exactly the limit, which the server reads whole: a peer that
        // closes with unread data resets the connection.)
        let long = format!("status {}", "x".repeat(MAX_LINE_BYTES - 7));
        let mut stream = UnixStream::connect(&path).await.unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = stream.write_all(long.as_bytes()).await;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("longer than 65536 bytes"), "{answer}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn clients_give_up_after_their_timeout() {
        let dir = Dir::new("timeout");
        let path = dir.0.join("lb.sock");
        let bound = bind(&path).unwrap();
        // A server that takes the connection and never answers.
        let server = tokio::spawn(async move {
            let (stream, _) = bound.listener.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            drop(stream);
        });
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(300);
        let err = status(&path, None, limit).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("did not answer within 300ms"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        server.abort();
    }
}
