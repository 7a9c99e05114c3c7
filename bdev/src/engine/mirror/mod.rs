//! Redundant primaries: devices that mirror the current image, block for
//! block (LBA `n` of the volume is block `n` of each primary), while the
//! base device keeps the baseline and the log. The log stays the truth:
//! a write completes once the log and every primary that takes writes have
//! it, and a primary that fails only degrades redundancy.
//!
//! What a primary lacks is its dirty map, a bit per volume block. A
//! write a primary did not get (it was degraded, the write failed on it,
//! or it overlapped a copy still in flight there) sets its bits when it
//! retires; reads go to a primary only for blocks whose bit is clear, and
//! each core's sync walk (`sync.rs`) copies its dirty blocks from the
//! current image and clears them. A resync after an outage is therefore
//! the blocks written meanwhile, and a full rebuild is every bit set.
//!
//! The checkpoint records each primary's name, state and dirty map at
//! stripe granularity. After a crash, what a primary got of the writes in
//! flight is unknown (their log entries may be torn while the primary has
//! them), so the primaries that were taking writes are rebuilt whole,
//! reads going to the log meanwhile; a degraded one adds the stripes of
//! the replayed entries to the map it had.

mod io;
mod sync;

pub(super) use io::Mirror;
pub(super) use sync::SYNC_ORIGIN;

