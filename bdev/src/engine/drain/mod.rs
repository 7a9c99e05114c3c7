//! The drain: the log flows into the baseline region, continuously.
//!
//! The baseline holds the image of the oldest snapshot volume, or the
//! current image once there is none: partitions up to a *target* are
//! written into it and leave the log. Without volumes, the open partition
//! is cut first (sealed without becoming a volume) and the cut partition is
//! the target, so a disk without snapshots drains too; with volumes, the
//! target is the oldest volume's partition. Only versions later volumes and
//! the current image need stay in the log.
//!
//! A drain to `T`, coordinated by core 0:
//! 1. (a cut: a barrier that seals the open partition) a checkpoint records
//!    `draining = T`, so mount finishes a drain a crash interrupted;
//! 2. each core writes, for every block it owns that partitions up to `T`
//!    hold, the version as of `T` into the baseline (`DrainCopy`), in
//!    slices. Until the commit, every view that reads such a block finds
//!    it in the log, so the baseline blocks overwritten are read by no
//!    one. A stripe of the baseline that never held data is written whole
//!    the first time (its other blocks as zeros), then block by block;
//! 3. each core forgets the drained partitions (`Forget`): the index stops
//!    pointing at their versions (reads go to the baseline, written and
//!    visible), their space counts go, their tables are dropped;
//! 4. a barrier (the baseline writes become durable with its flush), then a
//!    checkpoint with `baseline_partition = T` that no longer lists the
//!    segments holding only drained entries, which are then free.
//!
//! The copy runs beside other control operations (snapshots, deletes,
//! flushes are not held up by it); compaction jobs and another drain wait
//! for it. The forget walk and the commit are one control operation, so no
//! volume change overlaps the walk.

mod copy;
mod forget;

pub(super) use copy::DrainCopy;
pub(super) use forget::Forget;

use super::msg::{Msg, ReplyTo};
use super::request::Reply;
use super::shard::Shard;
use super::shared::SpaceState;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Core 0's drain job, while the cores copy.
pub(super) struct DrainJob {
    pub target: u32,
    /// Cores still copying, then (in the commit) still forgetting.
    pending: u32,
    error: Option<Error>,
    /// Requests answered when the drain commits or fails (baseline
    /// compactions asked for by a client).
    waiters: Vec<(u32, ReplyTo)>,
    /// Log cursor positions below this held entries that drained.
    drained_below: u64,
    /// When the copy and the commit started (wall time, for the log).
    started: Instant,
    committing: Option<Instant>,
}

impl DrainJob {
    fn new(target: u32, cores: u32, waiter: Option<(u32, ReplyTo)>) -> DrainJob {
        DrainJob {
            target,
            pending: cores,
            error: None,
            waiters: waiter.into_iter().collect(),
            drained_below: 0,
            started: Instant::now(),
            committing: None,
        }
    }

    /// A core finished its copy: once every core has, the copy's result
    /// (the first failure).
    fn copied(&mut self, status: Result<()>) -> Option<Result<()>> {
        self.pending -= 1;
        if let Err(e) = status {
            self.error.get_or_insert(e);
        }
        (self.pending == 0).then(|| self.error.take().map_or(Ok(()), Err))
    }

    /// The commit starts: every core is to forget.
    fn commit(&mut self, cores: u32) {
        self.pending = cores;
        self.committing = Some(Instant::now());
    }

    /// A core forgot the drained partitions; whether every core has.
    fn forgot(&mut self, drained_below: u64) -> bool {
        self.pending -= 1;
        self.drained_below = self.drained_below.max(drained_below);
        self.pending == 0
    }

    /// How long the copy and the commit took, for the log.
    fn times(&self) -> (Duration, Duration) {
        let copy = self.committing.map_or(self.started.elapsed(), |c| c - self.started);
        (copy, self.committing.map(|c| c.elapsed()).unwrap_or_default())
    }
}

/// Core 0: the drain's control operations.
impl Shard {
    /// After a drain's cut (or at once without one): record it as started.
    pub(super) fn drain_intent(&mut self, target: u32) {
        log::debug!("draining partitions up to {target} into the baseline");
        self.ctl_mut().start_draining(target);
        self.write_checkpoint(false);
    }

