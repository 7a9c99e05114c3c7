//! Every `bdev_ilog_*` JSON-RPC method, once: its parameters (decoded and
//! validated into a [`Command`] by [`parse`]) and its result (encoded by the
//! `*_result` functions from what the engine returns). A runtime executes
//! the commands; this module only translates, so every runtime speaks the
//! same protocol.
//!
//! Parameters are a JSON object with SPDK's snake_case names; unknown,
//! missing or mistyped ones fail with `-32602` (Invalid params) and a message
//! naming the field. Failures of the operation itself carry `-errno` (see
//! [`RpcError`]'s `From<ilog_bdev::Error>`).
//!
//! # Methods
//!
//! | Method | Params (default) | Result |
//! |---|---|---|
//! | `bdev_ilog_create` | `name`: string, the new bdev; `base_bdev_name`: string; `stripe_size_kib`: int (1024); `segment_size_kib`: int (4096); `log_percent`: int, 1..=95 (18); `max_volumes`: int (1024); `replay_window_mib`: int, most log a crash mount replays (1024); `primary_bdev_names`: array of strings, bdevs mirroring the current image (none; a re-open finds those recorded) | the bdev's name, e.g. `"ilog0"` |
//! | `bdev_ilog_delete` | `name`: string | `true` |
//! | `bdev_ilog_get_bdevs` | `name`: string (all ilog bdevs) | array of [bdev objects](#bdev-object) |
//! | `bdev_ilog_snapshot` | `name`: string; `snapshot_name`: string, the volume id (`snap-<n>`) | `{"volume_id", "bdev"}` |
//! | `bdev_ilog_get_volumes` | `name`: string | array of [volume objects](#volume-object) |
//! | `bdev_ilog_delete_volume` | `name`: string; `volume`: string, a volume id | `true` |
//! | `bdev_ilog_log_read` | `name`: string; `cursor`: int (0); `count`: int, 1..=4096, required; `with_data`: bool (false) | [log batch](#log-batch) |
//! | `bdev_ilog_get_stats` | `name`: string | [stats object](#stats-object) |
//! | `bdev_ilog_compact` | `name`: string; `volume`: string (every partition); `mode`: `"in_place"` or `"baseline"` (`"in_place"`); `background`: bool (false) | `true` when done, or `{"job": int}` with `background` |
//! | `bdev_ilog_set_policy` | `name`: string; `policy`: object, the [policy document](#policy-document) (`{}` for none) | `true` |
//! | `bdev_ilog_get_policy` | `name`: string | the policy document |
//! | `bdev_ilog_event` | `name`: string; `event`: string, a name the policy binds under `events.on` | `true` (its actions are queued) |
//! | `bdev_ilog_diff` | `name`: string; `volume`: string; `base_volume`: string, an older volume (none: everything `volume` maps); `lba_start`: int (0); `lba_count`: int (to the end) | array of [extents](#extent-object) |
//! | `bdev_ilog_copy` | `name`: string; `volume`: string; `base_volume`: string (none: a full copy); `lba_start`, `lba_count`: int (the whole volume); `target`: string, a bdev name or an absolute file path; `resume_token`: string | `{"job": int}` |
//! | `bdev_ilog_restore` | `name`: string, an ilog bdev or any bdev; `source`: string, a bdev name or an absolute file path; `resume_token`: string | `{"job": int}` |
//! | `bdev_ilog_get_jobs` | `name`: string (every bdev's) | array of [job objects](#job-object) |
//! | `bdev_ilog_rebuild_primary` | `name`: string; `primary_bdev_name`: string, a primary (it resyncs its dirty blocks) or a new bdev (it replaces the one degraded primary, rebuilt whole); `full`: bool (false) | `true`, once the rebuild is recorded; its progress is in the stats |
//!
//! `bdev_ilog_compact` in place rewrites the live blocks of the volume's
//! partition (every partition if none is named) and frees the old segments;
//! `baseline` drains the partitions up to the volume (the oldest one if none
//! is named; the whole log without volumes) into the baseline region now,
//! and answers once it is done: that volume then reads from the baseline,
//! and older volumes are retired first. (The log also drains by itself, in
//! the background.) A background job's state shows
//! in the stats (`jobs`).
//!
//! The formatting parameters of `bdev_ilog_create` apply when the base bdev
//! is formatted; `log_percent` is the log's share of the device (the room
//! for snapshot deltas plus a write buffer), the rest is the exported
//! volume. Volume ids are 1 to 78 characters of
//! `[A-Za-z0-9._:-]`; a snapshot volume is exported as bdev `<name>@<volume_id>`.
//!
//! ## Bdev object
//!
//! | Field | Type | Meaning |
//! |---|---|---|
//! | `name` | string | the ilog bdev |
//! | `base_bdev_name` | string | the bdev it layers on |
//! | `block_size` | int | bytes per block |
//! | `num_blocks` | int | blocks of the exported volume |
//! | `cores` | int | cores (shards) serving it |
//! | `volumes` | array | its snapshot volumes, as [volume objects](#volume-object) |
//!
//! ## Extent object
//!
//! `{"lba": int, "num_blocks": int, "kind": "data" | "zero"}`: a run of
//! blocks the volume holds apart from the base (`zero`: they read as
//! zeros). A full diff lists the baseline's stripes that hold data whole.
//!
//! ## Copies and restores
//!
//! `bdev_ilog_copy` writes a copy stream (format: `bdev/src/copy/stream.rs`;
//! checksummed record by record and as a whole) of the volume, or of what
//! changed since `base_volume`, to `target`, in the background. Restoring
//! into an ilog bdev makes the stream a snapshot volume with the source's
//! volume id (`dst@v1` reads as `src@v1`) and leaves the current image
//! equal to it; an incremental applies only on top of its base volume, the
//! newest there. A job that fails reports a `resume_token`: the same call
//! with it goes on where the job stopped, without writing again what
//! landed. A stream that does not verify is refused, and no volume is made
//! of it.
//!
//! ## Job object
//!
//! `{"job": int, "bdev": string, "kind": "compaction" | "copy" | "restore",
//! "state": "running" | "done" | "failed: <why>"}`, and for a copy or a
//! restore `bytes_done`, `bytes_total` (data bytes), `bytes_per_second`,
//! and `resume_token` (null when there is nothing to resume). The stats
//! object lists its bdev's jobs under `jobs`.
//!
//! ## Volume object
//!
//! | Field | Type | Meaning |
//! |---|---|---|
//! | `volume_id` | string | e.g. `snap-1` |
//! | `bdev` | string or null | the volume's bdev name, `<name>@<volume_id>`; null under SPDK when another module's bdev has that name (the volume is not exported; a snapshot named so is refused with -17) |
//! | `partition` | int | the log partition it sealed |
//! | `created` | int | when it was taken, in Unix seconds |
//!
//! `bdev_ilog_snapshot` returns the first two fields of the new volume.
//!
//! ## Log batch
//!
//! `{"entries": [..], "next_cursor": int, "oldest_cursor": int,
//! "bytes_limited": bool}`: pass `next_cursor` back as `cursor` to continue
//! after the last entry returned. A batch carries at most 1 MiB of data
//! (at least one entry): `bytes_limited` says it ended before `count`
//! entries for that reason. Entries that drained into the baseline have left the log: a
//! cursor below `oldest_cursor` (other than 0, which reads all the log
//! still holds) fails with `-ERANGE`, naming it. Each entry:
//!
//! | Field | Type | Meaning |
//! |---|---|---|
//! | `sequence` | int | position in the log, increasing in log order |
//! | `partition` | int | the log partition holding it |
//! | `volume_id` | string or null | the snapshot volume of that partition, null while it is the open one |
//! | `lba` | int | first block written |
//! | `num_blocks` | int | blocks written |
//! | `kind` | string | `"data"`, or `"zero"` for write-zeroes and unmap |
//! | `data` | string | the blocks, base64; only with `with_data` and `kind` `"data"` |
//!
//! ## Stats object
//!
//! `name`, and the engine's statistics: `block_size`, `volume_blocks`,
//! `segment_blocks`, `segments_total`, `segments_free`, `volumes` (snapshot
//! volumes), `partitions` (holding log entries), `open_partition`,
//! `baseline_partition` (partitions up to it drained into the baseline),
//! `log_capacity_bytes`, `log_used_bytes` (segments in use), `live_bytes`
//! (read by the current image or a volume), `garbage_bytes` (written, read by
//! nothing), `garbage_ratio` (garbage / (live + garbage)),
//! `versions_percent` (live / capacity: how full the log is with versions
//! no drain or compaction can free), `user_bytes_written`,
//! `device_bytes_written`, `write_amplification` (device / user),
//! `compactions`, `bytes_moved`, `bytes_copied` (of those moved, copied by
//! the device itself), `segments_freed`, `drains` (into the baseline),
//! `volumes_retired` (by `retention.on_full`), `last_mount` (`kind`:
//! `"clean"` or `"crash"` (the log was replayed), `ms`, `read_bytes`),
//! `policy_actions`, `primaries` (each: `name`, `state`: `"healthy"`,
//! `"degraded"` or `"rebuilding"`, `dirty_blocks` (blocks it lacks),
//! `rebuild_done_blocks` and `rebuild_total_blocks` (the last rebuild's
//! progress), `reads`, `read_errors`, `write_errors`).
//!
//! ## Policy document
//!
//! See the README ("Storage-management policies"); every key is optional:
//! `{"snapshot": {"interval_s"}, "retention": {"keep_last", "max_age_s",
//! "action": "delete" | "baseline", "on_full": "fail" | "delete_oldest"},
//! "compaction": {"log_used_pct",
//! "max_partitions", "garbage_pct"}, "events": {"on_snapshot": [..],
//! "on_delete": [..], "on": {"<event>": [..]}}, "volume_id": {"scheme":
//! "sequential" | "timestamp" | "template", "template"}}`. An invalid document
//! is refused (`-EINVAL`, naming the field) and changes nothing.

