//! ilog's control plane: every `bdev_ilog_*` JSON-RPC method ([`ilog`]:
//! parameters in, results out) and a JSON-RPC server speaking SPDK's
//! protocol on a Unix socket ([`server`]), so that SPDK's `rpc.py` with the
//! `scripts/rpc_ilog.py` plugin drives ilog as it drives any SPDK bdev.
//!
//! A runtime implements [`Handler`]: it decodes `bdev_ilog_*` calls with
//! [`ilog::parse`], executes the [`ilog::Command`], and encodes what the
//! engine returns with the `ilog::*_result` functions.

pub mod error;
pub mod ilog;
pub mod jobs;
pub mod server;
#[cfg(feature = "spdk")]
pub mod spdk;

pub use error::RpcError;
pub use server::{Handler, Server};
