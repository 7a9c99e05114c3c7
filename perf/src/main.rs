//! `ilog-perf`: bdevperf for the ilog engine. Runs a workload against an
//! ilog bdev on the native runtime and (with `--compare-raw`) the same
//! workload against the raw base device, in one invocation, and prints
//! IOPS, bandwidth, latency percentiles (hdrhistogram), a per-second
//! series, and ilog/raw ratios.
//!
//! ```text
//! cargo build --release -p ilog-perf
//! target/release/ilog-perf -w randwrite -q 32 -o 4096 -t 30 --size 2G --fill --compare-raw
//! ```
//!
//! The client is one thread keeping `-q` requests in flight (a closed
//! loop); ilog's reactors run on `--cores` threads of their own. The raw
//! device is driven by the client thread itself through one channel: the
//! device's speed with nothing between. `--fill` writes the whole volume
//! (sequentially, 128 KiB at a time) before the timed run, so that it
//! measures a full disk in steady state. `--snapshots N` builds a chain of
//! N snapshot volumes before the run (each after random writes of 1 % of
//! the volume), `--read-volume` reads as of the oldest of them (every
//! lookup N partitions deep), `--snapshot-every SECS` takes snapshots
//! during the run and reports how long each call took, and `--compact`
//! compacts the log in place back to back during the run.

mod report;
mod target;
mod workload;

use clap::Parser;
use ilog_bdev::copy;
use ilog_bdev::device::DmaBuf;
use ilog_bdev::engine::{CompactMode, MountReport, Stats, View};
use ilog_bdev::runtime::native::Ilog;
use report::{Recorder, Report};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{DeviceSpec, IlogTarget, Op, RawTarget, Target};
use workload::{pattern, Kind, Workload};

const BLOCK_SIZE: u32 = 4096;
/// Blocks per write of `--fill`.
const FILL_BLOCKS: u32 = 32;
/// Between two compactions of `--compact`.
const COMPACT_PAUSE: Duration = Duration::from_millis(10);

#[derive(Parser, Debug)]
#[command(name = "ilog-perf", about = "bdevperf for the ilog engine: ilog against its raw base device")]
struct Cli {
    /// Workload.
    #[arg(short = 'w', long, value_enum, default_value = "randwrite")]
    workload: Kind,
    /// Requests in flight.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    queue_depth: usize,
    /// Bytes per request (a multiple of 4096; K, M suffixes).
    #[arg(short = 'o', long = "io-size", default_value = "4K", value_parser = parse_size)]
    io_size: u64,
    /// Seconds the timed run lasts.
    #[arg(short = 't', long = "time", default_value_t = 10.0)]
    seconds: f64,
    /// Reactor cores (threads) ilog runs on.
    #[arg(short = 'm', long, default_value_t = 1)]
    cores: u32,
    /// The base device: `malloc` (RAM) or `file:PATH` (io_uring).
    #[arg(long, default_value = "malloc")]
    device: DeviceSpec,
    /// Bytes of the base device (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// The log's share of the base device (default: the format's).
    #[arg(long)]
    log_percent: Option<u8>,
    /// Write the whole volume before the timed run (steady state).
    #[arg(long)]
    fill: bool,
    /// Also run the workload against the raw base device, and print ratios.
    #[arg(long)]
    compare_raw: bool,
    /// Percent of reads in the `rw` workload.
    #[arg(long, default_value_t = 70)]
    rwmixread: u8,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// After the run, time two mounts: after a crash (the reactors stop
    /// with no checkpoint, the log since the last one is replayed), then
    /// after a clean close.
    #[arg(long)]
    mount: bool,
    /// The replay window (MiB) to format with (default: the format's).
    #[arg(long)]
    replay_window_mib: Option<u64>,
    /// After the timed run, run it again while a full copy of a snapshot
    /// of the volume (`bdev_ilog_copy`) streams to this file: the copy's
    /// rate, and the run's latency against the run before.
    #[arg(long)]
    copy: Option<std::path::PathBuf>,
    /// Before the run, build a chain of this many snapshot volumes, each
    /// after random writes of 1 % of the volume (`-o` each).
    #[arg(long, default_value_t = 0)]
    snapshots: u32,
    /// Reads go to the oldest volume of the `--snapshots` chain, not the
    /// current image.
    #[arg(long, requires = "snapshots")]
    read_volume: bool,
    /// Take a snapshot every this many seconds during the run.
    #[arg(long)]
    snapshot_every: Option<f64>,
    /// Compact the log in place (`bdev_ilog_compact`, no volume) back to
    /// back during the run, a short pause between calls (a call a full log
    /// refuses is tried again).
    #[arg(long)]
    compact: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    Ok(n << shift)
}

