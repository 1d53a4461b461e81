//! The probers: I/O only, no judgement beyond "did this probe pass". Each
//! probe goes to the target's own address and monitor port (never to a VIP)
//! and is bounded by its timeout as a whole.
//!
//! - TCP: connect, then close.
//! - HTTP/HTTPS: one request on a new connection, with exactly the
//!   configured method and version (hyper's HTTP/1 connection API: no pool,
//!   no rewriting), `Host:` the target's address; the status code must be
//!   one of the expected codes. The body is not read. HTTPS does not verify
//!   the certificate, as load balancers do.
//! - PING: one ICMP echo (an unprivileged ICMP socket where
//!   `net.ipv4.ping_group_range` allows it, else a raw socket as root);
//!   only an echo reply passes, an ICMP error quoting the echo fails.
//!
//! Sockets are closed with a zero linger (RST): a prober that opens
//! thousands of connections a second would otherwise leave as many in
//! TIME_WAIT.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http_body_util::Empty;
use hyper::{
    Method, Request, Uri, Version,
    body::Bytes,
    header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::{Instant, timeout_at},
};
use tokio_rustls::TlsConnector;

use super::{
    codes::StatusCodes,
    state::{ProbeResult, fmt_duration},
};
use crate::policy::{CheckType, HealthCheck, HttpMethod, HttpVersion};

/// The `User-Agent` of HTTP probes, so targets can tell them apart.
pub const USER_AGENT_VALUE: &str = "lb-health-check";

/// What to probe with; the address and port come with each probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    Tcp,
    Http(HttpProbe),
    Ping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// HTTPS: TLS, the certificate not verified.
    pub tls: bool,
    pub method: Method,
    /// `HTTP_10` or `HTTP_11`.
    pub version: Version,
    /// Origin-form request target: path (and query).
    pub path: Uri,
    pub codes: StatusCodes,
}

impl ProbeSpec {
    /// The probe of a (validated) health check of a group of `protocol`.
    /// Fails only on what the validator rejects (path, status codes).
    pub fn from_check(
        check: &HealthCheck,
        protocol: crate::policy::GroupProtocol,
    ) -> Result<Self, String> {
        let kind = check.kind_for(protocol);
        Ok(match kind {
            CheckType::Tcp => ProbeSpec::Tcp,
            CheckType::Ping => ProbeSpec::Ping,
            CheckType::Http | CheckType::Https => ProbeSpec::Http(HttpProbe {
                tls: kind == CheckType::Https,
                method: method(check.method()),
                version: match check.version() {
                    HttpVersion::Http10 => Version::HTTP_10,
                    HttpVersion::Http11 => Version::HTTP_11,
                },
                path: check
                    .path()
                    .parse::<Uri>()
                    .map_err(|e| format!("path `{}`: {e}", check.path()))?,
                codes: StatusCodes::parse(check.status_codes())?,
            }),
        })
    }

    /// The check type it probes for.
    pub fn kind(&self) -> CheckType {
        match self {
            ProbeSpec::Tcp => CheckType::Tcp,
            ProbeSpec::Http(h) if h.tls => CheckType::Https,
            ProbeSpec::Http(_) => CheckType::Http,
            ProbeSpec::Ping => CheckType::Ping,
        }
    }
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Trace => Method::TRACE,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Connect => Method::CONNECT,
    }
}

/// Probes once with a prober of its own (convenient for one-off probes;
/// the monitor shares one [`Prober`]).
pub async fn probe(kind: &ProbeSpec, target: SocketAddr, timeout: Duration) -> ProbeResult {
    Prober::new().probe(kind, target, timeout).await
}

/// What probes share: the TLS configuration and one ICMP socket per address
/// family (opened on first use; one that fails to open is tried again at
/// the next ping, not given up for good).
pub struct Prober {
    tls: TlsConnector,
    /// In an `Arc`: dropping a clone of a surge-ping `Client` marks it
    /// destroyed for every clone.
    ping4: Mutex<Option<Arc<surge_ping::Client>>>,
    ping6: Mutex<Option<Arc<surge_ping::Client>>>,
    /// ICMP identifier and sequence of the next echo, unique per probe.
    echo: AtomicU32,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    pub fn new() -> Self {
        Prober {
            tls: TlsConnector::from(no_verify_tls()),
            ping4: Mutex::new(None),
            ping6: Mutex::new(None),
            echo: AtomicU32::new(std::process::id().wrapping_mul(0x9e37_79b9)),
        }
    }

