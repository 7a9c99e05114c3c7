//! A log segment: a stretch of one core's stream. Data blocks grow up from
//! the header; summary blocks grow down from the end, two slots per group of
//! entries so a summary is never overwritten in place (the newer valid
//! version wins, a torn rewrite leaves the older one).
//!
//! Entries of several partitions share a segment: a snapshot does not close
//! the segment it cuts, so space follows data, not partitions. Each entry
//! names its partition as an offset from the segment's base partition (the
//! header's), which no entry of the segment is below. Format version 1
//! wrote zeros there: every entry in the header's partition.
//!
//! ```text
//! block 0                      segment header
//! 1 ..                         data blocks, in append order
//! segment_blocks - 2g - 2 / -1 summary group g, slot 0 / slot 1
//!
//! segment header (48 bytes): magic "ILOGSEGM" | uuid 16 | seq u64 | epoch u32
//!                            | stream u32 | base partition u32
//!                            | crc u32 (of 0..44)
//! summary header (40 bytes): magic "ILOGSUMM" | uuid[0..4] | segment epoch u32
//!                            | segment seq u64
//!                            | group u32 | version u32 | count u32 | crc u32
//!                            (of the header before it and the entries after)
//! summary entry (24 bytes):  lba u64 | blocks u32 | data offset u32
//!                            | data CRC32C u32 | kind u8
//!                            | partition - base partition, u24
//! ```

use super::codec::{Reader, Writer};
use super::record_crc;
use crate::error::{Error, Result};

const HEADER_MAGIC: &[u8; 8] = b"ILOGSEGM";
const HEADER_CRC_AT: usize = 44;
const SUMMARY_MAGIC: &[u8; 8] = b"ILOGSUMM";
pub const SUMMARY_HEADER_LEN: usize = 40;
const SUMMARY_CRC_AT: usize = 36;
pub const SUMMARY_ENTRY_LEN: usize = 24;
/// Partitions a segment's entries may span above its base partition.
pub const PARTITION_SPAN: u32 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub uuid: [u8; 16],
    pub seq: u64,
    pub epoch: u32,
    pub stream: u32,
    pub partition: u32,
}

impl SegmentHeader {
    pub fn encode(&self, block: &mut [u8]) {
        block.fill(0);
        let mut w = Writer::new(block);
        w.bytes(HEADER_MAGIC);
        w.bytes(&self.uuid);
        w.u64(self.seq);
        w.u32(self.epoch);
        w.u32(self.stream);
        w.u32(self.partition);
        let crc = record_crc(&block[..HEADER_CRC_AT + 4], HEADER_CRC_AT);
        block[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// `None` unless the block is a valid header of a segment of `uuid`'s
    /// format: blank, stale or torn headers all mean "not a live segment".
    pub fn decode(block: &[u8], uuid: &[u8; 16]) -> Option<SegmentHeader> {
        if block.len() < HEADER_CRC_AT + 4 || &block[..8] != HEADER_MAGIC || &block[8..24] != uuid {
            return None;
        }
        let stored = u32::from_le_bytes(block[HEADER_CRC_AT..HEADER_CRC_AT + 4].try_into().ok()?);
        if record_crc(&block[..HEADER_CRC_AT + 4], HEADER_CRC_AT) != stored {
            return None;
        }
        let mut r = Reader::new(&block[24..HEADER_CRC_AT], "segment header");
        Some(SegmentHeader {
            uuid: *uuid,
            seq: r.u64().ok()?,
            epoch: r.u32().ok()?,
            stream: r.u32().ok()?,
            partition: r.u32().ok()?,
        })
    }
}

/// What a summary entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `blocks` data blocks at `data_offset` in the segment.
    Data = 1,
    /// Unmap or write-zeroes of `blocks` blocks; no data.
    Zero = 2,
    /// A write that failed: its data blocks hold nothing; skipped by replay.
    Hole = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryEntry {
    pub lba: u64,
    pub blocks: u32,
    pub data_offset: u32,
    pub data_crc: u32,
    pub kind: EntryKind,
    /// The partition the entry belongs to: at least its segment's base,
    /// less than `PARTITION_SPAN` above it.
    pub partition: u32,
}

/// Which incarnation of a segment a summary belongs to. Sequence numbers
/// can repeat after a crash (a segment whose header never became durable
/// leaves no trace of its number), epochs never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId {
    pub epoch: u32,
    pub seq: u64,
}

/// What decoding a segment's summaries needs: its incarnation, and the base
/// partition its entries' partitions are offsets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryKey {
    pub id: SegmentId,
    pub base: u32,
}

