//! Model-based randomized test of the engine in the simulator.
//!
//! Each seed drives a simulated bdev on 1-4 cores with overlapping client
//! requests (writes, zeroes, reads, reads as of volumes, flushes,
//! snapshots, deletes, cursor scans), reordered completions, injected EIO,
//! power cuts with torn writes (in the middle of drains into the baseline
//! too), clean closes and remounts with a different core count. A quarter
//! of the seeds first fill the whole volume and then overwrite it about 10
//! times with no volume at all, where a write may never fail with ENOSPC;
//! some seeds let a full log retire the oldest volume
//! (`retention.on_full`). Every value read is checked against a model of
//! what it may be:
//!
//! - the current image: exact, except where a failed write may have landed;
//! - a snapshot volume: what was current at the snapshot, or a write that
//!   was in flight during it; once read, fixed for good (also across crashes);
//! - after a power cut: the value at the last completed flush, or one
//!   written after it.
//!
//! `ILOG_SIM_SEEDS=N` sets how many seeds run (default 200; CI runs more) and
//! `ILOG_SIM_FIRST=F` the first of them (default 0), for soaks over new seeds;
//! `ILOG_SIM_SEED=S` runs seed S alone. A failure prints its seed.

mod common;

use common::io::{lend, lend_mut};
use common::sim::{decode, fill};
use ilog_bdev::device::sim::Faults;
use ilog_bdev::engine::{audit_space, CompactMode, LogEntryKind, Reply, Request, View};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Values a block may hold; 0 is zeros.
type Cand = BTreeSet<u64>;

struct WriteRec {
    value: u64,
    submit: u64,
    complete: Option<u64>,
}

#[derive(Default)]
struct Block {
    cur: Cand,
    /// Possible at the last completed flush.
    floor: Cand,
    /// Writes that may have landed after the floor.
    since: Vec<WriteRec>,
    /// Every value ever written here (for the log cursor).
    ever: BTreeSet<u64>,
}

struct VolumeModel {
    partition: u32,
    blocks: Vec<Cand>,
}

enum Op {
    /// `data` stays alive until completion, when it must be unchanged.
    Write {
        lba: u64,
        values: Vec<u64>,
        data: Vec<u8>,
        submitted: u64,
    },
    Read {
        lba: u64,
        blocks: u32,
        buf: Vec<u8>,
        volume: Option<String>,
    },
    Flush {
        tick: u64,
        snapshot: Vec<Cand>,
    },
    Snapshot {
        name: Option<String>,
    },
    Delete {
        name: String,
    },
    List,
    LogRead {
        cursor: u64,
    },
    Compact {
        volume: Option<String>,
    },
    SetPolicy,
    /// Baseline compaction of `volume`, retiring the older `retired`.
    Fold {
        volume: String,
        retired: Vec<String>,
    },
    Stats,
    Diff {
        volume: String,
        base: Option<String>,
        lba_start: u64,
        lba_end: u64,
    },
}

