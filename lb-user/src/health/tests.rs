//! Probers against servers the tests start on the loopback
//! (127.0.0.1 and ::1 only). ICMP needs root (raw socket) or a
//! `net.ipv4.ping_group_range` that includes the test's group.
//! Every wait is bounded by a deadline; no test sleeps as its assertion.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper::{Method, Uri, Version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
    time::Instant,
};

use super::{HttpProbe, ProbeResult, ProbeSpec, StatusCodes, probe};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(1);

fn http(method: Method, version: Version, path: &str, codes: &str) -> ProbeSpec {
    ProbeSpec::Http(HttpProbe {
        tls: false,
        method,
        version,
        path: path.parse::<Uri>().unwrap(),
        codes: StatusCodes::parse(codes).unwrap(),
    })
}

fn get(codes: &str) -> ProbeSpec {
    http(Method::GET, Version::HTTP_11, "/", codes)
}

fn https(codes: &str) -> ProbeSpec {
    match get(codes) {
        ProbeSpec::Http(h) => ProbeSpec::Http(HttpProbe { tls: true, ..h }),
        _ => unreachable!(),
    }
}

fn assert_ok(r: &ProbeResult, detail: &str) {
    assert!(r.ok, "expected success ({detail}), got {r:?}");
    assert_eq!(r.detail, detail, "{r:?}");
    assert!(r.latency < TIMEOUT, "{r:?}");
}

fn assert_fail(r: &ProbeResult, detail: &str) {
    assert!(!r.ok, "expected failure ({detail}), got {r:?}");
    assert!(
        r.detail.starts_with(detail),
        "expected {detail:?}, got {r:?}"
    );
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    l.local_addr().unwrap()
}

