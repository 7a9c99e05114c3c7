//! Core 0's coordinator: queues control operations (flush, snapshot,
//! volume delete, log cursor, close, compaction's jobs, a drain's start and
//! commit) and runs them one at a time across all cores; owns the volume
//! table, the segment registry and the checkpoint. It also starts the
//! background work the log needs by itself (`background.rs`).
//!
//! An operation is a barrier on every core and a checkpoint, or hands over
//! to a job that keeps its own progress (compaction's victims, the log
//! cursor's reads, a drain's forget walk, a diff); the coordinator only sees that
//! the job has the floor (`Stage::Job`) and routes its completions to it.
//!
//! A snapshot: barrier that seals the open partition on every core (each
//! drains, summarizes and flushes) -> checkpoint naming the sealed partition
//! -> device flush -> the volume becomes readable everywhere -> reply.

use super::compact::{CompactJob, ReclaimNotices};
use super::cursor::LogRead;
use super::diff::DiffJob;
use super::drain::DrainJob;
use super::msg::{Msg, ReplyTo};
use super::policy::Policy;
use super::registry::Registry;
use super::request::Reply;
use super::shard::Shard;
use crate::device::DmaBuf;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, VolumeRecord};
use std::collections::{BTreeSet, VecDeque};

mod background;
mod checkpoint;
mod policy;
mod primaries;
mod queue;
mod run;
mod stats;
mod volumes;

pub(super) use queue::Op;
use queue::Queued;

/// Where the running operation is.
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
    /// Waiting for every core to take the new volume table.
    Publish {
        acks: u32,
        result: Reply,
    },
    /// The operation's job has the floor (compaction's victims, the log
    /// cursor's reads, a drain's forget walk, a diff's walks): it keeps its
    /// own progress.
    Job,
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
    registry: Registry,
    volumes: Vec<VolumeRecord>,
    /// What every checkpoint names: the format, this mount, its window size.
    uuid: [u8; 16],
    epoch: u32,
    replay_window_kib: u32,
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
    /// The running diff's answers, if one runs.
    pub(super) diff: Option<DiffJob>,
    /// The drain whose cores copy or forget, if any.
    pub(super) drain: Option<DrainJob>,
    /// Drains that failed in a row, and when the last of too many did
    /// (unix s): the next waits for the clock to move on.
    pub(super) drain_failures: u32,
    pub(super) drain_failed_at: Option<u64>,
    /// Segments the drain being committed frees once its checkpoint is
    /// durable.
    drain_freed: Vec<u32>,
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

/// What mount hands the coordinator besides the checkpoint it loaded.
pub(super) struct FromMount {
    pub registry: Registry,
    /// This mount's epoch, and the highest sequence the log holds.
    pub epoch: u32,
    pub seq_high: u64,
    pub open_partition: u32,
    pub ckpt_buf: DmaBuf,
    pub now: u64,
}

impl Control {
    /// The coordinator of a mount that loaded `ckpt`: the window is empty
    /// until the mount's first checkpoint (the fence) lists one.
    pub(super) fn new(ckpt: &Checkpoint, m: FromMount) -> Control {
        let policy = Policy::parse(&ckpt.policy).unwrap_or_else(|e| {
            log::error!("ignoring the stored policy: {e}");
            Policy::default()
        });
        let last_snapshot_at = ckpt.volumes.iter().map(|v| v.created_unix_s).max().unwrap_or(m.now);
        Control {
            queue: VecDeque::new(),
            current: None,
            registry: m.registry,
            volumes: ckpt.volumes.clone(),
            uuid: ckpt.uuid,
            epoch: m.epoch,
            replay_window_kib: ckpt.replay_window_kib,
            generation: ckpt.generation,
            seq_high: m.seq_high,
            next_snapshot_number: ckpt.next_snapshot_number,
            open_partition: m.open_partition,
            next_barrier: 1,
            ckpt_buf: m.ckpt_buf,
            failed: None,
            compaction: None,
            log: None,
            diff: None,
            drain: None,
            drain_failures: 0,
            drain_failed_at: None,
            drain_freed: Vec::new(),
            baseline_partition: ckpt.baseline_partition,
            // A drain the last mount started and did not commit: the
            // background work finishes it.
            draining: ckpt.draining,
            drained_below: ckpt.drained_below,
            window: Vec::new(),
            window_pending: Vec::new(),
            policy,
            last_snapshot_at,
            policy_checked: (0, 0),
            events_queued: BTreeSet::new(),
            versions_warned: 0,
            reclaim_notices: ReclaimNotices::default(),
            writes_seen: (0, m.now),
        }
    }

    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(super) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub(super) fn volume_records(&self) -> &[VolumeRecord] {
        &self.volumes
    }

    pub(super) fn baseline_partition(&self) -> u32 {
        self.baseline_partition
    }

    pub(super) fn drained_below(&self) -> u64 {
        self.drained_below
    }

    /// Partitions holding log entries that have not drained.
    pub(super) fn partitions_in_log(&self) -> u32 {
        self.registry.partitions_in_log(self.baseline_partition, self.open_partition)
    }

    /// The partition a drain started now would drain up to, and whether it
    /// cuts the open partition first; `None` when there is nothing to
    /// drain (the oldest volume already lives in the baseline).
    pub(super) fn drain_target(&self) -> Option<(u32, bool)> {
        if let Some(t) = self.draining {
            return Some((t, false));
        }
        match self.volumes.iter().map(|v| v.partition).min() {
            Some(oldest) => (oldest > self.baseline_partition).then_some((oldest, false)),
            None => Some((self.open_partition, true)),
        }
    }

    /// Records the drain's intent to reach `target`, for the next checkpoint.
    pub(super) fn start_draining(&mut self, target: u32) {
        self.draining = Some(target);
    }

    /// Records the drain to `target` as done in the tables the next
    /// checkpoint writes: the baseline moves up, and the segments holding
    /// only drained entries leave the registry (free once it is durable).
    pub(super) fn commit_drain(&mut self, target: u32, drained_below: u64) {
        let segments = self.registry.drained_by(target);
        for &segno in &segments {
            self.registry.remove(segno);
        }
        self.baseline_partition = target;
        self.draining = None;
        self.drained_below = self.drained_below.max(drained_below);
        self.drain_freed = segments;
    }

    pub(super) fn take_drained_segments(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.drain_freed)
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
}

impl Shard {
    pub(super) fn ctl_mut(&mut self) -> &mut Control {
        self.ctl.as_mut().expect("control runs on core 0")
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
}
