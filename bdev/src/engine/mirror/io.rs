//! A core's side of the primaries: a channel to each, client writes
//! mirrored to them, current reads served by them, their completions.

use super::primary_align;
use super::sync::SyncWalks;
use crate::device::{DevChannel, DevOp, DevRequest, DevStatus, DmaBuf, IoBuf};
use crate::engine::msg::{Msg, Piece, PieceOp};
use crate::engine::request::View;
use crate::engine::retire::Purpose;
use crate::engine::shard::Shard;
use crate::engine::tag::{TAG_FLUSH, TAG_KIND, TAG_PRIMARY_READ, TAG_PRIMARY_SYNC, TAG_PRIMARY_WRITE};
use crate::error::Error;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

/// Reads a core may have in flight on the primaries.
const PRIMARY_READS: usize = 1024;

/// Current reads are spread over the primaries by address, in chunks of
/// this many bytes: each primary serves its share of the volume (half of
/// it with two), so a block is read from the same device each time and
/// the devices' caches hold disjoint data.
const READ_CHUNK_SHIFT: u32 = 18;

struct Channel {
    generation: u64,
    chan: Box<dyn DevChannel>,
    retry: VecDeque<DevRequest>,
    /// Blocks written through it since the last flush was issued, and
    /// those the flush in flight covers: lost with the device's cache if
    /// it fails before they are flushed.
    unflushed: Vec<(u64, u32)>,
    flushing: Vec<(u64, u32)>,
}

impl Channel {
    fn new(generation: u64, chan: Box<dyn DevChannel>) -> Channel {
        Channel { generation, chan, retry: VecDeque::new(), unflushed: Vec::new(), flushing: Vec::new() }
    }
}

/// A core's channels to the primaries and the I/O it has on them.
pub(in crate::engine) struct Mirror {
    chans: Vec<Option<Channel>>,
    /// Channels replaced (the device was reopened) with requests still in
    /// flight: polled until they have none.
    old: Vec<(usize, Channel)>,
    /// Zeros for mirroring zero entries: a stripe's worth, the most a
    /// piece holds.
    zeros: DmaBuf,
    reads: Vec<Option<Piece>>,
    free_reads: Vec<u32>,
    pub(in crate::engine) sync: SyncWalks,
    done: Vec<(usize, u64, DevStatus)>,
}

impl Mirror {
    pub(in crate::engine) fn new(primaries: usize, stripe_bytes: usize, bs: usize) -> Mirror {
        let mut reads = Vec::new();
        reads.resize_with(if primaries == 0 { 0 } else { PRIMARY_READS }, || None);
        Mirror {
            chans: (0..primaries).map(|_| None).collect(),
            old: Vec::new(),
            zeros: DmaBuf::new(if primaries == 0 { bs } else { stripe_bytes }, primary_align(bs)),
            free_reads: (0..reads.len() as u32).rev().collect(),
            reads,
            sync: SyncWalks::new(primaries, bs),
            done: Vec::new(),
        }
    }

    /// Requests in flight on the primaries, or waiting to be resubmitted.
    pub(in crate::engine) fn outstanding(&self) -> usize {
        let busy = |c: &Channel| c.chan.outstanding() + c.retry.len();
        self.chans.iter().flatten().map(busy).sum::<usize>() + self.old.iter().map(|(_, c)| busy(c)).sum::<usize>()
    }
}

impl Shard {
    fn primary_count(&self) -> usize {
        self.shared.primaries.len()
    }

    /// Primary `p`'s channel on this core, opened (again, after the device
    /// changed) on first use; `false` when it cannot be.
    pub(in crate::engine) fn primary_channel(&mut self, p: usize) -> bool {
        let primary = &self.shared.primaries[p];
        let generation = primary.generation.load(Relaxed);
        if self.mirror.chans[p].as_ref().is_some_and(|c| c.generation == generation) {
            return true;
        }
        let opened = primary.device().map(|d| d.channel());
        match opened {
            Some(Ok(mut chan)) => {
                chan.prepare();
                if let Some(old) = self.mirror.chans[p].replace(Channel::new(generation, chan)) {
                    self.mirror.old.push((p, old));
                }
                true
            }
            Some(Err(e)) => {
                self.primary_failed(p, &format!("no channel: {e}"));
                false
            }
            None => false,
        }
    }

    pub(super) fn primary_submit(&mut self, p: usize, req: DevRequest) {
        let c = self.mirror.chans[p].as_mut().expect("an open channel");
        // Client buffers live until their request completes, which waits
        // for this write; sync buffers stay in their slot until then.
        if !c.retry.is_empty() || c.chan.submit(req).is_err() {
            c.retry.push_back(req);
        }
    }

