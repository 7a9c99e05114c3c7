//! Space: the cleaner keeps a log that is overwritten many times over usable,
//! and a log whose live data exceeds it fails writes with ENOSPC cleanly.
//!
//! - `overwrite_*`: a working set of at most 70 % of the log's capacity is
//!   overwritten at random, by async writes at some queue depth from several
//!   client threads, until 10x the log's capacity was written. No write may
//!   fail; the content matches a model before and after a re-mount; the
//!   stats show that the (emergency) cleaner did the work.
//! - `snapshots_during_overwrites`: the same with a snapshot taken between
//!   rounds; each snapshot reads back as of its time while the cleaner moves
//!   its blocks, and is deleted (merged) after the next one.
//! - `enospc_*`: distinct LBAs are written until a write fails; it fails with
//!   `Error::NoSpace`, everything acknowledged reads back (also after a
//!   re-mount), reads and flush keep working.
//!
//! Every client thread owns a disjoint LBA range, and a thread never has two
//! overlapping writes in flight, so the expected content is deterministic.
//! Set `ILOG_SPACE_SEED` to replay one seed.

mod common;

use common::blocks::{decode, fill, tag_of, Seen, Tag};
use ilog_bdev::device::{BlockDevice, MallocDevice};
use ilog_bdev::engine::{Reply, Request, Stats, View};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::native::Ilog;
use ilog_bdev::runtime::sim::Rng;
use ilog_bdev::Error;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: usize = 4096;
const STRIPE_BLOCKS: u64 = 16;
/// Blocks per segment: 64 = 256 KiB (a 64 KiB write wastes little at its end).
const SEGMENT_BLOCKS: u64 = 64;
/// Log segments asked for (the format rounds down).
const LOG_SEGMENTS: u64 = 64;
/// Largest write, in blocks (64 KiB).
const MAX_WRITE_BLOCKS: u64 = 16;
/// Writes each client thread keeps in flight.
const QUEUE_DEPTH: usize = 8;
const THREADS: usize = 2;
/// Longest any single request may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(30);

fn seed_or(default: u64) -> u64 {
    match std::env::var("ILOG_SPACE_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .expect("ILOG_SPACE_SEED is a number")
        }
        Err(_) => default,
    }
}

/// What every assertion message names: the run and its seed.
struct Ctx {
    what: String,
    seed: u64,
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} seed={:#x} (ILOG_SPACE_SEED to replay)]", self.what, self.seed)
    }
}

// ---- block contents ---------------------------------------------------------

fn write_buf(lba: u64, blocks: u64, tag: Tag) -> Vec<u8> {
    let mut buf = vec![0; blocks as usize * BS];
    for (i, block) in buf.chunks_exact_mut(BS).enumerate() {
        fill(block, lba + i as u64, tag);
    }
    buf
}

/// Reads `expected.len()` blocks at `lba` of `view` and checks each holds
/// its expected tag.
fn check_range(ilog: &Ilog, ctx: &Ctx, what: &str, view: Option<&str>, lba: u64, expected: &[Tag]) {
    const CHUNK: usize = 256;
    let mut buf = vec![0u8; CHUNK * BS];
    for (c, exp) in expected.chunks(CHUNK).enumerate() {
        let at = lba + (c * CHUNK) as u64;
        let buf = &mut buf[..exp.len() * BS];
        match view {
            None => ilog.read(at, buf),
            Some(v) => ilog.read_volume(v, at, buf),
        }
        .unwrap_or_else(|e| panic!("{ctx} {what}: read {} blocks at {at}: {e}", exp.len()));
        for (i, (block, &e)) in buf.chunks_exact(BS).zip(exp).enumerate() {
            let got = decode(block, at + i as u64);
            assert_eq!(got, Seen::Tag(e), "{ctx} {what}: block {} (view {view:?})", at + i as u64);
        }
    }
}

fn format(dev: &dyn BlockDevice, log_percent: u8, ctx: &Ctx) {
    let opts = FormatOptions {
        stripe_bytes: STRIPE_BLOCKS * BS as u64,
        segment_bytes: SEGMENT_BLOCKS * BS as u64,
        log_percent,
        max_volumes: 16,
    };
    let uuid: [u8; 16] = ctx.seed.to_le_bytes().repeat(2).try_into().expect("16 bytes");
    ilog_bdev::engine::format(dev, &opts, uuid).unwrap_or_else(|e| panic!("{ctx} format: {e}"));
}

