//! The on-media format: every structure ilog writes, how it is encoded, and
//! how it is validated when read back. Integers are little-endian; every
//! metadata block carries a CRC32C. The layout:
//!
//! ```text
//! block 0      superblock copy A
//! block 1      superblock copy B
//! 2 ..         checkpoint slot 0, checkpoint slot 1   (alternating generations)
//! ..           baseline region: the volume's blocks, direct-mapped
//! ..           log region: `segment_count` segments of `segment_blocks`
//! ```

mod checkpoint;
pub(crate) mod codec;
mod geometry;
mod segment;
mod superblock;

pub use checkpoint::{
    Checkpoint, PrimaryRecord, PrimaryState, SegmentRecord, VolumeRecord, MAX_POLICY_LEN, MAX_PRIMARIES,
    MAX_PRIMARY_NAME, MAX_VOLUME_NAME,
};
pub(crate) use geometry::SUPERBLOCK_BLOCKS;
pub use geometry::{valid_block_size, FormatOptions, Geometry, DEFAULT_REPLAY_WINDOW_KIB};
pub use segment::{
    EntryKind, SegmentHeader, SegmentId, SummaryBlock, SummaryChain, SummaryEntry, SummaryKey, PARTITION_SPAN,
    SUMMARY_ENTRY_LEN, SUMMARY_HEADER_LEN,
};
pub use superblock::Superblock;

/// The on-media format version this code writes; it reads version 1 too.
/// Version 2 added entry partitions to summaries (segments shared by
/// partitions) and `drained_below` to the checkpoint.
pub const FORMAT_VERSION: u32 = 2;

/// CRC32C (Castagnoli, the standard one): of a data entry's blocks on
/// every write, and of every metadata record. The `crc-fast` crate's
/// carry-less-multiply folding: the `crc32c` crate's took a quarter of a
/// core's time on bdevperf's randwrite (perf/RESULTS.md); SPDK's ISA-L one,
/// through `spdk_crc32c_update`, cost a sixth of the IOPS in the same test.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// A new format's uuid (RFC 4122 version 4), from /dev/urandom; from the
/// clock, with a warning, where there is none.
pub fn random_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut u = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut u)) {
        log::warn!("no /dev/urandom ({e}): uuid from the clock");
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        u = t.to_le_bytes();
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// CRC32C of a record whose own CRC field sits at `crc_at` (4 bytes, skipped).
pub fn record_crc(bytes: &[u8], crc_at: usize) -> u32 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&bytes[..crc_at]);
    digest.update(&bytes[crc_at + 4..]);
    digest.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::{crc32c, random_uuid, record_crc};

    #[test]
    fn random_uuids_are_version_4_and_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        for u in [a, b] {
            assert_eq!(u[6] >> 4, 4, "version 4");
            assert_eq!(u[8] >> 6, 0b10, "RFC 4122 variant");
        }
    }

    #[test]
    fn crc32c_is_the_standard_one() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283, "the CRC-32C check value");
        assert_eq!(crc32c(b""), 0);
        // Against an independent implementation, at lengths around the
        // vector widths and a few blocks.
        let data: Vec<u8> = (0..9000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in (0..300).chain([4095, 4096, 4097, 8192, 9000]) {
            assert_eq!(crc32c(&data[..len]), ::crc32c::crc32c(&data[..len]), "length {len}");
        }
        let skipped = ::crc32c::crc32c_append(::crc32c::crc32c(&data[..100]), &data[104..4096]);
        assert_eq!(record_crc(&data[..4096], 100), skipped);
    }
}
