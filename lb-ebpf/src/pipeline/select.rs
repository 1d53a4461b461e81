//! Flow -> target: the flow table first, else the group's algorithm; and the
//! flow's lifecycle (README "Flow lifecycle").
//!
//! A hit costs the two bucket reads of the lookup and, at most once per
//! touch interval (about a second), one store of the entry's last-seen time
//! (and then one `GROUPS` lookup to check the idle timeout: a flow seen
//! within the interval cannot have expired). The flow's last packet may
//! thus be up to the interval later than its entry's time: it has ended
//! only once that time is older than its timeout and the interval
//! (`flow_table::outlived`), as the sweeper judges it too.
//! Client FIN and RST set their flag and take the flow out of
//! `TARGET_ACTIVE` once (compare-and-exchange of the entry's word: whoever
//! clears `COUNTED` uncounts). An entry past its timeout, or a client SYN
//! on an entry that saw FIN or RST (the client reused the port), is a new
//! flow.
//!
//! A miss: a TCP packet that is not a SYN belongs to a flow that started
//! elsewhere (on another instance behind ECMP), or before its entry was
//! lost (evicted, lb detached), or to no flow at all (a spoofed ACK), so
//! it goes to the group's consistent-hash target (`choose::by_hash`),
//! where `hash` and `source_ip` groups sent it in the first place. It is
//! remembered only in an empty entry, uncounted (`Probe::first_empty`): it
//! evicts nobody, so a flood of such packets takes no flow's entry, and it
//! counts in its target's active flows from its next packet on
//! (`Entry::again`), so a flood of single packets leaves least connections
//! as it was. Remembered, the flow keeps its target when the group's table
//! changes (a target added, drained). A SYN, or a UDP packet, starts a new
//! flow (`choose::new_flow`, by the group's algorithm). An entry that
//! ended or whose target left is chosen again in place (a TCP packet that
//! is not a SYN then by the hash too).
use aya_ebpf::bindings::xdp_action;
use lb_common::{
    Counter, FlowKey, GroupInfo, ListenerInfo, PROTO_TCP, TargetInfo,
    flow_table::{TOUCH_UNITS, Word, age_ns, flags, outlived, time_units},
    target_flags,
};

use super::{
    GROUPS, TARGET_ACTIVE, TARGETS, atomic, choose,
    counters::count,
    flows::{Entry, Probe, Put},
    parse::tcp,
};

pub struct Selected {
    pub id: u32,
    pub info: &'static TargetInfo,
    /// The flow was not in the flow table (or its entry had ended).
    pub new_flow: bool,
}

/// Adds `delta` to the target's active-flow count (shared by all CPUs).
#[inline(always)]
pub(super) fn active_add(target_id: u32, delta: i64) {
    if let Some(slot) = TARGET_ACTIVE.get_ptr_mut(target_id) {
        // SAFETY: an 8-byte aligned map value that stays allocated while the
        // program runs; other CPUs only touch it with atomic operations too.
        unsafe { atomic::fetch_add_i64(slot, delta) };
    }
}

/// The target's data if it may take packets of `group_id`'s flows.
#[inline(always)]
pub fn usable(id: u32, group_id: u32) -> Option<&'static TargetInfo> {
    target_with(id, group_id, target_flags::USABLE)
}

/// The target's data if it belongs to `group_id` and has every bit of
/// `flags` (`USABLE`: may take packets; `SELECTABLE`: may take new flows).
/// Id 0 never qualifies (a zeroed slot fails closed).
#[inline(always)]
pub(super) fn target_with(id: u32, group_id: u32, flags: u16) -> Option<&'static TargetInfo> {
    let info = TARGETS.get(id)?;
    if id != 0 && info.flags & flags == flags && info.group_id == group_id {
        Some(info)
    } else {
        None
    }
}

/// A listener flow with nowhere to go is dropped (fail closed) and counted.
#[inline(always)]
fn no_target() -> u32 {
    count(Counter::NoTarget);
    count(Counter::Dropped);
    xdp_action::XDP_DROP
}

