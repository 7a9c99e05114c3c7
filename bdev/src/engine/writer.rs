//! The segment writer: a core's log stream. An entry goes into the open
//! segment (its data blocks up from the header, its summary entry in
//! memory) and its data write starts; summaries are written a group at a
//! time, in two alternating slots at the segment's end, through a small
//! pool of metadata buffers, once a group's entries have retired (or a
//! barrier asks); a segment closes once all its entries retired and their
//! summaries are written. The one place that lays a segment out on the
//! device as it is written, apart from the dispatch that feeds it.

use super::addr::{LogAddr, ZERO};
use super::msg::{Piece, PieceOp};
use super::registry::SegmentInfo;
use super::retire::{Purpose, RobEntry, ROB_DEPTH};
use super::shard::Shard;
use super::shared::SpaceState;
use super::space::Counters;
use super::tag::{TAG_META, TAG_WRITE};
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf, IoBuf};
use crate::error::{Error, Result};
use crate::format::{
    EntryKind, SegmentHeader, SegmentId, SegmentRecord, SummaryBlock, SummaryEntry, SummaryKey, PARTITION_SPAN,
};
use std::sync::atomic::Ordering::Relaxed;

/// What an appended entry's blocks hold.
#[derive(Clone, Copy)]
pub(super) enum Payload {
    /// Data in a buffer the device write reads; its CRC is computed here.
    Buf(IoBuf),
    /// Data the device copies from log address `src`: a whole entry moved
    /// unchanged, whose CRC `crc` still holds.
    Copy { src: LogAddr, crc: u32 },
    /// Zeroes: no data.
    Zero,
}

#[derive(Clone, Copy, Default)]
pub(super) struct Group {
    /// Next version to write.
    version: u32,
    /// Entries covered by the newest summary write issued.
    written: u32,
    /// The newest write is not yet flushed: rewriting now could overwrite
    /// the only durable version in the other slot.
    pub(super) unflushed: bool,
}

pub(super) struct Segment {
    pub(super) segno: u32,
    pub(super) seq: u64,
    /// No entry's partition is below it (the header's partition).
    base: u32,
    /// The newest partition of its entries so far.
    last_partition: u32,
    pub(super) closing: bool,
    /// Opened by compaction out of its reserve: client writes stay out of
    /// it while the log is that short, or they would eat the reserve.
    reserved: bool,
    /// Taken out of the window (see `free.rs`): mount after a crash finds
    /// it by its header. Client writes go to such segments only.
    in_window: bool,
    next_data: u32,
    pub(super) entries: Vec<SummaryEntry>,
    pub(super) retired: u32,
    pub(super) groups: Vec<Group>,
    /// Metadata writes (header, summaries) in flight for this segment.
    meta_inflight: u32,
}

impl Segment {
    /// Summary blocks the current entries need, as pairs from the end.
    fn summary_blocks(&self, entries: usize, per_group: u32) -> u32 {
        2 * (entries as u32).div_ceil(per_group)
    }
}

pub(super) struct MetaBuf {
    pub(super) buf: DmaBuf,
    pub(super) busy: bool,
    pub(super) ticket: u64,
    pub(super) segno: u32,
}

impl Shard {
    pub(super) fn append_piece(&mut self, p: Piece) -> bool {
        // After a close barrier nothing may reach the log: the clean
        // checkpoint would not know about it.
        if let Some(e) = self.failed.clone().or(self.shutting_down.then_some(Error::ShuttingDown)) {
            self.finish_piece(p.origin, p.slot, Err(e));
            return true;
        }
        let payload = if p.op == PieceOp::Write { Payload::Buf(p.buf) } else { Payload::Zero };
        let purpose = Purpose::Client { origin: p.origin, slot: p.slot };
        match self.append_entry(payload, p.lba, p.blocks, self.open_partition, purpose) {
            Ok(appended) => {
                if appended {
                    self.drain_credit = self.drain_credit.saturating_add(p.blocks);
                }
                appended
            }
            Err(e) => {
                self.finish_piece(p.origin, p.slot, Err(e));
                true
            }
        }
    }