/// A queue slot: its buffer, and the request it has in flight.
struct Slot {
    buf: DmaBuf,
    op: Option<Op>,
    started: Instant,
    /// The generation of the slot's last write (verify).
    generation: u64,
}

/// Keeps `qd` requests of `work` in flight on `target` for `duration` and
/// records every completion; `None` for `duration` runs the workload's
/// requests once through (`work` must then end by itself: `ops` requests).
fn drive(target: &mut dyn Target, work: &mut Workload, qd: usize, io_bytes: usize, duration: Duration) -> Report {
    let bs = BLOCK_SIZE as usize;
    let mut slots: Vec<Slot> = (0..qd)
        .map(|_| Slot { buf: DmaBuf::new(io_bytes, 4096), op: None, started: Instant::now(), generation: 0 })
        .collect();
    let mut rec = Recorder::new(io_bytes as u64);
    let mut pending: VecDeque<usize> = (0..qd).collect();
    let mut done = Vec::with_capacity(qd);
    let mut outstanding = 0;
    let mut generation = 1u64;
    let start = Instant::now();
    loop {
        let running = start.elapsed() < duration;
        while running && !pending.is_empty() {
            let s = pending[0];
            let slot = &mut slots[s];
            let op = match slot.op {
                Some(op) => op,
                None => {
                    let op = work.next(s);
                    if op.write {
                        generation += 1;
                        slot.generation = generation;
                        pattern(&mut slot.buf[..op.blocks as usize * bs], op.lba, generation, bs);
                    }
                    slot.op = Some(op);
                    op
                }
            };
            slot.started = Instant::now();
            if !target.submit(s as u32, op, &mut slot.buf) {
                break;
            }
            pending.pop_front();
            outstanding += 1;
        }
        target.poll(&mut done);
        for (s, ok) in done.drain(..) {
            let now = Instant::now();
            let slot = &mut slots[s as usize];
            let op = slot.op.take().expect("a slot in flight has its op");
            outstanding -= 1;
            rec.record(now - start, now - slot.started);
            if !ok {
                rec.errors += 1;
            } else if work.verifies() && !op.write {
                let mut expected = vec![0u8; op.blocks as usize * bs];
                pattern(&mut expected, op.lba, slot.generation, bs);
                if slot.buf[..expected.len()] != expected[..] {
                    rec.mismatches += 1;
                }
            }
            pending.push_back(s as usize);
        }
        if !running && outstanding == 0 {
            break;
        }
    }
    rec.finish("", start.elapsed().min(duration))
}

/// Writes every block of `target` once, sequentially.
fn fill(target: &mut dyn Target, qd: usize) -> Result<(), String> {
    let blocks = target.blocks();
    let mut work = Workload::new(Kind::Write, FILL_BLOCKS, blocks, qd, 0, 0);
    write_units(target, &mut work, blocks / u64::from(FILL_BLOCKS), qd).map_err(|e| format!("fill: {e}"))
}

