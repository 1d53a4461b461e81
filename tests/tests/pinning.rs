//! The pinned data plane at the library's level: created, adopted with its
//! ids and flows, its program replaced in the pinned link, refused when its
//! layout is not this build's (with what to do), and removed by detach.
//! In a namespace of its own, on one end of a veth pair (generic XDP).
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN) and bpffs at /sys/fs/bpf.
use std::{path::Path, process::Command, time::Instant};

use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{Config, map_names as names};
use lb_tests::{
    harness::{observed, parse_policy},
    lab, netns,
    packets::Frame,
};
use lb_user::{
    dataplane::{
        self, AttachMode, Attached, Dataplane, DataplaneError, LoadOptions,
        pin::{self, Instance},
        table::EntryView,
    },
    ids::{Ids, TargetKey},
    plan::MapPlan,
    policy::compile::compile_next,
};

/// A network namespace with a veth pair `dummy0`-`peer0` up; deleted on drop, with anything an
/// `lb` left pinned for it.
struct Netns(String);

impl Netns {
    /// `tag`: the test's own, so that tests running at once never share one.
    fn new(tag: &str) -> Netns {
        let name = format!("lbpin{tag}{}", std::process::id());
        let _ = lab::run(Command::new("ip").args(["netns", "del", &name]));
        lab::run(Command::new("ip").args(["netns", "add", &name])).unwrap();
        let ns = Netns(name);
        for args in [
            [
                "link", "add", "dummy0", "type", "veth", "peer", "name", "peer0",
            ]
            .as_slice(),
            &["link", "set", "peer0", "up"],
            &["link", "set", "dummy0", "up"],
        ] {
            lab::run(Command::new("ip").arg("-n").arg(&ns.0).args(args)).unwrap();
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for root in [pin::BPFFS_ROOT, pin::STATE_ROOT] {
            let _ = std::fs::remove_dir_all(Path::new(root).join(&self.0));
        }
        let _ = lab::run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

const POLICY: &str = r#"
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
  - { name: api, vip: 10.0.3.49, protocol: tcp, port: 81, target_group: api }
target_groups:
  - name: web
    protocol: tcp
    algorithm: round_robin
    targets: [{ ip: 10.0.3.11 }, { ip: 10.0.3.12 }, { ip: 10.0.3.13 }]
  - name: api
    protocol: tcp
    targets: [{ ip: 10.0.3.21 }]
"#;

/// The same objects, listed the other way round.
const REORDERED: &str = r#"
listeners:
  - { name: api, vip: 10.0.3.49, protocol: tcp, port: 81, target_group: api }
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: api
    protocol: tcp
    targets: [{ ip: 10.0.3.21 }]
  - name: web
    protocol: tcp
    algorithm: round_robin
    targets: [{ ip: 10.0.3.13 }, { ip: 10.0.3.12 }, { ip: 10.0.3.11 }]
"#;

fn plan(yaml: &str, previous: &Ids) -> MapPlan {
    let policy = parse_policy(yaml);
    compile_next(
        &policy,
        &observed(&policy),
        previous,
        Instant::now(),
        &mut Default::default(),
    )
    .unwrap()
}

const OPTIONS: LoadOptions = LoadOptions {
    flow_table_size: 4096,
};

fn xdp_on_dummy(ns: &str) -> bool {
    lab::run(netns::command(ns, "ip").args(["-d", "link", "show", "dummy0"]))
        .unwrap()
        .contains("prog/xdp")
}

fn layout_error(result: Result<Dataplane, DataplaneError>) -> String {
    match result {
        Ok(_) => panic!("adopted a data plane of another layout"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_pinned_data_plane_is_adopted_with_its_ids_and_flows_or_refused() {
    let ns = Netns::new("a");
    netns::run(&ns.0, || {
        let instance = Instance::of_interface("dummy0");
        assert_eq!(instance.netns.as_deref(), Some(ns.0.as_str()));
        let dir = instance.pin_dir();

        // Made: maps pinned, program attached and its link pinned.
        let mut dp = Dataplane::open_pinned(&instance, &OPTIONS).unwrap();
        assert!(!dp.adopted());
        let first = plan(POLICY, dp.ids());
        dp.apply(&first).unwrap();
        assert_eq!(
            dp.attach("dummy0", AttachMode::Generic).unwrap(),
            Attached::New("generic")
        );
        // A new flow, remembered in the flow table.
        let syn = Frame::tcp(
            "10.0.4.1",
            40000,
            "10.0.3.49",
            80,
            lb_tests::packets::tcp_flags::SYN,
        )
        .build();
        let mut out = vec![0u8; syn.len() + 64];
        let verdict = dp
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&syn),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap()
            .return_value;
        assert_eq!(verdict, lb_tests::model::XDP_TX);
        let flows: Vec<(EntryView, u32)> = dp
            .flow_entries()
            .unwrap()
            .into_iter()
            .map(|e| (e, e.word.target_id()))
            .collect();
        assert_eq!(flows.len(), 1);
        let instance_id = dp.instance();
        drop(dp);
        assert!(xdp_on_dummy(&ns.0), "lb's end leaves the program attached");

        // Adopted: the same data plane, ids, flows; a reordered policy keeps
        // every id; the program is replaced in the pinned link.
        let mut dp = Dataplane::open_pinned(&instance, &OPTIONS).unwrap();
        assert!(dp.adopted());
        assert_eq!(dp.instance(), instance_id);
        assert_eq!(dp.ids(), &*first.ids);
        let again: Vec<(EntryView, u32)> = dp
            .flow_entries()
            .unwrap()
            .into_iter()
            .map(|e| (e, e.word.target_id()))
            .collect();
        assert_eq!(again, flows);
        let reordered = plan(REORDERED, dp.ids());
        for t in &first.targets {
            let key = TargetKey::new(t.group.clone(), t.ip);
            assert_eq!(reordered.ids.target(&key).map(|a| a.id), Some(t.id));
        }
        dp.apply(&reordered).unwrap();
        assert_eq!(
            dp.attach("dummy0", AttachMode::Generic).unwrap(),
            Attached::Replaced
        );
        drop(dp);

        // Another layout version: refused, saying what to do.
        let config_pin = dir.join(names::CONFIG);
        let mut config: Array<MapData, Config> =
            Array::try_from(Map::Array(MapData::from_pin(&config_pin).unwrap())).unwrap();
        let good = config.get(&0, 0).unwrap();
        config
            .set(
                0,
                Config {
                    layout: 999,
                    ..good
                },
                0,
            )
            .unwrap();
        let err = layout_error(Dataplane::open_pinned(&instance, &OPTIONS));
        assert!(
            err.contains("layout version 999") && err.contains("lb detach --iface dummy0"),
            "{err}"
        );
        config.set(0, good, 0).unwrap();

        // A map of another shape: refused, naming it.
        let ids_pin = dir.join(names::TARGET_IDS);
        std::fs::remove_file(&ids_pin).unwrap();
        let other = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            32,
            lb_common::MAX_TARGETS,
            0,
        );
        MapData::create(other, names::TARGET_IDS, None)
            .unwrap()
            .pin(&ids_pin)
            .unwrap();
        let err = layout_error(Dataplane::open_pinned(&instance, &OPTIONS));
        assert!(
            err.contains("map TARGET_IDS: value size 32, this build's 24"),
            "{err}"
        );

        // Detach: the program leaves the interface, every pin goes.
        let done = dataplane::detach(&instance).unwrap();
        assert!(done.link && done.pins > 0, "{done:?}");
        assert!(!xdp_on_dummy(&ns.0), "detach leaves the program attached");
        assert!(!dir.exists(), "{} is still there", dir.display());
        assert!(!instance.state_dir().exists());
    })
    .unwrap();
}

/// The verdict of the data plane's program on a TCP SYN to the VIP's `port`.
fn syn_verdict(dp: &mut Dataplane, port: u16) -> u32 {
    let syn = Frame::tcp(
        "10.0.4.1",
        40000,
        "10.0.3.49",
        port,
        lb_tests::packets::tcp_flags::SYN,
    )
    .build();
    let mut out = vec![0u8; syn.len() + 64];
    dp.program_mut()
        .test_run(TestRunOptions {
            data_in: Some(&syn),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap()
        .return_value
}

/// A data plane pinned by a build before the port-range maps
/// (`names::ADDED`) has the same layout: adopted, the maps made and pinned,
/// and a listener of a range then forwards every port of it.
#[test]
fn a_data_plane_pinned_before_the_port_range_maps_is_adopted_with_them() {
    let ns = Netns::new("r");
    netns::run(&ns.0, || {
        let instance = Instance::of_interface("dummy0");
        let dir = instance.pin_dir();
        let mut dp = Dataplane::open_pinned(&instance, &OPTIONS).unwrap();
        let first = plan(POLICY, dp.ids());
        dp.apply(&first).unwrap();
        dp.attach("dummy0", AttachMode::Generic).unwrap();
        drop(dp);
        for name in names::ADDED {
            std::fs::remove_file(dir.join(name)).unwrap();
        }

        let mut dp = Dataplane::open_pinned(&instance, &OPTIONS).unwrap();
        assert!(dp.adopted());
        for name in names::ADDED {
            assert!(dir.join(name).exists(), "{name} is not pinned again");
        }
        assert_eq!(syn_verdict(&mut dp, 85), lb_tests::model::XDP_PASS);
        let ranges = plan(
            &POLICY
                .replace(
                    "port: 80, target_group: web",
                    "port: 80-90, target_group: web",
                )
                .replace(
                    "port: 81, target_group: api",
                    "port: 8081, target_group: api",
                ),
            dp.ids(),
        );
        let web = |p: &MapPlan| p.listeners.iter().find(|l| l.name == "web").unwrap().info;
        assert_eq!(
            web(&ranges),
            web(&first),
            "the same listener, its ports grown"
        );
        dp.apply(&ranges).unwrap();
        assert_eq!(
            dp.attach("dummy0", AttachMode::Generic).unwrap(),
            Attached::Replaced
        );
        for (port, verdict) in [
            (80, lb_tests::model::XDP_TX),
            (81, lb_tests::model::XDP_TX),
            (85, lb_tests::model::XDP_TX),
            (90, lb_tests::model::XDP_TX),
            (91, lb_tests::model::XDP_PASS),
            (8081, lb_tests::model::XDP_TX),
        ] {
            assert_eq!(syn_verdict(&mut dp, port), verdict, "a SYN to port {port}");
        }
        drop(dp);
        dataplane::detach(&instance).unwrap();
    })
    .unwrap();
}
