//! Announcing the VIPs to a BGP daemon (`lb run --announce TABLE`), for
//! several `lb` instances behind ECMP.
//!
//! `lb` speaks no BGP: it keeps a route for each VIP it can serve (a
//! blackhole /32 or /128, protocol `static`) in a kernel routing table of
//! its own, which no rule consults (so the routes change nothing on the
//! host), and a BGP daemon learns the table and announces what it holds
//! (BIRD: `protocol kernel { kernel table TABLE; learn; ... }`, exported to
//! the BGP sessions), as anycast health checkers do. A VIP is announced
//! while
//! - `lb withdraw` has not taken the instance out (maintenance: kept in the
//!   runtime state, so a restart stays out until `lb announce`), and
//! - one of its listeners has a group whose new flows go to healthy
//!   targets (`serving` primary, primary below ratio, or backup). A group
//!   in last resort (no target healthy) or with nobody does not announce:
//!   another site's instances may have healthy targets. Right after a
//!   start without saved verdicts ([`Hold`]), a group whose new flows go
//!   only to targets still `initial` does not announce either: an instance
//!   added to ECMP takes no traffic before it knows its targets answer.
//!
//! A stopped `lb` leaves the routes (its pinned data plane goes on
//! forwarding, so the instance stays in ECMP through a restart); `lb
//! detach` empties the table, withdrawing every VIP, before it detaches
//! the program.
//!
//! [`decide`] is pure; [`Announcer`] keeps the table as decided on a task
//! of its own (rtnetlink), and puts it back if someone changes it. The
//! task publishes which VIPs' routes the table holds as it last read and
//! wrote it ([`Announcer::in_table`]): what the metrics show, which a
//! failed write makes differ from what was decided.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    failover::Serving,
    health::HealthState,
    plan::{MapPlan, PlannedHealth},
    policy::Policy,
    target_setup::host_len,
};

/// How often the interface is read again and put back as decided.
pub const RECHECK: Duration = Duration::from_secs(5);

/// One VIP: whether it is announced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnounce {
    pub vip: IpAddr,
    pub announced: bool,
    pub reason: String,
}

/// Whether a group's new flows go to healthy targets.
fn healthy(serving: Serving) -> bool {
    matches!(
        serving,
        Serving::Primary | Serving::PrimaryBelowRatio | Serving::Backup
    )
}

/// Whether the announcements wait for first health verdicts: from the
/// start of `lb run` until no group's new flows go only to targets still
/// `initial`, or until `until` (checks that never settle, say a target
/// that answers every other probe, hold nothing for ever). A reload that
/// resets verdicts (a changed check) comes later: it holds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub until: tokio::time::Instant,
}

impl Hold {
    /// The hold for `policy`, started now: as long as its slowest check
    /// takes to give a verdict (the larger threshold's probes, an interval
    /// apart, and a timeout), and 5 s. None when no group is checked.
    pub fn start(policy: &Policy) -> Option<Hold> {
        let longest = policy
            .target_groups
            .iter()
            .filter_map(|g| g.health_check.as_ref().filter(|c| c.enabled))
            .map(|c| {
                let probes = c.healthy_threshold.max(c.unhealthy_threshold);
                u64::from(probes) * u64::from(c.interval_s) + u64::from(c.timeout_s)
            })
            .max()?;
        Some(Hold {
            until: tokio::time::Instant::now() + Duration::from_secs(longest + 5),
        })
    }
}

/// The groups whose new flows go only to targets still waiting for their
/// first verdict (`initial`): those of `plan` when `hold`, else none. One
/// walk of the targets (a plan may hold 100,000 of them).
pub fn awaiting_verdicts(plan: &MapPlan, hold: bool) -> BTreeSet<&str> {
    if !hold {
        return BTreeSet::new();
    }
    // By group: whether every target taking its new flows is `initial`.
    let mut only_initial: HashMap<&str, bool> = HashMap::new();
    for t in plan.targets.iter().filter(|t| t.excluded.is_none()) {
        let initial = t.health == PlannedHealth::Checked(HealthState::Initial);
        *only_initial.entry(t.group.as_str()).or_insert(true) &= initial;
    }
    only_initial
        .into_iter()
        .filter_map(|(group, only)| only.then_some(group))
        .collect()
}

