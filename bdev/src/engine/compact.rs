//! Core 0's compaction: reclaims log segments by moving victims.
//!
//! A job (emergency reclaim, in-place compaction of a partition, or a
//! compaction of everything) runs as a control operation:
//! 1. a barrier, so the segment registry knows every closed segment;
//! 2. per victim: read its summaries, decode them a group per poll (a
//!    victim's thousand entries took 15-30 µs to decode at once), send each
//!    core the entries it owns (`Msg::MoveLive`), wait until every core
//!    moved its live blocks. Up to `PIPELINE` victims are in flight: the
//!    next one's summaries are read and sent while the cores still move the
//!    last one's blocks, and each core queues them and works them in order;
//! 3. per batch of victims: a barrier (the moved blocks are durable), a
//!    checkpoint that no longer lists the victims, then the victims return
//!    to the free pool. A crash before the checkpoint leaves both copies of
//!    a moved block, which replay orders correctly (the copy is newer in the
//!    same partition, or in a later one no view lies before).
//!
//! Victims are chosen by LFS's cost-benefit: free space gained times age,
//! over the cost of reading and rewriting the live part.

use super::msg::Msg;
use super::policy::OnFull;
use super::registry::Registry;
use super::shard::Shard;
use super::shared::SpaceState;
use super::summaries::{summaries_lost, summary_groups};
use crate::device::{DevStatus, DmaBuf};
use crate::error::{Error, Result};
use crate::format::{Geometry, SegmentRecord, SummaryChain, SummaryEntry};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

/// Victims moved between two checkpoints. A commit waits for every
/// victim in flight, so the cores idle through it: with 2 reactors, 8
/// victims per commit and 4 at once moved 15 % more than 4 and 2 (the cores
/// waited for victims), and more of either gained little.
const BATCH: usize = 8;
/// Victims moved at once.
const PIPELINE: usize = 4;
/// Reclaims come as often as writes fill the log (every few tens of ms
/// under sustained writes): they are logged as one summary at most this
/// often (seconds).
const RECLAIM_NOTICE_S: u64 = 10;

/// The background reclaims since the last notice of them.
#[derive(Default)]
pub(super) struct ReclaimNotices {
    last: Option<u64>,
    runs: u64,
    freed: u64,
}

impl ReclaimNotices {
    /// Counts a reclaim that freed `freed` segments at `now` (unix s); the
    /// line to log when a notice is due: the first reclaim, then one line
    /// for each `RECLAIM_NOTICE_S` seconds that had some.
    fn add(&mut self, now: u64, freed: u32) -> Option<String> {
        self.runs += 1;
        self.freed += u64::from(freed);
        if self.last.is_some_and(|last| now < last + RECLAIM_NOTICE_S) {
            return None;
        }
        let line = format!(
            "compaction: {} background reclaim(s) freed {} segment(s) (logged at most every {RECLAIM_NOTICE_S} s)",
            self.runs, self.freed
        );
        *self = ReclaimNotices { last: Some(now), runs: 0, freed: 0 };
        Some(line)
    }
}

/// What a compaction job reclaims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompactTarget {
    /// Segments until writes have room again (the log filled up).
    Reclaim,
    /// Every closed segment holding entries of one partition: in-place
    /// compaction of a volume, or the merge of a deleted volume's partition
    /// into the next (what else those segments hold moves too).
    Partition(u32),
    /// Every closed segment holding garbage.
    All,
}

/// A victim's summaries being read and decoded, a group per poll (the next
/// group is read once the last one decoded, so a group read means one to
/// decode), its entries split per core as they come.
struct VictimDecode {
    chain: SummaryChain,
    /// Groups read (or being read), and the groups there are.
    read: u32,
    groups: u32,
    /// Entries the checkpoint vouches for still to take.
    left: u32,
    per_core: Vec<Vec<SummaryEntry>>,
}

