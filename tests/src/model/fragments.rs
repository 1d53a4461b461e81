//! Fragments and ICMP errors (README "Fragments and ICMP errors"): a
//! datagram's later fragments follow its first; without it (or more than
//! `FRAGMENT_TIMEOUT_NS` after it) they go by the hash of the client
//! address, VIP and protocol in the group of the one listener of that VIP
//! and protocol. An ICMP error about a flow goes to the target of the
//! flow's entry, else to the group's hash target of the flow. Neither
//! changes any flow.
use lb_common::{Counter, FRAGMENT_TIMEOUT_NS, FlowKey, hash_fields};
use lb_user::plan::{MapPlan, PlannedGroup};

use super::{Model, Outcome, Span, TargetKey, Verdicts, by_hash_fields, passed, usable};

/// What the model remembers of a datagram whose first fragment was
/// forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub target: TargetKey,
    /// The program's id of the listener it was forwarded under: later
    /// fragments follow it while that id has the datagram's VIP and
    /// protocol.
    pub listener_id: u32,
    /// When, on the program's clock (its earliest reading).
    pub seen_ns: u64,
}

impl Model {
    /// Remembers where the first fragment of `key`'s datagram went.
    pub(super) fn record_fragment(
        &mut self,
        key: &FlowKey,
        datagram: u32,
        listener_id: u32,
        target: &TargetKey,
        clock: Span,
    ) {
        let mut at = *key;
        at.to_datagram(datagram);
        self.fragments.insert(
            at,
            Datagram {
                target: target.clone(),
                listener_id,
                seen_ns: clock.from,
            },
        );
    }

    /// A later fragment (`key`: its addresses and protocol, no ports).
    pub(super) fn later_fragment(
        &mut self,
        plan: &MapPlan,
        frame: &[u8],
        key: FlowKey,
        datagram: u32,
        clock: Span,
    ) -> Outcome {
        if frame[..6] != plan.config.src_mac {
            return passed(frame, Counter::Passed);
        }
        let mut at = key;
        at.to_datagram(datagram);
        if let Some(d) = self.fragments.get(&at)
            && clock.to.wrapping_sub(d.seen_ns) as i64 <= FRAGMENT_TIMEOUT_NS as i64
            && let Some(listener) = plan.listeners.iter().find(|l| {
                l.info.listener_id == d.listener_id
                    && l.key.addr_be == key.dst_be
                    && l.key.proto == key.proto
                    && l.key.family == key.family
            })
            && let Some(group) = plan.groups.iter().find(|g| g.id == listener.info.group_id)
            && let Some(t) = usable(plan, &d.target, &group.name)
        {
            let verdicts = Verdicts::of(frame, plan, listener.key);
            return verdicts.forwarded(t, vec![Counter::Fragment, Counter::Forwarded], false, None);
        }
        // The one listener of the VIP and protocol, if it is the only one.
        let mut of_vip = plan.listeners.iter().filter(|l| {
            l.key.addr_be == key.dst_be && l.key.proto == key.proto && l.key.family == key.family
        });
        let (Some(listener), None) = (of_vip.next(), of_vip.next()) else {
            return passed(frame, Counter::Passed);
        };
        let verdicts = Verdicts::of(frame, plan, listener.key);
        let Some(group) = plan.groups.iter().find(|g| g.id == listener.info.group_id) else {
            return verdicts.dropped(Vec::new(), None);
        };
        let fields = group.info.hash_fields & !(hash_fields::SRC_PORT | hash_fields::DST_PORT);
        match by_hash_fields(plan, group, &key, fields).and_then(|t| usable(plan, &t, &group.name))
        {
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
        plan: &MapPlan,
        verdicts: &Verdicts,
        group: &PlannedGroup,
        key: &FlowKey,
    ) -> Outcome {
        if let Some(flow) = self.flows.get(key)
            && let Some(t) = usable(plan, &flow.target, &group.name)
        {
            return verdicts.forwarded(
                t,
                vec![Counter::IcmpError, Counter::Forwarded],
                false,
                None,
            );
        }
        let fields = group.info.hash_fields;
        match by_hash_fields(plan, group, key, fields).and_then(|t| usable(plan, &t, &group.name)) {
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
