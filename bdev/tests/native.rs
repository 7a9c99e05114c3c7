//! The native runtime (reactor threads, io_uring for the file device) under
//! a seeded random workload from several client threads at once, checked
//! against an in-memory model; then a clean re-mount and a crash re-mount,
//! each on a different core count. Plus the errors bad input gets.
//!
//! Every client thread owns a disjoint LBA range, so the expected content of
//! the current image is deterministic. Snapshots are taken by thread 0 while
//! the others keep writing: a snapshot is exact on thread 0's range, and on
//! another thread's range each block must hold a version that block had
//! while the snapshot was in flight.
//!
//! Set `ILOG_NATIVE_SEED` to replay one seed in every test.

mod common;

use common::blocks::{decode, fill, tag_of, Seen, Tag};
use ilog_bdev::device::{BlockDevice, DmaBuf, FileDevice, MallocDevice};
use ilog_bdev::engine::{LogEntry, LogEntryKind, VolumeInfo};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::native::Ilog;
use ilog_bdev::Error;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

const BS: usize = 4096;
const STRIPE_BLOCKS: u64 = 16;
/// Blocks each client thread owns: 64 stripes, so every core owns some.
const RANGE_BLOCKS: u64 = 1024;
/// Mutating and reading operations per client thread in the random phase.
const OPS_PER_THREAD: usize = 500;
/// Snapshots thread 0 takes at most (each keeps the versions it needs in
/// the log, and there is no compaction to win the space back).
const MAX_SNAPSHOTS: usize = 12;
/// Blocks per read request when reading whole ranges.
const READ_CHUNK: u64 = 128;

fn options() -> FormatOptions {
    FormatOptions {
        stripe_bytes: STRIPE_BLOCKS * BS as u64,
        segment_bytes: 128 * BS as u64,
        log_percent: 50,
        max_volumes: 64,
        ..FormatOptions::default()
    }
}

/// Seeds each configuration runs.
const SEEDS: u64 = 3;

/// `SEEDS` seeds from `base`, or only `ILOG_NATIVE_SEED` when it is set.
fn seeds(base: u64) -> Vec<u64> {
    match std::env::var("ILOG_NATIVE_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            vec![parsed.expect("ILOG_NATIVE_SEED is a number")]
        }
        Err(_) => (0..SEEDS).map(|i| base + (i << 16)).collect(),
    }
}

/// What every assertion message names: the run and its seed.
struct Ctx {
    what: String,
    seed: u64,
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} seed={:#x}]", self.what, self.seed)
    }
}

// ---- block contents ---------------------------------------------------------

/// A buffer for `blocks` blocks: aligned (the engine's zero-copy path on an
/// O_DIRECT file) or a plain vector (the runtime bounces it when needed).
enum Buf {
    Aligned(DmaBuf),
    Plain(Vec<u8>),
}

impl Buf {
    fn new(blocks: u64, aligned: bool) -> Buf {
        let len = blocks as usize * BS;
        if aligned {
            Buf::Aligned(DmaBuf::new(len, 4096))
        } else {
            Buf::Plain(vec![0; len])
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Aligned(b) => b,
            Buf::Plain(b) => b,
        }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Aligned(b) => b,
            Buf::Plain(b) => b,
        }
    }
}

fn write_buf(lba: u64, blocks: u64, tag: Tag, aligned: bool) -> Buf {
    let mut buf = Buf::new(blocks, aligned);
    for (i, block) in buf.chunks_exact_mut(BS).enumerate() {
        fill(block, lba + i as u64, tag);
    }
    buf
}

/// Reads `blocks` blocks at `lba` of the current image (`volume` None) or
/// of a snapshot volume, in chunks, decoding each block.
fn read_seen(ilog: &Ilog, volume: Option<&str>, lba: u64, blocks: u64, aligned: bool) -> Result<Vec<Seen>, Error> {
    let mut out = Vec::with_capacity(blocks as usize);
    let mut at = lba;
    while at < lba + blocks {
        let n = READ_CHUNK.min(lba + blocks - at);
        let mut buf = Buf::new(n, aligned);
        match volume {
            None => ilog.read(at, &mut buf)?,
            Some(v) => ilog.read_volume(v, at, &mut buf)?,
        }
        out.extend(buf.chunks_exact(BS).enumerate().map(|(i, b)| decode(b, at + i as u64)));
        at += n;
    }
    Ok(out)
}

fn stripes_touched(lba: u64, blocks: u64) -> u64 {
    (lba + blocks - 1) / STRIPE_BLOCKS - lba / STRIPE_BLOCKS + 1
}

/// Checks that blocks `lba..` read as `seen` hold exactly `expected`.
fn assert_blocks(ctx: &Ctx, what: &str, lba: u64, seen: &[Seen], expected: &[Tag]) {
    assert_eq!(seen.len(), expected.len(), "{ctx} {what}: length");
    for (i, (s, e)) in seen.iter().zip(expected).enumerate() {
        assert_eq!(*s, Seen::Tag(*e), "{ctx} {what}: block {} (expected tag {e:#x})", lba + i as u64);
    }
}

// ---- devices ----------------------------------------------------------------

/// The base device, re-opened at every start as a restarted process would.
enum Backing {
    Malloc(Arc<MallocDevice>),
    File(PathBuf),
}

impl Backing {
    fn malloc(blocks: u64) -> Backing {
        Backing::Malloc(Arc::new(MallocDevice::new(blocks, BS as u32)))
    }