/// Issues `units` requests of the write workload `work` on `target`, `qd`
/// at a time, and waits for them.
fn write_units(target: &mut dyn Target, work: &mut Workload, units: u64, qd: usize) -> Result<(), String> {
    let bytes = work.io_blocks() as usize * BLOCK_SIZE as usize;
    let mut slots: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::new(bytes, 4096)).collect();
    let mut free: Vec<usize> = (0..qd).collect();
    let (mut issued, mut completed) = (0u64, 0u64);
    let mut done = Vec::new();
    while completed < units {
        while issued < units {
            let Some(&s) = free.last() else { break };
            let op = work.next(s);
            pattern(&mut slots[s], op.lba, 0, BLOCK_SIZE as usize);
            if !target.submit(s as u32, op, &mut slots[s]) {
                break;
            }
            free.pop();
            issued += 1;
        }
        target.poll(&mut done);
        for (s, ok) in done.drain(..) {
            if !ok {
                return Err(format!("a write failed after {completed} of {units}"));
            }
            completed += 1;
            free.push(s as usize);
        }
    }
    Ok(())
}

/// Builds a chain of `n` snapshot volumes on `t`, each after random writes
/// of 1 % of the volume (what every volume keeps must fit in the log's
/// share): the oldest volume's partition.
fn snapshot_chain(t: &mut IlogTarget, n: u32, io_blocks: u32, qd: usize, seed: u64) -> Result<u32, String> {
    let blocks = t.blocks();
    let mut oldest = None;
    for i in 0..n {
        let mut work = Workload::new(Kind::Randwrite, io_blocks, blocks, qd, 0, seed + u64::from(i));
        write_units(t, &mut work, blocks / u64::from(io_blocks) / 100, qd)
            .map_err(|e| format!("snapshot chain, round {i}: {e}"))?;
        let v = t.ilog.snapshot(Some(&format!("perf-{i}"))).map_err(|e| format!("snapshot: {e}"))?;
        oldest.get_or_insert(v.partition);
    }
    oldest.ok_or_else(|| "--snapshots 0: no chain".to_owned())
}

/// Calls `f` every `every` (the next call no sooner than the last one
/// ended) until `stop`: each call's duration.
fn repeat_until(
    stop: Arc<AtomicBool>,
    every: Duration,
    mut f: impl FnMut() -> ilog_bdev::Result<()>,
) -> ilog_bdev::Result<Vec<Duration>> {
    let mut took = Vec::new();
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let started = Instant::now();
        f()?;
        took.push(started.elapsed());
        next = (next + every).max(Instant::now());
    }
    Ok(took)
}

/// Stops ilog as a crash would (no checkpoint, no flush) and mounts again,
/// then closes cleanly and mounts again: what each mount did.
fn time_mounts(
    ilog: IlogTarget,
    dev: std::sync::Arc<dyn ilog_bdev::device::BlockDevice>,
    cores: u32,
) -> Result<(MountReport, MountReport), String> {
    ilog.into_ilog().abort();
    let after_crash = Ilog::start(dev.clone(), cores).map_err(|e| format!("mount after the crash: {e}"))?;
    let crash = after_crash.stats().map_err(|e| e.to_string())?.last_mount;
    after_crash.close().map_err(|e| format!("close: {e}"))?;
    let after_close = Ilog::start(dev, cores).map_err(|e| format!("mount after a clean close: {e}"))?;
    let clean = after_close.stats().map_err(|e| e.to_string())?.last_mount;
    after_close.close().map_err(|e| format!("close: {e}"))?;
    Ok((crash, clean))
}

