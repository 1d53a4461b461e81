//! Probers and the monitor against servers the tests start on the loopback
//! (127.0.0.1 and ::1 only). ICMP needs root (raw socket) or a
//! `net.ipv4.ping_group_range` that includes the test's group.
//! Every wait is bounded by a deadline; no test sleeps as its assertion.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper::{Method, Uri, Version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    HealthMonitor, HealthSnapshot, HealthState, HttpProbe, ProbeResult, ProbeSpec, StatusCodes,
    TargetKey, checks, probe, probe_source,
};
use crate::policy::{
    CheckType, GroupProtocol, HealthCheck, HttpMethod, Listener, ListenerProtocol, Policy, Target,
    TargetGroup,
};

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

/// One prober, pings one after the other: its ICMP socket serves them all
/// (a clone of surge-ping's client, dropped after a ping, once destroyed
/// it for every later one).
#[tokio::test]
async fn one_prober_pings_one_after_the_other() {
    let prober = super::Prober::new();
    for ip in [LOCAL, LOCAL, IpAddr::V6(Ipv6Addr::LOCALHOST), LOCAL] {
        let outcome = prober
            .probe(&ProbeSpec::Ping, SocketAddr::new(ip, 0), TIMEOUT)
            .await;
        assert_ok(&outcome, "echo reply");
    }
}

#[test]
fn probe_source_of_loopback() {
    assert_eq!(probe_source(LOCAL), Some(LOCAL));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(probe_source(v6), Some(v6));
}

// ---- the monitor ----

fn check(kind: CheckType, interval_s: u32, timeout_s: u32, thresholds: (u32, u32)) -> HealthCheck {
    HealthCheck {
        enabled: true,
        kind: Some(kind),
        port: None,
        interval_s,
        timeout_s,
        healthy_threshold: thresholds.0,
        unhealthy_threshold: thresholds.1,
        method: None,
        version: None,
        path: None,
        status_codes: None,
    }
}

fn target(ip: IpAddr, monitor_port: Option<u16>) -> Target {
    Target {
        ip,
        weight: 256,
        port: None,
        monitor_port,
        mac: None,
    }
}

fn group(name: &str, hc: Option<HealthCheck>, targets: Vec<Target>) -> TargetGroup {
    TargetGroup {
        name: name.into(),
        protocol: GroupProtocol::Tcp,
        algorithm: Default::default(),
        affinity: Default::default(),
        table_size: 1021,
        health_check: hc,
        target_failover: Default::default(),
        flow_idle_timeout_s: None,
        flow_fin_timeout_s: None,
        sticky_session: None,
        deregistration_delay_s: None,
        backup: None,
        failover_ratio: None,
        targets,
    }
}

fn policy(groups: Vec<TargetGroup>) -> Policy {
    Policy {
        interface: None,
        listeners: vec![Listener {
            name: "web".into(),
            vip: "10.0.3.49".parse().unwrap(),
            protocol: ListenerProtocol::Tcp,
            port: crate::policy::Ports::one(80),
            target_group: "web".into(),
        }],
        target_groups: groups,
        flow_table: None,
    }
}

fn key(group: &str, ip: &str) -> TargetKey {
    TargetKey::new(group, ip.parse().unwrap())
}