use crate::error::RpcError;
use base64::Engine as _;
use ilog_bdev::copy::{CopySpec, Extent};
use ilog_bdev::engine::{
    volume_bdev_name, BdevInfo, CompactMode, LogBatch, LogEntry, LogEntryKind, PrimaryInfo, Stats, Submitter,
    VolumeInfo,
};
use ilog_bdev::format::{FormatOptions, Geometry, PrimaryState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Every method this module parses.
pub const METHODS: &[&str] = &[
    "bdev_ilog_create",
    "bdev_ilog_delete",
    "bdev_ilog_get_bdevs",
    "bdev_ilog_snapshot",
    "bdev_ilog_get_volumes",
    "bdev_ilog_delete_volume",
    "bdev_ilog_log_read",
    "bdev_ilog_get_stats",
    "bdev_ilog_compact",
    "bdev_ilog_set_policy",
    "bdev_ilog_get_policy",
    "bdev_ilog_event",
    "bdev_ilog_diff",
    "bdev_ilog_copy",
    "bdev_ilog_restore",
    "bdev_ilog_get_jobs",
    "bdev_ilog_rebuild_primary",
];

/// Most entries one `bdev_ilog_log_read` returns: bounds the reply and the
/// engine's work (with data, the engine's byte budget ends a batch sooner).
pub const MAX_LOG_READ_COUNT: u32 = 4096;

/// Parameters of `bdev_ilog_create`. Serializes to the params that
/// recreate the bdev (as `save_config` emits them): options left unset stay
/// out, so the engine's defaults keep applying.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub base_bdev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe_size_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_size_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_volumes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_window_mib: Option<u64>,
    /// Bdevs that mirror the current image (see the README's "Redundant
    /// primaries"); recorded with the bdev, so a re-open finds them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_bdev_names: Option<Vec<String>>,
}

impl CreateParams {
    /// The options to format the base bdev with: those given, the engine's
    /// defaults for the rest. Range checks are the engine's (they depend on
    /// the block size); a size too large for bytes saturates, which the
    /// engine refuses.
    pub fn format_options(&self) -> FormatOptions {
        let d = FormatOptions::default();
        FormatOptions {
            stripe_bytes: self.stripe_size_kib.map_or(d.stripe_bytes, |kib| kib.saturating_mul(1024)),
            segment_bytes: self.segment_size_kib.map_or(d.segment_bytes, |kib| kib.saturating_mul(1024)),
            log_percent: self.log_percent.unwrap_or(d.log_percent),
            max_volumes: self.max_volumes.unwrap_or(d.max_volumes),
            replay_window_bytes: self
                .replay_window_mib
                .map_or(d.replay_window_bytes, |mib| mib.saturating_mul(1 << 20)),
        }
    }

