//! `lb run --metrics`: scraped over HTTP (curl in the load balancer's
//! namespace) around known traffic in the namespace lab. Needs root, the
//! `lb` binary and curl.
//!
//! What decides: the traffic the test sent (N UDP datagrams of a known
//! size, on K flows whose target is known from who answered) against the
//! difference of two scrapes, exactly; and the series the README lists
//! for states, last resort, the flow table and the writes of the maps.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    Lab, LabRun, Node, client,
    metrics::{self, ADDR, Scraped},
    policy::LabPolicy,
    run::serial,
    topo::{self, TARGETS, UDP_PORT, VIP4},
};

/// Flows and datagrams per flow.
const FLOWS: usize = 10;
const PER_FLOW: usize = 20;
/// UDP payload: the frame is 14 + 20 + 8 + this many bytes.
const PAYLOAD: usize = 100;
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// Sends `PER_FLOW` datagrams on each of `FLOWS` sockets from the client
/// and returns the target that answered each flow (its name), with the
/// sockets: they stay open until the test has scraped, since an answer to
/// a closed port would make the client send an ICMP error to the VIP,
/// which `lb` forwards to the target (and counts).
fn send_known_traffic(s: &LabRun) -> (Vec<String>, Vec<std::net::UdpSocket>) {
    let dst = SocketAddr::new(VIP4.into(), UDP_PORT);
    s.lab.run_in(Node::Client, || {
        (0..FLOWS)
            .map(|i| {
                let src = SocketAddr::new(topo::client4(0).into(), 41_000 + i as u16);
                let socket = client::udp_socket(src, dst).expect("udp socket");
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                for _ in 0..PER_FLOW {
                    socket.send(&[b'x'; PAYLOAD]).expect("send");
                }
                let mut buf = [0u8; 256];
                let n = socket.recv(&mut buf).expect("an answer from a target");
                let name = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
                (name, socket)
            })
            .unzip()
    })
}

fn delta(before: &Scraped, after: &Scraped, name: &str, with: &[(&str, &str)]) -> f64 {
    after.sum(name, with) - before.sum(name, with)
}

#[test]
fn metrics_match_known_traffic() {
    let s = LabRun::start_args(&LabPolicy::example(), &["--metrics", ADDR]);
    let before = metrics::scrape(&s.lab, ADDR);
    let (answered, _sockets) = send_known_traffic(&s);
    // Every datagram is counted before its answer leaves the target.
    let after = metrics::scrape(&s.lab, ADDR);
    let n = (FLOWS * PER_FLOW) as f64;
    let dns = [("listener", "dns")];
    assert_eq!(delta(&before, &after, "lb_listener_packets_total", &dns), n);
    assert_eq!(
        delta(&before, &after, "lb_listener_bytes_total", &dns),
        n * FRAME as f64
    );
    assert_eq!(
        delta(&before, &after, "lb_listener_new_flows_total", &dns),
        FLOWS as f64
    );
    let group = [("group", "dns")];
    assert_eq!(delta(&before, &after, "lb_target_packets_total", &group), n);
    assert_eq!(delta(&before, &after, "lb_group_packets_total", &group), n);
    assert_eq!(
        delta(&before, &after, "lb_group_new_flows_total", &group),
        FLOWS as f64
    );
    // Per target: each flow's datagrams on the target that answered it.
    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    for name in &answered {
        let t = TARGETS
            .iter()
            .find(|t| t.name == name)
            .expect("a lab target");
        *expected.entry(t.name).or_default() += PER_FLOW as f64;
    }
    for t in &TARGETS {
        let ip = t.ip(false).to_string();
        let with = [("group", "dns"), ("target", ip.as_str())];
        let want = expected.get(t.name).copied().unwrap_or(0.0);
        assert_eq!(
            delta(&before, &after, "lb_target_packets_total", &with),
            want,
            "{}: answered {answered:?}",
            t.name
        );
        assert_eq!(
            delta(&before, &after, "lb_target_bytes_total", &with),
            want * FRAME as f64
        );
        assert_eq!(
            after.sum(
                "lb_target_state",
                &[("group", "dns"), ("target", &ip), ("state", "unchecked")]
            ),
            1.0
        );
    }
    // Nothing else went to a VIP: the forwarded packets are these.
    assert_eq!(delta(&before, &after, "lb_forwarded_packets_total", &[]), n);
    assert_eq!(
        delta(
            &before,
            &after,
            "lb_forwarded_packets_total",
            &[("reason", "new_flow")]
        ),
        FLOWS as f64
    );
    assert_eq!(delta(&before, &after, "lb_dropped_packets_total", &[]), 0.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "lb_forwarded_packets_total",
            &[("reason", "icmp_error")]
        ),
        0.0
    );
    assert_documented_series(&after);
    health_series(&s);
}

