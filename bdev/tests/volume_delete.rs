//! Deleting a volume recounts the blocks only it pinned a slice per poll,
//! while client writes go on: the space accounting stays exact, whichever
//! blocks the writes overwrite before and after the walk meets them.

mod common;

use common::io::{lend, lend_mut};
use common::sim::{call, small_bdev};
use ilog_bdev::device::sim::Faults;
use ilog_bdev::engine::{audit_space, Reply, Request, View};

const BS: usize = 512;

/// Volume `a`, then 1,000 blocks written and sealed as the volume deleted,
/// then more blocks: 1,500 sealed as volume `c` above it when `b` is
/// deleted, or left in the open partition when the newest volume, `c`, is
/// (the open partition is then the next holder of what it wrote), 1,500 or
/// 320 of them (fewer than the deleted volume's, so the smaller side of
/// it). The walk covers sealed partitions only, several polls' worth, while
/// 16-block writes overwrite the deleted volume's blocks. Over many seeds
/// (each its own interleaving) the counts kept match a recount, and every
/// block reads back its last write.
#[test]
fn a_volume_deleted_while_its_blocks_are_overwritten_keeps_the_space_exact() {
    let (old, new) = (vec![0x11u8; 16 * BS], vec![0x22u8; 16 * BS]);
    for seed in 0..90 {
        let (deleted, above) = [("b", 1500), ("c", 1500), ("c", 320)][seed as usize % 3];
        let mut sim = small_bdev(seed, 16_000, BS as u32, 1);
        let write = |sim: &mut _, lba: u64| {
            call(sim, Request::Write { lba, blocks: 16, buf: lend(&old) }).unwrap();
        };
        let snapshot = |sim: &mut _, name: &str| {
            call(sim, Request::Snapshot { name: Some(name.into()) }).unwrap();
        };
        write(&mut sim, 0);
        snapshot(&mut sim, "a");
        for lba in (0..1000).step_by(16) {
            write(&mut sim, lba);
        }
        snapshot(&mut sim, deleted);
        for lba in (2000..2000 + above).step_by(16) {
            write(&mut sim, lba);
        }
        if deleted == "b" {
            snapshot(&mut sim, "c");
            write(&mut sim, 5000);
        }

        sim.submit(0, 1, Request::DeleteVolume { name: deleted.into() }).unwrap();
        let mut results = Vec::new();
        let (mut next, mut walked) = (0u64, false);
        while results.len() < 1 + next as usize || !sim.shards().iter().all(|s| s.is_idle()) {
            sim.step(&mut |t, r| results.push((t, r)));
            let walking = sim.shards()[0].busy_with().is_some_and(|w| w.contains("a volume change's walk"));
            if walking && next < 1000 / 16 {
                let req = Request::Write { lba: next * 16, blocks: 16, buf: lend(&new) };
                // `new` lives until the end of the test, after the
                // loop stepped every request to completion.
                sim.submit(0, 2 + next, req).unwrap();
                next += 1;
            }
            if walked && !walking {
                // The merge that follows a delete would free the segments
                // whose counts a wrong walk leaves off: it fails its reads,
                // and the counts are audited as the walk left them.
                sim.disk.set_faults(Faults { read_eio_ppm: 1_000_000, write_eio_ppm: 0 });
            }
            walked |= walking;
        }
        sim.disk.set_faults(Faults::default());
        assert!(results.iter().all(|(_, r)| r.is_ok()), "seed {seed}: {results:?}");
        assert!(next > 0, "seed {seed}: no write was submitted during the walk");
        audit_space(sim.shards()).unwrap_or_else(|e| panic!("seed {seed}, {deleted} deleted: space audit: {e}"));
        let mut buf = vec![0u8; 16 * BS];
        for lba in (0..1000).step_by(16) {
            let expected = if lba / 16 < next { &new } else { &old };
            call(&mut sim, Request::Read { lba, blocks: 16, buf: lend_mut(&mut buf), view: View::Current }).unwrap();
            assert!(&buf == expected, "seed {seed}: block {lba} reads {:#x}", buf[0]);
        }
        let listed = call(&mut sim, Request::ListVolumes).unwrap();
        let Reply::Volumes(volumes) = listed else { panic!("seed {seed}: {listed:?}") };
        assert!(volumes.iter().all(|v| v.name != deleted), "seed {seed}: {deleted} is still listed");
    }
}