    /// Appends an entry to the open segment of `partition` and starts its
    /// data write. `Ok(false)`: not now (reorder buffer, metadata buffers or
    /// free segments short); try again later.
    pub(super) fn append_entry(
        &mut self,
        payload: Payload,
        lba: u64,
        blocks: u32,
        partition: u32,
        purpose: Purpose,
    ) -> Result<bool> {
        if self.rob.len() == ROB_DEPTH {
            return Ok(false);
        }
        let kind = if matches!(payload, Payload::Zero) { EntryKind::Zero } else { EntryKind::Data };
        let data_blocks = if kind == EntryKind::Data { blocks } else { 0 };
        let reserve_ok = matches!(purpose, Purpose::Move { .. });
        let Some(seg) = self.segment_with_room(data_blocks, partition, reserve_ok)? else { return Ok(false) };
        let geo = &self.shared.geo;
        let bs = geo.block_size as usize;
        let s = &mut self.segs[seg];
        let entry = s.entries.len() as u32;
        let (addr, summary) = if kind == EntryKind::Data {
            let offset = s.next_data;
            s.next_data += blocks;
            let crc = match payload {
                Payload::Buf(buf) => crate::format::crc32c(buf.blocks(0, blocks, bs).as_slice()),
                Payload::Copy { crc, .. } => crc,
                Payload::Zero => unreachable!("data"),
            };
            let e = SummaryEntry { lba, blocks, data_offset: offset, data_crc: crc, kind, partition };
            (s.segno * geo.segment_blocks + offset, e)
        } else {
            (ZERO, SummaryEntry { lba, blocks, data_offset: u32::MAX, data_crc: 0, kind, partition })
        };
        s.entries.push(summary);
        s.last_partition = s.last_partition.max(partition);
        let segno = s.segno;
        if kind == EntryKind::Data {
            self.logmap.note(segno, summary.data_offset, partition);
            self.shared.space[segno as usize].used.store(s.next_data - 1, Relaxed);
            let counters = &self.shared.counters;
            Counters::add(&counters.device_blocks, u64::from(blocks));
            match purpose {
                Purpose::Client { .. } => Counters::add(&counters.user_blocks, u64::from(blocks)),
                Purpose::Move { .. } => Counters::add(&counters.moved_blocks, u64::from(blocks)),
            }
            if matches!(payload, Payload::Copy { .. }) {
                Counters::add(&counters.copied_blocks, u64::from(blocks));
            }
        }
        let seq = self.alloc_seq;
        self.alloc_seq += 1;
        self.rob.push_back(RobEntry {
            done: kind == EntryKind::Zero,
            status: Ok(()),
            segno,
            entry,
            partition,
            lba,
            blocks,
            addr,
            purpose,
            mirror_pending: 0,
            mirror_missed: 0,
        });
        if matches!(purpose, Purpose::Client { .. }) && !self.shared.primaries.is_empty() {
            self.mirror_write(
                seq,
                match payload {
                    Payload::Buf(buf) => Some(buf),
                    _ => None,
                },
            );
        }
        let log_start = self.shared.geo.log_start;
        let (op, buf) = match payload {
            Payload::Buf(buf) => (DevOp::Write, buf),
            Payload::Copy { src, .. } => (DevOp::Copy { src: log_start + u64::from(src) }, IoBuf::EMPTY),
            Payload::Zero => return Ok(true),
        };
        let block = log_start + u64::from(addr);
        self.dev_submit(DevRequest { op, block, nblocks: blocks, buf, tag: TAG_WRITE | seq });
        Ok(true)
    }

