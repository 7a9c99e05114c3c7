//! Step 1 of mount: what the checkpoint vouches for.

use super::io::SyncIo;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, EntryKind, Geometry, SegmentRecord, SummaryChain, SummaryEntry, Superblock};
use std::collections::BTreeMap;

pub(super) fn read_checkpoint(io: &mut SyncIo, geo: &Geometry, uuid: &[u8; 16]) -> Result<Checkpoint> {
    let mut best: Option<Checkpoint> = None;
    let mut error = None;
    for slot in 0..2 {
        let start = geo.ckpt_slot_start(slot);
        let first = io.read(start, 1)?;
        let decoded = Checkpoint::peek_len(&first).and_then(|len| match len {
            None => Ok(None),
            Some(len) if len > geo.ckpt_slot_bytes() => Err(Error::Corrupt("checkpoint larger than its slot".into())),
            Some(len) => Checkpoint::decode(&io.read(start, len.div_ceil(io.bs) as u32)?),
        });
        match decoded {
            Ok(Some(c)) if &c.uuid == uuid => {
                if best.as_ref().is_none_or(|b| c.generation > b.generation) {
                    best = Some(c);
                }
            }
            Ok(_) => {}
            Err(e) => error = Some(e),
        }
    }
    best.ok_or_else(|| error.unwrap_or_else(|| Error::Corrupt("no checkpoint found".into())))
}

/// A segment's entries as mount accepts them.
pub(super) struct Loaded {
    pub record: SegmentRecord,
    pub entries: Vec<SummaryEntry>,
}

impl Loaded {
    /// The newest partition of its entries (its base when it has none).
    pub fn last_partition(&self) -> u32 {
        self.entries.iter().map(|e| e.partition).max().unwrap_or(self.record.partition).max(self.record.partition)
    }
}

/// Summary groups read at once while a chain's end is unknown.
const CHUNK_GROUPS: u32 = 16;

/// The blocks of summary groups `from..to` of `segno`, one request:
/// groups grow down from the segment's end.
fn summary_area(geo: &Geometry, segno: u32, from: u32, to: u32) -> (u64, u32) {
    (geo.summary_slot(segno, to - 1, 0), 2 * (to - from))
}

/// Group `g`'s two slots in an area `summary_area(.., _, to)` read.
fn area_slots(buf: &[u8], bs: usize, to: u32, g: u32) -> [&[u8]; 2] {
    let at = (2 * (to - g) - 2) as usize * bs;
    [&buf[at..at + bs], &buf[at + bs..at + 2 * bs]]
}

/// A segment whose summary chain mount reads: the groups it is known to
/// hold, and whether the chain may go on past them.
pub(super) struct ChainRead {
    pub record: SegmentRecord,
    pub known_groups: u32,
    pub open_ended: bool,
}

/// Reads the summary chains of `reads`, a batch at a time: first the groups
/// each is known to hold, then, where the chain may go on, more groups in
/// chunks until it ends. Each chain's entries, in order.
pub(super) fn read_chains(
    io: &mut SyncIo,
    geo: &Geometry,
    uuid: &[u8; 16],
    reads: &[ChainRead],
) -> Result<Vec<Vec<SummaryEntry>>> {
    let max_groups = geo.segment_blocks / 2;
    let per_group = geo.entries_per_summary();
    // (chain, next group, whether to read on)
    let mut chains: Vec<(SummaryChain, u32, bool)> = reads
        .iter()
        .map(|r| (SummaryChain::new(*uuid, r.record.summary_key(), per_group), 0, r.known_groups > 0 || r.open_ended))
        .collect();
    loop {
        let mut wanted = Vec::new();
        for (i, (_, next, going)) in chains.iter().enumerate() {
            if !*going || *next >= max_groups {
                continue;
            }
            let r = &reads[i];
            // A segment holds at most `max_groups` (what a checkpoint claims
            // beyond that is corrupt, and found so once the chain is read).
            let to = if *next < r.known_groups { r.known_groups } else { *next + CHUNK_GROUPS }.min(max_groups);
            wanted.push((i, *next, to));
        }
        if wanted.is_empty() {
            break;
        }
        let areas: Vec<(u64, u32)> =
            wanted.iter().map(|&(i, from, to)| summary_area(geo, reads[i].record.segno, from, to)).collect();
        for (&(i, from, to), buf) in wanted.iter().zip(io.read_batch(&areas)?) {
            let (chain, next, going) = &mut chains[i];
            for g in from..to {
                if !chain.push(area_slots(&buf, io.bs, to, g)) {
                    *going = false;
                    break;
                }
            }
            *next = to;
            *going &= to > reads[i].known_groups || reads[i].open_ended;
        }
    }
    Ok(chains.into_iter().map(|(chain, _, _)| chain.into_entries()).collect())
}