    /// The intent is durable: the cores copy, and the control operation
    /// ends (its requester hears back at the commit).
    pub(super) fn drain_started(&mut self, target: u32, waiter: Option<(u32, ReplyTo)>) {
        let cores = self.shared.cores;
        self.ctl_mut().drain = Some(DrainJob::new(target, cores, waiter));
        for core in 0..cores {
            self.send(core, Msg::DrainCopy { target });
        }
    }

    pub(super) fn on_drain_copied(&mut self, status: Result<()>) {
        let job = self.ctl_mut().drain.as_mut().expect("a drain runs");
        let Some(copied) = job.copied(status) else { return };
        if let Err(e) = copied {
            if e != Error::ShuttingDown {
                self.drain_failed(&e);
            }
            // The partitions stay; the next drain (or mount) copies again.
            return self.drain_end(Err(e));
        }
        self.queue_drain_commit();
    }

    /// A drain failed: the next one starts at once, up to a few in a row;
    /// then writes that wait for room fail (the device fails), and drains
    /// wait for the clock to move on before trying again.
    fn drain_failed(&mut self, e: &Error) {
        const TRIES: u32 = 3;
        let now = self.shared.clock.now_unix_s();
        let c = self.ctl_mut();
        c.drain_failures += 1;
        log::warn!("drain into the baseline failed ({e}), {} time(s) in a row", c.drain_failures);
        if c.drain_failures >= TRIES {
            log::error!("the log cannot drain ({e}): writes needing room fail until a drain succeeds");
            c.drain_failed_at = Some(now);
            if self.shared.space_state() == SpaceState::Wanted {
                self.shared.set_space_state(SpaceState::Failed);
            }
        }
    }

    /// The commit's first step: every core forgets the drained partitions.
    pub(super) fn drain_commit_start(&mut self) {
        let cores = self.shared.cores;
        let job = self.ctl_mut().drain.as_mut().expect("a drain runs");
        job.commit(cores);
        let target = job.target;
        for core in 0..cores {
            self.send(core, Msg::DrainForget { target });
        }
    }

    pub(super) fn on_drain_forgot(&mut self, drained_below: u64) {
        let job = self.ctl_mut().drain.as_mut().expect("a drain runs");
        if job.forgot(drained_below) {
            // Its flush makes the baseline writes durable.
            self.start_control_barrier(None, false, false);
        }
    }

    /// After the commit's barrier: the checkpoint that moves the baseline
    /// partition and drops the segments holding only drained entries.
    pub(super) fn drain_commit_after_barrier(&mut self) {
        let c = self.ctl_mut();
        let job = c.drain.as_ref().expect("a drain runs");
        let (target, below) = (job.target, job.drained_below);
        c.commit_drain(target, below);
        self.write_checkpoint(false);
    }

    /// The commit is durable: free the drained segments.
    pub(super) fn drain_committed(&mut self) {
        let freed = self.ctl_mut().take_drained_segments();
        for &segno in &freed {
            self.shared.space[segno as usize].reset();
            self.shared.free.release(segno);
        }
        let counters = &self.shared.counters;
        counters.segments_freed.fetch_add(freed.len() as u64, Relaxed);
        counters.drains.fetch_add(1, Relaxed);
        self.ctl_mut().drain_failures = 0;
        let job = self.ctl_mut().drain.as_ref().expect("a drain runs");
        let (copy, commit) = job.times();
        log::debug!(
            "drained partitions up to {} into the baseline: {} segment(s) freed; copy {copy:.1?}, commit {commit:.1?}",
            job.target,
            freed.len(),
        );
        if self.shared.free.len() > self.shared.reserve() || self.shared.space_state() == SpaceState::Failed {
            self.shared.set_space_state(SpaceState::Ok);
        }
        self.drain_end(Ok(Reply::Done));
        self.finish_control(Ok(Reply::Done));
    }

    /// Ends the drain job, answering whoever waits for it.
    pub(super) fn drain_end(&mut self, result: Result<Reply>) {
        let job = self.ctl_mut().drain.take().expect("a drain runs");
        for (origin, reply) in job.waiters {
            self.reply(origin, reply, result.clone());
        }
    }
}
