//! Typed SPDK: the one place where the SPDK runtime touches raw SPDK (and
//! raw engine tokens). Each wrapper owns or borrows its SPDK object for as
//! long as SPDK allows and states its contract; everything above is safe
//! Rust.
//!
//! - [`bdev`]: the module, our registered bdevs ([`bdev::BdevOps`]) and the
//!   bdev queries we need.
//! - [`bdev_io`]: a bdev I/O submitted to us.
//! - [`engine_io`]: a bdev I/O handed to the engine, and completion tokens.
//! - [`desc`]: a base bdev opened and claimed, its channels, block I/O.
//! - [`thread`] and [`poller`]: SPDK threads, messages, thread-bound state,
//!   pollers.
//! - [`json`], [`rpc`]: SPDK's JSON writer and JSON-RPC server.
//! - `dma`, `logger`: SPDK memory for engine buffers, SPDK's log for ours.

pub(crate) mod bdev;
pub(crate) mod bdev_io;
pub(crate) mod desc;
pub(crate) mod dma;
pub(crate) mod engine_io;
pub(crate) mod json;
pub(crate) mod logger;
pub(crate) mod poller;
pub mod rpc;
pub(crate) mod thread;
