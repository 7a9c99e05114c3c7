//! Per-core partition tables: which entries each partition holds, so a read
//! as of a snapshot volume finds the newest version at or below the
//! volume's partition.
//!
//! A table maps each block a partition holds to its newest version there.
//! The open partition's table takes a block per retired write (a rewrite
//! replaces the entry, so it grows with the blocks written, not with the
//! writes); sealing it freezes it as it is, in constant time: a snapshot
//! does no per-block work on the I/O path.

use super::addr::{LogAddr, ZERO};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a block number with one multiplication: keys are small integers,
/// not attacker-chosen strings, and the table is on the write path.
#[derive(Default)]
pub struct BlockHasher(u64);

impl Hasher for BlockHasher {
    /// The product's well-mixed high bits, rotated down: the table picks
    /// buckets by the low bits, which alone depend only on the key's low
    /// bits (blocks a power of two apart would share a few buckets).
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Sub-tables per table. A hash table grows by doubling, rehashing every
/// entry inline on the write path; split in 64, a table grows one 64th at a
/// time, so no single write pays for rehashing millions of blocks.
const SUB_TABLES: usize = 64;

type SubTable = HashMap<u32, LogAddr, BuildHasherDefault<BlockHasher>>;

/// A partition's blocks: local block number to the newest version's address.
#[derive(Default)]
pub struct Table {
    /// Empty until the first block, then `SUB_TABLES` of them.
    subs: Vec<SubTable>,
}

impl Table {
    /// The sub-table of `lba`: the top bits of its hash (the sub-tables
    /// pick buckets by lower ones).
    fn sub_of(lba: u32) -> usize {
        let mut h = BlockHasher::default();
        h.write_u32(lba);
        (h.0 >> (64 - SUB_TABLES.trailing_zeros())) as usize
    }

    pub fn get(&self, lba: u32) -> Option<LogAddr> {
        self.subs.get(Self::sub_of(lba))?.get(&lba).copied()
    }

    pub fn contains(&self, lba: u32) -> bool {
        self.get(lba).is_some()
    }

    fn sub_mut(&mut self, lba: u32) -> &mut SubTable {
        if self.subs.is_empty() {
            self.subs.resize_with(SUB_TABLES, SubTable::default);
        }
        &mut self.subs[Self::sub_of(lba)]
    }

    pub fn insert(&mut self, lba: u32, addr: LogAddr) {
        self.sub_mut(lba).insert(lba, addr);
    }

    /// Inserts unless `lba` already has a version here.
    pub fn insert_if_absent(&mut self, lba: u32, addr: LogAddr) {
        self.sub_mut(lba).entry(lba).or_insert(addr);
    }

    /// Points `lba` at `to` if it is at `from` or absent, in one lookup.
    fn repoint(&mut self, lba: u32, from: LogAddr, to: LogAddr) {
        use std::collections::hash_map::Entry;
        match self.sub_mut(lba).entry(lba) {
            Entry::Occupied(mut e) if *e.get() == from => {
                e.insert(to);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(to);
            }
        }
    }

    pub fn remove(&mut self, lba: u32) {
        if let Some(sub) = self.subs.get_mut(Self::sub_of(lba)) {
            sub.remove(&lba);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.subs.iter().all(HashMap::is_empty)
    }

    pub fn len(&self) -> usize {
        self.subs.iter().map(HashMap::len).sum()
    }

    /// Every (block, address), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, LogAddr)> + '_ {
        self.subs.iter().flat_map(|sub| sub.iter().map(|(&lba, &addr)| (lba, addr)))
    }
}

pub struct Partitions {
    open_partition: u32,
    open: Table,
    /// (partition, table), ascending by partition.
    sealed: Vec<(u32, Table)>,
}

impl Partitions {
    pub fn new(open_partition: u32) -> Partitions {
        Partitions { open_partition, open: Table::default(), sealed: Vec::new() }
    }

    /// Records a retired entry. Entries retire in log order, so a newer
    /// partition means the open one was sealed.
    pub fn record(&mut self, partition: u32, local: u32, addr: LogAddr) {
        if partition != self.open_partition {
            self.seal_up_to(partition);
        }
        self.open.insert(local, addr);
    }