/// A malloc device whose log gets about `LOG_SEGMENTS` segments at `log_percent`.
fn device(log_percent: u8) -> Arc<MallocDevice> {
    let blocks = LOG_SEGMENTS * SEGMENT_BLOCKS * 100 / u64::from(log_percent) + 64;
    Arc::new(MallocDevice::new(blocks, BS as u32))
}

/// Every test of this file runs under a status policy: compaction in the
/// background once the log is 80 % used or a partition half garbage (the
/// emergency cleaner still runs when free segments run short).
fn set_cleaner_policy(ilog: &Ilog) {
    ilog.set_policy(r#"{"compaction": {"log_used_pct": 80, "garbage_pct": 50}}"#).expect("set the status policy");
}

fn stats(ilog: &Ilog, ctx: &Ctx) -> Stats {
    ilog.stats().unwrap_or_else(|e| panic!("{ctx} stats: {e}"))
}

/// Submits `req` and waits for it, failing the test if it takes longer than
/// `HANG` (a hang, not an error).
fn call(ilog: &Ilog, ctx: &Ctx, what: &str, req: Request) -> Result<Reply, Error> {
    let (tx, rx) = mpsc::channel();
    ilog.submit(
        None,
        req,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    )
    .map_err(|refused| refused.error)?;
    rx.recv_timeout(HANG).unwrap_or_else(|_| panic!("{ctx} {what}: no answer within {HANG:?} (hang)"))
}

// ---- overwrites: the cleaner keeps up ------------------------------------------

/// One client thread's share of the working set.
struct Worker {
    t: usize,
    base: u64,
    blocks: u64,
    /// Bytes this thread writes.
    budget: u64,
}

/// Overwrites `w`'s range at random with 4-64 KiB writes, `QUEUE_DEPTH` at a
/// time (never two overlapping ones in flight), until `w.budget` bytes were
/// acknowledged; every write must succeed. `model` is the range's content.
fn overwrite(ilog: &Ilog, ctx: &Ctx, w: &Worker, model: &mut [Tag], next_tag: &mut u64, rng: &mut Rng) {
    struct Inflight {
        off: u64,
        blocks: u64,
        tag: Tag,
        _buf: Vec<u8>,
    }
    let (tx, rx) = mpsc::channel::<(u64, Result<Reply, Error>)>();
    let mut inflight: BTreeMap<u64, Inflight> = BTreeMap::new();
    let (mut submitted, mut acked) = (0u64, 0u64);
    let mut id = 0u64;
    while submitted < w.budget || !inflight.is_empty() {
        while inflight.len() < QUEUE_DEPTH && submitted < w.budget {
            let blocks = 1 + rng.below(MAX_WRITE_BLOCKS.min(w.blocks));
            let off = rng.below(w.blocks - blocks + 1);
            if inflight.values().any(|f| off < f.off + f.blocks && f.off < off + blocks) {
                // Overlaps a write in flight, whose order with it would be
                // unknown: wait for a completion first.
                break;
            }
            let tag = tag_of(w.t, *next_tag);
            *next_tag += 1;
            let lba = w.base + off;
            let buf = write_buf(lba, blocks, tag);
            let req = Request::Write { lba, blocks: blocks as u32, buf: buf.as_ptr() };
            let tx = tx.clone();
            let this = id;
            id += 1;
            let done = Box::new(move |r| {
                let _ = tx.send((this, r));
            });
            let mut req = Some(req);
            let mut done: Option<ilog_bdev::runtime::native::Callback> = Some(done);
            let start = Instant::now();
            loop {
                match ilog.submit(None, req.take().expect("req"), done.take().expect("done")) {
                    Ok(()) => break,
                    Err(refused) => {
                        assert_eq!(refused.error, Error::Io(libc::EAGAIN), "{ctx} thread {}: submit refused", w.t);
                        assert!(start.elapsed() < HANG, "{ctx} thread {}: queue full for {HANG:?}", w.t);
                        std::thread::yield_now();
                        req = Some(Request::Write { lba, blocks: blocks as u32, buf: buf.as_ptr() });
                        done = Some(refused.done);
                    }
                }
            }
            inflight.insert(this, Inflight { off, blocks, tag, _buf: buf });
            submitted += blocks * BS as u64;
        }
        let (done_id, result) = rx.recv_timeout(HANG).unwrap_or_else(|_| {
            panic!("{ctx} thread {}: {} writes in flight, none completed in {HANG:?} (hang)", w.t, inflight.len())
        });
        let f = inflight.remove(&done_id).expect("a write in flight");
        if let Err(e) = result {
            panic!(
                "{ctx} thread {}: write of {} blocks at lba {} failed after {acked} bytes acknowledged: {e}",
                w.t,
                f.blocks,
                w.base + f.off
            );
        }
        model[f.off as usize..(f.off + f.blocks) as usize].fill(f.tag);
        acked += f.blocks * BS as u64;
    }
    assert!(inflight.is_empty());
}

/// Per thread: its worker and the content of its range.
struct Ranges {
    workers: Vec<Worker>,
    models: Vec<Vec<Tag>>,
    next_tags: Vec<u64>,
    rngs: Vec<Rng>,
}

impl Ranges {
    /// Splits a working set of `live_blocks` into `THREADS` ranges, spread
    /// over the volume, each thread writing `total_bytes / THREADS`.
    fn new(seed: u64, volume_blocks: u64, live_blocks: u64, total_bytes: u64) -> Ranges {
        let per = live_blocks / THREADS as u64;
        let stride = volume_blocks / THREADS as u64;
        assert!(per <= stride);
        let workers: Vec<Worker> = (0..THREADS)
            .map(|t| Worker { t, base: t as u64 * stride, blocks: per, budget: total_bytes / THREADS as u64 })
            .collect();
        Ranges {
            models: workers.iter().map(|w| vec![0; w.blocks as usize]).collect(),
            next_tags: vec![1; THREADS],
            rngs: (0..THREADS).map(|t| Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f))).collect(),
            workers,
        }
    }

    /// Every thread overwrites its range (`bytes` each) at once.
    fn round(&mut self, ilog: &Ilog, ctx: &Ctx, bytes: Option<u64>) {
        std::thread::scope(|s| {
            for (((w, model), next_tag), rng) in
                self.workers.iter_mut().zip(&mut self.models).zip(&mut self.next_tags).zip(&mut self.rngs)
            {
                if let Some(b) = bytes {
                    w.budget = b;
                }
                s.spawn(move || overwrite(ilog, ctx, w, model, next_tag, rng));
            }
        });
    }

    /// Checks the whole volume: each range as modelled, zeros elsewhere.
    fn check(&self, ilog: &Ilog, ctx: &Ctx, what: &str, view: Option<&str>, models: &[Vec<Tag>]) {
        let volume_blocks = ilog.volume_blocks();
        let mut at = 0;
        for (w, model) in self.workers.iter().zip(models) {
            check_range(ilog, ctx, what, view, at, &vec![0; (w.base - at) as usize]);
            check_range(ilog, ctx, what, view, w.base, model);
            at = w.base + w.blocks;
        }
        check_range(ilog, ctx, what, view, at, &vec![0; (volume_blocks - at) as usize]);
    }
}

