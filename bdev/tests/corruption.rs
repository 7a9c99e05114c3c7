//! Damaged on-media metadata, fed to mount and to recovery.
//!
//! Every metadata structure ilog writes carries a CRC32C, the geometry is
//! validated against the device, and replay stops a stream at its first torn
//! entry. These tests damage formatted devices (bit flips, random garbage,
//! zeroed blocks, and fields rewritten with a recomputed CRC, as a buggy
//! writer, a foreign tool or a CRC collision would leave them) and check that
//! mount answers with a typed `Err`, or mounts and never returns bytes that
//! were not written: a block reads as zeros or as a version ever written to
//! that LBA. Never a panic, never a hang.
//!
//! Data blocks of entries that a checkpoint vouches for are not checksummed
//! on the read path, and neither is the baseline region (the volume's
//! blocks, direct-mapped, where the log drains), so a damaged *data* block
//! reads back damaged. The oracle allows exactly that and nothing more: the
//! damaged image of a physical block that held a version of the same LBA,
//! or of the baseline block of that LBA.
//!
//! The randomized tests print `seed N` on failure. `ILOG_CORRUPTION_SEED=N`
//! runs that seed alone; `ILOG_CORRUPTION_SEEDS=N` sets how many run.

mod common;

use common::io::{lend, lend_mut};
use ilog_bdev::device::sim::SimDisk;
use ilog_bdev::engine::{self, LogEntryKind, Reply, Request, View};
use ilog_bdev::format::{
    Checkpoint, EntryKind, FormatOptions, Geometry, SegmentId, SummaryBlock, SummaryKey, Superblock,
};
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::native::Ilog;
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const BS: usize = 4096;
const DEVICE_BLOCKS: u64 = 4096;
/// Most writes land on the first LBAs, so blocks get several versions.
const HOT_BLOCKS: u64 = 160;
/// Longer than any case takes on a loaded machine: past it, it hangs.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// 16-block stripes, 64-block segments: 31 segments, 2108 volume blocks.
fn opts() -> FormatOptions {
    FormatOptions {
        stripe_bytes: 16 * BS as u64,
        segment_bytes: 64 * BS as u64,
        log_percent: 50,
        max_volumes: 16,
        ..FormatOptions::default()
    }
}

// ---- block contents ---------------------------------------------------------

const PAYLOAD_TAG: &[u8; 8] = b"payload:";

/// Version `version` of block `lba`: tagged with both, so a block that turns
/// up at the wrong LBA, or altered, never passes for a written one.
fn payload(lba: u64, version: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(PAYLOAD_TAG);
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&version.to_le_bytes());
    let mut rng = Rng::new(lba.rotate_left(32) ^ version);
    for w in b[24..].chunks_exact_mut(8) {
        w.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    b
}

/// The (lba, version) a block claims to be, if it is an intact payload.
fn payload_id(block: &[u8]) -> Option<(u64, u64)> {
    if block.len() != BS || &block[..8] != PAYLOAD_TAG {
        return None;
    }
    let lba = u64::from_le_bytes(block[8..16].try_into().unwrap());
    let version = u64::from_le_bytes(block[16..24].try_into().unwrap());
    (block == payload(lba, version).as_slice()).then_some((lba, version))
}

fn describe(block: &[u8]) -> String {
    match payload_id(block) {
        Some((lba, v)) => format!("version {v} of lba {lba}"),
        None if block.len() >= 8 && &block[..8] == PAYLOAD_TAG => "an altered payload".into(),
        None => format!("bytes {:02x?}..", &block[..block.len().min(16)]),
    }
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(n);
    v
}

// ---- raw device access ------------------------------------------------------

/// Overwrites block `block` with `data` (`corrupt` XORs, so XOR the difference).
fn poke(disk: &SimDisk, block: u64, data: &[u8]) {
    assert_eq!(data.len(), BS);
    for (i, (old, new)) in disk.peek(block).iter().zip(data).enumerate() {
        if old != new {
            disk.corrupt(block, i, old ^ new);
        }
    }
}

fn write_superblocks(disk: &SimDisk, sb: &Superblock) {
    let mut block = vec![0u8; BS];
    sb.encode(&mut block);
    poke(disk, 0, &block);
    poke(disk, 1, &block);
}

fn read_superblock(disk: &SimDisk) -> Superblock {
    Superblock::decode(&disk.peek(0)).unwrap().or_else(|| Superblock::decode(&disk.peek(1)).unwrap()).unwrap()
}

/// Decodes checkpoint slot `slot` as mount does: `None` if blank or invalid.
fn read_checkpoint(disk: &SimDisk, geo: &Geometry, slot: u32) -> Option<Checkpoint> {
    let start = geo.ckpt_slot_start(slot);
    let len = Checkpoint::peek_len(&disk.peek(start)).ok()??;
    let bytes: Vec<u8> = (0..len.div_ceil(BS) as u64).flat_map(|i| disk.peek(start + i)).collect();
    Checkpoint::decode(&bytes).ok()?
}

/// (slot, checkpoint) of the newest valid checkpoint.
fn newest_checkpoint(disk: &SimDisk, geo: &Geometry) -> (u32, Checkpoint) {
    (0..2)
        .filter_map(|s| read_checkpoint(disk, geo, s).map(|c| (s, c)))
        .max_by_key(|(_, c)| c.generation)
        .expect("a mounted device has a checkpoint")
}

/// Writes `ckpt` (CRCs recomputed) into slot `slot`.
fn write_checkpoint(disk: &SimDisk, geo: &Geometry, slot: u32, ckpt: &Checkpoint) {
    let mut bytes = vec![0u8; ckpt.encoded_len().div_ceil(BS) * BS];
    ckpt.encode(&mut bytes);
    for (i, block) in bytes.chunks_exact(BS).enumerate() {
        poke(disk, geo.ckpt_slot_start(slot) + i as u64, block);
    }
}

