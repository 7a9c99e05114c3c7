//! # ilog: a log-structured, snapshotting block store
//!
//! An ilog bdev layers on a base block device and turns it into a baseline
//! region plus an incremental log. Every write is appended to the log of the
//! core that owns its stripe; a snapshot seals the open partition of the log
//! as a read-only snapshot volume; reads find the newest version through a
//! per-core block index. See `docs/ARCHITECTURE.md` for the design.
//!
//! The engine ([`engine`]) is written once against asynchronous devices and
//! message queues; runtimes drive it: [`runtime::native`] (a busy-polling
//! thread per core) and [`runtime::sim`] (deterministic, seeded, with fault
//! injection).
//!
//! ```
//! use ilog_bdev::device::MallocDevice;
//! use ilog_bdev::format::FormatOptions;
//! use ilog_bdev::runtime::native::Ilog;
//! use std::sync::Arc;
//!
//! let dev = Arc::new(MallocDevice::new(16384, 4096));
//! ilog_bdev::engine::format(dev.as_ref(), &FormatOptions::default(), [7; 16]).unwrap();
//! let ilog = Ilog::start(dev, 2).unwrap();
//! ilog.write(10, &vec![0xab; 4096]).unwrap();
//! let snap = ilog.snapshot(None).unwrap();
//! ilog.write(10, &vec![0xcd; 4096]).unwrap();
//! let mut buf = vec![0; 4096];
//! ilog.read_volume(&snap.name, 10, &mut buf).unwrap();
//! assert_eq!(buf[0], 0xab);
//! ilog.close().unwrap();
//! ```

pub mod copy;
pub mod device;
pub mod engine;
pub mod error;
pub mod format;
pub mod rng;
pub mod runtime;
#[cfg(feature = "spdk")]
pub mod spdk;

pub use error::{Error, Result};
