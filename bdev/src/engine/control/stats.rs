//! The bdev's statistics (`Stats`), assembled on core 0 from the shared
//! space and write counters and the coordinator's tables. Apart from the
//! operation queue: a `Stats` request reads state, it runs no operation.

use crate::engine::request::Stats;
use crate::engine::shard::Shard;
use std::sync::atomic::Ordering::Relaxed;

impl Shard {
    pub(super) fn stats(&mut self) -> Stats {
        let shared = self.shared.clone();
        let (geo, counters) = (shared.geo, &shared.counters);
        let (bs, seg_bytes) = (u64::from(geo.block_size), u64::from(geo.segment_blocks) * u64::from(geo.block_size));
        let free = shared.free.len() as u32;
        let (mut used, mut live) = (0u64, 0u64);
        for s in &shared.space {
            used += u64::from(s.used.load(Relaxed));
            live += u64::from(s.live());
        }
        let c = self.ctl_mut();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
        let capacity = u64::from(geo.segment_count) * seg_bytes;
        Stats {
            block_size: geo.block_size,
            volume_blocks: geo.volume_blocks,
            segment_blocks: geo.segment_blocks,
            segments_total: geo.segment_count,
            segments_free: free,
            volumes: c.volumes.len() as u32,
            partitions: c.partitions_in_log(),
            open_partition: c.open_partition,
            baseline_partition: c.baseline_partition,
            log_capacity_bytes: capacity,
            log_used_bytes: u64::from(geo.segment_count - free) * seg_bytes,
            live_bytes: live * bs,
            garbage_bytes: used.saturating_sub(live) * bs,
            versions_percent: (live * bs * 100 / capacity.max(1)) as u8,
            user_bytes_written: load(&counters.user_blocks) * bs,
            device_bytes_written: load(&counters.device_blocks) * bs,
            compactions: load(&counters.compactions),
            bytes_moved: load(&counters.moved_blocks) * bs,
            bytes_copied: load(&counters.copied_blocks) * bs,
            segments_freed: load(&counters.segments_freed),
            drains: load(&counters.drains),
            volumes_retired: load(&counters.volumes_retired),
            last_mount: shared.mount,
            policy_actions: load(&counters.policy_actions),
            primaries: shared.primaries.iter().map(|p| p.info()).collect(),
        }
    }
}