fn mount_error(disk: &SimDisk, cores: u32) -> Option<Error> {
    engine::mount(Arc::new(disk.clone()), cores).err()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

// ---- hang and panic guards --------------------------------------------------

/// Runs `f` on its own thread; a panic propagates, no answer in time fails.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(HANG_LIMIT) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => resume_unwind(p),
        Err(_) => panic!("{what}: no answer within {HANG_LIMIT:?}: a hang"),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Runs `case` for each seed, catching panics, and fails listing every
/// failing seed; a seed that takes longer than `HANG_LIMIT` is a hang.
fn run_seeds(default_seeds: u64, case: fn(u64) -> Result<(), String>) {
    let seeds: Vec<u64> = match env_u64("ILOG_CORRUPTION_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("ILOG_CORRUPTION_SEEDS").unwrap_or(default_seeds)).collect(),
    };
    let total = seeds.len();
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, rx) = mpsc::channel::<Option<Vec<String>>>();
    let cur = current.clone();
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        for seed in seeds {
            cur.store(seed, Ordering::SeqCst);
            let _ = tx.send(None);
            match catch_unwind(|| case(seed)) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failures.push(format!("seed {seed}: {why}")),
                Err(p) => failures.push(format!("seed {seed}: panicked: {}", panic_message(&*p))),
            }
        }
        let _ = tx.send(Some(failures));
    });
    loop {
        match rx.recv_timeout(HANG_LIMIT) {
            Ok(None) => {}
            Ok(Some(failures)) => {
                assert!(failures.is_empty(), "{} of {total} seeds failed:\n{}", failures.len(), failures.join("\n"));
                return;
            }
            Err(_) => panic!("seed {} ran past {HANG_LIMIT:?}: a hang", current.load(Ordering::SeqCst)),
        }
    }
}

// ---- a session: a formatted device, a workload, a model, damage --------------

struct Session {
    seed: u64,
    sim: Sim,
    rng: Rng,
    geo: Geometry,
    uuid: [u8; 16],
    cores: u32,
    /// Every version ever submitted to each LBA.
    ever: BTreeMap<u64, BTreeSet<u64>>,
    /// Acknowledged contents (0: zeros); exact while `exact`.
    acked: BTreeMap<u64, u64>,
    /// Live snapshot volumes and their acknowledged contents.
    volumes: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Every volume name ever created.
    names: BTreeSet<String>,
    /// No crash since format: `acked` and `volumes` are exactly what is stored.
    exact: bool,
    next_version: u64,
    /// Damaged device blocks and their image before the damage.
    damaged: BTreeMap<u64, Vec<u8>>,
    /// (lba, image) of damaged blocks that held a version of that LBA.
    exempt: Vec<(u64, Vec<u8>)>,
    /// What was done to the device, for failure messages.
    damage_log: Vec<String>,
}

impl Session {
    /// A formatted, mounted device on 1 or 2 cores.
    fn new(seed: u64) -> Session {
        let mut rng = Rng::new(seed ^ 0xc0ff_ee15_dead_beef);
        let sim = Sim::new(seed, DEVICE_BLOCKS, BS as u32);
        let uuid: [u8; 16] = random_bytes(&mut rng, 16).try_into().unwrap();
        let geo = engine::format(&sim.disk, &opts(), uuid).unwrap_or_else(|e| panic!("seed {seed}: format: {e}"));
        let cores = 1 + rng.below(2) as u32;
        let mut s = Session {
            seed,
            sim,
            rng,
            geo,
            uuid,
            cores,
            ever: BTreeMap::new(),
            acked: BTreeMap::new(),
            volumes: BTreeMap::new(),
            names: BTreeSet::new(),
            exact: true,
            next_version: 1,
            damaged: BTreeMap::new(),
            exempt: Vec::new(),
            damage_log: Vec::new(),
        };
        s.remount();
        s
    }

    fn disk(&self) -> &SimDisk {
        &self.sim.disk
    }

    fn remount(&mut self) {
        if let Err(e) = self.sim.mount(self.cores) {
            panic!("seed {}: an undamaged device failed to mount: {e}", self.seed);
        }
    }

    /// A buffer `req` points at must outlive the call.
    fn call(&mut self, req: Request) -> Result<Reply, Error> {
        let core = self.rng.below(u64::from(self.cores)) as u32;
        // The run ends with the request completed, before the call
        // returns; the caller's buffer outlives the call.
        self.sim.submit(core, 7, req)?;
        let mut out = None;
        self.sim.run_until_idle(&mut |_, r| out = Some(r));
        out.unwrap_or_else(|| panic!("seed {}: a request never completed", self.seed))
    }

    fn write(&mut self, lba: u64, blocks: u32) {
        let mut buf = Vec::with_capacity(blocks as usize * BS);
        let mut versions = Vec::new();
        for l in lba..lba + u64::from(blocks) {
            let v = self.next_version;
            self.next_version += 1;
            buf.extend_from_slice(&payload(l, v));
            self.ever.entry(l).or_default().insert(v);
            versions.push(v);
        }
        match self.call(Request::Write { lba, blocks, buf: lend(&buf) }) {
            Ok(_) => {
                for (l, v) in (lba..).zip(versions) {
                    self.acked.insert(l, v);
                }
            }
            Err(e) => panic!("seed {}: write of {blocks} blocks at {lba} failed: {e}", self.seed),
        }
    }

    fn zero(&mut self, lba: u64, blocks: u32) {
        if let Err(e) = self.call(Request::WriteZeroes { lba, blocks }) {
            panic!("seed {}: write-zeroes at {lba} failed: {e}", self.seed);
        }
        for l in lba..lba + u64::from(blocks) {
            self.acked.insert(l, 0);
        }
    }

    fn snapshot(&mut self) {
        let name = (self.rng.below(2) == 0).then(|| format!("v{}", self.next_version));
        match self.call(Request::Snapshot { name }) {
            Ok(Reply::Volume(v)) => {
                self.names.insert(v.name.clone());
                self.volumes.insert(v.name, self.acked.clone());
            }
            other => panic!("seed {}: snapshot answered {other:?}", self.seed),
        }
    }

    fn delete_volume(&mut self) {
        let i = self.rng.below(self.volumes.len() as u64) as usize;
        let name = self.volumes.keys().nth(i).unwrap().clone();
        if let Err(e) = self.call(Request::DeleteVolume { name: name.clone() }) {
            panic!("seed {}: delete {name} failed: {e}", self.seed);
        }
        self.volumes.remove(&name);
    }

    /// Writes, zeroes, flushes, snapshots and deletes; with `crashes`, some
    /// rounds end in a crash and an (undamaged) recovery.
    fn workload(&mut self, crashes: bool) {
        let rounds = 2 + self.rng.below(3);
        for round in 0..rounds {
            for _ in 0..6 + self.rng.below(12) {
                let blocks = 1 + self.rng.below(3) as u32;
                let span = if self.rng.below(6) == 0 { self.geo.volume_blocks } else { HOT_BLOCKS };
                let lba = self.rng.below(span - u64::from(blocks) + 1);
                if self.rng.below(10) == 0 {
                    self.zero(lba, blocks);
                } else {
                    self.write(lba, blocks);
                }
            }
            match self.rng.below(5) {
                0 => drop(self.call(Request::Flush).unwrap()),
                1 | 2 => self.snapshot(),
                _ => {}
            }
            if !self.volumes.is_empty() && self.rng.below(6) == 0 {
                self.delete_volume();
            }
            if crashes && round + 1 < rounds && self.rng.below(3) == 0 {
                self.crash();
                self.remount();
            }
        }
    }

