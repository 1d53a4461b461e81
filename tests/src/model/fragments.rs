//! Fragments and ICMP errors (README "Fragments and ICMP errors"): a
//! datagram's later fragments follow its first, to its target or, when it
//! was a VIP's and passed to the host (for no listener's port, or too
//! short for its transport header), to the host; without it (or more than
//! `FRAGMENT_TIMEOUT_NS` after it) they go by the hash of the client
//! address, VIP and protocol in the group of the one listener of that VIP
//! and protocol. An ICMP error about a flow goes to the target of the
//! flow's entry, else to the group's hash target of the flow. Neither
//! changes any flow.
use lb_common::{Counter, FRAGMENT_TIMEOUT_NS, FlowKey, ListenerKey};

use super::{
    Group, Model, Outcome, Span, TargetKey, Verdicts, by_hash_fields, hash::Fields, passed, usable,
};

/// What the model remembers of a datagram whose first fragment was
/// forwarded, or passed to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The target and the listener it was forwarded under (later
    /// fragments follow it while that listener is there); `None`: the
    /// host.
    pub went: Option<(TargetKey, ListenerKey)>,
    /// When, on the program's clock (its earliest reading).
    pub seen_ns: u64,
}

impl Model {
    /// Remembers where the first fragment of `key`'s datagram (its id, and
    /// the protocol its later fragments show) went.
    pub(super) fn record_fragment(
        &mut self,
        key: &FlowKey,
        (datagram, proto): (u32, u8),
        went: Option<(TargetKey, ListenerKey)>,
        clock: Span,
    ) {
        let mut at = *key;
        at.to_datagram(datagram);
        at.proto = proto;
        self.fragments.insert(
            at,
            Datagram {
                went,
                seen_ns: clock.from,
            },
        );
    }

    /// A first fragment (`key`, of datagram `datagram`) that passes to the
    /// host: remembered as the host's if it is addressed to a VIP (an
    /// address with a listener, of any protocol) and to the load
    /// balancer's MAC.
    pub(super) fn first_to_host(
        &mut self,
        frame: &[u8],
        key: &FlowKey,
        datagram: (u32, u8),
        clock: Span,
    ) {
        let vip = self
            .view
            .listeners
            .iter()
            .any(|(l, _, _)| l.addr_be == key.dst_be && l.family == key.family);
        if vip && frame[..6] == self.view.own_mac {
            self.record_fragment(key, datagram, None, clock);
        }
    }

    /// A later fragment (`key`: its addresses and protocol, no ports).
    pub(super) fn later_fragment(
        &mut self,
        frame: &[u8],
        key: FlowKey,
        datagram: u32,
        clock: Span,
    ) -> Outcome {
        let own_mac = self.view.own_mac;
        if frame[..6] != own_mac {
            return passed(frame, Counter::Passed);
        }
        let mut at = key;
        at.to_datagram(datagram);
        if let Some(d) = self.fragments.get(&at)
            && clock.to.wrapping_sub(d.seen_ns) as i64 <= FRAGMENT_TIMEOUT_NS as i64
        {
            let Some((target, listener)) = &d.went else {
                return passed(frame, Counter::Passed);
            };
            if let Some(group) = self.view.listener(listener)
                && let Some(t) = usable(group, target)
            {
                let verdicts = Verdicts::of(frame, own_mac, *listener);
                return verdicts.forwarded(
                    t,
                    vec![Counter::Fragment, Counter::Forwarded],
                    false,
                    None,
                );
            }
        }
        // The one listener of the VIP and protocol, if it is the only one.
        let mut of_vip = self.view.listeners.iter().filter(|(l, _, _)| {
            l.addr_be == key.dst_be && l.proto == key.proto && l.family == key.family
        });
        let (Some((listener, _, _)), None) = (of_vip.next(), of_vip.next()) else {
            return passed(frame, Counter::Passed);
        };
        let verdicts = Verdicts::of(frame, own_mac, *listener);
        let Some(group) = self.view.listener(listener) else {
            return verdicts.dropped(Vec::new(), None);
        };
        let fields = Fields {
            src_port: false,
            dst_port: false,
            ..group.fields
        };
        match by_hash_fields(group, &key, fields).and_then(|t| usable(group, &t)) {
            Some(t) => verdicts.forwarded(
                t,
                vec![Counter::FragmentUnmatched, Counter::Forwarded],
                false,
                None,
            ),
            None => verdicts.dropped(Vec::new(), None),
        }
    }

    /// An ICMP error about the flow `key` of `group`'s listener.
    pub(super) fn icmp_error(
        &mut self,
        verdicts: &Verdicts,
        group: &Group,
        key: &FlowKey,
    ) -> Outcome {
        if let Some(flow) = self.flows.get(key)
            && let Some(t) = usable(group, &flow.target)
        {
            return verdicts.forwarded(
                t,
                vec![Counter::IcmpError, Counter::Forwarded],
                false,
                None,
            );
        }
        match by_hash_fields(group, key, group.fields).and_then(|t| usable(group, &t)) {
            Some(t) => verdicts.forwarded(
                t,
                vec![Counter::IcmpErrorUnmatched, Counter::Forwarded],
                false,
                None,
            ),
            None => verdicts.dropped(Vec::new(), None),
        }
    }
}
