//! The native runtime: a pool of busy-polling reactor threads, one per core,
//! shared by every ilog bdev of a process (reactor `i` polls shard `i` of
//! each bdev), and [`Ilog`], a handle to one mounted bdev with asynchronous
//! ([`Ilog::submit`]) and blocking methods.

use crate::device::{self, BlockDevice, DmaBuf};
use crate::engine::{
    mount_with_primaries, CompactMode, Extent, LogBatch, Mounted, PrimaryDevice, PrimaryOpen, Reply, Request, Shard,
    Stats, Submitter, SystemClock, View, VolumeInfo,
};
use crate::error::{Error, Result};
use crossbeam_queue::SegQueue;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Polls without work before a reactor yields its CPU: on a shared machine
/// spinning reactors must not starve each other or the clients.
const IDLE_POLLS_BEFORE_YIELD: u32 = 256;

/// Runs on the reactor that completes the request: keep it short.
pub type Callback = Box<dyn FnOnce(Result<Reply>) + Send>;

/// A request the bdev did not take (queue full, closed), with its callback.
pub struct Refused {
    pub error: Error,
    pub done: Callback,
}

enum ReactorMsg {
    Attach(u64, Box<Shard>),
    /// Drop the bdev's shard once it has nothing in flight.
    Detach(u64, Arc<Detached>),
}

/// Counts the shards of one bdev that have been dropped.
#[derive(Default)]
struct Detached {
    count: Mutex<u32>,
    cond: Condvar,
}

struct Shared {
    inboxes: Vec<SegQueue<ReactorMsg>>,
    /// Per core, the callbacks of the requests it completes.
    callbacks: Vec<Mutex<Callbacks>>,
    stop: AtomicBool,
}

/// A core's callbacks of requests in flight, by token: a submitting thread
/// puts one, the core's reactor takes it at the completion. Slots are
/// reused, so a request allocates only its callback.
#[derive(Default)]
struct Callbacks {
    slots: Vec<Option<Callback>>,
    free: Vec<usize>,
}

impl Callbacks {
    /// Keeps `done`; returns its token.
    fn put(&mut self, done: Callback) -> u64 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(done);
        slot as u64
    }

    /// The callback `put` gave `token`, once: the engine completes each
    /// token once, and a refused one is taken back instead.
    fn take(&mut self, token: u64) -> Callback {
        let done = self.slots[token as usize].take().expect("a callback for every token");
        self.free.push(token as usize);
        done
    }
}

/// The reactor threads.
pub struct Reactors {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_bdev: AtomicU64,
}

impl Reactors {
    /// Starts `cores` reactor threads.
    pub fn start(cores: u32) -> Arc<Reactors> {
        let shared = Arc::new(Shared {
            inboxes: (0..cores).map(|_| SegQueue::new()).collect(),
            callbacks: (0..cores).map(|_| Mutex::default()).collect(),
            stop: AtomicBool::new(false),
        });
        let threads = (0..cores)
            .map(|core| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("ilog-reactor-{core}"))
                    .spawn(move || {
                        // A reactor that died would leave every request it
                        // owns unanswered and the process hung: a panic
                        // (already printed by the hook) ends the process.
                        if std::panic::catch_unwind(AssertUnwindSafe(|| reactor(core, &shared))).is_err() {
                            log::error!("reactor {core} panicked: aborting");
                            std::process::abort();
                        }
                    })
                    .expect("spawn reactor")
            })
            .collect();
        Arc::new(Reactors { shared, threads: Mutex::new(threads), next_bdev: AtomicU64::new(1) })
    }

    pub fn cores(&self) -> u32 {
        self.shared.inboxes.len() as u32
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.lock().expect("reactor list").drain(..) {
            let _ = t.join();
        }
    }
}

