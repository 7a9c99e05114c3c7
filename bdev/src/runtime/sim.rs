//! The deterministic simulator: one thread plays every core, choosing which
//! core polls next with a seeded PRNG, over a [`SimDisk`] that reorders
//! completions and injects faults. Messages between cores are held and
//! delivered late, in random turns across senders (each pair of cores in
//! order). The same seed replays the same run.

use crate::device::sim::SimDisk;
use crate::device::BlockDevice;
use crate::engine::{format, mount_with_primaries, Clock, Reply, Request, Shard, Submitter};
use crate::error::Result;
use crate::format::FormatOptions;
use crate::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Simulated wall-clock time: moves only when the test advances it.
pub struct SimClock(AtomicU64);

impl SimClock {
    /// Seconds since the epoch the simulation starts at (2023-11-14).
    pub const START: u64 = 1_700_000_000;

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now_unix_s(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A simulated ilog bdev: a disk, a clock, and (while mounted) its shards.
pub struct Sim {
    pub disk: SimDisk,
    /// Primaries by name (see `engine::mirror`), mounted with the disk.
    pub primaries: Vec<(String, SimDisk)>,
    pub clock: Arc<SimClock>,
    rng: Rng,
    mounted: Option<(Submitter, Vec<Shard>)>,
}

impl Sim {
    pub fn new(seed: u64, num_blocks: u64, block_size: u32) -> Sim {
        Sim {
            disk: SimDisk::new(num_blocks, block_size, seed),
            primaries: Vec::new(),
            clock: Arc::new(SimClock(AtomicU64::new(SimClock::START))),
            rng: Rng::new(seed),
            mounted: None,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    pub fn format(&mut self, opts: &FormatOptions) -> Result<()> {
        let uuid = self.rng.next_u64().to_le_bytes().repeat(2).try_into().expect("16 bytes");
        format(&self.disk, opts, uuid).map(|_| ())
    }

    /// Mounts on `cores` simulated cores; `Ok(true)` if the log was replayed.
    pub fn mount(&mut self, cores: u32) -> Result<bool> {
        let primaries = self
            .primaries
            .iter()
            .map(|(name, d)| (name.clone(), Some(Arc::new(d.clone()) as Arc<dyn BlockDevice>)))
            .collect();
        let mut m = mount_with_primaries(Arc::new(self.disk.clone()), cores, self.clock.clone(), primaries)?;
        for shard in &mut m.shards {
            shard.hold_messages();
        }
        self.mounted = Some((m.submitter, m.shards));
        Ok(m.replayed)
    }

    pub fn submitter(&self) -> &Submitter {
        &self.mounted.as_ref().expect("mounted").0
    }

    pub fn shards(&self) -> &[Shard] {
        &self.mounted.as_ref().expect("mounted").1
    }

    /// Queues `req` on `core`; its completion comes out of [`Sim::step`]
    /// with `token`. A `Read` or `Write` lends its buffer until then.
    pub fn submit(&mut self, core: u32, token: u64, req: Request) -> Result<()> {
        self.submitter().submit(core, token, req)
    }

    /// Delivers a few held messages (none, one, a couple or a burst, from
    /// random senders to random receivers), then polls one randomly chosen
    /// core once; its completions go to `sink`.
    pub fn step(&mut self, sink: &mut dyn FnMut(u64, Result<Reply>)) -> usize {
        let (_, shards) = self.mounted.as_mut().expect("mounted");
        let cores = shards.len() as u64;
        let mut delivered = 0;
        for _ in 0..[0, 1, 2, 8][self.rng.below(4) as usize] {
            let from = self.rng.below(cores) as usize;
            delivered += usize::from(shards[from].deliver_held(self.rng.next_u64()));
        }
        let core = self.rng.below(cores) as usize;
        delivered + shards[core].poll(sink)
    }

    /// Steps until every core is idle (bounded: panics on a livelock).
    pub fn run_until_idle(&mut self, sink: &mut dyn FnMut(u64, Result<Reply>)) {
        for _ in 0..10_000_000 {
            self.step(sink);
            if self.shards().iter().all(|s| s.is_idle()) {
                return;
            }
        }
        let busy: Vec<String> =
            self.shards().iter().filter_map(|s| s.busy_with().map(|w| format!("core {}: {w}", s.core()))).collect();
        panic!("simulation did not go idle: {}", busy.join("; "));
    }

    /// Cuts power: the shards die with their in-flight work, the disk keeps
    /// what the fault model lets survive. Mount again to recover.
    pub fn power_cut(&mut self) {
        self.disk.power_cut();
        for (_, d) in &self.primaries {
            d.power_cut();
        }
        self.mounted = None;
    }

    /// Drops the mounted bdev without a power cut (after a clean close).
    pub fn unmount(&mut self) {
        self.mounted = None;
    }
}
