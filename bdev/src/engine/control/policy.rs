//! Core 0 applying the policy: the situation it decides on, taken from the
//! coordinator's tables and the shared space counts, and its decisions
//! queued as ordinary control operations (the policy itself, `policy.rs`,
//! only reads a document and decides).

use super::Op;
use crate::engine::compact::CompactTarget;
use crate::engine::policy::{Decision, Policy, Situation};
use crate::engine::request::Reply;
use crate::engine::shard::Shard;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// Core 0: applying the policy.
impl Shard {
    fn situation(&mut self) -> Situation {
        let now = self.shared.clock.now_unix_s();
        let shared = self.shared.clone();
        let geo = shared.geo;
        let free = shared.free.len() as u64;
        let c = self.ctl_mut();
        let mut volumes = c.volume_records().to_vec();
        volumes.sort_by_key(|v| v.partition);
        // A segment's space counts for its base partition: segments are
        // shared, and what compacting that partition rewrites is them.
        let mut per_partition: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for s in c.registry().iter().filter(|s| !s.record.open) {
            let space = &shared.space[s.record.segno as usize];
            let e = per_partition.entry(s.record.partition).or_default();
            e.0 += u64::from(space.used.load(Relaxed));
            e.1 += u64::from(space.live());
        }
        let total = u64::from(geo.segment_count);
        Situation {
            now,
            last_snapshot: c.last_snapshot_at,
            volumes,
            baseline_partition: c.baseline_partition(),
            partitions: c.partitions_in_log(),
            log_used_pct: (total - free) * 100 / total,
            partition_space: per_partition.into_iter().map(|(p, (used, live))| (p, used, live.min(used))).collect(),
            // A compaction gains a segment only once a segment's worth of
            // garbage is spread over what it rewrites.
            min_garbage: u64::from(geo.segment_blocks) * u64::from(shared.cores),
        }
    }

    fn enqueue_decision(&mut self, d: Decision, why: &str) {
        self.shared.counters.policy_actions.fetch_add(1, Relaxed);
        log::info!("policy: {why}: {d:?}");
        let op = match d {
            Decision::Snapshot => Op::Snapshot(None),
            Decision::Delete(name) => Op::Delete(name),
            Decision::Fold(name) => Op::Fold(Some(name)),
            Decision::CompactAll => Op::Compact(CompactTarget::All),
            Decision::CompactPartition(p) => Op::Compact(CompactTarget::Partition(p)),
        };
        let core = self.core();
        self.ctl_mut().enqueue_background(core, op);
    }

    /// Consults the temporal and status rules while no operation is queued:
    /// one action at a time, again right after it (a snapshot may call for
    /// a retention action), then once the clock moves on. A few actions a
    /// second at most, so a rule that gains nothing cannot spin.
    pub(super) fn policy_tick(&mut self) {
        const MAX_ACTIONS_PER_SECOND: u32 = 8;
        let c = self.ctl_mut();
        if c.is_busy() || c.policy.json.is_empty() {
            return;
        }
        let now = self.shared.clock.now_unix_s();
        let (second, acted) = self.ctl_mut().policy_checked;
        if second == now && (acted == 0 || acted >= MAX_ACTIONS_PER_SECOND) {
            return;
        }
        let acted = if second == now { acted } else { 0 };
        let situation = self.situation();
        let decision = self.ctl_mut().policy.decide(&situation);
        let acted = if decision.is_some() { acted + 1 } else { 0 };
        self.ctl_mut().policy_checked = (now, acted);
        if let Some((d, why)) = decision {
            self.enqueue_decision(d, &why);
        }
    }

    /// After a snapshot (or a delete) committed: its event's actions.
    pub(super) fn policy_hook(&mut self, snapshot: bool) {
        let c = self.ctl_mut();
        let actions = if snapshot { c.policy.on_snapshot.clone() } else { c.policy.on_delete.clone() };
        if actions.is_empty() {
            return;
        }
        let situation = self.situation();
        let event = if snapshot { "on_snapshot" } else { "on_delete" };
        for d in Policy::decide_actions(&actions, &situation) {
            self.enqueue_decision(d, event);
        }
    }

    /// A named event delivered through the API: queues its actions.
    pub(super) fn policy_event(&mut self, name: &str) -> Result<Reply> {
        let Some(actions) = self.ctl_mut().policy.on_event.get(name).cloned() else {
            return Err(Error::InvalidArgument(format!("the policy binds no action to event {name:?}")));
        };
        if self.ctl_mut().event_queued(name) {
            log::debug!("event {name:?}: its actions from before are still queued and cover it");
            return Ok(Reply::Done);
        }
        let situation = self.situation();
        let names: Vec<&str> = actions.iter().map(|a| a.name()).collect();
        log::info!("event {name:?}: {}", names.join(", "));
        let decisions = Policy::decide_actions(&actions, &situation);
        let queued = !decisions.is_empty();
        for d in decisions {
            self.enqueue_decision(d, &format!("event {name:?}"));
        }
        if queued {
            self.ctl_mut().note_event_queued(name);
        }
        Ok(Reply::Done)
    }
}
