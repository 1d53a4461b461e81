//! The kernel's neighbour entries as this module sees them, what to do about a
//! target given its entry, and when to try again. Pure: no I/O, no clock (the
//! caller passes `now`).
use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
};

// NUD_* state bits of include/uapi/linux/neighbour.h.
pub(crate) const NUD_INCOMPLETE: u16 = 0x01;
pub(crate) const NUD_REACHABLE: u16 = 0x02;
pub(crate) const NUD_STALE: u16 = 0x04;
pub(crate) const NUD_DELAY: u16 = 0x08;
pub(crate) const NUD_PROBE: u16 = 0x10;
pub(crate) const NUD_FAILED: u16 = 0x20;
pub(crate) const NUD_NOARP: u16 = 0x40;
pub(crate) const NUD_PERMANENT: u16 = 0x80;
/// States whose link-layer address may be used (the kernel's `NUD_VALID`).
/// INCOMPLETE and FAILED carry no usable address; NONE is a fresh entry.
const NUD_VALID: u16 =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;

/// One neighbour entry (one `RTM_NEWNEIGH` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub ifindex: u32,
    pub ip: IpAddr,
    /// Raw `NUD_*` bits.
    pub state: u16,
    /// The link-layer address if it is 6 bytes long.
    pub lladdr: Option<[u8; 6]>,
    /// `NTF_EXT_MANAGED`: the kernel keeps it resolved by itself.
    pub managed: bool,
    /// `NTF_EXT_LEARNED`: put there by a control plane (EVPN, a NIC driver).
    pub ext_learned: bool,
}

impl Entry {
    /// Reads an entry; `None` for proxy entries and anything that is not an
    /// IPv4 or IPv6 neighbour with a destination.
    pub fn from_message(msg: &NeighbourMessage) -> Option<Self> {
        if msg.header.flags.contains(NeighbourFlags::Proxy) {
            return None;
        }
        let mut ip = None;
        let mut lladdr = None;
        let mut ext = NeighbourExtFlags::empty();
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    lladdr = <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                NeighbourAttribute::ExtFlags(flags) => ext = *flags,
                _ => {}
            }
        }
        Some(Self {
            ifindex: msg.header.ifindex,
            ip: ip?,
            state: msg.header.state.into(),
            lladdr,
            managed: ext.contains(NeighbourExtFlags::Managed),
            ext_learned: msg.header.flags.contains(NeighbourFlags::ExtLearned),
        })
    }

    /// The MAC to forward to, if this entry has a usable one. Never the zero
    /// MAC: a frame sent there would be lost.
    pub fn mac(&self) -> Option<[u8; 6]> {
        let mac = self.lladdr?;
        (self.state & NUD_VALID != 0 && mac != [0; 6]).then_some(mac)
    }

    /// Configured by someone else (static, no-ARP or externally learned):
    /// used as it is and never modified or removed. Replacing a PERMANENT
    /// entry with a managed one would silently drop its address.
    pub fn is_admin(&self) -> bool {
        self.state & (NUD_PERMANENT | NUD_NOARP) != 0 || self.ext_learned
    }

    /// Printable state, like `ip neigh` shows it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            0 => "none",
            NUD_INCOMPLETE => "incomplete",
            NUD_REACHABLE => "reachable",
            NUD_STALE => "stale",
            NUD_DELAY => "delay",
            NUD_PROBE => "probe",
            NUD_FAILED => "failed",
            NUD_NOARP => "noarp",
            NUD_PERMANENT => "permanent",
            _ => "other",
        }
    }
}

/// How targets without a usable entry are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Managed entries (`NTF_EXT_MANAGED`, Linux >= 5.16): the kernel resolves
    /// them and keeps them fresh with its own probes.
    Managed,
    /// Older kernels: `NTF_USE` requests ("resolve this now", like
    /// `ip neigh replace ADDR dev DEV use`) create ordinary entries and start
    /// resolution; stale ones are re-confirmed the same way.
    Use,
}

