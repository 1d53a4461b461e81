//! IP fragments (README "Fragments and ICMP errors"): a datagram's first
//! fragment, which has the ports, goes as a whole packet of its flow would,
//! and `FRAGMENTS` remembers where; its later fragments (no ports) follow
//! it there. A first fragment to a VIP that passes to the host (for no
//! listener's port, or malformed) is remembered too, as the host's, and
//! its later fragments pass. A later fragment whose first was not seen,
//! or was seen more than `FRAGMENT_TIMEOUT_NS` before, goes where the hash
//! of the client address, VIP and protocol puts it in the group's table of
//! the one listener of its VIP and protocol (`FRAGMENT_LISTENERS`):
//! exactly where its flow goes for `three_tuple`, `two_tuple` and
//! `source_ip` groups. A later fragment to an address that is no VIP (the
//! listener filter's bit of its address) is the host's, and passes before
//! either lookup.
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

/// Records that the first fragment of `flow`'s datagram `datagram` passed
/// to the host, if it is addressed to a VIP (the listener filter's bit)
/// and to the interface's MAC: its later fragments, which would otherwise
/// go to the VIP's one listener of their protocol, pass too. (`flow`
/// becomes the datagram's key.) Only a first fragment gets here
/// ([`passed`] tests the key's mark, and the parser the header's bit).
#[inline(always)]
pub fn to_host(ctx: &XdpContext, flow: &mut FlowKey, datagram: u32) {
    if !lookup::to_vip(flow) {
        return;
    }
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    if !lookup::is_to_us(ctx, config) {
        return;
    }
    flow.to_datagram(datagram);
    let entry = FragmentEntry {
        target_id: FragmentEntry::HOST,
        listener_id: 0,
        seen_ns: time::now_ns(config),
    };
    let _ = FRAGMENTS.insert(&*flow, &entry, 0);
}

/// `action`, the verdict of a packet the pipeline passes to the host
/// (`flow`, of datagram `datagram` if it is a fragment): a first
/// fragment's datagram is remembered as the host's ([`to_host`]).
#[inline(always)]
pub fn passed(ctx: &XdpContext, flow: &mut FlowKey, datagram: u32, action: u32) -> u32 {
    if flow.is_first_fragment() {
        to_host(ctx, flow, datagram);
    }
    action
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
    // Element 0 always exists (`pipeline::run`).
    let Some(config) = CONFIG.get(0) else {
        count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    };
    lookup::to_us(ctx, config)?;
    flow.to_datagram(datagram);
    if let Some((listener, target)) = followed(flow, config)? {
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
/// seen within the timeout and both still hold; XDP_PASS if it passed to
/// the host.
#[inline(always)]
fn followed(datagram: &FlowKey, config: &Config) -> Result<Option<(ListenerInfo, Selected)>, u32> {
    // SAFETY: the value is copied out at once.
    let Some(entry) = (unsafe { FRAGMENTS.get(datagram) }).copied() else {
        return Ok(None);
    };
    let age = time::now_ns(config).wrapping_sub(entry.seen_ns);
    if age as i64 > FRAGMENT_TIMEOUT_NS as i64 {
        return Ok(None);
    }
    if entry.target_id == FragmentEntry::HOST {
        count(Counter::Passed);
        return Err(xdp_action::XDP_PASS);
    }
    let Some(listener) = lookup::listener_by_id(datagram, entry.listener_id, lookup::ANY_PORT)
    else {
        return Ok(None);
    };
    Ok(usable(entry.target_id, listener.group_id).map(|info| {
        (
            listener,
            Selected {
                id: entry.target_id,
                info,
                new_flow: false,
            },
        )
    }))
}