/// The client FIN/RST bits of a TCP flags byte, as entry [`flags`].
#[inline(always)]
fn ending(tcp_flags: u8) -> u8 {
    let mut seen = 0;
    if tcp_flags & tcp::FIN != 0 {
        seen |= flags::FIN;
    }
    if tcp_flags & tcp::RST != 0 {
        seen |= flags::RST;
    }
    seen
}

/// Whether a packet with these TCP flags (0 for UDP) has no lifecycle work
/// for the table: no SYN, FIN or RST.
#[inline(always)]
fn plain(tcp_flags: u8) -> bool {
    tcp_flags & (tcp::SYN | tcp::FIN | tcp::RST) == 0
}

/// A client's opening SYN (not the SYN-ACK of a server, which DSR never
/// sends through the load balancer anyway).
#[inline(always)]
fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
}

/// How long an entry with `flags` may go without packets (ns).
#[inline(always)]
pub(super) fn timeout_ns(group: &GroupInfo, entry_flags: u8) -> u64 {
    let s = if entry_flags & (flags::FIN | flags::RST) != 0 {
        group.fin_timeout_s
    } else {
        group.idle_timeout_s
    };
    s as u64 * 1_000_000_000
}

/// Whether the entry's flow has ended before this packet: past its timeout
/// (`age`: since its entry's last-seen time, ns; `outlived`), or a client
/// SYN after its FIN or RST (the client reused the port).
#[inline(always)]
fn has_ended(entry: &Entry, tcp_flags: u8, age: u64, group_id: u32) -> bool {
    let entry_flags = entry.flags();
    if is_syn(tcp_flags) && entry_flags & (flags::FIN | flags::RST) != 0 {
        return true;
    }
    age > touch_ns()
        && GROUPS
            .get(group_id)
            .is_none_or(|group| outlived(age, timeout_ns(group, entry_flags)))
}

#[inline(always)]
const fn touch_ns() -> u64 {
    (TOUCH_UNITS as u64) << lb_common::flow_table::TIME_SHIFT
}

/// The target of a listener's flow: the one its flow-table `entry` names if
/// the flow goes on and the target is still usable, else one chosen for it
/// (and remembered, in place of its entry if it had one). `probe`: the
/// flow's buckets; `now`: the data-plane time.
#[inline(always)]
pub fn target(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    probe: &mut Probe,
    entry: Option<Entry>,
    now: u64,
) -> Result<Selected, u32> {
    let seen_word = match entry {
        Some(mut e) => {
            if let Some(hit) = existing(tcp_flags, listener, &mut e, now) {
                return Ok(hit);
            }
            // The flow ended (this packet starts another) or must choose
            // again: out of its target's count before the choice, which
            // least connections makes by the counts.
            e.uncount();
            e.word
        }
        None if flow.proto == PROTO_TCP && !is_syn(tcp_flags) => {
            return miss_by_hash(flow, tcp_flags, listener, probe, now);
        }
        None => 0,
    };
    new_flow(flow, tcp_flags, listener, probe, seen_word, now)
}

/// A TCP packet, not a SYN, of a flow the table does not hold: to the
/// group's consistent-hash target, remembered in an empty entry if one is
/// (not counted: [`Entry::again`] counts it at its next packet).
#[inline(always)]
fn miss_by_hash(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    probe: &mut Probe,
    now: u64,
) -> Result<Selected, u32> {
    // Without a commit: whichever CPU puts the flow, its target is the
    // hash slot's. The target is checked before the put (a flow is not
    // remembered on a target that may not take packets) and its data
    // looked up again after it: with that data live across the put, LLVM
    // spills it where the verifier refuses an unaligned load.
    let group = GROUPS.get(listener.group_id).ok_or_else(no_target)?;
    let id = choose::by_hash(flow, listener.group_id, group).ok_or_else(no_target)?;
    if usable(id, listener.group_id).is_none() {
        return Err(no_target());
    }
    if let Some(i) = probe.first_empty() {
        let entry_flags = new_flags(tcp_flags) & !flags::COUNTED;
        let word = Word::new(probe.tag(), id, entry_flags).0;
        probe.put(i, word, listener.listener_id as u16, time_units(now));
    }
    let info = usable(id, listener.group_id).ok_or_else(no_target)?;
    count(Counter::FlowMissByHash);
    Ok(Selected {
        id,
        info,
        new_flow: false,
    })
}

