//! Space: the log drains into the baseline, so the whole volume takes
//! overwrites for ever; with snapshots, the log holds the versions they need,
//! and a log full of them fails writes with ENOSPC cleanly (or retires the
//! oldest volume, as the policy says).
//!
//! - `overwrite_*`: the whole volume, on the default log share, is
//!   overwritten at random, by async writes at some queue depth from several
//!   client threads, until 10x the volume was written. No write may fail;
//!   the content matches a model before and after a re-mount; the stats
//!   show that the drain did the work.
//! - `snapshots_during_overwrites`: a working set overwritten with a
//!   snapshot taken between rounds; each snapshot reads back as of its time
//!   while the drain and compaction move blocks, and is deleted (merged)
//!   after the next one.
//! - `enospc_*`: a full disk is snapshotted and overwritten at distinct
//!   LBAs until a write fails; it fails with `Error::NoSpace`, everything
//!   acknowledged reads back (also after a re-mount), so does the snapshot,
//!   reads and flush keep working; once the volume is deleted the whole
//!   volume takes overwrites again.
//! - `full_log_retires_the_oldest_volume_*`: with `retention.on_full` set to
//!   `delete_oldest`, a full overwrite after two snapshots succeeds, and the
//!   volume that survives reads its own data.
//!
//! Every client thread owns a disjoint LBA range, and a thread never has two
//! overlapping writes in flight, so the expected content is deterministic.
//! Set `ILOG_SPACE_SEED` to replay one seed.

mod common;

