//! BIRD 2 in the lab, as a deployment behind ECMP runs it: on each load
//! balancer, BIRD learns `lb run --announce TABLE`'s routing table and
//! exports it over BGP; on the router, BIRD installs what it learns into
//! the kernel (with `merge paths`, one ECMP route over every load balancer
//! that announces a VIP).
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Lab, Node, topo};

/// The load balancers' AS and the router's.
const LB_AS: u32 = 65001;
const ROUTER_AS: u32 = 65000;

/// Whether `bird` can be run here (`cargo xtask setup` installs bird2).
pub fn installed() -> bool {
    std::process::Command::new("bird")
        .arg("--version")
        .output()
        .is_ok()
}

/// A BIRD daemon in a namespace of the lab, in the foreground: killed on
/// drop.
pub struct Bird {
    child: Child,
    ctl: PathBuf,
}

impl Bird {
    /// Starts `bird -f -c <lab dir>/NAME.conf` with `conf` in `node`'s
    /// namespace.
    pub fn start(lab: &Lab, node: Node, name: &str, conf: &str) -> Bird {
        let path = lab.write_file(&format!("{name}.conf"), conf);
        let ctl = lab.dir().join(format!("{name}.ctl"));
        let child = lab
            .command(node, "bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&ctl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bird");
        Bird { child, ctl }
    }

    /// BIRD on load balancer `node` (own addresses `v4`, `v6`): learns
    /// routing table `table` and exports it to the router over an IPv4 and
    /// an IPv6 BGP session.
    pub fn on_lb(lab: &Lab, node: Node, own: (IpAddr, IpAddr), table: &str) -> Bird {
        let (v4, v6) = own;
        let (r4, r6) = (topo::ROUTER4, topo::ROUTER6);
        let conf = format!(
            r#"router id {v4};
protocol device {{ scan time 1; }}
protocol kernel vips4 {{ kernel table {table}; learn; scan time 1; ipv4 {{ import all; export none; }}; }}
protocol kernel vips6 {{ kernel table {table}; learn; scan time 1; ipv6 {{ import all; export none; }}; }}
protocol bgp up4 {{ local {v4} as {LB_AS}; neighbor {r4} as {ROUTER_AS}; connect retry time 1; ipv4 {{ import none; export where proto = "vips4"; }}; }}
protocol bgp up6 {{ local {v6} as {LB_AS}; neighbor {r6} as {ROUTER_AS}; connect retry time 1; ipv6 {{ import none; export where proto = "vips6"; }}; }}
"#
        );
        Bird::start(lab, node, &format!("bird-{}", node.suffix()), &conf)
    }

    /// BIRD on the router: a BGP session per family with each of the load
    /// balancers `lbs` (their own IPv4 and IPv6 addresses); what they
    /// announce goes into the kernel, equal routes merged into one ECMP
    /// route.
    pub fn on_router(lab: &Lab, lbs: &[(IpAddr, IpAddr)]) -> Bird {
        let (r4, r6) = (topo::ROUTER4, topo::ROUTER6);
        let mut conf = format!(
            "router id {r4};\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel {{ merge paths yes; ipv4 {{ import none; export all; }}; }}\n\
             protocol kernel {{ merge paths yes; ipv6 {{ import none; export all; }}; }}\n"
        );
        for (i, (v4, v6)) in lbs.iter().enumerate() {
            conf += &format!(
                "protocol bgp lb{i}v4 {{ local {r4} as {ROUTER_AS}; neighbor {v4} as {LB_AS}; connect retry time 1; ipv4 {{ import all; export none; }}; }}\n\
                 protocol bgp lb{i}v6 {{ local {r6} as {ROUTER_AS}; neighbor {v6} as {LB_AS}; connect retry time 1; ipv6 {{ import all; export none; }}; }}\n"
            );
        }
        Bird::start(lab, Node::Router, "bird-router", &conf)
    }

    /// `birdc show protocols` and `show route`, for a failure's message.
    pub fn show(&self, lab: &Lab) -> String {
        let mut out = String::new();
        for what in [&["show", "protocols"][..], &["show", "route"]] {
            let mut args = vec!["-s", self.ctl.to_str().expect("a UTF-8 path")];
            args.extend(what);
            out += &lab
                .command(Node::Router, "birdc")
                .args(&args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        }
        out
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The router's routes to the VIPs that BIRD installed (`proto bird`), as
/// `VIP via NEXT-HOP`, one per next hop of an ECMP route.
pub fn router_routes(lab: &Lab) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (family, vip) in [
        ("-4", topo::VIP4.to_string()),
        ("-6", topo::VIP6.to_string()),
    ] {
        let text = lab
            .exec(Node::Router, &["ip", family, "-j", "route", "show", &vip])
            .unwrap_or_default();
        let routes: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for r in routes.as_array().into_iter().flatten() {
            if r["protocol"] != "bird" {
                continue;
            }
            let hops = match r["nexthops"].as_array() {
                Some(hops) => hops.iter().collect(),
                None => vec![r],
            };
            for hop in hops {
                let via = hop["gateway"].as_str().unwrap_or("?");
                out.insert(format!("{vip} via {via}"));
            }
        }
    }
    out
}

/// Waits (at most `timeout`) until the router's VIP routes are `want`;
/// panics with `router`'s view and `context` if they do not get there.
pub fn wait_router(
    lab: &Lab,
    router: &Bird,
    want: &BTreeSet<String>,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = router_routes(lab);
        if seen == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the router has {seen:?}, not {want:?}\nits BIRD:\n{}\n{}",
            router.show(lab),
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `VIP via NEXT-HOP` for the VIPs of both families via each of `lbs`.
pub fn via(lbs: &[(IpAddr, IpAddr)]) -> BTreeSet<String> {
    lbs.iter()
        .flat_map(|(v4, v6)| {
            [
                format!("{} via {v4}", topo::VIP4),
                format!("{} via {v6}", topo::VIP6),
            ]
        })
        .collect()
}
