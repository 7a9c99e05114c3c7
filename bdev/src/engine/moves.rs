//! Compaction's work on one core: moving the live blocks this core owns out
//! of a victim segment, so core 0 can free it.
//!
//! Each run of blocks of the victim is checked against the views (see
//! `space.rs`): live data is read into a compaction buffer and appended again as
//! a *move* entry in its partition's canonical one (its own, or the next
//! view's when its partition lost its volume: that is how a deleted volume
//! merges into the next partition); live zero blocks are appended again as
//! a zero entry. A victim's entries may belong to several partitions (a
//! segment is shared by the partitions written while it was open): each
//! run goes by its own. Where the device copies blocks itself, an
//! entry live as a whole is moved by a device copy instead and keeps its
//! CRC: its data never passes through the host (a live part of an entry
//! needs a CRC of its own, so it is read).
//!
//! Liveness is decided when the move is appended: views cannot change
//! meanwhile (volume changes are control operations, and core 0 runs one at
//! a time), and a client write of the block either waits in the reorder
//! buffer (then the block is not moved into the open partition, see
//! `live_parts`) or is appended later and wins, in memory and on replay
//! alike. A retiring move repoints the index only if the block is still
//! current. Sealed partition tables are updated when the core is done, a
//! slice per poll, before it answers: until the victim is freed, its old
//! addresses stay readable.

use super::addr::{LogAddr, ZERO};
use super::msg::Msg;
use super::request::View;
use super::retire::Purpose;
use super::shard::Shard;
use super::tag::TAG_COMPACT_READ;
use super::writer::Payload;
use crate::device::{DevOp, DevRequest, DevStatus};
use crate::error::{Error, Result};
use crate::format::{EntryKind, SummaryEntry};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

/// Longest run read and moved at once (32 KiB of 4 KiB blocks): the size of
/// a compaction buffer, and of the longest entry a device copy moves whole.
/// Where the host copies the data (a malloc device), a run is also the
/// longest a client request arriving meanwhile waits for compaction: a
/// 128 KiB run took 15-20 µs of a poll.
pub(super) const MOVE_RUN_BLOCKS: u32 = 8;
/// Blocks a core reads or moves for compaction per poll (a zero run counts
/// as one; a run started is finished, so a poll may go up to a run over).
/// A poll stops sooner when client work arrives (`work_waiting`). 8 rather
/// than 16 or 32: as much bandwidth, and client ops that arrive between
/// two polls wait less (perf/RESULTS.md).
const MOVE_BLOCKS_PER_POLL: u32 = 8;
/// The least a read or a device copy counts against `MOVE_BLOCKS_PER_POLL`,
/// however few its blocks: each also costs an append, a retirement and a
/// relocation. (Reads were bounded by compaction buffers; copies need none.)
const MOVE_ENTRY_COST: u32 = 4;
/// Partition-table updates (a lookup or two each) a core applies at once
/// when a victim's moves are done, and slices of them per poll (fewer when
/// client work or a message waits). Up to a segment's worth in one poll
/// took 60-300 µs; a lookup in a large table can cost a µs in a VM (a TLB
/// miss each), so 32 at once took up to 35 µs.
const RELOCATE_SLICE_BLOCKS: usize = 8;
const RELOCATE_SLICES_PER_POLL: usize = 4;

/// A run of consecutive blocks of one victim entry: `addr` is the first
/// block's address, or `ZERO` for a zero entry. `crc`: the run is a whole
/// entry with that CRC, to be moved by a device copy if it is all live.
#[derive(Clone, Copy, Default)]
pub(super) struct Run {
    lba: u64,
    addr: LogAddr,
    blocks: u32,
    crc: Option<u32>,
    /// The partition of the victim entry the run is from.
    partition: u32,
}

/// A compaction buffer being filled: the run it is for, read part by part.
#[derive(Clone, Copy, Default)]
pub(super) struct BufRead {
    run: Run,
    /// Reads not completed yet.
    reads: u32,
    failed: bool,
}

/// Where a move's data comes from.
#[derive(Clone, Copy)]
enum Source {
    /// Compaction buffer that holds the run's blocks.
    Buf(u16),
    /// The device copies the run, a whole entry whose CRC this is.
    Copy(u32),
    /// Nowhere: a zero run.
    Zero,
}