fn reactor(core: u32, shared: &Shared) {
    let mut shards: Vec<(u64, Shard)> = Vec::new();
    let mut detaching: Vec<(u64, Arc<Detached>)> = Vec::new();
    let mut idle = 0;
    loop {
        // `is_empty` first: a `pop` that finds the queue empty pays a full
        // fence, which waits for the poll's block copies to drain.
        while !shared.inboxes[core as usize].is_empty() {
            let Some(msg) = shared.inboxes[core as usize].pop() else { break };
            match msg {
                ReactorMsg::Attach(id, shard) => shards.push((id, *shard)),
                ReactorMsg::Detach(id, done) => detaching.push((id, done)),
            }
        }
        let mut work = 0;
        let callbacks = &shared.callbacks[core as usize];
        let mut complete = |token, result| {
            // Let go of the lock first: the callback may submit again.
            let done = callbacks.lock().expect("callbacks").take(token);
            done(result);
        };
        for (_, shard) in &mut shards {
            work += shard.poll(&mut complete);
        }
        detaching.retain(|(id, done)| {
            let Some(i) = shards.iter().position(|(s, _)| s == id) else { return true };
            if !shards[i].1.is_idle() {
                return true;
            }
            shards.swap_remove(i);
            *done.count.lock().expect("detach count") += 1;
            done.cond.notify_all();
            false
        });
        if work > 0 {
            idle = 0;
            continue;
        }
        if shared.stop.load(Ordering::Acquire) && shards.iter().all(|(_, s)| s.is_idle()) {
            return;
        }
        idle += 1;
        if idle >= IDLE_POLLS_BEFORE_YIELD {
            std::thread::yield_now();
            idle = 0;
        }
    }
}

/// A mounted ilog bdev served by reactors.
pub struct Ilog {
    reactors: Arc<Reactors>,
    id: u64,
    submitter: Submitter,
    next_core: AtomicU32,
    align: usize,
    attached: bool,
}

impl Ilog {
    /// Mounts a formatted `dev` on reactors of its own, one per core.
    pub fn start(dev: Arc<dyn BlockDevice>, cores: u32) -> Result<Ilog> {
        Ilog::start_with_primaries(dev, cores, Vec::new())
    }

    /// [`Ilog::start`] with primaries (see `mount_with_primaries`).
    pub fn start_with_primaries(dev: Arc<dyn BlockDevice>, cores: u32, primaries: Vec<PrimaryOpen>) -> Result<Ilog> {
        // The reactors start once mount is done: its rebuild has every CPU.
        let align = dev.buf_align();
        let mounted = mount_with_primaries(dev, cores, Arc::new(SystemClock), primaries)?;
        Ok(Ilog::serve(mounted, align, &Reactors::start(cores)))
    }

    /// Mounts a formatted `dev` with a shard on every reactor of `reactors`,
    /// and its primaries (see `mount_with_primaries`).
    pub fn attach(dev: Arc<dyn BlockDevice>, reactors: &Arc<Reactors>, primaries: Vec<PrimaryOpen>) -> Result<Ilog> {
        let align = dev.buf_align();
        let mounted = mount_with_primaries(dev, reactors.cores(), Arc::new(SystemClock), primaries)?;
        Ok(Ilog::serve(mounted, align, reactors))
    }

    /// Hands `mounted`'s shards to `reactors`.
    fn serve(mounted: Mounted, align: usize, reactors: &Arc<Reactors>) -> Ilog {
        let id = reactors.next_bdev.fetch_add(1, Ordering::Relaxed);
        for (core, shard) in mounted.shards.into_iter().enumerate() {
            reactors.shared.inboxes[core].push(ReactorMsg::Attach(id, Box::new(shard)));
        }
        Ilog {
            reactors: reactors.clone(),
            id,
            submitter: mounted.submitter,
            next_core: AtomicU32::new(0),
            align,
            attached: true,
        }
    }

    pub fn block_size(&self) -> u32 {
        self.submitter.block_size()
    }

    /// The engine's handle, for what it tells of the mounted bdev.
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    pub fn volume_blocks(&self) -> u64 {
        self.submitter.volume_blocks()
    }

    /// Buffer alignment zero-copy I/O needs: the base device's, and the
    /// primaries' for the current image (see `Submitter::primaries_align`).
    pub fn buf_align(&self) -> usize {
        self.align.max(self.submitter.primaries_align())
    }

    /// Submits `req` to `core` (the next one in turn if `None`); `done` runs
    /// on a reactor when it completes. A refused request gives `done` back,
    /// unrun. A `Read` or `Write` lends its buffer until `done` runs.
    pub fn submit(&self, core: Option<u32>, req: Request, done: Callback) -> std::result::Result<(), Refused> {
        let core = core.unwrap_or_else(|| self.next_core.fetch_add(1, Ordering::Relaxed) % self.submitter.cores());
        let callbacks = &self.reactors.shared.callbacks[self.submitter.origin(core, &req) as usize];
        let token = callbacks.lock().expect("callbacks").put(done);
        self.submitter.submit(core, token, req).map_err(|error| {
            let done = callbacks.lock().expect("callbacks").take(token);
            Refused { error, done }
        })
    }

