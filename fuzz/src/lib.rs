//! What the fuzz targets share: their input formats (so that the seed
//! generator, `examples/seeds.rs`, writes what the targets read) and the
//! checks of a policy document.

use ilog_bdev::engine::Policy;
use ilog_bdev::format::record_crc;

/// The first byte of a metadata block target's input: which flags apply
/// to the block (the rest of the input).
pub mod mode {
    /// Recompute the block's CRCs before decoding it, so that mutations
    /// reach the checks behind the CRC; without it they test the CRC.
    pub const SEAL: u8 = 1 << 0;
    /// `segment`: the block is a summary block (else a segment header).
    pub const SUMMARY: u8 = 1 << 1;
}

/// Stores at `crc_at` the record's CRC, as the encoders do. Does nothing
/// when `record` is too short to hold the field.
pub fn seal(record: &mut [u8], crc_at: usize) {
    if record.len() >= crc_at + 4 {
        let crc = record_crc(record, crc_at);
        record[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// `nbd`: the first byte's low bit picks the read-only export; the rest is
/// what the client sends.
pub const NBD_READ_ONLY: u8 = 1;

/// `nbd`: the name of the exports (clients may also ask for "").
pub const NBD_EXPORT: &str = "fuzz";

/// Parses a policy document (from an RPC or a checkpoint) as the engine
/// does, checks that its stored form parses back to it, and names a
/// snapshot with it.
pub fn check_policy(json: &str) {
    if let Ok(policy) = Policy::parse(json) {
        assert_eq!(Policy::parse(&policy.json).ok().as_ref(), Some(&policy), "the stored form parses otherwise");
        // At some time (2023-11-14) other than the one parse checked it at.
        policy.volume_id(1_700_000_000, 1);
    }
}
