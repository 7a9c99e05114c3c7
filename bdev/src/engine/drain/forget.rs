//! One core's forget walk (`Forget`), the first step of a drain's commit:
//! the index stops pointing at the drained partitions' versions (reads go
//! to the baseline), their space counts go, their tables are dropped.

use crate::engine::addr::{LogAddr, ZERO};
use crate::engine::msg::Msg;
use crate::engine::partition::BlockHasher;
use crate::engine::shard::Shard;
use crate::engine::space::pinned_after_overwrite;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering::Relaxed;

/// Table entries a forget slice examines, and slices per poll.
const FORGET_SLICE: usize = 32;
const FORGET_SLICES_PER_POLL: usize = 4;

/// One core's forget walk (see the module comment): the versions of the
/// drained partitions, table by table.
pub(in crate::engine) struct Forget {
    target: u32,
    tables: Vec<u32>,
    table: usize,
    at: (usize, usize),
    /// Versions a client write superseded during the walk: they were
    /// accounted then (as drained: never pinned), not by the walk.
    overwritten: HashSet<LogAddr, BuildHasherDefault<BlockHasher>>,
}

impl Forget {
    pub(in crate::engine) fn overwrote(&mut self, addr: LogAddr) {
        self.overwritten.insert(addr);
    }
}

impl Shard {
    /// baseline now holds.
    pub(in crate::engine) fn start_forget(&mut self, target: u32) {
        let tables = self.parts.sealed().iter().map(|(p, _)| *p).filter(|&p| p <= target).collect();
        self.drained = target;
        self.forget = Some(Forget { target, tables, table: 0, at: (0, 0), overwritten: HashSet::default() });
    }

    /// Advances the forget walk, a slice at a time; answers core 0 once it
    /// is done.
    pub(in crate::engine) fn advance_forget(&mut self) -> usize {
        if self.forget.is_none() {
            return 0;
        }
        // Writes may wait for the room the commit makes: the walk takes its
        // slices, client work waiting or not (a slice is a few lookups per
        // entry).
        for _ in 0..FORGET_SLICES_PER_POLL {
            if self.forget_slice() {
                let f = self.forget.take().expect("forgetting");
                self.parts.drop_up_to(f.target);
                // Client entries of the drained partitions lie below where
                // the stream was when the target (or a later one) sealed.
                let below = self.sealed_at.range(f.target..).next().map_or(0, |(_, &pos)| pos);
                self.sealed_at.retain(|&p, _| p > f.target);
                self.send(0, Msg::DrainForgot { drained_below: below });
                return 1;
            }
        }
        1
    }

    /// Examines up to `FORGET_SLICE` versions; returns whether the walk is
    /// done.
    fn forget_slice(&mut self) -> bool {
        let f = self.forget.as_ref().expect("forgetting");
        let Some(&t) = f.tables.get(f.table) else { return true };
        let target = f.target;
        let mut out = [(0u32, 0 as LogAddr); FORGET_SLICE];
        let (n, next) = self.sealed_table(t).read_from(f.at, &mut out);
        for &(lba, addr) in &out[..n] {
            // Older versions up to the target are dead already: no volume
            // lies below the target.
            if self.parts.next_holder(lba, t, target).is_some() {
                continue;
            }
            let newer = self.parts.next_holder(lba, target, u32::MAX);
            let in_open = self.parts.open_table().contains(lba);
            let index = self.index.get(u64::from(lba));
            if index == Some(addr) && (addr != ZERO || (newer.is_none() && !in_open)) {
                // Current: reads go to the baseline from now on.
                self.index.unmap(u64::from(lba));
                if addr != ZERO {
                    self.shared.segment_of(addr).current.fetch_sub(1, Relaxed);
                }
                continue;
            }
            let f = self.forget.as_ref().expect("forgetting");
            if addr == ZERO || f.overwritten.contains(&addr) {
                continue;
            }
            let n = newer.unwrap_or(self.open_partition);
            if pinned_after_overwrite(t, n, &self.live_volumes) {
                self.shared.segment_of(addr).pinned.fetch_sub(1, Relaxed);
            }
        }
        let f = self.forget.as_mut().expect("forgetting");
        if n < FORGET_SLICE {
            (f.table, f.at) = (f.table + 1, (0, 0));
        } else {
            f.at = next;
        }
        false
    }
}
