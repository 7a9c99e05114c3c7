//! Per-core partition tables: which entries each partition holds, so a read
//! as of a snapshot volume finds the newest version at or below the
//! volume's partition.
//!
//! The open partition is an append-only list (a push per block written);
//! sealing sorts it by LBA and keeps the last entry of each block, giving a
//! frozen table searched by bisection.

use super::addr::{LogAddr, ZERO};
use std::collections::HashSet;
use std::ops::Range;

pub struct Partitions {
    open_partition: u32,
    /// `lba << 32 | addr` words in append order (lba local to the core).
    open: Vec<u64>,
    /// (partition, sorted words), ascending by partition.
    sealed: Vec<(u32, Vec<u64>)>,
}

impl Partitions {
    pub fn new(open_partition: u32) -> Partitions {
        Partitions { open_partition, open: Vec::new(), sealed: Vec::new() }
    }

    /// Records a retired entry. Entries retire in log order, so a newer
    /// partition means the open one was sealed.
    pub fn record(&mut self, partition: u32, local: u32, addr: LogAddr) {
        if partition != self.open_partition {
            self.seal_up_to(partition);
        }
        self.open.push(u64::from(local) << 32 | u64::from(addr));
    }

    /// Freezes the open partition if `partition` is newer, opening `partition`.
    pub fn seal_up_to(&mut self, partition: u32) {
        if partition <= self.open_partition {
            return;
        }
        if !self.open.is_empty() {
            let mut words = std::mem::take(&mut self.open);
            words.sort_by_key(|w| w >> 32); // stable: equal LBAs stay in log order
            let mut frozen: Vec<u64> = Vec::with_capacity(words.len());
            for w in words {
                match frozen.last_mut() {
                    Some(last) if *last >> 32 == w >> 32 => *last = w,
                    _ => frozen.push(w),
                }
            }
            self.sealed.push((self.open_partition, frozen));
        }
        self.open_partition = partition;
    }

    /// Sealed partitions, ascending, with their sorted `lba << 32 | addr` words.
    pub fn sealed(&self) -> &[(u32, Vec<u64>)] {
        &self.sealed
    }

    /// Forgets the sealed partitions up to `p` (folded into the baseline).
    pub fn drop_up_to(&mut self, p: u32) {
        self.sealed.retain(|(q, _)| *q > p);
    }

    /// `local`'s newest version within sealed partition `p` exactly.
    pub fn lookup_in(&self, p: u32, local: u32) -> Option<LogAddr> {
        let i = self.sealed.binary_search_by_key(&p, |(q, _)| *q).ok()?;
        let words = &self.sealed[i].1;
        words.binary_search_by_key(&local, |w| (w >> 32) as u32).ok().map(|j| words[j] as u32)
    }

    /// Applies the cleaner's moves out of partition `from` into `to` (see
    /// `Shard::relocate`), and drops `from`'s entries left in `victim`.
    pub fn relocate(&mut self, from: u32, to: u32, moves: &[(u32, LogAddr, LogAddr)], victim: Option<Range<LogAddr>>) {
        let moved: HashSet<(u32, LogAddr)> =
            moves.iter().filter(|m| m.1 != ZERO).map(|&(lba, src, _)| (lba, src)).collect();
        let keep = |w: &u64| {
            let (lba, addr) = ((w >> 32) as u32, *w as u32);
            !victim.as_ref().is_some_and(|v| v.contains(&addr)) && !moved.contains(&(lba, addr))
        };
        if from == self.open_partition {
            self.open.retain(keep);
        } else if let Ok(i) = self.sealed.binary_search_by_key(&from, |(q, _)| *q) {
            self.sealed[i].1.retain(keep);
        }
        let mut inserts: Vec<u64> = moves
            .iter()
            .filter(|m| m.1 == ZERO || m.2 != ZERO)
            .map(|&(lba, src, dst)| u64::from(lba) << 32 | u64::from(if src == ZERO { ZERO } else { dst }))
            .collect();
        if inserts.is_empty() || to == self.open_partition {
            return;
        }
        let i = match self.sealed.binary_search_by_key(&to, |(q, _)| *q) {
            Ok(i) => i,
            Err(i) => {
                self.sealed.insert(i, (to, Vec::new()));
                i
            }
        };
        // A move enters a partition only where it holds no version of the
        // LBA; should one be there, it wins.
        inserts.sort_by_key(|w| w >> 32);
        inserts.dedup_by_key(|w| *w >> 32);
        let old = std::mem::take(&mut self.sealed[i].1);
        let mut merged = Vec::with_capacity(old.len() + inserts.len());
        let (mut a, mut b) = (old.into_iter().peekable(), inserts.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (Some(x), Some(y)) if x >> 32 == y >> 32 => {
                    b.next();
                    a.next()
                }
                (Some(x), Some(y)) if x >> 32 < y >> 32 => a.next(),
                _ => b.next(),
            };
            merged.push(next.expect("peeked"));
        }
        self.sealed[i].1 = merged;
    }

    /// The first sealed partition in `(after, upto]` holding `local`.
    pub fn next_holder(&self, local: u32, after: u32, upto: u32) -> Option<u32> {
        self.sealed
            .iter()
            .filter(|(p, _)| *p > after && *p <= upto)
            .find(|(_, words)| words.binary_search_by_key(&local, |w| (w >> 32) as u32).is_ok())
            .map(|(p, _)| *p)
    }

    /// The newest version of `local` in a sealed partition at or below
    /// `partition`.
    pub fn lookup_as_of(&self, local: u32, partition: u32) -> Option<LogAddr> {
        self.sealed.iter().rev().filter(|(p, _)| *p <= partition).find_map(|(_, words)| {
            words.binary_search_by_key(&local, |w| (w >> 32) as u32).ok().map(|i| words[i] as u32)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_of_a_partition_see_its_newest_entry_and_nothing_later() {
        let mut p = Partitions::new(1);
        p.record(1, 5, 100);
        p.record(1, 5, 101);
        p.record(2, 5, 200);
        p.record(2, 6, 201);
        p.seal_up_to(3);
        assert_eq!(p.lookup_as_of(5, 1), Some(101));
        assert_eq!(p.lookup_as_of(5, 2), Some(200));
        assert_eq!(p.lookup_as_of(6, 1), None);
        assert_eq!(p.lookup_as_of(5, 0), None);
    }
}
