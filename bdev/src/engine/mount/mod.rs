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
mod rebuild;
mod replay;

use super::control::{Control, SegmentInfo, ENTRY_BITS};
use super::drain::BaselineMap;
use super::free::FreeSegments;
use super::shard::{Shard, ShardInit};
use super::shared::{Clock, Shared, Submitter, SystemClock, QUEUE_DEPTH};
use super::space::{count_live, Counters, SegmentSpace};
use crate::device::{BlockDevice, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{Checkpoint, EntryKind, FormatOptions, Geometry, Superblock};
use crossbeam_queue::ArrayQueue;
use io::SyncIo;
use load::{load_trusted, Trusted};
use rebuild::{rebuild, Rebuilt};
use replay::replay_tail;
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

/// Mounts a formatted device for `cores` cores.
pub fn mount(dev: Arc<dyn BlockDevice>, cores: u32) -> Result<Mounted> {
    mount_with_clock(dev, cores, Arc::new(SystemClock))
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
        replay_window_kib: next.replay_window_kib,
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