use common::blocks::{decode, fill, tag_of, Seen, Tag};
use common::io::lend;
use ilog_bdev::device::{BlockDevice, MallocDevice};
use ilog_bdev::engine::{Reply, Request, Stats};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::native::Ilog;
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
        ..FormatOptions::default()
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
/// emergency compaction still runs when free segments run short).
fn set_compaction_policy(ilog: &Ilog) {
    ilog.set_policy(r#"{"compaction": {"log_used_pct": 80, "garbage_pct": 50}}"#).expect("set the status policy");
}

fn stats(ilog: &Ilog, ctx: &Ctx) -> Stats {
    ilog.stats().unwrap_or_else(|e| panic!("{ctx} stats: {e}"))
}

/// Submits `req` and waits for it, failing the test if it takes longer than
/// `HANG` (a hang, not an error). A buffer `req` points at must outlive the
/// call.
fn call(ilog: &Ilog, ctx: &Ctx, what: &str, req: Request) -> Result<Reply, Error> {
    let (tx, rx) = mpsc::channel();
    let done: ilog_bdev::runtime::native::Callback = Box::new(move |r| {
        let _ = tx.send(r);
    });
    // The answer is awaited before the call returns (a hang fails
    // the test), and the caller's buffer outlives the call.
    ilog.submit(None, req, done).map_err(|refused| refused.error)?;
    rx.recv_timeout(HANG).unwrap_or_else(|_| panic!("{ctx} {what}: no answer within {HANG:?} (hang)"))
}

// ---- overwrites: compaction keeps up ------------------------------------------

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
            let req = Request::Write { lba, blocks: blocks as u32, buf: lend(&buf) };
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
                // `buf` goes into `inflight` (its heap block stays
                // put) and is dropped only once the write's answer came.
                match ilog.submit(None, req.take().expect("req"), done.take().expect("done")) {
                    Ok(()) => break,
                    Err(refused) => {
                        assert_eq!(refused.error, Error::Io(libc::EAGAIN), "{ctx} thread {}: submit refused", w.t);
                        assert!(start.elapsed() < HANG, "{ctx} thread {}: queue full for {HANG:?}", w.t);
                        std::thread::yield_now();
                        req = Some(Request::Write { lba, blocks: blocks as u32, buf: lend(&buf) });
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

fn print_stats(ctx: &Ctx, s: &Stats) {
    let wa = s.device_bytes_written as f64 / s.user_bytes_written as f64;
    println!(
        "{ctx}: user {} MiB, device {} MiB, write amplification {wa:.2}, {} drains, {} compactions, {} MiB moved, \
         {} segments freed, {}/{} segments free, live {} KiB, garbage {} KiB",
        s.user_bytes_written >> 20,
        s.device_bytes_written >> 20,
        s.drains,
        s.compactions,
        s.bytes_moved >> 20,
        s.segments_freed,
        s.segments_free,
        s.segments_total,
        s.live_bytes >> 10,
        s.garbage_bytes >> 10
    );
}

/// The log was written over many times: segments came back.
fn assert_reclaimed(ctx: &Ctx, s: &Stats, total: u64) {
    print_stats(ctx, s);
    let wa = s.device_bytes_written as f64 / s.user_bytes_written as f64;
    assert!(s.user_bytes_written >= total, "{ctx}: user bytes {} < {total} written", s.user_bytes_written);
    assert!(s.segments_freed > 0, "{ctx}: no segment was freed: {s:?}");
    assert!(
        wa.is_finite() && wa >= 1.0 && s.device_bytes_written >= s.user_bytes_written + s.bytes_moved,
        "{ctx}: write amplification {wa}: {s:?}"
    );
}

/// The whole volume, on the default log share, written over 10 times at
/// random: never an error, and the drain (not compaction) makes the room.
fn overwrite_run(cores: u32, seed: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("whole volume overwritten 10x, {cores} core(s)"), seed };
    let log_percent = FormatOptions::default().log_percent;
    let dev = device(log_percent);
    format(dev.as_ref(), log_percent, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    set_compaction_policy(&ilog);
    let s0 = stats(&ilog, &ctx);
    let volume_blocks = ilog.volume_blocks();
    assert!(volume_blocks * BS as u64 > 3 * s0.log_capacity_bytes, "{ctx}: the volume dwarfs the log");
    let total = 10 * volume_blocks * BS as u64;
    let started = Instant::now();
    let mut ranges = Ranges::new(seed, volume_blocks, volume_blocks, total);
    ranges.round(&ilog, &ctx, None);
    println!(
        "{ctx}: log {} KiB ({} segments), volume {} KiB, {} MiB written in {:.2?}",
        s0.log_capacity_bytes >> 10,
        s0.segments_total,
        (volume_blocks * BS as u64) >> 10,
        total >> 20,
        started.elapsed()
    );
    let s = stats(&ilog, &ctx);
    assert_reclaimed(&ctx, &s, total);
    assert!(s.drains > 0, "{ctx}: nothing drained into the baseline: {s:?}");
    let wa = s.device_bytes_written as f64 / s.user_bytes_written as f64;
    assert!(wa < 2.5, "{ctx}: write amplification {wa:.2}: every block should reach the device about twice");
    ranges.check(&ilog, &ctx, "after the overwrites", None, &ranges.models);
    ilog.flush().unwrap_or_else(|e| panic!("{ctx} flush: {e}"));
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));

    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} re-start: {e}"));
    ranges.check(&ilog, &ctx, "after a re-mount", None, &ranges.models);
    // The re-mounted log keeps taking overwrites.
    ranges.round(&ilog, &ctx, Some(volume_blocks * BS as u64 / THREADS as u64));
    ranges.check(&ilog, &ctx, "after overwrites on the re-mounted log", None, &ranges.models);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
}

#[test]
fn the_whole_volume_takes_10x_overwrites_one_core() {
    overwrite_run(1, seed_or(0x5ace_0001));
}

#[test]
fn the_whole_volume_takes_10x_overwrites_two_cores() {
    overwrite_run(2, seed_or(0x5ace_0002));
}

