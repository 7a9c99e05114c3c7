//! Folding partitions into the baseline region (baseline compaction): each
//! core's part of it.
//!
//! The baseline region holds the volume's blocks direct-mapped. A stripe of
//! it holds data only once a fold wrote it whole (`BaselineMap`); until then
//! it reads as zeros. Folding partitions up to `p` rewrites every stripe the
//! core owns that those partitions touch: the stripe as the baseline holds it
//! (or zeros), overlaid with the newest version of each block as of `p`, is
//! written back in one request. Only blocks that no view reads from the
//! baseline change: every view that reads them also reads a partition up to
//! `p` holding them, until the fold's checkpoint drops those partitions.
//! Core 0 orders the rest (see `control.rs`): volumes older than `p` are
//! retired first, a checkpoint records the fold as started (mount finishes
//! it), the baseline is flushed before the checkpoint that frees the
//! partitions' segments, and cores forget them (`Msg::Folded`) before those
//! segments are reused.

use super::addr::ZERO;
use super::control::Stage;
use super::request::Reply;
use super::shard::{Msg, Shard, TAG_CONTROL, TAG_FOLD};
use super::shared::SpaceState;
use crate::device::{DevOp, DevRequest, DevStatus, DmaBuf};
use crate::error::{Error, Result};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

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

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().map(|b| b.load(Relaxed)).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reading the stripe's current baseline contents.
    Base,
    /// Reading the folded versions out of the log.
    Log,
    /// Writing the stripe back.
    Write,
}

/// One core's fold of partitions up to `partition`.
pub(super) struct Fold {
    partition: u32,
    stripes: VecDeque<u64>,
    /// The stripe being rewritten, and its buffer.
    stripe: Option<(u64, Step)>,
    buf: DmaBuf,
    outstanding: u32,
    error: Option<Error>,
}

impl Shard {
    /// Starts rewriting the owned stripes that partitions up to `partition`
    /// touch; answers core 0 with `FoldDone` when they are all written.
    pub(super) fn start_fold(&mut self, partition: u32) {
        let stripe_blocks = u64::from(self.shared.geo.stripe_blocks);
        let stripes: BTreeSet<u64> = self
            .parts
            .sealed()
            .iter()
            .filter(|(p, _)| *p <= partition)
            .flat_map(|(_, table)| table.iter().map(|(lba, _)| u64::from(lba) / stripe_blocks))
            .collect();
        let bs = self.shared.geo.block_size as usize;
        let buf = DmaBuf::new(bs * stripe_blocks as usize, bs);
        let stripes = stripes.into_iter().collect();
        self.fold = Some(Fold { partition, stripes, stripe: None, buf, outstanding: 0, error: None });
        self.advance_fold();
    }

    /// Blocks of `stripe` (the last stripe may be short).
    fn stripe_len(&self, stripe: u64) -> u32 {
        let stripe_blocks = u64::from(self.shared.geo.stripe_blocks);
        (self.shared.geo.volume_blocks - stripe * stripe_blocks).min(stripe_blocks) as u32
    }

    /// Moves the fold on as far as its I/O allows.
    pub(super) fn advance_fold(&mut self) -> usize {
        let Some(f) = &self.fold else { return 0 };
        if f.outstanding > 0 {
            return 0;
        }
        match f.stripe {
            None => self.next_fold_stripe(),
            Some((stripe, Step::Base)) => self.read_folded_blocks(stripe),
            Some((stripe, Step::Log)) => self.write_fold_stripe(stripe),
            Some((stripe, Step::Write)) => {
                if self.fold.as_ref().expect("folding").error.is_none() {
                    self.shared.baseline.set(stripe);
                }
                self.fold.as_mut().expect("folding").stripe = None;
                self.next_fold_stripe()
            }
        }
        1
    }

