//! Copies and restores under SPDK (`bdev_ilog_copy`, `bdev_ilog_restore`):
//! an ilog bdev as a job sees it, through blocking calls made from the
//! job's own thread (never an SPDK thread: the reactors, the app thread
//! among them, must keep polling to answer them), and other bdevs opened
//! as a stream's store or a restore's destination.

use super::bdev::{call, lookup, SpdkError};
use super::ffi::desc::BaseEvents;
use super::ffi::engine_io::submit_call;
use super::ffi::thread::Thread;
use crate::copy::Volumes;
use crate::device::spdk::SpdkDevice;
use crate::device::{BlockDevice, DevChannel, DmaBuf, IoBuf};
use crate::engine::{Extent, Reply, Request, Submitter, View, VolumeInfo};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Runs `work` on a thread of its own, where blocking on the engine and
/// on devices is allowed, then `answer` with its result on the app thread.
pub fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    answer: impl FnOnce(T) + Send + 'static,
) {
    let spawned = std::thread::Builder::new().name("ilog_job".into()).spawn(move || {
        let result = work();
        Thread::app().send(move || answer(result));
    });
    if let Err(e) = spawned {
        log::error!("ilog: cannot spawn a job thread: {e}");
    }
}

/// The ilog bdev `name`, for a copy's or a restore's job thread.
pub fn volumes(name: &str) -> std::result::Result<Arc<dyn Volumes>, SpdkError> {
    let ilog = lookup(name)?;
    Ok(Arc::new(JobVolumes { name: name.to_owned(), submitter: ilog.submitter.clone(), align: ilog.dev.buf_align() }))
}

/// Whether `name` is an ilog bdev (not a volume's).
pub fn is_ilog(name: &str) -> bool {
    lookup(name).is_ok()
}

struct JobVolumes {
    name: String,
    submitter: Submitter,
    align: usize,
}

impl JobVolumes {
    /// A control request, through the module (volume bdevs follow what it
    /// changes before it answers).
    fn control(&self, req: Request) -> Result<Reply> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        call(&self.name, req, move |r| drop(tx.send(r))).map_err(|e| Error::Io(e.errno))?;
        rx.recv().unwrap_or(Err(Error::ShuttingDown))
    }

    /// A read or a write of `buf`, which this call keeps alive until the
    /// engine completed it.
    fn data(&self, req: impl FnOnce(IoBuf) -> Request, buf: &mut DmaBuf) -> Result<()> {
        debug_assert!(Thread::current().is_none(), "a job's blocking calls run off SPDK threads");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        submit_call(&self.submitter, req(buf.io_buf()), Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap_or(Err(Error::ShuttingDown)).map(drop)
    }

    fn blocks(&self, len: usize) -> Result<u32> {
        let bs = self.submitter.block_size() as usize;
        if len % bs != 0 {
            return Err(Error::Misaligned { block_size: bs as u32 });
        }
        u32::try_from(len / bs).map_err(|_| Error::InvalidArgument("I/O too large".into()))
    }
}

impl Volumes for JobVolumes {
    fn uuid(&self) -> [u8; 16] {
        self.submitter.uuid()
    }
    fn block_size(&self) -> u32 {
        self.submitter.block_size()
    }
    fn volume_blocks(&self) -> u64 {
        self.submitter.volume_blocks()
    }
    fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        match self.control(Request::ListVolumes)? {
            Reply::Volumes(v) => Ok(v),
            other => unreachable!("list answered {other:?}"),
        }
    }
    fn diff(&self, volume: &str, base: Option<&str>, lba_start: u64, lba_count: u64) -> Result<Vec<Extent>> {
        let req =
            Request::Diff { volume: volume.to_owned(), base_volume: base.map(str::to_owned), lba_start, lba_count };
        match self.control(req)? {
            Reply::Extents(e) => Ok(e),
            other => unreachable!("diff answered {other:?}"),
        }
    }
    fn read_view(&self, view: View, lba: u64, out: &mut [u8]) -> Result<()> {
        // Engine buffers are DMA memory under SPDK: read into one, then copy.
        let mut buf = DmaBuf::new(out.len(), self.align);
        let blocks = self.blocks(out.len())?;
        self.data(|buf| Request::Read { lba, blocks, buf, view }, &mut buf)?;
        out.copy_from_slice(&buf);
        Ok(())
    }
    fn write(&self, lba: u64, data: &[u8]) -> Result<()> {
        let mut buf = DmaBuf::new(data.len(), self.align);
        buf.copy_from_slice(data);
        let blocks = self.blocks(data.len())?;
        self.data(|buf| Request::Write { lba, blocks, buf }, &mut buf)
    }
    fn write_zeroes(&self, lba: u64, blocks: u32) -> Result<()> {
        self.control(Request::WriteZeroes { lba, blocks }).map(drop)
    }
    fn flush(&self) -> Result<()> {
        self.control(Request::Flush).map(drop)
    }
    fn snapshot(&self, name: &str) -> Result<VolumeInfo> {
        match self.control(Request::Snapshot { name: Some(name.to_owned()) })? {
            Reply::Volume(v) => Ok(v),
            other => unreachable!("snapshot answered {other:?}"),
        }
    }
}

/// Opens (and claims, for writing) bdev `name` as a stream's store or a
/// restore's destination, on the app thread. It is closed, on the app
/// thread, once the job lets it go.
pub fn open_bdev(name: &str) -> std::result::Result<Arc<dyn BlockDevice>, SpdkError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let dev = SpdkDevice::open::<StreamBdev>(name, NEXT.fetch_add(1, Ordering::Relaxed))
        .map_err(|(errno, msg)| SpdkError::new(errno, msg))?;
    Ok(Arc::new(JobBdev(Arc::new(dev))))
}

/// A hot-removed stream bdev fails its job's next I/O.
struct StreamBdev;

impl BaseEvents for StreamBdev {
    fn removed(_arg: u64) {
        log::warn!("ilog: a bdev a copy or a restore uses was hot-removed: the job fails");
    }
}

struct JobBdev(Arc<SpdkDevice>);

impl BlockDevice for JobBdev {
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks()
    }
    fn buf_align(&self) -> usize {
        self.0.buf_align()
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        self.0.channel()
    }
}

impl Drop for JobBdev {
    fn drop(&mut self) {
        let dev = self.0.clone();
        Thread::app().send(move || dev.close());
    }
}
