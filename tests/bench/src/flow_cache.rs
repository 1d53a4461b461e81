//! The flow cache of the floor (`FLOW_CACHE`, main's design: see
//! `floor`), read through a memory mapping: how often its slots were written. A writer moves a
//! slot's sequence from even to odd and on to the next even value, so the
//! sequences' growth over a test run, halved, is the number of writes; the
//! data plane writes a flow's slot after every packet that was not answered
//! by the cache and went to the flow table (`ebpf/src/lru/cache.rs`),
//! so for packets that are neither SYN, FIN nor RST, writes are the cache's
//! misses.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::MapData;

use crate::floor::common::FlowCacheSlot;

/// A read-only mapping of the flow cache's slots.
pub struct FlowCacheView {
    ptr: NonNull<FlowCacheSlot>,
    slots: usize,
}

impl FlowCacheView {
    /// The flow cache `map` of `slots` slots (`Floor::flow_cache`).
    pub fn of(map: &MapData, slots: u32) -> Result<FlowCacheView> {
        ensure!(slots > 0, "the flow cache is off");
        let len = slots as usize * size_of::<FlowCacheSlot>();
        // SAFETY: a new shared, read-only mapping of an mmap-able array of
        // `slots` values of 64 bytes (the values of such an array start
        // on a page and are stored back to back); it keeps the map alive
        // until `drop` unmaps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap FLOW_CACHE");
        }
        let ptr = NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(FlowCacheView {
            ptr,
            slots: slots as usize,
        })
    }

    /// Each slot's write sequence (the low half of `seq_gen`).
    pub fn sequences(&self) -> Vec<u32> {
        (0..self.slots)
            .map(|i| {
                // SAFETY: slot `i` is inside the mapping; the data plane
                // writes it concurrently, so it is read as one volatile
                // aligned 8-byte load.
                let seq_gen = unsafe {
                    std::ptr::read_volatile(std::ptr::addr_of!((*self.ptr.as_ptr().add(i)).seq_gen))
                };
                seq_gen as u32
            })
            .collect()
    }

    /// Slot writes since the sequences were `before`.
    pub fn writes_since(&self, before: &[u32]) -> u64 {
        self.sequences()
            .iter()
            .zip(before)
            .map(|(now, then)| u64::from(now.wrapping_sub(*then) / 2))
            .sum()
    }
}

impl Drop for FlowCacheView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `of` mapped; nothing refers to it
        // after.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.slots * size_of::<FlowCacheSlot>(),
            )
        };
    }
}
