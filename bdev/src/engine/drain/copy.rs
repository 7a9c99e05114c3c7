//! One core's copy of a drain (`DrainCopy`): the walk over the drained
//! partitions' tables, and the writes of their versions as of the target
//! into the baseline, in slices (see the drain's module comment, step 2).

use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf, IoBuf};
use crate::engine::addr::{LogAddr, ZERO};
use crate::engine::baseline::stripe_len;
use crate::engine::moves::MOVE_RUN_BLOCKS;
use crate::engine::msg::Msg;
use crate::engine::partition::BlockHasher;
use crate::engine::shard::Shard;
use crate::engine::shared::SpaceState;
use crate::engine::space::Counters;
use crate::engine::tag::TAG_DRAIN;
use crate::error::Error;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;

/// Blocks a core copies into the baseline per poll, and when writes wait
/// for the room the drain makes (then the drain is what they wait for).
const COPY_BLOCKS_PER_POLL: u32 = 16;
const URGENT_COPY_BLOCKS_PER_POLL: u32 = 128;
/// Blocks taken from the walk at once, sorted so that neighbours coalesce.
const WALK_BATCH: usize = 64;
/// Stripes rewritten whole at once (a buffer of a stripe each).
const REWRITES: usize = 4;
/// What a stripe rewrite counts against a poll's copy budget.
const REWRITE_COST: u32 = 32;

// Tag values of a drain's device requests.
const STRIPE_READ: u64 = 1 << 32;
const STRIPE_WRITE: u64 = 2 << 32;
const RUN_READ: u64 = 3 << 32;
const RUN_WRITE: u64 = 4 << 32;
/// A write with no buffer of the pool: zeros, or a device copy.
const DIRECT_WRITE: u64 = 5 << 32;
const TAG_STEP: u64 = 0xff << 32;

/// A stripe of the baseline that held no data, being written whole: its
/// blocks' versions read into its buffer, then the buffer written.
struct StripeRewrite {
    stripe: u64,
    buf: DmaBuf,
    /// Reads outstanding; the write once they are done.
    reads: u32,
    writing: bool,
}

/// One core's copy of a drain: the walk over the drained partitions'
/// tables, and the writes into the baseline.
pub(in crate::engine) struct DrainCopy {
    target: u32,
    /// The sealed partitions drained, ascending, and the walk's place.
    tables: Vec<u32>,
    table: usize,
    at: (usize, usize),
    /// Blocks taken from the walk, sorted by LBA: (block, version).
    batch: VecDeque<(u32, LogAddr)>,
    /// Stripes written whole in this drain, or being written.
    whole: HashSet<u64, BuildHasherDefault<BlockHasher>>,
    rewrites: [Option<StripeRewrite>; REWRITES],
    /// Buffers of finished rewrites, for the next ones.
    stripe_bufs: Vec<DmaBuf>,
    zeros: DmaBuf,
    /// Per mover buffer: the baseline block and length of the run it holds.
    runs: Vec<(u64, u32)>,
    inflight: u32,
    error: Option<Error>,
}

impl Shard {
    /// Starts copying the versions as of `target` of the blocks this core
    /// owns that partitions up to it hold; answers `DrainCopied`.
    pub(in crate::engine) fn start_drain_copy(&mut self, target: u32) {
        let drained = self.drained;
        let tables = self.parts.sealed().iter().map(|(p, _)| *p).filter(|&p| p > drained && p <= target).collect();
        let bs = self.shared.geo.block_size as usize;
        self.drain_copy = Some(DrainCopy {
            target,
            tables,
            table: 0,
            at: (0, 0),
            batch: VecDeque::with_capacity(WALK_BATCH),
            whole: HashSet::default(),
            rewrites: Default::default(),
            stripe_bufs: Vec::new(),
            zeros: DmaBuf::new(bs * MOVE_RUN_BLOCKS as usize, bs),
            runs: vec![(0, 0); self.compact_bufs.count()],
            inflight: 0,
            error: None,
        });
    }

