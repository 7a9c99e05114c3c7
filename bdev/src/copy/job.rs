//! A copy (volume → stream) and a restore (stream → ilog bdev or device),
//! each run start to end by one call on the job's thread, reporting its
//! progress and its resume token as it goes.

use super::store::{DeviceIo, Sink, StreamStore};
use super::stream::{io_error, Header, Position, StreamReader, StreamWriter, HEADER_LEN};
use super::{Extent, Progress, Volumes};
use crate::device::{BlockDevice, DmaBuf};
use crate::engine::{LogEntryKind, View, VolumeInfo};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Blocks one read of the source carries: a piece the engine serves
/// between client requests without a long stall.
const READ_BYTES: usize = 128 << 10;
/// Reads of the source a copy keeps in flight.
const READS_IN_FLIGHT: usize = 4;
/// The stream (or a restore's destination) is made durable, and the resume
/// token moves, at least this often.
const SYNC_BYTES: u64 = 16 << 20;
/// Most blocks one write-zeroes to an ilog bdev covers.
const ILOG_ZERO_BLOCKS: u64 = 1 << 16;

/// What `bdev_ilog_copy` copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopySpec {
    pub volume: String,
    /// Copy only what changed since this (older) volume.
    pub base_volume: Option<String>,
    pub lba_start: Option<u64>,
    pub lba_count: Option<u64>,
    pub resume_token: Option<String>,
}

/// What a copy writes: the stream's header, the extents, the view they
/// are read from, and where in the stream it starts.
pub struct Plan {
    pub header: Header,
    pub extents: Vec<Extent>,
    /// Stream bytes between syncs (16 MiB; the simulator syncs every few
    /// KiB, so that its small volumes resume from the middle).
    pub sync_bytes: u64,
    /// Reads of the source in flight (4; the simulator reads one at a time,
    /// so that a seed replays).
    pub reads_in_flight: usize,
    view: View,
    resume: Option<Position>,
}

impl Plan {
    /// The job's progress as it starts: its total, and what a resume
    /// finds done.
    pub fn progress(&self) -> Progress {
        let bs = u64::from(self.header.block_size);
        let from = self.resume.map_or(self.header.lba_start, |at| at.next_lba);
        let data = |e: &Extent| if e.kind == LogEntryKind::Data { clip(e, 0, from).blocks * bs } else { 0 };
        Progress::starting(self.header.data_blocks * bs, self.extents.iter().map(data).sum())
    }
}

impl RestorePlan {
    /// The job's progress as it starts: its total, and what a resume
    /// finds done.
    pub fn progress(&self) -> Progress {
        let bs = u64::from(self.header.block_size);
        let done = self.resume.map_or(0, |at| at.counts.data_blocks * bs);
        Progress::starting(self.header.data_blocks * bs, done)
    }
}

/// Checks `spec` against the source, and returns the stream's header and
/// the extents to copy. Cheap enough to run before answering the RPC, so
/// that bad input fails the call, not the job.
pub fn plan(src: &dyn Volumes, spec: &CopySpec) -> Result<Plan> {
    let volumes = src.volumes()?;
    let find = |name: &str| -> Result<&VolumeInfo> {
        volumes.iter().find(|v| v.name == name).ok_or_else(|| Error::NoSuchVolume(name.to_owned()))
    };
    let volume = find(&spec.volume)?;
    if let Some(base) = &spec.base_volume {
        if find(base)?.partition >= volume.partition {
            return Err(Error::InvalidArgument(format!(
                "base volume {base} is not older than volume {}: an incremental goes from an older volume to a newer one",
                spec.volume
            )));
        }
    }
    let volume_blocks = src.volume_blocks();
    let lba_start = spec.lba_start.unwrap_or(0);
    let lba_count = spec.lba_count.unwrap_or(volume_blocks.saturating_sub(lba_start));
    if lba_start.checked_add(lba_count).is_none_or(|end| end > volume_blocks) || lba_count == 0 {
        return Err(Error::OutOfRange { lba: lba_start, blocks: lba_count, volume_blocks });
    }
    let extents = src.diff(&spec.volume, spec.base_volume.as_deref(), lba_start, lba_count)?;
    let header = Header {
        source_uuid: src.uuid(),
        block_size: src.block_size(),
        volume_blocks,
        lba_start,
        lba_count,
        created_unix_s: volume.created_unix_s,
        volume: spec.volume.clone(),
        base_volume: spec.base_volume.clone(),
        data_blocks: extents.iter().filter(|e| e.kind == LogEntryKind::Data).map(|e| e.blocks).sum(),
    };
    let resume = spec.resume_token.as_deref().map(|t| Position::from_token(t, &header)).transpose()?;
    Ok(Plan {
        header,
        extents,
        sync_bytes: SYNC_BYTES,
        reads_in_flight: READS_IN_FLIGHT,
        view: View::Volume(volume.partition),
        resume,
    })
}