/// A victim sent to the cores.
struct InFlight {
    segno: u32,
    /// Cores yet to answer.
    outstanding: u32,
    failed: bool,
}

pub(super) struct CompactJob {
    pub target: CompactTarget,
    /// Victims chosen up front (all but `Reclaim`).
    victims: VecDeque<u32>,
    /// Moved victims waiting for the next checkpoint.
    freed: Vec<u32>,
    /// The victim whose summaries are read, its slots, and reads outstanding.
    reading: Option<SegmentRecord>,
    bufs: Vec<DmaBuf>,
    reads: u32,
    decoding: Option<VictimDecode>,
    /// Victims the cores move, oldest first.
    moving: VecDeque<InFlight>,
    started: bool,
    committing: bool,
    /// Segments opened from here on (by the job's own moves among others)
    /// are not its victims, a job must not chase its own tail: until a
    /// commit leaves more free segments than ever in the job (`best_free`),
    /// which moves the bound on. Free segments are bounded, so is the job.
    start_seq: u64,
    best_free: usize,
    /// Free segments, and segments client writes had opened, when the job
    /// started: what tells whether it gained room for writes.
    start_free: usize,
    client_segments_at_start: u64,
    /// Segments freed by this job.
    pub reclaimed: u32,
    pub error: Option<Error>,
}

impl CompactJob {
    pub(super) fn new(target: CompactTarget) -> CompactJob {
        CompactJob {
            target,
            victims: VecDeque::new(),
            freed: Vec::new(),
            reading: None,
            bufs: Vec::new(),
            reads: 0,
            decoding: None,
            moving: VecDeque::new(),
            started: false,
            committing: false,
            start_seq: 0,
            best_free: 0,
            start_free: 0,
            client_segments_at_start: 0,
            reclaimed: 0,
            error: None,
        }
    }
}

/// Closed segments of `registry` worth moving for `target`, best first,
/// by LFS's cost-benefit (`live`: each segment's live blocks; `next_seq`:
/// the next sequence, which ages them).
///
/// What moving a segment gains is the room its data area had minus
/// what stays live: garbage, and the unused tail of a segment closed
/// early (at a snapshot, or the end of a compaction job).
fn candidates(geo: &Geometry, registry: &Registry, live: &[u32], next_seq: u64, target: CompactTarget) -> Vec<u32> {
    let per_group = geo.entries_per_summary();
    // Moved runs may need more summary room than they had: a smaller
    // gain can vanish in the move.
    let min_gain = (geo.segment_blocks / 16).max(1);
    let mut scored: Vec<(f64, u32)> = registry
        .iter()
        .filter(|s| !s.record.open)
        .filter_map(|info| {
            let s = &info.record;
            let summaries = 2 * s.trusted_entries.div_ceil(per_group);
            let room = geo.segment_blocks.saturating_sub(1 + summaries).max(1);
            let live = live[s.segno as usize].min(room);
            let gain = room - live;
            let wanted = match target {
                CompactTarget::Partition(p) => (s.partition..=info.last_partition).contains(&p) && gain > 0,
                // Reclaiming space: a segment must give back enough to
                // be worth rewriting the rest.
                CompactTarget::Reclaim | CompactTarget::All => gain >= min_gain,
            };
            let u = f64::from(live) / f64::from(room);
            let age = next_seq.saturating_sub(s.seq) as f64;
            wanted.then_some(((1.0 - u) * age / (1.0 + u), s.segno))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, segno)| segno).collect()
}

impl Shard {
    /// Closed segments worth moving for `target`, best first.
    fn candidates(&mut self, target: CompactTarget) -> Vec<u32> {
        let next_seq = self.shared.next_seq.load(Relaxed);
        let live: Vec<u32> = self.shared.space.iter().map(|s| s.live()).collect();
        let geo = self.shared.geo;
        candidates(&geo, self.ctl_mut().registry(), &live, next_seq, target)
    }