    fn close(&mut self) {
        if let Err(e) = self.call(Request::Close) {
            panic!("seed {}: close failed: {e}", self.seed);
        }
        self.sim.unmount();
    }

    /// Stops without a clean close: a power cut (after a flush, plain, or
    /// with writes in flight), or the process dying with the device intact.
    fn crash(&mut self) {
        self.exact = false;
        match self.rng.below(4) {
            0 => {
                self.call(Request::Flush).unwrap();
                self.sim.power_cut();
            }
            1 => self.sim.power_cut(),
            2 => {
                // Distinct LBAs, buffers alive until the power cut has read them.
                let start = self.rng.below(HOT_BLOCKS - 8);
                let mut bufs = Vec::new();
                for l in start..start + 1 + self.rng.below(8) {
                    let v = self.next_version;
                    self.next_version += 1;
                    self.ever.entry(l).or_default().insert(v);
                    bufs.push(payload(l, v));
                    let core = self.rng.below(u64::from(self.cores)) as u32;
                    let req = Request::Write { lba: l, blocks: 1, buf: lend(bufs.last().unwrap()) };
                    // Each buffer is its own heap block, alive in
                    // `bufs` until the power cut ends its write.
                    self.sim.submit(core, 9, req).unwrap();
                }
                for _ in 0..self.rng.below(40) {
                    self.sim.step(&mut |_, _| {});
                }
                self.sim.power_cut();
                drop(bufs);
            }
            _ => self.sim.unmount(),
        }
    }

    /// Ends the session in a random way: clean close or a crash.
    fn stop(&mut self) {
        if self.rng.below(3) == 0 {
            self.close();
        } else {
            self.crash();
        }
    }

    // ---- damage ----

    fn region(&self, block: u64) -> String {
        let g = &self.geo;
        if block < 2 {
            format!("superblock {}", ["A", "B"][block as usize])
        } else if block < g.baseline_start {
            let off = block - g.ckpt_start;
            let slot_blocks = u64::from(g.ckpt_slot_blocks);
            format!("checkpoint slot {} block {}", off / slot_blocks, off % slot_blocks)
        } else if block < g.log_start {
            format!("baseline block {}", block - g.baseline_start)
        } else if block < g.segment_start(g.segment_count) {
            let off = block - g.log_start;
            let seg_blocks = u64::from(g.segment_blocks);
            format!("segment {} block {}", off / seg_blocks, off % seg_blocks)
        } else {
            "past the log".into()
        }
    }

    fn remember(&mut self, block: u64) {
        let image = self.disk().peek(block);
        self.damaged.entry(block).or_insert(image);
    }

    /// Flips 1-8 random bits, mostly in the first 128 bytes (the headers).
    fn flip(&mut self, block: u64) {
        self.remember(block);
        let mut flips = Vec::new();
        for _ in 0..1 + self.rng.below(8) {
            let byte = if self.rng.below(2) == 0 { self.rng.below(128) } else { self.rng.below(BS as u64) } as usize;
            let mask = 1u8 << self.rng.below(8);
            self.disk().corrupt(block, byte, mask);
            flips.push(format!("{byte}^{mask:#04x}"));
        }
        self.damage_log.push(format!("{block} ({}): flipped {}", self.region(block), flips.join(",")));
    }

    fn fill(&mut self, block: u64, garbage: bool) {
        self.remember(block);
        let data = if garbage { random_bytes(&mut self.rng, BS) } else { vec![0; BS] };
        poke(self.disk(), block, &data);
        let what = if garbage { "random garbage" } else { "zeroed" };
        self.damage_log.push(format!("{block} ({}): {what}", self.region(block)));
    }

    fn harm(&mut self, block: u64) {
        match self.rng.below(4) {
            0 => self.fill(block, true),
            1 => self.fill(block, false),
            _ => self.flip(block),
        }
    }

    /// A block of the log region, mostly a segment header or summary slot,
    /// mostly of a segment in use.
    fn pick_log_block(&mut self) -> u64 {
        let g = self.geo;
        let used: Vec<u32> =
            (0..g.segment_count).filter(|&s| self.disk().peek(g.segment_start(s))[..8] == *b"ILOGSEGM").collect();
        let segno = if !used.is_empty() && self.rng.below(4) != 0 {
            used[self.rng.below(used.len() as u64) as usize]
        } else {
            self.rng.below(u64::from(g.segment_count)) as u32
        };
        let start = g.segment_start(segno);
        let seg_blocks = u64::from(g.segment_blocks);
        match self.rng.below(4) {
            0 => start,
            1 | 2 => start + seg_blocks - 1 - self.rng.below(4),
            _ => start + self.rng.below(seg_blocks),
        }
    }

    /// Any block of the device, each region with a fair chance.
    fn pick_any_block(&mut self) -> u64 {
        let g = self.geo;
        match self.rng.below(8) {
            0 => self.rng.below(2),
            1 | 2 => g.ckpt_start + self.rng.below(2 * u64::from(g.ckpt_slot_blocks)),
            3 => g.baseline_start + self.rng.below(g.volume_blocks),
            4 => self.rng.below(DEVICE_BLOCKS),
            _ => self.pick_log_block(),
        }
    }

    /// Call once the damage is done: works out which damaged images the
    /// oracle accepts (those of blocks that held a version of their LBA).
    fn seal_damage(&mut self) {
        let g = self.geo;
        let mut exempt = Vec::new();
        for (&block, before) in &self.damaged {
            let after = self.disk().peek(block);
            if after == *before {
                continue;
            }
            if (g.baseline_start..g.baseline_start + g.volume_blocks).contains(&block) {
                exempt.push((block - g.baseline_start, after));
                continue;
            }
            let Some((lba, v)) = payload_id(before) else { continue };
            if self.ever.get(&lba).is_some_and(|vs| vs.contains(&v)) {
                exempt.push((lba, after));
            }
        }
        self.exempt = exempt;
    }

    fn damage_report(&self) -> String {
        format!("damage: [{}]", self.damage_log.join("; "))
    }

    // ---- mounting and judging ----

