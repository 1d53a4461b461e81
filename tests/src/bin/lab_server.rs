//! `lb-lab-server`: the services on each lab target. Every answer carries the
//! server's name, so a client can tell which target served it.
//!
//! ```text
//! lb-lab-server --name t1 --tcp 80 --lines 81 --http 8080 \
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
//! - `--record FILE`: append one line per HTTP request to FILE:
//!   `PEER METHOD TARGET VERSION` (`10.0.3.2 GET /healthz HTTP/1.1`).
//! - `--udp ADDR:PORT`: a socket bound to that address. A DSR UDP server must
//!   bind to the VIP: one bound to 0.0.0.0 would answer from the target's own
//!   address and the client would drop the reply.
//!
//! It prints `ready` on stdout once every socket is bound. Then it reads
//! commands from stdin, one per line, and answers each with one line, `ok`
//! or `error: REASON`, once it has taken effect:
//! - `stop PORT`: close the TCP listener on PORT (tcp, lines or http): new
//!   connections are refused; connections already accepted go on.
//! - `start PORT`: listen on PORT again, as before.
//! - `http-status CODE`: the HTTP servers answer CODE from now on.
//! - `http-hang`: the HTTP servers accept but never answer.
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

/// What a TCP listener does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The name, then close.
    Name,
    /// The name per line received, until end of file.
    Lines,
    /// HTTP/1.x.
    Http,
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
                            Kind::Http => answer_http(stream, peer, &shared),
                        };
                        // A peer that leaves at once (a TCP health check
                        // connects and closes) is no news.
                        if let Err(e) = result
                            && !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset
                                    | io::ErrorKind::NotConnected
                                    | io::ErrorKind::BrokenPipe
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

/// Reads up to the end of the request head (or 8 KiB, or end of file).
fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
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

fn answer_http(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let head = read_head(&mut stream)?;
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
        let line = format!("{peer} {method} {target} {version}\n");
        let mut file = record.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes())?;
    }
    let mode = *shared.http.lock().unwrap_or_else(|e| e.into_inner());
    match mode {
        HttpMode::Hang => {
            // Never answer; hold the connection until the client goes.
            stream.set_read_timeout(None)?;
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            Ok(())
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
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            close_gently(stream)
        }
    }
}

fn serve_udp(socket: UdpSocket, answer: Vec<u8>) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(&answer, peer) {
                    eprintln!("lb-lab-server: udp send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("lb-lab-server: udp recv: {e}"),
        }
    }
}

/// The listeners by port, and how to open each again.
struct Server {
    shared: Arc<Shared>,
    kinds: BTreeMap<u16, Kind>,
    running: BTreeMap<u16, Running>,
}

impl Server {
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
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("lb-lab-server: {e}");
            return ExitCode::from(2);
        }
    };
    let record = match &args.record {
        None => None,
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Some(Mutex::new(file)),
            Err(e) => {
                eprintln!("lb-lab-server: open {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let answer = format!("{}\n", args.name).into_bytes();
    let mut server = Server {
        shared: Arc::new(Shared {
            answer: answer.clone(),
            http: Mutex::new(HttpMode::Status(args.http_status)),
            record,
        }),
        kinds: BTreeMap::new(),
        running: BTreeMap::new(),
    };
    for &(port, kind) in &args.listeners {
        if server.kinds.insert(port, kind).is_some() {
            eprintln!("lb-lab-server: port {port} given twice");
            return ExitCode::from(2);
        }
        match listen(port, kind, &server.shared) {
            Ok(running) => {
                server.running.insert(port, running);
            }
            Err(e) => {
                eprintln!("lb-lab-server: bind tcp [::]:{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for addr in args.udp {
        match UdpSocket::bind(addr) {
            Ok(socket) => {
                let answer = answer.clone();
                thread::spawn(move || serve_udp(socket, answer));
            }
            Err(e) => {
                eprintln!("lb-lab-server: bind udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(parse_status("500"), Ok(500));
        assert!(parse_status("99").is_err());
        assert!(parse_status("x").is_err());
    }
}
