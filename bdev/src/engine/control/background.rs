//! Background work the log needs, started by the coordinator itself when
//! no operation is queued: a checkpoint for the replay window, a drain into
//! the baseline when there is something to drain and a reason to, else
//! (writes waiting for room) compaction.

use super::{Op, Shard};
use crate::engine::compact::CompactTarget;
use crate::engine::shared::SpaceState;
use std::sync::atomic::Ordering::Relaxed;

impl Shard {
    pub(super) fn background_tick(&mut self) {
        self.warn_on_versions();
        let core = self.core;
        if self.shared.free.window_short() {
            // Half the window is used, or writes wait for it.
            return self.ctl_mut().enqueue_background(core, Op::Checkpoint);
        }
        if self.ctl_mut().drain.is_some() {
            return;
        }
        let wanted = self.shared.space_state() == SpaceState::Wanted;
        if self.drain_wanted(wanted) {
            self.ctl_mut().enqueue_background(core, Op::Drain);
        } else if wanted {
            log::debug!("log full: reclaiming space");
            self.ctl_mut().enqueue_background(core, Op::Compact(CompactTarget::Reclaim));
        }
    }

    /// Whether a drain should start now: one a crash or a failure left
    /// unfinished (after failures, once the clock moved on), the oldest
    /// volume not yet in the baseline, or (without volumes) writes waiting
    /// for room, a log three quarters full, or a second without writes. So
    /// a burst that fits in the log is taken at the write path's speed, and
    /// the log empties while the disk is idle.
    fn drain_wanted(&mut self, space_wanted: bool) -> bool {
        let now = self.shared.clock.now_unix_s();
        let written = self.shared.counters.user_blocks.load(Relaxed);
        let c = self.ctl_mut();
        if c.writes_seen.0 != written {
            c.writes_seen = (written, now);
        }
        // Seconds are whole: a change seen in second S, none in S + 1.
        let idle = now > c.writes_seen.1 + 1;
        if c.drain_failed_at.is_some_and(|at| now <= at) {
            return false;
        }
        c.drain_failed_at = None;
        match c.drain_target() {
            None => false,
            Some((_, false)) => true,
            Some((_, true)) => {
                // Beyond the cores' open segments: what a drain can free.
                let geo = self.shared.geo;
                let used = geo.segment_count as usize - self.shared.free.len();
                let drainable = used > self.shared.cores as usize;
                (space_wanted && used > 0) || (drainable && (idle || used * 4 >= geo.segment_count as usize * 3))
            }
        }
    }

    /// Logs a warning as the log's space held by live versions passes 80 %
    /// and 95 %.
    fn warn_on_versions(&mut self) {
        let geo = self.shared.geo;
        let live: u64 = self.shared.space.iter().map(|s| u64::from(s.live())).sum();
        let pct = live * 100 / (u64::from(geo.segment_count) * u64::from(geo.segment_blocks)).max(1);
        let c = self.ctl_mut();
        let level = [95u8, 80].into_iter().find(|&l| pct >= u64::from(l)).unwrap_or(0);
        if level > c.versions_warned {
            log::warn!(
                "the log is {pct} % full of versions that volumes and the current image need ({} volumes)",
                c.volumes.len()
            );
            c.versions_warned = level;
        } else if pct < 75 {
            c.versions_warned = 0;
        }
    }
}
