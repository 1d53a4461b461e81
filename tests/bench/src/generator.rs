//! Live traffic from a traffic generator: the other way to measure live
//! forwarding, for machines that refuse BPF_PROG_TEST_RUN's live frames. A
//! packet socket in the lab client's namespace writes one UDP frame to the
//! VIP's port 53 again and again, as fast as one thread can (bounded in
//! count and time), through the client's veth and the lab's bridge to the
//! load balancer's `eth0`, where the program under test runs in native XDP
//! mode and transmits it to a target (counted at that target's `eth0`).
//! Only addresses of the lab's namespaces are used.
//!
//! Both programs' output takes the same path: `lb` sends the frame to the
//! target it chooses for the flow; the MAC-swap program gets the same frame
//! with that target's MAC as its source, which the swap makes the
//! destination. The bridge does not learn from the client's port
//! (`live::lab`), so that source does not mislead it.
//!
//! The generator, the veths, the bridge and the target share the
//! machine's CPUs: on a veth, the receiving side's XDP runs in the softirq
//! of the sending CPU, so the rate is that of the whole path, of which the
//! program is a part.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use lb_tests::{Lab, Node, packets::Frame};
use lb_user::dataplane::{AttachMode, Dataplane};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::{
    POLICY, Settings,
    live::{chosen_target, ifindex, settled_rx},
    load, load_macswap, macswap,
};

/// The program on the load balancer's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Lb,
    MacSwap,
}

/// One run: frames sent, the seconds the sending took, and how many
/// arrived at the target.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub sent: u64,
    pub secs: f64,
    pub received: u64,
}

impl Run {
    /// Forwarded (arrived) frames per second.
    pub fn forwarded(&self) -> f64 {
        self.received.min(self.sent) as f64 / self.secs
    }

    pub fn offered(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

pub struct Generated {
    /// Frames per run at most, and the time limit of a run.
    pub count: u64,
    pub limit: Duration,
    /// The target `lb` chose for the flow, where both programs send it.
    pub target: &'static str,
    pub lb: Vec<Run>,
    pub base: Vec<Run>,
}

/// A program attached to the lab load balancer's `eth0` (native mode)
/// until dropped.
enum Attached {
    Lb { _dataplane: Box<Dataplane> },
    MacSwap { _program: aya::Ebpf },
}

fn attach(lab: &Lab, program: Program) -> Result<Attached> {
    match program {
        Program::Lb => {
            let mut dp = load(lb_user::EBPF_LB, "lb", POLICY, 65_536)?;
            lab.run_in(Node::Lb, || dp.attach("eth0", AttachMode::Native))?;
            Ok(Attached::Lb {
                _dataplane: Box::new(dp),
            })
        }
        Program::MacSwap => {
            let mut ebpf = load_macswap()?;
            lab.run_in(Node::Lb, || {
                macswap(&mut ebpf).attach("eth0", XdpMode::Driver)
            })?;
            Ok(Attached::MacSwap { _program: ebpf })
        }
    }
}

/// The link-layer address of the interface `ifindex` for IPv4 frames.
fn link_address(ifindex: u32) -> Result<SockAddr> {
    // SAFETY: `try_init` hands a zeroed `sockaddr_storage`, large enough
    // for a `sockaddr_ll`, which is written whole, and its length.
    let ((), address) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = storage.cast::<libc::sockaddr_ll>();
            ll.write(libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as u16,
                sll_protocol: 0x0800u16.to_be(),
                sll_ifindex: ifindex as i32,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr: [0; 8],
            });
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok(address)
}

/// Writes `frame` up to `count` times on the client's `eth0`, for `limit`
/// at most: how many were sent, in how many seconds.
fn send(lab: &Lab, frame: &[u8], count: u64, limit: Duration) -> Result<(u64, f64)> {
    let to = link_address(ifindex(lab, Node::Client)?)?;
    lab.run_in(Node::Client, || {
        // Protocol 0: the socket receives nothing.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None).context("packet socket")?;
        let started = Instant::now();
        let mut sent = 0;
        while sent < count && started.elapsed() < limit {
            // A full queue refuses some: not sent.
            for _ in 0..256.min(count - sent) {
                sent += u64::from(socket.send_to(frame, &to).is_ok());
            }
        }
        Ok((sent, started.elapsed().as_secs_f64()))
    })
}

/// One run of `program`: attached, `frame` sent, what arrived at `target`
/// once its receive counter settled.
fn one_run(
    lab: &Lab,
    program: Program,
    frame: &[u8],
    target: Node,
    (count, limit): (u64, Duration),
) -> Result<Run> {
    let before = settled_rx(lab, target)?;
    let attached = attach(lab, program)?;
    let (sent, secs) = send(lab, frame, count, limit)?;
    let after = settled_rx(lab, target)?;
    drop(attached);
    Ok(Run {
        sent,
        secs,
        received: after.saturating_sub(before),
    })
}

/// The runs of both programs, interleaved, in the lab `live::lab` made.
pub fn measure(settings: &Settings, lab: &Lab) -> Result<Generated> {
    let (count, runs) = if settings.quick {
        (200_000, 2)
    } else {
        (1_000_000, 3)
    };
    let limit = Duration::from_secs(5);
    // One UDP flow to the `dns` listener, which the lab's targets do not
    // serve: each frame ends in the target's kernel.
    let frame = Frame::udp("10.0.3.100", 40001, "10.0.3.49", 53, &[0u8; 18]).build();
    let mut dp = load(lb_user::EBPF_LB, "lb", POLICY, 65_536)?;
    let (index, spec) = chosen_target(dp.program_mut(), &frame)?;
    drop(dp);
    let mut swap_frame = frame.clone();
    swap_frame[6..12].copy_from_slice(&spec.mac);
    let mut g = Generated {
        count,
        limit,
        target: spec.name,
        lb: vec![],
        base: vec![],
    };
    let node = Node::Target(index);
    for _ in 0..runs {
        g.lb.push(one_run(lab, Program::Lb, &frame, node, (count, limit))?);
        g.base.push(one_run(
            lab,
            Program::MacSwap,
            &swap_frame,
            node,
            (count, limit),
        )?);
    }
    Ok(g)
}
