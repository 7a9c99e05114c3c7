//! The log cursor (`LogRead`): entries in log order from a position on,
//! read from the summaries (and data) of the segments in use, a segment at
//! a time, as a control operation on core 0.
//!
//! A position packs (segment sequence, entry index) (`ENTRY_BITS`). Entries
//! that drained into the baseline have left the log: they are skipped, and
//! a cursor that would have met one (below `drained_below`) is refused with
//! an error naming where reading can go on without a gap. Cursor 0 means
//! "everything the log still holds".
//!
//! `LogRead` keeps the read's progress and says what to read next; the
//! shard (`impl Shard` below) submits the reads and answers.

use super::registry::Registry;
use super::request::{LogBatch, LogEntry, LogEntryKind, Reply, MAX_LOG_READ_DATA_BYTES};
use super::shard::Shard;
use super::summaries::{summary_groups, summary_reads, trusted_summaries};
use super::tag::TAG_CONTROL;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{EntryKind, Geometry, SegmentRecord, SummaryEntry};
use std::collections::BTreeMap;

/// Log cursor positions pack (segment seq, entry index) like this.
pub(super) const ENTRY_BITS: u32 = 20;

/// Progress of one `LogRead`.
pub(super) struct LogRead {
    cursor: u64,
    count: u32,
    with_data: bool,
    /// Segments left to visit, newest first (the next one last).
    segments: Vec<SegmentRecord>,
    /// Summary slots (2 per group) or data of the entries being read.
    bufs: Vec<DmaBuf>,
    entries: Vec<LogEntry>,
    /// (entry in `entries`, device block of its data) of the entries read
    /// from the current segment whose data is wanted.
    pending_data: Vec<(usize, u64)>,
    /// Data bytes of the entries taken, and whether that ended the batch.
    data_bytes: u64,
    bytes_limited: bool,
    /// Whether the reads in flight are the current segment's data (else
    /// its summaries).
    reading_data: bool,
    /// Reads in flight, and the first that failed.
    outstanding: u32,
    error: Option<Error>,
}

/// What a log read does once its reads in flight completed.
enum Next {
    /// The current segment's summaries are read: take its entries.
    Summaries(SegmentRecord, Vec<DmaBuf>),
    /// The next segment (or the answer).
    Segment,
}

impl LogRead {
    /// A read of `count` entries from `cursor` on; refused below
    /// `drained_below`, where entries drained.
    fn new(cursor: u64, count: u32, with_data: bool, drained_below: u64, registry: &Registry) -> Result<LogRead> {
        if cursor != 0 && cursor < drained_below {
            return Err(Error::CursorDrained { cursor, oldest: drained_below });
        }
        let first_seq = cursor >> ENTRY_BITS;
        let mut segments: Vec<SegmentRecord> =
            registry.records().filter(|s| s.seq >= first_seq && s.trusted_entries > 0).collect();
        segments.sort_by_key(|s| std::cmp::Reverse(s.seq));
        Ok(LogRead {
            cursor,
            count,
            with_data,
            segments,
            bufs: Vec::new(),
            entries: Vec::new(),
            pending_data: Vec::new(),
            data_bytes: 0,
            bytes_limited: false,
            reading_data: false,
            outstanding: 0,
            error: None,
        })
    }

    /// The segment whose summaries to read next, with its reads counted;
    /// `None` once the batch is complete.
    fn next_segment(&mut self, geo: &Geometry) -> Option<SegmentRecord> {
        let seg = self.segments.last().copied().filter(|_| (self.entries.len() as u32) < self.count)?;
        self.outstanding = summary_reads(geo, &seg);
        self.reading_data = false;
        Some(seg)
    }

    /// The batch read, with the cursor to go on from.
    fn answer(self, oldest_cursor: u64) -> LogBatch {
        let next_cursor = self.entries.last().map_or(self.cursor, |e| e.sequence + 1);
        LogBatch { entries: self.entries, next_cursor, oldest_cursor, bytes_limited: self.bytes_limited }
    }

    /// A read completed: once none is in flight, what comes next (or the
    /// first failure). Only then, as no read still targets the buffers.
    fn read_done(&mut self, status: DevStatus, bs: usize) -> Option<Result<Next>> {
        self.outstanding -= 1;
        if let Err(e) = status {
            self.error.get_or_insert(Error::Io(e));
        }
        if self.outstanding > 0 {
            return None;
        }
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        if !self.reading_data {
            let seg = *self.segments.last().expect("a segment is being read");
            return Some(Ok(Next::Summaries(seg, std::mem::take(&mut self.bufs))));
        }
        // The data is read: it goes with its entries.
        for (&(entry, _), buf) in self.pending_data.iter().zip(self.bufs.drain(..)) {
            let len = self.entries[entry].blocks as usize * bs;
            self.entries[entry].data = Some(buf[..len].to_vec());
        }
        self.pending_data.clear();
        self.segments.pop();
        Some(Ok(Next::Segment))
    }

