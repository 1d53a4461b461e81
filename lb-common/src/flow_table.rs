//! The flow table: `lb`'s own, in place of the kernel's LRU hash maps. Both
//! sides use this module: the data plane to find, insert and evict entries,
//! the loader to size, sweep and read the table, the tests' reference model
//! to predict every eviction.
//!
//! The table is an array of [`Bucket`]s, one cache line each, in one map of
//! both address families. A flow has two candidate buckets ([`Place`]),
//! both derived from one 64-bit keyed hash of its 5-tuple: a lookup reads
//! both lines (the two loads are independent, so their misses overlap), and
//! a new flow goes to the emptier one. With two choices and the loader's
//! sizing (twice as many entries as `max_flows`, [`buckets_for`]) about
//! one new flow in 10,000 finds both buckets full at `max_flows`.
//!
//! An entry is identified by a 39-bit tag of the hash, not by the key
//! (with the bucket's own bits a fingerprint of 48 bits or more). A new
//! flow meets a live flow's tag among its eight candidates about once in
//! 2^36 lookups (at a million new flows a second, about once a day); it
//! then shares that flow's entry: it follows its target if the target is
//! one of its own group's, else chooses again for both.
//!
//! A bucket: a header word (its commit count), four entry words ([`Word`]:
//! tag, target, flags; changed only whole, with compare-and-exchange, so
//! the tag, the target and whether the flow is counted always go together)
//! and each entry's last-seen time and listener hint (hints only: a reader
//! that meets them half-written acts on another flow's recent time or
//! listener hint, which it checks).
//!
//! Victims ([`victim`]): a new flow takes an empty entry of its two
//! buckets, else the entry least worth keeping: one the client ended (FIN
//! or RST), then one seen only once, then the one seen least recently. It
//! never evicts an established flow seen within [`PROTECT_UNITS`]: when
//! both buckets hold only such flows, the new flow goes unremembered
//! (counted). A flood of one-packet flows thus evicts its own entries and
//! idle ones, never a flow that is sending. A TCP packet that is not a SYN
//! and has no entry (a connection under way, or a spoofed ACK) takes an
//! empty entry only ([`first_empty`]), uncounted until its next packet.

use crate::{FAMILY_V4, FlowKey};

/// Entries a bucket holds.
pub const WAYS: usize = 4;

/// One cache line of the table.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The commit count ([`header`]).
    pub header: u64,
    /// The entries' [`Word`]s (0: empty).
    pub words: [u64; WAYS],
    /// What each entry keeps beside its word, hints written without
    /// atomics: the data-plane time of the flow's last packet in
    /// [`TIME_UNIT_NS`] units, wrapping, refreshed at most once per
    /// [`TOUCH_UNITS`];
    pub seen: [u32; WAYS],
    /// and the listener the flow was created under (checked against
    /// `LISTENERS_BY_ID`; it saves the listener hash lookup).
    pub listener_id: [u16; WAYS],
}

const _: () = assert!(core::mem::size_of::<Bucket>() == 64);

/// [`Bucket::header`]: a count of the new flows committed in this bucket
/// as their first. A CPU that inserts a flow reads it (atomically), looks
/// for the flow, puts it, and commits by advancing it with one
/// compare-and-exchange: if another insert committed meanwhile, it looks
/// again, and if it finds the flow's tag in a second entry, it takes that
/// one's target and removes its own. Two CPUs inserting one flow thus agree
/// on its target whatever their timing: whichever commits second read the
/// count after the first committed, and so sees its entry.
pub mod header {
    /// How much one commit advances the header.
    pub const COMMIT: u64 = 1;
}

/// Time unit of [`Bucket::seen`]: 2^20 ns (about 1.05 ms); a u32 of them
/// wraps after 52 days, far beyond the longest idle timeout (a day), and
/// the sweeper deletes entries long before.
pub const TIME_SHIFT: u32 = 20;
pub const TIME_UNIT_NS: u64 = 1 << TIME_SHIFT;
/// An entry's `seen` is refreshed when older than this (just under a
/// second): the packets of a flow seen within it write nothing.
pub const TOUCH_UNITS: u32 = (1_000_000_000 >> TIME_SHIFT) as u32;