    pub(super) fn job(&mut self) -> &mut CompactJob {
        self.ctl_mut().compaction.as_mut().expect("a compaction job runs")
    }

    /// After a barrier of a compaction job: start it, or commit its batch.
    pub(super) fn compact_after_barrier(&mut self) {
        let job = self.job();
        if job.committing {
            let freed = job.freed.clone();
            for segno in freed {
                self.ctl_mut().registry_mut().remove(segno);
            }
            return self.write_checkpoint(false);
        }
        if !job.started {
            job.started = true;
            self.shared.counters.compactions.fetch_add(1, Relaxed);
            let next_seq = self.shared.next_seq.load(Relaxed);
            let free = self.shared.free.len();
            let client_segments = self.shared.counters.client_segments_opened.load(Relaxed);
            let job = self.job();
            job.start_seq = next_seq;
            job.best_free = free;
            job.start_free = free;
            job.client_segments_at_start = client_segments;
            let target = job.target;
            if target != CompactTarget::Reclaim {
                let victims = self.candidates(target);
                self.job().victims = victims.into();
            }
        }
        self.compact_next();
    }

    /// Moves the live runs of the next victim, commits a full batch, or ends the job.
    fn compact_next(&mut self) {
        let job = self.job();
        // Called again when the read ends or a victim completes.
        if job.reading.is_some() || job.moving.len() >= PIPELINE {
            return;
        }
        let cores = self.shared.cores as usize;
        let want_more = match self.job().target {
            // Enough room for writes again, with headroom for the next moves.
            CompactTarget::Reclaim => self.shared.free.len() <= self.shared.reserve() + cores,
            _ => true,
        };
        let job = self.job();
        let in_flight = job.moving.len();
        let next = if job.error.is_some() || !want_more {
            None
        } else if job.target == CompactTarget::Reclaim {
            let busy: Vec<u32> = job.freed.iter().copied().chain(job.moving.iter().map(|v| v.segno)).collect();
            let start_seq = job.start_seq;
            let candidates: Vec<u32> = self.candidates(CompactTarget::Reclaim);
            let registry = self.ctl_mut().registry();
            candidates
                .into_iter()
                .find(|s| !busy.contains(s) && registry.get(*s).is_some_and(|r| r.record.seq < start_seq))
        } else {
            job.victims.pop_front()
        };
        // Moves need free segments (a victim's live blocks, spread over the
        // cores, may open a segment on each and fill one more): commit what
        // is moved before compaction's own room runs out. Each victim
        // in flight may need that much.
        let room = self.shared.free.len() > cores * (in_flight + 1);
        let job = self.job();
        if in_flight > 0 {
            // A second victim joins if it fits the batch; commits and the
            // job's end wait until the cores are done.
            match next {
                Some(segno) if room && job.freed.len() + in_flight < BATCH => {
                    let record = self.ctl_mut().registry().get(segno).expect("victims are registered").record;
                    self.read_victim(record);
                }
                Some(segno) if job.target != CompactTarget::Reclaim => job.victims.push_front(segno),
                _ => {}
            }
            return;
        }
        let ending = next.is_none() || (!room && job.freed.is_empty());
        if !job.freed.is_empty() && (ending || !room || job.freed.len() >= BATCH) {
            if let Some(segno) = next {
                job.victims.push_front(segno);
            }
            job.committing = true;
            return self.start_control_barrier(None, false, false);
        }
        let Some(segno) = next.filter(|_| room) else { return self.compact_finish() };
        let record = self.ctl_mut().registry().get(segno).expect("victims are registered").record;
        self.read_victim(record);
    }

    fn read_victim(&mut self, record: SegmentRecord) {
        self.job().reading = Some(record);
        if record.trusted_entries == 0 {
            return self.move_victim(vec![Vec::new(); self.shared.cores as usize]);
        }
        let key = record.summary_key();
        let chain = SummaryChain::new(self.shared.uuid, key, self.shared.geo.entries_per_summary());
        let groups = summary_groups(&self.shared.geo, &record);
        let per_core = vec![Vec::new(); self.shared.cores as usize];
        self.job().decoding = Some(VictimDecode { chain, read: 0, groups, left: record.trusted_entries, per_core });
        self.read_victim_group();
    }

