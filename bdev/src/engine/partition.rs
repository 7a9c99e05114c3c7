//! Per-core partition tables: which entries each partition holds, so a read
//! as of a snapshot volume finds the newest version at or below the
//! volume's partition.
//!
//! The open partition is an append-only list (a push per block written);
//! sealing sorts it by LBA and keeps the last entry of each block, giving a
//! frozen table searched by bisection.

use super::addr::LogAddr;

pub struct Partitions {
    open_partition: u32,
    /// `lba << 32 | addr` words in append order (lba local to the core).
    open: Vec<u64>,
    /// (partition, sorted words), ascending by partition.
    sealed: Vec<(u32, Box<[u64]>)>,
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
            self.sealed.push((self.open_partition, frozen.into_boxed_slice()));
        }
        self.open_partition = partition;
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