    /// Mounts the damaged device. `Ok(Some(e))`: a typed refusal; `Ok(None)`:
    /// mounted; `Err`: mount panicked.
    fn mount_damaged(&mut self) -> Result<Option<Error>, String> {
        let cores = self.cores;
        let sim = &mut self.sim;
        match catch_unwind(AssertUnwindSafe(|| sim.mount(cores))) {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Ok(Some(e)),
            Err(p) => Err(format!("mount panicked: {}; {}", panic_message(&*p), self.damage_report())),
        }
    }

    /// Whether `got` may be what block `lba` reads as.
    fn judge(&self, lba: u64, got: &[u8]) -> Result<(), String> {
        if is_zero(got) {
            return Ok(());
        }
        if let Some((l, v)) = payload_id(got) {
            if l == lba && self.ever.get(&lba).is_some_and(|vs| vs.contains(&v)) {
                return Ok(());
            }
        }
        if self.exempt.iter().any(|(l, image)| *l == lba && image.as_slice() == got) {
            return Ok(());
        }
        Err(format!("lba {lba} read back {}, never written there", describe(got)))
    }

    fn read(&mut self, view: View, lba: u64, blocks: u32) -> Result<Vec<u8>, Error> {
        // Poisoned: a read that completes without filling its buffer shows.
        let mut buf = vec![0xa5u8; blocks as usize * BS];
        self.call(Request::Read { lba, blocks, buf: lend_mut(&mut buf), view })?;
        Ok(buf)
    }

    /// Reads all of `view` in 64-block requests: `f(lba, block)` per block.
    /// Failed reads (typed errors) are allowed and skipped.
    fn scan(
        &mut self,
        view: View,
        mut f: impl FnMut(&Session, u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        // The size the mounted bdev exports, whatever the geometry claims.
        let volume_blocks = self.sim.submitter().volume_blocks();
        let mut lba = 0;
        while lba < volume_blocks {
            let n = (volume_blocks - lba).min(64) as u32;
            if let Ok(buf) = self.read(view, lba, n) {
                for (l, block) in (lba..).zip(buf.chunks_exact(BS)) {
                    f(self, l, block)?;
                }
            }
            lba += u64::from(n);
        }
        Ok(())
    }

    fn volume_list(&mut self) -> Result<Vec<(String, u32)>, String> {
        match self.call(Request::ListVolumes) {
            Ok(Reply::Volumes(v)) => Ok(v.into_iter().map(|v| (v.name, v.partition)).collect()),
            other => Err(format!("listing volumes answered {other:?}")),
        }
    }

    /// After a mount of a damaged device: the current image, every listed
    /// volume and the whole log cursor hold nothing that was not written.
    fn judge_everything(&mut self) -> Result<(), String> {
        self.scan(View::Current, |s, lba, b| s.judge(lba, b).map_err(|e| format!("current image: {e}")))?;
        for (name, partition) in self.volume_list()? {
            if !self.names.contains(&name) {
                return Err(format!("volume {name:?} was never created"));
            }
            self.scan(View::Volume(partition), |s, lba, b| s.judge(lba, b).map_err(|e| format!("volume {name}: {e}")))?;
        }
        self.judge_log()
    }

    fn judge_log(&mut self) -> Result<(), String> {
        let volume_blocks = self.sim.submitter().volume_blocks();
        let mut cursor = 0;
        let mut last = None;
        for _ in 0..10_000 {
            let batch = match self.call(Request::LogRead { cursor, count: 64, with_data: true }) {
                Ok(Reply::Log(batch)) => batch,
                Ok(other) => return Err(format!("log read answered {other:?}")),
                Err(_) => return Ok(()),
            };
            if batch.entries.is_empty() {
                return Ok(());
            }
            for e in &batch.entries {
                if last.is_some_and(|l| e.sequence <= l) {
                    return Err(format!("log cursor went back to {:#x} after {:#x}", e.sequence, last.unwrap()));
                }
                last = Some(e.sequence);
                if e.lba.checked_add(u64::from(e.blocks)).is_none_or(|end| end > volume_blocks) {
                    return Err(format!("log entry beyond the volume: lba {} blocks {}", e.lba, e.blocks));
                }
                if let Some(v) = e.volume.as_ref().filter(|v| !self.names.contains(*v)) {
                    return Err(format!("log entry of volume {v:?}, never created"));
                }
                match (&e.kind, &e.data) {
                    (LogEntryKind::Data, Some(data)) if data.len() == e.blocks as usize * BS => {
                        for (l, block) in (e.lba..).zip(data.chunks_exact(BS)) {
                            self.judge(l, block).map_err(|why| format!("log entry {:#x}: {why}", e.sequence))?;
                        }
                    }
                    (LogEntryKind::Zero, _) => {}
                    _ => {
                        return Err(format!("log entry {:#x} of {} blocks came with wrong data", e.sequence, e.blocks))
                    }
                }
            }
            if batch.next_cursor <= cursor {
                return Err("log cursor did not advance".into());
            }
            cursor = batch.next_cursor;
        }
        Err("log cursor never reached the end".into())
    }

    /// Mounts the damaged device; if it mounts, judges everything it serves.
    /// A typed error is a pass.
    fn mount_and_judge(&mut self) -> Result<Option<Error>, String> {
        self.seal_damage();
        if let Some(e) = self.mount_damaged()? {
            return Ok(Some(e));
        }
        match catch_unwind(AssertUnwindSafe(|| self.judge_everything())) {
            Ok(Ok(())) => Ok(None),
            Ok(Err(why)) => Err(format!("{why}; {}", self.damage_report())),
            Err(p) => Err(format!("panicked serving a mounted damaged device: {}", panic_message(&*p))),
        }
    }

    /// With `exact` (no crash): every view holds exactly what was acknowledged.
    fn expect_exact(&mut self) -> Result<(), String> {
        assert!(self.exact, "only a crash-free session knows its exact contents");
        let acked = self.acked.clone();
        let check = |want: &BTreeMap<u64, u64>, lba: u64, got: &[u8]| match want.get(&lba).copied().unwrap_or(0) {
            0 if is_zero(got) => Ok(()),
            0 => Err(format!("lba {lba}: want zeros, read {}", describe(got))),
            v if got == payload(lba, v).as_slice() => Ok(()),
            v => Err(format!("lba {lba}: want version {v}, read {}", describe(got))),
        };
        self.scan(View::Current, |_, lba, got| check(&acked, lba, got).map_err(|e| format!("current image: {e}")))?;
        let listed: BTreeMap<String, u32> = self.volume_list()?.into_iter().collect();
        let want: BTreeSet<&String> = self.volumes.keys().collect();
        if listed.keys().collect::<BTreeSet<_>>() != want {
            return Err(format!("volumes {:?}, want {want:?}", listed.keys()));
        }
        for (name, contents) in self.volumes.clone() {
            self.scan(View::Volume(listed[&name]), |_, lba, got| {
                check(&contents, lba, got).map_err(|e| format!("volume {name}: {e}"))
            })?;
        }
        Ok(())
    }
}

// ---- 1. unformatted and undersized devices ------------------------------------

#[test]
fn blank_device_is_not_formatted() {
    let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 1);
    assert_eq!(mount_error(&disk, 1), Some(Error::NotFormatted));
}