/// What each VIP of `policy` should be, with `plan` (its groups' serving),
/// `withdrawn` (`lb withdraw`) and `hold` (waiting for first verdicts).
pub fn decide_plan(
    policy: &Policy,
    plan: &MapPlan,
    withdrawn: bool,
    hold: bool,
) -> Vec<VipAnnounce> {
    let by_name: HashMap<&str, Serving> = plan
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.serving))
        .collect();
    let serving = |group: &str| by_name.get(group).copied().unwrap_or(Serving::Nobody);
    let awaiting = awaiting_verdicts(plan, hold);
    decide(policy, serving, |g| awaiting.contains(g), withdrawn)
}

/// What each VIP of `policy` should be, with `serving` (who takes each
/// group's new flows), `awaiting` (whether a group waits for first
/// verdicts) and `withdrawn` (`lb withdraw`). Pure.
pub fn decide(
    policy: &Policy,
    serving: impl Fn(&str) -> Serving,
    awaiting: impl Fn(&str) -> bool,
    withdrawn: bool,
) -> Vec<VipAnnounce> {
    let vips: BTreeSet<IpAddr> = policy.listeners.iter().map(|l| l.vip).collect();
    vips.into_iter()
        .map(|vip| {
            let listeners: Vec<_> = policy.listeners.iter().filter(|l| l.vip == vip).collect();
            let up = listeners
                .iter()
                .find(|l| healthy(serving(&l.target_group)) && !awaiting(&l.target_group));
            let waiting: Vec<&str> = listeners
                .iter()
                .map(|l| l.target_group.as_str())
                .filter(|g| healthy(serving(g)) && awaiting(g))
                .collect();
            let (announced, reason) = match (withdrawn, up) {
                (true, _) => (false, "withdrawn (lb withdraw)".to_string()),
                (false, Some(l)) => (
                    true,
                    format!(
                        "listener {} has healthy targets ({} serving {})",
                        l.name,
                        l.target_group,
                        serving(&l.target_group).as_str()
                    ),
                ),
                (false, None) if !waiting.is_empty() => (
                    false,
                    format!(
                        "waiting for the first health verdicts ({} only initial targets, since the start)",
                        waiting.join(", ")
                    ),
                ),
                (false, None) => {
                    let groups: Vec<String> = listeners
                        .iter()
                        .map(|l| {
                            format!("{} {}", l.target_group, serving(&l.target_group).as_str())
                        })
                        .collect();
                    (
                        false,
                        format!("no listener has a healthy target ({})", groups.join(", ")),
                    )
                }
            };
            VipAnnounce {
                vip,
                announced,
                reason,
            }
        })
        .collect()
}

/// Whether `table` may be the announce table: not 0 (unspecified) nor the
/// kernel's own (253 default, 254 main, 255 local), whose routes the host
/// uses.
pub fn check_table(table: u32) -> Result<(), String> {
    match table {
        0 | 253..=255 => Err(format!(
            "--announce {table}: not a table of lb's own (0 is unspecified; 253, 254 and 255 are the kernel's default, main and local tables); use another number, e.g. 4242"
        )),
        _ => Ok(()),
    }
}

/// What the status shows: the table, whether the instance is withdrawn,
/// each VIP, and the last failure to set the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    pub withdrawn: bool,
    pub vips: Vec<VipAnnounce>,
    /// Why the table is not as decided (retried every few seconds); null
    /// when it is.
    pub error: Option<String>,
}

/// Keeps the announce table as decided, on a task of its own.
pub struct Announcer {
    /// None until the first decision: the table is left as it is until
    /// then (a restart must not withdraw what the last `lb` announced).
    wanted: watch::Sender<Option<BTreeSet<IpAddr>>>,
    error: Arc<Mutex<Option<String>>>,
    /// The VIPs whose routes the table holds, as the task last found and
    /// left it.
    in_table: watch::Receiver<BTreeSet<IpAddr>>,
    task: JoinHandle<()>,
    table: u32,
}