    fn next_fold_stripe(&mut self) {
        let f = self.fold.as_mut().expect("folding");
        let next = if f.error.is_some() { None } else { f.stripes.pop_front() };
        let Some(stripe) = next else {
            let f = self.fold.take().expect("folding");
            let status = f.error.map_or(Ok(()), Err);
            return self.send(0, Msg::FoldDone { status });
        };
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let len = self.stripe_len(stripe);
        if self.shared.baseline.has(stripe) {
            let f = self.fold.as_mut().expect("folding");
            f.stripe = Some((stripe, Step::Base));
            f.outstanding = 1;
            let block = geo.baseline_start + stripe * u64::from(geo.stripe_blocks);
            let buf = f.buf.as_mut_ptr();
            self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks: len, buf, tag: TAG_FOLD });
        } else {
            let f = self.fold.as_mut().expect("folding");
            f.buf[..len as usize * bs].fill(0);
            f.stripe = Some((stripe, Step::Base));
            self.read_folded_blocks(stripe);
        }
    }

    /// Overlays the newest version of each block as of the fold's partition.
    fn read_folded_blocks(&mut self, stripe: u64) {
        let geo = self.shared.geo;
        let bs = geo.block_size as usize;
        let first = stripe * u64::from(geo.stripe_blocks);
        let partition = self.fold.as_ref().expect("folding").partition;
        let mut runs: Vec<(u32, u64, u32)> = Vec::new(); // (offset, device block, blocks)
        for off in 0..self.stripe_len(stripe) {
            match self.parts.lookup_as_of((first + u64::from(off)) as u32, partition) {
                None => {}
                Some(ZERO) => self.fold.as_mut().expect("folding").buf[off as usize * bs..][..bs].fill(0),
                Some(addr) => {
                    let block = geo.log_start + u64::from(addr);
                    match runs.last_mut() {
                        Some((o, b, n)) if *o + *n == off && *b + u64::from(*n) == block => *n += 1,
                        _ => runs.push((off, block, 1)),
                    }
                }
            }
        }
        let f = self.fold.as_mut().expect("folding");
        f.stripe = Some((stripe, Step::Log));
        f.outstanding = runs.len() as u32;
        let base = f.buf.as_mut_ptr();
        for (off, block, nblocks) in runs {
            // SAFETY: the run lies within the stripe buffer.
            let buf = unsafe { base.add(off as usize * bs) };
            self.dev_submit(DevRequest { op: DevOp::Read, block, nblocks, buf, tag: TAG_FOLD });
        }
    }

    fn write_fold_stripe(&mut self, stripe: u64) {
        let geo = self.shared.geo;
        let nblocks = self.stripe_len(stripe);
        let f = self.fold.as_mut().expect("folding");
        if f.error.is_some() {
            f.stripe = Some((stripe, Step::Write));
            return;
        }
        f.stripe = Some((stripe, Step::Write));
        f.outstanding = 1;
        let block = geo.baseline_start + stripe * u64::from(geo.stripe_blocks);
        let buf = f.buf.as_mut_ptr();
        super::space::Counters::add(&self.shared.counters.device_blocks, u64::from(nblocks));
        self.dev_submit(DevRequest { op: DevOp::Write, block, nblocks, buf, tag: TAG_FOLD });
    }

    pub(super) fn fold_io_done(&mut self, status: DevStatus) {
        let f = self.fold.as_mut().expect("fold I/O belongs to a fold");
        f.outstanding -= 1;
        if let Err(e) = status {
            f.error.get_or_insert(Error::Io(e));
        }
    }

    /// The fold's checkpoint is durable: forget the partitions up to
    /// `partition` and the index entries into `segments` (freed next).
    pub(super) fn forget_folded(&mut self, partition: u32, segments: &[u32]) {
        let seg_blocks = self.shared.geo.segment_blocks;
        let freed: BTreeSet<u32> = segments.iter().copied().collect();
        self.index.unmap_where(|addr| addr != ZERO && freed.contains(&(addr / seg_blocks)));
        self.parts.drop_up_to(partition);
        self.send(0, Msg::FoldedAck);
    }
}

/// Where core 0's fold job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoldStep {
    /// Writing the checkpoint that records the fold as started.
    Intent,
    /// Cores rewrite their stripes.
    Copying { acks: u32 },
    /// Writing the checkpoint that drops the folded partitions.
    Commit,
    /// Cores forget the folded partitions.
    Releasing { acks: u32 },
}

pub(super) struct FoldJob {
    pub partition: u32,
    pub step: FoldStep,
    /// Segments of the folded partitions, freed once every core forgot them.
    segments: Arc<Vec<u32>>,
    error: Option<Error>,
}

/// Core 0: the fold as a control operation.
impl Shard {
    /// Which partition a baseline compaction of `volume` (the oldest one if
    /// `None`) folds, and the older volumes to retire first.
    pub(super) fn fold_target(&mut self, volume: Option<&str>) -> Result<(u32, Vec<String>)> {
        let c = self.ctl_mut();
        let baseline = c.baseline_partition();
        let target = match volume {
            Some(name) => {
                c.volume_records().iter().find(|v| v.name == name).ok_or_else(|| Error::NoSuchVolume(name.into()))?
            }
            None => c
                .volume_records()
                .iter()
                .filter(|v| v.partition > baseline)
                .min_by_key(|v| v.partition)
                .ok_or_else(|| Error::InvalidArgument("no snapshot volume left to fold into the baseline".into()))?,
        };
        let p = target.partition;
        let older = c.volume_records().iter().filter(|v| v.partition < p).map(|v| v.name.clone()).collect();
        Ok((p, older))
    }