    /// Reads the victim's next summary group. The buffers are the last
    /// victim's, reused: each victim would otherwise allocate and zero a
    /// dozen.
    fn read_victim_group(&mut self) {
        let job = self.job();
        let (record, d) = (job.reading.expect("reading a victim"), job.decoding.as_mut().expect("decoding"));
        let g = d.read;
        d.read += 1;
        job.reads = 2;
        let mut bufs = std::mem::take(&mut job.bufs);
        self.read_summary_groups(&record, g..g + 1, &mut bufs);
        self.job().bufs = bufs;
    }

    pub(super) fn compact_read_done(&mut self, status: DevStatus) {
        let job = self.job();
        job.reads -= 1;
        if let Err(e) = status {
            job.error.get_or_insert(Error::Io(e));
        }
        if job.reads == 0 && job.error.is_some() {
            job.decoding = None;
            self.victim_unread();
        }
    }

    /// Decodes the summary group of the victim just read, if any (core 0,
    /// once per poll), and reads the next one; sends the victim to the
    /// cores after its last group.
    pub(super) fn advance_victim_decode(&mut self) -> usize {
        let shared = &self.shared;
        let Some(job) = self.ctl.as_mut().and_then(|c| c.compaction.as_mut()) else { return 0 };
        let Some(d) = job.decoding.as_mut().filter(|_| job.reads == 0) else { return 0 };
        if job.error.is_some() {
            // Another victim failed meanwhile: the job ends.
            job.decoding = None;
            self.victim_unread();
            return 1;
        }
        let g = 2 * (d.read as usize - 1);
        let more = d.chain.push([&job.bufs[g], &job.bufs[g + 1]]);
        let take = d.left as usize;
        for e in d.chain.drain().take(take) {
            d.per_core[shared.owner(e.lba) as usize].push(e);
            d.left -= 1;
        }
        if more && d.left > 0 && d.read < d.groups {
            self.read_victim_group();
            return 1;
        }
        let d = job.decoding.take().expect("decoding");
        if d.left > 0 {
            let segno = job.reading.expect("reading a victim").segno;
            job.error.get_or_insert(summaries_lost(segno));
            self.victim_unread();
        } else {
            self.move_victim(d.per_core);
        }
        1
    }

    /// The victim being read cannot be moved (the job has failed).
    fn victim_unread(&mut self) {
        let job = self.job();
        job.reading = None;
        self.compact_next()
    }

    /// Sends each core the victim's entries it owns.
    fn move_victim(&mut self, per_core: Vec<Vec<SummaryEntry>>) {
        let rec = self.job().reading.take().expect("moving a victim");
        let cores = self.shared.cores;
        let job = self.job();
        job.moving.push_back(InFlight { segno: rec.segno, outstanding: cores, failed: false });
        for (core, entries) in per_core.into_iter().enumerate() {
            self.send(core as u32, Msg::MoveLive { segno: rec.segno, entries });
        }
        // The next victim's summaries are read while the cores move these.
        self.compact_next();
    }

    pub(super) fn on_moves_done(&mut self, segno: u32, status: Result<()>) {
        let job = self.job();
        let victim = job.moving.iter_mut().find(|v| v.segno == segno).expect("a victim in flight");
        victim.outstanding -= 1;
        if let Err(e) = status {
            victim.failed = true;
            job.error.get_or_insert(e);
        }
        // Each core answers in order, so victims complete in order.
        while job.moving.front().is_some_and(|v| v.outstanding == 0) {
            let victim = job.moving.pop_front().expect("checked");
            // A failed victim stays: what did not move keeps its place.
            if !victim.failed {
                job.freed.push(victim.segno);
            }
        }
        self.compact_next();
    }

