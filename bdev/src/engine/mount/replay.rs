//! Step 2 of mount, after an unclean stop: the log written since the
//! checkpoint, each stream up to its first torn entry.

use super::io::SyncIo;
use super::load::{entry_in_bounds, read_chains, ChainRead, Loaded, Trusted};
use crate::device::DmaBuf;
use crate::error::Result;
use crate::format::{Checkpoint, EntryKind, Geometry, SegmentHeader, SegmentRecord, SummaryEntry};
use std::collections::HashSet;

/// Most blocks of one read of replayed data.
const DATA_CHUNK_BLOCKS: u32 = 2048;
/// Replayed data read ahead of the check of its CRCs, at most.
const READ_AHEAD_BYTES: usize = 64 << 20;

/// The replayed data of a segment: the blocks from `first` (a data offset)
/// on, in chunks.
struct SegmentData {
    first: u32,
    chunks: Vec<DmaBuf>,
}

impl SegmentData {
    /// The CRC32C of blocks `offset..offset + blocks`, across chunks.
    fn crc(&self, offset: u32, blocks: u32, bs: usize) -> u32 {
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let (mut at, end) = (offset - self.first, offset - self.first + blocks);
        while at < end {
            let chunk = &self.chunks[(at / DATA_CHUNK_BLOCKS) as usize];
            let from = (at % DATA_CHUNK_BLOCKS) as usize;
            let n = (DATA_CHUNK_BLOCKS - at % DATA_CHUNK_BLOCKS).min(end - at) as usize;
            digest.update(&chunk[from * bs..(from + n) * bs]);
            at += n as u32;
        }
        digest.finalize() as u32
    }
}

/// The data offsets `first..end` a segment's entries hold (those in
/// bounds: their data lies between the header and the summaries, in append
/// order), if any.
fn data_span(geo: &Geometry, rec: &SegmentRecord, entries: &[SummaryEntry]) -> Option<(u32, u32)> {
    let count = rec.trusted_entries as usize + entries.len();
    let data = entries.iter().filter(|e| e.kind == EntryKind::Data && entry_in_bounds(geo, e, count));
    let first = data.clone().map(|e| e.data_offset).min()?;
    let end = data.map(|e| e.data_offset + e.blocks).max()?;
    Some((first, end))
}

/// How many of a segment's `entries` (after its `trusted_entries`) are
/// intact, from the first: in bounds, their data matching its CRC.
fn intact_entries(geo: &Geometry, rec: &SegmentRecord, entries: &[SummaryEntry], data: Option<&SegmentData>) -> usize {
    let count = rec.trusted_entries as usize + entries.len();
    let bs = geo.block_size as usize;
    let intact = |e: &SummaryEntry| {
        entry_in_bounds(geo, e, count)
            && (e.kind != EntryKind::Data || data.is_some_and(|d| d.crc(e.data_offset, e.blocks, bs) == e.data_crc))
    };
    entries.iter().take_while(|e| intact(e)).count()
}

/// For each of `segments` (record, entries not yet trusted), how many
/// entries are intact. Their data is read in order with reads in flight
/// while earlier segments are checked, and held only until checked.
fn verify_segments(
    io: &mut SyncIo,
    geo: &Geometry,
    segments: &[(SegmentRecord, Vec<SummaryEntry>)],
) -> Result<Vec<usize>> {
    let mut good: Vec<usize> = segments.iter().map(|(rec, entries)| intact_entries(geo, rec, entries, None)).collect();
    // (segment, first offset, chunks): one request per chunk.
    let mut reads: Vec<(usize, u32, usize)> = Vec::new();
    let mut reqs = Vec::new();
    for (i, (rec, entries)) in segments.iter().enumerate() {
        let Some((first, end)) = data_span(geo, rec, entries) else { continue };
        let start = geo.segment_start(rec.segno);
        let mut at = first;
        while at < end {
            let n = (end - at).min(DATA_CHUNK_BLOCKS);
            reqs.push((start + u64::from(at), n));
            at += n;
        }
        reads.push((i, first, (end - first).div_ceil(DATA_CHUNK_BLOCKS) as usize));
    }
    let mut reads = reads.into_iter();
    let mut current: Option<((usize, u32, usize), Vec<DmaBuf>)> = None;
    io.read_in_order(&reqs, READ_AHEAD_BYTES, |_, buf, spares| {
        let ((seg, first, chunks), mut bufs) =
            current.take().unwrap_or_else(|| (reads.next().expect("a read for every request"), Vec::new()));
        bufs.push(buf);
        if bufs.len() < chunks {
            current = Some(((seg, first, chunks), bufs));
            return;
        }
        let (rec, entries) = &segments[seg];
        let data = SegmentData { first, chunks: bufs };
        good[seg] = intact_entries(geo, rec, entries, Some(&data));
        spares.extend(data.chunks);
    })?;
    Ok(good)
}