    /// After the fold's barrier (every segment of the partitions closed and
    /// summarized): record the fold as started.
    pub(super) fn fold_after_barrier(&mut self, partition: u32) {
        log::info!("folding partitions up to {partition} into the baseline");
        let c = self.ctl_mut();
        c.fold = Some(FoldJob { partition, step: FoldStep::Intent, segments: Arc::new(Vec::new()), error: None });
        c.set_folding(Some(partition));
        self.write_checkpoint(false);
    }

    pub(super) fn fold_checkpointed(&mut self) {
        let cores = self.shared.cores;
        let job = self.ctl_mut().fold.as_mut().expect("a fold runs");
        let partition = job.partition;
        match job.step {
            FoldStep::Intent => {
                job.step = FoldStep::Copying { acks: 0 };
                self.ctl_mut().set_stage(Stage::Fold);
                for core in 0..cores {
                    self.send(core, Msg::Fold { partition });
                }
            }
            FoldStep::Commit => {
                job.step = FoldStep::Releasing { acks: 0 };
                let segments = job.segments.clone();
                self.ctl_mut().set_stage(Stage::Fold);
                for core in 0..cores {
                    self.send(core, Msg::Folded { partition, segments: segments.clone() });
                }
            }
            step => unreachable!("no checkpoint in fold step {step:?}"),
        }
    }

    pub(super) fn on_fold_done(&mut self, status: Result<()>) {
        let cores = self.shared.cores;
        let job = self.ctl_mut().fold.as_mut().expect("a fold runs");
        let FoldStep::Copying { acks } = &mut job.step else { unreachable!("fold replies come while copying") };
        *acks += 1;
        if let Err(e) = status {
            job.error.get_or_insert(e);
        }
        if *acks < cores {
            return;
        }
        if let Some(e) = job.error.take() {
            // The partitions stay; the baseline only changed where they
            // still hold every version a view reads. Mount retries it.
            log::error!("fold into the baseline failed: {e}");
            self.ctl_mut().fold = None;
            return self.finish_control(Err(e));
        }
        self.ctl_mut().set_stage(Stage::FoldFlush);
        let flush = DevRequest { op: DevOp::Flush, block: 0, nblocks: 0, buf: std::ptr::null_mut(), tag: TAG_CONTROL };
        self.dev_submit(flush);
    }

    /// The baseline is durable: drop the folded partitions' segments from
    /// the table.
    pub(super) fn fold_flushed(&mut self, status: DevStatus) {
        if let Err(e) = status {
            self.ctl_mut().fold = None;
            return self.finish_control(Err(Error::Io(e)));
        }
        let c = self.ctl_mut();
        let partition = c.fold.as_ref().expect("a fold runs").partition;
        let segments: Vec<u32> = c.registry().values().filter(|s| s.partition <= partition).map(|s| s.segno).collect();
        for segno in &segments {
            c.registry_mut().remove(segno);
        }
        c.set_baseline_partition(partition);
        c.set_folding(None);
        let job = c.fold.as_mut().expect("a fold runs");
        job.segments = Arc::new(segments);
        job.step = FoldStep::Commit;
        self.write_checkpoint(false);
    }

    pub(super) fn on_folded_ack(&mut self) {
        let cores = self.shared.cores;
        let job = self.ctl_mut().fold.as_mut().expect("a fold runs");
        let FoldStep::Releasing { acks } = &mut job.step else { unreachable!("acks come while releasing") };
        *acks += 1;
        if *acks < cores {
            return;
        }
        let job = self.ctl_mut().fold.take().expect("a fold runs");
        for &segno in job.segments.iter() {
            self.shared.space[segno as usize].reset();
            self.shared.free_segments.push(segno).expect("a freed segment fits the pool");
        }
        let counters = &self.shared.counters;
        counters.segments_freed.fetch_add(job.segments.len() as u64, Relaxed);
        counters.compactions.fetch_add(1, Relaxed);
        log::info!(
            "folded partitions up to {} into the baseline: {} segment(s) freed",
            job.partition,
            job.segments.len()
        );
        if self.shared.free_segments.len() > self.shared.reserve() {
            self.shared.set_space_state(SpaceState::Ok);
        }
        self.finish_control(Ok(Reply::Done));
    }
}
