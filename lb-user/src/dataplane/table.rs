//! The flow table as the loader sees it: `FLOW_TABLE` through a memory
//! mapping (`lb_common::flow_table`), read and changed without a syscall
//! per entry. The loader changes an entry's word only with atomic
//! operations, as the data plane does, so it never undoes or doubles a
//! change of the data plane's: a deleted flow is taken out of its target's
//! count by whoever cleared its word.
use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use lb_common::{
    FlowKey,
    flow_table::{self, Bucket, WAYS, Word},
    map_names as names,
};

use super::{
    DataplaneError,
    maps::{io_err, map_err},
    mmap::Mapping,
    sweep::ActiveCounts,
};

const BUCKET: usize = std::mem::size_of::<Bucket>();

/// One entry as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub bucket: u32,
    pub way: usize,
    pub word: Word,
    /// [`flow_table::time_units`] of the flow's last packet.
    pub seen: u32,
    pub listener_id: u16,
}

/// The mapped table.
pub struct FlowTable {
    mapping: Mapping,
    buckets: u32,
}

impl FlowTable {
    /// Maps the table `map` of `buckets` buckets.
    pub(super) fn new(map: &MapData, buckets: u32) -> Result<FlowTable, DataplaneError> {
        let mapping = Mapping::new(map.fd().as_fd(), buckets as usize * BUCKET)
            .map_err(io_err(names::FLOW_TABLE))?;
        Ok(FlowTable { mapping, buckets })
    }

    /// Maps a table held elsewhere (another process's, found by id): its
    /// size is the map's.
    pub fn open(map: &MapData) -> Result<FlowTable, DataplaneError> {
        let buckets = map
            .info()
            .map_err(map_err(names::FLOW_TABLE))?
            .max_entries();
        FlowTable::new(map, buckets)
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    fn word(&self, bucket: u32, way: usize) -> &AtomicU64 {
        let at = bucket as usize * BUCKET + std::mem::offset_of!(Bucket, words) + way * 8;
        self.mapping
            .atomic_u64_at(at)
            .expect("bucket and way inside the table")
    }

    /// The entry at (`bucket`, `way`), None if empty.
    pub fn entry(&self, bucket: u32, way: usize) -> Option<EntryView> {
        let word = Word(self.word(bucket, way).load(Ordering::Acquire));
        if word.is_empty() {
            return None;
        }
        let base = bucket as usize * BUCKET;
        let seen_at = base + std::mem::offset_of!(Bucket, seen) + way * 4;
        let listener_at = base + std::mem::offset_of!(Bucket, listener_id) + way * 2;
        Some(EntryView {
            bucket,
            way,
            word,
            seen: self.mapping.read_at(seen_at).unwrap_or(0),
            listener_id: self.mapping.read_at(listener_at).unwrap_or(0),
        })
    }

    /// Every entry in use, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = EntryView> + '_ {
        (0..self.buckets).flat_map(move |b| (0..WAYS).filter_map(move |w| self.entry(b, w)))
    }

    /// Empties `entry` if its word is still the one read; true if this call
    /// emptied it.
    pub fn clear(&self, entry: &EntryView) -> bool {
        self.word(entry.bucket, entry.way)
            .compare_exchange(entry.word.0, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Deletes `entry` if it is as read; its flow leaves its target's count
    /// (`active`) if it was counted. True if this call deleted it.
    pub fn delete(&self, entry: &EntryView, active: &ActiveCounts) -> bool {
        if !self.clear(entry) {
            return false;
        }
        if entry.word.flags() & lb_common::flow_table::flags::COUNTED != 0 {
            active.add(entry.word.target_id(), -1);
        }
        true
    }

    /// Writes an entry as the data plane would have made it (a test
    /// filling buckets), whatever was there.
    #[cfg(feature = "testing")]
    pub fn put(&self, bucket: u32, way: usize, word: Word, seen: u32, listener_id: u16) {
        let base = bucket as usize * BUCKET;
        self.mapping
            .write_at(base + std::mem::offset_of!(Bucket, seen) + way * 4, seen);
        self.mapping.write_at(
            base + std::mem::offset_of!(Bucket, listener_id) + way * 2,
            listener_id,
        );
        self.word(bucket, way).store(word.0, Ordering::Release);
    }

    /// The entry of the flow `key`, with the table's `seed`, if it has one.
    pub fn find(&self, key: &FlowKey, seed: u64) -> Option<EntryView> {
        let place = flow_table::place(key, seed, self.buckets - 1);
        let mut words = [0; 2 * WAYS];
        for (i, w) in words.iter_mut().enumerate() {
            let b = if i < WAYS { place.first } else { place.second };
            *w = self.word(b, i % WAYS).load(Ordering::Acquire);
        }
        let i = flow_table::find(&words, place.tag)?;
        let b = if i < WAYS { place.first } else { place.second };
        self.entry(b, i % WAYS)
    }
}
