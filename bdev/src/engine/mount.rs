//! Formatting a base device, and mounting one, in four steps:
//! 1. load what the checkpoint vouches for: the superblock, the newest
//!    valid checkpoint, the summaries of the segments it lists;
//! 2. (after an unclean stop) replay the tail: segments written since, found
//!    by their headers, each stream up to its first torn entry;
//! 3. rebuild each core's index shard and partition tables from the
//!    entries, in (partition, log order) order, leaving out what drained
//!    into the baseline;
//! 4. fence: a new checkpoint lists exactly what was accepted, before
//!    anything new is written.
//!
//! Mount runs before the reactors start, so it drives one device channel
//! synchronously.

use super::addr::{LogAddr, ZERO};
use super::control::{Control, SegmentInfo, ENTRY_BITS};
use super::drain::BaselineMap;
use super::free::FreeSegments;
use super::index::BlockIndex;
use super::logmap::LogMap;
use super::mount_io::SyncIo;
use super::partition::Partitions;
use super::shard::{Shard, ShardInit};
use super::shared::{Clock, Shared, Submitter, SystemClock, QUEUE_DEPTH};
use super::space::{count_live, Counters, SegmentSpace};
use crate::device::{BlockDevice, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{
    Checkpoint, EntryKind, FormatOptions, Geometry, SegmentHeader, SegmentId, SegmentRecord, SummaryChain,
    SummaryEntry, SummaryKey, Superblock,
};
use crossbeam_queue::ArrayQueue;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// What a mount did, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountReport {
    /// The bdev was not closed cleanly: the log since the checkpoint was
    /// scanned and replayed.
    pub crash: bool,
    pub micros: u64,
    /// Bytes mount read from the device.
    pub read_bytes: u64,
}

/// Mount's phases, logged as they end (with what each read, and took).
struct Phases {
    at: Instant,
    read_at: u64,
}

impl Default for Phases {
    fn default() -> Self {
        Phases { at: Instant::now(), read_at: 0 }
    }
}

impl Phases {
    fn done(&mut self, what: &str, io: &SyncIo) {
        let read = io.read_bytes - self.read_at;
        log::info!("mount: {what}: {:.1} MiB read, {:.1?}", read as f64 / (1 << 20) as f64, self.at.elapsed());
        (self.at, self.read_at) = (Instant::now(), io.read_bytes);
    }
}

/// A mounted bdev, ready for a runtime to drive.
pub struct Mounted {
    pub submitter: Submitter,
    /// One per core; shard `i` must be polled on core `i` only.
    pub shards: Vec<Shard>,
    pub geometry: Geometry,
    /// Whether the bdev was not closed cleanly and the log was replayed.
    pub replayed: bool,
}

/// Formats `dev` as an empty ilog bdev. Whatever the device held becomes
/// unreachable: segments are recognised by `uuid`.
pub fn format(dev: &dyn BlockDevice, opts: &FormatOptions, uuid: [u8; 16]) -> Result<Geometry> {
    let geometry = Geometry::plan(dev.block_size(), dev.num_blocks(), opts)?;
    let mut io = SyncIo::new(dev)?;
    let ckpt = Checkpoint {
        generation: 1,
        uuid,
        next_partition: 1,
        clean: true,
        // Nothing can have been written before the first mount.
        window: Some(Vec::new()),
        replay_window_kib: (opts.replay_window_bytes >> 10) as u32,
        ..Checkpoint::default()
    };
    write_checkpoint(&mut io, &geometry, &ckpt)?;
    let mut block = DmaBuf::new(io.bs, io.bs);
    // The other slot may hold an older format's checkpoint: blank it.
    io.write(geometry.ckpt_slot_start(0), &mut block)?;
    io.flush()?;
    Superblock { uuid, generation: 1, geometry }.encode(&mut block);
    io.write(0, &mut block)?;
    io.write(1, &mut block)?;
    io.flush()?;
    log::info!(
        "formatted: {} volume blocks of {} bytes, {} log segments of {} blocks",
        geometry.volume_blocks,
        geometry.block_size,
        geometry.segment_count,
        geometry.segment_blocks
    );
    Ok(geometry)
}

fn write_checkpoint(io: &mut SyncIo, geo: &Geometry, ckpt: &Checkpoint) -> Result<()> {
    let len = ckpt.encoded_len().div_ceil(io.bs) * io.bs;
    let mut buf = DmaBuf::new(len, io.bs);
    ckpt.encode(&mut buf);
    io.write(geo.ckpt_slot_start((ckpt.generation % 2) as u32), &mut buf)
}

