//! Redundant primaries in the simulator: an ilog bdev with two primaries on
//! 1-3 cores takes batches of overlapping writes, zeroes and reads; one
//! primary starts failing every request, or is taken away (hot-removed), at
//! a random point (and the base never does), power cuts come mixed in, and the failed primary comes back
//! with an incremental or a full rebuild. Checked for every seed:
//!
//! - no request fails, whichever primary failed;
//! - every read matches a model of the image (exact between power cuts;
//!   after one, the value at the last flush or one written since; once
//!   read, fixed), whether a primary or the log served it;
//! - an incremental rebuild after an outage with no power cut copies
//!   exactly the blocks written meanwhile;
//! - at the end both primaries are healthy and equal, block for block, the
//!   image the log holds (read as a snapshot volume, which no primary
//!   serves).
//!
//! `ILOG_SIM_SEEDS`, `ILOG_SIM_FIRST` and `ILOG_SIM_SEED` as in sim_model.

mod common;

use common::io::{lend, lend_mut};
use common::sim::{decode, fill, small_format};
use ilog_bdev::device::sim::{Faults, SimDisk};
use ilog_bdev::device::BlockDevice;
use ilog_bdev::engine::{PrimaryDevice, Reply, Request, Stats, View};
use ilog_bdev::format::PrimaryState;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::sim::Sim;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

const BS: u32 = 512;
const DEVICE_BLOCKS: u64 = 4096;

/// What a block may hold.
#[derive(Clone, Default)]
struct Block {
    now: BTreeSet<u64>,
    /// What it may hold as of the last flush, and values written since.
    flushed: BTreeSet<u64>,
    since: BTreeSet<u64>,
}

enum Op {
    Write { lba: u64, blocks: u32, v: u64, buf: Vec<u8> },
    Zero { lba: u64, blocks: u32 },
    Read { lba: u64, blocks: u32, buf: Vec<u8> },
}

static POWER_CUTS: AtomicU64 = AtomicU64::new(0);
static OUTAGES: AtomicU64 = AtomicU64::new(0);
/// Reads each primary served: both must, as reads spread by address.
static PRIMARY_READS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static INCREMENTAL_BLOCKS: AtomicU64 = AtomicU64::new(0);

