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
        let (warn, warned) = versions_warning(pct, c.volumes.len(), c.versions_warned);
        if warn {
            log::warn!(
                "the log is {pct} % full of versions that volumes and the current image need ({} volumes)",
                c.volumes.len()
            );
        }
        c.versions_warned = warned;
    }
}

/// Whether `pct` % of the log held by live versions is worth a warning,
/// given the threshold (80, 95) warned about last; and the threshold to
/// remember. Without volumes the drain frees every version the log holds,
/// so nothing is warned; a share back under 75 % rearms the warnings.
fn versions_warning(pct: u64, volumes: usize, warned: u8) -> (bool, u8) {
    if volumes == 0 || pct < 75 {
        return (false, 0);
    }
    let level = [95u8, 80].into_iter().find(|&l| pct >= u64::from(l)).unwrap_or(0);
    if level > warned {
        (true, level)
    } else {
        (false, warned)
    }
}

#[cfg(test)]
mod tests {
    use super::versions_warning;

    #[test]
    fn versions_are_warned_about_once_per_threshold_and_only_with_volumes() {
        // Without volumes the drain frees it all: no warning, however full.
        assert_eq!(versions_warning(99, 0, 0), (false, 0));
        assert_eq!(versions_warning(81, 2, 0), (true, 80));
        assert_eq!(versions_warning(90, 2, 80), (false, 80));
        assert_eq!(versions_warning(96, 2, 80), (true, 95));
        assert_eq!(versions_warning(96, 2, 95), (false, 95));
        // Between 75 and 80 the last warning stands; under 75 it rearms.
        assert_eq!(versions_warning(77, 2, 95), (false, 95));
        assert_eq!(versions_warning(70, 2, 95), (false, 0));
        assert_eq!(versions_warning(82, 2, 0), (true, 80));
    }
}