    /// Moves the copy on: block runs and whole-stripe rewrites up to the
    /// poll's budget.
    pub(in crate::engine) fn advance_drain_copy(&mut self) -> usize {
        let Some(d) = &self.drain_copy else { return 0 };
        // A failure or a close stops the walk; the drain ends once nothing
        // is in flight, and a later one (or mount) starts it over.
        if d.error.is_some() || self.shutting_down {
            return if d.inflight == 0 { self.drain_copy_end(true) } else { 0 };
        }
        // The copy outpaces the writes: each block clients appended since
        // the last slice owes three blocks of copy, done even with client
        // work waiting (else the log fills and writes stall until the
        // commit); beyond that the copy takes a small share. A drain starts
        // with the log three quarters full, and must end before the rest
        // fills.
        let urgent = self.shared.space_state() == SpaceState::Wanted;
        let owed = self.drain_credit.saturating_mul(3).min(URGENT_COPY_BLOCKS_PER_POLL);
        self.drain_credit = 0;
        let budget = if urgent { URGENT_COPY_BLOCKS_PER_POLL } else { COPY_BLOCKS_PER_POLL + owed };
        let mut spent = 0;
        while spent < budget && !(spent >= owed.max(1) && !urgent && self.work_waiting()) {
            if !self.refill_drain_batch() {
                let d = self.drain_copy.as_ref().expect("copying");
                if d.inflight == 0 {
                    return self.drain_copy_end(false);
                }
                break;
            }
            let stripe_blocks = u64::from(self.shared.geo.stripe_blocks);
            let d = self.drain_copy.as_mut().expect("copying");
            let (lba, _) = *d.batch.front().expect("refilled");
            let stripe = u64::from(lba) / stripe_blocks;
            if !self.shared.baseline.has(stripe) {
                // The rewrite of the stripe covers every block of it.
                if d.whole.contains(&stripe) {
                    d.batch.pop_front();
                    continue;
                }
                let Some(slot) = d.rewrites.iter().position(|r| r.is_none()) else { break };
                self.start_stripe_rewrite(slot, stripe);
                spent += REWRITE_COST;
                continue;
            }
            match self.issue_drain_run() {
                Some(n) => spent += n,
                None => break,
            }
        }
        usize::from(spent > 0)
    }

    /// Takes the next batch from the walk when the last one is used up;
    /// `false` once the walk is over and the batch empty.
    fn refill_drain_batch(&mut self) -> bool {
        let d = self.drain_copy.as_ref().expect("copying");
        if !d.batch.is_empty() {
            return true;
        }
        let mut out = [(0u32, 0 as LogAddr); WALK_BATCH];
        // The batch's allocation is reused: taken out while the walk reads
        // the tables.
        let (mut table, mut at) = (d.table, d.at);
        let mut batch = std::mem::take(&mut self.drain_copy.as_mut().expect("copying").batch);
        let d = self.drain_copy.as_ref().expect("copying");
        while batch.is_empty() {
            let Some(&t) = d.tables.get(table) else { break };
            let (n, next) = self.sealed_table(t).read_from(at, &mut out);
            // A newer version up to the target is what drains.
            batch.extend(
                out[..n].iter().copied().filter(|&(lba, _)| self.parts.next_holder(lba, t, d.target).is_none()),
            );
            if n < WALK_BATCH {
                (table, at) = (table + 1, (0, 0));
            } else {
                at = next;
            }
        }
        batch.make_contiguous().sort_unstable_by_key(|&(lba, _)| lba);
        let d = self.drain_copy.as_mut().expect("copying");
        (d.table, d.at, d.batch) = (table, at, batch);
        !d.batch.is_empty()
    }

    /// Issues the run of blocks at the front of the batch (consecutive
    /// blocks whose versions are consecutive, or zeros), within one stripe
    /// of the baseline that holds data; returns its blocks, or `None` when
    /// no mover buffer is free.
    fn issue_drain_run(&mut self) -> Option<u32> {
        let geo = self.shared.geo;
        let copy = self.shared.copy_offload;
        let d = self.drain_copy.as_mut().expect("copying");
        let (lba, addr) = *d.batch.front().expect("refilled");
        let stripe = u64::from(lba) / u64::from(geo.stripe_blocks);
        let mut n = 1;
        while n < MOVE_RUN_BLOCKS {
            let Some(&(l, a)) = d.batch.get(n as usize) else { break };
            let follows = l == lba + n && (if addr == ZERO { a == ZERO } else { a == addr + n && a != ZERO });
            if !follows || u64::from(l) / u64::from(geo.stripe_blocks) != stripe {
                break;
            }
            n += 1;
        }
        let block = geo.baseline_start + u64::from(lba);
        let req = if addr == ZERO || copy {
            let (op, buf) = match addr {
                ZERO => (DevOp::Write, d.zeros.io_buf()),
                _ => (DevOp::Copy { src: geo.log_start + u64::from(addr) }, IoBuf::EMPTY),
            };
            DevRequest { op, block, nblocks: n, buf, tag: TAG_DRAIN | DIRECT_WRITE }
        } else {
            let b = self.compact_bufs.take()?;
            let d = self.drain_copy.as_mut().expect("copying");
            d.runs[b as usize] = (block, n);
            let buf = self.compact_bufs.io_buf(b);
            let src = geo.log_start + u64::from(addr);
            DevRequest { op: DevOp::Read, block: src, nblocks: n, buf, tag: TAG_DRAIN | RUN_READ | u64::from(b) }
        };
        let d = self.drain_copy.as_mut().expect("copying");
        d.batch.drain(..n as usize);
        d.inflight += 1;
        if req.op != DevOp::Read {
            Counters::add(&self.shared.counters.device_blocks, u64::from(n));
        }
        self.dev_submit(req);
        Some(n)
    }

