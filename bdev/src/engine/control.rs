//! Core 0's coordinator: runs control operations one at a time across all
//! cores (flush, snapshot, volume delete, log cursor, close, compaction's
//! jobs, a drain's start and commit) and owns the volume table, the segment
//! registry and the checkpoint. It also starts the background work the
//! log needs by itself: drains into the baseline, and reclaiming space.
//!
//! A snapshot: barrier that seals the open partition on every core (each
//! drains, summarizes and flushes) -> checkpoint naming the sealed partition
//! -> device flush -> the volume becomes readable everywhere -> reply.
//!
//! What a checkpoint holds, and where it goes, is `control/checkpoint.rs`;
//! the stats are assembled in `control/stats.rs`.

use super::compact::{CompactJob, CompactTarget, ReclaimNotices};
use super::cursor::LogRead;
use super::diff::{self, DiffQuery};
use super::drain::DrainJob;
use super::msg::{Msg, ReplyTo};
use super::policy::Policy;
use super::request::{check_volume_name, CompactMode, Extent, Reply, Request, VolumeInfo};
use super::shard::{Shard, TAG_CONTROL};
use super::shared::SpaceState;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{Checkpoint, SegmentRecord, VolumeRecord, PARTITION_SPAN};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;

mod checkpoint;
mod stats;

/// Log cursor positions pack (segment seq, entry index) like this.
pub(super) const ENTRY_BITS: u32 = 20;

/// A segment in use, as core 0's registry knows it: its checkpoint record,
/// and the newest partition of its entries (a drain up to that partition
/// leaves nothing live in it). Mount recomputes the latter from summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub record: SegmentRecord,
    pub last_partition: u32,
}

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
    Compact(CompactTarget),
    /// Baseline compaction asked for: retire the volumes older than this
    /// one (the oldest if `None`), then drain up to it.
    Fold(Option<String>),
    /// Starts a drain into the baseline (with a cut when there is no
    /// volume); whoever asked hears back when it commits.
    Drain,
    /// A drain's copy is done: forget, barrier, commit.
    DrainCommit,
    SetPolicy(Box<Policy>),
    /// A barrier and a checkpoint, for the window (see `free.rs`): the
    /// segments opened since the last one are listed, and the window is
    /// topped up.
    Checkpoint,
    /// Every core walks its tables (see `diff.rs`).
    Diff {
        volume: String,
        base_volume: Option<String>,
        lba_start: u64,
        lba_count: u64,
    },
}

struct Queued {
    origin: u32,
    reply: ReplyTo,
    op: Op,
    /// The event whose queued actions end with this one (see
    /// `Control::events_queued`).
    event: Option<String>,
}

#[derive(Debug)]
pub(super) enum Stage {
    Barrier {
        id: u64,
        acks: u32,
        seq_mark: u64,
        status: Result<()>,
        /// The barrier sealed the open partition.
        sealed: bool,
    },
    CheckpointWrite,
    CheckpointFlush,
    /// The log cursor reads summaries, then data.
    LogSummaries,
    LogData,
    /// Waiting for every core to take the new volume table.
    Publish {
        acks: u32,
        result: Reply,
    },
    /// Compaction reads a victim's summaries.
    CompactRead,
    /// Compaction waits for every core to move a victim.
    CompactMove,
    /// A drain's commit waits for every core to forget what drained.
    DrainForget,
    /// A diff waits for every core's extents; `full` adds the baseline's.
    Diff {
        acks: u32,
        extents: Vec<Extent>,
        query: DiffQuery,
        full: bool,
    },
}

struct Current {
    q: Queued,
    stage: Stage,
    /// A volume being added or removed, undone if the checkpoint fails.
    volume: Option<VolumeRecord>,
}