    fn file(blocks: u64) -> Backing {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("ilog-native-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        FileDevice::create(&path, blocks, BS as u32).expect("create the device file");
        Backing::File(path)
    }

    fn device(&self) -> Arc<dyn BlockDevice> {
        match self {
            Backing::Malloc(m) => m.clone(),
            Backing::File(p) => Arc::new(FileDevice::open(p, BS as u32).expect("open the device file")),
        }
    }

    fn format_and_start(&self, cores: u32, ctx: &Ctx) -> Ilog {
        let dev = self.device();
        let uuid: [u8; 16] = ctx.seed.to_le_bytes().repeat(2).try_into().expect("16 bytes");
        ilog_bdev::engine::format(dev.as_ref(), &options(), uuid).unwrap_or_else(|e| panic!("{ctx} format: {e}"));
        Ilog::start(dev, cores).unwrap_or_else(|e| panic!("{ctx} start on {cores} cores: {e}"))
    }

    fn start(&self, cores: u32, ctx: &Ctx) -> Ilog {
        Ilog::start(self.device(), cores).unwrap_or_else(|e| panic!("{ctx} re-start on {cores} cores: {e}"))
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::File(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---- the random workload -------------------------------------------------

/// A change to a thread's range, in the order the thread issued them.
#[derive(Debug, Clone, Copy)]
struct Mutation {
    /// Offset in the thread's range.
    off: u64,
    blocks: u64,
    tag: Tag,
}

fn apply(model: &mut [Tag], m: &Mutation) {
    model[m.off as usize..(m.off + m.blocks) as usize].fill(m.tag);
}

/// Progress counters other threads read around a snapshot.
#[derive(Default)]
struct Progress {
    /// Mutations submitted (counted before submission).
    started: AtomicU64,
    /// Mutations acknowledged (counted after completion).
    completed: AtomicU64,
}

struct Snap {
    name: String,
    partition: u32,
    /// Thread 0's range as of the snapshot: exact, its writes are ordered
    /// with the snapshot.
    own: Vec<Tag>,
    /// Per thread: mutations completed before the snapshot was asked for,
    /// and started before it was answered.
    lo: Vec<u64>,
    hi: Vec<u64>,
}

#[derive(Default)]
struct Outcome {
    model: Vec<Tag>,
    history: Vec<Mutation>,
    data_pieces: u64,
    zero_pieces: u64,
    snaps: Vec<Snap>,
    deleted: Vec<String>,
}

struct Run<'a> {
    ilog: &'a Ilog,
    ctx: &'a Ctx,
    bases: Vec<u64>,
    progress: Vec<Progress>,
    volume_blocks: u64,
}

impl Run<'_> {
    fn worker(&self, t: usize) -> Outcome {
        let ctx = self.ctx;
        let ilog = self.ilog;
        let base = self.bases[t];
        let mut rng = Rng::new(ctx.seed ^ (t as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        let mut out = Outcome { model: vec![0; RANGE_BLOCKS as usize], ..Outcome::default() };
        let mut next_tag = 1;
        for op in 0..OPS_PER_THREAD {
            let aligned = rng.below(2) == 0;
            let roll = rng.below(100);
            match roll {
                // Writes, zeroing and unmapping: the model changes.
                0..=54 => {
                    let blocks = 1 + rng.below(40);
                    let off = rng.below(RANGE_BLOCKS - blocks + 1);
                    let lba = base + off;
                    let kind = rng.below(10);
                    let tag = if kind < 7 { tag_of(t, next_tag) } else { 0 };
                    next_tag += 1;
                    let m = Mutation { off, blocks, tag };
                    out.history.push(m);
                    self.progress[t].started.fetch_add(1, Ordering::SeqCst);
                    let result = match kind {
                        0..=6 => ilog.write(lba, &write_buf(lba, blocks, tag, aligned)),
                        7 | 8 => ilog.write_zeroes(lba, blocks as u32),
                        _ => ilog.unmap(lba, blocks as u32),
                    };
                    result.unwrap_or_else(|e| panic!("{ctx} thread {t} op {op}: {m:?} at lba {lba}: {e}"));
                    self.progress[t].completed.fetch_add(1, Ordering::SeqCst);
                    apply(&mut out.model, &m);
                    if tag == 0 {
                        out.zero_pieces += stripes_touched(lba, blocks);
                    } else {
                        out.data_pieces += stripes_touched(lba, blocks);
                    }
                }
                // Reads of the current image see the newest acknowledged data.
                55..=84 => {
                    let blocks = 1 + rng.below(64);
                    let off = rng.below(RANGE_BLOCKS - blocks + 1);
                    let seen = read_seen(ilog, None, base + off, blocks, aligned)
                        .unwrap_or_else(|e| panic!("{ctx} thread {t} op {op}: read {blocks} at {}: {e}", base + off));
                    let what = format!("thread {t} op {op}: read of the current image");
                    assert_blocks(ctx, &what, base + off, &seen, &out.model[off as usize..(off + blocks) as usize]);
                }
                85..=89 => ilog.flush().unwrap_or_else(|e| panic!("{ctx} thread {t} op {op}: flush: {e}")),
                _ if t == 0 => self.control_op(&mut rng, &mut out, op),
                _ => {}
            }
        }
        out
    }

    /// Thread 0's share of the control plane, while the others write.
    fn control_op(&self, rng: &mut Rng, out: &mut Outcome, op: usize) {
        let (ctx, ilog, base) = (self.ctx, self.ilog, self.bases[0]);
        let live: Vec<usize> = (0..out.snaps.len()).filter(|&i| !out.deleted.contains(&out.snaps[i].name)).collect();
        match rng.below(10) {
            0..=3 if out.snaps.len() < MAX_SNAPSHOTS => {
                let lo = self.progress.iter().map(|p| p.completed.load(Ordering::SeqCst)).collect();
                // Both default names (snap-<n>) and chosen ones.
                let name = (rng.below(2) == 0).then(|| format!("vol-{op}"));
                let info =
                    ilog.snapshot(name.as_deref()).unwrap_or_else(|e| panic!("{ctx} op {op}: snapshot {name:?}: {e}"));
                let hi = self.progress.iter().map(|p| p.started.load(Ordering::SeqCst)).collect();
                if let Some(name) = &name {
                    assert_eq!(&info.name, name, "{ctx} op {op}: the snapshot takes the name asked for");
                }
                let listed = ilog.volume(&info.name).unwrap_or_else(|e| panic!("{ctx} op {op}: list: {e}"));
                assert_eq!(listed, info, "{ctx} op {op}: the new volume is listed as returned");
                let seen = read_seen(ilog, Some(&info.name), base, RANGE_BLOCKS, rng.below(2) == 0)
                    .unwrap_or_else(|e| panic!("{ctx} op {op}: read new volume {}: {e}", info.name));
                assert_blocks(ctx, &format!("op {op}: new volume {}", info.name), base, &seen, &out.model);
                out.snaps.push(Snap { name: info.name, partition: info.partition, own: out.model.clone(), lo, hi });
            }
            // Reading an older volume after newer writes still sees it as of its snapshot.
            0..=5 if !live.is_empty() => {
                let s = &out.snaps[live[rng.below(live.len() as u64) as usize]];
                let blocks = 1 + rng.below(64);
                let off = rng.below(RANGE_BLOCKS - blocks + 1);
                let seen = read_seen(ilog, Some(&s.name), base + off, blocks, rng.below(2) == 0)
                    .unwrap_or_else(|e| panic!("{ctx} op {op}: read volume {}: {e}", s.name));
                let expected = &s.own[off as usize..(off + blocks) as usize];
                assert_blocks(ctx, &format!("op {op}: read of volume {}", s.name), base + off, &seen, expected);
            }
            // Deletes are capped so that most volumes live on to be checked after re-mounts.
            6 | 7 if live.len() >= 2 && out.deleted.len() < MAX_SNAPSHOTS / 3 => {
                let name = out.snaps[live[rng.below(live.len() as u64) as usize]].name.clone();
                ilog.delete_volume(&name).unwrap_or_else(|e| panic!("{ctx} op {op}: delete {name}: {e}"));
                out.deleted.push(name.clone());
                let mut buf = vec![0; BS];
                assert_eq!(
                    ilog.read_volume(&name, base, &mut buf),
                    Err(Error::NoSuchVolume(name.clone())),
                    "{ctx} op {op}: a deleted volume cannot be read"
                );
                assert_eq!(
                    ilog.delete_volume(&name),
                    Err(Error::NoSuchVolume(name.clone())),
                    "{ctx} op {op}: a deleted volume cannot be deleted again"
                );
                let volumes = ilog.volumes().unwrap_or_else(|e| panic!("{ctx} op {op}: list: {e}"));
                assert!(volumes.iter().all(|v| v.name != name), "{ctx} op {op}: {name} is still listed: {volumes:?}");
            }
            8 => {
                let volumes = ilog.volumes().unwrap_or_else(|e| panic!("{ctx} op {op}: list: {e}"));
                scan_log(ilog, ctx, self.volume_blocks, &volumes, rng.next_u64(), false);
            }
            _ => {}
        }
    }
}

/// Pages through the whole log from cursor 0 and checks what every page
/// holds: sequences strictly increasing across pages, every entry inside
/// the volume, named after its partition's volume, and (with data) every
/// data block a block written to that LBA. Entries that drain into the
/// baseline meanwhile leave the log: the scan goes on where the log says.
fn scan_log(
    ilog: &Ilog,
    ctx: &Ctx,
    volume_blocks: u64,
    volumes: &[VolumeInfo],
    page_seed: u64,
    with_data: bool,
) -> Vec<LogEntry> {
    // Page sizes from their own generator: how many pages a scan takes
    // depends on timing, which must not perturb the caller's sequence.
    let mut rng = Rng::new(page_seed);
    let names: BTreeMap<u32, &str> = volumes.iter().map(|v| (v.partition, v.name.as_str())).collect();
    let mut all: Vec<LogEntry> = Vec::new();
    let mut cursor = 0;
    for page in 0.. {
        assert!(page < 100_000, "{ctx} the log cursor never reaches the end");
        let count = 1 + rng.below(200) as u32;
        let batch = match ilog.log_read(cursor, count, with_data) {
            Err(Error::CursorDrained { oldest, .. }) if oldest > cursor => {
                cursor = oldest;
                continue;
            }
            r => r.unwrap_or_else(|e| panic!("{ctx} log_read({cursor}): {e}")),
        };
        assert!(batch.entries.len() <= count as usize, "{ctx} log_read returned more than {count} entries");
        let Some(last) = batch.entries.last() else {
            assert_eq!(batch.next_cursor, cursor, "{ctx} an empty page leaves the cursor where it was");
            break;
        };
        assert_eq!(batch.next_cursor, last.sequence + 1, "{ctx} next_cursor follows the page's last entry");
        cursor = batch.next_cursor;
        for e in batch.entries {
            if let Some(prev) = all.last() {
                assert!(e.sequence > prev.sequence, "{ctx} log sequences not increasing: {prev:?} then {e:?}");
            }
            assert!(
                e.blocks > 0 && e.lba + u64::from(e.blocks) <= volume_blocks,
                "{ctx} log entry outside the volume of {volume_blocks} blocks: {e:?}"
            );
            assert!(
                e.lba / STRIPE_BLOCKS == (e.lba + u64::from(e.blocks) - 1) / STRIPE_BLOCKS,
                "{ctx} log entry crosses a stripe: {e:?}"
            );
            assert_eq!(e.volume.as_deref(), names.get(&e.partition).copied(), "{ctx} volume name of {e:?}");
            match (e.kind, &e.data) {
                (LogEntryKind::Data, Some(data)) => {
                    assert_eq!(data.len(), e.blocks as usize * BS, "{ctx} data length of entry {}", e.sequence);
                    for (i, block) in data.chunks_exact(BS).enumerate() {
                        let lba = e.lba + i as u64;
                        assert!(
                            matches!(decode(block, lba), Seen::Tag(t) if t != 0),
                            "{ctx} log entry {} block {i} is not data written to lba {lba}",
                            e.sequence
                        );
                    }
                }
                (LogEntryKind::Data, None) => assert!(!with_data, "{ctx} data entry {} came without data", e.sequence),
                (LogEntryKind::Zero, data) => assert_eq!(*data, None, "{ctx} zero entry {} has data", e.sequence),
            }
            all.push(LogEntry { data: None, ..e });
        }
    }
    all
}

/// The tags each block of a range may hold in a snapshot taken after its
/// thread completed `lo` mutations and before it started more than `hi`.
fn possible_tags(history: &[Mutation], lo: u64, hi: u64) -> Vec<Vec<Tag>> {
    let mut state = vec![0; RANGE_BLOCKS as usize];
    for m in &history[..lo as usize] {
        apply(&mut state, m);
    }
    let mut possible: Vec<Vec<Tag>> = state.into_iter().map(|t| vec![t]).collect();
    for m in &history[lo as usize..hi as usize] {
        for b in m.off..m.off + m.blocks {
            possible[b as usize].push(m.tag);
        }
    }
    possible
}

/// Reads every thread range of a volume (or of the current image).
fn read_ranges(ilog: &Ilog, ctx: &Ctx, bases: &[u64], volume: Option<&str>) -> Vec<Vec<Seen>> {
    bases
        .iter()
        .map(|&base| {
            read_seen(ilog, volume, base, RANGE_BLOCKS, true)
                .unwrap_or_else(|e| panic!("{ctx} read {volume:?} at {base}: {e}"))
        })
        .collect()
}

fn assert_zero_gaps(ilog: &Ilog, ctx: &Ctx, bases: &[u64], volume_blocks: u64, volume: Option<&str>) {
    for &base in bases {
        let end = base + RANGE_BLOCKS;
        if end + 64 <= volume_blocks && !bases.contains(&end) {
            let seen = read_seen(ilog, volume, end, 64, false).unwrap_or_else(|e| panic!("{ctx} read gap {end}: {e}"));
            assert_blocks(ctx, &format!("never written blocks of {volume:?}"), end, &seen, &[0; 64]);
        }
    }
}

fn assert_images(ctx: &Ctx, what: &str, bases: &[u64], seen: &[Vec<Seen>], expected: &[Vec<Seen>]) {
    for ((base, s), e) in bases.iter().zip(seen).zip(expected) {
        for (i, (s, e)) in s.iter().zip(e).enumerate() {
            assert_eq!(s, e, "{ctx} {what}: block {}", base + i as u64);
        }
    }
}

/// The whole scenario for one device and core count.
fn workload(backing: Backing, cores: u32, remount_cores: u32, crash_cores: u32, seed: u64) {
    let started = Instant::now();
    let kind = if matches!(backing, Backing::Malloc(_)) { "malloc" } else { "file" };
    let ctx = Ctx { what: format!("{kind} on {cores} cores"), seed };
    let mut rng = Rng::new(seed);
    let ilog = backing.format_and_start(cores, &ctx);
    let volume_blocks = ilog.volume_blocks();
    let threads = 2 + rng.below(3) as usize;
    // Spread the ranges over the volume; the last one ends at its last block.
    let mut bases: Vec<u64> = (0..threads as u64).map(|t| t * (volume_blocks / threads as u64)).collect();
    bases[threads - 1] = volume_blocks - RANGE_BLOCKS;
    assert!(bases.windows(2).all(|w| w[0] + RANGE_BLOCKS <= w[1]), "{ctx} volume too small for {threads} ranges");

    // ---- concurrent random phase ----
    let run = Run {
        ilog: &ilog,
        ctx: &ctx,
        bases: bases.clone(),
        progress: (0..threads).map(|_| Progress::default()).collect(),
        volume_blocks,
    };
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn({
                    let run = &run;
                    move || run.worker(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let models: Vec<&[Tag]> = outcomes.iter().map(|o| &o.model[..]).collect();
    let snaps = &outcomes[0].snaps;
    let deleted = &outcomes[0].deleted;

    // The current image, quiesced, is exactly the model.
    for (seen, (&base, model)) in read_ranges(&ilog, &ctx, &bases, None).iter().zip(bases.iter().zip(&models)) {
        assert_blocks(&ctx, "current image after the random phase", base, seen, model);
    }
    assert_zero_gaps(&ilog, &ctx, &bases, volume_blocks, None);

    // Every live volume: exact on thread 0's range, and on the others each
    // block holds a version it had while the snapshot was in flight.
    let mut images: BTreeMap<String, Vec<Vec<Seen>>> = BTreeMap::new();
    for snap in snaps.iter().filter(|s| !deleted.contains(&s.name)) {
        let seen = read_ranges(&ilog, &ctx, &bases, Some(&snap.name));
        assert_blocks(&ctx, &format!("volume {} on its snapshotter's range", snap.name), bases[0], &seen[0], &snap.own);
        for t in 1..threads {
            let possible = possible_tags(&outcomes[t].history, snap.lo[t], snap.hi[t]);
            for (i, s) in seen[t].iter().enumerate() {
                assert!(
                    matches!(s, Seen::Tag(tag) if possible[i].contains(tag)),
                    "{ctx} volume {} block {}: {s:?} is no version the block had during the snapshot \
                     (possible: {:x?})",
                    snap.name,
                    bases[t] + i as u64,
                    possible[i]
                );
            }
        }
        assert_zero_gaps(&ilog, &ctx, &bases, volume_blocks, Some(&snap.name));
        images.insert(snap.name.clone(), seen);
    }
    let volumes = ilog.volumes().unwrap_or_else(|e| panic!("{ctx} list: {e}"));
    let mut listed: Vec<(String, u32)> = volumes.iter().map(|v| (v.name.clone(), v.partition)).collect();
    listed.sort();
    let mut expected: Vec<(String, u32)> =
        snaps.iter().filter(|s| !deleted.contains(&s.name)).map(|s| (s.name.clone(), s.partition)).collect();
    expected.sort();
    assert_eq!(listed, expected, "{ctx} the live volumes");

    // Until compaction rewrites the log (the merge of a deleted volume) or
    // part of it drains, it holds one entry per stripe piece of every
    // mutation.
    let log = scan_log(&ilog, &ctx, volume_blocks, &volumes, rng.next_u64(), true);
    let stats = ilog.stats().unwrap_or_else(|e| panic!("{ctx} stats: {e}"));
    assert_eq!(stats.volumes as usize, volumes.len(), "{ctx} stats count the live volumes");
    if stats.segments_freed == 0 && stats.bytes_moved == 0 && stats.drains == 0 {
        let data_entries = log.iter().filter(|e| e.kind == LogEntryKind::Data).count() as u64;
        let zero_entries = log.len() as u64 - data_entries;
        let data_pieces: u64 = outcomes.iter().map(|o| o.data_pieces).sum();
        let zero_pieces: u64 = outcomes.iter().map(|o| o.zero_pieces).sum();
        assert_eq!((data_entries, zero_entries), (data_pieces, zero_pieces), "{ctx} (data, zero) entries in the log");
    }

    // ---- clean re-mount on another core count ----
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
    let ctx = Ctx { what: format!("{} re-mounted on {remount_cores} cores", ctx.what), seed };
    let ilog = backing.start(remount_cores, &ctx);
    assert_eq!(ilog.volume_blocks(), volume_blocks, "{ctx} volume size");
    let mut model: Vec<Vec<Tag>> = models.iter().map(|m| m.to_vec()).collect();
    for (seen, (&base, m)) in read_ranges(&ilog, &ctx, &bases, None).iter().zip(bases.iter().zip(&model)) {
        assert_blocks(&ctx, "current image", base, seen, m);
    }
    assert_zero_gaps(&ilog, &ctx, &bases, volume_blocks, None);
    assert_eq!(ilog.volumes().unwrap_or_else(|e| panic!("{ctx} list: {e}")), volumes, "{ctx} the volume table");
    for (name, image) in &images {
        assert_images(&ctx, &format!("volume {name}"), &bases, &read_ranges(&ilog, &ctx, &bases, Some(name)), image);
    }
    for name in deleted {
        let mut buf = vec![0; BS];
        assert_eq!(ilog.read_volume(name, 0, &mut buf), Err(Error::NoSuchVolume(name.clone())), "{ctx} {name}");
    }
    // The log after a clean re-mount is the log before it, less what
    // drained into the baseline since (the oldest volume's partition may
    // drain at any time).
    let relog = scan_log(&ilog, &ctx, volume_blocks, &volumes, rng.next_u64(), false);
    let drained = ilog.stats().unwrap_or_else(|e| panic!("{ctx} stats: {e}")).baseline_partition;
    let mut before = log.iter();
    for e in &relog {
        assert!(
            before.any(|b| b == e),
            "{ctx} entry {e:?} in the re-mounted log, not (in order) in the log before (baseline partition {} before \
             the close, {drained} after the re-mount; the log before at lba {}: {:?})",
            stats.baseline_partition,
            e.lba,
            log.iter().filter(|b| b.lba == e.lba).collect::<Vec<_>>()
        );
    }
    let kept = |l: &[LogEntry]| l.iter().filter(|e| e.partition > drained).cloned().collect::<Vec<_>>();
    assert_eq!(kept(&relog), kept(&log), "{ctx} the log after a clean re-mount, less what drained since");

    // ---- crash: writes, a snapshot, more writes, a flush, then unflushed
    // writes, and the reactors stop without a checkpoint ----
    let mutate = |ilog: &Ilog, rng: &mut Rng, model: &mut Vec<Vec<Tag>>, n: usize, tag_base: u64| {
        let mut done = Vec::new();
        for i in 0..n {
            let t = rng.below(threads as u64) as usize;
            let blocks = 1 + rng.below(40);
            let off = rng.below(RANGE_BLOCKS - blocks + 1);
            let lba = bases[t] + off;
            let tag = if rng.below(5) == 0 { 0 } else { tag_of(t, tag_base + i as u64) };
            let result = if tag == 0 {
                ilog.write_zeroes(lba, blocks as u32)
            } else {
                ilog.write(lba, &write_buf(lba, blocks, tag, rng.below(2) == 0))
            };
            result.unwrap_or_else(|e| panic!("{ctx} crash phase write {i} at {lba}: {e}"));
            apply(&mut model[t], &Mutation { off, blocks, tag });
            done.push((t, Mutation { off, blocks, tag }));
        }
        done
    };
    mutate(&ilog, &mut rng, &mut model, 20, 1 << 40);
    let snap = ilog.snapshot(Some("before-crash")).unwrap_or_else(|e| panic!("{ctx} snapshot: {e}"));
    images.insert(snap.name.clone(), model.iter().map(|m| m.iter().map(|&t| Seen::Tag(t)).collect()).collect());
    mutate(&ilog, &mut rng, &mut model, 20, 2 << 40);
    ilog.flush().unwrap_or_else(|e| panic!("{ctx} flush: {e}"));
    let flushed = model.clone();
    let unflushed = mutate(&ilog, &mut rng, &mut model, 10, 3 << 40);
    ilog.abort();

    let ctx = Ctx { what: format!("{} crashed, re-mounted on {crash_cores} cores", ctx.what), seed };
    let ilog = backing.start(crash_cores, &ctx);
    // Flushed data is all there; a block written after the flush holds its
    // flushed version or a later one.
    let mut possible: Vec<Vec<Vec<Tag>>> = flushed.iter().map(|m| m.iter().map(|&t| vec![t]).collect()).collect();
    for (t, m) in &unflushed {
        for b in m.off..m.off + m.blocks {
            possible[*t][b as usize].push(m.tag);
        }
    }
    for (t, seen) in read_ranges(&ilog, &ctx, &bases, None).iter().enumerate() {
        for (i, s) in seen.iter().enumerate() {
            assert!(
                matches!(s, Seen::Tag(tag) if possible[t][i].contains(tag)),
                "{ctx} block {}: {s:?}, expected one of {:x?}",
                bases[t] + i as u64,
                possible[t][i]
            );
        }
    }
    assert_zero_gaps(&ilog, &ctx, &bases, volume_blocks, None);
    let mut names: Vec<String> =
        ilog.volumes().unwrap_or_else(|e| panic!("{ctx} list: {e}")).into_iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(names, images.keys().cloned().collect::<Vec<_>>(), "{ctx} the volumes after the crash");
    for (name, image) in &images {
        assert_images(&ctx, &format!("volume {name}"), &bases, &read_ranges(&ilog, &ctx, &bases, Some(name)), image);
    }
    scan_log(&ilog, &ctx, volume_blocks, &ilog.volumes().expect("list"), rng.next_u64(), false);
    // And the recovered bdev takes writes again.
    let lba = bases[0];
    ilog.write(lba, &write_buf(lba, 3, tag_of(0, 4 << 40), false)).unwrap_or_else(|e| panic!("{ctx} write: {e}"));
    let seen = read_seen(&ilog, None, lba, 3, false).unwrap_or_else(|e| panic!("{ctx} read: {e}"));
    assert_blocks(&ctx, "a write after recovery", lba, &seen, &[tag_of(0, 4 << 40); 3]);
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close: {e}"));
    eprintln!(
        "{ctx}: {threads} threads, {} snapshots ({} deleted), {} log entries, {} of {} segments free, {:.1?}",
        snaps.len(),
        deleted.len(),
        log.len(),
        stats.segments_free,
        stats.segments_total,
        started.elapsed()
    );
}

/// 512 MiB: room in the log for the whole workload, which never compacts.
const DEVICE_BLOCKS: u64 = 131072;

#[test]
fn malloc_on_1_core_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0x11e7_0001) {
        workload(Backing::malloc(DEVICE_BLOCKS), 1, 2, 4, seed);
    }
}

#[test]
fn malloc_on_2_cores_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0x11e7_0002) {
        workload(Backing::malloc(DEVICE_BLOCKS), 2, 4, 1, seed);
    }
}

#[test]
fn malloc_on_4_cores_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0x11e7_0004) {
        workload(Backing::malloc(DEVICE_BLOCKS), 4, 1, 2, seed);
    }
}

#[test]
fn file_on_1_core_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0xf11e_0001) {
        workload(Backing::file(DEVICE_BLOCKS), 1, 2, 4, seed);
    }
}