/// Copies what `plan` says into `target`. On failure the progress keeps
/// the token to resume with.
pub fn copy(src: &dyn Volumes, plan: &Plan, target: &StreamStore, progress: &Progress) -> Result<()> {
    progress.start_as(&plan.progress());
    let Plan { header, extents, sync_bytes, reads_in_flight, view, resume } = plan;
    let (header, view) = (header.clone(), *view);
    let bs = u64::from(header.block_size);
    let mut out = match *resume {
        None => StreamWriter::new(target.writer_at(0)?, header.clone())?,
        Some(at) => {
            if target.read_prefix(HEADER_LEN)? != header.encode() {
                return Err(Error::InvalidArgument(
                    "resume_token: the target holds another stream's header (or none)".into(),
                ));
            }
            // A resume's starting point is durable already; a new
            // stream's header is not until the first sync.
            progress.set_resume_token(at.token(&header));
            StreamWriter::resume(target.writer_at(at.offset)?, header.clone(), at)
        }
    };
    let max_blocks = (READ_BYTES as u64 / bs).min(u64::from(header.max_record_blocks()));
    let resume_at = out.position().next_lba;
    let mut records = Vec::new();
    for e in extents.iter().map(|e| clip(e, resume_at, u64::MAX)).filter(|e| e.blocks > 0) {
        let max = if e.kind == LogEntryKind::Zero { u64::from(u32::MAX) } else { max_blocks };
        records.extend(pieces(e.lba, e.blocks, max).map(|(lba, blocks)| Extent { lba, blocks, kind: e.kind }));
    }
    let mut unsynced = 0u64;
    read_ahead(src, view, &records, bs, *reads_in_flight, |rec, data| {
        match rec.kind {
            LogEntryKind::Zero => return out.zero(rec.lba, rec.blocks as u32),
            LogEntryKind::Data => out.data(rec.lba, data)?,
        }
        unsynced += rec.blocks * bs;
        progress.set_done(progress.bytes_done() + rec.blocks * bs);
        if unsynced >= *sync_bytes {
            sync(&mut out, target)?;
            progress.set_resume_token(out.position().token(&header));
            unsynced = 0;
        }
        Ok(())
    })?;
    let (mut sink, counts) = out.finish()?;
    sink.sync().map_err(|e| target.error("sync", e))?;
    progress.set_resume_token(String::new());
    log::info!(
        "copy of {}{} to {}: {} data records ({} blocks), {} zero records ({} blocks)",
        header.volume,
        header.base_volume.as_deref().map(|b| format!(" since {b}")).unwrap_or_default(),
        target.name(),
        counts.data_records,
        counts.data_blocks,
        counts.zero_records,
        counts.zero_blocks
    );
    Ok(())
}