#[test]
fn device_holding_foreign_data_is_not_formatted() {
    // No "ILOGSUPR" magic in either superblock: somebody else's disk.
    let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 2);
    let mut rng = Rng::new(2);
    for block in 0..8 {
        poke(&disk, block, &random_bytes(&mut rng, BS));
    }
    assert_eq!(mount_error(&disk, 2), Some(Error::NotFormatted));
}

#[test]
fn native_runtime_refuses_a_blank_device() {
    let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 3);
    assert_eq!(Ilog::start(Arc::new(disk), 2).err(), Some(Error::NotFormatted));
}

#[test]
fn device_too_small_to_format_is_refused() {
    for blocks in [1, 8, 64, 256] {
        let disk = SimDisk::new(blocks, BS as u32, blocks);
        let got = engine::format(&disk, &opts(), [1; 16]);
        assert!(matches!(got, Err(Error::DeviceTooSmall(_))), "{blocks} blocks: {got:?}");
    }
}

#[test]
fn formatted_image_on_a_shorter_device_is_too_small() {
    // A superblock and checkpoints copied onto a device half the size.
    let big = SimDisk::new(DEVICE_BLOCKS, BS as u32, 4);
    let geo = engine::format(&big, &opts(), [4; 16]).unwrap();
    let small = SimDisk::new(DEVICE_BLOCKS / 2, BS as u32, 4);
    for block in 0..geo.baseline_start {
        poke(&small, block, &big.peek(block));
    }
    assert!(matches!(mount_error(&small, 1), Some(Error::DeviceTooSmall(_))));
}

// ---- 2. superblocks --------------------------------------------------------------

#[test]
fn superblock_a_damage_falls_back_to_copy_b() {
    run_seeds(12, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        s.close();
        s.harm(0);
        match s.mount_and_judge()? {
            Some(e) => Err(format!("copy B is intact, yet mount failed: {e}; {}", s.damage_report())),
            None => s.expect_exact().map_err(|e| format!("{e}; {}", s.damage_report())),
        }
    });
}

#[test]
fn superblock_damage_to_both_copies_is_corrupt() {
    // Flips inside the CRC-covered fields (bytes 8..100) and the CRC itself.
    run_seeds(200, |seed| {
        let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, seed);
        engine::format(&disk, &opts(), [9; 16]).unwrap();
        let mut rng = Rng::new(seed);
        for block in 0..2 {
            // Distinct bits: two flips of one bit would cancel out.
            let bits: BTreeSet<u64> = (0..1 + rng.below(4)).map(|_| rng.below(96 * 8)).collect();
            for bit in bits {
                disk.corrupt(block, 8 + (bit / 8) as usize, 1 << (bit % 8));
            }
        }
        match mount_error(&disk, 1) {
            Some(Error::Corrupt(_)) => Ok(()),
            other => Err(format!("want Corrupt, got {other:?}")),
        }
    });
}

#[test]
fn superblock_garbage_behind_the_magic_is_corrupt() {
    run_seeds(200, |seed| {
        let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, seed);
        engine::format(&disk, &opts(), [9; 16]).unwrap();
        let mut rng = Rng::new(seed);
        for block in 0..2 {
            let mut garbage = random_bytes(&mut rng, BS);
            garbage[..8].copy_from_slice(b"ILOGSUPR");
            poke(&disk, block, &garbage);
        }
        match mount_error(&disk, 1) {
            Some(Error::Corrupt(_)) => Ok(()),
            other => Err(format!("want Corrupt, got {other:?}")),
        }
    });
}

#[test]
fn superblock_of_another_format_version_is_corrupt() {
    let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 5);
    engine::format(&disk, &opts(), [5; 16]).unwrap();
    let mut block = disk.peek(0);
    block[8..12].copy_from_slice(&(ilog_bdev::format::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&block[..100]);
    block[100..104].copy_from_slice(&crc.to_le_bytes());
    poke(&disk, 0, &block);
    poke(&disk, 1, &block);
    assert!(matches!(mount_error(&disk, 1), Some(Error::Corrupt(m)) if m.contains("version")));
}

/// Absurd geometries, each written with a valid CRC.
fn wild_geometries(g: Geometry) -> Vec<(&'static str, Geometry)> {
    let twice = Geometry::plan(g.block_size, 2 * g.device_blocks, &opts()).unwrap();
    vec![
        ("zero block size", Geometry { block_size: 0, ..g }),
        ("512-byte blocks on a 4096-byte device", Geometry { block_size: 512, ..g }),
        ("block size 3", Geometry { block_size: 3, ..g }),
        ("zero stripe", Geometry { stripe_blocks: 0, ..g }),
        ("stripe larger than a segment", Geometry { stripe_blocks: g.segment_blocks, ..g }),
        ("zero segment blocks", Geometry { segment_blocks: 0, ..g }),
        ("segments of 2^32-1 blocks", Geometry { segment_blocks: u32::MAX, ..g }),
        ("zero segments", Geometry { segment_count: 0, ..g }),
        ("one segment", Geometry { segment_count: 1, ..g }),
        ("2^32-1 segments", Geometry { segment_count: u32::MAX, ..g }),
        ("twice the segments", Geometry { segment_count: 2 * g.segment_count, ..g }),
        ("zero volumes allowed", Geometry { max_volumes: 0, ..g }),
        ("2^32-1 volumes allowed", Geometry { max_volumes: u32::MAX, ..g }),
        ("empty checkpoint slots", Geometry { ckpt_slot_blocks: 0, ..g }),
        ("2^32-1-block checkpoint slots", Geometry { ckpt_slot_blocks: u32::MAX, ..g }),
        ("checkpoints over the superblock", Geometry { ckpt_start: 0, ..g }),
        ("checkpoints over superblock B", Geometry { ckpt_start: 1, ..g }),
        ("baseline at 2^64-1", Geometry { baseline_start: u64::MAX, ..g }),
        ("baseline over the checkpoints", Geometry { baseline_start: g.ckpt_start, ..g }),
        ("log start past the device", Geometry { log_start: g.device_blocks, ..g }),
        ("log start at 2^64-1", Geometry { log_start: u64::MAX, ..g }),
        ("log over the baseline", Geometry { log_start: g.baseline_start, ..g }),
        ("volume of 2^64-1 blocks", Geometry { volume_blocks: u64::MAX, ..g }),
        ("volume of 2^32 blocks", Geometry { volume_blocks: 1 << 32, ..g }),
        ("device of 0 blocks", Geometry { device_blocks: 0, ..g }),
        ("device of 2^64-1 blocks", Geometry { device_blocks: u64::MAX, ..g }),
        ("laid out for a device twice as large", twice),
    ]
}