#[test]
fn file_on_2_cores_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0xf11e_0002) {
        workload(Backing::file(DEVICE_BLOCKS), 2, 4, 1, seed);
    }
}

#[test]
fn file_on_4_cores_matches_the_model_through_remount_and_crash() {
    for seed in seeds(0xf11e_0004) {
        workload(Backing::file(DEVICE_BLOCKS), 4, 1, 2, seed);
    }
}

// ---- focused regressions -------------------------------------------------------

/// Blocks 0..4 and then block 6 are written back to back on one core, so
/// their log addresses are consecutive while blocks 4 and 5 (never written,
/// or zeroed) lie between them. A read of 0..8 must still put every block
/// in its own place, in the current image and in a snapshot volume.
#[test]
fn a_read_puts_every_block_in_place_when_zero_blocks_separate_log_adjacent_ones() {
    for zeroed in [false, true] {
        let (ilog, ctx) = small_ilog(4096, 1, 3);
        let (a, b) = (tag_of(0, 1), tag_of(0, 2));
        ilog.write(0, &write_buf(0, 4, a, false)).unwrap();
        if zeroed {
            // A zero entry takes no data blocks: block 6 still follows block 3 in the log.
            ilog.write_zeroes(4, 2).unwrap();
        }
        ilog.write(6, &write_buf(6, 1, b, false)).unwrap();
        let snap = ilog.snapshot(None).unwrap();
        let expected = [a, a, a, a, 0, 0, b, 0];
        for volume in [None, Some(snap.name.as_str())] {
            // A buffer full of junk: every block of it must be overwritten.
            let mut buf = vec![0xee; 8 * BS];
            match volume {
                None => ilog.read(0, &mut buf).unwrap(),
                Some(v) => ilog.read_volume(v, 0, &mut buf).unwrap(),
            }
            let seen: Vec<Seen> = buf.chunks_exact(BS).enumerate().map(|(i, b)| decode(b, i as u64)).collect();
            assert_blocks(&ctx, &format!("read of {volume:?} (block 4 and 5 zeroed: {zeroed})"), 0, &seen, &expected);
        }
        ilog.close().unwrap();
    }
}

