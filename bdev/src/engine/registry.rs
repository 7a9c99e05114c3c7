//! Core 0's segment registry: the segments in use, as the next checkpoint
//! lists them. Barriers report what the cores opened and closed; compaction
//! and the drain take out what they free once a checkpoint without it is
//! durable.

use crate::format::SegmentRecord;
use std::collections::BTreeMap;

/// A segment in use, as the registry knows it: its checkpoint record, and
/// the newest partition of its entries (a drain up to that partition leaves
/// nothing live in it). Mount recomputes the latter from summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub record: SegmentRecord,
    pub last_partition: u32,
}

#[derive(Default)]
pub(super) struct Registry {
    segments: BTreeMap<u32, SegmentInfo>,
}

impl Registry {
    pub(super) fn new(segments: impl Iterator<Item = SegmentInfo>) -> Registry {
        Registry { segments: segments.map(|s| (s.record.segno, s)).collect() }
    }

    /// Takes a segment as a barrier reported it (newly opened, or closed).
    pub(super) fn insert(&mut self, s: SegmentInfo) {
        self.segments.insert(s.record.segno, s);
    }

    pub(super) fn remove(&mut self, segno: u32) {
        self.segments.remove(&segno);
    }

    pub(super) fn get(&self, segno: u32) -> Option<&SegmentInfo> {
        self.segments.get(&segno)
    }

    pub(super) fn contains(&self, segno: u32) -> bool {
        self.segments.contains_key(&segno)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.segments.values()
    }

    pub(super) fn records(&self) -> impl Iterator<Item = SegmentRecord> + '_ {
        self.segments.values().map(|s| s.record)
    }

    /// Segments a drain to `target` empties: closed, every entry drained.
    pub(super) fn drained_by(&self, target: u32) -> Vec<u32> {
        self.iter().filter(|s| !s.record.open && s.last_partition <= target).map(|s| s.record.segno).collect()
    }

    /// Partitions holding log entries that have not drained (an upper
    /// bound: the spans of the segments in use, and the open partition).
    pub(super) fn partitions_in_log(&self, baseline_partition: u32, open_partition: u32) -> u32 {
        let mut spans: Vec<(u32, u32)> = self
            .iter()
            .map(|s| (s.record.partition.max(baseline_partition + 1), s.last_partition))
            .chain(std::iter::once((open_partition, open_partition)))
            .filter(|(a, b)| a <= b)
            .collect();
        spans.sort_unstable();
        let (mut count, mut covered) = (0u32, 0u32);
        for (a, b) in spans {
            let from = a.max(covered.saturating_add(1));
            if from <= b {
                count += b - from + 1;
            }
            covered = covered.max(b);
        }
        count
    }
}
