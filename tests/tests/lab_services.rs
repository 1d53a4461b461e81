//! The lab's services and controls that the health-check tests build on,
//! checked on their own: the targets' HTTP servers (status codes, HEAD,
//! HTTP/1.0, the request record, hang mode), stopping and starting a port,
//! the lines port and long-lived connections, ignoring ICMP echo, and
//! polling `lb status`. Needs root; the last test also needs `lb`.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use lb_tests::{
    Lab, Node,
    client::{self, Held},
    policy::LabPolicy,
    topo::{self, HTTP_PORT, LB4, LB6, LINES_PORT, TARGETS, TCP_PORT, VIP4},
};

fn lab() -> (MutexGuard<'static, ()>, Lab) {
    let guard = lb_tests::run::serial();
    let lab = Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    (guard, lab)
}

/// Sends `request` to `dst` and returns everything the server sent until it
/// closed (or an error, e.g. a read timeout when it never answers).
fn http(dst: SocketAddr, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&dst, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn target(i: usize, v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(TARGETS[i].ip(v6), port)
}

const T: Duration = Duration::from_secs(3);

#[test]
fn http_servers_answer_status_codes_and_record_request_lines() {
    let (_serial, lab) = lab();
    lab.set_http_status(Node::Target(1), 500).unwrap();
    // As the health checker will ask: from the lb's own addresses.
    let answers = lab.run_in(Node::Lb, || {
        [
            http(
                target(0, false, HTTP_PORT),
                "GET /healthz HTTP/1.1\r\nHost: 10.0.3.11\r\n\r\n",
                T,
            ),
            http(
                target(0, true, HTTP_PORT),
                "HEAD /healthz HTTP/1.0\r\n\r\n",
                T,
            ),
            http(
                target(1, false, HTTP_PORT),
                "GET /status?deep=1 HTTP/1.1\r\nHost: x\r\n\r\n",
                T,
            ),
        ]
    });
    let [get, head, error] = answers.map(|a| a.unwrap_or_else(|e| panic!("{e}")));
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get:?}");
    assert!(get.ends_with("\r\n\r\nt1\n"), "{get:?}");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head:?}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD got a body: {head:?}");
    assert!(
        error.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{error:?}"
    );

    let t1: Vec<(IpAddr, String)> = lab
        .http_requests(Node::Target(0))
        .unwrap()
        .into_iter()
        .map(|r| (r.peer, r.line()))
        .collect();
    assert_eq!(
        t1,
        [
            (IpAddr::from(LB4), "GET /healthz HTTP/1.1".to_owned()),
            (IpAddr::from(LB6), "HEAD /healthz HTTP/1.0".to_owned()),
        ]
    );
    let t2 = lab.http_requests(Node::Target(1)).unwrap();
    assert_eq!(t2.len(), 1, "{t2:?}");
    assert_eq!(t2[0].line(), "GET /status?deep=1 HTTP/1.1");
    assert!(lab.http_requests(Node::Target(2)).unwrap().is_empty());

    // Back to 200.
    lab.set_http_status(Node::Target(1), 200).unwrap();
    let again = lab.run_in(Node::Lb, || {
        http(target(1, false, HTTP_PORT), "GET / HTTP/1.1\r\n\r\n", T)
    });
    assert!(again.unwrap().starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn http_hang_mode_accepts_but_never_answers() {
    let (_serial, lab) = lab();
    lab.set_http_hang(Node::Target(2)).unwrap();
    let wait = Duration::from_millis(1500);
    let (hung, other) = lab.run_in(Node::Lb, || {
        (
            http(
                target(2, false, HTTP_PORT),
                "GET /healthz HTTP/1.1\r\n\r\n",
                wait,
            ),
            http(
                target(0, false, HTTP_PORT),
                "GET /healthz HTTP/1.1\r\n\r\n",
                wait,
            ),
        )
    });
    let e = hung.expect_err("a hung server answered");
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    assert!(other.unwrap().starts_with("HTTP/1.1 200"));
    // It did accept and read the request.
    let seen = lab.http_requests(Node::Target(2)).unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // A status code ends hang mode.
    lab.set_http_status(Node::Target(2), 204).unwrap();
    let answer = lab.run_in(Node::Lb, || {
        http(target(2, false, HTTP_PORT), "GET / HTTP/1.1\r\n\r\n", T)
    });
    assert!(answer.unwrap().starts_with("HTTP/1.1 204 No Content\r\n"));
}

#[test]
fn ports_stop_and_start_while_accepted_connections_go_on() {
    let (_serial, lab) = lab();
    let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0);
    // A long-lived connection on t2's lines port, made before the stop.
    let mut held = lab.run_in(Node::Client, || {
        Held::open(any4, target(1, false, LINES_PORT), T).unwrap()
    });
    for _ in 0..3 {
        assert_eq!(held.ask().unwrap(), "t2");
    }
    lab.stop_port(Node::Target(1), TCP_PORT).unwrap();
    lab.stop_port(Node::Target(1), LINES_PORT).unwrap();
    let stopped = lab.run_in(Node::Client, || {
        [
            client::tcp_ask(any4, target(1, false, TCP_PORT), T),
            client::tcp_ask(any6, target(1, true, TCP_PORT), T),
            client::lines_ask(any4, target(1, false, LINES_PORT), T),
        ]
    });
    for result in &stopped {
        let e = result.as_ref().expect_err("a stopped port answered");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
    // The accepted connection and the other targets are untouched.
    assert_eq!(held.ask().unwrap(), "t2");
    let others = lab.run_in(Node::Client, || {
        client::tcp_ask(any4, target(0, false, TCP_PORT), T)
    });
    assert_eq!(others.unwrap(), "t1");
    // Commands that make no sense say so.
    let e = lab.stop_port(Node::Target(1), TCP_PORT).unwrap_err();
    assert!(e.to_string().contains("not listening"), "{e}");
    let e = lab.start_port(Node::Target(0), TCP_PORT).unwrap_err();
    assert!(e.to_string().contains("already listening"), "{e}");
    let e = lab.stop_port(Node::Target(0), 9999).unwrap_err();
    assert!(e.to_string().contains("no listener"), "{e}");

    lab.start_port(Node::Target(1), TCP_PORT).unwrap();
    lab.start_port(Node::Target(1), LINES_PORT).unwrap();
    let back = lab.run_in(Node::Client, || {
        [
            client::tcp_ask(any4, target(1, false, TCP_PORT), T),
            client::tcp_ask(any6, target(1, true, TCP_PORT), T),
            client::lines_ask(any4, target(1, false, LINES_PORT), T),
        ]
    });
    for result in back {
        assert_eq!(result.unwrap(), "t2");
    }
    assert_eq!(held.ask().unwrap(), "t2");
}

#[test]
fn a_target_can_ignore_ping() {
    let (_serial, lab) = lab();
    let ping = |ip: IpAddr| {
        lab.exec(Node::Lb, &["ping", "-c", "1", "-W", "1", &ip.to_string()])
            .is_ok()
    };
    let t2 = &TARGETS[1];
    for ip in [t2.ip(false), t2.ip(true)] {
        assert!(ping(ip), "{ip} does not answer ping at start");
    }
    lab.set_ping_ignored(Node::Target(1), true).unwrap();
    for ip in [t2.ip(false), t2.ip(true)] {
        assert!(!ping(ip), "{ip} answers ping while ignoring echo");
    }
    // Only t2's namespace changed; its TCP services still answer.
    assert!(ping(TARGETS[0].ip(false)));
    assert!(ping(TARGETS[0].ip(true)));
    let tcp = lab.run_in(Node::Lb, || {
        client::tcp_ask((LB4, 0).into(), target(1, false, TCP_PORT), T)
    });
    assert_eq!(tcp.unwrap(), "t2");
    lab.set_ping_ignored(Node::Target(1), false).unwrap();
    for ip in [t2.ip(false), t2.ip(true)] {
        assert!(ping(ip), "{ip} does not answer ping again");
    }
}

/// Through `lb` (no health checks): long-lived connections to the `lines`
/// listener stay on one target each, line after line, and the status
/// helpers read the running lb.
#[test]
fn held_connections_through_the_lb_stay_on_their_target() {
    let (_serial, lab) = lab();
    let policy = LabPolicy {
        lines: true,
        ..LabPolicy::default()
    };
    let path = lab.write_file("policy.yaml", &policy.yaml());
    let lb = lab
        .start_lb(&path, &["--xdp-mode", "native"])
        .unwrap_or_else(|e| panic!("start lb: {e}"));
    let dst = SocketAddr::new(VIP4.into(), LINES_PORT);
    // 12 connections: with shares 0.4/0.4/0.2, all on one target has
    // probability 2 * 0.4^12 + 0.2^12 < 4e-5, and the ports are fixed.
    let mut held: Vec<Held> = lab.run_in(Node::Client, || {
        (0..12)
            .map(|i| {
                let src = SocketAddr::new(topo::client4(0).into(), 30000 + i);
                Held::open(src, dst, T).unwrap_or_else(|e| panic!("{src}: {e}"))
            })
            .collect()
    });
    let mut by_conn: BTreeMap<SocketAddr, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..5 {
        for h in &mut held {
            let name = h.ask().unwrap_or_else(|e| panic!("{}: {e}", h.local()));
            by_conn.entry(h.local()).or_default().insert(name);
        }
    }
    let all: BTreeSet<&String> = by_conn.values().flatten().collect();
    eprintln!("held connections: {by_conn:?}");
    for (src, names) in &by_conn {
        assert_eq!(names.len(), 1, "{src} was served by {names:?}");
    }
    assert!(all.len() >= 2, "every connection on {all:?}");

    // The status helpers: polling until every target of `lines` has a MAC.
    let lines_ips: Vec<IpAddr> = TARGETS.iter().map(|t| t.ip(false)).collect();
    let waited = lb
        .wait_for(Duration::from_secs(10), "MACs of group lines", |s| {
            lines_ips
                .iter()
                .all(|ip| {
                    s.target("lines", *ip)
                        .and_then(|t| t.get("mac"))
                        .is_some_and(|m| m.is_string())
                })
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(waited.at <= Instant::now());
    assert!(waited.status.group("web").is_some());
    // `lb status lines --json`: only that group.
    let narrowed: serde_json::Value = serde_json::from_str(
        &lb.status_command(Some("lines"), true)
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap();
    let groups: Vec<&str> = narrowed["target_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["lines"]);
}
