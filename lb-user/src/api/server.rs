//! The daemon's side of the socket: binding it (never removing anything at
//! its path but a stale socket), and reading a request and writing its
//! answer, each bounded:
//!
//! - clients: at most [`MAX_CLIENTS`] connections are read or answered at
//!   once; one more is told `busy` at once and closed ([`Gate`]);
//! - bytes: a request line is at most [`MAX_LINE_BYTES`], except an `lb
//!   apply` (a policy, up to [`MAX_REQUEST_BYTES`]), which one client at a
//!   time may send;
//! - time: the whole request must come within [`READ_TIMEOUT`], and the
//!   answer must be taken within [`WRITE_TIMEOUT`].
use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::{Reply, Request};
use crate::policy::limits::MAX_POLICY_BYTES;

/// Connections read or answered at once.
pub const MAX_CLIENTS: usize = 16;

/// Longest request line but an apply's.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Longest apply request line: a policy at its largest, escaped as a JSON
/// string.
pub const MAX_REQUEST_BYTES: usize = 2 * MAX_POLICY_BYTES + 4096;

/// How long a client may take to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to read its whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client told `busy` may take to read it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound socket, and which file it is (to remove it, and only it, when
/// `lb` stops).
#[derive(Debug)]
pub struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl Bound {
    /// Removes the socket file, if it is still the one bound (another `lb`
    /// may have taken the path since).
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the API socket: creates the directory (0700) if needed, refuses to
/// steal the socket of another running `lb`, removes a stale socket (and
/// nothing else: any other file at the path is an error that names it),
/// and makes the socket root-only (0600).
pub fn bind(path: &Path) -> io::Result<Bound> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: lb removes only a stale socket there (is --socket right?)",
                    path.display()
                ),
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another lb is serving on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        inode: (meta.dev(), meta.ino()),
    })
}

/// Admits at most [`MAX_CLIENTS`] connections at once, and one apply
/// request being read.
#[derive(Clone)]
pub struct Gate {
    clients: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new(MAX_CLIENTS)
    }
}

impl Gate {
    pub fn new(clients: usize) -> Gate {
        Gate {
            clients: Arc::new(Semaphore::new(clients)),
            large: Arc::new(Semaphore::new(1)),
        }
    }

    /// A client's turn, or None (it is then told `busy`: [`refuse`]).
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.clients.clone().try_acquire_owned().ok()
    }
}

/// Tells a client over the limit that `lb` is busy, and closes (within
/// [`BUSY_TIMEOUT`]: a client that does not read loses the message).
pub async fn refuse(stream: UnixStream) {
    let message = format!("busy: {MAX_CLIENTS} clients are being served; try again in a moment");
    let line = format!("{}\n", Reply::Error(message).line());
    let mut stream = stream;
    let _ = tokio::time::timeout(BUSY_TIMEOUT, async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Where a request's answer goes; holds the client's turn until it is
/// written.
pub struct Responder {
    write: OwnedWriteHalf,
    _turn: Option<OwnedSemaphorePermit>,
}

impl Responder {
    /// Writes `reply` (encoded on a blocking thread: a large report does
    /// not hold up the event loop) and closes the connection, within
    /// [`WRITE_TIMEOUT`].
    pub async fn send(mut self, reply: Reply) -> io::Result<()> {
        let line = tokio::task::spawn_blocking(move || reply.line() + "\n")
            .await
            .map_err(io::Error::other)?;
        tokio::time::timeout(WRITE_TIMEOUT, async {
            self.write.write_all(line.as_bytes()).await?;
            self.write.shutdown().await
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client did not read its answer within {WRITE_TIMEOUT:?}"),
            )
        })?
    }
}

/// Reads one request from `stream` (bounded in size and time; `turn`: the
/// client's admission, held until its answer is written). A request that
/// cannot be taken (unknown, malformed, too large, too slow, or changing
/// and not from root) is answered here with an error, and None returned;
/// so is a client that connects and leaves (a liveness probe).
pub async fn receive(
    stream: UnixStream,
    gate: &Gate,
    turn: Option<OwnedSemaphorePermit>,
) -> io::Result<Option<(Request, Responder)>> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, write) = stream.into_split();
    let responder = Responder { write, _turn: turn };
    let mut reader = BufReader::new(read);
    let line = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut reader, gate)).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(message)) => {
            responder.send(Reply::Error(message)).await?;
            return Ok(None);
        }
        Err(_) => {
            let message = format!("no whole request line within {READ_TIMEOUT:?}");
            responder.send(Reply::Error(message)).await?;
            return Ok(None);
        }
    };
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
            responder.send(Reply::Error(message)).await?;
            Ok(None)
        }
    }
}

/// The request line: at most [`MAX_LINE_BYTES`], or for an apply (one
/// client at a time) [`MAX_REQUEST_BYTES`]. None if the client sent
/// nothing; an error message if the line is too long or not UTF-8.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    gate: &Gate,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let io = |e: io::Error| format!("reading the request: {e}");
    let n = (&mut *reader)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(io)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() == MAX_LINE_BYTES {
        if !line.starts_with(b"{\"apply\"") {
            return Err(format!(
                "request longer than {MAX_LINE_BYTES} bytes (only an apply may be longer)"
            ));
        }
        let Ok(_large) = gate.large.try_acquire() else {
            return Err("another client is sending a policy: try again in a moment".into());
        };
        let rest = (MAX_REQUEST_BYTES - MAX_LINE_BYTES) as u64;
        (&mut *reader)
            .take(rest)
            .read_until(b'\n', &mut line)
            .await
            .map_err(io)?;
        if line.last() != Some(&b'\n') && line.len() == MAX_REQUEST_BYTES {
            return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
        }
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| "the request is not UTF-8".to_string())
}
