//! Reading a segment's summaries back on core 0, as far as its checkpoint
//! record vouches for them: the log cursor and compaction read segments
//! this way while the bdev runs (mount reads them on its own, before).
//! Apart from the operation queue, which only decides when to read.

use super::shard::Shard;
use super::tag::TAG_CONTROL;
use crate::device::{DevOp, DevRequest, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{Geometry, SegmentRecord, SummaryChain, SummaryEntry};
use std::ops::Range;

/// Summary groups holding a segment's trusted entries.
pub(super) fn summary_groups(geo: &Geometry, record: &SegmentRecord) -> u32 {
    record.trusted_entries.div_ceil(geo.entries_per_summary())
}

/// Device reads of a segment's trusted summary groups (two slots each).
pub(super) fn summary_reads(geo: &Geometry, record: &SegmentRecord) -> u32 {
    2 * summary_groups(geo, record)
}

/// A segment's summaries end before the entries its checkpoint vouches for.
pub(super) fn summaries_lost(segno: u32) -> Error {
    Error::Corrupt(format!("segment {segno} lost flushed summaries"))
}

impl Shard {
    /// Reads both slots of summary groups `groups` of `record` into `bufs`
    /// (slot `i` into `bufs[i]`, tag `TAG_CONTROL | i`), which are reused
    /// and completed to the `summary_reads` the record vouches for.
    pub(super) fn read_summary_groups(&mut self, record: &SegmentRecord, groups: Range<u32>, bufs: &mut Vec<DmaBuf>) {
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let n = summary_reads(&geo, record) as usize;
        bufs.truncate(n);
        bufs.resize_with(n, || DmaBuf::new(bs, bs));
        for i in 2 * groups.start..2 * groups.end {
            let block = geo.summary_slot(record.segno, i / 2, i % 2);
            let tag = TAG_CONTROL | u64::from(i);
            let buf = bufs[i as usize].io_buf();
            self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks: 1, buf, tag });
        }
    }
}

/// The entries of `record` its checkpoint vouches for, from the slots
/// `read_summary_groups` read (all of them), of the format `uuid`.
pub(super) fn trusted_summaries(
    uuid: [u8; 16],
    geo: &Geometry,
    record: &SegmentRecord,
    bufs: &[DmaBuf],
) -> Result<Vec<SummaryEntry>> {
    let key = record.summary_key();
    let mut chain = SummaryChain::new(uuid, key, geo.entries_per_summary());
    for pair in bufs.chunks_exact(2) {
        if !chain.push([&pair[0], &pair[1]]) {
            break;
        }
    }
    let mut entries = chain.into_entries();
    if entries.len() < record.trusted_entries as usize {
        return Err(summaries_lost(record.segno));
    }
    entries.truncate(record.trusted_entries as usize);
    Ok(entries)
}
