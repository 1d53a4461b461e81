//! The flow table (`FLOW_TABLE`, `lb_common::flow_table`): a flow's two
//! buckets read, its entry found by tag, entries changed with
//! compare-and-exchange, new flows inserted under their first bucket's lock.
//!
//! Concurrency, on every CPU kind (no ordering is assumed of plain loads
//! and stores):
//! - An entry's word (tag, target, flags) changes only by atomic operations:
//!   compare-and-exchange against the word read, so a change meant for one
//!   flow never lands on another that took its entry meanwhile; the
//!   `AGAIN` bit alone is set with an atomic or (on another flow it only
//!   protects that flow a little longer). Whoever clears `COUNTED` (the
//!   client's FIN or RST, a re-selection, an eviction, the sweeper) takes
//!   the flow out of its target's count, exactly once.
//! - `seen` and the listener hint are hints, stored plainly after the word:
//!   a reader may pair a word with another flow's, which costs at most a
//!   listener hash lookup or a refresh.
//! - A CPU inserting a flow holds the lock bit of the flow's first bucket,
//!   and looks for the flow again once it holds it: two CPUs that miss the
//!   same flow at once (a flow on two queues) insert it once and agree on
//!   its target. Waiting is bounded; a CPU that waits in vain forwards the
//!   packet unremembered (counted).
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use lb_common::{
    Config, Counter, FlowKey,
    flow_table::{self, Bucket, Place, WAYS, Word, flags, header},
};

use super::{FLOW_TABLE, atomic, counters::count, select::active_add};

/// How many times a CPU looks at a locked bucket before it gives up waiting
/// (an insert holds the lock for well under a microsecond).
const LOCK_SPINS: u32 = 64;

/// The table's settings, read once per packet.
#[derive(Clone, Copy)]
pub struct Settings {
    mask: u32,
    seed: u64,
}

impl Settings {
    #[inline(always)]
    pub fn read(config: &Config) -> Settings {
        // SAFETY: reads of a map value that stays allocated.
        unsafe {
            Settings {
                mask: read_volatile(addr_of!(config.flow_table_mask)),
                seed: read_volatile(addr_of!(config.flow_table_seed)),
            }
        }
    }
}

/// A flow's two buckets and what their words held when read.
pub struct Probe {
    place: Place,
    buckets: [*mut Bucket; 2],
    words: [u64; 2 * WAYS],
}

/// One entry, and its word as last read.
#[derive(Clone, Copy)]
pub struct Entry {
    bucket: *mut Bucket,
    way: usize,
    pub word: u64,
}

#[inline(always)]
fn bucket(index: u32) -> Option<*mut Bucket> {
    FLOW_TABLE.get_ptr_mut(index)
}

/// The bucket and way of candidate `i` (0-7).
#[inline(always)]
fn at(buckets: &[*mut Bucket; 2], i: usize) -> (*mut Bucket, usize) {
    (buckets[i / WAYS], i % WAYS)
}

impl Probe {
    /// Reads the flow's two buckets; None if the table is off or missing.
    #[inline(always)]
    pub fn read(flow: &FlowKey, settings: &Settings) -> Option<Probe> {
        if settings.mask == 0 {
            return None;
        }
        let place = flow_table::place(flow, settings.seed, settings.mask);
        let buckets = [bucket(place.first)?, bucket(place.second)?];
        let mut probe = Probe {
            place,
            buckets,
            words: [0; 2 * WAYS],
        };
        probe.reread();
        Some(probe)
    }

    #[inline(always)]
    fn reread(&mut self) {
        let mut i = 0;
        while i < 2 * WAYS {
            let (b, w) = at(&self.buckets, i);
            // SAFETY: an 8-byte aligned word of a map value that stays
            // allocated while the program runs; volatile, since other CPUs
            // change it.
            self.words[i] = unsafe { read_volatile(addr_of!((*b).words[w])) };
            i += 1;
        }
    }

    /// The flow's entry, if it has one.
    #[inline(always)]
    pub fn entry(&self) -> Option<Entry> {
        let i = flow_table::find(&self.words, self.place.tag)?;
        let (bucket, way) = at(&self.buckets, i);
        Some(Entry {
            bucket,
            way,
            word: self.words[i],
        })
    }

    #[inline(always)]
    pub fn tag(&self) -> u64 {
        self.place.tag
    }

    /// The `seen` times of the eight candidates.
    #[inline(always)]
    fn seen(&self) -> [u32; 2 * WAYS] {
        let mut seen = [0; 2 * WAYS];
        let mut i = 0;
        while i < 2 * WAYS {
            let (b, w) = at(&self.buckets, i);
            // SAFETY: as in `reread`.
            seen[i] = unsafe { read_volatile(addr_of!((*b).seen[w])) };
            i += 1;
        }
        seen
    }

    /// Takes the lock of the flow's first bucket, waiting a bounded time;
    /// then reads the words again (what the last holder wrote). False if it
    /// stayed locked.
    #[inline(always)]
    pub fn lock(&mut self) -> bool {
        // SAFETY: the header is an 8-byte aligned word of a map value that
        // stays allocated; every writer uses atomic operations.
        let header = unsafe { addr_of_mut!((*self.buckets[0]).header) };
        let mut spins = 0;
        while spins < LOCK_SPINS {
            // SAFETY: as above.
            let old = unsafe { atomic::fetch_or_u64(header, header::LOCKED) };
            if old & header::LOCKED == 0 {
                self.reread();
                return true;
            }
            // SAFETY: as above.
            while spins < LOCK_SPINS && unsafe { read_volatile(header) } & header::LOCKED != 0 {
                spins += 1;
            }
        }
        false
    }

