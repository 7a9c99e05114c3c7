//! Compaction benchmark on the native runtime over a malloc device.
//!
//! 1. Raw device bandwidth: 1 MiB sequential writes straight to malloc
//!    device channels (one thread, then one thread per core), and 1 MiB
//!    device copies (one thread per core): a copy, like a move, reads every
//!    byte it writes.
//!    Then the machine's floor (`machine_floor`): the same foreground load
//!    against threads that answer at once and otherwise only copy runs on
//!    the device, idle and copying.
//! 2. Fill: the working set is written sequentially in 32-block writes.
//! 3. `--passes` times: a random half of the working set is overwritten with
//!    aligned `--overwrite-blocks` writes (older segments hold about 50 %
//!    garbage) and a snapshot seals it; then the idle phase (a 4 KiB random
//!    read/write mix, paced at `--iops` with at most `--qd` in flight, for
//!    `--seconds`, compaction quiet) and the compaction phase (the same
//!    load while the previous pass's volume is deleted, its partition
//!    merged into the next, and then everything compacted in place, until
//!    that completes). Latency is per op, from submit to the completion
//!    callback.
//! 4. A table per run: idle vs during-compaction latency and their p99
//!    ratio, compaction throughput (bytes moved over the compactions' wall
//!    time) and its share of the raw write and copy bandwidths, write
//!    amplification.
//!
//! ```text
//! cargo build --release -p ilog-bdev --example compact_bench
//! target/release/examples/compact_bench [--flag value]...
//! ```
//! Flags (defaults): `--device-mib 3072`, `--cores 2`, `--live-pct 40` (the
//! working set, % of the log), `--seconds 3`, `--qd 4`, `--read-pct 70`,
//! `--iops 20000` (0: closed loop), `--passes 4`, `--segment-mib 4`,
//! `--seed 1`, `--runs 1`, `--overwrite-blocks 1`. Results: `perf/RESULTS.md`.

use crossbeam_queue::ArrayQueue;
use ilog_bdev::device::{BlockDevice, DevOp, DevRequest, DmaBuf, IoBuf, MallocDevice};
use ilog_bdev::engine::{CompactMode, Request, Stats, View};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::native::{Callback, Ilog};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const BS: u64 = 4096;
const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    device_mib: u64,
    cores: u32,
    live_pct: u64,
    seconds: f64,
    qd: usize,
    read_pct: u64,
    segment_mib: u64,
    seed: u64,
    runs: u32,
    /// Foreground ops per second (0: closed loop, as fast as it goes).
    iops: u64,
    /// Garbage-making overwrite, idle phase and compaction, this many times.
    passes: u32,
    /// Blocks per garbage-making write, aligned: 1 leaves the fill's 32-block
    /// entries half live in 1-3 block fragments, 32 leaves every entry
    /// wholly live or wholly dead.
    overwrite_blocks: u32,
}

fn parse_args() -> Args {
    let mut a = Args {
        device_mib: 3072,
        cores: 2,
        live_pct: 40,
        seconds: 3.0,
        qd: 4,
        read_pct: 70,
        segment_mib: 4,
        seed: 1,
        runs: 1,
        iops: 20_000,
        passes: 4,
        overwrite_blocks: 1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "compact_bench [--device-mib N] [--cores N] [--live-pct N] [--seconds S] [--qd N] [--read-pct N] \
                 [--iops N] [--passes N] [--segment-mib N] [--seed N] [--runs N] [--overwrite-blocks N]"
            );
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || value.parse::<u64>().unwrap_or_else(|_| panic!("{flag}: {value} is not a number"));
        match flag.as_str() {
            "--device-mib" => a.device_mib = num(),
            "--cores" => a.cores = num() as u32,
            "--live-pct" => a.live_pct = num(),
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| panic!("{flag}: {value} is not a number")),
            "--qd" => a.qd = num() as usize,
            "--read-pct" => a.read_pct = num(),
            "--segment-mib" => a.segment_mib = num(),
            "--seed" => a.seed = num(),
            "--runs" => a.runs = num() as u32,
            "--iops" => a.iops = num(),
            "--passes" => a.passes = num() as u32,
            "--overwrite-blocks" => a.overwrite_blocks = num() as u32,
            _ => panic!("unknown flag {flag} (--help lists them)"),
        }
    }
    assert!(
        a.cores >= 1
            && a.qd >= 1
            && a.passes >= 1
            && (1..=32).contains(&a.overwrite_blocks)
            && a.read_pct <= 100
            && (1..=90).contains(&a.live_pct)
    );
    a
}

