//! The flow cache: a direct-mapped copy of flow-table entries in an array
//! (`FLOW_CACHE`, one `lb_common::FlowCacheSlot` per slot), so that most
//! packets of an established flow skip the LRU hash lookup (the largest
//! single cost of the established path: README "Flow cache").
//!
//! The flow table stays the truth; a slot only repeats it:
//! - `select` writes the flow's slot after every packet that could have used
//!   it (no SYN, FIN or RST) and left an entry in the table, and also after
//!   any other packet of a flow that had an entry, if its slot holds the
//!   flow (a FIN, or a SYN that reused the client's port), so the slot never
//!   keeps a mapping the table has replaced. A SYN of a flow that is not in
//!   the table does not touch the cache: a SYN flood does not evict
//!   established flows from it, and new TCP flows pay no cache miss for it.
//! - A packet uses a slot only if it carries no SYN, FIN or RST, the slot
//!   holds its exact flow key, the data-plane time is at most the slot's
//!   `until_ns` (the entry's `last_seen_ns` + `FLOW_TOUCH_NS`: before then
//!   the entry cannot have timed out and needs no refresh, so the table
//!   path would only read it), and the slot's generation is the current
//!   one. The loader bumps the generation after deleting live entries
//!   itself and after any change of the listeners, so the slot's listener
//!   and group need no check; the target is still checked (`TARGETS`:
//!   usable, same group) exactly as a flow-table hit checks it, so health
//!   changes take effect at once.
//!
//! What differs from the table: an entry the kernel's LRU evicts (a full
//! table) is still served from its slot until `until_ns`, at most
//! `FLOW_TOUCH_NS`; the flow keeps its target for that second where a miss
//! might have moved it. If the client reuses that 5-tuple for a new
//! connection within the same second, its packets after the SYN may follow
//! the slot for the rest of it. And when packets of one 5-tuple run on two
//! CPUs at once across a port reuse (not with RSS, which steers a 5-tuple to
//! one queue), the old connection's last write may win for up to
//! `FLOW_TOUCH_NS`.
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use super::common::{Config, FAMILY_V4, FlowCacheSlot, FlowKey, ListenerInfo, flow_cache_slot};

use super::{FLOW_CACHE, atomic};

/// The cache's settings for one packet, read once at its start: a packet
/// that saw the generation the loader bumped after changing a map also sees
/// the changed map, so it never writes an old answer under a new generation.
#[derive(Clone, Copy)]
pub struct Settings {
    mask: u32,
    generation: u32,
    seed: u64,
}

impl Settings {
    #[inline(always)]
    pub fn read(config: &Config) -> Settings {
        // SAFETY: reads of a map value that stays allocated; volatile so
        // that they stay before the packet's map lookups.
        unsafe {
            Settings {
                mask: read_volatile(addr_of!(config.flow_cache_mask)),
                generation: read_volatile(addr_of!(config.flow_cache_gen)),
                seed: read_volatile(addr_of!(config.flow_cache_seed)),
            }
        }
    }
}

/// A usable slot's mapping.
pub struct Hit {
    pub target_id: u32,
    pub listener_id: u16,
    pub group_id: u16,
}

#[inline(always)]
fn slot(flow: &FlowKey, settings: &Settings) -> Option<*mut FlowCacheSlot> {
    if settings.mask == 0 {
        return None;
    }
    FLOW_CACHE.get_ptr_mut(flow_cache_slot(flow, settings.seed, settings.mask))
}

/// The key as five 8-byte words.
#[inline(always)]
fn key_words(flow: &FlowKey) -> &[u64; 5] {
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
    const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);
    // SAFETY: 40 bytes, 8-byte aligned, every bit pattern a valid u64.
    unsafe { &*(flow as *const FlowKey as *const [u64; 5]) }
}

