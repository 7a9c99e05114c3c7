//! Tertiary copy and restore through power cuts, in the simulator.
//!
//! Each seed builds a source ilog bdev in the simulator (1-2 cores, a small
//! device) and, four times over, writes, zeroes and unmaps at random and
//! takes a snapshot (v1..v4), keeping each volume's bytes as the model. It
//! copies v1 whole and v2/v1, v3/v2, v4/v3 as incrementals, each to a
//! simulated stream store, then restores them in order into a fresh
//! simulated ilog bdev or onto a plain simulated device.
//!
//! At random points the power goes: the source's during a copy (remounted on
//! another core count, the copy resumes from its last token), the store's
//! during a copy (it keeps what it made durable; the copy resumes), the
//! destination's during a restore (remounted, the restore resumes from its
//! token or starts again). A resumed copy asks the source for no block, and
//! writes the store no byte, that its token says already landed. Before a
//! stream is restored, a copy of it with a flipped byte, or cut short, is
//! refused, leaving the destination as it was; after, the restored volume
//! equals the model byte for byte.
//!
//! `ILOG_SIM_SEEDS=N` sets how many seeds run (default 200; CI runs 2,000)
//! and `ILOG_SIM_FIRST=F` the first of them; `ILOG_SIM_SEED=S` runs seed S
//! alone. A failure prints its seed.

mod common;

use common::blocks::fill;
use common::io::{lend, lend_mut};
use common::sim::small_format;
use ilog_bdev::copy::stream::{Position, StreamReader, TRAILER_LEN};
use ilog_bdev::copy::{self, CopySpec, Destination, Progress, StreamStore, Volumes};
use ilog_bdev::device::sim::SimDisk;
use ilog_bdev::device::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use ilog_bdev::engine::{Extent, Reply, Request, View, VolumeInfo};
use ilog_bdev::rng::Rng;
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::{Error, Result};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

const BS: usize = 512;
/// Small enough that 2,000 seeds of four copies and four restores run in
/// about a minute.
const DEVICE_BLOCKS: u64 = 2048;
const VOLUMES: [&str; 4] = ["v1", "v2", "v3", "v4"];
/// Power cuts one job meets at most: every job ends.
const MAX_CUTS: u32 = 3;

/// Cuts and what came of them, over every seed run.
static SOURCE_CUTS: AtomicU64 = AtomicU64::new(0);
static STORE_CUTS: AtomicU64 = AtomicU64::new(0);
static DESTINATION_CUTS: AtomicU64 = AtomicU64::new(0);
/// Copies resumed from a token past the header, and the stream bytes
/// those tokens vouched for (not sent again).
static MID_STREAM_RESUMES: AtomicU64 = AtomicU64::new(0);
static BYTES_NOT_RESENT: AtomicU64 = AtomicU64::new(0);
static RESUMED_RESTORES: AtomicU64 = AtomicU64::new(0);
static RESTARTED_RESTORES: AtomicU64 = AtomicU64::new(0);
/// Restores whose final snapshot landed before the power went: a second
/// try is refused (the volume exists), and the volume is checked.
static SNAPSHOTS_LANDED: AtomicU64 = AtomicU64::new(0);
static DAMAGED_REFUSED: AtomicU64 = AtomicU64::new(0);

/// A simulated ilog bdev as a copy's source or a restore's destination:
/// each call goes to a random core and runs until the cores are idle. An
/// armed cut takes the power partway through one call, which fails with
/// EIO, as does every call after it until the bdev is remounted.
struct SimBdev {
    uuid: [u8; 16],
    volume_blocks: u64,
    state: Mutex<Powered>,
}

struct Powered {
    sim: Sim,
    cores: u32,
    on: bool,
    calls: u64,
    /// The call the power goes during, counted from 1.
    cut_at: Option<u64>,
    /// The reads (lba, blocks) asked for since the test last looked.
    reads: Vec<(u64, u64)>,
}

impl Powered {
    fn call(&mut self, req: Request) -> Result<Reply> {
        if !self.on {
            return Err(Error::Io(libc::EIO));
        }
        self.calls += 1;
        let token = self.calls;
        let core = self.sim.rng().below(u64::from(self.cores)) as u32;
        // A buffer the request carries is the caller's, lent for this
        // call, which returns once the request completed or the power went
        // (the cut reads in-flight writes' buffers then).
        self.sim.submit(core, token, req)?;
        if self.cut_at == Some(token) {
            for _ in 0..self.sim.rng().below(64) {
                self.sim.step(&mut |_, _| {});
            }
            self.sim.power_cut();
            self.on = false;
            return Err(Error::Io(libc::EIO));
        }
        let mut answer = None;
        self.sim.run_until_idle(&mut |t, r| {
            if t == token {
                answer = Some(r);
            }
        });
        answer.expect("a request is answered once the cores are idle")
    }
}