    /// Submits and waits.
    fn call(&self, req: Request) -> Result<Reply> {
        let slot = Arc::new((Mutex::new(None), Condvar::new()));
        let waiter = slot.clone();
        let done: Callback = Box::new(move |result| {
            *waiter.0.lock().expect("waiter lock") = Some(result);
            waiter.1.notify_one();
        });
        self.submit(None, req, done).map_err(|r| r.error)?;
        let mut result = slot.0.lock().expect("waiter lock");
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            result = slot.1.wait(result).expect("waiter lock");
        }
    }

    fn blocks_of(&self, len: usize) -> Result<u32> {
        let bs = self.block_size() as usize;
        if len % bs != 0 {
            return Err(Error::Misaligned { block_size: bs as u32 });
        }
        u32::try_from(len / bs).map_err(|_| Error::InvalidArgument("I/O too large".into()))
    }

    /// Reads `view` at `lba` into `buf` (whole blocks).
    pub fn read_view(&self, view: View, lba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.blocks_of(buf.len())?;
        // `call` returns once the request completed: it may borrow `buf`.
        if (buf.as_ptr() as usize) % self.align == 0 {
            return device::lend_mut(buf, |buf| self.call(Request::Read { lba, blocks, buf, view })).map(drop);
        }
        let mut bounce = DmaBuf::new(buf.len(), self.align);
        self.call(Request::Read { lba, blocks, buf: bounce.io_buf(), view })?;
        buf.copy_from_slice(&bounce);
        Ok(())
    }

    /// Reads the current image at `lba` into `buf` (whole blocks).
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.read_view(View::Current, lba, buf)
    }

    /// Reads snapshot volume `volume` at `lba` into `buf`.
    pub fn read_volume(&self, volume: &str, lba: u64, buf: &mut [u8]) -> Result<()> {
        let partition = self.volume(volume)?.partition;
        self.read_view(View::Volume(partition), lba, buf)
    }

    pub fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        let blocks = self.blocks_of(buf.len())?;
        if (buf.as_ptr() as usize) % self.align == 0 {
            return device::lend(buf, |buf| self.call(Request::Write { lba, blocks, buf })).map(drop);
        }
        let mut bounce = DmaBuf::new(buf.len(), self.align);
        bounce.copy_from_slice(buf);
        self.call(Request::Write { lba, blocks, buf: bounce.io_buf() }).map(drop)
    }

    pub fn write_zeroes(&self, lba: u64, blocks: u32) -> Result<()> {
        self.call(Request::WriteZeroes { lba, blocks }).map(drop)
    }

    pub fn unmap(&self, lba: u64, blocks: u32) -> Result<()> {
        self.call(Request::Unmap { lba, blocks }).map(drop)
    }

    pub fn flush(&self) -> Result<()> {
        self.call(Request::Flush).map(drop)
    }

    pub fn snapshot(&self, name: Option<&str>) -> Result<VolumeInfo> {
        match self.call(Request::Snapshot { name: name.map(str::to_owned) })? {
            Reply::Volume(v) => Ok(v),
            other => unreachable!("snapshot answered {other:?}"),
        }
    }

    /// Moves whenever the volume table changes (a snapshot, a deletion, a
    /// volume retired by compaction or a policy): one atomic load.
    pub fn volumes_generation(&self) -> u64 {
        self.submitter.volumes_generation()
    }

    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        match self.call(Request::ListVolumes)? {
            Reply::Volumes(v) => Ok(v),
            other => unreachable!("list answered {other:?}"),
        }
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        self.volumes()?.into_iter().find(|v| v.name == name).ok_or_else(|| Error::NoSuchVolume(name.to_owned()))
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        self.call(Request::DeleteVolume { name: name.to_owned() }).map(drop)
    }

    pub fn log_read(&self, cursor: u64, count: u32, with_data: bool) -> Result<LogBatch> {
        match self.call(Request::LogRead { cursor, count, with_data })? {
            Reply::Log(b) => Ok(b),
            other => unreachable!("log read answered {other:?}"),
        }
    }

    pub fn stats(&self) -> Result<Stats> {
        match self.call(Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            other => unreachable!("stats answered {other:?}"),
        }
    }

    /// Compacts `volume` (every partition if `None`) as `mode` says; returns
    /// when done.
    pub fn compact(&self, volume: Option<&str>, mode: CompactMode) -> Result<()> {
        self.call(Request::Compact { volume: volume.map(str::to_owned), mode }).map(drop)
    }

    /// Replaces the storage-management policy (JSON; empty for none).
    pub fn set_policy(&self, policy: &str) -> Result<()> {
        self.call(Request::SetPolicy { policy: policy.to_owned() }).map(drop)
    }

    /// The policy document (`{}` for none).
    pub fn policy(&self) -> Result<String> {
        match self.call(Request::GetPolicy)? {
            Reply::Policy(p) => Ok(p),
            other => unreachable!("get_policy answered {other:?}"),
        }
    }

    /// Delivers a named event to the policy.
    pub fn event(&self, name: &str) -> Result<()> {
        self.call(Request::Event { name: name.to_owned() }).map(drop)
    }

    /// The extents of `volume` that differ from `base_volume` (every block
    /// it maps without one) in `lba_start..lba_start + lba_count`.
    pub fn diff(&self, volume: &str, base_volume: Option<&str>, lba_start: u64, lba_count: u64) -> Result<Vec<Extent>> {
        let req = Request::Diff {
            volume: volume.to_owned(),
            base_volume: base_volume.map(str::to_owned),
            lba_start,
            lba_count,
        };
        match self.call(req)? {
            Reply::Extents(e) => Ok(e),
            other => unreachable!("diff answered {other:?}"),
        }
    }

    /// Brings primary `name` back into service on `device` (see
    /// `Request::RebuildPrimary`); returns once that is durable, while the
    /// copy runs in the background (its progress is in the stats).
    pub fn rebuild_primary(&self, name: &str, device: Arc<dyn BlockDevice>, full: bool) -> Result<()> {
        self.call(Request::RebuildPrimary { name: name.to_owned(), device: PrimaryDevice(device), full }).map(drop)
    }

    /// Flushes, writes a clean checkpoint and detaches from the reactors.
    pub fn close(mut self) -> Result<()> {
        let result = self.call(Request::Close).map(drop);
        self.detach();
        result
    }

    /// Detaches without a clean checkpoint, as a crash of the process
    /// would leave the device.
    pub fn abort(mut self) {
        self.detach();
    }

    fn detach(&mut self) {
        if !std::mem::take(&mut self.attached) {
            return;
        }
        let done = Arc::new(Detached::default());
        for inbox in &self.reactors.shared.inboxes {
            inbox.push(ReactorMsg::Detach(self.id, done.clone()));
        }
        let mut count = done.count.lock().expect("detach count");
        while *count < self.reactors.cores() {
            count = done.cond.wait(count).expect("detach count");
        }
    }
}