/// Whether the slot's key (read word by word, volatile) is `flow`'s. For an
/// IPv4 flow three words decide: word 4 holds the family, and words 1 and 3
/// (the upper address words) are zero in every IPv4 key. Each word is
/// compared as soon as it is read: a difference is a miss whatever a writer
/// was doing, so only a match needs the sequence check that follows.
///
/// # Safety
/// `slot` points at a `FLOW_CACHE` value.
#[inline(always)]
unsafe fn holds(slot: *const FlowCacheSlot, flow: &FlowKey) -> bool {
    let want = key_words(flow);
    // SAFETY: as the caller guarantees; the key is 8-byte aligned in the
    // 64-byte aligned slot.
    unsafe {
        let words = addr_of!((*slot).key) as *const u64;
        if read_volatile(words) != want[0]
            || read_volatile(words.add(2)) != want[2]
            || read_volatile(words.add(4)) != want[4]
        {
            return false;
        }
        flow.family == FAMILY_V4
            || (read_volatile(words.add(1)) == want[1] && read_volatile(words.add(3)) == want[3])
    }
}

// The slot's target, listener and group are one 8-byte word (little endian:
// target id, then listener id, then group id), read and written whole.
const _: () = {
    assert!(core::mem::offset_of!(FlowCacheSlot, target_id) == 8);
    assert!(core::mem::offset_of!(FlowCacheSlot, listener_id) == 12);
    assert!(core::mem::offset_of!(FlowCacheSlot, group_id) == 14);
};

/// The flow's mapping, if its slot holds one that may be used at `now`.
#[inline(always)]
pub fn get(flow: &FlowKey, settings: &Settings, now: u64) -> Option<Hit> {
    let slot = slot(flow, settings)?;
    // SAFETY: a map value that stays allocated while the program runs; other
    // CPUs write it under the sequence protocol, so every read is volatile
    // (kept in program order) and what was read is used only if the
    // sequence was even and unchanged around the reads.
    unsafe {
        let seq = read_volatile(addr_of!((*slot).seq_gen));
        if seq & 1 != 0 || (seq >> 32) as u32 != settings.generation || !holds(slot, flow) {
            return None;
        }
        let ids = read_volatile(addr_of!((*slot).target_id) as *const u64);
        let until = read_volatile(addr_of!((*slot).until_ns));
        if read_volatile(addr_of!((*slot).seq_gen)) != seq || now > until {
            return None;
        }
        Some(Hit {
            target_id: ids as u32,
            listener_id: (ids >> 32) as u16,
            group_id: (ids >> 48) as u16,
        })
    }
}

/// Writes the flow's mapping into its slot, valid until `until_ns`. With
/// `only_if_held`, only if the slot holds the flow already (a packet that
/// could not have used the slot updates it but does not claim it). Skipped
/// if another CPU is writing the slot.
#[inline(always)]
pub fn put(
    flow: &FlowKey,
    settings: &Settings,
    target_id: u32,
    listener: &ListenerInfo,
    until_ns: u64,
    only_if_held: bool,
) {
    let Some(slot) = slot(flow, settings) else {
        return;
    };
    // SAFETY: as in `get`; the writer that moves the sequence from even to
    // odd (compare-and-exchange) is the only one writing until it stores the
    // next even value.
    unsafe {
        if only_if_held && !holds(slot, flow) {
            return;
        }
        let seq_ptr = addr_of_mut!((*slot).seq_gen);
        let seq = read_volatile(seq_ptr);
        if seq & 1 != 0 || atomic::cmpxchg_u64(seq_ptr, seq, seq + 1) != seq {
            return;
        }
        let words = addr_of_mut!((*slot).key) as *mut u64;
        let key = key_words(flow);
        let mut i = 0;
        while i < 5 {
            write_volatile(words.add(i), key[i]);
            i += 1;
        }
        let ids = target_id as u64
            | ((listener.listener_id as u16 as u64) << 32)
            | ((listener.group_id as u16 as u64) << 48);
        write_volatile(addr_of_mut!((*slot).target_id) as *mut u64, ids);
        write_volatile(addr_of_mut!((*slot).until_ns), until_ns);
        let next = (seq as u32).wrapping_add(2) as u64;
        write_volatile(seq_ptr, ((settings.generation as u64) << 32) | next);
    }
}
