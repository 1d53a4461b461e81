//! `lb-lab-server`: the services on each lab target. Every answer carries the
//! server's name, so a client can tell which target served it.
//!
//! ```text
//! lb-lab-server --name t1 --tcp 80 --lines 81 --http 8080 --https 8443 --bulk 85 \
//!     --record /tmp/LAB/t1-http.log --udp 10.0.3.49:53 --udp [fd00:3::49]:53
//! ```
//! - `--tcp PORT`: a dual-stack listener on `[::]:PORT` (every local address,
//!   so the VIP on `lo` too). Each connection gets the name at once, then the
//!   server half-closes and drains what the client sends (at most 2 s) before
//!   closing, so a client that sent data never sees a reset.
//! - `--lines PORT`: a dual-stack listener whose connections stay open: the
//!   server answers the name for every line received, until end of file. A
//!   long-lived connection through the load balancer shows, line after line,
//!   which target serves it now.
//! - `--http PORT`: a dual-stack HTTP/1.x server: reads the request head,
//!   records its request line, and answers the current status code (200 at
//!   start, `--http-status`) with the name as body (none for HEAD), in the
//!   request's HTTP version, then closes. In hang mode it accepts and reads
//!   but never answers, until the client goes.
//! - `--https PORT`: the same HTTP server over TLS 1.2/1.3 (rustls on
//!   ring), with a self-signed certificate for the server's name generated
//!   at start (so each run has a new one). Status code, hang mode and the
//!   request record are shared with `--http`.
//! - `--record FILE`: append one line per HTTP request to FILE:
//!   `PEER METHOD TARGET VERSION SCHEME`
//!   (`10.0.3.2 GET /healthz HTTP/1.1 https`); the scheme is `http` or
//!   `https`, by the listener that received it.
//! - `--bulk PORT`: a dual-stack listener for downloads: it reads one line
//!   holding a byte count N, answers the name, then N bytes of
//!   `lb_tests::client::bulk_fill`'s pattern, and closes. Large enough N
//!   needs full-size segments (path MTU tests).
//! - `--udp ADDR:PORT`: a socket bound to that address. A DSR UDP server must
//!   bind to the VIP: one bound to 0.0.0.0 would answer from the target's own
//!   address and the client would drop the reply. It answers every datagram
//!   with the name, except one that starts with `sum `: that one gets
//!   `NAME LEN DIGEST` (the datagram's length in bytes and
//!   `lb_tests::client::digest` of all of it, 16 hex digits), so a client
//!   can tell that a large (fragmented) datagram arrived whole. Datagrams
//!   of up to 64 KiB are read whole.
//!
//! It prints `ready` on stdout once every socket is bound. Then it reads
//! commands from stdin, one per line, and answers each with one line, `ok`
//! or `error: REASON`, once it has taken effect:
//! - `stop PORT`: close the TCP listener on PORT (tcp, lines, http, https or
//!   bulk): new connections are refused; connections already accepted go on.
//! - `start PORT`: listen on PORT again, as before.
//! - `http-status CODE`: the HTTP and HTTPS servers answer CODE from now on.
//! - `http-hang`: the HTTP and HTTPS servers accept (HTTPS: complete the TLS
//!   handshake) and read the request, but never answer.
//!
//! It exits when its stdin reaches end of file, i.e. when the process that
//! started it goes away, however that happens.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::poll::{PollFd, PollFlags, poll};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer},
};

/// What a TCP listener does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The name, then close.
    Name,
    /// The name per line received, until end of file.
    Lines,
    /// HTTP/1.x.
    Http,
    /// HTTP/1.x over TLS.
    Https,
    /// A byte count, then the name and that many bytes.
    Bulk,
}

struct Args {
    name: String,
    listeners: Vec<(u16, Kind)>,
    udp: Vec<SocketAddr>,
    record: Option<PathBuf>,
    http_status: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    let mut record = None;
    let mut http_status = 200;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let kind = match arg.as_str() {
            "--tcp" => Some(Kind::Name),
            "--lines" => Some(Kind::Lines),
            "--http" => Some(Kind::Http),
            "--https" => Some(Kind::Https),
            "--bulk" => Some(Kind::Bulk),
            _ => None,
        };
        if let Some(kind) = kind {
            let v = value()?;
            let port = v.parse().map_err(|e| format!("{arg} {v}: {e}"))?;
            listeners.push((port, kind));
            continue;
        }
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--udp" => {
                let v = value()?;
                udp.push(v.parse().map_err(|e| format!("--udp {v}: {e}"))?);
            }
            "--record" => record = Some(PathBuf::from(value()?)),
            "--http-status" => {
                let v = value()?;
                http_status = parse_status(&v)?;
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listeners,
        udp,
        record,
        http_status,
    })
}

