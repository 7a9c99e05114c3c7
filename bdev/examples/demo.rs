//! A tour of the engine on native reactors over a RAM device: writes, a
//! snapshot, reads as of it, the log cursor, a clean close and a re-mount.

use ilog_bdev::device::MallocDevice;
use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::native::Ilog;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) as u32;
    let dev = Arc::new(MallocDevice::new(64 * 1024, 4096)); // 256 MiB
    let geometry = ilog_bdev::engine::format(dev.as_ref(), &FormatOptions::default(), *b"ilog-demo-uuid!!")?;
    println!(
        "formatted a 256 MiB malloc device: volume {} MiB, log {} segments of {} KiB",
        geometry.volume_blocks * 4 / 1024,
        geometry.segment_count,
        geometry.segment_blocks * 4
    );

    let ilog = Ilog::start(dev.clone(), cores)?;
    println!("started {cores} reactors");
    let block = |byte: u8| vec![byte; 4096];
    for lba in 0..64 {
        ilog.write(lba, &block(1))?;
    }
    let before = ilog.snapshot(Some("before-upgrade"))?;
    println!("snapshot volume {:?} sealed partition {}", before.name, before.partition);
    for lba in 0..32 {
        ilog.write(lba, &block(2))?;
    }
    ilog.unmap(32, 16)?;
    let after = ilog.snapshot(None)?;
    println!("snapshot volume {:?} sealed partition {}", after.name, after.partition);

    let mut buf = vec![0u8; 4096];
    for (view, lba) in [(None, 0), (Some(&before.name), 0), (Some(&before.name), 40), (None, 40)] {
        match view {
            Some(v) => ilog.read_volume(v, lba, &mut buf)?,
            None => ilog.read(lba, &mut buf)?,
        }
        println!("read lba {lba:>2} of {:<16} -> {:#04x}", view.map_or("current", |v| v.as_str()), buf[0]);
    }

    let batch = ilog.log_read(0, 5, false)?;
    println!("first log entries:");
    for e in &batch.entries {
        println!(
            "  seq {:#x} partition {} volume {:?} lba {} x{} {:?}",
            e.sequence, e.partition, e.volume, e.lba, e.blocks, e.kind
        );
    }
    let stats = ilog.stats()?;
    println!("stats: {} of {} segments free, {} volumes", stats.segments_free, stats.segments_total, stats.volumes);
    ilog.close()?;

    let ilog = Ilog::start(dev, 1)?;
    ilog.read_volume("before-upgrade", 10, &mut buf)?;
    println!("re-mounted on 1 core after a clean close: before-upgrade lba 10 -> {:#04x}", buf[0]);
    println!("volumes: {:?}", ilog.volumes()?.iter().map(|v| v.name.as_str()).collect::<Vec<_>>());
    ilog.close()?;
    Ok(())
}