/// Accepts connections and keeps them open without a word.
async fn silent_server() -> SocketAddr {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Reads one request head (up to the blank line).
async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP server that answers every request with `answer` (raw bytes) and
/// sends each request head it read on the channel.
async fn http_server(
    answer: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        let Ok(mut s) = acceptor.accept(s).await else {
                            return;
                        };
                        let _ = tx.send(read_head(&mut s).await);
                        let _ = s.write_all(answer.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                    None => {
                        let mut s = s;
                        let _ = tx.send(read_head(&mut s).await);
                        let _ = s.write_all(answer.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn answer(status: &str) -> &'static str {
    Box::leak(
        format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").into(),
    )
}

#[tokio::test]
async fn tcp_connects() {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let r = probe(&ProbeSpec::Tcp, l.local_addr().unwrap(), TIMEOUT).await;
    assert_ok(&r, "connected");
}

#[tokio::test]
async fn tcp_refused() {
    let r = probe(&ProbeSpec::Tcp, closed_port().await, TIMEOUT).await;
    assert_fail(&r, "connection refused");
}

#[tokio::test]
async fn tcp_on_ipv6_loopback() {
    let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
    let r = probe(&ProbeSpec::Tcp, l.local_addr().unwrap(), TIMEOUT).await;
    assert_ok(&r, "connected");
}

#[tokio::test]
async fn http_status_in_and_out_of_the_expected_codes() {
    let (ok, _) = http_server(answer("204 No Content"), None).await;
    assert_ok(&probe(&get("200-399"), ok, TIMEOUT).await, "status 204");
    assert_fail(
        &probe(&get("200"), ok, TIMEOUT).await,
        "status 204 (expected 200)",
    );
    let (bad, _) = http_server(answer("500 Internal Server Error"), None).await;
    assert_fail(
        &probe(&get("200-399"), bad, TIMEOUT).await,
        "status 500 (expected 200-399)",
    );
    assert_ok(
        &probe(&get("200,500-503"), bad, TIMEOUT).await,
        "status 500",
    );
}

#[tokio::test]
async fn http_server_that_never_answers_times_out() {
    let addr = silent_server().await;
    let timeout = Duration::from_millis(500);
    let start = Instant::now();
    let r = probe(&get("200-399"), addr, timeout).await;
    assert_fail(&r, "timeout after 500ms (waiting for the response)");
    assert!(r.latency >= timeout, "{r:?}");
    assert!(
        start.elapsed() < timeout + Duration::from_millis(400),
        "{r:?}"
    );
}

#[tokio::test]
async fn http_refused_garbage_and_hang_up() {
    assert_fail(
        &probe(&get("200-399"), closed_port().await, TIMEOUT).await,
        "connection refused",
    );
    let (garbage, _) = http_server("SSH-2.0-OpenSSH_9.2\r\n\r\n", None).await;
    assert_fail(&probe(&get("200-399"), garbage, TIMEOUT).await, "http: ");
    let (hang_up, _) = http_server("", None).await;
    assert_fail(&probe(&get("200-399"), hang_up, TIMEOUT).await, "http: ");
}

/// The request line goes out exactly as configured: method, path and
/// version, with `Host:` the target's address.
#[tokio::test]
async fn http_sends_exactly_the_configured_request() {
    let cases: &[(Method, Version, &str, &str)] = &[
        (Method::HEAD, Version::HTTP_10, "/", "HEAD / HTTP/1.0"),
        (
            Method::GET,
            Version::HTTP_11,
            "/health",
            "GET /health HTTP/1.1",
        ),
        (
            Method::POST,
            Version::HTTP_11,
            "/check?deep=1",
            "POST /check?deep=1 HTTP/1.1",
        ),
        (Method::OPTIONS, Version::HTTP_10, "/", "OPTIONS / HTTP/1.0"),
        (Method::PUT, Version::HTTP_11, "/", "PUT / HTTP/1.1"),
        (Method::TRACE, Version::HTTP_11, "/", "TRACE / HTTP/1.1"),
        (Method::PATCH, Version::HTTP_11, "/", "PATCH / HTTP/1.1"),
        (Method::DELETE, Version::HTTP_11, "/x", "DELETE /x HTTP/1.1"),
        (Method::CONNECT, Version::HTTP_11, "/", "CONNECT / HTTP/1.1"),
    ];
    let (addr, mut heads) = http_server(answer("200 OK"), None).await;
    for (method, version, path, line) in cases {
        let spec = http(method.clone(), *version, path, "200");
        let r = probe(&spec, addr, TIMEOUT).await;
        assert_ok(&r, "status 200");
        let head = heads.recv().await.unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some(*line), "{head}");
        let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
        let host = format!("host: 127.0.0.1:{}", addr.port());
        assert!(headers.contains(&host), "{head}");
        assert!(
            headers.contains(&"user-agent: lb-health-check".to_string()),
            "{head}"
        );
        if *version == Version::HTTP_11 {
            assert!(headers.contains(&"connection: close".to_string()), "{head}");
        }
        let with_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        assert_eq!(
            headers.contains(&"content-length: 0".to_string()),
            with_body,
            "{head}"
        );
    }
}

#[tokio::test]
async fn https_without_certificate_verification() {
    let key = rcgen::generate_simple_self_signed(vec!["not-this-target.example".into()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (addr, mut heads) = http_server(answer("200 OK"), Some(acceptor)).await;
    let r = probe(&https("200-399"), addr, TIMEOUT).await;
    assert_ok(&r, "status 200");
    assert!(
        heads
            .recv()
            .await
            .unwrap()
            .starts_with("GET / HTTP/1.1\r\n")
    );
    // Plain HTTP against it is not a success.
    assert!(!probe(&get("200-399"), addr, TIMEOUT).await.ok);
    // Nor is HTTPS against a plain HTTP server (which waits for a request
    // head that never comes, so the handshake times out).
    let (plain, _) = http_server(answer("200 OK"), None).await;
    let r = probe(&https("200-399"), plain, TIMEOUT).await;
    assert!(!r.ok && r.detail.contains("tls handshake"), "{r:?}");
}

#[tokio::test]
async fn ping_loopback_v4_and_v6() {
    for ip in [LOCAL, IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        let r = probe(&ProbeSpec::Ping, SocketAddr::new(ip, 0), TIMEOUT).await;
        assert_ok(&r, "echo reply");
    }
}

#[tokio::test]
async fn one_prober_many_concurrent_pings() {
    let prober = Arc::new(super::Prober::new());
    let mut tasks = Vec::new();
    for n in 0..20 {
        let prober = prober.clone();
        let ip = if n % 2 == 0 {
            LOCAL
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        tasks.push(tokio::spawn(async move {
            prober
                .probe(&ProbeSpec::Ping, SocketAddr::new(ip, 0), TIMEOUT)
                .await
        }));
    }
    for t in tasks {
        assert_ok(&t.await.unwrap(), "echo reply");
    }
}
