//! Retirement: appended writes wait in the reorder buffer and retire in
//! log order once their data is written. Only then does the index point at
//! them and do the space counts change, so reads never see a block before
//! it is on the device, and the index always agrees with what replay of
//! the log would build.

use super::addr::{LogAddr, ZERO};
use super::shard::Shard;
use super::space::pinned_after_overwrite;
use crate::error::Result;
use crate::format::EntryKind;
use std::sync::atomic::Ordering::Relaxed;

/// Writes appended but not yet retired, per core.
pub(super) const ROB_DEPTH: usize = 4096;

/// Why an entry was appended.
#[derive(Clone, Copy)]
pub(super) enum Purpose {
    /// A piece of a client request, completed on `origin` in `slot`.
    Client { origin: u32, slot: u32 },
    /// Compaction's copy of the live block at `src` (`ZERO` for a zero
    /// entry) of partition `src_partition`; `buf` is compaction buffer
    /// holding its data.
    Move { src: LogAddr, src_partition: u32, buf: Option<u16> },
}

/// A write appended to the stream, waiting to retire in log order.
pub(super) struct RobEntry {
    pub(super) done: bool,
    pub(super) status: Result<()>,
    pub(super) segno: u32,
    pub(super) entry: u32,
    pub(super) partition: u32,
    pub(super) lba: u64,
    pub(super) blocks: u32,
    /// First block's log address, or `ZERO`.
    pub(super) addr: LogAddr,
    pub(super) purpose: Purpose,
    /// Writes of it to primaries still in flight, and the primaries (bit
    /// `p`) that do not have it: retirement waits for the first, and marks
    /// its blocks dirty on the second.
    pub(super) mirror_pending: u8,
    pub(super) mirror_missed: u8,
}

impl Shard {
    pub(super) fn retire(&mut self) -> usize {
        let mut n = 0;
        while self.rob.front().is_some_and(|e| e.done && e.mirror_pending == 0) {
            let e = self.rob.pop_front().expect("checked");
            self.retire_seq += 1;
            n += 1;
            let i =
                self.segs.iter().position(|s| s.segno == e.segno).expect("an entry's segment stays until it retires");
            let applied = match (e.purpose, &e.status) {
                (Purpose::Client { .. }, Ok(())) => {
                    for b in 0..e.blocks {
                        let addr = if e.addr == ZERO { ZERO } else { e.addr + b };
                        let lba = e.lba + u64::from(b);
                        self.supersede(lba, e.partition);
                        if addr != ZERO {
                            self.shared.segment_of(addr).current.fetch_add(1, Relaxed);
                        }
                        self.index.set(lba, addr);
                        self.parts.record(e.partition, lba as u32, addr);
                    }
                    true
                }
                (Purpose::Move { src, src_partition, .. }, Ok(())) => {
                    self.retire_move(e.lba, e.blocks, src, src_partition, e.addr, e.partition);
                    true
                }
                (_, Err(_)) => false,
            };
            if matches!(e.purpose, Purpose::Client { .. }) && (e.mirror_missed != 0 || !applied) {
                self.mirror_retired(e.lba, e.blocks, e.mirror_missed, !applied);
            }
            if !applied {
                // Replay must skip it, not stop at its missing data.
                self.segs[i].entries[e.entry as usize].kind = EntryKind::Hole;
            }
            self.segs[i].retired += 1;
            self.summarize_full_groups(i);
            self.try_close(i);
            match e.purpose {
                Purpose::Client { origin, slot } => self.finish_piece(origin, slot, e.status),
                Purpose::Move { buf, .. } => self.move_done(buf, e.status),
            }
        }
        n
    }

    /// Accounts for `lba`'s current version being replaced by one in
    /// `partition`: it stops being current, and stays live only if a volume
    /// pins it.
    fn supersede(&mut self, lba: u64, partition: u32) {
        let Some(old) = self.index.get(lba).filter(|&a| a != ZERO) else { return };
        let space = self.shared.segment_of(old);
        space.current.fetch_sub(1, Relaxed);
        let old_partition = self.logmap.partition(old);
        if old_partition <= self.drained {
            // The baseline holds it: no volume needs this copy. The forget
            // walk under way must not unpin it either.
            if let Some(f) = self.forget.as_mut() {
                f.overwrote(old);
            }
            return;
        }
        // While a volume change's walk runs, the volumes before it count.
        let volumes = self.repin.as_ref().map_or(&self.live_volumes, |w| &w.before);
        if pinned_after_overwrite(old_partition, partition, volumes) {
            space.pinned.fetch_add(1, Relaxed);
        }
        if let Some(walk) = self.repin.as_mut().filter(|w| w.decides(old_partition, partition)) {
            walk.overwrote(old);
        }
    }

    /// Whether a client write of `lba` waits in the reorder buffer.
    pub(super) fn client_write_pending(&self, lba: u64) -> bool {
        self.rob
            .iter()
            .any(|e| matches!(e.purpose, Purpose::Client { .. }) && (e.lba..e.lba + u64::from(e.blocks)).contains(&lba))
    }
}