fn assert_cleaned(ctx: &Ctx, s: &Stats, total: u64) {
    let wa = s.device_bytes_written as f64 / s.user_bytes_written as f64;
    println!(
        "{ctx}: user {} MiB, device {} MiB, write amplification {wa:.2}, {} compactions, {} MiB moved, \
         {} segments freed, {}/{} segments free, live {} KiB, garbage {} KiB",
        s.user_bytes_written >> 20,
        s.device_bytes_written >> 20,
        s.compactions,
        s.bytes_moved >> 20,
        s.segments_freed,
        s.segments_free,
        s.segments_total,
        s.live_bytes >> 10,
        s.garbage_bytes >> 10
    );
    assert!(s.user_bytes_written >= total, "{ctx}: user bytes {} < {total} written", s.user_bytes_written);
    assert!(s.compactions > 0, "{ctx}: no compaction ran: {s:?}");
    assert!(s.bytes_moved > 0, "{ctx}: the cleaner moved nothing: {s:?}");
    assert!(s.segments_freed > 0, "{ctx}: no segment was freed: {s:?}");
    assert!(
        wa.is_finite() && wa >= 1.0 && s.device_bytes_written >= s.user_bytes_written + s.bytes_moved,
        "{ctx}: write amplification {wa}: {s:?}"
    );
}