    /// The options given that a base formatted as `geo` (with a replay
    /// window of `replay_window_kib`) does not have: a formatted base mounts
    /// as it is, so they do nothing.
    pub fn ignored_by(&self, geo: &Geometry, replay_window_kib: u32) -> Vec<String> {
        let bs = u64::from(geo.block_size);
        let log_share = u64::from(geo.segment_count) * u64::from(geo.segment_blocks) * 100
            / (geo.device_blocks - geo.baseline_start);
        let stripe_kib = (u64::from(geo.stripe_blocks) * bs) >> 10;
        let segment_kib = (u64::from(geo.segment_blocks) * bs) >> 10;
        let window_mib = u64::from(replay_window_kib) >> 10;
        let mut ignored = Vec::new();
        let mut check = |name: &str, given: Option<u64>, fits: &dyn Fn(u64) -> bool, formatted: String| {
            if let Some(given) = given.filter(|&given| !fits(given)) {
                ignored.push(format!("{name} {given} (formatted with {formatted})"));
            }
        };
        check("stripe_size_kib", self.stripe_size_kib, &|kib| kib == stripe_kib, stripe_kib.to_string());
        check("segment_size_kib", self.segment_size_kib, &|kib| kib == segment_kib, segment_kib.to_string());
        let max_volumes = u64::from(geo.max_volumes);
        check("max_volumes", self.max_volumes.map(u64::from), &|n| n == max_volumes, max_volumes.to_string());
        check("replay_window_mib", self.replay_window_mib, &|mib| mib == window_mib, window_mib.to_string());
        // The log's share is rounded to whole segments: any percent that
        // gives the same log is the same format.
        let same_log = |percent: u64| u8::try_from(percent).is_ok_and(|p| geo.has_log_percent(p));
        check("log_percent", self.log_percent.map(u64::from), &same_log, format!("a log of {log_share} %"));
        ignored
    }

    /// Logs the options a create on an already formatted base ignored.
    pub fn warn_ignored(&self, formatted: &Submitter) {
        let ignored = self.ignored_by(&formatted.geometry(), formatted.replay_window_kib());
        if !ignored.is_empty() {
            log::warn!(
                "{}: {} is already formatted and mounts as formatted; ignored: {}",
                self.name,
                self.base_bdev_name,
                ignored.join(", ")
            );
        }
    }

    fn validate(&self) -> Result<(), RpcError> {
        non_empty("name", &self.name)?;
        non_empty("base_bdev_name", &self.base_bdev_name)?;
        // Snapshot volumes are exported as `<name>@<volume>`: an `@` in the
        // bdev's own name would make those names ambiguous.
        if self.name.contains('@') {
            return Err(RpcError::invalid_params("Invalid parameters: name must not contain '@'"));
        }
        for (field, kib) in [("stripe_size_kib", self.stripe_size_kib), ("segment_size_kib", self.segment_size_kib)] {
            if kib.is_some_and(|kib| kib.checked_mul(1024).is_none()) {
                return Err(RpcError::invalid_params(format!("Invalid parameters: {field} is too large")));
            }
        }
        let primaries = self.primary_bdev_names.as_deref().unwrap_or_default();
        for (i, primary) in primaries.iter().enumerate() {
            non_empty("primary_bdev_names", primary)?;
            if *primary == self.base_bdev_name || primaries[..i].contains(primary) {
                return Err(RpcError::invalid_params(format!(
                    "Invalid parameters: primary bdev {primary} is named twice, or is the base"
                )));
            }
        }
        if primaries.len() > ilog_bdev::format::MAX_PRIMARIES {
            let max = ilog_bdev::format::MAX_PRIMARIES;
            return Err(RpcError::invalid_params(format!("Invalid parameters: at most {max} primary bdevs")));
        }
        // Checked whether or not the base is formatted already: a config
        // saved with them must be able to format a blank base.
        self.format_options().validate().map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
    }
}

/// A decoded, validated `bdev_ilog_*` call, for a runtime to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create(CreateParams),
    Delete {
        name: String,
    },
    /// `None`: every ilog bdev.
    GetBdevs {
        name: Option<String>,
    },
    /// `None`: the engine names the volume `snap-<n>`.
    Snapshot {
        name: String,
        snapshot_name: Option<String>,
    },
    GetVolumes {
        name: String,
    },
    DeleteVolume {
        name: String,
        volume: String,
    },
    LogRead {
        name: String,
        cursor: u64,
        count: u32,
        with_data: bool,
    },
    GetStats {
        name: String,
    },
    Compact {
        name: String,
        volume: Option<String>,
        mode: CompactMode,
        background: bool,
    },
    SetPolicy {
        name: String,
        /// The document, as JSON text for the engine to validate.
        policy: String,
    },
    GetPolicy {
        name: String,
    },
    Event {
        name: String,
        event: String,
    },
    Diff {
        name: String,
        volume: String,
        base_volume: Option<String>,
        lba_start: Option<u64>,
        lba_count: Option<u64>,
    },
    Copy {
        name: String,
        spec: CopySpec,
        target: StreamTarget,
    },
    Restore {
        /// The bdev restored into: an ilog bdev, or any other bdev.
        name: String,
        source: StreamTarget,
        resume_token: Option<String>,
    },
    /// `None`: every bdev's jobs.
    GetJobs {
        name: Option<String>,
    },
    RebuildPrimary {
        name: String,
        primary_bdev_name: String,
        full: bool,
    },
}

/// Where a copy stream goes or comes from: `target`/`source` as given, an
/// absolute path for a file, anything else a bdev name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    File(std::path::PathBuf),
    Bdev(String),
}

