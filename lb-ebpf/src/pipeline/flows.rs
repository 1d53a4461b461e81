//! The flow table (`FLOW_TABLE`, `lb_common::flow_table`): a flow's two
//! buckets read, its entry found by tag, entries changed with
//! compare-and-exchange, new flows committed in their first bucket.
//!
//! Concurrency, on every CPU kind (no ordering is assumed of plain loads
//! and stores; atomic operations are fully ordered):
//! - An entry's word (tag, target, flags) changes only by
//!   compare-and-exchange against the word read, so a change meant for one
//!   flow never lands on another that took its entry meanwhile, nor on an
//!   entry the sweeper emptied. Whoever clears `COUNTED` (the client's FIN
//!   or RST, a re-selection, an eviction, the sweeper) takes the flow out
//!   of its target's count, exactly once.
//! - `seen` and the listener hint are hints, stored plainly. A new entry's
//!   are stored before its word: the exchange that publishes the word is
//!   fully ordered, so a reader that reads the word, then them (the
//!   sweeper), never pairs a new flow's word with the time of the entry's
//!   last flow and deletes it as ended. A CPU whose exchange then fails has
//!   left a recent time and its listener in another flow's entry: that
//!   flow looks fresh a while longer, and its next packet rewrites the
//!   hint. Otherwise a reader may pair a word with another flow's hints,
//!   which costs at most a listener hash lookup or a refresh.
//! - A new flow is committed in its first bucket's header
//!   (`lb_common::flow_table::header`): two CPUs that miss the same flow
//!   at once (a flow on two queues) agree on its target without waiting
//!   for each other, whatever the timing.
//!
//! An entry is held as a pointer to its bucket and a way; the two bucket
//! pointers are looked up once per packet.
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use lb_common::{
    Config, Counter, FlowKey,
    flow_table::{self, Bucket, Place, WAYS, Word, flags, header},
};

use super::{FLOW_TABLE, atomic, counters::count, select::active_add};

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

/// A flow's place, its two buckets, and what their words held when read
/// (and their last-seen times, read only by a new flow's
/// [`Probe::commits`]: a hit needs its own alone).
pub struct Probe {
    place: Place,
    first: *mut Bucket,
    second: *mut Bucket,
    words: [u64; 2 * WAYS],
    seen: [u32; 2 * WAYS],
}

/// One entry: its bucket, way, and its word as last read.
#[derive(Clone, Copy)]
pub struct Entry {
    bucket: *mut Bucket,
    way: usize,
    pub word: u64,
}

impl Probe {
    /// The flow's two buckets; None if the table is off (before the
    /// loader's first write) or a bucket cannot be had. Their words are
    /// read by [`Probe::entry`] (a packet of a known flow) and
    /// [`Probe::commits`] (a new flow).
    #[inline(always)]
    pub fn read(flow: &FlowKey, settings: &Settings) -> Option<Probe> {
        if settings.mask == 0 {
            return None;
        }
        let place = flow_table::place(flow, settings.seed, settings.mask);
        Some(Probe {
            first: FLOW_TABLE.get_ptr_mut(place.first)?,
            second: FLOW_TABLE.get_ptr_mut(place.second)?,
            place,
            words: [0; 2 * WAYS],
            seen: [0; 2 * WAYS],
        })
    }

    /// The words of `bucket`.
    #[inline(always)]
    fn words_of(bucket: *mut Bucket) -> [u64; WAYS] {
        let mut words = [0; WAYS];
        let mut i = 0;
        while i < WAYS {
            // SAFETY: as in `reread`.
            words[i] = unsafe { read_volatile(addr_of!((*bucket).words[i])) };
            i += 1;
        }
        words
    }

    #[inline(always)]
    fn reread(&mut self) {
        let (first, second) = (self.first, self.second);
        let mut i = 0;
        while i < WAYS {
            // SAFETY: aligned fields of map values that stay allocated while
            // the program runs; volatile, since other CPUs change them.
            unsafe {
                self.words[i] = read_volatile(addr_of!((*first).words[i]));
                self.words[WAYS + i] = read_volatile(addr_of!((*second).words[i]));
            }
            i += 1;
        }
    }

    /// The candidates' last-seen times.
    #[inline(always)]
    fn read_seen(&self) -> [u32; 2 * WAYS] {
        let mut seen = [0; 2 * WAYS];
        let (first, second) = (self.first, self.second);
        let mut i = 0;
        while i < WAYS {
            // SAFETY: as in `reread`.
            unsafe {
                seen[i] = read_volatile(addr_of!((*first).seen[i]));
                seen[WAYS + i] = read_volatile(addr_of!((*second).seen[i]));
            }
            i += 1;
        }
        seen
    }

