//! Step 3 of mount: each core's index shard and partition tables, from
//! the entries mount accepted.

use super::load::Loaded;
use crate::engine::addr::{LogAddr, ZERO};
use crate::engine::index::BlockIndex;
use crate::engine::logmap::LogMap;
use crate::engine::partition::Partitions;
use crate::format::{Checkpoint, EntryKind, Geometry, SummaryEntry};
use std::collections::BTreeMap;

/// What step 3 builds for each core.
pub(super) struct Rebuilt {
    pub indexes: Vec<BlockIndex>,
    pub parts: Vec<Partitions>,
    pub logmap: LogMap,
    pub open_partition: u32,
}

/// Step 3: the index shards and partition tables, from every entry not
/// drained, in (partition, log order) order: the order of every block's
/// versions, with partitions ascending on every shard, even when the core
/// count changed between mounts.
pub(super) fn rebuild(geo: &Geometry, ckpt: &Checkpoint, loaded: &BTreeMap<u32, Loaded>, cores: u32) -> Rebuilt {
    let drained = ckpt.baseline_partition;
    let mut logmap = LogMap::new(geo.segment_count, geo.segment_blocks);
    // In (sequence, segment number) order: stable over `loaded`'s order.
    let mut segments: Vec<&Loaded> = loaded.values().collect();
    segments.sort_by_key(|l| l.record.seq);
    // (partition, segno, entry) in log order, then stably by partition: a
    // run of one partition stays sorted, so this costs a pass over the
    // entries, not a sort.
    let mut order: Vec<(u32, u32, &SummaryEntry)> = Vec::new();
    for l in &segments {
        logmap.open(l.record.segno, l.record.partition);
        for e in &l.entries {
            if e.kind == EntryKind::Data {
                logmap.note(l.record.segno, e.data_offset, e.partition);
            }
            if e.kind != EntryKind::Hole && e.partition > drained {
                order.push((e.partition, l.record.segno, e));
            }
        }
    }
    order.sort_by_key(|o| o.0);
    let max_partition = order.last().map_or(0, |o| o.0);
    let open_partition = ckpt.next_partition.max(max_partition).max(1);
    let first_partition = order.first().map_or(open_partition, |o| o.0);
    // Each core's versions, in that order.
    let mut versions: Vec<Vec<(u32, u32, LogAddr)>> = vec![Vec::new(); cores as usize];
    for &(partition, segno, e) in &order {
        let base = segno * geo.segment_blocks;
        for b in 0..e.blocks {
            let lba = e.lba + u64::from(b);
            let owner = ((lba / u64::from(geo.stripe_blocks)) % u64::from(cores)) as usize;
            let addr = if e.kind == EntryKind::Data { base + e.data_offset + b } else { ZERO };
            // Volumes have at most `u32::MAX` blocks (`Geometry`).
            versions[owner].push((partition, lba as u32, addr));
        }
    }
    let index_of = |core: usize| {
        let v: Vec<(u64, LogAddr)> = versions[core].iter().map(|&(_, lba, addr)| (u64::from(lba), addr)).collect();
        BlockIndex::from_versions(geo.volume_blocks, geo.stripe_blocks, cores, core as u32, &v)
    };
    let parts_of = |core: usize| {
        let mut parts = Partitions::new(first_partition);
        for &(partition, lba, addr) in &versions[core] {
            parts.record(partition, lba, addr);
        }
        parts.seal_up_to(open_partition);
        parts
    };
    // Independent of each other and across cores: built side by side.
    let (indexes, parts) = std::thread::scope(|s| {
        let parts = s.spawn(|| in_parallel(cores as usize, parts_of));
        (in_parallel(cores as usize, index_of), parts.join().expect("a partition table rebuild panicked"))
    });
    Rebuilt { indexes, parts, logmap, open_partition }
}

/// `f(0..n)`, spread over the machine's threads; the results in order.
fn in_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n);
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let mut done: Vec<(usize, T)> = std::thread::scope(|s| {
        let f = &f;
        let workers: Vec<_> = (0..threads)
            .map(|w| s.spawn(move || (w..n).step_by(threads).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a mount thread panicked")).collect()
    });
    done.sort_unstable_by_key(|d| d.0);
    done.into_iter().map(|d| d.1).collect()
}
