//! Compaction at its edges: long zero entries, a client write racing a
//! move of the block it replaces, and the CRCs of moved entries.

mod common;

use common::io::{lend, lend_mut};
use common::sim::{call, small_bdev, small_format};
use ilog_bdev::device::sim::Faults;
use ilog_bdev::device::MallocDevice;
use ilog_bdev::engine::{audit_space, CompactMode, Reply, Request, View};
use ilog_bdev::format::{
    crc32c, Checkpoint, EntryKind, FormatOptions, SegmentId, SummaryChain, SummaryKey, Superblock,
};
use ilog_bdev::runtime::native::Ilog;
use ilog_bdev::runtime::sim::Sim;
use std::sync::Arc;

/// Segments full of live zero entries (unmaps of a whole stripe, each
/// longer than a compaction's move run) compact without costing more segments
/// than they free: a zero entry moves as one entry, never split.
#[test]
fn compacting_long_zero_entries_frees_more_than_it_uses() {
    const BS: u64 = 4096;
    let (stripe_blocks, segment_blocks) = (256u64, 512u64);
    let dev = Arc::new(MallocDevice::new(segment_blocks * 64 + 4096, BS as u32));
    let opts = FormatOptions {
        stripe_bytes: stripe_blocks * BS,
        segment_bytes: segment_blocks * BS,
        log_percent: 50,
        max_volumes: 16,
        ..FormatOptions::default()
    };
    ilog_bdev::engine::format(dev.as_ref(), &opts, [7; 16]).unwrap();
    let ilog = Ilog::start(dev, 1).unwrap();
    for _ in 0..(segment_blocks - 1) * 3 {
        ilog.unmap(0, stripe_blocks as u32).unwrap();
    }
    ilog.flush().unwrap();
    let before = ilog.stats().unwrap();
    ilog.compact(None, CompactMode::InPlace).expect("compaction");
    let after = ilog.stats().unwrap();
    assert!(
        after.segments_free >= before.segments_free,
        "compaction lost segments: {} free before, {} after",
        before.segments_free,
        after.segments_free
    );
    let mut buf = vec![0xffu8; stripe_blocks as usize * BS as usize];
    ilog.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the unmapped stripe reads zeros");
    ilog.close().unwrap();
}

/// A client write of a block compaction is about to move into the open
/// partition, whose data write then fails: the block is still live and
/// must move before its segment is freed. Over many seeds (each a
/// different interleaving and set of failed writes), the space accounting
/// stays exact and the block reads back as one of the two versions.
#[test]
fn a_failed_write_racing_a_move_keeps_the_old_block() {
    const BS: usize = 512;
    let (old, new, other) = (vec![0x11u8; 16 * BS], vec![0x22u8; 16 * BS], vec![0x33u8; 16 * BS]);
    let mut raced = 0;
    for seed in 0..400 {
        let mut sim = small_bdev(seed, 4000, BS as u32, 1);
        call(&mut sim, Request::Write { lba: 0, blocks: 16, buf: lend(&old) }).unwrap();
        for _ in 0..12 {
            call(&mut sim, Request::Write { lba: 32, blocks: 16, buf: lend(&other) }).unwrap();
        }
        call(&mut sim, Request::Flush).unwrap();
        sim.submit(0, 1, Request::Compact { volume: None, mode: CompactMode::InPlace }).unwrap();
        let mut results = Vec::new();
        let mut submitted = false;
        for _ in 0..1_000_000 {
            sim.step(&mut |t, r| results.push((t, r)));
            if !submitted && sim.shards()[0].busy_with().is_some_and(|w| w.contains("a victim's moves")) {
                // `new` outlives every seed's run.
                sim.submit(0, 2, Request::Write { lba: 0, blocks: 16, buf: lend(&new) }).unwrap();
                sim.step(&mut |t, r| results.push((t, r)));
                sim.disk.set_faults(Faults { read_eio_ppm: 0, write_eio_ppm: 500_000 });
                submitted = true;
            }
            if results.len() >= 2 && sim.shards().iter().all(|s| s.is_idle()) {
                break;
            }
        }
        sim.disk.set_faults(Faults::default());
        let ok = |t: u64| results.iter().find(|(x, _)| *x == t).map(|(_, r)| r.is_ok());
        if ok(2) != Some(false) || ok(1) != Some(true) {
            continue;
        }
        raced += 1;
        audit_space(sim.shards()).unwrap_or_else(|e| panic!("seed {seed}: space audit: {e}"));
        // Reuse every freed segment, then read the block back.
        for _ in 0..300 {
            call(&mut sim, Request::Write { lba: 32, blocks: 16, buf: lend(&other) }).unwrap();
        }
        let mut buf = vec![0u8; 16 * BS];
        call(&mut sim, Request::Read { lba: 0, blocks: 16, buf: lend_mut(&mut buf), view: View::Current }).unwrap();
        assert!(buf == old || buf == new, "seed {seed}: block 0 reads {:#x}, another block's data", buf[0]);
    }
    assert!(raced > 0, "no seed had the failed write race a successful compaction");
    println!("{raced} of 400 seeds raced a failed write against a move");
}