struct Harness {
    seed: u64,
    sim: Sim,
    rng: Rng,
    bs: usize,
    volume_blocks: u64,
    cores: u32,
    blocks: Vec<Block>,
    /// LBAs with a write in flight (no other data op may overlap them).
    busy_write: Vec<bool>,
    /// LBAs with a read in flight (no write may overlap them).
    busy_read: Vec<u32>,
    inflight: BTreeMap<u64, Op>,
    next_token: u64,
    next_value: u64,
    tick: u64,
    /// Acknowledged snapshot volumes.
    volumes: BTreeMap<String, VolumeModel>,
    /// A snapshot in flight: its candidate contents so far.
    pending_snapshot: Option<Vec<Cand>>,
    /// Volumes whose delete is in flight or done but unconfirmed by a crash.
    deleting: BTreeSet<String>,
    /// Every volume a delete was issued for (names are never reused here):
    /// reads of them may fail with NoSuchVolume.
    delete_issued: BTreeSet<String>,
    cursor_last: u64,
    /// The last tick at which a volume existed or a snapshot was in flight:
    /// a write that failed with ENOSPC must have overlapped one.
    volumes_seen: u64,
    /// This seed fills the volume, then only overwrites it: no snapshots.
    fill: bool,
    /// A full log may retire the oldest volume (`retention.on_full`), so
    /// any volume may vanish without a delete.
    retire: bool,
    write_eio: bool,
    /// ILOG_SIM_TRACE=1 prints every request and completion.
    trace: bool,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut rng = Rng::new(seed);
        let bs = if rng.below(4) == 0 { 4096 } else { 512 };
        // Stripes of 64 small blocks: entries longer than compaction's
        // move runs, which it splits.
        let stripe_blocks = [4u64, 8, 16, 64][rng.below(if bs == 512 { 4 } else { 3 }) as usize];
        let segment_blocks = stripe_blocks + 3 + rng.below(3 * stripe_blocks.min(16));
        let device_blocks = if bs == 512 { 6000 } else { 2000 };
        let opts = FormatOptions {
            stripe_bytes: stripe_blocks * bs as u64,
            segment_bytes: segment_blocks * bs as u64,
            log_percent: if rng.below(2) == 0 { 60 + rng.below(30) as u8 } else { 25 + rng.below(15) as u8 },
            max_volumes: 8,
            // A window of a few segments: checkpoints come often, and a
            // crash mount reads only the window's headers.
            replay_window_bytes: (4 + rng.below(12)) * segment_blocks * bs as u64,
        };
        let mut sim = Sim::new(seed, device_blocks, bs as u32);
        // Half the seeds move whole entries by device copies.
        sim.disk.set_copy(rng.below(2) == 0);
        sim.format(&opts).unwrap_or_else(|e| panic!("seed {seed}: format: {e}"));
        let cores = 1 + rng.below(4) as u32;
        assert!(!sim.mount(cores).unwrap(), "seed {seed}: a fresh format mounts clean");
        let volume_blocks = sim.submitter().volume_blocks();
        let write_eio = rng.below(5) == 0;
        let blocks = (0..volume_blocks)
            .map(|_| Block { cur: Cand::from([0]), floor: Cand::from([0]), ..Block::default() })
            .collect();
        let mut h = Harness {
            seed,
            sim,
            rng,
            bs,
            volume_blocks,
            cores,
            blocks,
            busy_write: vec![false; volume_blocks as usize],
            busy_read: vec![0; volume_blocks as usize],
            inflight: BTreeMap::new(),
            next_token: 1,
            next_value: 1,
            tick: 0,
            volumes: BTreeMap::new(),
            pending_snapshot: None,
            deleting: BTreeSet::new(),
            delete_issued: BTreeSet::new(),
            cursor_last: 0,
            volumes_seen: 0,
            fill: false,
            retire: false,
            write_eio,
            trace: std::env::var_os("ILOG_SIM_TRACE").is_some(),
        };
        if h.trace {
            // The engine's own log, interleaved with the trace.
            let _ = env_logger::builder().is_test(true).filter_level(log::LevelFilter::Debug).try_init();
        }
        h.set_faults();
        // A status policy compacts on its own (views do not change); the
        // clock ticks as the workload runs.
        h.fill = h.rng.below(4) == 0;
        h.retire = !h.fill && h.rng.below(4) == 0;
        let retention = if h.retire { r#""retention": {"on_full": "delete_oldest"}, "# } else { "" };
        if h.retire || h.rng.below(2) == 0 {
            let (used, garbage) = (20 + h.rng.below(70), 10 + h.rng.below(80));
            let compaction = format!(r#""compaction": {{"log_used_pct": {used}, "garbage_pct": {garbage}}}"#);
            h.submit(Request::SetPolicy { policy: format!("{{{retention}{compaction}}}") }, Op::SetPolicy);
            h.drain();
        }
        if h.fill {
            h.fill_volume();
        }
        h
    }

    /// Writes every block of the volume, in order, and flushes.
    fn fill_volume(&mut self) {
        let mut lba = 0;
        while lba < self.volume_blocks {
            let n = (self.volume_blocks - lba).min(64) as u32;
            self.write_range(lba, n, false);
            if self.inflight.len() >= 12 {
                self.step();
            }
            lba += u64::from(n);
        }
        self.start_flush();
        self.drain();
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    fn submit(&mut self, req: Request, op: Op) {
        if self.trace {
            eprintln!("[{}] submit #{}: {req:?}", self.tick, self.next_token);
        }
        let token = self.next_token;
        self.next_token += 1;
        self.tick += 1;
        let core = self.rng.below(u64::from(self.cores)) as u32;
        // A request's buffer is its `op`'s, kept in `inflight` until
        // the request completes or a power cut ends it.
        match self.sim.submit(core, token, req) {
            Ok(()) => {
                self.inflight.insert(token, op);
            }
            Err(e) => self.fail(format!("submit refused: {e}")),
        }
    }

    fn range_free(&self, lba: u64, n: u32, for_write: bool) -> bool {
        (lba..lba + u64::from(n))
            .all(|l| !self.busy_write[l as usize] && (!for_write || self.busy_read[l as usize] == 0))
    }

    fn random_range(&mut self) -> (u64, u32) {
        // Now and then a long one: entries longer than a compaction's move run.
        let longest = if self.rng.below(8) == 0 { 80 } else { 20 };
        let n = 1 + self.rng.below(longest) as u32;
        let lba = self.rng.below(self.volume_blocks - u64::from(n) + 1);
        (lba, n)
    }

    fn start_write(&mut self, zero: bool) {
        let (lba, n) = self.random_range();
        if self.range_free(lba, n, true) {
            self.write_range(lba, n, zero);
        }
    }

    fn write_range(&mut self, lba: u64, n: u32, zero: bool) {
        let mut buf = vec![0u8; n as usize * self.bs];
        let mut values = Vec::with_capacity(n as usize);
        for i in 0..n as u64 {
            let v = if zero { 0 } else { self.next_value };
            self.next_value += 1;
            fill(&mut buf[i as usize * self.bs..(i as usize + 1) * self.bs], v, lba + i);
            values.push(v);
            let b = &mut self.blocks[(lba + i) as usize];
            b.since.push(WriteRec { value: v, submit: self.tick + 1, complete: None });
            b.ever.insert(v);
            if let Some(snap) = &mut self.pending_snapshot {
                snap[(lba + i) as usize].insert(v);
            }
            self.busy_write[(lba + i) as usize] = true;
        }
        let req = if zero {
            if self.rng.below(2) == 0 {
                Request::Unmap { lba, blocks: n }
            } else {
                Request::WriteZeroes { lba, blocks: n }
            }
        } else {
            Request::Write { lba, blocks: n, buf: lend(&buf) }
        };
        let submitted = self.tick + 1;
        self.submit(req, Op::Write { lba, values, data: buf, submitted });
    }

    fn start_read(&mut self) {
        let (lba, n) = self.random_range();
        if !self.range_free(lba, n, false) {
            return;
        }
        let volume = if !self.volumes.is_empty() && self.rng.below(2) == 0 {
            let i = self.rng.below(self.volumes.len() as u64) as usize;
            self.volumes.keys().nth(i).cloned()
        } else {
            None
        };
        let view = volume.as_ref().map_or(View::Current, |name| View::Volume(self.volumes[name].partition));
        let mut buf = vec![0xeeu8; n as usize * self.bs];
        for l in lba..lba + u64::from(n) {
            self.busy_read[l as usize] += 1;
        }
        let req = Request::Read { lba, blocks: n, buf: lend_mut(&mut buf), view };
        self.submit(req, Op::Read { lba, blocks: n, buf, volume });
    }

    fn start_flush(&mut self) {
        let snapshot = self.blocks.iter().map(|b| b.cur.clone()).collect();
        let tick = self.tick + 1;
        self.submit(Request::Flush, Op::Flush { tick, snapshot });
    }

    fn start_snapshot(&mut self) {
        if self.fill || self.pending_snapshot.is_some() || self.volumes.len() >= 8 {
            return;
        }
        let name = (self.rng.below(2) == 0).then(|| format!("v{}", self.next_value));
        self.next_value += 1;
        // Current contents, plus whatever is in flight now or until it ends.
        let mut cand: Vec<Cand> = self.blocks.iter().map(|b| b.cur.clone()).collect();
        for op in self.inflight.values() {
            if let Op::Write { lba, values, .. } = op {
                for (i, v) in values.iter().enumerate() {
                    cand[*lba as usize + i].insert(*v);
                }
            }
        }
        self.pending_snapshot = Some(cand);
        self.submit(Request::Snapshot { name: name.clone() }, Op::Snapshot { name });
    }

    fn start_delete(&mut self) {
        let live: Vec<String> = self.volumes.keys().filter(|n| !self.deleting.contains(*n)).cloned().collect();
        if live.is_empty() {
            return;
        }
        let name = live[self.rng.below(live.len() as u64) as usize].clone();
        self.deleting.insert(name.clone());
        self.delete_issued.insert(name.clone());
        self.submit(Request::DeleteVolume { name: name.clone() }, Op::Delete { name });
    }

    fn start_compact(&mut self) {
        let live: Vec<String> = self.volumes.keys().filter(|n| !self.deleting.contains(*n)).cloned().collect();
        if !live.is_empty() && self.rng.below(3) == 0 {
            let volume = live[self.rng.below(live.len() as u64) as usize].clone();
            let partition = self.volumes[&volume].partition;
            let retired: Vec<String> =
                self.volumes.iter().filter(|(_, v)| v.partition < partition).map(|(n, _)| n.clone()).collect();
            for name in &retired {
                self.deleting.insert(name.clone());
                self.delete_issued.insert(name.clone());
            }
            let req = Request::Compact { volume: Some(volume.clone()), mode: CompactMode::Baseline };
            return self.submit(req, Op::Fold { volume, retired });
        }
        let volume = if !self.volumes.is_empty() && self.rng.below(2) == 0 {
            let i = self.rng.below(self.volumes.len() as u64) as usize;
            self.volumes.keys().nth(i).cloned()
        } else {
            None
        };
        self.submit(Request::Compact { volume: volume.clone(), mode: CompactMode::InPlace }, Op::Compact { volume });
    }

    /// A diff of a volume, since an older one or full, over the whole
    /// volume or a range.
    fn start_diff(&mut self) {
        if self.volumes.is_empty() {
            return;
        }
        let names: Vec<String> = self.volumes.keys().cloned().collect();
        let volume = names[self.rng.below(names.len() as u64) as usize].clone();
        let older: Vec<&String> =
            names.iter().filter(|n| self.volumes[*n].partition < self.volumes[&volume].partition).collect();
        let base = (!older.is_empty() && self.rng.below(2) == 0)
            .then(|| older[self.rng.below(older.len() as u64) as usize].clone());
        let (lba_start, lba_count) = if self.rng.below(2) == 0 {
            (0, self.volume_blocks)
        } else {
            let (lba, n) = self.random_range();
            (lba, u64::from(n))
        };
        let req = Request::Diff { volume: volume.clone(), base_volume: base.clone(), lba_start, lba_count };
        self.submit(req, Op::Diff { volume, base, lba_start, lba_end: lba_start + lba_count });
    }

    /// A diff's extents are in order, apart, inside the range, and cover
    /// every block the model says surely differs: one surely written with
    /// data in the volume (a full diff), or whose values in the two
    /// volumes cannot be the same (an incremental).
    fn check_diff(&self, volume: &str, base: Option<&str>, range: (u64, u64), extents: &[ilog_bdev::engine::Extent]) {
        DIFFS.fetch_add(1, Relaxed);
        let what = format!("diff of {volume} since {base:?} over {range:?}");
        let mut end = range.0;
        for e in extents {
            if e.blocks == 0 || e.lba < end || e.lba + e.blocks > range.1 {
                self.fail(format!("{what}: extent {e:?} out of order or range: {extents:?}"));
            }
            end = e.lba + e.blocks;
        }
        let (Some(v), base) = (self.volumes.get(volume), base.map(|b| self.volumes.get(b))) else { return };
        if base.is_some_and(|b| b.is_none()) {
            return;
        }
        let kind_at = |lba: u64| extents.iter().find(|e| (e.lba..e.lba + e.blocks).contains(&lba)).map(|e| e.kind);
        for lba in range.0..range.1 {
            let cand = &v.blocks[lba as usize];
            let differs = match base {
                None => !cand.contains(&0),
                Some(b) => cand.is_disjoint(&b.expect("checked").blocks[lba as usize]),
            };
            if !differs {
                continue;
            }
            DIFF_BLOCKS.fetch_add(1, Relaxed);
            let surely_data = !cand.contains(&0);
            match kind_at(lba) {
                None => self.fail(format!("{what}: block {lba} ({cand:?}) is in no extent: {extents:?}")),
                Some(k) if surely_data && k != LogEntryKind::Data => {
                    self.fail(format!("{what}: block {lba} holds data ({cand:?}) but its extent is {k:?}"))
                }
                Some(_) => {}
            }
        }
    }

    fn start_log_read(&mut self) {
        let cursor = if self.rng.below(3) == 0 { 0 } else { self.cursor_last };
        let count = 1 + self.rng.below(50) as u32;
        self.submit(Request::LogRead { cursor, count, with_data: true }, Op::LogRead { cursor });
    }

    /// Checks blocks `lba..` read as `buf` from `volume` (the current image
    /// if `None`) against the model, collapsing each to what was read.
    fn check_blocks(&mut self, volume: Option<&str>, lba: u64, buf: &[u8], what: &str) {
        for (i, got) in buf.chunks_exact(self.bs).enumerate() {
            let l = lba + i as u64;
            let slot = match volume {
                None => &mut self.blocks[l as usize].cur,
                Some(name) => &mut self.volumes.get_mut(name).expect("modelled volume").blocks[l as usize],
            };
            let mut cand = std::mem::take(slot);
            self.check_block(&mut cand, l, got, &format!("{what} of {}", volume.unwrap_or("the current image")));
            match volume {
                None => self.blocks[l as usize].cur = cand,
                Some(name) => self.volumes.get_mut(name).expect("modelled volume").blocks[l as usize] = cand,
            }
        }
    }

    /// Checks block `lba` read as `got` against `cand`, collapsing it.
    fn check_block(&self, cand: &mut Cand, lba: u64, got: &[u8], what: &str) {
        match decode(got, lba) {
            Some(v) if cand.contains(&v) => *cand = Cand::from([v]),
            Some(v) => self.fail(format!("{what}: lba {lba} holds value {v}, expected one of {cand:?}")),
            None => self.fail(format!("{what}: lba {lba} holds bytes no write produced (first 16: {:?})", &got[..16])),
        }
    }

    fn complete(&mut self, token: u64, result: Result<Reply, Error>) {
        self.tick += 1;
        if !self.volumes.is_empty() || self.pending_snapshot.is_some() || !self.deleting.is_empty() {
            self.volumes_seen = self.tick;
        }
        if self.trace {
            eprintln!("[{}] done #{token}: {:?}", self.tick, result.as_ref().map(|_| ()));
        }
        let op = self.inflight.remove(&token).unwrap_or_else(|| self.fail(format!("unknown token {token}")));
        match op {
            Op::Diff { volume, base, lba_start, lba_end } => match result {
                Ok(Reply::Extents(extents)) => {
                    self.check_diff(&volume, base.as_deref(), (lba_start, lba_end), &extents)
                }
                Err(Error::NoSuchVolume(v))
                    if self.retire || self.delete_issued.contains(&v) || !self.volumes.contains_key(&v) => {}
                Err(Error::Io(_)) if self.write_eio => {}
                other => self.fail(format!("diff of {volume} since {base:?} answered {other:?}")),
            },
            Op::Write { lba, values, data, submitted } => {
                if result == Err(Error::NoSpace) && self.volumes_seen < submitted {
                    self.fail(format!("a write at {lba} failed with ENOSPC while no volume existed"));
                }
                for (i, v) in values.iter().enumerate() {
                    let block = &data[i * self.bs..(i + 1) * self.bs];
                    if decode(block, lba + i as u64) != Some(*v) && *v != 0 {
                        self.fail(format!("the engine modified the buffer of a write at {}", lba + i as u64));
                    }
                    let l = lba as usize + i;
                    self.busy_write[l] = false;
                    let b = &mut self.blocks[l];
                    if let Some(w) = b.since.iter_mut().rev().find(|w| w.value == *v) {
                        w.complete = Some(self.tick);
                    }
                    match &result {
                        Ok(_) => b.cur = Cand::from([*v]),
                        // A failed request may still have landed in part: its
                        // pieces on other stripes succeed or fail alone. A log
                        // full of versions volumes need fails cleanly so.
                        Err(Error::NoSpace) => {
                            b.cur.insert(*v);
                        }
                        Err(Error::Io(_)) if self.write_eio => {
                            b.cur.insert(*v);
                        }
                        Err(e) => self.fail(format!("write at {lba} failed: {e}")),
                    }
                }
            }
            Op::Read { lba, blocks, buf, volume } => {
                for l in lba..lba + u64::from(blocks) {
                    self.busy_read[l as usize] -= 1;
                }
                match result {
                    Ok(_) => {}
                    Err(Error::Io(_)) if self.write_eio => return,
                    Err(Error::NoSuchVolume(_))
                        if self.retire || volume.as_ref().is_some_and(|v| self.delete_issued.contains(v)) =>
                    {
                        return
                    }
                    Err(e) => self.fail(format!("read at {lba} failed: {e}")),
                }
                // A deleted volume's model is gone; reads racing the delete are unchecked.
                if volume.as_ref().is_none_or(|name| self.volumes.contains_key(name)) {
                    self.check_blocks(volume.as_deref(), lba, &buf, "read");
                }
            }
            Op::Flush { tick, snapshot } => match result {
                Ok(_) => {
                    for (b, s) in self.blocks.iter_mut().zip(snapshot) {
                        b.floor = s;
                        b.since.retain(|w| w.submit >= tick || w.complete.is_none_or(|c| c > tick));
                    }
                }
                Err(Error::Io(_)) if self.write_eio => {}
                Err(e) => self.fail(format!("flush failed: {e}")),
            },
            Op::Snapshot { name } => {
                let cand = self.pending_snapshot.take().expect("one snapshot at a time");
                match result {
                    Ok(Reply::Volume(v)) => {
                        if let Some(n) = &name {
                            assert_eq!(&v.name, n, "seed {}: snapshot named as asked", self.seed);
                        }
                        if self.volumes.contains_key(&v.name) {
                            self.fail(format!("snapshot id {} reused", v.name));
                        }
                        self.volumes.insert(v.name, VolumeModel { partition: v.partition, blocks: cand });
                    }
                    Err(Error::Io(_)) if self.write_eio => {}
                    other => self.fail(format!("snapshot answered {other:?}")),
                }
            }
            Op::Delete { name } => match result {
                Ok(_) => {
                    self.volumes.remove(&name);
                    self.deleting.remove(&name);
                }
                Err(Error::NoSuchVolume(_)) if self.retire => {
                    self.volumes.remove(&name);
                    self.deleting.remove(&name);
                }
                Err(Error::Io(_)) if self.write_eio => {
                    self.deleting.remove(&name);
                }
                other => self.fail(format!("delete of {name} answered {other:?}")),
            },
            Op::List => match result {
                Ok(Reply::Volumes(list)) => {
                    let got: BTreeSet<&str> = list.iter().map(|v| v.name.as_str()).collect();
                    for name in self.volumes.keys() {
                        if !got.contains(name.as_str()) && !self.deleting.contains(name) && !self.retire {
                            self.fail(format!("volume {name} missing from the list {got:?}"));
                        }
                    }
                }
                other => self.fail(format!("list answered {other:?}")),
            },
            Op::Compact { volume } => match result {
                Ok(_) => {}
                Err(Error::Io(_)) if self.write_eio => {}
                // The log too full for compaction to move anything.
                Err(Error::NoSpace) => {}
                Err(Error::NoSuchVolume(_))
                    if self.retire || volume.as_ref().is_some_and(|v| self.delete_issued.contains(v)) => {}
                other => self.fail(format!("compaction of {volume:?} answered {other:?}")),
            },
            Op::SetPolicy => match result {
                Ok(_) => {}
                Err(Error::Io(_)) if self.write_eio => {}
                other => self.fail(format!("set_policy answered {other:?}")),
            },
            Op::Fold { volume, retired } => match result {
                Ok(_) => {
                    FOLDS.fetch_add(1, Relaxed);
                    for name in &retired {
                        self.volumes.remove(name);
                        self.deleting.remove(name);
                    }
                }
                // A retired volume may be gone even if the fold failed.
                Err(Error::Io(_)) if self.write_eio => {}
                Err(Error::NoSuchVolume(_)) if self.retire || self.delete_issued.contains(&volume) => {}
                other => self.fail(format!("baseline compaction of {volume} answered {other:?}")),
            },
            Op::Stats => match result {
                Ok(Reply::Stats(st)) => {
                    FREED.fetch_add(st.segments_freed, Relaxed);
                    MOVED.fetch_add(st.bytes_moved, Relaxed);
                    COPIED.fetch_add(st.bytes_copied, Relaxed);
                    POLICY_ACTIONS.fetch_add(st.policy_actions, Relaxed);
                    DRAINS.fetch_add(st.drains, Relaxed);
                    RETIRED.fetch_add(st.volumes_retired, Relaxed);
                }
                other => self.fail(format!("stats answered {other:?}")),
            },
            Op::LogRead { cursor } => match result {
                Ok(Reply::Log(batch)) => {
                    let mut last = None;
                    for e in &batch.entries {
                        if e.sequence < cursor || last.is_some_and(|l| e.sequence <= l) {
                            self.fail(format!("cursor from {cursor}: sequence {} out of order", e.sequence));
                        }
                        last = Some(e.sequence);
                        if e.lba + u64::from(e.blocks) > self.volume_blocks {
                            self.fail(format!("log entry beyond the volume: {e:?}"));
                        }
                        if e.kind == LogEntryKind::Data {
                            let data = e.data.as_ref().unwrap_or_else(|| self.fail("entry without data".into()));
                            for i in 0..u64::from(e.blocks) {
                                let got = &data[i as usize * self.bs..(i as usize + 1) * self.bs];
                                match decode(got, e.lba + i) {
                                    Some(v) if v != 0 && self.blocks[(e.lba + i) as usize].ever.contains(&v) => {}
                                    other => self.fail(format!("log entry data at lba {} decodes to {other:?}; entry seq {:#x} part {} lba {} blocks {}; first bytes {:?}", e.lba + i, e.sequence, e.partition, e.lba, e.blocks, &got[..32])),
                                }
                            }
                        }
                    }
                    if batch.next_cursor < cursor {
                        self.fail("cursor went backwards".into());
                    }
                    self.cursor_last = batch.next_cursor;
                }
                // Entries the cursor had not reached drained into the
                // baseline: it goes on where the log has no gap.
                Err(Error::CursorDrained { cursor: c, oldest }) if c == cursor && cursor != 0 && oldest > cursor => {
                    self.cursor_last = oldest;
                }
                Err(Error::Io(_)) if self.write_eio => {}
                other => self.fail(format!("log read answered {other:?}")),
            },
        }
    }

    fn step(&mut self) {
        let mut done = Vec::new();
        self.sim.step(&mut |t, r| done.push((t, r)));
        for (t, r) in done {
            self.complete(t, r);
        }
    }

    fn drain(&mut self) {
        let mut done = Vec::new();
        self.sim.run_until_idle(&mut |t, r| done.push((t, r)));
        for (t, r) in done {
            self.complete(t, r);
        }
        if !self.inflight.is_empty() {
            self.fail(format!("{} requests never completed", self.inflight.len()));
        }
        self.audit();
    }

    /// The live-block accounting kept as blocks change equals a recount.
    fn audit(&self) {
        if let Err(e) = audit_space(self.sim.shards()) {
            self.fail(format!("space accounting: {e}"));
        }
    }

    /// Power cut, then remount and check every block and volume.
    fn crash_and_recover(&mut self) {
        if self.trace {
            eprintln!("[{}] power cut", self.tick);
        }
        POWER_CUTS.fetch_add(1, Relaxed);
        if self.sim.shards().iter().any(|s| s.is_draining()) {
            CUTS_IN_DRAINS.fetch_add(1, Relaxed);
        }
        self.sim.power_cut();
        self.inflight.clear(); // their buffers were read by the power cut
        self.busy_write.fill(false);
        self.busy_read.fill(0);
        for b in &mut self.blocks {
            let mut possible = b.floor.clone();
            possible.extend(b.since.iter().map(|w| w.value));
            b.cur = possible;
        }
        // An unacknowledged snapshot may exist; unacknowledged deletes may have happened.
        let pending = self.pending_snapshot.take();
        self.remount(true);
        let listed = self.list_volumes();
        for (name, partition) in &listed {
            if !self.volumes.contains_key(name) {
                match &pending {
                    Some(cand) => {
                        self.volumes.insert(name.clone(), VolumeModel { partition: *partition, blocks: cand.clone() });
                    }
                    None => self.fail(format!("volume {name} appeared from nowhere")),
                }
            }
        }
        let deleting = std::mem::take(&mut self.deleting);
        self.volumes.retain(|name, _| {
            let present = listed.contains_key(name);
            assert!(
                present || deleting.contains(name) || self.retire,
                "seed {}: acknowledged volume {name} lost in the crash",
                self.seed
            );
            present
        });
        for (name, vm) in &mut self.volumes {
            vm.partition = listed[name];
        }
        self.verify_all();
        self.audit();
        for b in &mut self.blocks {
            b.floor = b.cur.clone();
            b.since.clear();
        }
    }

    fn remount(&mut self, expect_replay: bool) {
        self.cores = 1 + self.rng.below(4) as u32;
        // Faults target the running engine; a mount that meets EIO fails (tested elsewhere).
        self.sim.disk.set_faults(Default::default());
        let mounted = self.sim.mount(self.cores);
        self.set_faults();
        match mounted {
            Ok(replayed) => {
                if replayed != expect_replay {
                    self.fail(format!("mount replayed={replayed}, expected {expect_replay}"));
                }
            }
            Err(e) => self.fail(format!("mount failed: {e}")),
        }
    }

    fn list_volumes(&mut self) -> BTreeMap<String, u32> {
        let token = self.next_token;
        self.next_token += 1;
        self.sim.submit(0, token, Request::ListVolumes).unwrap();
        let mut out = None;
        self.sim.run_until_idle(&mut |_, r| out = Some(r));
        match out {
            Some(Ok(Reply::Volumes(v))) => v.into_iter().map(|v| (v.name, v.partition)).collect(),
            other => self.fail(format!("list answered {other:?}")),
        }
    }

    /// Reads every block of the current image and of every volume.
    fn verify_all(&mut self) {
        let faults_were = self.write_eio;
        // Verification must see every block: no read faults now.
        self.sim.disk.set_faults(Default::default());
        // A volume a failed fold may have retired: settle whether it is gone.
        let listed = self.list_volumes();
        let (deleting, retire) = (&self.deleting, self.retire);
        self.volumes.retain(|name, _| listed.contains_key(name) || !(retire || deleting.contains(name)));
        let views: Vec<Option<String>> = std::iter::once(None).chain(self.volumes.keys().cloned().map(Some)).collect();
        for view in views {
            let mut lba = 0;
            while lba < self.volume_blocks {
                let n = (self.volume_blocks - lba).min(64) as u32;
                let mut buf = vec![0xeeu8; n as usize * self.bs];
                let v = view.as_ref().map_or(View::Current, |name| View::Volume(self.volumes[name].partition));
                let token = self.next_token;
                self.next_token += 1;
                let core = self.rng.below(u64::from(self.cores)) as u32;
                let req = Request::Read { lba, blocks: n, buf: lend_mut(&mut buf), view: v };
                // `buf` outlives the run that completes the read.
                self.sim.submit(core, token, req).unwrap();
                let mut out = None;
                self.sim.run_until_idle(&mut |_, r| out = Some(r));
                match out {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.fail(format!("verification read at {lba} of {view:?} failed: {e}")),
                    None => self.fail(format!("verification read at {lba} of {view:?} never completed")),
                }
                self.check_blocks(view.as_deref(), lba, &buf, "after recovery, read");
                lba += u64::from(n);
            }
        }
        if faults_were {
            self.set_faults();
        }
    }

    fn set_faults(&self) {
        if self.write_eio {
            self.sim.disk.set_faults(Faults { read_eio_ppm: 2000, write_eio_ppm: 2000 });
        }
    }

    fn clean_restart(&mut self) {
        self.drain();
        let token = self.next_token;
        self.next_token += 1;
        self.sim.submit(0, token, Request::Close).unwrap();
        let mut out = None;
        self.sim.run_until_idle(&mut |_, r| out = Some(r));
        match out {
            Some(Ok(_)) => {}
            Some(Err(Error::Io(_))) if self.write_eio => return self.crash_and_recover(),
            other => self.fail(format!("close answered {other:?}")),
        }
        self.sim.unmount();
        self.remount(false);
        for b in &mut self.blocks {
            b.floor = b.cur.clone();
            b.since.clear();
        }
        self.verify_all();
    }

    fn run(&mut self, ops: u32) {
        for _ in 0..ops {
            if self.rng.below(16) == 0 {
                self.sim.clock.advance(1);
            }
            let outstanding = self.inflight.len();
            if outstanding >= 12 || self.rng.below(3) == 0 {
                self.step();
                continue;
            }
            if self.fill && self.rng.below(2) == 0 {
                self.start_write(false);
                continue;
            }
            match self.rng.below(100) {
                0..=34 => self.start_write(false),
                35..=41 => self.start_write(true),
                42..=69 => self.start_read(),
                70..=76 => self.start_flush(),
                77..=81 => self.start_snapshot(),
                82..=84 => self.start_delete(),
                85..=87 => self.submit(Request::ListVolumes, Op::List),
                88 => self.start_log_read(),
                89 => self.start_diff(),
                90 => self.start_compact(),
                91..=94 => {
                    // let the in-flight work land, then cut the power
                    for _ in 0..self.rng.below(20) {
                        self.step();
                    }
                    self.crash_and_recover();
                }
                95..=96 => self.clean_restart(),
                _ => {
                    for _ in 0..self.rng.below(50) {
                        self.step();
                    }
                }
            }
        }
        self.drain();
        self.submit(Request::Stats, Op::Stats);
        self.drain();
        self.crash_and_recover();
    }
}

/// Segments compaction freed and bytes it moved, over every seed run.
static FREED: AtomicU64 = AtomicU64::new(0);
static MOVED: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);
static FOLDS: AtomicU64 = AtomicU64::new(0);
static DRAINS: AtomicU64 = AtomicU64::new(0);
static RETIRED: AtomicU64 = AtomicU64::new(0);
static POWER_CUTS: AtomicU64 = AtomicU64::new(0);
static CUTS_IN_DRAINS: AtomicU64 = AtomicU64::new(0);
static POLICY_ACTIONS: AtomicU64 = AtomicU64::new(0);
/// Diffs answered, and blocks they had to cover (surely different).
static DIFFS: AtomicU64 = AtomicU64::new(0);
static DIFF_BLOCKS: AtomicU64 = AtomicU64::new(0);

fn run_seed(seed: u64) {
    let mut h = Harness::new(seed);
    // Filled seeds overwrite the volume about 10 times over.
    let ops = if h.fill { 1200 } else { 400 };
    h.run(ops);
}

#[test]
fn random_workloads_match_the_model_across_crashes() {
    let started = std::time::Instant::now();
    let seeds = common::sim::for_each_seed("sim_model", run_seed);
    let (freed, moved, folds) = (FREED.load(Relaxed), MOVED.load(Relaxed), FOLDS.load(Relaxed));
    let (policy_actions, copied) = (POLICY_ACTIONS.load(Relaxed), COPIED.load(Relaxed));
    let (drains, retired, cuts) = (DRAINS.load(Relaxed), RETIRED.load(Relaxed), CUTS_IN_DRAINS.load(Relaxed));
    let power_cuts = POWER_CUTS.load(Relaxed);
    let (diffs, diff_blocks) = (DIFFS.load(Relaxed), DIFF_BLOCKS.load(Relaxed));
    eprintln!(
        "sim: {} seeds passed in {:.1?}; {freed} segments freed, compaction moved {moved} bytes ({copied} by device copies); {drains} drains into the baseline, {folds} asked for; {retired} volumes retired by a full log; {power_cuts} power cuts, {cuts} of them during drains; {policy_actions} policy actions; {diffs} diffs covering {diff_blocks} blocks that surely changed",
        seeds,
        started.elapsed()
    );
    if seeds >= 50 {
        assert!(freed > 0 && moved > 0, "the workloads must exercise compaction (freed {freed}, moved {moved})");
        assert!(copied > 0 && copied < moved, "moves must go both by device copies and through buffers");
        assert!(folds > 0, "the workloads must fold volumes into the baseline");
        assert!(policy_actions > 0, "the status policies must act");
        assert!(drains > 0 && cuts > 0, "the log must drain, and power cuts hit drains ({drains}, {cuts})");
        assert!(diffs > 0 && diff_blocks > 0, "diffs must run and have changes to cover ({diffs}, {diff_blocks})");
    }
    // A log full of versions under `delete_oldest` comes about once in
    // 400 seeds: checked where a run has enough of them (CI runs 2,000).
    if seeds >= 1000 {
        assert!(retired > 0, "a full log must retire volumes where the policy says so");
    }
}
