//! Tertiary copy: a volume's blocks, or only what changed between two
//! volumes, written as a checksummed copy stream ([`stream`]) to another
//! block device or a file, and applied back by a restore.
//!
//! A copy costs the change, never a scan of the volume: the engine answers
//! which extents changed between two volumes from its partition tables
//! ([`Volumes::diff`]), and only those are read, as of the volume, through
//! the ordinary read path. Copies and restores run on a thread of their
//! own with blocking calls into the engine, one bounded read or write at a
//! time, so the cores serve them between their clients' requests like any
//! other client's.

mod job;
mod store;
pub mod stream;

pub use job::{copy, plan, plan_restore, restore, CopySpec, Destination, Plan, RestorePlan};
pub use store::StreamStore;

pub use crate::engine::Extent;
use crate::engine::{View, VolumeInfo};
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What a copy or a restore needs of an ilog bdev: blocking calls, made
/// from the job's own thread (each runtime answers them from its cores).
pub trait Volumes: Send + Sync {
    /// The format's uuid: names the source in a stream.
    fn uuid(&self) -> [u8; 16];
    fn block_size(&self) -> u32;
    fn volume_blocks(&self) -> u64;
    fn volumes(&self) -> Result<Vec<VolumeInfo>>;
    /// The extents of `volume` that differ from `base` (every block it maps
    /// without one) inside `lba_start..lba_start + lba_count`: merged, in
    /// LBA order.
    fn diff(&self, volume: &str, base: Option<&str>, lba_start: u64, lba_count: u64) -> Result<Vec<Extent>>;
    fn read_view(&self, view: View, lba: u64, buf: &mut [u8]) -> Result<()>;
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()>;
    fn write_zeroes(&self, lba: u64, blocks: u32) -> Result<()>;
    fn flush(&self) -> Result<()>;
    fn snapshot(&self, name: &str) -> Result<VolumeInfo>;
}

/// A job's progress, shared with whoever reports it (`bdev_ilog_get_stats`).
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    /// Where the job would go on from after a failure: moves only once
    /// what precedes it is durable.
    resume_token: Mutex<Option<String>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            resume_token: Mutex::new(None),
        }
    }
}

impl Progress {
    pub fn bytes_done(&self) -> u64 {
        self.bytes_done.load(Ordering::Relaxed)
    }

    pub fn bytes_total(&self) -> u64 {
        self.bytes_total.load(Ordering::Relaxed)
    }

    /// Average rate since the job started, in bytes per second.
    pub fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        (self.bytes_done() as f64 / secs) as u64
    }

    pub fn resume_token(&self) -> Option<String> {
        self.resume_token.lock().expect("progress lock").clone()
    }

    /// A job's progress before it runs: `done` of `total` bytes.
    pub fn starting(total: u64, done: u64) -> Progress {
        let p = Progress::default();
        p.bytes_total.store(total, Ordering::Relaxed);
        p.bytes_done.store(done, Ordering::Relaxed);
        p
    }

    /// Takes `start`'s total and done (a plan's, for a caller that made
    /// its own progress).
    fn start_as(&self, start: &Progress) {
        self.bytes_total.store(start.bytes_total(), Ordering::Relaxed);
        self.set_done(start.bytes_done());
    }

    fn set_done(&self, bytes: u64) {
        self.bytes_done.store(bytes, Ordering::Relaxed);
    }

    fn set_resume_token(&self, token: String) {
        *self.resume_token.lock().expect("progress lock") = Some(token);
    }
}