/// The simplest crash: what a flush acknowledged is there after the
/// reactors stop without a clean checkpoint, on any core count.
#[test]
fn a_flushed_write_survives_a_crash() {
    for (cores, restart_cores) in [(1, 1), (2, 2), (1, 4), (4, 1)] {
        let backing = Backing::malloc(4096);
        let ctx = Ctx { what: format!("crash on {cores} cores, restart on {restart_cores}"), seed: 4 };
        let ilog = backing.format_and_start(cores, &ctx);
        let (first, second) = (tag_of(0, 1), tag_of(0, 2));
        ilog.write(20, &write_buf(20, 3, first, false)).unwrap();
        ilog.write(21, &write_buf(21, 1, second, true)).unwrap();
        ilog.flush().unwrap();
        ilog.abort();
        let ilog = backing.start(restart_cores, &ctx);
        let seen = read_seen(&ilog, None, 19, 5, false).unwrap();
        assert_blocks(&ctx, "flushed writes after a crash", 19, &seen, &[0, first, second, first, 0]);
        ilog.close().unwrap();
    }
}

#[test]
fn snapshot_names_must_be_new_and_plain() {
    let (ilog, ctx) = small_ilog(4096, 2, 5);
    let first = ilog.snapshot(Some("nightly-1")).unwrap();
    assert_eq!(first.name, "nightly-1", "{ctx}");
    assert_eq!(ilog.snapshot(Some("nightly-1")), Err(Error::VolumeExists("nightly-1".into())), "{ctx}");
    for bad in ["", "has space", "slash/name", &"x".repeat(200)] {
        assert!(matches!(ilog.snapshot(Some(bad)), Err(Error::InvalidArgument(_))), "{ctx} volume name {bad:?}");
    }
    let mut buf = vec![0; BS];
    assert_eq!(ilog.read_volume("nope", 0, &mut buf), Err(Error::NoSuchVolume("nope".into())), "{ctx}");
    assert_eq!(ilog.delete_volume("nope"), Err(Error::NoSuchVolume("nope".into())), "{ctx}");
    // Only the one good snapshot exists.
    assert_eq!(ilog.volumes().unwrap(), vec![first], "{ctx}");
    ilog.close().unwrap();
}