/// One version of one summary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryBlock {
    pub segment: SegmentId,
    pub group: u32,
    pub version: u32,
    pub entries: Vec<SummaryEntry>,
}

impl SummaryBlock {
    /// Encodes `entries` as version `version` of group `group` into `block`.
    /// Every entry's partition lies in `key.base..key.base + PARTITION_SPAN`.
    pub fn encode(
        uuid: &[u8; 16],
        key: SummaryKey,
        group: u32,
        version: u32,
        entries: &[SummaryEntry],
        block: &mut [u8],
    ) {
        let segment = key.id;
        block.fill(0);
        let end = SUMMARY_HEADER_LEN + entries.len() * SUMMARY_ENTRY_LEN;
        let mut w = Writer::new(&mut block[..end]);
        w.bytes(SUMMARY_MAGIC);
        w.bytes(&uuid[..4]);
        w.u32(segment.epoch);
        w.u64(segment.seq);
        w.u32(group);
        w.u32(version);
        w.u32(entries.len() as u32);
        w.u32(0);
        for e in entries {
            w.u64(e.lba);
            w.u32(e.blocks);
            w.u32(e.data_offset);
            w.u32(e.data_crc);
            w.u8(e.kind as u8);
            let offset = e.partition.wrapping_sub(key.base);
            assert!(offset < PARTITION_SPAN, "entry of partition {} in a segment based at {}", e.partition, key.base);
            w.bytes(&offset.to_le_bytes()[..3]);
        }
        let crc = record_crc(&block[..end], SUMMARY_CRC_AT);
        block[SUMMARY_CRC_AT..SUMMARY_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// `Ok(None)` for a block that is not a summary of this segment and
    /// group (blank, stale, torn); `Err` when a valid-looking summary holds
    /// impossible values.
    pub fn decode(block: &[u8], uuid: &[u8; 16], key: SummaryKey, group: u32) -> Result<Option<SummaryBlock>> {
        let Some((version, count)) = Self::check(block, uuid, key.id, group) else { return Ok(None) };
        let entries = Self::entries(block, count, key.base)?;
        Ok(Some(SummaryBlock { segment: key.id, group, version, entries }))
    }

    /// The first `count` entries of a summary that passed `check`.
    fn entries(block: &[u8], count: usize, base: u32) -> Result<Vec<SummaryEntry>> {
        let end = SUMMARY_HEADER_LEN + count * SUMMARY_ENTRY_LEN;
        let mut r = Reader::new(&block[SUMMARY_HEADER_LEN..end], "summary entries");
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (lba, blocks, data_offset, data_crc, kind) = (r.u64()?, r.u32()?, r.u32()?, r.u32()?, r.u8()?);
            let offset = r.bytes(3)?;
            let offset = u32::from_le_bytes([offset[0], offset[1], offset[2], 0]);
            let kind = match kind {
                1 => EntryKind::Data,
                2 => EntryKind::Zero,
                3 => EntryKind::Hole,
                k => return Err(Error::Corrupt(format!("summary entry kind {k}"))),
            };
            let partition = base
                .checked_add(offset)
                .ok_or_else(|| Error::Corrupt(format!("summary entry partition {base} + {offset}")))?;
            entries.push(SummaryEntry { lba, blocks, data_offset, data_crc, kind, partition });
        }
        Ok(entries)
    }

    /// The version and entry count of a summary of this segment and group
    /// whose header and CRC hold, without decoding its entries.
    fn check(block: &[u8], uuid: &[u8; 16], segment: SegmentId, group: u32) -> Option<(u32, usize)> {
        if block.len() < SUMMARY_HEADER_LEN || &block[..8] != SUMMARY_MAGIC || block[8..12] != uuid[..4] {
            return None;
        }
        let mut r = Reader::new(&block[12..SUMMARY_HEADER_LEN], "summary header");
        let (epoch, seq, grp, version, count) =
            (r.u32().ok()?, r.u64().ok()?, r.u32().ok()?, r.u32().ok()?, r.u32().ok()? as usize);
        if (SegmentId { epoch, seq }) != segment || grp != group {
            return None;
        }
        let end = count.checked_mul(SUMMARY_ENTRY_LEN).map(|n| n + SUMMARY_HEADER_LEN).filter(|&e| e <= block.len())?;
        let stored = u32::from_le_bytes(block[SUMMARY_CRC_AT..SUMMARY_CRC_AT + 4].try_into().expect("4 bytes"));
        (record_crc(&block[..end], SUMMARY_CRC_AT) == stored).then_some((version, count))
    }
}

/// A segment's summary entries, read group by group in order: the newest
/// valid slot of each group, up to the first group that is missing or not
/// full (the end of what was summarized).
pub struct SummaryChain {
    uuid: [u8; 16],
    key: SummaryKey,
    per_group: usize,
    next_group: u32,
    entries: Vec<SummaryEntry>,
    ended: bool,
}

impl SummaryChain {
    pub fn new(uuid: [u8; 16], key: SummaryKey, entries_per_summary: u32) -> SummaryChain {
        let per_group = entries_per_summary as usize;
        SummaryChain { uuid, key, per_group, next_group: 0, entries: Vec::new(), ended: false }
    }

