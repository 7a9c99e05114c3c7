//! Close: what was queued behind it is refused, and its checkpoint stays
//! the last one, clean.

mod common;

use common::io::lend;
use common::sim::small_bdev;
use ilog_bdev::engine::{CompactMode, Request};
use ilog_bdev::format::{Checkpoint, Superblock};
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::Error;

const BS: usize = 4096;

fn newest_checkpoint(sim: &Sim) -> Checkpoint {
    let sb = Superblock::decode(&sim.disk.peek(0)).unwrap().expect("a superblock");
    let geo = sb.geometry;
    (0..2)
        .filter_map(|slot| {
            let start = geo.ckpt_slot_start(slot);
            let len = Checkpoint::peek_len(&sim.disk.peek(start)).ok()??;
            let bytes: Vec<u8> = (0..len.div_ceil(BS) as u64).flat_map(|i| sim.disk.peek(start + i)).collect();
            Checkpoint::decode(&bytes).ok()?
        })
        .max_by_key(|c| c.generation)
        .expect("a checkpoint")
}

#[test]
fn operations_queued_behind_a_close_are_refused() {
    let mut sim = small_bdev(1, 32768, BS as u32, 1);
    let buf = vec![0xabu8; 16 * BS];
    let mut token = 100;
    for _ in 0..6 {
        for lba in (0..512u64).step_by(16) {
            token += 1;
            // `buf` outlives the run that completes the write.
            sim.submit(0, token, Request::Write { lba, blocks: 16, buf: lend(&buf) }).unwrap();
        }
        sim.run_until_idle(&mut |_, r| {
            r.unwrap();
        });
    }
    sim.submit(0, 1, Request::Close).unwrap();
    // Submitted before the close completed: queued behind it.
    sim.submit(0, 2, Request::Compact { volume: None, mode: CompactMode::InPlace }).unwrap();
    sim.submit(0, 3, Request::Snapshot { name: Some("after-close".into()) }).unwrap();
    let mut results = Vec::new();
    sim.run_until_idle(&mut |t, r| results.push((t, r)));
    results.sort_by_key(|(t, _)| *t);
    assert!(results[0].1.is_ok(), "the close: {:?}", results[0].1);
    for (t, r) in &results[1..] {
        assert_eq!(r.as_ref().err(), Some(&Error::ShuttingDown), "request {t} after the close");
    }
    let ckpt = newest_checkpoint(&sim);
    assert!(ckpt.clean, "the last checkpoint after a close is clean");
    assert!(ckpt.volumes.iter().all(|v| v.name != "after-close"), "no snapshot after the close");
}
