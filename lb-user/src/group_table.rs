//! A group's table: the target id of each slot, encoded into the words of
//! its inner map of `GROUP_TABLES`, narrow or wide (`lb_common::table`).
//! The compiler encodes each table once, as it builds it.
use std::sync::Arc;

use lb_common::{
    MAX_TARGETS,
    table::{self, HEADER_WORDS, MAX_MEMBERS, WIDE},
};

/// A group's table (a consistent-hash table, or a round-robin order), kept
/// as the words the data plane reads, so that applying it copies them as
/// they are. Shared: the table cache, each plan compiled from it and the
/// plan the data plane holds as applied all point at one copy (tables of
/// many groups take hundreds of MB), and comparing two plans' tables is a
/// pointer comparison when they are the same table.
#[derive(Clone)]
pub struct GroupTable(Arc<[u32]>);

impl GroupTable {
    /// The table whose slot `i` names target `slots[i]`.
    pub fn from_slots(slots: &[u32]) -> GroupTable {
        thread_local! {
            static NUMBERS: std::cell::RefCell<Numbers> =
                std::cell::RefCell::default();
        }
        NUMBERS.with_borrow_mut(|numbers| GroupTable(encode(slots, numbers).into()))
    }

    /// The words of its map.
    pub fn words(&self) -> &[u32] {
        &self.0
    }