    /// Probes `target` (address and monitor port; the port is ignored by
    /// ping) once, within `timeout`.
    pub async fn probe(
        &self,
        kind: &ProbeSpec,
        target: SocketAddr,
        timeout: Duration,
    ) -> ProbeResult {
        let start = Instant::now();
        let deadline = start + timeout;
        let outcome = match kind {
            ProbeSpec::Tcp => tcp(target, deadline).await,
            ProbeSpec::Http(http) => self.http(http, target, deadline).await,
            ProbeSpec::Ping => self.ping(target.ip(), timeout).await,
        };
        let latency = start.elapsed();
        match outcome {
            Ok(detail) => ProbeResult {
                ok: true,
                latency,
                detail,
            },
            Err(Failure::Timeout(phase)) => ProbeResult {
                ok: false,
                latency,
                detail: format!("timeout after {}{phase}", fmt_duration(timeout)),
            },
            Err(Failure::Other(detail)) => ProbeResult {
                ok: false,
                latency,
                detail,
            },
        }
    }

    async fn http(&self, http: &HttpProbe, target: SocketAddr, deadline: Instant) -> Outcome {
        let stream = connect(target, deadline).await?;
        let request = request(http, target)?;
        let response = if http.tls {
            let name = ServerName::IpAddress(target.ip().into());
            let tls = timeout_at(deadline, self.tls.connect(name, stream))
                .await
                .map_err(|_| Failure::Timeout(" (tls handshake)"))?
                .map_err(|e| Failure::Other(format!("tls handshake: {}", chain(&e))))?;
            exchange(tls, request, deadline).await?
        } else {
            exchange(stream, request, deadline).await?
        };
        let status = response.as_u16();
        if http.codes.matches(status) {
            Ok(format!("status {status}"))
        } else {
            Err(Failure::Other(format!(
                "status {status} (expected {})",
                http.codes
            )))
        }
    }

    async fn ping(&self, ip: IpAddr, timeout: Duration) -> Outcome {
        let (cell, kind) = match ip {
            IpAddr::V4(_) => (&self.ping4, surge_ping::ICMP::V4),
            IpAddr::V6(_) => (&self.ping6, surge_ping::ICMP::V6),
        };
        let client = {
            let mut held = cell.lock().unwrap_or_else(|e| e.into_inner());
            match held.as_ref() {
                Some(client) => client.clone(),
                None => {
                    let config = surge_ping::Config::builder().kind(kind).build();
                    let client = surge_ping::Client::new(&config).map_err(|e| {
                        let e = lower(&e.to_string());
                        Failure::Other(format!("cannot open an icmp socket: {e}"))
                    })?;
                    held.insert(Arc::new(client)).clone()
                }
            }
        };
        let n = self.echo.fetch_add(1, Ordering::Relaxed);
        let mut pinger = client
            .pinger(ip, surge_ping::PingIdentifier((n >> 16) as u16))
            .await;
        pinger.timeout(timeout);
        match pinger
            .ping(surge_ping::PingSequence(n as u16), b"lb-health-check!")
            .await
        {
            Ok((packet, _)) => echo_answer(&packet),
            Err(surge_ping::SurgeError::Timeout { .. }) => Err(Failure::Timeout("")),
            Err(e) => Err(Failure::Other(format!("icmp: {}", lower(&e.to_string())))),
        }
    }
}

/// What an ICMP message matched to a ping says: success only for an echo
/// reply. On a raw socket surge-ping also matches an ICMP error (from the
/// target or a router) to the echo it quotes; such an answer is a failure.
fn echo_answer(packet: &surge_ping::IcmpPacket) -> Outcome {
    let (v6, kind, code) = match packet {
        surge_ping::IcmpPacket::V4(p) => (false, p.get_icmp_type().0, p.get_icmp_code().0),
        surge_ping::IcmpPacket::V6(p) => (true, p.get_icmpv6_type().0, p.get_icmpv6_code().0),
    };
    icmp_verdict(v6, kind, code)
}

/// [`echo_answer`] of an ICMP (`v6`: ICMPv6) message of `kind` and `code`.
fn icmp_verdict(v6: bool, kind: u8, code: u8) -> Outcome {
    let what = match (v6, kind) {
        (false, 0) | (true, 129) => return Ok("echo reply".into()),
        (false, 3) | (true, 1) => "destination unreachable",
        (false, 11) | (true, 3) => "time exceeded",
        (false, 12) | (true, 4) => "parameter problem",
        (true, 2) => "packet too big",
        _ => "not an echo reply",
    };
    Err(Failure::Other(format!(
        "icmp: {what} (type {kind}, code {code})"
    )))
}

