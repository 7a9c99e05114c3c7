//! Core 0's coordinator: runs control operations one at a time across all
//! cores (flush, snapshot, volume delete, log cursor, close) and owns the
//! volume table, the segment registry and the checkpoint.
//!
//! A snapshot: barrier that seals the open partition on every core (each
//! drains, summarizes and flushes) -> checkpoint naming the sealed partition
//! -> device flush -> the volume becomes readable everywhere -> reply.

use super::clean::{CleanJob, CleanTarget};
use super::fold::FoldJob;
use super::policy::Policy;
use super::request::{
    check_volume_name, CompactMode, LogBatch, LogEntry, LogEntryKind, Reply, Request, Stats, VolumeInfo,
};
use super::shard::{Msg, ReplyTo, Shard, TAG_CONTROL};
use super::shared::SpaceState;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{
    Checkpoint, EntryKind, Geometry, SegmentId, SegmentRecord, SummaryChain, SummaryEntry, VolumeRecord,
};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;

/// Summary groups holding a segment's trusted entries.
pub(super) fn summary_groups(geo: &Geometry, record: &SegmentRecord) -> u32 {
    record.trusted_entries.div_ceil(geo.entries_per_summary())
}

/// Device reads of a segment's trusted summary groups (two slots each).
fn summary_reads(geo: &Geometry, record: &SegmentRecord) -> u32 {
    2 * summary_groups(geo, record)
}

/// A segment's summaries end before the entries its checkpoint vouches for.
pub(super) fn summaries_lost(segno: u32) -> Error {
    Error::Corrupt(format!("segment {segno} lost flushed summaries"))
}

/// Sequence numbers pack (segment seq, entry index) like this.
const ENTRY_BITS: u32 = 20;

#[derive(Debug)]
pub(super) enum Op {
    Flush,
    Snapshot(Option<String>),
    Delete(String),
    LogRead {
        cursor: u64,
        count: u32,
        with_data: bool,
    },
    Close,
    Clean(CleanTarget),
    /// Baseline compaction of a volume (the oldest if `None`).
    Fold(Option<String>),
    SetPolicy(Box<Policy>),
}

struct Queued {
    origin: u32,
    reply: ReplyTo,
    op: Op,
}

#[derive(Debug)]
pub(super) enum Stage {
    Barrier {
        id: u64,
        acks: u32,
        seq_mark: u64,
        status: Result<()>,
    },
    CheckpointWrite,
    CheckpointFlush,
    LogSummaries {
        outstanding: u32,
    },
    LogData {
        outstanding: u32,
    },
    /// Waiting for every core to take the new volume table.
    Publish {
        acks: u32,
        result: Reply,
    },
    /// The cleaner reads a victim's summaries.
    CleanRead,
    /// The cleaner waits for every core to evacuate a victim.
    CleanEvacuate,
    /// A fold waits for every core.
    Fold,
    /// A fold flushes the baseline it wrote.
    FoldFlush,
}

/// Progress of one `LogRead`.
struct LogRead {
    cursor: u64,
    count: u32,
    with_data: bool,
    /// Segments left to visit, newest last.
    segments: Vec<SegmentRecord>,
    /// Summary slots (2 per group) or data of the entries being read.
    bufs: Vec<DmaBuf>,
    entries: Vec<LogEntry>,
    /// (segment start block, data offset) of each entry in `entries` read
    /// from the current segment.
    pending_data: Vec<(usize, u64)>,
    /// The first read that failed.
    error: Option<Error>,
}

struct Current {
    q: Queued,
    stage: Stage,
    /// A volume being added or removed, undone if the checkpoint fails.
    volume: Option<VolumeRecord>,
    log: Option<LogRead>,
}