/// Segments that may have been opened after `ckpt`: those of its window
/// (format version 1 had none: any free segment) it does not list, each
/// once. Images written before the checkpoint writer was mended may list a
/// window segment twice, and one replayed twice would trust its entries
/// twice over.
fn opened_after(ckpt: &Checkpoint, geo: &Geometry) -> Vec<u32> {
    let mut seen: HashSet<u32> = ckpt.segments.iter().map(|s| s.segno).collect();
    match &ckpt.window {
        Some(window) => window.iter().copied().filter(|&s| s < geo.segment_count && seen.insert(s)).collect(),
        None => (0..geo.segment_count).filter(|&s| seen.insert(s)).collect(),
    }
}

/// Step 2: segments opened after the checkpoint (found by header) and the
/// open ones' entries past it, each stream in order up to its first torn or
/// corrupt entry. Returns the highest sequence number seen on media.
pub(super) fn replay_tail(io: &mut SyncIo, t: &mut Trusted) -> Result<u64> {
    let geo = t.sb.geometry;
    let uuid = t.sb.uuid;
    // Every sequence number seen on media stays used: a stale segment must
    // never share its sequence with a new incarnation.
    let mut seq_seen = t.ckpt.seq_high;
    let candidates = opened_after(&t.ckpt, &geo);
    let headers: Vec<(u64, u32)> = candidates.iter().map(|&s| (geo.segment_start(s), 1)).collect();
    let mut found = Vec::new();
    for (&segno, block) in candidates.iter().zip(io.read_batch(&headers)?) {
        let Some(h) = SegmentHeader::decode(&block, &uuid) else { continue };
        // What the checkpoint's writer opened after it carries its epoch.
        // An older one is stale: opened before an earlier crash, outside
        // the window that mount scanned (and fenced), e.g. by a move.
        if h.seq <= t.ckpt.seq_high || h.epoch < t.ckpt.epoch {
            continue;
        }
        seq_seen = seq_seen.max(h.seq);
        let record = SegmentRecord {
            segno,
            seq: h.seq,
            stream: h.stream,
            epoch: h.epoch,
            partition: h.partition,
            trusted_entries: 0,
            open: false,
        };
        found.push(ChainRead { record, known_groups: 0, open_ended: true });
    }
    for (r, entries) in found.iter().zip(read_chains(io, &geo, &uuid, &found)?) {
        t.to_verify.push((r.record, entries));
    }
    let mut to_verify = std::mem::take(&mut t.to_verify);
    to_verify.sort_by_key(|(r, _)| (r.epoch, r.stream, r.seq));
    let good = verify_segments(io, &geo, &to_verify)?;
    let mut torn_stream = None;
    for ((rec, entries), good) in to_verify.iter().zip(good) {
        if torn_stream == Some((rec.epoch, rec.stream)) {
            continue;
        }
        if good < entries.len() {
            log::warn!("replay: stream {}.{} ends in segment {} at entry {good}", rec.epoch, rec.stream, rec.segno);
            torn_stream = Some((rec.epoch, rec.stream));
        }
        let seg = t.loaded.entry(rec.segno).or_insert(Loaded { record: *rec, entries: Vec::new() });
        seg.entries.extend_from_slice(&entries[..good]);
        seg.record.trusted_entries = seg.entries.len() as u32;
    }
    let listed = &t.ckpt.segments;
    t.loaded.retain(|_, l| !l.entries.is_empty() || listed.iter().any(|s| s.segno == l.record.segno));
    Ok(seq_seen)
}