/// [`by_hash`] with every hash field of the group: none excepted.
pub const NO_EXCEPTION: u8 = 0;

/// The target the group's hash of the flow gives (its hash fields but
/// those of `except`, `hash_fields` bits), for a packet that starts no flow
/// (a TCP miss, a fragment, an ICMP error); dropped and counted if there
/// is none.
#[inline(always)]
pub fn by_hash(flow: &FlowKey, listener: &ListenerInfo, except: u8) -> Result<Selected, u32> {
    let group = GROUPS.get(listener.group_id).ok_or_else(no_target)?;
    let fields = group.hash_fields & !except;
    let id = choose::by_hash_of(flow, listener.group_id, fields).ok_or_else(no_target)?;
    let info = usable(id, listener.group_id).ok_or_else(no_target)?;
    Ok(Selected {
        id,
        info,
        new_flow: false,
    })
}

/// The target the flow's `entry` names, if the flow goes on and the target
/// is still usable (the packet's FIN or RST recorded, a stale last-seen
/// time refreshed, the flow marked established); None if the flow has ended
/// or must choose again.
#[inline(always)]
fn existing(
    tcp_flags: u8,
    listener: &ListenerInfo,
    entry: &mut Entry,
    now: u64,
) -> Option<Selected> {
    let seen = entry.seen();
    let age = age_ns(seen, now);
    // A packet of a flow seen within the touch interval (so it goes on)
    // that is no SYN, FIN or RST: nothing to check but its target.
    let quiet = age <= touch_ns() && plain(tcp_flags);
    // The common case: such a packet of an established flow whose entry
    // names the listener it was found under: nothing to write either.
    if quiet
        && entry.flags() & flags::AGAIN != 0
        && entry.listener_hint() as u32 == listener.listener_id
        && let Some(info) = usable(entry.target_id(), listener.group_id)
    {
        count(Counter::FlowHit);
        return Some(Selected {
            id: entry.target_id(),
            info,
            new_flow: false,
        });
    }
    if !quiet && has_ended(entry, tcp_flags, age, listener.group_id) {
        return None;
    }
    let id = entry.target_id();
    let Some(info) = usable(id, listener.group_id) else {
        // The target left (removed, MAC lost, or unhealthy with
        // `rebalance`): choose again.
        count(Counter::FlowReselected);
        return None;
    };
    let ended = ending(tcp_flags);
    if ended != 0 && entry.flags() & ended != ended {
        entry.end(ended);
    }
    if age > touch_ns() {
        entry.touch(time_units(now));
    }
    entry.again();
    if entry.listener_hint() as u32 != listener.listener_id {
        entry.set_listener_hint(listener.listener_id as u16);
    }
    count(Counter::FlowHit);
    Some(Selected {
        id,
        info,
        new_flow: false,
    })
}

/// A new flow (or one whose entry ended or must choose again: its word was
/// `seen_word`): its target chosen (a TCP packet that is not a SYN goes
/// where the group's hash puts it: a flow already under way), remembered
/// in place of its entry or of the entry least worth keeping, counted, and
/// committed (`flows`): another CPU that inserted or re-chose the flow
/// meanwhile decided for both, and this CPU's entry is removed.
#[inline(always)]
fn new_flow(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    probe: &mut Probe,
    seen_word: u64,
    now: u64,
) -> Result<Selected, u32> {
    let group = GROUPS.get(listener.group_id).ok_or_else(no_target)?;
    let (id, info) = choose_for(flow, tcp_flags, listener, group, now).map_err(|()| no_target())?;
    let entry_flags = new_flags(tcp_flags);
    let word = Word::new(probe.tag(), id, entry_flags).0;
    let (mine, adopt) = remember(probe, word, seen_word, listener.listener_id as u16, now);
    if adopt != NO_ENTRY {
        probe.remove(mine);
        let theirs = probe.entry_at(adopt);
        if let Some(info) = usable(theirs.target_id(), listener.group_id) {
            count(Counter::FlowHit);
            return Ok(Selected {
                id: theirs.target_id(),
                info,
                new_flow: false,
            });
        }
    }
    if mine == NO_ENTRY {
        count(Counter::FlowInsertFailed);
    }
    count(Counter::NewFlow);
    Ok(Selected {
        id,
        info,
        new_flow: true,
    })
}