/// What to ask the kernel for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// No entry: create a managed one.
    CreateManaged,
    /// An ordinary cache entry: turn it into a managed one (its address and
    /// state are kept). Without this a DSR target's entry, which no traffic
    /// of the kernel ever confirms, could go stale and stay wrong forever.
    MakeManaged,
    /// Start resolution now (`NTF_USE`); no packet but ARP/NDP is sent.
    Kick,
}

/// The next step for a target whose entry is `entry`; `None` when there is
/// nothing to do.
pub(crate) fn step(entry: Option<&Entry>, mode: Mode) -> Option<Step> {
    match (mode, entry) {
        (_, Some(e)) if e.is_admin() => None,
        (Mode::Managed, None) => Some(Step::CreateManaged),
        (Mode::Managed, Some(e)) if !e.managed => Some(Step::MakeManaged),
        (Mode::Managed, Some(e)) => e.mac().is_none().then_some(Step::Kick),
        (Mode::Use, None) => Some(Step::Kick),
        (Mode::Use, Some(e)) => (e.mac().is_none() || e.state == NUD_STALE).then_some(Step::Kick),
    }
}

/// Whether the running kernel has managed neighbour entries (Linux 5.16),
/// from `/proc/sys/kernel/osrelease`. An unreadable release counts as yes: an
/// error from the first request still selects [`Mode::Use`].
pub(crate) fn kernel_supports_managed(osrelease: &str) -> bool {
    let mut parts = osrelease.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (5, 16),
        _ => true,
    }
}

/// First retry interval for a target that needs a step.
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Retry intervals double up to this.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    due: Instant,
    interval: Duration,
}

/// When to take the next step for each target that needs one: at once, then
/// after 1, 2, 4, 8, 10, 10... seconds while it still needs one.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    pending: BTreeMap<IpAddr, Backoff>,
}

impl Schedule {
    /// `ip` needs a step: due now unless it is already scheduled.
    pub fn want(&mut self, ip: IpAddr, now: Instant) {
        self.pending.entry(ip).or_insert(Backoff {
            due: now,
            interval: RETRY_FIRST,
        });
    }

    /// `ip` needs nothing more.
    pub fn forget(&mut self, ip: &IpAddr) {
        self.pending.remove(ip);
    }

    /// Targets whose step is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<IpAddr> {
        self.pending
            .iter()
            .filter(|(_, b)| b.due <= now)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// A step for `ip` was taken at `now`: the next one waits longer.
    pub fn taken(&mut self, ip: IpAddr, now: Instant) {
        if let Some(b) = self.pending.get_mut(&ip) {
            b.due = now + b.interval;
            b.interval = (b.interval * 2).min(RETRY_MAX);
        }
    }

