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

mod io;
mod load;
mod primaries;
mod rebuild;
mod replay;

use super::baseline::BaselineMap;
use super::control::{Control, FromMount};
use super::cursor::ENTRY_BITS;
use super::free::FreeSegments;
use super::registry::{Registry, SegmentInfo};
use super::request::MountReport;
use super::shard::{Shard, ShardInit};
use super::shared::{Clock, Shared, Submitter, SystemClock, QUEUE_DEPTH};
use super::space::{count_live, Counters, SegmentSpace};
use crate::device::{BlockDevice, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{Checkpoint, EntryKind, FormatOptions, Geometry, PrimaryRecord, Superblock};
use crossbeam_queue::ArrayQueue;
use io::SyncIo;
use load::{load_trusted, Loaded, Trusted};
use primaries::mount_primaries;
pub use primaries::{recorded_primaries, PrimaryOpen};
use rebuild::{rebuild, Rebuilt};
use replay::replay_tail;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

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

/// Mounts a formatted device for `cores` cores.
pub fn mount(dev: Arc<dyn BlockDevice>, cores: u32) -> Result<Mounted> {
    mount_with_clock(dev, cores, Arc::new(SystemClock))
}

/// [`mount`] with the clock policies and volume times follow.
pub fn mount_with_clock(dev: Arc<dyn BlockDevice>, cores: u32, clock: Arc<dyn Clock>) -> Result<Mounted> {
    mount_with_primaries(dev, cores, clock, Vec::new())
}

/// [`mount_with_clock`] with primaries: the recorded ones on the devices
/// `primaries` names (one it does not name, or names with `None`, is
/// degraded), and any it names that are not recorded added, to be synced
/// whole (see `mirror/`).
pub fn mount_with_primaries(
    dev: Arc<dyn BlockDevice>,
    cores: u32,
    clock: Arc<dyn Clock>,
    primaries: Vec<PrimaryOpen>,
) -> Result<Mounted> {
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
    let primaries = mount_primaries(&geo, &ckpt, &loaded, replayed, primaries)?;
    let rebuilt = rebuild(&geo, &ckpt, &loaded, cores);
    phases.done("index rebuilt", &io);
    let space = count_space(&geo, &ckpt, &loaded, &rebuilt);
    let records = primaries.iter().map(|p| p.record(geo.stripe_blocks, geo.stripe_count())).collect();
    let found = Found { seq_seen, open_partition: rebuilt.open_partition, now: clock.now_unix_s(), primaries: records };
    let fenced = fence(&mut io, &geo, &ckpt, &loaded, found)?;
    phases.done("fenced", &io);
    let report =
        MountReport { crash: replayed, micros: started.elapsed().as_micros() as u64, read_bytes: io.read_bytes };
    log::info!(
        "mounted: {} segments in use, {} volumes, open partition {}{}",
        loaded.len(),
        ckpt.volumes.len(),
        rebuilt.open_partition,
        if replayed { ", log replayed" } else { "" }
    );
    let shared = Arc::new(Shared {
        geo,
        uuid: sb.uuid,
        epoch: fenced.epoch,
        cores,
        free: fenced.free,
        next_seq: AtomicU64::new(fenced.first_seq),
        inbox: (0..cores).map(|_| ArrayQueue::new(QUEUE_DEPTH)).collect(),
        clients: (0..cores).map(|_| ArrayQueue::new(QUEUE_DEPTH)).collect(),
        closed: AtomicBool::new(false),
        space,
        counters: Counters::default(),
        space_state: AtomicU8::new(0),
        baseline: BaselineMap::new(&ckpt.baseline_stripes, geo.stripe_count()),
        clock,
        volumes_generation: AtomicU64::new(0),
        copy_offload: dev.supports_copy(),
        mount: report,
        replay_window_kib: ckpt.replay_window_kib,
        primaries,
    });
    let shards = hand_over(dev.as_ref(), &shared, &ckpt, rebuilt, fenced.control)?;
    Ok(Mounted { submitter: Submitter { shared }, shards, geometry: geo, replayed })
}

/// Each segment's space counts (blocks used, current and pinned), from the
/// entries accepted and the rebuilt shards.
fn count_space(geo: &Geometry, ckpt: &Checkpoint, loaded: &BTreeMap<u32, Loaded>, r: &Rebuilt) -> Vec<SegmentSpace> {
    let space: Vec<SegmentSpace> = (0..geo.segment_count).map(|_| SegmentSpace::default()).collect();
    for l in loaded.values() {
        let used = l.entries.iter().filter(|e| e.kind != EntryKind::Zero).map(|e| e.data_offset + e.blocks - 1).max();
        space[l.record.segno as usize].used.store(used.unwrap_or(0), Relaxed);
    }
    let volumes: Vec<u32> = ckpt.volumes.iter().map(|v| v.partition).collect();
    let live = count_live(geo, r.indexes.iter().zip(&r.parts), &volumes, r.open_partition);
    for (space, (current, pinned)) in space.iter().zip(live) {
        space.current.store(current, Relaxed);
        space.pinned.store(pinned, Relaxed);
    }
    space
}

/// What the fence leaves: the coordinator that wrote it, the free
/// segments (its window open), this mount's epoch and its first sequence.
struct Fenced {
    control: Control,
    free: FreeSegments,
    epoch: u32,
    first_seq: u64,
}

/// What this mount found that the fence records besides the accepted
/// segments: the highest sequence seen, the open partition, the time and
/// the primaries' states.
struct Found {
    seq_seen: u64,
    open_partition: u32,
    now: u64,
    primaries: Vec<PrimaryRecord>,
}

/// Step 4, the fence: a new checkpoint lists exactly what was accepted, so
/// nothing torn or dropped here is ever replayed again. The coordinator
/// writes it, as it writes every later one; everything but the segments,
/// the epoch, the sequence bound and the window (volumes, policy, baseline
/// and drain state, the snapshot counter) is the mounted checkpoint's.
fn fence(
    io: &mut SyncIo,
    geo: &Geometry,
    ckpt: &Checkpoint,
    loaded: &BTreeMap<u32, Loaded>,
    found: Found,
) -> Result<Fenced> {
    let Found { seq_seen, open_partition, now, primaries } = found;
    let seq_high = loaded.values().map(|l| l.record.seq).max().unwrap_or(0).max(seq_seen);
    let exhausted = || Error::Corrupt("checkpoint counters at their limit".into());
    ckpt.generation.checked_add(1).ok_or_else(exhausted)?;
    let epoch = ckpt.epoch.checked_add(1).ok_or_else(exhausted)?;
    let first_seq = seq_high.checked_add(1).ok_or_else(exhausted)?;
    let free = FreeSegments::new(geo.segment_count, geo.window_segments(ckpt.replay_window_kib));
    for segno in (0..geo.segment_count).filter(|s| !loaded.contains_key(s)) {
        free.release(segno);
    }
    let registry =
        Registry::new(loaded.values().map(|l| SegmentInfo { record: l.record, last_partition: l.last_partition() }));
    let ckpt_buf = DmaBuf::new(geo.ckpt_slot_bytes(), geo.block_size as usize);
    let mut control = Control::new(ckpt, FromMount { registry, epoch, seq_high, open_partition, ckpt_buf, now });
    let next = control.next_checkpoint(&free, false, ckpt.baseline_stripes.clone(), primaries);
    write_checkpoint(io, geo, &next)?;
    io.flush()?;
    control.checkpoint_durable(&free);
    Ok(Fenced { control, free, epoch, first_seq })
}

/// The shards handed over, each with its index shard and partition
/// tables; core 0's with the coordinator.
fn hand_over(
    dev: &dyn BlockDevice,
    shared: &Arc<Shared>,
    ckpt: &Checkpoint,
    rebuilt: Rebuilt,
    control: Control,
) -> Result<Vec<Shard>> {
    let Rebuilt { indexes, parts, logmap, open_partition } = rebuilt;
    let live_volumes = Arc::new(ckpt.volumes.iter().map(|v| v.partition).collect::<Vec<_>>());
    let stream_start = shared.next_seq.load(Relaxed) << ENTRY_BITS;
    let mut shards = Vec::with_capacity(shared.cores as usize);
    for (core, (index, parts)) in indexes.into_iter().zip(parts).enumerate() {
        let chan = dev.channel().map_err(|e| Error::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let init = ShardInit {
            index,
            parts,
            logmap: logmap.clone(),
            open_partition,
            drained: ckpt.baseline_partition,
            stream_start,
            live_volumes: live_volumes.clone(),
        };
        shards.push(Shard::new(core as u32, shared.clone(), chan, init));
    }
    shards[0].ctl = Some(Box::new(control));
    // Primaries with blocks to copy (added, rebuilding, or after a crash)
    // are synced by every core from the start.
    for (p, primary) in shared.primaries.iter().enumerate() {
        if primary.in_service() && primary.dirty.count() > 0 {
            shards.iter_mut().for_each(|s| s.wake_sync(p));
        }
    }
    Ok(shards)
}