impl StreamTarget {
    fn parse(field: &str, value: &str) -> Result<StreamTarget, RpcError> {
        non_empty(field, value)?;
        Ok(if value.starts_with('/') { StreamTarget::File(value.into()) } else { StreamTarget::Bdev(value.to_owned()) })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffParams {
    name: String,
    volume: String,
    base_volume: Option<String>,
    lba_start: Option<u64>,
    lba_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyParams {
    name: String,
    volume: String,
    base_volume: Option<String>,
    lba_start: Option<u64>,
    lba_count: Option<u64>,
    target: String,
    resume_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreParams {
    name: String,
    source: String,
    resume_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildPrimaryParams {
    name: String,
    primary_bdev_name: String,
    #[serde(default)]
    full: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactParams {
    name: String,
    volume: Option<String>,
    #[serde(default)]
    mode: CompactModeParam,
    #[serde(default)]
    background: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum CompactModeParam {
    #[default]
    InPlace,
    Baseline,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicyParams {
    name: String,
    policy: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    name: String,
    event: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevsParams {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotParams {
    name: String,
    snapshot_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteVolumeParams {
    name: String,
    volume: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogReadParams {
    name: String,
    #[serde(default)]
    cursor: u64,
    count: u32,
    #[serde(default)]
    with_data: bool,
}

/// Decodes the params of `method`. `None`: not an ilog method (the caller
/// answers Method not found, or tries its other methods).
pub fn parse(method: &str, params: Option<&Value>) -> Option<Result<Command, RpcError>> {
    let command = match method {
        "bdev_ilog_create" => decode::<CreateParams>(params).and_then(|p| {
            p.validate()?;
            Ok(Command::Create(p))
        }),
        "bdev_ilog_delete" => name_only(params).map(|name| Command::Delete { name }),
        "bdev_ilog_get_bdevs" => decode::<GetBdevsParams>(params).and_then(|p| {
            if let Some(name) = &p.name {
                non_empty("name", name)?;
            }
            Ok(Command::GetBdevs { name: p.name })
        }),
        "bdev_ilog_snapshot" => decode::<SnapshotParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            if let Some(snapshot_name) = &p.snapshot_name {
                non_empty("snapshot_name", snapshot_name)?;
            }
            Ok(Command::Snapshot { name: p.name, snapshot_name: p.snapshot_name })
        }),
        "bdev_ilog_get_volumes" => name_only(params).map(|name| Command::GetVolumes { name }),
        "bdev_ilog_delete_volume" => decode::<DeleteVolumeParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            non_empty("volume", &p.volume)?;
            Ok(Command::DeleteVolume { name: p.name, volume: p.volume })
        }),
        "bdev_ilog_log_read" => decode::<LogReadParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            if !(1..=MAX_LOG_READ_COUNT).contains(&p.count) {
                return Err(RpcError::invalid_params(format!(
                    "Invalid parameters: count must be in 1..={MAX_LOG_READ_COUNT}, got {}",
                    p.count
                )));
            }
            Ok(Command::LogRead { name: p.name, cursor: p.cursor, count: p.count, with_data: p.with_data })
        }),
        "bdev_ilog_get_stats" => name_only(params).map(|name| Command::GetStats { name }),
        "bdev_ilog_compact" => decode::<CompactParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            if let Some(volume) = &p.volume {
                non_empty("volume", volume)?;
            }
            let mode = match p.mode {
                CompactModeParam::InPlace => CompactMode::InPlace,
                CompactModeParam::Baseline => CompactMode::Baseline,
            };
            Ok(Command::Compact { name: p.name, volume: p.volume, mode, background: p.background })
        }),
        "bdev_ilog_set_policy" => decode::<SetPolicyParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            if !p.policy.is_object() {
                return Err(RpcError::invalid_params("Invalid parameters: policy must be an object"));
            }
            Ok(Command::SetPolicy { name: p.name, policy: p.policy.to_string() })
        }),
        "bdev_ilog_get_policy" => name_only(params).map(|name| Command::GetPolicy { name }),
        "bdev_ilog_event" => decode::<EventParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            non_empty("event", &p.event)?;
            Ok(Command::Event { name: p.name, event: p.event })
        }),
        "bdev_ilog_diff" => decode::<DiffParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            volume_pair(&p.volume, p.base_volume.as_deref())?;
            let (lba_start, lba_count) = (p.lba_start, p.lba_count);
            Ok(Command::Diff { name: p.name, volume: p.volume, base_volume: p.base_volume, lba_start, lba_count })
        }),
        "bdev_ilog_copy" => decode::<CopyParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            volume_pair(&p.volume, p.base_volume.as_deref())?;
            let target = StreamTarget::parse("target", &p.target)?;
            if let Some(token) = &p.resume_token {
                non_empty("resume_token", token)?;
            }
            let spec = CopySpec {
                volume: p.volume,
                base_volume: p.base_volume,
                lba_start: p.lba_start,
                lba_count: p.lba_count,
                resume_token: p.resume_token,
            };
            Ok(Command::Copy { name: p.name, spec, target })
        }),
        "bdev_ilog_restore" => decode::<RestoreParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            let source = StreamTarget::parse("source", &p.source)?;
            if let Some(token) = &p.resume_token {
                non_empty("resume_token", token)?;
            }
            Ok(Command::Restore { name: p.name, source, resume_token: p.resume_token })
        }),
        "bdev_ilog_rebuild_primary" => decode::<RebuildPrimaryParams>(params).and_then(|p| {
            non_empty("name", &p.name)?;
            non_empty("primary_bdev_name", &p.primary_bdev_name)?;
            Ok(Command::RebuildPrimary { name: p.name, primary_bdev_name: p.primary_bdev_name, full: p.full })
        }),
        "bdev_ilog_get_jobs" => decode::<GetBdevsParams>(params).and_then(|p| {
            if let Some(name) = &p.name {
                non_empty("name", name)?;
            }
            Ok(Command::GetJobs { name: p.name })
        }),
        _ => return None,
    };
    Some(command)
}

/// Absent or null params decode as an empty object, so that required
/// fields are reported missing by name. Arrays are refused: SPDK methods
/// take named parameters only.
fn decode<T: DeserializeOwned>(params: Option<&Value>) -> Result<T, RpcError> {
    let empty = Value::Object(Map::new());
    let params = match params {
        None | Some(Value::Null) => &empty,
        Some(object @ Value::Object(_)) => object,
        Some(_) => return Err(RpcError::invalid_params("Invalid parameters: params must be an object")),
    };
    T::deserialize(params).map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
}

/// A volume and the base an incremental goes from, if any.
fn volume_pair(volume: &str, base_volume: Option<&str>) -> Result<(), RpcError> {
    non_empty("volume", volume)?;
    if let Some(base) = base_volume {
        non_empty("base_volume", base)?;
        if base == volume {
            return Err(RpcError::invalid_params("Invalid parameters: base_volume must differ from volume"));
        }
    }
    Ok(())
}

fn name_only(params: Option<&Value>) -> Result<String, RpcError> {
    let p = decode::<NameParams>(params)?;
    non_empty("name", &p.name)?;
    Ok(p.name)
}

/// A name that must be a C string too (SPDK's decoder refuses a NUL).
fn non_empty(field: &str, value: &str) -> Result<(), RpcError> {
    if value.is_empty() || value.contains('\0') {
        return Err(RpcError::invalid_params(format!("Invalid parameters: {field} must be non-empty, without NUL")));
    }
    Ok(())
}

/// `bdev_ilog_create`: the new bdev's name, as SPDK's create methods answer.
pub fn create_result(name: &str) -> Value {
    Value::String(name.to_owned())
}

/// `bdev_ilog_delete`, `bdev_ilog_delete_volume`: `true`, as SPDK's delete
/// methods answer.
pub fn done_result() -> Value {
    Value::Bool(true)
}

pub fn bdevs_result(bdevs: &[BdevInfo]) -> Value {
    let bdevs = bdevs.iter().map(|b| {
        // Destructured so that a new field cannot be left out unnoticed.
        let BdevInfo { name, base_bdev_name, block_size, num_blocks, cores, volumes, primaries } = b;
        json!({
            "name": name,
            "base_bdev_name": base_bdev_name,
            "block_size": block_size,
            "num_blocks": num_blocks,
            "cores": cores,
            "volumes": volumes_result(name, volumes),
            "primaries": primaries.iter().map(primary_result).collect::<Vec<_>>(),
        })
    });
    Value::Array(bdevs.collect())
}

pub fn snapshot_result(bdev: &str, v: &VolumeInfo) -> Value {
    json!({ "volume_id": v.name, "bdev": volume_bdev_name(bdev, &v.name) })
}

