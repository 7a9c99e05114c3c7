//! `Checkpoint::decode` on a slot read from the device (torn, stale, of
//! format version 1 or 2), and the policy document it carries, as mount
//! parses it: input `[mode] slot` (see `ilog_fuzz::mode`).

#![no_main]

use ilog_bdev::format::{crc32c, Checkpoint};
use ilog_fuzz::{check_policy, mode, seal};
use libfuzzer_sys::fuzz_target;

/// Header length and CRC offset of versions 1 and 2, and where the payload
/// CRC sits (bdev/src/format/checkpoint.rs).
const V1_HEADER: (usize, usize) = (96, 92);
const V2_HEADER: (usize, usize) = (128, 124);
const PAYLOAD_CRC_AT: usize = 72;

/// Recomputes both CRCs: the header's covers the payload's.
fn seal_checkpoint(buf: &mut [u8]) {
    let Some(version) = buf.get(8..12) else { return };
    let (header_len, crc_at) = if version == 1u32.to_le_bytes() { V1_HEADER } else { V2_HEADER };
    let Some(header) = buf.get_mut(..header_len) else { return };
    seal(header, crc_at);
    let Ok(Some(len)) = Checkpoint::peek_len(buf) else { return };
    let Some(payload) = buf.get(header_len..len) else { return };
    let crc = crc32c(payload);
    buf[PAYLOAD_CRC_AT..PAYLOAD_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    seal(&mut buf[..header_len], crc_at);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, slot)) = data.split_first() else { return };
    let mut slot = slot.to_vec();
    if flags & mode::SEAL != 0 {
        seal_checkpoint(&mut slot);
    }
    let Ok(Some(c)) = Checkpoint::decode(&slot) else { return };
    check_policy(&c.policy);
    // Encoding writes version 2; a version 1 checkpoint (no window) comes
    // back with an empty one.
    if c.window.is_some() {
        let mut again = vec![0; c.encoded_len()];
        c.encode(&mut again);
        assert_eq!(Checkpoint::decode(&again).ok().flatten().as_ref(), Some(&c));
    }
});
