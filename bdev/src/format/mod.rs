//! The on-media format: every structure ilog writes, how it is encoded, and
//! how it is validated when read back. Integers are little-endian; every
//! metadata block carries a CRC32C. See `docs/FORMAT.md` for the picture.
//!
//! ```text
//! block 0      superblock copy A
//! block 1      superblock copy B
//! 2 ..         checkpoint slot 0, checkpoint slot 1   (alternating generations)
//! ..           baseline region: the volume's blocks, direct-mapped
//! ..           log region: `segment_count` segments of `segment_blocks`
//! ```

mod checkpoint;
mod codec;
mod geometry;
mod segment;
mod superblock;

pub use checkpoint::{Checkpoint, SegmentRecord, VolumeRecord, MAX_POLICY_LEN, MAX_VOLUME_NAME};
pub use geometry::{FormatOptions, Geometry};
pub use segment::{
    EntryKind, SegmentHeader, SegmentId, SummaryBlock, SummaryChain, SummaryEntry, SUMMARY_ENTRY_LEN,
    SUMMARY_HEADER_LEN,
};
pub use superblock::Superblock;

/// The on-media format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// CRC32C of a record whose own CRC field sits at `crc_at` (4 bytes, skipped).
pub(crate) fn record_crc(bytes: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..crc_at]);
    crc32c::crc32c_append(crc, &bytes[crc_at + 4..])
}