    /// Rewrites `stripe`, which held no data, whole (in rewrite slot
    /// `slot`): zeros overlaid with the version as of the target of each
    /// block that has one.
    fn start_stripe_rewrite(&mut self, slot: usize, stripe: u64) {
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let first = stripe * u64::from(geo.stripe_blocks);
        let len = stripe_len(&geo, stripe);
        let d = self.drain_copy.as_mut().expect("copying");
        let target = d.target;
        d.whole.insert(stripe);
        let mut buf = d.stripe_bufs.pop().unwrap_or_else(|| DmaBuf::new(bs * geo.stripe_blocks as usize, bs));
        buf[..len as usize * bs].fill(0);
        let mut runs: Vec<(u32, u64, u32)> = Vec::new(); // (offset, device block, blocks)
        for off in 0..len {
            match self.parts.lookup_as_of((first + u64::from(off)) as u32, target) {
                None | Some(ZERO) => {}
                Some(addr) => {
                    let block = geo.log_start + u64::from(addr);
                    match runs.last_mut() {
                        Some((o, b, n)) if *o + *n == off && *b + u64::from(*n) == block => *n += 1,
                        _ => runs.push((off, block, 1)),
                    }
                }
            }
        }
        let base = buf.io_buf();
        let d = self.drain_copy.as_mut().expect("copying");
        d.rewrites[slot] = Some(StripeRewrite { stripe, buf, reads: runs.len() as u32, writing: false });
        d.inflight += runs.len() as u32;
        let tag = TAG_DRAIN | STRIPE_READ | slot as u64;
        for (off, block, nblocks) in runs {
            // The stripe buffer stays in its rewrite slot until the
            // rewrite's write completed.
            let at = base.blocks(off, nblocks, bs);
            self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks, buf: at, tag });
        }
        if self.drain_copy.as_ref().expect("copying").rewrites[slot].as_ref().is_some_and(|r| r.reads == 0) {
            self.write_rewritten_stripe(slot);
        }
    }

    /// Writes a rewritten stripe, once its blocks are read.
    fn write_rewritten_stripe(&mut self, slot: usize) {
        let geo = self.shared.geo;
        let d = self.drain_copy.as_mut().expect("copying");
        let r = d.rewrites[slot].as_mut().expect("a rewrite in the slot");
        r.writing = true;
        let nblocks = stripe_len(&geo, r.stripe);
        let block = geo.baseline_start + r.stripe * u64::from(geo.stripe_blocks);
        let buf = r.buf.io_buf();
        d.inflight += 1;
        Counters::add(&self.shared.counters.device_blocks, u64::from(nblocks));
        let tag = TAG_DRAIN | STRIPE_WRITE | slot as u64;
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag });
    }

    /// With nothing in flight: ends the copy (the walk is over, or it
    /// stops), and answers core 0.
    fn drain_copy_end(&mut self, stopping: bool) -> usize {
        let d = self.drain_copy.take().expect("copying");
        let status = match d.error {
            Some(e) => Err(e),
            None if stopping => Err(Error::ShuttingDown),
            None => Ok(()),
        };
        self.send(0, Msg::DrainCopied { status });
        1
    }

    pub(in crate::engine) fn drain_io_done(&mut self, value: u64, status: DevStatus) {
        let d = self.drain_copy.as_mut().expect("drain I/O belongs to a drain");
        d.inflight -= 1;
        if let Err(e) = status {
            d.error.get_or_insert(Error::Io(e));
        }
        match value & TAG_STEP {
            STRIPE_READ => {
                let slot = (value & 0xffff) as usize;
                let r = d.rewrites[slot].as_mut().expect("a rewrite reads");
                r.reads -= 1;
                // After a failed read the stripe stays as it was.
                if r.reads == 0 && d.error.is_none() {
                    self.write_rewritten_stripe(slot);
                }
            }
            STRIPE_WRITE => {
                let r = d.rewrites[(value & 0xffff) as usize].take().expect("a rewrite writes");
                // Written: reads of its other blocks may go to the
                // baseline now.
                if d.error.is_none() {
                    self.shared.baseline.set(r.stripe);
                }
                d.stripe_bufs.push(r.buf);
            }
            DIRECT_WRITE => {}
            RUN_READ => {
                let b = (value & 0xffff) as u16;
                if d.error.is_some() {
                    self.compact_bufs.release(b);
                    return;
                }
                let (block, nblocks) = d.runs[b as usize];
                d.inflight += 1;
                let buf = self.compact_bufs.io_buf(b);
                Counters::add(&self.shared.counters.device_blocks, u64::from(nblocks));
                let tag = TAG_DRAIN | RUN_WRITE | u64::from(b);
                self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag });
            }
            RUN_WRITE => {
                self.compact_bufs.release((value & 0xffff) as u16);
            }
            _ => unreachable!("drain tag {value:#x}"),
        }
    }
}