/// Reads the data `records` ask for with `reads` reads in flight
/// (each a thread's blocking call: the engine serves them between its
/// clients' requests) and hands each record, in order, to `write`.
fn read_ahead(
    src: &dyn Volumes,
    view: View,
    records: &[Extent],
    bs: u64,
    reads: usize,
    mut write: impl FnMut(&Extent, &[u8]) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use std::sync::mpsc;
    let (free_tx, free_rx) = mpsc::channel::<DmaBuf>();
    for _ in 0..reads {
        free_tx.send(DmaBuf::new(READ_BYTES, bs as usize)).expect("the receiver is here");
    }
    let free_rx = std::sync::Mutex::new(free_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<DmaBuf>)>();
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|scope| {
        for _ in 0..reads {
            let (done_tx, free_rx, next, stop) = (done_tx.clone(), &free_rx, &next, &stop);
            scope.spawn(move || loop {
                // A buffer first, then an index: the oldest record not yet
                // written always has a buffer, so the writer never waits
                // for ever.
                let Ok(mut buf) = free_rx.lock().expect("buffer pool").recv() else { return };
                let i = next.fetch_add(1, Relaxed);
                let Some(rec) = records.get(i).filter(|_| !stop.load(Relaxed)) else { return };
                let read = match rec.kind {
                    LogEntryKind::Data => src.read_view(view, rec.lba, &mut buf[..(rec.blocks * bs) as usize]),
                    LogEntryKind::Zero => Ok(()),
                };
                if done_tx.send((i, read.map(|()| buf))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut waiting = std::collections::BTreeMap::new();
        let result = (|| {
            for (i, rec) in records.iter().enumerate() {
                let buf = loop {
                    if let Some(buf) = waiting.remove(&i) {
                        break buf;
                    }
                    let (j, read) = done_rx.recv().expect("a reader holds the oldest record");
                    waiting.insert(j, read);
                }?;
                write(rec, &buf[..(rec.blocks * bs) as usize * usize::from(rec.kind == LogEntryKind::Data)])?;
                free_tx.send(buf).expect("the readers' pool");
            }
            Ok(())
        })();
        // Stops the readers (each waits for a buffer or finds no record).
        stop.store(true, Relaxed);
        drop(free_tx);
        result
    })
}

fn sync(out: &mut StreamWriter<Box<dyn Sink>>, target: &StreamStore) -> Result<()> {
    out.get_mut().sync().map_err(|e| target.error("sync", e))
}

/// The part of `e` inside `from..to`.
fn clip(e: &Extent, from: u64, to: u64) -> Extent {
    let lba = e.lba.max(from);
    let end = (e.lba + e.blocks).min(to).max(lba);
    Extent { lba, blocks: end - lba, kind: e.kind }
}

/// `lba..lba + blocks` cut into runs of at most `max` blocks.
fn pieces(lba: u64, blocks: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    (lba..lba + blocks).step_by(max as usize).map(move |at| (at, max.min(lba + blocks - at)))
}

/// Where a restore writes.
pub enum Destination {
    /// An ilog bdev: the stream becomes a snapshot volume named as the
    /// source's, and the current image equals it.
    Ilog(Arc<dyn Volumes>),
    /// Any other device: the volume's image, from its first block.
    Device { name: String, dev: Arc<dyn BlockDevice> },
}

/// What a restore applies: the stream's header, and where in the stream
/// it starts.
pub struct RestorePlan {
    pub header: Header,
    /// Stream bytes applied between flushes of the destination (as
    /// [`Plan::sync_bytes`]).
    pub sync_bytes: u64,
    resume: Option<Position>,
}

/// Reads the stream's header and checks it against `dst` and the token.
pub fn plan_restore(dst: &Destination, source: &StreamStore, resume_token: Option<&str>) -> Result<RestorePlan> {
    let header = Header::decode(&source.read_prefix(HEADER_LEN)?)?;
    check_destination(dst, &header)?;
    let resume = resume_token.map(|t| Position::from_token(t, &header)).transpose()?;
    Ok(RestorePlan { header, sync_bytes: SYNC_BYTES, resume })
}

/// Applies the stream in `source` to `dst` as `plan` says; returns the
/// restored volume when `dst` is an ilog bdev. On failure the progress
/// keeps the token to resume with.
pub fn restore(
    dst: &Destination,
    source: &StreamStore,
    plan: &RestorePlan,
    progress: &Progress,
) -> Result<Option<VolumeInfo>> {
    let header = plan.header.clone();
    let open = || -> Result<StreamReader<Box<dyn std::io::Read + Send>>> {
        Ok(match plan.resume {
            None => StreamReader::new(source.reader_at(0)?)?,
            Some(at) => StreamReader::resume(source.reader_at(at.offset)?, header.clone(), at),
        })
    };
    // The whole stream (from where a resume starts) is verified before
    // anything is written: a damaged one leaves the destination as it was.
    let mut check = open()?;
    let mut data = Vec::new();
    while check.next_record(&mut data)?.is_some() {}
    let mut input = open()?;
    let mut apply = Applier::new(dst)?;
    let bs = u64::from(header.block_size);
    progress.start_as(&plan.progress());
    progress.set_resume_token(input.position().token(&header));
    let mut unsynced = 0u64;
    loop {
        let gap_from = input.position().next_lba;
        let Some(rec) = input.next_record(&mut data)? else { break };
        if header.base_volume.is_none() {
            // A full stream's gaps read as zeros.
            apply.zero(gap_from, bs, rec.lba - gap_from)?;
        }
        match rec.kind {
            LogEntryKind::Data => apply.data(rec.lba, bs, &data)?,
            LogEntryKind::Zero => apply.zero(rec.lba, bs, u64::from(rec.blocks))?,
        }
        unsynced += (data.len() + super::stream::RECORD_HEADER_LEN) as u64;
        progress.set_done(input.position().counts.data_blocks * bs);
        if unsynced >= plan.sync_bytes {
            apply.flush()?;
            progress.set_resume_token(input.position().token(&header));
            unsynced = 0;
        }
    }
    if header.base_volume.is_none() {
        let end = header.lba_start + header.lba_count;
        let from = input.position().next_lba;
        apply.zero(from, bs, end - from)?;
    }
    apply.flush()?;
    progress.set_resume_token(String::new());
    let restored = match dst {
        Destination::Ilog(ilog) => Some(ilog.snapshot(&header.volume)?),
        Destination::Device { .. } => None,
    };
    log::info!("restore of {} from {}: done", header.volume, source.name());
    Ok(restored)
}

fn check_destination(dst: &Destination, header: &Header) -> Result<()> {
    let (block_size, blocks) = match dst {
        Destination::Ilog(ilog) => (ilog.block_size(), ilog.volume_blocks()),
        Destination::Device { dev, .. } => (dev.block_size(), dev.num_blocks()),
    };
    if block_size != header.block_size || blocks < header.lba_start + header.lba_count {
        return Err(Error::InvalidArgument(format!(
            "the stream is of {}-byte blocks up to block {}; the destination has {blocks} blocks of {block_size} bytes",
            header.block_size,
            header.lba_start + header.lba_count
        )));
    }
    let Destination::Ilog(ilog) = dst else { return Ok(()) };
    let volumes = ilog.volumes()?;
    if volumes.iter().any(|v| v.name == header.volume) {
        return Err(Error::VolumeExists(header.volume.clone()));
    }
    if let Some(base) = &header.base_volume {
        let newest = volumes.iter().max_by_key(|v| v.partition).map(|v| v.name.as_str());
        if newest != Some(base.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "the stream applies on top of volume {base}, but the newest volume here is {}: restore the streams in order",
                newest.unwrap_or("none")
            )));
        }
    }
    Ok(())
}

