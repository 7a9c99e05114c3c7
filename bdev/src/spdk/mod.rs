//! The SPDK runtime (feature `spdk`): ilog as an SPDK bdev module.
//!
//! - [`bdev`]: the module and the life of an ilog bdev (create, volumes,
//!   delete, hot-remove, save_config).
//! - `volumes`: the snapshot volumes as bdevs, following the engine's
//!   volume table whoever changed it.
//! - `io`: the data path (bdev_io in, engine requests, completion on the
//!   submitting thread).
//! - `reactor`: one SPDK thread per core polling shard `i` of every bdev.
//! - `device`: a claimed base bdev as the engine's block device.
//! - `thread`: SPDK threads and messages.
//!
//! Stripe ownership is the engine's: a bdev I/O is submitted to the shard
//! of the submitting thread's core, which splits it and forwards the pieces
//! to their owners through the engine's lock-free queues (the same role
//! `spdk_thread_send_msg` plays in SPDK's own modules).

mod bdev;
mod device;
mod io;
mod logger;
mod reactor;
mod thread;
mod volumes;

pub use bdev::{
    bdev_exists, bdevs, call, create, delete, delete_volume, foreign_volume_bdev, register_module, SpdkError,
};