    /// Marks primary `p` degraded and has core 0 record it.
    pub(in crate::engine) fn primary_failed(&mut self, p: usize, why: &str) {
        if self.shared.primaries[p].degrade(why) {
            self.send(0, Msg::PrimaryFailed { primary: p });
        }
    }

    /// Primary `p` failed: what this core wrote to it since its last
    /// completed flush is dirty. A channel to a device it no longer has
    /// (released, or replaced) is polled until its requests completed,
    /// then dropped.
    pub(in crate::engine) fn unflushed_to_dirty(&mut self, p: usize) {
        let primary = &self.shared.primaries[p];
        let chans =
            self.mirror.chans[p].iter_mut().chain(self.mirror.old.iter_mut().filter(|(q, _)| *q == p).map(|(_, c)| c));
        for c in chans {
            for (lba, blocks) in c.unflushed.drain(..).chain(c.flushing.drain(..)) {
                primary.dirty.mark(lba, u64::from(blocks));
            }
        }
        if self.mirror.chans[p].as_ref().is_some_and(|c| c.generation != primary.generation.load(Relaxed)) {
            let stale = self.mirror.chans[p].take().expect("checked");
            self.mirror.old.push((p, stale));
        }
    }

    /// A write of `lba..lba + blocks` to primary `p` completed.
    pub(super) fn primary_wrote(&mut self, p: usize, lba: u64, blocks: u32) {
        if let Some(c) = self.mirror.chans[p].as_mut() {
            c.unflushed.push((lba, blocks));
        }
    }

    /// Mirrors the client write just appended as reorder entry `seq` (a
    /// zero entry when `buf` is `None`) to every primary that can take it
    /// now. One that cannot lacks it: the entry notes it, and retirement
    /// marks its blocks dirty there.
    pub(in crate::engine) fn mirror_write(&mut self, seq: u64, buf: Option<IoBuf>) {
        let e = self.rob.back().expect("just appended");
        let (lba, blocks) = (e.lba, e.blocks);
        let mut missed = 0u8;
        let mut pending = 0u8;
        // An earlier write of these blocks still on its way to the
        // primaries, or a sync copy there, could land after this one.
        let overlaps = |l: u64, n: u32| l < lba + u64::from(blocks) && lba < l + u64::from(n);
        let racing = self.rob.iter().rev().skip(1).any(|r| r.mirror_pending > 0 && overlaps(r.lba, r.blocks));
        for p in 0..self.primary_count() {
            let copying = self.mirror.sync.mark_stale(p, lba, u64::from(blocks));
            if !self.shared.primaries[p].in_service() || racing || copying || !self.primary_channel(p) {
                missed |= 1 << p;
                continue;
            }
            let bs = self.shared.geo.block_size as usize;
            let buf = buf.unwrap_or_else(|| self.mirror.zeros.io_buf().blocks(0, blocks, bs));
            self.primary_submit(
                p,
                DevRequest { op: DevOp::Write, block: lba, nblocks: blocks, buf, tag: TAG_PRIMARY_WRITE | seq },
            );
            pending += 1;
        }
        let e = self.rob.back_mut().expect("just appended");
        (e.mirror_missed, e.mirror_pending) = (missed, pending);
    }

    /// A client write retired: the primaries that lack it (all of them if
    /// it failed, as they may hold what the log does not) mark it dirty.
    pub(in crate::engine) fn mirror_retired(&mut self, lba: u64, blocks: u32, missed: u8, failed: bool) {
        for p in 0..self.primary_count() {
            if failed || missed & (1 << p) != 0 {
                self.shared.primaries[p].dirty.mark(lba, u64::from(blocks));
                self.wake_sync(p);
            }
        }
    }

    /// Serves a current read from a primary that holds all its blocks;
    /// `false` when none can.
    pub(in crate::engine) fn read_from_primary(&mut self, piece: &Piece) -> bool {
        let n = self.primary_count();
        if n == 0 || piece.view != View::Current || self.mirror.free_reads.is_empty() {
            return false;
        }
        let bs = u64::from(self.shared.geo.block_size);
        let first = ((piece.lba * bs) >> READ_CHUNK_SHIFT) as usize;
        for i in 0..n {
            let p = (first + i) % n;
            let primary = &self.shared.primaries[p];
            if piece.primaries_tried & (1 << p) != 0
                || !primary.in_service()
                || primary.dirty.any(piece.lba, u64::from(piece.blocks))
                || !self.primary_channel(p)
            {
                continue;
            }
            let ctx = self.mirror.free_reads.pop().expect("checked");
            self.mirror.reads[ctx as usize] = Some(*piece);
            let (block, nblocks, buf) = (piece.lba, piece.blocks, piece.buf);
            self.primary_submit(
                p,
                DevRequest { op: DevOp::Read, block, nblocks, buf, tag: TAG_PRIMARY_READ | u64::from(ctx) },
            );
            return true;
        }
        false
    }