    /// The checkpoint without the batch is durable: free its segments.
    pub(super) fn compact_checkpointed(&mut self) {
        let freed = std::mem::take(&mut self.job().freed);
        for &segno in &freed {
            self.shared.space[segno as usize].reset();
            self.shared.free.release(segno);
        }
        let counters = &self.shared.counters;
        counters.segments_freed.fetch_add(freed.len() as u64, Relaxed);
        log::debug!("compaction freed {} segment(s): {:?}", freed.len(), freed);
        let (free, next_seq) = (self.shared.free.len(), self.shared.next_seq.load(Relaxed));
        let job = self.job();
        job.reclaimed += freed.len() as u32;
        job.committing = false;
        if free > job.best_free {
            job.best_free = free;
            job.start_seq = next_seq;
        }
        self.compact_next();
    }

    fn compact_finish(&mut self) {
        let job = self.ctl_mut().compaction.take().expect("a compaction job runs");
        let free = self.shared.free.len();
        let room = free > self.shared.reserve();
        if job.target == CompactTarget::Reclaim {
            let now = self.shared.clock.now_unix_s();
            if let Some(line) = self.ctl_mut().reclaim_notices.add(now, job.reclaimed) {
                log::info!("{line}, {free} free");
            }
        } else {
            log::info!("compaction {:?} done: {} segment(s) freed, {free} free", job.target, job.reclaimed);
        }
        if job.target == CompactTarget::Reclaim {
            // Writes waiting for space may have taken what the job freed as
            // fast as it freed it: a job that gained room for them (more
            // free segments, counting those writes took) hands over to a
            // fresh one, with the segments written meanwhile as candidates.
            // Moving live data around without a net gain would only starve
            // writes for ever.
            let taken = self.shared.counters.client_segments_opened.load(Relaxed) - job.client_segments_at_start;
            let state = if room {
                SpaceState::Ok
            } else if free as u64 + taken > job.start_free as u64 {
                SpaceState::Wanted
            } else {
                self.log_full_of_versions()
            };
            self.shared.set_space_state(state);
        } else if room && job.reclaimed > 0 {
            self.shared.set_space_state(SpaceState::Ok);
        }
        let result = match job.error {
            Some(e) => Err(e),
            None => Ok(super::request::Reply::Done),
        };
        self.finish_control(result);
    }

    /// Neither the drain nor compaction can make room: the log holds only
    /// versions that volumes need. The policy's `retention.on_full` says
    /// what gives: writes (ENOSPC), or the oldest volume.
    fn log_full_of_versions(&mut self) -> SpaceState {
        let c = self.ctl_mut();
        if c.drain_failed_at.is_some() {
            // Not full: the device fails the drain.
            return SpaceState::Failed;
        }
        let oldest = c.volume_records().iter().min_by_key(|v| v.partition).map(|v| v.name.clone());
        match (c.policy.on_full, oldest) {
            (OnFull::DeleteOldest, Some(name)) => {
                log::warn!("log full of versions: retiring the oldest volume, {name} (retention.on_full)");
                self.shared.counters.volumes_retired.fetch_add(1, Relaxed);
                self.queue_retire(name);
                SpaceState::Wanted
            }
            _ => {
                log::warn!("log full of versions that volumes need: writes needing room fail with ENOSPC");
                SpaceState::Exhausted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaims_are_logged_once_then_summed_up_every_notice_period() {
        let mut notices = ReclaimNotices::default();
        assert!(notices.add(100, 1).is_some(), "the first reclaim is told");
        // Every 40 ms for 25 s: one more line per period, not one a reclaim.
        let lines: Vec<String> = (0..625u64).filter_map(|i| notices.add(100 + i * 40 / 1000, 2)).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("compaction: 250 background reclaim(s) freed 500 segment(s)"), "{}", lines[1]);
    }
}
