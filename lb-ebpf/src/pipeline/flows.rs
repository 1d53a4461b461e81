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
//!   its target. Waiting is bounded; a CPU that waits in vain goes on
//!   without the lock.
//!
//! Entries are held by bucket index and way, never by pointer: the bucket
//! is looked up again where it is used (an array lookup the verifier
//! inlines), so the program's paths carry scalars the verifier can merge.
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use lb_common::{
    Config, Counter, FlowKey,
    flow_table::{self, Bucket, Place, WAYS, Word, flags, header},
};

use super::{FLOW_TABLE, atomic, counters::count, select::active_add};

/// How many times a CPU looks at a locked bucket before it goes on without
/// the lock (an insert holds it for well under a microsecond).
const LOCK_SPINS: u32 = 16;

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

/// A flow's place and what its two buckets' words held when read.
pub struct Probe {
    place: Place,
    words: [u64; 2 * WAYS],
}

/// One entry, by bucket and way, and its word as last read.
#[derive(Clone, Copy)]
pub struct Entry {
    bucket: u32,
    way: usize,
    pub word: u64,
}

#[inline(always)]
fn bucket(index: u32) -> Option<*mut Bucket> {
    FLOW_TABLE.get_ptr_mut(index)
}

/// 1 if `x` is not 0, without a branch.
#[inline(always)]
const fn nonzero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

impl Probe {
    /// Reads the flow's two buckets; None if the table is off (before the
    /// loader's first write) or a bucket cannot be had.
    #[inline(always)]
    pub fn read(flow: &FlowKey, settings: &Settings) -> Option<Probe> {
        if settings.mask == 0 {
            return None;
        }
        let mut probe = Probe {
            place: flow_table::place(flow, settings.seed, settings.mask),
            words: [0; 2 * WAYS],
        };
        probe.reread()?;
        Some(probe)
    }

    #[inline(always)]
    fn reread(&mut self) -> Option<()> {
        let first = bucket(self.place.first)?;
        let second = bucket(self.place.second)?;
        let mut i = 0;
        while i < WAYS {
            // SAFETY: 8-byte aligned words of map values that stay allocated
            // while the program runs; volatile, since other CPUs change them.
            unsafe {
                self.words[i] = read_volatile(addr_of!((*first).words[i]));
                self.words[WAYS + i] = read_volatile(addr_of!((*second).words[i]));
            }
            i += 1;
        }
        Some(())
    }

    /// The bucket of candidate `i` (0-7), without a branch.
    #[inline(always)]
    fn bucket_of(&self, i: usize) -> u32 {
        let second = nonzero(i as u64 & WAYS as u64).wrapping_neg() as u32;
        self.place.first ^ ((self.place.first ^ self.place.second) & second)
    }

    /// The flow's entry, if it has one.
    #[inline(always)]
    pub fn entry(&self) -> Option<Entry> {
        let m = flow_table::matches(&self.words, self.place.tag);
        if m == 0 {
            return None;
        }
        Some(self.entry_at(flow_table::lowest(m)))
    }

    /// Which candidate holds the flow's tag, or `2 * WAYS` if none (no
    /// branch).
    #[inline(always)]
    pub fn position(&self) -> usize {
        let m = flow_table::matches(&self.words, self.place.tag);
        let none = 1 - nonzero(m) as usize;
        none * 2 * WAYS + (1 - none) * flow_table::lowest(m)
    }

    /// Candidate `i` (0-7) as last read.
    #[inline(always)]
    pub fn entry_at(&self, i: usize) -> Entry {
        let i = i & (2 * WAYS - 1);
        Entry {
            bucket: self.bucket_of(i),
            way: i & (WAYS - 1),
            word: self.words[i],
        }
    }

    #[inline(always)]
    pub fn tag(&self) -> u64 {
        self.place.tag
    }

    /// Takes the lock of the flow's first bucket, waiting a bounded time,
    /// then reads the words again (what the last holder wrote). Returns the
    /// mask [`Probe::unlock`] takes: all ones if the lock was taken, else 0
    /// (the CPU goes on without it: only a flow on two CPUs at that moment
    /// could then get two entries).
    #[inline(always)]
    pub fn lock(&mut self) -> u64 {
        let mut taken = 0;
        if let Some(b) = bucket(self.place.first) {
            // SAFETY: the header is an 8-byte aligned word of a map value
            // that stays allocated; every writer uses atomic operations.
            let header = unsafe { addr_of_mut!((*b).header) };
            let mut spins = 0;
            while spins < LOCK_SPINS {
                spins += 1;
                // SAFETY: as above.
                if unsafe { read_volatile(header) } & header::LOCKED != 0 {
                    continue;
                }
                // SAFETY: as above.
                let old = unsafe { atomic::fetch_or_u64(header, header::LOCKED) };
                if old & header::LOCKED == 0 {
                    taken = u64::MAX;
                    break;
                }
            }
        }
        let _ = self.reread();
        taken
    }