    #[inline(always)]
    pub fn unlock(&self) {
        // SAFETY: as in `lock`; only the holder clears the bit.
        unsafe { atomic::fetch_and_not_u64(addr_of_mut!((*self.buckets[0]).header), header::LOCKED) };
    }

    /// Puts `word` (the flow's, new) in place of `old`, or else in the
    /// entry least worth keeping; the evicted flow, if counted, leaves its
    /// target's count. Call with the lock held. Returns the entry written,
    /// or None if every candidate is an established flow in use (the flow
    /// goes unremembered) or others kept changing them.
    #[inline(always)]
    pub fn put(&mut self, old: Option<Entry>, word: u64, listener_id: u16, now: u32) -> Option<Entry> {
        let mut old = old;
        let mut tries = 0;
        while tries < 3 {
            let entry = match old {
                Some(e) => e,
                None => {
                    let i = flow_table::victim(&self.words, &self.seen(), now)?;
                    let (bucket, way) = at(&self.buckets, i);
                    Entry {
                        bucket,
                        way,
                        word: self.words[i],
                    }
                }
            };
            // SAFETY: as in `reread`; atomic against every other writer.
            let was = unsafe { atomic::cmpxchg_u64(entry.word_ptr(), entry.word, word) };
            if was == entry.word {
                if was != 0 && Word(was).tag() != Word(word).tag() {
                    count(Counter::FlowEvicted);
                }
                uncount_word(was);
                entry.write_hints(listener_id, now);
                return Some(Entry { word, ..entry });
            }
            // Changed meanwhile (a FIN, the sweeper, another bucket's
            // insert): the flow's entry as it is now, if it still has one.
            self.reread();
            old = if old.is_some() { self.entry() } else { None };
            tries += 1;
        }
        None
    }
}

/// Takes a word's flow out of its target's count if the word had it counted
/// (the caller just replaced or cleared that word).
#[inline(always)]
fn uncount_word(was: u64) {
    let w = Word(was);
    if !w.is_empty() && w.flags() & flags::COUNTED != 0 {
        active_add(w.target_id(), -1);
    }
}

impl Entry {
    #[inline(always)]
    fn word_ptr(&self) -> *mut u64 {
        // SAFETY: a field of a map value that stays allocated.
        unsafe { addr_of_mut!((*self.bucket).words[self.way]) }
    }

    #[inline(always)]
    pub fn target_id(&self) -> u32 {
        Word(self.word).target_id()
    }

    #[inline(always)]
    pub fn flags(&self) -> u8 {
        Word(self.word).flags()
    }

    /// When the flow was last seen ([`flow_table::time_units`]).
    #[inline(always)]
    pub fn seen(&self) -> u32 {
        // SAFETY: a field of a map value that stays allocated (a hint).
        unsafe { read_volatile(addr_of!((*self.bucket).seen[self.way])) }
    }

    #[inline(always)]
    pub fn listener_hint(&self) -> u16 {
        // SAFETY: as in `seen`.
        unsafe { read_volatile(addr_of!((*self.bucket).listener_id[self.way])) }
    }

    #[inline(always)]
    pub fn set_listener_hint(&self, listener_id: u16) {
        // SAFETY: as in `seen`; a hint, stored whole.
        unsafe { write_volatile(addr_of_mut!((*self.bucket).listener_id[self.way]), listener_id) }
    }

    #[inline(always)]
    pub fn touch(&self, now: u32) {
        // SAFETY: as in `seen`; any CPU's recent time is as good.
        unsafe { write_volatile(addr_of_mut!((*self.bucket).seen[self.way]), now) }
    }

    #[inline(always)]
    fn write_hints(&self, listener_id: u16, now: u32) {
        self.touch(now);
        self.set_listener_hint(listener_id);
    }

    /// Marks the flow established (a packet after its first).
    #[inline(always)]
    pub fn again(&self) {
        if self.flags() & flags::AGAIN == 0 {
            // SAFETY: as in `Probe::put`.
            unsafe {
                atomic::fetch_or_u64(self.word_ptr(), Word::new(0, 0, flags::AGAIN).0);
            }
        }
    }

    /// Records the client's FIN or RST (`seen`, [`flags`]) and takes the
    /// flow out of its target's count once. False if the entry holds
    /// another flow now.
    #[inline(always)]
    pub fn end(&mut self, seen: u8) -> bool {
        let mut tries = 0;
        while tries < 4 {
            let old = Word(self.word);
            let new = old.with_flags((old.flags() | seen) & !flags::COUNTED);
            if new == old {
                return true;
            }
            // SAFETY: as in `Probe::put`.
            let was = unsafe { atomic::cmpxchg_u64(self.word_ptr(), old.0, new.0) };
            if was == old.0 {
                if old.flags() & flags::COUNTED != 0 {
                    active_add(old.target_id(), -1);
                }
                self.word = new.0;
                return true;
            }
            if Word(was).tag() != old.tag() || was == 0 {
                return false;
            }
            self.word = was;
            tries += 1;
        }
        false
    }
}
