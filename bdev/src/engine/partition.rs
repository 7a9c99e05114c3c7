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

/// Blocks a bucket holds before it splits in two. A split rehashes one
/// bucket, a few µs; a table that doubled as a whole (or a 64th of it at a
/// time, as before) rehashed thousands of blocks inline, on the write path
/// or in a compaction slice: 45-100 µs per growth of a 1,792-block 64th.
const BUCKET_BLOCKS: usize = 448;
/// Where buckets stop splitting: only a hash that fails to spread the
/// blocks would get there, and the bucket then simply grows.
const MAX_DEPTH: u32 = 32;

type Bucket = HashMap<u32, LogAddr, BuildHasherDefault<BlockHasher>>;

/// A partition's blocks: local block number to the newest version's address.
///
/// Extendible hashing: a directory, indexed by the top `depth` bits of a
/// block's `prefix`, points at buckets; a bucket of local depth `d` serves
/// the `2^(depth - d)` consecutive slots that share its `d`-bit prefix. A
/// full bucket splits by its next prefix bit, doubling the directory (4
/// bytes a slot, copied) only when its depth is the directory's. So the
/// table grows a bucket at a time, and nothing rehashes the whole table.
#[derive(Default)]
pub struct Table {
    /// Empty until the first block.
    dir: Vec<u32>,
    /// (local depth, blocks).
    buckets: Vec<(u32, Bucket)>,
    depth: u32,
}