// ---- bad input ----------------------------------------------------------------

fn small_ilog(blocks: u64, cores: u32, seed: u64) -> (Ilog, Ctx) {
    let ctx = Ctx { what: format!("{blocks}-block malloc on {cores} cores"), seed };
    let ilog = Backing::malloc(blocks).format_and_start(cores, &ctx);
    (ilog, ctx)
}

#[test]
fn buffers_that_are_not_whole_blocks_are_misaligned() {
    let (ilog, ctx) = small_ilog(4096, 2, 1);
    let misaligned = Err(Error::Misaligned { block_size: BS as u32 });
    for len in [1, 512, BS - 1, BS + 1, 3 * BS + 512] {
        assert_eq!(ilog.write(0, &vec![7; len]), misaligned, "{ctx} write of {len} bytes");
        assert_eq!(ilog.read(0, &mut vec![0; len]), misaligned, "{ctx} read of {len} bytes");
    }
    // Nothing was written by the refused requests.
    assert_eq!(read_seen(&ilog, None, 0, 4, false), Ok(vec![Seen::Tag(0); 4]), "{ctx}");
    assert!(matches!(ilog.write(0, &[]), Err(Error::InvalidArgument(_))), "{ctx} an empty write");
    ilog.close().unwrap();
}

#[test]
fn io_beyond_the_end_of_the_volume_is_out_of_range() {
    let (ilog, ctx) = small_ilog(4096, 2, 2);
    let vb = ilog.volume_blocks();
    let oor = |lba, blocks| Err(Error::OutOfRange { lba, blocks, volume_blocks: vb });
    let last = tag_of(0, 1);
    ilog.write(vb - 1, &write_buf(vb - 1, 1, last, false)).expect("the last block is writable");
    let snap = ilog.snapshot(None).unwrap();
    for (lba, blocks) in [(vb, 1), (vb - 1, 2), (vb - 20, 40), (u64::MAX, 1), (u64::MAX - 1, 3)] {
        let data = write_buf(0, blocks, tag_of(0, 2), false);
        let mut buf = vec![0; blocks as usize * BS];
        assert_eq!(ilog.write(lba, &data), oor(lba, blocks), "{ctx} write at {lba}+{blocks}");
        assert_eq!(ilog.read(lba, &mut buf), oor(lba, blocks), "{ctx} read at {lba}+{blocks}");
        assert_eq!(ilog.read_volume(&snap.name, lba, &mut buf), oor(lba, blocks), "{ctx} volume read at {lba}");
        assert_eq!(ilog.write_zeroes(lba, blocks as u32), oor(lba, blocks), "{ctx} write_zeroes at {lba}");
        assert_eq!(ilog.unmap(lba, blocks as u32), oor(lba, blocks), "{ctx} unmap at {lba}+{blocks}");
    }
    // The refused requests that overlapped the volume's end left it alone.
    assert_eq!(read_seen(&ilog, None, vb - 20, 20, false).unwrap()[19], Seen::Tag(last), "{ctx}");
    assert_eq!(read_seen(&ilog, None, vb - 20, 19, false).unwrap(), vec![Seen::Tag(0); 19], "{ctx}");
    ilog.close().unwrap();
}

