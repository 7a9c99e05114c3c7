//! Core 0's checkpoint: what the coordinator keeps (generation, volume
//! table, segment registry, window, drain state, policy), together with
//! the baseline's stripe map, written to the older of the two checkpoint
//! slots. Apart from the operation queue: operations only decide when a
//! checkpoint is written, this is what it holds and where it goes.

use super::Stage;
use crate::device::{DevOp, DevRequest};
use crate::engine::shard::{Shard, TAG_CONTROL};
use crate::format::Checkpoint;

impl Shard {
    pub(in crate::engine) fn write_checkpoint(&mut self, clean: bool) {
        let (uuid, epoch, bs) = (self.shared.uuid, self.shared.epoch, self.shared.geo.block_size as usize);
        let geo = self.shared.geo;
        let baseline_stripes = self.shared.baseline.to_bytes();
        let c = self.ctl.as_mut().expect("control runs on core 0");
        let added = self.shared.free.take_for_window(c.window_pending.len());
        // Window segments the registry knows are listed as such; the others
        // (still free, or opened since the barrier) are the window. A
        // segment freed before a checkpoint saw it in use is still listed
        // when it comes back from the pool: it is listed once.
        for &segno in &added {
            if !c.window.contains(&segno) {
                c.window.push(segno);
            }
        }
        c.window_pending.extend(added);
        let registry = &c.registry;
        c.window.retain(|s| !registry.contains_key(s));
        let ckpt = Checkpoint {
            generation: c.generation + 1,
            uuid,
            seq_high: c.seq_high,
            epoch,
            next_partition: c.open_partition,
            next_snapshot_number: c.next_snapshot_number,
            clean,
            baseline_partition: c.baseline_partition,
            draining: c.draining,
            drained_below: c.drained_below,
            window: Some(c.window.clone()),
            replay_window_kib: self.shared.replay_window_kib,
            policy: c.policy.json.clone(),
            baseline_stripes,
            volumes: c.volumes.clone(),
            segments: c.registry.values().map(|s| s.record).collect(),
        };
        let len = ckpt.encoded_len();
        ckpt.encode(&mut c.ckpt_buf);
        let block = geo.ckpt_slot_start((ckpt.generation % 2) as u32);
        let buf = c.ckpt_buf.as_mut_ptr();
        c.current.as_mut().expect("running").stage = Stage::CheckpointWrite;
        let nblocks = len.div_ceil(bs) as u32;
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag: TAG_CONTROL });
    }
}
