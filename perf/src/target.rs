//! What a workload runs against: an ilog bdev on the native runtime, or the
//! raw base device it would sit on. Both take asynchronous requests and
//! hand completions back to the client thread's polls.

use crossbeam_queue::ArrayQueue;
use ilog_bdev::device::{BlockDevice, DevChannel, DevOp, DevRequest, DmaBuf, FileDevice, MallocDevice};
use ilog_bdev::engine::{Request, View};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::native::Ilog;
use std::path::PathBuf;
use std::sync::Arc;

/// The base device a run creates.
#[derive(Debug, Clone)]
pub enum DeviceSpec {
    /// RAM (as SPDK's malloc bdev).
    Malloc,
    /// A file or block device, through io_uring; a file is created or
    /// sized to `--size` first.
    File(PathBuf),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "malloc" => Ok(DeviceSpec::Malloc),
            Some(("file", path)) if !path.is_empty() => Ok(DeviceSpec::File(path.into())),
            _ => Err(format!("{s:?}: expected malloc or file:PATH")),
        }
    }
}

impl DeviceSpec {
    /// The device, its memory touched first where it is RAM: the kernel
    /// maps a fresh allocation's pages at their first write, which would be
    /// measured as the device's cost (the first run on a fresh base pays
    /// it, the second not).
    pub fn open(&self, bytes: u64, block_size: u32) -> Result<Arc<dyn BlockDevice>, String> {
        Ok(match self {
            DeviceSpec::Malloc => {
                let dev: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(bytes / u64::from(block_size), block_size));
                touch(dev.as_ref())?;
                dev
            }
            DeviceSpec::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if f.metadata().map_err(|e| e.to_string())?.file_type().is_file() {
                    f.set_len(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                }
                Arc::new(FileDevice::open(path, block_size).map_err(|e| format!("{}: {e}", path.display()))?)
            }
        })
    }
}

/// Writes zeros over every block of `dev`, 1 MiB at a time.
fn touch(dev: &dyn BlockDevice) -> Result<(), String> {
    let mut chan = dev.channel().map_err(|e| format!("device channel: {e}"))?;
    let chunk = (1 << 20) / dev.block_size();
    let mut buf = DmaBuf::new((chunk * dev.block_size()) as usize, 4096);
    let mut block = 0;
    while block < dev.num_blocks() {
        let nblocks = chunk.min((dev.num_blocks() - block) as u32);
        // `buf` outlives the request, which completes in the poll below.
        let req = DevRequest { op: DevOp::Write, block, nblocks, buf: buf.io_buf(), tag: 0 };
        while chan.submit(req).is_err() {
            chan.poll(&mut |_, _| {});
        }
        while chan.outstanding() > 0 {
            chan.poll(&mut |_, _| {});
        }
        block += u64::from(nblocks);
    }
    Ok(())
}

/// One request of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub write: bool,
    pub lba: u64,
    pub blocks: u32,
}

/// Something to run a workload against.
pub trait Target {
    fn blocks(&self) -> u64;
    /// Starts `op` on `buf` (at least `op.blocks` blocks, valid and untouched
    /// until its completion is polled), completing as `slot`; `false` when
    /// the target's queue is full (try again after a poll).
    fn submit(&mut self, slot: u32, op: Op, buf: &mut DmaBuf) -> bool;
    /// Appends the completions that are ready: (slot, success).
    fn poll(&mut self, done: &mut Vec<(u32, bool)>);
}

/// An ilog bdev: requests go to its reactors, completions come back
/// through a lock-free queue the client polls (the callbacks run on the
/// reactors and only push).
pub struct IlogTarget {
    /// Shared with a background copy (`--copy`) while one runs.
    pub ilog: Arc<Ilog>,
    /// Reads as of this volume's partition instead of the current image.
    pub view: View,
    completions: Arc<ArrayQueue<(u32, bool)>>,
}

impl IlogTarget {
    /// Formats `dev` (with `log_percent` and the replay window if given)
    /// and starts ilog on `cores` reactors.
    pub fn format_and_start(
        dev: Arc<dyn BlockDevice>,
        cores: u32,
        log_percent: Option<u8>,
        replay_window_bytes: Option<u64>,
    ) -> Result<Self, String> {
        let mut opts = FormatOptions::default();
        if let Some(p) = log_percent {
            opts.log_percent = p;
        }
        if let Some(bytes) = replay_window_bytes {
            opts.replay_window_bytes = bytes;
        }
        ilog_bdev::engine::format(dev.as_ref(), &opts, [0x1b; 16]).map_err(|e| format!("format: {e}"))?;
        let ilog = Ilog::start(dev, cores).map_err(|e| format!("mount: {e}"))?;
        Ok(IlogTarget { ilog: Arc::new(ilog), view: View::Current, completions: Arc::new(ArrayQueue::new(1 << 16)) })
    }

    /// The bdev alone, once no copy shares it (to close or abort it).
    pub fn into_ilog(self) -> Ilog {
        Arc::try_unwrap(self.ilog).unwrap_or_else(|_| panic!("a copy still holds the bdev"))
    }
}

impl Target for IlogTarget {
    fn blocks(&self) -> u64 {
        self.ilog.volume_blocks()
    }

    fn submit(&mut self, slot: u32, op: Op, buf: &mut DmaBuf) -> bool {
        let req = if op.write {
            Request::Write { lba: op.lba, blocks: op.blocks, buf: buf.io_buf() }
        } else {
            Request::Read { lba: op.lba, blocks: op.blocks, buf: buf.io_buf(), view: self.view }
        };
        let completions = self.completions.clone();
        let done = Box::new(move |r: ilog_bdev::Result<_>| {
            let _ = completions.push((slot, r.is_ok()));
        });
        // The driver keeps the slot's buffer alive and untouched until the
        // slot's completion is polled (as for the raw device).
        self.ilog.submit(None, req, done).is_ok()
    }

    fn poll(&mut self, done: &mut Vec<(u32, bool)>) {
        while let Some(c) = self.completions.pop() {
            done.push(c);
        }
    }
}

/// The raw device, driven by the client thread itself through one channel:
/// the device's own speed, with nothing between.
pub struct RawTarget {
    dev: Arc<dyn BlockDevice>,
    chan: Box<dyn DevChannel>,
    /// The blocks the ilog bdev on this device would export: the same LBAs.
    blocks: u64,
}

impl RawTarget {
    pub fn new(dev: Arc<dyn BlockDevice>, blocks: u64) -> Result<Self, String> {
        let chan = dev.channel().map_err(|e| format!("device channel: {e}"))?;
        Ok(RawTarget { dev, chan, blocks })
    }
}

impl Target for RawTarget {
    fn blocks(&self) -> u64 {
        self.blocks.min(self.dev.num_blocks())
    }

    fn submit(&mut self, slot: u32, op: Op, buf: &mut DmaBuf) -> bool {
        let kind = if op.write { DevOp::Write } else { DevOp::Read };
        let req = DevRequest { op: kind, block: op.lba, nblocks: op.blocks, buf: buf.io_buf(), tag: u64::from(slot) };
        // The driver keeps `buf` (of at least `op.blocks` blocks, aligned as
        // the device asks) alive and untouched until the slot's completion
        // is polled.
        self.chan.submit(req).is_ok()
    }

    fn poll(&mut self, done: &mut Vec<(u32, bool)>) {
        self.chan.poll(&mut |tag, status| done.push((tag as u32, status.is_ok())));
    }
}