/// Whether an entry of a segment holding `count` entries lies where entries
/// can: inside the volume, its data between the header and the summaries.
pub(super) fn entry_in_bounds(geo: &Geometry, e: &SummaryEntry, count: usize) -> bool {
    let summaries = 2 * (count as u64).div_ceil(u64::from(geo.entries_per_summary()));
    let data_end = u64::from(geo.segment_blocks).saturating_sub(summaries);
    e.blocks > 0
        && e.lba.checked_add(u64::from(e.blocks)).is_some_and(|end| end <= geo.volume_blocks)
        && match e.kind {
            EntryKind::Data => e.data_offset >= 1 && u64::from(e.data_offset) + u64::from(e.blocks) <= data_end,
            EntryKind::Zero | EntryKind::Hole => true,
        }
}

/// What the checkpoint vouches for, and the entries past it still to check.
pub(super) struct Trusted {
    pub sb: Superblock,
    pub ckpt: Checkpoint,
    pub loaded: BTreeMap<u32, Loaded>,
    /// Entries written after the checkpoint, per segment, to replay.
    pub to_verify: Vec<(SegmentRecord, Vec<SummaryEntry>)>,
}

/// Step 1: the superblock, the newest valid checkpoint, and the summaries
/// of the segments it lists, up to their trusted entries.
pub(super) fn load_trusted(io: &mut SyncIo, dev: &dyn BlockDevice) -> Result<Trusted> {
    if dev.num_blocks() < crate::format::SUPERBLOCK_BLOCKS {
        // Not even room for the superblocks: formatting says how small.
        return Err(Error::NotFormatted);
    }
    let (a, b) = (io.read(0, 1)?, io.read(1, 1)?);
    let sb = Superblock::choose(&a, &b, dev.num_blocks(), dev.block_size())?;
    let geo = sb.geometry;
    let ckpt = read_checkpoint(io, &geo, &sb.uuid)?;
    if ckpt.segments.iter().any(|s| s.segno >= geo.segment_count) || ckpt.volumes.len() > geo.max_volumes as usize {
        return Err(Error::Corrupt("checkpoint names segments or volumes the geometry cannot hold".into()));
    }
    let mut loaded: BTreeMap<u32, Loaded> = BTreeMap::new();
    let mut to_verify = Vec::new();
    let per_group = geo.entries_per_summary();
    let reads: Vec<ChainRead> = ckpt
        .segments
        .iter()
        .map(|rec| ChainRead {
            record: *rec,
            known_groups: rec.trusted_entries.div_ceil(per_group),
            // Entries past the trusted ones are replayed after a crash.
            open_ended: rec.open && !ckpt.clean,
        })
        .collect();
    for (rec, mut entries) in ckpt.segments.iter().zip(read_chains(io, &geo, &sb.uuid, &reads)?) {
        if entries.len() < rec.trusted_entries as usize {
            return Err(Error::Corrupt(format!(
                "segment {} lost summaries of flushed entries ({} of {})",
                rec.segno,
                entries.len(),
                rec.trusted_entries
            )));
        }
        let count = entries.len();
        if let Some(e) = entries[..rec.trusted_entries as usize].iter().find(|e| !entry_in_bounds(&geo, e, count)) {
            return Err(Error::Corrupt(format!("segment {} holds an entry out of bounds: {e:?}", rec.segno)));
        }
        if rec.open && !ckpt.clean && entries.len() > rec.trusted_entries as usize {
            to_verify.push((*rec, entries.split_off(rec.trusted_entries as usize)));
        }
        entries.truncate(rec.trusted_entries as usize);
        loaded.insert(rec.segno, Loaded { record: SegmentRecord { open: false, ..*rec }, entries });
    }
    Ok(Trusted { sb, ckpt, loaded, to_verify })
}
