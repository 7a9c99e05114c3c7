//! The log cursor (`LogRead`): entries in log order from a position on,
//! read from the summaries (and data) of the segments in use, a segment at
//! a time, as a control operation on core 0.
//!
//! A position packs (segment sequence, entry index) (`ENTRY_BITS`). Entries
//! that drained into the baseline have left the log: they are skipped, and
//! a cursor that would have met one (below `drained_below`) is refused with
//! an error naming where reading can go on without a gap. Cursor 0 means
//! "everything the log still holds".

use super::request::{LogBatch, LogEntry, LogEntryKind, Reply, MAX_LOG_READ_DATA_BYTES};
use super::shard::Shard;
use super::summaries::{summary_groups, summary_reads};
use super::tag::TAG_CONTROL;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::Error;
use crate::format::{EntryKind, SegmentRecord};
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

impl Shard {
    pub(super) fn start_log_read(&mut self, cursor: u64, count: u32, with_data: bool) {
        let c = self.ctl_mut();
        let drained_below = c.drained_below();
        if cursor != 0 && cursor < drained_below {
            return self.finish_control(Err(Error::CursorDrained { cursor, oldest: drained_below }));
        }
        let first_seq = cursor >> ENTRY_BITS;
        let mut segments: Vec<SegmentRecord> =
            c.registry().records().filter(|s| s.seq >= first_seq && s.trusted_entries > 0).collect();
        segments.sort_by_key(|s| std::cmp::Reverse(s.seq));
        c.log = Some(LogRead {
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
        });
        self.log_read_next_segment();
    }

    /// Reads the summaries of the next segment, or answers.
    fn log_read_next_segment(&mut self) {
        let geo = self.shared.geo;
        let c = self.ctl_mut();
        let oldest_cursor = c.drained_below();
        let log = c.log.as_mut().expect("log read state");
        let Some(seg) = log.segments.last().copied().filter(|_| (log.entries.len() as u32) < log.count) else {
            let log = c.log.take().expect("log read state");
            let next_cursor = log.entries.last().map_or(log.cursor, |e| e.sequence + 1);
            let batch = LogBatch { entries: log.entries, next_cursor, oldest_cursor, bytes_limited: log.bytes_limited };
            return self.finish_control(Ok(Reply::Log(batch)));
        };
        log.outstanding = summary_reads(&geo, &seg);
        log.reading_data = false;
        let mut bufs = std::mem::take(&mut log.bufs);
        self.read_summary_groups(&seg, 0..summary_groups(&geo, &seg), &mut bufs);
        self.ctl_mut().log.as_mut().expect("log read state").bufs = bufs;
    }

    /// A read of the cursor completed.
    pub(super) fn log_read_done(&mut self, buf: u64, status: DevStatus) {
        let log = self.ctl_mut().log.as_mut().expect("log read state");
        log.outstanding -= 1;
        if let Err(e) = status {
            log::warn!("log cursor read failed (errno {e}) at buffer {buf}");
            log.error.get_or_insert(Error::Io(e));
        }
        if log.outstanding > 0 {
            return;
        }
        // Answer only once no read still targets the buffers.
        match log.error.take() {
            Some(e) => {
                self.ctl_mut().log = None;
                self.finish_control(Err(e))
            }
            None => self.log_read_progress(),
        }
    }

    fn log_read_progress(&mut self) {
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let c = self.ctl_mut();
        let log = c.log.as_mut().expect("log read state");
        if log.reading_data {
            for (&(entry, _), buf) in log.pending_data.iter().zip(log.bufs.drain(..)) {
                let len = log.entries[entry].blocks as usize * bs;
                log.entries[entry].data = Some(buf[..len].to_vec());
            }
            log.pending_data.clear();
            log.segments.pop();
            return self.log_read_next_segment();
        }
        let seg = *log.segments.last().expect("a segment is being read");
        let bufs = std::mem::take(&mut log.bufs);
        let entries = match self.trusted_summaries(&seg, &bufs) {
            Ok(entries) => entries,
            Err(e) => {
                self.ctl_mut().log = None;
                return self.finish_control(Err(e));
            }
        };
        let c = self.ctl_mut();
        let drained = c.baseline_partition();
        let names: BTreeMap<u32, String> = c.volume_records().iter().map(|v| (v.partition, v.name.clone())).collect();
        let log = c.log.as_mut().expect("log read state");
        let start = geo.segment_start(seg.segno);
        log.pending_data.clear();
        for (idx, e) in entries.into_iter().enumerate() {
            let sequence = seg.seq << ENTRY_BITS | idx as u64;
            let drained = e.partition <= drained;
            if sequence < log.cursor || e.kind == EntryKind::Hole || drained || log.entries.len() as u32 >= log.count {
                continue;
            }
            if log.with_data && e.kind == EntryKind::Data {
                let bytes = u64::from(e.blocks) * bs as u64;
                if !log.entries.is_empty() && log.data_bytes + bytes > MAX_LOG_READ_DATA_BYTES {
                    log.count = log.entries.len() as u32;
                    log.bytes_limited = true;
                    continue;
                }
                log.data_bytes += bytes;
                log.pending_data.push((log.entries.len(), start + u64::from(e.data_offset)));
            }
            log.entries.push(LogEntry {
                sequence,
                partition: e.partition,
                volume: names.get(&e.partition).cloned(),
                lba: e.lba,
                blocks: e.blocks,
                kind: if e.kind == EntryKind::Data { LogEntryKind::Data } else { LogEntryKind::Zero },
                data: None,
            });
        }
        if log.pending_data.is_empty() {
            log.segments.pop();
            return self.log_read_next_segment();
        }
        log.bufs = log
            .pending_data
            .iter()
            .map(|&(entry, _)| DmaBuf::new(log.entries[entry].blocks as usize * bs, bs))
            .collect();
        log.outstanding = log.bufs.len() as u32;
        let reqs: Vec<DevRequest> = log
            .pending_data
            .iter()
            .zip(log.bufs.iter_mut())
            .enumerate()
            .map(|(i, (&(entry, block), buf))| DevRequest {
                op: DevOp::Read,
                block,
                nblocks: log.entries[entry].blocks,
                buf: buf.as_mut_ptr(),
                tag: TAG_CONTROL | i as u64,
            })
            .collect();
        log.reading_data = true;
        for r in reqs {
            self.dev_submit(r);
        }
    }
}
