//! Which partition each data block of the log belongs to.
//!
//! Segments are shared by partitions (a snapshot does not close the segment
//! it cuts), so a block's partition is not its segment's. Per segment, the
//! partitions of its data blocks as runs: from a data offset on, blocks
//! belong to a partition until the next run. A segment written between two
//! snapshots is one run; each cut while it is open adds one, and so do the
//! compaction's moves into older partitions.
//!
//! Each core keeps its own map, written by the core appending to a segment
//! and read by the cores that index its blocks: the same core for segments
//! opened since mount, every core for segments mount loaded (read-only).

use super::addr::LogAddr;

#[derive(Clone, Default)]
struct Runs {
    /// The partition of the segment's first blocks.
    first: u32,
    /// Later runs: (first data offset, partition), ascending by offset.
    more: Vec<(u32, u32)>,
}

#[derive(Clone)]
pub(crate) struct LogMap {
    segment_blocks: u32,
    segs: Vec<Runs>,
}

impl LogMap {
    pub fn new(segment_count: u32, segment_blocks: u32) -> LogMap {
        LogMap { segment_blocks, segs: vec![Runs::default(); segment_count as usize] }
    }

    /// A segment is (re)opened: its blocks will belong to `partition` until
    /// noted otherwise.
    pub fn open(&mut self, segno: u32, partition: u32) {
        self.segs[segno as usize] = Runs { first: partition, more: Vec::new() };
    }

    /// The data blocks of `segno` from `offset` on belong to `partition`
    /// (offsets only grow while a segment is written).
    pub fn note(&mut self, segno: u32, offset: u32, partition: u32) {
        let runs = &mut self.segs[segno as usize];
        let last = runs.more.last().map_or(runs.first, |r| r.1);
        if last != partition {
            debug_assert!(runs.more.last().is_none_or(|r| r.0 < offset));
            runs.more.push((offset, partition));
        }
    }

    /// The partition of the block at `addr`.
    pub fn partition(&self, addr: LogAddr) -> u32 {
        let runs = &self.segs[(addr / self.segment_blocks) as usize];
        let offset = addr % self.segment_blocks;
        match runs.more.partition_point(|r| r.0 <= offset) {
            0 => runs.first,
            i => runs.more[i - 1].1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogMap;

    #[test]
    fn blocks_belong_to_the_run_they_fall_in() {
        let mut map = LogMap::new(4, 100);
        map.open(2, 7);
        map.note(2, 1, 7);
        map.note(2, 10, 9);
        map.note(2, 12, 9);
        map.note(2, 20, 8);
        assert_eq!([205, 209, 210, 219, 220, 299].map(|a| map.partition(a)), [7, 7, 9, 9, 8, 8]);
        map.open(2, 11);
        assert_eq!(map.partition(250), 11, "a reopened segment forgets its runs");
    }
}