#[test]
fn checks_resolve_ports_and_skip_what_is_not_checked() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut web_check = check(CheckType::Tcp, 30, 5, (5, 2));
    web_check.port = Some(8080);
    let mut with_port = target(ip("10.0.3.13"), None);
    with_port.port = Some(80);
    let mut disabled = check(CheckType::Tcp, 30, 5, (5, 2));
    disabled.enabled = false;
    let p = policy(vec![
        group(
            "web",
            Some(web_check),
            vec![
                target(ip("10.0.3.11"), None),
                target(ip("10.0.3.12"), Some(9090)),
            ],
        ),
        group(
            "ping",
            Some(check(CheckType::Ping, 30, 5, (5, 2))),
            vec![target(ip("10.0.3.11"), None)],
        ),
        // No listener: checked only where a port is known.
        group(
            "spare",
            Some(check(CheckType::Tcp, 30, 5, (5, 2))),
            vec![target(ip("10.0.3.11"), None), with_port],
        ),
        group("off", Some(disabled), vec![target(ip("10.0.3.11"), None)]),
        group("none", None, vec![target(ip("10.0.3.11"), None)]),
    ]);
    let c = checks(&p);
    let ports: Vec<(&str, String, Option<u16>, &str)> = c
        .iter()
        .map(|(k, c)| {
            (
                k.group.as_str(),
                k.ip.to_string(),
                c.port,
                c.spec.kind().as_str(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("ping", "10.0.3.11".into(), None, "ping"),
            ("spare", "10.0.3.13".into(), Some(80), "tcp"),
            ("web", "10.0.3.11".into(), Some(8080), "tcp"),
            ("web", "10.0.3.12".into(), Some(9090), "tcp"),
        ]
    );
    let web = &c[&key("web", "10.0.3.11")];
    assert_eq!(web.interval, Duration::from_secs(30));
    assert_eq!(web.timeout, Duration::from_secs(5));
    assert_eq!((web.healthy_threshold, web.unhealthy_threshold), (5, 2));

    // Without any port written, the listener's port.
    let p = policy(vec![group(
        "web",
        Some(check(CheckType::Tcp, 30, 5, (5, 2))),
        vec![target(ip("10.0.3.11"), None)],
    )]);
    assert_eq!(checks(&p)[&key("web", "10.0.3.11")].port, Some(80));
}

/// Waits until `pred` holds for the snapshot of `key`, or panics at the
/// deadline with what was seen.
async fn wait_for(
    rx: &mut watch::Receiver<BTreeMap<TargetKey, HealthSnapshot>>,
    key: &TargetKey,
    within: Duration,
    what: &str,
    pred: impl Fn(&HealthSnapshot) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        if rx.borrow_and_update().get(key).is_some_and(&pred) {
            return start.elapsed();
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "{key:?} not {what} within {within:?}: {:?}",
                rx.borrow().get(key)
            );
        }
    }
}

/// A target turns healthy after `healthy_threshold` probes and unhealthy
/// once its listener is gone, on schedule, while a target that accepts and
/// never answers (HTTP) neither blocks it nor counts as healthy. A reload
/// keeps unchanged targets' state and drops removed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_follows_targets_up_and_down() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let up_port = listener.local_addr().unwrap().port();
    let hang_port = silent_server().await.port();
    let (interval, timeout, threshold) = (2u32, 1u32, 2u32);
    let web = group(
        "web",
        Some(check(
            CheckType::Tcp,
            interval,
            timeout,
            (threshold, threshold),
        )),
        vec![target(LOCAL, Some(up_port))],
    );
    let mut hang_check = check(CheckType::Http, interval, timeout, (threshold, threshold));
    hang_check.method = Some(HttpMethod::Get);
    let mut hang = group(
        "hang",
        Some(hang_check),
        vec![target(LOCAL, Some(hang_port))],
    );
    hang.protocol = GroupProtocol::Http;
    let p = policy(vec![web.clone(), hang.clone()]);

    let (mut monitor, mut rx) = HealthMonitor::start(&p);
    let up = key("web", "127.0.0.1");
    let stuck = key("hang", "127.0.0.1");
    {
        let map = rx.borrow();
        assert_eq!(map.len(), 2);
        assert_eq!(map[&up].state, HealthState::Initial);
        assert_eq!(map[&up].kind, CheckType::Tcp);
        assert_eq!(map[&up].monitor_port, Some(up_port));
        assert_eq!(map[&stuck].kind, CheckType::Http);
    }
    // First probe within one interval (its offset), then threshold - 1 more.
    let margin = Duration::from_secs(2);
    let i = Duration::from_secs(interval.into());
    let t = Duration::from_secs(timeout.into());
    let to_healthy = i * threshold + margin;
    wait_for(&mut rx, &up, to_healthy, "healthy", |s| {
        s.state == HealthState::Healthy
    })
    .await;
    {
        let map = rx.borrow();
        let s = &map[&up];
        assert_eq!(s.consecutive_failures, 0);
        assert!(s.consecutive_successes >= threshold, "{s:?}");
        assert_eq!(s.last_result.as_deref(), Some("connected"));
        assert_eq!(s.last_ok, Some(true));
        assert!(s.last_latency.is_some());
    }
    // The silent HTTP target fails by timeout, on its own schedule.
    wait_for(&mut rx, &stuck, to_healthy + t, "unhealthy", |s| {
        s.state == HealthState::Unhealthy
    })
    .await;
    assert!(
        rx.borrow()[&stuck]
            .last_result
            .as_deref()
            .unwrap()
            .starts_with("timeout after 1s"),
        "{:?}",
        rx.borrow()[&stuck]
    );

    // A reload that adds a target keeps the others' state.
    let mut web2 = web.clone();
    web2.targets
        .push(target(IpAddr::V6(Ipv6Addr::LOCALHOST), Some(up_port)));
    monitor.update(&policy(vec![web2, hang.clone()]));
    {
        let map = rx.borrow();
        assert_eq!(map[&up].state, HealthState::Healthy);
        assert_eq!(map[&key("web", "::1")].state, HealthState::Initial);
    }
    // Removing a group drops its targets.
    monitor.update(&policy(vec![web.clone()]));
    assert!(!rx.borrow().contains_key(&stuck));
    assert!(!rx.borrow().contains_key(&key("web", "::1")));
    assert_eq!(rx.borrow()[&up].state, HealthState::Healthy);

    // The listener goes away: unhealthy after `threshold` failed probes.
    drop(listener);
    let took = wait_for(&mut rx, &up, i * threshold + t + margin, "unhealthy", |s| {
        s.state == HealthState::Unhealthy
    })
    .await;
    let slack = Duration::from_millis(100);
    assert!(took + slack >= i * (threshold - 1), "too soon: {took:?}");
    assert_eq!(
        rx.borrow()[&up].last_result.as_deref(),
        Some("connection refused")
    );

    // A changed check starts over.
    let mut changed = web.clone();
    changed.health_check.as_mut().unwrap().healthy_threshold = 3;
    monitor.update(&policy(vec![changed]));
    assert_eq!(rx.borrow()[&up].state, HealthState::Initial);

    rx.borrow_and_update();
    monitor.shutdown().await;
    assert!(
        rx.changed().await.is_err(),
        "the channel closes on shutdown"
    );
}

