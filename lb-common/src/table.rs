//! The layout of a group table: one inner map of `GROUP_TABLES`, an array
//! of 8-byte elements ([`GroupTableElement`](crate::GroupTableElement)),
//! read as 4-byte words (word `w` is half `w % 2` of element `w / 2`).
//!
//! - Word 0: the number of slots M (0: an empty table).
//! - Word 1: the header. Either the number K of distinct targets the slots
//!   name (a narrow table), or [`WIDE`].
//! - Narrow: word 2+n holds the target id of member number n: word 2 is 0
//!   (number 0 names target 0, which fails closed as a zeroed slot of any
//!   table does), words 3..3+K the K distinct targets the slots name. Then
//!   the M slots follow as 16-bit member numbers, two to a word (slot `i`
//!   is half `i % 2` of word 3+K+i/2, the low half first). A slot is read
//!   with two loads and no branch, which keeps the verifier's work linear
//!   in the slots a program reads (least connections reads up to 17).
//! - Wide: words 2..2+M hold the slots' target ids.
//!
//! The loader writes a table narrow when it has at most [`MAX_MEMBERS`]
//! members and is smaller so: a 65,537-slot table of 100 targets takes
//! 32,872 words instead of 65,539, which halves the memory the kernel
//! allocates and zeroes for every new table (and so the time to apply a
//! policy of many groups). Small tables with as many targets as slots (a
//! round-robin order of equal weights) stay wide. The members live in the
//! same map as the slots, so swapping the map swaps both at once.

/// Header of a wide table (word 1).
pub const WIDE: u32 = 1 << 31;
/// Most members a narrow table holds (16-bit member numbers, 0 reserved).
pub const MAX_MEMBERS: u32 = u16::MAX as u32;
/// Words before the slots of a wide table, and before member number 0 of
/// a narrow one.
pub const HEADER_WORDS: u32 = 2;

/// Words of a narrow table of `slots` slots and `members` members.
pub const fn narrow_words(slots: u32, members: u32) -> u64 {
    HEADER_WORDS as u64 + 1 + members as u64 + (slots as u64).div_ceil(2)
}

/// Words of a wide table of `slots` slots.
pub const fn wide_words(slots: u32) -> u64 {
    HEADER_WORDS as u64 + slots as u64
}

/// The header (word 1) of a table of `slots` slots naming `members`
/// distinct targets: narrow when that is possible and smaller.
pub const fn header(slots: u32, members: u32) -> u32 {
    if members <= MAX_MEMBERS && narrow_words(slots, members) < wide_words(slots) {
        members
    } else {
        WIDE
    }
}

/// Words of a table of `slots` slots with `header`.
pub const fn words(slots: u32, header: u32) -> u64 {
    if header & WIDE != 0 {
        wide_words(slots)
    } else {
        narrow_words(slots, header)
    }
}

/// Elements (8 bytes, two words) of a table of `slots` slots with `header`.
pub const fn elements(slots: u32, header: u32) -> u32 {
    words(slots, header).div_ceil(2) as u32
}

/// The target id in slot `i` (`i < M`) of a table with `header`, reading
/// words through `word` (`None`: the word is outside the map, which the
/// data plane treats as no target). The same code reads the table in the
/// data plane (from the map) and in the loader's tests (from a slice).
#[inline(always)]
pub fn slot(header: u32, i: u32, word: impl Fn(u32) -> Option<u32>) -> Option<u32> {
    if header & WIDE != 0 {
        wide_slot(i, word)
    } else {
        narrow_slot(header, i, word)
    }
}

/// [`slot`] of a wide table.
#[inline(always)]
pub fn wide_slot(i: u32, word: impl Fn(u32) -> Option<u32>) -> Option<u32> {
    word(HEADER_WORDS + i)
}

/// [`slot`] of a narrow table of `members` members.
#[inline(always)]
pub fn narrow_slot(members: u32, i: u32, word: impl Fn(u32) -> Option<u32>) -> Option<u32> {
    let pair = word(HEADER_WORDS + 1 + members + (i >> 1))?;
    let number = (pair >> ((i & 1) * 16)) & 0xffff;
    word(HEADER_WORDS + number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_only_when_it_fits_and_is_smaller() {
        assert_eq!(header(65_537, 100), 100);
        assert_eq!(words(65_537, 100), 3 + 100 + 32_769);
        assert_eq!(header(1_000_003, 65_535), 65_535);
        assert_eq!(header(65_537, 65_535), WIDE, "not smaller");
        assert_eq!(header(1_000_003, 65_536), WIDE, "too many members");
        // A round-robin order of 100 equal weights: as many members as
        // slots, so wide is smaller.
        assert_eq!(header(100, 100), WIDE);
        assert_eq!(header(0, 0), WIDE, "empty: nothing to save");
        assert_eq!(header(1, 1), WIDE);
        assert_eq!(header(9, 2), 2, "3 + 2 + 5 < 2 + 9");
        assert_eq!(header(7, 2), WIDE, "3 + 2 + 4, not below 2 + 7");
    }

    #[test]
    fn elements_hold_every_word_and_no_spare_one() {
        for slots in (0..100).chain([65_537, crate::MAX_TABLE_SIZE]) {
            for members in [0, 1, 2, 50, 100, 65_535, 70_000] {
                let h = header(slots, members);
                let words = words(slots, h);
                let elements = u64::from(elements(slots, h));
                assert!(elements * 2 >= words, "{slots} slots, {members}");
                assert!((elements - 1) * 2 < words, "{slots} slots: a spare element");
            }
        }
    }
}