fn parse_status(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(code) if (100..=999).contains(&code) => Ok(code),
        _ => Err(format!("status code {v:?}: expected 100-999")),
    }
}

/// How the HTTP servers answer.
#[derive(Debug, Clone, Copy)]
enum HttpMode {
    Status(u16),
    Hang,
}

/// What every connection handler may read.
struct Shared {
    answer: Vec<u8>,
    http: Mutex<HttpMode>,
    record: Option<Mutex<File>>,
    /// The HTTPS listeners' TLS configuration (None without `--https`).
    tls: Option<Arc<ServerConfig>>,
}

/// A TLS server configuration with a new self-signed certificate for
/// `name` (and `localhost`): ECDSA P-256, TLS 1.2 and 1.3, rustls on ring.
/// Also the certificate, for clients that want to verify it.
fn self_signed_tls(name: &str) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), String> {
    let key = rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".to_owned()])
        .map_err(|e| format!("self-signed certificate for {name}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .map_err(|e| format!("tls certificate: {e}"))?;
    Ok((Arc::new(config), key.cert.der().clone()))
}

/// A running TCP listener: set `stop` and join to close it.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// How long a stopped listener may take to notice (the poll timeout).
const POLL_MS: u16 = 50;

fn listen(port: u16, kind: Kind, shared: &Arc<Shared>) -> io::Result<Running> {
    // std sets SO_REUSEADDR, so a port can be bound again at once after a
    // stop; `[::]` with the default bindv6only=0 takes IPv4 too.
    let listener = TcpListener::bind(SocketAddr::from(([0u16; 8], port)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let shared = shared.clone();
    let thread = thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, POLL_MS) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("lb-lab-server: poll port {port}: {e}");
                    thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
                    continue;
                }
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        let result = match kind {
                            Kind::Name => answer_name(stream, &shared.answer),
                            Kind::Lines => answer_lines(stream, &shared.answer),
                            Kind::Http => answer_http(stream, peer, &shared, false),
                            Kind::Https => answer_http(stream, peer, &shared, true),
                            Kind::Bulk => answer_bulk(stream, &shared.answer),
                        };
                        // A peer that leaves at once (a TCP health check
                        // connects and closes, also before a TLS
                        // handshake) is no news.
                        if let Err(e) = result
                            && !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset
                                    | io::ErrorKind::NotConnected
                                    | io::ErrorKind::BrokenPipe
                                    | io::ErrorKind::UnexpectedEof
                            )
                        {
                            eprintln!("lb-lab-server: port {port} ({kind:?}), {peer}: {e}");
                        }
                    });
                }
                Err(e) => eprintln!("lb-lab-server: accept on port {port}: {e}"),
            }
        }
        // The listener closes here: new connections are refused.
    });
    Ok(Running { stop, thread })
}

fn answer_name(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer)?;
    close_gently(stream)
}

/// Half-closes and drains what the peer still sends (at most 2 s), so that
/// unread data does not turn the close into a reset.
fn close_gently(mut stream: TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn answer_lines(stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        line?;
        writer.write_all(answer)?;
    }
    Ok(())
}

/// The largest download `--bulk` serves.
const BULK_MAX: u64 = 1 << 30;

/// Reads a byte count N (one line), sends the name and N bytes of the
/// download pattern, then closes gently.
fn answer_bulk(stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(32)
        .read_line(&mut line)?;
    let n: u64 = line
        .trim()
        .parse()
        .ok()
        .filter(|&n| n <= BULK_MAX)
        .ok_or_else(|| io::Error::other(format!("bulk: a byte count, got {line:?}")))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(answer)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(buf.len() as u64) as usize;
        lb_tests::client::bulk_fill(sent, &mut buf[..len]);
        writer.write_all(&buf[..len])?;
        sent += len as u64;
    }
    close_gently(stream)
}

/// Reads up to the end of the request head (or 8 KiB, or end of file).
fn read_head(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// One HTTP exchange on a new connection, in clear or over TLS (the
/// handshake happens on the first read), then a gentle close.
fn answer_http(stream: TcpStream, peer: SocketAddr, shared: &Shared, tls: bool) -> io::Result<()> {
    // The socket's timeout holds for both handles (they share the socket).
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let io = stream.try_clone()?;
    let answered = if tls {
        let config = shared
            .tls
            .clone()
            .ok_or_else(|| io::Error::other("an https listener without a tls configuration"))?;
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, io);
        let answered = exchange(&mut tls, &stream, peer, shared, "https")?;
        if answered {
            tls.conn.send_close_notify();
            tls.flush()?;
        }
        answered
    } else {
        let mut io = io;
        exchange(&mut io, &stream, peer, shared, "http")?
    };
    if answered {
        close_gently(stream)
    } else {
        Ok(())
    }
}