impl SimBdev {
    fn new(seed: u64, cores: u32) -> SimBdev {
        let mut sim = Sim::new(seed, DEVICE_BLOCKS, BS as u32);
        sim.format(&small_format(BS as u32)).expect("format");
        sim.mount(cores).expect("mount");
        let (uuid, volume_blocks) = (sim.submitter().uuid(), sim.submitter().volume_blocks());
        let state = Powered { sim, cores, on: true, calls: 0, cut_at: None, reads: Vec::new() };
        SimBdev { uuid, volume_blocks, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, Powered> {
        self.state.lock().expect("one caller at a time")
    }

    /// The power goes during one of the next `calls` calls (or after them).
    fn arm_cut(&self, rng: &mut Rng, calls: u64) {
        let mut s = self.lock();
        s.cut_at = Some(s.calls + 1 + rng.below(calls));
    }

    /// Disarms the cut; whether it went off.
    fn disarm(&self) -> bool {
        let mut s = self.lock();
        s.cut_at = None;
        !s.on
    }

    fn remount(&self, cores: u32) {
        let mut s = self.lock();
        s.sim.mount(cores).expect("a bdev mounts after a power cut");
        (s.cores, s.on) = (cores, true);
    }

    fn take_reads(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.lock().reads)
    }

    fn unmap(&self, lba: u64, blocks: u32) -> Result<()> {
        self.lock().call(Request::Unmap { lba, blocks }).map(drop)
    }

    /// The whole image of `view`.
    fn image(&self, view: View) -> Vec<u8> {
        let mut all = vec![0u8; self.volume_blocks as usize * BS];
        for (i, chunk) in all.chunks_mut(256 * BS).enumerate() {
            self.read_view(view, (i * 256) as u64, chunk).expect("read the image");
        }
        all
    }
}

impl Volumes for SimBdev {
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        BS as u32
    }
    fn volume_blocks(&self) -> u64 {
        self.volume_blocks
    }
    fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        match self.lock().call(Request::ListVolumes)? {
            Reply::Volumes(v) => Ok(v),
            other => panic!("list answered {other:?}"),
        }
    }
    fn diff(&self, volume: &str, base: Option<&str>, lba_start: u64, lba_count: u64) -> Result<Vec<Extent>> {
        let (volume, base_volume) = (volume.to_owned(), base.map(str::to_owned));
        match self.lock().call(Request::Diff { volume, base_volume, lba_start, lba_count })? {
            Reply::Extents(e) => Ok(e),
            other => panic!("diff answered {other:?}"),
        }
    }
    fn read_view(&self, view: View, lba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = (buf.len() / BS) as u32;
        let mut s = self.lock();
        s.reads.push((lba, u64::from(blocks)));
        s.call(Request::Read { lba, blocks, buf: lend_mut(buf), view }).map(drop)
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        let blocks = (buf.len() / BS) as u32;
        self.lock().call(Request::Write { lba, blocks, buf: lend(buf) }).map(drop)
    }
    fn write_zeroes(&self, lba: u64, blocks: u32) -> Result<()> {
        self.lock().call(Request::WriteZeroes { lba, blocks }).map(drop)
    }
    fn flush(&self) -> Result<()> {
        self.lock().call(Request::Flush).map(drop)
    }
    fn snapshot(&self, name: &str) -> Result<VolumeInfo> {
        match self.lock().call(Request::Snapshot { name: Some(name.to_owned()) })? {
            Reply::Volume(v) => Ok(v),
            other => panic!("snapshot answered {other:?}"),
        }
    }
}

/// A simulated disk (a stream store, or a restore's plain destination)
/// whose power an armed cut takes at one request: the disk keeps, drops or
/// tears what it had not made durable, and that request and every later
/// one fail with EIO until the power comes back.
#[derive(Clone)]
struct CutDisk {
    disk: SimDisk,
    state: Arc<Mutex<CutState>>,
}