/// One victim segment being moved on this core. A core queues the
/// victims core 0 sends and works them one at a time, in order: all reads
/// and moves in flight belong to the first, and each victim's liveness
/// checks see the partition tables the one before updated.
pub(super) struct VictimMoves {
    /// The victim segment.
    segno: u32,
    /// The victim's entries this core owns, and where the segment's data
    /// starts. They are walked in runs, never copied into a list of runs:
    /// a victim starts in constant time.
    entries: Vec<SummaryEntry>,
    base: LogAddr,
    /// The device copies blocks: entries up to a run long are kept whole
    /// (a device copy is bounded like a read).
    copy: bool,
    /// The next run to examine (entry, block within it), and the block of
    /// that run to resume from.
    cursor: (usize, u32),
    resume: u32,
    /// Runs read into compaction buffer `.0`, appended up to block `.2`.
    ready: VecDeque<(u16, Run, u32)>,
    /// Reads and moves not finished.
    inflight: u32,
    /// Retired moves whose partition tables are sealed, to apply: (source
    /// partition, destination partition, (lba, source, destination address,
    /// or `ZERO` when it went to the open partition)).
    relocated: Vec<(u32, u32, (u32, LogAddr, LogAddr))>,
    /// Once every run is dealt with: how far the partition tables are
    /// updated.
    relocation: Option<Relocation>,
    error: Option<Error>,
}

/// Progress of a victim's finished moves' table updates: the moves applied,
/// then the freed victim's data blocks from (entry, block) on.
#[derive(Clone, Copy, Default)]
struct Relocation {
    moves: usize,
    freed: (usize, u32),
}

impl VictimMoves {
    pub(super) fn new(segno: u32, entries: Vec<SummaryEntry>, base: LogAddr, copy: bool) -> Self {
        VictimMoves {
            segno,
            entries,
            base,
            copy,
            cursor: (0, 0),
            resume: 0,
            ready: VecDeque::new(),
            inflight: 0,
            relocated: Vec::new(),
            relocation: None,
            error: None,
        }
    }

    /// The run at `cursor` (holes have none), and the cursor after it.
    fn run_at(&self, cursor: (usize, u32)) -> Option<(Run, (usize, u32))> {
        let (i, b) = cursor;
        let (i, e) = self.entries.iter().enumerate().skip(i).find(|(_, e)| e.kind != EntryKind::Hole)?;
        if e.kind == EntryKind::Zero {
            // Moved as one entry: a zero run needs no buffer, and every
            // entry takes summary room.
            let run = Run { lba: e.lba, addr: ZERO, blocks: e.blocks, crc: None, partition: e.partition };
            return Some((run, (i + 1, 0)));
        }
        let whole =
            Run { lba: e.lba, addr: self.base + e.data_offset, blocks: e.blocks, crc: None, partition: e.partition };
        if self.copy && e.blocks <= MOVE_RUN_BLOCKS {
            return Some((Run { crc: Some(e.data_crc), ..whole }, (i + 1, 0)));
        }
        let (lba, addr) = whole.block(b);
        let blocks = (e.blocks - b).min(MOVE_RUN_BLOCKS);
        let next = if b + blocks < e.blocks { (i, b + blocks) } else { (i + 1, 0) };
        Some((Run { lba, addr, blocks, ..whole }, next))
    }

    /// The victim's data blocks (partition, (lba, address)) from `from` on,
    /// as many as `out` holds; returns how many, and where the next ones
    /// start.
    fn data_blocks(&self, from: (usize, u32), out: &mut [(u32, (u32, LogAddr))]) -> (usize, (usize, u32)) {
        let (mut i, mut b) = from;
        let mut n = 0;
        while n < out.len() {
            let Some(e) = self.entries.get(i) else { break };
            if e.kind != EntryKind::Data || b >= e.blocks {
                (i, b) = (i + 1, 0);
                continue;
            }
            out[n] = (e.partition, ((e.lba + u64::from(b)) as u32, self.base + e.data_offset + b));
            n += 1;
            b += 1;
        }
        (n, (i, b))
    }
}

impl Run {
    fn block(&self, b: u32) -> (u64, LogAddr) {
        (self.lba + u64::from(b), if self.addr == ZERO { ZERO } else { self.addr + b })
    }
}

impl Shard {
    /// The first live volume at or above partition `p`: the oldest view
    /// that can still read `p`'s blocks besides the current image.
    fn first_volume_from(&self, p: u32) -> Option<u32> {
        self.live_volumes.iter().copied().find(|&v| v >= p)
    }