// ---- 1. raw device bandwidth ------------------------------------------------------

/// What a raw bandwidth run does with the device.
#[derive(Clone, Copy, PartialEq)]
enum Raw {
    /// Writes zeros from a buffer.
    Write,
    /// Copies blocks within the device (`DevOp::Copy`): what a move does,
    /// reading each byte and writing it elsewhere.
    Copy,
}

/// Writes (or copies) `bytes` in 1 MiB requests from `threads` threads,
/// each on its own channel and its own part of the device; returns MB/s.
fn raw_bandwidth(dev: &Arc<MallocDevice>, threads: u32, bytes: u64, raw: Raw) -> f64 {
    const REQ_BLOCKS: u32 = 256;
    const QD: usize = 8;
    let per_thread = bytes / BS / u64::from(threads) / u64::from(REQ_BLOCKS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let dev = dev.clone();
            s.spawn(move || {
                let mut ch = dev.channel().expect("malloc channel");
                let mut buf = DmaBuf::new((u64::from(REQ_BLOCKS) * BS) as usize, BS as usize);
                let base = u64::from(t) * per_thread * u64::from(REQ_BLOCKS);
                let mut inflight = 0;
                for i in 0..per_thread {
                    // A copy's source is half the thread's part away.
                    let src = base + (i + per_thread / 2) % per_thread * u64::from(REQ_BLOCKS);
                    let req = DevRequest {
                        op: if raw == Raw::Copy { DevOp::Copy { src } } else { DevOp::Write },
                        block: base + i * u64::from(REQ_BLOCKS),
                        nblocks: REQ_BLOCKS,
                        buf: buf.io_buf(),
                        tag: i,
                    };
                    // `buf` outlives every request (all are polled before it
                    // drops), and is only read by writes; a copy stays inside
                    // the device.
                    ch.submit(req).expect("queue has room");
                    inflight += 1;
                    if inflight == QD {
                        inflight -= ch.poll(&mut |_, st| st.expect("malloc write"));
                    }
                }
                while ch.outstanding() > 0 {
                    ch.poll(&mut |_, st| st.expect("malloc write"));
                }
            });
        }
    });
    (per_thread * u64::from(threads) * u64::from(REQ_BLOCKS) * BS) as f64 / MIB / start.elapsed().as_secs_f64()
}

// ---- 1b. the machine's floor --------------------------------------------------------

/// What the foreground would see from reactors that did nothing but the
/// target's share of the compaction's device work, on this machine: a
/// thread per core answers each request the moment it looks (no engine
/// work at all) and, when copying, copies `MOVE_RUN`-block runs on the
/// device one at a time (compaction's run length), paced to half the raw
/// copy bandwidth, the least the target asks of a compaction. The load is
/// the bench's own, paced the same. On a device the host copies for, an
/// engine whose reactors do that copying too cannot expect a lower p99
/// while compacting: the machine's stalls (interrupts, the hypervisor) that
/// land in a copy delay the requests that arrive meanwhile, and the
/// engine's own work only adds to the wait.
struct Floor {
    idle_p99: f64,
    copying_p99: f64,
    copy_mbs: f64,
}

/// Compaction's move run, in blocks (the engine's `MOVE_RUN_BLOCKS`).
const MOVE_RUN: u32 = 8;

fn machine_floor(dev: &Arc<MallocDevice>, a: &Args, raw_copy: f64) -> Floor {
    let (idle, _) = floor_phase(dev, a, 0.0);
    let (copying, copy_mbs) = floor_phase(dev, a, raw_copy / 2.0);
    Floor { idle_p99: pct(&idle, 99.0), copying_p99: pct(&copying, 99.0), copy_mbs }
}