#[derive(Default)]
struct CutState {
    requests: u64,
    cut_at: Option<u64>,
    off: bool,
    /// Bumped by each cut: channels opened before it are dead.
    epoch: u64,
    /// The writes (first block, blocks) since the test last looked.
    writes: Vec<(u64, u32)>,
}

struct CutChannel {
    inner: Box<dyn DevChannel>,
    disk: SimDisk,
    state: Arc<Mutex<CutState>>,
    epoch: u64,
    failed: Vec<u64>,
}

impl CutDisk {
    fn new(blocks: u64, seed: u64) -> CutDisk {
        CutDisk { disk: SimDisk::new(blocks, BS as u32, seed), state: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, CutState> {
        self.state.lock().expect("cut state")
    }

    /// The power goes at one of the next `requests` requests (or after them).
    fn arm_cut(&self, rng: &mut Rng, requests: u64) {
        let mut s = self.lock();
        s.cut_at = Some(s.requests + 1 + rng.below(requests));
    }

    /// Disarms the cut; whether it went off.
    fn disarm(&self) -> bool {
        let mut s = self.lock();
        s.cut_at = None;
        s.off
    }

    fn power_on(&self) {
        self.lock().off = false;
    }

    fn take_writes(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.lock().writes)
    }

    /// The first `blocks` blocks as reads see them.
    fn image(&self, blocks: u64) -> Vec<u8> {
        let mut image = Vec::with_capacity(blocks as usize * BS);
        for b in 0..blocks {
            image.extend_from_slice(&self.disk.peek(b));
        }
        image
    }
}

impl BlockDevice for CutDisk {
    fn block_size(&self) -> u32 {
        self.disk.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.disk.num_blocks()
    }
    fn buf_align(&self) -> usize {
        self.disk.buf_align()
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        let epoch = self.lock().epoch;
        let (disk, state) = (self.disk.clone(), self.state.clone());
        Ok(Box::new(CutChannel { inner: self.disk.channel()?, disk, state, epoch, failed: Vec::new() }))
    }
}

impl DevChannel for CutChannel {
    fn submit(&mut self, req: DevRequest) -> std::result::Result<(), QueueFull> {
        let mut s = self.state.lock().expect("cut state");
        if s.off || s.epoch != self.epoch {
            self.failed.push(req.tag);
            return Ok(());
        }
        s.requests += 1;
        if req.op == DevOp::Write {
            s.writes.push((req.block, req.nblocks));
        }
        self.inner.submit(req)?;
        if s.cut_at == Some(s.requests) {
            // The request is under way: the cut treats it as unflushed.
            self.disk.power_cut();
            (s.off, s.epoch) = (true, s.epoch + 1);
            self.failed.push(req.tag);
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let failed = self.failed.len();
        for tag in self.failed.drain(..) {
            done(tag, Err(libc::EIO));
        }
        failed + self.inner.poll(done)
    }

    fn outstanding(&self) -> usize {
        self.failed.len() + self.inner.outstanding()
    }
}

/// Where the seed restores to.
enum Target {
    Ilog(Arc<SimBdev>),
    Device(CutDisk),
}

impl Target {
    fn destination(&self) -> Destination {
        match self {
            Target::Ilog(bdev) => Destination::Ilog(bdev.clone()),
            Target::Device(disk) => Destination::Device { name: "SimDisk1".into(), dev: Arc::new(disk.clone()) },
        }
    }

    fn arm_cut(&self, rng: &mut Rng, calls: u64) {
        match self {
            Target::Ilog(bdev) => bdev.arm_cut(rng, calls),
            Target::Device(disk) => disk.arm_cut(rng, calls),
        }
    }

    fn disarm(&self) -> bool {
        match self {
            Target::Ilog(bdev) => bdev.disarm(),
            Target::Device(disk) => disk.disarm(),
        }
    }

    fn recover(&self, rng: &mut Rng) {
        match self {
            Target::Ilog(bdev) => bdev.remount(1 + rng.below(2) as u32),
            Target::Device(disk) => disk.power_on(),
        }
    }

    /// What a restore may have changed: the current image and the volumes.
    fn state(&self, volume_blocks: u64) -> (Vec<u8>, Vec<VolumeInfo>) {
        match self {
            Target::Ilog(bdev) => (bdev.image(View::Current), bdev.volumes().expect("list the volumes")),
            Target::Device(disk) => (disk.image(volume_blocks), Vec::new()),
        }
    }

