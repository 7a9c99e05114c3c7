//! The diff: which blocks a volume holds apart from an older volume (or
//! every block it maps, without one), answered from the partition tables,
//! so it costs the size of the change, never a scan of the volume.
//!
//! A volume at partition `hi` differs from an older one at `lo` exactly in
//! the blocks that partitions `(lo, hi]` hold (deleted volumes and cuts in
//! between included: their entries are visible to `hi`). Core 0 resolves
//! the names and asks every core (`Msg::Diff`); each core walks its tables
//! of those partitions, oldest first, in slices, and keeps a block where the
//! table walked holds its newest version up to `hi` (a zero entry makes a
//! zero extent). A compaction move between slices only ever moves an entry
//! to a newer partition, walked later: a block may be seen twice, never
//! missed. The core answers its blocks as merged extents (`Msg::DiffDone`);
//! core 0 merges the cores' answers, and for a full diff adds the
//! baseline's stripes that hold data (the log's extents over them win).
//!
//! The diff runs as a control operation, so no drain's commit or volume
//! change drops a table under the walk.

use super::addr::{LogAddr, ZERO};
use super::msg::{DiffQuery, Msg};
use super::partition::Partitions;
use super::request::{Extent, LogEntryKind, Reply};
use super::shard::Shard;

/// Table entries a core looks at per poll: each costs a lookup in every
/// newer table of the range (`next_holder`), so as many as the drain's
/// walk takes at once.
const WALK_PER_POLL: usize = 64;

/// One core's walk of its tables for a diff.
pub(super) struct DiffWalk {
    query: DiffQuery,
    tables: Vec<u32>,
    table: usize,
    at: (usize, usize),
    /// (lba, zero), unsorted, a block possibly twice.
    found: Vec<(u32, bool)>,
}

impl DiffWalk {
    pub(super) fn new(parts: &Partitions, query: DiffQuery) -> DiffWalk {
        let tables = parts.sealed().iter().map(|(p, _)| *p).filter(|&p| p > query.lo && p <= query.hi).collect();
        DiffWalk { query, tables, table: 0, at: (0, 0), found: Vec::new() }
    }

    /// Walks up to `budget` table entries; whether the walk is over.
    pub(super) fn step(&mut self, parts: &Partitions, budget: usize) -> bool {
        let mut out = [(0u32, 0 as LogAddr); WALK_PER_POLL];
        let budget = budget.min(WALK_PER_POLL);
        let q = self.query;
        while let Some(&t) = self.tables.get(self.table) {
            let sealed = parts.sealed();
            let i = sealed.binary_search_by_key(&t, |(p, _)| *p).expect("no table drops while a diff runs");
            let (n, next) = sealed[i].1.read_from(self.at, &mut out[..budget]);
            let newest = |lba: u32| parts.next_holder(lba, t, q.hi).is_none();
            let wanted = |lba: u32| (q.lba_start..q.lba_end).contains(&u64::from(lba));
            self.found.extend(
                out[..n].iter().filter(|&&(lba, _)| wanted(lba) && newest(lba)).map(|&(lba, addr)| (lba, addr == ZERO)),
            );
            if n < budget {
                (self.table, self.at) = (self.table + 1, (0, 0));
            } else {
                self.at = next;
                return false;
            }
        }
        true
    }

    /// The blocks found, as merged extents in LBA order.
    pub(super) fn into_extents(mut self) -> Vec<Extent> {
        self.found.sort_unstable();
        // A block seen twice (moved between slices) keeps one version.
        self.found.dedup_by_key(|&mut (lba, _)| lba);
        let blocks = self.found.iter().map(|&(lba, zero)| Extent { lba: u64::from(lba), blocks: 1, kind: kind(zero) });
        merged(blocks)
    }
}

fn kind(zero: bool) -> LogEntryKind {
    if zero {
        LogEntryKind::Zero
    } else {
        LogEntryKind::Data
    }
}

/// Joins neighbouring extents of one kind; `extents` are in LBA order and
/// do not overlap.
fn merged(extents: impl IntoIterator<Item = Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in extents {
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.lba + last.blocks == e.lba => last.blocks += e.blocks,
            _ => out.push(e),
        }
    }
    out
}

/// The diff's answer from every core's extents (disjoint: each core owns
/// its stripes) and, for a full diff, the baseline's runs of data
/// (`baseline`, in LBA order), which the log's extents cover where they
/// overlap.
pub(super) fn combine(mut log: Vec<Extent>, baseline: &[(u64, u64)]) -> Vec<Extent> {
    log.sort_unstable_by_key(|e| e.lba);
    let mut out = Vec::with_capacity(log.len() + baseline.len());
    // The first log extent that may reach into the current run.
    let mut first = 0;
    for &(start, end) in baseline {
        while log.get(first).is_some_and(|e| e.lba + e.blocks <= start) {
            first += 1;
        }
        let mut at = start;
        for e in log[first..].iter().take_while(|e| e.lba < end) {
            if e.lba > at {
                out.push(Extent { lba: at, blocks: e.lba - at, kind: LogEntryKind::Data });
            }
            at = at.max(e.lba + e.blocks);
        }
        if at < end {
            out.push(Extent { lba: at, blocks: end - at, kind: LogEntryKind::Data });
        }
    }
    out.append(&mut log);
    out.sort_unstable_by_key(|e| e.lba);
    merged(out)
}