/// How much later than its entry's `seen` a flow's last packet may have
/// come: `seen` is refreshed only once it is older than [`TOUCH_UNITS`],
/// and times are rounded down to a unit. So a flow has surely ended only
/// when `seen` is older than its timeout and this ([`outlived`]): an entry
/// outlives its timeout by up to about a second.
pub const LAG_UNITS: u32 = TOUCH_UNITS + 1;
pub const LAG_NS: u64 = (LAG_UNITS as u64) << TIME_SHIFT;

/// Whether a flow whose entry's `seen` is `age_ns` old has gone without
/// packets for longer than `timeout_ns`, whenever within the lag
/// ([`LAG_NS`]) its last packet came.
#[inline(always)]
pub const fn outlived(age_ns: u64, timeout_ns: u64) -> bool {
    age_ns > timeout_ns + LAG_NS
}

/// How far a `seen` may be ahead of a reader's clock and still read as
/// now ([`elapsed`]), about 8.6 s: CPUs read the clock at different
/// moments, and the sweeper once per walk (it reads the clock again for
/// an entry further ahead). A `seen` further ahead is no time a CPU just
/// stamped: an entry left idle across the wrap (more than 26 days), or
/// stamped by a clock that has since jumped back. It reads as that much
/// older than `now` (more than 26 days): ended, and the first to go.
pub const AHEAD_UNITS: u32 = 1 << (33 - TIME_SHIFT);

/// Data-plane time in [`TIME_UNIT_NS`] units, as [`Bucket::seen`] holds it.
#[inline(always)]
pub const fn time_units(now_ns: u64) -> u32 {
    (now_ns >> TIME_SHIFT) as u32
}

/// How long ago `seen` was at `now`, in time units, wrapping; 0 if `seen`
/// is later by at most [`AHEAD_UNITS`]. CPUs read the clock at different
/// moments: another CPU may store a `seen` a little later than this CPU's
/// `now`. Read as unsigned, such a difference would be an age of 52 days:
/// the flow would look ended, or be evicted. A `seen` further ahead reads
/// as the unsigned difference: an entry idle for more than 26 days, whose
/// `seen` has wrapped past half the range, has ended (one idle for more
/// than 52 days reads as young again: the sweeper deletes entries long
/// before, while `lb` runs).
#[inline(always)]
pub fn elapsed(seen: u32, now: u32) -> u32 {
    let d = now.wrapping_sub(seen);
    // 1 if `seen` is `now` or at most AHEAD_UNITS later (without a branch).
    let near = less(u64::from(d.wrapping_neg()), AHEAD_UNITS as u64 + 1);
    d & (near as u32).wrapping_sub(1)
}

/// Whether `seen` is further ahead of `now` than [`elapsed`] reads as now
/// (and less than half the range: not simply in the past).
#[inline(always)]
pub fn far_ahead(seen: u32, now: u32) -> bool {
    let ahead = seen.wrapping_sub(now);
    ahead > AHEAD_UNITS && ahead < 1 << 31
}

/// How long ago `seen` was, in ns, at `now_ns` ([`elapsed`]).
#[inline(always)]
pub fn age_ns(seen: u32, now_ns: u64) -> u64 {
    u64::from(elapsed(seen, time_units(now_ns))) << TIME_SHIFT
}

/// Bits of an entry word's flags.
pub mod flags {
    /// The client sent a SYN (the flow was seen from its start).
    pub const SYN: u8 = 1 << 0;
    /// The client sent a FIN: the flow ends after its group's FIN timeout
    /// without packets.
    pub const FIN: u8 = 1 << 1;
    /// The client sent a RST.
    pub const RST: u8 = 1 << 2;
    /// The flow counts in its target's active flows (cleared, with one
    /// compare-and-exchange, by whoever uncounts it). Set when the flow is
    /// put, or, for a TCP flow first seen without its SYN, with `AGAIN`
    /// at its second packet.
    pub const COUNTED: u8 = 1 << 3;
    /// A packet came after the first: the flow is established, not one
    /// packet of a flood.
    pub const AGAIN: u8 = 1 << 4;
}