/// A renamed group's targets go on under the new name with the verdicts
/// they had; a group renamed without saying so starts from `initial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_group_keeps_its_verdicts() {
    let closed = closed_port().await.port();
    // Unhealthy after one failure; four more would be needed from `initial`.
    let web = group(
        "web",
        Some(check(CheckType::Tcp, 1, 1, (5, 1))),
        vec![target(LOCAL, Some(closed))],
    );
    let (mut monitor, mut rx) = HealthMonitor::start(&policy(vec![web.clone()]));
    let down = key("web", "127.0.0.1");
    wait_for(&mut rx, &down, Duration::from_secs(10), "unhealthy", |s| {
        s.state == HealthState::Unhealthy
    })
    .await;
    let mut www = web.clone();
    www.name = "www".into();
    let renames = crate::rename::Renames::parse(&["web=www"]).unwrap();
    monitor.update_renamed(&policy(vec![www.clone()]), &renames);
    {
        let map = rx.borrow();
        assert!(!map.contains_key(&down), "{map:?}");
        assert_eq!(map[&key("www", "127.0.0.1")].state, HealthState::Unhealthy);
    }
    // Renamed again with another check: it starts over.
    let mut changed = www.clone();
    changed.name = "w3".into();
    changed.health_check.as_mut().unwrap().unhealthy_threshold = 5;
    let renames = crate::rename::Renames::parse(&["www=w3"]).unwrap();
    monitor.update_renamed(&policy(vec![changed]), &renames);
    assert_eq!(
        rx.borrow()[&key("w3", "127.0.0.1")].state,
        HealthState::Initial
    );
    // Renamed in the policy alone: another group, checked from the start
    // (five failures from `initial`, four seconds at the least).
    let mut other = web.clone();
    other.name = "other".into();
    other.health_check.as_mut().unwrap().unhealthy_threshold = 5;
    monitor.update(&policy(vec![other]));
    assert_eq!(
        rx.borrow()[&key("other", "127.0.0.1")].state,
        HealthState::Initial
    );
    monitor.shutdown().await;
}
