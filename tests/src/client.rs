//! Client side of the lab: ask a lab server who it is, over TCP or UDP, from
//! a chosen source address and port. Call these inside the client namespace
//! (`Lab::run_in(Node::Client, ...)`).
use std::{
    collections::BTreeMap,
    fmt,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

/// The transport of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

fn socket(src: SocketAddr, dst: SocketAddr, proto: Proto) -> io::Result<Socket> {
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(Domain::for_address(dst), ty, Some(p))?;
    // A fixed source port may be reused by a later lab run in the same
    // namespace; the flows are distinct on the server side anyway.
    socket.set_reuse_address(true)?;
    socket.bind(&src.into())?;
    Ok(socket)
}

/// Opens a TCP connection from `src` (port 0: any) to `dst` and returns what
/// the server sends before it closes.
pub fn tcp_ask(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let socket = socket(src, dst, Proto::Tcp)?;
    socket.connect_timeout(&dst.into(), timeout)?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(timeout))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

/// A long-lived TCP connection to a lab server's lines port
/// (`lb-lab-server --lines`, [`crate::topo::LINES_PORT`]): each
/// [`Held::ask`] sends a line and reads the name of whoever answers, so a
/// test can see which target serves the connection now. Open it inside the
/// client namespace; the socket stays there, so it may be used from any
/// thread afterwards.
pub struct Held {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
}

impl Held {
    /// Connects from `src` (port 0: any) to `dst`; each answer must come
    /// within `timeout`.
    pub fn open(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Held> {
        let socket = socket(src, dst, Proto::Tcp)?;
        socket.connect_timeout(&dst.into(), timeout)?;
        let stream = TcpStream::from(socket);
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(Held {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            local,
        })
    }

    /// Its source address and port.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends one line and returns the answer: the serving target's name. A
    /// connection that the other side reset, closed or stopped answering
    /// gives an error (`ConnectionReset`, `UnexpectedEof`, `WouldBlock`...).
    pub fn ask(&mut self) -> io::Result<String> {
        self.writer.write_all(b"who?\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(line.trim_end().to_owned())
    }
}

/// One question on a new connection to a lines port: connect from `src`,
/// send a line, read the name, close.
pub fn lines_ask(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    Held::open(src, dst, timeout)?.ask()
}

/// A UDP socket bound to `src` and connected to `dst` (a flow of its own
/// for as long as it lives). Make it inside the client namespace.
pub fn udp_socket(src: SocketAddr, dst: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::from(socket(src, dst, Proto::Udp)?);
    socket.connect(dst)?;
    Ok(socket)
}

/// Sends one datagram from `src` (port 0: any) to `dst` and returns the first
/// answer; sends again (same socket, so the same flow) up to `tries` times if
/// none comes within `timeout`.
pub fn udp_ask(
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
    tries: u32,
) -> io::Result<String> {
    udp_exchange(&udp_socket(src, dst)?, b"who?\n", timeout, tries)
}

/// FNV-1a (64 bits) of `bytes`: what `lb-lab-server` answers for a `sum `
/// datagram, so a client can tell that all of it arrived.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends `payload` on `socket` (bound and connected: one flow) and returns
/// the first answer, trimmed; sends again, up to `tries` times, if none
/// comes within `timeout`. Answers still queued from earlier exchanges (a
/// late one to a datagram sent again) are dropped first.
pub fn udp_exchange(
    socket: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
    tries: u32,
) -> io::Result<String> {
    let mut buf = [0u8; 512];
    socket.set_nonblocking(true)?;
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(timeout))?;
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
    for _ in 0..tries.max(1) {
        socket.send(payload)?;
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A datagram of `len` bytes (at least 4) for a lab server's `sum` answer:
/// `sum ` and then bytes that vary with `seed` and their position.
pub fn sum_datagram(len: usize, seed: u64) -> Vec<u8> {
    let mut d = b"sum ".to_vec();
    d.extend((4..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 2) as u8));
    d
}

/// Sends the `sum ` datagram `payload` on `socket` (see [`udp_exchange`])
/// and checks the answer: the name of the server that received all of it
/// (length and digest as sent), or an error saying what came back.
pub fn udp_sum_ask(
    socket: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
    tries: u32,
) -> io::Result<String> {
    let answer = udp_exchange(socket, payload, timeout, tries)?;
    let want = format!("{} {:016x}", payload.len(), digest(payload));
    match answer.split_once(' ') {
        Some((name, rest)) if rest == want => Ok(name.to_owned()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer {answer:?} to a datagram of {want} (length, digest)"),
        )),
    }
}

/// The byte at offset `offset` of a `lb-lab-server --bulk` download, for
/// `buf.len()` bytes from there.
pub fn bulk_fill(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((offset + i as u64) % 251) as u8;
    }
}

/// Downloads `n` bytes from a lab server's bulk port (`lb-lab-server
/// --bulk`) over a new connection from `src`: the name of the server, once
/// all `n` bytes came in order with the right content and the server
/// closed. Fails if a read waits longer than `stall` or the whole takes
/// longer than `limit`.
pub fn bulk_get(
    src: SocketAddr,
    dst: SocketAddr,
    n: u64,
    stall: Duration,
    limit: Duration,
) -> io::Result<String> {
    let deadline = Instant::now() + limit;
    let socket = socket(src, dst, Proto::Tcp)?;
    socket.connect_timeout(&dst.into(), stall)?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(stall))?;
    stream.write_all(format!("{n}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut name = String::new();
    reader.read_line(&mut name)?;
    let (mut got, mut buf, mut want) = (0u64, vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        if Instant::now() >= deadline {
            let e = format!("{got} of {n} bytes within {limit:?}");
            return Err(io::Error::new(io::ErrorKind::TimedOut, e));
        }
        let k = reader.read(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("stalled: nothing for {stall:?} after {got} of {n} bytes"),
            ),
            _ => io::Error::new(e.kind(), format!("after {got} of {n} bytes: {e}")),
        })?;
        if k == 0 {
            break;
        }
        bulk_fill(got, &mut want[..k]);
        if buf[..k] != want[..k] || got + k as u64 > n {
            let e = format!("wrong bytes at {got}..{} of {n}", got + k as u64);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        got += k as u64;
    }
    if got != n {
        let e = format!("{got} of {n} bytes, then end of file");
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
    }
    Ok(name.trim_end().to_owned())
}

/// One request: from where, and what came back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub src: SocketAddr,
    pub result: Result<String, String>,
}