pub(crate) struct Control {
    queue: VecDeque<Queued>,
    current: Option<Current>,
    registry: BTreeMap<u32, SegmentRecord>,
    volumes: Vec<VolumeRecord>,
    generation: u64,
    seq_high: u64,
    next_snapshot_number: u64,
    open_partition: u32,
    next_barrier: u64,
    ckpt_buf: DmaBuf,
    /// Set when a core's metadata write, a device flush or a checkpoint
    /// failed: what the registry says may no longer be on the device, so no
    /// checkpoint is written again until a remount recovers from the last
    /// good one.
    failed: Option<Error>,
    pub(super) clean: Option<CleanJob>,
    pub(super) fold: Option<FoldJob>,
    /// Partitions up to this one live in the baseline.
    baseline_partition: u32,
    /// A fold was recorded as started and has not committed.
    folding: Option<u32>,
    pub(super) policy: Policy,
    /// When the last snapshot was taken (unix s), for the snapshot interval.
    pub(super) last_snapshot_at: u64,
    /// When the policy was last consulted (unix s), and how many actions it
    /// took in that second.
    pub(super) policy_checked: (u64, u32),
}

impl Control {
    pub(super) fn registry(&self) -> &BTreeMap<u32, SegmentRecord> {
        &self.registry
    }

    pub(super) fn registry_mut(&mut self) -> &mut BTreeMap<u32, SegmentRecord> {
        &mut self.registry
    }

    pub(super) fn open_partition(&self) -> u32 {
        self.open_partition
    }

