//! What clients ask of an ilog bdev, and what they get back.

use crate::device::{BlockDevice, IoBuf};
use crate::error::{Error, Result};
use crate::format::PrimaryState;
use std::sync::Arc;

/// Which image a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The current, writable image.
    Current,
    /// A snapshot volume, by the partition [`VolumeInfo::partition`] names.
    Volume(u32),
}

/// How a compaction frees log space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompactMode {
    /// Rewrite the live blocks into fresh segments of the same partition and
    /// free the old segments.
    #[default]
    InPlace,
    /// Apply the partitions up to the volume (the oldest one if none is
    /// named) to the baseline region and free them: that volume then reads
    /// from the baseline, and an older volume already there is retired.
    Baseline,
}

/// A request. A read's or a write's buffer holds its `blocks` blocks; the
/// engine fills or reads it until the request's completion, as SPDK's bdev
/// I/O does (the promise is the [`IoBuf`]'s maker's).
#[derive(Debug, Clone)]
pub enum Request {
    Read {
        lba: u64,
        blocks: u32,
        buf: IoBuf,
        view: View,
    },
    Write {
        lba: u64,
        blocks: u32,
        buf: IoBuf,
    },
    WriteZeroes {
        lba: u64,
        blocks: u32,
    },
    Unmap {
        lba: u64,
        blocks: u32,
    },
    /// Makes every write completed before it durable.
    Flush,
    /// Seals the open partition as a snapshot volume named `name`, or
    /// `snap-<n>` by default; durable when it completes.
    Snapshot {
        name: Option<String>,
    },
    ListVolumes,
    /// Removes a snapshot volume; its partition's entries stay visible to
    /// every newer view (it merges into the next partition).
    DeleteVolume {
        name: String,
    },
    /// Up to `count` log entries from `cursor` on, in log order.
    LogRead {
        cursor: u64,
        count: u32,
        with_data: bool,
    },
    Stats,
    /// Compacts `volume`'s partition (every partition if `None`), as
    /// `mode` says. Views do not change.
    Compact {
        volume: Option<String>,
        mode: CompactMode,
    },
    /// Replaces the storage-management policy (a JSON document, see
    /// `policy.rs`; empty for none); durable when it completes.
    SetPolicy {
        policy: String,
    },
    /// Answers `Reply::Policy`.
    GetPolicy,
    /// Runs the actions the policy binds to a named event.
    Event {
        name: String,
    },
    /// The extents of `volume` that differ from `base_volume` (every block
    /// it maps without one) inside `lba_start..lba_start + lba_count`:
    /// answers `Reply::Extents`. Costs the size of the change.
    Diff {
        volume: String,
        base_volume: Option<String>,
        lba_start: u64,
        lba_count: u64,
    },
    /// Brings primary `name` back into service on `device`: its dirty
    /// blocks (every block if `full`, or if `name` is new: a replacement
    /// of the one degraded primary) are copied to it in the background;
    /// durable when it completes.
    RebuildPrimary {
        name: String,
        device: PrimaryDevice,
        full: bool,
    },
    /// The runtime lost primary `name`'s device (hot-removed): it is
    /// degraded, and every core lets go of its channel to it once the
    /// requests there completed, so that the runtime can close the device.
    ReleasePrimary {
        name: String,
    },
    /// Flushes, writes a clean checkpoint and stops taking requests.
    Close,
}

impl Request {
    /// Whether the volume table may differ once this completes (the
    /// policy's own changes come later, in the background).
    pub fn changes_volumes(&self) -> bool {
        matches!(
            self,
            Request::Snapshot { .. }
                | Request::DeleteVolume { .. }
                | Request::Compact { mode: CompactMode::Baseline, .. }
        )
    }

    /// Whether the request lends the engine a caller's buffer (a read or
    /// a write).
    pub fn has_buffer(&self) -> bool {
        matches!(self, Request::Read { .. } | Request::Write { .. })
    }

