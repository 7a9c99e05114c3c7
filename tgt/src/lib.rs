//! `ilog_tgt` as a library: the target ([`target`]) and its NBD server
//! ([`nbd`]). The binary (`main.rs`) parses the flags and runs them; the
//! fuzz targets (`fuzz/`) drive the NBD server through this library.

pub mod error_bdev;
mod export;
pub mod nbd;
pub mod target;
