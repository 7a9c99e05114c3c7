//! The SPDK runtime (feature `spdk`): ilog as an SPDK bdev module.
//!
//! - [`ffi`]: typed SPDK, the only place that touches it raw.
//! - `bdev`: the module and the life of an ilog bdev (create, volumes,
//!   delete, hot-remove, save_config).
//! - `disk`: one registered bdev, the ilog bdev or a volume's, and what
//!   SPDK calls on it.
//! - `volumes`: the snapshot volumes as bdevs, following the engine's
//!   volume table whoever changed it.
//! - `io`: the data path (bdev_io in, engine requests, completion on the
//!   submitting thread) and control calls.
//! - `primaries`: the primary bdevs, opened, released on hot-remove and
//!   closed once the engine let go of them.
//! - `reactor`: one SPDK thread per core polling shard `i` of every bdev.
//! - [`copy`]: an ilog bdev and other bdevs as copies and restores use
//!   them, from their job threads.
//!
//! The base bdev, as the engine's block device, is `crate::device::spdk`.
//!
//! Stripe ownership is the engine's: a bdev I/O is submitted to the shard
//! of the submitting thread's core, which splits it and forwards the pieces
//! to their owners through the engine's lock-free queues (the same role
//! `spdk_thread_send_msg` plays in SPDK's own modules).

mod bdev;
pub mod copy;
mod disk;
pub mod ffi;
mod io;
mod primaries;
mod reactor;
mod volumes;

pub use bdev::{
    bdev_exists, bdevs, call, create, delete, delete_volume, foreign_volume_bdev, rebuild_primary, register_module,
    SpdkError,
};
