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

use super::addr::ZERO;
use super::control::{Control, SegmentInfo, ENTRY_BITS};
use super::drain::BaselineMap;
use super::index::BlockIndex;
use super::logmap::LogMap;
use super::partition::Partitions;
use super::shard::{Shard, ShardInit};
use super::shared::{Clock, Shared, Submitter, SystemClock, QUEUE_DEPTH};
use super::space::{count_live, Counters, SegmentSpace};
use crate::device::{BlockDevice, DevChannel, DevOp, DevRequest, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{
    Checkpoint, EntryKind, FormatOptions, Geometry, SegmentHeader, SegmentId, SegmentRecord, SummaryChain,
    SummaryEntry, SummaryKey, Superblock,
};
use crossbeam_queue::ArrayQueue;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

/// A mounted bdev, ready for a runtime to drive.
pub struct Mounted {
    pub submitter: Submitter,
    /// One per core; shard `i` must be polled on core `i` only.
    pub shards: Vec<Shard>,
    pub geometry: Geometry,
    /// Whether the bdev was not closed cleanly and the log was replayed.
    pub replayed: bool,
}

/// One request at a time, polled to completion.
struct SyncIo {
    chan: Box<dyn DevChannel>,
    bs: usize,
}

impl SyncIo {
    fn run(&mut self, op: DevOp, block: u64, nblocks: u32, buf: *mut u8) -> Result<()> {
        let req = DevRequest { op, block, nblocks, buf, tag: 1 };
        // SAFETY: callers pass buffers of `nblocks` blocks that live until
        // this function returns, by which time the request completed.
        while unsafe { self.chan.submit(req) }.is_err() {
            self.chan.poll(&mut |_, _| {});
        }
        let mut result = None;
        while result.is_none() {
            self.chan.poll(&mut |_, status| result = Some(status));
        }
        result.expect("polled to completion").map_err(Error::Io)
    }

    fn read(&mut self, block: u64, nblocks: u32) -> Result<DmaBuf> {
        let mut buf = DmaBuf::new(nblocks as usize * self.bs, self.bs);
        self.run(DevOp::Read, block, nblocks, buf.as_mut_ptr())?;
        Ok(buf)
    }

    fn write(&mut self, block: u64, buf: &mut DmaBuf) -> Result<()> {
        let nblocks = (buf.len() / self.bs) as u32;
        self.run(DevOp::Write, block, nblocks, buf.as_mut_ptr())
    }

    fn flush(&mut self) -> Result<()> {
        self.run(DevOp::Flush, 0, 0, std::ptr::null_mut())
    }
}

fn sync_io(dev: &dyn BlockDevice) -> Result<SyncIo> {
    let chan = dev.channel().map_err(|e| Error::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(SyncIo { chan, bs: dev.block_size() as usize })
}

/// Formats `dev` as an empty ilog bdev. Whatever the device held becomes
/// unreachable: segments are recognised by `uuid`.
pub fn format(dev: &dyn BlockDevice, opts: &FormatOptions, uuid: [u8; 16]) -> Result<Geometry> {
    let geometry = Geometry::plan(dev.block_size(), dev.num_blocks(), opts)?;
    let mut io = sync_io(dev)?;
    let ckpt = Checkpoint { generation: 1, uuid, next_partition: 1, clean: true, ..Checkpoint::default() };
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

/// Reads a segment's summary groups in order, up to the first missing one.
fn read_summaries(
    io: &mut SyncIo,
    geo: &Geometry,
    uuid: &[u8; 16],
    record: &SegmentRecord,
) -> Result<Vec<SummaryEntry>> {
    let key = SummaryKey { id: SegmentId { epoch: record.epoch, seq: record.seq }, base: record.partition };
    let mut chain = SummaryChain::new(*uuid, key, geo.entries_per_summary());
    for g in 0..geo.segment_blocks / 2 {
        let pair = io.read(geo.summary_slot(record.segno, g, 0), 2)?;
        let (a, b) = pair.split_at(io.bs);
        if !chain.push([a, b]) {
            break;
        }
    }
    Ok(chain.into_entries())
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

/// Whether an entry's data is on the device as its summary says.
fn entry_intact(io: &mut SyncIo, geo: &Geometry, segno: u32, e: &SummaryEntry, count: usize) -> Result<bool> {
    if !entry_in_bounds(geo, e, count) {
        return Ok(false);
    }
    if e.kind != EntryKind::Data {
        return Ok(true);
    }
    let data = io.read(geo.segment_start(segno) + u64::from(e.data_offset), e.blocks)?;
    Ok(crate::format::crc32c(&data) == e.data_crc)
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
    let (a, b) = (io.read(0, 1)?, io.read(1, 1)?);
    let sb = Superblock::choose(&a, &b, dev.num_blocks(), dev.block_size())?;
    let geo = sb.geometry;
    let ckpt = read_checkpoint(io, &geo, &sb.uuid)?;
    if ckpt.segments.iter().any(|s| s.segno >= geo.segment_count) || ckpt.volumes.len() > geo.max_volumes as usize {
        return Err(Error::Corrupt("checkpoint names segments or volumes the geometry cannot hold".into()));
    }
    let mut loaded: BTreeMap<u32, Loaded> = BTreeMap::new();
    let mut to_verify = Vec::new();
    for rec in &ckpt.segments {
        let mut entries = read_summaries(io, &geo, &sb.uuid, rec)?;
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
    for segno in (0..geo.segment_count).filter(|s| !listed.contains(s)) {
        let Some(h) = SegmentHeader::decode(&io.read(geo.segment_start(segno), 1)?, &uuid) else { continue };
        if h.seq <= t.ckpt.seq_high {
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
        let entries = read_summaries(io, &geo, &uuid, &record)?;
        t.to_verify.push((record, entries));
    }
    let mut to_verify = std::mem::take(&mut t.to_verify);
    to_verify.sort_by_key(|(r, _)| (r.epoch, r.stream, r.seq));
    let mut torn_stream = None;
    for (rec, entries) in to_verify {
        if torn_stream == Some((rec.epoch, rec.stream)) {
            continue;
        }
        let mut good = 0;
        let count = rec.trusted_entries as usize + entries.len();
        for e in &entries {
            if !entry_intact(io, &geo, rec.segno, e, count)? {
                log::warn!("replay: stream {}.{} ends in segment {} at entry {good}", rec.epoch, rec.stream, rec.segno);
                torn_stream = Some((rec.epoch, rec.stream));
                break;
            }
            good += 1;
        }
        let seg = t.loaded.entry(rec.segno).or_insert(Loaded { record: rec, entries: Vec::new() });
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
    let mut order: Vec<(u32, u64, u32, usize)> = Vec::new(); // (partition, seq, segno, entry)
    for l in loaded.values() {
        logmap.open(l.record.segno, l.record.partition);
        for (i, e) in l.entries.iter().enumerate() {
            if e.kind == EntryKind::Data {
                logmap.note(l.record.segno, e.data_offset, e.partition);
            }
            if e.kind != EntryKind::Hole && e.partition > drained {
                order.push((e.partition, l.record.seq, l.record.segno, i));
            }
        }
    }
    order.sort_unstable();
    let max_partition = order.last().map_or(0, |o| o.0);
    let open_partition = ckpt.next_partition.max(max_partition).max(1);
    let first_partition = order.first().map_or(open_partition, |o| o.0);
    let mut indexes: Vec<BlockIndex> =
        (0..cores).map(|c| BlockIndex::new(geo.volume_blocks, geo.stripe_blocks, cores, c)).collect();
    let mut parts: Vec<Partitions> = (0..cores).map(|_| Partitions::new(first_partition)).collect();
    for &(partition, _, segno, i) in &order {
        let e = &loaded[&segno].entries[i];
        let base = segno * geo.segment_blocks;
        for b in 0..e.blocks {
            let lba = e.lba + u64::from(b);
            let owner = ((lba / u64::from(geo.stripe_blocks)) % u64::from(cores)) as usize;
            let addr = if e.kind == EntryKind::Data { base + e.data_offset + b } else { ZERO };
            indexes[owner].set(lba, addr);
            parts[owner].record(partition, lba as u32, addr);
        }
    }
    for p in &mut parts {
        p.seal_up_to(open_partition);
    }
    Rebuilt { indexes, parts, logmap, open_partition }
}

/// [`mount`] with the clock policies and volume times follow.
pub fn mount_with_clock(dev: Arc<dyn BlockDevice>, cores: u32, clock: Arc<dyn Clock>) -> Result<Mounted> {
    if cores == 0 || cores > 1024 {
        return Err(Error::InvalidArgument(format!("{cores} cores: need 1..=1024")));
    }
    let mut io = sync_io(dev.as_ref())?;
    let mut t = load_trusted(&mut io, dev.as_ref())?;
    let replayed = !t.ckpt.clean;
    let seq_seen = if replayed { replay_tail(&mut io, &mut t)? } else { t.ckpt.seq_high };
    let Trusted { sb, ckpt, loaded, .. } = t;
    let geo = sb.geometry;
    let Rebuilt { indexes, parts, logmap, open_partition } = rebuild(&geo, &ckpt, &loaded, cores);

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
    let next = Checkpoint {
        generation: ckpt.generation.checked_add(1).ok_or_else(exhausted)?,
        uuid: sb.uuid,
        seq_high,
        epoch: ckpt.epoch.checked_add(1).ok_or_else(exhausted)?,
        next_partition: open_partition,
        next_snapshot_number: ckpt.next_snapshot_number,
        clean: false,
        baseline_partition: ckpt.baseline_partition,
        draining: ckpt.draining,
        drained_below: ckpt.drained_below,
        policy: ckpt.policy.clone(),
        baseline_stripes: ckpt.baseline_stripes.clone(),
        volumes: ckpt.volumes.clone(),
        segments: loaded.values().map(|l| l.record).collect(),
    };
    let first_seq = seq_high.checked_add(1).ok_or_else(exhausted)?;
    write_checkpoint(&mut io, &geo, &next)?;
    io.flush()?;

    let free_segments = ArrayQueue::new(geo.segment_count as usize);
    for segno in (0..geo.segment_count).filter(|s| !loaded.contains_key(s)) {
        free_segments.push(segno).expect("sized for every segment");
    }
    let shared = Arc::new(Shared {
        geo,
        uuid: sb.uuid,
        epoch: next.epoch,
        cores,
        free_segments,
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