    /// Its number of slots.
    pub fn len(&self) -> usize {
        self.0[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The target id in slot `i` (`i < len`).
    pub fn get(&self, i: usize) -> u32 {
        let words = self.words();
        lb_common::table::slot(words[1], i as u32, |w| words.get(w as usize).copied())
            .expect("a slot of the table")
    }

    /// The target id of every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// How many slots each target id has (id 0, an empty slot, included),
    /// in one pass over the slots' words.
    pub fn slot_counts(&self) -> Vec<(u32, u32)> {
        let words = self.words();
        let (len, header) = (words[0] as usize, words[1]);
        if header & lb_common::table::WIDE != 0 {
            let mut counts = std::collections::BTreeMap::<u32, u32>::new();
            for &id in &words[lb_common::table::HEADER_WORDS as usize..] {
                *counts.entry(id).or_default() += 1;
            }
            return counts.into_iter().collect();
        }
        // Member number n is word 2 + n; the slots follow the members.
        let numbers = &words[lb_common::table::HEADER_WORDS as usize..];
        let (members, slots) = numbers.split_at(1 + header as usize);
        let mut counts = vec![0u32; members.len()];
        for (i, &pair) in slots.iter().enumerate() {
            counts[(pair & 0xffff) as usize] += 1;
            if 2 * i + 1 < len {
                counts[(pair >> 16) as usize] += 1;
            }
        }
        members
            .iter()
            .zip(counts)
            .filter(|&(_, n)| n > 0)
            .map(|(&id, n)| (id, n))
            .collect()
    }

    /// Whether both are the one shared copy.
    pub fn ptr_eq(a: &GroupTable, b: &GroupTable) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<Vec<u32>> for GroupTable {
    fn from(slots: Vec<u32>) -> GroupTable {
        GroupTable::from_slots(&slots)
    }
}

impl Default for GroupTable {
    /// The empty table.
    fn default() -> GroupTable {
        GroupTable::from_slots(&[])
    }
}

impl PartialEq for GroupTable {
    fn eq(&self, other: &GroupTable) -> bool {
        GroupTable::ptr_eq(self, other) || self.0 == other.0
    }
}

impl Eq for GroupTable {}

impl std::fmt::Debug for GroupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTable")
            .field("slots", &self.len())
            .field("header", &self.0[1])
            .field("words", &self.0.len())
            .finish()
    }
}

/// Scratch space for [`encode`], kept across tables (one per thread that
/// builds them: [`GroupTable::from_slots`]): the member number of each
/// target id (0: not a member of the table at hand). Every entry is 0
/// again after each table.
pub(crate) struct Numbers(Vec<u16>);

impl Default for Numbers {
    fn default() -> Self {
        Numbers(vec![0; MAX_TARGETS as usize])
    }
}

/// The table's words: word 0 the slot count, word 1 the header, then the
/// members and the 16-bit slots (narrow) or the target ids (wide). Target
/// ids are below `MAX_TARGETS` (the compiler checks; a table with any other
/// is written wide).
pub(crate) fn encode(slots: &[u32], numbers: &mut Numbers) -> Vec<u32> {
    let len = u32::try_from(slots.len()).expect("the compiler caps table sizes");
    let index = &mut numbers.0;
    let mut members: Vec<u32> = Vec::new();
    for &id in slots {
        if id == 0 || index.get(id as usize).is_some_and(|&n| n != 0) {
            continue;
        }
        if members.len() as u32 == MAX_MEMBERS || id >= MAX_TARGETS {
            // Too many for 16-bit numbers, or an id without a number: stop
            // counting, the table is wide.
            members.resize(MAX_MEMBERS as usize + 1, 0);
            break;
        }
        members.push(id);
        index[id as usize] = members.len() as u16;
    }
    let header = table::header(len, members.len() as u32);
    let mut words = Vec::with_capacity(table::words(len, header) as usize);
    words.extend([len, header]);
    if header & WIDE != 0 {
        words.extend_from_slice(slots);
    } else {
        // Member number 0 is target 0; numbers 1..=K the members.
        words.push(0);
        words.extend_from_slice(&members);
        debug_assert_eq!(words.len() as u32, HEADER_WORDS + 1 + header);
        let number = |id: u32| {
            if id == 0 {
                0
            } else {
                index[id as usize] as u32
            }
        };
        words.extend(
            slots
                .chunks(2)
                .map(|pair| number(pair[0]) | pair.get(1).map_or(0, |&id| number(id)) << 16),
        );
    }
    for &id in &members {
        if let Some(n) = index.get_mut(id as usize) {
            *n = 0;
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot read back through the data plane's decoder.
    fn decoded(words: &[u32]) -> Vec<u32> {
        let len = words[0];
        (0..len)
            .map(|i| {
                table::slot(words[1], i, |w| words.get(w as usize).copied())
                    .expect("every word the decoder reads is in the table")
            })
            .collect()
    }

    fn check(slots: &[u32], numbers: &mut Numbers) -> Vec<u32> {
        let words = encode(slots, numbers);
        assert_eq!(decoded(&words), slots);
        assert_eq!(
            words.len() as u64,
            table::words(words[0], words[1]),
            "exactly the words the map is sized for"
        );
        assert!(numbers.0.iter().all(|&n| n == 0), "scratch left clean");
        words
    }

    #[test]
    fn a_large_table_of_few_targets_is_narrow_and_half_the_size() {
        let mut numbers = Numbers::default();
        // 100 targets with ids 1001..=1100 over 65,537 slots, unevenly.
        let slots: Vec<u32> = (0..65_537u32).map(|i| 1001 + (i * 7919 % 100)).collect();
        let words = check(&slots, &mut numbers);
        assert_eq!(words[1], 100, "narrow, 100 members");
        assert_eq!(words.len(), 3 + 100 + 32_769);
        assert!(words.len() * 2 < slots.len() + 2 + 300);
    }

    #[test]
    fn empty_slots_odd_lengths_and_small_tables_round_trip() {
        let mut numbers = Numbers::default();
        for slots in [
            vec![],
            vec![5],
            vec![0, 0, 0],
            vec![7, 0, 7, 9, 0, 9, 7],
            vec![7, 0, 7, 9, 0, 9, 7, 7, 9],
            vec![3, 4, 3, 4, 3, 4, 3, 4, 3],
            (1..=100).collect::<Vec<u32>>(), // round robin, equal weights
            vec![MAX_TARGETS - 1; 11],
            vec![1, MAX_TARGETS, 1, 1, 1, 1, 1, 1, 1, 1], // not a target id: wide
        ] {
            check(&slots, &mut numbers);
        }
        assert_eq!(
            encode(&(1..=100).collect::<Vec<_>>(), &mut numbers)[1],
            WIDE
        );
        assert_eq!(encode(&[7, 0, 7, 9, 0, 9, 7], &mut numbers)[1], WIDE);
        assert_eq!(encode(&[7, 0, 7, 9, 0, 9, 7, 7, 9], &mut numbers)[1], 2);
    }

    #[test]
    fn more_members_than_16_bits_number_make_a_wide_table() {
        let mut numbers = Numbers::default();
        let members = MAX_MEMBERS + 1;
        // Four slots per member, so that narrow would be smaller.
        let slots: Vec<u32> = (0..members * 4).map(|i| 1 + i % members).collect();
        let words = check(&slots, &mut numbers);
        assert_eq!(words[1], WIDE);
        // One fewer member fits.
        let slots: Vec<u32> = (0..MAX_MEMBERS * 4).map(|i| 1 + i % MAX_MEMBERS).collect();
        assert_eq!(check(&slots, &mut numbers)[1], MAX_MEMBERS);
    }

    #[test]
    fn a_table_reads_back_its_slots_and_counts_them() {
        let narrow: Vec<u32> = (0..1021u32).map(|i| 11 + i * 7 % 3).collect();
        let with_empty: Vec<u32> = (0..1021u32).map(|i| [0, 5, 6][(i % 3) as usize]).collect();
        let wide: Vec<u32> = (1..=100).collect();
        for slots in [narrow, with_empty, wide, vec![], vec![9; 7]] {
            let table = GroupTable::from_slots(&slots);
            assert_eq!(table.len(), slots.len());
            assert_eq!(table.to_vec(), slots);
            let mut want = std::collections::BTreeMap::<u32, u32>::new();
            for &id in &slots {
                *want.entry(id).or_default() += 1;
            }
            let got: std::collections::BTreeMap<u32, u32> =
                table.slot_counts().into_iter().collect();
            assert_eq!(got, want, "{table:?}");
        }
        assert_ne!(
            GroupTable::from_slots(&[1, 2]),
            GroupTable::from_slots(&[2, 1])
        );
        assert_eq!(GroupTable::default(), GroupTable::from_slots(&[]));
    }
}
