//! The engine's error type, and its one mapping to errno values.

use thiserror::Error;

/// Every way an ilog operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("I/O beyond the end of the volume (lba {lba}, {blocks} blocks, volume has {volume_blocks})")]
    OutOfRange { lba: u64, blocks: u64, volume_blocks: u64 },
    #[error("offset or length is not a multiple of the {block_size}-byte block size")]
    Misaligned { block_size: u32 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("volume already exists: {0}")]
    VolumeExists(String),
    #[error("snapshot volumes are read-only")]
    ReadOnly,
    #[error("the log is full")]
    NoSpace,
    #[error("too many snapshot volumes: this bdev holds at most {max} (max_volumes at format)")]
    TooManyVolumes { max: u32 },
    #[error("device I/O error (errno {0})")]
    Io(i32),
    #[error("no ilog superblock on the device")]
    NotFormatted,
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("the device is too small: {0}")]
    DeviceTooSmall(String),
    #[error("the device is too large: {0}")]
    DeviceTooLarge(String),
    #[error("the bdev is shutting down")]
    ShuttingDown,
    #[error("log cursor {cursor} is older than the log: entries below {oldest} drained into the baseline (go on from {oldest}, or from 0 for all the log holds)")]
    CursorDrained { cursor: u64, oldest: u64 },
}

impl Error {
    /// The positive errno an SPDK bdev or a JSON-RPC error would carry.
    pub fn errno(&self) -> i32 {
        match self {
            Error::OutOfRange { .. } | Error::Misaligned { .. } | Error::InvalidArgument(_) => libc::EINVAL,
            Error::NoSuchVolume(_) => libc::ENOENT,
            Error::VolumeExists(_) => libc::EEXIST,
            Error::ReadOnly => libc::EROFS,
            Error::NoSpace => libc::ENOSPC,
            Error::TooManyVolumes { .. } => libc::EDQUOT,
            Error::Io(e) => *e,
            Error::NotFormatted => libc::ENODEV,
            Error::Corrupt(_) => libc::EUCLEAN,
            Error::DeviceTooSmall(_) => libc::ENOSPC,
            Error::DeviceTooLarge(_) => libc::EFBIG,
            Error::ShuttingDown => libc::ESHUTDOWN,
            Error::CursorDrained { .. } => libc::ERANGE,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