/// The workload again while a full copy of a snapshot streams to `path`:
/// the run's report and the copy's bytes and seconds.
fn run_during_copy(
    ilog: &mut IlogTarget,
    work: &mut Workload,
    cli: &Cli,
    path: &std::path::Path,
) -> Result<(Report, u64, f64), String> {
    let volume = ilog.ilog.snapshot(Some("perf-copy")).map_err(|e| format!("snapshot: {e}"))?;
    let spec = copy::CopySpec { volume: volume.name, ..Default::default() };
    let plan = copy::plan(ilog.ilog.as_ref(), &spec).map_err(|e| format!("copy plan: {e}"))?;
    let (src, store) = (ilog.ilog.clone(), copy::StreamStore::File(path.to_owned()));
    let progress = std::sync::Arc::new(copy::Progress::default());
    let shown = progress.clone();
    let started = Instant::now();
    let copier = std::thread::spawn(move || copy::copy(src.as_ref(), &plan, &store, &progress));
    let duration = Duration::from_secs_f64(cli.seconds);
    let mut report = drive(ilog, work, cli.queue_depth, cli.io_size as usize, duration);
    report.name = "ilog, copying".into();
    let copied_at_end = shown.bytes_done();
    let copy_seconds = started.elapsed().as_secs_f64();
    copier.join().map_err(|_| "the copy panicked".to_owned())?.map_err(|e| format!("copy: {e}"))?;
    Ok((report, copied_at_end, copy_seconds))
}