/// Replay trusts a moved entry past the checkpoint by its data CRC, so a
/// move must leave a CRC that matches what it wrote: one computed over the
/// compaction's buffer, or the source entry's own when the device copied a
/// whole entry. After compacting entries that are wholly and partly live,
/// with and without device copies, every data entry on the media checks.
#[test]
fn moved_entries_carry_crcs_that_match_their_data() {
    const BS: u32 = 512;
    for (seed, copy) in [(1, true), (2, false), (3, true), (4, false)] {
        let mut sim = Sim::new(seed, 4000, BS);
        sim.disk.set_copy(copy);
        sim.format(&small_format(BS)).unwrap();
        sim.mount(2).unwrap();
        // Entries of 1 to 8 blocks, each with its own bytes; then half of
        // them partly or wholly rewritten.
        let volume = sim.submitter().volume_blocks();
        let mut n = 0u8;
        let mut write = |sim: &mut Sim, lba: u64, blocks: u32| {
            n = n.wrapping_add(1);
            let data: Vec<u8> = (0..blocks * BS).map(|i| (i as u8).wrapping_mul(31) ^ n).collect();
            call(sim, Request::Write { lba, blocks, buf: lend(&data) }).unwrap();
        };
        for lba in (0..volume.min(600)).step_by(8) {
            write(&mut sim, lba, 1 + (lba / 8 % 8) as u32);
        }
        for lba in (0..volume.min(600)).step_by(16) {
            write(&mut sim, lba + lba / 16 % 4, 2);
        }
        call(&mut sim, Request::Compact { volume: None, mode: CompactMode::InPlace }).unwrap();
        let Reply::Stats(st) = call(&mut sim, Request::Stats).unwrap() else { panic!("stats") };
        assert!(st.bytes_moved > 0, "seed {seed}: nothing moved");
        assert_eq!(st.bytes_copied > 0, copy, "seed {seed}: device copies with copy offload {copy}");
        call(&mut sim, Request::Close).unwrap();
        sim.unmount();

        // Every entry the clean checkpoint trusts, checked as replay would.
        let disk = &sim.disk;
        let sb = Superblock::decode(&disk.peek(0)).unwrap().unwrap();
        let geo = sb.geometry;
        let ckpt = (0..2)
            .filter_map(|slot| {
                let start = geo.ckpt_slot_start(slot);
                let len = Checkpoint::peek_len(&disk.peek(start)).ok()??;
                let bytes: Vec<u8> = (0..len.div_ceil(BS as usize) as u64).flat_map(|i| disk.peek(start + i)).collect();
                Checkpoint::decode(&bytes).ok()?
            })
            .max_by_key(|c| c.generation)
            .expect("a checkpoint");
        let mut checked = 0;
        for rec in &ckpt.segments {
            let key = SummaryKey { id: SegmentId { epoch: rec.epoch, seq: rec.seq }, base: rec.partition };
            let mut chain = SummaryChain::new(sb.uuid, key, geo.entries_per_summary());
            for g in 0..geo.segment_blocks / 2 {
                let slots =
                    [disk.peek(geo.summary_slot(rec.segno, g, 0)), disk.peek(geo.summary_slot(rec.segno, g, 1))];
                if !chain.push([&slots[0], &slots[1]]) {
                    break;
                }
            }
            let entries = chain.into_entries();
            for e in entries.iter().take(rec.trusted_entries as usize).filter(|e| e.kind == EntryKind::Data) {
                let start = geo.segment_start(rec.segno) + u64::from(e.data_offset);
                let data: Vec<u8> = (0..u64::from(e.blocks)).flat_map(|b| disk.peek(start + b)).collect();
                assert_eq!(crc32c(&data), e.data_crc, "seed {seed}: segment {} entry {e:?}", rec.segno);
                checked += 1;
            }
        }
        assert!(checked > 0, "seed {seed}: no entry checked");
    }
}