    /// Takes segment `seg`'s `entries` from the cursor on, skipping holes
    /// and what drained (up to partition `drained`); returns the reads of
    /// their data, if wanted (none: the segment is done).
    fn take(
        &mut self,
        geo: &Geometry,
        seg: SegmentRecord,
        entries: Vec<SummaryEntry>,
        drained: u32,
        names: &BTreeMap<u32, String>,
    ) -> Vec<DevRequest> {
        let bs = geo.block_size as usize;
        let start = geo.segment_start(seg.segno);
        self.pending_data.clear();
        for (idx, e) in entries.into_iter().enumerate() {
            let sequence = seg.seq << ENTRY_BITS | idx as u64;
            let drained = e.partition <= drained;
            if sequence < self.cursor || e.kind == EntryKind::Hole || drained || self.entries.len() as u32 >= self.count
            {
                continue;
            }
            if self.with_data && e.kind == EntryKind::Data {
                let bytes = u64::from(e.blocks) * bs as u64;
                if !self.entries.is_empty() && self.data_bytes + bytes > MAX_LOG_READ_DATA_BYTES {
                    self.count = self.entries.len() as u32;
                    self.bytes_limited = true;
                    continue;
                }
                self.data_bytes += bytes;
                self.pending_data.push((self.entries.len(), start + u64::from(e.data_offset)));
            }
            self.entries.push(LogEntry {
                sequence,
                partition: e.partition,
                volume: names.get(&e.partition).cloned(),
                lba: e.lba,
                blocks: e.blocks,
                kind: if e.kind == EntryKind::Data { LogEntryKind::Data } else { LogEntryKind::Zero },
                data: None,
            });
        }
        if self.pending_data.is_empty() {
            self.segments.pop();
            return Vec::new();
        }
        let entries = &self.entries;
        self.bufs =
            self.pending_data.iter().map(|&(entry, _)| DmaBuf::new(entries[entry].blocks as usize * bs, bs)).collect();
        self.outstanding = self.bufs.len() as u32;
        self.reading_data = true;
        self.pending_data
            .iter()
            .zip(self.bufs.iter_mut())
            .enumerate()
            .map(|(i, (&(entry, block), buf))| DevRequest {
                op: DevOp::Read,
                block,
                nblocks: entries[entry].blocks,
                buf: buf.io_buf(),
                tag: TAG_CONTROL | i as u64,
            })
            .collect()
    }
}

/// Core 0: the log cursor's reads, for the running `LogRead` operation.
impl Shard {
    pub(super) fn start_log_read(&mut self, cursor: u64, count: u32, with_data: bool) {
        let c = self.ctl_mut();
        match LogRead::new(cursor, count, with_data, c.drained_below(), c.registry()) {
            Ok(log) => {
                c.log = Some(log);
                self.log_read_next_segment();
            }
            Err(e) => self.finish_control(Err(e)),
        }
    }

    /// Reads the summaries of the next segment, or answers.
    fn log_read_next_segment(&mut self) {
        let geo = self.shared.geo;
        let c = self.ctl_mut();
        let oldest_cursor = c.drained_below();
        let log = c.log.as_mut().expect("log read state");
        let Some(seg) = log.next_segment(&geo) else {
            let batch = c.log.take().expect("log read state").answer(oldest_cursor);
            return self.finish_control(Ok(Reply::Log(batch)));
        };
        let mut bufs = std::mem::take(&mut log.bufs);
        self.read_summary_groups(&seg, 0..summary_groups(&geo, &seg), &mut bufs);
        self.ctl_mut().log.as_mut().expect("log read state").bufs = bufs;
    }

    /// A read of the cursor completed.
    pub(super) fn log_read_done(&mut self, buf: u64, status: DevStatus) {
        if let Err(e) = status {
            log::warn!("log cursor read failed (errno {e}) at buffer {buf}");
        }
        let bs = self.shared.geo.block_size as usize;
        let log = self.ctl_mut().log.as_mut().expect("log read state");
        match log.read_done(status, bs) {
            None => {}
            Some(Err(e)) => {
                self.ctl_mut().log = None;
                self.finish_control(Err(e))
            }
            Some(Ok(Next::Segment)) => self.log_read_next_segment(),
            Some(Ok(Next::Summaries(seg, bufs))) => self.log_read_summaries(seg, bufs),
        }
    }

    /// The segment's summaries are read: its entries are taken, and their
    /// data read if wanted.
    fn log_read_summaries(&mut self, seg: SegmentRecord, bufs: Vec<DmaBuf>) {
        let geo = self.shared.geo;
        let entries = match trusted_summaries(self.shared.uuid, &geo, &seg, &bufs) {
            Ok(entries) => entries,
            Err(e) => {
                self.ctl_mut().log = None;
                return self.finish_control(Err(e));
            }
        };
        let c = self.ctl_mut();
        let drained = c.baseline_partition();
        let names: BTreeMap<u32, String> = c.volume_records().iter().map(|v| (v.partition, v.name.clone())).collect();
        let reads = c.log.as_mut().expect("log read state").take(&geo, seg, entries, drained, &names);
        if reads.is_empty() {
            return self.log_read_next_segment();
        }
        for r in reads {
            self.dev_submit(r);
        }
    }
}