/// A bounded series of requests from `src_ip` to `dst`, one after the other,
/// each from a new source port: `first_port`, `first_port + 1`, ... (fixed
/// ports make the set of flows, hence a hash-based spread, the same on every
/// run), or kernel-chosen ports when `first_port` is `None`. Stops early, with
/// fewer answers, if `deadline` passes.
pub fn burst(
    proto: Proto,
    src_ip: IpAddr,
    first_port: Option<u16>,
    dst: SocketAddr,
    count: usize,
    deadline: Instant,
) -> Vec<Answer> {
    burst_by(src_ip, first_port, count, deadline, |src| match proto {
        Proto::Tcp => tcp_ask(src, dst, Duration::from_secs(2)),
        Proto::Udp => udp_ask(src, dst, Duration::from_millis(700), 3),
    })
}

/// Like [`burst`], with `ask(src)` making each request (e.g. [`lines_ask`]).
pub fn burst_by(
    src_ip: IpAddr,
    first_port: Option<u16>,
    count: usize,
    deadline: Instant,
    mut ask: impl FnMut(SocketAddr) -> io::Result<String>,
) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(count);
    for i in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let port = first_port.map_or(0, |p| p + i as u16);
        let src = SocketAddr::new(src_ip, port);
        answers.push(Answer {
            src,
            result: ask(src).map_err(|e| e.to_string()),
        });
    }
    answers
}

/// Answers counted by who gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub by_name: BTreeMap<String, usize>,
    pub failed: usize,
    /// The first few errors, for messages.
    pub errors: Vec<String>,
}

impl Tally {
    pub fn of(answers: &[Answer]) -> Tally {
        let mut tally = Tally::default();
        for answer in answers {
            match &answer.result {
                Ok(name) => *tally.by_name.entry(name.clone()).or_default() += 1,
                Err(e) => {
                    tally.failed += 1;
                    if tally.errors.len() < 5 {
                        tally.errors.push(format!("{}: {e}", answer.src));
                    }
                }
            }
        }
        tally
    }

    pub fn ok(&self) -> usize {
        self.by_name.values().sum()
    }

    pub fn count(&self, name: &str) -> usize {
        self.by_name.get(name).copied().unwrap_or(0)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .by_name
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{} (failed {}", parts.join(" "), self.failed)?;
        if !self.errors.is_empty() {
            write!(f, ", first errors: {}", self.errors.join("; "))?;
        }
        f.write_str(")")
    }
}