/// The series every scrape has (README, "Metrics").
fn assert_documented_series(m: &Scraped) {
    for name in [
        "lb_passed_packets_total",
        "lb_flow_table_evictions_total",
        "lb_flow_table_insert_failures_total",
        "lb_flow_reselections_total",
        "lb_flow_table_entries",
        "lb_flow_table_max_flows",
        "lb_flow_table_slots",
        "lb_flow_table_sweep_duration_seconds",
        "lb_group_active_flows",
        "lb_group_targets",
        "lb_group_serving",
        "lb_target_new_flows_total",
        "lb_target_active_flows",
        "lb_apply_duration_seconds_count",
        "lb_build_info",
    ] {
        assert!(m.has(name), "no {name} in the scrape");
    }
    for reason in ["not_a_listener", "malformed", "extension_header"] {
        assert_eq!(
            m.matching("lb_passed_packets_total", &[("reason", reason)])
                .count(),
            1
        );
    }
    assert!(m.sum("lb_applies_total", &[]) >= 1.0);
    assert_eq!(m.sum("lb_apply_failures_total", &[]), 0.0);
    assert_eq!(m.sum("lb_flow_table_max_flows", &[]), 1_048_576.0);
    assert_eq!(m.sum("lb_group_last_resort", &[("group", "dns")]), 0.0);
    assert_eq!(m.sum("lb_group_backup_active", &[("group", "dns")]), 0.0);
    assert_eq!(
        m.sum(
            "lb_group_serving",
            &[("group", "dns"), ("serving", "primary")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "lb_group_targets",
            &[("group", "dns"), ("state", "unchecked")]
        ),
        3.0
    );
}

/// `web` is checked (TCP, every 2 s): its targets become healthy, and the
/// probes' durations are counted under its name.
fn health_series(s: &LabRun) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics::scrape(&s.lab, ADDR);
        let healthy = m.sum(
            "lb_group_targets",
            &[("group", "web"), ("state", "healthy")],
        );
        let probes = m.sum(
            "lb_health_probe_duration_seconds_count",
            &[("group", "web")],
        );
        if healthy == 3.0 && probes >= 6.0 {
            let le = m.sum(
                "lb_health_probe_duration_seconds_bucket",
                &[("group", "web"), ("le", "+Inf")],
            );
            assert_eq!(le, probes);
            assert_eq!(m.sum("lb_group_last_resort", &[("group", "web")]), 0.0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "web not healthy with its probes counted: healthy {healthy}, probes {probes}\n{}",
            s.lb.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_endpoint_answers_only_metrics() {
    let s = LabRun::start_args(&LabPolicy::default(), &["--metrics", ADDR]);
    let code = |args: &[&str]| -> String {
        let out = metrics::curl(&s.lab, args).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("http://{ADDR}/nothing");
    assert_eq!(
        code(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &url]),
        "404"
    );
    let url = format!("http://{ADDR}/metrics");
    assert_eq!(
        code(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &url
        ]),
        "405"
    );
    let ctype = code(&["-s", "-o", "/dev/null", "-w", "%{content_type}", &url]);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    // A 405 names the methods answered (RFC 9110); HEAD has a scrape's
    // status and type, and no body.
    let refused = code(&["-s", "-D", "-", "-o", "/dev/null", "-X", "DELETE", &url]);
    assert!(
        refused.lines().any(|l| l.trim_end() == "allow: GET, HEAD"),
        "{refused}"
    );
    let head = code(&["-s", "-I", &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
}

/// A metrics address `lb` cannot bind stops it at start before anything
/// changes: no XDP program on the interface, nothing pinned, no API
/// socket (README: "An address `lb` cannot bind stops it at start").
#[test]
fn a_taken_metrics_address_stops_lb_before_anything_changes() {
    let _serial = serial();
    let lab = Lab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    let _taken = lab.run_in(Node::Lb, || {
        std::net::TcpListener::bind(ADDR).expect("the metrics address, taken")
    });
    let policy = lab.write_file("policy.yaml", &LabPolicy::default().yaml());
    let run = lab
        .run_lb_to_exit(&policy, &["--metrics", ADDR])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "cannot serve metrics on {ADDR}: Address already in use"
        )),
        "{run:?}"
    );
    let link = lab
        .exec(Node::Lb, &["ip", "-d", "link", "show", "eth0"])
        .unwrap();
    assert!(!link.contains("prog/xdp"), "XDP left attached:\n{link}");
    let pinned = std::path::Path::new("/sys/fs/bpf/lb")
        .join(lab.ns(Node::Lb))
        .join("eth0");
    assert!(!pinned.exists(), "{} pinned", pinned.display());
    let socket = lab.dir().join("lb.sock");
    assert!(!socket.exists(), "{} left", socket.display());
}