/// An entry's word: the tag (bits 24-63), [`flags`] (bits 17-23) and the
/// target id (bits 0-16). Never 0 when in use: a tag has its lowest bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word(pub u64);

const TARGET_BITS: u32 = 17;
const TARGET_MASK: u64 = (1 << TARGET_BITS) - 1;
const FLAGS_SHIFT: u32 = TARGET_BITS;
const FLAGS_MASK: u64 = 0x7f;
const TAG_SHIFT: u32 = 24;
/// The tag's bits in a word.
pub const TAG_MASK: u64 = !((1 << TAG_SHIFT) - 1);

const _: () = assert!(crate::MAX_TARGETS as u64 <= 1 << TARGET_BITS);

impl Word {
    #[inline(always)]
    pub const fn new(tag: u64, target_id: u32, flags: u8) -> Word {
        Word(
            (tag & TAG_MASK)
                | (flags as u64 & FLAGS_MASK) << FLAGS_SHIFT
                | (target_id as u64 & TARGET_MASK),
        )
    }

    #[inline(always)]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    pub const fn tag(self) -> u64 {
        self.0 & TAG_MASK
    }

    #[inline(always)]
    pub const fn target_id(self) -> u32 {
        (self.0 & TARGET_MASK) as u32
    }

    #[inline(always)]
    pub const fn flags(self) -> u8 {
        ((self.0 >> FLAGS_SHIFT) & FLAGS_MASK) as u8
    }

    #[inline(always)]
    pub const fn with_flags(self, flags: u8) -> Word {
        Word(self.0 & !(FLAGS_MASK << FLAGS_SHIFT) | (flags as u64 & FLAGS_MASK) << FLAGS_SHIFT)
    }
}

/// Where a flow may be: its two buckets and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub first: u32,
    pub second: u32,
    /// In a word's tag bits, lowest tag bit set.
    pub tag: u64,
}

