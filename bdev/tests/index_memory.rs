//! The block index costs at most 16 bytes of heap per mapped block for the
//! newest version, measured from real allocations.
//!
//! A counting global allocator tracks the live heap bytes of each thread.
//! The simulator runs the whole engine on the test's own thread, so the
//! growth of that thread's live bytes between two quiet points is exactly
//! what the engine (and the simulated disk) kept. The disk's memory is
//! allocated when it is created, before the baseline.
//!
//! What else grows per block written, and how it is taken out:
//! - the partition tables: a snapshot after the measured writes seals the
//!   open partition into a frozen table of exactly 8 bytes per distinct
//!   block (`partition.rs`), subtracted; the baseline is taken after a
//!   snapshot too, so both points have every segment closed;
//! - the segment registry (a few dozen segments of 4 MiB) and the simulated
//!   disk's queues: left in, charged to the index; they are a small share.
//!
//! The leaf table (one slot per stripe a core owns) is allocated at mount,
//! before the baseline: it is a per-volume cost, not a per-block one.

mod common;

use common::io::lend;
use ilog_bdev::engine::{Reply, Request};
use ilog_bdev::format::{FormatOptions, Geometry};
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::sim::Sim;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// ---- the counting allocator ---------------------------------------------------

/// `System`, counting the live bytes each thread allocated and freed.
/// Per thread: the test harness allocates on its own threads meanwhile.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: allocations can happen while the thread is being torn down.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

// SAFETY: every call is forwarded to `System` unchanged; counting only
// touches a thread-local integer and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- driving the simulator ----------------------------------------------------

/// 512-byte blocks keep the simulated disk small; the index does not
/// depend on the block size.
const BS: u32 = 512;
/// Blocks written per measured pattern.
const N: u64 = 200_000;
/// Requests kept in flight: enough to overlap, few enough that no queue
/// grows past what the warm-up already made it.
const IN_FLIGHT: usize = 32;
/// A flush this often bounds the simulated disk's copies of unflushed writes.
const FLUSH_EVERY: usize = 4096;
/// The per-block budget of the newest-version index.
const BUDGET: f64 = 16.0;

struct Driver {
    sim: Sim,
    cores: u32,
    /// One source buffer for every write: the engine only reads it.
    data: Vec<u8>,
    next_token: u64,
}

impl Driver {
    /// `req` writes from `data` (or carries no buffer).
    fn submit(&mut self, req: Request) {
        let core = (self.next_token % u64::from(self.cores)) as u32;
        // `data` lives as long as the driver, which steps every
        // request to completion.
        self.sim.submit(core, self.next_token, req).expect("the client queue has room");
        self.next_token += 1;
    }

    /// Writes `(lba, blocks)` extents with `IN_FLIGHT` requests at a time,
    /// flushing on the way, then drives every core idle.
    fn write_all(&mut self, extents: &[(u64, u32)]) {
        let mut outstanding = 0;
        let done = |_: u64, result: ilog_bdev::Result<Reply>| {
            result.expect("a write or flush of the measured workload");
            1
        };
        for (i, &(lba, blocks)) in extents.iter().enumerate() {
            while outstanding >= IN_FLIGHT {
                let mut finished = 0;
                self.sim.step(&mut |t, r| finished += done(t, r));
                outstanding -= finished;
            }
            assert!(blocks as usize * BS as usize <= self.data.len());
            self.submit(Request::Write { lba, blocks, buf: lend(&self.data) });
            outstanding += 1;
            if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                self.submit(Request::Flush);
                outstanding += 1;
            }
        }
        self.sim.run_until_idle(&mut |t, r| {
            done(t, r);
        });
    }

    /// Flushes, then snapshots (sealing the open partition and closing
    /// every segment), and drives every core idle.
    fn flush_and_seal(&mut self) {
        self.submit(Request::Flush);
        self.submit(Request::Snapshot { name: None });
        self.sim.run_until_idle(&mut |_, r| {
            r.expect("flush and snapshot");
        });
    }

    fn mapped(&self) -> u64 {
        self.sim.shards().iter().map(|s| s.mapped_blocks()).sum()
    }
}

/// Formats and mounts a simulated disk with `volume` blocks of volume and
/// room in the log for `log` blocks of data and metadata.
fn mount(stripe_blocks: u32, volume: u64, log: u64, cores: u32, seed: u64) -> Driver {
    let segment_blocks = 8192; // 4 MiB: few segments, a small registry
    let mut opts = FormatOptions {
        stripe_bytes: u64::from(stripe_blocks * BS),
        segment_bytes: u64::from(segment_blocks * BS),
        log_percent: 50,
        max_volumes: 16,
        ..FormatOptions::default()
    };
    // Room for the data plus a summary pair per 19 entries, a header per
    // segment and the segments the snapshots close early.
    let log = log * 6 / 5 + u64::from(4 * cores + 4) * u64::from(segment_blocks);
    opts.log_percent = (log * 100).div_ceil(volume + log).clamp(1, 95) as u8;
    let mut device = volume + log;
    let fits = |g: &Geometry| g.volume_blocks >= volume && u64::from(g.segment_count * g.segment_blocks) >= log;
    while !Geometry::plan(BS, device, &opts).is_ok_and(|g| fits(&g)) {
        device += device / 100;
    }
    let mut sim = Sim::new(seed, device, BS);
    sim.format(&opts).expect("format");
    sim.mount(cores).expect("mount");
    Driver { sim, cores, data: vec![0x5a; 64 * BS as usize], next_token: 0 }
}

