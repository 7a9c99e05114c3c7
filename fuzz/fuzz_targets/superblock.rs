//! `Superblock::decode` and `choose` on one copy read from the device
//! (torn or foreign): input `[mode] block` (see `ilog_fuzz::mode`).

#![no_main]

use ilog_bdev::format::Superblock;
use ilog_fuzz::{mode, seal};
use libfuzzer_sys::fuzz_target;

/// Where the superblock's CRC sits (bdev/src/format/superblock.rs).
const CRC_AT: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, block)) = data.split_first() else { return };
    let mut block = block.to_vec();
    if flags & mode::SEAL != 0 {
        seal(&mut block, CRC_AT);
    }
    let Ok(Some(sb)) = Superblock::decode(&block) else { return };
    let mut again = vec![0; block.len()];
    sb.encode(&mut again);
    assert_eq!(Superblock::decode(&again).ok().flatten(), Some(sb), "encode(decode(block)) decodes otherwise");
    // What mount does next: check the geometry against the device, and lay
    // out the regions it describes.
    let g = sb.geometry;
    let Ok(chosen) = Superblock::choose(&block, &[], g.device_blocks, g.block_size) else { return };
    assert_eq!(chosen, sb);
    let last = g.segment_count - 1;
    assert!(g.ckpt_slot_start(1) < g.baseline_start);
    assert!(g.segment_start(last) + u64::from(g.segment_blocks) <= g.device_blocks);
    assert!(g.summary_slot(last, 0, 1) < g.segment_start(last) + u64::from(g.segment_blocks));
    assert!(g.entries_per_summary() > 0);
    assert!((2..=g.segment_count as usize).contains(&g.window_segments(u32::MAX)));
});