    /// The id of the next snapshot taken without a name, as the policy
    /// directs; a suffix keeps it unique.
    fn next_volume_id(&mut self, now: u64) -> String {
        self.next_snapshot_number = self.next_snapshot_number.saturating_add(1);
        let base = self.policy.volume_id(now, self.next_snapshot_number);
        let taken = |n: &str| self.volumes.iter().any(|v| v.name == n);
        let mut name = base.clone();
        let mut k = 2;
        while taken(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        name
    }

    /// Queues an operation nobody waits for (policy actions, follow-ups).
    pub(super) fn enqueue_background(&mut self, origin: u32, op: Op) {
        self.queue.push_back(Queued { origin, reply: ReplyTo::Nobody, op });
    }

    pub(super) fn is_busy(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }

    pub(super) fn volume_records(&self) -> &[VolumeRecord] {
        &self.volumes
    }

    pub(super) fn baseline_partition(&self) -> u32 {
        self.baseline_partition
    }

    pub(super) fn set_baseline_partition(&mut self, p: u32) {
        self.baseline_partition = p;
    }

    pub(super) fn set_folding(&mut self, p: Option<u32>) {
        self.folding = p;
    }

    pub(super) fn next_barrier_id(&mut self) -> u64 {
        self.next_barrier += 1;
        self.next_barrier - 1
    }

    pub(super) fn set_stage(&mut self, stage: Stage) {
        self.current.as_mut().expect("an operation is running").stage = stage;
    }

    pub(super) fn new(ckpt: &Checkpoint, open_partition: u32, ckpt_buf: DmaBuf, now: u64) -> Control {
        let mut queue = VecDeque::new();
        let policy = Policy::parse(&ckpt.policy).unwrap_or_else(|e| {
            log::error!("ignoring the stored policy: {e}");
            Policy::default()
        });
        let last_snapshot_at = ckpt.volumes.iter().map(|v| v.created_unix_s).max().unwrap_or(now);
        // A fold the last mount started and did not commit: finish it.
        if let Some(v) = ckpt.folding.and_then(|p| ckpt.volumes.iter().find(|v| v.partition == p)) {
            log::info!("finishing the fold of volume {} into the baseline", v.name);
            queue.push_back(Queued { origin: 0, reply: ReplyTo::Nobody, op: Op::Fold(Some(v.name.clone())) });
        }
        Control {
            queue,
            current: None,
            registry: ckpt.segments.iter().map(|s| (s.segno, *s)).collect(),
            volumes: ckpt.volumes.clone(),
            generation: ckpt.generation,
            seq_high: ckpt.seq_high,
            next_snapshot_number: ckpt.next_snapshot_number,
            open_partition,
            next_barrier: 1,
            ckpt_buf,
            failed: None,
            clean: None,
            fold: None,
            baseline_partition: ckpt.baseline_partition,
            folding: ckpt.folding,
            policy,
            last_snapshot_at,
            policy_checked: (0, 0),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    /// What the running or queued operation is doing, for diagnostics.
    pub(super) fn busy_with(&self) -> Option<String> {
        let current = self.current.as_ref().map(|c| format!("control {:?} at {:?}", c.q.op, c.stage));
        current.or_else(|| self.queue.front().map(|q| format!("control {:?} queued", q.op)))
    }

    fn live_partitions(&self) -> Arc<Vec<u32>> {
        Arc::new(self.volumes.iter().map(|v| v.partition).collect())
    }

    fn info(v: &VolumeRecord) -> VolumeInfo {
        VolumeInfo { name: v.name.clone(), partition: v.partition, created_unix_s: v.created_unix_s }
    }

    /// The volumes every core reads by: the table without the running
    /// operation's change until it is published (a volume being sealed is
    /// not readable yet, one being deleted still is).
    fn published_volumes(&self) -> Vec<VolumeInfo> {
        let mut list: Vec<VolumeInfo> = self.volumes.iter().map(Control::info).collect();
        if let Some(Current { q, volume: Some(v), .. }) = &self.current {
            match q.op {
                Op::Snapshot(_) => list.retain(|x| x.partition != v.partition),
                Op::Delete(_) => {
                    list.push(Control::info(v));
                    list.sort_by_key(|x| x.partition);
                }
                _ => {}
            }
        }
        list
    }
}

impl Shard {
    fn ctl(&mut self) -> &mut Control {
        self.ctl.as_mut().expect("control runs on core 0")
    }

    pub(super) fn ctl_mut(&mut self) -> &mut Control {
        self.ctl()
    }

    pub(super) fn finish_control(&mut self, result: Result<Reply>) {
        self.finish(result)
    }

    pub(super) fn control_enqueue(&mut self, origin: u32, reply: ReplyTo, req: Request) {
        let op = match req {
            Request::Flush => Op::Flush,
            Request::Snapshot { name } => Op::Snapshot(name),
            Request::DeleteVolume { name } => Op::Delete(name),
            Request::LogRead { cursor, count, with_data } => Op::LogRead { cursor, count, with_data },
            Request::Close => Op::Close,
            Request::Compact { volume: None, mode: CompactMode::InPlace } => Op::Clean(CleanTarget::All),
            Request::Compact { volume: Some(name), mode: CompactMode::InPlace } => {
                let Some(v) = self.ctl().volumes.iter().find(|v| v.name == name) else {
                    return self.reply(origin, reply, Err(Error::NoSuchVolume(name)));
                };
                Op::Clean(CleanTarget::Partition(v.partition))
            }
            Request::Compact { volume, mode: CompactMode::Baseline } => Op::Fold(volume),
            Request::SetPolicy { policy } => match Policy::parse(&policy) {
                Ok(p) => Op::SetPolicy(Box::new(p)),
                Err(e) => return self.reply(origin, reply, Err(e)),
            },
            Request::GetPolicy => {
                let json = self.ctl().policy.json.clone();
                let json = if json.is_empty() { "{}".to_owned() } else { json };
                return self.reply(origin, reply, Ok(Reply::Policy(json)));
            }
            Request::Event { name } => {
                let result = self.policy_event(&name);
                return self.reply(origin, reply, result);
            }
            Request::ListVolumes => {
                let list = self.ctl().published_volumes();
                return self.reply(origin, reply, Ok(Reply::Volumes(list)));
            }
            Request::Stats => {
                let stats = self.stats();
                return self.reply(origin, reply, Ok(Reply::Stats(stats)));
            }
            Request::Read { .. } | Request::Write { .. } | Request::WriteZeroes { .. } | Request::Unmap { .. } => {
                unreachable!("data requests never reach the coordinator")
            }
        };
        self.ctl().queue.push_back(Queued { origin, reply, op });
    }

    fn stats(&mut self) -> Stats {
        let shared = self.shared.clone();
        let (geo, counters) = (shared.geo, &shared.counters);
        let (bs, seg_bytes) = (u64::from(geo.block_size), u64::from(geo.segment_blocks) * u64::from(geo.block_size));
        let free = shared.free_segments.len() as u32;
        let (mut used, mut live) = (0u64, 0u64);
        for s in &shared.space {
            used += u64::from(s.used.load(Relaxed));
            live += u64::from(s.live());
        }
        let c = self.ctl();
        let partitions: std::collections::BTreeSet<u32> = c.registry.values().map(|s| s.partition).collect();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
        Stats {
            block_size: geo.block_size,
            volume_blocks: geo.volume_blocks,
            segment_blocks: geo.segment_blocks,
            segments_total: geo.segment_count,
            segments_free: free,
            volumes: c.volumes.len() as u32,
            partitions: partitions.len() as u32,
            open_partition: c.open_partition,
            log_capacity_bytes: u64::from(geo.segment_count) * seg_bytes,
            log_used_bytes: u64::from(geo.segment_count - free) * seg_bytes,
            live_bytes: live * bs,
            garbage_bytes: used.saturating_sub(live) * bs,
            user_bytes_written: load(&counters.user_blocks) * bs,
            device_bytes_written: load(&counters.device_blocks) * bs,
            compactions: load(&counters.compactions),
            bytes_moved: load(&counters.moved_blocks) * bs,
            bytes_copied: load(&counters.copied_blocks) * bs,
            segments_freed: load(&counters.segments_freed),
            policy_actions: load(&counters.policy_actions),
        }
    }

    fn reply(&mut self, origin: u32, reply: ReplyTo, result: Result<Reply>) {
        if origin == self.core {
            self.deliver(reply, result);
        } else {
            self.send(origin, Msg::ControlDone { reply, result });
        }
    }

    fn finish(&mut self, result: Result<Reply>) {
        let cur = self.ctl().current.take().expect("an operation is running");
        self.reply(cur.q.origin, cur.q.reply, result);
    }

    /// Starts the next queued operation when none is running.
    pub(super) fn control_step(&mut self) {
        if self.ctl().current.is_some() {
            return;
        }
        // Once closed, nothing runs (the checkpoint stays clean, and the
        // cores go idle and detach): no background work starts, and what
        // was queued behind the close is refused.
        let closed = self.shared.closed.load(Ordering::Acquire);
        if !closed && self.ctl().queue.is_empty() {
            self.policy_tick();
        }
        if !closed && self.ctl().queue.is_empty() && self.shared.space_state() == SpaceState::Wanted {
            log::info!("log full: reclaiming space");
            let q = Queued { origin: self.core, reply: ReplyTo::Nobody, op: Op::Clean(CleanTarget::Reclaim) };
            self.ctl().queue.push_back(q);
        }
        let Some(q) = self.ctl().queue.pop_front() else { return };
        if closed {
            return self.reply(q.origin, q.reply, Err(Error::ShuttingDown));
        }
        if let Some(e) = self.ctl().failed.clone() {
            if matches!(q.op, Op::Clean(_)) {
                // No checkpoint can free a segment now: writes waiting for
                // space must fail rather than wait for ever.
                self.shared.set_space_state(SpaceState::Exhausted);
            }
            return self.reply(q.origin, q.reply, Err(e));
        }
        let mut seal = None;
        let (mut close, mut close_sealed) = (false, false);
        match &q.op {
            Op::Snapshot(name) => {
                if let Err(e) = self.check_new_volume(name.as_deref()) {
                    return self.reply(q.origin, q.reply, Err(e));
                }
                let Some(next) = self.ctl().open_partition.checked_add(1) else {
                    let e = Error::InvalidArgument("partition numbers are exhausted".into());
                    return self.reply(q.origin, q.reply, Err(e));
                };
                seal = Some(next);
            }
            Op::Delete(name) => {
                let c = self.ctl();
                let Some(i) = c.volumes.iter().position(|v| &v.name == name) else {
                    let e = Error::NoSuchVolume(name.clone());
                    return self.reply(q.origin, q.reply, Err(e));
                };
                let removed = c.volumes.remove(i);
                c.current = Some(Current { q, stage: Stage::CheckpointWrite, volume: Some(removed), log: None });
                return self.write_checkpoint(false);
            }
            Op::SetPolicy(_) => {
                let c = self.ctl();
                let Some(Queued { op: Op::SetPolicy(p), .. }) = Some(&q) else { unreachable!() };
                c.policy = (**p).clone();
                c.current = Some(Current { q, stage: Stage::CheckpointWrite, volume: None, log: None });
                return self.write_checkpoint(false);
            }
            Op::Close => close = true,
            Op::Fold(volume) => {
                let (partition, older) = match self.fold_target(volume.as_deref()) {
                    Ok(t) => t,
                    Err(e) => return self.reply(q.origin, q.reply, Err(e)),
                };
                if partition <= self.ctl().baseline_partition {
                    return self.reply(q.origin, q.reply, Ok(Reply::Done));
                }
                if !older.is_empty() {
                    // The baseline is about to hold a newer image: the
                    // volumes older than the folded one are retired first.
                    let core = self.core;
                    let c = self.ctl();
                    c.queue.push_front(q);
                    for name in older.into_iter().rev() {
                        log::info!("retiring volume {name}: a newer volume folds into the baseline");
                        c.queue.push_front(Queued { origin: core, reply: ReplyTo::Nobody, op: Op::Delete(name) });
                    }
                    return;
                }
                close_sealed = true;
            }
            Op::Clean(target) => {
                let target = *target;
                self.ctl().clean = Some(CleanJob::new(target));
            }
            Op::Flush | Op::LogRead { .. } => {}
        }
        let c = self.ctl();
        let id = c.next_barrier;
        c.next_barrier += 1;
        let seq_mark = self.shared.next_seq.load(Ordering::Relaxed);
        let stage = Stage::Barrier { id, acks: 0, seq_mark, status: Ok(()) };
        self.ctl().current = Some(Current { q, stage, volume: None, log: None });
        for core in 0..self.shared.cores {
            self.send(core, Msg::Barrier { id, seal, close, close_sealed });
        }
    }

    fn check_new_volume(&mut self, name: Option<&str>) -> Result<()> {
        let max = self.shared.geo.max_volumes as usize;
        let c = self.ctl();
        if let Some(name) = name {
            check_volume_name(name)?;
            if c.volumes.iter().any(|v| v.name == name) {
                return Err(Error::VolumeExists(name.to_owned()));
            }
        }
        if c.volumes.len() >= max {
            return Err(Error::InvalidArgument(format!("{max} snapshot volumes exist, the most this bdev holds")));
        }
        Ok(())
    }

    pub(super) fn on_barrier_done(&mut self, id: u64, segments: Vec<SegmentRecord>, result: Result<()>) {
        let cores = self.shared.cores;
        let c = self.ctl();
        for s in segments {
            c.registry.insert(s.segno, s);
        }
        let Some(Current { stage: Stage::Barrier { id: want, acks, status, .. }, .. }) = &mut c.current else {
            unreachable!("barrier replies come while a barrier runs")
        };
        debug_assert_eq!(*want, id);
        *acks += 1;
        if status.is_ok() {
            *status = result;
        }
        if *acks < cores {
            return;
        }
        let cur = c.current.as_mut().expect("checked");
        let Stage::Barrier { seq_mark, status, .. } = std::mem::replace(&mut cur.stage, Stage::CheckpointWrite) else {
            unreachable!()
        };
        let is_snapshot = matches!(cur.q.op, Op::Snapshot(_));
        if is_snapshot {
            // Every core sealed, whatever happens next: the new partition is open.
            c.open_partition += 1;
        }
        if let Err(e) = status {
            log::error!("barrier failed ({e}): refusing metadata changes until remounted");
            c.failed = Some(e.clone());
            return self.finish(Err(e));
        }
        c.seq_high = c.seq_high.max(seq_mark.saturating_sub(1));
        let cur = c.current.as_mut().expect("checked");
        match &cur.q.op {
            Op::Flush => self.finish(Ok(Reply::Done)),
            Op::Snapshot(name) => {
                let name = name.clone();
                let now = self.shared.clock.now_unix_s();
                let c = self.ctl();
                let name = name.unwrap_or_else(|| c.next_volume_id(now));
                c.last_snapshot_at = now;
                let record = VolumeRecord { name, partition: c.open_partition - 1, created_unix_s: now };
                c.volumes.push(record.clone());
                c.current.as_mut().expect("checked").volume = Some(record);
                self.write_checkpoint(false);
            }
            Op::Close => self.write_checkpoint(true),
            Op::LogRead { cursor, count, with_data } => {
                let (cursor, count, with_data) = (*cursor, *count, *with_data);
                self.start_log_read(cursor, count, with_data);
            }
            Op::Delete(_) | Op::SetPolicy(_) => unreachable!("no barrier: a checkpoint only"),
            Op::Clean(_) => self.clean_after_barrier(),
            Op::Fold(volume) => {
                let volume = volume.clone();
                let Ok((partition, _)) = self.fold_target(volume.as_deref()) else {
                    unreachable!("checked when it started; volumes change only in control operations")
                };
                self.fold_after_barrier(partition)
            }
        }
    }

    pub(super) fn write_checkpoint(&mut self, clean: bool) {
        let (uuid, epoch, bs) = (self.shared.uuid, self.shared.epoch, self.shared.geo.block_size as usize);
        let geo = self.shared.geo;
        let baseline_stripes = self.shared.baseline.to_bytes();
        let c = self.ctl();
        let ckpt = Checkpoint {
            generation: c.generation + 1,
            uuid,
            seq_high: c.seq_high,
            epoch,
            next_partition: c.open_partition,
            next_snapshot_number: c.next_snapshot_number,
            clean,
            baseline_partition: c.baseline_partition,
            folding: c.folding,
            policy: c.policy.json.clone(),
            baseline_stripes,
            volumes: c.volumes.clone(),
            segments: c.registry.values().copied().collect(),
        };
        let len = ckpt.encoded_len();
        ckpt.encode(&mut c.ckpt_buf);
        let block = geo.ckpt_slot_start((ckpt.generation % 2) as u32);
        let buf = c.ckpt_buf.as_mut_ptr();
        c.current.as_mut().expect("running").stage = Stage::CheckpointWrite;
        let nblocks = len.div_ceil(bs) as u32;
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag: TAG_CONTROL });
    }

    pub(super) fn control_device_done(&mut self, value: u64, status: DevStatus) {
        let c = self.ctl();
        let cur = c.current.as_mut().expect("control I/O belongs to the running operation");
        match &mut cur.stage {
            Stage::CheckpointWrite => {
                if status.is_ok() {
                    cur.stage = Stage::CheckpointFlush;
                    let flush = DevRequest {
                        op: DevOp::Flush,
                        block: 0,
                        nblocks: 0,
                        buf: std::ptr::null_mut(),
                        tag: TAG_CONTROL,
                    };
                    return self.dev_submit(flush);
                }
                self.checkpoint_done(status)
            }
            Stage::CheckpointFlush => self.checkpoint_done(status),
            Stage::LogSummaries { outstanding } | Stage::LogData { outstanding } => {
                *outstanding -= 1;
                let log = cur.log.as_mut().expect("log read state");
                if let Err(e) = status {
                    log::warn!("log cursor read failed (errno {e}) at buffer {value}");
                    log.error.get_or_insert(Error::Io(e));
                }
                if *outstanding == 0 {
                    // Answer only once no read still targets the buffers.
                    match log.error.take() {
                        Some(e) => self.finish(Err(e)),
                        None => self.log_read_progress(),
                    }
                }
            }
            Stage::CleanRead => self.clean_read_done(status),
            Stage::FoldFlush => self.fold_flushed(status),
            Stage::Barrier { .. } | Stage::Publish { .. } | Stage::CleanEvacuate | Stage::Fold => {
                unreachable!("no control I/O in this stage")
            }
        }
    }

    fn checkpoint_done(&mut self, status: DevStatus) {
        let c = self.ctl();
        let cur = c.current.as_ref().expect("running");
        if let Err(e) = status {
            // The on-media checkpoint is the old one: undo the table change.
            match (&cur.q.op, &cur.volume) {
                (Op::Snapshot(_), Some(v)) => c.volumes.retain(|x| x.name != v.name),
                (Op::Delete(_), Some(v)) => c.volumes.push(v.clone()),
                _ => {}
            }
            log::error!("checkpoint write failed (errno {e}): refusing metadata changes until remounted");
            c.failed = Some(Error::Io(e));
            c.clean = None;
            c.fold = None;
            return self.finish(Err(Error::Io(e)));
        }
        c.generation += 1;
        if matches!(cur.q.op, Op::Clean(_)) {
            return self.clean_checkpointed();
        }
        if matches!(cur.q.op, Op::Fold(_)) {
            return self.fold_checkpointed();
        }
        let live = c.live_partitions();
        let result = match (&cur.q.op, &cur.volume) {
            (Op::Snapshot(_), Some(v)) => {
                log::info!("snapshot volume {} sealed (partition {})", v.name, v.partition);
                Reply::Volume(Control::info(v))
            }
            (Op::Delete(_), Some(v)) => {
                log::info!("snapshot volume {} deleted", v.name);
                Reply::Done
            }
            (Op::Close, _) => {
                self.shared.closed.store(true, Ordering::Release);
                Reply::Done
            }
            _ => Reply::Done,
        };
        self.ctl().current.as_mut().expect("running").stage = Stage::Publish { acks: 0, result };
        for core in 0..self.shared.cores {
            self.send(core, Msg::Volumes(live.clone()));
        }
    }

    pub(super) fn on_volumes_ack(&mut self) {
        let cores = self.shared.cores;
        let cur = self.ctl().current.as_mut().expect("acks come while publishing");
        let Stage::Publish { acks, result } = &mut cur.stage else { unreachable!("acks come while publishing") };
        *acks += 1;
        if *acks == cores {
            let result = std::mem::replace(result, Reply::Done);
            // A deleted volume's partition merges into the next one: its
            // blocks no view reads any more are dropped by compacting it.
            let merge = match (&cur.q.op, &cur.volume) {
                (Op::Delete(_), Some(v)) => Some(v.partition),
                _ => None,
            };
            let hook = match &cur.q.op {
                Op::Snapshot(_) => Some(true),
                Op::Delete(_) => Some(false),
                _ => None,
            };
            if hook.is_some() {
                self.shared.volumes_generation.fetch_add(1, Ordering::Release);
            }
            self.finish(Ok(result));
            if let Some(p) = merge {
                let core = self.core;
                self.ctl().enqueue_background(core, Op::Clean(CleanTarget::Partition(p)));
            }
            if let Some(snapshot) = hook {
                self.policy_hook(snapshot);
            }
        }
    }

    // ---- the log cursor ------------------------------------------------------

    fn start_log_read(&mut self, cursor: u64, count: u32, with_data: bool) {
        let c = self.ctl();
        let first_seq = cursor >> ENTRY_BITS;
        let mut segments: Vec<SegmentRecord> =
            c.registry.values().filter(|s| s.seq >= first_seq && s.trusted_entries > 0).copied().collect();
        segments.sort_by_key(|s| std::cmp::Reverse(s.seq));
        let log = LogRead {
            cursor,
            count,
            with_data,
            segments,
            bufs: Vec::new(),
            entries: Vec::new(),
            pending_data: Vec::new(),
            error: None,
        };
        c.current.as_mut().expect("running").log = Some(log);
        self.log_read_next_segment();
    }

    /// Reads the summaries of the next segment, or answers.
    fn log_read_next_segment(&mut self) {
        let geo = self.shared.geo;
        let c = self.ctl();
        let cur = c.current.as_mut().expect("running");
        let log = cur.log.as_mut().expect("log read state");
        let Some(seg) = log.segments.last().copied().filter(|_| (log.entries.len() as u32) < log.count) else {
            let log = cur.log.take().expect("log read state");
            let next_cursor = log.entries.last().map_or(log.cursor, |e| e.sequence + 1);
            return self.finish(Ok(Reply::Log(LogBatch { entries: log.entries, next_cursor })));
        };
        cur.stage = Stage::LogSummaries { outstanding: summary_reads(&geo, &seg) };
        let mut bufs = Vec::new();
        self.read_summary_groups(&seg, 0..summary_groups(&geo, &seg), &mut bufs);
        let c = self.ctl();
        c.current.as_mut().expect("running").log.as_mut().expect("log read state").bufs = bufs;
    }

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
            let buf = bufs[i as usize].as_mut_ptr();
            self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks: 1, buf, tag });
        }
    }

    /// The entries of `record` its checkpoint vouches for, from the slots
    /// `read_summary_groups` read (all of them).
    pub(super) fn trusted_summaries(&self, record: &SegmentRecord, bufs: &[DmaBuf]) -> Result<Vec<SummaryEntry>> {
        let id = SegmentId { epoch: record.epoch, seq: record.seq };
        let mut chain = SummaryChain::new(self.shared.uuid, id, self.shared.geo.entries_per_summary());
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

    fn log_read_progress(&mut self) {
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let c = self.ctl();
        let names: BTreeMap<u32, String> = c.volumes.iter().map(|v| (v.partition, v.name.clone())).collect();
        let cur = c.current.as_mut().expect("running");
        let log = cur.log.as_mut().expect("log read state");
        if let Stage::LogData { .. } = cur.stage {
            for (&(entry, _), buf) in log.pending_data.iter().zip(log.bufs.drain(..)) {
                let len = log.entries[entry].blocks as usize * bs;
                log.entries[entry].data = Some(buf[..len].to_vec());
            }
            log.pending_data.clear();
            log.segments.pop();
            return self.log_read_next_segment();
        }
        let seg = *log.segments.last().expect("a segment is being read");
        let bufs = std::mem::take(&mut log.bufs);
        let entries = match self.trusted_summaries(&seg, &bufs) {
            Ok(entries) => entries,
            Err(e) => return self.finish(Err(e)),
        };
        let c = self.ctl();
        let cur = c.current.as_mut().expect("running");
        let log = cur.log.as_mut().expect("log read state");
        let start = geo.segment_start(seg.segno);
        log.pending_data.clear();
        for (idx, e) in entries.into_iter().enumerate() {
            let sequence = seg.seq << ENTRY_BITS | idx as u64;
            if sequence < log.cursor || e.kind == EntryKind::Hole || log.entries.len() as u32 >= log.count {
                continue;
            }
            if log.with_data && e.kind == EntryKind::Data {
                log.pending_data.push((log.entries.len(), start + u64::from(e.data_offset)));
            }
            log.entries.push(LogEntry {
                sequence,
                partition: seg.partition,
                volume: names.get(&seg.partition).cloned(),
                lba: e.lba,
                blocks: e.blocks,
                kind: if e.kind == EntryKind::Data { LogEntryKind::Data } else { LogEntryKind::Zero },
                data: None,
            });
        }
        if log.pending_data.is_empty() {
            log.segments.pop();
            return self.log_read_next_segment();
        }
        log.bufs = log
            .pending_data
            .iter()
            .map(|&(entry, _)| DmaBuf::new(log.entries[entry].blocks as usize * bs, bs))
            .collect();
        cur.stage = Stage::LogData { outstanding: log.bufs.len() as u32 };
        let reqs: Vec<DevRequest> = log
            .pending_data
            .iter()
            .zip(log.bufs.iter_mut())
            .enumerate()
            .map(|(i, (&(entry, block), buf))| DevRequest {
                op: DevOp::Read,
                block,
                nblocks: log.entries[entry].blocks,
                buf: buf.as_mut_ptr(),
                tag: TAG_CONTROL | i as u64,
            })
            .collect();
        for r in reqs {
            self.dev_submit(r);
        }
    }
}