pub fn volumes_result(bdev: &str, vs: &[VolumeInfo]) -> Value {
    let volumes = vs.iter().map(|v| {
        let VolumeInfo { name, partition, created_unix_s } = v;
        json!({
            "volume_id": name,
            "bdev": volume_bdev_name(bdev, name),
            "partition": partition,
            "created": created_unix_s,
        })
    });
    Value::Array(volumes.collect())
}

pub fn log_result(batch: &LogBatch) -> Value {
    let LogBatch { entries, next_cursor, oldest_cursor, bytes_limited } = batch;
    json!({
        "entries": entries.iter().map(log_entry).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
        "oldest_cursor": oldest_cursor,
        "bytes_limited": bytes_limited,
    })
}

fn log_entry(e: &LogEntry) -> Value {
    let LogEntry { sequence, partition, volume, lba, blocks, kind, data } = e;
    let kind = match kind {
        LogEntryKind::Data => "data",
        LogEntryKind::Zero => "zero",
    };
    let mut entry = json!({
        "sequence": sequence,
        "partition": partition,
        "volume_id": volume,
        "lba": lba,
        "num_blocks": blocks,
        "kind": kind,
    });
    if let (Some(data), Value::Object(fields)) = (data, &mut entry) {
        fields.insert("data".into(), base64::engine::general_purpose::STANDARD.encode(data).into());
    }
    entry
}

/// `true` for a compaction that ran to the end, `{"job": id}` for one left
/// running in the background.
/// `bdev_ilog_diff`: the changed extents, in LBA order.
pub fn diff_result(extents: &[Extent]) -> Value {
    let extent = |e: &Extent| {
        let kind = match e.kind {
            LogEntryKind::Data => "data",
            LogEntryKind::Zero => "zero",
        };
        json!({"lba": e.lba, "num_blocks": e.blocks, "kind": kind})
    };
    Value::Array(extents.iter().map(extent).collect())
}

/// `bdev_ilog_copy`, `bdev_ilog_restore`: the background job.
pub fn job_result(job: u64) -> Value {
    json!({ "job": job })
}

pub fn compact_result(job: Option<u64>) -> Value {
    job.map_or(Value::Bool(true), job_result)
}

/// The policy document the engine keeps (valid JSON: it validated it).
pub fn policy_result(policy: &str) -> Value {
    serde_json::from_str(policy).unwrap_or_else(|_| json!({}))
}

pub fn stats_result(name: &str, s: &Stats) -> Value {
    let ratio = |num: u64, den: u64| if den == 0 { 0.0 } else { num as f64 / den as f64 };
    json!({
        "name": name,
        "block_size": s.block_size,
        "volume_blocks": s.volume_blocks,
        "segment_blocks": s.segment_blocks,
        "segments_total": s.segments_total,
        "segments_free": s.segments_free,
        "volumes": s.volumes,
        "partitions": s.partitions,
        "open_partition": s.open_partition,
        "baseline_partition": s.baseline_partition,
        "log_capacity_bytes": s.log_capacity_bytes,
        "log_used_bytes": s.log_used_bytes,
        "live_bytes": s.live_bytes,
        "garbage_bytes": s.garbage_bytes,
        "garbage_ratio": ratio(s.garbage_bytes, s.garbage_bytes + s.live_bytes),
        "versions_percent": s.versions_percent,
        "user_bytes_written": s.user_bytes_written,
        "device_bytes_written": s.device_bytes_written,
        "write_amplification": ratio(s.device_bytes_written, s.user_bytes_written),
        "compactions": s.compactions,
        "bytes_moved": s.bytes_moved,
        "bytes_copied": s.bytes_copied,
        "segments_freed": s.segments_freed,
        "drains": s.drains,
        "volumes_retired": s.volumes_retired,
        "last_mount": {
            "kind": if s.last_mount.crash { "crash" } else { "clean" },
            "ms": s.last_mount.micros as f64 / 1000.0,
            "read_bytes": s.last_mount.read_bytes,
        },
        "policy_actions": s.policy_actions,
        "primaries": s.primaries.iter().map(primary_result).collect::<Vec<_>>(),
    })
}