    /// The earliest due time, if any target is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|b| b.due).min()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::{AddressFamily, neighbour::NeighbourState};

    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));

    fn message(state: u16, lladdr: Option<&[u8]>) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = 7;
        msg.header.state = NeighbourState::from(state);
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(10, 77, 0, 2),
            )));
        if let Some(l) = lladdr {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(l.to_vec()));
        }
        msg
    }

    fn entry(state: u16, managed: bool) -> Entry {
        Entry {
            ifindex: 7,
            ip: V4,
            state,
            lladdr: Some(MAC),
            managed,
            ext_learned: false,
        }
    }

    #[test]
    fn reads_destination_state_address_and_flags() {
        let mut msg = message(NUD_REACHABLE, Some(&MAC));
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        let e = Entry::from_message(&msg).unwrap();
        assert_eq!(
            e,
            Entry {
                ifindex: 7,
                ip: V4,
                state: NUD_REACHABLE,
                lladdr: Some(MAC),
                managed: true,
                ext_learned: false
            }
        );

        let mut msg = message(NUD_STALE, Some(&MAC));
        msg.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
        ));
        msg.header.flags = NeighbourFlags::ExtLearned;
        let e = Entry::from_message(&msg).unwrap();
        assert_eq!(e.ip, "fd77::2".parse::<IpAddr>().unwrap());
        assert!(e.ext_learned && !e.managed);
    }

    #[test]
    fn skips_proxies_and_entries_without_destination() {
        let mut msg = message(NUD_REACHABLE, Some(&MAC));
        msg.header.flags = NeighbourFlags::Proxy;
        assert_eq!(Entry::from_message(&msg), None);
        let mut msg = message(NUD_REACHABLE, Some(&MAC));
        msg.attributes.remove(0);
        assert_eq!(Entry::from_message(&msg), None);
    }

    #[test]
    fn only_valid_states_with_a_real_mac_are_usable() {
        let cases = [
            (NUD_REACHABLE, Some(&MAC[..]), Some(MAC)),
            (NUD_STALE, Some(&MAC[..]), Some(MAC)),
            (NUD_DELAY, Some(&MAC[..]), Some(MAC)),
            (NUD_PROBE, Some(&MAC[..]), Some(MAC)),
            (NUD_PERMANENT, Some(&MAC[..]), Some(MAC)),
            (NUD_NOARP, Some(&MAC[..]), Some(MAC)),
            (NUD_NOARP, None, None),
            (NUD_INCOMPLETE, Some(&MAC[..]), None),
            (NUD_FAILED, Some(&MAC[..]), None),
            (0, Some(&MAC[..]), None),
            (NUD_REACHABLE, Some(&[0u8; 6][..]), None),
            (NUD_REACHABLE, Some(&[1u8, 2, 3, 4][..]), None),
            (NUD_REACHABLE, None, None),
        ];
        for (state, lladdr, want) in cases {
            let e = Entry::from_message(&message(state, lladdr)).unwrap();
            assert_eq!(e.mac(), want, "state {} lladdr {lladdr:?}", e.state_name());
        }
    }

    #[test]
    fn steps_by_mode_and_entry() {
        use Step::*;
        let admin_learned = Entry {
            ext_learned: true,
            ..entry(NUD_REACHABLE, false)
        };
        let cases: [(Option<Entry>, Option<Step>, Option<Step>); 10] = [
            // entry, managed mode, use mode
            (None, Some(CreateManaged), Some(Kick)),
            (Some(entry(NUD_PERMANENT, false)), None, None),
            (Some(entry(NUD_NOARP, false)), None, None),
            (Some(admin_learned), None, None),
            (Some(entry(NUD_REACHABLE, false)), Some(MakeManaged), None),
            (
                Some(entry(NUD_FAILED, false)),
                Some(MakeManaged),
                Some(Kick),
            ),
            (Some(entry(NUD_STALE, false)), Some(MakeManaged), Some(Kick)),
            (Some(entry(NUD_STALE, true)), None, Some(Kick)),
            (Some(entry(NUD_FAILED, true)), Some(Kick), Some(Kick)),
            (Some(entry(0, true)), Some(Kick), Some(Kick)),
        ];
        for (e, managed, with_use) in cases {
            assert_eq!(
                step(e.as_ref(), Mode::Managed),
                managed,
                "managed mode, {e:?}"
            );
            assert_eq!(step(e.as_ref(), Mode::Use), with_use, "use mode, {e:?}");
        }
    }

    #[test]
    fn managed_entries_need_linux_5_16() {
        for (release, want) in [
            ("6.18.44-fc-v595", true),
            ("5.16.0", true),
            ("5.15.0-91-generic", false),
            ("4.19.0-26-amd64\n", false),
            ("garbage", true),
        ] {
            assert_eq!(kernel_supports_managed(release), want, "{release}");
        }
    }

    #[test]
    fn schedule_retries_with_backoff() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut sched = Schedule::default();
        assert_eq!(sched.next_due(), None);
        sched.want(V4, t0);
        let mut now = t0;
        let mut gaps = vec![];
        for _ in 0..7 {
            assert_eq!(sched.due(now), vec![V4]);
            sched.taken(V4, now);
            let next = sched.next_due().unwrap();
            assert!(sched.due(next - Duration::from_millis(1)).is_empty());
            gaps.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 10, 10, 10]);
        // Wanting it again does not reset the backoff; forgetting does.
        sched.taken(V4, now);
        sched.want(V4, now);
        assert_eq!(sched.next_due(), Some(now + RETRY_MAX));
        sched.forget(&V4);
        assert_eq!(sched.next_due(), None);
        sched.want(V4, s(100));
        assert_eq!(sched.due(s(100)), vec![V4]);
    }
}