/// Core 0's diff job: the cores' extents, as they answer.
pub(super) struct DiffJob {
    query: DiffQuery,
    /// A full diff (no base volume) adds the baseline's stripes.
    full: bool,
    acks: u32,
    extents: Vec<Extent>,
}

impl DiffJob {
    pub(super) fn new(query: DiffQuery, full: bool) -> DiffJob {
        DiffJob { query, full, acks: 0, extents: Vec::new() }
    }

    /// A core's extents; whether every one of `cores` answered.
    fn answered(&mut self, mut part: Vec<Extent>, cores: u32) -> bool {
        self.acks += 1;
        self.extents.append(&mut part);
        self.acks == cores
    }
}

impl Shard {
    /// Core 0 runs diff `job`: every core walks its tables.
    pub(super) fn start_diff_job(&mut self, job: DiffJob) {
        let query = job.query;
        self.ctl_mut().diff = Some(job);
        for core in 0..self.shared.cores {
            self.send(core, Msg::Diff(query));
        }
    }

    /// Core 0: a core's extents for the running diff; the answer once every
    /// core's are in.
    pub(super) fn on_diff_done(&mut self, part: Vec<Extent>) {
        let cores = self.shared.cores;
        let job = self.ctl_mut().diff.as_mut().expect("diff answers come while a diff runs");
        if !job.answered(part, cores) {
            return;
        }
        let job = self.ctl_mut().diff.take().expect("checked");
        let (q, sb) = (job.query, self.shared.geo.stripe_blocks);
        let baseline = if job.full { self.shared.baseline.runs(q.lba_start, q.lba_end, sb) } else { Vec::new() };
        self.finish_control(Ok(Reply::Extents(combine(job.extents, &baseline))));
    }

    /// `Msg::Diff`: starts this core's walk.
    pub(super) fn start_diff(&mut self, query: DiffQuery) {
        debug_assert!(self.diff.is_none(), "one diff at a time (a control operation)");
        self.diff = Some(DiffWalk::new(&self.parts, query));
    }

    /// A slice of the walk; answers core 0 when it is over.
    pub(super) fn advance_diff(&mut self) -> usize {
        let Some(walk) = self.diff.as_mut() else { return 0 };
        if !walk.step(&self.parts, WALK_PER_POLL) {
            return 1;
        }
        let extents = self.diff.take().expect("walking").into_extents();
        self.send(0, Msg::DiffDone { extents });
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(lba: u64, blocks: u64, zero: bool) -> Extent {
        Extent { lba, blocks, kind: kind(zero) }
    }

    #[test]
    fn a_walk_keeps_the_newest_version_up_to_hi_and_merges_runs() {
        let mut parts = Partitions::new(1);
        for lba in [3u32, 4, 5, 9] {
            parts.record(1, lba, 100 + lba);
        }
        parts.seal_up_to(2);
        parts.record(2, 4, ZERO);
        parts.record(2, 5, ZERO);
        parts.record(2, 20, 7);
        parts.seal_up_to(3);
        parts.record(3, 3, 8);
        parts.seal_up_to(4);
        let diff = |lo, hi, start, end| {
            let mut w = DiffWalk::new(&parts, DiffQuery { lo, hi, lba_start: start, lba_end: end });
            // A budget of one entry a slice: every slice boundary is crossed.
            while !w.step(&parts, 1) {}
            w.into_extents()
        };
        assert_eq!(diff(0, 2, 0, 100), vec![e(3, 1, false), e(4, 2, true), e(9, 1, false), e(20, 1, false)]);
        assert_eq!(diff(1, 2, 0, 100), vec![e(4, 2, true), e(20, 1, false)]);
        assert_eq!(diff(0, 3, 0, 100), vec![e(3, 1, false), e(4, 2, true), e(9, 1, false), e(20, 1, false)]);
        assert_eq!(diff(2, 3, 0, 100), vec![e(3, 1, false)]);
        assert_eq!(diff(0, 3, 4, 10), vec![e(4, 2, true), e(9, 1, false)]);
        assert_eq!(diff(3, 3, 0, 100), vec![]);
    }

    #[test]
    fn the_log_covers_the_baseline_where_they_overlap() {
        let log = vec![e(30, 2, true), e(2, 2, true), e(8, 4, false), e(50, 1, false)];
        let baseline = [(0, 10), (20, 40)];
        assert_eq!(
            combine(log, &baseline),
            vec![
                e(0, 2, false),
                e(2, 2, true),
                e(4, 8, false),
                e(20, 10, false),
                e(30, 2, true),
                e(32, 8, false),
                e(50, 1, false)
            ]
        );
        assert_eq!(combine(vec![e(5, 1, false)], &[]), vec![e(5, 1, false)]);
        // A log extent across two runs of the baseline.
        assert_eq!(
            combine(vec![e(8, 4, true)], &[(0, 10), (10, 20)]),
            vec![e(0, 8, false), e(8, 4, true), e(12, 8, false)]
        );
        assert_eq!(combine(vec![], &[(0, 4), (4, 8)]), vec![e(0, 8, false)]);
    }
}
