//! Space accounting: for every segment, the data blocks written into it and
//! how many of them are still live, and the bdev's write counters.
//!
//! A data block is live when a view still reads it:
//! - *current*: the newest version of its LBA (the block index points at it);
//! - *pinned*: no longer current, but a snapshot volume reads it — it is the
//!   newest version within its partition `p`, and some volume's partition
//!   lies in `[p, n)` where `n` is the next partition holding the LBA.
//!
//! Owners update the counts with relaxed atomics as blocks change state
//! (retirement, volume deletion, compaction); segments are shared only
//! after a change of core count, so the counters are rarely contended.
//! Everything else (used - live) is garbage compaction can reclaim.

use super::addr::{LogAddr, ZERO};
use super::index::BlockIndex;
use super::partition::Partitions;
use crate::format::Geometry;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub(crate) struct SegmentSpace {
    /// Data blocks written (including holes left by failed writes).
    pub used: AtomicU32,
    pub current: AtomicU32,
    pub pinned: AtomicU32,
}

impl SegmentSpace {
    pub fn live(&self) -> u32 {
        self.current.load(Relaxed) + self.pinned.load(Relaxed)
    }

    pub fn reset(&self) {
        self.used.store(0, Relaxed);
        self.current.store(0, Relaxed);
        self.pinned.store(0, Relaxed);
    }
}

/// Counters of `bdev_ilog_get_stats`.
#[derive(Default)]
pub(crate) struct Counters {
    /// Blocks clients asked to write (data, not zeroes).
    pub user_blocks: AtomicU64,
    /// Blocks written to the device: data, moved data, metadata, baseline.
    pub device_blocks: AtomicU64,
    pub compactions: AtomicU64,
    pub moved_blocks: AtomicU64,
    /// Of the moved blocks, those the device copied itself.
    pub copied_blocks: AtomicU64,
    pub segments_freed: AtomicU64,
    /// Drains into the baseline committed.
    pub drains: AtomicU64,
    /// Volumes retired because the log was full of versions
    /// (`retention.on_full`).
    pub volumes_retired: AtomicU64,
    /// Segments opened for client writes (compaction's measure of room
    /// taken while it works).
    pub client_segments_opened: AtomicU64,
    pub policy_actions: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// Whether a block of partition `p` that just stopped being current (its
/// LBA was rewritten in partition `newer`) stays pinned by a volume:
/// `volumes` are the live volumes' partitions, ascending.
pub(crate) fn pinned_after_overwrite(p: u32, newer: u32, volumes: &[u32]) -> bool {
    p < newer && volumes.iter().any(|&v| v >= p && v < newer)
}

/// Counts (current, pinned) blocks per segment from scratch, from every
/// core's index shard and partition tables: what mount starts from, and
/// what the incremental counts must always equal.
pub(crate) fn count_live<'a>(
    geo: &Geometry,
    shards: impl Iterator<Item = (&'a BlockIndex, &'a Partitions)>,
    volumes: &[u32],
    open_partition: u32,
) -> Vec<(u32, u32)> {
    let mut volumes = volumes.to_vec();
    volumes.sort_unstable();
    let mut counts = vec![(0u32, 0u32); geo.segment_count as usize];
    let seg = |addr: LogAddr| (addr / geo.segment_blocks) as usize;
    for (index, parts) in shards {
        index.for_each(|_, addr| {
            if addr != ZERO {
                counts[seg(addr)].0 += 1;
            }
        });
        for (p, table) in parts.sealed() {
            for (lba, addr) in table.iter() {
                if addr == ZERO || index.get(u64::from(lba)) == Some(addr) {
                    continue;
                }
                let newer = parts.next_holder(lba, *p, u32::MAX).unwrap_or(open_partition);
                if pinned_after_overwrite(*p, newer, &volumes) {
                    counts[seg(addr)].1 += 1;
                }
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::pinned_after_overwrite;

    #[test]
    fn an_overwrite_pins_a_block_only_for_a_volume_in_between() {
        assert!(!pinned_after_overwrite(3, 3, &[1, 2, 3]), "rewritten in its own partition");
        assert!(pinned_after_overwrite(3, 5, &[4]));
        assert!(pinned_after_overwrite(3, 5, &[3]));
        assert!(!pinned_after_overwrite(3, 5, &[1, 2]), "volumes only below");
        assert!(!pinned_after_overwrite(3, 5, &[]));
    }
}