    /// Flushes every primary in service this core has written through, for
    /// a barrier; how many flushes it started.
    pub(in crate::engine) fn flush_primaries(&mut self) -> u32 {
        let mut n = 0;
        for p in 0..self.primary_count() {
            if let Some(c) = self.mirror.chans[p].as_mut().filter(|_| self.shared.primaries[p].in_service()) {
                c.flushing.append(&mut c.unflushed);
                self.primary_submit(
                    p,
                    DevRequest { op: DevOp::Flush, block: 0, nblocks: 0, buf: IoBuf::EMPTY, tag: TAG_FLUSH },
                );
                n += 1;
            }
        }
        n
    }

    /// Polls the primaries' channels and handles what they completed.
    pub(in crate::engine) fn poll_primaries(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.mirror.done);
        let mut work = 0;
        let old = self.mirror.old.iter_mut().map(|(p, c)| (*p, c));
        for (p, c) in self.mirror.chans.iter_mut().enumerate().filter_map(|(p, c)| Some((p, c.as_mut()?))).chain(old) {
            while let Some(req) = c.retry.pop_front() {
                if c.chan.submit(req).is_err() {
                    c.retry.push_front(req);
                    break;
                }
                work += 1;
            }
            work += c.chan.poll(&mut |tag, status| done.push((p, tag, status)));
        }
        for (p, tag, status) in done.drain(..) {
            self.on_primary(p, tag, status);
        }
        self.mirror.done = done;
        self.mirror.old.retain(|(_, c)| c.chan.outstanding() + c.retry.len() > 0);
        work
    }

    fn on_primary(&mut self, p: usize, tag: u64, status: DevStatus) {
        let value = tag & !TAG_KIND;
        let primary = &self.shared.primaries[p];
        match tag & TAG_KIND {
            TAG_PRIMARY_WRITE => {
                let i = (value - self.retire_seq) as usize;
                let e = &mut self.rob[i];
                debug_assert!(matches!(e.purpose, Purpose::Client { .. }));
                e.mirror_pending -= 1;
                let (lba, blocks) = (e.lba, e.blocks);
                match status {
                    Ok(()) => self.primary_wrote(p, lba, blocks),
                    Err(errno) => {
                        e.mirror_missed |= 1 << p;
                        primary.write_errors.fetch_add(1, Relaxed);
                        self.primary_failed(p, &format!("write failed, errno {errno}"));
                    }
                }
            }
            TAG_PRIMARY_READ => {
                let mut piece = self.mirror.reads[value as usize].take().expect("a read in flight");
                self.mirror.free_reads.push(value as u32);
                primary.reads.fetch_add(1, Relaxed);
                match status {
                    Ok(()) => self.finish_piece(piece.origin, piece.slot, Ok(())),
                    Err(errno) => {
                        // Another primary, else the log, serves it.
                        primary.read_errors.fetch_add(1, Relaxed);
                        self.primary_failed(p, &format!("read failed, errno {errno}"));
                        piece.primaries_tried |= 1 << p;
                        self.retry_piece(piece);
                    }
                }
            }
            TAG_PRIMARY_SYNC => self.sync_written(p, value as usize, status.map_err(Error::Io)),
            TAG_FLUSH => {
                match status {
                    Ok(()) => self.mirror.chans[p].iter_mut().for_each(|c| c.flushing.clear()),
                    Err(errno) => {
                        primary.write_errors.fetch_add(1, Relaxed);
                        self.primary_failed(p, &format!("flush failed, errno {errno}"));
                    }
                }
                self.barrier_flushed(false, Ok(()));
            }
            _ => unreachable!("unknown primary tag {tag:#x}"),
        }
    }
}

/// A piece that reads the current image from the log and the baseline,
/// never from a primary (what a sync copies).
pub(super) fn log_read(origin: u32, slot: u32, lba: u64, blocks: u32, buf: IoBuf) -> Piece {
    Piece { origin, slot, op: PieceOp::Read, lba, blocks, buf, view: View::Current, primaries_tried: u8::MAX }
}