/// Criterion (c): snapshots taken between rounds of overwrites read back as
/// of their time while compaction moves their blocks; the older one is
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
    set_compaction_policy(&ilog);
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
    assert_reclaimed(&ctx, &s, rounds * capacity);
    assert!(s.drains > 0, "{ctx}: the oldest volumes never drained into the baseline: {s:?}");
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
    let ilog = Ilog::start(dev, cores).unwrap_or_else(|e| panic!("{ctx} re-start: {e}"));
    for (name, models) in &snaps {
        ranges.check(&ilog, &ctx, &format!("after a re-mount: volume {name}"), Some(name), models);
    }
    ranges.check(&ilog, &ctx, "after a re-mount: current image", None, &ranges.models);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
}

// ---- a log full of versions -----------------------------------------------------

/// Writes the whole volume in stripe-sized writes (the disk is full), and
/// returns its model.
fn fill_volume(ilog: &Ilog, ctx: &Ctx, first_tag: Tag) -> Vec<Tag> {
    let volume_blocks = ilog.volume_blocks();
    let mut model = vec![0; volume_blocks as usize];
    for (i, lba) in (0..volume_blocks).step_by(STRIPE_BLOCKS as usize).enumerate() {
        let blocks = STRIPE_BLOCKS.min(volume_blocks - lba);
        let tag = first_tag + i as u64;
        let buf = write_buf(lba, blocks, tag);
        call(ilog, ctx, "filling write", Request::Write { lba, blocks: blocks as u32, buf: lend(&buf) })
            .unwrap_or_else(|e| panic!("{ctx} filling write at {lba}: {e}"));
        model[lba as usize..(lba + blocks) as usize].fill(tag);
    }
    model
}

/// A snapshot of a full disk, then overwrites of distinct LBAs until the
/// log is full of the versions the snapshot and the current image need.
/// The failing write fails with `NoSpace` (in bounded time); everything
/// acknowledged reads back, and so does the snapshot, also after a
/// re-mount; reads and flush keep working. Deleting the volume makes the
/// whole volume writable again.
fn enospc_run(cores: u32, seed: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("a full disk's snapshot fills the log, {cores} core(s)"), seed };
    let log_percent = FormatOptions::default().log_percent;
    let dev = device(log_percent);
    format(dev.as_ref(), log_percent, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    set_compaction_policy(&ilog);
    let volume_blocks = ilog.volume_blocks();
    let mut model = fill_volume(&ilog, &ctx, 1);
    let snapshot = model.clone();
    let snap = ilog.snapshot(Some("full")).unwrap_or_else(|e| panic!("{ctx} snapshot: {e}"));
    let capacity_blocks = stats(&ilog, &ctx).log_capacity_bytes / BS as u64;

    // Distinct LBAs in a random order of stripe-sized slots, each written
    // once with 1..=16 blocks.
    let mut rng = Rng::new(seed);
    let mut slots: Vec<u64> = (0..volume_blocks / STRIPE_BLOCKS).collect();
    rng.shuffle(&mut slots);
    let mut tag = 1 << 32;
    let mut slots = slots.into_iter();
    let mut write = |ilog: &Ilog, model: &mut [Tag], what: &str| -> Option<Result<(), Error>> {
        let slot = slots.next()?;
        let blocks = 1 + rng.below(STRIPE_BLOCKS);
        let lba = slot * STRIPE_BLOCKS;
        tag += 1;
        let buf = write_buf(lba, blocks, tag);
        let r = call(ilog, &ctx, what, Request::Write { lba, blocks: blocks as u32, buf: lend(&buf) }).map(drop);
        if r.is_ok() {
            model[lba as usize..(lba + blocks) as usize].fill(tag);
        }
        Some(r)
    };
    let mut overwritten = 0u64;
    let failure = loop {
        match write(&ilog, &mut model, "overwrite") {
            None => panic!("{ctx}: the whole volume was overwritten beside its snapshot without ENOSPC"),
            Some(Ok(())) => overwritten += 1,
            Some(Err(e)) => break e,
        }
    };
    let s = stats(&ilog, &ctx);
    print_stats(&ctx, &s);
    println!(
        "{ctx}: {overwritten} overwrites acknowledged, then {failure}; {} % of the log holds versions",
        s.versions_percent
    );
    assert_eq!(failure, Error::NoSpace, "{ctx}: the log filled up with another error than ENOSPC");
    let changed = model.iter().zip(&snapshot).filter(|(a, b)| a != b).count() as u64;
    assert!(
        changed * 10 >= capacity_blocks * 6,
        "{ctx}: ENOSPC with only {changed} of {capacity_blocks} log blocks holding versions"
    );
    check_range(&ilog, &ctx, "after the first ENOSPC", None, 0, &model);
    check_range(&ilog, &ctx, "the snapshot after the first ENOSPC", Some(&snap.name), 0, &snapshot);
    // Later writes: ENOSPC, or (if the engine found room) acknowledged and intact.
    for i in 0..8 {
        match write(&ilog, &mut model, "write after ENOSPC") {
            Some(Ok(())) | None => {}
            Some(Err(e)) => assert_eq!(e, Error::NoSpace, "{ctx}: write {i} after ENOSPC"),
        }
    }
    ilog.flush().unwrap_or_else(|e| panic!("{ctx}: flush after ENOSPC: {e}"));
    check_range(&ilog, &ctx, "after ENOSPC and a flush", None, 0, &model);
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close after ENOSPC: {e}"));

    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx}: re-start after ENOSPC: {e}"));
    check_range(&ilog, &ctx, "after a re-mount", None, 0, &model);
    check_range(&ilog, &ctx, "the snapshot after a re-mount", Some(&snap.name), 0, &snapshot);
    // The volume goes: its versions drain, and the whole volume takes
    // writes again.
    ilog.delete_volume(&snap.name).unwrap_or_else(|e| panic!("{ctx}: delete {}: {e}", snap.name));
    let model = fill_volume(&ilog, &ctx, 1 << 40);
    check_range(&ilog, &ctx, "a full overwrite after the delete", None, 0, &model);
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    let ilog = Ilog::start(dev, cores).unwrap_or_else(|e| panic!("{ctx}: re-start: {e}"));
    check_range(&ilog, &ctx, "after the last re-mount", None, 0, &model);
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
}