/// A primary's state and rebuild progress.
pub fn primary_result(p: &PrimaryInfo) -> Value {
    let state = match p.state {
        PrimaryState::Healthy => "healthy",
        PrimaryState::Degraded => "degraded",
        PrimaryState::Rebuilding => "rebuilding",
    };
    json!({
        "name": p.name,
        "state": state,
        "dirty_blocks": p.dirty_blocks,
        "rebuild_done_blocks": p.rebuild_done_blocks,
        "rebuild_total_blocks": p.rebuild_total_blocks,
        "reads": p.reads,
        "read_errors": p.read_errors,
        "write_errors": p.write_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, params: Value) -> Command {
        match parse(method, Some(&params)) {
            Some(Ok(c)) => c,
            other => panic!("{method} {params}: {other:?}"),
        }
    }

    /// The error of a call that must fail with Invalid params.
    fn invalid(method: &str, params: Option<Value>) -> String {
        match parse(method, params.as_ref()) {
            Some(Err(e)) if e.code == RpcError::INVALID_PARAMS => e.message,
            other => panic!("{method} {params:?}: expected invalid params, got {other:?}"),
        }
    }

    #[test]
    fn create_options_a_formatted_base_does_not_have_are_named() {
        let formatted = FormatOptions { log_percent: 50, ..FormatOptions::default() };
        let geo = Geometry::plan(4096, 1 << 18, &formatted).unwrap();
        let window_kib = (formatted.replay_window_bytes >> 10) as u32;
        let create = |params: Value| match ok("bdev_ilog_create", params) {
            Command::Create(p) => p.ignored_by(&geo, window_kib),
            other => panic!("{other:?}"),
        };
        // None given, or the same ones (a percent rounding to the same log
        // counts as the same): nothing to say.
        assert!(create(json!({"name": "a", "base_bdev_name": "b"})).is_empty());
        let same = json!({"name": "a", "base_bdev_name": "b", "log_percent": 50, "stripe_size_kib": 1024,
                          "segment_size_kib": 4096, "max_volumes": 1024, "replay_window_mib": 256});
        assert_eq!(create(same), Vec::<String>::new());
        let differ = json!({"name": "a", "base_bdev_name": "b", "log_percent": 20, "stripe_size_kib": 512,
                            "max_volumes": 8, "replay_window_mib": 64});
        let ignored = create(differ);
        assert_eq!(ignored.len(), 4, "{ignored:?}");
        for want in [
            "log_percent 20 (formatted with a log of 4",
            "stripe_size_kib 512 (formatted with 1024)",
            "max_volumes 8 (formatted with 1024)",
            "replay_window_mib 64 (formatted with 256)",
        ] {
            assert!(ignored.iter().any(|i| i.starts_with(want)), "{want} not in {ignored:?}");
        }
    }

    #[test]
    fn compaction_and_policy_methods_parse() {
        assert_eq!(
            ok("bdev_ilog_compact", json!({"name": "i", "volume": "v", "mode": "baseline"})),
            Command::Compact {
                name: "i".into(),
                volume: Some("v".into()),
                mode: CompactMode::Baseline,
                background: false
            }
        );
        assert_eq!(
            ok("bdev_ilog_compact", json!({"name": "i", "background": true})),
            Command::Compact { name: "i".into(), volume: None, mode: CompactMode::InPlace, background: true }
        );
        assert!(invalid("bdev_ilog_compact", Some(json!({"name": "i", "mode": "defrag"}))).contains("defrag"));
        let policy = json!({"snapshot": {"interval_s": 60}});
        assert_eq!(
            ok("bdev_ilog_set_policy", json!({"name": "i", "policy": policy})),
            Command::SetPolicy { name: "i".into(), policy: policy.to_string() }
        );
        assert!(invalid("bdev_ilog_set_policy", Some(json!({"name": "i", "policy": "x"}))).contains("policy"));
        assert!(invalid("bdev_ilog_set_policy", Some(json!({"name": "i"}))).contains("policy"));
        assert_eq!(ok("bdev_ilog_get_policy", json!({"name": "i"})), Command::GetPolicy { name: "i".into() });
        assert_eq!(
            ok("bdev_ilog_event", json!({"name": "i", "event": "backup-done"})),
            Command::Event { name: "i".into(), event: "backup-done".into() }
        );
        assert!(invalid("bdev_ilog_event", Some(json!({"name": "i", "event": ""}))).contains("event"));
        assert_eq!(compact_result(None), json!(true));
        assert_eq!(compact_result(Some(3)), json!({"job": 3}));
    }

    #[test]
    fn every_method_parses_good_params() {
        assert_eq!(
            ok("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "Malloc0"})),
            Command::Create(CreateParams {
                name: "ilog0".into(),
                base_bdev_name: "Malloc0".into(),
                stripe_size_kib: None,
                segment_size_kib: None,
                log_percent: None,
                max_volumes: None,
                replay_window_mib: None,
                primary_bdev_names: None,
            })
        );
        let full = json!({"name": "ilog0", "base_bdev_name": "Malloc0", "stripe_size_kib": 512,
                          "segment_size_kib": 8192, "log_percent": 30, "max_volumes": 16});
        let Command::Create(p) = ok("bdev_ilog_create", full) else { panic!("not a create") };
        assert_eq!(
            p.format_options(),
            FormatOptions {
                stripe_bytes: 512 << 10,
                segment_bytes: 8 << 20,
                log_percent: 30,
                max_volumes: 16,
                ..FormatOptions::default()
            }
        );
        assert_eq!(ok("bdev_ilog_delete", json!({"name": "ilog0"})), Command::Delete { name: "ilog0".into() });
        assert_eq!(parse("bdev_ilog_get_bdevs", None), Some(Ok(Command::GetBdevs { name: None })));
        assert_eq!(
            ok("bdev_ilog_get_bdevs", json!({"name": "ilog0"})),
            Command::GetBdevs { name: Some("ilog0".into()) }
        );
        assert_eq!(
            ok("bdev_ilog_snapshot", json!({"name": "ilog0"})),
            Command::Snapshot { name: "ilog0".into(), snapshot_name: None }
        );
        assert_eq!(
            ok("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": "before-upgrade"})),
            Command::Snapshot { name: "ilog0".into(), snapshot_name: Some("before-upgrade".into()) }
        );
        assert_eq!(ok("bdev_ilog_get_volumes", json!({"name": "ilog0"})), Command::GetVolumes { name: "ilog0".into() });
        assert_eq!(
            ok("bdev_ilog_delete_volume", json!({"name": "ilog0", "volume": "snap-1"})),
            Command::DeleteVolume { name: "ilog0".into(), volume: "snap-1".into() }
        );
        assert_eq!(
            ok("bdev_ilog_log_read", json!({"name": "ilog0", "count": 10})),
            Command::LogRead { name: "ilog0".into(), cursor: 0, count: 10, with_data: false }
        );
        assert_eq!(
            ok("bdev_ilog_log_read", json!({"name": "ilog0", "cursor": 77, "count": 4096, "with_data": true})),
            Command::LogRead { name: "ilog0".into(), cursor: 77, count: 4096, with_data: true }
        );
        assert_eq!(ok("bdev_ilog_get_stats", json!({"name": "ilog0"})), Command::GetStats { name: "ilog0".into() });
    }

    #[test]
    fn create_params_serialize_to_params_that_parse_back() {
        for params in [
            json!({"name": "ilog0", "base_bdev_name": "Malloc0"}),
            json!({"name": "ilog0", "base_bdev_name": "Malloc0", "stripe_size_kib": 512,
                   "segment_size_kib": 8192, "log_percent": 30, "max_volumes": 16}),
        ] {
            let Command::Create(p) = ok("bdev_ilog_create", params.clone()) else { panic!("not a create") };
            let serialized = serde_json::to_value(&p).unwrap();
            assert_eq!(serialized, params);
            assert_eq!(ok("bdev_ilog_create", serialized), Command::Create(p));
        }
    }

    #[test]
    fn defaults_are_the_engines() {
        let p = CreateParams {
            name: "ilog0".into(),
            base_bdev_name: "Malloc0".into(),
            stripe_size_kib: None,
            segment_size_kib: None,
            log_percent: None,
            max_volumes: None,
            replay_window_mib: None,
            primary_bdev_names: None,
        };
        assert_eq!(p.format_options(), FormatOptions::default());
    }

    #[test]
    fn every_listed_method_parses_and_no_other() {
        for method in METHODS {
            assert!(parse(method, None).is_some(), "{method}");
        }
        assert_eq!(parse("bdev_get_bdevs", None), None);
        assert_eq!(parse("bdev_ilog_nope", None), None);
    }

    #[test]
    fn missing_required_fields_are_named() {
        for method in METHODS.iter().filter(|m| !["bdev_ilog_get_bdevs", "bdev_ilog_get_jobs"].contains(m)) {
            assert!(invalid(method, None).contains("missing field `name`"), "{method}");
            assert!(invalid(method, Some(Value::Null)).contains("missing field `name`"), "{method}");
        }
        let msg = invalid("bdev_ilog_create", Some(json!({"name": "ilog0"})));
        assert!(msg.contains("missing field `base_bdev_name`"), "{msg}");
        let msg = invalid("bdev_ilog_delete_volume", Some(json!({"name": "ilog0"})));
        assert!(msg.contains("missing field `volume`"), "{msg}");
        let msg = invalid("bdev_ilog_log_read", Some(json!({"name": "ilog0"})));
        assert!(msg.contains("missing field `count`"), "{msg}");
        let msg = invalid("bdev_ilog_copy", Some(json!({"name": "ilog0", "volume": "v1"})));
        assert!(msg.contains("missing field `target`"), "{msg}");
        let msg = invalid("bdev_ilog_restore", Some(json!({"name": "ilog0"})));
        assert!(msg.contains("missing field `source`"), "{msg}");
    }

    #[test]
    fn copy_methods_parse_and_refuse_what_cannot_work() {
        let diff = ok("bdev_ilog_diff", json!({"name": "ilog0", "volume": "v2", "lba_start": 8}));
        let want = Command::Diff {
            name: "ilog0".into(),
            volume: "v2".into(),
            base_volume: None,
            lba_start: Some(8),
            lba_count: None,
        };
        assert_eq!(diff, want);
        let copy = |target: &str| match ok("bdev_ilog_copy", json!({"name": "ilog0", "volume": "v2", "target": target}))
        {
            Command::Copy { target, .. } => target,
            other => panic!("{other:?}"),
        };
        assert_eq!(copy("/var/tmp/s"), StreamTarget::File("/var/tmp/s".into()));
        assert_eq!(copy("Malloc1"), StreamTarget::Bdev("Malloc1".into()));
        assert_eq!(copy("nvme0n1/x"), StreamTarget::Bdev("nvme0n1/x".into()), "only an absolute path is a file");
        let restore = ok("bdev_ilog_restore", json!({"name": "ilog1", "source": "/s", "resume_token": "ab"}));
        let want = Command::Restore {
            name: "ilog1".into(),
            source: StreamTarget::File("/s".into()),
            resume_token: Some("ab".into()),
        };
        assert_eq!(restore, want);
        assert_eq!(parse("bdev_ilog_get_jobs", None), Some(Ok(Command::GetJobs { name: None })));
        for (method, params, why) in [
            ("bdev_ilog_diff", json!({"name": "i", "volume": "v", "base_volume": "v"}), "must differ"),
            ("bdev_ilog_copy", json!({"name": "i", "volume": "v", "target": ""}), "target must be non-empty"),
            ("bdev_ilog_copy", json!({"name": "i", "volume": "v", "target": "/t", "resume_token": ""}), "resume_token"),
            ("bdev_ilog_restore", json!({"name": "i", "source": "a\0b"}), "source must be non-empty"),
            ("bdev_ilog_get_jobs", json!({"name": ""}), "name must be non-empty"),
        ] {
            let msg = invalid(method, Some(params));
            assert!(msg.contains(why), "{method}: {msg}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        for method in METHODS {
            let msg = invalid(method, Some(json!({"name": "ilog0", "bogus": 1})));
            assert!(msg.contains("unknown field `bogus`"), "{method}: {msg}");
        }
    }

    #[test]
    fn mistyped_fields_are_refused() {
        let cases = [
            ("bdev_ilog_delete", json!({"name": 7})),
            ("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "M", "log_percent": 300})),
            ("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "M", "stripe_size_kib": "1M"})),
            ("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "M", "max_volumes": -1})),
            ("bdev_ilog_get_bdevs", json!({"name": ["ilog0"]})),
            ("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": 1})),
            ("bdev_ilog_log_read", json!({"name": "ilog0", "count": 1.5})),
            ("bdev_ilog_log_read", json!({"name": "ilog0", "count": 1, "cursor": -1})),
            ("bdev_ilog_log_read", json!({"name": "ilog0", "count": 1, "with_data": "yes"})),
        ];
        for (method, params) in cases {
            let msg = invalid(method, Some(params.clone()));
            assert!(msg.contains("invalid"), "{method} {params}: {msg}");
        }
        // Positional params are not SPDK's.
        let msg = invalid("bdev_ilog_delete", Some(json!(["ilog0"])));
        assert!(msg.contains("must be an object"), "{msg}");
        invalid("bdev_ilog_delete", Some(json!("ilog0")));
    }

    #[test]
    fn empty_names_are_refused() {
        let cases = [
            ("bdev_ilog_create", json!({"name": "", "base_bdev_name": "M"}), "name"),
            ("bdev_ilog_create", json!({"name": "i", "base_bdev_name": ""}), "base_bdev_name"),
            ("bdev_ilog_delete", json!({"name": ""}), "name"),
            ("bdev_ilog_get_bdevs", json!({"name": ""}), "name"),
            ("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": ""}), "snapshot_name"),
            ("bdev_ilog_get_volumes", json!({"name": ""}), "name"),
            ("bdev_ilog_delete_volume", json!({"name": "ilog0", "volume": ""}), "volume"),
            ("bdev_ilog_log_read", json!({"name": "", "count": 1}), "name"),
            ("bdev_ilog_get_stats", json!({"name": ""}), "name"),
        ];
        for (method, params, field) in cases {
            let msg = invalid(method, Some(params.clone()));
            assert!(msg.contains(&format!("{field} must be non-empty, without NUL")), "{method}: {msg}");
            // A NUL makes no C string: SPDK's decoder refuses it too.
            let mut with_nul = params;
            with_nul[field] = json!("a\u{0}b");
            let msg = invalid(method, Some(with_nul));
            assert!(msg.contains(&format!("{field} must be non-empty, without NUL")), "{method}: {msg}");
        }
    }

    #[test]
    fn create_refuses_ambiguous_names_and_oversized_sizes() {
        let msg = invalid("bdev_ilog_create", Some(json!({"name": "a@b", "base_bdev_name": "M"})));
        assert!(msg.contains('@'), "{msg}");
        let msg = invalid(
            "bdev_ilog_create",
            Some(json!({"name": "a", "base_bdev_name": "M", "segment_size_kib": u64::MAX})),
        );
        assert!(msg.contains("segment_size_kib"), "{msg}");
    }

    #[test]
    fn create_refuses_options_that_could_not_format_whatever_the_base() {
        for (field, value, says) in [
            ("max_volumes", 0, "max_volumes"),
            ("stripe_size_kib", 0, "stripe"),
            ("segment_size_kib", 0, "segment"),
            ("log_percent", 0, "log_percent"),
            ("log_percent", 96, "log_percent"),
            ("replay_window_mib", 0, "replay window"),
        ] {
            let msg = invalid("bdev_ilog_create", Some(json!({"name": "a", "base_bdev_name": "M", field: value})));
            assert!(msg.contains(says), "{field} {value}: {msg}");
        }
    }

    #[test]
    fn log_read_count_is_bounded() {
        for count in [0, MAX_LOG_READ_COUNT + 1, u32::MAX] {
            let msg = invalid("bdev_ilog_log_read", Some(json!({"name": "ilog0", "count": count})));
            assert!(msg.contains("count must be in 1..=4096"), "{msg}");
        }
        let msg = invalid("bdev_ilog_log_read", Some(json!({"name": "ilog0", "count": u64::from(u32::MAX) + 1})));
        assert!(msg.contains("invalid value"), "{msg}");
    }

    fn volume(name: &str, partition: u32) -> VolumeInfo {
        VolumeInfo { name: name.into(), partition, created_unix_s: 1_700_000_000 + u64::from(partition) }
    }

    #[test]
    fn simple_results() {
        assert_eq!(create_result("ilog0"), json!("ilog0"));
        assert_eq!(done_result(), json!(true));
        assert_eq!(volume_bdev_name("ilog0", "snap-1"), "ilog0@snap-1");
        assert_eq!(
            snapshot_result("ilog0", &volume("snap-1", 3)),
            json!({"volume_id": "snap-1", "bdev": "ilog0@snap-1"})
        );
    }

    #[test]
    fn volumes_and_bdevs_results() {
        let vs = [volume("snap-1", 1), volume("before-upgrade", 2)];
        let volumes = json!([
            {"volume_id": "snap-1", "bdev": "ilog0@snap-1", "partition": 1, "created": 1_700_000_001u64},
            {"volume_id": "before-upgrade", "bdev": "ilog0@before-upgrade", "partition": 2, "created": 1_700_000_002u64},
        ]);
        assert_eq!(volumes_result("ilog0", &vs), volumes);
        assert_eq!(volumes_result("ilog0", &[]), json!([]));
        let bdevs = [
            BdevInfo {
                name: "ilog0".into(),
                base_bdev_name: "Malloc0".into(),
                block_size: 4096,
                num_blocks: 8000,
                cores: 2,
                volumes: vs.to_vec(),
                primaries: vec![PrimaryInfo {
                    name: "Malloc1".into(),
                    state: PrimaryState::Rebuilding,
                    dirty_blocks: 10,
                    rebuild_done_blocks: 90,
                    rebuild_total_blocks: 100,
                    reads: 5,
                    read_errors: 1,
                    write_errors: 2,
                }],
            },
            BdevInfo {
                name: "ilog1".into(),
                base_bdev_name: "Nvme0n1".into(),
                block_size: 512,
                num_blocks: 1 << 40,
                cores: 4,
                volumes: vec![],
                primaries: vec![],
            },
        ];
        assert_eq!(
            bdevs_result(&bdevs),
            json!([
                {"name": "ilog0", "base_bdev_name": "Malloc0", "block_size": 4096, "num_blocks": 8000, "cores": 2,
                 "volumes": volumes, "primaries": [{"name": "Malloc1", "state": "rebuilding", "dirty_blocks": 10,
                 "rebuild_done_blocks": 90, "rebuild_total_blocks": 100, "reads": 5, "read_errors": 1,
                 "write_errors": 2}]},
                {"name": "ilog1", "base_bdev_name": "Nvme0n1", "block_size": 512, "num_blocks": 1u64 << 40,
                 "cores": 4, "volumes": [], "primaries": []},
            ])
        );
        assert_eq!(bdevs_result(&[]), json!([]));
    }

    #[test]
    fn log_result_encodes_entries_and_data() {
        let batch = LogBatch {
            entries: vec![
                LogEntry {
                    sequence: 5,
                    partition: 1,
                    volume: Some("snap-1".into()),
                    lba: 10,
                    blocks: 1,
                    kind: LogEntryKind::Data,
                    data: Some(b"hello".to_vec()),
                },
                LogEntry {
                    sequence: 6,
                    partition: 2,
                    volume: None,
                    lba: 0,
                    blocks: 8,
                    kind: LogEntryKind::Zero,
                    data: None,
                },
            ],
            next_cursor: 7,
            oldest_cursor: 3,
            bytes_limited: true,
        };
        assert_eq!(
            log_result(&batch),
            json!({
                "entries": [
                    {"sequence": 5, "partition": 1, "volume_id": "snap-1", "lba": 10, "num_blocks": 1,
                     "kind": "data", "data": "aGVsbG8="},
                    {"sequence": 6, "partition": 2, "volume_id": null, "lba": 0, "num_blocks": 8, "kind": "zero"},
                ],
                "next_cursor": 7,
                "oldest_cursor": 3,
                "bytes_limited": true,
            })
        );
        assert_eq!(
            log_result(&LogBatch { entries: vec![], next_cursor: 0, oldest_cursor: 0, bytes_limited: false }),
            json!({"entries": [], "next_cursor": 0, "oldest_cursor": 0, "bytes_limited": false})
        );
    }

    #[test]
    fn stats_result_has_every_field() {
        let s = Stats {
            block_size: 4096,
            volume_blocks: 1000,
            segment_blocks: 1024,
            segments_total: 20,
            segments_free: 18,
            volumes: 2,
            partitions: 3,
            open_partition: 3,
            baseline_partition: 1,
            log_capacity_bytes: 80 << 20,
            log_used_bytes: 8 << 20,
            live_bytes: 3 << 20,
            garbage_bytes: 1 << 20,
            versions_percent: 3,
            user_bytes_written: 4 << 20,
            device_bytes_written: 5 << 20,
            compactions: 1,
            bytes_moved: 4096,
            bytes_copied: 0,
            segments_freed: 1,
            drains: 2,
            volumes_retired: 0,
            last_mount: ilog_bdev::engine::MountReport { crash: true, micros: 1500, read_bytes: 8192 },
            policy_actions: 0,
            primaries: vec![PrimaryInfo {
                name: "Malloc1".into(),
                state: PrimaryState::Degraded,
                dirty_blocks: 7,
                rebuild_done_blocks: 0,
                rebuild_total_blocks: 0,
                reads: 3,
                read_errors: 1,
                write_errors: 0,
            }],
        };
        assert_eq!(
            stats_result("ilog0", &s),
            json!({"name": "ilog0", "block_size": 4096, "volume_blocks": 1000, "segment_blocks": 1024,
                   "segments_total": 20, "segments_free": 18, "volumes": 2, "partitions": 3, "open_partition": 3,
                   "baseline_partition": 1, "log_capacity_bytes": 80 << 20, "log_used_bytes": 8 << 20,
                   "live_bytes": 3 << 20, "garbage_bytes": 1 << 20, "garbage_ratio": 0.25, "versions_percent": 3,
                   "user_bytes_written": 4 << 20, "device_bytes_written": 5 << 20, "write_amplification": 1.25,
                   "compactions": 1, "bytes_moved": 4096, "bytes_copied": 0, "segments_freed": 1, "drains": 2,
                   "volumes_retired": 0, "last_mount": {"kind": "crash", "ms": 1.5, "read_bytes": 8192},
                   "policy_actions": 0, "primaries": [{"name": "Malloc1", "state": "degraded", "dirty_blocks": 7,
                   "rebuild_done_blocks": 0, "rebuild_total_blocks": 0, "reads": 3, "read_errors": 1,
                   "write_errors": 0}]})
        );
    }
}