/// Criterion (a): 10x the log's capacity written over a working set of at
/// most 70 % of it, never an error.
fn overwrite_run(cores: u32, seed: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("overwrite 10x, {cores} core(s)"), seed };
    let dev = device(50);
    format(dev.as_ref(), 50, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    set_cleaner_policy(&ilog);
    let s0 = stats(&ilog, &ctx);
    let capacity = s0.log_capacity_bytes;
    let live_blocks = capacity * 70 / 100 / BS as u64;
    assert!(live_blocks <= ilog.volume_blocks(), "{ctx}: the working set fits the volume");
    let total = 10 * capacity;
    let started = Instant::now();
    let mut ranges = Ranges::new(seed, ilog.volume_blocks(), live_blocks, total);
    ranges.round(&ilog, &ctx, None);
    let elapsed = started.elapsed();
    println!(
        "{ctx}: log {} KiB ({} segments), working set {} KiB, {} MiB written in {elapsed:.2?}",
        capacity >> 10,
        s0.segments_total,
        (live_blocks * BS as u64) >> 10,
        total >> 20
    );
    let s = stats(&ilog, &ctx);
    assert_cleaned(&ctx, &s, total);
    ranges.check(&ilog, &ctx, "after the overwrites", None, &ranges.models);
    ilog.flush().unwrap_or_else(|e| panic!("{ctx} flush: {e}"));
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));

    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} re-start: {e}"));
    ranges.check(&ilog, &ctx, "after a re-mount", None, &ranges.models);
    // The re-mounted log keeps taking overwrites.
    ranges.round(&ilog, &ctx, Some(capacity / THREADS as u64));
    ranges.check(&ilog, &ctx, "after overwrites on the re-mounted log", None, &ranges.models);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
}

#[test]
fn overwrite_10x_capacity_one_core() {
    overwrite_run(1, seed_or(0x5ace_0001));
}

#[test]
fn overwrite_10x_capacity_two_cores() {
    overwrite_run(2, seed_or(0x5ace_0002));
}

