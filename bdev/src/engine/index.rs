//! The per-core block index shard: for each LBA of the stripes a core owns,
//! the log address of its newest version.
//!
//! Two levels: a table with one leaf per owned stripe, and leaves that are
//! sparse (sorted `offset << 32 | address` words, 8 bytes a block, grown by
//! half) while few blocks are mapped and dense (4 bytes a block) once that is
//! smaller. Sparse leaves grow by half their length, so a mapped block costs
//! at most 12 bytes in a sparse leaf (8 with one or two blocks) and 8 bytes in
//! a dense one at the switch. The table itself (one leaf header per owned
//! stripe) is allocated at mount, proportional to the volume, not to what is
//! mapped. `tests/index_memory.rs` measures it.

use super::addr::{LogAddr, NONE};

enum Leaf {
    Sparse(Vec<u64>),
    Dense(Box<[u32]>),
}

pub struct BlockIndex {
    leaves: Vec<Leaf>,
    stripe_blocks: u32,
    cores: u32,
    core: u32,
    mapped: u64,
}

impl BlockIndex {
    /// An empty index for core `core`, which owns every `cores`-th stripe
    /// (from stripe `core` on) of a volume of `volume_blocks`.
    pub fn new(volume_blocks: u64, stripe_blocks: u32, cores: u32, core: u32) -> BlockIndex {
        let stripes = volume_blocks.div_ceil(u64::from(stripe_blocks));
        let owned = stripes.div_ceil(u64::from(cores)) as usize;
        let mut leaves = Vec::with_capacity(owned);
        leaves.resize_with(owned, || Leaf::Sparse(Vec::new()));
        BlockIndex { leaves, stripe_blocks, cores, core, mapped: 0 }
    }

    /// An index for core `core` (as [`Self::new`]) holding `versions`:
    /// (lba, address) pairs in the order they were written, newest last.
    /// Mount builds it this way: the versions sorted into their leaves by
    /// counting (two passes), each leaf allocated once, where a `set` per
    /// version would grow sparse leaves a word at a time.
    pub fn from_versions(
        volume_blocks: u64,
        stripe_blocks: u32,
        cores: u32,
        core: u32,
        versions: &[(u64, LogAddr)],
    ) -> BlockIndex {
        let mut ix = BlockIndex::new(volume_blocks, stripe_blocks, cores, core);
        // starts[l]..starts[l + 1]: leaf l's versions in `by_leaf`.
        let mut starts = vec![0usize; ix.leaves.len() + 1];
        for v in versions {
            starts[ix.locate(v.0).0 + 1] += 1;
        }
        for l in 1..starts.len() {
            starts[l] += starts[l - 1];
        }
        let mut at = starts.clone();
        let mut by_leaf = vec![(0u32, NONE); versions.len()];
        for &(lba, addr) in versions {
            let (leaf, off) = ix.locate(lba);
            by_leaf[at[leaf]] = (off, addr);
            at[leaf] += 1;
        }
        for (leaf, bounds) in starts.windows(2).enumerate().filter(|(_, b)| b[0] < b[1]) {
            let run = &mut by_leaf[bounds[0]..bounds[1]];
            // Stable: a block's versions stay in write order, its last wins.
            run.sort_by_key(|v| v.0);
            let newest = run.iter().enumerate().filter(|(i, v)| run.get(i + 1).is_none_or(|n| n.0 != v.0));
            let mapped = newest.clone().count();
            ix.mapped += mapped as u64;
            // Dense where that is smaller, as `set` switches.
            ix.leaves[leaf] = if mapped * 8 >= stripe_blocks as usize * 4 {
                let mut d = vec![NONE; stripe_blocks as usize].into_boxed_slice();
                newest.for_each(|(_, &(off, addr))| d[off as usize] = addr);
                Leaf::Dense(d)
            } else {
                Leaf::Sparse(newest.map(|(_, &(off, addr))| u64::from(off) << 32 | u64::from(addr)).collect())
            };
        }
        ix
    }

    fn locate(&self, lba: u64) -> (usize, u32) {
        let stripe = lba / u64::from(self.stripe_blocks);
        ((stripe / u64::from(self.cores)) as usize, (lba % u64::from(self.stripe_blocks)) as u32)
    }

    /// The newest version of `lba`, or `None` if it was never written.
    pub fn get(&self, lba: u64) -> Option<LogAddr> {
        let (leaf, off) = self.locate(lba);
        let addr = match &self.leaves[leaf] {
            Leaf::Sparse(v) => {
                let i = v.binary_search_by_key(&off, |w| (w >> 32) as u32).ok()?;
                v[i] as u32
            }
            Leaf::Dense(d) => d[off as usize],
        };
        (addr != NONE).then_some(addr)
    }