/// Why a probe failed.
enum Failure {
    /// The deadline passed; the text says in which phase (may be empty).
    Timeout(&'static str),
    Other(String),
}

/// Ok: the success detail.
type Outcome = Result<String, Failure>;

async fn tcp(target: SocketAddr, deadline: Instant) -> Outcome {
    drop(connect(target, deadline).await?);
    Ok("connected".into())
}

async fn connect(target: SocketAddr, deadline: Instant) -> Result<TcpStream, Failure> {
    let stream = timeout_at(deadline, TcpStream::connect(target))
        .await
        .map_err(|_| Failure::Timeout(" (connecting)"))?
        .map_err(|e| Failure::Other(io_detail(&e)))?;
    // RST on close: no TIME_WAIT left behind by every probe.
    let _ = stream.set_zero_linger();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn request(http: &HttpProbe, target: SocketAddr) -> Result<Request<Empty<Bytes>>, Failure> {
    let default_port = if http.tls { 443 } else { 80 };
    let host = match (target.ip(), target.port()) {
        (IpAddr::V4(ip), p) if p == default_port => ip.to_string(),
        (IpAddr::V6(ip), p) if p == default_port => format!("[{ip}]"),
        _ => target.to_string(),
    };
    let mut builder = Request::builder()
        .method(http.method.clone())
        .uri(http.path.clone())
        .version(http.version)
        .header(HOST, host)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    if matches!(http.method, Method::POST | Method::PUT | Method::PATCH) {
        // An empty body, said explicitly: some servers answer 411 (length
        // required) to a body-carrying method without it.
        builder = builder.header(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if http.version == Version::HTTP_11 {
        // One request per connection (1.0 closes by default).
        builder = builder.header(CONNECTION, HeaderValue::from_static("close"));
    }
    builder
        .body(Empty::new())
        .map_err(|e| Failure::Other(format!("cannot build the request: {e}")))
}

/// Sends `request` on `io` and returns the response's status; the body is
/// not read.
async fn exchange<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
    deadline: Instant,
) -> Result<hyper::StatusCode, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let work = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Failure::Other(format!("http: {}", chain(&e))))?;
        let send = sender.send_request(request);
        tokio::pin!(send, conn);
        let response = tokio::select! {
            biased;
            r = &mut send => r,
            // The connection ended first (closed, or an error): the request
            // has its answer or its error by now.
            c = &mut conn => match send.await {
                Ok(r) => Ok(r),
                Err(e) => Err(c.err().unwrap_or(e)),
            },
        };
        response
            .map(|r| r.status())
            .map_err(|e| Failure::Other(format!("http: {}", chain(&e))))
    };
    timeout_at(deadline, work)
        .await
        .map_err(|_| Failure::Timeout(" (waiting for the response)"))?
}

/// `connection refused`, `host unreachable`, ...: the error without its
/// `(os error N)`.
fn io_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => lower(&e.to_string()),
    }
}

/// An error and its sources: `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = lower(&e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&lower(&s_text));
        }
        source = s.source();
    }
    text
}

fn lower(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One TLS client configuration for every HTTPS probe: the server's
/// certificate is not verified (targets use self-signed or internal
/// certificates, and are addressed by IP), but the handshake signatures are,
/// so the session is a real TLS session.
fn no_verify_tls() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod icmp_tests {
    use super::*;

    /// Only an echo reply passes a ping; an error that quotes the echo
    /// (a target's REJECT, a router's unreachable) fails, saying which.
    #[test]
    fn only_an_echo_reply_passes() {
        let verdict = |v6, kind, code| match icmp_verdict(v6, kind, code) {
            Ok(s) => s,
            Err(Failure::Other(s)) => format!("fail: {s}"),
            Err(Failure::Timeout(_)) => "timeout".into(),
        };
        assert_eq!(verdict(false, 0, 0), "echo reply");
        assert_eq!(verdict(true, 129, 0), "echo reply");
        assert_eq!(
            verdict(false, 3, 3),
            "fail: icmp: destination unreachable (type 3, code 3)"
        );
        assert_eq!(
            verdict(true, 1, 4),
            "fail: icmp: destination unreachable (type 1, code 4)"
        );
        assert_eq!(
            verdict(false, 11, 0),
            "fail: icmp: time exceeded (type 11, code 0)"
        );
        // An IPv6 type 0 is not an echo reply.
        assert!(verdict(true, 0, 0).starts_with("fail"));
    }

    /// surge-ping, on a raw socket, hands over a port unreachable that
    /// quotes our echo as if it answered it; it is judged a failure.
    #[test]
    fn a_quoted_echo_in_an_unreachable_fails() {
        // IPv4 header, ICMP type 3 code 3, unused, the quoted IPv4 header
        // and the first 8 bytes of our echo request (id 0x1234, seq 0x42).
        let ip = |len: u16, src: [u8; 4], dst: [u8; 4]| {
            let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            h[2..4].copy_from_slice(&len.to_be_bytes());
            h.extend(src);
            h.extend(dst);
            h
        };
        let mut frame = ip(56, [10, 0, 3, 11], [10, 0, 3, 2]);
        frame.extend([3, 3, 0, 0, 0, 0, 0, 0]);
        frame.extend(ip(28, [10, 0, 3, 2], [10, 0, 3, 11]));
        frame.extend([8, 0, 0, 0, 0x12, 0x34, 0, 0x42]);
        let packet = surge_ping::IcmpPacket::V4(
            surge_ping::Icmpv4Packet::decode(
                &frame,
                socket2::Type::RAW,
                [10, 0, 3, 11].into(),
                [10, 0, 3, 2].into(),
            )
            .expect("decoded"),
        );
        assert_eq!(packet.get_identifier(), surge_ping::PingIdentifier(0x1234));
        assert!(echo_answer(&packet).is_err());
    }
}
