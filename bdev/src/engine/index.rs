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
