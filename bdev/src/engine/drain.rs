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

use super::addr::{LogAddr, ZERO};
use super::control::{Control, Op, Stage};
use super::moves::MOVE_RUN_BLOCKS;
use super::msg::{Msg, ReplyTo};
use super::partition::BlockHasher;
use super::request::Reply;
use super::shard::{Shard, TAG_DRAIN};
use super::shared::SpaceState;
use super::space::pinned_after_overwrite;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// Which stripes of the baseline region hold data.
pub(crate) struct BaselineMap {
    bits: Vec<AtomicU8>,
}

impl BaselineMap {
    /// From a checkpoint's bitmap (shorter means the rest is unset).
    pub fn new(bytes: &[u8], stripes: u64) -> BaselineMap {
        let len = stripes.div_ceil(8) as usize;
        BaselineMap { bits: (0..len).map(|i| AtomicU8::new(bytes.get(i).copied().unwrap_or(0))).collect() }
    }

    pub fn has(&self, stripe: u64) -> bool {
        self.bits[(stripe / 8) as usize].load(Relaxed) & (1 << (stripe % 8)) != 0
    }

    /// Only the stripe's owner sets its bit; core 0 reads the map for a
    /// checkpoint after the owner reported (through a queue) that it is done.
    pub fn set(&self, stripe: u64) {
        self.bits[(stripe / 8) as usize].fetch_or(1 << (stripe % 8), Relaxed);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().map(|b| b.load(Relaxed)).collect()
    }
}

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
/// Table entries a forget slice examines, and slices per poll.
const FORGET_SLICE: usize = 32;
const FORGET_SLICES_PER_POLL: usize = 4;

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
pub(super) struct DrainCopy {
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

/// One core's forget walk (see the module comment): the versions of the
/// drained partitions, table by table.
pub(super) struct Forget {
    target: u32,
    tables: Vec<u32>,
    table: usize,
    at: (usize, usize),
    /// Versions a client write superseded during the walk: they were
    /// accounted then (as drained: never pinned), not by the walk.
    overwritten: HashSet<LogAddr, BuildHasherDefault<BlockHasher>>,
}

impl Forget {
    pub(super) fn overwrote(&mut self, addr: LogAddr) {
        self.overwritten.insert(addr);
    }
}

impl Shard {
    /// Starts copying the versions as of `target` of the blocks this core
    /// owns that partitions up to it hold; answers `DrainCopied`.
    pub(super) fn start_drain_copy(&mut self, target: u32) {
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
            runs: vec![(0, 0); self.compact_bufs.len()],
            inflight: 0,
            error: None,
        });
    }

    /// Moves the copy on: block runs and whole-stripe rewrites up to the
    /// poll's budget.
    pub(super) fn advance_drain_copy(&mut self) -> usize {
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
                ZERO => (DevOp::Write, d.zeros.as_mut_ptr()),
                _ => (DevOp::Copy { src: geo.log_start + u64::from(addr) }, std::ptr::null_mut()),
            };
            DevRequest { op, block, nblocks: n, buf, tag: TAG_DRAIN | DIRECT_WRITE }
        } else {
            let b = self.compact_free.pop()?;
            let d = self.drain_copy.as_mut().expect("copying");
            d.runs[b as usize] = (block, n);
            let buf = self.compact_bufs[b as usize].as_mut_ptr();
            let src = geo.log_start + u64::from(addr);
            DevRequest { op: DevOp::Read, block: src, nblocks: n, buf, tag: TAG_DRAIN | RUN_READ | u64::from(b) }
        };
        let d = self.drain_copy.as_mut().expect("copying");
        d.batch.drain(..n as usize);
        d.inflight += 1;
        if req.op != DevOp::Read {
            super::space::Counters::add(&self.shared.counters.device_blocks, u64::from(n));
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
        let base = buf.as_mut_ptr();
        let d = self.drain_copy.as_mut().expect("copying");
        d.rewrites[slot] = Some(StripeRewrite { stripe, buf, reads: runs.len() as u32, writing: false });
        d.inflight += runs.len() as u32;
        let tag = TAG_DRAIN | STRIPE_READ | slot as u64;
        for (off, block, nblocks) in runs {
            // SAFETY: the run lies within the stripe buffer, which stays in
            // its rewrite slot until the rewrite's write completed.
            let at = unsafe { base.add(off as usize * bs) };
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
        let buf = r.buf.as_mut_ptr();
        d.inflight += 1;
        super::space::Counters::add(&self.shared.counters.device_blocks, u64::from(nblocks));
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

    pub(super) fn drain_io_done(&mut self, value: u64, status: DevStatus) {
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
                    self.compact_free.push(b);
                    return;
                }
                let (block, nblocks) = d.runs[b as usize];
                d.inflight += 1;
                let buf = self.compact_bufs[b as usize].as_mut_ptr();
                super::space::Counters::add(&self.shared.counters.device_blocks, u64::from(nblocks));
                let tag = TAG_DRAIN | RUN_WRITE | u64::from(b);
                self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag });
            }
            RUN_WRITE => self.compact_free.push((value & 0xffff) as u16),
            _ => unreachable!("drain tag {value:#x}"),
        }
    }

    /// Starts forgetting the partitions up to `target`, whose versions the
    /// baseline now holds.
    pub(super) fn start_forget(&mut self, target: u32) {
        let tables = self.parts.sealed().iter().map(|(p, _)| *p).filter(|&p| p <= target).collect();
        self.drained = target;
        self.forget = Some(Forget { target, tables, table: 0, at: (0, 0), overwritten: HashSet::default() });
    }

    /// Advances the forget walk, a slice at a time; answers core 0 once it
    /// is done.
    pub(super) fn advance_forget(&mut self) -> usize {
        if self.forget.is_none() {
            return 0;
        }
        // Writes may wait for the room the commit makes: the walk takes its
        // slices, client work waiting or not (a slice is a few lookups per
        // entry).
        for _ in 0..FORGET_SLICES_PER_POLL {
            if self.forget_slice() {
                let f = self.forget.take().expect("forgetting");
                self.parts.drop_up_to(f.target);
                // Client entries of the drained partitions lie below where
                // the stream was when the target (or a later one) sealed.
                let below = self.sealed_at.range(f.target..).next().map_or(0, |(_, &pos)| pos);
                self.sealed_at.retain(|&p, _| p > f.target);
                self.send(0, Msg::DrainForgot { drained_below: below });
                return 1;
            }
        }
        1
    }

    /// Examines up to `FORGET_SLICE` versions; returns whether the walk is
    /// done.
    fn forget_slice(&mut self) -> bool {
        let f = self.forget.as_ref().expect("forgetting");
        let Some(&t) = f.tables.get(f.table) else { return true };
        let target = f.target;
        let mut out = [(0u32, 0 as LogAddr); FORGET_SLICE];
        let (n, next) = self.sealed_table(t).read_from(f.at, &mut out);
        for &(lba, addr) in &out[..n] {
            // Older versions up to the target are dead already: no volume
            // lies below the target.
            if self.parts.next_holder(lba, t, target).is_some() {
                continue;
            }
            let newer = self.parts.next_holder(lba, target, u32::MAX);
            let in_open = self.parts.open_table().contains(lba);
            let index = self.index.get(u64::from(lba));
            if index == Some(addr) && (addr != ZERO || (newer.is_none() && !in_open)) {
                // Current: reads go to the baseline from now on.
                self.index.unmap(u64::from(lba));
                if addr != ZERO {
                    self.shared.segment_of(addr).current.fetch_sub(1, Relaxed);
                }
                continue;
            }
            let f = self.forget.as_ref().expect("forgetting");
            if addr == ZERO || f.overwritten.contains(&addr) {
                continue;
            }
            let n = newer.unwrap_or(self.open_partition());
            if pinned_after_overwrite(t, n, &self.live_volumes) {
                self.shared.segment_of(addr).pinned.fetch_sub(1, Relaxed);
            }
        }
        let f = self.forget.as_mut().expect("forgetting");
        if n < FORGET_SLICE {
            (f.table, f.at) = (f.table + 1, (0, 0));
        } else {
            f.at = next;
        }
        false
    }
}

