//! Bounded recovery: a mount after a crash reads the log written since the
//! last checkpoint, and checkpoints come often enough that this stays
//! within the replay window, however much was written and however large
//! the log. Counted in bytes mount reads, not in seconds.

use ilog_bdev::device::MallocDevice;
use ilog_bdev::format::FormatOptions;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::native::Ilog;
use std::sync::Arc;

const BS: usize = 4096;
const MIB: u64 = 1 << 20;

/// Writes `bytes` of random 4 KiB blocks over the volume.
fn write_random(ilog: &Ilog, bytes: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let blocks = ilog.volume_blocks();
    let buf = vec![0x5au8; BS];
    for _ in 0..bytes / BS as u64 {
        ilog.write(rng.below(blocks), &buf).expect("write");
    }
}

fn crash_mount_reads_within_the_window(cores: u32) {
    let window = 8 * MIB;
    let dev = Arc::new(MallocDevice::new(512 * MIB / BS as u64, BS as u32));
    let opts = FormatOptions {
        stripe_bytes: 256 << 10,
        segment_bytes: MIB,
        replay_window_bytes: window,
        ..FormatOptions::default()
    };
    ilog_bdev::engine::format(dev.as_ref(), &opts, [3; 16]).expect("format");
    let ilog = Ilog::start(dev.clone(), cores).expect("start");
    let log = ilog.stats().expect("stats").log_capacity_bytes;
    assert!(log > 8 * window, "the log ({log} bytes) dwarfs the window");
    // Several windows' worth, the last of it never followed by a clean
    // close or a flush.
    write_random(&ilog, 6 * window, u64::from(cores));
    ilog.abort();

    let ilog = Ilog::start(dev, cores).expect("mount after the crash");
    let mount = ilog.stats().expect("stats").last_mount;
    assert!(mount.crash, "the mount replayed the log: {mount:?}");
    // The window's segments (a half more, taken while a checkpoint was
    // being written), the cores' open ones, and every trusted segment's
    // summaries and the checkpoint: a few MiB.
    let bound = window * 3 / 2 + u64::from(cores) * MIB + 4 * MIB;
    assert!(
        mount.read_bytes <= bound,
        "a crash mount read {} MiB, over {} MiB: the window is {} MiB, the log {} MiB",
        mount.read_bytes / MIB,
        bound / MIB,
        window / MIB,
        log / MIB
    );
    ilog.close().expect("close");
}

#[test]
fn a_crash_mount_reads_within_the_replay_window_one_core() {
    crash_mount_reads_within_the_window(1);
}

#[test]
fn a_crash_mount_reads_within_the_replay_window_two_cores() {
    crash_mount_reads_within_the_window(2);
}