/// Splits `lbas` (sorted runs or scattered blocks) into write extents of
/// at most 64 blocks.
fn extents(lbas: &[u64]) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for &lba in lbas {
        match out.last_mut() {
            Some((start, n)) if *start + u64::from(*n) == lba && *n < 64 => *n += 1,
            _ => out.push((lba, 1)),
        }
    }
    out
}

/// N blocks at distinct LBAs spread over `domain` blocks, in random order.
fn random_lbas(rng: &mut Rng, domain: u64, n: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (0..domain).collect();
    rng.shuffle(&mut all);
    all.truncate(n as usize);
    all
}

/// Writes `lbas` (none of them in the warm-up region above `domain`) and
/// returns the index's heap bytes per mapped block.
fn index_bytes_per_block(what: &str, stripe_blocks: u32, domain: u64, lbas: Vec<u64>) -> f64 {
    let cores = 2;
    let seed = 0x1de8 ^ domain;
    let n = lbas.len() as u64;
    let mut rng = Rng::new(seed);
    // The warm-up writes the same kind of extents in its own stripes past
    // the measured domain, so that every queue and buffer reaches its
    // working size before the baseline.
    let warm_blocks = 4096;
    let warm_base = domain.next_multiple_of(u64::from(stripe_blocks));
    let scattered = extents(&lbas).len() as u64 > n / 2;
    let warm_lbas: Vec<u64> = if scattered {
        random_lbas(&mut rng, 2 * warm_blocks, warm_blocks).into_iter().map(|l| warm_base + l).collect()
    } else {
        (warm_base..warm_base + warm_blocks).collect()
    };
    let warm = extents(&warm_lbas);
    let measured = extents(&lbas);
    let mut d = mount(stripe_blocks, warm_base + 2 * warm_blocks, n + warm_blocks, cores, seed);

    d.write_all(&warm);
    d.flush_and_seal();
    let before = live_bytes();
    d.write_all(&measured);
    d.flush_and_seal();
    let growth = live_bytes() - before;

    // The warm-up's partition is the oldest volume's: it drained into the
    // baseline, and the index maps the blocks read from the log.
    assert_eq!(d.mapped(), n, "{what}: the index maps every block written since the oldest volume");
    // The sealed partition of the measured writes: 8 bytes per block.
    let partition_bytes = 8 * n as i64;
    let index_bytes = growth - partition_bytes;
    let per_block = index_bytes as f64 / n as f64;
    eprintln!(
        "{what} ({n} blocks, {stripe_blocks}-block stripes, {cores} cores): heap +{growth} bytes, \
         partition table {partition_bytes}, index {index_bytes} = {per_block:.2} bytes per mapped block"
    );
    per_block
}

fn assert_within_budget(what: &str, per_block: f64) {
    assert!(per_block <= BUDGET, "{what}: the index costs {per_block:.2} bytes per mapped block, over {BUDGET}");
    // The measurement itself is sane: every mapped block costs something.
    assert!(per_block >= 4.0, "{what}: {per_block:.2} bytes per mapped block is less than a dense leaf's 4");
}

#[test]
fn sequential_writes_cost_at_most_16_index_bytes_per_mapped_block() {
    let per_block = index_bytes_per_block("sequential", 256, N, (0..N).collect());
    assert_within_budget("sequential", per_block);
}

#[test]
fn random_writes_over_half_the_volume_cost_at_most_16_index_bytes_per_mapped_block() {
    let lbas = random_lbas(&mut Rng::new(50), 2 * N, N);
    let per_block = index_bytes_per_block("random, 50% fill", 256, 2 * N, lbas);
    assert_within_budget("random, 50% fill", per_block);
}

#[test]
fn random_writes_over_a_quarter_of_the_volume_cost_at_most_16_index_bytes_per_mapped_block() {
    let lbas = random_lbas(&mut Rng::new(25), 4 * N, N);
    let per_block = index_bytes_per_block("random, 25% fill", 256, 4 * N, lbas);
    assert_within_budget("random, 25% fill", per_block);
}

/// The sparsest mapping: a single block in each stripe, so every leaf holds
/// one entry (a file system's scattered metadata blocks look like this).
#[test]
fn one_block_per_stripe_costs_at_most_16_index_bytes_per_mapped_block() {
    const STRIPES: u64 = 20_000;
    let stripe = 256;
    let mut rng = Rng::new(1);
    let mut lbas: Vec<u64> = (0..STRIPES).map(|s| s * stripe + rng.below(stripe)).collect();
    rng.shuffle(&mut lbas);
    let per_block = index_bytes_per_block("one block per stripe", stripe as u32, STRIPES * stripe, lbas);
    assert_within_budget("one block per stripe", per_block);
}