    /// The partition live blocks of partition `p` move to: `p`'s own if it
    /// is a volume, else the next view's (a later volume, or the open
    /// partition), since no view lies in between.
    fn canonical(&self, p: u32) -> u32 {
        let open = self.open_partition;
        self.first_volume_from(p).unwrap_or(open).min(open)
    }

    /// Whether block `addr` of partition `p` holding `lba` must move to
    /// `dest` (the first view's partition from `p` on).
    ///
    /// Data is live when a view reads that very address (later volumes than
    /// the first one from `p` see the same version or a newer one). A zero
    /// entry has no address: it is live when it is `p`'s newest version of
    /// the LBA and no newer one lies up to the view it serves (`dest`, or the
    /// current image when `dest` is the open partition).
    fn block_live(&self, lba: u64, addr: LogAddr, p: u32, dest: u32) -> bool {
        if addr != ZERO {
            return self.index.get(lba) == Some(addr)
                || self.first_volume_from(p).is_some_and(|v| self.resolve_view(lba, View::Volume(v)) == Some(addr));
        }
        let open = self.open_partition;
        if p == open {
            return self.index.get(lba) == Some(ZERO);
        }
        if self.parts.lookup_in(p, lba as u32) != Some(ZERO) {
            return false;
        }
        if dest == open {
            self.parts.next_holder(lba as u32, p, u32::MAX).is_none() && self.index.get(lba) == Some(ZERO)
        } else {
            self.parts.next_holder(lba as u32, p, dest).is_none()
        }
    }

    /// The live sub-runs of `run` (`offset` into it, length).
    fn live_parts(&self, run: &Run) -> Vec<(u32, u32)> {
        let dest = self.canonical(run.partition);
        let mut parts: Vec<(u32, u32)> = Vec::new();
        for b in 0..run.blocks {
            let (lba, addr) = run.block(b);
            if !self.block_live(lba, addr, run.partition, dest) {
                continue;
            }
            match parts.last_mut() {
                Some((start, n)) if *start + *n == b => *n += 1,
                _ => parts.push((b, 1)),
            }
        }
        parts
    }

    /// Queues a victim; the poll's compaction step starts it.
    pub(super) fn start_moves(&mut self, moving: VictimMoves) {
        self.moving.push_back(moving);
    }

    /// Appends the live parts of `run` from block `from` on; returns where
    /// to resume (`run.blocks` when done) as soon as the log cannot take
    /// more for now.
    ///
    /// Into the open partition, a part with a block a client write waits in
    /// the reorder buffer to replace waits for that write to retire: a move
    /// appended after the write would replay after it, and should the write
    /// fail the block is still live. Liveness is checked again then. Into a
    /// sealed partition the move is needed (a volume reads it) and safe (the
    /// write's partition is newer).
    fn append_run(&mut self, run: &Run, from: u32, source: Source) -> u32 {
        let (src_partition, dest) = (run.partition, self.canonical(run.partition));
        let bs = self.shared.geo.block_size as usize;
        for (off, n) in self.live_parts(run) {
            let (off, n) = match (off, off + n) {
                (_, end) if end <= from => continue,
                (o, end) if o < from => (from, end - from),
                (o, _) => (o, n),
            };
            let (lba, src) = run.block(off);
            let into_open = dest == self.open_partition;
            if into_open && (lba..lba + u64::from(n)).any(|x| self.client_write_pending(x)) {
                return off;
            }
            let (payload, buf) = match source {
                Source::Buf(b) => (Payload::Buf(self.compact_bufs.io_buf(b).blocks(off, n, bs)), Some(b)),
                Source::Copy(crc) => {
                    debug_assert!((off, n) == (0, run.blocks), "a copy moves its whole entry");
                    (Payload::Copy { src, crc }, None)
                }
                Source::Zero => (Payload::Zero, None),
            };
            let purpose = Purpose::Move { src, src_partition, buf };
            match self.append_entry(payload, lba, n, dest, purpose) {
                Ok(false) => return off,
                Ok(true) => match buf {
                    Some(b) => self.compact_bufs.hold(b),
                    None => self.moving.front_mut().expect("running").inflight += 1,
                },
                Err(e) => {
                    self.moving.front_mut().expect("running").error.get_or_insert(e);
                }
            }
        }
        run.blocks
    }