impl Drop for Ilog {
    fn drop(&mut self) {
        if self.attached {
            if let Err(e) = self.call(Request::Close) {
                log::error!("closing ilog on drop: {e}");
            }
            self.detach();
        }
    }
}

/// A copy or a restore works on a native bdev through its blocking calls.
impl crate::copy::Volumes for Ilog {
    fn uuid(&self) -> [u8; 16] {
        self.submitter.uuid()
    }
    fn block_size(&self) -> u32 {
        Ilog::block_size(self)
    }
    fn volume_blocks(&self) -> u64 {
        Ilog::volume_blocks(self)
    }
    fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ilog::volumes(self)
    }
    fn diff(&self, volume: &str, base: Option<&str>, lba_start: u64, lba_count: u64) -> Result<Vec<Extent>> {
        Ilog::diff(self, volume, base, lba_start, lba_count)
    }
    fn read_view(&self, view: View, lba: u64, buf: &mut [u8]) -> Result<()> {
        Ilog::read_view(self, view, lba, buf)
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        Ilog::write(self, lba, buf)
    }
    fn write_zeroes(&self, lba: u64, blocks: u32) -> Result<()> {
        Ilog::write_zeroes(self, lba, blocks)
    }
    fn flush(&self) -> Result<()> {
        Ilog::flush(self)
    }
    fn snapshot(&self, name: &str) -> Result<VolumeInfo> {
        Ilog::snapshot(self, Some(name))
    }
}