impl Announcer {
    /// Starts keeping the routes of table `table`: none until
    /// [`Announcer::set`] (the routes there stay until then).
    pub async fn start(table: u32) -> anyhow::Result<Announcer> {
        check_table(table).map_err(anyhow::Error::msg)?;
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        let kernel = Netlink { handle, table };
        // Readable now, or refused at start.
        let held = kernel
            .routes()
            .await?
            .into_iter()
            .filter_map(|(vip, _)| vip);
        let (in_table_tx, in_table) = watch::channel(held.collect());
        let (wanted, rx) = watch::channel(None);
        let error = Arc::new(Mutex::new(None));
        let task = tokio::spawn(keep(kernel, rx, in_table_tx, error.clone()));
        Ok(Announcer {
            wanted,
            error,
            in_table,
            task,
            table,
        })
    }

    /// Announces exactly the VIPs `decided` says (logged as they change).
    pub fn set(&self, decided: &[VipAnnounce]) {
        let want: BTreeSet<IpAddr> = decided
            .iter()
            .filter(|v| v.announced)
            .map(|v| v.vip)
            .collect();
        self.wanted.send_if_modified(|now| {
            if now.as_ref() == Some(&want) {
                return false;
            }
            for v in decided {
                if now
                    .as_ref()
                    .is_none_or(|n| v.announced != n.contains(&v.vip))
                {
                    let verb = if v.announced {
                        "announced"
                    } else {
                        "withdrawn"
                    };
                    info!(vip = %v.vip, reason = %v.reason, "VIP {verb}");
                }
            }
            *now = Some(want.clone());
            true
        });
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// Why the table is not as decided, if it is not.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("announce error lock").clone()
    }

    /// The VIPs whose routes the table holds (as last read and written),
    /// for readers on any thread.
    pub fn in_table(&self) -> watch::Receiver<BTreeSet<IpAddr>> {
        self.in_table.clone()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // The routes stay: the data plane forwards on without `lb`.
        self.task.abort();
    }
}

/// The announcer's task: from the first decision on, sets the table at
/// each decision and every [`RECHECK`]; a failure is logged once and shown
/// until it clears. Publishes what the table holds after each attempt.
async fn keep(
    kernel: Netlink,
    mut rx: watch::Receiver<Option<BTreeSet<IpAddr>>>,
    in_table: watch::Sender<BTreeSet<IpAddr>>,
    error: Arc<Mutex<Option<String>>>,
) {
    let mut recheck = tokio::time::interval(RECHECK);
    let mut held = in_table.borrow().clone();
    loop {
        let Some(want) = rx.borrow_and_update().clone() else {
            if rx.changed().await.is_err() {
                break;
            }
            continue;
        };
        let now = sync(&kernel, &want, &mut held)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        in_table.send_if_modified(|last| {
            let changed = *last != held;
            last.clone_from(&held);
            changed
        });
        {
            let mut last = error.lock().expect("announce error lock");
            if now != *last {
                match &now {
                    Some(err) => warn!(table = kernel.table, "announcing the VIPs: {err}"),
                    None => info!(table = kernel.table, "announce table set again"),
                }
                *last = now;
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = recheck.tick() => {}
        }
    }
}

/// What [`sync`] does to an announce table: read its routes, remove one,
/// add a VIP's. The kernel's is [`Netlink`]; tests give another.
trait RouteTable {
    type Route;
    /// Every route of the table, with the VIP it announces if it is a
    /// blackhole host route.
    async fn routes(&self) -> anyhow::Result<Vec<(Option<IpAddr>, Self::Route)>>;
    async fn remove(&self, route: Self::Route) -> anyhow::Result<()>;
    async fn add(&self, vip: IpAddr) -> anyhow::Result<()>;
}

/// Routing table `table` of the kernel, over rtnetlink.
struct Netlink {
    handle: Handle,
    table: u32,
}

impl RouteTable for Netlink {
    type Route = RouteMessage;

    async fn routes(&self) -> anyhow::Result<Vec<(Option<IpAddr>, RouteMessage)>> {
        let msgs = routes(&self.handle, self.table).await?;
        Ok(msgs.into_iter().map(|m| (host_route(&m), m)).collect())
    }

    async fn remove(&self, route: RouteMessage) -> anyhow::Result<()> {
        let table = self.table;
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .with_context(|| format!("cannot remove a route from table {table}"))
    }

    async fn add(&self, vip: IpAddr) -> anyhow::Result<()> {
        let table = self.table;
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(vip, host_len(vip))
            .context("a host route")?
            .table_id(table)
            .protocol(RouteProtocol::Static)
            .kind(RouteType::BlackHole)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot add the route of {vip} to table {table}"))
    }
}

/// The routes of `table`, both families.
async fn routes(handle: &Handle, table: u32) -> anyhow::Result<Vec<RouteMessage>> {
    let mut out = Vec::new();
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = handle
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("cannot read routing table {table}"))?;
        out.extend(msgs.into_iter().filter(|m| table_of(m) == table));
    }
    Ok(out)
}

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// The host route a message is for, if it is one.
fn host_route(msg: &RouteMessage) -> Option<IpAddr> {
    let ip = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    (msg.header.destination_prefix_length == host_len(ip)
        && msg.header.kind == RouteType::BlackHole)
        .then_some(ip)
}