/// One floor phase of `a.seconds`, copying `copy_mbs` MB/s in all (none if
/// 0): sorted latencies (ns), and the copy bandwidth reached in MB/s.
fn floor_phase(dev: &Arc<MallocDevice>, a: &Args, copy_mbs: f64) -> (Vec<u64>, f64) {
    let sleep = std::thread::available_parallelism().map_or(true, |n| n.get() <= a.cores as usize);
    let requests: Vec<ArrayQueue<Instant>> = (0..a.cores).map(|_| ArrayQueue::new(a.qd)).collect();
    let answers = ArrayQueue::<u64>::new(a.qd);
    let stop = AtomicBool::new(false);
    let client = std::thread::current();
    let part = dev.num_blocks() / u64::from(a.cores);
    let start = Instant::now();
    let mut latencies = Vec::new();
    let moved: u64 = std::thread::scope(|s| {
        let cores: Vec<_> = (0..a.cores)
            .map(|c| {
                let (requests, answers, stop, client) = (&requests[c as usize], &answers, &stop, client.clone());
                s.spawn(move || {
                    let mut ch = dev.channel().expect("malloc channel");
                    let runs = part / 2 / u64::from(MOVE_RUN);
                    let (base, mut run, mut moved) = (u64::from(c) * part, 0, 0u64);
                    let per_run = (copy_mbs > 0.0).then(|| {
                        Duration::from_secs_f64(f64::from(MOVE_RUN) * BS as f64 / MIB / (copy_mbs / f64::from(a.cores)))
                    });
                    while !stop.load(Ordering::Acquire) {
                        while let Some(t0) = requests.pop() {
                            let _ = answers.push(t0.elapsed().as_nanos() as u64);
                            if sleep {
                                client.unpark();
                            }
                        }
                        if per_run.is_none_or(|p| start + p * run as u32 > Instant::now()) {
                            std::hint::spin_loop();
                            continue;
                        }
                        let block = base + run % runs * u64::from(MOVE_RUN);
                        let req = DevRequest {
                            op: DevOp::Copy { src: block + part / 2 },
                            block,
                            nblocks: MOVE_RUN,
                            buf: IoBuf::EMPTY,
                            tag: 0,
                        };
                        ch.submit(req).expect("queue has room");
                        ch.poll(&mut |_, st| st.expect("malloc copy"));
                        run += 1;
                        moved += u64::from(MOVE_RUN) * BS;
                    }
                    moved
                })
            })
            .collect();
        let interval = (a.iops > 0).then(|| Duration::from_secs_f64(1.0 / a.iops as f64));
        let (mut issued, mut in_flight) = (0u64, 0usize);
        while start.elapsed().as_secs_f64() < a.seconds || in_flight > 0 {
            let due = interval.map_or(start, |i| start + i * issued as u32);
            if in_flight < a.qd && start.elapsed().as_secs_f64() < a.seconds && Instant::now() >= due {
                let _ = requests[(issued % u64::from(a.cores)) as usize].push(Instant::now());
                issued += 1;
                in_flight += 1;
            } else if let Some(ns) = answers.pop() {
                latencies.push(ns);
                in_flight -= 1;
            } else if sleep {
                std::thread::park_timeout(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(1)));
            } else {
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Release);
        cores.into_iter().map(|c| c.join().expect("floor core")).sum()
    });
    latencies.sort_unstable();
    (latencies, moved as f64 / MIB / start.elapsed().as_secs_f64())
}

// ---- async I/O helpers ----------------------------------------------------------------

/// Submits `req`, retrying while the core's queue is full.
fn submit(ilog: &Ilog, req: Request, done: Callback) {
    let mut done = done;
    loop {
        match ilog.submit(None, req.clone(), done) {
            Ok(()) => return,
            Err(r) if r.error == ilog_bdev::Error::Io(libc::EAGAIN) => {
                done = r.done;
                std::thread::yield_now();
            }
            Err(r) => panic!("submit refused: {}", r.error),
        }
    }
}

/// A block-aligned buffer of `len` bytes of `byte`.
fn filled(byte: u8, len: usize) -> DmaBuf {
    let mut buf = DmaBuf::new(len, BS as usize);
    buf.fill(byte);
    buf
}