/// A full disk, snapshotted, then overwritten with single-stripe writes of
/// new data until the log is full of the versions it needs beside the
/// snapshot's: the refused write fails with ENOSPC, acknowledged data and
/// the snapshot stay intact (also after a re-mount), and once the volume is
/// deleted the whole volume takes writes again.
fn fill_until_no_space(cores: u32, seed: u64) {
    const WRITE_BLOCKS: u64 = 8;
    let backing = Backing::malloc(2048);
    let ctx = Ctx { what: format!("filling a 2048-block device on {cores} cores"), seed };
    let ilog = backing.format_and_start(cores, &ctx);
    let vb = ilog.volume_blocks();
    let mut rng = Rng::new(seed);
    let slots = vb / WRITE_BLOCKS;
    let write_all = |ilog: &Ilog, first_tag: u64| -> Vec<Tag> {
        let mut model = vec![0; vb as usize];
        for slot in 0..slots {
            let lba = slot * WRITE_BLOCKS;
            let tag = tag_of(0, first_tag + slot);
            ilog.write(lba, &write_buf(lba, WRITE_BLOCKS, tag, slot % 2 == 0))
                .unwrap_or_else(|e| panic!("{ctx} filling write at {lba}: {e}"));
            model[lba as usize..(lba + WRITE_BLOCKS) as usize].fill(tag);
        }
        model
    };
    let full = write_all(&ilog, 1);
    let snap = ilog.snapshot(Some("full")).unwrap_or_else(|e| panic!("{ctx} snapshot: {e}"));
    let mut model = full.clone();
    let mut order: Vec<u64> = (0..slots).collect();
    rng.shuffle(&mut order);
    let mut refused = None;
    for (n, &slot) in order.iter().enumerate() {
        let lba = slot * WRITE_BLOCKS;
        let tag = tag_of(0, 1 << 30 | n as u64);
        match ilog.write(lba, &write_buf(lba, WRITE_BLOCKS, tag, n % 2 == 0)) {
            Ok(()) => model[lba as usize..(lba + WRITE_BLOCKS) as usize].fill(tag),
            Err(Error::NoSpace) => {
                refused = Some((lba, tag, n));
                break;
            }
            Err(e) => panic!("{ctx} write {n} at {lba}: {e}"),
        }
        // Flushes on the way: the full log must not lose flushed summaries.
        if n % 16 == 15 {
            ilog.flush().unwrap_or_else(|e| panic!("{ctx} flush after write {n}: {e}"));
        }
    }
    let (refused_lba, refused_tag, writes) = refused.unwrap_or_else(|| panic!("{ctx} the log never filled"));
    // Acknowledged writes stay readable; the refused one may or may not
    // have landed (a block device leaves a failed write's range undefined).
    let check = |ilog: &Ilog, ctx: &Ctx| {
        let seen = read_seen(ilog, None, 0, vb, false).unwrap_or_else(|e| panic!("{ctx} read: {e}"));
        for (lba, (s, &tag)) in seen.iter().zip(&model).enumerate() {
            let lba = lba as u64;
            let refused_block = (refused_lba..refused_lba + WRITE_BLOCKS).contains(&lba);
            assert!(
                *s == Seen::Tag(tag) || (refused_block && *s == Seen::Tag(refused_tag)),
                "{ctx} block {lba}: {s:?}, acknowledged {tag:#x}"
            );
        }
        let seen = read_seen(ilog, Some(&snap.name), 0, vb, false).unwrap_or_else(|e| panic!("{ctx} read: {e}"));
        assert_blocks(ctx, "the snapshot of the full disk", 0, &seen, &full);
    };
    check(&ilog, &ctx);
    if cores == 1 {
        // One stream, no room: the next write of the same size is refused too.
        let lba = order[0] * WRITE_BLOCKS;
        let again = ilog.write(lba, &write_buf(lba, WRITE_BLOCKS, tag_of(0, 1 << 40), false));
        assert_eq!(again, Err(Error::NoSpace), "{ctx} a write after the log filled");
        check(&ilog, &ctx);
    }
    ilog.flush().unwrap_or_else(|e| panic!("{ctx} flush of a full log: {e}"));
    ilog.close().unwrap_or_else(|e| panic!("{ctx} close of a full log: {e}"));
    let ctx = Ctx { what: format!("{} after {writes} overwrites, re-mounted", ctx.what), seed };
    let ilog = backing.start(cores, &ctx);
    check(&ilog, &ctx);
    ilog.delete_volume(&snap.name).unwrap_or_else(|e| panic!("{ctx} delete {}: {e}", snap.name));
    let model = write_all(&ilog, 1 << 32);
    let seen = read_seen(&ilog, None, 0, vb, false).unwrap_or_else(|e| panic!("{ctx} read: {e}"));
    assert_blocks(&ctx, "a full overwrite once the volume is gone", 0, &seen, &model);
    ilog.close().unwrap();
}

#[test]
fn a_log_full_of_a_snapshots_versions_refuses_writes_with_no_space_on_1_core() {
    for seed in seeds(0x5fac_0001) {
        fill_until_no_space(1, seed);
    }
}

#[test]
fn a_log_full_of_a_snapshots_versions_refuses_writes_with_no_space_on_2_cores() {
    for seed in seeds(0x5fac_0002) {
        fill_until_no_space(2, seed);
    }
}