/// Makes `table` hold exactly a blackhole host route per VIP of `want`
/// (any other route there is removed: the table is `lb`'s). `held` follows
/// what the table holds as far as the steps that worked show: what was
/// read, less what was removed, plus what was added; a failed read leaves
/// it as it was.
async fn sync<T: RouteTable>(
    table: &T,
    want: &BTreeSet<IpAddr>,
    held: &mut BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    let routes = table.routes().await?;
    *held = routes.iter().filter_map(|(vip, _)| *vip).collect();
    for (vip, route) in routes {
        match vip {
            Some(ip) if want.contains(&ip) => {}
            _ => {
                table.remove(route).await?;
                if let Some(ip) = vip {
                    held.remove(&ip);
                }
            }
        }
    }
    for &vip in want.difference(&held.clone()) {
        table.add(vip).await?;
        held.insert(vip);
    }
    Ok(())
}

/// `lb detach`: empties announce table `table` (the BGP daemon withdraws
/// its VIPs). Returns how many routes it held.
pub async fn remove(table: u32) -> anyhow::Result<usize> {
    check_table(table).map_err(anyhow::Error::msg)?;
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(conn);
    let kernel = Netlink { handle, table };
    let held = kernel.routes().await?.len();
    sync(&kernel, &BTreeSet::new(), &mut BTreeSet::new()).await?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{failover::Serving, policy};

    const POLICY: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
  - { name: web6, vip: "fd00:3::49", protocol: tcp, port: 80, target_group: web6 }
target_groups:
  - { name: web, protocol: tcp, targets: [{ ip: 10.0.3.11 }] }
  - { name: dns, protocol: udp, targets: [{ ip: 10.0.3.11 }] }
  - { name: web6, protocol: tcp, targets: [{ ip: "fd00:3::11" }] }
"#;

    fn plan(serving: &[(&str, Serving)]) -> impl Fn(&str) -> Serving + use<> {
        let serving: Vec<(String, Serving)> =
            serving.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        move |g: &str| {
            serving
                .iter()
                .find(|(n, _)| n == g)
                .map_or(Serving::Nobody, |(_, s)| *s)
        }
    }

    fn announced(v: &[VipAnnounce]) -> Vec<(String, bool)> {
        v.iter().map(|v| (v.vip.to_string(), v.announced)).collect()
    }

    #[test]
    fn a_vip_is_announced_while_a_listener_of_it_has_healthy_targets() {
        let p = policy::parse("p.yaml", POLICY).unwrap();
        let all = |s| plan(&[("web", s), ("dns", s), ("web6", s)]);
        let v4 = "10.0.3.49".to_string();
        let v6 = "fd00:3::49".to_string();
        for (serving, up) in [
            (Serving::Primary, true),
            (Serving::PrimaryBelowRatio, true),
            (Serving::Backup, true),
            (Serving::PrimaryLastResort, false),
            (Serving::BackupLastResort, false),
            (Serving::Nobody, false),
        ] {
            let d = decide(&p, all(serving), |_| false, false);
            assert_eq!(
                announced(&d),
                [(v4.clone(), up), (v6.clone(), up)],
                "{serving:?}"
            );
        }
        // One listener of the VIP serving is enough.
        let one = plan(&[
            ("web", Serving::Nobody),
            ("dns", Serving::Primary),
            ("web6", Serving::PrimaryLastResort),
        ]);
        let d = decide(&p, one, |_| false, false);
        assert_eq!(announced(&d), [(v4.clone(), true), (v6.clone(), false)]);
        assert_eq!(
            d[0].reason,
            "listener dns has healthy targets (dns serving primary)"
        );
        assert_eq!(
            d[1].reason,
            "no listener has a healthy target (web6 primary_last_resort)"
        );
        // Withdrawn: none, whatever the groups.
        let d = decide(&p, all(Serving::Primary), |_| false, true);
        assert_eq!(announced(&d), [(v4, false), (v6, false)]);
        assert_eq!(d[0].reason, "withdrawn (lb withdraw)");
    }

    #[test]
    fn right_after_the_start_a_vip_waits_for_first_verdicts() {
        let p = policy::parse("p.yaml", POLICY).unwrap();
        let all = |s| plan(&[("web", s), ("dns", s), ("web6", s)]);
        let v4 = "10.0.3.49".to_string();
        let v6 = "fd00:3::49".to_string();
        // web waits; dns, on the same VIP, has verdicts: the VIP is up.
        let d = decide(
            &p,
            all(Serving::Primary),
            |g| g == "web" || g == "web6",
            false,
        );
        assert_eq!(announced(&d), [(v4.clone(), true), (v6.clone(), false)]);
        assert_eq!(
            d[1].reason,
            "waiting for the first health verdicts (web6 only initial targets, since the start)"
        );
        // Every group waits: nothing is announced.
        let d = decide(&p, all(Serving::Primary), |_| true, false);
        assert_eq!(announced(&d), [(v4, false), (v6, false)]);
        // A group in last resort is down whatever it waits for.
        let d = decide(&p, all(Serving::PrimaryLastResort), |_| true, false);
        assert!(
            d[0].reason.starts_with("no listener has a healthy target"),
            "{}",
            d[0].reason
        );
    }

    #[test]
    fn a_group_awaits_verdicts_while_every_target_taking_its_flows_is_initial() {
        let text = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: dns, vip: 10.0.3.49, protocol: udp, port: 53, target_group: dns }
target_groups:
  - name: web
    protocol: tcp
    health_check: { interval_s: 2, timeout_s: 1, healthy_threshold: 3, unhealthy_threshold: 2 }
    targets: [{ ip: 10.0.3.11, mac: "02:00:00:00:00:11" }, { ip: 10.0.3.12, mac: "02:00:00:00:00:12" }]
  - name: dns
    protocol: udp
    targets: [{ ip: 10.0.3.11, mac: "02:00:00:00:00:11" }]
"#;
        let p = policy::parse("p.yaml", text).unwrap();
        let hold = Hold::start(&p).unwrap();
        let left = hold.until - tokio::time::Instant::now();
        assert!(
            left > Duration::from_secs(11) && left <= Duration::from_secs(12),
            "{left:?}"
        );
        let key = |ip: &str| crate::ids::TargetKey::new("web", ip.parse().unwrap());
        let plan_with = |verdicts: &[(&str, HealthState)]| {
            let observed = crate::plan::Observed {
                iface_mac: [2, 0, 0, 0, 0, 2],
                iface_nets: vec![("10.0.3.0".parse().unwrap(), 24)],
                health: verdicts.iter().map(|(ip, s)| (key(ip), *s)).collect(),
                ..Default::default()
            };
            crate::policy::compile::compile(&p, &observed).unwrap()
        };
        // No verdict yet: web waits, dns (unchecked) does not.
        let first = plan_with(&[]);
        assert_eq!(awaiting_verdicts(&first, true), ["web"].into());
        assert!(awaiting_verdicts(&first, false).is_empty());
        // One target healthy: web no longer waits.
        let later = plan_with(&[("10.0.3.11", HealthState::Healthy)]);
        assert!(awaiting_verdicts(&later, true).is_empty());
        // One unhealthy (out of the group): the other alone takes the new
        // flows and has no verdict yet.
        let later = plan_with(&[("10.0.3.11", HealthState::Unhealthy)]);
        assert_eq!(awaiting_verdicts(&later, true), ["web"].into());
        // Both unhealthy (last resort): verdicts, nothing awaited.
        let later = plan_with(&[
            ("10.0.3.11", HealthState::Unhealthy),
            ("10.0.3.12", HealthState::Unhealthy),
        ]);
        assert!(awaiting_verdicts(&later, true).is_empty());
    }

    #[test]
    fn the_table_is_not_one_of_the_kernels() {
        for ok in [1, 252, 256, 4242, u32::MAX] {
            assert_eq!(check_table(ok), Ok(()), "{ok}");
        }
        for bad in [0, 253, 254, 255] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
    }

    /// A table in memory (routes: the VIP of a blackhole host route, or
    /// None for another route) whose additions or removals fail when told.
    #[derive(Default)]
    struct Fake {
        routes: std::cell::RefCell<Vec<Option<IpAddr>>>,
        fail_add: bool,
        fail_remove: bool,
    }

    impl RouteTable for Fake {
        type Route = Option<IpAddr>;

        async fn routes(&self) -> anyhow::Result<Vec<(Option<IpAddr>, Option<IpAddr>)>> {
            Ok(self.routes.borrow().iter().map(|r| (*r, *r)).collect())
        }

        async fn remove(&self, route: Option<IpAddr>) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail_remove, "EPERM");
            let mut routes = self.routes.borrow_mut();
            let at = routes.iter().position(|r| *r == route).expect("a route");
            routes.remove(at);
            Ok(())
        }

        async fn add(&self, vip: IpAddr) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail_add, "ENOBUFS");
            self.routes.borrow_mut().push(Some(vip));
            Ok(())
        }
    }

    /// What the announcer publishes is what the table holds after its
    /// writes, not what was decided: a failed addition leaves the VIP out,
    /// a failed removal leaves it in.
    #[tokio::test]
    async fn what_is_published_is_what_the_table_holds() {
        let v4: IpAddr = "10.0.3.49".parse().unwrap();
        let v6: IpAddr = "fd00:3::49".parse().unwrap();
        let want: BTreeSet<IpAddr> = [v4].into();
        // Set as decided: the other VIP's route and a route not lb's go.
        let table = Fake {
            routes: vec![Some(v6), None].into(),
            ..Fake::default()
        };
        let mut held = BTreeSet::new();
        sync(&table, &want, &mut held).await.unwrap();
        assert_eq!(
            (held.clone(), table.routes.take()),
            (want.clone(), vec![Some(v4)])
        );
        // The addition fails: v4 is decided, not held.
        let table = Fake {
            routes: vec![Some(v6)].into(),
            fail_add: true,
            ..Fake::default()
        };
        let mut held = [v4, v6].into();
        assert!(sync(&table, &want, &mut held).await.is_err());
        assert_eq!(held, BTreeSet::new());
        // The removal fails: v6 is withdrawn as decided, still held.
        let table = Fake {
            routes: vec![Some(v6)].into(),
            fail_remove: true,
            ..Fake::default()
        };
        let mut held = BTreeSet::new();
        assert!(sync(&table, &BTreeSet::new(), &mut held).await.is_err());
        assert_eq!(held, [v6].into());
    }
}