    /// Whether this is a data-path request that any core may take.
    pub(crate) fn is_io(&self) -> bool {
        matches!(
            self,
            Request::Read { .. } | Request::Write { .. } | Request::WriteZeroes { .. } | Request::Unmap { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub partition: u32,
    pub created_unix_s: u64,
}

/// The bdev a snapshot volume is exported as, in every runtime.
pub fn volume_bdev_name(bdev: &str, volume: &str) -> String {
    format!("{bdev}@{volume}")
}

/// What a runtime reports about one ilog bdev (`bdev_ilog_get_bdevs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    pub name: String,
    pub base_bdev_name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub cores: u32,
    pub volumes: Vec<VolumeInfo>,
    pub primaries: Vec<PrimaryInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEntryKind {
    Data,
    Zero,
}

/// One entry as the log cursor returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the log; strictly increasing in log order.
    pub sequence: u64,
    pub partition: u32,
    /// The snapshot volume the entry belongs to, if its partition is one.
    pub volume: Option<String>,
    pub lba: u64,
    pub blocks: u32,
    pub kind: LogEntryKind,
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    pub entries: Vec<LogEntry>,
    /// Pass back to continue after the last entry returned.
    pub next_cursor: u64,
    /// The oldest cursor the log can go on from without a gap: entries
    /// below it may have drained into the baseline (cursor 0 reads all
    /// the log still holds).
    pub oldest_cursor: u64,
    /// The batch ended before `count` entries because their data reached
    /// `MAX_LOG_READ_DATA_BYTES`.
    pub bytes_limited: bool,
}

/// Most data bytes one log batch carries (at least one entry's, whatever
/// its size): bounds the reply and what building it holds in memory. Small,
/// because the stock rpc.py client re-parses its whole buffer after every
/// 4 KiB it receives: a 1 MiB batch (1.4 MiB of JSON) takes it about a
/// second, 8 MiB over a minute.
pub const MAX_LOG_READ_DATA_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub block_size: u32,
    pub volume_blocks: u64,
    pub segment_blocks: u32,
    pub segments_total: u32,
    pub segments_free: u32,
    pub volumes: u32,
    /// Partitions holding log segments.
    pub partitions: u32,
    pub open_partition: u32,
    /// Partitions up to this one live in the baseline region.
    pub baseline_partition: u32,
    pub log_capacity_bytes: u64,
    /// Bytes of the segments in use.
    pub log_used_bytes: u64,
    /// Data still read by the current image or a volume.
    pub live_bytes: u64,
    /// Data written to segments in use that nothing reads any more.
    pub garbage_bytes: u64,
    /// How full the log is with versions the current image and the volumes
    /// need (`live_bytes` of the capacity): what no drain or compaction can
    /// free. A warning is logged at 80 % and 95 %.
    pub versions_percent: u8,
    /// Bytes clients wrote, and bytes the bdev wrote to the device for them
    /// (data, metadata, compaction): their ratio is the write amplification.
    pub user_bytes_written: u64,
    pub device_bytes_written: u64,
    pub compactions: u64,
    pub bytes_moved: u64,
    /// Of `bytes_moved`, what the device copied itself (copy offload): data
    /// that never passed through the host.
    pub bytes_copied: u64,
    pub segments_freed: u64,
    /// Drains into the baseline committed.
    pub drains: u64,
    /// Volumes retired because the log was full (`retention.on_full`).
    pub volumes_retired: u64,
    /// The last mount: after a crash (the log replayed) or a clean close,
    /// how long it took and how much it read.
    pub last_mount: MountReport,
    pub policy_actions: u64,
    pub primaries: Vec<PrimaryInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Log(LogBatch),
    Stats(Stats),
    /// The policy document (`{}` for none).
    Policy(String),
    /// Merged, in LBA order.
    Extents(Vec<Extent>),
}

/// A run of blocks a volume holds apart from another: written data, or
/// blocks that read as zeros (written zeroes, unmapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u64,
    pub kind: LogEntryKind,
}

/// Volume ids are used in bdev names (`<bdev>@<volume>`): keep them plain.
pub(crate) fn check_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::format::MAX_VOLUME_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "volume id {name:?} must be 1..={} characters of [A-Za-z0-9._:-]",
            crate::format::MAX_VOLUME_NAME
        )))
    }
}

/// A primary device as a runtime hands it over (a newtype so requests can
/// carry one and still print).
#[derive(Clone)]
pub struct PrimaryDevice(pub Arc<dyn BlockDevice>);

impl std::fmt::Debug for PrimaryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrimaryDevice({} blocks of {})", self.0.num_blocks(), self.0.block_size())
    }
}

/// A primary's state and progress, for the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryInfo {
    pub name: String,
    pub state: PrimaryState,
    /// Blocks it lacks.
    pub dirty_blocks: u64,
    /// Blocks copied to it since the last rebuild started, and how many
    /// that rebuild had to copy (more join if writes miss it meanwhile).
    pub rebuild_done_blocks: u64,
    pub rebuild_total_blocks: u64,
    pub reads: u64,
    pub read_errors: u64,
    pub write_errors: u64,
}

/// What a mount did, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountReport {
    /// The bdev was not closed cleanly: the log since the checkpoint was
    /// scanned and replayed.
    pub crash: bool,
    pub micros: u64,
    /// Bytes mount read from the device.
    pub read_bytes: u64,
}