/// Reads the request head from `io`, records it, and answers it (true), or
/// in hang mode holds the connection until the client goes (false). `tcp`
/// is the socket under `io`, for its timeout.
fn exchange(
    io: &mut (impl Read + Write),
    tcp: &TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    scheme: &str,
) -> io::Result<bool> {
    let head = read_head(io)?;
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    let mut words = request_line.split_whitespace();
    let (method, target, version) = (
        words.next().unwrap_or("-"),
        words.next().unwrap_or("-"),
        words.next().unwrap_or("-"),
    );
    if let Some(record) = &shared.record {
        let peer = peer.ip().to_canonical();
        let line = format!("{peer} {method} {target} {version} {scheme}\n");
        let mut file = record.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes())?;
    }
    let mode = *shared.http.lock().unwrap_or_else(|e| e.into_inner());
    match mode {
        HttpMode::Hang => {
            // Never answer; hold the connection until the client goes.
            tcp.set_read_timeout(None)?;
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            Ok(false)
        }
        HttpMode::Status(code) => {
            let version = if version == "HTTP/1.0" {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            let body: &[u8] = if method == "HEAD" {
                b""
            } else {
                &shared.answer
            };
            let head = format!(
                "{version} {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reason(code),
                shared.answer.len()
            );
            io.write_all(head.as_bytes())?;
            io.write_all(body)?;
            io.flush()?;
            Ok(true)
        }
    }
}

fn serve_udp(socket: UdpSocket, answer: Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let reply = udp_answer(&answer, &buf[..n]);
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("lb-lab-server: udp send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("lb-lab-server: udp recv: {e}"),
        }
    }
}

/// The answer to `datagram`: the name (`answer`, `NAME\n`), or for a
/// datagram that starts with `sum `, `NAME LEN DIGEST\n`.
fn udp_answer(answer: &[u8], datagram: &[u8]) -> Vec<u8> {
    if !datagram.starts_with(b"sum ") {
        return answer.to_vec();
    }
    let name = String::from_utf8_lossy(answer);
    let digest = lb_tests::client::digest(datagram);
    format!("{} {} {digest:016x}\n", name.trim_end(), datagram.len()).into_bytes()
}

/// The listeners by port, and how to open each again.
struct Server {
    shared: Arc<Shared>,
    kinds: BTreeMap<u16, Kind>,
    running: BTreeMap<u16, Running>,
}

impl Server {
    /// Listens on `port` for the first time.
    fn add(&mut self, port: u16, kind: Kind) -> Result<(), Fatal> {
        if self.kinds.insert(port, kind).is_some() {
            return Err((ExitCode::from(2), format!("port {port} given twice")));
        }
        let running = listen(port, kind, &self.shared)
            .map_err(|e| (ExitCode::FAILURE, format!("bind tcp [::]:{port}: {e}")))?;
        self.running.insert(port, running);
        Ok(())
    }

    fn command(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let port = |v: &str| -> Result<u16, String> {
            let port: u16 = v.parse().map_err(|e| format!("port {v:?}: {e}"))?;
            if self.kinds.contains_key(&port) {
                Ok(port)
            } else {
                Err(format!("no listener was configured on port {port}"))
            }
        };
        match words.as_slice() {
            ["stop", p] => {
                let port = port(p)?;
                let running = self
                    .running
                    .remove(&port)
                    .ok_or(format!("port {port} is not listening"))?;
                running.stop.store(true, Ordering::SeqCst);
                running
                    .thread
                    .join()
                    .map_err(|_| format!("listener thread of port {port} panicked"))
            }
            ["start", p] => {
                let port = port(p)?;
                if self.running.contains_key(&port) {
                    return Err(format!("port {port} is already listening"));
                }
                let kind = self.kinds[&port];
                let running = listen(port, kind, &self.shared)
                    .map_err(|e| format!("listen on port {port}: {e}"))?;
                self.running.insert(port, running);
                Ok(())
            }
            ["http-status", code] => {
                let code = parse_status(code)?;
                *self.shared.http.lock().unwrap_or_else(|e| e.into_inner()) =
                    HttpMode::Status(code);
                Ok(())
            }
            ["http-hang"] => {
                *self.shared.http.lock().unwrap_or_else(|e| e.into_inner()) = HttpMode::Hang;
                Ok(())
            }
            _ => Err(format!(
                "unknown command {line:?}: try stop PORT, start PORT, http-status CODE, http-hang"
            )),
        }
    }
}

