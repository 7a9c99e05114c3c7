//! The read path of the pieces a core owns: where a block of a view lives
//! (`resolve`: the log, the baseline, or zeros), and the reads in flight
//! (`Reads`, a pool of read contexts). `Reads` plans a piece's device reads,
//! one per run of blocks at consecutive device blocks, and says when a
//! piece is done; the shard submits them and answers the piece.

use super::addr::{LogAddr, ZERO};
use super::index::BlockIndex;
use super::logmap::LogMap;
use super::msg::Piece;
use super::partition::Partitions;
use super::request::View;
use super::tag::TAG_READ;
use crate::device::{DevOp, DevRequest, DevStatus};
use crate::error::{Error, Result};

/// Where `lba` lives in `view`: a log address, `ZERO`, or `None` (the
/// baseline region; zeros where no drain wrote its stripe yet).
pub(super) fn resolve(
    index: &BlockIndex,
    logmap: &LogMap,
    parts: &Partitions,
    lba: u64,
    view: View,
) -> Option<LogAddr> {
    let newest = index.get(lba)?;
    match view {
        View::Current => Some(newest),
        View::Volume(p) => {
            if newest != ZERO && logmap.partition(newest) <= p {
                return Some(newest);
            }
            parts.lookup_as_of(lba as u32, p)
        }
    }
}

struct ReadCtx {
    origin: u32,
    slot: u32,
    outstanding: u32,
    status: Result<()>,
}

/// A piece's answer: its origin core, its slot there, and its status.
pub(super) type PieceDone = (u32, u32, Result<()>);

/// The reads a core has in flight, a context per piece.
pub(super) struct Reads {
    ctxs: Vec<Option<ReadCtx>>,
    free: Vec<u32>,
    /// Device reads planned by the last `start`, for the shard to submit.
    issue: Vec<DevRequest>,
}

impl Reads {
    pub(super) fn new(slots: usize) -> Reads {
        let mut ctxs = Vec::with_capacity(slots);
        ctxs.resize_with(slots, || None);
        Reads { ctxs, free: (0..slots as u32).rev().collect(), issue: Vec::with_capacity(64) }
    }

    pub(super) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Plans the reads of piece `p`, whose block at `lba` is read from the
    /// device block `source(lba)` or is zeros (`None`, filled here). The
    /// reads are left in `issue` (see `take_issue`); returns the piece's
    /// answer when it needs none. A context must be free (`has_free`).
    pub(super) fn start(
        &mut self,
        p: &Piece,
        bs: usize,
        mut source: impl FnMut(u64) -> Option<u64>,
    ) -> Option<PieceDone> {
        let ctx = self.free.pop().expect("a free read context");
        let mut outstanding = 0;
        // Coalesce blocks at consecutive device blocks into one read.
        let mut run: Option<(u32, u64, u32)> = None; // (first block, device block, blocks)
        let mut issue = |(first, block, n): (u32, u64, u32)| {
            outstanding += 1;
            let buf = p.buf.blocks(first, n, bs);
            self.issue.push(DevRequest { op: DevOp::Read, block, nblocks: n, buf, tag: TAG_READ | u64::from(ctx) });
        };
        for i in 0..p.blocks {
            match source(p.lba + u64::from(i)) {
                Some(block) => match run {
                    Some((f, b, n)) if f + n == i && b + u64::from(n) == block => run = Some((f, b, n + 1)),
                    _ => {
                        if let Some(r) = run.take() {
                            issue(r);
                        }
                        run = Some((i, block, 1));
                    }
                },
                None => p.buf.blocks(i, 1, bs).zero(),
            }
        }
        if let Some(r) = run {
            issue(r);
        }
        if outstanding == 0 {
            self.free.push(ctx);
            return Some((p.origin, p.slot, Ok(())));
        }
        self.ctxs[ctx as usize] = Some(ReadCtx { origin: p.origin, slot: p.slot, outstanding, status: Ok(()) });
        None
    }

    /// The reads planned by the last `start`; hand the vector back with
    /// `put_issue` (it keeps its allocation).
    pub(super) fn take_issue(&mut self) -> Vec<DevRequest> {
        std::mem::take(&mut self.issue)
    }

    pub(super) fn put_issue(&mut self, mut issue: Vec<DevRequest>) {
        issue.clear();
        self.issue = issue;
    }

    /// Read `ctx` completed: the piece's answer once it was its last.
    pub(super) fn done(&mut self, ctx: u32, status: DevStatus) -> Option<PieceDone> {
        let r = self.ctxs[ctx as usize].as_mut().expect("live read");
        if let Err(e) = status {
            r.status = Err(Error::Io(e));
        }
        r.outstanding -= 1;
        if r.outstanding > 0 {
            return None;
        }
        let r = self.ctxs[ctx as usize].take().expect("live read");
        self.free.push(ctx);
        Some((r.origin, r.slot, r.status))
    }
}
