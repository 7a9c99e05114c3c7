//! A core's sync walk: the dirty blocks of its stripes copied from the
//! current image to a primary, a few runs in flight, in passes until a
//! pass finds none. A copy reads through the read path (the log or the
//! baseline, never a primary), then writes the primary and clears the
//! run's bits, unless a client write of those blocks came meanwhile
//! (the copy is stale: the bits stay for the next pass).

use super::io::log_read;
use crate::device::{DevOp, DevRequest, DmaBuf};
use crate::engine::msg::Msg;
use crate::engine::shard::Shard;
use crate::engine::tag::TAG_PRIMARY_SYNC;
use crate::error::Result;
use std::sync::atomic::Ordering::Relaxed;

/// Copies in flight per core, each of up to `RUN_BLOCKS` blocks.
const SLOTS: usize = 4;
const RUN_BLOCKS: u64 = 64;

/// The origin of a sync copy's read piece: no core has this number.
pub(in crate::engine) const SYNC_ORIGIN: u32 = u32::MAX;

struct Copy {
    primary: usize,
    lba: u64,
    blocks: u64,
    stale: bool,
}

struct Walk {
    /// Next block to look at.
    at: u64,
    /// This pass found dirty blocks it left (stale, or a write pending).
    left: bool,
}

/// A core's walks, one per primary with dirty blocks, and their copies.
pub(in crate::engine) struct SyncWalks {
    walks: Vec<Option<Walk>>,
    bufs: Vec<DmaBuf>,
    copies: Vec<Option<Copy>>,
}

impl SyncWalks {
    pub(super) fn new(primaries: usize, bs: usize) -> SyncWalks {
        let slots = if primaries == 0 { 0 } else { SLOTS };
        SyncWalks {
            walks: (0..primaries).map(|_| None).collect(),
            bufs: (0..slots).map(|_| DmaBuf::new(RUN_BLOCKS as usize * bs, super::primary_align(bs))).collect(),
            copies: (0..slots).map(|_| None).collect(),
        }
    }

    /// A client write of `lba..lba + n` came: a copy of those blocks to
    /// `primary` in flight is stale. Whether there was one.
    pub(super) fn mark_stale(&mut self, primary: usize, lba: u64, n: u64) -> bool {
        let mut any = false;
        for c in self.copies.iter_mut().flatten() {
            if c.primary == primary && c.lba < lba + n && lba < c.lba + c.blocks {
                c.stale = true;
                any = true;
            }
        }
        any
    }

    pub(in crate::engine) fn copying(&self) -> bool {
        self.copies.iter().any(Option::is_some)
    }

    pub(in crate::engine) fn walking(&self) -> bool {
        self.walks.iter().any(Option::is_some)
    }
}

impl Shard {
    /// Starts (or keeps) this core's walk for primary `p`.
    pub(in crate::engine) fn wake_sync(&mut self, p: usize) {
        let w = &mut self.mirror.sync.walks[p];
        match w {
            Some(w) => w.left = true,
            None => *w = Some(Walk { at: 0, left: false }),
        }
    }

    /// Starts copies while slots are free; ends walks whose pass found
    /// nothing. Returns the work done.
    pub(in crate::engine) fn advance_sync(&mut self) -> usize {
        let mut work = 0;
        if self.shutting_down {
            return 0;
        }
        for p in 0..self.mirror.sync.walks.len() {
            if self.mirror.sync.walks[p].is_none() {
                continue;
            }
            if !self.shared.primaries[p].in_service() {
                // A failed primary: its rebuild starts the walk again.
                self.mirror.sync.walks[p] = None;
                continue;
            }
            while let Some(slot) = self.mirror.sync.copies.iter().position(Option::is_none) {
                match self.next_dirty_run(p) {
                    Some((lba, blocks)) => {
                        work += 1;
                        self.start_copy(p, slot, lba, blocks);
                    }
                    None => break,
                }
            }
        }
        work
    }

