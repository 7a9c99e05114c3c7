//! The baseline region's stripe map: which stripes of the baseline hold
//! data (the others read as zeros). Kept in the checkpoint; the drain sets
//! a stripe's bit once it wrote the stripe whole.

use crate::format::Geometry;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// Which stripes of the baseline region hold data.
pub(crate) struct BaselineMap {
    bits: Vec<AtomicU8>,
}

impl BaselineMap {
    /// From a checkpoint's bitmap (shorter means the rest is unset).
    pub fn new(bytes: &[u8], stripes: u64) -> BaselineMap {
        let len = stripes.div_ceil(8) as usize;
        BaselineMap { bits: (0..len).map(|i| AtomicU8::new(bytes.get(i).copied().unwrap_or(0))).collect() }
    }

    pub fn has(&self, stripe: u64) -> bool {
        self.bits[(stripe / 8) as usize].load(Relaxed) & (1 << (stripe % 8)) != 0
    }

    /// Only the stripe's owner sets its bit; core 0 reads the map for a
    /// checkpoint after the owner reported (through a queue) that it is done.
    pub fn set(&self, stripe: u64) {
        self.bits[(stripe / 8) as usize].fetch_or(1 << (stripe % 8), Relaxed);
    }

    /// The runs of blocks `start..end` in stripes (of `stripe_blocks`)
    /// that hold data.
    pub fn runs(&self, start: u64, end: u64, stripe_blocks: u32) -> Vec<(u64, u64)> {
        let sb = u64::from(stripe_blocks);
        let stripes = (start / sb..end.div_ceil(sb)).filter(|&s| self.has(s));
        stripes.map(|s| ((s * sb).max(start), ((s + 1) * sb).min(end))).collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().map(|b| b.load(Relaxed)).collect()
    }
}

/// Blocks of `stripe` (the last stripe may be short).
pub(super) fn stripe_len(geo: &Geometry, stripe: u64) -> u32 {
    let stripe_blocks = u64::from(geo.stripe_blocks);
    (geo.volume_blocks - stripe * stripe_blocks).min(stripe_blocks) as u32
}