    /// Takes the next group's two slots; `false` once the chain has ended.
    pub fn push(&mut self, slots: [&[u8]; 2]) -> bool {
        if self.ended {
            return false;
        }
        let (uuid, key, group) = (&self.uuid, self.key, self.next_group);
        // The newest valid slot: headers and CRCs first, so only the slot
        // used has its entries decoded (compaction does this per victim).
        let [a, b] = slots.map(|s| SummaryBlock::check(s, uuid, key.id, group).map(|(v, count)| (v, count, s)));
        let newest_first = if b.map(|x| x.0) >= a.map(|x| x.0) { [b, a] } else { [a, b] };
        let newest =
            newest_first.into_iter().flatten().find_map(|(_, count, s)| SummaryBlock::entries(s, count, key.base).ok());
        self.next_group += 1;
        match newest {
            Some(entries) => {
                self.ended = entries.len() != self.per_group;
                self.entries.extend(entries);
            }
            None => self.ended = true,
        }
        !self.ended
    }

    /// Takes the entries decoded so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, SummaryEntry> {
        self.entries.drain(..)
    }

    pub fn into_entries(self) -> Vec<SummaryEntry> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [4; 16];

    #[test]
    fn header_round_trips_and_rejects_other_formats() {
        let h = SegmentHeader { uuid: UUID, seq: 42, epoch: 1, stream: 3, partition: 8 };
        let mut b = vec![0u8; 512];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b, &UUID), Some(h));
        assert_eq!(SegmentHeader::decode(&b, &[5; 16]), None);
        b[30] ^= 1;
        assert_eq!(SegmentHeader::decode(&b, &UUID), None);
    }

    #[test]
    fn chain_takes_each_groups_newest_slot_that_decodes() {
        let e = SummaryEntry { lba: 9, blocks: 2, data_offset: 1, data_crc: 7, kind: EntryKind::Data, partition: 5 };
        let z =
            SummaryEntry { lba: 3, blocks: 1, data_offset: u32::MAX, data_crc: 0, kind: EntryKind::Zero, partition: 7 };
        let key = SummaryKey { id: SegmentId { epoch: 1, seq: 4 }, base: 5 };
        let slot = |group, version, entries: &[SummaryEntry]| {
            let mut b = vec![0u8; 512];
            SummaryBlock::encode(&UUID, key, group, version, entries, &mut b);
            b
        };
        let mut chain = SummaryChain::new(UUID, key, 2);
        assert!(chain.push([&slot(0, 1, &[e, z]), &slot(0, 2, &[z, e])]), "a full group: the chain goes on");
        // Group 1's newer slot has a valid CRC but an impossible entry kind:
        // the older slot is the group's newest that decodes.
        let mut bad = slot(1, 3, &[z]);
        bad[SUMMARY_HEADER_LEN + 20] = 9;
        let crc = record_crc(&bad[..SUMMARY_HEADER_LEN + SUMMARY_ENTRY_LEN], SUMMARY_CRC_AT);
        bad[SUMMARY_CRC_AT..SUMMARY_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(SummaryBlock::decode(&bad, &UUID, key, 1).is_err());
        assert!(!chain.push([&bad, &slot(1, 2, &[e])]), "a group not full ends the chain");
        assert!(!chain.push([&slot(2, 4, &[e, e]), &slot(2, 4, &[e, e])]), "nothing after the end");
        assert_eq!(chain.into_entries(), vec![z, e, e]);
    }

    #[test]
    fn entries_of_format_version_1_belong_to_the_base_partition() {
        // Version 1 wrote three zero bytes after the kind.
        let e = SummaryEntry { lba: 4, blocks: 1, data_offset: 1, data_crc: 9, kind: EntryKind::Data, partition: 6 };
        let key = SummaryKey { id: SegmentId { epoch: 1, seq: 2 }, base: 6 };
        let mut b = vec![0u8; 512];
        SummaryBlock::encode(&UUID, key, 0, 0, &[e], &mut b);
        assert_eq!(b[SUMMARY_HEADER_LEN + 21..SUMMARY_HEADER_LEN + 24], [0, 0, 0]);
        assert_eq!(SummaryBlock::decode(&b, &UUID, key, 0).unwrap().unwrap().entries, [e]);
    }

    #[test]
    fn summary_round_trips_and_ignores_torn_or_stale_blocks() {
        let e = SummaryEntry {
            lba: 1 << 40,
            blocks: 8,
            data_offset: 1,
            data_crc: 0xdead_beef,
            kind: EntryKind::Data,
            partition: 3,
        };
        let z = SummaryEntry {
            lba: 3,
            blocks: 100,
            data_offset: u32::MAX,
            data_crc: 0,
            kind: EntryKind::Zero,
            partition: 3 + PARTITION_SPAN - 1,
        };
        let mut b = vec![0u8; 4096];
        let id = SegmentId { epoch: 3, seq: 7 };
        let key = SummaryKey { id, base: 3 };
        SummaryBlock::encode(&UUID, key, 2, 5, &[e, z], &mut b);
        let s = SummaryBlock::decode(&b, &UUID, key, 2).unwrap().unwrap();
        assert_eq!((s.version, s.entries.as_slice()), (5, &[e, z][..]));
        let other = SummaryKey { id: SegmentId { seq: 8, ..id }, ..key };
        assert_eq!(SummaryBlock::decode(&b, &UUID, other, 2).unwrap(), None, "other segment");
        let later_mount = SummaryKey { id: SegmentId { epoch: 4, ..id }, ..key };
        assert_eq!(SummaryBlock::decode(&b, &UUID, later_mount, 2).unwrap(), None, "same seq, later mount");
        b[60] ^= 1;
        assert_eq!(SummaryBlock::decode(&b, &UUID, key, 2).unwrap(), None, "torn");
    }
}
