//! A segment's header and summary blocks as replay reads them (torn,
//! stale, or another format's): input `[mode] [base partition, u32 LE]
//! block` (see `ilog_fuzz::mode`). A summary is decoded as one of the
//! segment named by its own header fields, so that it gets past the
//! identity checks.

#![no_main]

use ilog_bdev::format::{
    SegmentHeader, SegmentId, SummaryBlock, SummaryChain, SummaryKey, SUMMARY_ENTRY_LEN, SUMMARY_HEADER_LEN,
};
use ilog_fuzz::{mode, seal};
use libfuzzer_sys::fuzz_target;

/// Where the CRCs sit (bdev/src/format/segment.rs).
const HEADER_CRC_AT: usize = 44;
const SUMMARY_CRC_AT: usize = 36;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((base, raw)) = rest.split_first_chunk::<4>() else { return };
    let Some(uuid) = raw.get(8..24).map(|u| <[u8; 16]>::try_from(u).expect("16 bytes")) else { return };
    let mut block = raw.to_vec();
    if flags & mode::SUMMARY == 0 {
        if flags & mode::SEAL != 0 {
            seal(&mut block, HEADER_CRC_AT);
        }
        let Some(header) = SegmentHeader::decode(&block, &uuid) else { return };
        let mut again = vec![0; block.len()];
        header.encode(&mut again);
        assert_eq!(SegmentHeader::decode(&again, &uuid), Some(header));
        return;
    }
    if raw.len() < SUMMARY_HEADER_LEN {
        return;
    }
    let word = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let id = SegmentId { epoch: word(12), seq: u64::from(word(16)) | u64::from(word(20)) << 32 };
    let (group, count) = (word(24), word(32) as usize);
    let key = SummaryKey { id, base: u32::from_le_bytes(*base) };
    if flags & mode::SEAL != 0 {
        let end = count.saturating_mul(SUMMARY_ENTRY_LEN).saturating_add(SUMMARY_HEADER_LEN);
        if let Some(covered) = block.get_mut(..end) {
            seal(covered, SUMMARY_CRC_AT);
        }
    }
    let decoded = SummaryBlock::decode(&block, &uuid, key, group);
    if let Ok(Some(summary)) = &decoded {
        let mut again = vec![0; block.len()];
        SummaryBlock::encode(&uuid, key, group, summary.version, &summary.entries, &mut again);
        assert_eq!(SummaryBlock::decode(&again, &uuid, key, group).ok().flatten().as_ref(), Some(summary));
    }
    // A chain reads groups from 0, in a block of the size the block is.
    if group == 0 {
        let per_summary = ((block.len() - SUMMARY_HEADER_LEN) / SUMMARY_ENTRY_LEN) as u32;
        let mut chain = SummaryChain::new(uuid, key, per_summary);
        chain.push([&block, &block]);
        let entries = chain.into_entries();
        match decoded {
            Ok(Some(summary)) => assert_eq!(entries, summary.entries),
            _ => assert!(entries.is_empty()),
        }
    }
});