struct Harness {
    seed: u64,
    sim: Sim,
    rng: Rng,
    cores: u32,
    blocks: Vec<Block>,
    next_value: u64,
    /// The failed primary, and the blocks written since it failed (`None`
    /// once a power cut made its rebuild coarser).
    failed: Option<(usize, Option<BTreeSet<u64>>)>,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut rng = Rng::new(seed);
        let cores = 1 + rng.below(3) as u32;
        let mut sim = Sim::new(seed, DEVICE_BLOCKS, BS);
        sim.format(&small_format(BS)).unwrap_or_else(|e| panic!("seed {seed}: format: {e}"));
        sim.primaries = (0..2).map(|p| (format!("p{p}"), SimDisk::new(DEVICE_BLOCKS, BS, seed ^ (p + 1)))).collect();
        sim.mount(cores).unwrap_or_else(|e| panic!("seed {seed}: mount: {e}"));
        let volume = sim.submitter().volume_blocks() as usize;
        let zero = Block { now: [0].into(), flushed: [0].into(), since: BTreeSet::new() };
        Harness { seed, sim, rng, cores, blocks: vec![zero; volume], next_value: 1, failed: None }
    }

    fn volume_blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Runs `req` once every core is idle (so a stats request sees the
    /// background work done), and until every core is idle again.
    fn call(&mut self, req: Request) -> Reply {
        self.sim.run_until_idle(&mut |_, _| {});
        // SAFETY: no request here carries a buffer.
        self.sim.submit(0, u64::MAX, req).expect("submit");
        let mut out = None;
        self.sim.run_until_idle(&mut |_, r| out = Some(r));
        out.expect("an answer").unwrap_or_else(|e| panic!("seed {}: control request failed: {e}", self.seed))
    }

    fn stats(&mut self) -> Stats {
        match self.call(Request::Stats) {
            Reply::Stats(s) => s,
            other => panic!("stats answered {other:?}"),
        }
    }

    fn random_op(&mut self) -> Op {
        let blocks = 1 + self.rng.below(8) as u32;
        let lba = self.rng.below(self.volume_blocks() - u64::from(blocks) + 1);
        match self.rng.below(10) {
            0..=4 => {
                let v = self.next_value;
                self.next_value += 1;
                let mut buf = vec![0u8; blocks as usize * BS as usize];
                for (i, chunk) in buf.chunks_exact_mut(BS as usize).enumerate() {
                    fill(chunk, v, lba + i as u64);
                }
                Op::Write { lba, blocks, v, buf }
            }
            5 => Op::Zero { lba, blocks },
            _ => Op::Read { lba, blocks, buf: vec![0u8; blocks as usize * BS as usize] },
        }
    }

    /// Notes the blocks a write or zero of the batch covers as ones the
    /// failed primary lacks.
    fn missed(&mut self, ops: &[Op]) {
        let Some((_, Some(dirty))) = &mut self.failed else { return };
        for op in ops {
            if let Op::Write { lba, blocks, .. } | Op::Zero { lba, blocks } = op {
                dirty.extend(*lba..lba + u64::from(*blocks));
            }
        }
    }

    /// Runs a batch of overlapping requests; with `cut_after` steps, cuts
    /// the power that far into it.
    fn batch(&mut self, cut_after: Option<u32>) {
        let n = 1 + self.rng.below(8) as usize;
        let mut ops: Vec<Op> = (0..n).map(|_| self.random_op()).collect();
        // What the batch writes: the values each block may end with.
        let mut writes: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for op in &ops {
            let (lba, blocks, v) = match op {
                Op::Write { lba, blocks, v, .. } => (*lba, *blocks, *v),
                Op::Zero { lba, blocks } => (*lba, *blocks, 0),
                Op::Read { .. } => continue,
            };
            for b in lba..lba + u64::from(blocks) {
                writes.entry(b).or_default().insert(v);
            }
        }
        for (i, op) in ops.iter_mut().enumerate() {
            let core = self.rng.below(u64::from(self.cores)) as u32;
            let req = match op {
                Op::Write { lba, blocks, buf, .. } => Request::Write { lba: *lba, blocks: *blocks, buf: lend(buf) },
                Op::Zero { lba, blocks } => Request::WriteZeroes { lba: *lba, blocks: *blocks },
                Op::Read { lba, blocks, buf } => {
                    Request::Read { lba: *lba, blocks: *blocks, buf: lend_mut(buf), view: View::Current }
                }
            };
            // SAFETY: `ops` outlives the batch: every request completes,
            // or the power is cut, before it is dropped.
            self.sim.submit(core, i as u64, req).expect("submit");
        }
        let mut results: Vec<Option<ilog_bdev::Result<Reply>>> = (0..n).map(|_| None).collect();
        let mut sink = |token: u64, r| results[token as usize] = Some(r);
        if let Some(steps) = cut_after {
            for _ in 0..steps {
                self.sim.step(&mut sink);
            }
            for (&b, vs) in &writes {
                let block = &mut self.blocks[b as usize];
                block.now.extend(vs);
                block.since.extend(vs);
            }
            self.missed(&ops);
            return self.power_cut();
        }
        self.sim.run_until_idle(&mut sink);
        // Reads saw the blocks as they were, or as a write of the batch
        // left them.
        for (op, result) in ops.iter().zip(results) {
            let result = result.unwrap_or_else(|| panic!("seed {}: a request never completed", self.seed));
            if let Err(e) = result {
                panic!("seed {}: a client request failed: {e}", self.seed);
            }
            if let Op::Read { lba, blocks, buf } = op {
                for i in 0..u64::from(*blocks) {
                    let b = lba + i;
                    let got = decode(&buf[i as usize * BS as usize..][..BS as usize], b);
                    let block = &self.blocks[b as usize];
                    let ok =
                        got.is_some_and(|v| block.now.contains(&v) || writes.get(&b).is_some_and(|w| w.contains(&v)));
                    assert!(
                        ok,
                        "seed {}: block {b} read {got:?}, the model allows {:?} or {:?}",
                        self.seed,
                        block.now,
                        writes.get(&b)
                    );
                    if !writes.contains_key(&b) {
                        self.blocks[b as usize].now = [got.expect("checked")].into();
                    }
                }
            }
        }
        for (&b, vs) in &writes {
            let block = &mut self.blocks[b as usize];
            block.now = vs.clone();
            block.since.extend(vs);
        }
        self.missed(&ops);
    }

    fn flush(&mut self) {
        self.call(Request::Flush);
        for block in &mut self.blocks {
            block.flushed = block.now.clone();
            block.since.clear();
        }
    }

    fn power_cut(&mut self) {
        POWER_CUTS.fetch_add(1, Relaxed);
        self.sim.power_cut();
        for block in &mut self.blocks {
            block.now = &block.flushed | &block.since;
            block.flushed = block.now.clone();
            block.since.clear();
        }
        if let Some((_, dirty)) = &mut self.failed {
            *dirty = None;
        }
        self.cores = 1 + self.rng.below(3) as u32;
        self.sim.mount(self.cores).unwrap_or_else(|e| panic!("seed {}: mount after a power cut: {e}", self.seed));
    }

    fn fail_primary(&mut self) {
        // Whatever the primaries still had to copy (after a mount) is
        // copied, and what they cache is flushed, first: the outage's dirty
        // blocks are then exactly the ones written during it (a primary
        // that fails also loses what it had not flushed).
        self.flush();
        self.stats();
        let p = self.rng.below(2) as usize;
        if self.rng.below(3) == 0 {
            // Hot-removed: the runtime takes the device away.
            let name = self.sim.primaries[p].0.clone();
            self.call(Request::ReleasePrimary { name });
            let s = self.stats();
            assert_eq!(
                s.primaries[p].state,
                PrimaryState::Degraded,
                "seed {}: released {:?}",
                self.seed,
                s.primaries[p]
            );
        } else {
            let all = Faults { read_eio_ppm: 1_000_000, write_eio_ppm: 1_000_000 };
            self.sim.primaries[p].1.set_faults(all);
        }
        self.failed = Some((p, Some(BTreeSet::new())));
        OUTAGES.fetch_add(1, Relaxed);
    }

    /// The failed primary comes back: an incremental or a full rebuild.
    fn rebuild(&mut self) {
        let Some((p, dirty)) = self.failed.take() else { return };
        let (name, disk) = self.sim.primaries[p].clone();
        disk.set_faults(Faults::default());
        let full = self.rng.below(3) == 0;
        let device = PrimaryDevice(Arc::new(disk) as Arc<dyn BlockDevice>);
        self.call(Request::RebuildPrimary { name: name.clone(), device, full });
        let s = self.stats();
        let info = s.primaries.iter().find(|i| i.name == name).expect("the primary");
        if let (false, Some(dirty)) = (full, dirty) {
            // What was written while it was out, no more, no less (the
            // rebuild may be under way, or done, by now).
            assert_eq!(
                info.rebuild_total_blocks,
                dirty.len() as u64,
                "seed {}: incremental rebuild of {name}",
                self.seed
            );
            INCREMENTAL_BLOCKS.fetch_add(dirty.len() as u64, Relaxed);
        }
    }

    /// Every primary healthy and equal to the log's image.
    fn check_primaries(&mut self) {
        self.rebuild();
        let s = self.stats();
        for (info, served) in s.primaries.iter().zip(&PRIMARY_READS) {
            assert_eq!((info.state, info.dirty_blocks), (PrimaryState::Healthy, 0), "seed {}: {info:?}", self.seed);
            served.fetch_add(info.reads, Relaxed);
        }
        let name = match self.call(Request::Snapshot { name: None }) {
            Reply::Volume(v) => v.partition,
            other => panic!("snapshot answered {other:?}"),
        };
        let volume = self.volume_blocks();
        let mut image = vec![0u8; volume as usize * BS as usize];
        let req = Request::Read { lba: 0, blocks: volume as u32, buf: lend_mut(&mut image), view: View::Volume(name) };
        // SAFETY: `image` outlives the call, which waits for the read.
        self.sim.submit(0, 0, req).expect("submit");
        let mut out = None;
        self.sim.run_until_idle(&mut |_, r| out = Some(r));
        out.expect("an answer").unwrap_or_else(|e| panic!("seed {}: reading the volume: {e}", self.seed));
        for b in 0..volume {
            let block = &image[b as usize * BS as usize..][..BS as usize];
            let got = decode(block, b);
            assert!(
                got.is_some_and(|v| self.blocks[b as usize].now.contains(&v)),
                "seed {}: the log holds {got:?} at {b}, the model allows {:?}",
                self.seed,
                self.blocks[b as usize].now
            );
            for (name, disk) in &self.sim.primaries {
                let held = disk.peek(b);
                assert!(
                    held == block,
                    "seed {}: primary {name} holds {:?} at block {b}, the log {got:?}",
                    self.seed,
                    decode(&held, b)
                );
            }
        }
    }

    fn run(&mut self, ops: u32) {
        // The primaries start with a full sync from the fresh image.
        let s = self.stats();
        assert!(s.primaries.iter().all(|p| p.state == PrimaryState::Healthy), "seed {}: {:?}", self.seed, s.primaries);
        for _ in 0..ops {
            match self.rng.below(40) {
                0 if self.failed.is_none() => self.fail_primary(),
                1 if self.failed.is_some() => self.rebuild(),
                2 => self.flush(),
                3 => {
                    let steps = self.rng.below(200) as u32;
                    self.batch(Some(steps));
                }
                _ => self.batch(None),
            }
        }
        self.check_primaries();
    }
}

#[test]
fn primaries_mirror_the_image_through_failures_rebuilds_and_power_cuts() {
    let started = std::time::Instant::now();
    let seeds = common::sim::for_each_seed("sim_mirror", |seed| Harness::new(seed).run(150));
    let (cuts, outages) = (POWER_CUTS.load(Relaxed), OUTAGES.load(Relaxed));
    let reads = PRIMARY_READS.each_ref().map(|r| r.load(Relaxed));
    let incremental = INCREMENTAL_BLOCKS.load(Relaxed);
    eprintln!(
        "sim_mirror: {} seeds passed in {:.1?}; {cuts} power cuts, {outages} primary outages, {reads:?} reads served \
         by each primary, {incremental} blocks resynced incrementally",
        seeds,
        started.elapsed()
    );
    if seeds >= 50 {
        assert!(
            cuts > 0 && outages > 0 && reads.iter().all(|&r| r > 0) && incremental > 0,
            "the runs must exercise every path, and reads must go to both primaries"
        );
    }
}