/// The flow's place in a table of `mask + 1` buckets (a power of two, at
/// least 2), with the table's random `seed`.
#[inline(always)]
pub const fn place(key: &FlowKey, seed: u64, mask: u32) -> Place {
    let h = hash(key, seed);
    let first = h as u32 & mask;
    let tag = (h & TAG_MASK) | 1 << TAG_SHIFT;
    // The second bucket from the tag (so either bucket and the tag give the
    // other: partial-key cuckoo hashing), never the first.
    let mut second = (first ^ (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32) & mask;
    if second == first {
        second = first ^ 1;
    }
    Place { first, second, tag }
}

/// A 64-bit keyed hash of the 5-tuple and family. Every word of the key
/// goes in (an IPv4 key's upper address words are zero and skipped).
#[inline(always)]
pub const fn hash(key: &FlowKey, seed: u64) -> u64 {
    let ports = key.src_port_be as u64
        | (key.dst_port_be as u64) << 16
        | (key.proto as u64) << 32
        | (key.family as u64) << 40;
    let mut h = mix(
        seed ^ ports,
        (key.src_be[0] as u64) << 32 | key.dst_be[0] as u64,
    );
    if key.family != FAMILY_V4 {
        h = mix(h, (key.src_be[1] as u64) << 32 | key.src_be[2] as u64);
        h = mix(h, (key.src_be[3] as u64) << 32 | key.dst_be[1] as u64);
        h = mix(h, (key.dst_be[2] as u64) << 32 | key.dst_be[3] as u64);
    }
    // Final avalanche (splitmix64's).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[inline(always)]
const fn mix(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

// The candidate scans below have no branch: the verifier would otherwise
// follow each of the eight outcomes through the rest of the program, and an
// index found by a branch is a constant it cannot merge. Comparisons are
// arithmetic on values below 2^63.

/// `x`, as a value the compiler cannot reason about. In the eBPF build the
/// compiler would otherwise see through the arithmetic below, turn it back
/// into comparisons and selects, and emit those as branches: the verifier
/// then follows every combination of outcomes (2^8 per scan of a flow's
/// candidates) where the arithmetic gives it one path.
#[inline(always)]
pub fn opaque(x: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut x = x;
        // SAFETY: an empty instruction sequence that keeps `x` in a register.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
        x
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        x
    }
}

/// 1 if `x` is 0, else 0.
#[inline(always)]
pub fn is_zero(x: u64) -> u64 {
    (opaque(x | x.wrapping_neg()) >> 63) ^ 1
}

/// 1 if `a < b`, else 0 (both below 2^63).
#[inline(always)]
pub fn less(a: u64, b: u64) -> u64 {
    opaque(a.wrapping_sub(b)) >> 63
}

/// `a` if `pick` is 1, `b` if it is 0.
#[inline(always)]
pub fn select(pick: u64, a: u64, b: u64) -> u64 {
    b ^ ((a ^ b) & opaque(pick).wrapping_neg())
}

/// Which of `N` words hold `tag`: bit i for word i (the flow's eight
/// candidates, or one bucket's four).
#[inline(always)]
pub fn matches<const N: usize>(words: &[u64; N], tag: u64) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < N {
        // An empty word's tag is 0, never a flow's. The tags differ in
        // their 40 bits unless the shifted difference is 0, that is unless
        // 1 less than it is negative.
        let differ = (words[i] ^ tag) >> TAG_SHIFT;
        m |= (opaque(differ.wrapping_sub(1)) >> 63) << i;
        i += 1;
    }
    m
}

/// The lowest set bit's index of `m` (1-255).
#[inline(always)]
pub fn lowest(m: u64) -> usize {
    let low = m & m.wrapping_neg();
    let nz = |x: u64| 1 - is_zero(x);
    (nz(low & 0xaa) + 2 * nz(low & 0xcc) + 4 * nz(low & 0xf0)) as usize
}

/// The lowest set bit's index of one bucket's mask `m` (1-15, [`matches`]
/// of its four words): the way a hit is in. Four operations where
/// [`lowest`] takes a dozen, on the path of every packet of a known flow:
/// the lowest bit alone, 1, 2, 4 or 8, gives 0, 1, 2, 3 as half of it
/// less an eighth of it.
#[inline(always)]
pub fn lowest_way(m: u64) -> usize {
    let low = m & m.wrapping_neg();
    ((low >> 1) - (low >> 3)) as usize
}

/// Which of the flow's eight candidate entries holds its tag, if one does:
/// the first in order.
#[inline(always)]
pub fn find(words: &[u64; 2 * WAYS], tag: u64) -> Option<usize> {
    let m = matches(words, tag);
    if m == 0 { None } else { Some(lowest(m)) }
}

/// How much candidate `i` is worth keeping, lowest first, as one number:
/// its class (empty, ended by the client, seen once, established), then
/// how recently it was seen, then `order` (its place in the scan).
#[inline(always)]
fn rank(word: u64, seen: u32, now: u32, order: u64) -> u64 {
    let f = Word(word).flags() as u64;
    let full = 1 - is_zero(word);
    let ended = 1 - is_zero(f & (flags::FIN | flags::RST) as u64);
    let again = 1 - is_zero(f & flags::AGAIN as u64);
    let class = full * (1 + (1 - ended) * (1 + again));
    let recent = (u32::MAX - elapsed(seen, now)) as u64 * full;
    class << 40 | recent << 4 | order
}

const ESTABLISHED: u64 = 3;

/// A new flow does not evict an established flow seen within this long:
/// one whose last packet came within about 8.6 s (`seen` within that and
/// the lag, [`LAG_UNITS`]). When both its buckets hold only such flows, it
/// goes unremembered (counted) rather than break one of them. A flood of
/// one-packet flows thus never evicts a flow that is sending.
pub const PROTECT_UNITS: u32 = (1 << (33 - TIME_SHIFT)) + LAG_UNITS;

/// The entry a new flow takes among its eight candidates (`word(i)` and
/// `seen(i)` in [`find`]'s order) at time `now` ([`time_units`]): the one
/// least worth keeping, on a tie an entry of the emptier bucket, then the
/// first; None when that is an established flow seen within
/// [`PROTECT_UNITS`].
#[inline(always)]
pub fn victim(word: impl Fn(usize) -> u64, seen: impl Fn(usize) -> u32, now: u32) -> Option<usize> {
    let (mut first, mut second) = (0, 0);
    let mut i = 0;
    while i < WAYS {
        first += 1 - is_zero(word(i));
        second += 1 - is_zero(word(WAYS + i));
        i += 1;
    }
    // The emptier bucket comes first in the order, so it wins ties.
    let start = less(second, first) * WAYS as u64;
    let mut best = u64::MAX >> 1;
    let mut best_i = 0;
    let mut i = 0;
    while i < 2 * WAYS {
        let order = (i as u64 + 2 * WAYS as u64 - start) % (2 * WAYS) as u64;
        let r = rank(word(i), seen(i), now, order);
        let better = less(r, best);
        best = select(better, r, best);
        best_i = select(better, i as u64, best_i);
        i += 1;
    }
    let i = best_i as usize & (2 * WAYS - 1);
    let protected = best >> 40 == ESTABLISHED && elapsed(seen(i), now) < PROTECT_UNITS;
    if protected { None } else { Some(i) }
}

/// The empty entry [`victim`] would choose among the flow's eight
/// candidates (`word(i)` in [`find`]'s order), found with less work: the
/// first empty entry of the emptier bucket (the first bucket on a tie).
/// None if no candidate is empty.
#[inline(always)]
pub fn first_empty(word: impl Fn(usize) -> u64) -> Option<usize> {
    let mut e = 0;
    let mut i = 0;
    while i < 2 * WAYS {
        e |= is_zero(word(i)) << i;
        i += 1;
    }
    if e == 0 {
        return None;
    }
    let count = |x: u64| (x & 1) + (x >> 1 & 1) + (x >> 2 & 1) + (x >> 3 & 1);
    // 1 if the second bucket has more empty entries: it comes first.
    let start = less(count(e & 0xf), count(e >> WAYS)) * WAYS as u64;
    let rotated = ((e | e << (2 * WAYS)) >> start) & 0xff;
    Some((lowest(rotated) + start as usize) & (2 * WAYS - 1))
}

/// Buckets of a table that is to hold `max_flows` flows: a power of two,
/// with at least twice as many entries (at half load about one new flow in
/// 10,000 finds both its buckets full; fuller, more do).
pub const fn buckets_for(max_flows: u32) -> u32 {
    let buckets = (max_flows as u64).div_ceil(WAYS as u64 / 2);
    let mut n = 2;
    while (n as u64) < buckets {
        n *= 2;
    }
    n
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn key(i: u32, family: u8) -> FlowKey {
        let mut k = FlowKey {
            src_be: [0x0a00_0000 | i, 0, 0, 0],
            dst_be: [0x0a00_0331, 0, 0, 0],
            src_port_be: (i % 60_000) as u16,
            dst_port_be: 80,
            proto: 6,
            family,
            _pad: [0; 2],
        };
        if family != FAMILY_V4 {
            k.src_be = [0xfd00_0000, 0, i, 1];
            k.dst_be = [0xfd00_0000, 0, 0, 0x49];
        }
        k
    }

    #[test]
    fn first_empty_is_the_victim_when_an_entry_is_empty() {
        let full = Word::new(1 << TAG_SHIFT, 5, flags::COUNTED | flags::AGAIN).0;
        for pattern in 0u32..256 {
            let words: [u64; 8] =
                core::array::from_fn(|i| if pattern >> i & 1 == 1 { 0 } else { full });
            let seen = [7u32; 8];
            let expect = if pattern == 0 {
                None
            } else {
                victim(|i| words[i], |i| seen[i], 10)
            };
            assert_eq!(first_empty(|i| words[i]), expect, "empties {pattern:08b}");
        }
    }

    #[test]
    fn lowest_way_is_the_lowest_set_bit() {
        for m in 1u64..16 {
            assert_eq!(lowest_way(m), m.trailing_zeros() as usize, "{m:04b}");
            assert_eq!(lowest_way(m), lowest(m), "{m:04b}");
        }
    }

    #[test]
    fn a_seen_time_later_than_now_is_no_age() {
        assert_eq!(elapsed(100, 250), 150);
        assert_eq!(elapsed(u32::MAX - 9, 5), 15, "across the wrap");
        assert_eq!(elapsed(101, 100), 0, "another CPU's later clock read");
        assert_eq!(elapsed(100 + AHEAD_UNITS, 100), 0);
        assert!(!far_ahead(100 + AHEAD_UNITS, 100));
        assert_eq!(elapsed(100, 100 + (1 << 31) - 1), (1 << 31) - 1);
        assert_eq!(age_ns(time_units(2_000_000_000), 1_000_000_000), 0);
        assert!(age_ns(0, 3_000_000_000) > 2_900_000_000);
    }

    /// An entry left idle for more than half the range (26 days: `lb`
    /// stopped, no sweeper) is not young: its `seen` reads as ahead of now,
    /// further than clock reads differ.
    #[test]
    fn a_seen_time_far_ahead_of_now_is_old() {
        const DAY: u32 = (86_400_000_000_000u64 >> TIME_SHIFT) as u32;
        let now: u32 = 7_000;
        let seen = now.wrapping_sub(30 * DAY);
        assert!(far_ahead(seen, now));
        assert_eq!(elapsed(seen, now), 30 * DAY);
        let now_ns = u64::from(now) << TIME_SHIFT;
        assert!(outlived(age_ns(seen, now_ns), 86_400_000_000_000));
        let ahead = now + AHEAD_UNITS + 1;
        assert!(far_ahead(ahead, now));
        assert_eq!(elapsed(ahead, now), (AHEAD_UNITS + 1).wrapping_neg());
        // Evicted before any flow seen in the last 26 days.
        let words = [Word::new(1 << TAG_SHIFT, 5, flags::COUNTED | flags::AGAIN).0; 8];
        let seen_at = |i: usize| {
            if i == 5 {
                ahead
            } else {
                now.wrapping_sub(100_000)
            }
        };
        assert_eq!(victim(|i| words[i], seen_at, now), Some(5));
    }

    /// A flow's last packet may come up to the lag after its entry's
    /// `seen`: only an age past the timeout and the lag is surely idle.
    #[test]
    fn a_flow_outlives_its_timeout_by_the_lag() {
        let t = 1_000_000_000;
        // A flow seen 1.5 s ago with packets every half second: its last
        // came at most the touch interval after `seen`.
        assert!(!outlived(1_500_000_000, t));
        assert!(!outlived(t + LAG_NS, t));
        assert!(outlived(t + LAG_NS + 1, t));
        assert!(LAG_NS > u64::from(TOUCH_UNITS) << TIME_SHIFT);
    }

    #[test]
    fn words_keep_their_parts() {
        let p = place(&key(7, FAMILY_V4), 1, 1023);
        let w = Word::new(p.tag, 131_071, flags::COUNTED | flags::SYN);
        assert_eq!(w.tag(), p.tag);
        assert_eq!(w.target_id(), 131_071);
        assert_eq!(w.flags(), flags::COUNTED | flags::SYN);
        assert!(!w.is_empty());
        let w2 = w.with_flags(flags::FIN);
        assert_eq!(
            (w2.tag(), w2.target_id(), w2.flags()),
            (p.tag, 131_071, flags::FIN)
        );
    }

    #[test]
    fn places_differ_by_family_seed_and_key() {
        let a = place(&key(1, FAMILY_V4), 1, (1 << 16) - 1);
        assert_ne!(a.first, a.second);
        assert_ne!(a, place(&key(1, crate::FAMILY_V6), 1, (1 << 16) - 1));
        assert_ne!(a, place(&key(1, FAMILY_V4), 2, (1 << 16) - 1));
        assert_ne!(a, place(&key(2, FAMILY_V4), 1, (1 << 16) - 1));
    }

    #[test]
    fn sizes_leave_room() {
        assert_eq!(buckets_for(1024), 512);
        assert_eq!(buckets_for(1 << 20), 1 << 19);
        assert_eq!(buckets_for(33_554_432), 1 << 24);
        for n in [1024u32, 5000, 1 << 20, 3_000_000] {
            assert!(buckets_for(n) as u64 * WAYS as u64 >= 2 * n as u64);
        }
    }

    /// A table in memory, filled as the data plane fills it (victims as
    /// [`victim`] picks them), for the simulations below.
    struct Sim {
        buckets: Vec<Bucket>,
        mask: u32,
        evicted_live: u64,
        refused: u64,
    }

    impl Sim {
        fn new(buckets: u32) -> Sim {
            Sim {
                buckets: std::vec![Bucket::default(); buckets as usize],
                mask: buckets - 1,
                evicted_live: 0,
                refused: 0,
            }
        }

        fn candidates(&self, p: &Place) -> ([u64; 8], [u32; 8]) {
            let (a, b) = (
                &self.buckets[p.first as usize],
                &self.buckets[p.second as usize],
            );
            let mut words = [0; 8];
            let mut seen = [0; 8];
            words[..WAYS].copy_from_slice(&a.words);
            words[WAYS..].copy_from_slice(&b.words);
            seen[..WAYS].copy_from_slice(&a.seen);
            seen[WAYS..].copy_from_slice(&b.seen);
            (words, seen)
        }

        /// One packet of flow `k` at `now`; `again`: it is not the first.
        fn packet(&mut self, k: &FlowKey, now: u32) {
            let p = place(k, 42, self.mask);
            let (words, seen) = self.candidates(&p);
            let at = |i: usize| {
                let b = if i < WAYS { p.first } else { p.second };
                (b as usize, i % WAYS)
            };
            if let Some(i) = find(&words, p.tag) {
                let (b, w) = at(i);
                let word = Word(self.buckets[b].words[w]);
                self.buckets[b].words[w] = word.with_flags(word.flags() | flags::AGAIN).0;
                self.buckets[b].seen[w] = now;
                return;
            }
            let Some(i) = victim(|i| words[i], |i| seen[i], now) else {
                self.refused += 1;
                return;
            };
            if Word(words[i]).flags() & flags::AGAIN != 0 {
                self.evicted_live += 1;
            }
            let (b, w) = at(i);
            self.buckets[b].words[w] = Word::new(p.tag, 1, flags::COUNTED).0;
            self.buckets[b].seen[w] = now;
        }

        fn holds(&self, k: &FlowKey) -> bool {
            let p = place(k, 42, self.mask);
            find(&self.candidates(&p).0, p.tag).is_some()
        }
    }

    /// Established flows (two packets each, a thousand a unit of time)
    /// fill a table to `load` of its entries: how many could not be held.
    fn fill(load: f64) -> (u64, u64) {
        let buckets = 1 << 14;
        let mut sim = Sim::new(buckets);
        let n = (buckets as f64 * WAYS as f64 * load) as u32;
        for i in 0..n {
            let k = key(i, FAMILY_V4);
            sim.packet(&k, i / 1000);
            sim.packet(&k, i / 1000);
        }
        (sim.evicted_live + sim.refused, n as u64)
    }

    /// At the loader's sizing (at most half the entries used) about one
    /// flow in 10,000 finds both its buckets full of established flows and
    /// goes unremembered; fuller tables lose more.
    #[test]
    fn two_choices_hold_nearly_every_flow_at_half_load() {
        let (lost, n) = fill(0.5);
        assert!(lost * 5000 <= n, "{lost} of {n} at 50 %");
        let (lost, n) = fill(0.75);
        assert!(lost * 50 <= n, "{lost} of {n} at 75 %");
    }

    /// A flood of one-packet flows, 16 times the table, does not evict
    /// established flows that keep sending (the table half full of them).
    #[test]
    fn a_flood_of_one_packet_flows_leaves_established_flows() {
        let buckets = 1 << 12;
        let mut sim = Sim::new(buckets);
        let live: Vec<FlowKey> = (0..buckets * 2).map(|i| key(i, FAMILY_V4)).collect();
        let mut now = 0;
        for k in &live {
            sim.packet(k, now);
            sim.packet(k, now);
        }
        for j in 0..buckets * WAYS as u32 * 16 {
            // About a million packets a second.
            now = j / 1024;
            sim.packet(&key(1_000_000 + j, crate::FAMILY_V6), now);
            // Every established flow sends now and then.
            if j % 64 == 0 {
                let k = &live[(j / 64) as usize % live.len()];
                sim.packet(k, now);
            }
        }
        std::println!("refused: {}", sim.refused);
        let kept = live.iter().filter(|k| sim.holds(k)).count();
        assert_eq!(kept, live.len(), "{} evicted", live.len() - kept);
        assert_eq!(sim.evicted_live, 0);
    }
}