    /// The core's open segment if the next entry (with `data_blocks`, of
    /// `partition`) fits, else a new one. `Ok(None)`: wait (no metadata
    /// buffer, or free segments down to compaction's reserve while the log
    /// drains or compaction reclaims space). Only compaction
    /// (`reserve_ok`) may use the reserve: it is what lets a volume's
    /// delete make room when no segment is free.
    fn segment_with_room(&mut self, data_blocks: u32, partition: u32, reserve_ok: bool) -> Result<Option<usize>> {
        let geo = self.shared.geo;
        let per_group = geo.entries_per_summary();
        let short = self.shared.free.len() <= self.shared.reserve();
        if let Some(i) = self.segs.iter().position(|s| !s.closing) {
            let s = &self.segs[i];
            if s.reserved && short && !reserve_ok {
                return self.wait_for_space();
            }
            let n = s.entries.len();
            let fits = (s.in_window || reserve_ok)
                && n < geo.segment_blocks as usize
                && s.next_data + data_blocks + s.summary_blocks(n + 1, per_group) <= geo.segment_blocks
                && partition.checked_sub(s.base).is_some_and(|o| o < PARTITION_SPAN);
            if fits {
                return Ok(Some(i));
            }
            self.segs[i].closing = true;
            self.try_close(i);
        }
        if self.meta.iter().all(|m| m.busy) {
            return Ok(None);
        }
        if !reserve_ok && short {
            return self.wait_for_space();
        }
        let (segno, in_window) = if reserve_ok {
            // Out of segments, nothing frees one while the move waits: the
            // compaction's commit waits for it.
            let Some(taken) = self.shared.free.take_for_moves() else { return Err(Error::NoSpace) };
            taken
        } else {
            // Free segments are there (the log is not short), behind the
            // window: core 0's next checkpoint moves them in.
            let Some(segno) = self.shared.free.take() else {
                return match self.shared.space_state() {
                    SpaceState::Failed => Err(Error::Io(libc::EIO)),
                    _ => Ok(None),
                };
            };
            Counters::add(&self.shared.counters.client_segments_opened, 1);
            (segno, true)
        };
        let seq = self.shared.alloc_seq();
        // Moves may append entries of older partitions, down to the oldest
        // one not drained (snapshots keep the span within PARTITION_SPAN).
        let base = (self.drained + 1).min(partition);
        self.logmap.open(segno, partition);
        let max_groups = (geo.segment_blocks / 2) as usize;
        let mut groups = Vec::with_capacity(max_groups);
        groups.resize(max_groups, Group::default());
        self.segs.push(Segment {
            segno,
            seq,
            base,
            last_partition: base,
            closing: false,
            reserved: short,
            in_window,
            next_data: 1,
            entries: Vec::with_capacity(geo.segment_blocks as usize),
            retired: 0,
            groups,
            meta_inflight: 0,
        });
        let record = self.record_of(self.segs.len() - 1, 0, true);
        self.changed.push(record);
        let header =
            SegmentHeader { uuid: self.shared.uuid, seq, epoch: self.shared.epoch, stream: self.core, partition: base };
        let m = self.take_meta(segno).expect("checked above");
        header.encode(&mut self.meta[m].buf);
        self.segs.last_mut().expect("just pushed").meta_inflight += 1;
        self.submit_meta(m, geo.segment_start(segno));
        Ok(Some(self.segs.len() - 1))
    }

    /// A client write that needs a new segment and finds the log short:
    /// wait for the drain or compaction, or fail with ENOSPC once the
    /// compaction found nothing to reclaim (the log holds only versions that
    /// volumes need, and the policy says to fail).
    fn wait_for_space(&mut self) -> Result<Option<usize>> {
        if self.shared.space_state() == SpaceState::Exhausted {
            self.shared.rearm_compaction();
        }
        match self.shared.space_state() {
            SpaceState::Exhausted => Err(Error::NoSpace),
            SpaceState::Failed => Err(Error::Io(libc::EIO)),
            SpaceState::Ok | SpaceState::Wanted => {
                self.shared.want_space();
                Ok(None)
            }
        }
    }

