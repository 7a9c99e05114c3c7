//! Core 0's checkpoint: what the coordinator keeps (generation, volume
//! table, segment registry, window, drain state, policy), together with
//! the baseline's stripe map, written to the older of the two checkpoint
//! slots. Operations only decide when a checkpoint is written; this is what
//! it holds and where it goes. Mount's fence is built here too, so there is
//! one checkpoint builder.

use super::{Control, Op, Shard, Stage};
use crate::device::{DevOp, DevRequest, DevStatus};
use crate::engine::free::FreeSegments;
use crate::engine::msg::ReplyTo;
use crate::engine::request::Reply;
use crate::engine::tag::TAG_CONTROL;
use crate::error::Error;
use crate::format::{Checkpoint, PrimaryRecord};
use std::sync::atomic::Ordering;

impl Control {
    /// The next checkpoint of the coordinator's state. It tops the window
    /// up from the pool: the segments it adds enter the window once it is
    /// durable (`checkpoint_durable`).
    pub(in crate::engine) fn next_checkpoint(
        &mut self,
        free: &FreeSegments,
        clean: bool,
        baseline_stripes: Vec<u8>,
        primaries: Vec<PrimaryRecord>,
    ) -> Checkpoint {
        let added = free.take_for_window(self.window_pending.len());
        // Window segments the registry knows are listed as such; the others
        // (still free, or opened since the barrier) are the window. A
        // segment freed before a checkpoint saw it in use is still listed
        // when it comes back from the pool: it is listed once.
        for &segno in &added {
            if !self.window.contains(&segno) {
                self.window.push(segno);
            }
        }
        self.window_pending.extend(added);
        let registry = &self.registry;
        self.window.retain(|&s| !registry.contains(s));
        Checkpoint {
            generation: self.generation + 1,
            uuid: self.uuid,
            seq_high: self.seq_high,
            epoch: self.epoch,
            next_partition: self.open_partition,
            next_snapshot_number: self.next_snapshot_number,
            clean,
            baseline_partition: self.baseline_partition,
            draining: self.draining,
            drained_below: self.drained_below,
            window: Some(self.window.clone()),
            replay_window_kib: self.replay_window_kib,
            policy: self.policy.json.clone(),
            baseline_stripes,
            volumes: self.volumes.clone(),
            segments: self.registry.records().collect(),
            primaries,
        }
    }

    /// The checkpoint is durable: writes may open the segments it added
    /// to the window.
    pub(in crate::engine) fn checkpoint_durable(&mut self, free: &FreeSegments) {
        self.generation += 1;
        free.open_window(&std::mem::take(&mut self.window_pending));
    }
}

impl Shard {
    pub(in crate::engine) fn write_checkpoint(&mut self, clean: bool) {
        let (geo, bs) = (self.shared.geo, self.shared.geo.block_size as usize);
        let baseline_stripes = self.shared.baseline.to_bytes();
        let primaries = self.shared.primaries.iter().map(|p| p.record(geo.stripe_blocks, geo.stripe_count())).collect();
        let c = self.ctl.as_mut().expect("control runs on core 0");
        let ckpt = c.next_checkpoint(&self.shared.free, clean, baseline_stripes, primaries);
        let len = ckpt.encoded_len();
        ckpt.encode(&mut c.ckpt_buf);
        let block = geo.ckpt_slot_start((ckpt.generation % 2) as u32);
        let buf = c.ckpt_buf.io_buf();
        c.current.as_mut().expect("running").stage = Stage::CheckpointWrite;
        let nblocks = len.div_ceil(bs) as u32;
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag: TAG_CONTROL });
    }

    /// The checkpoint's write and flush completed: the operation goes on,
    /// or (a failure) its change is undone and metadata changes stop.
    pub(super) fn checkpoint_done(&mut self, status: DevStatus) {
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
        let shared = self.shared.clone();
        let c = self.ctl_mut();
        c.checkpoint_durable(&shared.free);
        let cur = c.current.as_mut().expect("running");
        let result = match (&cur.q.op, &cur.volume) {
            (Op::Compact(_), _) => {
                cur.stage = Stage::Job;
                return self.compact_checkpointed();
            }
            (Op::Drain, _) => {
                let cur = c.current.take().expect("running");
                let target = c.draining.expect("the intent names the target");
                let waiter = match cur.q.reply {
                    ReplyTo::Nobody => None,
                    reply => Some((cur.q.origin, reply)),
                };
                return self.drain_started(target, waiter);
            }
            (Op::DrainCommit, _) => return self.drain_committed(),
            (Op::Checkpoint, _) => return self.finish_control(Ok(Reply::Done)),
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
        self.publish(result);
    }
}
