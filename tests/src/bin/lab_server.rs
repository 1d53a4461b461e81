//! `lb-lab-server`: the service on each lab target. It answers every TCP
//! connection and every UDP datagram with its name and a newline, so a client
//! can tell which target served it.
//!
//! ```text
//! lb-lab-server --name t1 --tcp 80 --udp 10.0.3.49:53 --udp [fd00:3::49]:53
//! ```
//! - `--tcp PORT`: a dual-stack listener on `[::]:PORT` (every local address,
//!   so the VIP on `lo` too). Each connection gets the name at once, then the
//!   server half-closes and drains what the client sends (at most 2 s) before
//!   closing, so a client that sent data never sees a reset.
//! - `--udp ADDR:PORT`: a socket bound to that address. A DSR UDP server must
//!   bind to the VIP: one bound to 0.0.0.0 would answer from the target's own
//!   address and the client would drop the reply.
//!
//! It prints `ready` on stdout once every socket is bound, and exits when its
//! stdin reaches end of file, i.e. when the process that started it goes
//! away, however that happens.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::Duration,
};

struct Args {
    name: String,
    tcp: Vec<u16>,
    udp: Vec<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--tcp" => {
                let v = value()?;
                tcp.push(v.parse().map_err(|e| format!("--tcp {v}: {e}"))?);
            }
            "--udp" => {
                let v = value()?;
                udp.push(v.parse().map_err(|e| format!("--udp {v}: {e}"))?);
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        tcp,
        udp,
    })
}

fn serve_tcp(listener: TcpListener, answer: &'static [u8]) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = answer_tcp(stream, answer) {
                        eprintln!("lb-lab-server: tcp: {e}");
                    }
                });
            }
            Err(e) => eprintln!("lb-lab-server: accept: {e}"),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer)?;
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

fn serve_udp(socket: UdpSocket, answer: &'static [u8]) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(answer, peer) {
                    eprintln!("lb-lab-server: udp send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("lb-lab-server: udp recv: {e}"),
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
    let answer: &'static [u8] = format!("{}\n", args.name).into_bytes().leak();
    for port in args.tcp {
        let addr = SocketAddr::from(([0u16; 8], port));
        match TcpListener::bind(addr) {
            Ok(listener) => {
                thread::spawn(move || serve_tcp(listener, answer));
            }
            Err(e) => {
                eprintln!("lb-lab-server: bind tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for addr in args.udp {
        match UdpSocket::bind(addr) {
            Ok(socket) => {
                thread::spawn(move || serve_udp(socket, answer));
            }
            Err(e) => {
                eprintln!("lb-lab-server: bind udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready");
    let _ = io::stdout().flush();
    // Until whoever started us closes our stdin (or dies).
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    ExitCode::SUCCESS
}