    /// Moves as much as buffers and the log allow; answers core 0 when every
    /// run is dealt with.
    pub(super) fn advance_moves(&mut self) -> usize {
        let Some(ev) = self.moving.front() else { return 0 };
        if ev.relocation.is_some() {
            return self.advance_relocation();
        }
        let mut work = 0;
        let mut spent = 0;
        while let Some(&(buf, run, from)) = self.moving.front().and_then(|e| e.ready.front()) {
            if spent >= MOVE_BLOCKS_PER_POLL || (spent > 0 && self.work_waiting()) {
                return work.max(1);
            }
            spent += run.blocks - from;
            // Checked now: a client may have rewritten blocks during the read.
            let next = self.append_run(&run, from, Source::Buf(buf));
            if next < run.blocks {
                self.moving.front_mut().expect("running").ready.front_mut().expect("peeked").2 = next;
                break;
            }
            self.moving.front_mut().expect("running").ready.pop_front();
            self.release_compact_buf(buf);
            work += 1;
        }
        while let Some((run, after)) = self.moving.front().and_then(|e| e.run_at(e.cursor)) {
            if spent >= MOVE_BLOCKS_PER_POLL || (spent > 0 && self.work_waiting()) {
                return work.max(1);
            }
            if run.addr == ZERO {
                // An append without data: counted as one block of work.
                spent += 1;
                let from = self.moving.front().expect("running").resume;
                let next = self.append_run(&run, from, Source::Zero);
                if next < run.blocks {
                    self.moving.front_mut().expect("running").resume = next;
                    break;
                }
            } else {
                let parts = self.live_parts(&run);
                if let Some(crc) = run.crc.filter(|_| parts[..] == [(0, run.blocks)]) {
                    spent += run.blocks.max(MOVE_ENTRY_COST);
                    if self.append_run(&run, 0, Source::Copy(crc)) < run.blocks {
                        break;
                    }
                } else if !parts.is_empty() {
                    // The run holds the buffer until all its moves retired.
                    let Some(buf) = self.compact_bufs.take() else { break };
                    self.compact_pending[buf as usize] = BufRead { run, reads: parts.len() as u32, failed: false };
                    self.moving.front_mut().expect("running").inflight += 1;
                    // Only the live parts are read, each to its place in the
                    // buffer: what is live when they are appended is among
                    // them (a block stops being live, never starts again).
                    let bs = self.shared.geo.block_size as usize;
                    let base = self.compact_bufs.io_buf(buf);
                    let tag = TAG_COMPACT_READ | u64::from(buf);
                    for (off, n) in parts {
                        let block = self.shared.geo.log_start + u64::from(run.addr + off);
                        let at = base.blocks(off, n, bs);
                        spent += n.max(MOVE_ENTRY_COST);
                        self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks: n, buf: at, tag });
                    }
                }
            }
            let ev = self.moving.front_mut().expect("running");
            (ev.cursor, ev.resume) = (after, 0);
            work += 1;
        }
        let ev = self.moving.front_mut().expect("running");
        if ev.run_at(ev.cursor).is_none() && ev.ready.is_empty() && ev.inflight == 0 {
            // The tables are updated from the next poll on.
            ev.relocation = Some(Relocation::default());
            return work.max(1);
        }
        work
    }

    /// Whether a client request or a message waits for this core: the
    /// background work yields the rest of its poll to it.
    pub(super) fn work_waiting(&self) -> bool {
        let core = self.core as usize;
        !self.shared.clients[core].is_empty() || !self.shared.inbox[core].is_empty()
    }

    fn release_compact_buf(&mut self, buf: u16) {
        if self.compact_bufs.release(buf) {
            self.moving.front_mut().expect("running").inflight -= 1;
        }
    }

    pub(super) fn move_read_done(&mut self, buf: u16, status: DevStatus) {
        let read = &mut self.compact_pending[buf as usize];
        read.reads -= 1;
        read.failed |= status.is_err();
        let read = *read;
        if let Err(e) = status {
            self.moving.front_mut().expect("reads belong to a victim's moves").error.get_or_insert(Error::Io(e));
        }
        if read.reads > 0 {
            return;
        }
        if read.failed {
            self.release_compact_buf(buf);
        } else {
            self.moving.front_mut().expect("reads belong to a victim's moves").ready.push_back((buf, read.run, 0));
        }
    }

    /// A move retired.
    pub(super) fn move_done(&mut self, buf: Option<u16>, status: Result<()>) {
        if let Err(e) = status {
            self.moving.front_mut().expect("moves belong to a victim's moves").error.get_or_insert(e);
        }
        match buf {
            Some(b) => self.release_compact_buf(b),
            None => self.moving.front_mut().expect("moves belong to a victim's moves").inflight -= 1,
        }
    }

    /// Applies a retired move of `blocks` blocks of `lba..` from `src`
    /// (partition `src_partition`, or zeros) to `dst` in `dest`.
    pub(super) fn retire_move(
        &mut self,
        lba: u64,
        blocks: u32,
        src: LogAddr,
        src_partition: u32,
        dst: LogAddr,
        dest: u32,
    ) {
        let open = dest == self.open_partition;
        for b in 0..blocks {
            let x = lba + u64::from(b);
            if src == ZERO {
                if open {
                    self.parts.record(dest, x as u32, ZERO);
                } else {
                    let relocated = &mut self.moving.front_mut().expect("running").relocated;
                    relocated.push((src_partition, dest, (x as u32, ZERO, ZERO)));
                }
                continue;
            }
            let (from, to) = (src + b, dst + b);
            let (old, new) = (self.shared.segment_of(from), self.shared.segment_of(to));
            if self.index.get(x) == Some(from) {
                old.current.fetch_sub(1, Relaxed);
                new.current.fetch_add(1, Relaxed);
                self.index.set(x, to);
            } else {
                old.pinned.fetch_sub(1, Relaxed);
                new.pinned.fetch_add(1, Relaxed);
            }
            if open {
                self.parts.record(dest, x as u32, to);
            }
            let moved_to = if open { ZERO } else { to };
            if src_partition != dest || !open {
                let relocated = &mut self.moving.front_mut().expect("running").relocated;
                relocated.push((src_partition, dest, (x as u32, from, moved_to)));
            }
        }
    }

    /// Applies a victim's finished moves to the partition tables, a slice per
    /// poll (see `Partitions::relocate`): each moved data block leaves the
    /// victim partition's table and, unless it went to the open partition,
    /// enters the destination's; zero moves enter the destination's.
    /// Whatever else still points into the victim, when it is to be freed,
    /// is dead and is dropped. Meanwhile a table may point at either copy of
    /// a moved block: both hold it until the victim is freed, after the
    /// answer. Then answers core 0.
    fn advance_relocation(&mut self) -> usize {
        for slice in 0.. {
            if slice == RELOCATE_SLICES_PER_POLL || (slice > 0 && self.work_waiting()) {
                return 1;
            }
            if self.relocate_slice() {
                break;
            }
        }
        let ev = self.moving.pop_front().expect("running");
        let status = ev.error.map_or(Ok(()), Err);
        self.send(0, Msg::MovesDone { segno: ev.segno, status });
        1
    }

    /// Applies up to `RELOCATE_SLICE_BLOCKS` of the table updates; returns
    /// whether they are all done.
    fn relocate_slice(&mut self) -> bool {
        let ev = self.moving.front_mut().expect("running");
        let mut at = ev.relocation.expect("relocating");
        let end = (at.moves + RELOCATE_SLICE_BLOCKS).min(ev.relocated.len());
        let mut budget = RELOCATE_SLICE_BLOCKS - (end - at.moves);
        // Moves between the same two partitions go together.
        let mut moves = [(0, 0, 0); RELOCATE_SLICE_BLOCKS];
        while at.moves < end {
            let (src, dest, _) = ev.relocated[at.moves];
            let mut n = 0;
            while at.moves + n < end && ev.relocated[at.moves + n].0 == src && ev.relocated[at.moves + n].1 == dest {
                moves[n] = ev.relocated[at.moves + n].2;
                n += 1;
            }
            self.parts.relocate(src, dest, &moves[..n]);
            at.moves += n;
        }
        // After a failure the victim stays: only the moves that retired
        // apply, and what did not move keeps its place.
        let mut done = ev.error.is_some();
        if budget > 0 && !done {
            let mut freed = [(0, (0, 0)); RELOCATE_SLICE_BLOCKS];
            let (n, next) = ev.data_blocks(at.freed, &mut freed[..budget]);
            for &(p, (lba, addr)) in &freed[..n] {
                self.parts.remove_if(p, lba, addr);
            }
            at.freed = next;
            budget -= n;
            done = budget > 0;
        }
        ev.relocation = Some(at);
        done && at.moves == ev.relocated.len()
    }
}