fn read_checkpoint(io: &mut SyncIo, geo: &Geometry, uuid: &[u8; 16]) -> Result<Checkpoint> {
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
struct Loaded {
    record: SegmentRecord,
    entries: Vec<SummaryEntry>,
}

impl Loaded {
    /// The newest partition of its entries (its base when it has none).
    fn last_partition(&self) -> u32 {
        self.entries.iter().map(|e| e.partition).max().unwrap_or(self.record.partition).max(self.record.partition)
    }
}

/// Summary groups read at once while a chain's end is unknown.
const CHUNK_GROUPS: u32 = 16;
/// Most blocks of one read of replayed data.
const DATA_CHUNK_BLOCKS: u32 = 2048;
/// Replayed data read ahead of the check of its CRCs, at most.
const READ_AHEAD_BYTES: usize = 64 << 20;

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
struct ChainRead {
    record: SegmentRecord,
    known_groups: u32,
    open_ended: bool,
}

/// Reads the summary chains of `reads`, a batch at a time: first the groups
/// each is known to hold, then, where the chain may go on, more groups in
/// chunks until it ends. Each chain's entries, in order.
fn read_chains(
    io: &mut SyncIo,
    geo: &Geometry,
    uuid: &[u8; 16],
    reads: &[ChainRead],
) -> Result<Vec<Vec<SummaryEntry>>> {
    let max_groups = geo.segment_blocks / 2;
    let per_group = geo.entries_per_summary();
    let key = |r: &SegmentRecord| SummaryKey { id: SegmentId { epoch: r.epoch, seq: r.seq }, base: r.partition };
    // (chain, next group, whether to read on)
    let mut chains: Vec<(SummaryChain, u32, bool)> = reads
        .iter()
        .map(|r| (SummaryChain::new(*uuid, key(&r.record), per_group), 0, r.known_groups > 0 || r.open_ended))
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
fn entry_in_bounds(geo: &Geometry, e: &SummaryEntry, count: usize) -> bool {
    let summaries = 2 * (count as u64).div_ceil(u64::from(geo.entries_per_summary()));
    let data_end = u64::from(geo.segment_blocks).saturating_sub(summaries);
    e.blocks > 0
        && e.lba.checked_add(u64::from(e.blocks)).is_some_and(|end| end <= geo.volume_blocks)
        && match e.kind {
            EntryKind::Data => e.data_offset >= 1 && u64::from(e.data_offset) + u64::from(e.blocks) <= data_end,
            EntryKind::Zero | EntryKind::Hole => true,
        }
}

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

/// Mounts a formatted device for `cores` cores.
pub fn mount(dev: Arc<dyn BlockDevice>, cores: u32) -> Result<Mounted> {
    mount_with_clock(dev, cores, Arc::new(SystemClock))
}

/// What the checkpoint vouches for, and the entries past it still to check.
struct Trusted {
    sb: Superblock,
    ckpt: Checkpoint,
    loaded: BTreeMap<u32, Loaded>,
    /// Entries written after the checkpoint, per segment, to replay.
    to_verify: Vec<(SegmentRecord, Vec<SummaryEntry>)>,
}

/// Step 1: the superblock, the newest valid checkpoint, and the summaries
/// of the segments it lists, up to their trusted entries.
fn load_trusted(io: &mut SyncIo, dev: &dyn BlockDevice) -> Result<Trusted> {
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

/// Step 2: segments opened after the checkpoint (found by header) and the
/// open ones' entries past it, each stream in order up to its first torn or
/// corrupt entry. Returns the highest sequence number seen on media.
fn replay_tail(io: &mut SyncIo, t: &mut Trusted) -> Result<u64> {
    let geo = t.sb.geometry;
    let uuid = t.sb.uuid;
    // Every sequence number seen on media stays used: a stale segment must
    // never share its sequence with a new incarnation.
    let mut seq_seen = t.ckpt.seq_high;
    let listed: HashSet<u32> = t.ckpt.segments.iter().map(|s| s.segno).collect();
    // Segments opened after the checkpoint: in its window (format version
    // 1 had none: any free segment).
    let candidates: Vec<u32> = match &t.ckpt.window {
        Some(window) => window.iter().copied().filter(|s| *s < geo.segment_count && !listed.contains(s)).collect(),
        None => (0..geo.segment_count).filter(|s| !listed.contains(s)).collect(),
    };
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

/// What step 3 builds for each core.
struct Rebuilt {
    indexes: Vec<BlockIndex>,
    parts: Vec<Partitions>,
    logmap: LogMap,
    open_partition: u32,
}

/// Step 3: the index shards and partition tables, from every entry not
/// drained, in (partition, log order) order: the order of every block's
/// versions, with partitions ascending on every shard, even when the core
/// count changed between mounts.
fn rebuild(geo: &Geometry, ckpt: &Checkpoint, loaded: &BTreeMap<u32, Loaded>, cores: u32) -> Rebuilt {
    let drained = ckpt.baseline_partition;
    let mut logmap = LogMap::new(geo.segment_count, geo.segment_blocks);
    let mut segments: Vec<&Loaded> = loaded.values().collect();
    segments.sort_unstable_by_key(|l| l.record.seq);
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
        let mut parts = Partitions::from_versions(first_partition, &versions[core]);
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

/// [`mount`] with the clock policies and volume times follow.
pub fn mount_with_clock(dev: Arc<dyn BlockDevice>, cores: u32, clock: Arc<dyn Clock>) -> Result<Mounted> {
    if cores == 0 || cores > 1024 {
        return Err(Error::InvalidArgument(format!("{cores} cores: need 1..=1024")));
    }
    let started = Instant::now();
    let mut phases = Phases::default();
    let mut io = SyncIo::new(dev.as_ref())?;
    let mut t = load_trusted(&mut io, dev.as_ref())?;
    phases.done("checkpoint and summaries read", &io);
    let replayed = !t.ckpt.clean;
    let seq_seen = if replayed { replay_tail(&mut io, &mut t)? } else { t.ckpt.seq_high };
    if replayed {
        phases.done("log scanned and replayed", &io);
    }
    let Trusted { sb, ckpt, loaded, .. } = t;
    let geo = sb.geometry;
    let Rebuilt { indexes, parts, logmap, open_partition } = rebuild(&geo, &ckpt, &loaded, cores);
    phases.done("index rebuilt", &io);

    let space: Vec<SegmentSpace> = (0..geo.segment_count).map(|_| SegmentSpace::default()).collect();
    for l in loaded.values() {
        let used = l.entries.iter().filter(|e| e.kind != EntryKind::Zero).map(|e| e.data_offset + e.blocks - 1).max();
        space[l.record.segno as usize].used.store(used.unwrap_or(0), Relaxed);
    }
    let volumes: Vec<u32> = ckpt.volumes.iter().map(|v| v.partition).collect();
    for (live, count) in space.iter().zip(count_live(&geo, indexes.iter().zip(&parts), &volumes, open_partition)) {
        live.current.store(count.0, Relaxed);
        live.pinned.store(count.1, Relaxed);
    }

    // Step 4, the fence: a new checkpoint lists exactly what was accepted,
    // so nothing torn or dropped here is ever replayed again.
    let seq_high = loaded.values().map(|l| l.record.seq).max().unwrap_or(0).max(seq_seen);
    let exhausted = || Error::Corrupt("checkpoint counters at their limit".into());
    // Everything else (volumes, policy, baseline and drain state, the
    // snapshot counter) is the mounted checkpoint's: the fence changes none.
    let next = Checkpoint {
        generation: ckpt.generation.checked_add(1).ok_or_else(exhausted)?,
        uuid: sb.uuid,
        seq_high,
        epoch: ckpt.epoch.checked_add(1).ok_or_else(exhausted)?,
        next_partition: open_partition,
        clean: false,
        window: None,
        segments: loaded.values().map(|l| l.record).collect(),
        ..ckpt.clone()
    };
    let first_seq = seq_high.checked_add(1).ok_or_else(exhausted)?;
    let free = FreeSegments::new(geo.segment_count, geo.window_segments(ckpt.replay_window_kib));
    for segno in (0..geo.segment_count).filter(|s| !loaded.contains_key(s)) {
        free.release(segno);
    }
    let window = free.take_for_window(0);
    let next = Checkpoint { window: Some(window.clone()), ..next };
    write_checkpoint(&mut io, &geo, &next)?;
    io.flush()?;
    free.open_window(&window);
    phases.done("fenced", &io);
    let report =
        MountReport { crash: replayed, micros: started.elapsed().as_micros() as u64, read_bytes: io.read_bytes };

    let shared = Arc::new(Shared {
        geo,
        uuid: sb.uuid,
        epoch: next.epoch,
        cores,
        free,
        next_seq: AtomicU64::new(first_seq),
        inbox: (0..cores).map(|_| ArrayQueue::new(QUEUE_DEPTH)).collect(),
        clients: (0..cores).map(|_| ArrayQueue::new(QUEUE_DEPTH)).collect(),
        closed: AtomicBool::new(false),
        space,
        counters: Counters::default(),
        space_state: AtomicU8::new(0),
        baseline: BaselineMap::new(&next.baseline_stripes, geo.stripe_count()),
        clock,
        volumes_generation: AtomicU64::new(0),
        copy_offload: dev.supports_copy(),
        mount: report,
    });
    let live_volumes = Arc::new(next.volumes.iter().map(|v| v.partition).collect::<Vec<_>>());
    let mut shards = Vec::with_capacity(cores as usize);
    for (core, (index, parts)) in indexes.into_iter().zip(parts).enumerate() {
        let chan = dev.channel().map_err(|e| Error::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let init = ShardInit {
            index,
            parts,
            logmap: logmap.clone(),
            open_partition,
            drained: ckpt.baseline_partition,
            stream_start: first_seq << ENTRY_BITS,
            live_volumes: live_volumes.clone(),
        };
        shards.push(Shard::new(core as u32, shared.clone(), chan, init));
    }
    let bs = geo.block_size as usize;
    let now = shared.clock.now_unix_s();
    let ckpt_buf = DmaBuf::new(geo.ckpt_slot_bytes(), bs);
    let mut control = Control::new(&next, open_partition, ckpt_buf, now);
    control.register(loaded.values().map(|l| SegmentInfo { record: l.record, last_partition: l.last_partition() }));
    shards[0].ctl = Some(Box::new(control));
    log::info!(
        "mounted: {} segments in use, {} volumes, open partition {open_partition}{}",
        loaded.len(),
        next.volumes.len(),
        if replayed { ", log replayed" } else { "" }
    );
    Ok(Mounted { submitter: Submitter { shared }, shards, geometry: geo, replayed })
}