    /// The flow's entry, if it has one: its first bucket is looked at
    /// first, and the second only if the first does not hold the flow (a
    /// new flow goes to its first bucket unless the second is emptier, so
    /// most flows are found with one cache line; the second line's load is
    /// started at once all the same, so that a flow in its second bucket
    /// does not wait for two misses one after the other).
    #[inline(always)]
    pub fn entry(&self) -> Option<Entry> {
        // SAFETY: as in `reread`; the value only starts the line's load.
        let _ = unsafe { read_volatile(addr_of!((*self.second).words[0])) };
        let tag = self.place.tag;
        let words = Self::words_of(self.first);
        let m = flow_table::matches(&words, tag);
        if m != 0 {
            let way = flow_table::lowest_way(m) & (WAYS - 1);
            return Some(Entry {
                bucket: self.first,
                way,
                word: words[way],
            });
        }
        let words = Self::words_of(self.second);
        let m = flow_table::matches(&words, tag);
        if m != 0 {
            let way = flow_table::lowest_way(m) & (WAYS - 1);
            return Some(Entry {
                bucket: self.second,
                way,
                word: words[way],
            });
        }
        None
    }

    /// Which candidates other than `mine` (any value above 7: none is
    /// mine) hold the flow's tag: bit i for candidate i.
    #[inline(always)]
    pub fn others(&self, mine: usize) -> u64 {
        let m = flow_table::matches(&self.words, self.place.tag);
        m & !(1u64 << (mine & 63))
    }

    /// The first candidate of the mask `m` ([`Probe::others`]), or
    /// `2 * WAYS` if it is empty (no branch).
    #[inline(always)]
    pub fn position_in(m: u64) -> usize {
        let none = flow_table::is_zero(m) as usize;
        none * 2 * WAYS + (1 - none) * flow_table::lowest(m)
    }

    /// Candidate `i` (0-7) as last read.
    #[inline(always)]
    pub fn entry_at(&self, i: usize) -> Entry {
        let i = i & (2 * WAYS - 1);
        Entry {
            bucket: if i < WAYS { self.first } else { self.second },
            way: i & (WAYS - 1),
            word: self.words[i],
        }
    }

    #[inline(always)]
    pub fn tag(&self) -> u64 {
        self.place.tag
    }

    /// The commit count of the flow's first bucket ([`header`]), read with
    /// a fully ordered atomic operation: every read of the words after it
    /// sees the entries of the commits it counts, on every CPU kind.
    #[inline(always)]
    pub fn commits(&mut self) -> u64 {
        // SAFETY: the header is an 8-byte aligned word of a map value that
        // stays allocated; every writer uses atomic operations.
        let commits = unsafe { atomic::fetch_add_u64(addr_of_mut!((*self.first).header), 0) };
        self.reread();
        commits
    }

    /// Commits an insert made after [`Probe::commits`] returned `seen`:
    /// true if no other insert committed in the bucket since.
    #[inline(always)]
    pub fn commit(&self, seen: u64) -> bool {
        // SAFETY: as in `commits`.
        let was = unsafe {
            atomic::cmpxchg_u64(
                addr_of_mut!((*self.first).header),
                seen,
                seen.wrapping_add(header::COMMIT),
            )
        };
        was == seen
    }

    /// Removes candidate `i` (none if above 7) if it still holds the flow
    /// (its tag), taking it out of its target's count if it was counted.
    #[inline(always)]
    pub fn remove(&mut self, i: usize) {
        if i >= 2 * WAYS {
            return;
        }
        let mut entry = self.entry_at(i);
        let mut tries = 0;
        while tries < 2 {
            if Word(entry.word).tag() != self.place.tag {
                return;
            }
            match entry.exchange(0) {
                Some(was) => {
                    uncount_word(was);
                    return;
                }
                // SAFETY: as in `Entry::exchange`.
                None => entry.word = unsafe { read_volatile(entry.word_ptr()) },
            }
            tries += 1;
        }
    }

    /// Puts `word` (the flow's, new) in candidate `at` (its own entry, as
    /// [`Probe::position`] found it) or, when `at` is `2 * WAYS`, in the
    /// entry least worth keeping; the evicted flow, if counted, leaves its
    /// target's count. The candidate taken, or [`Put::Full`] if every
    /// candidate is an established flow in use (the flow goes
    /// unremembered), or [`Put::Changed`] if the entry changed since it was
    /// read (another insert, the client's FIN on the flow it held, the
    /// sweeper).
    #[inline(always)]
    pub fn put(&mut self, at: usize, word: u64, listener_id: u16, now: u32) -> Put {
        let i = if at < 2 * WAYS {
            at
        } else if let Some(i) = flow_table::first_empty(|i| self.words[i]) {
            // What `victim` would choose, with less work: a table at its
            // size has empty entries in most pairs of buckets.
            i
        } else {
            self.seen = self.read_seen();
            match flow_table::victim(|i| self.words[i], |i| self.seen[i], now) {
                Some(i) => i,
                None => return Put::Full,
            }
        };
        let entry = self.entry_at(i);
        // The hints first: the exchange publishes them with the word.
        entry.touch(now);
        entry.set_listener_hint(listener_id);
        let Some(was) = entry.exchange(word) else {
            return Put::Changed;
        };
        if was != 0 && Word(was).tag() != Word(word).tag() {
            count(Counter::FlowEvicted);
        }
        uncount_word(was);
        Put::At(i)
    }