/// The hash the directory is indexed by: a multiplicative hash other than
/// the buckets' own, so a bucket's blocks, which share its top bits here,
/// still spread over the bucket.
fn prefix(lba: u32) -> u64 {
    (u64::from(lba) ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The top `bits` bits of `h` (none for 0).
fn top(h: u64, bits: u32) -> usize {
    h.checked_shr(64 - bits).unwrap_or(0) as usize
}

impl Table {
    fn bucket(&self, lba: u32) -> Option<&Bucket> {
        let b = *self.dir.get(top(prefix(lba), self.depth))?;
        Some(&self.buckets[b as usize].1)
    }

    /// Applies `f` to `lba`'s bucket, splitting the bucket if it is full
    /// then.
    fn with_bucket<R>(&mut self, lba: u32, f: impl FnOnce(&mut Bucket) -> R) -> R {
        if self.dir.is_empty() {
            self.dir.push(0);
            self.buckets.push((0, Bucket::default()));
        }
        let b = self.dir[top(prefix(lba), self.depth)] as usize;
        let r = f(&mut self.buckets[b].1);
        if self.buckets[b].1.len() >= BUCKET_BLOCKS && self.buckets[b].0 < MAX_DEPTH {
            self.split(b, prefix(lba));
        }
        r
    }

    /// Splits bucket `b`, which holds a block of prefix `h`: the blocks
    /// whose next prefix bit is set move to a new bucket, with the upper
    /// half of `b`'s slots.
    fn split(&mut self, b: usize, h: u64) {
        let d = self.buckets[b].0;
        if d == self.depth {
            self.dir = self.dir.iter().flat_map(|&x| [x, x]).collect();
            self.depth += 1;
        }
        let mut low = Bucket::with_capacity_and_hasher(BUCKET_BLOCKS, Default::default());
        let mut high = Bucket::with_capacity_and_hasher(BUCKET_BLOCKS, Default::default());
        for (lba, addr) in std::mem::take(&mut self.buckets[b].1) {
            let half = if top(prefix(lba), d + 1) & 1 == 0 { &mut low } else { &mut high };
            half.insert(lba, addr);
        }
        let new = self.buckets.len() as u32;
        self.buckets[b] = (d + 1, low);
        self.buckets.push((d + 1, high));
        let span = 1usize << (self.depth - d);
        let first = top(h, d) << (self.depth - d);
        for slot in &mut self.dir[first + span / 2..first + span] {
            *slot = new;
        }
    }

    pub fn get(&self, lba: u32) -> Option<LogAddr> {
        self.bucket(lba)?.get(&lba).copied()
    }

    pub fn contains(&self, lba: u32) -> bool {
        self.get(lba).is_some()
    }

    pub fn insert(&mut self, lba: u32, addr: LogAddr) {
        self.with_bucket(lba, |b| b.insert(lba, addr));
    }

    /// Inserts unless `lba` already has a version here.
    pub fn insert_if_absent(&mut self, lba: u32, addr: LogAddr) {
        self.with_bucket(lba, |b| {
            b.entry(lba).or_insert(addr);
        });
    }

    /// Points `lba` at `to` if it is at `from` or absent, in one lookup.
    fn repoint(&mut self, lba: u32, from: LogAddr, to: LogAddr) {
        use std::collections::hash_map::Entry;
        self.with_bucket(lba, |b| match b.entry(lba) {
            Entry::Occupied(mut e) if *e.get() == from => {
                e.insert(to);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(to);
            }
        })
    }

    /// Removes `lba` if it is at `addr`, in one lookup.
    fn remove_if(&mut self, lba: u32, addr: LogAddr) {
        use std::collections::hash_map::Entry;
        if let Some(&b) = self.dir.get(top(prefix(lba), self.depth)) {
            if let Entry::Occupied(e) = self.buckets[b as usize].1.entry(lba) {
                if *e.get() == addr {
                    e.remove();
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|(_, b)| b.is_empty())
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(|(_, b)| b.len()).sum()
    }

    /// Fills `out` with (block, address) pairs from position `from` on, in
    /// an order that holds while the table is unchanged; returns how many,
    /// and the position after them (`(0, 0)` is the start). So a table can
    /// be walked a slice at a time.
    pub fn read_from(&self, from: (usize, usize), out: &mut [(u32, LogAddr)]) -> (usize, (usize, usize)) {
        let (mut bucket, mut skip) = from;
        let mut n = 0;
        while n < out.len() {
            let Some((_, b)) = self.buckets.get(bucket) else { break };
            let taken = b.iter().skip(skip).take(out.len() - n).map(|(&lba, &addr)| (lba, addr));
            let before = n;
            for pair in taken {
                out[n] = pair;
                n += 1;
            }
            skip += n - before;
            if skip >= b.len() {
                (bucket, skip) = (bucket + 1, 0);
            }
        }
        (n, (bucket, skip))
    }

    /// Every (block, address), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, LogAddr)> + '_ {
        self.buckets.iter().flat_map(|(_, b)| b.iter().map(|(&lba, &addr)| (lba, addr)))
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

    fn table_mut(&mut self, p: u32) -> Option<&mut Table> {
        if p == self.open_partition {
            Some(&mut self.open)
        } else {
            self.sealed.binary_search_by_key(&p, |(q, _)| *q).ok().map(|i| &mut self.sealed[i].1)
        }
    }

    /// Drops `local` from partition `p`'s table if it is at `addr` there (a
    /// dead version whose segment is being freed).
    pub fn remove_if(&mut self, p: u32, local: u32, addr: LogAddr) {
        if let Some(table) = self.table_mut(p) {
            table.remove_if(local, addr);
        }
    }

    /// Applies compaction's moves out of partition `from` into `to` (see
    /// `Shard::relocate`): moved blocks leave `from`'s table and enter
    /// `to`'s. The work is per block moved, not per block of the partition.
    pub fn relocate(&mut self, from: u32, to: u32, moves: &[(u32, LogAddr, LogAddr)]) {
        let in_place = from == to && to != self.open_partition;
        if let Some(table) = self.table_mut(from) {
            if in_place {
                // What the general case does, in one lookup per moved block
                // instead of three (a live zero block is already listed).
                for &(lba, src, dst) in moves.iter().filter(|m| m.1 != ZERO) {
                    table.repoint(lba, src, dst);
                }
                return;
            }
            for &(lba, src, _) in moves.iter().filter(|m| m.1 != ZERO) {
                table.remove_if(lba, src);
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
    use crate::engine::addr::NONE;

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

    #[test]
    fn a_table_split_into_many_buckets_keeps_every_block() {
        let mut table = Table::default();
        let mut model = HashMap::new();
        let mut x = 7u64;
        for i in 0..150_000u32 {
            // A multiplicative sequence: blocks spread and revisited.
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let lba = (x >> 40) as u32 % 100_000;
            match i % 5 {
                0 => {
                    // Another address than the block's keeps it.
                    table.remove_if(lba, NONE);
                    if let Some(addr) = model.remove(&lba) {
                        table.remove_if(lba, addr);
                    }
                }
                1 => {
                    table.insert_if_absent(lba, i);
                    model.entry(lba).or_insert(i);
                }
                2 => {
                    table.repoint(lba, i - 1, i);
                    let v = model.entry(lba).or_insert(i);
                    if *v == i - 1 {
                        *v = i;
                    }
                }
                _ => {
                    table.insert(lba, i);
                    model.insert(lba, i);
                }
            }
        }
        assert!(table.buckets.len() > 100, "{} buckets", table.buckets.len());
        assert!(table.buckets.iter().all(|(_, b)| b.len() <= BUCKET_BLOCKS));
        assert_eq!(table.len(), model.len());
        for lba in 0..100_000 {
            assert_eq!(table.get(lba), model.get(&lba).copied(), "block {lba}");
        }
        let mut listed: Vec<(u32, LogAddr)> = table.iter().collect();
        let mut walked = Vec::new();
        let (mut out, mut at) = ([(0, 0); 100], (0, 0));
        loop {
            let (n, next) = table.read_from(at, &mut out);
            walked.extend_from_slice(&out[..n]);
            if n < out.len() {
                break;
            }
            at = next;
        }
        assert_eq!(walked, listed, "a walk in slices lists the table in its order");
        let mut expected: Vec<(u32, LogAddr)> = model.into_iter().collect();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }
}