fn main() -> ExitCode {
    let mut server = match start() {
        Ok(server) => server,
        Err((code, e)) => {
            eprintln!("lb-lab-server: {e}");
            return code;
        }
    };
    let mut stdout = io::stdout();
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    // Commands until whoever started us closes our stdin (or dies).
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = match server.command(line.trim()) {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        let _ = writeln!(stdout, "{reply}");
        let _ = stdout.flush();
    }
    ExitCode::SUCCESS
}

/// Why the server could not start: its exit code (2 for a wrong command
/// line) and the message.
type Fatal = (ExitCode, String);

/// Opens the record file and every socket the command line asks for, each
/// served on threads of its own.
fn start() -> Result<Server, Fatal> {
    let args = parse_args().map_err(|e| (ExitCode::from(2), e))?;
    let failed = |e: String| (ExitCode::FAILURE, e);
    let record = match &args.record {
        None => None,
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| failed(format!("open {}: {e}", path.display())))?,
        )),
    };
    let tls = if args.listeners.iter().any(|(_, k)| *k == Kind::Https) {
        Some(self_signed_tls(&args.name).map_err(failed)?.0)
    } else {
        None
    };
    let answer = format!("{}\n", args.name).into_bytes();
    let mut server = Server {
        shared: Arc::new(Shared {
            answer: answer.clone(),
            http: Mutex::new(HttpMode::Status(args.http_status)),
            record,
            tls,
        }),
        kinds: BTreeMap::new(),
        running: BTreeMap::new(),
    };
    for &(port, kind) in &args.listeners {
        server.add(port, kind)?;
    }
    for addr in args.udp {
        let socket = UdpSocket::bind(addr).map_err(|e| failed(format!("bind udp {addr}: {e}")))?;
        let answer = answer.clone();
        thread::spawn(move || serve_udp(socket, answer));
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_answers() {
        assert_eq!(udp_answer(b"t9\n", b"who?\n"), b"t9\n");
        let big = [b"sum ".as_slice(), &[7u8; 3996]].concat();
        let want = format!("t9 4000 {:016x}\n", lb_tests::client::digest(&big));
        assert_eq!(String::from_utf8(udp_answer(b"t9\n", &big)).unwrap(), want);
    }

    #[test]
    fn status_codes() {
        assert_eq!(parse_status("500"), Ok(500));
        assert!(parse_status("99").is_err());
        assert!(parse_status("x").is_err());
    }

    /// One request to `answer_http` on loopback, in clear or over TLS (the
    /// client verifies the server's self-signed certificate for
    /// `localhost`, so this is real TLS with the certificate the server
    /// made): the answer's first line and the recorded request.
    fn one_request(tls: bool, status: u16, request: &str) -> (String, String) {
        let (config, cert) = self_signed_tls("t9").unwrap();
        let record = std::env::temp_dir().join(format!(
            "lb-lab-server-test-{}-{tls}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&record);
        let shared = Shared {
            answer: b"t9\n".to_vec(),
            http: Mutex::new(HttpMode::Status(status)),
            record: Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&record)
                    .unwrap(),
            )),
            tls: Some(config),
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            answer_http(stream, peer, &shared, tls).unwrap();
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        if tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let conn =
                rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                    .unwrap();
            let mut tls = StreamOwned::new(conn, stream);
            tls.write_all(request.as_bytes()).unwrap();
            tls.read_to_end(&mut answer).unwrap();
        } else {
            stream.write_all(request.as_bytes()).unwrap();
            stream.read_to_end(&mut answer).unwrap();
            // Closed, so the server's drain ends at once.
            drop(stream);
        }
        server.join().unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let recorded = std::fs::read_to_string(&record).unwrap();
        std::fs::remove_file(&record).unwrap();
        (answer, recorded)
    }

    #[test]
    fn http_and_https_answer_and_record() {
        for tls in [false, true] {
            let scheme = if tls { "https" } else { "http" };
            let (answer, recorded) =
                one_request(tls, 500, "HEAD /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
            assert!(
                answer.starts_with("HTTP/1.0 500 Internal Server Error\r\n"),
                "{scheme}: {answer:?}"
            );
            // HEAD: the length of the body it would have sent, and no body.
            assert!(answer.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
            assert_eq!(
                recorded,
                format!("127.0.0.1 HEAD /healthz HTTP/1.0 {scheme}\n")
            );

            let (answer, recorded) = one_request(tls, 200, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(
                answer.starts_with("HTTP/1.1 200 OK\r\n"),
                "{scheme}: {answer:?}"
            );
            assert!(answer.ends_with("\r\n\r\nt9\n"), "{scheme}: {answer:?}");
            assert_eq!(recorded, format!("127.0.0.1 GET / HTTP/1.1 {scheme}\n"));
        }
    }
}