#[test]
fn superblock_with_absurd_geometry_and_valid_crc_is_refused() {
    let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 6);
    let g = engine::format(&disk, &opts(), [6; 16]).unwrap();
    let mut failures = Vec::new();
    for (what, geometry) in wild_geometries(g) {
        let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 6);
        engine::format(&disk, &opts(), [6; 16]).unwrap();
        write_superblocks(&disk, &Superblock { uuid: [6; 16], generation: 2, geometry });
        let outcome = within(what, move || catch_unwind(AssertUnwindSafe(|| mount_error(&disk, 1))));
        match outcome {
            Ok(Some(Error::Corrupt(_) | Error::DeviceTooSmall(_))) => {}
            Ok(other) => failures.push(format!("{what}: want Corrupt or DeviceTooSmall, got {other:?}")),
            Err(p) => failures.push(format!("{what}: mount panicked: {}", panic_message(&*p))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn superblock_fields_near_integer_limits_are_corrupt_not_overflows() {
    type Edit = fn(&mut Geometry);
    let edits: [(&str, Edit); 4] = [
        ("stripe of 2^32-1 blocks", |g| g.stripe_blocks = u32::MAX),
        ("stripe of 2^32-3 blocks", |g| g.stripe_blocks = u32::MAX - 2),
        ("checkpoints at 2^64-1", |g| g.ckpt_start = u64::MAX),
        ("checkpoints at 2^64-2", |g| g.ckpt_start = u64::MAX - 1),
    ];
    let mut failures = Vec::new();
    for (what, edit) in edits {
        let disk = SimDisk::new(DEVICE_BLOCKS, BS as u32, 7);
        let mut geometry = engine::format(&disk, &opts(), [7; 16]).unwrap();
        edit(&mut geometry);
        write_superblocks(&disk, &Superblock { uuid: [7; 16], generation: 2, geometry });
        match within(what, move || catch_unwind(AssertUnwindSafe(|| mount_error(&disk, 1)))) {
            Ok(Some(Error::Corrupt(_))) => {}
            Ok(other) => failures.push(format!("{what}: want Corrupt, got {other:?}")),
            Err(p) => failures.push(format!("{what}: mount panicked: {}", panic_message(&*p))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn superblock_shrinking_the_volume_under_written_data_is_refused_or_hides_it() {
    // Self-consistent geometry (valid CRC) whose volume ends below LBAs the
    // log holds entries for: mount must refuse it or serve only written data.
    run_seeds(6, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        let far = s.geo.volume_blocks - 8;
        s.write(far, 4);
        s.close();
        let mut sb = read_superblock(s.disk());
        sb.geometry.volume_blocks = [0, HOT_BLOCKS, sb.geometry.volume_blocks / 2][seed as usize % 3];
        sb.generation += 1;
        s.remember(0);
        s.remember(1);
        write_superblocks(s.disk(), &sb);
        s.damage_log.push(format!("superblocks rewritten with volume_blocks {}", sb.geometry.volume_blocks));
        s.mount_and_judge().map(drop)
    });
}

/// Replaces 1-3 fields of `g` by extreme, random or nearby values.
fn perturb(rng: &mut Rng, g: Geometry) -> Geometry {
    let mut g = g;
    for _ in 0..1 + rng.below(3) {
        let pick = rng.below(7);
        let v64 = |rng: &mut Rng, real: u64| match pick {
            0 => 0,
            1 => u64::MAX - rng.below(4),
            2 => rng.next_u64(),
            3 => real.wrapping_add(1 + rng.below(8)),
            4 => real.saturating_sub(1 + rng.below(8)),
            5 => real.wrapping_mul(2),
            _ => real / 2,
        };
        let v32 = |rng: &mut Rng, real: u32| v64(rng, u64::from(real)) as u32;
        match rng.below(10) {
            0 => g.device_blocks = v64(rng, g.device_blocks),
            1 => g.volume_blocks = v64(rng, g.volume_blocks),
            2 => g.baseline_start = v64(rng, g.baseline_start),
            3 => g.ckpt_start = v64(rng, g.ckpt_start),
            4 => g.ckpt_slot_blocks = v32(rng, g.ckpt_slot_blocks),
            5 => g.max_volumes = v32(rng, g.max_volumes),
            6 => g.log_start = v64(rng, g.log_start),
            7 => g.segment_blocks = v32(rng, g.segment_blocks),
            8 => g.segment_count = v32(rng, g.segment_count),
            _ => g.stripe_blocks = v32(rng, g.stripe_blocks),
        }
    }
    g
}

#[test]
fn superblock_with_random_geometry_and_valid_crc_never_panics_or_invents_data() {
    run_seeds(60, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        s.close();
        let mut sb = read_superblock(s.disk());
        sb.geometry = perturb(&mut s.rng, sb.geometry);
        sb.generation += 1;
        s.remember(0);
        s.remember(1);
        write_superblocks(s.disk(), &sb);
        s.damage_log.push(format!("superblocks rewritten with {:?}", sb.geometry));
        s.mount_and_judge().map(drop)
    });
}

// ---- 3. checkpoint slots -----------------------------------------------------------

/// Flips 1-4 bits inside the encoded part of checkpoint slot `slot`.
fn damage_checkpoint(s: &mut Session, slot: u32) {
    let ckpt = read_checkpoint(s.disk(), &s.geo, slot).expect("slot holds a checkpoint");
    let start = s.geo.ckpt_slot_start(slot);
    s.remember(start);
    let mut flips = Vec::new();
    // Distinct bits: two flips of one bit would cancel out.
    let bits: BTreeSet<u64> = (0..1 + s.rng.below(4)).map(|_| s.rng.below(8 * ckpt.encoded_len() as u64)).collect();
    for bit in bits {
        let (at, mask) = (bit / 8, 1u8 << (bit % 8));
        let (block, byte) = (start + at / BS as u64, (at % BS as u64) as usize);
        s.remember(block);
        s.disk().corrupt(block, byte, mask);
        flips.push(format!("byte {at}^{mask:#04x}"));
    }
    s.damage_log.push(format!("checkpoint slot {slot} (generation {}): {}", ckpt.generation, flips.join(",")));
}

#[test]
fn damage_to_the_older_checkpoint_slot_is_harmless() {
    run_seeds(12, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        s.close();
        let (newest, _) = newest_checkpoint(s.disk(), &s.geo);
        damage_checkpoint(&mut s, 1 - newest);
        match s.mount_and_judge()? {
            Some(e) => Err(format!("the newest checkpoint is intact, yet mount failed: {e}; {}", s.damage_report())),
            None => s.expect_exact().map_err(|e| format!("{e}; {}", s.damage_report())),
        }
    });
}

#[test]
fn damage_to_the_newest_checkpoint_slot_falls_back_to_the_older_one() {
    // The older checkpoint is never a clean one (every mount writes an
    // unclean fence), so mount replays the log written since: nothing lost.
    run_seeds(12, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        s.close();
        let (newest, _) = newest_checkpoint(s.disk(), &s.geo);
        damage_checkpoint(&mut s, newest);
        match s.mount_and_judge()? {
            Some(e) => Err(format!("the older checkpoint is intact, yet mount failed: {e}; {}", s.damage_report())),
            None => s.expect_exact().map_err(|e| format!("{e}; {}", s.damage_report())),
        }
    });
}

#[test]
fn damage_to_one_checkpoint_slot_after_a_crash_never_invents_data() {
    run_seeds(60, |seed| {
        let mut s = Session::new(seed);
        s.workload(true);
        s.stop();
        let slot = s.rng.below(2) as u32;
        if read_checkpoint(s.disk(), &s.geo, slot).is_some() {
            damage_checkpoint(&mut s, slot);
        }
        s.mount_and_judge().map(drop)
    });
}

#[test]
fn damage_to_both_checkpoint_slots_is_corrupt() {
    run_seeds(16, |seed| {
        let mut s = Session::new(seed);
        s.workload(seed % 2 == 0);
        s.stop();
        for slot in 0..2 {
            damage_checkpoint(&mut s, slot);
        }
        match s.mount_and_judge()? {
            Some(Error::Corrupt(_)) => Ok(()),
            other => Err(format!("want Corrupt, got {other:?}; {}", s.damage_report())),
        }
    });
}

#[test]
fn native_runtime_refuses_a_device_without_a_valid_checkpoint() {
    within("native start", || {
        let mut s = Session::new(8);
        s.workload(false);
        s.close();
        for slot in 0..2 {
            damage_checkpoint(&mut s, slot);
        }
        let got = Ilog::start(Arc::new(s.disk().clone()), 2).err();
        assert!(matches!(got, Some(Error::Corrupt(_))), "{got:?}");
    });
}

#[test]
fn a_window_listing_a_segment_twice_replays_it_once() {
    // A segment freed and taken into the window again before its earlier
    // listing left it was listed twice (images written before that was
    // mended): a crash mount that replayed it twice trusted twice its
    // entries, and the next mount found its summaries short ("lost flushed
    // summaries"), its data out of reach.
    run_seeds(8, |seed| {
        let mut s = Session::new(seed);
        for i in 0..48 {
            s.write(i * 3 % HOT_BLOCKS, 1 + (i % 3) as u32);
        }
        s.call(Request::Flush).map_err(|e| format!("flush: {e}"))?;
        s.exact = false;
        s.sim.power_cut();
        let (slot, mut ckpt) = newest_checkpoint(s.disk(), &s.geo);
        let window = ckpt.window.clone().expect("a window");
        ckpt.window = Some(window.iter().chain(&window).copied().collect());
        write_checkpoint(s.disk(), &s.geo, slot, &ckpt);
        s.remount();
        s.close();
        match s.mount_and_judge()? {
            None => Ok(()),
            Some(e) => Err(format!("the mount after the replay failed: {e}")),
        }
    });
}

#[test]
fn checkpoint_records_that_disagree_with_the_log_are_corrupt() {
    // Rewritten with valid CRCs: the checkpoint itself decodes, but what it
    // claims cannot be true of this device.
    type Edit = fn(&mut Checkpoint, &Geometry);
    let edits: [(&str, Edit); 5] = [
        ("segment past the log", |c, g| c.segments[0].segno = g.segment_count),
        ("segment at 2^32-1", |c, _| c.segments[0].segno = u32::MAX),
        ("more trusted entries than summarized", |c, _| c.segments[0].trusted_entries += 1),
        ("2^32-1 trusted entries", |c, _| c.segments[0].trusted_entries = u32::MAX),
        ("more volumes than the geometry holds", |c, g| {
            let v = c.volumes[0].clone();
            c.volumes = vec![v; g.max_volumes as usize + 1];
        }),
    ];
    let mut failures = Vec::new();
    for (seed, (what, edit)) in (20..).zip(edits) {
        let outcome = within(what, move || {
            let mut s = Session::new(seed);
            s.workload(false);
            s.snapshot();
            s.close();
            let (slot, mut ckpt) = newest_checkpoint(s.disk(), &s.geo);
            assert!(ckpt.segments.iter().any(|r| r.trusted_entries > 0));
            ckpt.segments.sort_by_key(|r| std::cmp::Reverse(r.trusted_entries));
            edit(&mut ckpt, &s.geo);
            write_checkpoint(s.disk(), &s.geo, slot, &ckpt);
            s.damage_log.push(what.to_string());
            s.mount_and_judge()
        });
        match outcome {
            Ok(Some(Error::Corrupt(_))) => {}
            other => failures.push(format!("{what}: want Corrupt, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn checkpoint_counters_at_their_limit_are_refused_or_served_without_overflow() {
    type Edit = fn(&mut Checkpoint);
    let edits: [(&str, Edit); 5] = [
        ("generation 2^64-1", |c| c.generation = u64::MAX),
        ("epoch 2^32-1", |c| c.epoch = u32::MAX),
        ("seq_high 2^64-1", |c| c.seq_high = u64::MAX),
        ("a segment of sequence 2^64-1", |c| c.segments[0].seq = u64::MAX),
        ("next partition 2^32-1", |c| c.next_partition = u32::MAX),
    ];
    let mut failures = Vec::new();
    for (seed, (what, edit)) in (30..).zip(edits) {
        let outcome = within(what, move || {
            let mut s = Session::new(seed);
            s.workload(false);
            s.close();
            let (slot, mut ckpt) = newest_checkpoint(s.disk(), &s.geo);
            edit(&mut ckpt);
            write_checkpoint(s.disk(), &s.geo, slot, &ckpt);
            s.damage_log.push(what.to_string());
            let refused = s.mount_and_judge()?;
            if refused.is_none() {
                // Mounted: it must also take a snapshot without overflowing.
                match catch_unwind(AssertUnwindSafe(|| s.call(Request::Snapshot { name: None }))) {
                    Ok(_) => {}
                    Err(p) => return Err(format!("snapshot panicked: {}", panic_message(&*p))),
                }
            }
            Ok(refused)
        });
        if let Err(why) = outcome {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- 4. segments and summaries ------------------------------------------------------

#[test]
fn log_region_damage_after_a_crash_never_panics_or_invents_data() {
    run_seeds(120, |seed| {
        let mut s = Session::new(seed);
        s.workload(true);
        s.stop();
        for _ in 0..1 + s.rng.below(6) {
            let block = s.pick_log_block();
            s.harm(block);
        }
        s.mount_and_judge().map(drop)
    });
}

#[test]
fn summary_damage_to_vouched_for_entries_is_corrupt() {
    // After a clean close every entry is trusted by the checkpoint; destroying
    // both versions of a summary group loses flushed entries: Corrupt.
    run_seeds(12, |seed| {
        let mut s = Session::new(seed);
        s.workload(false);
        s.close();
        let (_, ckpt) = newest_checkpoint(s.disk(), &s.geo);
        let rec = *ckpt.segments.iter().find(|r| r.trusted_entries > 0).expect("entries were written");
        let end = s.geo.segment_start(rec.segno) + u64::from(s.geo.segment_blocks);
        // One bit in each slot's header (magic excluded): uuid, segment id,
        // group, version, count or CRC; neither version decodes any more.
        for block in [end - 2, end - 1] {
            s.remember(block);
            let (byte, mask) = (8 + s.rng.below(32) as usize, 1u8 << s.rng.below(8));
            s.disk().corrupt(block, byte, mask);
            s.damage_log.push(format!("{block} ({}): flipped {byte}^{mask:#04x}", s.region(block)));
        }
        match s.mount_and_judge()? {
            Some(Error::Corrupt(_)) => Ok(()),
            other => Err(format!("want Corrupt, got {other:?}; {}", s.damage_report())),
        }
    });
}

/// Rewrites (valid CRC) the first data entry of a segment the newest
/// checkpoint trusts, in its newest summary version.
fn edit_trusted_entry(s: &mut Session, edit: fn(&mut ilog_bdev::format::SummaryEntry, &Geometry)) {
    let (_, ckpt) = newest_checkpoint(s.disk(), &s.geo);
    let g = s.geo;
    for rec in ckpt.segments.iter().filter(|r| r.trusted_entries > 0) {
        let id = SummaryKey { id: SegmentId { epoch: rec.epoch, seq: rec.seq }, base: rec.partition };
        let end = g.segment_start(rec.segno) + u64::from(g.segment_blocks);
        let Some((block, mut sum)) = [end - 2, end - 1]
            .into_iter()
            .filter_map(|b| SummaryBlock::decode(&s.disk().peek(b), &s.uuid, id, 0).ok().flatten().map(|x| (b, x)))
            .max_by_key(|(_, x)| x.version)
        else {
            continue;
        };
        let trusted = rec.trusted_entries as usize;
        let n = trusted.min(sum.entries.len());
        let Some(e) = sum.entries[..n].iter_mut().find(|e| e.kind == EntryKind::Data) else {
            continue;
        };
        let before = *e;
        edit(e, &g);
        let mut image = vec![0u8; BS];
        SummaryBlock::encode(&s.uuid, id, 0, sum.version, &sum.entries, &mut image);
        s.remember(block);
        poke(s.disk(), block, &image);
        s.damage_log.push(format!("segment {} summary entry {before:?} rewritten as {:?}", rec.segno, {
            let mut e = before;
            edit(&mut e, &g);
            e
        }));
        return;
    }
    panic!("seed {}: no trusted data entry to edit", s.seed);
}

#[test]
fn summary_entries_outside_the_volume_or_segment_are_refused_or_never_served() {
    type Edit = fn(&mut ilog_bdev::format::SummaryEntry, &Geometry);
    let edits: [(&str, Edit); 7] = [
        ("lba far past the volume", |e, g| e.lba = 4 * g.volume_blocks),
        ("lba 2^64-2", |e, _| e.lba = u64::MAX - 1),
        ("2^32-1 blocks", |e, _| e.blocks = u32::MAX),
        ("data at the segment header", |e, _| e.data_offset = 0),
        ("data in the summary area", |e, g| e.data_offset = g.segment_blocks - 1),
        ("data in another segment", |e, g| e.data_offset = g.segment_blocks + 1),
        ("data offset 2^32-2, 2 blocks", |e, _| {
            e.data_offset = u32::MAX - 1;
            e.blocks = 2;
        }),
    ];
    let mut failures = Vec::new();
    for (seed, (what, edit)) in (40..).zip(edits) {
        let outcome = within(what, move || {
            let mut s = Session::new(seed);
            s.workload(false);
            // Two data segments at least, so "another segment" holds data.
            for lba in 0..2 * u64::from(s.geo.segment_blocks) {
                s.write(lba % HOT_BLOCKS, 1);
            }
            s.close();
            edit_trusted_entry(&mut s, edit);
            s.mount_and_judge()
        });
        if let Err(why) = outcome {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- 5. anything, anywhere -----------------------------------------------------

#[test]
fn random_damage_anywhere_never_panics_or_invents_data() {
    run_seeds(250, |seed| {
        let mut s = Session::new(seed);
        s.workload(true);
        s.stop();
        for _ in 0..1 + s.rng.below(4) {
            let block = s.pick_any_block();
            s.harm(block);
        }
        s.mount_and_judge().map(drop)
    });
}

#[test]
fn native_runtime_serves_a_device_whose_superblock_a_is_destroyed() {
    within("native start", || {
        let mut s = Session::new(9);
        s.workload(false);
        s.close();
        s.fill(0, true);
        let ilog = Ilog::start(Arc::new(s.disk().clone()), 2).expect("copy B is intact");
        let mut buf = vec![0u8; BS];
        for (&lba, &v) in &s.acked {
            ilog.read(lba, &mut buf).unwrap();
            let want = if v == 0 { vec![0; BS] } else { payload(lba, v) };
            assert!(buf == want, "lba {lba}: want version {v}, read {}", describe(&buf));
        }
        ilog.close().unwrap();
    });
}