/// Writes a restore's blocks to its destination.
enum Applier<'a> {
    Ilog(&'a dyn Volumes),
    Device(DeviceIo),
}

impl<'a> Applier<'a> {
    fn new(dst: &'a Destination) -> Result<Self> {
        Ok(match dst {
            Destination::Ilog(ilog) => Applier::Ilog(ilog.as_ref()),
            Destination::Device { dev, .. } => Applier::Device(DeviceIo::new(dev.clone()).map_err(io_error)?),
        })
    }

    fn data(&mut self, lba: u64, bs: u64, data: &[u8]) -> Result<()> {
        match self {
            Applier::Ilog(ilog) => ilog.write(lba, data),
            Applier::Device(io) => io.write(lba * bs, data).map_err(io_error),
        }
    }

    fn zero(&mut self, lba: u64, bs: u64, blocks: u64) -> Result<()> {
        // An ilog bdev writes zeros as one log entry per stripe; a device
        // takes them from a chunk of zeros.
        match self {
            Applier::Ilog(ilog) => {
                pieces(lba, blocks, ILOG_ZERO_BLOCKS).try_for_each(|(at, n)| ilog.write_zeroes(at, n as u32))
            }
            Applier::Device(io) => pieces(lba, blocks, READ_BYTES as u64 / bs)
                .try_for_each(|(at, n)| io.write_zeroes(at * bs, (n * bs) as usize).map_err(io_error)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Applier::Ilog(ilog) => ilog.flush(),
            Applier::Device(io) => io.flush().map_err(io_error),
        }
    }
}
