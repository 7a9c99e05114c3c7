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

/// CRC32C (Castagnoli, the standard one) of a data entry's blocks, taken on
/// every write. Inside SPDK it is ISA-L's, through `spdk_crc32c_update`,
/// several times faster than the `crc32c` crate's; both give the same value,
/// so a log written by one runtime replays in the other.
pub fn data_crc(data: &[u8]) -> u32 {
    #[cfg(feature = "spdk")]
    {
        // SAFETY: `data` is a valid slice for the call's duration.
        !unsafe { ilog_sys::spdk_crc32c_update(data.as_ptr().cast(), data.len(), !0) }
    }
    #[cfg(not(feature = "spdk"))]
    {
        crc32c::crc32c(data)
    }
}

/// CRC32C of a record whose own CRC field sits at `crc_at` (4 bytes, skipped).
pub(crate) fn record_crc(bytes: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..crc_at]);
    crc32c::crc32c_append(crc, &bytes[crc_at + 4..])
}

/// Whether `data_crc` agrees with the portable CRC-32C on buffers of
/// every length around the vector widths and a few blocks: the SPDK module
/// checks it at start-up, since a log must replay in either runtime.
pub fn data_crc_is_portable() -> bool {
    let data: Vec<u8> = (0..9000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    (0..300).chain([4095, 4096, 4097, 8192, 9000]).all(|len| data_crc(&data[..len]) == crc32c::crc32c(&data[..len]))
}

#[cfg(test)]
mod tests {
    use super::{data_crc, data_crc_is_portable};

    #[test]
    fn data_crc_is_the_standard_crc32c() {
        assert_eq!(data_crc(b"123456789"), 0xe306_9283, "the CRC-32C check value");
        assert_eq!(data_crc(b""), 0);
        assert!(data_crc_is_portable());
    }
}