    /// The restored `volume`'s image.
    fn volume_image(&self, volume: &str, volume_blocks: u64) -> Vec<u8> {
        match self {
            Target::Ilog(bdev) => {
                let volumes = bdev.volumes().expect("list the volumes");
                let Some(v) = volumes.iter().find(|v| v.name == volume) else {
                    panic!("the restore made no volume {volume}: {volumes:?}")
                };
                bdev.image(View::Volume(v.partition))
            }
            Target::Device(disk) => disk.image(volume_blocks),
        }
    }
}

struct Harness {
    seed: u64,
    rng: Rng,
    src: Arc<SimBdev>,
    volume_blocks: u64,
    /// The source's current image.
    image: Vec<u8>,
    /// Each volume's image as its snapshot took it.
    models: Vec<Vec<u8>>,
    /// Each volume's stream, copied.
    stores: Vec<(StreamStore, CutDisk)>,
    sync_bytes: u64,
    next_tag: u64,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut rng = Rng::new(seed);
        let src = Arc::new(SimBdev::new(seed, 1 + rng.below(2) as u32));
        let volume_blocks = src.volume_blocks;
        Harness {
            seed,
            sync_bytes: [4u64, 16, 64][rng.below(3) as usize] << 10,
            rng,
            src,
            volume_blocks,
            image: vec![0; volume_blocks as usize * BS],
            models: Vec::new(),
            stores: Vec::new(),
            next_tag: 1,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    /// Random writes, zeroes and unmaps to the source, kept in the model.
    fn write_some(&mut self) {
        for _ in 0..4 + self.rng.below(12) {
            let blocks = 1 + self.rng.below(24);
            let lba = self.rng.below(self.volume_blocks - blocks + 1);
            let range = lba as usize * BS..(lba + blocks) as usize * BS;
            let mut data = vec![0u8; range.len()];
            let done = match self.rng.below(8) {
                0 => self.src.write_zeroes(lba, blocks as u32),
                1 => self.src.unmap(lba, blocks as u32),
                _ => {
                    for (i, block) in data.chunks_exact_mut(BS).enumerate() {
                        fill(block, lba + i as u64, self.next_tag);
                    }
                    self.next_tag += 1;
                    self.src.write(lba, &data)
                }
            };
            if let Err(e) = done {
                self.fail(format!("a write of {blocks} blocks at {lba} failed: {e}"));
            }
            self.image[range].copy_from_slice(&data);
        }
    }

    fn snapshot(&mut self, volume: &str) {
        if let Err(e) = self.src.snapshot(volume) {
            self.fail(format!("snapshot {volume}: {e}"));
        }
        self.models.push(self.image.clone());
    }

    /// Copies volume `i` (v1 whole, the others since the one before) to a
    /// store of its own, through power cuts of the source and the store.
    fn copy(&mut self, i: usize) {
        let spec = CopySpec {
            volume: VOLUMES[i].into(),
            base_volume: i.checked_sub(1).map(|b| VOLUMES[b].into()),
            ..CopySpec::default()
        };
        let what = format!("copy of {}", VOLUMES[i]);
        let mut token: Option<String> = None;
        let mut store: Option<(StreamStore, CutDisk)> = None;
        for cuts in 0.. {
            let spec = CopySpec { resume_token: token.clone(), ..spec.clone() };
            let mut plan =
                copy::plan(self.src.as_ref(), &spec).unwrap_or_else(|e| self.fail(format!("{what}: plan: {e}")));
            plan.sync_bytes = self.sync_bytes;
            plan.reads_in_flight = 1;
            let data_bytes = plan.header.data_blocks * BS as u64;
            let (store, disk) = store.get_or_insert_with(|| {
                // Room for the records' headers, the trailer and a block
                // or so of slack.
                let bytes = 4096 + data_bytes + 64 * (plan.extents.len() as u64 + plan.header.data_blocks);
                let disk = CutDisk::new(bytes.div_ceil(BS as u64), self.seed ^ (i as u64 + 1) << 32);
                let dev: Arc<dyn BlockDevice> = Arc::new(disk.clone());
                (StreamStore::Device { name: format!("SimDisk{}", 2 + i), dev }, disk)
            });
            // A few calls or requests per sync, a few more per extent.
            let steps = 4 + plan.extents.len() as u64 + 4 * data_bytes / self.sync_bytes;
            let cut_source = cuts < MAX_CUTS && self.rng.below(3) == 0;
            let cut_store = cuts < MAX_CUTS && !cut_source && self.rng.below(2) == 0;
            if cut_source {
                self.src.arm_cut(&mut self.rng, steps);
            }
            if cut_store {
                disk.arm_cut(&mut self.rng, steps);
            }
            self.src.take_reads();
            disk.take_writes();
            let progress = Progress::default();
            let copied = copy::copy(self.src.as_ref(), &plan, store, &progress);
            let (source_cut, store_cut) = (self.src.disarm(), disk.disarm());
            if let Some(t) = &token {
                self.check_nothing_resent(&what, &plan.header, t, &self.src.take_reads(), &disk.take_writes());
            }
            match copied {
                Ok(()) => break,
                Err(Error::Io(libc::EIO)) if source_cut || store_cut => {
                    if source_cut {
                        SOURCE_CUTS.fetch_add(1, Relaxed);
                        self.src.remount(1 + self.rng.below(2) as u32);
                    } else {
                        STORE_CUTS.fetch_add(1, Relaxed);
                        disk.power_on();
                    }
                    // No token yet: nothing was made durable, start again.
                    token = progress.resume_token();
                }
                Err(e) => self.fail(format!("{what} failed with no power cut: {e}")),
            }
        }
        self.stores.push(store.expect("a store"));
    }

    /// A resumed copy read no block before its token's position and wrote
    /// no byte of the store before the block that holds that position.
    fn check_nothing_resent(
        &self,
        what: &str,
        header: &ilog_bdev::copy::stream::Header,
        token: &str,
        reads: &[(u64, u64)],
        writes: &[(u64, u32)],
    ) {
        let at = Position::from_token(token, header).unwrap_or_else(|e| self.fail(format!("{what}: token: {e}")));
        if let Some(read) = reads.iter().find(|r| r.0 < at.next_lba) {
            self.fail(format!("{what}: resumed at lba {}, it read {read:?} again", at.next_lba));
        }
        let first = at.offset / BS as u64;
        if let Some(write) = writes.iter().find(|w| w.0 < first) {
            self.fail(format!("{what}: resumed at byte {}, it wrote blocks {write:?} again", at.offset));
        }
        if at.offset > ilog_bdev::copy::stream::HEADER_LEN as u64 {
            MID_STREAM_RESUMES.fetch_add(1, Relaxed);
            BYTES_NOT_RESENT.fetch_add(first * BS as u64, Relaxed);
        }
    }

    /// Stream `i`'s bytes, read back whole from its store.
    fn stream_bytes(&self, i: usize) -> Vec<u8> {
        let store = &self.stores[i].0;
        let len = {
            let mut r = StreamReader::new(store.reader_at(0).expect("open the stream")).expect("a stream");
            let mut data = Vec::new();
            while r.next_record(&mut data).unwrap_or_else(|e| self.fail(format!("stream {i}: {e}"))).is_some() {}
            r.position().offset as usize + TRAILER_LEN
        };
        let mut bytes = vec![0u8; len];
        store.reader_at(0).expect("open the stream").read_exact(&mut bytes).expect("read the stream");
        bytes
    }

    /// A copy of stream `i` with a byte flipped, or cut short: refused,
    /// and the destination as it was.
    fn restore_damaged(&mut self, i: usize, target: &Target) {
        let good = self.stream_bytes(i);
        let (what, bytes) = if self.rng.below(2) == 0 {
            let at = self.rng.below(good.len() as u64) as usize;
            let mut bytes = good.clone();
            bytes[at] ^= 1 << self.rng.below(8);
            (format!("stream {} with byte {at} of {} flipped", VOLUMES[i], good.len()), bytes)
        } else {
            let len = self.rng.below(good.len() as u64) as usize;
            (format!("stream {} cut to {len} of {} bytes", VOLUMES[i], good.len()), good[..len].to_vec())
        };
        let disk = SimDisk::new(bytes.len().div_ceil(BS).max(1) as u64, BS as u32, self.seed);
        let damaged = StreamStore::Device { name: "SimDisk9".into(), dev: Arc::new(disk) };
        let mut w = damaged.writer_at(0).expect("a writer");
        w.write_all(&bytes).and_then(|()| w.sync()).expect("write the damaged stream");
        let before = target.state(self.volume_blocks);
        let dst = target.destination();
        let refused = copy::plan_restore(&dst, &damaged, None)
            .and_then(|plan| copy::restore(&dst, &damaged, &plan, &Progress::default()));
        match refused {
            Err(e) if e.errno() == libc::EUCLEAN => {}
            other => self.fail(format!("a restore of the {what} answered {other:?}")),
        }
        if target.state(self.volume_blocks) != before {
            self.fail(format!("a restore of the {what} changed the destination"));
        }
        DAMAGED_REFUSED.fetch_add(1, Relaxed);
    }

    /// Restores stream `i` onto `target` through power cuts of it, then
    /// checks the restored volume against the model.
    fn restore(&mut self, i: usize, target: &Target) {
        let what = format!("restore of {}", VOLUMES[i]);
        let store = self.stores[i].0.clone();
        let dst = target.destination();
        let mut token: Option<String> = None;
        for cuts in 0.. {
            let mut plan = match copy::plan_restore(&dst, &store, token.as_deref()) {
                Ok(plan) => plan,
                // The power went after the restore's snapshot landed.
                Err(Error::VolumeExists(v)) if cuts > 0 && v == VOLUMES[i] => {
                    SNAPSHOTS_LANDED.fetch_add(1, Relaxed);
                    break;
                }
                Err(e) => self.fail(format!("{what}: plan: {e}")),
            };
            plan.sync_bytes = self.sync_bytes;
            let calls = 4 + (plan.header.data_blocks * BS as u64) / self.sync_bytes * 4 + plan.header.data_blocks / 8;
            if cuts < MAX_CUTS && self.rng.below(2) == 0 {
                target.arm_cut(&mut self.rng, calls);
            }
            let progress = Progress::default();
            let restored = copy::restore(&dst, &store, &plan, &progress);
            let cut = target.disarm();
            match restored {
                Ok(_) => break,
                Err(Error::Io(libc::EIO)) if cut => {
                    DESTINATION_CUTS.fetch_add(1, Relaxed);
                    target.recover(&mut self.rng);
                    // Resume from the token, or start again.
                    token = progress.resume_token().filter(|t| !t.is_empty() && self.rng.below(3) != 0);
                    if token.is_some() {
                        RESUMED_RESTORES.fetch_add(1, Relaxed);
                    } else {
                        RESTARTED_RESTORES.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => self.fail(format!("{what} failed with no power cut: {e}")),
            }
        }
        if target.volume_image(VOLUMES[i], self.volume_blocks) != self.models[i] {
            self.fail(format!("{what}: the restored volume differs from the model"));
        }
    }

    fn run(&mut self) {
        for (i, volume) in VOLUMES.iter().enumerate() {
            self.write_some();
            self.snapshot(volume);
            self.copy(i);
        }
        let target = if self.rng.below(2) == 0 {
            Target::Ilog(Arc::new(SimBdev::new(self.seed ^ 0xd57, 1 + self.rng.below(2) as u32)))
        } else {
            Target::Device(CutDisk::new(self.volume_blocks, self.seed ^ 0xd57))
        };
        for i in 0..VOLUMES.len() {
            if self.rng.below(2) == 0 {
                self.restore_damaged(i, &target);
            }
            self.restore(i, &target);
        }
    }
}

#[test]
fn copies_and_restores_through_power_cuts_match_the_model() {
    let started = std::time::Instant::now();
    let seeds = common::sim::for_each_seed("sim_copy", |seed| Harness::new(seed).run());
    let count = |c: &AtomicU64| c.load(Relaxed);
    let (source, store, destination) = (count(&SOURCE_CUTS), count(&STORE_CUTS), count(&DESTINATION_CUTS));
    let (mid, not_resent) = (count(&MID_STREAM_RESUMES), count(&BYTES_NOT_RESENT));
    let (resumed, restarted) = (count(&RESUMED_RESTORES), count(&RESTARTED_RESTORES));
    let (landed, damaged) = (count(&SNAPSHOTS_LANDED), count(&DAMAGED_REFUSED));
    eprintln!(
        "sim_copy: {} seeds passed in {:.1?}; power cuts: {source} of the source, {store} of the store, {destination} of the destination; {mid} copies resumed mid-stream ({not_resent} bytes not sent again); {resumed} restores resumed, {restarted} started again, {landed} found their snapshot landed; {damaged} damaged streams refused",
        seeds,
        started.elapsed()
    );
    if seeds >= 50 {
        assert!(source > 0 && store > 0 && destination > 0, "each side must lose power");
        assert!(mid > 0 && not_resent > 0, "copies must resume from the middle of their streams");
        assert!(resumed > 0 && restarted > 0, "restores must both resume and start again");
        assert!(damaged > 0, "damaged streams must be tried");
    }
}