use crate::device::BlockDevice;
use crate::engine::request::PrimaryInfo;
use crate::format::{PrimaryRecord, PrimaryState};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The alignment of the buffers the engine writes primaries from (zeros,
/// sync copies): a primary may be a file opened O_DIRECT, which takes
/// page-aligned buffers whatever the block size.
pub(super) fn primary_align(block_size: usize) -> usize {
    block_size.max(crate::device::DIRECT_ALIGN)
}

/// One primary, shared by every core.
pub(crate) struct Primary {
    name: Mutex<String>,
    dev: Mutex<Option<Arc<dyn BlockDevice>>>,
    state: AtomicU8,
    /// Bumped when the device is replaced or reopened: each core opens a
    /// new channel to it.
    pub generation: AtomicU64,
    pub dirty: DirtyMap,
    pub rebuild_done: AtomicU64,
    pub rebuild_total: AtomicU64,
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
}

impl Primary {
    /// A primary as recorded, on `dev` (`None`: the runtime could not open
    /// it, so it is degraded).
    pub(crate) fn new(record: &PrimaryRecord, dev: Option<Arc<dyn BlockDevice>>, volume_blocks: u64) -> Primary {
        let state = if dev.is_none() { PrimaryState::Degraded } else { record.state };
        Primary {
            name: Mutex::new(record.name.clone()),
            dev: Mutex::new(dev),
            state: AtomicU8::new(state as u8),
            generation: AtomicU64::new(1),
            dirty: DirtyMap::new(volume_blocks),
            rebuild_done: AtomicU64::new(0),
            rebuild_total: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> String {
        self.name.lock().expect("primary name").clone()
    }

    pub(crate) fn device(&self) -> Option<Arc<dyn BlockDevice>> {
        self.dev.lock().expect("primary device").clone()
    }

    pub(crate) fn state(&self) -> PrimaryState {
        match self.state.load(Relaxed) {
            0 => PrimaryState::Healthy,
            1 => PrimaryState::Degraded,
            _ => PrimaryState::Rebuilding,
        }
    }

    /// Whether it takes writes and serves reads of its clean blocks.
    pub(crate) fn in_service(&self) -> bool {
        self.state() != PrimaryState::Degraded
    }

    /// Marks it degraded; whether it was not already (the caller then has
    /// the change recorded).
    pub(crate) fn degrade(&self, why: &str) -> bool {
        let was = self.state.swap(PrimaryState::Degraded as u8, Relaxed);
        let changed = was != PrimaryState::Degraded as u8;
        if changed {
            log::warn!("primary {}: degraded ({why}); I/O goes on with the others and the log", self.name());
        }
        changed
    }

    /// Drops its device (removed under the runtime): degraded, and the
    /// cores' channels to it are stale.
    pub(crate) fn release(&self) {
        self.degrade("its device was removed");
        *self.dev.lock().expect("primary device") = None;
        self.generation.fetch_add(1, Relaxed);
    }

    /// Starts a rebuild on `dev` (a replacement when `name` differs), of
    /// every block when `full`, else of its dirty blocks.
    pub(crate) fn start_rebuild(&self, name: &str, dev: Arc<dyn BlockDevice>, full: bool) {
        let mut own = self.name.lock().expect("primary name");
        let replaced = *own != name;
        *own = name.to_owned();
        drop(own);
        *self.dev.lock().expect("primary device") = Some(dev);
        if full || replaced {
            self.dirty.mark_all();
        }
        self.generation.fetch_add(1, Relaxed);
        self.rebuild_done.store(0, Relaxed);
        self.rebuild_total.store(self.dirty.count(), Relaxed);
        self.state.store(PrimaryState::Rebuilding as u8, Relaxed);
        log::info!(
            "primary {name}: {} rebuild of {} blocks started",
            if full || replaced { "full" } else { "incremental" },
            self.dirty.count()
        );
    }

    /// Puts it in rebuild (of every block when `whole`), as mount does.
    pub(crate) fn set_rebuilding(&self, whole: bool) {
        if whole {
            self.dirty.mark_all();
        }
        self.rebuild_total.store(self.dirty.count(), Relaxed);
        self.state.store(PrimaryState::Rebuilding as u8, Relaxed);
    }

    /// Ends a rebuild once nothing is dirty; whether it ended.
    pub(crate) fn finish_rebuild(&self) -> bool {
        if self.dirty.count() != 0 {
            return false;
        }
        let (from, to) = (PrimaryState::Rebuilding as u8, PrimaryState::Healthy as u8);
        let ended = self.state.compare_exchange(from, to, Relaxed, Relaxed).is_ok();
        if ended {
            log::info!("primary {}: rebuilt, {} blocks copied", self.name(), self.rebuild_done.load(Relaxed));
        }
        ended
    }

    pub(crate) fn record(&self, stripe_blocks: u32, stripes: u64) -> PrimaryRecord {
        PrimaryRecord {
            name: self.name(),
            state: self.state(),
            dirty_stripes: self.dirty.stripes(stripe_blocks, stripes),
        }
    }

    pub(crate) fn info(&self) -> PrimaryInfo {
        PrimaryInfo {
            name: self.name(),
            state: self.state(),
            dirty_blocks: self.dirty.count(),
            rebuild_done_blocks: self.rebuild_done.load(Relaxed),
            rebuild_total_blocks: self.rebuild_total.load(Relaxed),
            reads: self.reads.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
        }
    }
}

/// A bit per volume block: set where a primary may differ from the current
/// image. Each core touches only the blocks of its stripes; the bits are
/// atomic because a word may span two stripes (small stripes) and the
/// stats and checkpoint read them from core 0.
pub(crate) struct DirtyMap {
    words: Vec<AtomicU64>,
    blocks: u64,
    count: AtomicU64,
}

impl DirtyMap {
    fn new(blocks: u64) -> DirtyMap {
        DirtyMap {
            words: (0..blocks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            blocks,
            count: AtomicU64::new(0),
        }
    }

    /// Bits set.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Applies `f(word, mask)` to the words covering `lba..lba + n`.
    fn each_word(&self, lba: u64, n: u64, mut f: impl FnMut(&AtomicU64, u64)) {
        let end = (lba + n).min(self.blocks);
        let mut at = lba;
        while at < end {
            let (w, bit) = ((at / 64) as usize, at % 64);
            let len = (64 - bit).min(end - at);
            let mask = if len == 64 { u64::MAX } else { ((1u64 << len) - 1) << bit };
            f(&self.words[w], mask);
            at += len;
        }
    }

    pub(crate) fn mark(&self, lba: u64, n: u64) {
        let mut added = 0;
        self.each_word(lba, n, |w, mask| added += u64::from((!w.fetch_or(mask, Relaxed) & mask).count_ones()));
        self.count.fetch_add(added, Relaxed);
    }

    /// Clears `lba..lba + n`; how many bits were set.
    pub(crate) fn clear(&self, lba: u64, n: u64) -> u64 {
        let mut cleared = 0;
        self.each_word(lba, n, |w, mask| cleared += u64::from((w.fetch_and(!mask, Relaxed) & mask).count_ones()));
        self.count.fetch_sub(cleared, Relaxed);
        cleared
    }

    pub(crate) fn any(&self, lba: u64, n: u64) -> bool {
        let mut any = false;
        self.each_word(lba, n, |w, mask| any |= w.load(Relaxed) & mask != 0);
        any
    }

    /// The first dirty run in `from..to`, at most `max` blocks long.
    pub(crate) fn next_run(&self, from: u64, to: u64, max: u64) -> Option<(u64, u64)> {
        let to = to.min(self.blocks);
        let mut at = from;
        while at < to {
            let w = self.words[(at / 64) as usize].load(Relaxed) >> (at % 64);
            if w == 0 {
                at = (at / 64 + 1) * 64;
                continue;
            }
            at += u64::from(w.trailing_zeros());
            if at >= to {
                return None;
            }
            let mut end = at + 1;
            while end < to && end - at < max && self.any(end, 1) {
                end += 1;
            }
            return Some((at, end - at));
        }
        None
    }

    pub(crate) fn mark_all(&self) {
        self.mark(0, self.blocks);
    }

    /// Marks every block of the stripes set in `bitmap`.
    pub(crate) fn mark_stripes(&self, bitmap: &[u8], stripe_blocks: u32) {
        for (i, byte) in bitmap.iter().enumerate() {
            for b in (0..8).filter(|b| byte & (1 << b) != 0) {
                let stripe = (i * 8 + b) as u64;
                self.mark(stripe * u64::from(stripe_blocks), u64::from(stripe_blocks));
            }
        }
    }

    /// A bit per stripe with a dirty block, as the checkpoint keeps it.
    pub(crate) fn stripes(&self, stripe_blocks: u32, stripes: u64) -> Vec<u8> {
        let mut bitmap = vec![0u8; stripes.div_ceil(8) as usize];
        if self.count() == 0 {
            return bitmap;
        }
        for s in 0..stripes {
            if self.any(s * u64::from(stripe_blocks), u64::from(stripe_blocks)) {
                bitmap[(s / 8) as usize] |= 1 << (s % 8);
            }
        }
        bitmap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dirty_map_counts_and_finds_runs() {
        let m = DirtyMap::new(1000);
        m.mark(60, 10);
        m.mark(65, 10);
        assert_eq!(m.count(), 15);
        assert_eq!(m.next_run(0, 1000, 8), Some((60, 8)));
        assert_eq!(m.next_run(68, 1000, 64), Some((68, 7)));
        assert_eq!(m.next_run(75, 1000, 64), None);
        assert_eq!(m.clear(62, 100), 13);
        assert_eq!(m.count(), 2);
        assert!(m.any(61, 1) && !m.any(62, 900));
        m.mark_all();
        assert_eq!(m.count(), 1000);
        assert_eq!(m.stripes(256, 4), vec![0b1111]);
        let n = DirtyMap::new(1000);
        n.mark_stripes(&[0b0100], 256);
        assert_eq!((n.count(), n.next_run(0, 1000, 1000)), (256, Some((512, 256))));
    }
}