#[test]
fn enospc_when_a_snapshots_versions_fill_the_log_one_core() {
    enospc_run(1, seed_or(0x5ace_0011));
}

#[test]
fn enospc_when_a_snapshots_versions_fill_the_log_two_cores() {
    enospc_run(2, seed_or(0x5ace_0012));
}

/// `retention.on_full: delete_oldest`: a full overwrite after two snapshots
/// succeeds (the oldest volumes are retired as the log fills), and a
/// volume that survives reads its own data.
fn delete_oldest_run(cores: u32, seed: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("on_full delete_oldest, {cores} core(s)"), seed };
    let log_percent = FormatOptions::default().log_percent;
    let dev = device(log_percent);
    format(dev.as_ref(), log_percent, &ctx);
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    ilog.set_policy(r#"{"retention": {"on_full": "delete_oldest"}}"#).expect("set the policy");
    let first = fill_volume(&ilog, &ctx, 1);
    ilog.snapshot(Some("first")).unwrap_or_else(|e| panic!("{ctx} snapshot: {e}"));
    // A few blocks change, then the second snapshot.
    let mut second = first.clone();
    for lba in (0..64).map(|i| i * 7) {
        let buf = write_buf(lba, 1, 1 << 20 | lba);
        ilog.write(lba, &buf).unwrap_or_else(|e| panic!("{ctx} write at {lba}: {e}"));
        second[lba as usize] = 1 << 20 | lba;
    }
    ilog.snapshot(Some("second")).unwrap_or_else(|e| panic!("{ctx} snapshot: {e}"));
    let model = fill_volume(&ilog, &ctx, 1 << 40);
    check_range(&ilog, &ctx, "after a full overwrite", None, 0, &model);
    let s = stats(&ilog, &ctx);
    print_stats(&ctx, &s);
    assert!(s.volumes_retired >= 1, "{ctx}: the log filled without retiring a volume: {s:?}");
    let left: Vec<String> = ilog.volumes().expect("list").into_iter().map(|v| v.name).collect();
    assert!(!left.contains(&"first".to_owned()), "{ctx}: the oldest volume survived a full log: {left:?}");
    if left.contains(&"second".to_owned()) {
        check_range(&ilog, &ctx, "the surviving volume", Some("second"), 0, &second);
    }
    ilog.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
}