    /// The next dirty run of this core's stripes for primary `p`, none
    /// while the pass is at its end; ends the walk there, or rewinds it for
    /// a new pass.
    fn next_dirty_run(&mut self, p: usize) -> Option<(u64, u64)> {
        let geo = self.shared.geo;
        let stripe = u64::from(geo.stripe_blocks);
        let primary = &self.shared.primaries[p];
        loop {
            let w = self.mirror.sync.walks[p].as_mut()?;
            if w.at >= geo.volume_blocks {
                if self.mirror.sync.copies.iter().flatten().any(|c| c.primary == p) {
                    return None;
                }
                if !w.left {
                    self.mirror.sync.walks[p] = None;
                    if primary.dirty.count() == 0 {
                        self.send(0, Msg::PrimarySynced { primary: p });
                    }
                    return None;
                }
                // The next pass starts at the next poll: what held this
                // one back (a client write in flight) needs polls to end.
                *w = Walk { at: 0, left: false };
                return None;
            }
            if self.shared.owner(w.at) != self.core {
                w.at = (w.at / stripe + 1) * stripe;
                continue;
            }
            let stripe_end = (w.at / stripe + 1) * stripe;
            let Some((lba, blocks)) = primary.dirty.next_run(w.at, stripe_end, RUN_BLOCKS) else {
                w.at = stripe_end;
                continue;
            };
            w.at = lba + blocks;
            if (lba..lba + blocks).any(|b| self.client_write_pending(b)) {
                // Its write mirrors itself or leaves the bits set.
                self.mirror.sync.walks[p].as_mut().expect("walking").left = true;
                continue;
            }
            return Some((lba, blocks));
        }
    }

    fn start_copy(&mut self, p: usize, slot: usize, lba: u64, blocks: u64) {
        let s = &mut self.mirror.sync;
        s.copies[slot] = Some(Copy { primary: p, lba, blocks, stale: false });
        let bs = self.shared.geo.block_size as usize;
        let buf = s.bufs[slot].io_buf().blocks(0, blocks as u32, bs);
        self.retry_piece(log_read(SYNC_ORIGIN, slot as u32, lba, blocks as u32, buf));
    }

    /// A copy's read of the current image completed: write it to the
    /// primary.
    pub(in crate::engine) fn sync_read(&mut self, slot: usize, status: Result<()>) {
        let c = self.mirror.sync.copies[slot].as_ref().expect("a copy in flight");
        let (p, lba, blocks) = (c.primary, c.lba, c.blocks);
        if let Err(e) = status {
            log::warn!("primary sync: reading blocks {lba}+{blocks} of the current image failed: {e}");
            self.mirror.sync.copies[slot] = None;
            return;
        }
        if !self.shared.primaries[p].in_service() || !self.primary_channel(p) {
            self.mirror.sync.copies[slot] = None;
            return;
        }
        let bs = self.shared.geo.block_size as usize;
        let buf = self.mirror.sync.bufs[slot].io_buf().blocks(0, blocks as u32, bs);
        let req = DevRequest {
            op: DevOp::Write,
            block: lba,
            nblocks: blocks as u32,
            buf,
            tag: TAG_PRIMARY_SYNC | slot as u64,
        };
        self.primary_submit(p, req);
    }

    /// A copy's write to primary `p` completed.
    pub(in crate::engine) fn sync_written(&mut self, p: usize, slot: usize, status: Result<()>) {
        let c = self.mirror.sync.copies[slot].take().expect("a copy in flight");
        let primary = &self.shared.primaries[p];
        match status {
            Ok(()) if !c.stale => {
                let cleared = primary.dirty.clear(c.lba, c.blocks);
                primary.rebuild_done.fetch_add(cleared, Relaxed);
                self.primary_wrote(p, c.lba, c.blocks as u32);
            }
            Ok(()) => {
                if let Some(w) = self.mirror.sync.walks[p].as_mut() {
                    w.left = true;
                }
            }
            Err(e) => {
                primary.write_errors.fetch_add(1, Relaxed);
                self.primary_failed(p, &format!("rebuild write failed: {e}"));
            }
        }
    }
}