/// Writes `(lba, blocks)` pieces with `qd` writes in flight; returns the
/// number that failed.
fn write_all(ilog: &Ilog, pieces: impl Iterator<Item = (u64, u32)>, qd: usize, max_blocks: u32) -> u64 {
    let mut bufs: Vec<DmaBuf> = (0..qd).map(|i| filled(i as u8 + 1, (u64::from(max_blocks) * BS) as usize)).collect();
    let (tx, rx) = mpsc::channel::<(usize, bool)>();
    let mut free: Vec<usize> = (0..qd).collect();
    let mut failed = 0;
    for (lba, blocks) in pieces {
        let slot = match free.pop() {
            Some(s) => s,
            None => {
                let (s, ok) = rx.recv().expect("completion");
                failed += u64::from(!ok);
                s
            }
        };
        let tx = tx.clone();
        let req = Request::Write { lba, blocks, buf: bufs[slot].io_buf() };
        let done: Callback = Box::new(move |r| {
            let _ = tx.send((slot, r.is_ok()));
        });
        // The slot's buffer is reused only after its completion came back,
        // and `bufs` outlives the final wait for all of them.
        submit(ilog, req, done);
    }
    for _ in free.len()..qd {
        let (_, ok) = rx.recv().expect("completion");
        failed += u64::from(!ok);
    }
    failed
}

// ---- foreground load ----------------------------------------------------------------------

