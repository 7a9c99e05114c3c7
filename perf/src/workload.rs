//! Workloads, as bdevperf names them: which request each queue slot issues
//! next.

use crate::target::Op;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Randread,
    Randwrite,
    Read,
    Write,
    /// Random reads and writes, `--rwmixread` percent reads.
    Rw,
    /// Each slot writes a block range with data naming it, reads it back
    /// and compares, then moves on (as bdevperf's verify): a slot owns its
    /// own share of the device, so nothing else writes there meanwhile.
    Verify,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Randread => "randread",
            Kind::Randwrite => "randwrite",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Rw => "rw",
            Kind::Verify => "verify",
        }
    }
}

/// SplitMix64: enough to spread offsets.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// The next request of every slot.
pub struct Workload {
    kind: Kind,
    io_blocks: u32,
    /// I/O-sized units the target holds.
    units: u64,
    read_pct: u64,
    rng: Rng,
    /// The sequential workloads' next unit.
    next_unit: u64,
    /// Verify: per slot, which of its units is next, and whether its write
    /// was issued (the read back comes next).
    verify: Vec<(u64, bool)>,
    slots: u64,
}

impl Workload {
    pub fn new(kind: Kind, io_blocks: u32, target_blocks: u64, slots: usize, read_pct: u8, seed: u64) -> Workload {
        let units = target_blocks / u64::from(io_blocks);
        assert!(units >= slots as u64, "the target holds fewer I/Os than the queue depth");
        Workload {
            kind,
            io_blocks,
            units,
            read_pct: u64::from(read_pct),
            rng: Rng::new(seed),
            next_unit: 0,
            verify: vec![(0, false); slots],
            slots: slots as u64,
        }
    }

    /// Blocks per request.
    pub fn io_blocks(&self) -> u32 {
        self.io_blocks
    }

    fn unit(&self, unit: u64) -> u64 {
        unit * u64::from(self.io_blocks)
    }

    /// The request slot `slot` issues next.
    pub fn next(&mut self, slot: usize) -> Op {
        let blocks = self.io_blocks;
        let (write, unit) = match self.kind {
            Kind::Randread => (false, self.rng.below(self.units)),
            Kind::Randwrite => (true, self.rng.below(self.units)),
            Kind::Rw => (self.rng.below(100) >= self.read_pct, self.rng.below(self.units)),
            Kind::Read | Kind::Write => {
                let u = self.next_unit;
                self.next_unit = (u + 1) % self.units;
                (self.kind == Kind::Write, u)
            }
            Kind::Verify => {
                // Slot s owns units s, s + slots, s + 2 slots, ...: it
                // writes one, reads it back, and moves to its next.
                let (k, wrote) = self.verify[slot];
                let unit = slot as u64 + k * self.slots;
                self.verify[slot] = if wrote {
                    let per_slot = (self.units - slot as u64).div_ceil(self.slots);
                    ((k + 1) % per_slot, false)
                } else {
                    (k, true)
                };
                (!wrote, unit)
            }
        };
        Op { write, lba: self.unit(unit), blocks }
    }

    pub fn verifies(&self) -> bool {
        self.kind == Kind::Verify
    }
}

/// Fills a write buffer with data naming its block and a generation, so a
/// read that returns anything else is caught.
pub fn pattern(buf: &mut [u8], lba: u64, generation: u64, block_size: usize) {
    for (i, block) in buf.chunks_exact_mut(block_size).enumerate() {
        for word in block.chunks_exact_mut(16) {
            word[..8].copy_from_slice(&(lba + i as u64).to_le_bytes());
            word[8..].copy_from_slice(&generation.to_le_bytes());
        }
    }
}
