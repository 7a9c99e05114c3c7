//! The engine: per-core shards that own stripes of the volume, append their
//! writes to their own log stream, index them in their own block index
//! shard, and talk to each other only through lock-free message queues.
//!
//! A runtime (native threads, the simulator, SPDK) owns the shards, calls
//! [`Shard::poll`] on each from its own core, and feeds client requests in
//! with [`Submitter::submit`]. Completions come back through the sink given
//! to `poll`, on the core the request was submitted to.

pub(crate) mod addr;
mod barrier;
mod baseline;
mod compact;
mod compact_bufs;
mod control;
mod cursor;
mod diff;
mod drain;
mod free;
mod index;
mod logmap;
mod mirror;
mod mount;
mod moves;
mod msg;
mod origin;
mod partition;
pub mod policy;
mod read;
mod registry;
mod repin;
mod request;
mod retire;
mod shard;
mod shared;
mod space;
mod summaries;
mod tag;
mod writer;

pub use mount::{format, mount, mount_with_clock, mount_with_primaries, recorded_primaries, Mounted, PrimaryOpen};
pub use policy::Policy;
pub(crate) use request::check_volume_name;
pub use request::{
    volume_bdev_name, BdevInfo, CompactMode, Extent, LogBatch, LogEntry, LogEntryKind, MountReport, PrimaryDevice,
    PrimaryInfo, Reply, Request, Stats, View, VolumeInfo, MAX_LOG_READ_DATA_BYTES,
};
pub use shard::{audit_space, Shard};
pub use shared::{Clock, Submitter, SystemClock};