/// Criterion (c): snapshots taken between rounds of overwrites read back as
/// of their time while the cleaner moves their blocks; the older one is
/// deleted (merged) once a newer one exists. Current image plus one volume
/// stay within 70 % of the log.
#[test]
fn snapshots_during_overwrites() {
    let _ = env_logger::builder().is_test(true).try_init();
    let seed = seed_or(0x5ace_0003);
    let cores = 2;
    let ctx = Ctx { what: "snapshots during overwrites".into(), seed };
    let dev = device(50);
    format(dev.as_ref(), 50, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    set_cleaner_policy(&ilog);
    let capacity = stats(&ilog, &ctx).log_capacity_bytes;
    // A snapshot pins up to the whole working set again.
    let live_blocks = capacity * 30 / 100 / BS as u64;
    let rounds = 10;
    let mut ranges = Ranges::new(seed, ilog.volume_blocks(), live_blocks, capacity);
    let mut snaps: Vec<(String, Vec<Vec<Tag>>)> = Vec::new();
    for round in 0..rounds {
        ranges.round(&ilog, &ctx, Some(capacity / THREADS as u64));
        for (name, models) in &snaps {
            ranges.check(&ilog, &ctx, &format!("round {round}: volume {name}"), Some(name), models);
        }
        ranges.check(&ilog, &ctx, &format!("round {round}: current image"), None, &ranges.models);
        let info = ilog.snapshot(None).unwrap_or_else(|e| panic!("{ctx} round {round}: snapshot: {e}"));
        snaps.push((info.name, ranges.models.clone()));
        if snaps.len() > 1 {
            let (old, _) = snaps.remove(0);
            ilog.delete_volume(&old).unwrap_or_else(|e| panic!("{ctx} round {round}: delete {old}: {e}"));
        }
    }
    let s = stats(&ilog, &ctx);
    assert_cleaned(&ctx, &s, rounds * capacity);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
    let ilog = Ilog::start(dev, cores).unwrap_or_else(|e| panic!("{ctx} re-start: {e}"));
    for (name, models) in &snaps {
        ranges.check(&ilog, &ctx, &format!("after a re-mount: volume {name}"), Some(name), models);
    }
    ranges.check(&ilog, &ctx, "after a re-mount: current image", None, &ranges.models);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
}

// ---- ENOSPC: live data beyond the log ------------------------------------------

/// Criterion (b): distinct LBAs are written until the log is full of live
/// data. The failing write fails with `NoSpace` (in bounded time); every
/// acknowledged write reads back, also after a re-mount; reads and flush
/// keep working; later writes fail with `NoSpace` or land intact.
fn enospc_run(cores: u32, seed: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("ENOSPC, {cores} core(s)"), seed };
    // A volume three times the log: live data can exceed the log.
    let dev = device(25);
    format(dev.as_ref(), 25, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    set_cleaner_policy(&ilog);
    let s0 = stats(&ilog, &ctx);
    let capacity_blocks = s0.log_capacity_bytes / BS as u64;
    let volume_blocks = ilog.volume_blocks();
    assert!(volume_blocks > 2 * capacity_blocks, "{ctx}: the volume exceeds the log");
    let mut rng = Rng::new(seed);
    // Distinct LBAs in a random order of stripe-sized slots, each written
    // once with 1..=16 blocks.
    let mut slots: Vec<u64> = (0..volume_blocks / STRIPE_BLOCKS).collect();
    rng.shuffle(&mut slots);
    let mut model: BTreeMap<u64, Tag> = BTreeMap::new();
    let mut tag = 0;
    let mut slots = slots.into_iter();
    let mut write = |ilog: &Ilog, model: &mut BTreeMap<u64, Tag>, what: &str| -> Option<Result<(), Error>> {
        let slot = slots.next()?;
        let blocks = 1 + rng.below(STRIPE_BLOCKS);
        let lba = slot * STRIPE_BLOCKS;
        tag += 1;
        let buf = write_buf(lba, blocks, tag);
        let r = call(ilog, &ctx, what, Request::Write { lba, blocks: blocks as u32, buf: buf.as_ptr() }).map(drop);
        if r.is_ok() {
            for i in 0..blocks {
                model.insert(lba + i, tag);
            }
        }
        Some(r)
    };
    let mut written = 0u64;
    let failure = loop {
        match write(&ilog, &mut model, "filling write") {
            None => panic!("{ctx}: {} blocks written over the whole volume without ENOSPC", model.len()),
            Some(Ok(())) => written += 1,
            Some(Err(e)) => break e,
        }
    };
    let s = stats(&ilog, &ctx);
    println!(
        "{ctx}: {written} writes, {} blocks ({} KiB) acknowledged of a {} KiB log, then {failure}; {s:?}",
        model.len(),
        (model.len() * BS) >> 10,
        s.log_capacity_bytes >> 10
    );
    assert_eq!(failure, Error::NoSpace, "{ctx}: the log filled up with another error than ENOSPC");
    assert!(
        model.len() as u64 * 10 >= capacity_blocks * 6,
        "{ctx}: ENOSPC with only {} of {capacity_blocks} log blocks live",
        model.len()
    );
    let check = |ilog: &Ilog, model: &BTreeMap<u64, Tag>, what: &str| {
        let mut expected = vec![0; volume_blocks as usize];
        for (&lba, &t) in model {
            expected[lba as usize] = t;
        }
        check_range(ilog, &ctx, what, None, 0, &expected);
    };
    check(&ilog, &model, "after the first ENOSPC");
    // Later writes: ENOSPC, or (if the engine found room) acknowledged and intact.
    for i in 0..8 {
        match write(&ilog, &mut model, "write after ENOSPC") {
            Some(Ok(())) | None => {}
            Some(Err(e)) => assert_eq!(e, Error::NoSpace, "{ctx}: write {i} after ENOSPC"),
        }
    }
    assert!(model.len() as u64 <= capacity_blocks, "{ctx}: more live blocks acknowledged than the log holds");
    ilog.flush().unwrap_or_else(|e| panic!("{ctx}: flush after ENOSPC: {e}"));
    check(&ilog, &model, "after ENOSPC and a flush");
    let mut block = vec![0u8; BS];
    let read = Request::Read { lba: 0, blocks: 1, buf: block.as_mut_ptr(), view: View::Current };
    assert_eq!(call(&ilog, &ctx, "a read after ENOSPC", read).map(drop), Ok(()), "{ctx}: a read after ENOSPC");
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close after ENOSPC: {e}"));

    let ilog = Ilog::start(dev, cores).unwrap_or_else(|e| panic!("{ctx}: re-start after ENOSPC: {e}"));
    check(&ilog, &model, "after a re-mount");
    for i in 0..4 {
        match write(&ilog, &mut model, "write after the re-mount") {
            Some(Ok(())) | None => {}
            Some(Err(e)) => assert_eq!(e, Error::NoSpace, "{ctx}: write {i} after the re-mount"),
        }
    }
    check(&ilog, &model, "after writes on the re-mounted full log");
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
}

#[test]
fn enospc_when_live_data_exceeds_the_log_one_core() {
    enospc_run(1, seed_or(0x5ace_0011));
}

#[test]
fn enospc_when_live_data_exceeds_the_log_two_cores() {
    enospc_run(2, seed_or(0x5ace_0012));
}