    /// Freezes the open partition if `partition` is newer, opening `partition`.
    pub fn seal_up_to(&mut self, partition: u32) {
        if partition <= self.open_partition {
            return;
        }
        if !self.open.is_empty() {
            let frozen = std::mem::take(&mut self.open);
            self.sealed.push((self.open_partition, frozen));
        }
        self.open_partition = partition;
    }

    /// Sealed partitions, ascending, with their tables.
    pub fn sealed(&self) -> &[(u32, Table)] {
        &self.sealed
    }

    /// The open partition's table.
    pub fn open_table(&self) -> &Table {
        &self.open
    }

    /// Forgets the sealed partitions up to `p` (folded into the baseline).
    pub fn drop_up_to(&mut self, p: u32) {
        self.sealed.retain(|(q, _)| *q > p);
    }

    fn table(&self, p: u32) -> Option<&Table> {
        let i = self.sealed.binary_search_by_key(&p, |(q, _)| *q).ok()?;
        Some(&self.sealed[i].1)
    }

    /// `local`'s newest version within sealed partition `p` exactly.
    pub fn lookup_in(&self, p: u32, local: u32) -> Option<LogAddr> {
        self.table(p)?.get(local)
    }

    /// Applies the cleaner's moves out of partition `from` into `to` (see
    /// `Shard::relocate`): moved blocks leave `from`'s table, and so do the
    /// `freed` victim's blocks it still lists (dead versions). The work is
    /// per block of the victim, not per block of the partition.
    pub fn relocate(
        &mut self,
        from: u32,
        to: u32,
        moves: &[(u32, LogAddr, LogAddr)],
        freed: impl Iterator<Item = (u32, LogAddr)>,
    ) {
        let in_place = from == to && to != self.open_partition;
        let table = if from == self.open_partition {
            Some(&mut self.open)
        } else {
            self.sealed.binary_search_by_key(&from, |(q, _)| *q).ok().map(|i| &mut self.sealed[i].1)
        };
        if let Some(table) = table {
            if in_place {
                // What the general case does, in one lookup per moved block
                // instead of three (a live zero block is already listed).
                for &(lba, src, dst) in moves.iter().filter(|m| m.1 != ZERO) {
                    table.repoint(lba, src, dst);
                }
                for (lba, addr) in freed {
                    if table.get(lba) == Some(addr) {
                        table.remove(lba);
                    }
                }
                return;
            }
            let moved = moves.iter().filter(|m| m.1 != ZERO).map(|&(lba, src, _)| (lba, src));
            for (lba, addr) in moved.chain(freed) {
                if table.get(lba) == Some(addr) {
                    table.remove(lba);
                }
            }
        }
        let mut inserts = moves
            .iter()
            .filter(|m| m.1 == ZERO || m.2 != ZERO)
            .map(|&(lba, src, dst)| (lba, if src == ZERO { ZERO } else { dst }))
            .peekable();
        if inserts.peek().is_none() || to == self.open_partition {
            return;
        }
        let i = match self.sealed.binary_search_by_key(&to, |(q, _)| *q) {
            Ok(i) => i,
            Err(i) => {
                self.sealed.insert(i, (to, Table::default()));
                i
            }
        };
        // A move enters a partition only where it holds no version of the
        // LBA; should one be there, it wins.
        let table = &mut self.sealed[i].1;
        for (lba, addr) in inserts {
            table.insert_if_absent(lba, addr);
        }
    }

    /// The first sealed partition in `(after, upto]` holding `local`.
    pub fn next_holder(&self, local: u32, after: u32, upto: u32) -> Option<u32> {
        self.sealed
            .iter()
            .filter(|(p, _)| *p > after && *p <= upto)
            .find(|(_, table)| table.contains(local))
            .map(|(p, _)| *p)
    }

    /// The newest version of `local` in a sealed partition at or below
    /// `partition`.
    pub fn lookup_as_of(&self, local: u32, partition: u32) -> Option<LogAddr> {
        self.sealed.iter().rev().filter(|(p, _)| *p <= partition).find_map(|(_, table)| table.get(local))
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