pub(crate) struct Control {
    queue: VecDeque<Queued>,
    current: Option<Current>,
    registry: BTreeMap<u32, SegmentInfo>,
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
    pub(super) compaction: Option<CompactJob>,
    pub(super) reclaim_notices: ReclaimNotices,
    pub(super) log: Option<LogRead>,
    /// The drain whose cores copy or forget, if any.
    pub(super) drain: Option<DrainJob>,
    /// Drains that failed in a row, and when the last of too many did
    /// (unix s): the next waits for the clock to move on.
    pub(super) drain_failures: u32,
    pub(super) drain_failed_at: Option<u64>,
    /// Segments the drain being committed frees once its checkpoint is
    /// durable.
    pub(super) drain_freed: Vec<u32>,
    /// Partitions up to this one live in the baseline.
    baseline_partition: u32,
    /// A drain was recorded as started and has not committed.
    draining: Option<u32>,
    drained_below: u64,
    /// The segments put in the window and not known in use yet: what the
    /// next checkpoint lists as its window.
    window: Vec<u32>,
    /// Segments the checkpoint being written adds to the window: writes
    /// open them once it is durable.
    window_pending: Vec<u32>,
    pub(super) policy: Policy,
    /// When the last snapshot was taken (unix s), for the snapshot interval.
    pub(super) last_snapshot_at: u64,
    /// When the policy was last consulted (unix s), and how many actions it
    /// took in that second.
    pub(super) policy_checked: (u64, u32),
    /// Events whose actions are queued and not all started: the same event
    /// again is covered by them (they act on the state when they run), so
    /// a storm of events runs each event's actions once at a time.
    events_queued: BTreeSet<String>,
    /// The highest threshold (80, 95) of log space held by live versions
    /// warned about, until the share falls back below 75 %.
    versions_warned: u8,
    /// Blocks clients had written when that count last changed, and when
    /// (unix s): a second without writes is idle time the log drains in.
    writes_seen: (u64, u64),
}

impl Control {
    pub(super) fn registry(&self) -> &BTreeMap<u32, SegmentInfo> {
        &self.registry
    }

    pub(super) fn registry_mut(&mut self) -> &mut BTreeMap<u32, SegmentInfo> {
        &mut self.registry
    }

    pub(super) fn open_partition(&self) -> u32 {
        self.open_partition
    }