/// A candidate index that names no entry.
const NO_ENTRY: usize = 2 * lb_common::flow_table::WAYS;

/// Puts a new flow's `word` in the table and commits it (`flows`), counted
/// if its flags say so. Returns the candidate this CPU's entry is in (or
/// [`NO_ENTRY`]: the flow goes unremembered) and the candidate whose target
/// the packet takes instead ([`NO_ENTRY`] if none): another CPU's entry for
/// the flow, made since this CPU read `seen_word` (the flow's own entry, if
/// it had one).
#[inline(always)]
fn remember(
    probe: &mut Probe,
    word: u64,
    seen_word: u64,
    listener_id: u16,
    now: u64,
) -> (usize, usize) {
    // This CPU's entry for the flow once put; the entry whose target the
    // packet takes instead (another CPU's for the flow), if any.
    let (mut mine, mut adopt) = (NO_ENTRY, NO_ENTRY);
    let mut commits = probe.commits();
    let mut tries = 0;
    while tries < 3 {
        tries += 1;
        let others = probe.others(mine);
        adopt = theirs(probe, others, mine, seen_word);
        if adopt != NO_ENTRY {
            break;
        }
        if mine == NO_ENTRY {
            if tries > 1 {
                // The entry changed under the first put and no other CPU
                // has put the flow: it goes unremembered.
                break;
            }
            // (`others` is every candidate with the flow's tag here: this
            // CPU has no entry yet.)
            match probe.put(
                Probe::position_in(others),
                word,
                listener_id,
                time_units(now),
            ) {
                Put::At(i) => {
                    mine = i;
                    if Word(word).flags() & flags::COUNTED != 0 {
                        active_add(Word(word).target_id(), 1);
                    }
                }
                Put::Full => break,
                // Another insert, the client's FIN, the sweeper: look
                // again (the other insert may be this flow's).
                Put::Changed => {
                    commits = probe.commits();
                    continue;
                }
            }
        }
        if probe.commit(commits) {
            break;
        }
        commits = probe.commits();
    }
    (mine, adopt)
}

/// The first of `others` (candidates other than `mine` with the flow's
/// tag) if it is another CPU's entry for the flow: any, once this CPU has
/// put its own; before, one other than the flow's own entry as this CPU
/// read it (`seen_word`, which it may have uncounted since). Else
/// [`NO_ENTRY`].
#[inline(always)]
fn theirs(probe: &Probe, others: u64, mine: usize, seen_word: u64) -> usize {
    if others == 0 {
        return NO_ENTRY;
    }
    let first = lb_common::flow_table::lowest(others);
    let counted = Word::new(0, 0, flags::COUNTED).0;
    if mine != NO_ENTRY || (probe.entry_at(first).word ^ seen_word) & !counted != 0 {
        first
    } else {
        NO_ENTRY
    }
}

/// A new flow's target and its data.
#[inline(always)]
fn choose_for(
    flow: &FlowKey,
    tcp_flags: u8,
    listener: &ListenerInfo,
    group: &GroupInfo,
    now: u64,
) -> Result<(u32, &'static TargetInfo), ()> {
    let id = if flow.proto == PROTO_TCP && !is_syn(tcp_flags) {
        choose::by_hash(flow, listener.group_id, group)
    } else {
        choose::new_flow(flow, listener.group_id, group, now)
    }
    .ok_or(())?;
    let info = usable(id, listener.group_id).ok_or(())?;
    Ok((id, info))
}

/// A new flow's entry flags: what the client has shown, and `COUNTED`
/// unless it was first seen at its FIN or RST (it has ended already).
#[inline(always)]
fn new_flags(tcp_flags: u8) -> u8 {
    let mut f = ending(tcp_flags);
    if is_syn(tcp_flags) {
        f |= flags::SYN;
    }
    if f & (flags::FIN | flags::RST) == 0 {
        f |= flags::COUNTED;
    }
    f
}
