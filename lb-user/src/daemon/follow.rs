//! `lb run` follows its interface by name. A NIC deleted and made again
//! with the same name (a driver reset, a VF re-created, a veth moved) is a
//! new interface with a new index: its old XDP link went with it. Every
//! [`FOLLOW_INTERVAL`] the daemon looks the name up; when the index changed
//! it starts the neighbour watch on the new interface, recompiles (the MAC
//! may be new) and attaches the pinned data plane to it, with every map and
//! flow it holds. A new MAC or address set on the same interface is
//! followed too. A failed step is logged and tried again at the next look.
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Daemon, Services, load};
use crate::{
    dataplane::Attached,
    neighbors::{self, InterfaceInfo, NeighborWatch, NetError},
};

/// How often the interface is looked up by name.
pub(super) const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// What a look at the interface calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// As it was.
    Nothing,
    /// Gone (not yet said).
    Gone,
    /// Another interface has the name: watch it and attach to it.
    New,
    /// Same interface, another MAC or other addresses.
    Changed,
    /// Same interface, but the program is not attached to it.
    Attach,
}

/// The pure decision: `now` (None: no interface of that name) against the
/// interface followed, where the program is attached and whether the loss
/// was said.
pub(super) fn decide(
    now: Option<&InterfaceInfo>,
    followed: &InterfaceInfo,
    attached_to: Option<u32>,
    gone_said: bool,
) -> Follow {
    match now {
        None if gone_said => Follow::Nothing,
        None => Follow::Gone,
        Some(now) if now.index != followed.index => Follow::New,
        Some(now) if now.mac != followed.mac || now.nets != followed.nets => Follow::Changed,
        Some(now) if attached_to != Some(now.index) => Follow::Attach,
        Some(_) => Follow::Nothing,
    }
}

impl Daemon {
    /// Looks the interface up and follows it.
    pub(super) async fn follow_interface(&mut self, s: &mut Services) {
        let now = match neighbors::interface(&self.iface.name).await {
            Ok(now) => Some(now),
            Err(NetError::NoSuchInterface { .. }) => None,
            Err(err) => {
                warn!(iface = %self.iface.name, %err, "cannot look the interface up");
                return;
            }
        };
        match decide(now.as_ref(), &self.iface, self.attached_to, self.iface_gone) {
            Follow::Nothing => {}
            Follow::Gone => {
                self.iface_gone = true;
                warn!(
                    iface = %self.iface.name,
                    ifindex = self.iface.index,
                    "the interface is gone, and the data plane with it: nothing is balanced until an interface of that name comes back, which lb attaches to"
                );
            }
            Follow::New => self.new_interface(now.expect("an interface"), s).await,
            Follow::Changed => {
                info!(iface = %self.iface.name, "the interface's MAC or addresses changed");
                self.iface = now.expect("an interface");
                self.reconcile();
            }
            Follow::Attach => self.attach_again(),
        }
    }

    /// Another interface of the name: the neighbour watch moves to it, the
    /// plan takes its MAC, the program is attached to it.
    async fn new_interface(&mut self, now: InterfaceInfo, s: &mut Services) {
        info!(
            iface = %now.name,
            old_ifindex = self.iface.index,
            ifindex = now.index,
            "the interface was made again (a new index): following it"
        );
        let dynamic = load::dynamic_targets(&self.policy, &self.drains);
        let (watch, macs) = match NeighborWatch::start(now.index, dynamic).await {
            Ok(started) => started,
            Err(err) => {
                warn!(iface = %now.name, %err, "cannot watch the targets' neighbours on the new interface: trying again");
                return;
            }
        };
        std::mem::replace(&mut s.watch, watch).leave().await;
        self.macs = macs;
        self.iface = now;
        self.iface_gone = false;
        self.reconcile();
        self.attach_again();
    }

    /// Attaches the data plane to the interface followed.
    fn attach_again(&mut self) {
        let iface = self.iface.name.clone();
        match self.dataplane.attach(&iface, self.opts.mode) {
            Ok(attached) => {
                if let Attached::New(mode) = attached {
                    self.mode = mode.to_string();
                    self.say_generic();
                }
                self.attached_to = Some(self.iface.index);
                self.state.xdp_mode = Some(self.mode.clone());
                self.save_state();
                info!(
                    iface,
                    ifindex = self.iface.index,
                    mode = %self.mode,
                    "the data plane is attached to the interface again, with every flow it held"
                );
            }
            Err(err) => {
                error!(iface, ifindex = self.iface.index, %err, "cannot attach the data plane to the interface: trying again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0(index: u32, mac: u8) -> InterfaceInfo {
        InterfaceInfo {
            name: "eth0".into(),
            index,
            mac: [2, 0, 0, 0, 0, mac],
            nets: vec![("10.0.3.2".parse().unwrap(), 24)],
        }
    }

    #[test]
    fn a_new_index_is_a_new_interface_to_attach_to() {
        let followed = eth0(4, 2);
        let cases = [
            (Some(eth0(4, 2)), Some(4), false, Follow::Nothing),
            (None, Some(4), false, Follow::Gone),
            (None, Some(4), true, Follow::Nothing),
            (Some(eth0(9, 2)), Some(4), true, Follow::New),
            (Some(eth0(9, 7)), Some(4), false, Follow::New),
            (Some(eth0(4, 7)), Some(4), false, Follow::Changed),
            // Attached to an index that is no more: attach (a failed
            // attach is tried again).
            (Some(eth0(4, 2)), Some(3), false, Follow::Attach),
            (Some(eth0(4, 2)), None, false, Follow::Attach),
        ];
        for (now, attached, said, want) in cases {
            assert_eq!(
                decide(now.as_ref(), &followed, attached, said),
                want,
                "{now:?} {attached:?} {said}"
            );
        }
        let mut other_nets = eth0(4, 2);
        other_nets.nets.push(("fd00:3::2".parse().unwrap(), 64));
        assert_eq!(
            decide(Some(&other_nets), &followed, Some(4), false),
            Follow::Changed
        );
    }
}
