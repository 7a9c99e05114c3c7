//! Barriers, a core's part in core 0's control operations (see
//! `Msg::Barrier`): wait until the writes issued before it have retired,
//! make their summaries durable, flush the device and report the segments
//! opened or closed since the last one; on the way, seal the open
//! partition, close every segment or stop taking writes, as asked. One
//! barrier runs at a time, in stages, across polls.

use super::cursor::ENTRY_BITS;
use super::msg::Msg;
use super::registry::SegmentInfo;
use super::shard::Shard;
use super::tag::TAG_FLUSH;
use crate::device::{DevOp, DevRequest, DevStatus, IoBuf};
use crate::error::Error;
use std::sync::atomic::Ordering::Relaxed;

pub(super) struct PendingBarrier {
    id: u64,
    mark: u64,
    seal: Option<u32>,
    close: bool,
    stage: BarrierStage,
    /// Per segment, the entries this barrier makes durable: fixed when the
    /// writes it waited for have retired, so a later retry never rewrites a
    /// group twice before the flush.
    targets: Vec<(u32, u32)>,
    /// Segments as reported, captured when the flush is issued.
    report: Vec<SegmentInfo>,
    /// Flushes in flight: the base device's and the primaries'.
    flushes: u32,
    status: DevStatus,
}

#[derive(PartialEq, Eq)]
enum BarrierStage {
    Draining,
    Summaries { ticket: u64 },
    Flushing,
}

impl Shard {
    pub(super) fn start_barrier(&mut self, id: u64, seal: Option<u32>, close: bool, shutdown: bool) {
        debug_assert!(self.barrier.is_none(), "core 0 runs one barrier at a time");
        if let Some(p) = seal {
            // The open segment goes on with the next partition's entries.
            let position = match self.segs.iter().find(|s| !s.closing) {
                Some(s) => s.seq << ENTRY_BITS | s.entries.len() as u64,
                None => self.shared.next_seq.load(Relaxed) << ENTRY_BITS,
            };
            self.sealed_at.insert(self.open_partition, position);
            self.open_partition = p;
        }
        for i in (0..self.segs.len()).rev() {
            if close {
                self.segs[i].closing = true;
                self.try_close(i);
            }
        }
        self.shutting_down |= shutdown;
        let mark = self.alloc_seq;
        let stage = BarrierStage::Draining;
        self.barrier = Some(PendingBarrier {
            id,
            mark,
            seal,
            close,
            stage,
            targets: Vec::new(),
            report: Vec::new(),
            flushes: 0,
            status: Ok(()),
        });
    }

    pub(super) fn advance_barrier(&mut self) {
        let Some(b) = &self.barrier else { return };
        match b.stage {
            BarrierStage::Draining => {
                // Writes go on meanwhile (but for a shutdown), into the next
                // partition: a segment they open after the barrier began is
                // not one it closes.
                let unclosed = match self.shutting_down {
                    true => !self.segs.is_empty(),
                    false => self.segs.iter().any(|s| s.closing),
                };
                // A clean close records what the primaries lack: no copy to
                // them may end after their flush.
                if self.retire_seq < b.mark
                    || (b.close && unclosed)
                    || (self.shutting_down && self.mirror.sync.copying())
                {
                    return;
                }
                if let Some(p) = b.seal {
                    self.parts.seal_up_to(p);
                }
                let mut targets = std::mem::take(&mut self.barrier.as_mut().expect("checked").targets);
                if targets.is_empty() {
                    targets = self.segs.iter().map(|s| (s.segno, s.retired)).collect();
                }
                let mut covered = true;
                for &(segno, upto) in &targets {
                    if let Some(i) = self.segs.iter().position(|s| s.segno == segno) {
                        self.summarize(i, upto, true);
                        covered &= self.summarized_prefix(i) >= upto;
                    }
                }
                let b = self.barrier.as_mut().expect("checked");
                b.targets = targets;
                if !covered {
                    return; // out of metadata buffers: retry on a later poll
                }
                b.stage = BarrierStage::Summaries { ticket: self.next_ticket - 1 };
                self.advance_barrier();
            }
            BarrierStage::Summaries { ticket } => {
                if self.meta.iter().any(|m| m.busy && m.ticket <= ticket) {
                    return;
                }
                let mut report = std::mem::take(&mut self.changed);
                let targets = std::mem::take(&mut self.barrier.as_mut().expect("checked").targets);
                for i in 0..self.segs.len() {
                    let segno = self.segs[i].segno;
                    let trusted = targets.iter().find(|t| t.0 == segno).map_or(0, |t| t.1);
                    report.push(self.record_of(i, trusted, true));
                }
                let primaries = self.flush_primaries();
                let b = self.barrier.as_mut().expect("checked");
                b.report = report;
                b.stage = BarrierStage::Flushing;
                b.flushes = 1 + primaries;
                let flush = DevRequest { op: DevOp::Flush, block: 0, nblocks: 0, buf: IoBuf::EMPTY, tag: TAG_FLUSH };
                self.dev_submit(flush);
            }
            BarrierStage::Flushing => {}
        }
    }

    /// A flush of the barrier completed: the base device's (its status is
    /// the barrier's) or a primary's (a failure only degrades it).
    pub(super) fn barrier_flushed(&mut self, base: bool, status: DevStatus) {
        let b = self.barrier.as_mut().expect("a flush belongs to a barrier");
        b.flushes -= 1;
        if base {
            b.status = status;
        }
        if b.flushes > 0 {
            return;
        }
        let b = self.barrier.take().expect("checked");
        let status = b.status;
        for s in &mut self.segs {
            for g in &mut s.groups {
                g.unflushed = false;
            }
        }
        for i in (0..self.segs.len()).rev() {
            self.summarize_full_groups(i);
            self.try_close(i);
        }
        let mut status = status.map_err(Error::Io);
        if let Some(e) = &self.failed {
            status = Err(e.clone());
        }
        self.send(0, Msg::BarrierDone { id: b.id, segments: b.report, status });
    }
}