    /// Releases the lock if `mask` (from [`Probe::lock`]) says it was taken;
    /// without a branch, so that both ways share what follows.
    #[inline(always)]
    pub fn unlock(&self, mask: u64) {
        if let Some(b) = bucket(self.place.first) {
            // SAFETY: as in `lock`; only the holder clears the bit.
            unsafe { atomic::fetch_and_not_u64(addr_of_mut!((*b).header), header::LOCKED & mask) };
        }
    }

    /// The `seen` time of candidate `i`.
    #[inline(always)]
    fn seen(&self, i: usize) -> u32 {
        self.entry_at(i).seen()
    }

    /// Puts `word` (the flow's, new) in candidate `at` (its own entry, as
    /// [`Probe::position`] found it) or, when `at` is `2 * WAYS`, in the
    /// entry least worth keeping; the evicted flow, if counted, leaves its
    /// target's count. Call with the lock held. False if every candidate is
    /// an established flow in use (the flow goes unremembered) or others
    /// kept changing them.
    #[inline(always)]
    pub fn put(&mut self, at: usize, word: u64, listener_id: u16, now: u32) -> bool {
        let mut at = at;
        let mut tries = 0;
        while tries < 2 {
            let i = if at < 2 * WAYS {
                at
            } else {
                match flow_table::victim(|i| self.words[i], |i| self.seen(i), now) {
                    Some(i) => i,
                    None => return false,
                }
            };
            let entry = self.entry_at(i);
            if let Some(was) = entry.exchange(word) {
                if was != 0 && Word(was).tag() != Word(word).tag() {
                    count(Counter::FlowEvicted);
                }
                uncount_word(was);
                entry.touch(now);
                entry.set_listener_hint(listener_id);
                return true;
            }
            // Changed meanwhile (a FIN, the sweeper, another bucket's
            // insert): the flow's entry as it is now, if it still has one.
            let _ = self.reread();
            at = self.position();
            tries += 1;
        }
        false
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
    pub fn target_id(&self) -> u32 {
        Word(self.word).target_id()
    }

    #[inline(always)]
    pub fn flags(&self) -> u8 {
        Word(self.word).flags()
    }

    /// Replaces the word with `new` if it still holds the word read; the
    /// word replaced, or None if it had changed.
    #[inline(always)]
    fn exchange(&self, new: u64) -> Option<u64> {
        let b = bucket(self.bucket)?;
        // SAFETY: an 8-byte aligned word of a map value that stays
        // allocated; atomic against every other writer.
        let was = unsafe { atomic::cmpxchg_u64(addr_of_mut!((*b).words[self.way]), self.word, new) };
        (was == self.word).then_some(was)
    }

    /// When the flow was last seen ([`flow_table::time_units`]).
    #[inline(always)]
    pub fn seen(&self) -> u32 {
        match bucket(self.bucket) {
            // SAFETY: a field of a map value that stays allocated (a hint).
            Some(b) => unsafe { read_volatile(addr_of!((*b).seen[self.way])) },
            None => 0,
        }
    }

    #[inline(always)]
    pub fn listener_hint(&self) -> u16 {
        match bucket(self.bucket) {
            // SAFETY: as in `seen`.
            Some(b) => unsafe { read_volatile(addr_of!((*b).listener_id[self.way])) },
            None => 0,
        }
    }

    #[inline(always)]
    pub fn set_listener_hint(&self, listener_id: u16) {
        if let Some(b) = bucket(self.bucket) {
            // SAFETY: as in `seen`; a hint, stored whole.
            unsafe { write_volatile(addr_of_mut!((*b).listener_id[self.way]), listener_id) }
        }
    }

    #[inline(always)]
    pub fn touch(&self, now: u32) {
        if let Some(b) = bucket(self.bucket) {
            // SAFETY: as in `seen`; any CPU's recent time is as good.
            unsafe { write_volatile(addr_of_mut!((*b).seen[self.way]), now) }
        }
    }

    /// Marks the flow established (a packet after its first).
    #[inline(always)]
    pub fn again(&self) {
        if self.flags() & flags::AGAIN == 0
            && let Some(b) = bucket(self.bucket)
        {
            // SAFETY: as in `exchange`.
            unsafe {
                atomic::fetch_or_u64(
                    addr_of_mut!((*b).words[self.way]),
                    Word::new(0, 0, flags::AGAIN).0,
                );
            }
        }
    }

    /// Records the client's FIN or RST (`ended`, [`flags`]) and takes the
    /// flow out of its target's count once. False if the entry holds
    /// another flow now.
    #[inline(always)]
    pub fn end(&mut self, ended: u8) -> bool {
        let Some(b) = bucket(self.bucket) else {
            return false;
        };
        // SAFETY: as in `exchange`.
        let word = unsafe { addr_of_mut!((*b).words[self.way]) };
        let mut tries = 0;
        while tries < 4 {
            let old = Word(self.word);
            let new = old.with_flags((old.flags() | ended) & !flags::COUNTED);
            if new == old {
                return true;
            }
            // SAFETY: as in `exchange`.
            let was = unsafe { atomic::cmpxchg_u64(word, old.0, new.0) };
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
