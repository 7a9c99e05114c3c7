//! The native runtime: one busy-polling reactor thread per core, clients
//! blocking on completions from any thread.

use crate::device::{BlockDevice, DmaBuf};
use crate::engine::{mount, LogBatch, Reply, Request, Stats, Submitter, View, VolumeInfo};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Polls without work before a reactor yields its CPU: on a shared machine
/// spinning reactors must not starve each other or the clients.
const IDLE_POLLS_BEFORE_YIELD: u32 = 256;

#[derive(Default)]
struct Waiter {
    result: Mutex<Option<Result<Reply>>>,
    cond: Condvar,
}

/// A mounted ilog bdev driven by reactor threads.
pub struct Ilog {
    submitter: Submitter,
    reactors: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next_core: AtomicU32,
    align: usize,
    closed: bool,
}

impl Ilog {
    /// Mounts a formatted `dev` and starts `cores` reactors.
    pub fn start(dev: Arc<dyn BlockDevice>, cores: u32) -> Result<Ilog> {
        let align = dev.buf_align();
        let mounted = mount(dev, cores)?;
        let stop = Arc::new(AtomicBool::new(false));
        let reactors = mounted
            .shards
            .into_iter()
            .map(|mut shard| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("ilog-reactor-{}", shard.core()))
                    .spawn(move || {
                        let mut idle = 0;
                        let mut complete = |token: u64, result: Result<Reply>| {
                            // SAFETY: tokens are `Arc<Waiter>`s leaked by `call`.
                            let waiter = unsafe { Arc::from_raw(token as *const Waiter) };
                            *waiter.result.lock().expect("waiter lock") = Some(result);
                            waiter.cond.notify_one();
                        };
                        while !(stop.load(Ordering::Acquire) && shard.is_idle()) {
                            if shard.poll(&mut complete) == 0 {
                                idle += 1;
                                if idle >= IDLE_POLLS_BEFORE_YIELD {
                                    std::thread::yield_now();
                                    idle = 0;
                                }
                            } else {
                                idle = 0;
                            }
                        }
                    })
                    .expect("spawn reactor")
            })
            .collect();
        Ok(Ilog { submitter: mounted.submitter, reactors, stop, next_core: AtomicU32::new(0), align, closed: false })
    }

    /// For asynchronous clients (an NBD or RPC server) that poll for their
    /// own completions.
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    pub fn block_size(&self) -> u32 {
        self.submitter.block_size()
    }

    pub fn volume_blocks(&self) -> u64 {
        self.submitter.volume_blocks()
    }

    /// Submits to the next core in turn and waits for the completion.
    fn call(&self, req: Request) -> Result<Reply> {
        let waiter = Arc::new(Waiter::default());
        let token = Arc::into_raw(waiter.clone()) as u64;
        let core = self.next_core.fetch_add(1, Ordering::Relaxed) % self.submitter.cores();
        if let Err(e) = self.submitter.submit(core, token, req) {
            // SAFETY: the request was refused, so the token comes back to us.
            drop(unsafe { Arc::from_raw(token as *const Waiter) });
            return Err(e);
        }
        let mut slot = waiter.result.lock().expect("waiter lock");
        loop {
            if let Some(result) = slot.take() {
                return result;
            }
            slot = waiter.cond.wait(slot).expect("waiter lock");
        }
    }

    fn blocks_of(&self, len: usize) -> Result<u32> {
        let bs = self.block_size() as usize;
        if len % bs != 0 {
            return Err(Error::Misaligned { block_size: bs as u32 });
        }
        u32::try_from(len / bs).map_err(|_| Error::InvalidArgument("I/O too large".into()))
    }

    fn read_view(&self, view: View, lba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.blocks_of(buf.len())?;
        if (buf.as_ptr() as usize) % self.align == 0 {
            return self.call(Request::Read { lba, blocks, buf: buf.as_mut_ptr(), view }).map(drop);
        }
        let mut bounce = DmaBuf::new(buf.len(), self.align);
        self.call(Request::Read { lba, blocks, buf: bounce.as_mut_ptr(), view })?;
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
            return self.call(Request::Write { lba, blocks, buf: buf.as_ptr() }).map(drop);
        }
        let mut bounce = DmaBuf::new(buf.len(), self.align);
        bounce.copy_from_slice(buf);
        self.call(Request::Write { lba, blocks, buf: bounce.as_ptr() }).map(drop)
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

    /// Flushes, writes a clean checkpoint and stops the reactors.
    pub fn close(mut self) -> Result<()> {
        let result = self.call(Request::Close).map(drop);
        self.closed = true;
        self.stop_reactors();
        result
    }

    /// Stops the reactors without a clean checkpoint, as a crash of the
    /// process would (the device keeps what it was given).
    pub fn abort(mut self) {
        self.closed = true;
        self.stop_reactors();
    }

    fn stop_reactors(&mut self) {
        self.stop.store(true, Ordering::Release);
        for r in self.reactors.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Ilog {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.call(Request::Close) {
                log::error!("closing ilog on drop: {e}");
            }
        }
        self.stop_reactors();
    }
}