/// Blocks of `stripe` (the last stripe may be short).
fn stripe_len(geo: &crate::format::Geometry, stripe: u64) -> u32 {
    let stripe_blocks = u64::from(geo.stripe_blocks);
    (geo.volume_blocks - stripe * stripe_blocks).min(stripe_blocks) as u32
}

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
    started: std::time::Instant,
    committing: Option<std::time::Instant>,
}

/// Core 0: the drain's control operations.
impl Shard {
    /// The partition a drain started now would drain up to, and whether it
    /// cuts the open partition first; `None` when there is nothing to
    /// drain (the oldest volume already lives in the baseline).
    pub(super) fn drain_target(&mut self) -> Option<(u32, bool)> {
        let c = self.ctl_mut();
        if let Some(t) = c.draining() {
            return Some((t, false));
        }
        match c.volume_records().iter().map(|v| v.partition).min() {
            Some(oldest) => (oldest > c.baseline_partition()).then_some((oldest, false)),
            None => Some((c.open_partition(), true)),
        }
    }

    /// Which partition a baseline compaction of `volume` (the oldest one if
    /// `None`) drains up to, and the older volumes to retire first. `None`:
    /// there is no volume, so everything drains (a cut).
    pub(super) fn fold_target(&mut self, volume: Option<&str>) -> Result<(Option<u32>, Vec<String>)> {
        let volumes = self.ctl_mut().volume_records();
        let target = match volume {
            Some(name) => {
                Some(volumes.iter().find(|v| v.name == name).ok_or_else(|| Error::NoSuchVolume(name.into()))?)
            }
            None => volumes.iter().min_by_key(|v| v.partition),
        };
        let Some(p) = target.map(|v| v.partition) else { return Ok((None, Vec::new())) };
        let older = volumes.iter().filter(|v| v.partition < p).map(|v| v.name.clone()).collect();
        Ok((Some(p), older))
    }