    pub(super) fn record_of(&self, i: usize, trusted: u32, open: bool) -> SegmentInfo {
        let s = &self.segs[i];
        let record = SegmentRecord {
            segno: s.segno,
            seq: s.seq,
            stream: self.core,
            epoch: self.shared.epoch,
            partition: s.base,
            trusted_entries: trusted,
            open,
        };
        SegmentInfo { record, last_partition: s.last_partition }
    }

    fn take_meta(&mut self, segno: u32) -> Option<usize> {
        let m = self.meta.iter().position(|m| !m.busy)?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mb = &mut self.meta[m];
        (mb.busy, mb.ticket, mb.segno) = (true, ticket, segno);
        Some(m)
    }

    fn submit_meta(&mut self, m: usize, block: u64) {
        Counters::add(&self.shared.counters.device_blocks, 1);
        let buf = self.meta[m].buf.io_buf();
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks: 1, buf, tag: TAG_META | m as u64 });
    }

    pub(super) fn meta_done(&mut self, m: usize, status: DevStatus) {
        self.meta[m].busy = false;
        if let Err(e) = status {
            log::error!("core {}: metadata write failed (errno {e}); writes will fail from now on", self.core);
            self.failed = Some(Error::Io(e));
        }
        let segno = self.meta[m].segno;
        if let Some(i) = self.segs.iter().position(|s| s.segno == segno) {
            self.segs[i].meta_inflight -= 1;
        }
        // A freed buffer may be what a waiting summary needed.
        for i in (0..self.segs.len()).rev() {
            self.summarize_full_groups(i);
            self.try_close(i);
        }
    }

    /// Writes the summary of every group whose entries have all retired.
    pub(super) fn summarize_full_groups(&mut self, i: usize) {
        let per_group = self.shared.geo.entries_per_summary();
        let s = &self.segs[i];
        let upto = if s.closing && s.retired as usize == s.entries.len() {
            s.retired
        } else {
            s.retired / per_group * per_group
        };
        self.summarize(i, upto, false);
    }

    /// Issues summary writes so that groups cover entries `0..upto`.
    /// Outside barriers a group whose last write is unflushed waits.
    pub(super) fn summarize(&mut self, i: usize, upto: u32, barrier: bool) {
        let per_group = self.shared.geo.entries_per_summary();
        let mut g = 0;
        while g * per_group < upto {
            let count = (upto - g * per_group).min(per_group);
            let group = self.segs[i].groups[g as usize];
            if group.written < count && (barrier || !group.unflushed) {
                let Some(m) = self.take_meta(self.segs[i].segno) else { return };
                let s = &mut self.segs[i];
                let first = (g * per_group) as usize;
                let entries = &s.entries[first..first + count as usize];
                let key = SummaryKey { id: SegmentId { epoch: self.shared.epoch, seq: s.seq }, base: s.base };
                SummaryBlock::encode(&self.shared.uuid, key, g, group.version, entries, &mut self.meta[m].buf);
                let seg_blocks = self.shared.geo.segment_blocks;
                let block =
                    self.shared.geo.segment_start(s.segno) + u64::from(seg_blocks - 2 * g - 2 + group.version % 2);
                s.groups[g as usize] = Group { version: group.version + 1, written: count, unflushed: barrier };
                s.meta_inflight += 1;
                self.submit_meta(m, block);
            }
            g += 1;
        }
    }

    /// Entries covered by issued summary writes, as a prefix.
    pub(super) fn summarized_prefix(&self, i: usize) -> u32 {
        let per_group = self.shared.geo.entries_per_summary();
        let mut n = 0;
        for g in &self.segs[i].groups {
            n += g.written;
            if g.written < per_group {
                break;
            }
        }
        n
    }

    pub(super) fn try_close(&mut self, i: usize) {
        let s = &self.segs[i];
        let n = s.entries.len() as u32;
        if !s.closing || s.retired < n {
            return;
        }
        if self.summarized_prefix(i) < n {
            self.summarize(i, n, false);
            return;
        }
        if s.meta_inflight == 0 {
            let record = self.record_of(i, n, false);
            self.segs.remove(i);
            self.changed.push(record);
        }
    }
}