    /// The id of the next snapshot taken without a name, as the policy
    /// directs; a suffix keeps it unique. Checked whole, suffix included:
    /// a template near the length limit fails this one snapshot.
    fn next_volume_id(&self, now: u64) -> Result<String> {
        let base = self.policy.volume_id(now, self.next_snapshot_number.saturating_add(1));
        let taken = |n: &str| self.volumes.iter().any(|v| v.name == n);
        let mut name = base.clone();
        let mut k = 2;
        while taken(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        check_volume_name(&name)?;
        Ok(name)
    }

    /// Queues an operation nobody waits for (policy actions, follow-ups).
    pub(super) fn enqueue_background(&mut self, origin: u32, op: Op) {
        self.queue.push_back(Queued { origin, reply: ReplyTo::Nobody, op, event: None });
    }

    /// Queues an operation nobody waits for, ahead of the others.
    pub(super) fn event_queued(&self, name: &str) -> bool {
        self.events_queued.contains(name)
    }

    /// The actions of event `name` were just queued: until the last one
    /// starts, the event again is covered by them.
    pub(super) fn note_event_queued(&mut self, name: &str) {
        self.queue.back_mut().expect("the event's actions were queued").event = Some(name.to_owned());
        self.events_queued.insert(name.to_owned());
    }

    pub(super) fn enqueue_front(&mut self, origin: u32, op: Op) {
        self.queue.push_front(Queued { origin, reply: ReplyTo::Nobody, op, event: None });
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

    pub(super) fn draining(&self) -> Option<u32> {
        self.draining
    }

    pub(super) fn set_draining(&mut self, p: Option<u32>) {
        self.draining = p;
    }

    pub(super) fn drained_below(&self) -> u64 {
        self.drained_below
    }

    pub(super) fn raise_drained_below(&mut self, position: u64) {
        self.drained_below = self.drained_below.max(position);
    }

    pub(super) fn set_stage(&mut self, stage: Stage) {
        self.current.as_mut().expect("an operation is running").stage = stage;
    }

    pub(super) fn stage(&self) -> Option<&Stage> {
        self.current.as_ref().map(|c| &c.stage)
    }

    pub(super) fn new(ckpt: &Checkpoint, open_partition: u32, ckpt_buf: DmaBuf, now: u64) -> Control {
        let window = ckpt.window.clone().expect("mount's checkpoint lists the window");
        let policy = Policy::parse(&ckpt.policy).unwrap_or_else(|e| {
            log::error!("ignoring the stored policy: {e}");
            Policy::default()
        });
        let last_snapshot_at = ckpt.volumes.iter().map(|v| v.created_unix_s).max().unwrap_or(now);
        Control {
            queue: VecDeque::new(),
            current: None,
            registry: BTreeMap::new(),
            volumes: ckpt.volumes.clone(),
            generation: ckpt.generation,
            seq_high: ckpt.seq_high,
            next_snapshot_number: ckpt.next_snapshot_number,
            open_partition,
            next_barrier: 1,
            ckpt_buf,
            failed: None,
            compaction: None,
            log: None,
            drain: None,
            drain_failures: 0,
            drain_failed_at: None,
            drain_freed: Vec::new(),
            baseline_partition: ckpt.baseline_partition,
            // A drain the last mount started and did not commit: the
            // background work finishes it.
            draining: ckpt.draining,
            drained_below: ckpt.drained_below,
            window,
            window_pending: Vec::new(),
            policy,
            last_snapshot_at,
            policy_checked: (0, 0),
            events_queued: BTreeSet::new(),
            versions_warned: 0,
            reclaim_notices: ReclaimNotices::default(),
            writes_seen: (0, now),
        }
    }

    /// The segments in use, as mount accepted them.
    pub(super) fn register(&mut self, segments: impl Iterator<Item = SegmentInfo>) {
        self.registry = segments.map(|s| (s.record.segno, s)).collect();
    }

    pub(super) fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty() && self.drain.is_none()
    }

    /// What the running or queued operation is doing, for diagnostics.
    pub(super) fn busy_with(&self) -> Option<String> {
        let current = self.current.as_ref().map(|c| format!("control {:?} at {:?}", c.q.op, c.stage));
        let drain = self.drain.as_ref().map(|d| format!("a drain up to partition {}", d.target));
        current.or(drain).or_else(|| self.queue.front().map(|q| format!("control {:?} queued", q.op)))
    }

    /// Takes the first queued operation that may start now: while a drain's
    /// cores copy, compaction jobs and other drains wait (they would move or
    /// free what the copy reads).
    fn next_runnable(&mut self) -> Option<Queued> {
        let draining = self.drain.is_some();
        let i =
            self.queue.iter().position(|q| !(draining && matches!(q.op, Op::Compact(_) | Op::Fold(_) | Op::Drain)))?;
        let q = self.queue.remove(i)?;
        if let Some(event) = &q.event {
            self.events_queued.remove(event);
        }
        Some(q)
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

    /// Partitions holding log entries that have not drained (an upper
    /// bound: the spans of the segments in use, and the open partition).
    pub(super) fn partitions_in_log(&self) -> u32 {
        let mut spans: Vec<(u32, u32)> = self
            .registry
            .values()
            .map(|s| (s.record.partition.max(self.baseline_partition + 1), s.last_partition))
            .chain(std::iter::once((self.open_partition, self.open_partition)))
            .filter(|(a, b)| a <= b)
            .collect();
        spans.sort_unstable();
        let (mut count, mut covered) = (0u32, 0u32);
        for (a, b) in spans {
            let from = a.max(covered.saturating_add(1));
            if from <= b {
                count += b - from + 1;
            }
            covered = covered.max(b);
        }
        count
    }
}

impl Shard {
    pub(super) fn ctl_mut(&mut self) -> &mut Control {
        self.ctl.as_mut().expect("control runs on core 0")
    }

    pub(super) fn control_enqueue(&mut self, origin: u32, reply: ReplyTo, req: Request) {
        let op = match req {
            Request::Flush => Op::Flush,
            Request::Snapshot { name } => Op::Snapshot(name),
            Request::DeleteVolume { name } => Op::Delete(name),
            Request::LogRead { cursor, count, with_data } => Op::LogRead { cursor, count, with_data },
            Request::Close => Op::Close,
            Request::Compact { volume: None, mode: CompactMode::InPlace } => Op::Compact(CompactTarget::All),
            Request::Compact { volume: Some(name), mode: CompactMode::InPlace } => {
                let Some(v) = self.ctl_mut().volumes.iter().find(|v| v.name == name) else {
                    return self.reply(origin, reply, Err(Error::NoSuchVolume(name)));
                };
                Op::Compact(CompactTarget::Partition(v.partition))
            }
            Request::Compact { volume, mode: CompactMode::Baseline } => Op::Fold(volume),
            Request::SetPolicy { policy } => match Policy::parse(&policy) {
                Ok(p) => Op::SetPolicy(Box::new(p)),
                Err(e) => return self.reply(origin, reply, Err(e)),
            },
            Request::GetPolicy => {
                let json = self.ctl_mut().policy.json.clone();
                let json = if json.is_empty() { "{}".to_owned() } else { json };
                return self.reply(origin, reply, Ok(Reply::Policy(json)));
            }
            Request::Event { name } => {
                let result = self.policy_event(&name);
                return self.reply(origin, reply, result);
            }
            Request::ListVolumes => {
                let list = self.ctl_mut().published_volumes();
                return self.reply(origin, reply, Ok(Reply::Volumes(list)));
            }
            Request::Stats => {
                let stats = self.stats();
                return self.reply(origin, reply, Ok(Reply::Stats(stats)));
            }
            Request::Diff { volume, base_volume, lba_start, lba_count } => {
                Op::Diff { volume, base_volume, lba_start, lba_count }
            }
            Request::Read { .. } | Request::Write { .. } | Request::WriteZeroes { .. } | Request::Unmap { .. } => {
                unreachable!("data requests never reach the coordinator")
            }
        };
        self.ctl_mut().queue.push_back(Queued { origin, reply, op, event: None });
    }

    pub(super) fn reply(&mut self, origin: u32, reply: ReplyTo, result: Result<Reply>) {
        if origin == self.core {
            self.deliver(reply, result);
        } else {
            self.send(origin, Msg::ControlDone { reply, result });
        }
    }

    /// Ends the running operation, answering whoever asked.
    pub(super) fn finish_control(&mut self, result: Result<Reply>) {
        let cur = self.ctl_mut().current.take().expect("an operation is running");
        self.reply(cur.q.origin, cur.q.reply, result);
    }

    /// Starts the next queued operation when none is running.
    pub(super) fn control_step(&mut self) {
        if self.ctl_mut().current.is_some() {
            return;
        }
        // Once closed, nothing runs (the checkpoint stays clean, and the
        // cores go idle and detach): no background work starts, and what
        // was queued behind the close is refused.
        let closed = self.shared.closed.load(Ordering::Acquire);
        if !closed && self.ctl_mut().queue.is_empty() {
            self.policy_tick();
        }
        if !closed && self.ctl_mut().queue.is_empty() {
            self.background_tick();
        }
        let Some(q) = self.ctl_mut().next_runnable() else { return };
        if closed {
            if matches!(q.op, Op::DrainCommit) {
                // The copy ended after the close: mount drains again.
                self.drain_end(Err(Error::ShuttingDown));
            }
            return self.reply(q.origin, q.reply, Err(Error::ShuttingDown));
        }
        if let Some(e) = self.ctl_mut().failed.clone() {
            if matches!(q.op, Op::Compact(_) | Op::Drain | Op::DrainCommit | Op::Checkpoint) {
                // No checkpoint can free a segment now: writes waiting for
                // space must fail rather than wait for ever.
                self.shared.set_space_state(SpaceState::Failed);
            }
            if matches!(q.op, Op::DrainCommit) {
                self.drain_end(Err(e.clone()));
            }
            return self.reply(q.origin, q.reply, Err(e));
        }
        let mut q = q;
        if let Op::Snapshot(name @ None) = &mut q.op {
            // The generated id is fixed (and checked) before anything seals.
            let now = self.shared.clock.now_unix_s();
            let c = self.ctl_mut();
            match c.next_volume_id(now) {
                Ok(id) => {
                    c.next_snapshot_number = c.next_snapshot_number.saturating_add(1);
                    *name = Some(id);
                }
                Err(e) => return self.reply(q.origin, q.reply, Err(e)),
            }
        }
        let mut seal = None;
        let (mut close, mut shutdown) = (false, false);
        match &q.op {
            Op::Snapshot(name) => {
                if let Err(e) = self.check_new_volume(name.as_deref()) {
                    return self.reply(q.origin, q.reply, Err(e));
                }
                match self.next_partition() {
                    Ok(next) => seal = Some(next),
                    Err(e) => return self.reply(q.origin, q.reply, Err(e)),
                }
            }
            Op::Delete(name) => {
                let c = self.ctl_mut();
                let Some(i) = c.volumes.iter().position(|v| &v.name == name) else {
                    let e = Error::NoSuchVolume(name.clone());
                    return self.reply(q.origin, q.reply, Err(e));
                };
                let removed = c.volumes.remove(i);
                c.current = Some(Current { q, stage: Stage::CheckpointWrite, volume: Some(removed) });
                return self.write_checkpoint(false);
            }
            Op::SetPolicy(_) => {
                let c = self.ctl_mut();
                let Some(Queued { op: Op::SetPolicy(p), .. }) = Some(&q) else { unreachable!() };
                c.policy = (**p).clone();
                c.current = Some(Current { q, stage: Stage::CheckpointWrite, volume: None });
                return self.write_checkpoint(false);
            }
            Op::Close => (close, shutdown) = (true, true),
            Op::Fold(volume) => {
                let (partition, older) = match self.fold_target(volume.as_deref()) {
                    Ok(t) => t,
                    Err(e) => return self.reply(q.origin, q.reply, Err(e)),
                };
                if partition.is_some_and(|p| p <= self.ctl_mut().baseline_partition) {
                    return self.reply(q.origin, q.reply, Ok(Reply::Done));
                }
                let (core, c) = (self.core, self.ctl_mut());
                if older.is_empty() {
                    // The volume is the oldest now: drain up to it.
                    c.queue.push_front(Queued { origin: q.origin, reply: q.reply, op: Op::Drain, event: None });
                    return;
                }
                // The baseline is about to hold a newer image: the volumes
                // older than the folded one are retired first.
                c.queue.push_front(q);
                for name in older.into_iter().rev() {
                    log::info!("retiring volume {name}: a newer volume goes into the baseline");
                    c.queue.push_front(Queued {
                        origin: core,
                        reply: ReplyTo::Nobody,
                        op: Op::Delete(name),
                        event: None,
                    });
                }
                return;
            }
            Op::Drain => match self.drain_target() {
                None => return self.reply(q.origin, q.reply, Ok(Reply::Done)),
                Some((target, false)) => {
                    self.ctl_mut().current = Some(Current { q, stage: Stage::CheckpointWrite, volume: None });
                    return self.drain_intent(target);
                }
                Some((_, true)) => match self.next_partition() {
                    Ok(next) => {
                        seal = Some(next);
                        // Writes wait and the cores' open segments are most
                        // of what is used: the cut closes them, so the drain
                        // frees them too.
                        let used = self.shared.geo.segment_count as usize - self.shared.free.len();
                        close =
                            self.shared.space_state() == SpaceState::Wanted && used <= 2 * self.shared.cores as usize;
                    }
                    Err(e) => return self.reply(q.origin, q.reply, Err(e)),
                },
            },
            Op::DrainCommit => {
                self.ctl_mut().current = Some(Current { q, stage: Stage::DrainForget, volume: None });
                return self.drain_commit_start();
            }
            Op::Compact(target) => {
                let target = *target;
                self.ctl_mut().compaction = Some(CompactJob::new(target));
            }
            Op::Diff { volume, base_volume, lba_start, lba_count } => {
                let (query, full) = match self.diff_query(volume, base_volume.as_deref(), *lba_start, *lba_count) {
                    Ok(q) => q,
                    Err(e) => return self.reply(q.origin, q.reply, Err(e)),
                };
                let stage = Stage::Diff { acks: 0, extents: Vec::new(), query, full };
                self.ctl_mut().current = Some(Current { q, stage, volume: None });
                for core in 0..self.shared.cores {
                    self.send(core, Msg::Diff(query));
                }
                return;
            }
            Op::Flush | Op::LogRead { .. } | Op::Checkpoint => {}
        }
        self.ctl_mut().current = Some(Current { q, stage: Stage::CheckpointWrite, volume: None });
        self.start_control_barrier(seal, close, shutdown);
    }

    /// What every core walks for a diff of `volume` since `base` (since
    /// the baseline, and then with its data too, without one).
    fn diff_query(
        &mut self,
        volume: &str,
        base: Option<&str>,
        lba_start: u64,
        lba_count: u64,
    ) -> Result<(DiffQuery, bool)> {
        let volume_blocks = self.shared.geo.volume_blocks;
        let lba_end = lba_start.checked_add(lba_count).filter(|&end| end <= volume_blocks && lba_count > 0);
        let lba_end = lba_end.ok_or(Error::OutOfRange { lba: lba_start, blocks: lba_count, volume_blocks })?;
        let c = self.ctl_mut();
        let partition = |name: &str| {
            let v = c.volumes.iter().find(|v| v.name == name);
            v.map(|v| v.partition).ok_or_else(|| Error::NoSuchVolume(name.to_owned()))
        };
        let hi = partition(volume)?;
        let lo = match base {
            None => c.baseline_partition.min(hi),
            Some(base) => partition(base)?,
        };
        if lo > hi || (base.is_some() && lo == hi) {
            return Err(Error::InvalidArgument(format!(
                "base volume {} is not older than volume {volume}",
                base.unwrap_or_default()
            )));
        }
        Ok((DiffQuery { lo, hi, lba_start, lba_end }, base.is_none()))
    }

    /// A core's extents for the running diff; the answer once every core's
    /// are in.
    pub(super) fn on_diff_done(&mut self, mut part: Vec<Extent>) {
        let cores = self.shared.cores;
        let c = self.ctl_mut();
        let Some(Current { stage: Stage::Diff { acks, extents, .. }, .. }) = &mut c.current else {
            unreachable!("diff answers come while a diff runs")
        };
        *acks += 1;
        extents.append(&mut part);
        if *acks < cores {
            return;
        }
        let Some(Current { stage: Stage::Diff { extents, query, full, .. }, .. }) = c.current.as_mut() else {
            unreachable!("checked")
        };
        let (log, query, full) = (std::mem::take(extents), *query, *full);
        let baseline = if full { self.baseline_runs(query.lba_start, query.lba_end) } else { Vec::new() };
        self.finish_control(Ok(Reply::Extents(diff::combine(log, &baseline))));
    }

    /// The runs of `start..end` in stripes of the baseline that hold data.
    fn baseline_runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let sb = u64::from(self.shared.geo.stripe_blocks);
        let stripes = (start / sb..end.div_ceil(sb)).filter(|&s| self.shared.baseline.has(s));
        stripes.map(|s| ((s * sb).max(start), ((s + 1) * sb).min(end))).collect()
    }

    /// The partition a seal opens next. Entries name their partition as an
    /// offset from their segment's base, which is above the baseline's: a
    /// span the oldest volume, kept while partitions are cut above it, may
    /// not outgrow.
    fn next_partition(&mut self) -> Result<u32> {
        let c = self.ctl_mut();
        let next = c.open_partition.checked_add(1);
        match next.filter(|&n| n - c.baseline_partition < PARTITION_SPAN) {
            Some(n) => Ok(n),
            None => Err(Error::InvalidArgument(format!(
                "{} partitions lie above the baseline, the most a log holds: delete the oldest volume",
                PARTITION_SPAN - 1
            ))),
        }
    }

    /// Starts a barrier on every core for the running operation (see
    /// `Msg::Barrier`).
    pub(super) fn start_control_barrier(&mut self, seal: Option<u32>, close: bool, shutdown: bool) {
        let seq_mark = self.shared.next_seq.load(Relaxed);
        let c = self.ctl_mut();
        let id = c.next_barrier;
        c.next_barrier += 1;
        c.set_stage(Stage::Barrier { id, acks: 0, seq_mark, status: Ok(()), sealed: seal.is_some() });
        for core in 0..self.shared.cores {
            self.send(core, Msg::Barrier { id, seal, close, shutdown });
        }
    }

    /// Background work the log needs, when no operation is queued: a drain
    /// into the baseline when there is something to drain and a reason to,
    /// else (writes waiting for room) compaction.
    fn background_tick(&mut self) {
        self.warn_on_versions();
        let core = self.core;
        if self.shared.free.window_short() {
            // Half the window is used, or writes wait for it.
            return self.ctl_mut().enqueue_background(core, Op::Checkpoint);
        }
        if self.ctl_mut().drain.is_some() {
            return;
        }
        let wanted = self.shared.space_state() == SpaceState::Wanted;
        if self.drain_wanted(wanted) {
            self.ctl_mut().enqueue_background(core, Op::Drain);
        } else if wanted {
            log::debug!("log full: reclaiming space");
            self.ctl_mut().enqueue_background(core, Op::Compact(CompactTarget::Reclaim));
        }
    }

    /// Whether a drain should start now: one a crash or a failure left
    /// unfinished (after failures, once the clock moved on), the oldest
    /// volume not yet in the baseline, or (without volumes) writes waiting
    /// for room, a log three quarters full, or a second without writes. So
    /// a burst that fits in the log is taken at the write path's speed, and
    /// the log empties while the disk is idle.
    fn drain_wanted(&mut self, space_wanted: bool) -> bool {
        let now = self.shared.clock.now_unix_s();
        let written = self.shared.counters.user_blocks.load(Relaxed);
        let c = self.ctl_mut();
        if c.writes_seen.0 != written {
            c.writes_seen = (written, now);
        }
        // Seconds are whole: a change seen in second S, none in S + 1.
        let idle = now > c.writes_seen.1 + 1;
        if c.drain_failed_at.is_some_and(|at| now <= at) {
            return false;
        }
        c.drain_failed_at = None;
        match self.drain_target() {
            None => false,
            Some((_, false)) => true,
            Some((_, true)) => {
                // Beyond the cores' open segments: what a drain can free.
                let geo = self.shared.geo;
                let used = geo.segment_count as usize - self.shared.free.len();
                let drainable = used > self.shared.cores as usize;
                (space_wanted && used > 0) || (drainable && (idle || used * 4 >= geo.segment_count as usize * 3))
            }
        }
    }

    /// Logs a warning as the log's space held by live versions passes 80 %
    /// and 95 %.
    fn warn_on_versions(&mut self) {
        let geo = self.shared.geo;
        let live: u64 = self.shared.space.iter().map(|s| u64::from(s.live())).sum();
        let pct = live * 100 / (u64::from(geo.segment_count) * u64::from(geo.segment_blocks)).max(1);
        let c = self.ctl_mut();
        let level = [95u8, 80].into_iter().find(|&l| pct >= u64::from(l)).unwrap_or(0);
        if level > c.versions_warned {
            log::warn!(
                "the log is {pct} % full of versions that volumes and the current image need ({} volumes)",
                c.volumes.len()
            );
            c.versions_warned = level;
        } else if pct < 75 {
            c.versions_warned = 0;
        }
    }

    fn check_new_volume(&mut self, name: Option<&str>) -> Result<()> {
        let max = self.shared.geo.max_volumes;
        let c = self.ctl_mut();
        if let Some(name) = name {
            check_volume_name(name)?;
            if c.volumes.iter().any(|v| v.name == name) {
                return Err(Error::VolumeExists(name.to_owned()));
            }
        }
        if c.volumes.len() >= max as usize {
            return Err(Error::TooManyVolumes { max });
        }
        Ok(())
    }

    pub(super) fn on_barrier_done(&mut self, id: u64, segments: Vec<SegmentInfo>, result: Result<()>) {
        let cores = self.shared.cores;
        let c = self.ctl_mut();
        for s in segments {
            c.registry.insert(s.record.segno, s);
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
        let Stage::Barrier { seq_mark, status, sealed, .. } = std::mem::replace(&mut cur.stage, Stage::CheckpointWrite)
        else {
            unreachable!()
        };
        if sealed {
            // Every core sealed, whatever happens next: the new partition is open.
            c.open_partition += 1;
        }
        if let Err(e) = status {
            log::error!("barrier failed ({e}): refusing metadata changes until remounted");
            c.failed = Some(e.clone());
            if matches!(cur.q.op, Op::DrainCommit) {
                self.drain_end(Err(e.clone()));
            }
            return self.finish_control(Err(e));
        }
        c.seq_high = c.seq_high.max(seq_mark.saturating_sub(1));
        let cur = c.current.as_mut().expect("checked");
        match &cur.q.op {
            Op::Flush => self.finish_control(Ok(Reply::Done)),
            Op::Snapshot(name) => {
                let name = name.clone().expect("named when it started");
                let now = self.shared.clock.now_unix_s();
                let c = self.ctl_mut();
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
            Op::Delete(_) | Op::SetPolicy(_) | Op::Fold(_) | Op::Diff { .. } => unreachable!("no barrier"),
            Op::Checkpoint => self.write_checkpoint(false),
            Op::Compact(_) => self.compact_after_barrier(),
            Op::Drain => {
                let cut = c.open_partition - 1;
                self.drain_intent(cut)
            }
            Op::DrainCommit => self.drain_commit_after_barrier(),
        }
    }

    pub(super) fn control_device_done(&mut self, value: u64, status: DevStatus) {
        let c = self.ctl_mut();
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
            Stage::LogSummaries | Stage::LogData => self.log_read_done(value, status),
            Stage::CompactRead => self.compact_read_done(status),
            Stage::Barrier { .. }
            | Stage::Publish { .. }
            | Stage::CompactMove
            | Stage::DrainForget
            | Stage::Diff { .. } => {
                unreachable!("no control I/O in this stage")
            }
        }
    }

    fn checkpoint_done(&mut self, status: DevStatus) {
        let c = self.ctl_mut();
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
            c.compaction = None;
            if matches!(cur.q.op, Op::DrainCommit) {
                self.drain_end(Err(Error::Io(e)));
            }
            return self.finish_control(Err(Error::Io(e)));
        }
        c.generation += 1;
        let opened = std::mem::take(&mut c.window_pending);
        self.shared.free.open_window(&opened);
        let c = self.ctl_mut();
        let cur = c.current.as_ref().expect("running");
        match cur.q.op {
            Op::Compact(_) => return self.compact_checkpointed(),
            Op::Drain => {
                let cur = c.current.take().expect("running");
                let target = c.draining.expect("the intent names the target");
                let waiter = match cur.q.reply {
                    ReplyTo::Nobody => None,
                    reply => Some((cur.q.origin, reply)),
                };
                return self.drain_started(target, waiter);
            }
            Op::DrainCommit => return self.drain_committed(),
            Op::Checkpoint => return self.finish_control(Ok(Reply::Done)),
            _ => {}
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
        self.ctl_mut().current.as_mut().expect("running").stage = Stage::Publish { acks: 0, result };
        for core in 0..self.shared.cores {
            self.send(core, Msg::Volumes(live.clone()));
        }
    }

    pub(super) fn on_volumes_ack(&mut self) {
        let cores = self.shared.cores;
        let c = self.ctl_mut();
        let oldest = c.volumes.iter().map(|v| v.partition).min();
        let cur = c.current.as_mut().expect("acks come while publishing");
        let Stage::Publish { acks, result } = &mut cur.stage else { unreachable!("acks come while publishing") };
        *acks += 1;
        if *acks < cores {
            return;
        }
        let result = std::mem::replace(result, Reply::Done);
        // A deleted volume's partition merges into the next one: its blocks
        // no view reads any more are dropped by compacting it. Below the
        // oldest volume left, the drain takes them instead.
        let merge = match (&cur.q.op, &cur.volume) {
            (Op::Delete(_), Some(v)) => oldest.filter(|&o| o < v.partition).map(|_| v.partition),
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
        if hook == Some(false) && self.shared.space_state() == SpaceState::Exhausted {
            // What the volume held may be room again: look for it.
            self.shared.set_space_state(SpaceState::Wanted);
        }
        self.finish_control(Ok(result));
        if let Some(p) = merge {
            let core = self.core;
            self.ctl_mut().enqueue_background(core, Op::Compact(CompactTarget::Partition(p)));
        }
        if let Some(snapshot) = hook {
            self.policy_hook(snapshot);
        }
    }
}
