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
//! documented in the README). A request this `lb` does not know, or an
//! answer it cannot make, is answered `{"error": "..."}`.
//!
//! This module speaks the protocol only: [`bind`] and [`serve_one`] for the
//! daemon, [`status`] for the client. The report is made and shown by
//! `crate::status`.
use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::status::StatusReport;

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// A request, read from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The whole status report.
    Status,
}

impl Request {
    /// Its line on the socket.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
        }
    }

    /// The request `line` names, or the error to answer it with.
    fn parse(line: &str) -> Result<Request, String> {
        match line {
            "status" => Ok(Request::Status),
            other => Err(format!("unknown request {other:?}: try `status`")),
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

/// Reads one request line from `stream` and answers it with the report
/// `answer` makes for it.
pub async fn serve_one<F>(stream: UnixStream, answer: F) -> io::Result<()>
where
    F: FnOnce(Request) -> StatusReport,
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
        Ok(Ok(_)) => Request::parse(line.trim())
            .and_then(|request| serde_json::to_string(&answer(request)).map_err(|e| e.to_string()))
            .unwrap_or_else(|message| serde_json::json!({ "error": message }).to_string()),
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
    let line = request(path, Request::Status).await?;
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

async fn request(path: &Path, what: Request) -> Result<String, ClientError> {
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
        .write_all(format!("{}\n", what.as_str()).as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_from_their_line() {
        assert_eq!(
            Request::parse(Request::Status.as_str()),
            Ok(Request::Status)
        );
        assert_eq!(
            Request::parse("stats"),
            Err("unknown request \"stats\": try `status`".to_string())
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
                    assert_eq!(req, Request::Status);
                    StatusReport {
                        interface: "veth9".into(),
                        ..Default::default()
                    }
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