/// After a fill: flushes, and waits for the log to drain to a write
/// buffer's worth (half of it), as it does between bursts.
fn settle(t: &IlogTarget) -> Result<(), String> {
    t.ilog.flush().map_err(|e| format!("flush: {e}"))?;
    let started = Instant::now();
    loop {
        let s = t.ilog.stats().map_err(|e| e.to_string())?;
        if s.log_used_bytes * 2 <= s.log_capacity_bytes || started.elapsed() > Duration::from_secs(60) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats_json(s: &Stats) -> serde_json::Value {
    // None when the run wrote nothing (a read run, during which the log
    // may still drain what a fill left).
    let wa = (s.user_bytes_written > 0).then(|| s.device_bytes_written as f64 / s.user_bytes_written as f64);
    json!({
        "volume_blocks": s.volume_blocks,
        "log_capacity_bytes": s.log_capacity_bytes,
        "user_bytes_written": s.user_bytes_written,
        "device_bytes_written": s.device_bytes_written,
        "write_amplification": wa,
        "drains": s.drains,
        "compactions": s.compactions,
        "bytes_moved": s.bytes_moved,
        "segments_freed": s.segments_freed,
    })
}

fn run(cli: &Cli) -> Result<(), String> {
    if cli.io_size == 0 || cli.io_size % u64::from(BLOCK_SIZE) != 0 {
        return Err(format!("-o {}: a multiple of {BLOCK_SIZE} bytes", cli.io_size));
    }
    if cli.read_volume && matches!(cli.workload, Kind::Verify) {
        return Err("--read-volume with -w verify: verify reads back what it wrote to the current image".into());
    }
    if cli.read_volume && cli.snapshots == 0 {
        return Err("--read-volume needs a chain to read from: --snapshots N, N > 0".into());
    }
    let io_blocks = (cli.io_size / u64::from(BLOCK_SIZE)) as u32;
    let duration = Duration::from_secs_f64(cli.seconds);
    let mut out = json!({"config": {
        "workload": cli.workload.name(), "queue_depth": cli.queue_depth, "io_size": cli.io_size,
        "seconds": cli.seconds, "cores": cli.cores, "device": format!("{:?}", cli.device), "size": cli.size,
        "log_percent": cli.log_percent, "fill": cli.fill, "snapshots": cli.snapshots, "read_volume": cli.read_volume,
        "snapshot_every": cli.snapshot_every, "compact": cli.compact}});

    let dev = cli.device.open(cli.size, BLOCK_SIZE)?;
    let mut ilog =
        IlogTarget::format_and_start(dev.clone(), cli.cores, cli.log_percent, cli.replay_window_mib.map(|m| m << 20))?;
    let volume_blocks = ilog.blocks();
    if cli.fill {
        fill(&mut ilog, cli.queue_depth)?;
        settle(&ilog)?;
    }
    if cli.snapshots > 0 {
        let oldest = snapshot_chain(&mut ilog, cli.snapshots, io_blocks, cli.queue_depth, cli.seed + 100)?;
        if cli.read_volume {
            ilog.view = View::Volume(oldest);
        }
    }
    let before = ilog.ilog.stats().map_err(|e| e.to_string())?;
    let mut work = Workload::new(cli.workload, io_blocks, volume_blocks, cli.queue_depth, cli.rwmixread, cli.seed);
    let stop = Arc::new(AtomicBool::new(false));
    let beside = |every: Duration, f: fn(&Ilog) -> ilog_bdev::Result<()>| {
        let (ilog, stop) = (ilog.ilog.clone(), stop.clone());
        std::thread::spawn(move || repeat_until(stop, every, || f(&ilog)))
    };
    let snapshotter =
        cli.snapshot_every.map(|secs| beside(Duration::from_secs_f64(secs), |i| i.snapshot(None).map(drop)));
    // A full log refuses an in-place compaction (it has nowhere to move
    // to); the drain is already at work then, and the next call tries again.
    let compact = |i: &Ilog| match i.compact(None, CompactMode::InPlace) {
        Err(ilog_bdev::Error::NoSpace) => Ok(()),
        r => r,
    };
    let compactor = cli.compact.then(|| beside(COMPACT_PAUSE, compact));
    let mut report = drive(&mut ilog, &mut work, cli.queue_depth, cli.io_size as usize, duration);
    report.name = "ilog".into();
    stop.store(true, Ordering::Relaxed);
    let joined = |t: std::thread::JoinHandle<ilog_bdev::Result<Vec<Duration>>>, what: &str| {
        t.join().map_err(|_| format!("the {what} thread panicked"))?.map_err(|e| format!("{what}: {e}"))
    };
    let snapshot_calls = snapshotter.map(|t| joined(t, "snapshot")).transpose()?;
    let compactions = compactor.map(|t| joined(t, "compaction")).transpose()?;
    ilog.view = View::Current;
    let after = ilog.ilog.stats().map_err(|e| e.to_string())?;
    let during_copy = match &cli.copy {
        Some(path) => {
            let mut work =
                Workload::new(cli.workload, io_blocks, volume_blocks, cli.queue_depth, cli.rwmixread, cli.seed + 1);
            Some(run_during_copy(&mut ilog, &mut work, cli, path)?)
        }
        None => None,
    };
    if let Some((r, bytes, secs)) = &during_copy {
        out["during_copy"] = r.json();
        out["copy"] = json!({"bytes": bytes, "seconds": secs, "mib_per_s": *bytes as f64 / secs / (1 << 20) as f64,
                             "iops_ratio": r.iops / report.iops, "p99_ratio": r.p99_us / report.p99_us});
    }
    if cli.mount {
        let (crash, clean) = time_mounts(ilog, dev, cli.cores)?;
        out["mount"] = json!({
            "crash": {"ms": crash.micros as f64 / 1000.0, "read_bytes": crash.read_bytes},
            "clean": {"ms": clean.micros as f64 / 1000.0, "read_bytes": clean.read_bytes},
        });
    } else {
        ilog.into_ilog().close().map_err(|e| format!("close: {e}"))?;
    }
    let run_stats = Stats {
        user_bytes_written: after.user_bytes_written - before.user_bytes_written,
        device_bytes_written: after.device_bytes_written - before.device_bytes_written,
        drains: after.drains - before.drains,
        compactions: after.compactions - before.compactions,
        bytes_moved: after.bytes_moved - before.bytes_moved,
        segments_freed: after.segments_freed - before.segments_freed,
        ..after
    };
    out["ilog"] = report.json();
    out["ilog_stats"] = stats_json(&run_stats);
    let call_times = |calls: &[Duration]| {
        let ms: Vec<f64> = calls.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        json!({"count": ms.len(), "ms": ms})
    };
    if let Some(calls) = &snapshot_calls {
        out["snapshots"] = call_times(calls);
    }
    if let Some(calls) = &compactions {
        out["compactions"] = call_times(calls);
    }

    let raw = if cli.compare_raw {
        let dev = cli.device.open(cli.size, BLOCK_SIZE)?;
        let mut raw = RawTarget::new(dev, volume_blocks)?;
        if cli.fill {
            fill(&mut raw, cli.queue_depth)?;
        }
        let mut work = Workload::new(cli.workload, io_blocks, volume_blocks, cli.queue_depth, cli.rwmixread, cli.seed);
        let mut r = drive(&mut raw, &mut work, cli.queue_depth, cli.io_size as usize, duration);
        r.name = "raw".into();
        out["raw"] = r.json();
        out["ratio"] = json!({"iops": report.iops / r.iops, "p99": report.p99_us / r.p99_us});
        Some(r)
    } else {
        None
    };

    if cli.json {
        println!("{out:#}");
    } else {
        println!(
            "{} {} B qd {} on {} core(s), {} base of {} MiB ({} MiB volume){}",
            cli.workload.name(),
            cli.io_size,
            cli.queue_depth,
            cli.cores,
            match &cli.device {
                DeviceSpec::Malloc => "malloc".to_owned(),
                DeviceSpec::File(p) => format!("file {}", p.display()),
            },
            cli.size >> 20,
            (volume_blocks * u64::from(BLOCK_SIZE)) >> 20,
            if cli.fill { ", filled first" } else { "" }
        );
        println!("{}", report.line());
        if let Some(r) = &raw {
            println!("{}", r.line());
            println!("ilog/raw: IOPS {:.2}x, p99 {:.2}x", report.iops / r.iops, report.p99_us / r.p99_us);
        }
        let s = &out["ilog_stats"];
        let wa = s["write_amplification"].as_f64().map_or("- (nothing written)".to_owned(), |wa| format!("{wa:.2}"));
        println!(
            "ilog during the run: write amplification {wa}, {} drains, {} compactions, {} segments freed",
            run_stats.drains, run_stats.compactions, run_stats.segments_freed
        );
        println!("{}", report.series_line());
        if let Some(calls) = &snapshot_calls {
            let ms: Vec<String> = calls.iter().map(|d| format!("{:.2}", d.as_secs_f64() * 1000.0)).collect();
            println!("snapshots taken during the run (ms each): {}", ms.join(" "));
        }
        if let Some(calls) = &compactions {
            let total: Duration = calls.iter().sum();
            println!(
                "compaction calls during the run: {} ({:.1} ms each on average), {} compactions done, {} bytes moved",
                calls.len(),
                total.as_secs_f64() * 1000.0 / calls.len().max(1) as f64,
                run_stats.compactions,
                run_stats.bytes_moved
            );
        }
        if let Some(r) = &raw {
            println!("{}", r.series_line());
        }
        if let Some((r, bytes, secs)) = &during_copy {
            println!("{}", r.line());
            println!(
                "during a full copy ({:.0} MiB/s over the run): IOPS {:.2}x, p99 {:.2}x the run before",
                *bytes as f64 / secs / (1 << 20) as f64,
                r.iops / report.iops,
                r.p99_us / report.p99_us
            );
        }
        if cli.mount {
            let m = &out["mount"];
            println!(
                "mount after a crash: {:.1} ms, {:.1} MiB read; after a clean close: {:.1} ms, {:.1} MiB read",
                m["crash"]["ms"].as_f64().unwrap_or(0.0),
                m["crash"]["read_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                m["clean"]["ms"].as_f64().unwrap_or(0.0),
                m["clean"]["read_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
            );
        }
    }
    let failed = report.errors
        + report.mismatches
        + raw.as_ref().map_or(0, |r| r.errors + r.mismatches)
        + during_copy.as_ref().map_or(0, |(r, ..)| r.errors + r.mismatches);
    if failed > 0 {
        return Err(format!("{failed} I/Os failed or read back wrong data"));
    }
    Ok(())
}

fn main() {
    // The engine's own log (RUST_LOG=ilog_bdev=debug shows every drain).
    env_logger::builder().format_timestamp_micros().init();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("ilog-perf: {e}");
        std::process::exit(1);
    }
}