#[derive(Default)]
struct Load {
    /// Nanoseconds, per op.
    reads: Vec<u64>,
    writes: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Load {
    fn all(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.reads.iter().chain(&self.writes).copied().collect();
        v.sort_unstable();
        v
    }

    fn merge(&mut self, other: Load) {
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    fn iops(&self) -> f64 {
        (self.reads.len() + self.writes.len()) as f64 / self.elapsed.as_secs_f64()
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// A 4 KiB random read/write mix over `blocks` blocks with at most `qd` ops
/// in flight, paced at `a.iops` ops per second (closed loop if 0), until
/// `stop` returns true (checked between completions). Latency is taken on
/// the reactor, from submit to the completion callback.
///
/// Completions come back through a lock-free queue this thread polls, as an
/// SPDK application's callbacks would: waking a sleeping thread from every
/// callback is a futex syscall (10 µs and more on a VM) on the reactor that
/// delays the next op. Where the reactors and this thread outnumber the
/// CPUs it does sleep, and callbacks wake it: a thread spinning or yielding
/// beside reactors that never idle (they do not while compacting) waits
/// milliseconds for a CPU.
fn foreground(ilog: &Ilog, a: &Args, blocks: u64, rng: &mut Rng, stop: &dyn Fn(&Load) -> bool) -> Load {
    struct Done {
        slot: usize,
        write: bool,
        ns: u64,
        ok: bool,
    }
    let sleep = std::thread::available_parallelism().map_or(true, |n| n.get() <= a.cores as usize);
    let me = std::thread::current();
    let mut bufs: Vec<DmaBuf> = (0..a.qd).map(|i| filled(0x5a ^ i as u8, BS as usize)).collect();
    let done = Arc::new(ArrayQueue::<Done>::new(a.qd));
    let mut load = Load::default();
    let start = Instant::now();
    let interval = (a.iops > 0).then(|| Duration::from_secs_f64(1.0 / a.iops as f64));
    let mut issued = 0u64;
    let mut free: Vec<usize> = (0..a.qd).rev().collect();
    let mut stopping = false;
    let mut waiting_since = Instant::now();
    loop {
        // Issue while a slot is free and the schedule allows.
        while let (false, Some(&slot)) = (stopping, free.last()) {
            let due = interval.map_or(start, |i| start + i * issued as u32);
            if Instant::now() < due {
                break;
            }
            free.pop();
            issued += 1;
            let lba = rng.below(blocks);
            let write = rng.below(100) >= a.read_pct;
            let buf = bufs[slot].io_buf();
            let req = if write {
                Request::Write { lba, blocks: 1, buf }
            } else {
                Request::Read { lba, blocks: 1, buf, view: View::Current }
            };
            let done = done.clone();
            let me = sleep.then(|| me.clone());
            let t0 = Instant::now();
            let done: Callback = Box::new(move |r| {
                let ns = t0.elapsed().as_nanos() as u64;
                // At most `qd` ops are in flight: there is room.
                let _ = done.push(Done { slot, write, ns, ok: r.is_ok() });
                if let Some(t) = me {
                    t.unpark();
                }
            });
            // The slot's buffer is reused only after its completion came
            // back, and the loop waits for every slot before `bufs` goes.
            submit(ilog, req, done);
        }
        if stopping && free.len() == a.qd {
            break;
        }
        let Some(d) = done.pop() else {
            let in_flight = free.len() < a.qd;
            assert!(!in_flight || waiting_since.elapsed() < Duration::from_secs(60), "a foreground op hung for 60 s");
            if sleep {
                // Until a completion, or the next op's time.
                let due = match (interval, free.is_empty() || stopping) {
                    (Some(i), false) => (start + i * issued as u32).saturating_duration_since(Instant::now()),
                    _ => Duration::from_millis(10),
                };
                std::thread::park_timeout(due);
            } else {
                std::hint::spin_loop();
            }
            continue;
        };
        waiting_since = Instant::now();
        free.push(d.slot);
        load.errors += u64::from(!d.ok);
        if d.write {
            load.writes.push(d.ns);
        } else {
            load.reads.push(d.ns);
        }
        if !stopping {
            load.elapsed = start.elapsed();
            stopping = stop(&load);
        }
    }
    load.elapsed = start.elapsed();
    load
}

fn stats(ilog: &Ilog) -> Stats {
    ilog.stats().expect("stats")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

struct RunResult {
    raw_n: f64,
    raw_copy: f64,
    floor: Floor,
    idle: Load,
    busy: Load,
    compact_s: f64,
    moved: u64,
    freed: u64,
    wa_total: f64,
    wa_busy: f64,
    compact_errors: u32,
}

fn run(a: &Args, seed: u64) -> RunResult {
    let device_blocks = a.device_mib * 1024 * 1024 / BS;
    let dev = Arc::new(MallocDevice::new(device_blocks, BS as u32));

    // 1. Raw bandwidth (the first pass also faults the pages in).
    let first = raw_bandwidth(&dev, 1, a.device_mib << 20, Raw::Write);
    let raw1 = raw_bandwidth(&dev, 1, a.device_mib << 20, Raw::Write);
    let raw_n = raw_bandwidth(&dev, a.cores, a.device_mib << 20, Raw::Write);
    let raw_copy = raw_bandwidth(&dev, a.cores, a.device_mib << 20, Raw::Copy);
    println!(
        "raw malloc writes (1 MiB, QD 8): first touch {first:.0} MB/s, 1 thread {raw1:.0} MB/s, {} threads {raw_n:.0} MB/s; \
         copies (1 MiB, QD 8): {} threads {raw_copy:.0} MB/s",
        a.cores, a.cores
    );
    let floor = machine_floor(&dev, a, raw_copy);
    println!(
        "floor (reactors that only answer, and copy {MOVE_RUN}-block runs at half the raw rate): p99 idle {:.1} µs, copying {:.1} µs \
         at {:.0} MB/s ({:.0} % of raw copies)",
        floor.idle_p99,
        floor.copying_p99,
        floor.copy_mbs,
        100.0 * floor.copy_mbs / raw_copy
    );

    // 2. Fill: the working set, sequentially.
    let opts = FormatOptions { segment_bytes: a.segment_mib << 20, ..FormatOptions::default() };
    let geo = ilog_bdev::engine::format(dev.as_ref(), &opts, seed.to_le_bytes().repeat(2).try_into().expect("16"))
        .expect("format");
    let ilog = Ilog::start(dev.clone(), a.cores).expect("start");
    let s0 = stats(&ilog);
    let live_blocks = (s0.log_capacity_bytes * a.live_pct / 100 / BS).min(geo.volume_blocks);
    println!(
        "device {} MiB: log {} MiB ({} segments of {} MiB), volume {} MiB, working set {} MiB, {} cores, \
         foreground QD {} {}% reads at {}",
        a.device_mib,
        s0.log_capacity_bytes >> 20,
        s0.segments_total,
        a.segment_mib,
        (geo.volume_blocks * BS) >> 20,
        (live_blocks * BS) >> 20,
        a.cores,
        a.qd,
        a.read_pct,
        if a.iops == 0 { "full speed (closed loop)".to_string() } else { format!("{} IOPS", a.iops) }
    );
    let t = Instant::now();
    let seq = (0..live_blocks).step_by(32).map(|lba| (lba, 32.min(live_blocks - lba) as u32));
    let failed = write_all(&ilog, seq, 16, 32);
    println!("sequential fill: {:.2} s, {failed} failed writes", t.elapsed().as_secs_f64());
    let mut rng = Rng::new(seed);
    let ow = u64::from(a.overwrite_blocks);
    let mut order: Vec<u64> = (0..live_blocks / ow).map(|chunk| chunk * ow).collect();
    let mut r = RunResult {
        raw_n,
        raw_copy,
        floor,
        idle: Load::default(),
        busy: Load::default(),
        compact_s: 0.0,
        moved: 0,
        freed: 0,
        wa_total: 0.0,
        wa_busy: 0.0,
        compact_errors: 0,
    };
    let (mut busy_user, mut busy_device) = (0u64, 0u64);
    for pass in 0..a.passes {
        // Garbage: a random half of the working set, overwritten; a
        // snapshot seals it (the previous one is deleted when compacting).
        let t = Instant::now();
        rng.shuffle(&mut order);
        let half = order[..order.len() / 2].iter().map(|&lba| (lba, a.overwrite_blocks));
        let failed = write_all(&ilog, half, 32, a.overwrite_blocks);
        ilog.snapshot(Some(&format!("pass-{pass}"))).expect("snapshot");
        let s1 = stats(&ilog);
        println!(
            "pass {pass}: overwrote half in {:.2} s ({failed} failed); log used {} MiB, live {} MiB, garbage {} MiB, \
             {}/{} segments free",
            t.elapsed().as_secs_f64(),
            s1.log_used_bytes >> 20,
            s1.live_bytes >> 20,
            s1.garbage_bytes >> 20,
            s1.segments_free,
            s1.segments_total
        );

        // 3. Idle foreground. It stops early rather than bring the emergency
        // compaction in: a quarter of the log stays free for the compaction.
        let keep_free = s0.segments_total / 4;
        let room = u64::from(s1.segments_free.saturating_sub(keep_free)) * u64::from(s0.segment_blocks) * BS / 2;
        let idle_stop = |l: &Load| l.elapsed.as_secs_f64() >= a.seconds || l.writes.len() as u64 * BS >= room;
        let idle = foreground(&ilog, a, live_blocks, &mut rng, &idle_stop);
        let s2 = stats(&ilog);

        // 4. The same load while the previous pass's volume is deleted (the
        // compaction merges its partition into the next; the flush queues
        // behind that merge) and then everything is compacted in place.
        let done = AtomicBool::new(false);
        let (busy, took, ok) = std::thread::scope(|s| {
            let compaction = s.spawn(|| {
                let t = Instant::now();
                let mut result = Ok(());
                if pass > 0 {
                    result = ilog.delete_volume(&format!("pass-{}", pass - 1)).and_then(|()| ilog.flush());
                }
                let result = result.and_then(|()| ilog.compact(None, CompactMode::InPlace));
                if let Err(e) = &result {
                    eprintln!("compaction failed: {e}");
                }
                done.store(true, Ordering::Release);
                (t.elapsed(), result.is_ok())
            });
            let busy = foreground(&ilog, a, live_blocks, &mut rng, &|_| done.load(Ordering::Acquire));
            let (took, ok) = compaction.join().expect("compaction thread");
            (busy, took, ok)
        });
        let s3 = stats(&ilog);
        let (i, b) = (sorted_all(&idle), sorted_all(&busy));
        println!(
            "pass {pass}: idle {} ops in {:.2} s, p99 {:.1} µs; compaction {:.2} s, moved {} MiB, freed {} segments, \
             {} ops meanwhile, p99 {:.1} µs; after: live {} MiB, garbage {} MiB, {}/{} free",
            i.len(),
            idle.elapsed.as_secs_f64(),
            pct(&i, 99.0),
            took.as_secs_f64(),
            (s3.bytes_moved - s2.bytes_moved) >> 20,
            s3.segments_freed - s2.segments_freed,
            b.len(),
            pct(&b, 99.0),
            s3.live_bytes >> 20,
            s3.garbage_bytes >> 20,
            s3.segments_free,
            s3.segments_total
        );
        r.idle.merge(idle);
        r.busy.merge(busy);
        r.compact_s += took.as_secs_f64();
        r.moved += s3.bytes_moved - s2.bytes_moved;
        r.freed += s3.segments_freed - s2.segments_freed;
        r.compact_errors += u32::from(!ok);
        busy_user += s3.user_bytes_written - s2.user_bytes_written;
        busy_device += s3.device_bytes_written - s2.device_bytes_written;
        r.wa_total = s3.device_bytes_written as f64 / s3.user_bytes_written as f64;
    }
    r.wa_busy = busy_device as f64 / busy_user as f64;
    ilog.close().expect("close");
    r
}

fn sorted_all(l: &Load) -> Vec<u64> {
    l.all()
}

fn main() {
    let a = parse_args();
    let mut results = Vec::new();
    for r in 0..a.runs {
        println!("--- run {} (seed {}) ---", r + 1, a.seed + u64::from(r));
        results.push(run(&a, a.seed + u64::from(r)));
    }
    println!();
    println!(
        "| run | idle IOPS | idle p50 / p99 / p99.9 µs | compaction IOPS | compaction p50 / p99 / p99.9 µs | p99 ratio | \
         compaction s | moved MiB | MB/s | % of raw writes ({} thr) | % of raw copies ({} thr) | segs freed | WA (phase / total) |",
        a.cores, a.cores
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in results.iter().enumerate() {
        let (idle, busy) = (r.idle.all(), r.busy.all());
        let rate = mb(r.moved) / r.compact_s;
        println!(
            "| {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0} | {:.1} / {:.1} / {:.1} | {:.2}x | {:.2} | {:.0} | {:.0} | {:.1} % | {:.1} % | {} | {:.2} / {:.2} |{}",
            i + 1,
            r.idle.iops(),
            pct(&idle, 50.0),
            pct(&idle, 99.0),
            pct(&idle, 99.9),
            r.busy.iops(),
            pct(&busy, 50.0),
            pct(&busy, 99.0),
            pct(&busy, 99.9),
            pct(&busy, 99.0) / pct(&idle, 99.0),
            r.compact_s,
            mb(r.moved),
            rate,
            100.0 * rate / r.raw_n,
            100.0 * rate / r.raw_copy,
            r.freed,
            r.wa_busy,
            r.wa_total,
            if r.compact_errors + (r.idle.errors + r.busy.errors) as u32 == 0 {
                String::new()
            } else {
                format!(
                    " failed compactions: {}, foreground errors: {}/{}",
                    r.compact_errors, r.idle.errors, r.busy.errors
                )
            }
        );
    }
    for (i, r) in results.iter().enumerate() {
        let (ir, iw) = (sorted(&r.idle.reads), sorted(&r.idle.writes));
        let (br, bw) = (sorted(&r.busy.reads), sorted(&r.busy.writes));
        println!(
            "run {}: p99 reads idle {:.1} µs / compacting {:.1} µs; p99 writes idle {:.1} µs / compacting {:.1} µs; \
             ops idle {} / compacting {}",
            i + 1,
            pct(&ir, 99.0),
            pct(&br, 99.0),
            pct(&iw, 99.0),
            pct(&bw, 99.0),
            ir.len() + iw.len(),
            br.len() + bw.len()
        );
        let idle = pct(&r.idle.all(), 99.0);
        println!(
            "run {}: floor p99 idle {:.1} µs / copying {:.1} µs at {:.1} % of raw copies: copying alone puts \
             p99 at {:.2}x this run's idle p99",
            i + 1,
            r.floor.idle_p99,
            r.floor.copying_p99,
            100.0 * r.floor.copy_mbs / r.raw_copy,
            r.floor.copying_p99 / idle
        );
    }
    println!(
        "target: compaction p99 <= 2x idle p99 while compaction runs at >= 50 % of the device's bandwidth \
         (raw: {} threads of 1 MiB writes, or of 1 MiB device copies, which like a move read each byte too)",
        a.cores
    );
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}
