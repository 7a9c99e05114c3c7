//! The coordinator's queue: requests become operations, background work,
//! policy actions and jobs' follow-ups join them, and the next one that may
//! start is taken.

use super::{Control, Shard};
use crate::engine::compact::CompactTarget;
use crate::engine::msg::ReplyTo;
use crate::engine::policy::Policy;
use crate::engine::request::{CompactMode, Reply, Request};
use crate::error::Error;

#[derive(Debug)]
pub(in crate::engine) enum Op {
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

pub(super) struct Queued {
    pub origin: u32,
    pub reply: ReplyTo,
    pub op: Op,
    /// The event whose queued actions end with this one (see
    /// `Control::events_queued`).
    pub event: Option<String>,
}

impl Queued {
    /// An operation core 0 queues for itself: nobody waits for it.
    pub(super) fn background(origin: u32, op: Op) -> Queued {
        Queued { origin, reply: ReplyTo::Nobody, op, event: None }
    }
}

impl Control {
    /// Queues an operation nobody waits for (policy actions, follow-ups).
    pub(super) fn enqueue_background(&mut self, origin: u32, op: Op) {
        self.queue.push_back(Queued::background(origin, op));
    }

    /// Queues an operation nobody waits for, ahead of the others.
    fn enqueue_front(&mut self, origin: u32, op: Op) {
        self.queue.push_front(Queued::background(origin, op));
    }

    /// Whether the actions of event `name` are queued still.
    pub(super) fn event_queued(&self, name: &str) -> bool {
        self.events_queued.contains(name)
    }

    /// The actions of event `name` were just queued: until the last one
    /// starts, the event again is covered by them.
    pub(super) fn note_event_queued(&mut self, name: &str) {
        self.queue.back_mut().expect("the event's actions were queued").event = Some(name.to_owned());
        self.events_queued.insert(name.to_owned());
    }

    pub(super) fn is_busy(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }

    /// Takes the first queued operation that may start now: while a drain's
    /// cores copy, compaction jobs and other drains wait (they would move or
    /// free what the copy reads).
    pub(super) fn next_runnable(&mut self) -> Option<Queued> {
        let draining = self.drain.is_some();
        let i =
            self.queue.iter().position(|q| !(draining && matches!(q.op, Op::Compact(_) | Op::Fold(_) | Op::Drain)))?;
        let q = self.queue.remove(i)?;
        if let Some(event) = &q.event {
            self.events_queued.remove(event);
        }
        Some(q)
    }
}

impl Shard {
    /// A control request from a client (through its origin core): queued
    /// as an operation, or answered at once when it only reads state.
    pub(in crate::engine) fn control_enqueue(&mut self, origin: u32, reply: ReplyTo, req: Request) {
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
            Request::RebuildPrimary { name, device, full } => match self.start_rebuild(&name, device, full) {
                Ok(()) => Op::Checkpoint,
                Err(e) => return self.reply(origin, reply, Err(e)),
            },
            Request::ReleasePrimary { name } => match self.release_primary(&name) {
                Ok(()) => Op::Checkpoint,
                Err(e) => return self.reply(origin, reply, Err(e)),
            },
            Request::Read { .. } | Request::Write { .. } | Request::WriteZeroes { .. } | Request::Unmap { .. } => {
                unreachable!("data requests never reach the coordinator")
            }
        };
        self.ctl_mut().queue.push_back(Queued { origin, reply, op, event: None });
    }

    /// A drain's copy is done: its commit runs next.
    pub(in crate::engine) fn queue_drain_commit(&mut self) {
        let core = self.core;
        self.ctl_mut().enqueue_front(core, Op::DrainCommit);
    }

    /// The log is full of versions and the policy retires the oldest
    /// volume: its delete runs next.
    pub(in crate::engine) fn queue_retire(&mut self, name: String) {
        let core = self.core;
        self.ctl_mut().enqueue_front(core, Op::Delete(name));
    }
}