    /// Maps `lba` to `addr` (a log address or `ZERO`).
    pub fn set(&mut self, lba: u64, addr: LogAddr) {
        debug_assert_ne!(addr, NONE);
        let (leaf, off) = self.locate(lba);
        let stripe_blocks = self.stripe_blocks as usize;
        let leaf = &mut self.leaves[leaf];
        match leaf {
            Leaf::Dense(d) => {
                if d[off as usize] == NONE {
                    self.mapped += 1;
                }
                d[off as usize] = addr;
            }
            Leaf::Sparse(v) => {
                let word = u64::from(off) << 32 | u64::from(addr);
                match v.binary_search_by_key(&off, |w| (w >> 32) as u32) {
                    Ok(i) => v[i] = word,
                    Err(i) => {
                        self.mapped += 1;
                        if (v.len() + 1) * 8 >= stripe_blocks * 4 {
                            let mut d = vec![NONE; stripe_blocks].into_boxed_slice();
                            for w in v.iter() {
                                d[(w >> 32) as usize] = *w as u32;
                            }
                            d[off as usize] = addr;
                            *leaf = Leaf::Dense(d);
                            return;
                        }
                        if v.len() == v.capacity() {
                            v.reserve_exact((v.len() / 2).max(1));
                        }
                        v.insert(i, word);
                    }
                }
            }
        }
    }

    /// Unmaps `lba` (its version drained into the baseline, which it reads
    /// from again).
    pub fn unmap(&mut self, lba: u64) {
        let (leaf, off) = self.locate(lba);
        let dropped = match &mut self.leaves[leaf] {
            Leaf::Sparse(v) => match v.binary_search_by_key(&off, |w| (w >> 32) as u32) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
            Leaf::Dense(d) => std::mem::replace(&mut d[off as usize], NONE) != NONE,
        };
        self.mapped -= u64::from(dropped);
    }

    /// Calls `f(lba, addr)` for every mapped block.
    pub fn for_each(&self, mut f: impl FnMut(u64, LogAddr)) {
        let (stripe, cores) = (u64::from(self.stripe_blocks), u64::from(self.cores));
        for (i, leaf) in self.leaves.iter().enumerate() {
            // Leaf i covers the core's i-th stripe: stripe i * cores + core.
            let base = |off: u64| (i as u64 * cores + u64::from(self.core)) * stripe + off;
            match leaf {
                Leaf::Sparse(v) => v.iter().for_each(|w| f(base(w >> 32), *w as u32)),
                Leaf::Dense(d) => {
                    d.iter().enumerate().filter(|(_, a)| **a != NONE).for_each(|(o, a)| f(base(o as u64), *a))
                }
            }
        }
    }

    /// Blocks with a version.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::addr::ZERO;

    #[test]
    fn unset_blocks_have_no_version() {
        let ix = BlockIndex::new(1 << 20, 256, 2, 0);
        assert_eq!(ix.get(12345 * 2), None);
    }

    #[test]
    fn set_then_get_across_the_sparse_to_dense_switch() {
        let mut ix = BlockIndex::new(4096, 256, 1, 0);
        for off in (0..256).rev() {
            ix.set(256 + off, off as u32 * 3);
            assert_eq!(ix.get(256 + off), Some(off as u32 * 3));
        }
        for off in 0..256 {
            assert_eq!(ix.get(256 + off), Some(off as u32 * 3), "after densifying");
        }
        ix.set(300, ZERO);
        assert_eq!(ix.get(300), Some(ZERO));
        assert_eq!(ix.mapped(), 256);
    }

    #[test]
    fn built_from_versions_as_set_one_by_one() {
        // Core 1 of 2, stripes of 16: leaves going sparse and dense, blocks
        // rewritten, a zero block, in a scattered write order.
        let mut versions = Vec::new();
        let mut x = 11u64;
        for i in 0..3000u32 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let stripe = 2 * ((x >> 33) % 40) + 1;
            // Stripe 1 gets many blocks (dense), the others a few (sparse).
            let off = if stripe == 1 { (x >> 20) % 16 } else { (x >> 20) % 3 };
            versions.push((stripe * 16 + off, if i % 97 == 0 { ZERO } else { i }));
        }
        let mut one_by_one = BlockIndex::new(80 * 16, 16, 2, 1);
        versions.iter().for_each(|&(lba, addr)| one_by_one.set(lba, addr));
        let built = BlockIndex::from_versions(80 * 16, 16, 2, 1, &versions);
        assert!(matches!(built.leaves[0], Leaf::Dense(_)) && matches!(built.leaves[1], Leaf::Sparse(_)));
        assert_eq!(built.mapped(), one_by_one.mapped());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        built.for_each(|lba, addr| a.push((lba, addr)));
        one_by_one.for_each(|lba, addr| b.push((lba, addr)));
        assert_eq!(a, b);
    }

    #[test]
    fn a_core_only_indexes_its_own_stripes_densely() {
        // Core 1 of 2 owns stripes 1, 3, 5...: local leaf = stripe / 2.
        let mut ix = BlockIndex::new(8 * 16, 16, 2, 1);
        ix.set(16 + 5, 7);
        ix.set(48 + 5, 8);
        assert_eq!((ix.get(16 + 5), ix.get(48 + 5)), (Some(7), Some(8)));
        let mut seen = Vec::new();
        ix.for_each(|lba, addr| seen.push((lba, addr)));
        assert_eq!(seen, [(21, 7), (53, 8)]);
    }
}