    /// The empty candidate a flow that held no entry when read may take
    /// without taking any flow's (the one [`Probe::put`] would choose
    /// first), if one is and the flow still holds none: the candidates'
    /// words read again for it, so that of two CPUs that miss the flow at
    /// once, the one that looks second finds the first's entry and takes no
    /// other.
    #[inline(always)]
    pub fn first_empty(&mut self) -> Option<usize> {
        self.reread();
        if flow_table::matches(&self.words, self.place.tag) != 0 {
            return None;
        }
        flow_table::first_empty(|i| self.words[i])
    }
}

/// What [`Probe::put`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Put {
    At(usize),
    Full,
    Changed,
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
        // SAFETY: an 8-byte aligned word of a map value that stays
        // allocated; atomic against every other writer.
        let was = unsafe { atomic::cmpxchg_u64(self.word_ptr(), self.word, new) };
        (was == self.word).then_some(was)
    }

    /// The entry's word in its bucket.
    #[inline(always)]
    fn word_ptr(&self) -> *mut u64 {
        // SAFETY: the bucket is a map value that stays allocated while the
        // program runs; `way` is below `WAYS`.
        unsafe { addr_of_mut!((*self.bucket).words[self.way & (WAYS - 1)]) }
    }

    /// When the flow was last seen ([`flow_table::time_units`]).
    #[inline(always)]
    pub fn seen(&self) -> u32 {
        // SAFETY: a field of a map value that stays allocated (a hint).
        unsafe { read_volatile(addr_of!((*self.bucket).seen[self.way & (WAYS - 1)])) }
    }

    #[inline(always)]
    pub fn listener_hint(&self) -> u16 {
        // SAFETY: as in `seen`.
        unsafe { read_volatile(addr_of!((*self.bucket).listener_id[self.way & (WAYS - 1)])) }
    }

    #[inline(always)]
    pub fn set_listener_hint(&self, listener_id: u16) {
        // SAFETY: as in `seen`; a hint, stored whole.
        unsafe {
            write_volatile(
                addr_of_mut!((*self.bucket).listener_id[self.way & (WAYS - 1)]),
                listener_id,
            )
        }
    }

    #[inline(always)]
    pub fn touch(&self, now: u32) {
        // SAFETY: as in `seen`; any CPU's recent time is as good.
        unsafe {
            write_volatile(
                addr_of_mut!((*self.bucket).seen[self.way & (WAYS - 1)]),
                now,
            )
        }
    }

    /// Marks the flow established (a packet after its first). A flow that
    /// is neither counted nor ended (remembered from a TCP packet that was
    /// not a SYN: `select`) counts in its target's active flows from now
    /// on, once. One attempt, from the word read: if it changed, whoever
    /// changed it decided (an atomic or would leave the flag alone in a
    /// word the sweeper just emptied: an entry of no flow).
    #[inline(always)]
    pub fn again(&self) {
        let f = self.flags();
        if f & flags::AGAIN != 0 {
            return;
        }
        let counts = f & (flags::COUNTED | flags::FIN | flags::RST) == 0;
        let old = Word(self.word);
        let new = old.with_flags(f | flags::AGAIN | if counts { flags::COUNTED } else { 0 });
        if self.exchange(new.0).is_some() && counts {
            active_add(old.target_id(), 1);
        }
    }

    /// Takes the flow out of its target's count, if it is counted and the
    /// entry is still as read (one attempt: if it changed, whoever replaces
    /// or ends it uncounts it).
    #[inline(always)]
    pub fn uncount(self) {
        let old = Word(self.word);
        if old.flags() & flags::COUNTED == 0 {
            return;
        }
        if self
            .exchange(old.with_flags(old.flags() & !flags::COUNTED).0)
            .is_some()
        {
            active_add(old.target_id(), -1);
        }
    }

    /// Records the client's FIN or RST (`ended`, [`flags`]) and takes the
    /// flow out of its target's count once. False if the entry holds
    /// another flow now.
    #[inline(always)]
    pub fn end(&mut self, ended: u8) -> bool {
        let word = self.word_ptr();
        let mut tries = 0;
        while tries < 2 {
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
