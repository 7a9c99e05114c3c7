//! One core's share of an ilog bdev: the stripes it owns, its log stream,
//! its block index shard and partition tables, and the I/O in flight.
//!
//! Life of a write: the submitting core splits it at stripe boundaries and
//! sends each piece to the stripe's owner. The owner appends it to its open
//! segment (data blocks up from the header, a summary entry in memory),
//! writes the data, and keeps the entry in its reorder buffer. Entries retire
//! in log order once their data is written: only then does the index point
//! at them, so reads never see a block before it is on the device and the
//! index always agrees with what replay of the log would build. Summaries
//! reach the device when a group of entries is complete and at barriers
//! (flush, snapshot, close), which also flush the device.
//!
//! Cores talk in `Msg`s (`msg.rs`). The parts the shard owns keep their
//! own state: a request's pieces and slot on its origin (`origin.rs`), the
//! reads in flight (`read.rs`), the compaction buffers (`compact_bufs.rs`);
//! the segment writer (`writer.rs`), retirement (`retire.rs`) and barriers
//! (`barrier.rs`) are still `impl Shard` blocks of their own. This file
//! keeps the shard's state, its poll loop, and the dispatch of messages,
//! device completions and client requests.

use super::addr::{LogAddr, ZERO};
use super::barrier::PendingBarrier;
use super::compact_bufs::CompactBufs;
use super::drain::{DrainCopy, Forget};
use super::index::BlockIndex;
use super::logmap::LogMap;
use super::mirror::{Mirror, SYNC_ORIGIN};
use super::moves::{BufRead, VictimMoves, MOVE_RUN_BLOCKS};
use super::msg::{Msg, Outbox, Piece, PieceOp, ReplyTo};
use super::origin::{DataRequest, Slots};
use super::partition::Partitions;
use super::read::{resolve, Reads};
use super::registry::SegmentInfo;
use super::repin::Repin;
use super::request::{Reply, Request, View};
use super::retire::{RobEntry, ROB_DEPTH};
use super::shared::Shared;
use super::tag::{TAG_COMPACT_READ, TAG_CONTROL, TAG_DRAIN, TAG_FLUSH, TAG_KIND, TAG_META, TAG_READ, TAG_WRITE};
use super::writer::{MetaBuf, Segment};
use crate::device::{DevChannel, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Requests in flight that one core submitted, and pieces it is serving.
const SLOTS: usize = 4096;
/// Metadata blocks (segment headers, summaries) in flight per core.
const META_BUFS: usize = 64;
/// Messages or client requests handled per poll before yielding.
const BATCH: usize = 256;

/// Compaction buffers per core, each for one run (`MOVE_RUN_BLOCKS`): 1 MiB
/// of reads in flight per core.
const COMPACT_BUFS: usize = 32;

/// One core of an ilog bdev. Not `Sync`: only its own core touches it.
pub struct Shard {
    pub(super) core: u32,
    pub(super) shared: Arc<Shared>,
    pub(super) dev: Box<dyn DevChannel>,
    pub(super) index: BlockIndex,
    pub(super) parts: Partitions,
    /// The partition of each log block this core may point into.
    pub(super) logmap: LogMap,
    pub(super) open_partition: u32,
    /// Partitions up to this one live in the baseline: their versions are
    /// neither current nor pinned (their entries are dead where they lie).
    pub(super) drained: u32,
    /// Where this core's stream was when each sealed partition was sealed:
    /// the log cursor position its client entries are all below.
    pub(super) sealed_at: BTreeMap<u32, u64>,
    pub(super) live_volumes: Arc<Vec<u32>>,
    /// The pinning walk of a volume change, while it runs (see `repin.rs`).
    pub(super) repin: Option<Repin>,
    slots: Slots,
    reads: Reads,
    pub(super) rob: VecDeque<RobEntry>,
    pub(super) alloc_seq: u64,
    pub(super) retire_seq: u64,
    pub(super) segs: Vec<Segment>,
    /// Segments opened or closed since the last barrier report.
    pub(super) changed: Vec<SegmentInfo>,
    pub(super) meta: Vec<MetaBuf>,
    pub(super) next_ticket: u64,
    dev_retry: VecDeque<DevRequest>,
    deferred: VecDeque<Piece>,
    outbox: Outbox,
    pub(super) barrier: Option<PendingBarrier>,
    /// Set by a failed metadata write: the log can no longer be trusted to
    /// persist writes, so they fail from then on.
    pub(super) failed: Option<Error>,
    pub(super) shutting_down: bool,
    completions: Vec<(u64, Result<Reply>)>,
    dev_done: Vec<(u64, DevStatus)>,
    /// Client requests popped in one go, before any is handled.
    intake: Vec<(u64, Request)>,
    pub(super) ctl: Option<Box<super::control::Control>>,
    /// Victims to move, the first one running.
    pub(super) moving: VecDeque<VictimMoves>,
    /// This core's part of a drain into the baseline: copying, then
    /// forgetting what drained.
    pub(super) drain_copy: Option<DrainCopy>,
    pub(super) forget: Option<Forget>,
    /// This core's walk for a diff, while one runs.
    pub(super) diff: Option<super::diff::DiffWalk>,
    /// Blocks clients appended since the drain's last slice: what it owes
    /// to keep pace.
    pub(super) drain_credit: u32,
    pub(super) compact_bufs: CompactBufs,
    /// The run each compaction buffer holds, and the moves still using it.
    pub(super) compact_pending: Vec<BufRead>,
    /// Channels to the primaries and the I/O on them (see `mirror/`).
    pub(super) mirror: Mirror,
}

pub(super) struct ShardInit {
    pub index: BlockIndex,
    pub parts: Partitions,
    pub logmap: LogMap,
    pub open_partition: u32,
    pub drained: u32,
    /// Where the stream starts: every loaded entry lies below it.
    pub stream_start: u64,
    pub live_volumes: Arc<Vec<u32>>,
}

impl Shard {
    pub(super) fn new(core: u32, shared: Arc<Shared>, dev: Box<dyn DevChannel>, init: ShardInit) -> Shard {
        let bs = shared.geo.block_size as usize;
        Shard {
            core,
            dev,
            index: init.index,
            parts: init.parts,
            logmap: init.logmap,
            open_partition: init.open_partition,
            drained: init.drained,
            // Partitions sealed before the mount: their entries lie below
            // the stream's start.
            sealed_at: BTreeMap::from([(init.open_partition.saturating_sub(1), init.stream_start)]),
            live_volumes: init.live_volumes,
            repin: None,
            slots: Slots::new(SLOTS),
            reads: Reads::new(SLOTS),
            rob: VecDeque::with_capacity(ROB_DEPTH),
            alloc_seq: 0,
            retire_seq: 0,
            segs: Vec::with_capacity(4),
            changed: Vec::new(),
            meta: (0..META_BUFS)
                .map(|_| MetaBuf { buf: DmaBuf::new(bs, bs), busy: false, ticket: 0, segno: 0 })
                .collect(),
            next_ticket: 1,
            dev_retry: VecDeque::with_capacity(1024),
            deferred: VecDeque::with_capacity(1024),
            outbox: Outbox::new(),
            barrier: None,
            failed: None,
            shutting_down: false,
            completions: Vec::with_capacity(BATCH * 2),
            dev_done: Vec::with_capacity(SLOTS),
            intake: Vec::with_capacity(BATCH),
            ctl: None,
            moving: VecDeque::new(),
            drain_copy: None,
            forget: None,
            diff: None,
            drain_credit: 0,
            compact_bufs: CompactBufs::new(COMPACT_BUFS, bs * MOVE_RUN_BLOCKS as usize, bs),
            compact_pending: vec![BufRead::default(); COMPACT_BUFS],
            mirror: Mirror::new(shared.primaries.len(), shared.geo.stripe_blocks as usize * bs, bs),
            shared,
        }
    }

    pub fn core(&self) -> u32 {
        self.core
    }

    /// Readies the shard on the thread that will poll it, before its first
    /// request (see `DevChannel::prepare`).
    pub fn prepare(&mut self) {
        self.dev.prepare();
    }

    /// Does one round of work: device completions, messages from other
    /// cores, client requests, retirement, then a slice of background work
    /// (compaction, a fold, control operations). Completed client requests
    /// go to `sink(token, result)` before the background slice runs: a
    /// request that arrived during one waits for that slice, not for the
    /// next one too. Returns how much work was done (0 = idle).
    pub fn poll(&mut self, sink: &mut dyn FnMut(u64, Result<Reply>)) -> usize {
        let mut work = self.outbox.flush(&self.shared.inbox);
        work += self.resubmit();
        let mut done = std::mem::take(&mut self.completions);
        work += self.poll_device();
        work += self.poll_primaries();
        work += self.retry_deferred();
        // `is_empty` before each pop: it only loads, where a `pop` that
        // finds the queue empty pays a full fence.
        for _ in 0..BATCH {
            if self.shared.inbox[self.core as usize].is_empty() {
                break;
            }
            let Some(msg) = self.shared.inbox[self.core as usize].pop() else { break };
            self.on_message(msg);
            work += 1;
        }
        // Client requests are all popped before any is handled: a pop's
        // compare-and-swap waits for every store before it to drain, a
        // block's copy into the device included, so popping between
        // requests paid that wait once per request (perf/RESULTS.md).
        let mut intake = std::mem::take(&mut self.intake);
        let room = self.slots.free().min(BATCH);
        let clients = &self.shared.clients[self.core as usize];
        while intake.len() < room && !clients.is_empty() {
            let Some(r) = clients.pop() else { break };
            intake.push(r);
        }
        work += intake.len();
        let took = !intake.is_empty();
        for (token, req) in intake.drain(..) {
            self.on_client(token, req);
        }
        self.intake = intake;
        if took {
            // What the device completed already (a malloc device completes
            // at submission) retires before the background work.
            work += self.poll_device();
        }
        work += self.retire();
        // Clients hear back before the background work of this poll runs.
        done.append(&mut self.completions);
        for (token, result) in done.drain(..) {
            sink(token, result);
        }
        work += self.advance_repin();
        work += self.advance_moves();
        work += self.advance_drain_copy();
        work += self.advance_forget();
        work += self.advance_diff();
        work += self.advance_sync();
        self.advance_barrier();
        if self.ctl.is_some() {
            work += self.advance_victim_decode();
            self.control_step();
        }
        done.append(&mut self.completions);
        for (token, result) in done.drain(..) {
            sink(token, result);
        }
        self.completions = done;
        work
    }

    /// Handles the device's completions.
    fn poll_device(&mut self) -> usize {
        let mut dev_done = std::mem::take(&mut self.dev_done);
        let work = self.dev.poll(&mut |tag, status| dev_done.push((tag, status)));
        for (tag, status) in dev_done.drain(..) {
            self.on_device(tag, status);
        }
        self.dev_done = dev_done;
        work
    }

    /// Whether anything is in flight on this core (for runtimes that want
    /// to know when a bdev has gone quiet).
    pub fn is_idle(&self) -> bool {
        self.busy_reasons().all(|(busy, _)| !busy) && self.ctl.as_ref().is_none_or(|c| c.is_idle())
    }

    /// Whether a drain into the baseline is under way on this core (for
    /// tests that cut the power in the middle of one).
    pub fn is_draining(&self) -> bool {
        self.drain_copy.is_some() || self.forget.is_some() || self.ctl.as_ref().is_some_and(|c| c.drain.is_some())
    }

    fn busy_reasons(&self) -> impl Iterator<Item = (bool, &'static str)> {
        let core = self.core as usize;
        [
            (!self.rob.is_empty(), "writes to retire"),
            (self.dev.outstanding() > 0, "device requests"),
            (self.mirror.outstanding() > 0, "primary requests"),
            (self.mirror.sync.copying() || (!self.shutting_down && self.mirror.sync.walking()), "a primary's sync"),
            (!self.dev_retry.is_empty(), "device requests to resubmit"),
            (!self.deferred.is_empty(), "deferred pieces"),
            (!self.outbox.is_empty(), "messages to send"),
            (self.barrier.is_some(), "a barrier"),
            (!self.moving.is_empty(), "a victim's moves"),
            (self.drain_copy.is_some(), "a drain's copy"),
            (self.forget.is_some(), "a drain's forget walk"),
            (self.repin.is_some(), "a volume change's walk"),
            (!self.shared.inbox[core].is_empty(), "inbound messages"),
            (!self.shared.clients[core].is_empty(), "client requests"),
        ]
        .into_iter()
    }

    /// What keeps this core busy, if anything (for diagnostics).
    pub fn busy_with(&self) -> Option<String> {
        let control = self.ctl.as_ref().and_then(|c| c.busy_with());
        let what: Vec<String> =
            self.busy_reasons().filter(|(busy, _)| *busy).map(|(_, what)| what.to_owned()).chain(control).collect();
        (!what.is_empty()).then(|| {
            format!(
                "{} (space {:?}, {} free segments)",
                what.join(", "),
                self.shared.space_state(),
                self.shared.free.len()
            )
        })
    }

    // ---- messaging -------------------------------------------------------

    pub(super) fn send(&mut self, core: u32, msg: Msg) {
        if core == self.core {
            self.on_message(msg);
        } else {
            self.outbox.send(&self.shared.inbox, core, msg);
        }
    }

    /// For the simulator: this core's messages to others wait until
    /// [`Shard::deliver_held`] passes them on.
    pub fn hold_messages(&mut self) {
        self.outbox.hold();
    }

    /// For the simulator: delivers one held message, to the `pick`-th core
    /// this one has messages for; whether one went.
    pub fn deliver_held(&mut self, pick: u64) -> bool {
        self.outbox.deliver_one(&self.shared.inbox, pick)
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Piece(p) => self.on_piece(p),
            Msg::PieceDone { slot, status } => self.piece_done(slot, status),
            Msg::Barrier { id, seal, close, shutdown } => self.start_barrier(id, seal, close, shutdown),
            Msg::BarrierDone { id, segments, status } => self.on_barrier_done(id, segments, status),
            Msg::Volumes(v) => {
                let old = std::mem::replace(&mut self.live_volumes, v);
                let added = self.live_volumes.iter().filter(|p| !old.contains(p)).map(|&p| (p, true));
                let gone = old.iter().filter(|p| !self.live_volumes.contains(p)).map(|&p| (p, false));
                let changes: Vec<(u32, bool)> = added.chain(gone).collect();
                // A control operation changes one volume (each walk takes
                // the others as they are in the new set); a walk left
                // sliced acknowledges when it ends.
                debug_assert!(changes.len() <= 1, "volumes changed at once: {changes:?}");
                let mut done = true;
                for (v, added) in changes {
                    if !done {
                        self.finish_repin_now();
                    }
                    done = self.start_repin(v, added);
                }
                if done {
                    self.send(0, Msg::VolumesAck);
                }
            }
            Msg::VolumesAck => self.on_volumes_ack(),
            Msg::Control { origin, reply, req } => self.control_enqueue(origin, reply, req),
            Msg::ControlDone { reply, result } => self.deliver(reply, result),
            Msg::MoveLive { segno, entries } => {
                let base = segno * self.shared.geo.segment_blocks;
                self.start_moves(VictimMoves::new(segno, entries, base, self.shared.copy_offload));
            }
            Msg::MovesDone { segno, status } => self.on_moves_done(segno, status),
            Msg::DrainCopy { target } => self.start_drain_copy(target),
            Msg::DrainCopied { status } => self.on_drain_copied(status),
            Msg::DrainForget { target } => self.start_forget(target),
            Msg::DrainForgot { drained_below } => self.on_drain_forgot(drained_below),
            Msg::Diff(query) => self.start_diff(query),
            Msg::DiffDone { extents } => self.on_diff_done(extents),
            Msg::PrimaryFailed { primary } => self.primary_failed_everywhere(primary),
            Msg::PrimaryUnflushed { primary } => self.unflushed_to_dirty(primary),
            Msg::PrimarySync { primary } => {
                // On the device the rebuild brought (the one replaced is let
                // go once its requests completed), whether or not this core
                // has blocks to copy.
                self.primary_channel(primary);
                self.wake_sync(primary);
            }
            Msg::PrimarySynced { primary } => self.primary_synced(primary),
        }
    }

    /// Completes a control request on this (its origin) core.
    pub(super) fn deliver(&mut self, reply: ReplyTo, result: Result<Reply>) {
        match reply {
            ReplyTo::Client(token) => self.completions.push((token, result)),
            ReplyTo::Slot(slot) => self.piece_done(slot, result.map(|_| ())),
            ReplyTo::Nobody => {
                if let Err(e) = result {
                    log::warn!("background operation failed: {e}");
                }
            }
        }
    }

    // ---- device ------------------------------------------------------------

    pub(super) fn dev_submit(&mut self, req: DevRequest) {
        if !self.dev_retry.is_empty() {
            self.dev_retry.push_back(req);
            return;
        }
        if self.dev.submit(req).is_err() {
            self.dev_retry.push_back(req);
        }
    }

    fn resubmit(&mut self) -> usize {
        let mut n = 0;
        while let Some(req) = self.dev_retry.pop_front() {
            if self.dev.submit(req).is_err() {
                self.dev_retry.push_front(req);
                break;
            }
            n += 1;
        }
        n
    }

    fn on_device(&mut self, tag: u64, status: DevStatus) {
        let value = tag & !TAG_KIND;
        match tag & TAG_KIND {
            TAG_WRITE => {
                let i = (value - self.retire_seq) as usize;
                let e = &mut self.rob[i];
                e.done = true;
                e.status = status.map_err(Error::Io);
            }
            TAG_READ => self.read_done(value as u32, status),
            TAG_META => self.meta_done(value as usize, status),
            TAG_FLUSH => self.barrier_flushed(true, status),
            TAG_CONTROL => self.control_device_done(value, status),
            TAG_COMPACT_READ => self.move_read_done(value as u16, status),
            TAG_DRAIN => self.drain_io_done(value, status),
            _ => unreachable!("unknown device tag {tag:#x}"),
        }
    }

    // ---- client requests ---------------------------------------------------

    fn on_client(&mut self, token: u64, req: Request) {
        if self.shutting_down {
            self.completions.push((token, Err(Error::ShuttingDown)));
            return;
        }
        let origin = self.core;
        let data = match DataRequest::of(req) {
            Ok(data) => data,
            Err(Request::Flush) => {
                // Answered through a slot: the data path's flushes and
                // writes complete alike.
                let reply = ReplyTo::Slot(self.slots.alloc(token, 1));
                return self.send(0, Msg::Control { origin, reply, req: Request::Flush });
            }
            Err(req) => return self.send(0, Msg::Control { origin, reply: ReplyTo::Client(token), req }),
        };
        let geo = self.shared.geo;
        if let Err(e) = data.check(&geo, &self.live_volumes) {
            self.completions.push((token, Err(e)));
            return;
        }
        let slot = self.slots.alloc(token, data.piece_count(&geo));
        for piece in data.pieces(origin, slot, &geo) {
            let owner = self.shared.owner(piece.lba);
            self.send(owner, Msg::Piece(piece));
        }
    }

    fn piece_done(&mut self, slot: u32, status: Result<()>) {
        if let Some((token, status)) = self.slots.piece_done(slot, status) {
            self.completions.push((token, status.map(|()| Reply::Done)));
        }
    }

    pub(super) fn finish_piece(&mut self, origin: u32, slot: u32, status: Result<()>) {
        if origin == SYNC_ORIGIN {
            return self.sync_read(slot as usize, status);
        }
        self.send(origin, Msg::PieceDone { slot, status });
    }

    // ---- pieces on the owner -------------------------------------------------

    fn on_piece(&mut self, p: Piece) {
        if !self.deferred.is_empty() || !self.try_piece(p) {
            self.deferred.push_back(p);
        }
    }

    /// Serves a piece this core took back (a read a primary failed, a
    /// sync's read): now, or ahead of the pieces waiting.
    pub(super) fn retry_piece(&mut self, p: Piece) {
        if !self.try_piece(p) {
            self.deferred.push_front(p);
        }
    }

    fn retry_deferred(&mut self) -> usize {
        let mut n = 0;
        while let Some(p) = self.deferred.pop_front() {
            if !self.try_piece(p) {
                self.deferred.push_front(p);
                break;
            }
            n += 1;
        }
        n
    }

    /// Serves a piece; `false` when it must wait for resources.
    fn try_piece(&mut self, p: Piece) -> bool {
        match p.op {
            PieceOp::Read => self.read_piece(p),
            PieceOp::Write | PieceOp::Zero => self.append_piece(p),
        }
    }

    fn read_piece(&mut self, p: Piece) -> bool {
        if !self.reads.has_free() {
            return false;
        }
        if let View::Volume(v) = p.view {
            if !self.live_volumes.contains(&v) {
                self.finish_piece(p.origin, p.slot, Err(Error::NoSuchVolume(format!("partition {v}"))));
                return true;
            }
        }
        if self.read_from_primary(&p) {
            return true;
        }
        let geo = self.shared.geo;
        let (index, logmap, parts, baseline) = (&self.index, &self.logmap, &self.parts, &self.shared.baseline);
        let done =
            self.reads.start(&p, geo.block_size as usize, |lba| match resolve(index, logmap, parts, lba, p.view) {
                Some(ZERO) => None,
                Some(addr) => Some(geo.log_start + u64::from(addr)),
                None => baseline.has(lba / u64::from(geo.stripe_blocks)).then(|| geo.baseline_start + lba),
            });
        let issue = self.reads.take_issue();
        for &req in &issue {
            self.dev_submit(req);
        }
        self.reads.put_issue(issue);
        if let Some((origin, slot, status)) = done {
            self.finish_piece(origin, slot, status);
        }
        true
    }

    /// Where `lba` lives in `view` (see `read::resolve`).
    pub(super) fn resolve_view(&self, lba: u64, view: View) -> Option<LogAddr> {
        resolve(&self.index, &self.logmap, &self.parts, lba, view)
    }

    fn read_done(&mut self, ctx: u32, status: DevStatus) {
        if let Some((origin, slot, status)) = self.reads.done(ctx, status) {
            self.finish_piece(origin, slot, status);
        }
    }

    /// Blocks this core's index shard maps.
    pub fn mapped_blocks(&self) -> u64 {
        self.index.mapped()
    }
}

/// Checks, with every shard idle, that the live-block counts kept as blocks
/// change equal a recount from scratch. For tests: an error names the first
/// segment that differs.
pub fn audit_space(shards: &[Shard]) -> std::result::Result<(), String> {
    let Some(first) = shards.first() else { return Ok(()) };
    if let Some(busy) = shards.iter().find(|s| !s.is_idle()) {
        return Err(format!("core {} is not idle", busy.core));
    }
    let shared = &first.shared;
    let recount = super::space::count_live(
        &shared.geo,
        shards.iter().map(|s| (&s.index, &s.parts)),
        &first.live_volumes,
        first.open_partition,
    );
    for (segno, (space, (current, pinned))) in shared.space.iter().zip(recount).enumerate() {
        let kept = (space.current.load(Relaxed), space.pinned.load(Relaxed));
        if kept != (current, pinned) {
            return Err(format!("segment {segno}: kept (current, pinned) = {kept:?}, recounted ({current}, {pinned})"));
        }
    }
    Ok(())
}
