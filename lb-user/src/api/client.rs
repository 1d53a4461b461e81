//! The clients' side (`lb status`, `lb stats`, `lb apply`, `lb drain`):
//! one request, one answer, the whole exchange within a timeout.
use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{Reply, Request};
use crate::{stats::StatsSample, status::StatusReport};

/// How long a client waits for its answer by default: an apply of a
/// large policy is written in a second or two.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lb at {path}: {source} (is `lb run` running? is --socket right?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("lb at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("lb at {path} did not answer within {timeout:?} (--timeout)")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("lb at {path} answered something this lb cannot read: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("lb at {path}: {message}")]
    Remote { path: PathBuf, message: String },
}

/// Sends `request` to the `lb` serving at `path` and reads its reply (an
/// error reply is a [`ClientError::Remote`]), all within `timeout`.
pub async fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    match tokio::time::timeout(timeout, exchange(path, request)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            path: path.into(),
            timeout,
        }),
    }
}

async fn exchange(path: &Path, request: &Request) -> Result<Reply, ClientError> {
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

fn unexpected(path: &Path, what: &str, other: &Reply) -> ClientError {
    ClientError::Remote {
        path: path.into(),
        message: format!("answered {other:?} to `{what}`"),
    }
}

/// Asks the `lb` serving at `path` for its status, or one group's.
pub async fn status(
    path: &Path,
    group: Option<&str>,
    timeout: Duration,
) -> Result<StatusReport, ClientError> {
    let request = Request::Status {
        group: group.map(str::to_string),
    };
    match call(path, &request, timeout).await? {
        Reply::Status(report) => Ok(*report),
        other => Err(unexpected(path, "status", &other)),
    }
}

/// Asks the `lb` serving at `path` for its counters, or one group's.
pub async fn stats(
    path: &Path,
    group: Option<&str>,
    timeout: Duration,
) -> Result<StatsSample, ClientError> {
    let request = Request::Stats {
        group: group.map(str::to_string),
    };
    match call(path, &request, timeout).await? {
        Reply::Stats(sample) => Ok(*sample),
        other => Err(unexpected(path, "stats", &other)),
    }
}
