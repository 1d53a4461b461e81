//! IP fragments (README "Fragments and ICMP errors"): a datagram's first
//! fragment, which has the ports, goes as a whole packet of its flow would,
//! and `FRAGMENTS` remembers where; its later fragments (no ports) follow
//! it there. A later fragment whose first was not seen, or was seen more
//! than `FRAGMENT_TIMEOUT_NS` before, goes where the hash of the client
//! address, VIP and protocol puts it in the group's table of the one
//! listener of its VIP and protocol (`FRAGMENT_LISTENERS`): exactly where
//! its flow goes for `three_tuple`, `two_tuple` and `source_ip` groups.
//! A later fragment to an address that is no VIP (the listener filter's
//! bit of its address) is the host's, and passes before either lookup.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    Config, Counter, FRAGMENT_TIMEOUT_NS, FlowKey, FragmentEntry, ListenerInfo, ListenerKey,
    hash_fields,
};

use super::{
    CONFIG, FRAGMENT_LISTENERS, FRAGMENTS,
    counters::count,
    forward, lookup,
    select::{self, Selected, usable},
    time,
};

/// Records that the first fragment of `flow`'s datagram `datagram` went to
/// `target` under `listener` (`flow` becomes the datagram's key).
#[inline(always)]
pub fn record(
    flow: &mut FlowKey,
    datagram: u32,
    listener: &ListenerInfo,
    target: &Selected,
    now: u64,
) {
    // A volatile read: LLVM would otherwise load the id from the stack as
    // the upper half of a misaligned word, which the verifier refuses.
    // SAFETY: a read of a live local.
    let target = unsafe { core::ptr::read_volatile(&target.id) };
    flow.to_datagram(datagram);
    let entry = FragmentEntry {
        target_id: target,
        listener_id: listener.listener_id,
        seen_ns: now,
    };
    // A full table evicts its least recently used datagram; a failed
    // write leaves the later fragments to the hash.
    let _ = FRAGMENTS.insert(&*flow, &entry, 0);
}

/// The verdict for a later fragment of `flow`'s datagram `datagram`
/// (`flow`'s ports, 0, become the datagram's).
#[inline(always)]
pub fn later(ctx: &XdpContext, flow: &mut FlowKey, datagram: u32) -> Result<u32, u32> {
    // Fragments of the host's own traffic pass here, before any lookup.
    if !lookup::to_vip(flow) {
        count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    }
    let Some(config) = CONFIG.get(0) else {
        count(Counter::Dropped);
        return Err(xdp_action::XDP_DROP);
    };
    lookup::to_us(ctx, config)?;
    flow.to_datagram(datagram);
    if let Some((listener, target)) = followed(flow, config) {
        count(Counter::Fragment);
        return forward(ctx, &listener, &target, config);
    }
    let key = ListenerKey {
        addr_be: flow.dst_be,
        port_be: 0,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out at once.
    let Some(listener) = (unsafe { FRAGMENT_LISTENERS.get(key) }).copied() else {
        count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    };
    // The group's hash of the addresses and protocol: not the ports, which
    // the fragment lacks.
    let target = select::by_hash(
        flow,
        &listener,
        hash_fields::SRC_PORT | hash_fields::DST_PORT,
    )?;
    count(Counter::FragmentUnmatched);
    forward(ctx, &listener, &target, config)
}

/// The listener and target of the datagram's first fragment, if it was
/// seen within the timeout and both still hold.
#[inline(always)]
fn followed(datagram: &FlowKey, config: &Config) -> Option<(ListenerInfo, Selected)> {
    // SAFETY: the value is copied out at once.
    let entry = *unsafe { FRAGMENTS.get(datagram) }?;
    let age = time::now_ns(config).wrapping_sub(entry.seen_ns);
    if age as i64 > FRAGMENT_TIMEOUT_NS as i64 {
        return None;
    }
    let listener = lookup::listener_by_id(datagram, entry.listener_id, lookup::ANY_PORT)?;
    let info = usable(entry.target_id, listener.group_id)?;
    Some((
        listener,
        Selected {
            id: entry.target_id,
            info,
            new_flow: false,
        },
    ))
}
