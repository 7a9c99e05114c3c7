//! Running the coordinator's operations, one at a time: each starts with a
//! named step, goes through a barrier on every core (or straight to a
//! checkpoint), may hand over to its job, and ends by publishing the volume
//! table (see the module comment of `control`).

use super::queue::Queued;
use super::{Current, Op, Shard, Stage};
use crate::device::{DevOp, DevRequest, DevStatus, IoBuf};
use crate::engine::compact::{CompactJob, CompactTarget};
use crate::engine::msg::Msg;
use crate::engine::registry::SegmentInfo;
use crate::engine::request::Reply;
use crate::engine::shared::SpaceState;
use crate::engine::tag::TAG_CONTROL;
use crate::error::{Error, Result};
use crate::format::VolumeRecord;
use std::sync::atomic::Ordering::{self, Relaxed};

impl Shard {
    /// Starts the next queued operation when none is running.
    pub(in crate::engine) fn control_step(&mut self) {
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
            return self.refuse(q, Error::ShuttingDown);
        }
        if let Some(e) = self.ctl_mut().failed.clone() {
            if matches!(q.op, Op::Compact(_) | Op::Drain | Op::DrainCommit | Op::Checkpoint) {
                // No checkpoint can free a segment now: writes waiting for
                // space must fail rather than wait for ever.
                self.shared.set_space_state(SpaceState::Failed);
            }
            return self.refuse(q, e);
        }
        self.start_op(q);
    }

    /// Answers `q` with `e` without running it.
    fn refuse(&mut self, q: Queued, e: Error) {
        if matches!(q.op, Op::DrainCommit) {
            // The copy ended after a close or a failure: mount drains again.
            self.drain_end(Err(e.clone()));
        }
        self.reply(q.origin, q.reply, Err(e))
    }

    fn start_op(&mut self, q: Queued) {
        match &q.op {
            Op::Snapshot(_) => self.start_snapshot(q),
            Op::Delete(_) => self.start_delete(q),
            Op::SetPolicy(_) => self.start_set_policy(q),
            Op::Close => self.run_barrier(q, None, true, true),
            Op::Fold(_) => self.start_fold(q),
            Op::Drain => self.start_drain(q),
            Op::DrainCommit => {
                self.begin(q, Stage::Job, None);
                self.drain_commit_start();
            }
            Op::Compact(target) => {
                let job = CompactJob::new(*target);
                self.ctl_mut().compaction = Some(job);
                self.run_barrier(q, None, false, false);
            }
            Op::Flush | Op::LogRead { .. } | Op::Checkpoint => self.run_barrier(q, None, false, false),
            Op::Diff { volume, base_volume, lba_start, lba_count } => {
                let volume_blocks = self.shared.geo.volume_blocks;
                let c = self.ctl_mut();
                match c.diff_query(volume, base_volume.as_deref(), *lba_start, *lba_count, volume_blocks) {
                    Ok(job) => {
                        self.begin(q, Stage::Job, None);
                        self.start_diff_job(job);
                    }
                    Err(e) => self.reply(q.origin, q.reply, Err(e)),
                }
            }
        }
    }

    /// Makes `q` the running operation.
    fn begin(&mut self, q: Queued, stage: Stage, volume: Option<VolumeRecord>) {
        self.ctl_mut().current = Some(Current { q, stage, volume });
    }

    /// Runs `q` from a barrier on every core.
    fn run_barrier(&mut self, q: Queued, seal: Option<u32>, close: bool, shutdown: bool) {
        self.begin(q, Stage::CheckpointWrite, None);
        self.start_control_barrier(seal, close, shutdown);
    }

    /// A snapshot: the volume's id is fixed (and checked) before anything
    /// seals, then a barrier seals the open partition.
    fn start_snapshot(&mut self, mut q: Queued) {
        let now = self.shared.clock.now_unix_s();
        let max = self.shared.geo.max_volumes;
        let c = self.ctl_mut();
        let Op::Snapshot(name) = &mut q.op else { unreachable!("a snapshot") };
        if name.is_none() {
            match c.next_volume_id(now) {
                Ok(id) => {
                    c.next_snapshot_number = c.next_snapshot_number.saturating_add(1);
                    *name = Some(id);
                }
                Err(e) => return self.reply(q.origin, q.reply, Err(e)),
            }
        }
        match c.check_new_volume(name.as_deref(), max).and_then(|()| c.next_partition()) {
            Ok(next) => self.run_barrier(q, Some(next), false, false),
            Err(e) => self.reply(q.origin, q.reply, Err(e)),
        }
    }

    /// A delete: the volume leaves the table, a checkpoint records it.
    fn start_delete(&mut self, q: Queued) {
        let c = self.ctl_mut();
        let Op::Delete(name) = &q.op else { unreachable!("a delete") };
        let Some(i) = c.volumes.iter().position(|v| &v.name == name) else {
            let e = Error::NoSuchVolume(name.clone());
            return self.reply(q.origin, q.reply, Err(e));
        };
        let removed = c.volumes.remove(i);
        self.begin(q, Stage::CheckpointWrite, Some(removed));
        self.write_checkpoint(false);
    }

    fn start_set_policy(&mut self, q: Queued) {
        let Op::SetPolicy(p) = &q.op else { unreachable!("a policy") };
        self.ctl_mut().policy = (**p).clone();
        self.begin(q, Stage::CheckpointWrite, None);
        self.write_checkpoint(false);
    }

    /// A baseline compaction: the volumes older than the folded one are
    /// retired first, then a drain up to it runs in its place.
    fn start_fold(&mut self, q: Queued) {
        let Op::Fold(volume) = &q.op else { unreachable!("a fold") };
        let (partition, older) = match self.ctl_mut().fold_target(volume.as_deref()) {
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
        // The baseline is about to hold a newer image: the volumes older
        // than the folded one are retired first.
        c.queue.push_front(q);
        for name in older.into_iter().rev() {
            log::info!("retiring volume {name}: a newer volume goes into the baseline");
            c.queue.push_front(Queued::background(core, Op::Delete(name)));
        }
    }

    /// A drain: its intent is recorded at once, or after a cut (a barrier
    /// that seals the open partition) when there is no volume.
    fn start_drain(&mut self, q: Queued) {
        let c = self.ctl_mut();
        match c.drain_target() {
            None => self.reply(q.origin, q.reply, Ok(Reply::Done)),
            Some((target, false)) => {
                self.begin(q, Stage::CheckpointWrite, None);
                self.drain_intent(target);
            }
            Some((_, true)) => match c.next_partition() {
                Ok(next) => {
                    // Writes wait and the cores' open segments are most of
                    // what is used: the cut closes them, so the drain frees
                    // them too.
                    let used = self.shared.geo.segment_count as usize - self.shared.free.len();
                    let close =
                        self.shared.space_state() == SpaceState::Wanted && used <= 2 * self.shared.cores as usize;
                    self.run_barrier(q, Some(next), close, false);
                }
                Err(e) => self.reply(q.origin, q.reply, Err(e)),
            },
        }
    }

    /// Starts a barrier on every core for the running operation (see
    /// `Msg::Barrier`).
    pub(in crate::engine) fn start_control_barrier(&mut self, seal: Option<u32>, close: bool, shutdown: bool) {
        let seq_mark = self.shared.next_seq.load(Relaxed);
        let c = self.ctl_mut();
        let id = c.next_barrier;
        c.next_barrier += 1;
        let cur = c.current.as_mut().expect("an operation is running");
        cur.stage = Stage::Barrier { id, acks: 0, seq_mark, status: Ok(()), sealed: seal.is_some() };
        for core in 0..self.shared.cores {
            self.send(core, Msg::Barrier { id, seal, close, shutdown });
        }
    }

    pub(in crate::engine) fn on_barrier_done(&mut self, id: u64, segments: Vec<SegmentInfo>, result: Result<()>) {
        let cores = self.shared.cores;
        let c = self.ctl_mut();
        for s in segments {
            c.registry.insert(s);
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
        let Stage::Barrier { seq_mark, status, sealed, .. } = std::mem::replace(&mut cur.stage, Stage::Job) else {
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
        self.after_barrier();
    }

    /// The running operation's barrier is done: its next step.
    fn after_barrier(&mut self) {
        let c = self.ctl_mut();
        let cur = c.current.as_mut().expect("running");
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

    /// A device request of the running operation completed: the
    /// checkpoint's, or its job's.
    pub(in crate::engine) fn control_device_done(&mut self, value: u64, status: DevStatus) {
        let c = self.ctl_mut();
        let cur = c.current.as_mut().expect("control I/O belongs to the running operation");
        match (&cur.stage, &cur.q.op) {
            (Stage::CheckpointWrite, _) => {
                if status.is_ok() {
                    cur.stage = Stage::CheckpointFlush;
                    let flush =
                        DevRequest { op: DevOp::Flush, block: 0, nblocks: 0, buf: IoBuf::EMPTY, tag: TAG_CONTROL };
                    return self.dev_submit(flush);
                }
                self.checkpoint_done(status)
            }
            (Stage::CheckpointFlush, _) => self.checkpoint_done(status),
            (Stage::Job, Op::LogRead { .. }) => self.log_read_done(value, status),
            (Stage::Job, Op::Compact(_)) => self.compact_read_done(status),
            (stage, op) => unreachable!("no control I/O for {op:?} at {stage:?}"),
        }
    }

    /// The checkpoint is durable and changed the volume table: every core
    /// takes the new one before the operation answers.
    pub(super) fn publish(&mut self, result: Reply) {
        let c = self.ctl_mut();
        let live = c.live_partitions();
        c.current.as_mut().expect("running").stage = Stage::Publish { acks: 0, result };
        for core in 0..self.shared.cores {
            self.send(core, Msg::Volumes(live.clone()));
        }
    }

    pub(in crate::engine) fn on_volumes_ack(&mut self) {
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