    /// After a drain's cut (or at once without one): record it as started.
    pub(super) fn drain_intent(&mut self, target: u32) {
        log::debug!("draining partitions up to {target} into the baseline");
        self.ctl_mut().set_draining(Some(target));
        self.write_checkpoint(false);
    }

    /// The intent is durable: the cores copy, and the control operation
    /// ends (its requester hears back at the commit).
    pub(super) fn drain_started(&mut self, target: u32, waiter: Option<(u32, ReplyTo)>) {
        let cores = self.shared.cores;
        let job = DrainJob {
            target,
            pending: cores,
            error: None,
            waiters: waiter.into_iter().collect(),
            drained_below: 0,
            started: std::time::Instant::now(),
            committing: None,
        };
        self.ctl_mut().drain = Some(job);
        for core in 0..cores {
            self.send(core, Msg::DrainCopy { target });
        }
    }

    pub(super) fn on_drain_copied(&mut self, status: Result<()>) {
        let job = self.ctl_mut().drain.as_mut().expect("a drain runs");
        job.pending -= 1;
        if let Err(e) = status {
            job.error.get_or_insert(e);
        }
        if job.pending > 0 {
            return;
        }
        if let Some(e) = job.error.take() {
            if e != Error::ShuttingDown {
                self.drain_failed(&e);
            }
            // The partitions stay; the next drain (or mount) copies again.
            return self.drain_end(Err(e));
        }
        let core = self.core;
        self.ctl_mut().enqueue_front(core, Op::DrainCommit);
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
        job.pending = cores;
        job.committing = Some(std::time::Instant::now());
        let target = job.target;
        self.ctl_mut().set_stage(Stage::DrainForget);
        for core in 0..cores {
            self.send(core, Msg::DrainForget { target });
        }
    }

    pub(super) fn on_drain_forgot(&mut self, drained_below: u64) {
        let job = self.ctl_mut().drain.as_mut().expect("a drain runs");
        job.pending -= 1;
        job.drained_below = job.drained_below.max(drained_below);
        if job.pending == 0 {
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
        let copied = job.committing.map_or(job.started.elapsed(), |c| c - job.started);
        log::debug!(
            "drained partitions up to {} into the baseline: {} segment(s) freed; copy {copied:.1?}, commit {:.1?}",
            job.target,
            freed.len(),
            job.committing.map(|c| c.elapsed()).unwrap_or_default()
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

impl Control {
    /// Segments the drain to `target` empties: closed, every entry drained.
    fn drained_segments(&self, target: u32) -> Vec<u32> {
        self.registry()
            .values()
            .filter(|s| !s.record.open && s.last_partition <= target)
            .map(|s| s.record.segno)
            .collect()
    }

    /// Records the drain to `target` as done, in the table the next
    /// checkpoint writes.
    fn commit_drain(&mut self, target: u32, drained_below: u64) {
        let segments = self.drained_segments(target);
        for segno in &segments {
            self.registry_mut().remove(segno);
        }
        self.set_baseline_partition(target);
        self.set_draining(None);
        self.raise_drained_below(drained_below);
        self.drain_freed = segments;
    }

    fn take_drained_segments(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.drain_freed)
    }
}
