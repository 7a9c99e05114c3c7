//! The coordinator's volume table: the ids of new volumes, what a new one
//! must satisfy, the partition a seal opens, and the table every core
//! reads by.

use super::{Control, Current, Op};
use crate::engine::diff::DiffJob;
use crate::engine::msg::DiffQuery;
use crate::engine::request::{check_volume_name, VolumeInfo};
use crate::error::{Error, Result};
use crate::format::{VolumeRecord, PARTITION_SPAN};
use std::sync::Arc;

impl Control {
    /// The id of the next snapshot taken without a name, as the policy
    /// directs; a suffix keeps it unique. Checked whole, suffix included:
    /// a template near the length limit fails this one snapshot.
    pub(super) fn next_volume_id(&self, now: u64) -> Result<String> {
        let base = self.policy.volume_id(now, self.next_snapshot_number.saturating_add(1));
        let taken = |n: &str| self.volumes.iter().any(|v| v.name == n);
        let mut name = base.clone();
        let mut k = 2;
        while taken(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        check_volume_name(&name)?;
        Ok(name)
    }

    /// Whether a volume named `name` (or generated) may be added.
    pub(super) fn check_new_volume(&self, name: Option<&str>, max: u32) -> Result<()> {
        if let Some(name) = name {
            check_volume_name(name)?;
            if self.volumes.iter().any(|v| v.name == name) {
                return Err(Error::VolumeExists(name.to_owned()));
            }
        }
        if self.volumes.len() >= max as usize {
            return Err(Error::TooManyVolumes { max });
        }
        Ok(())
    }

    /// The partition a seal opens next. Entries name their partition as an
    /// offset from their segment's base, which is above the baseline's: a
    /// span the oldest volume, kept while partitions are cut above it, may
    /// not outgrow.
    pub(super) fn next_partition(&self) -> Result<u32> {
        let next = self.open_partition.checked_add(1);
        match next.filter(|&n| n - self.baseline_partition < PARTITION_SPAN) {
            Some(n) => Ok(n),
            None => Err(Error::InvalidArgument(format!(
                "{} partitions lie above the baseline, the most a log holds: delete the oldest volume",
                PARTITION_SPAN - 1
            ))),
        }
    }

    pub(super) fn live_partitions(&self) -> Arc<Vec<u32>> {
        Arc::new(self.volumes.iter().map(|v| v.partition).collect())
    }

    pub(super) fn info(v: &VolumeRecord) -> VolumeInfo {
        VolumeInfo { name: v.name.clone(), partition: v.partition, created_unix_s: v.created_unix_s }
    }

    /// The volumes every core reads by: the table without the running
    /// operation's change until it is published (a volume being sealed is
    /// not readable yet, one being deleted still is).
    pub(super) fn published_volumes(&self) -> Vec<VolumeInfo> {
        let mut list: Vec<VolumeInfo> = self.volumes.iter().map(Control::info).collect();
        if let Some(Current { q, volume: Some(v), .. }) = &self.current {
            match q.op {
                Op::Snapshot(_) => list.retain(|x| x.partition != v.partition),
                Op::Delete(_) => {
                    list.push(Control::info(v));
                    list.sort_by_key(|x| x.partition);
                }
                _ => {}
            }
        }
        list
    }

    /// The diff of `volume` since `base` (since the baseline, and then
    /// with its data too, without one) in `lba_start..+lba_count`.
    pub(super) fn diff_query(
        &self,
        volume: &str,
        base: Option<&str>,
        lba_start: u64,
        lba_count: u64,
        volume_blocks: u64,
    ) -> Result<DiffJob> {
        let lba_end = lba_start.checked_add(lba_count).filter(|&end| end <= volume_blocks && lba_count > 0);
        let lba_end = lba_end.ok_or(Error::OutOfRange { lba: lba_start, blocks: lba_count, volume_blocks })?;
        let partition = |name: &str| {
            let v = self.volumes.iter().find(|v| v.name == name);
            v.map(|v| v.partition).ok_or_else(|| Error::NoSuchVolume(name.to_owned()))
        };
        let hi = partition(volume)?;
        let lo = match base {
            None => self.baseline_partition.min(hi),
            Some(base) => partition(base)?,
        };
        if lo > hi || (base.is_some() && lo == hi) {
            return Err(Error::InvalidArgument(format!(
                "base volume {} is not older than volume {volume}",
                base.unwrap_or_default()
            )));
        }
        Ok(DiffJob::new(DiffQuery { lo, hi, lba_start, lba_end }, base.is_none()))
    }

    /// Which partition a baseline compaction of `volume` (the oldest one if
    /// `None`) drains up to, and the older volumes to retire first. `None`:
    /// there is no volume, so everything drains (a cut).
    pub(super) fn fold_target(&self, volume: Option<&str>) -> Result<(Option<u32>, Vec<String>)> {
        let volumes = &self.volumes;
        let target = match volume {
            Some(name) => {
                Some(volumes.iter().find(|v| v.name == name).ok_or_else(|| Error::NoSuchVolume(name.into()))?)
            }
            None => volumes.iter().min_by_key(|v| v.partition),
        };
        let Some(p) = target.map(|v| v.partition) else { return Ok((None, Vec::new())) };
        let older = volumes.iter().filter(|v| v.partition < p).map(|v| v.name.clone()).collect();
        Ok((Some(p), older))
    }
}