#[test]
fn full_log_retires_the_oldest_volume_one_core() {
    delete_oldest_run(1, seed_or(0x5ace_0021));
}

#[test]
fn full_log_retires_the_oldest_volume_two_cores() {
    delete_oldest_run(2, seed_or(0x5ace_0022));
}

/// Many small snapshots cost about their data: on a 256 MiB base with the
/// defaults, 1,000 rounds of "write 16 KiB at a new offset, snapshot" fit
/// (the segments the snapshots cut are shared, not closed), every volume
/// reads its own data, and deleting the older half of the volumes gives
/// their space back (they drain into the baseline).
fn small_snapshots_run(cores: u32) {
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx { what: format!("1,000 small snapshots, {cores} core(s)"), seed: u64::from(cores) };
    let dev = Arc::new(MallocDevice::new((256 << 20) / BS as u64, BS as u32));
    ilog_bdev::engine::format(dev.as_ref(), &FormatOptions::default(), [9; 16]).expect("format");
    let ilog = Ilog::start(dev.clone(), cores).unwrap_or_else(|e| panic!("{ctx} start: {e}"));
    const ROUNDS: u64 = 1000;
    const BLOCKS: u64 = 4;
    let mut names = Vec::new();
    for round in 0..ROUNDS {
        let lba = round * BLOCKS;
        ilog.write(lba, &write_buf(lba, BLOCKS, round + 1)).unwrap_or_else(|e| panic!("{ctx} round {round}: {e}"));
        let v = ilog.snapshot(None).unwrap_or_else(|e| panic!("{ctx} round {round}: snapshot: {e}"));
        names.push(v.name);
    }
    let full = stats(&ilog, &ctx);
    print_stats(&ctx, &full);
    // Volume k holds rounds 0..=k, zeros after.
    let image = |k: usize| -> Vec<Tag> {
        (0..ROUNDS * BLOCKS).map(|lba| if lba / BLOCKS <= k as u64 { lba / BLOCKS + 1 } else { 0 }).collect()
    };
    for k in [0, 1, 499, 500, 998, 999] {
        check_range(&ilog, &ctx, &format!("volume {}", names[k]), Some(&names[k]), 0, &image(k));
    }
    for name in &names[..500] {
        ilog.delete_volume(name).unwrap_or_else(|e| panic!("{ctx} delete {name}: {e}"));
    }
    // The deletes' drain runs in the background: wait for it to commit.
    let started = Instant::now();
    let freed = loop {
        let s = stats(&ilog, &ctx);
        if s.log_used_bytes < full.log_used_bytes && s.live_bytes < full.live_bytes {
            break s;
        }
        assert!(started.elapsed() < HANG, "{ctx}: the deleted volumes' space never came back: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    print_stats(&ctx, &freed);
    assert!(
        freed.live_bytes * 10 <= full.live_bytes * 6,
        "{ctx}: half the volumes deleted, live {} of {} KiB left",
        freed.live_bytes >> 10,
        full.live_bytes >> 10
    );
    for k in [500, 501, 999] {
        check_range(&ilog, &ctx, &format!("volume {} after the deletes", names[k]), Some(&names[k]), 0, &image(k));
    }
    check_range(&ilog, &ctx, "the current image", None, 0, &image(999));
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
}

#[test]
fn a_thousand_small_snapshots_cost_their_data_one_core() {
    small_snapshots_run(1);
}

#[test]
fn a_thousand_small_snapshots_cost_their_data_two_cores() {
    small_snapshots_run(2);
}
